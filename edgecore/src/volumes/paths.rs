//! Path checks that keep a pod inside what it was given: a mount's `subPath` may not escape its
//! volume, a hostPath must be of the `type` the pod asked for, and names used as path
//! components cannot climb out of their parent.

use super::{io_err, VolumeError};
use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use std::{fs, io};

/// The host path of a mount's `subPath` within the volume at `base`. `create` makes a missing
/// one a directory (emptyDir, hostPath).
pub(super) fn sub_path(
    volume: &str,
    base: &Path,
    sub: &str,
    create: bool,
) -> Result<PathBuf, VolumeError> {
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
pub(super) fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
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

/// Whether `s` can be used as one path component without escaping its parent.
pub(super) fn is_safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}
