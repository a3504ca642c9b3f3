//! Status payloads published by the edge over MQTT.
//!
//! Every report carries a per-object sequence number that only grows (the edge persists its
//! counter), so the cloud can drop a report that is older than what it already applied: MQTT
//! QoS 1 may deliver twice, and an outbox replay after a crash may resend.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

/// Node status: sent periodically as the heartbeat, and on change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Whether the node can run pods.
    pub ready: bool,
    /// Why not, when not ready.
    pub message: String,
    /// `(type, address)` pairs, e.g. `("InternalIP", "10.0.0.5")`, `("Hostname", "rig-7")`.
    pub addresses: Vec<(String, String)>,
    /// Capacity, in Kubernetes quantity strings (`cpu`, `memory`, `pods`).
    pub capacity: BTreeMap<String, String>,
    /// Allocatable resources, same format.
    pub allocatable: BTreeMap<String, String>,
    /// Facts about the machine and agent.
    pub info: NodeInfo,
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
}
