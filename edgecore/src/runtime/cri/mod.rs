//! The `cri` runtime: every pod is a containerd pod sandbox, driven over the Kubernetes Container
//! Runtime Interface (runtime.v1) on containerd's unix socket, as kubelet drives it.
//!
//! # What it guarantees
//!
//! - **Only its own pods.** Every sandbox and container carries this edgecore's instance id
//!   ([`spec::LABEL_INSTANCE`], kept in `<data-dir>/runtime-instance`), and every listing filters
//!   on it: two edgecores (or an edgecore and a kubelet) sharing one containerd never see, adopt
//!   or remove each other's pods.
//! - **Idempotent starts.** Sandboxes and container instances are found again by their labels
//!   (pod uid, container name, attempt) before anything is created, so a start retried after a
//!   timeout, or by an edgecore restarted mid-start, adopts what the first one created instead of
//!   creating a duplicate.
//! - **Bounded calls.** Every RPC has a deadline (see [`conn`]); a hung containerd turns into
//!   errors naming its socket, never into a pod worker that waits forever. The connection is
//!   re-established transparently when containerd restarts; running pods survive that.
//! - **Dead sandboxes are replaced.** A sandbox that is not ready (its host rebooted, or its
//!   sandbox process died) cannot run containers. [`Runtime::list_pods`] does not report it (so
//!   the pod is started afresh) and both it and [`Runtime::run_sandbox`] remove it, with its
//!   containers (not their logs), before a new sandbox is made. While edgecore runs,
//!   [`Runtime::sandbox_ready`] and [`RuntimeError::SandboxNotReady`] from
//!   [`Runtime::start_container`] tell the pod worker, which then replaces it.
//!
//! # Layout
//!
//! Logs live under the edgecore data dir, not containerd's: `<data-dir>/pods/<uid>/logs` is the
//! sandbox's log directory and `<name>/<attempt>.log` each instance's log, in the CRI log format
//! (see [`logs`]); `edgecore logs` reads them without containerd's help. containerd appends to
//! them forever, so the agent rotates them ([`CriRuntime::spawn_log_rotation`], as kubelet does):
//! a log over its size limit becomes `<attempt>.log.1` (replacing the previous one) and
//! containerd reopens a fresh `<attempt>.log`, so a chatty container holds at most about twice
//! the limit of disk.
//!
//! # Images
//!
//! `imagePullPolicy` is honoured as kubelet does (`ImageStatus` first, `PullImage` when the policy
//! asks), with one deliberate difference: with `Always`, a failed pull of an image that is
//! present falls back to the local copy (with a warning). An edge node must restart its pods
//! while its registry is unreachable; failing them would turn every network outage into an
//! outage of the workloads.

pub mod conn;
pub mod logs;
pub mod spec;

mod attach;
mod container;
mod exec;
mod hosts;
mod image;
mod portforward;
mod rotation;
mod sandbox;
mod status;
#[cfg(test)]
mod tests;

use rotation::rotated_path;
pub use rotation::LogRotation;
use sandbox::{ip_of, ready};

use self::conn::{CallError, Conn};
use self::spec::LABEL_POD_UID;
use super::dns::NetworkSource;
use super::{
    ContainerConfig, ContainerInfo, ContainerRunState, ExecOutput, ExistingPod, Runtime,
    RuntimeError, Sandbox,
};
use async_trait::async_trait;
use k8s_cri::v1 as cri;
use protocol::pod::{EdgeContainer, EdgePod};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tracing::{info, warn};

/// containerd's socket where Debian and upstream packages put it.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// File in the data dir holding this edgecore's runtime instance id.
pub const INSTANCE_FILE: &str = "runtime-instance";
/// Default deadline of one RPC: kubelet's default runtime request timeout.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// Default deadline of one image pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// CRI API version edgecore speaks, sent with `Version`.
const CRI_API_VERSION: &str = "0.1.0";
/// Output kept of an `exec_sync`, per stream (kubelet keeps 10 KiB of probe output).
const EXEC_OUTPUT_LIMIT: usize = 10 * 1024;
/// cgroup v1 file that exists when the kernel accounts swap per cgroup.
const MEMSW_FILE: &str = "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes";

/// The host's resolver configuration, as kubelet's `--resolv-conf` defaults.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Settings of a [`CriRuntime`].
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// containerd's socket.
    pub socket: PathBuf,
    /// `<data-dir>/pods`: pod log directories live below it.
    pub pods_root: PathBuf,
    /// This edgecore's instance id (see [`load_instance_id`]).
    pub instance: String,
    /// Deadline of one RPC (stops and execs get theirs on top of it).
    pub rpc_timeout: Duration,
    /// Deadline of one image pull.
    pub pull_timeout: Duration,
    /// The host's resolver configuration (kubelet's `--resolv-conf`), read for each sandbox.
    pub resolv_conf: PathBuf,
    /// The node's cluster DNS settings, for `ClusterFirst` pods.
    pub network: NetworkSource,
}

impl CriConfig {
    /// Settings with the default deadlines.
    pub fn new(socket: PathBuf, pods_root: PathBuf, instance: String) -> Self {
        Self {
            socket,
            pods_root,
            instance,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            network: NetworkSource::none(),
        }
    }
}

/// The instance id of the edgecore whose data dir is `data_dir`: read from
/// `<data-dir>/runtime-instance`, created (random, written atomically) on first use. It is tied
/// to the data dir, not the host or node name, because the data dir is what holds the pods'
/// desired state: a second edgecore with its own data dir is another instance.
pub fn load_instance_id(data_dir: &Path) -> Result<String, RuntimeError> {
    let path = data_dir.join(INSTANCE_FILE);
    let err = |message: String| RuntimeError::Internal {
        op: "runtime instance id".into(),
        message,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err(format!(
                    "{} holds {id:?}, not an instance id; restore it (or delete it, and edgecore \
                     will no longer recognise the pods it ran)",
                    path.display()
                )));
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| err(format!("cannot create {}: {e}", data_dir.display())))?;
            let id = hex::encode(rand::random::<[u8; 8]>());
            crate::identity::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)
                .map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Runs pods in containerd through CRI (see the module docs).
#[derive(Debug, Clone)]
pub struct CriRuntime {
    conn: Conn,
    instance: String,
    pods_root: PathBuf,
    version: String,
    pull_timeout: Duration,
    /// Whether swap can be capped per container (cgroup v1 with swap accounting).
    swap_limit: bool,
    /// See [`CriConfig::resolv_conf`].
    resolv_conf: PathBuf,
    /// See [`CriConfig::network`].
    network: NetworkSource,
    /// Whether the fall-back to the host's resolver (no cluster DNS settings yet) was logged.
    dns_fallback_logged: Arc<AtomicBool>,
}

impl CriRuntime {
    /// Connects to containerd and asks for its version (which the node reports). Fails when
    /// containerd does not answer within the RPC deadline; the caller decides whether to wait.
    pub async fn connect(config: CriConfig) -> Result<Self, RuntimeError> {
        let pods_root =
            std::path::absolute(&config.pods_root).map_err(|e| RuntimeError::Internal {
                op: "connect".into(),
                message: format!("cannot resolve {}: {e}", config.pods_root.display()),
            })?;
        let conn = Conn::new(&config.socket, config.rpc_timeout);
        let version = conn
            .call(conn.timeout, true, || {
                let mut client = conn.runtime();
                async move {
                    client
                        .version(cri::VersionRequest {
                            version: CRI_API_VERSION.to_string(),
                        })
                        .await
                }
            })
            .await
            .map_err(|e| RuntimeError::Internal {
                op: "connect".into(),
                message: conn.describe("Version", &e),
            })?;
        let version = format!("{}://{}", version.runtime_name, version.runtime_version);
        info!(socket = %config.socket.display(), %version, instance = %config.instance,
              "connected to the CRI runtime");
        Ok(Self {
            conn,
            instance: config.instance,
            pods_root,
            version,
            pull_timeout: config.pull_timeout,
            swap_limit: Path::new(MEMSW_FILE).exists(),
            resolv_conf: config.resolv_conf,
            network: config.network,
            dns_fallback_logged: Arc::new(AtomicBool::new(false)),
        })
    }

    /// This edgecore's instance id, on every sandbox and container it creates.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `<pods_root>/<uid>/logs`: the pod's log directory.
    fn log_dir(&self, uid: &str) -> PathBuf {
        self.pods_root.join(uid).join("logs")
    }

    /// The outcome of a teardown call, where NotFound means the work is already done (CRI's
    /// stops and removals are idempotent, as the `Runtime` trait promises).
    fn done_if_absent<T>(
        &self,
        result: Result<T, CallError>,
        op: &str,
        rpc: &str,
    ) -> Result<(), RuntimeError> {
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(self.internal(op, rpc, &e)),
        }
    }

    fn internal(&self, op: &str, rpc: &str, error: &CallError) -> RuntimeError {
        RuntimeError::Internal {
            op: op.to_string(),
            message: self.conn.describe(rpc, error),
        }
    }
}

/// `d` in whole seconds, rounded up, as CRI timeouts want them.
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Whether `s` can be used as one path component without escaping its parent.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

fn truncated(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(EXEC_OUTPUT_LIMIT);
    bytes
}

impl CriRuntime {
    /// Where `Localhost` seccomp profiles are read from: `<data-dir>/seccomp` (kubelet's
    /// `<root-dir>/seccomp`).
    fn seccomp_root(&self) -> PathBuf {
        self.pods_root
            .parent()
            .unwrap_or(&self.pods_root)
            .join("seccomp")
    }
}

#[async_trait]
impl Runtime for CriRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    /// containerd honours what the CRI spec carries (limits, read-only mounts, see
    /// `spec`); what the cri runtime cannot do is refused by the API or at container creation.
    fn check_runnable(&self, _pod: &EdgePod) -> Result<(), String> {
        Ok(())
    }

    async fn status(&self) -> Result<crate::runtime::RuntimeStatus, RuntimeError> {
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                async move { client.status(k8s_cri::v1::StatusRequest::default()).await }
            })
            .await
            .map_err(|e| RuntimeError::Internal {
                op: "Status".into(),
                message: self.conn.describe("Status", &e),
            })?;
        let conditions = response.status.map(|s| s.conditions).unwrap_or_default();
        let check = |kind: &str| match conditions.iter().find(|c| c.r#type == kind) {
            Some(c) if c.status => Ok(()),
            Some(c) => Err(format!("{kind}=false: {} {}", c.reason, c.message)
                .trim()
                .to_string()),
            None => Err(format!("containerd does not report {kind}")),
        };
        Ok(crate::runtime::RuntimeStatus {
            runtime_ready: check("RuntimeReady"),
            network_ready: check("NetworkReady"),
        })
    }

    async fn run_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError> {
        self.create_sandbox(pod).await
    }

    async fn sandbox_ready(&self, sandbox: &Sandbox) -> Result<bool, RuntimeError> {
        // containerd turns a sandbox NotReady when its sandbox (pause) process exits, for
        // whatever reason; one it no longer knows is not ready either.
        Ok(self
            .sandbox_status("sandbox state", &sandbox.id)
            .await?
            .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32))
    }

    async fn start_container(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        self.start_instance(sandbox, pod, container, config).await
    }

    async fn container_state(
        &self,
        _sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<ContainerRunState, RuntimeError> {
        self.observe("container state", container_id).await
    }

    async fn stop_container(
        &self,
        _sandbox: &Sandbox,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.stop("stop container", container_id, grace).await
    }

    async fn remove_container(
        &self,
        _sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<(), RuntimeError> {
        self.remove("remove container", container_id).await
    }

    async fn remove_sandbox(&self, sandbox: &Sandbox, grace: Duration) -> Result<(), RuntimeError> {
        self.delete_sandbox(sandbox, grace).await
    }

    async fn exec_sync(
        &self,
        _sandbox: &Sandbox,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let request = cri::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: command.to_vec(),
            // Whole seconds, at least one (0 would mean no limit at all).
            timeout: whole_seconds(timeout).max(1),
        };
        let deadline = timeout.saturating_add(self.conn.timeout);
        match self
            .conn
            .call(deadline, false, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.exec_sync(request).await }
            })
            .await
        {
            Ok(response) => Ok(ExecOutput {
                exit_code: response.exit_code,
                stdout: truncated(response.stdout),
                stderr: truncated(response.stderr),
                timed_out: false,
            }),
            Err(CallError::Status(status)) if status.code() == Code::DeadlineExceeded => {
                Ok(ExecOutput {
                    timed_out: true,
                    ..Default::default()
                })
            }
            Err(e) => Err(self.internal("exec", "ExecSync", &e)),
        }
    }

    async fn exec(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        spec: &crate::runtime::ExecSpec,
    ) -> Result<crate::runtime::ExecProcess, RuntimeError> {
        self.exec_task(sandbox, container_id, spec).await
    }

    async fn connect_port(
        &self,
        sandbox: &Sandbox,
        port: u16,
    ) -> Result<tokio::net::TcpStream, RuntimeError> {
        self.connect_in_sandbox(sandbox, port).await
    }

    async fn attach(
        &self,
        _sandbox: &Sandbox,
        container_id: &str,
        spec: &crate::runtime::ExecSpec,
    ) -> Result<crate::runtime::ExecProcess, RuntimeError> {
        self.attach_streams(container_id, spec).await
    }

    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
        const OP: &str = "list pods";
        let mut sandboxes = self.sandboxes(OP, None).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let mut chosen: HashMap<String, cri::PodSandbox> = HashMap::new();
        let mut dead = Vec::new();
        for sandbox in sandboxes {
            let uid = sandbox
                .metadata
                .as_ref()
                .map(|m| m.uid.clone())
                .or_else(|| sandbox.labels.get(LABEL_POD_UID).cloned())
                .unwrap_or_default();
            if ready(&sandbox) && !chosen.contains_key(&uid) {
                chosen.insert(uid, sandbox);
                continue;
            }
            // A dead sandbox (the host rebooted, or its sandbox process died): nothing can run
            // in it. Removing it lets the pod, if still desired, start in a new one.
            info!(sandbox = %sandbox.id, pod_uid = %uid, "removing a sandbox that is not ready");
            dead.push(sandbox.id);
        }
        // All at once: after a reboot every sandbox is dead, and no pod starts before this
        // listing returns (each removal tears down a network namespace, ~0.2 s apiece).
        let removals = dead.iter().map(|id| async move {
            if let Err(e) = self.discard_sandbox(OP, id).await {
                warn!(sandbox = %id, error = %e, "cannot remove a dead sandbox");
            }
        });
        futures::future::join_all(removals).await;
        let mut by_sandbox: HashMap<String, Vec<cri::Container>> = HashMap::new();
        for c in self.containers(OP, None, &[]).await? {
            by_sandbox
                .entry(c.pod_sandbox_id.clone())
                .or_default()
                .push(c);
        }
        let mut pods = Vec::new();
        for (uid, sandbox) in chosen {
            let Some(status) = self.sandbox_status(OP, &sandbox.id).await? else {
                continue; // Removed meanwhile.
            };
            let mut containers = Vec::new();
            for c in by_sandbox.remove(&sandbox.id).unwrap_or_default() {
                let state = self.observe(OP, &c.id).await?;
                containers.push(Self::info(
                    &c.id,
                    c.metadata.as_ref(),
                    &c.labels,
                    &c.image_ref,
                    state,
                ));
            }
            containers.sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
            let metadata = sandbox.metadata.unwrap_or_default();
            pods.push(ExistingPod {
                sandbox: Sandbox {
                    id: sandbox.id,
                    pod_uid: uid,
                    ip: ip_of(&status),
                },
                namespace: metadata.namespace,
                name: metadata.name,
                containers,
            });
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(pods)
    }

    async fn read_log(
        &self,
        sandbox: &Sandbox,
        container_name: &str,
        tail: Option<usize>,
    ) -> Result<String, RuntimeError> {
        read_newest_log(&self.pods_root, &sandbox.pod_uid, container_name, tail).await
    }
}

/// The last `tail` lines (all if `None`) of the newest instance's log of a container, from the
/// files alone (containerd need not run).
pub async fn read_newest_log(
    pods_root: &Path,
    pod_uid: &str,
    container_name: &str,
    tail: Option<usize>,
) -> Result<String, RuntimeError> {
    let err = |message: String| RuntimeError::Internal {
        op: "read log".into(),
        message,
    };
    let no_log = || {
        err(format!(
            "no log exists for container {container_name:?} of pod {pod_uid:?}; it has not been \
             started on this node (or the pod was removed)"
        ))
    };
    if !is_safe_component(container_name) || !is_safe_component(pod_uid) {
        return Err(no_log());
    }
    let dir = pods_root.join(pod_uid).join("logs").join(container_name);
    let path = crate::runtime::newest_attempt_log(&dir)
        .await
        .map_err(|e| err(format!("cannot list {}: {e}", dir.display())))?
        .ok_or_else(no_log)?;
    tokio::task::spawn_blocking(move || {
        let read = |path: &Path, tail| {
            logs::read_tail(path, tail).map_err(|e| RuntimeError::Internal {
                op: "read log".into(),
                message: format!("cannot read {}: {e}", path.display()),
            })
        };
        let current = read(&path, tail)?;
        // Just rotated: the rest of the wanted lines are in the previous generation.
        let wanted_more = match tail {
            Some(n) => n.saturating_sub(current.lines().count()),
            None => usize::MAX,
        };
        let previous = rotated_path(&path);
        if wanted_more == 0 || !previous.exists() {
            return Ok(current);
        }
        let older = read(&previous, tail.map(|_| wanted_more))?;
        Ok(older + &current)
    })
    .await
    .map_err(|e| err(format!("log reader failed: {e}")))?
}
