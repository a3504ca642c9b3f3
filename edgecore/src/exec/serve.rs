//! Serving exec streams the hub opens on this node's connection (`kubectl exec`, `kubectl cp`).
//!
//! After the request and the edge's [`LogHeader::Streaming`], the hub sends [`ExecInput`]
//! frames and the edge [`ExecEvent`] frames, each at most [`EXEC_CHUNK`] of payload. Every copy
//! moves one chunk at a time and waits for it to be taken: a command that stops reading its
//! stdin stops the reads of the stream (whose window then stops the hub), a client that stops
//! reading closes the stream's window and the next write here waits, so the command's output
//! pipe fills and the command itself waits. Nothing is buffered beyond a chunk.
//!
//! The exit code is sent after all the output, once both output streams ended; output that a
//! process the command left behind keeps open is waited for at most [`DRAIN`] after the command
//! ended (see [`DRAIN`]). A hub side that ends or resets (the client left, the link dropped) ends the command:
//! dropping the [`crate::runtime::ExecProcess`] kills it.

use super::find_running;
use crate::logs::serve::refuse;
use crate::runtime::{ExecReader, ExecSpec, Runtime};
use protocol::streams::{
    AttachIoRequest, ExecEvent, ExecInput, ExecRequest, LogHeader, LogRefusal, EXEC_CHUNK,
    MAX_EXEC_FRAME,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, info};

/// Exec streams served at once.
pub const MAX_EXEC_STREAMS: usize = 16;

/// Priority of exec streams' data: below the sync stream's (0), above log streams' (an
/// interactive shell should not wait behind a `kubectl logs` of a chatty container).
pub const EXEC_STREAM_PRIORITY: i32 = -4;

/// How long output is still read after the command ended.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Serves exec streams with one runtime.
#[derive(Clone)]
pub struct ExecServer {
    runtime: Arc<dyn Runtime>,
    slots: Arc<Semaphore>,
}

async fn read_some(r: &mut Option<ExecReader>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

impl ExecServer {
    /// The running container `[namespace, pod, uid, container]` names, or its refusal
    /// written on `send` (then `None`).
    async fn running_or_refuse(
        &self,
        send: &mut quinn::SendStream,
        [namespace, pod, uid, container]: [&str; 4],
    ) -> Option<(crate::runtime::Sandbox, String)> {
        match find_running(self.runtime.as_ref(), namespace, pod, uid, container).await {
            Ok(found) => Some(found),
            Err(e) => {
                let _ = refuse(send, e.refusal(), e.to_string()).await;
                None
            }
        }
    }

    /// Runs commands with `runtime`.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        Self {
            runtime,
            slots: Arc::new(Semaphore::new(MAX_EXEC_STREAMS)),
        }
    }

    /// The node's exec slots (attach streams take them too).
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// Serves one exec stream whose request was read.
    pub async fn serve(
        &self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        req: ExecRequest,
    ) {
        let _ = send.set_priority(EXEC_STREAM_PRIORITY);
        let pod = format!("{}/{}", req.namespace, req.pod);
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let _ = refuse(
                &mut send,
                LogRefusal::Busy,
                format!("node runs {MAX_EXEC_STREAMS} exec streams at once; try again"),
            )
            .await;
            return;
        };
        let Some((sandbox, id)) = self
            .running_or_refuse(
                &mut send,
                [&req.namespace, &req.pod, &req.uid, &req.container],
            )
            .await
        else {
            return;
        };
        let spec = ExecSpec {
            command: req.command.clone(),
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
            size: req.size,
        };
        let process = match self.runtime.exec(&sandbox, &id, &spec).await {
            Ok(p) => p,
            Err(e) => {
                let e = super::ExecError::from(e);
                let _ = refuse(&mut send, e.refusal(), e.to_string()).await;
                return;
            }
        };
        if wire::frames::write_frame(&mut send, &LogHeader::Streaming)
            .await
            .is_err()
        {
            return;
        }
        // The command line is the admin's; its bytes never reach the log.
        info!(%pod, container = %req.container, command = ?req.command, tty = req.tty,
              stdin = req.stdin, "running a command for the cloud");
        carry("exec", &pod, &req.container, process, send, recv).await;
    }

    /// Serves one attach stream to a container started with `stdin` or `tty`, in one of the
    /// node's exec slots: the container's own streams through [`Runtime::attach`], carried as
    /// an exec's.
    pub async fn serve_attach(
        &self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        req: AttachIoRequest,
    ) {
        let _ = send.set_priority(EXEC_STREAM_PRIORITY);
        let pod = format!("{}/{}", req.namespace, req.pod);
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let _ = refuse(
                &mut send,
                LogRefusal::Busy,
                format!(
                    "node serves {MAX_EXEC_STREAMS} exec and attach streams at once; try again"
                ),
            )
            .await;
            return;
        };
        let Some((sandbox, id)) = self
            .running_or_refuse(
                &mut send,
                [&req.namespace, &req.pod, &req.uid, &req.container],
            )
            .await
        else {
            return;
        };
        let spec = ExecSpec {
            command: Vec::new(),
            stdin: req.stdin,
            stdout: true,
            stderr: req.stderr,
            tty: req.tty,
            size: None,
        };
        let process = match self.runtime.attach(&sandbox, &id, &spec).await {
            Ok(p) => p,
            Err(e) => {
                let _ = refuse(&mut send, LogRefusal::BadRequest, e.to_string()).await;
                return;
            }
        };
        if wire::frames::write_frame(&mut send, &LogHeader::Streaming)
            .await
            .is_err()
        {
            return;
        }
        info!(%pod, container = %req.container, tty = req.tty, stdin = req.stdin,
              "attached to a container's streams for the cloud");
        carry("attach", &pod, &req.container, process, send, recv).await;
    }
}

/// Carries a started command's (or an attach's) streams over the hub's stream until it ends or
/// the hub's side goes away.
async fn carry(
    what: &'static str,
    pod: &str,
    container: &str,
    process: crate::runtime::ExecProcess,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    {
        let crate::runtime::ExecProcess {
            stdin,
            mut stdout,
            mut stderr,
            mut exit,
            control,
        } = process;
        let input = async {
            let mut stdin = stdin;
            loop {
                match wire::frames::read_frame::<ExecInput>(&mut recv, MAX_EXEC_FRAME).await {
                    Ok(Some(ExecInput::Stdin(bytes))) => {
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                                // The command closed its stdin; what comes is dropped.
                                stdin = None;
                            }
                        }
                    }
                    Ok(Some(ExecInput::StdinClosed)) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                        control.stdin_closed();
                    }
                    Ok(Some(ExecInput::Resize(size))) => control.resize(size),
                    // The hub's side ended or was reset: nobody is there any more.
                    Ok(None) | Err(_) => return,
                }
            }
        };
        let output = async {
            let mut out_buf = vec![0u8; EXEC_CHUNK];
            let mut err_buf = vec![0u8; EXEC_CHUNK];
            let mut code = None;
            let mut drain_until = None;
            while stdout.is_some() || stderr.is_some() {
                let drain = async {
                    match drain_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                let event = tokio::select! {
                    r = read_some(&mut stdout, &mut out_buf) => match r {
                        Ok(n) if n > 0 => Some(ExecEvent::Stdout(out_buf[..n].to_vec())),
                        _ => { stdout = None; None }
                    },
                    r = read_some(&mut stderr, &mut err_buf) => match r {
                        Ok(n) if n > 0 => Some(ExecEvent::Stderr(err_buf[..n].to_vec())),
                        _ => { stderr = None; None }
                    },
                    c = &mut exit, if code.is_none() => {
                        code = Some(c);
                        drain_until = Some(tokio::time::Instant::now() + DRAIN);
                        None
                    }
                    () = drain => break,
                };
                if let Some(event) = event {
                    wire::frames::write_frame(&mut send, &event).await?;
                }
            }
            let code = match code {
                Some(c) => c,
                None => exit.await,
            };
            let last = match code {
                Ok(code) => ExecEvent::Exited { code },
                Err(e) => ExecEvent::Failed {
                    message: e.to_string(),
                },
            };
            wire::frames::write_frame(&mut send, &last).await?;
            let _ = send.finish();
            Ok::<_, wire::frames::FrameError>(last)
        };
        tokio::select! {
            ended = output => match ended {
                Ok(last) => info!(what, %pod, %container, outcome = ?last, "exec or attach for the cloud ended"),
                Err(e) => debug!(what, %pod, %container, error = %e, "exec stream cut"),
            },
            () = input => {
                info!(what, %pod, %container, "the cloud's side of an exec or attach ended: command stopped or detached");
            }
        }
    }
}
