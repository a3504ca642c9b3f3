//! `kubectl exec` and `kubectl cp` from the cloud, over the node's own QUIC link: real kubectl
//! (WebSocket, `v5.channel.k8s.io`) against a real cloudcore and edgecore, on the process
//! runtime and on the CRI runtime with containerd; and `edgecore exec` on the node itself.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::*;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// `kubectl ARGS` with `stdin` as its input: its whole output and exit status.
fn kubectl_run(cloud: &Cloud, args: &[&str], stdin: &[u8]) -> Result<Output> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run kubectl")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin)?;
    }
    Ok(child.wait_with_output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kubectl ARGS` under a pseudo terminal of `rows`x`cols` (util-linux `script` gives it one),
/// so that `exec -t` has a terminal to give the container.
fn kubectl_on_terminal(cloud: &Cloud, args: &[&str], rows: u16, cols: u16) -> Result<Output> {
    let mut line = format!(
        "stty rows {rows} cols {cols}; exec kubectl --kubeconfig {}",
        cloud.kubeconfig_path().display()
    );
    for a in args {
        line.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
    }
    Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run script (util-linux)")
}

/// A kubectl that keeps running (an exec whose link will be cut), its stdout read by lines.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(cloud: &Cloud, args: &[&str]) -> Result<Self> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cloud.kubeconfig_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn wait_line(&self, want: &str) -> Result<()> {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("no line {want:?} from kubectl"),
            }
        }
    }

    /// Waits for kubectl to end by itself: its status and stderr.
    fn wait_exit(&mut self) -> Result<(std::process::ExitStatus, String)> {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut err)?;
                }
                return Ok((status, err));
            }
            if std::time::Instant::now() > end {
                bail!("kubectl did not end");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// Bytes that no compression or line ending could pass through unchanged by accident.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What both runtimes must do: exit codes, the three streams, stdin to its end, a terminal of
/// the client's size, and `kubectl cp` both ways. `scratch` is a directory the container sees
/// at `scratch_in`.
async fn exec_and_cp(cloud: &Cloud, pod: &str, scratch: &Path, scratch_in: &str) -> Result<()> {
    // Exit code, stdout and stderr apart.
    let out = kubectl_run(
        cloud,
        &[
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    )?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "out\n");
    let err = text(&out.stderr);
    assert!(err.starts_with("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let out = kubectl_run(cloud, &["exec", pod, "--", "true"], b"")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "");

    // stdin to its end (v5's close signal): `cat` ends only when its input does.
    let input = noise(300_000, 7);
    let out = kubectl_run(
        cloud,
        &["exec", "-i", pod, "--", "sh", "-c", "cat; echo done >&2"],
        &input,
    )?;
    assert!(out.status.success(), "{:?}", text(&out.stderr));
    assert!(
        out.stdout == input,
        "stdin came back as {} bytes, not the {} sent",
        out.stdout.len(),
        input.len()
    );
    assert_eq!(text(&out.stderr), "done\n");

    // A terminal of the client's size, as the container sees it.
    let out = kubectl_on_terminal(
        cloud,
        &["exec", "-it", pod, "--", "sh", "-c", "tty; stty size"],
        33,
        111,
    )?;
    let shown = text(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}{}",
        text(&out.stderr),
        cloud.log_tail()
    );
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(shown.contains("33 111"), "{shown}");
    let out = kubectl_on_terminal(
        cloud,
        &["exec", "-it", pod, "--", "sh", "-c", "exit 5"],
        24,
        80,
    )?;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stdout));

    // kubectl cp in and out (tar through exec), checked by checksum on both sides.
    let local = tempfile::tempdir()?;
    let src = local.path().join("payload.bin");
    std::fs::write(&src, noise(4 << 20, 11))?;
    let want = sha256_file(&src)?;
    let target = format!("default/{pod}:{scratch_in}/payload.bin");
    let out = kubectl_run(cloud, &["cp", &src.to_string_lossy(), &target], b"")?;
    assert!(
        out.status.success(),
        "cp in: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        sha256_file(&scratch.join("payload.bin"))?,
        want,
        "the copy in the container"
    );
    let out = kubectl_run(
        cloud,
        &[
            "exec",
            pod,
            "--",
            "sha256sum",
            &format!("{scratch_in}/payload.bin"),
        ],
        b"",
    )?;
    assert!(text(&out.stdout).starts_with(&want), "{out:?}");
    let back = local.path().join("back.bin");
    let out = kubectl_run(cloud, &["cp", &target, &back.to_string_lossy()], b"")?;
    assert!(
        out.status.success(),
        "cp out: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(sha256_file(&back)?, want, "the copy out of the container");

    // Bad requests are refused before anything runs.
    let out = kubectl_run(cloud, &["exec", pod, "-c", "nope", "--", "true"], b"")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container nope is not valid for pod"),
        "{out:?}"
    );
    let out = kubectl_run(cloud, &["exec", pod, "--", "/no/such/program"], b"")?;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("/no/such/program"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_on_the_process_runtime() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    cloud
        .create_pod(process_pod("shell", "edge-a", &["sleep", "300"]))
        .await?;
    cloud.wait_running("shell", DEADLINE).await?;
    // The process runtime's containers share the host's files.
    let scratch = tempfile::tempdir()?;
    let scratch_in = scratch.path().to_string_lossy().into_owned();
    exec_and_cp(&cloud, "shell", scratch.path(), &scratch_in).await?;
    eventually(
        "the node's exec streams to end with their clients",
        DEADLINE,
        || async {
            Ok((cloud.metric("skerry_hub_exec_streams").await? == Some(0.0)).then_some(()))
        },
    )
    .await?;

    // On the node itself, offline of the cloud's help: the same command, its code.
    let (code, out, _) =
        edge.exec_local(&["shell", "--", "sh", "-c", "echo local; exit 4"], b"")?;
    assert_eq!((code, out.as_str()), (4, "local\n"));
    let (code, out, _) = edge.exec_local(&["shell", "-i", "--", "cat"], b"piped\n")?;
    assert_eq!((code, out.as_str()), (0, "piped\n"));

    // The link drops mid-stream (edgecore dies without a word): kubectl ends with an error
    // once QUIC declares the link dead, instead of hanging. The command ends by itself.
    let mut cut = Running::start(
        &cloud,
        &[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 30",
        ],
    )?;
    cut.wait_line("started")?;
    edge.kill9();
    let (status, err) = cut.wait_exit()?;
    assert!(!status.success(), "kubectl exec over a dead link: {status}");
    assert!(err.contains("cut") || err.contains("node"), "{err}");
    drop(cut);

    // The node is away: a clear 503 naming it and the offline command, and `edgecore exec`
    // still works there.
    cloud.wait_hub_sessions(0, DEADLINE).await?;
    let out = kubectl_run(&cloud, &["exec", "shell", "--", "true"], b"")?;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("node \"edge-a\" is not connected to the cloud since "),
        "{err}"
    );
    assert!(
        err.contains("`edgecore exec default/shell -c main -- COMMAND`"),
        "{err}"
    );
    let (code, out, _) = edge.exec_local(&["shell", "--", "echo", "still here"], b"")?;
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_on_the_cri_runtime() -> Result<()> {
    if !containerd::require() {
        return Ok(());
    }
    let ctrd = Containerd::start().await?;
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start_cri(&cloud, "cri-exec", &ctrd).await?;
    cloud.wait_node_ready("cri-exec", DEADLINE).await?;
    let scratch = tempfile::tempdir()?;
    let pod: Value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "box"},
        "spec": {"nodeName": "cri-exec", "terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "scratch", "hostPath": {"path": scratch.path().to_string_lossy()}}],
                 "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                                 "imagePullPolicy": "Never",
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                                 "command": ["/bin/sh", "-c", "exec sleep 3600"]}]}
    });
    cloud.create_pod(pod).await?;
    cloud.wait_running("box", DEADLINE).await?;
    exec_and_cp(&cloud, "box", scratch.path(), "/scratch").await?;
    // In the container, not on the host: its own root.
    let out = kubectl_run(&cloud, &["exec", "box", "--", "hostname"], b"")?;
    assert!(
        out.status.success() && text(&out.stdout).trim() == "box",
        "{out:?}"
    );
    let (code, out, err) =
        edge.exec_local(&["box", "--", "sh", "-c", "echo local; exit 4"], b"")?;
    assert_eq!((code, out.as_str()), (4, "local\n"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_is_refused_clearly() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    // A node of today, asked over SPDY (kubectl's fallback, forced here): refused, saying what
    // is served.
    let _edge = Edge::join_and_start(&cloud, "edge-b", &[]).await?;
    cloud.wait_node_ready("edge-b", DEADLINE).await?;
    cloud
        .create_pod(process_pod("current", "edge-b", &["sleep", "300"]))
        .await?;
    cloud.wait_running("current", DEADLINE).await?;
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(["exec", "current", "--", "true"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()?;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("serves exec over WebSocket only"), "{err}");
    // The same command over the WebSocket runs.
    let out = kubectl_run(&cloud, &["exec", "current", "--", "true"], b"")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_follows_a_containers_output_until_it_ends() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "edge-c", &[]).await?;
    cloud.wait_node_ready("edge-c", DEADLINE).await?;
    let flags = tempfile::tempdir()?;
    let flag = flags.path().join("go");
    let script = format!(
        "while [ ! -f {f} ]; do echo tick; sleep 0.2; done; echo after; sleep 0.5; echo bye",
        f = flag.display()
    );
    let mut pod = process_pod("talker", "edge-c", &["sh", "-c", &script]);
    pod["spec"]["restartPolicy"] = json!("Never");
    cloud.create_pod(pod).await?;
    cloud.wait_running("talker", DEADLINE).await?;
    // Output from the moment of attaching on: a tick, then what the flag releases, and kubectl
    // ends with the container.
    let mut attached = Running::start(&cloud, &["attach", "talker"])?;
    attached.wait_line("tick")?;
    std::fs::write(&flag, b"")?;
    attached.wait_line("after")?;
    attached.wait_line("bye")?;
    let (status, err) = attached.wait_exit()?;
    assert!(
        status.success(),
        "kubectl attach of an ended container: {status} {err}"
    );

    Ok(())
}
