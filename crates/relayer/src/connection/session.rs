//! One session on the stream, from dial to end: open `Connect` with the
//! credentials as metadata, queue `Hello` before awaiting the response, read
//! `Welcome`, replay unacked frames, then pump frames both ways — heartbeats
//! out, acks/commands/cancels in — until the stream dies, goes silent for
//! three heartbeat intervals, is drained, or is cancelled. It reports how it
//! ended; what that means for backoff and the breaker is the
//! ConnectionActor's business.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::{FutureExt, Stream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;

use super::channel::Dialer;
use super::messages::{CancelCommands, IncomingCommands, SessionEvent};
use super::outbox::FrameClass;
use super::outbox_handle::OutboxHandle;
use crate::clock::now_unix_ms;
use crate::credentials::Secret;
use crate::metrics::MailboxGauge;
use crate::metrics::Metrics;
use crate::proto::{
    backend_frame, relay_service_client::RelayServiceClient, relayer_frame::Body, BackendFrame,
    Heartbeat, Hello, RelayerFrame,
};

/// A stream that ends within this long after `Welcome` counts as a failure.
pub const EARLY_END: Duration = Duration::from_secs(10);
/// Frames taken from the outbox per lock.
const WRITE_BATCH: usize = 128;
/// Frames read without waiting before handing commands to the router.
const READ_BATCH: usize = 256;
/// Command batches handed to the router and not yet handled. Reading goes on
/// while the router works, up to this many batches; then it waits, so the
/// router's mailbox stays bounded and a slow router slows the stream.
const DELIVERY_PIPELINE: usize = 4;
/// How long a drained session waits for in-flight commands before closing.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Where the session hands commands: the CommandRouter's mailbox.
#[derive(Clone)]
pub struct CommandSink {
    pub commands: Recipient<IncomingCommands>,
    pub cancels: Recipient<CancelCommands>,
    pub gauge: MailboxGauge,
}

pub struct SessionParams {
    pub dialer: Dialer,
    pub hello: Hello,
    pub cluster_id: String,
    pub token: Secret,
    pub heartbeat_interval: Duration,
    pub handshake_timeout: Duration,
    pub max_frame_bytes: usize,
    pub outbox: OutboxHandle,
    pub sink: CommandSink,
    pub events: Recipient<SessionEvent>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEnd {
    /// TCP/TLS/HTTP/2 could not be established.
    Dial(String),
    /// The call ended with a gRPC status (before or after `Welcome`).
    Status { code: tonic::Code, message: String },
    /// The backend closed the stream cleanly.
    StreamEnded,
    /// No frame for three heartbeat intervals.
    HeartbeatTimeout(Duration),
    /// No `Welcome` within the handshake timeout.
    HandshakeTimeout(Duration),
    /// The backend broke the protocol (e.g. a frame before `Welcome`).
    ProtocolViolation(String),
    /// The backend asked us to go away and come back after this long.
    Drained { reconnect_after: Duration },
    /// We were asked to stop.
    Cancelled,
    /// The session task itself failed (a bug: it panicked).
    Crashed(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Dial(reason) => write!(f, "dial failed: {reason}"),
            SessionEnd::Status { code, message } => {
                write!(f, "backend ended the stream with {code:?}: {message}")
            }
            SessionEnd::StreamEnded => f.write_str("backend closed the stream"),
            SessionEnd::HeartbeatTimeout(after) => write!(
                f,
                "no frame from the backend for {after:?} (3 heartbeat intervals)"
            ),
            SessionEnd::HandshakeTimeout(after) => {
                write!(f, "no Welcome from the backend within {after:?}")
            }
            SessionEnd::ProtocolViolation(what) => write!(f, "protocol violation: {what}"),
            SessionEnd::Drained { reconnect_after } => write!(
                f,
                "drained by the backend; reconnecting after {reconnect_after:?}"
            ),
            SessionEnd::Cancelled => f.write_str("stopped"),
            SessionEnd::Crashed(why) => write!(f, "the session task failed: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionOutcome {
    pub welcomed_at: Option<Instant>,
    pub end: SessionEnd,
}

impl SessionOutcome {
    fn before_welcome(end: SessionEnd) -> Self {
        Self {
            welcomed_at: None,
            end,
        }
    }
}

/// Ends the outbox session however `run` returns.
struct SessionGuard {
    outbox: OutboxHandle,
    epoch: u64,
    writer: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.writer.cancel();
        self.outbox.end_session(self.epoch);
    }
}

pub async fn run(params: SessionParams) -> SessionOutcome {
    let channel = tokio::select! {
        _ = params.cancel.cancelled() => return SessionOutcome::before_welcome(SessionEnd::Cancelled),
        dialed = params.dialer.dial() => match dialed {
            Ok(channel) => channel,
            Err(err) => return SessionOutcome::before_welcome(SessionEnd::Dial(err.to_string())),
        },
    };
    let _ = params.events.send(SessionEvent::Handshaking).await;

    let epoch = params.outbox.begin_session();
    let writer_cancel = params.cancel.child_token();
    let _guard = SessionGuard {
        outbox: params.outbox.clone(),
        epoch,
        writer: writer_cancel.clone(),
    };
    let (welcomed_tx, welcomed_rx) = watch::channel(false);
    let outbound = outbound_frames(
        params.hello.clone(),
        params.outbox.clone(),
        epoch,
        welcomed_rx,
        writer_cancel.clone(),
        params.metrics.clone(),
    );

    let mut request = tonic::Request::new(outbound);
    match MetadataValue::try_from(format!("Bearer {}", params.token.expose())) {
        Ok(mut value) => {
            // Sensitive: HTTP/2 and tonic never print it, at any log level.
            value.set_sensitive(true);
            request.metadata_mut().insert("authorization", value);
        }
        Err(_) => {
            return SessionOutcome::before_welcome(SessionEnd::ProtocolViolation(
                "the cluster token holds characters not allowed in a header; check the clusterToken file".into(),
            ))
        }
    }
    match MetadataValue::try_from(params.cluster_id.as_str()) {
        Ok(value) => {
            request
                .metadata_mut()
                .insert("x-consonant-cluster-id", value);
        }
        Err(_) => {
            return SessionOutcome::before_welcome(SessionEnd::ProtocolViolation(
                "the cluster id holds characters not allowed in a header; check the clusterId file"
                    .into(),
            ))
        }
    }

    let mut client = RelayServiceClient::new(channel)
        .max_decoding_message_size(params.max_frame_bytes.max(4 << 20))
        .max_encoding_message_size(params.max_frame_bytes.max(4 << 20));

    let handshake = async {
        let response = client.connect(request).await?;
        let mut inbound = response.into_inner();
        let first = inbound.message().await?;
        Ok::<_, tonic::Status>((inbound, first))
    };
    let (mut inbound, first) = tokio::select! {
        _ = params.cancel.cancelled() => return SessionOutcome::before_welcome(SessionEnd::Cancelled),
        result = tokio::time::timeout(params.handshake_timeout, handshake) => match result {
            Err(_) => return SessionOutcome::before_welcome(SessionEnd::HandshakeTimeout(params.handshake_timeout)),
            Ok(Err(status)) => return SessionOutcome::before_welcome(status_end(&status)),
            Ok(Ok(pair)) => pair,
        },
    };
    let welcome = match first {
        Some(BackendFrame {
            body: Some(backend_frame::Body::Welcome(welcome)),
        }) => welcome,
        Some(other) => {
            return SessionOutcome::before_welcome(SessionEnd::ProtocolViolation(format!(
                "expected Welcome as the first frame, got {}",
                frame_name(&other)
            )))
        }
        None => return SessionOutcome::before_welcome(SessionEnd::StreamEnded),
    };
    let welcomed_at = Instant::now();
    params.metrics.frames_in.welcome.inc();
    params.metrics.sessions.inc();
    let interval = if welcome.heartbeat_interval_ms > 0 {
        Duration::from_millis(u64::from(welcome.heartbeat_interval_ms))
    } else {
        params.heartbeat_interval
    };
    params.outbox.on_welcome(epoch, welcome.acked_seq);
    let _ = welcomed_tx.send(true);
    let _ = params
        .events
        .send(SessionEvent::Welcomed {
            session_id: welcome.session_id.clone(),
            acked_seq: welcome.acked_seq,
            heartbeat_interval: interval,
            max_frame_bytes: welcome.max_frame_bytes,
        })
        .await;

    let end = Pump {
        params: &params,
        interval,
        draining_since: None,
        drain_reconnect_after: Duration::ZERO,
        deliveries: FuturesOrdered::new(),
    }
    .run(&mut inbound)
    .await;
    // Closing the request side lets the backend see a clean end.
    writer_cancel.cancel();
    SessionOutcome {
        welcomed_at: Some(welcomed_at),
        end,
    }
}

struct Pump<'a> {
    params: &'a SessionParams,
    interval: Duration,
    draining_since: Option<Instant>,
    drain_reconnect_after: Duration,
    deliveries: FuturesOrdered<BoxFuture<'static, ()>>,
}

impl Pump<'_> {
    async fn run(mut self, inbound: &mut tonic::Streaming<BackendFrame>) -> SessionEnd {
        let silence_limit = self.interval * 3;
        let mut heartbeat = tokio::time::interval(self.interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_check = tokio::time::interval(Duration::from_millis(50));
        let mut nonce: u64 = 0;
        // One deadline across loop turns: re-arming a timeout on every turn
        // would let our own heartbeat ticks hide a silent backend forever.
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                _ = self.params.cancel.cancelled() => return SessionEnd::Cancelled,
                () = &mut silence => return SessionEnd::HeartbeatTimeout(silence_limit),
                _ = heartbeat.tick() => {
                    nonce += 1;
                    self.params.outbox.push_control(Body::Heartbeat(Heartbeat { sent_at_unix_ms: now_unix_ms(), nonce }));
                }
                Some(()) = self.deliveries.next(), if !self.deliveries.is_empty() => {}
                _ = drain_check.tick(), if self.draining_since.is_some() => {
                    if let Some(end) = self.drain_finished() {
                        return end;
                    }
                }
                read = inbound.message() => {
                    let first = match read {
                        Err(status) => return status_end(&status),
                        Ok(None) => return SessionEnd::StreamEnded,
                        Ok(Some(frame)) => frame,
                    };
                    silence.as_mut().reset(tokio::time::Instant::now() + silence_limit);
                    if let Some(end) = self.handle_batch(first, inbound).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles `first` and every frame already readable, so commands reach
    /// the router in batches and acks are applied once per batch.
    async fn handle_batch(
        &mut self,
        first: BackendFrame,
        inbound: &mut tonic::Streaming<BackendFrame>,
    ) -> Option<SessionEnd> {
        let mut batch = InboundBatch::default();
        batch.add(first, &self.params.metrics);
        let mut end = None;
        while batch.frames < READ_BATCH {
            match inbound.message().now_or_never() {
                Some(Ok(Some(frame))) => batch.add(frame, &self.params.metrics),
                Some(Ok(None)) => {
                    end = Some(SessionEnd::StreamEnded);
                    break;
                }
                Some(Err(status)) => {
                    end = Some(status_end(&status));
                    break;
                }
                None => break,
            }
        }
        if let Some(acked) = batch.max_ack {
            self.params.outbox.ack(acked);
        }
        // Commands read before a Drain in the same batch still run; those after are refused.
        if !batch.commands.is_empty() {
            self.deliver(batch.commands, false).await;
        }
        if let Some(drain) = batch.drain {
            if self.draining_since.is_none() {
                tracing::info!(reason = %drain.reason, reconnect_after_ms = drain.reconnect_after_ms, "backend asked to drain this stream");
                self.draining_since = Some(Instant::now());
                self.drain_reconnect_after =
                    Duration::from_millis(u64::from(drain.reconnect_after_ms));
                let _ = self
                    .params
                    .events
                    .send(SessionEvent::Draining {
                        reason: drain.reason,
                    })
                    .await;
            }
        }
        if !batch.after_drain.is_empty() {
            self.deliver(batch.after_drain, true).await;
        }
        if !batch.cancels.is_empty() {
            let _slot = self.params.sink.gauge.enter();
            let _ = self
                .params
                .sink
                .cancels
                .send(CancelCommands(batch.cancels))
                .await;
        }
        if let Some(rotate) = batch.rotate {
            let _ = self
                .params
                .events
                .send(SessionEvent::RotateCredentials {
                    token: Secret::new(rotate.cluster_token),
                })
                .await;
        }
        if end.is_none() && self.draining_since.is_some() {
            end = self.drain_finished();
        }
        end
    }

    async fn deliver(&mut self, commands: Vec<crate::proto::Command>, draining: bool) {
        let draining = draining || self.draining_since.is_some();
        while self.deliveries.len() >= DELIVERY_PIPELINE {
            self.deliveries.next().await;
        }
        let slot = self.params.sink.gauge.enter();
        let request = self
            .params
            .sink
            .commands
            .send(IncomingCommands { commands, draining });
        self.deliveries.push_back(Box::pin(async move {
            let _ = request.await;
            drop(slot);
        }));
    }

    /// A draining session closes once in-flight commands finished and their
    /// results were written (or after a grace period: they stay in the replay
    /// buffer for the next session either way).
    fn drain_finished(&self) -> Option<SessionEnd> {
        let since = self.draining_since?;
        let idle = self.params.metrics.commands_in_flight.get() == 0
            && !self.params.outbox.has_unsent_reliable();
        if idle || since.elapsed() >= DRAIN_GRACE {
            Some(SessionEnd::Drained {
                reconnect_after: self.drain_reconnect_after,
            })
        } else {
            None
        }
    }
}

/// The frames of one read, sorted by what they ask (the fuzz harness
/// drives it too).
#[derive(Default)]
pub(crate) struct InboundBatch {
    pub(crate) frames: usize,
    pub(crate) max_ack: Option<u64>,
    pub(crate) commands: Vec<crate::proto::Command>,
    pub(crate) after_drain: Vec<crate::proto::Command>,
    pub(crate) cancels: Vec<String>,
    pub(crate) drain: Option<crate::proto::Drain>,
    pub(crate) rotate: Option<crate::proto::RotateCredentials>,
}

impl InboundBatch {
    pub(crate) fn add(&mut self, frame: BackendFrame, metrics: &Metrics) {
        use backend_frame::Body as B;
        self.frames += 1;
        match frame.body {
            Some(B::Heartbeat(_)) => {
                metrics.frames_in.heartbeat.inc();
            }
            Some(B::Ack(ack)) => {
                metrics.frames_in.ack.inc();
                self.max_ack = Some(self.max_ack.unwrap_or(0).max(ack.acked_seq));
            }
            Some(B::Command(command)) => {
                metrics.frames_in.command.inc();
                if self.drain.is_some() {
                    self.after_drain.push(command);
                } else {
                    if self.commands.len() == self.commands.capacity() && !self.commands.is_empty()
                    {
                        // More than a few: under load the batch fills up, so
                        // grow once to its size rather than copying the
                        // commands at every doubling.
                        self.commands.reserve(READ_BATCH - self.commands.len());
                    }
                    self.commands.push(command);
                }
            }
            Some(B::Cancel(cancel)) => {
                metrics.frames_in.cancel.inc();
                self.cancels.push(cancel.command_id);
            }
            Some(B::Drain(drain)) => {
                metrics.frames_in.drain.inc();
                self.drain.get_or_insert(drain);
            }
            Some(B::RotateCredentials(rotate)) => {
                metrics.frames_in.rotate_credentials.inc();
                self.rotate = Some(rotate);
            }
            Some(B::Welcome(_)) => tracing::warn!("ignoring a second Welcome on the same stream"),
            None => tracing::debug!("ignoring an empty backend frame"),
        }
    }
}

fn status_end(status: &tonic::Status) -> SessionEnd {
    SessionEnd::Status {
        code: status.code(),
        message: status.message().to_string(),
    }
}

fn frame_name(frame: &BackendFrame) -> &'static str {
    use backend_frame::Body as B;
    match &frame.body {
        Some(B::Welcome(_)) => "Welcome",
        Some(B::Heartbeat(_)) => "Heartbeat",
        Some(B::Ack(_)) => "Ack",
        Some(B::Command(_)) => "Command",
        Some(B::Cancel(_)) => "CancelCommand",
        Some(B::Drain(_)) => "Drain",
        Some(B::RotateCredentials(_)) => "RotateCredentials",
        None => "an empty frame",
    }
}

struct Writer {
    hello: Option<Hello>,
    outbox: OutboxHandle,
    epoch: u64,
    welcomed: watch::Receiver<bool>,
    cancel: CancellationToken,
}

/// The request stream: `Hello` at once, then — after `Welcome` — frames
/// from the outbox in priority order until the session is cancelled.
///
/// Frames are taken from the outbox in batches and the waiting logic runs
/// once per batch, not per frame: under load one lock and one turn of the
/// writer's future serve up to `WRITE_BATCH` frames.
fn outbound_frames(
    hello: Hello,
    outbox: OutboxHandle,
    epoch: u64,
    welcomed: watch::Receiver<bool>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = RelayerFrame> + Send + 'static {
    let writer = Writer {
        hello: Some(hello),
        outbox,
        epoch,
        welcomed,
        cancel,
    };
    let batches = futures::stream::unfold(writer, |mut w| async move {
        if let Some(hello) = w.hello.take() {
            let frame = RelayerFrame {
                seq: 0,
                body: Some(Body::Hello(hello)),
            };
            return Some((VecDeque::from([(frame, FrameClass::Control)]), w));
        }
        if !*w.welcomed.borrow() {
            tokio::select! {
                _ = w.cancel.cancelled() => return None,
                changed = w.welcomed.wait_for(|welcomed| *welcomed) => if changed.is_err() { return None },
            }
        }
        loop {
            let mut ready = VecDeque::new();
            if w.cancel.is_cancelled() || !w.outbox.take_ready(w.epoch, &mut ready, WRITE_BATCH) {
                return None;
            }
            if !ready.is_empty() {
                return Some((ready, w));
            }
            tokio::select! {
                _ = w.cancel.cancelled() => return None,
                _ = w.outbox.wait_ready() => {}
            }
        }
    });
    batches
        .flat_map(futures::stream::iter)
        .map(move |(frame, class)| {
            class.counter(&metrics.frames_out).inc();
            frame
        })
}
