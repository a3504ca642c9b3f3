//! Defaults and validation of a Job spec, following `pkg/apis/batch` (`SetDefaults_Job`,
//! `ValidateJobSpec`): shared by Jobs and the job template of CronJobs.
//!
//! Every field of `batch/v1 JobSpec` is either implemented by the Job controller
//! ([`crate::controllers::job`]) or refused here with a 422 naming it: `successPolicy`,
//! `managedBy` (other than the built-in controller) and `podReplacementPolicy:
//! TerminatingOrFailed` are refused. The last one because an edge pod is replaced only once
//! its node reported it finished: a pod that is merely being deleted on a silent node may still
//! be running there, and running a second copy of the same index would break Indexed Jobs'
//! one-pod-per-index promise (what `podReplacementPolicy: Failed` says, the only value taken).

use crate::api::error::FieldError;
use crate::api::pods::{validate_spec, PodHandler};
use crate::api::resource::ResourceHandler;
use crate::api::selector::LabelSelector;
use crate::api::validation::{label_value, push_invalid, qualified_name};
use k8s_openapi::api::batch::v1::{JobSpec, PodFailurePolicyRule};
use serde_json::{json, Map, Value};

/// The finalizer the Job controller puts on its pods so that each finished pod is counted
/// exactly once, even if the pod is deleted or cloudcore restarts before it was counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Label and annotation of an Indexed Job's pod: its completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Label of a Job's pods (and generated selector): the Job's uid.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// Legacy label with the Job's uid, still set by Kubernetes.
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
/// Label with the Job's name.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Legacy label with the Job's name.
pub const LEGACY_JOB_NAME: &str = "job-name";
/// The only `managedBy` value served: this controller.
pub const JOB_CONTROLLER: &str = "kubernetes.io/job-controller";
/// Kubernetes' bound on completions and parallelism of Indexed Jobs with per-index limits.
const MAX_INDEXED_WITH_PER_INDEX: i32 = 100_000;
/// Kubernetes' bound on completions of Indexed Jobs.
const MAX_COMPLETIONS_INDEXED: i32 = 100_000;

/// `SetDefaults_Job` on a spec (`spec` of a Job, or `spec.jobTemplate.spec` of a CronJob).
pub fn default_spec(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template") {
        PodHandler.default(t);
    }
    let completions_set = spec.get("completions").is_some_and(|v| !v.is_null());
    let parallelism_set = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !completions_set && !parallelism_set {
        spec.insert("completions".into(), json!(1));
    }
    if !parallelism_set {
        spec.insert("parallelism".into(), json!(1));
    }
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    spec.entry("backoffLimit")
        .or_insert(json!(if per_index { i32::MAX } else { 6 }));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("suspend").or_insert(json!(false));
    spec.entry("manualSelector").or_insert(json!(false));
    spec.entry("podReplacementPolicy")
        .or_insert(json!("Failed"));
    if let Some(rules) = spec
        .get_mut("podFailurePolicy")
        .and_then(|p| p.get_mut("rules"))
        .and_then(Value::as_array_mut)
    {
        for r in rules {
            if let Some(conds) = r.get_mut("onPodConditions").and_then(Value::as_array_mut) {
                for c in conds {
                    if let Some(c) = c.as_object_mut() {
                        c.entry("status").or_insert(json!("True"));
                    }
                }
            }
        }
    }
}

/// The labels a Job's pods get and its generated selector selects: `controller-uid` and
/// `job-name`, in their current and legacy spellings.
pub fn generated_labels(uid: &str, name: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (CONTROLLER_UID, uid.to_string()),
        (LEGACY_CONTROLLER_UID, uid.to_string()),
    ];
    if !name.is_empty() {
        out.push((JOB_NAME, name.to_string()));
        out.push((LEGACY_JOB_NAME, name.to_string()));
    }
    out
}

/// Generates the selector and template labels of a new Job (`manualSelector` unset or false),
/// as kube-apiserver's Job strategy does on create.
pub fn generate_selector(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("manualSelector") == Some(&json!(true)) {
        return;
    }
    let labels = generated_labels(&uid, &name);
    if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
        let meta = t.entry("metadata").or_insert_with(|| json!({}));
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        for (k, v) in &labels {
            meta["labels"][*k] = json!(v);
        }
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {CONTROLLER_UID: uid}}),
    );
}

fn non_negative<T: Into<i64> + Copy>(v: Option<T>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.map(Into::into).filter(|n| *n < 0) {
        errs.push(FieldError::invalid(
            field,
            &json!(n),
            "must be greater than or equal to 0",
        ));
    }
}

/// `ValidateJobSpec` on `spec` at `path` (`spec`, `spec.jobTemplate.spec`). `selector_required`
/// is false for a CronJob's template (its Jobs get generated selectors).
pub fn validate_spec_at(
    spec: &JobSpec,
    raw: &Value,
    path: &str,
    selector_required: bool,
    errs: &mut Vec<FieldError>,
) {
    let f = |name: &str| format!("{path}.{name}");
    non_negative(spec.parallelism, &f("parallelism"), errs);
    non_negative(spec.completions, &f("completions"), errs);
    non_negative(
        spec.active_deadline_seconds,
        &f("activeDeadlineSeconds"),
        errs,
    );
    non_negative(spec.backoff_limit, &f("backoffLimit"), errs);
    non_negative(
        spec.ttl_seconds_after_finished,
        &f("ttlSecondsAfterFinished"),
        errs,
    );
    non_negative(
        spec.backoff_limit_per_index,
        &f("backoffLimitPerIndex"),
        errs,
    );
    non_negative(spec.max_failed_indexes, &f("maxFailedIndexes"), errs);
    let mode = spec.completion_mode.as_deref().unwrap_or("NonIndexed");
    let indexed = mode == "Indexed";
    if !matches!(mode, "NonIndexed" | "Indexed") {
        errs.push(FieldError::not_supported(
            f("completionMode"),
            &json!(mode),
            &["NonIndexed", "Indexed"],
        ));
    }
    if indexed {
        match spec.completions {
            None => errs.push(FieldError::required(
                f("completions"),
                "when completion mode is Indexed",
            )),
            Some(c) if c > MAX_COMPLETIONS_INDEXED => errs.push(FieldError::invalid(
                f("completions"),
                &json!(c),
                format!("must be less than or equal to {MAX_COMPLETIONS_INDEXED} when completion mode is Indexed"),
            )),
            _ => {}
        }
        if let Some(p) = spec.parallelism.filter(|p| *p > MAX_COMPLETIONS_INDEXED) {
            errs.push(FieldError::invalid(
                f("parallelism"),
                &json!(p),
                format!("must be less than or equal to {MAX_COMPLETIONS_INDEXED} when completion mode is Indexed"),
            ));
        }
    }
    if spec.backoff_limit_per_index.is_some() {
        if !indexed {
            errs.push(FieldError::forbidden(
                f("backoffLimitPerIndex"),
                "requires indexed completion mode",
            ));
        } else if spec.completions.unwrap_or(0) > MAX_INDEXED_WITH_PER_INDEX {
            errs.push(FieldError::invalid(
                f("completions"),
                &json!(spec.completions),
                format!("must be less than or equal to {MAX_INDEXED_WITH_PER_INDEX} when backoffLimitPerIndex is specified"),
            ));
        }
    }
    if let Some(m) = spec.max_failed_indexes {
        if spec.backoff_limit_per_index.is_none() {
            errs.push(FieldError::required(
                f("backoffLimitPerIndex"),
                "when maxFailedIndexes is specified",
            ));
        } else if m > spec.completions.unwrap_or(0) {
            errs.push(FieldError::invalid(
                f("maxFailedIndexes"),
                &json!(m),
                "must be less than or equal to completions",
            ));
        }
    }
    if raw.get("successPolicy").is_some_and(|v| !v.is_null()) {
        errs.push(FieldError::forbidden(
            f("successPolicy"),
            "successPolicy is not supported by this server; the Job succeeds when all its completions succeed",
        ));
    }
    if let Some(m) = spec.managed_by.as_deref().filter(|m| *m != JOB_CONTROLLER) {
        errs.push(FieldError::not_supported(
            f("managedBy"),
            &json!(m),
            &[JOB_CONTROLLER],
        ));
    }
    if let Some(p) = spec
        .pod_replacement_policy
        .as_deref()
        .filter(|p| *p != "Failed")
    {
        errs.push(FieldError::not_supported(
            f("podReplacementPolicy"),
            &json!(p),
            &["Failed"],
        ));
    }
    let restart = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    if let Some(pfp) = &spec.pod_failure_policy {
        validate_pod_failure_policy(
            &pfp.rules,
            restart,
            spec.backoff_limit_per_index.is_some(),
            &f("podFailurePolicy"),
            errs,
        );
    }
    validate_template(spec, path, selector_required, restart, errs);
}

fn validate_template(
    spec: &JobSpec,
    path: &str,
    selector_required: bool,
    restart: &str,
    errs: &mut Vec<FieldError>,
) {
    let template = &spec.template;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &labels {
        push_invalid(
            errs,
            &format!("{path}.template.metadata.labels"),
            k,
            qualified_name(k),
        );
        push_invalid(
            errs,
            &format!("{path}.template.metadata.labels[{k}]"),
            v,
            label_value(v),
        );
    }
    match &spec.selector {
        None if selector_required => {
            errs.push(FieldError::required(format!("{path}.selector"), ""))
        }
        None => {}
        Some(sel) => match LabelSelector::from_meta(sel) {
            Err(e) => errs.push(FieldError::invalid(
                format!("{path}.selector"),
                &json!(sel),
                e.problem,
            )),
            Ok(parsed) if parsed.is_empty() && selector_required => {
                errs.push(FieldError::required(format!("{path}.selector"), ""))
            }
            Ok(parsed) => {
                if !parsed.is_empty() && !parsed.matches_labels(&labels) {
                    errs.push(FieldError::invalid(
                        format!("{path}.template.metadata.labels"),
                        &json!(labels),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    match &template.spec {
        None => errs.push(FieldError::required(format!("{path}.template.spec"), "")),
        Some(pod) => {
            errs.extend(validate_spec(pod, &format!("{path}.template.spec")));
            if !matches!(restart, "OnFailure" | "Never") {
                errs.push(FieldError::not_supported(
                    format!("{path}.template.spec.restartPolicy"),
                    &json!(restart),
                    &["OnFailure", "Never"],
                ));
            }
        }
    }
}

fn validate_pod_failure_policy(
    rules: &[PodFailurePolicyRule],
    restart: &str,
    per_index: bool,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if restart != "Never" {
        errs.push(FieldError::invalid(
            path.to_string(),
            &Value::Null,
            "only allowed when spec.template.spec.restartPolicy is Never",
        ));
    }
    if rules.len() > 20 {
        errs.push(FieldError::too_many(
            format!("{path}.rules"),
            rules.len(),
            20,
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let mut actions = vec!["Count", "FailJob", "Ignore"];
        if per_index {
            actions.insert(1, "FailIndex");
        }
        if !actions.contains(&r.action.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{rp}.action"),
                &json!(r.action),
                &actions,
            ));
        }
        match (&r.on_exit_codes, &r.on_pod_conditions) {
            (Some(_), Some(c)) if !c.is_empty() => errs.push(FieldError::invalid(
                rp.clone(),
                &Value::Null,
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (None, None) => errs.push(FieldError::invalid(
                rp.clone(),
                &Value::Null,
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            (None, Some(c)) if c.is_empty() => errs.push(FieldError::invalid(
                rp.clone(),
                &Value::Null,
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if let Some(codes) = &r.on_exit_codes {
            let cp = format!("{rp}.onExitCodes");
            if !matches!(codes.operator.as_str(), "In" | "NotIn") {
                errs.push(FieldError::not_supported(
                    format!("{cp}.operator"),
                    &json!(codes.operator),
                    &["In", "NotIn"],
                ));
            }
            if codes.values.is_empty() {
                errs.push(FieldError::required(
                    format!("{cp}.values"),
                    "at least one value is required",
                ));
            }
            if codes.values.len() > 255 {
                errs.push(FieldError::too_many(
                    format!("{cp}.values"),
                    codes.values.len(),
                    255,
                ));
            }
            for (j, v) in codes.values.iter().enumerate() {
                if *v == 0 && codes.operator == "In" {
                    errs.push(FieldError::invalid(
                        format!("{cp}.values[{j}]"),
                        &json!(v),
                        "must not be 0 for the In operator",
                    ));
                }
                if j > 0 && codes.values[j - 1] >= *v {
                    errs.push(FieldError::invalid(
                        format!("{cp}.values[{j}]"),
                        &json!(v),
                        "must be ordered",
                    ));
                }
            }
            if let Some(c) = codes.container_name.as_deref() {
                push_invalid(
                    errs,
                    &format!("{cp}.containerName"),
                    c,
                    crate::api::validation::dns1123_label(c),
                );
            }
        }
        for (j, c) in r.on_pod_conditions.iter().flatten().enumerate() {
            let cp = format!("{rp}.onPodConditions[{j}]");
            if c.type_.is_empty() {
                errs.push(FieldError::required(format!("{cp}.type"), ""));
            } else {
                push_invalid(
                    errs,
                    &format!("{cp}.type"),
                    &c.type_,
                    qualified_name(&c.type_),
                );
            }
            if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
                errs.push(FieldError::not_supported(
                    format!("{cp}.status"),
                    &json!(c.status),
                    &["False", "True", "Unknown"],
                ));
            }
        }
    }
}

/// The spec fields of a Job that an update may change, as Kubernetes allows (the others are
/// immutable: the pods already made from them would disagree with the spec).
const MUTABLE: [&str; 6] = [
    "parallelism",
    "activeDeadlineSeconds",
    "backoffLimit",
    "maxFailedIndexes",
    "suspend",
    "ttlSecondsAfterFinished",
];

/// `ValidateJobSpecUpdate`: the immutable fields of `spec`, each named.
pub fn validate_update(new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let empty = Map::new();
    let n = new.get("spec").and_then(Value::as_object).unwrap_or(&empty);
    let o = old.get("spec").and_then(Value::as_object).unwrap_or(&empty);
    let mut keys: Vec<&String> = n.keys().chain(o.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if MUTABLE.contains(&k.as_str()) {
            continue;
        }
        let (nv, ov) = (n.get(k), o.get(k));
        if nv != ov {
            errs.push(FieldError::invalid(
                format!("spec.{k}"),
                nv.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
}
