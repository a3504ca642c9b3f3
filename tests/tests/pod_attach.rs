//! `kubectl attach -i/-t` and `kubectl run -it --rm` against containers started with `stdin`,
//! `stdinOnce` and `tty`: real kubectl (WebSocket) through a real cloudcore and edgecore, on the
//! CRI runtime with containerd (whose streaming server the edge attaches through), and the
//! process runtime's clear refusal of such containers.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// A kubectl that runs on (optionally under a pseudo terminal from util-linux `script`), with
/// its stdin held open and its output (stdout and stderr) collected as it comes.
struct Interactive {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Interactive {
    fn start(cloud: &Cloud, args: &[&str], terminal: Option<(u16, u16)>) -> Result<Self> {
        let mut cmd = match terminal {
            None => {
                let mut c = Command::new("kubectl");
                c.arg("--kubeconfig")
                    .arg(cloud.kubeconfig_path())
                    .args(args);
                c
            }
            Some((rows, cols)) => {
                let mut line = format!(
                    "stty rows {rows} cols {cols}; exec kubectl --kubeconfig {}",
                    cloud.kubeconfig_path().display()
                );
                for a in args {
                    line.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
                }
                let mut c = Command::new("script");
                c.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        let out = Arc::new(Mutex::new(String::new()));
        for mut source in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = source.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, out })
    }

    fn send(&mut self, text: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until the output holds `want` (kubectl still running or not).
    fn wait_for(&self, want: &str) -> Result<()> {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if self.output().contains(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("no {want:?} in kubectl's output: {:?}", self.output())
    }

    /// Waits for kubectl to end by itself: its status and whole output.
    fn wait_exit(&mut self) -> Result<(std::process::ExitStatus, String)> {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The reader threads finish with the pipes' ends.
                std::thread::sleep(Duration::from_millis(100));
                return Ok((status, self.output()));
            }
            if Instant::now() > end {
                bail!("kubectl did not end: {:?}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn interactive_pod(name: &str, node: &str, command: &[&str], io: Value) -> Value {
    let mut container = json!({"name": "main", "image": BUSYBOX_IMAGE,
                               "imagePullPolicy": "Never", "command": command});
    for (k, v) in io.as_object().into_iter().flatten() {
        container[k] = v.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "restartPolicy": "Never", "containers": [container]}
    })
}

/// A log without its colours (ANSI escapes).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn wait_log(cloud: &Cloud, pod: &str, want: &str) -> Result<()> {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        let (_, out) = cloud.kubectl(&["logs", pod])?;
        if out.contains(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no {want:?} in the log of {pod}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_i_t_and_run_it_on_the_cri_runtime() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "cri-attach", &ctrd).await?;
    cloud.wait_node_ready("cri-attach", DEADLINE).await?;

    // attach -i: a line in, the container's `cat` echoes it out. Without stdinOnce the
    // container's stdin outlives the attach: a second attach is echoed too.
    cloud
        .create_pod(interactive_pod(
            "echo",
            "cri-attach",
            &["cat"],
            json!({"stdin": true}),
        ))
        .await?;
    cloud.wait_running("echo", DEADLINE).await?;
    for round in ["first", "second"] {
        let mut k = Interactive::start(&cloud, &["attach", "-i", "echo"], None)?;
        k.send(&format!("hello {round} attach\n"))?;
        k.wait_for(&format!("hello {round} attach"))?;
    }

    // attach -it: the container's own terminal, sized as the client's (resize), its shell
    // answering typed lines; the attach ends with the shell.
    cloud
        .create_pod(interactive_pod(
            "term",
            "cri-attach",
            &["sh"],
            json!({"stdin": true, "tty": true}),
        ))
        .await?;
    cloud.wait_running("term", DEADLINE).await?;
    let mut k = Interactive::start(&cloud, &["attach", "-it", "term"], Some((31, 101)))?;
    // The resize travels beside the input: the shell waits for it rather than the test.
    k.send(
        "for i in $(seq 100); do [ \"$(stty size)\" = '31 101' ] && break; sleep 0.1; done; \
         echo TTY-$(tty | cut -c1-8)-$(stty size | tr ' ' x)\n",
    )?;
    k.wait_for("TTY-/dev/pts-31x101")?;
    k.send("exit\n")?;
    let (status, out) = k.wait_exit()?;
    assert!(status.success(), "attach -it to a shell that exited: {out}");

    // kubectl run -it --rm: creates the pod (stdin, stdinOnce, tty), attaches once it runs,
    // and deletes it after.
    let mut k = Interactive::start(
        &cloud,
        &[
            "run",
            "-it",
            "--rm",
            "--restart=Never",
            "--image",
            BUSYBOX_IMAGE,
            "--image-pull-policy=Never",
            "x",
            "--",
            "sh",
        ],
        Some((24, 80)),
    )?;
    k.wait_for("If you don't see a command prompt")?;
    k.send("echo RUN-$((40+2))\n")?;
    k.wait_for("RUN-42")?;
    // kubectl takes its exit code from the ended pod's status, as after a real kubelet.
    k.send("exit 3\n")?;
    let (status, out) = k.wait_exit()?;
    assert_eq!(status.code(), Some(3), "kubectl run -it --rm: {out}");
    assert!(out.contains("pod \"x\" deleted"), "{out}");
    cloud
        .wait_gone("pod x", "/api/v1/namespaces/default/pods/x", DEADLINE)
        .await?;

    // Every attach is in the cloud's log with the user, the pod and the container; what was
    // typed is in neither log.
    let cloud_log = plain(&std::fs::read_to_string(
        cloud.dir.path().join("cloudcore.log"),
    )?);
    let started: Vec<&str> = cloud_log
        .lines()
        .filter(|l| l.contains("exec started") && l.contains(r#"what="attach""#))
        .collect();
    for (pod, container) in [
        ("default/echo", "main"),
        ("default/term", "main"),
        ("default/x", "x"),
    ] {
        let fields = format!("user=admin pod={pod} container={container} ");
        assert!(
            started.iter().any(|l| l.contains(&fields)),
            "no attach of {pod} in the cloud's log: {started:#?}"
        );
    }
    let edge_log = std::fs::read_to_string(edge.dir.path().join("edgecore.log"))?;
    for (log, side) in [(&cloud_log, "cloud"), (&edge_log, "edge")] {
        for typed in ["hello first attach", "hello second attach", "RUN-"] {
            assert!(!log.contains(typed), "{typed:?} in the {side}'s log");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_once_closes_the_containers_stdin_after_the_first_attach() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start_cri(&cloud, "cri-once", &ctrd).await?;
    cloud.wait_node_ready("cri-once", DEADLINE).await?;
    // The first attach's end closes the container's stdin: `cat` ends.
    cloud
        .create_pod(interactive_pod(
            "left",
            "cri-once",
            &["sh", "-c", "cat; echo closed-after-attach; exec sleep 3600"],
            json!({"stdin": true, "stdinOnce": true}),
        ))
        .await?;
    cloud.wait_running("left", DEADLINE).await?;
    let mut k = Interactive::start(&cloud, &["attach", "-i", "left"], None)?;
    k.send("one\n")?;
    k.wait_for("one")?;
    drop(k);
    wait_log(&cloud, "left", "closed-after-attach").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_refuses_stdin_and_tty_containers_in_their_status() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "proc-io", &[]).await?;
    cloud.wait_node_ready("proc-io", DEADLINE).await?;
    let mut pod = process_pod("wants-tty", "proc-io", &["sh"]);
    pod["spec"]["containers"][0]["stdin"] = json!(true);
    pod["spec"]["containers"][0]["tty"] = json!(true);
    cloud.create_pod(pod).await?;
    let path = "/api/v1/namespaces/default/pods/wants-tty";
    let pod = cloud
        .wait_for("CreateContainerError", path, DEADLINE, |p| {
            p.pointer("/status/containerStatuses/0/state/waiting/reason")
                == Some(&json!("CreateContainerError"))
        })
        .await?;
    let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
    let message = waiting["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("process runtime cannot keep a container's stdin or terminal open"),
        "{waiting}"
    );
    // And attaching input to a container started without stdin is a clear 400.
    let idle = process_pod("idle", "proc-io", &["sleep", "300"]);
    cloud.create_pod(idle).await?;
    cloud.wait_running("idle", DEADLINE).await?;
    let (ok, out) = cloud.kubectl(&["attach", "-i", "idle"])?;
    assert!(!ok, "{out}");
    assert!(out.contains("was not started with stdin: true"), "{out}");
    // The refusal is in the cloud's log too, with the user and the pod.
    let cloud_log = plain(&std::fs::read_to_string(
        cloud.dir.path().join("cloudcore.log"),
    )?);
    assert!(
        cloud_log.lines().any(|l| l.contains("exec refused")
            && l.contains(r#"what="attach""#)
            && l.contains("user=admin pod=default/idle ")),
        "no refused attach of default/idle in the cloud's log"
    );
    Ok(())
}
