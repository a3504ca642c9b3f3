//! From an Ingress backend to the addresses that can take the request, read from the node's
//! [`ServiceView`] (so it works from the cache with no cloud, and a local pod whose readiness
//! probe fails leaves at once), and the round-robin choice among them.
//!
//! Ready endpoints only, as kube-proxy routes; when none is ready, serving endpoints that are
//! terminating (Kubernetes' fallback for a Service whose every endpoint is terminating). An
//! `ExternalName` Service has no endpoints here: it is refused as unavailable.

use crate::network::view::ServiceView;
use protocol::ingress::{BackendPort, IngressBackend};
use protocol::service::{AddressType, L4Protocol, ServiceKind};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a backend cannot take a request now (the router answers 503 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The Service is not (yet) known on this node.
    #[error("service {0} not found")]
    NoService(String),
    /// The Service has no TCP port of that number or name.
    #[error("service {0} has no port {1}")]
    NoPort(String, String),
    /// An `ExternalName` Service: nothing to forward to.
    #[error("service {0} is an ExternalName service")]
    ExternalName(String),
    /// No endpoint is ready.
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(String),
}

/// The addresses a backend of an Ingress in `namespace` may forward to, sorted.
pub fn resolve(
    view: &ServiceView,
    namespace: &str,
    backend: &IngressBackend,
) -> Result<Vec<SocketAddr>, Unavailable> {
    let name = format!("{namespace}/{}", backend.service);
    let svc = view
        .services
        .get(&(namespace.to_string(), backend.service.clone()))
        .ok_or_else(|| Unavailable::NoService(name.clone()))?;
    if let ServiceKind::ExternalName(_) = svc.kind {
        return Err(Unavailable::ExternalName(name));
    }
    let port = svc
        .ports
        .iter()
        .filter(|p| p.protocol == L4Protocol::Tcp)
        .find(|p| match &backend.port {
            BackendPort::Number(n) => p.port == *n,
            BackendPort::Name(n) => &p.name == n,
        })
        .ok_or_else(|| {
            let port = match &backend.port {
                BackendPort::Number(n) => n.to_string(),
                BackendPort::Name(n) => format!("{n:?}"),
            };
            Unavailable::NoPort(name.clone(), port)
        })?;
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in view.slices_of(namespace, &backend.service) {
        if slice.address_type == AddressType::Fqdn {
            continue;
        }
        let Some(sport) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == L4Protocol::Tcp && p.port != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep.addresses.first().copied().filter(usable) else {
                continue;
            };
            let addr = SocketAddr::new(ip, sport.port);
            if view.endpoint_ready(namespace, ep) {
                ready.insert(addr);
            } else if ep.terminating && view.endpoint_serving(namespace, ep) {
                terminating.insert(addr);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    if chosen.is_empty() {
        return Err(Unavailable::NoEndpoint(name));
    }
    Ok(chosen.into_iter().collect())
}

/// Whether an endpoint address can be a destination at all.
fn usable(ip: &IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast())
}

/// Round-robin over whatever list a request resolved to.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// The next address of `addrs` (not empty).
    pub fn pick(&self, addrs: &[SocketAddr]) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        addrs[i % addrs.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::service::*;

    fn view(ready: &[(&str, bool)]) -> ServiceView {
        let mut v = ServiceView::default();
        v.services.insert(
            ("default".into(), "web".into()),
            EdgeService {
                namespace: "default".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec!["10.96.0.10".parse().unwrap()]),
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: L4Protocol::Tcp,
                    port: 80,
                    node_port: None,
                }],
                client_ip_affinity_secs: None,
                internal_traffic_local: false,
                external_traffic_local: false,
                publish_not_ready: false,
            },
        );
        v.slices.insert(
            ("default".into(), "web-abc".into()),
            EdgeEndpointSlice {
                namespace: "default".into(),
                name: "web-abc".into(),
                service: "web".into(),
                address_type: AddressType::Ipv4,
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: L4Protocol::Tcp,
                    port: 8080,
                }],
                endpoints: ready
                    .iter()
                    .map(|(ip, r)| Endpoint {
                        addresses: vec![ip.parse().unwrap()],
                        ready: *r,
                        serving: *r,
                        terminating: false,
                        node: None,
                        pod: None,
                        hostname: None,
                    })
                    .collect(),
            },
        );
        v
    }

    fn backend(port: BackendPort) -> IngressBackend {
        IngressBackend {
            service: "web".into(),
            port,
        }
    }

    #[test]
    fn ready_endpoints_by_port_number_or_name() {
        let v = view(&[
            ("10.244.0.5", true),
            ("10.244.0.6", false),
            ("10.244.0.7", true),
        ]);
        let want: Vec<SocketAddr> = vec![
            "10.244.0.5:8080".parse().unwrap(),
            "10.244.0.7:8080".parse().unwrap(),
        ];
        assert_eq!(
            resolve(&v, "default", &backend(BackendPort::Number(80))).unwrap(),
            want
        );
        assert_eq!(
            resolve(&v, "default", &backend(BackendPort::Name("http".into()))).unwrap(),
            want
        );
        assert!(matches!(
            resolve(&v, "default", &backend(BackendPort::Number(81))),
            Err(Unavailable::NoPort(..))
        ));
        assert!(matches!(
            resolve(&v, "other", &backend(BackendPort::Number(80))),
            Err(Unavailable::NoService(_))
        ));
        let none = view(&[("10.244.0.6", false)]);
        assert!(matches!(
            resolve(&none, "default", &backend(BackendPort::Number(80))),
            Err(Unavailable::NoEndpoint(_))
        ));
        let b = Balancer::default();
        let picks: BTreeSet<SocketAddr> = (0..4).map(|_| b.pick(&want)).collect();
        assert_eq!(picks.len(), 2, "round robin reaches every endpoint");
    }
}
