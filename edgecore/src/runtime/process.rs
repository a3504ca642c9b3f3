//! The `process` runtime: every container is a native process on the host.
//!
//! It exists for hardware-in-the-loop rigs and small machines without containerd: the workload is a
//! program installed on the node, started with the pod's environment and arguments, supervised
//! like a container (state, exit codes, logs, graceful stop, adoption after an edgecore restart).
//! There is no isolation: no namespaces, no cgroup limits, no image (the image reference only
//! labels the container).
//!
//! # Shims
//!
//! Like `containerd-shim`, every container instance is supervised by a small process of its own,
//! the *shim*: edgecore's own binary run as `<edgecore> shim --container-dir <dir>` (see
//! [`ShimArgs`] and [`shim_main`]). The shim runs in its own process group, outside edgecore's, so
//! that a signal to edgecore's group does not reach it, and it outlives edgecore: an edgecore that
//! is killed and restarted finds its containers still running, adopts them (by reading the files
//! below) and still learns their exit codes, because the shim, not edgecore, waits for the process.
//! When edgecore runs under systemd, its unit needs `KillMode=process` (as containerd's does) so
//! that stopping the service does not kill the shims in its cgroup.
//!
//! The shim starts the container's program in a new process group (the group id is the container
//! pid, so the whole tree the program starts can be signalled at once), with stdin on `/dev/null`
//! and stdout and stderr appended to the instance's log file. It records `state.json` once the
//! process runs and `exit.json` once it exited, both written atomically (temporary file, fsync,
//! rename, fsync of the directory) so that a crash never leaves half a record. When the program
//! exits, whatever it left running in its process group is killed, as the death of a container's
//! init process ends the container.
//!
//! A shim that does not report within the start timeout is not killed (it may have started the
//! process already, in a group of its own that would outlive it untracked) and its instance is
//! kept: the start fails, and its retry with the same attempt number waits for that shim and
//! adopts what it reports instead of starting a second process.
//!
//! # Layout
//!
//! Under the runtime's root (`<data-dir>/pods`):
//!
//! ```text
//! <pod-uid>/pod.json                                    namespace, name, uid, ip
//! <pod-uid>/containers/<name>/<attempt>/spec.json       what the shim runs, and its spec digest (mode 0600: env may hold secrets)
//! <pod-uid>/containers/<name>/<attempt>/state.json      pids and start times, once running
//! <pod-uid>/containers/<name>/<attempt>/exit.json       exit code and time, once exited
//! <pod-uid>/containers/<name>/<attempt>/start-error.json  why the program could not be started
//! <pod-uid>/containers/<name>/<attempt>/shim.log        the shim's own diagnostics
//! <pod-uid>/logs/<name>/<attempt>.log                   the container's stdout and stderr
//! <pod-uid>/volumes/<volume>/                           the pod's volumes (`crate::volumes`, not this runtime's)
//! ```
//!
//! The pod's `volumes/` directory belongs to the pod worker, which prepares the volumes before a
//! container starts and tears them down (unmounting tmpfs mounts) after the sandbox is removed:
//! [`Runtime::remove_sandbox`] removes everything else in the pod's directory, and the directory
//! itself only if no volumes are left in it.
//!
//! The sandbox is ready while its `pod.json` exists ([`Runtime::sandbox_ready`]). A pod directory
//! wiped under a running pod makes the pod worker replace the sandbox: its processes are still
//! stopped (found through the state cached when they started), and `run_sandbox` makes the
//! directory anew.
//!
//! Container ids are `<pod-uid>/<name>/<attempt>`, unique per instance.
//!
//! # Environment
//!
//! The process gets exactly the environment the pod worker resolved ([`ContainerConfig::env`]),
//! plus `PATH` (a standard system path) and `HOSTNAME` (the pod name) unless the pod sets them.
//! edgecore's own environment is *not* inherited: it holds the agent's configuration and possibly
//! credentials, which must not leak into workloads, and a pod must behave the same whichever way
//! edgecore was started. The program is looked up in the `PATH` of that environment.
//!
//! # Volumes
//!
//! The pod worker prepares every volume a container mounts (emptyDir, hostPath, configMap and
//! secret; see `crate::volumes`) and passes the mounts in [`ContainerConfig::mounts`]. Without
//! mount namespaces a volume cannot appear at its `mountPath`, so mounts are exposed differently:
//! the process runs in the pod directory by default (unless the container sets `workingDir`; a
//! relative one is taken relative to the pod directory), and for every volume it mounts the
//! environment variable `SKERRY_VOLUME_<NAME>` (the volume name upper-cased, every character
//! other than a letter or digit replaced by `_`) holds the mount's host path: the volume's
//! directory, or the path within it for a mount with `subPath`. `mountPath` and `readOnly` are
//! ignored (nothing stops the process from writing, as it runs with edgecore's rights). A volume
//! mounted twice must be mounted at the same host path, since it gets one variable.

use super::{
    deadline_after, ContainerConfig, ContainerInfo, ContainerRunState, ExistingPod, Runtime,
    RuntimeError, Sandbox,
};
use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use protocol::pod::{EdgeContainer, EdgePod};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::time::{sleep, Instant};
use tracing::{debug, info, warn};

/// `PATH` given to a container whose environment does not set one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long `start_container` waits for the shim to report that the process runs. Generous,
/// because the shim is a fresh process that may be slow to start on a loaded two-core node.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the shim to record the exit after SIGKILL, or after the process vanished.
const EXIT_RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for the shim during a start.
const START_POLL: Duration = Duration::from_millis(5);
/// Poll interval while waiting for a process to exit.
const STOP_POLL: Duration = Duration::from_millis(20);
/// An instance without `state.json` whose spec is older than this is reported `Unknown`: its shim
/// died (or edgecore did, mid-start) before the process ran.
const STALE_CREATED_AFTER: Duration = Duration::from_secs(60);

const POD_FILE: &str = "pod.json";
const SPEC_FILE: &str = "spec.json";
const STATE_FILE: &str = "state.json";
const EXIT_FILE: &str = "exit.json";
const START_ERROR_FILE: &str = "start-error.json";
const SHIM_LOG_FILE: &str = "shim.log";
const SHIM_LOCK_FILE: &str = "shim.lock";
/// How long a freshly spawned shim may take to take its lock.
const SHIM_LOCK_GRACE: Duration = Duration::from_secs(2);

/// Runs containers as native processes, each supervised by a shim (see the module docs).
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    shim_program: PathBuf,
    host_ip: String,
    /// How long `start_container` waits for a shim to report the process running.
    start_timeout: Duration,
    /// Parsed `state.json` of the instances seen, by container id: the file never changes once
    /// written, so a poll only has to look for `exit.json` and at `/proc`. An entry is dropped
    /// whenever this runtime removes the instance's directory (the id may then be reused).
    states: Arc<Mutex<HashMap<String, ShimState>>>,
}

impl ProcessRuntime {
    /// A runtime keeping its pods under `root` (`<data-dir>/pods`), starting shims as
    /// `<shim_program> shim ...` (the daemon passes `std::env::current_exe()`, whose `shim`
    /// subcommand calls [`shim_main`]), and reporting `host_ip` as every pod's IP, since processes
    /// share the host's network.
    pub fn new(root: PathBuf, shim_program: PathBuf, host_ip: String) -> Self {
        Self {
            root,
            shim_program,
            host_ip,
            start_timeout: SHIM_START_TIMEOUT,
            states: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Sets how long `start_container` waits for a freshly spawned shim to report the process
    /// running (10 s by default). A shim that is slower is left alone, and its instance kept: a
    /// retry of the same start adopts the process once the shim reports it.
    pub fn with_shim_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The directory this runtime keeps its pods in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.pod_dir(&id.pod_uid)
            .join("containers")
            .join(&id.container)
            .join(id.attempt.to_string())
    }

    fn log_path(&self, pod_uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.pod_dir(pod_uid)
            .join("logs")
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// Parses a container id and checks it belongs to `sandbox`.
    fn parse_id(&self, sandbox: &Sandbox, container_id: &str) -> Result<InstanceId, RuntimeError> {
        let id = InstanceId::parse(container_id).ok_or_else(|| {
            internal(
                "container lookup",
                format!(
                    "{container_id:?} is not a process-runtime container id \
                     (expected <pod-uid>/<container-name>/<attempt>)"
                ),
            )
        })?;
        if id.pod_uid != sandbox.pod_uid {
            return Err(internal(
                "container lookup",
                format!(
                    "container {container_id:?} does not belong to pod {:?}",
                    sandbox.pod_uid
                ),
            ));
        }
        Ok(id)
    }

    /// The instance's `state.json`: `Ok(None)` while there is none (the process has not been
    /// started), `Err` if it is corrupt. Parsed once, then served from the cache.
    async fn shim_state(&self, id: &InstanceId, dir: &Path) -> Result<Option<ShimState>, String> {
        let key = id.to_string();
        // Held across the read, so that an entry is never inserted after `forget_state` dropped
        // it for a directory removed meanwhile.
        let mut states = self.states.lock().await;
        if let Some(state) = states.get(&key) {
            return Ok(Some(*state));
        }
        let read = read_json::<ShimState>(&dir.join(STATE_FILE)).await;
        if let Ok(Some(state)) = &read {
            states.insert(key, *state);
        }
        read
    }

    /// Drops the cached state of an instance whose directory was removed.
    async fn forget_state(&self, id: &InstanceId) {
        self.states.lock().await.remove(&id.to_string());
    }

    /// Drops the cached states of every instance of a pod whose directory was removed.
    async fn forget_pod_states(&self, pod_uid: &str) {
        let prefix = format!("{pod_uid}/");
        self.states
            .lock()
            .await
            .retain(|key, _| !key.starts_with(&prefix));
    }

    /// Observes one instance directory (which must exist).
    async fn observe(&self, id: &InstanceId, dir: &Path) -> ContainerRunState {
        if let Some(state) = read_exit_state(dir).await {
            return state;
        }
        let state = match self.shim_state(id, dir).await {
            Ok(Some(state)) => state,
            Ok(None) => return observe_unstarted(dir).await,
            Err(message) => {
                let state_path = dir.join(STATE_FILE);
                warn!(path = %state_path.display(), %message, "corrupt container state file");
                return ContainerRunState::Unknown {
                    message: format!("state file {} is corrupt: {message}", state_path.display()),
                };
            }
        };
        if proc_alive(state.pid, state.proc_start_time).await {
            return ContainerRunState::Running {
                started_at_ms: state.started_at_ms,
            };
        }
        // The process is gone. Its shim records the exit as soon as it reaped it; until then the
        // last known state stands (the next poll sees the record: waiting for it here would hold
        // up every poll of every container).
        if let Some(exited) = read_exit_state(dir).await {
            return exited;
        }
        if proc_alive(state.shim_pid, state.shim_start_time).await {
            return ContainerRunState::Running {
                started_at_ms: state.started_at_ms,
            };
        }
        // The shim may have written the record and exited between the two checks above.
        if let Some(exited) = read_exit_state(dir).await {
            return exited;
        }
        ContainerRunState::Unknown {
            message: format!(
                "process {} is gone and its shim (pid {}) died without recording an exit code \
                 (the host rebooted or the shim was killed)",
                state.pid, state.shim_pid
            ),
        }
    }

    /// Every instance of a pod: (id, instance dir).
    async fn instances(&self, pod_uid: &str) -> Result<Vec<(InstanceId, PathBuf)>, RuntimeError> {
        let containers_dir = self.pod_dir(pod_uid).join("containers");
        let mut out = Vec::new();
        for (name, name_dir) in list_dirs(&containers_dir).await? {
            for (attempt_name, dir) in list_dirs(&name_dir).await? {
                let Ok(attempt) = attempt_name.parse::<u32>() else {
                    warn!(path = %dir.display(), "unexpected directory in a container's instances; skipped");
                    continue;
                };
                out.push((
                    InstanceId {
                        pod_uid: pod_uid.to_string(),
                        container: name.clone(),
                        attempt,
                    },
                    dir,
                ));
            }
        }
        out.sort_by(|a, b| {
            (a.0.container.as_str(), a.0.attempt).cmp(&(b.0.container.as_str(), b.0.attempt))
        });
        Ok(out)
    }

    async fn stop_instance(
        &self,
        id: &InstanceId,
        dir: &Path,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        if read_exit_state(dir).await.is_some() {
            return Ok(());
        }
        let state: ShimState = match self.shim_state(id, dir).await {
            Ok(Some(state)) => state,
            // A shim is still starting it (an earlier start timed out): its process could not be
            // found again once the directory is gone, so the stop is retried later.
            Ok(None) if shim_lock_held(dir) && read_exit_state(dir).await.is_none() => {
                return Err(internal(
                    "stop container",
                    format!(
                        "the shim of container {id} is still starting its process; stopping it \
                         once it has"
                    ),
                ));
            }
            // Never started, or unreadable: there is no process we could signal.
            Ok(None) | Err(_) => return Ok(()),
        };
        let running = || proc_alive(state.pid, state.proc_start_time);
        if running().await {
            info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                  grace_ms = grace.as_millis() as u64, "stopping container");
            signal_group(state.pid, Signal::SIGTERM)?;
            let deadline = deadline_after(Instant::now(), grace);
            while running().await && Instant::now() < deadline {
                if exists(&dir.join(EXIT_FILE)).await {
                    return Ok(());
                }
                sleep(STOP_POLL).await;
            }
            if running().await {
                info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      "grace period over; killing container");
                signal_group(state.pid, Signal::SIGKILL)?;
            }
        }
        // Wait for the shim to record the exit (if the shim is still around to do it).
        let deadline = deadline_after(Instant::now(), EXIT_RECORD_TIMEOUT);
        loop {
            if exists(&dir.join(EXIT_FILE)).await {
                return Ok(());
            }
            let process = running().await;
            if !process && !proc_alive(state.shim_pid, state.shim_start_time).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if process {
                    return Err(internal(
                        "stop container",
                        format!(
                            "process {} of container {} is still running {}s after SIGKILL \
                             (stuck in the kernel?)",
                            state.pid,
                            id,
                            EXIT_RECORD_TIMEOUT.as_secs()
                        ),
                    ));
                }
                warn!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      "container exited but its shim has not recorded the exit code");
                return Ok(());
            }
            sleep(STOP_POLL).await;
        }
    }

    /// Waits for a shim to report the process running or failing to start: the one just
    /// spawned (`shim`), or, with `None`, the shim of an earlier start of the same instance
    /// that is still starting it.
    async fn await_shim_start(
        &self,
        mut shim: Option<&mut tokio::process::Child>,
        id: &InstanceId,
        dir: &Path,
        container: &EdgeContainer,
        program: &str,
        path_var: &str,
    ) -> StartWait {
        let deadline = deadline_after(Instant::now(), self.start_timeout);
        // How the shim ended, once it did without a record.
        let mut shim_gone: Option<String> = None;
        loop {
            match self.shim_state(id, dir).await {
                Ok(Some(state)) => return StartWait::Started(state),
                Ok(None) => {}
                // The process may run: keep the instance, whoever retries finds it again.
                Err(message) => return StartWait::Pending(internal("start container", message)),
            }
            match read_json::<StartError>(&dir.join(START_ERROR_FILE)).await {
                Ok(Some(err)) => {
                    return StartWait::Failed(RuntimeError::CreateContainer {
                        container: container.name.clone(),
                        message: start_error_message(&err, program, path_var),
                    });
                }
                Ok(None) => {}
                Err(message) => return StartWait::Failed(internal("start container", message)),
            }
            if let Some(how) = shim_gone {
                let log = tokio::fs::read_to_string(dir.join(SHIM_LOG_FILE))
                    .await
                    .unwrap_or_default();
                return StartWait::Failed(internal(
                    "start container",
                    format!(
                        "the shim ({}) {how} before starting the process: {}",
                        self.shim_program.display(),
                        log.trim()
                    ),
                ));
            }
            // Check the files once more after the shim exited, in case it wrote them just before.
            match shim.as_deref_mut() {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => {
                        shim_gone = Some(format!("exited with {status}"));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return StartWait::Pending(internal(
                            "start container",
                            format!("cannot wait for the shim: {e}"),
                        ))
                    }
                },
                None => {
                    if let ContainerRunState::Unknown { .. } = observe_unstarted(dir).await {
                        shim_gone = Some("of an earlier start died".to_string());
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                // Not killed: it may have started the process already (in a process group of
                // its own, which would outlive it untracked). Whoever retries this start finds
                // the instance and adopts what the shim reports by then.
                return StartWait::Pending(internal(
                    "start container",
                    format!(
                        "the shim did not report the process started within {}s; the node may \
                         be overloaded (the start is adopted once the shim reports it)",
                        self.start_timeout.as_secs_f64()
                    ),
                ));
            }
            sleep(START_POLL).await;
        }
    }

    /// Turns the outcome of [`Self::await_shim_start`] into the result of a start.
    async fn finish_start(
        &self,
        id: &InstanceId,
        dir: &Path,
        wait: StartWait,
    ) -> Result<ContainerInfo, RuntimeError> {
        match wait {
            StartWait::Started(state) => {
                info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      pid = state.pid, shim_pid = state.shim_pid, "container started");
                Ok(ContainerInfo {
                    id: id.to_string(),
                    name: id.container.clone(),
                    attempt: id.attempt,
                    state: ContainerRunState::Running {
                        started_at_ms: state.started_at_ms,
                    },
                    spec_digest: recorded_digest(dir).await,
                })
            }
            StartWait::Failed(err) => {
                warn!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      error = %err, "container failed to start");
                // The instance never ran: forget it (the log keeps the shim's explanation).
                if let Err(e) = remove_dir_all_idempotent(dir).await {
                    warn!(path = %dir.display(), error = %e, "cannot remove a failed instance");
                }
                self.forget_state(id).await;
                Err(err)
            }
            StartWait::Pending(err) => {
                warn!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                      error = %err, "container start not confirmed; keeping the instance");
                Err(err)
            }
        }
    }
}

/// How waiting for a shim to start the process ended.
enum StartWait {
    /// The process runs.
    Started(ShimState),
    /// It could not be started; nothing runs, the instance can go.
    Failed(RuntimeError),
    /// Not known yet: the shim may still start it, so the instance must stay.
    Pending(RuntimeError),
}

/// What to tell the user about a program the shim could not start.
fn start_error_message(err: &StartError, program: &str, path_var: &str) -> String {
    if err.not_found {
        if program.contains('/') {
            format!(
                "program {program:?} does not exist on this node; the process runtime runs host \
                 programs (images have no entrypoint here), so `command` must name a program \
                 installed on the node"
            )
        } else {
            format!(
                "program {program:?} was not found in PATH ({path_var}); install it on the node \
                 or give its absolute path in `command`"
            )
        }
    } else {
        format!("cannot start program {program:?}: {}", err.message)
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn run_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError> {
        if !is_safe_component(&pod.uid) {
            return Err(internal(
                "run sandbox",
                format!("pod uid {:?} is not usable as a directory name", pod.uid),
            ));
        }
        let dir = self.pod_dir(&pod.uid);
        for sub in ["containers", "logs"] {
            let path = dir.join(sub);
            tokio::fs::create_dir_all(&path).await.map_err(|e| {
                internal(
                    "run sandbox",
                    format!("cannot create {}: {e}", path.display()),
                )
            })?;
        }
        let pod_file = dir.join(POD_FILE);
        match read_json::<PodRecord>(&pod_file).await {
            // The IP is the host's as it is now (it may have changed since the record was made).
            Ok(Some(record)) => {
                return Ok(Sandbox {
                    id: record.uid.clone(),
                    pod_uid: record.uid,
                    ip: self.host_ip.clone(),
                })
            }
            Ok(None) => {}
            Err(message) => {
                warn!(path = %pod_file.display(), %message, "corrupt pod record; rewriting it")
            }
        }
        let record = PodRecord {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            ip: self.host_ip.clone(),
        };
        write_json_atomic_async(pod_file, &record, 0o644)
            .await
            .map_err(|e| internal("run sandbox", e))?;
        info!(pod = %pod.key(), uid = %pod.uid, "sandbox created");
        Ok(Sandbox {
            id: pod.uid.clone(),
            pod_uid: pod.uid.clone(),
            ip: self.host_ip.clone(),
        })
    }

    /// Ready while its pod record exists: the record is what `run_sandbox` makes (and what
    /// `remove_sandbox` removes last), so a pod directory that was wiped, or a removal that was
    /// interrupted, is a sandbox to make anew.
    async fn sandbox_ready(&self, sandbox: &Sandbox) -> Result<bool, RuntimeError> {
        if !is_safe_component(&sandbox.pod_uid) {
            return Ok(false);
        }
        let record = self.pod_dir(&sandbox.pod_uid).join(POD_FILE);
        tokio::fs::try_exists(&record).await.map_err(|e| {
            internal(
                "sandbox state",
                format!("cannot tell whether {} exists: {e}", record.display()),
            )
        })
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        let create_err = |message: String| RuntimeError::CreateContainer {
            container: container.name.clone(),
            message,
        };
        if !is_safe_component(&container.name) {
            return Err(create_err(
                "the container name is not usable as a directory name".to_string(),
            ));
        }
        let id = InstanceId {
            pod_uid: sandbox.pod_uid.clone(),
            container: container.name.clone(),
            attempt: config.attempt,
        };
        let dir = self.instance_dir(&id);
        let pod_dir = self.pod_dir(&sandbox.pod_uid);
        if !self.sandbox_ready(sandbox).await? {
            return Err(RuntimeError::SandboxNotReady {
                sandbox: sandbox.id.clone(),
                pod: pod.key(),
                message: format!(
                    "there is no pod record {}",
                    pod_dir.join(POD_FILE).display()
                ),
            });
        }

        // Never start an instance twice: a restarted edgecore, or a worker whose earlier start
        // timed out, may retry a start that happened (or is still happening).
        if exists(&dir).await {
            match self.observe(&id, &dir).await {
                ContainerRunState::Running { started_at_ms } => {
                    info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                          "container instance already running; adopting it");
                    return Ok(ContainerInfo {
                        id: id.to_string(),
                        name: id.container.clone(),
                        attempt: id.attempt,
                        state: ContainerRunState::Running { started_at_ms },
                        spec_digest: recorded_digest(&dir).await,
                    });
                }
                exited @ ContainerRunState::Exited { .. } => {
                    // It ran and ended before its start was confirmed: that is its start's
                    // result (running it again would run the attempt twice).
                    info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                          "container instance already ran; reporting its exit");
                    return Ok(ContainerInfo {
                        id: id.to_string(),
                        name: id.container.clone(),
                        attempt: id.attempt,
                        state: exited,
                        spec_digest: recorded_digest(&dir).await,
                    });
                }
                ContainerRunState::Created => {
                    // The shim of an earlier start is still starting it: wait for that shim
                    // instead of starting a second process.
                    info!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                          "container instance still being started; waiting for its shim");
                    let (program, path_var) =
                        match read_json::<ShimSpec>(&dir.join(SPEC_FILE)).await {
                            Ok(Some(spec)) => {
                                let path_var = spec
                                    .env
                                    .iter()
                                    .find(|(k, _)| k == "PATH")
                                    .map(|(_, v)| v.clone())
                                    .unwrap_or_default();
                                (spec.program, path_var)
                            }
                            _ => (
                                container.command.first().cloned().unwrap_or_default(),
                                String::new(),
                            ),
                        };
                    let wait = self
                        .await_shim_start(None, &id, &dir, container, &program, &path_var)
                        .await;
                    return self.finish_start(&id, &dir, wait).await;
                }
                previous @ ContainerRunState::Unknown { .. } => {
                    if shim_lock_held(&dir) {
                        return Err(internal(
                            "start container",
                            format!(
                                "the shim of an earlier start of container {id} still runs \
                                 ({previous:?}); retrying once it ended"
                            ),
                        ));
                    }
                    warn!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt,
                          ?previous, "replacing a stale instance with the same attempt number");
                    remove_dir_all_idempotent(&dir)
                        .await
                        .map_err(|e| internal("start container", e))?;
                    self.forget_state(&id).await;
                }
            }
        }

        // Command line.
        let mut argv: Vec<String> = container
            .command
            .iter()
            .chain(container.args.iter())
            .cloned()
            .collect();
        if argv.is_empty() {
            return Err(create_err(
                "it has neither `command` nor `args`; a process-runtime container needs \
                 `command` (images have no entrypoint here): name a program installed on the node"
                    .to_string(),
            ));
        }
        let program = argv.remove(0);
        if program.is_empty() {
            return Err(create_err(
                "its program (the first word of `command`) is empty".to_string(),
            ));
        }

        // Working directory.
        let cwd = if container.working_dir.is_empty() {
            pod_dir.clone()
        } else {
            pod_dir.join(&container.working_dir)
        };
        if !tokio::fs::metadata(&cwd)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(create_err(format!(
                "working directory {} does not exist or is not a directory; create it on the \
                 node or fix `workingDir`",
                cwd.display()
            )));
        }

        // Environment.
        let volume_vars = volume_vars(&config.mounts).map_err(create_err)?;
        let env = build_env(&config.env, volume_vars, &pod.name);
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();

        // Files.
        let log_path = self.log_path(&id.pod_uid, &id.container, id.attempt);
        for d in [dir.as_path(), log_path.parent().unwrap_or(&pod_dir)] {
            tokio::fs::create_dir_all(d).await.map_err(|e| {
                internal(
                    "start container",
                    format!("cannot create {}: {e}", d.display()),
                )
            })?;
        }
        let spec = ShimSpec {
            pod_uid: id.pod_uid.clone(),
            container: id.container.clone(),
            attempt: id.attempt,
            image: container.image.clone(),
            program: program.clone(),
            args: argv,
            env,
            cwd,
            log_path,
            spec_digest: Some(container_digest(container)),
        };
        write_json_atomic_async(dir.join(SPEC_FILE), &spec, 0o600)
            .await
            .map_err(|e| internal("start container", e))?;
        // Nothing cached may describe an earlier instance with this id.
        self.forget_state(&id).await;

        // Shim.
        let shim_log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(SHIM_LOG_FILE))
            .await
            .map_err(|e| {
                internal(
                    "start container",
                    format!("cannot open the shim log in {}: {e}", dir.display()),
                )
            })?
            .into_std()
            .await;
        let mut cmd = tokio::process::Command::new(&self.shim_program);
        cmd.arg("shim")
            .arg("--container-dir")
            .arg(&dir)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shim_log)
            .process_group(0)
            .kill_on_drop(false);
        // Coverage builds write their profile wherever this says, shims included.
        if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
            cmd.env("LLVM_PROFILE_FILE", profile);
        }
        let mut shim = cmd.spawn().map_err(|e| {
            internal(
                "start container",
                format!(
                    "cannot run the shim {}: {e}; it is edgecore's own binary, check that it \
                     was not moved or deleted",
                    self.shim_program.display()
                ),
            )
        })?;
        let started = self
            .await_shim_start(Some(&mut shim), &id, &dir, container, &program, &path_var)
            .await;
        // Reap the shim whenever it exits, so that it does not linger as a zombie.
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });
        self.finish_start(&id, &dir, started).await
    }

    async fn container_state(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<ContainerRunState, RuntimeError> {
        let id = self.parse_id(sandbox, container_id)?;
        let dir = self.instance_dir(&id);
        if !is_dir(&dir).await {
            return Err(internal(
                "container state",
                format!(
                    "no container instance {container_id:?} under {}; it was removed or never \
                     started by this node's process runtime",
                    self.root.display()
                ),
            ));
        }
        Ok(self.observe(&id, &dir).await)
    }

    async fn stop_container(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let id = self.parse_id(sandbox, container_id)?;
        let dir = self.instance_dir(&id);
        // Also when its directory is gone (the pod's directory was wiped under it): the state
        // cached when it started still finds its process, which must not be left running.
        // Without directory nor cached state there is nothing to signal, and the stop succeeds.
        self.stop_instance(&id, &dir, grace).await
    }

    async fn remove_container(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<(), RuntimeError> {
        let id = self.parse_id(sandbox, container_id)?;
        let dir = self.instance_dir(&id);
        if !is_dir(&dir).await {
            self.forget_state(&id).await;
            return Ok(());
        }
        if matches!(
            self.observe(&id, &dir).await,
            ContainerRunState::Running { .. }
        ) {
            self.stop_instance(&id, &dir, Duration::ZERO).await?;
        }
        remove_dir_all_idempotent(&dir)
            .await
            .map_err(|e| internal("remove container", e))?;
        self.forget_state(&id).await;
        debug!(pod = %id.pod_uid, container = %id.container, attempt = id.attempt, "container removed");
        Ok(())
    }

    async fn remove_sandbox(&self, sandbox: &Sandbox, grace: Duration) -> Result<(), RuntimeError> {
        if !is_safe_component(&sandbox.pod_uid) {
            return Err(internal(
                "remove sandbox",
                format!("pod uid {:?} is not a directory name", sandbox.pod_uid),
            ));
        }
        let pod_dir = self.pod_dir(&sandbox.pod_uid);
        if !exists(&pod_dir).await {
            return Ok(());
        }
        let instances = self.instances(&sandbox.pod_uid).await?;
        let stops = instances
            .iter()
            .map(|(id, dir)| self.stop_instance(id, dir, grace));
        for result in futures::future::join_all(stops).await {
            // Keep the directory while something may still run: it is how we find it again.
            result?;
        }
        // Everything but the volumes, which the pod worker tears down (they may be mounts);
        // the pod record last, so that an interrupted removal is found and redone.
        let mut entries = tokio::fs::read_dir(&pod_dir).await.map_err(|e| {
            internal(
                "remove sandbox",
                format!("cannot list {}: {e}", pod_dir.display()),
            )
        })?;
        let mut doomed = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| {
            internal(
                "remove sandbox",
                format!("cannot list {}: {e}", pod_dir.display()),
            )
        })? {
            let name = entry.file_name();
            if name != "volumes" && name != POD_FILE {
                doomed.push(entry.path());
            }
        }
        doomed.push(pod_dir.join(POD_FILE));
        for path in doomed {
            let is_dir = tokio::fs::symlink_metadata(&path)
                .await
                .map(|m| m.is_dir())
                .unwrap_or(false);
            let result = if is_dir {
                remove_dir_all_idempotent(&path).await
            } else {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
                }
            };
            result.map_err(|e| internal("remove sandbox", e))?;
        }
        match tokio::fs::remove_dir(&pod_dir).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => {
                return Err(internal(
                    "remove sandbox",
                    format!("cannot remove {}: {e}", pod_dir.display()),
                ))
            }
        }
        self.forget_pod_states(&sandbox.pod_uid).await;
        info!(pod = %sandbox.pod_uid, "sandbox removed");
        Ok(())
    }

    async fn exec_sync(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<super::ExecOutput, RuntimeError> {
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
        let spec = match read_json::<ShimSpec>(&dir.join(SPEC_FILE)).await {
            Ok(Some(spec)) => spec,
            Ok(None) => {
                return Err(internal(
                    "exec",
                    format!("container {id} has no spec.json; its instance directory is damaged"),
                ))
            }
            Err(message) => {
                return Err(internal(
                    "exec",
                    format!("cannot read the spec of container {id}: {message}"),
                ))
            }
        };
        exec_in_context(&spec, command, timeout).await
    }

    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
        let mut pods = Vec::new();
        for (uid, dir) in list_dirs(&self.root).await? {
            let pod_file = dir.join(POD_FILE);
            let record = match read_json::<PodRecord>(&pod_file).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    warn!(path = %pod_file.display(), "pod directory without a pod record; skipped");
                    continue;
                }
                Err(message) => {
                    warn!(path = %pod_file.display(), %message, "corrupt pod record; skipped");
                    continue;
                }
            };
            if record.uid != uid {
                warn!(path = %pod_file.display(), record_uid = %record.uid,
                      "pod record names another uid than its directory; skipped");
                continue;
            }
            // One unreadable pod must not keep every other pod on the node from starting.
            let instances = match self.instances(&uid).await {
                Ok(instances) => instances,
                Err(e) => {
                    warn!(path = %dir.join("containers").display(), error = %e,
                          "cannot list the pod's containers; pod skipped");
                    continue;
                }
            };
            let mut containers = Vec::new();
            for (id, instance_dir) in instances {
                let state = self.observe(&id, &instance_dir).await;
                containers.push(ContainerInfo {
                    id: id.to_string(),
                    name: id.container,
                    attempt: id.attempt,
                    state,
                    spec_digest: recorded_digest(&instance_dir).await,
                });
            }
            pods.push(ExistingPod {
                sandbox: Sandbox {
                    id: record.uid.clone(),
                    pod_uid: record.uid,
                    // The host's IP as it is now, not as it was when the record was made.
                    ip: self.host_ip.clone(),
                },
                namespace: record.namespace,
                name: record.name,
                containers,
            });
        }
        Ok(pods)
    }

    async fn read_log(
        &self,
        sandbox: &Sandbox,
        container_name: &str,
        tail: Option<usize>,
    ) -> Result<String, RuntimeError> {
        let no_log = || {
            internal(
                "read log",
                format!(
                    "no log exists for container {container_name:?} of pod {:?}; it has not \
                     been started on this node (or the pod was removed)",
                    sandbox.pod_uid
                ),
            )
        };
        if !is_safe_component(container_name) || !is_safe_component(&sandbox.pod_uid) {
            return Err(no_log());
        }
        let dir = self
            .pod_dir(&sandbox.pod_uid)
            .join("logs")
            .join(container_name);
        let path = super::newest_attempt_log(&dir)
            .await
            .map_err(|e| internal("read log", format!("cannot list {}: {e}", dir.display())))?
            .ok_or_else(no_log)?;
        tokio::task::spawn_blocking(move || {
            tail_file(&path, tail)
                .map_err(|e| internal("read log", format!("cannot read {}: {e}", path.display())))
        })
        .await
        .map_err(|e| internal("read log", format!("log reader failed: {e}")))?
    }
}

// ---------------------------------------------------------------------------------------------
// The shim.

/// Arguments of the hidden `shim` subcommand of the edgecore binary. The process runtime runs
/// `<edgecore> shim --container-dir <dir>`; everything else the shim needs is in
/// `<dir>/spec.json`, written by the runtime.
#[derive(Debug, Clone, clap::Args)]
pub struct ShimArgs {
    /// The container instance's directory: holds spec.json; state.json and exit.json are
    /// written there.
    #[arg(long)]
    pub container_dir: PathBuf,
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

    let mut command = std::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
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
            write_json_atomic(&dir.join(START_ERROR_FILE), &record, 0o644)
                .map_err(io_err("write start-error.json"))?;
            return Ok(ExitCode::from(127));
        }
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
    let signal = status.signal();
    let exit_code = match (status.code(), signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let record = ExitRecord {
        exit_code,
        signal,
        started_at_ms,
        finished_at_ms,
    };
    write_json_atomic(&dir.join(EXIT_FILE), &record, 0o644).map_err(io_err("write exit.json"))?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Exec.

/// Output `exec_sync` keeps of each stream: plenty for a probe's message, and a command that
/// prints without end cannot fill edgecore's memory.
const EXEC_OUTPUT_LIMIT: usize = 4096;
/// How long `exec_sync` waits, after the command ended, for the rest of its output (a process
/// that left the command's process group may hold the pipes open).
const EXEC_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

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
async fn exec_in_context(
    spec: &ShimSpec,
    command: &[String],
    timeout: Duration,
) -> Result<super::ExecOutput, RuntimeError> {
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
            return Ok(super::ExecOutput {
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
    Ok(super::ExecOutput {
        exit_code,
        stdout,
        stderr,
        timed_out,
    })
}

/// SIGKILLs the process group led by the pid it holds when dropped.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`EXEC_OUTPUT_LIMIT`] bytes in `keep`.
async fn read_limited(pipe: Option<impl tokio::io::AsyncRead + Unpin>, keep: &mut Vec<u8>) {
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

/// `pod.json`.
#[derive(Debug, Serialize, Deserialize)]
struct PodRecord {
    namespace: String,
    name: String,
    uid: String,
    ip: String,
}

/// `spec.json`: everything the shim needs.
#[derive(Debug, Serialize, Deserialize)]
struct ShimSpec {
    pod_uid: String,
    container: String,
    attempt: u32,
    image: String,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log_path: PathBuf,
    /// [`container_digest`] of the container the instance was started from; absent in the
    /// spec.json of instances started before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec_digest: Option<String>,
}

/// Re-exported from [`super::container_digest`], where it moved when a second runtime needed it.
pub use super::container_digest;

/// The digest recorded in an instance's spec.json, if any.
async fn recorded_digest(dir: &Path) -> Option<String> {
    read_json::<ShimSpec>(&dir.join(SPEC_FILE))
        .await
        .ok()
        .flatten()
        .and_then(|spec| spec.spec_digest)
}

/// `state.json`. Start times (field 22 of `/proc/<pid>/stat`, 0 if unknown) guard against pid
/// reuse after the process is gone.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ShimState {
    shim_pid: u32,
    shim_start_time: u64,
    pid: u32,
    proc_start_time: u64,
    started_at_ms: u64,
}

/// `exit.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ExitRecord {
    exit_code: i32,
    signal: Option<i32>,
    started_at_ms: u64,
    finished_at_ms: u64,
}

/// `start-error.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StartError {
    message: String,
    not_found: bool,
}

/// A parsed container id, `<pod-uid>/<container-name>/<attempt>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InstanceId {
    pod_uid: String,
    container: String,
    attempt: u32,
}

impl InstanceId {
    fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('/');
        let (uid, name, attempt) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !is_safe_component(uid) || !is_safe_component(name) {
            return None;
        }
        Some(Self {
            pod_uid: uid.to_string(),
            container: name.to_string(),
            attempt: attempt.parse().ok()?,
        })
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.pod_uid, self.container, self.attempt)
    }
}

fn internal(op: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal {
        op: op.to_string(),
        message: message.into(),
    }
}

/// Whether `s` can be used as one path component without escaping its parent.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// The `SKERRY_VOLUME_*` variables of a container's mounts (see the module docs); the message
/// of a `CreateContainerError` when two cannot be told apart.
fn volume_vars(mounts: &[super::Mount]) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    // (variable, volume) of the mounts seen so far.
    let mut seen: Vec<(String, &str)> = Vec::new();
    for mount in mounts {
        let var = volume_env_name(&mount.volume);
        let value = mount.host_path.to_string_lossy().into_owned();
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == var) {
            if *other != mount.volume {
                return Err(format!(
                    "volumes {other:?} and {:?} would both be passed in the environment \
                     variable {var}; rename one of them (every character other than a letter \
                     or digit becomes `_`)",
                    mount.volume
                ));
            }
            if vars.iter().any(|(k, v)| *k == var && *v == value) {
                continue; // The same volume mounted twice: one variable is enough.
            }
            return Err(format!(
                "volume {:?} is mounted twice with different subPaths, but the process runtime \
                 passes one path per volume (in {var}); mount it once",
                mount.volume
            ));
        }
        seen.push((var.clone(), &mount.volume));
        vars.push((var, value));
    }
    Ok(vars)
}

fn volume_env_name(volume: &str) -> String {
    let name: String = volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SKERRY_VOLUME_{name}")
}

/// The container's complete environment: the resolved env, then the volume variables, `PATH` and
/// `HOSTNAME` where the pod does not set them. A name set twice keeps its first position and its
/// last value, as Kubernetes does.
fn build_env(
    resolved: &[(String, String)],
    volume_vars: Vec<(String, String)>,
    pod_name: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in resolved {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(entry) => entry.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    let defaults = volume_vars.into_iter().chain([
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOSTNAME".to_string(), pod_name.to_string()),
    ]);
    for (k, v) in defaults {
        if !env.iter().any(|(name, _)| *name == k) {
            env.push((k, v));
        }
    }
    env
}

/// Whether a shim holds the instance's lock (it is alive).
fn shim_lock_held(dir: &Path) -> bool {
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

/// State of an instance with no `state.json`.
async fn observe_unstarted(dir: &Path) -> ContainerRunState {
    if let Ok(Some(err)) = read_json::<StartError>(&dir.join(START_ERROR_FILE)).await {
        return ContainerRunState::Unknown {
            message: format!("the process could not be started: {}", err.message),
        };
    }
    let age = tokio::fs::metadata(dir.join(SPEC_FILE))
        .await
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    // A shim holds its lock from its first instant to its exit: a free lock on an instance
    // older than the grace means no shim will ever report this start (edgecore died between
    // writing the spec and spawning the shim, or the shim was killed).
    let shim_alive = shim_lock_held(dir);
    match age {
        Some(age) if shim_alive && age < STALE_CREATED_AFTER => ContainerRunState::Created,
        Some(age) if age < SHIM_LOCK_GRACE => ContainerRunState::Created,
        _ => ContainerRunState::Unknown {
            message: "the shim never reported the process started (edgecore or the shim died \
                      during the start)"
                .to_string(),
        },
    }
}

/// The exit record as a state, if there is one (a corrupt one is reported `Unknown`).
async fn read_exit_state(dir: &Path) -> Option<ContainerRunState> {
    let path = dir.join(EXIT_FILE);
    match read_json::<ExitRecord>(&path).await {
        Ok(Some(exit)) => Some(ContainerRunState::Exited {
            exit_code: exit.exit_code,
            signal: exit.signal,
            reason: if exit.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string(),
            started_at_ms: exit.started_at_ms,
            finished_at_ms: exit.finished_at_ms,
        }),
        Ok(None) => None,
        Err(message) => {
            warn!(path = %path.display(), %message, "corrupt exit record");
            Some(ContainerRunState::Unknown {
                message: format!("exit record {} is corrupt: {message}", path.display()),
            })
        }
    }
}

/// Reads a JSON record: `Ok(None)` if the file does not exist, `Err` naming the problem if it
/// cannot be read or parsed.
async fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `value` as JSON to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T, mode: u32) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

async fn write_json_atomic_async<T: Serialize>(
    path: PathBuf,
    value: &T,
    mode: u32,
) -> Result<(), String> {
    let bytes = serde_json::to_value(value).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        write_json_atomic(&path, &bytes, mode)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    })
    .await
    .map_err(|e| format!("writer task failed: {e}"))?
}

async fn remove_dir_all_idempotent(dir: &Path) -> Result<(), String> {
    // A shim that is just exiting may still touch its directory: retry a few times.
    let mut tries = 0;
    loop {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 5 => {
                debug!(path = %dir.display(), error = %e, "retrying removal");
                tries += 1;
                sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
}

/// Whether `path` exists (without blocking the async thread).
async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

/// Whether `path` is a directory (without blocking the async thread).
async fn is_dir(path: &Path) -> bool {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

/// Subdirectories of `dir` with their names (none if `dir` does not exist).
async fn list_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, RuntimeError> {
    let list_err = |e: io::Error| internal("list", format!("cannot list {}: {e}", dir.display()));
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(list_err)? {
        let is_dir = entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(name) => out.push((name, entry.path())),
            Err(name) => {
                warn!(path = %dir.join(name).display(), "non-UTF-8 directory name; skipped")
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sends `signal` to the process group led by `pid`; a group that is gone is fine.
fn signal_group(pid: u32, signal: Signal) -> Result<(), RuntimeError> {
    match killpg(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(internal(
            "stop container",
            format!("cannot send {signal} to process group {pid}: {e}"),
        )),
    }
}

/// Parses `/proc/<pid>/stat`: (state, start time).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) is parenthesised and may contain anything, so fields are
    // counted after its last ')'. Field 3 is the state, field 22 the start time.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn proc_start_time_sync(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Whether `pid` is a live (not zombie) process started at `start_time` (0: not checked).
async fn proc_alive(pid: u32, start_time: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await else {
        return false;
    };
    match parse_stat(&stat) {
        Some((state, start)) => {
            !matches!(state, 'Z' | 'X' | 'x') && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}

/// The last `tail` lines of a file (all of it if `None`).
fn tail_file(path: &Path, tail: Option<usize>) -> io::Result<String> {
    let mut f = File::open(path)?;
    let Some(n) = tail else {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    };
    if n == 0 {
        return Ok(String::new());
    }
    const CHUNK: u64 = 64 * 1024;
    let mut pos = f.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    let start = loop {
        // Newlines that end one of the wanted lines: all but a final one at the end of the file.
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Some(i) = body
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, b)| **b == b'\n')
            .nth(n - 1)
            .map(|(i, _)| i)
        {
            break i + 1;
        }
        if pos == 0 {
            break 0;
        }
        let len = CHUNK.min(pos);
        pos -= len;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0; len as usize];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    };
    Ok(String::from_utf8_lossy(&buf[start..]).into_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn container_ids_round_trip_and_reject_traversal() {
        let id = InstanceId::parse("uid-1/main/3").expect("valid id");
        assert_eq!(id.to_string(), "uid-1/main/3");
        assert!(InstanceId::parse("../main/3").is_none());
        assert!(InstanceId::parse("uid/main").is_none());
        assert!(InstanceId::parse("uid/main/x").is_none());
        assert!(InstanceId::parse("uid/main/1/2").is_none());
    }

    #[test]
    fn env_keeps_first_position_and_last_value_and_adds_defaults() {
        let env = build_env(
            &[
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
                ("A".into(), "3".into()),
                ("HOSTNAME".into(), "mine".into()),
            ],
            vec![("SKERRY_VOLUME_DATA".into(), "/d".into())],
            "pod",
        );
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "3".to_string()),
                ("B".into(), "2".into()),
                ("HOSTNAME".into(), "mine".into()),
                ("SKERRY_VOLUME_DATA".into(), "/d".into()),
                ("PATH".into(), DEFAULT_PATH.into()),
            ]
        );
        assert_eq!(volume_env_name("my-vol.1"), "SKERRY_VOLUME_MY_VOL_1");
    }

    #[test]
    fn tail_counts_lines_not_a_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail_file(&path, Some(2)).expect("tail"), "b\nc\n");
        assert_eq!(tail_file(&path, Some(5)).expect("tail"), "a\nb\nc\n");
        assert_eq!(tail_file(&path, None).expect("tail"), "a\nb\nc\n");
        assert_eq!(tail_file(&path, Some(0)).expect("tail"), "");
        std::fs::write(&path, "a\nb\nc").expect("write");
        assert_eq!(tail_file(&path, Some(1)).expect("tail"), "c");
        let big: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &big).expect("write");
        assert_eq!(
            tail_file(&path, Some(2)).expect("tail"),
            "line 99998\nline 99999\n"
        );
    }

    fn exec_spec(cwd: &Path, env: &[(&str, &str)]) -> ShimSpec {
        ShimSpec {
            pod_uid: "uid".into(),
            container: "main".into(),
            attempt: 0,
            image: "local".into(),
            program: "sleep".into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: cwd.to_path_buf(),
            log_path: cwd.join("log"),
            spec_digest: None,
        }
    }

    fn words(command: &[&str]) -> Vec<String> {
        command.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn exec_runs_with_the_containers_environment_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = exec_spec(dir.path(), &[("PATH", DEFAULT_PATH), ("GREETING", "hi")]);
        let out = exec_in_context(
            &spec,
            &words(&["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
        assert_eq!(out.exit_code, 3);
        assert!(!out.timed_out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let cwd = dir.path().canonicalize().expect("canonical");
        assert_eq!(stdout, format!("hi\n{}\n", cwd.display()));
        assert_eq!(out.stderr, b"oops\n");
        // edgecore's own environment does not leak in.
        let out = exec_in_context(&spec, &words(&["env"]), Duration::from_secs(10))
            .await
            .expect("exec");
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("GREETING=hi"), "{env}");
        assert!(!env.contains("CARGO"), "{env}");
    }

    #[tokio::test]
    async fn exec_truncates_output_and_kills_the_group_at_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = exec_spec(dir.path(), &[("PATH", DEFAULT_PATH)]);
        let out = exec_in_context(
            &spec,
            &words(&["sh", "-c", "head -c 100000 /dev/zero"]),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
        assert_eq!((out.exit_code, out.stdout.len()), (0, EXEC_OUTPUT_LIMIT));

        // A child of the command, writing its pid first, is killed with it.
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let out = exec_in_context(
            &spec,
            &words(&["sh", "-c", &script]),
            Duration::from_millis(300),
        )
        .await
        .expect("exec");
        assert!(out.timed_out);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_alive(pid, 0).await {
            assert!(Instant::now() < deadline, "the exec's child {pid} survived");
            sleep(Duration::from_millis(20)).await;
        }

        // The same when the exec is cancelled (its probe was) before the timeout.
        std::fs::remove_file(&pid_file).expect("remove");
        let exec = tokio::spawn(async move {
            let command = words(&["sh", "-c", &script]);
            exec_in_context(&spec, &command, Duration::from_secs(60)).await
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the exec never ran");
            sleep(Duration::from_millis(20)).await;
        };
        exec.abort();
        while proc_alive(pid, 0).await {
            assert!(
                Instant::now() < deadline,
                "the child {pid} of a cancelled exec survived"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn exec_of_a_missing_program_fails_like_a_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The container's PATH is used, not edgecore's: `sh` is not found in an empty one.
        let spec = exec_spec(dir.path(), &[("PATH", "/nonexistent")]);
        let out = exec_in_context(&spec, &words(&["sh", "-c", "true"]), Duration::from_secs(5))
            .await
            .expect("exec");
        assert_eq!(out.exit_code, 127);
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run \"sh\""));
        assert!(exec_in_context(&spec, &[], Duration::from_secs(5))
            .await
            .is_err());
    }
}
