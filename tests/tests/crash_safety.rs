//! kill -9 in the middle of write bursts: what was acknowledged is never lost, and nothing
//! runs twice.

use skerry_tests::*;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn cloudcore_killed_during_a_write_burst_keeps_every_acknowledged_pod() -> anyhow::Result<()>
{
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let acknowledged = Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let writers = async {
        let mut handles = Vec::new();
        for w in 0..4 {
            let cloud = &cloud;
            let acknowledged = acknowledged.clone();
            handles.push(async move {
                for i in 0..1000 {
                    let name = format!("w{w}-{i}");
                    match cloud
                        .api(
                            "POST",
                            "/api/v1/namespaces/default/pods",
                            Some(process_pod(&name, "", &["true"])),
                        )
                        .await
                    {
                        Ok((201, _)) => acknowledged.lock().await.push(name),
                        _ => return,
                    }
                }
            });
        }
        futures::future::join_all(handles).await;
    };
    let killer = async {
        eventually(
            "some writes acknowledged",
            Duration::from_secs(30),
            || async { Ok((acknowledged.lock().await.len() >= 50).then_some(())) },
        )
        .await
    };
    // Run the writers until the kill cuts them off.
    tokio::select! {
        _ = writers => anyhow::bail!("writers finished before the crash; raise the count"),
        r = killer => r?,
    }
    let cloud_pid = cloud.pid();
    cloud.kill9();
    assert!(cloud_pid.is_some());
    let acked = acknowledged.lock().await.clone();
    cloud.launch().await?;
    let list = cloud
        .get("/api/v1/namespaces/default/pods")
        .await?
        .unwrap_or_default();
    let stored: std::collections::HashSet<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost after kill -9: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // The store keeps working and revisions keep growing after the crash.
    let rv_before: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    let created = cloud
        .create_pod(process_pod("after-crash", "", &["true"]))
        .await?;
    let rv_after: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .parse()?;
    assert!(
        rv_after > rv_before,
        "revision {rv_after} after the crash must exceed {rv_before}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn edgecore_killed_while_batches_apply_runs_every_pod_exactly_once() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    const PODS: usize = 30;
    for i in 0..PODS {
        cloud
            .create_pod(process_pod(&format!("p{i}"), "edge-a", &["sleep", "300"]))
            .await?;
        if i == PODS / 2 {
            edge.kill9();
            edge.start()?;
        }
    }
    eventually("every pod running exactly once", DEADLINE, || async {
        Ok((edge.container_pids("sleep").len() == PODS).then_some(()))
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: {} container processes{}",
            edge.container_pids("sleep").len(),
            edge.log_tail()
        )
    })?;
    for i in 0..PODS {
        cloud.wait_running(&format!("p{i}"), DEADLINE).await?;
    }
    // Kill it again once everything runs: a restart adopts, it does not duplicate.
    edge.kill9();
    edge.start()?;
    cloud
        .create_pod(process_pod("marker", "edge-a", &["sleep", "300"]))
        .await?;
    cloud.wait_running("marker", DEADLINE).await?;
    assert_eq!(
        edge.container_pids("sleep").len(),
        PODS + 1,
        "no duplicates after adoption"
    );
    Ok(())
}
