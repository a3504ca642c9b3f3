//! The downward API end to end (issue #14): `downwardAPI` and `projected` volumes and env
//! `fieldRef`s, read from inside the pod with the real kubectl (`exec`, `label`, `annotate`)
//! on a private containerd and on the process runtime; a label or annotation changed with
//! kubectl reaches the pod's files without a restart; what the edge cannot resolve is refused
//! with a 422 naming the field.
//!
//! The CRI test skips with a printed reason when containerd is not installed (run
//! deploy/setup.sh); in CI it is.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

async fn create(cloud: &Cloud, resource: &str, body: Value) -> Result<()> {
    let (status, out) = cloud
        .api(
            "POST",
            &format!("/api/v1/namespaces/default/{resource}"),
            Some(body),
        )
        .await?;
    if status != 201 {
        bail!("create {resource}: {status} {out}");
    }
    Ok(())
}

/// `kubectl exec pod -- cat path`, retried until it prints `want` (the edge rewrites the
/// files after a label change; nothing is assumed about when).
async fn wait_file(cloud: &Cloud, pod: &str, path: &str, want: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (ok, out) = cloud.kubectl(&["exec", pod, "--", "cat", path])?;
        if ok && out == want {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{pod}:{path} never became {want:?}; last {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The pod: a downwardAPI volume, a projected one (ConfigMap, Secret and downward API files
/// in one directory), and env fieldRefs.
fn pod(node: &str, image: &str) -> Value {
    let mounts =
        json!([{"name": "info", "mountPath": "/info"}, {"name": "all", "mountPath": "/all"}]);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "self", "labels": {"app": "probe", "tier": "bronze"},
            "annotations": {"team": "rail", "unread": "never sent"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": "builder",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "echo env team=$TEAM sa=$SA ips=$IPS; exec sleep 600"],
                "env": [
                    {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}
                ],
                "volumeMounts": mounts}],
            "volumes": [
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "team", "fieldRef": {"fieldPath": "metadata.annotations['team']"}, "mode": 0o400}
                ]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "settings", "items": [{"key": "mode", "path": "mode"}]}},
                    {"secret": {"name": "creds"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                ]}}
            ]
        }
    })
}

async fn configs(cloud: &Cloud) -> Result<()> {
    create(
        cloud,
        "configmaps",
        json!({"metadata": {"name": "settings"}, "data": {"mode": "edge"}}),
    )
    .await?;
    create(
        cloud,
        "secrets",
        json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn downward_api_and_projected_volumes_on_containerd_follow_label_changes() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "cri-down", &ctrd).await?;
    cloud.wait_node_ready("cri-down", LONG).await?;
    configs(&cloud).await?;
    cloud.create_pod(pod("cri-down", BUSYBOX_IMAGE)).await?;
    let running = cloud.wait_running("self", LONG).await?;
    let ip = running["status"]["podIP"].as_str().unwrap_or_default();

    wait_file(
        &cloud,
        "self",
        "/info/labels",
        "app=\"probe\"\ntier=\"bronze\"",
    )
    .await?;
    wait_file(&cloud, "self", "/info/name", "self").await?;
    wait_file(&cloud, "self", "/info/team", "rail").await?;
    wait_file(&cloud, "self", "/all/mode", "edge").await?;
    wait_file(&cloud, "self", "/all/password", "hunter2").await?;
    wait_file(&cloud, "self", "/all/ns", "default").await?;
    let (ok, out) =
        cloud.kubectl(&["exec", "self", "--", "stat", "-L", "-c", "%a", "/info/team"])?;
    assert!(ok && out.trim() == "400", "{out}");
    // The volumes are read-only in the container.
    let (ok, out) = cloud.kubectl(&["exec", "self", "--", "sh", "-c", "echo x > /info/new"])?;
    assert!(!ok, "{out}");
    let (ok, out) = cloud.kubectl(&["logs", "self"])?;
    assert!(
        ok && out.contains(&format!("env team=rail sa=builder ips={ip}")),
        "{out}"
    );

    // kubectl label / annotate: the files follow, the container keeps running.
    let (ok, out) = cloud.kubectl(&["label", "pod", "self", "tier=gold", "--overwrite"])?;
    assert!(ok, "{out}");
    wait_file(
        &cloud,
        "self",
        "/info/labels",
        "app=\"probe\"\ntier=\"gold\"",
    )
    .await?;
    let (ok, out) = cloud.kubectl(&["annotate", "pod", "self", "team=road", "--overwrite"])?;
    assert!(ok, "{out}");
    wait_file(&cloud, "self", "/info/team", "road").await?;
    let now = cloud
        .get("/api/v1/namespaces/default/pods/self")
        .await?
        .unwrap_or_default();
    assert_eq!(
        now["status"]["containerStatuses"][0]["restartCount"], 0,
        "{now}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_pod_reads_its_downward_api_files() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "proc-down", &[]).await?;
    cloud.wait_node_ready("proc-down", LONG).await?;
    configs(&cloud).await?;
    let mut p = pod("proc-down", "busybox:local");
    // A native process finds its volumes in SKERRY_VOLUME_<NAME>.
    p["spec"]["containers"][0]["command"] = json!(["sh", "-c",
        "cat $SKERRY_VOLUME_INFO/labels; echo; cat $SKERRY_VOLUME_ALL/mode; echo; echo team=$TEAM sa=$SA; exec sleep 600"]);
    cloud.create_pod(p).await?;
    cloud.wait_running("self", LONG).await?;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (ok, out) = cloud.kubectl(&["logs", "self"])?;
        if ok && out.contains("team=rail sa=builder") {
            assert!(
                out.contains("app=\"probe\"\ntier=\"bronze\"\nedge\n"),
                "{out}"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the process pod never printed its files: {out}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_edge_cannot_resolve_is_refused_naming_the_field() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let base = || {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"},
            "spec": {"containers": [{"name": "main", "image": "busybox:local"}]}})
    };
    let mut env = base();
    env["spec"]["containers"][0]["env"] =
        json!([{"name": "G", "valueFrom": {"fieldRef": {"fieldPath": "metadata.generation"}}}]);
    let mut file = base();
    file["spec"]["volumes"] = json!([{"name": "d", "downwardAPI": {"items": [
        {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}]);
    let mut token = base();
    token["spec"]["volumes"] = json!([{"name": "t", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}]}}]);
    let mut escape = base();
    escape["spec"]["volumes"] = json!([{"name": "d", "downwardAPI": {"items": [
        {"path": "../up", "fieldRef": {"fieldPath": "metadata.name"}}]}}]);
    for (pod, field) in [
        (
            env,
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
        ),
        (
            file,
            "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath",
        ),
        (
            token,
            "spec.volumes[0].projected.sources[0].serviceAccountToken",
        ),
        (escape, "spec.volumes[0].downwardAPI.items[0].path"),
    ] {
        let (status, body) = cloud
            .api("POST", "/api/v1/namespaces/default/pods", Some(pod))
            .await?;
        assert_eq!(status, 422, "{field}: {body}");
        let fields: Vec<&str> = body["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{field}: {body}");
    }
    Ok(())
}
