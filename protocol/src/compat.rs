//! The shapes of the previous protocol version that differ from this one, and their
//! conversion into this version's, so that a cloud reads edges one version behind it
//! (Kubernetes lets kubelets lag the API server; an edge fleet on trains is upgraded last).
//!
//! Only what changed is kept here, field for field as that version encoded it: everything
//! else of the old version is the same type as now. When the version moves on, the module of
//! the version that falls out of the window is deleted and the one just left is added.
//!
//! From v4 to v5 no encoded shape changed: v5 added object kinds to the sync link (Services,
//! EndpointSlices, the node's network settings), which the hub never sends to a v4 edge
//! ([`crate::messages::ObjectKind::known_to`]), and nothing on MQTT. So a v4 session speaks
//! today's messages minus those kinds, and a v4 report decodes as today's.

/// Protocol v4: today's shapes without the network kinds.
pub mod v4 {
    /// This module's version.
    pub const VERSION: u32 = 4;
}

#[cfg(test)]
mod tests {
    use crate::messages::ObjectKind;
    use crate::status::{self, NodeInfo, NodeStatus, StatusBody, StatusReport};
    use std::collections::BTreeMap;

    fn node_report(version: u32) -> StatusReport {
        StatusReport {
            protocol_version: version,
            seq: 1,
            observed_at_ms: 5,
            body: StatusBody::Node(NodeStatus {
                node: "n1".into(),
                conditions: vec![],
                addresses: vec![],
                capacity: BTreeMap::new(),
                allocatable: BTreeMap::new(),
                info: NodeInfo::default(),
            }),
        }
    }

    #[test]
    fn a_v4_report_decodes_as_todays_and_keeps_its_version() {
        let bytes = crate::codec::encode(&node_report(super::v4::VERSION)).unwrap();
        let decoded = status::decode_report(&bytes).unwrap();
        assert_eq!(decoded, node_report(4));
    }

    #[test]
    fn versions_outside_the_window_are_refused_by_name() {
        for v in [3u32, crate::PROTOCOL_VERSION + 1] {
            let bytes = crate::codec::encode(&node_report(v)).unwrap();
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

    #[test]
    fn a_v4_edge_knows_only_the_kinds_it_can_decode() {
        for kind in [ObjectKind::Pod, ObjectKind::ConfigMap, ObjectKind::Secret] {
            assert!(kind.known_to(4));
        }
        for kind in [
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::Network,
        ] {
            assert!(!kind.known_to(4) && kind.known_to(5));
        }
    }
}
