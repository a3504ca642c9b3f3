//! The device annotation: how a pod asks for host devices (serial adapters, GPIO, cameras on a
//! hardware-in-the-loop rig) for one of its containers.
//!
//! Kubernetes has no field for raw host devices (device plugins need a daemon per device kind),
//! so Skerry reads the annotation `devices.skerry.io/<container-name>` whose value is a
//! comma-separated list of `HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]`, as `docker run --device`
//! takes them. The API refuses malformed values (see `api::pods`), and the projection turns them
//! into [`DeviceMapping`]s, so that the edge only ever receives well-formed device paths under
//! `/dev/`. Format and examples: `docs/devices.md`.

use protocol::pod::DeviceMapping;
use std::collections::{BTreeMap, HashSet};

/// Prefix of the annotation keys; the rest of the key is the container name.
pub const ANNOTATION_PREFIX: &str = "devices.skerry.io/";

/// Permissions when an entry names none: read, write and mknod, as Docker and CRI default.
pub const DEFAULT_PERMISSIONS: &str = "rwm";

/// One malformed entry of a device annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device entry {entry:?}: {reason}")]
pub struct DeviceError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: String,
}

fn check_path(path: &str, which: &str) -> Result<(), String> {
    let rest = path
        .strip_prefix("/dev/")
        .ok_or_else(|| format!("{which} path must be absolute and under /dev/"))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{which} path must name a device under /dev/ without empty, '.' or '..' components"
        ));
    }
    Ok(())
}

fn check_permissions(p: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    if p.is_empty()
        || !p
            .chars()
            .all(|c| matches!(c, 'r' | 'w' | 'm') && seen.insert(c))
    {
        return Err(format!(
            "permissions {p:?} must be a non-empty combination of r, w and m, each at most once"
        ));
    }
    Ok(())
}

/// Parses one annotation value into device mappings, in the order written.
pub fn parse(value: &str) -> Result<Vec<DeviceMapping>, DeviceError> {
    let mut out = Vec::new();
    let mut container_paths = HashSet::new();
    for raw in value.split(',') {
        let entry = raw.trim();
        let fail = |reason: String| DeviceError {
            entry: entry.to_string(),
            reason,
        };
        if entry.is_empty() {
            return Err(fail(
                "empty entry; separate devices with single commas".into(),
            ));
        }
        let parts: Vec<&str> = entry.split(':').collect();
        if parts.len() > 3 {
            return Err(fail(
                "expected HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]".into(),
            ));
        }
        let host_path = parts[0];
        let container_path = parts.get(1).copied().unwrap_or(host_path);
        let permissions = parts.get(2).copied().unwrap_or(DEFAULT_PERMISSIONS);
        check_path(host_path, "host").map_err(fail)?;
        check_path(container_path, "container").map_err(fail)?;
        check_permissions(permissions).map_err(fail)?;
        if !container_paths.insert(container_path.to_string()) {
            return Err(fail(format!(
                "container path {container_path} is mapped twice"
            )));
        }
        out.push(DeviceMapping {
            host_path: host_path.to_string(),
            container_path: container_path.to_string(),
            permissions: permissions.to_string(),
        });
    }
    Ok(out)
}

/// The devices the pod's annotations give `container` (none without an annotation).
pub fn for_container(
    annotations: Option<&BTreeMap<String, String>>,
    container: &str,
) -> Result<Vec<DeviceMapping>, DeviceError> {
    match annotations.and_then(|a| a.get(&format!("{ANNOTATION_PREFIX}{container}"))) {
        Some(v) => parse(v),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(h: &str, c: &str, p: &str) -> DeviceMapping {
        DeviceMapping {
            host_path: h.into(),
            container_path: c.into(),
            permissions: p.into(),
        }
    }

    #[test]
    fn entries_default_container_path_and_permissions() {
        assert_eq!(
            parse("/dev/ttyUSB0, /dev/ttyACM0:/dev/ttyS1, /dev/video0:/dev/video0:r").unwrap(),
            [
                dev("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm"),
                dev("/dev/ttyACM0", "/dev/ttyS1", "rwm"),
                dev("/dev/video0", "/dev/video0", "r"),
            ]
        );
        assert_eq!(
            parse("/dev/bus/usb/001/002::").unwrap_err().reason,
            "container path must be absolute and under /dev/"
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "/dev/a,,/dev/b",
            "dev/ttyUSB0",
            "/etc/shadow",
            "/dev/",
            "/dev/../etc/shadow",
            "/dev/a:/dev/b:rwx",
            "/dev/a:/dev/b:rr",
            "/dev/a:/dev/b:",
            "/dev/a:/dev/b:r:extra",
            "/dev/a:/tmp/a",
            "/dev/a,/dev/b:/dev/a",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lookup_by_container_name() {
        let a = BTreeMap::from([(
            "devices.skerry.io/reader".to_string(),
            "/dev/ttyUSB0".to_string(),
        )]);
        assert_eq!(for_container(Some(&a), "reader").unwrap().len(), 1);
        assert!(for_container(Some(&a), "other").unwrap().is_empty());
        assert!(for_container(None, "reader").unwrap().is_empty());
    }
}
