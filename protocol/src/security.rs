//! A pod's `securityContext` and its containers', resolved by the cloud (protocol v8).
//!
//! Kubernetes splits security settings between the pod (`spec.securityContext`) and each
//! container, where a container's `runAsUser`, `runAsGroup`, `runAsNonRoot`, `seccompProfile`
//! and `appArmorProfile` override the pod's, and the pod's `supplementalGroups` and `fsGroup`
//! are added to every container's groups. The cloud does that merge once
//! (`cloudcore::projection`), so the edge applies one [`SecurityContext`] per container and one
//! [`PodSecurity`] for the sandbox and the volumes without knowing the rules. Both are `None`
//! on the wire when nothing is set (most pods), which is also what a v7 edge can run: a pod
//! with either set is withheld from it (`compat::v7::v8_only`).

use serde::{Deserialize, Serialize};

/// What one container runs as and with, the pod's settings merged in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// `runAsUser` (the container's, else the pod's); `None`: the image's user.
    pub run_as_user: Option<i64>,
    /// `runAsGroup` (the container's, else the pod's); `None`: the image's group.
    pub run_as_group: Option<i64>,
    /// `runAsNonRoot` (the container's, else the pod's): the edge refuses to start the
    /// container if it would run as uid 0 (`CreateContainerConfigError`, as kubelet).
    pub run_as_non_root: bool,
    /// The pod's `supplementalGroups`, then its `fsGroup`: extra groups of the process.
    pub supplemental_groups: Vec<i64>,
    /// `privileged`.
    pub privileged: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root_filesystem: bool,
    /// `allowPrivilegeEscalation: false`: the process runs with `no_new_privs`.
    pub no_new_privs: bool,
    /// `capabilities.add`, as given (`NET_ADMIN`, `ALL`).
    pub capabilities_add: Vec<String>,
    /// `capabilities.drop`, as given.
    pub capabilities_drop: Vec<String>,
    /// `seccompProfile` (the container's, else the pod's); `None`: not set, which is
    /// unconfined, as kubelet's default.
    pub seccomp: Option<SecurityProfile>,
    /// `appArmorProfile` (the container's, else the pod's); the API admits only `Unconfined`.
    pub app_armor: Option<SecurityProfile>,
}

/// A seccomp or AppArmor profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProfile {
    /// The runtime's default profile.
    RuntimeDefault,
    /// No profile.
    Unconfined,
    /// A profile on the node: for seccomp, a file relative to the edge's seccomp directory
    /// (`<data-dir>/seccomp`, as kubelet's `<root-dir>/seccomp`).
    Localhost(String),
}

/// The pod-wide part: what the sandbox and the volumes need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    /// `fsGroup`: emptyDir, configMap and secret volumes are given this group (setgid
    /// directories, group read and write), and every container has it as a supplemental group.
    pub fs_group: Option<i64>,
    /// `fsGroupChangePolicy: OnRootMismatch`: the ownership is changed only when the volume's
    /// root does not already have it (`false`: `Always`, each time the volume is set up).
    pub fs_group_on_root_mismatch: bool,
    /// `sysctls`, in order, each one the API admitted (namespaced and safe).
    pub sysctls: Vec<(String, String)>,
    /// The pod's own `runAsUser` (the sandbox runs as it).
    pub run_as_user: Option<i64>,
    /// The pod's own `runAsGroup`.
    pub run_as_group: Option<i64>,
    /// The pod's `supplementalGroups`, then its `fsGroup`.
    pub supplemental_groups: Vec<i64>,
    /// The pod's own `seccompProfile`.
    pub seccomp: Option<SecurityProfile>,
}
