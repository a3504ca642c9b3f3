//! kubelet's atomic writer for configMap and secret volumes: readers of a volume see either the
//! old payload or the new one, never a mix, because the whole payload is swapped with one rename
//! of the `..data` symlink (see the parent module's docs).

use super::payload::{Payload, PayloadFile};
use super::{CONFIG_DIR_MODE, DATA_LINK, DATA_LINK_TMP};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use std::{fs, io};

/// Whether a configMap or secret volume has been written (its `..data` link exists).
pub(super) fn has_payload(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(DATA_LINK)).is_ok()
}

/// Writes `payload` into `dir` as kubelet's atomic writer does (see the module docs): a new
/// `..<timestamp>` directory, the `..data` symlink swapped to it with a rename, top-level entries
/// as symlinks through `..data`, then the old directory and entries that are no longer in the
/// payload removed. Returns whether anything changed; an identical payload is not rewritten.
/// Every step can be redone, so a crash in the middle is repaired by the next write.
pub(super) fn write_atomic(dir: &Path, payload: &Payload) -> io::Result<bool> {
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
pub(super) fn set_dir_modes(base: &Path, dir: &Path) -> io::Result<()> {
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
pub(super) fn new_payload_dir(dir: &Path) -> io::Result<String> {
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
pub(super) fn timestamp(secs: u64, nanos: u32) -> String {
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
pub(super) fn read_payload(dir: &Path) -> io::Result<Payload> {
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
