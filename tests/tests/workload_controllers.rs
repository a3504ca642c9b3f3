//! The DaemonSet and StatefulSet controllers and the garbage collector, end to end: a real
//! cloudcore, real edgecores running pods as native processes, and the real kubectl (its
//! `rollout status`, `--cascade` flags and waits are the contract).

use serde_json::{json, Value};
use skerry_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    anyhow::ensure!(ok, "kubectl {args:?} failed: {out}\n{}", cloud.log_tail());
    Ok(out)
}

/// Applies `manifest` with `kubectl apply -f`.
fn apply(cloud: &Cloud, name: &str, manifest: &Value) -> anyhow::Result<()> {
    let path = cloud.dir.path().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)?;
    kubectl_ok(cloud, &["apply", "-f", path.to_str().unwrap_or_default()])?;
    Ok(())
}

/// A pod template running `sleep` as a process, labelled `app`.
fn template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox:local", "command": ["sleep", "300"]}]
        }
    })
}

async fn pods_of(cloud: &Cloud, app: &str) -> anyhow::Result<Vec<Value>> {
    let (code, list) = cloud
        .api(
            "GET",
            &format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"),
            None,
        )
        .await?;
    anyhow::ensure!(code == 200, "pod list answered {code}: {list}");
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn ready(pod: &Value) -> bool {
    pod_running(pod)
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// Waits until the DaemonSet `app` runs exactly one Running pod on each of `nodes` (and no
/// other pod); returns node → pod.
async fn wait_daemons(
    cloud: &Cloud,
    app: &str,
    nodes: &[&str],
) -> anyhow::Result<BTreeMap<String, Value>> {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    eventually(
        &format!("one running {app} pod on each of {nodes:?}"),
        DEADLINE,
        || async {
            let pods = pods_of(cloud, app).await?;
            let by_node: BTreeMap<String, Value> = pods
                .iter()
                .filter(|p| pod_running(p) && p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    (
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                        p.clone(),
                    )
                })
                .collect();
            let nodes: BTreeSet<String> = by_node.keys().cloned().collect();
            Ok((pods.len() == want.len() && nodes == want).then_some(by_node))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_runs_one_pod_per_node_follows_new_nodes_and_rolls_out() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edges = Vec::new();
    for name in ["edge-a", "edge-b"] {
        edges.push(Edge::join_and_start(&cloud, name, &[]).await?);
        cloud.wait_node_ready(name, DEADLINE).await?;
    }
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")}
    });
    apply(&cloud, "agent", &ds)?;
    let first = wait_daemons(&cloud, "agent", &["edge-a", "edge-b"]).await?;
    for pod in first.values() {
        assert!(name(pod).starts_with("agent-"), "{pod}");
        assert!(
            pod["metadata"]["labels"]["controller-revision-hash"].is_string(),
            "{pod}"
        );
        let tolerations = pod["spec"]["tolerations"].to_string();
        assert!(
            tolerations.contains("node.kubernetes.io/unreachable"),
            "{pod}"
        );
    }
    kubectl_ok(&cloud, &["rollout", "status", "ds/agent", "--timeout=60s"])?;

    // A node that joins later gets its pod.
    edges.push(Edge::join_and_start(&cloud, "edge-c", &[]).await?);
    cloud.wait_node_ready("edge-c", DEADLINE).await?;
    wait_daemons(&cloud, "agent", &["edge-a", "edge-b", "edge-c"]).await?;
    let out = kubectl_ok(&cloud, &["rollout", "status", "ds/agent", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let (ok, out) = cloud.kubectl(&["get", "ds", "agent"])?;
    assert!(
        ok && out.lines().nth(1).is_some_and(|l| l
            .split_whitespace()
            .filter(|c| *c == "3")
            .count()
            >= 4),
        "{out}"
    );

    // A template change replaces every pod, node by node, and rollout status waits for it.
    kubectl_ok(
        &cloud,
        &[
            "patch",
            "ds",
            "agent",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"main","image":"busybox:local","command":["sleep","301"]}]}}}}"#,
        ],
    )?;
    kubectl_ok(&cloud, &["rollout", "status", "ds/agent", "--timeout=90s"])?;
    let rolled = wait_daemons(&cloud, "agent", &["edge-a", "edge-b", "edge-c"]).await?;
    for pod in rolled.values() {
        assert_eq!(pod["spec"]["containers"][0]["command"][1], "301", "{pod}");
        assert!(
            !first.values().any(|p| name(p) == name(pod)),
            "{pod} was not replaced"
        );
    }

    // Deleting the DaemonSet (kubectl's default, background) takes its pods with it.
    kubectl_ok(&cloud, &["delete", "ds", "agent"])?;
    eventually("the DaemonSet's pods gone", DEADLINE, || async {
        Ok(pods_of(&cloud, "agent").await?.is_empty().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_creates_in_order_after_readiness_and_scales_down_from_the_top(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "serviceName": "web",
                 "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}
    });
    apply(&cloud, "web", &sts)?;
    // In every consistent listing: web-1 exists only once web-0 is Running and Ready.
    let pods = eventually("web-0 and web-1 ready", DEADLINE, || async {
        let pods = pods_of(&cloud, "web").await?;
        let get = |n: &str| pods.iter().find(|p| name(p) == n).cloned();
        if get("web-1").is_some() {
            let web0 = get("web-0");
            anyhow::ensure!(
                web0.as_ref().is_some_and(ready),
                "web-1 exists while web-0 is not Running and Ready: {pods:?}"
            );
        }
        Ok((pods.len() == 2 && pods.iter().all(ready)).then_some(pods))
    })
    .await?;
    let web0 = pods.iter().find(|p| name(p) == "web-0").unwrap();
    let web1 = pods.iter().find(|p| name(p) == "web-1").unwrap();
    let ready_at = web0["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or("")
        .to_string();
    let created1 = web1["metadata"]["creationTimestamp"].as_str().unwrap_or("");
    assert!(
        !ready_at.is_empty() && created1 >= ready_at.as_str(),
        "web-0 ready at {ready_at}, web-1 created at {created1}"
    );
    for p in [web0, web1] {
        assert_eq!(p["spec"]["hostname"], p["metadata"]["name"], "{p}");
        assert_eq!(p["spec"]["subdomain"], "web", "{p}");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            p["metadata"]["name"]
        );
    }
    assert_eq!(
        web1["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
        "1"
    );
    kubectl_ok(&cloud, &["rollout", "status", "sts/web", "--timeout=60s"])?;

    // A deleted pod comes back with its name.
    let old_uid = web0["metadata"]["uid"].clone();
    kubectl_ok(&cloud, &["delete", "pod", "web-0"])?;
    cloud
        .wait_for(
            "web-0 recreated",
            "/api/v1/namespaces/default/pods/web-0",
            DEADLINE,
            |p| p["metadata"]["uid"] != old_uid && ready(p),
        )
        .await?;

    // Scale to 0: web-1 is gone before web-0 starts terminating.
    kubectl_ok(
        &cloud,
        &[
            "patch",
            "sts",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":0}}"#,
        ],
    )?;
    eventually("both pods gone, web-1 first", DEADLINE, || async {
        let pods = pods_of(&cloud, "web").await?;
        let get = |n: &str| pods.iter().find(|p| name(p) == n).cloned();
        let web0_going = get("web-0").is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
        anyhow::ensure!(
            !(web0_going && get("web-1").is_some()),
            "web-0 is deleted while web-1 is still there: {pods:?}"
        );
        Ok(pods.is_empty().then_some(()))
    })
    .await?;
    let sts = cloud
        .get("/apis/apps/v1/namespaces/default/statefulsets/web")
        .await?;
    let sts = sts.ok_or_else(|| anyhow::anyhow!("the StatefulSet vanished"))?;
    eventually("status replicas 0", DEADLINE, || async {
        let s = cloud
            .get("/apis/apps/v1/namespaces/default/statefulsets/web")
            .await?;
        Ok(s.filter(|s| s["status"]["replicas"] == 0).map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {sts}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_collector_deletes_orphans_in_background_and_foreground_and_orphans_on_request(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let cm_path = |n: &str| format!("/api/v1/namespaces/default/configmaps/{n}");
    let create_owner = |name: &'static str| {
        let cloud = &cloud;
        async move {
            let (code, v) = cloud
                .api(
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    Some(json!({"metadata": {"name": name}})),
                )
                .await?;
            anyhow::ensure!(code == 201, "{v}");
            Ok::<Value, anyhow::Error>(v)
        }
    };
    let create_dependent = |name: &'static str, owner: Value, block: bool, finalizers: Value| {
        let cloud = &cloud;
        async move {
            let r = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
                           "uid": owner["metadata"]["uid"], "blockOwnerDeletion": block});
            let (code, v) = cloud
                .api(
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    Some(json!({"metadata": {"name": name, "ownerReferences": [r],
                                              "finalizers": finalizers}})),
                )
                .await?;
            anyhow::ensure!(code == 201, "{v}");
            Ok::<Value, anyhow::Error>(v)
        }
    };

    // Background (kubectl's default): the owner goes at once, its dependents after it.
    let owner = create_owner("bg-owner").await?;
    create_dependent("bg-dep-1", owner.clone(), true, json!([])).await?;
    create_dependent("bg-dep-2", owner.clone(), false, json!([])).await?;
    // A same-named object with another uid is not the owner: its "dependent" goes at once.
    let impostor =
        json!({"metadata": {"name": "bg-owner", "uid": "00000000-0000-4000-8000-000000000000"}});
    create_dependent("fake-dep", impostor, false, json!([])).await?;
    cloud
        .wait_gone("fake-dep collected", &cm_path("fake-dep"), DEADLINE)
        .await?;
    assert!(cloud.get(&cm_path("bg-dep-1")).await?.is_some());
    kubectl_ok(&cloud, &["delete", "configmap", "bg-owner"])?;
    for dep in ["bg-dep-1", "bg-dep-2"] {
        cloud
            .wait_gone(&format!("{dep} collected"), &cm_path(dep), DEADLINE)
            .await?;
    }

    // Foreground: the owner stays, terminating, until its blocking dependent is gone.
    let owner = create_owner("fg-owner").await?;
    create_dependent("fg-dep", owner, true, json!(["example.com/hold"])).await?;
    kubectl_ok(
        &cloud,
        &[
            "delete",
            "configmap",
            "fg-owner",
            "--cascade=foreground",
            "--wait=false",
        ],
    )?;
    let dep = cloud
        .wait_for(
            "fg-dep deleted in the foreground",
            &cm_path("fg-dep"),
            DEADLINE,
            |d| !d["metadata"]["deletionTimestamp"].is_null(),
        )
        .await?;
    // (The collector may already have finished the dependent's own foreground deletion: it
    // has no dependents.)
    assert_eq!(
        dep["metadata"]["finalizers"][0], "example.com/hold",
        "{dep}"
    );
    let held = cloud.get(&cm_path("fg-owner")).await?;
    let held = held.ok_or_else(|| anyhow::anyhow!("fg-owner went before its dependent"))?;
    assert!(!held["metadata"]["deletionTimestamp"].is_null(), "{held}");
    assert_eq!(
        held["metadata"]["finalizers"],
        json!(["foregroundDeletion"]),
        "{held}"
    );
    kubectl_ok(
        &cloud,
        &[
            "patch",
            "configmap",
            "fg-dep",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
        ],
    )?;
    cloud
        .wait_gone("fg-dep gone", &cm_path("fg-dep"), DEADLINE)
        .await?;
    cloud
        .wait_gone(
            "fg-owner gone after its dependent",
            &cm_path("fg-owner"),
            DEADLINE,
        )
        .await?;

    // Orphan: the owner goes, the dependent stays without the reference.
    let owner = create_owner("or-owner").await?;
    create_dependent("or-dep", owner, true, json!([])).await?;
    kubectl_ok(
        &cloud,
        &[
            "delete",
            "configmap",
            "or-owner",
            "--cascade=orphan",
            "--timeout=30s",
        ],
    )?;
    assert!(cloud.get(&cm_path("or-owner")).await?.is_none());
    let dep = cloud.get(&cm_path("or-dep")).await?;
    let dep = dep.ok_or_else(|| anyhow::anyhow!("or-dep was deleted instead of orphaned"))?;
    assert!(dep["metadata"]["ownerReferences"].is_null(), "{dep}");

    let deletions = cloud.metric("skerry_gc_deletions_total").await?;
    assert!(deletions.is_some_and(|n| n >= 1.0), "{deletions:?}");
    Ok(())
}
