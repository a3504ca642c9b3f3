//! Unit tests of lifecycle hooks in the pod machine (see `hooks`): a container is held back
//! (not Running, not ready, nothing after it started) until its postStart hook returned, a
//! failed hook kills and restarts it, and preStop hooks are asked for exactly where kubelet runs
//! them.

use super::tests::{
    container, exec_probe, exited, info, lost, pod, running, sandbox, settings, t0,
};
use super::*;
use protocol::pod::{EdgeInitContainer, LifecycleHandler, RestartPolicy};
use protocol::status::ContainerState;

fn touch() -> LifecycleHandler {
    LifecycleHandler::Exec {
        command: vec!["touch".into(), "/ready".into()],
    }
}

/// A pod of containers `a` (with a postStart hook and a readiness probe) and `b`.
fn hooked_pod(policy: RestartPolicy) -> EdgePod {
    let mut p = pod(policy, &["a", "b"]);
    p.containers[0].lifecycle.post_start = Some(touch());
    p.containers[0].readiness_probe = Some(exec_probe());
    p
}

/// Creates the sandbox and starts `a`: the machine then asks for its postStart hook.
fn a_started(p: EdgePod) -> (PodMachine, Now) {
    let now = t0();
    let mut m = PodMachine::new(settings(), p, None, now);
    assert_eq!(m.step(Event::Tick, now), Action::CreateSandbox);
    let action = m.step(Event::SandboxCreated(Ok(sandbox())), now);
    assert!(
        matches!(action, Action::StartContainer { index: 0, .. }),
        "{action:?}"
    );
    let action = m.step(
        Event::Started {
            index: 0,
            attempt: 0,
            result: Ok(info("a", 0, running(now.wall_ms))),
        },
        now,
    );
    assert_eq!(
        action,
        Action::PostStart {
            index: 0,
            id: "u1/a/0".into(),
            handler: touch(),
        }
    );
    (m, now)
}

fn done(id: &str, result: Result<(), String>) -> Event {
    Event::PostStartDone {
        index: 0,
        id: id.into(),
        result,
    }
}

#[test]
fn a_container_is_not_running_and_nothing_after_it_starts_until_its_post_start_hook_returned() {
    let (mut m, now) = a_started(hooked_pod(RestartPolicy::Always));
    let st = m.status().expect("status");
    assert_eq!(st.phase, PodPhase::Pending);
    assert!(
        matches!(&st.containers[0].state,
            ContainerState::Waiting { reason, .. } if reason == "ContainerCreating"),
        "{:?}",
        st.containers[0]
    );
    assert!(!st.containers[0].ready);
    assert!(m.slots()[0].post_start_pending());
    // Time passing (or a ConfigMap changing) still asks for the hook, not for `b`'s start.
    let later = super::tests::at(now, 60_000);
    assert!(matches!(
        m.step(Event::Tick, later),
        Action::PostStart { index: 0, .. }
    ));
    assert!(matches!(
        m.step(Event::ConfigChanged, later),
        Action::PostStart { index: 0, .. }
    ));
    // Returned: `a` is Running (its readiness still up to its probe), and `b` starts.
    let action = m.step(done("u1/a/0", Ok(())), later);
    assert!(
        matches!(action, Action::StartContainer { index: 1, .. }),
        "{action:?}"
    );
    let st = m.status().expect("status");
    assert!(matches!(
        st.containers[0].state,
        ContainerState::Running { .. }
    ));
    assert!(!m.slots()[0].post_start_pending());
}

#[test]
fn a_failed_post_start_hook_kills_the_container_with_the_pods_grace_and_it_restarts() {
    let (mut m, now) = a_started(hooked_pod(RestartPolicy::Always));
    let action = m.step(done("u1/a/0", Err("touch: /ready: read-only".into())), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(30),
        }
    );
    let t = super::tests::at(now, 1_000);
    let action = m.step(
        Event::Stopped(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(137, now.wall_ms, t.wall_ms)),
        )]),
        t,
    );
    // A first exit restarts at once, with the hook's failure as the last state's message.
    assert!(
        matches!(action, Action::StartContainer { index: 0, ref config, .. } if config.attempt == 1),
        "{action:?}"
    );
    let st = m.status().expect("status");
    assert!(
        matches!(&st.containers[0].last_state,
            Some(ContainerState::Terminated { message, exit_code: 137, .. })
                if message == "touch: /ready: read-only"),
        "{:?}",
        st.containers[0]
    );
}

#[test]
fn with_restart_policy_never_a_failed_post_start_hook_fails_the_pod() {
    let mut p = pod(RestartPolicy::Never, &["a"]);
    p.containers[0].lifecycle.post_start = Some(touch());
    let (mut m, now) = a_started(p);
    let action = m.step(done("u1/a/0", Err("exit 1".into())), now);
    assert!(
        matches!(action, Action::StopContainers { .. }),
        "{action:?}"
    );
    let action = m.step(
        Event::Stopped(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(137, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    assert_eq!(action, Action::Wait(None));
    assert_eq!(m.status().expect("status").phase, PodPhase::Failed);
}

#[test]
fn a_container_that_exits_during_its_post_start_hook_counts_as_started_and_the_late_result_is_dropped(
) {
    let mut p = pod(RestartPolicy::Never, &["a"]);
    p.containers[0].lifecycle.post_start = Some(touch());
    let (mut m, now) = a_started(p);
    m.step(
        Event::Observed(vec![(
            0,
            "u1/a/0".into(),
            Ok(exited(0, now.wall_ms, now.wall_ms)),
        )]),
        now,
    );
    assert_eq!(m.status().expect("status").phase, PodPhase::Succeeded);
    // The hook's failure (it could not exec into the exited container) changes nothing.
    let action = m.step(done("u1/a/0", Err("container not running".into())), now);
    assert_eq!(action, Action::Wait(None));
    assert_eq!(m.status().expect("status").phase, PodPhase::Succeeded);
}

#[test]
fn a_deletion_during_a_post_start_hook_stops_the_container_and_the_hooks_end_kills_nothing_more() {
    let (mut m, now) = a_started(hooked_pod(RestartPolicy::Always));
    let mut deleted = hooked_pod(RestartPolicy::Always);
    deleted.deletion_grace_period_seconds = Some(10);
    let action = m.step(Event::Update(deleted), now);
    assert_eq!(
        action,
        Action::StopContainers {
            targets: vec![(0, "u1/a/0".into())],
            grace: Duration::from_secs(10),
        }
    );
    // The hook, dropped by the worker, may still report: the pod is stopped all the same.
    let again = m.step(done("u1/a/0", Err("killed".into())), now);
    assert_eq!(again, action);
}

#[test]
fn a_sidecar_lets_the_next_init_container_start_only_once_its_post_start_hook_returned() {
    let mut p = pod(RestartPolicy::Always, &["app"]);
    let mut sidecar = container("proxy");
    sidecar.lifecycle.post_start = Some(touch());
    p.init_containers = vec![
        EdgeInitContainer {
            container: sidecar,
            sidecar: true,
        },
        EdgeInitContainer {
            container: container("migrate"),
            sidecar: false,
        },
    ];
    let now = t0();
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    let action = m.step(
        Event::Started {
            index: 0,
            attempt: 0,
            result: Ok(info("proxy", 0, running(now.wall_ms))),
        },
        now,
    );
    assert!(
        matches!(action, Action::PostStart { index: 0, .. }),
        "{action:?}"
    );
    let action = m.step(done("u1/proxy/0", Ok(())), now);
    assert!(
        matches!(action, Action::StartContainer { index: 1, .. }),
        "{action:?}"
    );
}

#[test]
fn pre_stop_hooks_are_run_for_stops_with_a_grace_but_not_for_a_dead_sandbox() {
    let mut p = pod(RestartPolicy::Always, &["a", "b"]);
    p.containers[0].lifecycle.pre_stop = Some(LifecycleHandler::Sleep { seconds: 5 });
    let now = t0();
    let mut m = PodMachine::new(settings(), p, None, now);
    m.step(Event::Tick, now);
    m.step(Event::SandboxCreated(Ok(sandbox())), now);
    for (index, name) in ["a", "b"].into_iter().enumerate() {
        m.step(
            Event::Started {
                index,
                attempt: 0,
                result: Ok(info(name, 0, running(now.wall_ms))),
            },
            now,
        );
    }
    let grace = Duration::from_secs(30);
    assert_eq!(
        m.pre_stop_hook(0, grace),
        Some(&LifecycleHandler::Sleep { seconds: 5 })
    );
    // Only the container that has one; none with a zero grace (a forced deletion).
    assert_eq!(m.pre_stop_hook(1, grace), None);
    assert_eq!(m.pre_stop_hook(0, Duration::ZERO), None);
    // Nothing to run it in once the sandbox died.
    let action = m.step(lost(), now);
    assert!(
        matches!(action, Action::StopContainers { .. }),
        "{action:?}"
    );
    assert_eq!(m.pre_stop_hook(0, grace), None);
}

#[test]
fn a_failed_liveness_probe_stops_the_container_through_its_pre_stop_hook() {
    let mut p = pod(RestartPolicy::Always, &["a"]);
    p.containers[0].lifecycle.pre_stop = Some(touch());
    p.containers[0].liveness_probe = Some(exec_probe());
    let now = t0();
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
    let action = m.step(
        super::tests::verdict(0, "u1/a/0", crate::pods::probes::ProbeKind::Liveness, false),
        now,
    );
    let Action::StopContainers { targets, grace } = action else {
        panic!("{action:?}")
    };
    assert_eq!(targets, vec![(0, "u1/a/0".to_string())]);
    assert_eq!(m.pre_stop_hook(0, grace), Some(&touch()));
}

#[test]
fn a_container_without_hooks_starts_and_runs_as_before() {
    let (m, _) = {
        let now = t0();
        let mut m = PodMachine::new(settings(), pod(RestartPolicy::Always, &["a"]), None, now);
        m.step(Event::Tick, now);
        m.step(Event::SandboxCreated(Ok(sandbox())), now);
        let action = m.step(
            Event::Started {
                index: 0,
                attempt: 0,
                result: Ok(info("a", 0, running(now.wall_ms))),
            },
            now,
        );
        assert!(matches!(action, Action::Observe(_)), "{action:?}");
        (m, now)
    };
    assert!(!m.slots()[0].post_start_pending());
    assert_eq!(m.status().expect("status").phase, PodPhase::Running);
}

proptest::proptest! {
    /// Whatever order time, config changes and the hook's result come in: while `a` waits for
    /// its postStart hook, `b` is never started, the pod is never reported Running with `a`
    /// running, and `a` is never ready.
    #[test]
    fn nothing_after_a_container_starts_while_its_post_start_hook_runs(
        events in proptest::collection::vec(0u8..3, 1..12),
    ) {
        let (mut m, now) = a_started(hooked_pod(RestartPolicy::Always));
        let mut returned = false;
        for (i, e) in events.into_iter().enumerate() {
            let t = super::tests::at(now, i as u64 * 1_000);
            let event = match e {
                0 => Event::Tick,
                1 => Event::ConfigChanged,
                _ => {
                    returned = true;
                    done("u1/a/0", Ok(()))
                }
            };
            let action = m.step(event, t);
            if !returned {
                proptest::prop_assert!(
                    matches!(action, Action::PostStart { index: 0, .. }),
                    "{:?}", action
                );
                let st = m.status().expect("status");
                let running = matches!(st.containers[0].state, ContainerState::Running { .. });
                proptest::prop_assert!(!running, "reported Running during its hook");
                proptest::prop_assert!(!st.containers[0].ready);
                proptest::prop_assert_eq!(st.phase, PodPhase::Pending);
            }
        }
    }
}
