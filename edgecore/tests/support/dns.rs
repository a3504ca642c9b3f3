//! A tiny, plain hickory authority for `example.org.` (`www` -> 192.0.2.1) on 127.0.0.1: the
//! upstream the cluster DNS server under test forwards to (there is no internet here).

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A plain hickory authority for `example.org.` (`www` → 192.0.2.1) on 127.0.0.1, UDP and
/// TCP on one port: the upstream of the server under test.
pub async fn upstream() -> (Server<Catalog>, SocketAddr) {
    let origin = name("example.org.");
    let mut records = BTreeMap::new();
    let mut soa = RecordSet::with_ttl(origin.clone(), RecordType::SOA, 60);
    soa.add_rdata(RData::SOA(SOA::new(
        name("ns.example.org."),
        name("admin.example.org."),
        1,
        60,
        60,
        60,
        60,
    )));
    records.insert(RrKey::new(LowerName::new(&origin), RecordType::SOA), soa);
    let www = name("www.example.org.");
    let mut a = RecordSet::with_ttl(www.clone(), RecordType::A, 60);
    a.add_rdata(RData::A(A("192.0.2.1".parse().unwrap())));
    records.insert(RrKey::new(LowerName::new(&www), RecordType::A), a);
    let zone = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin.clone(),
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .unwrap();
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    (server, addr)
}
