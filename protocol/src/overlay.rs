//! The pod overlay: IP packets between the pod networks of different nodes, carried as QUIC
//! datagrams (RFC 9221) on the mTLS connections the nodes already hold with the hub.
//!
//! Why datagrams on the existing link: a node behind NAT needs no inbound port and no second
//! tunnel to keep alive (its keep-alives already hold the binding), the node's identity is its
//! certificate, and a datagram is never retransmitted by QUIC, so TCP between pods keeps its own
//! congestion control instead of running TCP inside a reliable stream (the meltdown of TCP over
//! TCP). A datagram is one IP packet exactly as the node's TUN device read it: no header of
//! ours, so every byte of the path MTU is the packet's. (Should another kind of datagram ever
//! be needed, its first nibble must be neither 4 nor 6.) One other kind exists: the empty
//! datagram is the hub's liveness probe ([`is_link_probe`]).
//!
//! What is checked, and where (all of it here, as pure functions, so both daemons apply the
//! same rules):
//! - the hub relays a packet only if its source lies in the sending node's own pod CIDR (a
//!   node cannot speak for another node's pods) and its destination in another node's; see
//!   [`RouteTable::relay`];
//! - the receiving node writes a packet into its pod network only if its destination is an
//!   address it really hosts, and its source lies in the cluster's pod CIDRs; see
//!   [`admit`];
//! - a packet that came straight from another node (the direct path, below) must also come
//!   from that node's own pod CIDR, since no hub checked it; see [`admit_direct`].
//!
//! The direct path (protocol v7): two nodes that can reach each other need not pay the hub's
//! hop. When the hub relays packets between two nodes it tells both where the other is
//! ([`PeerHint`], the address it sees the other's link come from, which is the other's NAT
//! mapping if it has one), and each dials the other on the UDP socket of its own link (so
//! both send first, which opens a path through most NATs). The peer connection is mTLS with
//! the node certificates, each end checking that the other's certificate names the node the
//! hub said ([`ALPN_PEER`](crate::ALPN_PEER)); pod packets then go as datagrams on it, exactly
//! as on the link. Whenever no direct connection is up, packets go through the hub as before.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a datagram on a node's link is the hub's liveness probe rather than a packet: the
/// empty datagram, which is no IP packet. While streams to a node are open and its link is
/// quiet, the hub sends one to make the edge's QUIC stack acknowledge something (a datagram is
/// ack-eliciting, and quinn exposes no bare PING), so that a link cut by the network is seen
/// in seconds instead of at the idle timeout. The edge reads and drops it; an edge that
/// predates it counts it as a malformed packet and drops it too.
pub fn is_link_probe(datagram: &[u8]) -> bool {
    datagram.is_empty()
}

/// What the hub sends a node (protocol v6) when the overlay is on: where the other nodes'
/// pods are, as far as the node needs to route.
///
/// Kept apart from [`crate::service::ClusterNetwork`] so a v5 node reads its settings in the
/// shape it knows; a v5 node gets no overlay (it cannot read the datagrams' routes anyway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayNetwork {
    /// The node these settings are for.
    pub node: String,
    /// The CIDRs every node's pod CIDR is carved from (cloudcore's `--cluster-cidr`): the node
    /// routes them into its overlay device, while its own pod CIDR, more specific, stays on
    /// its bridge.
    pub cluster_cidrs: Vec<String>,
}

/// The protocol version whose edges take [`PeerHint`]s and dial their peers.
pub const DIRECT_SINCE_VERSION: u32 = 7;

/// The hub's word that `node`, which holds `pod_cidr`, can be dialled at `address`: sent
/// (protocol v7) on a unidirectional stream of its own, one hint per stream, to both nodes
/// of a pair whose packets the hub relays, at most once per pair every so often while it
/// keeps relaying for them. A hint is advice, never needed: a node that cannot dial the peer
/// (or gets no hints) keeps using the relay.
///
/// A hint with an empty address is a withdrawal ([`PeerHint::withdrawal`]): the hub revoked the
/// peer, and every node closes its direct connections to it and takes none from it until the
/// hub names it again (a revoked node's certificate is still signed by the CA, so only the hub
/// can say it no longer counts). The shape is v7's, so no version is needed: a v7 edge reads it
/// as a hint that does not parse and ignores it, keeping such a connection until it goes
/// unused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    /// The peer's node name: the common name its certificate must carry.
    pub node: String,
    /// The peer's pod CIDR: the only sources its packets may have.
    pub pod_cidr: String,
    /// The UDP address the hub sees the peer's link come from.
    pub address: String,
}

impl PeerHint {
    /// The withdrawal of `node`.
    pub fn withdrawal(node: &str) -> Self {
        Self {
            node: node.to_string(),
            pod_cidr: String::new(),
            address: String::new(),
        }
    }

    /// Whether this hint withdraws its node rather than naming it.
    pub fn is_withdrawal(&self) -> bool {
        self.address.is_empty()
    }
}

/// Largest [`PeerHint`] frame a node reads.
pub const MAX_HINT_FRAME: usize = 1024;

/// A CIDR block: an address and a prefix length, parsed from `a.b.c.d/n` or `x::/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a CIDR block (a.b.c.d/n or x::/n with its host bits zero)")]
pub struct CidrError {
    given: String,
}

impl Cidr {
    /// Parses `text`, refusing host bits set (`10.0.0.1/8`), as `ip route` and Kubernetes do.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let err = || CidrError {
            given: text.to_string(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        let cidr = Self { addr, prefix };
        if cidr.network() != addr {
            return Err(err());
        }
        Ok(cidr)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }

    /// The first host address (`.1` of an IPv4 block): the gateway the node's bridge holds,
    /// which is also the node's own address on its overlay device.
    pub fn first_host(&self) -> IpAddr {
        match self.network() {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).saturating_add(1))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).saturating_add(1))),
        }
    }

    /// Whether `ip` lies in the block (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

/// The addresses of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
}

/// Why bytes are not one whole IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Nothing at all.
    #[error("empty datagram")]
    Empty,
    /// The first nibble is neither 4 nor 6.
    #[error("not an IP packet (version nibble {0})")]
    NotIp(u8),
    /// Shorter than its header says.
    #[error("truncated IP packet ({got} bytes, its header needs {need})")]
    Truncated {
        /// What the header asks for.
        need: usize,
        /// What arrived.
        got: usize,
    },
    /// An IPv4 header length under 20 bytes.
    #[error("IPv4 header length {0} is under 20 bytes")]
    BadHeaderLength(usize),
    /// The packet's own length field disagrees with the datagram's length: a datagram is
    /// exactly one packet, so this is corruption or a forgery.
    #[error("IP length field says {said} bytes, the datagram holds {got}")]
    LengthMismatch {
        /// The header's total length.
        said: usize,
        /// The datagram's length.
        got: usize,
    },
}

/// Reads the addresses of one whole IPv4 or IPv6 packet, checking its lengths.
pub fn addresses(packet: &[u8]) -> Result<Addresses, PacketError> {
    let first = *packet.first().ok_or(PacketError::Empty)?;
    match first >> 4 {
        4 => {
            need(packet, 20)?;
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 {
                return Err(PacketError::BadHeaderLength(ihl));
            }
            need(packet, ihl)?;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            if total != packet.len() {
                return Err(PacketError::LengthMismatch {
                    said: total,
                    got: packet.len(),
                });
            }
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            Ok(Addresses {
                src: src.into(),
                dst: dst.into(),
            })
        }
        6 => {
            need(packet, 40)?;
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if payload + 40 != packet.len() {
                return Err(PacketError::LengthMismatch {
                    said: payload + 40,
                    got: packet.len(),
                });
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&packet[8..24]);
            dst.copy_from_slice(&packet[24..40]);
            Ok(Addresses {
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
            })
        }
        v => Err(PacketError::NotIp(v)),
    }
}

fn need(packet: &[u8], n: usize) -> Result<(), PacketError> {
    match packet.len() < n {
        true => Err(PacketError::Truncated {
            need: n,
            got: packet.len(),
        }),
        false => Ok(()),
    }
}

/// Why the hub does not relay a packet (each counted by reason in its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not one whole IP packet.
    #[error("malformed: {0}")]
    Malformed(PacketError),
    /// The source is not in the sending node's pod CIDR (or the node has none).
    #[error("source {0} is not in the sending node's pod CIDR")]
    Spoofed(IpAddr),
    /// No connected node holds the destination.
    #[error("no connected node holds {0}")]
    NoRoute(IpAddr),
    /// The destination is the sender's own: it should never have left the node.
    #[error("{0} belongs to the sending node itself")]
    Loop(IpAddr),
}

/// The hub's routes: which connected node holds which pod CIDR. `N` is whatever names a
/// node's link (the hub keeps its connection there).
#[derive(Debug, Clone)]
pub struct RouteTable<N> {
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<(Cidr, String, N)>,
}

impl<N> Default for RouteTable<N> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<N> RouteTable<N> {
    /// Sets `node`'s route (a newer session of the node replaces the older one's).
    pub fn insert(&mut self, cidr: Cidr, node: &str, link: N) {
        self.routes.retain(|(_, n, _)| n != node);
        let at = self
            .routes
            .iter()
            .position(|(c, _, _)| c.prefix() < cidr.prefix())
            .unwrap_or(self.routes.len());
        self.routes.insert(at, (cidr, node.to_string(), link));
    }

    /// Removes `node`'s route if `matches` says it is still the one given (a session ending
    /// after its successor registered must not remove the successor's).
    pub fn remove_if(&mut self, node: &str, matches: impl Fn(&N) -> bool) {
        self.routes.retain(|(_, n, l)| n != node || !matches(l));
    }

    /// The node's pod CIDR, if it has a route.
    pub fn cidr_of(&self, node: &str) -> Option<Cidr> {
        self.routes
            .iter()
            .find(|(_, n, _)| n == node)
            .map(|(c, _, _)| *c)
    }

    /// How many nodes have routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no node has a route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The node holding `dst` (the most specific route), and its link.
    pub fn lookup(&self, dst: IpAddr) -> Option<(&str, &N)> {
        self.routes
            .iter()
            .find(|(c, _, _)| c.contains(dst))
            .map(|(_, n, l)| (n.as_str(), l))
    }

    /// Each node's route, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = (&Cidr, &str, &N)> {
        self.routes.iter().map(|(c, n, l)| (c, n.as_str(), l))
    }

    /// Where a packet from `sender` goes: the link of the node holding its destination, after
    /// checking that its source is the sender's own.
    pub fn relay(&self, sender: &str, packet: &[u8]) -> Result<(&str, &N), Refusal> {
        let a = addresses(packet).map_err(Refusal::Malformed)?;
        match self.cidr_of(sender) {
            Some(own) if own.contains(a.src) => {}
            _ => return Err(Refusal::Spoofed(a.src)),
        }
        let (node, link) = self.lookup(a.dst).ok_or(Refusal::NoRoute(a.dst))?;
        if node == sender {
            return Err(Refusal::Loop(a.dst));
        }
        Ok((node, link))
    }
}

/// Why a node does not write a packet from the overlay into its pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Inadmissible {
    /// Not one whole IP packet.
    #[error("malformed: {0}")]
    Malformed(PacketError),
    /// The destination is no address this node hosts.
    #[error("{0} is not hosted on this node")]
    NotHosted(IpAddr),
    /// The source is outside the cluster's pod CIDRs.
    #[error("source {0} is outside the cluster's pod CIDRs")]
    Foreign(IpAddr),
    /// A packet on a direct connection whose source is not the peer's own pod CIDR (or the
    /// peer's CIDR is not known).
    #[error("source {0} is not the sending peer's")]
    NotThePeers(IpAddr),
}

/// Whether a node takes a packet the hub relayed to it: its destination must be an address
/// the node really hosts (`hosted`: its pods' addresses and its own overlay address) and its
/// source inside the cluster's pod CIDRs. The hub checked the sender already; this is the
/// node's own guard, so a confused or compromised hub cannot inject into the node's network.
pub fn admit(
    packet: &[u8],
    cluster: &[Cidr],
    hosted: impl Fn(IpAddr) -> bool,
) -> Result<Addresses, Inadmissible> {
    let a = addresses(packet).map_err(Inadmissible::Malformed)?;
    if !cluster.iter().any(|c| c.contains(a.src)) {
        return Err(Inadmissible::Foreign(a.src));
    }
    if !hosted(a.dst) {
        return Err(Inadmissible::NotHosted(a.dst));
    }
    Ok(a)
}

/// Whether a node takes a packet that came straight from the peer holding `peer_cidr` (the
/// direct path): what [`admit`] checks, and first that the source is the peer's own, which
/// on the relayed path the hub checked. `None`: the node has no hint naming this peer's CIDR
/// yet, and takes nothing from it.
pub fn admit_direct(
    packet: &[u8],
    peer_cidr: Option<&Cidr>,
    cluster: &[Cidr],
    hosted: impl Fn(IpAddr) -> bool,
) -> Result<Addresses, Inadmissible> {
    let a = addresses(packet).map_err(Inadmissible::Malformed)?;
    if !peer_cidr.is_some_and(|c| c.contains(a.src)) {
        return Err(Inadmissible::NotThePeers(a.src));
    }
    admit(packet, cluster, hosted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal IPv4 packet from `src` to `dst` with `payload` bytes after the header.
    pub(crate) fn v4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn cidrs_parse_as_ip_route_does() {
        assert_eq!(cidr("10.244.1.0/24").to_string(), "10.244.1.0/24");
        assert_eq!(
            cidr("10.244.1.0/24").first_host(),
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(cidr("fd00::/64").contains("fd00::7".parse().unwrap()));
        assert!(!cidr("fd00::/64").contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.244.1.1/24", "10.0.0.0/33", "10.0.0.0", "x/8", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_of_whole_packets_and_refusals_of_the_rest() {
        let p = v4([10, 244, 1, 5], [10, 244, 2, 7], 12);
        let a = addresses(&p).unwrap();
        assert_eq!(a.src, "10.244.1.5".parse::<IpAddr>().unwrap());
        assert_eq!(a.dst, "10.244.2.7".parse::<IpAddr>().unwrap());
        let s: Ipv6Addr = "fd00::1".parse().unwrap();
        let d: Ipv6Addr = "fd00:1::2".parse().unwrap();
        let a = addresses(&v6(s, d, 3)).unwrap();
        assert_eq!((a.src, a.dst), (s.into(), d.into()));
        assert_eq!(addresses(&[]), Err(PacketError::Empty));
        assert_eq!(addresses(&[0x10; 30]), Err(PacketError::NotIp(1)));
        assert!(matches!(
            addresses(&p[..19]),
            Err(PacketError::Truncated { .. })
        ));
        let mut short_ihl = p.clone();
        short_ihl[0] = 0x44;
        assert_eq!(addresses(&short_ihl), Err(PacketError::BadHeaderLength(16)));
        let mut padded = p.clone();
        padded.push(0);
        assert!(matches!(
            addresses(&padded),
            Err(PacketError::LengthMismatch { .. })
        ));
    }

    fn table() -> RouteTable<u32> {
        let mut t = RouteTable::default();
        t.insert(cidr("10.244.1.0/24"), "a", 1);
        t.insert(cidr("10.244.2.0/24"), "b", 2);
        t
    }

    #[test]
    fn the_hub_relays_own_sources_to_the_node_holding_the_destination() {
        let t = table();
        let p = v4([10, 244, 1, 5], [10, 244, 2, 7], 0);
        assert_eq!(t.relay("a", &p), Ok(("b", &2)));
        let spoofed = v4([10, 244, 2, 9], [10, 244, 2, 7], 0);
        assert!(matches!(t.relay("a", &spoofed), Err(Refusal::Spoofed(_))));
        let nowhere = v4([10, 244, 1, 5], [10, 244, 9, 7], 0);
        assert!(matches!(t.relay("a", &nowhere), Err(Refusal::NoRoute(_))));
        let own = v4([10, 244, 1, 5], [10, 244, 1, 6], 0);
        assert!(matches!(t.relay("a", &own), Err(Refusal::Loop(_))));
        assert!(matches!(t.relay("c", &p), Err(Refusal::Spoofed(_))));
    }

    #[test]
    fn a_newer_session_replaces_the_route_and_an_old_one_ending_keeps_it() {
        let mut t = table();
        t.insert(cidr("10.244.2.0/24"), "b", 3);
        assert_eq!(t.len(), 2);
        t.remove_if("b", |l| *l == 2);
        assert_eq!(t.cidr_of("b"), Some(cidr("10.244.2.0/24")));
        t.remove_if("b", |l| *l == 3);
        assert_eq!(t.cidr_of("b"), None);
    }

    #[test]
    fn a_node_admits_only_cluster_sources_to_addresses_it_hosts() {
        let cluster = [cidr("10.244.0.0/16")];
        let hosted = |ip: IpAddr| ip == "10.244.2.7".parse::<IpAddr>().unwrap();
        let p = v4([10, 244, 1, 5], [10, 244, 2, 7], 4);
        assert!(admit(&p, &cluster, hosted).is_ok());
        let stranger = v4([10, 244, 1, 5], [10, 244, 2, 8], 4);
        assert!(matches!(
            admit(&stranger, &cluster, hosted),
            Err(Inadmissible::NotHosted(_))
        ));
        let outside = v4([192, 168, 0, 1], [10, 244, 2, 7], 4);
        assert!(matches!(
            admit(&outside, &cluster, hosted),
            Err(Inadmissible::Foreign(_))
        ));
    }

    proptest! {
        /// Whatever arrives, parsing answers and never panics; what it accepts is exactly
        /// one packet of the length it claims.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(a) = addresses(&bytes) {
                prop_assert!(matches!(bytes[0] >> 4, 4 | 6));
                prop_assert_eq!(a.src.is_ipv4(), bytes[0] >> 4 == 4);
            }
        }

        /// The hub forwards a packet only to a node whose CIDR holds its destination, and only
        /// from the node whose CIDR holds its source.
        #[test]
        fn relay_respects_both_ends(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sender in 0usize..3, len in 0usize..64,
        ) {
            let t = table();
            let names = ["a", "b", "c"];
            let p = v4(src, dst, len);
            if let Ok((to, _)) = t.relay(names[sender], &p) {
                let own = t.cidr_of(names[sender]).unwrap();
                prop_assert!(own.contains(IpAddr::from(src)));
                prop_assert!(t.cidr_of(to).unwrap().contains(IpAddr::from(dst)));
                prop_assert_ne!(to, names[sender]);
            }
        }

        /// Longest prefix wins whatever order routes were inserted in.
        #[test]
        fn most_specific_route_wins(order in any::<bool>()) {
            let mut t: RouteTable<u32> = RouteTable::default();
            let wide = (cidr("10.244.0.0/16"), "wide", 1);
            let narrow = (cidr("10.244.3.0/24"), "narrow", 2);
            let (x, y) = if order { (wide, narrow) } else { (narrow, wide) };
            t.insert(x.0, x.1, x.2);
            t.insert(y.0, y.1, y.2);
            t.insert(cidr("10.1.0.0/24"), "src", 3);
            let p = v4([10, 1, 0, 1], [10, 244, 3, 3], 0);
            prop_assert_eq!(t.relay("src", &p).unwrap().0, "narrow");
            let p = v4([10, 1, 0, 1], [10, 244, 4, 3], 0);
            prop_assert_eq!(t.relay("src", &p).unwrap().0, "wide");
        }

        /// A packet on a direct connection is taken only if its source is the peer's own, its
        /// destination hosted here and its source in the cluster, and never without a CIDR
        /// for the peer.
        #[test]
        fn direct_packets_come_from_the_peer_alone(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), known in any::<bool>(), len in 0usize..32,
        ) {
            let peer = cidr("10.244.2.0/24");
            let cluster = [cidr("10.244.0.0/16")];
            let hosted = |ip: IpAddr| cidr("10.244.1.0/24").contains(ip);
            let p = v4(src, dst, len);
            let got = admit_direct(&p, known.then_some(&peer), &cluster, hosted);
            if got.is_ok() {
                prop_assert!(known);
                prop_assert!(peer.contains(IpAddr::from(src)));
                prop_assert!(hosted(IpAddr::from(dst)));
            }
            if known && peer.contains(IpAddr::from(src)) {
                prop_assert_eq!(got.is_ok(), hosted(IpAddr::from(dst)));
            }
        }
    }

    #[test]
    fn lookup_finds_the_node_holding_an_address() {
        let t = table();
        assert_eq!(t.lookup("10.244.2.9".parse().unwrap()), Some(("b", &2)));
        assert!(t.lookup("192.0.2.1".parse().unwrap()).is_none());
        assert_eq!(t.iter().count(), t.len());
    }

    #[test]
    fn a_peer_hint_round_trips_and_fits_its_frame() {
        let hint = PeerHint {
            node: "n".repeat(253),
            pod_cidr: "fd00:1234:5678:9abc::/64".into(),
            address: "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535".into(),
        };
        let bytes = crate::codec::encode_frame(&hint).unwrap();
        assert!(bytes.len() <= MAX_HINT_FRAME, "{}", bytes.len());
        let back: PeerHint = crate::codec::decode(&bytes[crate::codec::HEADER_LEN..]).unwrap();
        assert_eq!(back, hint);
    }
}
