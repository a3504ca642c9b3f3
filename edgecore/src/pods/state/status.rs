//! What a pod reports: its phase, its conditions and each container's status, derived from
//! the machine's state (every state knows the status it reports).

use super::{
    unknown_termination, AfterStop, ContainerPhase, ContainerSlot, Now, Outcome, SlotKind,
};
use super::{PodMachine, PodState};
use crate::pods::backoff::go_duration;
use protocol::status::{ContainerState, ContainerStatus, PodCondition, PodPhase, PodStatus};

impl ContainerSlot {
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
            // Not running yet for Kubernetes while its postStart hook runs (kubelet reports
            // the container once the hook returned).
            ContainerPhase::Running {
                id,
                post_start: true,
                ..
            } => (
                id.clone(),
                ContainerState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
            ),
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
            image_id: self.image_id.clone(),
            container_id,
            ready: self.ready(),
            restart_count: self.restart_count,
            state,
            last_state,
        }
    }
}

impl PodMachine {
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
    pub(super) fn refresh_conditions(&mut self, now: Now) {
        let since = self.start_time_ms.unwrap_or(now.wall_ms);
        let running_state = matches!(self.state, PodState::Running);
        // Readiness is the app containers' and the sidecars' (an init container that ran to
        // completion is neither ready nor in the way), as kubelet computes it.
        let unready: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| s.kind != SlotKind::Init && !s.ready())
            .map(|s| s.name.as_str())
            .collect();
        let incomplete: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| match s.kind {
                SlotKind::Init => !s.succeeded(),
                SlotKind::Sidecar => !s.ever_started,
                SlotKind::App => false,
            })
            .map(|s| s.name.as_str())
            .collect();
        let initialized = self.initialized;
        let (init_reason, init_message) = if initialized {
            (String::new(), String::new())
        } else {
            (
                "ContainersNotInitialized".to_string(),
                format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                ),
            )
        };
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
            ("Initialized", initialized, init_reason, init_message),
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
        let (init_containers, containers): (Vec<_>, Vec<_>) = self
            .slots
            .iter()
            .partition(|slot| slot.kind != SlotKind::App);
        let status_of = |slots: Vec<&ContainerSlot>| {
            slots
                .into_iter()
                .map(|slot| slot.status(pod_gone, &pod_label))
                .collect()
        };
        let (init_containers, containers) = (status_of(init_containers), status_of(containers));
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
            init_containers,
        })
    }
}

/// Phase from the containers: `Failed` once an init container failed for good; else, from
/// the app containers, `Pending` until each ran once, `Running` while any runs or will run
/// again, then `Succeeded` if all exited 0, else `Failed` (sidecars, stopped at the end, do not
/// count, as in Kubernetes).
pub(crate) fn containers_phase(slots: &[ContainerSlot]) -> PodPhase {
    if slots.iter().any(|s| {
        s.kind == SlotKind::Init
            && matches!(s.phase, ContainerPhase::Exited { .. })
            && !s.succeeded()
    }) {
        return PodPhase::Failed;
    }
    let apps = || slots.iter().filter(|s| s.kind == SlotKind::App);
    if apps().any(|s| !s.ever_started) {
        return PodPhase::Pending;
    }
    let mut all_zero = true;
    for slot in apps() {
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
