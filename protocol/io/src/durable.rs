//! Durable, atomic file writes: a reader (or a restart after kill -9) sees the old file or the
//! new one, never a mix, and once the call returns the new one survives a power cut.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A step of [`write_atomic`] that failed, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct WriteError {
    /// What was being done ("create", "sync the directory of", ...).
    pub action: &'static str,
    /// The file being written.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` with permissions `mode`: a temporary file beside it (named with this
/// process's id, so two processes never share one), fsync, rename over `path`, fsync of the
/// directory. Creates the directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |action, source| WriteError {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| err("create", e))?;
        f.write_all(bytes).map_err(|e| err("write", e))?;
        f.sync_all().map_err(|e| err("sync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err("rename into", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync the directory of", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["key.pem"]);
        let e = write_atomic(Path::new("/proc/nope/x"), b"", 0o600).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot create the directory of /proc/nope/x"),
            "{e}"
        );
    }
}
