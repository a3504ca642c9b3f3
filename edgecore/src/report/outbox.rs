//! The sled-backed outbox: [`outbox_rules`](super::outbox_rules) applied to four trees, each
//! event in one transaction across them.

use super::outbox_rules::{self as rules, Index, Kind, Requeue, Stored, Write};
use crate::pods::{PodRef, StatusSink};
use protocol::codec;
use protocol::events::{self, Occurrence, PodEvents, Recorded};
use protocol::status::{PodStatus, StatusBody, StatusReport};
use protocol::topics;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::IVec;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::warn;

const SEQ_KEY: &[u8] = b"status_seq";

/// The four trees as one transaction sees them: entries, order, published, meta.
type Tx = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);
type TxResult<T> = Result<T, ConflictableTransactionError<String>>;

/// The outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pub(super) db: sled::Db,
    /// topic → encoded [`StatusReport`].
    pub(super) entries: sled::Tree,
    /// seq (big-endian) → topic: publication order.
    pub(super) order: sled::Tree,
    /// topic → the last acknowledged pod [`StatusReport`], re-queued after a reconnect.
    pub(super) published: sled::Tree,
    meta: sled::Tree,
    node: String,
    pub(super) wake: Arc<Notify>,
}

/// What the rules see of stored bytes.
fn stored(bytes: Option<&IVec>) -> Option<Stored> {
    bytes.map(|b| match codec::decode::<StatusReport>(b) {
        Ok(r) => Stored::Report {
            seq: r.seq,
            kind: match r.body {
                StatusBody::Node(_) => Kind::Node,
                StatusBody::Pod(_) => Kind::Pod,
                StatusBody::Events(_) => Kind::Events,
            },
        },
        Err(_) => Stored::Corrupt,
    })
}

fn corrupt(topic: &str, what: &str) {
    warn!(%topic, what, "dropping an unreadable outbox entry");
    metrics::counter!("skerry_edge_outbox_corrupt_entries_total").increment(1);
}

/// Applies `writes` for `topic` inside the transaction; `queued` is the topic's queued report as
/// read before them, `new` the bytes of the report a [`Write::Queue`] stores.
fn apply(
    (entries, order, published, _): &Tx,
    topic: &str,
    queued: Option<&IVec>,
    new: Option<&[u8]>,
    writes: &[Write],
) -> TxResult<()> {
    let key = topic.as_bytes();
    for w in writes {
        match *w {
            Write::Queue { seq } => {
                let Some(new) = new else {
                    return Err(fail("a queue write without a report"));
                };
                entries.insert(key, new)?;
                order.insert(&seq.to_be_bytes(), key)?;
            }
            Write::Unqueue => {
                entries.remove(key)?;
            }
            Write::Unindex(seq) => {
                order.remove(&seq.to_be_bytes())?;
            }
            Write::KeepAcked => {
                if let Some(cur) = queued {
                    published.insert(key, cur.clone())?;
                }
            }
            Write::DropAcked => {
                published.remove(key)?;
            }
        }
    }
    Ok(())
}

/// Hands out the next sequence number inside the transaction.
fn next_seq(meta: &TransactionalTree) -> TxResult<u64> {
    let last = meta
        .get(SEQ_KEY)?
        .and_then(|o| <[u8; 8]>::try_from(o.as_ref()).ok())
        .map(u64::from_be_bytes);
    let seq = rules::next_seq(last, super::now_ms() << 10);
    meta.insert(SEQ_KEY, &seq.to_be_bytes())?;
    Ok(seq)
}

/// Queues `body` for `topic` inside the transaction (the rules' [`rules::put`]).
fn put_tx(tx: &Tx, topic: &str, body: &StatusBody) -> TxResult<u64> {
    let seq = next_seq(&tx.3)?;
    let report = StatusReport {
        protocol_version: protocol::PROTOCOL_VERSION,
        seq,
        observed_at_ms: super::now_ms(),
        body: body.clone(),
    };
    let bytes = codec::encode(&report).map_err(fail)?;
    let queued = tx.0.get(topic.as_bytes())?;
    let writes = rules::put(stored(queued.as_ref()), seq);
    apply(tx, topic, queued.as_ref(), Some(&bytes), &writes)?;
    Ok(seq)
}

fn fail(e: impl ToString) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

fn tx_error(e: TransactionError<String>) -> String {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.to_string(),
    }
}

impl Outbox {
    /// Opens the outbox trees in the node's database.
    pub fn open(db: &sled::Db, node: &str) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            entries: db.open_tree("outbox")?,
            order: db.open_tree("outbox_order")?,
            published: db.open_tree("outbox_published")?,
            meta: db.open_tree("meta")?,
            node: node.to_string(),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Runs `f` as one transaction across the four trees.
    fn transaction<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, String> {
        (&self.entries, &self.order, &self.published, &self.meta)
            .transaction(|tx| f(tx))
            .map_err(tx_error)
    }

    fn gauge(&self) {
        metrics::gauge!("skerry_edge_outbox_entries").set(self.entries.len() as f64);
    }

    /// Queues a report for `topic`, replacing an unsent older one, and returns its sequence
    /// number. Durable once the next flush runs (the publisher flushes before publishing).
    pub(super) fn put_seq(&self, topic: &str, body: StatusBody) -> Result<u64, String> {
        let seq = self.transaction(|tx| put_tx(tx, topic, &body))?;
        self.gauge();
        self.wake.notify_one();
        Ok(seq)
    }

    /// Queues a report for `topic`, replacing an unsent older one. Durable once the next flush
    /// runs (the publisher flushes before publishing).
    pub fn put(&self, topic: &str, body: StatusBody) {
        if let Err(e) = self.put_seq(topic, body) {
            warn!(topic, error = %e, "cannot queue status report; it is re-sent on the next change or heartbeat")
        }
    }

    /// Counts `occ` in the event series of `pod` on its events `topic`, and queues the pod's
    /// series anew (replacing what is queued). The series counted on are the queued report's,
    /// or else the last acknowledged one's (kept for this), so counts survive acks and
    /// restarts; series of another uid (an older pod of the same name) start over. One
    /// transaction: a crash leaves the occurrence counted, or not, never half.
    pub fn record_event(
        &self,
        topic: &str,
        pod: &PodRef,
        occ: Occurrence,
    ) -> Result<Recorded, String> {
        let recorded = self.transaction(|tx| {
            let key = topic.as_bytes();
            let base = match tx.0.get(key)? {
                Some(q) => Some(q),
                None => tx.2.get(key)?,
            };
            let mut series = base
                .and_then(|b| codec::decode::<StatusReport>(&b).ok())
                .and_then(|r| match r.body {
                    StatusBody::Events(e) if e.uid == pod.uid => Some(e.series),
                    _ => None,
                })
                .unwrap_or_default();
            let recorded = events::record(&mut series, occ.clone());
            let body = StatusBody::Events(PodEvents {
                node: self.node.clone(),
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                series,
            });
            put_tx(tx, topic, &body)?;
            Ok(recorded)
        })?;
        self.gauge();
        self.wake.notify_one();
        Ok(recorded)
    }

    /// Drops whatever is queued for `topic`, and its last acknowledged report.
    pub fn forget(&self, topic: &str) {
        let res = self.transaction(|tx| {
            let queued = tx.0.get(topic.as_bytes())?;
            let writes = rules::forget(stored(queued.as_ref()));
            apply(tx, topic, queued.as_ref(), None, &writes)
        });
        if let Err(e) = res {
            warn!(topic, error = %e, "cannot forget the reports of a removed pod");
        }
        self.gauge();
    }

    /// The broker acknowledged `topic`'s report `seq`: removes `topic`'s entry if it is still
    /// that report (no newer one replaced it), keeping it as the pod's last report.
    pub fn acked(&self, topic: &str, seq: u64) {
        let res = self.transaction(|tx| {
            let queued = tx.0.get(topic.as_bytes())?;
            let writes = rules::acked(stored(queued.as_ref()), seq);
            apply(tx, topic, queued.as_ref(), None, &writes)
        });
        if let Err(e) = res {
            warn!(topic, seq, error = %e, "cannot remove an acknowledged report; it is sent again");
        }
        self.gauge();
    }

    /// Queued entries, oldest first: `(seq, topic, payload)`, leaving out what `skip` says is
    /// already sent; statuses before events (a burst of events never delays a status: events
    /// fill what room `limit` leaves). Unreadable entries and stale index entries are dropped.
    /// The payload is the encoded [`StatusReport`], not yet sealed.
    pub fn pending(
        &self,
        limit: usize,
        skip: &HashMap<String, u64>,
    ) -> Vec<(u64, String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut events = Vec::new();
        for item in self.order.iter() {
            if out.len() >= limit {
                break;
            }
            let Ok((raw_seq, raw_topic)) = item else {
                continue;
            };
            let topic = String::from_utf8_lossy(&raw_topic).into_owned();
            let seq = <[u8; 8]>::try_from(raw_seq.as_ref())
                .ok()
                .map(u64::from_be_bytes);
            if seq.is_some() && skip.get(&topic) == seq.as_ref() {
                continue;
            }
            let queued = self.entries.get(topic.as_bytes()).ok().flatten();
            match rules::index(seq, stored(queued.as_ref())) {
                Index::Send => {
                    if let (Some(seq), Some(payload)) = (seq, queued) {
                        if topics::parse(&topic)
                            .is_some_and(|t| matches!(t, topics::Topic::PodEvents { .. }))
                        {
                            events.push((seq, topic, payload.to_vec()));
                        } else {
                            out.push((seq, topic, payload.to_vec()));
                        }
                    }
                }
                verdict => {
                    // Decided again inside a transaction: a put may be landing right now, and
                    // reads outside transactions can see half of one.
                    let res = self.transaction(|tx| {
                        if tx.1.get(&raw_seq)?.as_ref() != Some(&raw_topic) {
                            return Ok(None);
                        }
                        let queued = tx.0.get(raw_topic.as_ref())?;
                        let verdict = rules::index(seq, stored(queued.as_ref()));
                        match verdict {
                            Index::Send => return Ok(None),
                            Index::Drop => {}
                            Index::DropCorrupt => {
                                tx.0.remove(raw_topic.as_ref())?;
                            }
                        }
                        tx.1.remove(&raw_seq)?;
                        Ok(Some(verdict))
                    });
                    match res {
                        Ok(Some(Index::DropCorrupt)) => corrupt(&topic, "queued report"),
                        Ok(Some(_)) if seq.is_none() => {
                            // Not a sequence number this code wrote (a torn or foreign key);
                            // the report itself, if any, is found again by its next `put`.
                            warn!(%topic, key_len = raw_seq.len(), "dropping a corrupt outbox index entry");
                            metrics::counter!("skerry_edge_outbox_corrupt_entries_total")
                                .increment(1);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(%topic, ?verdict, error = %e, "cannot drop an outbox index entry")
                        }
                    }
                }
            }
        }
        let room = limit.saturating_sub(out.len());
        out.extend(events.into_iter().take(room));
        out
    }

    /// Queues again the last acknowledged report of every pod that has nothing newer queued
    /// (with a fresh sequence number, so the cloud takes it as news). Returns how many.
    pub fn requeue_published(&self) -> usize {
        let mut n = 0;
        for item in self.published.iter() {
            let Ok((topic, _)) = item else { continue };
            let topic = String::from_utf8_lossy(&topic).into_owned();
            let res = self.transaction(|tx| {
                let key = topic.as_bytes();
                let queued = tx.0.get(key)?;
                let kept = tx.2.get(key)?;
                match rules::requeue(stored(queued.as_ref()), stored(kept.as_ref())) {
                    Requeue::Nothing => Ok(Requeue::Nothing),
                    Requeue::DropCorrupt => {
                        apply(tx, &topic, None, None, &[Write::DropAcked])?;
                        Ok(Requeue::DropCorrupt)
                    }
                    Requeue::Again => {
                        let kept = kept.ok_or_else(|| fail("kept report vanished"))?;
                        let r = codec::decode::<StatusReport>(&kept).map_err(fail)?;
                        put_tx(tx, &topic, &r.body)?;
                        Ok(Requeue::Again)
                    }
                }
            });
            match res {
                Ok(Requeue::Again) => n += 1,
                Ok(Requeue::DropCorrupt) => corrupt(&topic, "last acknowledged report"),
                Ok(Requeue::Nothing) => {}
                Err(e) => warn!(%topic, error = %e, "cannot queue a last report again"),
            }
        }
        if n > 0 {
            self.gauge();
            self.wake.notify_one();
        }
        n
    }

    /// Number of queued reports.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl StatusSink for Outbox {
    fn pod_status(&self, status: PodStatus) {
        let topic = topics::pod_status(&self.node, &status.namespace, &status.name);
        self.put(&topic, StatusBody::Pod(status));
    }

    fn pod_forgotten(&self, namespace: &str, name: &str) {
        self.forget(&topics::pod_status(&self.node, namespace, name));
        self.forget(&topics::pod_events(&self.node, namespace, name));
    }

    fn pod_event(&self, pod: &PodRef, occ: Occurrence) {
        let topic = topics::pod_events(&self.node, &pod.namespace, &pod.name);
        let (reason, event_type) = (occ.reason.clone(), occ.event_type);
        match self.record_event(&topic, pod, occ) {
            Ok(Recorded::NewDropping(dropped)) => {
                metrics::counter!("skerry_edge_events_dropped_total")
                    .increment(dropped.len() as u64);
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("skerry_edge_events_dropped_total").increment(1);
                warn!(%topic, reason, error = %e, "cannot record a pod event; it is dropped");
            }
        }
        metrics::counter!("skerry_edge_events_total", "type" => event_type.as_str()).increment(1);
    }
}
