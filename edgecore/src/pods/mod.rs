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
//! A set whose completeness is unknown ([`Desired::unknown`]: the cache was found damaged and is
//! being rebuilt from the cloud) removes nothing: sandboxes it does not list are *held* as they
//! run, a pod it lists is adopted, and only the first known set (after the cloud's snapshot)
//! removes what it does not list. Each sandbox has one owner at a time, a worker or a claim (see
//! `Registry`), so that a removal and a worker never act on the same sandbox.
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
mod lifecycle;
mod prober;
mod probes;
mod recorder;
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
    /// queued for it (its status and its events).
    fn pod_forgotten(&self, namespace: &str, name: &str);
    /// Something kubelet would record an Event for happened to `pod` (`Pulled`, `Started`,
    /// `BackOff`, ...). Counted into the pod's event series (`protocol::events`) and sent on
    /// the pod's events topic; never blocks, never replaces the pod's status.
    fn pod_event(&self, pod: &PodRef, occ: protocol::events::Occurrence);
}

/// Which pod an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

impl PodRef {
    /// The reference of `pod`.
    pub fn of(pod: &EdgePod) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        }
    }
}

/// What [`PodManager::sync`] makes reality follow: the node's pods and the ConfigMaps and Secrets
/// they use. A plain `Vec<EdgePod>` converts into a known set without ConfigMaps or Secrets.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Every pod of the node.
    pub pods: Vec<EdgePod>,
    /// Every ConfigMap and Secret of the node.
    pub configs: ConfigSet,
    /// Why `pods` may not be every pod of the node, if so (the cache was found unreadable and
    /// is being rebuilt from the cloud, see `crate::cache`). Then what the runtime runs for
    /// pods not in `pods` is *held*: left running untouched, never removed, until a sync whose
    /// set is known (after the cloud's snapshot) says whether it is still wanted.
    pub unknown: Option<String>,
}

impl From<Vec<EdgePod>> for Desired {
    fn from(pods: Vec<EdgePod>) -> Self {
        Self {
            pods,
            ..Self::default()
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
    /// Notified when a sync should run again without a change of the desired set (an orphan
    /// removal ended, so a worker waiting for it may start); see [`PodManager::wakeups`].
    pub wake: Arc<tokio::sync::Notify>,
}

/// The manager's books, by pod uid.
///
/// **One owner per sandbox.** What the runtime runs for a pod uid is acted on by exactly one
/// owner at a time: its worker (in `entries`), or a [`Claim`] (held while the desired state is
/// unknown, or being removed as an orphan). A uid is never in both maps; both are changed only
/// under the registry lock, and a worker is started for a uid only once no claim is left on
/// it. So the start-up orphan removal and a pod worker can never race for the same sandbox
/// (issue #11: a pod that ran twice, shims of deleted pods left running).
#[derive(Default)]
pub(crate) struct Registry {
    /// Every pod the manager knows.
    pub entries: HashMap<String, Entry>,
    /// Sandboxes owned by no worker, by pod uid.
    claims: HashMap<String, Claim>,
    /// Whether the runtime's existing pods were listed (adoption done).
    adopted: bool,
    /// Whether volumes left by pods that no longer exist were swept (done at the first sync
    /// whose desired set is known).
    volumes_swept: bool,
    /// Set by `shutdown`: `sync` does nothing any more.
    shut_down: bool,
    /// Removals of leftover volumes in progress.
    cleanups: Vec<JoinHandle<()>>,
}

/// The owner of a sandbox that no worker runs.
enum Claim {
    /// Found running while the desired state is unknown: left exactly as it runs.
    Held {
        /// `namespace/name` of the pod, for the logs.
        pod: String,
    },
    /// Being removed as an orphan; a worker for the same uid waits until it is done.
    Removing(JoinHandle<()>),
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
                wake: Arc::new(tokio::sync::Notify::new()),
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
            wake: self.shared.wake.clone(),
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
            unknown,
        } = desired.into();
        let _serial = self.serial.lock().await;
        let (dead, first, holding, sweep) = {
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
            let holding = registry
                .claims
                .values()
                .any(|c| matches!(c, Claim::Held { .. }));
            (
                dead,
                !registry.adopted,
                holding,
                !registry.volumes_swept && unknown.is_none(),
            )
        };
        // Published before any worker is told or started, so that each reads this set.
        let changed_configs = configs.changes_from(&self.shared.configs.borrow());
        if !changed_configs.is_empty() {
            self.shared.configs.send_replace(Arc::new(configs));
        }
        // While sandboxes are held, every sync lists again: a held pod may become desired (and
        // its worker must adopt it as it runs now) or wanted no more.
        let list_needed = first || !dead.is_empty() || holding;
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
        let leftover_volumes = if listed && sweep {
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
            if sweep {
                registry.volumes_swept = true;
            }
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
                            let _ = w.tx.send(Command::Update(Box::new(pod.clone())));
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
                match registry.claims.get(uid) {
                    Some(Claim::Removing(_)) => {
                        // Its previous sandbox is still being removed: the worker starts once
                        // that is done (the removal wakes a sync), never beside it.
                        info!(pod = %pod.key(), uid = %pod.uid,
                              "waiting for the removal of the pod's previous sandbox");
                        continue;
                    }
                    // Held, and the runtime could not say how it runs now: taken over at the
                    // next sync that lists.
                    Some(Claim::Held { .. }) if !listed => continue,
                    Some(Claim::Held { .. }) => {
                        info!(pod = %pod.key(), uid = %pod.uid,
                              "a held pod is desired: its worker adopts it as it runs");
                        registry.claims.remove(uid);
                    }
                    None => {}
                }
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
                // While the set is unknown nothing is removed: a pod missing from it may be
                // one whose cache entry cannot be read. The first known set decides.
                Some(_) if unknown.is_some() => false,
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

        // Sandboxes of pods nobody wants (deleted while edgecore was down), or, while the
        // desired set is unknown, that the cache does not list: held, not removed.
        if listed {
            let orphans: Vec<ExistingPod> = existing
                .into_values()
                .filter(|p| {
                    !wanted.contains_key(&p.sandbox.pod_uid)
                        && !registry.entries.contains_key(&p.sandbox.pod_uid)
                })
                .collect();
            // Held sandboxes the runtime no longer has need no owner.
            let present: HashSet<&String> = orphans.iter().map(|p| &p.sandbox.pod_uid).collect();
            registry.claims.retain(|uid, claim| match claim {
                Claim::Held { .. } => present.contains(uid),
                Claim::Removing(_) => true,
            });
            for orphan in orphans {
                let uid = orphan.sandbox.pod_uid.clone();
                match (registry.claims.get(&uid), &unknown) {
                    (Some(Claim::Removing(_)), _) | (Some(Claim::Held { .. }), Some(_)) => {}
                    (None, Some(why)) => {
                        warn!(pod = %format!("{}/{}", orphan.namespace, orphan.name), uid = %uid,
                              reason = %why,
                              "keeping a running pod the cache does not list: the desired state is \
                               unknown until the cloud's snapshot");
                        registry.claims.insert(
                            uid,
                            Claim::Held {
                                pod: format!("{}/{}", orphan.namespace, orphan.name),
                            },
                        );
                    }
                    (_, None) => {
                        if let Some(Claim::Held { pod }) = registry.claims.get(&uid) {
                            info!(pod = %pod, uid = %uid,
                                  "the desired state is known again and does not list a held pod");
                        }
                        let task = self.spawn_orphan_removal(orphan);
                        registry.claims.insert(uid, Claim::Removing(task));
                    }
                }
            }
            metrics::gauge!("skerry_edge_pods_held").set(
                registry
                    .claims
                    .values()
                    .filter(|c| matches!(c, Claim::Held { .. }))
                    .count() as f64,
            );
            registry.cleanups.retain(|c| !c.is_finished());
            for uid in leftover_volumes {
                if wanted.contains_key(&uid)
                    || registry.entries.contains_key(&uid)
                    || registry.claims.contains_key(&uid)
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

    /// Removes an orphaned sandbox in the background, retrying with back-off. The caller
    /// records the task as the sandbox's [`Claim::Removing`] under the registry lock it holds,
    /// so the task (which gives the claim up under that lock) cannot end before it is recorded.
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
                let mut registry = shared.registry.lock().await;
                // The claim is given up under the same lock a sync checks it under.
                registry.claims.remove(&orphan.sandbox.pod_uid);
                if !registry.name_in_use(None, &orphan.namespace, &orphan.name) {
                    shared.sink.pod_forgotten(&orphan.namespace, &orphan.name);
                }
                drop(registry);
                shared.wake.notify_one();
            }
            .instrument(span),
        )
    }

    /// Notified when a sync should run although the desired set did not change (the agent's
    /// sync loop waits on it beside the cache's changes).
    pub fn wakeups(&self) -> Arc<tokio::sync::Notify> {
        self.shared.wake.clone()
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
            let mut cleanups = std::mem::take(&mut registry.cleanups);
            for (_, claim) in registry.claims.drain() {
                if let Claim::Removing(task) = claim {
                    cleanups.push(task);
                }
            }
            (tasks, cleanups)
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
mod tests;
