//! The pod overlay, end to end on real containers: two edges in network namespaces of their
//! own, each with its own containerd, bridge and pod CIDR. While the two nodes reach each other,
//! pod packets between them go straight from node to node on a mTLS QUIC connection of their
//! own, which the hub tells both about once it has relayed packets between them; once every
//! packet between the nodes is dropped, that connection dies and the packets go through the
//! hub, which relays them as QUIC datagrams on the links the nodes already hold. Either way, a
//! pod on edge A and edge A's host reach the pod on edge B by its pod IP, and the Service whose
//! only endpoint is on B by its cluster IP and by name, and the pod on B sees the client pod's
//! own address (no NAT between pods).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use skerry_tests::netns::Net;
use skerry_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

async fn apply(cloud: &Cloud, obj: &Value) -> Result<()> {
    let file = cloud.dir.path().join(format!(
        "{}.json",
        obj["metadata"]["name"].as_str().unwrap_or("obj")
    ));
    std::fs::write(&file, obj.to_string())?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
    anyhow::ensure!(ok, "kubectl apply: {out}");
    Ok(())
}

/// One HTTP/1.0 GET of `path` at `addr` from the network namespace `ns` (a node's host): the
/// body, if an answer came.
fn host_get(ns: &str, addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let path = path.to_string();
    skerry_tests::podnet::in_ns(ns, move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .ok()?
    .ok()
    .and_then(|r| {
        r.split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_string())
    })
}

fn pod_cidr(node: &Value) -> Result<protocol::overlay::Cidr> {
    let cidr = node["spec"]["podCIDR"].as_str().context("no podCIDR")?;
    Ok(protocol::overlay::Cidr::parse(cidr)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_other_nodes_are_reached_directly_and_through_the_hub_once_the_nodes_are_cut_apart(
) -> Result<()> {
    if !containerd::require() || !netns::should_run()? {
        return Ok(());
    }
    let net = Net::new()?;
    let (_cloud_host, cloud) = Cloud::start_on(&net, CloudOptions::default()).await?;
    let (host_a, host_b) = (net.host("a")?, net.host("b")?);
    // A node has a default route (here into the observer, which drops what it is sent): the
    // host's connect to a cluster IP needs a route before the proxy rewrites it.
    for h in [&host_a, &host_b] {
        h.route_default_via_observer()?;
    }
    let ctrd_a = Containerd::start_in(Some(&host_a.ns)).await?;
    let ctrd_b = Containerd::start_in(Some(&host_b.ns)).await?;
    let edge_a =
        Edge::join_and_start_cri_networked_in(&cloud, "ov-a", &ctrd_a, &[], Some(host_a.place()))
            .await?;
    let edge_b =
        Edge::join_and_start_cri_networked_in(&cloud, "ov-b", &ctrd_b, &[], Some(host_b.place()))
            .await?;
    let node_a = cloud.wait_node_ready("ov-a", LONG).await?;
    let node_b = cloud.wait_node_ready("ov-b", LONG).await?;
    let (cidr_a, cidr_b) = (pod_cidr(&node_a)?, pod_cidr(&node_b)?);
    assert_ne!(cidr_a, cidr_b, "each node has a pod CIDR of its own");

    // The server, on B only, behind a Service.
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "srv", "namespace": "default", "labels": {"app": "srv"}},
            "spec": {"nodeName": "ov-b", "terminationGracePeriodSeconds": 1, "containers": [{
                "name": "httpd", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                    "mkdir -p /www/cgi-bin && echo srv-on-b > /www/name && \
                     printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/peer && \
                     chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
    )
    .await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "srv"},
            "spec": {"selector": {"app": "srv"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    let srv = cloud
        .wait_for(
            "srv ready",
            "/api/v1/namespaces/default/pods/srv",
            LONG,
            |p| {
                condition_of(p, "Ready").is_some_and(|c| c["status"] == "True")
                    && p["status"]["podIP"].as_str().is_some()
            },
        )
        .await?;
    let srv_ip = srv["status"]["podIP"]
        .as_str()
        .context("podIP")?
        .to_string();
    assert!(
        cidr_b.contains(srv_ip.parse()?),
        "{srv_ip} comes from B's pod CIDR {cidr_b}"
    );
    let svc = cloud
        .get("/api/v1/namespaces/default/services/srv")
        .await?
        .context("service")?;
    let vip = svc["spec"]["clusterIP"]
        .as_str()
        .context("clusterIP")?
        .to_string();

    let by_ip: std::net::SocketAddr = format!("{srv_ip}:8080").parse()?;
    let relayed = || async {
        Ok::<_, anyhow::Error>(
            cloud
                .metric("skerry_hub_overlay_packets_total{result=\"relayed\"}")
                .await?
                .unwrap_or(0.0),
        )
    };

    // While A reaches B: the first packets go through the hub, which then tells both nodes
    // about each other, and the next go straight from A to B (A counts them sent directly, B
    // delivered directly), with nothing through the hub.
    let body = eventually("A's host reaches the pod on B by pod IP", LONG, || async {
        Ok(host_get(&host_a.ns, by_ip, "/name"))
    })
    .await?;
    assert_eq!(body, "srv-on-b");
    eventually("A sends pod packets straight to B", LONG, || async {
        let _ = host_get(&host_a.ns, by_ip, "/name");
        let direct = edge_a
            .metric_series("skerry_edge_overlay_packets_total{direction=\"out\",result=\"direct\"}")
            .await?
            .unwrap_or(0.0);
        Ok((direct > 0.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}{}", edge_a.log_tail(), edge_b.log_tail()))?;
    eventually(
        "a GET from A's host to B's pod that the hub does not carry",
        LONG,
        || async {
            let before = relayed().await?;
            let body = host_get(&host_a.ns, by_ip, "/name");
            let after = relayed().await?;
            Ok((body.as_deref() == Some("srv-on-b") && after == before).then_some(()))
        },
    )
    .await?;
    let delivered = edge_b
        .metric_series(
            "skerry_edge_overlay_packets_total{direction=\"in_direct\",result=\"delivered\"}",
        )
        .await?
        .unwrap_or(0.0);
    assert!(
        delivered > 0.0,
        "B delivered packets that came straight from A"
    );

    // Nothing passes between the two nodes from here on: whatever reaches B from A came
    // through the hub. The direct connection dies of silence and packets go back to the hub.
    host_a.partition_from(&host_b)?;
    let before = relayed().await?;

    // From A's host: the pod by its IP, and the Service by its cluster IP (the proxy picks
    // the remote endpoint; the overlay masquerades the host's source).
    let body = eventually("A's host reaches the pod on B by pod IP", LONG, || async {
        Ok(host_get(&host_a.ns, by_ip, "/name"))
    })
    .await?;
    assert_eq!(body, "srv-on-b");
    let by_vip: std::net::SocketAddr = format!("{vip}:80").parse()?;
    let body = eventually("A's host reaches the Service on B", LONG, || async {
        Ok(host_get(&host_a.ns, by_vip, "/name"))
    })
    .await?;
    assert_eq!(body, "srv-on-b");
    // B itself is out of A's reach, directly (B's edgecore serves metrics on its address).
    let b_metrics: std::net::SocketAddr =
        format!("{}:{}", host_b.ip, edge_b.metrics_port).parse()?;
    assert_eq!(
        host_get(&host_a.ns, b_metrics, "/metrics"),
        None,
        "A reaches B directly: the partition is not in place"
    );

    // From a pod on A: by pod IP and by Service name.
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"nodeName": "ov-a", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
              "containers": [{
                "name": "c", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", format!(
                    "ip -4 -o addr show eth0; \
                     for i in $(seq 60); do \
                       a=$(timeout 5 wget -q -O - http://{srv_ip}:8080/name) && \
                       b=$(timeout 5 wget -q -O - http://srv.default.svc.cluster.local/name) && \
                       p=$(timeout 5 wget -q -O - http://{srv_ip}:8080/cgi-bin/peer) && \
                       echo \"by-ip=$a by-name=$b peer=$p\" && break; sleep 1; done; sleep 3600")]}]}}),
    )
    .await?;
    let log = eventually("the client pod on A reaches B's pod", LONG, || async {
        let (ok, log) = cloud.kubectl(&["logs", "client"])?;
        Ok((ok && log.contains("by-ip=")).then_some(log))
    })
    .await
    .map_err(|e| {
        let (_, log) = cloud.kubectl(&["logs", "client"]).unwrap_or_default();
        anyhow::anyhow!("{e}; the client's log:\n{log}")
    })?;
    assert!(
        log.contains("by-ip=srv-on-b by-name=srv-on-b"),
        "the pod reaches the pod on B by IP and by Service name: {log}"
    );
    let client = cloud
        .get("/api/v1/namespaces/default/pods/client")
        .await?
        .context("client")?;
    let client_ip: std::net::IpAddr = client["status"]["podIP"]
        .as_str()
        .context("client podIP")?
        .parse()?;
    assert!(cidr_a.contains(client_ip), "{client_ip} is in A's {cidr_a}");
    // No NAT between pods: the server on B saw the client pod's own address (busybox httpd
    // prints it IPv4-mapped).
    assert!(
        log.contains(&format!("peer={client_ip}\n"))
            || log.contains(&format!("peer=[::ffff:{client_ip}]")),
        "B's pod sees the client by its pod IP: {log}"
    );

    // The hub carried it.
    assert!(
        relayed().await? > before,
        "the hub relayed the packets once the nodes were cut apart"
    );

    // Healed, A goes straight to B again; then B is revoked. Its direct connection outlives
    // its session, and its certificate still passes A's TLS: the hub withdraws it, and A
    // closes the connection at once instead of when it goes unused.
    host_a.heal()?;
    host_b.heal()?;
    eventually("A sends pod packets straight to B again", LONG, || async {
        let _ = host_get(&host_a.ns, by_ip, "/name");
        let peers = edge_a
            .metric_series("skerry_edge_overlay_direct_peers")
            .await?
            .unwrap_or(0.0);
        Ok((peers >= 1.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}{}", edge_a.log_tail(), edge_b.log_tail()))?;
    cloud.revoke("ov-b")?;
    eventually(
        "A closes its direct path to the revoked B",
        LONG,
        || async {
            let withdrawn = edge_a
                .metric_series("skerry_edge_overlay_peers_withdrawn_total")
                .await?
                .unwrap_or(0.0);
            let peers = edge_a
                .metric_series("skerry_edge_overlay_direct_peers")
                .await?
                .unwrap_or(0.0);
            Ok((withdrawn >= 1.0 && peers == 0.0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", edge_a.log_tail()))?;
    Ok(())
}
