//! Benchmark: a damaged edge cache (issue #11). One edge runs PODS pods (process runtime).
//! Each run cuts the cloud, kills edgecore with SIGKILL, empties its cache file (`db` truncated
//! to 0 bytes), and measures two figures, polling every 10 ms:
//!
//! - *held*: from edgecore's spawn (cloud still down) to `skerry_edge_pods_held` = PODS, i.e.
//!   the damage detected, the cache moved aside and every running pod kept; the pods' pids are
//!   checked unchanged.
//! - *rebuilt*: edgecore killed again, cloudcore started again, then from edgecore's spawn to
//!   `skerry_edge_desired_state_known` = 1 with no pod held and PODS pod workers (the cloud's
//!   snapshot applied and every pod adopted); the pids are checked unchanged again.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_cache_recovery [PODS] [RUNS]`

use skerry_tests::*;
use std::time::{Duration, Instant};

async fn wait_metrics(
    edge: &Edge,
    what: &str,
    t0: Instant,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(text) = edge.metrics_text().await {
            if done(&text) {
                return Ok(t0.elapsed());
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("{what} never happened{}", edge.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pods: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let node = "damaged-0";
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, node, &[]).await?;
    cloud.wait_node_ready(node, Duration::from_secs(60)).await?;
    for i in 0..pods {
        cloud
            .create_pod(process_pod(&format!("p{i}"), node, &["sleep", "3600"]))
            .await?;
    }
    for i in 0..pods {
        cloud
            .wait_running(&format!("p{i}"), Duration::from_secs(120))
            .await?;
    }
    let mut before = edge.container_pids("sleep");
    before.sort();
    anyhow::ensure!(before.len() == pods, "{} of {pods} pods run", before.len());
    let n = pods as f64;
    let (mut held, mut rebuilt) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        cloud.kill9();
        edge.kill9();
        std::fs::OpenOptions::new()
            .write(true)
            .open(edge.dir.path().join("cache").join("db"))?
            .set_len(0)?;
        let t0 = Instant::now();
        edge.start()?;
        let t_held = wait_metrics(&edge, "every pod held", t0, |m| {
            sample(m, "skerry_edge_pods_held") == Some(n)
        })
        .await?;
        let mut now = edge.container_pids("sleep");
        now.sort();
        anyhow::ensure!(
            now == before,
            "pods changed while held: {now:?} vs {before:?}"
        );

        edge.kill9();
        cloud.launch().await?;
        let t0 = Instant::now();
        edge.start()?;
        let t_rebuilt = wait_metrics(&edge, "the desired state rebuilt", t0, |m| {
            sample(m, "skerry_edge_desired_state_known") == Some(1.0)
                && sample(m, "skerry_edge_pods_held") == Some(0.0)
                && sample(m, "skerry_edge_pod_workers") == Some(n)
        })
        .await?;
        let mut now = edge.container_pids("sleep");
        now.sort();
        anyhow::ensure!(
            now == before,
            "pods changed at the rebuild: {now:?} vs {before:?}"
        );
        println!(
            "| {run} | held {} ms | rebuilt {} ms |",
            t_held.as_millis(),
            t_rebuilt.as_millis()
        );
        held.push(t_held);
        rebuilt.push(t_rebuilt);
    }
    held.sort();
    rebuilt.sort();
    println!(
        "{pods} pods, {runs} runs: held median {} ms (worst {} ms), rebuilt median {} ms (worst {} ms)",
        held[runs / 2].as_millis(),
        held[runs - 1].as_millis(),
        rebuilt[runs / 2].as_millis(),
        rebuilt[runs - 1].as_millis()
    );
    Ok(())
}
