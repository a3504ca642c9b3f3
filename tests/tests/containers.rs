//! Real containers end to end: a cloudcore, an edgecore with `--runtime cri`, and a private
//! containerd with registry-free images. Pods are created through the cloud API, as an admin
//! would, and checked both through the API (status) and on the host (pod IPs answer, CRI state).
//!
//! Every test skips with a printed reason when containerd is not installed (run
//! deploy/setup.sh); in CI it is.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{eventually, restarts, Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

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

async fn create(cloud: &Cloud, resource: &str, body: Value) -> Result<Value> {
    let (code, v) = cloud
        .api(
            "POST",
            &format!("/api/v1/namespaces/default/{resource}"),
            Some(body),
        )
        .await?;
    if code != 201 {
        bail!("create {resource} answered {code}: {v}");
    }
    Ok(v)
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/default/pods/{name}")
}

fn condition(pod: &Value, kind: &str) -> Option<String> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn waiting_reason(pod: &Value) -> String {
    pod.pointer("/status/containerStatuses/0/state/waiting/reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// GET http://ip:port/path with a short timeout, as a client on the host would.
async fn http_get(ip: &str, port: u16, path: &str) -> Result<(u16, String)> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?
        .get(format!("http://{ip}:{port}{path}"))
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

async fn delete_all_and_check_clean(cloud: &Cloud, ctrd: &Containerd, pods: &[&str]) -> Result<()> {
    for p in pods {
        cloud.api("DELETE", &pod_path(p), None).await?;
    }
    for p in pods {
        cloud
            .wait_gone(&format!("pod {p} removed"), &pod_path(p), LONG)
            .await?;
    }
    let left = eventually(
        "containerd to be empty",
        Duration::from_secs(30),
        || async {
            let left = ctrd.leftovers().await?;
            Ok(left.is_empty().then_some(()))
        },
    )
    .await;
    if left.is_err() {
        bail!("left behind: {:?}", ctrd.leftovers().await?);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn httpd_pod_gets_an_ip_serves_its_configmap_and_secret_and_turns_ready() -> Result<()> {
    let Some((ctrd, cloud, _edge)) = setup("cri-web").await? else {
        return Ok(());
    };
    create(
        &cloud,
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site"},
               "data": {"index.html": "hello from skerry v1\n"}}),
    )
    .await?;
    create(
        &cloud,
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api"},
               "stringData": {"token": "s3cr3t-token"}}),
    )
    .await?;
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "cri-web",
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "httpd",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c",
                        "mkdir -p /tmp/www && ln -s /site/index.html /tmp/www/index.html && \
                         printf %s \"$API_TOKEN\" > /tmp/www/token.txt && \
                         exec httpd -f -p 8080 -h /tmp/www"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "API_TOKEN",
                             "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
                    "volumeMounts": [{"name": "site", "mountPath": "/site", "readOnly": true}],
                    "readinessProbe": {"httpGet": {"path": "/index.html", "port": "http"},
                                       "periodSeconds": 1}
                }],
                "volumes": [{"name": "site", "configMap": {"name": "site"}}]
            }
        }))
        .await?;
    let pod = cloud
        .wait_for("web Ready", &pod_path("web"), LONG, |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await?;
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .context("podIP")?
        .to_string();
    assert_ne!(ip, "127.0.0.1", "a CRI pod gets its own IP from CNI");
    assert_eq!(pod.pointer("/status/phase"), Some(&json!("Running")));
    let (code, body) = http_get(&ip, 8080, "/index.html").await?;
    assert_eq!((code, body.as_str()), (200, "hello from skerry v1\n"));
    let (_, token) = http_get(&ip, 8080, "/token.txt").await?;
    assert_eq!(token, "s3cr3t-token", "env from a Secret key");

    // A ConfigMap change reaches the running container's file, without a restart.
    let (code, v) = cloud
        .api(
            "PUT",
            "/api/v1/namespaces/default/configmaps/site",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site"},
                        "data": {"index.html": "hello from skerry v2\n"}}),
            ),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    eventually("the mounted file to change", LONG, || {
        let ip = ip.clone();
        async move {
            Ok(http_get(&ip, 8080, "/index.html")
                .await
                .ok()
                .filter(|(_, b)| b == "hello from skerry v2\n"))
        }
    })
    .await?;
    let pod = cloud.get(&pod_path("web")).await?.context("web")?;
    assert_eq!(
        restarts(&pod),
        0,
        "a volume update never restarts the container"
    );

    // The secret's value never appears in edgecore's or cloudcore's logs.
    let edge_log = std::fs::read_to_string(_edge.dir.path().join("edgecore.log"))?;
    assert!(
        !edge_log.contains("s3cr3t-token"),
        "secret leaked into edgecore's log"
    );
    let cloud_log = std::fs::read_to_string(cloud.dir.path().join("cloudcore.log"))?;
    assert!(
        !cloud_log.contains("s3cr3t-token"),
        "secret leaked into cloudcore's log"
    );

    delete_all_and_check_clean(&cloud, &ctrd, &["web"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_liveness_probe_restarts_the_container() -> Result<()> {
    let Some((ctrd, cloud, _edge)) = setup("cri-live").await? else {
        return Ok(());
    };
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "flaky"},
            "spec": {
                "nodeName": "cri-live",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 600"],
                    "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/healthy"]},
                                      "periodSeconds": 1, "failureThreshold": 2}
                }]
            }
        }))
        .await?;
    cloud.wait_running("flaky", LONG).await?;
    let pod = cloud
        .wait_for("a liveness restart", &pod_path("flaky"), LONG, |p| {
            restarts(p) >= 1
        })
        .await?;
    assert!(
        pod.pointer("/status/containerStatuses/0/lastState/terminated")
            .is_some(),
        "the killed instance is recorded in lastState: {pod}"
    );
    delete_all_and_check_clean(&cloud, &ctrd, &["flaky"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn container_over_its_memory_limit_is_oom_killed() -> Result<()> {
    let Some((ctrd, cloud, _edge)) = setup("cri-oom").await? else {
        return Ok(());
    };
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hog"},
            "spec": {
                "nodeName": "cri-oom",
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    // Doubles a shell variable until the 24 MiB limit stops it.
                    "command": ["/bin/sh", "-c", "x=0123456789abcdef; while true; do x=$x$x; done"],
                    "resources": {"limits": {"memory": "24Mi", "cpu": "500m"}}
                }]
            }
        }))
        .await?;
    let pod = cloud
        .wait_for("hog to terminate", &pod_path("hog"), LONG, |p| {
            p.pointer("/status/containerStatuses/0/state/terminated")
                .is_some()
        })
        .await?;
    let reason = pod
        .pointer("/status/containerStatuses/0/state/terminated/reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if reason != "OOMKilled" {
        // Only a machine whose memory cgroup does not enforce limits gets here.
        let enforced = std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
            || std::path::Path::new("/sys/fs/cgroup/memory.max").exists();
        if !enforced {
            eprintln!("SKIPPED: this machine's cgroup setup cannot enforce memory limits: {pod}");
            return Ok(());
        }
        bail!("expected OOMKilled, got {reason:?}: {pod}");
    }
    assert_eq!(pod.pointer("/status/phase"), Some(&json!("Failed")));
    delete_all_and_check_clean(&cloud, &ctrd, &["hog"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn edgecore_killed_9_adopts_its_containers_without_new_sandboxes_or_restarts() -> Result<()> {
    let Some((ctrd, cloud, mut edge)) = setup("cri-adopt").await? else {
        return Ok(());
    };
    for name in ["a1", "a2"] {
        cloud
            .create_pod(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"nodeName": "cri-adopt", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                         "command": ["sleep", "3600"]}]}
            }))
            .await?;
    }
    let mut before = Vec::new();
    for name in ["a1", "a2"] {
        let p = cloud.wait_running(name, LONG).await?;
        before.push(skerry_tests::container_id(&p));
    }
    let sandboxes = |c: &Containerd| {
        let c = c.socket.clone();
        async move {
            let mut cri = containerd::connect(&c).await?;
            let mut ids: Vec<String> = cri
                .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items
                .into_iter()
                .map(|s| s.id)
                .collect();
            ids.sort();
            anyhow::Ok(ids)
        }
    };
    let sandboxes_before = sandboxes(&ctrd).await?;
    assert_eq!(sandboxes_before.len(), 2);

    edge.kill9();
    edge.start()?;
    // Give the restarted agent time to adopt and report.
    cloud.wait_node_ready("cri-adopt", LONG).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, id) in ["a1", "a2"].iter().zip(&before) {
        let p = cloud.wait_running(name, LONG).await?;
        assert_eq!(
            &skerry_tests::container_id(&p),
            id,
            "{name} kept its container"
        );
        assert_eq!(restarts(&p), 0, "{name} was not restarted");
    }
    assert_eq!(
        sandboxes(&ctrd).await?,
        sandboxes_before,
        "no new sandboxes"
    );
    delete_all_and_check_clean(&cloud, &ctrd, &["a1", "a2"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_with_policy_never_waits_with_err_image_never_pull() -> Result<()> {
    let Some((ctrd, cloud, _edge)) = setup("cri-img").await? else {
        return Ok(());
    };
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ghost"},
            "spec": {"nodeName": "cri-img", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "skerry.local/not-imported:1",
                                     "imagePullPolicy": "Never"}]}
        }))
        .await?;
    let pod = cloud
        .wait_for("ErrImageNeverPull", &pod_path("ghost"), LONG, |p| {
            waiting_reason(p) == "ErrImageNeverPull"
        })
        .await?;
    let message = pod
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        message.contains("not-imported"),
        "the message names the image: {message}"
    );
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "unpullable"},
            "spec": {"nodeName": "cri-img", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "skerry.local/not-imported:1",
                                     "imagePullPolicy": "Always"}]}
        }))
        .await?;
    cloud
        .wait_for("a pull failure", &pod_path("unpullable"), LONG, |p| {
            matches!(
                waiting_reason(p).as_str(),
                "ErrImagePull" | "ImagePullBackOff"
            )
        })
        .await?;
    delete_all_and_check_clean(&cloud, &ctrd, &["ghost", "unpullable"]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn host_device_from_the_annotation_appears_in_the_container() -> Result<()> {
    let Some((ctrd, cloud, _edge)) = setup("cri-dev").await? else {
        return Ok(());
    };
    // /dev/urandom stands in for a rig's serial adapter: mapped to another path, read-only.
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "rig",
                         "annotations": {"devices.skerry.io/reader": "/dev/urandom:/dev/ttyRIG0:r"}},
            "spec": {"nodeName": "cri-dev", "terminationGracePeriodSeconds": 1,
                     "restartPolicy": "Never",
                     "containers": [{"name": "reader", "image": BUSYBOX_IMAGE,
                                     "command": ["/bin/sh", "-c",
                                        "test -c /dev/ttyRIG0 && head -c 16 /dev/ttyRIG0 | wc -c | grep -qx 16 \
                                         && ! test -e /dev/ttyUSB9"]}]}
        }))
        .await?;
    let pod = cloud
        .wait_for("rig to finish", &pod_path("rig"), LONG, |p| {
            p.pointer("/status/containerStatuses/0/state/terminated")
                .is_some()
        })
        .await?;
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/exitCode"),
        Some(&json!(0)),
        "the device was readable at its container path: {pod}"
    );
    delete_all_and_check_clean(&cloud, &ctrd, &["rig"]).await
}
