//! The shapes of the previous protocol version that differ from this one, and their
//! conversion into this version's, so that a cloud reads edges one version behind it
//! (Kubernetes lets kubelets lag the API server; an edge fleet on trains is upgraded last).
//!
//! Only what changed is kept here, field for field as that version encoded it: everything
//! else of the old version is the same type as now. When the version moves on, the module of
//! the version that falls out of the window is deleted and the one just left is added.
//!
//! On the QUIC link nothing changed from v3 to v4, so a v3 session speaks today's messages;
//! on MQTT only the node report did.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Protocol v3: node reports had one ready flag and a message.
pub mod v3 {
    use super::*;
    use crate::status::{NodeCondition, NodeConditionKind, NodeInfo, PodStatus};

    /// This module's version.
    pub const VERSION: u32 = 3;

    /// v3's envelope (the same fields as today's; its body is v3's).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StatusReport {
        /// Always [`VERSION`].
        pub protocol_version: u32,
        /// Monotonic per sending node.
        pub seq: u64,
        /// When the edge observed this state, ms since the epoch.
        pub observed_at_ms: u64,
        /// What is reported.
        pub body: StatusBody,
    }

    /// v3's body: the node variant differs, the pod variant is today's.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum StatusBody {
        /// Node heartbeat and facts.
        Node(NodeStatus),
        /// A pod's status.
        Pod(PodStatus),
    }

    /// v3's node report.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NodeStatus {
        /// Node name.
        pub node: String,
        /// Whether the node can run pods.
        pub ready: bool,
        /// Why not, when not ready.
        pub message: String,
        /// `(type, address)` pairs.
        pub addresses: Vec<(String, String)>,
        /// Capacity, in Kubernetes quantity strings.
        pub capacity: BTreeMap<String, String>,
        /// Allocatable resources.
        pub allocatable: BTreeMap<String, String>,
        /// Facts about the machine and agent.
        pub info: NodeInfo,
    }

    impl From<NodeStatus> for crate::status::NodeStatus {
        /// A v3 edge measured readiness only: the pressure conditions stay unreported
        /// (the cloud leaves them out rather than claiming no pressure).
        fn from(s: NodeStatus) -> Self {
            let (reason, message) = if s.ready {
                (
                    "KubeletReady",
                    "edgecore is posting ready status".to_string(),
                )
            } else {
                ("KubeletNotReady", s.message)
            };
            Self {
                node: s.node,
                conditions: vec![NodeCondition::new(
                    NodeConditionKind::Ready,
                    s.ready,
                    reason,
                    &message,
                )],
                addresses: s.addresses,
                capacity: s.capacity,
                allocatable: s.allocatable,
                info: s.info,
            }
        }
    }

    impl From<StatusReport> for crate::status::StatusReport {
        fn from(r: StatusReport) -> Self {
            Self {
                protocol_version: r.protocol_version,
                seq: r.seq,
                observed_at_ms: r.observed_at_ms,
                body: match r.body {
                    StatusBody::Node(n) => crate::status::StatusBody::Node(n.into()),
                    StatusBody::Pod(p) => crate::status::StatusBody::Pod(p),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{self, NodeConditionKind, NodeInfo, PodPhase, PodStatus};

    fn v3_node(ready: bool) -> v3::StatusReport {
        v3::StatusReport {
            protocol_version: v3::VERSION,
            seq: 9,
            observed_at_ms: 5,
            body: v3::StatusBody::Node(v3::NodeStatus {
                node: "old".into(),
                ready,
                message: if ready { "" } else { "runtime down" }.into(),
                addresses: vec![("InternalIP".into(), "10.0.0.1".into())],
                capacity: BTreeMap::from([("cpu".into(), "2".into())]),
                allocatable: BTreeMap::new(),
                info: NodeInfo::default(),
            }),
        }
    }

    #[test]
    fn a_v3_node_report_reads_as_a_ready_condition_and_keeps_its_version() {
        let bytes = crate::codec::encode(&v3_node(false)).unwrap();
        let r = status::decode_report(&bytes).unwrap();
        assert_eq!(r.protocol_version, 3);
        assert_eq!(r.seq, 9);
        let status::StatusBody::Node(n) = r.body else {
            panic!("node body")
        };
        assert!(!n.is_ready());
        let ready = n.condition(NodeConditionKind::Ready).unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("KubeletNotReady", "runtime down")
        );
        assert!(n.condition(NodeConditionKind::MemoryPressure).is_none());
        assert_eq!(n.capacity["cpu"], "2");
        // The v3 bytes do not decode as v4: the versions really differ on the wire.
        assert!(crate::codec::decode::<status::StatusReport>(&bytes).is_err());
    }

    #[test]
    fn a_v3_pod_report_is_todays_pod_report() {
        let pod = PodStatus {
            node: "old".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            phase: PodPhase::Running,
            conditions: vec![],
            containers: vec![],
            pod_ip: String::new(),
            host_ip: String::new(),
            start_time_ms: 1,
            reason: String::new(),
            message: String::new(),
            removed: false,
        };
        let old = v3::StatusReport {
            protocol_version: 3,
            seq: 1,
            observed_at_ms: 1,
            body: v3::StatusBody::Pod(pod.clone()),
        };
        let r = status::decode_report(&crate::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(r.body, status::StatusBody::Pod(pod));
    }

    #[test]
    fn versions_outside_the_window_are_refused_by_name() {
        for v in [2u32, crate::PROTOCOL_VERSION + 1] {
            let mut old = v3_node(true);
            old.protocol_version = v;
            let bytes = crate::codec::encode(&old).unwrap();
            assert_eq!(
                status::decode_report(&bytes),
                Err(status::SealError::UnsupportedVersion { edge: v })
            );
        }
        assert!(crate::edge_version_supported(crate::PROTOCOL_VERSION));
        assert!(crate::edge_version_supported(crate::PROTOCOL_VERSION - 1));
        assert!(!crate::edge_version_supported(crate::PROTOCOL_VERSION + 1));
        assert!(!crate::edge_version_supported(crate::PROTOCOL_VERSION - 2));
    }
}
