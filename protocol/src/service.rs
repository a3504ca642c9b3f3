//! The compact edge projections of Services and EndpointSlices: what an edge needs to route
//! traffic to a Service and to answer DNS for it, nothing more.
//!
//! Every node receives every Service and EndpointSlice of the cluster (as kube-proxy does): a
//! pod may reach any Service by name, and a node cannot know in advance which ones its pods will
//! ask for. The projection keeps the cost of that small: an endpoint change re-sends one slice
//! of at most 100 endpoints, a few kilobytes at worst (docs/networking.md has the figures).
//!
//! The cloud converts from the Kubernetes objects (`cloudcore::projection`); the edge never sees
//! managed fields or status it does not route on.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Transport protocol of a Service or endpoint port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP: accepted by the API as Kubernetes does; the edge proxy skips it with a log line.
    Sctp,
}

impl L4Protocol {
    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
            L4Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(L4Protocol::Tcp),
            "UDP" => Some(L4Protocol::Udp),
            "SCTP" => Some(L4Protocol::Sctp),
            _ => None,
        }
    }
}

/// How a Service is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// A virtual IP (`ClusterIP`, and the cluster IP of `NodePort`/`LoadBalancer` Services),
    /// with one address per IP family.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: no virtual IP; DNS answers with the endpoints' own addresses.
    Headless,
    /// `type: ExternalName`: DNS answers with a CNAME to this name; nothing is proxied.
    ExternalName(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port name (empty when the Service has a single unnamed port). Endpoint ports are matched
    /// to Service ports by this name, as in Kubernetes.
    pub name: String,
    /// Transport protocol.
    pub protocol: L4Protocol,
    /// The port on the cluster IP.
    pub port: u16,
    /// The node port, for `NodePort` and `LoadBalancer` Services.
    pub node_port: Option<u16>,
}

/// One Service as the edge routes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Virtual IP, headless or external name.
    pub kind: ServiceKind,
    /// Ports, in the Service's order.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds (Kubernetes' default is
    /// 10800); `None` for no affinity.
    pub client_ip_affinity_secs: Option<u32>,
    /// `internalTrafficPolicy: Local`: traffic from inside the cluster goes only to endpoints on
    /// the node it starts from.
    pub internal_traffic_local: bool,
    /// `externalTrafficPolicy: Local`: node-port traffic goes only to endpoints on the node it
    /// arrives at (and is refused where there is none).
    pub external_traffic_local: bool,
    /// `publishNotReadyAddresses`: DNS publishes endpoints that are not ready.
    pub publish_not_ready: bool,
}

impl EdgeService {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Address family of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressType {
    /// IPv4 addresses.
    Ipv4,
    /// IPv6 addresses.
    Ipv6,
    /// Fully qualified domain names: never routed (Kubernetes reserves them too).
    Fqdn,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// Matches the Service port of the same name.
    pub name: String,
    /// Transport protocol.
    pub protocol: L4Protocol,
    /// The port on the endpoint's address (a named `targetPort` already resolved per pod).
    pub port: u16,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Addresses of the endpoint (Kubernetes allows several; the proxy uses the first).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`: ready, or terminating but still passing readiness.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The node that hosts it: traffic policies `Local`, and the edge's own readiness override
    /// for endpoints it hosts.
    pub node: Option<String>,
    /// Name of the pod behind it (`targetRef`), for the edge's own readiness override.
    pub pod: Option<String>,
    /// `hostname` (a headless StatefulSet pod's DNS label).
    pub hostname: Option<String>,
}

/// One EndpointSlice as the edge routes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeEndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// Address family.
    pub address_type: AddressType,
    /// Ports.
    pub ports: Vec<EndpointPort>,
    /// Endpoints (at most 100, as the controller writes them).
    pub endpoints: Vec<Endpoint>,
}

impl EdgeEndpointSlice {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The network settings of one node: its pod CIDR and the cluster-wide settings it routes and
/// answers DNS with. The hub puts it in the first batch of every session (it is small, and a
/// node's CIDR never changes while its Node exists), and the edge keeps it in its cache so that
/// routing and DNS work after a restart without the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    /// The node these settings are for.
    pub node: String,
    /// The node's own pod CIDR (`spec.podCIDR`), from which its CNI hands out pod addresses;
    /// `None` when the cloud does not allocate node CIDRs.
    pub pod_cidr: Option<String>,
    /// The Service CIDR (cluster IPs come from it).
    pub service_cidr: String,
    /// The cluster DNS address pods are given as their nameserver (kubelet's `--cluster-dns`).
    pub cluster_dns: IpAddr,
    /// The cluster domain (kubelet's `--cluster-domain`, `cluster.local` by default).
    pub cluster_domain: String,
}
