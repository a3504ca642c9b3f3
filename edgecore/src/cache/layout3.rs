//! The shapes of cache layout 3 (written by a protocol-v6 edgecore) that differ from today's:
//! its containers had no `stdin`, `stdin_once` and `tty` (nor lifecycle hooks), and its pods no
//! init containers.
//! Kept here, not in `protocol::compat`, because only the cache still reads them: the cloud no
//! longer serves v6 edges (v8 dropped them), but a node upgraded offline from that version
//! must still restart its pods from what it cached. Layout 2's pods (`super::layout2`) have
//! these containers too.

use protocol::pod::{
    ContainerPort, DeviceMapping, EdgeContainer, EdgePod, EnvFromSource, EnvVar, PodDns, Probe,
    Resources, RestartPolicy, Volume, VolumeMount,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A container as protocol v6 encoded it, field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct V6Container {
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
}

impl From<EdgeContainer> for V6Container {
    /// For tests that write an old cache, and for the digest check of `crate::runtime`.
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
        }
    }
}

impl From<V6Container> for EdgeContainer {
    /// A container a v6 edge cached: no stdin, no terminal (all the API accepted then).
    fn from(c: V6Container) -> Self {
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
            stdin: false,
            stdin_once: false,
            tty: false,
            security: None,
            lifecycle: Default::default(),
        }
    }
}

/// A pod as layout 3 encoded it, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct V6Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<V6Container>,
    pub restart_policy: RestartPolicy,
    pub termination_grace_period_seconds: u64,
    pub volumes: Vec<Volume>,
    pub deletion_grace_period_seconds: Option<u64>,
    pub dns: PodDns,
}

impl From<V6Pod> for EdgePod {
    /// No init containers: the API refused them then.
    fn from(p: V6Pod) -> Self {
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
            annotations: Default::default(),
            security: None,
        }
    }
}

impl From<EdgePod> for V6Pod {
    /// For tests that write a layout-3 cache.
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
        }
    }
}
