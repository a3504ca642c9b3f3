//! An edge that loses power and comes back with the cloud unreachable runs its cached pods again
//! without any restart back-off: the containers it finds dead were lost with the node, they did
//! not crash (issue #11). What is asserted is the pod workers' decision, as edgecore counts it
//! and as the pod status reports it, never how long it took.

use skerry_tests::*;
use std::collections::HashMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const PODS: usize = 3;
/// Exits that did not count towards `CrashLoopBackOff` because the instance was lost while
/// edgecore was down (see `edgecore/src/pods/state/adopt.rs`).
const LOST: &str = r#"skerry_container_exits_total{counted="false",cause="lost_while_down"}"#;
/// Exits that counted.
const COUNTED: &str = r#"skerry_container_exits_total{counted="true",cause="exit"}"#;
/// Containers that entered `CrashLoopBackOff`.
const BACKOFFS: &str = "skerry_container_backoffs_total";

fn started_at(pod: &serde_json::Value, pointer: &str) -> String {
    pod.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_with_the_cloud_down_restarts_every_pod_without_back_off() -> anyhow::Result<()>
{
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "reboot-a", &[]).await?;
    let mut first_start = HashMap::new();
    for i in 0..PODS {
        let name = format!("r{i}");
        cloud
            .create_pod(process_pod(&name, "reboot-a", &["sleep", "3600"]))
            .await?;
    }
    for i in 0..PODS {
        let name = format!("r{i}");
        let pod = cloud.wait_running(&name, DEADLINE).await?;
        let at = started_at(&pod, "/status/containerStatuses/0/state/running/startedAt");
        assert!(!at.is_empty(), "{pod}");
        first_start.insert(name, at);
    }

    // The power cut: edgecore and every pod process (shims too) die at once, and the cloud is
    // unreachable when the node comes back.
    edge.kill9();
    edge.power_cut_pods()?;
    cloud.kill9();
    edge.start()?;

    // The edge alone runs every cached pod again...
    eventually(
        "every cached pod running again with no cloud",
        DEADLINE,
        || async { Ok((edge.container_pids("sleep").len() == PODS).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    // ... having taken each dead container for lost, not crashed: none counted, none waited.
    let metrics = eventually("the lost containers counted", DEADLINE, || async {
        let text = edge.metrics_text().await?;
        Ok((sample(&text, LOST) == Some(PODS as f64)).then_some(text))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert_eq!(sample(&metrics, BACKOFFS), None, "{metrics}");
    assert_eq!(sample(&metrics, COUNTED), None, "{metrics}");

    // Once the cloud is back, the statuses say the same: one restart, running, the lost
    // instance as the last state with the start the edge recorded for it.
    cloud.launch().await?;
    for i in 0..PODS {
        let name = format!("r{i}");
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        let pod = cloud
            .wait_for("the restart reported", &path, DEADLINE, |p| {
                pod_running(p) && restarts(p) == 1
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
        let last = pod
            .pointer("/status/containerStatuses/0/lastState/terminated")
            .unwrap_or_else(|| panic!("no lastState.terminated: {pod}"));
        assert_eq!(last["reason"], "ContainerStatusUnknown", "{pod}");
        assert_eq!(
            started_at(
                &pod,
                "/status/containerStatuses/0/lastState/terminated/startedAt"
            ),
            first_start[&name],
            "the lost instance's start is the one reported before the cut: {pod}"
        );
    }
    // Still nothing counted once the reports went out.
    assert_eq!(edge.metric_series(BACKOFFS).await?, None);
    Ok(())
}

/// The same power cut with containerd: the daemon, its shims and every container die with the
/// node, containerd starts again as after a reboot (its sandboxes gone), and edgecore comes back
/// with the cloud unreachable. Every cached pod runs again in a new sandbox, none counted as a
/// crash, none in back-off.
#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_with_the_cloud_down_restarts_every_container_without_back_off(
) -> anyhow::Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let mut ctrd = containerd::Containerd::start().await?;
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start_cri(&cloud, "reboot-c", &ctrd).await?;
    for i in 0..PODS {
        let mut pod = process_pod(&format!("c{i}"), "reboot-c", &["sleep", "3600"]);
        pod["spec"]["containers"][0]["image"] = containerd::BUSYBOX_IMAGE.into();
        cloud.create_pod(pod).await?;
    }
    for i in 0..PODS {
        cloud.wait_running(&format!("c{i}"), DEADLINE).await?;
    }

    edge.kill9();
    ctrd.power_cut_and_reboot().await?;
    cloud.kill9();
    edge.start()?;

    eventually(
        "every cached pod's container running again with no cloud",
        DEADLINE,
        || async { Ok((ctrd.running_containers().await? == PODS).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}{}", edge.log_tail(), ctrd.log_tail()))?;
    let metrics = edge.metrics_text().await?;
    assert_eq!(sample(&metrics, BACKOFFS), None, "{metrics}");
    assert_eq!(sample(&metrics, COUNTED), None, "{metrics}");

    // With the cloud back, every pod is Running in the API, and none entered back-off since.
    cloud.launch().await?;
    for i in 0..PODS {
        let path = format!("/api/v1/namespaces/default/pods/c{i}");
        cloud
            .wait_for("the pod running again", &path, DEADLINE, pod_running)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    }
    assert_eq!(edge.metric_series(BACKOFFS).await?, None);
    Ok(())
}
