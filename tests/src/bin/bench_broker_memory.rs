//! Benchmark: cloudcore's memory with idle edges over time, and under floods through the
//! embedded broker (issue #10: rumqttd took cloudcore from 254 MB to 1,286 MB with 1,000
//! messages of 1 MiB, never given back, and grew about 1 MB a minute with 50 idle edges).
//! Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_broker_memory [EDGES] [IDLE_MINUTES] [FLOOD_SECS]`
//!
//! Phases: EDGES real edgecores join and stay idle for IDLE_MINUTES (the harness runs them with
//! the tests' timing: conditions measured and keep-alives sent every second, a node status sent
//! on change, a 4 s link idle timeout; the figures in BENCHMARKS.md were taken before #11, with
//! a node status every second),
//! cloudcore's RSS sampled every minute; then one joined node publishes 1,000 messages of 1 MiB
//! on distinct topics of its own (each is over the payload cap: the broker closes the
//! connection, and the client reconnects for the next); then it publishes 4 KiB reports on its
//! own topics as fast as the broker takes them for FLOOD_SECS (the per-node rate limit slows it);
//! then everything is idle for a minute again.

use rumqttc::{AsyncClient, Event, Packet, QoS};
use skerry_tests::*;
use std::time::{Duration, Instant};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let edges: usize = args.get(1).map_or(Ok(50), |a| a.parse())?;
    let idle_minutes: u64 = args.get(2).map_or(Ok(60), |a| a.parse())?;
    let flood_secs: u64 = args.get(3).map_or(Ok(30), |a| a.parse())?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let pid = cloud
        .pid()
        .ok_or_else(|| anyhow::anyhow!("no cloudcore pid"))?;
    let rss = || rss_kib(pid).map_or(f64::NAN, mib);
    let start_rss = rss();
    let mut running = Vec::new();
    for i in 0..edges {
        running.push(Edge::join_and_start(&cloud, &format!("idle-{i:03}"), &[]).await?);
    }
    for e in &running {
        cloud
            .wait_node_ready(&e.name, Duration::from_secs(60))
            .await?;
    }
    let t0 = Instant::now();
    let mut trace = vec![(0u64, rss())];
    eprintln!("{edges} edges Ready; RSS {:.1} MiB", trace[0].1);
    for minute in 1..=idle_minutes {
        tokio::time::sleep_until((t0 + Duration::from_secs(minute * 60)).into()).await;
        trace.push((minute, rss()));
        eprintln!("idle minute {minute}: RSS {:.1} MiB", rss());
    }

    // Flood A: 1,000 messages of 1 MiB on distinct topics.
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "flooder")?;
    anyhow::ensure!(ok, "{out}");
    let before_a = rss();
    let mut peak_a = before_a;
    let big = vec![0x5au8; 1 << 20];
    let mut closed = 0;
    let started = Instant::now();
    for i in 0..1000 {
        let opts = mqtt::node_options(dir.path(), "flooder", cloud.mqtt_port)?;
        let topic = protocol::topics::pod_status("flooder", "default", &format!("p{i}"));
        let ended = mqtt::publish_alone(opts, topic, big.clone())
            .await?
            .is_some();
        if ended {
            closed += 1;
        }
        if i % 50 == 0 {
            peak_a = peak_a.max(rss());
        }
    }
    let a_secs = started.elapsed().as_secs_f64();
    let after_a = rss();

    // Flood B: 4 KiB reports on its own topics, as fast as the broker takes them.
    let mut opts = mqtt::node_options(dir.path(), "flooder", cloud.mqtt_port)?;
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 2000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    let flood_started = Instant::now();
    let ended = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    return format!(
                        "ended after {:.1} s: {e}",
                        flood_started.elapsed().as_secs_f64()
                    )
                }
            }
        }
    });
    let before_b = rss();
    let mut peak_b = before_b;
    let small = vec![0x17u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(flood_secs);
    let mut sent = 0u64;
    let mut last_sample = Instant::now();
    while Instant::now() < deadline {
        let topic =
            protocol::topics::pod_status("flooder", "default", &format!("q{}", sent % 10_000));
        let publish = client.publish(topic, QoS::AtLeastOnce, false, small.clone());
        match tokio::time::timeout(Duration::from_millis(200), publish).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break, // the connection is gone
            Err(_) => {}
        }
        if last_sample.elapsed() > Duration::from_secs(1) {
            peak_b = peak_b.max(rss());
            last_sample = Instant::now();
        }
    }
    let acked_b = acked.load(std::sync::atomic::Ordering::Relaxed);
    let throttled = cloud
        .metric("skerry_broker_throttled_total")
        .await?
        .unwrap_or(0.0);
    drop(client);
    let connection = if ended.is_finished() {
        ended.await.unwrap_or_else(|e| e.to_string())
    } else {
        ended.abort();
        "open until the end".to_string()
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    let settled = rss();

    println!("| phase | cloudcore RSS (MiB) |");
    println!("|---|---|");
    println!("| before the edges | {start_rss:.1} |");
    for (minute, r) in &trace {
        println!("| {edges} idle edges, minute {minute} | {r:.1} |");
    }
    println!(
        "| flood A: 1,000 × 1 MiB ({closed} connections closed by the broker, {a_secs:.1} s): before / peak / after | {before_a:.1} / {peak_a:.1} / {after_a:.1} |"
    );
    println!(
        "| flood B: 4 KiB reports for {flood_secs} s ({sent} queued by the client, {acked_b} acknowledged, {throttled} throttled; client connection {connection}): before / peak | {before_b:.1} / {peak_b:.1} |"
    );
    println!("| a minute after the floods | {settled:.1} |");
    Ok(())
}
