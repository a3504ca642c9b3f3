//! The pod overlay against plain routing, in the same run: two edges in network namespaces of
//! their own (each with its containerd and pod CIDR, so each runs its overlay), a TCP server
//! in node B's namespace, and from node A's namespace: TCP connection setup (connect and the
//! server's first byte) p50/p99 over `CONNS` connections, and `MB` megabytes to a sink, three
//! times: to B's own address (plain routing between the namespaces, the floor); to B's overlay
//! address while A reaches B (A's TUN, the nodes' own QUIC connection, B's TUN: the overlay's
//! direct path); and to B's overlay address once every packet between A and B is dropped (A's
//! TUN, the hub's relay, B's TUN). The last two also through a Service whose one endpoint is
//! B's overlay address, by its cluster IP (the proxy's DNAT first). Also cloudcore's CPU time
//! for each overlay transfer.
//!
//! `cargo build --release --workspace --bins && CONNS=300 MB=100 target/release/bench_overlay`
//! (as root; all paths run in the same process, one after the other).

use anyhow::{bail, Context, Result};
use skerry_tests::containerd::Containerd;
use skerry_tests::measure::{pct, setup_once};
use skerry_tests::netns::Net;
use skerry_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const PORT: u16 = 9000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A server in `ns`: answers each connection with one byte at once, then reads to EOF and
/// answers the byte count.
fn serve_in(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let setup = || -> Result<TcpListener> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(TcpListener::bind(("0.0.0.0", PORT))?)
        };
        let listener = match setup() {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = conn;
                if c.write_all(b"!").is_err() {
                    return;
                }
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0usize;
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                let _ = write!(c, "{n}");
            });
        }
    });
    rx.recv().context("server thread died")?
}

fn transfer(addr: SocketAddr, mb: usize) -> Result<f64> {
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut first = [0u8; 1];
    c.read_exact(&mut first)?;
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

/// Setup p50/p99 (ms) and MB/s to `addr`, from inside `ns`.
fn measure(ns: &str, addr: SocketAddr, conns: usize, mb: usize) -> Result<(f64, f64, f64)> {
    skerry_tests::podnet::in_ns(ns, || -> Result<(f64, f64, f64)> {
        // Warm up (ARP, conntrack, the relay's first packets).
        for _ in 0..5 {
            setup_once(addr)?;
        }
        let mut times = Vec::with_capacity(conns);
        for _ in 0..conns {
            times.push(setup_once(addr)? * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let rate = transfer(addr, mb)?;
        Ok((pct(&times, 0.5), pct(&times, 0.99), rate))
    })?
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !containerd::require() || !netns::should_run()? {
        bail!("bench_overlay needs root, containerd and iproute2");
    }
    let (conns, mb) = (env("CONNS", 300), env("MB", 100));
    let net = Net::new()?;
    let (_cloud_host, cloud) = Cloud::start_on(&net, CloudOptions::default()).await?;
    let (host_a, host_b) = (net.host("a")?, net.host("b")?);
    let ctrd_a = Containerd::start_in(Some(&host_a.ns)).await?;
    let ctrd_b = Containerd::start_in(Some(&host_b.ns)).await?;
    let _a =
        Edge::join_and_start_cri_networked_in(&cloud, "bo-a", &ctrd_a, &[], Some(host_a.place()))
            .await?;
    let _b =
        Edge::join_and_start_cri_networked_in(&cloud, "bo-b", &ctrd_b, &[], Some(host_b.place()))
            .await?;
    cloud
        .wait_node_ready("bo-a", Duration::from_secs(60))
        .await?;
    let node_b = cloud
        .wait_node_ready("bo-b", Duration::from_secs(60))
        .await?;
    let cidr_b =
        protocol::overlay::Cidr::parse(node_b["spec"]["podCIDR"].as_str().context("podCIDR")?)?;
    serve_in(&host_b.ns)?;
    let direct = SocketAddr::from((host_b.ip, PORT));
    let overlay = SocketAddr::new(cidr_b.first_host(), PORT);
    // The overlay is up once B's overlay address answers through it.
    eventually(
        "the overlay carries A to B",
        Duration::from_secs(60),
        || async { skerry_tests::podnet::in_ns(&host_a.ns, || setup_once(overlay).ok()) },
    )
    .await?;
    // A Service whose one endpoint is B's overlay address (a selector-less Service and the
    // EndpointSlice a user writes), reached from A's host by its cluster IP: the proxy's
    // DNAT, then the overlay.
    for h in [&host_a, &host_b] {
        h.route_default_via_observer()?;
    }
    let manifest = cloud.dir.path().join("sink.json");
    std::fs::write(
        &manifest,
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sink"},
             "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": PORT}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "sink-manual", "labels": {"kubernetes.io/service-name": "sink"}},
             "addressType": "IPv4",
             "ports": [{"name": "tcp", "port": PORT, "protocol": "TCP"}],
             "endpoints": [{"addresses": [overlay.ip().to_string()],
                            "conditions": {"ready": true}, "nodeName": "bo-b"}]}]})
        .to_string(),
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", &manifest.to_string_lossy()])?;
    anyhow::ensure!(ok, "kubectl apply: {out}");
    let svc = cloud
        .get("/api/v1/namespaces/default/services/sink")
        .await?
        .context("the sink Service")?;
    let vip = SocketAddr::new(
        svc["spec"]["clusterIP"]
            .as_str()
            .context("clusterIP")?
            .parse()?,
        80,
    );
    eventually(
        "A's proxy routes the Service",
        Duration::from_secs(60),
        || async { skerry_tests::podnet::in_ns(&host_a.ns, || setup_once(vip).ok()) },
    )
    .await?;

    let (d50, d99, drate) = measure(&host_a.ns, direct, conns, mb)?;
    let pid = cloud.pid().context("cloudcore pid")?;
    let relayed = || async {
        Ok::<_, anyhow::Error>(
            cloud
                .metric_series("skerry_hub_overlay_packets_total{result=\"relayed\"}")
                .await?
                .unwrap_or(0.0),
        )
    };

    // The nodes' own connection: up once A sends to B straight and the hub relays nothing.
    eventually("A sends to B directly", Duration::from_secs(60), || async {
        let before = relayed().await?;
        skerry_tests::podnet::in_ns(&host_a.ns, || setup_once(overlay))??;
        let sent = _a
            .metric_series("skerry_edge_overlay_packets_total{direction=\"out\",result=\"direct\"}")
            .await?
            .unwrap_or(0.0);
        Ok((sent > 0.0 && relayed().await? == before).then_some(()))
    })
    .await?;
    let (relayed0, cpu0) = (relayed().await?, cpu_seconds(pid).unwrap_or(0.0));
    let (p50, p99, prate) = measure(&host_a.ns, overlay, conns, mb)?;
    let (pcpu, prelayed) = (
        cpu_seconds(pid).unwrap_or(0.0) - cpu0,
        relayed().await? - relayed0,
    );
    let (ps50, ps99, psrate) = measure(&host_a.ns, vip, conns, mb)?;

    // Cut apart: the direct connection dies of silence, and packets go through the hub.
    host_a.partition_from(&host_b)?;
    let cut = Instant::now();
    let before = relayed().await?;
    eventually(
        "A reaches B through the hub",
        Duration::from_secs(60),
        || async {
            Ok(skerry_tests::podnet::in_ns(&host_a.ns, || setup_once(overlay).ok())?.map(|_| ()))
        },
    )
    .await?;
    let fallback = cut.elapsed().as_secs_f64();
    anyhow::ensure!(
        relayed().await? > before,
        "the hub relayed nothing after the cut"
    );
    let (relayed0, cpu0) = (relayed().await?, cpu_seconds(pid).unwrap_or(0.0));
    let (o50, o99, orate) = measure(&host_a.ns, overlay, conns, mb)?;
    let (ocpu, orelayed) = (
        cpu_seconds(pid).unwrap_or(0.0) - cpu0,
        relayed().await? - relayed0,
    );
    let (os50, os99, osrate) = measure(&host_a.ns, vip, conns, mb)?;
    let too_large = cloud
        .metric_series("skerry_hub_overlay_packets_total{result=\"too_large\"}")
        .await?
        .unwrap_or(0.0);
    println!("path                 connect p50 ms  p99 ms  throughput MB/s ({mb} MB)");
    println!("plain routing        {d50:>14.3}  {d99:>6.3}  {drate:>10.1}");
    println!("overlay, direct      {p50:>14.3}  {p99:>6.3}  {prate:>10.1}");
    println!("overlay, relayed     {o50:>14.3}  {o99:>6.3}  {orate:>10.1}");
    println!("Service, direct      {ps50:>14.3}  {ps99:>6.3}  {psrate:>10.1}");
    println!("Service, relayed     {os50:>14.3}  {os99:>6.3}  {osrate:>10.1}");
    println!(
        "direct: {:.0}% of plain throughput, +{:.3} ms connect p50; relayed: {:.0}%, +{:.3} ms",
        100.0 * prate / drate,
        p50 - d50,
        100.0 * orate / drate,
        o50 - d50
    );
    let per_mb = |cpu: f64| cpu / (mb as f64 + conns as f64 * 0.001);
    println!(
        "hub: direct run {prelayed} packets relayed, CPU {pcpu:.2} s; relayed run {orelayed} packets, CPU {ocpu:.2} s ({:.4} s per relayed MB); {too_large} too large",
        per_mb(ocpu)
    );
    // Coarse: a connect into the dead direct path waits for TCP's SYN retransmits (1 s, 3 s).
    println!("after the cut, A's next connection through the hub succeeded {fallback:.1} s later");
    Ok(())
}
