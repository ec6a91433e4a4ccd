//! The connection circuit breaker (protocol.md, "Connection failures"): after
//! `threshold` consecutive failures no dial happens for `open_for`, then exactly
//! one half-open probe is let through; a probe that reaches `Welcome` closes
//! the breaker, a probe that fails opens it again.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker allows right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Dial normally.
    Dial,
    /// Dial as the single half-open probe.
    Probe,
    /// No dial before this instant.
    WaitUntil(Instant),
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    consecutive_failures: u32,
    state: BreakerState,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            consecutive_failures: 0,
            state: BreakerState::Closed,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Asks whether a dial may start at `now`; moves Open to HalfOpen when the
    /// open period is over.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Dial,
            BreakerState::Open { until } if now < until => Permit::WaitUntil(until),
            BreakerState::Open { .. } | BreakerState::HalfOpen => {
                if self.probe_in_flight {
                    return Permit::WaitUntil(now + self.open_for);
                }
                self.state = BreakerState::HalfOpen;
                self.probe_in_flight = true;
                Permit::Probe
            }
        }
    }

    /// A dial, handshake or early stream end failed.
    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let reopen = matches!(self.state, BreakerState::HalfOpen)
            || self.consecutive_failures >= self.threshold;
        self.probe_in_flight = false;
        if reopen {
            self.state = BreakerState::Open {
                until: now + self.open_for,
            };
        }
    }

    /// Forces the breaker open for at least `period` (FAILED_PRECONDITION:
    /// retry no faster than the open period).
    pub fn hold_open(&mut self, now: Instant, period: Duration) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.probe_in_flight = false;
        self.state = BreakerState::Open {
            until: now + period,
        };
    }

    /// The backend answered `Welcome`: a half-open probe closes the breaker.
    pub fn on_welcome(&mut self) {
        if matches!(self.state, BreakerState::HalfOpen) {
            self.state = BreakerState::Closed;
            self.consecutive_failures = 0;
        }
        self.probe_in_flight = false;
    }

    /// A session stayed healthy long enough: forget past failures.
    pub fn on_healthy(&mut self) {
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
        self.probe_in_flight = false;
    }

    pub fn open_for(&self) -> Duration {
        self.open_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(3, Duration::from_secs(30))
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.permit(t0), Permit::Dial);
            b.on_failure(t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(t0);
        assert_eq!(
            b.permit(t0 + Duration::from_secs(29)),
            Permit::WaitUntil(t0 + Duration::from_secs(30))
        );
    }

    #[test]
    fn allows_exactly_one_half_open_probe() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(31);
        assert_eq!(b.permit(later), Permit::Probe);
        assert!(matches!(b.permit(later), Permit::WaitUntil(_)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn failed_probe_reopens_and_welcome_closes() {
        let mut b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(b.permit(t1), Permit::Probe);
        b.on_failure(t1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + Duration::from_secs(30)
            }
        );
        let t2 = t1 + Duration::from_secs(31);
        assert_eq!(b.permit(t2), Permit::Probe);
        b.on_welcome();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.permit(t2), Permit::Dial);
    }

    #[test]
    fn welcome_while_closed_keeps_failure_count_until_healthy() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_welcome();
        assert_eq!(b.consecutive_failures(), 2);
        b.on_healthy();
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn hold_open_blocks_for_the_period() {
        let mut b = breaker();
        let t0 = Instant::now();
        b.hold_open(t0, Duration::from_secs(30));
        assert!(matches!(
            b.permit(t0 + Duration::from_secs(10)),
            Permit::WaitUntil(_)
        ));
        assert_eq!(b.permit(t0 + Duration::from_secs(30)), Permit::Probe);
    }
}
