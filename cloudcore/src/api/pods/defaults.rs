//! Pod defaulting, as Kubernetes' `SetDefaults_Pod`: what a manifest that leaves a field out
//! gets (grace period, pull policy, probe timings), so stored pods are complete.

use super::validation::PROBES;
use serde_json::{json, Value};

/// Default `spec.terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Kubernetes' probe defaults (`SetDefaults_Probe`): a missing or zero value takes these.
pub const PROBE_DEFAULTS: [(&str, i64); 4] = [
    ("timeoutSeconds", 1),
    ("periodSeconds", 10),
    ("successThreshold", 1),
    ("failureThreshold", 3),
];

/// Kubernetes' image pull policy default: `Always` for `:latest` or untagged images,
/// `IfNotPresent` otherwise (digests count as pinned).
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

pub(super) fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    c.entry("imagePullPolicy")
        .or_insert_with(|| json!(default_pull_policy(&image)));
    c.entry("terminationMessagePath")
        .or_insert_with(|| json!("/dev/termination-log"));
    c.entry("terminationMessagePolicy")
        .or_insert_with(|| json!("File"));
    let resources = c.entry("resources").or_insert_with(|| json!({}));
    // As Kubernetes: a limit without a request also requests that much.
    if let Some(r) = resources.as_object_mut() {
        let limits = r
            .get("limits")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if !limits.is_empty() {
            let requests = r.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = requests.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert_with(|| json!("TCP"));
        }
    }
    for probe in PROBES {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = c
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(hook))
            .and_then(|h| h.get_mut("httpGet"))
            .and_then(Value::as_object_mut)
        {
            default_http_get(h);
        }
    }
}

/// Kubernetes' probe defaulting: thresholds and timings that are missing or zero take their
/// defaults, and an httpGet gets path `/` and scheme `HTTP`.
fn default_probe(p: &mut serde_json::Map<String, Value>) {
    for (field, default) in PROBE_DEFAULTS {
        if p.get(field).and_then(Value::as_i64).unwrap_or(0) == 0 {
            p.insert(field.into(), json!(default));
        }
    }
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        default_http_get(h);
    }
}

/// `SetDefaults_HTTPGetAction`: path `/` and scheme `HTTP`, for probes and lifecycle hooks.
fn default_http_get(h: &mut serde_json::Map<String, Value>) {
    for (field, default) in [("path", "/"), ("scheme", "HTTP")] {
        if h.get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            h.insert(field.into(), json!(default));
        }
    }
}
