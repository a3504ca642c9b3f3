//! Pod addresses unique across the cluster: the cloud gives each node a pod CIDR of its own
//! (`spec.podCIDR`), the edge writes its CNI configuration from it, and real containers get
//! their addresses from it; two nodes' pods never share a subnet.

use serde_json::json;
use skerry_tests::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

/// Whether `ip` is inside `cidr` (`a.b.c.d/n`).
fn inside(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').expect("a CIDR");
    let (net, prefix): (Ipv4Addr, u32) = (net.parse().unwrap(), prefix.parse().unwrap());
    let ip: Ipv4Addr = ip.parse().unwrap();
    let mask = u32::MAX << (32 - prefix);
    u32::from(ip) & mask == u32::from(net) & mask
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_get_addresses_from_their_nodes_own_pod_cidr() -> anyhow::Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let (ctrd_a, ctrd_b) = (
        containerd::Containerd::start().await?,
        containerd::Containerd::start().await?,
    );
    let _a = Edge::join_and_start_cri_networked(&cloud, "net-a", &ctrd_a, &[]).await?;
    let _b = Edge::join_and_start_cri_networked(&cloud, "net-b", &ctrd_b, &[]).await?;
    let mut cidrs = Vec::new();
    for (node, pod) in [("net-a", "pa"), ("net-b", "pb")] {
        cloud.wait_node_ready(node, DEADLINE).await?;
        let n = cloud.get(&format!("/api/v1/nodes/{node}")).await?.unwrap();
        let cidr = n["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            inside(cidr.split('/').next().unwrap(), &cloud.cluster_cidr),
            "{cidr} in {}",
            cloud.cluster_cidr
        );
        cloud
            .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "default"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": containerd::BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never", "command": ["sleep", "300"]}]}}))
            .await?;
        let running = cloud.wait_running(pod, DEADLINE).await?;
        let ip = running["status"]["podIP"].as_str().unwrap_or_default();
        assert!(
            inside(ip, &cidr),
            "pod {pod} on {node} has {ip}, outside its node's {cidr}"
        );
        cidrs.push(cidr);
    }
    assert_ne!(cidrs[0], cidrs[1], "each node has its own pod CIDR");
    Ok(())
}
