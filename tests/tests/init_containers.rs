//! Init containers end to end (issue #14): on the CRI runtime with a private containerd and on
//! the process runtime, created through the API and read back with real kubectl 1.32 (`kubectl
//! get pod`'s STATUS column, `kubectl logs -c`). Also what the edge cannot run: refused by
//! `kubectl apply` with a 422 naming the field.
//!
//! The CRI tests skip with a printed reason when containerd is not installed (run
//! deploy/setup.sh); in CI it is.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{phase, Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

async fn setup(node: &str) -> Result<Option<(Containerd, Cloud, Edge)>> {
    if !containerd::require() {
        return Ok(None);
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, node, &ctrd).await?;
    cloud.wait_node_ready(node, LONG).await?;
    Ok(Some((ctrd, cloud, edge)))
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/default/pods/{name}")
}

fn busybox(name: &str, script: &str) -> Value {
    json!({"name": name, "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}]})
}

/// The STATUS column of `kubectl get pod name`, as kubectl prints it.
fn kubectl_status(cloud: &Cloud, name: &str) -> Result<String> {
    let (ok, out) = cloud.kubectl(&["get", "pod", name, "--no-headers"])?;
    if !ok {
        bail!("kubectl get pod {name}: {out}");
    }
    Ok(out
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string())
}

/// Waits until `kubectl get pod` prints `want` in the STATUS column.
async fn wait_kubectl_status(cloud: &Cloud, name: &str, want: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LONG;
    let mut seen = Vec::new();
    loop {
        let status = kubectl_status(cloud, name)?;
        if status == want {
            return Ok(());
        }
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("kubectl never printed {want} for {name}; it printed {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_in_order_on_containerd_and_a_sidecar_runs_beside_the_app() -> Result<()>
{
    let Some((_ctrd, cloud, _edge)) = setup("cri-init").await? else {
        return Ok(());
    };
    // first writes a file; the sidecar keeps running; second sees first's file and writes its
    // own; the app sees both (and would exit 1 otherwise: restartPolicy Never fails the pod).
    let mut sidecar = busybox("proxy", "echo up > /work/sidecar; exec sleep 600");
    sidecar["restartPolicy"] = json!("Always");
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "flashed"},
            "spec": {
                "nodeName": "cri-init",
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [
                    busybox("first", "sleep 1; echo one > /work/a"),
                    sidecar,
                    busybox("second", "test -f /work/a && test -f /work/sidecar && echo two > /work/b && echo second saw a"),
                ],
                "containers": [busybox("app",
                    "test -f /work/a && test -f /work/b || exit 1; echo app saw $(cat /work/a) $(cat /work/b); exec sleep 600")]
            }
        }))
        .await?;
    let pod = cloud.wait_running("flashed", LONG).await?;
    let init = pod["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["first", "proxy", "second"], "{pod}");
    for i in [0, 2] {
        assert_eq!(init[i]["state"]["terminated"]["exitCode"], 0, "{pod}");
        assert_eq!(
            init[i]["state"]["terminated"]["reason"], "Completed",
            "{pod}"
        );
    }
    assert!(
        init[1]["state"]["running"].is_object(),
        "sidecar runs: {pod}"
    );
    let initialized = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    assert!(initialized, "{pod}");
    // The app started after both, and kubectl reads every container's log by name.
    let (ok, out) = cloud.kubectl(&["logs", "flashed", "-c", "app"])?;
    assert!(ok && out.contains("app saw one two"), "{out}");
    let (ok, out) = cloud.kubectl(&["logs", "flashed", "-c", "second"])?;
    assert!(ok && out.contains("second saw a"), "{out}");
    assert_eq!(kubectl_status(&cloud, "flashed")?, "Running");
    // Events about an init container name it in spec.initContainers, as kubelet's do.
    let started = cloud
        .wait_for(
            "Started events of the pod's containers",
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dflashed",
            LONG,
            |list| {
                let paths: Vec<&str> = list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["reason"] == "Started")
                    .filter_map(|e| e["involvedObject"]["fieldPath"].as_str())
                    .collect();
                paths.contains(&"spec.initContainers{first}")
                    && paths.contains(&"spec.containers{app}")
            },
        )
        .await?;
    assert!(
        !started.to_string().contains("spec.containers{first}"),
        "{started}"
    );
    let (ok, out) = cloud.kubectl(&["get", "pod", "flashed", "--no-headers"])?;
    assert!(
        ok && out.split_whitespace().nth(1) == Some("2/2"),
        "app and sidecar ready: {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_init_container_crash_loops_with_always_and_fails_the_pod_with_never(
) -> Result<()> {
    let Some((_ctrd, cloud, _edge)) = setup("cri-init-fail").await? else {
        return Ok(());
    };
    for (name, policy) in [("loops", "Always"), ("fails", "Never")] {
        cloud
            .create_pod(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "nodeName": "cri-init-fail",
                    "restartPolicy": policy,
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "initContainers": [busybox("flash", "echo flashing failed; exit 3")],
                    "containers": [busybox("app", "exec sleep 600")]
                }
            }))
            .await?;
    }
    wait_kubectl_status(&cloud, "loops", "Init:CrashLoopBackOff").await?;
    let pod = cloud.get(&pod_path("loops")).await?.unwrap_or_default();
    assert_eq!(phase(&pod), "Pending", "{pod}");
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "the app never started: {pod}"
    );
    let (ok, out) = cloud.kubectl(&["logs", "loops", "-c", "flash"])?;
    assert!(ok && out.contains("flashing failed"), "{out}");

    let pod = cloud
        .wait_for("pod fails", &pod_path("fails"), LONG, |p| {
            phase(p) == "Failed"
        })
        .await?;
    let flash = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(flash["state"]["terminated"]["exitCode"], 3, "{pod}");
    assert_eq!(flash["restartCount"], 0, "{pod}");
    assert_eq!(kubectl_status(&cloud, "fails")?, "Init:Error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn init_containers_run_before_the_app_on_the_process_runtime() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "proc-init", &[]).await?;
    cloud.wait_node_ready("proc-init", LONG).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("flashed");
    let marker = marker.to_str().unwrap_or_default();
    let sh = |name: &str, script: String| json!({"name": name, "image": "busybox:local", "command": ["sh", "-c", script]});
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "rig"},
            "spec": {
                "nodeName": "proc-init",
                "terminationGracePeriodSeconds": 1,
                "initContainers": [sh("flash", format!("sleep 1; echo firmware > {marker}"))],
                "containers": [sh("test", format!("cat {marker} || exit 1; exec sleep 600"))]
            }
        }))
        .await?;
    let pod = cloud.wait_running("rig", LONG).await?;
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0,
        "{pod}"
    );
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "{pod}"
    );
    let (ok, out) = cloud.kubectl(&["logs", "rig", "-c", "test"])?;
    assert!(ok && out.contains("firmware"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_of_what_the_edge_cannot_run_gets_a_422_naming_the_field() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let pvc = dir.path().join("pvc.yaml");
    std::fs::write(
        &pvc,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\nspec:\n  containers:\n  - name: db\n    image: busybox\n    volumeMounts:\n    - name: data\n      mountPath: /data\n  volumes:\n  - name: data\n    persistentVolumeClaim:\n      claimName: data\n",
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", pvc.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(out.contains(r#"The Pod "db" is invalid"#), "{out}");
    assert!(
        out.contains(r#"spec.volumes[0].persistentVolumeClaim: Unsupported value: "persistentVolumeClaim": supported values: "configMap", "downwardAPI", "emptyDir", "hostPath", "projected", "secret""#),
        "{out}"
    );
    // A workload's template gets the same check.
    let deploy = dir.path().join("deploy.yaml");
    std::fs::write(
        &deploy,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      hostNetwork: true\n      containers:\n      - name: web\n        image: busybox\n",
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", deploy.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "spec.template.spec.hostNetwork: Forbidden: is not supported on Skerry edges yet"
        ),
        "{out}"
    );
    let (code, _) = cloud.api("GET", &pod_path("db"), None).await?;
    assert_eq!(code, 404, "nothing was stored");
    Ok(())
}
