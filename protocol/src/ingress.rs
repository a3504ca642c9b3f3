//! The compact edge projection of the Ingresses a node serves ([`EdgeIngresses`]): host and
//! path rules to Service backends and the TLS Secrets they name, nothing of status or class.
//!
//! A node gets one [`EdgeIngresses`] (named after the node), holding every Ingress of every
//! class with Skerry's controller whose node selector matches the node, and nothing when it
//! serves none. One object per node rather than one per Ingress because which Ingresses a node
//! serves changes with its labels and with the classes, not only with the Ingresses: the hub
//! sends the whole set again whenever it changes and in every session's first round, so a
//! node never keeps an Ingress it no longer serves, even after a reconnect (Ingresses are few;
//! docs/networking.md has the cost). The TLS Secrets it names reach the node with it, in the
//! same batch, and only that node's serving set makes them reach it.
//!
//! `pathType: ImplementationSpecific` arrives as [`PathMatch::Prefix`]: that is how Skerry's
//! router implements it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How a path rule matches a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PathMatch {
    /// The whole path, case-sensitively.
    Exact,
    /// The path's leading elements, split by `/` (`/foo` matches `/foo`, `/foo/` and
    /// `/foo/bar`, not `/foobar`).
    Prefix,
}

/// The port of a backend Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendPort {
    /// `port.number`.
    Number(u16),
    /// `port.name`: the Service port of that name.
    Name(String),
}

/// A backend: a Service of the Ingress's namespace and one of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressBackend {
    /// Service name.
    pub service: String,
    /// Service port.
    pub port: BackendPort,
}

/// One path of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressPath {
    /// The path (`/` when the Ingress left it empty).
    pub path: String,
    /// How it matches.
    pub kind: PathMatch,
    /// Where matching requests go.
    pub backend: IngressBackend,
}

/// One rule: a host (exact, `*.` wildcard of one label, or empty for any) and its paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    /// Host; empty matches every host.
    pub host: String,
    /// Paths, in the Ingress's order.
    pub paths: Vec<IngressPath>,
}

/// One TLS entry: the hosts a Secret's certificate serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressTls {
    /// Hosts (exact or `*.` wildcards); empty: the certificate for requests no other entry
    /// names.
    pub hosts: Vec<String>,
    /// The `kubernetes.io/tls` Secret of the Ingress's namespace (`tls.crt`, `tls.key`).
    pub secret: String,
}

/// One Ingress as the router serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeIngress {
    /// Namespace (of the Ingress, its Services and its Secrets).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.defaultBackend`.
    pub default_backend: Option<IngressBackend>,
    /// `spec.rules`.
    pub rules: Vec<IngressRule>,
    /// `spec.tls`.
    pub tls: Vec<IngressTls>,
}

/// Every Ingress one node serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EdgeIngresses {
    /// The node.
    pub node: String,
    /// The Ingresses, ordered by namespace and name (the router's tie-break).
    pub ingresses: Vec<EdgeIngress>,
}

impl EdgeIngresses {
    /// `(namespace, name)` of every TLS Secret the set names: what the node may hold beside
    /// its pods' Secrets.
    pub fn secret_refs(&self) -> BTreeSet<(String, String)> {
        self.ingresses
            .iter()
            .flat_map(|i| {
                i.tls
                    .iter()
                    .filter(|t| !t.secret.is_empty())
                    .map(|t| (i.namespace.clone(), t.secret.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_are_per_namespace_and_skip_empty_names() {
        let ing = |ns: &str, secrets: &[&str]| EdgeIngress {
            namespace: ns.into(),
            name: "i".into(),
            default_backend: None,
            rules: vec![],
            tls: secrets
                .iter()
                .map(|s| IngressTls {
                    hosts: vec![],
                    secret: s.to_string(),
                })
                .collect(),
        };
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![ing("a", &["t", ""]), ing("b", &["t"]), ing("a", &["t"])],
        };
        let refs: Vec<_> = set.secret_refs().into_iter().collect();
        assert_eq!(refs, [("a".into(), "t".into()), ("b".into(), "t".into())]);
    }
}
