//! The container's process before it is the container's program: `<edgecore> shim
//! --container-dir <dir> --enter`, started by the shim in place of the program when the
//! instance has cgroups, read-only mounts, a hosts file of its pod's, a user or
//! `no_new_privs` ([`ShimSpec::enters`]). It moves itself into the cgroups (writing `0` to
//! each `cgroup.procs`), makes a mount namespace of its own in which the read-only paths are
//! read-only bind mounts (and the pod's hosts file is `/etc/hosts`), becomes the container's
//! user (groups, then gid, then uid: `setuid` last, as it gives up the right to the others),
//! sets `no_new_privs`, and executes the program: the program keeps the pid, the process
//! group, the environment and the working directory the shim gave, and never runs outside its
//! cgroups.
//!
//! Done in a process of its own rather than between fork and exec, because the workspace
//! forbids `unsafe` code (and what runs after fork must be async-signal-safe).

use super::record::{ShimSpec, SPEC_FILE};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where the program sees its pod's hosts file.
const ETC_HOSTS: &str = "/etc/hosts";

/// Where `program` is found: as given when it holds a `/` (relative to `cwd`), else the first
/// executable file of that name in `path_var`'s directories.
pub(super) fn find_program(program: &str, path_var: &str, cwd: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cwd.join(d).join(program))
        .find(|p| executable(p))
}

/// In the shim, before the process starts: checks the program exists (a missing one is a
/// start error, as when the shim runs it directly) and makes the cgroups with their limits.
pub(super) fn prepare(spec: &ShimSpec) -> io::Result<()> {
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if find_program(&spec.program, path_var, &spec.cwd).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "executable {:?} not found in PATH {path_var:?} (or not executable)",
                spec.program
            ),
        ));
    }
    match &spec.cgroup {
        Some(cgroup) => cgroup.create(),
        None => Ok(()),
    }
}

/// Entry point of `--enter`: never returns when the program starts; otherwise says why on
/// stderr (the container's log) and exits 127.
pub(super) fn enter_main(dir: &Path) -> ExitCode {
    let e = match enter(dir) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("skerry: cannot start the container's program: {e}");
    ExitCode::from(127)
}

fn enter(dir: &Path) -> io::Result<std::convert::Infallible> {
    let bytes = std::fs::read(dir.join(SPEC_FILE))?;
    let spec: ShimSpec = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    if let Some(cgroup) = &spec.cgroup {
        for procs in cgroup.procs_files() {
            std::fs::write(&procs, "0").map_err(|e| {
                io::Error::new(e.kind(), format!("cannot join {}: {e}", procs.display()))
            })?;
        }
    }
    if !spec.read_only_paths.is_empty() || spec.hosts_file.is_some() {
        let errno =
            |what: String| move |e: nix::errno::Errno| io::Error::other(format!("{what}: {e}"));
        unshare(CloneFlags::CLONE_NEWNS).map_err(errno("cannot make a mount namespace".into()))?;
        // Private, so that nothing mounted here reaches the host (nor the host's unmounts here).
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(errno("cannot make the mount namespace private".into()))?;
        let hosts = spec
            .hosts_file
            .as_deref()
            .map(|h| (h, Path::new(ETC_HOSTS)));
        let read_only = spec
            .read_only_paths
            .iter()
            .map(|p| (p.as_path(), p.as_path()));
        for (source, p) in read_only.chain(hosts) {
            let what = format!("cannot make {} read-only", p.display());
            mount(
                Some(source),
                p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(errno(what.clone()))?;
            mount(
                None::<&str>,
                p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(errno(what))?;
        }
    }
    // The user last: joining cgroups and mounting need root.
    if let Some(user) = &spec.user {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        let errno =
            |what: String| move |e: nix::errno::Errno| io::Error::other(format!("{what}: {e}"));
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(errno(format!("cannot set groups {:?}", user.groups)))?;
        setgid(Gid::from_raw(user.gid)).map_err(errno(format!("cannot set gid {}", user.gid)))?;
        setuid(Uid::from_raw(user.uid)).map_err(errno(format!("cannot set uid {}", user.uid)))?;
    }
    if spec.no_new_privs {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| io::Error::other(format!("cannot set no_new_privs: {e}")))?;
    }
    // The environment and working directory are already the container's (the shim set them).
    Err(std::process::Command::new(&spec.program)
        .args(&spec.args)
        .exec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_as_exec_finds_them() {
        let cwd = Path::new("/");
        assert_eq!(
            find_program("sh", "/nonexistent:/bin", cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program("no-such-program-here", "/bin:/usr/bin", cwd),
            None
        );
        assert_eq!(
            find_program("/bin/sh", "", cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            find_program("bin/sh", "", cwd),
            Some(PathBuf::from("/bin/sh"))
        );
        // A directory or a file that is not executable is not a program.
        assert_eq!(find_program("/etc/passwd", "", cwd), None);
        assert_eq!(find_program("tmp", "/", cwd), None);
    }
}
