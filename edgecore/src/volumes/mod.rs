//! A pod's volumes on the host: prepared by the pod worker before a container starts, for every
//! runtime, and torn down when the pod's sandbox is gone.
//!
//! # Layout
//!
//! Under the volume root (`<data-dir>/pods`, the same directory the `process` runtime keeps its
//! pods in):
//!
//! ```text
//! <pod-uid>/volumes/<volume-name>/                    emptyDir, configMap and secret volumes
//! <pod-uid>/volumes/<volume-name>/..data -> ..<ts>    configMap/secret: the current payload
//! <pod-uid>/volumes/<volume-name>/<key> -> ..data/<key>
//! ```
//!
//! hostPath volumes are the host path itself (checked against their `type`); nothing of them
//! lives here.
//!
//! # Kinds
//!
//! - `emptyDir`: a directory (mode 0777, as kubelet makes it). A memory-backed one is a tmpfs
//!   (with `sizeLimit` as its size) when edgecore runs as root; otherwise, or when the mount is
//!   refused, a plain directory, with a warning. A disk-backed `sizeLimit` is not enforced.
//! - `hostPath`: the path, after the `type` check (`DirectoryOrCreate` and `FileOrCreate`
//!   create it).
//! - `configMap` and `secret`: the object's keys as files (all of them, or the `items` with their
//!   paths), mode `defaultMode` or the item's `mode`; by default 0644 for ConfigMaps and 0600 for
//!   Secrets (stricter than Kubernetes' 0644: the edge runs workloads next to each other on one
//!   host). A secret volume is a tmpfs of mode 0700 when edgecore runs as root, so that secrets
//!   never reach the disk; otherwise a plain directory of mode 0700, with a warning. Both are
//!   mounted read-only, as in Kubernetes.
//!
//! # fsGroup
//!
//! A pod with `securityContext.fsGroup` gets its emptyDir, configMap and secret volumes given
//! to that group as kubelet does ([`ownership`]): group ownership, group read and write (read
//! only for configMap and secret volumes), setgid directories. An emptyDir is changed once per
//! pod and edgecore run (kubelet: once per volume set-up), so a container's restart leaves
//! what the pod wrote alone; configMap and secret volumes each time their payload is written.
//! `fsGroupChangePolicy: OnRootMismatch` skips a volume whose root is right already. hostPath
//! volumes are left as they are, as in Kubernetes.
//!
//! # Updates
//!
//! ConfigMap and secret files are written as kubelet's atomic writer does: the payload goes to a
//! new timestamped directory `..<timestamp>`, the `..data` symlink is swapped to it with one
//! `rename`, every top-level entry is a symlink through `..data`, and the old directory is
//! removed after the swap. A container reading the volume sees the old payload or the new one,
//! never a mix nor a half-written file. [`Volumes::refresh`] rewrites a pod's materialised volumes
//! when its objects changed (only then: an unchanged payload is not rewritten), which is how
//! running containers see updates, as in Kubernetes (environment variables are not updated).
//!
//! A ConfigMap or Secret a volume needs that is not on the node fails the container's start with
//! `CreateContainerConfigError` (the worker retries; it starts once the object arrives), unless
//! the volume is `optional` (then its payload is empty). A volume already materialised keeps its
//! last payload if its object disappears, as kubelet's does.
//!
//! # subPath
//!
//! A mount with `subPath` gets a path within the volume. Absolute subPaths and `..` components
//! are refused, and a subPath that resolves (through symlinks a container may have made) outside
//! the volume is refused too. A missing subPath is created as a directory in emptyDir and
//! hostPath volumes; in configMap and secret volumes it must name an existing file. (As in
//! Kubernetes, a subPath mount of a configMap or secret volume is not updated.)
//!
//! # Lifetime
//!
//! Preparing is idempotent: a volume prepared before (by another container, an earlier instance,
//! or an edgecore that ran before this one) is reused, so emptyDir contents survive container
//! restarts and edgecore restarts; a tmpfs is mounted once. [`Volumes::teardown`] unmounts every
//! mount under the pod's directory and removes it; nothing stays mounted.

mod atomic;
mod mounts;
mod ownership;
mod paths;
mod payload;
#[cfg(test)]
mod tests;

use atomic::{has_payload, write_atomic};
use mounts::{is_mount_point, mount_points_under, unmount};
use paths::{check_host_path, is_safe_component, sub_path};
use payload::pod_volume_payload;

use crate::cache::ConfigSet;
use crate::runtime::Mount;
use nix::mount::MsFlags;
use protocol::pod::{EdgeContainer, EdgePod, Volume, VolumeSource};
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Default file mode of a ConfigMap volume (Kubernetes' default).
const CONFIG_MAP_DEFAULT_MODE: u32 = 0o644;
/// Default file mode of a Secret volume.
const SECRET_DEFAULT_MODE: u32 = 0o600;
/// Mode of a secret volume's directory.
const SECRET_DIR_MODE: u32 = 0o700;
/// Mode of a ConfigMap volume's directory and of payload directories.
const CONFIG_DIR_MODE: u32 = 0o755;
/// Mode of an emptyDir (kubelet's, so that containers running as any user can write).
const EMPTY_DIR_MODE: u32 = 0o777;
/// The symlink to the current payload directory.
const DATA_LINK: &str = "..data";
/// Where the next `..data` symlink is made before it is renamed over the current one.
const DATA_LINK_TMP: &str = "..data_tmp";

/// Why a volume could not be prepared. Messages name the volume and object, never a value.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A container mounts a volume the pod does not define.
    #[error("the container mounts volume {volume:?}, which the pod does not define; add it to the pod's volumes or remove the mount")]
    Undefined {
        /// Volume name.
        volume: String,
    },
    /// The ConfigMap or Secret of a non-optional volume is not on the node.
    #[error("volume {volume:?}: {kind} {name:?} (namespace {namespace:?}) is not available on this node (it does not exist, or has not arrived yet); the container starts once it arrives")]
    MissingObject {
        /// Volume name.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// Object namespace.
        namespace: String,
    },
    /// An item of a non-optional volume names a key its object does not have.
    #[error("volume {volume:?}: {kind} {name:?} has no key {key:?}, which the volume's items list; add the key or mark the volume optional")]
    MissingKey {
        /// Volume name.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// Something in the volume's definition cannot be used (a path, a mode, a name, a hostPath
    /// type that does not match).
    #[error("volume {volume:?}: {message}")]
    Invalid {
        /// Volume name.
        volume: String,
        /// What is wrong and what to fix.
        message: String,
    },
    /// A mount's subPath cannot be used.
    #[error("volume {volume:?}: subPath {sub_path:?} {message}")]
    SubPath {
        /// Volume name.
        volume: String,
        /// The subPath.
        sub_path: String,
        /// What is wrong.
        message: String,
    },
    /// The edge could not do what the volume needs on the host.
    #[error("volume {volume:?}: cannot {op} {path}: {source}")]
    Io {
        /// Volume name (or the pod's volume directory).
        volume: String,
        /// What it was doing.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl VolumeError {
    /// Kubernetes waiting reason for a container whose volumes could not be prepared: a problem
    /// of the pod's configuration is `CreateContainerConfigError`, a failure of the host
    /// `CreateContainerError`.
    pub fn waiting_reason(&self) -> &'static str {
        match self {
            VolumeError::Io { .. } => "CreateContainerError",
            _ => "CreateContainerConfigError",
        }
    }
}

fn io_err(volume: &str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let volume = volume.to_string();
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        volume,
        op,
        path,
        source,
    }
}

/// The pods' volumes on this host (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Volumes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<data-dir>/pods`; `None` for a manager built without one (volumes other than hostPath
    /// are then refused).
    root: Option<PathBuf>,
    /// Whether tmpfs mounts are attempted (edgecore runs as root).
    tmpfs: bool,
    /// emptyDirs (`<pod-uid>/<volume>`) given to their pod's `fsGroup` since this edgecore
    /// started: once per pod and edgecore, as kubelet does it once per volume set-up (a
    /// container's restart does not change what its pod wrote meanwhile).
    owned: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Volumes {
    /// Volumes under `root` (`<data-dir>/pods`). Memory-backed emptyDirs and secret volumes are
    /// tmpfs mounts when edgecore runs as root.
    pub fn new(root: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: Some(root),
                tmpfs: nix::unistd::geteuid().is_root(),
                owned: Default::default(),
            }),
        }
    }

    /// No volume directory: only hostPath volumes can be prepared; any other volume fails the
    /// container's start with a message saying so. For pod managers built without a data dir.
    pub(crate) fn without_root() -> Self {
        Self {
            inner: Arc::new(Inner {
                root: None,
                tmpfs: false,
                owned: Default::default(),
            }),
        }
    }

    /// Whether memory-backed volumes are tmpfs mounts (`false` makes them plain directories,
    /// as for an edgecore that does not run as root).
    pub fn with_tmpfs(self, tmpfs: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                tmpfs,
                owned: Default::default(),
            }),
        }
    }

    /// The volume root, if any.
    pub fn root(&self) -> Option<&Path> {
        self.inner.root.as_deref()
    }

    /// Prepares every volume `container` mounts and returns its mounts, in the order of its
    /// `volumeMounts`. Idempotent; ConfigMap and secret volumes get the current payload.
    pub async fn prepare(
        &self,
        pod: &EdgePod,
        container: &EdgeContainer,
        configs: Arc<ConfigSet>,
    ) -> Result<Vec<Mount>, VolumeError> {
        if container.volume_mounts.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let pod = pod.clone();
        let container = container.clone();
        blocking(move || this.prepare_sync(&pod, &container, &configs)).await
    }

    /// Brings the pod's materialised ConfigMap and secret volumes up to date with `configs`
    /// (atomically; an unchanged payload is left alone). Volumes not prepared yet are left for
    /// the container start that needs them. Failures are logged: the old payload stays.
    pub async fn refresh(&self, pod: &EdgePod, configs: Arc<ConfigSet>) {
        if !pod.volumes.iter().any(|v| v.source.is_payload()) {
            return;
        }
        let this = self.clone();
        let pod = pod.clone();
        let result = blocking(move || {
            this.refresh_sync(&pod, &configs);
            Ok(())
        })
        .await;
        if let Err(e) = result {
            warn!(error = %e, "cannot refresh the pod's volumes");
        }
    }

    /// Unmounts everything under the pod's directory and removes its volumes, then the pod's
    /// directory if nothing else is left in it. Idempotent.
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        let this = self.clone();
        let uid = pod_uid.to_string();
        blocking(move || this.teardown_sync(&uid)).await
    }

    /// Uids of the pods that have a volume directory here, for the removal of what pods that
    /// no longer exist left behind.
    pub async fn pods_with_volumes(&self) -> Vec<String> {
        let Some(root) = self.inner.root.clone() else {
            return Vec::new();
        };
        blocking(move || {
            let mut out = Vec::new();
            let entries = match fs::read_dir(&root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(io_err("*", "list", &root)(e)),
            };
            for entry in entries.flatten() {
                if let Ok(name) = entry.file_name().into_string() {
                    if is_safe_component(&name) && entry.path().join("volumes").is_dir() {
                        out.push(name);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "cannot list the pods' volume directories");
            Vec::new()
        })
    }

    fn pod_volumes_dir(&self, pod_uid: &str, volume: &str) -> Result<PathBuf, VolumeError> {
        let root = self
            .inner
            .root
            .as_ref()
            .ok_or_else(|| VolumeError::Invalid {
                volume: volume.to_string(),
                message: "this pod manager has no volume directory (it was built without one); \
                          only hostPath volumes can be used"
                    .to_string(),
            })?;
        if !is_safe_component(pod_uid) {
            return Err(VolumeError::Invalid {
                volume: volume.to_string(),
                message: format!("pod uid {pod_uid:?} is not usable as a directory name"),
            });
        }
        Ok(root.join(pod_uid).join("volumes"))
    }

    fn volume_dir(&self, pod_uid: &str, volume: &str) -> Result<PathBuf, VolumeError> {
        if !is_safe_component(volume) || volume.starts_with("..") {
            return Err(VolumeError::Invalid {
                volume: volume.to_string(),
                message: "the volume name is not usable as a directory name".to_string(),
            });
        }
        Ok(self.pod_volumes_dir(pod_uid, volume)?.join(volume))
    }

    fn prepare_sync(
        &self,
        pod: &EdgePod,
        container: &EdgeContainer,
        configs: &ConfigSet,
    ) -> Result<Vec<Mount>, VolumeError> {
        let mut prepared: HashMap<&str, PathBuf> = HashMap::new();
        let mut mounts = Vec::with_capacity(container.volume_mounts.len());
        for mount in &container.volume_mounts {
            let volume = pod
                .volumes
                .iter()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| VolumeError::Undefined {
                    volume: mount.name.clone(),
                })?;
            let base = match prepared.get(volume.name.as_str()) {
                Some(path) => path.clone(),
                None => {
                    let path = self.prepare_volume(pod, volume, configs)?;
                    prepared.insert(&volume.name, path.clone());
                    path
                }
            };
            let managed = volume.source.is_payload();
            let host_path = if mount.sub_path.is_empty() {
                base
            } else {
                sub_path(&volume.name, &base, &mount.sub_path, !managed)?
            };
            mounts.push(Mount {
                volume: volume.name.clone(),
                host_path,
                container_path: mount.mount_path.clone(),
                // ConfigMap and secret volumes are always read-only, as in Kubernetes.
                read_only: mount.read_only || managed,
            });
        }
        Ok(mounts)
    }

    /// Prepares one volume and returns its host path.
    fn prepare_volume(
        &self,
        pod: &EdgePod,
        volume: &Volume,
        configs: &ConfigSet,
    ) -> Result<PathBuf, VolumeError> {
        match &volume.source {
            VolumeSource::HostPath { path, kind } => {
                check_host_path(Path::new(path), kind).map_err(|message| VolumeError::Invalid {
                    volume: volume.name.clone(),
                    message: format!("hostPath {message}"),
                })?;
                Ok(PathBuf::from(path))
            }
            VolumeSource::EmptyDir {
                memory,
                size_limit_bytes,
            } => {
                let dir = self.volume_dir(&pod.uid, &volume.name)?;
                if *memory {
                    let mut options = format!("mode={EMPTY_DIR_MODE:o}");
                    if let Some(size) = size_limit_bytes {
                        options.push_str(&format!(",size={size}"));
                    }
                    self.memory_dir(&volume.name, &dir, &options, EMPTY_DIR_MODE)?;
                } else {
                    make_dir(&volume.name, &dir, EMPTY_DIR_MODE)?;
                }
                let key = format!("{}/{}", pod.uid, volume.name);
                let owned = |inner: &Inner| {
                    inner
                        .owned
                        .lock()
                        .map(|o| o.contains(&key))
                        .unwrap_or(false)
                };
                if !owned(&self.inner) {
                    apply_fs_group(pod, &volume.name, &dir, false)?;
                    if let Ok(mut o) = self.inner.owned.lock() {
                        o.insert(key);
                    }
                }
                Ok(dir)
            }
            VolumeSource::ConfigMap { .. }
            | VolumeSource::Secret { .. }
            | VolumeSource::DownwardApi { .. }
            | VolumeSource::Projected { .. } => {
                let dir = self.volume_dir(&pod.uid, &volume.name)?;
                let payload = match pod_volume_payload(pod, volume, configs) {
                    Ok(payload) => payload,
                    // A volume that has a payload keeps it when its object disappears.
                    Err(e @ VolumeError::MissingObject { .. }) if has_payload(&dir) => {
                        warn!(volume = %volume.name, error = %e,
                              "keeping the volume's last contents");
                        return Ok(dir);
                    }
                    Err(e) => return Err(e),
                };
                // Projections may hold secrets: kubelet backs them with memory too.
                if matches!(
                    volume.source,
                    VolumeSource::Secret { .. } | VolumeSource::Projected { .. }
                ) {
                    self.memory_dir(
                        &volume.name,
                        &dir,
                        &format!("mode={SECRET_DIR_MODE:o}"),
                        SECRET_DIR_MODE,
                    )?;
                } else {
                    make_dir(&volume.name, &dir, CONFIG_DIR_MODE)?;
                }
                write_atomic(&dir, &payload).map_err(io_err(&volume.name, "write", &dir))?;
                apply_fs_group(pod, &volume.name, &dir, true)?;
                Ok(dir)
            }
        }
    }

    /// A directory backed by memory: a tmpfs mounted with `options` if possible, else a plain
    /// directory with `mode` (and a warning).
    fn memory_dir(
        &self,
        volume: &str,
        dir: &Path,
        options: &str,
        mode: u32,
    ) -> Result<(), VolumeError> {
        make_dir(volume, dir, mode)?;
        if !self.inner.tmpfs {
            warn!(volume, path = %dir.display(),
                  "edgecore does not run as root: this memory-backed volume is a plain \
                   directory on disk");
            return Ok(());
        }
        let canonical = fs::canonicalize(dir).map_err(io_err(volume, "resolve", dir))?;
        if is_mount_point(&canonical) {
            return Ok(());
        }
        match nix::mount::mount(
            Some("tmpfs"),
            &canonical,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        ) {
            Ok(()) => {
                debug!(volume, path = %canonical.display(), "tmpfs mounted");
                Ok(())
            }
            Err(e) => {
                warn!(volume, path = %dir.display(), error = %e,
                      "cannot mount a tmpfs; this memory-backed volume is a plain directory \
                       on disk");
                Ok(())
            }
        }
    }

    fn refresh_sync(&self, pod: &EdgePod, configs: &ConfigSet) {
        for volume in &pod.volumes {
            if !volume.source.is_payload() {
                continue;
            }
            let Ok(dir) = self.volume_dir(&pod.uid, &volume.name) else {
                continue;
            };
            if !has_payload(&dir) {
                continue;
            }
            let payload = match pod_volume_payload(pod, volume, configs) {
                Ok(payload) => payload,
                Err(e) => {
                    warn!(volume = %volume.name, error = %e,
                          "cannot update the volume; it keeps its last contents");
                    continue;
                }
            };
            match write_atomic(&dir, &payload) {
                Ok(true) => {
                    info!(volume = %volume.name, "volume updated");
                    if let Err(e) = apply_fs_group(pod, &volume.name, &dir, true) {
                        warn!(volume = %volume.name, error = %e,
                              "cannot give the updated volume to the pod's fsGroup");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(volume = %volume.name, path = %dir.display(), error = %e,
                                "cannot update the volume; it keeps its last contents"),
            }
        }
    }

    fn teardown_sync(&self, pod_uid: &str) -> Result<(), VolumeError> {
        if let Ok(mut o) = self.inner.owned.lock() {
            o.retain(|k| !k.starts_with(&format!("{pod_uid}/")));
        }
        // Without a root, or for a uid that is no directory name, nothing was ever made.
        if self.inner.root.is_none() || !is_safe_component(pod_uid) {
            return Ok(());
        }
        let volumes = self.pod_volumes_dir(pod_uid, "*")?;
        let Some(pod_dir) = volumes.parent().map(Path::to_path_buf) else {
            return Ok(());
        };
        match fs::canonicalize(&volumes) {
            Ok(canonical) => {
                let mut mounts = mount_points_under(&canonical);
                // Deepest first.
                mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
                for mount in &mounts {
                    unmount(mount)?;
                }
                let left = mount_points_under(&canonical);
                if let Some(still) = left.first() {
                    return Err(io_err("*", "unmount", still)(io::Error::other(
                        "still mounted after the unmount",
                    )));
                }
                match fs::remove_dir_all(&volumes) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("*", "remove", &volumes)(e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("*", "resolve", &volumes)(e)),
        }
        // The pod's directory goes too once nothing else is in it (the process runtime removes
        // its own part first).
        match fs::remove_dir(&pod_dir) {
            Ok(()) => debug!(path = %pod_dir.display(), "pod directory removed"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => return Err(io_err("*", "remove", &pod_dir)(e)),
        }
        Ok(())
    }
}

/// Gives the volume at `dir` to the pod's `fsGroup`, if it has one (see [`ownership`]);
/// `read_only` for configMap and secret volumes (group read, not write).
fn apply_fs_group(
    pod: &EdgePod,
    volume: &str,
    dir: &Path,
    read_only: bool,
) -> Result<(), VolumeError> {
    let Some(security) = pod.security.as_deref() else {
        return Ok(());
    };
    let Some(gid) = security.fs_group.and_then(|g| u32::try_from(g).ok()) else {
        return Ok(());
    };
    if security.fs_group_on_root_mismatch
        && !ownership::needs_change(dir, gid, read_only).map_err(io_err(volume, "inspect", dir))?
    {
        return Ok(());
    }
    ownership::set_ownership(dir, gid, read_only).map_err(io_err(
        volume,
        "give the pod's fsGroup",
        dir,
    ))?;
    debug!(volume, gid, "volume given to the pod's fsGroup");
    Ok(())
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(VolumeError::Io {
            volume: "*".into(),
            op: "run",
            path: PathBuf::new(),
            source: io::Error::other(format!("volume task failed: {e}")),
        })
    })
}

/// Creates `dir` (and its parents) and gives it `mode`.
fn make_dir(volume: &str, dir: &Path, mode: u32) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(volume, "create", dir))?;
    let current = fs::metadata(dir)
        .map_err(io_err(volume, "inspect", dir))?
        .permissions()
        .mode()
        & 0o7777;
    // The setgid bit is the pod's fsGroup's (see `ownership`), not a drift to undo.
    if current & !0o2000 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err(
            volume,
            "set the mode of",
            dir,
        ))?;
    }
    Ok(())
}
