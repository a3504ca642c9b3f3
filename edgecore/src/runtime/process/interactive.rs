//! [`Runtime::exec`](crate::runtime::Runtime::exec) for the process runtime: a command run
//! beside a running instance in its context (environment, working directory), as `exec_sync`
//! runs probes, but with its standard streams given to the caller (`kubectl exec`).
//!
//! Without a terminal the command gets pipes and a process group of its own. With one
//! (`kubectl exec -t`) it gets the slave side of a fresh pseudo terminal as stdin, stdout and
//! stderr, started through util-linux `setsid --ctty` so that the terminal becomes its
//! controlling terminal (job control, `^C` as SIGINT, SIGWINCH on resize) without unsafe code in
//! edgecore. Either way, the process group is killed when the caller drops the
//! [`ExecProcess`] (the client left) and once the command itself ended: an exec does not
//! outlive its command, as it would not outlive a container either.

use super::exec::KillGroupOnDrop;
use super::record::ShimSpec;
use super::{internal, ProcessRuntime};
use crate::runtime::{ExecControl, ExecProcess, ExecSpec, RuntimeError, Sandbox};
use protocol::streams::TermSize;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Where util-linux installs `setsid` (Debian: /usr/bin, older layouts: /bin).
const SETSID: [&str; 2] = ["/usr/bin/setsid", "/bin/setsid"];

/// The size a terminal has until the client says its own.
const DEFAULT_SIZE: TermSize = TermSize {
    width: 80,
    height: 24,
};

impl ProcessRuntime {
    /// [`Runtime::exec`](crate::runtime::Runtime::exec) for this runtime.
    pub(super) async fn exec_interactive(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        spec: &ExecSpec,
    ) -> Result<ExecProcess, RuntimeError> {
        let context = self.running_spec(sandbox, container_id).await?;
        if spec.command.is_empty() {
            return Err(internal("exec", "empty command; give at least a program"));
        }
        if spec.tty {
            on_terminal(&context, spec)
        } else {
            on_pipes(&context, spec)
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    }
}

fn cannot_run(context: &ShimSpec, program: &str, e: std::io::Error) -> RuntimeError {
    internal(
        "exec",
        format!(
            "cannot run {program:?} in container {} (its PATH and working directory {}): {e}",
            context.container,
            context.cwd.display()
        ),
    )
}

fn on_pipes(context: &ShimSpec, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| internal("exec", "empty command"))?;
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(context.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&context.cwd)
        .stdin(piped(spec.stdin))
        .stdout(piped(spec.stdout))
        .stderr(piped(spec.stderr))
        .process_group(0)
        .kill_on_drop(true);
    super::security::as_user(&mut cmd, context.user.as_ref());
    let mut child = cmd.spawn().map_err(|e| cannot_run(context, program, e))?;
    let group = KillGroupOnDrop(child.id());
    let stdin = child
        .stdin
        .take()
        .map(|w| Box::new(w) as crate::runtime::ExecWriter);
    let stdout = child
        .stdout
        .take()
        .map(|r| Box::new(r) as crate::runtime::ExecReader);
    let stderr = child
        .stderr
        .take()
        .map(|r| Box::new(r) as crate::runtime::ExecReader);
    let program = program.clone();
    let exit = Box::pin(async move {
        let status = child.wait().await;
        drop(group);
        status
            .map(exit_code)
            .map_err(|e| internal("exec", format!("cannot wait for {program:?}: {e}")))
    });
    Ok(ExecProcess {
        stdin,
        stdout,
        stderr,
        exit,
        control: Box::new(NoTerminal),
    })
}

/// The controls of a command without a terminal: nothing to resize, and its stdin ends when
/// the pipe's writer is dropped.
struct NoTerminal;

impl ExecControl for NoTerminal {
    fn resize(&self, _size: TermSize) {}
}

/// The controls of a command on a terminal: resizes go to its master side (the kernel tells
/// the foreground process group with SIGWINCH).
struct Terminal {
    master: OwnedFd,
}

impl ExecControl for Terminal {
    fn resize(&self, size: TermSize) {
        let _ = set_size(&self.master, size);
    }
}

fn set_size(master: &OwnedFd, size: TermSize) -> std::io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// A new pseudo terminal: its master side and the path of its slave side.
fn open_pty() -> std::io::Result<(OwnedFd, std::path::PathBuf)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let path = std::path::PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes()),
    );
    Ok((master, path))
}

fn on_terminal(context: &ShimSpec, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
    let setsid = SETSID
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            internal(
                "exec",
                "exec with a terminal needs util-linux's setsid (apt-get install util-linux)",
            )
        })?;
    let term = |e: std::io::Error| internal("exec", format!("cannot open a pseudo terminal: {e}"));
    let (master, slave_path) = open_pty().map_err(term)?;
    set_size(&master, spec.size.unwrap_or(DEFAULT_SIZE)).map_err(term)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .map_err(term)?;
    let slave_out = slave.try_clone().map_err(term)?;
    let slave_err = slave.try_clone().map_err(term)?;
    let mut env: Vec<(String, String)> = context.env.clone();
    if !env.iter().any(|(k, _)| k == "TERM") {
        // As containerd gives an exec with a terminal.
        env.push(("TERM".into(), "xterm".into()));
    }
    let mut cmd = tokio::process::Command::new(setsid);
    // `--wait` in case setsid has to fork (it never should: the child leads no group).
    cmd.args(["--ctty", "--wait", "--"])
        .args(&spec.command)
        .env_clear()
        .envs(env)
        .current_dir(&context.cwd)
        .stdin(Stdio::from(slave))
        .stdout(Stdio::from(slave_out))
        .stderr(Stdio::from(slave_err))
        .kill_on_drop(true);
    super::security::as_user(&mut cmd, context.user.as_ref());
    let mut child = cmd
        .spawn()
        .map_err(|e| cannot_run(context, &spec.command[0], e))?;
    // The parent's copies of the slave go with `cmd`: the master then reads EIO (the end) once
    // the command and whatever it started closed the terminal.
    drop(cmd);
    let group = KillGroupOnDrop(child.id());
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(term);
    let reader = std::fs::File::from(dup(&master)?);
    let writer = std::fs::File::from(dup(&master)?);
    let stdin = spec
        .stdin
        .then(|| Box::new(tokio::fs::File::from_std(writer)) as crate::runtime::ExecWriter);
    let stdout =
        Some(Box::new(TerminalReader(tokio::fs::File::from_std(reader)))
            as crate::runtime::ExecReader);
    let program = spec.command[0].clone();
    let exit = Box::pin(async move {
        let status = child.wait().await;
        drop(group);
        status
            .map(exit_code)
            .map_err(|e| internal("exec", format!("cannot wait for {program:?}: {e}")))
    });
    Ok(ExecProcess {
        stdin,
        stdout,
        stderr: None,
        exit,
        control: Box::new(Terminal { master }),
    })
}

/// The master side of a terminal, read: EIO is how Linux says that every slave was closed,
/// which for the reader is the end of the output.
struct TerminalReader(tokio::fs::File);

impl AsyncRead for TerminalReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}
