//! The `process` runtime: every container is a native process on the host.
//!
//! It exists for hardware-in-the-loop rigs and small machines without containerd: the workload is a
//! program installed on the node, started with the pod's environment and arguments, supervised
//! like a container (state, exit codes, logs, graceful stop, adoption after an edgecore restart).
//! There is little isolation: no network or pid namespace, no image (the image reference only
//! labels the container). What it does honour or refuses:
//!
//! - **Limits**: every instance of a container with limits runs in cgroups of its own under
//!   edgecore's cgroup, with the container's cpu and memory limits applied (cgroup v1 and v2, see [`cgroup`]); an instance
//!   the kernel's OOM killer hit exits with reason `OOMKilled`. Where limits cannot be applied
//!   (edgecore not root, no memory or cpu controller), a pod with limits is refused before it
//!   starts ([`Runtime::check_runnable`]), never run unlimited.
//! - **Read-only mounts**: run as root, the program gets a mount namespace of its own in which
//!   the host paths of its read-only mounts (`readOnly: true`, and every configMap and secret
//!   volume) are read-only bind mounts; writes there fail with `EROFS`. Not root, a pod with a
//!   `readOnly` mount is refused before it starts; its configMap and secret volumes (read-only
//!   in Kubernetes without the pod asking) stay writable to the program then.
//! - **securityContext** (see [`security`]): `runAsUser`, `runAsGroup`, `supplementalGroups`
//!   and `fsGroup` are honoured when edgecore runs as root (the enter step switches to them),
//!   `allowPrivilegeEscalation: false` always (`no_new_privs`), `runAsNonRoot` is checked
//!   against the user the program runs as; `privileged`, `capabilities`,
//!   `readOnlyRootFilesystem`, seccomp and AppArmor profiles other than `Unconfined`, and
//!   `sysctls` are refused before the pod starts ([`Runtime::check_runnable`]).
//! - `kubectl exec` runs its command outside the container's cgroups and mount namespace (as
//!   the container's uid and gid).
//!
//! # DNS
//!
//! The processes use the host's `/etc/resolv.conf`: a native process's resolver cannot be set
//! per pod. `dnsPolicy: Default` is that, and so is `ClusterFirst` (a pod on the host's network
//! gets `Default` in Kubernetes too); `ClusterFirstWithHostNet`, `None` and a `dnsConfig` are
//! refused when a container starts (`CreateContainerError`, with the reason), never ignored.
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

pub(crate) mod cgroup;
mod enter;
mod env;
mod exec;
mod interactive;
mod layout;
mod procfs;
mod record;
mod security;
mod shim;
mod start;
mod supervise;
#[cfg(test)]
mod tests;

pub use record::container_digest;
pub use shim::{shim_main, ShimArgs, ShimError};

use layout::{exists, is_dir, is_safe_component, list_dirs, remove_dir_all_idempotent, InstanceId};
use record::{read_json, recorded_digest, write_json_atomic_async, PodRecord, ShimState, POD_FILE};

use super::{
    ContainerConfig, ContainerInfo, ContainerRunState, ExistingPod, Runtime, RuntimeError, Sandbox,
};
use async_trait::async_trait;
use protocol::pod::{EdgeContainer, EdgePod};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// How old an empty instance cgroup must be to be taken for one a killed shim left.
const STALE_CGROUP_AGE: Duration = Duration::from_secs(60);

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
    /// What the host offers for the instances' cgroups, read once at start.
    cgroups: cgroup::CgroupHost,
    /// Whether shims can make mount namespaces (edgecore runs as root) for read-only mounts.
    can_mount: bool,
}

impl ProcessRuntime {
    /// A runtime keeping its pods under `root` (`<data-dir>/pods`), starting shims as
    /// `<shim_program> shim ...` (the daemon passes `std::env::current_exe()`, whose `shim`
    /// subcommand calls [`shim_main`]), and reporting `host_ip` as every pod's IP, since processes
    /// share the host's network.
    pub fn new(root: PathBuf, shim_program: PathBuf, host_ip: String) -> Self {
        let cgroups = cgroup::CgroupHost::detect();
        let swept = cgroups.sweep_stale(STALE_CGROUP_AGE);
        if swept > 0 {
            info!(
                swept,
                "removed cgroups left by containers whose shim was killed"
            );
        }
        Self {
            root,
            shim_program,
            host_ip,
            start_timeout: SHIM_START_TIMEOUT,
            states: Arc::new(Mutex::new(HashMap::new())),
            cgroups,
            can_mount: nix::unistd::geteuid().is_root(),
        }
    }

    /// [`Runtime::check_runnable`]: what of `pod` this host cannot honour, first problem
    /// first.
    pub(super) fn check_pod(&self, pod: &EdgePod) -> Result<(), String> {
        if !pod.hosts.aliases.is_empty() && !self.can_mount {
            return Err("the pod has hostAliases, which the process runtime can honour only when edgecore runs as root (the pod's hosts file bound over /etc/hosts in the container's own mount namespace)".into());
        }
        let me = security::Identity::current();
        for c in pod.all_containers() {
            if let Some(message) = security::refusal(pod, c, me) {
                return Err(message);
            }
        }
        for c in pod.all_containers() {
            self.cgroups
                .container_spec("check", &c.resources)
                .map_err(|e| format!("container {:?}: {e}", c.name))?;
            if let Some(m) = c.volume_mounts.iter().find(|m| m.read_only) {
                if !self.can_mount {
                    return Err(format!(
                        "container {:?}: its mount of volume {:?} is readOnly, which the process runtime can honour only when edgecore runs as root (a read-only bind mount in the container's own mount namespace)",
                        c.name, m.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Removes the cgroups recorded in an instance's spec.json (the shim removes them when
    /// the program exits; this covers a shim that died first).
    async fn remove_instance_cgroups(dir: &Path) -> Result<(), RuntimeError> {
        let spec = read_json::<record::ShimSpec>(&dir.join(record::SPEC_FILE))
            .await
            .ok()
            .flatten();
        let Some(cgroup) = spec.and_then(|s| s.cgroup) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .map_err(|e| internal("remove container", e.to_string()))?
            .map_err(|e| internal("remove container", e))
    }

    /// Gives the containers no cgroups (`--process-cgroups=false`): a pod with limits is
    /// refused, saying so.
    pub fn without_cgroups(mut self) -> Self {
        self.cgroups = cgroup::CgroupHost::disabled(
            "cgroups are turned off on this node (edgecore --process-cgroups=false)",
        );
        self
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
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://{}", env!("CARGO_PKG_VERSION"))
    }

    /// Ready while its root directory (where every container's records and logs go) is a
    /// writable directory and its shim program exists; pods use the host's network.
    async fn status(&self) -> Result<crate::runtime::RuntimeStatus, RuntimeError> {
        let probe = self.root.join(".status-probe");
        let write = async {
            tokio::fs::create_dir_all(&self.root).await?;
            tokio::fs::write(&probe, b"ok").await
        };
        let runtime_ready = match write.await {
            Ok(()) => match tokio::fs::metadata(&self.shim_program).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the shim program {} is not there: {e}",
                    self.shim_program.display()
                )),
            },
            Err(e) => Err(format!("cannot write under {}: {e}", self.root.display())),
        };
        Ok(crate::runtime::RuntimeStatus {
            runtime_ready,
            network_ready: Ok(()),
        })
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

    fn check_runnable(&self, pod: &EdgePod) -> Result<(), String> {
        self.check_pod(pod)
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        if let Some(message) = crate::runtime::dns::process_runtime_refusal(pod) {
            return Err(RuntimeError::CreateContainer {
                container: container.name.clone(),
                message,
            });
        }
        self.start_instance(sandbox, pod, container, config).await
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
        Self::remove_instance_cgroups(&dir).await?;
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
        for (_, dir) in &instances {
            Self::remove_instance_cgroups(dir).await?;
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
    ) -> Result<crate::runtime::ExecOutput, RuntimeError> {
        self.exec_instance(sandbox, container_id, command, timeout)
            .await
    }

    /// Pods of this runtime share the host's network: the host's `localhost`.
    async fn connect_port(
        &self,
        _sandbox: &Sandbox,
        port: u16,
    ) -> Result<tokio::net::TcpStream, RuntimeError> {
        crate::runtime::port::connect_localhost(None, port)
            .await
            .map_err(|message| RuntimeError::Internal {
                op: "port-forward".into(),
                message,
            })
    }

    async fn exec(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        spec: &crate::runtime::ExecSpec,
    ) -> Result<crate::runtime::ExecProcess, RuntimeError> {
        self.exec_interactive(sandbox, container_id, spec).await
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
                    image_pull: None,
                    image_id: None,
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
        let path = crate::runtime::newest_attempt_log(&dir)
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

fn internal(op: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal {
        op: op.to_string(),
        message: message.into(),
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
