//! What the worker is to do next ([`Action`]), given the machine's state: the second half of a
//! step, after the event was applied.

use super::{Action, ContainerPhase, Event, Now, PodMachine, PodState};
use crate::pods::env::{expand_command, resolve_env, PodFields};
use crate::runtime::{deadline_after, ContainerConfig};
use std::time::Duration;
use tokio::time::Instant;

impl PodMachine {
    /// The next action, given the state.
    pub(super) fn decide(&mut self, now: Now) -> Action {
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
                    // The init containers run again in the new sandbox (see `init`).
                    self.rerun_init();
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
                // The app containers first, then the sidecars (they serve the app containers
                // to the end, as kubelet stops them).
                let targets = self.running_targets();
                let (sidecars, others): (Vec<_>, Vec<_>) = targets
                    .into_iter()
                    .partition(|(i, _)| self.slots[*i].kind == super::SlotKind::Sidecar);
                let targets = if others.is_empty() { sidecars } else { others };
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
                let ContainerPhase::Running {
                    id,
                    spec_restart: Some(restart),
                    ..
                } = &slot.phase
                else {
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
                let ContainerPhase::Running {
                    id,
                    spec_restart: None,
                    probe_kill: Some(kill),
                    ..
                } = &slot.phase
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
            // The sidecars of a pod whose work is over (see `init`).
            let sidecars = self.sidecars_to_stop();
            if !sidecars.is_empty() {
                match self.sidecar_stop.retry_at {
                    Some(at) if at > now.mono => earliest(at),
                    _ => {
                        return Action::StopContainers {
                            targets: sidecars,
                            grace: Duration::from_secs(self.pod.termination_grace_period_seconds),
                        }
                    }
                }
            }
            // A container that started runs its postStart hook before anything else starts
            // (kubelet starts containers one by one, each after its hook returned).
            if let Some(hook) = self.post_start_due() {
                return hook;
            }
            self.check_initialized();
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
                if !due || !self.may_start(index) {
                    continue;
                }
                let Some(spec) = self.pod.container_at(index) else {
                    continue;
                };
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
    pub(super) fn running_targets(&self) -> Vec<(usize, String)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.running_id().map(|id| (i, id.to_string())))
            .collect()
    }
}
