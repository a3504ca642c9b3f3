//! Serving port-forward streams the hub opens on this node's connection (`kubectl
//! port-forward`): each stream is one TCP connection to a port of a pod, connected by the
//! pod's runtime ([`Runtime::connect_port`]: inside the pod's network namespace for CRI pods,
//! the host's `localhost` for process pods).
//!
//! The edge connects before it answers, so a port nobody listens on is a refusal the cloud
//! writes on the connection's error stream, worded as kubelet words it. Then the bytes are
//! copied both ways, a buffer at a time: a slow pod stops the reads of the stream (whose window
//! then stops the hub), a slow cloud stops the reads of the socket. The hub finishing its side
//! is the client's half-close (the socket's write side is shut down, the pod may still
//! answer); the pod's end finishes this side; a reset either way ends both.

use crate::logs::serve::refuse;
use crate::runtime::Runtime;
use protocol::streams::{LogHeader, LogRefusal, PortForwardRequest};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tracing::{debug, info};

/// Port-forwarded connections carried at once (the hub has the same bound per node).
pub const MAX_PORT_FORWARD_STREAMS: usize = 64;

/// Priority of port-forward data: a bulk copy, below the sync stream (0) and exec (-4).
pub const PORT_FORWARD_PRIORITY: i32 = -8;

/// Serves port-forward streams with one runtime.
#[derive(Clone)]
pub struct PortForwarder {
    runtime: Arc<dyn Runtime>,
    slots: Arc<Semaphore>,
}

impl PortForwarder {
    /// Connects with `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        Self {
            runtime,
            slots: Arc::new(Semaphore::new(MAX_PORT_FORWARD_STREAMS)),
        }
    }

    /// Serves one stream whose request was read.
    pub async fn serve(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        req: PortForwardRequest,
    ) {
        let _ = send.set_priority(PORT_FORWARD_PRIORITY);
        let pod = format!("{}/{}", req.namespace, req.pod);
        let port = req.port;
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let _ = refuse(
                &mut send,
                LogRefusal::Busy,
                format!(
                    "error forwarding port {port} to pod {pod}: the node carries \
                     {MAX_PORT_FORWARD_STREAMS} port-forwarded connections at once; try again"
                ),
            )
            .await;
            return;
        };
        let socket = match self.connect(&req).await {
            Ok(s) => s,
            Err((kind, message)) => {
                debug!(%pod, port, error = %message, "port-forward refused");
                let _ = refuse(&mut send, kind, message).await;
                return;
            }
        };
        if wire::frames::write_frame(&mut send, &LogHeader::Streaming)
            .await
            .is_err()
        {
            return;
        }
        info!(%pod, port, "forwarding a connection for the cloud");
        let (mut from_pod, mut to_pod) = socket.into_split();
        let mut sent_up = None;
        let result = {
            let up = async {
                // The hub's bytes to the pod; its finish is the client's half-close.
                match tokio::io::copy(&mut recv, &mut to_pod).await {
                    Ok(n) => {
                        let _ = to_pod.shutdown().await;
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            };
            let down = async {
                match tokio::io::copy(&mut from_pod, &mut send).await {
                    Ok(n) => {
                        let _ = send.finish();
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            };
            tokio::pin!(up, down);
            loop {
                tokio::select! {
                    r = &mut up, if sent_up.is_none() => match r {
                        Ok(n) => sent_up = Some(n),
                        // The hub reset its side (the client left, the link dropped): stop.
                        Err(e) => break Err(format!("the cloud's side ended: {e}")),
                    },
                    r = &mut down => break r.map_err(|e| format!("the pod's side failed: {e}")),
                }
            }
        };
        match result {
            Ok(down) => {
                debug!(%pod, port, up = ?sent_up, down, "port-forwarded connection ended")
            }
            Err(e) => {
                let _ = send.reset(1u32.into());
                debug!(%pod, port, error = %e, "port-forwarded connection cut");
            }
        }
    }

    async fn connect(
        &self,
        req: &PortForwardRequest,
    ) -> Result<tokio::net::TcpStream, (LogRefusal, String)> {
        let (ns, name, port) = (&req.namespace, &req.pod, req.port);
        let pods = self
            .runtime
            .list_pods()
            .await
            .map_err(|e| (LogRefusal::Internal, e.to_string()))?;
        let sandbox = pods
            .iter()
            .filter(|p| &p.namespace == ns && &p.name == name)
            .find(|p| req.uid.is_empty() || p.sandbox.pod_uid == req.uid)
            .map(|p| p.sandbox.clone())
            .ok_or_else(|| {
                (
                    LogRefusal::NotFound,
                    format!(
                        "error forwarding port {port} to pod {ns}/{name}, uid {}: the pod is \
                         not running on this node",
                        req.uid
                    ),
                )
            })?;
        self.runtime
            .connect_port(&sandbox, port)
            .await
            .map_err(|e| {
                (
                    LogRefusal::BadRequest,
                    format!(
                        "error forwarding port {port} to pod {ns}/{name}, uid {}: {}",
                        req.uid,
                        runtime_message(e)
                    ),
                )
            })
    }
}

fn runtime_message(e: crate::runtime::RuntimeError) -> String {
    match e {
        crate::runtime::RuntimeError::Internal { message, .. } => message,
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pod_this_node_does_not_run_is_refused_by_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let runtime = Arc::new(crate::runtime::process::ProcessRuntime::new(
            tmp.path().to_path_buf(),
            "/nonexistent".into(),
            "127.0.0.1".into(),
        ));
        let forwarder = PortForwarder::new(runtime);
        let req = PortForwardRequest {
            namespace: "default".into(),
            pod: "web".into(),
            uid: "u-1".into(),
            port: 8080,
        };
        let Err((kind, message)) = forwarder.connect(&req).await else {
            panic!("connected to a pod nobody runs");
        };
        assert_eq!(kind, LogRefusal::NotFound);
        assert_eq!(
            message,
            "error forwarding port 8080 to pod default/web, uid u-1: the pod is not running on \
             this node"
        );
    }
}
