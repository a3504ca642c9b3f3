//! Exponential back-off for retry loops: reconnecting a link or a broker client, waiting for
//! containerd, retrying a store write.
//!
//! [`Backoff`] is pure: it only computes delays, the caller sleeps. The delay of attempt `n`
//! (from 0) is `initial * factor^n`, capped at `max`; with jitter it is then scaled by a factor
//! drawn uniformly from `[1 - jitter, 1 + jitter)` and capped at `max` again, so that many clients
//! cut off together do not retry in lockstep. The draws come from a small generator seeded by
//! the caller, so a test sees the same delays for the same seed.
//!
//! Not for kubelet's CrashLoopBackOff (edgecore's `pods::backoff` keeps its own rules) nor for
//! the controller runner's per-key requeue delays.

use std::time::Duration;

/// The state of one retry loop: how many delays it has handed out since the last reset.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    attempts: u32,
    rng: u64,
}

impl Backoff {
    /// Delays from `initial`, doubling, never above `max`, without jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            factor: 2.0,
            jitter: 0.0,
            attempts: 0,
            rng: 0,
        }
    }

    /// Grows each delay by `factor` (at least 1) instead of 2.
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Scales each delay by a random factor in `[1 - fraction, 1 + fraction)` (`fraction` is
    /// clamped to `0..=1`), drawn from a generator seeded with `seed`.
    pub fn jitter(mut self, fraction: f64, seed: u64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.rng = seed;
        self
    }

    /// The delay to wait before the next attempt; each call counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        if self.jitter == 0.0 {
            return nominal;
        }
        let scale = 1.0 - self.jitter + 2.0 * self.jitter * self.next_unit();
        nominal.mul_f64(scale).min(self.max)
    }

    /// Starts over from `initial`: the operation succeeded.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Skips ahead so that the next delay is at least that of attempt `attempts` (for a failure
    /// that is known to last, such as a refusal, which should not be retried quickly).
    pub fn skip_to(&mut self, attempts: u32) {
        self.attempts = self.attempts.max(attempts);
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// `initial * factor^attempt`, capped at `max`.
    fn nominal(&self, attempt: u32) -> Duration {
        let secs = self.initial.as_secs_f64() * self.factor.powi(attempt.min(1024) as i32);
        if secs.is_finite() && secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }

    /// A uniform draw from `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_initial_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(200 * MS, 5000 * MS);
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 5000, 5000].map(|n| n * MS)
        );
        assert_eq!(b.attempts(), 7);
        b.reset();
        assert_eq!(b.next_delay(), 200 * MS);
        // Far past the ceiling nothing overflows.
        b.skip_to(u32::MAX);
        assert_eq!(b.next_delay(), 5000 * MS);
        assert_eq!(b.next_delay(), 5000 * MS);
    }

    #[test]
    fn factor_and_skip_to_shape_the_sequence() {
        let mut b = Backoff::new(MS, Duration::from_secs(1)).factor(3.0);
        assert_eq!(
            [b.next_delay(), b.next_delay(), b.next_delay()],
            [MS, 3 * MS, 9 * MS]
        );
        let mut b = Backoff::new(MS, Duration::from_secs(1));
        b.skip_to(6);
        assert_eq!(b.next_delay(), 64 * MS);
        b.skip_to(2);
        assert_eq!(b.next_delay(), 128 * MS, "skip_to never goes back");
    }

    #[test]
    fn jitter_stays_within_its_band_and_the_ceiling_and_is_seeded() {
        let (base, max) = (100 * MS, Duration::from_secs(30));
        let mut b = Backoff::new(base, max).jitter(0.5, 7);
        let mut spread = false;
        for attempt in 0..40u32 {
            let nominal = base.saturating_mul(1 << attempt.min(16)).min(max);
            let d = b.next_delay();
            assert!(d <= max, "{attempt}: {d:?}");
            assert!(
                d >= nominal.mul_f64(0.5) && d <= nominal.mul_f64(1.5),
                "{attempt}: {d:?}"
            );
            spread |= d != nominal;
        }
        assert!(spread, "jitter moved some delay");
        let seq = |seed| {
            let mut b = Backoff::new(base, max).jitter(0.5, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(seq(1), seq(1));
        assert_ne!(seq(1), seq(2));
    }
}
