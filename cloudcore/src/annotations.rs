//! Annotations that more than one part of cloudcore reads or writes.
//!
//! They live here, not in the module that writes them, so that the API (which guards them
//! against client edits) and their writers (the ingest) do not import each other.

/// How the ingest tells the API which status report a `/status` write applies: an annotation
/// on the *request* (the one part of metadata the API's decoding keeps and a status write may
/// carry). Written `EPOCH:SEQ` (a bare `SEQ` is epoch 0, as written before epochs existed).
///
/// Objects written before issue #13 also carry it in their stored annotations, where it was
/// kept: [`status_seq`] still reads it there, the next report moves it into
/// [`SYSTEM_STATE`], and no response shows it.
pub const STATUS_SEQ_ANNOTATION: &str = "skerry.io/status-seq";

/// Where the stored object keeps the API's own bookkeeping: a top-level field that only the
/// API writes, copied from the current object on every client write (like `resourceVersion`),
/// and removed from every response ([`hide_system_state`]), so users never see it (issue #13:
/// `kubectl describe pod` showed the replay guard among the user's annotations).
pub const SYSTEM_STATE: &str = "skerry.io/system";

/// The field of [`SYSTEM_STATE`] holding the position of the last status report the ingest
/// applied: its replay guard (older or repeated reports are dropped).
const STATUS_SEQ_FIELD: &str = "statusSeq";

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

fn annotated_seq(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_SEQ_ANNOTATION))
}

/// The status position a stored object carries: its system state's, else (an object stored
/// before the system state existed) its annotation's; zero when it has none, or an unreadable
/// one.
pub fn status_seq(obj: &Value) -> StatusSeq {
    obj.get(SYSTEM_STATE)
        .and_then(|s| s.get(STATUS_SEQ_FIELD))
        .or_else(|| annotated_seq(obj))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

/// The status position a `/status` request asks for (its annotation), if it names one.
fn requested_seq(body: &Value) -> Option<StatusSeq> {
    annotated_seq(body).map(|v| v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default())
}

/// Records `seq` as the stored object's status position, in its system state; the legacy
/// annotation, if any, goes (it is migrated).
pub fn store_status_seq(obj: &mut Value, seq: StatusSeq) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    o.insert(
        SYSTEM_STATE.into(),
        json!({STATUS_SEQ_FIELD: seq.to_string()}),
    );
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(STATUS_SEQ_ANNOTATION);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
}

/// Keeps `current`'s system state (and a legacy status annotation) in `new`, whatever `new`
/// says: what a client write cannot change.
pub fn keep_system_state(new: &mut Value, current: &Value) {
    let Some(o) = new.as_object_mut() else {
        return;
    };
    match current.get(SYSTEM_STATE) {
        Some(s) => o.insert(SYSTEM_STATE.into(), s.clone()),
        None => o.remove(SYSTEM_STATE),
    };
}

/// Removes the API's bookkeeping from an object on its way to a client: the system state and
/// the legacy status annotation of objects stored before it.
pub fn hide_system_state(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    o.remove(SYSTEM_STATE);
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            if a.remove(STATUS_SEQ_ANNOTATION).is_some() && a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
}

/// Puts `seq` on a `/status` request as the report it applies (the ingest's side of
/// [`status_seq_write`]), creating `metadata.annotations` as needed.
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

/// The [`SeqWrite`] for a `/status` write of `body` (a request: its annotation says the
/// report) over `current` (stored: its system state, or its legacy annotation, says what was
/// applied).
pub fn status_seq_write(body: &Value, current: &Value) -> SeqWrite {
    let Some(written) = requested_seq(body) else {
        return SeqWrite::Keep;
    };
    let applied = status_seq(current);
    match written.cmp(&applied) {
        std::cmp::Ordering::Equal => SeqWrite::Keep,
        std::cmp::Ordering::Greater => SeqWrite::Advance(written),
        std::cmp::Ordering::Less => SeqWrite::Stale { written, applied },
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

    #[test]
    fn the_guard_is_stored_out_of_sight_and_old_objects_keep_theirs() {
        let s = |epoch, seq| StatusSeq::new(epoch, seq);
        // An object stored before the system state: its annotation still guards.
        let mut old =
            json!({"metadata": {"annotations": {STATUS_SEQ_ANNOTATION: "1:10", "a": "b"}}});
        assert_eq!(status_seq(&old), s(1, 10));
        assert!(matches!(
            status_seq_write(&with(Some("1:9")), &old),
            SeqWrite::Stale { .. }
        ));
        // The next report migrates it.
        store_status_seq(&mut old, s(1, 11));
        assert_eq!(status_seq(&old), s(1, 11));
        assert_eq!(old["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(old[SYSTEM_STATE]["statusSeq"], "1:11");
        assert_eq!(status_seq_write(&with(Some("1:11")), &old), SeqWrite::Keep);
        // A client's write cannot change it, and no response shows it.
        let mut client = json!({"metadata": {"name": "x"}, SYSTEM_STATE: {"statusSeq": "9:9"}});
        keep_system_state(&mut client, &old);
        assert_eq!(status_seq(&client), s(1, 11));
        let mut shown = old.clone();
        shown["metadata"]["annotations"][STATUS_SEQ_ANNOTATION] = json!("1:10");
        hide_system_state(&mut shown);
        assert_eq!(shown, json!({"metadata": {"annotations": {"a": "b"}}}));
        let mut only = json!({"metadata": {"annotations": {STATUS_SEQ_ANNOTATION: "3"}}});
        hide_system_state(&mut only);
        assert_eq!(only, json!({"metadata": {}}));
    }
}
