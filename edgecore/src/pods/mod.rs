//! Pod workers: what turns the node's desired pods into running containers, offline.
//!
//! The [`PodManager`] is level-triggered: [`PodManager::sync`] gets the node's complete desired
//! set (from the local cache, so it works before and without any cloud connection) and makes
//! reality follow it. Every pod gets one worker, a tokio task owning an explicit state machine
//! (`state::PodMachine`, Krustlet-style: each state knows the status it reports) that creates the
//! sandbox, starts the containers, polls their states as kubelet's PLEG does, restarts them per
//! `restartPolicy` with kubelet's exponential back-off (`CrashLoopBackOff`), and stops them
//! gracefully (SIGTERM, SIGKILL after the grace period) when the pod is deleted, replaced or no
//! longer wanted. Status changes go to a [`StatusSink`] (the durable report outbox).
//!
//! A restarted edgecore *adopts* what its runtime still runs: the first `sync` lists the
//! runtime's sandboxes once; a desired pod with a sandbox continues from its containers (running
//! ones are not restarted, restart counts continue from the recorded attempt numbers), and
//! sandboxes of pods that are no longer desired (deleted while edgecore was down) are removed.
//! Shutting edgecore down ([`PodManager::shutdown`]) ends the workers but leaves the containers
//! running, as kubelet does.
//!
//! `sync` also gets the node's ConfigMaps and Secrets ([`Desired::configs`]). Workers read them
//! from the set of the latest sync, never from a mix of two (environment, configMap and secret
//! volumes). The manager compares each set with the one before: the workers of pods that use a
//! changed object are told, and update their pods' volumes atomically (running containers see the
//! new files; their environment stays, as in Kubernetes) and retry at once the containers that
//! waited for configuration (`CreateContainerConfigError`). Volumes ([`crate::volumes`]) are
//! prepared by the worker before each container start and torn down with the pod's sandbox; what
//! pods that no longer exist left behind is removed at the first sync.

mod backoff;
mod env;
mod prober;
mod probes;
mod state;
mod worker;

pub use backoff::BackoffPolicy;

use crate::cache::{config_refs, ConfigSet};
use crate::runtime::{ExistingPod, Runtime};
use crate::volumes::Volumes;
use protocol::pod::EdgePod;
use protocol::status::PodStatus;
use state::{Now, PodMachine, Settings};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{error, info, info_span, warn, Instrument};
use worker::{Command, Worker};

/// Where pod workers send status; implemented by the report outbox (durable, coalescing).
pub trait StatusSink: Send + Sync + 'static {
    /// The latest status of a pod (called on every change; the sink coalesces).
    fn pod_status(&self, status: PodStatus);
    /// The pod is gone from this node for good (removed from the desired set): drop anything
    /// queued for it.
    fn pod_forgotten(&self, namespace: &str, name: &str);
}

/// What [`PodManager::sync`] makes reality follow: the node's pods and the ConfigMaps and Secrets
/// they use. A plain `Vec<EdgePod>` converts into a set without ConfigMaps or Secrets.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Every pod of the node.
    pub pods: Vec<EdgePod>,
    /// Every ConfigMap and Secret of the node.
    pub configs: ConfigSet,
}

impl From<Vec<EdgePod>> for Desired {
    fn from(pods: Vec<EdgePod>) -> Self {
        Self {
            pods,
            configs: ConfigSet::default(),
        }
    }
}

/// The configs of the latest sync, as the pod machines read them.
struct ConfigView(watch::Receiver<Arc<ConfigSet>>);

impl env::ConfigLookup for ConfigView {
    fn configs(&self) -> Arc<ConfigSet> {
        self.0.borrow().clone()
    }
}

/// Tunables of the pod workers. The defaults are kubelet's; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodManagerConfig {
    /// How often a worker reads its running containers' states (kubelet's PLEG relists every
    /// second; 500 ms notices exits sooner at negligible cost for a few local pods).
    pub poll_interval: Duration,
    /// Restart back-off: 10 s doubling up to 5 minutes, reset after 10 minutes of running.
    /// Failed runtime operations (sandbox creation, starts, stops) are retried with it too.
    pub backoff: BackoffPolicy,
    /// Grace given to the containers of a sandbox found at start-up that belongs to no desired
    /// pod (its pod was deleted while edgecore was down, so its own grace is unknown).
    pub orphan_grace: Duration,
    /// How long [`PodManager::shutdown`] waits for workers to notice before aborting them (a
    /// worker may be in the middle of a runtime call, e.g. a graceful stop).
    pub shutdown_timeout: Duration,
}

impl Default for PodManagerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            backoff: BackoffPolicy::default(),
            orphan_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Runs the node's pods: one worker per pod (see the module docs).
pub struct PodManager {
    runtime: Arc<dyn Runtime>,
    settings: Arc<Settings>,
    config: PodManagerConfig,
    shared: Arc<Shared>,
    /// Serialises `sync` and `shutdown`, which may wait for the runtime (`list_pods`); the
    /// registry lock itself is never held across a runtime call.
    serial: Mutex<()>,
}

/// What the manager and its workers share.
pub(crate) struct Shared {
    /// Status destination.
    pub sink: Arc<dyn StatusSink>,
    /// The workers' books.
    pub registry: Mutex<Registry>,
    /// The pods' volumes on the host.
    pub volumes: Volumes,
    /// The ConfigMaps and Secrets of the latest sync.
    pub configs: watch::Sender<Arc<ConfigSet>>,
}

/// The manager's books, by pod uid.
#[derive(Default)]
pub(crate) struct Registry {
    /// Every pod the manager knows.
    pub entries: HashMap<String, Entry>,
    /// Whether the runtime's existing pods were listed (adoption and orphan removal done).
    adopted: bool,
    /// Set by `shutdown`: `sync` does nothing any more.
    shut_down: bool,
    /// Removals of orphaned sandboxes in progress.
    cleanups: Vec<JoinHandle<()>>,
}

/// One pod the manager knows.
pub(crate) struct Entry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The version last handed to the worker.
    pub pod: EdgePod,
    /// The worker; `None` once a deleted pod was stopped and reported removed.
    pub worker: Option<WorkerHandle>,
}

/// A running worker.
pub(crate) struct WorkerHandle {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    /// Told to forget the pod.
    forgetting: bool,
}

impl Registry {
    /// Whether a pod other than `uid` uses `namespace/name`: then the sink must not be told to
    /// forget that name (it would drop the other pod's reports; a stale report of the old uid
    /// is ignored by the cloud anyway).
    fn name_in_use(&self, uid: Option<&str>, namespace: &str, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(u, e)| Some(u.as_str()) != uid && e.namespace == namespace && e.name == name)
    }

    /// Drops the pod `uid` from the books and tells the sink to forget it.
    pub fn forget(&mut self, uid: &str, sink: &dyn StatusSink) {
        if let Some(entry) = self.entries.remove(uid) {
            if !self.name_in_use(None, &entry.namespace, &entry.name) {
                sink.pod_forgotten(&entry.namespace, &entry.name);
            }
        }
    }
}

impl PodManager {
    /// A manager running pods on `runtime` for node `node_name` (whose IP is `host_ip`),
    /// reporting to `sink`, with the default [`PodManagerConfig`].
    pub fn new(
        runtime: Arc<dyn Runtime>,
        sink: Arc<dyn StatusSink>,
        node_name: String,
        host_ip: String,
    ) -> Self {
        Self::with_config(
            runtime,
            sink,
            node_name,
            host_ip,
            PodManagerConfig::default(),
        )
    }

    /// Like [`PodManager::new`] with explicit tunables (tests use short back-offs and polls).
    pub fn with_config(
        runtime: Arc<dyn Runtime>,
        sink: Arc<dyn StatusSink>,
        node_name: String,
        host_ip: String,
        config: PodManagerConfig,
    ) -> Self {
        let (configs, view) = watch::channel(Arc::new(ConfigSet::default()));
        let settings = Arc::new(Settings {
            node_name,
            host_ip,
            backoff: config.backoff,
            poll_interval: config.poll_interval,
            config: Arc::new(ConfigView(view)),
        });
        Self {
            runtime,
            settings,
            config,
            shared: Arc::new(Shared {
                sink,
                registry: Mutex::new(Registry::default()),
                volumes: Volumes::without_root(),
                configs,
            }),
            serial: Mutex::new(()),
        }
    }

    /// Keeps the pods' volumes in `volumes` (`<data-dir>/pods`). A manager built without it
    /// can run pods whose only volumes are hostPath volumes; any other volume fails its
    /// container's start with a message saying so.
    pub fn with_volumes(self, volumes: Volumes) -> Self {
        // Called before the first sync: no worker shares these yet.
        let shared = Arc::new(Shared {
            sink: self.shared.sink.clone(),
            registry: Mutex::new(Registry::default()),
            volumes,
            configs: self.shared.configs.clone(),
        });
        Self { shared, ..self }
    }

    /// Level-triggered: `desired` is the node's complete current set of pods and their
    /// ConfigMaps and Secrets (from the sled cache). Starts workers for new pods (adopting what
    /// the runtime already runs for that uid), hands changed specs to existing workers, tells the
    /// workers of pods whose ConfigMaps or Secrets changed, and stops+removes pods that are no
    /// longer desired. Also removes runtime sandboxes and volumes that belong to no desired pod
    /// (deleted while edgecore was down).
    pub async fn sync(&self, desired: impl Into<Desired>) {
        let Desired {
            pods: desired,
            configs,
        } = desired.into();
        let _serial = self.serial.lock().await;
        let (dead, first) = {
            let registry = self.shared.registry.lock().await;
            if registry.shut_down {
                return;
            }
            // Workers that ended unexpectedly (they should not: they never panic on runtime
            // errors). What such a worker ran may still run, so it is dealt with only from a
            // listing of the runtime made after it died: restarted and adopting what runs if
            // its pod is still desired, removed as an orphan if not.
            let dead: HashSet<String> = registry
                .entries
                .iter()
                .filter(|(_, e)| e.worker.as_ref().is_some_and(|w| w.task.is_finished()))
                .map(|(uid, _)| uid.clone())
                .collect();
            (dead, !registry.adopted)
        };
        // Published before any worker is told or started, so that each reads this set.
        let changed_configs = configs.changes_from(&self.shared.configs.borrow());
        if !changed_configs.is_empty() {
            self.shared.configs.send_replace(Arc::new(configs));
        }
        let list_needed = first || !dead.is_empty();
        let mut existing: HashMap<String, ExistingPod> = HashMap::new();
        let mut listed = false;
        if list_needed {
            match self.runtime.list_pods().await {
                Ok(pods) => {
                    listed = true;
                    existing = pods
                        .into_iter()
                        .map(|p| (p.sandbox.pod_uid.clone(), p))
                        .collect();
                    if first {
                        info!(
                            sandboxes = existing.len(),
                            "listed the runtime's pods for adoption"
                        );
                    }
                }
                Err(e) if first => {
                    // Starting pods without knowing what already runs could start duplicates
                    // of adopted containers; a runtime that cannot list would not start them
                    // either. The next sync tries again.
                    warn!(error = %e,
                          "cannot list the runtime's pods; no pod is started until it answers");
                    return;
                }
                Err(e) => warn!(error = %e,
                    "cannot list the runtime's pods; a dead pod worker is restarted (or its pod \
                     removed) once it answers"),
            }
        }

        let listed_uids: HashSet<String> = existing.keys().cloned().collect();
        // Volumes of pods that neither run nor are wanted (removed while edgecore was down,
        // after their sandbox was).
        let leftover_volumes = if listed && first {
            self.shared.volumes.pods_with_volumes().await
        } else {
            Vec::new()
        };

        // The desired set, by uid (the last of duplicates wins).
        let mut order: Vec<String> = Vec::new();
        let mut wanted: HashMap<String, EdgePod> = HashMap::new();
        for pod in desired {
            if wanted.insert(pod.uid.clone(), pod.clone()).is_some() {
                warn!(pod = %pod.key(), uid = %pod.uid, "pod listed twice in the desired set");
            } else {
                order.push(pod.uid.clone());
            }
        }

        let mut registry = self.shared.registry.lock().await;
        if registry.shut_down {
            return;
        }
        if listed {
            registry.adopted = true;
        }
        for uid in &order {
            let pod = &wanted[uid];
            let spawn = match registry.entries.get_mut(uid) {
                None => true,
                Some(entry) => match &mut entry.worker {
                    // Deleted and reported removed: nothing more to do while the cache holds it.
                    None => false,
                    // Restarted only from a listing made after it died: a worker restarted
                    // without adopting what the dead one ran would start duplicates of its
                    // containers.
                    Some(w) if w.task.is_finished() && listed && dead.contains(uid) => {
                        error!(pod = %pod.key(), uid = %pod.uid,
                               "pod worker ended unexpectedly; restarting it");
                        true
                    }
                    // Until such a listing succeeds, the entry stays dead, so that the next
                    // sync lists again.
                    Some(w) if w.task.is_finished() => false,
                    Some(w) => {
                        if entry.pod != *pod || w.forgetting {
                            w.forgetting = false;
                            entry.pod = pod.clone();
                            // A closed channel means the worker is ending; the next sync sees it.
                            let _ = w.tx.send(Command::Update(pod.clone()));
                        }
                        if !changed_configs.is_empty()
                            && config_refs(pod).iter().any(|r| changed_configs.contains(r))
                        {
                            let _ = w.tx.send(Command::ConfigChanged);
                        }
                        false
                    }
                },
            };
            if spawn {
                let adopt = existing.remove(uid);
                self.spawn_worker(&mut registry, pod.clone(), adopt);
            }
        }

        // Pods no longer desired.
        let gone: Vec<String> = registry
            .entries
            .keys()
            .filter(|uid| !wanted.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            let Some(entry) = registry.entries.get_mut(&uid) else {
                continue;
            };
            let done = match &mut entry.worker {
                None => true,
                Some(w) if w.task.is_finished() => {
                    // Its worker died. What it ran is removed as an orphan below, from a listing
                    // made after it died; until there is one, the dead entry stays so that the
                    // next sync lists again.
                    if !(listed && dead.contains(&uid)) {
                        continue;
                    }
                    error!(pod = %entry.pod.key(), uid = %uid,
                           "pod worker ended unexpectedly; removing what it ran");
                    true
                }
                Some(w) => {
                    if !w.forgetting {
                        info!(pod = %entry.pod.key(), uid = %uid, "pod no longer desired; stopping it");
                        w.forgetting = true;
                        let _ = w.tx.send(Command::Forget);
                    }
                    false
                }
            };
            if done {
                registry.forget(&uid, self.shared.sink.as_ref());
            }
        }

        // Sandboxes of pods nobody wants (deleted while edgecore was down).
        if listed {
            let known: HashSet<&String> = registry.entries.keys().collect();
            let orphans: Vec<ExistingPod> = existing
                .into_values()
                .filter(|p| {
                    !wanted.contains_key(&p.sandbox.pod_uid) && !known.contains(&p.sandbox.pod_uid)
                })
                .collect();
            registry.cleanups.retain(|c| !c.is_finished());
            for orphan in orphans {
                let task = self.spawn_orphan_removal(orphan);
                registry.cleanups.push(task);
            }
            for uid in leftover_volumes {
                if wanted.contains_key(&uid)
                    || registry.entries.contains_key(&uid)
                    || listed_uids.contains(&uid)
                {
                    continue;
                }
                let task = self.spawn_volume_removal(uid);
                registry.cleanups.push(task);
            }
        }
    }

    /// Removes the volumes of a pod that is gone, in the background, retrying with back-off.
    fn spawn_volume_removal(&self, uid: String) -> JoinHandle<()> {
        let volumes = self.shared.volumes.clone();
        let backoff = self.config.backoff;
        let span = info_span!("pod", uid = %uid);
        tokio::spawn(
            async move {
                info!("removing the volumes of a pod that no longer exists");
                let mut failures = 0;
                while let Err(e) = volumes.teardown(&uid).await {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                          "cannot remove the volumes of a pod that no longer exists");
                    tokio::time::sleep(delay).await;
                }
            }
            .instrument(span),
        )
    }

    /// Starts a worker for `pod`, from `existing` if the runtime already runs it.
    fn spawn_worker(&self, registry: &mut Registry, pod: EdgePod, existing: Option<ExistingPod>) {
        let span = info_span!("pod", namespace = %pod.namespace, pod = %pod.name, uid = %pod.uid);
        if let Some(existing) = &existing {
            let _entered = span.enter();
            info!(
                containers = existing.containers.len(),
                "adopting the pod's existing sandbox"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let machine = PodMachine::new(self.settings.clone(), pod.clone(), existing, Now::current());
        let worker = Worker::new(machine, self.runtime.clone(), self.shared.clone(), rx);
        // The registry is locked by the caller until the entry is in, so the worker cannot
        // finish before its entry exists.
        let task = tokio::spawn(worker.run().instrument(span));
        registry.entries.insert(
            pod.uid.clone(),
            Entry {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                pod,
                worker: Some(WorkerHandle {
                    tx,
                    task,
                    forgetting: false,
                }),
            },
        );
    }

    /// Removes an orphaned sandbox in the background, retrying with back-off.
    fn spawn_orphan_removal(&self, orphan: ExistingPod) -> JoinHandle<()> {
        let runtime = self.runtime.clone();
        let shared = self.shared.clone();
        let volumes = self.shared.volumes.clone();
        let grace = self.config.orphan_grace;
        let backoff = self.config.backoff;
        let span = info_span!("pod", namespace = %orphan.namespace, pod = %orphan.name,
                              uid = %orphan.sandbox.pod_uid);
        tokio::spawn(
            async move {
                info!("removing a pod that is no longer desired (deleted while edgecore was down)");
                let mut failures = 0;
                loop {
                    // The volumes go once nothing runs that may use them.
                    let result = match runtime.remove_sandbox(&orphan.sandbox, grace).await {
                        Ok(()) => volumes
                            .teardown(&orphan.sandbox.pod_uid)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(()) => break,
                        Err(e) => {
                            failures += 1;
                            let delay = backoff.delay(failures);
                            warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                                  "cannot remove the orphaned pod sandbox");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                info!("orphaned pod removed");
                let registry = shared.registry.lock().await;
                if !registry.name_in_use(None, &orphan.namespace, &orphan.name) {
                    shared.sink.pod_forgotten(&orphan.namespace, &orphan.name);
                }
            }
            .instrument(span),
        )
    }

    /// Number of pod workers alive (for metrics).
    pub async fn worker_count(&self) -> usize {
        let registry = self.shared.registry.lock().await;
        registry
            .entries
            .values()
            .filter(|e| e.worker.as_ref().is_some_and(|w| !w.task.is_finished()))
            .count()
    }

    /// Stops the manager's workers WITHOUT stopping containers (edgecore shutdown: pods keep
    /// running, as kubelet does, and the next edgecore adopts them).
    pub async fn shutdown(&self) {
        let _serial = self.serial.lock().await;
        let (tasks, cleanups) = {
            let mut registry = self.shared.registry.lock().await;
            registry.shut_down = true;
            let mut tasks = Vec::new();
            for (_, entry) in registry.entries.drain() {
                if let Some(w) = entry.worker {
                    let _ = w.tx.send(Command::Shutdown);
                    tasks.push(w.task);
                }
            }
            (tasks, std::mem::take(&mut registry.cleanups))
        };
        // An interrupted orphan removal is redone by the next edgecore.
        for cleanup in cleanups {
            cleanup.abort();
        }
        let deadline = crate::runtime::deadline_after(
            tokio::time::Instant::now(),
            self.config.shutdown_timeout,
        );
        let count = tasks.len();
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                warn!("a pod worker did not stop in time; aborting it");
                task.abort();
            }
        }
        info!(
            workers = count,
            "pod workers stopped; containers left running"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        ContainerConfig, ContainerInfo, ContainerRunState, RuntimeError, Sandbox,
    };
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
    }

    impl FakeRuntime {
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
            self.containers
                .lock()
                .await
                .retain(|c| c.0 != sandbox.pod_uid);
            self.removed.lock().await.push(sandbox.pod_uid.clone());
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
}
