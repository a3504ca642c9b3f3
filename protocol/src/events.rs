//! Pod events from the edge (kubelet's `Pulled`, `Created`, `Started`, `Killing`, `BackOff`,
//! `Unhealthy`, ...), and the rules that keep them a bounded, coalescing stream.
//!
//! An edge does not send one message per occurrence: it keeps, per pod, a set of event *series*
//! (Kubernetes' event series: same object, field path, reason and message → one event with a
//! count and first and last timestamps) and reports the whole set of the pod ([`PodEvents`]) on
//! its own MQTT topic (`topics::pod_events`). The outbox keeps one queued report per topic, so a
//! pod that crash-loops for an hour while its node is offline costs one report of at most
//! [`MAX_SERIES`] series when the node is back, not an hour of messages.
//!
//! Counts are absolute (how often since the series began), never deltas, so a report delivered
//! twice (MQTT QoS 1, an outbox replay after a crash) or out of order with an older one changes
//! nothing the newer one did not: the cloud takes, per series, the highest count, the earliest
//! first time and the latest last time ([`merge`]): a join, so any order of any number of
//! deliveries converges to the same Event.
//!
//! The set is bounded: past [`MAX_SERIES`] series the one whose last occurrence is the oldest is
//! dropped (the caller counts it), and messages are cut to [`MAX_MESSAGE_LEN`] bytes. A series
//! that comes back after being dropped starts again at 1; the cloud's [`merge`] keeps the count
//! it had, so a count may be low after a drop, never high.

use serde::{Deserialize, Serialize};

/// Most series kept (and reported) per pod.
pub const MAX_SERIES: usize = 16;

/// Longest message kept, in bytes (cut at a character boundary).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Normal progress or something to look at, as Kubernetes' event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One event series of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSeries {
    /// Normal or Warning.
    pub event_type: EventType,
    /// Kubelet's reason (`Pulled`, `BackOff`, ...).
    pub reason: String,
    /// Kubelet's message text.
    pub message: String,
    /// `spec.containers{name}` for a container's event, empty for the pod's.
    pub field_path: String,
    /// Occurrences since the series began (at least 1).
    pub count: u32,
    /// First occurrence, ms since the epoch.
    pub first_ms: u64,
    /// Last occurrence, ms since the epoch.
    pub last_ms: u64,
}

impl EventSeries {
    /// Whether `self` and `other` are the same series: same field path, reason, message and
    /// type.
    pub fn same_as(&self, other: &EventSeries) -> bool {
        self.reason == other.reason
            && self.message == other.message
            && self.field_path == other.field_path
            && self.event_type == other.event_type
    }
}

/// The event series of one pod, as reported on its events topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvents {
    /// Node reporting them.
    pub node: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid: series of another uid than the stored pod's are ignored.
    pub uid: String,
    /// The series, at most [`MAX_SERIES`], in no particular order.
    pub series: Vec<EventSeries>,
}

/// One occurrence of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// Normal or Warning.
    pub event_type: EventType,
    /// Reason.
    pub reason: String,
    /// Message (cut to [`MAX_MESSAGE_LEN`] when recorded).
    pub message: String,
    /// Field path (`spec.containers{name}`), or empty.
    pub field_path: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

impl Occurrence {
    /// An occurrence about container `container` (empty: about the pod).
    pub fn new(
        event_type: EventType,
        reason: &str,
        message: impl Into<String>,
        container: Option<&str>,
        at_ms: u64,
    ) -> Self {
        Self {
            event_type,
            reason: reason.to_string(),
            message: message.into(),
            field_path: container
                .map(|c| format!("spec.containers{{{c}}}"))
                .unwrap_or_default(),
            at_ms,
        }
    }
}

impl Occurrence {
    /// The container the occurrence is about, if any.
    pub fn container(&self) -> Option<&str> {
        self.field_path
            .strip_prefix("spec.containers{")
            .or_else(|| self.field_path.strip_prefix("spec.initContainers{"))
            .and_then(|rest| rest.strip_suffix('}'))
    }

    /// The same occurrence, about an init container: kubelet names those
    /// `spec.initContainers{name}`, which `kubectl describe` prints in the event's "From".
    pub fn in_init_container(mut self) -> Self {
        if let Some(name) = self.field_path.strip_prefix("spec.containers{") {
            self.field_path = format!("spec.initContainers{{{name}");
        }
        self
    }
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Counted in an existing series.
    Coalesced,
    /// A new series.
    New,
    /// A new series, and these (the oldest) were dropped to stay within [`MAX_SERIES`].
    NewDropping(Vec<EventSeries>),
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Records `occ` in a pod's `series`: counted in its series if there is one, else a new
/// series, dropping the series whose last occurrence is the oldest when over [`MAX_SERIES`].
/// A clock that went backwards never makes a series' last time go back.
pub fn record(series: &mut Vec<EventSeries>, occ: Occurrence) -> Recorded {
    let new = EventSeries {
        event_type: occ.event_type,
        reason: cut(occ.reason, 128),
        message: cut(occ.message, MAX_MESSAGE_LEN),
        field_path: cut(occ.field_path, 256),
        count: 1,
        first_ms: occ.at_ms,
        last_ms: occ.at_ms,
    };
    if let Some(s) = series.iter_mut().find(|s| s.same_as(&new)) {
        s.count = s.count.saturating_add(1);
        s.last_ms = s.last_ms.max(new.last_ms);
        return Recorded::Coalesced;
    }
    series.push(new);
    let mut dropped = Vec::new();
    while series.len() > MAX_SERIES {
        // The oldest by last occurrence, never the one just added (it is the newest by
        // definition, even if the clock says otherwise).
        let oldest = series[..series.len() - 1]
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.last_ms, s.first_ms))
            .map(|(i, _)| i)
            .unwrap_or(0);
        dropped.push(series.remove(oldest));
    }
    if dropped.is_empty() {
        Recorded::New
    } else {
        Recorded::NewDropping(dropped)
    }
}

/// What the cloud holds of a series: its count, first and last times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Count.
    pub count: u32,
    /// First occurrence, ms since the epoch.
    pub first_ms: u64,
    /// Last occurrence, ms since the epoch.
    pub last_ms: u64,
}

impl From<&EventSeries> for Seen {
    fn from(s: &EventSeries) -> Self {
        Self {
            count: s.count,
            first_ms: s.first_ms,
            last_ms: s.last_ms,
        }
    }
}

/// The cloud's rule for a reported series over what it holds: the highest count, the earliest
/// first and the latest last time. A join (commutative, associative, idempotent), so replays,
/// duplicates and reordered deliveries converge.
pub fn merge(held: Option<Seen>, reported: Seen) -> Seen {
    match held {
        None => reported,
        Some(h) => Seen {
            count: h.count.max(reported.count),
            first_ms: h.first_ms.min(reported.first_ms),
            last_ms: h.last_ms.max(reported.last_ms),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn occ(reason: &str, message: &str, at_ms: u64) -> Occurrence {
        Occurrence::new(EventType::Normal, reason, message, Some("app"), at_ms)
    }

    #[test]
    fn repeats_coalesce_into_one_series_with_a_count() {
        let mut s = Vec::new();
        assert_eq!(record(&mut s, occ("BackOff", "m", 10)), Recorded::New);
        assert_eq!(record(&mut s, occ("BackOff", "m", 30)), Recorded::Coalesced);
        assert_eq!(record(&mut s, occ("BackOff", "m", 20)), Recorded::Coalesced);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].count, s[0].first_ms, s[0].last_ms), (3, 10, 30));
        assert_eq!(s[0].field_path, "spec.containers{app}");
        let started = Occurrence::new(EventType::Normal, "Started", "x", Some("flash"), 1);
        assert_eq!(started.container(), Some("flash"));
        let init = started.in_init_container();
        assert_eq!(init.field_path, "spec.initContainers{flash}");
        assert_eq!(init.container(), Some("flash"));
        let pod_event = Occurrence::new(EventType::Normal, "Scheduled", "x", None, 1);
        assert_eq!(pod_event.container(), None);
        assert_eq!(pod_event.in_init_container().field_path, "");
        record(&mut s, occ("BackOff", "other", 40));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_oldest_series_goes_first_and_messages_are_cut() {
        let mut s = Vec::new();
        for i in 0..MAX_SERIES as u64 {
            record(&mut s, occ("R", &format!("m{i}"), 100 + i));
        }
        // m0 is refreshed: m1 is the oldest now.
        record(&mut s, occ("R", "m0", 500));
        let Recorded::NewDropping(d) = record(&mut s, occ("R", "new", 600)) else {
            panic!("expected a drop")
        };
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].message, "m1");
        assert_eq!(s.len(), MAX_SERIES);
        record(&mut s, occ("R", &"é".repeat(MAX_MESSAGE_LEN), 700));
        assert!(s.iter().all(|x| x.message.len() <= MAX_MESSAGE_LEN));
    }

    #[test]
    fn the_cloud_keeps_the_highest_count_and_the_widest_span() {
        let a = Seen {
            count: 5,
            first_ms: 10,
            last_ms: 50,
        };
        let b = Seen {
            count: 2,
            first_ms: 60,
            last_ms: 70,
        };
        assert_eq!(merge(None, a), a);
        assert_eq!(
            merge(Some(a), b),
            Seen {
                count: 5,
                first_ms: 10,
                last_ms: 70
            }
        );
    }

    fn arb_occ() -> impl Strategy<Value = Occurrence> {
        (0u8..24, 0u8..3, 0u64..1_000).prop_map(|(m, r, at)| {
            occ(
                ["Pulled", "BackOff", "Unhealthy"][r as usize],
                &format!("m{m}"),
                at,
            )
        })
    }

    fn arb_seen() -> impl Strategy<Value = Seen> {
        (1u32..100, 0u64..1000, 0u64..1000).prop_map(|(count, a, b)| Seen {
            count,
            first_ms: a.min(b),
            last_ms: a.max(b),
        })
    }

    proptest! {
        /// Whatever the occurrences: the set is bounded, its series are distinct, every
        /// occurrence is counted in exactly one series or one dropped series, and a drop takes
        /// a series no newer than any kept one (besides the one just added).
        #[test]
        fn the_series_set_is_bounded_and_counts_every_occurrence(
            occs in proptest::collection::vec(arb_occ(), 0..200)
        ) {
            let mut s = Vec::new();
            let mut dropped_count = 0u64;
            let n = occs.len() as u64;
            for o in occs {
                let before = s.clone();
                match record(&mut s, o) {
                    Recorded::NewDropping(d) => {
                        for x in &d {
                            dropped_count += x.count as u64;
                            let newest_kept_before = before
                                .iter()
                                .filter(|b| !b.same_as(x))
                                .map(|b| b.last_ms)
                                .min();
                            if let Some(min_kept) = newest_kept_before {
                                prop_assert!(x.last_ms <= min_kept);
                            }
                        }
                    }
                    Recorded::Coalesced => prop_assert_eq!(before.len(), s.len()),
                    Recorded::New => prop_assert_eq!(before.len() + 1, s.len()),
                }
                prop_assert!(s.len() <= MAX_SERIES);
                for (i, a) in s.iter().enumerate() {
                    prop_assert!(a.count >= 1 && a.first_ms <= a.last_ms);
                    for b in &s[i + 1..] {
                        prop_assert!(!a.same_as(b));
                    }
                }
            }
            let kept: u64 = s.iter().map(|x| x.count as u64).sum();
            prop_assert_eq!(kept + dropped_count, n);
        }

        /// The cloud's merge is a join: any order and any repetition of deliveries ends in the
        /// same state.
        #[test]
        fn deliveries_in_any_order_converge(
            seen in proptest::collection::vec(arb_seen(), 1..12),
            perm in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
            dup in 0usize..12,
        ) {
            let fold = |xs: &[Seen]| xs.iter().fold(None, |h, s| Some(merge(h, *s)));
            let mut shuffled = seen.clone();
            // A deterministic shuffle from the drawn seed, plus a duplicate delivery.
            let mut x = perm | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x as usize) % (i + 1));
            }
            shuffled.push(seen[dup % seen.len()]);
            prop_assert_eq!(fold(&seen), fold(&shuffled));
        }
    }
}
