//! The node lifecycle controller end to end: an edge whose edgecore dies goes Unknown and is
//! tainted unreachable; its pods stay (DESIGN.md, principle 4) except one that tolerates the
//! taint only for a while; when edgecore comes back the node is Ready again and the surviving
//! pod is the same pod, still running the same process (KubeEdge #4048, #3941: pods torn down
//! and recreated after a node reconnects).

use serde_json::{json, Value};
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn status_of<'a>(obj: &'a Value, kind: &str) -> &'a str {
    condition(obj, kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

/// The (key, effect) pairs of the node's lifecycle taints.
fn lifecycle_taints(node: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| {
            t["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("node.kubernetes.io/"))
        })
        .map(|t| {
            (
                t["key"].as_str().unwrap_or("").to_string(),
                t["effect"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The pid of the node's pod process whose command line is exactly `cmdline` (NUL-joined).
fn pid_running(edge: &Edge, cmdline: &[&str]) -> Option<u32> {
    let want: Vec<u8> = cmdline
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    edge.pod_pids()
        .into_iter()
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
}

async fn events_with_reason(cloud: &Cloud, reason: &str) -> anyhow::Result<Vec<Value>> {
    let list = cloud
        .get(&format!(
            "/api/v1/namespaces/default/events?fieldSelector=reason%3D{reason}"
        ))
        .await?
        .unwrap_or_default();
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_edge_goes_unknown_and_keeps_its_pods_unless_they_tolerate_only_a_while(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions {
        node_monitor_grace_period_secs: Some(4),
        ..CloudOptions::default()
    })
    .await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;

    let stays_cmd = ["sleep", "301"];
    cloud
        .create_pod(process_pod("stays", "edge-a", &stays_cmd))
        .await?;
    let mut leaves = process_pod("leaves", "edge-a", &["sleep", "302"]);
    leaves["spec"]["tolerations"] = json!([{"key": UNREACHABLE, "operator": "Exists",
                                            "effect": "NoExecute", "tolerationSeconds": 2}]);
    cloud.create_pod(leaves).await?;
    cloud
        .wait_running("stays", DEADLINE)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    cloud.wait_running("leaves", DEADLINE).await?;
    let stays = cloud
        .wait_for(
            "pod stays Ready",
            "/api/v1/namespaces/default/pods/stays",
            DEADLINE,
            |p| status_of(p, "Ready") == "True",
        )
        .await?;
    let uid = stays["metadata"]["uid"].clone();
    let restarts_before = restarts(&stays);
    let pid = pid_running(&edge, &stays_cmd).expect("the pod's process runs");

    // edgecore dies: no more heartbeats. Its pods keep running, as on a cut link.
    edge.kill9();
    let node = cloud
        .wait_for(
            "node edge-a Unknown with unreachable taints",
            "/api/v1/nodes/edge-a",
            DEADLINE,
            |n| !lifecycle_taints(n).is_empty(),
        )
        .await?;
    assert_eq!(
        lifecycle_taints(&node),
        vec![
            (UNREACHABLE.to_string(), "NoExecute".to_string()),
            (UNREACHABLE.to_string(), "NoSchedule".to_string())
        ],
        "{node}"
    );
    let ready = condition(&node, "Ready").expect("Ready condition");
    assert_eq!(ready["status"], "Unknown", "{node}");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let no_execute = node["spec"]["taints"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["effect"] == "NoExecute"))
        .expect("NoExecute taint");
    assert!(no_execute["timeAdded"].is_string(), "{no_execute}");

    // The pod that tolerates the taint for 2 s is evicted: graceful deletion, which the edge
    // carries out when it is back.
    cloud
        .wait_for(
            "pod leaves marked for deletion",
            "/api/v1/namespaces/default/pods/leaves",
            DEADLINE,
            |p| p.pointer("/metadata/deletionTimestamp").is_some(),
        )
        .await?;
    let evictions = events_with_reason(&cloud, "TaintManagerEviction").await?;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    assert_eq!(evictions[0]["involvedObject"]["name"], "leaves");
    assert_eq!(
        cloud
            .metric("skerry_node_lifecycle_evictions_total")
            .await?,
        Some(1.0)
    );
    assert_eq!(
        cloud
            .metric("skerry_node_lifecycle_unreachable_nodes")
            .await?,
        Some(1.0)
    );
    let not_ready = events_with_reason(&cloud, "NodeNotReady").await?;
    assert!(
        not_ready
            .iter()
            .any(|e| e["involvedObject"]["kind"] == "Node"
                && e["message"] == "Node edge-a status is now: NodeNotReady"),
        "{not_ready:?}"
    );

    // The pod without a toleration stays: not deleted, only marked not ready.
    let stays = cloud
        .wait_for(
            "pod stays marked not ready",
            "/api/v1/namespaces/default/pods/stays",
            DEADLINE,
            |p| status_of(p, "Ready") == "False",
        )
        .await?;
    assert!(
        stays.pointer("/metadata/deletionTimestamp").is_none(),
        "{stays}"
    );
    assert_eq!(stays["metadata"]["uid"], uid);

    // edgecore comes back: heartbeats resume, the node is Ready and untainted, the evicted pod
    // is stopped and removed, and the other is the same pod, never restarted.
    edge.start()?;
    cloud
        .wait_for(
            "node edge-a Ready without lifecycle taints",
            "/api/v1/nodes/edge-a",
            DEADLINE,
            |n| node_ready(n) && lifecycle_taints(n).is_empty(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    cloud
        .wait_gone(
            "evicted pod removed",
            "/api/v1/namespaces/default/pods/leaves",
            DEADLINE,
        )
        .await?;
    let stays = cloud
        .wait_for(
            "pod stays Ready again",
            "/api/v1/namespaces/default/pods/stays",
            DEADLINE,
            |p| status_of(p, "Ready") == "True" && pod_running(p),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert_eq!(stays["metadata"]["uid"], uid, "the same pod object");
    assert_eq!(restarts(&stays), restarts_before, "no container restart");
    assert_eq!(
        pid_running(&edge, &stays_cmd),
        Some(pid),
        "the same process, adopted{}",
        edge.log_tail()
    );
    eventually("no unreachable nodes", DEADLINE, || async {
        let n = cloud
            .metric("skerry_node_lifecycle_unreachable_nodes")
            .await?;
        Ok((n == Some(0.0)).then_some(()))
    })
    .await?;
    Ok(())
}

/// A node that only goes quiet (edgecore frozen, as on a link that stalls) and comes back
/// without restarting: its pods, marked not ready while it was silent, are Ready again although
/// nothing about them changed on the edge, and they were never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn pods_marked_not_ready_while_their_node_was_silent_are_ready_again_when_it_returns(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions {
        node_monitor_grace_period_secs: Some(4),
        ..CloudOptions::default()
    })
    .await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let cmd = ["sleep", "303"];
    cloud
        .create_pod(process_pod("quiet", "edge-a", &cmd))
        .await?;
    let path = "/api/v1/namespaces/default/pods/quiet";
    let before = cloud
        .wait_for("pod quiet Ready", path, DEADLINE, |p| {
            status_of(p, "Ready") == "True"
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    let pid = pid_running(&edge, &cmd).expect("the pod's process runs");

    edge.signal("STOP");
    let marked = cloud
        .wait_for("pod quiet marked not ready", path, DEADLINE, |p| {
            status_of(p, "Ready") == "False"
        })
        .await;
    edge.signal("CONT");
    marked?;
    let after = cloud
        .wait_for("pod quiet Ready again", path, DEADLINE, |p| {
            status_of(p, "Ready") == "True"
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(restarts(&after), restarts(&before), "no container restart");
    assert_eq!(pid_running(&edge, &cmd), Some(pid), "the same process");
    Ok(())
}
