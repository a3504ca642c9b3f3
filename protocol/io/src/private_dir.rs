//! Data directories that only their owner can enter.
//!
//! Both daemons keep secrets under their data directory (cloudcore: the CA key, tokens and the
//! store with every Secret; edgecore: the node key, the report key and the cache with the
//! node's Secrets). A directory of mode 0700 owned by the daemon's user keeps every file below
//! it from other users, whatever the files' own modes (sled creates its files with the umask;
//! a pod's volume files need the modes the pod asks for). So the daemons create their data
//! directory 0700 and, when it already exists, refuse to start if it is open to others or
//! owned by someone else, saying how to fix it, rather than run with their secrets readable.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a data directory is not private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// It grants access to group or others.
    #[error("{} has mode {mode:o}: others could read its secrets; run `chmod 700 {}` (or remove it to start afresh)", .path.display(), .path.display())]
    TooOpen {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It belongs to another user.
    #[error("{} belongs to uid {owner}, not to this process's uid {me}; run as its owner or `chown` it", .path.display())]
    WrongOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// It exists and is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// Creating or reading it failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that the existing one is a
/// directory of this process's user that grants nothing to group or others.
pub fn ensure(dir: &Path, euid: u32) -> Result<(), PrivateDirError> {
    let io = |source| PrivateDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        // The umask may have narrowed it further, never widened it; set it exactly.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotADirectory(dir.to_path_buf()));
    }
    if meta.uid() != euid {
        return Err(PrivateDirError::WrongOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me: euid,
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateDirError::TooOpen {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn euid_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().uid()
    }

    #[test]
    fn creates_0700_and_refuses_an_open_or_foreign_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let me = euid_of(tmp.path());
        let dir = tmp.path().join("a/b/data");
        ensure(&dir, me).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure(&dir, me).expect("an existing private dir is fine");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure(&dir, me).unwrap_err();
        assert!(
            matches!(e, PrivateDirError::TooOpen { mode: 0o755, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 700"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = ensure(&dir, me + 1).unwrap_err();
        assert!(matches!(e, PrivateDirError::WrongOwner { .. }), "{e}");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ensure(&file, me),
            Err(PrivateDirError::NotADirectory(_))
        ));
    }
}
