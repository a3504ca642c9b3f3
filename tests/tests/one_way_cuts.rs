//! Links cut in one direction only, with silent drops on the loopback's INPUT chain (issue #11).
//!
//! An edge that can send but not receive (or the reverse) looks alive from one side. Each test
//! cuts one direction of both channels (the QUIC hub's UDP port and the broker's TCP port), makes
//! a change the node must receive, and checks both sides notice: the hub sets
//! `SyncLagging=True` with a reason (and the node's NoSchedule taint) because its batch is not
//! acknowledged, or because the edge, hearing nothing, closed its link and said why; the edge
//! counts and logs it and reconnects; the MQTT publisher drops a connection whose reports go
//! unacknowledged. After the
//! heal the change arrives, the condition clears, and the pod that ran before the cut never
//! restarted. The times are printed (figures go to BENCHMARKS.md, not into asserts).
//!
//! The links run with production idle timeouts (60 s) so that only the rules under test, not
//! QUIC's idle timeout, can find the cut.

use skerry_tests::loopback::{self, Cut, Direction, Proto};
use skerry_tests::*;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);
const IDLE_SECS: u64 = 60;

fn sync_lagging(node: &serde_json::Value) -> Option<(String, String)> {
    condition_of(node, "SyncLagging").map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["reason"].as_str().unwrap_or_default().to_string(),
        )
    })
}

fn tainted(node: &serde_json::Value) -> bool {
    node["spec"]["taints"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["key"] == "node.skerry.io/sync-lagging"))
}

async fn setup(name: &str) -> anyhow::Result<Option<(Cloud, Edge)>> {
    if !loopback::available()? {
        eprintln!("skipping: iptables is not usable here");
        return Ok(None);
    }
    let cloud = Cloud::start(CloudOptions {
        idle_timeout_secs: Some(IDLE_SECS),
        ..CloudOptions::default()
    })
    .await?;
    let mut edge = Edge::join_and_start(&cloud, name, &[]).await?;
    edge.kill9();
    edge.idle_timeout_secs = IDLE_SECS;
    edge.set_timing("--mqtt-ack-timeout-secs", "3");
    edge.start()?;
    cloud
        .create_pod(process_pod("steady", name, &["sleep", "3600"]))
        .await?;
    cloud.wait_running("steady", DEADLINE).await?;
    // The session's first caught-up check writes SyncLagging=False.
    cloud
        .wait_for(
            "SyncLagging=False",
            &format!("/api/v1/nodes/{name}"),
            DEADLINE,
            |n| sync_lagging(n).is_some_and(|(s, _)| s == "False"),
        )
        .await?;
    Ok(Some((cloud, edge)))
}

/// Cuts `dir` on both channels, creates a pod, and returns (time to SyncLagging=True, the cut).
async fn cut_and_change(
    cloud: &Cloud,
    edge: &Edge,
    node: &str,
    dir: Direction,
    reasons: &[&str],
) -> anyhow::Result<(Duration, Vec<Cut>)> {
    let cuts = vec![
        Cut::new(Proto::Udp, cloud.hub_port, dir)?,
        Cut::new(Proto::Tcp, cloud.mqtt_port, dir)?,
    ];
    let start = Instant::now();
    cloud
        .create_pod(process_pod("during", node, &["sleep", "3600"]))
        .await?;
    let node_obj = cloud
        .wait_for(
            "SyncLagging=True",
            &format!("/api/v1/nodes/{node}"),
            DEADLINE,
            |n| sync_lagging(n).is_some_and(|(s, r)| s == "True" && reasons.contains(&r.as_str())),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}\n{}", cloud.log_tail(), edge.log_tail()))?;
    let lagging_after = start.elapsed();
    let message = condition_of(&node_obj, "SyncLagging").unwrap()["message"].clone();
    assert!(
        message.as_str().unwrap_or_default().contains("cut"),
        "{message}"
    );
    cloud
        .wait_for(
            "the sync-lagging taint",
            &format!("/api/v1/nodes/{node}"),
            DEADLINE,
            tainted,
        )
        .await?;
    Ok((lagging_after, cuts))
}

/// After the heal: the change arrives, the condition clears, the taint goes, and the steady
/// pod did not restart. Returns heal → pod Running and heal → SyncLagging=False.
async fn heal_and_check(
    cloud: &Cloud,
    edge: &Edge,
    node: &str,
    cuts: Vec<Cut>,
    steady_pids: &[u32],
) -> anyhow::Result<(Duration, Duration)> {
    drop(cuts);
    let healed = Instant::now();
    cloud
        .wait_running("during", DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let running = healed.elapsed();
    let node_obj = cloud
        .wait_for(
            "SyncLagging=False, untainted",
            &format!("/api/v1/nodes/{node}"),
            DEADLINE,
            |n| sync_lagging(n).is_some_and(|(s, _)| s == "False") && !tainted(n),
        )
        .await?;
    let current = healed.elapsed();
    assert!(node_ready(&node_obj), "{node_obj}");
    let steady = cloud
        .get("/api/v1/namespaces/default/pods/steady")
        .await?
        .unwrap();
    assert_eq!(restarts(&steady), 0, "the steady pod never restarted");
    let pids = edge.pod_pids();
    for pid in steady_pids {
        assert!(pids.contains(pid), "steady pod process {pid} still runs");
    }
    Ok((running, current))
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_towards_the_edge_is_seen_by_both_sides_and_heals() -> anyhow::Result<()> {
    let node = "cut-to-edge";
    let Some((cloud, edge)) = setup(node).await? else {
        return Ok(());
    };
    let steady_pids = edge.pod_pids();
    let (lagging, cuts) = cut_and_change(
        &cloud,
        &edge,
        node,
        Direction::ToClient,
        // The hub's batch goes unacknowledged, or the edge, hearing nothing, closes its link
        // first and says why (its close still reaches the hub).
        &["AcksLagging", "NodeHearsNothing"],
    )
    .await?;
    // The edge hears nothing: it says so and reconnects.
    eventually("the edge to judge the cloud unheard", DEADLINE, || async {
        Ok(edge
            .metric_series("skerry_edge_link_deaf_total")
            .await?
            .filter(|n| *n >= 1.0))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    assert!(
        edge.log_tail().contains("nothing heard from the cloud"),
        "{}",
        edge.log_tail()
    );
    let (running, current) = heal_and_check(&cloud, &edge, node, cuts, &steady_pids).await?;
    println!(
        "cut cloud→edge: SyncLagging after {lagging:?}; heal → new pod Running {running:?}, → SyncLagging=False {current:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_towards_the_cloud_is_seen_by_the_hub_and_heals() -> anyhow::Result<()> {
    let node = "cut-to-cloud";
    let Some((cloud, edge)) = setup(node).await? else {
        return Ok(());
    };
    let steady_pids = edge.pod_pids();
    let (lagging, cuts) =
        cut_and_change(&cloud, &edge, node, Direction::ToServer, &["AcksLagging"]).await?;
    // The batch itself reached the edge: the pod runs there although the hub has no ack.
    let deadline = Instant::now() + DEADLINE;
    while edge.pod_pids().len() <= steady_pids.len() {
        assert!(Instant::now() < deadline, "{}", edge.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its status reports go nowhere: the publisher gives up waiting for their acknowledgement
    // and reconnects (nothing is lost: they stay in the outbox).
    eventually("an MQTT acknowledgement timeout", DEADLINE, || async {
        Ok(edge
            .metric_series("skerry_edge_mqtt_ack_timeouts_total")
            .await?
            .filter(|n| *n >= 1.0))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", edge.log_tail()))?;
    let (running, current) = heal_and_check(&cloud, &edge, node, cuts, &steady_pids).await?;
    println!(
        "cut edge→cloud: SyncLagging after {lagging:?}; heal → new pod Running {running:?}, → SyncLagging=False {current:?}"
    );
    Ok(())
}
