//! Who holds which of the hub's streams to nodes: the accounting behind the limits of
//! [`super::streams`], kept apart from the I/O so that its rules are tested on their own.
//!
//! Three limits, checked together when a stream is asked for:
//! - per node and kind ([`StreamKind::limit`]): what one edge serves at once;
//! - per user, over all nodes and kinds ([`MAX_STREAMS_PER_USER`]): what one credential can
//!   hold of the cloud's streams;
//! - per user on one node, half the node's slots of a kind ([`StreamKind::user_share`]): so
//!   one user (a script gone wrong, a stolen credential) can never take all of a node's log,
//!   exec or port-forward slots, and the admin always gets one to look at what happens.

use super::streams::StreamKind;
use std::collections::HashMap;

/// Streams one user holds at once, over all nodes and kinds; more get 429. `kubectl logs -l
/// ... -f` opens up to five at once by default, a browser through `kubectl port-forward` about
/// six per page: this leaves room for an operator's whole session.
pub const MAX_STREAMS_PER_USER: usize = 64;

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The node serves as many streams of the kind as it may.
    Node {
        /// The node's limit of the kind.
        limit: usize,
    },
    /// The user holds [`MAX_STREAMS_PER_USER`].
    User {
        /// The limit.
        limit: usize,
    },
    /// The user holds their share of the node's slots of the kind.
    UserOnNode {
        /// The share.
        limit: usize,
        /// The node's slots of the kind.
        of: usize,
    },
}

/// The counts; every [`Slots::take`] that succeeds is matched by one [`Slots::give`].
#[derive(Debug, Default)]
pub struct Slots {
    node: HashMap<(String, StreamKind), usize>,
    user: HashMap<String, usize>,
    user_on_node: HashMap<(String, String, StreamKind), usize>,
}

impl Slots {
    /// Takes a slot of `kind` on `node` for `user`, unless a limit is reached (then nothing
    /// changes).
    pub fn take(&mut self, node: &str, user: &str, kind: StreamKind) -> Result<(), Full> {
        let on_node = self
            .node
            .get(&(node.to_string(), kind))
            .copied()
            .unwrap_or(0);
        if on_node >= kind.limit() {
            return Err(Full::Node {
                limit: kind.limit(),
            });
        }
        let mine = self.user.get(user).copied().unwrap_or(0);
        if mine >= MAX_STREAMS_PER_USER {
            return Err(Full::User {
                limit: MAX_STREAMS_PER_USER,
            });
        }
        let key = (node.to_string(), user.to_string(), kind);
        let mine_here = self.user_on_node.get(&key).copied().unwrap_or(0);
        if mine_here >= kind.user_share() {
            return Err(Full::UserOnNode {
                limit: kind.user_share(),
                of: kind.limit(),
            });
        }
        *self.node.entry((node.to_string(), kind)).or_insert(0) += 1;
        *self.user.entry(user.to_string()).or_insert(0) += 1;
        *self.user_on_node.entry(key).or_insert(0) += 1;
        Ok(())
    }

    /// Gives back a slot [`Slots::take`] gave; entries that reach zero are removed, so the
    /// maps hold only what is open.
    pub fn give(&mut self, node: &str, user: &str, kind: StreamKind) {
        fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
            if let Some(n) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        dec(&mut self.node, (node.to_string(), kind));
        dec(&mut self.user, user.to_string());
        dec(
            &mut self.user_on_node,
            (node.to_string(), user.to_string(), kind),
        );
    }

    /// Open streams of `kind` on `node`.
    #[cfg(test)]
    fn on_node(&self, node: &str, kind: StreamKind) -> usize {
        self.node
            .get(&(node.to_string(), kind))
            .copied()
            .unwrap_or(0)
    }

    /// Whether nothing is held.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.node.is_empty() && self.user.is_empty() && self.user_on_node.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_user_gets_half_a_nodes_slots_and_another_user_the_rest() {
        let mut s = Slots::default();
        let (limit, share) = (StreamKind::Logs.limit(), StreamKind::Logs.user_share());
        for _ in 0..share {
            s.take("n1", "script", StreamKind::Logs).unwrap();
        }
        assert_eq!(
            s.take("n1", "script", StreamKind::Logs),
            Err(Full::UserOnNode {
                limit: share,
                of: limit
            })
        );
        // Other kinds, other nodes, other users are untouched by it.
        s.take("n1", "script", StreamKind::Exec).unwrap();
        s.take("n2", "script", StreamKind::Logs).unwrap();
        for _ in 0..limit - share {
            s.take("n1", "admin", StreamKind::Logs).unwrap();
        }
        assert_eq!(
            s.take("n1", "third", StreamKind::Logs),
            Err(Full::Node { limit })
        );
        s.give("n1", "script", StreamKind::Logs);
        s.take("n1", "third", StreamKind::Logs).unwrap();
    }

    #[test]
    fn a_user_holds_at_most_the_per_user_limit_over_all_nodes() {
        let mut s = Slots::default();
        let share = StreamKind::PortForward.user_share();
        let mut held = Vec::new();
        'fill: for n in 0.. {
            for _ in 0..share {
                if held.len() == MAX_STREAMS_PER_USER {
                    break 'fill;
                }
                s.take(&format!("n{n}"), "alice", StreamKind::PortForward)
                    .unwrap();
                held.push(format!("n{n}"));
            }
        }
        assert_eq!(
            s.take("elsewhere", "alice", StreamKind::Logs),
            Err(Full::User {
                limit: MAX_STREAMS_PER_USER
            })
        );
        s.take("elsewhere", "bob", StreamKind::Logs).unwrap();
        s.give(&held[0], "alice", StreamKind::PortForward);
        s.take("elsewhere", "alice", StreamKind::Logs).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take(u8, u8, u8),
        Give(usize),
    }

    fn kind(k: u8) -> StreamKind {
        [StreamKind::Logs, StreamKind::Exec, StreamKind::PortForward][k as usize % 3]
    }

    proptest! {
        /// Whatever the order of takes and gives: no limit is ever exceeded, a refused take
        /// changes nothing, and giving back everything leaves nothing held.
        #[test]
        fn limits_hold_and_everything_given_back_leaves_nothing(
            ops in proptest::collection::vec(
                prop_oneof![
                    (0u8..3, 0u8..3, 0u8..3).prop_map(|(n, u, k)| Op::Take(n, u, k)),
                    (0usize..200).prop_map(Op::Give),
                ],
                0..400,
            )
        ) {
            let mut s = Slots::default();
            let mut held: Vec<(String, String, StreamKind)> = Vec::new();
            for op in ops {
                match op {
                    Op::Take(n, u, k) => {
                        let (node, user, kind) = (format!("n{n}"), format!("u{u}"), kind(k));
                        let before = s.on_node(&node, kind);
                        match s.take(&node, &user, kind) {
                            Ok(()) => held.push((node, user, kind)),
                            Err(_) => prop_assert_eq!(s.on_node(&node, kind), before),
                        }
                    }
                    Op::Give(i) if !held.is_empty() => {
                        let (node, user, kind) = held.remove(i % held.len());
                        s.give(&node, &user, kind);
                    }
                    Op::Give(_) => {}
                }
                for k in 0..3 {
                    for n in 0..3 {
                        let node = format!("n{n}");
                        prop_assert!(s.on_node(&node, kind(k)) <= kind(k).limit());
                        for u in 0..3 {
                            let user = format!("u{u}");
                            let mine = held.iter().filter(|h| h.0 == node && h.1 == user && h.2 == kind(k)).count();
                            prop_assert!(mine <= kind(k).user_share());
                        }
                    }
                }
                for u in 0..3 {
                    let user = format!("u{u}");
                    prop_assert!(held.iter().filter(|h| h.1 == user).count() <= MAX_STREAMS_PER_USER);
                }
            }
            for (node, user, kind) in held.drain(..) {
                s.give(&node, &user, kind);
            }
            prop_assert!(s.is_empty());
        }
    }
}
