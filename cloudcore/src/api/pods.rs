//! Pods: defaulting, validation, update rules, graceful deletion and the table row, following
//! `pkg/registry/core/pod` and `pkg/apis/core/validation` of Kubernetes closely enough that
//! manifests and kubectl behave the same.

use super::error::FieldError;
use super::quantity::{parse_cpu_millis, parse_memory_bytes};
use super::resource::{
    decode_as, typed, DecodeError, DeleteAction, DeleteOptions, ResourceHandler, ResourceInfo,
    SelectableField,
};
use super::table::{age, Column};
use super::validation::{config_key, dns1123_label, dns1123_subdomain, push_invalid, NameRule};
use crate::devices;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// Default `spec.terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

const RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];
const DNS_POLICIES: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];
const PROBE_SCHEMES: [&str; 2] = ["HTTP", "HTTPS"];
/// The probes of a container, by field name.
const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
/// Kubernetes' probe defaults (`SetDefaults_Probe`): a missing or zero value takes these.
pub const PROBE_DEFAULTS: [(&str, i64); 4] = [
    ("timeoutSeconds", 1),
    ("periodSeconds", 10),
    ("successThreshold", 1),
    ("failureThreshold", 3),
];
const GRPC_UNSUPPORTED: &str =
    "grpc probes are not supported on edge nodes; use exec, tcpSocket or httpGet";
const HEADER_NAME_FMT: &str = "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')";

/// The pod resource.
pub const POD_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["po"],
    categories: &["all"],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[
        SelectableField {
            name: "spec.nodeName",
            pointer: "/spec/nodeName",
            default: "",
        },
        SelectableField {
            name: "spec.restartPolicy",
            pointer: "/spec/restartPolicy",
            default: "",
        },
        SelectableField {
            name: "spec.schedulerName",
            pointer: "/spec/schedulerName",
            default: "",
        },
        SelectableField {
            name: "spec.serviceAccountName",
            pointer: "/spec/serviceAccountName",
            default: "",
        },
        SelectableField {
            name: "spec.hostNetwork",
            pointer: "/spec/hostNetwork",
            default: "false",
        },
        SelectableField {
            name: "status.phase",
            pointer: "/status/phase",
            default: "",
        },
        SelectableField {
            name: "status.podIP",
            pointer: "/status/podIP",
            default: "",
        },
        SelectableField {
            name: "status.nominatedNodeName",
            pointer: "/status/nominatedNodeName",
            default: "",
        },
    ],
    return_deleted_object: true,
};

const COLUMNS: [Column; 7] = [
    super::table::NAME_COLUMN,
    Column { name: "Ready", kind: "string", format: "", description: "The aggregate readiness state of this pod for accepting traffic.", priority: 0 },
    Column { name: "Status", kind: "string", format: "", description: "The aggregate status of the containers in this pod.", priority: 0 },
    Column { name: "Restarts", kind: "string", format: "", description: "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", priority: 0 },
    super::table::AGE_COLUMN,
    Column { name: "IP", kind: "string", format: "", description: "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", priority: 1 },
    Column { name: "Node", kind: "string", format: "", description: "NodeName is a request to schedule this pod onto a specific node.", priority: 1 },
];

/// The pod [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PodHandler;

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

fn default_container(c: &mut Value) {
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
}

/// Requests and limits of cpu and memory of one container: (cpu request, cpu limit, memory
/// request, memory limit), unparseable values ignored (validation reports them).
fn container_resources(c: &Container) -> [Option<u64>; 4] {
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str,
         parse: fn(&str) -> Result<u64, super::quantity::QuantityError>| {
            m.and_then(|m| m.get(k)).and_then(|q| parse(&q.0).ok())
        };
    let r = c.resources.as_ref();
    let req = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    [
        get(req, "cpu", parse_cpu_millis),
        get(lim, "cpu", parse_cpu_millis),
        get(req, "memory", parse_memory_bytes),
        get(lim, "memory", parse_memory_bytes),
    ]
}

/// The QoS class of a pod spec, as Kubernetes computes it from cpu and memory: `Guaranteed` when
/// every container has limits with equal (or unset) requests, `BestEffort` with no requests or
/// limits anywhere, `Burstable` otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let [cpu_req, cpu_lim, mem_req, mem_lim] = container_resources(c);
        if [cpu_req, cpu_lim, mem_req, mem_lim]
            .iter()
            .any(|v| v.is_some_and(|v| v > 0))
        {
            any = true;
        }
        let cpu_ok =
            cpu_lim.is_some_and(|l| l > 0) && cpu_req.is_none_or(|r| r == cpu_lim.unwrap_or(0));
        let mem_ok =
            mem_lim.is_some_and(|l| l > 0) && mem_req.is_none_or(|r| r == mem_lim.unwrap_or(0));
        if !(cpu_ok && mem_ok) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn validate_resources(c: &Container, path: &str, errs: &mut Vec<FieldError>) {
    let Some(r) = &c.resources else { return };
    let mut parsed: [BTreeMap<&str, u64>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (i, (which, map)) in [("requests", &r.requests), ("limits", &r.limits)]
        .into_iter()
        .enumerate()
    {
        for (name, q) in map.iter().flatten() {
            let field = format!("{path}.resources.{which}[{name}]");
            let valid_name = matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("hugepages-")
                || name.contains('/');
            if !valid_name {
                errs.push(FieldError::invalid(
                    format!("{path}.resources.{which}"),
                    &json!(name),
                    "must be a standard resource type or fully qualified",
                ));
                continue;
            }
            let result = if name == "cpu" {
                parse_cpu_millis(&q.0)
            } else {
                parse_memory_bytes(&q.0)
            };
            match result {
                Ok(v) => {
                    parsed[i].insert(name.as_str(), v);
                }
                Err(e) => errs.push(FieldError::invalid(field, &json!(q.0), e.to_string())),
            }
        }
    }
    for name in ["cpu", "memory"] {
        if let (Some(req), Some(lim)) = (parsed[0].get(name), parsed[1].get(name)) {
            if req > lim {
                let q = r
                    .requests
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                let l = r
                    .limits
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                errs.push(FieldError::invalid(
                    format!("{path}.resources.requests"),
                    &json!(q),
                    format!("must be less than or equal to {name} limit of {l}"),
                ));
            }
        }
    }
}

/// Whether `n` is a valid port name (IANA service name: at most 15 lowercase alphanumerics or
/// '-', at least one letter, no leading, trailing or repeated '-').
pub(super) fn is_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

pub(super) const PORT_NAME_FMT: &str = "must be no more than 15 characters, contain only lowercase alphanumerics and '-' with at least one letter, and not start, end or repeat '-'";

/// A probe's port: a number in range, or the name of one of the container's ports (the edge
/// gets the number; the projection resolves names, so an unknown name must not get stored).
fn validate_probe_port(
    port: &IntOrString,
    field: String,
    c: &Container,
    errs: &mut Vec<FieldError>,
) {
    match port {
        IntOrString::Int(n) if !(1..=65535).contains(n) => errs.push(FieldError::invalid(
            field,
            &json!(n),
            "must be between 1 and 65535, inclusive",
        )),
        IntOrString::Int(_) => {}
        IntOrString::String(name) if !is_port_name(name) => {
            errs.push(FieldError::invalid(field, &json!(name), PORT_NAME_FMT))
        }
        IntOrString::String(name) => {
            let known = c
                .ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some(name.as_str()));
            if !known {
                errs.push(FieldError::invalid(
                    field,
                    &json!(name),
                    "must be the name of one of the container's ports",
                ));
            }
        }
    }
}

/// Kubernetes' probe rules (one handler, non-negative numbers, `successThreshold` 1 for
/// liveness and startup) plus what the edge cannot run (grpc).
fn validate_probe(
    probe: &Probe,
    path: &str,
    which: &str,
    c: &Container,
    errs: &mut Vec<FieldError>,
) {
    let handlers: Vec<&str> = [
        ("exec", probe.exec.is_some()),
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("grpc", probe.grpc.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match handlers.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a handler type")),
        [_] => {}
        [_, second, ..] => errs.push(FieldError::forbidden(
            format!("{path}.{second}"),
            "may not specify more than 1 handler type",
        )),
    }
    if probe.grpc.is_some() {
        errs.push(FieldError::forbidden(
            format!("{path}.grpc"),
            GRPC_UNSUPPORTED,
        ));
    }
    if let Some(e) = &probe.exec {
        if e.command.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(format!("{path}.exec.command"), ""));
        }
    }
    if let Some(h) = &probe.http_get {
        validate_probe_port(&h.port, format!("{path}.httpGet.port"), c, errs);
        if h.path.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(format!("{path}.httpGet.path"), ""));
        }
        if let Some(scheme) = h.scheme.as_deref() {
            if !PROBE_SCHEMES.contains(&scheme) {
                errs.push(FieldError::not_supported(
                    format!("{path}.httpGet.scheme"),
                    &json!(scheme),
                    &PROBE_SCHEMES,
                ));
            }
        }
        for (i, header) in h.http_headers.iter().flatten().enumerate() {
            let n = &header.name;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                errs.push(FieldError::invalid(
                    format!("{path}.httpGet.httpHeaders[{i}].name"),
                    &json!(n),
                    HEADER_NAME_FMT,
                ));
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        validate_probe_port(&t.port, format!("{path}.tcpSocket.port"), c, errs);
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                &json!(v),
                "must be greater than or equal to 0",
            ));
        }
    }
    if which != "readinessProbe" {
        if let Some(v) = probe.success_threshold.filter(|v| *v != 1) {
            errs.push(FieldError::invalid(
                format!("{path}.successThreshold"),
                &json!(v),
                "must be 1",
            ));
        }
    }
    if let Some(g) = probe.termination_grace_period_seconds {
        if which == "readinessProbe" {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &json!(g),
                "must not be set for readinessProbes",
            ));
        } else if g <= 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &json!(g),
                "must be greater than 0",
            ));
        }
    }
}

/// The name and key of a `configMapKeyRef`/`secretKeyRef` (`path` is the selector's path).
fn validate_key_ref(name: &str, key: &str, path: &str, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        push_invalid(errs, &format!("{path}.name"), name, dns1123_subdomain(name));
    }
    if key.is_empty() {
        errs.push(FieldError::required(format!("{path}.key"), ""));
    } else {
        push_invalid(errs, &format!("{path}.key"), key, config_key(key));
    }
}

/// The name of a referenced ConfigMap or Secret (envFrom, volumes).
fn validate_ref_name(name: &str, path: String, errs: &mut Vec<FieldError>) {
    if name.is_empty() {
        errs.push(FieldError::required(path, ""));
    } else {
        push_invalid(errs, &path, name, dns1123_subdomain(name));
    }
}

/// A valid environment variable name (or envFrom prefix): printable ASCII other than '='.
fn is_env_name(n: &str) -> bool {
    !n.contains('=') && !n.chars().any(|ch| ch.is_control())
}

fn validate_env_sources(c: &Container, path: &str, errs: &mut Vec<FieldError>) {
    for (i, e) in c.env.iter().flatten().enumerate() {
        let Some(from) = &e.value_from else { continue };
        let fp = format!("{path}.env[{i}].valueFrom");
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.push(FieldError::invalid(
                fp.clone(),
                &json!(""),
                "may not be specified when `value` is not empty",
            ));
        }
        let sources = [
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count();
        match sources {
            0 => errs.push(FieldError::invalid(
                fp.clone(),
                &json!(""),
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            )),
            1 => {}
            _ => errs.push(FieldError::invalid(
                fp.clone(),
                &json!(""),
                "may not have more than one field specified at a time",
            )),
        }
        if from.resource_field_ref.is_some() {
            errs.push(FieldError::forbidden(
                format!("{fp}.resourceFieldRef"),
                "resourceFieldRef is not supported on edge nodes; use fieldRef, configMapKeyRef or secretKeyRef",
            ));
        }
        if let Some(k) = &from.config_map_key_ref {
            validate_key_ref(&k.name, &k.key, &format!("{fp}.configMapKeyRef"), errs);
        }
        if let Some(k) = &from.secret_key_ref {
            validate_key_ref(&k.name, &k.key, &format!("{fp}.secretKeyRef"), errs);
        }
    }
    for (i, ef) in c.env_from.iter().flatten().enumerate() {
        let fp = format!("{path}.envFrom[{i}]");
        if let Some(prefix) = ef.prefix.as_deref().filter(|p| !is_env_name(p)) {
            errs.push(FieldError::invalid(
                format!("{fp}.prefix"),
                &json!(prefix),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        match (&ef.config_map_ref, &ef.secret_ref) {
            (None, None) => errs.push(FieldError::invalid(
                fp,
                &json!(""),
                "must specify one of: `configMapRef` or `secretRef`",
            )),
            (Some(_), Some(_)) => errs.push(FieldError::forbidden(
                fp,
                "may not have more than one field specified at a time",
            )),
            (Some(r), None) => validate_ref_name(&r.name, format!("{fp}.configMapRef.name"), errs),
            (None, Some(r)) => validate_ref_name(&r.name, format!("{fp}.secretRef.name"), errs),
        }
    }
}

/// The keys and relative paths of a ConfigMap or Secret volume's `items`.
fn validate_items(items: &Option<Vec<KeyToPath>>, path: &str, errs: &mut Vec<FieldError>) {
    for (i, item) in items.iter().flatten().enumerate() {
        let ip = format!("{path}.items[{i}]");
        if item.key.is_empty() {
            errs.push(FieldError::required(format!("{ip}.key"), ""));
        } else {
            push_invalid(errs, &format!("{ip}.key"), &item.key, config_key(&item.key));
        }
        if item.path.is_empty() {
            errs.push(FieldError::required(format!("{ip}.path"), ""));
        } else if item.path.starts_with('/') {
            errs.push(FieldError::invalid(
                format!("{ip}.path"),
                &json!(item.path),
                "must be a relative path",
            ));
        } else if item.path.split('/').any(|c| c == "..") {
            errs.push(FieldError::invalid(
                format!("{ip}.path"),
                &json!(item.path),
                "must not contain '..'",
            ));
        }
    }
}

/// The `devices.skerry.io/<container>` annotations: each names a container of the pod and is
/// a well-formed device list (see [`crate::devices`]).
fn validate_device_annotations(pod: &Pod) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let containers: HashSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        let Some(container) = key.strip_prefix(devices::ANNOTATION_PREFIX) else {
            continue;
        };
        let field = format!("metadata.annotations[{key}]");
        if !containers.contains(container) {
            errs.push(FieldError::invalid(
                field,
                &json!(value),
                format!(
                    "names no container of this pod; use {}<container-name>",
                    devices::ANNOTATION_PREFIX
                ),
            ));
        } else if let Err(e) = devices::parse(value) {
            errs.push(FieldError::invalid(field, &json!(value), e.to_string()));
        }
    }
    errs
}

/// The device annotations of a pod object, for the update rule.
fn device_annotations(obj: &Value) -> BTreeMap<String, Value> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(devices::ANNOTATION_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn validate_container(
    c: &Container,
    path: &str,
    volumes: &HashSet<&str>,
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        push_invalid(
            errs,
            &format!("{path}.name"),
            &c.name,
            dns1123_label(&c.name),
        );
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(
                format!("{path}.name"),
                &json!(c.name),
            ));
        }
    }
    match c.image.as_deref() {
        None => errs.push(FieldError::required(format!("{path}.image"), "")),
        Some(i) if i.trim().is_empty() => {
            errs.push(FieldError::required(format!("{path}.image"), ""))
        }
        Some(i) if i.trim() != i => errs.push(FieldError::invalid(
            format!("{path}.image"),
            &json!(i),
            "must not have leading or trailing whitespace",
        )),
        Some(_) => {}
    }
    if let Some(p) = &c.image_pull_policy {
        if !PULL_POLICIES.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.imagePullPolicy"),
                &json!(p),
                &PULL_POLICIES,
            ));
        }
    }
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if !(1..=65535).contains(&p.container_port) {
            errs.push(FieldError::invalid(
                format!("{pp}.containerPort"),
                &json!(p.container_port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(h) = p.host_port {
            if !(0..=65535).contains(&h) {
                errs.push(FieldError::invalid(
                    format!("{pp}.hostPort"),
                    &json!(h),
                    "must be between 0 and 65535, inclusive",
                ));
            }
        }
        if let Some(proto) = &p.protocol {
            if !PROTOCOLS.contains(&proto.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("{pp}.protocol"),
                    &json!(proto),
                    &PROTOCOLS,
                ));
            }
        }
        if let Some(n) = &p.name {
            if !is_port_name(n) {
                errs.push(FieldError::invalid(
                    format!("{pp}.name"),
                    &json!(n),
                    PORT_NAME_FMT,
                ));
            } else if !port_names.insert(n.clone()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(n)));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{path}.env[{i}].name"), ""));
        } else if !is_env_name(&e.name) {
            errs.push(FieldError::invalid(
                format!("{path}.env[{i}].name"),
                &json!(e.name),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errs.push(FieldError::required(format!("{mp}.name"), ""));
        } else if !volumes.contains(m.name.as_str()) {
            errs.push(FieldError::not_found(format!("{mp}.name"), &json!(m.name)));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mp}.mountPath"), ""));
        } else if !mount_paths.insert(m.mount_path.clone()) {
            errs.push(FieldError::invalid(
                format!("{mp}.mountPath"),
                &json!(m.mount_path),
                "must be unique",
            ));
        }
    }
    validate_env_sources(c, path, errs);
    for (which, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            validate_probe(p, &format!("{path}.{which}"), which, c, errs);
        }
    }
    validate_resources(c, path, errs);
}

/// Validates a pod spec (`path` is `spec`).
pub fn validate_spec(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut volumes: HashSet<&str> = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}].name");
        if v.name.is_empty() {
            errs.push(FieldError::required(vp, ""));
            continue;
        }
        push_invalid(&mut errs, &vp, &v.name, dns1123_label(&v.name));
        if !volumes.insert(v.name.as_str()) {
            errs.push(FieldError::duplicate(vp, &json!(v.name)));
        }
        if let Some(cm) = &v.config_map {
            let sp = format!("{path}.volumes[{i}].configMap");
            validate_ref_name(&cm.name, format!("{sp}.name"), &mut errs);
            validate_items(&cm.items, &sp, &mut errs);
        }
        if let Some(secret) = &v.secret {
            let sp = format!("{path}.volumes[{i}].secret");
            let name = secret.secret_name.as_deref().unwrap_or("");
            validate_ref_name(name, format!("{sp}.secretName"), &mut errs);
            validate_items(&secret.items, &sp, &mut errs);
        }
    }
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    // Refused rather than dropped: the edge would start the main containers without the steps
    // they depend on, and the user would find out only from broken pods.
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        errs.push(FieldError::forbidden(
            format!("{path}.initContainers"),
            "init containers are not run by Skerry edges yet; run the step at the start of a container's command instead",
        ));
    }
    let mut names = HashSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        validate_container(
            c,
            &format!("{path}.initContainers[{i}]"),
            &volumes,
            &mut names,
            &mut errs,
        );
    }
    for (i, c) in spec.containers.iter().enumerate() {
        validate_container(
            c,
            &format!("{path}.containers[{i}]"),
            &volumes,
            &mut names,
            &mut errs,
        );
    }
    if let Some(p) = &spec.restart_policy {
        if !RESTART_POLICIES.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &json!(p),
                &RESTART_POLICIES,
            ));
        }
    }
    if let Some(p) = &spec.dns_policy {
        if !DNS_POLICIES.contains(&p.as_str()) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                &json!(p),
                &DNS_POLICIES,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &json!(g),
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(d) = spec.active_deadline_seconds {
        if !(1..=i64::from(i32::MAX)).contains(&d) {
            errs.push(FieldError::invalid(
                format!("{path}.activeDeadlineSeconds"),
                &json!(d),
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        push_invalid(
            &mut errs,
            &format!("{path}.nodeName"),
            n,
            dns1123_subdomain(n),
        );
    }
    errs
}

use super::validation::errors_to_result as result;

/// The fields a pod update may change, in Kubernetes' words.
const UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Kubernetes' pod update rule: the spec is immutable except container images, a new or shorter
/// `activeDeadlineSeconds`, and added tolerations.
pub fn validate_spec_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut n = new.get("spec").cloned().unwrap_or(Value::Null);
    let o = old.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(nm) = n.as_object_mut() {
        for key in ["containers", "initContainers"] {
            let old_list = o.get(key).and_then(Value::as_array);
            if let (Some(nl), Some(ol)) = (nm.get_mut(key).and_then(Value::as_array_mut), old_list)
            {
                if nl.len() == ol.len() {
                    for (nc, oc) in nl.iter_mut().zip(ol) {
                        if let Some(nc) = nc.as_object_mut() {
                            match oc.get("image") {
                                Some(img) => nc.insert("image".into(), img.clone()),
                                None => nc.remove("image"),
                            };
                        }
                    }
                }
            }
        }
        let old_deadline = o.get("activeDeadlineSeconds").and_then(Value::as_i64);
        let new_deadline = nm.get("activeDeadlineSeconds").and_then(Value::as_i64);
        match (old_deadline, new_deadline) {
            (Some(_), None) => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &Value::Null,
                "must not update from a positive integer to nil value",
            )),
            (Some(o), Some(n)) if n > o => errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &json!(n),
                "must be less than or equal to previous value",
            )),
            _ => {}
        }
        match o.get("activeDeadlineSeconds") {
            Some(v) => nm.insert("activeDeadlineSeconds".into(), v.clone()),
            None => nm.remove("activeDeadlineSeconds"),
        };
        let old_tol = o
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let new_tol = nm
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if old_tol.iter().all(|t| new_tol.contains(t)) {
            match o.get("tolerations") {
                Some(v) => nm.insert("tolerations".into(), v.clone()),
                None => nm.remove("tolerations"),
            };
        }
    }
    if n != o {
        errs.push(FieldError::forbidden("spec", UPDATE_FORBIDDEN));
    }
    errs
}

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
    let mut initializing = false;
    for (i, cs) in init_statuses.iter().enumerate() {
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
    if !initializing {
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

fn restarts(pod: &Value, now: i64) -> String {
    let mut count = 0;
    let mut last: Option<i64> = None;
    for cs in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        count = cs
            .get("restartCount")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .saturating_add(count);
        if let Some(t) = cs
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(super::table::parse_timestamp)
        {
            last = Some(last.map_or(t, |l: i64| l.max(t)));
        }
    }
    match last {
        Some(t) if count > 0 => format!("{count} ({} ago)", super::table::human_duration(now - t)),
        _ => count.to_string(),
    }
}

fn none_if_empty(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(s) => json!(s),
        None => json!("<none>"),
    }
}

impl ResourceHandler for PodHandler {
    fn binding_subresource(&self) -> bool {
        true
    }

    fn info(&self) -> &ResourceInfo {
        &POD_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Pod>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        spec.entry("restartPolicy")
            .or_insert_with(|| json!("Always"));
        spec.entry("terminationGracePeriodSeconds")
            .or_insert_with(|| json!(DEFAULT_GRACE_SECONDS));
        spec.entry("dnsPolicy")
            .or_insert_with(|| json!("ClusterFirst"));
        spec.entry("schedulerName")
            .or_insert_with(|| json!("default-scheduler"));
        spec.entry("securityContext").or_insert_with(|| json!({}));
        for key in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
                cs.iter_mut().for_each(default_container);
            }
        }
        // A volume with no source is an emptyDir, as in Kubernetes.
        if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            for v in vols.iter_mut().filter_map(Value::as_object_mut) {
                if v.keys().all(|k| k == "name") {
                    v.insert("emptyDir".into(), json!({}));
                }
            }
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        // Status is the edge's to report; on create only the initial phase and QoS class.
        let qos = typed::<Pod>(obj)
            .ok()
            .and_then(|p| p.spec)
            .map_or("BestEffort", |s| qos_class(&s));
        if let Some(o) = obj.as_object_mut() {
            o.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let pod: Pod = typed(obj)?;
        let mut errs = validate_device_annotations(&pod);
        match &pod.spec {
            Some(spec) => errs.extend(validate_spec(spec, "spec")),
            None => errs.push(FieldError::required("spec.containers", "")),
        }
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = validate_spec_update(new, old);
        // Devices are part of what the edge runs, like the spec: changing them would restart
        // the containers behind the user's back.
        let (n, o) = (device_annotations(new), device_annotations(old));
        for key in n
            .keys()
            .chain(o.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if n.get(key) != o.get(key) {
                errs.push(FieldError::forbidden(
                    format!("metadata.annotations[{key}]"),
                    "device annotations cannot change once the pod exists; delete and recreate the pod",
                ));
            }
        }
        result(errs)
    }

    fn validate_status(&self, new: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if let Some(phase) = new.pointer("/status/phase") {
            if !phase.as_str().is_some_and(|p| PHASES.contains(&p)) {
                errs.push(FieldError::not_supported("status.phase", phase, &PHASES));
            }
        }
        result(errs)
    }

    fn on_delete(&self, obj: &Value, opts: &DeleteOptions, now: &str) -> DeleteAction {
        let spec_grace = obj
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        let mut grace = opts.grace_period_seconds.unwrap_or(spec_grace);
        // Unbound pods have nothing running, and finished pods nothing to stop: delete now.
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = obj
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !bound || phase == "Succeeded" || phase == "Failed" {
            grace = 0;
        }
        if grace < 0 {
            // As Kubernetes: a negative grace period means "as short as possible", not "now".
            grace = 1;
        }
        if grace == 0 {
            return DeleteAction::Delete;
        }
        let current = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if obj.pointer("/metadata/deletionTimestamp").is_some()
            && current.is_some_and(|c| c <= grace)
        {
            return DeleteAction::Unchanged;
        }
        // As Kubernetes: the timestamp is the deadline (now + grace), moved earlier when a later
        // delete shortens the grace.
        let deadline = protocol::timestamp::parse(now)
            .and_then(|t| t.checked_add(grace))
            .and_then(protocol::timestamp::checked_format)
            .unwrap_or_else(|| now.to_string());
        let mut updated = obj.clone();
        if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("deletionTimestamp".into(), json!(deadline));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        DeleteAction::Update(updated)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, pod: &Value, now: i64) -> Vec<Value> {
        let total = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ready = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|cs| cs.get("ready").and_then(Value::as_bool) == Some(true))
            .count();
        vec![
            pod.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(format!("{ready}/{total}")),
            json!(display_status(pod)),
            json!(restarts(pod, now)),
            age(pod, now),
            none_if_empty(pod.pointer("/status/podIP")),
            none_if_empty(pod.pointer("/spec/nodeName")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        let mut p = decode_as::<Pod>(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
        )
        .unwrap();
        PodHandler.default(&mut p);
        p
    }

    fn fields(r: Result<(), Vec<FieldError>>) -> Vec<(String, &'static str)> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.field.clone(), e.reason()))
            .collect()
    }

    #[test]
    fn defaults() {
        let p = pod(json!({"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx:1.25"},
            {"name": "c", "image": "reg:5000/x"},
            {"name": "d", "image": "x@sha256:abc"},
            {"name": "e", "image": "x:latest", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}}}],
            "volumes": [{"name": "v"}]}));
        let s = &p["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["schedulerName"], "default-scheduler");
        let pulls: Vec<&str> = s["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(
            pulls,
            ["Always", "IfNotPresent", "Always", "IfNotPresent", "Always"]
        );
        assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            s["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
        assert_eq!(s["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(
            s["containers"][4]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(s["containers"][0]["resources"], json!({}));
    }

    #[test]
    fn validation_reports_each_field() {
        let p = pod(json!({
            "restartPolicy": "Sometimes",
            "terminationGracePeriodSeconds": -1,
            "volumes": [{"name": "v"}, {"name": "v"}, {"name": "Bad_Name"}],
            "containers": [
                {"name": "a", "image": "", "ports": [{"containerPort": 0}, {"containerPort": 80, "hostPort": 70000}],
                 "volumeMounts": [{"name": "missing", "mountPath": "/x"}],
                 "resources": {"requests": {"cpu": "lots", "memory": "64Mi"}, "limits": {"memory": "32Mi"}}},
                {"name": "a", "image": "x"},
                {"name": "UPPER", "image": "x"}]}));
        let got = fields(PodHandler.validate(&p));
        let want = [
            ("spec.volumes[1].name", "FieldValueDuplicate"),
            ("spec.volumes[2].name", "FieldValueInvalid"),
            ("spec.containers[0].image", "FieldValueRequired"),
            (
                "spec.containers[0].ports[0].containerPort",
                "FieldValueInvalid",
            ),
            ("spec.containers[0].ports[1].hostPort", "FieldValueInvalid"),
            (
                "spec.containers[0].volumeMounts[0].name",
                "FieldValueNotFound",
            ),
            (
                "spec.containers[0].resources.requests[cpu]",
                "FieldValueInvalid",
            ),
            ("spec.containers[0].resources.requests", "FieldValueInvalid"),
            ("spec.containers[1].name", "FieldValueDuplicate"),
            ("spec.containers[2].name", "FieldValueInvalid"),
            ("spec.restartPolicy", "FieldValueNotSupported"),
            ("spec.terminationGracePeriodSeconds", "FieldValueInvalid"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
        assert_eq!(got, want);
        assert_eq!(
            fields(PodHandler.validate(&pod(json!({"containers": []})))),
            [("spec.containers".to_string(), "FieldValueRequired")]
        );
        assert!(PodHandler.validate(&pod(json!({"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "100m", "memory": "1e3"}}}]}))).is_ok());
    }

    #[test]
    fn probes_are_defaulted_like_kubernetes() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"port": "http"}, "periodSeconds": 0},
            "readinessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 7}}]}));
        let c = &p["spec"]["containers"][0];
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": "http", "path": "/", "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["failureThreshold"], 7);
        assert!(PodHandler.validate(&p).is_ok());
    }

    #[test]
    fn probes_the_edge_cannot_run_are_refused() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"grpc": {"port": 9000}, "successThreshold": 2},
            "readinessProbe": {"httpGet": {"port": "metrics"}, "initialDelaySeconds": -1,
                "terminationGracePeriodSeconds": 5},
            "startupProbe": {"tcpSocket": {"port": 70000}, "exec": {"command": ["true"]},
                "timeoutSeconds": -2}}]}));
        let got = fields(PodHandler.validate(&p));
        let want = [
            (
                "spec.containers[0].livenessProbe.grpc",
                "FieldValueForbidden",
            ),
            (
                "spec.containers[0].livenessProbe.successThreshold",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].readinessProbe.httpGet.port",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].readinessProbe.initialDelaySeconds",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].startupProbe.tcpSocket",
                "FieldValueForbidden",
            ),
            (
                "spec.containers[0].startupProbe.tcpSocket.port",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].startupProbe.timeoutSeconds",
                "FieldValueInvalid",
            ),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
        assert_eq!(got, want);
        let errs = PodHandler.validate(&p).unwrap_err();
        assert!(
            errs[0].to_string().contains(GRPC_UNSUPPORTED),
            "{}",
            errs[0]
        );
        assert!(errs[2].to_string().contains("\"metrics\""), "{}", errs[2]);
        let none = pod(
            json!({"containers": [{"name": "a", "image": "x", "livenessProbe": {"periodSeconds": 5}}]}),
        );
        assert_eq!(
            fields(PodHandler.validate(&none)),
            [(
                "spec.containers[0].livenessProbe".to_string(),
                "FieldValueRequired"
            )]
        );
    }

    #[test]
    fn config_references_are_checked() {
        let p = pod(json!({"containers": [{"name": "a", "image": "x",
            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "", "key": ".."}}},
                    {"name": "B", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "C", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            "envFrom": [{"prefix": "P_"}, {"configMapRef": {"name": "c"}, "secretRef": {"name": "s"}},
                        {"secretRef": {"name": "Bad_Name"}}]}],
            "volumes": [{"name": "v", "secret": {"items": [{"key": "k", "path": "/abs"}]}},
                        {"name": "w", "configMap": {"name": "c", "items": [{"key": "k", "path": "a/../../b"}]}}]}));
        let got = fields(PodHandler.validate(&p));
        let want = [
            ("spec.volumes[0].secret.secretName", "FieldValueRequired"),
            ("spec.volumes[0].secret.items[0].path", "FieldValueInvalid"),
            (
                "spec.volumes[1].configMap.items[0].path",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].env[0].valueFrom.configMapKeyRef.name",
                "FieldValueRequired",
            ),
            (
                "spec.containers[0].env[0].valueFrom.configMapKeyRef.key",
                "FieldValueInvalid",
            ),
            (
                "spec.containers[0].env[1].valueFrom.resourceFieldRef",
                "FieldValueForbidden",
            ),
            ("spec.containers[0].env[2].valueFrom", "FieldValueInvalid"),
            ("spec.containers[0].envFrom[0]", "FieldValueInvalid"),
            ("spec.containers[0].envFrom[1]", "FieldValueForbidden"),
            (
                "spec.containers[0].envFrom[2].secretRef.name",
                "FieldValueInvalid",
            ),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn device_annotations_are_checked_and_frozen() {
        let with = |annotations: Value| {
            let mut p = decode_as::<Pod>(json!({"metadata": {"name": "p", "namespace": "default",
                "annotations": annotations},
                "spec": {"containers": [{"name": "reader", "image": "x"}]}}))
            .unwrap();
            PodHandler.default(&mut p);
            p
        };
        let ok =
            with(json!({"devices.skerry.io/reader": "/dev/ttyUSB0,/dev/ttyACM0:/dev/ttyS0:rw"}));
        assert!(PodHandler.validate(&ok).is_ok());
        for bad in [
            "/etc/passwd",
            "/dev/ttyUSB0:/dev/ttyUSB0:rwx",
            "ttyUSB0",
            "/dev/a,,/dev/b",
        ] {
            let p = with(json!({"devices.skerry.io/reader": bad}));
            assert_eq!(
                fields(PodHandler.validate(&p)),
                [(
                    "metadata.annotations[devices.skerry.io/reader]".to_string(),
                    "FieldValueInvalid"
                )],
                "{bad}"
            );
        }
        let stray = with(json!({"devices.skerry.io/writer": "/dev/ttyUSB0"}));
        let errs = PodHandler.validate(&stray).unwrap_err();
        assert!(
            errs[0].to_string().contains("names no container"),
            "{}",
            errs[0]
        );
        // Other annotations may change; device annotations may not.
        let mut relabelled = ok.clone();
        relabelled["metadata"]["annotations"]["note"] = json!("x");
        assert!(PodHandler.validate_update(&relabelled, &ok).is_ok());
        let mut moved = ok.clone();
        moved["metadata"]["annotations"]["devices.skerry.io/reader"] = json!("/dev/ttyUSB1");
        assert_eq!(
            fields(PodHandler.validate_update(&moved, &ok)),
            [(
                "metadata.annotations[devices.skerry.io/reader]".to_string(),
                "FieldValueForbidden"
            )]
        );
    }

    #[test]
    fn qos() {
        let q = |spec: Value| {
            let p: Pod = serde_json::from_value(json!({"spec": spec})).unwrap();
            qos_class(&p.spec.unwrap())
        };
        assert_eq!(q(json!({"containers": [{"name": "a"}]})), "BestEffort");
        assert_eq!(
            q(
                json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            q(
                json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            q(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn update_rules() {
        let old = pod(
            json!({"containers": [{"name": "a", "image": "x:1"}], "tolerations": [{"key": "k", "operator": "Exists"}]}),
        );
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("x:2");
        new["spec"]["activeDeadlineSeconds"] = json!(10);
        new["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "j", "operator": "Exists"}));
        assert!(validate_spec_update(&new, &old).is_empty());
        let mut bad = old.clone();
        bad["spec"]["restartPolicy"] = json!("Never");
        let errs = validate_spec_update(&bad, &old);
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .to_string()
            .starts_with("spec: Forbidden: pod updates may not change fields other than"));
        let mut bad = old.clone();
        bad["spec"]["tolerations"] = json!([]);
        assert_eq!(validate_spec_update(&bad, &old).len(), 1);
        let mut with_deadline = old.clone();
        with_deadline["spec"]["activeDeadlineSeconds"] = json!(10);
        let mut longer = with_deadline.clone();
        longer["spec"]["activeDeadlineSeconds"] = json!(20);
        assert_eq!(
            validate_spec_update(&longer, &with_deadline)[0].field,
            "spec.activeDeadlineSeconds"
        );
    }

    #[test]
    fn graceful_delete() {
        let now = "2025-01-01T00:00:00Z";
        let mut bound = pod(json!({"nodeName": "n1", "containers": [{"name": "a", "image": "x"}]}));
        bound["status"] = json!({"phase": "Running"});
        let DeleteAction::Update(t) = PodHandler.on_delete(&bound, &DeleteOptions::default(), now)
        else {
            panic!()
        };
        assert_eq!(t["metadata"]["deletionTimestamp"], "2025-01-01T00:00:30Z");
        assert_eq!(t["metadata"]["deletionGracePeriodSeconds"], 30);
        // Same or longer grace: nothing changes; shorter: shortened; zero: force delete.
        assert_eq!(
            PodHandler.on_delete(
                &t,
                &DeleteOptions {
                    grace_period_seconds: Some(30)
                },
                now
            ),
            DeleteAction::Unchanged
        );
        let DeleteAction::Update(s) = PodHandler.on_delete(
            &t,
            &DeleteOptions {
                grace_period_seconds: Some(5),
            },
            "2025-01-01T00:00:10Z",
        ) else {
            panic!()
        };
        assert_eq!(s["metadata"]["deletionGracePeriodSeconds"], 5);
        assert_eq!(s["metadata"]["deletionTimestamp"], "2025-01-01T00:00:15Z");
        assert_eq!(
            PodHandler.on_delete(
                &t,
                &DeleteOptions {
                    grace_period_seconds: Some(0)
                },
                now
            ),
            DeleteAction::Delete
        );
        let DeleteAction::Update(n) = PodHandler.on_delete(
            &bound,
            &DeleteOptions {
                grace_period_seconds: Some(-3),
            },
            now,
        ) else {
            panic!()
        };
        assert_eq!(n["metadata"]["deletionGracePeriodSeconds"], 1);
        let unbound = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        assert_eq!(
            PodHandler.on_delete(&unbound, &DeleteOptions::default(), now),
            DeleteAction::Delete
        );
        bound["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            PodHandler.on_delete(&bound, &DeleteOptions::default(), now),
            DeleteAction::Delete
        );
    }

    #[test]
    fn table_rows() {
        let now = 1_735_689_600; // 2025-01-01T00:00:00Z
        let mut p = pod(
            json!({"nodeName": "edge-1", "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}),
        );
        p["metadata"]["creationTimestamp"] = json!("2024-12-31T23:55:00Z");
        p["status"] = json!({"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
            {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-12-31T23:59:00Z"}}}]});
        let row = PodHandler.table_row(&p, now);
        assert_eq!(
            row,
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3 (60s ago)"),
                json!("5m"),
                json!("10.0.0.5"),
                json!("edge-1")
            ]
        );
        p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        assert_eq!(PodHandler.table_row(&p, now)[2], "Terminating");
        let fresh = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
        let row = PodHandler.table_row(&fresh, now);
        assert_eq!(row[1], "0/1");
        assert_eq!(row[2], "Pending");
        assert_eq!(row[3], "0");
        assert_eq!(row[4], "<unknown>");
        assert_eq!(row[5], "<none>");
        let mut done = fresh.clone();
        done["status"] = json!({"phase": "Succeeded", "containerStatuses": [{"name": "a", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
        assert_eq!(display_status(&done), "Completed");
        let mut init = pod(
            json!({"initContainers": [{"name": "i", "image": "x"}], "containers": [{"name": "a", "image": "x"}]}),
        );
        init["status"] = json!({"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]});
        assert_eq!(display_status(&init), "Init:0/1");
    }

    #[test]
    fn init_containers_are_refused_until_edges_run_them() {
        let v = pod(json!({"initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "a", "image": "x"}]}));
        let errs = PodHandler.validate(&v).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().starts_with(
            "spec.initContainers: Forbidden: init containers are not run by Skerry edges yet"
        ));
    }
}
