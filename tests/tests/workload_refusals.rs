//! Workload fields the edge cannot honour are refused by the API with a 422 naming the field,
//! as the real kubectl shows it.

use skerry_tests::*;

const STATEFUL_SET: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: main
        image: busybox:local
        command: ["sleep", "300"]
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 1Gi
"#;

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_volume_claim_templates_are_refused_with_a_422() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let path = cloud.dir.path().join("db.yaml");
    std::fs::write(&path, STATEFUL_SET)?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", path.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"The StatefulSet "db" is invalid"#)
            && out.contains("spec.volumeClaimTemplates: Forbidden: PersistentVolumeClaims are not supported on edge nodes (there is no volume provisioner); declare emptyDir, hostPath, configMap or secret volumes in spec.template.spec.volumes instead"),
        "{out}"
    );
    // The status code is 422 (Unprocessable Entity), and nothing was stored.
    let body = serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "main", "image": "busybox:local"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let (code, status) = cloud
        .api(
            "POST",
            "/apis/apps/v1/namespaces/default/statefulsets",
            Some(body),
        )
        .await?;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.volumeClaimTemplates"
    );
    let (ok, out) = cloud.kubectl(&["get", "sts"])?;
    assert!(ok && out.contains("No resources found"), "{out}");
    // Without the claim template (an emptyDir instead) it is accepted.
    let fixed = STATEFUL_SET
        .split("  volumeClaimTemplates:")
        .next()
        .unwrap_or_default()
        .to_string()
        + "      volumes:\n      - name: data\n        emptyDir: {}\n";
    std::fs::write(&path, fixed)?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", path.to_str().unwrap_or_default()])?;
    assert!(ok && out.contains("statefulset.apps/db created"), "{out}");
    Ok(())
}
