//! Validation of a pod spec (`pkg/apis/core/validation`): containers, ports, probes, env and
//! volume references, device annotations. Also used for the pod templates of workloads.

use super::resources::validate_resources;
use crate::api::error::FieldError;
use crate::api::validation::{config_key, dns1123_label, dns1123_subdomain, push_invalid};
use crate::devices;
use crate::projection::support::Refusal;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, KeyToPath, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

const RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];
const DNS_POLICIES: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
pub(super) const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];
const PROBE_SCHEMES: [&str; 2] = ["HTTP", "HTTPS"];
/// The probes of a container, by field name.
pub(super) const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
pub(super) const GRPC_UNSUPPORTED: &str =
    "grpc probes are not supported on edge nodes; use exec, tcpSocket or httpGet";
const HEADER_NAME_FMT: &str = "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')";

/// Whether `n` is a valid port name (IANA service name: at most 15 lowercase alphanumerics or
/// '-', at least one letter, no leading, trailing or repeated '-').
pub(in crate::api) fn is_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

pub(in crate::api) const PORT_NAME_FMT: &str = "must be no more than 15 characters, contain only lowercase alphanumerics and '-' with at least one letter, and not start, end or repeat '-'";

/// A probe's port: a number in range, or the name of one of the container's ports (the edge
/// gets the number; the projection resolves names, so an unknown name must not get stored).
pub(super) fn validate_probe_port(
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

/// An `httpGet` action (of a probe or a lifecycle hook) at `path`: its port, path, scheme and
/// header names, as `validateHTTPGetAction` checks them.
pub(super) fn validate_http_get(
    h: &HTTPGetAction,
    path: &str,
    c: &Container,
    errs: &mut Vec<FieldError>,
) {
    validate_probe_port(&h.port, format!("{path}.port"), c, errs);
    if h.path.as_deref().unwrap_or("").is_empty() {
        errs.push(FieldError::required(format!("{path}.path"), ""));
    }
    if let Some(scheme) = h.scheme.as_deref() {
        if !PROBE_SCHEMES.contains(&scheme) {
            errs.push(FieldError::not_supported(
                format!("{path}.scheme"),
                &json!(scheme),
                &PROBE_SCHEMES,
            ));
        }
    }
    for (i, header) in h.http_headers.iter().flatten().enumerate() {
        let n = &header.name;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            errs.push(FieldError::invalid(
                format!("{path}.httpHeaders[{i}].name"),
                &json!(n),
                HEADER_NAME_FMT,
            ));
        }
    }
}

/// Exactly one of a probe's or a hook's handlers is set (`handlers`: each name and whether
/// it is), in upstream's words.
pub(super) fn one_handler(path: &str, handlers: &[(&str, bool)], errs: &mut Vec<FieldError>) {
    let set: Vec<&str> = handlers
        .iter()
        .filter_map(|(name, set)| set.then_some(*name))
        .collect();
    match set.as_slice() {
        [] => errs.push(FieldError::required(path, "must specify a handler type")),
        [_] => {}
        [_, second, ..] => errs.push(FieldError::forbidden(
            format!("{path}.{second}"),
            "may not specify more than 1 handler type",
        )),
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
    one_handler(
        path,
        &[
            ("exec", probe.exec.is_some()),
            ("httpGet", probe.http_get.is_some()),
            ("tcpSocket", probe.tcp_socket.is_some()),
            ("grpc", probe.grpc.is_some()),
        ],
        errs,
    );
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
        validate_http_get(h, &format!("{path}.httpGet"), c, errs);
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
        if let Some(f) = &from.field_ref {
            if !protocol::downward::is_env_path(&f.field_path) {
                errs.push(FieldError::not_supported(
                    format!("{fp}.fieldRef.fieldPath"),
                    &json!(f.field_path),
                    &protocol::downward::ENV_PATHS,
                ));
            }
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

/// A relative file path in a volume: not absolute, no `..` (as upstream's
/// `validateLocalDescendingPath`).
fn validate_file_path(file: &str, path: String, errs: &mut Vec<FieldError>) {
    if file.is_empty() {
        errs.push(FieldError::required(path, ""));
    } else if file.starts_with('/') {
        errs.push(FieldError::invalid(
            path,
            &json!(file),
            "must be a relative path",
        ));
    } else if file.split('/').any(|c| c == "..") {
        errs.push(FieldError::invalid(
            path,
            &json!(file),
            "must not contain '..'",
        ));
    }
}

/// The files of a downwardAPI volume or projection: a relative path each, one `fieldRef`
/// (or `resourceFieldRef`, which the support check refuses) naming a field a file can hold,
/// a mode within 0777.
fn validate_downward_files(
    files: &Option<Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    for (i, f) in files.iter().flatten().enumerate() {
        let ip = format!("{path}.items[{i}]");
        validate_file_path(&f.path, format!("{ip}.path"), errs);
        match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), None) => {
                if protocol::downward::PodField::parse(&r.field_path).is_none() {
                    errs.push(FieldError::not_supported(
                        format!("{ip}.fieldRef.fieldPath"),
                        &json!(r.field_path),
                        &protocol::downward::VOLUME_PATHS,
                    ));
                }
            }
            (None, Some(_)) => {}
            (None, None) => errs.push(FieldError::required(
                ip.clone(),
                "must specify one of: `fieldRef` or `resourceFieldRef`",
            )),
            (Some(_), Some(_)) => errs.push(FieldError::invalid(
                ip.clone(),
                &json!("resource"),
                "fieldRef and resourceFieldRef can not be specified simultaneously",
            )),
        }
        if let Some(mode) = f.mode.filter(|m| !(0..=0o777).contains(m)) {
            errs.push(FieldError::invalid(
                format!("{ip}.mode"),
                &json!(mode),
                "must be a number between 0 and 0777 (octal), both inclusive",
            ));
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
pub(super) fn validate_device_annotations(pod: &Pod) -> Vec<FieldError> {
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
pub(super) fn device_annotations(obj: &Value) -> BTreeMap<String, Value> {
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

/// Kubernetes' rules for an init container: `restartPolicy` only `Always` (a sidecar), and
/// no lifecycle hooks nor probes unless it is a sidecar (an init container that runs to completion is never
/// ready or live; it just ends).
fn validate_init_container(c: &Container, path: &str, errs: &mut Vec<FieldError>) {
    let sidecar = match c.restart_policy.as_deref() {
        None => false,
        Some("Always") => true,
        Some(p) => {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &json!(p),
                &["Always"],
            ));
            false
        }
    };
    if sidecar {
        return;
    }
    for (which, set) in [
        ("lifecycle", c.lifecycle.is_some()),
        ("livenessProbe", c.liveness_probe.is_some()),
        ("readinessProbe", c.readiness_probe.is_some()),
        ("startupProbe", c.startup_probe.is_some()),
    ] {
        if set {
            errs.push(FieldError::forbidden(
                format!("{path}.{which}"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
    }
}

/// Kubernetes' limits on `dnsConfig` (`validatePodDNSConfig`): they are libc's resolver limits,
/// which the edge writes into the pod's `resolv.conf`.
const MAX_DNS_NAMESERVERS: usize = 3;
const MAX_DNS_SEARCH_PATHS: usize = 32;
const MAX_DNS_SEARCH_LIST_CHARS: usize = 2048;

/// `dnsConfig` as `validatePodDNSConfig` checks it: `dnsPolicy: None` needs a `dnsConfig` with a
/// nameserver; nameservers are at most 3 IP addresses; searches at most 32 subdomains (a
/// trailing dot allowed) of at most 2048 characters with their spaces; options have names.
fn validate_dns_config(spec: &PodSpec, path: &str, errs: &mut Vec<FieldError>) {
    let path = format!("{path}.dnsConfig");
    let none = spec.dns_policy.as_deref() == Some("None");
    let Some(config) = &spec.dns_config else {
        if none {
            errs.push(FieldError::required(
                path,
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        }
        return;
    };
    let nameservers = config.nameservers.as_deref().unwrap_or_default();
    if none && nameservers.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.nameservers"),
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
        return;
    }
    if nameservers.len() > MAX_DNS_NAMESERVERS {
        errs.push(FieldError::invalid(
            format!("{path}.nameservers"),
            &json!(nameservers),
            format!("must not have more than {MAX_DNS_NAMESERVERS} nameservers"),
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                format!("{path}.nameservers[{i}]"),
                &json!(ns),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let searches = config.searches.as_deref().unwrap_or_default();
    if searches.len() > MAX_DNS_SEARCH_PATHS {
        errs.push(FieldError::invalid(
            format!("{path}.searches"),
            &json!(searches),
            format!("must not have more than {MAX_DNS_SEARCH_PATHS} search paths"),
        ));
    }
    if searches.join(" ").len() > MAX_DNS_SEARCH_LIST_CHARS {
        errs.push(FieldError::invalid(
            format!("{path}.searches"),
            &json!(searches),
            format!(
                "must not have more than {MAX_DNS_SEARCH_LIST_CHARS} characters (including spaces) in the search list"
            ),
        ));
    }
    for (i, search) in searches.iter().enumerate() {
        let search = search.strip_suffix('.').unwrap_or(search);
        push_invalid(
            errs,
            &format!("{path}.searches[{i}]"),
            search,
            dns1123_subdomain(search),
        );
    }
    for (i, option) in config.options.iter().flatten().enumerate() {
        if option.name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(
                format!("{path}.options[{i}]"),
                "must not be empty",
            ));
        }
    }
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
        if let Some(d) = &v.downward_api {
            let dp = format!("{path}.volumes[{i}].downwardAPI");
            validate_downward_files(&d.items, &dp, &mut errs);
        }
        for (j, source) in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .enumerate()
        {
            let sp = format!("{path}.volumes[{i}].projected.sources[{j}]");
            if let Some(cm) = &source.config_map {
                validate_ref_name(&cm.name, format!("{sp}.configMap.name"), &mut errs);
                validate_items(&cm.items, &format!("{sp}.configMap"), &mut errs);
            }
            if let Some(secret) = &source.secret {
                validate_ref_name(&secret.name, format!("{sp}.secret.name"), &mut errs);
                validate_items(&secret.items, &format!("{sp}.secret"), &mut errs);
            }
            if let Some(d) = &source.downward_api {
                validate_downward_files(&d.items, &format!("{sp}.downwardAPI"), &mut errs);
            }
        }
    }
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    // Names are unique across init and app containers (one numbering on the edge, one
    // `kubectl logs -c`).
    let mut names = HashSet::new();
    // As the API server sees it after defaulting.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let cp = format!("{path}.initContainers[{i}]");
        validate_container(c, &cp, &volumes, &mut names, &mut errs);
        validate_init_container(c, &cp, &mut errs);
        if c.restart_policy.as_deref() == Some("Always") {
            super::lifecycle::validate_lifecycle(c, &cp, grace, &mut errs);
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        validate_container(c, &cp, &volumes, &mut names, &mut errs);
        super::lifecycle::validate_lifecycle(c, &cp, grace, &mut errs);
        if c.restart_policy.is_some() {
            errs.push(FieldError::forbidden(
                format!("{cp}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    // What the edge cannot run, refused by name: the check the projection makes too.
    for u in crate::projection::support::unsupported(spec, path) {
        errs.push(match u.refusal {
            Refusal::Value { value, supported } => {
                FieldError::not_supported(u.field, &json!(value), supported)
            }
            Refusal::Forbidden(why) => FieldError::forbidden(u.field, why),
        });
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
    validate_dns_config(spec, path, &mut errs);
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
    validate_names(spec, path, &mut errs);
    errs
}

/// `hostname` and `subdomain` are DNS labels, each `hostAliases` entry an IP address with
/// names that are DNS subdomains, as upstream validates them: the edge writes them into the
/// pod's UTS namespace and `/etc/hosts` as they are.
fn validate_names(spec: &PodSpec, path: &str, errs: &mut Vec<FieldError>) {
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            push_invalid(errs, &format!("{path}.{field}"), v, dns1123_label(v));
        }
    }
    for (i, alias) in spec.host_aliases.iter().flatten().enumerate() {
        let ap = format!("{path}.hostAliases[{i}]");
        if alias.ip.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                format!("{ap}.ip"),
                &json!(alias.ip),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        for name in alias.hostnames.iter().flatten() {
            push_invalid(
                errs,
                &format!("{ap}.hostnames"),
                name,
                dns1123_subdomain(name),
            );
        }
    }
}
