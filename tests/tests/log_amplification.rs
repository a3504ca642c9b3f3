//! Bad input is counted, not logged line by line: a node publishing garbage fast costs the
//! ingest's counter, and cloudcore's log gets at most about a line a second for it.

use rumqttc::{AsyncClient, Event, Packet, QoS};
use skerry_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_reports_is_counted_and_logged_once_a_second() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "noisy")?;
    assert!(ok, "{out}");
    let mut opts = skerry_tests::mqtt::node_options(dir.path(), "noisy", cloud.mqtt_port)?;
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    let metric = "skerry_ingest_reports_total{result=\"invalid\"}";
    let before = cloud.metric(metric).await?.unwrap_or(0.0);
    let topic = protocol::topics::node_status("noisy");
    const BAD: usize = 500;
    for i in 0..BAD {
        client
            .publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                format!("garbage {i}"),
            )
            .await?;
    }
    eventually(
        "every bad report counted",
        Duration::from_secs(60),
        || async {
            let now = cloud.metric(metric).await?.unwrap_or(0.0);
            Ok((now >= before + BAD as f64).then_some(()))
        },
    )
    .await?;
    let log = std::fs::read_to_string(cloud.dir.path().join("cloudcore.log"))?;
    let lines = log
        .lines()
        .filter(|l| l.contains("invalid status report dropped"))
        .count();
    assert!(
        (1..=20).contains(&lines),
        "{lines} log lines for {BAD} bad reports"
    );
    assert!(
        log.contains("held_back"),
        "the lines say how many were held back"
    );
    Ok(())
}
