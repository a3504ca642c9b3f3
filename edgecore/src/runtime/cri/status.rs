//! Reading what containerd runs: this edgecore's sandboxes and containers by label, their
//! statuses (a missing one is `None`, not an error), and a container's state as the pod machine
//! sees it. Every listing filters on the instance label, so other owners' pods are never seen.

use super::spec::{LABEL_CONTAINER_NAME, LABEL_DIGEST, LABEL_INSTANCE, LABEL_POD_UID};
use super::{spec, CriRuntime};
use crate::runtime::{ContainerInfo, ContainerRunState, RuntimeError};
use k8s_cri::v1 as cri;
use std::collections::HashMap;
use std::time::Duration;

impl CriRuntime {
    /// This instance's sandboxes, of one pod if `uid` is given.
    pub(super) async fn sandboxes(
        &self,
        op: &str,
        uid: Option<&str>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let mut labels = HashMap::from([(LABEL_INSTANCE.to_string(), self.instance.clone())]);
        if let Some(uid) = uid {
            labels.insert(LABEL_POD_UID.to_string(), uid.to_string());
        }
        let request = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels,
                ..Default::default()
            }),
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.list_pod_sandbox(request).await }
            })
            .await
            .map_err(|e| self.internal(op, "ListPodSandbox", &e))?;
        Ok(response.items)
    }

    /// This instance's containers matching `labels` (besides the instance label), in the
    /// sandbox `sandbox_id` if given.
    pub(super) async fn containers(
        &self,
        op: &str,
        sandbox_id: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        let mut selector = HashMap::from([(LABEL_INSTANCE.to_string(), self.instance.clone())]);
        for (k, v) in labels {
            selector.insert(k.to_string(), v.to_string());
        }
        let request = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sandbox_id.unwrap_or_default().to_string(),
                label_selector: selector,
                ..Default::default()
            }),
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.list_containers(request).await }
            })
            .await
            .map_err(|e| self.internal(op, "ListContainers", &e))?;
        Ok(response.containers)
    }

    /// Runs an idempotent read RPC (`rpc` names it in errors); `None` when containerd answers
    /// that the object does not exist.
    pub(super) async fn read_optional<R, F, Fut>(
        &self,
        op: &str,
        rpc: &str,
        call: F,
    ) -> Result<Option<R>, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        match self.conn.call(self.conn.timeout, true, call).await {
            Ok(response) => Ok(Some(response)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.internal(op, rpc, &e)),
        }
    }

    /// A sandbox's status; `None` if it does not exist.
    pub(super) async fn sandbox_status(
        &self,
        op: &str,
        id: &str,
    ) -> Result<Option<cri::PodSandboxStatus>, RuntimeError> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        let response = self
            .read_optional(op, "PodSandboxStatus", || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.pod_sandbox_status(request).await }
            })
            .await?;
        Ok(response.and_then(|r| r.status))
    }

    /// A container's status; `None` if it does not exist.
    pub(super) async fn container_status(
        &self,
        op: &str,
        id: &str,
    ) -> Result<Option<cri::ContainerStatus>, RuntimeError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let response = self
            .read_optional(op, "ContainerStatus", || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.container_status(request).await }
            })
            .await?;
        Ok(response.and_then(|r| r.status))
    }

    /// A [`ContainerInfo`] of a listed or created container.
    pub(super) fn info(
        id: &str,
        metadata: Option<&cri::ContainerMetadata>,
        labels: &HashMap<String, String>,
        image_ref: &str,
        state: ContainerRunState,
    ) -> ContainerInfo {
        ContainerInfo {
            image_id: (!image_ref.is_empty()).then(|| image_ref.to_string()),
            id: id.to_string(),
            name: metadata
                .map(|m| m.name.clone())
                .or_else(|| labels.get(LABEL_CONTAINER_NAME).cloned())
                .unwrap_or_default(),
            attempt: metadata.map(|m| m.attempt).unwrap_or(0),
            state,
            spec_digest: labels.get(LABEL_DIGEST).cloned(),
            image_pull: None,
        }
    }

    /// The state of a container, `Unknown` when containerd no longer knows it, or when it was
    /// created long ago and never started (edgecore stopped between creating and starting it:
    /// nobody will start it, and the pod worker must not wait for it forever).
    pub(super) async fn observe(
        &self,
        op: &str,
        id: &str,
    ) -> Result<ContainerRunState, RuntimeError> {
        Ok(match self.container_status(op, id).await? {
            Some(status) => match spec::run_state(&status) {
                ContainerRunState::Created if stale_created(status.created_at) => {
                    ContainerRunState::Unknown {
                        message: format!(
                            "container {id} was created {}s ago and never started (edgecore \
                             stopped while starting it)",
                            STALE_CREATED_AFTER.as_secs()
                        ),
                        started_at_ms: None,
                    }
                }
                state => state,
            },
            None => ContainerRunState::Unknown {
                message: format!(
                    "container {id} no longer exists in containerd at {}",
                    self.conn.socket().display()
                ),
                started_at_ms: None,
            },
        })
    }
}

/// How long a container may stay created-but-not-started before it is reported `Unknown`
/// (the process runtime's rule too).
pub(super) const STALE_CREATED_AFTER: Duration = Duration::from_secs(60);

/// Whether a container created at `created_at_ns` (CRI nanoseconds) has waited too long for its
/// start.
pub(super) fn stale_created(created_at_ns: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let created = u128::try_from(created_at_ns).unwrap_or(0);
    created > 0 && now.saturating_sub(created) > STALE_CREATED_AFTER.as_nanos()
}
