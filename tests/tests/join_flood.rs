//! The join path cannot be held shut: one address gets a few join slots at most, a join that
//! says nothing is closed after the join deadline, `edgecore join` retries while the cloud is
//! busy, and names reserved for cloudcore are refused.

use skerry_tests::*;
use std::time::Duration;

/// A client that speaks the join ALPN with the cloud's CA and then says nothing.
fn join_endpoint(cloud: &Cloud, source: &str) -> anyhow::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(format!("{source}:0").parse()?)?;
    endpoint.set_default_client_config(anonymous_client_config(
        &cloud.ca_path(),
        protocol::ALPN_JOIN,
    )?);
    Ok(endpoint)
}

/// Opens `n` silent join connections from `source`; returns them with how many the hub
/// turned away at once (closed before the deadline could have passed).
async fn hold(
    cloud: &Cloud,
    source: &str,
    n: usize,
) -> anyhow::Result<(quinn::Endpoint, Vec<quinn::Connection>, usize)> {
    let endpoint = join_endpoint(cloud, source)?;
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(
            endpoint
                .connect(cloud.hub_addr().parse()?, "127.0.0.1")?
                .await?,
        );
    }
    let mut turned_away = 0;
    for c in &conns {
        if let Ok(reason) = tokio::time::timeout(Duration::from_millis(500), c.closed()).await {
            if let quinn::ConnectionError::ApplicationClosed(close) = reason {
                assert!(
                    String::from_utf8_lossy(&close.reason).contains("retry"),
                    "{close:?}"
                );
            }
            turned_away += 1;
        }
    }
    Ok((endpoint, conns, turned_away))
}

#[tokio::test(flavor = "multi_thread")]
async fn held_join_connections_do_not_keep_real_joins_out() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    // 70 silent joins from one address: all but a few are turned away at once.
    let (_e, flood, turned_away) = hold(&cloud, "127.0.0.2", 70).await?;
    assert!(turned_away >= 60, "only {turned_away} of 70 turned away");
    // A real join from another address goes through meanwhile.
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud
        .wait_node_ready("edge-a", Duration::from_secs(30))
        .await?;
    drop(edge);
    // The held ones are closed by the join deadline.
    for c in &flood {
        tokio::time::timeout(Duration::from_secs(30), c.closed()).await?;
    }

    // With every slot of its own address held, `edgecore join` is turned away, retries, and
    // gets in once the deadline frees the slots.
    let (_e2, _held, _) = hold(&cloud, "127.0.0.1", 4).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "edge-b")?;
    assert!(ok, "join must retry until a slot is free: {out}");
    assert!(out.contains("retrying"), "it was turned away first: {out}");
    let turned = cloud
        .metric("skerry_hub_joins_turned_away_total{reason=\"per_address\"}")
        .await?
        .unwrap_or(0.0);
    assert!(turned >= 60.0, "{turned}");

    // cloudcore's own names cannot be taken by a node.
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "skerry-cloudcore")?;
    assert!(!ok && out.contains("reserved"), "{out}");
    Ok(())
}
