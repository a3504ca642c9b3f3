//! Benchmark: the admin's API latency and cloudcore's memory under a flood of 20,000 anonymous
//! idle connections (issue #10, "Trust boundaries"). Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --release -p cloudcore -p skerry-tests --bins && SKERRY_BIN_DIR=target/release target/release/bench_conn_flood [CONNS] [SECS]`
//!
//! A real cloudcore with its default caps and timeouts (512 connections per address, 16,384 in
//! all, 10 s to the first request). The flood comes from 127.0.0.10 and up, at most 400
//! connections per source address, so that the per-address cap lets each through and the flood
//! meets the global cap, as one spread over several hosts would. Each flood connection completes
//! the TLS handshake anonymously and then sends nothing; when cloudcore closes it (the
//! first-request timeout, or at once when over the cap) it is opened again a second later, so
//! the flood keeps pressing for SECS seconds. The admin, from 127.0.0.1, opens a fresh
//! connection (TCP, TLS, bearer token) for each timed `GET /api/v1/namespaces/default/pods`,
//! before, during and after the flood, and runs `kubectl get pods` in each phase.

use anyhow::Context;
use skerry_tests::flood::{self, Flood, Mode, Spec};
use skerry_tests::*;
use std::time::{Duration, Instant};

const PER_SOURCE: usize = 400;
const FIRST_SOURCE: u8 = 10;
/// Timed admin requests per phase.
const SAMPLES: usize = 20;

fn admin_client(cloud: &Cloud) -> anyhow::Result<reqwest::Client> {
    Ok(cloud
        .admin_client_builder()?
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Latencies of the admin's requests in a phase, and how many failed.
struct Phase {
    ms: Vec<f64>,
    failed: usize,
    kubectl_ms: Vec<f64>,
    kubectl_failed: usize,
}

impl Phase {
    fn pct(v: &[f64], q: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
    }
}

/// `SAMPLES` admin GETs, each on a fresh connection, `gap` apart, and three `kubectl get pods`.
async fn measure(cloud: &Cloud, gap: Duration) -> anyhow::Result<Phase> {
    let url = format!("{}/api/v1/namespaces/default/pods", cloud.api_url());
    let mut phase = Phase {
        ms: vec![],
        failed: 0,
        kubectl_ms: vec![],
        kubectl_failed: 0,
    };
    for _ in 0..SAMPLES {
        let http = admin_client(cloud)?;
        let t = Instant::now();
        let ok = match http.get(&url).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            phase.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            phase.failed += 1;
        }
        tokio::time::sleep(gap).await;
    }
    for _ in 0..3 {
        let t = Instant::now();
        let (ok, _) = tokio::task::block_in_place(|| cloud.kubectl(&["get", "pods"]))?;
        if ok {
            phase.kubectl_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            phase.kubectl_failed += 1;
        }
    }
    Ok(phase)
}

/// A second flood like the first, without the latency probes, to tell memory the allocator
/// keeps for reuse from memory that grows with each flood: returns (peak held, peak RSS in MiB,
/// RSS after release in MiB).
async fn second_round(
    cloud: &Cloud,
    spec: Spec,
    secs: u64,
    pid: u32,
) -> anyhow::Result<(usize, f64, f64)> {
    let flood = Flood::start(spec)?;
    let started = Instant::now();
    let (mut peak_open, mut peak_rss) = (0, 0.0f64);
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_open = peak_open.max(flood.open());
        peak_rss = peak_rss.max(mib(pid));
    }
    flood.stop().await;
    eventually(
        "API connections released",
        Duration::from_secs(60),
        || async {
            let open = cloud.metric("skerry_api_connections").await?.unwrap_or(0.0);
            Ok((open <= 5.0).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok((peak_open, peak_rss, mib(pid)))
}

fn mib(pid: u32) -> f64 {
    rss_kib(pid).map_or(f64::NAN, |k| k as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let conns: usize = args.get(1).map_or(Ok(20_000), |a| a.parse())?;
    let secs: u64 = args.get(2).map_or(Ok(30), |a| a.parse())?;
    let sources = u8::try_from(conns.div_ceil(PER_SOURCE))
        .ok()
        .filter(|n| *n <= 200)
        .context("at most 80,000 connections (200 source addresses)")?;
    // Both this process and cloudcore (which inherits the limit) need a descriptor per
    // connection.
    let nofile = flood::raise_nofile(conns as u64 + 8192)?;
    eprintln!("open file limit {nofile}");

    let cloud = Cloud::start(CloudOptions::default()).await?;
    let pid = cloud.pid().context("cloudcore pid")?;
    eprintln!("cloudcore on {} (pid {pid})", cloud.api_url());
    let rss_before = mib(pid);
    let before = measure(&cloud, Duration::from_millis(100)).await?;

    let tls = flood::anonymous_tls(&cloud.ca_path())?;
    let spec = Spec {
        target: ([127, 0, 0, 1], cloud.api_port).into(),
        sources: flood::loopback_sources(FIRST_SOURCE, sources),
        per_source: conns.div_ceil(sources as usize),
        mode: Mode::Tls(tls),
        reconnect: true,
        reconnect_delay: Duration::from_secs(1),
        concurrency: 256,
    };
    let started = Instant::now();
    let flood = Flood::start(spec.clone())?;
    // Ramp: until the flood stops growing (the caps hold it) or 60 s.
    let mut peak_open = 0;
    let mut last_growth = Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && last_growth.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if flood.open() > peak_open {
            peak_open = flood.open();
            last_growth = Instant::now();
        }
    }
    let ramp = started.elapsed();
    eprintln!("flood holds {peak_open} connections after {ramp:?}");
    let server_open = cloud.metric("skerry_api_connections").await?.unwrap_or(0.0);
    let mut rss_during = mib(pid);
    let gap = Duration::from_millis((secs * 1000 / SAMPLES as u64).max(100) / 2);
    let during = measure(&cloud, gap).await?;
    rss_during = rss_during.max(mib(pid));
    while started.elapsed() < ramp + Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_during = rss_during.max(mib(pid));
    }
    let c = &cloud;
    let series =
        move |s: &'static str| async move { c.metric_series(s).await.map(|v| v.unwrap_or(0.0)) };
    let rejected_global =
        series("skerry_api_connections_rejected_total{reason=\"global\"}").await?;
    let rejected_addr =
        series("skerry_api_connections_rejected_total{reason=\"per_address\"}").await?;
    let idle_closed =
        series("skerry_api_idle_closes_total{phase=\"before_first_request\"}").await?;
    let opened = flood::Stats::get(&flood.stats.opened);
    flood.stop().await;

    let released = Instant::now();
    eventually(
        "API connections released",
        Duration::from_secs(60),
        || async {
            let open = cloud.metric("skerry_api_connections").await?.unwrap_or(0.0);
            Ok((open <= 5.0).then_some(()))
        },
    )
    .await?;
    let release_time = released.elapsed();
    let rss_released = mib(pid);
    let after = measure(&cloud, Duration::from_millis(100)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_after = mib(pid);
    let (second_open, second_peak, second_after) =
        second_round(&cloud, spec, secs.min(20), pid).await?;

    println!("| phase | admin GET p50 | p99 | max | failed | kubectl get pods (3 runs) | kubectl failed | cloudcore RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, p, rss) in [
        ("before (floor)", &before, format!("{rss_before:.1} MiB")),
        (
            "during flood",
            &during,
            format!("{rss_during:.1} MiB (peak)"),
        ),
        (
            "after release",
            &after,
            format!("{rss_released:.1} MiB at release, {rss_after:.1} MiB 10 s later"),
        ),
    ] {
        let k: Vec<String> = p.kubectl_ms.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {}/{SAMPLES} | {} ms | {}/3 | {rss} |",
            Phase::pct(&p.ms, 0.5),
            Phase::pct(&p.ms, 0.99),
            Phase::pct(&p.ms, 1.0),
            p.failed,
            k.join(", "),
            p.kubectl_failed,
        );
    }
    println!();
    println!(
        "flood: {conns} connections from {sources} source addresses for {secs} s after a {:.1} s ramp; \
         peak held {peak_open} (server gauge {server_open}); {opened} connections opened in all; \
         rejected global {rejected_global}, per-address {rejected_addr}; closed by the first-request timeout {idle_closed}; \
         all released {:.1} s after the flood stopped",
        ramp.as_secs_f64(),
        release_time.as_secs_f64()
    );
    println!(
        "second flood in the same process: peak held {second_open}, cloudcore RSS peak {second_peak:.1} MiB, \
         {second_after:.1} MiB 5 s after release (first flood: {rss_during:.1} MiB peak)"
    );
    Ok(())
}
