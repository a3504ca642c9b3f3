//! The rows `kubectl get pods` prints: the STATUS and RESTARTS columns follow kubectl's pod
//! printer so the output reads the same as against Kubernetes.

use crate::api::table::Column;
use serde_json::{json, Value};

pub(super) const COLUMNS: [Column; 7] = [
    crate::api::table::NAME_COLUMN,
    Column { name: "Ready", kind: "string", format: "", description: "The aggregate readiness state of this pod for accepting traffic.", priority: 0 },
    Column { name: "Status", kind: "string", format: "", description: "The aggregate status of the containers in this pod.", priority: 0 },
    Column { name: "Restarts", kind: "string", format: "", description: "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", priority: 0 },
    crate::api::table::AGE_COLUMN,
    Column { name: "IP", kind: "string", format: "", description: "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", priority: 1 },
    Column { name: "Node", kind: "string", format: "", description: "NodeName is a request to schedule this pod onto a specific node.", priority: 1 },
];

/// The STATUS column, following kubectl's pod printer: a container's waiting or terminated
/// reason wins over the phase, init containers show as `Init:x/y`, and a deletion timestamp
/// shows as `Terminating`.
pub fn display_status(pod: &Value) -> String {
    let status = pod.get("status");
    let mut reason = status
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(r) = status
        .and_then(|s| s.get("reason"))
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        reason = r.to_string();
    }
    let state_reason = |cs: &Value, prefix: &str| -> Option<String> {
        let state = cs.get("state")?;
        if let Some(t) = state.get("terminated") {
            if let Some(r) = t
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                return Some(format!("{prefix}{r}"));
            }
            let signal = t.get("signal").and_then(Value::as_i64).unwrap_or(0);
            if signal != 0 {
                return Some(format!("{prefix}Signal:{signal}"));
            }
            let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
            return Some(format!("{prefix}ExitCode:{code}"));
        }
        let w = state
            .get("waiting")?
            .get("reason")
            .and_then(Value::as_str)?;
        (!w.is_empty()).then(|| format!("{prefix}{w}"))
    };
    let empty = Vec::new();
    let init_statuses = status
        .and_then(|s| s.get("initContainerStatuses"))
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let init_total = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    // Sidecars (init containers with `restartPolicy: Always`), by name.
    let sidecars: Vec<&str> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
        let name = cs.get("name").and_then(Value::as_str).unwrap_or("");
        if sidecars.contains(&name) && cs.get("started").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let terminated = cs.pointer("/state/terminated");
        if terminated
            .and_then(|t| t.get("exitCode"))
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        if terminated.is_some() {
            if let Some(r) = state_reason(cs, "Init:") {
                reason = r;
            }
        } else if let Some(w) = cs
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty() && *w != "PodInitializing")
        {
            reason = format!("Init:{w}");
        } else {
            reason = format!("Init:{i}/{init_total}");
        }
        initializing = true;
        break;
    }
    let initialized = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        let statuses = status
            .and_then(|s| s.get("containerStatuses"))
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let mut has_running = false;
        for cs in statuses.iter().rev() {
            if let Some(r) = state_reason(cs, "") {
                reason = r;
            } else if cs.get("ready").and_then(Value::as_bool) == Some(true)
                && cs.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if reason == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    if reason.is_empty() {
        reason = "Pending".into();
    }
    reason
}

/// The READY column, `ready/total` as kubectl counts: the app containers and the sidecars
/// (init containers with `restartPolicy: Always`).
pub(super) fn ready(pod: &Value) -> String {
    let sidecars: Vec<&str> = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
        + sidecars.len();
    let is_ready = |cs: &&Value| cs.get("ready").and_then(Value::as_bool) == Some(true);
    let list = |field: &str| {
        pod.pointer(&format!("/status/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    let ready = list("containerStatuses").filter(is_ready).count()
        + list("initContainerStatuses")
            .filter(|cs| sidecars.contains(&cs.get("name").and_then(Value::as_str).unwrap_or("")))
            .filter(is_ready)
            .count();
    format!("{ready}/{total}")
}

pub(super) fn restarts(pod: &Value, now: i64) -> String {
    let mut count = 0;
    let mut last: Option<i64> = None;
    // As kubectl: init containers' restarts count too.
    let list = |field: &str| {
        pod.pointer(&format!("/status/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    for cs in list("initContainerStatuses").chain(list("containerStatuses")) {
        count = cs
            .get("restartCount")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .saturating_add(count);
        if let Some(t) = cs
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(crate::api::table::parse_timestamp)
        {
            last = Some(last.map_or(t, |l: i64| l.max(t)));
        }
    }
    match last {
        Some(t) if count > 0 => format!(
            "{count} ({} ago)",
            crate::api::table::human_duration(now - t)
        ),
        _ => count.to_string(),
    }
}

pub(super) fn none_if_empty(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(s) => json!(s),
        None => json!("<none>"),
    }
}
