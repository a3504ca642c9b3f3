//! Benchmark: a 60 s partition and its heal (issue #11). NODES edges (process runtime, each in
//! a network namespace of its own, the cloud in another) run PODS pods each; then every edge
//! is cut off from the cloud (silent drops on both sides' `INPUT`) for 60 s, during which 100
//! changes are made through the API (creates, label updates and deletes, spread over the
//! nodes). Then the network heals, and the bench measures:
//! - heal -> every node Ready;
//! - heal -> converged: every desired pod Running in the API, every deleted one gone, and on
//!   each node exactly one process per desired pod;
//! - the bytes on the wire between cloud and each node from heal to converged (IP packets as
//!   the receivers' `INPUT` counted them), against the JSON bytes of the objects changed for
//!   that node: cloud -> node (the resync itself) and both directions (with status reports,
//!   heartbeats and the handshakes of the new sessions).
//!
//! Production link settings: idle timeout 20 s on both sides, node grace period 40 s (the
//! harness's test timing for heartbeats and keep-alives, `TEST_TIMING`).
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_partition_heal [NODES] [PODS] [CHANGES]`

use anyhow::{bail, Result};
use serde_json::Value;
use skerry_tests::netns::Net;
use skerry_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(180);
const PARTITION: Duration = Duration::from_secs(60);

fn size(v: &Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    netns::available()?;
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let pods: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let changes: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let net = Net::new()?;
    let cloud_host = net.host("cloud")?;
    let cloud = Cloud::start(CloudOptions {
        place: Some(cloud_host.place()),
        idle_timeout_secs: Some(20),
        ..Default::default()
    })
    .await?;
    let mut hosts = Vec::new();
    let mut edges = Vec::new();
    for i in 0..nodes {
        let host = net.host(&format!("e{i}"))?;
        let mut edge =
            Edge::join_and_start_in(&cloud, &format!("ph-{i}"), host.place(), None, None).await?;
        edge.kill9();
        edge.idle_timeout_secs = 20;
        edge.restart_backoff_base_ms = None;
        edge.start()?;
        cloud_host.count_from(&host)?;
        host.count_from(&cloud_host)?;
        hosts.push(host);
        edges.push(edge);
    }
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (n, e) in edges.iter().enumerate() {
        cloud.wait_node_ready(&e.name, DEADLINE).await?;
        for p in 0..pods {
            let name = format!("n{n}-p{p}");
            cloud
                .create_pod(process_pod(&name, &e.name, &["sleep", "3600"]))
                .await?;
            want.insert(name, e.name.clone());
        }
    }
    let t = Instant::now();
    for name in want.keys() {
        cloud.wait_running(name, DEADLINE).await?;
    }
    eprintln!(
        "{} pods running ({:.1}s after the last create)",
        want.len(),
        t.elapsed().as_secs_f64()
    );

    for h in &hosts {
        h.partition_from(&cloud_host)?;
    }
    let cut = Instant::now();
    // Changes, round-robin over the nodes: create, relabel, delete, create, relabel, ...
    let mut changed_bytes = vec![0u64; nodes];
    let mut created = 0;
    for c in 0..changes {
        let n = c % nodes;
        let node = &edges[n].name;
        let round = c / nodes;
        let body = match round % 3 {
            0 => {
                let name = format!("n{n}-new{created}");
                created += 1;
                want.insert(name.clone(), node.clone());
                cloud
                    .create_pod(process_pod(&name, node, &["sleep", "3600"]))
                    .await?
            }
            1 => {
                let name = format!("n{n}-p{round}");
                let label = format!("rev={round}");
                let (ok, out) =
                    cloud.kubectl(&["label", "pod", &name, &label, "--overwrite", "-o", "json"])?;
                if !ok {
                    bail!("kubectl label {name}: {out}");
                }
                serde_json::from_str(&out)?
            }
            _ => {
                let name = format!("n{n}-p{}", pods - 1 - round);
                want.remove(&name);
                cloud.delete_pod(&name).await?
            }
        };
        changed_bytes[n] += size(&body);
    }
    eprintln!(
        "{changes} changes made in {:.1}s of the partition",
        cut.elapsed().as_secs_f64()
    );
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;

    let mut before = Vec::new();
    for h in &hosts {
        before.push((cloud_host.bytes_from(h)?, h.bytes_from(&cloud_host)?));
    }
    net.heal_all()?;
    let healed = Instant::now();
    let mut ready_at = Vec::new();
    for e in &edges {
        cloud.wait_node_ready(&e.name, DEADLINE).await?;
        ready_at.push(healed.elapsed());
    }
    let ready = healed.elapsed();
    let wanted: BTreeSet<&String> = want.keys().collect();
    eventually("converged", DEADLINE, || async {
        let (_, list) = cloud
            .api("GET", "/api/v1/namespaces/default/pods", None)
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let names: BTreeSet<String> = items
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        if names.iter().collect::<BTreeSet<_>>() != wanted || !items.iter().all(pod_running) {
            return Ok(None);
        }
        for e in &edges {
            let on_node = want.values().filter(|n| **n == e.name).count();
            if e.container_pids("sleep").len() != on_node {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let converged = healed.elapsed();
    let mut down = 0;
    let mut both = 0;
    let mut objects = 0;
    for (i, h) in hosts.iter().enumerate() {
        let to_node = h.bytes_from(&cloud_host)? - before[i].1;
        let from_node = cloud_host.bytes_from(h)? - before[i].0;
        down += to_node;
        both += to_node + from_node;
        objects += changed_bytes[i];
    }
    let mut sorted = ready_at.clone();
    sorted.sort();
    println!(
        "nodes {nodes} x pods {pods}, {changes} changes during a {}s partition",
        PARTITION.as_secs()
    );
    println!(
        "heal -> every node Ready {:.2}s (first {:.2}s, median {:.2}s)",
        ready.as_secs_f64(),
        sorted[0].as_secs_f64(),
        sorted[sorted.len() / 2].as_secs_f64()
    );
    println!("heal -> converged {:.2}s", converged.as_secs_f64());
    println!(
        "changed objects {objects} B; cloud->nodes {down} B ({:.2}x); both directions {both} B ({:.2}x); per node {:.0} B / {:.0} B",
        down as f64 / objects as f64,
        both as f64 / objects as f64,
        down as f64 / nodes as f64,
        objects as f64 / nodes as f64,
    );
    drop(edges);
    drop(cloud);
    drop(net);
    Ok(())
}
