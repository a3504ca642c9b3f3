//! Benchmark: offline reboot → all pods running (issue #11). One edge runs PODS pods; then a
//! power cut kills edgecore and every pod process at once (with containerd: the daemon, its
//! shims and the containers, and containerd starts again as after a reboot), cloudcore is
//! killed too, and edgecore starts again with no cloud. The figure is the time from edgecore's
//! spawn to the first moment every pod's container runs again, polled every 10 ms. The
//! restarted edgecore runs kubelet's default back-off (10 s base), not the tests' 300 ms.
//!
//! `cargo build --release --workspace --bins && SKERRY_BIN_DIR=target/release target/release/bench_offline_reboot [PODS] [RUNS]`
//! (`SKERRY_BENCH_RUNTIME=cri` for containerd.)

use skerry_tests::*;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pods: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let cri = std::env::var("SKERRY_BENCH_RUNTIME").as_deref() == Ok("cri");
    let mut ctrd = if cri {
        Some(containerd::Containerd::start().await?)
    } else {
        None
    };
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = match &ctrd {
        Some(c) => Edge::join_and_start_cri(&cloud, "reboot-0", c).await?,
        None => Edge::join_and_start(&cloud, "reboot-0", &[]).await?,
    };
    cloud
        .wait_node_ready("reboot-0", Duration::from_secs(60))
        .await?;
    for i in 0..pods {
        let mut pod = process_pod(&format!("p{i}"), "reboot-0", &["sleep", "3600"]);
        if cri {
            pod["spec"]["containers"][0]["image"] = containerd::BUSYBOX_IMAGE.into();
        }
        cloud.create_pod(pod).await?;
    }
    for i in 0..pods {
        cloud
            .wait_running(&format!("p{i}"), Duration::from_secs(120))
            .await?;
    }
    // From now on edgecore starts with kubelet's back-off, as in production.
    edge.restart_backoff_base_ms = None;
    let mut figures = Vec::new();
    for run in 1..=runs {
        edge.kill9();
        match &mut ctrd {
            Some(c) => c.power_cut_and_reboot().await?,
            None => edge.power_cut_pods()?,
        }
        if cloud.pid().is_some() {
            cloud.kill9();
        }
        let t0 = Instant::now();
        edge.start()?;
        loop {
            let running = match &ctrd {
                Some(c) => c.running_containers().await.unwrap_or(0),
                None => edge.container_pids("sleep").len(),
            };
            if running >= pods {
                break;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("only {running} of {pods} pods ran again{}", edge.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = t0.elapsed();
        let metrics = edge.metrics_text().await.unwrap_or_default();
        let exits: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("skerry_container_exits_total{"))
            .map(|l| {
                l.trim_start_matches("skerry_container_exits_total")
                    .to_string()
            })
            .collect();
        let backoffs = sample(&metrics, "skerry_container_backoffs_total").unwrap_or(0.0);
        println!(
            "| {run} | {} ms | exits {} | {backoffs} back-offs |",
            took.as_millis(),
            exits.join(", ")
        );
        if std::env::var_os("SKERRY_BENCH_TRACE").is_some() {
            eprintln!("{}", edge.log_tail());
        }
        figures.push(took);
    }
    figures.sort();
    println!(
        "runtime {}: {pods} pods, {runs} runs, median {} ms, worst {} ms",
        if cri { "cri" } else { "process" },
        figures[figures.len() / 2].as_millis(),
        figures[figures.len() - 1].as_millis()
    );
    Ok(())
}
