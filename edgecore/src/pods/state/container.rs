//! One container of a pod as the machine sees it: its phase, its counters, and what an exit
//! of its instance does to it. Kept apart from the pod machine because these rules (back-off
//! after a crash, no back-off after a sandbox loss or an instance lost while edgecore was down)
//! are per container and do not depend on the pod's state.

use super::{Now, UNKNOWN_EXIT_CODE};
use crate::pods::backoff::BackoffPolicy;
use crate::pods::probes::ProbeKill;
use crate::runtime::{deadline_after, ContainerRunState};
use protocol::pod::{EdgeContainer, RestartPolicy};
use protocol::status::ContainerState;
use std::time::Duration;
use tokio::time::Instant;

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
    /// Running. What is only known about a running instance (its readiness, a pending kill or
    /// restart) lives here, so that it goes when the instance does.
    Running {
        /// Runtime id of the instance.
        id: String,
        /// Its attempt number.
        attempt: u32,
        /// When it started.
        started_at_ms: u64,
        /// Readiness verdict of the probes; `None` (no readiness or startup probe) means ready.
        /// Set for every new instance (see `probes::reset_for_new_instance`).
        readiness: Option<bool>,
        /// Set while the instance is to be killed for a failed liveness or startup probe.
        probe_kill: Option<ProbeKill>,
        /// Set while the instance is to be restarted because its spec changed (only the
        /// container's fields did; see [`super::spec_change`]).
        spec_restart: Option<SpecRestart>,
        /// Set while its postStart hook has not returned (see [`super::hooks`]): it is reported
        /// as still being created, is not ready, is not probed, and nothing after it starts.
        post_start: bool,
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

impl ContainerPhase {
    /// A freshly started instance: no probe verdict yet, nothing pending.
    pub(crate) fn running(id: String, attempt: u32, started_at_ms: u64) -> Self {
        ContainerPhase::Running {
            id,
            attempt,
            started_at_ms,
            readiness: None,
            probe_kill: None,
            spec_restart: None,
            post_start: false,
        }
    }
}

/// Which of the pod's lists a container comes from, which decides when it may start and what
/// its exit does (see [`ContainerSlot::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// An init container: runs to completion (exit 0) before the next one starts.
    Init,
    /// An init container with `restartPolicy: Always`: started in its turn, then runs beside
    /// the app containers.
    Sidecar,
    /// An app container (`spec.containers`): starts once every init container is done.
    App,
}

/// One container of the pod and everything the worker knows about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerSlot {
    /// Container name.
    pub name: String,
    /// Init, sidecar or app container.
    pub kind: SlotKind,
    /// Image, as reported.
    pub image: String,
    /// The image the newest instance runs, as its runtime named it (`imageID`); empty until
    /// one was created, and for a runtime without images.
    pub image_id: String,
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
    /// The exited instance to remove once its successor runs.
    pub previous_instance: Option<String>,
    /// Instances to remove from the runtime (superseded or unknown ones).
    pub garbage: Vec<String>,
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

impl ContainerSlot {
    /// A slot for a container of `kind` that has not run yet.
    pub(super) fn new(c: &EdgeContainer, kind: SlotKind) -> Self {
        Self {
            name: c.name.clone(),
            kind,
            image: c.image.clone(),
            image_id: String::new(),
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
            previous_instance: None,
            garbage: Vec::new(),
        }
    }

    /// The restart policy of this container, from the pod's: an init container that exits 0
    /// is done, and one that fails restarts unless the pod's policy is `Never` (kubelet's
    /// `OnFailure` for init containers); a sidecar restarts whenever it exits.
    pub(super) fn policy(&self, pod: RestartPolicy) -> RestartPolicy {
        match self.kind {
            SlotKind::App => pod,
            SlotKind::Init if pod == RestartPolicy::Never => RestartPolicy::Never,
            SlotKind::Init => RestartPolicy::OnFailure,
            SlotKind::Sidecar => RestartPolicy::Always,
        }
    }

    /// Whether an init container finished its work: exited 0 for good.
    pub(super) fn succeeded(&self) -> bool {
        self.final_exit_code() == Some(0)
    }

    /// Whether it counts as ready: running, its postStart hook returned, and passing readiness
    /// (if probed).
    pub fn ready(&self) -> bool {
        matches!(self.phase, ContainerPhase::Running { readiness, post_start: false, .. } if readiness.unwrap_or(true))
    }

    /// Whether the running instance's postStart hook has not returned yet.
    pub fn post_start_pending(&self) -> bool {
        matches!(
            self.phase,
            ContainerPhase::Running {
                post_start: true,
                ..
            }
        )
    }

    /// The kill pending for a failed probe of the running instance, if any.
    #[cfg(test)]
    pub fn probe_kill(&self) -> Option<&ProbeKill> {
        match &self.phase {
            ContainerPhase::Running { probe_kill, .. } => probe_kill.as_ref(),
            _ => None,
        }
    }

    /// The running instance's id.
    pub(super) fn running_id(&self) -> Option<&str> {
        match &self.phase {
            ContainerPhase::Running { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Exit code if exited for good.
    pub(super) fn final_exit_code(&self) -> Option<i32> {
        match &self.phase {
            ContainerPhase::Exited {
                terminated: ContainerState::Terminated { exit_code, .. },
                ..
            } => Some(*exit_code),
            ContainerPhase::Exited { .. } => Some(UNKNOWN_EXIT_CODE),
            _ => None,
        }
    }
}

/// The `Terminated` state of an instance whose end was not observed.
pub(super) fn unknown_termination(message: String) -> ContainerState {
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
pub(super) fn terminated_state(state: &ContainerRunState, now: Now) -> Option<ContainerState> {
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
        ContainerRunState::Unknown {
            message,
            started_at_ms,
        } => Some(ContainerState::Terminated {
            exit_code: UNKNOWN_EXIT_CODE,
            signal: None,
            reason: "ContainerStatusUnknown".into(),
            message: message.clone(),
            // 0 when not known: reported as no start time.
            started_at_ms: started_at_ms.unwrap_or(0),
            finished_at_ms: now.wall_ms,
        }),
        ContainerRunState::Created | ContainerRunState::Running { .. } => None,
    }
}

/// A container instance exited on its own (its exit code recorded, or its end not observed while
/// edgecore watched it): an exit that counts towards `CrashLoopBackOff`. Restarted after
/// [`BackoffPolicy::restart_delay`] of the new count (at once for a first exit, as kubelet), or
/// it stays exited, per the policy.
pub(super) fn on_exit(
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
    // It ran, even if it ended before its postStart hook returned.
    slot.ever_started = true;
    if !policy.restarts_after(*exit_code) {
        slot.phase = ContainerPhase::Exited {
            id,
            attempt,
            terminated,
        };
        return;
    }
    let ran = Duration::from_millis(finished_at_ms.saturating_sub(*started_at_ms));
    slot.crashes = backoff.crashes_after_exit(slot.crashes, ran);
    let delay = backoff.restart_delay(slot.crashes);
    // Time since the exit counts (it may have happened while edgecore was down), as kubelet
    // measures its back-off from the exit's `finishedAt`.
    let since_exit = Duration::from_millis(now.wall_ms.saturating_sub(*finished_at_ms));
    metrics::counter!("skerry_container_exits_total", "counted" => "true", "cause" => "exit")
        .increment(1);
    if delay.is_zero() {
        // A first exit: restarted at once, no `CrashLoopBackOff` to report.
        restart_now(slot, id, terminated);
        return;
    }
    metrics::counter!("skerry_container_backoffs_total").increment(1);
    let until = deadline_after(now.mono, delay.saturating_sub(since_exit));
    slot.last_state = Some(terminated);
    slot.phase = ContainerPhase::BackOff {
        id,
        attempt,
        until,
        delay,
    };
}

/// Why an instance ended without it being a crash of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotACrash {
    /// Stopped because its sandbox is not ready any more.
    SandboxLost,
    /// Found at edgecore's start with no exit recorded: the runtime lost it (the host rebooted,
    /// or its shim was killed with it). Its end says nothing about the workload.
    LostWhileDown,
}

impl NotACrash {
    fn label(self) -> &'static str {
        match self {
            NotACrash::SandboxLost => "sandbox_lost",
            NotACrash::LostWhileDown => "lost_while_down",
        }
    }
}

/// A container instance ended through no fault of its own (see [`NotACrash`]), so there is no
/// back-off and its crash count stays as it was: it starts again (as its next attempt, its
/// ended instance as its last state, removed once its successor runs) unless the policy keeps an
/// instance that ended so ended (`Never`; `OnFailure` after a clean exit on SIGTERM).
pub(super) fn on_not_a_crash(
    slot: &mut ContainerSlot,
    policy: protocol::pod::RestartPolicy,
    id: String,
    attempt: u32,
    terminated: ContainerState,
    why: NotACrash,
) {
    let exit_code = match &terminated {
        ContainerState::Terminated { exit_code, .. } => *exit_code,
        _ => UNKNOWN_EXIT_CODE,
    };
    if policy.restarts_after(exit_code) {
        metrics::counter!("skerry_container_exits_total", "counted" => "false", "cause" => why.label())
            .increment(1);
        restart_now(slot, id, terminated);
    } else {
        slot.phase = ContainerPhase::Exited {
            id,
            attempt,
            terminated,
        };
    }
}

/// The slot waits for its next attempt, to be started at once; the ended instance is its last
/// state and is removed once its successor runs.
fn restart_now(slot: &mut ContainerSlot, id: String, terminated: ContainerState) {
    slot.last_state = Some(terminated);
    slot.previous_instance = Some(id);
    slot.phase = ContainerPhase::Waiting {
        reason: "ContainerCreating".into(),
        message: String::new(),
        retry_at: None,
    };
}

/// `terminated` with `started_at_ms` as its start if the runtime did not know it (a lost
/// instance): the machine knew when the instance it watched started.
pub(super) fn with_known_start(
    mut terminated: ContainerState,
    started_at_ms: u64,
) -> ContainerState {
    if let ContainerState::Terminated {
        started_at_ms: start @ 0,
        ..
    } = &mut terminated
    {
        *start = started_at_ms;
    }
    terminated
}
