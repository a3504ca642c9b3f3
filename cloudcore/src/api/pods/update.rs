//! What a pod update may change: Kubernetes keeps a pod's spec immutable except a few fields.

use crate::api::error::FieldError;
use serde_json::{json, Value};

/// The fields a pod update may change, in Kubernetes' words.
const UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Kubernetes' pod update rule: the spec is immutable except container images, a new or shorter
/// `activeDeadlineSeconds`, and added tolerations.
pub fn validate_spec_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut n = new.get("spec").cloned().unwrap_or(Value::Null);
    let o = old.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(nm) = n.as_object_mut() {
        for key in ["containers", "initContainers"] {
            let old_list = o.get(key).and_then(Value::as_array);
            if let (Some(nl), Some(ol)) = (nm.get_mut(key).and_then(Value::as_array_mut), old_list)
            {
                if nl.len() == ol.len() {
                    for (nc, oc) in nl.iter_mut().zip(ol) {
                        if let Some(nc) = nc.as_object_mut() {
                            match oc.get("image") {
                                Some(img) => nc.insert("image".into(), img.clone()),
                                None => nc.remove("image"),
                            };
                        }
                    }
                }
            }
        }
        let old_deadline = o.get("activeDeadlineSeconds").and_then(Value::as_i64);
        let new_deadline = nm.get("activeDeadlineSeconds").and_then(Value::as_i64);
        match (old_deadline, new_deadline) {
            (Some(_), None) => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                "must not update from a positive integer to nil value",
            )),
            (Some(o), Some(n)) if n > o => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &json!(n),
                "must be less than or equal to previous value",
            )),
            _ => {}
        }
        match o.get("activeDeadlineSeconds") {
            Some(v) => nm.insert("activeDeadlineSeconds".into(), v.clone()),
            None => nm.remove("activeDeadlineSeconds"),
        };
        let old_tol = o
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_tol = nm
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if old_tol.iter().all(|t| new_tol.contains(t)) {
            match o.get("tolerations") {
                Some(v) => nm.insert("tolerations".into(), v.clone()),
                None => nm.remove("tolerations"),
            };
        }
    }
    if n != o {
        errs.push(FieldError::forbidden("spec", UPDATE_FORBIDDEN));
    }
    errs
}
