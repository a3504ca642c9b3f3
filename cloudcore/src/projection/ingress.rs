//! Ingresses into their compact edge projection ([`protocol::ingress`]), and the set one node
//! serves.
//!
//! The API validated every Ingress on write, so what fails here is a stored object that is
//! corrupt (or a `resource` backend written before validation refused them): it is skipped
//! with an error, never sent half-converted.

use super::{name_of, ProjectionError};
use crate::api::ingress::Serving;
use k8s_openapi::api::networking::v1 as networking;
use protocol::ingress::*;
use serde_json::Value;

fn backend(b: &networking::IngressBackend) -> Result<IngressBackend, String> {
    let svc = b
        .service
        .as_ref()
        .ok_or("only service backends are routed")?;
    let port = svc.port.as_ref().ok_or("backend service has no port")?;
    let port = match (port.number, port.name.as_deref()) {
        (Some(n), _) if n != 0 => BackendPort::Number(
            u16::try_from(n).map_err(|_| format!("backend port {n} is out of range"))?,
        ),
        (_, Some(name)) if !name.is_empty() => BackendPort::Name(name.to_string()),
        _ => return Err("backend port has neither a number nor a name".into()),
    };
    Ok(IngressBackend {
        service: svc.name.clone(),
        port,
    })
}

/// Projects a stored Ingress. `ImplementationSpecific` becomes `Prefix`; an empty path `/`.
pub fn edge_ingress(value: &Value) -> Result<EdgeIngress, ProjectionError> {
    let err = |reason: String| ProjectionError {
        object: format!("ingress {}", name_of(value)),
        reason,
    };
    let ing: networking::Ingress =
        serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
    let spec = ing.spec.unwrap_or_default();
    let default_backend = spec
        .default_backend
        .as_ref()
        .map(backend)
        .transpose()
        .map_err(|e| err(format!("spec.defaultBackend: {e}")))?;
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let mut paths = Vec::new();
        for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let kind = match p.path_type.as_str() {
                "Exact" => PathMatch::Exact,
                "Prefix" | "ImplementationSpecific" => PathMatch::Prefix,
                other => {
                    return Err(err(format!(
                        "spec.rules[{i}].http.paths[{j}].pathType {other:?}"
                    )))
                }
            };
            let path = p
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into());
            paths.push(IngressPath {
                path,
                kind,
                backend: backend(&p.backend)
                    .map_err(|e| err(format!("spec.rules[{i}].http.paths[{j}].backend: {e}")))?,
            });
        }
        rules.push(IngressRule {
            host: r.host.clone().unwrap_or_default(),
            paths,
        });
    }
    let tls = spec
        .tls
        .iter()
        .flatten()
        .map(|t| IngressTls {
            hosts: t.hosts.clone().unwrap_or_default(),
            secret: t.secret_name.clone().unwrap_or_default(),
        })
        .collect();
    Ok(EdgeIngress {
        namespace: ing.metadata.namespace.unwrap_or_default(),
        name: ing.metadata.name.unwrap_or_default(),
        default_backend,
        rules,
        tls,
    })
}

/// The Ingresses `node` (its stored Node, `None` if it has none) serves, from every stored
/// Ingress, in `namespace/name` order. Ingresses that cannot be projected are reported and
/// left out.
pub fn ingress_set(
    node_name: &str,
    node: Option<&Value>,
    serving: &Serving,
    ingresses: &[Value],
) -> EdgeIngresses {
    let mut out: Vec<EdgeIngress> = Vec::new();
    if let Some(node) = node {
        for v in ingresses.iter().filter(|i| serving.node_serves(node, i)) {
            match edge_ingress(v) {
                Ok(i) => out.push(i),
                Err(e) => {
                    tracing::error!(error = %e, "skipping object that cannot be projected; fix or delete it")
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    EdgeIngresses {
        node: node_name.to_string(),
        ingresses: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_and_the_set_of_a_node() {
        let classes = [
            json!({"metadata": {"name": "edge", "annotations": {"ingressclass.skerry.io/node-selector": "site=a"}},
                "spec": {"controller": "skerry.io/edge-ingress"}}),
            json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        ];
        let serving = Serving::from_classes(&classes);
        let ing = |name: &str, class: &str| {
            json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"ingressClassName": class,
                    "defaultBackend": {"service": {"name": "d", "port": {"name": "http"}}},
                    "rules": [{"host": "a.com", "http": {"paths": [
                        {"pathType": "ImplementationSpecific", "backend": {"service": {"name": "s", "port": {"number": 8080}}}},
                        {"path": "/x", "pathType": "Exact", "backend": {"service": {"name": "s", "port": {"number": 81}}}}]}}],
                    "tls": [{"hosts": ["a.com"], "secretName": "cert"}]}})
        };
        let all = [ing("z", "edge"), ing("b", "edge"), ing("n", "nginx")];
        let node = json!({"metadata": {"name": "n1", "labels": {"site": "a"}}});
        let set = ingress_set("n1", Some(&node), &serving, &all);
        let names: Vec<&str> = set.ingresses.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b", "z"]);
        let b = &set.ingresses[0];
        assert_eq!(b.rules[0].paths[0].path, "/");
        assert_eq!(b.rules[0].paths[0].kind, PathMatch::Prefix);
        assert_eq!(b.rules[0].paths[1].kind, PathMatch::Exact);
        assert_eq!(
            b.default_backend.as_ref().unwrap().port,
            BackendPort::Name("http".into())
        );
        assert_eq!(b.tls[0].secret, "cert");
        let other = json!({"metadata": {"name": "n2", "labels": {"site": "b"}}});
        assert!(ingress_set("n2", Some(&other), &serving, &all)
            .ingresses
            .is_empty());
        assert!(ingress_set("n3", None, &serving, &all).ingresses.is_empty());
        let bad = json!({"metadata": {"name": "r", "namespace": "default"}, "spec": {"ingressClassName": "edge",
            "defaultBackend": {"resource": {"kind": "K", "name": "x"}}}});
        assert!(edge_ingress(&bad).is_err());
    }
}
