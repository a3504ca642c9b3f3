//! A pod's names end to end (issue #14): `spec.hostname`, `spec.subdomain`,
//! `setHostnameAsFQDN` and `hostAliases` as the pod itself sees them (its `hostname` and its
//! `/etc/hosts`, read from inside by the pod's own program through `kubectl logs`), on a
//! private containerd and on the process runtime; an Indexed Job's pod named `<job>-<index>`;
//! and what cannot work refused, with the field named.
//!
//! The CRI tests skip with a printed reason when containerd is not installed (run
//! deploy/setup.sh); in CI it is.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{Cloud, CloudOptions, Edge};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// Waits until the pod's log holds `marker`, and returns the log.
async fn log_with(cloud: &Cloud, pod: &str, marker: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (ok, out) = cloud.kubectl(&["logs", pod])?;
        if ok && out.contains(marker) {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the log of {pod} never said {marker:?}: {out}\n{}",
                cloud.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A pod on `node` whose one container prints its hostname and its hosts file, then sleeps.
fn printing_pod(name: &str, node: &str, image: &str, extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c",
                    "echo host=$(hostname); cat /etc/hosts; echo end-of-hosts; exec sleep 600"]}]
        }
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        pod["spec"][k] = v;
    }
    pod
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_on_containerd_has_its_hostname_fqdn_and_aliases() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "cri-names", &ctrd).await?;
    cloud.wait_node_ready("cri-names", LONG).await?;

    // A StatefulSet-like pod with setHostnameAsFQDN and aliases.
    cloud
        .create_pod(printing_pod(
            "named",
            "cri-names",
            BUSYBOX_IMAGE,
            json!({"hostname": "db", "subdomain": "db-svc", "setHostnameAsFQDN": true,
                   "hostAliases": [{"ip": "10.9.8.7", "hostnames": ["foo.local", "bar.local"]}]}),
        ))
        .await?;
    let pod = cloud.wait_running("named", LONG).await?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!ip.is_empty(), "{pod}");
    let log = log_with(&cloud, "named", "end-of-hosts").await?;
    let fqdn = "db.db-svc.default.svc.cluster.local";
    assert!(log.contains(&format!("host={fqdn}\n")), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.contains(&"# Kubernetes-managed hosts file."), "{log}");
    assert!(lines.contains(&"127.0.0.1\tlocalhost"), "{log}");
    assert!(
        lines.contains(&format!("{ip}\t{fqdn}\tdb").as_str()),
        "{log}"
    );
    assert!(lines.contains(&"10.9.8.7\tfoo.local\tbar.local"), "{log}");

    // A plain pod: its name, and its own address under it (not the host's hosts file).
    cloud
        .create_pod(printing_pod("plain", "cri-names", BUSYBOX_IMAGE, json!({})))
        .await?;
    let pod = cloud.wait_running("plain", LONG).await?;
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let log = log_with(&cloud, "plain", "end-of-hosts").await?;
    assert!(log.contains("host=plain\n"), "{log}");
    assert!(log.contains(&format!("{ip}\tplain\n")), "{log}");
    assert!(!log.contains("HostAliases"), "{log}");

    // An Indexed Job's pod is named `<job>-<index>`, not by its pod name.
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "idx", "namespace": "default"},
        "spec": {"completions": 2, "parallelism": 2, "completionMode": "Indexed",
            "template": {"spec": {
                "restartPolicy": "Never",
                "nodeName": "cri-names",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "echo host=$(hostname) index=$JOB_COMPLETION_INDEX"]}]}}}
    });
    let (status, body) = cloud
        .api("POST", "/apis/batch/v1/namespaces/default/jobs", Some(job))
        .await?;
    assert_eq!(status, 201, "{body}");
    let (ok, out) = cloud.kubectl(&[
        "wait",
        "--for=condition=Complete",
        "job/idx",
        "--timeout=90s",
    ])?;
    assert!(ok, "{out}\n{}", cloud.log_tail());
    let list = cloud
        .get("/api/v1/namespaces/default/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3Didx")
        .await?
        .unwrap_or_default();
    let pods = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 2, "{list}");
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or_default();
        let (ok, out) = cloud.kubectl(&["logs", name])?;
        assert!(
            ok && out.contains(&format!("host=idx-{index} index={index}")),
            "{name}: {out}"
        );
        assert_ne!(
            name,
            format!("idx-{index}"),
            "the pod name has a random suffix"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fqdn_hostname_longer_than_the_kernel_takes_fails_the_sandbox_as_on_kubelet() -> Result<()>
{
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "cri-long", &ctrd).await?;
    cloud.wait_node_ready("cri-long", LONG).await?;
    let host = "h".repeat(40);
    cloud
        .create_pod(printing_pod(
            "toolong",
            "cri-long",
            BUSYBOX_IMAGE,
            json!({"hostname": host, "subdomain": "svc", "setHostnameAsFQDN": true}),
        ))
        .await?;
    // As kubelet: the sandbox cannot be made, said in a FailedCreatePodSandBox event; the
    // pod stays Pending and nothing of it runs.
    let events = cloud
        .wait_for(
            "the FailedCreatePodSandBox event",
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dtoolong",
            LONG,
            |list| {
                list["items"].as_array().into_iter().flatten().any(|e| {
                    e["reason"] == "FailedCreatePodSandBox"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("too long for a hostname"))
                })
            },
        )
        .await?;
    assert!(events.to_string().contains("setHostnameAsFQDN"), "{events}");
    let pod = cloud
        .get("/api/v1/namespaces/default/pods/toolong")
        .await?
        .unwrap_or_default();
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_pod_sees_the_hosts_file_of_its_host_with_its_aliases() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "proc-names", &[]).await?;
    cloud.wait_node_ready("proc-names", LONG).await?;
    cloud
        .create_pod(printing_pod(
            "rig",
            "proc-names",
            "busybox:local",
            json!({"hostAliases": [{"ip": "192.0.2.44", "hostnames": ["dut.rig"]}]}),
        ))
        .await?;
    cloud.wait_running("rig", LONG).await?;
    let log = log_with(&cloud, "rig", "end-of-hosts").await?;
    let host_hosts = std::fs::read_to_string("/etc/hosts")?;
    let first_host_line = host_hosts
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    assert!(log.contains(first_host_line), "the host's lines: {log}");
    assert!(log.contains("192.0.2.44\tdut.rig\n"), "{log}");
    // On the host's network a pod has the node's hostname, as host-network pods do.
    let node_host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert!(
        log.contains(&format!("host={}\n", node_host.trim())),
        "{log}"
    );
    // The host's own file is untouched.
    assert_eq!(std::fs::read_to_string("/etc/hosts")?, host_hosts);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_cannot_work_are_refused_naming_the_field() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    for (extra, field) in [
        (json!({"hostname": "Not_A_Label"}), "spec.hostname"),
        (json!({"subdomain": "a.b"}), "spec.subdomain"),
        (
            json!({"hostAliases": [{"ip": "not-an-ip", "hostnames": ["a"]}]}),
            "spec.hostAliases[0].ip",
        ),
        (
            json!({"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["UPPER_case"]}]}),
            "spec.hostAliases[0].hostnames",
        ),
    ] {
        let pod = printing_pod("bad", "nowhere", "busybox:local", extra.clone());
        let (status, body) = cloud
            .api("POST", "/api/v1/namespaces/default/pods", Some(pod))
            .await?;
        assert_eq!(status, 422, "{extra}: {body}");
        let causes: Vec<&str> = body["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["field"].as_str())
            .collect();
        assert!(causes.contains(&field), "{extra}: {body}");
    }
    // Aliases are accepted now (they were refused while the edge did not write them).
    let ok: Value = printing_pod(
        "aliased",
        "nowhere",
        "busybox:local",
        json!({"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a.local"]}]}),
    );
    let (status, body) = cloud
        .api("POST", "/api/v1/namespaces/default/pods", Some(ok))
        .await?;
    assert_eq!(status, 201, "{body}");
    Ok(())
}
