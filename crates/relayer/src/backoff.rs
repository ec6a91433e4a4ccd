//! Exponential backoff with full jitter (AWS "Exponential Backoff and Jitter"):
//! each delay is uniform in `[0, min(max, base * 2^attempt)]`, so a fleet of
//! relayers that lost the same backend does not reconnect in lock-step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay before jitter: `min(max, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn with `rng`; advances the attempt counter.
    pub fn next_delay_with<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Back to the first step: called after a session stayed healthy long enough.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Adds up to `fraction` of `delay` as random extra (e.g. Drain's "plus up to 50%").
pub fn with_extra_jitter(delay: Duration, fraction: f64) -> Duration {
    let extra = delay.as_secs_f64() * fraction * rand::rng().random_range(0.0..=1.0);
    delay + Duration::from_secs_f64(extra)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay_with(&mut rng);
            assert!(delay <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[6], Duration::from_secs(32));
        assert_eq!(ceilings[7], Duration::from_secs(60));
        assert_eq!(ceilings[9], Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<_> = (0..50)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
                b.next_delay_with(&mut rng)
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 40,
            "full jitter must not repeat: {delays:?}"
        );
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for _ in 0..200 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn extra_jitter_is_bounded() {
        for _ in 0..100 {
            let d = with_extra_jitter(Duration::from_millis(1000), 0.5);
            assert!(d >= Duration::from_millis(1000) && d <= Duration::from_millis(1500));
        }
    }
}
