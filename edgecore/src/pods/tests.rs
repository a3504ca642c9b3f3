use super::*;
use crate::runtime::{ContainerConfig, ContainerInfo, ContainerRunState, RuntimeError, Sandbox};
use async_trait::async_trait;
use protocol::pod::{EdgeContainer, RestartPolicy};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::time::Instant;

/// An in-memory runtime whose containers run until stopped.
#[derive(Default)]
struct FakeRuntime {
    list_fails: AtomicBool,
    /// Makes `container_state` panic, which ends the worker calling it.
    state_panics: AtomicBool,
    /// (uid, container id, running)
    containers: Mutex<Vec<(String, String, bool)>>,
    /// Pod names by uid, from `run_sandbox`.
    names: Mutex<HashMap<String, String>>,
    removed: Mutex<Vec<String>>,
    /// Sandboxes made by `run_sandbox`, by pod uid (the n-th has IP 10.0.0.n).
    sandboxes: Mutex<HashMap<String, u8>>,
    /// Pod uids whose sandbox died: not ready, and nothing starts in it.
    dead: Mutex<HashSet<String>>,
    /// Every start, as (pod uid, result was `SandboxNotReady`).
    starts: Mutex<Vec<(String, bool)>>,
    /// Makes `remove_sandbox` wait (a graceful stop in progress) until cleared.
    hold_removals: AtomicBool,
    /// Sandbox operations in order: `run <uid>`, `remove-start <uid>`, `remove-end <uid>`.
    events: std::sync::Mutex<Vec<String>>,
    /// Broken ownership seen: a sandbox run while it is being removed, a container started
    /// beside a running instance of itself.
    violations: std::sync::Mutex<Vec<String>>,
}

impl FakeRuntime {
    fn event(&self, what: &str, uid: &str) {
        self.events.lock().unwrap().push(format!("{what} {uid}"));
    }

    /// What the runtime of an edge whose cache was lost still runs: pod `uid` named `name`,
    /// its only container at attempt `attempt`.
    async fn seed(&self, uid: &str, name: &str, attempt: u32) {
        self.names.lock().await.insert(uid.into(), name.into());
        self.sandboxes.lock().await.insert(uid.into(), 1);
        self.containers
            .lock()
            .await
            .push((uid.into(), format!("{uid}/main/{attempt}"), true));
    }

    /// Container ids ever started for pod `uid` and not removed.
    async fn ids_of(&self, uid: &str) -> Vec<String> {
        self.containers
            .lock()
            .await
            .iter()
            .filter(|c| c.0 == uid)
            .map(|c| c.1.clone())
            .collect()
    }
}

fn sandbox_of(uid: &str) -> Sandbox {
    Sandbox {
        id: uid.into(),
        pod_uid: uid.into(),
        ip: "10.0.0.1".into(),
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn check_runnable(&self, _pod: &EdgePod) -> Result<(), String> {
        Ok(())
    }

    fn version(&self) -> String {
        "fake://0".into()
    }
    async fn status(&self) -> Result<crate::runtime::RuntimeStatus, RuntimeError> {
        Ok(crate::runtime::RuntimeStatus {
            runtime_ready: Ok(()),
            network_ready: Ok(()),
        })
    }
    async fn run_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError> {
        {
            let events = self.events.lock().unwrap();
            let count = |what: &str| {
                let e = format!("{what} {}", pod.uid);
                events.iter().filter(|x| **x == e).count()
            };
            if count("remove-start") > count("remove-end") {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("sandbox of {} run while being removed", pod.uid));
            }
        }
        self.event("run", &pod.uid);
        self.names
            .lock()
            .await
            .insert(pod.uid.clone(), pod.name.clone());
        let mut sandboxes = self.sandboxes.lock().await;
        let n = sandboxes.entry(pod.uid.clone()).or_insert(0);
        // A ready one is returned; a dead one is replaced.
        if *n == 0 || self.dead.lock().await.remove(&pod.uid) {
            *n += 1;
        }
        Ok(Sandbox {
            ip: format!("10.0.0.{n}"),
            ..sandbox_of(&pod.uid)
        })
    }
    async fn sandbox_ready(&self, sandbox: &Sandbox) -> Result<bool, RuntimeError> {
        Ok(!self.dead.lock().await.contains(&sandbox.pod_uid))
    }
    async fn start_container(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        let dead = self.dead.lock().await.contains(&sandbox.pod_uid);
        self.starts.lock().await.push((pod.uid.clone(), dead));
        if dead {
            return Err(RuntimeError::SandboxNotReady {
                sandbox: sandbox.id.clone(),
                pod: pod.key(),
                message: "killed by the test".into(),
            });
        }
        let id = format!("{}/{}/{}", sandbox.pod_uid, container.name, config.attempt);
        let prefix = format!("{}/{}/", sandbox.pod_uid, container.name);
        if self
            .containers
            .lock()
            .await
            .iter()
            .any(|c| c.2 && c.1.starts_with(&prefix))
        {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{id} started beside a running instance"));
        }
        self.containers
            .lock()
            .await
            .push((sandbox.pod_uid.clone(), id.clone(), true));
        Ok(ContainerInfo {
            id,
            name: container.name.clone(),
            attempt: config.attempt,
            state: ContainerRunState::Running { started_at_ms: 1 },
            spec_digest: None,
            image_pull: None,
            image_id: None,
        })
    }
    async fn container_state(
        &self,
        _sandbox: &Sandbox,
        id: &str,
    ) -> Result<ContainerRunState, RuntimeError> {
        assert!(
            !self.state_panics.load(Ordering::SeqCst),
            "simulated crash of the pod worker"
        );
        let containers = self.containers.lock().await;
        match containers.iter().find(|(_, c, _)| c == id) {
            Some((_, _, true)) => Ok(ContainerRunState::Running { started_at_ms: 1 }),
            // Exited just now (seen at the first poll after it stopped), so that a restart
            // waits for its whole back-off.
            Some(_) => Ok(ContainerRunState::Exited {
                exit_code: 143,
                signal: Some(15),
                reason: "Error".into(),
                started_at_ms: 1,
                finished_at_ms: state::wall_ms(),
            }),
            None => Err(RuntimeError::Internal {
                op: "state".into(),
                message: format!("no {id}"),
            }),
        }
    }
    async fn stop_container(
        &self,
        _sandbox: &Sandbox,
        id: &str,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        for c in self.containers.lock().await.iter_mut() {
            if c.1 == id {
                c.2 = false;
            }
        }
        Ok(())
    }
    async fn remove_container(&self, _sandbox: &Sandbox, id: &str) -> Result<(), RuntimeError> {
        self.containers.lock().await.retain(|c| c.1 != id);
        Ok(())
    }
    async fn remove_sandbox(
        &self,
        sandbox: &Sandbox,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.event("remove-start", &sandbox.pod_uid);
        while self.hold_removals.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.containers
            .lock()
            .await
            .retain(|c| c.0 != sandbox.pod_uid);
        self.removed.lock().await.push(sandbox.pod_uid.clone());
        self.event("remove-end", &sandbox.pod_uid);
        Ok(())
    }
    async fn exec_sync(
        &self,
        _sandbox: &Sandbox,
        _container_id: &str,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<crate::runtime::ExecOutput, RuntimeError> {
        Ok(crate::runtime::ExecOutput::default())
    }
    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
        if self.list_fails.load(Ordering::SeqCst) {
            return Err(RuntimeError::Internal {
                op: "list".into(),
                message: "runtime down".into(),
            });
        }
        let names = self.names.lock().await;
        let mut pods: BTreeMap<String, ExistingPod> = BTreeMap::new();
        for (uid, id, running) in self.containers.lock().await.iter() {
            let mut parts = id.split('/').skip(1);
            let name = parts.next().unwrap_or_default().to_string();
            let attempt = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
            let state = if *running {
                ContainerRunState::Running { started_at_ms: 1 }
            } else {
                ContainerRunState::Exited {
                    exit_code: 143,
                    signal: Some(15),
                    reason: "Error".into(),
                    started_at_ms: 1,
                    finished_at_ms: 2,
                }
            };
            pods.entry(uid.clone())
                .or_insert_with(|| ExistingPod {
                    sandbox: sandbox_of(uid),
                    namespace: "rigs".into(),
                    name: names.get(uid).cloned().unwrap_or_default(),
                    containers: Vec::new(),
                })
                .containers
                .push(ContainerInfo {
                    id: id.clone(),
                    name,
                    attempt,
                    state,
                    spec_digest: None,
                    image_pull: None,
                    image_id: None,
                });
        }
        Ok(pods.into_values().collect())
    }
    async fn read_log(
        &self,
        _sandbox: &Sandbox,
        _container: &str,
        _tail: Option<usize>,
    ) -> Result<String, RuntimeError> {
        Ok(String::new())
    }
}

#[derive(Debug)]
enum Seen {
    Status(Box<PodStatus>),
    Forgotten(String),
}

struct Sink(mpsc::UnboundedSender<Seen>);

impl StatusSink for Sink {
    fn pod_status(&self, status: PodStatus) {
        let _ = self.0.send(Seen::Status(Box::new(status)));
    }
    fn pod_forgotten(&self, _namespace: &str, name: &str) {
        let _ = self.0.send(Seen::Forgotten(name.into()));
    }
    // These tests follow statuses; the events the workers record are checked by the report
    // module's tests and the e2e `pod_events` test.
    fn pod_event(&self, _pod: &crate::pods::PodRef, _occ: protocol::events::Occurrence) {}
}

fn pod(uid: &str, name: &str) -> EdgePod {
    EdgePod {
        namespace: "rigs".into(),
        name: name.into(),
        uid: uid.into(),
        labels: BTreeMap::new(),
        containers: vec![EdgeContainer {
            name: "main".into(),
            image: "local".into(),
            image_pull_policy: "Never".into(),
            command: vec!["sleep".into()],
            ..Default::default()
        }],
        restart_policy: RestartPolicy::Always,
        termination_grace_period_seconds: 1,
        volumes: vec![],
        deletion_grace_period_seconds: None,
        dns: Default::default(),
        init_containers: Vec::new(),
        hosts: Default::default(),
        annotations: Default::default(),
        security: None,
    }
}

fn manager(rt: Arc<FakeRuntime>) -> (PodManager, mpsc::UnboundedReceiver<Seen>) {
    manager_with(
        rt,
        PodManagerConfig {
            poll_interval: Duration::from_millis(10),
            ..PodManagerConfig::default()
        },
    )
}

fn manager_with(
    rt: Arc<FakeRuntime>,
    config: PodManagerConfig,
) -> (PodManager, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let m = PodManager::with_config(
        rt,
        Arc::new(Sink(tx)),
        "n".into(),
        "10.0.0.1".into(),
        config,
    );
    (m, rx)
}

async fn wait_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, pred: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) if pred(&seen) => return,
            Ok(Some(_)) => {}
            other => panic!("not seen: {other:?}"),
        }
    }
}

#[tokio::test]
async fn no_pod_starts_before_the_runtime_can_list_what_runs() {
    let rt = Arc::new(FakeRuntime::default());
    rt.list_fails.store(true, Ordering::SeqCst);
    let (m, mut rx) = manager(rt.clone());
    m.sync(vec![pod("u1", "a")]).await;
    assert_eq!(m.worker_count().await, 0);
    assert!(rt.containers.lock().await.is_empty());
    rt.list_fails.store(false, Ordering::SeqCst);
    m.sync(vec![pod("u1", "a")]).await;
    assert_eq!(m.worker_count().await, 1);
    wait_seen(
        &mut rx,
        |s| matches!(s, Seen::Status(st) if st.phase == protocol::status::PodPhase::Running),
    )
    .await;
    m.shutdown().await;
    assert_eq!(m.worker_count().await, 0);
    // Shutdown leaves the containers running.
    assert!(rt.containers.lock().await.iter().all(|c| c.2));
    // And a shut-down manager starts nothing.
    m.sync(vec![pod("u2", "b")]).await;
    assert_eq!(m.worker_count().await, 0);
}

#[tokio::test]
async fn a_recreated_pod_does_not_make_the_sink_forget_its_name() {
    let rt = Arc::new(FakeRuntime::default());
    let (m, mut rx) = manager(rt.clone());
    m.sync(vec![pod("old", "a")]).await;
    wait_seen(&mut rx, |s| {
        matches!(s, Seen::Status(st) if st.uid == "old" && st.phase == protocol::status::PodPhase::Running)
    })
    .await;
    // Same name, new uid, in one sync: the old one is stopped, the new one runs.
    m.sync(vec![pod("new", "a")]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt.removed.lock().await.contains(&"old".to_string()) {
        assert!(Instant::now() < deadline, "old pod never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_seen(&mut rx, |s| {
        matches!(s, Seen::Status(st) if st.uid == "new" && st.phase == protocol::status::PodPhase::Running)
    })
    .await;
    // Wait until the old worker is gone from the books.
    while m.worker_count().await != 1 {
        assert!(Instant::now() < deadline, "old worker never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Ok(seen) = rx.try_recv() {
        assert!(!matches!(seen, Seen::Forgotten(_)), "{seen:?}");
    }
    // Dropping the new one forgets the name.
    m.sync(vec![]).await;
    wait_seen(&mut rx, |s| matches!(s, Seen::Forgotten(n) if n == "a")).await;
}

/// Ends the worker of the manager's only pod as a panic would, and waits until it is dead.
async fn kill_the_worker(m: &PodManager, rt: &FakeRuntime) {
    rt.state_panics.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.worker_count().await != 0 {
        assert!(Instant::now() < deadline, "the worker never died");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.state_panics.store(false, Ordering::SeqCst);
}

fn running(uid: &'static str) -> impl Fn(&Seen) -> bool {
    move |s| {
        matches!(s, Seen::Status(st)
            if st.uid == uid && st.phase == protocol::status::PodPhase::Running)
    }
}

#[tokio::test]
async fn a_dead_worker_is_restarted_only_from_a_fresh_listing_of_the_runtime() {
    let rt = Arc::new(FakeRuntime::default());
    let (m, mut rx) = manager(rt.clone());
    let p = pod("u1", "a");
    m.sync(vec![p.clone()]).await;
    wait_seen(&mut rx, running("u1")).await;
    kill_the_worker(&m, &rt).await;

    // The runtime cannot say what the dead worker left running: a worker started now could
    // not adopt it and would start attempt 0 a second time.
    rt.list_fails.store(true, Ordering::SeqCst);
    m.sync(vec![p.clone()]).await;
    assert_eq!(m.worker_count().await, 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.ids_of("u1").await, ["u1/main/0"]);

    // Once it answers, the worker is restarted and adopts the running container.
    rt.list_fails.store(false, Ordering::SeqCst);
    m.sync(vec![p.clone()]).await;
    assert_eq!(m.worker_count().await, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.ids_of("u1").await, ["u1/main/0"]);
    assert!(rt.containers.lock().await.iter().all(|c| c.2));
    m.shutdown().await;
}

#[tokio::test]
async fn what_a_dead_worker_ran_is_removed_once_its_pod_is_no_longer_desired() {
    let rt = Arc::new(FakeRuntime::default());
    let (m, mut rx) = manager(rt.clone());
    m.sync(vec![pod("u1", "a")]).await;
    wait_seen(&mut rx, running("u1")).await;
    kill_the_worker(&m, &rt).await;

    // Dropped while the runtime cannot list: nothing can be cleaned up yet, but the pod is
    // not forgotten either.
    rt.list_fails.store(true, Ordering::SeqCst);
    m.sync(vec![]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rt.removed.lock().await.is_empty());
    assert_eq!(rt.ids_of("u1").await, ["u1/main/0"]);

    // The next sync lists again and removes what the dead worker left running.
    rt.list_fails.store(false, Ordering::SeqCst);
    m.sync(vec![]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt.removed.lock().await.contains(&"u1".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the dead worker's pod was never removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rt.ids_of("u1").await.is_empty());
    wait_seen(&mut rx, |s| matches!(s, Seen::Forgotten(n) if n == "a")).await;
    m.shutdown().await;
}

/// Waits for a status of `uid` whose only container runs as its `restarts`-th restart, and
/// returns it.
async fn running_again(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    uid: &str,
    restarts: u32,
) -> PodStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Status(st)))
                if st.uid == uid
                    && st.containers[0].restart_count == restarts
                    && matches!(
                        st.containers[0].state,
                        protocol::status::ContainerState::Running { .. }
                    ) =>
            {
                return *st
            }
            Ok(Some(_)) => {}
            other => panic!("{uid} never ran its restart {restarts}: {other:?}"),
        }
    }
}

/// Waits until the fake holds exactly `ids` for pod `uid`.
async fn wait_ids(rt: &FakeRuntime, uid: &str, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.ids_of(uid).await != ids {
        assert!(
            Instant::now() < deadline,
            "{uid} holds {:?}, not {ids:?}",
            rt.ids_of(uid).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_sandbox_that_dies_under_running_containers_is_replaced() {
    let rt = Arc::new(FakeRuntime::default());
    let (m, mut rx) = manager(rt.clone());
    m.sync(vec![pod("u1", "a")]).await;
    let before = running_again(&mut rx, "u1", 0).await;
    assert_eq!(before.pod_ip, "10.0.0.1");

    rt.dead.lock().await.insert("u1".into());
    let after = running_again(&mut rx, "u1", 1).await;
    // A new sandbox (found by the poll, not by a failed start), a new IP, the container
    // stopped in the old one and started again in the new one.
    assert_eq!(rt.sandboxes.lock().await.get("u1"), Some(&2));
    assert!(rt.starts.lock().await.iter().all(|(_, dead)| !dead));
    assert_eq!(after.pod_ip, "10.0.0.2");
    assert_eq!(after.phase, protocol::status::PodPhase::Running);
    assert!(matches!(
        after.containers[0].last_state,
        Some(protocol::status::ContainerState::Terminated { exit_code: 143, .. })
    ));
    wait_ids(&rt, "u1", &["u1/main/1"]).await;
    // Replacing the sandbox is not removing the pod: no `remove_sandbox` (which would tear
    // the volumes down too).
    assert!(rt.removed.lock().await.is_empty());
    m.sync(vec![]).await;
    wait_seen(&mut rx, |s| matches!(s, Seen::Forgotten(n) if n == "a")).await;
    assert_eq!(*rt.removed.lock().await, ["u1"]);
}

#[tokio::test]
async fn a_start_into_a_dead_sandbox_replaces_it_instead_of_failing() {
    let rt = Arc::new(FakeRuntime::default());
    let (m, mut rx) = manager_with(
        rt.clone(),
        PodManagerConfig {
            poll_interval: Duration::from_millis(10),
            backoff: BackoffPolicy {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(2),
                // The fake's instances all started in 1970: no run may reset the count.
                reset_after: Duration::MAX,
            },
            ..PodManagerConfig::default()
        },
    );
    m.sync(vec![pod("u1", "a")]).await;
    running_again(&mut rx, "u1", 0).await;
    // A first exit is restarted at once.
    for c in rt.containers.lock().await.iter_mut() {
        c.2 = false;
    }
    running_again(&mut rx, "u1", 1).await;
    // The second exits waits in back-off; meanwhile nothing is polled, and the sandbox
    // dies.
    for c in rt.containers.lock().await.iter_mut() {
        c.2 = false;
    }
    wait_seen(&mut rx, |s| {
        matches!(s, Seen::Status(st) if matches!(&st.containers[0].state,
            protocol::status::ContainerState::Waiting { reason, .. }
                if reason == "CrashLoopBackOff"))
    })
    .await;
    rt.dead.lock().await.insert("u1".into());
    let after = running_again(&mut rx, "u1", 2).await;
    assert_eq!(after.pod_ip, "10.0.0.2");
    // The start that found the sandbox dead was not retried in it with back-off: the next
    // start went to the new sandbox.
    assert_eq!(
        *rt.starts.lock().await,
        [
            ("u1".to_string(), false),
            ("u1".into(), false),
            ("u1".into(), true),
            ("u1".into(), false)
        ]
    );
    m.shutdown().await;
}

fn unknown(pods: Vec<EdgePod>) -> Desired {
    Desired {
        pods,
        unknown: Some("the cache was unreadable".into()),
        ..Desired::default()
    }
}

/// Issue #11: after a cache loss, an unknown desired state keeps what runs as it runs, a pod
/// the rebuilt cache lists is adopted with the restart count the runtime kept, and only a
/// known set (the cloud's snapshot) removes the pods it does not list.
#[tokio::test]
async fn an_unknown_desired_state_holds_what_runs_and_only_a_known_set_removes_it() {
    let rt = Arc::new(FakeRuntime::default());
    rt.seed("u1", "a", 3).await;
    rt.seed("u2", "b", 0).await;
    rt.seed("u3", "c", 1).await;
    let all = ["u1/main/3", "u2/main/0", "u3/main/1"];
    let (m, mut rx) = manager(rt.clone());

    // The empty, unknown set of a lost cache: nothing stopped, removed or started.
    m.sync(unknown(vec![])).await;
    m.sync(unknown(vec![])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.worker_count().await, 0);
    assert!(rt.removed.lock().await.is_empty());
    let mut ids: Vec<String> = rt
        .containers
        .lock()
        .await
        .iter()
        .map(|c| c.1.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, all);
    assert!(rt.containers.lock().await.iter().all(|c| c.2));

    // A pod the rebuilt cache lists is adopted as it runs, its restart count kept.
    m.sync(unknown(vec![pod("u1", "a")])).await;
    let st = running_again(&mut rx, "u1", 3).await;
    assert_eq!(st.containers[0].restart_count, 3);
    assert_eq!(m.worker_count().await, 1);
    // Gone from an unknown set (its entry may have become unreadable): still not stopped.
    m.sync(unknown(vec![])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.worker_count().await, 1);
    assert!(rt.removed.lock().await.is_empty());
    assert!(rt.containers.lock().await.iter().all(|c| c.2));

    // The cloud's snapshot: b is still wanted (adopted), c is not (removed).
    m.sync(vec![pod("u1", "a"), pod("u2", "b")]).await;
    wait_ids(&rt, "u3", &[]).await;
    running_again(&mut rx, "u2", 0).await;
    assert_eq!(*rt.removed.lock().await, ["u3"]);
    assert_eq!(rt.ids_of("u1").await, ["u1/main/3"]);
    assert_eq!(rt.ids_of("u2").await, ["u2/main/0"]);
    // Nothing was started again: every pod ran once throughout.
    assert!(
        rt.starts.lock().await.is_empty(),
        "{:?}",
        rt.starts.lock().await
    );
    assert!(!rt
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("run")));
    m.shutdown().await;
}

/// Issue #11: the start-up orphan removal and a pod worker raced for the same sandbox (the pod
/// ran twice). Replayed: a removal is in progress (a graceful stop) when the pod becomes
/// desired again; its worker must not touch the runtime until the removal is done.
#[tokio::test]
async fn an_orphan_removal_and_a_worker_never_own_the_same_sandbox() {
    let rt = Arc::new(FakeRuntime::default());
    rt.seed("u1", "a", 0).await;
    rt.hold_removals.store(true, Ordering::SeqCst);
    let (m, mut rx) = manager(rt.clone());
    let wake = m.wakeups();

    // A known set without the pod: its sandbox is an orphan, its removal starts and stops.
    m.sync(vec![]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rt
        .events
        .lock()
        .unwrap()
        .contains(&"remove-start u1".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the orphan removal never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The pod is desired again while the removal is in progress: no worker yet.
    m.sync(vec![pod("u1", "a")]).await;
    m.sync(vec![pod("u1", "a")]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(m.worker_count().await, 0);
    assert_eq!(*rt.events.lock().unwrap(), ["remove-start u1"]);

    // The removal ends and wakes a sync, which starts the one worker.
    rt.hold_removals.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("the end of the removal wakes a sync");
    m.sync(vec![pod("u1", "a")]).await;
    assert_eq!(m.worker_count().await, 1);
    running_again(&mut rx, "u1", 0).await;
    assert_eq!(
        *rt.events.lock().unwrap(),
        ["remove-start u1", "remove-end u1", "run u1"]
    );
    wait_ids(&rt, "u1", &["u1/main/0"]).await;
    m.shutdown().await;
}

/// One step of [`ownership_holds_in_any_interleaving`].
#[derive(Debug, Clone)]
enum Step {
    /// A sync with the pods of the bit mask (u0, u1, u2), known or not.
    Sync { mask: u8, known: bool },
    /// Removals in progress stop (graceful stops that take long) or go on.
    HoldRemovals(bool),
    /// Time passes (workers poll, removals progress).
    Settle,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..8, proptest::bool::ANY).prop_map(|(mask, known)| Step::Sync { mask, known }),
        1 => proptest::bool::ANY.prop_map(Step::HoldRemovals),
        2 => Just(Step::Settle),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64,
        ..proptest::prelude::ProptestConfig::default()
    })]
    /// Whatever the order of syncs (known or unknown sets), slow removals and time: a sandbox
    /// is never run while it is being removed, no container runs twice, and once the removals
    /// may end a known set is what runs, each of its pods once.
    #[test]
    fn ownership_holds_in_any_interleaving(
        running in 0u8..8,
        slow in proptest::bool::ANY,
        steps in proptest::collection::vec(step(), 1..10),
        last in 0u8..8,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let uids = ["u0", "u1", "u2"];
            let set = |mask: u8| -> Vec<EdgePod> {
                (0..3)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| pod(uids[i], &format!("p{i}")))
                    .collect()
            };
            let fake = Arc::new(FakeRuntime::default());
            // What a runtime still ran when edgecore started.
            for (i, uid) in uids.iter().enumerate() {
                if running & (1 << i) != 0 {
                    fake.seed(uid, &format!("p{i}"), 2).await;
                }
            }
            // Removals are slow (graceful stops) from the start, or not.
            fake.hold_removals.store(slow, Ordering::SeqCst);
            let (m, _rx) = manager(fake.clone());
            for step in &steps {
                match step {
                    Step::Sync { mask, known: true } => m.sync(set(*mask)).await,
                    Step::Sync { mask, known: false } => m.sync(unknown(set(*mask))).await,
                    Step::HoldRemovals(hold) => fake.hold_removals.store(*hold, Ordering::SeqCst),
                    Step::Settle => tokio::time::sleep(Duration::from_millis(30)).await,
                }
            }
            fake.hold_removals.store(false, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                m.sync(set(last)).await;
                let containers = fake.containers.lock().await.clone();
                let converged = (0..3).all(|i| {
                    let live = containers.iter().filter(|c| c.0 == uids[i] && c.2).count();
                    live == usize::from(last & (1 << i) != 0)
                });
                if converged {
                    break;
                }
                assert!(Instant::now() < deadline, "never converged on {last:#b}: {containers:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            m.shutdown().await;
            let violations = fake.violations.lock().unwrap().clone();
            assert!(violations.is_empty(), "{violations:?} after {steps:?}");
        });
    }
}
