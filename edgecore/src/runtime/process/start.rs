//! Starting a container instance: writing its spec, spawning its shim and waiting for the shim
//! to report the process running (or adopting what an earlier, slow shim of the same attempt
//! reports). Apart from the rest because a start is the one multi-step protocol with the shim.

use super::cgroup::instance_name;
use super::env::{build_env, volume_vars};
use super::layout::{exists, is_safe_component, remove_dir_all_idempotent, InstanceId};
use super::record::{
    read_json, recorded_digest, write_json_atomic_async, ShimSpec, ShimState, StartError, POD_FILE,
    SHIM_LOG_FILE, SPEC_FILE, START_ERROR_FILE,
};
use super::shim::shim_lock_held;
use super::supervise::observe_unstarted;
use super::{container_digest, internal, ProcessRuntime, START_POLL};
use crate::runtime::{
    deadline_after, ContainerConfig, ContainerInfo, ContainerRunState, Runtime, RuntimeError,
    Sandbox,
};
use protocol::pod::{EdgeContainer, EdgePod};
use std::path::Path;
use std::process::Stdio;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

impl ProcessRuntime {
    /// [`Runtime::start_container`]: writes the instance's spec, spawns its shim and waits for
    /// the shim to report the process (or adopts what an earlier shim of the attempt reports).
    pub(super) async fn start_instance(
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
        // The shim gives a container /dev/null for stdin and its log for output, and keeps
        // nothing a later `kubectl attach -i/-t` could join: a container asking for either is
        // refused here, in its status, rather than run without what it asked for.
        if container.stdin || container.tty {
            return Err(create_err(
                "the process runtime cannot keep a container's stdin or terminal open \
                 (stdin/tty); run it on a node with the cri runtime, or use kubectl exec -it \
                 beside it"
                    .to_string(),
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
                        image_pull: None,
                        image_id: None,
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
                        image_pull: None,
                        image_id: None,
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
        let env = build_env(&config.env, volume_vars, &pod.hosts.hostname(&pod.name));
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
        // cgroups and read-only mounts (see `super::cgroup` and the module docs).
        let cgroup = self
            .cgroups
            .container_spec(
                &instance_name(&id.pod_uid, &id.container, id.attempt),
                &container.resources,
            )
            .map_err(create_err)?;
        let read_only_paths = read_only_paths(&config.mounts, self.can_mount);
        let hosts_file = self.write_hosts_file(pod, &pod_dir).await?;
        let spec = ShimSpec {
            cgroup,
            read_only_paths,
            hosts_file,
            user: super::security::process_user(container, super::security::Identity::current()),
            no_new_privs: container.security.as_ref().is_some_and(|s| s.no_new_privs),
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

    /// Waits for a shim to report the process running or failing to start: the one just
    /// spawned (`shim`), or, with `None`, the shim of an earlier start of the same instance
    /// that is still starting it.
    pub(super) async fn await_shim_start(
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
    pub(super) async fn finish_start(
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
                    image_pull: None,
                    image_id: None,
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
pub(super) enum StartWait {
    /// The process runs.
    Started(ShimState),
    /// It could not be started; nothing runs, the instance can go.
    Failed(RuntimeError),
    /// Not known yet: the shim may still start it, so the instance must stay.
    Pending(RuntimeError),
}

/// What to tell the user about a program the shim could not start.
pub(super) fn start_error_message(err: &StartError, program: &str, path_var: &str) -> String {
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

impl ProcessRuntime {
    /// Writes `<pod dir>/etc-hosts` for a pod with `hostAliases`: the host's `/etc/hosts`
    /// (pods of this runtime are on the host's network and have its names, as host-network
    /// pods have in Kubernetes) followed by the aliases, read afresh at each start. `None`
    /// for a pod without aliases, whose program sees the host's file itself.
    async fn write_hosts_file(
        &self,
        pod: &EdgePod,
        pod_dir: &std::path::Path,
    ) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        if pod.hosts.aliases.is_empty() {
            return Ok(None);
        }
        let host = match tokio::fs::read_to_string(HOST_HOSTS).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(internal(
                    "start container",
                    format!("cannot read the host's {HOST_HOSTS}: {e}"),
                ))
            }
        };
        let path = pod_dir.join(HOSTS_FILE);
        let text = pod.hosts.host_network_hosts_file(&host);
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            wire::durable::write_atomic_existing_dir(&target, text.as_bytes(), 0o644)
        })
        .await
        .map_err(|e| internal("start container", e.to_string()))?
        .map_err(|e| internal("start container", e.to_string()))?;
        Ok(Some(path))
    }
}

/// The host's hosts file, the base of a process pod's.
const HOST_HOSTS: &str = "/etc/hosts";
/// A process pod's hosts file, in its pod directory.
const HOSTS_FILE: &str = "etc-hosts";

/// The host paths of `mounts` a container sees read-only: all read-only ones when edgecore can
/// make mount namespaces (`can_mount`, as root); else none (a pod asking for `readOnly` is
/// refused before it starts, see [`ProcessRuntime::check_pod`]).
pub(super) fn read_only_paths(
    mounts: &[crate::runtime::Mount],
    can_mount: bool,
) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    for m in mounts.iter().filter(|m| m.read_only && can_mount) {
        if !out.contains(&m.host_path) {
            out.push(m.host_path.clone());
        }
    }
    out
}
