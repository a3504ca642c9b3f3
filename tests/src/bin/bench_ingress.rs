//! The Ingress router's figures, same run, side by side: HTTP requests to one backend server
//! - *direct*: straight to the backend (what a client at the pod IP gets);
//! - *ingress*: through edgecore's router (`edgecore::network::ingress::run`, the code the
//!   agent runs), routed by an Ingress rule to a Service whose one ready endpoint is that
//!   backend, as the node's ServiceView has it.
//!
//! The backend is a hyper HTTP/1.1 server answering a short body, on loopback in this process
//! (so the figure is the router's own cost: parsing, routing, endpoint choice, the pooled
//! upstream connection; not a container's network path). Clients are WORKERS keep-alive
//! connections each sending requests back to back for SECS seconds, paths interleaved in ROUNDS
//! rounds so that drift on this shared machine hits both alike. Requests/s is the total over
//! the path's rounds; latencies are per request (send to last body byte).
//!
//! Run: `cargo run --release -p skerry-tests --bin bench_ingress` (env: WORKERS=8, SECS=2,
//! ROUNDS=5).

use anyhow::{Context, Result};
use edgecore::network::ingress::{run, RouterConfig};
use edgecore::network::view::ServiceView;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use protocol::ingress::*;
use protocol::service::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The backend: answers every request with a short body.
async fn backend() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"hello from the pod\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A view with Service `web` (port 80) whose one ready endpoint is `pod`, and an Ingress
/// routing `/` to it.
fn view(pod: SocketAddr) -> ServiceView {
    let mut v = ServiceView::default();
    v.services.insert(
        ("default".into(), "web".into()),
        EdgeService {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterIp(vec!["10.96.0.20".parse().expect("static")]),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: L4Protocol::Tcp,
                port: 80,
                node_port: None,
            }],
            client_ip_affinity_secs: None,
            internal_traffic_local: false,
            external_traffic_local: false,
            publish_not_ready: false,
        },
    );
    v.slices.insert(
        ("default".into(), "web-1".into()),
        EdgeEndpointSlice {
            namespace: "default".into(),
            name: "web-1".into(),
            service: "web".into(),
            address_type: AddressType::Ipv4,
            ports: vec![EndpointPort {
                name: String::new(),
                protocol: L4Protocol::Tcp,
                port: pod.port(),
            }],
            endpoints: vec![Endpoint {
                addresses: vec![pod.ip()],
                ready: true,
                serving: true,
                terminating: false,
                node: None,
                pod: None,
                hostname: None,
            }],
        },
    );
    v.ingresses = Some(EdgeIngresses {
        node: "bench".into(),
        ingresses: vec![EdgeIngress {
            namespace: "default".into(),
            name: "web".into(),
            default_backend: None,
            rules: vec![IngressRule {
                host: "web.example.com".into(),
                paths: vec![IngressPath {
                    path: "/".into(),
                    kind: PathMatch::Prefix,
                    backend: IngressBackend {
                        service: "web".into(),
                        port: BackendPort::Number(80),
                    },
                }],
            }],
            tls: vec![],
        }],
    });
    v
}

/// `workers` keep-alive connections to `target` sending GETs for `secs`: per-request
/// latencies in seconds.
async fn load(target: SocketAddr, workers: usize, secs: u64) -> Result<Vec<f64>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut lat = Vec::new();
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let req = hyper::Request::get("/")
                    .header("host", "web.example.com")
                    .body(Empty::<Bytes>::new())?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                resp.into_body().collect().await?;
                lat.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    let (workers, secs, rounds) = (env("WORKERS", 8), env("SECS", 2) as u64, env("ROUNDS", 5));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pod = backend().await?;
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(view(pod)));
        let cfg = RouterConfig {
            http: Some(http),
            https: None,
            ..Default::default()
        };
        tokio::spawn(run(cfg, rx, std::future::pending()));
        // Wait for the router's listener.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(http).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the router did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut direct = Vec::new();
        let mut ingress = Vec::new();
        let (mut direct_secs, mut ingress_secs) = (0.0, 0.0);
        load(pod, workers, 1).await.context("warm-up direct")?;
        load(http, workers, 1).await.context("warm-up ingress")?;
        for _ in 0..rounds {
            let t = Instant::now();
            direct.extend(load(pod, workers, secs).await?);
            direct_secs += t.elapsed().as_secs_f64();
            let t = Instant::now();
            ingress.extend(load(http, workers, secs).await?);
            ingress_secs += t.elapsed().as_secs_f64();
        }
        println!(
            "{workers} keep-alive connections, {rounds} rounds of {secs} s per path, interleaved"
        );
        println!("| path | requests/s | p50 | p99 |");
        println!("| --- | --- | --- | --- |");
        for (name, mut lat, total) in [
            ("direct to the backend", direct, direct_secs),
            ("through the ingress router", ingress, ingress_secs),
        ] {
            lat.sort_by(f64::total_cmp);
            println!(
                "| {name} | {:.0} | {:.3} ms | {:.3} ms |",
                lat.len() as f64 / total,
                pct(&lat, 0.5) * 1e3,
                pct(&lat, 0.99) * 1e3
            );
        }
        anyhow::Ok(())
    })
}
