//! The shim: the small process that supervises one container instance, started as
//! `<edgecore> shim --container-dir <dir>` (see the parent module's docs). It outlives edgecore,
//! waits for the program and records its start and exit, so an edgecore restart loses nothing.

use super::now_ms;
use super::procfs::proc_start_time_sync;
use super::record::{
    write_json_atomic, ExitRecord, ShimSpec, ShimState, StartError, EXIT_FILE, SPEC_FILE,
    START_ERROR_FILE, STATE_FILE,
};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

pub(super) const SHIM_LOCK_FILE: &str = "shim.lock";
/// How long a freshly spawned shim may take to take its lock.
pub(super) const SHIM_LOCK_GRACE: Duration = Duration::from_secs(2);

/// Arguments of the hidden `shim` subcommand of the edgecore binary. The process runtime runs
/// `<edgecore> shim --container-dir <dir>`; everything else the shim needs is in
/// `<dir>/spec.json`, written by the runtime.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// The container instance's directory: holds spec.json; state.json and exit.json are
    /// written there.
    #[arg(long)]
    pub container_dir: PathBuf,
    /// Run as the container's process instead: join the instance's cgroups and read-only
    /// mounts, then execute its program (what a shim starts when it needs them).
    #[arg(long)]
    pub enter: bool,
}

/// Why the shim could not do its job; written to its stderr (the instance's `shim.log`).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The spec written by the runtime could not be read.
    #[error("cannot read the container spec {path}: {message}")]
    Spec {
        /// Path of spec.json.
        path: PathBuf,
        /// Details.
        message: String,
    },
    /// A state record or the log could not be written or the process not waited for.
    #[error("{op}: {source}")]
    Io {
        /// What the shim was doing.
        op: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// Entry point of the shim: starts the container's process as described by
/// `<container-dir>/spec.json`, records `state.json`, waits for the process, records `exit.json`
/// and returns. It must be called before any async runtime or signal handling is set up, and
/// it blocks until the container exits. Exit status: 0 when the exit was recorded, 127 when the
/// program could not be started (`start-error.json` says why), 1 on any other failure.
pub fn shim_main(args: ShimArgs) -> ExitCode {
    if args.enter {
        return super::enter::enter_main(&args.container_dir);
    }
    match run_shim(&args.container_dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "[{}] skerry shim for {}: {e}",
                now_ms(),
                args.container_dir.display()
            );
            ExitCode::from(1)
        }
    }
}

fn run_shim(dir: &Path) -> Result<ExitCode, ShimError> {
    let io_err = |op: &str| {
        let op = op.to_string();
        move |source| ShimError::Io { op, source }
    };
    // Held for the shim's whole life: whoever finds an instance without `state.json` can tell a
    // shim that is still starting (lock held) from one that never ran or died (lock free).
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(SHIM_LOCK_FILE))
        .map_err(io_err("open the shim lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| ShimError::Io {
            op: "lock the shim lock".into(),
            source: std::io::Error::from(errno),
        },
    )?;
    // A shim that got the lock only after another one ran this instance (it was slow to start,
    // and the instance was replaced meanwhile) must not run it a second time.
    if let Some(record) = [STATE_FILE, EXIT_FILE, START_ERROR_FILE]
        .into_iter()
        .find(|name| dir.join(name).exists())
    {
        return Err(ShimError::Io {
            op: "start the container".into(),
            source: io::Error::other(format!(
                "another shim already ran this instance ({record} exists); not running it again"
            )),
        });
    }
    let spec_path = dir.join(SPEC_FILE);
    let spec: ShimSpec = std::fs::read(&spec_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|message| ShimError::Spec {
            path: spec_path.clone(),
            message,
        })?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(io_err("open the container log"))?;
    let log_err = log.try_clone().map_err(io_err("open the container log"))?;

    // With cgroups, read-only mounts, a hosts file or a user of its own, the process is this
    // binary in `--enter` mode first (see `super::enter`): it joins the cgroups and mounts and
    // becomes the user, then executes the program, so that the program never runs a moment
    // outside them.
    let isolated = spec.enters();
    let mut command = if isolated {
        if let Err(e) = super::enter::prepare(&spec) {
            return record_start_error(dir, &spec, &e);
        }
        let mut c = std::process::Command::new(
            std::env::current_exe().map_err(io_err("find the shim's own program"))?,
        );
        c.arg("shim").arg("--container-dir").arg(dir).arg("--enter");
        c
    } else {
        let mut c = std::process::Command::new(&spec.program);
        c.args(&spec.args);
        c
    };
    command
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return record_start_error(dir, &spec, &e),
    };
    let pid = child.id();
    let started_at_ms = now_ms();
    let state = ShimState {
        shim_pid: std::process::id(),
        shim_start_time: proc_start_time_sync(std::process::id()).unwrap_or(0),
        pid,
        // The child cannot be reaped before we wait for it, so its /proc entry is there.
        proc_start_time: proc_start_time_sync(pid).unwrap_or(0),
        started_at_ms,
    };
    if let Err(e) = write_json_atomic(&dir.join(STATE_FILE), &state, 0o644) {
        // Without a state record nobody can find the process again: do not leave it behind.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = child.wait();
        return Err(ShimError::Io {
            op: "write state.json".to_string(),
            source: e,
        });
    }
    let status = child
        .wait()
        .map_err(io_err("wait for the container process"))?;
    let finished_at_ms = now_ms();
    // The container's main process is gone: end whatever it left in its group, as the death of
    // a container's init ends the container. The group id cannot be reused while members remain.
    match killpg(Pid::from_raw(pid as i32), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => eprintln!(
            "[{}] skerry shim: cannot kill the rest of process group {pid}: {e}",
            now_ms()
        ),
    }
    // Read before the cgroup goes; the rest of the cgroup (processes that left the group)
    // is killed with it.
    let oom_killed = spec.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    if let Some(cgroup) = &spec.cgroup {
        if let Err(e) = cgroup.remove() {
            eprintln!("[{}] skerry shim: {e}", now_ms());
        }
    }
    let signal = status.signal();
    let exit_code = match (status.code(), signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed,
        started_at_ms,
        finished_at_ms,
    };
    write_json_atomic(&dir.join(EXIT_FILE), &record, 0o644).map_err(io_err("write exit.json"))?;
    Ok(ExitCode::SUCCESS)
}

/// Records that the program could not be started (`start-error.json`, and a line in its log);
/// the shim then exits 127.
fn record_start_error(dir: &Path, spec: &ShimSpec, e: &io::Error) -> Result<ExitCode, ShimError> {
    let record = StartError {
        message: e.to_string(),
        not_found: e.kind() == io::ErrorKind::NotFound,
    };
    // Tell whoever reads the log, too.
    if let Ok(mut log) = OpenOptions::new().append(true).open(&spec.log_path) {
        let _ = writeln!(
            log,
            "skerry: cannot start {:?} for container {:?}: {e}",
            spec.program, spec.container
        );
    }
    if let Some(cgroup) = &spec.cgroup {
        let _ = cgroup.remove();
    }
    write_json_atomic(&dir.join(START_ERROR_FILE), &record, 0o644).map_err(|source| {
        ShimError::Io {
            op: "write start-error.json".into(),
            source,
        }
    })?;
    Ok(ExitCode::from(127))
}

/// Whether a shim holds the instance's lock (it is alive).
pub(super) fn shim_lock_held(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .write(true)
        .open(dir.join(SHIM_LOCK_FILE))
    else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err(_) => false,
    }
}
