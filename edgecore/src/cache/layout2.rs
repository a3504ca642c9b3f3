//! The one shape of cache layout 2 (written by a protocol-v4 edgecore) that differs from
//! today's: its pods had no DNS settings. Kept here, not in `protocol::compat`, because only
//! the cache still reads it: the cloud no longer serves v4 edges, but a node upgraded offline
//! from that version must still restart its pods from what it cached. Its containers are
//! v6's (protocol v7 gave them `stdin`, `stdin_once` and `tty`; see `super::layout3`).

use super::layout3::V6Container as EdgeContainer;
use protocol::pod::{EdgePod, RestartPolicy, Volume};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A pod as layout 2 encoded it, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct V4Pod {
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

impl From<V4Pod> for EdgePod {
    /// The default DNS settings (`ClusterFirst`), which is what the API gave every pod then.
    fn from(p: V4Pod) -> Self {
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
            dns: Default::default(),
            init_containers: Vec::new(),
            hosts: Default::default(),
            annotations: Default::default(),
            security: None,
        }
    }
}

impl From<EdgePod> for V4Pod {
    /// For tests that write a layout-2 cache.
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
        }
    }
}
