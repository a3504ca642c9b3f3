//! Services, EndpointSlices and the node's network settings on the wire: every v5 node gets
//! every Service in its snapshot and each change as a delta, with its own pod CIDR; a node
//! that reconnects gets only what changed while it was away; a v5 node never gets a kind it
//! cannot decode. The node side is a [`SyncClient`], so the tests see every batch as sent.

use protocol::messages::{EdgeObject, ObjectKind, SyncBatch};
use protocol::service::{ClusterNetwork, EdgeService, ServiceKind};
use serde_json::json;
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn service<'a>(b: &'a SyncBatch, name: &str) -> Option<&'a EdgeService> {
    b.upserts.iter().find_map(|u| match &u.object {
        EdgeObject::Service(s) if s.name == name => Some(s),
        _ => None,
    })
}

fn settings(b: &SyncBatch) -> Option<&ClusterNetwork> {
    b.upserts.iter().find_map(|u| match &u.object {
        EdgeObject::Network(n) => Some(n),
        _ => None,
    })
}

fn deletes(b: &SyncBatch, kind: ObjectKind, name: &str) -> bool {
    b.deletes.iter().any(|r| r.kind == kind && r.name == name)
}

async fn create_service(cloud: &Cloud, name: &str, port: u16) -> anyhow::Result<()> {
    let (code, v) = cloud
        .api(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": 8080}]}})),
        )
        .await?;
    anyhow::ensure!(code == 201, "create service {name}: {code} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_gets_every_service_with_its_own_pod_cidr_and_resumes_from_its_ack(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let (dir_a, dir_b) = (private_temp_dir()?, private_temp_dir()?);
    for (dir, node) in [(&dir_a, "svc-a"), (&dir_b, "svc-b")] {
        let (ok, out) = cloud.join_only(dir.path(), node)?;
        anyhow::ensure!(ok, "join {node}: {out}");
    }
    create_service(&cloud, "web", 80).await?;

    // Fresh nodes: one snapshot with the settings first and the Service.
    let mut a = SyncClient::connect(&cloud, dir_a.path(), "svc-a", 0).await?;
    let snap = a.next_batch(DEADLINE).await?;
    assert!(snap.snapshot && !snap.more, "{snap:?}");
    let net_a = settings(&snap)
        .expect("the node's network settings")
        .clone();
    assert!(
        matches!(snap.upserts[0].object, EdgeObject::Network(_)),
        "settings go first, before anything whose sandbox needs the CNI configuration"
    );
    assert_eq!(net_a.node, "svc-a");
    assert_eq!(net_a.cluster_domain, "cluster.local");
    // The overlay routes: the cluster CIDR, which holds the node's own pod CIDR.
    let overlay = snap
        .upserts
        .iter()
        .find_map(|u| match &u.object {
            EdgeObject::Overlay(o) => Some(o.clone()),
            _ => None,
        })
        .expect("the node's overlay routes");
    assert_eq!(overlay.node, "svc-a");
    let own = net_a.pod_cidr.as_deref().expect("a pod CIDR");
    let own = protocol::overlay::Cidr::parse(own)?;
    assert!(
        overlay.cluster_cidrs.iter().any(|c| {
            let c = protocol::overlay::Cidr::parse(c).expect("a CIDR");
            c.prefix() <= own.prefix() && c.contains(own.network())
        }),
        "{overlay:?} holds {own}"
    );
    let web = service(&snap, "web").expect("the Service");
    assert!(matches!(&web.kind, ServiceKind::ClusterIp(ips) if ips.len() == 1));
    assert_eq!(web.ports[0].port, 80);
    a.ack(snap.revision).await?;

    let mut b = SyncClient::connect(&cloud, dir_b.path(), "svc-b", 0).await?;
    let snap_b = b.next_batch(DEADLINE).await?;
    let net_b = settings(&snap_b).expect("settings of b").clone();
    assert!(
        service(&snap_b, "web").is_some(),
        "every node gets every Service"
    );
    let (cidr_a, cidr_b) = (net_a.pod_cidr.clone(), net_b.pod_cidr.clone());
    assert!(
        cidr_a.is_some() && cidr_b.is_some(),
        "{cidr_a:?} {cidr_b:?}"
    );
    assert_ne!(cidr_a, cidr_b, "each node has a pod CIDR of its own");
    let node_a = cloud.get("/api/v1/nodes/svc-a").await?.expect("node a");
    assert_eq!(node_a["spec"]["podCIDR"].as_str(), cidr_a.as_deref());
    assert_eq!(node_a["spec"]["podCIDRs"][0].as_str(), cidr_a.as_deref());
    b.ack(snap_b.revision).await?;

    // A change reaches both as a delta.
    let (ok, out) = cloud.kubectl(&[
        "patch",
        "service",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/port","value":81}]"#,
    ])?;
    anyhow::ensure!(ok, "patch: {out}");
    let mut acked_a = 0;
    for (client, acked) in [(&mut a, &mut acked_a), (&mut b, &mut 0)] {
        let seen = client
            .batches_until("the changed Service", DEADLINE, |b| {
                service(b, "web").is_some_and(|s| s.ports[0].port == 81)
            })
            .await?;
        assert!(seen.iter().all(|b| !b.snapshot), "{seen:?}");
        *acked = seen.last().map_or(0, |b| b.revision);
    }

    // Away: a new Service and a delete while node a is disconnected; on return, deltas of
    // exactly those (and its settings), no snapshot.
    drop(a);
    create_service(&cloud, "db", 5432).await?;
    let (code, _) = cloud
        .api("DELETE", "/api/v1/namespaces/default/services/web", None)
        .await?;
    anyhow::ensure!(code == 200, "delete answered {code}");
    let mut a = SyncClient::connect(&cloud, dir_a.path(), "svc-a", acked_a).await?;
    let seen = a
        .batches_until("the delete of web", DEADLINE, |b| {
            deletes(b, ObjectKind::Service, "web")
        })
        .await?;
    assert!(seen.iter().all(|b| !b.snapshot), "{seen:?}");
    assert!(seen.iter().any(|b| service(b, "db").is_some()), "{seen:?}");
    assert!(
        seen.iter().any(|b| settings(b).is_some()),
        "settings each session"
    );
    assert!(
        seen.iter().all(|b| service(b, "web").is_none()),
        "web went before it was sent again: {seen:?}"
    );
    let revisions: Vec<u64> = seen.iter().map(|b| b.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "{revisions:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_one_version_behind_never_gets_a_kind_it_cannot_decode() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "old")?;
    anyhow::ensure!(ok, "join: {out}");
    create_service(&cloud, "web", 80).await?;
    let mut old =
        SyncClient::connect_speaking(&cloud, dir.path(), "old", 0, protocol::OLDEST_EDGE_VERSION)
            .await?
            .map_err(|r| anyhow::anyhow!("v6 refused: {r}"))?;
    // Services and its network settings, and nothing its version cannot decode.
    let snap = old.next_batch(DEADLINE).await?;
    assert!(snap.snapshot);
    assert!(
        snap.upserts.iter().all(|u| u
            .object
            .object_ref()
            .kind
            .known_to(protocol::OLDEST_EDGE_VERSION)),
        "{snap:?}"
    );
    assert!(service(&snap, "web").is_some(), "{snap:?}");
    assert!(settings(&snap).is_some(), "{snap:?}");
    old.ack(snap.revision).await?;
    cloud
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "old", "containers": [{"name": "c", "image": "busybox:local"}]}}))
        .await?;
    let seen = old
        .batches_until("the pod", DEADLINE, |b| {
            b.upserts
                .iter()
                .any(|u| matches!(&u.object, EdgeObject::Pod(p) if p.name == "p"))
        })
        .await?;
    for b in &seen {
        assert!(
            b.upserts
                .iter()
                .map(|u| u.object.object_ref())
                .chain(b.deletes.iter().cloned())
                .all(|r| r.kind.known_to(protocol::OLDEST_EDGE_VERSION)),
            "{b:?}"
        );
    }
    Ok(())
}
