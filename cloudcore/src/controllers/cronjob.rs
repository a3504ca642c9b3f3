//! The CronJob controller: creates a Job at each time of a CronJob's schedule, as Kubernetes'
//! `CronJobControllerV2` does.
//!
//! A reconcile lists the CronJob's Jobs (those it controls, including ones made with `kubectl
//! create job --from=cronjob/x`), rebuilds `status.active` and `lastSuccessfulTime` from them,
//! and then, unless the CronJob is suspended or being deleted:
//!
//! - finds the schedule times missed since `status.lastScheduleTime` (or the creation time), but
//!   no earlier than `now - startingDeadlineSeconds` when that is set ([`crate::cron`], in
//!   `spec.timeZone`, the cloud's clock). Only the most recent one is run: after a cloudcore
//!   restart (or an outage) a CronJob catches up with **at most one** Job, as in Kubernetes, and
//!   none if even that one is older than `startingDeadlineSeconds`. More than 100 missed times
//!   give a `TooManyMissedTimes` Warning event (the run still happens);
//! - applies `concurrencyPolicy`: `Forbid` skips while a Job is active (the time stays
//!   unscheduled, so it runs when the active one finishes if still within the deadline, as in
//!   Kubernetes), `Replace` deletes the active Jobs first, `Allow` runs alongside;
//! - creates the Job `<cronjob>-<minutes since the epoch>` (a deterministic name, so a retry or a
//!   second controller cannot run one time twice) with the
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp` annotation and sets `lastScheduleTime`;
//! - deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` (their pods go with them through the garbage collector);
//! - asks to be woken at the next schedule time.

use super::decode::typed;
use super::owned::{self, controller_ref, is_controlled_by};
use super::runner::{Reconciler, Requeue};
use super::ControllerError;
use crate::api::batch::has_condition;
use crate::api::client::{Client, Propagation};
use crate::api::events::{self, EventType};
use crate::api::ApiError;
use crate::clock::Clock;
use crate::cron::{missed_runs, time_zone, Schedule};
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Storage resource of CronJobs.
pub const RESOURCE: &str = "batch/cronjobs";
/// Storage resource of Jobs.
const JOBS: &str = super::job::RESOURCE;
/// The component name on Events.
pub const COMPONENT: &str = "cronjob-controller";
/// Resync period (each CronJob also asks to be woken at its next time).
pub const RESYNC: Duration = Duration::from_secs(30);
/// Annotation of a Job with the schedule time it was made for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed times beyond which a Warning event says so (Kubernetes' 100).
pub const MAX_MISSED: usize = 100;

/// The name of the Job for schedule time `t` (Kubernetes' `getJobName`: minutes since the
/// epoch).
pub fn job_name(cron_job: &str, t: Timestamp) -> String {
    format!("{cron_job}-{}", t.as_second() / 60)
}

/// The CronJob [`Reconciler`].
pub struct CronJobController {
    client: Client,
    clock: Arc<dyn Clock>,
}

fn finished(job: &Value) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

fn time_of(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(protocol::timestamp::parse)
}

fn reference(job: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "name": job["metadata"]["name"], "namespace": job["metadata"]["namespace"],
        "uid": job["metadata"]["uid"], "resourceVersion": job["metadata"]["resourceVersion"]})
}

/// The finished Jobs to delete so that at most `limit` remain, oldest first by start time.
pub fn beyond_history(mut jobs: Vec<&Value>, limit: usize) -> Vec<&Value> {
    jobs.sort_by_key(|j| {
        (
            time_of(j, "/status/startTime").or_else(|| time_of(j, "/metadata/creationTimestamp")),
            j["metadata"]["name"].as_str().unwrap_or("").to_string(),
        )
    });
    let excess = jobs.len().saturating_sub(limit);
    jobs.into_iter().take(excess).collect()
}

impl CronJobController {
    /// A controller writing through `client` and reading the time from `clock`.
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> Self {
        Self { client, clock }
    }

    async fn event(&self, raw: &Value, kind: EventType, reason: &str, message: &str) {
        events::record_best_effort(&self.client, raw, kind, reason, message, COMPONENT).await;
    }

    async fn delete_job(&self, raw: &Value, job: &Value) -> Result<(), ApiError> {
        let ns = job["metadata"]["namespace"].as_str().unwrap_or("");
        let name = job["metadata"]["name"].as_str().unwrap_or("");
        let uid = job["metadata"]["uid"].as_str();
        match self
            .client
            .delete(JOBS, ns, name, Propagation::Background, uid)
            .await
        {
            Ok(()) | Err(ApiError::NotFound { .. }) => {
                self.event(
                    raw,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {name}"),
                )
                .await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the Job for schedule time `t`; an existing one of that name is this time's.
    async fn create_job(&self, raw: &Value, cj: &CronJob, t: Timestamp) -> Result<Value, ApiError> {
        let ns = cj.metadata.namespace.as_deref().unwrap_or("");
        let name = job_name(cj.metadata.name.as_deref().unwrap_or(""), t);
        let template = raw
            .pointer("/spec/jobTemplate")
            .cloned()
            .unwrap_or(json!({}));
        let mut meta = json!({"name": name, "namespace": ns,
            "ownerReferences": [controller_ref(cj)]});
        for field in ["labels", "annotations"] {
            if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                meta[field] = v.clone();
            }
        }
        if !meta["annotations"].is_object() {
            meta["annotations"] = json!({});
        }
        meta["annotations"][SCHEDULED_TIMESTAMP] =
            json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        match self.client.create(JOBS, ns, job).await {
            Ok(j) => {
                self.event(
                    raw,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created job {name}"),
                )
                .await;
                Ok(j)
            }
            Err(ApiError::AlreadyExists { .. }) => self
                .client
                .get(JOBS, ns, &name)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("job {ns}/{name} vanished"))),
            Err(e) => {
                self.event(
                    raw,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                )
                .await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    async fn on_permanent_error(&self, key: &ObjectKey, error: &ControllerError) {
        owned::report_permanent_error(&self.client, key, error, COMPONENT).await;
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            RESOURCE => vec![event.key.clone()],
            JOBS => owned::controller_keys(event, "CronJob", RESOURCE),
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
        let Some(raw) = self.client.get(RESOURCE, &key.namespace, &key.name).await? else {
            return Ok(Requeue::No);
        };
        let cj: CronJob = typed(&raw)?;
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let spec = cj.spec.clone().unwrap_or_default();
        let jobs: Vec<Value> = self
            .client
            .list(JOBS, Some(&key.namespace))
            .await?
            .into_iter()
            .filter(|j| is_controlled_by(&owned::meta_of(j), &uid))
            .collect();
        let now_ms = self.clock.now_ms();
        let now = Timestamp::from_millisecond(now_ms as i64).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut status = raw
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        let mut active: Vec<Value> = jobs
            .iter()
            .filter(|j| !finished(j))
            .map(reference)
            .collect();
        let last_success = jobs
            .iter()
            .filter(|j| has_condition(j, "Complete"))
            .filter_map(|j| time_of(j, "/status/completionTime"))
            .chain(time_of(&status, "/lastSuccessfulTime"))
            .max();
        if let Some(t) = last_success {
            status["lastSuccessfulTime"] = json!(protocol::timestamp::format(t));
        }
        let mut requeue = Requeue::No;
        let mut outcome: Result<(), ControllerError> = Ok(());
        if !owned::is_terminating(&cj.metadata) && !spec.suspend.unwrap_or(false) {
            let schedule =
                Schedule::parse(&spec.schedule).map_err(|e| ControllerError::Invalid {
                    key: format!("CronJob {}/{}", key.namespace, key.name),
                    reason: format!("spec.schedule: {e}"),
                })?;
            let tz =
                time_zone(spec.time_zone.as_deref()).map_err(|e| ControllerError::Invalid {
                    key: format!("CronJob {}/{}", key.namespace, key.name),
                    reason: format!("spec.timeZone: {e}"),
                })?;
            let created = time_of(&raw, "/metadata/creationTimestamp").unwrap_or(now.as_second());
            let mut earliest = time_of(&status, "/lastScheduleTime").unwrap_or(created);
            if let Some(sds) = spec.starting_deadline_seconds {
                earliest = earliest.max(now.as_second() - sds);
            }
            let earliest = Timestamp::from_second(earliest).unwrap_or(now);
            let (missed, latest) = missed_runs(&schedule, &tz, earliest, now, MAX_MISSED);
            if missed > MAX_MISSED {
                self.event(&raw, EventType::Warning, "TooManyMissedTimes",
                    &format!("too many missed start times: > {MAX_MISSED}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"))
                    .await;
            }
            if let Some(t) = latest {
                let name = job_name(&key.name, t);
                let already = jobs.iter().any(|j| j["metadata"]["name"] == name.as_str());
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if already {
                    status["lastScheduleTime"] = json!(protocol::timestamp::format(t.as_second()));
                } else if policy == "Forbid" && !active.is_empty() {
                    tracing::debug!(cronjob = %key.name, "not starting a Job: concurrencyPolicy Forbid and one is active");
                } else {
                    if policy == "Replace" {
                        for j in jobs.iter().filter(|j| !finished(j)) {
                            if let Err(e) = self.delete_job(&raw, j).await {
                                outcome = Err(e.into());
                            }
                        }
                        active.clear();
                    }
                    if outcome.is_ok() {
                        match self.create_job(&raw, &cj, t).await {
                            Ok(j) => {
                                active.push(reference(&j));
                                status["lastScheduleTime"] =
                                    json!(protocol::timestamp::format(t.as_second()));
                            }
                            Err(e) => outcome = Err(e.into()),
                        }
                    }
                }
            }
            if let Some(next) = schedule.next_after(now, &tz) {
                let wait = (next.as_millisecond() - now_ms as i64).max(0) as u64 + 100;
                requeue = Requeue::After(Duration::from_millis(wait));
            }
        }
        status["active"] = json!(active);
        if active.is_empty() {
            if let Some(o) = status.as_object_mut() {
                o.remove("active");
            }
        }
        let done: Vec<&Value> = jobs.iter().filter(|j| finished(j)).collect();
        let ok_limit = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
        let failed_limit = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
        let (ok, failed): (Vec<&Value>, Vec<&Value>) =
            done.into_iter().partition(|j| has_condition(j, "Complete"));
        for j in beyond_history(ok, ok_limit)
            .into_iter()
            .chain(beyond_history(failed, failed_limit))
        {
            if let Err(e) = self.delete_job(&raw, j).await {
                outcome = Err(e.into());
            }
        }
        self.client
            .write_status_if_changed(RESOURCE, &raw, status)
            .await?;
        outcome?;
        Ok(requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_minutes_since_the_epoch() {
        let t: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(job_name("tick", t), "tick-29453765");
    }

    #[test]
    fn history_keeps_the_newest() {
        let j = |name: &str, start: &str| json!({"metadata": {"name": name}, "status": {"startTime": start}});
        let jobs = [
            j("c", "2026-01-01T00:03:00Z"),
            j("a", "2026-01-01T00:01:00Z"),
            j("b", "2026-01-01T00:02:00Z"),
        ];
        let gone: Vec<&str> = beyond_history(jobs.iter().collect(), 1)
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(gone, ["a", "b"]);
        assert!(beyond_history(jobs.iter().collect(), 3).is_empty());
        assert_eq!(beyond_history(jobs.iter().collect(), 0).len(), 3);
    }

    /// The controller against a real store and API, with a clock the test sets.
    mod against_the_api {
        use super::*;
        use crate::clock::ManualClock;
        use crate::store::{SledStore, Store};

        /// 2030-01-01T00:10:30Z, in ms: half a minute past a schedule time of `*/1`.
        const NOW: u64 = 1_893_456_630_000;

        struct Fixture {
            _dir: tempfile::TempDir,
            client: Client,
            clock: Arc<ManualClock>,
            ctl: CronJobController,
        }

        async fn fixture() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
            crate::api::namespaces::ensure_builtin(store.as_ref())
                .await
                .unwrap();
            let client = Client::new(crate::api::ApiState::with_watch_history(
                store,
                Arc::new(String::new),
                crate::api::history::DEFAULT_CAPACITY,
            ));
            let clock = Arc::new(ManualClock::new(NOW));
            let ctl = CronJobController::new(client.clone(), clock.clone());
            Fixture {
                _dir: dir,
                client,
                clock,
                ctl,
            }
        }

        fn key() -> ObjectKey {
            ObjectKey::new(RESOURCE, "default", "tick")
        }

        /// Creates CronJob `tick` (`*/1`) with `extra` spec fields, as if it had last run at
        /// `last` (seconds since the epoch): what the store holds when cloudcore comes back
        /// after being down since then.
        async fn cron_job(f: &Fixture, extra: Value, last: i64) {
            let mut cj = json!({"apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "tick", "namespace": "default"},
                "spec": {"schedule": "*/1 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}});
            for (k, v) in extra.as_object().unwrap() {
                cj["spec"][k] = v.clone();
            }
            let created = f.client.create(RESOURCE, "default", cj).await.unwrap();
            let mut with_status = created;
            with_status["status"] = json!({"lastScheduleTime": protocol::timestamp::format(last)});
            f.client
                .update_status(RESOURCE, "default", with_status)
                .await
                .unwrap();
        }

        async fn job_names(f: &Fixture) -> Vec<String> {
            let mut names: Vec<String> = f
                .client
                .list(JOBS, Some("default"))
                .await
                .unwrap()
                .iter()
                .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
                .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            names.sort();
            names
        }

        async fn events(f: &Fixture, reason: &str) -> usize {
            f.client
                .list("events", Some("default"))
                .await
                .unwrap()
                .iter()
                .filter(|e| e["reason"] == reason)
                .count()
        }

        fn secs(ms: u64) -> i64 {
            (ms / 1000) as i64
        }

        #[tokio::test]
        async fn after_a_long_outage_one_catch_up_run_for_the_latest_missed_time() {
            let f = fixture().await;
            // Down for ten minutes: ten times missed, one Job, for the latest one.
            cron_job(&f, json!({}), secs(NOW) - 630).await;
            let next = f.ctl.reconcile(&key()).await.unwrap();
            let latest = secs(NOW) - 30;
            assert_eq!(job_names(&f).await, [format!("tick-{}", latest / 60)]);
            assert_eq!(next, Requeue::After(Duration::from_millis(30_100)));
            let cj = f
                .client
                .get(RESOURCE, "default", "tick")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                cj["status"]["lastScheduleTime"],
                protocol::timestamp::format(latest)
            );
            assert_eq!(cj["status"]["active"][0]["kind"], "Job");
            assert_eq!(events(&f, "TooManyMissedTimes").await, 0);
            // Reconciling again in the same minute starts nothing more; the next minute does.
            f.ctl.reconcile(&key()).await.unwrap();
            assert_eq!(job_names(&f).await.len(), 1);
            f.clock.advance(Duration::from_secs(31));
            f.ctl.reconcile(&key()).await.unwrap();
            assert_eq!(job_names(&f).await.len(), 2, "Allow runs alongside");
        }

        #[tokio::test]
        async fn too_many_missed_times_are_reported_and_still_run_once() {
            let f = fixture().await;
            cron_job(&f, json!({}), secs(NOW) - 3 * 3600).await;
            f.ctl.reconcile(&key()).await.unwrap();
            assert_eq!(
                job_names(&f).await,
                [format!("tick-{}", (secs(NOW) - 30) / 60)]
            );
            assert_eq!(events(&f, "TooManyMissedTimes").await, 1);
        }

        #[tokio::test]
        async fn a_missed_time_older_than_the_starting_deadline_does_not_run() {
            let f = fixture().await;
            // The latest time was 30 s ago; the deadline is 10 s: nothing runs now.
            cron_job(&f, json!({"startingDeadlineSeconds": 10}), secs(NOW) - 630).await;
            let next = f.ctl.reconcile(&key()).await.unwrap();
            assert!(job_names(&f).await.is_empty());
            assert_eq!(next, Requeue::After(Duration::from_millis(30_100)));
            // The next time, on time, runs.
            f.clock.advance(Duration::from_secs(31));
            f.ctl.reconcile(&key()).await.unwrap();
            assert_eq!(
                job_names(&f).await,
                [format!("tick-{}", (secs(NOW) + 30) / 60)]
            );
        }

        #[tokio::test]
        async fn forbid_waits_for_the_active_job_and_replace_replaces_it() {
            let f = fixture().await;
            cron_job(&f, json!({"concurrencyPolicy": "Forbid"}), secs(NOW) - 90).await;
            f.ctl.reconcile(&key()).await.unwrap();
            let first = job_names(&f).await;
            assert_eq!(first.len(), 1);
            f.clock.advance(Duration::from_secs(60));
            f.ctl.reconcile(&key()).await.unwrap();
            assert_eq!(job_names(&f).await, first, "Forbid: the active Job blocks");

            let mut cj = f
                .client
                .get(RESOURCE, "default", "tick")
                .await
                .unwrap()
                .unwrap();
            cj["spec"]["concurrencyPolicy"] = json!("Replace");
            f.client.update(RESOURCE, "default", cj).await.unwrap();
            f.ctl.reconcile(&key()).await.unwrap();
            let now = job_names(&f).await;
            assert_eq!(now.len(), 1, "{now:?}");
            assert_ne!(now, first, "Replace: the old Job went, a new one came");
            assert_eq!(events(&f, "SuccessfulDelete").await, 1);
        }

        #[tokio::test]
        async fn a_suspended_cron_job_starts_nothing() {
            let f = fixture().await;
            cron_job(&f, json!({"suspend": true}), secs(NOW) - 630).await;
            assert_eq!(f.ctl.reconcile(&key()).await.unwrap(), Requeue::No);
            assert!(job_names(&f).await.is_empty());
        }
    }
}
