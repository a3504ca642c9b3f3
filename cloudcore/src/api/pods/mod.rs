//! Pods: defaulting, validation, update rules, graceful deletion and the table row, following
//! `pkg/registry/core/pod` and `pkg/apis/core/validation` of Kubernetes closely enough that
//! manifests and kubectl behave the same.
//!
//! This file is the pod resource itself (its registry entry and [`ResourceHandler`]); the
//! rules it applies live beside it: [`defaults`], [`resources`] (requests, limits, QoS),
//! [`validation`] of a spec, [`update`] rules, and the [`table`] kubectl prints.

mod defaults;
mod lifecycle;
mod resources;
mod table;
mod update;
pub(in crate::api) mod validation;

pub use defaults::{default_pull_policy, DEFAULT_GRACE_SECONDS, PROBE_DEFAULTS};
pub use resources::qos_class;
pub use table::display_status;
pub use update::validate_spec_update;
pub use validation::validate_spec;
pub(super) use validation::{is_port_name, PORT_NAME_FMT};

use defaults::default_container;
use table::{none_if_empty, restarts, COLUMNS};
use validation::{device_annotations, validate_device_annotations, PHASES};

use super::error::FieldError;
use super::resource::{
    decode_as, typed, DecodeError, DeleteAction, DeleteOptions, ResourceHandler, ResourceInfo,
    SelectableField,
};
use super::table::{age, Column};
use super::validation::errors_to_result as result;
use super::validation::NameRule;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// The pod resource.
pub const POD_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["po"],
    categories: &["all"],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[
        SelectableField {
            name: "spec.nodeName",
            pointer: "/spec/nodeName",
            default: "",
        },
        SelectableField {
            name: "spec.restartPolicy",
            pointer: "/spec/restartPolicy",
            default: "",
        },
        SelectableField {
            name: "spec.schedulerName",
            pointer: "/spec/schedulerName",
            default: "",
        },
        SelectableField {
            name: "spec.serviceAccountName",
            pointer: "/spec/serviceAccountName",
            default: "",
        },
        SelectableField {
            name: "spec.hostNetwork",
            pointer: "/spec/hostNetwork",
            default: "false",
        },
        SelectableField {
            name: "status.phase",
            pointer: "/status/phase",
            default: "",
        },
        SelectableField {
            name: "status.podIP",
            pointer: "/status/podIP",
            default: "",
        },
        SelectableField {
            name: "status.nominatedNodeName",
            pointer: "/status/nominatedNodeName",
            default: "",
        },
    ],
    return_deleted_object: true,
};

/// The pod [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PodHandler;

impl ResourceHandler for PodHandler {
    fn binding_subresource(&self) -> bool {
        true
    }

    fn log_subresource(&self) -> bool {
        true
    }

    fn exec_subresource(&self) -> bool {
        true
    }

    fn info(&self) -> &ResourceInfo {
        &POD_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Pod>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        spec.entry("restartPolicy")
            .or_insert_with(|| json!("Always"));
        spec.entry("terminationGracePeriodSeconds")
            .or_insert_with(|| json!(DEFAULT_GRACE_SECONDS));
        spec.entry("dnsPolicy")
            .or_insert_with(|| json!("ClusterFirst"));
        spec.entry("schedulerName")
            .or_insert_with(|| json!("default-scheduler"));
        spec.entry("securityContext").or_insert_with(|| json!({}));
        for key in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
                cs.iter_mut().for_each(default_container);
            }
        }
        // A volume with no source is an emptyDir, as in Kubernetes.
        if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            for v in vols.iter_mut().filter_map(Value::as_object_mut) {
                if v.keys().all(|k| k == "name") {
                    v.insert("emptyDir".into(), json!({}));
                }
            }
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        // Status is the edge's to report; on create only the initial phase and QoS class.
        let qos = typed::<Pod>(obj)
            .ok()
            .and_then(|p| p.spec)
            .map_or("BestEffort", |s| qos_class(&s));
        if let Some(o) = obj.as_object_mut() {
            o.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let pod: Pod = typed(obj)?;
        let mut errs = validate_device_annotations(&pod);
        match &pod.spec {
            Some(spec) => errs.extend(validate_spec(spec, "spec")),
            None => errs.push(FieldError::required("spec.containers", "")),
        }
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = validate_spec_update(new, old);
        // Devices are part of what the edge runs, like the spec: changing them would restart
        // the containers behind the user's back.
        let (n, o) = (device_annotations(new), device_annotations(old));
        for key in n
            .keys()
            .chain(o.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if n.get(key) != o.get(key) {
                errs.push(FieldError::forbidden(
                    format!("metadata.annotations[{key}]"),
                    "device annotations cannot change once the pod exists; delete and recreate the pod",
                ));
            }
        }
        result(errs)
    }

    fn validate_status(&self, new: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if let Some(phase) = new.pointer("/status/phase") {
            if !phase.as_str().is_some_and(|p| PHASES.contains(&p)) {
                errs.push(FieldError::not_supported("status.phase", phase, &PHASES));
            }
        }
        result(errs)
    }

    fn on_delete(&self, obj: &Value, opts: &DeleteOptions, now: &str) -> DeleteAction {
        let spec_grace = obj
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        let mut grace = opts.grace_period_seconds.unwrap_or(spec_grace);
        // Unbound pods have nothing running, and finished pods nothing to stop: delete now.
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !bound || phase == "Succeeded" || phase == "Failed" {
            grace = 0;
        }
        if grace < 0 {
            // As Kubernetes: a negative grace period means "as short as possible", not "now".
            grace = 1;
        }
        if grace == 0 {
            return DeleteAction::Delete;
        }
        let current = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if obj.pointer("/metadata/deletionTimestamp").is_some()
            && current.is_some_and(|c| c <= grace)
        {
            return DeleteAction::Unchanged;
        }
        // As Kubernetes: the timestamp is the deadline (now + grace), moved earlier when a later
        // delete shortens the grace.
        let deadline = protocol::timestamp::parse(now)
            .and_then(|t| t.checked_add(grace))
            .and_then(protocol::timestamp::checked_format)
            .unwrap_or_else(|| now.to_string());
        let mut updated = obj.clone();
        if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), json!(deadline));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        DeleteAction::Update(updated)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, pod: &Value, now: i64) -> Vec<Value> {
        vec![
            pod.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(table::ready(pod)),
            json!(display_status(pod)),
            json!(restarts(pod, now)),
            age(pod, now),
            none_if_empty(pod.pointer("/status/podIP")),
            none_if_empty(pod.pointer("/spec/nodeName")),
        ]
    }
}

#[cfg(test)]
mod tests;
