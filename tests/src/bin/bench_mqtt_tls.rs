//! Benchmark: what TLS costs the status channel, per heartbeat, against plain MQTT (issue #10).
//! Prints a Markdown table for BENCHMARKS.md.
//!
//! `cargo build --release -p skerry-tests --bins && target/release/bench_mqtt_tls [HEARTBEATS]`
//!
//! One mosquitto with two listeners, plain (anonymous) and TLS (the cluster CA's certificates,
//! client certificate required, as `cloudcore mqtt-config` sets it up), each behind a counting
//! TCP proxy in this process. A client configured as edgecore's publisher (rumqttc, QoS 1,
//! keep-alive 10 s; with TLS 1.3 and the node certificate on the TLS side) publishes HEARTBEATS
//! sealed heartbeats of edgecore's shape one after another, each after the previous PUBACK.
//! The client runs on a thread of its own, whose CPU time (RUSAGE_THREAD) is what it cost; the
//! proxy counts TCP payload bytes both ways (IP and TCP headers, about 52 bytes a segment, come
//! on top, the same for both). Connection set-up (TCP, TLS handshake, CONNECT) is reported on its
//! own line, as is one keep-alive round trip.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use skerry_tests::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn thread_cpu_secs() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// A heartbeat shaped like edgecore's (five conditions, addresses, capacity, node info).
fn heartbeat(seq: u64) -> protocol::status::StatusReport {
    use protocol::status::*;
    let kinds = [
        (
            NodeConditionKind::Ready,
            true,
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        (
            NodeConditionKind::MemoryPressure,
            false,
            "KubeletHasSufficientMemory",
            "memory.available 20Gi > 100Mi",
        ),
        (
            NodeConditionKind::DiskPressure,
            false,
            "KubeletHasNoDiskPressure",
            "nodefs.available 60% > 10%",
        ),
        (
            NodeConditionKind::PIDPressure,
            false,
            "KubeletHasSufficientPID",
            "pid.available 99% > 5%",
        ),
        (
            NodeConditionKind::NetworkUnavailable,
            false,
            "CNIReady",
            "CNI network skerry configured",
        ),
    ];
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    StatusReport {
        protocol_version: protocol::PROTOCOL_VERSION,
        seq,
        observed_at_ms: 1_796_000_000_000 + seq,
        body: StatusBody::Node(NodeStatus {
            node: "edge-bench".into(),
            conditions: kinds
                .iter()
                .map(|(kind, status, reason, message)| NodeCondition {
                    kind: *kind,
                    status: *status,
                    reason: reason.to_string(),
                    message: message.to_string(),
                })
                .collect(),
            addresses: vec![
                ("InternalIP".into(), "10.17.0.23".into()),
                ("Hostname".into(), "edge-bench".into()),
            ],
            capacity: map(&[("cpu", "2"), ("memory", "24576000Ki"), ("pods", "110")]),
            allocatable: map(&[("cpu", "2000m"), ("memory", "24576000Ki"), ("pods", "110")]),
            info: NodeInfo {
                operating_system: "linux".into(),
                architecture: "amd64".into(),
                kernel_version: "6.1.0-27-amd64".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                agent_version: "v1.33.0-skerry-edgecore-0.1.0".into(),
                container_runtime_version: "containerd://1.6.20".into(),
            },
        }),
    }
}

/// A TCP proxy from a free port to `target` that adds up the bytes it carries.
async fn counting_proxy(target: u16, bytes: Arc<AtomicU64>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = counted_copy(&mut ri, &mut wo, &bytes);
                let down = counted_copy(&mut ro, &mut wi, &bytes);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(port)
}

async fn counted_copy<R, W>(r: &mut R, w: &mut W, bytes: &AtomicU64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
    }
}

/// What one run cost.
struct Run {
    setup_bytes: u64,
    setup_cpu_ms: f64,
    per_heartbeat_bytes: f64,
    per_heartbeat_cpu_us: f64,
    ping_bytes: u64,
}

/// Runs the publisher on a thread of its own, so that its CPU time is its own.
fn run_client(opts: MqttOptions, heartbeats: u64, bytes: Arc<AtomicU64>) -> Run {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let key = [7u8; protocol::status::REPORT_KEY_LEN];
            let topic = protocol::topics::node_status("edge-bench");
            let cpu0 = thread_cpu_secs();
            let (client, mut eventloop) = AsyncClient::new(opts, 10);
            loop {
                if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
                    break;
                }
            }
            let setup_cpu_ms = (thread_cpu_secs() - cpu0) * 1000.0;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let setup_bytes = bytes.load(Ordering::Relaxed);
            let cpu1 = thread_cpu_secs();
            for seq in 0..heartbeats {
                let payload = protocol::status::seal(&key, &topic, &heartbeat(seq)).expect("seal");
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("publish");
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => break,
                        Ok(_) => {}
                        Err(e) => panic!("connection failed: {e}"),
                    }
                }
            }
            let cpu = thread_cpu_secs() - cpu1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let published = bytes.load(Ordering::Relaxed) - setup_bytes;
            // One keep-alive round trip: 10 s of silence, then PINGREQ and PINGRESP.
            let started = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_secs(15), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PingResp))) => break,
                    Ok(Ok(_)) => {}
                    _ => panic!("no keep-alive within 15 s"),
                }
            }
            assert!(started.elapsed() >= Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ping_bytes = bytes.load(Ordering::Relaxed) - setup_bytes - published;
            Run {
                setup_bytes,
                setup_cpu_ms,
                per_heartbeat_bytes: published as f64 / heartbeats as f64,
                per_heartbeat_cpu_us: cpu * 1e6 / heartbeats as f64,
                ping_bytes,
            }
        })
    })
    .join()
    .expect("client thread")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let heartbeats: u64 = std::env::args().nth(1).map_or(Ok(2000), |a| a.parse())?;
    // The cloud is only here for its CA and a node identity.
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = private_temp_dir()?;
    let (ok, out) = cloud.join_only(dir.path(), "edge-bench")?;
    anyhow::ensure!(ok, "{out}");
    let conf_dir = private_temp_dir()?;
    let files = conf_dir.path().join("mqtt");
    let tls_port = free_tcp_port();
    let status = std::process::Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(cloud.dir.path())
        .arg("mqtt-config")
        .arg("--out")
        .arg(&files)
        .args(["--name", "127.0.0.1", "--listen"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success());
    let plain_port = free_tcp_port();
    let conf = conf_dir.path().join("bench.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nper_listener_settings true\npersistence false\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\n\
             cafile {d}/ca.crt\ncertfile {d}/broker.crt\nkeyfile {d}/broker.key\n\
             require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.3\n",
            d = files.display()
        ),
    )?;
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    for port in [plain_port, tls_port] {
        eventually("mosquitto", Duration::from_secs(10), || async move {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ()))
        })
        .await?;
    }

    let plain_bytes = Arc::new(AtomicU64::new(0));
    let plain_proxy = counting_proxy(plain_port, plain_bytes.clone()).await?;
    let mut plain = MqttOptions::new(
        protocol::status::mqtt_client_id("edge-bench"),
        "127.0.0.1",
        plain_proxy,
    );
    plain.set_keep_alive(Duration::from_secs(10));
    plain.set_credentials("edge-bench", "0".repeat(64));
    let plain_run = run_client(plain, heartbeats, plain_bytes);

    let tls_bytes = Arc::new(AtomicU64::new(0));
    let tls_proxy = counting_proxy(tls_port, tls_bytes.clone()).await?;
    let tls = mqtt::node_options(dir.path(), "edge-bench", tls_proxy)?;
    let tls_run = run_client(tls, heartbeats, tls_bytes);
    let _ = broker.kill();
    let _ = broker.wait();

    println!("| per connection or heartbeat | plain MQTT | MQTT over TLS 1.3 (node certificate) |");
    println!("|---|---|---|");
    println!(
        "| connection set-up: bytes (both ways) | {} | {} |",
        plain_run.setup_bytes, tls_run.setup_bytes
    );
    println!(
        "| connection set-up: client CPU (ms) | {:.2} | {:.2} |",
        plain_run.setup_cpu_ms, tls_run.setup_cpu_ms
    );
    println!(
        "| heartbeat (PUBLISH + PUBACK): bytes | {:.0} | {:.0} |",
        plain_run.per_heartbeat_bytes, tls_run.per_heartbeat_bytes
    );
    println!(
        "| heartbeat: client CPU (µs, sealing included) | {:.1} | {:.1} |",
        plain_run.per_heartbeat_cpu_us, tls_run.per_heartbeat_cpu_us
    );
    println!(
        "| keep-alive (PINGREQ + PINGRESP): bytes | {} | {} |",
        plain_run.ping_bytes, tls_run.ping_bytes
    );
    Ok(())
}
