//! The node's sync never waits behind its log streams (issue #13): a log stream is a QUIC
//! stream of its own on the node's link, with its own flow-control window, so a client that
//! stops reading a 100 MB log holds that one stream still, and nothing else. While such a
//! stalled stream is open, new pods reach the node and run; neither daemon buffers the log
//! (the slow client back-pressures the edge through the window); and the stream then
//! delivers every byte once the client reads again. The added latency is measured in
//! BENCHMARKS.md (`bench_log_sync`), not here.

use anyhow::{ensure, Context, Result};
use skerry_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// Bytes the chatty pod writes: 100 MB of 64-byte lines, then `done`.
const LOG_BYTES: u64 = 100_000_000;

/// How much more resident memory a daemon may have while the stream is stalled. The stream
/// holds at most its window (256 KiB) in flight, plus the HTTP and TLS buffers: a daemon that
/// buffered the log would grow by the better part of 100 MB.
const GROWTH_KIB: u64 = 48 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_the_node_while_a_stalled_client_holds_a_100_mb_log_stream() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "logs-sync", &[]).await?;
    cloud.wait_node_ready("logs-sync", LONG).await?;
    let url = chatty_pod(&cloud, "chatty", "logs-sync", LOG_BYTES).await?;
    let client = cloud.admin_client_builder()?.build()?;

    let (cloud_pid, edge_pid) = (
        cloud.pid().context("cloudcore pid")?,
        edge.pid().context("edgecore pid")?,
    );
    let rss = |pid| rss_kib(pid).context("resident memory");
    let (cloud_before, edge_before) = (rss(cloud_pid)?, rss(edge_pid)?);

    // The stalled client: reads the first chunk, then nothing.
    let mut stalled = client.get(&url).send().await?;
    ensure!(
        stalled.status().is_success(),
        "GET log: {}",
        stalled.status()
    );
    let mut got = stalled
        .chunk()
        .await?
        .context("the log's first chunk")?
        .len() as u64;

    // Pods created now reach the node and run, with the log stream stuck behind its window.
    for i in 0..5 {
        cloud
            .create_pod(process_pod(
                &format!("during-{i}"),
                "logs-sync",
                &["sleep", "3600"],
            ))
            .await?;
    }
    for i in 0..5 {
        cloud.wait_running(&format!("during-{i}"), LONG).await?;
    }
    let (cloud_during, edge_during) = (rss(cloud_pid)?, rss(edge_pid)?);
    ensure!(
        cloud_during < cloud_before + GROWTH_KIB,
        "cloudcore grew from {cloud_before} KiB to {cloud_during} KiB while a client did not read its log"
    );
    ensure!(
        edge_during < edge_before + GROWTH_KIB,
        "edgecore grew from {edge_before} KiB to {edge_during} KiB while a client did not read its log"
    );

    // The client reads again: every byte arrives, and the stream ends.
    let mut tail = Vec::new();
    tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(chunk) = stalled.chunk().await.context("the rest of the log")? {
            got += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.len() > 1 << 20 {
                tail.drain(..tail.len() - 64);
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("the log stream did not end")??;
    ensure!(
        got == LOG_BYTES + "\ndone\n".len() as u64,
        "the stalled stream delivered {got} bytes of {}",
        LOG_BYTES + 6
    );
    ensure!(
        tail.ends_with(b"\ndone\n"),
        "the log ends with its marker: {:?}",
        String::from_utf8_lossy(&tail)
    );
    Ok(())
}
