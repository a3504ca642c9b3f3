//! The hub closes a connection that sends garbage and keeps serving everyone else.

use skerry_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn garbage_frames_close_only_that_connection() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut a = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    let _b = Edge::join_and_start(&cloud, "edge-b", &[]).await?;
    // Take edge-a's identity and speak nonsense with it.
    a.stop();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(node_client_config(a.dir.path())?);
    for garbage in [
        vec![0u8, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4],
        vec![0xff, 0xff, 0xff, 0xff, 0],
    ] {
        let conn = endpoint
            .connect(cloud.hub_addr().parse()?, "127.0.0.1")?
            .await?;
        let (mut send, _recv) = conn.open_bi().await?;
        send.write_all(&garbage).await?;
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(u64::from(c.error_code), 1, "{c:?}")
            }
            other => panic!("expected the hub to close with a protocol error, got {other:?}"),
        }
    }
    // The hub still serves the other node.
    cloud
        .create_pod(process_pod("still-served", "edge-b", &["sleep", "300"]))
        .await?;
    cloud
        .wait_for(
            "pod on edge-b Running",
            "/api/v1/namespaces/default/pods/still-served",
            Duration::from_secs(30),
            |p| phase(p) == "Running",
        )
        .await?;
    // And edge-a itself reconnects fine afterwards.
    a.start()?;
    cloud
        .create_pod(process_pod("back", "edge-a", &["sleep", "300"]))
        .await?;
    cloud
        .wait_for(
            "pod on edge-a Running",
            "/api/v1/namespaces/default/pods/back",
            Duration::from_secs(30),
            |p| phase(p) == "Running",
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_without_certificate_is_refused() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(anonymous_client_config(
        &cloud.ca_path(),
        protocol::ALPN_SYNC,
    )?);
    let conn = endpoint
        .connect(cloud.hub_addr().parse()?, "127.0.0.1")?
        .await?;
    match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await? {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), 2);
            assert!(
                String::from_utf8_lossy(&c.reason).contains("edgecore join"),
                "{c:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

/// An ordinary token cannot take over a registered node's name; a token made for the node can
/// (re-join after a reinstall), and then the old certificate (perhaps stolen) stops working.
#[tokio::test(flavor = "multi_thread")]
async fn rejoin_needs_a_token_for_the_node_and_supersedes_the_old_identity() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let old = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud
        .wait_node_ready("edge-a", Duration::from_secs(30))
        .await?;
    let (token, hash) = cloud.token("1h")?;
    let dir = private_temp_dir()?;
    let (ok, out) = join_raw(dir.path(), &cloud.hub_addr(), &token, &hash, "edge-a", &[])?;
    assert!(
        !ok && out.contains("already registered") && out.contains("--node edge-a"),
        "{out}"
    );

    let new = Edge::join_and_start_with(&cloud, "edge-a", &[], cloud.token_for("edge-a")?).await?;
    cloud
        .create_pod(process_pod("after-rejoin", "edge-a", &["sleep", "300"]))
        .await?;
    cloud
        .wait_running("after-rejoin", Duration::from_secs(30))
        .await?;
    assert!(
        !new.pod_pids().is_empty(),
        "the re-joined node runs the pod"
    );
    assert!(old.pod_pids().is_empty(), "the superseded node does not");
    eventually(
        "the old identity is refused",
        Duration::from_secs(30),
        || async { Ok(old.log_tail().contains("superseded").then_some(())) },
    )
    .await?;
    Ok(())
}
