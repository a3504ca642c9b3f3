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

use self::conn::{CallError, Conn};
use self::spec::{PullPolicy, LABEL_CONTAINER_NAME, LABEL_DIGEST, LABEL_INSTANCE, LABEL_POD_UID};
use super::{
    ContainerConfig, ContainerInfo, ContainerRunState, ExecOutput, ExistingPod, Runtime,
    RuntimeError, Sandbox,
};
use async_trait::async_trait;
use k8s_cri::v1 as cri;
use protocol::pod::{EdgeContainer, EdgePod};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, info, warn};

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

/// How container logs are rotated (see [`CriRuntime::spawn_log_rotation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A log larger than this is rotated (kubelet's default: 10 MiB).
    pub max_bytes: u64,
    /// How often the logs are checked.
    pub period: Duration,
}

impl Default for LogRotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            period: Duration::from_secs(10),
        }
    }
}

/// The previous generation of a rotated log: `<attempt>.log.1` beside `<attempt>.log`.
fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

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
        })
    }

    /// This edgecore's instance id, on every sandbox and container it creates.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Rotates, every `rotation.period`, the logs of this edgecore's running containers that
    /// outgrew `rotation.max_bytes`, until the returned task is aborted (or the runtime ends).
    /// Failures are logged and retried at the next pass.
    pub fn spawn_log_rotation(&self, rotation: LogRotation) -> tokio::task::JoinHandle<()> {
        let runtime = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(rotation.period).await;
                if let Err(e) = runtime.rotate_logs(rotation.max_bytes).await {
                    warn!(error = %e, "cannot rotate container logs; retrying later");
                }
            }
        })
    }

    /// One rotation pass: every running container of this edgecore whose log is at least
    /// `max_bytes` long gets a fresh log (the old one kept as `<attempt>.log.1`). Returns how
    /// many logs were rotated.
    pub async fn rotate_logs(&self, max_bytes: u64) -> Result<usize, RuntimeError> {
        const OP: &str = "rotate logs";
        let mut rotated = 0;
        for c in self.containers(OP, None, &[]).await? {
            if c.state != cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            let Some(status) = self.container_status(OP, &c.id).await? else {
                continue;
            };
            if status.log_path.is_empty() {
                continue;
            }
            let log = PathBuf::from(&status.log_path);
            // Only logs under our data dir: never move files edgecore does not own.
            if !log.starts_with(&self.pods_root) {
                continue;
            }
            match tokio::fs::metadata(&log).await {
                Ok(meta) if meta.len() >= max_bytes => {}
                _ => continue,
            }
            let old = rotated_path(&log);
            let io_err = |e: std::io::Error| RuntimeError::Internal {
                op: OP.into(),
                message: format!("cannot rotate {}: {e}", log.display()),
            };
            tokio::fs::rename(&log, &old).await.map_err(io_err)?;
            let request = cri::ReopenContainerLogRequest {
                container_id: c.id.clone(),
            };
            let reopened = self
                .conn
                .call(self.conn.timeout, true, || {
                    let mut client = self.conn.runtime();
                    let request = request.clone();
                    async move { client.reopen_container_log(request).await }
                })
                .await;
            match reopened {
                Ok(_) => {
                    debug!(container = %c.id, log = %log.display(), "log rotated");
                    rotated += 1;
                }
                Err(e) => {
                    // containerd still writes to the renamed file: put it back, as kubelet does,
                    // unless it has created a new one meanwhile.
                    if !tokio::fs::try_exists(&log).await.unwrap_or(false) {
                        tokio::fs::rename(&old, &log).await.map_err(io_err)?;
                    }
                    if !e.is_not_found() {
                        return Err(self.internal(OP, "ReopenContainerLog", &e));
                    }
                }
            }
        }
        Ok(rotated)
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

    /// This instance's sandboxes, of one pod if `uid` is given.
    async fn sandboxes(
        &self,
        op: &str,
        uid: Option<&str>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let mut labels = HashMap::from([(LABEL_INSTANCE.to_string(), self.instance.clone())]);
        if let Some(uid) = uid {
            labels.insert(LABEL_POD_UID.to_string(), uid.to_string());
        }
        let request = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels,
                ..Default::default()
            }),
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.list_pod_sandbox(request).await }
            })
            .await
            .map_err(|e| self.internal(op, "ListPodSandbox", &e))?;
        Ok(response.items)
    }

    /// This instance's containers matching `labels` (besides the instance label), in the
    /// sandbox `sandbox_id` if given.
    async fn containers(
        &self,
        op: &str,
        sandbox_id: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        let mut selector = HashMap::from([(LABEL_INSTANCE.to_string(), self.instance.clone())]);
        for (k, v) in labels {
            selector.insert(k.to_string(), v.to_string());
        }
        let request = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sandbox_id.unwrap_or_default().to_string(),
                label_selector: selector,
                ..Default::default()
            }),
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.list_containers(request).await }
            })
            .await
            .map_err(|e| self.internal(op, "ListContainers", &e))?;
        Ok(response.containers)
    }

    /// Runs an idempotent read RPC (`rpc` names it in errors); `None` when containerd answers
    /// that the object does not exist.
    async fn read_optional<R, F, Fut>(
        &self,
        op: &str,
        rpc: &str,
        call: F,
    ) -> Result<Option<R>, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        match self.conn.call(self.conn.timeout, true, call).await {
            Ok(response) => Ok(Some(response)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(self.internal(op, rpc, &e)),
        }
    }

    /// A sandbox's status; `None` if it does not exist.
    async fn sandbox_status(
        &self,
        op: &str,
        id: &str,
    ) -> Result<Option<cri::PodSandboxStatus>, RuntimeError> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        let response = self
            .read_optional(op, "PodSandboxStatus", || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.pod_sandbox_status(request).await }
            })
            .await?;
        Ok(response.and_then(|r| r.status))
    }

    /// A container's status; `None` if it does not exist.
    async fn container_status(
        &self,
        op: &str,
        id: &str,
    ) -> Result<Option<cri::ContainerStatus>, RuntimeError> {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let response = self
            .read_optional(op, "ContainerStatus", || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.container_status(request).await }
            })
            .await?;
        Ok(response.and_then(|r| r.status))
    }

    /// Stops a container, giving it `grace` between SIGTERM and SIGKILL; a container that does
    /// not exist is stopped.
    async fn stop(&self, op: &str, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let request = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: whole_seconds(grace),
        };
        let deadline = grace.saturating_add(self.conn.timeout);
        let result = self
            .conn
            .call(deadline, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.stop_container(request).await }
            })
            .await;
        self.done_if_absent(result, op, "StopContainer")
    }

    /// Removes a container (stopping it at once if it runs); a missing one is removed.
    async fn remove(&self, op: &str, id: &str) -> Result<(), RuntimeError> {
        let request = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        let result = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.remove_container(request).await }
            })
            .await;
        self.done_if_absent(result, op, "RemoveContainer")
    }

    /// Stops and removes a sandbox with whatever still runs in it (killed at once: callers stop
    /// containers with grace first where it matters); a missing sandbox is removed.
    async fn discard_sandbox(&self, op: &str, id: &str) -> Result<(), RuntimeError> {
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        match self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = stop.clone();
                async move { client.stop_pod_sandbox(request).await }
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(self.internal(op, "StopPodSandbox", &e)),
        }
        let remove = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        let result = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.runtime();
                let request = remove.clone();
                async move { client.remove_pod_sandbox(request).await }
            })
            .await;
        self.done_if_absent(result, op, "RemovePodSandbox")
    }

    /// The id of `image` if containerd has it.
    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        let response = self
            .conn
            .call(self.conn.timeout, true, || {
                let mut client = self.conn.images();
                let request = request.clone();
                async move { client.image_status(request).await }
            })
            .await
            .map_err(|e| self.internal("start container", "ImageStatus", &e))?;
        Ok(response.image.map(|i| i.id))
    }

    /// Pulls `image`; returns the reference containerd resolved it to.
    async fn pull(
        &self,
        image: &str,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String, CallError> {
        let request = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(sandbox_config.clone()),
        };
        let started = Instant::now();
        let response = self
            .conn
            .call(self.pull_timeout, true, || {
                let mut client = self.conn.images();
                let request = request.clone();
                async move { client.pull_image(request).await }
            })
            .await?;
        info!(%image, image_ref = %response.image_ref,
              ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(response.image_ref)
    }

    /// Makes sure `container`'s image is present as its pull policy says; returns the image
    /// reference to create the container from.
    async fn ensure_image(
        &self,
        container: &EdgeContainer,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String, RuntimeError> {
        let image = container.image.as_str();
        let policy =
            PullPolicy::of(container).map_err(|message| RuntimeError::CreateContainer {
                container: container.name.clone(),
                message,
            })?;
        let pull_error = |e: &CallError| RuntimeError::Image {
            image: image.to_string(),
            reason: "ErrImagePull".into(),
            message: format!(
                "{}; if this node cannot reach the registry, load the image with \
                 `edgecore image import <image.tar>` and set imagePullPolicy: IfNotPresent \
                 or Never",
                self.conn.describe("PullImage", e)
            ),
        };
        match policy {
            PullPolicy::Never => self
                .image_id(image)
                .await?
                .ok_or_else(|| RuntimeError::Image {
                    image: image.to_string(),
                    reason: "ErrImageNeverPull".into(),
                    message: format!(
                        "the image is not on this node and imagePullPolicy is Never; load it with \
                     `edgecore image import <image.tar>` (containerd at {})",
                        self.conn.socket().display()
                    ),
                }),
            PullPolicy::IfNotPresent => match self.image_id(image).await? {
                Some(id) => Ok(id),
                None => self
                    .pull(image, sandbox_config)
                    .await
                    .map_err(|e| pull_error(&e)),
            },
            PullPolicy::Always => match self.pull(image, sandbox_config).await {
                Ok(reference) => Ok(reference),
                Err(e) => match self.image_id(image).await? {
                    Some(id) => {
                        warn!(%image, error = %self.conn.describe("PullImage", &e),
                              "pull failed; running the image already on this node");
                        Ok(id)
                    }
                    None => Err(pull_error(&e)),
                },
            },
        }
    }

    /// A [`ContainerInfo`] of a listed or created container.
    fn info(
        id: &str,
        metadata: Option<&cri::ContainerMetadata>,
        labels: &HashMap<String, String>,
        state: ContainerRunState,
    ) -> ContainerInfo {
        ContainerInfo {
            id: id.to_string(),
            name: metadata
                .map(|m| m.name.clone())
                .or_else(|| labels.get(LABEL_CONTAINER_NAME).cloned())
                .unwrap_or_default(),
            attempt: metadata.map(|m| m.attempt).unwrap_or(0),
            state,
            spec_digest: labels.get(LABEL_DIGEST).cloned(),
        }
    }

    /// The state of a container, `Unknown` when containerd no longer knows it, or when it was
    /// created long ago and never started (edgecore stopped between creating and starting it:
    /// nobody will start it, and the pod worker must not wait for it forever).
    async fn observe(&self, op: &str, id: &str) -> Result<ContainerRunState, RuntimeError> {
        Ok(match self.container_status(op, id).await? {
            Some(status) => match spec::run_state(&status) {
                ContainerRunState::Created if stale_created(status.created_at) => {
                    ContainerRunState::Unknown {
                        message: format!(
                            "container {id} was created {}s ago and never started (edgecore \
                             stopped while starting it)",
                            STALE_CREATED_AFTER.as_secs()
                        ),
                    }
                }
                state => state,
            },
            None => ContainerRunState::Unknown {
                message: format!(
                    "container {id} no longer exists in containerd at {}",
                    self.conn.socket().display()
                ),
            },
        })
    }

    /// Starts a created container; on failure it is removed (so that a retry creates it
    /// anew) and the failure returned.
    async fn start_created(&self, container: &EdgeContainer, id: &str) -> Result<(), RuntimeError> {
        let request = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        match self
            .conn
            .call(self.conn.timeout, false, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.start_container(request).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // It may have started: a retry finds the instance and adopts whatever it became.
            Err(e @ CallError::Timeout(_)) => {
                Err(self.internal("start container", "StartContainer", &e))
            }
            Err(CallError::Status(status)) if status.code() == Code::Unavailable => Err(self
                .internal(
                    "start container",
                    "StartContainer",
                    &CallError::Status(status),
                )),
            Err(CallError::Status(status)) => {
                // A start retried after a timed-out one may find it starting or started already.
                // (A failed start leaves it exited without a start time: that is not one.)
                match self.observe("start container", id).await {
                    Ok(ContainerRunState::Running { .. }) => return Ok(()),
                    Ok(ContainerRunState::Exited { started_at_ms, .. }) if started_at_ms > 0 => {
                        return Ok(())
                    }
                    _ => {}
                }
                if let Err(e) = self.remove("start container", id).await {
                    warn!(container = %container.name, %id, error = %e,
                          "cannot remove a container that failed to start");
                }
                Err(RuntimeError::CreateContainer {
                    container: container.name.clone(),
                    message: format!(
                        "containerd could not start it: {}",
                        conn::status_text(&status)
                    ),
                })
            }
        }
    }
}

/// How long a container may stay created-but-not-started before it is reported `Unknown`
/// (the process runtime's rule too).
const STALE_CREATED_AFTER: Duration = Duration::from_secs(60);

/// Whether a container created at `created_at_ns` (CRI nanoseconds) has waited too long for its
/// start.
fn stale_created(created_at_ns: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let created = u128::try_from(created_at_ns).unwrap_or(0);
    created > 0 && now.saturating_sub(created) > STALE_CREATED_AFTER.as_nanos()
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

fn ready(sandbox: &cri::PodSandbox) -> bool {
    sandbox.state == cri::PodSandboxState::SandboxReady as i32
}

fn ip_of(status: &cri::PodSandboxStatus) -> String {
    status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

#[async_trait]
impl Runtime for CriRuntime {
    fn version(&self) -> String {
        self.version.clone()
    }

    async fn run_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError> {
        const OP: &str = "run sandbox";
        if !is_safe_component(&pod.uid) {
            return Err(RuntimeError::Internal {
                op: OP.into(),
                message: format!("pod uid {:?} is not usable as a directory name", pod.uid),
            });
        }
        let mut sandboxes = self.sandboxes(OP, Some(&pod.uid)).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let next_attempt = sandboxes
            .iter()
            .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt.saturating_add(1)))
            .max()
            .unwrap_or(0);
        let mut current = None;
        for sandbox in sandboxes {
            if current.is_none() && ready(&sandbox) {
                current = Some(sandbox);
                continue;
            }
            // Dead (or a second ready one, which only a lost race could make): its containers
            // would hold the names of the attempts to come.
            info!(pod = %pod.key(), sandbox = %sandbox.id, "removing a stale sandbox of the pod");
            self.discard_sandbox(OP, &sandbox.id).await?;
        }
        if let Some(sandbox) = current {
            if let Some(status) = self.sandbox_status(OP, &sandbox.id).await? {
                if status.state == cri::PodSandboxState::SandboxReady as i32 {
                    debug!(pod = %pod.key(), sandbox = %sandbox.id, "sandbox already runs");
                    return Ok(Sandbox {
                        id: sandbox.id,
                        pod_uid: pod.uid.clone(),
                        ip: ip_of(&status),
                    });
                }
            }
            // It died between the listing and now.
            self.discard_sandbox(OP, &sandbox.id).await?;
        }

        let log_dir = self.log_dir(&pod.uid);
        tokio::fs::create_dir_all(&log_dir)
            .await
            .map_err(|e| RuntimeError::Internal {
                op: OP.into(),
                message: format!(
                    "cannot create the pod's log directory {}: {e}",
                    log_dir.display()
                ),
            })?;
        let config = spec::sandbox_config(pod, next_attempt, &self.instance, &log_dir);
        let request = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let started = Instant::now();
        // Not repeated on a broken connection: a retry of the whole start finds the sandbox if
        // this one was made.
        let response = self
            .conn
            .call(self.conn.timeout, false, || {
                let mut client = self.conn.runtime();
                let request = request.clone();
                async move { client.run_pod_sandbox(request).await }
            })
            .await
            .map_err(|e| self.internal(OP, "RunPodSandbox", &e))?;
        let id = response.pod_sandbox_id;
        let status = self
            .sandbox_status(OP, &id)
            .await?
            .ok_or_else(|| RuntimeError::Internal {
                op: OP.into(),
                message: format!("sandbox {id} vanished right after containerd created it"),
            })?;
        let ip = ip_of(&status);
        info!(pod = %pod.key(), uid = %pod.uid, sandbox = %id, %ip, attempt = next_attempt,
              ms = started.elapsed().as_millis() as u64, "sandbox created");
        Ok(Sandbox {
            id,
            pod_uid: pod.uid.clone(),
            ip,
        })
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
        const OP: &str = "start container";
        let create_err = |message: String| RuntimeError::CreateContainer {
            container: container.name.clone(),
            message,
        };
        if container.image.is_empty() {
            return Err(create_err("it has no image".into()));
        }
        if !is_safe_component(&container.name) {
            return Err(create_err(
                "the container name is not usable as a directory name".into(),
            ));
        }
        let status = self.sandbox_status(OP, &sandbox.id).await?;
        let sandbox_attempt = match &status {
            Some(s) if s.state == cri::PodSandboxState::SandboxReady as i32 => {
                s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
            }
            other => {
                return Err(RuntimeError::SandboxNotReady {
                    sandbox: sandbox.id.clone(),
                    pod: pod.key(),
                    message: match other {
                        Some(_) => "containerd reports it not ready (its sandbox process died)",
                        None => "containerd no longer knows it",
                    }
                    .into(),
                })
            }
        };
        let attempt = config.attempt.to_string();

        // This instance may exist already: a start that timed out, or an edgecore restarted
        // mid-start, created it.
        let existing = self
            .containers(
                OP,
                Some(&sandbox.id),
                &[
                    (LABEL_POD_UID, &pod.uid),
                    (LABEL_CONTAINER_NAME, &container.name),
                    (spec::LABEL_ATTEMPT, &attempt),
                ],
            )
            .await?;
        let mut created: Option<(String, HashMap<String, String>)> = None;
        for found in existing {
            match self.observe(OP, &found.id).await? {
                ContainerRunState::Created if created.is_none() => {
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance created earlier; starting it");
                    created = Some((found.id, found.labels));
                }
                state @ ContainerRunState::Running { .. } => {
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance already running; adopting it");
                    return Ok(Self::info(
                        &found.id,
                        found.metadata.as_ref(),
                        &found.labels,
                        state,
                    ));
                }
                state @ ContainerRunState::Exited { started_at_ms, .. } if started_at_ms > 0 => {
                    // It ran and ended before its start was confirmed: that is this start's
                    // result (running it again would run the attempt twice).
                    info!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          "container instance already ran; reporting its exit");
                    return Ok(Self::info(
                        &found.id,
                        found.metadata.as_ref(),
                        &found.labels,
                        state,
                    ));
                }
                previous => {
                    warn!(pod = %pod.key(), container = %container.name, attempt = config.attempt,
                          id = %found.id, ?previous, "replacing a stale instance with the same attempt");
                    self.remove(OP, &found.id).await?;
                }
            }
        }

        let started = Instant::now();
        let (id, labels) = match created {
            Some(found) => found,
            None => {
                let sandbox_config = spec::sandbox_config(
                    pod,
                    sandbox_attempt,
                    &self.instance,
                    &self.log_dir(&pod.uid),
                );
                let image = self.ensure_image(container, &sandbox_config).await?;
                let log_dir = self.log_dir(&pod.uid).join(&container.name);
                tokio::fs::create_dir_all(&log_dir)
                    .await
                    .map_err(|e| RuntimeError::Internal {
                        op: OP.into(),
                        message: format!("cannot create log directory {}: {e}", log_dir.display()),
                    })?;
                let container_config = spec::container_config(
                    &self.instance,
                    pod,
                    container,
                    config,
                    &image,
                    self.swap_limit,
                );
                let labels = container_config.labels.clone();
                let request = cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox.id.clone(),
                    config: Some(container_config),
                    sandbox_config: Some(sandbox_config),
                };
                let response = self
                    .conn
                    .call(self.conn.timeout, false, || {
                        let mut client = self.conn.runtime();
                        let request = request.clone();
                        async move { client.create_container(request).await }
                    })
                    .await;
                match response {
                    Ok(response) => (response.container_id, labels),
                    Err(CallError::Status(status))
                        if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
                    {
                        return Err(create_err(format!(
                            "containerd could not create it: {}",
                            conn::status_text(&status)
                        )))
                    }
                    Err(e) => return Err(self.internal(OP, "CreateContainer", &e)),
                }
            }
        };
        self.start_created(container, &id).await?;
        let state = self.observe(OP, &id).await?;
        info!(pod = %pod.key(), container = %container.name, attempt = config.attempt, %id,
              ms = started.elapsed().as_millis() as u64, "container started");
        let metadata = cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: config.attempt,
        };
        Ok(Self::info(&id, Some(&metadata), &labels, state))
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
        const OP: &str = "remove sandbox";
        if !is_safe_component(&sandbox.pod_uid) {
            return Err(RuntimeError::Internal {
                op: OP.into(),
                message: format!("pod uid {:?} is not a directory name", sandbox.pod_uid),
            });
        }
        // Every sandbox of the pod, not only the one given: earlier, dead ones too.
        let mut ids: Vec<String> = self
            .sandboxes(OP, Some(&sandbox.pod_uid))
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        if !sandbox.id.is_empty() && !ids.contains(&sandbox.id) {
            ids.push(sandbox.id.clone());
        }
        // StopPodSandbox kills at once: give what still runs its grace first.
        let running: Vec<String> = self
            .containers(OP, None, &[(LABEL_POD_UID, &sandbox.pod_uid)])
            .await?
            .into_iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| c.id)
            .collect();
        let stops = running.iter().map(|id| self.stop(OP, id, grace));
        for result in futures::future::join_all(stops).await {
            result?;
        }
        for id in &ids {
            self.discard_sandbox(OP, id).await?;
        }
        // The logs are ours; the volumes beside them are the pod worker's (they may be mounts,
        // which it unmounts), so the pod's directory goes only once nothing else is in it.
        let dir = self.pods_root.join(&sandbox.pod_uid);
        let logs = self.log_dir(&sandbox.pod_uid);
        let remove_err = |path: &Path, e: std::io::Error| RuntimeError::Internal {
            op: OP.into(),
            message: format!("cannot remove {}: {e}", path.display()),
        };
        match tokio::fs::remove_dir_all(&logs).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(remove_err(&logs, e)),
        }
        match tokio::fs::remove_dir(&dir).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => return Err(remove_err(&dir, e)),
        }
        info!(pod = %sandbox.pod_uid, sandboxes = ids.len(), "sandbox removed");
        Ok(())
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

    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
        const OP: &str = "list pods";
        let mut sandboxes = self.sandboxes(OP, None).await?;
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let mut chosen: HashMap<String, cri::PodSandbox> = HashMap::new();
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
            if let Err(e) = self.discard_sandbox(OP, &sandbox.id).await {
                warn!(sandbox = %sandbox.id, error = %e, "cannot remove a dead sandbox");
            }
        }
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
                containers.push(Self::info(&c.id, c.metadata.as_ref(), &c.labels, state));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_unstarted_containers_are_stale() {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        assert!(!stale_created(now_ns));
        assert!(!stale_created(now_ns - 30_000_000_000));
        assert!(stale_created(now_ns - 61_000_000_000));
        // Unknown creation time: not judged.
        assert!(!stale_created(0));
    }

    #[test]
    fn cri_timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
        assert_eq!(whole_seconds(Duration::from_millis(30_001)), 31);
        assert_eq!(whole_seconds(Duration::MAX), i64::MAX);
    }

    #[test]
    fn instance_ids_persist_per_data_dir() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let first = load_instance_id(a.path()).expect("created");
        assert_eq!(first.len(), 16);
        assert_eq!(load_instance_id(a.path()).expect("read"), first);
        assert_ne!(load_instance_id(b.path()).expect("created"), first);
        std::fs::write(a.path().join(INSTANCE_FILE), "../x\n").expect("write");
        assert!(load_instance_id(a.path()).is_err());
    }

    #[tokio::test]
    async fn logs_are_read_from_the_newest_instance() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("uid-1/logs/main");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let t = "2026-11-25T19:04:53.1Z";
        std::fs::write(dir.join("1.log"), format!("{t} stdout F old\n")).expect("write");
        std::fs::write(
            dir.join("10.log"),
            format!("{t} stdout F a\n{t} stderr F b\n"),
        )
        .expect("write");
        std::fs::write(dir.join("9.log"), format!("{t} stdout F older\n")).expect("write");
        let text = read_newest_log(root.path(), "uid-1", "main", Some(1))
            .await
            .expect("log");
        assert_eq!(text, "b\n");
        // After a rotation the tail continues into the previous generation.
        std::fs::write(
            dir.join("10.log.1"),
            format!("{t} stdout F z1\n{t} stdout F z2\n"),
        )
        .expect("write");
        let text = read_newest_log(root.path(), "uid-1", "main", Some(3))
            .await
            .expect("log");
        assert_eq!(text, "z2\na\nb\n");
        let all = read_newest_log(root.path(), "uid-1", "main", None)
            .await
            .expect("log");
        assert_eq!(all, "z1\nz2\na\nb\n");
        assert!(read_newest_log(root.path(), "uid-1", "other", None)
            .await
            .is_err());
        assert!(read_newest_log(root.path(), "..", "main", None)
            .await
            .is_err());
    }
}
