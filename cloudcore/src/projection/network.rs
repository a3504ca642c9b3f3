//! Services and EndpointSlices into their compact edge projections
//! ([`protocol::service`]), and the node's network settings.
//!
//! Every node receives every Service and EndpointSlice (see the module docs of
//! [`protocol::service`] and docs/networking.md), through one shard of the store's change log
//! that every session reads besides its own: [`NETWORK_SHARD`].

use super::{name_of, ProjectionError};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use protocol::service::*;
use serde_json::Value;
use std::net::IpAddr;

/// The store shard that holds every Service and EndpointSlice. Not a valid node name (node
/// names are DNS subdomains), so it can never collide with a node's own shard.
pub const NETWORK_SHARD: &str = "~network";

/// Whether a stored object of `resource` (a storage resource: the plural, prefixed with its
/// group outside the core group) belongs to the network shard.
pub fn in_network_shard(resource: &str) -> bool {
    matches!(resource, "services" | "discovery.k8s.io/endpointslices")
}

/// Projects a stored Service.
pub fn edge_service(value: &Value) -> Result<EdgeService, ProjectionError> {
    let err = |reason: String| ProjectionError {
        object: format!("service {}", name_of(value)),
        reason,
    };
    let svc: core::Service =
        serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
    let spec = svc.spec.unwrap_or_default();
    let kind = match (spec.type_.as_deref(), spec.cluster_ip.as_deref()) {
        (Some("ExternalName"), _) => ServiceKind::ExternalName(
            spec.external_name
                .clone()
                .ok_or_else(|| err("spec.externalName is missing".into()))?,
        ),
        (_, Some("None")) => ServiceKind::Headless,
        _ => {
            let mut ips: Vec<IpAddr> = Vec::new();
            let listed = spec.cluster_ips.clone().unwrap_or_default();
            let all = if listed.is_empty() {
                spec.cluster_ip.clone().into_iter().collect()
            } else {
                listed
            };
            for ip in all.iter().filter(|s| !s.is_empty()) {
                ips.push(
                    ip.parse()
                        .map_err(|_| err(format!("spec.clusterIPs: {ip:?} is not an address")))?,
                );
            }
            ServiceKind::ClusterIp(ips)
        }
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        let protocol = L4Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))
            .ok_or_else(|| err(format!("spec.ports[{i}].protocol is not TCP, UDP or SCTP")))?;
        let port = u16::try_from(p.port)
            .map_err(|_| err(format!("spec.ports[{i}].port is out of range")))?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(
                u16::try_from(n)
                    .map_err(|_| err(format!("spec.ports[{i}].nodePort is out of range")))?,
            ),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            node_port,
        });
    }
    let client_ip_affinity_secs = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10_800),
        ),
        _ => None,
    };
    Ok(EdgeService {
        namespace: svc.metadata.namespace.unwrap_or_default(),
        name: svc.metadata.name.unwrap_or_default(),
        kind,
        ports,
        client_ip_affinity_secs,
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_traffic_local: matches!(spec.external_traffic_policy.as_deref(), Some("Local")),
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    })
}

/// Projects a stored EndpointSlice. Endpoints with an address that does not parse are skipped
/// (the edge could not route them); a port without a number is skipped likewise, as kube-proxy
/// does.
pub fn edge_endpoint_slice(value: &Value) -> Result<EdgeEndpointSlice, ProjectionError> {
    let err = |reason: String| ProjectionError {
        object: format!("endpointslice {}", name_of(value)),
        reason,
    };
    let slice: discovery::EndpointSlice =
        serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
    let address_type = match slice.address_type.as_str() {
        "IPv4" => AddressType::Ipv4,
        "IPv6" => AddressType::Ipv6,
        "FQDN" => AddressType::Fqdn,
        other => {
            return Err(err(format!(
                "addressType {other:?} is not IPv4, IPv6 or FQDN"
            )))
        }
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned()
        .unwrap_or_default();
    let ports = slice
        .ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                protocol: L4Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.port?).ok().filter(|p| *p != 0)?,
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let addresses: Vec<IpAddr> = match address_type {
                AddressType::Fqdn => Vec::new(),
                _ => e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            };
            if addresses.is_empty() && address_type != AddressType::Fqdn {
                return None;
            }
            let c = e.conditions.clone().unwrap_or_default();
            // Kubernetes: a nil `ready` means ready; `serving` defaults to `ready`.
            let ready = c.ready.unwrap_or(true);
            Some(Endpoint {
                addresses,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                node: e.node_name.clone(),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|t| t.kind.as_deref() == Some("Pod"))
                    .and_then(|t| t.name.clone()),
                hostname: e.hostname.clone(),
            })
        })
        .collect();
    Ok(EdgeEndpointSlice {
        namespace: slice.metadata.namespace.unwrap_or_default(),
        name: slice.metadata.name.unwrap_or_default(),
        service,
        address_type,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_network_shard_holds_what_the_api_stores_services_and_slices_under() {
        use crate::api::endpoints::ENDPOINT_SLICE_INFO;
        use crate::api::services::SERVICE_INFO;
        assert!(in_network_shard(&SERVICE_INFO.storage_resource()));
        assert!(in_network_shard(&ENDPOINT_SLICE_INFO.storage_resource()));
        assert!(!in_network_shard("endpoints"));
    }

    #[test]
    fn a_node_port_service_projects_its_ip_ports_and_policies() {
        let s = edge_service(&json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080,
                                "protocol": "TCP"}],
                     "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
                     "internalTrafficPolicy": "Cluster"}
        }))
        .unwrap();
        assert_eq!(
            s.kind,
            ServiceKind::ClusterIp(vec!["10.96.0.20".parse().unwrap()])
        );
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.client_ip_affinity_secs, Some(10_800));
        assert!(s.external_traffic_local && !s.internal_traffic_local);
    }

    #[test]
    fn headless_and_external_name_services_carry_no_virtual_ip() {
        let h = edge_service(&json!({"metadata": {"namespace": "a", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}))
        .unwrap();
        assert_eq!(h.kind, ServiceKind::Headless);
        let e = edge_service(&json!({"metadata": {"namespace": "a", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}}))
        .unwrap();
        assert_eq!(e.kind, ServiceKind::ExternalName("db.example.com".into()));
    }

    #[test]
    fn a_slice_keeps_routable_endpoints_and_defaults_their_conditions() {
        let s = edge_endpoint_slice(&json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "bad", "port": 0}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["not-an-ip"]}
            ]
        }))
        .unwrap();
        assert_eq!(s.service, "web");
        assert_eq!(s.ports.len(), 1, "a port of 0 is skipped");
        assert_eq!(
            s.endpoints.len(),
            2,
            "an address that does not parse is skipped"
        );
        assert!(s.endpoints[0].ready && s.endpoints[0].serving);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("web-1"));
        assert!(!s.endpoints[1].ready && !s.endpoints[1].serving && s.endpoints[1].terminating);
    }
}
