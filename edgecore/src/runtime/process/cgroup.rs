//! cgroups for the process runtime's containers: each instance of a container with cpu or
//! memory limits gets cgroups of its own, with the limits applied, so that a rig's workload cannot take
//! the host's memory or all its CPUs, and so that the kernel's OOM kill of it can be reported as
//! `OOMKilled`.
//!
//! Both cgroup versions are handled. The cgroups are made *under edgecore's own cgroup* in each
//! hierarchy (read from `/proc/self/cgroup` and `/proc/self/mountinfo`), never at the root: the
//! workload stays accounted where edgecore is (a systemd unit, a container), and edgecore needs
//! no cgroup of its own.
//!
//! - **v1** (also the "hybrid" layout, where v2 is mounted at `/sys/fs/cgroup/unified` without
//!   controllers): `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, so that swap is
//!   no way around it) in the memory hierarchy, `cpu.cfs_period_us` = 100 ms and
//!   `cpu.cfs_quota_us` = limit × period in the cpu hierarchy, as kubelet sets them. An OOM kill
//!   is the `oom_kill` count of `memory.oom_control` (kernels from 4.13).
//! - **v2**: `memory.max` (and `memory.swap.max` = 0), `cpu.max` = `<quota> 100000`; the
//!   `oom_kill` count of `memory.events`. The controllers must be enabled for children of
//!   edgecore's cgroup (`cgroup.subtree_control`); v2 does not allow that while edgecore's cgroup
//!   holds processes itself, unless it is the root, so under v2 edgecore should run in a
//!   delegated cgroup of its own with its process in a leaf (systemd `Delegate=yes`). When the
//!   controllers cannot be enabled, limits are refused with that reason.
//!
//! The runtime computes a [`CgroupSpec`] per instance (its directories and the files to write)
//! and puts it in `spec.json`; the shim creates the directories, writes the limits, and moves
//! the program into them before it executes (so nothing runs unlimited, not even its first
//! instruction). When the program exited, the shim reads the OOM counter, kills what is left in
//! the cgroup and removes it; the runtime removes it too when it removes the instance (for a
//! shim that died), so no cgroup outlives its container.

use protocol::pod::Resources;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// CFS period kubelet uses (100 ms).
pub(super) const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts (1 ms).
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The cgroup version of a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum CgroupVersion {
    /// Legacy hierarchies, one per controller (or per group of controllers).
    V1,
    /// The unified hierarchy.
    V2,
}

/// What this host offers for the containers' cgroups: edgecore's own cgroup directory in the
/// hierarchy holding each controller, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupHost {
    pub(super) version: CgroupVersion,
    pub(super) memory: Result<PathBuf, String>,
    pub(super) cpu: Result<PathBuf, String>,
}

/// One file write of a [`CgroupSpec`]: `value` into `file`; `optional` ones may be missing (a
/// kernel without swap accounting has no `memory.memsw.limit_in_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CgroupWrite {
    pub(super) file: PathBuf,
    pub(super) value: String,
    pub(super) optional: bool,
}

/// A container instance's cgroups, as the shim applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CgroupSpec {
    pub(super) version: CgroupVersion,
    /// The instance's cgroup directories: one per hierarchy (v1: memory, then cpu; v2: one).
    pub(super) dirs: Vec<PathBuf>,
    /// The directory whose OOM counter tells an OOM kill, if a memory controller is there.
    pub(super) memory_dir: Option<PathBuf>,
    /// The limits, written in order after the directories are made.
    pub(super) writes: Vec<CgroupWrite>,
}

/// The cgroup hierarchies mounted, from `/proc/self/mountinfo`: (mount point, root of the
/// mount within its hierarchy, version, controllers for v1).
fn parse_mounts(mountinfo: &str) -> Vec<(PathBuf, String, CgroupVersion, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut rest = right.split(' ');
            let (fstype, _source, options) = (rest.next()?, rest.next()?, rest.next()?);
            let (root, point) = (fields.get(3)?, fields.get(4)?);
            let version = match fstype {
                "cgroup" => CgroupVersion::V1,
                "cgroup2" => CgroupVersion::V2,
                _ => return None,
            };
            let controllers = options.split(',').map(str::to_string).collect();
            Some((PathBuf::from(point), root.to_string(), version, controllers))
        })
        .collect()
}

/// edgecore's cgroup in each hierarchy, from `/proc/self/cgroup`: (controllers, path); v2's line
/// has no controllers.
fn parse_self(proc_cgroup: &str) -> Vec<(Vec<String>, String)> {
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((controllers, path.to_string()))
        })
        .collect()
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` whose mount shows `root`.
fn dir_of(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let relative = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    Some(point.join(relative.trim_start_matches('/')))
}

impl CgroupHost {
    /// What the host offers, from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`,
    /// `root` telling whether edgecore may write cgroups, and `v2_controllers` the controllers
    /// that children of edgecore's v2 cgroup get (`None` when they could not be enabled, with
    /// why). v1 is preferred when its memory controller is mounted (a hybrid host's v2 has
    /// no controllers).
    pub(super) fn from_proc(
        mountinfo: &str,
        proc_cgroup: &str,
        root: bool,
        v2_controllers: impl FnOnce(&Path) -> Result<Vec<String>, String>,
    ) -> CgroupHost {
        let mounts = parse_mounts(mountinfo);
        let own = parse_self(proc_cgroup);
        let not_root = || Err("edgecore does not run as root, so it cannot create cgroups".into());
        let v1 = |controller: &str| -> Result<PathBuf, String> {
            let (point, mount_root, _, _) = mounts
                .iter()
                .find(|(_, _, v, cs)| *v == CgroupVersion::V1 && cs.iter().any(|c| c == controller))
                .ok_or_else(|| format!("no cgroup v1 hierarchy has the {controller} controller"))?;
            let (_, path) = own
                .iter()
                .find(|(cs, _)| cs.iter().any(|c| c == controller))
                .ok_or_else(|| format!("/proc/self/cgroup names no {controller} cgroup"))?;
            dir_of(point, mount_root, path).ok_or_else(|| {
                format!("edgecore's {controller} cgroup {path} is outside the mounted hierarchy")
            })
        };
        let v1_memory = v1("memory");
        if v1_memory.is_ok() || !mounts.iter().any(|m| m.2 == CgroupVersion::V2) {
            return CgroupHost {
                version: CgroupVersion::V1,
                memory: if root { v1_memory } else { not_root() },
                cpu: if root { v1("cpu") } else { not_root() },
            };
        }
        let dir = mounts
            .iter()
            .find(|m| m.2 == CgroupVersion::V2)
            .and_then(|(point, mount_root, _, _)| {
                let (_, path) = own.iter().find(|(cs, _)| cs.is_empty())?;
                dir_of(point, mount_root, path)
            })
            .ok_or_else(|| "edgecore's cgroup v2 is not in the mounted hierarchy".to_string());
        let (memory, cpu) = match dir {
            Err(e) => (Err(e.clone()), Err(e)),
            Ok(_) if !root => (not_root(), not_root()),
            Ok(dir) => match v2_controllers(&dir) {
                Err(e) => (Err(e.clone()), Err(e)),
                Ok(cs) => {
                    let has = |c: &str| {
                        if cs.iter().any(|x| x == c) {
                            Ok(dir.clone())
                        } else {
                            Err(format!(
                                "the cgroup v2 {c} controller is not available to children of {}",
                                dir.display()
                            ))
                        }
                    };
                    (has("memory"), has("cpu"))
                }
            },
        };
        CgroupHost {
            version: CgroupVersion::V2,
            memory,
            cpu,
        }
    }

    /// No cgroups, for `why`.
    pub(crate) fn disabled(why: &str) -> CgroupHost {
        CgroupHost {
            version: CgroupVersion::V1,
            memory: Err(why.to_string()),
            cpu: Err(why.to_string()),
        }
    }

    /// What this host offers, read from `/proc`. Under v2 it enables the memory and cpu
    /// controllers for children of edgecore's cgroup.
    pub(crate) fn detect() -> CgroupHost {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let root = nix::unistd::geteuid().is_root();
        CgroupHost::from_proc(
            &read("/proc/self/mountinfo"),
            &read("/proc/self/cgroup"),
            root,
            enable_v2_controllers,
        )
    }

    /// The cgroups of the instance named `name` (unique per instance) with `resources`, or
    /// why its limits cannot be honoured. `Ok(None)` when the container sets no limit: there is
    /// nothing to apply, and a container without cgroups leaves nothing behind if edgecore
    /// and its shim are killed (a cgroup directory would outlive them).
    pub(super) fn container_spec(
        &self,
        name: &str,
        resources: &Resources,
    ) -> Result<Option<CgroupSpec>, String> {
        if let (Some(_), Err(why)) = (resources.memory_limit_bytes, &self.memory) {
            return Err(format!("its memory limit cannot be honoured: {why}"));
        }
        if let (Some(_), Err(why)) = (resources.cpu_limit_millis, &self.cpu) {
            return Err(format!("its cpu limit cannot be honoured: {why}"));
        }
        if resources.memory_limit_bytes.is_none() && resources.cpu_limit_millis.is_none() {
            return Ok(None);
        }
        let memory_dir = self.memory.as_ref().ok().map(|d| d.join(name));
        let cpu_dir = self.cpu.as_ref().ok().map(|d| d.join(name));
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in memory_dir.iter().chain(cpu_dir.iter()) {
            if !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        if dirs.is_empty() {
            return Ok(None);
        }
        let write = |dir: &Path, file: &str, value: String, optional: bool| CgroupWrite {
            file: dir.join(file),
            value,
            optional,
        };
        let mut writes = Vec::new();
        if let (Some(bytes), Some(dir)) = (resources.memory_limit_bytes, &memory_dir) {
            match self.version {
                CgroupVersion::V1 => {
                    writes.push(write(
                        dir,
                        "memory.limit_in_bytes",
                        bytes.to_string(),
                        false,
                    ));
                    writes.push(write(
                        dir,
                        "memory.memsw.limit_in_bytes",
                        bytes.to_string(),
                        true,
                    ));
                }
                CgroupVersion::V2 => {
                    writes.push(write(dir, "memory.max", bytes.to_string(), false));
                    writes.push(write(dir, "memory.swap.max", "0".into(), true));
                }
            }
        }
        if let (Some(millis), Some(dir)) = (resources.cpu_limit_millis, &cpu_dir) {
            let quota = cpu_quota_us(millis);
            match self.version {
                CgroupVersion::V1 => {
                    writes.push(write(
                        dir,
                        "cpu.cfs_period_us",
                        CPU_PERIOD_US.to_string(),
                        false,
                    ));
                    writes.push(write(dir, "cpu.cfs_quota_us", quota.to_string(), false));
                }
                CgroupVersion::V2 => writes.push(write(
                    dir,
                    "cpu.max",
                    format!("{quota} {CPU_PERIOD_US}"),
                    false,
                )),
            }
        }
        Ok(Some(CgroupSpec {
            version: self.version,
            dirs,
            memory_dir,
            writes,
        }))
    }
}

impl CgroupHost {
    /// Removes the instance cgroups (`skerry-*`) under edgecore's cgroups that are empty and
    /// older than `older_than`: left by a shim killed with its program (a power cut, `kill -9`
    /// of the process group), which could not remove them. A live instance's cgroup is empty
    /// only for the moment between its creation and its process joining, and again once the
    /// program exited, when its shim removes it at once. Returns how many went.
    pub(super) fn sweep_stale(&self, older_than: std::time::Duration) -> usize {
        let mut roots: Vec<&PathBuf> = Vec::new();
        for d in [&self.memory, &self.cpu].into_iter().flatten() {
            if !roots.contains(&d) {
                roots.push(d);
            }
        }
        let mut removed = 0;
        for root in roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let stale = e.file_name().to_string_lossy().starts_with("skerry-")
                    && e.file_type().is_ok_and(|t| t.is_dir())
                    && std::fs::read_to_string(path.join("cgroup.procs"))
                        .map_or(true, |p| p.trim().is_empty())
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= older_than);
                if stale && std::fs::remove_dir(&path).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// The CFS quota of a cpu limit of `millis` millicores per [`CPU_PERIOD_US`] (kubelet's
/// `MilliCPUToQuota`).
pub(super) fn cpu_quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_CPU_QUOTA_US)
}

/// The cgroup directory name of an instance: flat under edgecore's cgroup, so that no parent
/// shared between instances (or between edgecores on one host) is ever left behind.
pub(super) fn instance_name(pod_uid: &str, container: &str, attempt: u32) -> String {
    format!("skerry-{pod_uid}-{container}-{attempt}")
}

/// Enables the memory and cpu controllers for children of `dir` (v2) and returns those its
/// children get.
fn enable_v2_controllers(dir: &Path) -> Result<Vec<String>, String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = |text: &str| {
        text.split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let now = std::fs::read_to_string(&control)
        .map_err(|e| format!("cannot read {}: {e}", control.display()))?;
    let mut have = enabled(&now);
    for c in ["memory", "cpu"] {
        if !have.iter().any(|x| x == c) {
            match std::fs::write(&control, format!("+{c}")) {
                Ok(()) => have.push(c.to_string()),
                Err(e) => {
                    return Err(format!(
                        "cannot enable the cgroup v2 {c} controller in {} ({e}); run edgecore in a delegated cgroup whose processes sit in a leaf",
                        control.display()
                    ))
                }
            }
        }
    }
    Ok(have)
}

/// The `oom_kill` count of a `memory.oom_control` (v1) or `memory.events` (v2) text.
pub(super) fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

impl CgroupSpec {
    /// Creates the directories and writes the limits (in the shim, before the program starts).
    pub(super) fn create(&self) -> std::io::Result<()> {
        for d in &self.dirs {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot create cgroup {}: {e}", d.display()),
                    ))
                }
            }
        }
        for w in &self.writes {
            match std::fs::write(&w.file, &w.value) {
                Ok(()) => {}
                Err(e) if w.optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot write {} to {}: {e}", w.value, w.file.display()),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes `0` into to join the cgroups.
    pub(super) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the kernel's OOM killer killed a process of the cgroup.
    pub(super) fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| parse_oom_kills(&t))
            .unwrap_or(0)
    }

    /// Kills whatever is left in the cgroups and removes them; idempotent (a directory already
    /// gone is fine). Errors say which cgroup could not be removed.
    pub(super) fn remove(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for d in &self.dirs {
            if !d.exists() {
                continue;
            }
            let mut removed = false;
            for _ in 0..100 {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                match std::fs::remove_dir(d) {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        removed = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
            if !removed {
                problems.push(format!("cannot remove cgroup {}", d.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 25 8:1 / / rw,relatime - ext4 /dev/vda rw";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
4:memory:/process_api/abc
1:cpu:/
0::/";

    fn no_v2(_: &Path) -> Result<Vec<String>, String> {
        panic!("a v1 host does not look at v2")
    }

    #[test]
    fn a_v1_hybrid_host_nests_under_edgecores_own_cgroups() {
        let host = CgroupHost::from_proc(HYBRID_MOUNTINFO, HYBRID_SELF, true, no_v2);
        assert_eq!(host.version, CgroupVersion::V1);
        assert_eq!(
            host.memory,
            Ok(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(host.cpu, Ok(PathBuf::from("/sys/fs/cgroup/cpu")));
        let res = Resources {
            memory_limit_bytes: Some(32 << 20),
            cpu_limit_millis: Some(250),
            ..Resources::default()
        };
        let name = instance_name("u1", "main", 2);
        assert_eq!(name, "skerry-u1-main-2");
        let spec = host.container_spec(&name, &res).unwrap().unwrap();
        let mem = PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/skerry-u1-main-2");
        let cpu = PathBuf::from("/sys/fs/cgroup/cpu/skerry-u1-main-2");
        assert_eq!(spec.dirs, [mem.clone(), cpu.clone()]);
        assert_eq!(spec.memory_dir.as_ref(), Some(&mem));
        let writes: Vec<(PathBuf, &str, bool)> = spec
            .writes
            .iter()
            .map(|w| (w.file.clone(), w.value.as_str(), w.optional))
            .collect();
        assert_eq!(
            writes,
            [
                (mem.join("memory.limit_in_bytes"), "33554432", false),
                (mem.join("memory.memsw.limit_in_bytes"), "33554432", true),
                (cpu.join("cpu.cfs_period_us"), "100000", false),
                (cpu.join("cpu.cfs_quota_us"), "25000", false),
            ]
        );
        assert_eq!(
            spec.procs_files(),
            [mem.join("cgroup.procs"), cpu.join("cgroup.procs")]
        );
        // No limits: no cgroups.
        assert_eq!(host.container_spec(&name, &Resources::default()), Ok(None));
        // A memory limit alone: both cgroups (the cpu one without a quota).
        let memory_only = Resources {
            memory_limit_bytes: Some(1 << 30),
            ..Resources::default()
        };
        let spec = host.container_spec(&name, &memory_only).unwrap().unwrap();
        assert_eq!(spec.dirs.len(), 2);
        assert_eq!(spec.writes.len(), 2);
    }

    #[test]
    fn limits_that_cannot_be_honoured_say_why() {
        let host = CgroupHost::from_proc(HYBRID_MOUNTINFO, HYBRID_SELF, false, no_v2);
        let limited = Resources {
            memory_limit_bytes: Some(1 << 20),
            ..Resources::default()
        };
        assert_eq!(
            host.container_spec("x", &limited),
            Err("its memory limit cannot be honoured: edgecore does not run as root, so it cannot create cgroups".into())
        );
        assert_eq!(host.container_spec("x", &Resources::default()), Ok(None));
        let no_cpu = HYBRID_MOUNTINFO.replace("rw,cpu\n", "rw,cpuset\n");
        let host = CgroupHost::from_proc(&no_cpu, HYBRID_SELF, true, no_v2);
        let cpu = Resources {
            cpu_limit_millis: Some(500),
            ..Resources::default()
        };
        assert_eq!(
            host.container_spec("x", &cpu),
            Err(
                "its cpu limit cannot be honoured: no cgroup v1 hierarchy has the cpu controller"
                    .into()
            )
        );
    }

    #[test]
    fn a_v2_host_uses_one_directory_and_its_files() {
        let mountinfo = "31 25 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        let own = "0::/system.slice/edgecore.service";
        let host = CgroupHost::from_proc(mountinfo, own, true, |dir| {
            assert_eq!(
                dir,
                Path::new("/sys/fs/cgroup/system.slice/edgecore.service")
            );
            Ok(vec!["cpu".into(), "memory".into()])
        });
        assert_eq!(host.version, CgroupVersion::V2);
        let res = Resources {
            memory_limit_bytes: Some(64 << 20),
            cpu_limit_millis: Some(1500),
            ..Resources::default()
        };
        let spec = host.container_spec("skerry-u-c-0", &res).unwrap().unwrap();
        let dir = PathBuf::from("/sys/fs/cgroup/system.slice/edgecore.service/skerry-u-c-0");
        assert_eq!(spec.dirs, std::slice::from_ref(&dir));
        let writes: Vec<(PathBuf, &str)> = spec
            .writes
            .iter()
            .map(|w| (w.file.clone(), w.value.as_str()))
            .collect();
        assert_eq!(
            writes,
            [
                (dir.join("memory.max"), "67108864"),
                (dir.join("memory.swap.max"), "0"),
                (dir.join("cpu.max"), "150000 100000"),
            ]
        );
        let refused = CgroupHost::from_proc(mountinfo, own, true, |_| {
            Err("cannot enable the cgroup v2 memory controller".into())
        });
        assert!(refused
            .container_spec("x", &res)
            .unwrap_err()
            .contains("cannot enable the cgroup v2 memory controller"));
        // A cgroup namespace's mount root is stripped from the path.
        let ns = "31 25 0:27 /pods /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let host = CgroupHost::from_proc(ns, "0::/pods/edge", true, |_| Ok(vec!["memory".into()]));
        assert_eq!(host.memory, Ok(PathBuf::from("/sys/fs/cgroup/edge")));
        assert!(host.cpu.is_err());
    }

    #[test]
    fn only_empty_instance_cgroups_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["skerry-u1-main-0", "skerry-u2-main-0", "k8s.io"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        // A live one: its process is listed (a plain directory stands for the cgroup here).
        std::fs::write(root.join("skerry-u2-main-0/cgroup.procs"), "4242\n").unwrap();
        let host = CgroupHost {
            version: CgroupVersion::V1,
            memory: Ok(root.clone()),
            cpu: Ok(root.clone()),
        };
        assert_eq!(host.sweep_stale(std::time::Duration::from_secs(3600)), 0);
        assert_eq!(host.sweep_stale(std::time::Duration::ZERO), 1);
        assert!(!root.join("skerry-u1-main-0").exists());
        assert!(root.join("skerry-u2-main-0").exists());
        assert!(root.join("k8s.io").exists());
    }

    #[test]
    fn quotas_and_oom_counters_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(100), 10_000);
        assert_eq!(cpu_quota_us(1), 1_000);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_oom_kills(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }
}
