//! The `cri` runtime against a real containerd: a private one per test (own socket, root, state
//! and CNI bridge/subnet) from the harness in `skerry-tests`, with the registry-free images of
//! `deploy/images/build.sh`. Skipped, with a message, only when containerd is not installed and `CI` is not `true`; under CI a missing containerd fails.

mod support;

use edgecore::pods::{BackoffPolicy, PodManager, PodManagerConfig, StatusSink};
use edgecore::runtime::cri::{CriConfig, CriRuntime};
use edgecore::runtime::{ContainerConfig, ContainerRunState, Runtime, RuntimeError, Sandbox};
use edgecore::volumes::Volumes;
use protocol::pod::{
    EdgeContainer, EdgePod, Probe, ProbeAction, Resources, RestartPolicy, Volume, VolumeMount,
    VolumeSource,
};
use protocol::status::{ContainerState, PodPhase, PodStatus};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::eventually;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

/// The content of `path` once it equals `want`, or what it holds after [`WAIT`].
async fn file_becomes(path: &Path, want: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = std::fs::read_to_string(path).unwrap_or_default();
        if seen == want || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn container(name: &str, script: &str) -> EdgeContainer {
    support::sh(name, BUSYBOX_IMAGE, script)
}

fn pod(uid: &str, containers: Vec<EdgeContainer>) -> EdgePod {
    EdgePod {
        namespace: "edge".into(),
        ..support::pod(uid, containers)
    }
}

fn config(attempt: u32, env: &[(&str, &str)]) -> ContainerConfig {
    ContainerConfig {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        attempt,
        mounts: vec![],
    }
}

async fn runtime(socket: &Path, data: &Path, instance: &str, rpc: Duration) -> CriRuntime {
    let mut cfg = CriConfig::new(
        socket.to_path_buf(),
        data.join("pods"),
        instance.to_string(),
    );
    cfg.rpc_timeout = rpc;
    cfg.pull_timeout = Duration::from_secs(30);
    CriRuntime::connect(cfg)
        .await
        .expect("connect to containerd")
}

async fn wait_state<F>(
    rt: &CriRuntime,
    sb: &Sandbox,
    id: &str,
    what: &str,
    ok: F,
) -> ContainerRunState
where
    F: Fn(&ContainerRunState) -> bool,
{
    let end = Instant::now() + WAIT;
    loop {
        let state = rt.container_state(sb, id).await.expect("container_state");
        if ok(&state) {
            return state;
        }
        assert!(Instant::now() < end, "{id} never became {what}: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_exited(rt: &CriRuntime, sb: &Sandbox, id: &str) -> ContainerRunState {
    wait_state(rt, sb, id, "exited", |s| {
        matches!(s, ContainerRunState::Exited { .. })
    })
    .await
}

/// An HTTP GET of `/` over a plain TCP connection.
async fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    Ok(out)
}

/// The sandbox's network namespace path and the pid of its sandbox process, from containerd's
/// verbose status.
async fn sandbox_details(ctrd: &Containerd, id: &str) -> (String, i64) {
    let mut cri = ctrd.cri().await.expect("cri");
    let info = cri
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner()
        .info;
    let json: serde_json::Value =
        serde_json::from_str(info.get("info").expect("info")).expect("json");
    let netns = json["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .unwrap_or_default()
        .to_string();
    (netns, json["pid"].as_i64().unwrap_or(0))
}

/// The address this host uses towards the outside (no packet is sent).
fn host_ip() -> Option<std::net::IpAddr> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn containerd_pid(ctrd: &Containerd) -> Option<i32> {
    let config = ctrd
        .dir()
        .join("config.toml")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("containerd\0") && cmd.contains(&config)).then_some(pid)
    })
}

/// Whether every thread of `pid` is stopped (state `T` in each `/proc/PID/task/*/stat`).
fn process_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
            })
            .is_some_and(|state| state == "T" || state == "t")
    })
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// A containerd this test restarted itself (the harness knows only the one it started): killed
/// when dropped, after the harness has cleaned up through it.
struct Restarted(Option<Child>);

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // Its own process group (see the spawn): containerd and anything it left in it.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_runtime_runs_pods_in_containerd() {
    if !containerd::require() {
        return;
    }
    // Declared first, dropped last: the harness below cleans up through this containerd.
    let mut restarted = Restarted(None);
    let ctrd = Containerd::start().await.expect("containerd starts");
    let data = tempfile::tempdir().expect("data dir");
    let other = tempfile::tempdir().expect("second data dir");
    let rt = runtime(&ctrd.socket, data.path(), "inst-a", Duration::from_secs(20)).await;
    let stranger = runtime(
        &ctrd.socket,
        other.path(),
        "inst-b",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        rt.version().starts_with("containerd://1."),
        "{}",
        rt.version()
    );

    // --- A web server: sandbox IP, env, HTTP on the pod IP, idempotent starts.
    let web = container(
        "web",
        "mkdir -p /www && echo \"$GREETING\" > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    let logger = container(
        "logger",
        "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; printf 'no newline'",
    );
    let mut web = web;
    let host_port = skerry_tests::free_tcp_port();
    web.ports = vec![protocol::pod::ContainerPort {
        name: "http".into(),
        container_port: 8080,
        host_port,
        protocol: "TCP".into(),
    }];
    let p = pod("web-1", vec![web.clone(), logger.clone()]);
    let t0 = Instant::now();
    let sb = rt.run_sandbox(&p).await.expect("run_sandbox");
    let t_sandbox = t0.elapsed();
    let t1 = Instant::now();
    let info = rt
        .start_container(&sb, &p, &web, &config(0, &[("GREETING", "hello-skerry")]))
        .await
        .expect("start web");
    let t_container = t1.elapsed();
    println!(
        "timing: RunPodSandbox (+status) {:?}, image check + CreateContainer + StartContainer {:?}",
        t_sandbox, t_container
    );
    let prefix = ctrd
        .subnet
        .rsplit_once('.')
        .map(|(p, _)| p)
        .unwrap_or_default();
    assert!(
        sb.ip.starts_with(prefix),
        "pod IP {} not in {}",
        sb.ip,
        ctrd.subnet
    );
    assert!(
        matches!(info.state, ContainerRunState::Running { started_at_ms } if started_at_ms > 0),
        "{info:?}"
    );
    assert_eq!((info.name.as_str(), info.attempt), ("web", 0));
    assert_eq!(
        info.spec_digest,
        Some(edgecore::runtime::container_digest(&web))
    );
    let again = rt.run_sandbox(&p).await.expect("run_sandbox again");
    assert_eq!(again, sb, "run_sandbox is idempotent");
    let adopted = rt
        .start_container(&sb, &p, &web, &config(0, &[("GREETING", "hello-skerry")]))
        .await
        .expect("start web again");
    assert_eq!(adopted.id, info.id, "a repeated start adopts the instance");
    let addr = format!("{}:8080", sb.ip);
    let body = eventually("httpd to answer on the pod IP", WAIT, || {
        let addr = addr.clone();
        async move {
            Ok(http_get(&addr)
                .await
                .ok()
                .filter(|b| b.contains("hello-skerry")))
        }
    })
    .await
    .expect("http");
    assert!(body.starts_with("HTTP/1."), "{body}");
    // hostPort: the portmap plugin forwards the host's port to the pod.
    match host_ip() {
        Some(host) => {
            let via_host = format!("{host}:{host_port}");
            eventually("httpd to answer on the host port", WAIT, || {
                let addr = via_host.clone();
                async move {
                    Ok(http_get(&addr)
                        .await
                        .ok()
                        .filter(|b| b.contains("hello-skerry")))
                }
            })
            .await
            .expect("hostPort");
        }
        None => println!("SKIPPED (hostPort): this host has no default route to find its own IP"),
    }

    // --- exec_sync: output, exit codes, timeouts.
    let out = rt
        .exec_sync(
            &sb,
            &info.id,
            &["cat".into(), "/www/index.html".into()],
            Duration::from_secs(5),
        )
        .await
        .expect("exec cat");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.timed_out),
        (0, &b"hello-skerry\n"[..], false)
    );
    let out = rt
        .exec_sync(
            &sb,
            &info.id,
            &["sh".into(), "-c".into(), "echo err >&2; exit 3".into()],
            Duration::from_secs(5),
        )
        .await
        .expect("exec exit 3");
    assert_eq!((out.exit_code, out.stderr.as_slice()), (3, &b"err\n"[..]));
    let t = Instant::now();
    let out = rt
        .exec_sync(
            &sb,
            &info.id,
            &["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await
        .expect("exec sleep");
    assert!(out.timed_out, "{out:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "exec timeout took {:?}",
        t.elapsed()
    );

    // --- Logs: partial lines joined, stdout and stderr interleaved, tail.
    let log_info = rt
        .start_container(&sb, &p, &logger, &config(0, &[]))
        .await
        .expect("start logger");
    let log = eventually("the logger's output", WAIT, || {
        let (rt, sb) = (&rt, &sb);
        async move {
            let text = rt.read_log(sb, "logger", Some(3)).await?;
            Ok(text.contains("no newline").then_some(text))
        }
    })
    .await
    .expect("log");
    // stdout and stderr are separate pipes, so where `oops` lands among the stdout lines is
    // not fixed; the tail is the end of the whole log, stdout keeps its order, and the line
    // without a newline is complete.
    let all = rt.read_log(&sb, "logger", None).await.expect("whole log");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 7, "{all:?}");
    assert_eq!(log, format!("{}\n", lines[4..].join("\n")), "{all:?}");
    let stdout: Vec<&str> = lines.iter().copied().filter(|l| *l != "oops").collect();
    assert_eq!(
        stdout,
        vec![
            "line 1",
            "line 2",
            "line 3",
            "line 4",
            "line 5",
            "no newline"
        ]
    );
    assert!(data.path().join("pods/web-1/logs/logger/0.log").exists());

    // `edgecore logs` finds the pod through containerd with the data dir's instance id.
    std::fs::write(data.path().join("runtime-instance"), "inst-a\n").expect("instance file");
    let out = Command::new(env!("CARGO_BIN_EXE_edgecore"))
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "logs",
            "edge/pod-web-1",
            "-c",
            "logger",
            "--tail",
            "3",
            "--runtime",
            "cri",
        ])
        .arg("--cri-socket")
        .arg(&ctrd.socket)
        .output()
        .expect("edgecore logs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same records, printed as kubelet prints them: the last stdout record is partial (the
    // container ended without a newline, containerd tags it `P`), so it gets no newline of its
    // own and runs into whatever record follows it in the file (here perhaps stderr's `oops`,
    // whose place among the stdout lines is not fixed); the runtime's own `read_log` joins
    // partials per stream and ends each line with a newline.
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let without_oops = |s: &str| s.replace("oops\n", "").replace("oops", "");
    assert_eq!(
        without_oops(&shown),
        without_oops(&log).trim_end_matches('\n'),
        "edgecore logs {shown:?}, read_log {log:?}"
    );
    assert_eq!(shown.contains("oops"), log.contains("oops"));

    // --- Log rotation: a log over the limit moves to `.1` and containerd opens a fresh one.
    let chatty = container(
        "chatty",
        "i=0; while [ $i -lt 20000 ]; do echo \"chatty line $i\"; i=$((i+1)); done; exec sleep 3600",
    );
    let cp = pod("chatty-1", vec![chatty.clone()]);
    let csb = rt.run_sandbox(&cp).await.expect("sandbox");
    rt.start_container(&csb, &cp, &chatty, &config(0, &[]))
        .await
        .expect("chatty");
    let chatty_log = data.path().join("pods/chatty-1/logs/chatty/0.log");
    eventually("the chatty log to grow", WAIT, || {
        let path = chatty_log.clone();
        async move {
            Ok(std::fs::metadata(&path)
                .ok()
                .filter(|m| m.len() >= 64 * 1024)
                .map(|_| ()))
        }
    })
    .await
    .expect("log grows");
    assert_eq!(rt.rotate_logs(64 * 1024).await.expect("rotate"), 1);
    assert!(data
        .path()
        .join("pods/chatty-1/logs/chatty/0.log.1")
        .exists());
    let tail = eventually("the last lines after the rotation", WAIT, || {
        let (rt, csb) = (&rt, &csb);
        async move {
            let text = rt.read_log(csb, "chatty", Some(3)).await?;
            Ok(text.contains("chatty line 19999").then_some(text))
        }
    })
    .await
    .expect("tail");
    assert_eq!(
        tail,
        "chatty line 19997\nchatty line 19998\nchatty line 19999\n"
    );
    let reopened = std::fs::metadata(&chatty_log).expect("a fresh log").len();
    let previous = std::fs::metadata(data.path().join("pods/chatty-1/logs/chatty/0.log.1"))
        .expect("rotated")
        .len();
    assert!(previous >= 64 * 1024, "{previous}");
    println!("rotation: previous generation {previous} bytes, fresh log {reopened} bytes");
    rt.remove_sandbox(&csb, Duration::from_secs(1))
        .await
        .expect("remove chatty");

    // --- list_pods: this instance's pods only.
    let pods = rt.list_pods().await.expect("list_pods");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        (pods[0].namespace.as_str(), pods[0].name.as_str()),
        ("edge", "pod-web-1")
    );
    assert_eq!(pods[0].sandbox, sb);
    let listed: Vec<(&str, &str, u32)> = pods[0]
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.id.as_str(), c.attempt))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("logger", log_info.id.as_str(), 0),
            ("web", info.id.as_str(), 0)
        ]
    );
    assert!(pods[0].containers.iter().all(|c| c.spec_digest.is_some()));
    assert!(
        stranger
            .list_pods()
            .await
            .expect("stranger lists")
            .is_empty(),
        "another instance's pods are not listed"
    );

    // --- Stops: a TERM handler gets its grace; what ignores TERM is killed after the grace.
    let polite = container(
        "polite",
        "trap 'echo bye; exit 7' TERM; while true; do sleep 0.1; done",
    );
    let stubborn = container("stubborn", "exec sleep 3600");
    let sp = pod("stop-1", vec![polite.clone(), stubborn.clone()]);
    let ssb = rt.run_sandbox(&sp).await.expect("sandbox");
    let a = rt
        .start_container(&ssb, &sp, &polite, &config(0, &[]))
        .await
        .expect("polite");
    let b = rt
        .start_container(&ssb, &sp, &stubborn, &config(0, &[]))
        .await
        .expect("stubborn");
    tokio::time::sleep(Duration::from_millis(300)).await; // Let sh install its trap.
    let t = Instant::now();
    rt.stop_container(&ssb, &a.id, Duration::from_secs(10))
        .await
        .expect("stop polite");
    let took = t.elapsed();
    match rt.container_state(&ssb, &a.id).await.expect("state") {
        ContainerRunState::Exited {
            exit_code, reason, ..
        } => assert_eq!((exit_code, reason.as_str()), (7, "Error")),
        other => panic!("{other:?}"),
    }
    assert!(
        took < Duration::from_secs(5),
        "a TERM handler that exits at once took {took:?}"
    );
    let t = Instant::now();
    rt.stop_container(&ssb, &b.id, Duration::from_secs(1))
        .await
        .expect("stop stubborn");
    let took = t.elapsed();
    match rt.container_state(&ssb, &b.id).await.expect("state") {
        ContainerRunState::Exited { exit_code, .. } => assert_eq!(exit_code, 137),
        other => panic!("{other:?}"),
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "kill after grace took {took:?}"
    );
    rt.stop_container(&ssb, &b.id, Duration::from_secs(1))
        .await
        .expect("stopping again is fine");
    rt.remove_container(&ssb, &b.id).await.expect("remove");
    rt.remove_container(&ssb, &b.id)
        .await
        .expect("removing again is fine");
    assert!(matches!(
        rt.container_state(&ssb, &b.id).await.expect("state"),
        ContainerRunState::Unknown { .. }
    ));

    // --- Exit codes.
    let fails = container("fails", "exit 3");
    let works = container("works", "true");
    let ep = pod("exit-1", vec![fails.clone(), works.clone()]);
    let esb = rt.run_sandbox(&ep).await.expect("sandbox");
    let f = rt
        .start_container(&esb, &ep, &fails, &config(0, &[]))
        .await
        .expect("fails");
    let w = rt
        .start_container(&esb, &ep, &works, &config(0, &[]))
        .await
        .expect("works");
    match wait_exited(&rt, &esb, &f.id).await {
        ContainerRunState::Exited {
            exit_code,
            reason,
            started_at_ms,
            finished_at_ms,
            ..
        } => {
            assert_eq!((exit_code, reason.as_str()), (3, "Error"));
            assert!(started_at_ms > 0 && finished_at_ms >= started_at_ms);
        }
        other => panic!("{other:?}"),
    }
    match wait_exited(&rt, &esb, &w.id).await {
        ContainerRunState::Exited {
            exit_code, reason, ..
        } => assert_eq!((exit_code, reason.as_str()), (0, "Completed")),
        other => panic!("{other:?}"),
    }
    // A start retried after its instance already ran reports that run instead of running twice.
    let replay = rt
        .start_container(&esb, &ep, &fails, &config(0, &[]))
        .await
        .expect("replayed start");
    assert_eq!(replay.id, f.id);
    assert!(matches!(
        replay.state,
        ContainerRunState::Exited { exit_code: 3, .. }
    ));

    // --- A bad command is a CreateContainerError, and leaves no container behind.
    let mut missing = container("missing", "");
    missing.command = vec!["/no/such/program".into()];
    let mp = pod("exit-1", vec![missing.clone()]);
    match rt
        .start_container(&esb, &mp, &missing, &config(0, &[]))
        .await
    {
        Err(e @ RuntimeError::CreateContainer { .. }) => {
            assert_eq!(e.waiting_reason(), "CreateContainerError");
            assert!(e.to_string().contains("/no/such/program"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // --- Images: Never + missing, IfNotPresent + unreachable registry.
    let mut never = container("never", "true");
    never.image = "skerry.local/missing:1.0".into();
    let ip = pod("img-1", vec![never.clone()]);
    let isb = rt.run_sandbox(&ip).await.expect("sandbox");
    match rt.start_container(&isb, &ip, &never, &config(0, &[])).await {
        Err(e @ RuntimeError::Image { .. }) => {
            assert_eq!(e.waiting_reason(), "ErrImageNeverPull");
            assert!(e.to_string().contains("edgecore image import"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let mut pulled = never.clone();
    pulled.image_pull_policy = "IfNotPresent".into();
    pulled.image = "skerry-no-such-registry.invalid/missing:1.0".into();
    match rt
        .start_container(&isb, &ip, &pulled, &config(0, &[]))
        .await
    {
        Err(e @ RuntimeError::Image { .. }) => {
            assert_eq!(e.waiting_reason(), "ErrImagePull");
            assert!(e.to_string().contains("edgecore image import"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Always with a failed pull runs the local copy: an offline edge keeps its pods.
    let mut always = container("always", "true");
    always.image_pull_policy = "Always".into();
    let al = rt
        .start_container(&isb, &ip, &always, &config(0, &[]))
        .await
        .expect("Always falls back to the local image");
    wait_exited(&rt, &isb, &al.id).await;

    // --- OOM: a memory limit that is exceeded ends in OOMKilled.
    let mut hog = container("hog", "a=xxxxxxxx; while true; do a=\"$a$a\"; done");
    hog.resources = Resources {
        memory_limit_bytes: Some(32 << 20),
        ..Default::default()
    };
    let hp = pod("oom-1", vec![hog.clone()]);
    let hsb = rt.run_sandbox(&hp).await.expect("sandbox");
    let h = rt
        .start_container(&hsb, &hp, &hog, &config(0, &[]))
        .await
        .expect("hog");
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        match wait_exited(&rt, &hsb, &h.id).await {
            ContainerRunState::Exited {
                exit_code, reason, ..
            } => {
                assert_eq!((exit_code, reason.as_str()), (137, "OOMKilled"))
            }
            other => panic!("{other:?}"),
        }
    } else {
        println!("SKIPPED (OOM): no cgroup v1 memory controller at /sys/fs/cgroup/memory");
    }

    // --- A hung containerd: calls end at their deadline with an error naming the socket.
    let quick = runtime(&ctrd.socket, data.path(), "inst-a", Duration::from_secs(2)).await;
    let pid = containerd_pid(&ctrd).expect("containerd pid");
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    // The kernel stops every thread asynchronously; call only once it reports them stopped, or
    // a thread still running on a loaded machine can answer.
    eventually("containerd to be stopped", WAIT, || async {
        Ok(process_stopped(pid).then_some(()))
    })
    .await
    .expect("containerd stops");
    let t = Instant::now();
    let hung = quick.container_state(&sb, &info.id).await;
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    match hung {
        Err(e @ RuntimeError::Internal { .. }) => {
            assert!(
                e.to_string().contains(&ctrd.socket.display().to_string()),
                "{e}"
            )
        }
        other => panic!("a hung containerd answered: {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "hung call took {:?}",
        t.elapsed()
    );

    // --- A containerd restart: pods keep running, the same runtime reconnects by itself.
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    eventually("containerd to die", WAIT, || async {
        Ok(containerd_pid(&ctrd).is_none().then_some(()))
    })
    .await
    .expect("containerd dies");
    let log = std::fs::File::create(ctrd.dir().join("containerd-restarted.log")).expect("log");
    restarted.0 = Some({
        use std::os::unix::process::CommandExt;
        Command::new("containerd")
            .arg("--config")
            .arg(ctrd.dir().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("restart containerd")
    });
    let state = eventually("the restarted containerd to answer", WAIT, || {
        let (rt, sb, id) = (&rt, &sb, info.id.clone());
        async move { Ok(rt.container_state(sb, &id).await.ok()) }
    })
    .await
    .expect("reconnect");
    assert!(
        matches!(state, ContainerRunState::Running { .. }),
        "web after the restart: {state:?}"
    );
    assert!(http_get(&addr)
        .await
        .expect("httpd after restart")
        .contains("hello-skerry"));

    // --- A dead sandbox (its process died, as after a reboot) is replaced, not adopted.
    let (_, sandbox_pid) = sandbox_details(&ctrd, &hsb.id).await;
    assert!(sandbox_pid > 0);
    signal(sandbox_pid as i32, nix::sys::signal::Signal::SIGKILL);
    let pods = eventually("the dead sandbox to leave the listing", WAIT, || {
        let rt = &rt;
        async move {
            let pods = rt.list_pods().await?;
            Ok((!pods.iter().any(|p| p.sandbox.pod_uid == "oom-1")).then_some(pods))
        }
    })
    .await
    .expect("dead sandbox dropped");
    assert_eq!(pods.len(), 4, "web-1, stop-1, exit-1, img-1: {pods:?}");
    let fresh = rt.run_sandbox(&hp).await.expect("new sandbox");
    assert_ne!(fresh.id, hsb.id);
    assert!(!fresh.ip.is_empty());

    // --- Removal: nothing left in containerd, no network namespace, no log dir; idempotent.
    let (netns, _) = sandbox_details(&ctrd, &sb.id).await;
    assert!(
        netns.starts_with('/') && Path::new(&netns).exists(),
        "netns {netns:?}"
    );
    for (sandbox, grace) in [(&sb, 5), (&ssb, 1), (&esb, 1), (&isb, 1), (&fresh, 1)] {
        rt.remove_sandbox(sandbox, Duration::from_secs(grace))
            .await
            .expect("remove_sandbox");
    }
    rt.remove_sandbox(&sb, Duration::from_secs(1))
        .await
        .expect("removing again is fine");
    assert!(
        !Path::new(&netns).exists(),
        "netns {netns} outlived its pod"
    );
    assert!(
        !data.path().join("pods/web-1").exists(),
        "log dir outlived its pod"
    );
    assert!(rt.list_pods().await.expect("list").is_empty());
    let left = ctrd.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Statuses and removals the pod workers report, for the workers test below.
struct Sink(tokio::sync::mpsc::UnboundedSender<Result<PodStatus, String>>);

impl StatusSink for Sink {
    fn pod_status(&self, status: PodStatus) {
        let _ = self.0.send(Ok(status));
    }

    fn pod_forgotten(&self, _namespace: &str, name: &str) {
        let _ = self.0.send(Err(name.to_string()));
    }
    // These tests follow statuses; the events the workers record are checked by the report
    // module's tests and the e2e `pod_events` test.
    fn pod_event(&self, _pod: &edgecore::pods::PodRef, _occ: protocol::events::Occurrence) {}
}

type Reports = tokio::sync::mpsc::UnboundedReceiver<Result<PodStatus, String>>;

fn manager(rt: CriRuntime) -> (PodManager, Reports) {
    manager_with_volumes(rt, None)
}

/// Like [`manager`], keeping the pods' volumes in `volumes` (`<data-dir>/pods`) if given.
fn manager_with_volumes(rt: CriRuntime, volumes: Option<&Path>) -> (PodManager, Reports) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let config = PodManagerConfig {
        poll_interval: Duration::from_millis(100),
        backoff: BackoffPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
        },
        orphan_grace: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(5),
    };
    let m = PodManager::with_config(
        Arc::new(rt),
        Arc::new(Sink(tx)),
        "edge-1".into(),
        "192.0.2.7".into(),
        config,
    );
    match volumes {
        Some(root) => (m.with_volumes(Volumes::new(root.to_path_buf())), rx),
        None => (m, rx),
    }
}

/// Waits for a report satisfying `pred`.
async fn report<T>(
    rx: &mut Reports,
    what: &str,
    pred: impl Fn(&Result<PodStatus, String>) -> Option<T>,
) -> T {
    let end = Instant::now() + WAIT;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(r)) => {
                if let Some(v) = pred(&r) {
                    return v;
                }
                last = Some(r);
            }
            Ok(None) => panic!("sink closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; last report: {last:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_workers_restart_and_adopt_containers_over_cri() {
    if !containerd::require() {
        return;
    }
    let ctrd = Containerd::start().await.expect("containerd starts");
    let data = tempfile::tempdir().expect("data dir");
    // Crashes once, then serves: /dev/shm belongs to the sandbox, so it outlives the instance.
    let mut p = pod(
        "w-crash",
        vec![container(
            "main",
            "if [ -e /dev/shm/crashed ]; then echo serving; exec sleep 3600; fi; \
             touch /dev/shm/crashed; exit 1",
        )],
    );
    p.restart_policy = RestartPolicy::Always;

    let (m, mut rx) =
        manager(runtime(&ctrd.socket, data.path(), "inst-w", Duration::from_secs(20)).await);
    m.sync(vec![p.clone()]).await;
    let first = report(&mut rx, "running after one restart", |r| {
        r.as_ref()
            .ok()
            .filter(|s| {
                s.containers.first().is_some_and(|c| {
                    c.restart_count == 1 && matches!(c.state, ContainerState::Running { .. })
                })
            })
            .cloned()
    })
    .await;
    let prefix = ctrd
        .subnet
        .rsplit_once('.')
        .map(|(p, _)| p)
        .unwrap_or_default();
    assert!(
        first.pod_ip.starts_with(prefix),
        "pod IP {:?}",
        first.pod_ip
    );
    assert_eq!(first.phase, PodPhase::Running);
    let id = first.containers[0].container_id.clone();
    assert!(
        matches!(
            first.containers[0].last_state,
            Some(ContainerState::Terminated { exit_code: 1, .. })
        ),
        "{:?}",
        first.containers[0].last_state
    );
    m.shutdown().await;

    // A new edgecore (manager and runtime) adopts the running instance: same id, same restarts.
    let rt = runtime(&ctrd.socket, data.path(), "inst-w", Duration::from_secs(20)).await;
    let listed = rt.list_pods().await.expect("list");
    assert_eq!(listed.len(), 1);
    // The crashed instance was removed once its successor ran.
    assert_eq!(listed[0].containers.len(), 1, "{:?}", listed[0].containers);
    let (m, mut rx) = manager(rt);
    m.sync(vec![p.clone()]).await;
    let adopted = report(&mut rx, "adopted", |r| {
        r.as_ref()
            .ok()
            .filter(|s| s.phase == PodPhase::Running)
            .cloned()
    })
    .await;
    assert_eq!(adopted.containers[0].container_id, id);
    assert_eq!(adopted.containers[0].restart_count, 1);
    assert_eq!(adopted.pod_ip, first.pod_ip);

    // A failing exec liveness probe (ExecSync through CRI) restarts the container.
    let mut flaky = container(
        "main",
        "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 600",
    );
    flaky.liveness_probe = Some(Probe {
        action: ProbeAction::Exec {
            // /usr/bin/test: an applet link outside /bin, found through the image's PATH.
            command: vec!["test".into(), "-f".into(), "/tmp/healthy".into()],
        },
        initial_delay_seconds: 0,
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: 2,
        termination_grace_period_seconds: Some(1),
    });
    let mut lp = pod("w-live", vec![flaky]);
    lp.restart_policy = RestartPolicy::Always;
    m.sync(vec![p.clone(), lp.clone()]).await;
    let restarted = report(&mut rx, "a liveness restart", |r| {
        r.as_ref()
            .ok()
            .filter(|s| {
                s.uid == "w-live" && s.containers.first().is_some_and(|c| c.restart_count >= 1)
            })
            .cloned()
    })
    .await;
    assert!(
        matches!(
            restarted.containers[0].last_state,
            Some(ContainerState::Terminated { .. })
        ),
        "{:?}",
        restarted.containers[0].last_state
    );

    // Dropped from the desired set: stopped, removed, nothing left.
    m.sync(vec![]).await;
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 2 {
        let name = report(&mut rx, "the pods forgotten", |r| r.as_ref().err().cloned()).await;
        gone.insert(name);
    }
    assert_eq!(
        gone,
        ["pod-w-crash".to_string(), "pod-w-live".to_string()].into()
    );
    let left = ctrd.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!data.path().join("pods/w-crash").exists());
}

/// Every sandbox containerd holds for pod `uid`: (id, attempt, ready).
async fn sandboxes_of(ctrd: &Containerd, uid: &str) -> Vec<(String, u32, bool)> {
    let mut cri = ctrd.cri().await.expect("cri");
    cri.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default())
        .await
        .expect("list sandboxes")
        .into_inner()
        .items
        .into_iter()
        .filter_map(|s| {
            let m = s.metadata?;
            let ready = s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32;
            (m.uid == uid).then_some((s.id, m.attempt, ready))
        })
        .collect()
}

/// kubelet's behaviour for a sandbox that dies under a running pod (its pause process killed):
/// the pod's containers are stopped and started again in a new sandbox (attempt + 1), with a new
/// IP and their restart counts up by one; the pod's emptyDir keeps its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_workers_replace_a_sandbox_that_died_over_cri() {
    if !containerd::require() {
        return;
    }
    let ctrd = Containerd::start().await.expect("containerd starts");
    let data = tempfile::tempdir().expect("data dir");
    let pods_root = data.path().join("pods");
    // `sleep` as the container's init ignores SIGTERM: the stop kills it after the grace.
    let mut main = container("main", "echo run >> /scratch/runs; exec sleep 3600");
    main.volume_mounts = vec![VolumeMount {
        name: "scratch".into(),
        mount_path: "/scratch".into(),
        read_only: false,
        sub_path: String::new(),
    }];
    let mut p = pod("w-sbx", vec![main]);
    p.restart_policy = RestartPolicy::Always;
    p.termination_grace_period_seconds = 1;
    p.volumes = vec![Volume {
        name: "scratch".into(),
        source: VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: None,
        },
    }];
    let running = |restarts: u32| {
        move |r: &Result<PodStatus, String>| {
            r.as_ref()
                .ok()
                .filter(|s| {
                    !s.pod_ip.is_empty()
                        && s.containers.first().is_some_and(|c| {
                            c.restart_count == restarts
                                && matches!(c.state, ContainerState::Running { .. })
                        })
                })
                .cloned()
        }
    };

    let rt = runtime(&ctrd.socket, data.path(), "inst-s", Duration::from_secs(20)).await;
    let (m, mut rx) = manager_with_volumes(rt, Some(&pods_root));
    m.sync(vec![p.clone()]).await;
    let first = report(&mut rx, "the pod running", running(0)).await;
    let old = sandboxes_of(&ctrd, "w-sbx").await;
    assert_eq!(old.len(), 1, "{old:?}");
    let (old_id, old_attempt, _) = old[0].clone();
    let runs = pods_root.join("w-sbx/volumes/scratch/runs");
    // (`Running` is reported when the container started, maybe before its shell appended.)
    assert_eq!(file_becomes(&runs, "run\n").await, "run\n");

    let (_, pause) = sandbox_details(&ctrd, &old_id).await;
    assert!(pause > 0);
    signal(pause as i32, nix::sys::signal::Signal::SIGKILL);
    let second = report(&mut rx, "the pod running in a new sandbox", running(1)).await;

    assert_eq!(second.phase, PodPhase::Running);
    assert_ne!(second.pod_ip, first.pod_ip, "the new sandbox has a new IP");
    let prefix = ctrd
        .subnet
        .rsplit_once('.')
        .map(|(p, _)| p)
        .unwrap_or_default();
    assert!(second.pod_ip.starts_with(prefix), "{}", second.pod_ip);
    let c = &second.containers[0];
    assert_ne!(c.container_id, first.containers[0].container_id);
    assert!(
        matches!(
            c.last_state,
            Some(ContainerState::Terminated { exit_code: 137, .. })
        ),
        "{:?}",
        c.last_state
    );
    // One sandbox: the new one, ready, the next attempt; the dead one is gone.
    let now = sandboxes_of(&ctrd, "w-sbx").await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].0, old_id);
    assert_eq!((now[0].1, now[0].2), (old_attempt + 1, true));
    // The emptyDir outlived the sandbox; both instances' logs are there.
    assert_eq!(
        file_becomes(&runs, "run\nrun\n").await,
        "run\nrun\n",
        "the emptyDir kept the first run's line"
    );
    for attempt in ["0.log", "1.log"] {
        assert!(
            pods_root.join("w-sbx/logs/main").join(attempt).exists(),
            "no {attempt}"
        );
    }

    // Removed: nothing left in containerd, on the network or in the data dir.
    m.sync(vec![]).await;
    report(&mut rx, "the pod forgotten", |r| {
        r.as_ref().err().filter(|n| *n == "pod-w-sbx").cloned()
    })
    .await;
    let left = ctrd.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!pods_root.join("w-sbx").exists());
}
