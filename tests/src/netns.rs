//! Real network faults for the end-to-end tests: hosts are network namespaces with a veth each
//! into a bridge that lives in a "switch" namespace of its own, so nothing but one observer
//! veth touches the machine's interfaces, and every address the tests use (a private /24 in
//! 10.150.0.0-10.199.0.0 per run) exists only inside namespaces this module made.
//!
//! Faults are what a real network does to packets, applied on the receiving side:
//! - a cut is a silent drop on the receiver's `INPUT` chain. A drop on the sender's `OUTPUT`
//!   would hand the sender `EPERM` at once, which no real network does, so "A cannot reach B"
//!   is always installed in B;
//! - random loss is `-m statistic --mode random` on the same chain;
//! - a bandwidth cap is `tc tbf` on the sender's egress;
//! - delay (this kernel has no `netem`) goes through [`relay`], a userspace UDP/TCP relay.
//!
//! A run claims its /24 with a lock file under `/run/skerry-netns/` holding its pid; a run
//! that finds a lock whose pid is dead (a crashed earlier run) sweeps that run's namespaces and
//! takes the slot. [`Net`] removes everything it made when dropped, also when a test fails.

pub mod relay;

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

const LOCK_DIR: &str = "/run/skerry-netns";
/// Slots: the /24 of slot `i` is `10.(150 + i).0.0/24`.
const SLOTS: u8 = 50;
/// The chain each host's `INPUT` jumps to; healing flushes it.
const CHAIN: &str = "SKERRY-FAULTS";
/// The chain counting what each host receives from each peer (never flushed by healing).
const ACCT: &str = "SKERRY-ACCT";
/// The host-side address of the observer veth (the test process's own namespace).
const OBSERVER_HOST: u8 = 254;

/// Where a daemon runs: a namespace, its address there, and the names its serving certificate
/// must carry (its address and the relays in front of it).
#[derive(Debug, Clone)]
pub struct Place {
    /// Namespace name (under `/run/netns/`).
    pub ns: String,
    /// Its address on the test network.
    pub ip: Ipv4Addr,
    /// Names for `cloudcore serve --server-name`.
    pub server_names: Vec<String>,
}

impl Place {
    /// A command running `program` inside this namespace: `nsenter --net` enters it and
    /// then execs the program (no fork), so the child's pid is the daemon's own, for kill -9.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        cmd
    }
}

/// Runs a command of the network tools; an error says what failed and why.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog} (iproute2 / iptables are required)"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS prog args`.
fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Whether the tools this module needs are on the machine. Under `CI=true` their absence is a
/// failure (the caller bails), elsewhere the tests say why they skip.
pub fn available() -> Result<()> {
    for (prog, arg) in [
        ("ip", "-V"),
        ("iptables", "-V"),
        ("tc", "-V"),
        ("nsenter", "-V"),
    ] {
        run(prog, &[arg]).with_context(|| format!("{prog} is missing"))?;
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("network namespaces need root");
    }
    Ok(())
}

/// Whether a test should run: `Ok(true)` if the namespaces can be made; `Ok(false)` (skip,
/// with the reason printed) outside CI; an error under `CI=true`.
pub fn should_run() -> Result<bool> {
    match available() {
        Ok(()) => Ok(true),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => Err(e),
        Err(e) => {
            eprintln!("skipping a network-fault test: {e:#}");
            Ok(false)
        }
    }
}

struct Inner {
    slot: u8,
    lock: PathBuf,
    switch: String,
    hosts: Mutex<Vec<(String, Ipv4Addr)>>,
}

impl Inner {
    fn prefix(&self) -> String {
        prefix(self.slot)
    }

    fn subnet(&self) -> String {
        format!("10.{}.0.0/24", 150 + u16::from(self.slot))
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 150 + self.slot, 0, host)
    }
}

fn prefix(slot: u8) -> String {
    format!("sk{slot}-")
}

/// A private test network: a switch namespace with a bridge, the hosts on it, an observer
/// link from the test process's namespace.
pub struct Net {
    inner: Arc<Inner>,
}

/// A host on a [`Net`]: a network namespace with one address.
pub struct Host {
    inner: Arc<Inner>,
    /// Namespace name.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// Removes every namespace and link of `slot` (a dead run's, or ours on drop).
fn sweep(slot: u8) {
    let p = prefix(slot);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&p) {
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    // The observer's veth goes with its peer in the switch namespace; this is for a run that
    // crashed between the two steps.
    let _ = run("ip", &["link", "del", &format!("skobs{slot}")]);
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Claims a free slot: creates its lock file with our pid, sweeping slots whose owner died.
fn claim() -> Result<(u8, PathBuf)> {
    std::fs::create_dir_all(LOCK_DIR)?;
    let routes = run("ip", &["-4", "route", "show"]).unwrap_or_default();
    for slot in 0..SLOTS {
        let lock = PathBuf::from(format!("{LOCK_DIR}/{slot}.lock"));
        if let Ok(text) = std::fs::read_to_string(&lock) {
            let owner: i32 = text.trim().parse().unwrap_or(0);
            if owner > 0 && pid_alive(owner) {
                continue;
            }
            sweep(slot);
            let _ = std::fs::remove_file(&lock);
        }
        // Someone else's route to the subnet (not ours: ours would hold a lock) rules it out.
        if routes.contains(&format!("10.{}.0.", 150 + u16::from(slot))) {
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(mut f) => {
                use std::io::Write;
                write!(f, "{}", std::process::id())?;
                return Ok((slot, lock));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no free test network slot in {LOCK_DIR} (all {SLOTS} held by live runs)")
}

impl Net {
    /// Claims a /24, sweeps dead runs' leftovers, makes the switch and the observer link.
    pub fn new() -> Result<Self> {
        let (slot, lock) = claim()?;
        let inner = Arc::new(Inner {
            slot,
            lock,
            switch: format!("{}sw", prefix(slot)),
            hosts: Mutex::new(Vec::new()),
        });
        let net = Net { inner };
        net.build_switch()?;
        Ok(net)
    }

    fn build_switch(&self) -> Result<()> {
        let i = &self.inner;
        let sw = i.switch.as_str();
        run("ip", &["netns", "add", sw])?;
        run("ip", &["-n", sw, "link", "set", "lo", "up"])?;
        run("ip", &["-n", sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", sw, "link", "set", "br0", "up"])?;
        // The observer: one end in our namespace with the subnet's .254, the other on the
        // bridge. The test process reaches the API and metrics through it, and nothing else.
        let obs = format!("skobs{}", i.slot);
        run(
            "ip",
            &[
                "link", "add", &obs, "type", "veth", "peer", "name", "obs", "netns", sw,
            ],
        )?;
        run("ip", &["-n", sw, "link", "set", "obs", "master", "br0"])?;
        run("ip", &["-n", sw, "link", "set", "obs", "up"])?;
        let cidr = format!("{}/24", i.addr(OBSERVER_HOST));
        run("ip", &["addr", "add", &cidr, "dev", &obs])?;
        run("ip", &["link", "set", &obs, "up"])?;
        Ok(())
    }

    /// The address of the test process on this network (where relays on the host side bind).
    pub fn observer_ip(&self) -> Ipv4Addr {
        self.inner.addr(OBSERVER_HOST)
    }

    /// The subnet, `10.x.0.0/24`.
    pub fn subnet(&self) -> String {
        self.inner.subnet()
    }

    /// Adds a host `name` (a short word: it ends up in a namespace name).
    pub fn host(&self, name: &str) -> Result<Host> {
        let i = &self.inner;
        let (index, ip) = {
            let hosts = i.hosts.lock().expect("hosts");
            let index = hosts.len() + 1;
            if index >= usize::from(OBSERVER_HOST) {
                bail!("too many hosts");
            }
            (index, i.addr(index as u8))
        };
        let ns = format!("{}{name}", i.prefix());
        let sw = i.switch.as_str();
        let port = format!("h{index}");
        run("ip", &["netns", "add", &ns])?;
        i.hosts.lock().expect("hosts").push((ns.clone(), ip));
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        )?;
        run("ip", &["-n", sw, "link", "set", &port, "master", "br0"])?;
        run("ip", &["-n", sw, "link", "set", &port, "up"])?;
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        // The observer is never cut: the test must see the API and metrics whatever it does
        // to the hosts. Every fault goes in a chain of its own, so healing is one flush.
        let obs = i.addr(OBSERVER_HOST).to_string();
        in_ns(&ns, "iptables", &["-N", CHAIN])?;
        in_ns(&ns, "iptables", &["-N", ACCT])?;
        in_ns(&ns, "iptables", &["-A", "INPUT", "-j", ACCT])?;
        in_ns(
            &ns,
            "iptables",
            &["-A", "INPUT", "-s", &obs, "-j", "ACCEPT"],
        )?;
        in_ns(&ns, "iptables", &["-A", "INPUT", "-j", CHAIN])?;
        Ok(Host {
            inner: self.inner.clone(),
            ns,
            ip,
        })
    }

    /// Heals every fault on every host.
    pub fn heal_all(&self) -> Result<()> {
        let hosts = self.inner.hosts.lock().expect("hosts").clone();
        for (ns, _) in hosts {
            heal_ns(&ns)?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        sweep(self.inner.slot);
        let _ = std::fs::remove_file(&self.inner.lock);
    }
}

fn heal_ns(ns: &str) -> Result<()> {
    in_ns(ns, "iptables", &["-F", CHAIN])?;
    // No qdisc to delete is fine: the cap may never have been set.
    let _ = in_ns(ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
    Ok(())
}

fn drop_from(ns: &str, source: &str) -> Result<()> {
    in_ns(ns, "iptables", &["-A", CHAIN, "-s", source, "-j", "DROP"])?;
    Ok(())
}

/// Packets and bytes a host's interface has carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
}

impl Counters {
    /// What was carried since `earlier`.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
        }
    }
}

impl Host {
    /// Where a daemon on this host runs.
    pub fn place(&self) -> Place {
        Place {
            ns: self.ns.clone(),
            ip: self.ip,
            server_names: vec![self.ip.to_string()],
        }
    }

    /// Gives the host a default route into the observer (which drops what it is sent), as a
    /// real node has one: a connect to a cluster IP needs a route before the proxy rewrites
    /// it.
    pub fn route_default_via_observer(&self) -> Result<()> {
        let gw = self.inner.addr(OBSERVER_HOST).to_string();
        let out = Command::new("ip")
            .args(["-n", &self.ns, "route", "add", "default", "via", &gw])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "default route in {}: {out:?}",
            self.ns
        );
        Ok(())
    }

    /// Packets from `peer` to this host vanish.
    pub fn cut_inbound_from(&self, peer: &Host) -> Result<()> {
        drop_from(&self.ns, &peer.ip.to_string())
    }

    /// Packets from this host to `peer` vanish (dropped on arrival at `peer`).
    pub fn cut_outbound_to(&self, peer: &Host) -> Result<()> {
        drop_from(&peer.ns, &self.ip.to_string())
    }

    /// Both directions between this host and `peer`.
    pub fn partition_from(&self, peer: &Host) -> Result<()> {
        self.cut_inbound_from(peer)?;
        self.cut_outbound_to(peer)
    }

    /// Both directions between this host and every other host (the observer still sees it).
    pub fn isolate(&self) -> Result<()> {
        let hosts = self.inner.hosts.lock().expect("hosts").clone();
        for (ns, ip) in hosts {
            if ns != self.ns {
                drop_from(&self.ns, &ip.to_string())?;
                drop_from(&ns, &self.ip.to_string())?;
            }
        }
        Ok(())
    }

    /// Drops `percent` % of the packets arriving at this host from the other hosts.
    pub fn loss(&self, percent: f64) -> Result<()> {
        let p = format!("{:.4}", percent / 100.0);
        let subnet = self.inner.subnet();
        in_ns(
            &self.ns,
            "iptables",
            &[
                "-A",
                CHAIN,
                "-s",
                &subnet,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )?;
        Ok(())
    }

    /// Caps what this host sends at `kbit` kbit/s (a token bucket; excess is queued up to
    /// 200 ms, then dropped).
    pub fn rate_limit(&self, kbit: u32) -> Result<()> {
        let rate = format!("{kbit}kbit");
        in_ns(
            &self.ns,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb",
                "latency", "200ms",
            ],
        )?;
        Ok(())
    }

    /// Removes the faults installed in this host (its inbound drops, loss and its cap).
    /// [`Host::cut_outbound_to`] installs in the peer: heal the peer, or [`Net::heal_all`].
    pub fn heal(&self) -> Result<()> {
        heal_ns(&self.ns)
    }

    /// The interface's byte counters.
    pub fn counters(&self) -> Result<Counters> {
        let read = |what: &str| -> Result<u64> {
            let text = in_ns(
                &self.ns,
                "cat",
                &[&format!("/sys/class/net/eth0/statistics/{what}")],
            )?;
            Ok(text.trim().parse()?)
        };
        Ok(Counters {
            tx_bytes: read("tx_bytes")?,
            rx_bytes: read("rx_bytes")?,
        })
    }

    /// Starts counting what this host receives from `peer` (see [`Host::bytes_from`]).
    pub fn count_from(&self, peer: &Host) -> Result<()> {
        in_ns(
            &self.ns,
            "iptables",
            &["-A", ACCT, "-s", &peer.ip.to_string()],
        )?;
        Ok(())
    }

    /// Bytes (IP packets, headers included) this host received from `peer` since
    /// [`Host::count_from`], dropped ones included.
    pub fn bytes_from(&self, peer: &Host) -> Result<u64> {
        let text = in_ns(&self.ns, "iptables", &["-S", ACCT, "-v"])?;
        let source = format!("-s {}/32", peer.ip);
        for line in text.lines().filter(|l| l.contains(&source)) {
            let mut words = line.split_whitespace().skip_while(|w| *w != "-c").skip(2);
            if let Some(bytes) = words.next().and_then(|b| b.parse().ok()) {
                return Ok(bytes);
            }
        }
        bail!("no byte counter for {} in {}: {text}", peer.ip, self.ns)
    }

    /// Packets dropped by the faults so far (the fault chain's counters).
    pub fn dropped_packets(&self) -> Result<u64> {
        let text = in_ns(&self.ns, "iptables", &["-L", CHAIN, "-v", "-n", "-x"])?;
        Ok(text
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a datagram from `from` reaches `to` within 1 s.
    fn reaches(from: &Host, to: &Host) -> Result<bool> {
        let (from_ip, to_ip) = (from.ip, to.ip);
        let rx = relay::in_namespace(Some(&to.ns), move || std::net::UdpSocket::bind((to_ip, 0)))?;
        rx.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        let dest = rx.local_addr()?;
        let tx = relay::in_namespace(Some(&from.ns), move || {
            std::net::UdpSocket::bind((from_ip, 0))
        })?;
        tx.send_to(b"probe", dest)?;
        let mut buf = [0u8; 8];
        Ok(rx.recv_from(&mut buf).is_ok())
    }

    fn namespaces() -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A crashed run left a lock with a dead pid and a namespace: the next run sweeps both,
    /// and its own drop leaves nothing behind.
    #[test]
    fn a_dead_runs_leftovers_are_swept_and_a_dropped_net_leaves_nothing() -> Result<()> {
        if !should_run()? {
            return Ok(());
        }
        std::fs::create_dir_all(LOCK_DIR)?;
        let mut child = Command::new("true").spawn()?;
        let dead = child.id();
        child.wait()?;
        let slot = (0..SLOTS)
            .find(|s| !std::path::Path::new(&format!("{LOCK_DIR}/{s}.lock")).exists())
            .expect("a free slot");
        std::fs::write(format!("{LOCK_DIR}/{slot}.lock"), dead.to_string())?;
        let leftover = format!("{}leftover", prefix(slot));
        run("ip", &["netns", "add", &leftover])?;

        let net = Net::new()?;
        let ours = net.inner.prefix();
        let a = net.host("a")?;
        let b = net.host("b")?;
        assert!(!namespaces().contains(&leftover), "{:?}", namespaces());
        // The hosts reach each other until one is cut off.
        assert!(reaches(&a, &b)?);
        b.cut_inbound_from(&a)?;
        assert!(!reaches(&a, &b)?);
        assert!(reaches(&b, &a)?, "the cut is one way");
        assert!(b.dropped_packets()? > 0);
        b.heal()?;
        assert!(reaches(&a, &b)?);
        a.cut_outbound_to(&b)?;
        assert!(!reaches(&a, &b)?);
        net.heal_all()?;
        assert!(reaches(&a, &b)?);
        a.isolate()?;
        assert!(!reaches(&a, &b)? && !reaches(&b, &a)?);
        net.heal_all()?;
        b.loss(100.0)?;
        assert!(!reaches(&a, &b)?);
        b.heal()?;
        // A cap slows, it does not cut; healing removes it.
        a.rate_limit(256)?;
        assert!(reaches(&a, &b)?);
        assert!(a.counters()?.tx_bytes > 0);
        net.heal_all()?;
        assert!(reaches(&a, &b)?);
        let lock = net.inner.lock.clone();
        drop((a, b));
        drop(net);
        assert!(
            !namespaces().iter().any(|n| n.starts_with(&ours)),
            "{:?}",
            namespaces()
        );
        assert!(!lock.exists());
        Ok(())
    }
}
