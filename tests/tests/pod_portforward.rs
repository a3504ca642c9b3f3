//! `kubectl port-forward` from the cloud, over the node's own QUIC link: real kubectl 1.32 (its
//! WebSocket tunnel of SPDY, and its SPDY fallback) against a real cloudcore and edgecore, to a
//! CRI pod (busybox httpd in containerd) and to a process-runtime pod; HTTP through it.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::Digest;
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// A running `kubectl port-forward`, with the local port of each remote port it announced.
struct Forward {
    child: Child,
    ports: Vec<(u16, u16)>,
    stderr: Arc<Mutex<String>>,
}

impl Forward {
    /// Starts `kubectl port-forward TARGET :P1 :P2 ...` (kubectl picks the local ports) and
    /// waits until it listens for each of the `remotes`.
    fn start(cloud: &Cloud, target: &str, remotes: &[u16], env: &[(&str, &str)]) -> Result<Self> {
        let specs: Vec<String> = remotes.iter().map(|r| format!(":{r}")).collect();
        Self::start_specs(cloud, target, &specs, env)
    }

    /// Starts `kubectl port-forward TARGET LOCAL:REMOTE`.
    fn start_at(cloud: &Cloud, target: &str, local: u16, remote: u16) -> Result<Self> {
        let forward = Self::start_specs(cloud, target, &[format!("{local}:{remote}")], &[])?;
        assert_eq!(forward.local(remote), local, "{:?}", forward.ports);
        Ok(forward)
    }

    /// Starts `kubectl port-forward TARGET SPEC...` and waits until it listens for each spec.
    fn start_specs(
        cloud: &Cloud,
        target: &str,
        specs: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(cloud.kubeconfig_path())
            .args(["port-forward", target])
            .args(specs);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            // Every line also goes to the transcript ("Handling connection for 80"), for errors.
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                {
                    let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                    s.push_str("stdout: ");
                    s.push_str(&line);
                    s.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let mut forward = Self {
            child,
            ports: Vec::new(),
            stderr,
        };
        let end = Instant::now() + DEADLINE;
        while forward.ports.len() < specs.len() {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                bail!(
                    "kubectl port-forward {target} did not listen: {}",
                    forward.stderr()
                );
            };
            // "Forwarding from 127.0.0.1:40123 -> 80"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                if let Some((local, remote)) = rest.split_once(" -> ") {
                    forward
                        .ports
                        .push((remote.trim().parse()?, local.trim().parse()?));
                }
            }
        }
        Ok(forward)
    }

    fn local(&self, remote: u16) -> u16 {
        self.ports
            .iter()
            .find(|(r, _)| *r == remote)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("no local port for {remote}: {:?}", self.ports))
    }

    /// What kubectl printed (stdout lines marked), and whether it has ended.
    fn stderr(&self) -> String {
        let printed = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        let ended = stat.map_or(true, |s| s.contains(") Z "));
        format!(
            "{printed}(kubectl {})",
            if ended { "ended" } else { "runs" }
        )
    }

    /// Waits for kubectl's stderr to say `what`.
    async fn wait_stderr(&self, what: &str) -> Result<String> {
        eventually(&format!("kubectl to say {what:?}"), DEADLINE, || async {
            let s = self.stderr();
            Ok(s.contains(what).then_some(s))
        })
        .await
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to `127.0.0.1:port` with an HTTP/1.0 request written.
fn send_get(port: u16, path: &str) -> Result<TcpStream> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(DEADLINE))?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())?;
    Ok(conn)
}

/// The whole answer on `conn` (HTTP/1.0: the server closes after it).
fn read_answer(mut conn: TcpStream) -> Result<String> {
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `GET path` on `127.0.0.1:port`: the body of a 200, or an error.
fn http_get(port: u16, path: &str) -> Result<String> {
    let answer = read_answer(send_get(port, path)?)?;
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        bail!("not an HTTP answer: {answer:?}");
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("not a 200: {head}");
    }
    Ok(body.to_string())
}

/// `text` without its ANSI colour codes.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A kubectl that ends by itself: its status and stderr.
fn kubectl_output(cloud: &Cloud, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// What kubectl says when the edge could not connect to a port, and that nothing broke.
async fn refused_port_is_reported(cloud: &Cloud, target: &str, port: u16) -> Result<()> {
    let refused = Forward::start(cloud, target, &[port], &[])?;
    let answer = send_get(refused.local(port), "/").and_then(read_answer);
    assert!(
        !answer.as_ref().is_ok_and(|a| a.contains("HTTP/1.")),
        "an answer from a port nobody listens on: {answer:?}"
    );
    let err = refused
        .wait_stderr(&format!(
            "an error occurred forwarding {} -> {port}",
            refused.local(port)
        ))
        .await?;
    assert!(err.contains("error forwarding port"), "{err}");
    assert!(err.contains("refused"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_to_a_cri_pod() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "cri-pf", &ctrd).await?;
    cloud.wait_node_ready("cri-pf", DEADLINE).await?;
    // An HTTP server on every address (80) and one on the pod's localhost only (8081).
    let script = "mkdir -p /www /lo && echo pod-80 > /www/index.html && \
                  echo pod-localhost > /lo/index.html && \
                  cat /proc/sys/kernel/random/uuid > /www/secret && \
                  httpd -p 80 -h /www && httpd -p 127.0.0.1:8081 -h /lo && exec sleep 3600";
    let pod: Value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"nodeName": "cri-pf", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                 "imagePullPolicy": "Never",
                                 "command": ["/bin/sh", "-c", script]}]}
    });
    cloud.create_pod(pod).await?;
    let running = cloud.wait_running("web", DEADLINE).await?;
    let pod_ip = running["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Both servers up first: kubectl 1.32 ends the whole port-forward on a connection's error.
    eventually("the pod's servers to listen", DEADLINE, || async {
        let (ok, _) = kubectl_output(
            &cloud,
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "wget -q -O- http://127.0.0.1:80/ && wget -q -O- http://127.0.0.1:8081/",
            ],
        )?;
        Ok(ok.then_some(()))
    })
    .await?;
    // Two ports at once, over kubectl's WebSocket tunnel; the second is bound to the pod's
    // 127.0.0.1, which only a connection made inside the pod's network namespace reaches.
    let pf = Forward::start(&cloud, "pod/web", &[80, 8081], &[])?;
    let diagnose = || {
        format!(
            "kubectl: {}{}{}",
            pf.stderr(),
            cloud.log_tail(),
            edge.log_tail()
        )
    };
    let body = http_get(pf.local(80), "/").with_context(diagnose)?;
    assert_eq!(body, "pod-80\n");
    let body = http_get(pf.local(8081), "/").with_context(diagnose)?;
    assert_eq!(body, "pod-localhost\n");
    if !pod_ip.is_empty() {
        // The pod's IP reaches the server on every address, not the one on its localhost.
        let at = |port: u16| -> Result<bool> {
            let addr = format!("{pod_ip}:{port}").parse()?;
            Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
        };
        assert!(
            at(80)?,
            "the pod's IP {pod_ip} is not reachable from the host"
        );
        assert!(
            !at(8081)?,
            "the localhost-only server is reachable at the pod's IP: the test proves nothing"
        );
    }

    // Two connections open at the same time, answered in the other order.
    let first = send_get(pf.local(80), "/").context("first")?;
    let second = send_get(pf.local(8081), "/")?;
    let third = send_get(pf.local(80), "/")?;
    assert!(read_answer(third)?.ends_with("pod-80\n"));
    assert!(read_answer(second)?.ends_with("pod-localhost\n"));
    assert!(read_answer(first)?.ends_with("pod-80\n"));
    // Eight clients at once, four requests each, on both ports.
    let (p80, p8081) = (pf.local(80), pf.local(8081));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || -> Result<()> {
                for _ in 0..4 {
                    let (port, want) = if i % 2 == 0 {
                        (p80, "pod-80\n")
                    } else {
                        (p8081, "pod-localhost\n")
                    };
                    assert_eq!(http_get(port, "/")?, want);
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    // The audit: who forwarded which port of which pod, at info, and never the bytes.
    let secret = http_get(p80, "/secret")?;
    assert_eq!(secret.trim().len(), 36, "{secret:?}");
    drop(pf);
    // The session's end is logged once cloudcore has seen kubectl go.
    let cloud_log = eventually("the session's end in the log", DEADLINE, || async {
        let log = plain(&std::fs::read_to_string(
            cloud.dir.path().join("cloudcore.log"),
        )?);
        Ok(log.contains("port-forward ended").then_some(log))
    })
    .await?;
    let edge_log = plain(&std::fs::read_to_string(
        edge.dir.path().join("edgecore.log"),
    )?);
    for port in [80, 8081] {
        assert!(
            cloud_log.lines().any(|l| l.contains(" INFO ")
                && l.contains("port-forward connection")
                && l.contains("user=admin")
                && l.contains("pod=default/web")
                && l.contains(&format!("port={port} "))),
            "no audit line for port {port}"
        );
    }
    assert!(cloud_log.contains("port-forward started"));
    assert!(edge_log.contains("forwarding a connection for the cloud"));
    assert!(
        !cloud_log.contains(secret.trim()) && !edge_log.contains(secret.trim()),
        "a forwarded connection's bytes are in a log"
    );

    // svc/...: kubectl picks a pod of the Service and its target port itself.
    let (code, svc) = cloud
        .api(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 8080, "targetPort": 80}]}
            })),
        )
        .await?;
    assert_eq!(code, 201, "{svc}");
    let pf = Forward::start(&cloud, "svc/web", &[8080], &[])?;
    // kubectl announces the pod's port it resolved.
    assert_eq!(http_get(pf.local(80), "/").context("svc")?, "pod-80\n");
    drop(pf);

    // kubectl's SPDY fallback (the upgrade it uses when the WebSocket is refused) is served too.
    let pf = Forward::start(
        &cloud,
        "pod/web",
        &[80],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    )?;
    assert_eq!(http_get(pf.local(80), "/")?, "pod-80\n");
    drop(pf);

    // A port nobody listens on: kubectl prints the edge's error, as kubelet's.
    refused_port_is_reported(&cloud, "pod/web", 9999).await?;

    eventually(
        "the node's port-forward streams to end with their clients",
        DEADLINE,
        || async {
            Ok((cloud.metric("skerry_hub_port_forward_streams").await? == Some(0.0)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_to_a_process_pod_and_a_node_away() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-pf", &[]).await?;
    cloud.wait_node_ready("edge-pf", DEADLINE).await?;
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "process-pod\n")?;
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = www.path().to_string_lossy().into_owned();
    cloud
        .create_pod(process_pod(
            "hostweb",
            "edge-pf",
            &["busybox", "httpd", "-f", "-p", &listen, "-h", &dir],
        ))
        .await?;
    cloud.wait_running("hostweb", DEADLINE).await?;

    // The process runtime's pods are on the host's network: its localhost. LOCAL:REMOTE.
    let pf = Forward::start_at(&cloud, "pod/hostweb", free_tcp_port(), port)?;
    let body = eventually("httpd to answer through the forward", DEADLINE, || async {
        Ok(http_get(pf.local(port), "/").ok())
    })
    .await?;
    assert_eq!(body, "process-pod\n");
    drop(pf);

    // 16 MB up to a pod that hashes what it reads until the client half-closes, and answers:
    // the bytes towards the pod arrive whole and in order, and the half-close gets through.
    let hash_port = free_tcp_port();
    let hash_port_arg = hash_port.to_string();
    cloud
        .create_pod(process_pod(
            "hasher",
            "edge-pf",
            &[
                "busybox",
                "nc",
                "-ll",
                "-p",
                &hash_port_arg,
                "-e",
                "sha256sum",
            ],
        ))
        .await?;
    cloud.wait_running("hasher", DEADLINE).await?;
    eventually("nc to listen", DEADLINE, || async {
        Ok(TcpStream::connect(("127.0.0.1", hash_port))
            .ok()
            .map(|_| ()))
    })
    .await?;
    let pf = Forward::start(&cloud, "pod/hasher", &[hash_port], &[])?;
    let mut data = vec![0u8; 16 << 20];
    let mut x: u32 = 0x2545_f491;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let mut conn = TcpStream::connect(("127.0.0.1", pf.local(hash_port)))?;
    conn.set_read_timeout(Some(DEADLINE))?;
    conn.write_all(&data)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let answer = read_answer(conn).with_context(|| pf.stderr())?;
    let want = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(answer, format!("{want}  -\n"), "kubectl: {}", pf.stderr());
    drop(pf);
    refused_port_is_reported(&cloud, "pod/hostweb", free_tcp_port()).await?;

    // A pod that is not running: kubectl says so (from the pod's phase the edge reported).
    let mut done = process_pod("done", "edge-pf", &["true"]);
    done["spec"]["restartPolicy"] = json!("Never");
    cloud.create_pod(done).await?;
    cloud
        .wait_for(
            "pod done to succeed",
            "/api/v1/namespaces/default/pods/done",
            DEADLINE,
            |p| phase(p) == "Succeeded",
        )
        .await?;
    let (ok, err) = kubectl_output(&cloud, &["port-forward", "pod/done", ":80"])?;
    assert!(!ok, "{err}");
    assert!(
        err.contains("pod is not running. Current status=Succeeded"),
        "{err}"
    );
    // The API refuses it too, before any upgrade, for clients that do not check (client-go's
    // port-forwarder does not).
    let (status, body) = cloud
        .api(
            "POST",
            "/api/v1/namespaces/default/pods/done/portforward?ports=80",
            None,
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("default/done is not running. Current status=Succeeded")),
        "{body}"
    );

    // The link drops under an open connection: the connection ends (no hang) and kubectl says
    // it was cut.
    let echo_port = free_tcp_port();
    let echo_port_arg = echo_port.to_string();
    cloud
        .create_pod(process_pod(
            "echo",
            "edge-pf",
            &["busybox", "nc", "-ll", "-p", &echo_port_arg, "-e", "cat"],
        ))
        .await?;
    cloud.wait_running("echo", DEADLINE).await?;
    eventually("nc to listen", DEADLINE, || async {
        Ok(TcpStream::connect(("127.0.0.1", echo_port))
            .ok()
            .map(|_| ()))
    })
    .await?;
    let pf = Forward::start(&cloud, "pod/echo", &[echo_port], &[])?;
    let mut conn = TcpStream::connect(("127.0.0.1", pf.local(echo_port)))?;
    conn.set_read_timeout(Some(DEADLINE))?;
    // An echo back: the connection is carried both ways, end to end.
    conn.write_all(b"ping\n")?;
    let mut echoed = [0u8; 5];
    conn.read_exact(&mut echoed).with_context(|| pf.stderr())?;
    assert_eq!(&echoed, b"ping\n");
    edge.kill9();
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection hung after the link dropped: {e}"
        ),
    }
    pf.wait_stderr("the connection to the pod was cut")
        .await
        .with_context(|| format!("kubectl: {}{}", pf.stderr(), cloud.log_tail()))?;
    drop(pf);

    // The node is away: a 503 naming it, before any port is listened on.
    cloud.wait_hub_sessions(0, DEADLINE).await?;
    let (ok, err) = kubectl_output(
        &cloud,
        &["port-forward", "pod/hostweb", &format!(":{port}")],
    )?;
    assert!(!ok, "{err}");
    assert!(
        err.contains("node \"edge-pf\" is not connected to the cloud since "),
        "{err}"
    );
    Ok(())
}
