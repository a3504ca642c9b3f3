//! Benchmark: what a crash-looping pod's events cost on the status link. One pod whose
//! container exits at once runs for `SECS` seconds on a process-runtime edge; the edge counts
//! the occurrences it recorded and the sealed MQTT payload bytes it published, for the pod's
//! events topic and for statuses apart. Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_pod_events [SECS] [BACKOFF_BASE_MS]`
//!
//! `BACKOFF_BASE_MS` is the restart back-off's first step (kubelet's is 10 000; the test
//! harness's 300, a far denser burst).

use anyhow::Result;
use skerry_tests::*;
use std::time::Duration;

async fn sample(edge: &Edge) -> Result<[f64; 4]> {
    let m = |s: &'static str| async move {
        Ok::<f64, anyhow::Error>(edge.metric_series(s).await?.unwrap_or(0.0))
    };
    Ok([
        m(r#"skerry_edge_events_total{type="Normal"}"#).await?
            + m(r#"skerry_edge_events_total{type="Warning"}"#).await?,
        m(r#"skerry_edge_report_bytes_total{kind="events"}"#).await?,
        m(r#"skerry_edge_report_bytes_total{kind="status"}"#).await?,
        m("skerry_edge_reports_published_total").await?,
    ])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let base: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "bench-events", &[]).await?;
    edge.kill9();
    edge.restart_backoff_base_ms = Some(base);
    edge.start()?;
    cloud
        .wait_node_ready("bench-events", Duration::from_secs(60))
        .await?;
    // Idle: heartbeats only, so the status bytes below are the pod's and the heartbeats'.
    let before = sample(&edge).await?;
    cloud
        .create_pod(process_pod(
            "crashy",
            "bench-events",
            &["sh", "-c", "exit 1"],
        ))
        .await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // Let the last reports out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(&edge).await?;
    let d: Vec<f64> = before.iter().zip(after).map(|(b, a)| a - b).collect();
    let events = cloud
        .api(
            "GET",
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dcrashy",
            None,
        )
        .await?
        .1;
    let items = events["items"].as_array().cloned().unwrap_or_default();
    let counted: u64 = items.iter().filter_map(|e| e["count"].as_u64()).sum();
    println!("| crash loop for {secs} s, back-off base {base} ms | value |");
    println!("|---|---|");
    println!("| occurrences recorded on the edge | {} |", d[0]);
    println!(
        "| Events in the cloud (series) / their counts summed | {} / {counted} |",
        items.len()
    );
    println!("| events payload bytes published | {} |", d[1]);
    println!("| bytes per occurrence | {:.0} |", d[1] / d[0].max(1.0));
    println!(
        "| status payload bytes published (pod + heartbeats) | {} |",
        d[2]
    );
    println!("| MQTT publishes (all topics) | {} |", d[3]);
    Ok(())
}
