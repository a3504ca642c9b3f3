//! The container runtime seam.
//!
//! Pod workers (`crate::pods`) drive every runtime through [`Runtime`], so the `process` runtime
//! (native processes, for hardware-in-the-loop rigs and machines without containerd) and the CRI
//! runtime (containerd) are interchangeable per node. The trait is shaped after CRI: a pod gets a
//! sandbox, containers are created and started inside it, their state is polled (as kubelet's PLEG
//! does), and everything a runtime started can be listed again after edgecore restarts, so that a
//! restarted edgecore adopts what is running instead of starting duplicates.
//!
//! A sandbox can die under a running pod (its sandbox process is killed, its network namespace
//! goes, its directory is wiped). The runtime says so in two ways, both leading the pod worker to
//! replace the sandbox as kubelet does (stop what still runs, [`Runtime::run_sandbox`] anew,
//! start the containers again): [`Runtime::sandbox_ready`], which the worker polls with its
//! running containers' states (kubelet's PLEG relists sandboxes with containers), and
//! [`RuntimeError::SandboxNotReady`] from [`Runtime::start_container`], so that a start due while
//! nothing runs (every container in back-off) replaces the sandbox at once instead of failing
//! until the next poll. Dead sandboxes are not an error of the containers: the runtime reports
//! them as a fact about the sandbox, and the decision stays in the pod state machine.

pub mod cri;
pub mod dns;
pub mod port;
pub mod process;
pub mod security;

use async_trait::async_trait;
use protocol::pod::{EdgeContainer, EdgePod};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// A pod's sandbox as the runtime created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Runtime id of the sandbox (for `process`: the pod uid).
    pub id: String,
    /// Pod uid it belongs to.
    pub pod_uid: String,
    /// IP address of the pod (for `process`: the host's).
    pub ip: String,
}

/// A container's environment and arguments after the pod worker resolved every reference
/// (ConfigMap/Secret keys, field refs, `$(VAR)` expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Restart number of this instance (0 for the first start); runtimes keep it in their
    /// labels/state so that it survives an edgecore restart.
    pub attempt: u32,
    /// The container's volume mounts, prepared on the host by the pod worker (see
    /// `crate::volumes`), in the order of the container's `volumeMounts`.
    pub mounts: Vec<Mount>,
}

/// A prepared volume mount: a host path that appears at `container_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Name of the pod volume it comes from.
    pub volume: String,
    /// Host path (the volume's directory, or a file or directory within it for `subPath`).
    pub host_path: std::path::PathBuf,
    /// Path inside the container.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a command run in a container ([`Runtime::exec_sync`]) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Exit code (meaningless when `timed_out`).
    pub exit_code: i32,
    /// Standard output, truncated to a few KiB.
    pub stdout: Vec<u8>,
    /// Standard error, truncated to a few KiB.
    pub stderr: Vec<u8>,
    /// The command did not finish within the timeout (it was killed).
    pub timed_out: bool,
}

/// What a command run by [`Runtime::exec`] is connected to (`kubectl exec`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Standard input is given (otherwise it reads `/dev/null`).
    pub stdin: bool,
    /// Standard output is wanted.
    pub stdout: bool,
    /// Standard error is wanted (never with `tty`).
    pub stderr: bool,
    /// Run on a pseudo terminal, which carries input and output.
    pub tty: bool,
    /// The terminal's size from the start (with `tty`).
    pub size: Option<protocol::streams::TermSize>,
}

/// A byte sink of an exec'd command (its standard input).
pub type ExecWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
/// A byte source of an exec'd command (its output).
pub type ExecReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// The terminal and input controls of a command started by [`Runtime::exec`].
pub trait ExecControl: Send + Sync {
    /// The client's terminal has this size now (ignored without a terminal).
    fn resize(&self, size: protocol::streams::TermSize);
    /// The client closed standard input; called after [`ExecProcess::stdin`] was dropped, for
    /// runtimes where dropping the writer alone does not reach the command.
    fn stdin_closed(&self) {}
}

/// A command started by [`Runtime::exec`]. Dropping it ends the command (and what it
/// started) if it still runs.
pub struct ExecProcess {
    /// Its standard input (or terminal input), if asked for.
    pub stdin: Option<ExecWriter>,
    /// Its standard output (or terminal output), if asked for.
    pub stdout: Option<ExecReader>,
    /// Its standard error, if asked for (never with a terminal).
    pub stderr: Option<ExecReader>,
    /// Resolves to the exit code (128 + N for signal N) when the command ends.
    pub exit:
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32, RuntimeError>> + Send>>,
    /// Resizes and stdin's end.
    pub control: Box<dyn ExecControl>,
}

/// Observed state of one container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRunState {
    /// Created but not started.
    Created,
    /// Running since the given time (ms since the epoch).
    Running {
        /// Start time.
        started_at_ms: u64,
    },
    /// Exited.
    Exited {
        /// Exit code; 128 + signal if killed by a signal.
        exit_code: i32,
        /// The signal, if killed by one.
        signal: Option<i32>,
        /// `Completed`, `Error` or `OOMKilled`.
        reason: String,
        /// Start time.
        started_at_ms: u64,
        /// Exit time.
        finished_at_ms: u64,
    },
    /// The runtime lost track of it (for example the host rebooted under it).
    Unknown {
        /// Why.
        message: String,
        /// When it started, if the runtime recorded it (ms since the epoch): reported as the
        /// lost instance's `startedAt`.
        started_at_ms: Option<u64>,
    },
}

/// One container instance as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime id (`process://<pid>`-like ids are fine, unique per instance).
    pub id: String,
    /// Container name within the pod.
    pub name: String,
    /// Restart number of this instance, as given in [`ContainerConfig::attempt`].
    pub attempt: u32,
    /// State now.
    pub state: ContainerRunState,
    /// Digest of the container the instance was started from, as
    /// [`container_digest`] computes it; `None` when the runtime does not know it
    /// (an instance started before digests were recorded): taken to match the desired spec.
    pub spec_digest: Option<String>,
    /// What the start did about the image, when it created the instance (kubelet's `Pulling`
    /// and `Pulled` events): `None` for a runtime without images, or an instance found again.
    pub image_pull: Option<ImagePull>,
    /// The image the instance runs, as the runtime names it: CRI's `imageRef` (the repo
    /// digest, or the image's own ID), which kubelet reports as `imageID`. `None` for a
    /// runtime without images.
    pub image_id: Option<String>,
}

/// How a start came by its container's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePull {
    /// The image was on the node already (and the pull policy did not ask for a pull).
    Present,
    /// The image was pulled, in this long.
    Pulled {
        /// Milliseconds the pull took.
        ms: u64,
    },
    /// A pull was asked for and failed, and the copy already on the node is used.
    PullFailedUsedPresent,
}

/// A sandbox found by [`Runtime::list_pods`], with its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingPod {
    /// The sandbox.
    pub sandbox: Sandbox,
    /// Pod namespace and name, as recorded when the sandbox was created.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Its containers, every instance still known (not removed).
    pub containers: Vec<ContainerInfo>,
}

/// Errors of a runtime operation. The `reason` mirrors the Kubernetes waiting reason that the
/// pod worker reports for it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container's configuration cannot be run (bad command, missing working dir, ...).
    #[error("cannot create container {container:?}: {message}")]
    CreateContainer {
        /// Container name.
        container: String,
        /// What is wrong and what to fix.
        message: String,
    },
    /// The container cannot be created as its configuration asks (`runAsNonRoot` with a user
    /// that is, or may be, root): kubelet's `CreateContainerConfigError`, with its message.
    #[error("{message}")]
    CreateContainerConfig {
        /// The container.
        container: String,
        /// What is wrong, as kubelet says it.
        message: String,
    },
    /// The image is not available and cannot be obtained.
    #[error("image {image:?} is not available: {message}")]
    Image {
        /// Image reference.
        image: String,
        /// Kubernetes reason: `ErrImagePull`, `ErrImageNeverPull`, ...
        reason: String,
        /// Details.
        message: String,
    },
    /// The sandbox a container was to start in is not ready any more (see the module docs):
    /// nothing can run in it until the pod worker replaces it.
    #[error(
        "the sandbox {sandbox} of pod {pod} is not ready any more ({message}); a new one is needed"
    )]
    SandboxNotReady {
        /// Runtime id of the sandbox.
        sandbox: String,
        /// The pod (`namespace/name`).
        pod: String,
        /// What the runtime saw.
        message: String,
    },
    /// The runtime itself failed (I/O, daemon unreachable); retried by the worker.
    #[error("runtime failure during {op}: {message}")]
    Internal {
        /// Operation.
        op: String,
        /// Details.
        message: String,
    },
}

impl RuntimeError {
    /// Kubernetes waiting reason for a container whose start failed with this error.
    pub fn waiting_reason(&self) -> &str {
        match self {
            RuntimeError::CreateContainer { .. } => "CreateContainerError",
            RuntimeError::CreateContainerConfig { .. } => "CreateContainerConfigError",
            RuntimeError::Image { reason, .. } => reason,
            RuntimeError::SandboxNotReady { .. } | RuntimeError::Internal { .. } => {
                "RunContainerError"
            }
        }
    }
}

/// What the runtime says of itself (CRI's `Status`: `RuntimeReady` and `NetworkReady`). An
/// `Err` carries the runtime's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// Whether the runtime can run containers.
    pub runtime_ready: Result<(), String>,
    /// Whether pod networking is configured (the CNI network for containerd; always for the
    /// process runtime, whose pods use the host's network).
    pub network_ready: Result<(), String>,
}

/// What every runtime offers the pod workers. All methods are idempotent where Kubernetes'
/// CRI is: stopping a stopped container or removing a removed pod succeeds.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Runtime name and version for the node's `containerRuntimeVersion` (`process://0.1.0`).
    fn version(&self) -> String;

    /// Asks the runtime how it is, for the node's `Ready` and `NetworkUnavailable`
    /// conditions. Fails when the runtime does not answer (the caller bounds the wait).
    async fn status(&self) -> Result<RuntimeStatus, RuntimeError>;

    /// What of `pod` this runtime cannot honour on this host (Krustlet's
    /// `validate_pod_runnable`): `Err` with a message naming the container and the field, and
    /// saying why. The pod worker asks before it starts a container and refuses the start
    /// with it (`CreateContainerConfigError` in the container's status, and an event), so that
    /// no pod runs without what it asked for (limits, read-only mounts) without a word.
    fn check_runnable(&self, pod: &EdgePod) -> Result<(), String>;

    /// Creates the pod's sandbox (directories, network); returns the existing one if the pod
    /// already has a ready sandbox. One that is not ready (see [`Runtime::sandbox_ready`]) is
    /// replaced: it goes with its containers, but not with their logs nor the pod's volumes,
    /// which the new sandbox's containers find again.
    async fn run_sandbox(&self, pod: &EdgePod) -> Result<Sandbox, RuntimeError>;

    /// Whether `sandbox` can still run containers: `Ok(false)` once it is gone or not ready (its
    /// sandbox process died, its network namespace is gone, its directory vanished), which makes
    /// the pod worker replace it; `Err` when the runtime cannot tell now (the worker then leaves
    /// the pod alone until the next poll).
    async fn sandbox_ready(&self, sandbox: &Sandbox) -> Result<bool, RuntimeError>;

    /// Creates and starts one container instance in the sandbox; fails with
    /// [`RuntimeError::SandboxNotReady`] when the sandbox cannot run it any more.
    async fn start_container(
        &self,
        sandbox: &Sandbox,
        pod: &EdgePod,
        container: &EdgeContainer,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError>;

    /// The current state of a container instance.
    async fn container_state(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<ContainerRunState, RuntimeError>;

    /// Stops a container: SIGTERM (or the image's stop signal), then SIGKILL after `grace`.
    /// Returns once it has exited.
    async fn stop_container(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError>;

    /// Forgets an exited container instance and frees what it held (keeps its logs until the
    /// pod is removed).
    async fn remove_container(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<(), RuntimeError>;

    /// Stops whatever still runs in the sandbox (with `grace`) and removes it with its
    /// containers, logs and scratch volumes.
    async fn remove_sandbox(&self, sandbox: &Sandbox, grace: Duration) -> Result<(), RuntimeError>;

    /// Runs `command` inside a running container and waits for it, at most `timeout` (exec
    /// probes; CRI `ExecSync`).
    async fn exec_sync(
        &self,
        sandbox: &Sandbox,
        container_id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Starts `spec.command` inside a running container with its standard streams connected
    /// (`kubectl exec`, `kubectl cp`, `edgecore exec`); returns once it runs. A command that
    /// cannot be started is an error here, not an exit code.
    async fn exec(
        &self,
        _sandbox: &Sandbox,
        _container_id: &str,
        _spec: &ExecSpec,
    ) -> Result<ExecProcess, RuntimeError> {
        Err(RuntimeError::Internal {
            op: "exec".into(),
            message: format!(
                "the {} runtime cannot run interactive commands",
                self.version()
            ),
        })
    }

    /// Connects to `port` on the pod's own `localhost` (`kubectl port-forward`), as kubelet and
    /// containerd do: inside the pod's network namespace, so a server bound to 127.0.0.1 in the
    /// pod is reached. The error says what was tried (refused on IPv4 and IPv6, ...).
    async fn connect_port(
        &self,
        _sandbox: &Sandbox,
        port: u16,
    ) -> Result<tokio::net::TcpStream, RuntimeError> {
        Err(RuntimeError::Internal {
            op: "port-forward".into(),
            message: format!(
                "the {} runtime cannot forward ports (port {port})",
                self.version()
            ),
        })
    }

    /// Attaches to the standard streams of a running container started with `stdin` or `tty`
    /// (`kubectl attach -i/-t`): `spec.command` is unused, `spec.tty` must be the container's.
    /// The exit future resolves when the attach ends (the container ended, or the runtime let
    /// go): 0, or an error. Dropping the process detaches; the container runs on.
    async fn attach(
        &self,
        _sandbox: &Sandbox,
        _container_id: &str,
        _spec: &ExecSpec,
    ) -> Result<ExecProcess, RuntimeError> {
        Err(RuntimeError::Internal {
            op: "attach".into(),
            message: format!(
                "the {} runtime keeps no container's stdin or terminal to attach to",
                self.version()
            ),
        })
    }

    /// Every sandbox this runtime (this edgecore's data) holds, for adoption after a restart.
    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError>;

    /// Reads the last `tail` lines (all if `None`) of a container's log, across its instances'
    /// current one. Used by `edgecore logs`.
    async fn read_log(
        &self,
        sandbox: &Sandbox,
        container_name: &str,
        tail: Option<usize>,
    ) -> Result<String, RuntimeError>;
}

/// How far away a deadline is put when the wanted one does not fit in an [`Instant`]: about 30
/// years, as tokio does for its own "never" timers.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `from + after`, saturating: a duration too large to add (a pod may well ask for
/// `terminationGracePeriodSeconds: 9223372036854775807`) gives a deadline so far away that it
/// never comes, instead of the panic of `Instant + Duration`. Every deadline the pod workers and
/// the runtimes compute goes through it.
pub(crate) fn deadline_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

/// Digest of a container spec: the hex SHA-256 of its JSON. Every runtime records the digest of
/// the container an instance was started from (the process runtime in its spec.json, the CRI
/// runtime in a container label), so that a restarted edgecore can tell an instance of an older
/// spec from one of the desired spec.
pub fn container_digest(container: &EdgeContainer) -> String {
    use sha2::{Digest, Sha256};
    // Serializing plain structs and vectors cannot fail; an empty input would still be stable.
    let mut json = serde_json::to_vec(container).unwrap_or_default();
    // The fields later protocols added (the last ones) are left out while off, newest first,
    // so that the containers an older edgecore started keep their digest: the upgrade
    // restarts none.
    const ADDED_OFF: [&[u8]; 3] = [
        // v8: hooks, then the security context.
        br#","lifecycle":{"post_start":null,"pre_stop":null}"#,
        br#","security":null"#,
        // v7.
        br#","stdin":false,"stdin_once":false,"tty":false"#,
    ];
    if json.pop() == Some(b'}') {
        for off in ADDED_OFF {
            if json.ends_with(off) {
                json.truncate(json.len() - off.len());
            }
        }
        json.push(b'}');
    }
    hex::encode(Sha256::digest(&json))
}

/// The newest instance log in a container's log directory: `<attempt>.log` with the highest
/// attempt. `Ok(None)` when the directory does not exist or holds none. Both runtimes keep
/// their logs in this layout, so `edgecore logs` reads them the same way.
pub(crate) async fn newest_attempt_log(
    dir: &std::path::Path,
) -> std::io::Result<Option<std::path::PathBuf>> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut newest: Option<(u32, std::path::PathBuf)> = None;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let Some(attempt) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(a, _)| attempt > *a) {
            newest = Some((attempt, entry.path()));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// Labels every runtime attaches to what it creates, so that a restarted edgecore can find it.
pub fn sandbox_labels(pod: &EdgePod) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("io.skerry.pod.namespace".to_string(), pod.namespace.clone()),
        ("io.skerry.pod.name".to_string(), pod.name.clone()),
        ("io.skerry.pod.uid".to_string(), pod.uid.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_digest_is_its_v6_one_while_stdin_and_tty_are_off() {
        use sha2::{Digest, Sha256};
        let c = EdgeContainer {
            name: "web".into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "1".into()],
            ..EdgeContainer::default()
        };
        let v6 = crate::cache::layout3::V6Container::from(c.clone());
        let old = hex::encode(Sha256::digest(serde_json::to_vec(&v6).unwrap()));
        assert_eq!(
            container_digest(&c),
            old,
            "an upgrade must not restart what runs"
        );
        let tty = EdgeContainer {
            stdin: true,
            tty: true,
            ..c.clone()
        };
        assert_ne!(container_digest(&tty), old);
        let user = EdgeContainer {
            security: Some(Box::new(protocol::security::SecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            })),
            ..c.clone()
        };
        assert_ne!(container_digest(&user), old);
        // Hooks change it too (they are part of what the instance was started with).
        let mut hooked = c;
        hooked.lifecycle.pre_stop = Some(protocol::pod::LifecycleHandler::Sleep { seconds: 1 });
        assert_ne!(container_digest(&hooked), old);
    }

    #[test]
    fn deadlines_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        // `now + grace` panics for these.
        for huge in [Duration::from_secs(i64::MAX as u64), Duration::MAX] {
            let far = deadline_after(now, huge);
            assert!(far >= now + Duration::from_secs(86_400 * 365), "{far:?}");
        }
    }
}
