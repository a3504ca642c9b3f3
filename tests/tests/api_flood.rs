//! Connection floods against the API (issue #10, "Trust boundaries", first bullet): anonymous
//! connections that never send a request, or send their headers a byte a second, used to stay
//! open until cloudcore ran out of file descriptors and kubectl failed for the admin too. Here a
//! real cloudcore with small caps and short timeouts is flooded from loopback source addresses
//! (all of 127.0.0.0/8 is loopback on Linux; the admin and the harness come from 127.0.0.1),
//! and the outcomes are asserted: the excess is closed, the counters say so, slowloris and silent
//! connections are cut by the timeouts, watches live on, and the admin's kubectl works
//! throughout.

use anyhow::{ensure, Result};
use skerry_tests::flood::{self, Flood, Mode, Spec};
use skerry_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous bound of every wait: the machine is shared and the binaries are debug builds.
const WAIT: Duration = Duration::from_secs(60);

fn spec(cloud: &Cloud, first_source: u8, sources: u8, per_source: usize, mode: Mode) -> Spec {
    Spec {
        target: ([127, 0, 0, 1], cloud.api_port).into(),
        sources: flood::loopback_sources(first_source, sources),
        per_source,
        mode,
        reconnect: false,
        reconnect_delay: Duration::ZERO,
        concurrency: 64,
    }
}

async fn counter(cloud: &Cloud, series: &str) -> Result<f64> {
    Ok(cloud.metric_series(series).await?.unwrap_or(0.0))
}

/// The admin's `kubectl get pods` (the harness kubeconfig: admin, bearer token).
fn admin_get_pods(cloud: &Cloud) -> Result<()> {
    let (ok, out) = tokio::task::block_in_place(|| cloud.kubectl(&["get", "pods", "-A"]))?;
    ensure!(
        ok,
        "admin kubectl get pods failed: {out}{}",
        cloud.log_tail()
    );
    Ok(())
}

/// Waits until cloudcore counts at most `n` open API connections.
async fn wait_open_at_most(cloud: &Cloud, n: f64) -> Result<()> {
    eventually("API connections released", WAIT, || async {
        let open = cloud.metric("skerry_api_connections").await?.unwrap_or(0.0);
        Ok((open <= n).then_some(()))
    })
    .await
}

fn rss(cloud: &Cloud) -> String {
    cloud
        .pid()
        .and_then(rss_kib)
        .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_are_capped_slowloris_is_cut_and_the_admin_still_gets_in() -> Result<()> {
    flood::raise_nofile(16_384)?;
    // Timeouts before a request are long here (the held connections must stay), except the
    // header read timeout, so that slowloris can only be cut by it.
    let cloud = Cloud::start(CloudOptions {
        extra_args: [
            "--max-conns-per-address",
            "200",
            "--max-conns",
            "3100",
            "--handshake-timeout",
            "5m",
            "--first-request-timeout",
            "5m",
            "--header-read-timeout",
            "2s",
        ]
        .map(String::from)
        .to_vec(),
        ..CloudOptions::default()
    })
    .await?;
    let rss_before = rss(&cloud);

    // One address opens more than its cap: exactly the excess is closed, and counted.
    let one = Flood::start(spec(&cloud, 2, 1, 260, Mode::Tcp))?;
    eventually("the per-address excess closed", WAIT, || async {
        Ok((one.closed() >= 60 && one.open() + one.closed() == 260).then_some(()))
    })
    .await?;
    assert_eq!(
        (one.open(), one.closed()),
        (200, 60),
        "one address holds exactly its cap"
    );
    let per_address = counter(
        &cloud,
        "skerry_api_connections_rejected_total{reason=\"per_address\"}",
    )
    .await?;
    assert!(
        per_address >= 60.0,
        "per-address rejections counted: {per_address}"
    );
    one.stop().await;
    wait_open_at_most(&cloud, 10.0).await?;

    // Slowloris: TLS done, then headers a byte a second. The header read timeout (2 s) closes
    // them; the first-request timeout (5 min) is far beyond the wait.
    let tls = flood::anonymous_tls(&cloud.ca_path())?;
    let slow = Flood::start(spec(
        &cloud,
        3,
        1,
        50,
        Mode::Slowloris(tls.clone(), Duration::from_secs(1)),
    ))?;
    eventually("slowloris connections closed", WAIT, || async {
        Ok((slow.closed() == 50).then_some(()))
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "open {}, handshake failures {}",
            slow.open(),
            slow.handshake_failures()
        ))
    })?;
    assert_eq!(slow.handshake_failures(), 0, "slowloris got past TLS");
    slow.stop().await;

    // 3,000 silent connections from 15 addresses (each at its cap): all are held, and the admin
    // still gets in.
    let held = Flood::start(spec(&cloud, 10, 15, 200, Mode::Tcp))?;
    eventually("3,000 connections held", WAIT, || async {
        let open = cloud.metric("skerry_api_connections").await?.unwrap_or(0.0);
        Ok((held.open() == 3000 && open >= 3000.0).then_some(()))
    })
    .await?;
    assert_eq!(held.closed(), 0, "none of the 3,000 is over a cap");
    let rss_during = rss(&cloud);
    admin_get_pods(&cloud)?;

    // One more address pushes past the global cap (3100, of which 64 are reserved): the excess
    // is closed as "global", and the admin, holding fewer than 4 connections, gets a reserved
    // slot.
    let over = Flood::start(spec(&cloud, 30, 1, 100, Mode::Tcp))?;
    eventually("the global excess closed", WAIT, || async {
        Ok((over.closed() > 0 && over.open() + over.closed() == 100).then_some(()))
    })
    .await?;
    let global = counter(
        &cloud,
        "skerry_api_connections_rejected_total{reason=\"global\"}",
    )
    .await?;
    assert!(
        global >= over.closed() as f64,
        "global rejections counted: {global} < {}",
        over.closed()
    );
    admin_get_pods(&cloud)?;
    assert_eq!(held.closed(), 0, "the held connections stay");

    over.stop().await;
    held.stop().await;
    wait_open_at_most(&cloud, 10.0).await?;
    admin_get_pods(&cloud)?;
    eprintln!(
        "cloudcore RSS: before {rss_before}, 3,000 held {rss_during}, after release {}",
        rss(&cloud)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed_but_quiet_watches_live_on() -> Result<()> {
    flood::raise_nofile(4096)?;
    let cloud = Cloud::start(CloudOptions {
        extra_args: [
            "--handshake-timeout",
            "2s",
            "--first-request-timeout",
            "2s",
            "--conn-idle-timeout",
            "3s",
        ]
        .map(String::from)
        .to_vec(),
        ..CloudOptions::default()
    })
    .await?;

    // TCP connections that never start TLS: closed by the handshake timeout.
    let tcp = Flood::start(spec(&cloud, 4, 1, 20, Mode::Tcp))?;
    eventually("silent TCP connections closed", WAIT, || async {
        Ok((tcp.closed() == 20).then_some(()))
    })
    .await?;
    let timeouts = counter(&cloud, "skerry_api_handshake_timeouts_total").await?;
    assert!(timeouts >= 20.0, "handshake timeouts counted: {timeouts}");

    // TLS done, then nothing: closed by the first-request timeout.
    let tls = Flood::start(spec(
        &cloud,
        5,
        1,
        20,
        Mode::Tls(flood::anonymous_tls(&cloud.ca_path())?),
    ))?;
    eventually("silent TLS connections closed", WAIT, || async {
        Ok((tls.closed() == 20).then_some(()))
    })
    .await?;
    assert_eq!(tls.handshake_failures(), 0);
    let idle = counter(
        &cloud,
        "skerry_api_idle_closes_total{phase=\"before_first_request\"}",
    )
    .await?;
    assert!(idle >= 20.0, "first-request timeouts counted: {idle}");
    tcp.stop().await;
    tls.stop().await;

    // A watch is a request in flight: it outlives every idle timeout while nothing happens, and
    // still delivers the next event.
    let pod = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeSelector": {"site": "nowhere"},
                     "containers": [{"name": "main", "image": "busybox:local"}]}})
    };
    cloud.create_pod(pod("before")).await?;
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(["get", "pods", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(WAIT);
    ensure!(
        first.as_deref() == Ok("pod/before"),
        "watch listed {first:?}"
    );
    // The quiet period is what is under test: three times the longest idle timeout.
    tokio::time::sleep(Duration::from_secs(9)).await;
    cloud.create_pod(pod("after")).await?;
    let end = std::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let got = loop {
        match rx.recv_timeout(end.saturating_duration_since(std::time::Instant::now())) {
            Ok(l) if l == "pod/after" => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(
        got,
        "the watch did not survive the quiet period; it printed {seen:?}{}",
        cloud.log_tail()
    );
    admin_get_pods(&cloud)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_never_exhausts_the_descriptors_of_a_cloudcore_with_few() -> Result<()> {
    // 512 descriptors: the global cap becomes 256, leaving the rest to the store, the broker
    // and the hub. Before the caps, 600 connections made accept fail with EMFILE and locked
    // everyone out.
    let cloud = Cloud::start(CloudOptions {
        nofile_limit: Some(512),
        extra_args: ["--handshake-timeout", "5m"].map(String::from).to_vec(),
        ..CloudOptions::default()
    })
    .await?;
    let flood = Flood::start(spec(&cloud, 40, 3, 200, Mode::Tcp))?;
    eventually("the flood met the global cap", WAIT, || async {
        Ok((flood.closed() > 0 && flood.open() + flood.closed() == 600).then_some(()))
    })
    .await?;
    assert!(
        flood.open() <= 256,
        "cloudcore holds at most the cap that fits its descriptors: {}",
        flood.open()
    );
    admin_get_pods(&cloud)?;
    let global = counter(
        &cloud,
        "skerry_api_connections_rejected_total{reason=\"global\"}",
    )
    .await?;
    assert!(
        global >= flood.closed() as f64,
        "global rejections: {global}"
    );
    let metrics = cloud.api("GET", "/metrics", None).await?.1;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        !text.contains("skerry_api_accept_errors_total"),
        "accept never failed: {}",
        text.lines()
            .filter(|l| l.starts_with("skerry_api_accept_errors_total"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    flood.stop().await;
    Ok(())
}
