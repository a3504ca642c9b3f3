//! How a new version of a pod (same uid) is taken in: what changed ([`spec_change`]) and what
//! the machine does about it. Kept apart so that the one rule "restart only what changed, replace
//! the pod when its shape changed" reads in one place. The manager keys workers by uid, so an
//! update for another uid is another pod's and is ignored (see `events`).

use super::{AfterStop, ContainerPhase, Now, Outcome, PodMachine, PodState, SpecRestart};
use protocol::pod::EdgePod;
use std::time::Duration;

/// How a new version of a pod (same uid) differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpecChange {
    /// Nothing the runtime sees (labels, grace periods).
    Same,
    /// Only the fields of these app containers (slot indices) changed: restart just them, as
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
        // Init containers ran before the app containers: a change to them replaces the pod.
        && old.init_containers == new.init_containers
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
            .map(|(i, _)| i + old.init_containers.len())
            .collect(),
    )
}

impl PodMachine {
    /// `Update` in a live state (not `Terminating` or `Terminated`): a deletion stops the pod;
    /// a new spec restarts what changed, or replaces the pod when its shape changed.
    pub(super) fn update(&mut self, pod: EdgePod) {
        if pod.is_deleting() {
            // Only the deletion mark and labels matter now: the containers are not restarted.
            let grace = Duration::from_secs(pod.deletion_grace_period_seconds.unwrap_or(0));
            self.pod.deletion_grace_period_seconds = pod.deletion_grace_period_seconds;
            self.pod.labels = pod.labels;
            self.terminate(grace, AfterStop::Report);
            return;
        }
        match spec_change(&self.pod, &pod) {
            SpecChange::Same => {
                // Labels (or the grace period): nothing to restart.
                self.pod = pod;
            }
            SpecChange::Containers(changed) => {
                // The sandbox and every other container stay; a changed container that runs is
                // stopped and started again with the new spec (`decide_running`). One that does
                // not run starts with the new spec when it next starts; one that exited for
                // good stays so.
                for index in changed {
                    if let Some(ContainerPhase::Running {
                        spec_restart: restart @ None,
                        ..
                    }) = self.slots.get_mut(index).map(|s| &mut s.phase)
                    {
                        *restart = Some(SpecRestart::default());
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

    /// `Terminated` + `Update`: a forgotten pod that is wanted again (and not being deleted)
    /// starts over; otherwise nothing changes.
    pub(super) fn update_terminated(&mut self, pod: EdgePod, now: Now) {
        if let PodState::Terminated { outcome, .. } = &self.state {
            if *outcome == Outcome::Forgotten && !pod.is_deleting() {
                *self = Self::fresh(self.settings.clone(), pod, now);
            }
        }
    }

    /// `Terminating` + `Update`: a deletion takes over (its grace only ever shortens the
    /// stop); a new spec is started once everything stopped.
    pub(super) fn update_terminating(&mut self, pod: EdgePod) {
        let PodState::Terminating { then, grace, .. } = &mut self.state else {
            return;
        };
        if pod.is_deleting() {
            // A forced deletion (`--grace-period=0 --force`) arriving during a graceful one cuts
            // the stop short (the worker restarts a stop in progress with the shorter grace).
            *then = AfterStop::Report;
            let g = Duration::from_secs(pod.deletion_grace_period_seconds.unwrap_or(0));
            *grace = (*grace).min(g);
            self.pod.deletion_grace_period_seconds = pod.deletion_grace_period_seconds;
            self.pod.labels = pod.labels;
        } else if *then != AfterStop::Report {
            // Start over with the newest spec once stopped (also when it was being forgotten
            // and is wanted again).
            *then = AfterStop::Replace(Box::new(pod));
        }
    }
}
