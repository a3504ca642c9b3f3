//! Node conditions come from real checks: with containerd stopped under a running edge, the
//! node goes `Ready=False` naming the runtime, new pods go to the other node, and once
//! containerd is back the node is `Ready` again without restarting its pod.

use anyhow::Result;
use serde_json::json;
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{restarts, Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

use skerry_tests::condition_of as condition;

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_runtime_turns_the_node_not_ready_and_back_without_restarting_pods() -> Result<()>
{
    if !containerd::require() {
        return Ok(());
    }
    let mut ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "cri-health", &ctrd).await?;
    let _spare = Edge::join_and_start(&cloud, "spare", &[]).await?;
    let node = cloud.wait_node_ready("cri-health", LONG).await?;
    cloud.wait_node_ready("spare", LONG).await?;
    // A healthy node reports every condition it measures, each with kubelet's reason.
    for (kind, status) in [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("DiskPressure", "False"),
        ("PIDPressure", "False"),
        ("NetworkUnavailable", "False"),
        ("EdgeVersionSkew", "False"),
    ] {
        let c = condition(&node, kind).unwrap_or_else(|| panic!("{kind} missing: {node}"));
        assert_eq!(c["status"], status, "{kind}: {c}");
    }
    assert!(node
        .pointer("/status/allocatable/pods")
        .is_some_and(|p| p == "110"));
    // The edge's own health names each supervised subsystem.
    let health = reqwest::get(format!(
        "http://127.0.0.1:{}/healthz?verbose",
        edge.metrics_port
    ))
    .await?;
    assert_eq!(health.status(), 200);
    let text = health.text().await?;
    for subsystem in [
        "link",
        "publisher",
        "heartbeat",
        "pod-sync",
        "metrics-server",
    ] {
        assert!(text.contains(&format!("[+]{subsystem} ok")), "{text}");
    }

    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady"},
            "spec": {"nodeName": "cri-health", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                     "command": ["sleep", "3600"]}]}
        }))
        .await?;
    let before = cloud.wait_running("steady", LONG).await?;
    let id = skerry_tests::container_id(&before);

    ctrd.stop_daemon()?;
    let down = cloud
        .wait_for(
            "cri-health NotReady",
            "/api/v1/nodes/cri-health",
            LONG,
            |n| condition(n, "Ready").is_some_and(|c| c["status"] == "False"),
        )
        .await?;
    let ready = condition(&down, "Ready").unwrap();
    assert_eq!(ready["reason"], "ContainerRuntimeDown", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("containerd")),
        "the message names the runtime: {ready}"
    );

    // The scheduler sends new pods to the node that can run them.
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fresh"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "sleep", "command": ["sleep", "3600"]}]}
        }))
        .await?;
    let fresh = cloud
        .wait_for(
            "fresh scheduled",
            "/api/v1/namespaces/default/pods/fresh",
            LONG,
            |p| p.pointer("/spec/nodeName").is_some(),
        )
        .await?;
    assert_eq!(fresh["spec"]["nodeName"], "spare");

    ctrd.start_daemon().await?;
    cloud.wait_node_ready("cri-health", LONG).await?;
    let after = cloud.wait_running("steady", LONG).await?;
    assert_eq!(skerry_tests::container_id(&after), id, "the same container");
    assert_eq!(restarts(&after), 0, "not restarted");
    Ok(())
}
