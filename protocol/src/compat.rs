//! The shapes of the previous protocol version that differ from this one, and their
//! conversion into this version's, so that a cloud reads edges one version behind it
//! (Kubernetes lets kubelets lag the API server; an edge fleet on trains is upgraded last).
//!
//! Only what changed is kept here, field for field as that version encoded it: everything
//! else of the old version is the same type as now. When the version moves on, the module of
//! the version that falls out of the window is deleted and the one just left is added.
//!
//! From v4 to v5: pods gained their DNS settings (`EdgePod::dns`), and the sync link gained
//! object kinds (Services, EndpointSlices, the node's network settings) which the hub never
//! sends to a v4 edge ([`crate::messages::ObjectKind::known_to`]). Nothing changed on MQTT, so
//! a v4 report decodes as today's; the hub writes a v4 session's batches in [`v4`]'s shapes,
//! and a v4 edge's cache is read through them when the edge is upgraded.

/// Protocol v4: pods without their DNS settings, and no network kinds.
pub mod v4 {
    use crate::config::{EdgeConfigMap, EdgeSecret};
    use crate::messages::{ObjectRef, Reject, Welcome};
    use crate::pod::{EdgeContainer, RestartPolicy, Volume};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// This module's version.
    pub const VERSION: u32 = 4;

    /// v4's pod: today's without `dns` (a v4 edge gives every pod the runtime's default
    /// resolver setup; its `EdgeVersionSkew` condition tells the admin to upgrade it).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct EdgePod {
        pub namespace: String,
        pub name: String,
        pub uid: String,
        pub labels: BTreeMap<String, String>,
        pub containers: Vec<EdgeContainer>,
        pub restart_policy: RestartPolicy,
        pub termination_grace_period_seconds: u64,
        pub volumes: Vec<Volume>,
        pub deletion_grace_period_seconds: Option<u64>,
    }

    impl From<crate::pod::EdgePod> for EdgePod {
        fn from(p: crate::pod::EdgePod) -> Self {
            Self {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                labels: p.labels,
                containers: p.containers,
                restart_policy: p.restart_policy,
                termination_grace_period_seconds: p.termination_grace_period_seconds,
                volumes: p.volumes,
                deletion_grace_period_seconds: p.deletion_grace_period_seconds,
            }
        }
    }

    impl From<EdgePod> for crate::pod::EdgePod {
        /// A pod a v4 edge cached: the default DNS settings (`ClusterFirst`), which is what
        /// the API gave every pod then.
        fn from(p: EdgePod) -> Self {
            Self {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                labels: p.labels,
                containers: p.containers,
                restart_policy: p.restart_policy,
                termination_grace_period_seconds: p.termination_grace_period_seconds,
                volumes: p.volumes,
                deletion_grace_period_seconds: p.deletion_grace_period_seconds,
                dns: Default::default(),
            }
        }
    }

    /// v4's objects.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum EdgeObject {
        Pod(EdgePod),
        ConfigMap(EdgeConfigMap),
        Secret(EdgeSecret),
    }

    /// v4's upsert.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct Upsert {
        pub revision: u64,
        pub object: EdgeObject,
    }

    /// v4's batch.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct SyncBatch {
        pub revision: u64,
        pub snapshot: bool,
        pub more: bool,
        pub upserts: Vec<Upsert>,
        pub deletes: Vec<ObjectRef>,
    }

    /// v4's cloud-to-edge message.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum CloudMessage {
        Welcome(Welcome),
        Reject(Reject),
        Sync(SyncBatch),
    }

    /// Today's batch as a v4 edge reads it: `None` if it holds a kind v4 does not know (the
    /// hub never builds one for a v4 session; this is the check that it did not).
    pub fn batch(b: crate::messages::SyncBatch) -> Option<SyncBatch> {
        use crate::messages::EdgeObject as Now;
        let mut upserts = Vec::with_capacity(b.upserts.len());
        for u in b.upserts {
            let object = match u.object {
                Now::Pod(p) => EdgeObject::Pod(p.into()),
                Now::ConfigMap(c) => EdgeObject::ConfigMap(c),
                Now::Secret(s) => EdgeObject::Secret(s),
                Now::Service(_) | Now::EndpointSlice(_) | Now::Network(_) => return None,
            };
            upserts.push(Upsert {
                revision: u.revision,
                object,
            });
        }
        if b.deletes.iter().any(|d| !d.kind.known_to(VERSION)) {
            return None;
        }
        Some(SyncBatch {
            revision: b.revision,
            snapshot: b.snapshot,
            more: b.more,
            upserts,
            deletes: b.deletes,
        })
    }
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
    fn a_v4_batch_carries_pods_in_v4_shape_and_nothing_it_cannot_decode() {
        use crate::messages::{EdgeObject, SyncBatch, Upsert};
        let pod = crate::pod::tests::sample_pod("web");
        let now = SyncBatch {
            revision: 3,
            snapshot: true,
            more: false,
            upserts: vec![Upsert {
                revision: 2,
                object: EdgeObject::Pod(pod.clone()),
            }],
            deletes: vec![],
        };
        let old = super::v4::batch(now.clone()).expect("pods only");
        let bytes = crate::codec::encode(&old).unwrap();
        let back: super::v4::SyncBatch = crate::codec::decode(&bytes).unwrap();
        let super::v4::EdgeObject::Pod(p) = &back.upserts[0].object else {
            panic!("{back:?}")
        };
        assert_eq!(crate::pod::EdgePod::from(p.clone()).name, pod.name);
        assert!(
            crate::codec::decode::<SyncBatch>(&bytes).is_err()
                || crate::codec::decode::<SyncBatch>(&bytes).ok() != Some(now.clone()),
            "the shapes really differ on the wire"
        );
        let mut with_network = now;
        with_network.upserts.push(Upsert {
            revision: 1,
            object: EdgeObject::Network(crate::service::ClusterNetwork {
                node: "n".into(),
                pod_cidr: None,
                service_cidr: "10.96.0.0/12".into(),
                cluster_dns: "10.96.0.10".parse().unwrap(),
                cluster_domain: "cluster.local".into(),
            }),
        });
        assert_eq!(super::v4::batch(with_network), None);
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
