//! Unit tests of init containers and sidecars in the pod machine (see `init`): order,
//! failure and restart per policy, sidecars beside the app containers and stopped after them,
//! and init containers running again in a new sandbox.

use super::tests::{
    container, exec_probe, exited, info, lost, new_sandbox, past_polls, pod, running, sandbox,
    settings, t0, verdict,
};
use super::*;
use crate::pods::probes::ProbeKind;
use protocol::pod::{EdgeInitContainer, RestartPolicy};
use protocol::status::ContainerState;

/// A pod of `policy` with init containers `init` (a name ending in `+` is a sidecar) and app
/// containers `apps`.
fn init_pod(policy: RestartPolicy, init: &[&str], apps: &[&str]) -> EdgePod {
    let mut p = pod(policy, apps);
    p.init_containers = init
        .iter()
        .map(|n| EdgeInitContainer {
            container: container(n.trim_end_matches('+')),
            sidecar: n.ends_with('+'),
        })
        .collect();
    p
}

fn start_of(action: &Action) -> Option<(usize, u32)> {
    match action {
        Action::StartContainer { index, config, .. } => Some((*index, config.attempt)),
        _ => None,
    }
}

/// Carries out removals of superseded instances, which are not what these tests look at.
fn past_removals(m: &mut PodMachine, mut action: Action, t: Now) -> Action {
    while let Action::RemoveContainers(ids) = action {
        action = m.step(Event::ContainersRemoved(ids), t);
    }
    action
}

fn started_ok(m: &mut PodMachine, index: usize, name: &str, attempt: u32, t: Now) -> Action {
    let action = m.step(
        Event::Started {
            index,
            attempt,
            result: Ok(info(name, attempt, running(t.wall_ms))),
        },
        t,
    );
    past_removals(m, action, t)
}

fn exit_of(m: &mut PodMachine, index: usize, id: &str, code: i32, t: Now) -> Action {
    let action = m.step(
        Event::Observed(vec![(
            index,
            id.into(),
            Ok(exited(code, t.wall_ms, t.wall_ms)),
        )]),
        t,
    );
    past_removals(m, action, t)
}

fn waiting_reason(state: &ContainerState) -> &str {
    match state {
        ContainerState::Waiting { reason, .. } => reason,
        _ => "",
    }
}

fn condition(m: &PodMachine, kind: &str) -> PodCondition {
    m.status()
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.kind == kind)
        .expect(kind)
}

#[test]
fn init_containers_run_in_order_each_to_completion_before_the_app_containers() {
    let now = t0();
    let p = init_pod(RestartPolicy::Always, &["a", "b"], &["c"]);
    let mut m = PodMachine::new(settings(), p, None, now);
    assert_eq!(m.step(Event::Tick, now), Action::CreateSandbox);
    let action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
    assert_eq!(start_of(&action), Some((0, 0)));
    let st = m.status().unwrap();
    assert_eq!(st.phase, PodPhase::Pending);
    assert_eq!(st.init_containers.len(), 2);
    assert_eq!(st.containers.len(), 1);
    assert_eq!(waiting_reason(&st.containers[0].state), "PodInitializing");
    let init = condition(&m, "Initialized");
    assert!(!init.status);
    assert_eq!(init.reason, "ContainersNotInitialized");
    assert_eq!(init.message, "containers with incomplete status: [a b]");

    // a runs: b waits for it to finish.
    let action = started_ok(&mut m, 0, "a", 0, now);
    assert!(matches!(action, Action::Observe(_)), "{action:?}");
    let action = past_polls(&mut m, action, now);
    assert!(start_of(&action).is_none(), "{action:?}");
    // a exits 0: b starts, and a is done (no restart, even with restartPolicy Always).
    let action = exit_of(&mut m, 0, "u1/a/0", 0, now);
    assert_eq!(start_of(&action), Some((1, 0)));
    let action = started_ok(&mut m, 1, "b", 0, now);
    assert!(start_of(&action).is_none(), "c waits for b: {action:?}");
    assert_eq!(m.status().unwrap().phase, PodPhase::Pending);
    let action = exit_of(&mut m, 1, "u1/b/0", 0, now);
    assert_eq!(start_of(&action), Some((2, 0)), "the app starts after both");
    assert!(condition(&m, "Initialized").status);
    started_ok(&mut m, 2, "c", 0, now);
    let st = m.status().unwrap();
    assert_eq!(st.phase, PodPhase::Running);
    for c in &st.init_containers {
        assert!(
            matches!(&c.state, ContainerState::Terminated { exit_code: 0, .. }),
            "{c:?}"
        );
        assert_eq!(c.restart_count, 0);
        assert!(!c.ready);
    }
    assert!(st.containers[0].ready);
    assert!(
        condition(&m, "Ready").status,
        "init containers do not hold readiness"
    );
}

#[test]
fn a_failing_init_container_restarts_with_the_back_off_and_holds_the_app_containers() {
    for policy in [RestartPolicy::Always, RestartPolicy::OnFailure] {
        let now = t0();
        let mut m = PodMachine::new(settings(), init_pod(policy, &["a"], &["c"]), None, now);
        m.step(Event::Tick, now);
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        started_ok(&mut m, 0, "a", 0, now);
        // A first exit restarts at once, as for app containers.
        let action = exit_of(&mut m, 0, "u1/a/0", 1, now);
        assert_eq!(start_of(&action), Some((0, 1)), "{policy:?}");
        started_ok(&mut m, 0, "a", 1, now);
        // The second waits in CrashLoopBackOff (10 s), and the app container still waits.
        let action = exit_of(&mut m, 0, "u1/a/1", 1, now);
        let Action::Wait(Some(until)) = action else {
            panic!("{action:?}")
        };
        assert_eq!(until, now.mono + Duration::from_secs(10));
        let st = m.status().unwrap();
        assert_eq!(st.phase, PodPhase::Pending);
        assert_eq!(
            waiting_reason(&st.init_containers[0].state),
            "CrashLoopBackOff"
        );
        assert_eq!(st.init_containers[0].restart_count, 1);
        assert_eq!(waiting_reason(&st.containers[0].state), "PodInitializing");
        let t = super::tests::at(now, 10_000);
        assert_eq!(start_of(&m.step(Event::Tick, t)), Some((0, 2)));
    }
}

#[test]
fn with_restart_policy_never_a_failed_init_container_fails_the_pod() {
    let now = t0();
    let p = init_pod(RestartPolicy::Never, &["a", "b"], &["c"]);
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    started_ok(&mut m, 0, "a", 0, now);
    let action = exit_of(&mut m, 0, "u1/a/0", 2, now);
    assert_eq!(action, Action::Wait(None), "nothing else starts");
    assert_eq!(m.state(), &PodState::Completed);
    let st = m.status().unwrap();
    assert_eq!(st.phase, PodPhase::Failed);
    assert!(matches!(
        &st.init_containers[0].state,
        ContainerState::Terminated { exit_code: 2, .. }
    ));
    assert_eq!(
        waiting_reason(&st.init_containers[1].state),
        "ContainerCreating"
    );
    assert_eq!(waiting_reason(&st.containers[0].state), "PodInitializing");
    assert!(!condition(&m, "Initialized").status);
}

#[test]
fn with_restart_policy_never_init_containers_that_succeed_let_the_app_run() {
    let now = t0();
    let mut m = PodMachine::new(
        settings(),
        init_pod(RestartPolicy::Never, &["a"], &["c"]),
        None,
        now,
    );
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    started_ok(&mut m, 0, "a", 0, now);
    assert_eq!(
        start_of(&exit_of(&mut m, 0, "u1/a/0", 0, now)),
        Some((1, 0))
    );
    started_ok(&mut m, 1, "c", 0, now);
    exit_of(&mut m, 1, "u1/c/0", 0, now);
    assert_eq!(m.state(), &PodState::Completed);
    assert_eq!(m.status().unwrap().phase, PodPhase::Succeeded);
}

#[test]
fn a_sidecar_starts_in_its_turn_runs_beside_the_app_and_restarts_when_it_exits() {
    let now = t0();
    // restartPolicy Never for the pod: the sidecar restarts all the same.
    let p = init_pod(RestartPolicy::Never, &["s+", "b"], &["c"]);
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    let action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
    assert_eq!(start_of(&action), Some((0, 0)));
    // Started (no startup probe): the next init container starts while it runs.
    let action = started_ok(&mut m, 0, "s", 0, now);
    assert_eq!(start_of(&action), Some((1, 0)));
    started_ok(&mut m, 1, "b", 0, now);
    let action = exit_of(&mut m, 1, "u1/b/0", 0, now);
    assert_eq!(start_of(&action), Some((2, 0)));
    started_ok(&mut m, 2, "c", 0, now);
    let st = m.status().unwrap();
    assert_eq!(st.phase, PodPhase::Running);
    assert!(matches!(
        st.init_containers[0].state,
        ContainerState::Running { .. }
    ));
    assert!(st.init_containers[0].ready);
    assert!(condition(&m, "Ready").status);
    // The sidecar exits: restarted (a first exit: at once), the app keeps running.
    let action = exit_of(&mut m, 0, "u1/s/0", 1, now);
    assert_eq!(start_of(&action), Some((0, 1)));
    started_ok(&mut m, 0, "s", 1, now);
    assert!(matches!(m.slots()[2].phase, ContainerPhase::Running { .. }));

    // The app container ends: the sidecar is stopped, for good, and the pod completes with
    // the app's result (the sidecar's exit code does not count).
    let action = exit_of(&mut m, 2, "u1/c/0", 0, now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/s/1".into())],
            grace: Duration::from_secs(30),
        }
    );
    let killed = ContainerRunState::Exited {
        exit_code: 143,
        signal: Some(15),
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: now.wall_ms,
    };
    let action = m.step(Event::Stopped(vec![(0, "u1/s/1".into(), Ok(killed))]), now);
    assert_eq!(action, Action::Wait(None));
    assert_eq!(m.state(), &PodState::Completed);
    assert_eq!(m.status().unwrap().phase, PodPhase::Succeeded);
}

#[test]
fn the_next_init_container_waits_for_a_sidecars_startup_probe() {
    let now = t0();
    let mut p = init_pod(RestartPolicy::Always, &["s+"], &["c"]);
    p.init_containers[0].container.startup_probe = Some(exec_probe());
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    let action = started_ok(&mut m, 0, "s", 0, now);
    assert!(start_of(&action).is_none(), "{action:?}");
    assert!(!condition(&m, "Initialized").status);
    let action = m.step(verdict(0, "u1/s/0", ProbeKind::Startup, true), now);
    assert_eq!(start_of(&action), Some((1, 0)));
    assert!(condition(&m, "Initialized").status);
}

#[test]
fn at_termination_the_sidecars_are_stopped_after_the_app_containers() {
    let now = t0();
    let p = init_pod(RestartPolicy::Always, &["s+"], &["c"]);
    let mut m = PodMachine::new(settings(), p.clone(), None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    started_ok(&mut m, 0, "s", 0, now);
    started_ok(&mut m, 1, "c", 0, now);
    let mut deleting = p;
    deleting.deletion_grace_period_seconds = Some(5);
    let action = m.step(Event::Update(deleting), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(1, "u1/c/0".into())],
            grace: Duration::from_secs(5),
        },
        "the app container first"
    );
    let stopped = |code| ContainerRunState::Exited {
        exit_code: code,
        signal: None,
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: now.wall_ms,
    };
    let action = m.step(
        Event::Stopped(vec![(1, "u1/c/0".into(), Ok(stopped(143)))]),
        now,
    );
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/s/0".into())],
            grace: Duration::from_secs(5),
        },
        "then the sidecar"
    );
    let action = m.step(
        Event::Stopped(vec![(0, "u1/s/0".into(), Ok(stopped(143)))]),
        now,
    );
    assert!(matches!(action, Action::RemoveSandbox { .. }), "{action:?}");
}

#[test]
fn after_a_sandbox_loss_the_init_containers_run_again_before_the_app_containers() {
    let now = t0();
    let p = init_pod(RestartPolicy::Always, &["a"], &["c"]);
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    started_ok(&mut m, 0, "a", 0, now);
    exit_of(&mut m, 0, "u1/a/0", 0, now);
    started_ok(&mut m, 1, "c", 0, now);
    let action = m.step(lost(), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(1, "u1/c/0".into())],
            grace: Duration::from_secs(30),
        }
    );
    let killed = ContainerRunState::Exited {
        exit_code: 137,
        signal: Some(9),
        reason: "Error".into(),
        started_at_ms: now.wall_ms,
        finished_at_ms: now.wall_ms,
    };
    let action = m.step(Event::Stopped(vec![(1, "u1/c/0".into(), Ok(killed))]), now);
    assert_eq!(action, Action::CreateSandbox);
    assert!(!condition(&m, "Initialized").status);
    let action = m.step(Event::SandboxCreated(Ok(new_sandbox())), now);
    assert_eq!(
        start_of(&action),
        Some((0, 1)),
        "the init container runs again"
    );
    let st = m.status().unwrap();
    assert!(matches!(
        &st.init_containers[0].last_state,
        Some(ContainerState::Terminated { exit_code: 0, .. })
    ));
    let action = started_ok(&mut m, 0, "a", 1, now);
    assert!(start_of(&action).is_none(), "the app waits: {action:?}");
    let action = exit_of(&mut m, 0, "u1/a/1", 0, now);
    assert_eq!(
        start_of(&action),
        Some((1, 1)),
        "then the app, its next attempt"
    );
}

#[test]
fn an_adopted_pod_whose_init_containers_are_done_does_not_run_them_again() {
    let now = t0();
    let p = init_pod(RestartPolicy::Always, &["a"], &["c"]);
    let existing = ExistingPod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        sandbox: sandbox(),
        containers: vec![
            info("a", 0, exited(0, now.wall_ms, now.wall_ms)),
            info("c", 0, running(now.wall_ms)),
        ],
    };
    let mut m = PodMachine::new(settings(), p, Some(existing), now);
    let action = m.step(Event::Tick, now);
    assert!(
        matches!(action, Action::Observe(ref t) if t == &vec![(1, "u1/c/0".to_string())]),
        "{action:?}"
    );
    let st = m.status().unwrap();
    assert_eq!(st.phase, PodPhase::Running);
    assert!(matches!(
        st.init_containers[0].state,
        ContainerState::Terminated { exit_code: 0, .. }
    ));
    assert!(condition(&m, "Initialized").status);
}
