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

/// The first Event about pod `name` with `reason`.
async fn event_about(cloud: &Cloud, name: &str, reason: &str) -> anyhow::Result<Value> {
    eventually(&format!("{reason} event for {name}"), DEADLINE, || async {
        let list = cloud
            .get(&format!(
                "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
            ))
            .await?
            .unwrap_or(Value::Null);
        Ok(list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|e| e["reason"] == reason).cloned()))
    })
    .await
}

/// The PodScheduled=False condition of a pod, if it has one.
fn unschedulable_condition(p: &Value) -> Option<Value> {
    p["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .cloned()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn required_hostname_anti_affinity_spreads_a_group_and_leaves_the_extra_pod_pending(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edges = Vec::new();
    for name in ["edge-a", "edge-b", "edge-c"] {
        edges.push(Edge::join_and_start(&cloud, name, &[]).await?);
        cloud.wait_node_ready(name, DEADLINE).await?;
    }
    let names: Vec<String> = (0..4).map(|i| format!("solo-{i}")).collect();
    for name in &names {
        let mut pod = unplaced(name);
        pod["metadata"]["labels"] = json!({"app": "solo"});
        pod["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        cloud.create_pod(pod).await?;
    }
    // Three are bound, one per node; the fourth stays Pending and says why.
    let (bound, pending) = eventually("3 solo pods bound, 1 unschedulable", DEADLINE, || async {
        let mut bound = BTreeSet::new();
        let mut pending = Vec::new();
        for name in &names {
            let Some(p) = cloud
                .get(&format!("/api/v1/namespaces/default/pods/{name}"))
                .await?
            else {
                return Ok(None);
            };
            match p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                Some(n) => {
                    bound.insert(n.to_string());
                }
                None if unschedulable_condition(&p).is_some() => pending.push(p),
                None => return Ok(None),
            }
        }
        Ok((bound.len() + pending.len() == 4).then_some((bound, pending)))
    })
    .await?;
    assert_eq!(bound.len(), 3, "one per node: {bound:?}");
    assert_eq!(pending.len(), 1);
    let p = &pending[0];
    assert_eq!(phase(p), "Pending");
    assert_eq!(
        unschedulable_condition(p).unwrap()["message"],
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    let name = p["metadata"]["name"].as_str().unwrap_or("");
    let event = event_about(&cloud, name, "FailedScheduling").await?;
    assert!(
        event["message"]
            .as_str()
            .unwrap_or("")
            .contains("didn't match pod anti-affinity rules"),
        "{event}"
    );
    // Every bound pod got a Scheduled event, worded as Kubernetes does.
    for n in names.iter().filter(|n| n.as_str() != name) {
        let e = event_about(&cloud, n, "Scheduled").await?;
        assert_eq!(e["type"], "Normal", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("Successfully assigned default/{n} to edge-")),
            "{e}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_high_priority_pod_preempts_a_low_priority_one_on_a_full_node() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    let node = cloud.wait_node_ready("edge-a", DEADLINE).await?;
    // Each pod asks for all the cpu the node offers: two cannot share it.
    let cpu = node["status"]["allocatable"]["cpu"].clone();
    assert!(cpu.is_string(), "{node}");
    let hungry = |name: &str| {
        let mut pod = unplaced(name);
        pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": cpu.clone()}});
        pod
    };
    let low = hungry("low");
    cloud.create_pod(low).await?;
    let low = cloud.wait_running("low", DEADLINE).await?;
    let low_uid = low["metadata"]["uid"].as_str().unwrap_or("").to_string();

    // A pod of the same priority does not preempt: it waits.
    cloud.create_pod(hungry("peer")).await?;
    cloud
        .wait_for(
            "peer unschedulable",
            "/api/v1/namespaces/default/pods/peer",
            DEADLINE,
            |p| unschedulable_condition(p).is_some(),
        )
        .await?;

    let mut high = hungry("high");
    high["spec"]["priorityClassName"] = json!("system-cluster-critical");
    let created = cloud.create_pod(high).await?;
    let high_uid = created["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // The victim is told why it goes, and goes.
    let preempted = event_about(&cloud, "low", "Preempted").await?;
    assert_eq!(preempted["type"], "Normal", "{preempted}");
    assert_eq!(
        preempted["message"],
        format!("Preempted by pod {high_uid} on node edge-a")
    );
    assert_eq!(preempted["involvedObject"]["uid"], low_uid.as_str());
    cloud
        .wait_gone(
            "low deleted",
            "/api/v1/namespaces/default/pods/low",
            DEADLINE,
        )
        .await?;
    // The preemptor takes the room, ahead of the peer that waited longer.
    assert_eq!(node_of(&cloud, "high").await?, "edge-a");
    let scheduled = event_about(&cloud, "high", "Scheduled").await?;
    assert_eq!(
        scheduled["message"],
        "Successfully assigned default/high to edge-a"
    );
    let peer = cloud
        .get("/api/v1/namespaces/default/pods/peer")
        .await?
        .unwrap_or(Value::Null);
    assert!(
        peer["spec"]["nodeName"].as_str().unwrap_or("").is_empty(),
        "{peer}"
    );
    assert_eq!(
        cloud
            .metric("skerry_scheduler_preemption_victims_total")
            .await?,
        Some(1.0)
    );
    Ok(())
}
