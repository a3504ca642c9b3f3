//! Helpers of the Service tests on real containers (`tests/tests/services.rs`,
//! `tests/tests/service_routing.rs`): HTTP and UDP clients that tell a refusal from a timeout,
//! the `web` Deployment whose pods serve their own name, and what the cloud says about a
//! Service (its cluster IP, node ports, ready endpoints).

use crate::containerd::BUSYBOX_IMAGE;
use crate::Cloud;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One HTTP/1.0 GET on a fresh connection: the body, or the error (its kind tells a refusal
/// from a timeout).
pub async fn get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default())
}

/// Which pods answer `n` fresh connections to `addr` (`/name`).
pub async fn answers(addr: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Ok(body) = get(addr, "/name").await {
            seen.insert(body);
        }
    }
    seen
}

/// Whether a fresh connection to `addr` is refused (`ECONNREFUSED`, at once), as opposed to
/// answered or timing out.
pub async fn refused(addr: &str) -> bool {
    matches!(get(addr, "/name").await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// One datagram from a fresh socket (a new source port, so a new conntrack flow) to `addr`,
/// and the answer; a refusal shows as `ConnectionRefused` (ICMP port unreachable).
pub fn udp_once(addr: SocketAddr) -> std::io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Which pods answer `n` datagrams, each from a fresh socket.
pub fn udp_answers(addr: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| udp_once(addr).ok()).collect()
}

/// The web Deployment: each pod serves its own name at /name on port `http` (8080), is ready
/// while /www/ready exists, and a CGI at /cgi-bin/fail removes that file (the tests' way to
/// fail one pod's readiness without exec).
pub fn web(replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
              "name": "httpd", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
              "command": ["/bin/sh", "-c",
                "mkdir -p /www/cgi-bin && hostname > /www/name && touch /www/ready && \
                 printf '#!/bin/sh\\nrm -f /www/ready\\necho Content-Type: text/plain\\necho\\necho failed\\n' > /www/cgi-bin/fail && \
                 chmod +x /www/cgi-bin/fail && exec httpd -f -p 8080 -h /www"],
              "ports": [{"name": "http", "containerPort": 8080}],
              "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                 "periodSeconds": 1, "failureThreshold": 1}}]}}}})
}

/// `kubectl apply` of one object.
pub async fn apply(cloud: &Cloud, obj: &Value) -> Result<()> {
    let file = cloud.dir.path().join(format!("{}.json", unique_name()));
    std::fs::write(&file, obj.to_string())?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
    anyhow::ensure!(ok, "kubectl apply: {out}");
    Ok(())
}

/// A name no other call of this process returns.
pub fn unique_name() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "m{}x{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The Service as stored in `default`.
pub async fn service(cloud: &Cloud, name: &str) -> Result<Value> {
    cloud
        .get(&format!("/api/v1/namespaces/default/services/{name}"))
        .await?
        .with_context(|| format!("no Service {name}"))
}

/// The cluster IP of Service `default/name`.
pub async fn cluster_ip(cloud: &Cloud, name: &str) -> Result<Ipv4Addr> {
    let svc = service(cloud, name).await?;
    svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("Service {name} has no cluster IP: {svc}"))
}

/// The node port of the Service's port named `port`.
pub async fn node_port(cloud: &Cloud, name: &str, port: &str) -> Result<u16> {
    let svc = service(cloud, name).await?;
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port)
        .and_then(|p| p["nodePort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("Service {name} has no node port for {port}: {svc}"))
}

/// Ready endpoint addresses of the Service's slices, as the cloud has them.
pub async fn ready_endpoints(cloud: &Cloud, service: &str) -> Result<BTreeSet<String>> {
    let list = cloud
        .get(&format!(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name%3D{service}"
        ))
        .await?
        .context("no slice list")?;
    let mut out = BTreeSet::new();
    for s in list["items"].as_array().into_iter().flatten() {
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] != json!(false) {
                if let Some(a) = e["addresses"][0].as_str() {
                    out.insert(a.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Pod name → pod IP of the Running pods whose `app` label is `app`.
pub async fn pod_ips(cloud: &Cloud, app: &str) -> Result<Vec<(String, Ipv4Addr)>> {
    let list = cloud
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"
        ))
        .await?
        .context("no pod list")?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let ip = p["status"]["podIP"].as_str()?.parse().ok()?;
            Some((p["metadata"]["name"].as_str()?.to_string(), ip))
        })
        .collect())
}

/// A UDP server answering each datagram with a name, bound inside a real pod's network
/// namespace: the busybox image has no UDP server, so the test process lends one. The socket
/// is made by a thread that entered the namespace of the process whose address it can bind
/// (`pod_ip` exists in exactly one namespace on the machine), so its datagrams travel the CNI
/// bridge and the pod's veth like any container's. Stops when dropped.
pub struct PodUdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodUdpServer {
    /// Binds `pod_ip:port` in the pod's namespace, found among the namespaces of processes
    /// whose command is `program`, and answers every datagram with `name`.
    pub fn start(program: &str, pod_ip: Ipv4Addr, port: u16, name: &str) -> Result<Self> {
        let sock = bind_in_pod(program, pod_ip, port)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), from);
                }
            }
        });
        Ok(PodUdpServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PodUdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind_in_pod(program: &str, pod_ip: Ipv4Addr, port: u16) -> Result<UdpSocket> {
    let mut tried = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let first = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if first.split(|b| *b == 0).next() != Some(program.as_bytes()) {
            continue;
        }
        tried += 1;
        let path = format!("/proc/{pid}/ns/net");
        if let Ok(Ok(sock)) = crate::podnet::in_ns_path(&path, move || {
            UdpSocket::bind(SocketAddr::from((pod_ip, port)))
        }) {
            return Ok(sock);
        }
    }
    anyhow::bail!("no namespace of the {tried} `{program}` processes holds {pod_ip}")
}
