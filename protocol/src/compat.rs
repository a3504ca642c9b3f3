//! The shapes of the previous protocol version that differ from this one, and their
//! conversion into this version's, so that a cloud reads edges one version behind it
//! (Kubernetes lets kubelets lag the API server; an edge fleet on trains is upgraded last).
//!
//! Only what changed is kept here, field for field as that version encoded it: everything
//! else of the old version is the same type as now. When the version moves on, the module of
//! the version that falls out of the window is deleted and the one just left is added.
//!
//! From v7 to v8: pods gained init containers ([`crate::pod::EdgePod::init_containers`]) and
//! their names ([`crate::pod::EdgePod::hosts`]), the annotations they read
//! ([`crate::pod::EdgePod::annotations`]), downward API and projected volumes, their lifecycle hooks
//! ([`crate::pod::EdgeContainer::lifecycle`]) and their security settings ([`crate::pod::EdgePod::security`],
//! [`crate::pod::EdgeContainer::security`]); pod statuses gained their init containers'
//! statuses ([`crate::status::PodStatus::init_containers`]). The hub writes a v7 session's
//! batches in [`v7`]'s shapes; a pod a v7 edge would run otherwise than asked
//! ([`v7::v8_only`] says why) is *withheld* from a v7 edge ([`v7::batch`] leaves it out and
//! names it): the pod stays `Pending` on that node, the hub
//! logs it and counts it in `skerry_hub_pods_withheld_total`, and the node's `EdgeVersionSkew`
//! condition says to upgrade the node (an upgraded edge changes cache layout, so it resyncs in
//! full and gets the pod). A v7 report is decoded in [`v7::StatusReport`]'s shape and
//! converted (no init container statuses, as a v7 edge ran none).
//!
//! v6's shapes left the window with v8; the edge's cache still reads pods a v6 edgecore cached
//! (`edgecore::cache::layout3`), which is the only place they live on.

/// Protocol v7: pods without init containers, pod statuses without theirs.
pub mod v7 {
    use crate::config::{EdgeConfigMap, EdgeSecret};
    use crate::ingress::EdgeIngresses;
    use crate::messages::{ObjectKind, ObjectRef, Reject, Welcome};
    use crate::overlay::OverlayNetwork;
    use crate::pod::{
        ContainerPort, DeviceMapping, EnvFromSource, EnvVar, PodDns, Probe, Resources,
        RestartPolicy, Volume, VolumeMount,
    };
    use crate::service::{ClusterNetwork, EdgeEndpointSlice, EdgeService};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// This module's version.
    pub const VERSION: u32 = 7;

    /// v7's report: today's envelope around v7's body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct StatusReport {
        pub protocol_version: u32,
        pub seq: u64,
        pub observed_at_ms: u64,
        pub body: StatusBody,
    }

    /// v7's report body: today's variants, v7's pod status.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum StatusBody {
        Node(crate::status::NodeStatus),
        Pod(PodStatus),
        Events(crate::events::PodEvents),
    }

    /// v7's pod status: today's without `init_containers`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct PodStatus {
        pub node: String,
        pub namespace: String,
        pub name: String,
        pub uid: String,
        pub phase: crate::status::PodPhase,
        pub conditions: Vec<crate::status::PodCondition>,
        pub containers: Vec<crate::status::ContainerStatus>,
        pub pod_ip: String,
        pub host_ip: String,
        pub start_time_ms: u64,
        pub reason: String,
        pub message: String,
        pub removed: bool,
    }

    impl From<StatusReport> for crate::status::StatusReport {
        fn from(r: StatusReport) -> Self {
            Self {
                protocol_version: r.protocol_version,
                seq: r.seq,
                observed_at_ms: r.observed_at_ms,
                body: match r.body {
                    StatusBody::Node(n) => crate::status::StatusBody::Node(n),
                    StatusBody::Pod(p) => crate::status::StatusBody::Pod(p.into()),
                    StatusBody::Events(e) => crate::status::StatusBody::Events(e),
                },
            }
        }
    }

    impl From<PodStatus> for crate::status::PodStatus {
        /// A v7 edge ran no init containers: none are reported.
        fn from(p: PodStatus) -> Self {
            Self {
                node: p.node,
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                phase: p.phase,
                conditions: p.conditions,
                containers: p.containers,
                pod_ip: p.pod_ip,
                host_ip: p.host_ip,
                start_time_ms: p.start_time_ms,
                reason: p.reason,
                message: p.message,
                removed: p.removed,
                init_containers: Vec::new(),
            }
        }
    }

    impl From<crate::status::PodStatus> for PodStatus {
        /// For tests that play a v7 edge.
        fn from(p: crate::status::PodStatus) -> Self {
            Self {
                node: p.node,
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                phase: p.phase,
                conditions: p.conditions,
                containers: p.containers,
                pod_ip: p.pod_ip,
                host_ip: p.host_ip,
                start_time_ms: p.start_time_ms,
                reason: p.reason,
                message: p.message,
                removed: p.removed,
            }
        }
    }

    /// What of `pod` a v7 edge would run otherwise than asked, if anything (the reason the
    /// hub counts it under): it has init containers (a v7 edge would run the app containers
    /// without them), lifecycle hooks (it would run none), a `securityContext` (a v7 edge would run every container as the image's
    /// user, with the runtime's default privileges and no `fsGroup` or `sysctls`), a hostname other
    /// than its name, aliases, or `setHostnameAsFQDN` (a v7 edge names every pod by its name
    /// and gives it the host's `/etc/hosts`), downward API or projected volumes (v7 has no
    /// such kinds), or annotations it reads (v7 resolves no annotation `fieldRef`). A subdomain alone is not: a StatefulSet's pods
    /// have one, a v7 edge runs them as it always did, and their fully qualified names
    /// resolve through the cluster DNS, only not from the pod's own `/etc/hosts`.
    pub fn v8_only(pod: &crate::pod::EdgePod) -> Option<&'static str> {
        if !pod.init_containers.is_empty() {
            Some("init_containers")
        } else if pod.security.is_some() || pod.containers.iter().any(|c| c.security.is_some()) {
            Some("security_context")
        } else if pod.containers.iter().any(|c| !c.lifecycle.is_empty()) {
            Some("lifecycle")
        } else if pod.hosts.hostname(&pod.name)
            != crate::pod::PodHosts::default().hostname(&pod.name)
        {
            Some("hostname")
        } else if !pod.hosts.aliases.is_empty() {
            Some("host_aliases")
        } else if pod.hosts.hostname_as_fqdn && pod.hosts.subdomain.is_some() {
            Some("hostname_as_fqdn")
        } else if pod.volumes.iter().any(|v| {
            matches!(
                v.source,
                crate::pod::VolumeSource::DownwardApi { .. }
                    | crate::pod::VolumeSource::Projected { .. }
            )
        }) {
            // A v7 edge cannot even decode these volume kinds.
            Some("downward_api_volumes")
        } else if !pod.annotations.is_empty() {
            Some("annotations")
        } else {
            None
        }
    }

    /// v7's container: today's without `security` and `lifecycle`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct EdgeContainer {
        pub name: String,
        pub image: String,
        pub image_pull_policy: String,
        pub command: Vec<String>,
        pub args: Vec<String>,
        pub working_dir: String,
        pub env: Vec<EnvVar>,
        pub ports: Vec<ContainerPort>,
        pub resources: Resources,
        pub volume_mounts: Vec<VolumeMount>,
        pub env_from: Vec<EnvFromSource>,
        pub devices: Vec<DeviceMapping>,
        pub liveness_probe: Option<Probe>,
        pub readiness_probe: Option<Probe>,
        pub startup_probe: Option<Probe>,
        pub stdin: bool,
        pub stdin_once: bool,
        pub tty: bool,
    }

    impl From<crate::pod::EdgeContainer> for EdgeContainer {
        /// Only for a container [`v8_only`] let through: it has no `security` and no hooks.
        fn from(c: crate::pod::EdgeContainer) -> Self {
            Self {
                name: c.name,
                image: c.image,
                image_pull_policy: c.image_pull_policy,
                command: c.command,
                args: c.args,
                working_dir: c.working_dir,
                env: c.env,
                ports: c.ports,
                resources: c.resources,
                volume_mounts: c.volume_mounts,
                env_from: c.env_from,
                devices: c.devices,
                liveness_probe: c.liveness_probe,
                readiness_probe: c.readiness_probe,
                startup_probe: c.startup_probe,
                stdin: c.stdin,
                stdin_once: c.stdin_once,
                tty: c.tty,
            }
        }
    }

    impl From<EdgeContainer> for crate::pod::EdgeContainer {
        /// A container a v7 edge cached or decoded: no `security`, no hooks (none could be sent
        /// to it).
        fn from(c: EdgeContainer) -> Self {
            Self {
                name: c.name,
                image: c.image,
                image_pull_policy: c.image_pull_policy,
                command: c.command,
                args: c.args,
                working_dir: c.working_dir,
                env: c.env,
                ports: c.ports,
                resources: c.resources,
                volume_mounts: c.volume_mounts,
                env_from: c.env_from,
                devices: c.devices,
                liveness_probe: c.liveness_probe,
                readiness_probe: c.readiness_probe,
                startup_probe: c.startup_probe,
                stdin: c.stdin,
                stdin_once: c.stdin_once,
                tty: c.tty,
                security: None,
                lifecycle: crate::pod::Lifecycle::default(),
            }
        }
    }

    /// v7's pod: today's without `init_containers`, `hosts`, `annotations` and `security`, with
    /// v7's containers.
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
        pub dns: PodDns,
    }

    impl TryFrom<crate::pod::EdgePod> for EdgePod {
        /// The pod itself, back: it has what v7 cannot carry ([`v8_only`]).
        type Error = Box<crate::pod::EdgePod>;

        fn try_from(p: crate::pod::EdgePod) -> Result<Self, Self::Error> {
            if v8_only(&p).is_some() {
                return Err(Box::new(p));
            }
            Ok(Self {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                labels: p.labels,
                containers: p.containers.into_iter().map(EdgeContainer::from).collect(),
                restart_policy: p.restart_policy,
                termination_grace_period_seconds: p.termination_grace_period_seconds,
                volumes: p.volumes,
                deletion_grace_period_seconds: p.deletion_grace_period_seconds,
                dns: p.dns,
            })
        }
    }

    impl From<EdgePod> for crate::pod::EdgePod {
        /// A pod a v7 edge cached or decoded: no init containers (none could be sent to it).
        fn from(p: EdgePod) -> Self {
            Self {
                namespace: p.namespace,
                name: p.name,
                uid: p.uid,
                labels: p.labels,
                containers: p.containers.into_iter().map(Into::into).collect(),
                restart_policy: p.restart_policy,
                termination_grace_period_seconds: p.termination_grace_period_seconds,
                volumes: p.volumes,
                deletion_grace_period_seconds: p.deletion_grace_period_seconds,
                dns: p.dns,
                init_containers: Vec::new(),
                hosts: Default::default(),
                annotations: BTreeMap::new(),
                security: None,
            }
        }
    }

    /// v7's objects (today's kinds, v7's pods).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum EdgeObject {
        Pod(EdgePod),
        ConfigMap(EdgeConfigMap),
        Secret(EdgeSecret),
        Service(EdgeService),
        EndpointSlice(EdgeEndpointSlice),
        Network(ClusterNetwork),
        Overlay(OverlayNetwork),
        Ingress(EdgeIngresses),
    }

    /// v7's upsert.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct Upsert {
        pub revision: u64,
        pub object: EdgeObject,
    }

    /// v7's batch.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct SyncBatch {
        pub revision: u64,
        pub snapshot: bool,
        pub more: bool,
        pub upserts: Vec<Upsert>,
        pub deletes: Vec<ObjectRef>,
    }

    /// v7's cloud-to-edge message.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum CloudMessage {
        Welcome(Welcome),
        Reject(Reject),
        Sync(SyncBatch),
    }

    /// Today's batch as a v7 edge is sent it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Converted {
        /// The batch in v7's shapes.
        pub batch: SyncBatch,
        /// Pods left out because a v7 edge would not run them as asked ([`v8_only`], whose
        /// reason each comes with; see the module docs): the hub reports them.
        pub withheld: Vec<(ObjectRef, &'static str)>,
    }

    /// Today's batch as a v7 edge reads it, without the pods it cannot run as asked (init
    /// containers), which are named in [`Converted::withheld`]. `None` if it holds a kind v7
    /// does not know (the hub never builds one for a v7 session; this is the check that it
    /// did not).
    pub fn batch(b: crate::messages::SyncBatch) -> Option<Converted> {
        use crate::messages::EdgeObject as Now;
        if b.deletes.iter().any(|d| !d.kind.known_to(VERSION)) {
            return None;
        }
        let mut upserts = Vec::with_capacity(b.upserts.len());
        let mut withheld = Vec::new();
        for u in b.upserts {
            if !u.object.object_ref().kind.known_to(VERSION) {
                return None;
            }
            let object = match u.object {
                Now::Pod(p) => match EdgePod::try_from(p) {
                    Ok(p) => EdgeObject::Pod(p),
                    Err(p) => {
                        let reason = v8_only(&p).unwrap_or("init_containers");
                        withheld.push((
                            ObjectRef {
                                kind: ObjectKind::Pod,
                                namespace: p.namespace,
                                name: p.name,
                            },
                            reason,
                        ));
                        continue;
                    }
                },
                Now::ConfigMap(c) => EdgeObject::ConfigMap(c),
                Now::Secret(s) => EdgeObject::Secret(s),
                Now::Service(s) => EdgeObject::Service(s),
                Now::EndpointSlice(e) => EdgeObject::EndpointSlice(e),
                Now::Network(n) => EdgeObject::Network(n),
                Now::Overlay(o) => EdgeObject::Overlay(o),
                Now::Ingress(i) => EdgeObject::Ingress(i),
            };
            upserts.push(Upsert {
                revision: u.revision,
                object,
            });
        }
        Some(Converted {
            batch: SyncBatch {
                revision: b.revision,
                snapshot: b.snapshot,
                more: b.more,
                upserts,
                deletes: b.deletes,
            },
            withheld,
        })
    }

    impl From<SyncBatch> for crate::messages::SyncBatch {
        /// A batch a v7 edge decoded, in today's shapes (test clients that play a v7 edge).
        fn from(b: SyncBatch) -> Self {
            use crate::messages::EdgeObject as Now;
            Self {
                revision: b.revision,
                snapshot: b.snapshot,
                more: b.more,
                upserts: b
                    .upserts
                    .into_iter()
                    .map(|u| crate::messages::Upsert {
                        revision: u.revision,
                        object: match u.object {
                            EdgeObject::Pod(p) => Now::Pod(p.into()),
                            EdgeObject::ConfigMap(c) => Now::ConfigMap(c),
                            EdgeObject::Secret(s) => Now::Secret(s),
                            EdgeObject::Service(s) => Now::Service(s),
                            EdgeObject::EndpointSlice(e) => Now::EndpointSlice(e),
                            EdgeObject::Network(n) => Now::Network(n),
                            EdgeObject::Overlay(o) => Now::Overlay(o),
                            EdgeObject::Ingress(i) => Now::Ingress(i),
                        },
                    })
                    .collect(),
                deletes: b.deletes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v7;
    use crate::messages::{EdgeObject, ObjectKind, ObjectRef, SyncBatch, Upsert};
    use crate::pod::EdgeInitContainer;
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

    /// What a v7 edgecore's protocol crate (c56968e, the last commit before v8) encodes for
    /// a batch of `sample_pod("web")`: v7's shapes here must stay what a v7 edge decodes, byte
    /// for byte.
    const V7_POD_BATCH: &[&str] = &[
        "0200000007000000000000000000010000000000000002000000000000000000000007000000000000006465",
        "6661756c7403000000000000007765620c0000000000000030623866366331652d7569640100000000000000",
        "0300000000000000617070040000000000000064656d6f010000000000000004000000000000006d61696e0d",
        "0000000000000062757379626f783a6c6f63616c0c0000000000000049664e6f7450726573656e7402000000",
        "0000000007000000000000002f62696e2f736802000000000000002d6301000000000000000a000000000000",
        "00736c65657020333630300000000000000000010000000000000004000000000000004d4f44450000000004",
        "00000000000000656467650100000000000000040000000000000068747470901f0000030000000000000054",
        "4350000000010000000400000000000000000000000000000000000000000000000000000000000000000000",
        "000000001e000000000000000100000000000000070000000000000073637261746368000000000000000000",
        "0000000000000000000000",
    ];

    fn pod_batch(pod: crate::pod::EdgePod) -> SyncBatch {
        SyncBatch {
            revision: 7,
            snapshot: false,
            more: false,
            upserts: vec![Upsert {
                revision: 2,
                object: EdgeObject::Pod(pod),
            }],
            deletes: vec![],
        }
    }

    fn with_init(mut pod: crate::pod::EdgePod) -> crate::pod::EdgePod {
        let mut init = pod.containers[0].clone();
        init.name = "flash".into();
        pod.init_containers = vec![EdgeInitContainer {
            container: init,
            sidecar: false,
        }];
        pod
    }

    #[test]
    fn v7_shapes_are_byte_for_byte_what_a_v7_edgecore_encodes_and_decodes() {
        let golden: Vec<u8> = V7_POD_BATCH
            .concat()
            .as_bytes()
            .chunks(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect();
        let pod = crate::pod::tests::sample_pod("web");
        // What the hub writes to a v7 session.
        let old = v7::batch(pod_batch(pod.clone())).unwrap();
        assert!(old.withheld.is_empty());
        let bytes = crate::codec::encode(&v7::CloudMessage::Sync(old.batch)).unwrap();
        assert_eq!(bytes, golden, "a v7 edge would not decode this batch");
        // What a v7 edge sent or cached reads back with no init containers.
        let back: v7::CloudMessage = crate::codec::decode(&golden).unwrap();
        let v7::CloudMessage::Sync(back) = back else {
            panic!("{back:?}")
        };
        assert_eq!(SyncBatch::from(back), pod_batch(pod.clone()));
        // Today's shape is not v7's: sent as is, a v7 edge could not decode it.
        let now = crate::codec::encode(&crate::messages::CloudMessage::Sync(pod_batch(pod)));
        assert!(crate::codec::decode::<v7::CloudMessage>(&now.unwrap()).is_err());
    }

    #[test]
    fn a_pod_with_init_containers_is_withheld_from_a_v7_edge_and_named() {
        let plain = crate::pod::tests::sample_pod("plain");
        let init = with_init(crate::pod::tests::sample_pod("init"));
        let now = SyncBatch {
            revision: 4,
            snapshot: true,
            more: false,
            upserts: vec![
                Upsert {
                    revision: 2,
                    object: EdgeObject::Pod(init),
                },
                Upsert {
                    revision: 3,
                    object: EdgeObject::Pod(plain.clone()),
                },
            ],
            deletes: vec![],
        };
        let old = v7::batch(now).expect("every kind is v7's");
        assert_eq!(
            old.withheld,
            vec![(
                ObjectRef {
                    kind: ObjectKind::Pod,
                    namespace: "default".into(),
                    name: "init".into(),
                },
                "init_containers"
            )]
        );
        let back = SyncBatch::from(old.batch);
        assert_eq!(back.upserts.len(), 1);
        assert_eq!(back.upserts[0].object, EdgeObject::Pod(plain));
        // The batch still claims its revision: the v7 edge is up to date with what it can run.
        assert_eq!(back.revision, 4);
    }

    #[test]
    fn a_pod_a_v7_edge_would_misname_is_withheld_but_a_statefulsets_is_not() {
        use crate::pod::{HostAlias, PodHosts};
        let with = |hosts: PodHosts| {
            let mut p = crate::pod::tests::sample_pod("web-0");
            p.hosts = Box::new(hosts);
            p
        };
        let sts = with(PodHosts {
            hostname: Some("web-0".into()),
            subdomain: Some("web".into()),
            ..PodHosts::default()
        });
        let indexed = with(PodHosts {
            hostname: Some("sq-3".into()),
            ..PodHosts::default()
        });
        let aliased = with(PodHosts {
            aliases: vec![HostAlias {
                ip: "10.0.0.1".into(),
                hostnames: vec!["a".into()],
            }],
            ..PodHosts::default()
        });
        let fqdn = with(PodHosts {
            subdomain: Some("web".into()),
            hostname_as_fqdn: true,
            ..PodHosts::default()
        });
        assert_eq!(v7::v8_only(&sts), None);
        assert_eq!(v7::v8_only(&indexed), Some("hostname"));
        assert_eq!(v7::v8_only(&aliased), Some("host_aliases"));
        assert_eq!(v7::v8_only(&fqdn), Some("hostname_as_fqdn"));
        let old = v7::batch(pod_batch(sts)).unwrap();
        assert!(old.withheld.is_empty());
        let old = v7::batch(pod_batch(indexed)).unwrap();
        assert_eq!(old.withheld[0].1, "hostname");
        assert!(old.batch.upserts.is_empty());
    }

    #[test]
    fn a_pod_with_a_security_context_is_withheld_from_a_v7_edge() {
        let plain = crate::pod::tests::sample_pod("plain");
        assert_eq!(v7::v8_only(&plain), None);
        let mut user = plain.clone();
        user.containers[0].security = Some(Box::new(crate::security::SecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        }));
        assert_eq!(v7::v8_only(&user), Some("security_context"));
        let mut sysctl = plain.clone();
        sysctl.security = Some(Box::new(crate::security::PodSecurity {
            sysctls: vec![("net.ipv4.tcp_syncookies".into(), "1".into())],
            ..Default::default()
        }));
        assert_eq!(v7::v8_only(&sysctl), Some("security_context"));
        assert_eq!(
            v7::v8_only(&with_init(user.clone())),
            Some("init_containers")
        );
        let old = v7::batch(pod_batch(user)).expect("every kind is v7's");
        assert_eq!(old.withheld.len(), 1);
    }

    #[test]
    fn a_pod_with_a_lifecycle_hook_is_withheld_from_a_v7_edge() {
        let mut hooked = crate::pod::tests::sample_pod("hooked");
        hooked.containers[0].lifecycle.pre_stop =
            Some(crate::pod::LifecycleHandler::Sleep { seconds: 1 });
        let old = v7::batch(pod_batch(hooked)).expect("every kind is v7's");
        assert_eq!(old.withheld.len(), 1, "{old:?}");
        assert_eq!(old.withheld[0].0.name, "hooked");
        assert_eq!(old.withheld[0].1, "lifecycle");
        assert!(old.batch.upserts.is_empty());
    }

    #[test]
    fn a_v7_report_decodes_as_todays_and_keeps_its_version() {
        let bytes = crate::codec::encode(&node_report(v7::VERSION)).unwrap();
        let decoded = status::decode_report(&bytes).unwrap();
        assert_eq!(decoded, node_report(7));
    }

    #[test]
    fn a_v7_pod_report_decodes_in_v7s_shape_with_no_init_containers() {
        let running = status::ContainerState::Running { started_at_ms: 9 };
        let report = v7::StatusReport {
            protocol_version: v7::VERSION,
            seq: 3,
            observed_at_ms: 5,
            body: v7::StatusBody::Pod(v7::PodStatus {
                node: "n1".into(),
                namespace: "default".into(),
                name: "web".into(),
                uid: "u1".into(),
                phase: status::PodPhase::Running,
                conditions: vec![],
                containers: vec![status::ContainerStatus {
                    name: "main".into(),
                    image: "busybox".into(),
                    container_id: "containerd://abc".into(),
                    ready: true,
                    restart_count: 2,
                    state: running.clone(),
                    last_state: None,
                    image_id: "sha256:1".into(),
                }],
                pod_ip: "10.0.0.2".into(),
                host_ip: "192.0.2.1".into(),
                start_time_ms: 7,
                reason: String::new(),
                message: String::new(),
                removed: false,
            }),
        };
        let bytes = crate::codec::encode(&report).unwrap();
        // The shapes differ: today's decoder alone cannot read it.
        assert!(crate::codec::decode::<StatusReport>(&bytes).is_err());
        let decoded = status::decode_report(&bytes).unwrap();
        assert_eq!(decoded.protocol_version, 7);
        let StatusBody::Pod(pod) = decoded.body else {
            panic!("not a pod report: {decoded:?}")
        };
        let c = &pod.containers[0];
        assert_eq!(
            (
                c.container_id.as_str(),
                c.restart_count,
                &c.state,
                c.image_id.as_str()
            ),
            ("containerd://abc", 2, &running, "sha256:1")
        );
        assert!(pod.init_containers.is_empty());
        assert_eq!((pod.pod_ip.as_str(), pod.start_time_ms), ("10.0.0.2", 7));
    }

    #[test]
    fn versions_outside_the_window_are_refused_by_name() {
        for v in [6u32, crate::PROTOCOL_VERSION + 1] {
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
        assert_eq!(crate::OLDEST_EDGE_VERSION, v7::VERSION);
    }

    #[test]
    fn a_v7_edge_knows_every_kind_of_today() {
        for kind in [
            ObjectKind::Pod,
            ObjectKind::ConfigMap,
            ObjectKind::Secret,
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::Network,
            ObjectKind::Overlay,
            ObjectKind::Ingress,
        ] {
            assert!(kind.known_to(v7::VERSION), "{kind:?}");
        }
    }
}
