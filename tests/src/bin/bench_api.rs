//! Benchmark: the API server with 10,000 pods stored (issue figure "API: create/get/list latency
//! and throughput with 10,000 pods stored (list all pods, list by label, watch fan-out to 100
//! watchers)"). Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --release -p cloudcore -p skerry-tests --bins && SKERRY_BIN_DIR=target/release target/release/bench_api [PODS] [WATCHERS] [UPDATES]`
//!
//! A real cloudcore (HTTPS, bearer token as the harness uses) with no edge nodes: the pods stay
//! unscheduled, and the scheduler marks each one `PodScheduled=False` and records a
//! `FailedScheduling` event, so every create costs the store three writes while the creates run.
//! Latencies are measured at the client, up to the last byte of the response body (the body
//! is not parsed inside the timed part).

use anyhow::{anyhow, Context};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use skerry_tests::*;
use std::time::{Duration, Instant};

const PODS: &str = "/api/v1/namespaces/default/pods";
/// Requests in flight while creating.
const CREATE_CONCURRENCY: usize = 16;
/// Values of the `group` label (1% selectivity) and the `tier` label (10%).
const GROUPS: usize = 100;
const TIERS: usize = 10;

/// An HTTP client as the harness's admin: trusts the cluster CA and sends its bearer token.
fn client(cloud: &Cloud) -> anyhow::Result<reqwest::Client> {
    Ok(cloud
        .admin_client_builder()?
        .timeout(Duration::from_secs(120))
        .build()?)
}

fn pod(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i:05}"), "labels": {
            "app": "bench", "group": format!("g{}", i % GROUPS), "tier": format!("t{}", i % TIERS)}},
        "spec": {"nodeSelector": {"skerry.io/bench": "no-such-node"},
                 "containers": [{"name": "app", "image": "nginx:1.25",
                                 "ports": [{"containerPort": 80}],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

/// Sends a request and reads the whole body; returns status, body and the elapsed time.
async fn timed(req: reqwest::RequestBuilder) -> anyhow::Result<(u16, impl AsRef<[u8]>, Duration)> {
    let t = Instant::now();
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    Ok((status, body, t.elapsed()))
}

struct Stats(Vec<f64>);

impl Stats {
    fn from(mut ms: Vec<f64>) -> Self {
        ms.sort_by(|a, b| a.total_cmp(b));
        Stats(ms)
    }
    fn pct(&self, q: f64) -> f64 {
        let n = self.0.len();
        self.0[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    }
    fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            self.pct(0.50),
            self.pct(0.99),
            self.0[self.0.len() - 1],
            self.0.len()
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `n` timed GETs of `path` one after the other; checks the item count when given.
async fn gets(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    accept: Option<&str>,
    expect_items: Option<usize>,
) -> anyhow::Result<(Stats, usize)> {
    let mut out = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let mut req = http.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        let (status, body, took) = timed(req).await?;
        anyhow::ensure!(status == 200, "GET {url}: {status}");
        if let Some(expected) = expect_items {
            let v: Value = serde_json::from_slice(body.as_ref())?;
            let got = v["items"]
                .as_array()
                .or_else(|| v["rows"].as_array())
                .map_or(0, Vec::len);
            anyhow::ensure!(
                got == expected,
                "GET {url}: {got} items, expected {expected}"
            );
        }
        bytes = body.as_ref().len();
        out.push(ms(took));
    }
    Ok((Stats::from(out), bytes))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pods: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let watchers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let updates: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let http = client(&cloud)?;
    let base = cloud.api_url();
    let pods_url = format!("{base}{PODS}");

    // Create, CREATE_CONCURRENCY in flight.
    let t0 = Instant::now();
    let create_ms: Vec<f64> = futures::stream::iter(0..pods)
        .map(|i| {
            let req = http.post(&pods_url).json(&pod(i));
            async move {
                let (status, body, took) = timed(req).await?;
                anyhow::ensure!(
                    status == 201,
                    "create p{i}: {status} {}",
                    String::from_utf8_lossy(body.as_ref())
                );
                Ok(ms(took))
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect()
        .await?;
    let create_secs = t0.elapsed().as_secs_f64();
    let create = Stats::from(create_ms);

    // Let the scheduler's writes for the last pods land, so the reads below run on a quiet
    // server: wait until every pod carries its PodScheduled condition.
    eventually(
        "every pod marked unschedulable",
        Duration::from_secs(300),
        || async {
            let (_, body, _) = timed(http.get(format!(
                "{pods_url}?fieldSelector=metadata.name%3Dp{:05}",
                pods - 1
            )))
            .await?;
            let v: Value = serde_json::from_slice(body.as_ref())?;
            let done = v["items"][0]["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "PodScheduled"));
            Ok(done.then_some(()))
        },
    )
    .await?;
    let cloud_rss = cloud.pid().and_then(rss_kib).unwrap_or(0);

    // Gets of random pods, one at a time.
    let mut get_ms = Vec::new();
    for k in 0..1000usize {
        let i = (k * 7919) % pods;
        let (status, _, took) = timed(http.get(format!("{pods_url}/p{i:05}"))).await?;
        anyhow::ensure!(status == 200, "get p{i}: {status}");
        get_ms.push(ms(took));
    }
    let get = Stats::from(get_ms);

    let (list_all, list_bytes) = gets(&http, &pods_url, 10, None, Some(pods)).await?;
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (list_table, table_bytes) = gets(&http, &pods_url, 10, Some(table), Some(pods)).await?;
    let (list_1, _) = gets(
        &http,
        &format!("{pods_url}?labelSelector=group%3Dg7"),
        20,
        None,
        Some(pods.div_ceil(GROUPS)),
    )
    .await?;
    let (list_10, _) = gets(
        &http,
        &format!("{pods_url}?labelSelector=tier%3Dt3"),
        20,
        None,
        Some(pods.div_ceil(TIERS)),
    )
    .await?;

    // Watch fan-out: `watchers` watches from the current resourceVersion; one pod is patched
    // `updates` times, each write waiting until every watcher has seen the previous one.
    let (_, body, _) =
        timed(http.get(format!("{pods_url}?limit=1&labelSelector=group%3Dnone"))).await?;
    let rv = serde_json::from_slice::<Value>(body.as_ref())?["metadata"]["resourceVersion"]
        .as_str()
        .context("list without resourceVersion")?
        .to_string();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let resp = http
            .get(format!("{pods_url}?watch=1&resourceVersion={rv}"))
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "watch: {}", resp.status());
        streams.push(resp);
    }
    let mut tasks = Vec::new();
    for mut resp in streams {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let now = Instant::now();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let seq = ev
                        .pointer("/object/metadata/annotations/bench~1seq")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<usize>().ok());
                    if let Some(seq) = seq {
                        if tx.send((seq, now)).is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    let target = format!("{pods_url}/p00000");
    let mut fanout_ms = Vec::with_capacity(updates);
    let mut write_ms = Vec::with_capacity(updates);
    for seq in 0..updates {
        let sent = Instant::now();
        let (status, body, took) = timed(
            http.patch(&target)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/merge-patch+json",
                )
                .body(
                    json!({"metadata": {"annotations": {"bench/seq": seq.to_string()}}})
                        .to_string(),
                ),
        )
        .await?;
        anyhow::ensure!(
            status == 200,
            "patch: {status} {}",
            String::from_utf8_lossy(body.as_ref())
        );
        write_ms.push(ms(took));
        let mut seen = 0;
        let mut last = sent;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen < watchers {
            let (s, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| {
                    anyhow!("update {seq}: only {seen} of {watchers} watchers saw it within 30 s")
                })?
                .ok_or_else(|| anyhow!("every watch ended"))?;
            if s == seq {
                seen += 1;
                last = last.max(at);
            }
        }
        fanout_ms.push(ms(last.duration_since(sent)));
    }
    for t in tasks {
        t.abort();
    }
    let fanout = Stats::from(fanout_ms);
    let write = Stats::from(write_ms);

    println!("| figure ({pods} pods stored, no edges) | p50 | p99 | max | samples |");
    println!("|---|---|---|---|---|");
    println!(
        "{}",
        create.row(&format!("create ({CREATE_CONCURRENCY} in flight)"))
    );
    println!("{}", get.row("get one pod"));
    println!(
        "{}",
        list_all.row(&format!(
            "list all {pods} pods (JSON, {:.1} MiB)",
            list_bytes as f64 / 1048576.0
        ))
    );
    println!(
        "{}",
        list_table.row(&format!(
            "list all {pods} pods as a Table (kubectl get, {:.1} MiB)",
            table_bytes as f64 / 1048576.0
        ))
    );
    println!("{}", list_1.row("list by label, 1% match"));
    println!("{}", list_10.row("list by label, 10% match"));
    println!("{}", write.row("patch one pod (while watched)"));
    println!(
        "{}",
        fanout.row(&format!("patch sent → seen by all {watchers} watchers"))
    );
    println!();
    println!(
        "create throughput: {:.0} pods/s ({pods} pods in {create_secs:.1} s); cloudcore RSS with {pods} pods: {:.1} MiB",
        pods as f64 / create_secs,
        cloud_rss as f64 / 1024.0
    );
    Ok(())
}
