//! [`Runtime::connect_port`](crate::runtime::Runtime::connect_port) for the CRI runtime: the
//! sandbox's network namespace is its pause task's (`/proc/PID/ns/net`, the task containerd
//! runs under the sandbox's id in the CRI plugin's namespace), entered as in
//! [`crate::runtime::port`].

use super::CriRuntime;
use crate::runtime::{RuntimeError, Sandbox};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::GetRequest;

impl CriRuntime {
    pub(super) async fn connect_in_sandbox(
        &self,
        sandbox: &Sandbox,
        port: u16,
    ) -> Result<tokio::net::TcpStream, RuntimeError> {
        let failed = |message: String| RuntimeError::Internal {
            op: "port-forward".into(),
            message,
        };
        let mut tasks = TasksClient::new(self.conn.channel());
        let task = tasks
            .get(super::exec::request(
                GetRequest {
                    container_id: sandbox.id.clone(),
                    exec_id: String::new(),
                },
                Some(self.conn.timeout),
            ))
            .await
            .map_err(|e| {
                failed(format!(
                    "the pod's sandbox {} has no running task in containerd: {}",
                    sandbox.id,
                    e.message()
                ))
            })?;
        let pid = task
            .into_inner()
            .process
            .map(|p| p.pid)
            .filter(|pid| *pid > 0)
            .ok_or_else(|| failed(format!("the pod's sandbox {} is not running", sandbox.id)))?;
        let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
        crate::runtime::port::connect_localhost(Some(netns), port)
            .await
            .map_err(failed)
    }
}
