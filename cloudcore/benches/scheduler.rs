//! Scheduler throughput: pods bound per second with 1,000 nodes and 10,000 pending pods.
//!
//! Two figures per workload: the placement core alone (cache + filters + scores, no I/O), and
//! the whole scheduler against a real sled store in a temp dir, writing through the in-process
//! API as the server does (listing, `pods/binding` creates with uid and revision preconditions, `Scheduled` events, durable flushes). Three workloads: plain pods
//! (no inter-pod terms), pods in groups of 10 with required hostname anti-affinity against
//! their own group, and pods in groups of 100 with a zone topology spread constraint
//! (`maxSkew: 1`, `DoNotSchedule`). Prints a Markdown table.
//!
//! Run: `cargo bench -p cloudcore --bench scheduler` (optional args: nodes pods; with
//! `CORE_ONLY=1` in the environment only the placement core runs, for quick comparisons).

use cloudcore::scheduler::cache::{pod_key, Cache};
use cloudcore::scheduler::model::PodInfo;
use cloudcore::scheduler::Scheduler;
use cloudcore::store::{ObjectKey, SledStore, Store};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::time::Instant;

fn node(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("edge-{i:05}"), "labels": {"zone": format!("z{}", i % 10), "gen": (i % 4).to_string(),
                                                         "kubernetes.io/hostname": format!("edge-{i:05}")}},
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

/// Groups of 10 replicas, each replica refusing a node that runs another of its group.
fn anti_pod(i: usize) -> Value {
    let group = format!("g{}", i / 10);
    let mut p = pod(i);
    p["metadata"]["labels"] = json!({"app": group});
    p["metadata"]["ownerReferences"][0]["uid"] = json!(format!("rs-uid-{group}"));
    p["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": group}}, "topologyKey": "kubernetes.io/hostname"}]}});
    p
}

/// Groups of 100 replicas spread evenly over the zones.
fn spread_pod(i: usize) -> Value {
    let mut p = pod(i);
    p["spec"].as_object_mut().map(|s| s.remove("nodeSelector"));
    p["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": format!("a{}", i % 100)}}}]);
    p
}

/// A workload: its name, the pod it makes for each index, and whether to run it on the store.
type Workload = (&'static str, fn(usize) -> Value, bool);

/// The placement core's seconds and pods bound, and the seconds parsing the pods took.
fn core(nodes: usize, pods: usize, make: fn(usize) -> Value) -> (f64, usize, f64) {
    let mut cache = Cache::default();
    for i in 0..nodes {
        cache.set_node(i as u64 + 1, Some(&node(i)));
    }
    let objects: Vec<Value> = (0..pods).map(make).collect();
    let parse_start = Instant::now();
    let parsed: Vec<(ObjectKey, PodInfo)> = objects
        .iter()
        .map(|p| (pod_key(p), PodInfo::of(p)))
        .collect();
    let parse_secs = parse_start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut bound = 0;
    for (key, info) in &parsed {
        if let Ok(n) = cache.schedule(info) {
            cache.assume(key, &n, info);
            bound += 1;
        }
    }
    (start.elapsed().as_secs_f64(), bound, parse_secs)
}

async fn with_store(nodes: usize, pods: usize, make: fn(usize) -> Value) -> (f64, u64) {
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
            let p = make(i);
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
    // Through the API, as the server runs it: bindings are `pods/binding` creates.
    let api = cloudcore::api::ApiState::with_watch_history(
        store,
        Arc::new(String::new),
        cloudcore::api::history::DEFAULT_CAPACITY,
    );
    let mut s = Scheduler::new(cloudcore::api::client::Client::new(api));
    s.resync().await.expect("resync");
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
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("| scheduler ({nodes} nodes, {pods} pending pods) | pods bound | seconds | pods/s |");
    println!("|---|---:|---:|---:|");
    let workloads: [Workload; 3] = [
        ("plain", pod, true),
        ("hostname anti-affinity, groups of 10", anti_pod, true),
        ("zone spread constraint, groups of 100", spread_pod, false),
    ];
    for (name, make, full) in workloads {
        let (secs, bound, parse_secs) = core(nodes, pods, make);
        println!(
            "| {name}: placement core (cache, filters, scores; no I/O) | {bound} | {secs:.2} | {:.0} |",
            bound as f64 / secs
        );
        println!(
            "| {name}: parsing the pods (`PodInfo::of`) | {pods} | {parse_secs:.3} | {:.0} |",
            pods as f64 / parse_secs
        );
        if full && std::env::var_os("CORE_ONLY").is_none() {
            let (secs, bound) = rt.block_on(with_store(nodes, pods, make));
            println!(
                "| {name}: full scheduler on sled store (list, bind writes, events, flushes) | {bound} | {secs:.2} | {:.0} |",
                bound as f64 / secs
            );
        }
    }
}
