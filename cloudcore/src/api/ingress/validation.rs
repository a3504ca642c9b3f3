//! Kubernetes' `ValidateIngressSpec`, `ValidateIngressStatusUpdate` and
//! `ValidateIngressClass` (pkg/apis/networking/validation), with what Skerry does not route
//! refused with a 422 naming the field.
//!
//! Differences from kube-apiserver, each because the edge router could not honour the field:
//! - a `resource` backend is refused (the router forwards to Services only);
//! - a class with Skerry's controller takes no `parameters`, and its node selector annotation
//!   must parse.

use super::super::error::FieldError;
use super::super::pods::validation::{is_port_name, PORT_NAME_FMT};
use super::super::validation::{dns1035_label, dns1123_subdomain, push_invalid};
use super::{CONTROLLER, NODE_SELECTOR_ANNOTATION};
use k8s_openapi::api::networking::v1::{IngressBackend, IngressClass, IngressSpec, IngressStatus};
use serde_json::json;

/// The path types of `spec.rules[].http.paths[].pathType`. `ImplementationSpecific` matches as
/// `Prefix` on Skerry's edge router (docs/networking.md).
pub const PATH_TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];

/// The longest `spec.controller` of an IngressClass (Kubernetes' `maxLenIngressClassController`).
pub const MAX_CONTROLLER_LEN: usize = 250;

const WILDCARD_FMT: &str = "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Sequences a path of type Exact or Prefix may not contain (Kubernetes' `invalidPathSequences`).
const INVALID_SEQUENCES: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];
/// Endings such a path may not have (`invalidPathSuffixes`).
const INVALID_SUFFIXES: [&str; 2] = ["/..", "/."];

/// The problems with a rule or TLS host: a DNS subdomain, or `*.` and one; never an IP.
pub fn host_problems(host: &str) -> Vec<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return vec!["must be a DNS name, not an IP address".into()];
    }
    match host.strip_prefix("*.") {
        Some(rest) => {
            if dns1123_subdomain(rest).is_empty() && host.len() <= 253 {
                Vec::new()
            } else {
                vec![WILDCARD_FMT.into()]
            }
        }
        None if host.contains('*') => vec![WILDCARD_FMT.into()],
        None => dns1123_subdomain(host),
    }
}

/// Whether a character may appear in an Exact or Prefix path (Kubernetes' `validPathRegex`
/// `^/[A-Za-z0-9/\-._~%!$&'()*+,;=:]*$`).
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-._~%!$&'()*+,;=:".contains(c)
}

fn validate_path(path: &str, path_type: &str, at: &str, errs: &mut Vec<FieldError>) {
    let field = format!("{at}.path");
    if path.is_empty() && path_type == "ImplementationSpecific" {
        return;
    }
    if !path.starts_with('/') {
        errs.push(FieldError::invalid(
            &field,
            &json!(path),
            "must be an absolute path",
        ));
        return;
    }
    if path_type == "ImplementationSpecific" {
        return;
    }
    for s in INVALID_SEQUENCES {
        if path.contains(s) {
            errs.push(FieldError::invalid(
                &field,
                &json!(path),
                format!("must not contain '{s}'"),
            ));
        }
    }
    for s in INVALID_SUFFIXES {
        if path.ends_with(s) {
            errs.push(FieldError::invalid(
                &field,
                &json!(path),
                format!("cannot end with '{s}'"),
            ));
        }
    }
    if !path.chars().all(path_char) {
        errs.push(FieldError::invalid(
            &field,
            &json!(path),
            "must match the regex ^/[A-Za-z0-9/\\-._~%!$&'()*+,;=:]*$ when pathType is 'Exact' or 'Prefix'",
        ));
    }
}

/// `validateIngressBackend`: exactly one of `service` and `resource`, and Skerry routes only
/// to Services; a Service port by number or by name, not both.
pub fn validate_backend(b: &IngressBackend, at: &str, errs: &mut Vec<FieldError>) {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => {
            errs.push(FieldError::invalid(
                at,
                &json!(""),
                "cannot set both resource and service backends",
            ));
        }
        (None, Some(_)) => errs.push(FieldError::forbidden(
            format!("{at}.resource"),
            "resource backends are not supported by Skerry's edge ingress; use service",
        )),
        (None, None) => errs.push(FieldError::invalid(
            at,
            &json!(""),
            "one backend type must be specified",
        )),
        (Some(svc), None) => {
            let name_at = format!("{at}.service.name");
            if svc.name.is_empty() {
                errs.push(FieldError::required(&name_at, ""));
            } else {
                push_invalid(errs, &name_at, &svc.name, dns1035_label(&svc.name));
            }
            let port_at = format!("{at}.service.port");
            let port = svc.port.as_ref();
            let name = port
                .and_then(|p| p.name.as_deref())
                .filter(|n| !n.is_empty());
            let number = port.and_then(|p| p.number).filter(|n| *n != 0);
            match (name, number) {
                (Some(_), Some(_)) => errs.push(FieldError::invalid(
                    &port_at,
                    &json!(""),
                    "cannot set both port name & port number",
                )),
                (Some(n), None) => {
                    if !is_port_name(n) {
                        errs.push(FieldError::invalid(
                            format!("{port_at}.name"),
                            &json!(n),
                            PORT_NAME_FMT,
                        ));
                    }
                }
                (None, Some(n)) => {
                    if !(1..=65535).contains(&n) {
                        errs.push(FieldError::invalid(
                            format!("{port_at}.number"),
                            &json!(n),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
                (None, None) => errs.push(FieldError::invalid(
                    &port_at,
                    &json!(""),
                    "port name or number is required",
                )),
            }
        }
    }
}

/// `ValidateIngressSpec`.
pub fn validate_spec(spec: &IngressSpec, errs: &mut Vec<FieldError>) {
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        errs.push(FieldError::invalid(
            "spec",
            &json!("[]"),
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = &spec.default_backend {
        validate_backend(b, "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) {
            push_invalid(errs, &format!("{at}.host"), host, host_problems(host));
        }
        let Some(http) = &rule.http else {
            continue;
        };
        if http.paths.is_empty() {
            errs.push(FieldError::required(format!("{at}.http.paths"), ""));
        }
        for (j, p) in http.paths.iter().enumerate() {
            let pat = format!("{at}.http.paths[{j}]");
            let path_type = p.path_type.as_str();
            if path_type.is_empty() {
                errs.push(FieldError::required(
                    format!("{pat}.pathType"),
                    "pathType must be specified",
                ));
            } else if !PATH_TYPES.contains(&path_type) {
                errs.push(FieldError::not_supported(
                    format!("{pat}.pathType"),
                    &json!(path_type),
                    &PATH_TYPES,
                ));
            } else {
                validate_path(p.path.as_deref().unwrap_or(""), path_type, &pat, errs);
            }
            validate_backend(&p.backend, &format!("{pat}.backend"), errs);
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let at = format!("spec.tls[{i}]");
        for (j, host) in tls.hosts.iter().flatten().enumerate() {
            push_invalid(errs, &format!("{at}.hosts[{j}]"), host, host_problems(host));
        }
        if let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) {
            push_invalid(
                errs,
                &format!("{at}.secretName"),
                name,
                dns1123_subdomain(name),
            );
        }
    }
    if let Some(class) = spec.ingress_class_name.as_deref() {
        push_invalid(
            errs,
            "spec.ingressClassName",
            class,
            dns1123_subdomain(class),
        );
    }
}

/// `ValidateIngressLoadBalancerStatus`: addresses are IPs, host names are DNS names.
pub fn validate_status(status: &IngressStatus, errs: &mut Vec<FieldError>) {
    let ingress = status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or_default();
    for (i, lb) in ingress.iter().enumerate() {
        let at = format!("status.loadBalancer.ingress[{i}]");
        if let Some(ip) = lb.ip.as_deref().filter(|s| !s.is_empty()) {
            if ip.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("{at}.ip"),
                    &json!(ip),
                    "must be a valid IP address",
                ));
            }
        }
        if let Some(h) = lb.hostname.as_deref().filter(|s| !s.is_empty()) {
            let mut problems = dns1123_subdomain(h);
            if h.parse::<std::net::IpAddr>().is_ok() {
                problems = vec!["must be a DNS name, not an IP address".into()];
            }
            push_invalid(errs, &format!("{at}.hostname"), h, problems);
        }
    }
}

/// Whether `controller` is a domain-prefixed path (`example.com/name`), as Kubernetes requires.
fn controller_problems(controller: &str) -> Vec<String> {
    let Some((domain, path)) = controller.split_once('/') else {
        return vec!["must be a domain-prefixed path (such as \"acme.io/foo\")".into()];
    };
    let mut p = dns1123_subdomain(domain);
    if path.is_empty() || !path.chars().all(|c| c.is_ascii_graphic()) {
        p.push("must be a domain-prefixed path (such as \"acme.io/foo\")".into());
    }
    p
}

/// `ValidateIngressClass` (spec; metadata is checked generically), with Skerry's rules for its
/// own controller.
pub fn validate_class(class: &IngressClass, errs: &mut Vec<FieldError>) {
    let spec = class.spec.clone().unwrap_or_default();
    let controller = spec.controller.as_deref().unwrap_or("");
    if controller.is_empty() {
        errs.push(FieldError::required("spec.controller", ""));
    } else if controller.len() > MAX_CONTROLLER_LEN {
        errs.push(FieldError::too_long("spec.controller", MAX_CONTROLLER_LEN));
    } else {
        push_invalid(
            errs,
            "spec.controller",
            controller,
            controller_problems(controller),
        );
    }
    if let Some(p) = &spec.parameters {
        if controller == CONTROLLER {
            errs.push(FieldError::forbidden(
                "spec.parameters",
                format!("the {CONTROLLER} controller takes no parameters"),
            ));
        }
        if p.kind.is_empty() {
            errs.push(FieldError::required("spec.parameters.kind", ""));
        }
        if p.name.is_empty() {
            errs.push(FieldError::required("spec.parameters.name", ""));
        }
        match p.scope.as_deref() {
            None | Some("Cluster") => {
                if p.namespace.is_some() {
                    errs.push(FieldError::forbidden(
                        "spec.parameters.namespace",
                        "`parameters.scope` is set to 'Cluster'",
                    ));
                }
            }
            Some("Namespace") => match p.namespace.as_deref() {
                None | Some("") => errs.push(FieldError::required(
                    "spec.parameters.namespace",
                    "`parameters.scope` is set to 'Namespace'",
                )),
                Some(ns) => push_invalid(
                    errs,
                    "spec.parameters.namespace",
                    ns,
                    super::super::validation::dns1123_label(ns),
                ),
            },
            Some(other) => errs.push(FieldError::not_supported(
                "spec.parameters.scope",
                &json!(other),
                &["Cluster", "Namespace"],
            )),
        }
    }
    if controller == CONTROLLER {
        let selector = class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_SELECTOR_ANNOTATION));
        if let Some(sel) = selector {
            if let Err(e) = super::super::selector::LabelSelector::parse(sel) {
                errs.push(FieldError::invalid(
                    format!("metadata.annotations[{NODE_SELECTOR_ANNOTATION}]"),
                    &json!(sel),
                    e.to_string(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_exact_and_wildcard() {
        assert!(host_problems("foo.bar.com").is_empty());
        assert!(host_problems("*.foo.com").is_empty());
        assert!(!host_problems("*").is_empty());
        assert!(!host_problems("foo.*.com").is_empty());
        assert!(!host_problems("*.*.com").is_empty());
        assert!(!host_problems("Foo.com").is_empty());
        assert_eq!(
            host_problems("10.0.0.1"),
            ["must be a DNS name, not an IP address"]
        );
    }

    #[test]
    fn paths_as_kubernetes() {
        let check = |p: &str, t: &str| {
            let mut e = Vec::new();
            validate_path(p, t, "x", &mut e);
            e.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        assert!(check("/", "Prefix").is_empty());
        assert!(check("/a/b-c_d.e~f", "Exact").is_empty());
        assert!(check("", "ImplementationSpecific").is_empty());
        assert!(check("/a//b", "ImplementationSpecific").is_empty());
        assert!(check("a", "Prefix")[0].contains("must be an absolute path"));
        assert!(check("", "Prefix")[0].contains("must be an absolute path"));
        assert!(check("/a//b", "Prefix")[0].contains("must not contain '//'"));
        assert!(check("/a/..", "Exact")[0].contains("cannot end with '/..'"));
        assert!(check("/a b", "Exact")[0].contains("must match the regex"));
    }
}
