//! The Service proxy on a real kernel: pods in network namespaces on a bridge in a "node"
//! namespace, the proxy's table applied there with the real `nft` (the host's tables are never
//! touched), real TCP and UDP from a pod, from the node and from an outside namespace.

use edgecore::network::proxy::{
    self, ruleset, Applier, NodeAddrs, ProxyConfig, RulesetConfig, Synced, Tools,
};
use edgecore::network::view::ServiceView;
use protocol::service::{
    AddressType, ClusterNetwork, EdgeEndpointSlice, EdgeService, Endpoint, EndpointPort,
    L4Protocol, ServiceKind, ServicePort,
};
use skerry_tests::podnet::{self, PodNet, NODE_IP, POD_PORT};
use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NODE_PORT: u16 = 30080;

static TABLES: AtomicU32 = AtomicU32::new(0);

fn unique_table() -> String {
    format!(
        "skt{}x{}",
        std::process::id(),
        TABLES.fetch_add(1, Ordering::SeqCst)
    )
}

fn cfg(table: &str) -> RulesetConfig {
    RulesetConfig {
        table: table.into(),
        affinity_set_size: 1024,
    }
}

fn tools(net: &PodNet) -> Tools {
    Tools {
        netns: Some(net.node.clone()),
        ..Tools::default()
    }
}

fn node_addrs() -> NodeAddrs {
    NodeAddrs {
        ipv4: vec![NODE_IP],
    }
}

fn service(protocol: L4Protocol) -> EdgeService {
    EdgeService {
        namespace: "default".into(),
        name: "web".into(),
        kind: ServiceKind::ClusterIp(vec![VIP.into()]),
        ports: vec![ServicePort {
            name: "p".into(),
            protocol,
            port: 80,
            node_port: Some(NODE_PORT),
        }],
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    }
}

/// Pod `i` is on node `n1` (this one) when `local(i)`, else on `n2`. Both are physically on
/// this node's bridge: the overlay that would carry remote pod traffic is not under test.
fn view(svc: EdgeService, net: &PodNet, local: impl Fn(usize) -> bool) -> ServiceView {
    let endpoints = net
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| Endpoint {
            addresses: vec![p.ip.into()],
            ready: true,
            serving: true,
            terminating: false,
            node: Some(if local(i) { "n1" } else { "n2" }.into()),
            pod: Some(p.name.clone()),
            hostname: None,
        })
        .collect();
    let protocol = svc.ports[0].protocol;
    let slice = EdgeEndpointSlice {
        namespace: "default".into(),
        name: "web-1".into(),
        service: "web".into(),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort {
            name: "p".into(),
            protocol,
            port: POD_PORT,
        }],
        endpoints,
    };
    ServiceView {
        network: Some(ClusterNetwork {
            node: "n1".into(),
            pod_cidr: Some("10.244.0.0/24".into()),
            service_cidr: "10.96.0.0/16".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }),
        services: [(("default".into(), "web".into()), svc)].into(),
        slices: [(("default".into(), "web-1".into()), slice)].into(),
        local_ready: Default::default(),
        ..Default::default()
    }
}

async fn apply(applier: &mut Applier, v: &ServiceView, table: &str) {
    let rs = ruleset(v, &node_addrs(), &cfg(table));
    applier.sync(rs).await.expect("nft accepts the ruleset");
}

fn vip() -> SocketAddr {
    SocketAddr::from((VIP, 80))
}

fn names(list: &[String]) -> BTreeSet<String> {
    list.iter().cloned().collect()
}

fn all_pods(net: &PodNet) -> BTreeSet<String> {
    net.pods.iter().map(|p| p.name.clone()).collect()
}

macro_rules! need_netns {
    () => {
        if !podnet::should_run()
            .expect("the Service proxy tests need root, iproute2, nft and conntrack under CI")
        {
            return;
        }
    };
}

#[tokio::test]
async fn a_cluster_ip_reaches_all_three_endpoints_from_a_pod_itself_included_and_from_the_node() {
    need_netns!();
    let net = PodNet::new(3).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    apply(
        &mut applier,
        &view(service(L4Protocol::Tcp), &net, |_| true),
        &table,
    )
    .await;

    // pod0 is an endpoint too: its connections that land on itself are the hairpin case.
    let from_pod = podnet::tcp_names(&net.pods[0].ns, vip(), 30).unwrap();
    assert_eq!(names(&from_pod), all_pods(&net), "from a pod: {from_pod:?}");
    let from_node = podnet::tcp_names(&net.node, vip(), 30).unwrap();
    assert_eq!(
        names(&from_node),
        all_pods(&net),
        "from the node: {from_node:?}"
    );

    applier.remove(&table).await.unwrap();
    assert!(
        net.nft(&["list", "table", "ip", &table]).is_err(),
        "the table is gone"
    );
}

#[tokio::test]
async fn udp_reaches_all_endpoints_and_a_gone_endpoints_conntrack_entries_are_flushed() {
    need_netns!();
    let net = PodNet::new(3).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    let v = view(service(L4Protocol::Udp), &net, |_| true);
    apply(&mut applier, &v, &table).await;

    // Each new socket (source port) is a new flow, balanced on its own.
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let s = podnet::udp_socket(&net.pods[0].ns, vip()).unwrap();
        seen.insert(podnet::udp_ask(&s).unwrap());
    }
    assert_eq!(seen, all_pods(&net));

    // One flow, pinned by conntrack to one endpoint; that endpoint leaves.
    let sock = podnet::udp_socket(&net.pods[0].ns, vip()).unwrap();
    let first = podnet::udp_ask(&sock).unwrap();
    let mut without = v.clone();
    let slice = without.slices.values_mut().next().unwrap();
    slice
        .endpoints
        .retain(|e| e.pod.as_deref() != Some(first.as_str()));
    let synced = applier
        .sync(ruleset(&without, &node_addrs(), &cfg(&table)))
        .await
        .unwrap();
    assert_eq!(
        synced,
        Synced::Applied {
            conntrack_failures: 0
        }
    );
    let next = podnet::udp_ask(&sock).unwrap();
    assert_ne!(
        next, first,
        "the same flow still reached the endpoint that left"
    );
    applier.remove(&table).await.unwrap();
}

#[tokio::test]
async fn a_node_port_answers_from_outside_and_from_the_node() {
    need_netns!();
    let net = PodNet::new(3).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    apply(
        &mut applier,
        &view(service(L4Protocol::Tcp), &net, |_| true),
        &table,
    )
    .await;
    let np = SocketAddr::from((NODE_IP, NODE_PORT));
    let outside = podnet::tcp_names(&net.outside, np, 30).unwrap();
    assert_eq!(names(&outside), all_pods(&net), "{outside:?}");
    let host = podnet::tcp_names(&net.node, np, 30).unwrap();
    assert_eq!(names(&host), all_pods(&net), "{host:?}");
    applier.remove(&table).await.unwrap();
}

#[tokio::test]
async fn a_service_with_no_ready_endpoint_refuses_at_once_tcp_and_udp() {
    need_netns!();
    let net = PodNet::new(2).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    for protocol in [L4Protocol::Tcp, L4Protocol::Udp] {
        let mut v = view(service(protocol), &net, |_| true);
        for e in &mut v.slices.values_mut().next().unwrap().endpoints {
            e.ready = false;
            e.serving = false;
        }
        apply(&mut applier, &v, &table).await;
        if protocol == L4Protocol::Tcp {
            for (ns, addr) in [
                (&net.pods[0].ns, vip()),
                (&net.node, vip()),
                (&net.outside, SocketAddr::from((NODE_IP, NODE_PORT))),
            ] {
                // The timeout is far longer than a refusal takes: a hang shows as TimedOut.
                let err = podnet::tcp_name(ns, addr, Duration::from_secs(5))
                    .unwrap()
                    .expect_err("a Service with no endpoint answered");
                assert_eq!(
                    err.kind(),
                    ErrorKind::ConnectionRefused,
                    "{ns} -> {addr}: {err}"
                );
            }
        } else {
            let s = podnet::udp_socket(&net.pods[0].ns, vip()).unwrap();
            let err = podnet::udp_ask(&s).expect_err("a UDP Service with no endpoint answered");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        }
    }
    applier.remove(&table).await.unwrap();
}

#[tokio::test]
async fn client_ip_affinity_sends_one_client_to_one_endpoint() {
    need_netns!();
    let net = PodNet::new(3).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    let mut svc = service(L4Protocol::Tcp);
    svc.client_ip_affinity_secs = Some(600);
    let mut v = view(svc, &net, |_| true);
    apply(&mut applier, &v, &table).await;
    let a = podnet::tcp_names(&net.pods[1].ns, vip(), 20).unwrap();
    assert_eq!(names(&a).len(), 1, "one client, one endpoint: {a:?}");
    let b = podnet::tcp_names(&net.node, vip(), 20).unwrap();
    assert_eq!(names(&b).len(), 1, "{b:?}");

    // Another Service appears: the update leaves this one's affinity sets and their members
    // alone (a reset would send the client wherever numgen says next).
    let chosen = a[0].clone();
    let ip = net.pods.iter().find(|p| p.name == chosen).unwrap().ip;
    let set = format!("aff-600-default/web/tcp/p__{ip}/{POD_PORT}");
    let client = net.pods[1].ip.to_string();
    let members = net.nft(&["list", "set", "ip", &table, &set]).unwrap();
    assert!(members.contains(&client), "{members}");
    let mut other = service(L4Protocol::Tcp);
    other.name = "other".into();
    other.kind = ServiceKind::ClusterIp(vec![Ipv4Addr::new(10, 96, 0, 21).into()]);
    other.ports[0].node_port = None;
    v.services.insert(("default".into(), "other".into()), other);
    apply(&mut applier, &v, &table).await;
    let members = net.nft(&["list", "set", "ip", &table, &set]).unwrap();
    assert!(
        members.contains(&client),
        "the update emptied the affinity set: {members}"
    );
    let again = podnet::tcp_names(&net.pods[1].ns, vip(), 10).unwrap();
    assert_eq!(names(&again), [chosen].into(), "{again:?}");

    // Someone deletes the table by hand: the next incremental apply fails, and the one after
    // it replaces the table whole.
    net.nft(&["delete", "table", "ip", &table]).unwrap();
    v.services
        .remove(&("default".to_string(), "other".to_string()));
    let err = applier
        .sync(ruleset(&v, &node_addrs(), &cfg(&table)))
        .await
        .expect_err("an incremental apply to a missing table");
    assert!(err.to_string().contains(&table), "{err}");
    apply(&mut applier, &v, &table).await;
    assert_eq!(
        podnet::tcp_names(&net.pods[1].ns, vip(), 3).unwrap().len(),
        3
    );
    applier.remove(&table).await.unwrap();
}

#[tokio::test]
async fn traffic_policies_local_route_only_to_this_nodes_endpoints() {
    need_netns!();
    let net = PodNet::new(3).unwrap();
    let table = unique_table();
    let mut applier = Applier::new(tools(&net));
    let np = SocketAddr::from((NODE_IP, NODE_PORT));
    let local_only: BTreeSet<String> = ["pod0".to_string()].into();

    let mut svc = service(L4Protocol::Tcp);
    svc.internal_traffic_local = true;
    apply(&mut applier, &view(svc, &net, |i| i == 0), &table).await;
    let from_pod = podnet::tcp_names(&net.pods[2].ns, vip(), 20).unwrap();
    assert_eq!(
        names(&from_pod),
        local_only,
        "internalTrafficPolicy Local: {from_pod:?}"
    );
    let outside = podnet::tcp_names(&net.outside, np, 30).unwrap();
    assert_eq!(
        names(&outside),
        all_pods(&net),
        "node ports are external traffic: {outside:?}"
    );

    let mut svc = service(L4Protocol::Tcp);
    svc.external_traffic_local = true;
    apply(&mut applier, &view(svc.clone(), &net, |i| i == 0), &table).await;
    let outside = podnet::tcp_names(&net.outside, np, 20).unwrap();
    assert_eq!(
        names(&outside),
        local_only,
        "externalTrafficPolicy Local: {outside:?}"
    );
    let from_pod = podnet::tcp_names(&net.pods[2].ns, vip(), 30).unwrap();
    assert_eq!(names(&from_pod), all_pods(&net), "{from_pod:?}");

    // A node with none of the endpoints refuses its node port under Local.
    apply(&mut applier, &view(svc, &net, |_| false), &table).await;
    let err = podnet::tcp_name(&net.outside, np, Duration::from_secs(5))
        .unwrap()
        .expect_err("a node without a local endpoint answered");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    applier.remove(&table).await.unwrap();
}

#[tokio::test]
async fn a_thousand_endpoints_are_one_valid_ruleset_the_kernel_accepts() {
    need_netns!();
    let net = PodNet::new(1).unwrap();
    let table = unique_table();
    let mut v = view(service(L4Protocol::Tcp), &net, |_| true);
    let slice = v.slices.values().next().unwrap().clone();
    v.slices.clear();
    for s in 0..10u8 {
        let mut sl = slice.clone();
        sl.name = format!("web-{s}");
        sl.endpoints = (0..100u8)
            .map(|i| Endpoint {
                addresses: vec![Ipv4Addr::new(10, 245, s, i + 1).into()],
                pod: Some(format!("p{s}-{i}")),
                ..slice.endpoints[0].clone()
            })
            .collect();
        v.slices.insert(("default".into(), sl.name.clone()), sl);
    }
    v.services
        .values_mut()
        .next()
        .unwrap()
        .client_ip_affinity_secs = Some(60);
    let mut applier = Applier::new(tools(&net));
    apply(&mut applier, &v, &table).await;
    let listed = net
        .nft(&["list", "chain", "ip", &table, "svc-default/web/tcp/p"])
        .unwrap();
    assert!(listed.contains("numgen random mod 1000"), "{listed}");
    // An update that drops one slice is applied incrementally and deletes its chains.
    v.slices
        .remove(&("default".to_string(), "web-9".to_string()));
    apply(&mut applier, &v, &table).await;
    let listed = net
        .nft(&["list", "chain", "ip", &table, "svc-default/web/tcp/p"])
        .unwrap();
    assert!(listed.contains("numgen random mod 900"), "{listed}");
    let chains = net.nft(&["list", "table", "ip", &table]).unwrap();
    assert!(
        !chains.contains("10.245.9."),
        "chains of the gone slice remain"
    );
    applier.remove(&table).await.unwrap();
}

/// The running proxy: follows the view, acts on the node's own readiness verdict (the cloud's
/// slice still says ready), and removes its table on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_failed_probe_takes_a_local_endpoint_out_of_routing() {
    need_netns!();
    let net = Arc::new(PodNet::new(3).unwrap());
    let table = unique_table();
    let v = view(service(L4Protocol::Tcp), &net, |_| true);
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(v.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = ProxyConfig {
        ruleset: cfg(&table),
        tools: tools(&net),
        node_addrs: Some(node_addrs()),
        resync_interval: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = tokio::spawn(proxy::run(config, rx, async {
        let _ = stop_rx.await;
    }));

    let ask = |net: Arc<PodNet>| async move {
        tokio::task::spawn_blocking(move || podnet::tcp_names(&net.pods[0].ns, vip(), 30))
            .await
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(n) = ask(net.clone()).await {
            if names(&n) == all_pods(&net) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never routed to all pods"
        );
    }

    let mut flipped = v.clone();
    flipped
        .local_ready
        .insert(("default".into(), "pod1".into()), false);
    tx.send(Arc::new(flipped)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = ask(net.clone()).await.unwrap();
        if !n.iter().any(|x| x == "pod1") {
            assert_eq!(names(&n).len(), 2, "{n:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod1 stayed in routing: {n:?}"
        );
    }

    // A table deleted by hand comes back whole at the next resync, pod1 still out.
    net.nft(&["delete", "table", "ip", &table]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(n) = ask(net.clone()).await {
            if names(&n).len() == 2 && !n.iter().any(|x| x == "pod1") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted table never came back"
        );
    }

    stop_tx.send(()).unwrap();
    proxy.await.unwrap();
    assert!(
        net.nft(&["list", "table", "ip", &table]).is_err(),
        "the table outlived shutdown"
    );
}
