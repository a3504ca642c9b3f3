//! Benchmark: what the pod-sync pass paid for its network view, before and after it learned to
//! skip the read when no batch wrote the network tree. Before, every pass (each wake-up, and
//! every 10 s) decoded every cached Service and EndpointSlice and compared the result with the
//! current view; after, a pass with no network change reads one counter.
//!
//! `cargo bench -p edgecore --bench network_refresh -- [SERVICES] [PASSES]` (defaults 1000, 200):
//! SERVICES Services, each with one slice of 3 endpoints, in a real sled cache. Prints a
//! Markdown table for BENCHMARKS.md.

use edgecore::cache::Cache;
use edgecore::network::publish::{channel, refresh_from_cache};
use protocol::messages::{EdgeObject, SyncBatch, Upsert};
use protocol::service::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

fn objects(services: usize) -> Vec<Upsert> {
    let mut out = vec![Upsert {
        revision: 1,
        object: EdgeObject::Network(ClusterNetwork {
            node: "bench".into(),
            pod_cidr: Some("10.244.0.0/24".into()),
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }),
    }];
    for i in 0..services {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8));
        out.push(Upsert {
            revision: 1,
            object: EdgeObject::Service(EdgeService {
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
            }),
        });
        out.push(Upsert {
            revision: 1,
            object: EdgeObject::EndpointSlice(EdgeEndpointSlice {
                namespace: "default".into(),
                name: format!("svc-{i}-abcde"),
                service: format!("svc-{i}"),
                address_type: AddressType::Ipv4,
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: L4Protocol::Tcp,
                    port: 8080,
                }],
                endpoints: (0..3)
                    .map(|j| Endpoint {
                        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 244, j, (i % 250) as u8 + 2))],
                        ready: true,
                        serving: true,
                        terminating: false,
                        node: Some(format!("node-{j}")),
                        pod: Some(format!("svc-{i}-pod-{j}")),
                        hostname: None,
                    })
                    .collect(),
            }),
        });
    }
    out
}

#[tokio::main]
async fn main() {
    let services: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let passes: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = Cache::open(&dir.path().join("cache")).expect("cache");
    cache
        .apply(&SyncBatch {
            revision: 1,
            snapshot: true,
            more: false,
            upserts: objects(services),
            deletes: vec![],
        })
        .await
        .expect("apply");
    let (view, _rx) = channel();
    refresh_from_cache(&view, &cache);

    // Before: the whole tree read and compared on every pass.
    let t = Instant::now();
    for _ in 0..passes {
        refresh_from_cache(&view, &cache);
    }
    let before = t.elapsed().as_secs_f64() * 1e6 / passes as f64;
    // After: a pass with no network batch reads the counter.
    let mut seen = Some(cache.network_generation());
    let t = Instant::now();
    for _ in 0..passes {
        let generation = cache.network_generation();
        if seen != Some(generation) {
            refresh_from_cache(&view, &cache);
            seen = Some(generation);
        }
    }
    let after = t.elapsed().as_secs_f64() * 1e6 / passes as f64;
    println!("| Services (1 slice of 3 endpoints each) | CPU per pod-sync pass, before | after (no network change) |");
    println!("|---:|---:|---:|");
    println!("| {services} | {before:.0} µs | {after:.2} µs |");
}
