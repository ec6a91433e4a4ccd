//! What each frame from the relayer after `Hello` does to its cluster:
//! reliable frames (results, events, telemetry) are deduplicated and logged,
//! then every frame goes to the part of the cluster it is about, and the
//! session loop learns whether an ack is due.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::commands::ResultOutcome;
use super::connect::SessionStart;
use super::frame_log::{FrameKind, FrameLog, FrameRecord};
use super::DevBackendState;
use crate::otlp::OtlpCounts;
use consonant_proto::{self as proto, relayer_frame::Body as In};

/// What one received frame asks the session loop to do.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameEffect {
    /// A reliable frame arrived: an ack is due.
    pub(crate) ack_due: bool,
    /// It was a duplicate: repeat the ack even if it did not move.
    pub(crate) duplicate: bool,
}

impl DevBackendState {
    /// Handles one frame after `Hello`. `counts` is the decoded OTLP of a
    /// telemetry frame (decoded before, outside the lock).
    pub(crate) fn on_frame(
        &self,
        session: &SessionStart,
        frame: proto::RelayerFrame,
        counts: Option<OtlpCounts>,
    ) -> FrameEffect {
        self.stats.frames_received.fetch_add(1, Relaxed);
        let Some(body) = frame.body else {
            return FrameEffect::default();
        };
        let mut inner = session.cluster.inner.lock();
        let reliable = matches!(body, In::Result(_) | In::Event(_) | In::Telemetry(_));
        if reliable && frame.seq > 0 && !inner.dedup.observe(&session.incarnation, frame.seq) {
            self.stats.duplicate_frames.fetch_add(1, Relaxed);
            return FrameEffect {
                ack_due: true,
                duplicate: true,
            };
        }
        // A kept frame goes to the debug log and to the journal — before
        // this returns and the session loop sends its ack, as a durable
        // backend stores what it acks.
        let keep = |frames: &mut FrameLog, kind, command_id, status, retryable, spans| {
            if frame.seq == 0 {
                return;
            }
            let record = FrameRecord {
                incarnation: session.incarnation.clone(),
                seq: frame.seq,
                kind,
                command_id,
                status,
                retryable,
            };
            if let Some(journal) = &self.journal {
                journal.append(&record, spans);
            }
            frames.push(record);
        };
        match body {
            In::Hello(_) => {
                tracing::warn!(cluster_id = %session.cluster.id, session_id = %session.session_id, "second Hello on a session ignored");
            }
            In::Heartbeat(_) => inner.sessions.heard_from(&session.session_id),
            In::Accepted(accepted) => {
                if inner
                    .commands
                    .on_accepted(&accepted.command_id, &session.incarnation)
                {
                    drop(inner);
                    tracing::debug!(cluster_id = %session.cluster.id, command_id = %accepted.command_id, "command accepted");
                }
            }
            In::Result(result) => {
                self.stats.results_received.fetch_add(1, Relaxed);
                let command_id = inner.commands.get(&result.command_id).map(|r| r.id.clone());
                let command_id =
                    command_id.unwrap_or_else(|| Arc::from(result.command_id.as_str()));
                let status = proto::command_result::Status::try_from(result.status)
                    .map_or("UNKNOWN", |status| status.as_str_name());
                // A retryable refusal is not final: the backend sends the
                // command again (`CommandBook::on_result`).
                let retryable =
                    status == "REJECTED" && result.error.as_ref().is_some_and(|e| e.retryable);
                keep(
                    &mut inner.frames,
                    FrameKind::Result,
                    Some(command_id.clone()),
                    Some(status),
                    retryable,
                    None,
                );
                let outcome = inner.commands.on_result(result, Instant::now());
                drop(inner);
                match outcome {
                    ResultOutcome::Completed { action, status } => {
                        tracing::info!(cluster_id = %session.cluster.id, %command_id, action, status = status.as_str_name(), "command");
                    }
                    ResultOutcome::WillRetry { action } => {
                        tracing::info!(cluster_id = %session.cluster.id, %command_id, action, status = "REJECTED (retryable, will re-send)", "command");
                    }
                    ResultOutcome::AlreadyCompleted => {}
                }
            }
            In::Event(event) => {
                keep(&mut inner.frames, FrameKind::Event, None, None, false, None);
                inner.events.push(event);
            }
            In::Telemetry(batch) => {
                let spans = counts.map(|c| c.spans);
                keep(
                    &mut inner.frames,
                    FrameKind::Telemetry,
                    None,
                    None,
                    false,
                    spans,
                );
                inner.telemetry.record_batch(batch.otlp.len(), counts);
            }
        }
        FrameEffect {
            ack_due: reliable,
            duplicate: false,
        }
    }
}
