//! Pod workers against the real `process` runtime (real processes, edgecore's binary as shim),
//! with a recording status sink.

mod support;

use edgecore::cache::ConfigSet;
use edgecore::pods::{BackoffPolicy, Desired, PodManager, PodManagerConfig, StatusSink};
use edgecore::runtime::process::ProcessRuntime;
use edgecore::runtime::{ContainerConfig, Runtime};
use edgecore::volumes::Volumes;
use protocol::config::{EdgeConfigMap, EdgeSecret};
use protocol::pod::{
    EdgeContainer, EdgePod, EnvFromKind, EnvFromSource, EnvValue, EnvVar, RestartPolicy, Volume,
    VolumeMount, VolumeSource,
};
use protocol::status::{ContainerState, ContainerStatus, PodPhase, PodStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::slow_shim;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout_at, Instant};

const HOST_IP: &str = "192.0.2.7";
const TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const BASE: Duration = Duration::from_millis(200);

/// What the sink saw.
#[derive(Debug, Clone)]
enum Record {
    Status(Box<PodStatus>),
    Forgotten(String, String),
}

/// A sink that forwards everything to the test, timestamped.
struct Sink(mpsc::UnboundedSender<(Instant, Record)>);

impl StatusSink for Sink {
    fn pod_status(&self, status: PodStatus) {
        let _ = self
            .0
            .send((Instant::now(), Record::Status(Box::new(status))));
    }

    fn pod_forgotten(&self, namespace: &str, name: &str) {
        let _ = self.0.send((
            Instant::now(),
            Record::Forgotten(namespace.into(), name.into()),
        ));
    }
    // These tests follow statuses; the events the workers record are checked by the report
    // module's tests and the e2e `pod_events` test.
    fn pod_event(&self, _pod: &edgecore::pods::PodRef, _occ: protocol::events::Occurrence) {}
}

/// The records received so far, and the means to wait for more.
struct Recorder {
    rx: mpsc::UnboundedReceiver<(Instant, Record)>,
    history: Vec<(Instant, Record)>,
}

impl Recorder {
    /// Waits (with a deadline) until a record satisfying `pred` has arrived; returns the first.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Record) -> bool) -> (Instant, Record) {
        self.wait_for_since(None, what, pred).await
    }

    /// Like `wait_for`, among the records received at or after `since`.
    async fn wait_for_since(
        &mut self,
        since: Option<Instant>,
        what: &str,
        pred: impl Fn(&Record) -> bool,
    ) -> (Instant, Record) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(hit) = self
                .history
                .iter()
                .find(|(t, r)| since.is_none_or(|since| *t >= since) && pred(r))
            {
                return hit.clone();
            }
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(record)) => self.history.push(record),
                Ok(None) => panic!("sink closed while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; records:\n{:#?}",
                    self.history.iter().map(|(_, r)| r).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for a status of pod `uid` satisfying `pred`.
    async fn status(
        &mut self,
        uid: &str,
        what: &str,
        pred: impl Fn(&PodStatus) -> bool,
    ) -> PodStatus {
        let (_, record) = self
            .wait_for(
                what,
                |r| matches!(r, Record::Status(s) if s.uid == uid && pred(s)),
            )
            .await;
        match record {
            Record::Status(s) => *s,
            Record::Forgotten(..) => unreachable!(),
        }
    }

    /// Waits for a status of pod `uid` satisfying `pred` that arrived at or after `since`.
    async fn status_since(
        &mut self,
        uid: &str,
        since: Instant,
        what: &str,
        pred: impl Fn(&PodStatus) -> bool,
    ) -> PodStatus {
        let (_, record) = self
            .wait_for_since(
                Some(since),
                what,
                |r| matches!(r, Record::Status(s) if s.uid == uid && pred(s)),
            )
            .await;
        match record {
            Record::Status(s) => *s,
            Record::Forgotten(..) => unreachable!(),
        }
    }

    async fn forgotten(&mut self, name: &str) {
        self.wait_for(
            &format!("{name} forgotten"),
            |r| matches!(r, Record::Forgotten(ns, n) if ns == "rigs" && n == name),
        )
        .await;
    }

    /// Takes whatever arrived without waiting.
    fn drain(&mut self) {
        while let Ok(record) = self.rx.try_recv() {
            self.history.push(record);
        }
    }

    fn statuses(&self, uid: &str) -> Vec<(Instant, PodStatus)> {
        self.history
            .iter()
            .filter_map(|(t, r)| match r {
                Record::Status(s) if s.uid == uid => Some((*t, (**s).clone())),
                _ => None,
            })
            .collect()
    }
}

fn runtime(root: &Path) -> Arc<ProcessRuntime> {
    Arc::new(ProcessRuntime::new(
        root.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_edgecore")),
        HOST_IP.to_string(),
    ))
}

fn config() -> PodManagerConfig {
    PodManagerConfig {
        poll_interval: POLL,
        backoff: BackoffPolicy {
            base: BASE,
            cap: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
        },
        orphan_grace: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// A manager on `rt` that keeps the pods' volumes where the runtime keeps its pods, as edgecore
/// does.
fn manager(rt: Arc<ProcessRuntime>) -> (PodManager, Recorder) {
    let (tx, rx) = mpsc::unbounded_channel();
    let volumes = Volumes::new(rt.root().to_path_buf());
    let m = PodManager::with_config(
        rt,
        Arc::new(Sink(tx)),
        "rig-7".into(),
        HOST_IP.into(),
        config(),
    )
    .with_volumes(volumes);
    (
        m,
        Recorder {
            rx,
            history: Vec::new(),
        },
    )
}

fn sh(name: &str, script: &str) -> EdgeContainer {
    support::sh(name, "local/none", script)
}

fn pod(uid: &str, policy: RestartPolicy, containers: Vec<EdgeContainer>) -> EdgePod {
    EdgePod {
        labels: BTreeMap::from([("app".into(), "test".into())]),
        restart_policy: policy,
        termination_grace_period_seconds: 1,
        ..support::pod(uid, containers)
    }
}

fn is_running(c: &ContainerStatus) -> bool {
    matches!(c.state, ContainerState::Running { .. })
}

fn condition(s: &PodStatus, kind: &str) -> bool {
    s.conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {s:?}"))
        .status
}

/// pid of a container instance, from the shim's state file.
fn pid_of(root: &Path, uid: &str, container: &str, attempt: u32) -> u32 {
    let path = root
        .join(uid)
        .join("containers")
        .join(container)
        .join(attempt.to_string())
        .join("state.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("state json");
    v["pid"].as_u64().expect("pid") as u32
}

/// Attempt directories of a container.
fn attempts(root: &Path, uid: &str, container: &str) -> Vec<String> {
    let dir = root.join(uid).join("containers").join(container);
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
            rest.split_whitespace().next() != Some("Z")
        }
    }
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_log(rt: &ProcessRuntime, uid: &str, container: &str, needle: &str) -> String {
    let sandbox = edgecore::runtime::Sandbox {
        id: uid.into(),
        pod_uid: uid.into(),
        ip: HOST_IP.into(),
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(log) = rt.read_log(&sandbox, container, None).await {
            if log.contains(needle) {
                return log;
            }
        }
        assert!(
            Instant::now() < deadline,
            "log of {uid}/{container} never contained {needle:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_workers(m: &PodManager, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while m.worker_count().await != n {
        assert!(Instant::now() < deadline, "never {n} workers");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Drops every pod and waits until `names` are forgotten, so that no process outlives a test.
async fn clean_up(m: &PodManager, rec: &mut Recorder, names: &[&str]) {
    m.sync(vec![]).await;
    for name in names {
        rec.forgotten(name).await;
    }
    assert_eq!(m.worker_count().await, 0);
}

#[tokio::test]
async fn a_sleeping_pod_runs_and_is_ready() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod("w-run", RestartPolicy::Always, vec![sh("main", "sleep 60")]);
    m.sync(vec![p.clone()]).await;
    assert_eq!(m.worker_count().await, 1);
    let s = rec
        .status("w-run", "Running", |s| {
            s.phase == PodPhase::Running && s.containers.iter().all(is_running)
        })
        .await;
    assert!(condition(&s, "Ready") && condition(&s, "ContainersReady"));
    assert!(condition(&s, "Initialized") && condition(&s, "PodScheduled"));
    assert_eq!(s.node, "rig-7");
    assert_eq!((s.pod_ip.as_str(), s.host_ip.as_str()), (HOST_IP, HOST_IP));
    assert!(s.start_time_ms > 0);
    let c = &s.containers[0];
    assert_eq!(c.container_id, "process://w-run/main/0");
    assert!(c.ready);
    assert_eq!(c.restart_count, 0);
    // It went through Pending with the container being created.
    let first = &rec.statuses("w-run")[0].1;
    assert_eq!(first.phase, PodPhase::Pending);
    assert!(alive(pid_of(tmp.path(), "w-run", "main", 0)));
    // The same desired set again changes nothing.
    m.sync(vec![p]).await;
    assert_eq!(m.worker_count().await, 1);
    clean_up(&m, &mut rec, &["pod-w-run"]).await;
}

/// Probes through the pod workers, against processes on the host.
mod probes {
    use super::*;
    use protocol::pod::{Probe, ProbeAction};

    fn probe(action: ProbeAction, period: u32, failure_threshold: u32) -> Probe {
        Probe {
            action,
            initial_delay_seconds: 0,
            period_seconds: period,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold,
            termination_grace_period_seconds: None,
        }
    }

    fn exec(command: &[&str]) -> ProbeAction {
        ProbeAction::Exec {
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tcp(port: u16) -> ProbeAction {
        ProbeAction::TcpSocket {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// A local port nothing listens on (for now).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn killed_by_probe(c: &ContainerStatus, kind: &str) -> bool {
        matches!(&c.last_state, Some(ContainerState::Terminated { message, .. })
            if message.contains(&format!("failed {kind} probe")))
            || matches!(&c.state, ContainerState::Terminated { message, .. }
            if message.contains(&format!("failed {kind} probe")))
    }

    #[tokio::test]
    async fn readiness_follows_an_exec_probe_and_probing_ends_with_the_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = tempfile::tempdir().expect("tempdir");
        let marker = files.path().join("ready");
        let attempts = files.path().join("attempts");
        let rt = runtime(tmp.path());
        let (m, mut rec) = manager(rt.clone());
        let script = format!(
            "echo x >> {}; test -f {}",
            attempts.display(),
            marker.display()
        );
        let mut main = sh("main", "sleep 60");
        main.readiness_probe = Some(probe(exec(&["sh", "-c", &script]), 1, 1));
        m.sync(vec![pod("w-ready", RestartPolicy::Always, vec![main])])
            .await;
        let s = rec
            .status("w-ready", "running", |s| {
                s.phase == PodPhase::Running && is_running(&s.containers[0])
            })
            .await;
        assert!(!s.containers[0].ready);
        assert!(!condition(&s, "Ready") && !condition(&s, "ContainersReady"));
        let ready = s
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready");
        assert_eq!(ready.message, "containers with unready status: [main]");
        // Failing attempts keep it unready.
        wait_until("two failed attempts", || lines(&attempts) >= 2).await;
        rec.drain();
        assert!(rec
            .statuses("w-ready")
            .iter()
            .all(|(_, s)| !condition(s, "Ready")));

        std::fs::write(&marker, "").expect("marker");
        let since = Instant::now();
        let s = rec
            .status_since("w-ready", since, "ready", |s| condition(s, "Ready"))
            .await;
        assert!(condition(&s, "ContainersReady"));
        assert!(s.containers[0].ready);
        assert_eq!(s.containers[0].restart_count, 0);

        std::fs::remove_file(&marker).expect("marker");
        let since = Instant::now();
        let s = rec
            .status_since("w-ready", since, "unready again", |s| {
                !condition(s, "Ready")
            })
            .await;
        assert!(!s.containers[0].ready && is_running(&s.containers[0]));
        assert_eq!(s.containers[0].restart_count, 0, "readiness never restarts");

        clean_up(&m, &mut rec, &["pod-w-ready"]).await;
        // No probe outlives its pod.
        let seen = lines(&attempts);
        sleep(Duration::from_millis(2_500)).await;
        assert_eq!(
            lines(&attempts),
            seen,
            "a probe ran after the pod was removed"
        );
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_processes_listening_on_the_host() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let www = tempfile::tempdir().expect("tempdir");
        std::fs::write(www.path().join("index.html"), "hello").expect("index");
        let rt = runtime(tmp.path());
        let (m, mut rec) = manager(rt.clone());
        let (web_port, other_port) = (free_port(), free_port());
        let mut web = EdgeContainer {
            name: "web".into(),
            image: "local/none".into(),
            image_pull_policy: "Never".into(),
            command: vec![
                "busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                format!("127.0.0.1:{web_port}"),
                "-h".into(),
                www.path().display().to_string(),
            ],
            ..Default::default()
        };
        web.readiness_probe = Some(probe(
            ProbeAction::HttpGet {
                host: "127.0.0.1".into(),
                port: web_port,
                path: "/index.html".into(),
                scheme: "HTTP".into(),
                headers: vec![],
            },
            1,
            1,
        ));
        web.liveness_probe = Some(probe(tcp(web_port), 1, 3));
        let mut other = sh("other", "sleep 60");
        other.readiness_probe = Some(probe(tcp(other_port), 1, 1));
        m.sync(vec![pod("w-net", RestartPolicy::Always, vec![web, other])])
            .await;
        let s = rec
            .status("w-net", "web ready", |s| s.containers[0].ready)
            .await;
        assert!(!s.containers[1].ready, "nothing listens on {other_port}");
        assert!(!condition(&s, "Ready"));
        let ready = s
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready");
        assert_eq!(ready.message, "containers with unready status: [other]");

        // Something starts listening on the other port.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", other_port))
            .await
            .expect("bind the other port");
        let since = Instant::now();
        let s = rec
            .status_since("w-net", since, "pod ready", |s| condition(s, "Ready"))
            .await;
        assert!(s.containers.iter().all(|c| c.ready && c.restart_count == 0));
        // The passing tcp liveness probe restarts nothing.
        sleep(Duration::from_millis(2_500)).await;
        rec.drain();
        let (_, last) = rec.statuses("w-net").pop().expect("status");
        assert!(condition(&last, "Ready"));
        assert_eq!(last.containers[0].restart_count, 0);
        drop(listener);
        clean_up(&m, &mut rec, &["pod-w-net"]).await;
    }

    #[tokio::test]
    async fn a_failing_liveness_probe_restarts_the_container() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = tempfile::tempdir().expect("tempdir");
        let alive = files.path().join("alive");
        std::fs::write(&alive, "").expect("alive");
        let rt = runtime(tmp.path());
        let (m, mut rec) = manager(rt.clone());
        let mut main = sh("main", "sleep 60");
        let mut liveness = probe(exec(&["test", "-f", &alive.display().to_string()]), 1, 1);
        // The restarted instance gets a second before its first probe.
        liveness.initial_delay_seconds = 1;
        main.liveness_probe = Some(liveness);
        m.sync(vec![pod("w-live", RestartPolicy::Always, vec![main])])
            .await;
        rec.status("w-live", "running and ready", |s| {
            s.containers[0].ready && condition(s, "Ready")
        })
        .await;

        std::fs::remove_file(&alive).expect("alive");
        let s = rec
            .status("w-live", "killed by its liveness probe", |s| {
                killed_by_probe(&s.containers[0], "liveness")
            })
            .await;
        std::fs::write(&alive, "").expect("alive");
        let c = &s.containers[0];
        assert!(!c.ready && !condition(&s, "Ready"));
        match &c.last_state {
            Some(ContainerState::Terminated {
                exit_code, message, ..
            }) => {
                assert_eq!(*exit_code, 143, "SIGTERM ends `sleep`");
                assert!(
                    message.starts_with(
                        "Container main failed liveness probe, will be restarted: command exited with code 1"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let s = rec
            .status("w-live", "restarted", |s| {
                is_running(&s.containers[0]) && s.containers[0].restart_count == 1
            })
            .await;
        assert_eq!(s.containers[0].container_id, "process://w-live/main/1");
        assert!(killed_by_probe(&s.containers[0], "liveness"));
        rec.status("w-live", "ready again", |s| {
            s.containers[0].restart_count == 1 && condition(s, "Ready")
        })
        .await;
        // Alive again: no further restart.
        sleep(Duration::from_millis(2_500)).await;
        rec.drain();
        let (_, last) = rec.statuses("w-live").pop().expect("status");
        assert_eq!(last.containers[0].restart_count, 1);
        assert!(condition(&last, "Ready"));
        clean_up(&m, &mut rec, &["pod-w-live"]).await;
    }

    #[tokio::test]
    async fn a_startup_probe_holds_back_liveness_and_kills_when_it_fails() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = tempfile::tempdir().expect("tempdir");
        let started = files.path().join("started");
        let rt = runtime(tmp.path());
        let (m, mut rec) = manager(rt.clone());
        // A liveness probe that always fails, held back by a startup probe.
        let mut slow = sh("main", "sleep 60");
        slow.startup_probe = Some(probe(
            exec(&["test", "-f", &started.display().to_string()]),
            1,
            60,
        ));
        slow.liveness_probe = Some(probe(exec(&["false"]), 1, 1));
        // A startup probe that never passes, under Never.
        let mut stuck = sh("main", "sleep 60");
        stuck.startup_probe = Some(probe(exec(&["false"]), 1, 2));
        m.sync(vec![
            pod("w-slow", RestartPolicy::Always, vec![slow]),
            pod("w-stuck", RestartPolicy::Never, vec![stuck]),
        ])
        .await;
        let s = rec
            .status("w-slow", "running", |s| is_running(&s.containers[0]))
            .await;
        assert!(!s.containers[0].ready, "not started yet");

        let s = rec
            .status("w-stuck", "killed by its startup probe", |s| {
                s.phase == PodPhase::Failed
            })
            .await;
        match &s.containers[0].state {
            ContainerState::Terminated { message, .. } => {
                assert_eq!(
                    message,
                    "Container main failed startup probe: command exited with code 1"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.containers[0].restart_count, 0);

        // Meanwhile (2 s and more), the failing liveness probe of w-slow did not run.
        sleep(Duration::from_millis(1_000)).await;
        rec.drain();
        assert!(rec.statuses("w-slow").iter().all(|(_, s)| {
            s.containers[0].restart_count == 0 && s.containers[0].last_state.is_none()
        }));

        std::fs::write(&started, "").expect("started");
        let s = rec
            .status("w-slow", "killed by liveness once started", |s| {
                killed_by_probe(&s.containers[0], "liveness")
            })
            .await;
        assert_eq!(s.phase, PodPhase::Running);
        clean_up(&m, &mut rec, &["pod-w-slow", "pod-w-stuck"]).await;
    }
}

#[tokio::test]
async fn a_crashing_container_restarts_with_growing_back_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod("w-crash", RestartPolicy::Always, vec![sh("main", "exit 1")]);
    m.sync(vec![p]).await;
    let s = rec
        .status("w-crash", "restart 4", |s| {
            s.containers[0].restart_count >= 4
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    let statuses = rec.statuses("w-crash");
    // As kubelet, the first exit is restarted at once: no back-off before restart 1.
    assert!(
        !statuses.iter().any(|(_, s)| {
            let c = &s.containers[0];
            c.restart_count == 0
                && matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        }),
        "{statuses:#?}"
    );
    // Then back-off messages double: 200ms, 400ms, 800ms.
    for delay in ["200ms", "400ms", "800ms"] {
        let want = format!(
            "back-off {delay} restarting failed container=main pod=pod-w-crash_rigs(w-crash)"
        );
        let seen = statuses.iter().any(|(_, s)| {
            let c = &s.containers[0];
            matches!(&c.state, ContainerState::Waiting { reason, message }
                if reason == "CrashLoopBackOff" && *message == want)
                && matches!(
                    c.last_state,
                    Some(ContainerState::Terminated { exit_code: 1, .. })
                )
                && !c.ready
                && !condition(s, "Ready")
        });
        assert!(seen, "no status with {want:?}: {statuses:#?}");
    }
    // Each restart after the first started at least its delay after the previous instance
    // exited, by the times the runtime recorded (not by when the statuses were seen, which
    // only says when they were reported).
    let gap = |n: u32| {
        statuses
            .iter()
            .find_map(|(_, s)| {
                let c = &s.containers[0];
                let started = match c.state {
                    ContainerState::Running { started_at_ms } => started_at_ms,
                    ContainerState::Terminated { started_at_ms, .. } => started_at_ms,
                    _ => return None,
                };
                let Some(ContainerState::Terminated { finished_at_ms, .. }) = c.last_state else {
                    return None;
                };
                (c.restart_count == n && started > 0)
                    .then(|| started.saturating_sub(finished_at_ms))
            })
            .unwrap_or_else(|| panic!("no status of instance {n} with its start: {statuses:#?}"))
    };
    // Milliseconds on both sides: allow one for the rounding of each.
    let ms = |d: Duration| d.as_millis() as u64 - 2;
    assert!(gap(2) >= ms(BASE), "restart 2 after {} ms", gap(2));
    assert!(gap(3) >= ms(2 * BASE), "restart 3 after {} ms", gap(3));
    assert!(gap(4) >= ms(4 * BASE), "restart 4 after {} ms", gap(4));
    // restart_count never goes down.
    let counts: Vec<u32> = statuses
        .iter()
        .map(|(_, s)| s.containers[0].restart_count)
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    clean_up(&m, &mut rec, &["pod-w-crash"]).await;
}

#[tokio::test]
async fn on_failure_with_exit_zero_succeeds_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod("w-ok", RestartPolicy::OnFailure, vec![sh("main", "exit 0")]);
    m.sync(vec![p]).await;
    let s = rec
        .status("w-ok", "Succeeded", |s| s.phase == PodPhase::Succeeded)
        .await;
    let c = &s.containers[0];
    assert!(matches!(
        &c.state,
        ContainerState::Terminated { exit_code: 0, reason, .. } if reason == "Completed"
    ));
    assert_eq!(c.restart_count, 0);
    assert!(!condition(&s, "Ready"));
    // Several back-off periods later it still was not restarted (a negative check needs time).
    sleep(5 * BASE).await;
    rec.drain();
    assert!(rec
        .statuses("w-ok")
        .iter()
        .all(|(_, s)| s.containers[0].restart_count == 0));
    assert_eq!(attempts(tmp.path(), "w-ok", "main"), ["0"]);
    clean_up(&m, &mut rec, &["pod-w-ok"]).await;
}

#[tokio::test]
async fn never_with_a_failure_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod("w-fail", RestartPolicy::Never, vec![sh("main", "exit 2")]);
    m.sync(vec![p]).await;
    let s = rec
        .status("w-fail", "Failed", |s| s.phase == PodPhase::Failed)
        .await;
    assert!(matches!(
        &s.containers[0].state,
        ContainerState::Terminated { exit_code: 2, reason, .. } if reason == "Error"
    ));
    assert_eq!(s.containers[0].restart_count, 0);
    clean_up(&m, &mut rec, &["pod-w-fail"]).await;
}

#[tokio::test]
async fn deletion_stops_a_term_ignoring_process_after_the_grace_and_reports_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let mut p = pod(
        "w-del",
        RestartPolicy::Always,
        vec![sh(
            "main",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        )],
    );
    p.termination_grace_period_seconds = 30;
    m.sync(vec![p.clone()]).await;
    rec.status("w-del", "Running", |s| s.phase == PodPhase::Running)
        .await;
    wait_log(&rt, "w-del", "main", "ready").await;
    let pid = pid_of(tmp.path(), "w-del", "main", 0);

    p.deletion_grace_period_seconds = Some(1);
    let t = Instant::now();
    m.sync(vec![p.clone()]).await;
    let s = rec.status("w-del", "removed", |s| s.removed).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "killed before the grace period ended ({took:?})"
    );
    assert!(took < Duration::from_secs(15), "deletion took {took:?}");
    assert!(matches!(
        s.containers[0].state,
        ContainerState::Terminated {
            exit_code: 137,
            signal: Some(9),
            ..
        }
    ));
    assert!(!alive(pid));
    assert!(!tmp.path().join("w-del").exists());
    // The phase stayed what it was while stopping.
    let during: Vec<PodPhase> = rec
        .statuses("w-del")
        .iter()
        .filter(|(at, _)| *at >= t)
        .map(|(_, s)| s.phase)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|p| *p == PodPhase::Running),
        "{during:?}"
    );
    wait_workers(&m, 0).await;

    // While the cache still holds the deleting pod nothing happens again.
    let before = rec.history.len();
    m.sync(vec![p.clone()]).await;
    m.sync(vec![p]).await;
    sleep(5 * POLL).await;
    rec.drain();
    assert_eq!(rec.history.len(), before, "{:#?}", &rec.history[before..]);
    assert!(!tmp.path().join("w-del").exists());
    assert_eq!(m.worker_count().await, 0);
    // Once the cloud removed the object, the sink forgets it.
    m.sync(vec![]).await;
    rec.forgotten("pod-w-del").await;
}

#[tokio::test]
async fn a_pod_dropped_from_the_desired_set_is_stopped_and_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod(
        "w-drop",
        RestartPolicy::Always,
        vec![sh("main", "sleep 60")],
    );
    m.sync(vec![p]).await;
    rec.status("w-drop", "Running", |s| {
        s.phase == PodPhase::Running && is_running(&s.containers[0])
    })
    .await;
    let pid = pid_of(tmp.path(), "w-drop", "main", 0);
    m.sync(vec![]).await;
    rec.forgotten("pod-w-drop").await;
    assert!(!tmp.path().join("w-drop").exists());
    wait_until("the process is gone", || !alive(pid)).await;
    assert_eq!(m.worker_count().await, 0);
    // No removed report: the cloud no longer has the pod.
    assert!(rec.statuses("w-drop").iter().all(|(_, s)| !s.removed));
}

/// The process runtime's sandbox is the pod's directory: wiped under a running pod (a cleaner
/// run amok, a disk restored from a backup), it is made anew and the containers start again in
/// it, as kubelet restarts a pod whose sandbox died; the processes of the wiped one are stopped,
/// not left running unseen.
#[tokio::test]
async fn a_pod_whose_directory_was_wiped_starts_again_in_a_new_sandbox() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod(
        "w-wiped",
        RestartPolicy::Always,
        vec![sh("main", "echo up; sleep 60")],
    );
    m.sync(vec![p]).await;
    rec.status("w-wiped", "Running", |s| is_running(&s.containers[0]))
        .await;
    let pid = pid_of(tmp.path(), "w-wiped", "main", 0);

    let since = Instant::now();
    std::fs::remove_dir_all(tmp.path().join("w-wiped")).expect("wipe the pod directory");
    let s = rec
        .status_since("w-wiped", since, "running again", |s| {
            s.containers[0].restart_count == 1 && is_running(&s.containers[0])
        })
        .await;
    assert!(!alive(pid), "the process of the wiped sandbox still runs");
    let c = &s.containers[0];
    assert_eq!(c.container_id, "process://w-wiped/main/1");
    // Its exit record went with the directory.
    assert!(
        matches!(&c.last_state, Some(ContainerState::Terminated { reason, .. })
            if reason == "ContainerStatusUnknown"),
        "{:?}",
        c.last_state
    );
    assert!(condition(&s, "Ready"));
    assert_eq!((s.phase, s.pod_ip.as_str()), (PodPhase::Running, HOST_IP));
    assert!(tmp.path().join("w-wiped/pod.json").exists());
    assert!(alive(pid_of(tmp.path(), "w-wiped", "main", 1)));
    wait_log(&rt, "w-wiped", "main", "up").await;
    // Meanwhile the pod stayed Running (no Pending, as for a new pod), without an IP.
    rec.drain();
    let meanwhile: Vec<PodStatus> = rec
        .statuses("w-wiped")
        .into_iter()
        .filter(|(t, _)| *t >= since)
        .map(|(_, s)| s)
        .collect();
    assert!(
        meanwhile.iter().all(|s| s.phase == PodPhase::Running),
        "{meanwhile:#?}"
    );
    assert!(meanwhile
        .iter()
        .any(|s| s.pod_ip.is_empty() && !condition(s, "Ready")));
    clean_up(&m, &mut rec, &["pod-w-wiped"]).await;
    assert!(!tmp.path().join("w-wiped").exists());
}

#[tokio::test]
async fn a_restarted_manager_adopts_running_containers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = pod(
        "w-adopt",
        RestartPolicy::Always,
        vec![sh(
            "main",
            "if [ -e crashed-once ]; then echo started; sleep 60; else touch crashed-once; exit 1; fi",
        )],
    );
    let (id, pid, started_at) = {
        let (m, mut rec) = manager(runtime(tmp.path()));
        m.sync(vec![p.clone()]).await;
        let s = rec
            .status("w-adopt", "running after one restart", |s| {
                s.containers[0].restart_count == 1 && is_running(&s.containers[0])
            })
            .await;
        m.shutdown().await;
        assert_eq!(m.worker_count().await, 0);
        let c = &s.containers[0];
        let ContainerState::Running { started_at_ms } = c.state else {
            unreachable!()
        };
        (
            c.container_id.clone(),
            pid_of(tmp.path(), "w-adopt", "main", 1),
            started_at_ms,
        )
    };
    assert_eq!(id, "process://w-adopt/main/1");
    // The manager is gone; the container is not.
    assert!(alive(pid));

    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    m.sync(vec![p.clone()]).await;
    let s = rec
        .status("w-adopt", "adopted", |s| s.phase == PodPhase::Running)
        .await;
    let c = &s.containers[0];
    assert_eq!(c.container_id, id);
    assert_eq!(c.restart_count, 1);
    assert_eq!(
        c.state,
        ContainerState::Running {
            started_at_ms: started_at
        }
    );
    assert!(condition(&s, "Ready"));
    assert!(s.start_time_ms > 0 && s.start_time_ms <= started_at);
    // A few polls later: the same process, no new instance, started once.
    sleep(5 * POLL).await;
    rec.drain();
    assert!(alive(pid));
    assert_eq!(pid_of(tmp.path(), "w-adopt", "main", 1), pid);
    assert_eq!(attempts(tmp.path(), "w-adopt", "main"), ["1"]);
    let log = wait_log(&rt, "w-adopt", "main", "started").await;
    assert_eq!(log.matches("started").count(), 1, "{log}");
    assert!(rec
        .statuses("w-adopt")
        .iter()
        .all(|(_, s)| s.containers[0].container_id == id));
    clean_up(&m, &mut rec, &["pod-w-adopt"]).await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn labels_only_changes_do_not_restart_but_spec_changes_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let p = pod(
        "w-label",
        RestartPolicy::Always,
        vec![sh("main", "sleep 60")],
    );
    m.sync(vec![p.clone()]).await;
    let s = rec
        .status("w-label", "Running", |s| is_running(&s.containers[0]))
        .await;
    let pid = pid_of(tmp.path(), "w-label", "main", 0);

    let mut relabelled = p.clone();
    relabelled.labels.insert("tier".into(), "edge".into());
    m.sync(vec![relabelled.clone()]).await;
    sleep(5 * POLL).await;
    rec.drain();
    assert!(alive(pid), "a labels change restarted the container");
    assert_eq!(pid_of(tmp.path(), "w-label", "main", 0), pid);
    assert_eq!(attempts(tmp.path(), "w-label", "main"), ["0"]);
    let last = rec.statuses("w-label").last().expect("status").1.clone();
    assert_eq!(last, s, "the status did not change");

    // A pod-level spec change (here the restart policy) replaces the pod; a change of the
    // container alone would restart just it (see `an_image_change_restarts_only_that_container`).
    let mut changed = relabelled;
    changed.restart_policy = RestartPolicy::OnFailure;
    changed.containers[0] = sh("main", "echo replaced; sleep 60");
    let t = Instant::now();
    m.sync(vec![changed]).await;
    let s = rec
        .status_since("w-label", t, "running again", |new| {
            // A new start: not the old pod's status while it was being stopped.
            is_running(&new.containers[0]) && new.start_time_ms > last.start_time_ms
        })
        .await;
    assert!(!alive(pid), "the old process still runs");
    wait_log(&rt, "w-label", "main", "replaced").await;
    assert_eq!(s.containers[0].restart_count, 0);
    assert_ne!(pid_of(tmp.path(), "w-label", "main", 0), pid);
    clean_up(&m, &mut rec, &["pod-w-label"]).await;
}

#[tokio::test]
async fn sandboxes_of_pods_no_longer_desired_are_removed_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    // Left behind by an earlier edgecore; deleted from the cloud while it was down.
    let orphan = pod(
        "w-orphan",
        RestartPolicy::Always,
        vec![sh("main", "sleep 60")],
    );
    let sandbox = rt.run_sandbox(&orphan).await.expect("sandbox");
    rt.start_container(
        &sandbox,
        &orphan,
        &orphan.containers[0],
        &ContainerConfig {
            env: vec![],
            attempt: 0,
            mounts: vec![],
        },
    )
    .await
    .expect("start");
    let pid = pid_of(tmp.path(), "w-orphan", "main", 0);

    let (m, mut rec) = manager(rt.clone());
    let kept = pod(
        "w-kept",
        RestartPolicy::Always,
        vec![sh("main", "sleep 60")],
    );
    m.sync(vec![kept]).await;
    rec.forgotten("pod-w-orphan").await;
    assert!(!tmp.path().join("w-orphan").exists());
    wait_until("the orphan's process is gone", || !alive(pid)).await;
    rec.status("w-kept", "Running", |s| s.phase == PodPhase::Running)
        .await;
    assert_eq!(m.worker_count().await, 1);
    clean_up(&m, &mut rec, &["pod-w-kept"]).await;
}

#[tokio::test]
async fn the_environment_is_resolved_and_missing_config_maps_wait() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let mut env_c = sh("env", "env; echo \"arg: $1\"");
    env_c.args = vec!["sh".into(), "$(GREETING)".into()];
    env_c.env = vec![
        EnvVar {
            name: "POD".into(),
            value: EnvValue::FieldRef("metadata.name".into()),
        },
        EnvVar {
            name: "NODE".into(),
            value: EnvValue::FieldRef("spec.nodeName".into()),
        },
        EnvVar {
            name: "IP".into(),
            value: EnvValue::FieldRef("status.podIP".into()),
        },
        EnvVar {
            name: "GREETING".into(),
            value: EnvValue::Literal("hi $(POD) on $(NODE) at $$(IP)".into()),
        },
        EnvVar {
            name: "OPTIONAL".into(),
            value: EnvValue::SecretKey {
                name: "creds".into(),
                key: "k".into(),
                optional: true,
            },
        },
    ];
    let ok = pod("w-env", RestartPolicy::Never, vec![env_c]);
    let mut cm_c = sh("main", "sleep 60");
    cm_c.env = vec![EnvVar {
        name: "SETTING".into(),
        value: EnvValue::ConfigMapKey {
            name: "settings".into(),
            key: "level".into(),
            optional: false,
        },
    }];
    let waiting = pod("w-cm", RestartPolicy::Always, vec![cm_c]);
    m.sync(vec![ok, waiting]).await;

    rec.status("w-env", "Succeeded", |s| s.phase == PodPhase::Succeeded)
        .await;
    let log = wait_log(&rt, "w-env", "env", "arg:").await;
    assert!(log.contains("POD=pod-w-env\n"), "{log}");
    assert!(log.contains("NODE=rig-7\n"), "{log}");
    assert!(log.contains(&format!("IP={HOST_IP}\n")), "{log}");
    assert!(
        log.contains("GREETING=hi pod-w-env on rig-7 at $(IP)\n"),
        "{log}"
    );
    assert!(
        log.contains("arg: hi pod-w-env on rig-7 at $(IP)\n"),
        "{log}"
    );
    assert!(!log.contains("OPTIONAL="), "{log}");

    let s = rec
        .status("w-cm", "CreateContainerConfigError", |s| {
            matches!(&s.containers[0].state,
                ContainerState::Waiting { reason, .. } if reason == "CreateContainerConfigError")
        })
        .await;
    assert_eq!(s.phase, PodPhase::Pending);
    let ContainerState::Waiting { message, .. } = &s.containers[0].state else {
        unreachable!()
    };
    assert!(message.contains("configmap \"settings\""), "{message}");
    assert!(message.contains("not available on this node"), "{message}");
    clean_up(&m, &mut rec, &["pod-w-env", "pod-w-cm"]).await;
}

#[tokio::test]
async fn a_pod_with_a_huge_grace_period_is_still_stopped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let mut p = pod(
        "w-huge",
        RestartPolicy::Always,
        vec![sh("main", "sleep 60")],
    );
    p.termination_grace_period_seconds = i64::MAX as u64;
    m.sync(vec![p]).await;
    rec.status("w-huge", "Running", |s| {
        s.phase == PodPhase::Running && is_running(&s.containers[0])
    })
    .await;
    let pid = pid_of(tmp.path(), "w-huge", "main", 0);
    m.sync(vec![]).await;
    rec.forgotten("pod-w-huge").await;
    wait_until("the process is gone", || !alive(pid)).await;
    assert!(!tmp.path().join("w-huge").exists());
    assert_eq!(m.worker_count().await, 0);
}

#[tokio::test]
async fn a_forced_deletion_cuts_a_graceful_stop_short() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let mut p = pod(
        "w-force",
        RestartPolicy::Always,
        vec![sh(
            "main",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        )],
    );
    p.termination_grace_period_seconds = 30;
    m.sync(vec![p.clone()]).await;
    rec.status("w-force", "Running", |s| s.phase == PodPhase::Running)
        .await;
    wait_log(&rt, "w-force", "main", "ready").await;
    let pid = pid_of(tmp.path(), "w-force", "main", 0);

    // A graceful deletion: SIGTERM is ignored, so the stop would take its 30 s.
    p.deletion_grace_period_seconds = Some(30);
    m.sync(vec![p.clone()]).await;
    sleep(Duration::from_millis(500)).await;
    assert!(alive(pid));
    // `kubectl delete --grace-period=0 --force` meanwhile.
    p.deletion_grace_period_seconds = Some(0);
    let t = Instant::now();
    m.sync(vec![p.clone()]).await;
    let s = rec.status("w-force", "removed", |s| s.removed).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert!(matches!(
        s.containers[0].state,
        ContainerState::Terminated {
            exit_code: 137,
            signal: Some(9),
            ..
        }
    ));
    assert!(!alive(pid));
    wait_workers(&m, 0).await;
    m.sync(vec![]).await;
    rec.forgotten("pod-w-force").await;
}

#[tokio::test]
async fn a_start_slower_than_the_timeout_is_adopted_not_run_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pods");
    let rt = Arc::new(
        ProcessRuntime::new(root.clone(), slow_shim(tmp.path(), "0.8"), HOST_IP.into())
            .with_shim_start_timeout(Duration::from_millis(200)),
    );
    let (m, mut rec) = manager(rt.clone());
    let p = pod(
        "w-slow",
        RestartPolicy::Always,
        vec![sh("main", "echo started; sleep 60")],
    );
    m.sync(vec![p]).await;
    let s = rec
        .status("w-slow", "Running", |s| {
            s.phase == PodPhase::Running && is_running(&s.containers[0])
        })
        .await;
    // The start timed out first (and was retried), yet only one instance ever ran.
    assert!(rec.statuses("w-slow").iter().any(|(_, s)| matches!(
        &s.containers[0].state,
        ContainerState::Waiting { reason, .. } if reason == "RunContainerError"
    )));
    assert_eq!(s.containers[0].container_id, "process://w-slow/main/0");
    assert_eq!(s.containers[0].restart_count, 0);
    let pid = pid_of(&root, "w-slow", "main", 0);
    sleep(5 * POLL).await;
    let log = wait_log(&rt, "w-slow", "main", "started").await;
    assert_eq!(log.matches("started").count(), 1, "{log}");
    assert_eq!(attempts(&root, "w-slow", "main"), ["0"]);
    assert!(alive(pid));
    clean_up(&m, &mut rec, &["pod-w-slow"]).await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn an_image_change_restarts_only_that_container() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    let mut a = sh(
        "a",
        "echo kept > \"$SKERRY_VOLUME_SCRATCH/kept\"; echo a-started; sleep 60",
    );
    a.volume_mounts.push(VolumeMount {
        name: "scratch".into(),
        mount_path: "/scratch".into(),
        read_only: false,
        sub_path: String::new(),
    });
    let mut p = pod(
        "w-image",
        RestartPolicy::Always,
        vec![a, sh("b", "echo b-started; sleep 60")],
    );
    p.volumes.push(Volume {
        name: "scratch".into(),
        source: VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: None,
        },
    });
    m.sync(vec![p.clone()]).await;
    let before = rec
        .status("w-image", "Running", |s| {
            s.phase == PodPhase::Running && s.containers.iter().all(is_running)
        })
        .await;
    let kept = tmp.path().join("w-image/volumes/scratch/kept");
    wait_until("a wrote to its volume", || kept.exists()).await;
    let pid_a = pid_of(tmp.path(), "w-image", "a", 0);
    let pid_b = pid_of(tmp.path(), "w-image", "b", 0);

    let mut changed = p.clone();
    changed.containers[1].image = "local/none:v2".into();
    let t = Instant::now();
    m.sync(vec![changed]).await;
    let s = rec
        .status_since("w-image", t, "b restarted", |s| {
            s.containers[1].restart_count == 1 && is_running(&s.containers[1])
        })
        .await;
    assert_eq!(s.phase, PodPhase::Running);
    assert_eq!(
        s.start_time_ms, before.start_time_ms,
        "the pod was not replaced"
    );
    let (ca, cb) = (&s.containers[0], &s.containers[1]);
    assert_eq!(
        (ca.container_id.as_str(), ca.restart_count),
        ("process://w-image/a/0", 0)
    );
    assert_eq!(cb.container_id, "process://w-image/b/1");
    assert_eq!(cb.image, "local/none:v2");
    assert!(matches!(
        cb.last_state,
        Some(ContainerState::Terminated { .. })
    ));
    assert!(!alive(pid_b), "b's old process still runs");
    let new_b = pid_of(tmp.path(), "w-image", "b", 1);
    assert_ne!(new_b, pid_b);
    assert!(alive(new_b));
    // a, the sandbox and its volume are untouched.
    assert!(alive(pid_a));
    assert_eq!(pid_of(tmp.path(), "w-image", "a", 0), pid_a);
    assert_eq!(attempts(tmp.path(), "w-image", "a"), ["0"]);
    assert!(kept.exists(), "the emptyDir volume was recreated");
    wait_until("b's old instance removed", || {
        attempts(tmp.path(), "w-image", "b") == ["1"]
    })
    .await;
    let log = wait_log(&rt, "w-image", "a", "a-started").await;
    assert_eq!(log.matches("a-started").count(), 1, "{log}");
    // The pod ran throughout.
    sleep(5 * POLL).await;
    rec.drain();
    for (at, s) in rec.statuses("w-image") {
        if at >= t {
            assert_eq!(s.phase, PodPhase::Running, "{s:?}");
        }
    }
    clean_up(&m, &mut rec, &["pod-w-image"]).await;
    assert!(!alive(pid_a) && !alive(new_b));
}

#[tokio::test]
async fn a_restarted_manager_restarts_containers_whose_spec_changed_meanwhile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = pod(
        "w-respec",
        RestartPolicy::Always,
        vec![sh("main", "echo v1; sleep 60")],
    );
    let pid = {
        let (m, mut rec) = manager(runtime(tmp.path()));
        m.sync(vec![p.clone()]).await;
        rec.status("w-respec", "Running", |s| is_running(&s.containers[0]))
            .await;
        m.shutdown().await;
        pid_of(tmp.path(), "w-respec", "main", 0)
    };
    assert!(alive(pid));

    let mut changed = p.clone();
    changed.containers[0] = sh("main", "echo v2; sleep 60");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    m.sync(vec![changed]).await;
    let s = rec
        .status("w-respec", "restarted with the new command", |s| {
            s.containers[0].restart_count == 1 && is_running(&s.containers[0])
        })
        .await;
    assert_eq!(s.containers[0].container_id, "process://w-respec/main/1");
    assert!(!alive(pid), "the old command still runs");
    let new_pid = pid_of(tmp.path(), "w-respec", "main", 1);
    assert_ne!(new_pid, pid);
    wait_log(&rt, "w-respec", "main", "v2").await;
    // Once: the new instance is taken to match and left running.
    sleep(10 * POLL).await;
    rec.drain();
    assert!(alive(new_pid));
    assert_eq!(pid_of(tmp.path(), "w-respec", "main", 1), new_pid);
    wait_until("the old instance removed", || {
        attempts(tmp.path(), "w-respec", "main") == ["1"]
    })
    .await;
    assert!(rec
        .statuses("w-respec")
        .iter()
        .all(|(_, s)| s.containers[0].restart_count <= 1));
    clean_up(&m, &mut rec, &["pod-w-respec"]).await;
    assert!(!alive(new_pid));
}

fn config_map(name: &str, data: &[(&str, &str)]) -> EdgeConfigMap {
    EdgeConfigMap {
        namespace: "rigs".into(),
        name: name.into(),
        data: data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        binary_data: BTreeMap::new(),
    }
}

fn volume_mount(name: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: format!("/etc/{name}"),
        read_only: false,
        sub_path: String::new(),
    }
}

/// Mount points at or under `dir`, from `/proc/self/mountinfo` (escapes aside: the test paths
/// have none).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).expect("canonical");
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// A pod with a configMap volume, a secret volume and its env from the secret runs; a
/// ConfigMap update reaches the file without a container restart; a pod whose ConfigMap is
/// missing waits with CreateContainerConfigError and starts once it arrives; removal leaves
/// nothing mounted and no pod directory.
#[tokio::test]
async fn config_map_and_secret_volumes_and_env_follow_the_node_configs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());

    let mut main = sh(
        "main",
        "echo \"token=$S_TOKEN user=$USER_NAME\"; \
         while true; do echo \"level=$(cat \"$SKERRY_VOLUME_SETTINGS/level\")\"; sleep 0.1; done",
    );
    main.env_from = vec![EnvFromSource {
        prefix: "S_".into(),
        source: EnvFromKind::Secret("creds".into()),
        optional: false,
    }];
    main.env = vec![EnvVar {
        name: "USER_NAME".into(),
        value: EnvValue::SecretKey {
            name: "creds".into(),
            key: "USER".into(),
            optional: false,
        },
    }];
    main.volume_mounts = vec![volume_mount("settings"), volume_mount("tls")];
    let mut p = pod("w-cfg", RestartPolicy::Always, vec![main]);
    p.volumes = vec![
        Volume {
            name: "settings".into(),
            source: VolumeSource::ConfigMap {
                name: "settings".into(),
                items: vec![],
                default_mode: None,
                optional: false,
            },
        },
        Volume {
            name: "tls".into(),
            source: VolumeSource::Secret {
                name: "creds".into(),
                items: vec![],
                default_mode: None,
                optional: false,
            },
        },
    ];
    let mut waiting_c = sh("main", "echo started; sleep 60");
    waiting_c.volume_mounts = vec![volume_mount("later")];
    let mut waiting = pod("w-later", RestartPolicy::Always, vec![waiting_c]);
    waiting.volumes = vec![Volume {
        name: "later".into(),
        source: VolumeSource::ConfigMap {
            name: "later".into(),
            items: vec![],
            default_mode: None,
            optional: false,
        },
    }];

    let mut configs = ConfigSet::default();
    configs.insert_config_map(config_map("settings", &[("level", "1")]));
    configs.insert_secret(EdgeSecret {
        namespace: "rigs".into(),
        name: "creds".into(),
        kind: "Opaque".into(),
        data: BTreeMap::from([
            ("TOKEN".into(), b"s3cr3t-t0ken".to_vec()),
            ("USER".into(), b"robot".to_vec()),
        ]),
    });
    let desired = |pods: Vec<EdgePod>, configs: &ConfigSet| Desired {
        pods,
        configs: configs.clone(),
        unknown: None,
    };
    m.sync(desired(vec![p.clone(), waiting.clone()], &configs))
        .await;

    rec.status("w-cfg", "Running", |s| is_running(&s.containers[0]))
        .await;
    let log = wait_log(&rt, "w-cfg", "main", "level=1").await;
    assert!(log.contains("token=s3cr3t-t0ken user=robot\n"), "{log}");
    let volumes = tmp.path().join("w-cfg/volumes");
    assert_eq!(
        std::fs::read_to_string(volumes.join("settings/level")).expect("level"),
        "1"
    );
    assert_eq!(
        std::fs::read(volumes.join("tls/TOKEN")).expect("token"),
        b"s3cr3t-t0ken"
    );
    if nix::unistd::geteuid().is_root() {
        // As root, the secret volume is a tmpfs: secrets never reach the disk.
        assert_eq!(
            mounts_under(&volumes).len(),
            1,
            "{:?}",
            mounts_under(&volumes)
        );
    }
    let pid = pid_of(tmp.path(), "w-cfg", "main", 0);

    // The pod whose ConfigMap is not on the node waits, saying which one.
    let s = rec
        .status("w-later", "CreateContainerConfigError", |s| {
            matches!(&s.containers[0].state,
                ContainerState::Waiting { reason, .. } if reason == "CreateContainerConfigError")
        })
        .await;
    let ContainerState::Waiting { message, .. } = &s.containers[0].state else {
        unreachable!()
    };
    assert!(message.contains("configmap \"later\""), "{message}");
    assert!(message.contains("volume \"later\""), "{message}");

    // An update of the ConfigMap reaches the running container's file; it is not restarted.
    configs.insert_config_map(config_map("settings", &[("level", "2")]));
    m.sync(desired(vec![p.clone(), waiting.clone()], &configs))
        .await;
    wait_log(&rt, "w-cfg", "main", "level=2").await;
    assert_eq!(
        std::fs::read_to_string(volumes.join("settings/level")).expect("level"),
        "2"
    );
    assert_eq!(pid_of(tmp.path(), "w-cfg", "main", 0), pid);
    assert!(alive(pid));
    assert_eq!(attempts(tmp.path(), "w-cfg", "main"), ["0"]);

    // The missing ConfigMap arrives: the waiting pod starts.
    configs.insert_config_map(config_map("later", &[("x", "y")]));
    m.sync(desired(vec![p.clone(), waiting.clone()], &configs))
        .await;
    rec.status("w-later", "Running", |s| is_running(&s.containers[0]))
        .await;
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("w-later/volumes/later/x")).expect("x"),
        "y"
    );
    rec.drain();
    for (_, s) in rec.statuses("w-cfg") {
        assert!(
            !format!("{s:?}").contains("s3cr3t"),
            "a secret in a status: {s:?}"
        );
    }
    assert_eq!(
        rec.statuses("w-cfg").last().expect("status").1.containers[0].restart_count,
        0
    );

    // Removal: nothing stays mounted, no pod directory stays.
    m.sync(desired(vec![], &configs)).await;
    rec.forgotten("pod-w-cfg").await;
    rec.forgotten("pod-w-later").await;
    wait_until("the process is gone", || !alive(pid)).await;
    assert!(!tmp.path().join("w-cfg").exists());
    assert!(!tmp.path().join("w-later").exists());
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
}

/// Volumes left by pods that were removed while edgecore was down (after their sandbox was)
/// are removed at start, and those of pods that are still wanted are reused: an emptyDir keeps
/// its contents across an edgecore restart.
#[tokio::test]
async fn volumes_survive_a_restart_and_leftovers_are_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = sh(
        "main",
        "echo run >> \"$SKERRY_VOLUME_SCRATCH/runs\"; echo up; sleep 60",
    );
    c.volume_mounts = vec![volume_mount("scratch")];
    let mut p = pod("w-keep", RestartPolicy::Always, vec![c]);
    p.volumes = vec![Volume {
        name: "scratch".into(),
        source: VolumeSource::EmptyDir {
            memory: true,
            size_limit_bytes: Some(1 << 20),
        },
    }];
    let runs = tmp.path().join("w-keep/volumes/scratch/runs");
    {
        let (m, mut rec) = manager(runtime(tmp.path()));
        m.sync(vec![p.clone()]).await;
        rec.status("w-keep", "Running", |s| is_running(&s.containers[0]))
            .await;
        wait_until("the container wrote to its volume", || runs.exists()).await;
        m.shutdown().await;
    }
    // A leftover: volumes (here a tmpfs, as root) of a pod that no longer runs or is wanted.
    let leftover = tmp.path().join("gone-uid/volumes/mem");
    std::fs::create_dir_all(&leftover).expect("leftover");
    if nix::unistd::geteuid().is_root() {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&leftover)
            .status()
            .expect("mount");
        assert!(status.success());
        assert_eq!(mounts_under(&tmp.path().join("gone-uid")).len(), 1);
    }

    let rt = runtime(tmp.path());
    let (m, mut rec) = manager(rt.clone());
    m.sync(vec![p.clone()]).await;
    wait_until("the leftover volumes are removed", || {
        !tmp.path().join("gone-uid").exists()
    })
    .await;
    assert!(mounts_under(tmp.path())
        .iter()
        .all(|m| m.contains("w-keep")));
    let s = rec
        .status("w-keep", "adopted", |s| is_running(&s.containers[0]))
        .await;
    assert_eq!(s.containers[0].restart_count, 0);
    assert_eq!(
        std::fs::read_to_string(&runs).expect("runs"),
        "run\n",
        "the emptyDir lost its contents"
    );
    clean_up(&m, &mut rec, &["pod-w-keep"]).await;
    assert!(!tmp.path().join("w-keep").exists());
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
}
