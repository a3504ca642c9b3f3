//! The compact edge projection of a Kubernetes Pod: what an edge node needs to run it, nothing
//! more. The cloud converts from the full Kubernetes object (see `cloudcore::projection`); the edge
//! never sees managed fields, scheduling constraints or status.

pub use crate::hosts::{HostAlias, PodHosts};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One pod as the edge runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgePod {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod, unique within its namespace.
    pub name: String,
    /// Kubernetes uid: a pod deleted and recreated under the same name gets a new uid, and the
    /// edge treats it as a different pod.
    pub uid: String,
    /// Labels, kept so that local tooling and reports can show them.
    pub labels: BTreeMap<String, String>,
    /// The containers, started in this order.
    pub containers: Vec<EdgeContainer>,
    /// What to do when a container exits.
    pub restart_policy: RestartPolicy,
    /// How long a container gets between SIGTERM and SIGKILL when it is stopped.
    pub termination_grace_period_seconds: u64,
    /// Volumes the containers may mount.
    pub volumes: Vec<Volume>,
    /// Set when the pod is being deleted: the edge stops it (giving each container this many
    /// seconds of grace) and then reports it gone, after which the cloud removes the object.
    pub deletion_grace_period_seconds: Option<u64>,
    /// How the pod's resolver is set up (`dnsPolicy` and `dnsConfig`); the runtime writes the
    /// pod's `resolv.conf` from it and the node's cluster DNS settings, as kubelet does.
    pub dns: PodDns,
    /// `spec.initContainers`, in order (protocol v8): each runs to completion before the next
    /// starts, and the app containers start once all have; a sidecar one
    /// ([`EdgeInitContainer::sidecar`]) is started in its turn and keeps running.
    pub init_containers: Vec<EdgeInitContainer>,
    /// `spec.hostname`, `spec.subdomain`, `spec.setHostnameAsFQDN` and `spec.hostAliases`
    /// (protocol v8): the pod's hostname and the lines of its `/etc/hosts` (boxed: most pods
    /// set none, and the pod is moved around whole).
    pub hosts: Box<PodHosts>,
    /// The pod's annotations that its downward API files and env `fieldRef`s read (protocol
    /// v8), and no others: most pods read none, and `kubectl apply` keeps a whole copy of the
    /// manifest in one, which no edge needs.
    pub annotations: BTreeMap<String, String>,
    /// The pod-wide part of `spec.securityContext` (protocol v8): `fsGroup` for the volumes,
    /// `sysctls` and the sandbox's user; `None` when none is set (boxed: most pods have none).
    /// The containers' effective settings are in [`EdgeContainer::security`].
    pub security: Option<Box<crate::security::PodSecurity>>,
}

/// One init container (protocol v8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInitContainer {
    /// The container, as any other.
    pub container: EdgeContainer,
    /// `restartPolicy: Always` on the init container (Kubernetes 1.29 sidecars): the next init
    /// container starts once it has started (and passed its startup probe), it runs beside
    /// the app containers, restarts whenever it exits, and is stopped after them.
    pub sidecar: bool,
}

impl EdgePod {
    /// `namespace/name`, the form used in logs and the cache.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Every container of the pod, init containers first (in their order), then the app
    /// containers: the edge's one numbering of a pod's containers ([`Self::container_at`]).
    pub fn all_containers(&self) -> impl Iterator<Item = &EdgeContainer> {
        self.init_containers
            .iter()
            .map(|i| &i.container)
            .chain(self.containers.iter())
    }

    /// The container at `index` of [`Self::all_containers`].
    pub fn container_at(&self, index: usize) -> Option<&EdgeContainer> {
        match index.checked_sub(self.init_containers.len()) {
            None => self.init_containers.get(index).map(|i| &i.container),
            Some(app) => self.containers.get(app),
        }
    }

    /// Every ConfigMap and Secret this pod references (env `valueFrom`, `envFrom`, configMap and
    /// secret volumes), in its namespace; optional references included, since the object is used
    /// when it exists. One definition for both ends: the hub sends a node exactly these objects
    /// and the edge keeps exactly these, so the two must never disagree.
    pub fn config_refs(&self) -> std::collections::BTreeSet<crate::messages::ObjectRef> {
        use crate::messages::{ObjectKind, ObjectRef};
        let reference = |kind, name: &str| ObjectRef {
            kind,
            namespace: self.namespace.clone(),
            name: name.to_string(),
        };
        let mut out = std::collections::BTreeSet::new();
        for container in self.all_containers() {
            for var in &container.env {
                match &var.value {
                    EnvValue::ConfigMapKey { name, .. } => {
                        out.insert(reference(ObjectKind::ConfigMap, name));
                    }
                    EnvValue::SecretKey { name, .. } => {
                        out.insert(reference(ObjectKind::Secret, name));
                    }
                    EnvValue::Literal(_) | EnvValue::FieldRef(_) => {}
                }
            }
            for source in &container.env_from {
                match &source.source {
                    EnvFromKind::ConfigMap(name) => {
                        out.insert(reference(ObjectKind::ConfigMap, name));
                    }
                    EnvFromKind::Secret(name) => {
                        out.insert(reference(ObjectKind::Secret, name));
                    }
                }
            }
        }
        for volume in &self.volumes {
            match &volume.source {
                VolumeSource::ConfigMap { name, .. } => {
                    out.insert(reference(ObjectKind::ConfigMap, name));
                }
                VolumeSource::Secret { name, .. } => {
                    out.insert(reference(ObjectKind::Secret, name));
                }
                VolumeSource::Projected { sources, .. } => {
                    for source in sources {
                        match source {
                            ProjectedSource::ConfigMap { name, .. } => {
                                out.insert(reference(ObjectKind::ConfigMap, name));
                            }
                            ProjectedSource::Secret { name, .. } => {
                                out.insert(reference(ObjectKind::Secret, name));
                            }
                            ProjectedSource::DownwardApi { .. } => {}
                        }
                    }
                }
                VolumeSource::EmptyDir { .. }
                | VolumeSource::HostPath { .. }
                | VolumeSource::DownwardApi { .. } => {}
            }
        }
        out
    }

    /// Whether the cloud asked for this pod to be stopped and removed.
    pub fn is_deleting(&self) -> bool {
        self.deletion_grace_period_seconds.is_some()
    }

    /// Whether two versions of a pod need the running containers replaced: anything but labels and
    /// the deletion mark. (Kubernetes allows only image changes on a running pod; the edge honours
    /// whatever arrives by restarting.)
    pub fn same_runtime_spec(&self, other: &EdgePod) -> bool {
        self.uid == other.uid
            && self.containers == other.containers
            && self.init_containers == other.init_containers
            && self.restart_policy == other.restart_policy
            && self.volumes == other.volumes
            && self.hosts == other.hosts
            && self.security == other.security
    }
}

/// A pod's `dnsPolicy` and `dnsConfig`, validated by the cloud as Kubernetes validates them
/// (at most 3 nameservers, each an IP; at most 32 searches of at most 2048 characters in all;
/// `None` has at least one nameserver), so the edge can apply them without checking again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    /// `dnsPolicy`.
    pub policy: DnsPolicy,
    /// `dnsConfig`: merged into what the policy gives (boxed: most pods have none, and the
    /// pod is moved around whole).
    pub config: Option<Box<PodDnsConfig>>,
}

/// Kubernetes `dnsPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsPolicy {
    /// The cluster DNS first, with the cluster's search path and `ndots:5` (the default). A
    /// pod on the host's network gets `Default` instead, as in Kubernetes.
    #[default]
    ClusterFirst,
    /// `ClusterFirst`, even for a pod on the host's network.
    ClusterFirstWithHostNet,
    /// The node's own resolver configuration (its `/etc/resolv.conf`).
    Default,
    /// Only what `dnsConfig` says.
    None,
}

impl DnsPolicy {
    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ClusterFirst" => Some(Self::ClusterFirst),
            "ClusterFirstWithHostNet" => Some(Self::ClusterFirstWithHostNet),
            "Default" => Some(Self::Default),
            "None" => Some(Self::None),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterFirst => "ClusterFirst",
            Self::ClusterFirstWithHostNet => "ClusterFirstWithHostNet",
            Self::Default => "Default",
            Self::None => "None",
        }
    }
}

/// Kubernetes `dnsConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDnsConfig {
    /// Extra nameservers (IP addresses), after the policy's.
    pub nameservers: Vec<String>,
    /// Extra search domains, after the policy's.
    pub searches: Vec<String>,
    /// Resolver options; one of the same name as the policy's replaces it.
    pub options: Vec<DnsOption>,
}

/// One resolver option (`ndots:5` is `{ name: "ndots", value: Some("5") }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsOption {
    /// Name, never empty.
    pub name: String,
    /// Value, if it has one.
    pub value: Option<String>,
}

/// Kubernetes `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    /// Restart a container whenever it exits.
    #[default]
    Always,
    /// Restart a container only when it exits non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Always" => Some(Self::Always),
            "OnFailure" => Some(Self::OnFailure),
            "Never" => Some(Self::Never),
            _ => None,
        }
    }

    /// Whether a container that exited with `exit_code` is to be started again.
    pub fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// One container of an [`EdgePod`]. `Default` is an empty container, for building one field by
/// field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeContainer {
    /// Name, unique within the pod.
    pub name: String,
    /// Image reference (for the `process` runtime it only labels the container).
    pub image: String,
    /// Kubernetes `imagePullPolicy`: `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Entrypoint override (`command`); empty means the image's.
    pub command: Vec<String>,
    /// Arguments (`args`).
    pub args: Vec<String>,
    /// Working directory override; empty means the runtime's default.
    pub working_dir: String,
    /// Environment, in order (later entries may refer to earlier ones in Kubernetes; the edge
    /// applies them in this order).
    pub env: Vec<EnvVar>,
    /// Ports the container listens on.
    pub ports: Vec<ContainerPort>,
    /// CPU and memory requests and limits.
    pub resources: Resources,
    /// Where volumes are mounted.
    pub volume_mounts: Vec<VolumeMount>,
    /// Whole ConfigMaps and Secrets whose keys become environment variables (`envFrom`),
    /// applied before `env`, in order (later sources win, and `env` wins over all of them).
    pub env_from: Vec<EnvFromSource>,
    /// Host devices the container gets (hardware-in-the-loop rigs), from the pod's
    /// `devices.skerry.io/<container>` annotation.
    pub devices: Vec<DeviceMapping>,
    /// Restarts the container when it fails.
    pub liveness_probe: Option<Probe>,
    /// Decides whether the container is Ready (and with all containers, the pod).
    pub readiness_probe: Option<Probe>,
    /// Holds back liveness and readiness probes until it first succeeds.
    pub startup_probe: Option<Probe>,
    /// Kubernetes `stdin`: the runtime keeps the container's standard input open, for
    /// `kubectl attach -i` (protocol v7).
    pub stdin: bool,
    /// Kubernetes `stdinOnce`: the container's stdin is closed when the first attach that
    /// carried input ends (protocol v7).
    pub stdin_once: bool,
    /// Kubernetes `tty`: the container runs on a terminal of its own (protocol v7).
    pub tty: bool,
    /// The container's effective `securityContext`, the pod's merged in (protocol v8); `None`
    /// when nothing is set.
    pub security: Option<Box<crate::security::SecurityContext>>,
    /// `lifecycle`: the postStart and preStop hooks (protocol v8). A v7 edge would not run
    /// them, so a pod with hooks is withheld from it (see `compat::v7`).
    pub lifecycle: Lifecycle,
}

/// A container's lifecycle hooks (Kubernetes `lifecycle`), as kubelet runs them: `post_start`
/// right after the container started (the container counts as started, and is probed, only
/// once it returned; if it fails the container is killed and restarted by the restart policy),
/// `pre_stop` before the container is sent SIGTERM whenever the edge stops it, within the
/// termination grace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// `postStart`.
    pub post_start: Option<LifecycleHandler>,
    /// `preStop`.
    pub pre_stop: Option<LifecycleHandler>,
}

impl Lifecycle {
    /// Whether neither hook is set.
    pub fn is_empty(&self) -> bool {
        self.post_start.is_none() && self.pre_stop.is_none()
    }
}

/// What a lifecycle hook does (Kubernetes `LifecycleHandler`, one of its handlers; `tcpSocket`,
/// which kubelet accepts but never runs, is refused by the cloud). The port is resolved to a
/// number by the cloud, as a probe's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleHandler {
    /// Runs a command in the container (not through a shell); a non-zero exit fails the hook.
    Exec {
        /// The command.
        command: Vec<String>,
    },
    /// Sends an HTTP GET; as kubelet, any response passes (only none fails the hook).
    HttpGet {
        /// Host; empty means the pod IP.
        host: String,
        /// Port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
        /// `HTTP` or `HTTPS` (HTTPS does not verify certificates, as kubelet).
        scheme: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// Waits this long (Kubernetes 1.30 `sleep`), without entering the container.
    Sleep {
        /// Seconds.
        seconds: u64,
    },
}

/// One `envFrom` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvFromSource {
    /// Prefix put before every key.
    pub prefix: String,
    /// Where the keys come from.
    pub source: EnvFromKind,
    /// A missing object is not an error.
    pub optional: bool,
}

/// The object an `envFrom` source reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvFromKind {
    /// Every key of a ConfigMap of the pod's namespace.
    ConfigMap(String),
    /// Every key of a Secret of the pod's namespace.
    Secret(String),
}

/// A host device made available in a container (CRI `Device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    /// Device path on the host, e.g. `/dev/ttyUSB0`.
    pub host_path: String,
    /// Path inside the container (the host path when not given).
    pub container_path: String,
    /// cgroup permissions: a combination of `r`, `w` and `m` (default `rwm`).
    pub permissions: String,
}

/// A Kubernetes probe, with the port already resolved to a number (the cloud resolves named
/// ports against the container's ports when it projects the pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// What the probe does.
    pub action: ProbeAction,
    /// Seconds after the container started before the first probe.
    pub initial_delay_seconds: u32,
    /// Seconds between probes (Kubernetes default 10).
    pub period_seconds: u32,
    /// Seconds after which one attempt counts as failed (default 1).
    pub timeout_seconds: u32,
    /// Consecutive successes after a failure to count as passing (default 1; must be 1 for
    /// liveness and startup probes).
    pub success_threshold: u32,
    /// Consecutive failures to count as failing (default 3).
    pub failure_threshold: u32,
    /// Grace for the kill after a failed liveness or startup probe, overriding the pod's.
    pub termination_grace_period_seconds: Option<u64>,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    /// Runs a command in the container; exit code 0 passes.
    Exec {
        /// The command (not run through a shell).
        command: Vec<String>,
    },
    /// Opens a TCP connection; connecting passes.
    TcpSocket {
        /// Host; empty means the pod IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// Sends an HTTP GET; a status from 200 to 399 passes.
    HttpGet {
        /// Host; empty means the pod IP.
        host: String,
        /// Port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
        /// `HTTP` or `HTTPS` (HTTPS does not verify certificates, as kubelet).
        scheme: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
}

/// An environment variable and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// The value's source.
    pub value: EnvValue,
}

/// Source of an environment variable's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvValue {
    /// A literal value.
    Literal(String),
    /// A key of a ConfigMap in the pod's namespace.
    ConfigMapKey {
        /// ConfigMap name.
        name: String,
        /// Key within it.
        key: String,
        /// If true, a missing map or key leaves the variable unset instead of failing the pod.
        optional: bool,
    },
    /// A key of a Secret in the pod's namespace.
    SecretKey {
        /// Secret name.
        name: String,
        /// Key within it.
        key: String,
        /// If true, a missing secret or key leaves the variable unset.
        optional: bool,
    },
    /// A field of the pod itself (`metadata.name`, `metadata.namespace`, `metadata.uid`,
    /// `spec.nodeName`, `status.podIP`, `status.hostIP`).
    FieldRef(String),
}

/// A port a container exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// Optional port name.
    pub name: String,
    /// Port inside the container.
    pub container_port: u16,
    /// Port on the host, 0 for none.
    pub host_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Resource requests and limits, in the units the runtimes need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU request in millicores.
    pub cpu_request_millis: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// Memory request in bytes.
    pub memory_request_bytes: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
}

/// Where a volume appears inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// Name of the pod volume.
    pub name: String,
    /// Path inside the container.
    pub mount_path: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Path within the volume to mount instead of its root.
    pub sub_path: String,
}

/// A pod volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Name referenced by mounts.
    pub name: String,
    /// What backs it.
    pub source: VolumeSource,
}

/// The kinds of volume the edge supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// A scratch directory that lives as long as the pod.
    EmptyDir {
        /// Backed by memory (tmpfs) instead of disk.
        memory: bool,
        /// Size limit in bytes, if any.
        size_limit_bytes: Option<u64>,
    },
    /// A path on the host.
    HostPath {
        /// Host path.
        path: String,
        /// Kubernetes `type` (`Directory`, `DirectoryOrCreate`, `File`, ...), empty for no check.
        kind: String,
    },
    /// Files from a ConfigMap's keys.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Selected keys and their file paths; empty means every key under its own name.
        items: Vec<KeyToPath>,
        /// File mode, default 0644.
        default_mode: Option<u32>,
        /// A missing map is not an error.
        optional: bool,
    },
    /// Files from a Secret's keys.
    Secret {
        /// Secret name.
        name: String,
        /// Selected keys and their file paths; empty means every key under its own name.
        items: Vec<KeyToPath>,
        /// File mode, default 0644 as in Kubernetes (0600 is set by the edge where documented).
        default_mode: Option<u32>,
        /// A missing secret is not an error.
        optional: bool,
    },
    /// Files holding fields of the pod itself (protocol v8), rewritten when its labels or
    /// annotations change.
    DownwardApi {
        /// The files.
        items: Vec<DownwardFile>,
        /// File mode, default 0644.
        default_mode: Option<u32>,
    },
    /// ConfigMap, Secret and downward API files in one directory (protocol v8), in the order
    /// of the sources (a later file of the same path replaces an earlier one, as kubelet).
    Projected {
        /// The sources.
        sources: Vec<ProjectedSource>,
        /// File mode, default 0644.
        default_mode: Option<u32>,
    },
}

impl VolumeSource {
    /// Whether the edge writes the volume's files itself (ConfigMap, Secret, downward API and
    /// projected volumes): they are read-only in the containers and rewritten atomically when
    /// what they hold changes.
    pub fn is_payload(&self) -> bool {
        !matches!(self, Self::EmptyDir { .. } | Self::HostPath { .. })
    }
}

/// One file of a downward API volume or projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownwardFile {
    /// Relative file path in the volume.
    pub path: String,
    /// What it holds.
    pub field: crate::downward::PodField,
    /// File mode for this file.
    pub mode: Option<u32>,
}

/// One source of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectedSource {
    /// Keys of a ConfigMap.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Selected keys and their file paths; empty means every key under its own name.
        items: Vec<KeyToPath>,
        /// A missing map is not an error.
        optional: bool,
    },
    /// Keys of a Secret.
    Secret {
        /// Secret name.
        name: String,
        /// Selected keys and their file paths; empty means every key under its own name.
        items: Vec<KeyToPath>,
        /// A missing secret is not an error.
        optional: bool,
    },
    /// Fields of the pod.
    DownwardApi {
        /// The files.
        items: Vec<DownwardFile>,
    },
}

/// One projected key of a ConfigMap or Secret volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyToPath {
    /// Key in the object.
    pub key: String,
    /// Relative file path in the volume.
    pub path: String,
    /// File mode for this item.
    pub mode: Option<u32>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small but complete pod, shared by the codec tests.
    pub(crate) fn sample_pod(name: &str) -> EdgePod {
        EdgePod {
            namespace: "default".into(),
            name: name.into(),
            uid: "0b8f6c1e-uid".into(),
            labels: BTreeMap::from([("app".into(), "demo".into())]),
            containers: vec![EdgeContainer {
                name: "main".into(),
                image: "busybox:local".into(),
                image_pull_policy: "IfNotPresent".into(),
                command: vec!["/bin/sh".into(), "-c".into()],
                args: vec!["sleep 3600".into()],
                working_dir: String::new(),
                env: vec![EnvVar {
                    name: "MODE".into(),
                    value: EnvValue::Literal("edge".into()),
                }],
                ports: vec![ContainerPort {
                    name: "http".into(),
                    container_port: 8080,
                    host_port: 0,
                    protocol: "TCP".into(),
                }],
                resources: Resources {
                    memory_limit_bytes: Some(64 << 20),
                    ..Resources::default()
                },
                volume_mounts: vec![],
                ..EdgeContainer::default()
            }],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            volumes: vec![Volume {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            }],
            deletion_grace_period_seconds: None,
            dns: PodDns::default(),
            init_containers: vec![],
            hosts: Default::default(),
            annotations: BTreeMap::new(),
            security: None,
        }
    }

    #[test]
    fn restart_policy_semantics_match_kubernetes() {
        assert!(RestartPolicy::Always.restarts_after(0));
        assert!(!RestartPolicy::OnFailure.restarts_after(0));
        assert!(RestartPolicy::OnFailure.restarts_after(2));
        assert!(!RestartPolicy::Never.restarts_after(1));
        assert_eq!(RestartPolicy::parse("Sometimes"), None);
    }

    #[test]
    fn labels_and_deletion_do_not_change_the_runtime_spec() {
        let a = sample_pod("a");
        let mut b = a.clone();
        b.labels.insert("x".into(), "y".into());
        b.deletion_grace_period_seconds = Some(5);
        assert!(a.same_runtime_spec(&b));
        b.containers[0].image = "other".into();
        assert!(!a.same_runtime_spec(&b));
    }
}
