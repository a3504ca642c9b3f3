//! The cluster DNS server over real sockets: started on 127.0.0.1:0, queried with hickory's
//! client over UDP and TCP, forwarding to a second, tiny hickory server started here (there is
//! no internet). One test (root, real `ip`) drives the dummy interface that carries the cluster
//! DNS address.

mod support;

use edgecore::network::dns::{iface, DnsConfig, DnsServer, Listen, Upstream};
use edgecore::network::view::ServiceView;
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::{DnsResponse, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use protocol::service::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::dns::upstream;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn network(dns: &str) -> ClusterNetwork {
    ClusterNetwork {
        node: "edge-1".into(),
        pod_cidr: None,
        service_cidr: "10.96.0.0/12".into(),
        cluster_dns: ip(dns),
        cluster_domain: "cluster.local".into(),
    }
}

fn service(n: &str, kind: ServiceKind) -> EdgeService {
    EdgeService {
        namespace: "default".into(),
        name: n.into(),
        kind,
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: L4Protocol::Tcp,
            port: 80,
            node_port: None,
        }],
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    }
}

fn endpoint(addr: &str, host: &str, node: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready: true,
        serving: true,
        terminating: false,
        node: Some(node.into()),
        pod: Some(host.into()),
        hostname: Some(host.into()),
    }
}

/// `web` (cluster IP 10.96.0.20), `db` (headless: db-0 on this node, db-1 elsewhere), `ext`
/// (ExternalName example.org).
fn view() -> ServiceView {
    let mut v = ServiceView {
        network: Some(network("10.96.0.10")),
        ..ServiceView::default()
    };
    for s in [
        service("web", ServiceKind::ClusterIp(vec![ip("10.96.0.20")])),
        service("db", ServiceKind::Headless),
        service("ext", ServiceKind::ExternalName("www.example.org".into())),
    ] {
        v.services.insert((s.namespace.clone(), s.name.clone()), s);
    }
    let slice = EdgeEndpointSlice {
        namespace: "default".into(),
        name: "db-1a2b".into(),
        service: "db".into(),
        address_type: AddressType::Ipv4,
        ports: vec![EndpointPort {
            name: "http".into(),
            protocol: L4Protocol::Tcp,
            port: 8080,
        }],
        endpoints: vec![
            endpoint("10.88.0.5", "db-0", "edge-1"),
            endpoint("10.88.1.6", "db-1", "edge-2"),
        ],
    };
    v.slices
        .insert((slice.namespace.clone(), slice.name.clone()), slice);
    v
}

fn config(upstream: SocketAddr) -> DnsConfig {
    DnsConfig {
        listen: Listen::Fixed("127.0.0.1:0".parse().unwrap()),
        upstream: Upstream::Servers(vec![upstream]),
        upstream_timeout: Duration::from_millis(500),
    }
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Udp,
    Tcp,
}

async fn client(addr: SocketAddr, proto: Proto) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match proto {
        Proto::Udp => {
            let stream = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(WAIT))
                .build();
            let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(bg);
            client
        }
        Proto::Tcp => {
            let (stream, handle) = TcpClientStream::new(addr, None, Some(WAIT), provider);
            let stream = stream.await.expect("tcp connect");
            let (client, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, handle, WAIT);
            tokio::spawn(bg);
            client
        }
    }
}

async fn ask(
    client: &mut Client<TokioRuntimeProvider>,
    qname: &str,
    rtype: RecordType,
) -> DnsResponse {
    client
        .query(name(qname), DNSClass::IN, rtype)
        .await
        .unwrap_or_else(|e| panic!("{qname} {rtype}: {e}"))
}

fn answers(r: &DnsResponse) -> Vec<String> {
    let mut out: Vec<String> = r
        .answers
        .iter()
        .map(|rec| match &rec.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::CNAME(c) => format!("CNAME {}", c.0),
            RData::SRV(s) => format!("SRV {} {}", s.port, s.target),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn answers_the_cluster_zone_over_udp_and_tcp_and_forwards_the_rest() {
    let (_upstream, upstream_addr) = upstream().await;
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let mut server = DnsServer::start(config(upstream_addr), rx);
    let addr = server.bound().await.expect("dns server listens");

    for proto in [Proto::Udp, Proto::Tcp] {
        let mut c = client(addr, proto).await;
        let r = ask(&mut c, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(answers(&r), ["10.96.0.20"], "{proto:?}");
        assert!(r.authoritative, "{proto:?}");
        assert_eq!(r.answers[0].ttl, 5);

        let r = ask(&mut c, "db.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(answers(&r), ["10.88.0.5", "10.88.1.6"], "{proto:?}");
        let r = ask(&mut c, "db-1.db.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(answers(&r), ["10.88.1.6"], "{proto:?}");
        let r = ask(
            &mut c,
            "_http._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(
            answers(&r),
            [
                "SRV 8080 db-0.db.default.svc.cluster.local.",
                "SRV 8080 db-1.db.default.svc.cluster.local."
            ],
            "{proto:?}"
        );
        let r = ask(
            &mut c,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(answers(&r), ["SRV 80 web.default.svc.cluster.local."]);

        // ExternalName: the CNAME, and for an address query its target's address too (a
        // pod's stub resolver does not follow a bare CNAME).
        let r = ask(&mut c, "ext.default.svc.cluster.local.", RecordType::CNAME).await;
        assert_eq!(answers(&r), ["CNAME www.example.org."], "{proto:?}");
        let r = ask(&mut c, "ext.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(
            answers(&r),
            ["192.0.2.1", "CNAME www.example.org."],
            "{proto:?}"
        );

        // NXDOMAIN for a name the zone lacks; NODATA for a type a name lacks, and for the
        // names above the records.
        let r = ask(&mut c, "nope.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::NXDomain, "{proto:?}");
        assert!(r
            .authorities
            .iter()
            .any(|a| a.record_type() == RecordType::SOA));
        for (qname, rtype) in [
            ("web.default.svc.cluster.local.", RecordType::AAAA),
            ("default.svc.cluster.local.", RecordType::A),
        ] {
            let r = ask(&mut c, qname, rtype).await;
            assert_eq!(
                (r.response_code, r.answers.len()),
                (ResponseCode::NoError, 0),
                "{qname} {rtype} over {proto:?}"
            );
        }

        // Outside the cluster domain: forwarded, answers and NXDOMAIN alike.
        let r = ask(&mut c, "www.example.org.", RecordType::A).await;
        assert_eq!(answers(&r), ["192.0.2.1"], "{proto:?}");
        assert!(!r.authoritative);
        let r = ask(&mut c, "missing.example.org.", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::NXDomain, "{proto:?}");
    }
    server.shutdown().await.expect("clean shutdown");
}

/// Queries until `check` accepts the answer, at most [`WAIT`]: the zone is swapped by the
/// server's task after the view changes, not synchronously.
async fn answer_becomes(
    c: &mut Client<TokioRuntimeProvider>,
    qname: &str,
    want: &[&str],
) -> Vec<String> {
    let end = Instant::now() + WAIT;
    loop {
        let got = answers(&ask(c, qname, RecordType::A).await);
        if got == want || Instant::now() > end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn view_changes_and_local_readiness_change_the_answers() {
    let (_upstream, upstream_addr) = upstream().await;
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let mut server = DnsServer::start(config(upstream_addr), rx);
    let addr = server.bound().await.expect("dns server listens");
    let mut c = client(addr, Proto::Udp).await;
    let db = "db.default.svc.cluster.local.";
    assert_eq!(
        answer_becomes(&mut c, db, &["10.88.0.5", "10.88.1.6"]).await,
        ["10.88.0.5", "10.88.1.6"]
    );

    // The cloud moves web's cluster IP (a recreated Service) and adds a Service.
    let mut v = view();
    v.services
        .get_mut(&("default".into(), "web".into()))
        .unwrap()
        .kind = ServiceKind::ClusterIp(vec![ip("10.96.0.30")]);
    let api = service("api", ServiceKind::ClusterIp(vec![ip("10.96.0.40")]));
    v.services.insert(("default".into(), "api".into()), api);
    tx.send_replace(Arc::new(v.clone()));
    let web = "web.default.svc.cluster.local.";
    assert_eq!(
        answer_becomes(&mut c, web, &["10.96.0.30"]).await,
        ["10.96.0.30"]
    );
    let api = "api.default.svc.cluster.local.";
    assert_eq!(
        answer_becomes(&mut c, api, &["10.96.0.40"]).await,
        ["10.96.0.40"]
    );

    // db-0 runs on this node and fails its readiness probe: it leaves the answers at once,
    // while the cloud's slice still says ready (no round trip, works offline).
    v.local_ready
        .insert(("default".into(), "db-0".into()), false);
    tx.send_replace(Arc::new(v.clone()));
    assert_eq!(
        answer_becomes(&mut c, db, &["10.88.1.6"]).await,
        ["10.88.1.6"]
    );
    let r = ask(&mut c, "db-0.db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(r.response_code, ResponseCode::NXDomain);

    // Passing again: back.
    v.local_ready
        .insert(("default".into(), "db-0".into()), true);
    tx.send_replace(Arc::new(v));
    assert_eq!(
        answer_becomes(&mut c, db, &["10.88.0.5", "10.88.1.6"]).await,
        ["10.88.0.5", "10.88.1.6"]
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_dead_upstream_gives_servfail_not_a_hang() {
    // A socket that takes queries and never answers, and no TCP listener on its port.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(view()));
    let mut server = DnsServer::start(config(silent.local_addr().unwrap()), rx);
    let addr = server.bound().await.expect("dns server listens");
    let mut c = client(addr, Proto::Udp).await;
    let r = ask(&mut c, "www.example.org.", RecordType::A).await;
    assert_eq!(r.response_code, ResponseCode::ServFail);
    // An ExternalName whose target cannot be resolved: its CNAME alone.
    let r = ask(&mut c, "ext.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), ["CNAME www.example.org."]);
    // The cluster zone still answers.
    let r = ask(&mut c, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), ["10.96.0.20"]);
    server.shutdown().await.expect("clean shutdown");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique interface name and a unique address in 198.18.0.0/15 (RFC 2544's benchmarking
/// range: never routed, so nothing leaves the host) for this test process.
fn unique_iface() -> (String, IpAddr, IpAddr) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = format!("skd{}x{n}", pid % 1_000_000);
    let a = ((pid >> 8) & 0xff) as u8;
    let b = (pid & 0xff) as u8;
    (
        name,
        IpAddr::from([198, 18, a, b]),
        IpAddr::from([198, 19, a, b]),
    )
}

struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

fn root() -> bool {
    nix::unistd::geteuid().is_root() && std::process::Command::new("ip").arg("-V").output().is_ok()
}

#[tokio::test]
async fn the_cluster_dns_interface_is_made_moved_and_removed_idempotently() {
    if !root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run as root with iproute2"
        );
        eprintln!("skipped: needs root and iproute2");
        return;
    }
    let (iface_name, first, second) = unique_iface();
    let _cleanup = RemoveOnDrop(iface_name.clone());
    assert_eq!(iface::addresses(&iface_name).await.unwrap(), None);
    iface::ensure(&iface_name, first).await.unwrap();
    iface::ensure(&iface_name, first).await.unwrap(); // again: nothing changes
    assert_eq!(
        iface::addresses(&iface_name).await.unwrap(),
        Some(vec![first])
    );

    // The server in cluster-DNS mode binds the view's address on that interface and moves
    // with it.
    let (_upstream, upstream_addr) = upstream().await;
    let mut v = view();
    v.network = Some(network(&first.to_string()));
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(v.clone()));
    let mut cfg = config(upstream_addr);
    cfg.listen = Listen::ClusterDns {
        interface: iface_name.clone(),
        port: 5353,
    };
    let mut server = DnsServer::start(cfg, rx);
    let addr = server
        .bound()
        .await
        .expect("listens on the cluster DNS address");
    assert_eq!(addr, SocketAddr::new(first, 5353));
    let mut c = client(addr, Proto::Udp).await;
    let r = ask(&mut c, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), ["10.96.0.20"]);

    v.network = Some(network(&second.to_string()));
    tx.send_replace(Arc::new(v));
    let end = Instant::now() + WAIT;
    let moved = SocketAddr::new(second, 5353);
    while server.bound().await.ok() != Some(moved) {
        assert!(Instant::now() < end, "the server did not move to {moved}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        iface::addresses(&iface_name).await.unwrap(),
        Some(vec![second])
    );
    let mut c = client(moved, Proto::Tcp).await;
    let r = ask(&mut c, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answers(&r), ["10.96.0.20"]);
    server.shutdown().await.expect("clean shutdown");

    iface::remove(&iface_name).await.unwrap();
    iface::remove(&iface_name).await.unwrap(); // gone already: still fine
    assert_eq!(iface::addresses(&iface_name).await.unwrap(), None);
}
