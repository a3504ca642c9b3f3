//! Restart back-off, as kubelet's `CrashLoopBackOff`.
//!
//! A container that keeps exiting is restarted after a delay that doubles with every consecutive
//! crash up to a cap (5 minutes), so that a broken workload neither spins the node's CPU nor
//! floods the cloud with status reports. As kubelet, the first exit is restarted at once, the
//! second after 10 s, then 20 s, 40 s, ... ([`BackoffPolicy::restart_delay`]). A container that
//! ran long enough before exiting (10 minutes) is considered healthy again: its count starts over,
//! so that exit too is restarted at once.
//!
//! kubelet's rule, from `kuberuntime_manager.go` (`doBackOff`) and client-go's
//! `util/flowcontrol/backoff.go`: before each start of a container whose last instance exited,
//! kubelet asks `IsInBackOffSince(key, finishedAt)`, which is false when the container has no
//! back-off entry yet; the start then goes ahead and `Next` creates the entry with the initial
//! 10 s. Only a later exit finds the entry and waits `backoff` after its `finishedAt`; every
//! further `Next` doubles it up to `MaxContainerBackOff` (300 s). An entry whose last update is
//! more than twice the cap (10 minutes) older than the exit is started over (`hasExpired`). So
//! the delays after consecutive exits are 0, 10, 20, 40, 80, 160, 300, 300 ... s. The entries
//! live in kubelet's memory only: a kubelet restart (or a node reboot) forgets them, and the
//! first exit seen afterwards is again restarted at once (see `state::adopt` for edgecore's
//! rule at start-up).
//!
//! The same doubling, from 10 s on the first failure ([`BackoffPolicy::delay`]), spaces retries
//! of failed runtime operations (sandbox creation, a start that failed, a stop that failed), as
//! kubelet's image pull back-off does: an operation that just failed is not retried at once.

use std::time::Duration;

/// The back-off parameters of a pod worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first restart.
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
    /// A container that ran at least this long before exiting restarts with the `base` delay
    /// again.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    /// kubelet's values: 10 s doubling up to 5 minutes, reset after 10 minutes of running.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The retry delay after the `failures`-th consecutive failure of a runtime operation (1 for
    /// the first): `base * 2^(n-1)`, at most `cap`. Zero failures mean no delay.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    /// The delay before restarting a container after its `crashes`-th consecutive counted exit
    /// (1 for the first): none for the first (kubelet restarts a first exit at once), then
    /// `base * 2^(n-2)`, at most `cap`.
    pub fn restart_delay(&self, crashes: u32) -> Duration {
        self.delay(crashes.saturating_sub(1))
    }

    /// The consecutive-crash count after a container exit, given the count before it and how
    /// long the instance ran: a long run starts the count over.
    pub fn crashes_after_exit(&self, crashes_before: u32, ran: Duration) -> u32 {
        if ran >= self.reset_after {
            1
        } else {
            crashes_before.saturating_add(1)
        }
    }
}

/// Formats a duration the way Go (and therefore kubelet's messages) does: `200ms`, `10s`,
/// `1.6s`, `5m0s`, `1h0m0s`; operators compare messages with what kubelet prints.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_secs = ms / 1000;
    let frac_ms = ms % 1000;
    let (h, m, s) = (total_secs / 3600, (total_secs % 3600) / 60, total_secs % 60);
    let secs = if frac_ms == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{frac_ms:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (0..=8).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        // No overflow for absurd counts.
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(300));
        let fast = BackoffPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(1),
            reset_after: Duration::from_secs(5),
        };
        let ms: Vec<u128> = (1..=5).map(|n| fast.delay(n).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn restarts_follow_kubelets_schedule() {
        let p = BackoffPolicy::default();
        let secs: Vec<u64> = (1..=9).map(|n| p.restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(p.restart_delay(0), Duration::ZERO);
        assert_eq!(p.restart_delay(u32::MAX), Duration::from_secs(300));
        // After a long run the count starts over: the exit is a first one, restarted at once.
        let crashes = p.crashes_after_exit(7, Duration::from_secs(600));
        assert_eq!(p.restart_delay(crashes), Duration::ZERO);
    }

    proptest::proptest! {
        /// For any policy: a first exit never waits, later ones wait at least `base`, the delays
        /// never shrink with the count and never pass the cap.
        #[test]
        fn restart_delays_start_at_zero_grow_and_stay_capped(
            base_ms in 1u64..100_000,
            cap_factor in 1u32..64,
            crashes in 0u32..200,
        ) {
            let base = Duration::from_millis(base_ms);
            let p = BackoffPolicy {
                base,
                cap: base * cap_factor,
                reset_after: Duration::from_secs(600),
            };
            let d = p.restart_delay(crashes);
            proptest::prop_assert!(d <= p.cap);
            proptest::prop_assert!(p.restart_delay(crashes + 1) >= d);
            proptest::prop_assert_eq!(d.is_zero(), crashes <= 1);
            if crashes >= 2 {
                proptest::prop_assert!(d >= base);
            }
        }
    }

    #[test]
    fn a_long_run_resets_the_crash_count() {
        let p = BackoffPolicy::default();
        assert_eq!(p.crashes_after_exit(0, Duration::from_secs(1)), 1);
        assert_eq!(p.crashes_after_exit(5, Duration::from_secs(599)), 6);
        assert_eq!(p.crashes_after_exit(5, Duration::from_secs(600)), 1);
        assert_eq!(p.crashes_after_exit(u32::MAX, Duration::ZERO), u32::MAX);
    }

    #[test]
    fn durations_print_like_go() {
        let f = |ms: u64| go_duration(Duration::from_millis(ms));
        assert_eq!(f(0), "0s");
        assert_eq!(f(200), "200ms");
        assert_eq!(f(10_000), "10s");
        assert_eq!(f(1_600), "1.6s");
        assert_eq!(f(1_050), "1.05s");
        assert_eq!(f(80_000), "1m20s");
        assert_eq!(f(300_000), "5m0s");
        assert_eq!(f(3_600_000), "1h0m0s");
    }
}
