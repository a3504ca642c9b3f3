//! Jobs and CronJobs end to end: a real cloudcore, real edgecores (native processes, and one
//! test on containerd), and the real kubectl (`wait --for=condition=...`, `logs job/x`,
//! `create job --from=cronjob/x` are the contract).

use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);
const TRACKING: &str = "batch.kubernetes.io/job-tracking";

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    anyhow::ensure!(ok, "kubectl {args:?} failed: {out}\n{}", cloud.log_tail());
    Ok(out)
}

fn apply(cloud: &Cloud, name: &str, manifest: &Value) -> anyhow::Result<()> {
    let path = cloud.dir.path().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)?;
    kubectl_ok(cloud, &["apply", "-f", path.to_str().unwrap_or_default()])?;
    Ok(())
}

/// A Job running `script` with `sh -c` as a native process.
fn job(name: &str, spec: Value, script: &str) -> Value {
    let mut j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox:local",
                "command": ["sh", "-c", script]}]}}}
    });
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        j["spec"][k] = v;
    }
    j
}

async fn get_job(cloud: &Cloud, name: &str) -> anyhow::Result<Value> {
    cloud
        .get(&format!("/apis/batch/v1/namespaces/default/jobs/{name}"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {name} not found"))
}

async fn pods_of_job(cloud: &Cloud, job: &str) -> anyhow::Result<Vec<Value>> {
    let list = cloud
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3D{job}"
        ))
        .await?
        .unwrap_or_default();
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    condition_of(obj, kind)
}

fn has_finalizer(pod: &Value) -> bool {
    pod["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING))
}

async fn start_process_edge() -> anyhow::Result<(Cloud, Edge)> {
    let cloud = Cloud::start(CloudOptions {
        node_monitor_grace_period_secs: Some(4),
        ..CloudOptions::default()
    })
    .await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    Ok((cloud, edge))
}

/// An Indexed Job of 5 completions, 2 at a time, whose index 2 fails once: it completes with
/// every index succeeded exactly once and the retry counted as one failure.
#[tokio::test(flavor = "multi_thread")]
async fn indexed_job_completes_counting_its_one_retry() -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    let marker = cloud.dir.path().join("index-2-failed-once");
    let script = format!(
        "if [ \"$JOB_COMPLETION_INDEX\" = 2 ] && [ ! -e {m} ]; then touch {m}; echo failing; exit 3; fi; \
         echo \"index $JOB_COMPLETION_INDEX on $(hostname) done\"",
        m = marker.display()
    );
    let manifest = job(
        "squares",
        json!({"completions": 5, "parallelism": 2, "completionMode": "Indexed", "backoffLimit": 2}),
        &script,
    );
    let started = Instant::now();
    apply(&cloud, "squares", &manifest)?;
    let waited = kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/squares",
            "--timeout=120s",
        ],
    );
    let elapsed = started.elapsed();
    waited.map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    eprintln!("FIGURE indexed job 5 completions parallelism 2 with one retry: create -> Complete in {elapsed:?}");

    let j = get_job(&cloud, "squares").await?;
    let status = &j["status"];
    assert_eq!(status["succeeded"], 5, "{j}");
    assert_eq!(status["failed"], 1, "{j}");
    assert_eq!(status["completedIndexes"], "0-4", "{j}");
    assert!(status.get("active").is_none(), "{j}");
    assert_eq!(status["uncountedTerminatedPods"], json!({}), "{j}");
    assert!(status["completionTime"].is_string(), "{j}");
    for c in ["SuccessCriteriaMet", "Complete"] {
        assert_eq!(
            condition(&j, c).map(|c| c["status"].clone()),
            Some(json!("True")),
            "{c}: {j}"
        );
    }
    // Pods: one per index plus the retry of index 2, each counted and released.
    let pods = pods_of_job(&cloud, "squares").await?;
    assert_eq!(pods.len(), 6, "{pods:?}");
    let mut by_index: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in &pods {
        assert!(!has_finalizer(p), "{p}");
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
            index.as_str()
        );
        assert_eq!(p["spec"]["hostname"], format!("squares-{index}"));
        by_index
            .entry(index)
            .or_default()
            .push(phase(p).to_string());
    }
    for i in ["0", "1", "3", "4"] {
        assert_eq!(by_index[i], ["Succeeded"], "index {i}: {by_index:?}");
    }
    let mut two = by_index["2"].clone();
    two.sort();
    assert_eq!(two, ["Failed", "Succeeded"], "{by_index:?}");
    let failed = pods
        .iter()
        .find(|p| phase(p) == "Failed")
        .expect("the failed pod");
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );

    let table = kubectl_ok(&cloud, &["get", "job", "squares"])?;
    assert!(
        table.contains("Complete") && table.contains("5/5"),
        "{table}"
    );
    let logs = kubectl_ok(&cloud, &["logs", "job/squares"])?;
    assert!(logs.contains(" done") || logs.contains("failing"), "{logs}");
    Ok(())
}

/// The three ways a Job fails: too many failed pods, a pod failure policy rule, and its
/// deadline, which also stops its running pod. And a field that is not implemented is refused.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_fail_by_backoff_limit_failure_policy_and_deadline() -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    apply(
        &cloud,
        "flaky",
        &job("flaky", json!({"backoffLimit": 1}), "exit 1"),
    )?;
    apply(
        &cloud,
        "policy",
        &job(
            "policy",
            json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]}}),
            "exit 42",
        ),
    )?;
    apply(
        &cloud,
        "slow",
        &job("slow", json!({"activeDeadlineSeconds": 4}), "sleep 304"),
    )?;
    for (name, reason) in [
        ("policy", "PodFailurePolicy"),
        ("slow", "DeadlineExceeded"),
        ("flaky", "BackoffLimitExceeded"),
    ] {
        kubectl_ok(
            &cloud,
            &[
                "wait",
                "--for=condition=failed",
                &format!("job/{name}"),
                "--timeout=90s",
            ],
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
        let j = get_job(&cloud, name).await?;
        let failed = condition(&j, "Failed").expect("Failed condition");
        assert_eq!(failed["reason"], reason, "{j}");
        assert_eq!(
            condition(&j, "FailureTarget").map(|c| c["reason"].clone()),
            Some(json!(reason)),
            "{j}"
        );
        assert!(j["status"].get("active").is_none(), "{j}");
        assert_eq!(j["status"]["terminating"], 0, "{j}");
    }
    let flaky = get_job(&cloud, "flaky").await?;
    assert_eq!(flaky["status"]["failed"], 2, "{flaky}");
    let policy = get_job(&cloud, "policy").await?;
    assert_eq!(policy["status"]["failed"], 1, "{policy}");
    assert!(
        condition(&policy, "Failed").unwrap()["message"]
            .as_str()
            .unwrap_or("")
            .contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{policy}"
    );
    // The deadline stopped the running pod on the edge: no process left, and no pod of the
    // Job still running.
    eventually("the slow Job's process gone", DEADLINE, || async {
        let left = edge.pod_pids().into_iter().any(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(9).any(|w| w == b"sleep\x00304"))
        });
        Ok((!left).then_some(()))
    })
    .await?;
    let pods = pods_of_job(&cloud, "slow").await?;
    assert!(
        pods.iter()
            .all(|p| phase(p) != "Running" && !has_finalizer(p)),
        "{pods:?}"
    );
    let table = kubectl_ok(&cloud, &["get", "jobs"])?;
    assert_eq!(table.matches("Failed").count(), 3, "{table}");

    let mut refused = job(
        "picky",
        json!({"successPolicy": {"rules": [{"succeededCount": 1}]}}),
        "true",
    );
    refused["spec"]["completionMode"] = json!("Indexed");
    refused["spec"]["completions"] = json!(2);
    let path = cloud.dir.path().join("picky.json");
    std::fs::write(&path, serde_json::to_vec(&refused)?)?;
    let (ok, out) = cloud.kubectl(&["create", "-f", path.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.successPolicy") && out.contains("not supported"),
        "{out}"
    );
    Ok(())
}

/// A Job pod whose node goes silent while it runs is neither failed nor replaced; it
/// finishes meanwhile, and when the node reports again it is counted succeeded, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_pod_finishing_on_a_silent_node_counts_once_when_it_reports() -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    let go = cloud.dir.path().join("go");
    let script = format!(
        "while [ ! -e {g} ]; do sleep 0.2; done; echo finished offline",
        g = go.display()
    );
    apply(
        &cloud,
        "offline",
        &job("offline", json!({"backoffLimit": 0}), &script),
    )?;
    let running = eventually("the offline Job's pod running", DEADLINE, || async {
        let pods = pods_of_job(&cloud, "offline").await?;
        Ok(pods.iter().find(|p| pod_running(p)).cloned())
    })
    .await?;
    let pod_name = running["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let pod_path = format!("/api/v1/namespaces/default/pods/{pod_name}");

    // The node falls silent (edgecore frozen: no heartbeats, no reports), then the pod's
    // process finishes while nobody can tell the cloud.
    edge.signal("STOP");
    let silent = async {
        cloud
            .wait_for(
                "node edge-a not Ready",
                "/api/v1/nodes/edge-a",
                DEADLINE,
                |n| !node_ready(n),
            )
            .await?;
        cloud
            .wait_for("the pod marked not ready", &pod_path, DEADLINE, |p| {
                condition_of(p, "Ready").is_some_and(|c| c["status"] == "False")
            })
            .await?;
        std::fs::write(&go, b"")?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let j = get_job(&cloud, "offline").await?;
        let pods = pods_of_job(&cloud, "offline").await?;
        anyhow::Ok((j, pods))
    }
    .await;
    edge.signal("CONT");
    let (during, pods_during) = silent?;
    assert_eq!(during["status"]["active"], 1, "{during}");
    assert!(during["status"].get("failed").is_none(), "{during}");
    assert!(condition(&during, "Failed").is_none(), "{during}");
    assert_eq!(pods_during.len(), 1, "not replaced: {pods_during:?}");

    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/offline",
            "--timeout=90s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let j = get_job(&cloud, "offline").await?;
    assert_eq!(j["status"]["succeeded"], 1, "{j}");
    assert!(j["status"].get("failed").is_none(), "{j}");
    let pods = pods_of_job(&cloud, "offline").await?;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(phase(&pods[0]), "Succeeded");
    assert!(!has_finalizer(&pods[0]));
    let logs = kubectl_ok(&cloud, &["logs", "job/offline"])?;
    assert!(logs.contains("finished offline"), "{logs}");
    Ok(())
}

fn jobs_of(list: &Value, cron: &str) -> Vec<Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == cron)
        .cloned()
        .collect()
}

fn ts(v: &Value) -> i64 {
    v.as_str().and_then(protocol::timestamp::parse).unwrap_or(0)
}

/// A CronJob every minute with `concurrencyPolicy: Forbid` and a history of one: its first Job
/// runs across the next minute, so that minute's Job starts only after the first finished;
/// older Jobs are deleted; `kubectl create job --from=cronjob/x` makes a Job of the template.
#[tokio::test(flavor = "multi_thread")]
async fn cronjob_runs_every_minute_forbids_overlap_and_keeps_its_history() -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    let marker = cloud.dir.path().join("first-run");
    // The first run lasts until 5 s past the next minute; later runs are quick.
    let script = format!(
        "if [ ! -e {m} ]; then touch {m}; s=$(date +%S); sleep $((65 - ${{s#0}})); else sleep 2; fi; echo tick",
        m = marker.display()
    );
    let cron = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "busybox:local",
                    "command": ["sh", "-c", script]}]}}}}}
    });
    apply(&cloud, "tick", &cron)?;
    let table = kubectl_ok(&cloud, &["get", "cronjob", "tick"])?;
    assert!(table.contains("*/1 * * * *"), "{table}");

    // Two Jobs complete: the first (long) and the one of the minute it overlapped. With a
    // history of one, the first is deleted once the second completes: remember what was seen.
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<i64, Value>::new());
    let (first, second) = eventually(
        "two scheduled Jobs complete",
        Duration::from_secs(150),
        || {
            let seen = &seen;
            let cloud = &cloud;
            async move {
                let list = cloud
                    .get("/apis/batch/v1/namespaces/default/jobs")
                    .await?
                    .unwrap_or_default();
                let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                for j in jobs_of(&list, "tick") {
                    let t = ts(&j["metadata"]["annotations"]
                        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]);
                    seen.insert(t, j);
                }
                let done: Vec<Value> = seen
                    .values()
                    .filter(|j| condition(j, "Complete").is_some())
                    .cloned()
                    .collect();
                Ok((done.len() >= 2).then(|| (done[0].clone(), done[1].clone())))
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let scheduled = |j: &Value| {
        ts(&j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"])
    };
    let (t1, t2) = (scheduled(&first), scheduled(&second));
    assert_eq!(t2 - t1, 60, "consecutive minutes: {first}\n{second}");
    assert_eq!(first["metadata"]["name"], format!("tick-{}", t1 / 60));
    // Forbid: the second minute's Job was created only once the first had completed.
    let first_done = ts(&first["status"]["completionTime"]);
    let second_created = ts(&second["metadata"]["creationTimestamp"]);
    assert!(second_created >= first_done, "{first}\n{second}");
    assert!(second_created > t2, "held back past its minute: {second}");

    // History: only the newest successful Job stays (with its pods, which go with the rest).
    let first_name = first["metadata"]["name"].as_str().unwrap_or("").to_string();
    cloud
        .wait_gone(
            "the oldest Job",
            &format!("/apis/batch/v1/namespaces/default/jobs/{first_name}"),
            DEADLINE,
        )
        .await?;
    eventually("the oldest Job's pods deleted", DEADLINE, || async {
        Ok(pods_of_job(&cloud, &first_name)
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    let cj = cloud
        .get("/apis/batch/v1/namespaces/default/cronjobs/tick")
        .await?
        .unwrap_or_default();
    assert!(ts(&cj["status"]["lastScheduleTime"]) >= t2, "{cj}");
    assert!(cj["status"]["lastSuccessfulTime"].is_string(), "{cj}");

    kubectl_ok(&cloud, &["create", "job", "by-hand", "--from=cronjob/tick"])?;
    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/by-hand",
            "--timeout=60s",
        ],
    )?;
    let manual = get_job(&cloud, "by-hand").await?;
    assert_eq!(
        manual["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual",
        "{manual}"
    );
    assert_eq!(
        manual["metadata"]["ownerReferences"][0]["kind"], "CronJob",
        "{manual}"
    );
    let logs = kubectl_ok(&cloud, &["logs", "job/by-hand"])?;
    assert!(logs.contains("tick"), "{logs}");
    Ok(())
}

/// A Job on containerd: two completions of a real container, its exit code and log.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_runs_to_completion_in_containerd() -> anyhow::Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "edge-c", &ctrd).await?;
    cloud.wait_node_ready("edge-c", DEADLINE).await?;
    let manifest = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "boxed", "namespace": "default"},
        "spec": {"completions": 2, "parallelism": 1, "completionMode": "Indexed",
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo boxed $JOB_COMPLETION_INDEX on $(hostname)"]}]}}}
    });
    apply(&cloud, "boxed", &manifest)?;
    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/boxed",
            "--timeout=120s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let j = get_job(&cloud, "boxed").await?;
    assert_eq!(j["status"]["succeeded"], 2, "{j}");
    let pods = pods_of_job(&cloud, "boxed").await?;
    assert_eq!(pods.len(), 2, "{pods:?}");
    for p in &pods {
        assert_eq!(phase(p), "Succeeded", "{p}");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0,
            "{p}"
        );
    }
    let logs = kubectl_ok(&cloud, &["logs", "job/boxed"])?;
    assert!(
        logs.contains("boxed 0 on ") || logs.contains("boxed 1 on "),
        "{logs}"
    );
    eprintln!("containerd Job log: {logs}");
    // Deleting the Job takes its pods with it.
    kubectl_ok(
        &cloud,
        &["delete", "job", "boxed", "--wait=true", "--timeout=60s"],
    )?;
    eventually("the boxed Job's pods deleted", DEADLINE, || async {
        Ok(pods_of_job(&cloud, "boxed").await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

/// A Job created suspended makes no pods; resumed, an Indexed Job of 5 completions runs to
/// completion (the figure in BENCHMARKS.md), and `ttlSecondsAfterFinished` deletes it with
/// its pods.
#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_job_resumes_completes_and_is_deleted_after_its_ttl() -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    let manifest = job(
        "later",
        json!({"suspend": true, "completions": 5, "parallelism": 2, "completionMode": "Indexed",
            "ttlSecondsAfterFinished": 3}),
        "echo index $JOB_COMPLETION_INDEX",
    );
    apply(&cloud, "later", &manifest)?;
    let suspended = cloud
        .wait_for(
            "job later Suspended",
            "/apis/batch/v1/namespaces/default/jobs/later",
            DEADLINE,
            |j| condition(j, "Suspended").is_some_and(|c| c["status"] == "True"),
        )
        .await?;
    assert_eq!(
        condition(&suspended, "Suspended").unwrap()["reason"],
        "JobSuspended"
    );
    assert!(
        suspended["status"].get("startTime").is_none(),
        "{suspended}"
    );
    assert!(pods_of_job(&cloud, "later").await?.is_empty());
    let table = kubectl_ok(&cloud, &["get", "job", "later"])?;
    assert!(table.contains("Suspended"), "{table}");

    let started = Instant::now();
    kubectl_ok(
        &cloud,
        &[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ],
    )?;
    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/later",
            "--timeout=90s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    eprintln!(
        "FIGURE indexed job 5 completions parallelism 2: resume -> Complete in {:?}",
        started.elapsed()
    );
    let j = get_job(&cloud, "later").await?;
    assert_eq!(
        condition(&j, "Suspended").unwrap()["reason"],
        "JobResumed",
        "{j}"
    );
    assert_eq!(j["status"]["succeeded"], 5, "{j}");
    assert_eq!(j["status"]["completedIndexes"], "0-4", "{j}");
    assert_eq!(pods_of_job(&cloud, "later").await?.len(), 5);

    cloud
        .wait_gone(
            "the finished Job",
            "/apis/batch/v1/namespaces/default/jobs/later",
            DEADLINE,
        )
        .await?;
    eventually("the finished Job's pods deleted", DEADLINE, || async {
        Ok(pods_of_job(&cloud, "later").await?.is_empty().then_some(()))
    })
    .await?;

    // Deleting a Job whose pod runs: the pod (held by the tracking finalizer) goes too.
    apply(&cloud, "gone", &job("gone", json!({}), "sleep 305"))?;
    eventually("the gone Job's pod running", DEADLINE, || async {
        let pods = pods_of_job(&cloud, "gone").await?;
        Ok(pods.iter().any(pod_running).then_some(()))
    })
    .await?;
    kubectl_ok(&cloud, &["delete", "job", "gone"])?;
    eventually("the deleted Job's pod gone", DEADLINE, || async {
        Ok(pods_of_job(&cloud, "gone").await?.is_empty().then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", cloud.log_tail()))?;
    Ok(())
}

/// Pods that finish while cloudcore is down (killed with SIGKILL) are counted when it is back,
/// each exactly once: the edge's outbox delivers their status, and the tracking finalizer kept
/// them from being lost.
#[tokio::test(flavor = "multi_thread")]
async fn job_pods_finishing_while_cloudcore_is_down_are_counted_once() -> anyhow::Result<()> {
    let (mut cloud, edge) = start_process_edge().await?;
    let go = cloud.dir.path().join("go");
    let script = format!(
        "while [ ! -e {g} ]; do sleep 0.2; done; echo done",
        g = go.display()
    );
    apply(
        &cloud,
        "crash",
        &job(
            "crash",
            json!({"completions": 3, "parallelism": 3}),
            &script,
        ),
    )?;
    eventually("three pods of the Job running", DEADLINE, || async {
        let pods = pods_of_job(&cloud, "crash").await?;
        Ok((pods.iter().filter(|p| pod_running(p)).count() == 3).then_some(()))
    })
    .await?;
    cloud.kill9();
    std::fs::write(&go, b"")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cloud.launch().await?;
    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/crash",
            "--timeout=90s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let j = get_job(&cloud, "crash").await?;
    assert_eq!(j["status"]["succeeded"], 3, "{j}");
    assert!(j["status"].get("failed").is_none(), "{j}");
    let pods = pods_of_job(&cloud, "crash").await?;
    assert_eq!(pods.len(), 3, "no pod replaced: {pods:?}");
    assert!(
        pods.iter()
            .all(|p| phase(p) == "Succeeded" && !has_finalizer(p)),
        "{pods:?}"
    );
    Ok(())
}

/// `restartPolicy: OnFailure`: the edge restarts a failing container in place (the pod never
/// fails), and those restarts count against `backoffLimit`.
#[tokio::test(flavor = "multi_thread")]
async fn on_failure_jobs_restart_in_place_and_count_restarts_against_the_limit(
) -> anyhow::Result<()> {
    let (cloud, edge) = start_process_edge().await?;
    let marker = cloud.dir.path().join("failed-once");
    let on_failure = |name: &str, spec: Value, script: &str| {
        let mut j = job(name, spec, script);
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        j
    };
    let once = format!(
        "if [ ! -e {m} ]; then touch {m}; exit 1; fi; echo recovered",
        m = marker.display()
    );
    apply(
        &cloud,
        "recovers",
        &on_failure("recovers", json!({"backoffLimit": 3}), &once),
    )?;
    apply(
        &cloud,
        "crashes",
        &on_failure("crashes", json!({"backoffLimit": 1}), "exit 1"),
    )?;
    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=complete",
            "job/recovers",
            "--timeout=90s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let pods = pods_of_job(&cloud, "recovers").await?;
    assert_eq!(pods.len(), 1, "restarted in place, not replaced: {pods:?}");
    assert_eq!(phase(&pods[0]), "Succeeded");
    assert_eq!(restarts(&pods[0]), 1, "{}", pods[0]);
    let j = get_job(&cloud, "recovers").await?;
    assert_eq!(j["status"]["succeeded"], 1, "{j}");
    assert!(j["status"].get("failed").is_none(), "{j}");

    kubectl_ok(
        &cloud,
        &[
            "wait",
            "--for=condition=failed",
            "job/crashes",
            "--timeout=90s",
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let j = get_job(&cloud, "crashes").await?;
    assert_eq!(
        condition(&j, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded",
        "{j}"
    );
    Ok(())
}
