//! The contents of configMap and secret volumes: which keys become which files with which
//! modes (`items`, `defaultMode`, optional objects), checked as kubelet checks them. Pure: the
//! atomic writer puts a payload on disk.

use super::{VolumeError, CONFIG_MAP_DEFAULT_MODE, SECRET_DEFAULT_MODE};
use crate::cache::ConfigSet;
use protocol::pod::{KeyToPath, Volume, VolumeSource};
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

/// The files of a configMap or secret volume, from `configs`. A missing object is an error
/// unless the volume is optional (then the payload is empty).
pub(super) fn volume_payload(
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
