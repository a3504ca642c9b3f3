//! Benchmark: what one idle edge with one pod costs on the wire (issue #11), on each channel and
//! in total, IP headers included, counted by iptables on the loopback interface.
//!
//! Two link configurations run side by side in the same process, each with a cloudcore of its
//! own (embedded broker) and one edge on the process runtime:
//! - `before`: the timing Skerry had until this change — QUIC keep-alives every 2 s from the edge
//!   and every 5 s from the hub, the full node status every 10 s, MQTT keep-alive 10 s, idle
//!   timeouts 20 s;
//! - `after`: the defaults — the edge alone keeps its link alive, every 20 s; the node status
//!   is measured every 10 s but sent only on change or every 5 min; MQTT keep-alive 5 min; idle
//!   timeouts 60 s.
//!
//! Each configuration settles for 10 s after its pod runs, then counts for SECS seconds (run it
//! for at least 300 s to include a periodic node status report in `after`); then the edge is
//! killed with SIGKILL and the time until its node is `Ready=Unknown` printed (grace 40 s).
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_idle_bandwidth [SECS]`
//! (as root: it adds iptables rules, removed at the end).

use skerry_tests::loopback::{PortCounter, Proto};
use skerry_tests::*;
use std::time::Duration;

struct Config {
    name: &'static str,
    cloud_args: Vec<String>,
    cloud_idle_secs: u64,
    edge_idle_secs: u64,
    edge_args: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(120);
    if !loopback::available()? {
        anyhow::bail!("iptables is needed (run as root)");
    }
    let configs = [
        Config {
            name: "before",
            cloud_args: strings(&["--hub-keepalive-secs", "5"]),
            cloud_idle_secs: 20,
            edge_idle_secs: 20,
            edge_args: strings(&[
                "--heartbeat-secs",
                "10",
                "--node-status-report-secs",
                "10",
                "--keepalive-secs",
                "2",
                "--mqtt-keepalive-secs",
                "10",
            ]),
        },
        Config {
            name: "after",
            cloud_args: vec![],
            cloud_idle_secs: 60,
            edge_idle_secs: 60,
            edge_args: vec![],
        },
    ];
    println!("idle edge, one pod, {secs} s counted per configuration (bit/s, IP headers included)");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "config", "quic e→c", "quic c→e", "quic", "mqtt e→c", "mqtt c→e", "mqtt", "total"
    );
    for cfg in configs {
        let cloud = Cloud::start(CloudOptions {
            idle_timeout_secs: Some(cfg.cloud_idle_secs),
            extra_args: cfg.cloud_args.clone(),
            ..CloudOptions::default()
        })
        .await?;
        let mut edge = Edge::join_and_start(&cloud, "idle-0", &[]).await?;
        edge.kill9();
        edge.idle_timeout_secs = cfg.edge_idle_secs;
        edge.timing_args = cfg.edge_args.clone();
        edge.start()?;
        cloud
            .create_pod(process_pod("idle", "idle-0", &["sleep", "3600"]))
            .await?;
        cloud.wait_running("idle", Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let quic = PortCounter::new(Proto::Udp, cloud.hub_port)?;
        let mqtt = PortCounter::new(Proto::Tcp, cloud.mqtt_port)?;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (q_up, q_down) = quic.bytes()?;
        let (m_up, m_down) = mqtt.bytes()?;
        let rate = |b: u64| b as f64 * 8.0 / secs as f64;
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            cfg.name,
            rate(q_up),
            rate(q_down),
            rate(q_up + q_down),
            rate(m_up),
            rate(m_down),
            rate(m_up + m_down),
            rate(q_up + q_down + m_up + m_down)
        );
        // The node must have stayed Ready throughout (its liveness is what the link carries).
        let node = cloud.get("/api/v1/nodes/idle-0").await?.unwrap_or_default();
        let pod = cloud
            .get("/api/v1/namespaces/default/pods/idle")
            .await?
            .unwrap_or_default();
        println!(
            "{:<8} node Ready: {}, pod restarts: {}",
            "",
            node_ready(&node),
            restarts(&pod)
        );
        // The other half of the bargain: a node that dies is still found within the grace
        // period (40 s here, the default) after its last packet.
        edge.kill9();
        let killed = std::time::Instant::now();
        cloud
            .wait_for(
                "Ready=Unknown",
                "/api/v1/nodes/idle-0",
                Duration::from_secs(120),
                |n| condition_of(n, "Ready").is_some_and(|c| c["status"] == "Unknown"),
            )
            .await?;
        println!(
            "{:<8} edge killed -9 → node Ready=Unknown after {:.1} s",
            "",
            killed.elapsed().as_secs_f64()
        );
        drop(edge);
        drop(cloud);
    }
    Ok(())
}
