//! Benchmark: cluster DNS query latency over UDP on loopback, edgecore's server (zone from a
//! `ServiceView`, swapped per view, forwarder behind it) against a plain hickory authority
//! serving the same records (the floor: hickory's own cost). Sequential queries from one
//! hickory client; prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo bench -p edgecore --bench dns -- [QUERIES] [SERVICES]` (defaults 10000, 1000)

use edgecore::network::dns::{records, DnsConfig, DnsServer, Listen, Upstream};
use edgecore::network::view::ServiceView;
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RecordType};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use protocol::service::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn view(services: usize) -> ServiceView {
    let mut v = ServiceView {
        network: Some(ClusterNetwork {
            node: "bench".into(),
            pod_cidr: None,
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }),
        ..ServiceView::default()
    };
    for i in 0..services {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8));
        let s = EdgeService {
            namespace: "default".into(),
            name: format!("svc-{i}"),
            kind: ServiceKind::ClusterIp(vec![ip]),
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
        };
        v.services.insert((s.namespace.clone(), s.name.clone()), s);
    }
    v
}

async fn client(addr: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(5)))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    client
}

/// (p50, p99, mean) in microseconds of `n` sequential queries for `names` (round robin).
async fn measure(
    addr: SocketAddr,
    names: &[Name],
    n: usize,
    want: ResponseCode,
) -> (f64, f64, f64) {
    let mut c = client(addr).await;
    // Warm-up: connections, caches, the first zone swap.
    for name in names.iter().take(100) {
        let _ = c.query(name.clone(), DNSClass::IN, RecordType::A).await;
    }
    let mut micros = Vec::with_capacity(n);
    for i in 0..n {
        let name = names[i % names.len()].clone();
        let t = Instant::now();
        let r = c
            .query(name, DNSClass::IN, RecordType::A)
            .await
            .expect("query");
        micros.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r.response_code, want);
    }
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
    (at(0.50), at(0.99), mean)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let queries: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let services: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let v = view(services);
    let names: Vec<Name> = (0..services)
        .map(|i| Name::from_ascii(format!("svc-{i}.default.svc.cluster.local.")).unwrap())
        .collect();
    let missing: Vec<Name> = (0..services)
        .map(|i| {
            Name::from_ascii(format!(
                "svc-{i}.default.svc.cluster.local.default.svc.cluster.local."
            ))
            .unwrap()
        })
        .collect();

    // The floor: hickory's authority alone, the same records.
    let zone = records::build(&v, 1).unwrap();
    let origin = zone.origin.clone();
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        zone.records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let floor_addr = udp.local_addr().unwrap();
    let mut floor = Server::new(catalog);
    floor.register_socket(udp);

    // edgecore's server, forwarding to the floor for other names.
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(v));
    let mut server = DnsServer::start(
        DnsConfig {
            listen: Listen::Fixed("127.0.0.1:0".parse().unwrap()),
            upstream: Upstream::Servers(vec![floor_addr]),
            upstream_timeout: Duration::from_secs(2),
        },
        rx,
    );
    let addr = server.bound().await.expect("listens");

    println!("{queries} sequential UDP queries on loopback, zone of {services} Services\n");
    println!("| server | query | p50 µs | p99 µs | mean µs |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (label, target, qnames, rcode) in [
        (
            "plain hickory authority (floor)",
            floor_addr,
            &names,
            ResponseCode::NoError,
        ),
        ("edgecore cluster DNS", addr, &names, ResponseCode::NoError),
        (
            "plain hickory authority (floor)",
            floor_addr,
            &missing,
            ResponseCode::NXDomain,
        ),
        (
            "edgecore cluster DNS",
            addr,
            &missing,
            ResponseCode::NXDomain,
        ),
    ] {
        let (p50, p99, mean) = measure(target, qnames, queries, rcode).await;
        let what = if rcode == ResponseCode::NoError {
            "A, service name"
        } else {
            "A, search-path miss (NXDOMAIN)"
        };
        println!("| {label} | {what} | {p50:.0} | {p99:.0} | {mean:.0} |");
    }
    server.shutdown().await.expect("shutdown");
    let _ = floor.shutdown_gracefully().await;
}
