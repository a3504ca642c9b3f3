//! Benchmark: time from a revocation command to its refusal (issue #10). Prints a Markdown table
//! for BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_revocation [SAMPLES]`
//!
//! - API credential: a user's bearer token answers (403: the user has no rights, but is
//!   authenticated); the clock starts when `cloudcore credential revoke --user` is started and
//!   stops at the first 401, polling every 5 ms on fresh connections.
//! - Node: a running edgecore with live QUIC and MQTT sessions; the clock starts when `cloudcore
//!   node revoke` is started and stops when cloudcore's metrics show the node's hub session and
//!   MQTT session both gone (polled every 20 ms).
//!
//! Both commands run as separate processes, as an admin runs them: the time includes the
//! command's own start-up, as the admin waits for it.

use skerry_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = std::env::args().nth(1).map_or(Ok(10), |a| a.parse())?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            cloud.ca_path(),
        )?)?)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("{}/api/v1/namespaces/default/pods", cloud.api_url());

    let mut api_ms = Vec::new();
    for i in 0..samples {
        let user = format!("victim-{i}");
        let out = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(cloud.dir.path())
            .args(["kubeconfig", "--user", &user, "--group", "none", "--token"])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        let token = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .ok_or_else(|| anyhow::anyhow!("no token in kubeconfig"))?
            .to_string();
        let status = http.get(&url).bearer_auth(&token).send().await?.status();
        anyhow::ensure!(status == 403, "before the revocation: {status}");
        let started = Instant::now();
        let revoke = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(cloud.dir.path())
            .args(["credential", "revoke", "--user", &user])
            .spawn()?;
        loop {
            let status = http.get(&url).bearer_auth(&token).send().await?.status();
            if status == 401 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "not refused in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        api_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = revoke.wait_with_output();
    }

    let mut node_ms = Vec::new();
    for i in 0..samples {
        let name = format!("revoked-{i}");
        let edge = Edge::join_and_start(&cloud, &name, &[]).await?;
        cloud
            .wait_node_ready(&name, Duration::from_secs(30))
            .await?;
        cloud.wait_hub_sessions(1, Duration::from_secs(30)).await?;
        eventually("the MQTT session", Duration::from_secs(30), || async {
            Ok((cloud.metric("skerry_broker_sessions").await? == Some(1.0)).then_some(()))
        })
        .await?;
        let started = Instant::now();
        let revoke = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(cloud.dir.path())
            .args(["node", "revoke", &name])
            .spawn()?;
        loop {
            let hub = cloud.metric("skerry_hub_connected_nodes").await?;
            let mqtt = cloud.metric("skerry_broker_sessions").await?;
            if hub == Some(0.0) && mqtt == Some(0.0) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "not cut off in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = revoke.wait_with_output();
        drop(edge);
    }

    println!("| revocation | samples | p50 (ms) | p90 (ms) | max (ms) |");
    println!("|---|---|---|---|---|");
    for (what, v) in [
        ("API token: `credential revoke` → first 401", &api_ms),
        (
            "node: `node revoke` → hub and MQTT sessions closed",
            &node_ms,
        ),
    ] {
        println!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0)
        );
    }
    Ok(())
}
