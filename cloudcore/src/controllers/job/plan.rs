//! The Job controller's pure decisions: how each pod counts, when the Job has failed or
//! succeeded, which pods to create or delete, and the status that results. No I/O, so every
//! rule is unit-tested with plain values ([`super::tests`]).

use crate::api::batch::job::{COMPLETION_INDEX, TRACKING_FINALIZER};
use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Annotation of a pod of an Indexed Job with `backoffLimitPerIndex`: how many pods of its
/// index failed before it (Kubernetes' name).
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// First delay before a failed pod is replaced (Kubernetes' `DefaultJobPodFailureBackOff`).
pub const BACKOFF_BASE_SECONDS: i64 = 10;
/// Longest such delay (Kubernetes' `MaxJobPodFailureBackOff`).
pub const BACKOFF_MAX_SECONDS: i64 = 600;

/// How a pod of the Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Not finished and not being deleted: counts toward parallelism.
    Active,
    /// Being deleted, and its node has not confirmed that it stopped yet. Not counted either
    /// way: on a silent node it may still be running, and it will report.
    Terminating,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully, or deleted and confirmed stopped without succeeding.
    Failed,
}

/// The state of `pod`. A pod whose deletion its node confirmed (`deletionGracePeriodSeconds:
/// 0`, kept in the store only by the tracking finalizer) counts as failed unless it succeeded.
pub fn pod_state(pod: &Pod) -> PodState {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    match phase {
        "Succeeded" => return PodState::Succeeded,
        "Failed" => return PodState::Failed,
        _ => {}
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if pod.metadata.deletion_grace_period_seconds == Some(0) {
            PodState::Failed
        } else {
            PodState::Terminating
        }
    } else {
        PodState::Active
    }
}

/// Whether the pod still carries the tracking finalizer (it has not been counted yet).
pub fn is_tracked(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

/// The completion index of a pod of an Indexed Job (annotation, else label).
pub fn index_of(pod: &Pod) -> Option<i32> {
    let m = &pod.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| m.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))
        .and_then(|v| v.parse().ok())
        .filter(|i| *i >= 0)
}

/// How many pods of its index failed before this one.
pub fn failures_before(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_FAILURE_COUNT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Parses a Kubernetes interval list (`1,3-5,7`).
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(v) = part.parse() {
                    out.insert(v);
                }
            }
        }
    }
    out
}

/// Formats indexes as Kubernetes does (`1,3-5,7`).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// What a pod failure policy rule says about a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureAction {
    /// No rule matched, or `Count`: counts toward `backoffLimit`.
    Count,
    /// `Ignore`: not counted; the pod is replaced.
    Ignore,
    /// `FailJob`, with the message the Job's condition carries.
    FailJob(String),
    /// `FailIndex`: the pod's index fails at once.
    FailIndex,
}

/// Kubernetes' `matchPodFailurePolicy`: the first rule that matches the failed `pod`.
pub fn match_failure_policy(rules: &[PodFailurePolicyRule], pod: &Pod) -> FailureAction {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let status = pod.status.as_ref();
    for (i, rule) in rules.iter().enumerate() {
        let matched = if let Some(codes) = &rule.on_exit_codes {
            status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| codes.container_name.as_ref().is_none_or(|n| *n == c.name))
                .find_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let listed = codes.values.contains(&code);
                    let hit = code != 0
                        && match codes.operator.as_str() {
                            "In" => listed,
                            "NotIn" => !listed,
                            _ => false,
                        };
                    hit.then(|| format!(
                        "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        c.name, rule.action
                    ))
                })
        } else {
            rule.on_pod_conditions
                .iter()
                .flatten()
                .find(|pc| {
                    status
                        .and_then(|s| s.conditions.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == pc.type_ && c.status == pc.status)
                })
                .map(|pc| {
                    format!(
                        "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                        pc.type_, rule.action
                    )
                })
        };
        if let Some(message) = matched {
            return match rule.action.as_str() {
                "Ignore" => FailureAction::Ignore,
                "FailJob" => FailureAction::FailJob(message),
                "FailIndex" => FailureAction::FailIndex,
                _ => FailureAction::Count,
            };
        }
    }
    FailureAction::Count
}

/// The delay before the `failures`-th failed pod is replaced: 10 s, doubling, at most 10 min.
pub fn backoff_seconds(failures: i64) -> i64 {
    if failures <= 0 {
        return 0;
    }
    let shift = (failures - 1).min(16) as u32;
    (BACKOFF_BASE_SECONDS << shift).min(BACKOFF_MAX_SECONDS)
}

/// When a failed pod finished (its last container's `finishedAt`), seconds since the epoch.
pub fn finished_at(pod: &Pod) -> Option<i64> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0.as_second())
        })
        .max()
}

/// The Job's spec values the decisions need, with Kubernetes' defaults.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `completions` (`None`: a work queue).
    pub completions: Option<i32>,
    /// `parallelism`.
    pub parallelism: i32,
    /// `completionMode: Indexed`.
    pub indexed: bool,
    /// `backoffLimit`.
    pub backoff_limit: i32,
    /// `backoffLimitPerIndex`.
    pub backoff_limit_per_index: Option<i32>,
    /// `maxFailedIndexes`.
    pub max_failed_indexes: Option<i32>,
    /// `activeDeadlineSeconds`.
    pub active_deadline_seconds: Option<i64>,
    /// `suspend`.
    pub suspend: bool,
    /// `podFailurePolicy.rules`.
    pub rules: Vec<PodFailurePolicyRule>,
    /// The template's `restartPolicy: OnFailure` (containers restart in place, so failures
    /// are counted as restarts).
    pub on_failure: bool,
}

impl Spec {
    /// The decision inputs of `job`.
    pub fn of(job: &Job) -> Spec {
        let s = job.spec.clone().unwrap_or_default();
        Spec {
            completions: s.completions,
            parallelism: s.parallelism.unwrap_or(1),
            indexed: s.completion_mode.as_deref() == Some("Indexed"),
            backoff_limit: s.backoff_limit.unwrap_or(6),
            backoff_limit_per_index: s.backoff_limit_per_index,
            max_failed_indexes: s.max_failed_indexes,
            active_deadline_seconds: s.active_deadline_seconds,
            suspend: s.suspend.unwrap_or(false),
            rules: s.pod_failure_policy.map(|p| p.rules).unwrap_or_default(),
            on_failure: s.template.spec.and_then(|p| p.restart_policy).as_deref()
                == Some("OnFailure"),
        }
    }
}

/// Why a Job failed: (reason, message) of its `FailureTarget` and `Failed` conditions.
pub type Failure = (&'static str, String);

/// Whether the Job has failed given its counts, at `now`: the pod failure policy's verdict
/// (`fail_job`), then `backoffLimit`, `maxFailedIndexes`, the failed indexes of a finished
/// Indexed Job, and `activeDeadlineSeconds` counted from `start` by the cloud's clock.
#[allow(clippy::too_many_arguments)]
pub fn failure(
    spec: &Spec,
    fail_job: Option<String>,
    failed: i64,
    failed_indexes: &BTreeSet<i32>,
    completed_indexes: &BTreeSet<i32>,
    start: Option<i64>,
    now: i64,
) -> Option<Failure> {
    if let Some(m) = fail_job {
        return Some(("PodFailurePolicy", m));
    }
    if spec.backoff_limit_per_index.is_none() && failed > i64::from(spec.backoff_limit) {
        return Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    }
    if let Some(max) = spec.max_failed_indexes {
        if failed_indexes.len() as i64 > i64::from(max) {
            return Some((
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".into(),
            ));
        }
    }
    if spec.backoff_limit_per_index.is_some() && !failed_indexes.is_empty() {
        let total = spec.completions.unwrap_or(0) as usize;
        if failed_indexes.len() + completed_indexes.len() >= total {
            return Some(("FailedIndexes", "Job has failed indexes".into()));
        }
    }
    if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, start) {
        if now >= start + deadline {
            return Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
        }
    }
    None
}

/// Kubernetes' `pastBackoffLimitOnFailure`: with `restartPolicy: OnFailure` a failing
/// container restarts in place and its pod never fails, so the restarts of the active pods'
/// containers count against `backoffLimit` (any restart when it is 0).
pub fn past_backoff_limit_on_failure(spec: &Spec, active: &[&Pod]) -> bool {
    if !spec.on_failure {
        return false;
    }
    let restarts: i64 = active
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    if spec.backoff_limit == 0 {
        restarts > 0
    } else {
        restarts >= i64::from(spec.backoff_limit)
    }
}

/// Whether the Job's success criteria are met: every completion succeeded (every index, for
/// an Indexed Job), or for a work queue, one pod succeeded and none is still running.
pub fn succeeded(spec: &Spec, succeeded: i64, completed: &BTreeSet<i32>, active: usize) -> bool {
    match spec.completions {
        Some(c) if spec.indexed => completed.len() >= c as usize,
        Some(c) => succeeded >= i64::from(c),
        None => succeeded > 0 && active == 0,
    }
}

/// What to do about the number of active pods: the pods to add (their index for an Indexed
/// Job, `None` otherwise), and how many surplus pods to delete (NonIndexed; an Indexed Job's
/// surplus is [`indexed_surplus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scale {
    /// Pods to create.
    pub create: Vec<Option<i32>>,
    /// Number of active pods to delete.
    pub delete_count: usize,
}

/// The pods to create or delete to reach `parallelism` without exceeding what is left to do.
/// `active_indexes` are the distinct pending indexes that have an active pod (Indexed Jobs).
pub fn scale(
    spec: &Spec,
    active: usize,
    succeeded: i64,
    completed: &BTreeSet<i32>,
    failed_indexes: &BTreeSet<i32>,
    active_indexes: &BTreeSet<i32>,
) -> Scale {
    let parallelism = spec.parallelism.max(0) as usize;
    let mut out = Scale::default();
    if spec.indexed {
        let total = spec.completions.unwrap_or(0).max(0);
        let room = parallelism.saturating_sub(active_indexes.len());
        out.create = (0..total)
            .filter(|i| {
                !completed.contains(i) && !failed_indexes.contains(i) && !active_indexes.contains(i)
            })
            .take(room)
            .map(Some)
            .collect();
        return out;
    }
    let want = match spec.completions {
        Some(c) => {
            let left = (i64::from(c) - succeeded).max(0) as usize;
            parallelism.min(left)
        }
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    if active < want {
        out.create = vec![None; want - active];
    } else {
        out.delete_count = active - want;
    }
    out
}

/// The active pods of an Indexed Job that must go: those of an index already completed or
/// failed, out of range or without an index, and every pod of an index but its oldest. Also
/// returns the pending indexes that keep a pod.
pub fn indexed_surplus<'a>(
    active: &[&'a Pod],
    completions: i32,
    completed: &BTreeSet<i32>,
    failed_indexes: &BTreeSet<i32>,
) -> (Vec<&'a Pod>, BTreeSet<i32>) {
    let mut sorted: Vec<&Pod> = active.to_vec();
    sorted.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    let mut kept = BTreeSet::new();
    let mut surplus = Vec::new();
    for p in sorted {
        match index_of(p) {
            Some(i)
                if i < completions
                    && !completed.contains(&i)
                    && !failed_indexes.contains(&i)
                    && kept.insert(i) => {}
            _ => surplus.push(p),
        }
    }
    (surplus, kept)
}

/// Sets condition `type_` of `conditions` to `status`, keeping its transition time when the
/// status does not change (and then its reason and message too, as Kubernetes'
/// `ensureJobConditionStatus`). Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    if let Some(c) = conditions.iter_mut().find(|c| c["type"] == type_) {
        if c["status"] == status {
            return false;
        }
        *c = json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now});
        return true;
    }
    conditions.push(json!({"type": type_, "status": status, "reason": reason,
        "message": message, "lastProbeTime": now, "lastTransitionTime": now}));
    true
}

/// Whether `conditions` has `type_` with status `True`.
pub fn condition_true(conditions: &[Value], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// The (reason, message) of condition `type_`.
pub fn condition_reason(conditions: &[Value], type_: &str) -> Option<(String, String)> {
    conditions.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    })
}
