//! Durable, atomic file writes: a reader (or a restart after kill -9) sees the old file or the
//! new one, never a mix, and once the call returns the new one survives a power cut.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Writes `bytes` to `path` with permissions `mode`: a temporary file beside it with a name no
/// other writer uses (this process's id and a per-process counter, created with `O_EXCL`, so
/// two processes or two threads writing the same file never share one), fsync, rename over
/// `path`, fsync of the directory. Creates the directory if needed; a failed write removes its
/// temporary file.
///
/// This is the one single-file writer of the workspace: the key and certificate files of
/// joining, cloudcore's PKI records and edgecore's config, identity and process records all
/// go through it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |action, source| WriteError {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
    write_in_place(path, bytes, mode)
}

/// As [`write_atomic`], but only into a directory that exists: a directory that is gone is an
/// error (`NotFound`), never made anew. For writers whose directory's existence means
/// something, such as a process record in a pod directory that may have been wiped under it
/// (the runtime then starts the pod in a fresh sandbox, which a late record must not recreate).
pub fn write_atomic_existing_dir(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_in_place(path, bytes, mode)
}

fn write_in_place(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let err = |action, source| WriteError {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let (tmp, mut f) =
        create_temp(path, mode).map_err(|e| err("create a temporary file for", e))?;
    let written = f
        .write_all(bytes)
        .map_err(|e| err("write", e))
        .and_then(|()| f.sync_all().map_err(|e| err("sync", e)));
    drop(f);
    if let Err(e) =
        written.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| err("rename into", e)))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync the directory of", e))?;
    Ok(())
}

/// The `<n>` of the next temporary file name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Creates `.<name>.<pid>.<n>.tmp` beside `path`, exclusively: a name left by a crashed process
/// that had the same id is skipped, never shared. The leading dot keeps it out of listings that
/// only want valid names.
fn create_temp(path: &Path, mode: u32) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
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
        // A temporary name a crashed writer left behind is skipped, not reused or clobbered.
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 64 {
            let stale = format!(".key.pem.{}.{n}.tmp", std::process::id());
            std::fs::write(path.with_file_name(stale), b"stale").unwrap();
        }
        write_atomic(&path, b"third", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        let e = write_atomic(Path::new("/proc/nope/x"), b"", 0o600).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot create the directory of /proc/nope/x"),
            "{e}"
        );
    }

    #[test]
    fn a_write_into_a_directory_that_is_gone_fails_and_does_not_recreate_it() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("pod");
        let e = write_atomic_existing_dir(&gone.join("exit.json"), b"{}", 0o600).unwrap_err();
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
        assert!(!gone.exists(), "the wiped directory must stay gone");
        std::fs::create_dir(&gone).unwrap();
        write_atomic_existing_dir(&gone.join("exit.json"), b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(gone.join("exit.json")).unwrap(), b"{}");
    }

    #[test]
    fn concurrent_writers_of_one_file_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[t; 4096], 0o644).unwrap();
                    }
                });
            }
        });
        // Whole files only: one writer's bytes, never a mix of two.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
