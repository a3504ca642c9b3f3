//! Streams to a node whose link is cut (issue #13), with a real network cut: the edge in a
//! network namespace of its own, every packet between it and the cloud dropped. The hub has
//! not yet dropped the node's session (its idle timeout is a minute, on both ends), so the cut
//! is news to it; `kubectl logs` and `kubectl exec` must still end at once with a 503 that says
//! the link appears cut, never hang until the session times out, and streams already open when
//! the cut comes end with an error that says so. After the heal both work again.

use anyhow::{ensure, Result};
use skerry_tests::netns::Net;
use skerry_tests::*;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The hub's idle timeout as deployed (a minute), not the tests' 4 s: the cut must be news to
/// the hub when the streams meet it.
fn minute_idle() -> CloudOptions {
    CloudOptions {
        idle_timeout_secs: Some(60),
        ..CloudOptions::default()
    }
}

/// A cloud and an edge `cut-edge` in a namespace of its own (both with a minute of idle
/// timeout), running the pod `talker`, which prints `tick` every second.
async fn talker_behind_a_cuttable_link(
    net: &Net,
) -> Result<(impl Sized, Cloud, netns::Host, Edge)> {
    let (cloud_host, cloud) = Cloud::start_on(net, minute_idle()).await?;
    let host = net.host("e")?;
    let mut edge = Edge::join_and_start_in(&cloud, "cut-edge", host.place(), None, None).await?;
    // QUIC takes the shorter of the two ends' idle timeouts: the edge's must be a minute too.
    edge.kill9();
    edge.idle_timeout_secs = 60;
    edge.start()?;
    cloud.wait_node_ready("cut-edge", LONG).await?;
    cloud
        .create_pod(process_pod(
            "talker",
            "cut-edge",
            &["sh", "-c", "while true; do echo tick; sleep 1; done"],
        ))
        .await?;
    cloud.wait_running("talker", LONG).await?;
    Ok((cloud_host, cloud, host, edge))
}

fn kubectl(cloud: &Cloud, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new("timeout")
        .arg("30")
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(cloud.kubeconfig_path())
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_exec_to_a_node_cut_off_get_a_503_saying_so_and_work_after_the_heal() -> Result<()>
{
    if !netns::should_run()? {
        return Ok(());
    }
    let net = Net::new()?;
    let (_cloud_host, cloud, host, edge) = talker_behind_a_cuttable_link(&net).await?;
    let (ok, log, err) = kubectl(&cloud, &["logs", "talker", "--tail", "1"])?;
    ensure!(
        ok && log.contains("tick"),
        "logs before the cut: {log}{err}"
    );

    host.isolate()?;
    let (ok, _, err) = kubectl(&cloud, &["logs", "talker", "--tail", "1"])?;
    ensure!(!ok, "logs served through a cut link: {err}");
    ensure!(
        err.contains("appears cut") && err.contains("cut-edge"),
        "the logs refusal names the node and the cut: {err}{}",
        edge.log_tail()
    );
    let (ok, _, err) = kubectl(&cloud, &["exec", "talker", "--", "true"])?;
    ensure!(!ok, "exec through a cut link: {err}");
    ensure!(
        err.contains("appears cut"),
        "the exec refusal says the link is cut: {err}"
    );

    net.heal_all()?;
    eventually("logs again after the heal", LONG, || async {
        let (ok, log, _) = kubectl(&cloud, &["logs", "talker", "--tail", "1"])?;
        Ok((ok && log.contains("tick")).then_some(()))
    })
    .await?;
    let (ok, _, err) = kubectl(&cloud, &["exec", "talker", "--", "true"])?;
    ensure!(ok, "exec after the heal: {err}");
    Ok(())
}

/// A `kubectl` left running, its stderr kept in a file and its stdout read to the end.
struct Running {
    child: std::process::Child,
    stderr: tempfile::NamedTempFile,
    stdout: std::thread::JoinHandle<String>,
}

impl Running {
    /// Starts `kubectl ARGS` (killed after 45 s, well under the hub's minute of idle timeout,
    /// so only the cut watch can end it with its own message) and waits for its first line.
    fn start(cloud: &Cloud, args: &[&str]) -> Result<Self> {
        use std::io::BufRead;
        let stderr = tempfile::NamedTempFile::new()?;
        let mut child = Command::new("timeout")
            .arg("45")
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(cloud.kubeconfig_path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.reopen()?)
            .spawn()?;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        ensure!(!first.is_empty(), "kubectl {args:?} printed nothing");
        // Keep reading so the pod's output never blocks kubectl.
        let stdout = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
            rest
        });
        Ok(Self {
            child,
            stderr,
            stdout,
        })
    }

    /// Waits for the exit: (success, the last lines of stdout and stderr, seconds waited).
    fn wait(mut self) -> Result<(bool, String, u64)> {
        let started = std::time::Instant::now();
        let status = self.child.wait()?;
        let stdout = self.stdout.join().unwrap_or_default();
        let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
        Ok((
            status.success(),
            format!(
                "stdout ends {tail:?}; stderr: {}",
                std::fs::read_to_string(self.stderr.path())?
            ),
            started.elapsed().as_secs(),
        ))
    }
}

/// A stream already open when the network cuts the link ends with an error that says so,
/// seconds after the cut, while the hub's session to the node would wait a minute for QUIC's
/// idle timeout: the hub probes a quiet link under open streams and ends them when nothing
/// answers. Both kinds of flow: a log that the node sends (`logs -f`), and an exec whose
/// command prints every second with the client's stdin open.
#[tokio::test(flavor = "multi_thread")]
async fn streams_open_when_the_link_is_cut_end_with_an_error_saying_so() -> Result<()> {
    if !netns::should_run()? {
        return Ok(());
    }
    let net = Net::new()?;
    let (_cloud_host, cloud, host, edge) = talker_behind_a_cuttable_link(&net).await?;

    let logs = Running::start(&cloud, &["logs", "-f", "talker"])?;
    let exec = Running::start(
        &cloud,
        &[
            "exec",
            "-i",
            "talker",
            "--",
            "sh",
            "-c",
            "while true; do echo still; sleep 1; done",
        ],
    )?;
    host.isolate()?;
    for (what, running) in [("logs -f", logs), ("exec -i", exec)] {
        let (ok, err, secs) = running.wait()?;
        ensure!(!ok, "kubectl {what} went on through a cut link: {err}");
        ensure!(
            err.contains("appears cut") && err.contains("cut-edge"),
            "kubectl {what} ended after {secs} s, saying why (the cut, the node): {err}{}",
            edge.log_tail()
        );
    }
    net.heal_all()?;
    eventually("logs again after the heal", LONG, || async {
        let (ok, log, _) = kubectl(&cloud, &["logs", "talker", "--tail", "1"])?;
        Ok((ok && log.contains("tick")).then_some(()))
    })
    .await?;
    Ok(())
}
