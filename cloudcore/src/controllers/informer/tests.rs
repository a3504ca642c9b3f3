use super::*;
use crate::store::{ObjectKey, SledStore};
use serde_json::json;
use tokio::sync::broadcast;

fn pod(name: &str, controller: Option<&str>) -> Value {
    let mut p = json!({"metadata": {"name": name, "namespace": "prod"}});
    if let Some(uid) = controller {
        p["metadata"]["ownerReferences"] = json!([
            {"kind": "Node", "name": "n", "uid": "not-a-controller"},
            {"kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}
        ]);
    }
    p
}

fn event(revision: u64, name: &str, value: Option<Value>) -> Event {
    Event {
        revision,
        key: ObjectKey::new("pods", "prod", name),
        value,
        previous: None,
        shards: vec![],
    }
}

fn names(objs: &[Arc<Value>]) -> Vec<String> {
    let mut out: Vec<String> = objs.iter().map(|o| ns_name(o).1).collect();
    out.sort();
    out
}

#[test]
fn indexes_follow_creates_owner_changes_and_deletes() {
    let inf = Informer::new("pods");
    inf.apply(&event(1, "a", Some(pod("a", Some("u1")))));
    inf.apply(&event(2, "b", Some(pod("b", None))));
    inf.apply(&event(3, "c", Some(pod("c", Some("u2")))));
    assert_eq!(inf.revision(), 3);
    assert_eq!(names(&inf.controlled_by("u1")), ["a"]);
    assert_eq!(names(&inf.orphans("prod")), ["b"]);
    assert_eq!(names(&inf.in_namespace("prod")), ["a", "b", "c"]);
    assert!(inf.orphans("dev").is_empty());
    // A release (controller removed) moves the pod from the owner's index to the orphans; an
    // adoption moves it back.
    inf.apply(&event(4, "a", Some(pod("a", None))));
    assert!(inf.controlled_by("u1").is_empty());
    assert_eq!(names(&inf.orphans("prod")), ["a", "b"]);
    inf.apply(&event(5, "b", Some(pod("b", Some("u1")))));
    assert_eq!(names(&inf.controlled_by("u1")), ["b"]);
    // Candidates for an owner: its own and the orphans, never another owner's.
    let mut cand: Vec<String> = inf
        .claim_candidates("prod", "u1")
        .iter()
        .map(|v| ns_name(v).1)
        .collect();
    cand.sort();
    assert_eq!(cand, ["a", "b"]);
    inf.apply(&event(6, "c", None));
    assert!(inf.controlled_by("u2").is_empty());
    assert!(inf.get("prod", "c").is_none());
    // Deleting what is not cached is harmless.
    inf.apply(&event(7, "zzz", None));
    assert_eq!(inf.revision(), 7);
}

#[test]
fn events_older_than_the_listing_are_skipped_and_other_resources_advance() {
    let inf = Informer::new("pods");
    inf.replace([pod("a", Some("u1"))], 10);
    // A delete at revision 9 was already reflected in (or superseded by) the listing.
    inf.apply(&event(9, "a", None));
    assert!(inf.get("prod", "a").is_some());
    let mut other = event(11, "x", Some(json!({"metadata": {"name": "x"}})));
    other.key = ObjectKey::new("nodes", "", "x");
    inf.apply(&other);
    assert_eq!(inf.revision(), 11, "a node write moves the revision on");
    assert!(inf.get("", "x").is_none(), "but is not cached as a pod");
    // A listing replaces everything, indexes included.
    inf.replace([pod("b", None)], 12);
    assert!(inf.get("prod", "a").is_none());
    assert!(inf.controlled_by("u1").is_empty());
    assert_eq!(names(&inf.orphans("prod")), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn synced_waits_for_the_revision_and_gives_up_with_a_transient_error() {
    let inf = Arc::new(Informer::new("pods"));
    let later = {
        let inf = inf.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            inf.apply(&event(3, "a", Some(pod("a", None))));
        })
    };
    inf.synced(3).await.expect("caught up");
    later.await.unwrap();
    assert!(inf.get("prod", "a").is_some());
    let err = inf.synced(4).await.expect_err("revision 4 never comes");
    assert!(!err.is_permanent(), "{err}");
    assert!(err.to_string().contains("pods"), "{err}");
}

async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
    (dir, store)
}

#[tokio::test]
async fn follows_a_real_store_with_read_your_writes() {
    let (_dir, store) = store().await;
    store
        .create(
            &ObjectKey::new("pods", "prod", "before"),
            pod("before", None),
        )
        .await
        .unwrap();
    let informers = Informers::start(store.clone());
    informers.synced().await.unwrap();
    assert!(informers.pods.get("prod", "before").is_some(), "listed");
    // Every write that returned before `synced` is in the cache after it.
    for i in 0..20 {
        let name = format!("p{i}");
        store
            .create(
                &ObjectKey::new("pods", "prod", &name),
                pod(&name, Some("u1")),
            )
            .await
            .unwrap();
        informers.synced().await.unwrap();
        assert!(informers.pods.get("prod", &name).is_some(), "{name}");
    }
    assert_eq!(informers.pods.controlled_by("u1").len(), 20);
    store
        .delete(&ObjectKey::new("pods", "prod", "p3"), None)
        .await
        .unwrap();
    informers.synced().await.unwrap();
    assert_eq!(informers.pods.controlled_by("u1").len(), 19);
    assert!(informers.replicasets.in_namespace("prod").is_empty());
}

#[tokio::test]
async fn a_lagged_broadcast_relists_and_loses_nothing() {
    let (_dir, store) = store().await;
    let seed = store
        .create(&ObjectKey::new("pods", "prod", "seed"), pod("seed", None))
        .await
        .unwrap();
    // A broadcast too small for the writes below: only the last two events are kept, so the
    // informer must notice the lag and list to see the other eight.
    let (tx, rx) = broadcast::channel(2);
    let inf = Arc::new(Informer::new("pods"));
    let task = tokio::spawn(inf.clone().run(store.clone(), Feed::new(rx, RESYNC)));
    inf.synced(seed.revision).await.unwrap();
    let mut written = Vec::new();
    for i in 0..10 {
        let name = format!("p{i}");
        written.push(
            store
                .create(&ObjectKey::new("pods", "prod", &name), pod(&name, None))
                .await
                .unwrap(),
        );
    }
    for (i, w) in written.iter().enumerate() {
        let _ = tx.send(event(w.revision, &format!("p{i}"), Some(w.value.clone())));
    }
    inf.synced(written.last().unwrap().revision).await.unwrap();
    assert_eq!(inf.orphans("prod").len(), 11, "the relist found every pod");
    drop(tx);
    task.await.unwrap();
}
