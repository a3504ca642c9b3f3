//! Benchmark: what a 100 MB log stream through the cloud adds to the node's sync (issue #13).
//! One edge on loopback with the process runtime; a pod has written `MB` megabytes of log.
//! Pods are created one at a time and timed from the create (the API's answer) to `Running`
//! in the API (the hub's sync to the node, the process start, the node's report over MQTT,
//! the ingest): `PODS` pods with no log stream open, `PODS` while a client reads the whole log
//! through the cloud over and over as fast as it can, and `PODS` while a client holds the log
//! stream open without reading (its window full). The three phases run `ROUNDS` times in turn.
//!
//! `cargo build --release --workspace --bins && SKERRY_BIN_DIR=target/release PODS=20 MB=100 ROUNDS=2 target/release/bench_log_sync`

use anyhow::{bail, Context, Result};
use skerry_tests::measure::pct;
use skerry_tests::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates a pod and waits, polling every 5 ms, for `Running`: seconds from the create.
async fn create_to_running(cloud: &Cloud, name: &str) -> Result<f64> {
    let t = Instant::now();
    cloud
        .create_pod(process_pod(name, "log-sync", &["sleep", "3600"]))
        .await?;
    let path = format!("/api/v1/namespaces/default/pods/{name}");
    loop {
        if let Some(p) = cloud.get(&path).await? {
            if p["status"]["phase"] == "Running" {
                return Ok(t.elapsed().as_secs_f64());
            }
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("{name} not running after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let (pods, mb, rounds) = (env("PODS", 20), env("MB", 100) as u64, env("ROUNDS", 2));
    let bytes = mb * 1_000_000;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "log-sync", &[]).await?;
    cloud
        .wait_node_ready("log-sync", Duration::from_secs(60))
        .await?;
    let url = chatty_pod(&cloud, "chatty", "log-sync", bytes).await?;
    let client = cloud.admin_client_builder()?.build()?;
    // Warm-up: the first pods pay for first connections and caches.
    for i in 0..3 {
        create_to_running(&cloud, &format!("warm-{i}")).await?;
    }

    let (mut idle, mut reading, mut stalled) = (Vec::new(), Vec::new(), Vec::new());
    let streamed = Arc::new(AtomicU64::new(0));
    let mut reading_secs = 0.0;
    for round in 0..rounds {
        for i in 0..pods {
            idle.push(create_to_running(&cloud, &format!("idle-{round}-{i}")).await? * 1e3);
        }

        // A reader that pulls the whole log, again and again, until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (client, url, stop, streamed) =
                (client.clone(), url.clone(), stop.clone(), streamed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut resp = client.get(&url).send().await?;
                    if !resp.status().is_success() {
                        bail!("GET log: {}", resp.status());
                    }
                    while let Some(chunk) = resp.chunk().await? {
                        streamed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                Ok(())
            })
        };
        // Let it reach full speed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        for i in 0..pods {
            reading.push(create_to_running(&cloud, &format!("read-{round}-{i}")).await? * 1e3);
        }
        reading_secs += t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        reader.await.context("reader task")??;

        // A client that opens the stream and stops reading: its window fills and stays full.
        let mut held = client.get(&url).send().await?;
        held.chunk().await?.context("first chunk")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..pods {
            stalled.push(create_to_running(&cloud, &format!("stall-{round}-{i}")).await? * 1e3);
        }
        drop(held);
    }
    for v in [&mut idle, &mut reading, &mut stalled] {
        v.sort_by(f64::total_cmp);
    }
    let n = idle.len();
    println!("| create → Running, {n} pods each | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (what, v) in [
        ("no log stream", &idle),
        ("a client reading the log at full speed", &reading),
        ("a client holding the log stream, not reading", &stalled),
    ] {
        println!("| {what} | {:.1} | {:.1} |", pct(v, 0.5), pct(v, 0.99));
    }
    println!(
        "log read through the cloud while pods were created: {:.0} MB in {reading_secs:.1} s ({:.1} MB/s)",
        streamed.load(Ordering::Relaxed) as f64 / 1e6,
        streamed.load(Ordering::Relaxed) as f64 / 1e6 / reading_secs
    );
    Ok(())
}
