use super::decide::*;
use super::reconciler::Heartbeats;
use super::*;
use crate::clock;
use serde_json::{json, Value};

const GRACE: u64 = 40_000;
/// 2025-01-01T00:00:00Z in ms.
const T0: u64 = 1_735_689_600_000;

fn node(ready: &str) -> Value {
    json!({"metadata": {"name": "edge-1", "uid": "n1", "creationTimestamp": "2025-01-01T00:00:00Z"},
           "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
           "status": {"conditions": [
               {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
               {"type": "Ready", "status": ready, "reason": "KubeletReady",
                "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}})
}

fn pod(name: &str, tolerations: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
           "spec": {"nodeName": "edge-1", "tolerations": tolerations},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

fn lifecycle_taints(node: &Value) -> Vec<(String, String)> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| is_lifecycle_taint(t))
        .map(|t| (text(t, "/key").to_string(), text(t, "/effect").to_string()))
        .collect()
}

fn unreachable_toleration(seconds: Option<i64>) -> Value {
    let mut t = json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
    if let Some(s) = seconds {
        t["tolerationSeconds"] = json!(s);
    }
    t
}

#[test]
fn a_fresh_ready_node_is_left_alone_and_wakes_when_its_grace_runs_out() {
    let n = node("True");
    let d = decide(&n, &[], T0 + 10_000, T0, GRACE);
    assert_eq!(d.node, None);
    assert_eq!(d.health, Health::Ready);
    assert_eq!(d.wake_at_ms, Some(T0 + GRACE + 1));
}

#[test]
fn a_silent_node_goes_unknown_with_unreachable_taints() {
    let n = node("True");
    let now = T0 + GRACE + 1;
    let d = decide(&n, &[], now, T0, GRACE);
    let updated = d.node.expect("the node changes");
    assert_eq!(d.health, Health::Unreachable);
    for c in updated["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["status"], "Unknown", "{c}");
        assert_eq!(c["reason"], NODE_STATUS_UNKNOWN);
        assert_eq!(c["message"], NODE_STATUS_UNKNOWN_MESSAGE);
        assert_eq!(c["lastTransitionTime"], clock::rfc3339(now));
    }
    // The heartbeat stays what the edge last said.
    assert_eq!(heartbeat_of(&updated), "2025-01-01T00:00:00Z");
    assert_eq!(
        lifecycle_taints(&updated),
        vec![
            (TAINT_UNREACHABLE.to_string(), "NoSchedule".to_string()),
            (TAINT_UNREACHABLE.to_string(), "NoExecute".to_string())
        ]
    );
    let taints = updated["spec"]["taints"].as_array().unwrap();
    assert_eq!(taints[0]["key"], "dedicated", "admin taints are kept");
    let no_exec = taints.iter().find(|t| t["effect"] == "NoExecute").unwrap();
    assert_eq!(no_exec["timeAdded"], clock::rfc3339(now));
    assert!(taints
        .iter()
        .all(|t| t["effect"] == "NoExecute" || t.get("timeAdded").is_none()));
    // Idempotent: later passes change nothing, and keep timeAdded.
    assert_eq!(node_update(&updated, now + 60_000, T0, GRACE), None);
}

#[test]
fn a_node_that_reports_not_ready_gets_not_ready_taints_and_swaps_them_when_silent() {
    let n = node("False");
    let d = decide(&n, &[], T0 + 1_000, T0, GRACE);
    assert_eq!(d.health, Health::NotReady);
    let updated = d.node.unwrap();
    assert_eq!(
        lifecycle_taints(&updated),
        vec![
            (TAINT_NOT_READY.to_string(), "NoSchedule".to_string()),
            (TAINT_NOT_READY.to_string(), "NoExecute".to_string())
        ]
    );
    let silent = node_update(&updated, T0 + GRACE + 5_000, T0, GRACE).unwrap();
    assert_eq!(health_of(&silent), Health::Unreachable);
    assert!(lifecycle_taints(&silent)
        .iter()
        .all(|(k, _)| k == TAINT_UNREACHABLE));
    assert_eq!(lifecycle_taints(&silent).len(), 2);
}

#[test]
fn a_node_ready_again_loses_the_lifecycle_taints_only() {
    let silent = node_update(&node("True"), T0 + GRACE + 1, T0, GRACE).unwrap();
    // The edge reports again: ingest rewrites Ready with a fresh heartbeat.
    let mut back = silent.clone();
    let conds = back["status"]["conditions"].as_array_mut().unwrap();
    conds.retain(|c| c["type"] != "Ready");
    conds.push(
        json!({"type": "Ready", "status": "True", "lastHeartbeatTime": "2025-01-01T00:02:00Z"}),
    );
    let now = T0 + 120_000;
    let d = decide(&back, &[], now, now, GRACE);
    assert_eq!(d.health, Health::Ready);
    let cleaned = d.node.unwrap();
    assert!(lifecycle_taints(&cleaned).is_empty());
    assert_eq!(cleaned["spec"]["taints"][0]["key"], "dedicated");
    let mut bare = cleaned.clone();
    bare["spec"]["taints"] = json!([{"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}]);
    let none_left = node_update(&bare, now, now, GRACE).unwrap();
    assert!(
        none_left["spec"].get("taints").is_none(),
        "an empty list is removed"
    );
}

#[test]
fn a_node_that_never_reported_is_tainted_unreachable_after_the_grace() {
    let n = json!({"metadata": {"name": "edge-1", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {}});
    let updated = node_update(&n, T0 + GRACE + 1, T0, GRACE).unwrap();
    assert_eq!(health_of(&updated), Health::Unreachable);
    assert_eq!(
        updated["status"]["conditions"][0]["reason"],
        NODE_STATUS_UNKNOWN
    );
    assert_eq!(lifecycle_taints(&updated).len(), 2);
}

#[test]
fn pods_are_marked_not_ready_but_only_finite_matching_tolerations_evict() {
    let now = T0 + GRACE + 1;
    let tainted = node_update(&node("True"), now, T0, GRACE).unwrap();
    let plain = pod("plain", json!([]));
    let forever = pod("forever", json!([unreachable_toleration(None)]));
    let short = pod("short", json!([unreachable_toleration(Some(2))]));
    let other_key = pod(
        "other",
        json!([{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]),
    );
    let pods = [&plain, &forever, &short, &other_key];
    let at_taint = decide(&tainted, &pods, now, T0, GRACE);
    assert_eq!(at_taint.node, None);
    let marked: Vec<&str> = at_taint
        .pods
        .iter()
        .filter_map(|a| match a {
            PodAction::MarkNotReady(p) => Some(p.name.as_str()),
            PodAction::Evict { .. } => None,
        })
        .collect();
    assert_eq!(marked, ["plain", "forever", "short", "other"]);
    assert!(at_taint
        .pods
        .iter()
        .all(|a| matches!(a, PodAction::MarkNotReady(_))));
    // timeAdded has Kubernetes' second precision: the taint counts from T0 + 40 s.
    assert_eq!(
        at_taint.wake_at_ms,
        Some(T0 + GRACE + 2_000),
        "wakes for 'short'"
    );

    let later = decide(&tainted, &pods, now + 2_000, T0, GRACE);
    let evicted: Vec<&PodAction> = later
        .pods
        .iter()
        .filter(|a| matches!(a, PodAction::Evict { .. }))
        .collect();
    assert_eq!(
        evicted,
        [&PodAction::Evict {
            pod: PodRef {
                namespace: "default".into(),
                name: "short".into(),
                uid: "uid-short".into()
            },
            taint: TAINT_UNREACHABLE.into()
        }]
    );
    // Hours later still: the pods without a finite toleration stay.
    let much_later = decide(&tainted, &pods, now + 3_600_000, T0, GRACE);
    assert_eq!(
        much_later
            .pods
            .iter()
            .filter(|a| matches!(a, PodAction::Evict { .. }))
            .count(),
        1
    );
}

#[test]
fn eviction_deadlines_count_from_the_taint_time_added_not_from_now() {
    let now = T0 + 600_000;
    let mut tainted = node_update(&node("True"), T0 + GRACE + 1, T0, GRACE).unwrap();
    // Ten minutes after the taint, a restarted controller decides for the first time.
    let short = pod("short", json!([unreachable_toleration(Some(300))]));
    let d = decide(&tainted, &[&short], now, now, GRACE);
    assert!(
        d.pods.iter().any(|a| matches!(a, PodAction::Evict { .. })),
        "{d:?}"
    );
    // A taint without timeAdded gets one, and counts from then.
    for t in tainted["spec"]["taints"].as_array_mut().unwrap() {
        if let Some(o) = t.as_object_mut() {
            o.remove("timeAdded");
        }
    }
    let fixed = node_update(&tainted, now, T0, GRACE).unwrap();
    let no_exec = fixed["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["effect"] == "NoExecute")
        .unwrap()
        .clone();
    assert_eq!(no_exec["timeAdded"], clock::rfc3339(now));
}

#[test]
fn tolerations_match_as_in_kubernetes() {
    let k = TAINT_UNREACHABLE;
    assert!(tolerates(&json!({"operator": "Exists"}), k, "", NO_EXECUTE));
    assert!(tolerates(
        &json!({"key": k, "operator": "Exists"}),
        k,
        "",
        NO_EXECUTE
    ));
    assert!(tolerates(&json!({"key": k}), k, "", NO_EXECUTE));
    assert!(!tolerates(
        &json!({"key": k, "value": "v"}),
        k,
        "",
        NO_EXECUTE
    ));
    assert!(!tolerates(
        &json!({"key": k, "effect": "NoSchedule"}),
        k,
        "",
        NO_EXECUTE
    ));
    assert!(!tolerates(
        &json!({"key": "other", "operator": "Exists"}),
        k,
        "",
        NO_EXECUTE
    ));
    // The shortest finite time wins; a negative one means now.
    let p = pod(
        "p",
        json!([
            unreachable_toleration(None),
            unreachable_toleration(Some(30))
        ]),
    );
    assert_eq!(toleration_ms(&p, k, ""), Some(Some(30_000)));
    let p = pod("p", json!([unreachable_toleration(Some(-5))]));
    assert_eq!(toleration_ms(&p, k, ""), Some(Some(0)));
    let p = pod("p", json!([unreachable_toleration(None)]));
    assert_eq!(toleration_ms(&p, k, ""), Some(None));
    assert_eq!(toleration_ms(&pod("p", json!([])), k, ""), None);
}

#[test]
fn terminating_and_foreign_pods_are_not_touched_and_marking_is_idempotent() {
    let now = T0 + GRACE + 1;
    let tainted = node_update(&node("True"), now, T0, GRACE).unwrap();
    let mut going = pod("going", json!([unreachable_toleration(Some(0))]));
    going["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:50Z");
    let mut elsewhere = pod("elsewhere", json!([unreachable_toleration(Some(0))]));
    elsewhere["spec"]["nodeName"] = json!("edge-2");
    let d = decide(&tainted, &[&going, &elsewhere], now, T0, GRACE);
    assert!(d.pods.is_empty(), "{:?}", d.pods);

    let p = pod("p", json!([]));
    let marked = marked_not_ready(&p, "uid-p", "edge-1", "2025-01-01T00:01:00Z").unwrap();
    assert_eq!(marked["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        marked["status"]["conditions"][0]["lastTransitionTime"],
        "2025-01-01T00:01:00Z"
    );
    assert_eq!(
        marked["status"]["conditions"][0]["reason"],
        POD_NODE_NOT_READY
    );
    assert_eq!(marked_not_ready(&marked, "uid-p", "edge-1", "x"), None);
    // Back: Ready again exactly when every container last reported ready.
    let mut ready = marked.clone();
    ready["status"]["containerStatuses"] = json!([{"name": "c", "ready": true}]);
    let restored = restored_ready(&ready, "2025-01-01T00:02:00Z").unwrap();
    assert_eq!(restored["status"]["conditions"][0]["status"], "True");
    assert!(restored["status"]["conditions"][0].get("reason").is_none());
    assert_eq!(
        restored_ready(&restored, "x"),
        None,
        "nothing left to restore"
    );
    let mut unready = marked.clone();
    unready["status"]["containerStatuses"] = json!([{"name": "c", "ready": false}]);
    let restored = restored_ready(&unready, "x").unwrap();
    assert_eq!(restored["status"]["conditions"][0]["status"], "False");
    assert_eq!(
        restored["status"]["conditions"][0]["reason"],
        "ContainersNotReady"
    );
    assert_eq!(
        restored_ready(&p, "x"),
        None,
        "a pod this controller did not mark"
    );
    assert_eq!(marked_not_ready(&p, "another-uid", "edge-1", "x"), None);
    assert!(decide(&tainted, &[&marked], now, T0, GRACE).pods.is_empty());
}

#[test]
fn heartbeats_are_timed_by_the_controllers_clock() {
    let mut hb = Heartbeats::default();
    let n = node("True");
    assert_eq!(hb.probe("edge-1", &n, 5), 5);
    assert_eq!(
        hb.probe("edge-1", &n, 9),
        5,
        "same heartbeat: first seen at 5"
    );
    let mut newer = n.clone();
    newer["status"]["conditions"][1]["lastHeartbeatTime"] = json!("2020-01-01T00:00:00Z");
    assert_eq!(
        hb.probe("edge-1", &newer, 12),
        12,
        "a changed heartbeat counts from now, even when the edge's clock is behind"
    );
}

/// The reconciler over a real store and the in-process API client, with a clock the test sets.
mod reconciler {
    use super::*;
    use crate::api::client::Client;
    use crate::clock::{Clock, ManualClock};
    use crate::controllers::runner::{Reconciler, Requeue};
    use crate::store::{update_with, Event, ObjectKey, SledStore, Store};
    use std::sync::Arc;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        client: Client,
        clock: Arc<ManualClock>,
        ctl: NodeLifecycleController,
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
        let clock = Arc::new(ManualClock::new(T0));
        let cfg = Config {
            grace_period: Duration::from_millis(GRACE),
            ..Config::default()
        };
        let ctl = NodeLifecycleController::new(client.clone(), cfg, clock.clone());
        Fixture {
            _dir: dir,
            store,
            client,
            clock,
            ctl,
        }
    }

    /// A node as the join flow and ingest leave it: Ready, last heard from at T0.
    fn stored_node() -> Value {
        let mut n = node("True");
        n["apiVersion"] = json!("v1");
        n["kind"] = json!("Node");
        n
    }

    /// A running pod on edge-1 whose containers last reported ready.
    fn stored_pod(name: &str, tolerations: Value) -> Value {
        let mut p = pod(name, tolerations);
        p["apiVersion"] = json!("v1");
        p["kind"] = json!("Pod");
        p["spec"]["containers"] = json!([{"name": "c", "image": "x"}]);
        p["status"]["phase"] = json!("Running");
        p["status"]["containerStatuses"] = json!([{"name": "c", "ready": true, "restartCount": 0,
            "image": "x", "imageID": "", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]);
        p
    }

    fn node_key() -> ObjectKey {
        ObjectKey::new("nodes", "", "edge-1")
    }

    async fn get_pod(c: &Client, name: &str) -> Value {
        c.get("pods", "default", name).await.unwrap().unwrap()
    }

    fn ready_status(obj: &Value) -> String {
        text(ready_condition(obj).unwrap_or(&Value::Null), "/status").to_string()
    }

    async fn events_with_reason(c: &Client, reason: &str) -> Vec<Value> {
        c.list("events", None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    #[tokio::test]
    async fn a_node_heard_on_its_link_stays_ready_without_heartbeats_until_it_goes_quiet() {
        let mut f = fixture().await;
        let liveness = crate::liveness::Liveness::new();
        let cfg = Config {
            grace_period: Duration::from_millis(GRACE),
            ..Config::default()
        };
        f.ctl = NodeLifecycleController::new(f.client.clone(), cfg, f.clock.clone())
            .with_liveness(liveness.clone());
        f.store.create(&node_key(), stored_node()).await.unwrap();
        f.clock.set(T0 + 1_000);
        f.ctl.reconcile(&node_key()).await.unwrap();
        // Long past the grace period since the last heartbeat, but the hub heard the node's
        // keep-alives all along: the node is alive, nothing is written.
        for _ in 0..10 {
            f.clock.advance(Duration::from_millis(GRACE / 2));
            liveness.heard("edge-1", f.clock.now_ms());
            f.ctl.reconcile(&node_key()).await.unwrap();
            let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
            assert_eq!(health_of(&n), Health::Ready);
        }
        // Its link goes quiet: Unknown once the grace period since the last packet has passed.
        let last = f.clock.now_ms();
        f.clock.set(last + GRACE);
        f.ctl.reconcile(&node_key()).await.unwrap();
        let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
        assert_eq!(
            health_of(&n),
            Health::Ready,
            "not before the grace period is over"
        );
        f.clock.set(last + GRACE + 1);
        f.ctl.reconcile(&node_key()).await.unwrap();
        let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
        assert_eq!(health_of(&n), Health::Unreachable);
        assert_eq!(f.ctl.unreachable_nodes(), 1);
    }

    #[tokio::test]
    async fn a_silent_node_goes_unknown_and_tainted_then_evicts_after_the_toleration_by_the_clock()
    {
        let f = fixture().await;
        f.store.create(&node_key(), stored_node()).await.unwrap();
        for p in [
            stored_pod("stays", json!([])),
            stored_pod("leaves", json!([unreachable_toleration(Some(30))])),
        ] {
            let key = ObjectKey::new("pods", "default", text(&p, "/metadata/name"));
            f.store.create(&key, p).await.unwrap();
        }
        assert_eq!(f.ctl.all_keys().await, vec![node_key()]);

        // Heard from: Ready, and back when the grace period runs out (by the controller's clock).
        f.clock.set(T0 + 1_000);
        assert_eq!(
            f.ctl.reconcile(&node_key()).await.unwrap(),
            Requeue::After(Duration::from_millis(GRACE + 1))
        );
        assert_eq!(f.ctl.unreachable_nodes(), 0);
        f.clock.advance(Duration::from_millis(GRACE));
        assert_eq!(
            f.ctl.reconcile(&node_key()).await.unwrap(),
            Requeue::After(Duration::from_millis(1)),
            "not yet: the grace period is not over"
        );
        let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
        assert_eq!(health_of(&n), Health::Ready);

        // Silent past the grace period: Unknown, tainted, pods marked not ready, none evicted.
        f.clock.advance(Duration::from_millis(1));
        let silent_at = f.clock.now_ms();
        let requeue = f.ctl.reconcile(&node_key()).await.unwrap();
        let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
        assert_eq!(health_of(&n), Health::Unreachable, "{n}");
        for c in n["status"]["conditions"].as_array().unwrap() {
            assert_eq!(c["status"], "Unknown", "{c}");
            assert_eq!(c["reason"], NODE_STATUS_UNKNOWN);
        }
        assert_eq!(heartbeat_of(&n), "2025-01-01T00:00:00Z");
        assert_eq!(
            lifecycle_taints(&n),
            vec![
                (TAINT_UNREACHABLE.to_string(), "NoSchedule".to_string()),
                (TAINT_UNREACHABLE.to_string(), "NoExecute".to_string())
            ]
        );
        assert_eq!(
            n["spec"]["taints"][0]["key"], "dedicated",
            "admin taints kept"
        );
        let time_added = n["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["effect"] == "NoExecute")
            .unwrap()["timeAdded"]
            .clone();
        assert_eq!(time_added, clock::rfc3339(silent_at));
        assert_eq!(f.ctl.unreachable_nodes(), 1);
        for name in ["stays", "leaves"] {
            let p = get_pod(&f.client, name).await;
            assert_eq!(ready_status(&p), "False", "{p}");
            assert!(p.pointer("/metadata/deletionTimestamp").is_none(), "{p}");
        }
        assert_eq!(events_with_reason(&f.client, "NodeNotReady").await.len(), 3);
        // timeAdded has second precision: 'leaves' goes 30 s after the second it was tainted in.
        let evict_at = (silent_at / 1000) * 1000 + 30_000;
        assert_eq!(
            requeue,
            Requeue::After(Duration::from_millis(evict_at - silent_at))
        );

        // Idempotent before the deadline: nothing new is written.
        let rev = f.store.revision();
        f.clock.set(evict_at - 1);
        assert_eq!(
            f.ctl.reconcile(&node_key()).await.unwrap(),
            Requeue::After(Duration::from_millis(1))
        );
        assert_eq!(f.store.revision(), rev, "nothing to write");

        // The toleration runs out: 'leaves' is deleted gracefully, 'stays' stays.
        f.clock.set(evict_at);
        assert_eq!(f.ctl.reconcile(&node_key()).await.unwrap(), Requeue::No);
        let leaves = get_pod(&f.client, "leaves").await;
        assert!(
            leaves.pointer("/metadata/deletionTimestamp").is_some(),
            "{leaves}"
        );
        let stays = get_pod(&f.client, "stays").await;
        assert!(stays.pointer("/metadata/deletionTimestamp").is_none());
        let evictions = events_with_reason(&f.client, EVICTION_REASON).await;
        assert_eq!(evictions.len(), 1, "{evictions:?}");
        assert_eq!(evictions[0]["involvedObject"]["name"], "leaves");

        // The edge reports again (as ingest writes it): Ready, untainted, 'stays' Ready again.
        f.clock.advance(Duration::from_secs(60));
        let back_at = clock::rfc3339(f.clock.now_ms());
        update_with(f.store.as_ref(), &node_key(), |cur| {
            let mut v = cur.clone();
            let mut conds: Vec<Value> = v["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["type"] != "Ready" && c["reason"] != NODE_STATUS_UNKNOWN)
                .cloned()
                .collect();
            conds.push(
                json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": back_at, "lastTransitionTime": back_at}),
            );
            v["status"]["conditions"] = json!(conds);
            Some(v)
        })
        .await
        .unwrap();
        assert_eq!(
            f.ctl.reconcile(&node_key()).await.unwrap(),
            Requeue::After(Duration::from_millis(GRACE + 1))
        );
        let n = f.client.get("nodes", "", "edge-1").await.unwrap().unwrap();
        assert_eq!(health_of(&n), Health::Ready);
        assert!(lifecycle_taints(&n).is_empty(), "{n}");
        assert_eq!(n["spec"]["taints"][0]["key"], "dedicated");
        assert_eq!(ready_status(&get_pod(&f.client, "stays").await), "True");
        assert_eq!(f.ctl.unreachable_nodes(), 0);
    }

    #[tokio::test]
    async fn pod_events_update_the_index_and_wake_a_node_only_when_it_is_not_ready() {
        let f = fixture().await;
        f.store.create(&node_key(), stored_node()).await.unwrap();
        f.ctl.all_keys().await;
        let ev = |value: Option<Value>, previous: Option<Value>| Event {
            revision: 1,
            key: ObjectKey::new("pods", "default", "late"),
            value,
            previous,
            shards: vec![],
        };
        let late = stored_pod("late", json!([unreachable_toleration(Some(0))]));
        let key = ObjectKey::new("pods", "default", "late");
        f.store.create(&key, late.clone()).await.unwrap();
        // Ready (and never reconciled yet): a pod event does not concern the node.
        assert!(f
            .ctl
            .keys_for_event(&ev(Some(late.clone()), None))
            .await
            .is_empty());
        f.ctl.reconcile(&node_key()).await.unwrap();
        f.clock.advance(Duration::from_millis(GRACE + 1));
        f.ctl.reconcile(&node_key()).await.unwrap();
        // The pod came in by its event, not by a listing: the silent node found and evicted it.
        let p = get_pod(&f.client, "late").await;
        assert!(p.pointer("/metadata/deletionTimestamp").is_some(), "{p}");
        assert_eq!(
            f.ctl.keys_for_event(&ev(Some(p.clone()), Some(late))).await,
            vec![node_key()],
            "a pod of a node that is not Ready wakes it"
        );
        assert_eq!(
            f.ctl.keys_for_event(&ev(None, Some(p))).await,
            vec![node_key()]
        );
        // Removed from the index with its delete: nothing is read for it any more.
        assert!(f.ctl.pods_on("edge-1").await.unwrap().is_empty());
        let gone = Event {
            revision: 2,
            key: node_key(),
            value: None,
            previous: None,
            shards: vec![],
        };
        assert_eq!(f.ctl.unreachable_nodes(), 1);
        assert_eq!(f.ctl.keys_for_event(&gone).await, vec![node_key()]);
        assert_eq!(
            f.ctl.unreachable_nodes(),
            0,
            "a deleted node is not counted"
        );
    }
}

#[test]
fn true_pressure_and_network_conditions_taint_no_schedule_and_clear_when_they_end() {
    let mut n = node("True");
    n["status"]["conditions"][0]["status"] = json!("True");
    n["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "NetworkUnavailable", "status": "True"}));
    let tainted = taints_update(&n, T0).expect("taints added");
    let mut got = lifecycle_taints(&tainted);
    got.sort();
    assert_eq!(
        got,
        [
            (
                "node.kubernetes.io/memory-pressure".to_string(),
                "NoSchedule".to_string()
            ),
            (
                "node.kubernetes.io/network-unavailable".to_string(),
                "NoSchedule".to_string()
            ),
        ]
    );
    assert_eq!(
        tainted["spec"]["taints"][0]["key"], "dedicated",
        "admin taints kept"
    );
    assert!(taints_update(&tainted, T0 + 1).is_none(), "idempotent");
    // The pressure ends: its taint goes, the other stays.
    let mut relieved = tainted.clone();
    relieved["status"]["conditions"][0]["status"] = json!("False");
    let after = taints_update(&relieved, T0 + 2).expect("one taint removed");
    assert_eq!(
        lifecycle_taints(&after),
        [(
            "node.kubernetes.io/network-unavailable".to_string(),
            "NoSchedule".to_string()
        )]
    );
}
