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
//!
//! # Where the pieces are
//!
//! A step is `events` (apply: one match over every legal (state, event) pair, anything else
//! ignored and counted) then `decide` (the next [`Action`]) then `status` (conditions). What a
//! container's exit does is in `container`, how an update is taken in is in `spec_change`,
//! taking over what the runtime already runs is in `adopt`, and when lifecycle hooks run (and
//! how a preStop hook and the SIGTERM share the grace) in `hooks`.

mod adopt;
mod container;
mod decide;
mod events;
pub(crate) mod hooks;
#[cfg(test)]
mod hooks_tests;
mod init;
#[cfg(test)]
mod init_tests;
mod spec_change;
mod status;
#[cfg(test)]
mod tests;

use container::{
    on_exit, on_not_a_crash, terminated_state, unknown_termination, with_known_start, NotACrash,
};
pub(crate) use container::{ContainerPhase, ContainerSlot, SlotKind, SpecRestart};

use super::backoff::BackoffPolicy;
use super::env::ConfigLookup;
use super::probes::ProbeVerdict;
use crate::runtime::{ContainerConfig, ContainerInfo, ContainerRunState, ExistingPod, Sandbox};
use protocol::pod::{EdgeContainer, EdgePod, LifecycleHandler};
use protocol::status::{PodCondition, PodPhase};
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
    /// Run the postStart hook of slot `index`'s instance `id` (see [`hooks`]), then feed
    /// [`Event::PostStartDone`].
    PostStart {
        /// Slot index.
        index: usize,
        /// The instance that just started.
        id: String,
        /// The hook.
        handler: LifecycleHandler,
    },
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
    /// The postStart hook of slot `index`'s instance `id` returned: `Err` with kubelet's
    /// message when it failed.
    PostStartDone {
        /// Slot index.
        index: usize,
        /// The instance it ran for.
        id: String,
        /// How it went.
        result: Result<(), String>,
    },
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
    /// Whether every init container is done (see `init`): the app containers may start.
    initialized: bool,
    /// The stop of a finishing pod's sidecars, when it failed (retried with back-off).
    sidecar_stop: SpecRestart,
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
        let slots = init::slots_of(&pod);
        let initialized = pod.init_containers.is_empty();
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
            initialized,
            sidecar_stop: SpecRestart::default(),
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

    /// Applies `event` and decides what to do next: the machine's single transition function.
    pub fn step(&mut self, event: Event, now: Now) -> Action {
        self.apply(event, now);
        let action = self.decide(now);
        self.refresh_conditions(now);
        action
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

    /// `Running` becomes `Completed` once no container will run again: every app container
    /// exited for good (or an init container did, failing) and nothing runs any more.
    fn settle(&mut self) {
        if self.state != PodState::Running
            || self.slots.is_empty()
            || !self.finishing()
            || !self.running_targets().is_empty()
        {
            return;
        }
        for slot in &mut self.slots {
            // A sidecar waiting to restart will not.
            if let (SlotKind::Sidecar, ContainerPhase::BackOff { id, attempt, .. }) =
                (slot.kind, &slot.phase)
            {
                if let Some(terminated) = slot.last_state.take() {
                    slot.phase = ContainerPhase::Exited {
                        id: id.clone(),
                        attempt: *attempt,
                        terminated,
                    };
                }
            }
        }
        self.state = PodState::Completed;
    }
}
