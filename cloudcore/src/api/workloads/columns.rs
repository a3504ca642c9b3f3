//! The table columns of the workload kinds, as kubectl prints them (`kubectl get deploy`).

use super::{selector_of, Workload};
use crate::api::resource::typed;
use crate::api::table::{age, Column, AGE_COLUMN, NAME_COLUMN};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::ReplicationController;
use serde_json::{json, Value};

/// The columns of `kind`.
pub(super) fn columns(kind: Workload) -> &'static [Column] {
    match kind {
        Workload::Deployment => &DEPLOYMENT_COLUMNS,
        Workload::ReplicaSet => &REPLICA_SET_COLUMNS,
        Workload::DaemonSet => &DAEMON_SET_COLUMNS,
        Workload::StatefulSet => &STATEFUL_SET_COLUMNS,
        Workload::ReplicationController => &REPLICATION_CONTROLLER_COLUMNS,
    }
}

/// The pod template's container names and images, comma-joined (the wide columns).
fn containers_and_images(obj: &Value) -> (Value, Value) {
    let containers = obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        json!(containers
            .iter()
            .map(|c| c.get(field).and_then(Value::as_str).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(","))
    };
    (join("name"), join("image"))
}

/// The selector as kubectl prints it (`app=web`), `<none>` when absent.
fn selector_text(obj: &Value) -> Value {
    json!(selector_of(obj).map_or_else(|| "<none>".to_string(), |s| s.to_string()))
}

/// `obj` decoded as `T` for the table columns; one that does not decode (the API stores
/// none such) prints its counts as 0, as missing counts do.
fn table_typed<T: serde::de::DeserializeOwned + Default>(obj: &Value) -> T {
    typed(obj).unwrap_or_default()
}

macro_rules! column {
    ($name:expr, $kind:expr, $desc:expr) => {
        Column {
            name: $name,
            kind: $kind,
            format: "",
            description: $desc,
            priority: 0,
        }
    };
    ($name:expr, $kind:expr, $desc:expr, wide) => {
        Column {
            name: $name,
            kind: $kind,
            format: "",
            description: $desc,
            priority: 1,
        }
    };
}

const CONTAINERS: Column = column!(
    "Containers",
    "string",
    "Names of each container in the template.",
    wide
);
const IMAGES: Column = column!(
    "Images",
    "string",
    "Images referenced by each container in the template.",
    wide
);
const SELECTOR: Column = column!("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", wide);

const DEPLOYMENT_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    column!("Ready", "string", "Number of the pod with ready state"),
    column!("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    column!("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE_COLUMN,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const REPLICA_SET_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    column!("Desired", "integer", "Number of desired pods. This is a pointer to distinguish between explicit zero and unspecified."),
    column!("Current", "integer", "Replicas is the most recently observed number of replicas."),
    column!("Ready", "integer", "The number of ready replicas for this replica set."),
    AGE_COLUMN,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const REPLICATION_CONTROLLER_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    column!("Desired", "integer", "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1."),
    column!("Current", "integer", "Replicas is the most recently observed number of replicas."),
    column!("Ready", "integer", "The number of ready replicas for this replication controller."),
    AGE_COLUMN,
    CONTAINERS,
    IMAGES,
    column!("Selector", "string", "Selector is a label query over pods that should match the Replicas count. If Selector is empty, it is defaulted to the labels present on the Pod template.", wide),
];

const DAEMON_SET_COLUMNS: [Column; 11] = [
    NAME_COLUMN,
    column!("Desired", "integer", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
    column!("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    column!("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
    column!("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
    column!("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
    column!("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
    AGE_COLUMN,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];

const STATEFUL_SET_COLUMNS: [Column; 5] = [
    NAME_COLUMN,
    column!("Ready", "string", "Number of the pod with ready state"),
    AGE_COLUMN,
    CONTAINERS,
    IMAGES,
];

/// The table row of `obj`, a `kind` object, at `now`.
pub(super) fn row(kind: Workload, obj: &Value, now: i64) -> Vec<Value> {
    let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
    let (containers, images) = containers_and_images(obj);
    let ready_of = |ready: Option<i32>, replicas: Option<i32>| {
        json!(format!("{}/{}", ready.unwrap_or(0), replicas.unwrap_or(0)))
    };
    let n = |v: Option<i32>| json!(v.unwrap_or(0));
    match kind {
        Workload::Deployment => {
            let d: Deployment = table_typed(obj);
            let status = d.status.unwrap_or_default();
            vec![
                name,
                ready_of(status.ready_replicas, d.spec.and_then(|s| s.replicas)),
                n(status.updated_replicas),
                n(status.available_replicas),
                age(obj, now),
                containers,
                images,
                selector_text(obj),
            ]
        }
        Workload::ReplicaSet => {
            let rs: ReplicaSet = table_typed(obj);
            let status = rs.status.unwrap_or_default();
            vec![
                name,
                n(rs.spec.and_then(|s| s.replicas)),
                json!(status.replicas),
                n(status.ready_replicas),
                age(obj, now),
                containers,
                images,
                selector_text(obj),
            ]
        }
        Workload::ReplicationController => {
            let rc: ReplicationController = table_typed(obj);
            let status = rc.status.unwrap_or_default();
            vec![
                name,
                n(rc.spec.and_then(|s| s.replicas)),
                json!(status.replicas),
                n(status.ready_replicas),
                age(obj, now),
                containers,
                images,
                selector_text(obj),
            ]
        }
        Workload::DaemonSet => {
            let node_selector = obj
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .map_or_else(
                    || "<none>".to_string(),
                    |m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
            let status = table_typed::<DaemonSet>(obj).status.unwrap_or_default();
            vec![
                name,
                json!(status.desired_number_scheduled),
                json!(status.current_number_scheduled),
                json!(status.number_ready),
                n(status.updated_number_scheduled),
                n(status.number_available),
                json!(node_selector),
                age(obj, now),
                containers,
                images,
                selector_text(obj),
            ]
        }
        Workload::StatefulSet => {
            let ss: StatefulSet = table_typed(obj);
            let ready = ss.status.and_then(|s| s.ready_replicas);
            vec![
                name,
                ready_of(ready, ss.spec.and_then(|s| s.replicas)),
                age(obj, now),
                containers,
                images,
            ]
        }
    }
}
