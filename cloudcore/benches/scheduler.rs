//! Scheduler throughput: pods bound per second with 1,000 nodes and 10,000 pending pods.
//!
//! Two figures: the placement core alone (cache + filters + scores, no I/O), and the whole
//! scheduler against a real sled store in a temp dir (listing, binding writes with revision
//! preconditions, durable flushes). Prints a Markdown table.
//!
//! Run: `cargo bench -p cloudcore --bench scheduler` (optional args: nodes pods).

use cloudcore::scheduler::cache::{pod_key, Cache};
use cloudcore::scheduler::model::PodInfo;
use cloudcore::scheduler::Scheduler;
use cloudcore::store::{ObjectKey, SledStore, Store};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::time::Instant;

fn node(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("edge-{i:05}"), "labels": {"zone": format!("z{}", i % 10), "gen": (i % 4).to_string()}},
        "spec": if i.is_multiple_of(50) { json!({"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}) } else { json!({}) },
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110", "skerry.io/gpio": "4"}}})
}

fn pod(i: usize) -> Value {
    // 100 owners of 100 replicas; a third select a zone, a tenth ask for a device.
    let mut spec = json!({"containers": [{"name": "c", "image": "x",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]});
    if i.is_multiple_of(3) {
        spec["nodeSelector"] = json!({"zone": format!("z{}", i % 10)});
    }
    if i % 10 == 1 {
        spec["containers"][0]["resources"]["requests"]["skerry.io/gpio"] = json!("1");
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i:06}"), "namespace": "default", "uid": format!("uid-{i}"),
                     "labels": {"app": format!("a{}", i % 100)},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs{}", i % 100),
                                          "uid": format!("rs-uid-{}", i % 100), "controller": true}]},
        "spec": spec, "status": {"phase": "Pending"}})
}

fn core(nodes: usize, pods: usize) -> (f64, usize) {
    let mut cache = Cache::default();
    for i in 0..nodes {
        cache.set_node(i as u64 + 1, Some(&node(i)));
    }
    let parsed: Vec<(ObjectKey, PodInfo)> = (0..pods)
        .map(|i| {
            let p = pod(i);
            (pod_key(&p), PodInfo::of(&p))
        })
        .collect();
    let start = Instant::now();
    let mut bound = 0;
    for (key, info) in &parsed {
        if let Ok(n) = cache.schedule(info) {
            cache.assume(key, &n, info);
            bound += 1;
        }
    }
    (start.elapsed().as_secs_f64(), bound)
}

async fn with_store(nodes: usize, pods: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(dir.path(), cloudcore::projection::shard).expect("open store"));
    for i in 0..nodes {
        let n = node(i);
        let key = ObjectKey::new("nodes", "", n["metadata"]["name"].as_str().unwrap_or(""));
        store.create(&key, n).await.expect("create node");
    }
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..pods {
        let store = store.clone();
        creates.spawn(async move {
            let p = pod(i);
            store.create(&pod_key(&p), p).await.map(|_| ())
        });
        if creates.len() >= 256 {
            if let Some(r) = creates.join_next().await {
                r.expect("task").expect("create pod");
            }
        }
    }
    while let Some(r) = creates.join_next().await {
        r.expect("task").expect("create pod");
    }
    let start = Instant::now();
    let mut s = Scheduler::new(store);
    s.resync().expect("resync");
    s.drain().await;
    (start.elapsed().as_secs_f64(), s.bound())
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(1000);
    let pods = args.get(1).copied().unwrap_or(10_000);
    let (core_secs, core_bound) = core(nodes, pods);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (store_secs, store_bound) = rt.block_on(with_store(nodes, pods));
    println!("| scheduler ({nodes} nodes, {pods} pending pods) | pods bound | seconds | pods/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| placement core (cache, filters, scores; no I/O) | {core_bound} | {core_secs:.2} | {:.0} |",
        core_bound as f64 / core_secs
    );
    println!(
        "| full scheduler on sled store (list, bind writes, flushes) | {store_bound} | {store_secs:.2} | {:.0} |",
        store_bound as f64 / store_secs
    );
}
