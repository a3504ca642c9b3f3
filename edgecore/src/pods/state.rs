//! The pod state machine: pure, without I/O, so that every transition is unit-tested.
//!
//! As in Krustlet, a pod is always in exactly one [`PodState`], and each state knows the status
//! it reports. The worker (`super::worker`) feeds [`Event`]s (results of runtime calls, commands
//! from the manager, timer ticks) into [`PodMachine::step`], which applies them and returns the
//! one [`Action`] to carry out next; the worker carries it out and feeds its result back. After
//! every step the worker reports [`PodMachine::status`] if it changed.
//!
//! ```text
//!   Creating ──sandbox ok──▶ Running ──every container exited for good──▶ Completed
//!      │  ▲ ▲                  │ (containers: Waiting → Running → BackOff → Running ...;
//!      │  │ │                  │  a container whose fields alone changed: Running → stop
//!      │  │ │                  │  (grace) → Waiting → Running, next attempt, new spec)
//!      │  │ │   sandbox not ready (poll or start)                        ▲
//!      │  │ │                  ▼                                        │
//!      │  │ └─ something ── SandboxLost: stop what runs (grace) ── nothing to run
//!      │  │    to run          │
//!      │  └── spec change ──┐  │                                          │
//!      ▼                    │  ▼                                          ▼
//!   Terminating(delete | forget | replace) ◀──── delete / forget / spec change
//!      │ stop containers (grace), remove sandbox
//!      ▼
//!   Terminated ── worker ends (delete: reports removed=true; forget: the sink forgets the pod)
//!                 (replace: back to Creating with the new spec)
//! ```
//!
//! A sandbox that dies under a running pod is replaced as kubelet replaces it: the worker learns
//! it from `Runtime::sandbox_ready` (polled with the running containers' states) or from a start
//! failing with `RuntimeError::SandboxNotReady`. Whatever still runs is stopped with the pod's
//! grace; each stopped container then starts again in the new sandbox (its next attempt: its
//! restart count goes up by one, its last state is how the stop ended it) unless its restart
//! policy keeps an instance that ended so ended. Containers in back-off keep their back-off. The
//! pod keeps its phase, is not ready meanwhile, reports no IP until the new sandbox has one, and
//! keeps its volumes (only a pod's removal tears them down). If nothing is left to run, no new
//! sandbox is made: the pod is `Completed`, and the dead sandbox goes with the pod.

use super::backoff::{go_duration, BackoffPolicy};
use super::env::{expand_command, resolve_env, ConfigLookup, PodFields};
use super::probes::{self, ProbeKill, ProbeVerdict};
use crate::runtime::process::container_digest;
use crate::runtime::{
    deadline_after, ContainerConfig, ContainerInfo, ContainerRunState, ExistingPod, Sandbox,
};
use protocol::pod::{EdgeContainer, EdgePod};
use protocol::status::{ContainerState, ContainerStatus, PodCondition, PodPhase, PodStatus};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// After this many consecutive failures to read a container's state, it is taken as lost
/// (an `Unknown` exit): one failure may be a transient I/O error, three are not.
const MAX_OBSERVE_ERRORS: u32 = 3;
/// Exit code kubelet reports for a container whose end it could not observe.
const UNKNOWN_EXIT_CODE: i32 = 137;

/// A moment: monotonic for deadlines, wall clock for the timestamps in reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

impl Now {
    /// The current moment.
    pub fn current() -> Self {
        Self {
            mono: Instant::now(),
            wall_ms: wall_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A failed runtime call, as reported: the Kubernetes waiting reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// `CreateContainerError`, `RunContainerError`, `ErrImagePull`, ...
    pub reason: String,
    /// What went wrong.
    pub message: String,
}

impl From<&crate::runtime::RuntimeError> for Failure {
    fn from(e: &crate::runtime::RuntimeError) -> Self {
        Self {
            reason: e.waiting_reason().to_string(),
            message: e.to_string(),
        }
    }
}

/// What every machine of a manager shares: the node's facts and the tunables.
pub(crate) struct Settings {
    /// This node's name (`spec.nodeName`, and the `node` of reports).
    pub node_name: String,
    /// This node's IP (`status.hostIP`).
    pub host_ip: String,
    /// Restart and retry back-off.
    pub backoff: BackoffPolicy,
    /// How often running containers' states are read (kubelet's PLEG period).
    pub poll_interval: Duration,
    /// Source of ConfigMap and Secret keys for the environment.
    pub config: Arc<dyn ConfigLookup>,
}

/// What happens once a terminating pod has been stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// The pod is being deleted: report `removed: true`.
    Report,
    /// The pod left the desired set: forget it without a report.
    Forget,
    /// The spec changed: start again with this one.
    Replace(Box<EdgePod>),
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Deleted, `removed: true` reported.
    Deleted,
    /// Dropped from the desired set.
    Forgotten,
}

/// The state of a pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PodState {
    /// The sandbox is being created (again at `retry_at` after a failure). Reports `Pending`
    /// with every container `ContainerCreating`; a pod whose sandbox is being replaced keeps the
    /// phase its containers give it (`Running`), without a pod IP.
    Creating {
        /// When to try again after a failure.
        retry_at: Option<Instant>,
        /// Consecutive failures.
        failures: u32,
        /// The last failure, reported as the pod's message.
        error: Option<Failure>,
    },
    /// The sandbox exists; containers are started, supervised and restarted. Reports `Pending`
    /// until every container started once, then `Running`.
    Running,
    /// The sandbox is not ready any more: what still runs of the pod is stopped, then a new
    /// sandbox is made (`Creating`) if anything is to run again, else the pod is `Completed`
    /// (the dead sandbox then goes with the pod). Reports the phase from the containers, not
    /// ready, and no pod IP.
    SandboxLost {
        /// When to retry a failed stop.
        retry_at: Option<Instant>,
        /// Consecutive failed stops.
        failures: u32,
    },
    /// Every container exited and none will restart. Reports `Succeeded` or `Failed`.
    Completed,
    /// Everything is being stopped. Reports the phase the pod had when this began.
    Terminating {
        /// Grace each container gets between SIGTERM and SIGKILL.
        grace: Duration,
        /// What comes next.
        then: AfterStop,
        /// The phase reported meanwhile.
        phase: PodPhase,
        /// When to retry a failed stop or sandbox removal.
        retry_at: Option<Instant>,
        /// Consecutive failures.
        failures: u32,
    },
    /// Everything stopped and the sandbox removed; the worker ends. A deleted pod reports its
    /// last status with `removed: true`; a forgotten one reports nothing.
    Terminated {
        /// How it ended.
        outcome: Outcome,
        /// The phase reported.
        phase: PodPhase,
    },
}

impl PodState {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PodState::Creating { .. } => "Creating",
            PodState::Running => "Running",
            PodState::SandboxLost { .. } => "SandboxLost",
            PodState::Completed => "Completed",
            PodState::Terminating { .. } => "Terminating",
            PodState::Terminated { .. } => "Terminated",
        }
    }
}

/// The state of one container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ContainerPhase {
    /// Not running: never started yet (`ContainerCreating`) or its start failed (the error's
    /// reason); (re)started when `retry_at` has passed.
    Waiting {
        /// Reported reason.
        reason: String,
        /// Reported message.
        message: String,
        /// Not before this.
        retry_at: Option<Instant>,
    },
    /// Running.
    Running {
        /// Runtime id of the instance.
        id: String,
        /// Its attempt number.
        attempt: u32,
        /// When it started.
        started_at_ms: u64,
    },
    /// Exited and restarts at `until` (`CrashLoopBackOff`).
    BackOff {
        /// The exited instance.
        id: String,
        /// Its attempt number.
        attempt: u32,
        /// When to restart.
        until: Instant,
        /// The delay, for the message.
        delay: Duration,
    },
    /// Exited for good (the restart policy says so).
    Exited {
        /// The exited instance.
        id: String,
        /// Its attempt number.
        attempt: u32,
        /// The reported `Terminated` state.
        terminated: ContainerState,
    },
}

/// One container of the pod and everything the worker knows about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerSlot {
    /// Container name.
    pub name: String,
    /// Image, as reported.
    pub image: String,
    /// Current state.
    pub phase: ContainerPhase,
    /// Attempt number of the next instance to start.
    pub next_attempt: u32,
    /// Reported restart count: the attempt number of the newest instance that ran.
    pub restart_count: u32,
    /// The previous instance's `Terminated` state, after a restart.
    pub last_state: Option<ContainerState>,
    /// Whether an instance ever ran (the pod is `Pending` until every container has).
    pub ever_started: bool,
    /// Consecutive crashes, for the restart back-off.
    pub crashes: u32,
    /// Consecutive failed starts, for the retry back-off.
    pub start_failures: u32,
    /// Consecutive failures to read the state.
    pub observe_errors: u32,
    /// Readiness verdict of the probes; `None` (no readiness or startup probe) means ready
    /// while running. Reset for every new instance (see `probes::reset_for_new_instance`).
    pub readiness: Option<bool>,
    /// Set while the running instance is to be killed for a failed liveness or startup probe.
    pub probe_kill: Option<ProbeKill>,
    /// The exited instance to remove once its successor runs.
    pub previous_instance: Option<String>,
    /// Instances to remove from the runtime (superseded or unknown ones).
    pub garbage: Vec<String>,
    /// Set while the running instance is to be restarted because its spec changed (only the
    /// container's fields did; see [`spec_change`]).
    pub spec_restart: Option<SpecRestart>,
}

/// A restart of a running container whose spec changed: stop it (with the pod's termination
/// grace), then start its next attempt with the new spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SpecRestart {
    /// When to retry a failed stop.
    pub retry_at: Option<Instant>,
    /// Consecutive failed stops.
    pub failures: u32,
}

/// How a new version of a pod (same uid) differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpecChange {
    /// Nothing the runtime sees (labels, grace periods).
    Same,
    /// Only the fields of these containers (slot indices) changed: restart just them, as
    /// kubelet does for a changed `image` (the only change the Kubernetes API allows).
    Containers(Vec<usize>),
    /// Containers added, removed, renamed or reordered, or volumes or the restart policy
    /// changed: the whole pod is replaced.
    Replace,
}

/// What it takes to go from `old` to `new`.
pub(crate) fn spec_change(old: &EdgePod, new: &EdgePod) -> SpecChange {
    if old.same_runtime_spec(new) {
        return SpecChange::Same;
    }
    let same_shape = old.uid == new.uid
        && old.restart_policy == new.restart_policy
        && old.volumes == new.volumes
        && old.containers.len() == new.containers.len()
        && old
            .containers
            .iter()
            .zip(&new.containers)
            .all(|(a, b)| a.name == b.name);
    if !same_shape {
        return SpecChange::Replace;
    }
    SpecChange::Containers(
        old.containers
            .iter()
            .zip(&new.containers)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect(),
    )
}

impl ContainerSlot {
    fn new(c: &EdgeContainer) -> Self {
        Self {
            name: c.name.clone(),
            image: c.image.clone(),
            phase: ContainerPhase::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
                retry_at: None,
            },
            next_attempt: 0,
            restart_count: 0,
            last_state: None,
            ever_started: false,
            crashes: 0,
            start_failures: 0,
            observe_errors: 0,
            readiness: None,
            probe_kill: None,
            previous_instance: None,
            garbage: Vec::new(),
            spec_restart: None,
        }
    }

    /// Whether it counts as ready: running and passing readiness (if probed).
    pub fn ready(&self) -> bool {
        matches!(self.phase, ContainerPhase::Running { .. }) && self.readiness.unwrap_or(true)
    }

    /// The running instance's id.
    fn running_id(&self) -> Option<&str> {
        match &self.phase {
            ContainerPhase::Running { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Exit code if exited for good.
    fn final_exit_code(&self) -> Option<i32> {
        match &self.phase {
            ContainerPhase::Exited {
                terminated: ContainerState::Terminated { exit_code, .. },
                ..
            } => Some(*exit_code),
            ContainerPhase::Exited { .. } => Some(UNKNOWN_EXIT_CODE),
            _ => None,
        }
    }

    /// Status as reported; `pod_gone` turns what does not run into `Terminated`. `pod_label`
    /// names the pod in back-off messages, as kubelet does (`name_namespace(uid)`).
    fn status(&self, pod_gone: bool, pod_label: &str) -> ContainerStatus {
        let mut last_state = self.last_state.clone();
        let (container_id, state) = match &self.phase {
            ContainerPhase::Waiting {
                reason, message, ..
            } => {
                let state = if pod_gone {
                    // Its last instance's end is its final state.
                    last_state.take().unwrap_or_else(|| {
                        unknown_termination(
                            "the container never ran before the pod was removed".into(),
                        )
                    })
                } else {
                    ContainerState::Waiting {
                        reason: reason.clone(),
                        message: message.clone(),
                    }
                };
                (String::new(), state)
            }
            ContainerPhase::Running {
                id, started_at_ms, ..
            } => (
                id.clone(),
                ContainerState::Running {
                    started_at_ms: *started_at_ms,
                },
            ),
            ContainerPhase::BackOff { id, delay, .. } => (
                id.clone(),
                ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {} restarting failed container={} pod={pod_label}",
                        go_duration(*delay),
                        self.name
                    ),
                },
            ),
            ContainerPhase::Exited { id, terminated, .. } => (id.clone(), terminated.clone()),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            container_id,
            ready: self.ready(),
            restart_count: self.restart_count,
            state,
            last_state,
        }
    }
}

/// The `Terminated` state of an instance whose end was not observed.
fn unknown_termination(message: String) -> ContainerState {
    ContainerState::Terminated {
        exit_code: UNKNOWN_EXIT_CODE,
        signal: None,
        reason: "ContainerStatusUnknown".into(),
        message,
        started_at_ms: 0,
        finished_at_ms: 0,
    }
}

/// The `Terminated` state for an observed exit, `None` while the instance still runs.
fn terminated_state(state: &ContainerRunState, now: Now) -> Option<ContainerState> {
    match state {
        ContainerRunState::Exited {
            exit_code,
            signal,
            reason,
            started_at_ms,
            finished_at_ms,
        } => Some(ContainerState::Terminated {
            exit_code: *exit_code,
            signal: *signal,
            reason: reason.clone(),
            message: String::new(),
            started_at_ms: *started_at_ms,
            finished_at_ms: *finished_at_ms,
        }),
        ContainerRunState::Unknown { message } => Some(ContainerState::Terminated {
            exit_code: UNKNOWN_EXIT_CODE,
            signal: None,
            reason: "ContainerStatusUnknown".into(),
            message: message.clone(),
            started_at_ms: 0,
            finished_at_ms: now.wall_ms,
        }),
        ContainerRunState::Created | ContainerRunState::Running { .. } => None,
    }
}

/// The one thing the worker is to do next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// `run_sandbox`.
    CreateSandbox,
    /// `start_container` with this (expanded) container and config.
    StartContainer {
        /// Slot index.
        index: usize,
        /// The container, `$(VAR)` in command and args expanded.
        container: Box<EdgeContainer>,
        /// Resolved environment and attempt.
        config: ContainerConfig,
    },
    /// `container_state` of these (slot index, instance id).
    Observe(Vec<(usize, String)>),
    /// `remove_container` of these instances.
    RemoveContainers(Vec<String>),
    /// `stop_container` of these (in parallel, each with `grace`), then `container_state`.
    StopContainers {
        /// (slot index, instance id).
        targets: Vec<(usize, String)>,
        /// SIGTERM-to-SIGKILL grace.
        grace: Duration,
    },
    /// `remove_sandbox`.
    RemoveSandbox {
        /// The sandbox.
        sandbox: Sandbox,
        /// Grace for anything still running.
        grace: Duration,
    },
    /// Nothing to do until this moment (forever if `None`) or a command.
    Wait(Option<Instant>),
    /// The worker's job is done.
    Finish(Outcome),
}

/// What the worker feeds the machine.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// Time passed (a wait ended).
    Tick,
    /// Result of `run_sandbox`.
    SandboxCreated(Result<Sandbox, Failure>),
    /// The runtime says the sandbox `sandbox_id` is not ready any more (`sandbox_ready` was
    /// false, or a start failed with `SandboxNotReady`).
    SandboxNotReady {
        /// The sandbox it is about (an event about an earlier sandbox is ignored).
        sandbox_id: String,
    },
    /// Result of `start_container` for a slot.
    Started {
        /// Slot index.
        index: usize,
        /// Attempt that was started.
        attempt: u32,
        /// The instance or the failure.
        result: Result<ContainerInfo, Failure>,
    },
    /// Results of `container_state`: (slot index, instance id, state).
    Observed(Vec<(usize, String, Result<ContainerRunState, Failure>)>),
    /// `remove_container` of these ids was done (failures were logged; the sandbox removal
    /// cleans up eventually).
    ContainersRemoved(Vec<String>),
    /// Results of stopping: (slot index, instance id, state after the stop).
    Stopped(Vec<(usize, String, Result<ContainerRunState, Failure>)>),
    /// Result of `remove_sandbox`.
    SandboxRemoved(Result<(), Failure>),
    /// The desired pod changed (same uid).
    Update(EdgePod),
    /// The pod left the desired set.
    Forget,
    /// A probe's verdict on a running instance changed.
    Probe(ProbeVerdict),
    /// A ConfigMap or Secret the pod uses changed: containers waiting for their configuration
    /// are retried now rather than after their back-off.
    ConfigChanged,
}

/// One pod's state machine.
pub(crate) struct PodMachine {
    settings: Arc<Settings>,
    pod: EdgePod,
    state: PodState,
    sandbox: Option<Sandbox>,
    slots: Vec<ContainerSlot>,
    start_time_ms: Option<u64>,
    /// Conditions as last computed, with their transition times.
    conditions: Vec<PodCondition>,
    /// When to read the running containers' states next.
    next_poll: Instant,
}

impl PodMachine {
    /// A machine for `pod`, starting from what the runtime already runs for it (`existing`,
    /// found by `list_pods` after an edgecore restart) or from scratch.
    pub fn new(
        settings: Arc<Settings>,
        pod: EdgePod,
        existing: Option<ExistingPod>,
        now: Now,
    ) -> Self {
        let mut m = Self::fresh(settings, pod, now);
        if let Some(existing) = existing {
            m.adopt(existing, now);
        }
        if m.pod.is_deleting() {
            let grace = Duration::from_secs(m.pod.deletion_grace_period_seconds.unwrap_or(0));
            m.terminate(grace, AfterStop::Report);
        }
        m.refresh_conditions(now);
        m
    }

    fn fresh(settings: Arc<Settings>, pod: EdgePod, now: Now) -> Self {
        let slots = pod.containers.iter().map(ContainerSlot::new).collect();
        Self {
            settings,
            pod,
            state: PodState::Creating {
                retry_at: None,
                failures: 0,
                error: None,
            },
            sandbox: None,
            slots,
            start_time_ms: None,
            conditions: Vec::new(),
            next_poll: now.mono,
        }
    }

    /// The pod as last handed to the worker.
    pub fn pod(&self) -> &EdgePod {
        &self.pod
    }

    /// The current state.
    pub fn state(&self) -> &PodState {
        &self.state
    }

    /// The sandbox, once created or adopted.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The containers.
    pub fn slots(&self) -> &[ContainerSlot] {
        &self.slots
    }

    /// Takes over what the runtime runs for this pod.
    fn adopt(&mut self, existing: ExistingPod, now: Now) {
        let policy = self.pod.restart_policy;
        let backoff = self.settings.backoff;
        self.sandbox = Some(existing.sandbox);
        self.state = PodState::Running;
        let mut by_name: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
        let mut strays = Vec::new();
        for info in existing.containers {
            if self.slots.iter().any(|s| s.name == info.name) {
                by_name.entry(info.name.clone()).or_default().push(info);
            } else {
                // A container of an older spec: not ours any more.
                strays.push(info.id);
            }
        }
        let mut earliest: Option<u64> = None;
        let desired: Vec<Option<String>> = (0..self.slots.len())
            .map(|index| self.desired_digest(index))
            .collect();
        for ((slot, desired), spec) in self.slots.iter_mut().zip(desired).zip(&self.pod.containers)
        {
            let Some(mut instances) = by_name.remove(&slot.name) else {
                continue;
            };
            instances.sort_by_key(|i| i.attempt);
            let Some(newest) = instances.pop() else {
                continue;
            };
            // Older instances are leftovers of restarts interrupted by the edgecore restart.
            slot.garbage.extend(instances.into_iter().map(|i| i.id));
            slot.ever_started = true;
            slot.restart_count = newest.attempt;
            slot.next_attempt = newest.attempt.saturating_add(1);
            // The crash count before the restart is not known; the attempt number is the best
            // estimate (every restart followed a crash).
            slot.crashes = newest.attempt;
            // An instance started from another spec (changed while edgecore was down) is
            // restarted with the desired one, as after an update; an unknown digest (an
            // instance from before digests were recorded) is taken to match.
            if let (Some(running), Some(desired)) = (&newest.spec_digest, &desired) {
                if running != desired {
                    slot.spec_restart = Some(SpecRestart::default());
                }
            }
            match &newest.state {
                ContainerRunState::Running { started_at_ms } => {
                    earliest = Some(earliest.map_or(*started_at_ms, |e| e.min(*started_at_ms)));
                    slot.phase = ContainerPhase::Running {
                        id: newest.id.clone(),
                        attempt: newest.attempt,
                        started_at_ms: *started_at_ms,
                    };
                    probes::reset_for_new_instance(slot, Some(spec));
                }
                ContainerRunState::Created => {
                    slot.phase = ContainerPhase::Running {
                        id: newest.id.clone(),
                        attempt: newest.attempt,
                        started_at_ms: now.wall_ms,
                    };
                    probes::reset_for_new_instance(slot, Some(spec));
                }
                exited => {
                    if let ContainerRunState::Exited { started_at_ms, .. } = exited {
                        earliest = Some(earliest.map_or(*started_at_ms, |e| e.min(*started_at_ms)));
                    }
                    let terminated = terminated_state(exited, now)
                        .unwrap_or_else(|| unknown_termination(String::new()));
                    on_exit(
                        slot,
                        policy,
                        backoff,
                        newest.id.clone(),
                        newest.attempt,
                        terminated,
                        now,
                    );
                }
            }
        }
        if let Some(first) = self.slots.first_mut() {
            first.garbage.extend(strays);
        }
        self.start_time_ms = Some(earliest.unwrap_or(now.wall_ms));
        self.settle();
    }

    /// Digest of the container the worker would hand the runtime for slot `index` now (its
    /// `$(VAR)` expanded), to compare with [`ContainerInfo::spec_digest`]; `None` if its
    /// environment cannot be resolved now.
    fn desired_digest(&self, index: usize) -> Option<String> {
        let spec = self.pod.containers.get(index)?;
        let sandbox_ip = self
            .sandbox
            .as_ref()
            .map(|s| s.ip.clone())
            .unwrap_or_default();
        let fields = PodFields {
            pod: &self.pod,
            node_name: &self.settings.node_name,
            pod_ip: &sandbox_ip,
            host_ip: &self.settings.host_ip,
        };
        let env = resolve_env(spec, &fields, self.settings.config.as_ref()).ok()?;
        Some(container_digest(&expand_command(spec, &env)))
    }

    /// Applies `event` and decides what to do next: the machine's single transition function.
    pub fn step(&mut self, event: Event, now: Now) -> Action {
        self.apply(event, now);
        let action = self.decide(now);
        self.refresh_conditions(now);
        action
    }

    fn apply(&mut self, event: Event, now: Now) {
        let policy = self.pod.restart_policy;
        let backoff = self.settings.backoff;
        match event {
            Event::Tick => {}
            Event::SandboxCreated(result) => {
                let PodState::Creating { failures, .. } = self.state else {
                    return;
                };
                match result {
                    Ok(sandbox) => {
                        self.sandbox = Some(sandbox);
                        self.start_time_ms.get_or_insert(now.wall_ms);
                        self.state = PodState::Running;
                    }
                    Err(failure) => {
                        let failures = failures.saturating_add(1);
                        self.state = PodState::Creating {
                            retry_at: Some(deadline_after(now.mono, backoff.delay(failures))),
                            failures,
                            error: Some(failure),
                        };
                    }
                }
            }
            Event::SandboxNotReady { sandbox_id } => {
                let current = self.sandbox.as_ref().map(|s| s.id.as_str());
                if self.state != PodState::Running || current != Some(sandbox_id.as_str()) {
                    return;
                }
                for slot in &mut self.slots {
                    // The stop that comes supersedes a restart for a changed spec (the next
                    // start uses the new spec anyway) and a kill for a failed probe.
                    slot.spec_restart = None;
                    slot.probe_kill = None;
                }
                // The dead sandbox is kept, to stop what still runs in it and to remove it with
                // the pod, but its IP went with its network: it is the pod's no more (and may
                // soon be another pod's), so none is reported until a new sandbox has one.
                if let Some(sandbox) = &mut self.sandbox {
                    sandbox.ip.clear();
                }
                self.state = PodState::SandboxLost {
                    retry_at: None,
                    failures: 0,
                };
            }
            Event::Started {
                index,
                attempt,
                result,
            } => {
                let Some(slot) = self.slots.get_mut(index) else {
                    return;
                };
                match result {
                    Ok(info) => {
                        slot.start_failures = 0;
                        slot.observe_errors = 0;
                        slot.ever_started = true;
                        slot.restart_count = info.attempt;
                        slot.next_attempt = info.attempt.saturating_add(1);
                        if let Some(previous) = slot.previous_instance.take() {
                            if previous != info.id {
                                slot.garbage.push(previous);
                            }
                        }
                        let started_at_ms = match &info.state {
                            ContainerRunState::Running { started_at_ms } => *started_at_ms,
                            ContainerRunState::Exited { started_at_ms, .. } => *started_at_ms,
                            _ => now.wall_ms,
                        };
                        slot.phase = ContainerPhase::Running {
                            id: info.id.clone(),
                            attempt: info.attempt,
                            started_at_ms,
                        };
                        probes::reset_for_new_instance(slot, self.pod.containers.get(index));
                        if let Some(terminated) = terminated_state(&info.state, now) {
                            on_exit(
                                slot,
                                policy,
                                backoff,
                                info.id,
                                info.attempt,
                                terminated,
                                now,
                            );
                        }
                    }
                    Err(failure) => {
                        slot.start_failures = slot.start_failures.saturating_add(1);
                        slot.next_attempt = attempt;
                        // As kubelet: the first failed pull shows `ErrImagePull`; once pulls
                        // keep failing, the container waits in `ImagePullBackOff`.
                        let (reason, message) =
                            if failure.reason == "ErrImagePull" && slot.start_failures > 1 {
                                (
                                    "ImagePullBackOff".to_string(),
                                    format!("Back-off pulling image: {}", failure.message),
                                )
                            } else {
                                (failure.reason, failure.message)
                            };
                        slot.phase = ContainerPhase::Waiting {
                            reason,
                            message,
                            retry_at: Some(deadline_after(
                                now.mono,
                                backoff.delay(slot.start_failures),
                            )),
                        };
                    }
                }
            }
            Event::Observed(results) => {
                self.next_poll = deadline_after(now.mono, self.settings.poll_interval);
                for (index, id, result) in results {
                    let Some(slot) = self.slots.get_mut(index) else {
                        continue;
                    };
                    if slot.running_id() != Some(id.as_str()) {
                        continue; // Stale: the slot moved on meanwhile.
                    }
                    let state = match result {
                        Ok(state) => {
                            slot.observe_errors = 0;
                            state
                        }
                        Err(failure) => {
                            slot.observe_errors += 1;
                            if slot.observe_errors < MAX_OBSERVE_ERRORS {
                                continue;
                            }
                            ContainerRunState::Unknown {
                                message: failure.message,
                            }
                        }
                    };
                    match terminated_state(&state, now) {
                        Some(terminated) => {
                            let ContainerPhase::Running { attempt, .. } = slot.phase else {
                                continue;
                            };
                            on_exit(slot, policy, backoff, id, attempt, terminated, now);
                        }
                        None => {
                            if let (
                                ContainerRunState::Running { started_at_ms },
                                ContainerPhase::Running {
                                    started_at_ms: known,
                                    ..
                                },
                            ) = (&state, &mut slot.phase)
                            {
                                *known = *started_at_ms;
                            }
                        }
                    }
                }
            }
            Event::ContainersRemoved(ids) => {
                for slot in &mut self.slots {
                    slot.garbage.retain(|g| !ids.contains(g));
                }
            }
            Event::Stopped(results) => {
                let restarting = self.state == PodState::Running;
                let replacing = matches!(self.state, PodState::SandboxLost { .. });
                let mut failed = false;
                for (index, id, result) in results {
                    let Some(slot) = self.slots.get_mut(index) else {
                        continue;
                    };
                    if slot.running_id() != Some(id.as_str()) {
                        continue;
                    }
                    let ContainerPhase::Running { attempt, .. } = slot.phase else {
                        continue;
                    };
                    if replacing {
                        match result.map(|state| terminated_state(&state, now)) {
                            Ok(Some(terminated)) => {
                                on_sandbox_loss(slot, policy, id, attempt, terminated)
                            }
                            // Still running: stop again (with back-off) before a new sandbox.
                            Ok(None) | Err(_) => failed = true,
                        }
                        continue;
                    }
                    if restarting {
                        // A kill for a failed probe: an exit like any other, restarted (unless
                        // the policy is Never) after the usual back-off.
                        if let (None, Some(kill)) = (&slot.spec_restart, &mut slot.probe_kill) {
                            match result.map(|state| terminated_state(&state, now)) {
                                Ok(Some(mut terminated)) => {
                                    if let ContainerState::Terminated { message, .. } =
                                        &mut terminated
                                    {
                                        message.clone_from(&kill.message);
                                    }
                                    slot.probe_kill = None;
                                    let policy = probes::policy_after_kill(policy);
                                    on_exit(slot, policy, backoff, id, attempt, terminated, now);
                                }
                                Ok(None) | Err(_) => {
                                    kill.failures = kill.failures.saturating_add(1);
                                    kill.retry_at = Some(deadline_after(
                                        now.mono,
                                        backoff.delay(kill.failures),
                                    ));
                                }
                            }
                            continue;
                        }
                        // A restart for a changed spec.
                        let Some(restart) = slot.spec_restart.as_mut() else {
                            continue;
                        };
                        match result.map(|state| terminated_state(&state, now)) {
                            Ok(Some(terminated)) => {
                                // Not a crash: no back-off. The next attempt starts at once
                                // with the new spec and the stopped instance is removed once
                                // it runs.
                                slot.spec_restart = None;
                                slot.last_state = Some(terminated);
                                slot.previous_instance = Some(id);
                                slot.phase = ContainerPhase::Waiting {
                                    reason: "ContainerCreating".into(),
                                    message: String::new(),
                                    retry_at: None,
                                };
                            }
                            Ok(None) | Err(_) => {
                                restart.failures = restart.failures.saturating_add(1);
                                restart.retry_at =
                                    Some(deadline_after(now.mono, backoff.delay(restart.failures)));
                            }
                        }
                        continue;
                    }
                    match result.map(|state| terminated_state(&state, now)) {
                        Ok(Some(terminated)) => {
                            slot.phase = ContainerPhase::Exited {
                                id,
                                attempt,
                                terminated,
                            };
                        }
                        // Still running after a successful stop (a racing restart?): stop again.
                        Ok(None) | Err(_) => failed = true,
                    }
                }
                if let PodState::Terminating {
                    retry_at, failures, ..
                }
                | PodState::SandboxLost { retry_at, failures } = &mut self.state
                {
                    if failed {
                        *failures = failures.saturating_add(1);
                        *retry_at = Some(deadline_after(now.mono, backoff.delay(*failures)));
                    } else {
                        *failures = 0;
                        *retry_at = None;
                    }
                }
            }
            Event::SandboxRemoved(result) => {
                let PodState::Terminating {
                    then,
                    phase,
                    failures,
                    ..
                } = &self.state
                else {
                    return;
                };
                let (then, phase, failures) = (then.clone(), *phase, *failures);
                match result {
                    Ok(()) => {
                        self.sandbox = None;
                        match then {
                            AfterStop::Report => {
                                self.state = PodState::Terminated {
                                    outcome: Outcome::Deleted,
                                    phase,
                                }
                            }
                            AfterStop::Forget => {
                                self.state = PodState::Terminated {
                                    outcome: Outcome::Forgotten,
                                    phase,
                                }
                            }
                            AfterStop::Replace(pod) => {
                                *self = Self::fresh(self.settings.clone(), *pod, now);
                            }
                        }
                    }
                    Err(_) => {
                        if let PodState::Terminating {
                            retry_at,
                            failures: f,
                            ..
                        } = &mut self.state
                        {
                            *f = failures.saturating_add(1);
                            *retry_at = Some(deadline_after(now.mono, backoff.delay(*f)));
                        }
                    }
                }
            }
            Event::Update(pod) => self.update(pod, now),
            Event::Probe(verdict) => {
                let may_kill = self.state == PodState::Running;
                let Some(slot) = self.slots.get_mut(verdict.index) else {
                    return;
                };
                if slot.running_id() != Some(verdict.instance.as_str()) {
                    return; // Stale: about an instance that is gone.
                }
                probes::apply_verdict(slot, &self.pod, &verdict, may_kill);
            }
            Event::ConfigChanged => {
                for slot in &mut self.slots {
                    if let ContainerPhase::Waiting {
                        reason, retry_at, ..
                    } = &mut slot.phase
                    {
                        if reason == "CreateContainerConfigError" {
                            *retry_at = None;
                        }
                    }
                }
            }
            Event::Forget => match &mut self.state {
                PodState::Terminating { then, .. } => *then = AfterStop::Forget,
                PodState::Terminated { outcome, .. } => *outcome = Outcome::Forgotten,
                _ => {
                    let grace = Duration::from_secs(self.pod.termination_grace_period_seconds);
                    self.terminate(grace, AfterStop::Forget);
                }
            },
        }
        for slot in &mut self.slots {
            // An instance that exited meanwhile needs no stop: its next start (if any) uses the
            // new spec anyway.
            if slot.running_id().is_none() {
                slot.spec_restart = None;
                slot.probe_kill = None;
            }
        }
        self.settle();
    }

    /// A new version of the desired pod.
    fn update(&mut self, pod: EdgePod, now: Now) {
        if pod.uid != self.pod.uid {
            return; // The manager keys workers by uid; a different uid is another pod.
        }
        match &mut self.state {
            PodState::Terminated { outcome, .. } => {
                if *outcome == Outcome::Forgotten && !pod.is_deleting() {
                    // Wanted again after all: start over.
                    *self = Self::fresh(self.settings.clone(), pod, now);
                }
                return;
            }
            PodState::Terminating { then, grace, .. } => {
                if pod.is_deleting() {
                    // A grace only ever shortens: a forced deletion (`--grace-period=0 --force`)
                    // arriving during a graceful one cuts the stop short (the worker restarts a
                    // stop in progress with the shorter grace).
                    *then = AfterStop::Report;
                    let g = Duration::from_secs(pod.deletion_grace_period_seconds.unwrap_or(0));
                    *grace = (*grace).min(g);
                    self.pod.deletion_grace_period_seconds = pod.deletion_grace_period_seconds;
                    self.pod.labels = pod.labels;
                } else if *then != AfterStop::Report {
                    // Start over with the newest spec once stopped (also when it was being
                    // forgotten and is wanted again).
                    *then = AfterStop::Replace(Box::new(pod));
                }
                return;
            }
            _ => {}
        }
        if pod.is_deleting() {
            // Only the deletion mark and labels matter now: the containers are not restarted.
            let grace = Duration::from_secs(pod.deletion_grace_period_seconds.unwrap_or(0));
            self.pod.deletion_grace_period_seconds = pod.deletion_grace_period_seconds;
            self.pod.labels = pod.labels;
            self.terminate(grace, AfterStop::Report);
        } else {
            match spec_change(&self.pod, &pod) {
                SpecChange::Same => {
                    // Labels (or the grace period): nothing to restart.
                    self.pod = pod;
                }
                SpecChange::Containers(changed) => {
                    // The sandbox and every other container stay; a changed container that
                    // runs is stopped and started again with the new spec (`decide_running`).
                    // One that does not run starts with the new spec when it next starts; one
                    // that exited for good stays so.
                    for index in changed {
                        if let Some(slot) = self.slots.get_mut(index) {
                            if slot.running_id().is_some() && slot.spec_restart.is_none() {
                                slot.spec_restart = Some(SpecRestart::default());
                            }
                        }
                    }
                    self.pod = pod;
                }
                SpecChange::Replace => {
                    let grace = Duration::from_secs(self.pod.termination_grace_period_seconds);
                    self.terminate(grace, AfterStop::Replace(Box::new(pod)));
                }
            }
        }
    }

    /// Enters `Terminating`.
    fn terminate(&mut self, grace: Duration, then: AfterStop) {
        let phase = self.phase();
        for slot in &mut self.slots {
            // A container waiting to restart will not.
            if let ContainerPhase::BackOff { id, attempt, .. } = &slot.phase {
                if let Some(terminated) = slot.last_state.take() {
                    slot.phase = ContainerPhase::Exited {
                        id: id.clone(),
                        attempt: *attempt,
                        terminated,
                    };
                }
            }
        }
        self.state = PodState::Terminating {
            grace,
            then,
            phase,
            retry_at: None,
            failures: 0,
        };
    }

    /// `Running` becomes `Completed` once no container will run again.
    fn settle(&mut self) {
        if self.state == PodState::Running
            && !self.slots.is_empty()
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, ContainerPhase::Exited { .. }))
        {
            self.state = PodState::Completed;
        }
    }

    /// The next action, given the state.
    fn decide(&mut self, now: Now) -> Action {
        match &self.state {
            PodState::Creating { retry_at, .. } => match retry_at {
                Some(at) if *at > now.mono => Action::Wait(Some(*at)),
                _ => Action::CreateSandbox,
            },
            PodState::Running | PodState::Completed => self.decide_running(now),
            PodState::SandboxLost { retry_at, .. } => {
                if let Some(at) = retry_at.filter(|at| *at > now.mono) {
                    return Action::Wait(Some(at));
                }
                let targets = self.running_targets();
                if !targets.is_empty() {
                    return Action::StopContainers {
                        targets,
                        grace: Duration::from_secs(self.pod.termination_grace_period_seconds),
                    };
                }
                // Nothing of the pod runs any more. As kubelet, a new sandbox only if something
                // is to run in it.
                let to_run = self.slots.iter().any(|s| {
                    matches!(
                        s.phase,
                        ContainerPhase::Waiting { .. } | ContainerPhase::BackOff { .. }
                    )
                });
                if to_run {
                    for slot in &mut self.slots {
                        // A start that failed may have failed for the dead sandbox: the new one
                        // is tried at once. (Crash back-offs stand.)
                        if let ContainerPhase::Waiting { retry_at, .. } = &mut slot.phase {
                            *retry_at = None;
                        }
                    }
                    // The dead sandbox stays known until the new one replaces it, so that a
                    // deletion meanwhile still removes it (and the volumes).
                    self.state = PodState::Creating {
                        retry_at: None,
                        failures: 0,
                        error: None,
                    };
                } else {
                    self.state = PodState::Completed;
                }
                self.decide(now)
            }
            PodState::Terminating {
                grace, retry_at, ..
            } => {
                let grace = *grace;
                if let Some(at) = retry_at.filter(|at| *at > now.mono) {
                    return Action::Wait(Some(at));
                }
                let targets = self.running_targets();
                if !targets.is_empty() {
                    return Action::StopContainers { targets, grace };
                }
                if let Some(sandbox) = &self.sandbox {
                    return Action::RemoveSandbox {
                        sandbox: sandbox.clone(),
                        grace,
                    };
                }
                // Nothing was ever created (or it is gone already): done.
                self.apply(Event::SandboxRemoved(Ok(())), now);
                self.decide(now)
            }
            PodState::Terminated { outcome, .. } => Action::Finish(*outcome),
        }
    }

    fn decide_running(&mut self, now: Now) -> Action {
        let garbage: Vec<String> = self
            .slots
            .iter()
            .flat_map(|s| s.garbage.iter().cloned())
            .collect();
        if !garbage.is_empty() {
            return Action::RemoveContainers(garbage);
        }
        let mut wake: Option<Instant> = None;
        let mut earliest = |at: Instant| {
            wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        };
        if self.state == PodState::Running {
            // Containers whose spec changed are stopped first (all at once), then started again
            // below like any other waiting container.
            let mut targets = Vec::new();
            for (index, slot) in self.slots.iter().enumerate() {
                let (Some(restart), Some(id)) = (&slot.spec_restart, slot.running_id()) else {
                    continue;
                };
                match restart.retry_at {
                    Some(at) if at > now.mono => earliest(at),
                    _ => targets.push((index, id.to_string())),
                }
            }
            if !targets.is_empty() {
                return Action::StopContainers {
                    targets,
                    grace: Duration::from_secs(self.pod.termination_grace_period_seconds),
                };
            }
            // Then those that failed a liveness or startup probe, with the probe's grace (one
            // grace per stop: a kill with another grace waits for the next one).
            let mut kill_grace = None;
            for (index, slot) in self.slots.iter().enumerate() {
                let (None, Some(kill), Some(id)) =
                    (&slot.spec_restart, &slot.probe_kill, slot.running_id())
                else {
                    continue;
                };
                match kill.retry_at {
                    Some(at) if at > now.mono => earliest(at),
                    _ if kill_grace.is_none_or(|g| g == kill.grace) => {
                        kill_grace = Some(kill.grace);
                        targets.push((index, id.to_string()));
                    }
                    _ => {}
                }
            }
            if let Some(grace) = kill_grace {
                return Action::StopContainers { targets, grace };
            }
            let sandbox_ip = self
                .sandbox
                .as_ref()
                .map(|s| s.ip.clone())
                .unwrap_or_default();
            for index in 0..self.slots.len() {
                let due = match &self.slots[index].phase {
                    ContainerPhase::Waiting { retry_at, .. } => match retry_at {
                        Some(at) if *at > now.mono => {
                            earliest(*at);
                            false
                        }
                        _ => true,
                    },
                    ContainerPhase::BackOff { until, .. } => {
                        if *until > now.mono {
                            earliest(*until);
                            false
                        } else {
                            true
                        }
                    }
                    _ => false,
                };
                if !due {
                    continue;
                }
                let spec = &self.pod.containers[index];
                let fields = PodFields {
                    pod: &self.pod,
                    node_name: &self.settings.node_name,
                    pod_ip: &sandbox_ip,
                    host_ip: &self.settings.host_ip,
                };
                match resolve_env(spec, &fields, self.settings.config.as_ref()) {
                    Ok(env) => {
                        let slot = &mut self.slots[index];
                        if let ContainerPhase::BackOff { id, .. } = &slot.phase {
                            slot.previous_instance = Some(id.clone());
                        }
                        // The image reported is that of the newest instance.
                        slot.image.clone_from(&spec.image);
                        return Action::StartContainer {
                            index,
                            container: Box::new(expand_command(spec, &env)),
                            config: ContainerConfig {
                                env,
                                attempt: slot.next_attempt,
                                mounts: vec![],
                            },
                        };
                    }
                    Err(message) => {
                        let slot = &mut self.slots[index];
                        if let ContainerPhase::BackOff { id, .. } = &slot.phase {
                            slot.previous_instance = Some(id.clone());
                        }
                        slot.start_failures = slot.start_failures.saturating_add(1);
                        let at = deadline_after(
                            now.mono,
                            self.settings.backoff.delay(slot.start_failures),
                        );
                        slot.phase = ContainerPhase::Waiting {
                            reason: "CreateContainerConfigError".into(),
                            message,
                            retry_at: Some(at),
                        };
                        earliest(at);
                    }
                }
            }
        }
        let running = self.running_targets();
        if !running.is_empty() {
            if self.next_poll <= now.mono {
                return Action::Observe(running);
            }
            earliest(self.next_poll);
        }
        Action::Wait(wake)
    }

    /// (slot index, instance id) of every running container.
    fn running_targets(&self) -> Vec<(usize, String)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.running_id().map(|id| (i, id.to_string())))
            .collect()
    }

    /// The pod phase, from the state and the containers.
    pub fn phase(&self) -> PodPhase {
        match &self.state {
            // `Pending` for a new pod (no container ran yet); a pod whose sandbox is replaced
            // stays `Running`.
            PodState::Creating { .. }
            | PodState::Running
            | PodState::SandboxLost { .. }
            | PodState::Completed => containers_phase(&self.slots),
            PodState::Terminating { phase, .. } | PodState::Terminated { phase, .. } => *phase,
        }
    }

    /// Recomputes the conditions, keeping transition times of those that did not flip.
    fn refresh_conditions(&mut self, now: Now) {
        let since = self.start_time_ms.unwrap_or(now.wall_ms);
        let running_state = matches!(self.state, PodState::Running);
        let unready: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| !s.ready())
            .map(|s| s.name.as_str())
            .collect();
        let ready = running_state && unready.is_empty();
        let (reason, message) = if ready {
            (String::new(), String::new())
        } else if matches!(self.phase(), PodPhase::Succeeded | PodPhase::Failed) {
            ("PodCompleted".to_string(), String::new())
        } else {
            (
                "ContainersNotReady".to_string(),
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        };
        let wanted = [
            ("Initialized", true, String::new(), String::new()),
            ("ContainersReady", ready, reason.clone(), message.clone()),
            ("Ready", ready, reason, message),
            ("PodScheduled", true, String::new(), String::new()),
        ];
        let conditions = wanted
            .into_iter()
            .map(|(kind, status, reason, message)| {
                let last_transition_ms = match self.conditions.iter().find(|c| c.kind == kind) {
                    Some(old) if old.status == status => old.last_transition_ms,
                    Some(_) => now.wall_ms,
                    // First computation: true conditions date from the pod's start.
                    None if status => since,
                    None => now.wall_ms,
                };
                PodCondition {
                    kind: kind.to_string(),
                    status,
                    reason,
                    message,
                    last_transition_ms,
                }
            })
            .collect();
        self.conditions = conditions;
    }

    /// The status to report, or `None` when nothing is to be reported (a pod being forgotten:
    /// the sink drops everything about it anyway).
    pub fn status(&self) -> Option<PodStatus> {
        let (pod_gone, removed) = match &self.state {
            PodState::Terminating {
                then: AfterStop::Forget,
                ..
            }
            | PodState::Terminated {
                outcome: Outcome::Forgotten,
                ..
            } => return None,
            PodState::Terminated { .. } => (true, true),
            _ => (false, false),
        };
        let pod_label = format!("{}_{}({})", self.pod.name, self.pod.namespace, self.pod.uid);
        let containers = self
            .slots
            .iter()
            .map(|slot| slot.status(pod_gone, &pod_label))
            .collect();
        let message = match &self.state {
            PodState::Creating {
                error: Some(failure),
                ..
            } => format!("cannot create the pod sandbox: {}", failure.message),
            _ => String::new(),
        };
        Some(PodStatus {
            node: self.settings.node_name.clone(),
            namespace: self.pod.namespace.clone(),
            name: self.pod.name.clone(),
            uid: self.pod.uid.clone(),
            phase: self.phase(),
            conditions: self.conditions.clone(),
            containers,
            pod_ip: self
                .sandbox
                .as_ref()
                .map(|s| s.ip.clone())
                .unwrap_or_default(),
            host_ip: self.settings.host_ip.clone(),
            start_time_ms: self.start_time_ms.unwrap_or(0),
            reason: String::new(),
            message,
            removed,
        })
    }
}

/// A container instance exited: back off before a restart, or stay exited, per the policy.
fn on_exit(
    slot: &mut ContainerSlot,
    policy: protocol::pod::RestartPolicy,
    backoff: BackoffPolicy,
    id: String,
    attempt: u32,
    terminated: ContainerState,
    now: Now,
) {
    let ContainerState::Terminated {
        exit_code,
        started_at_ms,
        finished_at_ms,
        ..
    } = &terminated
    else {
        return;
    };
    if policy.restarts_after(*exit_code) {
        let ran = Duration::from_millis(finished_at_ms.saturating_sub(*started_at_ms));
        slot.crashes = backoff.crashes_after_exit(slot.crashes, ran);
        let delay = backoff.delay(slot.crashes);
        // Time since the exit counts (it may have happened while edgecore was down).
        let since_exit = Duration::from_millis(now.wall_ms.saturating_sub(*finished_at_ms));
        let until = deadline_after(now.mono, delay.saturating_sub(since_exit));
        slot.last_state = Some(terminated);
        slot.phase = ContainerPhase::BackOff {
            id,
            attempt,
            until,
            delay,
        };
    } else {
        slot.phase = ContainerPhase::Exited {
            id,
            attempt,
            terminated,
        };
    }
}

/// A running container was stopped because its sandbox is not ready any more. This was no crash
/// of its own, so there is no back-off: it starts again in the new sandbox (as its next attempt,
/// its stopped instance as its last state, removed once its successor runs) unless the policy
/// keeps an instance that ended so ended (`Never`; `OnFailure` after a clean exit on SIGTERM).
fn on_sandbox_loss(
    slot: &mut ContainerSlot,
    policy: protocol::pod::RestartPolicy,
    id: String,
    attempt: u32,
    terminated: ContainerState,
) {
    let exit_code = match &terminated {
        ContainerState::Terminated { exit_code, .. } => *exit_code,
        _ => UNKNOWN_EXIT_CODE,
    };
    if policy.restarts_after(exit_code) {
        slot.last_state = Some(terminated);
        slot.previous_instance = Some(id);
        slot.phase = ContainerPhase::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
            retry_at: None,
        };
    } else {
        slot.phase = ContainerPhase::Exited {
            id,
            attempt,
            terminated,
        };
    }
}

/// Phase from the containers: `Pending` until each ran once, `Running` while any runs or will
/// run again, then `Succeeded` if all exited 0, else `Failed`.
pub(crate) fn containers_phase(slots: &[ContainerSlot]) -> PodPhase {
    if slots.iter().any(|s| !s.ever_started) {
        return PodPhase::Pending;
    }
    let mut all_zero = true;
    for slot in slots {
        match slot.final_exit_code() {
            None => return PodPhase::Running,
            Some(code) => all_zero &= code == 0,
        }
    }
    if all_zero {
        PodPhase::Succeeded
    } else {
        PodPhase::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ConfigSet;
    use protocol::pod::{EnvValue, EnvVar, RestartPolicy};
    use std::collections::BTreeMap;

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            node_name: "rig-7".into(),
            host_ip: "192.0.2.7".into(),
            backoff: BackoffPolicy {
                base: Duration::from_secs(10),
                cap: Duration::from_secs(300),
                reset_after: Duration::from_secs(600),
            },
            poll_interval: Duration::from_millis(500),
            config: Arc::new(ConfigSet::default()),
        })
    }

    fn container(name: &str) -> EdgeContainer {
        EdgeContainer {
            name: name.into(),
            image: "local".into(),
            image_pull_policy: "Never".into(),
            command: vec!["sleep".into(), "60".into()],
            ..Default::default()
        }
    }

    fn pod(policy: RestartPolicy, names: &[&str]) -> EdgePod {
        EdgePod {
            namespace: "rigs".into(),
            name: "p".into(),
            uid: "u1".into(),
            labels: BTreeMap::new(),
            containers: names.iter().map(|n| container(n)).collect(),
            restart_policy: policy,
            termination_grace_period_seconds: 30,
            volumes: vec![],
            deletion_grace_period_seconds: None,
        }
    }

    fn sandbox() -> Sandbox {
        Sandbox {
            id: "u1".into(),
            pod_uid: "u1".into(),
            ip: "192.0.2.7".into(),
        }
    }

    fn info(name: &str, attempt: u32, state: ContainerRunState) -> ContainerInfo {
        ContainerInfo {
            id: format!("u1/{name}/{attempt}"),
            name: name.into(),
            attempt,
            state,
            spec_digest: None,
        }
    }

    fn running(started_at_ms: u64) -> ContainerRunState {
        ContainerRunState::Running { started_at_ms }
    }

    fn exited(code: i32, started_at_ms: u64, finished_at_ms: u64) -> ContainerRunState {
        ContainerRunState::Exited {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at_ms,
            finished_at_ms,
        }
    }

    fn at(base: Now, ms: u64) -> Now {
        Now {
            mono: base.mono + Duration::from_millis(ms),
            wall_ms: base.wall_ms + ms,
        }
    }

    fn at_secs(base: Now, secs: u64) -> Instant {
        base.mono + Duration::from_secs(secs)
    }

    fn clone_settings(s: &Settings) -> Settings {
        Settings {
            node_name: s.node_name.clone(),
            host_ip: s.host_ip.clone(),
            backoff: s.backoff,
            poll_interval: s.poll_interval,
            config: s.config.clone(),
        }
    }

    fn t0() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: 1_000_000,
        }
    }

    /// Drives a fresh machine to the point where every container runs.
    fn started(policy: RestartPolicy, names: &[&str]) -> (PodMachine, Now) {
        let now = t0();
        let mut m = PodMachine::new(settings(), pod(policy, names), None, now);
        assert_eq!(m.step(Event::Tick, now), Action::CreateSandbox);
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Pending);
        assert!(matches!(&st.containers[0].state,
            ContainerState::Waiting { reason, .. } if reason == "ContainerCreating"));
        let mut action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
        for (i, name) in names.iter().enumerate() {
            match action {
                Action::StartContainer { index, config, .. } => {
                    assert_eq!(index, i);
                    assert_eq!(config.attempt, 0);
                }
                other => panic!("expected a start, got {other:?}"),
            }
            action = m.step(
                Event::Started {
                    index: i,
                    attempt: 0,
                    result: Ok(info(name, 0, running(now.wall_ms))),
                },
                now,
            );
        }
        assert!(matches!(action, Action::Observe(_)), "{action:?}");
        (m, now)
    }

    #[test]
    fn a_started_pod_runs_and_is_ready() {
        let (m, now) = started(RestartPolicy::Always, &["a", "b"]);
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Running);
        assert_eq!(st.pod_ip, "192.0.2.7");
        assert_eq!(st.host_ip, "192.0.2.7");
        assert_eq!(st.start_time_ms, now.wall_ms);
        assert!(st
            .containers
            .iter()
            .all(|c| c.ready && c.restart_count == 0));
        let ready = st
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready");
        assert!(ready.status);
        assert_eq!(st.conditions.len(), 4);
        assert!(st.conditions.iter().all(|c| c.status));
    }

    fn probe(action: protocol::pod::ProbeAction) -> protocol::pod::Probe {
        protocol::pod::Probe {
            action,
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
            termination_grace_period_seconds: None,
        }
    }

    fn exec_probe() -> protocol::pod::Probe {
        probe(protocol::pod::ProbeAction::Exec {
            command: vec!["true".into()],
        })
    }

    /// Drives a fresh machine for `p` until every container runs.
    fn started_pod(p: EdgePod) -> (PodMachine, Now) {
        let now = t0();
        let names: Vec<String> = p.containers.iter().map(|c| c.name.clone()).collect();
        let mut m = PodMachine::new(settings(), p, None, now);
        m.step(Event::Tick, now);
        let mut action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
        for (i, name) in names.iter().enumerate() {
            assert!(matches!(action, Action::StartContainer { index, .. } if index == i));
            action = m.step(
                Event::Started {
                    index: i,
                    attempt: 0,
                    result: Ok(info(name, 0, running(now.wall_ms))),
                },
                now,
            );
        }
        (m, now)
    }

    fn verdict(index: usize, instance: &str, kind: ProbeKind, passed: bool) -> Event {
        Event::Probe(ProbeVerdict {
            index,
            instance: instance.into(),
            kind,
            passed,
            message: if passed { "" } else { "boom" }.into(),
        })
    }

    fn ready_condition(m: &PodMachine) -> PodCondition {
        m.status()
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready")
    }

    use crate::pods::probes::ProbeKind;

    /// Answers polls of running containers (all still running) until the machine wants
    /// something else.
    fn past_polls(m: &mut PodMachine, mut action: Action, t: Now) -> Action {
        while let Action::Observe(targets) = action {
            let results = targets
                .into_iter()
                .map(|(i, id)| (i, id, Ok(running(t.wall_ms))))
                .collect();
            action = m.step(Event::Observed(results), t);
        }
        action
    }

    #[test]
    fn readiness_verdicts_drive_container_and_pod_readiness() {
        let mut p = pod(RestartPolicy::Always, &["a", "b"]);
        p.containers[1].readiness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        // A readiness probe: not ready until it passes; the other container is.
        let st = m.status().expect("status");
        assert!(st.containers[0].ready && !st.containers[1].ready);
        let ready = ready_condition(&m);
        assert!(!ready.status);
        assert_eq!(ready.message, "containers with unready status: [b]");
        let contains_ready = |m: &PodMachine| {
            m.status()
                .expect("status")
                .conditions
                .iter()
                .any(|c| c.kind == "ContainersReady" && c.status)
        };
        assert!(!contains_ready(&m));

        let t = at(now, 2_000);
        m.step(verdict(1, "u1/b/0", ProbeKind::Readiness, true), t);
        assert!(m.status().expect("status").containers[1].ready);
        assert!(ready_condition(&m).status);
        assert_eq!(ready_condition(&m).last_transition_ms, t.wall_ms);
        assert!(contains_ready(&m));

        // A verdict about another instance changes nothing.
        let t2 = at(now, 3_000);
        m.step(verdict(1, "u1/b/7", ProbeKind::Readiness, false), t2);
        assert!(ready_condition(&m).status);

        m.step(verdict(1, "u1/b/0", ProbeKind::Readiness, false), t2);
        let ready = ready_condition(&m);
        assert_eq!(
            (ready.status, ready.last_transition_ms),
            (false, t2.wall_ms)
        );
        assert!(!contains_ready(&m));
        assert_eq!(m.state(), &PodState::Running, "readiness never restarts");
    }

    #[test]
    fn a_passed_startup_probe_makes_a_container_without_readiness_probe_ready() {
        let mut p = pod(RestartPolicy::Always, &["a", "b"]);
        p.containers[0].startup_probe = Some(exec_probe());
        p.containers[1].startup_probe = Some(exec_probe());
        p.containers[1].readiness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        let st = m.status().expect("status");
        assert!(!st.containers[0].ready && !st.containers[1].ready);
        m.step(verdict(0, "u1/a/0", ProbeKind::Startup, true), now);
        m.step(verdict(1, "u1/b/0", ProbeKind::Startup, true), now);
        let st = m.status().expect("status");
        assert!(st.containers[0].ready);
        assert!(!st.containers[1].ready, "b waits for its readiness probe");
    }

    #[test]
    fn a_failed_liveness_probe_kills_with_its_grace_and_restarts_with_back_off() {
        let mut p = pod(RestartPolicy::Always, &["a", "b"]);
        let mut liveness = exec_probe();
        liveness.termination_grace_period_seconds = Some(5);
        p.containers[0].liveness_probe = Some(liveness);
        p.containers[0].readiness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        m.step(verdict(0, "u1/a/0", ProbeKind::Readiness, true), now);
        assert!(ready_condition(&m).status);

        let action = m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(5)
            }
        );
        // Another failure meanwhile asks for nothing more.
        assert_eq!(
            m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now),
            action
        );
        let t = at(now, 1_000);
        let killed = ContainerRunState::Exited {
            exit_code: 143,
            signal: Some(15),
            reason: "Error".into(),
            started_at_ms: now.wall_ms,
            finished_at_ms: t.wall_ms,
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), t);
        // The usual restart back-off (b is still polled meanwhile).
        let action = past_polls(&mut m, action, t);
        assert_eq!(
            action,
            Action::Wait(Some(t.mono + Duration::from_millis(500)))
        );
        assert!(matches!(m.slots()[0].phase,
            ContainerPhase::BackOff { until, .. } if until == t.mono + Duration::from_secs(10)));
        let st = m.status().expect("status");
        let c = &st.containers[0];
        assert!(!c.ready);
        assert!(!ready_condition(&m).status);
        assert!(
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        match &c.last_state {
            Some(ContainerState::Terminated {
                exit_code, message, ..
            }) => {
                assert_eq!(*exit_code, 143);
                assert_eq!(
                    message,
                    "Container a failed liveness probe, will be restarted: boom"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            st.containers[1].state,
            ContainerState::Running { .. }
        ));

        let t = at(t, 10_000);
        match m.step(Event::Tick, t) {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (0, 1))
            }
            other => panic!("{other:?}"),
        }
        m.step(
            Event::Started {
                index: 0,
                attempt: 1,
                result: Ok(info("a", 1, running(t.wall_ms))),
            },
            t,
        );
        let c = &m.status().expect("status").containers[0];
        assert_eq!(c.restart_count, 1);
        assert!(matches!(c.state, ContainerState::Running { .. }));
        // The new instance is not ready until its readiness probe passes again, and verdicts
        // about the killed one are ignored.
        assert!(!c.ready);
        m.step(verdict(0, "u1/a/0", ProbeKind::Readiness, true), t);
        assert!(!m.status().expect("status").containers[0].ready);
        m.step(verdict(0, "u1/a/1", ProbeKind::Readiness, true), t);
        assert!(m.status().expect("status").containers[0].ready);
    }

    #[test]
    fn a_failed_startup_probe_kills_and_never_means_no_restart() {
        let mut p = pod(RestartPolicy::Never, &["a"]);
        p.containers[0].startup_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        let action = m.step(verdict(0, "u1/a/0", ProbeKind::Startup, false), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
            now,
        );
        assert_eq!(m.phase(), PodPhase::Failed);
        match &m.status().expect("status").containers[0].state {
            ContainerState::Terminated { message, .. } => {
                assert_eq!(message, "Container a failed startup probe: boom")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn on_failure_restarts_a_killed_container_that_exited_zero() {
        let mut p = pod(RestartPolicy::OnFailure, &["a"]);
        p.containers[0].liveness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
        m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(0, 0, 1)))]),
            now,
        );
        assert!(matches!(m.slots()[0].phase, ContainerPhase::BackOff { .. }));
        assert_eq!(m.phase(), PodPhase::Running);
    }

    #[test]
    fn a_failed_kill_is_retried_with_back_off() {
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.containers[0].liveness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
        let fail = Failure {
            reason: "RunContainerError".into(),
            message: "stuck".into(),
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
        let action = past_polls(&mut m, action, now);
        assert!(matches!(action, Action::Wait(_)), "{action:?}");
        let t = at(now, 9_999);
        let action = m.step(Event::Tick, t);
        assert!(matches!(past_polls(&mut m, action, t), Action::Wait(_)));
        assert!(matches!(
            m.step(Event::Tick, at(now, 10_000)),
            Action::StopContainers { grace, .. } if grace == Duration::from_secs(30)
        ));
    }

    #[test]
    fn probe_failures_do_not_kill_containers_of_a_pod_being_stopped() {
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.containers[0].liveness_probe = Some(exec_probe());
        let (mut m, now) = started_pod(p);
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(3);
        m.step(Event::Update(deleting), now);
        let action = m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(3)
            }
        );
        assert!(m.slots()[0].probe_kill.is_none());
    }

    #[test]
    fn polling_waits_for_the_period() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let results = vec![(0, "u1/a/0".to_string(), Ok(running(now.wall_ms)))];
        let action = m.step(Event::Observed(results), now);
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_millis(500)))
        );
        assert!(matches!(
            m.step(Event::Tick, at(now, 500)),
            Action::Observe(_)
        ));
    }

    #[test]
    fn crashes_back_off_exponentially_and_restart_with_the_next_attempt() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut t = now;
        for (n, delay_s) in [(1u32, 10u64), (2, 20), (3, 40), (4, 80)] {
            let attempt = n - 1;
            let id = format!("u1/a/{attempt}");
            let action = m.step(
                Event::Observed(vec![(0, id.clone(), Ok(exited(1, t.wall_ms, t.wall_ms)))]),
                t,
            );
            assert_eq!(
                action,
                Action::Wait(Some(t.mono + Duration::from_secs(delay_s))),
                "crash {n}"
            );
            let st = m.status().expect("status");
            assert_eq!(st.phase, PodPhase::Running);
            let c = &st.containers[0];
            assert_eq!(c.restart_count, attempt);
            assert!(!c.ready);
            match &c.state {
                ContainerState::Waiting { reason, message } => {
                    assert_eq!(reason, "CrashLoopBackOff");
                    assert_eq!(
                        message,
                        &format!(
                            "back-off {} restarting failed container=a pod=p_rigs(u1)",
                            go_duration(Duration::from_secs(delay_s))
                        )
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                c.last_state,
                Some(ContainerState::Terminated { exit_code: 1, .. })
            ));
            // Not before the delay.
            let early = at(t, delay_s * 1000 - 1);
            assert!(matches!(m.step(Event::Tick, early), Action::Wait(_)));
            t = at(t, delay_s * 1000);
            match m.step(Event::Tick, t) {
                Action::StartContainer { config, .. } => assert_eq!(config.attempt, n),
                other => panic!("{other:?}"),
            }
            let action = m.step(
                Event::Started {
                    index: 0,
                    attempt: n,
                    result: Ok(info("a", n, running(t.wall_ms))),
                },
                t,
            );
            // The exited instance is removed once its successor runs.
            assert_eq!(action, Action::RemoveContainers(vec![id.clone()]));
            m.step(Event::ContainersRemoved(vec![id]), t);
            let c = &m.status().expect("status").containers[0];
            assert_eq!(c.restart_count, n);
            assert!(matches!(c.state, ContainerState::Running { .. }));
        }
    }

    #[test]
    fn a_long_run_resets_the_back_off() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.slots[0].crashes = 6;
        let later = at(now, 600_000);
        let action = m.step(
            Event::Observed(vec![(
                0,
                "u1/a/0".into(),
                Ok(exited(1, now.wall_ms, later.wall_ms)),
            )]),
            later,
        );
        assert_eq!(
            action,
            Action::Wait(Some(later.mono + Duration::from_secs(10)))
        );
    }

    #[test]
    fn on_failure_with_success_completes() {
        let (mut m, now) = started(RestartPolicy::OnFailure, &["a"]);
        let action = m.step(
            Event::Observed(vec![(
                0,
                "u1/a/0".into(),
                Ok(exited(0, now.wall_ms, now.wall_ms)),
            )]),
            now,
        );
        assert_eq!(action, Action::Wait(None));
        assert_eq!(m.state(), &PodState::Completed);
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Succeeded);
        assert!(matches!(
            st.containers[0].state,
            ContainerState::Terminated { exit_code: 0, .. }
        ));
        let ready = st
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (false, "PodCompleted")
        );
    }

    #[test]
    fn never_with_a_failure_fails_only_when_all_exited() {
        let (mut m, now) = started(RestartPolicy::Never, &["a", "b"]);
        m.step(
            Event::Observed(vec![(
                0,
                "u1/a/0".into(),
                Ok(exited(2, now.wall_ms, now.wall_ms)),
            )]),
            now,
        );
        assert_eq!(m.phase(), PodPhase::Running, "b still runs");
        let t = at(now, 500);
        m.step(
            Event::Observed(vec![(
                1,
                "u1/b/0".into(),
                Ok(exited(0, now.wall_ms, t.wall_ms)),
            )]),
            t,
        );
        assert_eq!(m.phase(), PodPhase::Failed);
        assert_eq!(m.state(), &PodState::Completed);
    }

    #[test]
    fn unknown_state_and_repeated_observe_errors_count_as_failures() {
        let (mut m, now) = started(RestartPolicy::OnFailure, &["a"]);
        let err = || {
            Err(Failure {
                reason: "RunContainerError".into(),
                message: "gone".into(),
            })
        };
        m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
        m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
        assert!(matches!(m.slots[0].phase, ContainerPhase::Running { .. }));
        m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
        assert!(matches!(m.slots[0].phase, ContainerPhase::BackOff { .. }));

        let (mut m, now) = started(RestartPolicy::Never, &["a"]);
        m.step(
            Event::Observed(vec![(
                0,
                "u1/a/0".into(),
                Ok(ContainerRunState::Unknown {
                    message: "host rebooted".into(),
                }),
            )]),
            now,
        );
        assert_eq!(m.phase(), PodPhase::Failed);
        match &m.status().expect("status").containers[0].state {
            ContainerState::Terminated {
                reason, message, ..
            } => {
                assert_eq!(reason, "ContainerStatusUnknown");
                assert_eq!(message, "host rebooted");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_errors_wait_with_the_runtime_reason_and_retry() {
        let now = t0();
        let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
        m.step(Event::Tick, now);
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        let action = m.step(
            Event::Started {
                index: 0,
                attempt: 0,
                result: Err(Failure {
                    reason: "CreateContainerError".into(),
                    message: "no such program".into(),
                }),
            },
            now,
        );
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_secs(10)))
        );
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Pending);
        assert_eq!(
            st.containers[0].state,
            ContainerState::Waiting {
                reason: "CreateContainerError".into(),
                message: "no such program".into()
            }
        );
        match m.step(Event::Tick, at(now, 10_000)) {
            Action::StartContainer { config, .. } => assert_eq!(config.attempt, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeated_pull_failures_wait_in_image_pull_back_off() {
        let now = t0();
        let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
        m.step(Event::Tick, now);
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        let pull_failed = || Event::Started {
            index: 0,
            attempt: 0,
            result: Err(Failure {
                reason: "ErrImagePull".into(),
                message: "no registry".into(),
            }),
        };
        let reason = |m: &PodMachine| match &m.status().expect("status").containers[0].state {
            ContainerState::Waiting { reason, .. } => reason.clone(),
            other => panic!("{other:?}"),
        };
        m.step(pull_failed(), now);
        assert_eq!(reason(&m), "ErrImagePull");
        let later = at(now, 10_000);
        assert!(matches!(
            m.step(Event::Tick, later),
            Action::StartContainer { .. }
        ));
        m.step(pull_failed(), later);
        assert_eq!(reason(&m), "ImagePullBackOff");
    }

    #[test]
    fn huge_delays_saturate_instead_of_panicking() {
        let now = t0();
        let huge = Settings {
            backoff: BackoffPolicy {
                base: Duration::MAX,
                cap: Duration::MAX,
                reset_after: Duration::MAX,
            },
            poll_interval: Duration::MAX,
            ..clone_settings(&settings())
        };
        let mut m = PodMachine::new(
            Arc::new(huge),
            pod(RestartPolicy::Always, &["a"]),
            None,
            now,
        );
        m.step(Event::Tick, now);
        let failed = m.step(
            Event::SandboxCreated(Err(Failure {
                reason: "RunContainerError".into(),
                message: "disk full".into(),
            })),
            now,
        );
        match failed {
            Action::Wait(Some(at)) => assert!(at > at_secs(now, 86_400 * 365)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forced_deletion_shortens_a_graceful_one_in_progress() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(30);
        assert_eq!(
            m.step(Event::Update(deleting.clone()), now),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        // `kubectl delete --grace-period=0 --force` while the 30 s stop runs.
        deleting.deletion_grace_period_seconds = Some(0);
        assert_eq!(
            m.step(Event::Update(deleting.clone()), now),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::ZERO
            }
        );
        // A longer one does not lengthen it again.
        deleting.deletion_grace_period_seconds = Some(60);
        assert_eq!(
            m.step(Event::Update(deleting), now),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_deletion_shortens_the_stop_of_a_replacement() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut changed = m.pod().clone();
        changed.restart_policy = RestartPolicy::OnFailure;
        assert!(matches!(
            m.step(Event::Update(changed.clone()), now),
            Action::StopContainers { grace, .. } if grace == Duration::from_secs(30)
        ));
        changed.deletion_grace_period_seconds = Some(2);
        assert!(matches!(
            m.step(Event::Update(changed), now),
            Action::StopContainers { grace, .. } if grace == Duration::from_secs(2)
        ));
        assert!(matches!(
            m.state(),
            PodState::Terminating {
                then: AfterStop::Report,
                ..
            }
        ));
    }

    #[test]
    fn sandbox_failures_are_retried_with_back_off() {
        let now = t0();
        let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
        m.step(Event::Tick, now);
        let fail = || {
            Event::SandboxCreated(Err(Failure {
                reason: "RunContainerError".into(),
                message: "disk full".into(),
            }))
        };
        assert_eq!(
            m.step(fail(), now),
            Action::Wait(Some(now.mono + Duration::from_secs(10)))
        );
        assert!(m.status().expect("status").message.contains("disk full"));
        let t = at(now, 10_000);
        assert_eq!(m.step(Event::Tick, t), Action::CreateSandbox);
        assert_eq!(
            m.step(fail(), t),
            Action::Wait(Some(t.mono + Duration::from_secs(20)))
        );
    }

    #[test]
    fn missing_config_maps_are_config_errors() {
        let now = t0();
        let mut p = pod(RestartPolicy::Always, &["a", "b"]);
        p.containers[0].env.push(EnvVar {
            name: "X".into(),
            value: EnvValue::ConfigMapKey {
                name: "cfg".into(),
                key: "k".into(),
                optional: false,
            },
        });
        let mut m = PodMachine::new(settings(), p, None, now);
        m.step(Event::Tick, now);
        // The first container cannot start; the second one still does.
        match m.step(Event::SandboxCreated(Ok(sandbox())), now) {
            Action::StartContainer { index, .. } => assert_eq!(index, 1),
            other => panic!("{other:?}"),
        }
        match &m.status().expect("status").containers[0].state {
            ContainerState::Waiting { reason, message } => {
                assert_eq!(reason, "CreateContainerConfigError");
                assert!(message.contains("configmap \"cfg\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_config_change_retries_at_once_the_containers_waiting_for_their_configuration() {
        let now = t0();
        let (configs, view) = tokio::sync::watch::channel(Arc::new(ConfigSet::default()));
        let mut s = clone_settings(&settings());
        s.config = Arc::new(super::super::ConfigView(view));
        let mut p = pod(RestartPolicy::Always, &["a", "b"]);
        p.containers[0].env.push(EnvVar {
            name: "X".into(),
            value: EnvValue::ConfigMapKey {
                name: "cfg".into(),
                key: "k".into(),
                optional: false,
            },
        });
        let mut m = PodMachine::new(Arc::new(s), p, None, now);
        m.step(Event::Tick, now);
        assert!(matches!(
            m.step(Event::SandboxCreated(Ok(sandbox())), now),
            Action::StartContainer { index: 1, .. }
        ));
        m.step(
            Event::Started {
                index: 1,
                attempt: 0,
                result: Ok(info("b", 0, running(now.wall_ms))),
            },
            now,
        );
        let action = m.step(
            Event::Observed(vec![(1, "u1/b/0".into(), Ok(running(now.wall_ms)))]),
            now,
        );
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_millis(500)))
        );
        // A change that does not bring the map: still waiting, with a fresh back-off.
        assert!(matches!(m.step(Event::ConfigChanged, now), Action::Wait(_)));
        // The map arrives: `a` starts now, not after its back-off.
        let mut set = ConfigSet::default();
        set.insert_config_map(protocol::config::EdgeConfigMap {
            namespace: "rigs".into(),
            name: "cfg".into(),
            data: BTreeMap::from([("k".into(), "v".into())]),
            binary_data: BTreeMap::new(),
        });
        configs.send_replace(Arc::new(set));
        let t = at(now, 100);
        match m.step(Event::ConfigChanged, t) {
            Action::StartContainer { index, config, .. } => {
                assert_eq!(index, 0);
                assert_eq!(config.env, [("X".to_string(), "v".to_string())]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_and_command_are_resolved_for_the_runtime() {
        let now = t0();
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.containers[0].env = vec![
            EnvVar {
                name: "IP".into(),
                value: EnvValue::FieldRef("status.podIP".into()),
            },
            EnvVar {
                name: "URL".into(),
                value: EnvValue::Literal("http://$(IP):80".into()),
            },
        ];
        p.containers[0].args = vec!["$(URL)".into()];
        let mut m = PodMachine::new(settings(), p, None, now);
        m.step(Event::Tick, now);
        match m.step(Event::SandboxCreated(Ok(sandbox())), now) {
            Action::StartContainer {
                container, config, ..
            } => {
                assert_eq!(container.args, ["http://192.0.2.7:80"]);
                assert_eq!(config.env[1], ("URL".into(), "http://192.0.2.7:80".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deletion_stops_with_its_grace_then_reports_removed() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(3);
        let action = m.step(Event::Update(deleting), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(3)
            }
        );
        let st = m.status().expect("status");
        assert_eq!(
            st.phase,
            PodPhase::Running,
            "phase unchanged while stopping"
        );
        assert!(!st.removed);
        let killed = ContainerRunState::Exited {
            exit_code: 137,
            signal: Some(9),
            reason: "Error".into(),
            started_at_ms: now.wall_ms,
            finished_at_ms: now.wall_ms + 3000,
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), now);
        assert_eq!(
            action,
            Action::RemoveSandbox {
                sandbox: sandbox(),
                grace: Duration::from_secs(3)
            }
        );
        let action = m.step(Event::SandboxRemoved(Ok(())), now);
        assert_eq!(action, Action::Finish(Outcome::Deleted));
        let st = m.status().expect("status");
        assert!(st.removed);
        assert!(matches!(
            st.containers[0].state,
            ContainerState::Terminated { exit_code: 137, .. }
        ));
        // More updates change nothing.
        let again = m.pod().clone();
        assert_eq!(
            m.step(Event::Update(again), now),
            Action::Finish(Outcome::Deleted)
        );
    }

    #[test]
    fn failed_stops_and_removals_are_retried() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(Event::Forget, now);
        assert!(m.status().is_none(), "a forgotten pod reports nothing");
        let fail = Failure {
            reason: "RunContainerError".into(),
            message: "stuck".into(),
        };
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail.clone()))]),
            now,
        );
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_secs(10)))
        );
        let t = at(now, 10_000);
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::StopContainers { .. }
        ));
        m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
            t,
        );
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::RemoveSandbox { .. }
        ));
        m.step(Event::SandboxRemoved(Err(fail)), t);
        assert!(matches!(m.step(Event::Tick, t), Action::Wait(Some(_))));
        let t = at(t, 10_000);
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::RemoveSandbox { .. }
        ));
        assert_eq!(
            m.step(Event::SandboxRemoved(Ok(())), t),
            Action::Finish(Outcome::Forgotten)
        );
    }

    #[test]
    fn a_deleting_pod_that_never_ran_is_removed_at_once() {
        let now = t0();
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.deletion_grace_period_seconds = Some(30);
        let mut m = PodMachine::new(settings(), p, None, now);
        assert_eq!(m.step(Event::Tick, now), Action::Finish(Outcome::Deleted));
        let st = m.status().expect("status");
        assert!(st.removed);
        assert!(matches!(&st.containers[0].state,
            ContainerState::Terminated { reason, .. } if reason == "ContainerStatusUnknown"));
    }

    #[test]
    fn labels_only_changes_restart_nothing_but_pod_spec_changes_replace() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut relabelled = m.pod().clone();
        relabelled.labels.insert("tier".into(), "edge".into());
        let action = m.step(Event::Update(relabelled), now);
        assert!(
            matches!(action, Action::Wait(_) | Action::Observe(_)),
            "{action:?}"
        );
        assert_eq!(m.state(), &PodState::Running);
        assert_eq!(m.pod().labels.len(), 1);

        // A pod-level change (here the restart policy): the pod is replaced.
        let mut changed = m.pod().clone();
        changed.restart_policy = RestartPolicy::OnFailure;
        let action = m.step(Event::Update(changed.clone()), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
            now,
        );
        // Back to a fresh start with the new spec.
        assert_eq!(
            m.step(Event::SandboxRemoved(Ok(())), now),
            Action::CreateSandbox
        );
        assert_eq!(m.pod(), &changed);
        assert_eq!(m.slots()[0].restart_count, 0);
    }

    #[test]
    fn only_changed_containers_restart_but_other_changes_replace_the_pod() {
        let old = pod(RestartPolicy::Always, &["a", "b"]);
        let mut images = old.clone();
        images.containers[1].image = "local:v2".into();
        assert_eq!(spec_change(&old, &images), SpecChange::Containers(vec![1]));
        let mut relabelled = old.clone();
        relabelled.labels.insert("tier".into(), "edge".into());
        assert_eq!(spec_change(&old, &relabelled), SpecChange::Same);
        let added = pod(RestartPolicy::Always, &["a", "b", "c"]);
        assert_eq!(spec_change(&old, &added), SpecChange::Replace);
        let reordered = pod(RestartPolicy::Always, &["b", "a"]);
        assert_eq!(spec_change(&old, &reordered), SpecChange::Replace);
        let renamed = pod(RestartPolicy::Always, &["a", "c"]);
        assert_eq!(spec_change(&old, &renamed), SpecChange::Replace);
        let policy = pod(RestartPolicy::Never, &["a", "b"]);
        assert_eq!(spec_change(&old, &policy), SpecChange::Replace);
        let mut volumes = old.clone();
        volumes.volumes.push(protocol::pod::Volume {
            name: "v".into(),
            source: protocol::pod::VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        });
        assert_eq!(spec_change(&old, &volumes), SpecChange::Replace);

        // Only b's image changed: b alone is stopped, with the pod's grace, and restarted as
        // its next attempt; the pod keeps running.
        let (mut m, now) = started(RestartPolicy::Always, &["a", "b"]);
        let mut changed = m.pod().clone();
        changed.containers[1].image = "local:v2".into();
        let action = m.step(Event::Update(changed.clone()), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(1, "u1/b/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        assert_eq!(m.state(), &PodState::Running);
        assert_eq!(m.phase(), PodPhase::Running);
        let action = m.step(
            Event::Stopped(vec![(1, "u1/b/0".into(), Ok(exited(143, 0, now.wall_ms)))]),
            now,
        );
        match action {
            Action::StartContainer {
                index,
                container,
                config,
            } => {
                assert_eq!((index, config.attempt), (1, 1));
                assert_eq!(container.image, "local:v2");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.phase(), PodPhase::Running);
        let action = m.step(
            Event::Started {
                index: 1,
                attempt: 1,
                result: Ok(info("b", 1, running(now.wall_ms))),
            },
            now,
        );
        assert_eq!(action, Action::RemoveContainers(vec!["u1/b/0".into()]));
        m.step(Event::ContainersRemoved(vec!["u1/b/0".into()]), now);
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Running);
        assert_eq!(st.containers[0].container_id, "u1/a/0");
        assert_eq!(st.containers[0].restart_count, 0);
        assert_eq!(st.containers[1].container_id, "u1/b/1");
        assert_eq!(st.containers[1].restart_count, 1);
        assert_eq!(st.containers[1].image, "local:v2");
        assert!(matches!(
            st.containers[1].last_state,
            Some(ContainerState::Terminated { exit_code: 143, .. })
        ));
        assert_eq!(m.pod(), &changed);

        // The list of containers changed: the whole pod is replaced.
        let mut more = m.pod().clone();
        more.containers.push(container("c"));
        assert!(matches!(
            m.step(Event::Update(more), now),
            Action::StopContainers { targets, .. } if targets.len() == 2
        ));
        assert!(matches!(
            m.state(),
            PodState::Terminating {
                then: AfterStop::Replace(_),
                ..
            }
        ));
    }

    #[test]
    fn a_failed_restart_stop_is_retried_and_a_deletion_takes_over() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let mut changed = m.pod().clone();
        changed.containers[0].image = "local:v2".into();
        m.step(Event::Update(changed), now);
        let fail = Failure {
            reason: "RunContainerError".into(),
            message: "stuck".into(),
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
        // Not stopped again before the back-off; the pod is still watched meanwhile.
        assert_eq!(action, Action::Observe(vec![(0, "u1/a/0".into())]));
        let action = m.step(
            Event::Observed(vec![(0, "u1/a/0".into(), Ok(running(now.wall_ms)))]),
            now,
        );
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_millis(500)))
        );
        let t = at(now, 10_000);
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::StopContainers { .. }
        ));
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(0);
        assert_eq!(
            m.step(Event::Update(deleting), t),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::ZERO
            }
        );
        m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
            t,
        );
        assert_eq!(
            m.step(Event::SandboxRemoved(Ok(())), t),
            Action::Finish(Outcome::Deleted)
        );
    }

    #[test]
    fn adoption_restarts_instances_of_another_spec() {
        let now = t0();
        let p = pod(RestartPolicy::Always, &["a", "b", "c"]);
        let digest_of = |c: &EdgeContainer| Some(container_digest(c));
        let mut older = p.containers[1].clone();
        older.command = vec!["sleep".into(), "1".into()];
        let with = |mut i: ContainerInfo, digest| {
            i.spec_digest = digest;
            i
        };
        let existing = ExistingPod {
            sandbox: sandbox(),
            namespace: "rigs".into(),
            name: "p".into(),
            containers: vec![
                with(info("a", 0, running(100)), digest_of(&p.containers[0])),
                with(info("b", 2, running(100)), digest_of(&older)),
                // Started before digests were recorded: taken to match.
                info("c", 0, running(100)),
            ],
        };
        let mut m = PodMachine::new(settings(), p, Some(existing), now);
        assert_eq!(
            m.step(Event::Tick, now),
            Action::StopContainers {
                targets: vec![(1, "u1/b/2".into())],
                grace: Duration::from_secs(30)
            }
        );
        match m.step(
            Event::Stopped(vec![(1, "u1/b/2".into(), Ok(exited(143, 100, 200)))]),
            now,
        ) {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (1, 3))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forgotten_pod_wanted_again_is_replaced() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(Event::Forget, now);
        let p = m.pod().clone();
        m.step(Event::Update(p), now);
        assert!(matches!(
            m.state(),
            PodState::Terminating {
                then: AfterStop::Replace(_),
                ..
            }
        ));
    }

    #[test]
    fn adoption_keeps_running_containers_and_their_restart_count() {
        let now = t0();
        let existing = ExistingPod {
            sandbox: sandbox(),
            namespace: "rigs".into(),
            name: "p".into(),
            containers: vec![
                info("a", 2, exited(1, 1, 2)),
                info("a", 3, running(500)),
                info("b", 0, running(200)),
                info("old", 0, running(100)),
            ],
        };
        let mut m = PodMachine::new(
            settings(),
            pod(RestartPolicy::Always, &["a", "b", "c"]),
            Some(existing),
            now,
        );
        let st = m.status().expect("status");
        assert_eq!(st.containers[0].restart_count, 3);
        assert_eq!(st.containers[0].container_id, "u1/a/3");
        assert_eq!(st.containers[1].container_id, "u1/b/0");
        assert_eq!(st.start_time_ms, 200);
        assert_eq!(st.phase, PodPhase::Pending, "c never ran");
        // Leftovers go first, then the missing container starts; nothing running is restarted.
        let action = m.step(Event::Tick, now);
        assert_eq!(
            action,
            Action::RemoveContainers(vec!["u1/a/2".into(), "u1/old/0".into()])
        );
        match m.step(
            Event::ContainersRemoved(vec!["u1/a/2".into(), "u1/old/0".into()]),
            now,
        ) {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (2, 0))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adoption_of_an_exited_container_applies_the_policy() {
        let now = t0();
        let existing = |state| ExistingPod {
            sandbox: sandbox(),
            namespace: "rigs".into(),
            name: "p".into(),
            containers: vec![info("a", 1, state)],
        };
        // Exited 4 s ago under Always: restarts 20 s after the exit, i.e. in 16 s.
        let finished = now.wall_ms - 4000;
        let mut m = PodMachine::new(
            settings(),
            pod(RestartPolicy::Always, &["a"]),
            Some(existing(exited(1, finished - 10, finished))),
            now,
        );
        assert_eq!(
            m.step(Event::Tick, now),
            Action::Wait(Some(now.mono + Duration::from_secs(16)))
        );
        match m.step(Event::Tick, at(now, 16_000)) {
            Action::StartContainer { config, .. } => assert_eq!(config.attempt, 2),
            other => panic!("{other:?}"),
        }

        let mut m = PodMachine::new(
            settings(),
            pod(RestartPolicy::OnFailure, &["a"]),
            Some(existing(exited(0, 1, 2))),
            now,
        );
        assert_eq!(m.step(Event::Tick, now), Action::Wait(None));
        assert_eq!(m.phase(), PodPhase::Succeeded);
    }

    #[test]
    fn an_adopted_deleting_pod_is_stopped_again() {
        let now = t0();
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.deletion_grace_period_seconds = Some(5);
        let existing = ExistingPod {
            sandbox: sandbox(),
            namespace: "rigs".into(),
            name: "p".into(),
            containers: vec![info("a", 0, running(100))],
        };
        let mut m = PodMachine::new(settings(), p, Some(existing), now);
        assert_eq!(
            m.step(Event::Tick, now),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn conditions_keep_their_transition_times() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        let ready_at = |m: &PodMachine| {
            m.status()
                .expect("status")
                .conditions
                .iter()
                .find(|c| c.kind == "Ready")
                .map(|c| (c.status, c.last_transition_ms))
                .expect("Ready")
        };
        let first = ready_at(&m);
        let t = at(now, 500);
        m.step(
            Event::Observed(vec![(0, "u1/a/0".into(), Ok(running(now.wall_ms)))]),
            t,
        );
        assert_eq!(ready_at(&m), first, "no flap without a change");
        let t = at(now, 1000);
        m.step(
            Event::Observed(vec![(0, "u1/a/0".into(), Ok(exited(1, 0, t.wall_ms)))]),
            t,
        );
        assert_eq!(ready_at(&m), (false, t.wall_ms));
    }

    #[test]
    fn phase_follows_the_containers() {
        let mut a = ContainerSlot::new(&container("a"));
        assert_eq!(
            containers_phase(std::slice::from_ref(&a)),
            PodPhase::Pending
        );
        a.ever_started = true;
        a.phase = ContainerPhase::Running {
            id: "x".into(),
            attempt: 0,
            started_at_ms: 0,
        };
        assert_eq!(
            containers_phase(std::slice::from_ref(&a)),
            PodPhase::Running
        );
        let done = |code| ContainerPhase::Exited {
            id: "x".into(),
            attempt: 0,
            terminated: ContainerState::Terminated {
                exit_code: code,
                signal: None,
                reason: String::new(),
                message: String::new(),
                started_at_ms: 0,
                finished_at_ms: 0,
            },
        };
        let mut b = a.clone();
        b.phase = done(0);
        assert_eq!(containers_phase(&[a.clone(), b.clone()]), PodPhase::Running);
        a.phase = done(0);
        assert_eq!(
            containers_phase(&[a.clone(), b.clone()]),
            PodPhase::Succeeded
        );
        a.phase = done(3);
        assert_eq!(containers_phase(&[a.clone(), b.clone()]), PodPhase::Failed);
        // A container waiting to be restarted keeps the pod running.
        a.phase = ContainerPhase::Waiting {
            reason: "CreateContainerError".into(),
            message: String::new(),
            retry_at: None,
        };
        assert_eq!(containers_phase(&[a, b]), PodPhase::Running);
    }

    /// The sandbox made to replace a dead one.
    fn new_sandbox() -> Sandbox {
        Sandbox {
            id: "u1-attempt-1".into(),
            pod_uid: "u1".into(),
            ip: "10.88.0.9".into(),
        }
    }

    /// The sandbox that died, as the machine keeps it: without its IP.
    fn dead_sandbox() -> Sandbox {
        Sandbox {
            ip: String::new(),
            ..sandbox()
        }
    }

    fn lost() -> Event {
        Event::SandboxNotReady {
            sandbox_id: sandbox().id,
        }
    }

    #[test]
    fn a_lost_sandbox_is_replaced_and_its_containers_start_again_in_the_new_one() {
        let (mut m, now) = started(RestartPolicy::Always, &["a", "b"]);
        // b crashed and waits in back-off (10 s) when the sandbox dies.
        m.step(
            Event::Observed(vec![(
                1,
                "u1/b/0".into(),
                Ok(exited(1, now.wall_ms, now.wall_ms)),
            )]),
            now,
        );
        let t = at(now, 1_000);
        let action = m.step(lost(), t);
        assert_eq!(m.state().name(), "SandboxLost");
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Running);
        assert_eq!(st.pod_ip, "", "a dead sandbox's IP is not reported");
        assert!(!ready_condition(&m).status);
        // Another report of the same loss changes nothing.
        assert_eq!(m.step(lost(), t), action);

        let killed = ContainerRunState::Exited {
            exit_code: 143,
            signal: Some(15),
            reason: "Error".into(),
            started_at_ms: now.wall_ms,
            finished_at_ms: t.wall_ms,
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), t);
        assert_eq!(action, Action::CreateSandbox);
        let st = m.status().expect("status");
        assert_eq!(
            st.phase,
            PodPhase::Running,
            "a replaced sandbox is no new pod"
        );
        assert_eq!(st.pod_ip, "");
        let a = &st.containers[0];
        assert_eq!(a.restart_count, 0);
        assert!(
            matches!(&a.state, ContainerState::Waiting { reason, .. } if reason == "ContainerCreating")
        );
        assert!(matches!(
            &a.last_state,
            Some(ContainerState::Terminated { exit_code: 143, reason, .. }) if reason == "Error"
        ));

        // The new sandbox: a starts at once as its next attempt; b keeps its back-off.
        let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), t);
        match action {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (0, 1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.sandbox(), Some(&new_sandbox()));
        let action = m.step(
            Event::Started {
                index: 0,
                attempt: 1,
                result: Ok(info("a", 1, running(t.wall_ms))),
            },
            t,
        );
        // The instance stopped in the dead sandbox goes once its successor runs.
        assert_eq!(action, Action::RemoveContainers(vec!["u1/a/0".into()]));
        let action = m.step(Event::ContainersRemoved(vec!["u1/a/0".into()]), t);
        assert!(matches!(action, Action::Observe(ref targets) if targets.len() == 1));
        let st = m.status().expect("status");
        assert_eq!(st.pod_ip, "10.88.0.9");
        assert_eq!(st.start_time_ms, now.wall_ms, "the pod's start time stays");
        let a = &st.containers[0];
        assert_eq!((a.restart_count, a.container_id.as_str()), (1, "u1/a/1"));
        assert!(matches!(a.state, ContainerState::Running { .. }) && a.ready);
        assert!(matches!(
            a.last_state,
            Some(ContainerState::Terminated { exit_code: 143, .. })
        ));
        assert!(matches!(
            &st.containers[1].state,
            ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff"
        ));
        // A late report about the old sandbox is about nothing that runs now.
        let action = past_polls(&mut m, action, t);
        assert_eq!(m.step(lost(), t), action);
        assert_eq!(m.state(), &PodState::Running);

        let t = at(now, 10_000);
        match m.step(Event::Tick, t) {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (1, 1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_restart_policy_decides_which_stopped_containers_run_in_the_new_sandbox() {
        // (policy, exit code of the stop, starts again)
        for (policy, code, again) in [
            (RestartPolicy::Always, 0, true),
            (RestartPolicy::Always, 137, true),
            (RestartPolicy::OnFailure, 143, true),
            (RestartPolicy::OnFailure, 0, false),
            (RestartPolicy::Never, 143, false),
        ] {
            let (mut m, now) = started(policy, &["a"]);
            m.step(lost(), now);
            let action = m.step(
                Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(code, 0, 1)))]),
                now,
            );
            if again {
                assert_eq!(action, Action::CreateSandbox, "{policy:?} {code}");
                assert!(matches!(
                    m.slots()[0].phase,
                    ContainerPhase::Waiting { retry_at: None, .. }
                ));
                continue;
            }
            // Nothing to run: no new sandbox; the dead one goes with the pod.
            assert_eq!(action, Action::Wait(None), "{policy:?} {code}");
            assert_eq!(m.state(), &PodState::Completed);
            assert_eq!(m.status().expect("status").pod_ip, "");
            let expected = if code == 0 {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            };
            assert_eq!(m.phase(), expected, "{policy:?} {code}");
            let mut deleting = m.pod().clone();
            deleting.deletion_grace_period_seconds = Some(0);
            assert_eq!(
                m.step(Event::Update(deleting), now),
                Action::RemoveSandbox {
                    sandbox: dead_sandbox(),
                    grace: Duration::ZERO
                }
            );
        }
    }

    #[test]
    fn with_never_only_containers_that_never_ran_get_a_new_sandbox() {
        let (mut m, now) = started(RestartPolicy::Never, &["a", "b"]);
        // a exited before the sandbox died; b runs.
        m.step(
            Event::Observed(vec![(0, "u1/a/0".into(), Ok(exited(0, 0, 1)))]),
            now,
        );
        let action = m.step(lost(), now);
        assert_eq!(
            action,
            Action::StopContainers {
                targets: vec![(1, "u1/b/0".into())],
                grace: Duration::from_secs(30)
            }
        );
        let action = m.step(
            Event::Stopped(vec![(1, "u1/b/0".into(), Ok(exited(137, 0, 1)))]),
            now,
        );
        assert_eq!(action, Action::Wait(None));
        assert_eq!(m.phase(), PodPhase::Failed);

        // A container that never ran (its start kept failing) is still to run.
        let mut p = pod(RestartPolicy::Never, &["a", "b"]);
        p.containers[1].command = vec![];
        let mut m = PodMachine::new(settings(), p, None, now);
        m.step(Event::Tick, now);
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        m.step(
            Event::Started {
                index: 0,
                attempt: 0,
                result: Ok(info("a", 0, running(now.wall_ms))),
            },
            now,
        );
        let failure = Failure {
            reason: "CreateContainerError".into(),
            message: "no command".into(),
        };
        m.step(
            Event::Started {
                index: 1,
                attempt: 0,
                result: Err(failure),
            },
            now,
        );
        assert_eq!(m.phase(), PodPhase::Pending);
        m.step(lost(), now);
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
            now,
        );
        assert_eq!(action, Action::CreateSandbox);
        // Its start back-off is not waited for in the new sandbox; a stays exited.
        let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), now);
        assert!(
            matches!(action, Action::StartContainer { index: 1, ref config, .. } if config.attempt == 0),
            "{action:?}"
        );
        assert!(matches!(m.slots()[0].phase, ContainerPhase::Exited { .. }));
    }

    #[test]
    fn a_start_that_finds_the_sandbox_dead_replaces_it_at_once() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(
            Event::Observed(vec![(
                0,
                "u1/a/0".into(),
                Ok(exited(1, now.wall_ms, now.wall_ms)),
            )]),
            now,
        );
        let t = at(now, 10_000);
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::StartContainer { .. }
        ));
        // The worker feeds a start failing with `SandboxNotReady` as this event: nothing runs,
        // so a new sandbox at once, and the start is not counted as a failure.
        assert_eq!(m.step(lost(), t), Action::CreateSandbox);
        let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), t);
        match action {
            Action::StartContainer { index, config, .. } => {
                assert_eq!((index, config.attempt), (0, 1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.slots()[0].start_failures, 0);
    }

    #[test]
    fn a_failed_stop_in_a_lost_sandbox_is_retried_before_a_new_one_is_made() {
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(lost(), now);
        let fail = Failure {
            reason: "RunContainerError".into(),
            message: "stuck".into(),
        };
        let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
        assert_eq!(
            action,
            Action::Wait(Some(now.mono + Duration::from_secs(10)))
        );
        // Still running after a stop that succeeded: stopped again too.
        let t = at(now, 10_000);
        assert!(matches!(
            m.step(Event::Tick, t),
            Action::StopContainers { .. }
        ));
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(running(0)))]),
            t,
        );
        assert_eq!(action, Action::Wait(Some(t.mono + Duration::from_secs(20))));
        let t = at(t, 20_000);
        m.step(Event::Tick, t);
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
            t,
        );
        assert_eq!(action, Action::CreateSandbox);
    }

    #[test]
    fn a_pod_deleted_while_its_sandbox_is_replaced_just_finishes_deleting() {
        // Deleted while its containers are stopped for the replacement: the stop goes on with
        // the deletion's (shorter) grace, and the dead sandbox is removed.
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(lost(), now);
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(3);
        assert_eq!(
            m.step(Event::Update(deleting.clone()), now),
            Action::StopContainers {
                targets: vec![(0, "u1/a/0".into())],
                grace: Duration::from_secs(3)
            }
        );
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
            now,
        );
        assert_eq!(
            action,
            Action::RemoveSandbox {
                sandbox: dead_sandbox(),
                grace: Duration::from_secs(3)
            }
        );
        assert_eq!(
            m.step(Event::SandboxRemoved(Ok(())), now),
            Action::Finish(Outcome::Deleted)
        );
        assert!(matches!(
            m.status().expect("status").containers[0].state,
            ContainerState::Terminated { exit_code: 143, .. }
        ));

        // Deleted while the new sandbox is being made: the dead one is still removed (with the
        // pod's volumes), not skipped as if the pod never had one.
        let (mut m, now) = started(RestartPolicy::Always, &["a"]);
        m.step(lost(), now);
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
            now,
        );
        assert_eq!(action, Action::CreateSandbox);
        let fail = Failure {
            reason: "RunContainerError".into(),
            message: "no network".into(),
        };
        m.step(Event::SandboxCreated(Err(fail)), now);
        assert_eq!(m.phase(), PodPhase::Running);
        assert_eq!(
            m.step(Event::Update(deleting), now),
            Action::RemoveSandbox {
                sandbox: dead_sandbox(),
                grace: Duration::from_secs(3)
            }
        );
        // A loss reported now is about a pod that is going anyway.
        assert!(matches!(m.step(lost(), now), Action::RemoveSandbox { .. }));
    }
}
