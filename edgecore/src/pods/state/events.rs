//! The transition function: the legal (state, event) pairs in one table ([`PodMachine::apply`]),
//! each carried out by a method below that no longer has to ask which state the pod is in.
//!
//! An event that means nothing in the current state (the late result of an action the machine
//! has moved past, a verdict on an instance that is gone, an update for another uid) falls to the
//! table's last arm: it is ignored, counted in `skerry_pod_events_ignored_total` (labelled with
//! the state and the event) and logged at debug level, so that a stream of them is visible
//! without reading the machine.

use super::{
    on_exit, on_not_a_crash, terminated_state, with_known_start, AfterStop, ContainerPhase,
    ContainerSlot, Event, Failure, NotACrash, Now, Outcome, PodMachine, PodState, SpecRestart,
    MAX_OBSERVE_ERRORS,
};
use crate::pods::probes::{self, ProbeVerdict};
use crate::runtime::{deadline_after, ContainerInfo, ContainerRunState, Sandbox};
use protocol::status::ContainerState;
use std::time::Duration;

/// Results of reading or stopping instances: (slot index, instance id, state).
type RunStates = Vec<(usize, String, Result<ContainerRunState, Failure>)>;

impl Event {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Tick => "Tick",
            Event::SandboxCreated(_) => "SandboxCreated",
            Event::SandboxNotReady { .. } => "SandboxNotReady",
            Event::Started { .. } => "Started",
            Event::Observed(_) => "Observed",
            Event::ContainersRemoved(_) => "ContainersRemoved",
            Event::PostStartDone { .. } => "PostStartDone",
            Event::Stopped(_) => "Stopped",
            Event::SandboxRemoved(_) => "SandboxRemoved",
            Event::Update(_) => "Update",
            Event::Forget => "Forget",
            Event::Probe(_) => "Probe",
            Event::ConfigChanged => "ConfigChanged",
        }
    }
}

impl PodMachine {
    /// Applies `event`: every legal (state, event) pair is one arm of this match; anything else
    /// is ignored and counted.
    pub(super) fn apply(&mut self, event: Event, now: Now) {
        use PodState as S;
        match (&self.state, event) {
            (_, Event::Tick) => {}

            // The sandbox.
            (S::Creating { failures, .. }, Event::SandboxCreated(result)) => {
                self.sandbox_created(*failures, result, now)
            }
            (S::Running, Event::SandboxNotReady { sandbox_id })
                if self.is_current_sandbox(&sandbox_id) =>
            {
                self.sandbox_lost()
            }
            (S::Terminating { .. }, Event::SandboxRemoved(result)) => {
                self.sandbox_removed(result, now)
            }

            // Containers: results of starts, polls and removals, in whatever state they arrive.
            (
                _,
                Event::Started {
                    index,
                    attempt,
                    result,
                },
            ) if index < self.slots.len() => self.started(index, attempt, result, now),
            (_, Event::Observed(results)) => self.observed(results, now),
            (_, Event::ContainersRemoved(ids)) => {
                for slot in &mut self.slots {
                    slot.garbage.retain(|g| !ids.contains(g));
                }
            }
            (_, Event::PostStartDone { index, id, result })
                if self.post_start_current(index, &id) =>
            {
                self.post_start_done(index, result)
            }

            // Stops: what a stop leads to depends on why the machine stopped.
            (S::Running, Event::Stopped(results)) => self.stopped_for_restart(results, now),
            (S::SandboxLost { .. }, Event::Stopped(results)) => {
                self.stopped_for_new_sandbox(results, now)
            }
            (_, Event::Stopped(results)) => self.stopped_for_good(results, now),

            // Commands from the manager.
            (S::Terminated { .. }, Event::Update(pod)) if pod.uid == self.pod.uid => {
                self.update_terminated(pod, now)
            }
            (S::Terminating { .. }, Event::Update(pod)) if pod.uid == self.pod.uid => {
                self.update_terminating(pod)
            }
            (_, Event::Update(pod)) if pod.uid == self.pod.uid => self.update(pod),
            (S::Terminating { .. }, Event::Forget) => {
                if let S::Terminating { then, .. } = &mut self.state {
                    *then = AfterStop::Forget;
                }
            }
            (S::Terminated { .. }, Event::Forget) => {
                if let S::Terminated { outcome, .. } = &mut self.state {
                    *outcome = Outcome::Forgotten;
                }
            }
            (_, Event::Forget) => {
                let grace = Duration::from_secs(self.pod.termination_grace_period_seconds);
                self.terminate(grace, AfterStop::Forget);
            }
            (_, Event::ConfigChanged) => self.config_changed(),

            // Probes: only a running pod kills for a failed probe; otherwise it is being
            // stopped anyway.
            (S::Running, Event::Probe(verdict)) if self.probes_current(&verdict) => {
                self.probe_verdict(&verdict, true)
            }
            (_, Event::Probe(verdict)) if self.probes_current(&verdict) => {
                self.probe_verdict(&verdict, false)
            }

            (state, event) => {
                ignored(state, &event);
                return;
            }
        }
        self.settle();
    }

    /// Whether `sandbox_id` is the pod's sandbox (an event about an earlier one is stale).
    fn is_current_sandbox(&self, sandbox_id: &str) -> bool {
        self.sandbox.as_ref().map(|s| s.id.as_str()) == Some(sandbox_id)
    }

    /// Whether `verdict` is about the instance its slot runs now (not one that is gone).
    fn probes_current(&self, verdict: &ProbeVerdict) -> bool {
        self.slots.get(verdict.index).and_then(|s| s.running_id())
            == Some(verdict.instance.as_str())
    }

    /// `Creating` + `SandboxCreated`: run, or retry after a back-off.
    fn sandbox_created(&mut self, failures: u32, result: Result<Sandbox, Failure>, now: Now) {
        match result {
            Ok(sandbox) => {
                self.sandbox = Some(sandbox);
                self.start_time_ms.get_or_insert(now.wall_ms);
                self.state = PodState::Running;
            }
            Err(failure) => {
                let failures = failures.saturating_add(1);
                self.state = PodState::Creating {
                    retry_at: Some(deadline_after(
                        now.mono,
                        self.settings.backoff.delay(failures),
                    )),
                    failures,
                    error: Some(failure),
                };
            }
        }
    }

    /// `Running` + `SandboxNotReady` (about the current sandbox): stop what runs, then replace
    /// the sandbox.
    fn sandbox_lost(&mut self) {
        for slot in &mut self.slots {
            // The stop that comes supersedes a restart for a changed spec (the next start uses
            // the new spec anyway) and a kill for a failed probe.
            if let ContainerPhase::Running {
                spec_restart,
                probe_kill,
                ..
            } = &mut slot.phase
            {
                *spec_restart = None;
                *probe_kill = None;
            }
        }
        // The dead sandbox is kept, to stop what still runs in it and to remove it with the
        // pod, but its IP went with its network: it is the pod's no more (and may soon be
        // another pod's), so none is reported until a new sandbox has one.
        if let Some(sandbox) = &mut self.sandbox {
            sandbox.ip.clear();
        }
        self.state = PodState::SandboxLost {
            retry_at: None,
            failures: 0,
        };
    }

    /// `Terminating` + `SandboxRemoved`: done (report, forget or start over), or retry.
    fn sandbox_removed(&mut self, result: Result<(), Failure>, now: Now) {
        let PodState::Terminating {
            then,
            phase,
            failures,
            retry_at,
            ..
        } = &mut self.state
        else {
            return;
        };
        if result.is_err() {
            *failures = failures.saturating_add(1);
            *retry_at = Some(deadline_after(
                now.mono,
                self.settings.backoff.delay(*failures),
            ));
            return;
        }
        let (then, phase) = (then.clone(), *phase);
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

    /// `Started` for a slot: it runs (or already exited), or its start failed.
    fn started(
        &mut self,
        index: usize,
        attempt: u32,
        result: Result<ContainerInfo, Failure>,
        now: Now,
    ) {
        let policy = self.slot_policy(index);
        let backoff = self.settings.backoff;
        let spec = self.pod.container_at(index);
        let slot = &mut self.slots[index];
        let post_start = spec.is_some_and(|c| c.lifecycle.post_start.is_some());
        match result {
            Ok(info) => {
                slot.start_failures = 0;
                slot.observe_errors = 0;
                // With a postStart hook, once it returned (see `hooks`).
                slot.ever_started |= !post_start;
                slot.restart_count = info.attempt;
                slot.next_attempt = info.attempt.saturating_add(1);
                slot.image_id = info.image_id.clone().unwrap_or_default();
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
                slot.phase = ContainerPhase::running(info.id.clone(), info.attempt, started_at_ms);
                if let ContainerPhase::Running { post_start: p, .. } = &mut slot.phase {
                    *p = post_start;
                }
                probes::reset_for_new_instance(slot, spec);
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
                // As kubelet: the first failed pull shows `ErrImagePull`; once pulls keep
                // failing, the container waits in `ImagePullBackOff`.
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
                    retry_at: Some(deadline_after(now.mono, backoff.delay(slot.start_failures))),
                };
            }
        }
    }

    /// `Observed`: exits become back-offs or final exits; repeated read failures, a lost
    /// instance.
    fn observed(&mut self, results: RunStates, now: Now) {
        let policies = self.slot_policies();
        let backoff = self.settings.backoff;
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
                        started_at_ms: None,
                    }
                }
            };
            match terminated_state(&state, now) {
                Some(terminated) => {
                    let ContainerPhase::Running {
                        attempt,
                        started_at_ms,
                        ..
                    } = slot.phase
                    else {
                        continue;
                    };
                    // A lost instance's start is the one the machine saw.
                    let terminated = with_known_start(terminated, started_at_ms);
                    on_exit(slot, policies[index], backoff, id, attempt, terminated, now);
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

    /// `Running` + `Stopped`: the instances were stopped to be restarted, for a failed probe
    /// (an exit like any other, with back-off) or a changed spec (no back-off, new spec).
    fn stopped_for_restart(&mut self, results: RunStates, now: Now) {
        let policies = self.slot_policies();
        let finishing = self.finishing();
        let backoff = self.settings.backoff;
        for (index, id, result) in results {
            // A sidecar of a pod whose work is over, stopped for good (see `init`).
            let sidecar = self
                .slots
                .get(index)
                .is_some_and(|s| s.kind == super::SlotKind::Sidecar);
            if finishing && sidecar {
                if let Some((slot, attempt)) = running_instance(&mut self.slots, index, &id) {
                    match result.map(|state| terminated_state(&state, now)) {
                        Ok(Some(terminated)) => {
                            self.sidecar_stop = SpecRestart::default();
                            slot.phase = ContainerPhase::Exited {
                                id,
                                attempt,
                                terminated,
                            };
                        }
                        Ok(None) | Err(_) => {
                            let stop = &mut self.sidecar_stop;
                            stop.failures = stop.failures.saturating_add(1);
                            stop.retry_at =
                                Some(deadline_after(now.mono, backoff.delay(stop.failures)));
                        }
                    }
                }
                continue;
            }
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            let policy = policies[index];
            let ContainerPhase::Running {
                id: running,
                attempt,
                probe_kill,
                spec_restart,
                ..
            } = &mut slot.phase
            else {
                continue;
            };
            if *running != id {
                continue;
            }
            let attempt = *attempt;
            let stopped = result.map(|state| terminated_state(&state, now));
            // A kill for a failed probe: an exit like any other, restarted (unless the policy
            // is Never) after the usual back-off.
            if let (None, Some(kill)) = (&spec_restart, probe_kill.as_mut()) {
                match stopped {
                    Ok(Some(mut terminated)) => {
                        if let ContainerState::Terminated { message, .. } = &mut terminated {
                            message.clone_from(&kill.message);
                        }
                        *probe_kill = None;
                        let policy = probes::policy_after_kill(policy);
                        on_exit(slot, policy, backoff, id, attempt, terminated, now);
                    }
                    Ok(None) | Err(_) => {
                        kill.failures = kill.failures.saturating_add(1);
                        kill.retry_at =
                            Some(deadline_after(now.mono, backoff.delay(kill.failures)));
                    }
                }
                continue;
            }
            // A restart for a changed spec.
            let Some(restart) = spec_restart.as_mut() else {
                continue;
            };
            match stopped {
                Ok(Some(terminated)) => {
                    // Not a crash: no back-off. The next attempt starts at once with the new
                    // spec and the stopped instance is removed once it runs.
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
        }
    }

    /// `SandboxLost` + `Stopped`: each stopped instance starts again in the new sandbox (unless
    /// its policy keeps it ended); one still running is stopped again, with back-off.
    fn stopped_for_new_sandbox(&mut self, results: RunStates, now: Now) {
        let policies = self.slot_policies();
        let mut failed = false;
        for (index, id, result) in results {
            let Some((slot, attempt)) = running_instance(&mut self.slots, index, &id) else {
                continue;
            };
            match result.map(|state| terminated_state(&state, now)) {
                Ok(Some(terminated)) => on_not_a_crash(
                    slot,
                    policies[index],
                    id,
                    attempt,
                    terminated,
                    NotACrash::SandboxLost,
                ),
                // Still running: stop again (with back-off) before a new sandbox.
                Ok(None) | Err(_) => failed = true,
            }
        }
        self.stop_settled(failed, now);
    }

    /// `Stopped` in any other state (`Terminating`): the stopped instances exited for good.
    fn stopped_for_good(&mut self, results: RunStates, now: Now) {
        let mut failed = false;
        for (index, id, result) in results {
            let Some((slot, attempt)) = running_instance(&mut self.slots, index, &id) else {
                continue;
            };
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
        self.stop_settled(failed, now);
    }

    /// After a stop while `Terminating` or `SandboxLost`: a failed one is retried after a
    /// back-off, a successful one resets the count.
    fn stop_settled(&mut self, failed: bool, now: Now) {
        if let PodState::Terminating {
            retry_at, failures, ..
        }
        | PodState::SandboxLost { retry_at, failures } = &mut self.state
        {
            if failed {
                *failures = failures.saturating_add(1);
                *retry_at = Some(deadline_after(
                    now.mono,
                    self.settings.backoff.delay(*failures),
                ));
            } else {
                *failures = 0;
                *retry_at = None;
            }
        }
    }

    /// `ConfigChanged`: containers waiting for their configuration are retried now rather than
    /// after their back-off.
    fn config_changed(&mut self) {
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

    /// `Probe` about a running instance; `may_kill` when the pod restarts containers.
    fn probe_verdict(&mut self, verdict: &ProbeVerdict, may_kill: bool) {
        let slot = &mut self.slots[verdict.index];
        probes::apply_verdict(slot, &self.pod, verdict, may_kill);
    }
}

/// The last arm of the table: `event` means nothing in `state`.
fn ignored(state: &PodState, event: &Event) {
    let (state, event) = (state.name(), event.name());
    metrics::counter!("skerry_pod_events_ignored_total", "state" => state, "event" => event)
        .increment(1);
    tracing::debug!(state, event, "pod event ignored in this state");
}

/// The slot at `index` if instance `id` is the one it runs, with that instance's attempt: what
/// a stop result applies to (a result for an instance the slot has moved on from is stale).
fn running_instance<'a>(
    slots: &'a mut [ContainerSlot],
    index: usize,
    id: &str,
) -> Option<(&'a mut ContainerSlot, u32)> {
    let slot = slots.get_mut(index)?;
    if slot.running_id() != Some(id) {
        return None;
    }
    match slot.phase {
        ContainerPhase::Running { attempt, .. } => Some((slot, attempt)),
        _ => None,
    }
}
