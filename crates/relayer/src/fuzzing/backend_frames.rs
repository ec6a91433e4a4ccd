//! The `backend_frames` target: what a hostile backend can send, with no
//! network. The input is a sequence of length-prefixed `BackendFrame`s
//! (`u16` little-endian length, then the protobuf bytes); frames that do not
//! decode are skipped, as tonic would refuse them. They go through the
//! session's batching (`InboundBatch`, several frames per batch as a session
//! reads them) into a real `CommandRouter` on a real actix System, with the
//! real ledger, dedup cache and outbox (1 MiB replay buffer, Kubernetes off,
//! so `apply` manifests are validated off-thread and then refused).
//!
//! Properties checked once every answer is in:
//! - nothing is left in flight or validating, and dedup holds no in-flight id;
//! - the replay buffer stays within its capacity plus one frame, the control
//!   queue within its bound;
//! - every distinct usable `command_id` got an answer, or an answer was
//!   dropped and counted (`answers_dropped`);
//! - no answer carries an id longer than 128 bytes;
//! - every SUCCEEDED result of one id is the same result: it ran once;
//! - a `RotateCredentials` token the relayer would take passes its checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::Actor;
use prost::Message;

use crate::actors::command_router::CommandRouter;
use crate::actors::context::RelayContext;
use crate::actors::directory::RouterInbox;
use crate::commands::admission::MAX_COMMAND_ID_BYTES;
use crate::config::RelayerConfig;
use crate::connection::channel::Dialer;
use crate::connection::messages::{CancelCommands, IncomingCommands};
use crate::connection::outbox::MAX_CONTROL_FRAMES;
use crate::connection::session::InboundBatch;
use crate::credentials::rotated::rotated_token_problem;
use crate::credentials::CredentialStore;
use crate::metrics::MailboxGauge;
use crate::proto::{command_result::Status, relayer_frame::Body, BackendFrame, CommandResult};
use crate::supervisor::{ChildContext, ExitReporter, StatusBoard};

/// Frames per batch, as a session would read them without waiting.
const BATCH: usize = 8;
const REPLAY_BYTES: u64 = 1 << 20;

/// Credential files every run shares (read only when dialing, never here).
fn credentials_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("consonant-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the credentials dir");
        std::fs::write(dir.join("clusterId"), "cls_fuzz").expect("write");
        std::fs::write(dir.join("clusterToken"), "fuzz-token-fuzz-token").expect("write");
        dir
    })
}

/// Splits `data` into frames: `u16` LE length, then that many bytes.
fn frames(mut data: &[u8]) -> Vec<BackendFrame> {
    let mut frames = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        data = &data[2..];
        let (frame, rest) = data.split_at(len.min(data.len()));
        data = rest;
        if let Ok(frame) = BackendFrame::decode(frame) {
            frames.push(frame);
        }
    }
    frames
}

/// Encodes frames in this target's input format (for seeds and tests).
pub fn encode_input(frames: &[BackendFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let bytes = frame.encode_to_vec();
        let len = u16::try_from(bytes.len()).expect("seed frames stay under 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

pub fn backend_frames(data: &[u8]) {
    let frames = frames(data);
    if frames.is_empty() {
        return;
    }
    actix::System::new().block_on(run(frames));
}

async fn run(frames: Vec<BackendFrame>) {
    let dir = credentials_dir();
    let mut config = RelayerConfig::default();
    config.kubernetes.enabled = false;
    config.telemetry.enabled = false;
    config.connection.replay_buffer_bytes = REPLAY_BYTES;
    config.connection.max_frame_bytes = 64 * 1024;
    config.commands.rate_per_second = 100_000_000;
    config.commands.burst = 100_000_000;
    config.credentials.cluster_id_file = dir.join("clusterId");
    config.credentials.cluster_token_file = dir.join("clusterToken");
    let dialer = Dialer::new(
        "http://127.0.0.1:9",
        false,
        &config.backend,
        &config.connection,
        &crate::egress::EgressRoute::direct(),
    )
    .expect("dialer");
    let credentials = Arc::new(CredentialStore::new(&config.credentials));
    let endpoints = crate::connection::channel::Endpoints::new(vec![dialer]);
    let rc = Arc::new(RelayContext::new(config, endpoints, credentials).expect("context"));
    let child = ChildContext {
        name: "CommandRouter".into(),
        board: StatusBoard::new(),
        exit: ExitReporter::default(),
    };
    let router = CommandRouter::new(rc.clone(), child).start();
    rc.directory
        .set_router(RouterInbox::of(router.clone(), MailboxGauge::new(16)));
    let epoch = rc.outbox.begin_session();
    rc.outbox.on_welcome(epoch, 0);

    let mut written = VecDeque::new();
    let mut usable_ids = HashSet::new();
    for chunk in frames.chunks(BATCH) {
        let mut batch = InboundBatch::default();
        for frame in chunk {
            batch.add(frame.clone(), &rc.metrics);
        }
        for command in batch.commands.iter().chain(&batch.after_drain) {
            let id = &command.command_id;
            if !id.is_empty() && id.len() <= MAX_COMMAND_ID_BYTES {
                usable_ids.insert(id.clone());
            }
        }
        if let Some(acked) = batch.max_ack {
            rc.outbox.ack(acked);
        }
        if !batch.commands.is_empty() {
            let _ = router
                .send(IncomingCommands {
                    commands: batch.commands,
                    draining: false,
                })
                .await;
        }
        if !batch.after_drain.is_empty() {
            let _ = router
                .send(IncomingCommands {
                    commands: batch.after_drain,
                    draining: true,
                })
                .await;
        }
        if !batch.cancels.is_empty() {
            let _ = router.send(CancelCommands(batch.cancels)).await;
        }
        if let Some(rotate) = batch.rotate {
            check_rotated_token(&rotate.cluster_token);
        }
        check_bounds(&rc);
        // The writer takes what is ready (it stays unacked until acked).
        rc.outbox.take_ready(epoch, &mut written, usize::MAX);
    }
    // Manifests validate off-thread: wait for their answers.
    for _ in 0..10_000 {
        if rc.metrics.commands_validating.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Their answers pass through the router's mailbox once more.
    let _ = router.send(CancelCommands(Vec::new())).await;
    rc.outbox.take_ready(epoch, &mut written, usize::MAX);
    check_bounds(&rc);
    check_answers(&rc, &written, &usable_ids);
}

fn check_bounds(rc: &RelayContext) {
    let stats = rc.outbox.stats();
    assert!(
        stats.bytes <= stats.capacity + 64 * 1024,
        "the replay buffer holds {} bytes, past its {} capacity plus one frame",
        stats.bytes,
        stats.capacity
    );
    assert!(rc.metrics.control_queue_frames.get() <= MAX_CONTROL_FRAMES as i64);
}

fn check_answers(
    rc: &RelayContext,
    written: &VecDeque<(
        crate::proto::RelayerFrame,
        crate::connection::outbox::FrameClass,
    )>,
    usable_ids: &HashSet<String>,
) {
    assert_eq!(rc.metrics.commands_in_flight.get(), 0, "left in flight");
    assert_eq!(rc.metrics.commands_validating.get(), 0, "left validating");
    let mut answered = HashSet::new();
    let mut succeeded: HashMap<&str, &CommandResult> = HashMap::new();
    for (frame, _) in written {
        let id = match &frame.body {
            Some(Body::Result(result)) => {
                if result.status == Status::Succeeded as i32 {
                    if let Some(first) = succeeded.insert(&result.command_id, result) {
                        assert_eq!(
                            first, result,
                            "one id, two different successes: it ran twice"
                        );
                    }
                }
                &result.command_id
            }
            Some(Body::Accepted(accepted)) => &accepted.command_id,
            _ => continue,
        };
        assert!(
            id.len() <= MAX_COMMAND_ID_BYTES,
            "an answer carries a {}-byte id",
            id.len()
        );
        answered.insert(id.clone());
    }
    let unanswered = usable_ids.difference(&answered).count() as u64;
    let dropped: u64 = ["cached_result", "refusal"]
        .iter()
        .map(|kind| {
            rc.metrics
                .answers_dropped
                .get_or_create(&crate::metrics::KindLabel {
                    kind: kind.to_string(),
                })
                .get()
        })
        .sum::<u64>()
        + rc.metrics.control_frames_dropped.get();
    assert!(
        unanswered <= dropped,
        "{unanswered} commands got no answer, and only {dropped} answers were counted as dropped"
    );
}

/// A token the relayer would take must be one a header can carry.
fn check_rotated_token(token: &str) {
    if rotated_token_problem(token).is_none() {
        assert!(
            tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).is_ok(),
            "a token that passed the checks cannot be sent"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{backend_frame, command, Ack, Command, Ping};

    fn ping(id: &str) -> BackendFrame {
        BackendFrame {
            body: Some(backend_frame::Body::Command(Command {
                command_id: id.into(),
                action: Some(command::Action::Ping(Ping::default())),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn frames_round_trip_through_the_input_format() {
        let input = encode_input(&[ping("a"), ping("b")]);
        assert_eq!(frames(&input), vec![ping("a"), ping("b")]);
        // A truncated tail is cut off, not a panic.
        assert_eq!(frames(&input[..input.len() - 1]).len(), 1);
    }

    #[test]
    fn a_session_of_pings_duplicates_and_acks_holds_every_property() {
        let ack = BackendFrame {
            body: Some(backend_frame::Body::Ack(Ack { acked_seq: 2 })),
        };
        let input = encode_input(&[ping("a"), ping("a"), ping(""), ack, ping("b"), ping("a")]);
        backend_frames(&input);
    }
}
