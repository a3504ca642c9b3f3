//! Deployments and ReplicaSets end to end: real cloudcore, three real edgecores (process
//! runtime) and the real kubectl. A Deployment applied from a manifest spreads its pods over
//! the edges; a new image rolls out without ever dropping below `replicas - maxUnavailable`
//! available pods; `kubectl rollout history|undo|pause|resume|status` and `kubectl scale`
//! behave as against Kubernetes; a Recreate Deployment starts new pods only once the old ones
//! are gone.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use skerry_tests::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

/// A Deployment manifest (JSON is YAML) running `sleep` as the process runtime's command.
fn manifest(name: &str, replicas: u32, image: &str, extra_meta: &str, strategy: &str) -> String {
    format!(
        r#"{{
  "apiVersion": "apps/v1",
  "kind": "Deployment",
  "metadata": {{"name": "{name}", "namespace": "default"{extra_meta}}},
  "spec": {{
    "replicas": {replicas},
    "selector": {{"matchLabels": {{"app": "{name}"}}}},
    {strategy}
    "template": {{
      "metadata": {{"labels": {{"app": "{name}"}}}},
      "spec": {{
        "terminationGracePeriodSeconds": 2,
        "containers": [{{"name": "nginx", "image": "{image}", "command": ["sleep", "3600"]}}]
      }}
    }}
  }}
}}"#
    )
}

fn apply(cloud: &Cloud, dir: &std::path::Path, text: &str) -> Result<()> {
    let path = dir.join("deployment.json");
    std::fs::write(&path, text)?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", &path.to_string_lossy()])?;
    if !ok {
        bail!("kubectl apply failed: {out}{}", cloud.log_tail());
    }
    Ok(())
}

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    if !ok {
        bail!("kubectl {args:?} failed: {out}{}", cloud.log_tail());
    }
    Ok(out)
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

fn image(pod: &Value) -> &str {
    pod.pointer("/spec/containers/0/image")
        .and_then(Value::as_str)
        .unwrap_or("")
}

async fn pods(cloud: &Cloud, app: &str) -> Result<Vec<Value>> {
    let list = cloud
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"
        ))
        .await?
        .context("pod list")?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Waits until exactly `n` pods of `app` exist, all running `image`, Running and Ready.
async fn wait_pods(cloud: &Cloud, app: &str, n: usize, img: &str) -> Result<Vec<Value>> {
    eventually(
        &format!("{n} Ready pods of {app} running {img}"),
        DEADLINE,
        || async {
            let ps = pods(cloud, app).await?;
            let done = ps.len() == n
                && ps
                    .iter()
                    .all(|p| pod_running(p) && is_ready(p) && image(p) == img && !terminating(p));
            Ok(done.then_some(ps))
        },
    )
    .await
    .with_context(|| cloud.log_tail())
}

fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/default/deployments/{name}")
}

/// Samples the pods of `app` until `stop`, returning every sample.
fn sample_pods(
    cloud: Arc<Cloud>,
    app: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<Vec<Value>>>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            samples.push(pods(&cloud, app).await?);
        }
        Ok(samples)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_rolls_deployments_out_back_and_scales_them() -> Result<()> {
    let cloud = Arc::new(Cloud::start(CloudOptions::default()).await?);
    let mut edges = Vec::new();
    for name in ["edge-a", "edge-b", "edge-c"] {
        edges.push(Edge::join_and_start(&cloud, name, &[]).await?);
        cloud.wait_node_ready(name, DEADLINE).await?;
    }
    let dir = tempfile::tempdir()?;

    // (a) Three replicas, one per edge, rolled out.
    apply(
        &cloud,
        dir.path(),
        &manifest("web", 3, "nginx:1.25", "", ""),
    )?;
    let first = wait_pods(&cloud, "web", 3, "nginx:1.25").await?;
    let nodes: BTreeSet<&str> = first
        .iter()
        .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
        .collect();
    assert_eq!(nodes.len(), 3, "pods not spread: {nodes:?}");
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )?;
    let out = kubectl_ok(&cloud, &["get", "deploy", "web"])?;
    assert!(
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains(" 3/3 ")),
        "{out}"
    );
    for p in &first {
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet", "{p}");
        assert!(
            owner["name"].as_str().unwrap_or("").starts_with("web-"),
            "{p}"
        );
    }

    // (b) A new image rolls out; availability never drops below replicas - maxUnavailable
    // (3 - 0: 25% of 3 rounds down to 0, and maxSurge rounds up to 1).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_pods(cloud.clone(), "web", stop.clone());
    let annotated = r#", "annotations": {"kubernetes.io/change-cause": "image 1.26"}"#;
    apply(
        &cloud,
        dir.path(),
        &manifest("web", 3, "nginx:1.26", annotated, ""),
    )?;
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )?;
    let second = wait_pods(&cloud, "web", 3, "nginx:1.26").await?;
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await??;
    let min_available = samples
        .iter()
        .map(|s| s.iter().filter(|p| is_ready(p) && !terminating(p)).count())
        .min()
        .unwrap_or(0);
    let max_pods = samples
        .iter()
        .map(|s| s.iter().filter(|p| !terminating(p)).count())
        .max()
        .unwrap_or(0);
    assert!(samples.len() > 5, "too few samples: {}", samples.len());
    assert!(
        min_available >= 3,
        "availability dropped to {min_available}"
    );
    assert!(
        max_pods <= 4,
        "more than replicas + maxSurge pods: {max_pods}"
    );
    assert!(second.iter().all(|p| !first
        .iter()
        .any(|f| f["metadata"]["uid"] == p["metadata"]["uid"])));
    let history = kubectl_ok(&cloud, &["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    assert!(
        history
            .lines()
            .any(|l| l.starts_with('2') && l.contains("image 1.26")),
        "{history}"
    );
    let events = kubectl_ok(
        &cloud,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Deployment,reason=ScalingReplicaSet",
        ],
    )?;
    assert!(events.contains("Scaled up replica set web-"), "{events}");
    assert!(events.contains("Scaled down replica set web-"), "{events}");

    // (c) Undo brings the previous template back, to the Deployment and its pods.
    kubectl_ok(&cloud, &["rollout", "undo", "deployment/web"])?;
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )?;
    let d = cloud.get(&deployment_path("web")).await?.context("web")?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.25",
        "{d}"
    );
    wait_pods(&cloud, "web", 3, "nginx:1.25").await?;
    let history = kubectl_ok(&cloud, &["rollout", "history", "deployment/web"])?;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");

    // (d) kubectl scale (a patch of the scale subresource) up and down.
    kubectl_ok(&cloud, &["scale", "deployment", "web", "--replicas=5"])?;
    let five = wait_pods(&cloud, "web", 5, "nginx:1.25").await?;
    assert!(five.iter().all(pod_running));
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )?;
    let scale = cloud
        .get("/apis/apps/v1/namespaces/default/deployments/web/scale")
        .await?
        .context("scale")?;
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 5, "{scale}");
    assert_eq!(scale["status"]["selector"], "app=web", "{scale}");
    kubectl_ok(&cloud, &["scale", "deployment", "web", "--replicas=2"])?;
    wait_pods(&cloud, "web", 2, "nginx:1.25").await?;
    let out = kubectl_ok(&cloud, &["get", "deploy", "web"])?;
    assert!(
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains(" 2/2 ")),
        "{out}"
    );

    // (e) Paused: a template change is recorded but not rolled out; resumed, it is.
    kubectl_ok(&cloud, &["rollout", "pause", "deployment/web"])?;
    kubectl_ok(
        &cloud,
        &["set", "image", "deployment/web", "nginx=nginx:1.27"],
    )?;
    let paused = cloud
        .wait_for(
            "the paused change observed",
            &deployment_path("web"),
            DEADLINE,
            |d| {
                d["status"]["observedGeneration"] == d["metadata"]["generation"]
                    && d["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"] == "Progressing" && c["reason"] == "DeploymentPaused"
                        })
                    })
            },
        )
        .await?;
    assert_eq!(paused["spec"]["paused"], true);
    let rs = cloud
        .get("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3Dweb")
        .await?
        .context("replicasets")?;
    assert!(
        rs["items"].as_array().is_some_and(|items| items
            .iter()
            .all(|r| { r["spec"]["template"]["spec"]["containers"][0]["image"] != "nginx:1.27" })),
        "a paused Deployment created a ReplicaSet: {rs}"
    );
    let still = pods(&cloud, "web").await?;
    assert!(still.iter().all(|p| image(p) == "nginx:1.25"), "{still:?}");
    kubectl_ok(&cloud, &["rollout", "resume", "deployment/web"])?;
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    )?;
    wait_pods(&cloud, "web", 2, "nginx:1.27").await?;

    // (f) Recreate: the new pods appear only once every old pod is gone.
    let recreate = r#""strategy": {"type": "Recreate"},"#;
    apply(
        &cloud,
        dir.path(),
        &manifest("batch", 2, "busybox:1", "", recreate),
    )?;
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/batch", "--timeout=90s"],
    )?;
    wait_pods(&cloud, "batch", 2, "busybox:1").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_pods(cloud.clone(), "batch", stop.clone());
    apply(
        &cloud,
        dir.path(),
        &manifest("batch", 2, "busybox:2", "", recreate),
    )?;
    kubectl_ok(
        &cloud,
        &["rollout", "status", "deployment/batch", "--timeout=90s"],
    )?;
    wait_pods(&cloud, "batch", 2, "busybox:2").await?;
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await??;
    for s in &samples {
        let old = s.iter().filter(|p| image(p) == "busybox:1").count();
        let new = s.iter().filter(|p| image(p) == "busybox:2").count();
        assert!(old == 0 || new == 0, "old and new pods together: {s:?}");
    }
    assert!(
        samples
            .iter()
            .any(|s| s.iter().any(|p| image(p) == "busybox:1")),
        "the sampler never saw the old pods"
    );

    // (g) `kubectl delete -f` of the manifest: the Deployment goes, and the garbage collector
    // takes its ReplicaSets and their pods (kubectl waits for the Deployment only).
    let path = dir.path().join("deployment.json");
    kubectl_ok(&cloud, &["delete", "-f", &path.to_string_lossy()])?;
    eventually(
        "the batch ReplicaSets and pods to be collected",
        DEADLINE,
        || {
            let cloud = cloud.clone();
            async move {
                let sets = cloud
                    .get("/apis/apps/v1/namespaces/default/replicasets")
                    .await?
                    .context("replicaset list")?;
                let left = sets["items"].as_array().map_or(0, |l| {
                    l.iter()
                        .filter(|r| {
                            r.pointer("/metadata/name")
                                .and_then(Value::as_str)
                                .is_some_and(|n| n.starts_with("batch-"))
                        })
                        .count()
                });
                let pods = pods(&cloud, "batch").await?;
                Ok((left == 0 && pods.is_empty()).then_some(()))
            }
        },
    )
    .await?;
    assert!(cloud.get(&deployment_path("batch")).await?.is_none());
    drop(edges);
    Ok(())
}
