//! `kubectl logs` from the cloud, over the node's own QUIC link: real kubectl against a real
//! cloudcore and edgecore (the process runtime, and the CRI runtime with containerd for what
//! only it records: timestamps).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// `kubectl ARGS` with its stdout read line by line into a channel (for `logs -f`).
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    fn start(cloud: &Cloud, args: &[&str]) -> Result<Self> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cloud.kubeconfig_path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run kubectl")?;
        let stdout = child.stdout.take().context("kubectl stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a line equal to `want` (the deadline only bounds a failing test).
    fn wait_line(&mut self, want: &str) -> Result<()> {
        let end = std::time::Instant::now() + DEADLINE;
        while !self.seen.iter().any(|l| l == want) {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => bail!("no line {want:?} from kubectl; saw {:?}", self.seen),
            }
        }
        Ok(())
    }

    /// Waits for kubectl to exit on its own; its exit status.
    fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return Ok(status);
            }
            if std::time::Instant::now() > end {
                bail!("kubectl did not end; saw {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl_ok(cloud: &Cloud, args: &[&str]) -> Result<String> {
    let (ok, out) = cloud.kubectl(args)?;
    if !ok {
        bail!("kubectl {args:?} failed: {out}{}", cloud.log_tail());
    }
    Ok(out)
}

fn pod(name: &str, node: &str, containers: Value, restart: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "restartPolicy": restart, "containers": containers}
    })
}

fn sh(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "busybox:local", "command": ["sh", "-c", script]})
}

/// Waits until `kubectl logs ARGS` succeeds with output containing `want`; returns it.
async fn logs_containing(cloud: &Cloud, args: &[&str], want: &str) -> Result<String> {
    let mut full = vec!["logs"];
    full.extend_from_slice(args);
    eventually(
        &format!("kubectl {full:?} showing {want:?}"),
        DEADLINE,
        || {
            let full = full.clone();
            async move {
                let (ok, out) = cloud.kubectl(&full)?;
                Ok((ok && out.contains(want)).then_some(out))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_through_the_cloud_on_the_process_runtime() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let flag_dir = tempfile::tempdir()?;
    let flag = flag_dir.path().join("go");
    let once = flag_dir.path().join("ran-once");
    cloud
        .create_pod(pod(
            "hello",
            "edge-a",
            json!([sh(
                "main",
                "for i in 1 2 3 4 5; do echo line $i; done; echo ready; exec sleep 300"
            )]),
            "Always",
        ))
        .await?;
    cloud
        .create_pod(pod(
            "duo",
            "edge-a",
            json!([
                sh("a", "echo from-a; exec sleep 300"),
                sh("b", "echo from-b; exec sleep 300")
            ]),
            "Always",
        ))
        .await?;
    let restart_script = format!(
        "if [ -f {f} ]; then echo attempt 2; exec sleep 300; else touch {f}; echo attempt 1; exit 3; fi",
        f = once.display()
    );
    cloud
        .create_pod(pod(
            "crashy",
            "edge-a",
            json!([sh("main", &restart_script)]),
            "Always",
        ))
        .await?;
    let follow_script = format!(
        "echo first; while [ ! -f {f} ]; do sleep 0.1; done; echo after-start; exec sleep 300",
        f = flag.display()
    );
    cloud
        .create_pod(pod(
            "ticker",
            "edge-a",
            json!([sh("main", &follow_script)]),
            "Always",
        ))
        .await?;
    cloud
        .create_pod(pod(
            "brief",
            "edge-a",
            json!([sh(
                "main",
                &format!(
                    "echo one; while [ ! -f {f} ]; do sleep 0.1; done; echo two",
                    f = flag.display()
                )
            )]),
            "Never",
        ))
        .await?;

    // The whole log, exactly, and its tail.
    let all = logs_containing(&cloud, &["hello"], "ready").await?;
    assert_eq!(all, "line 1\nline 2\nline 3\nline 4\nline 5\nready\n");
    assert_eq!(
        kubectl_ok(&cloud, &["logs", "hello", "--tail", "2"])?,
        "line 5\nready\n"
    );
    assert_eq!(
        kubectl_ok(&cloud, &["logs", "hello", "--limit-bytes", "9"])?,
        "line 1\nli"
    );

    // Two containers: -c picks one; kubectl itself defaults to the first (and says so), the
    // API without a container answers kube-apiserver's 400.
    let b = logs_containing(&cloud, &["duo", "-c", "b"], "from-b").await?;
    assert!(!b.contains("from-a"), "{b}");
    let defaulted = logs_containing(&cloud, &["duo"], "from-a").await?;
    assert!(
        defaulted.contains("Defaulted container \"a\" out of: a, b"),
        "{defaulted}"
    );
    let (code, status) = cloud
        .api("GET", "/api/v1/namespaces/default/pods/duo/log", None)
        .await?;
    assert_eq!(code, 400, "{status}");
    assert_eq!(
        status["message"],
        "a container name must be specified for pod duo, choose one of: [a b]"
    );
    let (ok, out) = cloud.kubectl(&["logs", "duo", "-c", "nope"])?;
    assert!(
        !ok && out.contains("container nope is not valid for pod duo"),
        "{out}"
    );
    let (code, status) = cloud
        .api(
            "GET",
            "/api/v1/namespaces/default/pods/hello/log?follow=maybe",
            None,
        )
        .await?;
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["kind"], "Status");

    // --previous: none yet on a pod that never restarted; after a restart, the earlier attempt.
    let (ok, out) = cloud.kubectl(&["logs", "hello", "--previous"])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("previous terminated container \"main\" in pod \"hello\" not found"),
        "{out}"
    );
    logs_containing(&cloud, &["crashy"], "attempt 2").await?;
    assert_eq!(
        kubectl_ok(&cloud, &["logs", "crashy", "--previous"])?,
        "attempt 1\n"
    );
    assert_eq!(kubectl_ok(&cloud, &["logs", "crashy"])?, "attempt 2\n");

    // The process runtime records no times: refused, not ignored.
    let (ok, out) = cloud.kubectl(&["logs", "hello", "--timestamps"])?;
    assert!(
        !ok && out.contains("does not record when log lines were written"),
        "{out}"
    );

    // -f sees a line written after it started, until the client leaves (which frees the
    // node's stream slot) or the container ends (which ends kubectl).
    logs_containing(&cloud, &["ticker"], "first").await?;
    logs_containing(&cloud, &["brief"], "one").await?;
    let mut follow = Streaming::start(&cloud, &["logs", "-f", "ticker"])?;
    follow.wait_line("first")?;
    let mut brief = Streaming::start(&cloud, &["logs", "-f", "brief"])?;
    brief.wait_line("one")?;
    std::fs::write(&flag, b"")?;
    follow.wait_line("after-start")?;
    let status = brief.wait_exit()?;
    assert!(
        status.success(),
        "kubectl logs -f of an ended container: {status}"
    );
    assert_eq!(brief.seen, ["one", "two"]);
    drop(follow);
    drop(brief);
    eventually(
        "the edge's log streams to end with their clients",
        DEADLINE,
        || async { Ok((cloud.metric("skerry_hub_log_streams").await? == Some(0.0)).then_some(())) },
    )
    .await?;

    // The link drops mid-stream (the node's edgecore dies without a word): the cloud ends the
    // response once QUIC declares the link dead, and kubectl returns an error instead of hanging.
    let mut cut = Streaming::start(&cloud, &["logs", "-f", "hello"])?;
    cut.wait_line("ready")?;
    edge.kill9();
    let status = cut.wait_exit()?;
    assert!(
        !status.success(),
        "kubectl logs -f over a dead link: {status}"
    );
    drop(cut);

    // The node is away: a clear 503 naming it, and the offline command still works there.
    cloud.wait_hub_sessions(0, DEADLINE).await?;
    let (ok, out) = cloud.kubectl(&["logs", "hello"])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("node \"edge-a\" is not connected to the cloud since "),
        "{out}"
    );
    assert!(
        out.contains("`edgecore logs default/hello -c main`"),
        "{out}"
    );
    let (ok, out) = edge.logs("hello")?;
    assert!(ok && out.contains("ready"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_timestamps_and_since_on_the_cri_runtime() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "cri-logs", &ctrd).await?;
    cloud.wait_node_ready("cri-logs", DEADLINE).await?;
    cloud
        .create_pod(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "stamped"},
            "spec": {"nodeName": "cri-logs", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                     "imagePullPolicy": "Never",
                                     "command": ["/bin/sh", "-c",
                                                 "echo alpha; echo beta; exec sleep 3600"]}]}
        }))
        .await?;
    let plain = logs_containing(&cloud, &["stamped"], "beta").await?;
    assert_eq!(plain, "alpha\nbeta\n");
    let stamped = kubectl_ok(&cloud, &["logs", "stamped", "--timestamps"])?;
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    for (line, want) in lines.iter().zip(["alpha", "beta"]) {
        let (time, message) = line.split_once(' ').context("timestamp and message")?;
        assert_eq!(message, want, "{stamped}");
        assert!(
            protocol::timestamp::parse_nanos(time).is_some(),
            "not an RFC 3339 time: {time:?}"
        );
    }
    assert_eq!(
        kubectl_ok(&cloud, &["logs", "stamped", "--tail", "1"])?,
        "beta\n"
    );
    assert_eq!(
        kubectl_ok(&cloud, &["logs", "stamped", "--since", "1h"])?,
        "alpha\nbeta\n"
    );
    Ok(())
}
