//! The node's conditions, measured as kubelet measures them, for the heartbeat.
//!
//! A heartbeat that always says `Ready` lets the scheduler send pods to a node whose runtime is
//! gone. Each heartbeat therefore runs real checks, each bounded by a deadline so that a hung
//! runtime makes the node `NotReady` instead of stopping its heartbeat:
//!
//! - `Ready`: the runtime answers its status call and says it can run containers, and the
//!   cache (the sled database the node runs from when offline) takes a durable write.
//! - `MemoryPressure`, `DiskPressure`, `PIDPressure`: measurements against thresholds given in
//!   kubelet's `--eviction-hard` syntax ([`Thresholds::parse`]): `MemAvailable`, free space and
//!   inodes of the data directory (nodefs) and of the image filesystem (imagefs), and process
//!   ids in use against `pid_max`.
//! - `NetworkUnavailable`: the runtime's `NetworkReady` (containerd's CNI configuration).
//!
//! A signal that cannot be measured is left out of the report rather than guessed: the cloud
//! keeps what it last knew. The measuring is split from the deciding ([`conditions`] is a pure
//! function of [`Measurements`] and [`Thresholds`]) so the rules are tested without a machine in
//! that state.

use crate::runtime::{Runtime, RuntimeStatus};
use protocol::status::{NodeCondition, NodeConditionKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long one check may take before it counts as failed.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// kubelet's default hard eviction thresholds, plus a PID threshold (kubelet has none by
/// default; 5% keeps room to start a shell on a node whose pods leak processes).
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%,pid.available<5%";

/// A threshold: an absolute quantity or a percentage of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Bytes (or a count, for inodes and pids).
    Absolute(u64),
    /// Percent of the total, 0 to 100.
    Percent(f64),
}

impl Threshold {
    /// Whether `available` out of `total` is below the threshold.
    pub fn crossed(self, available: u64, total: u64) -> bool {
        match self {
            Threshold::Absolute(n) => available < n,
            Threshold::Percent(p) => total > 0 && (available as f64) * 100.0 < p * total as f64,
        }
    }

    fn describe(self) -> String {
        match self {
            Threshold::Absolute(n) => n.to_string(),
            Threshold::Percent(p) => format!("{p}%"),
        }
    }
}

/// The thresholds of the pressure conditions, by kubelet's signal names. A signal without one
/// is not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// `memory.available`.
    pub memory_available: Option<Threshold>,
    /// `nodefs.available`.
    pub nodefs_available: Option<Threshold>,
    /// `nodefs.inodesFree`.
    pub nodefs_inodes_free: Option<Threshold>,
    /// `imagefs.available`.
    pub imagefs_available: Option<Threshold>,
    /// `imagefs.inodesFree`.
    pub imagefs_inodes_free: Option<Threshold>,
    /// `pid.available`.
    pub pid_available: Option<Threshold>,
}

/// Parses a Kubernetes quantity of bytes (`100Mi`, `1G`, `512`).
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Thresholds {
    /// Parses kubelet's `--eviction-hard` syntax: `signal<quantity` or `signal<percent%`,
    /// comma-separated. Unknown signals and other operators are refused with what is supported.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut t = Thresholds::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| {
                format!("{part:?}: expected SIGNAL<QUANTITY or SIGNAL<PERCENT% (kubelet's --eviction-hard syntax)")
            })?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p
                        .parse()
                        .map_err(|_| format!("{part:?}: {value:?} is not a percentage"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{part:?}: a percentage is 0 to 100"));
                    }
                    Threshold::Percent(p)
                }
                None => Threshold::Absolute(parse_quantity(value).ok_or_else(|| {
                    format!("{part:?}: {value:?} is not a quantity (such as 100Mi or 1G)")
                })?),
            };
            let slot = match signal.trim() {
                "memory.available" => &mut t.memory_available,
                "nodefs.available" => &mut t.nodefs_available,
                "nodefs.inodesFree" => &mut t.nodefs_inodes_free,
                "imagefs.available" => &mut t.imagefs_available,
                "imagefs.inodesFree" => &mut t.imagefs_inodes_free,
                "pid.available" => &mut t.pid_available,
                other => {
                    return Err(format!(
                        "{other:?} is not a supported signal; supported: memory.available, \
                         nodefs.available, nodefs.inodesFree, imagefs.available, \
                         imagefs.inodesFree, pid.available"
                    ))
                }
            };
            *slot = Some(threshold);
        }
        Ok(t)
    }
}

/// Space and inodes of one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Bytes in all.
    pub total_bytes: u64,
    /// Bytes available to unprivileged writers.
    pub available_bytes: u64,
    /// Inodes in all.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

/// What one heartbeat measured; `None` where a measurement failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurements {
    /// The runtime's answer, or why there was none.
    pub runtime: Result<RuntimeStatus, String>,
    /// Whether the cache took a durable write, or why not.
    pub cache: Result<(), String>,
    /// `(MemTotal, MemAvailable)` in bytes.
    pub memory: Option<(u64, u64)>,
    /// The data directory's filesystem.
    pub nodefs: Option<FsStats>,
    /// The image filesystem (the data directory's for the process runtime).
    pub imagefs: Option<FsStats>,
    /// `(pids in use, pid_max)`.
    pub pids: Option<(u64, u64)>,
}

fn pressure(
    kind: NodeConditionKind,
    verdicts: Vec<(bool, String)>,
    (yes, no): (&str, &str),
) -> Option<NodeCondition> {
    if verdicts.is_empty() {
        return None;
    }
    let crossed: Vec<&str> = verdicts
        .iter()
        .filter(|(c, _)| *c)
        .map(|(_, m)| m.as_str())
        .collect();
    Some(if crossed.is_empty() {
        NodeCondition::new(kind, false, no, "")
    } else {
        NodeCondition::new(kind, true, yes, &crossed.join("; "))
    })
}

/// The node's conditions from what was measured (pure: the rules, without the machine).
pub fn conditions(m: &Measurements, t: &Thresholds) -> Vec<NodeCondition> {
    use NodeConditionKind::*;
    let ready = match (&m.runtime, &m.cache) {
        (Err(e), _) => NodeCondition::new(
            Ready,
            false,
            "ContainerRuntimeDown",
            &format!("container runtime is down: {e}"),
        ),
        (
            Ok(RuntimeStatus {
                runtime_ready: Err(e),
                ..
            }),
            _,
        ) => NodeCondition::new(
            Ready,
            false,
            "ContainerRuntimeNotReady",
            &format!("container runtime is not ready: {e}"),
        ),
        (Ok(_), Err(e)) => NodeCondition::new(
            Ready,
            false,
            "CacheNotWritable",
            &format!("the local cache cannot be written: {e}"),
        ),
        (Ok(_), Ok(())) => NodeCondition::new(
            Ready,
            true,
            "KubeletReady",
            "edgecore is posting ready status",
        ),
    };
    let mut out = vec![ready];
    let check = |t: Option<Threshold>, signal: &str, available: u64, total: u64| {
        t.map(|t| {
            (
                t.crossed(available, total),
                format!("{signal} is {available} of {total}, below {}", t.describe()),
            )
        })
    };
    let memory: Vec<(bool, String)> = m
        .memory
        .and_then(|(total, avail)| check(t.memory_available, "memory.available", avail, total))
        .into_iter()
        .collect();
    out.extend(pressure(
        MemoryPressure,
        memory,
        ("KubeletHasInsufficientMemory", "KubeletHasSufficientMemory"),
    ));
    let mut disk: Vec<(bool, String)> = Vec::new();
    for (fs, space, inodes, name) in [
        (m.nodefs, t.nodefs_available, t.nodefs_inodes_free, "nodefs"),
        (
            m.imagefs,
            t.imagefs_available,
            t.imagefs_inodes_free,
            "imagefs",
        ),
    ] {
        if let Some(fs) = fs {
            disk.extend(check(
                space,
                &format!("{name}.available"),
                fs.available_bytes,
                fs.total_bytes,
            ));
            disk.extend(check(
                inodes,
                &format!("{name}.inodesFree"),
                fs.free_inodes,
                fs.total_inodes,
            ));
        }
    }
    out.extend(pressure(
        DiskPressure,
        disk,
        ("KubeletHasDiskPressure", "KubeletHasNoDiskPressure"),
    ));
    let pids: Vec<(bool, String)> = m
        .pids
        .and_then(|(used, max)| {
            check(
                t.pid_available,
                "pid.available",
                max.saturating_sub(used),
                max,
            )
        })
        .into_iter()
        .collect();
    out.extend(pressure(
        PIDPressure,
        pids,
        ("KubeletHasInsufficientPID", "KubeletHasSufficientPID"),
    ));
    if let Ok(status) = &m.runtime {
        out.push(match &status.network_ready {
            Ok(()) => NodeCondition::new(NetworkUnavailable, false, "NetworkReady", ""),
            Err(e) => NodeCondition::new(NetworkUnavailable, true, "NetworkPluginNotReady", e),
        });
    }
    out
}

/// What the heartbeat checks, and where.
#[derive(Clone)]
pub struct Checker {
    /// The runtime asked for its status.
    pub runtime: Arc<dyn Runtime>,
    /// The cache database written to.
    pub cache: sled::Db,
    /// The data directory (nodefs).
    pub data_dir: PathBuf,
    /// The image filesystem's directory; `None` when images live in the data directory.
    pub image_dir: Option<PathBuf>,
    /// The pressure thresholds.
    pub thresholds: Thresholds,
    /// How long each check may take.
    pub deadline: Duration,
}

fn read_meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

fn fs_stats(path: &Path) -> Option<FsStats> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(
            |e| tracing::warn!(path = %path.display(), error = %e, "cannot measure the filesystem"),
        )
        .ok()?;
    let frag = s.fragment_size() as u64;
    Some(FsStats {
        total_bytes: s.blocks() as u64 * frag,
        available_bytes: s.blocks_available() as u64 * frag,
        total_inodes: s.files() as u64,
        free_inodes: s.files_available() as u64,
    })
}

fn pids_in_use() -> Option<(u64, u64)> {
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let used = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    Some((used, max))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Checker {
    /// Runs every check, each within the deadline.
    pub async fn measure(&self) -> Measurements {
        let runtime = match tokio::time::timeout(self.deadline, self.runtime.status()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer to the status call within {:.0}s",
                self.deadline.as_secs_f64()
            )),
        };
        let cache = self.probe_cache().await;
        let data_dir = self.data_dir.clone();
        let image_dir = self.image_dir.clone();
        let (memory, nodefs, imagefs, pids) = tokio::task::spawn_blocking(move || {
            let nodefs = fs_stats(&data_dir);
            let imagefs = match &image_dir {
                Some(d) => fs_stats(d),
                None => nodefs,
            };
            (read_meminfo(), nodefs, imagefs, pids_in_use())
        })
        .await
        .unwrap_or((None, None, None, None));
        Measurements {
            runtime,
            cache,
            memory,
            nodefs,
            imagefs,
            pids,
        }
    }

    /// Writes and flushes a probe key: what the link and the outbox need to work.
    async fn probe_cache(&self) -> Result<(), String> {
        let write = async {
            self.cache
                .insert(b"__health_probe", &now_ms().to_be_bytes())
                .map_err(|e| e.to_string())?;
            self.cache.flush_async().await.map_err(|e| e.to_string())?;
            Ok(())
        };
        match tokio::time::timeout(self.deadline, write).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "a write did not become durable within {:.0}s",
                self.deadline.as_secs_f64()
            )),
        }
    }

    /// The conditions of a fresh measurement.
    pub async fn conditions(&self) -> Vec<NodeCondition> {
        conditions(&self.measure().await, &self.thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Measurements {
        Measurements {
            runtime: Ok(RuntimeStatus {
                runtime_ready: Ok(()),
                network_ready: Ok(()),
            }),
            cache: Ok(()),
            memory: Some((8 << 30, 4 << 30)),
            nodefs: Some(FsStats {
                total_bytes: 100 << 30,
                available_bytes: 50 << 30,
                total_inodes: 1000,
                free_inodes: 900,
            }),
            imagefs: None,
            pids: Some((300, 32768)),
        }
    }

    fn find(cs: &[NodeCondition], kind: NodeConditionKind) -> Option<&NodeCondition> {
        cs.iter().find(|c| c.kind == kind)
    }

    #[test]
    fn eviction_thresholds_parse_as_kubelet_writes_them() {
        let t = Thresholds::parse(DEFAULT_EVICTION_HARD).unwrap();
        assert_eq!(t.memory_available, Some(Threshold::Absolute(100 << 20)));
        assert_eq!(t.nodefs_available, Some(Threshold::Percent(10.0)));
        assert_eq!(t.pid_available, Some(Threshold::Percent(5.0)));
        assert_eq!(
            Thresholds::parse("memory.available<1G")
                .unwrap()
                .memory_available,
            Some(Threshold::Absolute(1_000_000_000))
        );
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        for bad in [
            "memory.available>1G",
            "memory.available<lots",
            "nodefs.available<120%",
            "swap.available<1G",
        ] {
            let e = Thresholds::parse(bad).unwrap_err();
            assert!(e.contains(bad.split(['<', '>']).next().unwrap()), "{e}");
        }
    }

    #[test]
    fn a_healthy_node_is_ready_without_pressure() {
        let cs = conditions(
            &healthy(),
            &Thresholds::parse(DEFAULT_EVICTION_HARD).unwrap(),
        );
        let kinds: Vec<_> = cs.iter().map(|c| (c.kind, c.status)).collect();
        use NodeConditionKind::*;
        assert_eq!(
            kinds,
            [
                (Ready, true),
                (MemoryPressure, false),
                (DiskPressure, false),
                (PIDPressure, false),
                (NetworkUnavailable, false)
            ]
        );
    }

    #[test]
    fn a_down_or_unready_runtime_or_a_stuck_cache_makes_the_node_not_ready() {
        let t = Thresholds::default();
        let mut m = healthy();
        m.runtime = Err("no answer to the status call within 5s".into());
        let cs = conditions(&m, &t);
        let ready = find(&cs, NodeConditionKind::Ready).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (false, "ContainerRuntimeDown")
        );
        assert!(ready.message.contains("within 5s"));
        assert!(
            find(&cs, NodeConditionKind::NetworkUnavailable).is_none(),
            "unknown, so not reported"
        );
        m.runtime = Ok(RuntimeStatus {
            runtime_ready: Err("RuntimeReady=false".into()),
            network_ready: Err("cni config uninitialized".into()),
        });
        let cs = conditions(&m, &t);
        assert_eq!(
            find(&cs, NodeConditionKind::Ready).unwrap().reason,
            "ContainerRuntimeNotReady"
        );
        let net = find(&cs, NodeConditionKind::NetworkUnavailable).unwrap();
        assert!(net.status);
        assert_eq!(net.message, "cni config uninitialized");
        let mut m = healthy();
        m.cache = Err("disk full".into());
        let ready = conditions(&m, &t)[0].clone();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (false, "CacheNotWritable")
        );
    }

    #[test]
    fn pressures_follow_their_thresholds_and_name_the_signal() {
        let t = Thresholds::parse(DEFAULT_EVICTION_HARD).unwrap();
        let mut m = healthy();
        m.memory = Some((8 << 30, 50 << 20));
        m.imagefs = Some(FsStats {
            total_bytes: 100,
            available_bytes: 10,
            total_inodes: 100,
            free_inodes: 50,
        });
        m.pids = Some((32000, 32768));
        let cs = conditions(&m, &t);
        let mem = find(&cs, NodeConditionKind::MemoryPressure).unwrap();
        assert!(mem.status && mem.message.contains("memory.available"));
        let disk = find(&cs, NodeConditionKind::DiskPressure).unwrap();
        assert!(disk.status);
        assert!(
            disk.message.contains("imagefs.available"),
            "{}",
            disk.message
        );
        assert!(!disk.message.contains("nodefs"), "{}", disk.message);
        assert!(find(&cs, NodeConditionKind::PIDPressure).unwrap().status);
        // Signals that were not measured, or have no threshold, are not reported.
        m.memory = None;
        let cs = conditions(&m, &Thresholds::default());
        assert!(find(&cs, NodeConditionKind::MemoryPressure).is_none());
        assert!(find(&cs, NodeConditionKind::DiskPressure).is_none());
    }

    #[test]
    fn percent_thresholds_compare_against_the_total() {
        assert!(Threshold::Percent(10.0).crossed(9, 100));
        assert!(!Threshold::Percent(10.0).crossed(10, 100));
        assert!(
            !Threshold::Percent(10.0).crossed(0, 0),
            "no total, no verdict"
        );
        assert!(Threshold::Absolute(5).crossed(4, 0));
    }
}
