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

use crate::cache::ConfigSet;
use crate::runtime::Mount;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use protocol::pod::{EdgeContainer, EdgePod, KeyToPath, Volume, VolumeSource};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
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
}

impl Volumes {
    /// Volumes under `root` (`<data-dir>/pods`). Memory-backed emptyDirs and secret volumes are
    /// tmpfs mounts when edgecore runs as root.
    pub fn new(root: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: Some(root),
                tmpfs: nix::unistd::geteuid().is_root(),
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
        if !pod.volumes.iter().any(|v| {
            matches!(
                v.source,
                VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. }
            )
        }) {
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
            let managed = matches!(
                volume.source,
                VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. }
            );
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
                Ok(dir)
            }
            VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. } => {
                let dir = self.volume_dir(&pod.uid, &volume.name)?;
                let payload = match volume_payload(&pod.namespace, volume, configs) {
                    Ok(payload) => payload,
                    // A volume that has a payload keeps it when its object disappears.
                    Err(e @ VolumeError::MissingObject { .. }) if has_payload(&dir) => {
                        warn!(volume = %volume.name, error = %e,
                              "keeping the volume's last contents");
                        return Ok(dir);
                    }
                    Err(e) => return Err(e),
                };
                if matches!(volume.source, VolumeSource::Secret { .. }) {
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
            if !matches!(
                volume.source,
                VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. }
            ) {
                continue;
            }
            let Ok(dir) = self.volume_dir(&pod.uid, &volume.name) else {
                continue;
            };
            if !has_payload(&dir) {
                continue;
            }
            let payload = match volume_payload(&pod.namespace, volume, configs) {
                Ok(payload) => payload,
                Err(e) => {
                    warn!(volume = %volume.name, error = %e,
                          "cannot update the volume; it keeps its last contents");
                    continue;
                }
            };
            match write_atomic(&dir, &payload) {
                Ok(true) => info!(volume = %volume.name, "volume updated"),
                Ok(false) => {}
                Err(e) => warn!(volume = %volume.name, path = %dir.display(), error = %e,
                                "cannot update the volume; it keeps its last contents"),
            }
        }
    }

    fn teardown_sync(&self, pod_uid: &str) -> Result<(), VolumeError> {
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

/// Unmounts `path`; one that is busy (a process still uses it) is detached lazily, so that
/// nothing stays mounted.
fn unmount(path: &Path) -> Result<(), VolumeError> {
    match nix::mount::umount2(path, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => {
            warn!(path = %path.display(), "volume busy; detaching it lazily");
            nix::mount::umount2(path, MntFlags::MNT_DETACH)
                .map_err(|e| io_err("*", "unmount", path)(io::Error::from_raw_os_error(e as i32)))
        }
        Err(e) => Err(io_err("*", "unmount", path)(io::Error::from_raw_os_error(
            e as i32,
        ))),
    }
}

/// Creates `dir` (and its parents) and gives it `mode`.
fn make_dir(volume: &str, dir: &Path, mode: u32) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err(volume, "create", dir))?;
    let current = fs::metadata(dir)
        .map_err(io_err(volume, "inspect", dir))?
        .permissions()
        .mode()
        & 0o7777;
    if current != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err(
            volume,
            "set the mode of",
            dir,
        ))?;
    }
    Ok(())
}

/// Whether a configMap or secret volume has been written (its `..data` link exists).
fn has_payload(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(DATA_LINK)).is_ok()
}

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PayloadFile {
    bytes: Vec<u8>,
    mode: u32,
}

/// Relative path → file.
type Payload = BTreeMap<PathBuf, PayloadFile>;

/// The files of a configMap or secret volume, from `configs`. A missing object is an error
/// unless the volume is optional (then the payload is empty).
fn volume_payload(
    namespace: &str,
    volume: &Volume,
    configs: &ConfigSet,
) -> Result<Payload, VolumeError> {
    let (kind, name, items, default_mode, optional, fallback_mode, entries) = match &volume.source {
        VolumeSource::ConfigMap {
            name,
            items,
            default_mode,
            optional,
        } => (
            "configmap",
            name,
            items,
            default_mode,
            *optional,
            CONFIG_MAP_DEFAULT_MODE,
            configs.config_map(namespace, name).map(|cm| {
                cm.entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect::<BTreeMap<String, Vec<u8>>>()
            }),
        ),
        VolumeSource::Secret {
            name,
            items,
            default_mode,
            optional,
        } => (
            "secret",
            name,
            items,
            default_mode,
            *optional,
            SECRET_DEFAULT_MODE,
            configs.secret(namespace, name).map(|s| s.data.clone()),
        ),
        VolumeSource::EmptyDir { .. } | VolumeSource::HostPath { .. } => return Ok(Payload::new()),
    };
    let invalid = |message: String| VolumeError::Invalid {
        volume: volume.name.clone(),
        message,
    };
    let check_mode = |mode: u32, what: &str| {
        if mode > 0o777 {
            Err(invalid(format!(
                "{what} {mode:#o} is not a file mode; use a value from 0 to 0777"
            )))
        } else {
            Ok(mode)
        }
    };
    let default_mode = check_mode(default_mode.unwrap_or(fallback_mode), "defaultMode")?;
    let Some(entries) = entries else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(VolumeError::MissingObject {
            volume: volume.name.clone(),
            kind,
            name: name.clone(),
            namespace: namespace.to_string(),
        });
    };
    let mut payload = Payload::new();
    let mut add = |path: &str, bytes: &[u8], mode: u32| -> Result<(), VolumeError> {
        let rel = payload_path(path).map_err(|message| {
            invalid(format!("file path {path:?} of {kind} {name:?} {message}"))
        })?;
        payload.insert(
            rel,
            PayloadFile {
                bytes: bytes.to_vec(),
                mode,
            },
        );
        Ok(())
    };
    if items.is_empty() {
        for (key, bytes) in &entries {
            add(key, bytes, default_mode)?;
        }
    } else {
        for KeyToPath { key, path, mode } in items {
            let Some(bytes) = entries.get(key) else {
                if optional {
                    continue;
                }
                return Err(VolumeError::MissingKey {
                    volume: volume.name.clone(),
                    kind,
                    name: name.clone(),
                    key: key.clone(),
                });
            };
            let mode = match mode {
                Some(mode) => check_mode(*mode, "item mode")?,
                None => default_mode,
            };
            add(path, bytes, mode)?;
        }
    }
    // A file may not also be a directory of another (`a` and `a/b`).
    for path in payload.keys() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if payload.contains_key(parent) {
                return Err(invalid(format!(
                    "{kind} {name:?} maps one key to {} and another below it, to {}",
                    parent.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(payload)
}

/// Checks a payload file path as kubelet does: relative, not empty, no `..` component, and not
/// starting with `..` (which names the writer's own entries).
fn payload_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("is empty".to_string());
    }
    if path.starts_with("..") {
        return Err("must not start with \"..\"".to_string());
    }
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for component in p.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err("must not contain \"..\"".to_string()),
            Component::RootDir | Component::Prefix(_) => return Err("must be relative".to_string()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names no file".to_string());
    }
    Ok(out)
}

/// The host path of a mount's `subPath` within the volume at `base`. `create` makes a missing
/// one a directory (emptyDir, hostPath).
fn sub_path(volume: &str, base: &Path, sub: &str, create: bool) -> Result<PathBuf, VolumeError> {
    let refuse = |message: &str| VolumeError::SubPath {
        volume: volume.to_string(),
        sub_path: sub.to_string(),
        message: message.to_string(),
    };
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err(refuse("must be a relative path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("must not contain \"..\""));
    }
    // A container may have put symlinks in the volume: every step must stay inside it, and is
    // checked before the next one is made. (A container that swaps a checked directory for a
    // symlink between the check and the start is not stopped here; kubelet's defence against
    // that needs bind mounts of open file descriptors.)
    let root = fs::canonicalize(base).map_err(io_err(volume, "resolve", base))?;
    let mut path = base.to_path_buf();
    for component in p.components() {
        match component {
            Component::Normal(c) => path.push(c),
            Component::CurDir => continue,
            _ => return Err(refuse("must be a relative path without \"..\"")),
        }
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Err(refuse("does not exist in the volume"));
                }
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(volume, "create the subPath", &path)(e)),
                }
            }
            Err(e) => return Err(io_err(volume, "inspect", &path)(e)),
        }
        let resolved = fs::canonicalize(&path).map_err(io_err(volume, "resolve", &path))?;
        if !resolved.starts_with(&root) {
            return Err(refuse(
                "leads out of the volume (through a symlink); refused",
            ));
        }
    }
    Ok(path)
}

/// Checks (or creates) a hostPath volume according to its Kubernetes `type`.
fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("path {} must be absolute", path.display()));
    }
    let meta = fs::metadata(path).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else if meta.is_none() {
            Err(format!(
                "{} does not exist; type {kind} requires an existing {what}",
                path.display()
            ))
        } else {
            Err(format!(
                "{} is not a {what}, as type {kind} requires",
                path.display()
            ))
        }
    };
    match kind {
        "" => Ok(()),
        "Directory" => want(ft.is_some_and(|t| t.is_dir()), "directory"),
        "File" => want(ft.is_some_and(|t| t.is_file()), "regular file"),
        "Socket" => want(ft.is_some_and(|t| t.is_socket()), "socket"),
        "CharDevice" => want(ft.is_some_and(|t| t.is_char_device()), "character device"),
        "BlockDevice" => want(ft.is_some_and(|t| t.is_block_device()), "block device"),
        "DirectoryOrCreate" => match ft {
            Some(t) if t.is_dir() => Ok(()),
            Some(_) => Err(format!("{} exists but is not a directory", path.display())),
            None => fs::create_dir_all(path)
                .map_err(|e| format!("{}: cannot create it: {e}", path.display())),
        },
        "FileOrCreate" => match ft {
            Some(t) if t.is_file() => Ok(()),
            Some(_) => Err(format!(
                "{} exists but is not a regular file",
                path.display()
            )),
            None => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("{}: cannot create it: {e}", path.display())),
        },
        other => Err(format!(
            "type {other:?} is unknown; use Directory, DirectoryOrCreate, File, FileOrCreate, \
             Socket, CharDevice, BlockDevice or leave it empty"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The atomic writer.

/// Writes `payload` into `dir` as kubelet's atomic writer does (see the module docs): a new
/// `..<timestamp>` directory, the `..data` symlink swapped to it with a rename, top-level entries
/// as symlinks through `..data`, then the old directory and entries that are no longer in the
/// payload removed. Returns whether anything changed; an identical payload is not rewritten.
/// Every step can be redone, so a crash in the middle is repaired by the next write.
fn write_atomic(dir: &Path, payload: &Payload) -> io::Result<bool> {
    let data_link = dir.join(DATA_LINK);
    let old = fs::read_link(&data_link).ok();
    let old_dir = old.as_ref().map(|name| dir.join(name));
    let old_payload = match &old_dir {
        Some(d) => read_payload(d).ok(),
        None => None,
    };
    let changed = old_payload.as_ref() != Some(payload);
    if changed {
        let new_name = new_payload_dir(dir)?;
        let new_dir = dir.join(&new_name);
        for (rel, file) in payload {
            let path = new_dir.join(rel);
            if let Some(parent) = path.parent() {
                if parent != new_dir {
                    fs::create_dir_all(parent)?;
                    set_dir_modes(&new_dir, parent)?;
                }
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&path)?;
            f.write_all(&file.bytes)?;
            // The umask may have taken bits away.
            f.set_permissions(fs::Permissions::from_mode(file.mode))?;
        }
        let tmp_link = dir.join(DATA_LINK_TMP);
        match fs::remove_file(&tmp_link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&new_name, &tmp_link)?;
        // The swap: readers see the old payload or the new one.
        fs::rename(&tmp_link, &data_link)?;
    }
    // Top-level entries, through `..data`.
    let wanted: BTreeSet<PathBuf> = payload
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    for top in &wanted {
        let link = dir.join(top);
        let target = Path::new(DATA_LINK).join(top);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let tmp = dir.join(format!("..{}.tmp", top.to_string_lossy().replace('/', "_")));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        fs::rename(&tmp, &link)?;
    }
    // What is no longer in the payload: user-visible links, then old payload directories (the
    // one just replaced, and any a crash left behind).
    let current = fs::read_link(&data_link).ok();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let path = entry.path();
        if name_str == DATA_LINK || current.as_deref() == Some(Path::new(&name)) {
            continue;
        }
        if name_str.starts_with("..") {
            // An old payload directory, or a link a crash left half-made.
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            continue;
        }
        if entry.file_type()?.is_symlink() && !wanted.contains(Path::new(&name)) {
            fs::remove_file(&path)?;
        }
    }
    Ok(changed)
}

/// Gives the directories from `base` (exclusive) down to `dir` the payload directory mode.
fn set_dir_modes(base: &Path, dir: &Path) -> io::Result<()> {
    let mut d = dir;
    while d != base {
        fs::set_permissions(d, fs::Permissions::from_mode(CONFIG_DIR_MODE))?;
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    Ok(())
}

/// Creates a fresh `..<timestamp>` directory in `dir` and returns its name.
fn new_payload_dir(dir: &Path) -> io::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!("..{}", timestamp(now.as_secs(), now.subsec_nanos()));
    for n in 0u32.. {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => {
                fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(CONFIG_DIR_MODE))?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free payload directory name"))
}

/// `YYYY_MM_DD_HH_MM_SS.nnnnnnnnn` (UTC), kubelet's form of a payload directory's timestamp.
fn timestamp(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{nanos:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The files under a payload directory, with their modes.
fn read_payload(dir: &Path) -> io::Result<Payload> {
    fn walk(base: &Path, dir: &Path, out: &mut Payload) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                walk(base, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(base)
                    .map_err(io::Error::other)?
                    .to_path_buf();
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                out.insert(
                    rel,
                    PayloadFile {
                        bytes: fs::read(&path)?,
                        mode,
                    },
                );
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Mounts.

/// Mount points at or under `dir` (which must be canonical), from `/proc/self/mountinfo`.
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mount_points(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Whether `path` (canonical) is a mount point.
fn is_mount_point(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_mount_points(&info).iter().any(|m| m == path))
        .unwrap_or(false)
}

/// The mount points (field 5) of a mountinfo text, with its octal escapes (`\040` for a space)
/// decoded.
fn parse_mount_points(info: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| {
            let bytes = field.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'\\' && i + 4 <= bytes.len() {
                    let digits = &bytes[i + 1..i + 4];
                    if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                        let value = digits
                            .iter()
                            .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                        if let Ok(b) = u8::try_from(value) {
                            out.push(b);
                            i += 4;
                            continue;
                        }
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// Whether `s` can be used as one path component without escaping its parent.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::config::{EdgeConfigMap, EdgeSecret};
    use protocol::pod::{RestartPolicy, VolumeMount};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn file(bytes: &str, mode: u32) -> PayloadFile {
        PayloadFile {
            bytes: bytes.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, b, m)| (PathBuf::from(p), file(b, *m)))
            .collect()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn link(path: &Path) -> String {
        fs::read_link(path)
            .expect("symlink")
            .to_string_lossy()
            .into_owned()
    }

    /// Entries of `dir` whose name starts with `..` and that are directories.
    fn payload_dirs(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_atomic_writer_lays_out_files_with_their_modes_behind_data_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let first = payload(&[
            ("app.conf", "level=1", 0o644),
            ("tls/key.pem", "KEY", 0o600),
            ("empty", "", 0o400),
        ]);
        assert!(write_atomic(dir, &first).expect("write"));
        assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "level=1");
        assert_eq!(fs::read_to_string(dir.join("tls/key.pem")).unwrap(), "KEY");
        assert_eq!(fs::read_to_string(dir.join("empty")).unwrap(), "");
        assert_eq!(mode_of(&dir.join("app.conf")), 0o644);
        assert_eq!(mode_of(&dir.join("tls/key.pem")), 0o600);
        assert_eq!(mode_of(&dir.join("empty")), 0o400);
        // Top-level entries are links through `..data`, which names the payload directory.
        assert_eq!(link(&dir.join("app.conf")), "..data/app.conf");
        assert_eq!(link(&dir.join("tls")), "..data/tls");
        let data = link(&dir.join(DATA_LINK));
        assert!(data.starts_with("..") && data != DATA_LINK, "{data}");
        assert_eq!(payload_dirs(dir), std::slice::from_ref(&data));
        assert!(fs::symlink_metadata(dir.join(&data)).unwrap().is_dir());

        // The same payload again: nothing is rewritten.
        assert!(!write_atomic(dir, &first).expect("write"));
        assert_eq!(link(&dir.join(DATA_LINK)), data);

        // A new payload: swapped in, the old directory and the dropped entries are gone.
        let second = payload(&[("app.conf", "level=2", 0o640), ("new", "n", 0o644)]);
        assert!(write_atomic(dir, &second).expect("write"));
        let data2 = link(&dir.join(DATA_LINK));
        assert_ne!(data2, data);
        assert_eq!(payload_dirs(dir), std::slice::from_ref(&data2));
        assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "level=2");
        assert_eq!(mode_of(&dir.join("app.conf")), 0o640);
        assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "n");
        for gone in ["tls", "empty"] {
            assert!(fs::symlink_metadata(dir.join(gone)).is_err(), "{gone} left");
        }
        // Only a mode change is a change too.
        let third = payload(&[("app.conf", "level=2", 0o600), ("new", "n", 0o644)]);
        assert!(write_atomic(dir, &third).expect("write"));
        assert_eq!(mode_of(&dir.join("app.conf")), 0o600);
        // An empty payload leaves an empty volume.
        assert!(write_atomic(dir, &Payload::new()).expect("write"));
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n == DATA_LINK), "{names:?}");
        assert!(fs::read_dir(dir.join(DATA_LINK)).unwrap().next().is_none());
    }

    #[test]
    fn the_atomic_writer_repairs_what_a_crash_left() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let p = payload(&[("a", "1", 0o644)]);
        write_atomic(dir, &p).expect("write");
        // A crash after making a payload directory and a temporary link, and before making a
        // user-visible link.
        fs::create_dir(dir.join("..2001_01_01_00_00_00.000000000")).unwrap();
        std::os::unix::fs::symlink("..nowhere", dir.join(DATA_LINK_TMP)).unwrap();
        fs::remove_file(dir.join("a")).unwrap();
        assert!(!write_atomic(dir, &p).expect("write"));
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(payload_dirs(dir).len(), 1);
        assert!(fs::symlink_metadata(dir.join(DATA_LINK_TMP)).is_err());
    }

    /// Readers of a volume being updated over and over never see a file that is partly one
    /// version and partly another, nor (through one resolution of `..data`) files of two
    /// versions: an in-place writer fails this.
    #[test]
    fn readers_never_see_a_partial_update() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        const LEN: usize = 64 * 1024;
        let version = |v: u8| {
            let text = String::from_utf8(vec![b'a' + v; LEN]).unwrap();
            payload(&[("one", &text, 0o644), ("two", &text, 0o644)])
        };
        write_atomic(&dir, &version(0)).expect("write");
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let dir = dir.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !done.load(Ordering::SeqCst) {
                    // Each file through its own link: one whole version.
                    for name in ["one", "two"] {
                        match fs::read(dir.join(name)) {
                            Ok(bytes) => {
                                assert_eq!(bytes.len(), LEN, "{name}: partial file");
                                assert!(bytes.iter().all(|b| *b == bytes[0]), "{name}: mixed");
                                reads += 1;
                            }
                            // Resolved just before its directory was removed: not partial.
                            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
                        }
                    }
                    // Both files of one resolution of `..data`: the same version.
                    if let Ok(resolved) = fs::canonicalize(dir.join(DATA_LINK)) {
                        if let (Ok(a), Ok(b)) = (
                            fs::read(resolved.join("one")),
                            fs::read(resolved.join("two")),
                        ) {
                            assert_eq!(a, b, "two versions behind one ..data");
                        }
                    }
                }
                reads
            })
        };
        for round in 1..=60u8 {
            write_atomic(&dir, &version(round % 26)).expect("write");
        }
        done.store(true, Ordering::SeqCst);
        let reads = reader.join().expect("the reader saw a partial update");
        assert!(reads > 0);
        assert_eq!(payload_dirs(&dir).len(), 1, "old payload directories left");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0, 0), "1970_01_01_00_00_00.000000000");
        assert_eq!(timestamp(951_782_400, 5), "2000_02_29_00_00_00.000000005");
        assert_eq!(
            timestamp(1_700_000_000, 123_456_789),
            "2023_11_14_22_13_20.123456789"
        );
        assert_eq!(timestamp(4_107_542_399, 0), "2100_02_28_23_59_59.000000000");
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n\
                    37 35 0:40 / /plain rw shared:1 - tmpfs tmpfs rw\n\
                    garbage\n";
        assert_eq!(
            parse_mount_points(info),
            [PathBuf::from("/mnt/with space"), PathBuf::from("/plain")]
        );
    }

    #[test]
    fn host_path_types_are_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let regular = dir.join("file");
        fs::write(&regular, "x").unwrap();
        let socket = dir.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let missing = dir.join("missing");
        let ok = |p: &Path, kind: &str| check_host_path(p, kind);

        assert!(ok(dir, "Directory").is_ok());
        assert!(ok(&regular, "File").is_ok());
        assert!(ok(&socket, "Socket").is_ok());
        assert!(ok(Path::new("/dev/null"), "CharDevice").is_ok());
        for (path, kind) in [
            (&regular, "Directory"),
            (&dir.to_path_buf(), "File"),
            (&regular, "Socket"),
            (&regular, "CharDevice"),
            (&PathBuf::from("/dev/null"), "BlockDevice"),
        ] {
            let err = ok(path, kind).expect_err(kind);
            assert!(err.contains(&format!("as type {kind} requires")), "{err}");
        }
        let err = ok(&missing, "Directory").expect_err("missing");
        assert!(err.contains("does not exist"), "{err}");
        // A block device, if this machine shows one.
        if let Some(block) = fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .find(|e| e.file_type().map(|t| t.is_block_device()).unwrap_or(false))
        {
            assert!(ok(&block.path(), "BlockDevice").is_ok());
        }
        // No type: anything, even nothing.
        assert!(ok(&missing, "").is_ok());
        // The OrCreate types make what is missing and refuse the wrong kind.
        let made_dir = dir.join("a/b");
        assert!(ok(&made_dir, "DirectoryOrCreate").is_ok());
        assert!(made_dir.is_dir());
        assert!(ok(&regular, "DirectoryOrCreate").is_err());
        let made_file = dir.join("a/f");
        assert!(ok(&made_file, "FileOrCreate").is_ok());
        assert!(made_file.is_file());
        assert!(ok(&made_dir, "FileOrCreate").is_err());
        let err = ok(dir, "Folder").expect_err("unknown type");
        assert!(err.contains("DirectoryOrCreate"), "{err}");
        let err = ok(Path::new("relative"), "").expect_err("relative");
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vol");
        fs::create_dir(&base).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), base.join("escape")).unwrap();
        std::os::unix::fs::symlink("..", base.join("up")).unwrap();
        fs::write(base.join("file"), "x").unwrap();

        for (sub, needle) in [
            ("/etc", "relative"),
            ("../outside", "\"..\""),
            ("a/../../outside", "\"..\""),
            ("escape", "leads out"),
            ("escape/deeper", "leads out"),
            ("up", "leads out"),
        ] {
            let err = sub_path("v", &base, sub, true).expect_err(sub);
            assert!(err.to_string().contains(needle), "{sub}: {err}");
            assert!(err.to_string().contains(&format!("{sub:?}")), "{err}");
            assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
        }
        assert!(!tmp.path().join("outside/deeper").exists());
        // Inside: the path as given; a missing one is made a directory when allowed.
        assert_eq!(
            sub_path("v", &base, "file", false).unwrap(),
            base.join("file")
        );
        assert_eq!(
            sub_path("v", &base, "new/dir", true).unwrap(),
            base.join("new/dir")
        );
        assert!(base.join("new/dir").is_dir());
        let err = sub_path("v", &base, "absent", false).expect_err("absent");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    fn config_volume(name: &str, source: VolumeSource) -> Volume {
        Volume {
            name: name.into(),
            source,
        }
    }

    fn cm_source(
        name: &str,
        items: Vec<KeyToPath>,
        mode: Option<u32>,
        optional: bool,
    ) -> VolumeSource {
        VolumeSource::ConfigMap {
            name: name.into(),
            items,
            default_mode: mode,
            optional,
        }
    }

    fn secret_source(name: &str, items: Vec<KeyToPath>, optional: bool) -> VolumeSource {
        VolumeSource::Secret {
            name: name.into(),
            items,
            default_mode: None,
            optional,
        }
    }

    fn item(key: &str, path: &str, mode: Option<u32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    fn configs() -> ConfigSet {
        let mut set = ConfigSet::default();
        set.insert_config_map(EdgeConfigMap {
            namespace: "rigs".into(),
            name: "app".into(),
            data: BTreeMap::from([
                ("app.conf".into(), "level=1".into()),
                ("other".into(), "o".into()),
            ]),
            binary_data: BTreeMap::from([("blob".into(), vec![0, 1])]),
        });
        set.insert_secret(EdgeSecret {
            namespace: "rigs".into(),
            name: "creds".into(),
            kind: "Opaque".into(),
            data: BTreeMap::from([("password".into(), b"hunter2".to_vec())]),
        });
        set
    }

    fn modes(p: &Payload) -> Vec<(String, u32)> {
        p.iter()
            .map(|(k, f)| (k.to_string_lossy().into_owned(), f.mode))
            .collect()
    }

    #[test]
    fn payloads_map_keys_to_paths_with_modes() {
        let c = configs();
        let all = volume_payload(
            "rigs",
            &config_volume("v", cm_source("app", vec![], None, false)),
            &c,
        )
        .unwrap();
        assert_eq!(
            modes(&all),
            [
                ("app.conf".into(), 0o644),
                ("blob".into(), 0o644),
                ("other".into(), 0o644)
            ]
        );
        assert_eq!(all[Path::new("blob")].bytes, [0, 1]);
        let secret = volume_payload(
            "rigs",
            &config_volume("v", secret_source("creds", vec![], false)),
            &c,
        )
        .unwrap();
        assert_eq!(modes(&secret), [("password".into(), 0o600)]);
        // items choose keys and paths; defaultMode and the item's mode apply.
        let picked = volume_payload(
            "rigs",
            &config_volume(
                "v",
                cm_source(
                    "app",
                    vec![
                        item("app.conf", "conf/app.conf", None),
                        item("other", "o", Some(0o400)),
                    ],
                    Some(0o640),
                    false,
                ),
            ),
            &c,
        )
        .unwrap();
        assert_eq!(
            modes(&picked),
            [("conf/app.conf".into(), 0o640), ("o".into(), 0o400)]
        );
        assert_eq!(picked[Path::new("conf/app.conf")].bytes, b"level=1");
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let c = configs();
        let payload_of = |source| volume_payload("rigs", &config_volume("v", source), &c);
        // Optional: an empty payload, or the keys that exist.
        assert!(payload_of(cm_source("absent", vec![], None, true))
            .unwrap()
            .is_empty());
        assert!(payload_of(secret_source("absent", vec![], true))
            .unwrap()
            .is_empty());
        let some = payload_of(cm_source(
            "app",
            vec![item("nope", "n", None), item("other", "o", None)],
            None,
            true,
        ))
        .unwrap();
        assert_eq!(modes(&some), [("o".into(), 0o644)]);

        let err = payload_of(secret_source("absent", vec![], false)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("volume \"v\""), "{text}");
        assert!(
            text.contains("secret \"absent\" (namespace \"rigs\")"),
            "{text}"
        );
        assert!(text.contains("starts once it arrives"), "{text}");
        assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
        let err = payload_of(secret_source("creds", vec![item("user", "u", None)], false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no key \"user\""), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_paths_and_modes_are_refused() {
        let c = configs();
        for (path, needle) in [
            ("/etc/passwd", "relative"),
            ("../x", "\"..\""),
            ("a/../../x", "\"..\""),
            ("..data", "start with"),
            ("", "empty"),
            (".", "names no file"),
        ] {
            let err = volume_payload(
                "rigs",
                &config_volume(
                    "v",
                    cm_source("app", vec![item("other", path, None)], None, false),
                ),
                &c,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(needle), "{path:?}: {err}");
        }
        let err = volume_payload(
            "rigs",
            &config_volume("v", cm_source("app", vec![], Some(0o1777), false)),
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("defaultMode 0o1777"), "{err}");
        let err = volume_payload(
            "rigs",
            &config_volume(
                "v",
                cm_source(
                    "app",
                    vec![item("other", "a", None), item("app.conf", "a/b", None)],
                    None,
                    false,
                ),
            ),
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("below it"), "{err}");
    }

    fn mount(name: &str, sub_path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: format!("/mnt/{name}"),
            read_only: false,
            sub_path: sub_path.into(),
        }
    }

    fn pod_with(volumes: Vec<Volume>, mounts: Vec<VolumeMount>) -> EdgePod {
        EdgePod {
            namespace: "rigs".into(),
            name: "p".into(),
            uid: "uid-1".into(),
            labels: BTreeMap::new(),
            containers: vec![EdgeContainer {
                name: "c".into(),
                volume_mounts: mounts,
                ..EdgeContainer::default()
            }],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 1,
            volumes,
            deletion_grace_period_seconds: None,
        }
    }

    fn mounted_under(dir: &Path) -> Vec<PathBuf> {
        mount_points_under(&fs::canonicalize(dir).unwrap())
    }

    #[tokio::test]
    async fn volumes_are_prepared_reused_updated_and_torn_down() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("pods");
        let volumes = Volumes::new(root.clone()).with_tmpfs(false);
        let host = tmp.path().join("host");
        let p = pod_with(
            vec![
                config_volume(
                    "scratch",
                    VolumeSource::EmptyDir {
                        memory: false,
                        size_limit_bytes: None,
                    },
                ),
                config_volume("cfg", cm_source("app", vec![], None, false)),
                config_volume("creds", secret_source("creds", vec![], false)),
                config_volume(
                    "host",
                    VolumeSource::HostPath {
                        path: host.to_string_lossy().into_owned(),
                        kind: "DirectoryOrCreate".into(),
                    },
                ),
            ],
            vec![
                mount("scratch", ""),
                mount("cfg", ""),
                mount("cfg", "app.conf"),
                mount("creds", ""),
                mount("host", "sub"),
            ],
        );
        let c = Arc::new(configs());
        let mounts = volumes
            .prepare(&p, &p.containers[0], c.clone())
            .await
            .expect("prepare");
        let vdir = root.join("uid-1/volumes");
        let paths: Vec<(PathBuf, bool)> = mounts
            .iter()
            .map(|m| (m.host_path.clone(), m.read_only))
            .collect();
        assert_eq!(
            paths,
            [
                (vdir.join("scratch"), false),
                (vdir.join("cfg"), true),
                (vdir.join("cfg/app.conf"), true),
                (vdir.join("creds"), true),
                (host.join("sub"), false),
            ]
        );
        assert_eq!(mounts[2].container_path, "/mnt/cfg");
        assert_eq!(mounts[2].volume, "cfg");
        assert_eq!(mode_of(&vdir.join("scratch")), 0o777);
        assert_eq!(mode_of(&vdir.join("cfg")), 0o755);
        // Without tmpfs, a secret volume is a private directory on disk.
        assert_eq!(mode_of(&vdir.join("creds")), 0o700);
        assert_eq!(fs::read(vdir.join("creds/password")).unwrap(), b"hunter2");
        assert_eq!(mode_of(&vdir.join("creds/password")), 0o600);
        assert!(host.join("sub").is_dir());

        // Prepared again (a restart): the emptyDir keeps its contents.
        fs::write(vdir.join("scratch/kept"), "x").unwrap();
        volumes
            .prepare(&p, &p.containers[0], c.clone())
            .await
            .expect("again");
        assert!(vdir.join("scratch/kept").exists());

        // An update reaches the files; a missing object keeps the last payload.
        let mut changed = (*c).clone();
        changed.insert_config_map(EdgeConfigMap {
            namespace: "rigs".into(),
            name: "app".into(),
            data: BTreeMap::from([("app.conf".into(), "level=2".into())]),
            binary_data: BTreeMap::new(),
        });
        volumes.refresh(&p, Arc::new(changed.clone())).await;
        assert_eq!(
            fs::read_to_string(vdir.join("cfg/app.conf")).unwrap(),
            "level=2"
        );
        assert!(!vdir.join("cfg/other").exists());
        let mut gone = changed.clone();
        gone.remove(&protocol::messages::ObjectRef {
            kind: protocol::messages::ObjectKind::ConfigMap,
            namespace: "rigs".into(),
            name: "app".into(),
        });
        volumes.refresh(&p, Arc::new(gone.clone())).await;
        assert_eq!(
            fs::read_to_string(vdir.join("cfg/app.conf")).unwrap(),
            "level=2"
        );
        volumes
            .prepare(&p, &p.containers[0], Arc::new(gone))
            .await
            .expect("kept payload");

        // Teardown removes the volumes and the pod directory, not the host path.
        volumes.teardown("uid-1").await.expect("teardown");
        assert!(!root.join("uid-1").exists());
        assert!(host.join("sub").is_dir());
        volumes.teardown("uid-1").await.expect("idempotent");
    }

    #[tokio::test]
    async fn a_volume_that_is_not_ready_names_what_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes::new(tmp.path().to_path_buf()).with_tmpfs(false);
        let c = Arc::new(configs());
        let undefined = pod_with(vec![], vec![mount("nowhere", "")]);
        let err = volumes
            .prepare(&undefined, &undefined.containers[0], c.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"nowhere\""), "{err}");
        let waiting = pod_with(
            vec![config_volume(
                "cfg",
                cm_source("later", vec![], None, false),
            )],
            vec![mount("cfg", "")],
        );
        let err = volumes
            .prepare(&waiting, &waiting.containers[0], c.clone())
            .await
            .unwrap_err();
        assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
        assert!(err.to_string().contains("configmap \"later\""), "{err}");
        let missing_key = pod_with(
            vec![config_volume("cfg", cm_source("app", vec![], None, false))],
            vec![mount("cfg", "nope")],
        );
        let err = volumes
            .prepare(&missing_key, &missing_key.containers[0], c.clone())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("does not exist in the volume"),
            "{err}"
        );
        let bad_type = pod_with(
            vec![config_volume(
                "h",
                VolumeSource::HostPath {
                    path: "/dev/null".into(),
                    kind: "Directory".into(),
                },
            )],
            vec![mount("h", "")],
        );
        let err = volumes
            .prepare(&bad_type, &bad_type.containers[0], c.clone())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("as type Directory requires"),
            "{err}"
        );
        // Without a volume directory, only hostPath volumes work.
        let none = Volumes::without_root();
        let p = pod_with(
            vec![config_volume(
                "s",
                VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            )],
            vec![mount("s", "")],
        );
        let err = none.prepare(&p, &p.containers[0], c).await.unwrap_err();
        assert!(err.to_string().contains("no volume directory"), "{err}");
        none.teardown("uid-1").await.expect("nothing to tear down");
    }

    /// As root, memory-backed emptyDirs and secret volumes are tmpfs mounts (with the size
    /// limit), mounted once, and unmounted by the teardown.
    #[tokio::test]
    async fn memory_volumes_are_tmpfs_mounts_that_the_teardown_unmounts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("pods");
        let volumes = Volumes::new(root.clone());
        let p = pod_with(
            vec![
                config_volume(
                    "mem",
                    VolumeSource::EmptyDir {
                        memory: true,
                        size_limit_bytes: Some(1 << 20),
                    },
                ),
                config_volume("creds", secret_source("creds", vec![], false)),
            ],
            vec![mount("mem", ""), mount("creds", "")],
        );
        let c = Arc::new(configs());
        volumes
            .prepare(&p, &p.containers[0], c.clone())
            .await
            .expect("prepare");
        volumes
            .prepare(&p, &p.containers[0], c)
            .await
            .expect("prepare again");
        let vdir = root.join("uid-1/volumes");
        let mounted = mounted_under(&vdir);
        if nix::unistd::geteuid().is_root() {
            let canonical = fs::canonicalize(&vdir).unwrap();
            assert_eq!(
                mounted,
                [canonical.join("mem"), canonical.join("creds")],
                "each mounted once"
            );
            let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let line = info
                .lines()
                .find(|l| l.contains(&*canonical.join("mem").to_string_lossy()))
                .expect("mem in mountinfo");
            assert!(line.contains("size=1024k"), "{line}");
            assert_eq!(mode_of(&vdir.join("creds")), 0o700);
        } else {
            assert!(mounted.is_empty());
        }
        assert_eq!(fs::read(vdir.join("creds/password")).unwrap(), b"hunter2");
        volumes.teardown("uid-1").await.expect("teardown");
        assert!(!root.join("uid-1").exists());
        let canonical_root = fs::canonicalize(&root).unwrap();
        assert!(
            mount_points_under(&canonical_root).is_empty(),
            "something is still mounted"
        );
    }

    #[tokio::test]
    async fn teardown_keeps_what_the_runtime_still_has_in_the_pod_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = Volumes::new(tmp.path().to_path_buf()).with_tmpfs(false);
        let p = pod_with(
            vec![config_volume(
                "s",
                VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            )],
            vec![mount("s", "")],
        );
        volumes
            .prepare(&p, &p.containers[0], Arc::new(ConfigSet::default()))
            .await
            .expect("prepare");
        fs::write(tmp.path().join("uid-1/pod.json"), "{}").unwrap();
        assert_eq!(volumes.pods_with_volumes().await, ["uid-1"]);
        volumes.teardown("uid-1").await.expect("teardown");
        assert!(!tmp.path().join("uid-1/volumes").exists());
        assert!(tmp.path().join("uid-1/pod.json").exists());
        assert!(volumes.pods_with_volumes().await.is_empty());
    }
}
