//! The outbox's rules, without storage: given what is stored for one topic, which writes an
//! event makes.
//!
//! The sled-backed [`super::Outbox`] reads a topic's entries inside one transaction, asks these
//! functions what to do and applies the answer in that same transaction, so the rules can be
//! read (and tested) apart from the trees, and a crash between two writes of one event cannot
//! happen: it is all of them or none (docs/decisions.md, "Pure rules").
//!
//! The rules:
//! - one queued report per topic: a newer one replaces the older, whose index entry goes;
//! - reports go out in sequence order, and the sequence grows across restarts and wiped caches;
//! - an acknowledgement removes a queued report only if it is still the report acknowledged
//!   (an ack for a replaced report leaves the newer one queued);
//! - an acknowledged pod report is kept as the pod's last report and queued again (with a fresh
//!   sequence number) after a reconnect, unless something newer is queued; node reports are
//!   periodic and not kept;
//! - an acknowledged events report (a pod's event series, `protocol::events`) is kept too, as
//!   the base the next occurrence is counted on, but never queued again by a reconnect: the
//!   cloud does not rewrite events, and resending old series would recreate Events that expired;
//! - a forgotten pod has nothing queued and nothing kept, so it is never reported again;
//! - an entry that cannot be read is dropped (and counted by the caller), never a panic.

/// What a report is about, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The node's status: periodic, not kept after the ack.
    Node,
    /// A pod's status: kept after the ack, queued again after a reconnect.
    Pod,
    /// A pod's event series: kept after the ack, not queued again.
    Events,
}

impl Kind {
    /// Whether an acknowledged report of this kind is kept.
    pub fn kept(self) -> bool {
        matches!(self, Kind::Pod | Kind::Events)
    }
}

/// What the rules see of a stored report: its sequence number and kind, or that it cannot be
/// decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A readable report.
    Report {
        /// Its sequence number.
        seq: u64,
        /// What it reports.
        kind: Kind,
    },
    /// Bytes that do not decode as a report.
    Corrupt,
}

/// One write to a topic's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Store the new report as the topic's queued one, and index it at `seq`.
    Queue {
        /// The new report's sequence number.
        seq: u64,
    },
    /// Remove the topic's queued report.
    Unqueue,
    /// Remove the index entry at this sequence number.
    Unindex(u64),
    /// Keep the queued report (as it is before this event's writes) as the topic's last
    /// acknowledged one.
    KeepAcked,
    /// Drop the topic's last acknowledged report.
    DropAcked,
}

/// The next sequence number: above the last one handed out, and at least `floor` (derived from
/// the wall clock), so that a node whose cache was wiped still counts upward.
pub fn next_seq(last: Option<u64>, floor: u64) -> u64 {
    last.map(|l| l.saturating_add(1)).unwrap_or(0).max(floor)
}

/// A new report with sequence number `seq` for a topic whose queued report is `queued`.
pub fn put(queued: Option<Stored>, seq: u64) -> Vec<Write> {
    let mut w = Vec::with_capacity(2);
    if let Some(Stored::Report { seq: old, .. }) = queued {
        if old != seq {
            w.push(Write::Unindex(old));
        }
    }
    w.push(Write::Queue { seq });
    w
}

/// The broker acknowledged the topic's report with sequence number `seq`.
pub fn acked(queued: Option<Stored>, seq: u64) -> Vec<Write> {
    match queued {
        Some(Stored::Report { seq: cur, kind }) if cur == seq => {
            let mut w = Vec::with_capacity(3);
            if kind.kept() {
                w.push(Write::KeepAcked);
            }
            w.extend([Write::Unqueue, Write::Unindex(seq)]);
            w
        }
        // Replaced meanwhile: the newer report stays queued; only a stale index entry of the
        // acknowledged one (if any) goes.
        Some(Stored::Report { .. }) | None => vec![Write::Unindex(seq)],
        Some(Stored::Corrupt) => vec![Write::Unqueue, Write::Unindex(seq)],
    }
}

/// The pod behind the topic is gone for good.
pub fn forget(queued: Option<Stored>) -> Vec<Write> {
    let mut w = vec![Write::DropAcked];
    match queued {
        Some(Stored::Report { seq, .. }) => w.extend([Write::Unqueue, Write::Unindex(seq)]),
        Some(Stored::Corrupt) => w.push(Write::Unqueue),
        None => {}
    }
    w
}

/// What a reconnect does with one topic's last acknowledged report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing: nothing is kept, or a newer report is queued anyway.
    Nothing,
    /// Queue the kept report again, with a fresh sequence number ([`put`]).
    Again,
    /// The kept report cannot be read: drop it.
    DropCorrupt,
}

/// A reconnect, for a topic with `queued` and last acknowledged report `kept`.
pub fn requeue(queued: Option<Stored>, kept: Option<Stored>) -> Requeue {
    match (queued, kept) {
        (Some(_), _)
        | (None, None)
        | (
            None,
            Some(Stored::Report {
                kind: Kind::Events | Kind::Node,
                ..
            }),
        ) => Requeue::Nothing,
        (None, Some(Stored::Report { .. })) => Requeue::Again,
        (None, Some(Stored::Corrupt)) => Requeue::DropCorrupt,
    }
}

/// What publishing does with one index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// The entry names the topic's queued report: send it.
    Send,
    /// The entry is stale or its key malformed: drop the entry (the report it names, if any,
    /// has an index entry of its own, or gets one at its next put).
    Drop,
    /// The topic's queued report cannot be read: drop it and the entry.
    DropCorrupt,
}

/// An index entry at `seq` (`None`: a key that is not a sequence number) naming a topic whose
/// queued report is `queued`.
pub fn index(seq: Option<u64>, queued: Option<Stored>) -> Index {
    match (seq, queued) {
        (None, _) => Index::Drop,
        (Some(_), Some(Stored::Corrupt)) => Index::DropCorrupt,
        (Some(s), Some(Stored::Report { seq, .. })) if s == seq => Index::Send,
        (Some(_), _) => Index::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: fn(u64) -> Option<Stored> = |seq| {
        Some(Stored::Report {
            seq,
            kind: Kind::Pod,
        })
    };
    const NODE: fn(u64) -> Option<Stored> = |seq| {
        Some(Stored::Report {
            seq,
            kind: Kind::Node,
        })
    };
    const EVENTS: fn(u64) -> Option<Stored> = |seq| {
        Some(Stored::Report {
            seq,
            kind: Kind::Events,
        })
    };

    #[test]
    fn a_put_replaces_the_queued_report_and_its_index_entry() {
        assert_eq!(put(None, 5), vec![Write::Queue { seq: 5 }]);
        assert_eq!(
            put(POD(3), 5),
            vec![Write::Unindex(3), Write::Queue { seq: 5 }]
        );
        assert_eq!(put(Some(Stored::Corrupt), 5), vec![Write::Queue { seq: 5 }]);
    }

    #[test]
    fn an_ack_removes_only_the_report_acknowledged_and_keeps_pods() {
        assert_eq!(
            acked(POD(4), 4),
            vec![Write::KeepAcked, Write::Unqueue, Write::Unindex(4)]
        );
        assert_eq!(acked(NODE(4), 4), vec![Write::Unqueue, Write::Unindex(4)]);
        assert_eq!(
            acked(EVENTS(4), 4),
            vec![Write::KeepAcked, Write::Unqueue, Write::Unindex(4)]
        );
        assert_eq!(acked(POD(5), 4), vec![Write::Unindex(4)]);
        assert_eq!(acked(None, 4), vec![Write::Unindex(4)]);
    }

    #[test]
    fn a_reconnect_requeues_only_what_has_nothing_newer() {
        assert_eq!(requeue(None, POD(1)), Requeue::Again);
        assert_eq!(requeue(POD(2), POD(1)), Requeue::Nothing);
        assert_eq!(requeue(None, None), Requeue::Nothing);
        assert_eq!(requeue(None, EVENTS(1)), Requeue::Nothing);
        assert_eq!(requeue(None, Some(Stored::Corrupt)), Requeue::DropCorrupt);
    }

    #[test]
    fn an_index_entry_is_sent_only_if_it_names_the_queued_report() {
        assert_eq!(index(Some(2), POD(2)), Index::Send);
        assert_eq!(index(Some(1), POD(2)), Index::Drop);
        assert_eq!(index(Some(1), None), Index::Drop);
        assert_eq!(index(None, POD(2)), Index::Drop);
        assert_eq!(index(Some(1), Some(Stored::Corrupt)), Index::DropCorrupt);
    }

    #[test]
    fn sequence_numbers_grow_and_respect_the_clock() {
        assert_eq!(next_seq(None, 100), 100);
        assert_eq!(next_seq(Some(200), 100), 201);
        assert_eq!(next_seq(Some(50), 100), 100);
        assert_eq!(next_seq(Some(u64::MAX), 0), u64::MAX);
    }
}
