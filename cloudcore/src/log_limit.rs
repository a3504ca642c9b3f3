//! Warnings that cannot flood the log.
//!
//! Every dropped MQTT message, refused join or refused login used to write one WARN line:
//! 100,000 bad messages at 10k/s wrote 30 MB of log in 12 s. The events are counted in metrics
//! anyway; the log only needs to say that it is happening, by whom, and how often. So repeated
//! warnings go through a [`LogLimiter`] (one line per interval, with the count held back), or a
//! [`KeyedLogLimiter`] when each source (a node, an address) should get its own line: one noisy
//! node must not hide another's first warning.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// Lets a repeated warning through at most once per interval and counts the ones it held back,
/// so that a flood costs one log line a second, not one per event, and the line says how many.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that lets one warning through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Called for each occurrence at `now`: `Some(n)` if it should be logged, `n` being how many
    /// occurrences were held back since the last logged one; `None` if it is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A [`LogLimiter`] per source. The number of sources tracked is bounded: past
/// [`KeyedLogLimiter::MAX_SOURCES`] the oldest state is dropped wholesale (a source then gets
/// one more line sooner), so a flood of distinct sources cannot grow memory.
#[derive(Debug)]
pub struct KeyedLogLimiter<K> {
    interval: Duration,
    sources: HashMap<K, LogLimiter>,
}

impl<K: Hash + Eq> KeyedLogLimiter<K> {
    /// Most sources tracked at once.
    pub const MAX_SOURCES: usize = 4096;

    /// One line per source per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            sources: HashMap::new(),
        }
    }

    /// As [`LogLimiter::allow`], for `source`.
    pub fn allow(&mut self, source: K, now: Instant) -> Option<u64> {
        if self.sources.len() >= Self::MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources.clear();
        }
        let interval = self.interval;
        self.sources
            .entry(source)
            .or_insert_with(|| LogLimiter::new(interval))
            .allow(now)
    }
}

/// A [`KeyedLogLimiter`] shared by tasks.
#[derive(Debug)]
pub struct SharedLogLimiter<K>(std::sync::Mutex<KeyedLogLimiter<K>>);

impl<K: Hash + Eq> SharedLogLimiter<K> {
    /// One line per source per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self(std::sync::Mutex::new(KeyedLogLimiter::new(interval)))
    }

    /// As [`LogLimiter::allow`], for `source`, now.
    pub fn allow(&self, source: K) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(source, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn log_limiter_lets_one_warning_a_second_through_with_the_count_held_back() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.allow(Instant::now()), Some(0), "the first one is logged");
        let mut held_back = 0;
        for _ in 0..19 {
            tokio::time::advance(Duration::from_millis(50)).await;
            if l.allow(Instant::now()).is_none() {
                held_back += 1;
            }
        }
        // 950 ms after the first: all held back.
        assert_eq!(held_back, 19);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(
            l.allow(Instant::now()),
            Some(19),
            "the next line says how many were held back"
        );
        assert_eq!(l.allow(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(l.allow(Instant::now()), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn each_source_gets_its_own_line_and_the_sources_are_bounded() {
        let mut l = KeyedLogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.allow("edge-a", Instant::now()), Some(0));
        assert_eq!(l.allow("edge-a", Instant::now()), None);
        assert_eq!(
            l.allow("edge-b", Instant::now()),
            Some(0),
            "b is not hidden by a"
        );
        let mut many = KeyedLogLimiter::new(Duration::from_secs(1));
        for i in 0..10_000u32 {
            many.allow(i, Instant::now());
        }
        assert!(many.sources.len() <= KeyedLogLimiter::<u32>::MAX_SOURCES);
    }
}
