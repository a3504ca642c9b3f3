//! Benchmark: log streaming through the cloud (`GET .../pods/{name}/log` over the node's QUIC
//! link) against reading the same log on the node (the file itself, and `edgecore logs`, the
//! same reader offline), on loopback with the process runtime. Prints a Markdown table for
//! BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_pod_logs [MB] [RUNS]`

use anyhow::{bail, Context, Result};
use skerry_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The container's log file under the edge's data dir (`pods/<uid>/logs/main/0.log`).
fn log_file(data_dir: &Path) -> Result<PathBuf> {
    for pod in std::fs::read_dir(data_dir.join("pods"))? {
        let candidate = pod?.path().join("logs/main/0.log");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no log file under {}", data_dir.display())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let bytes = mb * 1_000_000;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "bench-logs", &[]).await?;
    cloud
        .wait_node_ready("bench-logs", Duration::from_secs(60))
        .await?;
    // 64-byte lines (63 characters and a newline), then a marker.
    let url = chatty_pod(&cloud, "chatty", "bench-logs", bytes).await?;
    let client = cloud.admin_client_builder()?.build()?;
    let file = log_file(edge.dir.path())?;
    let size = std::fs::metadata(&file)?.len();

    let (mut file_mbs, mut local_mbs, mut cloud_mbs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let n = std::fs::read(&file)?.len() as u64;
        file_mbs.push(n as f64 / 1e6 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let status = Command::new(bin("edgecore")?)
            .arg("--data-dir")
            .arg(edge.dir.path())
            .args(["logs", "chatty"])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("edgecore logs failed: {status}");
        }
        local_mbs.push(size as f64 / 1e6 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut resp = client.get(&url).send().await?;
        if !resp.status().is_success() {
            bail!("GET log: {}", resp.status());
        }
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.context("log body")? {
            got += chunk.len() as u64;
        }
        if got != size {
            bail!("the cloud sent {got} bytes of a {size}-byte log");
        }
        cloud_mbs.push(got as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    println!(
        "| log of {:.0} MB, median of {runs} | MB/s |",
        size as f64 / 1e6
    );
    println!("|---|---|");
    println!("| read the file on the node | {:.0} |", median(file_mbs));
    println!("| `edgecore logs` on the node | {:.0} |", median(local_mbs));
    println!(
        "| through the cloud (`GET .../log`, QUIC link + HTTPS) | {:.0} |",
        median(cloud_mbs)
    );
    Ok(())
}
