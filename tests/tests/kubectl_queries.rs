//! What an admin asks kubectl about running pods: label and field selectors, a live watch,
//! `describe`, and the field errors of invalid manifests (nothing of which may be stored).

use skerry_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

fn pod_manifest(name: &str, labels: &str, site: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  nodeSelector: {{site: {site}}}\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: busybox:local\n    command: [sleep, \"300\"]\n"
    )
}

/// The names `kubectl get pods -o name` prints for `args`, sorted.
fn names(cloud: &Cloud, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut all = vec!["get", "pods", "-o", "name"];
    all.extend_from_slice(args);
    let (ok, out) = cloud.kubectl(&all)?;
    anyhow::ensure!(ok, "kubectl {all:?} failed: {out}");
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("pod/"))
        .map(str::to_string)
        .collect();
    v.sort();
    Ok(v)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_selects_watches_and_describes_pods() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _a = Edge::join_and_start(&cloud, "edge-a", &["site=a"]).await?;
    let _b = Edge::join_and_start(&cloud, "edge-b", &["site=b"]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    cloud.wait_node_ready("edge-b", DEADLINE).await?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("pods.yaml");
    let pods = [
        ("web-a", "app: x, tier: fe", "a"),
        ("db-a", "app: x, tier: db", "a"),
        ("web-b", "app: x, tier: fe", "b"),
        ("other", "app: misc", "b"),
    ];
    std::fs::write(
        &manifest,
        pods.iter()
            .map(|(n, l, s)| pod_manifest(n, l, s))
            .collect::<Vec<_>>()
            .join("---\n"),
    )?;
    let path = manifest.to_str().unwrap_or_default();
    let (ok, out) = cloud.kubectl(&["apply", "-f", path])?;
    assert!(ok, "{out}");
    for (name, _, _) in pods {
        cloud.wait_running(name, DEADLINE).await?;
    }

    // Label selectors: equality, inequality (which also matches pods without the label), sets
    // and existence.
    assert_eq!(
        names(&cloud, &["-l", "app=x,tier!=db"])?,
        ["web-a", "web-b"]
    );
    assert_eq!(
        names(&cloud, &["-l", "tier!=db"])?,
        ["other", "web-a", "web-b"]
    );
    assert_eq!(names(&cloud, &["-l", "tier in (db,cache)"])?, ["db-a"]);
    assert_eq!(names(&cloud, &["-l", "!tier"])?, ["other"]);
    assert_eq!(
        names(&cloud, &["-l", "app notin (x),tier"])?,
        Vec::<String>::new()
    );
    // Field selectors: the node, the phase, and both with a label selector.
    assert_eq!(
        names(&cloud, &["--field-selector", "spec.nodeName=edge-a"])?,
        ["db-a", "web-a"]
    );
    assert_eq!(
        names(
            &cloud,
            &[
                "--field-selector",
                "spec.nodeName!=edge-a,status.phase=Running",
                "-l",
                "app=x"
            ]
        )?,
        ["web-b"]
    );
    let (ok, out) = cloud.kubectl(&["get", "pods", "--field-selector", "spec.image=x"])?;
    assert!(
        !ok && out.contains("field label not supported: spec.image"),
        "{out}"
    );

    // `kubectl describe pod`: where it runs, its state, its labels, and the scheduler's event.
    let (ok, out) = cloud.kubectl(&["describe", "pod", "web-a"])?;
    assert!(ok, "{out}");
    for needle in [
        "Name:",
        "web-a",
        "Node:",
        "edge-a",
        "Status:",
        "Running",
        "app=x",
        "tier=fe",
        "Containers:",
        "sleep",
        "Events:",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }

    // `kubectl explain` renders fields from the served OpenAPI schemas.
    let (ok, out) = cloud.kubectl(&["explain", "pods.spec.containers.ports"])?;
    assert!(
        ok && out.contains("FIELD: ports <[]ContainerPort>") && out.contains("containerPort"),
        "{out}"
    );
    let (ok, out) = cloud.kubectl(&["explain", "deployment.spec.strategy.rollingUpdate"])?;
    assert!(
        ok && out.contains("maxSurge") && out.contains("maxUnavailable"),
        "{out}"
    );

    // `kubectl get -w` sees a pod come, and go.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(["get", "pods", "-w", "--output-watch-events", "-l", "app=z"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = watch
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |pred: &dyn Fn(&str) -> bool| -> anyhow::Result<String> {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return Ok(l),
                Ok(_) => {}
                Err(_) => anyhow::bail!("kubectl get -w printed no matching line in time"),
            }
        }
    };
    // Whether kubectl lists before or after the create, z1 is printed as ADDED: from the
    // initial list, or from the watch that resumes at the list's resourceVersion.
    let z = dir.path().join("z.yaml");
    std::fs::write(&z, pod_manifest("z1", "app: z", "a"))?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", z.to_str().unwrap_or_default()])?;
    assert!(ok, "{out}");
    wait_line(&|l| l.contains("z1") && l.starts_with("ADDED"))?;
    let (ok, out) = cloud.kubectl(&["delete", "pod", "z1", "--wait=false"])?;
    assert!(ok, "{out}");
    let deleted = wait_line(&|l| l.contains("z1") && l.starts_with("DELETED"))?;
    assert!(deleted.starts_with("DELETED"), "{deleted}");
    let _ = watch.kill();
    let _ = watch.wait();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_get_field_errors_and_are_not_stored() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "bad-name",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Web_1\nspec:\n  containers:\n  - name: main\n    image: busybox:local\n",
            vec![r#"metadata.name: Invalid value: "Web_1""#, "lowercase RFC 1123"],
            "/api/v1/namespaces/default/pods/Web_1",
        ),
        (
            "no-image",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: noimage\nspec:\n  containers:\n  - name: main\n",
            vec!["spec.containers[0].image: Required value"],
            "/api/v1/namespaces/default/pods/noimage",
        ),
        (
            "bad-selector",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: api}\n    spec:\n      containers:\n      - name: main\n        image: nginx:1.25\n        ports:\n        - containerPort: 70000\n",
            vec![
                "spec.template.metadata.labels: Invalid value",
                "`selector` does not match template `labels`",
                "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000",
            ],
            "/apis/apps/v1/namespaces/default/deployments/web",
        ),
    ];
    for (file, manifest, errors, path) in cases {
        let f = dir.path().join(format!("{file}.yaml"));
        std::fs::write(&f, manifest)?;
        for verb in ["create", "apply"] {
            let (ok, out) = cloud.kubectl(&[verb, "-f", f.to_str().unwrap_or_default()])?;
            assert!(!ok, "{file}: kubectl {verb} succeeded: {out}");
            assert!(out.contains("is invalid"), "{file}: {out}");
            for e in &errors {
                assert!(out.contains(e), "{file}: {e} missing from:\n{out}");
            }
            assert!(cloud.get(path).await?.is_none(), "{file} was stored");
        }
    }
    Ok(())
}
