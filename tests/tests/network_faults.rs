//! The fault suite (issue #11): real cloudcore and edgecores, each in a network namespace of
//! its own on a private bridge, with real faults in between: silent drops on the receiver's
//! `INPUT` chain (partitions, one-way cuts, flapping), random loss, and a long round trip
//! through a userspace relay; and kill -9 of either daemon at chosen moments.
//!
//! Every scenario ends with the same invariants, checked against the API and the nodes' own
//! processes: every desired pod runs exactly once, on its node, and says so in the API; no pod
//! is lost or duplicated, none deleted lives on; no pod that was healthy before the fault was
//! restarted. Each prints its figures (heal -> node Ready, heal -> converged, restarts, bytes
//! sent); the figures are never asserted (they go to `bench_partition_heal`).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use skerry_tests::netns::relay::{Impairment, Relay};
use skerry_tests::netns::{Host, Net};
use skerry_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(90);
/// How long a silent node stays Ready here: short, so that a partition shows on the node.
const GRACE_SECS: u64 = 8;

/// A cloud and its edges on a test network. Fields drop in order: edges (and their pods)
/// first, then the cloud, then the network (namespaces go once nothing runs in them).
struct Lab {
    edges: Vec<Edge>,
    relays: Vec<Relay>,
    cloud: Cloud,
    edge_hosts: Vec<Host>,
    cloud_host: Host,
    net: Net,
}

impl Lab {
    /// `None` when the tools are missing outside CI (the reason is printed).
    async fn start(edges: usize) -> Result<Option<Lab>> {
        Self::start_with(edges, None).await
    }

    /// With `relay`, the edges reach the hub (UDP) and the broker (TCP) only through relays
    /// on the test process's side of the network that impair the traffic so.
    async fn start_with(edges: usize, relay: Option<Impairment>) -> Result<Option<Lab>> {
        if !netns::should_run()? {
            return Ok(None);
        }
        let net = Net::new()?;
        let (cloud_host, cloud) = Cloud::start_on(
            &net,
            CloudOptions {
                node_monitor_grace_period_secs: Some(GRACE_SECS),
                ..Default::default()
            },
        )
        .await?;
        let mut relays = Vec::new();
        let (mut server, mut mqtt) = (None, None);
        if let Some(imp) = relay {
            let front = std::net::SocketAddr::from((net.observer_ip(), 0));
            let hub = Relay::udp(None, front, cloud.hub_addr().parse()?, imp).await?;
            let broker = Relay::tcp(
                None,
                front,
                format!("{}:{}", cloud.ip, cloud.mqtt_port).parse()?,
                imp,
            )
            .await?;
            server = Some(hub.addr.to_string());
            mqtt = Some(format!("mqtts://{}", broker.addr));
            relays.push(hub);
            relays.push(broker);
        }
        let mut lab = Lab {
            relays,
            edges: Vec::new(),
            cloud,
            edge_hosts: Vec::new(),
            cloud_host,
            net,
        };
        for i in 0..edges {
            let host = lab.net.host(&format!("e{i}"))?;
            let edge = Edge::join_and_start_in(
                &lab.cloud,
                &format!("nf-e{i}"),
                host.place(),
                server.clone(),
                mqtt.clone(),
            )
            .await?;
            lab.edge_hosts.push(host);
            lab.edges.push(edge);
        }
        for e in &lab.edges {
            lab.cloud.wait_node_ready(&e.name, DEADLINE).await?;
        }
        Ok(Some(lab))
    }

    fn node(&self, i: usize) -> String {
        self.edges[i].name.clone()
    }

    /// Bytes sent by every host so far.
    fn bytes_sent(&self) -> Result<u64> {
        let mut total = self.cloud_host.counters()?.tx_bytes;
        for h in &self.edge_hosts {
            total += h.counters()?.tx_bytes;
        }
        Ok(total)
    }

    /// Waits until every edge's node is Ready.
    async fn all_ready(&self) -> Result<()> {
        for e in &self.edges {
            self.cloud.wait_node_ready(&e.name, DEADLINE).await?;
        }
        Ok(())
    }
}

/// A pod manifest whose `sleep` argument names it among the node's processes.
fn pod(name: &str, node: &str) -> Value {
    process_pod(name, node, &["sleep", "3600"])
}

/// What the test wants to exist at the end: pod name -> node, and what must be gone.
#[derive(Default)]
struct Desired {
    pods: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    /// Pods healthy before the fault: name -> container id (they must keep it, restart-free).
    healthy: BTreeMap<String, String>,
}

async fn create(lab: &Lab, want: &mut Desired, name: &str, node: &str) -> Result<()> {
    lab.cloud.create_pod(pod(name, node)).await?;
    want.pods.insert(name.to_string(), node.to_string());
    Ok(())
}

/// Creates `prefix{i}` for every `i` of `range` on `node`, all requests in flight at once.
async fn create_all(
    lab: &Lab,
    want: &mut Desired,
    prefix: &str,
    range: std::ops::Range<usize>,
    node: &str,
) -> Result<()> {
    let names: Vec<String> = range.map(|i| format!("{prefix}{i}")).collect();
    let creates = names.iter().map(|n| lab.cloud.create_pod(pod(n, node)));
    for r in futures::future::join_all(creates).await {
        r?;
    }
    for n in names {
        want.pods.insert(n, node.to_string());
    }
    Ok(())
}

async fn delete(lab: &Lab, want: &mut Desired, name: &str) -> Result<()> {
    lab.cloud.delete_pod(name).await?;
    want.pods.remove(name);
    want.healthy.remove(name);
    want.deleted.insert(name.to_string());
    Ok(())
}

/// An update the node must take in without touching the container: a label.
async fn relabel(lab: &Lab, name: &str, value: &str) -> Result<()> {
    let (ok, out) =
        lab.cloud
            .kubectl(&["label", "pod", name, &format!("rev={value}"), "--overwrite"])?;
    if !ok {
        bail!("kubectl label pod {name}: {out}");
    }
    Ok(())
}

/// Records the running pods as healthy (their container ids must survive the fault).
async fn mark_healthy(lab: &Lab, want: &mut Desired) -> Result<()> {
    for name in want.pods.keys() {
        let p = lab.cloud.wait_running(name, DEADLINE).await?;
        want.healthy.insert(name.clone(), container_id(&p));
    }
    Ok(())
}

/// The sleep processes of each node's pods, by pod uid (the process runtime runs a pod's
/// containers in its pod dir, named by uid).
fn running_by_uid(edge: &Edge) -> Vec<String> {
    edge.container_pids("sleep")
        .into_iter()
        .filter_map(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .collect()
}

/// `Ok(None)` until the invariants hold; `Ok(Some(pods))` when they do.
async fn converged(lab: &Lab, want: &Desired) -> Result<Option<Vec<Value>>> {
    let (code, list) = lab
        .cloud
        .api("GET", "/api/v1/namespaces/default/pods", None)
        .await?;
    if code != 200 {
        bail!("list pods: {code} {list}");
    }
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<String> = items
        .iter()
        .filter_map(|p| p.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    let wanted: BTreeSet<String> = want.pods.keys().cloned().collect();
    // Deleted pods are gone from the API (the node confirmed), no stranger appeared.
    if names != wanted {
        return Ok(None);
    }
    let mut uid_node = BTreeMap::new();
    for p in &items {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        if !pod_running(p) || p["spec"]["nodeName"] != want.pods[name].as_str() {
            return Ok(None);
        }
        uid_node.insert(
            p["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            want.pods[name].clone(),
        );
    }
    // Each pod runs exactly once, on its own node; no process of a deleted or unknown pod.
    for e in &lab.edges {
        let cwds = running_by_uid(e);
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for cwd in &cwds {
            let Some((uid, node)) = uid_node.iter().find(|(uid, _)| cwd.contains(uid.as_str()))
            else {
                return Ok(None);
            };
            if *node != e.name {
                return Ok(None);
            }
            *seen.entry(uid.as_str()).or_default() += 1;
        }
        let expected = uid_node.values().filter(|n| **n == e.name).count();
        if seen.len() != expected || seen.values().any(|n| *n != 1) {
            return Ok(None);
        }
    }
    Ok(Some(items))
}

/// Waits for the invariants, then checks the healthy pods were not restarted; returns the
/// total restart count.
async fn check_invariants(lab: &Lab, want: &Desired) -> Result<u64> {
    let items = eventually("the invariants", DEADLINE, || converged(lab, want))
        .await
        .with_context(|| {
            let edges: String = lab.edges.iter().map(Edge::log_tail).collect();
            format!("{}{edges}", lab.cloud.log_tail())
        })?;
    let mut total = 0;
    for p in &items {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        total += restarts(p);
        if let Some(id) = want.healthy.get(name) {
            assert_eq!(restarts(p), 0, "healthy pod {name} was restarted: {p}");
            assert_eq!(&container_id(p), id, "healthy pod {name} was replaced: {p}");
        }
    }
    Ok(total)
}

/// Heals, then measures heal -> every node Ready and heal -> converged, and prints the
/// figures with the bytes sent since `bytes_before`.
async fn heal_and_report(
    lab: &Lab,
    scenario: &str,
    want: &Desired,
    bytes_before: u64,
) -> Result<()> {
    lab.net.heal_all()?;
    let healed = Instant::now();
    lab.all_ready().await?;
    let ready = healed.elapsed();
    let restarts = check_invariants(lab, want).await?;
    let converged = healed.elapsed();
    let bytes = lab.bytes_sent()? - bytes_before;
    println!(
        "[{scenario}] heal->node Ready {:.2}s, heal->converged {:.2}s, restarts {restarts}, bytes sent {bytes}",
        ready.as_secs_f64(),
        converged.as_secs_f64()
    );
    Ok(())
}

/// Waits until `node` is no longer Ready: proof that the fault really cut it off.
async fn wait_not_ready(lab: &Lab, node: &str) -> Result<()> {
    lab.cloud
        .wait_for(
            &format!("node {node} not Ready"),
            &format!("/api/v1/nodes/{node}"),
            DEADLINE,
            |n| !node_ready(n),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60s_partition_with_creates_updates_and_deletes_converges_after_heal() -> Result<()> {
    let Some(lab) = Lab::start(3).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    for e in 0..3 {
        for i in 0..3 {
            create(&lab, &mut want, &format!("p{e}-{i}"), &lab.node(e)).await?;
        }
    }
    mark_healthy(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;

    // Edges 0 and 1 lose the cloud for 60 s; edge 2 keeps it, as a control.
    let started = Instant::now();
    lab.edge_hosts[0].partition_from(&lab.cloud_host)?;
    lab.edge_hosts[1].partition_from(&lab.cloud_host)?;
    for e in 0..2 {
        let node = lab.node(e);
        create(&lab, &mut want, &format!("p{e}-new0"), &node).await?;
        relabel(&lab, &format!("p{e}-0"), "2").await?;
        delete(&lab, &mut want, &format!("p{e}-1")).await?;
    }
    create(&lab, &mut want, "p2-new0", &lab.node(2)).await?;
    delete(&lab, &mut want, "p2-1").await?;
    wait_not_ready(&lab, &lab.node(0)).await?;
    wait_not_ready(&lab, &lab.node(1)).await?;
    // The control edge took its changes during the partition.
    lab.cloud.wait_running("p2-new0", DEADLINE).await?;
    for e in 0..2 {
        let node = lab.node(e);
        create(&lab, &mut want, &format!("p{e}-new1"), &node).await?;
        relabel(&lab, &format!("p{e}-0"), "3").await?;
        relabel(&lab, &format!("p{e}-2"), "3").await?;
        delete(&lab, &mut want, &format!("p{e}-new0")).await?;
    }
    let left = Duration::from_secs(60).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    assert!(
        lab.edge_hosts[0].dropped_packets()? > 0,
        "the partition dropped nothing"
    );
    heal_and_report(&lab, "partition 60s", &want, bytes_before).await
}

/// Three pods on each of `edges` edges, running and recorded as healthy.
async fn baseline(lab: &Lab, want: &mut Desired) -> Result<()> {
    for e in 0..lab.edges.len() {
        for i in 0..3 {
            create(lab, want, &format!("p{e}-{i}"), &lab.node(e)).await?;
        }
    }
    mark_healthy(lab, want).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_way_cuts_in_each_direction_converge_after_heal() -> Result<()> {
    let Some(lab) = Lab::start(2).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    // Edge 0 hears nothing from the cloud (its own INPUT drops), the cloud hears nothing from
    // edge 1 (the cloud's INPUT drops); both other directions still carry packets.
    lab.edge_hosts[0].cut_inbound_from(&lab.cloud_host)?;
    lab.edge_hosts[1].cut_outbound_to(&lab.cloud_host)?;
    let started = Instant::now();
    for e in 0..2 {
        let node = lab.node(e);
        create(&lab, &mut want, &format!("p{e}-new"), &node).await?;
        relabel(&lab, &format!("p{e}-0"), "2").await?;
        delete(&lab, &mut want, &format!("p{e}-1")).await?;
    }
    // Longer than both idle timeouts and the node grace period: the links die.
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(started.elapsed())).await;
    assert!(
        lab.edge_hosts[0].dropped_packets()? > 0,
        "cloud -> edge 0 was not cut"
    );
    assert!(
        lab.cloud_host.dropped_packets()? > 0,
        "edge 1 -> cloud was not cut"
    );
    heal_and_report(&lab, "one-way cuts", &want, bytes_before).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_flapping_2s_up_2s_down_for_a_minute_converges_after_heal() -> Result<()> {
    let Some(lab) = Lab::start(1).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    let node = lab.node(0);
    let mut dropped = 0;
    for cycle in 0..15 {
        lab.edge_hosts[0].partition_from(&lab.cloud_host)?;
        // A change in every other down phase, some in up phases: the link is never long
        // enough in either state for a sync to be sure to finish.
        match cycle % 3 {
            0 => create(&lab, &mut want, &format!("f{cycle}"), &node).await?,
            1 => relabel(&lab, "p0-0", &cycle.to_string()).await?,
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        dropped += lab.edge_hosts[0].dropped_packets()? + lab.cloud_host.dropped_packets()?;
        lab.net.heal_all()?;
        if cycle % 5 == 4 {
            let victim = want
                .pods
                .keys()
                .find(|n| n.starts_with('f'))
                .cloned()
                .context("a pod to delete")?;
            delete(&lab, &mut want, &victim).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(dropped > 0, "the down phases dropped nothing");
    heal_and_report(&lab, "flapping 2s/2s x 15", &want, bytes_before).await
}

/// A Deployment's manifest running `sleep` under the process runtime.
fn deployment(name: &str, replicas: u32) -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "main", "image": "busybox:local", "command": ["sleep", "3600"]}]
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_pod_rollout_under_30_percent_loss_converges() -> Result<()> {
    let Some(lab) = Lab::start(2).await? else {
        return Ok(());
    };
    let bytes_before = lab.bytes_sent()?;
    // 30% of the packets lost on arrival everywhere: each direction of each link.
    lab.cloud_host.loss(30.0)?;
    for h in &lab.edge_hosts {
        h.loss(30.0)?;
    }
    let (code, body) = lab
        .cloud
        .api(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some(deployment("roll", 20)),
        )
        .await?;
    if code != 201 {
        bail!("create deployment: {code} {body}");
    }
    // The rollout completes under loss: 20 pods, all running (on any node).
    let pods = eventually("20 rollout pods running under loss", DEADLINE, || async {
        let (_, list) = lab
            .cloud
            .api(
                "GET",
                "/api/v1/namespaces/default/pods?labelSelector=app%3Droll",
                None,
            )
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok((items.len() == 20 && items.iter().all(pod_running)).then_some(items))
    })
    .await
    .with_context(|| lab.cloud.log_tail())?;
    assert!(lab.cloud_host.dropped_packets()? > 0, "no loss happened");
    let mut want = Desired::default();
    for p in &pods {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        want.pods.insert(
            name.clone(),
            p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
        );
        want.healthy.insert(name, container_id(p));
    }
    heal_and_report(&lab, "30% loss rollout of 20", &want, bytes_before).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_300ms_rtt_with_1_percent_loss_through_the_relay_converges() -> Result<()> {
    let imp = Impairment {
        delay: Duration::from_millis(150),
        loss_percent: 1.0,
    };
    let Some(lab) = Lab::start_with(1, Some(imp)).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    let node = lab.node(0);
    for i in 0..5 {
        create(&lab, &mut want, &format!("slow{i}"), &node).await?;
    }
    relabel(&lab, "p0-0", "2").await?;
    delete(&lab, &mut want, "p0-1").await?;
    // Then a partition of 10 s on the long link, and its heal.
    for r in &lab.relays {
        r.set_cut(true);
    }
    create(&lab, &mut want, "slow-after", &node).await?;
    delete(&lab, &mut want, "slow0").await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for r in &lab.relays {
        r.set_cut(false);
    }
    heal_and_report(&lab, "300ms RTT 1% loss relay", &want, bytes_before).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cloudcore_killed_mid_sync_batch_converges_after_restart() -> Result<()> {
    let Some(mut lab) = Lab::start(1).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    let node = lab.node(0);
    // The hub is streaming 10 creates made at once to the node when cloudcore dies: kill -9
    // right after the last one is stored.
    create_all(&lab, &mut want, "b", 0..10, &node).await?;
    lab.cloud.kill9();
    let mid = running_by_uid(&lab.edges[0]).len();
    lab.cloud.launch().await?;
    for i in 10..20 {
        create(&lab, &mut want, &format!("b{i}"), &node).await?;
    }
    println!("[cloudcore kill -9] node ran {mid} of 13 pods when the cloud died");
    heal_and_report(&lab, "cloudcore kill -9 mid-batch", &want, bytes_before).await
}

#[tokio::test(flavor = "multi_thread")]
async fn edgecore_killed_while_applying_a_batch_converges_after_restart() -> Result<()> {
    let Some(mut lab) = Lab::start(1).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    let node = lab.node(0);
    // 20 creates at once: the node is receiving and starting them when edgecore dies, kill
    // -9 right after the last one is stored.
    create_all(&lab, &mut want, "a", 0..20, &node).await?;
    lab.edges[0].kill9();
    let mid = running_by_uid(&lab.edges[0]).len();
    println!("[edgecore kill -9] node ran {mid} of 23 pods when edgecore died");
    lab.edges[0].start()?;
    heal_and_report(&lab, "edgecore kill -9 mid-apply", &want, bytes_before).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_emptied_while_the_cloud_is_cut_keeps_the_pods_and_converges_after_heal(
) -> Result<()> {
    let Some(mut lab) = Lab::start(1).await? else {
        return Ok(());
    };
    let mut want = Desired::default();
    baseline(&lab, &mut want).await?;
    let bytes_before = lab.bytes_sent()?;
    let node = lab.node(0);
    lab.edge_hosts[0].partition_from(&lab.cloud_host)?;
    // Changes the node cannot hear of yet.
    create(&lab, &mut want, "c-during", &node).await?;
    delete(&lab, &mut want, "p0-1").await?;
    // edgecore dies and its cache is lost (the file emptied) while the cloud is cut off.
    lab.edges[0].kill9();
    let db = lab.edges[0].dir.path().join("cache").join("db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(0))
        .with_context(|| format!("emptying {}", db.display()))?;
    lab.edges[0].start()?;
    // Offline and with no desired state it can trust, the node keeps what runs: every pod of
    // before still runs exactly once (nothing is removed as an orphan).
    let held = eventually("edgecore holding the running pods", DEADLINE, || async {
        let log = std::fs::read_to_string(lab.edges[0].dir.path().join("edgecore.log"))?;
        Ok(log.contains("EDGE CACHE CORRUPT").then_some(()))
    })
    .await;
    held.with_context(|| lab.edges[0].log_tail())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running_by_uid(&lab.edges[0]).len(),
        3,
        "the three pods of before run on, once each{}",
        lab.edges[0].log_tail()
    );
    assert!(
        lab.edge_hosts[0].dropped_packets()? > 0,
        "the partition dropped nothing"
    );
    // After the heal the cloud's snapshot rebuilds the desired state: the deleted pod goes,
    // the new one runs, the others were never restarted.
    heal_and_report(&lab, "cache emptied while cut", &want, bytes_before).await
}
