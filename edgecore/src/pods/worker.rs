//! One pod's worker: a tokio task that carries out what its [`PodMachine`] decides.
//!
//! The worker is the machine's only I/O: it calls the runtime, feeds the results back, reports
//! the status when it changed, and listens for the manager's commands while it has nothing else
//! to do, and while it stops containers (a stop may last the whole grace period, and a forced
//! deletion meanwhile shortens it). It never holds a lock while it waits for the runtime.
//!
//! It also owns the pod's probe tasks (`super::probes`): after every step they are made to
//! follow the machine's running containers, and their verdicts are fed to the machine like any
//! other event, so a readiness change is reported as soon as it is decided.
//!
//! It also prepares the volumes a container mounts before starting it, tears the pod's volumes
//! down after its sandbox (only when the pod goes: a sandbox replaced because it died keeps
//! them), and brings materialised configMap and secret volumes up to date when the manager says
//! the pod's objects changed (and once when it starts, for an adopted pod whose objects changed
//! while edgecore was down).

use super::lifecycle::{self, Hook, HookTarget, POST_START_LIMIT};
use super::probes::{FailureTap, ProbeKind, ProbeSupervisor};
use super::recorder;
use super::state::hooks::{StopSequence, StopStep};
use super::state::{wall_ms, Action, Event, Failure, Now, Outcome, PodMachine};
use super::{PodRef, Shared};
use crate::runtime::{ContainerConfig, ContainerRunState, Runtime, RuntimeError, Sandbox};
use protocol::events::Occurrence;
use protocol::pod::{EdgePod, LifecycleHandler};
use protocol::status::PodStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{error::TryRecvError, UnboundedReceiver};
use tracing::{debug, info, warn};

/// The waiting reason of a container whose pod the runtime cannot honour
/// ([`Runtime::check_runnable`]): kubelet's for a container it will not create as configured.
const NOT_RUNNABLE: &str = "CreateContainerConfigError";

/// What the manager tells a worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// A new version of the desired pod (same uid), boxed: a pod is large beside the other commands.
    Update(Box<EdgePod>),
    /// The pod left the desired set: stop it and forget it.
    Forget,
    /// A ConfigMap or Secret the pod uses changed (or arrived, or went).
    ConfigChanged,
    /// edgecore is shutting down: end without touching the containers.
    Shutdown,
}

/// How `finish` went.
enum Finish {
    /// The worker's job is over.
    Done,
    /// Commands arrived meanwhile: go on with these events.
    Continue(Vec<Event>),
}

/// A pod worker (see the module docs).
pub(crate) struct Worker {
    machine: PodMachine,
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    rx: UnboundedReceiver<Command>,
    last_sent: Option<PodStatus>,
    /// Probe tasks of the running containers; dropping the worker aborts them.
    probes: ProbeSupervisor,
    /// The pod's configMap and secret volumes may be out of date.
    volumes_stale: bool,
    /// The pod's labels or annotations changed: its downward API files may be out of date.
    downward_stale: bool,
    /// The pod its events are about.
    pod_ref: PodRef,
    /// The runtime's name, the scheme of the container IDs reported (`containerd://<id>`, as
    /// kubelet's `<runtime>://<id>`; `process://<pod-uid>/<container>/<attempt>`).
    id_scheme: String,
}

impl Worker {
    /// A worker for `machine`'s pod, receiving commands on `rx`.
    pub fn new(
        machine: PodMachine,
        runtime: Arc<dyn Runtime>,
        shared: Arc<Shared>,
        rx: UnboundedReceiver<Command>,
    ) -> Self {
        let pod_ref = PodRef::of(machine.pod());
        let tap: FailureTap = {
            let (sink, pod_ref) = (shared.sink.clone(), pod_ref.clone());
            Arc::new(move |container: &str, kind: ProbeKind, output: &str| {
                sink.pod_event(
                    &pod_ref,
                    recorder::unhealthy(container, kind, output, wall_ms()),
                )
            })
        };
        let version = runtime.version();
        let id_scheme = match version.split_once("://") {
            Some((name, _)) if !name.is_empty() => name.to_string(),
            _ => "process".to_string(),
        };
        Self {
            id_scheme,
            probes: ProbeSupervisor::new(runtime.clone(), tap),
            machine,
            runtime,
            shared,
            rx,
            last_sent: None,
            volumes_stale: true,
            downward_stale: false,
            pod_ref,
        }
    }

    /// Records what happened as events of the pod (see `super::recorder`).
    fn record(&self, occurrences: impl IntoIterator<Item = Occurrence>) {
        for occ in occurrences {
            // The recorder names containers alone; which list one is in is the pod's.
            let init = occ.container().is_some_and(|c| {
                self.machine
                    .pod()
                    .init_containers
                    .iter()
                    .any(|i| i.container.name == c)
            });
            let occ = if init { occ.in_init_container() } else { occ };
            self.shared.sink.pod_event(&self.pod_ref, occ);
        }
    }

    /// Runs the pod until it is finished or edgecore shuts down.
    pub async fn run(mut self) {
        info!(state = self.machine.state().name(), "pod worker started");
        let mut events = vec![Event::Tick];
        loop {
            // Commands that arrived during the last runtime call apply after its result.
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                        debug!("pod worker stopped; the containers keep running");
                        return;
                    }
                    Ok(command) => events.extend(self.command_event(command)),
                    Err(TryRecvError::Empty) => break,
                }
            }
            while let Some(verdict) = self.probes.try_next() {
                events.push(Event::Probe(verdict));
            }
            if self.volumes_stale {
                self.volumes_stale = false;
                let configs = self.shared.configs.borrow().clone();
                self.shared
                    .volumes
                    .refresh(self.machine.pod(), configs)
                    .await;
            }
            let now = Now::current();
            let before = self.machine.state().name();
            let mut action = Action::Wait(None);
            for event in events.drain(..) {
                action = self.machine.step(event, now);
            }
            let after = self.machine.state().name();
            if before != after {
                info!(from = before, to = after, "pod state changed");
            }
            if std::mem::take(&mut self.downward_stale) {
                // After the step: the machine holds the updated pod now.
                let configs = self.shared.configs.borrow().clone();
                self.shared
                    .volumes
                    .refresh(self.machine.pod(), configs)
                    .await;
            }
            self.report();
            self.probes.sync(&self.machine);
            let next = match action {
                Action::Finish(outcome) => match self.finish(outcome).await {
                    Some(Finish::Done) => {
                        info!(?outcome, "pod worker finished");
                        return;
                    }
                    Some(Finish::Continue(more)) => {
                        events = more;
                        continue;
                    }
                    None => None,
                },
                other => self.execute(other).await,
            };
            match next {
                Some(event) => events.push(event),
                None => {
                    debug!("pod worker stopped; the containers keep running");
                    return;
                }
            }
        }
    }

    /// Sends the status if it changed since the last report.
    fn report(&mut self) {
        let Some(mut status) = self.machine.status() else {
            return;
        };
        for c in status
            .containers
            .iter_mut()
            .chain(&mut status.init_containers)
        {
            if !c.container_id.is_empty() {
                c.container_id = format!("{}://{}", self.id_scheme, c.container_id);
            }
        }
        if self.last_sent.as_ref() != Some(&status) {
            debug!(
                phase = status.phase.as_str(),
                removed = status.removed,
                "pod status changed"
            );
            self.shared.sink.pod_status(status.clone());
            let label = self.pod_label();
            self.record(recorder::status_changed(
                self.last_sent.as_ref(),
                &status,
                &label,
                wall_ms(),
            ));
            self.last_sent = Some(status);
        }
    }

    /// The pod as kubelet names it in messages: `name_namespace(uid)`.
    fn pod_label(&self) -> String {
        let pod = self.machine.pod();
        format!("{}_{}({})", pod.name, pod.namespace, pod.uid)
    }

    /// Runs the postStart hook of slot `index`'s instance `id`. The manager's commands are
    /// heard meanwhile: once the machine no longer waits for this hook (the pod is being
    /// deleted, the spec changed), the hook is dropped and the machine goes on. `None` when
    /// edgecore is shutting down.
    async fn post_start(
        &mut self,
        index: usize,
        id: String,
        handler: LifecycleHandler,
    ) -> Option<Event> {
        let Some(sandbox) = self.machine.sandbox().cloned() else {
            return Some(Event::Tick);
        };
        let container = self.container_name(index).to_string();
        let pod_label = self.pod_label();
        info!(container, %id, "running the postStart hook");
        let result = {
            let target = HookTarget {
                runtime: self.runtime.clone(),
                sandbox: &sandbox,
                container_id: &id,
                container: &container,
                pod_label: &pod_label,
            };
            let hook = lifecycle::run(&target, &handler, POST_START_LIMIT);
            tokio::pin!(hook);
            loop {
                tokio::select! {
                    result = &mut hook => break Some(result),
                    command = self.rx.recv() => {
                        let event = command.and_then(|c| self.command_event(c))?;
                        let next = self.machine.step(event, Now::current());
                        self.report();
                        if !matches!(&next, Action::PostStart { index: i, id: j, .. }
                                     if *i == index && *j == id)
                        {
                            break None;
                        }
                    }
                }
            }
        };
        let Some(result) = result else {
            info!(container, %id, "postStart hook dropped: the pod moved on");
            return Some(Event::Tick);
        };
        match &result {
            Ok(()) => info!(container, %id, "postStart hook returned"),
            Err(message) => {
                warn!(container, %id, %message, "postStart hook failed; killing the container");
                self.record([recorder::hook_failed(
                    &container,
                    Hook::PostStart,
                    message,
                    wall_ms(),
                )]);
            }
        }
        Some(Event::PostStartDone { index, id, result })
    }

    /// Ends the worker's job in the manager's books, unless commands arrived meanwhile.
    /// `None` when edgecore is shutting down.
    async fn finish(&mut self, outcome: Outcome) -> Option<Finish> {
        let mut registry = self.shared.registry.lock().await;
        let mut events = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return None,
                Ok(Command::Update(pod)) => events.push(Event::Update(*pod)),
                Ok(Command::Forget) => events.push(Event::Forget),
                // The pod is done: its volumes are gone or going.
                Ok(Command::ConfigChanged) => {}
                Err(TryRecvError::Empty) => break,
            }
        }
        if !events.is_empty() {
            return Some(Finish::Continue(events));
        }
        let uid = self.machine.pod().uid.clone();
        match outcome {
            // Remember the uid, so that the pod is not started again while the cache still
            // holds it (until the cloud removes the object).
            Outcome::Deleted => {
                if let Some(entry) = registry.entries.get_mut(&uid) {
                    entry.worker = None;
                }
            }
            Outcome::Forgotten => registry.forget(&uid, self.shared.sink.as_ref()),
        }
        Some(Finish::Done)
    }

    /// Carries out one action and returns its result; `None` when edgecore is shutting down.
    async fn execute(&mut self, action: Action) -> Option<Event> {
        let rt = self.runtime.clone();
        let event = match action {
            Action::CreateSandbox => {
                let result = rt.run_sandbox(self.machine.pod()).await;
                if let Err(e) = &result {
                    warn!(error = %e, "cannot create the pod sandbox; retrying with back-off");
                    self.record([recorder::sandbox_failed(&e.to_string(), wall_ms())]);
                }
                Event::SandboxCreated(result.map_err(|e| Failure::from(&e)))
            }
            Action::StartContainer {
                index,
                container,
                config,
            } => {
                let Some(sandbox) = self.machine.sandbox().cloned() else {
                    return Some(Event::Tick);
                };
                let attempt = config.attempt;
                // What the runtime cannot honour is refused, never run without a word.
                if let Err(message) = rt.check_runnable(self.machine.pod()) {
                    warn!(container = %container.name, attempt, %message,
                          "the runtime cannot honour the pod; not starting it");
                    self.record([recorder::prepare_failed(
                        &container.name,
                        NOT_RUNNABLE,
                        &message,
                        wall_ms(),
                    )]);
                    return Some(Event::Started {
                        index,
                        attempt,
                        result: Err(Failure {
                            reason: NOT_RUNNABLE.to_string(),
                            message,
                        }),
                    });
                }
                let configs = self.shared.configs.borrow().clone();
                let config = match self
                    .shared
                    .volumes
                    .prepare(self.machine.pod(), &container, configs)
                    .await
                {
                    Ok(mounts) => ContainerConfig { mounts, ..config },
                    Err(e) => {
                        warn!(container = %container.name, attempt, error = %e,
                              "cannot prepare the container's volumes; retrying with back-off");
                        self.record([recorder::prepare_failed(
                            &container.name,
                            e.waiting_reason(),
                            &e.to_string(),
                            wall_ms(),
                        )]);
                        return Some(Event::Started {
                            index,
                            attempt,
                            result: Err(Failure {
                                reason: e.waiting_reason().to_string(),
                                message: e.to_string(),
                            }),
                        });
                    }
                };
                let result = rt
                    .start_container(&sandbox, self.machine.pod(), &container, &config)
                    .await;
                match &result {
                    Ok(c) => {
                        info!(container = %container.name, attempt, id = %c.id, "container started");
                        self.record(recorder::started(
                            &container.name,
                            &container.image,
                            c,
                            wall_ms(),
                        ));
                    }
                    // Not the container's failure: the pod needs a new sandbox first.
                    Err(e @ RuntimeError::SandboxNotReady { .. }) => {
                        warn!(container = %container.name, attempt, error = %e,
                              "pod sandbox is not ready; replacing it");
                        return Some(Event::SandboxNotReady {
                            sandbox_id: sandbox.id,
                        });
                    }
                    Err(e) => {
                        warn!(container = %container.name, attempt, error = %e,
                              "container failed to start; retrying with back-off");
                        self.record(recorder::start_failed(
                            &container.name,
                            &container.image,
                            e,
                            wall_ms(),
                        ));
                    }
                }
                Event::Started {
                    index,
                    attempt,
                    result: result.map_err(|e| Failure::from(&e)),
                }
            }
            Action::Observe(targets) => {
                let Some(sandbox) = self.machine.sandbox().cloned() else {
                    return Some(Event::Tick);
                };
                // The sandbox first, as kubelet's PLEG relists sandboxes with containers: in a
                // dead one, the containers' states no longer matter. A runtime that cannot tell
                // now is asked again at the next poll.
                match rt.sandbox_ready(&sandbox).await {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(sandbox = %sandbox.id,
                              "pod sandbox is not ready any more; stopping the pod's containers \
                               to start them again in a new sandbox");
                        return Some(Event::SandboxNotReady {
                            sandbox_id: sandbox.id,
                        });
                    }
                    Err(e) => warn!(sandbox = %sandbox.id, error = %e,
                                    "cannot read the pod sandbox's state"),
                }
                let mut results = Vec::with_capacity(targets.len());
                for (index, id) in targets {
                    let result = rt.container_state(&sandbox, &id).await;
                    let container = self.container_name(index);
                    match &result {
                        Ok(ContainerRunState::Exited {
                            exit_code, signal, ..
                        }) => {
                            info!(container, %id, exit_code, ?signal, "container exited")
                        }
                        Ok(ContainerRunState::Unknown { message, .. }) => {
                            warn!(container, %id, %message, "container state unknown; counted as a failure")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(container, %id, error = %e, "cannot read the container state")
                        }
                    }
                    results.push((index, id, result.map_err(|e| Failure::from(&e))));
                }
                Event::Observed(results)
            }
            Action::RemoveContainers(ids) => {
                if let Some(sandbox) = self.machine.sandbox().cloned() {
                    for id in &ids {
                        if let Err(e) = rt.remove_container(&sandbox, id).await {
                            warn!(%id, error = %e,
                                  "cannot remove an old container instance; the pod's removal will");
                        }
                    }
                }
                Event::ContainersRemoved(ids)
            }
            Action::PostStart { index, id, handler } => {
                return self.post_start(index, id, handler).await
            }
            Action::StopContainers { targets, grace } => {
                let Some(sandbox) = self.machine.sandbox().cloned() else {
                    return Some(Event::Tick);
                };
                // Each instance's preStop hook, as the machine says (see `state::hooks`).
                let hooks = HookRun {
                    pod_label: self.pod_label(),
                    record: {
                        let (sink, pod_ref) = (self.shared.sink.clone(), self.pod_ref.clone());
                        Arc::new(move |occ| sink.pod_event(&pod_ref, occ))
                    },
                };
                let with_hooks = |targets: Vec<(usize, String)>, grace, m: &PodMachine| {
                    targets
                        .into_iter()
                        .map(|(index, id)| {
                            let hook = m.pre_stop_hook(index, grace).cloned().map(|h| {
                                let name = m
                                    .slots()
                                    .get(index)
                                    .map(|s| s.name.clone())
                                    .unwrap_or_default();
                                (h, name)
                            });
                            (index, id, hook)
                        })
                        .collect::<Vec<_>>()
                };
                let targets = with_hooks(targets, grace, &self.machine);
                info!(
                    containers = targets.len(),
                    grace_ms = grace.as_millis() as u64,
                    "stopping containers"
                );
                let at = wall_ms();
                self.record(
                    targets
                        .iter()
                        .map(|(index, _, _)| recorder::killing(self.container_name(*index), at))
                        .collect::<Vec<_>>(),
                );
                // A stop may take the whole grace: the manager's commands are heard meanwhile,
                // and one that shortens the grace (a forced deletion during a graceful one)
                // restarts the stop with the shorter grace. Dropping a stop in progress only
                // stops waiting for it; the new one signals again.
                let mut current = grace;
                let mut stop = Box::pin(stop_all(
                    rt.clone(),
                    sandbox.clone(),
                    targets,
                    grace,
                    hooks.clone(),
                ));
                let stopped = loop {
                    tokio::select! {
                        stopped = &mut stop => break stopped,
                        command = self.rx.recv() => {
                            let event = command.and_then(|c| self.command_event(c))?;
                            // The machine still stops these containers (a deletion during a
                            // restart or a sandbox replacement makes it `Terminating`): its next
                            // action is this stop again, possibly with a shorter grace.
                            let next = self.machine.step(event, Now::current());
                            self.report();
                            if let Action::StopContainers { targets, grace } = next {
                                if grace < current {
                                    info!(
                                        containers = targets.len(),
                                        grace_ms = grace.as_millis() as u64,
                                        "grace period shortened; stopping containers again"
                                    );
                                    current = grace;
                                    // The preStop hooks ran or run already: not again.
                                    let targets = targets
                                        .into_iter()
                                        .map(|(index, id)| (index, id, None))
                                        .collect();
                                    stop = Box::pin(stop_all(
                                        rt.clone(),
                                        sandbox.clone(),
                                        targets,
                                        grace,
                                        hooks.clone(),
                                    ));
                                }
                            }
                        }
                    }
                };
                let mut results = Vec::new();
                for (index, id, result) in stopped {
                    if let Err(e) = &result {
                        warn!(container = self.container_name(index), %id, error = %e,
                              "cannot stop the container; retrying with back-off");
                    }
                    results.push((index, id, result.map_err(|e| Failure::from(&e))));
                }
                Event::Stopped(results)
            }
            Action::RemoveSandbox { sandbox, grace } => {
                // The volumes go once nothing runs that may use them.
                let result = match rt.remove_sandbox(&sandbox, grace).await {
                    Ok(()) => self
                        .shared
                        .volumes
                        .teardown(&sandbox.pod_uid)
                        .await
                        .map_err(|e| Failure {
                            reason: e.waiting_reason().to_string(),
                            message: e.to_string(),
                        }),
                    Err(e) => Err(Failure::from(&e)),
                };
                match &result {
                    Ok(()) => info!("pod sandbox and volumes removed"),
                    Err(e) => {
                        warn!(error = %e.message,
                              "cannot remove the pod sandbox or its volumes; retrying with back-off")
                    }
                }
                Event::SandboxRemoved(result)
            }
            Action::Wait(until) => {
                let timer = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    command = self.rx.recv() => match command.and_then(|c| self.command_event(c)) {
                        Some(event) => event,
                        None => return None,
                    },
                    verdict = self.probes.next() => Event::Probe(verdict),
                    () = timer => Event::Tick,
                }
            }
            Action::Finish(_) => Event::Tick,
        };
        Some(event)
    }

    /// The machine's event for a command (`None`: shut down), noting on the way what the
    /// command makes stale: every volume after a config change, the downward API files after
    /// a change of the pod's labels or annotations.
    fn command_event(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Update(pod) => {
                let now = self.machine.pod();
                self.downward_stale |=
                    pod.labels != now.labels || pod.annotations != now.annotations;
                Some(Event::Update(*pod))
            }
            Command::Forget => Some(Event::Forget),
            Command::ConfigChanged => {
                self.volumes_stale = true;
                Some(Event::ConfigChanged)
            }
            Command::Shutdown => None,
        }
    }

    fn container_name(&self, index: usize) -> &str {
        self.machine
            .slots()
            .get(index)
            .map(|s| s.name.as_str())
            .unwrap_or("?")
    }
}

/// One instance to stop: slot index, instance id, and its preStop hook with the container's
/// name if it is to run one.
type StopTarget = (usize, String, Option<(LifecycleHandler, String)>);

/// What the preStop hooks of a stop need besides the runtime.
#[derive(Clone)]
struct HookRun {
    /// The pod as kubelet names it in messages.
    pod_label: String,
    /// Records an event of the pod.
    record: Arc<dyn Fn(Occurrence) + Send + Sync>,
}

/// Stops `targets` (slot index, instance id, its preStop hook and container name, if it is to
/// run one) in parallel, each with `grace`: the hook first, then SIGTERM with what is left of
/// the grace ([`StopSequence`]). Reads the state each ended in.
async fn stop_all(
    rt: Arc<dyn Runtime>,
    sandbox: Sandbox,
    targets: Vec<StopTarget>,
    grace: Duration,
    hooks: HookRun,
) -> Vec<(usize, String, Result<ContainerRunState, RuntimeError>)> {
    let stops = targets.into_iter().map(|(index, id, hook)| {
        let rt = rt.clone();
        let sandbox = sandbox.clone();
        let hooks = hooks.clone();
        async move {
            let mut sequence =
                StopSequence::new(grace, hook.is_some(), tokio::time::Instant::now());
            if let (StopStep::PreStop { deadline }, Some((handler, container))) =
                (sequence.step(), &hook)
            {
                info!(container, %id, "running the preStop hook");
                let target = HookTarget {
                    runtime: rt.clone(),
                    sandbox: &sandbox,
                    container_id: &id,
                    container,
                    pod_label: &hooks.pod_label,
                };
                let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout_at(deadline, lifecycle::run(&target, handler, limit))
                    .await
                {
                    Ok(Ok(())) => info!(container, %id, "preStop hook returned"),
                    Ok(Err(message)) => {
                        warn!(container, %id, %message, "preStop hook failed; stopping the container");
                        metrics::counter!("skerry_container_hook_failures_total", "hook" => "preStop")
                            .increment(1);
                        (hooks.record)(recorder::hook_failed(
                            container,
                            Hook::PreStop,
                            &message,
                            wall_ms(),
                        ));
                    }
                    Err(_) => warn!(container, %id,
                                    "preStop hook did not return within the grace period; stopping the container"),
                }
                sequence.hook_ended(tokio::time::Instant::now());
            }
            let term = match sequence.step() {
                StopStep::Terminate { grace } => grace,
                StopStep::PreStop { .. } => grace,
            };
            let result = match rt.stop_container(&sandbox, &id, term).await {
                // Stopped: its state says how it ended; if it cannot be read any more, the
                // container is gone all the same.
                Ok(()) => Ok(rt.container_state(&sandbox, &id).await.unwrap_or_else(|e| {
                    ContainerRunState::Unknown {
                        message: e.to_string(),
                        started_at_ms: None,
                    }
                })),
                Err(e) => Err(e),
            };
            (index, id, result)
        }
    });
    futures::future::join_all(stops).await
}
