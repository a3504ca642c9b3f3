//! A hub killed and restarted on the same data dir and ports ends the edges' old QUIC links with
//! a stateless reset (its reset key survives the restart), so the edges resync at once instead
//! of after their idle timeout (issue #11). Asserted through how the edge says its link ended,
//! and through a change made after the restart reaching the edge.

use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
/// Far longer than the test: an old link that ended in time was not ended by its idle timeout.
const IDLE_TIMEOUT_SECS: u64 = 300;
const RESET: &str = r#"skerry_edge_link_ends_total{reason="reset"}"#;
const TIMED_OUT: &str = r#"skerry_edge_link_ends_total{reason="timed_out"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_hub_resets_the_old_links_and_changes_after_it_reach_the_edge(
) -> anyhow::Result<()> {
    let mut cloud = Cloud::start(CloudOptions {
        idle_timeout_secs: Some(IDLE_TIMEOUT_SECS),
        ..CloudOptions::default()
    })
    .await?;
    let mut edge = Edge::join_and_start(&cloud, "hub-restart", &[]).await?;
    // Again with an idle timeout as long as the hub's (QUIC uses the shorter of the two).
    edge.kill9();
    edge.idle_timeout_secs = IDLE_TIMEOUT_SECS;
    // Nor by the edge's own hearing rule: what ends the old link here must be the reset.
    edge.set_timing("--deaf-after-secs", "300");
    edge.start()?;
    cloud
        .create_pod(process_pod("before", "hub-restart", &["sleep", "3600"]))
        .await?;
    cloud.wait_running("before", DEADLINE).await?;
    let key = cloud.dir.path().join("pki/hub-reset.key");
    let kept = std::fs::read(&key).ok();

    cloud.kill9();
    cloud.launch().await?;
    cloud
        .create_pod(process_pod("after", "hub-restart", &["sleep", "3600"]))
        .await?;
    cloud
        .wait_running("after", DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    // The old link ended with a reset from the new hub, not by timing out.
    assert_eq!(
        edge.metric_series(RESET).await?,
        Some(1.0),
        "{}",
        edge.log_tail()
    );
    assert_eq!(edge.metric_series(TIMED_OUT).await?, None);
    // What made it possible: the same private key before and after the restart.
    assert!(kept.is_some(), "no {}", key.display());
    assert_eq!(
        std::fs::read(&key).ok(),
        kept,
        "the reset key survives the restart"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    Ok(())
}
