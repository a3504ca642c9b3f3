//! Benchmark: what one Service change costs the hub and each node (issue #12). Every node
//! receives every Service and EndpointSlice, so one change fans out to every connected node;
//! this measures that fan-out with N real node sessions (mTLS QUIC, one [`SyncClient`] each,
//! all in this process) against one cloudcore. Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_service_fanout [NODES] [CHANGES] [ENDPOINTS]`
//!
//! Each change rewrites one object through the API: with ENDPOINTS = 0 a Service's port, else
//! an EndpointSlice of ENDPOINTS endpoints (one endpoint's readiness flips, the common case).
//! Per change: the time from the API's answer until each node has the batch (p50, p99, last),
//! the frame bytes each node receives (the sync frame, before QUIC and UDP headers), and
//! cloudcore's CPU time (utime + stime from /proc) spent for the whole fan-out, from which the
//! per-node cost and the figure at 10,000 nodes are extrapolated linearly. The bytes on the
//! edge link are the QUIC connections' UDP datagram bytes, both ways, from the write until the
//! acks are in (300 ms after the last node had it): the frame plus QUIC's headers,
//! encryption, acknowledgements, the edge's ack frame, and whatever keep-alive (1 s) fell in
//! that window.

use protocol::messages::{CloudMessage, EdgeObject, SyncBatch};
use serde_json::{json, Value};
use skerry_tests::*;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The mark a change leaves in the object, as a node sees it.
fn mark_of(batch: &SyncBatch) -> Option<u32> {
    batch.upserts.iter().find_map(|u| match &u.object {
        EdgeObject::Service(s) if s.name == "fan" => s.ports.first().map(|p| u32::from(p.port)),
        EdgeObject::EndpointSlice(s) if s.name == "fan-slice" => {
            Some(s.endpoints.iter().filter(|e| e.ready).count() as u32)
        }
        _ => None,
    })
}

fn slice(endpoints: usize, ready: usize) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|i| {
            json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 2)],
                   "conditions": {"ready": i < ready},
                   "nodeName": format!("fan-{}", i % 7),
                   "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("web-{i}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "fan-slice", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "fan"}},
           "addressType": "IPv4",
           "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
           "endpoints": eps})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes: usize = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    let changes: usize = std::env::args().nth(2).map_or(Ok(10), |a| a.parse())?;
    let endpoints: usize = std::env::args().nth(3).map_or(Ok(0), |a| a.parse())?;
    let cloud = Cloud::start(CloudOptions {
        idle_timeout_secs: Some(60),
        ..Default::default()
    })
    .await?;
    let pid = cloud
        .pid()
        .ok_or_else(|| anyhow::anyhow!("cloudcore has no pid"))?;
    let (code, v) = cloud
        .api(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fan"},
                "spec": {"ports": [{"port": 1000, "targetPort": 8080}]}}),
            ),
        )
        .await?;
    anyhow::ensure!(code == 201, "service: {code} {v}");
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    if endpoints > 0 {
        let (code, v) = cloud
            .api("POST", slices, Some(slice(endpoints, endpoints)))
            .await?;
        anyhow::ensure!(code == 201, "endpointslice: {code} {v}");
    }

    let joined = Instant::now();
    let (mark_tx, mark_rx) = watch::channel(0u32);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u32, Instant, usize)>();
    let mut dirs = Vec::new();
    let mut conns = Vec::new();
    for i in 0..nodes {
        let dir = private_temp_dir()?;
        let node = format!("fan-{i}");
        let (ok, out) = cloud.join_only(dir.path(), &node)?;
        anyhow::ensure!(ok, "join {node}: {out}");
        let mut client = SyncClient::connect_with(
            &cloud,
            dir.path(),
            &node,
            0,
            protocol::PROTOCOL_VERSION,
            Some(Duration::from_secs(1)),
        )
        .await?
        .map_err(|r| anyhow::anyhow!("{node} refused: {r}"))?;
        let snap = client.next_batch(Duration::from_secs(30)).await?;
        client.ack(snap.revision).await?;
        conns.push(client.connection());
        let (mut marks, done) = (mark_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            loop {
                let Ok(batch) = client.next_batch(Duration::from_secs(3600)).await else {
                    return;
                };
                let _ = client.ack(batch.revision).await;
                let bytes = protocol::codec::encode_frame(&CloudMessage::Sync(batch.clone()))
                    .map_or(0, |b| b.len());
                if let Some(m) = mark_of(&batch) {
                    if m == *marks.borrow_and_update() {
                        let _ = done.send((m, Instant::now(), bytes));
                    }
                }
            }
        });
        dirs.push(dir);
    }
    let join_s = joined.elapsed().as_secs_f64();

    let mut latencies = Vec::new();
    let mut lasts = Vec::new();
    let mut bytes = Vec::new();
    let mut cpu_per_change = Vec::new();
    let (mut wire_down, mut wire_up) = (Vec::new(), Vec::new());
    // UDP bytes (cloud to edge, edge to cloud) summed over every node's connection.
    let wire = |conns: &[quinn::Connection]| {
        conns.iter().fold((0u64, 0u64), |(rx, tx), c| {
            let s = c.stats();
            (rx + s.udp_rx.bytes, tx + s.udp_tx.bytes)
        })
    };
    for c in 0..changes {
        let mark = (c + 1) as u32;
        let cpu0 = cpu_seconds(pid);
        let wire0 = wire(&conns);
        let path;
        let body;
        if endpoints == 0 {
            path = "/api/v1/namespaces/default/services/fan".to_string();
            let mut svc = cloud
                .get(&path)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no service"))?;
            svc["spec"]["ports"][0]["port"] = json!(1000 + mark);
            // The mark a node sees is the port.
            mark_tx.send_replace(1000 + mark);
            body = svc;
        } else {
            path = format!("{slices}/fan-slice");
            let current = cloud
                .get(&path)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no slice"))?;
            // One endpoint's readiness flips: all but one ready, then all, and so on (the
            // slice starts all ready, so every write changes it, with one endpoint too).
            let ready = if c % 2 == 0 { endpoints - 1 } else { endpoints };
            mark_tx.send_replace(ready as u32);
            let mut next = slice(endpoints, ready);
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            body = next;
        }
        let (code, v) = cloud.api("PUT", &path, Some(body)).await?;
        anyhow::ensure!(code == 200, "change {c}: {code} {v}");
        let written = Instant::now();
        let mut got = 0;
        let mut last = 0.0;
        let deadline = written + Duration::from_secs(60);
        while got < nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((_, at, b))) = tokio::time::timeout(left, done_rx.recv()).await else {
                anyhow::bail!("change {c}: only {got} of {nodes} nodes got it within 60 s");
            };
            let ms = at.saturating_duration_since(written).as_secs_f64() * 1e3;
            latencies.push(ms);
            last = f64::max(last, ms);
            bytes.push(b as f64);
            got += 1;
        }
        lasts.push(last);
        // Let the acks land before reading the CPU: they are part of the change's cost.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cpu_per_change.push(cpu_seconds(pid) - cpu0);
        let wire1 = wire(&conns);
        wire_down.push((wire1.0 - wire0.0) as f64 / nodes as f64);
        wire_up.push((wire1.1 - wire0.1) as f64 / nodes as f64);
    }
    let what = if endpoints == 0 {
        "Service port change".to_string()
    } else {
        format!("EndpointSlice of {endpoints} endpoints, one readiness flip")
    };
    let cpu_ms = pct(&cpu_per_change, 0.5) * 1e3;
    println!("| change | nodes | delivery p50 ms | p99 ms | last node ms (median) | frame bytes per node | UDP bytes per node, cloud→edge / edge→cloud (median) | cloudcore CPU ms per change (median) | CPU µs per node | extrapolated CPU at 10,000 nodes |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {what} | {nodes} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} / {:.0} | {:.1} | {:.0} | {:.2} s |",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        pct(&lasts, 0.5),
        pct(&bytes, 0.5),
        pct(&wire_down, 0.5),
        pct(&wire_up, 0.5),
        cpu_ms,
        cpu_ms * 1e3 / nodes as f64,
        cpu_ms / nodes as f64 * 10_000.0 / 1e3,
    );
    eprintln!(
        "({nodes} nodes joined and synced in {join_s:.1} s; CPU per change: {cpu_per_change:?})"
    );
    Ok(())
}
