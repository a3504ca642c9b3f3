//! The watch history: a bounded in-memory ring of the most recent store events, so that a watch
//! can resume from a `resourceVersion` (what a client got from a list) without missing what
//! happened in between — the job of kube-apiserver's watch cache.
//!
//! The ring is fed by one task from [`Store::subscribe`] and holds every event after its
//! `floor` revision, without holes: store revisions are consecutive and announced in order. A
//! watch from `R >= floor` replays the retained events after `R`; one from `R < floor` cannot be
//! served and gets 410 `Expired` (the client re-lists). If the feeder itself falls behind the
//! store's broadcast channel, the lost events make the ring restart empty at the next event it
//! receives, so a gap is never replayed as if it were complete.

use crate::store::{Event, ObjectKey, Store};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// Events kept by default: a few minutes of a busy cluster, a few MiB of memory.
pub const DEFAULT_CAPACITY: usize = 4096;

/// One retained store event.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    /// Revision of the write.
    pub revision: u64,
    /// Object written.
    pub key: ObjectKey,
    /// Value after the write; `None` for a delete.
    pub value: Option<Value>,
    /// Value before the write; `None` for a create.
    pub previous: Option<Value>,
}

/// A resume point older than what the history retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct TooOld {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision a watch can resume from.
    pub oldest: u64,
}

/// The ring proper: pure data, no I/O, so it is tested on its own.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    /// Every event with a revision above `floor` is retained (and none at or below it).
    floor: u64,
    /// The events, oldest first, revisions consecutive from `floor + 1`.
    events: VecDeque<Arc<HistoryEvent>>,
    /// Set when events were lost: the next event restarts the ring.
    gap: bool,
}

impl Ring {
    /// An empty ring that holds everything after `floor` (the store's revision when feeding
    /// starts); at least one event is always kept.
    pub fn new(capacity: usize, floor: u64) -> Self {
        Self {
            capacity: capacity.max(1),
            floor,
            events: VecDeque::new(),
            gap: false,
        }
    }

    /// The newest revision covered (the floor when empty).
    pub fn head(&self) -> u64 {
        self.events.back().map_or(self.floor, |e| e.revision)
    }

    /// The oldest revision a watch can resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Appends an event, dropping the oldest beyond capacity. Events at or below the head are
    /// ignored (announced before the feed started); an event that does not follow the head
    /// directly, or any event after [`Ring::lost`], restarts the ring just below it.
    pub fn push(&mut self, ev: HistoryEvent) {
        if ev.revision <= self.head() && !self.gap {
            return;
        }
        if self.gap || ev.revision != self.head() + 1 {
            self.events.clear();
            self.floor = ev.revision - 1;
            self.gap = false;
        }
        self.events.push_back(Arc::new(ev));
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.revision;
            }
        }
    }

    /// Records that the feed lost events (the broadcast channel lagged).
    pub fn lost(&mut self) {
        self.gap = true;
    }

    /// The retained events after `revision`, oldest first. `revision` beyond the head gives
    /// nothing (the caller waits for more).
    pub fn since(&self, revision: u64) -> Result<Vec<Arc<HistoryEvent>>, TooOld> {
        if revision < self.floor {
            return Err(TooOld {
                requested: revision,
                oldest: self.floor,
            });
        }
        let start = self.events.partition_point(|e| e.revision <= revision);
        Ok(self.events.range(start..).cloned().collect())
    }
}

/// The shared history: the ring plus a signal of its head for waiting watchers.
pub struct History {
    ring: Mutex<Ring>,
    head: watch::Sender<u64>,
}

impl History {
    /// A history of `capacity` events fed from `store` by a task spawned here (needs a tokio
    /// runtime). The task ends when the history is dropped or the store closes.
    pub fn start(store: Arc<dyn Store>, capacity: usize) -> Arc<Self> {
        // Subscribe before reading the revision: every event above it is then received.
        let mut rx = store.subscribe();
        let floor = store.revision();
        let (head, _) = watch::channel(floor);
        let history = Arc::new(Self {
            ring: Mutex::new(Ring::new(capacity, floor)),
            head,
        });
        let weak: Weak<Self> = Arc::downgrade(&history);
        tokio::spawn(async move {
            loop {
                let received = rx.recv().await;
                let Some(h) = weak.upgrade() else { return };
                match received {
                    Ok(ev) => h.push(ev),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "watch history fell behind the store feed; watches from before now get 410 and re-list"
                        );
                        h.lock().lost();
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        history
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring inconsistent (each method
        // finishes its edits before anything can panic), so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, ev: Event) {
        let head = {
            let mut ring = self.lock();
            ring.push(HistoryEvent {
                revision: ev.revision,
                key: ev.key,
                value: ev.value,
                previous: ev.previous,
            });
            ring.head()
        };
        self.head.send_replace(head);
    }

    /// See [`Ring::since`].
    pub fn since(&self, revision: u64) -> Result<Vec<Arc<HistoryEvent>>, TooOld> {
        self.lock().since(revision)
    }

    /// The newest revision the history covers.
    pub fn head(&self) -> u64 {
        self.lock().head()
    }

    /// A receiver that changes whenever the head moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: u64) -> HistoryEvent {
        HistoryEvent {
            revision: rev,
            key: ObjectKey::new("pods", "default", format!("p{rev}")),
            value: None,
            previous: None,
        }
    }

    fn revs(r: &Ring, since: u64) -> Vec<u64> {
        r.since(since).unwrap().iter().map(|e| e.revision).collect()
    }

    #[test]
    fn keeps_the_last_capacity_events_and_expires_older_resume_points() {
        let mut r = Ring::new(3, 10);
        assert_eq!(revs(&r, 10), Vec::<u64>::new());
        assert_eq!(
            r.since(9),
            Err(TooOld {
                requested: 9,
                oldest: 10
            })
        );
        for rev in 11..=15 {
            r.push(ev(rev));
        }
        assert_eq!((r.floor(), r.head()), (12, 15));
        assert_eq!(revs(&r, 12), [13, 14, 15]);
        assert_eq!(revs(&r, 14), [15]);
        assert_eq!(revs(&r, 99), Vec::<u64>::new());
        assert_eq!(
            r.since(11).unwrap_err().to_string(),
            "too old resource version: 11 (12)"
        );
        // Already covered: ignored.
        r.push(ev(14));
        assert_eq!(revs(&r, 12), [13, 14, 15]);
    }

    #[test]
    fn a_gap_restarts_the_ring_below_the_next_event() {
        let mut r = Ring::new(10, 0);
        r.push(ev(1));
        r.push(ev(2));
        r.lost();
        r.push(ev(7));
        assert_eq!(r.floor(), 6);
        assert_eq!(revs(&r, 6), [7]);
        assert!(r.since(2).is_err(), "events 3..=6 were lost");
        // A hole without a lag report (should not happen) is treated the same way.
        r.push(ev(9));
        assert_eq!((r.floor(), r.head()), (8, 9));
    }

    #[tokio::test]
    async fn the_feeder_records_store_writes_with_previous_values() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SledStore::open(dir.path(), |_, _| None).unwrap());
        let key = ObjectKey::new("configmaps", "default", "a");
        store
            .create(&key, serde_json::json!({"metadata": {"name": "a"}}))
            .await
            .unwrap();
        let history = History::start(store.clone(), 16);
        let start = history.head();
        store
            .update(
                &key,
                serde_json::json!({"metadata": {"name": "a"}, "data": {"x": "1"}}),
                None,
            )
            .await
            .unwrap();
        store.delete(&key, None).await.unwrap();
        let mut head = history.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            head.wait_for(|h| *h >= start + 2),
        )
        .await
        .unwrap()
        .unwrap();
        let evs = history.since(start).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].previous.as_ref().unwrap()["data"], Value::Null);
        assert_eq!(evs[0].value.as_ref().unwrap()["data"]["x"], "1");
        assert!(evs[1].value.is_none());
        assert_eq!(evs[1].previous.as_ref().unwrap()["data"]["x"], "1");
    }
}
