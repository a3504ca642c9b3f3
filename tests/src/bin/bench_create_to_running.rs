//! Benchmark: Create → Running latency of process-runtime pods over several edge nodes on
//! loopback, and idle memory of the daemons. Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --release --workspace --bins && SKERRY_BIN_DIR=target/release target/release/bench_create_to_running [NODES] [PODS]`
//! (`SKERRY_BENCH_TRACE=1` prints wall-clock create/Running times per pod; `SKERRY_KEEP_DIRS=1` keeps the daemons' logs.)
//!
//! With `SKERRY_BENCH_RUNTIME=cri` the edges run real containers (busybox) through a private
//! containerd that the bench starts, as the tests do; `... bench_create_to_running 1 20` is the
//! figure of issue #3.

use serde_json::Value;
use skerry_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let pods: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let cri = std::env::var("SKERRY_BENCH_RUNTIME").as_deref() == Ok("cri");
    let ctrd = if cri {
        Some(containerd::Containerd::start().await?)
    } else {
        None
    };
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edges = Vec::new();
    for i in 0..nodes {
        let name = format!("bench-{i}");
        edges.push(match &ctrd {
            Some(c) => Edge::join_and_start_cri(&cloud, &name, c).await?,
            None => Edge::join_and_start(&cloud, &name, &[]).await?,
        });
    }
    for i in 0..nodes {
        cloud
            .wait_node_ready(&format!("bench-{i}"), Duration::from_secs(60))
            .await?;
    }
    // Create all pods as fast as the API takes them, timestamping each create, while an
    // observer polls the pod list every 10 ms and timestamps the first sighting of each pod as
    // Running. Both run at once, so no pod waits for the others' creation to be observed.
    let trace = std::env::var_os("SKERRY_BENCH_TRACE").is_some();
    let created: tokio::sync::Mutex<HashMap<String, Instant>> = Default::default();
    let t0 = Instant::now();
    let create = async {
        for i in 0..pods {
            let name = format!("p{i}");
            let mut pod = process_pod(&name, &format!("bench-{}", i % nodes), &["sleep", "3600"]);
            if cri {
                pod["spec"]["containers"][0]["image"] = containerd::BUSYBOX_IMAGE.into();
            }
            if trace {
                eprintln!("create {name} {:?}", std::time::SystemTime::now());
            }
            created.lock().await.insert(name, Instant::now());
            cloud.create_pod(pod).await?;
        }
        anyhow::Ok(t0.elapsed().as_secs_f64())
    };
    let observe = async {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while seen.len() < pods && Instant::now() < deadline {
            let list = cloud
                .get("/api/v1/namespaces/default/pods")
                .await?
                .unwrap_or(Value::Null);
            let now = Instant::now();
            for p in list["items"].as_array().into_iter().flatten() {
                let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                if phase(p) == "Running" && !seen.contains_key(&name) {
                    if trace {
                        eprintln!("running {name} {:?}", std::time::SystemTime::now());
                    }
                    seen.insert(name, now);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(seen)
    };
    let (create_secs, seen) = tokio::join!(create, observe);
    let (create_secs, seen) = (create_secs?, seen?);
    let created = created.into_inner();
    let latency: HashMap<&String, Duration> = seen
        .iter()
        .filter_map(|(name, at)| Some((name, at.saturating_duration_since(*created.get(name)?))))
        .collect();
    anyhow::ensure!(
        latency.len() == pods,
        "only {} of {pods} pods reached Running",
        latency.len()
    );
    let mut ms: Vec<f64> = latency.values().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    let cloud_cpu = cloud.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let edge_cpu: f64 = edges
        .iter()
        .filter_map(|e| e.pid().and_then(cpu_seconds))
        .sum();
    // Idle memory after things settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let edge_rss: Vec<u64> = edges
        .iter()
        .filter_map(|e| e.pid().and_then(rss_kib))
        .collect();
    let cloud_rss = cloud.pid().and_then(rss_kib).unwrap_or(0);
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| runtime | {} |",
        if cri { "cri (containerd)" } else { "process" }
    );
    println!("| pods / nodes | {pods} / {nodes} |");
    println!(
        "| API create rate | {:.0} pods/s |",
        pods as f64 / create_secs
    );
    println!("| Create → Running p50 | {:.0} ms |", pct(0.50));
    println!("| Create → Running p99 | {:.0} ms |", pct(0.99));
    println!("| Create → Running max | {:.0} ms |", ms[ms.len() - 1]);
    println!("| CPU used from start until all Running: cloudcore / all edgecores | {cloud_cpu:.2} s / {edge_cpu:.2} s |");
    println!(
        "| edgecore RSS, {} pods each (max over nodes) | {:.1} MiB |",
        pods / nodes,
        edge_rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "| cloudcore RSS with {nodes} nodes, {pods} pods | {:.1} MiB |",
        cloud_rss as f64 / 1024.0
    );
    if let Some(c) = &ctrd {
        // Remove the containers before the harness stops containerd, as an admin would.
        for i in 0..pods {
            cloud
                .api(
                    "DELETE",
                    &format!("/api/v1/namespaces/default/pods/p{i}"),
                    None,
                )
                .await?;
        }
        eventually("pods removed", Duration::from_secs(120), || async {
            Ok(c.leftovers().await?.is_empty().then_some(()))
        })
        .await?;
    }
    Ok(())
}
