//! The clock, in the forms the API needs: Kubernetes timestamps are RFC 3339 UTC with second
//! precision, formatted by [`protocol::timestamp`].
//!
//! Code that keeps deadlines (the node lifecycle controller's grace periods and evictions)
//! reads the time through a [`Clock`] it is given rather than [`now_ms`], so that its tests set
//! the time with a [`ManualClock`] instead of sleeping through a 40 s grace period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, now.
    fn now_ms(&self) -> u64;

    /// Now, as a Kubernetes timestamp.
    fn now_rfc3339(&self) -> String {
        rfc3339(self.now_ms())
    }
}

/// The system's clock: what cloudcore runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to, for tests that drive deadlines without waiting.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock showing `ms` since the epoch.
    pub fn new(ms: u64) -> Self {
        Self {
            ms: AtomicU64::new(ms),
        }
    }

    /// Sets the time to `ms` since the epoch (it may go back, as a wall clock can).
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> i64 {
    (now_ms() / 1000) as i64
}

/// Formats milliseconds since the epoch as a Kubernetes timestamp (`2026-11-25T17:00:00Z`).
pub fn rfc3339(ms: u64) -> String {
    protocol::timestamp::format((ms / 1000) as i64)
}

/// Now, as a Kubernetes timestamp.
pub fn now_rfc3339() -> String {
    rfc3339(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(super::rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_700_000_000_000);
        assert_eq!(c.now_ms(), 1_700_000_000_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 1_700_000_001_500);
        assert_eq!(c.now_rfc3339(), "2023-11-14T22:13:21Z");
        c.set(5);
        assert_eq!(c.now_ms(), 5);
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }
}
