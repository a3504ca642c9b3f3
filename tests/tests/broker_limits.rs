//! The embedded broker holds nothing beyond what is in flight: a packet over the payload cap
//! closes its connection before the broker reads it, a node over its rate is slowed (never
//! dropped: every report is still acknowledged), and cloudcore's memory stays flat under a
//! flood of large messages that once took it from 254 MB to 1.3 GB.

use rumqttc::{Event, Packet, QoS};
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_close_the_connection_and_memory_stays_flat() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "flooder")?;
    assert!(ok, "{out}");
    let pid = cloud.pid().expect("cloudcore runs");
    let before = rss_kib(pid).unwrap_or(0);
    let big = vec![0x5au8; 1 << 20];
    for i in 0..200 {
        let opts = mqtt::node_options(dir.path(), "flooder", cloud.mqtt_port)?;
        let topic = protocol::topics::pod_status("flooder", "default", &format!("p{i}"));
        let closed = mqtt::publish_alone(opts, topic, big.clone()).await?;
        assert!(closed.is_some(), "message {i} of 1 MiB was acknowledged");
    }
    let after = rss_kib(pid).unwrap_or(u64::MAX);
    // 200 MiB went at the broker; not even one of them may stay.
    assert!(
        after < before + 32 * 1024,
        "cloudcore grew from {before} KiB to {after} KiB"
    );
    // The control: a report of ordinary size on the same identity is taken.
    let (client, eventloop) =
        mqtt::connect(mqtt::node_options(dir.path(), "flooder", cloud.mqtt_port)?).await?;
    let acked = ack_counter(eventloop);
    client
        .publish(
            protocol::topics::node_status("flooder"),
            QoS::AtLeastOnce,
            false,
            vec![0u8; 4096],
        )
        .await?;
    eventually("the ordinary report acknowledged", DEADLINE, || async {
        Ok((acked.load(std::sync::atomic::Ordering::Relaxed) == 1).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_over_its_rate_is_slowed_and_loses_nothing() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "chatty")?;
    assert!(ok, "{out}");
    let mut opts = mqtt::node_options(dir.path(), "chatty", cloud.mqtt_port)?;
    opts.set_inflight(1000);
    let (client, eventloop) = mqtt::connect(opts).await?;
    let acked = ack_counter(eventloop);
    // More than the burst of 500 at once: the rest comes through at 50 a second.
    const SENT: u64 = 600;
    for i in 0..SENT {
        let topic = protocol::topics::pod_status("chatty", "default", &format!("p{i}"));
        client
            .publish(topic, QoS::AtLeastOnce, false, vec![1u8; 512])
            .await?;
    }
    eventually("every report acknowledged", DEADLINE, || async {
        Ok((acked.load(std::sync::atomic::Ordering::Relaxed) == SENT).then_some(()))
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: {} of {SENT}{}",
            acked.load(std::sync::atomic::Ordering::Relaxed),
            cloud.log_tail()
        )
    })?;
    let throttled = cloud
        .metric("skerry_broker_throttled_total")
        .await?
        .unwrap_or(0.0);
    assert!(throttled >= 1.0, "the node was slowed: {throttled}");
    // Each was handed to the ingest (and refused there: they are not sealed reports).
    let invalid = cloud
        .metric_series("skerry_ingest_reports_total{result=\"invalid\"}")
        .await?
        .unwrap_or(0.0);
    assert!(invalid >= SENT as f64, "{invalid}");
    Ok(())
}

/// Drives the event loop on a task and counts PUBACKs.
fn ack_counter(mut eventloop: rumqttc::EventLoop) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acked.clone();
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    acked
}
