//! `edgecore exec POD -- CMD` on the node itself: the same lookup and the same runtime call as
//! an exec through the cloud, with this process's own standard streams, so it works with the
//! link down and without the agent running (as `edgecore logs` does).
//!
//! With `-t` and a terminal on stdin, the local terminal is put in raw mode for the command's
//! lifetime (and restored after), given to the command's terminal at its size, and resized on
//! SIGWINCH, as kubectl does for `exec -t`.

use super::find_running;
use crate::runtime::{ExecSpec, Runtime};
use protocol::streams::TermSize;
use std::io::IsTerminal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `edgecore exec` was asked.
#[derive(Debug, Clone)]
pub struct LocalExec {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container (the caller resolved the default).
    pub container: String,
    /// The command.
    pub command: Vec<String>,
    /// Pass stdin.
    pub stdin: bool,
    /// Run on a terminal.
    pub tty: bool,
}

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(&stdin) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

fn local_size() -> Option<TermSize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some(TermSize {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}

/// Runs `req` with this process's stdio; its exit code.
pub async fn run(runtime: &dyn Runtime, req: &LocalExec) -> anyhow::Result<i32> {
    let (sandbox, id) = find_running(runtime, &req.namespace, &req.pod, "", &req.container).await?;
    let tty = req.tty && std::io::stdin().is_terminal();
    let spec = ExecSpec {
        command: req.command.clone(),
        stdin: req.stdin,
        stdout: true,
        stderr: !tty,
        tty,
        size: if tty { local_size() } else { None },
    };
    let process = runtime.exec(&sandbox, &id, &spec).await?;
    let crate::runtime::ExecProcess {
        stdin,
        stdout,
        stderr,
        exit,
        control,
    } = process;
    let _raw = tty.then(RawMode::enter);
    let input = async {
        let Some(mut w) = stdin else {
            return;
        };
        let mut local = tokio::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match local.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
        drop(w);
        control.stdin_closed();
    };
    let resizes = async {
        if !tty {
            return;
        }
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(size) = local_size() {
                control.resize(size);
            }
        }
    };
    let copy = |reader: Option<crate::runtime::ExecReader>, stderr: bool| async move {
        let Some(mut r) = reader else { return };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let written = if stderr {
                        tokio::io::stderr().write_all(&buf[..n]).await
                    } else {
                        let mut out = tokio::io::stdout();
                        match out.write_all(&buf[..n]).await {
                            Ok(()) => out.flush().await,
                            Err(e) => Err(e),
                        }
                    };
                    if written.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let outputs = async {
        tokio::join!(copy(stdout, false), copy(stderr, true));
    };
    // The exit code once the output ended, or [`DRAIN`] after the command ended if something
    // it left behind holds the output open.
    let finished = async {
        let mut outputs = std::pin::pin!(outputs);
        let mut exit = exit;
        tokio::select! {
            code = &mut exit => {
                let _ = tokio::time::timeout(super::serve::DRAIN, &mut outputs).await;
                code
            }
            () = &mut outputs => exit.await,
        }
    };
    let mut side = std::pin::pin!(async { tokio::join!(input, resizes) });
    let mut finished = std::pin::pin!(finished);
    let mut side_done = false;
    loop {
        tokio::select! {
            code = &mut finished => return Ok(code?),
            _ = &mut side, if !side_done => side_done = true,
        }
    }
}
