//! The reconnect policy (protocol.md, "Connection failures"): how a session
//! ended → the next connection state, how long to wait before the next dial,
//! what the breaker counts, what `/health` says, and whether a refused
//! rotated token falls back to the one it replaced. [`Reconnect`] owns the
//! backoff and the circuit breaker; the ConnectionActor only carries its
//! answers out (timers, logs, the credential write-back).
//!
//! A *failure* is a dial error, a handshake error, a call that ends before
//! `Welcome`, or a stream that ends within [`EARLY_END`] of it; a drained
//! stream is not. A session that stayed up [`HEALTHY_AFTER`] resets backoff
//! and the breaker's count.
//!
//! **Endpoint failover** (config.md, `backend.grpc_endpoints`): the policy
//! also says which endpoint the next dial goes to. It stays on the one that
//! last reached `Welcome` (sticky) and moves to the next, wrapping around,
//! when the breaker opens on the current one. A fresh endpoint starts with a
//! closed breaker and is dialled after the usual backoff; only once every
//! endpoint has opened the breaker since the last `Welcome` does the relayer
//! wait out the open period (then probes the next one), so a backend that is
//! wholly down is not hammered.

use std::time::{Duration, Instant};

use super::breaker::{BreakerState, CircuitBreaker, Permit};
use super::session::{SessionEnd, EARLY_END};
use super::state::ConnState;
use crate::backoff::{with_extra_jitter, Backoff};
use crate::proto::PROTOCOL_VERSION;

/// A session that stayed up this long resets backoff and failure count.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// RESOURCE_EXHAUSTED: back off at least this long.
pub const EXHAUSTED_FLOOR: Duration = Duration::from_secs(5);
/// `Drain.reconnect_after_ms` gets up to this much extra jitter, so a fleet
/// drained at once does not come back at once.
pub const DRAIN_JITTER: f64 = 0.5;

/// How one session ended, as the policy needs to know it.
#[derive(Debug)]
pub struct Ended<'a> {
    pub end: &'a SessionEnd,
    /// How long it streamed after `Welcome`; `None` if it never got one.
    pub lived: Option<Duration>,
    /// This relayer's version, for the protocol-version message.
    pub relayer_version: &'a str,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    /// The state to show until the next dial.
    pub state: ConnState,
    /// Wait this long, then dial.
    pub delay: Duration,
    /// Counted as a failure (toward the breaker).
    pub failure: bool,
    /// Retrying alone will not help (credentials or protocol version
    /// refused): `/health` says `unhealthy`.
    pub failing_hard: bool,
    /// What `/health` shows as `grpc.lastError`; `None` = leave it as it is.
    pub last_error: Option<String>,
    /// The backend refused the credentials: if the session presented a
    /// rotated token no session has confirmed yet, fall back to the token it
    /// replaced (and write that one back to the Secret).
    pub roll_back_rotation: bool,
}

/// The backoff and the breaker, and the decisions that move them.
#[derive(Debug)]
pub struct Reconnect {
    pub backoff: Backoff,
    pub breaker: CircuitBreaker,
    /// How many endpoints there are, and the one the next dial goes to.
    endpoints: usize,
    endpoint: usize,
    /// Endpoints whose breaker opened since the last `Welcome`.
    opened_since_welcome: usize,
}

impl Reconnect {
    pub fn new(backoff: Backoff, breaker: CircuitBreaker) -> Self {
        Self::with_endpoints(backoff, breaker, 1, 0)
    }

    /// A policy over `endpoints` endpoints, starting at `current` (the one a
    /// restarted actor was on: stickiness outlives the actor).
    pub fn with_endpoints(
        backoff: Backoff,
        breaker: CircuitBreaker,
        endpoints: usize,
        current: usize,
    ) -> Self {
        let endpoints = endpoints.max(1);
        Self {
            backoff,
            breaker,
            endpoints,
            endpoint: current % endpoints,
            opened_since_welcome: 0,
        }
    }

    /// The endpoint (index into `backend.grpc_endpoints`) to dial next.
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }

    /// Whether to dial now, probe once, or wait (the breaker is open).
    pub fn permit(&mut self, now: Instant) -> Permit {
        self.breaker.permit(now)
    }

    /// A `Welcome`: a half-open probe closes the breaker, and this
    /// endpoint is the one to stay on.
    pub fn on_welcome(&mut self) {
        self.breaker.on_welcome();
        self.opened_since_welcome = 0;
    }

    /// Streaming for `HEALTHY_AFTER`: start counting from zero again.
    pub fn on_healthy(&mut self) {
        self.backoff.reset();
        self.breaker.on_healthy();
    }

    /// A failure before any session could start (credentials missing, the
    /// router not running) or a failed session: counts toward the breaker,
    /// then backs off — at least `floor` — or waits out the open breaker.
    pub fn after_failure(&mut self, floor: Duration, now: Instant) -> (ConnState, Duration) {
        self.breaker.on_failure(now);
        let delay = self.backoff.next_delay().max(floor);
        match self.breaker.state() {
            BreakerState::Open { until } => {
                if self.fail_over() {
                    return (ConnState::Backoff, delay);
                }
                (
                    ConnState::BreakerOpen,
                    until.saturating_duration_since(now).max(delay),
                )
            }
            _ => (ConnState::Backoff, delay),
        }
    }

    /// The breaker opened on the current endpoint: move to the next one.
    /// True when that one is fresh (its breaker closed, dial it after the
    /// backoff); false when every endpoint opened since the last `Welcome`
    /// (keep the breaker open: wait, then probe the next one).
    fn fail_over(&mut self) -> bool {
        if self.endpoints == 1 {
            return false;
        }
        self.endpoint = (self.endpoint + 1) % self.endpoints;
        self.opened_since_welcome += 1;
        if self.opened_since_welcome >= self.endpoints {
            return false;
        }
        self.breaker.on_healthy();
        true
    }

    /// The next step after a session ended.
    pub fn next_step(&mut self, ended: &Ended<'_>, now: Instant) -> Next {
        let quiet = |state, delay| Next {
            state,
            delay,
            failure: false,
            failing_hard: false,
            last_error: None,
            roll_back_rotation: false,
        };
        match ended.end {
            SessionEnd::Drained { reconnect_after } => {
                return quiet(
                    ConnState::Draining,
                    with_extra_jitter(*reconnect_after, DRAIN_JITTER),
                )
            }
            // Re-opened on purpose (leadership change, rotated token): at once.
            SessionEnd::Cancelled => return quiet(ConnState::Idle, Duration::ZERO),
            _ => {}
        }
        if ended.lived.is_some_and(|lived| lived >= HEALTHY_AFTER) {
            self.on_healthy();
        }
        let failure = ended.lived.is_none_or(|lived| lived < EARLY_END);
        let mut next = Next {
            state: ConnState::Backoff,
            delay: Duration::ZERO,
            failure,
            failing_hard: false,
            last_error: Some(ended.end.to_string()),
            roll_back_rotation: false,
        };
        let mut floor = Duration::ZERO;
        if let SessionEnd::Status { code, message } = ended.end {
            match code {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    next.failing_hard = true;
                    next.roll_back_rotation = true;
                    next.last_error = Some(format!(
                        "the backend refused the cluster credentials ({code:?}: {message}); the relayer re-reads them before every dial — check the clusterId/clusterToken files or re-register the cluster"
                    ));
                }
                tonic::Code::FailedPrecondition => {
                    // Retrying sooner cannot help: hold the breaker open.
                    let open_for = self.breaker.open_for();
                    self.breaker.hold_open(now, open_for);
                    next.state = ConnState::BreakerOpen;
                    next.delay = open_for;
                    next.failing_hard = true;
                    next.last_error = Some(format!(
                        "the backend does not support protocol version {PROTOCOL_VERSION} of relayer {} ({message}); upgrade the backend or the relayer",
                        ended.relayer_version
                    ));
                    return next;
                }
                tonic::Code::ResourceExhausted => floor = EXHAUSTED_FLOOR,
                _ => {}
            }
        }
        if failure {
            (next.state, next.delay) = self.after_failure(floor, now);
        } else {
            next.delay = self.backoff.next_delay().max(floor);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);
    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn policy(threshold: u32) -> Reconnect {
        Reconnect::new(
            Backoff::new(BASE, MAX),
            CircuitBreaker::new(threshold, OPEN_FOR),
        )
    }

    fn status(code: tonic::Code) -> SessionEnd {
        SessionEnd::Status {
            code,
            message: "said the backend".into(),
        }
    }

    /// One row: how the session ended and lived, and what must follow.
    struct Row {
        name: &'static str,
        end: SessionEnd,
        lived: Option<Duration>,
        /// Failures already counted before this one.
        earlier_failures: u32,
        state: ConnState,
        /// The delay lies within this range.
        delay: (Duration, Duration),
        failure: bool,
        failing_hard: bool,
        roll_back: bool,
        breaker_after: &'static str,
        error_mentions: Option<&'static str>,
    }

    fn check(row: Row) {
        let mut policy = policy(3);
        let now = Instant::now();
        for _ in 0..row.earlier_failures {
            policy.after_failure(Duration::ZERO, now);
        }
        let next = policy.next_step(
            &Ended {
                end: &row.end,
                lived: row.lived,
                relayer_version: "9.9.9",
            },
            now,
        );
        assert_eq!(next.state, row.state, "{}", row.name);
        assert!(
            next.delay >= row.delay.0 && next.delay <= row.delay.1,
            "{}: delay {:?} not in {:?}",
            row.name,
            next.delay,
            row.delay
        );
        assert_eq!(next.failure, row.failure, "{}: failure", row.name);
        assert_eq!(next.failing_hard, row.failing_hard, "{}: hard", row.name);
        assert_eq!(
            next.roll_back_rotation, row.roll_back,
            "{}: rollback",
            row.name
        );
        assert_eq!(
            policy.breaker.state().name(),
            row.breaker_after,
            "{}: breaker",
            row.name
        );
        match row.error_mentions {
            Some(text) => assert!(
                next.last_error.as_deref().is_some_and(|e| e.contains(text)),
                "{}: {:?} should mention {text}",
                row.name,
                next.last_error
            ),
            None => assert_eq!(next.last_error, None, "{}", row.name),
        }
    }

    fn row(name: &'static str, end: SessionEnd) -> Row {
        Row {
            name,
            end,
            lived: None,
            earlier_failures: 0,
            state: ConnState::Backoff,
            delay: (Duration::ZERO, BASE),
            failure: true,
            failing_hard: false,
            roll_back: false,
            breaker_after: "closed",
            error_mentions: None,
        }
    }

    #[test]
    fn session_outcome_to_next_step() {
        let secs = Duration::from_secs;
        let rows = vec![
            Row {
                state: ConnState::Draining,
                delay: (secs(4), secs(6)),
                failure: false,
                ..row(
                    "drain: reconnect_after plus up to 50% jitter, not a failure",
                    SessionEnd::Drained {
                        reconnect_after: secs(4),
                    },
                )
            },
            Row {
                state: ConnState::Idle,
                delay: (Duration::ZERO, Duration::ZERO),
                failure: false,
                ..row("cancelled on purpose: dial at once", SessionEnd::Cancelled)
            },
            Row {
                error_mentions: Some("dial failed"),
                ..row(
                    "dial error: a failure, backoff",
                    SessionEnd::Dial("refused".into()),
                )
            },
            Row {
                error_mentions: Some("Unavailable"),
                lived: Some(secs(3)),
                ..row(
                    "UNAVAILABLE within 10 s of Welcome: a failure",
                    status(tonic::Code::Unavailable),
                )
            },
            Row {
                error_mentions: Some("heartbeat"),
                lived: Some(secs(30)),
                failure: false,
                ..row(
                    "ended after 30 s of streaming: backoff, not a failure",
                    SessionEnd::HeartbeatTimeout(secs(30)),
                )
            },
            Row {
                delay: (EXHAUSTED_FLOOR, EXHAUSTED_FLOOR),
                error_mentions: Some("ResourceExhausted"),
                ..row(
                    "RESOURCE_EXHAUSTED: at least 5 s",
                    status(tonic::Code::ResourceExhausted),
                )
            },
            Row {
                failing_hard: true,
                roll_back: true,
                error_mentions: Some("refused the cluster credentials"),
                ..row(
                    "UNAUTHENTICATED: hard, falls back from an unconfirmed rotation",
                    status(tonic::Code::Unauthenticated),
                )
            },
            Row {
                failing_hard: true,
                roll_back: true,
                error_mentions: Some("re-register"),
                ..row(
                    "PERMISSION_DENIED: the same",
                    status(tonic::Code::PermissionDenied),
                )
            },
            Row {
                state: ConnState::BreakerOpen,
                delay: (OPEN_FOR, OPEN_FOR),
                failing_hard: true,
                breaker_after: "open",
                error_mentions: Some("protocol version 1 of relayer 9.9.9"),
                ..row(
                    "FAILED_PRECONDITION: breaker held open for its period",
                    status(tonic::Code::FailedPrecondition),
                )
            },
            Row {
                earlier_failures: 2,
                state: ConnState::BreakerOpen,
                delay: (OPEN_FOR, OPEN_FOR),
                breaker_after: "open",
                error_mentions: Some("Welcome"),
                ..row(
                    "the threshold-th failure opens the breaker",
                    SessionEnd::HandshakeTimeout(secs(10)),
                )
            },
            Row {
                earlier_failures: 2,
                lived: Some(secs(90)),
                failure: false,
                error_mentions: Some("closed the stream"),
                ..row(
                    "a long healthy session resets the count: no breaker",
                    SessionEnd::StreamEnded,
                )
            },
        ];
        for row in rows {
            check(row);
        }
    }

    /// (failures on the current endpoint, welcome after?, expected
    /// endpoint, expected state) step by step over three endpoints with a
    /// threshold of 2.
    #[test]
    fn failover_moves_on_when_the_breaker_opens_and_sticks_after_welcome() {
        let mut policy = Reconnect::with_endpoints(
            Backoff::new(BASE, MAX),
            CircuitBreaker::new(2, OPEN_FOR),
            3,
            0,
        );
        let now = Instant::now();
        let fail = |policy: &mut Reconnect| policy.after_failure(Duration::ZERO, now);
        // One failure: stay.
        assert_eq!(fail(&mut policy).0, ConnState::Backoff);
        assert_eq!(policy.endpoint(), 0);
        // The breaker opens on 0: move to 1 at once (backoff, not the open period).
        let (state, delay) = fail(&mut policy);
        assert_eq!((state, policy.endpoint()), (ConnState::Backoff, 1));
        assert!(delay <= MAX, "{delay:?}");
        assert_eq!(policy.breaker.state(), BreakerState::Closed);
        // 1 fails twice: on to 2.
        fail(&mut policy);
        assert_eq!(fail(&mut policy).0, ConnState::Backoff);
        assert_eq!(policy.endpoint(), 2);
        // 2 fails twice: every endpoint opened since the last Welcome, so
        // the breaker stays open for its period, and the probe goes to 0.
        fail(&mut policy);
        let (state, delay) = fail(&mut policy);
        assert_eq!((state, policy.endpoint()), (ConnState::BreakerOpen, 0));
        assert!(delay >= OPEN_FOR, "{delay:?}");
        // The probe to 0 reaches Welcome: sticky on 0.
        assert_eq!(policy.permit(now + OPEN_FOR), Permit::Probe);
        policy.on_welcome();
        assert_eq!(policy.breaker.state(), BreakerState::Closed);
        assert_eq!(policy.endpoint(), 0);
        // A later outage of 0 moves on to 1 again, at once.
        fail(&mut policy);
        assert_eq!(fail(&mut policy).0, ConnState::Backoff);
        assert_eq!(policy.endpoint(), 1);
        // One endpoint only: the breaker behaves as before.
        let mut single = policy_with(2);
        let now = Instant::now();
        single.after_failure(Duration::ZERO, now);
        assert_eq!(
            single.after_failure(Duration::ZERO, now).0,
            ConnState::BreakerOpen
        );
        assert_eq!(single.endpoint(), 0);
    }

    fn policy_with(threshold: u32) -> Reconnect {
        policy(threshold)
    }

    #[test]
    fn backoff_grows_until_a_healthy_session() {
        let mut policy = policy(100);
        let now = Instant::now();
        let ceiling = |policy: &Reconnect| policy.backoff.ceiling();
        let dial = SessionEnd::Dial("refused".into());
        let ended = Ended {
            end: &dial,
            lived: None,
            relayer_version: "9.9.9",
        };
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            policy.next_step(&ended, now);
            ceilings.push(ceiling(&policy));
        }
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]), "{ceilings:?}");
        assert_eq!(*ceilings.last().unwrap(), MAX);
        let healthy = SessionEnd::StreamEnded;
        policy.next_step(
            &Ended {
                end: &healthy,
                lived: Some(HEALTHY_AFTER),
                relayer_version: "9.9.9",
            },
            now,
        );
        assert!(ceiling(&policy) <= BASE * 2, "{:?}", ceiling(&policy));
        assert_eq!(policy.breaker.consecutive_failures(), 0);
    }
}
