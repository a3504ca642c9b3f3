//! Kubernetes probes of running containers (startup, liveness, readiness), with kubelet's
//! semantics.
//!
//! Every running container instance with probes gets one task, spawned and cancelled by the
//! pod worker's [`ProbeSupervisor`] as the pod machine's containers start and stop, so a probe
//! never outlives the instance it probes (nor its worker: dropping the supervisor aborts them
//! all). The task runs the startup probe first, until it passes; liveness and readiness probes
//! run only after that, side by side. Each probe is scheduled and counted by a pure
//! [`ProbeTracker`]: the first attempt `initialDelaySeconds` after the container started, then one
//! every `periodSeconds`, each given `timeoutSeconds`; its verdict changes only after
//! `successThreshold` consecutive successes or `failureThreshold` consecutive failures.
//!
//! Verdict *changes* go back to the worker as [`ProbeVerdict`]s, which the pod machine applies
//! ([`apply_verdict`]): readiness decides whether the container is ready (and with all of them,
//! the pod's `ContainersReady` and `Ready` conditions); a failed liveness or startup probe has the
//! machine kill the instance (with the probe's `terminationGracePeriodSeconds`, else the pod's)
//! and restart it per `restartPolicy`, with the usual back-off, its `lastState` saying why. A new
//! instance starts with fresh probes: not ready until its readiness probe passes again.
//!
//! Like kubelet, a liveness or startup probe that failed stops probing its instance (it is about
//! to be killed), a startup probe that passed is not run again for that instance, and an exec
//! the runtime could not run counts as a failure; only a probe with nothing to probe yet (no pod
//! IP) is undecided and ignored. A container adopted after
//! an edgecore restart gets its probes afresh, startup probe included.

use super::prober::{Outcome, Target};
use super::state::{ContainerPhase, ContainerSlot, Now, PodMachine, PodState};
use crate::runtime::{deadline_after, Runtime};
use async_trait::async_trait;
use protocol::pod::{EdgeContainer, EdgePod, EnvValue, Probe, ProbeAction, RestartPolicy};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// The three kinds of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ProbeKind {
    /// Holds back the others until it first passes; kills the container if it never does.
    Startup,
    /// Kills the container when it fails.
    Liveness,
    /// Decides whether the container is ready.
    Readiness,
}

impl ProbeKind {
    /// Lower-case name, for logs, messages and the metric's `probe` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }

    /// kubelet's initial result: a container is alive until proven otherwise, not ready until
    /// proven ready, and not known to have started.
    fn initial_verdict(self) -> Option<bool> {
        match self {
            ProbeKind::Startup => None,
            ProbeKind::Liveness => Some(true),
            ProbeKind::Readiness => Some(false),
        }
    }

    /// The container's probe of this kind.
    fn of(self, container: &EdgeContainer) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// A probe's verdict on a container instance changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeVerdict {
    /// Slot index of the container.
    pub index: usize,
    /// The instance probed; a verdict on an instance that is gone is ignored.
    pub instance: String,
    /// Which probe.
    pub kind: ProbeKind,
    /// Passing or failing now.
    pub passed: bool,
    /// The deciding attempt's message (output, or why it failed).
    pub message: String,
}

/// Timing and thresholds of one probe on one instance: when the next attempt is due and what
/// the attempts so far decide. Pure, so the schedule is tested without waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeTracker {
    kind: ProbeKind,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    /// The last decided result and how many attempts in a row had it.
    streak: Option<(bool, u32)>,
    /// The current verdict (`None`: not decided yet).
    verdict: Option<bool>,
    /// When the next attempt is due.
    next_at: Instant,
    /// No more attempts: a liveness or startup probe failed, or a startup probe passed.
    finished: bool,
}

impl ProbeTracker {
    /// A tracker for `probe` on an instance that started at `started_at_ms` (wall clock, as the
    /// runtime reports it): the first attempt is due `initialDelaySeconds` after that start (at
    /// once for an instance that started long before, e.g. one adopted after a restart).
    /// Zero periods, timeouts and thresholds count as 1, the smallest Kubernetes allows.
    pub fn new(kind: ProbeKind, probe: &Probe, started_at_ms: u64, now: Now) -> Self {
        let since_start = Duration::from_millis(now.wall_ms.saturating_sub(started_at_ms));
        let delay =
            Duration::from_secs(u64::from(probe.initial_delay_seconds)).saturating_sub(since_start);
        Self {
            kind,
            period: Duration::from_secs(u64::from(probe.period_seconds.max(1))),
            timeout: Duration::from_secs(u64::from(probe.timeout_seconds.max(1))),
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            streak: None,
            verdict: kind.initial_verdict(),
            next_at: deadline_after(now.mono, delay),
            finished: false,
        }
    }

    /// When the next attempt is due; `None` once the probe is done with this instance.
    pub fn due(&self) -> Option<Instant> {
        (!self.finished).then_some(self.next_at)
    }

    /// How long one attempt may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The current verdict (`None`: undecided).
    pub fn verdict(&self) -> Option<bool> {
        self.verdict
    }

    /// Records the attempt that was due, ending at `now`, and schedules the next one a period
    /// after the previous was due (at once if the attempt took longer). Returns the new verdict
    /// if it changed. An unknown result (`None`) counts neither way, as in kubelet.
    pub fn record(&mut self, passed: Option<bool>, now: Now) -> Option<bool> {
        if self.finished {
            return None;
        }
        self.next_at = deadline_after(self.next_at, self.period).max(now.mono);
        let passed = passed?;
        let run = match self.streak {
            Some((last, n)) if last == passed => n.saturating_add(1),
            _ => 1,
        };
        self.streak = Some((passed, run));
        let threshold = if passed {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        let mut changed = None;
        if run >= threshold && self.verdict != Some(passed) {
            self.verdict = Some(passed);
            changed = Some(passed);
        }
        self.finished = match self.kind {
            ProbeKind::Liveness => self.verdict == Some(false),
            ProbeKind::Startup => self.verdict.is_some(),
            ProbeKind::Readiness => false,
        };
        changed
    }
}

/// A kill the pod machine owes a container instance that failed its liveness or startup probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeKill {
    /// SIGTERM-to-SIGKILL grace: the probe's `terminationGracePeriodSeconds`, else the pod's.
    pub grace: Duration,
    /// Why, for the instance's `Terminated` state (its `lastState` once restarted).
    pub message: String,
    /// When to retry a failed stop.
    pub retry_at: Option<Instant>,
    /// Consecutive failed stops.
    pub failures: u32,
}

/// Resets a slot's probe results for a new instance of `spec`: with a readiness or startup
/// probe it is not ready until they pass; without, it is ready while it runs.
pub(crate) fn reset_for_new_instance(slot: &mut ContainerSlot, spec: Option<&EdgeContainer>) {
    if let ContainerPhase::Running {
        readiness,
        probe_kill,
        ..
    } = &mut slot.phase
    {
        *readiness = spec
            .filter(|c| c.readiness_probe.is_some() || c.startup_probe.is_some())
            .map(|_| false);
        *probe_kill = None;
    }
}

/// Applies a verdict on the slot's running instance (the caller checked it is that one).
/// `may_kill` is false when the pod is not in a state where containers are restarted (it is
/// being stopped anyway).
pub(crate) fn apply_verdict(
    slot: &mut ContainerSlot,
    pod: &EdgePod,
    verdict: &ProbeVerdict,
    may_kill: bool,
) {
    let Some(spec) = pod.container_at(verdict.index) else {
        return;
    };
    let ContainerPhase::Running {
        readiness,
        probe_kill,
        spec_restart,
        ..
    } = &mut slot.phase
    else {
        return;
    };
    match (verdict.kind, verdict.passed) {
        (ProbeKind::Readiness, passed) => *readiness = Some(passed),
        // Without a readiness probe, a started container is ready.
        (ProbeKind::Startup, true) => {
            if spec.readiness_probe.is_none() {
                *readiness = Some(true);
            }
        }
        (ProbeKind::Liveness, true) => {}
        (kind @ (ProbeKind::Startup | ProbeKind::Liveness), false) => {
            // A restart for a changed spec already replaces the instance.
            if !may_kill || probe_kill.is_some() || spec_restart.is_some() {
                return;
            }
            let grace = kind
                .of(spec)
                .and_then(|p| p.termination_grace_period_seconds)
                .unwrap_or(pod.termination_grace_period_seconds);
            // kubelet's wording, with the probe's output appended.
            let then = if pod.restart_policy == RestartPolicy::Never {
                ""
            } else {
                ", will be restarted"
            };
            let mut message = format!(
                "Container {} failed {} probe{then}",
                spec.name,
                kind.as_str()
            );
            if !verdict.message.is_empty() {
                message.push_str(": ");
                message.push_str(&verdict.message);
            }
            *probe_kill = Some(ProbeKill {
                grace: Duration::from_secs(grace),
                message,
                retry_at: None,
                failures: 0,
            });
        }
    }
}

/// The restart policy applied to an instance killed for a failed probe: kubelet restarts it
/// unless the policy is `Never`, whatever exit code the kill produced (under `OnFailure` a
/// container that exits 0 on SIGTERM is restarted all the same).
pub(crate) fn policy_after_kill(policy: RestartPolicy) -> RestartPolicy {
    match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        RestartPolicy::Always | RestartPolicy::OnFailure => RestartPolicy::Always,
    }
}

/// Runs probe attempts; the real one is [`Target`], tests script their own.
#[async_trait]
pub(crate) trait Attempts: Send + Sync + 'static {
    /// Runs `action` once, for a probe of `kind`, within `timeout`.
    async fn attempt(&self, kind: ProbeKind, action: &ProbeAction, timeout: Duration) -> Outcome;
}

#[async_trait]
impl Attempts for Target {
    async fn attempt(&self, _kind: ProbeKind, action: &ProbeAction, timeout: Duration) -> Outcome {
        Target::attempt(self, action, timeout).await
    }
}

/// Told of every failed probe attempt (not only of verdicts): the container's name, the probe
/// and its output. The pod worker records kubelet's `Unhealthy` event with it, as kubelet does
/// for each failed attempt (the event series counts them).
pub(crate) type FailureTap = Arc<dyn Fn(&str, ProbeKind, &str) + Send + Sync>;

/// One instance's probes: startup first, then liveness and readiness side by side. Ends when
/// nothing is left to probe (a liveness or startup failure, or no probes); readiness probes
/// otherwise run until the task is aborted.
async fn probe_instance<A: Attempts>(
    attempts: Arc<A>,
    container: Arc<EdgeContainer>,
    index: usize,
    instance: String,
    started_at_ms: u64,
    tx: UnboundedSender<ProbeVerdict>,
    tap: FailureTap,
) {
    let run = |kind: ProbeKind| {
        let (attempts, container, instance, tx, tap) = (
            attempts.clone(),
            container.clone(),
            instance.clone(),
            tx.clone(),
            tap.clone(),
        );
        async move {
            let Some(probe) = kind.of(&container) else {
                return true;
            };
            let report = |passed: bool, message: &str| {
                let _ = tx.send(ProbeVerdict {
                    index,
                    instance: instance.clone(),
                    kind,
                    passed,
                    message: message.to_string(),
                });
            };
            let failed = |output: &str| tap(&container.name, kind, output);
            run_probe(
                attempts.as_ref(),
                kind,
                probe,
                started_at_ms,
                report,
                failed,
            )
            .await
        }
    };
    if !run(ProbeKind::Startup).await {
        return;
    }
    tokio::join!(run(ProbeKind::Liveness), run(ProbeKind::Readiness));
}

/// Runs one probe on one instance until its tracker is done; `report` gets every verdict
/// change. Returns whether the last verdict passed (a startup probe: whether the others may run).
async fn run_probe<A: Attempts + ?Sized>(
    attempts: &A,
    kind: ProbeKind,
    probe: &Probe,
    started_at_ms: u64,
    report: impl Fn(bool, &str),
    failed: impl Fn(&str),
) -> bool {
    let mut tracker = ProbeTracker::new(kind, probe, started_at_ms, Now::current());
    while let Some(at) = tracker.due() {
        tokio::time::sleep_until(at).await;
        let outcome = attempts
            .attempt(kind, &probe.action, tracker.timeout())
            .await;
        metrics::counter!(
            "skerry_edge_probe_results_total",
            "probe" => kind.as_str(),
            "result" => outcome.label()
        )
        .increment(1);
        match &outcome {
            Outcome::Success(_) => debug!(probe = kind.as_str(), "probe passed"),
            Outcome::Failure(output) => {
                info!(probe = kind.as_str(), %output, "probe failed");
                failed(output);
            }
            Outcome::Unknown(why) => {
                warn!(probe = kind.as_str(), %why, "probe could not be run; result ignored")
            }
        }
        let Some(passed) = tracker.record(outcome.passed(), Now::current()) else {
            continue;
        };
        let threshold = if passed {
            probe.success_threshold.max(1)
        } else {
            probe.failure_threshold.max(1)
        };
        match (kind, passed) {
            (ProbeKind::Readiness, true) => info!("readiness probe passed; container ready"),
            (ProbeKind::Readiness, false) => warn!(
                output = outcome.message(),
                "readiness probe failed {threshold} times in a row; container not ready"
            ),
            (ProbeKind::Startup, true) => {
                info!("startup probe passed; liveness and readiness probes start")
            }
            (_, false) => warn!(
                probe = kind.as_str(),
                output = outcome.message(),
                "probe failed {threshold} times in a row; the container is killed"
            ),
            (ProbeKind::Liveness, true) => {}
        }
        report(passed, outcome.message());
    }
    tracker.verdict() == Some(true)
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pod worker's probe tasks, one per running container instance with probes, and the channel
/// their verdicts come back on.
pub(crate) struct ProbeSupervisor {
    runtime: Arc<dyn Runtime>,
    tx: UnboundedSender<ProbeVerdict>,
    rx: UnboundedReceiver<ProbeVerdict>,
    /// By slot index: the instance probed and its task.
    tasks: HashMap<usize, (String, AbortOnDrop)>,
    /// Told of each failed attempt.
    tap: FailureTap,
}

impl ProbeSupervisor {
    /// A supervisor whose exec probes run through `runtime`, telling `tap` of each failed
    /// attempt.
    pub fn new(runtime: Arc<dyn Runtime>, tap: FailureTap) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            runtime,
            tx,
            rx,
            tasks: HashMap::new(),
            tap,
        }
    }

    /// Makes the probe tasks follow the machine: a task for every running instance with probes
    /// while the pod runs, none for anything else (an instance that exited or is being replaced,
    /// a pod being stopped). Call after every step.
    pub fn sync(&mut self, machine: &PodMachine) {
        let mut wanted: HashMap<usize, (&str, u64)> = HashMap::new();
        if *machine.state() == PodState::Running && machine.sandbox().is_some() {
            for (index, slot) in machine.slots().iter().enumerate() {
                // Not before its postStart hook returned, as kubelet.
                let ContainerPhase::Running {
                    id,
                    started_at_ms,
                    post_start: false,
                    ..
                } = &slot.phase
                else {
                    continue;
                };
                let probed = machine.pod().container_at(index).is_some_and(|c| {
                    c.startup_probe.is_some()
                        || c.liveness_probe.is_some()
                        || c.readiness_probe.is_some()
                });
                if probed {
                    wanted.insert(index, (id.as_str(), *started_at_ms));
                }
            }
        }
        self.tasks.retain(|index, (instance, _)| {
            let keep = wanted.get(index).is_some_and(|(id, _)| id == instance);
            if !keep {
                debug!(%instance, "probes of the container instance stopped");
            }
            keep
        });
        let Some(sandbox) = machine.sandbox() else {
            return;
        };
        for (index, (id, started_at_ms)) in wanted {
            if self.tasks.contains_key(&index) {
                continue;
            }
            let Some(spec) = machine.pod().container_at(index) else {
                continue;
            };
            let target = Target {
                runtime: self.runtime.clone(),
                sandbox: sandbox.clone(),
                container_id: id.to_string(),
                static_env: spec
                    .env
                    .iter()
                    .filter_map(|v| match &v.value {
                        EnvValue::Literal(value) => Some((v.name.clone(), value.clone())),
                        _ => None,
                    })
                    .collect(),
            };
            let span = tracing::info_span!("probes", container = %spec.name, instance = %id);
            let task = tokio::spawn(
                probe_instance(
                    Arc::new(target),
                    Arc::new(spec.clone()),
                    index,
                    id.to_string(),
                    started_at_ms,
                    self.tx.clone(),
                    self.tap.clone(),
                )
                .instrument(span),
            );
            debug!(container = %spec.name, instance = %id, "probes of the container instance started");
            self.tasks
                .insert(index, (id.to_string(), AbortOnDrop(task)));
        }
    }

    /// The next verdict; waits forever if none comes (the supervisor holds a sender itself).
    pub async fn next(&mut self) -> ProbeVerdict {
        match self.rx.recv().await {
            Some(verdict) => verdict,
            None => std::future::pending().await,
        }
    }

    /// A verdict that already arrived, if any.
    pub fn try_next(&mut self) -> Option<ProbeVerdict> {
        self.rx.try_recv().ok()
    }

    /// How many instances are being probed.
    #[cfg(test)]
    pub fn probed(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::backoff::BackoffPolicy;
    use crate::pods::state::{Action, Event, Settings};
    use crate::runtime::{ContainerInfo, ContainerRunState, Sandbox};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Mutex;

    fn t0() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: 1_000_000,
        }
    }

    fn at(base: Now, ms: u64) -> Now {
        Now {
            mono: base.mono + Duration::from_millis(ms),
            wall_ms: base.wall_ms + ms,
        }
    }

    fn probe(delay: u32, period: u32, success: u32, failure: u32) -> Probe {
        Probe {
            action: ProbeAction::Exec {
                command: vec!["true".into()],
            },
            initial_delay_seconds: delay,
            period_seconds: period,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
            termination_grace_period_seconds: None,
        }
    }

    const S: Option<bool> = Some(true);
    const F: Option<bool> = Some(false);

    #[test]
    fn attempts_start_after_the_initial_delay_and_follow_the_period() {
        let now = t0();
        // Started 2 s ago with a 5 s initial delay: the first attempt is 3 s away.
        let mut t = ProbeTracker::new(
            ProbeKind::Readiness,
            &probe(5, 10, 1, 3),
            now.wall_ms - 2_000,
            now,
        );
        assert_eq!(t.due(), Some(now.mono + Duration::from_secs(3)));
        assert_eq!(t.timeout(), Duration::from_secs(1));
        // Periods count from when an attempt was due, not from when it ended.
        assert_eq!(t.record(S, at(now, 3_500)), Some(true));
        assert_eq!(t.due(), Some(now.mono + Duration::from_secs(13)));
        // An attempt that outlasted the period: the next one at once.
        assert_eq!(t.record(S, at(now, 25_000)), None);
        assert_eq!(t.due(), Some(now.mono + Duration::from_secs(25)));

        // An instance that started long ago (adopted after a restart) is probed at once.
        let old = ProbeTracker::new(ProbeKind::Liveness, &probe(30, 10, 1, 3), 0, now);
        assert_eq!(old.due(), Some(now.mono));
    }

    #[test]
    fn readiness_changes_only_after_consecutive_results_reach_a_threshold() {
        let now = t0();
        let mut t = ProbeTracker::new(ProbeKind::Readiness, &probe(0, 1, 2, 3), now.wall_ms, now);
        assert_eq!(t.verdict(), Some(false), "not ready before it passed");
        let mut seen = Vec::new();
        for (i, result) in [F, S, F, S, S, F, F, None, F, S, S].into_iter().enumerate() {
            seen.push(t.record(result, at(now, i as u64 * 1_000)));
        }
        assert_eq!(
            seen,
            [
                None,
                None,
                None,
                None,
                Some(true), // two successes in a row
                None,
                None,
                None,        // unknown: ignored, the streak goes on
                Some(false), // three failures in a row
                None,
                Some(true),
            ]
        );
        assert!(t.due().is_some(), "readiness probes never end");
    }

    #[test]
    fn liveness_and_startup_probes_end_once_decided() {
        let now = t0();
        let mut live = ProbeTracker::new(ProbeKind::Liveness, &probe(0, 1, 1, 2), now.wall_ms, now);
        assert_eq!(live.verdict(), Some(true));
        assert_eq!(live.record(F, now), None);
        assert_eq!(live.record(S, now), None, "alive already");
        assert_eq!(live.record(F, now), None);
        assert_eq!(live.record(F, now), Some(false));
        assert_eq!(live.due(), None);
        assert_eq!(live.record(S, now), None);

        let mut startup =
            ProbeTracker::new(ProbeKind::Startup, &probe(0, 1, 1, 3), now.wall_ms, now);
        assert_eq!(startup.verdict(), None);
        assert_eq!(startup.record(F, now), None);
        assert_eq!(startup.record(S, now), Some(true));
        assert_eq!(startup.due(), None);

        let mut startup =
            ProbeTracker::new(ProbeKind::Startup, &probe(0, 1, 1, 3), now.wall_ms, now);
        assert_eq!(startup.record(F, now), None);
        assert_eq!(startup.record(F, now), None);
        assert_eq!(startup.record(F, now), Some(false));
        assert_eq!(startup.due(), None);
    }

    #[test]
    fn zero_timings_count_as_the_smallest_kubernetes_allows() {
        let now = t0();
        let mut t = ProbeTracker::new(ProbeKind::Readiness, &probe(0, 0, 0, 0), now.wall_ms, now);
        t.record(S, now);
        assert_eq!(t.due(), Some(now.mono + Duration::from_secs(1)));
        assert_eq!(t.timeout(), Duration::from_secs(1));
        assert_eq!(t.record(F, now), Some(false));
    }

    /// Seconds since `began`, rounded: a probe's schedule starts from the container's
    /// wall-clock start, taken a few (real) milliseconds before the probe runs on the paused
    /// clock, so attempts fall just before the whole second on a loaded machine.
    fn secs_since(began: Instant) -> u64 {
        (began.elapsed().as_millis() as u64 + 500) / 1000
    }

    /// Attempts decided by a function of the probe kind and the seconds since the test began,
    /// recorded.
    struct Script {
        began: Instant,
        decide: fn(ProbeKind, u64) -> Outcome,
        log: Mutex<Vec<(ProbeKind, u64)>>,
    }

    #[async_trait]
    impl Attempts for Script {
        async fn attempt(&self, kind: ProbeKind, _: &ProbeAction, _: Duration) -> Outcome {
            let secs = secs_since(self.began);
            self.log.lock().await.push((kind, secs));
            (self.decide)(kind, secs)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_startup_probe_holds_back_liveness_and_readiness() {
        let container = EdgeContainer {
            name: "a".into(),
            startup_probe: Some(probe(0, 1, 1, 10)),
            liveness_probe: Some(probe(0, 2, 1, 2)),
            readiness_probe: Some(probe(0, 1, 1, 1)),
            ..EdgeContainer::default()
        };
        let script = Arc::new(Script {
            began: Instant::now(),
            decide: |kind, secs| match kind {
                ProbeKind::Startup if secs >= 3 => Outcome::Success(String::new()),
                ProbeKind::Liveness if secs >= 6 => Outcome::Failure("dead".into()),
                ProbeKind::Startup => Outcome::Failure("starting".into()),
                _ => Outcome::Success(String::new()),
            },
            log: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = AbortOnDrop(tokio::spawn(probe_instance(
            script.clone(),
            Arc::new(container),
            0,
            "u1/a/0".into(),
            super::super::state::wall_ms(),
            tx,
            Arc::new(|_: &str, _: ProbeKind, _: &str| {}),
        )));
        let mut verdicts = Vec::new();
        while verdicts.len() < 3 {
            let v = rx.recv().await.expect("verdict");
            verdicts.push((v.kind, v.passed, secs_since(script.began)));
            assert_eq!((v.index, v.instance.as_str()), (0, "u1/a/0"));
        }
        assert_eq!(
            verdicts,
            [
                (ProbeKind::Startup, true, 3),
                (ProbeKind::Readiness, true, 3),
                // Liveness attempts at 3, 5, 7, 9: failing from 6 on, two failures kill.
                (ProbeKind::Liveness, false, 9),
            ]
        );
        let log = script.log.lock().await.clone();
        let startup: Vec<u64> = log
            .iter()
            .filter(|(k, _)| *k == ProbeKind::Startup)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(startup, [0, 1, 2, 3], "not run again once passed");
        assert!(log.iter().all(|(k, s)| *k == ProbeKind::Startup || *s >= 3));
        let liveness: Vec<u64> = log
            .iter()
            .filter(|(k, _)| *k == ProbeKind::Liveness)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(liveness, [3, 5, 7, 9], "not run after it failed");

        // Readiness goes on until the task is cancelled, then nothing runs any more.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = script.log.lock().await.len();
        assert!(before > log.len());
        drop(task);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(script.log.lock().await.len(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_startup_probe_runs_no_other_probe() {
        let container = EdgeContainer {
            name: "a".into(),
            startup_probe: Some(probe(2, 1, 1, 2)),
            liveness_probe: Some(probe(0, 1, 1, 1)),
            ..EdgeContainer::default()
        };
        let script = Arc::new(Script {
            began: Instant::now(),
            decide: |_, _| Outcome::Failure("no".into()),
            log: Mutex::new(Vec::new()),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        probe_instance(
            script.clone(),
            Arc::new(container),
            0,
            "u1/a/0".into(),
            super::super::state::wall_ms(),
            tx,
            Arc::new(|_: &str, _: ProbeKind, _: &str| {}),
        )
        .await;
        let v = rx.recv().await.expect("verdict");
        assert_eq!(
            (v.kind, v.passed, v.message.as_str()),
            (ProbeKind::Startup, false, "no")
        );
        assert!(rx.recv().await.is_none(), "nothing else");
        assert_eq!(
            *script.log.lock().await,
            [(ProbeKind::Startup, 2), (ProbeKind::Startup, 3)]
        );
    }

    fn settings() -> Arc<Settings> {
        Arc::new(Settings {
            node_name: "n".into(),
            host_ip: "127.0.0.1".into(),
            backoff: BackoffPolicy {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(10),
                reset_after: Duration::from_secs(60),
            },
            poll_interval: Duration::from_millis(500),
            config: Arc::new(crate::cache::ConfigSet::default()),
        })
    }

    fn started(m: &mut PodMachine, attempt: u32) {
        let now = Now::current();
        let info = ContainerInfo {
            id: format!("u1/a/{attempt}"),
            name: "a".into(),
            attempt,
            state: ContainerRunState::Running {
                started_at_ms: now.wall_ms,
            },
            spec_digest: None,
            image_pull: None,
            image_id: None,
        };
        m.step(
            Event::Started {
                index: 0,
                attempt,
                result: Ok(info),
            },
            now,
        );
    }

    #[tokio::test]
    async fn the_supervisor_probes_exactly_the_running_instances() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let _server = AbortOnDrop(tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        let mut readiness = probe(0, 1, 1, 1);
        // No host: the pod IP.
        readiness.action = ProbeAction::TcpSocket {
            host: String::new(),
            port,
        };
        let pod = EdgePod {
            namespace: "rigs".into(),
            name: "p".into(),
            uid: "u1".into(),
            labels: BTreeMap::new(),
            containers: vec![EdgeContainer {
                name: "a".into(),
                command: vec!["sleep".into()],
                readiness_probe: Some(readiness),
                ..EdgeContainer::default()
            }],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 1,
            volumes: vec![],
            deletion_grace_period_seconds: None,
            dns: Default::default(),
            init_containers: Vec::new(),
            hosts: Default::default(),
            annotations: Default::default(),
            security: None,
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let runtime = Arc::new(crate::runtime::process::ProcessRuntime::new(
            tmp.path().to_path_buf(),
            "/nonexistent".into(),
            "127.0.0.1".into(),
        ));
        let mut sup = ProbeSupervisor::new(runtime, Arc::new(|_: &str, _: ProbeKind, _: &str| {}));
        let mut m = PodMachine::new(settings(), pod, None, Now::current());
        assert_eq!(m.step(Event::Tick, Now::current()), Action::CreateSandbox);
        sup.sync(&m);
        assert_eq!(sup.probed(), 0);
        let sandbox = Sandbox {
            id: "u1".into(),
            pod_uid: "u1".into(),
            ip: "127.0.0.1".into(),
        };
        m.step(Event::SandboxCreated(Ok(sandbox)), Now::current());
        started(&mut m, 0);
        sup.sync(&m);
        assert_eq!(sup.probed(), 1);
        assert!(!m.slots()[0].ready());

        let wait = Duration::from_secs(10);
        let v = tokio::time::timeout(wait, sup.next())
            .await
            .expect("a verdict");
        assert_eq!(
            (v.kind, v.passed, v.instance.as_str()),
            (ProbeKind::Readiness, true, "u1/a/0")
        );
        m.step(Event::Probe(v), Now::current());
        assert!(m.slots()[0].ready());

        // The instance exits: its probes stop; its successor gets fresh ones.
        let exited = ContainerRunState::Exited {
            exit_code: 1,
            signal: None,
            reason: "Error".into(),
            started_at_ms: 1,
            finished_at_ms: 2,
        };
        m.step(
            Event::Observed(vec![(0, "u1/a/0".into(), Ok(exited))]),
            Now::current(),
        );
        sup.sync(&m);
        assert_eq!(sup.probed(), 0);
        started(&mut m, 1);
        sup.sync(&m);
        assert_eq!(sup.probed(), 1);
        let v = tokio::time::timeout(wait, sup.next())
            .await
            .expect("a verdict");
        assert_eq!(v.instance, "u1/a/1");

        // A pod being stopped is not probed.
        m.step(Event::Forget, Now::current());
        sup.sync(&m);
        assert_eq!(sup.probed(), 0);
        let seen = accepted.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            seen,
            "a probe outlived its instance"
        );
    }
}
