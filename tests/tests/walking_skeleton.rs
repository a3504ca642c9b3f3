//! End-to-end scenarios of the walking skeleton: real cloudcore, edgecore, brokers and
//! processes on loopback. Each test starts its own cluster on private ports and temp dirs.

use serde_json::json;
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

async fn create_pod_runs_and_delete_removes_it(cloud: &Cloud) -> anyhow::Result<()> {
    let edge = Edge::join_and_start(cloud, "edge-a", &[]).await?;
    cloud
        .create_pod(process_pod(
            "sleeper",
            "edge-a",
            &["sh", "-c", "echo hello from $HOSTNAME; exec sleep 300"],
        ))
        .await?;
    let pod = cloud
        .wait_running("sleeper", DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert_eq!(pod["status"]["podIP"], "127.0.0.1", "{pod}");
    assert!(pod["status"]["startTime"].is_string(), "{pod}");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    assert!(!edge.pod_pids().is_empty(), "the pod's process runs");
    // Its output is readable on the node, without the cloud.
    eventually("container log", DEADLINE, || async {
        let (ok, out) = edge.logs("sleeper")?;
        Ok((ok && out.contains("hello from sleeper")).then_some(()))
    })
    .await?;
    let node = cloud.wait_node_ready("edge-a", DEADLINE).await?;
    assert!(node["status"]["capacity"]["cpu"].is_string(), "{node}");

    let (code, body) = cloud
        .api("DELETE", "/api/v1/namespaces/default/pods/sleeper", None)
        .await?;
    assert_eq!(code, 200, "{body}");
    cloud
        .wait_gone(
            "pod object removed after the edge stopped it",
            "/api/v1/namespaces/default/pods/sleeper",
            DEADLINE,
        )
        .await?;
    eventually("pod process gone", DEADLINE, || async {
        Ok(edge.pod_pids().is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_runs_on_the_edge_and_delete_stops_it_with_embedded_broker() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    create_pod_runs_and_delete_removes_it(&cloud).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_runs_on_the_edge_and_delete_stops_it_with_mosquitto() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions {
        mosquitto: true,
        ..CloudOptions::default()
    })
    .await?;
    create_pod_runs_and_delete_removes_it(&cloud).await
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_container_restarts_with_growing_backoff() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud
        .create_pod(process_pod("crasher", "edge-a", &["sh", "-c", "exit 3"]))
        .await?;
    let pod = cloud
        .wait_for(
            "restartCount >= 3",
            "/api/v1/namespaces/default/pods/crasher",
            Duration::from_secs(60),
            |p| restarts(p) >= 3,
        )
        .await?;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3,
        "{pod}"
    );
    cloud
        .wait_for(
            "CrashLoopBackOff",
            "/api/v1/namespaces/default/pods/crasher",
            DEADLINE,
            |p| {
                p.pointer("/status/containerStatuses/0/state/waiting/reason")
                    == Some(&json!("CrashLoopBackOff"))
            },
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_keep_running_while_cloud_is_down_and_status_catches_up() -> anyhow::Result<()> {
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud
        .create_pod(process_pod("steady", "edge-a", &["sleep", "300"]))
        .await?;
    let before = cloud.wait_running("steady", DEADLINE).await?;
    let pids = edge.pod_pids();
    // Read before the outage: after the relaunch the edge may report before the test looks,
    // and its next report would be minutes away (node status goes out on change or reconnect).
    let hb_before = cloud.get("/api/v1/nodes/edge-a").await?.unwrap()["status"]["conditions"][0]
        ["lastHeartbeatTime"]
        .clone();
    cloud.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await; // the edge notices nothing it must act on
    assert_eq!(
        edge.pod_pids(),
        pids,
        "pods must keep running without the cloud"
    );
    cloud.launch().await?;
    // Status catches up: a fresh heartbeat arrives and the pod is unchanged.
    cloud
        .wait_for("a newer heartbeat", "/api/v1/nodes/edge-a", DEADLINE, |n| {
            n["status"]["conditions"][0]["lastHeartbeatTime"] != hb_before
        })
        .await?;
    let after = cloud.wait_running("steady", DEADLINE).await?;
    assert_eq!(container_id(&before), container_id(&after));
    assert_eq!(restarts(&after), 0);
    // And new work reaches the edge over the re-established link.
    cloud
        .create_pod(process_pod("second", "edge-a", &["sleep", "300"]))
        .await?;
    cloud.wait_running("second", DEADLINE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_restarted_without_cloud_runs_cached_pods_and_reconnect_restarts_nothing(
) -> anyhow::Result<()> {
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud
        .create_pod(process_pod("autonomous", "edge-a", &["sleep", "300"]))
        .await?;
    cloud.wait_running("autonomous", DEADLINE).await?;
    // Simulate a power cut: edgecore and its pods die, the cloud is unreachable.
    edge.kill9();
    edge.kill_pods();
    cloud.kill9();
    assert!(edge.pod_pids().is_empty());
    edge.start()?;
    eventually(
        "cached pod running again with no cloud",
        Duration::from_secs(15),
        // The container's own process, not only its shim: the shim appears first, and pids
        // taken before the container started would look like a restart later.
        || async { Ok((!edge.container_pids("sleep").is_empty()).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    let pids = edge.pod_pids();
    cloud.launch().await?;
    let pod = cloud.wait_running("autonomous", DEADLINE).await?;
    // Give the reconnect time to deliver anything it would (wrongly) change.
    let node_seen = cloud.wait_node_ready("edge-a", DEADLINE).await?;
    assert!(node_seen.is_object());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        edge.pod_pids(),
        pids,
        "reconnecting must not restart a healthy pod"
    );
    assert!(!container_id(&pod).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_reused_tokens_are_refused_clearly() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (token, hash) = cloud.token("1h")?;
    let (ok, out) = join_raw(
        dir.path(),
        &cloud.hub_addr(),
        "abcdef.0000000000000000",
        &hash,
        "n1",
        &[],
    )?;
    assert!(!ok && out.contains("bootstrap token is not valid"), "{out}");
    let (ok, out) = join_raw(dir.path(), &cloud.hub_addr(), &token, &hash, "n1", &[])?;
    assert!(ok, "{out}");
    let dir2 = private_temp_dir()?;
    let (ok, out) = join_raw(dir2.path(), &cloud.hub_addr(), &token, &hash, "n2", &[])?;
    assert!(!ok && out.contains("already used"), "{out}");
    let (token3, _) = cloud.token("1h")?;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (ok, out) = join_raw(dir2.path(), &cloud.hub_addr(), &token3, &wrong, "n2", &[])?;
    assert!(!ok && out.contains("--ca-hash"), "{out}");
    // The token was not spent by the failed attempt against the wrong CA.
    let (ok, out) = join_raw(dir2.path(), &cloud.hub_addr(), &token3, &hash, "n2", &[])?;
    assert!(ok, "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pod_json_gets_a_400_status_naming_the_field() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut pod = process_pod("bad", "edge-a", &["sleep", "1"]);
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}]);
    let (code, body) = cloud
        .api("POST", "/api/v1/namespaces/default/pods", Some(pod))
        .await?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["kind"], "Status");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.containers[0].ports[0].containerPort"),
        "{body}"
    );
    let (code, _) = cloud
        .api("GET", "/api/v1/namespaces/default/pods/bad", None)
        .await?;
    assert_eq!(code, 404, "nothing stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_with_node_selector_is_bound_to_a_matching_ready_node() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _a = Edge::join_and_start(&cloud, "edge-a", &["zone=north"]).await?;
    let _b = Edge::join_and_start(&cloud, "edge-b", &["zone=south"]).await?;
    let mut pod = process_pod("placed", "", &["sleep", "300"]);
    pod["spec"].as_object_mut().unwrap().remove("nodeName");
    pod["spec"]["nodeSelector"] = json!({"zone": "south"});
    cloud.create_pod(pod).await?;
    let p = cloud.wait_running("placed", DEADLINE).await?;
    assert_eq!(p["spec"]["nodeName"], "edge-b");
    let mut nowhere = process_pod("nowhere", "", &["sleep", "300"]);
    nowhere["spec"].as_object_mut().unwrap().remove("nodeName");
    nowhere["spec"]["nodeSelector"] = json!({"zone": "mars"});
    cloud.create_pod(nowhere).await?;
    let p = cloud
        .wait_for(
            "Unschedulable condition",
            "/api/v1/namespaces/default/pods/nowhere",
            DEADLINE,
            |p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                })
            },
        )
        .await?;
    assert_eq!(phase(&p), "Pending");
    Ok(())
}

/// MQTT 3.1.1 (4.6) wants PUBACKs in receive order, and brokers and clients may drop a peer
/// that breaks it. The ingest's parallel workers once acked out of order: the broker dropped
/// the session at every burst and replayed it, and status reached the cloud 20 s late. The
/// embedded broker's PUBACKs to the edge wait for the ingest's workers too, in receive order:
/// a burst of 40 pods' reports keeps the edge's one session.
#[tokio::test(flavor = "multi_thread")]
async fn acks_stay_in_order_so_every_session_survives_a_burst() -> anyhow::Result<()> {
    burst_keeps_sessions(
        CloudOptions::default(),
        "skerry_broker_sessions_opened_total ",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_stay_in_order_so_every_session_survives_a_burst_with_mosquitto() -> anyhow::Result<()>
{
    let opts = CloudOptions {
        mosquitto: true,
        ..CloudOptions::default()
    };
    burst_keeps_sessions(opts, "skerry_ingest_broker_connections_total ").await
}

/// Runs 40 pods at once and checks that the MQTT session counted by `sessions_metric` was
/// opened once.
async fn burst_keeps_sessions(opts: CloudOptions, sessions_metric: &str) -> anyhow::Result<()> {
    let cloud = Cloud::start(opts).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    for i in 0..40 {
        let pod = process_pod(&format!("burst-{i}"), "edge-a", &["sleep", "300"]);
        cloud.create_pod(pod).await?;
    }
    eventually("40 pods Running", DEADLINE, || async {
        let list = cloud
            .get("/api/v1/namespaces/default/pods")
            .await?
            .unwrap_or_default();
        let n = list["items"]
            .as_array()
            .map(|items| items.iter().filter(|p| pod_running(p)).count());
        Ok((n == Some(40)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}{}", cloud.log_tail(), edge.log_tail()))?;
    let (_, metrics) = cloud.api("GET", "/metrics", None).await?;
    let text = metrics.as_str().unwrap_or_default();
    let connections = text
        .lines()
        .find_map(|l| l.strip_prefix(sessions_metric))
        .unwrap_or("missing");
    let log = std::fs::read_to_string(cloud.dir.path().join("cloudcore.log")).unwrap_or_default();
    let sessions: Vec<&str> = log.lines().filter(|l| l.contains("MQTT session")).collect();
    assert_eq!(
        connections,
        "1",
        "an MQTT session was lost: {sessions:#?}{}",
        edge.log_tail()
    );
    Ok(())
}

/// Kubernetes lets a running pod change its containers' images; like kubelet, the edge restarts
/// only the changed container and keeps the pod (and its other containers) running.
#[tokio::test(flavor = "multi_thread")]
async fn image_update_restarts_only_that_container() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    let mut pod = process_pod("two", "edge-a", &["sleep", "300"]);
    let second = json!({"name": "side", "image": "busybox:v1", "command": ["sleep", "301"]});
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(second);
    cloud.create_pod(pod).await?;
    let both_running = |p: &serde_json::Value| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c["state"]["running"].is_object()))
    };
    let path = "/api/v1/namespaces/default/pods/two";
    let before = cloud
        .wait_for("both containers running", path, DEADLINE, both_running)
        .await?;
    let id = |p: &serde_json::Value, name: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .map(|c| (c["containerID"].clone(), c["restartCount"].clone()))
    };
    let mut updated = before.clone();
    updated["spec"]["containers"][1]["image"] = json!("busybox:v2");
    let (code, body) = cloud.api("PUT", path, Some(updated)).await?;
    assert_eq!(code, 200, "{body}");
    let after = cloud
        .wait_for("side restarted with the new image", path, DEADLINE, |p| {
            both_running(p)
                && p["status"]["containerStatuses"]
                    .as_array()
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["name"] == "side"
                                && c["restartCount"] == 1
                                && c["image"] == "busybox:v2"
                        })
                    })
        })
        .await?;
    assert_eq!(
        id(&before, "main"),
        id(&after, "main"),
        "the unchanged container keeps running"
    );
    assert_ne!(id(&before, "side"), id(&after, "side"));
    assert_eq!(phase(&after), "Running");
    Ok(())
}
