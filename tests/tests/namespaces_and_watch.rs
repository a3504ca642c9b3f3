//! Namespaces and resumable watches through the real kubectl (issue #4, "kubectl works"): a
//! namespace gates what is created in it and takes its content with it when deleted, and a
//! watch from a list's resourceVersion sees what happened in between — or gets 410 when that
//! is older than cloudcore's watch history, so the client re-lists.

use skerry_tests::*;

/// The watch history of this test's cloudcore: small, so that a few writes push a revision out.
const HISTORY: usize = 20;

fn resource_version(list: &serde_json::Value) -> anyhow::Result<u64> {
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("list without resourceVersion: {list}"))?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_namespaces_gate_creation_and_watches_resume_or_expire() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions {
        watch_history: Some(HISTORY),
        ..CloudOptions::default()
    })
    .await?;
    let (ok, out) = cloud.kubectl(&["create", "namespace", "team-a"])?;
    assert!(ok, "{out}");
    for name in ["cfg", "gone"] {
        let (ok, out) = cloud.kubectl(&[
            "-n",
            "team-a",
            "create",
            "configmap",
            name,
            "--from-literal=mode=edge",
        ])?;
        assert!(ok, "{out}");
    }
    let (ok, out) = cloud.kubectl(&["get", "ns"])?;
    assert!(ok, "{out}");
    for (name, phase) in [
        ("team-a", "Active"),
        ("default", "Active"),
        ("kube-system", "Active"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains(phase)),
            "{name} {phase} missing from:\n{out}"
        );
    }
    let (ok, out) = cloud.kubectl(&[
        "-n",
        "nowhere",
        "create",
        "configmap",
        "x",
        "--from-literal=a=b",
    ])?;
    assert!(
        !ok && out.contains(r#"namespaces "nowhere" not found"#),
        "{out}"
    );

    // A delete between a list and a watch from the list's revision is not missed.
    let (code, list) = cloud
        .api("GET", "/api/v1/namespaces/team-a/configmaps", None)
        .await?;
    assert_eq!(code, 200, "{list}");
    let listed = resource_version(&list)?;
    let (ok, out) = cloud.kubectl(&["-n", "team-a", "delete", "configmap", "gone"])?;
    assert!(ok, "{out}");
    let watch = format!(
        "/api/v1/namespaces/team-a/configmaps?watch=1&timeoutSeconds=2&resourceVersion={listed}"
    );
    let (ok, out) = cloud.kubectl(&["get", "--raw", &watch])?;
    assert!(ok, "{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["type"], "DELETED", "{out}");
    assert_eq!(events[0]["object"]["metadata"]["name"], "gone", "{out}");

    // Deleting the namespace takes its ConfigMap with it, then the namespace itself (kubectl
    // waits until it is gone).
    let (ok, out) = cloud.kubectl(&["delete", "namespace", "team-a", "--timeout=30s"])?;
    assert!(ok, "{out}");
    assert!(cloud
        .get("/api/v1/namespaces/team-a/configmaps/cfg")
        .await?
        .is_none());
    let (ok, out) = cloud.kubectl(&["get", "namespace", "team-a"])?;
    assert!(!ok && out.contains("NotFound"), "{out}");
    let (ok, out) = cloud.kubectl(&["delete", "namespace", "kube-system"])?;
    assert!(
        !ok && out.contains("this namespace may not be deleted"),
        "{out}"
    );

    // More writes than the history keeps: the old revision is gone, and the watch says so.
    for i in 0..=HISTORY {
        let (code, v) = cloud
            .api(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                Some(serde_json::json!({"metadata": {"name": format!("fill-{i}")}})),
            )
            .await?;
        assert_eq!(code, 201, "{v}");
    }
    let (ok, out) = cloud.kubectl(&["get", "--raw", &watch.replace("team-a", "default")])?;
    assert!(ok, "{out}");
    let event: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(event["type"], "ERROR", "{out}");
    assert_eq!(event["object"]["code"], 410, "{out}");
    assert_eq!(event["object"]["reason"], "Expired", "{out}");
    assert!(
        event["object"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("too old resource version: {listed} (")),
        "{out}"
    );
    Ok(())
}
