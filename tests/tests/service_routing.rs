//! Service routing proofs on real containers, real kubectl and real DNS queries, beyond the
//! cluster-IP path of `services.rs`:
//! - node ports reached on the node's own address (not the cluster IP), TCP and UDP, balanced
//!   over the three pods of a Deployment;
//! - `externalTrafficPolicy: Local` / `internalTrafficPolicy: Local` route to an endpoint on
//!   this node, and refuse the connection at once when the endpoint is on another node;
//! - `sessionAffinity: ClientIP` keeps one client on one pod;
//! - the cluster DNS from inside a pod: a Service name, the short name through the search
//!   path, a headless StatefulSet pod's name, SRV for named ports, an ExternalName CNAME;
//! - the API's guards of the node network: the cluster DNS address is not a Service's, and a
//!   node's podCIDR cannot change;
//! - process-runtime pods (host network) reach a Service's cluster IP from the host.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use skerry_tests::svc::*;
use skerry_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);
/// The UDP port the test's servers listen on inside the web pods.
const ECHO_PORT: u16 = 5300;

/// This machine's own routable IPv4 address (the source of its default route): what a node
/// port is reached on from outside. No packet is sent.
fn node_address() -> Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("203.0.113.1:9")
        .context("this machine has no default route: a node port needs a routable address")?;
    match s.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() => Ok(ip),
        other => anyhow::bail!("the default route's source {other} is no routable IPv4 address"),
    }
}

/// The tenth address of a `/24` Service CIDR: cloudcore's default cluster DNS address.
fn cluster_dns(service_cidr: &str) -> String {
    let net = service_cidr.split('/').next().unwrap_or_default();
    let mut parts: Vec<&str> = net.split('.').collect();
    parts[3] = "10";
    parts.join(".")
}

/// A selector-less Service on port 80 (`http`) with a node port, its traffic policies, and
/// the EndpointSlice a user writes for it: one ready endpoint, `ip:8080`, on node `node`.
fn service_with_slice(name: &str, local: bool, ip: Ipv4Addr, node: &str) -> (Value, Value) {
    let policy = if local { "Local" } else { "Cluster" };
    (
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "externalTrafficPolicy": policy,
                     "internalTrafficPolicy": policy,
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        slice(name, ip, node),
    )
}

fn slice(service: &str, ip: Ipv4Addr, node: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-manual"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true},
                       "nodeName": node}]})
}

/// The client pod's script: every query of the DNS proofs, in sections, over and over (the
/// records follow the endpoints; the test reads the last complete round).
const DNS_QUERIES: &str = "while true; do \
    echo '== fqdn'; nslookup web.default.svc.cluster.local; \
    echo '== short'; nslookup web; \
    echo '== statefulset'; nslookup db-0.db.default.svc.cluster.local; \
    echo '== srv-headless'; nslookup -type=srv _http._tcp.db.default.svc.cluster.local; \
    echo '== srv'; nslookup -type=srv _http._tcp.web.default.svc.cluster.local; \
    echo '== cname'; nslookup -type=cname ext.default.svc.cluster.local; \
    echo '== end'; sleep 2; done";

/// The sections of the last complete round of [`DNS_QUERIES`] in `log`.
fn last_round(log: &str) -> Option<BTreeMap<String, String>> {
    let rounds: Vec<&str> = log.split("== end").collect();
    let round = rounds.get(rounds.len().checked_sub(2)?)?;
    let mut out = BTreeMap::new();
    for part in round.split("== ").skip(1) {
        let (name, body) = part.split_once('\n').unwrap_or((part, ""));
        out.insert(name.trim().to_string(), body.to_string());
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn node_ports_policies_affinity_and_dns_on_real_containers() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let node_ip = node_address()?;
    let cloud = Cloud::start(CloudOptions {
        own_node_ports: true,
        ..CloudOptions::default()
    })
    .await?;
    let ctrd = Containerd::start().await?;
    let node = "route-edge";
    let _edge = Edge::join_and_start_cri_networked(&cloud, node, &ctrd, &[]).await?;
    cloud.wait_node_ready(node, LONG).await?;

    // The API's guards of the node network, through kubectl.
    let (ok, out) = cloud.kubectl(&[
        "patch",
        "node",
        node,
        "-p",
        r#"{"spec":{"podCIDR":"10.0.0.0/24","podCIDRs":["10.0.0.0/24"]}}"#,
    ])?;
    assert!(
        !ok && out.contains("spec.podCIDR") && out.contains("may not change"),
        "a node's podCIDR cannot change: {out}"
    );
    let dns_ip = cluster_dns(&cloud.service_cidr);
    let (ok, out) = cloud.kubectl(&[
        "create",
        "service",
        "clusterip",
        "dnsgrab",
        "--tcp=53:53",
        &format!("--clusterip={dns_ip}"),
    ])?;
    assert!(
        !ok && out.contains("spec.clusterIPs") && out.contains("reserved for the cluster DNS"),
        "the cluster DNS address is no Service's: {out}"
    );

    apply(&cloud, &web(3)).await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "echo", "port": ECHO_PORT, "targetPort": ECHO_PORT, "protocol": "UDP"}]}}),
    )
    .await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sticky"},
            "spec": {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    let mut db = web(2);
    db["kind"] = json!("StatefulSet");
    db["metadata"]["name"] = json!("db");
    db["spec"]["serviceName"] = json!("db");
    db["spec"]["selector"] = json!({"matchLabels": {"app": "db"}});
    db["spec"]["template"]["metadata"]["labels"] = json!({"app": "db"});
    apply(&cloud, &db).await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "static.example.org"}}),
    )
    .await?;

    eventually("3 ready web endpoints", LONG, || async {
        Ok((ready_endpoints(&cloud, "web").await?.len() == 3).then_some(()))
    })
    .await?;
    let pods = pod_ips(&cloud, "web").await?;
    let names: BTreeSet<String> = pods.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 3, "{pods:?}");
    let _udp: Vec<PodUdpServer> = pods
        .iter()
        .map(|(name, ip)| PodUdpServer::start("httpd", *ip, ECHO_PORT, name))
        .collect::<Result<_>>()?;

    // 1. Node ports on the node's own address, TCP and UDP, over all three pods.
    let np_tcp = node_port(&cloud, "web", "http").await?;
    let np_udp = node_port(&cloud, "web", "echo").await?;
    let np_addr = format!("{node_ip}:{np_tcp}");
    let seen = eventually("3 pods answer the TCP node port", LONG, || async {
        let seen = answers(&np_addr, 30).await;
        Ok((seen.len() == 3).then_some(seen))
    })
    .await?;
    assert_eq!(seen, names);
    let udp_addr = SocketAddr::from((node_ip, np_udp));
    let seen = eventually("3 pods answer the UDP node port", LONG, || async {
        let seen = tokio::task::spawn_blocking(move || udp_answers(udp_addr, 30)).await?;
        Ok((seen.len() == 3).then_some(seen))
    })
    .await?;
    assert_eq!(seen, names);

    // 2. sessionAffinity: ClientIP keeps this client on one pod over 20 connections.
    let sticky = format!("{}:80", cluster_ip(&cloud, "sticky").await?);
    eventually("the sticky Service answers", LONG, || async {
        Ok((!answers(&sticky, 1).await.is_empty()).then_some(()))
    })
    .await?;
    let stuck = answers(&sticky, 20).await;
    eprintln!(
        "node ports {np_tcp}/tcp {np_udp}/udp on {node_ip}: all of {names:?}; sticky: {stuck:?}"
    );
    assert_eq!(stuck.len(), 1, "one client, one pod: {stuck:?}");

    // 3. Local traffic policies. The Local Service first answers with its endpoint on this
    // node (so its rules are in the table), then, the endpoint said to be on another node, is
    // refused at once on the node port and the cluster IP, while the same remote endpoint
    // under Cluster policies still answers.
    let (far_pod, far_ip) = pods[0].clone();
    let only_far = BTreeSet::from([far_pod.clone()]);
    for (name, local, on) in [("far", false, "elsewhere"), ("far-local", true, node)] {
        let (svc, sl) = service_with_slice(name, local, far_ip, on);
        apply(&cloud, &svc).await?;
        apply(&cloud, &sl).await?;
    }
    let far_np = format!("{node_ip}:{}", node_port(&cloud, "far", "http").await?);
    let local_np = format!(
        "{node_ip}:{}",
        node_port(&cloud, "far-local", "http").await?
    );
    let local_vip = format!("{}:80", cluster_ip(&cloud, "far-local").await?);
    for (what, addr) in [
        ("the Cluster Service's node port, remote endpoint", &far_np),
        ("the Local Service's node port, local endpoint", &local_np),
        ("the Local Service's cluster IP, local endpoint", &local_vip),
    ] {
        eventually(&format!("{what} answers"), LONG, || async {
            Ok((answers(addr, 3).await == only_far).then_some(()))
        })
        .await?;
    }
    apply(&cloud, &slice("far-local", far_ip, "elsewhere")).await?;
    eventually(
        "externalTrafficPolicy: Local refuses the node port with only a remote endpoint",
        LONG,
        || async { Ok(refused(&local_np).await.then_some(())) },
    )
    .await?;
    eventually(
        "internalTrafficPolicy: Local refuses the cluster IP with only a remote endpoint",
        LONG,
        || async { Ok(refused(&local_vip).await.then_some(())) },
    )
    .await?;
    assert_eq!(
        answers(&far_np, 3).await,
        only_far,
        "the same remote endpoint under Cluster policies answers"
    );

    // 4. The cluster DNS from inside a pod.
    eventually("2 ready db endpoints", LONG, || async {
        Ok((ready_endpoints(&cloud, "db").await?.len() == 2).then_some(()))
    })
    .await?;
    let web_ip = cluster_ip(&cloud, "web").await?.to_string();
    let db0_ip = pod_ips(&cloud, "db")
        .await?
        .into_iter()
        .find(|(n, _)| n == "db-0")
        .map(|(_, ip)| ip.to_string())
        .context("db-0 has no IP")?;
    cloud
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "dns-client", "namespace": "default"},
            "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{
                "name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", DNS_QUERIES]}]}}))
        .await?;
    let round = eventually("a round of DNS answers in the pod", LONG, || async {
        let (_, log) = cloud.kubectl(&["logs", "dns-client"])?;
        Ok(last_round(&log).filter(|r| {
            r.get("fqdn").is_some_and(|s| s.contains(&web_ip))
                && r.get("statefulset").is_some_and(|s| s.contains(&db0_ip))
        }))
    })
    .await?;
    eprintln!("the pod's DNS answers: {round:#?}");
    let section = |name: &str| round.get(name).cloned().unwrap_or_default();
    assert!(
        section("short").contains(&web_ip),
        "`nslookup web` in default goes through the search path: {}",
        section("short")
    );
    let srv = section("srv-headless");
    assert!(
        srv.contains("8080 db-0.db.default.svc.cluster.local")
            && srv.contains("8080 db-1.db.default.svc.cluster.local"),
        "SRV of a headless Service names each pod: {srv}"
    );
    let srv = section("srv");
    assert!(
        srv.contains("80 web.default.svc.cluster.local"),
        "SRV of a cluster IP Service names the Service: {srv}"
    );
    let cname = section("cname");
    assert!(
        cname.contains("canonical name = static.example.org"),
        "ExternalName answers as a CNAME: {cname}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn process_pods_on_the_host_network_reach_a_cluster_ip() -> Result<()> {
    if !podnet::should_run()? {
        return Ok(());
    }
    let node_ip = node_address()?.to_string();
    let cloud = Cloud::start(CloudOptions {
        own_node_ports: true,
        ..CloudOptions::default()
    })
    .await?;
    let node = "host-edge";
    let edge = Edge::join_and_start_process_networked(&cloud, node, &node_ip).await?;
    cloud.wait_node_ready(node, LONG).await?;

    // A server on the host's network: its pod IP is the node's address.
    let port = free_tcp_port();
    cloud
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "srv", "namespace": "default", "labels": {"app": "srv"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "httpd", "image": "busybox:local",
                "command": ["/bin/sh", "-c", format!(
                    "d=$(mktemp -d) && echo process-pod > $d/name && exec busybox httpd -f -p {port} -h $d")],
                "ports": [{"name": "http", "containerPort": port}]}]}}))
        .await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "srv"},
            "spec": {"selector": {"app": "srv"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    eventually(
        "the process pod is the Service's endpoint",
        LONG,
        || async {
            Ok(
                (ready_endpoints(&cloud, "srv").await? == BTreeSet::from([node_ip.clone()]))
                    .then_some(()),
            )
        },
    )
    .await?;
    let vip = cluster_ip(&cloud, "srv").await?;

    // From the host itself (this test process) and from another process pod.
    eventually("the host reaches the cluster IP", LONG, || async {
        Ok(get(&format!("{vip}:80"), "/name")
            .await
            .ok()
            .filter(|b| b == "process-pod"))
    })
    .await?;
    cloud
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "wget", "image": "busybox:local",
                "command": ["/bin/sh", "-c", format!(
                    "while true; do busybox wget -q -O - http://{vip}/name; sleep 1; done")]}]}}))
        .await?;
    eventually("the client pod reaches the cluster IP", LONG, || async {
        let (ok, log) = edge.logs("client")?;
        Ok((ok && log.contains("process-pod")).then_some(()))
    })
    .await?;
    Ok(())
}
