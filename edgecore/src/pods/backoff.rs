//! Restart back-off, as kubelet's `CrashLoopBackOff`.
//!
//! A container that keeps exiting is restarted after a delay that doubles with every consecutive
//! crash (10 s, 20 s, 40 s, ... by default) up to a cap (5 minutes), so that a broken workload
//! neither spins the node's CPU nor floods the cloud with status reports. A container that ran
//! long enough before exiting (10 minutes) is considered healthy again: its next delay starts over.
//! The same policy spaces retries of failed runtime operations (sandbox creation, a start that
//! failed, a stop that failed).

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
    /// The delay after the `failures`-th consecutive failure (1 for the first): `base * 2^(n-1)`,
    /// at most `cap`. Zero failures mean no delay.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
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
