//! ConfigMaps and Secrets on the wire: a node gets exactly the ones its pods reference, in the
//! batch of the first pod that needs them, live when they change, after a reconnect when they
//! changed while it was away, and never another node's. The node side is a [`SyncClient`], so
//! the tests see every batch as the hub sends it.

use protocol::messages::{EdgeObject, ObjectKind, ObjectRef, SyncBatch};
use serde_json::{json, Value};
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn has_pod(b: &SyncBatch, name: &str) -> bool {
    b.upserts
        .iter()
        .any(|u| matches!(&u.object, EdgeObject::Pod(p) if p.name == name))
}

fn config_map<'a>(b: &'a SyncBatch, name: &str) -> Option<&'a protocol::config::EdgeConfigMap> {
    b.upserts.iter().find_map(|u| match &u.object {
        EdgeObject::ConfigMap(c) if c.name == name => Some(c),
        _ => None,
    })
}

fn secret<'a>(b: &'a SyncBatch, name: &str) -> Option<&'a protocol::config::EdgeSecret> {
    b.upserts.iter().find_map(|u| match &u.object {
        EdgeObject::Secret(s) if s.name == name => Some(s),
        _ => None,
    })
}

/// Whether a batch mentions the config at all (upsert or delete).
fn mentions(b: &SyncBatch, kind: ObjectKind, name: &str) -> bool {
    b.upserts
        .iter()
        .map(|u| u.object.object_ref())
        .chain(b.deletes.iter().cloned())
        .any(|r| r.kind == kind && r.name == name)
}

async fn create(cloud: &Cloud, plural: &str, body: Value) -> anyhow::Result<Value> {
    let (code, v) = cloud
        .api(
            "POST",
            &format!("/api/v1/namespaces/default/{plural}"),
            Some(body),
        )
        .await?;
    anyhow::ensure!(code == 201, "create {plural} answered {code}: {v}");
    Ok(v)
}

/// `kubectl patch --type=merge`.
fn patch(cloud: &Cloud, kind: &str, name: &str, body: Value) -> anyhow::Result<()> {
    let (ok, out) =
        cloud.kubectl(&["patch", kind, name, "--type=merge", "-p", &body.to_string()])?;
    anyhow::ensure!(ok, "kubectl patch {kind} {name}: {out}");
    Ok(())
}

/// A pod on `node` that reads `secret` into its environment and mounts `config_map`.
fn pod_using(name: &str, node: &str, secret: &str, config_map: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "busybox:local", "command": ["sleep", "300"],
                "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": config_map}}]
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_arrives_with_its_configs_which_then_follow_changes_and_other_nodes_never_see_them(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let a_dir = join_identity(&cloud, "edge-a")?;
    let b_dir = join_identity(&cloud, "edge-b")?;
    let mut a = SyncClient::connect(&cloud, a_dir.path(), "edge-a", 0).await?;
    let mut b = SyncClient::connect(&cloud, b_dir.path(), "edge-b", 0).await?;
    for node in [&mut a, &mut b] {
        let first = node.next_batch(DEADLINE).await?;
        // A fresh node's snapshot: its network settings, its overlay routes and nothing else.
        assert!(
            first.snapshot
                && first.upserts.len() == 2
                && first
                    .upserts
                    .iter()
                    .all(|u| matches!(u.object, EdgeObject::Network(_) | EdgeObject::Overlay(_))),
            "{first:?}"
        );
        node.ack(first.revision).await?;
    }

    create(
        &cloud,
        "secrets",
        json!({"metadata": {"name": "db-creds"}, "stringData": {"password": "hunter2"}}),
    )
    .await?;
    create(
        &cloud,
        "configmaps",
        json!({"metadata": {"name": "settings"}, "data": {"mode": "edge"}}),
    )
    .await?;
    cloud
        .create_pod(pod_using("app", "edge-a", "db-creds", "settings"))
        .await?;
    let seen = a
        .batches_until("pod app on edge-a", DEADLINE, |b| has_pod(b, "app"))
        .await?;
    let (with_pod, before) = seen.split_last().expect("at least one batch");
    for earlier in before {
        assert!(
            !mentions(earlier, ObjectKind::Secret, "db-creds"),
            "a config arrived before the pod that needs it: {earlier:?}"
        );
    }
    let s = secret(with_pod, "db-creds").expect("the secret travels with its pod");
    assert_eq!(s.data["password"], b"hunter2");
    assert_eq!(s.kind, "Opaque");
    let c = config_map(with_pod, "settings").expect("the config map travels with its pod");
    assert_eq!(c.data["mode"], "edge");

    // A change reaches the node live, with a batch revision that does not go backwards.
    patch(
        &cloud,
        "configmap",
        "settings",
        json!({"data": {"mode": "v2"}}),
    )?;
    let seen = a
        .batches_until("the new settings", DEADLINE, |b| {
            config_map(b, "settings").is_some_and(|c| c.data["mode"] == "v2")
        })
        .await?;
    let last = seen.last().expect("a batch");
    assert!(last.revision >= with_pod.revision);
    assert!(!has_pod(last, "app"), "only the config is resent: {last:?}");
    patch(
        &cloud,
        "secret",
        "db-creds",
        json!({"stringData": {"password": "rotated"}}),
    )?;
    a.batches_until("the rotated secret", DEADLINE, |b| {
        secret(b, "db-creds").is_some_and(|s| s.data["password"] == b"rotated")
    })
    .await?;
    // Deleting a referenced config tells the node.
    let (code, v) = cloud
        .api(
            "DELETE",
            "/api/v1/namespaces/default/configmaps/settings",
            None,
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    a.batches_until("the delete of settings", DEADLINE, |b| {
        b.deletes.contains(&ObjectRef {
            kind: ObjectKind::ConfigMap,
            namespace: "default".into(),
            name: "settings".into(),
        })
    })
    .await?;

    // edge-b, connected all along, got none of it. Batches are ordered, so once it has a pod
    // created after all of the above, it has seen everything it would ever be sent about them.
    cloud
        .create_pod(process_pod("marker", "edge-b", &["sleep", "300"]))
        .await?;
    let seen_by_b = b
        .batches_until("pod marker on edge-b", DEADLINE, |x| has_pod(x, "marker"))
        .await?;
    for batch in &seen_by_b {
        assert!(
            !mentions(batch, ObjectKind::Secret, "db-creds")
                && !mentions(batch, ObjectKind::ConfigMap, "settings"),
            "edge-b was sent edge-a's config: {batch:?}"
        );
    }
    let sent = cloud
        .metric("skerry_hub_configs_sent_total")
        .await?
        .unwrap_or(0.0);
    assert!(sent >= 1.0, "configs sent are counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn configs_changed_while_a_node_was_away_arrive_when_it_reconnects() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = join_identity(&cloud, "edge-a")?;
    let mut a = SyncClient::connect(&cloud, dir.path(), "edge-a", 0).await?;
    let first = a.next_batch(DEADLINE).await?;
    a.ack(first.revision).await?;
    create(
        &cloud,
        "configmaps",
        json!({"metadata": {"name": "changes"}, "data": {"v": "1"}}),
    )
    .await?;
    create(
        &cloud,
        "configmaps",
        json!({"metadata": {"name": "stays"}, "data": {"v": "1"}}),
    )
    .await?;
    create(
        &cloud,
        "secrets",
        json!({"metadata": {"name": "goes"}, "stringData": {"password": "x"}}),
    )
    .await?;
    let mut pod = pod_using("app", "edge-a", "goes", "changes");
    pod["spec"]["containers"][0]["envFrom"] = json!([{"configMapRef": {"name": "stays"}}]);
    cloud.create_pod(pod).await?;
    let seen = a
        .batches_until("pod app", DEADLINE, |b| has_pod(b, "app"))
        .await?;
    let acked = seen.last().expect("a batch").revision;
    assert!(config_map(seen.last().expect("a batch"), "stays").is_some());
    a.close();
    cloud.wait_hub_sessions(0, DEADLINE).await?;

    // While the node is away: one config changes, one is deleted, one stays as it was.
    patch(&cloud, "configmap", "changes", json!({"data": {"v": "2"}}))?;
    let (code, v) = cloud
        .api("DELETE", "/api/v1/namespaces/default/secrets/goes", None)
        .await?;
    assert_eq!(code, 200, "{v}");

    let mut again = SyncClient::connect(&cloud, dir.path(), "edge-a", acked).await?;
    let batch = again.next_batch(DEADLINE).await?;
    assert!(!batch.snapshot && batch.revision >= acked, "{batch:?}");
    assert_eq!(
        config_map(&batch, "changes").map(|c| c.data["v"].as_str()),
        Some("2"),
        "{batch:?}"
    );
    assert!(
        mentions(&batch, ObjectKind::Secret, "goes") && secret(&batch, "goes").is_none(),
        "the deleted secret is deleted on the node: {batch:?}"
    );
    assert!(
        !mentions(&batch, ObjectKind::ConfigMap, "stays"),
        "an unchanged config is not resent: {batch:?}"
    );
    assert!(!has_pod(&batch, "app"), "the unchanged pod is not resent");
    Ok(())
}

/// A node's slice larger than one sync frame (here five ConfigMaps of almost 1 MB each) arrives
/// as a snapshot in parts that the edge applies as one: every pod runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_slice_larger_than_a_frame_arrives_as_one_snapshot_in_parts() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let blob = "x".repeat(1_000_000);
    for i in 0..5 {
        create(
            &cloud,
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("big-{i}"), "namespace": "default"},
                "data": {"payload": blob}}),
        )
        .await?;
        create(
            &cloud,
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("reader-{i}"), "namespace": "default"},
                "spec": {"nodeName": "edge-big",
                    "containers": [{"name": "main", "image": "busybox:local", "command": ["sleep", "300"],
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]}],
                    "volumes": [{"name": "cfg", "configMap": {"name": format!("big-{i}")}}]}}),
        )
        .await?;
    }
    // The node joins after everything exists, so its first batch is a snapshot of ~5 MB.
    let _edge = Edge::join_and_start(&cloud, "edge-big", &[]).await?;
    for i in 0..5 {
        cloud.wait_running(&format!("reader-{i}"), DEADLINE).await?;
    }
    // (Before snapshots could be split, encoding this one failed and the node never synced.)
    Ok(())
}
