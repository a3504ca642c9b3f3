//! The reconcile loop every controller runs in (kube-runtime's `Controller`, reduced to what
//! cloudcore needs).
//!
//! Guarantees:
//! - **Level-triggered:** a key is reconciled from the current store state, never from the
//!   event that woke it; every key is reconciled again at each resync, and after the store's
//!   broadcast lagged, so a lost event only delays work.
//! - **Deduplicated:** a key queued several times before its turn is reconciled once; bursts of
//!   events (a hundred pods of one ReplicaSet changing) are drained before the queue runs.
//! - **Backoff:** a failed reconcile is retried after 100 ms, doubling up to 30 s; a success
//!   resets it. A reconcile may also ask to be run again after a delay (a pod becoming
//!   available after `minReadySeconds`, a toleration expiring).
//! - **One at a time:** keys of one controller are reconciled sequentially, so a reconcile never
//!   races itself on the same object.

use crate::api::ApiError;
use crate::store::{Event, ObjectKey, Store};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use tracing::Instrument;

/// First retry delay after a failed reconcile.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing: the next event or resync will bring the key back if needed.
    No,
    /// Reconcile this key again after the delay, even without an event.
    After(Duration),
}

impl Requeue {
    /// Again after `seconds` (at least one second), or not at all for `None`: what a workload
    /// controller asks for when a pod becomes available after `minReadySeconds`.
    pub fn after_seconds(seconds: Option<i64>) -> Self {
        match seconds {
            Some(s) => Requeue::After(Duration::from_secs(s.max(1) as u64)),
            None => Requeue::No,
        }
    }
}

/// One controller: which keys an event concerns, and how to reconcile one key.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// Name in logs and metrics (`replicaset`).
    fn name(&self) -> &'static str;

    /// The keys a store event may concern (the object itself, the owner of a changed pod, the
    /// DaemonSets a new node may match). Cheap: runs for every store event.
    fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey>;

    /// Every key to reconcile at start and at each resync.
    fn all_keys(&self) -> Vec<ObjectKey>;

    /// Brings the world of `key` to its desired state. Must be idempotent: it runs again after
    /// any failure and at every resync.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ApiError>;
}

/// The queue of one controller: each key with when it is due and its failure count.
#[derive(Debug, Default)]
struct Queue {
    due: BTreeMap<ObjectKey, Instant>,
    failures: HashMap<ObjectKey, u32>,
}

impl Queue {
    /// Queues `key` at `at`, or earlier if it is already queued earlier.
    fn push(&mut self, key: ObjectKey, at: Instant) {
        let slot = self.due.entry(key).or_insert(at);
        if at < *slot {
            *slot = at;
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Removes and returns the keys due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<ObjectKey> {
        let ready: Vec<ObjectKey> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &ready {
            self.due.remove(k);
        }
        ready
    }

    /// The delay before retrying `key` after one more failure.
    fn backoff(&mut self, key: &ObjectKey) -> Duration {
        let n = self.failures.entry(key.clone()).or_insert(0);
        let delay = BACKOFF_START
            .saturating_mul(1u32 << (*n).min(16))
            .min(BACKOFF_MAX);
        *n += 1;
        delay
    }
}

/// Runs `reconciler` until the store's event channel closes, resyncing every `resync`.
pub async fn run<R: Reconciler>(reconciler: Arc<R>, store: Arc<dyn Store>, resync: Duration) {
    let name = reconciler.name();
    let mut rx = store.subscribe();
    let mut queue = Queue::default();
    let mut next_resync = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_resync {
            for k in reconciler.all_keys() {
                queue.push(k, now);
            }
            next_resync = now + resync;
        }
        // Drain what is already announced, so that a burst is reconciled once.
        loop {
            match rx.try_recv() {
                Ok(ev) => {
                    for k in reconciler.keys_for_event(&ev) {
                        queue.push(k, now);
                    }
                }
                Err(TryRecvError::Lagged(_)) => next_resync = now,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
            }
        }
        if next_resync <= now {
            continue;
        }
        let due = queue.take_due(now);
        metrics::gauge!("skerry_controller_queue_depth", "controller" => name)
            .set((queue.due.len() + due.len()) as f64);
        for key in due {
            let span = tracing::info_span!("reconcile", controller = name, key = %key);
            let result = reconciler.reconcile(&key).instrument(span.clone()).await;
            let outcome = match result {
                Ok(Requeue::No) => {
                    queue.failures.remove(&key);
                    "ok"
                }
                Ok(Requeue::After(d)) => {
                    queue.failures.remove(&key);
                    queue.push(key, Instant::now() + d);
                    "requeue"
                }
                Err(e) => {
                    let delay = queue.backoff(&key);
                    tracing::warn!(parent: &span, error = %e, retry_in_ms = delay.as_millis() as u64, "reconcile failed; will retry");
                    queue.push(key, Instant::now() + delay);
                    "error"
                }
            };
            metrics::counter!("skerry_controller_reconciles_total", "controller" => name, "result" => outcome)
                .increment(1);
        }
        let wake_at = queue.next_due().map_or(next_resync, |d| d.min(next_resync));
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => {
                    let now = Instant::now();
                    for k in reconciler.keys_for_event(&ev) {
                        queue.push(k, now);
                    }
                }
                Err(RecvError::Lagged(_)) => next_resync = Instant::now(),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keeps_the_earliest_due_time_and_backs_off() {
        let mut q = Queue::default();
        let k = ObjectKey::new("apps/replicasets", "default", "web");
        let t0 = Instant::now();
        q.push(k.clone(), t0 + Duration::from_secs(5));
        q.push(k.clone(), t0);
        q.push(k.clone(), t0 + Duration::from_secs(9));
        assert_eq!(q.next_due(), Some(t0));
        assert_eq!(q.take_due(t0), vec![k.clone()]);
        assert!(q.take_due(t0).is_empty());
        let delays: Vec<Duration> = (0..12).map(|_| q.backoff(&k)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[11], BACKOFF_MAX);
    }
}
