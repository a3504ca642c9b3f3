//! The reconcile loop every controller runs in (kube-runtime's `Controller`, reduced to what
//! cloudcore needs).
//!
//! Guarantees:
//! - **Level-triggered:** a key is reconciled from the current store state, never from the
//!   event that woke it; every key is reconciled again at each resync, and after the store's
//!   broadcast lagged, so a lost event only delays work.
//! - **Deduplicated:** a key queued several times before its turn is reconciled once; bursts of
//!   events (a hundred pods of one ReplicaSet changing) are drained before the queue runs.
//! - **Concurrent, never twice at once for one key:** up to [`Options::concurrency`] keys are
//!   reconciled at the same time, but a key that becomes due while its reconcile is running
//!   is held until that reconcile ends and then runs once more (kube-runtime's `hold_unless`),
//!   so a reconcile never races itself on the same object.
//! - **Error policy:** a failed reconcile goes to [`Reconciler::error_policy`]. By default a
//!   transient error is retried after 100 ms, doubling up to 30 s (a success resets it), and a
//!   permanent one ([`ControllerError::is_permanent`]: the object itself is invalid) is
//!   reported once through [`Reconciler::on_permanent_error`] and then waits for a change: an
//!   event that maps to the key brings it back, a resync does not.
//! - **Delay queue:** due times are kept in an ordered index, so finding the next due key is
//!   `O(log n)` however many keys wait (1,000 Deployments each asking to be requeued after
//!   `minReadySeconds` do not make every wake scan them all).
//!
//! The runner takes its events as a broadcast receiver and follows it through a
//! [`Feed`](super::feed::Feed) (events in order, every key again on lag and every
//! [`Options::resync`]), as the scheduler does; tests drive it with a channel and
//! `tokio::time::pause()` instead of a store.

use super::feed::{Feed, FeedItem};
use super::ControllerError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::Instrument;

/// First retry delay after a failed reconcile.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

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

/// What the runner does with a key whose reconcile failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Try again after the delay.
    Retry(Duration),
    /// Do not retry, not even at resync, until an event maps to the key again.
    WaitForChange,
}

/// The retry delay after `failures` consecutive failures (1 for the first): 100 ms, doubling,
/// at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// One controller: which keys an event concerns, and how to reconcile one key.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// Name in logs and metrics (`replicaset`).
    fn name(&self) -> &'static str;

    /// The keys a store event may concern (the object itself, the owner of a changed pod, the
    /// DaemonSets a new node may match). Cheap: runs for every store event.
    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey>;

    /// Every key to reconcile at start and at each resync.
    async fn all_keys(&self) -> Vec<ObjectKey>;

    /// Brings the world of `key` to its desired state. Must be idempotent: it runs again after
    /// any failure and at every resync.
    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError>;

    /// What to do after the `failures`-th consecutive failure of `key`. The default backs off
    /// transient errors and parks permanent ones until the key changes.
    fn error_policy(
        &self,
        _key: &ObjectKey,
        error: &ControllerError,
        failures: u32,
    ) -> ErrorAction {
        if error.is_permanent() {
            ErrorAction::WaitForChange
        } else {
            ErrorAction::Retry(backoff(failures))
        }
    }

    /// Called once when a key is parked by [`ErrorAction::WaitForChange`], so the controller
    /// can tell the object's owner (an Event). Not called again while the key stays parked.
    async fn on_permanent_error(&self, _key: &ObjectKey, _error: &ControllerError) {}
}

/// How a runner runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Every key is reconciled again this often, even without events.
    pub resync: Duration,
    /// How many keys may be reconciled at the same time (never two for one key).
    pub concurrency: usize,
}

impl Options {
    /// `resync` with the default concurrency (5 workers, as kube-controller-manager's
    /// `--concurrent-deployment-syncs` and friends).
    pub fn resync(resync: Duration) -> Self {
        Self {
            resync,
            concurrency: 5,
        }
    }

    /// The same with `concurrency` workers (at least one).
    pub fn with_concurrency(self, concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            ..self
        }
    }
}

/// Keys waiting for their due time, deduplicated, earliest first.
#[derive(Debug, Default)]
struct DelayQueue {
    /// The index the next due key is read from.
    order: BTreeSet<(Instant, ObjectKey)>,
    /// When each queued key is due.
    due: HashMap<ObjectKey, Instant>,
}

impl DelayQueue {
    /// Queues `key` at `at`, or keeps it earlier if it is already queued earlier.
    fn push(&mut self, key: ObjectKey, at: Instant) {
        match self.due.get(&key) {
            Some(&queued) if queued <= at => {}
            Some(&queued) => {
                self.order.remove(&(queued, key.clone()));
                self.order.insert((at, key.clone()));
                self.due.insert(key, at);
            }
            None => {
                self.order.insert((at, key.clone()));
                self.due.insert(key, at);
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest key due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<ObjectKey> {
        let (at, _) = self.order.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.order.pop_first()?;
        self.due.remove(&key);
        Some(key)
    }

    fn remove(&mut self, key: &ObjectKey) {
        if let Some(at) = self.due.remove(key) {
            self.order.remove(&(at, key.clone()));
        }
    }

    fn len(&self) -> usize {
        self.due.len()
    }
}

/// The runner's bookkeeping, apart from the futures in flight: pure, so that its rules are
/// tested without time or tasks.
#[derive(Debug, Default)]
struct Scheduler {
    queue: DelayQueue,
    /// Keys whose reconcile is running now.
    running: HashSet<ObjectKey>,
    /// Running keys that became due again meanwhile: run once more when they end.
    held: HashSet<ObjectKey>,
    /// Consecutive failures per key.
    failures: HashMap<ObjectKey, u32>,
    /// Keys waiting for a change after a permanent error.
    parked: HashSet<ObjectKey>,
}

/// Why a key is queued: an event about it wakes a parked key, a resync does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Event,
    Resync,
}

impl Scheduler {
    fn schedule(&mut self, key: ObjectKey, at: Instant, cause: Cause) {
        if self.parked.contains(&key) {
            if cause == Cause::Resync {
                return;
            }
            self.parked.remove(&key);
        }
        if self.running.contains(&key) {
            self.held.insert(key);
        } else {
            self.queue.push(key, at);
        }
    }

    /// The next key to start at `now`, if a worker is free.
    fn start_next(&mut self, now: Instant, concurrency: usize) -> Option<ObjectKey> {
        if self.running.len() >= concurrency {
            return None;
        }
        let key = self.queue.pop_due(now)?;
        self.running.insert(key.clone());
        Some(key)
    }

    /// Books the end of `key`'s reconcile; returns whether the key was parked by it.
    fn finish(
        &mut self,
        key: ObjectKey,
        now: Instant,
        outcome: Result<Requeue, ErrorAction>,
    ) -> bool {
        self.running.remove(&key);
        let again = self.held.remove(&key);
        let mut parked = false;
        match outcome {
            Ok(requeue) => {
                self.failures.remove(&key);
                if let Requeue::After(d) = requeue {
                    self.queue.push(key.clone(), now + d);
                }
            }
            Err(ErrorAction::Retry(d)) => self.queue.push(key.clone(), now + d),
            Err(ErrorAction::WaitForChange) => {
                if !again {
                    self.queue.remove(&key);
                    self.parked.insert(key.clone());
                    parked = true;
                }
            }
        }
        if again {
            self.queue.push(key, now);
        }
        parked
    }

    fn failed(&mut self, key: &ObjectKey) -> u32 {
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    }
}

/// Takes in one item of the feed: the keys an event concerns, or every key at a resync.
async fn take<R: Reconciler>(reconciler: &R, sched: &mut Scheduler, item: FeedItem, now: Instant) {
    match item {
        FeedItem::Event(ev) => {
            for k in reconciler.keys_for_event(&ev).await {
                sched.schedule(k, now, Cause::Event);
            }
        }
        FeedItem::Resync => {
            for k in reconciler.all_keys().await {
                sched.schedule(k, now, Cause::Resync);
            }
        }
    }
}

/// Runs `reconciler` until `events` closes, resyncing every `options.resync`.
pub async fn run<R: Reconciler>(
    reconciler: Arc<R>,
    events: broadcast::Receiver<Event>,
    options: Options,
) {
    let name = reconciler.name();
    let concurrency = options.concurrency.max(1);
    let mut sched = Scheduler::default();
    let mut feed = Feed::new(events, options.resync);
    let mut in_flight = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        // Drain what is already announced (and a due resync), so that a burst is reconciled
        // once.
        while let Some(item) = feed.try_next() {
            take(reconciler.as_ref(), &mut sched, item, now).await;
        }
        while let Some(key) = sched.start_next(now, concurrency) {
            let r = reconciler.clone();
            let span = tracing::info_span!("reconcile", controller = name, key = %key);
            in_flight.push(async move {
                let result = r.reconcile(&key).instrument(span).await;
                (key, result)
            });
        }
        metrics::gauge!("skerry_controller_queue_depth", "controller" => name)
            .set((sched.queue.len() + sched.running.len()) as f64);
        let open = !feed.is_closed();
        if !open && in_flight.is_empty() {
            return;
        }
        // With every worker busy, a due key waits for a reconcile to end, not for its time
        // (which has passed: waking for it would spin). The feed wakes for its resync itself.
        let wake_at = match sched.queue.next_due() {
            Some(due) if open && sched.running.len() < concurrency => Some(due),
            _ => None,
        };
        tokio::select! {
            done = in_flight.next(), if !in_flight.is_empty() => {
                let Some((key, result)) = done else { continue };
                let (outcome, label) = match result {
                    Ok(requeue) => (Ok(requeue), if requeue == Requeue::No { "ok" } else { "requeue" }),
                    Err(e) => {
                        let failures = sched.failed(&key);
                        let action = reconciler.error_policy(&key, &e, failures);
                        match action {
                            ErrorAction::Retry(delay) => tracing::warn!(
                                controller = name, key = %key, error = %e,
                                retry_in_ms = delay.as_millis() as u64,
                                "reconcile failed; will retry"
                            ),
                            ErrorAction::WaitForChange => tracing::warn!(
                                controller = name, key = %key, error = %e,
                                "reconcile failed and will not succeed as the object is; waiting for it to change"
                            ),
                        }
                        let parked = sched.finish(key.clone(), Instant::now(), Err(action));
                        if parked {
                            reconciler.on_permanent_error(&key, &e).await;
                        }
                        metrics::counter!("skerry_controller_reconciles_total", "controller" => name, "result" => "error")
                            .increment(1);
                        continue;
                    }
                };
                sched.finish(key, Instant::now(), outcome);
                metrics::counter!("skerry_controller_reconciles_total", "controller" => name, "result" => label)
                    .increment(1);
            }
            item = feed.next(), if open => {
                if let Some(item) = item {
                    take(reconciler.as_ref(), &mut sched, item, Instant::now()).await;
                }
            }
            _ = tokio::time::sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests;
