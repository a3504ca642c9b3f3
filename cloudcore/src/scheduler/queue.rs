//! The scheduling queue: pods waiting for a node, highest priority first and in arrival order
//! within a priority, with back-off for the ones that fit nowhere.
//!
//! Each pod is in one of three states. **Active** pods are tried by priority (see
//! [`super::model::priority`]), then in the order they became active. A pod being bound
//! or reported is **in flight** and not tried again until that write resolves. A pod that fits
//! nowhere **waits**: until its back-off expires (1 s, doubling to 60 s), until something that
//! can make room happens (a node appears or changes, a bound pod goes away: see
//! [`Queue::activate_waiting`]), or until the pod itself changes.

use super::model::{wants_scheduling, PodInfo};
use crate::store::{ObjectKey, Stored};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// First back-off after a pod fits nowhere.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// `dirty`: the pod changed while its write was in flight; try it again afterwards.
    InFlight {
        dirty: bool,
    },
    Waiting(Instant),
}

#[derive(Debug)]
struct Entry {
    pod: Stored,
    info: PodInfo,
    attempts: u32,
    state: State,
}

/// A pod handed out for one scheduling attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Its key.
    pub key: ObjectKey,
    /// The pod as last seen (its revision is the binding's precondition).
    pub pod: Stored,
    /// Parsed requirements.
    pub info: PodInfo,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<ObjectKey, Entry>,
    /// Active pods by (priority, earliest activation); may hold keys no longer active, which
    /// [`Queue::pop`] skips.
    active: BinaryHeap<(i32, Reverse<u64>, ObjectKey)>,
    /// Activation counter: FIFO order within a priority.
    seq: u64,
}

/// Makes `key` active (its entry's state is set by the caller).
fn push(
    active: &mut BinaryHeap<(i32, Reverse<u64>, ObjectKey)>,
    seq: &mut u64,
    e: &Entry,
    key: &ObjectKey,
) {
    *seq += 1;
    active.push((e.info.priority, Reverse(*seq), key.clone()));
}

/// Back-off after `attempts` failed attempts.
pub fn backoff(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

impl Queue {
    /// Takes in a pod write: a pod that wants scheduling is added or refreshed (and, if it was
    /// waiting, tried again: it may now tolerate or select differently); any other is dropped.
    /// Writes not newer than what the queue holds are ignored, which is how the scheduler's own
    /// status writes do not wake their pods.
    pub fn upsert(&mut self, key: &ObjectKey, pod: Stored) {
        if !wants_scheduling(&pod.value) {
            self.remove(key);
            return;
        }
        match self.entries.get_mut(key) {
            Some(e) => {
                if pod.revision <= e.pod.revision {
                    return;
                }
                e.info = PodInfo::of(&pod.value);
                e.pod = pod;
                match e.state {
                    State::Active => {}
                    State::InFlight { .. } => e.state = State::InFlight { dirty: true },
                    State::Waiting(_) => {
                        e.state = State::Active;
                        push(&mut self.active, &mut self.seq, e, key);
                    }
                }
            }
            None => {
                let info = PodInfo::of(&pod.value);
                let e = Entry {
                    pod,
                    info,
                    attempts: 0,
                    state: State::Active,
                };
                push(&mut self.active, &mut self.seq, &e, key);
                self.entries.insert(key.clone(), e);
            }
        }
    }

    /// Drops a pod (deleted, or bound by someone).
    pub fn remove(&mut self, key: &ObjectKey) {
        self.entries.remove(key);
    }

    /// Whether the pod is being written right now.
    pub fn in_flight(&self, key: &ObjectKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| matches!(e.state, State::InFlight { .. }))
    }

    /// Keys of every queued pod.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.entries.keys().cloned().collect()
    }

    /// The next active pod, now in flight.
    pub fn pop(&mut self) -> Option<Attempt> {
        while let Some((_, _, key)) = self.active.pop() {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.state != State::Active {
                continue;
            }
            e.state = State::InFlight { dirty: false };
            e.attempts += 1;
            return Some(Attempt {
                key,
                pod: e.pod.clone(),
                info: e.info.clone(),
            });
        }
        None
    }

    /// The pod fit nowhere; `written` is its value after the scheduler's status write, if any.
    /// It waits for its back-off, or is tried again at once if it changed meanwhile.
    pub fn unschedulable(&mut self, key: &ObjectKey, written: Option<Stored>, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(w) = written {
            if w.revision > e.pod.revision {
                e.info = PodInfo::of(&w.value);
                e.pod = w;
            }
        }
        e.state = match e.state {
            State::InFlight { dirty: true } => {
                push(&mut self.active, &mut self.seq, e, key);
                State::Active
            }
            _ => State::Waiting(now + backoff(e.attempts)),
        };
    }

    /// The write failed (conflict, store error): try again after a back-off, keeping what the
    /// queue knows of the pod (a fresher version arrives through [`Queue::upsert`]).
    pub fn retry_later(&mut self, key: &ObjectKey, now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.state = match e.state {
                State::InFlight { dirty: true } => {
                    push(&mut self.active, &mut self.seq, e, key);
                    State::Active
                }
                _ => State::Waiting(now + backoff(e.attempts).min(INITIAL_BACKOFF)),
            };
        }
    }

    /// Something changed that may make room: every waiting pod becomes active.
    pub fn activate_waiting(&mut self) {
        for (key, e) in &mut self.entries {
            if matches!(e.state, State::Waiting(_)) {
                e.state = State::Active;
                push(&mut self.active, &mut self.seq, e, key);
            }
        }
    }

    /// Activates the pods whose back-off has expired; returns when the next one expires.
    pub fn activate_due(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (key, e) in &mut self.entries {
            if let State::Waiting(at) = e.state {
                if at <= now {
                    e.state = State::Active;
                    push(&mut self.active, &mut self.seq, e, key);
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        next
    }

    /// Whether any pod is ready to be tried.
    pub fn has_active(&self) -> bool {
        self.active.iter().any(|(_, _, k)| {
            self.entries
                .get(k)
                .is_some_and(|e| e.state == State::Active)
        })
    }

    /// Number of pods queued in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(rev: u64, node: &str) -> Stored {
        Stored {
            revision: rev,
            value: json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": node}}),
            stale: false,
        }
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[test]
    fn an_unschedulable_pod_waits_until_due_or_woken() {
        let now = Instant::now();
        let key = ObjectKey::new("pods", "d", "p");
        let mut q = Queue::default();
        q.upsert(&key, stored(1, ""));
        let a = q.pop().unwrap();
        assert!(q.pop().is_none(), "in flight is not handed out twice");
        // Our own status write comes back as an event: ignored.
        q.unschedulable(&a.key, Some(stored(2, "")), now);
        q.upsert(&key, stored(2, ""));
        assert!(!q.has_active());
        assert_eq!(q.activate_due(now), Some(now + Duration::from_secs(1)));
        q.activate_due(now + Duration::from_secs(1));
        assert!(q.pop().is_some());
        q.unschedulable(&key, None, now);
        q.activate_waiting();
        assert!(q.pop().is_some());
        // A change during the flight makes it active again at once.
        q.upsert(&key, stored(3, ""));
        q.unschedulable(&key, None, now);
        assert!(q.pop().is_some());
        // Bound elsewhere: gone.
        q.upsert(&key, stored(4, "n1"));
        assert!(q.is_empty());
    }

    #[test]
    fn higher_priority_goes_first_then_arrival_order() {
        let pod = |name: &str, priority: i64| Stored {
            revision: 1,
            value: json!({"metadata": {"name": name, "namespace": "d"},
                          "spec": {"priority": priority}}),
            stale: false,
        };
        let mut q = Queue::default();
        for (name, p) in [("low", 0), ("high-1", 100), ("mid", 10), ("high-2", 100)] {
            q.upsert(&ObjectKey::new("pods", "d", name), pod(name, p));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|a| a.key.name)).collect();
        assert_eq!(order, ["high-1", "high-2", "mid", "low"]);
    }
}
