use super::plan::*;
use super::*;
use k8s_openapi::api::batch::v1::PodFailurePolicyRule;

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn exited(name: &str, code: i32) -> Pod {
    pod(
        json!({"metadata": {"name": name, "namespace": "ns", "uid": name,
            "finalizers": [TRACKING_FINALIZER]},
        "status": {"phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": code,
                    "finishedAt": "2026-01-01T00:00:10Z"}}}]}}),
    )
}

fn spec(v: Value) -> Spec {
    let mut job = json!({"metadata": {"name": "j", "namespace": "ns", "uid": "u"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "i"}]}}}});
    for (k, x) in v.as_object().unwrap() {
        job["spec"][k] = x.clone();
    }
    let job: Job = serde_json::from_value(job).unwrap();
    Spec::of(&job)
}

#[test]
fn pods_count_by_phase_and_a_confirmed_deletion_fails() {
    let mut p = json!({"metadata": {"name": "p"}, "status": {"phase": "Running"}});
    assert_eq!(pod_state(&pod(p.clone())), PodState::Active);
    // A pod on a silent node: still Running (not Ready), still active, not failed.
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    assert_eq!(pod_state(&pod(p.clone())), PodState::Active);
    p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    assert_eq!(pod_state(&pod(p.clone())), PodState::Terminating);
    p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    assert_eq!(pod_state(&pod(p.clone())), PodState::Failed);
    p["status"]["phase"] = json!("Succeeded");
    assert_eq!(pod_state(&pod(p)), PodState::Succeeded);
    assert!(is_tracked(&exited("a", 0)));
}

#[test]
fn index_lists_round_trip() {
    let set = parse_indexes("0-2,4,7-8");
    assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 7, 8]);
    assert_eq!(format_indexes(&set), "0-2,4,7-8");
    assert_eq!(format_indexes(&BTreeSet::new()), "");
    assert_eq!(format_indexes(&parse_indexes("3,1,2")), "1-3");
}

#[test]
fn pod_failure_policy_rules_match_in_order() {
    let rules: Vec<PodFailurePolicyRule> = serde_json::from_value(json!([
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}},
    ]))
    .unwrap();
    assert_eq!(
        match_failure_policy(&rules, &exited("p", 42)),
        FailureAction::FailJob(
            "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                .into()
        )
    );
    assert_eq!(
        match_failure_policy(&rules, &exited("p", 1)),
        FailureAction::Count
    );
    let mut disrupted = serde_json::to_value(exited("p", 137)).unwrap();
    disrupted["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True"}]);
    assert_eq!(
        match_failure_policy(&rules, &pod(disrupted)),
        FailureAction::Ignore
    );
    assert_eq!(
        match_failure_policy(&[], &exited("p", 42)),
        FailureAction::Count
    );
}

#[test]
fn backoff_doubles_from_ten_seconds_up_to_ten_minutes() {
    assert_eq!(
        (1..=8).map(backoff_seconds).collect::<Vec<_>>(),
        [10, 20, 40, 80, 160, 320, 600, 600]
    );
    assert_eq!(backoff_seconds(0), 0);
    assert_eq!(finished_at(&exited("p", 1)), Some(1_767_225_610));
}

#[test]
fn failure_reasons_in_kubernetes_order() {
    let none = BTreeSet::new();
    let s = spec(json!({"backoffLimit": 2, "activeDeadlineSeconds": 30}));
    assert_eq!(failure(&s, None, 2, &none, &none, Some(0), 10), None);
    assert_eq!(
        failure(&s, None, 3, &none, &none, Some(0), 10).unwrap().0,
        "BackoffLimitExceeded"
    );
    assert_eq!(
        failure(&s, None, 0, &none, &none, Some(0), 30).unwrap().0,
        "DeadlineExceeded"
    );
    assert_eq!(
        failure(&s, Some("m".into()), 0, &none, &none, None, 0)
            .unwrap()
            .0,
        "PodFailurePolicy"
    );
    // Per-index limits replace the global one; the Job fails when every index is settled.
    let per = spec(
        json!({"completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1, "maxFailedIndexes": 1}),
    );
    let failed: BTreeSet<i32> = [1].into();
    assert_eq!(failure(&per, None, 50, &failed, &[0].into(), None, 0), None);
    assert_eq!(
        failure(&per, None, 2, &failed, &[0, 2].into(), None, 0)
            .unwrap()
            .0,
        "FailedIndexes"
    );
    assert_eq!(
        failure(&per, None, 4, &[0, 1].into(), &none, None, 0)
            .unwrap()
            .0,
        "MaxFailedIndexesExceeded"
    );
}

#[test]
fn success_by_completions_indexes_or_work_queue() {
    let none = BTreeSet::new();
    assert!(succeeded(&spec(json!({"completions": 3})), 3, &none, 1));
    assert!(!succeeded(&spec(json!({"completions": 3})), 2, &none, 0));
    let idx = spec(json!({"completionMode": "Indexed", "completions": 3}));
    assert!(!succeeded(&idx, 5, &[0, 1].into(), 0));
    assert!(succeeded(&idx, 3, &[0, 1, 2].into(), 0));
    let queue = spec(json!({"parallelism": 3, "completions": null}));
    assert!(!succeeded(&queue, 1, &none, 2));
    assert!(succeeded(&queue, 1, &none, 0));
}

#[test]
fn scaling_respects_parallelism_and_what_is_left() {
    let none = BTreeSet::new();
    let s = spec(json!({"completions": 5, "parallelism": 2}));
    assert_eq!(scale(&s, 0, 0, &none, &none, &none).create.len(), 2);
    assert_eq!(scale(&s, 1, 3, &none, &none, &none).create.len(), 1);
    assert_eq!(scale(&s, 2, 4, &none, &none, &none).delete_count, 1);
    let idx = spec(json!({"completionMode": "Indexed", "completions": 5, "parallelism": 2}));
    // Index 0 done, 1 running: one more, the lowest pending (2).
    assert_eq!(
        scale(&idx, 1, 1, &[0].into(), &none, &[1].into()).create,
        [Some(2)]
    );
    assert_eq!(
        scale(&idx, 0, 0, &none, &[0].into(), &none).create,
        [Some(1), Some(2)]
    );
    // Surplus: a second pod of an index, a pod of a completed index.
    let mk = |name: &str, index: i32, created: &str| {
        pod(
            json!({"metadata": {"name": name, "creationTimestamp": created,
            "annotations": {COMPLETION_INDEX: index.to_string()}}}),
        )
    };
    let a = mk("a", 1, "2026-01-01T00:00:00Z");
    let b = mk("b", 1, "2026-01-01T00:00:05Z");
    let c = mk("c", 0, "2026-01-01T00:00:01Z");
    let (surplus, kept) = indexed_surplus(&[&b, &a, &c], 5, &[0].into(), &none);
    assert_eq!(
        surplus.iter().map(|p| name_of(p)).collect::<Vec<_>>(),
        ["c", "b"]
    );
    assert_eq!(kept.iter().copied().collect::<Vec<_>>(), [1]);
}

#[test]
fn conditions_keep_their_transition_time() {
    let mut c = Vec::new();
    assert!(set_condition(
        &mut c,
        "Suspended",
        "True",
        "JobSuspended",
        "Job suspended",
        "t1"
    ));
    assert!(!set_condition(
        &mut c,
        "Suspended",
        "True",
        "JobSuspended",
        "again",
        "t2"
    ));
    assert_eq!(c[0]["lastTransitionTime"], "t1");
    assert!(set_condition(
        &mut c,
        "Suspended",
        "False",
        "JobResumed",
        "Job resumed",
        "t3"
    ));
    assert_eq!(c.len(), 1);
    assert!(!condition_true(&c, "Suspended"));
    assert_eq!(condition_reason(&c, "Suspended").unwrap().0, "JobResumed");
}

#[test]
fn indexed_pods_carry_their_index_everywhere() {
    let raw = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "sq", "namespace": "ns", "uid": "u"},
        "spec": {"template": {"metadata": {"labels": {"app": "sq"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "i",
                "env": [{"name": "A", "value": "1"}]}]}}}});
    let job: Job = serde_json::from_value(raw.clone()).unwrap();
    let p = new_pod(&raw, &job, Some(3), Some(1));
    assert_eq!(p["metadata"]["generateName"], "sq-3-");
    assert_eq!(p["metadata"]["finalizers"], json!([TRACKING_FINALIZER]));
    assert_eq!(p["metadata"]["labels"][COMPLETION_INDEX], "3");
    assert_eq!(p["metadata"]["labels"]["app"], "sq");
    assert_eq!(p["metadata"]["annotations"][COMPLETION_INDEX], "3");
    assert_eq!(p["metadata"]["annotations"][INDEX_FAILURE_COUNT], "1");
    assert_eq!(p["spec"]["hostname"], "sq-3");
    assert_eq!(
        p["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "JOB_COMPLETION_INDEX", "value": "3"}])
    );
    assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
    let plain = new_pod(&raw, &job, None, None);
    assert_eq!(plain["metadata"]["generateName"], "sq-");
    assert!(plain["spec"].get("hostname").is_none());
}

#[test]
fn uncounted_pods_round_trip_through_the_status() {
    let status = json!({"uncountedTerminatedPods": {"succeeded": ["b", "a"], "failed": ["c"]}});
    let u = Uncounted::of(&status);
    assert!(u.contains("a") && u.contains("c") && !u.contains("d"));
    assert_eq!(
        u.to_json(),
        json!({"succeeded": ["a", "b"], "failed": ["c"]})
    );
    assert_eq!(Uncounted::default().to_json(), json!({}));
}

#[test]
fn on_failure_restarts_count_against_the_backoff_limit() {
    let restarted = |n: i32| {
        pod(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false,
                "restartCount": n}]}}),
        )
    };
    let mut s = spec(json!({"backoffLimit": 2}));
    let (one, two) = (restarted(1), restarted(2));
    assert!(
        !past_backoff_limit_on_failure(&s, &[&two]),
        "Never: restarts do not count"
    );
    s.on_failure = true;
    assert!(!past_backoff_limit_on_failure(&s, &[&one]));
    assert!(past_backoff_limit_on_failure(&s, &[&two]));
    assert!(past_backoff_limit_on_failure(&s, &[&one, &one]));
    s.backoff_limit = 0;
    assert!(past_backoff_limit_on_failure(&s, &[&one]));
    assert!(!past_backoff_limit_on_failure(&s, &[&restarted(0)]));
}

/// The controller against a real store and API: each finished pod is counted once whichever
/// step of the count a crash interrupted.
mod against_the_api {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{SledStore, Store};

    struct Fixture {
        _dir: tempfile::TempDir,
        client: Client,
        ctl: JobController,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
        crate::api::namespaces::ensure_builtin(store.as_ref())
            .await
            .unwrap();
        let client = Client::new(crate::api::ApiState::with_watch_history(
            store.clone(),
            Arc::new(String::new),
            crate::api::history::DEFAULT_CAPACITY,
        ));
        let informers = Informers::start(store);
        let clock = Arc::new(ManualClock::new(crate::clock::now_ms()));
        let ctl = JobController::new(client.clone(), &informers, clock);
        Fixture {
            _dir: dir,
            client,
            ctl,
        }
    }

    /// Job `j` (one completion) with one succeeded pod, as a crash left them: the pod with or
    /// without its tracking finalizer, and the Job's status `status`.
    async fn crashed(f: &Fixture, finalizer: bool, status: impl Fn(&str) -> Value) -> Value {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "default"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "i"}]}}}});
        let raw = f.client.create(RESOURCE, "default", job).await.unwrap();
        let typed_job: Job = serde_json::from_value(raw.clone()).unwrap();
        let mut pod = new_pod(&raw, &typed_job, None, None);
        if !finalizer {
            pod["metadata"]["finalizers"] = json!([]);
        }
        let pod = f.client.create("pods", "default", pod).await.unwrap();
        let mut done = pod.clone();
        done["status"] = json!({"phase": "Succeeded"});
        f.client
            .update_status("pods", "default", done)
            .await
            .unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let mut with_status = f
            .client
            .get(RESOURCE, "default", "j")
            .await
            .unwrap()
            .unwrap();
        with_status["status"] = status(&uid);
        with_status["status"]["startTime"] = json!(crate::clock::rfc3339(crate::clock::now_ms()));
        f.client
            .update_status(RESOURCE, "default", with_status)
            .await
            .unwrap();
        pod
    }

    async fn reconciled_twice(f: &Fixture) -> Value {
        let key = ObjectKey::new(RESOURCE, "default", "j");
        f.ctl.reconcile(&key).await.unwrap();
        f.ctl.reconcile(&key).await.unwrap();
        f.client
            .get(RESOURCE, "default", "j")
            .await
            .unwrap()
            .unwrap()
    }

    async fn finalizers(f: &Fixture, pod: &Value) -> Value {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let p = f
            .client
            .get("pods", "default", name)
            .await
            .unwrap()
            .unwrap();
        p["metadata"]["finalizers"].clone()
    }

    fn assert_counted_once(j: &Value) {
        assert_eq!(j["status"]["succeeded"], 1, "{j}");
        assert!(j["status"].get("failed").is_none(), "{j}");
        assert_eq!(j["status"]["uncountedTerminatedPods"], json!({}), "{j}");
        assert!(
            condition_true(j["status"]["conditions"].as_array().unwrap(), "Complete"),
            "{j}"
        );
    }

    #[tokio::test]
    async fn a_finished_pod_not_yet_recorded_is_recorded_released_and_counted() {
        let f = fixture().await;
        let pod = crashed(&f, true, |_| json!({})).await;
        assert_counted_once(&reconciled_twice(&f).await);
        assert!(!finalizers(&f, &pod)
            .await
            .to_string()
            .contains(TRACKING_FINALIZER));
    }

    #[tokio::test]
    async fn a_crash_after_recording_releases_and_counts_once() {
        let f = fixture().await;
        let pod = crashed(
            &f,
            true,
            |uid| json!({"uncountedTerminatedPods": {"succeeded": [uid]}}),
        )
        .await;
        assert_counted_once(&reconciled_twice(&f).await);
        assert!(!finalizers(&f, &pod)
            .await
            .to_string()
            .contains(TRACKING_FINALIZER));
    }

    #[tokio::test]
    async fn a_crash_after_releasing_counts_once() {
        let f = fixture().await;
        crashed(
            &f,
            false,
            |uid| json!({"uncountedTerminatedPods": {"succeeded": [uid]}}),
        )
        .await;
        assert_counted_once(&reconciled_twice(&f).await);
    }

    #[tokio::test]
    async fn a_pod_already_counted_is_not_counted_again() {
        let f = fixture().await;
        crashed(&f, false, |_| json!({"succeeded": 1})).await;
        assert_counted_once(&reconciled_twice(&f).await);
    }
}
