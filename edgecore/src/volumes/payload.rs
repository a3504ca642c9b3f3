//! The contents of configMap, secret, downwardAPI and projected volumes: which keys and pod
//! fields become which files with which modes (`items`, `defaultMode`, optional objects),
//! checked as kubelet checks them. Pure: the atomic writer puts a payload on disk.

use super::{VolumeError, CONFIG_MAP_DEFAULT_MODE, SECRET_DEFAULT_MODE};
use crate::cache::ConfigSet;
use protocol::pod::{DownwardFile, EdgePod, KeyToPath, ProjectedSource, Volume, VolumeSource};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PayloadFile {
    pub(super) bytes: Vec<u8>,
    pub(super) mode: u32,
}

/// Relative path → file.
pub(super) type Payload = BTreeMap<PathBuf, PayloadFile>;

/// The files of a payload volume of `pod` (configMap, secret, downwardAPI, projected), from
/// `configs` and the pod itself; empty for other kinds. A missing object is an error unless
/// its volume (or projection) is optional.
pub(super) fn pod_volume_payload(
    pod: &EdgePod,
    volume: &Volume,
    configs: &ConfigSet,
) -> Result<Payload, VolumeError> {
    let mut out = Files::new(volume);
    match &volume.source {
        VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. } => {
            return volume_payload(&pod.namespace, volume, configs)
        }
        VolumeSource::EmptyDir { .. } | VolumeSource::HostPath { .. } => {}
        VolumeSource::DownwardApi {
            items,
            default_mode,
        } => {
            let mode = out.mode(default_mode.unwrap_or(DOWNWARD_DEFAULT_MODE), "defaultMode")?;
            out.downward(pod, items, mode)?;
        }
        VolumeSource::Projected {
            sources,
            default_mode,
        } => {
            let mode = out.mode(default_mode.unwrap_or(DOWNWARD_DEFAULT_MODE), "defaultMode")?;
            for source in sources {
                match source {
                    ProjectedSource::ConfigMap {
                        name,
                        items,
                        optional,
                    } => out.keys(
                        &pod.namespace,
                        Object::ConfigMap(name),
                        items,
                        mode,
                        *optional,
                        configs,
                    )?,
                    ProjectedSource::Secret {
                        name,
                        items,
                        optional,
                    } => out.keys(
                        &pod.namespace,
                        Object::Secret(name),
                        items,
                        mode,
                        *optional,
                        configs,
                    )?,
                    ProjectedSource::DownwardApi { items } => out.downward(pod, items, mode)?,
                }
            }
        }
    }
    out.finish()
}

/// The files of a configMap or secret volume, from `configs`. A missing object is an error
/// unless the volume is optional (then the payload is empty).
pub(super) fn volume_payload(
    namespace: &str,
    volume: &Volume,
    configs: &ConfigSet,
) -> Result<Payload, VolumeError> {
    let mut out = Files::new(volume);
    let (object, items, default_mode, optional, fallback_mode) = match &volume.source {
        VolumeSource::ConfigMap {
            name,
            items,
            default_mode,
            optional,
        } => (
            Object::ConfigMap(name),
            items,
            default_mode,
            *optional,
            CONFIG_MAP_DEFAULT_MODE,
        ),
        VolumeSource::Secret {
            name,
            items,
            default_mode,
            optional,
        } => (
            Object::Secret(name),
            items,
            default_mode,
            *optional,
            SECRET_DEFAULT_MODE,
        ),
        _ => return Ok(Payload::new()),
    };
    let default_mode = out.mode(default_mode.unwrap_or(fallback_mode), "defaultMode")?;
    out.keys(namespace, object, items, default_mode, optional, configs)?;
    out.finish()
}

/// A downward API file's mode when neither it nor its volume gives one.
const DOWNWARD_DEFAULT_MODE: u32 = 0o644;

/// The object a set of keys comes from.
#[derive(Clone, Copy)]
enum Object<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
}

impl Object<'_> {
    fn kind(self) -> &'static str {
        match self {
            Self::ConfigMap(_) => "configmap",
            Self::Secret(_) => "secret",
        }
    }

    fn name(self) -> String {
        match self {
            Self::ConfigMap(n) | Self::Secret(n) => n.to_string(),
        }
    }
}

/// A payload being assembled for one volume, with the volume's name for its errors.
struct Files<'a> {
    volume: &'a Volume,
    payload: Payload,
}

impl<'a> Files<'a> {
    fn new(volume: &'a Volume) -> Self {
        Self {
            volume,
            payload: Payload::new(),
        }
    }

    fn invalid(&self, message: String) -> VolumeError {
        VolumeError::Invalid {
            volume: self.volume.name.clone(),
            message,
        }
    }

    fn mode(&self, mode: u32, what: &str) -> Result<u32, VolumeError> {
        if mode > 0o777 {
            Err(self.invalid(format!(
                "{what} {mode:#o} is not a file mode; use a value from 0 to 0777"
            )))
        } else {
            Ok(mode)
        }
    }

    /// Adds one file (a later file of the same path replaces an earlier one, as kubelet's
    /// projections do).
    fn add(&mut self, path: &str, bytes: &[u8], mode: u32, what: &str) -> Result<(), VolumeError> {
        let rel = payload_path(path)
            .map_err(|message| self.invalid(format!("file path {path:?} of {what} {message}")))?;
        self.payload.insert(
            rel,
            PayloadFile {
                bytes: bytes.to_vec(),
                mode,
            },
        );
        Ok(())
    }

    /// The keys of a ConfigMap or Secret: every key under its own name, or the `items`.
    fn keys(
        &mut self,
        namespace: &str,
        object: Object<'_>,
        items: &[KeyToPath],
        default_mode: u32,
        optional: bool,
        configs: &ConfigSet,
    ) -> Result<(), VolumeError> {
        let (kind, name) = (object.kind(), object.name());
        let entries: Option<BTreeMap<String, Vec<u8>>> = match object {
            Object::ConfigMap(n) => configs.config_map(namespace, n).map(|cm| {
                cm.entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect()
            }),
            Object::Secret(n) => configs.secret(namespace, n).map(|s| s.data.clone()),
        };
        let Some(entries) = entries else {
            if optional {
                return Ok(());
            }
            return Err(VolumeError::MissingObject {
                volume: self.volume.name.clone(),
                kind,
                name,
                namespace: namespace.to_string(),
            });
        };
        let what = format!("{kind} {name:?}");
        if items.is_empty() {
            for (key, bytes) in &entries {
                self.add(key, bytes, default_mode, &what)?;
            }
            return Ok(());
        }
        for KeyToPath { key, path, mode } in items {
            let Some(bytes) = entries.get(key) else {
                if optional {
                    continue;
                }
                return Err(VolumeError::MissingKey {
                    volume: self.volume.name.clone(),
                    kind,
                    name: name.clone(),
                    key: key.clone(),
                });
            };
            let mode = match mode {
                Some(mode) => self.mode(*mode, "item mode")?,
                None => default_mode,
            };
            self.add(path, bytes, mode, &what)?;
        }
        Ok(())
    }

    /// Downward API files: each the value of a field of the pod.
    fn downward(
        &mut self,
        pod: &EdgePod,
        items: &[DownwardFile],
        default_mode: u32,
    ) -> Result<(), VolumeError> {
        for file in items {
            let mode = match file.mode {
                Some(mode) => self.mode(mode, "item mode")?,
                None => default_mode,
            };
            let value = file.field.value(pod);
            self.add(&file.path, value.as_bytes(), mode, "the downward API")?;
        }
        Ok(())
    }

    /// The payload, once no file is also the directory of another (`a` and `a/b`).
    fn finish(self) -> Result<Payload, VolumeError> {
        for path in self.payload.keys() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if self.payload.contains_key(parent) {
                    return Err(self.invalid(format!(
                        "one file is {} and another is below it, {}",
                        parent.display(),
                        path.display()
                    )));
                }
            }
        }
        Ok(self.payload)
    }
}

/// Checks a payload file path as kubelet does: relative, not empty, no `..` component, and not
/// starting with `..` (which names the writer's own entries).
pub(super) fn payload_path(path: &str) -> Result<PathBuf, String> {
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
