//! `exec_sync`: running a command beside a running instance, in the same context (environment,
//! working directory) the container's program got, with bounded output and a timeout. Used by
//! exec probes; kept apart from the shim because no shim is involved.

use super::layout::is_dir;
use super::record::{read_json, ShimSpec, SPEC_FILE};
use super::{internal, ProcessRuntime};
use crate::runtime::{deadline_after, ContainerRunState, RuntimeError, Sandbox};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

impl ProcessRuntime {
    /// [`Runtime::exec_sync`]: runs `command` beside a running instance, in its context.
    pub(super) async fn exec_instance(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<crate::runtime::ExecOutput, RuntimeError> {
        let spec = self.running_spec(sandbox, container_id).await?;
        exec_in_context(&spec, command, timeout).await
    }

    /// The spec of a running container instance: the context a command beside it gets.
    pub(super) async fn running_spec(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<ShimSpec, RuntimeError> {
        let id = self.parse_id(sandbox, container_id)?;
        let dir = self.instance_dir(&id);
        if !is_dir(&dir).await {
            return Err(internal(
                "exec",
                format!(
                    "no container instance {container_id:?} under {}; it was removed or never \
                     started by this node's process runtime",
                    self.root.display()
                ),
            ));
        }
        // As in a container runtime, a command runs only beside a running container.
        match self.observe(&id, &dir).await {
            ContainerRunState::Running { .. } => {}
            other => {
                return Err(internal(
                    "exec",
                    format!("container {id} is not running ({other:?}); nothing to exec in"),
                ))
            }
        }
        match read_json::<ShimSpec>(&dir.join(SPEC_FILE)).await {
            Ok(Some(spec)) => Ok(spec),
            Ok(None) => Err(internal(
                "exec",
                format!("container {id} has no spec.json; its instance directory is damaged"),
            )),
            Err(message) => Err(internal(
                "exec",
                format!("cannot read the spec of container {id}: {message}"),
            )),
        }
    }
}

/// Output `exec_sync` keeps of each stream: plenty for a probe's message, and a command that
/// prints without end cannot fill edgecore's memory.
pub(super) const EXEC_OUTPUT_LIMIT: usize = 4096;
/// How long `exec_sync` waits, after the command ended, for the rest of its output (a process
/// that left the command's process group may hold the pipes open).
pub(super) const EXEC_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `command` in the context of the container described by `spec`, as `exec_sync` does:
/// exactly the container's environment (so `PATH` lookups match the container's) and its working
/// directory, stdin on `/dev/null`, in a process group of its own. Without namespaces this is as
/// close to "inside the container" as the process runtime gets.
///
/// At `timeout` the whole group is killed (a probe such as `sh -c 'sleep 100'` leaves nothing
/// behind) and the output is marked timed out. Whatever the command itself left running in its
/// group is killed as well once it exited: an exec does not outlive its command here, since no
/// container would hold it. A program that cannot be started yields exit code 127 (not found)
/// or 126 (not executable), as a shell reports it, so that a misspelt probe command fails the
/// probe visibly instead of being an error the prober ignores.
pub(super) async fn exec_in_context(
    spec: &ShimSpec,
    command: &[String],
    timeout: Duration,
) -> Result<crate::runtime::ExecOutput, RuntimeError> {
    let Some((program, args)) = command.split_first() else {
        return Err(internal(
            "exec",
            format!(
                "empty command for container {}/{}; give at least a program",
                spec.pod_uid, spec.container
            ),
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    super::security::as_user(&mut cmd, spec.user.as_ref());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let exit_code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                io::ErrorKind::PermissionDenied => 126,
                _ => {
                    return Err(internal(
                        "exec",
                        format!(
                            "cannot run {program:?} in container {}: {e}",
                            spec.container
                        ),
                    ))
                }
            };
            return Ok(crate::runtime::ExecOutput {
                exit_code,
                stdout: Vec::new(),
                stderr: format!(
                    "cannot run {program:?} (PATH and working directory {} of the container): {e}",
                    spec.cwd.display()
                )
                .into_bytes(),
                timed_out: false,
            });
        }
    };
    // Also when this future is dropped mid-way (a probe cancelled with its container).
    let group = KillGroupOnDrop(child.id());
    let (stdout_pipe, stderr_pipe) = (child.stdout.take(), child.stderr.take());
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let (status, timed_out) = {
        // The pipes are read while waiting: a command printing more than a pipe holds would
        // otherwise block forever.
        let mut drained = false;
        let mut drain = std::pin::pin!(async {
            tokio::join!(
                read_limited(stdout_pipe, &mut stdout),
                read_limited(stderr_pipe, &mut stderr)
            )
        });
        let deadline = deadline_after(Instant::now(), timeout);
        let ended = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = &mut drain, if !drained => drained = true,
                () = tokio::time::sleep_until(deadline) => break None,
            }
        };
        // Its group goes too: on timeout the command and its children, otherwise what it left.
        drop(group);
        let (status, timed_out) = match ended {
            Some(status) => (status, false),
            None => (child.wait().await, true),
        };
        if !drained {
            let _ = tokio::time::timeout(EXEC_DRAIN_TIMEOUT, &mut drain).await;
        }
        (status, timed_out)
    };
    let status = status.map_err(|e| {
        internal(
            "exec",
            format!(
                "cannot wait for {program:?} in container {}: {e}",
                spec.container
            ),
        )
    })?;
    let exit_code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    Ok(crate::runtime::ExecOutput {
        exit_code,
        stdout,
        stderr,
        timed_out,
    })
}

/// SIGKILLs the process group led by the pid it holds when dropped.
pub(super) struct KillGroupOnDrop(pub(super) Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`EXEC_OUTPUT_LIMIT`] bytes in `keep`.
pub(super) async fn read_limited(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    keep: &mut Vec<u8>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(keep.len());
                keep.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records and helpers.
