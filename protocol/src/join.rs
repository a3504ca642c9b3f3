//! The join exchange: a new edge trades a bootstrap token and a CSR for a node certificate.
//!
//! It runs once, on a QUIC connection with ALPN [`crate::ALPN_JOIN`], where the edge has no client
//! certificate yet and instead pins the cloud's CA by the hash printed with the token (as
//! `kubeadm join --discovery-token-ca-cert-hash` does). The private key never leaves the edge.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Edge → cloud, the only message of a join connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The edge's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Bootstrap token as printed by `cloudcore token create` (`<id>.<secret>`).
    pub token: String,
    /// Desired node name (a DNS label); it becomes the certificate's subject.
    pub node_name: String,
    /// Labels for the Node object.
    pub labels: BTreeMap<String, String>,
    /// PEM certificate signing request for the node's key.
    pub csr_pem: String,
}

/// Cloud → edge, the answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The node certificate and the CA that signed it.
    Accepted {
        /// Node certificate (PEM), subject CN = node name.
        certificate_pem: String,
        /// CA certificate (PEM) to trust for the sync link.
        ca_pem: String,
        /// The node's secret for authenticating its status reports (see
        /// [`crate::status::seal`]); 32 random bytes, known only to this node and the cloud.
        report_key: Vec<u8>,
    },
    /// The join was refused.
    Refused(JoinRefusal),
}

/// Why a join was refused; every message says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    /// No such token, or the secret does not match.
    #[error("the bootstrap token is not valid; create one with `cloudcore token create` and pass it exactly as printed")]
    InvalidToken,
    /// The token's lifetime is over.
    #[error("the bootstrap token expired; create a new one with `cloudcore token create`")]
    TokenExpired,
    /// The token was single-use and has been used.
    #[error("the bootstrap token was already used; tokens are single-use, create a new one with `cloudcore token create`")]
    TokenUsed,
    /// The requested node name is not acceptable.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CSR could not be parsed or verified.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The edge speaks another protocol version.
    #[error("protocol version mismatch: cloud speaks v{cloud}, edge speaks v{edge}; upgrade the older side")]
    VersionMismatch {
        /// The cloud's version.
        cloud: u32,
        /// The edge's version.
        edge: u32,
    },
    /// The node name is revoked.
    #[error("node {0:?} has been revoked; to re-admit it, join with a token made for it: `cloudcore token create --node {0}`")]
    Revoked(String),
    /// The name belongs to a registered node and the token was not made for it.
    #[error("node {0:?} is already registered; to replace it (e.g. after reinstalling the edge), join with a token made for it: `cloudcore token create --node {0}`")]
    NameTaken(String),
    /// The token was made for another node.
    #[error("this bootstrap token was made for node {token_node:?}; use that node name, or create a token for this one")]
    TokenForOtherNode {
        /// The node the token admits.
        token_node: String,
    },
    /// The cloud failed internally; retrying later may work.
    #[error("the cloud could not complete the join: {0}; retry, and check cloudcore's log if it persists")]
    Internal(String),
    /// A label the node asked for is malformed or one a node may not set on itself (new in
    /// v4; a v3 edge gets the reason as [`JoinRefusal::InvalidNodeName`]).
    #[error("{0}")]
    InvalidLabels(String),
}
