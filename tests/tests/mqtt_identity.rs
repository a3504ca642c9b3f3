//! Status over MQTT is accepted only from the node it is about, on both brokers: the channel
//! is TLS only and a client's identity is its certificate from the cluster CA (no password
//! exists to capture); a node may publish only under its own topics and read nothing; the
//! ingest checks every report's MAC under the current key of the node its topic names; a
//! re-join ends the node's previous life at once and starts a new sequence space; a revoked
//! node is cut off.

use protocol::status::*;
use rumqttc::{Event, EventLoop, Packet, QoS};
use skerry_tests::mqtt::{client_tls, connect, ingest_options, node_options, tls_options};
use skerry_tests::*;
use std::time::Duration;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);

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
            init_containers: Vec::new(),
        }),
    }
}

/// A heartbeat of `node` with sequence number `seq`.
fn heartbeat(node: &str, seq: u64) -> StatusReport {
    StatusReport {
        protocol_version: protocol::PROTOCOL_VERSION,
        seq,
        observed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        body: StatusBody::Node(NodeStatus {
            node: node.into(),
            conditions: vec![NodeCondition {
                kind: NodeConditionKind::Ready,
                status: true,
                reason: "KubeletReady".into(),
                message: "test heartbeat".into(),
            }],
            addresses: vec![],
            capacity: Default::default(),
            allocatable: Default::default(),
            info: NodeInfo {
                operating_system: "linux".into(),
                architecture: "amd64".into(),
                // Which report was applied shows here (the replay guard itself is system
                // state that no response shows).
                kernel_version: format!("report-{seq}"),
                os_image: String::new(),
                agent_version: "test".into(),
                container_runtime_version: "process://".into(),
            },
        }),
    }
}

/// Drives a client's event loop on a task; forwards what it receives and how it ended.
fn drive(mut eventloop: EventLoop) -> mpsc::UnboundedReceiver<Result<Packet, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the first event that `pred` picks (`Ok(packet)` or `Err(why the loop ended)`).
async fn wait_event<T>(
    rx: &mut mpsc::UnboundedReceiver<Result<Packet, String>>,
    what: &str,
    mut pred: impl FnMut(&Result<Packet, String>) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = rx.recv().await {
            if let Some(t) = pred(&ev) {
                return Ok(t);
            }
        }
        anyhow::bail!("the client ended before {what}")
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for {what}"))?
}

/// Logins that must not get in, on either broker: no certificate (with or without a user
/// name and password, as a captured one would be), and a node's certificate under another
/// node's client id.
async fn strangers_are_refused(cloud: &Cloud) -> anyhow::Result<()> {
    let no_cert = client_tls(&cloud.ca_path(), None)?;
    let anonymous = tls_options("stranger", cloud.mqtt_port, no_cert.clone());
    assert!(connect(anonymous).await.is_err(), "no certificate");
    let mut captured = tls_options(&mqtt_client_id("edge-a"), cloud.mqtt_port, no_cert);
    captured.set_credentials("edge-a", "a-password-seen-on-the-wire");
    assert!(
        connect(captured).await.is_err(),
        "a password alone must not log in"
    );
    let mut plain = rumqttc::MqttOptions::new("plain", "127.0.0.1", cloud.mqtt_port);
    plain.set_credentials("edge-a", "x");
    assert!(connect(plain).await.is_err(), "plain MQTT");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_broker_confines_each_node_to_its_own_topics() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _a = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    let forger_dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(forger_dir.path(), "forger")?;
    assert!(ok, "{out}");
    cloud
        .create_pod(process_pod("victim", "edge-a", &["sleep", "300"]))
        .await?;
    let pod = cloud.wait_running("victim", DEADLINE).await?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    strangers_are_refused(&cloud).await?;
    // The forger's certificate under edge-a's client id: refused by CONNACK.
    let mut posing = node_options(forger_dir.path(), "forger", cloud.mqtt_port)?;
    posing.set_client_id(mqtt_client_id("edge-a"));
    let refused = connect(posing).await.err().map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("BadClientId")),
        "{refused:?}"
    );

    // Logged in as itself, the forger's own heartbeat is acknowledged (the control)...
    let key = std::fs::read(forger_dir.path().join("pki/report.key"))?;
    let (client, eventloop) =
        connect(node_options(forger_dir.path(), "forger", cloud.mqtt_port)?).await?;
    let mut events = drive(eventloop);
    let own = protocol::topics::node_status("forger");
    client
        .publish(
            own.clone(),
            QoS::AtLeastOnce,
            false,
            seal(&key, &own, &heartbeat("forger", 1))?,
        )
        .await?;
    wait_event(&mut events, "the PUBACK of its own heartbeat", |ev| {
        matches!(ev, Ok(Packet::PubAck(_))).then_some(())
    })
    .await?;
    // ... a subscription to anything is refused ...
    client
        .subscribe(protocol::topics::NODE_STATUS_FILTER, QoS::AtLeastOnce)
        .await?;
    let codes = wait_event(&mut events, "the SUBACK", |ev| match ev {
        Ok(Packet::SubAck(s)) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // ... and a report into edge-a's topics closes the connection.
    let denied_before = cloud
        .metric_series("skerry_broker_denied_total{what=\"publish\"}")
        .await?
        .unwrap_or(0.0);
    let topic = protocol::topics::pod_status("edge-a", "default", "victim");
    client
        .publish(
            topic.clone(),
            QoS::AtLeastOnce,
            false,
            seal(&key, &topic, &forged_failure("edge-a", &uid))?,
        )
        .await?;
    let ended = wait_event(&mut events, "the broker to close the connection", |ev| {
        ev.as_ref().err().cloned()
    })
    .await?;
    let denied = cloud
        .metric_series("skerry_broker_denied_total{what=\"publish\"}")
        .await?
        .unwrap_or(0.0);
    assert!(denied > denied_before, "counted as denied ({ended})");
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
async fn mosquitto_confines_each_node_to_its_own_topics() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions {
        mosquitto: true,
        ..CloudOptions::default()
    })
    .await?;
    let mut a = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    // An unchanged node status goes out every second, not every 5 minutes: the watcher below
    // counts them.
    a.kill9();
    a.set_timing("--node-status-report-secs", "1");
    a.start()?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let forger_dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(forger_dir.path(), "forger")?;
    assert!(ok, "{out}");
    strangers_are_refused(&cloud).await?;

    // A watcher with the ingest's identity sees everything the broker lets through.
    let (watcher, watcher_loop) = connect(ingest_options(
        cloud.dir.path(),
        "skerry-test-watcher",
        cloud.mqtt_port,
    )?)
    .await?;
    let mut seen = drive(watcher_loop);
    watcher
        .subscribe(format!("{}/#", protocol::topics::PREFIX), QoS::AtLeastOnce)
        .await?;
    wait_event(&mut seen, "the watcher's SUBACK", |ev| {
        matches!(ev, Ok(Packet::SubAck(_))).then_some(())
    })
    .await?;

    let key = std::fs::read(forger_dir.path().join("pki/report.key"))?;
    let (forger, forger_loop) =
        connect(node_options(forger_dir.path(), "forger", cloud.mqtt_port)?).await?;
    let mut forger_events = drive(forger_loop);
    forger
        .subscribe(
            format!("{}/edge-a/#", protocol::topics::PREFIX),
            QoS::AtLeastOnce,
        )
        .await?;
    wait_event(&mut forger_events, "the forger's SUBACK", |ev| {
        matches!(ev, Ok(Packet::SubAck(_))).then_some(())
    })
    .await?;
    // Into edge-a's topic first, then its own: the broker keeps one client's order, so the
    // watcher getting the second without the first means the first was dropped.
    let foreign = protocol::topics::pod_status("edge-a", "default", "victim");
    forger
        .publish(
            foreign.clone(),
            QoS::AtLeastOnce,
            false,
            seal(&key, &foreign, &forged_failure("edge-a", "x"))?,
        )
        .await?;
    let own = protocol::topics::node_status("forger");
    forger
        .publish(
            own.clone(),
            QoS::AtLeastOnce,
            false,
            seal(&key, &own, &heartbeat("forger", 1))?,
        )
        .await?;
    let mut edge_a_seen = 0;
    let first_of_forger = wait_event(&mut seen, "the forger's own heartbeat", |ev| match ev {
        Ok(Packet::Publish(p)) if p.topic.contains("/edge-a/") && p.topic.contains("victim") => {
            Some(Err(p.topic.clone()))
        }
        Ok(Packet::Publish(p)) if p.topic == own => Some(Ok(())),
        _ => None,
    })
    .await?;
    assert_eq!(
        first_of_forger,
        Ok(()),
        "a node's publish into another's topic got through"
    );
    // edge-a heartbeats every second: two of them reach the watcher, none the forger.
    wait_event(&mut seen, "two of edge-a's heartbeats", |ev| match ev {
        Ok(Packet::Publish(p)) if p.topic == protocol::topics::node_status("edge-a") => {
            edge_a_seen += 1;
            (edge_a_seen == 2).then_some(())
        }
        _ => None,
    })
    .await?;
    while let Ok(ev) = forger_events.try_recv() {
        assert!(
            !matches!(ev, Ok(Packet::Publish(_))),
            "the forger read another node's report: {ev:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejoin_ends_the_old_life_at_once_and_a_clock_behind_is_no_replay() -> anyhow::Result<()>
{
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let first = private_temp_dir()?;
    let (ok, out) = cloud.join_only(first.path(), "phoenix")?;
    assert!(ok, "{out}");
    // The first life's clock was far ahead: its heartbeat carries a huge sequence number.
    let old_key = std::fs::read(first.path().join("pki/report.key"))?;
    let (old, old_loop) = connect(node_options(first.path(), "phoenix", cloud.mqtt_port)?).await?;
    let mut old_events = drive(old_loop);
    let topic = protocol::topics::node_status("phoenix");
    old.publish(
        topic.clone(),
        QoS::AtLeastOnce,
        false,
        seal(&old_key, &topic, &heartbeat("phoenix", u64::MAX / 2))?,
    )
    .await?;
    let node = cloud
        .wait_for(
            "the first life's heartbeat",
            "/api/v1/nodes/phoenix",
            DEADLINE,
            |n| n["status"]["nodeInfo"]["kernelVersion"] == format!("report-{}", u64::MAX / 2),
        )
        .await?;
    assert!(
        node["metadata"]["annotations"]["skerry.io/status-seq"].is_null(),
        "the replay guard is not shown: {node:#}"
    );

    // The same name joins again from a new machine whose clock is right (so, behind).
    let second = private_temp_dir()?;
    let (token, hash) = cloud.token_for("phoenix")?;
    let mqtt = cloud.mqtt_url();
    let (ok, out) = join_raw(
        second.path(),
        &cloud.hub_addr(),
        &token,
        &hash,
        "phoenix",
        &["--mqtt-url", &mqtt],
    )?;
    assert!(ok, "{out}");
    // The old session is closed by the join itself, and the old certificate cannot log in.
    wait_event(&mut old_events, "the old session to be closed", |ev| {
        ev.as_ref().err().cloned()
    })
    .await?;
    assert!(
        connect(node_options(first.path(), "phoenix", cloud.mqtt_port)?)
            .await
            .is_err()
    );
    // The new life reports with a small sequence number, and it is applied.
    let new_key = std::fs::read(second.path().join("pki/report.key"))?;
    assert_ne!(new_key, old_key);
    let (new, new_loop) = connect(node_options(second.path(), "phoenix", cloud.mqtt_port)?).await?;
    let _new_events = drive(new_loop);
    new.publish(
        topic.clone(),
        QoS::AtLeastOnce,
        false,
        seal(&new_key, &topic, &heartbeat("phoenix", 1))?,
    )
    .await?;
    let node = cloud
        .wait_for(
            "the new life's heartbeat applied",
            "/api/v1/nodes/phoenix",
            DEADLINE,
            |n| n["status"]["nodeInfo"]["kernelVersion"] == "report-1",
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", cloud.log_tail()))?;
    assert!(node.get("skerry.io/system").is_none(), "{node:#}");
    // A report sealed with the old key is refused, counted as invalid.
    let invalid = "skerry_ingest_reports_total{result=\"invalid\"}";
    let before = cloud.metric_series(invalid).await?.unwrap_or(0.0);
    new.publish(
        topic.clone(),
        QoS::AtLeastOnce,
        false,
        seal(&old_key, &topic, &heartbeat("phoenix", 2))?,
    )
    .await?;
    eventually("the old key's report refused", DEADLINE, || async {
        Ok((cloud.metric_series(invalid).await?.unwrap_or(0.0) > before).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_node_is_cut_off_from_sync_and_status() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    cloud.wait_hub_sessions(1, DEADLINE).await?;
    let refused = "skerry_broker_logins_refused_total{reason=\"not_authorized\"}";
    let before = cloud.metric_series(refused).await?.unwrap_or(0.0);
    cloud.revoke("edge-a")?;
    // cloudcore picks up revocations every 2 s: the QUIC session ends, the MQTT session is
    // closed, and the edge's next MQTT login is refused.
    cloud.wait_hub_sessions(0, Duration::from_secs(25)).await?;
    eventually(
        "the revoked node's MQTT login refused",
        DEADLINE,
        || async {
            Ok((cloud.metric_series(refused).await?.unwrap_or(0.0) > before).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", cloud.log_tail()))?;
    assert!(
        edge.log_tail().contains("revoked"),
        "the edge says why: {}",
        edge.log_tail()
    );
    Ok(())
}
