//! The node's part of the cluster network: the Services and EndpointSlices from the cache, the
//! local readiness of the node's own pods, and what is built on them (the proxy that routes
//! cluster IPs and node ports, the cluster DNS server, and the Ingress router).
//!
//! Everything here reads one value, the [`view::ServiceView`], published on a `watch` channel:
//! the cache side writes a new view when a batch applies, the pod workers when a local pod's
//! readiness changes, and each consumer rebuilds its own state from the latest view. A consumer
//! that falls behind skips to the newest view, never a queue of stale ones.

pub mod cni;
pub mod dns;
pub mod ingress;
pub mod overlay;
pub mod proxy;
pub mod publish;
pub mod view;
