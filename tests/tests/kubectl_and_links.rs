//! The admin's view through the real kubectl, and what happens when an edge link goes silent.

use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_creates_lists_and_deletes_an_edge_pod() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &["site=lab"]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let manifest = edge.dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  nodeSelector: {site: lab}\n  terminationGracePeriodSeconds: 3\n  containers:\n  - name: web\n    image: busybox:local\n    command: [sleep, \"300\"]\n",
    )?;
    let (ok, out) = cloud.kubectl(&["create", "-f", manifest.to_str().unwrap_or_default()])?;
    assert!(ok, "{out}");
    cloud.wait_running("web", DEADLINE).await?;
    let (ok, out) = cloud.kubectl(&["get", "pods", "-o", "wide"])?;
    assert!(ok, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_default();
    for cell in ["1/1", "Running", "127.0.0.1", "edge-a"] {
        assert!(
            row.contains(cell),
            "missing {cell} in kubectl output:\n{out}"
        );
    }
    let (ok, out) = cloud.kubectl(&["get", "nodes"])?;
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("edge-a") && l.contains(" Ready")),
        "{out}"
    );
    // kubectl waits until the edge has stopped the pod and the object is gone.
    let (ok, out) = cloud.kubectl(&["delete", "pod", "web", "--timeout=30s"])?;
    assert!(ok, "{out}");
    assert!(cloud
        .get("/api/v1/namespaces/default/pods/web")
        .await?
        .is_none());
    assert!(edge.pod_pids().is_empty(), "the pod's process is gone");
    Ok(())
}

/// A link that goes silent (here: edgecore frozen) is detected by QUIC's idle timeout on the
/// hub, and a pod created meanwhile is delivered once the edge is back (KubeEdge #3243 lost it).
#[tokio::test(flavor = "multi_thread")]
async fn silent_link_is_detected_and_work_created_meanwhile_is_delivered() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    cloud.wait_hub_sessions(1, DEADLINE).await?;
    edge.signal("STOP");
    // The harness runs cloudcore with a 4 s idle timeout.
    cloud.wait_hub_sessions(0, Duration::from_secs(15)).await?;
    cloud
        .create_pod(process_pod("late", "edge-a", &["sleep", "300"]))
        .await?;
    edge.signal("CONT");
    cloud
        .wait_running("late", DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert_eq!(cloud.metric("skerry_hub_connected_nodes").await?, Some(1.0));
    Ok(())
}
