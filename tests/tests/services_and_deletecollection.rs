//! Services and deletecollection through the real kubectl against a real cloudcore: kubectl's
//! service columns, cluster IPs and node ports that never collide (also across a restart), and
//! `kubectl delete -l` next to a direct collection DELETE.

use serde_json::json;
use skerry_tests::*;

fn line_of<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from:\n{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_services_get_unique_addresses_and_collections_delete_by_selector(
) -> anyhow::Result<()> {
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let (ok, out) = cloud.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=80:8080",
        "--node-port=30080",
    ])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&["get", "svc", "-o", "wide"])?;
    assert!(ok, "{out}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let web: Vec<&str> = line_of(&out, "web").split_whitespace().collect();
    assert_eq!(web[1], "ClusterIP");
    assert!(web[2].starts_with("10."), "{out}");
    assert_eq!((web[3], web[4], web[6]), ("<none>", "80/TCP", "app=web"));
    let np: Vec<&str> = line_of(&out, "np").split_whitespace().collect();
    assert_eq!((np[1], np[4]), ("NodePort", "80:30080/TCP"));
    assert_ne!(np[2], web[2]);
    let web_ip = web[2].to_string();
    let (ok, out) = cloud.kubectl(&["get", "all"])?;
    assert!(ok && out.contains("service/web"), "{out}");

    // A held address or node port is refused, also after a restart.
    let taken = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
        "spec": {"clusterIP": web_ip, "ports": [{"port": 80}]}});
    let manifest = cloud.dir.path().join("taken.json");
    std::fs::write(&manifest, taken.to_string())?;
    let manifest = manifest.to_string_lossy().to_string();
    let (ok, out) = cloud.kubectl(&["create", "-f", &manifest])?;
    assert!(
        !ok && out.contains("provided IP is already allocated"),
        "{out}"
    );
    cloud.kill9();
    cloud.launch().await?;
    let (ok, out) = cloud.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    assert!(ok && out == web_ip, "{out}");
    let (ok, out) = cloud.kubectl(&["create", "-f", &manifest])?;
    assert!(
        !ok && out.contains("provided IP is already allocated"),
        "{out}"
    );
    let (ok, out) = cloud.kubectl(&[
        "create",
        "service",
        "nodeport",
        "np2",
        "--tcp=81:8080",
        "--node-port=30080",
    ])?;
    assert!(
        !ok && out.contains("provided port is already allocated"),
        "{out}"
    );
    // Freed by deletion.
    let (ok, out) = cloud.kubectl(&["delete", "svc", "web"])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&["create", "-f", &manifest])?;
    assert!(ok, "{out}");

    // kubectl delete -l (which lists, then deletes each) and a collection DELETE.
    for (name, app) in [
        ("a1", "x"),
        ("a2", "x"),
        ("b1", "y"),
        ("c1", "z"),
        ("c2", "z"),
    ] {
        let (ok, out) = cloud.kubectl(&[
            "run",
            name,
            "--image=nginx:1.25",
            &format!("--labels=app={app}"),
            "--overrides={\"spec\":{\"nodeSelector\":{\"none\":\"none\"}}}",
        ])?;
        assert!(ok, "{out}");
    }
    let (ok, out) = cloud.kubectl(&["delete", "pods", "-l", "app=x"])?;
    assert!(
        ok && out.contains("pod \"a1\" deleted") && out.contains("pod \"a2\" deleted"),
        "{out}"
    );
    let (code, list) = cloud
        .api(
            "DELETE",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dz",
            None,
        )
        .await?;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    let (ok, out) = cloud.kubectl(&["get", "pods", "-o", "name"])?;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "pod/b1");
    let (ok, out) = cloud.kubectl(&["api-resources", "-o", "wide"])?;
    assert!(ok, "{out}");
    let pods = line_of(&out, "pods");
    assert!(pods.contains("deletecollection"), "{pods}");
    let ns = line_of(&out, "namespaces");
    assert!(!ns.contains("deletecollection"), "{ns}");
    let svc = line_of(&out, "services");
    assert!(svc.contains("svc") && svc.contains("all"), "{svc}");
    Ok(())
}
