//! [`ServiceView`]: one consistent picture of the Services a node routes.

use protocol::config::EdgeSecret;
use protocol::ingress::EdgeIngresses;
use protocol::overlay::OverlayNetwork;
use protocol::service::{ClusterNetwork, EdgeEndpointSlice, EdgeService, Endpoint};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// `(namespace, name)`.
pub type Key = (String, String);

/// The Services and EndpointSlices the node holds, with its own pods' readiness as the node
/// sees it now, which overrides what the cloud last said about those pods: a local pod whose
/// readiness probe fails leaves routing at once, without a round trip through the cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// The node's network settings, once the cloud has sent them.
    pub network: Option<ClusterNetwork>,
    /// Services by `(namespace, name)`.
    pub services: BTreeMap<Key, EdgeService>,
    /// EndpointSlices by `(namespace, slice name)`.
    pub slices: BTreeMap<Key, EdgeEndpointSlice>,
    /// Readiness of this node's pods by `(namespace, pod name)`, as its prober sees it. A pod
    /// missing here is judged by what its slice says.
    pub local_ready: BTreeMap<Key, bool>,
    /// The node's overlay routes, once the cloud has sent them (protocol v6, overlay on).
    pub overlay: Option<OverlayNetwork>,
    /// The addresses of this node's pods by `(namespace, pod name)`, as its runtime reports
    /// them: what the overlay admits packets for.
    pub local_ips: BTreeMap<Key, IpAddr>,
    /// The Ingresses this node serves, once the cloud has sent the set.
    pub ingresses: Option<EdgeIngresses>,
    /// The TLS Secrets those Ingresses name, as cached, by `(namespace, name)`. (`Debug` of a
    /// Secret shows its keys only.)
    pub tls_secrets: BTreeMap<Key, EdgeSecret>,
}

/// The shared handle: consumers `subscribe` and read the latest view.
pub type ViewSender = tokio::sync::watch::Sender<Arc<ServiceView>>;
/// A consumer's end.
pub type ViewReceiver = tokio::sync::watch::Receiver<Arc<ServiceView>>;

impl ServiceView {
    /// The node this view is for, once known.
    pub fn node(&self) -> Option<&str> {
        self.network.as_ref().map(|n| n.node.as_str())
    }

    /// The slices of one Service, in name order.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EdgeEndpointSlice> + 'a {
        self.slices
            .values()
            .filter(move |s| s.namespace == namespace && s.service == service)
    }

    /// Whether an endpoint is ready, with the node's own knowledge first: an endpoint hosted
    /// here whose pod the prober has judged takes the prober's word.
    pub fn endpoint_ready(&self, namespace: &str, endpoint: &Endpoint) -> bool {
        self.local_override(namespace, endpoint)
            .unwrap_or(endpoint.ready)
    }

    /// Whether an endpoint is serving (ready, or terminating but still passing readiness), with
    /// the same local override as [`Self::endpoint_ready`].
    pub fn endpoint_serving(&self, namespace: &str, endpoint: &Endpoint) -> bool {
        self.local_override(namespace, endpoint)
            .unwrap_or(endpoint.serving)
    }

    /// Whether an endpoint is hosted on this node.
    pub fn is_local(&self, endpoint: &Endpoint) -> bool {
        match (self.node(), endpoint.node.as_deref()) {
            (Some(me), Some(n)) => me == n,
            _ => false,
        }
    }

    fn local_override(&self, namespace: &str, endpoint: &Endpoint) -> Option<bool> {
        if !self.is_local(endpoint) {
            return None;
        }
        let pod = endpoint.pod.as_ref()?;
        self.local_ready
            .get(&(namespace.to_string(), pod.clone()))
            .copied()
    }
}
