//! The workload kinds: apps/v1 Deployment, ReplicaSet, DaemonSet and StatefulSet, and the core
//! v1 ReplicationController (ReplicaSet's predecessor, with an equality-based selector).
//!
//! All five own pods through a pod template and a label selector, so they share one handler
//! ([`WorkloadHandler`]) parameterised by [`Workload`]: the same template defaulting (the pod
//! handler's own defaults, so a pod a controller stamps out compares equal to its template),
//! the same template validation (the pod spec rules, `restartPolicy: Always`, and a selector
//! that matches the template's labels, because a controller whose pods do not match its own
//! selector would create pods forever), and kind-specific defaults, rules and table columns
//! following `pkg/apis/apps` (defaults, validation) and the printers of Kubernetes.
//!
//! A ReplicationController's `spec.selector` is a plain label map; everywhere a selector is
//! read ([`selector_of`], template validation, the controller) it is taken as the
//! `matchLabels` of a label selector, so one set of rules serves both kinds. As in Kubernetes,
//! an RC without a selector selects its template's labels, and its selector may change (the
//! apps/v1 ones are immutable).
//!
//! The controllers that act on these objects live in [`crate::controllers`].

mod columns;
#[cfg(test)]
mod tests;

use super::error::FieldError;
use super::pods::{validate_spec, PodHandler};
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::selector::LabelSelector;
use super::table::Column;
use super::validation::{errors_to_result, label_value, push_invalid, qualified_name, NameRule};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationController};
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

/// The core v1 ReplicationController resource.
pub const REPLICATION_CONTROLLER_INFO: ResourceInfo = ResourceInfo {
    group: "",
    plural: "replicationcontrollers",
    singular: "replicationcontroller",
    kind: "ReplicationController",
    short_names: &["rc"],
    ..info("", "", "", &[])
};

/// Why `spec.volumeClaimTemplates` of a StatefulSet is refused, and what to use instead.
pub const VOLUME_CLAIM_TEMPLATES_UNSUPPORTED: &str = "PersistentVolumeClaims are not supported on edge nodes (there is no volume provisioner); declare emptyDir, hostPath, configMap or secret volumes in spec.template.spec.volumes instead";

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
    /// core v1 ReplicationController.
    ReplicationController,
}

impl Workload {
    /// Every workload kind, in registration order.
    pub const ALL: [Workload; 5] = [
        Workload::Deployment,
        Workload::ReplicaSet,
        Workload::DaemonSet,
        Workload::StatefulSet,
        Workload::ReplicationController,
    ];

    /// The resource description.
    pub fn info(self) -> &'static ResourceInfo {
        match self {
            Workload::Deployment => &DEPLOYMENT_INFO,
            Workload::ReplicaSet => &REPLICA_SET_INFO,
            Workload::DaemonSet => &DAEMON_SET_INFO,
            Workload::StatefulSet => &STATEFUL_SET_INFO,
            Workload::ReplicationController => &REPLICATION_CONTROLLER_INFO,
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

/// A ReplicationController's equality selector as the label selector it means (its
/// `matchLabels`). An empty map stays "no selector" (`Required`, not "selects everything").
pub fn equality_selector(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> MetaSelector {
    MetaSelector {
        match_labels: labels.filter(|l| !l.is_empty()).cloned(),
        match_expressions: None,
    }
}

/// The `spec.selector` of a stored workload as a label selector: a ReplicationController's
/// label map as its `matchLabels`, the others' as they are; `None` when it does not decode.
pub fn meta_selector_of(obj: &Value) -> Option<MetaSelector> {
    let raw = obj.pointer("/spec/selector")?.clone();
    if obj.get("kind").and_then(Value::as_str) == Some(REPLICATION_CONTROLLER_INFO.kind) {
        let labels = serde_json::from_value(raw).ok()?;
        return Some(equality_selector(Some(&labels)));
    }
    serde_json::from_value(raw).ok()
}

/// The selector of a workload as a parsed selector, if it is valid and not empty.
pub fn selector_of(obj: &Value) -> Option<LabelSelector> {
    LabelSelector::from_meta(&meta_selector_of(obj)?)
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
                // Kubernetes names the ReplicaSet for every apps/v1 kind.
                let owner = match kind {
                    Workload::ReplicationController => "ReplicationController",
                    _ => "ReplicaSet",
                };
                errs.push(FieldError::forbidden(
                    "spec.template.spec.activeDeadlineSeconds",
                    format!("activeDeadlineSeconds in {owner} is not Supported"),
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

    fn validate_replication_controller(
        obj: &Value,
        errs: &mut Vec<FieldError>,
    ) -> Result<(), Vec<FieldError>> {
        let rc: ReplicationController = typed(obj)?;
        let spec = rc.spec.unwrap_or_default();
        non_negative(spec.replicas, "spec.replicas", errs);
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", errs);
        match spec.template {
            // Kubernetes requires the template itself (a pointer), not just its spec.
            None => errs.push(FieldError::required("spec.template", "")),
            Some(template) => validate_selector_and_template(
                Workload::ReplicationController,
                &equality_selector(spec.selector.as_ref()),
                &template,
                errs,
            ),
        }
        Ok(())
    }

    /// Kubernetes' `SetDefaults_ReplicationController`: a missing or empty selector and
    /// missing or empty labels are the template's labels.
    fn default_replication_controller(obj: &mut Value) {
        let Some(labels) = obj
            .pointer("/spec/template/metadata/labels")
            .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
            .cloned()
        else {
            return;
        };
        let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
        if empty(obj.pointer("/spec/selector")) {
            obj["spec"]["selector"] = labels.clone();
        }
        if empty(obj.pointer("/metadata/labels")) {
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("labels".into(), labels);
            }
        }
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
        // The edge has no PersistentVolumeClaims (no provisioner, no PVC objects): a claim
        // template would leave every pod Pending for ever, so it is refused here.
        if spec
            .volume_claim_templates
            .as_ref()
            .is_some_and(|t| !t.is_empty())
        {
            errs.push(FieldError::forbidden(
                "spec.volumeClaimTemplates",
                VOLUME_CLAIM_TEMPLATES_UNSUPPORTED,
            ));
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
            Workload::ReplicationController => decode_as::<ReplicationController>(obj),
        }
    }

    fn default(&self, obj: &mut Value) {
        if self.0 == Workload::ReplicationController {
            Self::default_replication_controller(obj);
        }
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
            Workload::ReplicaSet | Workload::ReplicationController => {}
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
            Workload::ReplicationController => {
                Self::validate_replication_controller(obj, &mut errs)?
            }
        }
        errors_to_result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        // apps/v1 selectors are immutable: changing one would orphan the running pods. A
        // ReplicationController's may change (its controller releases and adopts), as in
        // Kubernetes.
        if self.0 != Workload::ReplicationController
            && new.pointer("/spec/selector") != old.pointer("/spec/selector")
        {
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
        columns::columns(self.0)
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        columns::row(self.0, obj, now)
    }
}
