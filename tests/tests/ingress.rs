//! Ingress end to end on real containers: two Deployments of busybox httpd answering their own
//! name behind one Ingress, by path and by host, reached with curl through the node's address
//! on the edge's Ingress router; HTTPS with a self-signed certificate from a
//! `kubernetes.io/tls` Secret chosen by SNI; `kubectl get ingress` shows the node's address
//! (written by the cloud's ingress-status controller); 404 for what no rule matches, 503 for a
//! Service without endpoints; a node taken out of the class's selector stops serving and
//! serves again when put back; and everything still served after the cloud is killed (-9).

use anyhow::{Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A Deployment whose pods answer `name` and their pod name (a second line) at `/`,
/// `/alpha/` and `/beta/`.
fn app(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
          "template": {"metadata": {"labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
              "name": "httpd", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
              "command": ["/bin/sh", "-c", format!(
                "mkdir -p /www/alpha /www/beta && for d in /www /www/alpha /www/beta; do (echo {name}; hostname) > $d/index.html; done && exec httpd -f -p 8080 -h /www")],
              "ports": [{"name": "http", "containerPort": 8080}],
              "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}}}})
}

fn service(name: &str, selector: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": selector}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
}

fn apply(cloud: &Cloud, obj: &Value) -> Result<()> {
    let file = cloud.dir.path().join(format!(
        "{}-{}.json",
        obj["kind"].as_str().unwrap_or("obj"),
        obj["metadata"]["name"].as_str().unwrap_or("x")
    ));
    std::fs::write(&file, obj.to_string())?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
    anyhow::ensure!(ok, "kubectl apply: {out}");
    Ok(())
}

/// A port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// curl's answer: (status code, body trimmed). `extra` are more curl arguments.
fn curl(url: &str, extra: &[&str]) -> Result<(u16, String)> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Ok((code.trim().parse().unwrap_or(0), body.trim().to_string()))
}

/// The Service name an answer carries (its first line).
fn app_of(body: &str) -> &str {
    body.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_services_behind_one_ingress_by_path_and_host_with_tls_offline_too() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let (http_port, https_port) = (free_port()?, free_port()?);
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let ctrd = Containerd::start().await?;
    let http_flag = format!("0.0.0.0:{http_port}");
    let https_flag = format!("0.0.0.0:{https_port}");
    let _edge = Edge::join_and_start_cri_networked(
        &cloud,
        "ing-edge",
        &ctrd,
        &[
            "--ingress-http-addr",
            &http_flag,
            "--ingress-https-addr",
            &https_flag,
        ],
    )
    .await?;
    let node = cloud.wait_node_ready("ing-edge", LONG).await?;
    let node_ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .context("the node's InternalIP")?
        .to_string();
    let (ok, out) = cloud.kubectl(&["label", "node", "ing-edge", "site=hall-2"])?;
    anyhow::ensure!(ok, "{out}");

    for name in ["alpha", "beta"] {
        apply(&cloud, &app(name))?;
        apply(&cloud, &service(name, name))?;
    }
    apply(&cloud, &service("empty", "nothing"))?;
    apply(
        &cloud,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "edge", "annotations": {
                "ingressclass.kubernetes.io/is-default-class": "true",
                "ingressclass.skerry.io/node-selector": "site=hall-2"}},
            "spec": {"controller": "skerry.io/edge-ingress"}}),
    )?;
    // A self-signed certificate in a kubernetes.io/tls Secret, made by kubectl from files.
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["secure.example.com".to_string()])?.self_signed(&key)?;
    let (crt_file, key_file) = (
        cloud.dir.path().join("tls.crt"),
        cloud.dir.path().join("tls.key"),
    );
    std::fs::write(&crt_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let (ok, out) = cloud.kubectl(&[
        "create",
        "secret",
        "tls",
        "web-tls",
        "--cert",
        &crt_file.to_string_lossy(),
        "--key",
        &key_file.to_string_lossy(),
    ])?;
    anyhow::ensure!(ok, "{out}");
    let backend = |svc: &str, port: Value| json!({"service": {"name": svc, "port": port}});
    let prefix = |path: &str, svc: &str, port: Value| json!({"path": path, "pathType": "Prefix", "backend": backend(svc, port)});
    // No ingressClassName: the default class is admitted onto it, as in Kubernetes.
    apply(
        &cloud,
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"},
            "spec": {
              "tls": [{"hosts": ["secure.example.com"], "secretName": "web-tls"}],
              "rules": [
                {"http": {"paths": [
                    prefix("/alpha", "alpha", json!({"number": 80})),
                    prefix("/beta", "beta", json!({"name": "web"})),
                    prefix("/empty", "empty", json!({"number": 80}))]}},
                {"host": "a.example.com", "http": {"paths": [prefix("/", "alpha", json!({"number": 80}))]}},
                {"host": "*.b.example.com", "http": {"paths": [prefix("/", "beta", json!({"number": 80}))]}},
                {"host": "secure.example.com", "http": {"paths": [prefix("/", "beta", json!({"number": 80}))]}}]}}),
    )?;

    // kubectl shows the class the admission chose and the node's address.
    let row = eventually(
        "kubectl get ingress shows the node address",
        LONG,
        || async {
            let (ok, out) = cloud.kubectl(&["get", "ingress", "web"])?;
            Ok((ok && out.contains(&node_ip)).then_some(out))
        },
    )
    .await?;
    assert!(row.contains("edge") && row.contains("80, 443"), "{row}");
    let (ok, classes) = cloud.kubectl(&["get", "ingressclass"])?;
    assert!(
        ok && classes.contains("skerry.io/edge-ingress"),
        "{classes}"
    );
    let (ok, described) = cloud.kubectl(&["describe", "ing", "web"])?;
    assert!(
        ok && described.contains("secure.example.com"),
        "{described}"
    );

    let base = format!("http://{node_ip}:{http_port}");
    let checks = |label: &'static str| {
        let base = base.clone();
        let crt = crt_file.to_string_lossy().into_owned();
        let resolve = format!("secure.example.com:{https_port}:{node_ip}");
        let secure = format!("https://secure.example.com:{https_port}/");
        async move {
            eventually(label, LONG, || async {
                let got = [
                    curl(&format!("{base}/alpha/"), &[])?,
                    curl(&format!("{base}/beta/"), &[])?,
                    curl(&format!("{base}/"), &["-H", "Host: a.example.com"])?,
                    curl(&format!("{base}/"), &["-H", "Host: x.b.example.com"])?,
                    curl(&secure, &["--cacert", &crt, "--resolve", &resolve])?,
                ];
                let want = ["alpha", "beta", "alpha", "beta", "beta"];
                let ok = got
                    .iter()
                    .zip(want)
                    .all(|((code, body), w)| *code == 200 && app_of(body) == w);
                Ok(ok.then_some(()).or_else(|| {
                    eprintln!("{label}: {got:?}");
                    None
                }))
            })
            .await
        }
    };
    checks("path, host, wildcard host and TLS routes answer").await?;
    // What no rule matches is 404; a Service without ready endpoints is 503.
    assert_eq!(curl(&format!("{base}/nothing"), &[])?.0, 404);
    assert_eq!(
        curl(&format!("{base}/"), &["-H", "Host: b.example.com"])?.0,
        404,
        "a wildcard matches one label only"
    );
    assert_eq!(curl(&format!("{base}/empty"), &[])?.0, 503);
    // Requests are balanced over the Service's ready pods: both answer.
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (code, body) = curl(&format!("{base}/alpha/"), &[])?;
        assert_eq!((code, app_of(&body)), (200, "alpha"), "{body}");
        pods.insert(body.lines().nth(1).unwrap_or("").to_string());
    }
    assert_eq!(pods.len(), 2, "{pods:?}");

    // The node leaves the class's selector: it serves nothing (its set is cleared, the
    // ADDRESS goes); back in, it serves again.
    let (ok, out) = cloud.kubectl(&["label", "node", "ing-edge", "site-"])?;
    anyhow::ensure!(ok, "{out}");
    eventually(
        "a node out of the selector serves nothing",
        LONG,
        || async {
            let (code, _) = curl(&format!("{base}/alpha/"), &[])?;
            let (ok, out) = cloud.kubectl(&["get", "ingress", "web"])?;
            Ok((code == 404 && ok && !out.contains(&node_ip)).then_some(()))
        },
    )
    .await?;
    let (ok, out) = cloud.kubectl(&["label", "node", "ing-edge", "site=hall-2"])?;
    anyhow::ensure!(ok, "{out}");
    checks("served again once selected").await?;

    // The cloud dies: the router serves from the node's cache, TLS included.
    let mut cloud = cloud;
    cloud.kill9();
    checks("still served with the cloud gone").await?;
    Ok(())
}
