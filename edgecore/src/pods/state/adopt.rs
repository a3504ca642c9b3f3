//! Adoption: after an edgecore restart the runtime may already run a pod's sandbox and
//! containers. The machine takes them over rather than starting again, so that a restart of the
//! agent does not restart the workloads.
//!
//! # What counts towards `CrashLoopBackOff` after a restart or a reboot
//!
//! An edge that lost power comes back with every container dead and, often, no cloud to ask. Its
//! pods must run again at once: the node's reboot is no fault of theirs. So, as kubelet (whose
//! back-off entries live in its memory only, see `crate::pods::backoff`):
//!
//! - The back-off history starts over at every edgecore start: no adopted container is in
//!   `CrashLoopBackOff`, whatever its count was before.
//! - An instance found with no exit recorded (`ContainerRunState::Unknown`: its shim died with
//!   it, the host rebooted, the sandbox is gone) was lost, it did not crash: it is restarted at
//!   once and does not count ([`NotACrash::LostWhileDown`]).
//! - An instance found with an exit code recorded (its shim, or containerd, saw it exit while
//!   edgecore was down) exited on its own and counts: as the history starts over it is a first
//!   exit, restarted at once too; if the new instance exits again, that second exit waits the
//!   10 s of kubelet's schedule, and so on.
//! - With containerd, a sandbox that is not ready after a reboot is removed by
//!   `Runtime::list_pods` (see `runtime::cri`), so nothing of it is adopted: the pod starts
//!   afresh in a new sandbox, at once, with nothing counted. A sandbox that dies while edgecore
//!   runs is replaced without back-off too (`PodState::SandboxLost`).
//! - `restartCount` is the attempt number of the newest instance, which the runtime recorded:
//!   with the process runtime it survives edgecore restarts and reboots, and every restart adds
//!   one, counted or not (as kubelet's). `lastState.terminated` is the instance that ended, with
//!   the start time the runtime recorded for it. With containerd a pod whose sandbox was removed
//!   at start-up starts again from attempt 0, without a `lastState`.

use super::PodMachine;
use super::{on_exit, on_not_a_crash, terminated_state, unknown_termination, NotACrash};
use super::{ContainerPhase, ContainerSlot, Now};
use super::{PodState, SpecRestart};
use crate::pods::env::{expand_command, resolve_env, PodFields};
use crate::pods::probes;
use crate::runtime::process::container_digest;
use crate::runtime::{ContainerInfo, ContainerRunState, ExistingPod};
use std::collections::HashMap;

impl PodMachine {
    /// Takes over what the runtime runs for this pod.
    pub(super) fn adopt(&mut self, existing: ExistingPod, now: Now) {
        let policies = self.slot_policies();
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
        for (index, ((slot, desired), spec)) in self
            .slots
            .iter_mut()
            .zip(desired)
            .zip(self.pod.all_containers())
            .enumerate()
        {
            let policy = policies[index];
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
            slot.image_id = newest.image_id.clone().unwrap_or_default();
            // The back-off history starts over at each edgecore start (see the module docs).
            slot.crashes = 0;
            // An instance started from another spec (changed while edgecore was down) is
            // restarted with the desired one, as after an update; an unknown digest (an
            // instance from before digests were recorded) is taken to match.
            let stale_spec = matches!((&newest.spec_digest, &desired),
                (Some(running), Some(desired)) if running != desired);
            match &newest.state {
                ContainerRunState::Running { started_at_ms } => {
                    earliest = Some(earliest.map_or(*started_at_ms, |e| e.min(*started_at_ms)));
                    slot.phase =
                        ContainerPhase::running(newest.id.clone(), newest.attempt, *started_at_ms);
                    probes::reset_for_new_instance(slot, Some(spec));
                    restart_if_stale(slot, stale_spec);
                }
                ContainerRunState::Created => {
                    slot.phase =
                        ContainerPhase::running(newest.id.clone(), newest.attempt, now.wall_ms);
                    probes::reset_for_new_instance(slot, Some(spec));
                    restart_if_stale(slot, stale_spec);
                }
                ended => {
                    let started = match ended {
                        ContainerRunState::Exited { started_at_ms, .. } => Some(*started_at_ms),
                        ContainerRunState::Unknown { started_at_ms, .. } => *started_at_ms,
                        _ => None,
                    };
                    if let Some(started) = started.filter(|s| *s > 0) {
                        earliest = Some(earliest.map_or(started, |e| e.min(started)));
                    }
                    let terminated = terminated_state(ended, now)
                        .unwrap_or_else(|| unknown_termination(String::new()));
                    let (id, attempt) = (newest.id.clone(), newest.attempt);
                    if matches!(ended, ContainerRunState::Unknown { .. }) {
                        let lost = NotACrash::LostWhileDown;
                        on_not_a_crash(slot, policy, id, attempt, terminated, lost);
                    } else {
                        on_exit(slot, policy, backoff, id, attempt, terminated, now);
                    }
                }
            }
        }
        if let Some(first) = self.slots.first_mut() {
            first.garbage.extend(strays);
        }
        // An app container that ran in this sandbox means its init containers were done.
        if self
            .slots
            .iter()
            .any(|s| s.kind == super::SlotKind::App && s.ever_started)
        {
            self.initialized = true;
        }
        self.start_time_ms = Some(earliest.unwrap_or(now.wall_ms));
        self.settle();
    }

    /// Digest of the container the worker would hand the runtime for slot `index` now (its
    /// `$(VAR)` expanded), to compare with [`ContainerInfo::spec_digest`]; `None` if its
    /// environment cannot be resolved now.
    fn desired_digest(&self, index: usize) -> Option<String> {
        let spec = self.pod.container_at(index)?;
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
}

/// Marks an adopted running instance started from another spec for a restart with the desired
/// one (an instance that exited starts with the desired spec anyway).
fn restart_if_stale(slot: &mut ContainerSlot, stale_spec: bool) {
    if let ContainerPhase::Running { spec_restart, .. } = &mut slot.phase {
        if stale_spec {
            *spec_restart = Some(SpecRestart::default());
        }
    }
}
