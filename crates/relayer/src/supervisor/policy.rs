//! Supervision policy as plain data and pure functions: restart types,
//! strategies, restart intensity, and which children a failure restarts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a child is restarted (Erlang/OTP semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted, whatever the exit.
    Permanent,
    /// Restarted only after a failure (panic or reported error).
    Transient,
    /// Never restarted.
    Temporary,
}

/// Which siblings restart together with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the child that exited.
    OneForOne,
    /// The child that exited and every child started after it (they depend on it).
    RestForOne,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by itself without reporting an error.
    Normal,
    /// Panicked or reported a failure; the text says why.
    Failed(String),
}

impl Exit {
    pub fn is_failure(&self) -> bool {
        matches!(self, Exit::Failed(_))
    }
}

/// Whether `exit` of a child with restart type `restart` is restarted.
pub fn should_restart(restart: Restart, exit: &Exit) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => exit.is_failure(),
        Restart::Temporary => false,
    }
}

/// Indices of the children to restart when child `failed` of `count` exits.
pub fn restart_set(strategy: Strategy, failed: usize, count: usize) -> Vec<usize> {
    match strategy {
        Strategy::OneForOne => vec![failed],
        Strategy::RestForOne => (failed..count).collect(),
    }
}

/// At most `max_restarts` restarts within `within`; more means the fault is
/// not transient and the supervisor gives up and escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(60),
        }
    }
}

/// The sliding window of recent restarts.
#[derive(Debug, Clone)]
pub struct IntensityTracker {
    limit: Intensity,
    recent: VecDeque<Instant>,
}

impl IntensityTracker {
    pub fn new(limit: Intensity) -> Self {
        Self {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when it exceeds the intensity.
    pub fn record(&mut self, now: Instant) -> bool {
        while let Some(oldest) = self.recent.front() {
            if now.duration_since(*oldest) >= self.limit.within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() as u32 <= self.limit.max_restarts
    }

    /// Restarts inside the current window.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }

    pub fn limit(&self) -> Intensity {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_types_follow_otp() {
        let failed = Exit::Failed("boom".into());
        let cases = [
            (Restart::Permanent, Exit::Normal, true),
            (Restart::Permanent, failed.clone(), true),
            (Restart::Transient, Exit::Normal, false),
            (Restart::Transient, failed.clone(), true),
            (Restart::Temporary, failed.clone(), false),
            (Restart::Temporary, Exit::Normal, false),
        ];
        for (restart, exit, expected) in cases {
            assert_eq!(
                should_restart(restart, &exit),
                expected,
                "{restart:?} {exit:?}"
            );
        }
    }

    #[test]
    fn strategies_pick_the_right_children() {
        assert_eq!(restart_set(Strategy::OneForOne, 1, 3), vec![1]);
        assert_eq!(restart_set(Strategy::RestForOne, 1, 3), vec![1, 2]);
        assert_eq!(restart_set(Strategy::RestForOne, 2, 3), vec![2]);
    }

    #[test]
    fn intensity_allows_five_in_sixty_seconds_then_refuses() {
        let mut tracker = IntensityTracker::new(Intensity::default());
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(tracker.record(t0 + Duration::from_secs(i)));
        }
        assert!(!tracker.record(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut tracker = IntensityTracker::new(Intensity {
            max_restarts: 2,
            within: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        assert!(tracker.record(t0));
        assert!(tracker.record(t0 + Duration::from_secs(1)));
        assert!(tracker.record(t0 + Duration::from_millis(60_500)));
        assert_eq!(tracker.recent(), 2);
    }
}
