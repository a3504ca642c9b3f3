//! Commands run in a pod's container: `kubectl exec` and `kubectl cp` through the cloud (see
//! [`serve`]) and the offline `edgecore exec` on the node itself ([`local`]). Both find the
//! container the same way ([`find_running`]) and start the command through the runtime's
//! [`Runtime::exec`], so what runs is the same whichever way it was asked for.

pub mod attach;
pub mod local;
pub mod serve;

use crate::runtime::{ContainerRunState, Runtime, RuntimeError, Sandbox};
use protocol::streams::LogRefusal;

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No such pod or container here.
    #[error("{0}")]
    NotFound(String),
    /// The container is not running.
    #[error("{0}")]
    NotRunning(String),
    /// The runtime failed (listing pods, or starting the command).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl ExecError {
    /// The refusal the cloud maps to a `Status`.
    pub fn refusal(&self) -> LogRefusal {
        match self {
            ExecError::NotFound(_) => LogRefusal::NotFound,
            ExecError::NotRunning(_) | ExecError::Runtime(RuntimeError::CreateContainer { .. }) => {
                LogRefusal::BadRequest
            }
            ExecError::Runtime(_) => LogRefusal::Internal,
        }
    }
}

/// The running instance of `container` in pod `namespace/pod` (with `uid`, unless empty): its
/// sandbox and runtime id. Worded as kubelet words these refusals.
pub async fn find_running(
    runtime: &dyn Runtime,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
) -> Result<(Sandbox, String), ExecError> {
    let pods = runtime.list_pods().await?;
    let found = pods
        .iter()
        .filter(|p| p.namespace == namespace && p.name == pod)
        .find(|p| uid.is_empty() || p.sandbox.pod_uid == uid)
        .ok_or_else(|| {
            ExecError::NotFound(format!(
                "pod \"{namespace}/{pod}\" is not running on this node"
            ))
        })?;
    let instance = found
        .containers
        .iter()
        .filter(|c| c.name == container)
        .max_by_key(|c| c.attempt)
        .ok_or_else(|| {
            ExecError::NotFound(format!(
                "container \"{container}\" not found in pod \"{namespace}/{pod}\""
            ))
        })?;
    match instance.state {
        ContainerRunState::Running { .. } => Ok((found.sandbox.clone(), instance.id.clone())),
        _ => Err(ExecError::NotRunning(format!(
            "container \"{container}\" in pod \"{namespace}/{pod}\" is not running; a command \
             runs only beside a running container"
        ))),
    }
}
