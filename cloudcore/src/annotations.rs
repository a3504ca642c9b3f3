//! Annotations that more than one part of cloudcore reads or writes.
//!
//! They live here, not in the module that writes them, so that the API (which guards them
//! against client edits) and their writers (the ingest) do not import each other.

/// The sequence number of the last status report the ingest applied to an object: its replay
/// guard (older or repeated reports are dropped). System state, like `resourceVersion`: client
/// writes can neither set nor remove it.
pub const STATUS_SEQ_ANNOTATION: &str = "skerry.io/status-seq";

use serde_json::{json, Value};

/// The status sequence number `obj` carries (0 when it has none, or an unreadable one).
pub fn status_seq(obj: &Value) -> u64 {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_SEQ_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sets `obj`'s status sequence number (creating `metadata.annotations` as needed).
pub fn set_status_seq(obj: &mut Value, seq: u64) {
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
    Advance(u64),
    /// Refuse: the write is older (`written`) than what was applied (`applied`).
    Stale {
        /// The number the write carries.
        written: u64,
        /// The number already applied.
        applied: u64,
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
        let cur = with(Some("10"));
        assert_eq!(status_seq_write(&with(None), &cur), SeqWrite::Keep);
        assert_eq!(status_seq_write(&with(Some("10")), &cur), SeqWrite::Keep);
        assert_eq!(
            status_seq_write(&with(Some("11")), &cur),
            SeqWrite::Advance(11)
        );
        assert_eq!(
            status_seq_write(&with(Some("9")), &cur),
            SeqWrite::Stale {
                written: 9,
                applied: 10
            }
        );
        assert_eq!(
            status_seq_write(&with(Some("1")), &with(None)),
            SeqWrite::Advance(1)
        );
        let mut v = json!({"metadata": {"annotations": "junk"}});
        set_status_seq(&mut v, 5);
        assert_eq!(status_seq(&v), 5);
    }
}
