//! The overlay's direct path: pod packets to another node on a QUIC connection of their own
//! between the two nodes, when the nodes can reach each other ([`protocol::overlay`] has the
//! wire rules and why).
//!
//! How a direct connection comes about: the hub, relaying packets between this node and a
//! peer, sends both a [`PeerHint`] (the peer's node name, pod CIDR and the address the hub sees
//! its link come from) on a unidirectional stream of the link. Both nodes then dial each other
//! from the UDP socket of their own link, which is also the address the hub told the other, so
//! each one's first packets open its own NAT for the other's. Whichever handshakes succeed, the
//! connections are mTLS with the node certificates ([`super::peer_tls`]); packets to the
//! peer's pod CIDR then go on the newest one. Nothing waits for any of this: until a direct
//! connection is up, and whenever none is, packets go through the hub.
//!
//! How it ends: a direct connection sends keep-alives every [`KEEP_ALIVE`] and is dead after
//! [`IDLE_TIMEOUT`] without an answer (a path that broke), after which packets go back to the
//! relay, and the hub's next hint (it sends one every 30 s while it relays for a pair) starts
//! another try. A connection that carried no packet for [`UNUSED_AFTER`] is closed, so a node
//! holds connections only to the peers its pods talk to. While the cloud is unreachable the
//! direct connections carry on: traffic between nodes that reach each other needs no hub.

use super::peer_tls::{self, PeerTls};
use bytes::Bytes;
use protocol::overlay::{Cidr, PeerHint, RouteTable, MAX_HINT_FRAME};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Keep-alive interval of a direct connection: it holds NAT bindings open and finds a broken
/// path within [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A direct connection that hears nothing for this long is dead, and packets go back through
/// the hub: the longest a path that broke under a connection blackholes packets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// A direct connection that carried no packet for this long is closed.
pub const UNUSED_AFTER: Duration = Duration::from_secs(300);

/// A peer that dials this node is taken only if the hub named it within this long: the hub
/// hints both ends of a pair at once, and hints only nodes with a session, so a node it cut
/// off (revoked, or gone) cannot open new direct connections on an old hint.
const HINT_FRESH: Duration = Duration::from_secs(90);

/// After a dial failed, the next hint for that peer dials again only after this long.
const REDIAL_AFTER: Duration = Duration::from_secs(20);

/// How long a handshake with a peer may take.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// Handshakes of peers dialling this node at once; more are refused (a flood of handshakes
/// costs CPU, and only nodes of the cluster get through them).
const MAX_INCOMING_HANDSHAKES: usize = 16;

/// Peer packets queued for the overlay's loop; past it they are dropped (counted), as a full
/// device queue drops them.
const PACKET_QUEUE: usize = 4096;

/// The transport of direct connections: keep-alives and idle timeout as above, datagrams
/// only (no streams either way).
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("a few seconds is a valid timeout"),
    ));
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// What the tasks of the direct path tell the overlay's loop.
pub enum Event {
    /// The hub said where a peer is.
    Hint(PeerHint),
    /// A connection with `peer` is up (this node dialled it, or it dialled this node).
    Up {
        /// The peer's node name, from its certificate.
        peer: String,
        /// The connection.
        conn: quinn::Connection,
        /// Whether this node dialled it (else the peer dialled this node).
        dialled: bool,
    },
    /// Dialling `peer` failed.
    DialFailed {
        /// The peer.
        peer: String,
    },
    /// A connection with `peer` ended.
    Down {
        /// The peer.
        peer: String,
        /// Its [`quinn::Connection::stable_id`].
        id: usize,
    },
}

/// A packet from a peer: who sent it, and the packet.
pub type PeerPacket = (Arc<str>, Bytes);

/// What this node knows of one peer.
struct Peer {
    /// From the hub's hint.
    cidr: Option<Cidr>,
    /// When the hub last named the peer.
    hinted_at: Option<Instant>,
    /// Live connections, newest last (both ends may have dialled).
    conns: Vec<quinn::Connection>,
    dialing: bool,
    last_dial: Option<Instant>,
    last_used: Instant,
}

impl Peer {
    fn new(now: Instant) -> Self {
        Self {
            cidr: None,
            hinted_at: None,
            conns: Vec::new(),
            dialing: false,
            last_dial: None,
            last_used: now,
        }
    }
}

/// The direct path's state, owned by the overlay's loop.
pub struct Peers {
    node: String,
    tls: PeerTls,
    peers: HashMap<String, Peer>,
    /// The newest connection of each peer that has one, by pod CIDR.
    routes: RouteTable<quinn::Connection>,
    events: mpsc::Sender<Event>,
    packets: mpsc::Sender<PeerPacket>,
}

/// The receiving ends of what [`Peers`]' tasks send.
pub struct Inbox {
    /// Hints, connections up and down.
    pub events: mpsc::Receiver<Event>,
    /// Packets from peers.
    pub packets: mpsc::Receiver<PeerPacket>,
}

impl Peers {
    /// The direct path of `node`, with no peers yet.
    pub fn new(node: String, tls: PeerTls) -> (Self, Inbox) {
        let (events, events_rx) = mpsc::channel(256);
        let (packets, packets_rx) = mpsc::channel(PACKET_QUEUE);
        let peers = Self {
            node,
            tls,
            peers: HashMap::new(),
            routes: RouteTable::default(),
            events,
            packets,
        };
        (
            peers,
            Inbox {
                events: events_rx,
                packets: packets_rx,
            },
        )
    }

    /// The direct connection for a packet to `dst`, if one is up; marks it used.
    pub fn route(&mut self, dst: IpAddr) -> Option<&quinn::Connection> {
        let (peer, conn) = self.routes.lookup(dst)?;
        if let Some(p) = self.peers.get_mut(peer) {
            p.last_used = Instant::now();
        }
        Some(conn)
    }

    /// The pod CIDR the hub gave for `peer`: the only sources its packets may have.
    pub fn cidr_of(&mut self, peer: &str) -> Option<Cidr> {
        let p = self.peers.get_mut(peer)?;
        p.last_used = Instant::now();
        p.cidr
    }

    /// Serves peers dialling this node on the link's endpoint, until the returned task is
    /// aborted (the link moved to a new endpoint). Connections already up outlive it.
    pub fn serve(&self, endpoint: &quinn::Endpoint) -> tokio::task::JoinHandle<()> {
        endpoint.set_server_config(Some(self.tls.server.clone()));
        let (endpoint, events) = (endpoint.clone(), self.events.clone());
        tokio::spawn(async move {
            let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_INCOMING_HANDSHAKES));
            while let Some(incoming) = endpoint.accept().await {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    count_dial("incoming_refused");
                    incoming.refuse();
                    continue;
                };
                let events = events.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let conn =
                        match tokio::time::timeout(HANDSHAKE, async { incoming.accept()?.await })
                            .await
                        {
                            Ok(Ok(conn)) => conn,
                            Ok(Err(e)) => {
                                debug!(error = %e, "a peer's handshake failed");
                                count_dial("incoming_failed");
                                return;
                            }
                            Err(_) => {
                                count_dial("incoming_failed");
                                return;
                            }
                        };
                    match peer_tls::peer_of(&conn) {
                        Some(peer) => {
                            count_dial("incoming");
                            let _ = events
                                .send(Event::Up {
                                    peer,
                                    conn,
                                    dialled: false,
                                })
                                .await;
                        }
                        None => conn.close(1u32.into(), b"no node certificate"),
                    }
                });
            }
        })
    }

    /// Reads the hub's hints from `link` (each on a unidirectional stream of its own) until
    /// the connection ends.
    pub fn hints_from(&self, link: quinn::Connection) -> tokio::task::JoinHandle<()> {
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(mut stream) = link.accept_uni().await {
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    wire::frames::read_frame::<PeerHint>(&mut stream, MAX_HINT_FRAME),
                )
                .await;
                match read {
                    Ok(Ok(Some(hint))) => {
                        if events.send(Event::Hint(hint)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => warn!(error = %e, "an unreadable overlay hint from the hub"),
                    Err(_) => debug!("an overlay hint that did not arrive in time"),
                }
            }
        })
    }

    /// Acts on an event of the direct path's tasks. `endpoint`: the link's endpoint now, to
    /// dial from (none while the link is down: no new dials then).
    pub fn on_event(&mut self, event: Event, endpoint: Option<&quinn::Endpoint>) {
        match event {
            Event::Hint(hint) => self.on_hint(hint, endpoint),
            Event::Up {
                peer,
                conn,
                dialled,
            } => self.on_up(peer, conn, dialled),
            Event::DialFailed { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.dialing = false;
                }
            }
            Event::Down { peer, id } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.conns.retain(|c| c.stable_id() != id);
                    if p.conns.is_empty() {
                        info!(%peer, "direct overlay path to peer down; its packets go through the hub");
                    }
                }
                self.reroute(&peer);
            }
        }
    }

    fn on_hint(&mut self, hint: PeerHint, endpoint: Option<&quinn::Endpoint>) {
        if hint.node == self.node {
            return;
        }
        if hint.is_withdrawal() {
            self.withdraw(&hint.node);
            return;
        }
        let (cidr, address) = match (
            Cidr::parse(&hint.pod_cidr),
            hint.address.parse::<SocketAddr>(),
        ) {
            (Ok(c), Ok(a)) => (c, a),
            _ => {
                warn!(peer = %hint.node, cidr = %hint.pod_cidr, address = %hint.address,
                      "an overlay hint that does not parse; ignored");
                return;
            }
        };
        let now = Instant::now();
        let p = self
            .peers
            .entry(hint.node.clone())
            .or_insert_with(|| Peer::new(now));
        let moved = p.cidr != Some(cidr);
        p.cidr = Some(cidr);
        p.hinted_at = Some(now);
        p.last_used = now;
        if moved {
            self.reroute(&hint.node);
        }
        let Some(p) = self.peers.get_mut(&hint.node) else {
            return;
        };
        let recent = p
            .last_dial
            .is_some_and(|t| now.duration_since(t) < REDIAL_AFTER);
        let Some(endpoint) = endpoint else { return };
        if !p.conns.is_empty() || p.dialing || recent {
            return;
        }
        p.dialing = true;
        p.last_dial = Some(now);
        let (endpoint, client, events) = (
            endpoint.clone(),
            self.tls.client.clone(),
            self.events.clone(),
        );
        let peer = hint.node;
        debug!(%peer, %address, "dialling overlay peer");
        tokio::spawn(async move {
            let dialled = tokio::time::timeout(HANDSHAKE, async {
                endpoint
                    .connect_with(client, address, &peer)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err("no answer".into()));
            match dialled {
                Ok(conn) => {
                    count_dial("dialled");
                    let _ = events
                        .send(Event::Up {
                            peer,
                            conn,
                            dialled: true,
                        })
                        .await;
                }
                Err(e) => {
                    debug!(%peer, %address, error = %e, "cannot reach the overlay peer directly; its packets keep going through the hub");
                    count_dial("failed");
                    let _ = events.send(Event::DialFailed { peer }).await;
                }
            }
        });
    }

    fn on_up(&mut self, peer: String, conn: quinn::Connection, dialled: bool) {
        let fresh = self
            .peers
            .get(&peer)
            .and_then(|p| p.hinted_at)
            .is_some_and(|t| t.elapsed() < HINT_FRESH);
        if !dialled && !fresh {
            // Not named by the hub lately (or it dialled before this node's hint arrived:
            // then this node's own dial, on that hint, connects the two).
            debug!(%peer, "a peer the hub has not named lately dialled; refused");
            count_dial("incoming_unhinted");
            conn.close(2u32.into(), b"not named by the hub");
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.dialing = false;
        p.last_used = Instant::now();
        info!(%peer, address = %conn.remote_address(), "direct overlay path to peer up");
        p.conns.push(conn.clone());
        self.reroute(&peer);
        // Its packets, into the loop, until it ends.
        let (packets, events, name) = (
            self.packets.clone(),
            self.events.clone(),
            Arc::<str>::from(peer.as_str()),
        );
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                if packets.try_send((name.clone(), d)).is_err() {
                    metrics::counter!("skerry_edge_overlay_packets_total", "direction" => "in_direct", "result" => "queue_full")
                        .increment(1);
                }
            }
            let _ = events
                .send(Event::Down {
                    peer,
                    id: conn.stable_id(),
                })
                .await;
        });
    }

    /// Sets the peer's route to its newest live connection, or removes it.
    /// The hub withdrew `peer` (it was revoked): its direct connections are closed and it is
    /// forgotten, so a dial from it is refused until the hub names it again.
    fn withdraw(&mut self, peer: &str) {
        let Some(p) = self.peers.remove(peer) else {
            return;
        };
        for conn in &p.conns {
            conn.close(3u32.into(), b"withdrawn by the hub");
        }
        info!(%peer, closed = p.conns.len(), "the hub withdrew an overlay peer (revoked): its direct connections are closed");
        metrics::counter!("skerry_edge_overlay_peers_withdrawn_total").increment(1);
        self.reroute(peer);
    }

    fn reroute(&mut self, peer: &str) {
        self.routes.remove_if(peer, |_| true);
        if let Some(p) = self.peers.get(peer) {
            if let (Some(cidr), Some(conn)) = (p.cidr, p.conns.last()) {
                self.routes.insert(cidr, peer, conn.clone());
            }
        }
        metrics::gauge!("skerry_edge_overlay_direct_peers").set(self.routes.len() as f64);
    }

    /// Closes connections that carried nothing for [`UNUSED_AFTER`] and forgets peers with
    /// neither a connection nor a recent hint.
    pub fn prune(&mut self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        self.peers.retain(|name, p| {
            let unused = now.duration_since(p.last_used) >= UNUSED_AFTER;
            if unused {
                for c in p.conns.drain(..) {
                    c.close(0u32.into(), b"unused");
                }
                closed.push(name.clone());
            }
            !unused || p.dialing
        });
        for peer in closed {
            debug!(%peer, "closed an unused direct overlay path");
            self.reroute(&peer);
        }
    }
}

fn count_dial(result: &'static str) {
    metrics::counter!("skerry_edge_overlay_peer_connections_total", "result" => result)
        .increment(1);
}
