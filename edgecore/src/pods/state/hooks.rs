//! Lifecycle hooks (`lifecycle.postStart`, `lifecycle.preStop`), as kubelet runs them. The
//! ordering rules live here, pure; the worker only runs what they say (`crate::pods::lifecycle`).
//!
//! **postStart.** A container whose spec has one is started as any other; its instance then
//! waits in `Running { post_start: true }`: reported as `Waiting: ContainerCreating`, not ready,
//! not probed, and the containers after it (init containers and sidecars included) are not
//! started, because the machine's next action is [`Action::PostStart`] for it. Only when the
//! hook returned ([`Event::PostStartDone`]) is the container started for Kubernetes (`Running`,
//! probed; a sidecar lets the next init container start). A failed hook kills the instance with
//! the pod's grace (its preStop hook runs first, as kubelet's `killContainer` runs it) and the
//! restart policy restarts it, with the usual back-off; its `Terminated` state's message is
//! the hook's failure, and the worker records `FailedPostStartHook`. kubelet gives a postStart
//! hook no time limit; neither does the machine (the worker bounds the runtime call, see
//! `crate::pods::lifecycle::POST_START_LIMIT`), and a deletion meanwhile is not held up by it.
//!
//! **preStop.** Whenever the edge stops a running instance whose spec has one (deletion, a
//! failed liveness or startup probe, a failed postStart hook, a changed spec, the sidecars of
//! a finished pod), the hook runs first and the SIGTERM follows when it returned, or when the
//! termination grace ran out; the grace counts from the start of the hook, and a hook that used
//! it all leaves the container [`MIN_TERM_GRACE_AFTER_HOOK`] between SIGTERM and SIGKILL
//! (kubelet's minimum). [`StopSequence`] is that rule, per instance; a failed hook is recorded
//! (`FailedPreStopHook`) and the stop goes on. No hook runs with a zero grace (a forced
//! deletion), nor for the stop of a dead sandbox's containers: there is nothing left to exec
//! into or to reach.

use super::{Action, ContainerPhase, PodMachine, PodState};
use crate::pods::probes::ProbeKill;
use crate::runtime::deadline_after;
use protocol::pod::LifecycleHandler;
use std::time::Duration;
use tokio::time::Instant;

/// What a container gets between SIGTERM and SIGKILL after a preStop hook that used the whole
/// grace (kubelet's `minimumGracePeriodInSeconds`).
pub(crate) const MIN_TERM_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

impl PodMachine {
    /// Whether slot `index` runs instance `id` and it waits for its postStart hook.
    pub(super) fn post_start_current(&self, index: usize, id: &str) -> bool {
        self.slots
            .get(index)
            .is_some_and(|s| s.post_start_pending() && s.running_id() == Some(id))
    }

    /// The postStart hook to run next: that of the first slot whose instance waits for it.
    pub(super) fn post_start_due(&self) -> Option<Action> {
        self.slots.iter().enumerate().find_map(|(index, slot)| {
            if !slot.post_start_pending() {
                return None;
            }
            let handler = self.pod.container_at(index)?.lifecycle.post_start.clone()?;
            Some(Action::PostStart {
                index,
                id: slot.running_id()?.to_string(),
                handler,
            })
        })
    }

    /// `PostStartDone` for the instance slot `index` runs: it is started for Kubernetes; if the
    /// hook failed, it is killed (in a running pod; a pod being stopped stops it anyway).
    pub(super) fn post_start_done(&mut self, index: usize, result: Result<(), String>) {
        let grace = Duration::from_secs(self.pod.termination_grace_period_seconds);
        let running = self.state == PodState::Running;
        let slot = &mut self.slots[index];
        slot.ever_started = true;
        let ContainerPhase::Running {
            post_start,
            probe_kill,
            ..
        } = &mut slot.phase
        else {
            return;
        };
        *post_start = false;
        if let (Err(message), true) = (result, running) {
            metrics::counter!("skerry_container_hook_failures_total", "hook" => "postStart")
                .increment(1);
            *probe_kill = Some(ProbeKill {
                grace,
                message,
                retry_at: None,
                failures: 0,
            });
        }
    }

    /// The preStop hook to run before slot `index`'s running instance is sent SIGTERM, when it
    /// is stopped with `grace`: its spec's, unless the grace is zero or the sandbox is dead
    /// (see the module docs).
    pub fn pre_stop_hook(&self, index: usize, grace: Duration) -> Option<&LifecycleHandler> {
        if grace.is_zero() || matches!(self.state, PodState::SandboxLost { .. }) {
            return None;
        }
        self.slots.get(index)?.running_id()?;
        self.pod.container_at(index)?.lifecycle.pre_stop.as_ref()
    }
}

/// What to do next to stop one container instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopStep {
    /// Run its preStop hook, giving up on it at `deadline` (the end of the grace).
    PreStop {
        /// When the grace runs out.
        deadline: Instant,
    },
    /// Send SIGTERM, then SIGKILL after `grace`.
    Terminate {
        /// SIGTERM-to-SIGKILL grace.
        grace: Duration,
    },
}

/// The stop of one instance: its preStop hook (if any) within the grace, then SIGTERM with
/// what is left of it (at least [`MIN_TERM_GRACE_AFTER_HOOK`] after a hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopSequence {
    grace: Duration,
    began: Instant,
    hook: bool,
    hook_ended: Option<Instant>,
}

impl StopSequence {
    /// A stop with `grace` that begins at `now`, with a preStop hook to run first or not.
    pub fn new(grace: Duration, hook: bool, now: Instant) -> Self {
        Self {
            grace,
            began: now,
            hook: hook && !grace.is_zero(),
            hook_ended: None,
        }
    }

    /// The next step: the hook until it ended, then the SIGTERM.
    pub fn step(&self) -> StopStep {
        if self.hook && self.hook_ended.is_none() {
            return StopStep::PreStop {
                deadline: deadline_after(self.began, self.grace),
            };
        }
        let grace = match self.hook_ended {
            None => self.grace,
            Some(ended) => self
                .grace
                .saturating_sub(ended.saturating_duration_since(self.began))
                .max(MIN_TERM_GRACE_AFTER_HOOK),
        };
        StopStep::Terminate { grace }
    }

    /// The hook returned (or failed, or its deadline passed) at `now`.
    pub fn hook_ended(&mut self, now: Instant) {
        if self.hook && self.hook_ended.is_none() {
            self.hook_ended = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn without_a_hook_the_sigterm_comes_first_with_the_whole_grace() {
        let now = Instant::now();
        let s = StopSequence::new(Duration::from_secs(30), false, now);
        assert_eq!(
            s.step(),
            StopStep::Terminate {
                grace: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn a_forced_stop_runs_no_hook() {
        let now = Instant::now();
        let s = StopSequence::new(Duration::ZERO, true, now);
        assert_eq!(
            s.step(),
            StopStep::Terminate {
                grace: Duration::ZERO
            }
        );
    }

    #[test]
    fn the_hook_runs_first_and_the_sigterm_gets_what_is_left_of_the_grace() {
        let now = Instant::now();
        let grace = Duration::from_secs(30);
        let mut s = StopSequence::new(grace, true, now);
        assert_eq!(
            s.step(),
            StopStep::PreStop {
                deadline: now + grace
            }
        );
        s.hook_ended(now + Duration::from_secs(10));
        assert_eq!(
            s.step(),
            StopStep::Terminate {
                grace: Duration::from_secs(20)
            }
        );
        // A hook that used the whole grace leaves kubelet's 2 s.
        let mut late = StopSequence::new(grace, true, now);
        late.hook_ended(now + grace);
        assert_eq!(
            late.step(),
            StopStep::Terminate {
                grace: MIN_TERM_GRACE_AFTER_HOOK
            }
        );
    }

    proptest! {
        /// Whatever the grace and however long the hook takes (it is cut at the deadline):
        /// SIGTERM never comes before the hook ended, SIGKILL never later than the grace plus
        /// kubelet's 2 s, and the container always gets at least those 2 s after a hook.
        #[test]
        fn the_sigterm_follows_the_hook_within_the_grace(
            grace_ms in 0u64..120_000,
            took_ms in 0u64..240_000,
            hook in any::<bool>(),
        ) {
            let now = Instant::now();
            let grace = Duration::from_millis(grace_ms);
            let mut s = StopSequence::new(grace, hook, now);
            let mut ended = now;
            if let StopStep::PreStop { deadline } = s.step() {
                prop_assert!(hook && !grace.is_zero());
                prop_assert_eq!(deadline, now + grace);
                ended = (now + Duration::from_millis(took_ms)).min(deadline);
                s.hook_ended(ended);
            }
            let StopStep::Terminate { grace: term } = s.step() else {
                return Err(TestCaseError::fail("still in the hook after it ended"));
            };
            let kill_at = ended + term;
            prop_assert!(kill_at <= now + grace + MIN_TERM_GRACE_AFTER_HOOK);
            if hook && !grace.is_zero() {
                prop_assert!(term >= MIN_TERM_GRACE_AFTER_HOOK);
            } else {
                prop_assert_eq!(term, grace);
            }
        }
    }
}
