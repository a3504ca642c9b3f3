//! The shapes of the previous protocol version that differ from this one, and their
//! conversion into this version's, so that a cloud reads edges one version behind it
//! (Kubernetes lets kubelets lag the API server; an edge fleet on trains is upgraded last).
//!
//! Only what changed is kept here, field for field as that version encoded it: everything
//! else of the old version is the same type as now. When the version moves on, the module of
//! the version that falls out of the window is deleted and the one just left is added.
//!
//! From v5 to v6: no type changed shape; the sync link gained two object kinds (the node's
//! overlay routes and the Ingresses it serves), which the hub never sends to a v5 edge
//! ([`crate::messages::ObjectKind::known_to`]), and the connection gained datagrams, which a v5
//! edge never sends and the hub never sends it. So a v5 report decodes as today's, and a v5
//! session's batches are today's batches, checked by [`v5::batch`].

/// Protocol v5: today's shapes without the overlay and ingress kinds.
pub mod v5 {
    use crate::messages::SyncBatch;

    /// This module's version.
    pub const VERSION: u32 = 5;

    /// Today's batch as a v5 edge reads it: `None` if it holds a kind v5 does not know (the
    /// hub never builds one for a v5 session; this is the check that it did not).
    pub fn batch(b: SyncBatch) -> Option<SyncBatch> {
        let known = b
            .upserts
            .iter()
            .map(|u| u.object.object_ref().kind)
            .chain(b.deletes.iter().map(|d| d.kind))
            .all(|k| k.known_to(VERSION));
        known.then_some(b)
    }
}

#[cfg(test)]
mod tests {
    use crate::messages::{EdgeObject, ObjectKind, ObjectRef, SyncBatch, Upsert};
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
    fn a_v5_report_decodes_as_todays_and_keeps_its_version() {
        let bytes = crate::codec::encode(&node_report(super::v5::VERSION)).unwrap();
        let decoded = status::decode_report(&bytes).unwrap();
        assert_eq!(decoded, node_report(5));
    }

    #[test]
    fn versions_outside_the_window_are_refused_by_name() {
        for v in [4u32, crate::PROTOCOL_VERSION + 1] {
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

    fn overlay() -> EdgeObject {
        EdgeObject::Overlay(crate::overlay::OverlayNetwork {
            node: "n".into(),
            cluster_cidrs: vec!["10.244.0.0/16".into()],
        })
    }

    #[test]
    fn a_v5_batch_is_todays_and_carries_nothing_it_cannot_decode() {
        let pod = crate::pod::tests::sample_pod("web");
        let now = SyncBatch {
            revision: 3,
            snapshot: true,
            more: false,
            upserts: vec![Upsert {
                revision: 2,
                object: EdgeObject::Pod(pod),
            }],
            deletes: vec![],
        };
        assert_eq!(super::v5::batch(now.clone()), Some(now.clone()));
        let mut with_overlay = now.clone();
        with_overlay.upserts.push(Upsert {
            revision: 1,
            object: overlay(),
        });
        assert_eq!(super::v5::batch(with_overlay), None);
        let mut deleting_overlay = now;
        deleting_overlay.deletes.push(ObjectRef {
            kind: ObjectKind::Overlay,
            namespace: String::new(),
            name: "n".into(),
        });
        assert_eq!(super::v5::batch(deleting_overlay), None);
    }

    #[test]
    fn a_v5_edge_knows_only_the_kinds_it_can_decode() {
        for kind in [
            ObjectKind::Pod,
            ObjectKind::ConfigMap,
            ObjectKind::Secret,
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::Network,
        ] {
            assert!(kind.known_to(5));
        }
        assert!(!ObjectKind::Overlay.known_to(5) && ObjectKind::Overlay.known_to(6));
        assert!(!ObjectKind::Ingress.known_to(5) && ObjectKind::Ingress.known_to(6));
        assert_eq!(overlay().object_ref().kind, ObjectKind::Overlay);
    }
}
