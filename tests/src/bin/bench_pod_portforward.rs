//! Benchmark: a bulk download through `kubectl port-forward` (kubectl's WebSocket tunnel of
//! SPDY to cloudcore, the node's QUIC link to edgecore, a TCP connection on the node) against a
//! direct connection to the same server, in the same run and interleaved, on loopback with the
//! process runtime (its pods are on the host's network, so the direct path is the server's own
//! port). The server is busybox httpd serving one file of SIZE MB. Prints a Markdown table for
//! BENCHMARKS.md.
//!
//! With `SKERRY_BENCH_RUNTIME=cri` the server is a busybox container in a private containerd,
//! the forward enters the pod's network namespace, and the direct path is the pod's IP.
//!
//! `cargo build --workspace --bins && SKERRY_BIN_DIR=target/debug target/debug/bench_pod_portforward [SIZE_MB] [RUNS]`

use anyhow::{bail, Context, Result};
use skerry_tests::measure::pct;
use skerry_tests::*;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Downloads `/big` from `host:port`: seconds taken, after checking every byte came.
fn download(host: &str, port: u16, size: u64) -> Result<f64> {
    let t = Instant::now();
    let mut conn = TcpStream::connect((host, port))?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    conn.write_all(b"GET /big HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    // The body and a head of a few hundred bytes.
    if total < size || total > size + 4096 {
        bail!("{total} bytes came for a file of {size}");
    }
    Ok(secs)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let size_mb: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let size = size_mb << 20;
    let cri = std::env::var("SKERRY_BENCH_RUNTIME").as_deref() == Ok("cri");
    let www = tempfile::tempdir()?;
    if !cri {
        // Not all zeros, in case anything on the way compresses.
        let mut f = std::io::BufWriter::new(std::fs::File::create(www.path().join("big"))?);
        let mut block = vec![0u8; 1 << 20];
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..size_mb {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let ctrd = if cri {
        Some(containerd::Containerd::start().await?)
    } else {
        None
    };
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = match &ctrd {
        Some(c) => Edge::join_and_start_cri(&cloud, "bench-pf", c).await?,
        None => Edge::join_and_start(&cloud, "bench-pf", &[]).await?,
    };
    cloud
        .wait_node_ready("bench-pf", Duration::from_secs(60))
        .await?;
    let (direct_host, port) = if cri {
        let script = format!(
            "mkdir -p /www && head -c {size} /dev/urandom > /www/big && httpd -p 80 -h /www && \
             exec sleep 3600"
        );
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bulk"},
            "spec": {"nodeName": "bench-pf", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": containerd::BUSYBOX_IMAGE,
                                     "imagePullPolicy": "Never",
                                     "command": ["/bin/sh", "-c", script]}]}
        });
        cloud.create_pod(pod).await?;
        let running = cloud.wait_running("bulk", Duration::from_secs(60)).await?;
        let ip = running["status"]["podIP"]
            .as_str()
            .context("the pod has no IP")?
            .to_string();
        (ip, 80)
    } else {
        let port = free_tcp_port();
        let listen = format!("127.0.0.1:{port}");
        let dir = www.path().to_string_lossy().into_owned();
        cloud
            .create_pod(process_pod(
                "bulk",
                "bench-pf",
                &["busybox", "httpd", "-f", "-p", &listen, "-h", &dir],
            ))
            .await?;
        cloud.wait_running("bulk", Duration::from_secs(60)).await?;
        ("127.0.0.1".to_string(), port)
    };
    eventually(
        "httpd to serve the file",
        Duration::from_secs(60),
        || async { Ok(download(&direct_host, port, size).ok().map(|_| ())) },
    )
    .await?;

    let local = free_tcp_port();
    let mut kubectl = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(["port-forward", "pod/bulk", &format!("{local}:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run kubectl")?;
    let stdout = kubectl.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // kubectl's stdout is read to its end: a closed pipe would kill it on its next line.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("kubectl port-forward did not listen")?;
        if line.starts_with("Forwarding from 127.0.0.1:") {
            break;
        }
    }
    // One of each first: connections made, the file in the page cache.
    download(&direct_host, port, size)?;
    download("127.0.0.1", local, size)?;
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(download(&direct_host, port, size)?);
        forwarded.push(download("127.0.0.1", local, size)?);
    }
    let _ = kubectl.kill();
    let _ = kubectl.wait();
    for v in [&mut direct, &mut forwarded] {
        v.sort_by(f64::total_cmp);
    }
    let mbps = |secs: f64| size_mb as f64 / secs;
    println!("| {size_mb} MB download, {runs} runs each, interleaved | median s | median MB/s | best MB/s |");
    println!("|---|---|---|---|");
    println!(
        "| through `kubectl port-forward` (cloud → edge over QUIC) | {:.2} | {:.0} | {:.0} |",
        pct(&forwarded, 0.5),
        mbps(pct(&forwarded, 0.5)),
        mbps(forwarded[0])
    );
    let runtime = if cri {
        "CRI, the pod's IP"
    } else {
        "process, the host's port"
    };
    println!(
        "| direct to the pod's port ({runtime}) | {:.2} | {:.0} | {:.0} |",
        pct(&direct, 0.5),
        mbps(pct(&direct, 0.5)),
        mbps(direct[0])
    );
    Ok(())
}
