//! Mount handling for memory-backed emptyDirs: unmounting (lazily when busy) and finding the
//! mount points under a pod's directory from `/proc/self/mountinfo`, so that a teardown never
//! deletes through a mount or leaves one behind.

use super::{io_err, VolumeError};
use nix::errno::Errno;
use nix::mount::MntFlags;
use std::path::{Path, PathBuf};
use std::{fs, io};
use tracing::warn;

/// Unmounts `path`; one that is busy (a process still uses it) is detached lazily, so that
/// nothing stays mounted.
pub(super) fn unmount(path: &Path) -> Result<(), VolumeError> {
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

/// Mount points at or under `dir` (which must be canonical), from `/proc/self/mountinfo`.
pub(super) fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mount_points(&info)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Whether `path` (canonical) is a mount point.
pub(super) fn is_mount_point(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_mount_points(&info).iter().any(|m| m == path))
        .unwrap_or(false)
}

/// The mount points (field 5) of a mountinfo text, with its octal escapes (`\040` for a space)
/// decoded.
pub(super) fn parse_mount_points(info: &str) -> Vec<PathBuf> {
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
