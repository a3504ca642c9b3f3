//! Endpoints and EndpointSlices end to end with the real kubectl: a Deployment exposed by
//! `kubectl expose`, its pods given addresses and readiness by status writes through the API
//! (what an edge's kubelet reports), and the controllers following them: `kubectl get
//! endpoints,endpointslices` as Kubernetes prints them, readiness, scaling down, and the
//! slices going with the Service.

use serde_json::{json, Value};
use skerry_tests::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    anyhow::ensure!(ok, "kubectl {args:?} failed: {out}\n{}", cloud.log_tail());
    Ok(out)
}

/// Waits until `kubectl args` succeeds with output satisfying `done`; returns the output.
async fn kubectl_until(
    cloud: &Cloud,
    args: &[&str],
    what: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let last = std::sync::Mutex::new(String::new());
    eventually(what, DEADLINE, || async {
        let (ok, out) = cloud.kubectl(args)?;
        *last.lock().unwrap_or_else(|e| e.into_inner()) = out.clone();
        Ok((ok && done(&out)).then_some(out))
    })
    .await
    .map_err(|e| {
        let out = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        anyhow::anyhow!("{e:#}; kubectl {args:?} last printed:\n{out}")
    })
}

async fn pods(cloud: &Cloud) -> anyhow::Result<Vec<Value>> {
    let (code, list) = cloud
        .api(
            "GET",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
            None,
        )
        .await?;
    anyhow::ensure!(code == 200, "pod list answered {code}: {list}");
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string());
    Ok(items)
}

/// Writes the status an edge reports for a running pod at `ip`.
async fn report(cloud: &Cloud, pod: &Value, ip: &str, ready: bool) -> anyhow::Result<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let path = format!("/api/v1/namespaces/default/pods/{name}/status");
    // Re-read so that the write is against the current version.
    let mut current = cloud
        .get(&format!("/api/v1/namespaces/default/pods/{name}"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod {name} is gone"))?;
    current["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let (code, body) = cloud.api("PUT", &path, Some(current)).await?;
    anyhow::ensure!(code == 200, "status of {name} answered {code}: {body}");
    Ok(())
}

fn line_of<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_shows_endpoints_and_slices_that_follow_pods_readiness_and_scale(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "httpd", "image": "busybox:local",
                    "command": ["httpd", "-f", "-p", "8080"],
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}});
    let manifest = cloud.dir.path().join("web.json");
    std::fs::write(&manifest, serde_json::to_vec(&deployment)?)?;
    kubectl_ok(
        &cloud,
        &["apply", "-f", manifest.to_str().unwrap_or_default()],
    )?;
    kubectl_ok(
        &cloud,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=http",
        ],
    )?;
    let three = eventually("three pods", DEADLINE, || async {
        let p = pods(&cloud).await?;
        Ok((p.len() == 3).then_some(p))
    })
    .await?;
    let ips = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];
    for (pod, ip) in three.iter().zip(ips) {
        report(&cloud, pod, ip, true).await?;
    }

    let out = kubectl_until(
        &cloud,
        &["get", "endpoints", "web"],
        "three ready endpoints",
        |o| line_of(o, "web ").is_some_and(|l| l.matches(":8080").count() == 3),
    )
    .await?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "ENDPOINTS", "AGE"], "{out}");
    let row = line_of(&out, "web ").unwrap_or("");
    assert!(
        row.contains("10.244.0.11:8080,10.244.0.12:8080,10.244.0.13:8080"),
        "{out}"
    );
    let out = kubectl_ok(
        &cloud,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    )?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = line_of(&out, "web-")
        .unwrap_or_else(|| panic!("no slice in:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!((row[1], row[2]), ("IPv4", "8080"), "{out}");
    assert_eq!(row[3], "10.244.0.11,10.244.0.12,10.244.0.13", "{out}");
    // `kubectl describe service` reads the endpoints of the Service too.
    let out = kubectl_ok(&cloud, &["describe", "service", "web"])?;
    assert!(
        out.lines()
            .any(|l| l.starts_with("Endpoints:") && l.contains("10.244.0.11:8080")),
        "{out}"
    );
    // Both kinds in one call, as `kubectl get endpoints,endpointslices` lists them.
    let out = kubectl_ok(&cloud, &["get", "endpoints,endpointslices"])?;
    assert!(
        out.contains("endpoints/web") && out.contains("endpointslice.discovery.k8s.io/web-"),
        "{out}"
    );

    // One pod fails its readiness: it leaves the Endpoints' ready addresses, and its slice
    // endpoint says ready=false.
    report(&cloud, &three[0], ips[0], false).await?;
    kubectl_until(
        &cloud,
        &["get", "endpoints", "web"],
        "two ready endpoints",
        |o| {
            line_of(o, "web ")
                .is_some_and(|l| l.matches(":8080").count() == 2 && !l.contains(ips[0]))
        },
    )
    .await?;
    let slice = kubectl_ok(
        &cloud,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
    )?;
    let slice: Value = serde_json::from_str(&slice)?;
    let not_ready = slice["items"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["addresses"][0] == ips[0])
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(not_ready["conditions"]["ready"], false, "{slice}");
    assert_eq!(not_ready["targetRef"]["kind"], "Pod", "{slice}");

    // Scaling down leaves fewer endpoints.
    kubectl_ok(&cloud, &["scale", "deployment", "web", "--replicas=1"])?;
    kubectl_until(
        &cloud,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {end}",
        ],
        "one endpoint left",
        |o| o.split_whitespace().count() == 1,
    )
    .await?;

    // Deleting the Service takes its slices and its Endpoints with it.
    kubectl_ok(&cloud, &["delete", "service", "web"])?;
    kubectl_until(
        &cloud,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ],
        "the slices gone",
        |o| o.contains("No resources found"),
    )
    .await?;
    kubectl_until(&cloud, &["get", "endpoints"], "the Endpoints gone", |o| {
        line_of(o, "web ").is_none()
    })
    .await?;
    Ok(())
}
