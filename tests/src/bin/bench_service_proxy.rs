//! The Service proxy's figures, in network namespaces (tests/src/podnet.rs), same run, side by
//! side: from a pod to one other pod on the same node,
//! - *direct*: to the pod's own address;
//! - *nftables*: to the cluster IP, through edgecore's proxy table (DNAT in the kernel);
//! - *userspace*: to a tokio `copy_bidirectional` relay in the node namespace (the other design
//!   the issue names), which connects on to the pod.
//!
//! Connection setup is connect + the server's first byte (the relay's own upstream connect is
//! inside that, as a client would see it), CONNS connections per path, interleaved in rounds so
//! that drift on this 2-core machine hits all paths alike. Throughput is a MB-sized transfer to
//! the pod's sink, which answers the byte count, RUNS per path interleaved (median and best). Then the cost of one
//! apply: the table for SERVICES Services of three endpoints, and one Service of 1,000.
//!
//! Run as root: `cargo run --release -p skerry-tests --bin bench_service_proxy`
//! (env: CONNS=2000, MB=100, RUNS=7, SERVICES=300).

use anyhow::{bail, Context, Result};
use edgecore::network::proxy::{ruleset, Applier, NodeAddrs, RulesetConfig, Tools};
use edgecore::network::view::ServiceView;
use protocol::service::{
    AddressType, ClusterNetwork, EdgeEndpointSlice, EdgeService, Endpoint, EndpointPort,
    L4Protocol, ServiceKind, ServicePort,
};
use skerry_tests::measure::{pct, setup_once};
use skerry_tests::podnet::{self, PodNet, GATEWAY, NODE_IP, POD_PORT, SINK_PORT};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const RELAY_PORT: u16 = 18080;
const RELAY_SINK_PORT: u16 = 19000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: L4Protocol::Tcp,
        port,
        node_port: None,
    }
}

fn service(name: &str, vip: Ipv4Addr) -> EdgeService {
    EdgeService {
        namespace: "default".into(),
        name: name.into(),
        kind: ServiceKind::ClusterIp(vec![vip.into()]),
        ports: vec![port("p", 80), port("sink", 90)],
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    }
}

fn slice(service: &str, name: &str, ips: &[Ipv4Addr]) -> EdgeEndpointSlice {
    EdgeEndpointSlice {
        namespace: "default".into(),
        name: name.into(),
        service: service.into(),
        address_type: AddressType::Ipv4,
        ports: vec![
            EndpointPort {
                name: "p".into(),
                protocol: L4Protocol::Tcp,
                port: POD_PORT,
            },
            EndpointPort {
                name: "sink".into(),
                protocol: L4Protocol::Tcp,
                port: SINK_PORT,
            },
        ],
        endpoints: ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Endpoint {
                addresses: vec![(*ip).into()],
                ready: true,
                serving: true,
                terminating: false,
                node: Some("n1".into()),
                pod: Some(format!("{name}-{i}")),
                hostname: None,
            })
            .collect(),
    }
}

fn view(services: Vec<(EdgeService, Vec<EdgeEndpointSlice>)>) -> ServiceView {
    let mut v = ServiceView {
        network: Some(ClusterNetwork {
            node: "n1".into(),
            pod_cidr: Some("10.244.0.0/24".into()),
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }),
        ..ServiceView::default()
    };
    for (s, slices) in services {
        for sl in slices {
            v.slices.insert((sl.namespace.clone(), sl.name.clone()), sl);
        }
        v.services.insert((s.namespace.clone(), s.name.clone()), s);
    }
    v
}

/// A userspace L4 relay in the node namespace: one tokio runtime whose threads live there, so
/// its listening and upstream sockets are the node's.
fn start_relay(node_ns: &str, listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let path = format!("/run/netns/{node_ns}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::spawn(move || {
        let setup = || -> Result<tokio::runtime::Runtime> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?)
        };
        let rt = match setup() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok((mut down, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = down.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
    });
    ready_rx.recv().context("relay thread died")?
}

/// `mb` MB to a sink; MB/s.
fn transfer(addr: SocketAddr, mb: usize) -> Result<f64> {
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    for _ in 0..mb {
        c.write_all(&chunk)?;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    let secs = t.elapsed().as_secs_f64();
    let got: usize = answer.trim().parse().context("sink answer")?;
    if got != mb << 20 {
        bail!("the sink at {addr} got {got} bytes of {}", mb << 20);
    }
    Ok(mb as f64 * 1.048576 / secs)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if !podnet::should_run()? {
        bail!("bench_service_proxy needs root, iproute2, nft and conntrack");
    }
    let conns = env("CONNS", 2000);
    let mb = env("MB", 100);
    let runs = env("RUNS", 7);
    let net = PodNet::new(2)?;
    let table = format!("skbench{}", std::process::id());
    let cfg = RulesetConfig {
        table: table.clone(),
        ..RulesetConfig::default()
    };
    let tools = Tools {
        netns: Some(net.node.clone()),
        ..Tools::default()
    };
    let target = net.pods[1].ip;
    let node = NodeAddrs {
        ipv4: vec![NODE_IP],
    };
    let mut applier = Applier::new(tools.clone());
    let v = view(vec![(
        service("web", VIP),
        vec![slice("web", "web-1", &[target])],
    )]);
    applier.sync(ruleset(&v, &node, &cfg)).await?;
    start_relay(
        &net.node,
        SocketAddr::from((GATEWAY, RELAY_PORT)),
        SocketAddr::from((target, POD_PORT)),
    )?;
    start_relay(
        &net.node,
        SocketAddr::from((GATEWAY, RELAY_SINK_PORT)),
        SocketAddr::from((target, SINK_PORT)),
    )?;

    // A second address of the target pod that the client reaches through the node's IP stack
    // (its default route) with no NAT: it separates the cost of routing via the node from the
    // cost of the DNAT itself (the pod IP on the same bridge is switched, never routed).
    let routed = Ipv4Addr::new(10, 244, 1, 11);
    podnet::ns_exec(
        &net.pods[1].ns,
        "ip",
        &["addr", "add", &format!("{routed}/32"), "dev", "eth0"],
    )?;
    podnet::ns_exec(
        &net.node,
        "ip",
        &["route", "add", &format!("{routed}/32"), "dev", "br0"],
    )?;

    let paths: [(&str, SocketAddr, SocketAddr); 4] = [
        (
            "direct (pod IP, bridged)",
            (target, POD_PORT).into(),
            (target, SINK_PORT).into(),
        ),
        (
            "routed via the node, no NAT",
            (routed, POD_PORT).into(),
            (routed, SINK_PORT).into(),
        ),
        ("nftables (cluster IP)", (VIP, 80).into(), (VIP, 90).into()),
        (
            "userspace relay (tokio)",
            (GATEWAY, RELAY_PORT).into(),
            (GATEWAY, RELAY_SINK_PORT).into(),
        ),
    ];
    let client = net.pods[0].ns.clone();
    let (setup, tput) = podnet::in_ns(&client, move || -> Result<_> {
        // Warm up every path (ARP, conntrack, the relay's first accept).
        for (_, a, _) in &paths {
            for _ in 0..20 {
                setup_once(*a)?;
            }
        }
        let mut setup: Vec<Vec<f64>> = vec![Vec::with_capacity(conns); paths.len()];
        let rounds = 20;
        for _ in 0..rounds {
            for (i, (_, a, _)) in paths.iter().enumerate() {
                for _ in 0..conns / rounds {
                    setup[i].push(setup_once(*a)?);
                }
            }
        }
        let mut tput: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for _ in 0..runs {
            for (i, (_, _, s)) in paths.iter().enumerate() {
                tput[i].push(transfer(*s, mb)?);
            }
        }
        for t in &mut tput {
            t.sort_by(|a, b| a.total_cmp(b));
        }
        Ok((setup, tput))
    })??;

    println!("## Service proxy: pod to pod on one node ({conns} connections per path, {mb} MB x {runs} per path)\n");
    println!("| path | connect+first byte p50 | p99 | throughput median | best |");
    println!("| --- | --- | --- | --- | --- |");
    let mut p50s = Vec::new();
    let mut meds = Vec::new();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let mut s = setup[i].clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (pct(&s, 0.5), pct(&s, 0.99));
        p50s.push(p50);
        let med = pct(&tput[i], 0.5);
        meds.push(med);
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {med:.0} MB/s | {:.0} MB/s |",
            p50 * 1e3,
            p99 * 1e3,
            tput[i][tput[i].len() - 1]
        );
    }
    println!(
        "\nnftables vs direct: added p50 {:+.3} ms, median throughput {:.1}% of direct ({:.1}% of routed); userspace: added p50 {:+.3} ms, {:.1}% of direct\n",
        (p50s[2] - p50s[0]) * 1e3,
        meds[2] / meds[0] * 100.0,
        meds[2] / meds[1] * 100.0,
        (p50s[3] - p50s[0]) * 1e3,
        meds[3] / meds[0] * 100.0
    );

    // The cost of one apply, as run() pays it.
    println!("| table | chains | full apply | incremental apply (one endpoint changed) |");
    println!("| --- | --- | --- | --- |");
    let services = env("SERVICES", 300);
    let many: Vec<_> = (0..services)
        .map(|i| {
            let vip = Ipv4Addr::new(10, 97, (i / 250) as u8, (i % 250) as u8 + 1);
            let ips: Vec<Ipv4Addr> = (0..3)
                .map(|e| Ipv4Addr::new(10, 246, (i / 80) as u8, ((i % 80) * 3 + e) as u8 + 1))
                .collect();
            let name = format!("s{i}");
            (
                service(&name, vip),
                vec![slice(&name, &format!("{name}-a"), &ips)],
            )
        })
        .collect();
    let big_ips: Vec<Ipv4Addr> = (0..1000u32)
        .map(|i| Ipv4Addr::new(10, 247, (i / 200) as u8, (i % 200) as u8 + 1))
        .collect();
    let big = vec![(
        service("big", VIP),
        big_ips
            .chunks(100)
            .enumerate()
            .map(|(i, c)| slice("big", &format!("big-{i}"), c))
            .collect(),
    )];
    for (label, set) in [
        (format!("{services} Services x 3 endpoints"), many),
        ("1 Service x 1,000 endpoints".to_string(), big),
    ] {
        let mut applier = Applier::new(tools.clone());
        let mut v = view(set);
        let rs = ruleset(&v, &node, &cfg);
        let chains = rs.chain_count();
        let t = Instant::now();
        applier.sync(rs).await?;
        let full = t.elapsed();
        let first = v.slices.values_mut().next().context("a slice")?;
        first.endpoints.pop();
        let t = Instant::now();
        applier.sync(ruleset(&v, &node, &cfg)).await?;
        let incr = t.elapsed();
        println!(
            "| {label} | {chains} | {:.0} ms | {:.0} ms |",
            full.as_secs_f64() * 1e3,
            incr.as_secs_f64() * 1e3
        );
    }
    applier.remove(&table).await?;
    coalescing(&net, &cfg, &tools, &node).await
}

/// A burst of view changes against the running proxy: how many applies it cost, and how long
/// after the last change the table showed it.
async fn coalescing(
    net: &PodNet,
    cfg: &RulesetConfig,
    tools: &Tools,
    node: &NodeAddrs,
) -> Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let applied = || -> u64 {
        recorder
            .render()
            .lines()
            .find(|l| l.starts_with("skerry_edge_proxy_rules_applied_total"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    let changes = env("CHANGES", 100);
    let gap = Duration::from_millis(env("GAP_MS", 10) as u64);
    let base: Vec<_> = (0..100)
        .map(|i| {
            let vip = Ipv4Addr::new(10, 98, 0, i as u8 + 1);
            let ips: Vec<Ipv4Addr> = (0..3)
                .map(|e| Ipv4Addr::new(10, 248, i as u8, e + 1))
                .collect();
            let name = format!("c{i}");
            (
                service(&name, vip),
                vec![slice(&name, &format!("{name}-a"), &ips)],
            )
        })
        .collect();
    let mut v = view(base);
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(v.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = edgecore::network::proxy::ProxyConfig {
        ruleset: cfg.clone(),
        tools: tools.clone(),
        node_addrs: Some(node.clone()),
        ..Default::default()
    };
    let proxy = tokio::spawn(edgecore::network::proxy::run(config, rx, async {
        let _ = stop_rx.await;
    }));
    let wait_for = |needle: String| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let map = net
                .nft(&["list", "map", "ip", &cfg.table, "service-ips"])
                .unwrap_or_default();
            if map.contains(&needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the table never showed {needle}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    wait_for("10.98.0.100".into()).await?;
    let before = applied();
    for i in 0..changes {
        let slice = v.slices.values_mut().nth(i % 100).context("slice")?;
        if slice.endpoints.len() == 3 {
            slice.endpoints.pop();
        } else {
            let mut e = slice.endpoints[0].clone();
            e.addresses = vec![Ipv4Addr::new(10, 249, (i % 100) as u8, 9).into()];
            slice.endpoints.push(e);
        }
        if i + 1 == changes {
            let (s, sl) = (service("last", Ipv4Addr::new(10, 98, 1, 1)), slice_last());
            v.slices.insert((sl.namespace.clone(), sl.name.clone()), sl);
            v.services.insert((s.namespace.clone(), s.name.clone()), s);
        }
        tx.send(std::sync::Arc::new(v.clone()))?;
        tokio::time::sleep(gap).await;
    }
    let sent = Instant::now();
    wait_for("10.98.1.1".into()).await?;
    let live = sent.elapsed();
    // Let a trailing apply land before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applies = applied() - before;
    println!(
        "\nburst: {changes} view changes {} ms apart (100 Services) -> {applies} applies; the last change in the table {:.0} ms after it was sent",
        gap.as_millis(),
        live.as_secs_f64() * 1e3
    );
    let _ = stop_tx.send(());
    proxy.await?;
    Ok(())
}

fn slice_last() -> EdgeEndpointSlice {
    slice("last", "last-a", &[Ipv4Addr::new(10, 250, 0, 1)])
}
