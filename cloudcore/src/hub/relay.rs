//! The hub's side of the pod overlay: pod packets arrive as QUIC datagrams on one node's link
//! and leave on the link of the node that holds their destination ([`protocol::overlay`] has
//! the rules and why datagrams).
//!
//! Why relay through the hub at all: every node can reach the hub (it dialled it), while two
//! edge nodes behind their own NATs usually cannot reach each other; the relay costs each
//! packet one more hop through a machine that already holds both mTLS connections, and no
//! node opens a port. What a relayed packet costs the hub is measured in BENCHMARKS.md.
//!
//! A node's route lives exactly as long as its session: it is set when a v6 session with a pod
//! CIDR starts (replacing an older session's) and removed when that session ends, so a packet
//! for a node that is away is dropped at once (`no_route`) rather than queued: the pods' own
//! TCP retransmits, as over any lossy network.

use protocol::overlay::{Cidr, Refusal, RouteTable};
use std::sync::RwLock;
use tracing::debug;

/// A node's link as the route table holds it: the session id (so that an ending session
/// removes only its own route) and the connection.
#[derive(Clone)]
pub(super) struct Link {
    session: u64,
    conn: quinn::Connection,
}

/// The routes of the connected nodes.
#[derive(Default)]
pub(super) struct Relay {
    routes: RwLock<RouteTable<Link>>,
}

/// Removes a session's route when the session ends, however it ends.
pub(super) struct Registration<'a> {
    relay: &'a Relay,
    node: String,
    session: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let session = self.session;
        let mut routes = self.relay.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.remove_if(&self.node, |l| l.session == session);
        metrics::gauge!("skerry_hub_overlay_routes").set(routes.len() as f64);
    }
}

impl Relay {
    /// Routes `cidr` to this session of `node` until the returned registration is dropped.
    pub(super) fn register(
        &self,
        node: &str,
        cidr: Cidr,
        session: u64,
        conn: quinn::Connection,
    ) -> Registration<'_> {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(cidr, node, Link { session, conn });
        metrics::gauge!("skerry_hub_overlay_routes").set(routes.len() as f64);
        drop(routes);
        Registration {
            relay: self,
            node: node.to_string(),
            session,
        }
    }

    /// Relays the datagrams `node` sends on `conn` until the connection ends.
    pub(super) async fn serve(&self, node: &str, conn: &quinn::Connection) {
        while let Ok(packet) = conn.read_datagram().await {
            let len = packet.len() as u64;
            // The lock is held only to find the link; sending a datagram never waits.
            let target = {
                let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
                routes
                    .relay(node, &packet)
                    .map(|(to, link)| (to.to_string(), link.conn.clone()))
            };
            let result = match target {
                Ok((to, out)) => match out.send_datagram(packet) {
                    Ok(()) => {
                        metrics::counter!("skerry_hub_overlay_bytes_total").increment(len);
                        "relayed"
                    }
                    Err(quinn::SendDatagramError::TooLarge) => {
                        debug!(to = %to, len, "overlay packet larger than the target link takes");
                        "too_large"
                    }
                    Err(_) => "target_gone",
                },
                Err(refusal) => {
                    debug!(%refusal, "overlay packet dropped");
                    match refusal {
                        Refusal::Malformed(_) => "malformed",
                        Refusal::Spoofed(_) => "spoofed",
                        Refusal::NoRoute(_) => "no_route",
                        Refusal::Loop(_) => "loop",
                    }
                }
            };
            metrics::counter!("skerry_hub_overlay_packets_total", "result" => result).increment(1);
        }
    }
}
