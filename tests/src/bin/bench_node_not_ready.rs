//! Benchmark: how long from containerd failing under a running edge until the node is
//! `Ready=False` in the API, and back to `Ready=True` once it is back, for a stopped daemon
//! (connection refused) and a frozen one (SIGSTOP: it accepts and never answers, so the
//! heartbeat's status check runs into its deadline). The floor is the heartbeat period: a
//! report can only say what the last check found.
//!
//! `cargo build --release --workspace --bins && SKERRY_BIN_DIR=target/release target/release/bench_node_not_ready [ROUNDS]`

use serde_json::Value;
use skerry_tests::*;
use std::time::{Duration, Instant};

fn ready(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

async fn time_until(cloud: &Cloud, node: &str, want: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let path = format!("/api/v1/nodes/{node}");
    loop {
        if let Some(n) = cloud.get(&path).await? {
            if ready(&n) == Some(want) {
                return Ok(start.elapsed().as_secs_f64());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("node not {want} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let mut ctrd = containerd::Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "bench-health", &ctrd).await?;
    cloud
        .wait_node_ready("bench-health", Duration::from_secs(60))
        .await?;
    println!("| failure (heartbeat 1 s, check deadline 5 s) | round | to NotReady (s) | back to Ready (s) |");
    println!("|---|---:|---:|---:|");
    for round in 1..=rounds {
        ctrd.stop_daemon()?;
        let down = time_until(&cloud, "bench-health", "False").await?;
        let t = Instant::now();
        ctrd.start_daemon().await?;
        time_until(&cloud, "bench-health", "True").await?;
        let up = t.elapsed().as_secs_f64();
        println!("| containerd stopped | {round} | {down:.2} | {up:.2} |");
    }
    for round in 1..=rounds {
        ctrd.freeze_daemon(true)?;
        let down = time_until(&cloud, "bench-health", "False").await?;
        ctrd.freeze_daemon(false)?;
        let up = time_until(&cloud, "bench-health", "True").await?;
        println!("| containerd frozen (SIGSTOP) | {round} | {down:.2} | {up:.2} |");
    }
    Ok(())
}
