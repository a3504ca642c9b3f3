//! Init containers (`spec.initContainers`), as kubelet runs them: in order, each to completion
//! (exit 0) before the next starts; the app containers start once all of them are done. A
//! failing one is restarted with the app containers' back-off unless the pod's policy is
//! `Never`, in which case the pod fails ([`super::ContainerSlot::policy`]).
//!
//! A sidecar (an init container with `restartPolicy: Always`, Kubernetes 1.29+) is done, for
//! the next init container, once it is started and has passed its startup probe if it has one;
//! it then runs beside the app containers and restarts whenever it exits. Once every app
//! container has exited for good (or an init container failed for good), the sidecars are
//! stopped and the pod completes; at termination they are stopped after the app containers.
//!
//! After a sandbox loss the init containers run again in the new sandbox before the app
//! containers start again, as kubelet does when a pod's sandbox changes.
//!
//! Slots are numbered as [`protocol::pod::EdgePod::all_containers`]: init containers first.

use super::{ContainerPhase, ContainerSlot, PodMachine, SlotKind};
use protocol::pod::RestartPolicy;

impl PodMachine {
    /// Whether init slot `index` lets the containers after it start: an init container that
    /// succeeded, a sidecar that runs and passed its startup probe (with a readiness probe as
    /// well, its readiness: the machine keeps one verdict for both).
    fn init_slot_done(&self, index: usize) -> bool {
        let slot = &self.slots[index];
        match slot.kind {
            SlotKind::Init => slot.succeeded(),
            SlotKind::Sidecar => {
                let probed = self
                    .pod
                    .container_at(index)
                    .is_some_and(|c| c.startup_probe.is_some());
                slot.running_id().is_some()
                    && !slot.post_start_pending()
                    && (!probed || slot.ready())
            }
            SlotKind::App => true,
        }
    }

    /// Whether slot `index` may be started now: the app containers once the pod is
    /// initialized, an init container once every one before it is done.
    pub(super) fn may_start(&self, index: usize) -> bool {
        match self.slots[index].kind {
            SlotKind::App => self.initialized,
            SlotKind::Init | SlotKind::Sidecar => (0..index).all(|j| self.init_slot_done(j)),
        }
    }

    /// Marks the pod initialized once every init container is done (kept until a sandbox loss
    /// makes them run again: a sidecar that restarts later does not hold the app containers).
    pub(super) fn check_initialized(&mut self) {
        if !self.initialized {
            self.initialized = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind != SlotKind::App)
                .all(|(j, _)| self.init_slot_done(j));
        }
    }

    /// Whether an init container failed for good (`restartPolicy: Never`): the pod fails.
    pub(super) fn init_failed(&self) -> bool {
        self.slots.iter().any(|s| {
            s.kind == SlotKind::Init
                && matches!(s.phase, ContainerPhase::Exited { .. })
                && !s.succeeded()
        })
    }

    /// Whether the pod's work is over: an init container failed for good, or every app
    /// container exited for good. Sidecars are then stopped and not restarted.
    pub(super) fn finishing(&self) -> bool {
        self.init_failed() || {
            let mut apps = self
                .slots
                .iter()
                .filter(|s| s.kind == SlotKind::App)
                .peekable();
            apps.peek().is_some() && apps.all(|s| matches!(s.phase, ContainerPhase::Exited { .. }))
        }
    }

    /// The restart policy of slot `index` now: its own ([`ContainerSlot::policy`]), but a
    /// sidecar of a finishing pod is not restarted.
    pub(super) fn slot_policy(&self, index: usize) -> RestartPolicy {
        let slot = &self.slots[index];
        if slot.kind == SlotKind::Sidecar && self.finishing() {
            return RestartPolicy::Never;
        }
        slot.policy(self.pod.restart_policy)
    }

    /// The policies of every slot, for loops that change slots.
    pub(super) fn slot_policies(&self) -> Vec<RestartPolicy> {
        (0..self.slots.len()).map(|i| self.slot_policy(i)).collect()
    }

    /// (slot index, instance id) of the running sidecars of a finishing pod: stopped now.
    pub(super) fn sidecars_to_stop(&self) -> Vec<(usize, String)> {
        if !self.finishing() {
            return Vec::new();
        }
        self.running_targets()
            .into_iter()
            .filter(|(i, _)| self.slots[*i].kind == SlotKind::Sidecar)
            .collect()
    }

    /// Before a new sandbox: the init containers that succeeded run again (their run is
    /// their last state), and the app containers wait for them.
    pub(super) fn rerun_init(&mut self) {
        if self.slots.iter().all(|s| s.kind == SlotKind::App) {
            return;
        }
        self.initialized = false;
        for slot in &mut self.slots {
            if slot.kind != SlotKind::Init {
                continue;
            }
            if let ContainerPhase::Exited { id, terminated, .. } = &slot.phase {
                slot.last_state = Some(terminated.clone());
                slot.previous_instance = Some(id.clone());
                slot.phase = ContainerPhase::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                    retry_at: None,
                };
            }
        }
    }
}

/// The slots of a pod: its init containers (sidecars or not), then its app containers, which
/// wait in `PodInitializing` while there are init containers to run.
pub(super) fn slots_of(pod: &protocol::pod::EdgePod) -> Vec<ContainerSlot> {
    let init = pod.init_containers.iter().map(|i| {
        let kind = if i.sidecar {
            SlotKind::Sidecar
        } else {
            SlotKind::Init
        };
        ContainerSlot::new(&i.container, kind)
    });
    let apps = pod.containers.iter().map(|c| {
        let mut slot = ContainerSlot::new(c, SlotKind::App);
        if !pod.init_containers.is_empty() {
            if let ContainerPhase::Waiting { reason, .. } = &mut slot.phase {
                *reason = "PodInitializing".into();
            }
        }
        slot
    });
    init.chain(apps).collect()
}
