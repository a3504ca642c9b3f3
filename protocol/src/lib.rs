//! Skerry's edge wire model.
//!
//! This crate is the contract between `cloudcore` and `edgecore` and nothing else: message types,
//! the compact projection of a pod that the edge runs, the MQTT topic scheme with its payloads, and
//! the one [`codec`] that owns framing and encoding. It performs no I/O and has no async runtime,
//! so every rule in it can be tested with plain function calls (see the property tests in
//! [`codec`]).

pub mod assembly;
pub mod codec;
pub mod config;
pub mod join;
pub mod messages;
pub mod pod;
pub mod status;
pub mod timestamp;
pub mod topics;

/// Version of the edge protocol spoken on the QUIC link and in MQTT payloads.
///
/// Bumped whenever an encoded type changes shape: bincode is not self-describing, so both ends
/// must agree exactly. A peer with another version is refused with
/// [`messages::Reject::VersionMismatch`] rather than misreading bytes.
pub const PROTOCOL_VERSION: u32 = 3;

/// ALPN protocol id of the mTLS sync link (desired state down, acks up).
pub const ALPN_SYNC: &[u8] = b"skerry-sync/1";

/// ALPN protocol id of the one-shot join exchange (token + CSR for a node certificate).
pub const ALPN_JOIN: &[u8] = b"skerry-join/1";
