//! [`Runtime::exec`](crate::runtime::Runtime::exec) for the CRI runtime, through containerd's
//! own task API rather than CRI's `Exec`.
//!
//! CRI's `Exec` answers with a URL of containerd's streaming server, which speaks SPDY and the
//! WebSocket channel protocols up to `v4.channel.k8s.io` (containerd 1.6/1.7): v4 cannot close
//! stdin without closing everything, and `kubectl cp` into a container (`tar x` reading stdin
//! to its end) needs exactly that. containerd's task API does what the CRI plugin does
//! internally, and closes stdin on its own: the container's OCI process spec with the command's
//! arguments (and `terminal`, with `TERM=xterm` as the CRI plugin sets it) becomes an exec
//! process of the container's task, its standard streams are FIFOs that the shim opens, resizes
//! are `ResizePty` and the exit status comes from `Wait`. The FIFOs live in
//! `<data-dir>/pods/<uid>/exec/<id>/` and go with the exec.
//!
//! The CRI plugin keeps its containers in containerd's `k8s.io` namespace, under the ids CRI
//! gave them, so the container id the pod worker knows is the task's.

use super::CriRuntime;
use crate::runtime::{ExecControl, ExecProcess, ExecSpec, RuntimeError, Sandbox};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ResizePtyRequest, StartRequest, WaitRequest,
};
use protocol::streams::TermSize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::unix::pipe;
use tonic::transport::Channel;
use tonic::Request;

/// The directory of a pod's exec FIFOs, in its directory under `<data-dir>/pods`.
pub(super) const EXEC_DIR: &str = "exec";

/// containerd's namespace of CRI-managed containers.
const CRI_NAMESPACE: &str = "k8s.io";
/// The type of an OCI process spec in a protobuf `Any`, as containerd's client marshals it.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

pub(super) fn request<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
    );
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

pub(super) fn failed(op: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal {
        op: op.to_string(),
        message: e.to_string(),
    }
}

/// The exec's process in containerd and its FIFOs: killed (if still running) and deleted when
/// dropped.
struct Cleanup {
    channel: Channel,
    container_id: String,
    exec_id: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (channel, container_id, exec_id, dir) = (
            self.channel.clone(),
            self.container_id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        );
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut tasks = TasksClient::new(channel);
            let timeout = Some(Duration::from_secs(10));
            // Nothing to kill once it exited (containerd says so; that is fine).
            let _ = tasks
                .kill(request(
                    KillRequest {
                        container_id: container_id.clone(),
                        exec_id: exec_id.clone(),
                        signal: libc::SIGKILL as u32,
                        all: false,
                    },
                    timeout,
                ))
                .await;
            let _ = tasks
                .delete_process(request(
                    DeleteProcessRequest {
                        container_id,
                        exec_id,
                    },
                    timeout,
                ))
                .await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
        });
    }
}

/// Resizes (one worker applies the latest size, in order) and stdin's close.
struct Controls {
    size: tokio::sync::watch::Sender<Option<TermSize>>,
    channel: Channel,
    container_id: String,
    exec_id: String,
    _cleanup: Cleanup,
}

impl ExecControl for Controls {
    fn resize(&self, size: TermSize) {
        let _ = self.size.send(Some(size));
    }

    fn stdin_closed(&self) {
        let mut tasks = TasksClient::new(self.channel.clone());
        let req = request(
            CloseIoRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
                stdin: true,
            },
            Some(Duration::from_secs(10)),
        );
        tokio::spawn(async move {
            let _ = tasks.close_io(req).await;
        });
    }
}

fn mkfifo(path: &Path) -> Result<(), RuntimeError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU)
        .map_err(|e| failed("exec", format!("cannot make FIFO {}: {e}", path.display())))
}

impl CriRuntime {
    /// [`Runtime::exec`](crate::runtime::Runtime::exec) for this runtime.
    pub(super) async fn exec_task(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        spec: &ExecSpec,
    ) -> Result<ExecProcess, RuntimeError> {
        if spec.command.is_empty() {
            return Err(failed("exec", "empty command; give at least a program"));
        }
        if !super::is_safe_component(&sandbox.pod_uid) {
            return Err(failed("exec", format!("bad pod uid {:?}", sandbox.pod_uid)));
        }
        let channel = self.conn.channel();
        let timeout = Some(self.conn.timeout);
        let mut containers = ContainersClient::new(channel.clone());
        let container = containers
            .get(request(
                GetContainerRequest {
                    id: container_id.to_string(),
                },
                timeout,
            ))
            .await
            .map_err(|e| {
                failed(
                    "exec",
                    format!(
                        "containerd has no container {container_id}: {}",
                        e.message()
                    ),
                )
            })?
            .into_inner()
            .container
            .ok_or_else(|| {
                failed(
                    "exec",
                    format!("containerd has no container {container_id}"),
                )
            })?;
        let oci: serde_json::Value = container
            .spec
            .as_ref()
            .and_then(|any| serde_json::from_slice(&any.value).ok())
            .ok_or_else(|| failed("exec", format!("container {container_id} has no OCI spec")))?;
        let mut process = oci.get("process").cloned().ok_or_else(|| {
            failed(
                "exec",
                format!("the OCI spec of {container_id} has no process"),
            )
        })?;
        process["args"] = serde_json::json!(spec.command);
        process["terminal"] = serde_json::json!(spec.tty);
        if let (true, Some(size)) = (spec.tty, spec.size) {
            // runc sizes the terminal it creates from this; the resize after the start below
            // covers runtimes that ignore it.
            process["consoleSize"] =
                serde_json::json!({"height": size.height, "width": size.width});
        }
        if spec.tty {
            let env = process["env"].as_array_mut();
            if let Some(env) = env {
                if !env
                    .iter()
                    .any(|e| e.as_str().is_some_and(|s| s.starts_with("TERM=")))
                {
                    env.push(serde_json::json!("TERM=xterm"));
                }
            }
        }
        let exec_id = format!("skerry-exec-{:016x}", rand::random::<u64>());
        let dir = self
            .pods_root
            .join(&sandbox.pod_uid)
            .join("exec")
            .join(&exec_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| failed("exec", format!("cannot create {}: {e}", dir.display())))?;
        let cleanup = Cleanup {
            channel: channel.clone(),
            container_id: container_id.to_string(),
            exec_id: exec_id.clone(),
            dir: dir.clone(),
        };
        // Our ends are open before the shim opens its own: the shim's reads of stdin wait for
        // data from a writer that exists, and our reads of stdout wait for its writer.
        let fifo = |name: &str, wanted: bool| -> Result<Option<PathBuf>, RuntimeError> {
            if !wanted {
                return Ok(None);
            }
            let path = dir.join(name);
            mkfifo(&path)?;
            Ok(Some(path))
        };
        let stdin_path = fifo("stdin", spec.stdin)?;
        let stdout_path = fifo("stdout", spec.stdout || spec.tty)?;
        let stderr_path = fifo("stderr", spec.stderr && !spec.tty)?;
        let open_err = |p: &Path, e: std::io::Error| {
            failed("exec", format!("cannot open {}: {e}", p.display()))
        };
        let stdin = match &stdin_path {
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(|e| open_err(p, e))?,
            ),
            None => None,
        };
        let receiver = |p: &Option<PathBuf>| -> Result<Option<pipe::Receiver>, RuntimeError> {
            match p {
                Some(p) => pipe::OpenOptions::new()
                    .open_receiver(p)
                    .map(Some)
                    .map_err(|e| open_err(p, e)),
                None => Ok(None),
            }
        };
        let stdout = receiver(&stdout_path)?;
        let stderr = receiver(&stderr_path)?;
        let path_str = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let mut tasks = TasksClient::new(channel.clone());
        tasks
            .exec(request(
                ExecProcessRequest {
                    container_id: container_id.to_string(),
                    stdin: path_str(&stdin_path),
                    stdout: path_str(&stdout_path),
                    stderr: path_str(&stderr_path),
                    terminal: spec.tty,
                    spec: Some(prost_types::Any {
                        type_url: PROCESS_TYPE_URL.to_string(),
                        value: serde_json::to_vec(&process).unwrap_or_default(),
                    }),
                    exec_id: exec_id.clone(),
                },
                timeout,
            ))
            .await
            .map_err(|e| {
                failed(
                    "exec",
                    format!("containerd could not create the exec: {}", e.message()),
                )
            })?;
        // Waiting starts before the process does, so that its exit cannot be missed.
        let mut waiter = TasksClient::new(channel.clone());
        let wait_req = request(
            WaitRequest {
                container_id: container_id.to_string(),
                exec_id: exec_id.clone(),
            },
            None,
        );
        let wait = tokio::spawn(async move { waiter.wait(wait_req).await });
        if let Err(e) = tasks
            .start(request(
                StartRequest {
                    container_id: container_id.to_string(),
                    exec_id: exec_id.clone(),
                },
                timeout,
            ))
            .await
        {
            wait.abort();
            return Err(failed(
                "exec",
                format!(
                    "cannot start {:?} in the container: {}",
                    spec.command[0],
                    e.message()
                ),
            ));
        }
        let (size, mut sizes) = tokio::sync::watch::channel(None::<TermSize>);
        if spec.tty && spec.size.is_some() {
            size.send_replace(spec.size);
        }
        if spec.tty {
            let mut resizer = TasksClient::new(channel.clone());
            let (cid, eid) = (container_id.to_string(), exec_id.clone());
            tokio::spawn(async move {
                while sizes.changed().await.is_ok() {
                    let Some(s) = *sizes.borrow_and_update() else {
                        continue;
                    };
                    let _ = resizer
                        .resize_pty(request(
                            ResizePtyRequest {
                                container_id: cid.clone(),
                                exec_id: eid.clone(),
                                width: u32::from(s.width),
                                height: u32::from(s.height),
                            },
                            Some(Duration::from_secs(10)),
                        ))
                        .await;
                }
            });
        }
        let exit = Box::pin(async move {
            match wait.await {
                Ok(Ok(resp)) => Ok(resp.into_inner().exit_status as i32),
                Ok(Err(status)) => Err(failed(
                    "exec",
                    format!("containerd lost the exec: {}", status.message()),
                )),
                Err(e) => Err(failed("exec", e)),
            }
        });
        Ok(ExecProcess {
            stdin: stdin.map(|w| Box::new(w) as crate::runtime::ExecWriter),
            stdout: stdout.map(|r| Box::new(r) as crate::runtime::ExecReader),
            stderr: stderr.map(|r| Box::new(r) as crate::runtime::ExecReader),
            exit,
            control: Box::new(Controls {
                size,
                channel,
                container_id: container_id.to_string(),
                exec_id,
                _cleanup: cleanup,
            }),
        })
    }
}
