//! Status over MQTT is accepted only from the node it is about: the embedded broker checks
//! logins against the PKI, and the ingest checks every report's MAC under the key of the node
//! its topic names, so a joined node cannot speak for another and a revoked one is cut off.

use protocol::status::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// Connects to the broker; `Ok(client)` once the broker accepted the login.
async fn mqtt_login(
    port: u16,
    client_id: &str,
    user: Option<(&str, String)>,
) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((u, p)) = user {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let accepted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return Ok(ack.code == rumqttc::ConnectReturnCode::Success)
                }
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await?;
    match accepted {
        Ok(true) => Ok((client, eventloop)),
        Ok(false) => anyhow::bail!("login refused by ConnAck"),
        Err(e) => anyhow::bail!("login failed: {e}"),
    }
}

fn forged_failure(node: &str, uid: &str) -> StatusReport {
    StatusReport {
        protocol_version: protocol::PROTOCOL_VERSION,
        seq: u64::MAX / 2,
        observed_at_ms: 1,
        body: StatusBody::Pod(PodStatus {
            node: node.into(),
            namespace: "default".into(),
            name: "victim".into(),
            uid: uid.into(),
            phase: PodPhase::Failed,
            conditions: vec![],
            containers: vec![],
            pod_ip: String::new(),
            host_ip: String::new(),
            start_time_ms: 0,
            reason: "Forged".into(),
            message: String::new(),
            removed: false,
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cannot_report_for_another_and_strangers_cannot_log_in() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _a = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    let b = Edge::join_and_start(&cloud, "edge-b", &[]).await?;
    cloud
        .create_pod(process_pod("victim", "edge-a", &["sleep", "300"]))
        .await?;
    let pod = cloud.wait_running("victim", DEADLINE).await?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // No login, a wrong password, and edge-b posing under edge-a's client id are all refused.
    assert!(mqtt_login(cloud.mqtt_port, "stranger", None).await.is_err());
    assert!(mqtt_login(
        cloud.mqtt_port,
        &mqtt_client_id("edge-b"),
        Some(("edge-b", "guess".into()))
    )
    .await
    .is_err());
    let key_b = std::fs::read(b.dir.path().join("pki/report.key"))?;
    assert!(mqtt_login(
        cloud.mqtt_port,
        &mqtt_client_id("edge-a"),
        Some(("edge-b", mqtt_password(&key_b)))
    )
    .await
    .is_err());

    // edge-b, properly logged in as itself, publishes a report about edge-a's pod.
    let (client, mut eventloop) = mqtt_login(cloud.mqtt_port, "skerry-test-forger", None)
        .await
        .or(mqtt_login(
            cloud.mqtt_port,
            &mqtt_client_id("edge-b"),
            Some(("edge-b", mqtt_password(&key_b))),
        )
        .await)?;
    let topic = protocol::topics::pod_status("edge-a", "default", "victim");
    let payload = seal(&key_b, &topic, &forged_failure("edge-a", &uid))?;
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    eventually("the forged report counted as invalid", DEADLINE, || async {
        let invalid = cloud
            .metric("skerry_ingest_reports_total{result=\"invalid\"}")
            .await?;
        Ok((invalid.unwrap_or(0.0) >= 1.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", cloud.log_tail()))?;
    let pod = cloud
        .get("/api/v1/namespaces/default/pods/victim")
        .await?
        .unwrap_or_default();
    assert_eq!(
        phase(&pod),
        "Running",
        "a forged report must not change the pod: {pod}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_node_is_cut_off_from_sync_and_status() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    cloud.wait_hub_sessions(1, DEADLINE).await?;
    cloud.revoke("edge-a")?;
    // cloudcore picks up revocations every 2 s.
    cloud.wait_hub_sessions(0, Duration::from_secs(25)).await?;
    let heartbeat =
        |n: &serde_json::Value| n["status"]["conditions"][0]["lastHeartbeatTime"].clone();
    let before = heartbeat(&cloud.get("/api/v1/nodes/edge-a").await?.unwrap_or_default());
    // Heartbeats come every second in the harness; none may be applied any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = heartbeat(&cloud.get("/api/v1/nodes/edge-a").await?.unwrap_or_default());
    assert_eq!(before, after, "a revoked node's heartbeats must be refused");
    assert!(
        edge.log_tail().contains("revoked"),
        "the edge says why: {}",
        edge.log_tail()
    );
    Ok(())
}
