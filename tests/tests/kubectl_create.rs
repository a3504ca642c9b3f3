//! Every `kubectl create <generator>` kubectl 1.32 has for a kind cloudcore serves, as a new
//! user would try them. These use client-go's typed clients, which send protobuf bodies and do
//! not fall back to JSON (issue #9: `kubectl create deployment` failed with "this server does
//! not decode protobuf Deployment bodies"). Each object is read back with `kubectl get -o json`.

use base64::Engine as _;
use serde_json::{json, Value};
use skerry_tests::*;

/// Runs kubectl and fails with its output if it fails.
fn kubectl(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    anyhow::ensure!(ok, "kubectl {} failed:\n{out}", args.join(" "));
    Ok(out)
}

/// `kubectl get <what> -o json`.
fn get(cloud: &Cloud, what: &[&str]) -> anyhow::Result<Value> {
    let args = [&["get"], what, &["-o", "json"]].concat();
    let out = kubectl(cloud, &args)?;
    serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("kubectl get: {e}:\n{out}"))
}

/// Asserts that `obj` has every field of `expected` (a subset, compared recursively; lists
/// compare element by element).
fn assert_has(obj: &Value, expected: &Value, path: &str) {
    match (obj, expected) {
        (Value::Object(o), Value::Object(e)) => {
            for (k, v) in e {
                let sub = format!("{path}.{k}");
                let got = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{sub} is missing in {obj}"));
                assert_has(got, v, &sub);
            }
        }
        (Value::Array(o), Value::Array(e)) => {
            assert_eq!(
                o.len(),
                e.len(),
                "{path}: {obj} has not the length of {expected}"
            );
            for (i, (g, v)) in o.iter().zip(e).enumerate() {
                assert_has(g, v, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(obj, expected, "{path}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kubectl_create_generator_for_a_served_kind_makes_its_object() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let files = tempfile::tempdir()?;
    let file = |name: &str, contents: &[u8]| -> anyhow::Result<String> {
        let p = files.path().join(name);
        std::fs::write(&p, contents)?;
        Ok(p.to_string_lossy().into_owned())
    };

    // What travels: protobuf both ways (kubectl -v=8 prints the headers).
    let out = kubectl(&cloud, &["create", "namespace", "team-a", "-v=8"])?;
    let content_types: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().split_once("Content-Type: ").map(|(_, v)| v))
        .collect();
    assert!(
        content_types.len() >= 2
            && content_types
                .iter()
                .all(|t| t.starts_with("application/vnd.kubernetes.protobuf")),
        "request and answer should both be protobuf: {content_types:?}\n{out}"
    );
    let ns = get(&cloud, &["namespace", "team-a"])?;
    assert_has(
        &ns,
        &json!({"kind": "Namespace", "metadata": {"name": "team-a"}}),
        "ns",
    );

    // A deployment with a command, replicas, a port; and one at replicas 0, a pointer field
    // that must not become the default of 1.
    kubectl(
        &cloud,
        &[
            "create",
            "deployment",
            "web",
            "--image=skerry.local/busybox:1.35",
            "--replicas=2",
            "--port=8080",
            "--",
            "sleep",
            "3600",
        ],
    )?;
    let web = get(&cloud, &["deployment", "web"])?;
    assert_has(
        &web,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                    "name": "busybox", "image": "skerry.local/busybox:1.35",
                    "command": ["sleep", "3600"], "ports": [{"containerPort": 8080}]}]}}}}),
        "deployment web",
    );
    kubectl(
        &cloud,
        &[
            "create",
            "deployment",
            "idle",
            "--image=skerry.local/busybox:1.35",
            "--replicas=0",
            "-n",
            "team-a",
        ],
    )?;
    let idle = get(&cloud, &["deployment", "idle", "-n", "team-a"])?;
    assert_has(&idle, &json!({"spec": {"replicas": 0}}), "deployment idle");

    // Text and binary files: binary content goes to binaryData, base64 on both sides.
    let text = file("mode.conf", b"edge\n")?;
    let blob = file("blob.bin", &[0xff, 0x00, 0xfe])?;
    kubectl(
        &cloud,
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=level=debug",
            &format!("--from-file={text}"),
            &format!("--from-file={blob}"),
        ],
    )?;
    let cm = get(&cloud, &["configmap", "settings"])?;
    assert_has(
        &cm,
        &json!({"kind": "ConfigMap", "data": {"level": "debug", "mode.conf": "edge\n"},
            "binaryData": {"blob.bin": "/wD+"}}),
        "configmap",
    );

    kubectl(
        &cloud,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--type=kubernetes.io/basic-auth",
            "--from-literal=username=admin",
            "--from-literal=password=hunter2",
        ],
    )?;
    let db = get(&cloud, &["secret", "db"])?;
    assert_has(
        &db,
        &json!({"type": "kubernetes.io/basic-auth",
            "data": {"username": "YWRtaW4=", "password": "aHVudGVyMg=="}}),
        "secret generic",
    );

    kubectl(
        &cloud,
        &[
            "create",
            "secret",
            "docker-registry",
            "pull",
            "--docker-server=registry.local",
            "--docker-username=u",
            "--docker-password=p",
        ],
    )?;
    let pull = get(&cloud, &["secret", "pull"])?;
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson", "{pull}");
    let config = pull["data"][".dockerconfigjson"]
        .as_str()
        .unwrap_or_default();
    assert!(!config.is_empty(), "{pull}");

    let key = rcgen::generate_simple_self_signed(vec!["web.local".to_string()])?;
    let cert_pem = key.cert.pem();
    let key_pem = key.signing_key.serialize_pem();
    let cert = file("tls.crt", cert_pem.as_bytes())?;
    let tls_key = file("tls.key", key_pem.as_bytes())?;
    kubectl(
        &cloud,
        &[
            "create",
            "secret",
            "tls",
            "web-tls",
            &format!("--cert={cert}"),
            &format!("--key={tls_key}"),
        ],
    )?;
    let tls = get(&cloud, &["secret", "web-tls"])?;
    assert_eq!(tls["type"], "kubernetes.io/tls", "{tls}");
    for (k, pem) in [("tls.crt", &cert_pem), ("tls.key", &key_pem)] {
        let b64 = tls["data"][k].as_str().unwrap_or_default();
        let data = base64::engine::general_purpose::STANDARD.decode(b64)?;
        assert_eq!(data, pem.as_bytes(), "{k} in {tls}");
    }

    // Services: ports with an int targetPort, a fixed nodePort, headless, external names.
    kubectl(
        &cloud,
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
    )?;
    let svc = get(&cloud, &["service", "web"])?;
    assert_has(
        &svc,
        &json!({"spec": {"type": "ClusterIP", "selector": {"app": "web"}, "ports": [
            {"name": "80-8080", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        "service clusterip",
    );
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty()),
        "{svc}"
    );
    kubectl(
        &cloud,
        &[
            "create",
            "service",
            "clusterip",
            "headless",
            "--clusterip=None",
            "--tcp=53:53",
        ],
    )?;
    let headless = get(&cloud, &["service", "headless"])?;
    assert_has(
        &headless,
        &json!({"spec": {"clusterIP": "None"}}),
        "service headless",
    );
    kubectl(
        &cloud,
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "--tcp=80:8080",
            "--node-port=30080",
        ],
    )?;
    let np = get(&cloud, &["service", "np"])?;
    assert_has(
        &np,
        &json!({"spec": {"type": "NodePort", "ports": [
            {"port": 80, "targetPort": 8080, "nodePort": 30080}]}}),
        "service nodeport",
    );
    kubectl(
        &cloud,
        &["create", "service", "loadbalancer", "lb", "--tcp=443:8443"],
    )?;
    let lb = get(&cloud, &["service", "lb"])?;
    assert_has(
        &lb,
        &json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": 8443}]}}),
        "service loadbalancer",
    );
    kubectl(
        &cloud,
        &[
            "create",
            "service",
            "externalname",
            "db",
            "--external-name=db.example.com",
        ],
    )?;
    let ext = get(&cloud, &["service", "db"])?;
    assert_has(
        &ext,
        &json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
        "service externalname",
    );
    Ok(())
}
