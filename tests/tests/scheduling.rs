//! End-to-end scenarios of the scheduler (issue #4): real cloudcore and edgecores with the
//! process runtime. Placement is checked through `spec.nodeName`, conditions and Events as any
//! Kubernetes client sees them.

use serde_json::{json, Value};
use skerry_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// A process pod with no node: the scheduler places it.
fn unplaced(name: &str) -> Value {
    let mut pod = process_pod(name, "", &["sleep", "300"]);
    pod["spec"].as_object_mut().unwrap().remove("nodeName");
    pod
}

async fn node_of(cloud: &Cloud, name: &str) -> anyhow::Result<String> {
    let p = cloud
        .wait_for(
            &format!("pod {name} bound"),
            &format!("/api/v1/namespaces/default/pods/{name}"),
            DEADLINE,
            |p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty())
            },
        )
        .await?;
    let cond = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned());
    assert_eq!(
        cond.map(|c| c["status"].clone()),
        Some(json!("True")),
        "{p}"
    );
    Ok(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
}

async fn taint(cloud: &Cloud, node: &str, taint: Value) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{node}");
    // Heartbeats update the node too: retry on conflict.
    eventually("node tainted", DEADLINE, || async {
        let Some(mut n) = cloud.get(&path).await? else {
            return Ok(None);
        };
        n["spec"]["taints"] = json!([taint.clone()]);
        let (code, body) = cloud.api("PUT", &path, Some(n)).await?;
        match code {
            200 => Ok(Some(())),
            409 => Ok(None),
            _ => anyhow::bail!("node update answered {code}: {body}"),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduler_spreads_replicas_respects_taints_and_explains_unschedulable_pods(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edges = Vec::new();
    for (name, zone) in [
        ("edge-a", "zone=north"),
        ("edge-b", "zone=south"),
        ("edge-c", "zone=east"),
    ] {
        edges.push(Edge::join_and_start(&cloud, name, &[zone]).await?);
        cloud.wait_node_ready(name, DEADLINE).await?;
    }

    // Three replicas of one owner go to three different nodes. The owner exists (the garbage
    // collector deletes the dependents of a missing owner); a ConfigMap keeps this test free of
    // any workload controller.
    let (code, cm) = cloud
        .api(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"name": "web-5d4f"}})),
        )
        .await?;
    assert_eq!(code, 201, "{cm}");
    let owner = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "web-5d4f",
                        "uid": cm["metadata"]["uid"], "controller": true}]);
    let mut placed = BTreeSet::new();
    for i in 0..3 {
        let mut pod = unplaced(&format!("web-{i}"));
        pod["metadata"]["labels"] = json!({"app": "web"});
        pod["metadata"]["ownerReferences"] = owner.clone();
        cloud.create_pod(pod).await?;
    }
    for i in 0..3 {
        placed.insert(node_of(&cloud, &format!("web-{i}")).await?);
    }
    assert_eq!(
        placed.len(),
        3,
        "replicas spread over all nodes: {placed:?}"
    );

    // A tainted node takes no pod that does not tolerate the taint...
    taint(
        &cloud,
        "edge-c",
        json!({"key": "dedicated", "value": "lab", "effect": "NoSchedule"}),
    )
    .await?;
    for i in 0..3 {
        let mut pod = unplaced(&format!("plain-{i}"));
        pod["metadata"]["labels"] = json!({"app": "plain"});
        cloud.create_pod(pod).await?;
    }
    for i in 0..3 {
        let node = node_of(&cloud, &format!("plain-{i}")).await?;
        assert_ne!(node, "edge-c", "plain-{i} went to the tainted node");
    }
    // ... but one that tolerates it goes there.
    let mut tolerant = unplaced("tolerant");
    tolerant["spec"]["nodeSelector"] = json!({"zone": "east"});
    tolerant["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "lab", "effect": "NoSchedule"}]);
    cloud.create_pod(tolerant).await?;
    assert_eq!(node_of(&cloud, "tolerant").await?, "edge-c");
    // Without the toleration, the same selector finds nothing, and says why.
    let mut blocked = unplaced("blocked");
    blocked["spec"]["nodeSelector"] = json!({"zone": "east"});
    cloud.create_pod(blocked).await?;

    // An impossible selector: Pending, PodScheduled=False, and a FailedScheduling event.
    let mut nowhere = unplaced("nowhere");
    nowhere["spec"]["nodeSelector"] = json!({"zone": "mars"});
    cloud.create_pod(nowhere).await?;
    let unschedulable = |p: &Value| {
        p["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| {
                    c["type"] == "PodScheduled"
                        && c["status"] == "False"
                        && c["reason"] == "Unschedulable"
                })
                .cloned()
        })
    };
    let p = cloud
        .wait_for(
            "nowhere unschedulable",
            "/api/v1/namespaces/default/pods/nowhere",
            DEADLINE,
            |p| unschedulable(p).is_some(),
        )
        .await?;
    assert_eq!(phase(&p), "Pending");
    assert!(
        p["spec"]["nodeName"].as_str().unwrap_or("").is_empty(),
        "{p}"
    );
    // Taints are checked before affinity (Kubernetes' filter order), so edge-c counts as tainted.
    assert_eq!(
        unschedulable(&p).unwrap()["message"],
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: lab}, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let b = cloud
        .wait_for(
            "blocked unschedulable",
            "/api/v1/namespaces/default/pods/blocked",
            DEADLINE,
            |p| unschedulable(p).is_some(),
        )
        .await?;
    assert_eq!(
        unschedulable(&b).unwrap()["message"],
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: lab}, 2 node(s) didn't match Pod's node affinity/selector."
    );
    let event = eventually("FailedScheduling event for nowhere", DEADLINE, || async {
        let list = cloud
            .get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dnowhere")
            .await?
            .unwrap_or(Value::Null);
        Ok(list["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|e| e["reason"] == "FailedScheduling")
                .cloned()
        }))
    })
    .await?;
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["involvedObject"]["kind"], "Pod");
    assert!(
        event["message"]
            .as_str()
            .unwrap_or("")
            .contains("didn't match Pod's node affinity/selector"),
        "{event}"
    );
    // kubectl describe shows it.
    let (ok, out) = cloud.kubectl(&["describe", "pod", "nowhere"])?;
    assert!(ok && out.contains("FailedScheduling"), "{out}");
    Ok(())
}
