//! The node's side of the pod overlay: pods on other nodes reached by their pod IPs, through
//! the hub, as QUIC datagrams on the link this node already holds ([`protocol::overlay`] has
//! the wire rules and why).
//!
//! The device: a TUN ([`tun`]) holding the node's overlay address (the first address of its
//! pod CIDR, the gateway its bridge also holds) with a route for each cluster CIDR the cloud
//! sent; the node's own pod CIDR, more specific, stays on its bridge. So the kernel hands
//! edgecore exactly the packets for other nodes' pods, whether a pod sent them, the host, or
//! the Service proxy after it picked a remote endpoint.
//!
//! Out: a packet read from the device goes as one datagram, if its source is the node's own (a
//! pod, or the overlay address after masquerade, below): on a direct connection to the node
//! holding its destination if one is up ([`peers`]), else on the link, for the hub to relay;
//! with neither it is dropped: there is no path, and the pods' TCP retransmits once there is.
//! In: a datagram is written into the device only if [`protocol::overlay::admit`] says so
//! (the destination is one of this node's running pods or its overlay address), and one from a
//! direct connection only if its source is also that peer's
//! ([`protocol::overlay::admit_direct`]).
//!
//! Host traffic: a connection from the host to a cluster IP whose endpoint is remote leaves
//! with the host's own address as source, which is no pod's; one nftables rule masquerades what
//! leaves through the device with a source outside the node's pod CIDR to the overlay address,
//! so the reply finds its way back (kube-proxy masquerades off-cluster sources the same way).
//! Pods' traffic into the device keeps the pod's address: a null source mapping that runs
//! before the CNI bridge's `ipMasq` takes it out of that masquerade (see [`nat_rules`]).

pub mod peer_tls;
pub mod peers;
pub mod tun;

use super::view::{ServiceView, ViewReceiver};
use crate::identity::IdentityPaths;
use crate::link::Current;
use crate::network::proxy::apply::Tools;
use protocol::overlay::{self as wire, Cidr};
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// The device's MTU: what a QUIC datagram carries on any path. QUIC guarantees 1,200-byte UDP
/// payloads; a 1-RTT packet spends up to about 40 bytes on its header (connection id, packet
/// number), the DATAGRAM frame and the AEAD tag, so 1,140 fits every link whatever its path
/// MTU, and the hub never drops a relayed packet for size. Pods' TCP finds it through path MTU
/// discovery (the node's kernel answers with ICMP "fragmentation needed").
pub const MTU: u16 = 1140;

/// Settings of the overlay.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// The TUN device's name.
    pub interface: String,
    /// The nftables table holding the masquerade rule (outlives edgecore like the proxy's).
    pub table: String,
    /// How nft runs (and in which namespace, for tests of the proxy's tools).
    pub tools: Tools,
    /// The direct path to peers ([`peers`]); `None`: every packet goes through the hub.
    pub direct: Option<DirectConfig>,
}

/// Settings of the direct path.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// This node's name (a hint naming it is ignored).
    pub node: String,
    /// The node's identity, for mTLS with peers.
    pub identity: IdentityPaths,
}

/// What the overlay acts on, from the view.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    own: Cidr,
    cluster: Vec<Cidr>,
}

impl Settings {
    fn of(view: &ServiceView) -> Option<Self> {
        let overlay = view.overlay.as_ref()?;
        let own = view.network.as_ref()?.pod_cidr.as_deref()?;
        let own = match Cidr::parse(own) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "the node's pod CIDR does not parse: no overlay");
                return None;
            }
        };
        let cluster = overlay
            .cluster_cidrs
            .iter()
            .filter_map(|c| match Cidr::parse(c) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %e, "skipping an overlay route that does not parse");
                    None
                }
            })
            .collect();
        Some(Self { own, cluster })
    }
}

/// The addresses packets from the overlay may be for: the node's running pods and its own
/// overlay address.
fn hosted(view: &ServiceView, settings: &Settings) -> HashSet<IpAddr> {
    view.local_ips
        .values()
        .copied()
        .chain(std::iter::once(settings.own.first_host()))
        .collect()
}

/// Runs the overlay for as long as edgecore runs: waits for the cloud's routes, sets the device
/// up, then carries packets. A host that cannot have a TUN device (not root, no
/// `/dev/net/tun`) is reported and retried, never fatal: the rest of the node works without.
pub async fn run(
    cfg: OverlayConfig,
    mut view: ViewReceiver,
    mut link: watch::Receiver<Option<Current>>,
) -> anyhow::Result<()> {
    metrics::gauge!("skerry_edge_overlay_up").set(0.0);
    let mut reported = false;
    let (device, mut settings) = loop {
        let wanted = Settings::of(&view.borrow_and_update());
        if let Some(settings) = wanted {
            match setup(&cfg, &settings).await {
                Ok(device) => break (device, settings),
                Err(e) if !reported => {
                    error!(error = %e, interface = %cfg.interface,
                           "OVERLAY UNAVAILABLE: pods on other nodes are not reachable by pod IP from this node; retrying every minute");
                    reported = true;
                }
                Err(e) => debug!(error = %e, "overlay setup failed again"),
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    };
    info!(interface = %device.name(), pod_cidr = %settings.own,
          routes = ?settings.cluster.iter().map(ToString::to_string).collect::<Vec<_>>(),
          "overlay up");
    metrics::gauge!("skerry_edge_overlay_up").set(1.0);
    let mut hosts = hosted(&view.borrow(), &settings);
    let (mut peers, inbox) = match &cfg.direct {
        None => (None, None),
        Some(d) => match peer_tls::PeerTls::load(&d.identity, peers::transport()) {
            Ok(tls) => {
                let (p, i) = peers::Peers::new(d.node.clone(), tls);
                (Some(p), Some(i))
            }
            Err(e) => {
                warn!(error = %e, "no direct overlay path (every packet goes through the hub)");
                (None, None)
            }
        },
    };
    let (mut events, mut packets) = match inbox {
        Some(i) => (Some(i.events), Some(i.packets)),
        None => (None, None),
    };
    // The link's connection now, and the direct path's tasks on it (serving peers on its
    // endpoint, reading the hub's hints), which end with it.
    let mut current: Option<Current> = None;
    let mut tasks = LinkTasks::default();
    let mut link_changed = true;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut prune = tokio::time::interval(Duration::from_secs(30));
    loop {
        if link_changed {
            link_changed = false;
            current = link.borrow_and_update().clone();
            tasks.replace(peers.as_ref(), current.as_ref());
        }
        let hub = current.as_ref().map(|c| &c.conn);
        tokio::select! {
            read = device.recv(&mut buf) => {
                let n = read?;
                outbound(&buf[..n], &settings, peers.as_mut(), hub);
            }
            datagram = async {
                match hub {
                    Some(c) => c.read_datagram().await.ok(),
                    None => std::future::pending().await,
                }
            } => match datagram {
                // The hub asking for an acknowledgement while a stream is open: QUIC has given it.
                Some(d) if protocol::overlay::is_link_probe(&d) => {}
                Some(d) => inbound(&d, None, &settings, &hosts, &device).await,
                // The connection ended: nothing to read until the link has the next one.
                None => {
                    current = None;
                    tasks.replace(peers.as_ref(), None);
                }
            },
            event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => if let (Some(e), Some(p)) = (event, peers.as_mut()) {
                p.on_event(e, current.as_ref().map(|c| &c.endpoint));
            },
            packet = async {
                match packets.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => if let (Some((peer, d)), Some(p)) = (packet, peers.as_mut()) {
                let cidr = p.cidr_of(&peer);
                inbound(&d, Some(cidr.as_ref()), &settings, &hosts, &device).await;
            },
            _ = prune.tick() => if let Some(p) = peers.as_mut() { p.prune() },
            changed = link.changed() => {
                if changed.is_err() { return Ok(()) }
                link_changed = true;
            }
            changed = view.changed() => {
                if changed.is_err() { return Ok(()) }
                let v = view.borrow_and_update().clone();
                if let Some(next) = Settings::of(&v) {
                    if next != settings {
                        if let Err(e) = configure(&cfg, device.name(), &next, Some(&settings)).await {
                            error!(error = %e, "cannot re-route the overlay; keeping the old routes");
                        } else {
                            info!(pod_cidr = %next.own, "overlay routes changed");
                            settings = next;
                        }
                    }
                }
                hosts = hosted(&v, &settings);
            }
        }
    }
}

/// The direct path's tasks on one link connection: they end when the link moves on.
#[derive(Default)]
struct LinkTasks {
    serving: Option<(quinn::Endpoint, tokio::task::JoinHandle<()>)>,
    hints: Option<tokio::task::JoinHandle<()>>,
}

impl LinkTasks {
    /// Stops the tasks of the previous connection and starts them on `next`'s. The previous
    /// endpoint stops taking peers' handshakes; connections already up on it carry on.
    fn replace(&mut self, peers: Option<&peers::Peers>, next: Option<&Current>) {
        if let Some((endpoint, task)) = self.serving.take() {
            task.abort();
            endpoint.set_server_config(None);
        }
        if let Some(task) = self.hints.take() {
            task.abort();
        }
        if let (Some(p), Some(c)) = (peers, next) {
            self.serving = Some((c.endpoint.clone(), p.serve(&c.endpoint)));
            self.hints = Some(p.hints_from(c.conn.clone()));
        }
    }
}

impl Drop for LinkTasks {
    fn drop(&mut self) {
        self.replace(None, None);
    }
}

fn count(direction: &'static str, result: &'static str) {
    metrics::counter!("skerry_edge_overlay_packets_total", "direction" => direction, "result" => result)
        .increment(1);
}

fn outbound(
    packet: &[u8],
    settings: &Settings,
    peers: Option<&mut peers::Peers>,
    conn: Option<&quinn::Connection>,
) {
    let result = match wire::addresses(packet) {
        Err(_) => "malformed",
        Ok(a) if !settings.own.contains(a.src) => "foreign_source",
        Ok(a) => match peers
            .and_then(|p| p.route(a.dst))
            .map(|direct| direct.send_datagram(bytes::Bytes::copy_from_slice(packet)))
        {
            // Straight to the peer; on a direct connection that just failed, through the hub.
            Some(Ok(())) => {
                metrics::counter!("skerry_edge_overlay_bytes_total", "direction" => "out_direct")
                    .increment(packet.len() as u64);
                "direct"
            }
            Some(Err(_)) | None => relay(packet, conn),
        },
    };
    count("out", result);
}

/// Sends a packet on the link, for the hub to relay.
fn relay(packet: &[u8], conn: Option<&quinn::Connection>) -> &'static str {
    let Some(c) = conn else { return "no_link" };
    match c.send_datagram(bytes::Bytes::copy_from_slice(packet)) {
        Ok(()) => {
            metrics::counter!("skerry_edge_overlay_bytes_total", "direction" => "out")
                .increment(packet.len() as u64);
            "sent"
        }
        Err(quinn::SendDatagramError::TooLarge) => "too_large",
        Err(_) => "no_link",
    }
}

/// Writes a packet from the overlay into the device if it is admitted: `direct` is `None` for
/// a packet the hub relayed, else the pod CIDR of the peer it came from (if known).
async fn inbound(
    packet: &[u8],
    direct: Option<Option<&Cidr>>,
    settings: &Settings,
    hosts: &HashSet<IpAddr>,
    device: &tun::Tun,
) {
    let hosted = |ip| hosts.contains(&ip);
    let admitted = match direct {
        None => wire::admit(packet, &settings.cluster, hosted),
        Some(peer) => wire::admit_direct(packet, peer, &settings.cluster, hosted),
    };
    let direction = if direct.is_some() { "in_direct" } else { "in" };
    let result = match admitted {
        Err(refused) => {
            debug!(%refused, "overlay packet refused");
            match refused {
                wire::Inadmissible::Malformed(_) => "malformed",
                wire::Inadmissible::NotHosted(_) => "not_hosted",
                wire::Inadmissible::Foreign(_) => "foreign_source",
                wire::Inadmissible::NotThePeers(_) => "not_the_peers",
            }
        }
        Ok(_) => match device.send(packet).await {
            Ok(()) => {
                metrics::counter!("skerry_edge_overlay_bytes_total", "direction" => direction)
                    .increment(packet.len() as u64);
                "delivered"
            }
            Err(_) => "device_error",
        },
    };
    count(direction, result);
}

/// Opens the device and gives it its address, routes and masquerade rule.
async fn setup(cfg: &OverlayConfig, settings: &Settings) -> anyhow::Result<tun::Tun> {
    let device = tun::Tun::open(&cfg.interface)
        .map_err(|e| anyhow::anyhow!("cannot open TUN device {}: {e}", cfg.interface))?;
    configure(cfg, device.name(), settings, None).await?;
    Ok(device)
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run ip: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Sets the device's MTU, address and routes for `next` (removing what `previous` had that
/// `next` has not), and the masquerade rule. Forwarding is switched on: the node routes
/// between its bridge and the device.
async fn configure(
    cfg: &OverlayConfig,
    dev: &str,
    next: &Settings,
    previous: Option<&Settings>,
) -> anyhow::Result<()> {
    let mtu = MTU.to_string();
    ip(&["link", "set", "dev", dev, "mtu", &mtu, "up"]).await?;
    let address = format!("{}/32", next.own.first_host());
    if let Some(prev) = previous.filter(|p| p.own != next.own) {
        let old = format!("{}/32", prev.own.first_host());
        let _ = ip(&["addr", "del", &old, "dev", dev]).await;
    }
    ip(&["addr", "replace", &address, "dev", dev]).await?;
    for route in previous.map(|p| p.cluster.as_slice()).unwrap_or_default() {
        if !next.cluster.contains(route) {
            let _ = ip(&["route", "del", &route.to_string(), "dev", dev]).await;
        }
    }
    let src = next.own.first_host().to_string();
    for route in &next.cluster {
        ip(&[
            "route",
            "replace",
            &route.to_string(),
            "dev",
            dev,
            "src",
            &src,
        ])
        .await?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| anyhow::anyhow!("cannot switch on IPv4 forwarding: {e}"))?;
    let rules = nat_rules(&cfg.table, dev, next);
    cfg.tools
        .nft_apply(&cfg.table, &rules)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The overlay's nftables table, whole (applied in one transaction).
///
/// `keep-pod-source` runs before every other source NAT (the CNI bridge's `ipMasq` among them,
/// at `srcnat`): a pod's packet for another node's pod gets a null mapping to its own address,
/// and netfilter runs no later NAT chain for a connection already mapped. So the pod on the
/// other node sees the real pod IP, as Kubernetes' network model asks (no NAT between pods),
/// while traffic from pods to the world still goes through the bridge's masquerade.
/// `host-source` gives host traffic into the device the overlay address, so its reply comes
/// back through the overlay.
fn nat_rules(table: &str, dev: &str, s: &Settings) -> String {
    let cluster = s
        .cluster
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {table}\nflush table ip {table}\ntable ip {table} {{\n\
         \x20 chain keep-pod-source {{\n\
         \x20   type nat hook postrouting priority srcnat - 10; policy accept;\n\
         \x20   oifname \"{dev}\" ip saddr {own} ip daddr {{ {cluster} }} snat to ip saddr\n\
         \x20 }}\n\
         \x20 chain host-source {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"{dev}\" ip saddr != {own} masquerade\n\
         \x20 }}\n}}\n",
        own = s.own,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::overlay::OverlayNetwork;
    use protocol::service::ClusterNetwork;

    fn view(pod_cidr: Option<&str>, overlay: bool) -> ServiceView {
        ServiceView {
            network: Some(ClusterNetwork {
                node: "n".into(),
                pod_cidr: pod_cidr.map(str::to_string),
                service_cidr: "10.96.0.0/12".into(),
                cluster_dns: "10.96.0.10".parse().unwrap(),
                cluster_domain: "cluster.local".into(),
            }),
            overlay: overlay.then(|| OverlayNetwork {
                node: "n".into(),
                cluster_cidrs: vec!["10.244.0.0/16".into(), "not a cidr".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_overlay_waits_for_both_its_routes_and_a_pod_cidr() {
        assert_eq!(Settings::of(&view(None, true)), None);
        assert_eq!(Settings::of(&view(Some("10.244.1.0/24"), false)), None);
        assert_eq!(Settings::of(&view(Some("garbage"), true)), None);
        let s = Settings::of(&view(Some("10.244.1.0/24"), true)).unwrap();
        assert_eq!(s.own.to_string(), "10.244.1.0/24");
        assert_eq!(
            s.cluster
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.0.0/16"],
            "a route that does not parse is skipped, not fatal"
        );
    }

    #[test]
    fn pods_keep_their_source_and_the_host_is_masqueraded() {
        let s = Settings::of(&view(Some("10.244.1.0/24"), true)).unwrap();
        let rules = nat_rules("skerry-overlay", "ovl0", &s);
        assert!(rules.starts_with("table ip skerry-overlay\nflush table ip skerry-overlay\n"));
        assert!(rules.contains(
            "priority srcnat - 10; policy accept;\n    oifname \"ovl0\" ip saddr 10.244.1.0/24 ip daddr { 10.244.0.0/16 } snat to ip saddr"
        ), "{rules}");
        assert!(
            rules.contains("oifname \"ovl0\" ip saddr != 10.244.1.0/24 masquerade"),
            "{rules}"
        );
    }

    #[test]
    fn the_node_hosts_its_pods_and_its_overlay_address() {
        let mut v = view(Some("10.244.1.0/24"), true);
        v.local_ips.insert(
            ("default".into(), "web".into()),
            "10.244.1.7".parse().unwrap(),
        );
        let s = Settings::of(&v).unwrap();
        let h = hosted(&v, &s);
        assert!(h.contains(&"10.244.1.7".parse().unwrap()));
        assert!(h.contains(&"10.244.1.1".parse().unwrap()));
        assert_eq!(h.len(), 2);
    }
}
