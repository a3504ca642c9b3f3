//! Benchmark: `kubectl exec POD -- true` through the cloud (WebSocket to cloudcore, the node's
//! QUIC link to edgecore) against `edgecore exec POD -- true` on the node itself, in the same
//! run and interleaved, on loopback with the process runtime; `kubectl get pod` as the floor of
//! what any kubectl call costs here (process start, kubeconfig, TLS). Prints a Markdown table
//! for BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_pod_exec [RUNS]`

use anyhow::{bail, Result};
use skerry_tests::measure::pct;
use skerry_tests::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(ms)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "bench-exec", &[]).await?;
    cloud
        .wait_node_ready("bench-exec", Duration::from_secs(60))
        .await?;
    cloud
        .create_pod(process_pod("target", "bench-exec", &["sleep", "3600"]))
        .await?;
    cloud
        .wait_running("target", Duration::from_secs(60))
        .await?;
    let kubectl = |args: &[&str]| {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(cloud.kubeconfig_path())
            .args(args);
        c
    };
    let edgecore = bin("edgecore")?;
    let local = || {
        let mut c = Command::new(&edgecore);
        c.arg("--data-dir")
            .arg(edge.dir.path())
            .args(["exec", "target", "--", "true"]);
        c
    };
    // One of each first: caches warm, connections made.
    timed(&mut kubectl(&["exec", "target", "--", "true"]))?;
    timed(&mut local())?;
    let (mut cloud_ms, mut local_ms, mut get_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        cloud_ms.push(timed(&mut kubectl(&["exec", "target", "--", "true"]))?);
        local_ms.push(timed(&mut local())?);
        get_ms.push(timed(&mut kubectl(&["get", "pod", "target"]))?);
    }
    for v in [&mut cloud_ms, &mut local_ms, &mut get_ms] {
        v.sort_by(f64::total_cmp);
    }
    println!("| {runs} runs each, interleaved | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!(
        "| `kubectl exec target -- true` (cloud → edge over QUIC) | {:.0} | {:.0} |",
        pct(&cloud_ms, 0.5),
        pct(&cloud_ms, 0.99)
    );
    println!(
        "| `edgecore exec target -- true` on the node | {:.0} | {:.0} |",
        pct(&local_ms, 0.5),
        pct(&local_ms, 0.99)
    );
    println!(
        "| `kubectl get pod target` (any kubectl call's floor) | {:.0} | {:.0} |",
        pct(&get_ms, 0.5),
        pct(&get_ms, 0.99)
    );
    Ok(())
}
