//! The gRPC side: `RelayService/Connect`. Authenticates from metadata, reads
//! `Hello`, answers `Welcome` at once, then runs one task per session that
//! reads frames in batches, acks them cumulatively after each batch and
//! sends heartbeats. All bookkeeping is in `hub`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::hub::{DevBackendState, FrameEffect, FrameSender, SessionStart};
use super::otlp;
use consonant_proto::{
    self as proto, backend_frame::Body as Out, relay_service_server::RelayService,
    relayer_frame::Body as In,
};

/// The relayer's default heartbeat interval (protocol.md), used when its
/// `Hello` says 0.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// At most this many frames are read before an ack goes out.
const ACK_BATCH: usize = 256;
/// How often a session re-sends due retries and releases withheld acks.
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// How long a client may take to send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// The `RelayService` implementation over the shared state.
#[derive(Debug, Clone)]
pub(crate) struct RelayServiceImpl {
    state: Arc<DevBackendState>,
    /// `--heartbeat-interval`: sent in `Welcome` and used by both sides.
    heartbeat_override: Option<Duration>,
    /// Sent as `Welcome.max_frame_bytes` (`None` = 0, the protocol's 4 MiB).
    max_frame_bytes: Option<u32>,
}

impl RelayServiceImpl {
    pub(crate) fn new(
        state: Arc<DevBackendState>,
        heartbeat_override: Option<Duration>,
        max_frame_bytes: Option<u32>,
    ) -> Self {
        Self {
            state,
            heartbeat_override,
            max_frame_bytes,
        }
    }
}

type FrameStream =
    Pin<Box<dyn Stream<Item = Result<proto::BackendFrame, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RelayService for RelayServiceImpl {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<proto::RelayerFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let state = &self.state;
        state
            .stats
            .connect_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.accept(request).await;
        if let Err(status) = &result {
            state
                .stats
                .connects_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(code = ?status.code(), message = status.message(), "connect refused");
        }
        result
    }
}

impl RelayServiceImpl {
    async fn accept(
        &self,
        request: Request<Streaming<proto::RelayerFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let metadata = request.metadata();
        let cluster_id = metadata
            .get("x-consonant-cluster-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_default();
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
            .to_string();
        if cluster_id.is_empty() || token.is_empty() {
            return Err(Status::unauthenticated(
                "missing metadata: send `authorization: Bearer <cluster_token>` and `x-consonant-cluster-id`",
            ));
        }
        let cluster = self.state.authenticate(&cluster_id, &token)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::invalid_argument("no Hello within 30s of opening the stream"))??;
        let hello = match first.and_then(|f| f.body) {
            Some(In::Hello(hello)) => hello,
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "the first frame must be Hello, got {}",
                    frame_name(&other)
                )))
            }
            None => {
                return Err(Status::invalid_argument(
                    "the stream ended or sent an empty frame before Hello",
                ))
            }
        };
        if hello.protocol_version != proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "relayer speaks protocol_version {}, this backend speaks protocol_version {}",
                hello.protocol_version,
                proto::PROTOCOL_VERSION
            )));
        }
        if !hello.cluster_id.is_empty() && hello.cluster_id != cluster_id {
            return Err(Status::invalid_argument(format!(
                "Hello.cluster_id {:?} differs from x-consonant-cluster-id {cluster_id:?}",
                hello.cluster_id
            )));
        }
        let welcome_interval_ms = self
            .heartbeat_override
            .map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        let interval = match (self.heartbeat_override, hello.heartbeat_interval_ms) {
            (Some(d), _) => d,
            (None, 0) => DEFAULT_HEARTBEAT,
            (None, ms) => Duration::from_millis(ms.into()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let session = self.state.start_session(
            cluster,
            &hello,
            welcome_interval_ms,
            self.max_frame_bytes.unwrap_or(0),
            tx.clone(),
        )?;
        tokio::spawn(run_session(
            self.state.clone(),
            session,
            inbound,
            tx,
            interval,
        ));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Reads a session's frames until either side ends it.
async fn run_session(
    state: Arc<DevBackendState>,
    session: SessionStart,
    mut inbound: Streaming<proto::RelayerFrame>,
    tx: FrameSender,
    interval: Duration,
) {
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    let mut last_ack = None::<u64>;
    let mut last_frame = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            // Timers before frames, so a flood of frames cannot starve heartbeats.
            biased;
            () = tx.closed() => break "ended by the backend".to_string(),
            _ = heartbeat.tick() => {
                if last_frame.elapsed() > interval * 3 {
                    let why = format!("no frame from the relayer for 3 heartbeat intervals ({interval:?} each)");
                    let _ = tx.send(Err(Status::unavailable(why.clone())));
                    break why;
                }
                if state.heartbeats_enabled() {
                    nonce += 1;
                    let beat = proto::Heartbeat { sent_at_unix_ms: unix_ms(), nonce };
                    if tx.send(Ok(proto::BackendFrame { body: Some(Out::Heartbeat(beat)) })).is_ok() {
                        state.stats.heartbeats_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            _ = housekeeping.tick() => {
                // Acks withheld by a fault go out once the fault is lifted.
                send_ack(&state, &session, &tx, &mut last_ack);
                state.resend_due_retries(&session);
            }
            next = inbound.next() => {
                let mut next = next;
                let (mut ack_due, mut force_ack) = (false, false);
                let mut read = 0;
                last_frame = tokio::time::Instant::now();
                // Take every frame that is ready (up to ACK_BATCH), then ack once.
                let end = loop {
                    match next {
                        Some(Ok(frame)) => {
                            let effect = handle_frame(&state, &session, frame);
                            ack_due |= effect.ack_due;
                            force_ack |= effect.duplicate;
                            read += 1;
                        }
                        Some(Err(status)) => break Some(format!("stream error: {}", status.message())),
                        None => break Some("closed by the relayer".to_string()),
                    }
                    if read >= ACK_BATCH {
                        break None;
                    }
                    match inbound.next().now_or_never() {
                        Some(frame) => next = frame,
                        None => break None,
                    }
                };
                if force_ack {
                    last_ack = None;
                }
                if ack_due {
                    send_ack(&state, &session, &tx, &mut last_ack);
                }
                if let Some(reason) = end {
                    break reason;
                }
            }
        }
    };
    state.end_session(&session, &reason);
}

/// Decodes telemetry outside the cluster lock, then records the frame.
fn handle_frame(
    state: &DevBackendState,
    session: &SessionStart,
    frame: proto::RelayerFrame,
) -> FrameEffect {
    let counts = match &frame.body {
        Some(In::Telemetry(batch)) => match otlp::count(batch.signal, &batch.otlp) {
            Ok(counts) => Some(counts),
            Err(err) => {
                state
                    .stats
                    .telemetry_decode_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(cluster_id = %session.cluster.id, seq = frame.seq, "{err}");
                None
            }
        },
        _ => None,
    };
    state.on_frame(session, frame, counts)
}

fn send_ack(
    state: &DevBackendState,
    session: &SessionStart,
    tx: &FrameSender,
    last_ack: &mut Option<u64>,
) {
    if !state.acks_enabled() {
        return;
    }
    let acked_seq = state.acked(session);
    if (acked_seq == 0 && last_ack.is_none()) || *last_ack == Some(acked_seq) {
        return;
    }
    if tx
        .send(Ok(proto::BackendFrame {
            body: Some(Out::Ack(proto::Ack { acked_seq })),
        }))
        .is_ok()
    {
        *last_ack = Some(acked_seq);
        state
            .stats
            .acks_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn frame_name(body: &In) -> &'static str {
    match body {
        In::Hello(_) => "Hello",
        In::Heartbeat(_) => "Heartbeat",
        In::Accepted(_) => "CommandAccepted",
        In::Result(_) => "CommandResult",
        In::Event(_) => "ClusterEvent",
        In::Telemetry(_) => "TelemetryBatch",
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
