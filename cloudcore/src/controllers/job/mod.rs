//! The Job controller: runs a Job's pods to completion, as Kubernetes' `JobController` does.
//!
//! Each reconcile reads the Job from the store and its pods from the shared pod cache, then:
//!
//! 1. **Counts finished pods exactly once** (Kubernetes' finalizer tracking). Every pod is
//!    created with the `batch.kubernetes.io/job-tracking` finalizer, so it cannot leave the
//!    store before it is counted. A finished pod that still has it is first recorded in
//!    `status.uncountedTerminatedPods` (a status write), then loses the finalizer, then moves
//!    from there into `succeeded`/`failed` (a second write). A cloudcore restart between any two
//!    steps resumes at the next: a pod in the uncounted list is never counted twice, and a
//!    pod without the finalizer and not in the list has been counted. Indexed Jobs record the
//!    pod's index in `completedIndexes` (or `failedIndexes`) in the first write.
//! 2. **Edge nodes.** A pod on a node that went silent keeps its last phase (the node
//!    lifecycle controller only marks it not Ready and never deletes it for being unreachable),
//!    so it stays active here, not failed; when the edge's durable outbox delivers its final
//!    status the pod is counted as above, once. A pod being deleted counts as neither until its
//!    node confirms that it stopped (`deletionGracePeriodSeconds: 0`, or a final phase).
//! 3. **Decides** ([`plan`]): failure by the pod failure policy (`FailJob`, `FailIndex`,
//!    `Ignore`, `Count`), `backoffLimit`, `backoffLimitPerIndex`/`maxFailedIndexes` and
//!    `activeDeadlineSeconds` (measured from `status.startTime` by the cloud's clock); success
//!    when the completions (or every index) succeeded. Either first sets the interim condition
//!    (`FailureTarget`, `SuccessCriteriaMet`) and deletes the remaining active pods, and sets
//!    `Failed`/`Complete` once no pod is left running or uncounted, as Kubernetes 1.31+ does.
//! 4. **Suspends** (deleting the active pods, condition `Suspended`) or **creates** pods up to
//!    `parallelism`, waiting out the exponential backoff after failures (10 s doubling, at most
//!    10 min, from the last failure's `finishedAt`). Indexed pods are named `<job>-<index>-`,
//!    carry the index as annotation and label, as `JOB_COMPLETION_INDEX` in every container and
//!    as hostname `<job>-<index>`.
//! 5. Writes the status and, for a finished Job with `ttlSecondsAfterFinished`, deletes it once
//!    the time is up (the garbage collector deletes its pods through their owner references).
//!
//! Pods whose Job is gone (or replaced by a same-named one) lose the tracking finalizer here,
//! so deleting a Job never leaves pods stuck in the store.

pub mod plan;
#[cfg(test)]
mod tests;

use super::claim;
use super::decode::{owner_selector, typed};
use super::informer::Informers;
use super::owned::{self, controller_of, meta_of, PodName};
use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::batch::job::{COMPLETION_INDEX, TRACKING_FINALIZER};
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::ApiError;
use crate::clock::Clock;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use plan::{FailureAction, PodState, Spec};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Storage resource of Jobs.
pub const RESOURCE: &str = "batch/jobs";
/// The component name on Events.
pub const COMPONENT: &str = "job-controller";
/// Resync period of the Job controller.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The Job [`Reconciler`].
pub struct JobController {
    client: Client,
    informers: Informers,
    clock: Arc<dyn Clock>,
}

/// The uids recorded in `status.uncountedTerminatedPods`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Uncounted {
    succeeded: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Uncounted {
    fn of(status: &Value) -> Self {
        let list = |f: &str| -> BTreeSet<String> {
            status
                .pointer(&format!("/uncountedTerminatedPods/{f}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        Self {
            succeeded: list("succeeded"),
            failed: list("failed"),
        }
    }

    fn contains(&self, uid: &str) -> bool {
        self.succeeded.contains(uid) || self.failed.contains(uid)
    }

    fn to_json(&self) -> Value {
        let mut v = json!({});
        if !self.succeeded.is_empty() {
            v["succeeded"] = json!(self.succeeded);
        }
        if !self.failed.is_empty() {
            v["failed"] = json!(self.failed);
        }
        v
    }
}

fn uid_of(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

fn count(status: &Value, field: &str) -> i64 {
    status.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn seconds(status: &Value, field: &str) -> Option<i64> {
    status
        .get(field)
        .and_then(Value::as_str)
        .and_then(protocol::timestamp::parse)
}

/// A pod of `job` made from its template (`raw` is the stored Job), carrying the tracking
/// finalizer and, for an Indexed Job, its index and the failures of that index so far.
pub fn new_pod(raw: &Value, job: &Job, index: Option<i32>, index_failures: Option<i32>) -> Value {
    let name = job.metadata.name.as_deref().unwrap_or("");
    let template = raw
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let prefix = match index {
        Some(i) => format!("{name}-{i}-"),
        None => format!("{name}-"),
    };
    let mut pod = owned::pod_from_template(&template, job, PodName::Generate(&prefix));
    pod["metadata"]["finalizers"] = json!([TRACKING_FINALIZER]);
    if let Some(i) = index {
        for field in ["labels", "annotations"] {
            if !pod["metadata"][field].is_object() {
                pod["metadata"][field] = json!({});
            }
            pod["metadata"][field][COMPLETION_INDEX] = json!(i.to_string());
        }
        if let Some(f) = index_failures {
            pod["metadata"]["annotations"][plan::INDEX_FAILURE_COUNT] = json!(f.to_string());
        }
        let spec = &mut pod["spec"];
        if spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            let mut host = format!("{name}-{i}");
            host.truncate(63);
            spec["hostname"] = json!(host.trim_end_matches('-'));
        }
        for list in ["initContainers", "containers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if !c["env"].is_array() {
                    c["env"] = json!([]);
                }
                if let Some(env) = c["env"].as_array_mut() {
                    env.retain(|e| e["name"] != "JOB_COMPLETION_INDEX");
                    env.push(json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}));
                }
            }
        }
    }
    pod
}

impl JobController {
    /// A controller writing through `client`, reading pods from `informers` and the time from
    /// `clock`.
    pub fn new(client: Client, informers: &Informers, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            informers: informers.clone(),
            clock,
        }
    }

    async fn event(&self, raw: &Value, kind: EventType, reason: &str, message: &str) {
        events::record_best_effort(&self.client, raw, kind, reason, message, COMPONENT).await;
    }

    /// Removes the tracking finalizer from `pod` (it has been recorded, or its Job is gone).
    async fn release(&self, pod: &Pod) -> Result<(), ApiError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let uid = uid_of(pod).to_string();
        let r = self
            .client
            .update_with("pods", ns, name_of(pod), |cur| {
                if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return None;
                }
                let fins = cur.pointer("/metadata/finalizers")?.as_array()?;
                if !fins.iter().any(|f| f == TRACKING_FINALIZER) {
                    return None;
                }
                let mut next = cur.clone();
                let kept: Vec<Value> = fins
                    .iter()
                    .filter(|f| *f != TRACKING_FINALIZER)
                    .cloned()
                    .collect();
                next["metadata"]["finalizers"] = json!(kept);
                Some(next)
            })
            .await;
        match r {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Releases the pods named after Job `key` that no live Job `uid` controls.
    async fn release_orphans(
        &self,
        key: &ObjectKey,
        uid: Option<&str>,
    ) -> Result<(), ControllerError> {
        for raw in self.informers.pods.in_namespace(&key.namespace) {
            let meta = meta_of(&raw);
            let Some(r) = controller_of(&meta) else {
                continue;
            };
            if r.kind != "Job" || r.name != key.name || Some(r.uid.as_str()) == uid {
                continue;
            }
            let pod: Pod = typed(&raw)?;
            if plan::is_tracked(&pod) {
                self.release(&pod).await?;
            }
        }
        Ok(())
    }

    async fn delete_pods(&self, raw: &Value, pods: &[&Pod]) -> Result<(), ApiError> {
        let results = futures::future::join_all(pods.iter().map(|p| {
            self.client.delete(
                "pods",
                p.metadata.namespace.as_deref().unwrap_or(""),
                name_of(p),
                Propagation::Background,
                p.metadata.uid.as_deref(),
            )
        }))
        .await;
        let mut failure = None;
        for (p, r) in pods.iter().zip(results) {
            match r {
                Ok(()) | Err(ApiError::NotFound { .. }) => {
                    let msg = format!("Deleted pod: {}", name_of(p));
                    self.event(raw, EventType::Normal, "SuccessfulDelete", &msg)
                        .await;
                }
                Err(e) => {
                    let msg = format!("Error deleting: {e}");
                    self.event(raw, EventType::Warning, "FailedDelete", &msg)
                        .await;
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn create_pods(&self, raw: &Value, pods: Vec<Value>) -> Result<(), ApiError> {
        let ns = raw["metadata"]["namespace"].as_str().unwrap_or("");
        let mut failure = None;
        for batch in super::replicaset::slow_start_batches(pods.len())
            .into_iter()
            .scan(pods.into_iter(), |it, n| {
                Some(it.by_ref().take(n).collect::<Vec<_>>())
            })
        {
            let results = futures::future::join_all(
                batch.into_iter().map(|p| self.client.create("pods", ns, p)),
            )
            .await;
            for r in results {
                match r {
                    Ok(p) => {
                        let msg = format!("Created pod: {}", meta_of(&p).name.unwrap_or_default());
                        self.event(raw, EventType::Normal, "SuccessfulCreate", &msg)
                            .await;
                    }
                    Err(e) => {
                        let msg = format!("Error creating: {e}");
                        self.event(raw, EventType::Warning, "FailedCreate", &msg)
                            .await;
                        failure.get_or_insert(e);
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Step 1 of the module docs: records newly finished pods, releases them, and moves them
    /// into the counts. Returns the status with the counts, indexes and conditions updated,
    /// and the pod failure policy's `FailJob` message if a pod triggered it.
    async fn track(
        &self,
        raw: &Value,
        spec: &Spec,
        pods: &[Pod],
        now: &str,
    ) -> Result<(Value, Option<String>), ControllerError> {
        let mut status = raw.get("status").cloned().unwrap_or_else(|| json!({}));
        if !status.is_object() {
            status = json!({});
        }
        let mut uncounted = Uncounted::of(&status);
        let mut completed = plan::parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
        let mut failed_idx = plan::parse_indexes(status["failedIndexes"].as_str().unwrap_or(""));
        let mut fail_job = None;
        let mut ignored: Vec<&Pod> = Vec::new();
        let completions = spec.completions.unwrap_or(0);
        for pod in pods.iter().filter(|p| plan::is_tracked(p)) {
            let uid = uid_of(pod).to_string();
            if uncounted.contains(&uid) {
                continue;
            }
            match plan::pod_state(pod) {
                PodState::Succeeded => {
                    if let Some(i) =
                        plan::index_of(pod).filter(|i| spec.indexed && *i < completions)
                    {
                        completed.insert(i);
                    }
                    uncounted.succeeded.insert(uid);
                }
                PodState::Failed => {
                    let index = plan::index_of(pod).filter(|_| spec.indexed);
                    match plan::match_failure_policy(&spec.rules, pod) {
                        FailureAction::Ignore => {
                            ignored.push(pod);
                            continue;
                        }
                        FailureAction::FailJob(m) => {
                            fail_job.get_or_insert(m);
                        }
                        FailureAction::FailIndex => failed_idx.extend(index),
                        FailureAction::Count => {
                            if let (Some(limit), Some(i)) = (spec.backoff_limit_per_index, index) {
                                if plan::failures_before(pod) + 1 > limit {
                                    failed_idx.insert(i);
                                }
                            }
                        }
                    }
                    uncounted.failed.insert(uid);
                }
                PodState::Active | PodState::Terminating => {}
            }
        }
        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        if let Some(m) = &fail_job {
            if !plan::condition_true(&conditions, "FailureTarget") {
                plan::set_condition(
                    &mut conditions,
                    "FailureTarget",
                    "True",
                    "PodFailurePolicy",
                    m,
                    now,
                );
            }
        }
        let indexes = |set: &BTreeSet<i32>| json!(plan::format_indexes(set));
        let mut recorded = status.clone();
        recorded["uncountedTerminatedPods"] = uncounted.to_json();
        if spec.indexed {
            recorded["completedIndexes"] = indexes(&completed);
            if spec.backoff_limit_per_index.is_some() {
                recorded["failedIndexes"] = indexes(&failed_idx);
            }
        }
        if !conditions.is_empty() {
            recorded["conditions"] = json!(conditions);
        }
        if recorded != status {
            // Written before any finalizer goes: the record is what makes the count exact.
            self.client
                .write_status_if_changed(RESOURCE, raw, recorded.clone())
                .await?;
        }
        for pod in pods.iter().filter(|p| plan::is_tracked(p)) {
            if uncounted.contains(uid_of(pod)) {
                self.release(pod).await?;
            }
        }
        for pod in ignored {
            self.release(pod).await?;
        }
        // Every recorded pod is now released (or gone): move them into the counts.
        let mut counted = recorded;
        counted["succeeded"] =
            json!(count(&status, "succeeded") + uncounted.succeeded.len() as i64);
        counted["failed"] = json!(count(&status, "failed") + uncounted.failed.len() as i64);
        counted["uncountedTerminatedPods"] = json!({});
        Ok((counted, fail_job))
    }

    async fn sync(
        &self,
        raw: &Value,
        job: &Job,
        pods: Vec<Pod>,
    ) -> Result<Requeue, ControllerError> {
        let now_ms = self.clock.now_ms();
        let now = (now_ms / 1000) as i64;
        let now_str = crate::clock::rfc3339(now_ms);
        let spec = Spec::of(job);
        let (mut status, _) = self.track(raw, &spec, &pods, &now_str).await?;
        // The stored object now carries the recorded status; later writes compare to it.
        let mut stored = raw.clone();
        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        let succeeded_n = count(&status, "succeeded");
        let failed_n = count(&status, "failed");
        let completed = plan::parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
        let failed_idx = plan::parse_indexes(status["failedIndexes"].as_str().unwrap_or(""));
        let active: Vec<&Pod> = pods
            .iter()
            .filter(|p| plan::pod_state(p) == PodState::Active)
            .collect();
        let terminating = pods
            .iter()
            .filter(|p| plan::pod_state(p) == PodState::Terminating)
            .count();
        let mut requeue: Option<i64> = None;
        let mut soonest = |s: i64| requeue = Some(requeue.map_or(s, |r| r.min(s)));
        let finished = plan::condition_true(&conditions, "Complete")
            || plan::condition_true(&conditions, "Failed");
        let mut to_delete: Vec<&Pod> = Vec::new();
        let mut to_create: Vec<Value> = Vec::new();
        let mut events: Vec<(EventType, &'static str, String)> = Vec::new();

        if !finished && !spec.suspend && status.get("startTime").is_none_or(Value::is_null) {
            status["startTime"] = json!(now_str);
        }
        let start = seconds(&status, "startTime");
        let failing = if plan::condition_true(&conditions, "FailureTarget") {
            plan::condition_reason(&conditions, "FailureTarget")
        } else {
            plan::failure(
                &spec,
                None,
                failed_n,
                &failed_idx,
                &completed,
                start.filter(|_| !spec.suspend),
                now,
            )
            .or_else(|| {
                plan::past_backoff_limit_on_failure(&spec, &active).then(|| {
                    (
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit".to_string(),
                    )
                })
            })
            .map(|(r, m)| (r.to_string(), m))
        };
        let success = failing.is_none()
            && (plan::condition_true(&conditions, "SuccessCriteriaMet")
                || plan::succeeded(&spec, succeeded_n, &completed, active.len()));
        if finished {
            to_delete.extend(active.iter().copied());
        } else if let Some((reason, message)) = failing {
            if plan::set_condition(
                &mut conditions,
                "FailureTarget",
                "True",
                &reason,
                &message,
                &now_str,
            ) {
                events.push((EventType::Warning, "FailureTarget", message.clone()));
            }
            to_delete.extend(active.iter().copied());
            if active.is_empty() && terminating == 0 {
                plan::set_condition(
                    &mut conditions,
                    "Failed",
                    "True",
                    &reason,
                    &message,
                    &now_str,
                );
                events.push((EventType::Warning, leak(&reason), message));
            }
        } else if success {
            let (reason, message) = (
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            plan::set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                "True",
                reason,
                message,
                &now_str,
            );
            to_delete.extend(active.iter().copied());
            if active.is_empty() && terminating == 0 {
                plan::set_condition(
                    &mut conditions,
                    "Complete",
                    "True",
                    reason,
                    message,
                    &now_str,
                );
                status["completionTime"] = json!(now_str);
                events.push((EventType::Normal, "Completed", "Job completed".into()));
            }
        } else if spec.suspend {
            if plan::set_condition(
                &mut conditions,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                &now_str,
            ) {
                events.push((EventType::Normal, "Suspended", "Job suspended".into()));
            }
            to_delete.extend(active.iter().copied());
        } else {
            if plan::condition_true(&conditions, "Suspended") {
                plan::set_condition(
                    &mut conditions,
                    "Suspended",
                    "False",
                    "JobResumed",
                    "Job resumed",
                    &now_str,
                );
                // The deadline counts from the resume, as in Kubernetes.
                status["startTime"] = json!(now_str);
                events.push((EventType::Normal, "Resumed", "Job resumed".into()));
            }
            if let (Some(d), Some(s)) =
                (spec.active_deadline_seconds, seconds(&status, "startTime"))
            {
                soonest(s + d - now);
            }
            let (surplus, kept) = if spec.indexed {
                plan::indexed_surplus(
                    &active,
                    spec.completions.unwrap_or(0),
                    &completed,
                    &failed_idx,
                )
            } else {
                (Vec::new(), BTreeSet::new())
            };
            to_delete.extend(surplus.iter().copied());
            let remaining = active.len() - surplus.len();
            let last_failure = pods
                .iter()
                .filter(|p| plan::pod_state(p) == PodState::Failed)
                .filter_map(plan::finished_at)
                .max();
            let wait = last_failure
                .map(|t| t + plan::backoff_seconds(failed_n) - now)
                .filter(|w| *w > 0);
            let scale = plan::scale(
                &spec,
                remaining,
                succeeded_n,
                &completed,
                &failed_idx,
                &kept,
            );
            if let Some(w) = wait.filter(|_| !scale.create.is_empty()) {
                soonest(w);
            } else {
                for index in scale.create {
                    let failures = index
                        .filter(|_| spec.backoff_limit_per_index.is_some())
                        .map(|i| {
                            pods.iter()
                                .filter(|p| plan::index_of(p) == Some(i))
                                .map(|p| {
                                    plan::failures_before(p)
                                        + i32::from(plan::pod_state(p) == PodState::Failed)
                                })
                                .max()
                                .unwrap_or(0)
                        });
                    to_create.push(new_pod(raw, job, index, failures));
                }
            }
            if scale.delete_count > 0 {
                to_delete.extend(
                    super::replicaset::pods_to_delete(
                        &active.iter().map(|p| (*p).clone()).collect::<Vec<_>>(),
                        scale.delete_count,
                    )
                    .into_iter()
                    .filter_map(|v| active.iter().copied().find(|p| uid_of(p) == uid_of(v))),
                );
            }
        }
        let ready = active.iter().filter(|p| owned::is_ready(p)).count();
        let deleting = to_delete.len();
        status["active"] = json!(active.len() - deleting.min(active.len()) + to_create.len());
        status["ready"] = json!(ready);
        status["terminating"] = json!(terminating + deleting);
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        for field in ["active", "succeeded", "failed"] {
            if status[field] == 0 {
                if let Some(o) = status.as_object_mut() {
                    o.remove(field);
                }
            }
        }
        let deleted = self.delete_pods(raw, &to_delete).await;
        let created = self.create_pods(raw, to_create).await;
        if let Ok(Some(cur)) = self
            .client
            .get(
                RESOURCE,
                raw["metadata"]["namespace"].as_str().unwrap_or(""),
                raw["metadata"]["name"].as_str().unwrap_or(""),
            )
            .await
        {
            stored = cur;
        }
        if stored["metadata"]["uid"] == raw["metadata"]["uid"] {
            self.client
                .write_status_if_changed(RESOURCE, &stored, status.clone())
                .await?;
        }
        for (kind, reason, message) in events {
            self.event(raw, kind, reason, &message).await;
        }
        deleted?;
        created?;
        let done = plan::condition_true(&conditions, "Complete")
            || plan::condition_true(&conditions, "Failed");
        if done {
            if let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) {
                let finished_at = conditions
                    .iter()
                    .filter(|c| {
                        (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                    })
                    .filter_map(|c| {
                        c["lastTransitionTime"]
                            .as_str()
                            .and_then(protocol::timestamp::parse)
                    })
                    .min()
                    .unwrap_or(now);
                let left = finished_at + i64::from(ttl) - now;
                if left <= 0 {
                    let ns = raw["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = raw["metadata"]["name"].as_str().unwrap_or("");
                    let uid = raw["metadata"]["uid"].as_str();
                    match self
                        .client
                        .delete(RESOURCE, ns, name, Propagation::Background, uid)
                        .await
                    {
                        Ok(()) | Err(ApiError::NotFound { .. }) => {
                            tracing::info!(namespace = %ns, %name, "deleted a finished Job after ttlSecondsAfterFinished");
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    soonest(left);
                }
            }
        }
        Ok(Requeue::after_seconds(requeue.map(|s| s.max(1))))
    }
}

/// The reason of a failure as a `'static` event reason (the reasons are a fixed set).
fn leak(reason: &str) -> &'static str {
    match reason {
        "BackoffLimitExceeded" => "BackoffLimitExceeded",
        "DeadlineExceeded" => "DeadlineExceeded",
        "PodFailurePolicy" => "PodFailurePolicy",
        "MaxFailedIndexesExceeded" => "MaxFailedIndexesExceeded",
        "FailedIndexes" => "FailedIndexes",
        _ => "Failed",
    }
}

#[async_trait]
impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            RESOURCE => vec![event.key.clone()],
            "pods" => owned::controller_keys(event, "Job", RESOURCE),
            _ => vec![],
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(all) = self.client.list_for_resync(RESOURCE).await else {
            return Vec::new();
        };
        owned::keys_of(RESOURCE, &all)
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        self.informers.synced().await?;
        let Some(raw) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            self.release_orphans(key, None).await?;
            return Ok(Requeue::No);
        };
        let job: Job = typed(&raw)?;
        let uid = job.metadata.uid.clone().unwrap_or_default();
        self.release_orphans(key, Some(&uid)).await?;
        if owned::is_terminating(&job.metadata) {
            // Being deleted: nothing more is counted; let the pods go with it.
            for p in self.informers.pods.controlled_by_as::<Pod>(&uid)? {
                if plan::is_tracked(&p) {
                    self.release(&p).await?;
                }
            }
            return Ok(Requeue::No);
        }
        let selector = owner_selector(
            "Job",
            &job.metadata,
            job.spec.as_ref().and_then(|s| s.selector.as_ref()),
        )?;
        let candidates = self.informers.pods.claim_candidates(&key.namespace, &uid);
        let pods = claim::claim_all(&self.client, "pods", &job, &selector, candidates).await?;
        let pods: Vec<Pod> = pods.iter().map(typed).collect::<Result<_, _>>()?;
        self.sync(&raw, &job, pods).await
    }
}
