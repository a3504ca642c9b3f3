//! What the pod workers record as events, in kubelet's reasons and words, so that
//! `kubectl describe pod` of an edge pod reads like one of a kubelet's.
//!
//! Pure: each function turns a step's outcome (a start, a stop, a probe attempt, a status
//! change) into the [`Occurrence`]s kubelet would record for it; the worker hands them to its
//! sink ([`super::StatusSink::pod_event`]), which counts them into the pod's event series.
//! The texts follow kubelet 1.32 (`pkg/kubelet/events`, `kuberuntime_container.go`,
//! `images/image_manager.go`, `prober/prober.go`).

use super::probes::ProbeKind;
use crate::runtime::{ContainerInfo, ImagePull, RuntimeError};
use protocol::events::{EventType, Occurrence};
use protocol::status::{ContainerState, PodStatus};

fn normal(reason: &str, message: String, container: &str, at_ms: u64) -> Occurrence {
    Occurrence::new(EventType::Normal, reason, message, Some(container), at_ms)
}

fn warning(reason: &str, message: String, container: &str, at_ms: u64) -> Occurrence {
    Occurrence::new(EventType::Warning, reason, message, Some(container), at_ms)
}

/// Kubelet's rendering of a duration in a `Pulled` message (Go's `time.Duration`, to ms).
fn go_seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

/// A container instance started: the image events of its start (if the runtime has images),
/// then `Created` and `Started`.
pub(crate) fn started(
    container: &str,
    image: &str,
    info: &ContainerInfo,
    at_ms: u64,
) -> Vec<Occurrence> {
    let mut out = Vec::with_capacity(4);
    match info.image_pull {
        Some(ImagePull::Present) => out.push(normal(
            "Pulled",
            format!("Container image {image:?} already present on machine"),
            container,
            at_ms,
        )),
        Some(ImagePull::Pulled { ms }) => {
            out.push(normal(
                "Pulling",
                format!("Pulling image {image:?}"),
                container,
                at_ms.saturating_sub(ms),
            ));
            let took = go_seconds(ms);
            out.push(normal(
                "Pulled",
                format!("Successfully pulled image {image:?} in {took} ({took} including waiting)"),
                container,
                at_ms,
            ));
        }
        Some(ImagePull::PullFailedUsedPresent) => {
            out.push(normal(
                "Pulling",
                format!("Pulling image {image:?}"),
                container,
                at_ms,
            ));
            out.push(warning(
                "Failed",
                format!("Failed to pull image {image:?}; using the copy already on this node"),
                container,
                at_ms,
            ));
        }
        None => {}
    }
    out.push(normal(
        "Created",
        format!("Created container {container}"),
        container,
        at_ms,
    ));
    out.push(normal(
        "Started",
        format!("Started container {container}"),
        container,
        at_ms,
    ));
    out
}

/// A lifecycle hook failed: kubelet's `FailedPostStartHook` or `FailedPreStopHook`, with the
/// hook's failure message.
pub(crate) fn hook_failed(
    container: &str,
    hook: super::lifecycle::Hook,
    message: &str,
    at_ms: u64,
) -> Occurrence {
    let reason = match hook {
        super::lifecycle::Hook::PostStart => "FailedPostStartHook",
        super::lifecycle::Hook::PreStop => "FailedPreStopHook",
    };
    warning(reason, message.to_string(), container, at_ms)
}

/// A start failed (not for want of a sandbox): kubelet's `Failed` events.
pub(crate) fn start_failed(
    container: &str,
    image: &str,
    error: &RuntimeError,
    at_ms: u64,
) -> Vec<Occurrence> {
    match error {
        RuntimeError::Image {
            reason, message, ..
        } if reason == "ErrImagePull" => vec![
            normal(
                "Pulling",
                format!("Pulling image {image:?}"),
                container,
                at_ms,
            ),
            warning(
                "Failed",
                format!("Failed to pull image {image:?}: {message}"),
                container,
                at_ms,
            ),
            warning("Failed", format!("Error: {reason}"), container, at_ms),
        ],
        RuntimeError::Image { reason, .. } => vec![
            warning(
                "ErrImageNeverPull",
                format!("Container image {image:?} is not present with pull policy of Never"),
                container,
                at_ms,
            ),
            warning("Failed", format!("Error: {reason}"), container, at_ms),
        ],
        e => vec![warning("Failed", format!("Error: {e}"), container, at_ms)],
    }
}

/// The container's volumes or configuration could not be prepared for its start.
pub(crate) fn prepare_failed(
    container: &str,
    waiting_reason: &str,
    message: &str,
    at_ms: u64,
) -> Occurrence {
    if waiting_reason == "CreateContainerConfigError" {
        warning("Failed", format!("Error: {message}"), container, at_ms)
    } else {
        warning(
            "FailedMount",
            format!("MountVolume.SetUp failed: {message}"),
            container,
            at_ms,
        )
    }
}

/// The pod's sandbox could not be created.
pub(crate) fn sandbox_failed(message: &str, at_ms: u64) -> Occurrence {
    Occurrence::new(
        EventType::Warning,
        "FailedCreatePodSandBox",
        format!("Failed to create pod sandbox: {message}"),
        None,
        at_ms,
    )
}

/// A container is being stopped.
pub(crate) fn killing(container: &str, at_ms: u64) -> Occurrence {
    normal(
        "Killing",
        format!("Stopping container {container}"),
        container,
        at_ms,
    )
}

/// A probe attempt failed: kubelet's `Unhealthy`, one per failed attempt.
pub(crate) fn unhealthy(container: &str, kind: ProbeKind, output: &str, at_ms: u64) -> Occurrence {
    let probe = match kind {
        ProbeKind::Startup => "Startup",
        ProbeKind::Liveness => "Liveness",
        ProbeKind::Readiness => "Readiness",
    };
    warning(
        "Unhealthy",
        format!("{probe} probe failed: {}", output.trim()),
        container,
        at_ms,
    )
}

/// What a change of the reported status says happened: a container that went into back-off
/// (`BackOff`, once per entry: its series counts the crashes), and an instance the kernel
/// killed for memory (`OOMKilled`). `pod_label` names the pod as kubelet does
/// (`name_namespace(uid)`).
pub(crate) fn status_changed(
    old: Option<&PodStatus>,
    new: &PodStatus,
    pod_label: &str,
    at_ms: u64,
) -> Vec<Occurrence> {
    let mut out = Vec::new();
    for c in &new.containers {
        let before = old.and_then(|o| o.containers.iter().find(|b| b.name == c.name));
        let waiting = |s: &ContainerState| match s {
            ContainerState::Waiting { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let now_waiting = waiting(&c.state);
        let was = before.and_then(|b| waiting(&b.state));
        let entered = |reason: &str| {
            now_waiting.as_deref() == Some(reason)
                && (was.as_deref() != Some(reason)
                    || before.is_some_and(|b| b.restart_count != c.restart_count))
        };
        if entered("CrashLoopBackOff") {
            out.push(warning(
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {pod_label}",
                    c.name
                ),
                &c.name,
                at_ms,
            ));
        }
        if entered("ImagePullBackOff") {
            out.push(normal(
                "BackOff",
                format!("Back-off pulling image {:?}", c.image),
                &c.name,
                at_ms,
            ));
        }
        let oom = |s: Option<&ContainerState>| match s {
            Some(ContainerState::Terminated {
                reason,
                finished_at_ms,
                ..
            }) if reason == "OOMKilled" => Some(*finished_at_ms),
            _ => None,
        };
        // The instance's end shows as its state, or (after a restart) its last state.
        let ended = oom(Some(&c.state)).or(oom(c.last_state.as_ref()));
        let ended_before = before.and_then(|b| oom(Some(&b.state)).or(oom(b.last_state.as_ref())));
        if let Some(at) = ended.filter(|at| Some(*at) != ended_before) {
            out.push(warning(
                "OOMKilled",
                format!(
                    "Container {} was killed by the kernel for exceeding its memory limit (OOMKilled)",
                    c.name
                ),
                &c.name,
                at.max(1),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::status::{ContainerStatus, PodPhase};

    fn status(state: ContainerState, restarts: u32, last: Option<ContainerState>) -> PodStatus {
        PodStatus {
            node: "n1".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            phase: PodPhase::Running,
            conditions: vec![],
            containers: vec![ContainerStatus {
                name: "app".into(),
                image: "busybox".into(),
                container_id: String::new(),
                ready: false,
                restart_count: restarts,
                state,
                last_state: last,
                image_id: String::new(),
            }],
            pod_ip: String::new(),
            host_ip: String::new(),
            start_time_ms: 0,
            reason: String::new(),
            message: String::new(),
            removed: false,
            init_containers: Vec::new(),
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState::Waiting {
            reason: reason.into(),
            message: String::new(),
        }
    }

    fn oom(at: u64) -> ContainerState {
        ContainerState::Terminated {
            exit_code: 137,
            signal: Some(9),
            reason: "OOMKilled".into(),
            message: String::new(),
            started_at_ms: 1,
            finished_at_ms: at,
        }
    }

    #[test]
    fn each_entry_into_back_off_is_one_back_off_event() {
        let running = status(ContainerState::Running { started_at_ms: 1 }, 1, None);
        let backoff = status(waiting("CrashLoopBackOff"), 1, None);
        let e = status_changed(Some(&running), &backoff, "web_default(u1)", 5);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, "BackOff");
        assert_eq!(
            e[0].message,
            "Back-off restarting failed container app in pod web_default(u1)"
        );
        assert_eq!(e[0].field_path, "spec.containers{app}");
        // The same back-off reported again (another field changed): nothing new.
        assert!(status_changed(Some(&backoff), &backoff, "p", 6).is_empty());
        // Next crash, back in back-off with a higher restart count: one more.
        let again = status(waiting("CrashLoopBackOff"), 2, None);
        assert_eq!(status_changed(Some(&backoff), &again, "p", 7).len(), 1);
    }

    #[test]
    fn an_oom_kill_is_recorded_once() {
        let running = status(ContainerState::Running { started_at_ms: 1 }, 0, None);
        let killed = status(oom(50), 0, None);
        let restarted = status(
            ContainerState::Running { started_at_ms: 60 },
            1,
            Some(oom(50)),
        );
        let e = status_changed(Some(&running), &killed, "p", 55);
        assert_eq!(
            e.iter().map(|o| o.reason.as_str()).collect::<Vec<_>>(),
            ["OOMKilled"]
        );
        assert!(status_changed(Some(&killed), &restarted, "p", 61).is_empty());
    }

    #[test]
    fn a_start_reads_like_kubelets() {
        let info = |pull| ContainerInfo {
            id: "x".into(),
            name: "app".into(),
            attempt: 0,
            state: crate::runtime::ContainerRunState::Running { started_at_ms: 1 },
            spec_digest: None,
            image_pull: pull,
            image_id: None,
        };
        let msgs = |v: Vec<Occurrence>| {
            v.into_iter()
                .map(|o| (o.reason, o.message))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            msgs(started(
                "app",
                "busybox",
                &info(Some(ImagePull::Pulled { ms: 1234 })),
                5000
            )),
            [
                ("Pulling".into(), "Pulling image \"busybox\"".into()),
                (
                    "Pulled".into(),
                    "Successfully pulled image \"busybox\" in 1.234s (1.234s including waiting)"
                        .into()
                ),
                ("Created".into(), "Created container app".into()),
                ("Started".into(), "Started container app".into()),
            ]
        );
        assert_eq!(
            msgs(started(
                "app",
                "busybox",
                &info(Some(ImagePull::Present)),
                1
            ))[0]
                .1,
            "Container image \"busybox\" already present on machine"
        );
        assert_eq!(started("app", "", &info(None), 1).len(), 2);
        let e = RuntimeError::Image {
            image: "nope".into(),
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        };
        assert_eq!(
            msgs(start_failed("app", "nope", &e, 1))[2],
            ("Failed".to_string(), "Error: ErrImagePull".to_string())
        );
        assert_eq!(
            unhealthy(
                "app",
                ProbeKind::Readiness,
                "HTTP probe failed with statuscode: 500\n",
                1
            )
            .message,
            "Readiness probe failed: HTTP probe failed with statuscode: 500"
        );
    }
}
