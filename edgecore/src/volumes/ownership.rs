//! `fsGroup`: a volume given to a pod's group, as kubelet's `SetVolumeOwnership` does it.
//! Every file and directory of the volume gets the group (symlinks themselves, not what
//! they point to), group read and write (read only for a read-only volume: configMap and
//! secret ones), and directories group search and the setgid bit, so that what the
//! containers create there has the group too.
//!
//! With `fsGroupChangePolicy: OnRootMismatch` nothing is changed when the volume's root
//! already has the group and those bits (kubelet's `requiresPermissionChange`).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Group read and write.
const RW_MASK: u32 = 0o660;
/// Group read.
const RO_MASK: u32 = 0o440;
/// Group search (directories).
const EXEC_MASK: u32 = 0o110;
/// The setgid bit (directories).
const SETGID: u32 = 0o2000;

/// Whether `root` lacks what `gid` ownership gives it (so a change is needed).
pub(super) fn needs_change(root: &Path, gid: u32, read_only: bool) -> io::Result<bool> {
    let meta = fs::metadata(root)?;
    if meta.gid() != gid || !meta.is_dir() {
        return Ok(true);
    }
    let want = if read_only { RO_MASK } else { RW_MASK } | EXEC_MASK;
    let mode = meta.permissions().mode();
    Ok(mode & want != want || mode & SETGID == 0)
}

/// Gives everything under `root` (itself included) the group `gid` and the group bits.
pub(super) fn set_ownership(root: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(root)?;
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mask = if read_only { RO_MASK } else { RW_MASK };
    if meta.is_dir() {
        mask |= SETGID | EXEC_MASK;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode | mask != mode {
        fs::set_permissions(root, fs::Permissions::from_mode(mode | mask))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            set_ownership(&entry?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_get_the_group_bits_and_symlinks_stay_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(root.join("sub/f"), b"x").unwrap();
        fs::set_permissions(root.join("sub/f"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        // Our own group: a change any user may make.
        let gid = fs::metadata(dir.path()).unwrap().gid();
        assert!(needs_change(&root, gid, false).unwrap());
        set_ownership(&root, gid, false).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root), 0o2770);
        assert_eq!(mode(&root.join("sub")), mode(&root.join("sub")) | 0o2770);
        assert_eq!(mode(&root.join("sub/f")), 0o660);
        assert!(fs::symlink_metadata(root.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!needs_change(&root, gid, false).unwrap());
        // Read-only volumes get group read only.
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::write(ro.join("k"), b"v").unwrap();
        fs::set_permissions(ro.join("k"), fs::Permissions::from_mode(0o600)).unwrap();
        set_ownership(&ro, gid, true).unwrap();
        assert_eq!(mode(&ro.join("k")), 0o640);
        assert!(!needs_change(&ro, gid, true).unwrap());
    }
}
