//! Controller runner throughput: 1,000 Deployments rolled out from nothing.
//!
//! Creates the Deployments (one replica each) through the in-process API on a real sled store
//! in a temp dir, then starts the Deployment and ReplicaSet controllers on the shared runner
//! and times until every Deployment reports its replica (its ReplicaSet exists and has created
//! its pod; no node runs pods here, so nothing else moves). The same run is made with one
//! worker per controller (how the runner worked before it had a worker pool: one reconcile at
//! a time) and with the server's five, side by side.
//!
//! Run: `cargo bench -p cloudcore --bench controllers` (optional argument: deployments).

use cloudcore::api::client::Client;
use cloudcore::api::ApiState;
use cloudcore::controllers::informer::Informers;
use cloudcore::controllers::runner::{self, Options};
use cloudcore::controllers::{deployment::DeploymentController, replicaset::ReplicaSetController};
use cloudcore::store::{SledStore, Store};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn deployment(i: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("web-{i:04}"), "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("web-{i:04}")}},
                 "template": {"metadata": {"labels": {"app": format!("web-{i:04}")}},
                              "spec": {"containers": [{"name": "web", "image": "skerry.local/busybox:1.35"}]}}}})
}

/// Seconds from starting the controllers until all `n` Deployments report their replica.
async fn rollout(n: usize, workers: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), cloudcore::projection::shard).expect("open store"));
    cloudcore::api::namespaces::ensure_builtin(store.as_ref())
        .await
        .expect("namespaces");
    let api = ApiState::with_watch_history(
        store.clone(),
        Arc::new(String::new),
        cloudcore::api::history::DEFAULT_CAPACITY,
    );
    let client = Client::new(api);
    for i in 0..n {
        client
            .create("apps/deployments", "default", deployment(i))
            .await
            .expect("create deployment");
    }
    let start = Instant::now();
    let informers = Informers::start(store.clone());
    let options = Options::resync(Duration::from_secs(3600)).with_concurrency(workers);
    let d = tokio::spawn(runner::run(
        Arc::new(DeploymentController::new(client.clone(), &informers)),
        store.subscribe(),
        options,
    ));
    let r = tokio::spawn(runner::run(
        Arc::new(ReplicaSetController::new(client.clone(), &informers)),
        store.subscribe(),
        options,
    ));
    loop {
        let (all, _) = store
            .list("apps/deployments", Some("default"))
            .await
            .expect("list");
        let done = all
            .iter()
            .filter(|d| d.value.pointer("/status/replicas").and_then(Value::as_i64) == Some(1))
            .count();
        if done == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    d.abort();
    r.abort();
    secs
}

fn main() {
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "| {n} Deployments, one replica each | workers per controller | seconds | Deployments/s |"
    );
    println!("|---|---:|---:|---:|");
    for workers in [1, 5] {
        let secs = rt.block_on(rollout(n, workers));
        println!(
            "| rollout from nothing (Deployment → ReplicaSet → pod) | {workers} | {secs:.2} | {:.0} |",
            n as f64 / secs
        );
    }
}
