//! Record building from a [`ServiceView`]: every rule of the module docs on plain values.

use super::records::{self, address_label, types_at, ClusterZone, TTL};
use crate::network::view::ServiceView;
use hickory_server::proto::rr::{LowerName, Name, RData, RecordType, RrKey};
use protocol::service::*;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn network() -> ClusterNetwork {
    ClusterNetwork {
        node: "edge-1".into(),
        pod_cidr: None,
        service_cidr: "10.96.0.0/12".into(),
        cluster_dns: ip("10.96.0.10"),
        cluster_domain: "cluster.local".into(),
    }
}

fn service(name: &str, kind: ServiceKind, ports: &[(&str, u16)]) -> EdgeService {
    EdgeService {
        namespace: "default".into(),
        name: name.into(),
        kind,
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort {
                name: n.to_string(),
                protocol: L4Protocol::Tcp,
                port: *p,
                node_port: None,
            })
            .collect(),
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    }
}

fn endpoint(addr: &str, ready: bool, host: Option<&str>, node: &str, pod: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready,
        serving: ready,
        terminating: false,
        node: Some(node.into()),
        pod: Some(pod.into()),
        hostname: host.map(String::from),
    }
}

fn slice(svc: &str, endpoints: Vec<Endpoint>) -> EdgeEndpointSlice {
    EdgeEndpointSlice {
        namespace: "default".into(),
        name: format!("{svc}-abc"),
        service: svc.into(),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: L4Protocol::Tcp,
            port: 8080,
        }],
        endpoints,
    }
}

/// `web` (cluster IP, ports http and an unnamed one is not possible with two, so `metrics`),
/// `db` (headless: db-0 ready here, db-1 ready remotely, an unnamed one not ready), `ext`
/// (ExternalName).
fn view() -> ServiceView {
    let mut v = ServiceView {
        network: Some(network()),
        ..ServiceView::default()
    };
    for s in [
        service(
            "web",
            ServiceKind::ClusterIp(vec![ip("10.96.0.20"), ip("fd00::20")]),
            &[("http", 80), ("metrics", 9090)],
        ),
        service("db", ServiceKind::Headless, &[("http", 8080)]),
        service("ext", ServiceKind::ExternalName("example.org".into()), &[]),
    ] {
        v.services.insert((s.namespace.clone(), s.name.clone()), s);
    }
    let s = slice(
        "db",
        vec![
            endpoint("10.88.0.5", true, Some("db-0"), "edge-1", "db-0"),
            endpoint("10.88.1.6", true, Some("db-1"), "edge-2", "db-1"),
            endpoint("10.88.0.7", false, None, "edge-1", "db-x"),
        ],
    );
    v.slices.insert((s.namespace.clone(), s.name.clone()), s);
    v
}

fn rdatas(zone: &ClusterZone, name: &str, rtype: RecordType) -> Vec<RData> {
    let key = RrKey::new(LowerName::new(&Name::from_ascii(name).unwrap()), rtype);
    zone.records
        .get(&key)
        .map(|set| {
            assert_eq!(set.ttl(), TTL, "{name} {rtype}");
            set.records_without_rrsigs()
                .map(|r| r.data.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn addresses(zone: &ClusterZone, name: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = rdatas(zone, name, RecordType::A)
        .into_iter()
        .chain(rdatas(zone, name, RecordType::AAAA))
        .filter_map(|d| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn srv_targets(zone: &ClusterZone, name: &str) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = rdatas(zone, name, RecordType::SRV)
        .into_iter()
        .filter_map(|d| match d {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn no_network_settings_no_zone() {
    let mut v = view();
    v.network = None;
    assert!(records::build(&v, 1).is_none());
}

#[test]
fn cluster_ip_services_answer_their_ips_and_srv_for_named_ports() {
    let zone = records::build(&view(), 7).unwrap();
    assert_eq!(zone.origin.to_ascii(), "cluster.local.");
    assert_eq!(
        addresses(&zone, "web.default.svc.cluster.local."),
        [ip("10.96.0.20"), ip("fd00::20")]
    );
    assert_eq!(
        srv_targets(&zone, "_http._tcp.web.default.svc.cluster.local."),
        [(80, "web.default.svc.cluster.local.".to_string())]
    );
    assert_eq!(
        srv_targets(&zone, "_metrics._tcp.web.default.svc.cluster.local."),
        [(9090, "web.default.svc.cluster.local.".to_string())]
    );
    // The zone's own records: SOA (serial, negative TTL 5), NS, the version TXT.
    match &rdatas(&zone, "cluster.local.", RecordType::SOA)[..] {
        [RData::SOA(soa)] => {
            assert_eq!(soa.serial, 7);
            assert_eq!(soa.minimum, TTL);
            assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
        }
        other => panic!("SOA: {other:?}"),
    }
    assert_eq!(
        addresses(&zone, "ns.dns.cluster.local."),
        [ip("10.96.0.10")]
    );
    assert_eq!(
        types_at(&zone, "dns-version.cluster.local."),
        [RecordType::TXT]
    );
}

#[test]
fn headless_services_answer_ready_endpoints_with_per_pod_names() {
    let zone = records::build(&view(), 1).unwrap();
    assert_eq!(
        addresses(&zone, "db.default.svc.cluster.local."),
        [ip("10.88.0.5"), ip("10.88.1.6")]
    );
    assert_eq!(
        addresses(&zone, "db-0.db.default.svc.cluster.local."),
        [ip("10.88.0.5")]
    );
    assert_eq!(
        srv_targets(&zone, "_http._tcp.db.default.svc.cluster.local."),
        [
            (8080, "db-0.db.default.svc.cluster.local.".to_string()),
            (8080, "db-1.db.default.svc.cluster.local.".to_string())
        ]
    );
    // The endpoint that is not ready is not published, not even under its address name.
    assert!(types_at(&zone, "10-88-0-7.db.default.svc.cluster.local.").is_empty());
}

#[test]
fn publish_not_ready_addresses_publishes_every_endpoint_under_its_address_name() {
    let mut v = view();
    v.services
        .get_mut(&("default".into(), "db".into()))
        .unwrap()
        .publish_not_ready = true;
    let zone = records::build(&v, 1).unwrap();
    assert_eq!(
        addresses(&zone, "db.default.svc.cluster.local.").len(),
        3,
        "all endpoints"
    );
    assert_eq!(
        addresses(&zone, "10-88-0-7.db.default.svc.cluster.local."),
        [ip("10.88.0.7")]
    );
    assert!(
        srv_targets(&zone, "_http._tcp.db.default.svc.cluster.local.")
            .contains(&(8080, "10-88-0-7.db.default.svc.cluster.local.".to_string()))
    );
}

#[test]
fn the_nodes_own_readiness_overrides_the_clouds() {
    let mut v = view();
    // db-0 runs here and its probe now fails; db-1 is on another node, so a local verdict
    // about a pod of that name is not taken.
    v.local_ready
        .insert(("default".into(), "db-0".into()), false);
    v.local_ready
        .insert(("default".into(), "db-1".into()), false);
    // db-x runs here and now passes, before the cloud has heard of it.
    v.local_ready
        .insert(("default".into(), "db-x".into()), true);
    let zone = records::build(&v, 1).unwrap();
    assert_eq!(
        addresses(&zone, "db.default.svc.cluster.local."),
        [ip("10.88.0.7"), ip("10.88.1.6")]
    );
    assert!(types_at(&zone, "db-0.db.default.svc.cluster.local.").is_empty());
}

#[test]
fn external_names_are_cnames_and_pods_have_address_names() {
    let zone = records::build(&view(), 1).unwrap();
    match &rdatas(&zone, "ext.default.svc.cluster.local.", RecordType::CNAME)[..] {
        [RData::CNAME(c)] => assert_eq!(c.0.to_ascii(), "example.org."),
        other => panic!("CNAME: {other:?}"),
    }
    assert_eq!(
        addresses(&zone, "10-88-1-6.default.pod.cluster.local."),
        [ip("10.88.1.6")]
    );
}

#[test]
fn odd_names_are_skipped_not_fatal() {
    let mut v = view();
    let mut bad = service("bad", ServiceKind::ExternalName("not a name..".into()), &[]);
    bad.name = "x".repeat(70); // longer than a DNS label may be
    v.services.insert(("default".into(), bad.name.clone()), bad);
    let zone = records::build(&v, 1).unwrap();
    assert_eq!(
        addresses(&zone, "web.default.svc.cluster.local.").len(),
        2,
        "the rest of the zone is built"
    );
}

#[test]
fn ipv6_address_labels_never_start_or_end_with_a_dash() {
    assert_eq!(address_label(ip("10.1.2.3")), "10-1-2-3");
    assert_eq!(address_label(ip("fd00::1")), "fd00-0-0-0-0-0-0-1");
    assert_eq!(address_label(ip("::1")), "0-0-0-0-0-0-0-1");
}
