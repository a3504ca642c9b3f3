//! ReplicationControllers end to end: a real cloudcore, a real edgecore running the pods as
//! native processes, and the real kubectl (`apply`, `get rc`, `scale rc`, `delete rc`).

use serde_json::Value;
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    anyhow::ensure!(ok, "kubectl {args:?} failed: {out}\n{}", cloud.log_tail());
    Ok(out)
}

/// The pods labelled `app=web` that are not being deleted.
async fn live_pods(cloud: &Cloud) -> anyhow::Result<Vec<Value>> {
    let (code, list) = cloud
        .api(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
            None,
        )
        .await?;
    anyhow::ensure!(code == 200, "pod list answered {code}: {list}");
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

fn name(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// Waits until exactly `n` pods of the RC exist and all run; returns them.
async fn wait_running_pods(cloud: &Cloud, n: usize) -> anyhow::Result<Vec<Value>> {
    eventually(
        &format!("exactly {n} running web pods"),
        DEADLINE,
        || async {
            let pods = live_pods(cloud).await?;
            Ok((pods.len() == n && pods.iter().all(pod_running)).then_some(pods))
        },
    )
    .await
}

/// Waits until `kubectl get rc web` prints `desired current ready` as the row's counts.
async fn wait_rc_row(cloud: &Cloud, counts: [&str; 3]) -> anyhow::Result<String> {
    eventually(&format!("rc web at {counts:?}"), DEADLINE, || async {
        let out = kubectl_ok(cloud, &["get", "rc", "web"])?;
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        Ok((row.len() == 5 && row[0] == "web" && row[1..4] == counts).then_some(out))
    })
    .await
}

const MANIFEST: &str = r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: web
spec:
  replicas: 3
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: busybox:local
        command: ["sleep", "300"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn replication_controller_keeps_its_pods_scales_and_deletes_them() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let path = cloud.dir.path().join("rc.yaml");
    std::fs::write(&path, MANIFEST)?;
    let out = kubectl_ok(&cloud, &["apply", "-f", path.to_str().unwrap_or_default()])?;
    assert!(out.contains("replicationcontroller/web created"), "{out}");

    // The selector and the RC's labels default from the template, as in Kubernetes.
    let rc = kubectl_ok(&cloud, &["get", "rc", "web", "-o", "json"])?;
    let rc: Value = serde_json::from_str(&rc)?;
    assert_eq!(
        rc["spec"]["selector"],
        serde_json::json!({"app": "web"}),
        "{rc}"
    );
    assert_eq!(rc["metadata"]["labels"]["app"], "web", "{rc}");

    let pods = wait_running_pods(&cloud, 3).await?;
    for p in &pods {
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicationController", "{p}");
        assert_eq!(owner["apiVersion"], "v1", "{p}");
        assert_eq!(owner["uid"], rc["metadata"]["uid"], "{p}");
        assert_eq!(owner["controller"], true, "{p}");
        assert!(name(p).starts_with("web-"), "{p}");
        assert_eq!(p["spec"]["nodeName"], "edge-a", "{p}");
    }
    let out = wait_rc_row(&cloud, ["3", "3", "3"]).await?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "{out}"
    );
    let wide = kubectl_ok(&cloud, &["get", "rc", "-o", "wide"])?;
    assert!(
        wide.lines().next().unwrap_or("").contains("SELECTOR")
            && wide.contains("busybox:local")
            && wide.contains("app=web"),
        "{wide}"
    );

    // `kubectl scale` goes through the scale subresource.
    let out = kubectl_ok(&cloud, &["scale", "rc", "web", "--replicas=5"])?;
    assert!(out.contains("replicationcontroller/web scaled"), "{out}");
    wait_running_pods(&cloud, 5).await?;
    wait_rc_row(&cloud, ["5", "5", "5"]).await?;
    let status = kubectl_ok(
        &cloud,
        &["get", "rc", "web", "-o", "jsonpath={.status.availableReplicas} {.status.fullyLabeledReplicas} {.status.observedGeneration}"],
    )?;
    assert_eq!(status.trim(), "5 5 2", "{status}");
    kubectl_ok(&cloud, &["scale", "rc", "web", "--replicas=1"])?;
    let left = wait_running_pods(&cloud, 1).await?;
    wait_rc_row(&cloud, ["1", "1", "1"]).await?;

    // A deleted pod is replaced.
    let gone = name(&left[0]);
    kubectl_ok(&cloud, &["delete", "pod", &gone, "--wait=false"])?;
    let replaced = eventually("a replacement pod", DEADLINE, || async {
        let pods = live_pods(&cloud).await?;
        Ok(
            (pods.len() == 1 && name(&pods[0]) != gone && pod_running(&pods[0]))
                .then(|| pods[0].clone()),
        )
    })
    .await?;
    assert_eq!(
        replaced["metadata"]["ownerReferences"][0]["kind"],
        "ReplicationController"
    );

    // The controller's events carry Kubernetes' component name.
    let events = kubectl_ok(
        &cloud,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ReplicationController",
            "-o",
            "json",
        ],
    )?;
    let events: Value = serde_json::from_str(&events)?;
    let items = events["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items.iter().any(|e| e["reason"] == "SuccessfulCreate"
            && e["source"]["component"] == "replication-controller"),
        "{events}"
    );
    assert!(
        items.iter().any(|e| e["reason"] == "SuccessfulDelete"),
        "{events}"
    );

    // Deleting the RC removes its pods (ownerReferences and the garbage collector).
    let out = kubectl_ok(&cloud, &["delete", "rc", "web"])?;
    assert!(out.contains("\"web\" deleted"), "{out}");
    eventually("no web pod left", DEADLINE, || async {
        let (code, list) = cloud
            .api(
                "GET",
                "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
                None,
            )
            .await?;
        anyhow::ensure!(code == 200, "{list}");
        Ok(list["items"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(()))
    })
    .await?;
    let (ok, out) = cloud.kubectl(&["get", "rc"])?;
    assert!(ok && out.contains("No resources found"), "{out}");
    Ok(())
}
