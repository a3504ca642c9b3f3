//! The patch verbs as the real kubectl sends them: client-side `apply` (strategic merge with the
//! last-applied annotation), `patch --type=json|strategic`, `label`, `annotate`, and
//! `apply --server-side` with field ownership and conflicts between managers.

use skerry_tests::*;

fn pod_manifest(label: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: {label}}}\nspec:\n  containers:\n  - name: web\n    image: {image}\n    env:\n    - {{name: A, value: \"1\"}}\n  - name: side\n    image: busybox:1\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_patch_label_and_annotate_edit_a_pod() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let manifest = cloud.dir.path().join("pod.yaml");
    let file = manifest.to_str().unwrap_or_default();
    std::fs::write(&manifest, pod_manifest("web", "nginx:1"))?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", file])?;
    assert!(ok && out.contains("pod/web created"), "{out}");
    std::fs::write(&manifest, pod_manifest("web2", "nginx:2"))?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", file])?;
    assert!(ok && out.contains("pod/web configured"), "{out}");
    let pod = cloud
        .get("/api/v1/namespaces/default/pods/web")
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod gone"))?;
    assert_eq!(pod["metadata"]["labels"]["app"], "web2");
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(pod["spec"]["containers"][1]["image"], "busybox:1");
    assert!(pod["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_some());

    let (ok, out) = cloud.kubectl(&[
        "patch", "pod", "web", "--type=json", "-p",
        r#"[{"op":"test","path":"/metadata/labels/app","value":"web2"},{"op":"add","path":"/metadata/labels/tier","value":"fe"}]"#,
    ])?;
    assert!(ok && out.contains("pod/web patched"), "{out}");
    let (ok, out) = cloud.kubectl(&[
        "patch",
        "pod",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/metadata/labels/app","value":"nope"}]"#,
    ])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"JSON patch operation 0 (test) on path "/metadata/labels/app" failed"#),
        "{out}"
    );

    let (ok, out) = cloud.kubectl(&[
        "patch",
        "pod",
        "web",
        "--type=strategic",
        "-p",
        r#"{"spec":{"containers":[{"name":"side","image":"busybox:2"}]}}"#,
    ])?;
    assert!(ok && out.contains("pod/web patched"), "{out}");
    let (ok, out) = cloud.kubectl(&["set", "image", "pod/web", "web=nginx:3"])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&["label", "pod", "web", "zone=north"])?;
    assert!(ok && out.contains("pod/web labeled"), "{out}");
    let (ok, out) = cloud.kubectl(&["annotate", "pod", "web", "note=hello"])?;
    assert!(ok && out.contains("pod/web annotated"), "{out}");
    let (ok, out) = cloud.kubectl(&["label", "pod", "web", "tier-"])?;
    assert!(ok, "{out}");
    let pod = cloud
        .get("/api/v1/namespaces/default/pods/web")
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod gone"))?;
    assert_eq!(
        pod["metadata"]["labels"],
        serde_json::json!({"app": "web2", "zone": "north"})
    );
    assert_eq!(pod["metadata"]["annotations"]["note"], "hello");
    let images: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["image"].as_str())
        .collect();
    assert_eq!(images, ["nginx:3", "busybox:2"]);
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "A");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_server_side_apply_tracks_managers_and_shows_conflicts() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let manifest = cloud.dir.path().join("cm.yaml");
    let file = manifest.to_str().unwrap_or_default();
    let cm = |k: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  k: \"{k}\"\n{extra}"
        )
    };
    std::fs::write(&manifest, cm("1", "  gone: \"soon\"\n"))?;
    let (ok, out) = cloud.kubectl(&["apply", "--server-side", "-f", file])?;
    assert!(
        ok && out.contains("configmap/cfg serverside-applied"),
        "{out}"
    );
    std::fs::write(&manifest, cm("2", ""))?;
    let (ok, out) = cloud.kubectl(&["apply", "--server-side", "-f", file])?;
    assert!(
        ok && out.contains("configmap/cfg serverside-applied"),
        "{out}"
    );
    let live = cloud
        .get("/api/v1/namespaces/default/configmaps/cfg")
        .await?
        .ok_or_else(|| anyhow::anyhow!("configmap gone"))?;
    assert_eq!(
        live["data"],
        serde_json::json!({"k": "2"}),
        "the dropped key is removed"
    );
    assert_eq!(live["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(live["metadata"]["managedFields"][0]["operation"], "Apply");

    std::fs::write(&manifest, cm("3", ""))?;
    let (ok, out) =
        cloud.kubectl(&["apply", "--server-side", "--field-manager=ops", "-f", file])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .data.k"#),
        "{out}"
    );
    assert!(
        out.contains("--force-conflicts"),
        "kubectl explains how to resolve: {out}"
    );
    let (ok, out) = cloud.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=ops",
        "--force-conflicts",
        "-f",
        file,
    ])?;
    assert!(ok, "{out}");
    let live = cloud
        .get("/api/v1/namespaces/default/configmaps/cfg")
        .await?
        .ok_or_else(|| anyhow::anyhow!("configmap gone"))?;
    assert_eq!(live["data"]["k"], "3");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "configmap",
        "cfg",
        "--show-managed-fields",
        "-o",
        "yaml",
    ])?;
    assert!(ok && out.contains("manager: ops"), "{out}");
    Ok(())
}
