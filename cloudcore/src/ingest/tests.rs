//! Tests of the ingest against a real store through the in-process API.

use super::*;
use crate::api::client::Propagation;
use crate::api::ApiState;
use crate::store::{SledStore, Store};
use std::collections::BTreeMap;

async fn api(dir: &std::path::Path) -> ApiState {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, crate::projection::shard).unwrap());
    crate::api::namespaces::ensure_builtin(store.as_ref())
        .await
        .unwrap();
    ApiState::new(store, Arc::new(String::new))
}

fn node_report(ready: bool) -> NodeStatus {
    let (reason, message) = if ready {
        ("KubeletReady", "")
    } else {
        ("RuntimeNotResponding", "runtime down")
    };
    NodeStatus {
        node: "edge-1".into(),
        conditions: vec![NodeCondition::new(
            NodeConditionKind::Ready,
            ready,
            reason,
            message,
        )],
        addresses: vec![("InternalIP".into(), "10.0.0.5".into())],
        capacity: BTreeMap::from([("pods".into(), "110".into())]),
        allocatable: BTreeMap::from([("pods".into(), "110".into())]),
        info: NodeInfo::default(),
    }
}

fn pod_report(uid: &str, removed: bool) -> PodStatus {
    PodStatus {
        node: "edge-1".into(),
        namespace: "default".into(),
        name: "web".into(),
        uid: uid.into(),
        phase: PodPhase::Running,
        conditions: vec![],
        containers: vec![],
        pod_ip: "10.1.0.7".into(),
        host_ip: "10.0.0.5".into(),
        start_time_ms: 1_700_000_000_000,
        reason: String::new(),
        message: String::new(),
        removed,
        init_containers: vec![],
    }
}

async fn bound_pod(client: &Client, finalizers: Value) -> String {
    let created = client
        .create(
            "pods",
            "default",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web", "namespace": "default", "finalizers": finalizers},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        )
        .await
        .unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    client
        .bind("default", "web", &uid, rv, "edge-1")
        .await
        .unwrap();
    uid
}

#[tokio::test(start_paused = true)]
async fn a_report_that_cannot_be_written_is_retried_until_it_is_never_dropped() {
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let started = tokio::time::Instant::now();
    let outcome = until_durable("t", || async {
        // Far longer than any fixed retry budget: a minute of store failures.
        if attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 20 {
            Err(ApplyError::Write(ApiError::Internal("store down".into())))
        } else {
            Ok(Outcome::Applied)
        }
    })
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Applied);
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 21);
    // Backed off (up to RETRY_MAX apart), not spun.
    assert!(started.elapsed() > Duration::from_secs(60));
    // Final answers are not retried.
    let once = std::sync::atomic::AtomicU32::new(0);
    let invalid = until_durable("t", || async {
        once.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(ApplyError::Invalid("bad".into()))
    })
    .await;
    assert!(matches!(invalid, Err(ApplyError::Invalid(_))));
    assert_eq!(once.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn node_reports_go_through_the_status_path_in_sequence_order() {
    let dir = tempfile::tempdir().unwrap();
    let state = api(dir.path()).await;
    let ingest = Client::with_identity(state.clone(), identity::INGEST);
    let admin = Client::new(state);
    admin
        .create(
            "nodes",
            "",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}}),
        )
        .await
        .unwrap();
    let applied = apply_node(
        &ingest,
        "edge-1",
        NodeReport {
            seq: StatusSeq::new(0, 5),
            observed_ms: 1_000,
            edge_version: protocol::PROTOCOL_VERSION,
            status: &node_report(true),
        },
    )
    .await;
    assert_eq!(applied.unwrap(), Outcome::Applied);
    let node = admin.get("nodes", "", "edge-1").await.unwrap().unwrap();
    assert_eq!(status_seq(&node), StatusSeq::new(0, 5));
    assert_eq!(node["status"]["conditions"][0]["status"], "True");
    assert_eq!(node["status"]["addresses"][0]["address"], "10.0.0.5");
    // An older report (redelivered after a reconnect) changes nothing.
    let stale = apply_node(
        &ingest,
        "edge-1",
        NodeReport {
            seq: StatusSeq::new(0, 4),
            observed_ms: 2_000,
            edge_version: protocol::PROTOCOL_VERSION,
            status: &node_report(false),
        },
    )
    .await;
    assert_eq!(stale.unwrap(), Outcome::Ignored("stale node report"));
    // The API itself refuses to move the guard backwards, whoever computed the write.
    let mut old = admin.get("nodes", "", "edge-1").await.unwrap().unwrap();
    set_status_seq(&mut old, StatusSeq::new(0, 3));
    let refused = ingest.update_status("nodes", "", old.clone()).await;
    assert!(
        matches!(refused, Err(ApiError::Conflict { .. })),
        "{refused:?}"
    );
    // Another writer's status write neither moves nor drops it.
    set_status_seq(&mut old, StatusSeq::new(0, 99));
    admin.update_status("nodes", "", old).await.unwrap();
    let node = admin.get("nodes", "", "edge-1").await.unwrap().unwrap();
    assert_eq!(status_seq(&node), StatusSeq::new(0, 5));
    let newer = apply_node(
        &ingest,
        "edge-1",
        NodeReport {
            seq: StatusSeq::new(0, 6),
            observed_ms: 3_000,
            edge_version: protocol::PROTOCOL_VERSION,
            status: &node_report(false),
        },
    )
    .await;
    assert_eq!(newer.unwrap(), Outcome::Applied);
    let node = admin.get("nodes", "", "edge-1").await.unwrap().unwrap();
    assert_eq!(node["status"]["conditions"][0]["status"], "False");
    assert_eq!(node["status"]["conditions"][0]["message"], "runtime down");
    let gone = apply_node(
        &ingest,
        "edge-2",
        NodeReport {
            seq: StatusSeq::new(0, 1),
            observed_ms: 1,
            edge_version: protocol::PROTOCOL_VERSION,
            status: &node_report(true),
        },
    )
    .await;
    assert_eq!(
        gone.unwrap(),
        Outcome::Ignored("node object does not exist (deleted?)")
    );
}

#[test]
fn node_conditions_keep_transition_times_drop_unknowns_and_flag_old_edges() {
    let mut s = node_report(true);
    s.conditions.push(NodeCondition::new(
        NodeConditionKind::DiskPressure,
        true,
        "KubeletHasDiskPressure",
        "nodefs.available 3% < 10%",
    ));
    let old = json!([
        {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "DiskPressure", "status": "False", "lastTransitionTime": "2025-01-01T00:00:00Z"},
        {"type": "MemoryPressure", "status": "Unknown", "reason": NODE_STATUS_UNKNOWN},
        {"type": "example.com/Custom", "status": "True"},
    ]);
    let r = NodeReport {
        seq: StatusSeq::new(0, 1),
        observed_ms: 1_735_776_000_000,
        edge_version: protocol::OLDEST_EDGE_VERSION,
        status: &s,
    };
    let out = node_conditions(Some(&old), &r);
    let get = |t: &str| out.iter().find(|c| c["type"] == t).cloned();
    let ready = get("Ready").unwrap();
    assert_eq!(
        ready["lastTransitionTime"], "2025-01-01T00:00:00Z",
        "unchanged"
    );
    let disk = get("DiskPressure").unwrap();
    assert_eq!(disk["status"], "True");
    assert_eq!(
        disk["lastTransitionTime"], "2025-01-02T00:00:00Z",
        "it changed"
    );
    assert_eq!(disk["message"], "nodefs.available 3% < 10%");
    assert!(
        get("MemoryPressure").is_none(),
        "the lifecycle controller's Unknown is gone"
    );
    assert!(
        get("example.com/Custom").is_some(),
        "others' conditions stay"
    );
    let skew = get(EDGE_VERSION_SKEW).unwrap();
    assert_eq!(skew["status"], "True");
    assert!(skew["message"]
        .as_str()
        .unwrap()
        .contains("upgrade edgecore"));
    let current = NodeReport {
        edge_version: protocol::PROTOCOL_VERSION,
        ..r
    };
    let out = node_conditions(Some(&old), &current);
    let skew = out.iter().find(|c| c["type"] == EDGE_VERSION_SKEW).unwrap();
    assert_eq!(skew["status"], "False");
}

#[tokio::test]
async fn pod_reports_apply_only_to_the_bound_pod_and_removal_is_the_apis_delete() {
    let dir = tempfile::tempdir().unwrap();
    let state = api(dir.path()).await;
    let ingest = Client::with_identity(state.clone(), identity::INGEST);
    let admin = Client::new(state);
    let uid = bound_pod(&admin, json!(["example.com/hold"])).await;
    assert_eq!(
        apply_pod(&ingest, StatusSeq::new(0, 10), &pod_report(&uid, false))
            .await
            .unwrap(),
        Outcome::Applied
    );
    let pod = admin.get("pods", "default", "web").await.unwrap().unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["podIP"], "10.1.0.7");
    assert_eq!(
        apply_pod(&ingest, StatusSeq::new(0, 9), &pod_report(&uid, false))
            .await
            .unwrap(),
        Outcome::Ignored("stale pod report")
    );
    assert_eq!(
        apply_pod(
            &ingest,
            StatusSeq::new(0, 11),
            &pod_report("someone-else", false)
        )
        .await
        .unwrap(),
        Outcome::Ignored("report is for an older pod of the same name")
    );
    let mut elsewhere = pod_report(&uid, false);
    elsewhere.node = "edge-2".into();
    assert!(matches!(
        apply_pod(&ingest, StatusSeq::new(0, 12), &elsewhere).await,
        Err(ApplyError::Invalid(_))
    ));
    // "Removed" for a pod nobody deletes is refused.
    assert!(matches!(
        apply_pod(&ingest, StatusSeq::new(0, 13), &pod_report(&uid, true)).await,
        Err(ApplyError::Invalid(_))
    ));
    admin
        .delete("pods", "default", "web", Propagation::Background, None)
        .await
        .unwrap();
    // The edge stopped it: its finalizer holds the object with a zero grace period ...
    assert_eq!(
        apply_pod(&ingest, StatusSeq::new(0, 14), &pod_report(&uid, true))
            .await
            .unwrap(),
        Outcome::Applied
    );
    let held = admin.get("pods", "default", "web").await.unwrap().unwrap();
    assert_eq!(held["metadata"]["deletionGracePeriodSeconds"], 0);
    // ... and the removal of the last finalizer deletes it (the API's rule).
    admin
        .update_with("pods", "default", "web", |p| {
            let mut p = p.clone();
            p["metadata"]["finalizers"] = json!([]);
            Some(p)
        })
        .await
        .unwrap();
    assert!(admin.get("pods", "default", "web").await.unwrap().is_none());
    assert_eq!(
        apply_pod(&ingest, StatusSeq::new(0, 15), &pod_report(&uid, true))
            .await
            .unwrap(),
        Outcome::Ignored("pod does not exist (deleted?)")
    );
}

#[tokio::test]
async fn a_removed_pod_without_finalizers_is_gone_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = api(dir.path()).await;
    let ingest = Client::with_identity(state.clone(), identity::INGEST);
    let admin = Client::new(state);
    let uid = bound_pod(&admin, json!([])).await;
    admin
        .delete("pods", "default", "web", Propagation::Background, None)
        .await
        .unwrap();
    assert!(admin.get("pods", "default", "web").await.unwrap().is_some());
    assert_eq!(
        apply_pod(&ingest, StatusSeq::new(0, 1), &pod_report(&uid, true))
            .await
            .unwrap(),
        Outcome::Applied
    );
    assert!(admin.get("pods", "default", "web").await.unwrap().is_none());
}
