//! Skerry's edge wire model.
//!
//! This crate is the contract between `cloudcore` and `edgecore` and nothing else: message types,
//! the compact projection of a pod that the edge runs, the MQTT topic scheme with its payloads, and
//! the one [`codec`] that owns framing and encoding. It performs no I/O and has no async runtime,
//! so every rule in it can be tested with plain function calls (see the property tests in
//! [`codec`]).

pub mod assembly;
pub mod codec;
pub mod compat;
pub mod config;
pub mod downward;
pub mod events;
pub mod hosts;
pub mod ingress;
pub mod join;
pub mod messages;
pub mod overlay;
pub mod pod;
pub mod security;
pub mod service;
pub mod status;
pub mod streams;
pub mod timestamp;
pub mod topics;

/// Version of the edge protocol spoken on the QUIC link and in MQTT payloads.
///
/// Bumped whenever an encoded type changes shape: bincode is not self-describing, so each end
/// must know exactly which shapes it reads. The cloud also reads the previous version
/// ([`OLDEST_EDGE_VERSION`], Kubernetes' one-minor-version skew for kubelets): an edge may be
/// upgraded after its cloud. Any other version is refused with
/// [`messages::Reject::VersionMismatch`] rather than misreading bytes.
///
/// v4: node reports carry their conditions ([`status::NodeCondition`]) instead of one
/// ready flag.
///
/// v5: the sync link carries Services, EndpointSlices and the node's network settings
/// ([`service`]); the hub sends none of them to a v4 edge, so a v4 session speaks v4.
///
/// v6: the sync link carries the node's overlay routes ([`overlay::OverlayNetwork`]) and the
/// Ingresses it serves ([`ingress::EdgeIngresses`]), and the connection carries pod packets as QUIC datagrams ([`overlay`]). Nothing of v5 changed
/// shape: a v5 session gets today's messages without the kinds it does not know.
///
/// v7: the hub's streams gain requests a v6 edge cannot decode
/// ([`streams::StreamRequest::since_version`]), and the hub tells nodes where their overlay
/// peers are ([`overlay::PeerHint`], on unidirectional streams); the hub opens none of them on
/// a v6 session.
///
/// v8: pods carry init containers ([`pod::EdgePod::init_containers`]) and pod statuses their
/// init containers' statuses ([`status::PodStatus::init_containers`]), and pods carry their
/// names ([`pod::EdgePod::hosts`]); a v7 session gets pods in v7's shape and never a pod
/// that a v7 edge would run otherwise than asked ([`compat::v7::batch`]).
pub const PROTOCOL_VERSION: u32 = 8;

/// The oldest edge version the cloud accepts: one behind its own.
pub const OLDEST_EDGE_VERSION: u32 = PROTOCOL_VERSION - 1;

/// Whether a cloud speaking [`PROTOCOL_VERSION`] serves an edge speaking `edge`: the same
/// version or one older. A newer edge is refused (the cloud cannot know its shapes).
pub fn edge_version_supported(edge: u32) -> bool {
    (OLDEST_EDGE_VERSION..=PROTOCOL_VERSION).contains(&edge)
}

/// ALPN protocol id of the mTLS sync link (desired state down, acks up).
pub const ALPN_SYNC: &[u8] = b"skerry-sync/1";

/// ALPN protocol id of the one-shot join exchange (token + CSR for a node certificate).
pub const ALPN_JOIN: &[u8] = b"skerry-join/1";

/// ALPN protocol id of a direct connection between two nodes for the pod overlay
/// ([`overlay`]'s direct path), mTLS with both nodes' certificates.
pub const ALPN_PEER: &[u8] = b"skerry-peer/1";

/// The organisation (O) every node certificate carries and no user certificate may: what
/// makes a certificate of the cluster CA a node's, for the hub and for a node's peers.
pub const NODE_GROUP: &str = "skerry:nodes";

/// QUIC application close code of an edge that closes its sync link because it heard nothing
/// from the cloud while it was owed an answer: its close still reaches a hub whose packets do
/// not reach it, which tells the hub the link is cut towards the node.
pub const CLOSE_EDGE_DEAF: u32 = 0x5d;
