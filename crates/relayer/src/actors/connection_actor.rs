//! `ConnectionActor`: the stream's lifecycle. It decides when to dial
//! (backoff with full jitter, circuit breaker, drain delays), starts each
//! session as its own task, and turns how a session ended into the next
//! step (protocol.md, "Connection failures"). States: Idle, Connecting,
//! Handshaking, Streaming, Backoff, BreakerOpen, HalfOpen, Draining.
//!
//! A restart of this actor aborts the running session; the outbox keeps
//! every unacked frame and the sequence counter, so the next session
//! replays them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::context::RelayContext;
use super::messages::{LeadershipChanged, WriteBackToken, WriteReason};
use super::workload_executor::SUPPORTED_ACTIONS;
use crate::backoff::Backoff;
use crate::connection::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::connection::messages::SessionEvent;
use crate::connection::reconnect::{Ended, Reconnect, HEALTHY_AFTER};
use crate::connection::session::{self, CommandSink, SessionEnd, SessionOutcome, SessionParams};
pub use crate::connection::state::ConnState;
use crate::credentials::rotated::rotated_token_problem;
use crate::credentials::Secret;
use crate::metrics::Metrics;
use crate::proto::{Hello, TelemetryStats, PROTOCOL_VERSION};
use crate::supervisor::{ChildContext, Stop};

/// After `RotateCredentials`, reconnect with the new token once the Secret
/// write-back ends, or after this long whatever it is doing.
const WRITE_BACK_WAIT: Duration = Duration::from_secs(15);

struct RunningSession {
    id: u64,
    /// The token this session presented: confirms or rolls back a rotation.
    token: Secret,
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
}

pub struct ConnectionActor {
    rc: Arc<RelayContext>,
    child: ChildContext,
    /// Backoff and breaker: the reconnect policy decides, this actor acts.
    reconnect: Reconnect,
    state: ConnState,
    session: Option<RunningSession>,
    sessions_started: u64,
    session_id: Option<String>,
    welcomed_at: Option<Instant>,
    probing: bool,
    failing_hard: bool,
    last_error: Option<String>,
    cluster_id: Option<String>,
    stopping: bool,
    next_dial_at: Option<Instant>,
}

impl ConnectionActor {
    pub fn new(rc: Arc<RelayContext>, child: ChildContext) -> Self {
        let cfg = &rc.config.connection;
        let backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
        let breaker = CircuitBreaker::new(cfg.breaker_failure_threshold, cfg.breaker_open_duration);
        let cluster_id = rc.credentials.current().map(|c| c.cluster_id);
        let reconnect =
            Reconnect::with_endpoints(backoff, breaker, rc.endpoints.len(), rc.endpoints.index());
        Self {
            rc,
            child,
            reconnect,
            state: ConnState::Idle,
            session: None,
            sessions_started: 0,
            session_id: None,
            welcomed_at: None,
            probing: false,
            failing_hard: false,
            last_error: None,
            cluster_id,
            stopping: false,
            next_dial_at: None,
        }
    }

    fn set_state(&mut self, state: ConnState) {
        if self.state != state {
            tracing::debug!(
                from = self.state.name(),
                to = state.name(),
                "connection state"
            );
        }
        self.state = state;
        self.publish();
    }

    fn publish(&self) {
        let breaker = self.reconnect.breaker.state();
        let failing_hard = self.failing_hard || matches!(breaker, BreakerState::Open { .. });
        {
            let mut link = self.rc.link.write();
            link.state = self.state.name().to_string();
            link.connected = self.state == ConnState::Streaming;
            link.cluster_id = self.cluster_id.clone();
            link.session_id = self.session_id.clone();
            link.last_error = self.last_error.clone();
            link.failing_hard = failing_hard;
            link.breaker = breaker.name().to_string();
            link.consecutive_failures = self.reconnect.breaker.consecutive_failures();
            let dialer = self.rc.endpoints.current();
            link.endpoint = dialer.uri().to_string();
            link.tls = dialer.is_tls();
            link.proxy = dialer.proxy().map(|proxy| proxy.redacted());
        }
        Metrics::set_state(
            &self.rc.metrics.connection_state,
            &ConnState::ALL,
            self.state.name(),
        );
        Metrics::set_state(
            &self.rc.metrics.breaker_state,
            &["closed", "open", "half_open"],
            breaker.name(),
        );
        self.child.set_state(self.state.name());
        // The board keeps the last error (a crash's too) after recovery.
        if self.last_error.is_some() {
            self.child.set_error(self.last_error.clone());
        }
        let outbox = self.rc.outbox.stats();
        self.child.set_details(json!({
            "endpoint": self.rc.endpoints.current().uri(),
            "endpoint_index": self.rc.endpoints.index(),
            "endpoints": self.rc.endpoints.all().iter().map(|d| d.uri()).collect::<Vec<_>>(),
            "proxy": self.rc.endpoints.current().proxy().map(|proxy| proxy.redacted()),
            "tls": self.rc.endpoints.current().is_tls(),
            "cluster_id": self.cluster_id,
            "session_id": self.session_id,
            "sessions_started": self.sessions_started,
            "breaker": breaker.name(),
            "consecutive_failures": self.reconnect.breaker.consecutive_failures(),
            "backoff_attempt": self.reconnect.backoff.attempt(),
            "next_dial_in_ms": self.next_dial_at.map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
            "replay_buffer": outbox,
        }));
    }

    fn hello(&self, cluster_id: &str) -> Hello {
        let cfg = &self.rc.config;
        let mut labels = std::collections::HashMap::new();
        labels.insert("cluster.name".to_string(), cfg.cluster.name.clone());
        if !cfg.cluster.region.is_empty() {
            labels.insert("cluster.region".to_string(), cfg.cluster.region.clone());
        }
        if !cfg.cluster.environment.is_empty() {
            labels.insert(
                "cluster.environment".to_string(),
                cfg.cluster.environment.clone(),
            );
        }
        for (key, value) in &cfg.cluster.labels {
            labels.insert(key.clone(), value.clone());
        }
        // What the backend must sign (only when the cluster is locked).
        labels.extend(self.rc.lock.hello_labels());
        let allowed = &cfg.commands.allowed_actions;
        let capabilities = std::iter::once("ping")
            .chain(
                SUPPORTED_ACTIONS
                    .iter()
                    .copied()
                    .filter(|_| cfg.kubernetes.enabled),
            )
            .filter(|action| allowed.iter().any(|a| a == action))
            .map(str::to_string)
            .collect();
        let outbox = self.rc.outbox.stats();
        Hello {
            cluster_id: cluster_id.to_string(),
            instance_id: self.rc.identity.instance_id.clone(),
            incarnation: self.rc.identity.incarnation.clone(),
            relayer_version: self.rc.identity.version.to_string(),
            protocol_version: PROTOCOL_VERSION,
            capabilities,
            last_acked_seq: outbox.acked_seq,
            labels,
            leader: self.rc.leader.load(std::sync::atomic::Ordering::Relaxed),
            telemetry_stats: Some(TelemetryStats {
                batches_dropped: outbox.telemetry_batches_dropped
                    + self
                        .rc
                        .telemetry
                        .counters
                        .dropped_batches
                        .load(std::sync::atomic::Ordering::Relaxed),
                items_dropped: outbox.telemetry_items_dropped
                    + self
                        .rc
                        .telemetry
                        .counters
                        .dropped_items
                        .load(std::sync::atomic::Ordering::Relaxed),
            }),
            heartbeat_interval_ms: self
                .rc
                .heartbeat_interval()
                .as_millis()
                .min(u32::MAX as u128) as u32,
        }
    }

    fn schedule_dial(&mut self, delay: Duration, state: ConnState, ctx: &mut Context<Self>) {
        self.next_dial_at = Some(Instant::now() + delay);
        self.set_state(state);
        ctx.run_later(delay, |act, ctx| act.dial(ctx));
    }

    fn dial(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.session.is_some() {
            return;
        }
        self.next_dial_at = None;
        fail::fail_point!("connection-dial");
        match self.reconnect.permit(Instant::now()) {
            Permit::WaitUntil(until) => {
                let wait = until.saturating_duration_since(Instant::now());
                self.schedule_dial(wait, ConnState::BreakerOpen, ctx);
                return;
            }
            Permit::Probe => self.probing = true,
            Permit::Dial => self.probing = false,
        }
        let credentials = match self.rc.credentials.load() {
            Ok(credentials) => credentials,
            Err(err) => {
                self.last_error = Some(format!("cannot load cluster credentials: {err}"));
                self.failing_hard = true;
                tracing::error!(error = %err, "cannot load cluster credentials");
                self.after_failure(ctx);
                return;
            }
        };
        self.cluster_id = Some(credentials.cluster_id.clone());
        let Some(router) = self.rc.directory.router() else {
            self.last_error = Some("the command router is not running".into());
            self.after_failure(ctx);
            return;
        };
        if self.sessions_started > 0 {
            self.rc.metrics.reconnects.inc();
        }
        self.sessions_started += 1;
        let id = self.sessions_started;
        let cfg = &self.rc.config.connection;
        let cancel = CancellationToken::new();
        let params = SessionParams {
            dialer: self.rc.endpoints.current().clone(),
            hello: self.hello(&credentials.cluster_id),
            cluster_id: credentials.cluster_id,
            token: credentials.token.clone(),
            heartbeat_interval: cfg.heartbeat_interval,
            handshake_timeout: cfg.connect_timeout,
            max_frame_bytes: cfg.max_frame_bytes as usize,
            outbox: self.rc.outbox.clone(),
            sink: CommandSink {
                commands: router.commands,
                cancels: router.cancels,
                gauge: router.gauge,
            },
            events: ctx.address().recipient(),
            metrics: self.rc.metrics.clone(),
            cancel: cancel.clone(),
        };
        // The session runs on the runtime's worker threads, off this actor's thread.
        let join = tokio::spawn(session::run(params));
        self.session = Some(RunningSession {
            id,
            token: credentials.token,
            cancel,
            abort: join.abort_handle(),
        });
        self.welcomed_at = None;
        self.session_id = None;
        self.set_state(if self.probing {
            ConnState::HalfOpen
        } else {
            ConnState::Connecting
        });
        ctx.spawn(join.into_actor(self).map(move |joined, act, ctx| {
            let outcome = joined.unwrap_or_else(|err| SessionOutcome {
                welcomed_at: act.welcomed_at,
                end: SessionEnd::Crashed(err.to_string()),
            });
            act.session_ended(id, outcome, ctx);
        }));
    }

    fn session_ended(&mut self, id: u64, outcome: SessionOutcome, ctx: &mut Context<Self>) {
        if self.session.as_ref().map(|s| s.id) != Some(id) {
            return;
        }
        fail::fail_point!("connection-session-ended");
        let presented = self.session.take().map(|s| s.token);
        self.session_id = None;
        let now = Instant::now();
        if self.stopping {
            ctx.stop();
            return;
        }
        let end = outcome.end;
        let next = self.reconnect.next_step(
            &Ended {
                end: &end,
                lived: outcome.welcomed_at.map(|at| now.duration_since(at)),
                relayer_version: self.rc.identity.version,
            },
            now,
        );
        if next.roll_back_rotation {
            self.rc.metrics.credential_reloads.inc();
            self.roll_back_rotation(presented.as_ref());
        }
        self.failing_hard = next.failing_hard;
        if next.last_error.is_some() {
            self.last_error = next.last_error;
        }
        match &end {
            SessionEnd::Drained { .. } => tracing::info!(
                delay_ms = next.delay.as_millis() as u64,
                "stream drained; reconnecting"
            ),
            SessionEnd::Cancelled => {}
            SessionEnd::Status {
                code: tonic::Code::FailedPrecondition,
                message,
            } => {
                tracing::error!(relayer_protocol = PROTOCOL_VERSION, relayer_version = self.rc.identity.version, backend_said = %message, "protocol version refused by the backend")
            }
            _ => tracing::warn!(reason = %end, failure = next.failure, "session ended"),
        }
        self.log_breaker_open(next.state, next.delay);
        self.follow_endpoint();
        self.schedule_dial(next.delay, next.state, ctx);
    }

    /// Makes the endpoint the policy chose the current one; a move is a
    /// failover, counted and logged.
    fn follow_endpoint(&self) {
        let from = self.rc.endpoints.current().uri().to_string();
        if self.rc.endpoints.set_current(self.reconnect.endpoint()) {
            self.rc.metrics.endpoint_failovers.inc();
            tracing::warn!(
                from = %from,
                to = self.rc.endpoints.current().uri(),
                "circuit breaker open on the backend endpoint; moving to the next one"
            );
        }
    }

    /// The backend refused the credentials: if the refused session presented
    /// a rotated token no session confirmed, the store falls back to the
    /// token it replaced and the CredentialWriter puts that one back.
    fn roll_back_rotation(&self, presented: Option<&Secret>) {
        let Some(previous) =
            presented.and_then(|token| self.rc.credentials.rollback_rotation(token))
        else {
            return;
        };
        tracing::warn!("the backend refused the rotated cluster token; falling back to the previous token and writing it back to the Secret");
        if let Some(writer) = self.rc.directory.credential_writer() {
            let _ = writer.try_send(WriteBackToken {
                token: previous,
                reason: WriteReason::Rollback,
            });
        }
    }

    /// A failure before a session could start: the policy backs off.
    fn after_failure(&mut self, ctx: &mut Context<Self>) {
        let (state, delay) = self.reconnect.after_failure(Duration::ZERO, Instant::now());
        self.log_breaker_open(state, delay);
        self.follow_endpoint();
        self.schedule_dial(delay, state, ctx);
    }

    fn log_breaker_open(&self, state: ConnState, wait: Duration) {
        if state == ConnState::BreakerOpen {
            tracing::warn!(
                open_for_ms = wait.as_millis() as u64,
                failures = self.reconnect.breaker.consecutive_failures(),
                "circuit breaker open"
            );
        }
    }
}

impl ConnectionActor {
    /// `RotateCredentials`: the new token wins from now on; the
    /// CredentialWriter puts it into the Secret, and once that write ends
    /// (or after `WRITE_BACK_WAIT`) the stream is re-opened with it, so the
    /// backend sees the new token in use and may retire the old one. If the
    /// backend refuses it, `session_ended` falls back to the previous token.
    fn rotate(&mut self, token: Secret, ctx: &mut Context<Self>) {
        if let Some(problem) = rotated_token_problem(token.expose()) {
            // Taking it would break every later dial and be written back.
            tracing::warn!(%problem, "ignored RotateCredentials from the backend; the current cluster token stays");
            self.last_error = Some(format!(
                "ignored RotateCredentials from the backend: {problem}; the current token stays"
            ));
            self.publish();
            return;
        }
        tracing::info!("the backend rotated the cluster token; writing it to the Secret, then reconnecting with it");
        self.rc.credentials.set_rotated_token(token.clone());
        let Some(writer) = self.rc.directory.credential_writer() else {
            self.reconnect_with_rotated_token();
            return;
        };
        let write = writer
            .send(WriteBackToken {
                token,
                reason: WriteReason::Rotation,
            })
            .timeout(WRITE_BACK_WAIT);
        ctx.spawn(write.into_actor(self).map(|written, act, _| {
            if written.is_err() {
                tracing::warn!("the Secret write-back did not finish in time; reconnecting with the rotated token anyway");
            }
            act.reconnect_with_rotated_token();
        }));
    }

    fn reconnect_with_rotated_token(&mut self) {
        let current = self.rc.credentials.current().map(|c| c.token);
        match &self.session {
            // Ends as Cancelled, which dials again at once (not a failure).
            Some(session) if Some(&session.token) != current.as_ref() => session.cancel.cancel(),
            _ => {}
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        self.dial(ctx);
    }
}

impl Handler<SessionEvent> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, event: SessionEvent, ctx: &mut Context<Self>) {
        match event {
            SessionEvent::Handshaking => {
                if self.state != ConnState::HalfOpen {
                    self.set_state(ConnState::Handshaking);
                }
            }
            SessionEvent::Welcomed {
                session_id,
                acked_seq,
                heartbeat_interval,
                max_frame_bytes,
            } => {
                let frame_limit = self.rc.frame_limit.apply_announced(max_frame_bytes);
                tracing::info!(%session_id, acked_seq, heartbeat_interval_ms = heartbeat_interval.as_millis() as u64, frame_limit, "stream established");
                if let Some(session) = &self.session {
                    if self.rc.credentials.confirm_rotation(&session.token) {
                        tracing::info!("the backend accepted the rotated cluster token");
                    }
                }
                self.reconnect.on_welcome();
                self.probing = false;
                self.failing_hard = false;
                self.last_error = None;
                self.welcomed_at = Some(Instant::now());
                self.session_id = Some(session_id);
                self.set_state(ConnState::Streaming);
                let id = self.session.as_ref().map(|s| s.id);
                ctx.run_later(HEALTHY_AFTER, move |act, _| {
                    if act.session.as_ref().map(|s| s.id) == id && act.state == ConnState::Streaming
                    {
                        act.reconnect.on_healthy();
                        act.publish();
                    }
                });
            }
            SessionEvent::Draining { reason } => {
                tracing::info!(%reason, "draining the stream");
                self.set_state(ConnState::Draining);
            }
            SessionEvent::RotateCredentials { token } => self.rotate(token, ctx),
        }
    }
}

impl Handler<LeadershipChanged> for ConnectionActor {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, _: &mut Context<Self>) {
        tracing::info!(
            leader = msg.leader,
            "leadership changed; re-opening the stream to announce it"
        );
        if let Some(session) = &self.session {
            // Ends as Cancelled, which dials again at once (not a failure).
            session.cancel.cancel();
        }
    }
}

impl Handler<Stop> for ConnectionActor {
    type Result = ();

    /// Closes the stream gracefully (the request side ends, so the backend
    /// sees a clean close), then stops; unacked frames stay in the outbox.
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.stopping = true;
        match &self.session {
            Some(session) => {
                session.cancel.cancel();
                self.set_state(ConnState::Draining);
                ctx.run_later(Duration::from_secs(2), |_, ctx| ctx.stop());
            }
            None => ctx.stop(),
        }
    }
}

impl Drop for ConnectionActor {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.cancel.cancel();
            session.abort.abort();
        }
        let mut link = self.rc.link.write();
        link.connected = false;
        link.state = "Idle".to_string();
    }
}
