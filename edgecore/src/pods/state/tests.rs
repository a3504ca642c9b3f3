//! Unit tests of the pod machine: every transition, driven by events, no runtime.

use super::spec_change::{spec_change, SpecChange};
use super::status::containers_phase;
use super::*;
use crate::cache::ConfigSet;
use crate::pods::backoff::go_duration;
use crate::runtime::process::container_digest;
use protocol::pod::{EnvValue, EnvVar, RestartPolicy};
use protocol::status::ContainerState;
use std::collections::BTreeMap;

pub(super) fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        node_name: "rig-7".into(),
        host_ip: "192.0.2.7".into(),
        backoff: BackoffPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        },
        poll_interval: Duration::from_millis(500),
        config: Arc::new(ConfigSet::default()),
    })
}

pub(super) fn container(name: &str) -> EdgeContainer {
    EdgeContainer {
        name: name.into(),
        image: "local".into(),
        image_pull_policy: "Never".into(),
        command: vec!["sleep".into(), "60".into()],
        ..Default::default()
    }
}

pub(super) fn pod(policy: RestartPolicy, names: &[&str]) -> EdgePod {
    EdgePod {
        namespace: "rigs".into(),
        name: "p".into(),
        uid: "u1".into(),
        labels: BTreeMap::new(),
        containers: names.iter().map(|n| container(n)).collect(),
        restart_policy: policy,
        termination_grace_period_seconds: 30,
        volumes: vec![],
        deletion_grace_period_seconds: None,
        dns: Default::default(),
        init_containers: Vec::new(),
        hosts: Default::default(),
        annotations: Default::default(),
        security: None,
    }
}

pub(super) fn sandbox() -> Sandbox {
    Sandbox {
        id: "u1".into(),
        pod_uid: "u1".into(),
        ip: "192.0.2.7".into(),
    }
}

pub(super) fn info(name: &str, attempt: u32, state: ContainerRunState) -> ContainerInfo {
    ContainerInfo {
        id: format!("u1/{name}/{attempt}"),
        name: name.into(),
        attempt,
        state,
        spec_digest: None,
        image_pull: None,
        image_id: None,
    }
}

pub(super) fn running(started_at_ms: u64) -> ContainerRunState {
    ContainerRunState::Running { started_at_ms }
}

pub(super) fn exited(code: i32, started_at_ms: u64, finished_at_ms: u64) -> ContainerRunState {
    ContainerRunState::Exited {
        exit_code: code,
        signal: None,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        started_at_ms,
        finished_at_ms,
    }
}

pub(super) fn at(base: Now, ms: u64) -> Now {
    Now {
        mono: base.mono + Duration::from_millis(ms),
        wall_ms: base.wall_ms + ms,
    }
}

fn at_secs(base: Now, secs: u64) -> Instant {
    base.mono + Duration::from_secs(secs)
}

fn clone_settings(s: &Settings) -> Settings {
    Settings {
        node_name: s.node_name.clone(),
        host_ip: s.host_ip.clone(),
        backoff: s.backoff,
        poll_interval: s.poll_interval,
        config: s.config.clone(),
    }
}

pub(super) fn t0() -> Now {
    Now {
        mono: Instant::now(),
        wall_ms: 1_000_000,
    }
}

/// Drives a fresh machine to the point where every container runs.
fn started(policy: RestartPolicy, names: &[&str]) -> (PodMachine, Now) {
    let now = t0();
    let mut m = PodMachine::new(settings(), pod(policy, names), None, now);
    assert_eq!(m.step(Event::Tick, now), Action::CreateSandbox);
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Pending);
    assert!(matches!(&st.containers[0].state,
        ContainerState::Waiting { reason, .. } if reason == "ContainerCreating"));
    let mut action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
    for (i, name) in names.iter().enumerate() {
        match action {
            Action::StartContainer { index, config, .. } => {
                assert_eq!(index, i);
                assert_eq!(config.attempt, 0);
            }
            other => panic!("expected a start, got {other:?}"),
        }
        action = m.step(
            Event::Started {
                index: i,
                attempt: 0,
                result: Ok(info(name, 0, running(now.wall_ms))),
            },
            now,
        );
    }
    assert!(matches!(action, Action::Observe(_)), "{action:?}");
    (m, now)
}

#[test]
fn a_started_pod_runs_and_is_ready() {
    let (m, now) = started(RestartPolicy::Always, &["a", "b"]);
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Running);
    assert_eq!(st.pod_ip, "192.0.2.7");
    assert_eq!(st.host_ip, "192.0.2.7");
    assert_eq!(st.start_time_ms, now.wall_ms);
    assert!(st
        .containers
        .iter()
        .all(|c| c.ready && c.restart_count == 0));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .expect("Ready");
    assert!(ready.status);
    assert_eq!(st.conditions.len(), 4);
    assert!(st.conditions.iter().all(|c| c.status));
}

fn probe(action: protocol::pod::ProbeAction) -> protocol::pod::Probe {
    protocol::pod::Probe {
        action,
        initial_delay_seconds: 0,
        period_seconds: 10,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: 3,
        termination_grace_period_seconds: None,
    }
}

pub(super) fn exec_probe() -> protocol::pod::Probe {
    probe(protocol::pod::ProbeAction::Exec {
        command: vec!["true".into()],
    })
}

/// Drives a fresh machine for `p` until every container runs.
fn started_pod(p: EdgePod) -> (PodMachine, Now) {
    let now = t0();
    let names: Vec<String> = p.containers.iter().map(|c| c.name.clone()).collect();
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    let mut action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
    for (i, name) in names.iter().enumerate() {
        assert!(matches!(action, Action::StartContainer { index, .. } if index == i));
        action = m.step(
            Event::Started {
                index: i,
                attempt: 0,
                result: Ok(info(name, 0, running(now.wall_ms))),
            },
            now,
        );
    }
    (m, now)
}

pub(super) fn verdict(index: usize, instance: &str, kind: ProbeKind, passed: bool) -> Event {
    Event::Probe(ProbeVerdict {
        index,
        instance: instance.into(),
        kind,
        passed,
        message: if passed { "" } else { "boom" }.into(),
    })
}

fn ready_condition(m: &PodMachine) -> PodCondition {
    m.status()
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.kind == "Ready")
        .expect("Ready")
}

use crate::pods::probes::ProbeKind;

/// Answers polls of running containers (all still running) until the machine wants
/// something else.
pub(super) fn past_polls(m: &mut PodMachine, mut action: Action, t: Now) -> Action {
    while let Action::Observe(targets) = action {
        let results = targets
            .into_iter()
            .map(|(i, id)| (i, id, Ok(running(t.wall_ms))))
            .collect();
        action = m.step(Event::Observed(results), t);
    }
    action
}

#[test]
fn readiness_verdicts_drive_container_and_pod_readiness() {
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    p.containers[1].readiness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    // A readiness probe: not ready until it passes; the other container is.
    let st = m.status().expect("status");
    assert!(st.containers[0].ready && !st.containers[1].ready);
    let ready = ready_condition(&m);
    assert!(!ready.status);
    assert_eq!(ready.message, "containers with unready status: [b]");
    let contains_ready = |m: &PodMachine| {
        m.status()
            .expect("status")
            .conditions
            .iter()
            .any(|c| c.kind == "ContainersReady" && c.status)
    };
    assert!(!contains_ready(&m));

    let t = at(now, 2_000);
    m.step(verdict(1, "u1/b/0", ProbeKind::Readiness, true), t);
    assert!(m.status().expect("status").containers[1].ready);
    assert!(ready_condition(&m).status);
    assert_eq!(ready_condition(&m).last_transition_ms, t.wall_ms);
    assert!(contains_ready(&m));

    // A verdict about another instance changes nothing.
    let t2 = at(now, 3_000);
    m.step(verdict(1, "u1/b/7", ProbeKind::Readiness, false), t2);
    assert!(ready_condition(&m).status);

    m.step(verdict(1, "u1/b/0", ProbeKind::Readiness, false), t2);
    let ready = ready_condition(&m);
    assert_eq!(
        (ready.status, ready.last_transition_ms),
        (false, t2.wall_ms)
    );
    assert!(!contains_ready(&m));
    assert_eq!(m.state(), &PodState::Running, "readiness never restarts");
}

#[test]
fn a_passed_startup_probe_makes_a_container_without_readiness_probe_ready() {
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    p.containers[0].startup_probe = Some(exec_probe());
    p.containers[1].startup_probe = Some(exec_probe());
    p.containers[1].readiness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    let st = m.status().expect("status");
    assert!(!st.containers[0].ready && !st.containers[1].ready);
    m.step(verdict(0, "u1/a/0", ProbeKind::Startup, true), now);
    m.step(verdict(1, "u1/b/0", ProbeKind::Startup, true), now);
    let st = m.status().expect("status");
    assert!(st.containers[0].ready);
    assert!(!st.containers[1].ready, "b waits for its readiness probe");
}

#[test]
fn a_failed_liveness_probe_kills_with_its_grace_and_restarts_with_back_off() {
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    let mut liveness = exec_probe();
    liveness.termination_grace_period_seconds = Some(5);
    p.containers[0].liveness_probe = Some(liveness);
    p.containers[0].readiness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    // The container crashed once before: this kill is its second exit, which backs off.
    m.slots[0].crashes = 1;
    m.step(verdict(0, "u1/a/0", ProbeKind::Readiness, true), now);
    assert!(ready_condition(&m).status);

    let action = m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(5)
        }
    );
    // Another failure meanwhile asks for nothing more.
    assert_eq!(
        m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now),
        action
    );
    let t = at(now, 1_000);
    let killed = ContainerRunState::Exited {
        exit_code: 143,
        signal: Some(15),
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: t.wall_ms,
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), t);
    // The usual restart back-off (b is still polled meanwhile).
    let action = past_polls(&mut m, action, t);
    assert_eq!(
        action,
        Action::Wait(Some(t.mono + Duration::from_millis(500)))
    );
    assert!(matches!(m.slots()[0].phase,
        ContainerPhase::BackOff { until, .. } if until == t.mono + Duration::from_secs(10)));
    let st = m.status().expect("status");
    let c = &st.containers[0];
    assert!(!c.ready);
    assert!(!ready_condition(&m).status);
    assert!(
        matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
    );
    match &c.last_state {
        Some(ContainerState::Terminated {
            exit_code, message, ..
        }) => {
            assert_eq!(*exit_code, 143);
            assert_eq!(
                message,
                "Container a failed liveness probe, will be restarted: boom"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        st.containers[1].state,
        ContainerState::Running { .. }
    ));

    let t = at(t, 10_000);
    match m.step(Event::Tick, t) {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (0, 1))
        }
        other => panic!("{other:?}"),
    }
    m.step(
        Event::Started {
            index: 0,
            attempt: 1,
            result: Ok(info("a", 1, running(t.wall_ms))),
        },
        t,
    );
    let c = &m.status().expect("status").containers[0];
    assert_eq!(c.restart_count, 1);
    assert!(matches!(c.state, ContainerState::Running { .. }));
    // The new instance is not ready until its readiness probe passes again, and verdicts
    // about the killed one are ignored.
    assert!(!c.ready);
    m.step(verdict(0, "u1/a/0", ProbeKind::Readiness, true), t);
    assert!(!m.status().expect("status").containers[0].ready);
    m.step(verdict(0, "u1/a/1", ProbeKind::Readiness, true), t);
    assert!(m.status().expect("status").containers[0].ready);
}

#[test]
fn a_failed_startup_probe_kills_and_never_means_no_restart() {
    let mut p = pod(RestartPolicy::Never, &["a"]);
    p.containers[0].startup_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    let action = m.step(verdict(0, "u1/a/0", ProbeKind::Startup, false), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
        now,
    );
    assert_eq!(m.phase(), PodPhase::Failed);
    match &m.status().expect("status").containers[0].state {
        ContainerState::Terminated { message, .. } => {
            assert_eq!(message, "Container a failed startup probe: boom")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn on_failure_restarts_a_killed_container_that_exited_zero() {
    let mut p = pod(RestartPolicy::OnFailure, &["a"]);
    p.containers[0].liveness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
    m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(0, 0, 1)))]),
        now,
    );
    // Restarted (at once: its first exit).
    assert!(matches!(
        m.slots()[0].phase,
        ContainerPhase::Waiting { retry_at: None, .. }
    ));
    assert_eq!(m.phase(), PodPhase::Running);
}

#[test]
fn a_failed_kill_is_retried_with_back_off() {
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.containers[0].liveness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
    let fail = Failure {
        reason: "RunContainerError".into(),
        message: "stuck".into(),
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
    let action = past_polls(&mut m, action, now);
    assert!(matches!(action, Action::Wait(_)), "{action:?}");
    let t = at(now, 9_999);
    let action = m.step(Event::Tick, t);
    assert!(matches!(past_polls(&mut m, action, t), Action::Wait(_)));
    assert!(matches!(
        m.step(Event::Tick, at(now, 10_000)),
        Action::StopContainers { grace, .. } if grace == Duration::from_secs(30)
    ));
}

#[test]
fn probe_failures_do_not_kill_containers_of_a_pod_being_stopped() {
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.containers[0].liveness_probe = Some(exec_probe());
    let (mut m, now) = started_pod(p);
    let mut deleting = m.pod().clone();
    deleting.deletion_grace_period_seconds = Some(3);
    m.step(Event::Update(deleting), now);
    let action = m.step(verdict(0, "u1/a/0", ProbeKind::Liveness, false), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(3)
        }
    );
    assert!(m.slots()[0].probe_kill().is_none());
}

#[test]
fn polling_waits_for_the_period() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let results = vec![(0, "u1/a/0".to_string(), Ok(running(now.wall_ms)))];
    let action = m.step(Event::Observed(results), now);
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_millis(500)))
    );
    assert!(matches!(
        m.step(Event::Tick, at(now, 500)),
        Action::Observe(_)
    ));
}

#[test]
fn crashes_back_off_exponentially_and_restart_with_the_next_attempt() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut t = now;
    // kubelet's schedule: a first exit restarts at once, then 10 s, 20 s, 40 s, ...
    for (n, delay_s) in [(1u32, 0u64), (2, 10), (3, 20), (4, 40), (5, 80)] {
        let attempt = n - 1;
        let id = format!("u1/a/{attempt}");
        let action = m.step(
            Event::Observed(vec![(0, id.clone(), Ok(exited(1, t.wall_ms, t.wall_ms)))]),
            t,
        );
        let st = m.status().expect("status");
        assert_eq!(st.phase, PodPhase::Running);
        let c = &st.containers[0];
        assert_eq!(c.restart_count, attempt);
        assert!(!c.ready);
        assert!(matches!(
            c.last_state,
            Some(ContainerState::Terminated { exit_code: 1, .. })
        ));
        if delay_s == 0 {
            // No back-off: started again in the same step, never `CrashLoopBackOff`.
            match &c.state {
                ContainerState::Waiting { reason, .. } => assert_eq!(reason, "ContainerCreating"),
                other => panic!("{other:?}"),
            }
            match action {
                Action::StartContainer { config, .. } => assert_eq!(config.attempt, n),
                other => panic!("crash {n}: {other:?}"),
            }
        } else {
            assert_eq!(
                action,
                Action::Wait(Some(t.mono + Duration::from_secs(delay_s))),
                "crash {n}"
            );
            match &c.state {
                ContainerState::Waiting { reason, message } => {
                    assert_eq!(reason, "CrashLoopBackOff");
                    assert_eq!(
                        message,
                        &format!(
                            "back-off {} restarting failed container=a pod=p_rigs(u1)",
                            go_duration(Duration::from_secs(delay_s))
                        )
                    );
                }
                other => panic!("{other:?}"),
            }
            // Not before the delay.
            let early = at(t, delay_s * 1000 - 1);
            assert!(matches!(m.step(Event::Tick, early), Action::Wait(_)));
            t = at(t, delay_s * 1000);
            match m.step(Event::Tick, t) {
                Action::StartContainer { config, .. } => assert_eq!(config.attempt, n),
                other => panic!("{other:?}"),
            }
        }
        let action = m.step(
            Event::Started {
                index: 0,
                attempt: n,
                result: Ok(info("a", n, running(t.wall_ms))),
            },
            t,
        );
        // The exited instance is removed once its successor runs.
        assert_eq!(action, Action::RemoveContainers(vec![id.clone()]));
        m.step(Event::ContainersRemoved(vec![id]), t);
        let c = &m.status().expect("status").containers[0];
        assert_eq!(c.restart_count, n);
        assert!(matches!(c.state, ContainerState::Running { .. }));
    }
}

#[test]
fn a_long_run_resets_the_back_off() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.slots[0].crashes = 6;
    let later = at(now, 600_000);
    let action = m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(1, now.wall_ms, later.wall_ms)),
        )]),
        later,
    );
    // The count starts over: a first exit again, restarted at once.
    assert!(
        matches!(action, Action::StartContainer { .. }),
        "{action:?}"
    );
    assert_eq!(m.slots[0].crashes, 1);
}

#[test]
fn on_failure_with_success_completes() {
    let (mut m, now) = started(RestartPolicy::OnFailure, &["a"]);
    let action = m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(0, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    assert_eq!(action, Action::Wait(None));
    assert_eq!(m.state(), &PodState::Completed);
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Succeeded);
    assert!(matches!(
        st.containers[0].state,
        ContainerState::Terminated { exit_code: 0, .. }
    ));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.kind == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (false, "PodCompleted")
    );
}

#[test]
fn never_with_a_failure_fails_only_when_all_exited() {
    let (mut m, now) = started(RestartPolicy::Never, &["a", "b"]);
    m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(2, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    assert_eq!(m.phase(), PodPhase::Running, "b still runs");
    let t = at(now, 500);
    m.step(
        Event::Observed(vec![(
            1,
            "u1/b/0".into(),
            Ok(exited(0, now.wall_ms, t.wall_ms)),
        )]),
        t,
    );
    assert_eq!(m.phase(), PodPhase::Failed);
    assert_eq!(m.state(), &PodState::Completed);
}

#[test]
fn unknown_state_and_repeated_observe_errors_count_as_failures() {
    let (mut m, now) = started(RestartPolicy::OnFailure, &["a"]);
    let err = || {
        Err(Failure {
            reason: "RunContainerError".into(),
            message: "gone".into(),
        })
    };
    m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
    m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
    assert!(matches!(m.slots[0].phase, ContainerPhase::Running { .. }));
    m.step(Event::Observed(vec![(0, "u1/a/0".into(), err())]), now);
    // Lost while edgecore watched it: an exit that counts (a first one, restarted at once), and
    // its start is the one the machine saw.
    assert_eq!(m.slots[0].crashes, 1);
    assert!(matches!(
        m.slots[0].phase,
        ContainerPhase::Waiting { retry_at: None, .. }
    ));
    assert!(matches!(
        m.slots[0].last_state,
        Some(ContainerState::Terminated { started_at_ms, .. }) if started_at_ms == now.wall_ms
    ));

    let (mut m, now) = started(RestartPolicy::Never, &["a"]);
    m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(ContainerRunState::Unknown {
                message: "host rebooted".into(),
                started_at_ms: None,
            }),
        )]),
        now,
    );
    assert_eq!(m.phase(), PodPhase::Failed);
    match &m.status().expect("status").containers[0].state {
        ContainerState::Terminated {
            reason, message, ..
        } => {
            assert_eq!(reason, "ContainerStatusUnknown");
            assert_eq!(message, "host rebooted");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn start_errors_wait_with_the_runtime_reason_and_retry() {
    let now = t0();
    let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    let action = m.step(
        Event::Started {
            index: 0,
            attempt: 0,
            result: Err(Failure {
                reason: "CreateContainerError".into(),
                message: "no such program".into(),
            }),
        },
        now,
    );
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_secs(10)))
    );
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Pending);
    assert_eq!(
        st.containers[0].state,
        ContainerState::Waiting {
            reason: "CreateContainerError".into(),
            message: "no such program".into()
        }
    );
    match m.step(Event::Tick, at(now, 10_000)) {
        Action::StartContainer { config, .. } => assert_eq!(config.attempt, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn repeated_pull_failures_wait_in_image_pull_back_off() {
    let now = t0();
    let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    let pull_failed = || Event::Started {
        index: 0,
        attempt: 0,
        result: Err(Failure {
            reason: "ErrImagePull".into(),
            message: "no registry".into(),
        }),
    };
    let reason = |m: &PodMachine| match &m.status().expect("status").containers[0].state {
        ContainerState::Waiting { reason, .. } => reason.clone(),
        other => panic!("{other:?}"),
    };
    m.step(pull_failed(), now);
    assert_eq!(reason(&m), "ErrImagePull");
    let later = at(now, 10_000);
    assert!(matches!(
        m.step(Event::Tick, later),
        Action::StartContainer { .. }
    ));
    m.step(pull_failed(), later);
    assert_eq!(reason(&m), "ImagePullBackOff");
}

#[test]
fn huge_delays_saturate_instead_of_panicking() {
    let now = t0();
    let huge = Settings {
        backoff: BackoffPolicy {
            base: Duration::MAX,
            cap: Duration::MAX,
            reset_after: Duration::MAX,
        },
        poll_interval: Duration::MAX,
        ..clone_settings(&settings())
    };
    let mut m = PodMachine::new(
        Arc::new(huge),
        pod(RestartPolicy::Always, &["a"]),
        None,
        now,
    );
    m.step(Event::Tick, now);
    let failed = m.step(
        Event::SandboxCreated(Err(Failure {
            reason: "RunContainerError".into(),
            message: "disk full".into(),
        })),
        now,
    );
    match failed {
        Action::Wait(Some(at)) => assert!(at > at_secs(now, 86_400 * 365)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forced_deletion_shortens_a_graceful_one_in_progress() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut deleting = m.pod().clone();
    deleting.deletion_grace_period_seconds = Some(30);
    assert_eq!(
        m.step(Event::Update(deleting.clone()), now),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    // `kubectl delete --grace-period=0 --force` while the 30 s stop runs.
    deleting.deletion_grace_period_seconds = Some(0);
    assert_eq!(
        m.step(Event::Update(deleting.clone()), now),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::ZERO
        }
    );
    // A longer one does not lengthen it again.
    deleting.deletion_grace_period_seconds = Some(60);
    assert_eq!(
        m.step(Event::Update(deleting), now),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::ZERO
        }
    );
}

#[test]
fn a_deletion_shortens_the_stop_of_a_replacement() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut changed = m.pod().clone();
    changed.restart_policy = RestartPolicy::OnFailure;
    assert!(matches!(
        m.step(Event::Update(changed.clone()), now),
        Action::StopContainers { grace, .. } if grace == Duration::from_secs(30)
    ));
    changed.deletion_grace_period_seconds = Some(2);
    assert!(matches!(
        m.step(Event::Update(changed), now),
        Action::StopContainers { grace, .. } if grace == Duration::from_secs(2)
    ));
    assert!(matches!(
        m.state(),
        PodState::Terminating {
            then: AfterStop::Report,
            ..
        }
    ));
}

#[test]
fn sandbox_failures_are_retried_with_back_off() {
    let now = t0();
    let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
    m.step(Event::Tick, now);
    let fail = || {
        Event::SandboxCreated(Err(Failure {
            reason: "RunContainerError".into(),
            message: "disk full".into(),
        }))
    };
    assert_eq!(
        m.step(fail(), now),
        Action::Wait(Some(now.mono + Duration::from_secs(10)))
    );
    assert!(m.status().expect("status").message.contains("disk full"));
    let t = at(now, 10_000);
    assert_eq!(m.step(Event::Tick, t), Action::CreateSandbox);
    assert_eq!(
        m.step(fail(), t),
        Action::Wait(Some(t.mono + Duration::from_secs(20)))
    );
}

#[test]
fn missing_config_maps_are_config_errors() {
    let now = t0();
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    p.containers[0].env.push(EnvVar {
        name: "X".into(),
        value: EnvValue::ConfigMapKey {
            name: "cfg".into(),
            key: "k".into(),
            optional: false,
        },
    });
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    // The first container cannot start; the second one still does.
    match m.step(Event::SandboxCreated(Ok(sandbox())), now) {
        Action::StartContainer { index, .. } => assert_eq!(index, 1),
        other => panic!("{other:?}"),
    }
    match &m.status().expect("status").containers[0].state {
        ContainerState::Waiting { reason, message } => {
            assert_eq!(reason, "CreateContainerConfigError");
            assert!(message.contains("configmap \"cfg\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_config_change_retries_at_once_the_containers_waiting_for_their_configuration() {
    let now = t0();
    let (configs, view) = tokio::sync::watch::channel(Arc::new(ConfigSet::default()));
    let mut s = clone_settings(&settings());
    s.config = Arc::new(super::super::ConfigView(view));
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    p.containers[0].env.push(EnvVar {
        name: "X".into(),
        value: EnvValue::ConfigMapKey {
            name: "cfg".into(),
            key: "k".into(),
            optional: false,
        },
    });
    let mut m = PodMachine::new(Arc::new(s), p, None, now);
    m.step(Event::Tick, now);
    assert!(matches!(
        m.step(Event::SandboxCreated(Ok(sandbox())), now),
        Action::StartContainer { index: 1, .. }
    ));
    m.step(
        Event::Started {
            index: 1,
            attempt: 0,
            result: Ok(info("b", 0, running(now.wall_ms))),
        },
        now,
    );
    let action = m.step(
        Event::Observed(vec![(1, "u1/b/0".into(), Ok(running(now.wall_ms)))]),
        now,
    );
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_millis(500)))
    );
    // A change that does not bring the map: still waiting, with a fresh back-off.
    assert!(matches!(m.step(Event::ConfigChanged, now), Action::Wait(_)));
    // The map arrives: `a` starts now, not after its back-off.
    let mut set = ConfigSet::default();
    set.insert_config_map(protocol::config::EdgeConfigMap {
        namespace: "rigs".into(),
        name: "cfg".into(),
        data: BTreeMap::from([("k".into(), "v".into())]),
        binary_data: BTreeMap::new(),
    });
    configs.send_replace(Arc::new(set));
    let t = at(now, 100);
    match m.step(Event::ConfigChanged, t) {
        Action::StartContainer { index, config, .. } => {
            assert_eq!(index, 0);
            assert_eq!(config.env, [("X".to_string(), "v".to_string())]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_and_command_are_resolved_for_the_runtime() {
    let now = t0();
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.containers[0].env = vec![
        EnvVar {
            name: "IP".into(),
            value: EnvValue::FieldRef("status.podIP".into()),
        },
        EnvVar {
            name: "URL".into(),
            value: EnvValue::Literal("http://$(IP):80".into()),
        },
    ];
    p.containers[0].args = vec!["$(URL)".into()];
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    match m.step(Event::SandboxCreated(Ok(sandbox())), now) {
        Action::StartContainer {
            container, config, ..
        } => {
            assert_eq!(container.args, ["http://192.0.2.7:80"]);
            assert_eq!(config.env[1], ("URL".into(), "http://192.0.2.7:80".into()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deletion_stops_with_its_grace_then_reports_removed() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut deleting = m.pod().clone();
    deleting.deletion_grace_period_seconds = Some(3);
    let action = m.step(Event::Update(deleting), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(3)
        }
    );
    let st = m.status().expect("status");
    assert_eq!(
        st.phase,
        PodPhase::Running,
        "phase unchanged while stopping"
    );
    assert!(!st.removed);
    let killed = ContainerRunState::Exited {
        exit_code: 137,
        signal: Some(9),
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: now.wall_ms + 3000,
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), now);
    assert_eq!(
        action,
        Action::RemoveSandbox {
            sandbox: sandbox(),
            grace: Duration::from_secs(3)
        }
    );
    let action = m.step(Event::SandboxRemoved(Ok(())), now);
    assert_eq!(action, Action::Finish(Outcome::Deleted));
    let st = m.status().expect("status");
    assert!(st.removed);
    assert!(matches!(
        st.containers[0].state,
        ContainerState::Terminated { exit_code: 137, .. }
    ));
    // More updates change nothing.
    let again = m.pod().clone();
    assert_eq!(
        m.step(Event::Update(again), now),
        Action::Finish(Outcome::Deleted)
    );
}

#[test]
fn failed_stops_and_removals_are_retried() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(Event::Forget, now);
    assert!(m.status().is_none(), "a forgotten pod reports nothing");
    let fail = Failure {
        reason: "RunContainerError".into(),
        message: "stuck".into(),
    };
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail.clone()))]),
        now,
    );
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_secs(10)))
    );
    let t = at(now, 10_000);
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::StopContainers { .. }
    ));
    m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
        t,
    );
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::RemoveSandbox { .. }
    ));
    m.step(Event::SandboxRemoved(Err(fail)), t);
    assert!(matches!(m.step(Event::Tick, t), Action::Wait(Some(_))));
    let t = at(t, 10_000);
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::RemoveSandbox { .. }
    ));
    assert_eq!(
        m.step(Event::SandboxRemoved(Ok(())), t),
        Action::Finish(Outcome::Forgotten)
    );
}

#[test]
fn a_deleting_pod_that_never_ran_is_removed_at_once() {
    let now = t0();
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.deletion_grace_period_seconds = Some(30);
    let mut m = PodMachine::new(settings(), p, None, now);
    assert_eq!(m.step(Event::Tick, now), Action::Finish(Outcome::Deleted));
    let st = m.status().expect("status");
    assert!(st.removed);
    assert!(matches!(&st.containers[0].state,
        ContainerState::Terminated { reason, .. } if reason == "ContainerStatusUnknown"));
}

#[test]
fn labels_only_changes_restart_nothing_but_pod_spec_changes_replace() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut relabelled = m.pod().clone();
    relabelled.labels.insert("tier".into(), "edge".into());
    let action = m.step(Event::Update(relabelled), now);
    assert!(
        matches!(action, Action::Wait(_) | Action::Observe(_)),
        "{action:?}"
    );
    assert_eq!(m.state(), &PodState::Running);
    assert_eq!(m.pod().labels.len(), 1);

    // A pod-level change (here the restart policy): the pod is replaced.
    let mut changed = m.pod().clone();
    changed.restart_policy = RestartPolicy::OnFailure;
    let action = m.step(Event::Update(changed.clone()), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
        now,
    );
    // Back to a fresh start with the new spec.
    assert_eq!(
        m.step(Event::SandboxRemoved(Ok(())), now),
        Action::CreateSandbox
    );
    assert_eq!(m.pod(), &changed);
    assert_eq!(m.slots()[0].restart_count, 0);
}

#[test]
fn only_changed_containers_restart_but_other_changes_replace_the_pod() {
    let old = pod(RestartPolicy::Always, &["a", "b"]);
    let mut images = old.clone();
    images.containers[1].image = "local:v2".into();
    assert_eq!(spec_change(&old, &images), SpecChange::Containers(vec![1]));
    let mut relabelled = old.clone();
    relabelled.labels.insert("tier".into(), "edge".into());
    assert_eq!(spec_change(&old, &relabelled), SpecChange::Same);
    let added = pod(RestartPolicy::Always, &["a", "b", "c"]);
    assert_eq!(spec_change(&old, &added), SpecChange::Replace);
    let reordered = pod(RestartPolicy::Always, &["b", "a"]);
    assert_eq!(spec_change(&old, &reordered), SpecChange::Replace);
    let renamed = pod(RestartPolicy::Always, &["a", "c"]);
    assert_eq!(spec_change(&old, &renamed), SpecChange::Replace);
    let policy = pod(RestartPolicy::Never, &["a", "b"]);
    assert_eq!(spec_change(&old, &policy), SpecChange::Replace);
    let mut volumes = old.clone();
    volumes.volumes.push(protocol::pod::Volume {
        name: "v".into(),
        source: protocol::pod::VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: None,
        },
    });
    assert_eq!(spec_change(&old, &volumes), SpecChange::Replace);

    // Only b's image changed: b alone is stopped, with the pod's grace, and restarted as
    // its next attempt; the pod keeps running.
    let (mut m, now) = started(RestartPolicy::Always, &["a", "b"]);
    let mut changed = m.pod().clone();
    changed.containers[1].image = "local:v2".into();
    let action = m.step(Event::Update(changed.clone()), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(1, "u1/b/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    assert_eq!(m.state(), &PodState::Running);
    assert_eq!(m.phase(), PodPhase::Running);
    let action = m.step(
        Event::Stopped(vec![(1, "u1/b/0".into(), Ok(exited(143, 0, now.wall_ms)))]),
        now,
    );
    match action {
        Action::StartContainer {
            index,
            container,
            config,
        } => {
            assert_eq!((index, config.attempt), (1, 1));
            assert_eq!(container.image, "local:v2");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.phase(), PodPhase::Running);
    let action = m.step(
        Event::Started {
            index: 1,
            attempt: 1,
            result: Ok(info("b", 1, running(now.wall_ms))),
        },
        now,
    );
    assert_eq!(action, Action::RemoveContainers(vec!["u1/b/0".into()]));
    m.step(Event::ContainersRemoved(vec!["u1/b/0".into()]), now);
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Running);
    assert_eq!(st.containers[0].container_id, "u1/a/0");
    assert_eq!(st.containers[0].restart_count, 0);
    assert_eq!(st.containers[1].container_id, "u1/b/1");
    assert_eq!(st.containers[1].restart_count, 1);
    assert_eq!(st.containers[1].image, "local:v2");
    assert!(matches!(
        st.containers[1].last_state,
        Some(ContainerState::Terminated { exit_code: 143, .. })
    ));
    assert_eq!(m.pod(), &changed);

    // The list of containers changed: the whole pod is replaced.
    let mut more = m.pod().clone();
    more.containers.push(container("c"));
    assert!(matches!(
        m.step(Event::Update(more), now),
        Action::StopContainers { targets, .. } if targets.len() == 2
    ));
    assert!(matches!(
        m.state(),
        PodState::Terminating {
            then: AfterStop::Replace(_),
            ..
        }
    ));
}

#[test]
fn a_failed_restart_stop_is_retried_and_a_deletion_takes_over() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let mut changed = m.pod().clone();
    changed.containers[0].image = "local:v2".into();
    m.step(Event::Update(changed), now);
    let fail = Failure {
        reason: "RunContainerError".into(),
        message: "stuck".into(),
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
    // Not stopped again before the back-off; the pod is still watched meanwhile.
    assert_eq!(action, Action::Observe(vec![(0, "u1/a/0".into())]));
    let action = m.step(
        Event::Observed(vec![(0, "u1/a/0".into(), Ok(running(now.wall_ms)))]),
        now,
    );
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_millis(500)))
    );
    let t = at(now, 10_000);
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::StopContainers { .. }
    ));
    let mut deleting = m.pod().clone();
    deleting.deletion_grace_period_seconds = Some(0);
    assert_eq!(
        m.step(Event::Update(deleting), t),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::ZERO
        }
    );
    m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
        t,
    );
    assert_eq!(
        m.step(Event::SandboxRemoved(Ok(())), t),
        Action::Finish(Outcome::Deleted)
    );
}

#[test]
fn adoption_restarts_instances_of_another_spec() {
    let now = t0();
    let p = pod(RestartPolicy::Always, &["a", "b", "c"]);
    let digest_of = |c: &EdgeContainer| Some(container_digest(c));
    let mut older = p.containers[1].clone();
    older.command = vec!["sleep".into(), "1".into()];
    let with = |mut i: ContainerInfo, digest| {
        i.spec_digest = digest;
        i
    };
    let existing = ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![
            with(info("a", 0, running(100)), digest_of(&p.containers[0])),
            with(info("b", 2, running(100)), digest_of(&older)),
            // Started before digests were recorded: taken to match.
            info("c", 0, running(100)),
        ],
    };
    let mut m = PodMachine::new(settings(), p, Some(existing), now);
    assert_eq!(
        m.step(Event::Tick, now),
        Action::StopContainers {
            targets: vec![(1, "u1/b/2".into())],
            grace: Duration::from_secs(30)
        }
    );
    match m.step(
        Event::Stopped(vec![(1, "u1/b/2".into(), Ok(exited(143, 100, 200)))]),
        now,
    ) {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (1, 3))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forgotten_pod_wanted_again_is_replaced() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(Event::Forget, now);
    let p = m.pod().clone();
    m.step(Event::Update(p), now);
    assert!(matches!(
        m.state(),
        PodState::Terminating {
            then: AfterStop::Replace(_),
            ..
        }
    ));
}

#[test]
fn adoption_keeps_running_containers_and_their_restart_count() {
    let now = t0();
    let existing = ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![
            info("a", 2, exited(1, 1, 2)),
            info("a", 3, running(500)),
            info("b", 0, running(200)),
            info("old", 0, running(100)),
        ],
    };
    let mut m = PodMachine::new(
        settings(),
        pod(RestartPolicy::Always, &["a", "b", "c"]),
        Some(existing),
        now,
    );
    let st = m.status().expect("status");
    assert_eq!(st.containers[0].restart_count, 3);
    assert_eq!(st.containers[0].container_id, "u1/a/3");
    assert_eq!(st.containers[1].container_id, "u1/b/0");
    assert_eq!(st.start_time_ms, 200);
    assert_eq!(st.phase, PodPhase::Pending, "c never ran");
    // Leftovers go first, then the missing container starts; nothing running is restarted.
    let action = m.step(Event::Tick, now);
    assert_eq!(
        action,
        Action::RemoveContainers(vec!["u1/a/2".into(), "u1/old/0".into()])
    );
    match m.step(
        Event::ContainersRemoved(vec!["u1/a/2".into(), "u1/old/0".into()]),
        now,
    ) {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (2, 0))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn adoption_of_an_exited_container_applies_the_policy() {
    let now = t0();
    let existing = |state| ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![info("a", 1, state)],
    };
    // Exited 4 s ago under Always, its exit recorded: it counts, but the back-off history
    // started over with edgecore, so it is a first exit and restarts at once.
    let finished = now.wall_ms - 4000;
    let mut m = PodMachine::new(
        settings(),
        pod(RestartPolicy::Always, &["a"]),
        Some(existing(exited(1, finished - 10, finished))),
        now,
    );
    match m.step(Event::Tick, now) {
        Action::StartContainer { config, .. } => assert_eq!(config.attempt, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.slots[0].crashes, 1);
    let c = &m.status().expect("status").containers[0];
    assert_eq!(c.restart_count, 1);
    assert!(
        matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "ContainerCreating")
    );
    assert!(matches!(c.last_state,
        Some(ContainerState::Terminated { exit_code: 1, started_at_ms, .. }) if started_at_ms == finished - 10));
    // Its next exit is a second one: the first back-off step, 10 s.
    let t = at(now, 100);
    let action = m.step(
        Event::Started {
            index: 0,
            attempt: 2,
            result: Ok(info("a", 2, running(now.wall_ms))),
        },
        t,
    );
    assert_eq!(action, Action::RemoveContainers(vec!["u1/a/1".into()]));
    m.step(Event::ContainersRemoved(vec!["u1/a/1".into()]), t);
    let action = m.step(
        Event::Observed(vec![(
            0,
            "u1/a/2".into(),
            Ok(exited(1, now.wall_ms, t.wall_ms)),
        )]),
        t,
    );
    let action = past_polls(&mut m, action, t);
    assert_eq!(action, Action::Wait(Some(t.mono + Duration::from_secs(10))));

    let mut m = PodMachine::new(
        settings(),
        pod(RestartPolicy::OnFailure, &["a"]),
        Some(existing(exited(0, 1, 2))),
        now,
    );
    assert_eq!(m.step(Event::Tick, now), Action::Wait(None));
    assert_eq!(m.phase(), PodPhase::Succeeded);
}

/// An instance the runtime lost while edgecore was down (a power cut: shim and process gone,
/// no exit recorded).
fn lost_instance(started_at_ms: Option<u64>) -> ContainerRunState {
    ContainerRunState::Unknown {
        message: "process 7 is gone and its shim died without recording an exit code".into(),
        started_at_ms,
    }
}

#[test]
fn containers_lost_in_a_reboot_restart_at_once_and_do_not_count() {
    let now = t0();
    let started_at = now.wall_ms - 60_000;
    // Crash-looping before the reboot (attempt 5), and a second container that ran fine.
    let existing = ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![
            info("a", 5, lost_instance(Some(started_at))),
            info("b", 0, lost_instance(Some(started_at))),
        ],
    };
    let mut m = PodMachine::new(
        settings(),
        pod(RestartPolicy::Always, &["a", "b"]),
        Some(existing),
        now,
    );
    // Both start again at once, in order, with their next attempts.
    let mut action = m.step(Event::Tick, now);
    for (index, attempt, name) in [(0usize, 6u32, "a"), (1, 1, "b")] {
        match &action {
            Action::StartContainer {
                index: i, config, ..
            } => assert_eq!((*i, config.attempt), (index, attempt)),
            other => panic!("{other:?}"),
        }
        let st = m.status().expect("status");
        for c in &st.containers {
            assert!(
                !matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff"),
                "{c:?}"
            );
        }
        action = m.step(
            Event::Started {
                index,
                attempt,
                result: Ok(info(name, attempt, running(now.wall_ms))),
            },
            now,
        );
        // The lost instance is removed once its successor runs.
        let gone = format!("u1/{name}/{}", attempt - 1);
        assert_eq!(action, Action::RemoveContainers(vec![gone.clone()]));
        action = m.step(Event::ContainersRemoved(vec![gone]), now);
    }
    // Nothing counted: the lost instances were no crashes.
    assert!(m.slots.iter().all(|s| s.crashes == 0));
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Running);
    let a = &st.containers[0];
    assert_eq!(a.restart_count, 6);
    match &a.last_state {
        Some(ContainerState::Terminated {
            reason,
            started_at_ms,
            exit_code,
            ..
        }) => {
            assert_eq!(reason, "ContainerStatusUnknown");
            assert_eq!(*exit_code, 137);
            // The start the runtime recorded, not 1970.
            assert_eq!(*started_at_ms, started_at);
        }
        other => panic!("{other:?}"),
    }
    // A crash after the reboot is a first exit: restarted at once as well.
    let action = past_polls(&mut m, action, now);
    assert!(matches!(action, Action::Wait(_)), "{action:?}");
    let t = at(now, 1_000);
    let action = m.step(
        Event::Observed(vec![(
            0,
            "u1/a/6".into(),
            Ok(exited(1, now.wall_ms, t.wall_ms)),
        )]),
        t,
    );
    assert!(
        matches!(action, Action::StartContainer { index: 0, .. }),
        "{action:?}"
    );
}

/// How an adopted instance was found, for the property below.
fn found_state(kind: u8, started_at_ms: u64, finished_at_ms: u64) -> ContainerRunState {
    match kind % 4 {
        0 => lost_instance(Some(started_at_ms)),
        1 => lost_instance(None),
        2 => exited(1, started_at_ms, finished_at_ms),
        _ => exited(0, started_at_ms, finished_at_ms),
    }
}

proptest::proptest! {
    /// Whatever edgecore finds dead at its start (lost in a reboot or exited while it was down,
    /// after any number of restarts, under any policy), nothing waits in `CrashLoopBackOff`:
    /// every container its policy restarts runs again without a timer, and only recorded exits
    /// count.
    #[test]
    fn nothing_found_dead_at_start_waits_for_a_back_off(
        found in proptest::collection::vec((0u8..4, 0u32..40, 0u64..900_000), 1..4),
        policy in 0u8..3,
    ) {
        let now = t0();
        let policy = [RestartPolicy::Always, RestartPolicy::OnFailure, RestartPolicy::Never]
            [policy as usize];
        let names: Vec<String> = (0..found.len()).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let containers = found
            .iter()
            .zip(&names)
            .map(|((kind, attempt, ago), name)| {
                let finished = now.wall_ms - ago;
                info(name, *attempt, found_state(*kind, finished.saturating_sub(5_000), finished))
            })
            .collect();
        let existing = ExistingPod {
            sandbox: sandbox(),
            namespace: "rigs".into(),
            name: "p".into(),
            containers,
        };
        let mut m = PodMachine::new(settings(), pod(policy, &refs), Some(existing), now);
        let mut action = m.step(Event::Tick, now);
        for _ in 0..20 {
            for slot in m.slots() {
                proptest::prop_assert!(
                    !matches!(slot.phase, ContainerPhase::BackOff { .. }),
                    "{slot:?}"
                );
            }
            action = match action {
                Action::StartContainer { index, config, .. } => m.step(
                    Event::Started {
                        index,
                        attempt: config.attempt,
                        result: Ok(info(&names[index], config.attempt, running(now.wall_ms))),
                    },
                    now,
                ),
                Action::RemoveContainers(ids) => m.step(Event::ContainersRemoved(ids), now),
                other => {
                    action = other;
                    break;
                }
            };
        }
        // Nothing is left waiting for a timer.
        proptest::prop_assert!(
            matches!(action, Action::Observe(_) | Action::Wait(None)),
            "{action:?}"
        );
        for (slot, (kind, attempt, _)) in m.slots().iter().zip(&found) {
            let exit_code = if kind % 4 == 3 { 0 } else { 137 };
            let restarts = policy.restarts_after(exit_code);
            if restarts {
                proptest::prop_assert!(
                    matches!(slot.phase, ContainerPhase::Running { .. }),
                    "{slot:?}"
                );
                proptest::prop_assert_eq!(slot.restart_count, attempt + 1);
            }
            // A lost instance never counts; a recorded exit counts once (a first exit).
            let counted = u32::from(restarts && kind % 4 >= 2);
            proptest::prop_assert_eq!(slot.crashes, counted, "{:?}", slot);
        }
    }
}

#[test]
fn a_lost_container_under_never_stays_ended_and_the_pod_fails() {
    let now = t0();
    let existing = ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![info("a", 0, lost_instance(None))],
    };
    let mut m = PodMachine::new(
        settings(),
        pod(RestartPolicy::Never, &["a"]),
        Some(existing),
        now,
    );
    assert_eq!(m.step(Event::Tick, now), Action::Wait(None));
    assert_eq!(m.phase(), PodPhase::Failed);
}

#[test]
fn an_adopted_deleting_pod_is_stopped_again() {
    let now = t0();
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.deletion_grace_period_seconds = Some(5);
    let existing = ExistingPod {
        sandbox: sandbox(),
        namespace: "rigs".into(),
        name: "p".into(),
        containers: vec![info("a", 0, running(100))],
    };
    let mut m = PodMachine::new(settings(), p, Some(existing), now);
    assert_eq!(
        m.step(Event::Tick, now),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(5)
        }
    );
}

#[test]
fn conditions_keep_their_transition_times() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let ready_at = |m: &PodMachine| {
        m.status()
            .expect("status")
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .map(|c| (c.status, c.last_transition_ms))
            .expect("Ready")
    };
    let first = ready_at(&m);
    let t = at(now, 500);
    m.step(
        Event::Observed(vec![(0, "u1/a/0".into(), Ok(running(now.wall_ms)))]),
        t,
    );
    assert_eq!(ready_at(&m), first, "no flap without a change");
    let t = at(now, 1000);
    m.step(
        Event::Observed(vec![(0, "u1/a/0".into(), Ok(exited(1, 0, t.wall_ms)))]),
        t,
    );
    assert_eq!(ready_at(&m), (false, t.wall_ms));
}

#[test]
fn phase_follows_the_containers() {
    let mut a = ContainerSlot::new(&container("a"), SlotKind::App);
    assert_eq!(
        containers_phase(std::slice::from_ref(&a)),
        PodPhase::Pending
    );
    a.ever_started = true;
    a.phase = ContainerPhase::running("x".into(), 0, 0);
    assert_eq!(
        containers_phase(std::slice::from_ref(&a)),
        PodPhase::Running
    );
    let done = |code| ContainerPhase::Exited {
        id: "x".into(),
        attempt: 0,
        terminated: ContainerState::Terminated {
            exit_code: code,
            signal: None,
            reason: String::new(),
            message: String::new(),
            started_at_ms: 0,
            finished_at_ms: 0,
        },
    };
    let mut b = a.clone();
    b.phase = done(0);
    assert_eq!(containers_phase(&[a.clone(), b.clone()]), PodPhase::Running);
    a.phase = done(0);
    assert_eq!(
        containers_phase(&[a.clone(), b.clone()]),
        PodPhase::Succeeded
    );
    a.phase = done(3);
    assert_eq!(containers_phase(&[a.clone(), b.clone()]), PodPhase::Failed);
    // A container waiting to be restarted keeps the pod running.
    a.phase = ContainerPhase::Waiting {
        reason: "CreateContainerError".into(),
        message: String::new(),
        retry_at: None,
    };
    assert_eq!(containers_phase(&[a, b]), PodPhase::Running);
}

/// The sandbox made to replace a dead one.
pub(super) fn new_sandbox() -> Sandbox {
    Sandbox {
        id: "u1-attempt-1".into(),
        pod_uid: "u1".into(),
        ip: "10.88.0.9".into(),
    }
}

/// The sandbox that died, as the machine keeps it: without its IP.
fn dead_sandbox() -> Sandbox {
    Sandbox {
        ip: String::new(),
        ..sandbox()
    }
}

pub(super) fn lost() -> Event {
    Event::SandboxNotReady {
        sandbox_id: sandbox().id,
    }
}

#[test]
fn a_lost_sandbox_is_replaced_and_its_containers_start_again_in_the_new_one() {
    let (mut m, now) = started(RestartPolicy::Always, &["a", "b"]);
    // b crashed (its second exit) and waits in back-off (10 s) when the sandbox dies.
    m.slots[1].crashes = 1;
    m.step(
        Event::Observed(vec![(
            1,
            "u1/b/0".into(),
            Ok(exited(1, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    let t = at(now, 1_000);
    let action = m.step(lost(), t);
    assert_eq!(m.state().name(), "SandboxLost");
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Running);
    assert_eq!(st.pod_ip, "", "a dead sandbox's IP is not reported");
    assert!(!ready_condition(&m).status);
    // Another report of the same loss changes nothing.
    assert_eq!(m.step(lost(), t), action);

    let killed = ContainerRunState::Exited {
        exit_code: 143,
        signal: Some(15),
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: t.wall_ms,
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Ok(killed))]), t);
    assert_eq!(action, Action::CreateSandbox);
    let st = m.status().expect("status");
    assert_eq!(
        st.phase,
        PodPhase::Running,
        "a replaced sandbox is no new pod"
    );
    assert_eq!(st.pod_ip, "");
    let a = &st.containers[0];
    assert_eq!(a.restart_count, 0);
    assert!(
        matches!(&a.state, ContainerState::Waiting { reason, .. } if reason == "ContainerCreating")
    );
    assert!(matches!(
        &a.last_state,
        Some(ContainerState::Terminated { exit_code: 143, reason, .. }) if reason == "Error"
    ));

    // The new sandbox: a starts at once as its next attempt; b keeps its back-off.
    let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), t);
    match action {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (0, 1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.sandbox(), Some(&new_sandbox()));
    let action = m.step(
        Event::Started {
            index: 0,
            attempt: 1,
            result: Ok(info("a", 1, running(t.wall_ms))),
        },
        t,
    );
    // The instance stopped in the dead sandbox goes once its successor runs.
    assert_eq!(action, Action::RemoveContainers(vec!["u1/a/0".into()]));
    let action = m.step(Event::ContainersRemoved(vec!["u1/a/0".into()]), t);
    assert!(matches!(action, Action::Observe(ref targets) if targets.len() == 1));
    let st = m.status().expect("status");
    assert_eq!(st.pod_ip, "10.88.0.9");
    assert_eq!(st.start_time_ms, now.wall_ms, "the pod's start time stays");
    let a = &st.containers[0];
    assert_eq!((a.restart_count, a.container_id.as_str()), (1, "u1/a/1"));
    assert!(matches!(a.state, ContainerState::Running { .. }) && a.ready);
    assert!(matches!(
        a.last_state,
        Some(ContainerState::Terminated { exit_code: 143, .. })
    ));
    assert!(matches!(
        &st.containers[1].state,
        ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff"
    ));
    // A late report about the old sandbox is about nothing that runs now.
    let action = past_polls(&mut m, action, t);
    assert_eq!(m.step(lost(), t), action);
    assert_eq!(m.state(), &PodState::Running);

    let t = at(now, 10_000);
    match m.step(Event::Tick, t) {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (1, 1))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_restart_policy_decides_which_stopped_containers_run_in_the_new_sandbox() {
    // (policy, exit code of the stop, starts again)
    for (policy, code, again) in [
        (RestartPolicy::Always, 0, true),
        (RestartPolicy::Always, 137, true),
        (RestartPolicy::OnFailure, 143, true),
        (RestartPolicy::OnFailure, 0, false),
        (RestartPolicy::Never, 143, false),
    ] {
        let (mut m, now) = started(policy, &["a"]);
        m.step(lost(), now);
        let action = m.step(
            Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(code, 0, 1)))]),
            now,
        );
        if again {
            assert_eq!(action, Action::CreateSandbox, "{policy:?} {code}");
            assert!(matches!(
                m.slots()[0].phase,
                ContainerPhase::Waiting { retry_at: None, .. }
            ));
            continue;
        }
        // Nothing to run: no new sandbox; the dead one goes with the pod.
        assert_eq!(action, Action::Wait(None), "{policy:?} {code}");
        assert_eq!(m.state(), &PodState::Completed);
        assert_eq!(m.status().expect("status").pod_ip, "");
        let expected = if code == 0 {
            PodPhase::Succeeded
        } else {
            PodPhase::Failed
        };
        assert_eq!(m.phase(), expected, "{policy:?} {code}");
        let mut deleting = m.pod().clone();
        deleting.deletion_grace_period_seconds = Some(0);
        assert_eq!(
            m.step(Event::Update(deleting), now),
            Action::RemoveSandbox {
                sandbox: dead_sandbox(),
                grace: Duration::ZERO
            }
        );
    }
}

#[test]
fn with_never_only_containers_that_never_ran_get_a_new_sandbox() {
    let (mut m, now) = started(RestartPolicy::Never, &["a", "b"]);
    // a exited before the sandbox died; b runs.
    m.step(
        Event::Observed(vec![(0, "u1/a/0".into(), Ok(exited(0, 0, 1)))]),
        now,
    );
    let action = m.step(lost(), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(1, "u1/b/0".into())],
            grace: Duration::from_secs(30)
        }
    );
    let action = m.step(
        Event::Stopped(vec![(1, "u1/b/0".into(), Ok(exited(137, 0, 1)))]),
        now,
    );
    assert_eq!(action, Action::Wait(None));
    assert_eq!(m.phase(), PodPhase::Failed);

    // A container that never ran (its start kept failing) is still to run.
    let mut p = pod(RestartPolicy::Never, &["a", "b"]);
    p.containers[1].command = vec![];
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    m.step(
        Event::Started {
            index: 0,
            attempt: 0,
            result: Ok(info("a", 0, running(now.wall_ms))),
        },
        now,
    );
    let failure = Failure {
        reason: "CreateContainerError".into(),
        message: "no command".into(),
    };
    m.step(
        Event::Started {
            index: 1,
            attempt: 0,
            result: Err(failure),
        },
        now,
    );
    assert_eq!(m.phase(), PodPhase::Pending);
    m.step(lost(), now);
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
        now,
    );
    assert_eq!(action, Action::CreateSandbox);
    // Its start back-off is not waited for in the new sandbox; a stays exited.
    let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), now);
    assert!(
        matches!(action, Action::StartContainer { index: 1, ref config, .. } if config.attempt == 0),
        "{action:?}"
    );
    assert!(matches!(m.slots()[0].phase, ContainerPhase::Exited { .. }));
}

#[test]
fn a_start_that_finds_the_sandbox_dead_replaces_it_at_once() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(1, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    let t = at(now, 10_000);
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::StartContainer { .. }
    ));
    // The worker feeds a start failing with `SandboxNotReady` as this event: nothing runs,
    // so a new sandbox at once, and the start is not counted as a failure.
    assert_eq!(m.step(lost(), t), Action::CreateSandbox);
    let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), t);
    match action {
        Action::StartContainer { index, config, .. } => {
            assert_eq!((index, config.attempt), (0, 1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.slots()[0].start_failures, 0);
}

#[test]
fn a_failed_stop_in_a_lost_sandbox_is_retried_before_a_new_one_is_made() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(lost(), now);
    let fail = Failure {
        reason: "RunContainerError".into(),
        message: "stuck".into(),
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/a/0".into(), Err(fail))]), now);
    assert_eq!(
        action,
        Action::Wait(Some(now.mono + Duration::from_secs(10)))
    );
    // Still running after a stop that succeeded: stopped again too.
    let t = at(now, 10_000);
    assert!(matches!(
        m.step(Event::Tick, t),
        Action::StopContainers { .. }
    ));
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(running(0)))]),
        t,
    );
    assert_eq!(action, Action::Wait(Some(t.mono + Duration::from_secs(20))));
    let t = at(t, 20_000);
    m.step(Event::Tick, t);
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(137, 0, 1)))]),
        t,
    );
    assert_eq!(action, Action::CreateSandbox);
}

#[test]
fn a_pod_deleted_while_its_sandbox_is_replaced_just_finishes_deleting() {
    // Deleted while its containers are stopped for the replacement: the stop goes on with
    // the deletion's (shorter) grace, and the dead sandbox is removed.
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(lost(), now);
    let mut deleting = m.pod().clone();
    deleting.deletion_grace_period_seconds = Some(3);
    assert_eq!(
        m.step(Event::Update(deleting.clone()), now),
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(3)
        }
    );
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
        now,
    );
    assert_eq!(
        action,
        Action::RemoveSandbox {
            sandbox: dead_sandbox(),
            grace: Duration::from_secs(3)
        }
    );
    assert_eq!(
        m.step(Event::SandboxRemoved(Ok(())), now),
        Action::Finish(Outcome::Deleted)
    );
    assert!(matches!(
        m.status().expect("status").containers[0].state,
        ContainerState::Terminated { exit_code: 143, .. }
    ));

    // Deleted while the new sandbox is being made: the dead one is still removed (with the
    // pod's volumes), not skipped as if the pod never had one.
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    m.step(lost(), now);
    let action = m.step(
        Event::Stopped(vec![(0, "u1/a/0".into(), Ok(exited(143, 0, 1)))]),
        now,
    );
    assert_eq!(action, Action::CreateSandbox);
    let fail = Failure {
        reason: "RunContainerError".into(),
        message: "no network".into(),
    };
    m.step(Event::SandboxCreated(Err(fail)), now);
    assert_eq!(m.phase(), PodPhase::Running);
    assert_eq!(
        m.step(Event::Update(deleting), now),
        Action::RemoveSandbox {
            sandbox: dead_sandbox(),
            grace: Duration::from_secs(3)
        }
    );
    // A loss reported now is about a pod that is going anyway.
    assert!(matches!(m.step(lost(), now), Action::RemoveSandbox { .. }));
}

/// Counts the `skerry_pod_events_ignored_total` increments made while it is the local recorder.
#[derive(Default)]
struct IgnoredEvents(std::cell::RefCell<Vec<(metrics::Key, Arc<std::sync::atomic::AtomicU64>)>>);

impl IgnoredEvents {
    /// The count for (state, event).
    fn count(&self, state: &str, event: &str) -> u64 {
        self.0
            .borrow()
            .iter()
            .filter(|(key, _)| {
                key.name() == "skerry_pod_events_ignored_total"
                    && key
                        .labels()
                        .any(|l| l.key() == "state" && l.value() == state)
                    && key
                        .labels()
                        .any(|l| l.key() == "event" && l.value() == event)
            })
            .map(|(_, n)| n.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

impl metrics::Recorder for IgnoredEvents {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.0.borrow_mut().push((key.clone(), n.clone()));
        metrics::Counter::from_arc(n)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn events_that_mean_nothing_in_the_state_are_ignored_and_counted() {
    let (mut m, now) = started(RestartPolicy::Always, &["a"]);
    let before = m.status();
    let recorder = IgnoredEvents::default();
    metrics::with_local_recorder(&recorder, || {
        // A late sandbox result, a removal outside Terminating, a stale sandbox, another uid's
        // update, a verdict on an instance that is gone, a start for a slot that does not exist.
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        m.step(Event::SandboxRemoved(Ok(())), now);
        m.step(
            Event::SandboxNotReady {
                sandbox_id: "an-earlier-sandbox".into(),
            },
            now,
        );
        let mut other = pod(RestartPolicy::Always, &["a"]);
        other.uid = "u2".into();
        m.step(Event::Update(other), now);
        m.step(verdict(0, "u1/a/41", ProbeKind::Readiness, false), now);
        m.step(
            Event::Started {
                index: 7,
                attempt: 0,
                result: Ok(info("z", 0, running(now.wall_ms))),
            },
            now,
        );
    });
    assert_eq!(m.state(), &PodState::Running);
    assert_eq!(m.status(), before, "ignored events change nothing");
    for event in [
        "SandboxCreated",
        "SandboxRemoved",
        "SandboxNotReady",
        "Update",
        "Probe",
        "Started",
    ] {
        assert_eq!(recorder.count("Running", event), 1, "{event}");
    }
    assert_eq!(recorder.count("Running", "Tick"), 0);
}
