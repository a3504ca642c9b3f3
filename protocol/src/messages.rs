//! Messages of the sync link: one bidirectional QUIC stream per node session.
//!
//! The exchange is: the edge sends [`EdgeMessage::Hello`] with the last revision it made durable;
//! the cloud answers [`CloudMessage::Welcome`] or a typed [`CloudMessage::Reject`], then streams
//! [`SyncBatch`]es; the edge answers each batch with an [`Ack`] once the batch is durable in its
//! cache. Delivery is at-least-once and every batch is idempotent on receipt, so a reconnect
//! simply resumes from the last ack.

use crate::config::{EdgeConfigMap, EdgeSecret};
use crate::ingress::EdgeIngresses;
use crate::overlay::OverlayNetwork;
use crate::pod::EdgePod;
use crate::service::{ClusterNetwork, EdgeEndpointSlice, EdgeService};
use serde::{Deserialize, Serialize};

/// Edge → cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeMessage {
    /// First message of a session.
    Hello(Hello),
    /// The edge has made everything up to a revision durable.
    Ack(Ack),
}

/// Cloud → edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudMessage {
    /// The session is accepted; batches follow.
    Welcome(Welcome),
    /// The session is refused; the cloud closes the connection after sending this.
    Reject(Reject),
    /// Changes to the node's slice.
    Sync(SyncBatch),
}

/// Opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The edge's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The name the edge believes it has. Informational only: the cloud takes the node's
    /// identity from its client certificate and refuses a mismatch.
    pub node_name: String,
    /// Highest revision the edge has durably applied (0 for a fresh cache).
    pub acked_revision: u64,
}

/// Accepts a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The cloud's protocol version.
    pub protocol_version: u32,
    /// The node's identity as the cloud knows it (from the certificate).
    pub node_name: String,
}

/// Why a session was refused. Each variant tells the operator what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Reject {
    /// The two sides speak different protocol versions.
    #[error("protocol version mismatch: cloud speaks v{cloud}, edge speaks v{edge}; upgrade the older side")]
    VersionMismatch {
        /// The cloud's version.
        cloud: u32,
        /// The edge's version.
        edge: u32,
    },
    /// The certificate names a node the cloud has no record of.
    #[error("node {node:?} is not known to this cloud; join it again with `edgecore join`")]
    UnknownNode {
        /// Node name from the certificate.
        node: String,
    },
    /// The node's access was revoked by an administrator.
    #[error("node {node:?} has been revoked; an administrator must issue a new token and the node must join again")]
    Revoked {
        /// Node name from the certificate.
        node: String,
    },
    /// The certificate is not the node's current one: the node joined again since, so this
    /// certificate (perhaps a stolen copy) is superseded.
    #[error("this certificate of node {node:?} was superseded by a newer join; use the node's current identity or join again")]
    Superseded {
        /// Node name from the certificate.
        node: String,
    },
    /// The Hello named another node than the certificate does.
    #[error("hello names node {claimed:?} but the certificate is for {certified:?}; fix the edge's node name or join again")]
    NameMismatch {
        /// Name in the Hello.
        claimed: String,
        /// Name in the certificate.
        certified: String,
    },
    /// The edge broke the protocol (for example sent something other than Hello first).
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
}

/// Identifies an object of a node's slice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// What kind of object.
    pub kind: ObjectKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Kinds of object a node's slice contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A pod bound to the node.
    Pod,
    /// A ConfigMap that a pod bound to the node references.
    ConfigMap,
    /// A Secret that a pod bound to the node references.
    Secret,
    /// A Service (every node receives all of them; see [`crate::service`]). Protocol v5.
    Service,
    /// An EndpointSlice (every node receives all of them). Protocol v5.
    EndpointSlice,
    /// The node's network settings ([`ClusterNetwork`]): one per node, named after the node,
    /// with an empty namespace. Protocol v5.
    Network,
    /// The node's overlay routes ([`OverlayNetwork`]): one per node, named after the node,
    /// with an empty namespace. Protocol v6.
    Overlay,
    /// The Ingresses the node serves ([`EdgeIngresses`]): one per node, named after the node,
    /// with an empty namespace. Protocol v6.
    Ingress,
}

impl ObjectKind {
    /// Whether an edge speaking `version` understands this kind: the hub never sends a kind to
    /// an edge that cannot decode it.
    pub fn known_to(self, version: u32) -> bool {
        match self {
            ObjectKind::Pod | ObjectKind::ConfigMap | ObjectKind::Secret => true,
            ObjectKind::Service | ObjectKind::EndpointSlice | ObjectKind::Network => version >= 5,
            ObjectKind::Overlay | ObjectKind::Ingress => version >= 6,
        }
    }
}

/// An object of the slice, in its edge projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeObject {
    /// A pod.
    Pod(EdgePod),
    /// A ConfigMap referenced by one of the node's pods.
    ConfigMap(EdgeConfigMap),
    /// A Secret referenced by one of the node's pods.
    Secret(EdgeSecret),
    /// A Service.
    Service(EdgeService),
    /// An EndpointSlice.
    EndpointSlice(EdgeEndpointSlice),
    /// The node's network settings.
    Network(ClusterNetwork),
    /// The node's overlay routes.
    Overlay(OverlayNetwork),
    /// The Ingresses the node serves.
    Ingress(EdgeIngresses),
}

impl EdgeObject {
    /// The reference that names this object.
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            EdgeObject::Pod(p) => ObjectRef {
                kind: ObjectKind::Pod,
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            EdgeObject::ConfigMap(c) => ObjectRef {
                kind: ObjectKind::ConfigMap,
                namespace: c.namespace.clone(),
                name: c.name.clone(),
            },
            EdgeObject::Secret(c) => ObjectRef {
                kind: ObjectKind::Secret,
                namespace: c.namespace.clone(),
                name: c.name.clone(),
            },
            EdgeObject::Service(s) => ObjectRef {
                kind: ObjectKind::Service,
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            EdgeObject::EndpointSlice(s) => ObjectRef {
                kind: ObjectKind::EndpointSlice,
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            EdgeObject::Network(n) => ObjectRef {
                kind: ObjectKind::Network,
                namespace: String::new(),
                name: n.node.clone(),
            },
            EdgeObject::Overlay(o) => ObjectRef {
                kind: ObjectKind::Overlay,
                namespace: String::new(),
                name: o.node.clone(),
            },
            EdgeObject::Ingress(i) => ObjectRef {
                kind: ObjectKind::Ingress,
                namespace: String::new(),
                name: i.node.clone(),
            },
        }
    }
}

/// A created or changed object with the store revision of that change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsert {
    /// Store revision at which the object took this value.
    pub revision: u64,
    /// The object.
    pub object: EdgeObject,
}

/// A set of changes to a node's slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBatch {
    /// After applying this batch the edge's slice is complete up to this revision; the edge acks
    /// it once the batch is durable.
    pub revision: u64,
    /// When true, this batch is a full snapshot of the slice: anything the edge holds that is not
    /// in `upserts` is gone. Sent when the edge's revision is unknown to the cloud (fresh node,
    /// compacted history, cloud data reset). Objects that are unchanged are kept running.
    pub snapshot: bool,
    /// Set on every part of a snapshot but the last, when the slice does not fit one frame: the
    /// edge holds the parts (see [`crate::assembly::SnapshotAssembler`]) and applies and acks
    /// them as one snapshot when the part without `more` arrives. Never set on a delta.
    pub more: bool,
    /// Objects created or changed.
    pub upserts: Vec<Upsert>,
    /// Objects removed from the slice (deleted, or moved to another node).
    pub deletes: Vec<ObjectRef>,
}

/// Acknowledges durable receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The batch revision now durable on the edge.
    pub revision: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_batch() -> CloudMessage {
        CloudMessage::Sync(SyncBatch {
            revision: 17,
            snapshot: false,
            more: false,
            upserts: vec![Upsert {
                revision: 16,
                object: EdgeObject::Pod(crate::pod::tests::sample_pod("web")),
            }],
            deletes: vec![ObjectRef {
                kind: ObjectKind::Pod,
                namespace: "default".into(),
                name: "old".into(),
            }],
        })
    }

    #[test]
    fn reject_messages_tell_what_to_do() {
        let r = Reject::Revoked { node: "n1".into() };
        assert!(r.to_string().contains("join again"));
    }
}
