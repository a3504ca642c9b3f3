//! Benchmark: Create → Running latency of process-runtime pods over several edge nodes on
//! loopback, and idle memory of the daemons. Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --release --workspace --bins && SKERRY_BIN_DIR=target/release target/release/bench_create_to_running [NODES] [PODS]`

use serde_json::Value;
use skerry_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let pods: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edges = Vec::new();
    for i in 0..nodes {
        edges.push(Edge::join_and_start(&cloud, &format!("bench-{i}"), &[]).await?);
    }
    for i in 0..nodes {
        cloud
            .wait_node_ready(&format!("bench-{i}"), Duration::from_secs(60))
            .await?;
    }
    // Create all pods as fast as the API takes them, timestamping each create.
    let mut created: HashMap<String, Instant> = HashMap::new();
    let t0 = Instant::now();
    for i in 0..pods {
        let name = format!("p{i}");
        let pod = process_pod(&name, &format!("bench-{}", i % nodes), &["sleep", "3600"]);
        let start = Instant::now();
        cloud.create_pod(pod).await?;
        created.insert(name, start);
    }
    let create_secs = t0.elapsed().as_secs_f64();
    // Observe Running by polling the list; the first time a pod is seen Running is its latency.
    let mut latency: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while latency.len() < pods && Instant::now() < deadline {
        let list = cloud
            .get("/api/v1/namespaces/default/pods")
            .await?
            .unwrap_or(Value::Null);
        let now = Instant::now();
        for p in list["items"].as_array().into_iter().flatten() {
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            if phase(p) == "Running" && !latency.contains_key(&name) {
                if let Some(start) = created.get(&name) {
                    latency.insert(name, now - *start);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(
        latency.len() == pods,
        "only {} of {pods} pods reached Running",
        latency.len()
    );
    let mut ms: Vec<f64> = latency.values().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    // Idle memory after things settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let edge_rss: Vec<u64> = edges
        .iter()
        .filter_map(|e| e.pid().and_then(rss_kib))
        .collect();
    let cloud_rss = cloud.pid().and_then(rss_kib).unwrap_or(0);
    println!("| figure | value |");
    println!("|---|---|");
    println!("| pods / nodes | {pods} / {nodes} |");
    println!(
        "| API create rate | {:.0} pods/s |",
        pods as f64 / create_secs
    );
    println!("| Create → Running p50 | {:.0} ms |", pct(0.50));
    println!("| Create → Running p99 | {:.0} ms |", pct(0.99));
    println!("| Create → Running max | {:.0} ms |", ms[ms.len() - 1]);
    println!(
        "| edgecore RSS, {} pods each (max over nodes) | {:.1} MiB |",
        pods / nodes,
        edge_rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "| cloudcore RSS with {nodes} nodes, {pods} pods | {:.1} MiB |",
        cloud_rss as f64 / 1024.0
    );
    Ok(())
}
