//! Kubernetes' version skew for edges: a cloud serves an edge one protocol version behind it
//! (the edge is upgraded after its cloud) on both channels, the QUIC link and the MQTT status
//! reports, and says so in the node's `EdgeVersionSkew` condition; a newer edge, or one two
//! versions behind, is refused by name. The old edge is played from the previous version's
//! messages (`protocol::compat::v7`: today's shapes but for pods, which had no init
//! containers), and it is never sent an object kind or shape it cannot decode.

use anyhow::Result;
use protocol::compat::v7;
use protocol::messages::Reject;
use protocol::status::{seal_encoded, NodeInfo};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use skerry_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

use skerry_tests::condition_of as condition;

fn old_heartbeat(node: &str, seq: u64, version: u32) -> Result<Vec<u8>> {
    use protocol::status::{
        NodeCondition, NodeConditionKind, NodeStatus, StatusBody, StatusReport,
    };
    let report = StatusReport {
        protocol_version: version,
        seq,
        observed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
        body: StatusBody::Node(NodeStatus {
            node: node.into(),
            conditions: vec![NodeCondition::new(
                NodeConditionKind::Ready,
                true,
                "KubeletReady",
                "edgecore is posting ready status",
            )],
            addresses: vec![("InternalIP".into(), "127.0.0.1".into())],
            capacity: BTreeMap::from([("pods".into(), "7".into())]),
            allocatable: BTreeMap::from([("pods".into(), "7".into())]),
            info: NodeInfo::default(),
        }),
    };
    Ok(protocol::codec::encode(&report)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_one_version_behind_is_served_and_flagged_and_others_are_refused() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "old-edge")?;
    assert!(ok, "join: {out}");

    // An ordinary pod: a v7 edge gets it in v7's shape (pods without init containers).
    cloud
        .create_pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "interactive"},
            "spec": {"nodeName": "old-edge", "containers": [{
                "name": "main", "image": "busybox", "command": ["sh"],
                "stdin": true, "stdinOnce": true, "tty": true}]}
        }))
        .await?;

    // A pod with init containers: a v7 edge would run its app container without them, so the
    // hub withholds it (and counts it) rather than send it.
    cloud
        .create_pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "flashed"},
            "spec": {"nodeName": "old-edge",
                "initContainers": [{"name": "flash", "image": "busybox", "command": ["true"]}],
                "containers": [{"name": "main", "image": "busybox", "command": ["sh"]}]}
        }))
        .await?;

    // The link: a v7 Hello is welcomed and gets its network settings and the pod in v7's
    // shapes (the client decodes the hub's messages as v7's and fails on anything else);
    // v9 (newer than the cloud) and v6 are refused.
    let session =
        SyncClient::connect_speaking(&cloud, dir.path(), "old-edge", 0, v7::VERSION).await?;
    let mut session = session.map_err(|e| anyhow::anyhow!("v7 refused: {e:?}"))?;
    let snapshot = session.next_batch(DEADLINE).await?;
    assert!(snapshot.snapshot, "{snapshot:?}");
    assert!(
        snapshot
            .upserts
            .iter()
            .any(|u| matches!(u.object, protocol::messages::EdgeObject::Network(_))),
        "{snapshot:?}"
    );
    let pod = snapshot
        .upserts
        .iter()
        .find_map(|u| match &u.object {
            protocol::messages::EdgeObject::Pod(p) if p.name == "interactive" => Some(p),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no pod in the v7 snapshot: {snapshot:?}"))?;
    let c = &pod.containers[0];
    assert_eq!((c.name.as_str(), c.image.as_str()), ("main", "busybox"));
    assert!(c.stdin && c.stdin_once && c.tty, "v7 carries them: {c:?}");
    assert!(
        !snapshot.upserts.iter().any(|u| matches!(&u.object,
            protocol::messages::EdgeObject::Pod(p) if p.name == "flashed")),
        "a pod with init containers was sent to a v7 edge: {snapshot:?}"
    );
    let withheld = cloud
        .metric("skerry_hub_pods_withheld_total{reason=\"init_containers\"}")
        .await?
        .unwrap_or(0.0);
    assert!(withheld >= 1.0, "withheld pods are counted: {withheld}");
    drop(session);
    for version in [
        protocol::PROTOCOL_VERSION + 1,
        protocol::OLDEST_EDGE_VERSION - 1,
    ] {
        match SyncClient::connect_speaking(&cloud, dir.path(), "old-edge", 0, version).await? {
            Err(Reject::VersionMismatch { edge, cloud: c }) => {
                assert_eq!((edge, c), (version, protocol::PROTOCOL_VERSION));
            }
            other => panic!(
                "v{version}: expected VersionMismatch, got {:?}",
                other.err()
            ),
        }
    }

    // The status channel: a v7 heartbeat, sealed as a v7 edge seals it.
    let key = std::fs::read(dir.path().join("pki/report.key"))?;
    let opts = skerry_tests::mqtt::node_options(dir.path(), "old-edge", cloud.mqtt_port)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let topic = protocol::topics::node_status("old-edge");
    let sealed = seal_encoded(&key, &topic, old_heartbeat("old-edge", 1, v7::VERSION)?)?;
    client
        .publish(topic.clone(), QoS::AtLeastOnce, false, sealed)
        .await?;
    let node = cloud
        .wait_for(
            "the v7 heartbeat applied",
            "/api/v1/nodes/old-edge",
            DEADLINE,
            |n| condition(n, "EdgeVersionSkew").is_some(),
        )
        .await?;
    assert_eq!(condition(&node, "Ready").unwrap()["status"], "True");
    let skew = condition(&node, "EdgeVersionSkew").unwrap();
    assert_eq!(skew["status"], "True", "{skew}");
    assert!(
        skew["message"]
            .as_str()
            .is_some_and(|m| m.contains("v7") && m.contains("upgrade edgecore")),
        "{skew}"
    );
    assert_eq!(node["status"]["allocatable"]["pods"], "7");

    // A report of a version the cloud cannot read is refused, counted, and changes nothing.
    let before = cloud
        .metric("skerry_ingest_reports_total{result=\"invalid\"}")
        .await?
        .unwrap_or(0.0);
    let future = seal_encoded(
        &key,
        &topic,
        old_heartbeat("old-edge", 2, protocol::PROTOCOL_VERSION + 1)?,
    )?;
    client
        .publish(topic, QoS::AtLeastOnce, false, future)
        .await?;
    eventually("the future report counted as invalid", DEADLINE, || async {
        let now = cloud
            .metric("skerry_ingest_reports_total{result=\"invalid\"}")
            .await?
            .unwrap_or(0.0);
        Ok((now > before).then_some(()))
    })
    .await?;
    let after = cloud.get("/api/v1/nodes/old-edge").await?.unwrap();
    assert_eq!(
        after["metadata"]["annotations"], node["metadata"]["annotations"],
        "the status sequence did not move"
    );
    Ok(())
}
