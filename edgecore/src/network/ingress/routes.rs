//! Which backend a request goes to: Kubernetes' Ingress matching over every Ingress the node
//! serves, as one table. Pure (no I/O), so the rules are tested as plain calls.
//!
//! The rules, as the Ingress API documents them and ingress controllers implement them:
//! - **Host.** A rule with an exact host beats a wildcard rule (`*.foo.com` matches exactly
//!   one more label: `bar.foo.com`, not `foo.com` nor `a.bar.foo.com`), which beats a rule
//!   without a host. Hosts compare without case and without a port.
//! - **Path.** Among the paths of the matching rules of the most specific host that has any
//!   matching path, the longest path wins, and an `Exact` path beats a `Prefix` path of the
//!   same length. `Prefix` matches by path element (`/foo` matches `/foo`, `/foo/` and
//!   `/foo/bar`, not `/foobar`; a trailing `/` in the rule is ignored; `/` matches all).
//! - **Merging.** Rules of several Ingresses for one host are merged; equal paths go to the
//!   Ingress first in `namespace/name` order.
//! - **Default backend.** When no rule matches: the `defaultBackend` of an Ingress with a rule
//!   for the request's host, else of the first Ingress (in `namespace/name` order) that has
//!   one; otherwise nothing (the router answers 404).

use protocol::ingress::{EdgeIngresses, IngressBackend, PathMatch};

/// Where a request goes: a backend of an Ingress (whose namespace the Service is in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Namespace of the Ingress (and the Service).
    pub namespace: String,
    /// Name of the Ingress (for logs).
    pub ingress: String,
    /// The backend.
    pub backend: IngressBackend,
}

/// How specific a host rule is for a request host: higher wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    Any = 0,
    Wildcard = 1,
    Exact = 2,
}

/// Whether rule host `rule` matches request host `host` (lower-case, no port), and how.
fn host_match(rule: &str, host: &str) -> Option<HostMatch> {
    if rule.is_empty() {
        return Some(HostMatch::Any);
    }
    if let Some(suffix) = rule.strip_prefix("*.") {
        let (first, rest) = host.split_once('.')?;
        return (!first.is_empty() && rest.eq_ignore_ascii_case(suffix))
            .then_some(HostMatch::Wildcard);
    }
    rule.eq_ignore_ascii_case(host).then_some(HostMatch::Exact)
}

/// Whether a TLS host (exact or wildcard) covers `host`: the same host rules as routing.
pub fn tls_host_matches(tls_host: &str, host: &str) -> bool {
    matches!(
        host_match(tls_host, host),
        Some(HostMatch::Exact | HostMatch::Wildcard)
    )
}

/// Whether `rule_path` of `kind` matches `path`; the match length ranks it.
fn path_match(kind: PathMatch, rule_path: &str, path: &str) -> Option<usize> {
    match kind {
        PathMatch::Exact => (rule_path == path).then_some(rule_path.len()),
        PathMatch::Prefix => {
            let prefix = rule_path.trim_end_matches('/');
            if prefix.is_empty() {
                return Some(0);
            }
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
        }
    }
}

/// The request host as rules compare it: without a port, lower-case.
pub fn normalize_host(host: &str) -> String {
    let host = if host.starts_with('[') {
        // An IPv6 literal: `[::1]:80` keeps its brackets, drops its port.
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    host.to_ascii_lowercase()
}

/// The route of a request for `host` (as sent, port allowed) and `path` (without query).
pub fn route(set: &EdgeIngresses, host: &str, path: &str) -> Option<Route> {
    let host = normalize_host(host);
    // Best (host specificity, path length, exact) over every path of every rule; earlier
    // Ingresses win ties, as they are iterated first and replaced only by a strictly better one.
    let mut best: Option<((HostMatch, usize, bool), Route)> = None;
    for ing in &set.ingresses {
        for rule in &ing.rules {
            let Some(hm) = host_match(&rule.host, &host) else {
                continue;
            };
            for p in &rule.paths {
                let Some(len) = path_match(p.kind, &p.path, path) else {
                    continue;
                };
                let rank = (hm, len, p.kind == PathMatch::Exact);
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((
                        rank,
                        Route {
                            namespace: ing.namespace.clone(),
                            ingress: ing.name.clone(),
                            backend: p.backend.clone(),
                        },
                    ));
                }
            }
        }
    }
    if let Some((_, r)) = best {
        return Some(r);
    }
    let for_host = set.ingresses.iter().find(|i| {
        i.default_backend.is_some()
            && i.rules.iter().any(|r| {
                matches!(
                    host_match(&r.host, &host),
                    Some(HostMatch::Exact | HostMatch::Wildcard)
                )
            })
    });
    let ing = for_host.or_else(|| set.ingresses.iter().find(|i| i.default_backend.is_some()))?;
    Some(Route {
        namespace: ing.namespace.clone(),
        ingress: ing.name.clone(),
        backend: ing.default_backend.clone()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ingress::*;

    fn b(svc: &str) -> IngressBackend {
        IngressBackend {
            service: svc.into(),
            port: BackendPort::Number(80),
        }
    }

    fn p(path: &str, kind: PathMatch, svc: &str) -> IngressPath {
        IngressPath {
            path: path.into(),
            kind,
            backend: b(svc),
        }
    }

    fn ing(name: &str, default: Option<&str>, rules: Vec<(&str, Vec<IngressPath>)>) -> EdgeIngress {
        EdgeIngress {
            namespace: "default".into(),
            name: name.into(),
            default_backend: default.map(b),
            rules: rules
                .into_iter()
                .map(|(h, paths)| IngressRule {
                    host: h.into(),
                    paths,
                })
                .collect(),
            tls: vec![],
        }
    }

    fn svc(set: &EdgeIngresses, host: &str, path: &str) -> Option<String> {
        route(set, host, path).map(|r| r.backend.service)
    }

    use PathMatch::{Exact, Prefix};

    #[test]
    fn prefix_matches_by_element_and_longest_wins() {
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![ing(
                "a",
                None,
                vec![(
                    "",
                    vec![
                        p("/", Prefix, "root"),
                        p("/foo", Prefix, "foo"),
                        p("/foo/bar/", Prefix, "bar"),
                        p("/foo/bar", Exact, "exact"),
                    ],
                )],
            )],
        };
        assert_eq!(svc(&set, "x", "/").as_deref(), Some("root"));
        assert_eq!(svc(&set, "x", "/foo").as_deref(), Some("foo"));
        assert_eq!(svc(&set, "x", "/foo/").as_deref(), Some("foo"));
        assert_eq!(svc(&set, "x", "/foobar").as_deref(), Some("root"));
        assert_eq!(
            svc(&set, "x", "/foo/bar").as_deref(),
            Some("exact"),
            "Exact beats Prefix of the same length"
        );
        assert_eq!(svc(&set, "x", "/foo/bar/").as_deref(), Some("bar"));
        assert_eq!(svc(&set, "x", "/foo/bar/baz").as_deref(), Some("bar"));
        assert_eq!(svc(&set, "x", "/foo/barbaz").as_deref(), Some("foo"));
    }

    #[test]
    fn hosts_exact_before_wildcard_before_any() {
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![
                ing("a", None, vec![("*.foo.com", vec![p("/", Prefix, "wild")])]),
                ing(
                    "b",
                    None,
                    vec![("a.foo.com", vec![p("/x", Prefix, "exact")])],
                ),
                ing("c", None, vec![("", vec![p("/", Prefix, "any")])]),
            ],
        };
        assert_eq!(
            svc(&set, "a.foo.com:8080", "/x/y").as_deref(),
            Some("exact")
        );
        assert_eq!(svc(&set, "A.FOO.com", "/x").as_deref(), Some("exact"));
        // The exact host has no path for `/z`; the wildcard rule does.
        assert_eq!(svc(&set, "a.foo.com", "/z").as_deref(), Some("wild"));
        assert_eq!(svc(&set, "b.foo.com", "/").as_deref(), Some("wild"));
        assert_eq!(svc(&set, "foo.com", "/").as_deref(), Some("any"));
        assert_eq!(svc(&set, "a.b.foo.com", "/").as_deref(), Some("any"));
        assert!(tls_host_matches("*.foo.com", "a.foo.com"));
        assert!(!tls_host_matches("*.foo.com", "foo.com"));
        assert!(!tls_host_matches("", "foo.com"));
    }

    #[test]
    fn default_backends_and_no_match() {
        let none = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![ing(
                "a",
                None,
                vec![("a.com", vec![p("/app", Exact, "app")])],
            )],
        };
        assert_eq!(svc(&none, "a.com", "/app/x"), None);
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![
                ing("a", Some("fallback"), vec![]),
                ing(
                    "b",
                    Some("b-default"),
                    vec![("b.com", vec![p("/app", Exact, "app")])],
                ),
            ],
        };
        assert_eq!(svc(&set, "b.com", "/other").as_deref(), Some("b-default"));
        assert_eq!(svc(&set, "c.com", "/other").as_deref(), Some("fallback"));
        assert_eq!(svc(&set, "b.com", "/app").as_deref(), Some("app"));
    }

    #[test]
    fn ties_go_to_the_first_ingress() {
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![
                ing("a", None, vec![("", vec![p("/", Prefix, "first")])]),
                ing("b", None, vec![("", vec![p("/", Prefix, "second")])]),
            ],
        };
        assert_eq!(svc(&set, "x", "/").as_deref(), Some("first"));
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Foo.COM:80"), "foo.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("foo"), "foo");
    }
}
