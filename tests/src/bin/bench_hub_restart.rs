//! Benchmark: cloudcore restart → edges resynced (issue #11). NODES edges run with the
//! production link settings (idle timeout 20 s on both sides, keep-alives every 2 s from the
//! edge); cloudcore is killed with SIGKILL and started again on the same data dir and ports.
//! Right after its API answers again, one new pod per node is created; an edge counts as
//! resynced when that pod's process runs on it. Two figures per run: from the API answering
//! (the hub's QUIC endpoint is bound before the API) and from cloudcore's spawn (an upper bound
//! that includes cloudcore's own start-up). A third figure is the time until every new pod is
//! `Running` in the API, i.e. until its status came back over MQTT.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_hub_restart [NODES] [RUNS]`
//! (`SKERRY_BENCH_OUTAGE_SECS=N` keeps the hub down N s before the restart.)

use skerry_tests::*;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mut cloud = Cloud::start(CloudOptions {
        idle_timeout_secs: Some(20),
        ..CloudOptions::default()
    })
    .await?;
    let mut edges = Vec::new();
    for i in 0..nodes {
        let mut edge = Edge::join_and_start(&cloud, &format!("hub-{i}"), &[]).await?;
        edge.kill9();
        edge.idle_timeout_secs = 20;
        // The link timing this bench was first run with (keep-alive 2 s) and the production
        // hearing rule (15 s), so that an outage ends the old links by the reset it measures.
        edge.set_timing("--keepalive-secs", "2");
        edge.set_timing("--deaf-after-secs", "15");
        edge.start()?;
        edges.push(edge);
    }
    for i in 0..nodes {
        cloud
            .wait_node_ready(&format!("hub-{i}"), Duration::from_secs(60))
            .await?;
    }
    let mut from_api = Vec::new();
    for run in 1..=runs {
        // Let every link settle into its steady keep-alive rhythm first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cloud.kill9();
        // `SKERRY_BENCH_OUTAGE_SECS`: how long the hub stays down (0 by default).
        let outage: u64 = std::env::var("SKERRY_BENCH_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(outage)).await;
        let spawned = Instant::now();
        cloud.launch().await?;
        let api_back = Instant::now();
        for i in 0..nodes {
            cloud
                .create_pod(process_pod(
                    &format!("r{run}-{i}"),
                    &format!("hub-{i}"),
                    &["sleep", "3600"],
                ))
                .await?;
        }
        let mut pending: Vec<usize> = (0..nodes).collect();
        let mut slowest = Duration::ZERO;
        while !pending.is_empty() {
            pending.retain(|i| edges[*i].container_pids("sleep").len() < run);
            if pending.is_empty() {
                slowest = api_back.elapsed();
            }
            if api_back.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("edges {pending:?} never resynced");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // And the statuses back through MQTT: every new pod Running in the API.
        for i in 0..nodes {
            cloud
                .wait_running(&format!("r{run}-{i}"), Duration::from_secs(120))
                .await?;
        }
        let statuses = api_back.elapsed();
        let mut resets = 0.0;
        let mut timeouts = 0.0;
        for e in &edges {
            let text = e.metrics_text().await.unwrap_or_default();
            resets +=
                sample(&text, r#"skerry_edge_link_ends_total{reason="reset"}"#).unwrap_or(0.0);
            timeouts +=
                sample(&text, r#"skerry_edge_link_ends_total{reason="timed_out"}"#).unwrap_or(0.0);
        }
        println!(
            "| {run} | {} ms | {} ms | {} ms | {resets} resets, {timeouts} idle timeouts so far |",
            slowest.as_millis(),
            (slowest + (api_back - spawned)).as_millis(),
            statuses.as_millis()
        );
        from_api.push(slowest);
    }
    from_api.sort();
    println!(
        "{nodes} nodes, {runs} runs: API back → every edge resynced, median {} ms, worst {} ms",
        from_api[from_api.len() / 2].as_millis(),
        from_api[from_api.len() - 1].as_millis()
    );
    Ok(())
}
