//! A node with pods, in network namespaces, for the Service proxy's tests and bench.
//!
//! Shape (the CNI bridge plugin's, which edgecore's CRI pods use):
//! - a "node" namespace with a bridge `br0` (10.244.0.1/24), `ip_forward` on and bridged
//!   traffic passing the IP hooks (`bridge-nf-call-iptables`, as Kubernetes requires), and a
//!   veth `vout` (192.0.2.1/24) to an "outside" namespace (192.0.2.2), which is also its
//!   default route, so a cluster IP has a route as on a real node;
//! - one namespace per "pod", its `eth0` on the bridge at 10.244.0.(10 + i), default route via
//!   the bridge, its bridge port in hairpin mode (the CNI plugin's `hairpinMode: true`).
//!
//! Every link is created inside these namespaces (none in the test process's own), so the
//! addresses exist nowhere else and concurrent runs do not collide; namespace names carry the
//! pid and a counter. Servers are threads of the test process whose sockets were made inside a
//! pod's namespace ([`in_ns`]); dropping the [`PodNet`] stops them and deletes the namespaces.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::netns::run;

/// The node's bridge address (the pods' gateway).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's address towards the outside namespace.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The outside namespace's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The port every pod's TCP and UDP name servers listen on.
pub const POD_PORT: u16 = 8080;
/// The port of each pod's TCP sink (reads to EOF, answers the byte count) for throughput.
pub const SINK_PORT: u16 = 9000;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `f` on a thread inside the named network namespace; sockets it makes stay there.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    in_ns_path(&format!("/run/netns/{ns}"), f)
}

/// Runs `f` on a thread inside the network namespace at `path` (`/run/netns/NAME`, or a
/// process's `/proc/PID/ns/net`); sockets it makes stay there.
pub fn in_ns_path<T: Send>(path: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {path} panicked"))?
    })
}

/// `ip netns exec NS prog args…`.
pub fn ns_exec(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Whether the proxy tests can run: `Ok(true)`, or `Ok(false)` with the reason printed
/// outside CI, or an error under `CI=true` (a missing real part is a failure there).
pub fn should_run() -> Result<bool> {
    let check = || -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            bail!("network namespaces need root");
        }
        run("ip", &["-V"]).context("iproute2 is missing")?;
        run("nft", &["--version"]).context("nft is missing (Debian's nftables package)")?;
        run("conntrack", &["--version"])
            .context("conntrack is missing (Debian's conntrack package)")?;
        Ok(())
    };
    match check() {
        Ok(()) => Ok(true),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => Err(e),
        Err(e) => {
            eprintln!("skipping a Service proxy test: {e:#}");
            Ok(false)
        }
    }
}

/// One pod: its namespace, address and name (what its servers answer).
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub ns: String,
    /// Address on the bridge.
    pub ip: Ipv4Addr,
}

/// The node, its pods and the outside namespace; everything goes when dropped.
pub struct PodNet {
    /// The node namespace (run nft here).
    pub node: String,
    /// The outside namespace.
    pub outside: String,
    /// The pods, `pod0`, `pod1`, …
    pub pods: Vec<Pod>,
    stop: Arc<AtomicBool>,
    servers: Vec<(String, SocketAddr)>,
}

impl PodNet {
    /// A node with `pods` pods, each serving its name on TCP and UDP [`POD_PORT`] and a sink
    /// on [`SINK_PORT`].
    pub fn new(pods: usize) -> Result<Self> {
        let id = format!(
            "spx{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = PodNet {
            node: format!("{id}-node"),
            outside: format!("{id}-out"),
            pods: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        net.build(&id, pods)?;
        Ok(net)
    }

    fn build(&mut self, id: &str, pods: usize) -> Result<()> {
        let node = self.node.clone();
        run("ip", &["netns", "add", &node])?;
        run("ip", &["netns", "add", &self.outside])?;
        let n = |args: &[&str]| ns_exec(&node, "ip", args);
        n(&["link", "set", "lo", "up"])?;
        n(&["link", "add", "br0", "type", "bridge"])?;
        n(&["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"])?;
        n(&["link", "set", "br0", "up"])?;
        ns_exec(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        ns_exec(
            &node,
            "sysctl",
            &["-qw", "net.bridge.bridge-nf-call-iptables=1"],
        )?;
        n(&[
            "link",
            "add",
            "vout",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.outside,
        ])?;
        n(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "vout"])?;
        n(&["link", "set", "vout", "up"])?;
        n(&["route", "add", "default", "via", &OUTSIDE_IP.to_string()])?;
        let o = |args: &[&str]| ns_exec(&self.outside, "ip", args);
        o(&["link", "set", "lo", "up"])?;
        o(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"])?;
        o(&["link", "set", "eth0", "up"])?;
        for i in 0..pods {
            let pod = Pod {
                name: format!("pod{i}"),
                ns: format!("{id}-p{i}"),
                ip: Ipv4Addr::new(10, 244, 0, 10 + i as u8),
            };
            run("ip", &["netns", "add", &pod.ns])?;
            let veth = format!("vp{i}");
            n(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ])?;
            n(&["link", "set", &veth, "master", "br0", "up"])?;
            // As the CNI bridge plugin's `hairpinMode: true` (tests/src/containerd.rs): a pod
            // reaching itself through a Service is bridged back out of its own port.
            n(&[
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
            let p = |args: &[&str]| ns_exec(&pod.ns, "ip", args);
            p(&["link", "set", "lo", "up"])?;
            p(&["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"])?;
            p(&["link", "set", "eth0", "up"])?;
            p(&["route", "add", "default", "via", &GATEWAY.to_string()])?;
            self.serve(&pod)?;
            self.pods.push(pod);
        }
        Ok(())
    }

    /// Starts the pod's servers: TCP name, UDP name, TCP sink.
    fn serve(&mut self, pod: &Pod) -> Result<()> {
        let (tcp, udp, sink) = in_ns(&pod.ns, || -> std::io::Result<_> {
            Ok((
                TcpListener::bind(("0.0.0.0", POD_PORT))?,
                UdpSocket::bind(("0.0.0.0", POD_PORT))?,
                TcpListener::bind(("0.0.0.0", SINK_PORT))?,
            ))
        })??;
        let name = pod.name.clone();
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            for conn in tcp.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(format!("{name}\n").as_bytes());
                }
            }
        });
        let name = pod.name.clone();
        let stop = self.stop.clone();
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(name.as_bytes(), from);
                }
            }
        });
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            for conn in sink.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 18];
                        let mut total: u64 = 0;
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                        let _ = c.write_all(format!("{total}\n").as_bytes());
                    });
                }
            }
        });
        self.servers
            .push((pod.ns.clone(), SocketAddr::from((pod.ip, POD_PORT))));
        self.servers
            .push((pod.ns.clone(), SocketAddr::from((pod.ip, SINK_PORT))));
        Ok(())
    }

    /// `nft ARGS` in the node namespace.
    pub fn nft(&self, args: &[&str]) -> Result<String> {
        ns_exec(&self.node, "nft", args)
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so their threads end and release the namespaces.
        for (ns, addr) in &self.servers {
            let addr = *addr;
            let _ = in_ns(ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            });
        }
        for pod in &self.pods {
            let _ = run("ip", &["netns", "del", &pod.ns]);
        }
        let _ = run("ip", &["netns", "del", &self.outside]);
        let _ = run("ip", &["netns", "del", &self.node]);
    }
}

/// Connects from namespace `ns` to `addr` and reads the one line the server answers; the
/// error kind tells a refusal (`ConnectionRefused`) from a timeout.
pub fn tcp_name(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<std::io::Result<String>> {
    in_ns(ns, move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, timeout)?;
        c.set_read_timeout(Some(timeout))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s.trim().to_string())
    })
}

/// `count` TCP connections from `ns` to `addr`; the names that answered, in order.
pub fn tcp_names(ns: &str, addr: SocketAddr, count: usize) -> Result<Vec<String>> {
    in_ns(ns, move || -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connect to {addr}"))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            out.push(s.trim().to_string());
        }
        Ok(out)
    })?
}

/// A UDP socket made in `ns`, connected to `addr` (so an ICMP refusal shows on `recv`).
pub fn udp_socket(ns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let s = in_ns(ns, move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(addr)?;
        Ok(s)
    })??;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// One datagram out, the answer back (the answering pod's name).
pub fn udp_ask(sock: &UdpSocket) -> std::io::Result<String> {
    sock.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
