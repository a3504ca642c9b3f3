//! Benchmark: how long from a readiness change to the routing change in the node's kernel
//! (issue #12), both ways it can happen, on a real CRI edge with its Service proxy:
//!
//! - **local, with the cloud gone** (killed): a pod's readiness probe starts failing (a CGI
//!   removes the file the probe reads; probe period 1 s, failure threshold 1) → the edge's
//!   prober notices → the ServiceView changes → the nft table no longer has the endpoint's
//!   chain. Then the reverse (the file back, the probe passes, the endpoint is back). This
//!   includes up to one probe period of waiting for the next probe, by nature.
//! - **via the cloud**: one endpoint's `ready` condition in an EndpointSlice written through
//!   the API (a selector-less Service) → the hub → QUIC → the edge's cache → the ServiceView →
//!   the table. Timed from the API's answer.
//!
//! Presence is polled with `nft list table` every 10 ms (the figure's resolution).
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_readiness_routing [REPEATS]`
//! (as root, with containerd installed: deploy/setup.sh). Prints Markdown rows.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::Containerd;
use skerry_tests::svc::{apply, get, pod_ips, ready_endpoints};
use skerry_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
}

/// Whether the table routes `service`'s port `http` to `ip:port` (its endpoint chain exists:
/// the applier deletes the chains of endpoints that left).
fn routed(table: &str, service: &str, ip: &str, port: u16) -> Result<bool> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.contains(&format!("ep-default/{service}/tcp/http__{ip}/{port}")))
}

/// Polls until `routed` is `want`; the time it took from `since`.
async fn until_routed(
    table: &str,
    service: &str,
    ip: &str,
    port: u16,
    want: bool,
    since: Instant,
) -> Result<f64> {
    let deadline = since + Duration::from_secs(30);
    loop {
        if routed(table, service, ip, port)? == want {
            return Ok(since.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{service} {ip}: routed={} not reached in 30 s",
            !want
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn manual_slice(ready: &[bool]) -> Value {
    let eps: Vec<Value> = ready
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"addresses": [format!("10.250.0.{}", i + 10)], "conditions": {"ready": r},
                   "nodeName": "bench-edge"})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps})
}

/// The CGIs of the probed pods: the readiness probe's target records when each probe came and
/// what it answered (microseconds since the epoch, from `adjtimex`: busybox's `date` has no
/// sub-second format), so the bench can tell the wait for the next probe from the edge's own
/// reaction to it.
const READY_CGI: &str = r#"#!/bin/sh
t=$(adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d", s, u}')
if [ -f /www/ready ]; then
  echo "$t 1" >> /www/probes
  printf 'Content-Type: text/plain\n\nok\n'
else
  echo "$t 0" >> /www/probes
  printf 'HTTP/1.0 503 Not Ready\r\nContent-Type: text/plain\r\n\r\nnot ready\n'
fi
"#;

fn probed() -> (Value, Value) {
    let cgi = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probed-cgi"},
        "data": {
            "ready": READY_CGI,
            "fail": "#!/bin/sh\nrm -f /www/ready\nprintf 'Content-Type: text/plain\\n\\nfailed\\n'\n",
            "heal": "#!/bin/sh\ntouch /www/ready\nprintf 'Content-Type: text/plain\\n\\nhealed\\n'\n"}});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probed"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "probed"}},
          "template": {"metadata": {"labels": {"app": "probed"}},
            "spec": {"terminationGracePeriodSeconds": 1,
              "volumes": [{"name": "cgi", "configMap": {"name": "probed-cgi", "defaultMode": 493}}],
              "containers": [{
                "name": "httpd", "image": containerd::BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c",
                  "hostname > /www/name && touch /www/ready && exec httpd -f -p 8080 -h /www"],
                "volumeMounts": [{"name": "cgi", "mountPath": "/www/cgi-bin"}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/cgi-bin/ready", "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 1}}]}}}});
    (cgi, deployment)
}

/// Microseconds since the epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The time of the first probe at or after `since_us` that answered `ready`, from the pod's
/// record.
async fn first_probe(addr: &str, since_us: u64, ready: bool) -> Result<u64> {
    let log = get(addr, "/probes").await?;
    let want = if ready { "1" } else { "0" };
    log.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, r)| *r == want)
        .filter_map(|(t, _)| t.parse::<u64>().ok())
        .find(|t| *t >= since_us)
        .with_context(|| format!("no probe answered ready={ready} after the trigger: {log}"))
}

fn row(what: &str, v: &[f64]) {
    println!(
        "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.99),
        v.iter().cloned().fold(f64::INFINITY, f64::min),
        v.iter().cloned().fold(0.0, f64::max),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(20), |a| a.parse())?;
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let ctrd = Containerd::start().await?;
    let edge = Edge::join_and_start_cri_networked(&cloud, "bench-edge", &ctrd, &[]).await?;
    let table = edge
        .network_owned
        .as_ref()
        .map(|(t, _)| t.clone())
        .context("a networked edge owns a table")?;
    cloud
        .wait_node_ready("bench-edge", Duration::from_secs(120))
        .await?;
    let (cgi, deployment) = probed();
    apply(&cloud, &cgi).await?;
    apply(&cloud, &deployment).await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probed"},
            "spec": {"selector": {"app": "probed"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    apply(
        &cloud,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await?;
    apply(&cloud, &manual_slice(&[true, true, true])).await?;
    eventually(
        "3 ready probed endpoints",
        Duration::from_secs(120),
        || async { Ok((ready_endpoints(&cloud, "probed").await?.len() == 3).then_some(())) },
    )
    .await?;
    let pods = pod_ips(&cloud, "probed").await?;
    let (_, victim) = pods.first().cloned().context("a web pod")?;
    let victim = victim.to_string();
    until_routed(&table, "probed", &victim, 8080, true, Instant::now()).await?;
    until_routed(&table, "manual", "10.250.0.10", 8080, true, Instant::now()).await?;

    // Via the cloud: flip endpoint 0's readiness in the slice, through the API.
    let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/manual-1";
    let (mut out_ms, mut in_ms) = (Vec::new(), Vec::new());
    for i in 0..2 * repeats {
        let ready = i % 2 == 1;
        let current = cloud.get(path).await?.context("the manual slice")?;
        let mut next = manual_slice(&[ready, true, true]);
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        let (code, v) = cloud.api("PUT", path, Some(next)).await?;
        anyhow::ensure!(code == 200, "PUT slice: {code} {v}");
        let t = until_routed(&table, "manual", "10.250.0.10", 8080, ready, Instant::now()).await?;
        if ready {
            in_ms.push(t);
        } else {
            out_ms.push(t);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Local, with no cloud: the prober's verdict is all there is.
    cloud.kill9();
    let (mut local_out, mut local_in) = (Vec::new(), Vec::new());
    let (mut probe_out, mut probe_in) = (Vec::new(), Vec::new());
    let addr = format!("{victim}:8080");
    for i in 0..repeats {
        for (cgi, ready) in [("/cgi-bin/fail", false), ("/cgi-bin/heal", true)] {
            // Land anywhere in the probe period, not in phase with it.
            tokio::time::sleep(Duration::from_millis(137 * i as u64 % 1000)).await;
            let (t0, t0_us) = (Instant::now(), now_us());
            get(&addr, cgi).await?;
            let ms = until_routed(&table, "probed", &victim, 8080, ready, t0).await?;
            let changed_us = t0_us + (ms * 1e3) as u64;
            let probe_us = first_probe(&addr, t0_us, ready).await?;
            let after_probe = changed_us.saturating_sub(probe_us) as f64 / 1e3;
            if ready {
                local_in.push(ms);
                probe_in.push(after_probe);
            } else {
                local_out.push(ms);
                probe_out.push(after_probe);
            }
        }
    }

    println!("| readiness change → routing change | repeats | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    row(
        "via the cloud: endpoint not ready (API write → out of the table)",
        &out_ms,
    );
    row(
        "via the cloud: endpoint ready again (API write → in the table)",
        &in_ms,
    );
    row("local, cloud killed: readiness lost → out of the table (includes the wait for the next probe, period 1 s)", &local_out);
    row(
        "local, cloud killed: the first failing probe → out of the table",
        &probe_out,
    );
    row(
        "local, cloud killed: readiness back → in the table (includes the wait for the next probe)",
        &local_in,
    );
    row(
        "local, cloud killed: the first passing probe → in the table",
        &probe_in,
    );
    drop(edge);
    Ok(())
}
