//! The `process` runtime against real processes, with edgecore's own binary as the shim.

mod support;

use edgecore::runtime::process::ProcessRuntime;
use edgecore::runtime::{
    ContainerConfig, ContainerInfo, ContainerRunState, Mount, Runtime, RuntimeError, Sandbox,
};
use protocol::pod::{EdgeContainer, EdgePod};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{pod, slow_shim};
use tokio::time::{sleep, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

fn runtime(root: &Path) -> ProcessRuntime {
    ProcessRuntime::new(
        root.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_edgecore")),
        "192.0.2.7".to_string(),
    )
}

fn container(name: &str, command: &[&str]) -> EdgeContainer {
    EdgeContainer {
        name: name.into(),
        image: "local/none".into(),
        image_pull_policy: "Never".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(name: &str, script: &str) -> EdgeContainer {
    container(name, &["sh", "-c", script])
}

fn config(attempt: u32) -> ContainerConfig {
    ContainerConfig {
        env: vec![],
        attempt,
        mounts: vec![],
    }
}

/// Sandbox plus the started first container.
async fn start(rt: &ProcessRuntime, pod: &EdgePod) -> (Sandbox, ContainerInfo) {
    let sandbox = rt.run_sandbox(pod).await.expect("run_sandbox");
    let info = rt
        .start_container(&sandbox, pod, &pod.containers[0], &config(0))
        .await
        .expect("start_container");
    (sandbox, info)
}

async fn wait_exited(rt: &ProcessRuntime, sandbox: &Sandbox, id: &str) -> ContainerRunState {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let state = rt
            .container_state(sandbox, id)
            .await
            .expect("container_state");
        if matches!(state, ContainerRunState::Exited { .. }) {
            return state;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {state:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_log(rt: &ProcessRuntime, sandbox: &Sandbox, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(log) = rt.read_log(sandbox, name, None).await {
            if log.contains(needle) {
                return log;
            }
        }
        assert!(
            Instant::now() < deadline,
            "log of {name} never contained {needle:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

fn exited(state: &ContainerRunState) -> (i32, Option<i32>, &str) {
    match state {
        ContainerRunState::Exited {
            exit_code,
            signal,
            reason,
            started_at_ms,
            finished_at_ms,
        } => {
            assert!(finished_at_ms >= started_at_ms);
            (*exit_code, *signal, reason.as_str())
        }
        other => panic!("not exited: {other:?}"),
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet: it runs nothing any more).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
            rest.split_whitespace().next() == Some("Z")
        }
    }
}

async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + TIMEOUT;
    while !gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        sleep(Duration::from_millis(20)).await;
    }
}

fn state_pids(root: &Path, id: &str) -> (u32, u32) {
    let bytes = std::fs::read(
        root.join(id.replacen('/', "/containers/", 1))
            .join("state.json"),
    )
    .expect("state.json");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("state json");
    (
        v["pid"].as_u64().expect("pid") as u32,
        v["shim_pid"].as_u64().expect("shim_pid") as u32,
    )
}

#[tokio::test]
async fn runs_logs_and_stops_gracefully_with_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-term", vec![sh("main", "echo hi; sleep 30")]);
    let (sandbox, info) = start(&rt, &p).await;
    assert_eq!(sandbox.ip, "192.0.2.7");
    assert_eq!(info.id, "u-term/main/0");
    assert!(matches!(info.state, ContainerRunState::Running { .. }));
    assert!(matches!(
        rt.container_state(&sandbox, &info.id).await.expect("state"),
        ContainerRunState::Running { .. }
    ));
    wait_log(&rt, &sandbox, "main", "hi").await;

    let t = Instant::now();
    rt.stop_container(&sandbox, &info.id, Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM was not honoured quickly"
    );
    let state = rt.container_state(&sandbox, &info.id).await.expect("state");
    assert_eq!(exited(&state), (143, Some(15), "Error"));
    // Idempotent.
    rt.stop_container(&sandbox, &info.id, Duration::from_secs(1))
        .await
        .expect("second stop");
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod(
        "u-kill",
        vec![sh("main", "trap '' TERM; echo ready; sleep 30")],
    );
    let (sandbox, info) = start(&rt, &p).await;
    wait_log(&rt, &sandbox, "main", "ready").await;
    let grace = Duration::from_millis(600);
    let t = Instant::now();
    rt.stop_container(&sandbox, &info.id, grace)
        .await
        .expect("stop");
    let took = t.elapsed();
    assert!(
        took >= grace,
        "killed before the grace period ended ({took:?})"
    );
    assert!(took < grace + Duration::from_secs(5), "stop took {took:?}");
    let state = rt.container_state(&sandbox, &info.id).await.expect("state");
    assert_eq!(exited(&state), (137, Some(9), "Error"));
}

#[tokio::test]
async fn exit_codes_are_captured() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-exit", vec![sh("fail", "exit 3"), sh("ok", "true")]);
    let (sandbox, info) = start(&rt, &p).await;
    let state = wait_exited(&rt, &sandbox, &info.id).await;
    assert_eq!(exited(&state), (3, None, "Error"));

    let ok = rt
        .start_container(&sandbox, &p, &p.containers[1], &config(0))
        .await
        .expect("start ok");
    let state = wait_exited(&rt, &sandbox, &ok.id).await;
    assert_eq!(exited(&state), (0, None, "Completed"));
}

/// A mount of volume `volume` from `host_path`, as the pod worker prepares them.
fn mount(volume: &str, host_path: &Path) -> Mount {
    Mount {
        volume: volume.into(),
        host_path: host_path.to_path_buf(),
        container_path: format!("/mnt/{volume}"),
        read_only: false,
    }
}

#[tokio::test]
async fn environment_is_exactly_the_pods_plus_defaults() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path().join("pods").as_path());
    let p = pod(
        "u-env",
        vec![container("env", &["env"]), container("pwd", &["pwd"])],
    );
    let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
    let volume = tmp.path().join("scratch-data");
    let cfg = ContainerConfig {
        env: vec![
            ("MODE".into(), "edge".into()),
            ("SPACES".into(), "a b".into()),
        ],
        attempt: 0,
        mounts: vec![mount("scratch-data", &volume)],
    };
    let info = rt
        .start_container(&sandbox, &p, &p.containers[0], &cfg)
        .await
        .expect("start");
    wait_exited(&rt, &sandbox, &info.id).await;
    let log = rt.read_log(&sandbox, "env", None).await.expect("log");
    let mut names: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "HOSTNAME",
            "MODE",
            "PATH",
            "SKERRY_VOLUME_SCRATCH_DATA",
            "SPACES"
        ],
        "edgecore's environment leaked or defaults are missing:\n{log}"
    );
    assert!(log.contains("MODE=edge\n"));
    assert!(log.contains("SPACES=a b\n"));
    assert!(log.contains("HOSTNAME=pod-u-env\n"));
    assert!(log.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"));
    assert!(log.contains(&format!(
        "SKERRY_VOLUME_SCRATCH_DATA={}\n",
        volume.display()
    )));

    // The default working directory is the pod directory.
    let pwd = rt
        .start_container(&sandbox, &p, &p.containers[1], &config(0))
        .await
        .expect("start pwd");
    wait_exited(&rt, &sandbox, &pwd.id).await;
    let out = rt.read_log(&sandbox, "pwd", None).await.expect("log");
    let pod_dir = std::fs::canonicalize(tmp.path().join("pods/u-env")).expect("canonical");
    assert_eq!(out.trim(), pod_dir.display().to_string());
}

#[tokio::test]
async fn unrunnable_commands_are_create_container_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod(
        "u-missing",
        vec![
            container("nope", &["skerry-no-such-program-xyz", "--flag"]),
            container("abs", &["/nonexistent/skerry-prog"]),
            container("empty", &[]),
        ],
    );
    let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
    for (c, needle) in [
        (&p.containers[0], "skerry-no-such-program-xyz"),
        (&p.containers[1], "/nonexistent/skerry-prog"),
        (&p.containers[2], "command"),
    ] {
        let err = rt
            .start_container(&sandbox, &p, c, &config(0))
            .await
            .expect_err("must fail");
        match &err {
            RuntimeError::CreateContainer { container, message } => {
                assert_eq!(container, &c.name);
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("wrong error: {other:?}"),
        }
        assert_eq!(err.waiting_reason(), "CreateContainerError");
    }
    // Failed starts leave no instance behind.
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods.len(), 1);
    assert!(pods[0].containers.is_empty(), "{:?}", pods[0].containers);
}

/// Native processes use the host's resolver: the DNS policies that need another one are
/// refused with the reason, never ignored; `ClusterFirst` and `Default` run.
#[tokio::test]
async fn dns_policies_the_host_resolver_cannot_honour_are_refused() {
    use protocol::pod::{DnsPolicy, PodDns, PodDnsConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let with_dns = |uid: &str, policy, config: Option<PodDnsConfig>| EdgePod {
        dns: PodDns {
            policy,
            config: config.map(Box::new),
        },
        ..pod(uid, vec![sh("main", "exit 0")])
    };
    let servers = PodDnsConfig {
        nameservers: vec!["192.0.2.1".into()],
        ..PodDnsConfig::default()
    };
    for p in [
        with_dns("u-dns-none", DnsPolicy::None, Some(servers.clone())),
        with_dns("u-dns-hostnet", DnsPolicy::ClusterFirstWithHostNet, None),
        with_dns("u-dns-config", DnsPolicy::ClusterFirst, Some(servers)),
    ] {
        let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
        let err = rt
            .start_container(&sandbox, &p, &p.containers[0], &config(0))
            .await
            .expect_err("refused");
        match &err {
            RuntimeError::CreateContainer { message, .. } => {
                assert!(message.contains("process runtime"), "{message}")
            }
            other => panic!("wrong error: {other:?}"),
        }
    }
    for p in [
        with_dns("u-dns-cf", DnsPolicy::ClusterFirst, None),
        with_dns("u-dns-default", DnsPolicy::Default, None),
    ] {
        let (sandbox, info) = start(&rt, &p).await;
        wait_exited(&rt, &sandbox, &info.id).await;
    }
}

/// The runtime takes the mounts the pod worker prepared, not the pod's volume definitions: a
/// mount with `subPath` passes the path within its volume.
#[tokio::test]
async fn mounts_are_passed_as_volume_variables() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path().join("pods").as_path());
    let p = pod(
        "u-vol",
        vec![container("env", &["env"]), container("twice", &["true"])],
    );
    let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
    let data = tmp.path().join("data");
    let cfg = ContainerConfig {
        mounts: vec![
            mount("data", &data.join("sub/dir")),
            mount("conf", &tmp.path().join("conf/app.conf")),
        ],
        ..config(0)
    };
    let info = rt
        .start_container(&sandbox, &p, &p.containers[0], &cfg)
        .await
        .expect("start");
    wait_exited(&rt, &sandbox, &info.id).await;
    let log = rt.read_log(&sandbox, "env", None).await.expect("log");
    assert!(
        log.contains(&format!("SKERRY_VOLUME_DATA={}/sub/dir\n", data.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "SKERRY_VOLUME_CONF={}/conf/app.conf\n",
            tmp.path().display()
        )),
        "{log}"
    );
    // The runtime prepares nothing itself.
    assert!(!data.exists());
    assert!(!tmp.path().join("pods/u-vol/volumes").exists());

    // One volume at two different paths cannot be one variable.
    let cfg = ContainerConfig {
        mounts: vec![
            mount("data", &data.join("a")),
            mount("data", &data.join("b")),
        ],
        ..config(0)
    };
    match rt
        .start_container(&sandbox, &p, &p.containers[1], &cfg)
        .await
    {
        Err(RuntimeError::CreateContainer { container, message }) => {
            assert_eq!(container, "twice");
            assert!(message.contains("different subPaths"), "{message}");
            assert!(message.contains("SKERRY_VOLUME_DATA"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// The pod's `volumes/` directory belongs to the pod worker (it may hold tmpfs mounts): the
/// sandbox removal leaves it, and the pod directory with it, for the volumes' teardown.
#[tokio::test]
async fn remove_sandbox_leaves_the_pods_volumes_for_their_teardown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-keep", vec![sh("main", "echo junk > junk.txt; echo up")]);
    let (sandbox, info) = start(&rt, &p).await;
    wait_exited(&rt, &sandbox, &info.id).await;
    let volume = tmp.path().join("u-keep/volumes/data");
    std::fs::create_dir_all(&volume).expect("volume");
    std::fs::write(volume.join("kept"), "x").expect("write");
    assert!(tmp.path().join("u-keep/junk.txt").exists());
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("remove");
    let mut left: Vec<String> = std::fs::read_dir(tmp.path().join("u-keep"))
        .expect("pod dir kept")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["volumes"]);
    assert!(volume.join("kept").exists());
    assert!(rt.list_pods().await.expect("list").is_empty());
    // Once the volumes are gone, a repeated removal takes the directory.
    std::fs::remove_dir_all(tmp.path().join("u-keep/volumes")).expect("rm");
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("idempotent");
    assert!(!tmp.path().join("u-keep").exists());
}

#[tokio::test]
async fn a_restarted_edgecore_adopts_running_containers_and_learns_their_exit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = pod(
        "u-adopt",
        vec![sh(
            "main",
            "echo started; while [ ! -e go ]; do sleep 0.05; done; exit 7",
        )],
    );
    let (sandbox, info) = {
        let first = runtime(tmp.path());
        start(&first, &p).await
        // `first` is dropped here, as a killed edgecore would be; its shim keeps running.
    };
    wait_log(&runtime(tmp.path()), &sandbox, "main", "started").await;

    let rt = runtime(tmp.path());
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods.len(), 1);
    let found = &pods[0];
    assert_eq!(found.sandbox, sandbox);
    assert_eq!(
        (found.namespace.as_str(), found.name.as_str()),
        ("rigs", "pod-u-adopt")
    );
    assert_eq!(found.containers.len(), 1);
    assert_eq!(found.containers[0].id, info.id);
    assert_eq!(found.containers[0].attempt, 0);
    assert_eq!(
        found.containers[0].state, info.state,
        "same start time, still running"
    );

    // Retrying the same start does not start a second process.
    let again = rt
        .start_container(&sandbox, &p, &p.containers[0], &config(0))
        .await
        .expect("start again");
    assert_eq!(again.id, info.id);
    assert_eq!(again.state, info.state);
    assert_eq!(rt.run_sandbox(&p).await.expect("sandbox again"), sandbox);
    sleep(Duration::from_millis(300)).await;
    let log = rt.read_log(&sandbox, "main", None).await.expect("log");
    assert_eq!(log.matches("started").count(), 1, "{log}");

    std::fs::write(tmp.path().join("u-adopt/go"), b"").expect("trigger");
    let state = wait_exited(&rt, &sandbox, &info.id).await;
    assert_eq!(exited(&state), (7, None, "Error"));
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods[0].containers[0].state, state);
}

#[tokio::test]
async fn a_wiped_pod_directory_is_a_sandbox_that_is_not_ready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-wiped", vec![sh("main", "sleep 30")]);
    let (sandbox, info) = start(&rt, &p).await;
    assert!(rt.sandbox_ready(&sandbox).await.expect("ready"));
    let (pid, shim) = state_pids(tmp.path(), &info.id);

    std::fs::remove_dir_all(tmp.path().join("u-wiped")).expect("wipe");
    assert!(!rt.sandbox_ready(&sandbox).await.expect("not ready"));
    match rt
        .start_container(&sandbox, &p, &p.containers[0], &config(1))
        .await
    {
        Err(RuntimeError::SandboxNotReady { sandbox: id, .. }) => assert_eq!(id, sandbox.id),
        other => panic!("{other:?}"),
    }
    // Its process is not lost with its directory: the stop still finds and ends it.
    assert!(!gone(pid));
    rt.stop_container(&sandbox, &info.id, Duration::from_secs(5))
        .await
        .expect("stop");
    for p in [pid, shim] {
        wait_gone(p).await;
    }
    rt.remove_container(&sandbox, &info.id)
        .await
        .expect("remove");

    // run_sandbox makes it anew.
    let again = rt.run_sandbox(&p).await.expect("run_sandbox");
    assert!(rt.sandbox_ready(&again).await.expect("ready again"));
    let next = rt
        .start_container(&again, &p, &p.containers[0], &config(1))
        .await
        .expect("start in the new sandbox");
    assert!(matches!(next.state, ContainerRunState::Running { .. }));
    rt.remove_sandbox(&again, Duration::from_secs(1))
        .await
        .expect("remove");
    assert!(!tmp.path().join("u-wiped").exists());
}

#[tokio::test]
async fn remove_sandbox_leaves_no_process_and_no_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    // A background child in the container's process group must go too.
    let p = pod(
        "u-remove",
        vec![
            sh("main", "sleep 30 & echo $! > bg.pid; echo up; wait"),
            sh("second", "sleep 30"),
        ],
    );
    let (sandbox, info) = start(&rt, &p).await;
    let second = rt
        .start_container(&sandbox, &p, &p.containers[1], &config(0))
        .await
        .expect("second");
    wait_log(&rt, &sandbox, "main", "up").await;
    let bg: u32 = std::fs::read_to_string(tmp.path().join("u-remove/bg.pid"))
        .expect("bg.pid")
        .trim()
        .parse()
        .expect("pid");
    let (pid, shim) = state_pids(tmp.path(), &info.id);
    let (pid2, shim2) = state_pids(tmp.path(), &second.id);
    for p in [bg, pid, shim, pid2, shim2] {
        assert!(!gone(p), "{p} should run");
    }

    let t = Instant::now();
    rt.remove_sandbox(&sandbox, Duration::from_secs(10))
        .await
        .expect("remove");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "containers were stopped one after another"
    );
    assert!(!tmp.path().join("u-remove").exists());
    for p in [bg, pid, shim, pid2, shim2] {
        wait_gone(p).await;
    }
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("idempotent");
    assert!(rt.list_pods().await.expect("list").is_empty());
}

#[tokio::test]
async fn remove_container_stops_it_and_keeps_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-rmc", vec![sh("main", "echo one; sleep 30")]);
    let (sandbox, info) = start(&rt, &p).await;
    wait_log(&rt, &sandbox, "main", "one").await;
    let (pid, _) = state_pids(tmp.path(), &info.id);
    rt.remove_container(&sandbox, &info.id)
        .await
        .expect("remove");
    wait_gone(pid).await;
    match rt.container_state(&sandbox, &info.id).await {
        Err(RuntimeError::Internal { message, .. }) => assert!(message.contains("u-rmc/main/0")),
        other => panic!("{other:?}"),
    }
    rt.remove_container(&sandbox, &info.id)
        .await
        .expect("idempotent");
    rt.stop_container(&sandbox, &info.id, Duration::ZERO)
        .await
        .expect("stopping a removed container is fine");
    assert_eq!(
        rt.read_log(&sandbox, "main", None).await.expect("log kept"),
        "one\n"
    );
    // The next attempt gets its own log; read_log shows the newest.
    let next = rt
        .start_container(&sandbox, &p, &p.containers[0], &config(1))
        .await
        .expect("restart");
    assert_eq!(next.id, "u-rmc/main/1");
    assert_eq!(next.attempt, 1);
    wait_log(&rt, &sandbox, "main", "one").await;
    rt.remove_sandbox(&sandbox, Duration::ZERO)
        .await
        .expect("remove sandbox");
}

#[tokio::test]
async fn read_log_tails_and_reports_missing_logs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod(
        "u-log",
        vec![sh("main", "printf 'a\\nb\\n'; printf 'c\\n' >&2")],
    );
    let (sandbox, info) = start(&rt, &p).await;
    wait_exited(&rt, &sandbox, &info.id).await;
    assert_eq!(
        rt.read_log(&sandbox, "main", None).await.expect("all"),
        "a\nb\nc\n"
    );
    assert_eq!(
        rt.read_log(&sandbox, "main", Some(2)).await.expect("tail"),
        "b\nc\n"
    );
    assert_eq!(
        rt.read_log(&sandbox, "main", Some(10)).await.expect("tail"),
        "a\nb\nc\n"
    );
    match rt.read_log(&sandbox, "other", None).await {
        Err(RuntimeError::Internal { message, .. }) => {
            assert!(message.contains("no log exists"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match rt.container_state(&sandbox, "u-log/other/0").await {
        Err(RuntimeError::Internal { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(rt.container_state(&sandbox, "garbage").await.is_err());
    assert!(rt.version().starts_with("process://"));
}

#[tokio::test]
async fn list_pods_skips_corrupt_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-good", vec![sh("main", "true")]);
    let (sandbox, info) = start(&rt, &p).await;
    wait_exited(&rt, &sandbox, &info.id).await;
    std::fs::create_dir_all(tmp.path().join("u-bad")).expect("mkdir");
    std::fs::write(tmp.path().join("u-bad/pod.json"), b"{not json").expect("write");
    std::fs::create_dir_all(tmp.path().join("u-none")).expect("mkdir");
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].sandbox.pod_uid, "u-good");
    assert_eq!(pods[0].containers.len(), 1);
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
}

#[tokio::test]
async fn a_huge_grace_period_still_stops_containers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    // terminationGracePeriodSeconds: 9223372036854775807
    let huge = Duration::from_secs(i64::MAX as u64);
    let p = pod(
        "u-huge",
        vec![sh("main", "echo up; sleep 30"), sh("other", "sleep 30")],
    );
    let (sandbox, info) = start(&rt, &p).await;
    let other = rt
        .start_container(&sandbox, &p, &p.containers[1], &config(0))
        .await
        .expect("start other");
    wait_log(&rt, &sandbox, "main", "up").await;
    rt.stop_container(&sandbox, &info.id, huge)
        .await
        .expect("stop");
    let state = rt.container_state(&sandbox, &info.id).await.expect("state");
    assert_eq!(exited(&state), (143, Some(15), "Error"));
    let (pid, _) = state_pids(tmp.path(), &other.id);
    rt.remove_sandbox(&sandbox, huge).await.expect("remove");
    wait_gone(pid).await;
    assert!(!tmp.path().join("u-huge").exists());
}

#[tokio::test]
async fn a_start_that_timed_out_is_adopted_by_its_retry_and_runs_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = ProcessRuntime::new(
        tmp.path().join("pods"),
        slow_shim(tmp.path(), "0.8"),
        "192.0.2.7".to_string(),
    )
    .with_shim_start_timeout(Duration::from_millis(200));
    let p = pod("u-slow", vec![sh("main", "echo started; sleep 30")]);
    let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
    match rt
        .start_container(&sandbox, &p, &p.containers[0], &config(0))
        .await
    {
        Err(RuntimeError::Internal { message, .. }) => {
            assert!(message.contains("did not report"), "{message}")
        }
        other => panic!("the slow shim must time out: {other:?}"),
    }
    // The shim was left to finish the start; retrying the same start adopts its process.
    let deadline = Instant::now() + TIMEOUT;
    let info = loop {
        match rt
            .start_container(&sandbox, &p, &p.containers[0], &config(0))
            .await
        {
            Ok(info) => break info,
            Err(RuntimeError::Internal { message, .. }) => {
                assert!(Instant::now() < deadline, "never adopted: {message}");
                sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(info.id, "u-slow/main/0");
    assert!(matches!(info.state, ContainerRunState::Running { .. }));
    wait_log(&rt, &sandbox, "main", "started").await;
    // Later retries adopt it too, and nothing else was started.
    let again = rt
        .start_container(&sandbox, &p, &p.containers[0], &config(0))
        .await
        .expect("start again");
    assert_eq!(again, info);
    sleep(Duration::from_millis(300)).await;
    let log = rt.read_log(&sandbox, "main", None).await.expect("log");
    assert_eq!(log.matches("started").count(), 1, "{log}");
    let (pid, _) = state_pids(&tmp.path().join("pods"), &info.id);
    rt.remove_sandbox(&sandbox, Duration::from_secs(5))
        .await
        .expect("remove");
    wait_gone(pid).await;
}

#[tokio::test]
async fn a_vanished_process_is_reported_without_waiting_for_its_shim() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-vanish", vec![sh("main", "echo up; sleep 30")]);
    let (sandbox, info) = start(&rt, &p).await;
    wait_log(&rt, &sandbox, "main", "up").await;
    let (pid, shim) = state_pids(tmp.path(), &info.id);
    // The process is gone, but its (stopped) shim has not reaped it nor recorded the exit.
    signal(shim, nix::sys::signal::Signal::SIGSTOP);
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid).await;
    let t = Instant::now();
    let state = rt.container_state(&sandbox, &info.id).await;
    let took = t.elapsed();
    signal(shim, nix::sys::signal::Signal::SIGCONT);
    assert!(
        matches!(state, Ok(ContainerRunState::Running { .. })),
        "{state:?}"
    );
    assert!(took < Duration::from_millis(500), "the poll took {took:?}");
    // Once the shim recorded it, the exit is seen.
    let state = wait_exited(&rt, &sandbox, &info.id).await;
    assert_eq!(exited(&state), (137, Some(9), "Error"));
}

#[tokio::test]
async fn list_pods_skips_a_pod_whose_containers_cannot_be_listed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-fine", vec![sh("main", "true")]);
    let (sandbox, info) = start(&rt, &p).await;
    wait_exited(&rt, &sandbox, &info.id).await;
    let broken = pod("u-broken", vec![sh("main", "true")]);
    rt.run_sandbox(&broken).await.expect("sandbox");
    // `containers` cannot be listed (even by root): it is not a directory.
    let containers = tmp.path().join("u-broken/containers");
    std::fs::remove_dir(&containers).expect("rmdir");
    std::fs::write(&containers, b"").expect("write");
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].sandbox.pod_uid, "u-fine");
}

#[tokio::test]
async fn sandboxes_report_the_hosts_current_ip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = pod("u-ip", vec![sh("main", "true")]);
    let before = runtime(tmp.path()).run_sandbox(&p).await.expect("sandbox");
    assert_eq!(before.ip, "192.0.2.7");
    // The host's address changed, and edgecore restarted with the new one.
    let rt = ProcessRuntime::new(
        tmp.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_edgecore")),
        "198.51.100.9".to_string(),
    );
    let after = rt.run_sandbox(&p).await.expect("sandbox again");
    assert_eq!(after.ip, "198.51.100.9");
    let pods = rt.list_pods().await.expect("list");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].sandbox, after);
}

#[tokio::test]
async fn volumes_sharing_an_environment_variable_are_a_create_container_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod(
        "u-clash",
        vec![container("clash", &["env"]), container("twice", &["env"])],
    );
    let sandbox = rt.run_sandbox(&p).await.expect("sandbox");
    let clash = ContainerConfig {
        mounts: vec![
            mount("data-1", &tmp.path().join("d1")),
            mount("data.1", &tmp.path().join("d2")),
        ],
        ..config(0)
    };
    match rt
        .start_container(&sandbox, &p, &p.containers[0], &clash)
        .await
    {
        Err(RuntimeError::CreateContainer { container, message }) => {
            assert_eq!(container, "clash");
            for needle in ["\"data-1\"", "\"data.1\"", "SKERRY_VOLUME_DATA_1"] {
                assert!(message.contains(needle), "{message}");
            }
        }
        other => panic!("{other:?}"),
    }
    // The same volume mounted twice (at one host path) is fine.
    let twice = ContainerConfig {
        mounts: vec![
            mount("data-1", &tmp.path().join("d1")),
            mount("data-1", &tmp.path().join("d1")),
        ],
        ..config(0)
    };
    let info = rt
        .start_container(&sandbox, &p, &p.containers[1], &twice)
        .await
        .expect("start");
    wait_exited(&rt, &sandbox, &info.id).await;
    let log = rt.read_log(&sandbox, "twice", None).await.expect("log");
    assert_eq!(log.matches("SKERRY_VOLUME_DATA_1=").count(), 1, "{log}");
}

#[tokio::test]
async fn a_reused_instance_id_is_observed_afresh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("u-reuse", vec![sh("main", "sleep 30")]);
    let (sandbox, first) = start(&rt, &p).await;
    assert_eq!(
        rt.container_state(&sandbox, &first.id)
            .await
            .expect("state"),
        first.state
    );
    // The same id again after the instance was removed, then after the sandbox was.
    rt.remove_container(&sandbox, &first.id)
        .await
        .expect("remove");
    sleep(Duration::from_millis(5)).await;
    let second = rt
        .start_container(&sandbox, &p, &p.containers[0], &config(0))
        .await
        .expect("start again");
    assert_eq!(second.id, first.id);
    assert_ne!(second.state, first.state, "a new start time");
    assert_eq!(
        rt.container_state(&sandbox, &second.id)
            .await
            .expect("state"),
        second.state
    );
    rt.remove_sandbox(&sandbox, Duration::ZERO)
        .await
        .expect("remove sandbox");
    sleep(Duration::from_millis(5)).await;
    let (sandbox, third) = start(&rt, &p).await;
    assert_eq!(third.id, first.id);
    assert_eq!(
        rt.container_state(&sandbox, &third.id)
            .await
            .expect("state"),
        third.state
    );
    rt.stop_container(&sandbox, &third.id, Duration::from_secs(5))
        .await
        .expect("stop");
    let state = rt
        .container_state(&sandbox, &third.id)
        .await
        .expect("state");
    assert_eq!(exited(&state), (143, Some(15), "Error"));
}

#[tokio::test]
async fn exec_runs_beside_a_running_container_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let mut main = sh("main", "sleep 60");
    main.env = vec![protocol::pod::EnvVar {
        name: "MODE".into(),
        value: protocol::pod::EnvValue::Literal("edge".into()),
    }];
    let p = pod("exec", vec![main]);
    let sandbox = rt.run_sandbox(&p).await.expect("run_sandbox");
    let config = ContainerConfig {
        env: vec![("MODE".into(), "edge".into())],
        ..config(0)
    };
    let info = rt
        .start_container(&sandbox, &p, &p.containers[0], &config)
        .await
        .expect("start_container");
    let command: Vec<String> = ["sh", "-c", "echo $MODE $HOSTNAME; pwd"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = rt
        .exec_sync(&sandbox, &info.id, &command, Duration::from_secs(10))
        .await
        .expect("exec_sync");
    assert_eq!(out.exit_code, 0);
    let pod_dir = tmp.path().join("exec").canonicalize().expect("pod dir");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("edge pod-exec\n{}\n", pod_dir.display())
    );
    // Another pod's container, or one that no longer runs: an error, not an exit code.
    let other = Sandbox {
        id: "other".into(),
        pod_uid: "other".into(),
        ip: String::new(),
    };
    assert!(rt
        .exec_sync(&other, &info.id, &command, Duration::from_secs(1))
        .await
        .is_err());
    rt.stop_container(&sandbox, &info.id, Duration::from_secs(1))
        .await
        .expect("stop");
    match rt
        .exec_sync(&sandbox, &info.id, &command, Duration::from_secs(1))
        .await
    {
        Err(RuntimeError::Internal { message, .. }) => {
            assert!(message.contains("is not running"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("remove");
}

#[tokio::test]
async fn interactive_exec_carries_stdin_and_a_terminal_and_dies_with_its_caller() {
    use edgecore::runtime::ExecSpec;
    use protocol::streams::TermSize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let p = pod("interactive", vec![sh("main", "sleep 60")]);
    let sandbox = rt.run_sandbox(&p).await.expect("run_sandbox");
    let info = rt
        .start_container(&sandbox, &p, &p.containers[0], &config(0))
        .await
        .expect("start_container");
    let spec = |command: &str, stdin: bool, tty: bool| ExecSpec {
        command: vec!["sh".into(), "-c".into(), command.into()],
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
        size: tty.then_some(TermSize {
            width: 91,
            height: 17,
        }),
    };

    // Pipes: stdin read to its end, stdout and stderr apart, the exit code.
    let mut ex = rt
        .exec(
            &sandbox,
            &info.id,
            &spec("cat; echo bye >&2; exit 7", true, false),
        )
        .await
        .expect("exec");
    let mut stdin = ex.stdin.take().expect("stdin");
    stdin.write_all(b"hello\n").await.expect("write");
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    ex.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("stdout");
    ex.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .await
        .expect("stderr");
    assert_eq!((out.as_str(), err.as_str()), ("hello\n", "bye\n"));
    assert_eq!(ex.exit.await.expect("exit"), 7);

    // A terminal of the asked size, resized while the command runs.
    let mut ex = rt
        .exec(
            &sandbox,
            &info.id,
            &spec("stty size; read line; stty size", true, true),
        )
        .await
        .expect("exec -t");
    assert!(ex.stderr.is_none(), "a terminal has one output");
    let mut stdout = ex.stdout.take().expect("terminal output");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("17 91") {
        let n = stdout.read(&mut buf).await.expect("read");
        assert!(n > 0, "ended early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    ex.control.resize(TermSize {
        width: 120,
        height: 40,
    });
    let mut stdin = ex.stdin.take().expect("terminal input");
    stdin.write_all(b"go\r").await.expect("write");
    stdin.flush().await.expect("flush");
    let mut rest = Vec::new();
    stdout
        .read_to_end(&mut rest)
        .await
        .expect("read to the end");
    assert!(
        String::from_utf8_lossy(&rest).contains("40 120"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(ex.exit.await.expect("exit"), 0);

    // The caller leaves mid-way: the command and what it started are killed.
    let marker = tmp.path().join("sleeper.pid");
    let ex = rt
        .exec(
            &sandbox,
            &info.id,
            &spec(
                &format!("sleep 300 & echo $! > {}; wait", marker.display()),
                false,
                false,
            ),
        )
        .await
        .expect("exec");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the command never started");
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(50)).await;
    let pid: i32 = std::fs::read_to_string(&marker)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    drop(ex);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "the exec's child {pid} outlived it"
        );
        sleep(Duration::from_millis(20)).await;
    }
    rt.remove_sandbox(&sandbox, Duration::from_secs(1))
        .await
        .expect("remove");
}
