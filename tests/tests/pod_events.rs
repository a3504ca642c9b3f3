//! Kubelet's events from the edge (issue #13): what the pod workers record travels up the
//! durable outbox as a coalescing series per pod and lands as core/v1 Events, so that real
//! `kubectl describe pod` and `kubectl get events` show what happened on the node, with counts.
//!
//! The CRI test needs containerd (deploy/setup.sh); under `CI=true` its absence fails the test.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{eventually, process_pod, Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// The pod's Events, through `kubectl get events --field-selector` as an admin would ask.
fn events_of(cloud: &Cloud, pod: &str) -> Result<Vec<Value>> {
    let selector = format!("involvedObject.name={pod}");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        &selector,
        "-o",
        "json",
    ])?;
    if !ok {
        bail!("kubectl get events: {out}");
    }
    let list: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn with_reason<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["reason"] == reason).collect()
}

fn count(e: &Value) -> u64 {
    e["count"].as_u64().unwrap_or(0)
}

/// Waits until the pod has a `reason` Event with a count of at least `min`; returns it.
async fn wait_event(cloud: &Cloud, pod: &str, reason: &str, min: u64) -> Result<Value> {
    eventually(
        &format!("a {reason} event of {pod} with count >= {min}"),
        LONG,
        || async {
            let events = events_of(cloud, pod)?;
            Ok(with_reason(&events, reason)
                .into_iter()
                .find(|e| count(e) >= min)
                .cloned())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_shows_kubelets_events_with_counts_and_containerd_ids() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "ev-cri", &ctrd).await?;
    cloud.wait_node_ready("ev-cri", LONG).await?;
    let pod = |name: &str, container: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"nodeName": "ev-cri", "terminationGracePeriodSeconds": 1,
                        "containers": [container]}})
    };
    cloud
        .create_pod(pod(
            "crash",
            json!({"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                   "command": ["sh", "-c", "echo crashing; exit 3"]}),
        ))
        .await?;
    cloud
        .create_pod(pod(
            "unready",
            json!({"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                   "command": ["sleep", "3600"],
                   "readinessProbe": {"exec": {"command": ["sh", "-c", "echo not yet; exit 1"]},
                                      "periodSeconds": 1}}),
        ))
        .await?;

    // A crash loop: one BackOff event whose count grows, not one event per crash.
    let backoff = wait_event(&cloud, "crash", "BackOff", 2)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    assert_eq!(backoff["type"], "Warning");
    assert_eq!(backoff["source"]["component"], "kubelet");
    assert_eq!(backoff["source"]["host"], "ev-cri");
    assert_eq!(backoff["reportingComponent"], "kubelet");
    assert_eq!(backoff["involvedObject"]["kind"], "Pod");
    assert_eq!(
        backoff["involvedObject"]["fieldPath"],
        "spec.containers{app}"
    );
    let crash = cloud
        .get("/api/v1/namespaces/default/pods/crash")
        .await?
        .context("crash pod")?;
    assert_eq!(backoff["involvedObject"]["uid"], crash["metadata"]["uid"]);
    let message = backoff["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Back-off restarting failed container app in pod crash_default("),
        "{message}"
    );
    let events = events_of(&cloud, "crash")?;
    assert_eq!(with_reason(&events, "BackOff").len(), 1, "{events:#?}");
    for reason in ["Pulled", "Created", "Started"] {
        let e = with_reason(&events, reason);
        assert_eq!(e.len(), 1, "one {reason} series: {events:#?}");
        assert!(count(e[0]) >= 2, "{reason} counted per restart: {:#}", e[0]);
    }
    assert_eq!(
        with_reason(&events, "Pulled")[0]["message"],
        format!("Container image \"{BUSYBOX_IMAGE}\" already present on machine")
    );

    // A failing readiness probe: Unhealthy, counted per failed attempt.
    let unhealthy = wait_event(&cloud, "unready", "Unhealthy", 2).await?;
    let message = unhealthy["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Readiness probe failed: ") && message.ends_with("not yet"),
        "{message}"
    );

    // What describe shows: the events with counts, the runtime's container IDs, no internal
    // bookkeeping in the annotations.
    let (ok, out) = cloud.kubectl(&["describe", "pod", "crash"])?;
    assert!(ok, "{out}");
    assert!(out.contains("Events:"), "{out}");
    for needle in [
        "BackOff",
        "Back-off restarting failed container app in pod crash_default(",
        "Pulled",
        "Created container app",
        "Started container app",
        " over ",
        "containerd://",
    ] {
        assert!(out.contains(needle), "describe lacks {needle:?}:\n{out}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("BackOff") && l.contains("(x")),
        "BackOff shown with its count:\n{out}"
    );
    assert!(
        !out.contains("status-seq"),
        "no internal annotation:\n{out}"
    );
    let shown = cloud
        .get("/api/v1/namespaces/default/pods/crash")
        .await?
        .context("crash pod")?;
    assert!(shown["metadata"]["annotations"]["skerry.io/status-seq"].is_null());
    assert!(shown.get("skerry.io/system").is_none(), "{shown:#}");
    // The image ID is the runtime's image reference (a digest), as kubelet reports it.
    let image_id = shown["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap_or_default();
    assert!(
        image_id.contains("sha256:") && image_id.len() >= "sha256:".len() + 64,
        "imageID {image_id:?}"
    );
    assert!(
        out_has_image_id(&cloud, "crash", image_id)?,
        "describe shows the image ID"
    );
    let (ok, out) = cloud.kubectl(&["describe", "pod", "unready"])?;
    assert!(ok && out.contains("Readiness probe failed: "), "{out}");

    // Deleting a pod records its Killing before it goes.
    cloud
        .api("DELETE", "/api/v1/namespaces/default/pods/unready", None)
        .await?;
    wait_event(&cloud, "unready", "Killing", 1).await.ok();
    cloud
        .wait_gone(
            "unready removed",
            "/api/v1/namespaces/default/pods/unready",
            LONG,
        )
        .await?;
    cloud
        .api("DELETE", "/api/v1/namespaces/default/pods/crash", None)
        .await?;
    cloud
        .wait_gone(
            "crash removed",
            "/api/v1/namespaces/default/pods/crash",
            LONG,
        )
        .await?;
    drop(edge);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_back_from_offline_delivers_its_events_coalesced() -> Result<()> {
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "ev-offline", &[]).await?;
    cloud.wait_node_ready("ev-offline", LONG).await?;
    cloud
        .create_pod(process_pod("loop", "ev-offline", &["sh", "-c", "exit 1"]))
        .await?;
    let before = count(&wait_event(&cloud, "loop", "BackOff", 1).await?);

    // The cloud goes away; the pod keeps crashing on the node, which keeps counting.
    cloud.kill9();
    let occurrences = r#"skerry_edge_events_total{type="Warning"}"#;
    let at_cut = edge.metric_series(occurrences).await?.unwrap_or(0.0);
    eventually(
        "several back-offs recorded while the cloud is away",
        LONG,
        || async {
            let now = edge.metric_series(occurrences).await?.unwrap_or(0.0);
            Ok((now >= at_cut + 4.0).then_some(()))
        },
    )
    .await?;
    cloud.launch().await?;

    // Back: the series arrives with what was counted offline, as one Event.
    let after = wait_event(&cloud, "loop", "BackOff", before + 2)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let events = events_of(&cloud, "loop")?;
    assert_eq!(with_reason(&events, "BackOff").len(), 1, "{events:#?}");
    assert!(count(&after) > before);
    assert!(
        after["lastTimestamp"].as_str() >= after["firstTimestamp"].as_str(),
        "{after:#}"
    );
    cloud
        .api("DELETE", "/api/v1/namespaces/default/pods/loop", None)
        .await?;
    cloud
        .wait_gone("loop removed", "/api/v1/namespaces/default/pods/loop", LONG)
        .await?;
    Ok(())
}

/// Whether `kubectl describe pod NAME` shows `image_id` on its `Image ID:` line.
fn out_has_image_id(cloud: &Cloud, name: &str, image_id: &str) -> Result<bool> {
    let (ok, out) = cloud.kubectl(&["describe", "pod", name])?;
    Ok(ok
        && out
            .lines()
            .any(|l| l.trim_start().starts_with("Image ID:") && l.contains(image_id)))
}
