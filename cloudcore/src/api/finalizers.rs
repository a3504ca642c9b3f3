//! Finalizers and deletion propagation: the Kubernetes rules of when a deleted object really
//! leaves the store, for every kind.
//!
//! - An object with `metadata.finalizers` is not removed by a DELETE: it is marked (a
//!   `deletionTimestamp`, and `deletionGracePeriodSeconds: 0` unless its kind's own graceful
//!   deletion set a grace period, as pods do) and stays until its finalizers are gone.
//! - Graceful termination is done when `deletionGracePeriodSeconds` is 0 (or absent): for a pod,
//!   when its node confirmed that it stopped. An object leaves the store once it is marked,
//!   graceful termination is done and no finalizer remains, whichever of the two came last.
//! - `DeleteOptions.propagationPolicy` (or the legacy `orphanDependents`) asks the garbage
//!   collector for help through two finalizers: `foregroundDeletion` (delete the dependents
//!   first) and `orphan` (strip the owner references from the dependents first); `Background`
//!   removes both, so the owner goes at once and the collector deletes the dependents after.
//! - While an object is terminating no finalizer may be added and the deletion timestamp cannot
//!   be unset (the update path keeps the stored one).
//!
//! Everything here is pure; the handlers apply it inside their optimistic-concurrency loops.

use super::client::Propagation;
use super::error::{ApiError, FieldError};
use serde_json::{json, Value};

/// The finalizer that makes the garbage collector delete dependents before their owner.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that makes the garbage collector orphan dependents before their owner goes.
pub const ORPHAN: &str = "orphan";

/// What a DELETE asked about dependents: `propagationPolicy` or the legacy `orphanDependents`
/// (at most one of them; `None` for both means "keep what the object already asked for").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PropagationRequest {
    /// `propagationPolicy`.
    pub policy: Option<Propagation>,
    /// `orphanDependents` (deprecated).
    pub orphan_dependents: Option<bool>,
}

impl PropagationRequest {
    /// Reads the two `DeleteOptions` fields, with Kubernetes' rules: unknown policies and both
    /// fields at once are refused.
    pub fn parse(policy: Option<&str>, orphan_dependents: Option<bool>) -> Result<Self, ApiError> {
        let policy = match policy {
            None | Some("") => None,
            Some(p) => Some(Propagation::parse(p).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                ))
            })?),
        };
        if policy.is_some() && orphan_dependents.is_some() {
            return Err(ApiError::bad_request(
                "orphanDependents and propagationPolicy cannot both be set; use propagationPolicy only",
            ));
        }
        Ok(Self {
            policy,
            orphan_dependents,
        })
    }
}

/// The `metadata.finalizers` of `obj`.
pub fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|fs| fs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether `obj` has `finalizer`.
pub fn has_finalizer(obj: &Value, finalizer: &str) -> bool {
    finalizers(obj).contains(&finalizer)
}

/// Sets `metadata.finalizers` (removing the field when empty, as Kubernetes serializes it).
pub fn set_finalizers(obj: &mut Value, list: &[&str]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if list.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".into(), json!(list));
    }
}

/// `obj` without `finalizer`.
pub fn without_finalizer(obj: &Value, finalizer: &str) -> Value {
    let mut out = obj.clone();
    let kept: Vec<&str> = finalizers(obj)
        .into_iter()
        .filter(|f| *f != finalizer)
        .collect();
    set_finalizers(&mut out, &kept);
    out
}

/// Whether `obj` is marked for deletion.
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
}

/// Whether the graceful part of a deletion is over (`deletionGracePeriodSeconds` 0 or absent).
pub fn graceful_done(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        <= 0
}

/// Whether a marked object may now leave the store: graceful termination done and no finalizer
/// left.
pub fn ready_to_remove(obj: &Value) -> bool {
    is_deleting(obj) && graceful_done(obj) && finalizers(obj).is_empty()
}

/// `obj` with its garbage-collection finalizers set as the delete request asks (Kubernetes'
/// `deletionFinalizersForGarbageCollection`): both are removed, then `orphan` comes back for
/// Orphan (or `orphanDependents: true`, or no request and the object already had it),
/// `foregroundDeletion` for Foreground (or no request and it already had it).
pub fn with_gc_finalizers(obj: &Value, req: PropagationRequest) -> Value {
    let had = |f| has_finalizer(obj, f);
    let (orphan, foreground) = match (req.policy, req.orphan_dependents) {
        (Some(p), _) => (p == Propagation::Orphan, p == Propagation::Foreground),
        (None, Some(o)) => (o, false),
        (None, None) => (had(ORPHAN), had(FOREGROUND) && !had(ORPHAN)),
    };
    let mut list: Vec<&str> = finalizers(obj)
        .into_iter()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .collect();
    if orphan {
        list.push(ORPHAN);
    }
    if foreground {
        list.push(FOREGROUND);
    }
    let mut out = obj.clone();
    set_finalizers(&mut out, &list);
    out
}

/// Marks `obj` as deleted now without a grace period (an object kept by its finalizers):
/// `deletionTimestamp` if it had none, and `deletionGracePeriodSeconds: 0`.
pub fn mark_deleting(obj: &mut Value, now: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("deletionTimestamp")
            .or_insert_with(|| json!(now));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
    }
}

/// Whether an update from `old` to `new` removes the object (Kubernetes'
/// `ShouldDeleteDuringUpdate`): it removed the last finalizer of a marked object whose graceful
/// termination is done.
pub fn removes_on_update(old: &Value, new: &Value) -> bool {
    !finalizers(old).is_empty() && ready_to_remove(new)
}

/// The update rule for terminating objects: no finalizer may be added.
pub fn check_update(new: &Value, old: &Value) -> Result<(), FieldError> {
    if !is_deleting(old) {
        return Ok(());
    }
    let before = finalizers(old);
    let added: Vec<&str> = finalizers(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    Err(FieldError::forbidden(
        "metadata.finalizers",
        format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(finalizers: &[&str]) -> Value {
        let mut v = json!({"metadata": {"name": "x"}});
        set_finalizers(&mut v, finalizers);
        v
    }

    fn req(policy: Option<&str>, orphan: Option<bool>) -> PropagationRequest {
        PropagationRequest::parse(policy, orphan).unwrap()
    }

    #[test]
    fn propagation_policies_set_the_collector_finalizers() {
        let custom = obj(&["example.com/keep"]);
        let fg = with_gc_finalizers(&custom, req(Some("Foreground"), None));
        assert_eq!(finalizers(&fg), ["example.com/keep", FOREGROUND]);
        let or = with_gc_finalizers(&fg, req(Some("Orphan"), None));
        assert_eq!(finalizers(&or), ["example.com/keep", ORPHAN]);
        let bg = with_gc_finalizers(&or, req(Some("Background"), None));
        assert_eq!(finalizers(&bg), ["example.com/keep"]);
        // No request keeps what the object asked for; the legacy flag still works.
        assert_eq!(
            finalizers(&with_gc_finalizers(&or, req(None, None))),
            ["example.com/keep", ORPHAN]
        );
        assert_eq!(
            finalizers(&with_gc_finalizers(&custom, req(None, Some(true)))),
            ["example.com/keep", ORPHAN]
        );
        assert_eq!(
            finalizers(&with_gc_finalizers(&or, req(None, Some(false)))),
            ["example.com/keep"]
        );
        let none = with_gc_finalizers(&obj(&[]), req(Some("Background"), None));
        assert!(none["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn unknown_policies_and_both_fields_are_refused() {
        let e = PropagationRequest::parse(Some("Sideways"), None).unwrap_err();
        assert!(
            e.to_string().contains("Unsupported value: \"Sideways\""),
            "{e}"
        );
        assert!(PropagationRequest::parse(Some("Orphan"), Some(true)).is_err());
        assert_eq!(
            PropagationRequest::parse(Some(""), None).unwrap(),
            PropagationRequest::default()
        );
    }

    #[test]
    fn removal_waits_for_finalizers_and_graceful_termination() {
        let mut marked = obj(&["a"]);
        mark_deleting(&mut marked, "2025-01-01T00:00:00Z");
        assert!(is_deleting(&marked) && graceful_done(&marked) && !ready_to_remove(&marked));
        let cleared = without_finalizer(&marked, "a");
        assert!(removes_on_update(&marked, &cleared));
        // A pod still terminating gracefully stays after its finalizers are gone.
        let mut pod = marked.clone();
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert!(!removes_on_update(&pod, &without_finalizer(&pod, "a")));
        // Marking again keeps the first timestamp.
        mark_deleting(&mut marked, "2030-01-01T00:00:00Z");
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2025-01-01T00:00:00Z"
        );
        // Not a finalizer removal: nothing to do.
        assert!(!removes_on_update(&cleared, &cleared));
    }

    #[test]
    fn terminating_objects_take_no_new_finalizers() {
        let mut old = obj(&["a"]);
        assert!(check_update(&obj(&["a", "b"]), &old).is_ok());
        mark_deleting(&mut old, "2025-01-01T00:00:00Z");
        assert!(check_update(&obj(&[]), &old).is_ok());
        assert!(check_update(&obj(&["a"]), &old).is_ok());
        let e = check_update(&obj(&["a", "b"]), &old).unwrap_err();
        assert!(format!("{e:?}").contains("no new finalizers"), "{e:?}");
    }
}
