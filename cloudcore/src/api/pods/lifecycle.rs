//! Validation of a container's `lifecycle` (`validateLifecycle` and `validateHandler` of
//! `pkg/apis/core/validation`): each hook has exactly one handler, an exec hook a command, an
//! httpGet hook a port in range (or one of the container's port names), a path and a known
//! scheme, and a sleep hook a duration from 0 to the pod's termination grace (Kubernetes 1.32
//! allows 0). What the edge does not run (`tcpSocket`, `stopSignal`) is refused by
//! `crate::projection::support`, the check the projection makes too.

use super::validation::validate_http_get;
use crate::api::error::FieldError;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use serde_json::json;

/// The hooks of `c` at `path` (`spec.containers[0]`), for a pod whose termination grace is
/// `grace` seconds (Kubernetes' default 30 when not set).
pub(super) fn validate_lifecycle(
    c: &Container,
    path: &str,
    grace: i64,
    errs: &mut Vec<FieldError>,
) {
    let Some(lifecycle) = &c.lifecycle else {
        return;
    };
    for (which, hook) in [
        ("postStart", &lifecycle.post_start),
        ("preStop", &lifecycle.pre_stop),
    ] {
        if let Some(h) = hook {
            validate_handler(h, &format!("{path}.lifecycle.{which}"), c, grace, errs);
        }
    }
}

/// One handler: exactly one of exec, httpGet, tcpSocket and sleep, each well formed.
fn validate_handler(
    h: &LifecycleHandler,
    path: &str,
    c: &Container,
    grace: i64,
    errs: &mut Vec<FieldError>,
) {
    super::validation::one_handler(
        path,
        &[
            ("exec", h.exec.is_some()),
            ("httpGet", h.http_get.is_some()),
            ("tcpSocket", h.tcp_socket.is_some()),
            ("sleep", h.sleep.is_some()),
        ],
        errs,
    );
    if let Some(e) = &h.exec {
        if e.command.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(format!("{path}.exec.command"), ""));
        }
    }
    if let Some(g) = &h.http_get {
        validate_http_get(g, &format!("{path}.httpGet"), c, errs);
    }
    if let Some(s) = &h.sleep {
        if s.seconds < 0 || s.seconds > grace {
            errs.push(FieldError::invalid(
                format!("{path}.sleep"),
                &json!(s.seconds),
                format!(
                    "must be non-negative and less than terminationGracePeriodSeconds ({grace})"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(lifecycle: serde_json::Value, grace: i64) -> Vec<String> {
        let c: Container = serde_json::from_value(json!({
            "name": "app", "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080}],
            "lifecycle": lifecycle,
        }))
        .unwrap();
        let mut errs = Vec::new();
        validate_lifecycle(&c, "spec.containers[0]", grace, &mut errs);
        errs.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn well_formed_hooks_pass() {
        let ok = json!({
            "postStart": {"exec": {"command": ["touch", "/ready"]}},
            "preStop": {"httpGet": {"port": "http", "path": "/quit", "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-Why", "value": "stop"}]}},
        });
        assert_eq!(errors(ok, 30), Vec::<String>::new());
        let sleep = json!({"preStop": {"sleep": {"seconds": 30}}});
        assert_eq!(errors(sleep, 30), Vec::<String>::new());
        let zero = json!({"preStop": {"sleep": {"seconds": 0}}});
        assert_eq!(errors(zero, 30), Vec::<String>::new());
    }

    #[test]
    fn each_malformed_hook_is_named() {
        let p = "spec.containers[0].lifecycle";
        for (lifecycle, grace, field) in [
            (json!({"postStart": {}}), 30, format!("{p}.postStart")),
            (
                json!({"preStop": {"exec": {"command": ["true"]}, "sleep": {"seconds": 1}}}),
                30,
                format!("{p}.preStop.sleep"),
            ),
            (
                json!({"postStart": {"exec": {"command": []}}}),
                30,
                format!("{p}.postStart.exec.command"),
            ),
            (
                json!({"preStop": {"httpGet": {"port": 70000, "path": "/"}}}),
                30,
                format!("{p}.preStop.httpGet.port"),
            ),
            (
                json!({"preStop": {"httpGet": {"port": "admin", "path": "/"}}}),
                30,
                format!("{p}.preStop.httpGet.port"),
            ),
            (
                json!({"preStop": {"httpGet": {"port": 80, "path": "/", "scheme": "FTP"}}}),
                30,
                format!("{p}.preStop.httpGet.scheme"),
            ),
            (
                json!({"preStop": {"sleep": {"seconds": 31}}}),
                30,
                format!("{p}.preStop.sleep"),
            ),
            (
                json!({"preStop": {"sleep": {"seconds": -1}}}),
                30,
                format!("{p}.preStop.sleep"),
            ),
        ] {
            assert_eq!(errors(lifecycle.clone(), grace), vec![field], "{lifecycle}");
        }
    }

    #[test]
    fn hooks_are_refused_on_init_containers_but_not_on_sidecars() {
        let spec = |restart_policy: Option<&str>| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(json!({
                "initContainers": [{"name": "init", "image": "busybox",
                    "restartPolicy": restart_policy,
                    "lifecycle": {"preStop": {"sleep": {"seconds": 40}}}}],
                "containers": [{"name": "app", "image": "busybox"}],
            }))
            .unwrap()
        };
        let fields = |s| -> Vec<String> {
            super::super::validation::validate_spec(&s, "spec")
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(
            fields(spec(None)),
            vec!["spec.initContainers[0].lifecycle".to_string()]
        );
        // A sidecar's hooks are validated as an app container's (40 s > the 30 s grace).
        assert_eq!(
            fields(spec(Some("Always"))),
            vec!["spec.initContainers[0].lifecycle.preStop.sleep".to_string()]
        );
    }
}
