//! Services that route, end to end on real containers: a Deployment of three httpd pods behind
//! a ClusterIP Service on a CRI edge that owns its pod CIDR, its Service proxy (nftables) and
//! its cluster DNS. From the host and from a pod (by DNS name), 30 requests reach all three;
//! scaling changes routing; a Service without endpoints refuses at once; and with the cloud
//! gone, a local pod whose readiness probe fails leaves routing within its probe period while
//! the others keep serving.

use anyhow::{bail, Context, Result};
use serde_json::json;
use skerry_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use skerry_tests::svc::{answers, apply, get, ready_endpoints, web};
use skerry_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_ip_balances_over_ready_pods_from_the_host_and_from_a_pod_by_name() -> Result<()>
{
    if !containerd::require() {
        return Ok(());
    }
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let ctrd = Containerd::start().await?;
    let _edge = Edge::join_and_start_cri_networked(&cloud, "svc-edge", &ctrd, &[]).await?;
    cloud.wait_node_ready("svc-edge", LONG).await?;

    apply(&cloud, &web(3)).await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    let svc = cloud
        .get("/api/v1/namespaces/default/services/web")
        .await?
        .context("service")?;
    let vip = format!(
        "{}:80",
        svc["spec"]["clusterIP"].as_str().context("clusterIP")?
    );
    eventually("3 ready endpoints", LONG, || async {
        Ok((ready_endpoints(&cloud, "web").await?.len() == 3).then_some(()))
    })
    .await?;
    let (ok, out) = cloud.kubectl(&["get", "endpoints,endpointslices"])?;
    assert!(ok && out.contains("web"), "{out}");

    // From the host: every pod answers.
    let seen = eventually("all 3 pods answer on the cluster IP", LONG, || async {
        let seen = answers(&vip, 30).await;
        Ok((seen.len() == 3).then_some(seen))
    })
    .await?;
    assert!(seen.iter().all(|n| n.starts_with("web-")), "{seen:?}");

    // From a pod, by name through the cluster DNS.
    cloud
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"nodeName": "svc-edge", "restartPolicy": "Never", "containers": [{
                "name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                    "for i in $(seq 30); do wget -q -O - http://web.default.svc.cluster.local/name; done; sleep 3600"]}]}}))
        .await?;
    let from_pod = eventually("the client pod's 30 answers", LONG, || async {
        let (ok, log) = cloud.kubectl(&["logs", "client"])?;
        let names: BTreeSet<String> = log
            .lines()
            .filter(|l| l.starts_with("web-"))
            .map(str::to_string)
            .collect();
        Ok((ok && log.lines().filter(|l| l.starts_with("web-")).count() >= 30).then_some(names))
    })
    .await?;
    assert_eq!(
        from_pod, seen,
        "a pod reaches all 3 by name, as the host does"
    );

    // Scale to 1 and back: routing follows.
    apply(&cloud, &web(1)).await?;
    eventually("one pod answers", LONG, || async {
        Ok((answers(&vip, 10).await.len() == 1).then_some(()))
    })
    .await?;
    apply(&cloud, &web(3)).await?;
    let seen = eventually("three pods answer again", LONG, || async {
        let seen = answers(&vip, 30).await;
        Ok((seen.len() == 3).then_some(seen))
    })
    .await?;

    // No ready endpoint: refused at once, not a hang.
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 80}]}}),
    )
    .await?;
    let empty = cloud
        .get("/api/v1/namespaces/default/services/empty")
        .await?
        .context("service")?;
    let empty_vip = format!(
        "{}:80",
        empty["spec"]["clusterIP"].as_str().unwrap_or_default()
    );
    let refused = eventually("the empty Service refuses", LONG, || async {
        match get(&empty_vip, "/").await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Some(())),
            _ => Ok(None),
        }
    })
    .await;
    if refused.is_err() {
        bail!("{:?}", get(&empty_vip, "/").await);
    }

    // Offline: the cloud goes away; a local pod failing its readiness probe leaves routing
    // at the edge's own word within its probe period, and the other two keep serving.
    let ips = ready_endpoints(&cloud, "web").await?;
    let victim_ip = ips.iter().next().cloned().context("an endpoint")?;
    let victim = get(&format!("{victim_ip}:8080"), "/name").await?;
    let mut cloud = cloud;
    cloud.kill9();
    // The CGI's answer uses bare newlines; what counts is that it ran (the file is gone).
    get(&format!("{victim_ip}:8080"), "/cgi-bin/fail").await?;
    let left = eventually(
        "the failed pod leaves routing with no cloud",
        LONG,
        || async {
            let seen = answers(&vip, 30).await;
            Ok((seen.len() == 2 && !seen.contains(&victim)).then_some(seen))
        },
    )
    .await?;
    assert!(left.iter().all(|n| seen.contains(n)), "{left:?} {seen:?}");
    Ok(())
}
