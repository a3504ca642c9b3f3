//! [`Runtime::attach`](crate::runtime::Runtime::attach) for the CRI runtime: CRI's `Attach`,
//! then the URL it answers on containerd's streaming server, as kubelet proxies it.
//!
//! Unlike exec, nothing of containerd's task API can join a running container's streams: the
//! CRI plugin owns the FIFOs of a container created with `stdin`/`tty` and copies its output to
//! the log and to every attached client. So this is the streaming server's own protocol, over
//! a WebSocket (`v4.channel.k8s.io`, the newest containerd 1.6/1.7 serve): each binary message
//! is one channel byte and its data (0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 4
//! resizes as `{"Width":..,"Height":..}`).
//!
//! v4 has no way to close stdin alone, and the CRI plugin holds its own writer of the
//! container's stdin FIFO (so the task API's `CloseIO` does not reach the container either):
//! the client's closing its stdin (v5) is dropped here, and the attach goes on. Dropping the
//! attach closes the socket, which containerd takes as the attach's end and, for a
//! `stdinOnce` container, closes its stdin, as Kubernetes does after the first attach.
//!
//! One task moves the bytes; every hop is a bounded pipe of one chunk, so a slow reader stops
//! the socket's reads and containerd's writes to it wait.

use super::exec::failed;
use super::CriRuntime;
use crate::runtime::{ExecControl, ExecProcess, ExecSpec, RuntimeError};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use protocol::streams::{TermSize, EXEC_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The channel protocol asked of containerd's streaming server.
const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Resizes.
struct Controls {
    sizes: tokio::sync::mpsc::UnboundedSender<TermSize>,
    /// The task moving the bytes: stopped (the socket closed) when the attach is dropped.
    pump: tokio::task::AbortHandle,
}

impl Drop for Controls {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl ExecControl for Controls {
    fn resize(&self, size: TermSize) {
        let _ = self.sizes.send(size);
    }

    // `stdin_closed` is the default no-op: see the module's doc.
}

/// The message of a `Status` from the error channel if it is a failure.
fn failure_of(status: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v.get("status").and_then(|s| s.as_str()) == Some("Success") {
        return None;
    }
    Some(
        v.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("containerd ended the attach with a failure")
            .to_string(),
    )
}

impl CriRuntime {
    /// Attaches to `container_id`'s streams; whether it has stdin and a terminal is read from
    /// its CRI status (containerd refuses an attach whose `tty` is not the container's).
    pub(super) async fn attach_streams(
        &self,
        container_id: &str,
        spec: &ExecSpec,
    ) -> Result<ExecProcess, RuntimeError> {
        let status = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let req = cri::ContainerStatusRequest {
                    container_id: container_id.to_string(),
                    verbose: true,
                };
                async move { client.container_status(req).await }
            })
            .await
            .map_err(|e| self.internal("attach", "ContainerStatus", &e))?;
        // containerd's verbose status carries the container's CRI config as JSON.
        let config = status
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok());
        let flag = |name: &str| {
            config
                .as_ref()
                .and_then(|c| c.pointer(&format!("/config/{name}")))
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        };
        let (has_stdin, tty) = (flag("stdin"), flag("tty"));
        if !(has_stdin || tty) {
            return Err(failed(
                "attach",
                format!(
                    "container {container_id} was not started with stdin or tty; there is \
                     nothing but its output to attach to"
                ),
            ));
        }
        let stdin = spec.stdin && has_stdin;
        let stderr = spec.stderr && !tty;
        let attach = cri::AttachRequest {
            container_id: container_id.to_string(),
            stdin,
            tty,
            stdout: true,
            stderr,
        };
        let url = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let req = attach.clone();
                async move { client.attach(req).await }
            })
            .await
            .map_err(|e| self.internal("attach", "Attach", &e))?
            .url;
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or_else(|| {
                failed(
                    "attach",
                    format!("containerd's streaming server answered {url:?}, not an http URL"),
                )
            })?;
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| failed("attach", format!("bad streaming URL {url:?}: {e}")))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(PROTOCOL),
        );
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| failed("attach", format!("no host in streaming URL {url:?}")))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tokio_tungstenite::client_async(req, tcp)
                .await
                .map_err(std::io::Error::other)
        };
        let (socket, _) = tokio::time::timeout(self.conn.timeout, connect)
            .await
            .map_err(|_| failed("attach", "containerd's streaming server did not answer"))?
            .map_err(|e| {
                failed(
                    "attach",
                    format!("cannot attach through containerd's streaming server: {e}"),
                )
            })?;
        let (stdin_ours, mut stdin_theirs) = tokio::io::duplex(EXEC_CHUNK);
        let (mut stdout_ours, stdout_theirs) = tokio::io::duplex(EXEC_CHUNK);
        let (mut stderr_ours, stderr_theirs) = tokio::io::duplex(EXEC_CHUNK);
        let (sizes, mut size_rx) = tokio::sync::mpsc::unbounded_channel::<TermSize>();
        if let (true, Some(size)) = (tty, spec.size) {
            let _ = sizes.send(size);
        }
        let (done, exit_rx) = tokio::sync::oneshot::channel::<Result<i32, RuntimeError>>();
        let pump = tokio::spawn(async move {
            let (mut tx, mut rx) = socket.split();
            let mut buf = vec![0u8; EXEC_CHUNK];
            let mut reading_stdin = stdin;
            let mut failure = None;
            let mut outputs = (true, stderr);
            loop {
                tokio::select! {
                    msg = rx.next() => {
                        let data = match msg {
                            Some(Ok(Message::Binary(data))) => data,
                            Some(Ok(Message::Close(_))) | None => break,
                            Some(Err(e)) => {
                                failure = Some(format!("the attach to containerd broke: {e}"));
                                break;
                            }
                            Some(Ok(_)) => continue,
                        };
                        let Some((&channel, data)) = data.split_first() else { continue };
                        // A reader that left drops its output; the other one goes on.
                        let written = match channel {
                            STDOUT if outputs.0 => Some((stdout_ours.write_all(data).await, 0)),
                            STDERR if outputs.1 => Some((stderr_ours.write_all(data).await, 1)),
                            ERROR => {
                                failure = failure_of(data);
                                None
                            }
                            _ => None,
                        };
                        match written {
                            Some((Err(_), 0)) => outputs.0 = false,
                            Some((Err(_), _)) => outputs.1 = false,
                            _ => {}
                        }
                    }
                    n = stdin_theirs.read(&mut buf), if reading_stdin => match n {
                        Ok(n) if n > 0 => {
                            let mut frame = Vec::with_capacity(n + 1);
                            frame.push(STDIN);
                            frame.extend_from_slice(&buf[..n]);
                            if tx.send(Message::Binary(frame.into())).await.is_err() {
                                break;
                            }
                        }
                        // The client closed stdin: v4 cannot say so (see the module's doc).
                        _ => reading_stdin = false,
                    },
                    Some(size) = size_rx.recv() => {
                        let mut frame = vec![RESIZE];
                        frame.extend_from_slice(
                            format!(r#"{{"Width":{},"Height":{}}}"#, size.width, size.height)
                                .as_bytes(),
                        );
                        if tx.send(Message::Binary(frame.into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(Message::Close(None)).await;
            let _ = done.send(match failure {
                None => Ok(0),
                Some(message) => Err(failed("attach", message)),
            });
        });
        let exit = Box::pin(async move {
            exit_rx
                .await
                .unwrap_or_else(|_| Err(failed("attach", "the attach was stopped")))
        });
        Ok(ExecProcess {
            stdin: stdin.then(|| Box::new(stdin_ours) as crate::runtime::ExecWriter),
            stdout: Some(Box::new(stdout_theirs) as crate::runtime::ExecReader),
            stderr: stderr.then(|| Box::new(stderr_theirs) as crate::runtime::ExecReader),
            exit,
            control: Box::new(Controls {
                sizes,
                pump: pump.abort_handle(),
            }),
        })
    }
}
