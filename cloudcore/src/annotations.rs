//! Annotations that more than one part of cloudcore reads or writes.
//!
//! They live here, not in the module that writes them, so that the API (which guards them
//! against client edits) and their writers (the ingest) do not import each other.

/// The position of the last status report the ingest applied to an object: its replay guard
/// (older or repeated reports are dropped). System state, like `resourceVersion`: client
/// writes can neither set nor remove it. Written `EPOCH:SEQ` (a bare `SEQ` is epoch 0, as
/// written before epochs existed).
pub const STATUS_SEQ_ANNOTATION: &str = "skerry.io/status-seq";

use serde_json::{json, Value};

/// Where a report stands in its node's history: the epoch of the join whose key sealed it (see
/// `pki::mqtt`), then the edge's own sequence number. Ordered by epoch first, so a re-joined
/// node starts a new sequence space whatever its clock says, and a report of a previous life
/// (which no current key seals anyway) never goes over a newer one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatusSeq {
    /// The node's join epoch.
    pub epoch: u64,
    /// The edge's sequence number within it.
    pub seq: u64,
}

impl StatusSeq {
    /// Epoch and sequence number.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl std::fmt::Display for StatusSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for StatusSeq {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((epoch, seq)) => Ok(Self::new(epoch.parse()?, seq.parse()?)),
            None => Ok(Self::new(0, s.parse()?)),
        }
    }
}

/// The status position `obj` carries (zero when it has none, or an unreadable one).
pub fn status_seq(obj: &Value) -> StatusSeq {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_SEQ_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// Sets `obj`'s status position (creating `metadata.annotations` as needed).
pub fn set_status_seq(obj: &mut Value, seq: StatusSeq) {
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
    if !ann.is_object() {
        *ann = json!({});
    }
    ann[STATUS_SEQ_ANNOTATION] = json!(seq.to_string());
}

/// What a `/status` write does with the sequence number: the one place the replay guard is
/// enforced, whoever writes. A write that carries no number, or the current one (a client that
/// read the object and wrote its status back), keeps the current number; a higher one advances
/// it (a newer report); a lower one is refused, since applying it would put an older report
/// over a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqWrite {
    /// Keep the object's current number.
    Keep,
    /// Advance to this number.
    Advance(StatusSeq),
    /// Refuse: the write is older (`written`) than what was applied (`applied`).
    Stale {
        /// The number the write carries.
        written: StatusSeq,
        /// The number already applied.
        applied: StatusSeq,
    },
}

/// The [`SeqWrite`] for a `/status` write of `body` over `current`.
pub fn status_seq_write(body: &Value, current: &Value) -> SeqWrite {
    let has = body
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_SEQ_ANNOTATION))
        .is_some();
    let (written, applied) = (status_seq(body), status_seq(current));
    match (has, written.cmp(&applied)) {
        (false, _) | (true, std::cmp::Ordering::Equal) => SeqWrite::Keep,
        (true, std::cmp::Ordering::Greater) => SeqWrite::Advance(written),
        (true, std::cmp::Ordering::Less) => SeqWrite::Stale { written, applied },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(seq: Option<&str>) -> Value {
        match seq {
            Some(s) => json!({"metadata": {"annotations": {STATUS_SEQ_ANNOTATION: s}}}),
            None => json!({"metadata": {}}),
        }
    }

    #[test]
    fn status_writes_advance_keep_or_refuse_the_sequence() {
        let s = |epoch, seq| StatusSeq::new(epoch, seq);
        let cur = with(Some("10"));
        assert_eq!(status_seq_write(&with(None), &cur), SeqWrite::Keep);
        assert_eq!(status_seq_write(&with(Some("10")), &cur), SeqWrite::Keep);
        assert_eq!(status_seq_write(&with(Some("0:10")), &cur), SeqWrite::Keep);
        assert_eq!(
            status_seq_write(&with(Some("11")), &cur),
            SeqWrite::Advance(s(0, 11))
        );
        assert_eq!(
            status_seq_write(&with(Some("9")), &cur),
            SeqWrite::Stale {
                written: s(0, 9),
                applied: s(0, 10)
            }
        );
        assert_eq!(
            status_seq_write(&with(Some("1")), &with(None)),
            SeqWrite::Advance(s(0, 1))
        );
        // A new epoch (a re-join) wins whatever the edge's clock-based sequence says.
        let ahead = with(Some("3:9000000000000"));
        assert_eq!(
            status_seq_write(&with(Some("4:1")), &ahead),
            SeqWrite::Advance(s(4, 1))
        );
        assert!(matches!(
            status_seq_write(&with(Some("2:9999999999999")), &ahead),
            SeqWrite::Stale { .. }
        ));
        let mut v = json!({"metadata": {"annotations": "junk"}});
        set_status_seq(&mut v, s(2, 5));
        assert_eq!(status_seq(&v), s(2, 5));
        assert_eq!(
            v["metadata"]["annotations"][STATUS_SEQ_ANNOTATION],
            json!("2:5")
        );
        assert_eq!("x:1".parse::<StatusSeq>().ok(), None);
    }
}
