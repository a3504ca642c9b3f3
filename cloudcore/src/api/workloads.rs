//! The apps/v1 workload kinds: Deployment, ReplicaSet, DaemonSet and StatefulSet.
//!
//! All four own pods through a pod template and a label selector, so they share one handler
//! ([`WorkloadHandler`]) parameterised by [`Workload`]: the same template defaulting (the pod
//! handler's own defaults, so a pod a controller stamps out compares equal to its template),
//! the same template validation (the pod spec rules, `restartPolicy: Always`, and a selector
//! that matches the template's labels, because a controller whose pods do not match its own
//! selector would create pods forever), and kind-specific defaults, rules and table columns
//! following `pkg/apis/apps` (defaults, validation) and the printers of Kubernetes.
//!
//! The controllers that act on these objects live in [`crate::controllers`].

use super::error::FieldError;
use super::pods::{validate_spec, PodHandler};
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::selector::LabelSelector;
use super::table::{age, Column, AGE_COLUMN, NAME_COLUMN};
use super::validation::{errors_to_result, label_value, push_invalid, qualified_name, NameRule};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};

const fn info(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
) -> ResourceInfo {
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural,
        singular,
        kind,
        namespaced: true,
        verbs: super::resource::ALL_VERBS,
        short_names,
        categories: &["all"],
        status_subresource: true,
        name_rule: NameRule::Subdomain,
        selectable_fields: &[],
        return_deleted_object: false,
    }
}

/// The Deployment resource.
pub const DEPLOYMENT_INFO: ResourceInfo =
    info("deployments", "deployment", "Deployment", &["deploy"]);
/// The ReplicaSet resource.
pub const REPLICA_SET_INFO: ResourceInfo = info("replicasets", "replicaset", "ReplicaSet", &["rs"]);
/// The DaemonSet resource.
pub const DAEMON_SET_INFO: ResourceInfo = info("daemonsets", "daemonset", "DaemonSet", &["ds"]);
/// The StatefulSet resource.
pub const STATEFUL_SET_INFO: ResourceInfo =
    info("statefulsets", "statefulset", "StatefulSet", &["sts"]);

/// Which workload kind a [`WorkloadHandler`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

impl Workload {
    /// Every workload kind, in registration order.
    pub const ALL: [Workload; 4] = [
        Workload::Deployment,
        Workload::ReplicaSet,
        Workload::DaemonSet,
        Workload::StatefulSet,
    ];

    /// The resource description.
    pub fn info(self) -> &'static ResourceInfo {
        match self {
            Workload::Deployment => &DEPLOYMENT_INFO,
            Workload::ReplicaSet => &REPLICA_SET_INFO,
            Workload::DaemonSet => &DAEMON_SET_INFO,
            Workload::StatefulSet => &STATEFUL_SET_INFO,
        }
    }

    /// Storage resource of the kind (`apps/deployments`).
    pub fn resource(self) -> String {
        self.info().storage_resource()
    }

    /// Whether the kind has `spec.replicas` (all but DaemonSet).
    pub fn has_replicas(self) -> bool {
        self != Workload::DaemonSet
    }

    /// The lower-case kind as Kubernetes names it in messages ("empty selector is invalid for
    /// deployment").
    fn noun(self) -> &'static str {
        self.info().singular
    }
}

/// The handler of one workload kind.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadHandler(pub Workload);

/// Resolves an int-or-percent field (`maxSurge: 25%`, `maxUnavailable: 1`) against `total`,
/// rounding percentages up or down as the caller's rule says (Kubernetes rounds surge up and
/// unavailability down). A malformed value is an error naming it.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("{s:?} is neither an integer nor a percentage like \"25%\"")
                })?;
            let scaled = pct * i64::from(total);
            let v = if round_up {
                (scaled + 99).div_euclid(100)
            } else {
                scaled.div_euclid(100)
            };
            i32::try_from(v).map_err(|_| format!("{s} of {total} is out of range"))
        }
    }
}

/// Checks an int-or-percent field: a non-negative integer, or a percentage (at most 100% when
/// `max_100`).
fn check_int_or_percent(v: &IntOrString, field: &str, max_100: bool, errs: &mut Vec<FieldError>) {
    match v {
        IntOrString::Int(n) if *n < 0 => errs.push(FieldError::invalid(
            field,
            &json!(n),
            "must be greater than or equal to 0",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            None => errs.push(FieldError::invalid(
                field,
                &json!(s),
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
            Some(p) if p < 0 => errs.push(FieldError::invalid(
                field,
                &json!(s),
                "must be greater than or equal to 0",
            )),
            Some(p) if max_100 && p > 100 => errs.push(FieldError::invalid(
                field,
                &json!(s),
                "must not be greater than 100%",
            )),
            Some(_) => {}
        },
    }
}

/// Whether an int-or-percent value is zero (`0` or `0%`).
fn is_zero(v: &IntOrString) -> bool {
    match v {
        IntOrString::Int(n) => *n == 0,
        IntOrString::String(s) => {
            s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) == Some(0)
        }
    }
}

fn non_negative(v: Option<i32>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.filter(|n| *n < 0) {
        errs.push(FieldError::invalid(
            field,
            &json!(n),
            "must be greater than or equal to 0",
        ));
    }
}

/// The selector of a workload as a parsed selector, if it is valid and not empty.
pub fn selector_of(obj: &Value) -> Option<LabelSelector> {
    let sel: MetaSelector = serde_json::from_value(obj.pointer("/spec/selector")?.clone()).ok()?;
    LabelSelector::from_meta(&sel)
        .ok()
        .filter(|s| !s.is_empty())
}

/// The checks every workload's selector and template share: a non-empty valid selector that
/// selects the template's labels, valid template labels, a valid pod spec and `restartPolicy:
/// Always` (a controller replaces pods that exit; it cannot run them to completion).
fn validate_selector_and_template(
    kind: Workload,
    selector: &MetaSelector,
    template: &PodTemplateSpec,
    errs: &mut Vec<FieldError>,
) {
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &labels {
        push_invalid(errs, "spec.template.metadata.labels", k, qualified_name(k));
        push_invalid(
            errs,
            &format!("spec.template.metadata.labels[{k}]"),
            v,
            label_value(v),
        );
    }
    // k8s-openapi decodes a missing selector as an empty one; both are "Required".
    let absent = selector.match_labels.is_none() && selector.match_expressions.is_none();
    match Some(selector).filter(|_| !absent) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => match LabelSelector::from_meta(sel) {
            Err(e) => errs.push(FieldError::invalid("spec.selector", &json!(sel), e.problem)),
            Ok(parsed) if parsed.is_empty() => errs.push(FieldError::invalid(
                "spec.selector",
                &json!(sel),
                format!("empty selector is invalid for {}", kind.noun()),
            )),
            Ok(parsed) => {
                for r in &parsed.requirements {
                    push_invalid(errs, "spec.selector", &r.key, qualified_name(&r.key));
                }
                if !parsed.matches_labels(&labels) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        &json!(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    match &template.spec {
        None => errs.push(FieldError::required("spec.template.spec", "")),
        Some(spec) => {
            errs.extend(validate_spec(spec, "spec.template.spec"));
            let policy = spec.restart_policy.as_deref().unwrap_or("Always");
            if policy != "Always" {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    &json!(policy),
                    &["Always"],
                ));
            }
            if spec.active_deadline_seconds.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.template.spec.activeDeadlineSeconds",
                    "activeDeadlineSeconds in ReplicaSet is not Supported",
                ));
            }
        }
    }
}

/// Inserts `value` at `key` of `obj` when absent.
fn default_field(obj: &mut Map<String, Value>, key: &str, value: Value) {
    obj.entry(key).or_insert(value);
}

/// Defaults an update strategy (`strategy` or `updateStrategy`) to `RollingUpdate`, and the
/// fields of its `rollingUpdate` to `rolling` when the type is `RollingUpdate`.
fn default_strategy(spec: &mut Map<String, Value>, field: &str, rolling: &[(&str, Value)]) {
    let strategy = spec.entry(field).or_insert_with(|| json!({}));
    let Some(s) = strategy.as_object_mut() else {
        return;
    };
    default_field(s, "type", json!("RollingUpdate"));
    if s.get("type") != Some(&json!("RollingUpdate")) {
        return;
    }
    if let Some(ru) = s
        .entry("rollingUpdate")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        for (k, v) in rolling {
            default_field(ru, k, v.clone());
        }
    }
}

impl WorkloadHandler {
    fn default_template(spec: &mut Map<String, Value>) {
        if let Some(t) = spec.get_mut("template") {
            PodHandler.default(t);
        }
    }

    fn validate_deployment(obj: &Value, errs: &mut Vec<FieldError>) -> Result<(), Vec<FieldError>> {
        let d: Deployment = typed(obj)?;
        let spec = d.spec.unwrap_or_default();
        non_negative(spec.replicas, "spec.replicas", errs);
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errs);
        non_negative(
            spec.revision_history_limit,
            "spec.revisionHistoryLimit",
            errs,
        );
        validate_selector_and_template(Workload::Deployment, &spec.selector, &spec.template, errs);
        let strategy = spec.strategy.unwrap_or_default();
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "Recreate" => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::forbidden(
                        "spec.strategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            "RollingUpdate" => {
                let ru = strategy.rolling_update.unwrap_or_default();
                let surge = ru.max_surge.unwrap_or(IntOrString::String("25%".into()));
                let unavailable = ru
                    .max_unavailable
                    .unwrap_or(IntOrString::String("25%".into()));
                check_int_or_percent(&surge, "spec.strategy.rollingUpdate.maxSurge", false, errs);
                check_int_or_percent(
                    &unavailable,
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    true,
                    errs,
                );
                if is_zero(&surge) && is_zero(&unavailable) {
                    errs.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        &json!(unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                &json!(other),
                &["Recreate", "RollingUpdate"],
            )),
        }
        if let Some(deadline) = spec.progress_deadline_seconds {
            if deadline <= spec.min_ready_seconds.unwrap_or(0) {
                errs.push(FieldError::invalid(
                    "spec.progressDeadlineSeconds",
                    &json!(deadline),
                    "must be greater than minReadySeconds",
                ));
            }
        }
        Ok(())
    }

    fn validate_replica_set(
        obj: &Value,
        errs: &mut Vec<FieldError>,
    ) -> Result<(), Vec<FieldError>> {
        let rs: ReplicaSet = typed(obj)?;
        let spec = rs.spec.unwrap_or_default();
        non_negative(spec.replicas, "spec.replicas", errs);
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errs);
        let template = spec.template.unwrap_or_default();
        validate_selector_and_template(Workload::ReplicaSet, &spec.selector, &template, errs);
        Ok(())
    }

    fn validate_daemon_set(obj: &Value, errs: &mut Vec<FieldError>) -> Result<(), Vec<FieldError>> {
        let ds: DaemonSet = typed(obj)?;
        let spec = ds.spec.unwrap_or_default();
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errs);
        non_negative(
            spec.revision_history_limit,
            "spec.revisionHistoryLimit",
            errs,
        );
        validate_selector_and_template(Workload::DaemonSet, &spec.selector, &spec.template, errs);
        let strategy = spec.update_strategy.unwrap_or_default();
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "OnDelete" => {}
            "RollingUpdate" => {
                let ru = strategy.rolling_update.unwrap_or_default();
                let surge = ru.max_surge.unwrap_or(IntOrString::Int(0));
                let unavailable = ru.max_unavailable.unwrap_or(IntOrString::Int(1));
                check_int_or_percent(
                    &surge,
                    "spec.updateStrategy.rollingUpdate.maxSurge",
                    true,
                    errs,
                );
                check_int_or_percent(
                    &unavailable,
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    true,
                    errs,
                );
                if is_zero(&surge) && is_zero(&unavailable) {
                    errs.push(FieldError::invalid(
                        "spec.updateStrategy.rollingUpdate.maxUnavailable",
                        &json!(unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                "spec.updateStrategy.type",
                &json!(other),
                &["OnDelete", "RollingUpdate"],
            )),
        }
        Ok(())
    }

    fn validate_stateful_set(
        obj: &Value,
        errs: &mut Vec<FieldError>,
    ) -> Result<(), Vec<FieldError>> {
        let ss: StatefulSet = typed(obj)?;
        let spec = ss.spec.unwrap_or_default();
        non_negative(spec.replicas, "spec.replicas", errs);
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errs);
        non_negative(
            spec.revision_history_limit,
            "spec.revisionHistoryLimit",
            errs,
        );
        validate_selector_and_template(Workload::StatefulSet, &spec.selector, &spec.template, errs);
        let policy = spec
            .pod_management_policy
            .as_deref()
            .unwrap_or("OrderedReady");
        if !matches!(policy, "OrderedReady" | "Parallel") {
            errs.push(FieldError::not_supported(
                "spec.podManagementPolicy",
                &json!(policy),
                &["OrderedReady", "Parallel"],
            ));
        }
        let strategy = spec.update_strategy.unwrap_or_default();
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "OnDelete" => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::invalid(
                        "spec.updateStrategy.rollingUpdate",
                        &json!(strategy.rolling_update),
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            "RollingUpdate" => {
                let ru = strategy.rolling_update.unwrap_or_default();
                non_negative(
                    ru.partition,
                    "spec.updateStrategy.rollingUpdate.partition",
                    errs,
                );
            }
            other => errs.push(FieldError::not_supported(
                "spec.updateStrategy.type",
                &json!(other),
                &["OnDelete", "RollingUpdate"],
            )),
        }
        if let Some(name) = spec.service_name.as_deref().filter(|n| !n.is_empty()) {
            push_invalid(
                errs,
                "spec.serviceName",
                name,
                super::validation::dns1123_label(name),
            );
        }
        Ok(())
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

impl ResourceHandler for WorkloadHandler {
    fn info(&self) -> &ResourceInfo {
        self.0.info()
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        match self.0 {
            Workload::Deployment => decode_as::<Deployment>(obj),
            Workload::ReplicaSet => decode_as::<ReplicaSet>(obj),
            Workload::DaemonSet => decode_as::<DaemonSet>(obj),
            Workload::StatefulSet => decode_as::<StatefulSet>(obj),
        }
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        Self::default_template(spec);
        if self.0.has_replicas() {
            default_field(spec, "replicas", json!(1));
        }
        match self.0 {
            Workload::Deployment => {
                default_field(spec, "revisionHistoryLimit", json!(10));
                default_field(spec, "progressDeadlineSeconds", json!(600));
                default_strategy(
                    spec,
                    "strategy",
                    &[("maxUnavailable", json!("25%")), ("maxSurge", json!("25%"))],
                );
            }
            Workload::ReplicaSet => {}
            Workload::DaemonSet => {
                default_field(spec, "revisionHistoryLimit", json!(10));
                default_strategy(
                    spec,
                    "updateStrategy",
                    &[("maxUnavailable", json!(1)), ("maxSurge", json!(0))],
                );
            }
            Workload::StatefulSet => {
                default_field(spec, "revisionHistoryLimit", json!(10));
                default_field(spec, "podManagementPolicy", json!("OrderedReady"));
                default_field(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                default_strategy(spec, "updateStrategy", &[("partition", json!(0))]);
            }
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        // Status is the controller's to write.
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        match self.0 {
            Workload::Deployment => Self::validate_deployment(obj, &mut errs)?,
            Workload::ReplicaSet => Self::validate_replica_set(obj, &mut errs)?,
            Workload::DaemonSet => Self::validate_daemon_set(obj, &mut errs)?,
            Workload::StatefulSet => Self::validate_stateful_set(obj, &mut errs)?,
        }
        errors_to_result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        // apps/v1 selectors are immutable: changing one would orphan the running pods.
        if new.pointer("/spec/selector") != old.pointer("/spec/selector") {
            errs.push(FieldError::invalid(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        if self.0 == Workload::StatefulSet {
            const MUTABLE: [&str; 7] = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
                "revisionHistoryLimit",
            ];
            let rest = |v: &Value| -> Map<String, Value> {
                v.get("spec")
                    .and_then(Value::as_object)
                    .map(|s| {
                        s.iter()
                            .filter(|(k, _)| {
                                !MUTABLE.contains(&k.as_str()) && k.as_str() != "selector"
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if rest(new) != rest(old) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        errors_to_result(errs)
    }

    fn scale_subresource(&self) -> bool {
        self.0.has_replicas()
    }

    fn columns(&self) -> &'static [Column] {
        match self.0 {
            Workload::Deployment => &DEPLOYMENT_COLUMNS,
            Workload::ReplicaSet => &REPLICA_SET_COLUMNS,
            Workload::DaemonSet => &DAEMON_SET_COLUMNS,
            Workload::StatefulSet => &STATEFUL_SET_COLUMNS,
        }
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
        let (containers, images) = containers_and_images(obj);
        let ready_of = |ready: Option<i32>, replicas: Option<i32>| {
            json!(format!("{}/{}", ready.unwrap_or(0), replicas.unwrap_or(0)))
        };
        let n = |v: Option<i32>| json!(v.unwrap_or(0));
        match self.0 {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(spec: Value) -> Value {
        let mut v = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}});
        if let (Some(s), Some(extra)) = (v["spec"].as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        let h = WorkloadHandler(Workload::Deployment);
        let mut v = h.decode(v).unwrap();
        h.default(&mut v);
        v
    }

    fn errors(h: WorkloadHandler, v: &Value) -> Vec<String> {
        h.validate(v)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn deployments_get_kubernetes_defaults() {
        let d = deployment(json!({}));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert!(errors(WorkloadHandler(Workload::Deployment), &d).is_empty());
        let recreate = deployment(json!({"strategy": {"type": "Recreate"}}));
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn selectors_must_match_template_labels() {
        let h = WorkloadHandler(Workload::Deployment);
        let bad = deployment(json!({"selector": {"matchLabels": {"app": "other"}}}));
        assert_eq!(
            errors(h, &bad),
            [
                r#"spec.template.metadata.labels: Invalid value: {"app":"web","tier":"fe"}: `selector` does not match template `labels`"#
            ]
        );
        let set_based = deployment(json!({"selector": {"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]}]}}));
        assert!(errors(h, &set_based).is_empty());
        let empty = deployment(json!({"selector": {}}));
        assert_eq!(errors(h, &empty), ["spec.selector: Required value"]);
        let bad_op = deployment(json!({"selector": {"matchExpressions": [
            {"key": "tier", "operator": "Near"}]}}));
        assert!(errors(h, &bad_op)[0].contains("Unsupported value: \"Near\""));
    }

    #[test]
    fn templates_are_validated_as_pods_that_always_restart() {
        let h = WorkloadHandler(Workload::Deployment);
        let mut d = deployment(json!({}));
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["replicas"] = json!(-1);
        assert_eq!(
            errors(h, &d),
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.spec.containers[0].image: Required value",
                r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
            ]
        );
    }

    #[test]
    fn rolling_update_bounds_are_checked() {
        let h = WorkloadHandler(Workload::Deployment);
        let zero = deployment(json!({"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}));
        assert_eq!(
            errors(h, &zero),
            [
                r#"spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "0%": may not be 0 when `maxSurge` is 0"#
            ]
        );
        let over = deployment(json!({"strategy": {"rollingUpdate": {"maxUnavailable": "150%"}}}));
        assert!(errors(h, &over)[0].contains("must not be greater than 100%"));
        let recreate = deployment(json!({"strategy": {"type": "Recreate", "rollingUpdate": {}}}));
        assert!(errors(h, &recreate)[0]
            .contains("may not be specified when strategy `type` is 'Recreate'"));
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&pct("25%"), 3, true), Ok(1));
        assert_eq!(scaled_value(&pct("25%"), 3, false), Ok(0));
        assert_eq!(scaled_value(&pct("50%"), 10, false), Ok(5));
        assert_eq!(scaled_value(&IntOrString::Int(2), 10, true), Ok(2));
        assert!(scaled_value(&pct("x"), 10, true).is_err());
    }

    #[test]
    fn selectors_are_immutable_and_statefulset_specs_mostly_so() {
        let h = WorkloadHandler(Workload::Deployment);
        let old = deployment(json!({}));
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        assert!(h.validate_update(&new, &old).is_ok());
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "fe"}});
        assert!(h.validate_update(&new, &old).unwrap_err()[0]
            .to_string()
            .ends_with("field is immutable"));

        let s = WorkloadHandler(Workload::StatefulSet);
        let mut old = deployment(json!({}));
        old["kind"] = json!("StatefulSet");
        let mut old = s.decode(old).unwrap();
        s.default(&mut old);
        assert!(errors(s, &old).is_empty(), "{:?}", errors(s, &old));
        assert_eq!(old["spec"]["podManagementPolicy"], "OrderedReady");
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        assert!(s.validate_update(&new, &old).is_ok());
        new["spec"]["podManagementPolicy"] = json!("Parallel");
        assert!(s.validate_update(&new, &old).is_err());
    }

    #[test]
    fn table_rows_show_the_usual_columns() {
        let h = WorkloadHandler(Workload::Deployment);
        let mut d = deployment(json!({"replicas": 3}));
        d["status"] = json!({"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2});
        d["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert_eq!(
            h.table_row(&d, 1_735_689_600 + 60),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60s"),
                json!("nginx"),
                json!("nginx:1.25"),
                json!("app=web")
            ]
        );
        assert_eq!(h.columns().len(), h.table_row(&d, 0).len());
        for w in Workload::ALL {
            let h = WorkloadHandler(w);
            assert_eq!(h.columns().len(), h.table_row(&d, 0).len(), "{w:?}");
        }
    }
}
