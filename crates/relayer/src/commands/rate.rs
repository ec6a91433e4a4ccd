//! The command rate limit (`commands.rate_per_second`, `commands.burst`): a
//! `governor` token bucket that refuses, never queues. Checked last but one
//! (before capacity), so a command refused earlier uses no token.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::commands::outcome::CommandError;
use crate::config::model::CommandsConfig;

/// Token bucket for incoming commands. Generic over the clock so tests can
/// advance time instead of sleeping.
pub struct CommandRateLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    rate_per_second: u32,
    burst: u32,
}

impl<C: Clock> std::fmt::Debug for CommandRateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRateLimiter")
            .field("rate_per_second", &self.rate_per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl CommandRateLimiter {
    /// A limiter on the monotonic clock, from `[commands]`.
    pub fn from_config(config: &CommandsConfig) -> Result<Self, String> {
        Self::with_clock(
            config.rate_per_second,
            config.burst,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock> CommandRateLimiter<C> {
    /// `rate_per_second` tokens refill each second, up to `burst` stored.
    /// Zero for either is refused (config validation refuses it first).
    pub fn with_clock(rate_per_second: u32, burst: u32, clock: C) -> Result<Self, String> {
        let rate = NonZeroU32::new(rate_per_second).ok_or_else(|| {
            "commands.rate_per_second is 0: use at least 1 command per second".to_string()
        })?;
        let max_burst = NonZeroU32::new(burst)
            .ok_or_else(|| "commands.burst is 0: use at least 1".to_string())?;
        let quota = Quota::per_second(rate).allow_burst(max_burst);
        Ok(Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            rate_per_second,
            burst,
        })
    }

    /// Takes one token, or refuses with RATE_LIMITED (retryable) saying when
    /// a token will be there.
    pub fn try_acquire(&self) -> Result<(), CommandError> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(CommandError::RateLimited(format!(
                    "more than {} commands per second (burst {}) reached the relayer, the limit set by commands.rate_per_second and commands.burst: retry in {} ms or raise the limit",
                    self.rate_per_second,
                    self.burst,
                    ceil_ms(wait)
                )))
            }
        }
    }
}

/// Whole milliseconds, rounded up so "retry in 0 ms" never appears.
fn ceil_ms(wait: Duration) -> u128 {
    wait.as_nanos().div_ceil(1_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    /// Runs `steps` of (advance the clock by ms, attempts) and checks how many
    /// attempts of each step got a token.
    fn check(rate: u32, burst: u32, steps: &[(u64, u32)], expected_granted: &[u32]) {
        let clock = FakeRelativeClock::default();
        let limiter = CommandRateLimiter::with_clock(rate, burst, clock.clone()).unwrap();
        let granted: Vec<u32> = steps
            .iter()
            .map(|&(advance_ms, attempts)| {
                clock.advance(Duration::from_millis(advance_ms));
                (0..attempts)
                    .filter(|_| limiter.try_acquire().is_ok())
                    .count() as u32
            })
            .collect();
        assert_eq!(
            granted, expected_granted,
            "rate {rate}, burst {burst}, steps {steps:?}"
        );
    }

    /// (advance the clock by ms, attempts) per step.
    type Steps = &'static [(u64, u32)];
    /// Attempts granted per step.
    type Granted = &'static [u32];

    #[test]
    fn burst_then_refill() {
        // (rate, burst, steps, granted per step)
        let table: &[(u32, u32, Steps, Granted)] = &[
            // the default quota: 100 at once, then refusals
            (50, 100, &[(0, 150)], &[100]),
            // 50/s refills one token per 20 ms
            (
                50,
                100,
                &[(0, 100), (0, 1), (20, 5), (100, 10)],
                &[100, 0, 1, 5],
            ),
            // a full second refills 50, not the whole burst
            (50, 100, &[(0, 100), (1000, 100)], &[100, 50]),
            // idle long enough and the whole burst is back, never more
            (50, 100, &[(0, 100), (60_000, 200)], &[100, 100]),
            (1, 1, &[(0, 3), (999, 1), (1, 1)], &[1, 0, 1]),
        ];
        for &(rate, burst, steps, expected) in table {
            check(rate, burst, steps, expected);
        }
    }

    #[test]
    fn refusal_is_retryable_rate_limited_and_says_when() {
        let clock = FakeRelativeClock::default();
        let limiter = CommandRateLimiter::with_clock(50, 1, clock).unwrap();
        limiter.try_acquire().unwrap();
        let error = limiter.try_acquire().unwrap_err();
        assert!(matches!(error, CommandError::RateLimited(_)));
        assert!(error.retryable());
        let message = error.to_string();
        assert!(message.contains("commands.rate_per_second"), "{message}");
        assert!(message.contains("retry in 20 ms"), "{message}");
    }

    #[test]
    fn zero_rate_or_burst_is_refused() {
        let clock = FakeRelativeClock::default();
        let err = CommandRateLimiter::with_clock(0, 10, clock.clone()).unwrap_err();
        assert!(err.contains("commands.rate_per_second"), "{err}");
        let err = CommandRateLimiter::with_clock(10, 0, clock).unwrap_err();
        assert!(err.contains("commands.burst"), "{err}");
    }

    #[test]
    fn builds_from_default_config() {
        let limiter = CommandRateLimiter::from_config(&CommandsConfig::default()).unwrap();
        assert!(limiter.try_acquire().is_ok());
    }
}
