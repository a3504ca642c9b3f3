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

#[tokio::test(flavor = "multi_thread")]
async fn api_refuses_anonymous_and_unknown_callers_and_admits_issued_credentials(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let anon = cloud.anonymous_client()?;
    let url = format!("{}/api/v1/namespaces/default/pods", cloud.api_url());
    let resp = anon.get(&url).send().await?;
    assert_eq!(resp.status().as_u16(), 401);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");
    let forged = anon
        .get(&url)
        .bearer_auth("skerry-api.0123456789abcdef0123456789abcdef0123456789abcdef")
        .send()
        .await?;
    assert_eq!(forged.status().as_u16(), 401);
    // Health stays public, as in Kubernetes.
    assert_eq!(
        anon.get(format!("{}/healthz", cloud.api_url()))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );

    // kubectl with a token nobody issued is refused ...
    let (ok, out) = {
        let o = std::process::Command::new("kubectl")
            .env("KUBECONFIG", "/dev/null")
            .arg("--server")
            .arg(cloud.api_url())
            .arg("--certificate-authority")
            .arg(cloud.ca_path())
            .args(["--token", "skerry-api.guessed", "get", "pods"])
            .output()?;
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    assert!(!ok, "{out}");
    assert!(out.contains("You must be logged in"), "{out}");

    // ... and the kubeconfig `cloudcore kubeconfig --user admin` writes (a client certificate)
    // works as is.
    let cert_config = cloud.dir.path().join("admin-cert.kubeconfig");
    cloud.write_kubeconfig(&cert_config, &[])?;
    let o = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cert_config)
        .args(["get", "nodes"])
        .output()?;
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
