use super::*;
use protocol::service::{ClusterNetwork, EdgeEndpointSlice, Endpoint, EndpointPort};

fn net(node: &str) -> ClusterNetwork {
    ClusterNetwork {
        node: node.into(),
        pod_cidr: Some("10.244.0.0/24".into()),
        service_cidr: "10.96.0.0/16".into(),
        cluster_dns: "10.96.0.10".parse().unwrap(),
        cluster_domain: "cluster.local".into(),
    }
}

fn svc(name: &str, vip: &str, ports: Vec<ServicePort>) -> EdgeService {
    EdgeService {
        namespace: "default".into(),
        name: name.into(),
        kind: ServiceKind::ClusterIp(vec![vip.parse().unwrap()]),
        ports,
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    }
}

fn sport(name: &str, protocol: L4Protocol, port: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol,
        port,
        node_port,
    }
}

fn ep(ip: &str, node: &str, pod: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.parse().unwrap()],
        ready: true,
        serving: true,
        terminating: false,
        node: Some(node.into()),
        pod: Some(pod.into()),
        hostname: None,
    }
}

fn slice(
    service: &str,
    name: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EdgeEndpointSlice {
    EdgeEndpointSlice {
        namespace: "default".into(),
        name: name.into(),
        service: service.into(),
        address_type: AddressType::Ipv4,
        ports,
        endpoints,
    }
}

fn eport(name: &str, protocol: L4Protocol, port: u16) -> EndpointPort {
    EndpointPort {
        name: name.into(),
        protocol,
        port,
    }
}

fn view(services: Vec<EdgeService>, slices: Vec<EdgeEndpointSlice>) -> ServiceView {
    ServiceView {
        network: Some(net("n1")),
        services: services
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s))
            .collect(),
        slices: slices
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s))
            .collect(),
        local_ready: Default::default(),
        ..Default::default()
    }
}

fn node() -> NodeAddrs {
    NodeAddrs {
        ipv4: vec!["192.0.2.10".parse().unwrap()],
    }
}

fn render(v: &ServiceView) -> (Ruleset, String) {
    let rs = ruleset(v, &node(), &RulesetConfig::default());
    let text = rs.render();
    (rs, text)
}

fn web() -> (EdgeService, EdgeEndpointSlice) {
    (
        svc(
            "web",
            "10.96.0.20",
            vec![sport("http", L4Protocol::Tcp, 80, Some(30080))],
        ),
        slice(
            "web",
            "web-abc",
            vec![eport("http", L4Protocol::Tcp, 8080)],
            vec![
                ep("10.244.0.5", "n1", "web-1"),
                ep("10.244.1.6", "n2", "web-2"),
            ],
        ),
    )
}

#[test]
fn a_cluster_ip_balances_over_its_ready_endpoints_with_numgen() {
    let (s, sl) = web();
    let (rs, text) = render(&view(vec![s], vec![sl]));
    assert!(
        text.contains("10.96.0.20 . tcp . 80 : goto svc-default/web/tcp/http"),
        "{text}"
    );
    assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/http__10.244.0.5/8080, 1 : goto ep-default/web/tcp/http__10.244.1.6/8080 }"), "{text}");
    assert!(
        text.contains("meta l4proto tcp dnat to 10.244.0.5:8080"),
        "{text}"
    );
    assert!(
        text.contains("ip saddr 10.244.0.5 jump mark-for-masquerade"),
        "hairpin: {text}"
    );
    assert!(
        text.contains("tcp . 30080 : goto ext-default/web/tcp/http"),
        "{text}"
    );
    assert!(
        text.contains("set node-ips { type ipv4_addr; elements = { 192.0.2.10 } }"),
        "{text}"
    );
    assert_eq!(rs.routed_ports, 1);
    assert!(rs.skipped.is_empty(), "{:?}", rs.skipped);
}

#[test]
fn endpoint_ports_are_matched_to_service_ports_by_name() {
    let s = svc(
        "two",
        "10.96.0.30",
        vec![
            sport("http", L4Protocol::Tcp, 80, None),
            sport("dns", L4Protocol::Udp, 53, None),
        ],
    );
    let sl = slice(
        "two",
        "two-x",
        vec![
            eport("dns", L4Protocol::Udp, 5353),
            eport("http", L4Protocol::Tcp, 8080),
        ],
        vec![ep("10.244.0.5", "n1", "p")],
    );
    let (rs, text) = render(&view(vec![s], vec![sl]));
    assert!(
        text.contains("meta l4proto udp dnat to 10.244.0.5:5353"),
        "{text}"
    );
    assert!(
        text.contains("meta l4proto tcp dnat to 10.244.0.5:8080"),
        "{text}"
    );
    assert!(!text.contains("10.244.0.5:53 "), "{text}");
    let front = UdpFront::ClusterIp("10.96.0.30".parse().unwrap(), 53);
    assert_eq!(rs.udp[&front].len(), 1);
}

#[test]
fn no_ready_endpoint_rejects_and_a_terminating_serving_one_is_the_fallback() {
    let (s, mut sl) = web();
    for e in &mut sl.endpoints {
        e.ready = false;
        e.serving = false;
    }
    let (_, text) = render(&view(vec![s.clone()], vec![sl.clone()]));
    assert!(
        text.contains("10.96.0.20 . tcp . 80 : goto reject-chain"),
        "{text}"
    );
    assert!(text.contains("tcp . 30080 : goto reject-chain"), "{text}");
    assert!(!text.contains("goto svc-"), "{text}");
    assert!(
        text.contains("meta l4proto tcp reject with tcp reset"),
        "{text}"
    );

    // One of them terminating but still serving: used, since no endpoint is ready.
    sl.endpoints[1].terminating = true;
    sl.endpoints[1].serving = true;
    let (_, text) = render(&view(vec![s.clone()], vec![sl.clone()]));
    assert!(
        text.contains(
            "numgen random mod 1 vmap { 0 : goto ep-default/web/tcp/http__10.244.1.6/8080 }"
        ),
        "{text}"
    );

    // Once a ready one exists, the terminating one is not used.
    sl.endpoints[0].ready = true;
    sl.endpoints[0].serving = true;
    let (_, text) = render(&view(vec![s], vec![sl]));
    assert!(
        text.contains(
            "numgen random mod 1 vmap { 0 : goto ep-default/web/tcp/http__10.244.0.5/8080 }"
        ),
        "{text}"
    );
}

#[test]
fn the_nodes_own_readiness_overrides_the_cloud_for_local_endpoints_only() {
    let (s, sl) = web();
    let mut v = view(vec![s], vec![sl]);
    v.local_ready
        .insert(("default".into(), "web-1".into()), false);
    // web-2 is on n2: a local_ready entry for it must not count.
    v.local_ready
        .insert(("default".into(), "web-2".into()), false);
    let (_, text) = render(&v);
    assert!(
        text.contains(
            "numgen random mod 1 vmap { 0 : goto ep-default/web/tcp/http__10.244.1.6/8080 }"
        ),
        "{text}"
    );
}

#[test]
fn traffic_policies_local_pick_only_this_nodes_endpoints() {
    let (mut s, sl) = web();
    s.internal_traffic_local = true;
    let (_, text) = render(&view(vec![s.clone()], vec![sl.clone()]));
    let svc_chain = text
        .split("chain svc-default/web/tcp/http {")
        .nth(1)
        .unwrap();
    let svc_chain = &svc_chain[..svc_chain.find('}').unwrap()];
    assert!(
        svc_chain.contains("mod 1") && svc_chain.contains("10.244.0.5"),
        "{svc_chain}"
    );
    // Node ports are external traffic: still both endpoints, masqueraded.
    let ext = text
        .split("chain ext-default/web/tcp/http {")
        .nth(1)
        .unwrap();
    assert!(
        ext.contains("jump mark-for-masquerade") && ext.contains("mod 2"),
        "{ext}"
    );

    s.internal_traffic_local = false;
    s.external_traffic_local = true;
    let (_, text) = render(&view(vec![s.clone()], vec![sl.clone()]));
    let ext = text
        .split("chain ext-default/web/tcp/http {")
        .nth(1)
        .unwrap();
    let ext = &ext[..ext.find("}\n").unwrap()];
    assert!(
        !ext.contains("mark-for-masquerade"),
        "Local keeps the client address: {ext}"
    );
    assert!(ext.contains("mod 1") && ext.contains("10.244.0.5"), "{ext}");

    // A node with no local endpoint refuses node-port traffic under Local.
    let mut other = view(vec![s], vec![sl]);
    other.network = Some(net("n3"));
    let (_, text) = render(&other);
    assert!(text.contains("tcp . 30080 : goto reject-chain"), "{text}");
    assert!(text.contains("10.96.0.20 . tcp . 80 : goto svc-"), "{text}");
}

#[test]
fn client_ip_affinity_uses_bounded_dynamic_sets_with_the_timeout() {
    let (mut s, sl) = web();
    s.client_ip_affinity_secs = Some(10800);
    let cfg = RulesetConfig {
        table: "t".into(),
        affinity_set_size: 1000,
    };
    let text = ruleset(&view(vec![s], vec![sl]), &node(), &cfg).render();
    assert!(text.contains("set aff-10800-default/web/tcp/http__10.244.0.5/8080 { type ipv4_addr; flags dynamic,timeout; timeout 10800s; size 1000; }"), "{text}");
    assert!(text.contains("ip saddr @aff-10800-default/web/tcp/http__10.244.0.5/8080 goto ep-default/web/tcp/http__10.244.0.5/8080"), "{text}");
    assert!(
        text.contains("update @aff-10800-default/web/tcp/http__10.244.1.6/8080 { ip saddr }"),
        "{text}"
    );
}

#[test]
fn a_service_holding_the_cluster_dns_address_is_never_translated() {
    let (web, web_slice) = web();
    let dns = svc(
        "kube-dns",
        "10.96.0.10",
        vec![sport("dns", L4Protocol::Udp, 53, None)],
    );
    let dns_slice = slice(
        "kube-dns",
        "kube-dns-1",
        vec![eport("dns", L4Protocol::Udp, 53)],
        vec![ep("10.244.0.53", "n1", "coredns")],
    );
    let (rs, text) = render(&view(vec![web, dns], vec![web_slice, dns_slice]));
    assert!(!text.contains("10.96.0.10"), "{text}");
    assert!(!text.contains("10.244.0.53"), "{text}");
    assert!(text.contains("10.96.0.20"), "the others route: {text}");
    assert_eq!(rs.skipped.len(), 1, "{:?}", rs.skipped);
    assert!(rs.skipped[0].reason.contains("cluster DNS address"));
}

#[test]
fn odd_endpoints_are_skipped_with_a_reason_and_the_rest_still_route() {
    let s = svc(
        "odd",
        "10.96.0.40",
        vec![
            sport("", L4Protocol::Tcp, 80, None),
            sport("s", L4Protocol::Sctp, 9, None),
        ],
    );
    let mut no_addr = ep("10.244.0.9", "n1", "a");
    no_addr.addresses.clear();
    let v6 = ep("fd00::1", "n1", "b");
    let good = slice(
        "odd",
        "odd-1",
        vec![
            eport("", L4Protocol::Tcp, 8080),
            eport("s", L4Protocol::Sctp, 9),
        ],
        vec![no_addr, v6, ep("10.244.0.7", "n1", "c")],
    );
    let zero = slice(
        "odd",
        "odd-2",
        vec![eport("", L4Protocol::Tcp, 0)],
        vec![ep("10.244.0.8", "n1", "d")],
    );
    let mut fqdn = slice(
        "odd",
        "odd-3",
        vec![eport("", L4Protocol::Tcp, 80)],
        vec![ep("10.244.0.10", "n1", "e")],
    );
    fqdn.address_type = AddressType::Fqdn;
    let mut v6svc = svc(
        "six",
        "10.96.0.41",
        vec![sport("", L4Protocol::Tcp, 80, None)],
    );
    v6svc.kind = ServiceKind::ClusterIp(vec!["fd00:96::1".parse().unwrap()]);
    let (rs, text) = render(&view(vec![s, v6svc], vec![good, zero, fqdn]));
    let reasons: Vec<String> = rs
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.object, s.reason))
        .collect();
    let all = reasons.join("\n");
    assert!(all.contains("has no address"), "{all}");
    assert!(all.contains("IPv6"), "{all}");
    assert!(all.contains("is 0"), "{all}");
    assert!(all.contains("FQDN"), "{all}");
    assert!(all.contains("SCTP"), "{all}");
    assert!(all.contains("default/six: only IPv6"), "{all}");
    assert!(
        text.contains(
            "numgen random mod 1 vmap { 0 : goto ep-default/odd/tcp/80__10.244.0.7/8080 }"
        ),
        "{text}"
    );
}

#[test]
fn a_thousand_endpoints_render_one_chain_each_and_a_thousand_way_numgen() {
    let mut eps = Vec::new();
    for i in 0..1000u32 {
        let ip = format!("10.{}.{}.{}", 240 + i / 65536, (i / 256) % 256, i % 256);
        let mut e = ep(&ip, "n2", &format!("p{i}"));
        if i % 256 == 0 {
            e.addresses = vec![format!("10.250.{}.1", i / 256).parse().unwrap()];
        }
        eps.push(e);
    }
    let slices: Vec<_> = eps
        .chunks(100)
        .enumerate()
        .map(|(i, c)| {
            slice(
                "big",
                &format!("big-{i}"),
                vec![eport("", L4Protocol::Tcp, 80)],
                c.to_vec(),
            )
        })
        .collect();
    let mut s = svc(
        "big",
        "10.96.0.50",
        vec![sport("", L4Protocol::Tcp, 80, Some(30050))],
    );
    s.client_ip_affinity_secs = Some(60);
    let (rs, text) = render(&view(vec![s], slices));
    assert!(
        text.contains("numgen random mod 1000 vmap {"),
        "no 1000-way balance"
    );
    assert_eq!(text.matches("dnat to").count(), 1000);
    assert_eq!(rs.chain_count(), 9 + 2 + 1000);
    assert!(rs.skipped.is_empty());
}

#[test]
fn rendering_is_deterministic_and_an_update_deletes_only_what_left() {
    let (s, sl) = web();
    let v1 = view(vec![s.clone()], vec![sl.clone()]);
    let (a, ta) = render(&v1);
    let (_, tb) = render(&v1);
    assert_eq!(ta, tb);
    let full = a.transaction(None);
    assert!(
        full.starts_with("add table ip skerry\ndelete table ip skerry\ntable ip skerry {"),
        "{full}"
    );

    let mut sl2 = sl;
    sl2.endpoints.truncate(1);
    let (b, _) = render(&view(vec![s], vec![sl2]));
    let upd = b.transaction(Some(&a));
    assert!(
        upd.contains("flush chain ip skerry svc-default/web/tcp/http\n"),
        "{upd}"
    );
    assert!(!upd.contains("flush table"), "{upd}");
    // What did not change is not sent again: the base chains, the cluster-IP map.
    assert!(!upd.contains("nat-prerouting"), "{upd}");
    assert!(!upd.contains("service-ips"), "{upd}");
    assert!(
        upd.contains("delete chain ip skerry ep-default/web/tcp/http__10.244.1.6/8080"),
        "{upd}"
    );
    assert!(!upd.contains("delete table"), "{upd}");
    assert!(
        !upd.contains("delete chain ip skerry ep-default/web/tcp/http__10.244.0.5/8080"),
        "{upd}"
    );
}
