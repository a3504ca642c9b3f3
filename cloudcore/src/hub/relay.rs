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
//!
//! The relay is also where the direct path starts: a pair of v7 nodes whose packets the hub
//! relays is told, both ways, where the other is ([`PeerHint`]), at most once per pair every
//! [`HINT_EVERY`] while the hub keeps relaying for it. Two nodes that reach each other then
//! stop sending through the hub; two that cannot keep the relay, and are told again (so they
//! try again) only while they still use it.

use protocol::overlay::{Cidr, PeerHint, Refusal, RouteTable, DIRECT_SINCE_VERSION};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::debug;

/// How often a pair of nodes the hub relays for is told about each other.
pub(super) const HINT_EVERY: Duration = Duration::from_secs(30);

/// Pairs remembered at most; past it the oldest half is forgotten (they are told again when
/// they next talk, which costs two small streams).
const MAX_HINTED_PAIRS: usize = 65_536;

/// A node's link as the route table holds it: the session id (so that an ending session
/// removes only its own route), the connection and the session's protocol version.
#[derive(Clone)]
pub(super) struct Link {
    session: u64,
    conn: quinn::Connection,
    version: u32,
}

/// The routes of the connected nodes.
#[derive(Default)]
pub(super) struct Relay {
    routes: RwLock<RouteTable<Link>>,
    hints: Mutex<HintSchedule>,
}

/// When each pair of sessions was last told about each other. Keyed by session, not node: a
/// node that reconnects has a new address (a new UDP socket), which its peers must learn at
/// once; and checking costs the relay's hot path no allocation.
#[derive(Default)]
struct HintSchedule {
    told: HashMap<(u64, u64), Instant>,
}

impl HintSchedule {
    /// Whether the pair of sessions `a`, `b` (either order) is due a hint at `now`; if so it is
    /// marked told.
    fn due(&mut self, a: u64, b: u64, now: Instant) -> bool {
        let pair = (a.min(b), a.max(b));
        if let Some(at) = self.told.get(&pair) {
            if now.saturating_duration_since(*at) < HINT_EVERY {
                return false;
            }
        }
        if self.told.len() >= MAX_HINTED_PAIRS {
            let mut ages: Vec<Instant> = self.told.values().copied().collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.told.retain(|_, at| *at > cut);
        }
        self.told.insert(pair, now);
        true
    }
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
        version: u32,
    ) -> Registration<'_> {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(
            cidr,
            node,
            Link {
                session,
                conn,
                version,
            },
        );
        metrics::gauge!("skerry_hub_overlay_routes").set(routes.len() as f64);
        drop(routes);
        Registration {
            relay: self,
            node: node.to_string(),
            session,
        }
    }

    /// Tells every connected node that speaks the direct path that `node` was revoked, so that
    /// they close their direct connections to it ([`PeerHint::withdrawal`]): its certificate
    /// still passes their TLS, and only the hub knows it no longer counts.
    pub(super) fn withdraw(&self, node: &str) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let hints: Vec<Hint> = routes
            .iter()
            .filter(|(_, to, link)| *to != node && link.version >= DIRECT_SINCE_VERSION)
            .map(|(_, _, link)| (link.conn.clone(), PeerHint::withdrawal(node)))
            .collect();
        drop(routes);
        if !hints.is_empty() {
            tokio::spawn(send_hints(hints));
        }
    }

    /// Relays the datagrams `node` sends on `conn` until the connection ends.
    pub(super) async fn serve(&self, node: &str, conn: &quinn::Connection) {
        // When this sender last consulted the hint schedule for each target session: the
        // schedule (a lock and two route lookups) is asked at most once per pair every
        // HINT_EVERY from here, not for every relayed packet.
        let mut asked: HashMap<u64, Instant> = HashMap::new();
        while let Ok(packet) = conn.read_datagram().await {
            let len = packet.len() as u64;
            // The lock is held only to find the link; sending a datagram never waits.
            let target = {
                let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
                routes.relay(node, &packet).map(|(to, link)| {
                    let now = Instant::now();
                    let due = asked
                        .get(&link.session)
                        .is_none_or(|at| now.saturating_duration_since(*at) >= HINT_EVERY);
                    let hints = due
                        .then(|| {
                            if asked.len() >= MAX_HINTED_PAIRS {
                                asked.clear();
                            }
                            asked.insert(link.session, now);
                            self.hints_for(&routes, node, to, link)
                        })
                        .flatten();
                    (to.to_string(), link.conn.clone(), hints)
                })
            };
            let result = match target {
                Ok((to, out, hints)) => {
                    if let Some(hints) = hints {
                        tokio::spawn(send_hints(hints));
                    }
                    match out.send_datagram(packet) {
                        Ok(()) => {
                            metrics::counter!("skerry_hub_overlay_bytes_total").increment(len);
                            "relayed"
                        }
                        Err(quinn::SendDatagramError::TooLarge) => {
                            debug!(to = %to, len, "overlay packet larger than the target link takes");
                            "too_large"
                        }
                        Err(_) => "target_gone",
                    }
                }
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

/// One hint to deliver: the connection it goes on and what it says.
type Hint = (quinn::Connection, PeerHint);

impl Relay {
    /// The hints for the pair `from`, `to` if both speak the direct path and the pair is due.
    fn hints_for(
        &self,
        routes: &RouteTable<Link>,
        from: &str,
        to: &str,
        to_link: &Link,
    ) -> Option<[Hint; 2]> {
        if to_link.version < DIRECT_SINCE_VERSION {
            return None;
        }
        let (from_cidr, from_link) = routes
            .iter()
            .find(|(_, n, _)| *n == from)
            .map(|(c, _, l)| (*c, l))?;
        if from_link.version < DIRECT_SINCE_VERSION {
            return None;
        }
        let to_cidr = routes.cidr_of(to)?;
        let due = self.hints.lock().unwrap_or_else(|e| e.into_inner()).due(
            from_link.session,
            to_link.session,
            Instant::now(),
        );
        due.then(|| {
            let about = |node: &str, cidr: Cidr, link: &Link| PeerHint {
                node: node.to_string(),
                pod_cidr: cidr.to_string(),
                address: link.conn.remote_address().to_string(),
            };
            [
                (from_link.conn.clone(), about(to, to_cidr, to_link)),
                (to_link.conn.clone(), about(from, from_cidr, from_link)),
            ]
        })
    }
}

/// Delivers hints, each on a unidirectional stream of its own; one that cannot be delivered
/// within a few seconds is dropped (the next is due in [`HINT_EVERY`]; a withdrawal is not
/// repeated, and a node that missed it keeps the connection until it goes unused).
async fn send_hints(hints: impl IntoIterator<Item = Hint>) {
    for (conn, hint) in hints {
        let sent = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = conn.open_uni().await.ok()?;
            wire::frames::write_frame(&mut s, &hint).await.ok()?;
            s.finish().ok()
        })
        .await;
        let result = if matches!(sent, Ok(Some(()))) {
            "sent"
        } else {
            "failed"
        };
        debug!(peer = %hint.node, address = %hint.address, result, "overlay peer hint");
        metrics::counter!("skerry_hub_overlay_hints_total", "result" => result).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_told_once_per_period_in_either_order() {
        let mut s = HintSchedule::default();
        let t0 = Instant::now();
        assert!(s.due(1, 2, t0));
        assert!(!s.due(2, 1, t0 + Duration::from_secs(1)));
        assert!(s.due(1, 3, t0 + Duration::from_secs(1)));
        assert!(!s.due(1, 2, t0 + HINT_EVERY - Duration::from_millis(1)));
        assert!(s.due(1, 2, t0 + HINT_EVERY));
    }

    #[test]
    fn the_schedule_stays_bounded() {
        let mut s = HintSchedule::default();
        let t0 = Instant::now();
        for i in 0..(MAX_HINTED_PAIRS + 10) {
            assert!(s.due(0, i as u64 + 1, t0 + Duration::from_millis(i as u64)));
        }
        assert!(s.told.len() <= MAX_HINTED_PAIRS);
    }
}
