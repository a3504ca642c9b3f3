//! Status payloads published by the edge over MQTT.
//!
//! Every report carries a per-object sequence number that only grows (the edge persists its
//! counter), so the cloud can drop a report that is older than what it already applied: MQTT
//! QoS 1 may deliver twice, and an outbox replay after a crash may resend.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Length of a node's report key.
pub const REPORT_KEY_LEN: usize = 32;

/// The MQTT payload: an encoded [`StatusReport`] and its HMAC-SHA256 under the node's report
/// key, computed over the topic and the report bytes.
///
/// Why a MAC and not only broker authentication: MQTT does not tell a subscriber who published a
/// message, and brokers differ in how (and whether) they restrict topics per client. With the
/// MAC the cloud itself checks that a report on `skerry/v1/nodes/X/...` was made by node X,
/// whatever broker carries it; binding the topic stops a report being replayed under another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedReport {
    /// The encoded [`StatusReport`].
    pub report: Vec<u8>,
    /// HMAC-SHA256(key, topic || 0x00 || report).
    pub mac: Vec<u8>,
}

/// Why a sealed payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The payload or the report inside is not a valid encoding.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// The MAC does not match: not made by the node the topic names, or altered.
    #[error("report is not authenticated by the node its topic names (bad MAC); it is forged, altered, or the node's key changed after a new join")]
    BadMac,
    /// The report is of a protocol version this side cannot read.
    #[error("report of protocol v{edge}; this cloud reads v{oldest} and v{cloud}: upgrade the edge", oldest = crate::OLDEST_EDGE_VERSION, cloud = crate::PROTOCOL_VERSION)]
    UnsupportedVersion {
        /// The version the report claims.
        edge: u32,
    },
}

fn mac_key(key: &[u8]) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)
}

fn mac_input(topic: &str, report: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(topic.len() + 1 + report.len());
    input.extend_from_slice(topic.as_bytes());
    input.push(0);
    input.extend_from_slice(report);
    input
}

/// Encodes and authenticates a report for publication on `topic`.
pub fn seal(
    key: &[u8],
    topic: &str,
    report: &StatusReport,
) -> Result<Vec<u8>, crate::codec::CodecError> {
    seal_encoded(key, topic, crate::codec::encode(report)?)
}

/// Authenticates an already encoded report (of any version: [`crate::compat`]'s shapes too).
pub fn seal_encoded(
    key: &[u8],
    topic: &str,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, crate::codec::CodecError> {
    let mac = ring::hmac::sign(&mac_key(key), &mac_input(topic, &bytes))
        .as_ref()
        .to_vec();
    crate::codec::encode(&SealedReport { report: bytes, mac })
}

/// Checks and decodes a payload received on `topic`, with the key of the node the topic names.
pub fn open(key: &[u8], topic: &str, payload: &[u8]) -> Result<StatusReport, SealError> {
    let sealed: SealedReport = crate::codec::decode(payload)?;
    ring::hmac::verify(
        &mac_key(key),
        &mac_input(topic, &sealed.report),
        &sealed.mac,
    )
    .map_err(|_| SealError::BadMac)?;
    decode_report(&sealed.report)
}

/// Decodes a report of this version or of the previous one ([`crate::compat`]), by the
/// version it starts with (a little-endian `u32`, the first field of every version's
/// [`StatusReport`]). The result keeps the sender's `protocol_version`, so the receiver can
/// tell an old edge apart.
pub fn decode_report(bytes: &[u8]) -> Result<StatusReport, SealError> {
    let version = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match version {
        Some(crate::PROTOCOL_VERSION) | None => Ok(crate::codec::decode(bytes)?),
        // v7 reports have v7's pod statuses, without init containers (`crate::compat`).
        Some(crate::compat::v7::VERSION) => {
            Ok(crate::codec::decode::<crate::compat::v7::StatusReport>(bytes)?.into())
        }
        Some(edge) => Err(SealError::UnsupportedVersion { edge }),
    }
}

/// The MQTT client id of a node: the embedded broker only accepts this id for that node's
/// login, so one node cannot take over another's session.
pub fn mqtt_client_id(node: &str) -> String {
    format!("skerry-edge-{node}")
}

/// Envelope of every MQTT status payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The sender's [`crate::PROTOCOL_VERSION`]; a report of another version is ignored.
    pub protocol_version: u32,
    /// Monotonic per sending node, across restarts.
    pub seq: u64,
    /// When the edge observed this state, in milliseconds since the Unix epoch.
    pub observed_at_ms: u64,
    /// What is reported.
    pub body: StatusBody,
}

/// The content of a status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusBody {
    /// Node heartbeat and facts.
    Node(NodeStatus),
    /// A pod's status.
    Pod(PodStatus),
    /// A pod's event series (since v7; on `topics::pod_events`). Last, so that the variants
    /// before it kept their positions for v6 decoders.
    Events(crate::events::PodEvents),
}

/// Node status: sent periodically as the heartbeat, and on change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// What the edge measured, one entry per [`NodeConditionKind`] it checks (`Ready`
    /// always). A kind left out is one the edge did not check.
    pub conditions: Vec<NodeCondition>,
    /// `(type, address)` pairs, e.g. `("InternalIP", "10.0.0.5")`, `("Hostname", "rig-7")`.
    pub addresses: Vec<(String, String)>,
    /// Capacity, in Kubernetes quantity strings (`cpu`, `memory`, `pods`).
    pub capacity: BTreeMap<String, String>,
    /// Allocatable resources, same format.
    pub allocatable: BTreeMap<String, String>,
    /// Facts about the machine and agent.
    pub info: NodeInfo,
}

impl NodeStatus {
    /// Whether the node reports `Ready` (and not `False` or missing).
    pub fn is_ready(&self) -> bool {
        self.condition(NodeConditionKind::Ready)
            .is_some_and(|c| c.status)
    }

    /// The reported condition of `kind`, if any.
    pub fn condition(&self, kind: NodeConditionKind) -> Option<&NodeCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

/// The node conditions an edge measures, as kubelet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeConditionKind {
    /// The node can run pods: the runtime answers and the cache can be written.
    Ready,
    /// Available memory is below the eviction threshold.
    MemoryPressure,
    /// The data directory's or the image filesystem's free space or inodes are below the
    /// threshold.
    DiskPressure,
    /// Free process ids are below the threshold.
    PIDPressure,
    /// Pod networking is not configured (no CNI network).
    NetworkUnavailable,
}

impl NodeConditionKind {
    /// The Kubernetes spelling of the condition type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::MemoryPressure => "MemoryPressure",
            Self::DiskPressure => "DiskPressure",
            Self::PIDPressure => "PIDPressure",
            Self::NetworkUnavailable => "NetworkUnavailable",
        }
    }
}

/// One measured node condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCondition {
    /// Which condition.
    pub kind: NodeConditionKind,
    /// True or false (`Ready=True` is healthy; for the others `False` is).
    pub status: bool,
    /// Machine-readable reason (`KubeletReady`, `RuntimeNotResponding`, ...).
    pub reason: String,
    /// What was measured, for a person.
    pub message: String,
}

impl NodeCondition {
    /// A condition of `kind`.
    pub fn new(kind: NodeConditionKind, status: bool, reason: &str, message: &str) -> Self {
        Self {
            kind,
            status,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// Static facts about an edge node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `linux`.
    pub operating_system: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// Kernel release.
    pub kernel_version: String,
    /// OS image description.
    pub os_image: String,
    /// `skerry-edgecore/<version>`.
    pub agent_version: String,
    /// Runtime in use, e.g. `process://` or `containerd://1.6.20`.
    pub container_runtime_version: String,
}

/// Pod phase, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, not all containers started.
    Pending,
    /// Bound and at least one container is running or restarting.
    Running,
    /// All containers terminated successfully and will not restart.
    Succeeded,
    /// All containers terminated and at least one failed, with no restart.
    Failed,
    /// State unknown.
    Unknown,
}

impl PodPhase {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }
}

/// A pod condition (`Initialized`, `ContainersReady`, `Ready`, `PodScheduled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCondition {
    /// Condition type.
    pub kind: String,
    /// True or false.
    pub status: bool,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// When the status last changed, ms since the epoch.
    pub last_transition_ms: u64,
}

/// State of one container, as in Kubernetes' `ContainerState`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Not running yet (or between restarts).
    Waiting {
        /// e.g. `ContainerCreating`, `CrashLoopBackOff`, `ErrImagePull`.
        reason: String,
        /// Details.
        message: String,
    },
    /// Running since `started_at_ms`.
    Running {
        /// Start time, ms since the epoch.
        started_at_ms: u64,
    },
    /// Exited.
    Terminated {
        /// Exit code (128 + signal when killed by a signal).
        exit_code: i32,
        /// Signal number, if killed by one.
        signal: Option<i32>,
        /// `Completed`, `Error`, `OOMKilled`, ...
        reason: String,
        /// Details.
        message: String,
        /// Start time, ms since the epoch.
        started_at_ms: u64,
        /// End time, ms since the epoch.
        finished_at_ms: u64,
    },
}

/// Status of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// Image as specified.
    pub image: String,
    /// Runtime's id for the running instance, `process://<pid>` or a CRI id.
    pub container_id: String,
    /// Whether it passes readiness.
    pub ready: bool,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// Current state.
    pub state: ContainerState,
    /// Previous state, after a restart.
    pub last_state: Option<ContainerState>,
    /// The image the instance runs, as its runtime names it (kubelet's `imageID`: CRI's
    /// `imageRef`, a digest); empty before an instance was created, and for the process
    /// runtime, which has no images. Since v7 (last, as v6's fields keep their places).
    pub image_id: String,
}

/// A pod's status, or the notice that the edge has removed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// Node reporting it.
    pub node: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid; a report for another uid than the stored pod's is ignored.
    pub uid: String,
    /// Phase.
    pub phase: PodPhase,
    /// Conditions.
    pub conditions: Vec<PodCondition>,
    /// Per container.
    pub containers: Vec<ContainerStatus>,
    /// The pod's IP (the host's for the process runtime).
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// When the edge started working on the pod, ms since the epoch.
    pub start_time_ms: u64,
    /// Short reason for the phase, e.g. `Evicted`.
    pub reason: String,
    /// Details.
    pub message: String,
    /// True once the edge has stopped everything of a pod that is being deleted: the cloud may
    /// now remove the object.
    pub removed: bool,
    /// Per init container, in their order (`initContainerStatuses`; since v8, last so that
    /// v7's fields keep their places).
    pub init_containers: Vec<ContainerStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            protocol_version: crate::PROTOCOL_VERSION,
            seq: 7,
            observed_at_ms: 1,
            body: StatusBody::Node(NodeStatus {
                node: "n1".into(),
                conditions: vec![NodeCondition::new(
                    NodeConditionKind::Ready,
                    true,
                    "KubeletReady",
                    "",
                )],
                addresses: vec![],
                capacity: BTreeMap::new(),
                allocatable: BTreeMap::new(),
                info: NodeInfo::default(),
            }),
        }
    }

    #[test]
    fn sealed_reports_open_only_with_the_right_key_and_topic() {
        let key = [7u8; REPORT_KEY_LEN];
        let topic = crate::topics::node_status("n1");
        let payload = seal(&key, &topic, &report()).unwrap();
        assert_eq!(open(&key, &topic, &payload), Ok(report()));
        assert_eq!(
            open(&[8u8; REPORT_KEY_LEN], &topic, &payload),
            Err(SealError::BadMac)
        );
        assert_eq!(
            open(&key, &crate::topics::node_status("n2"), &payload),
            Err(SealError::BadMac)
        );
        let mut altered = payload.clone();
        let last = altered.len() - 40;
        altered[last] ^= 1;
        assert!(open(&key, &topic, &altered).is_err());
        assert!(matches!(
            open(&key, &topic, b"garbage"),
            Err(SealError::Codec(_))
        ));
    }
}
