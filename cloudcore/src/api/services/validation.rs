//! The field checks of Service validation that stand alone: one port, the session affinity
//! settings, the load-balancer fields, enumerations. [`super::ServiceHandler::validate`] runs
//! them with the checks across fields.

use super::PROTOCOLS;
use crate::api::error::FieldError;
use crate::api::validation::{dns1123_label, push_invalid, qualified_name};
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

fn is_port_name(n: &str) -> bool {
    crate::api::pods::is_port_name(n)
}

pub(super) fn validate_port(p: &ServicePort, i: usize, many: bool, errs: &mut Vec<FieldError>) {
    let path = format!("spec.ports[{i}]");
    match p.name.as_deref().unwrap_or("") {
        "" if many => errs.push(FieldError::required(format!("{path}.name"), "")),
        "" => {}
        name => push_invalid(errs, &format!("{path}.name"), name, dns1123_label(name)),
    }
    if !(1..=65535).contains(&p.port) {
        errs.push(FieldError::invalid(
            format!("{path}.port"),
            &json!(p.port),
            "must be between 1 and 65535, inclusive",
        ));
    }
    let protocol = p.protocol.as_deref().unwrap_or("TCP");
    if !PROTOCOLS.contains(&protocol) {
        errs.push(FieldError::not_supported(
            format!("{path}.protocol"),
            &json!(protocol),
            &PROTOCOLS,
        ));
    }
    match &p.target_port {
        Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => errs.push(FieldError::invalid(
            format!("{path}.targetPort"),
            &json!(n),
            "must be between 1 and 65535, inclusive",
        )),
        Some(IntOrString::String(s)) if !is_port_name(s) => errs.push(FieldError::invalid(
            format!("{path}.targetPort"),
            &json!(s),
            crate::api::pods::PORT_NAME_FMT,
        )),
        _ => {}
    }
    if let Some(n) = p.node_port.filter(|n| *n != 0) {
        if !(1..=65535).contains(&n) {
            errs.push(FieldError::invalid(
                format!("{path}.nodePort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

/// Kubernetes' `MaxClientIPServiceAffinitySeconds` (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// `sessionAffinityConfig`: only with `sessionAffinity: ClientIP`, whose timeout is 1..=86400
/// seconds.
pub(super) fn validate_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    errs: &mut Vec<FieldError>,
) {
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    let Some(cfg) = &spec.session_affinity_config else {
        return;
    };
    if affinity == "None" {
        errs.push(FieldError::invalid(
            "spec.sessionAffinityConfig",
            &serde_json::to_value(cfg).unwrap_or(Value::Null),
            "must not be set when session affinity is None",
        ));
        return;
    }
    if affinity == "ClientIP" {
        let timeout = cfg.client_ip.as_ref().and_then(|c| c.timeout_seconds);
        match timeout {
            Some(t) if t > 0 && t <= MAX_AFFINITY_TIMEOUT => {}
            Some(t) => errs.push(FieldError::invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                &json!(t),
                format!("must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"),
            )),
            None => errs.push(FieldError::required(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "",
            )),
        }
    }
}

/// The fields only a `LoadBalancer` Service may set, and what this cluster can do with one: it
/// has no load-balancer implementation, so a `LoadBalancer` Service is reached through its
/// node ports, which must therefore be allocated.
pub(super) fn validate_load_balancer_fields(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ty: &str,
    errs: &mut Vec<FieldError>,
) {
    const ONLY_LB: &str = "may only be used when `type` is 'LoadBalancer'";
    if ty != "LoadBalancer" {
        if spec.allocate_load_balancer_node_ports.is_some() {
            errs.push(FieldError::forbidden(
                "spec.allocateLoadBalancerNodePorts",
                ONLY_LB,
            ));
        }
        if spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            errs.push(FieldError::forbidden(
                "spec.loadBalancerSourceRanges",
                ONLY_LB,
            ));
        }
        if spec.load_balancer_class.is_some() {
            errs.push(FieldError::forbidden("spec.loadBalancerClass", ONLY_LB));
        }
        return;
    }
    if spec.allocate_load_balancer_node_ports == Some(false) {
        errs.push(FieldError::invalid(
            "spec.allocateLoadBalancerNodePorts",
            &json!(false),
            "this cluster has no load-balancer implementation: a LoadBalancer Service is reached on its node ports, so they must be allocated",
        ));
    }
    if let Some(class) = &spec.load_balancer_class {
        push_invalid(errs, "spec.loadBalancerClass", class, qualified_name(class));
    }
}

pub(super) fn one_of(
    field: &str,
    v: Option<&String>,
    allowed: &[&str],
    errs: &mut Vec<FieldError>,
) {
    if let Some(v) = v {
        if !allowed.contains(&v.as_str()) {
            errs.push(FieldError::not_supported(field, &json!(v), allowed));
        }
    }
}
