//! When the cloud last heard each node: the node lease, kept in memory by the hub.
//!
//! Kubernetes splits a node's liveness from its status: the kubelet renews a small Lease every
//! 10 s and sends the full NodeStatus only when it changes or every five minutes, and the node
//! lifecycle controller takes either as a sign of life. Skerry does the same with less: the
//! edge's QUIC link already carries a keep-alive that the NAT in front of most edges needs
//! anyway, and every datagram the hub receives on a node's authenticated connection proves the
//! node alive. So the hub records, per node, when it last received one (sampled from the
//! connection's counters about once a second), and the controller reads it here. No store write
//! per renewal, no extra bytes on the wire; what is lost with a cloudcore restart is exactly
//! what the controller's own observations lose (a node is seen afresh when its edge reconnects,
//! within about a second of the hub being back).
//!
//! The cost of keeping it in memory: it assumes the hub and the controller share a process, as
//! they do. A cloud with several hub replicas would write `coordination.k8s.io` Leases instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-node "last heard" times, in milliseconds since the epoch. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    heard: Arc<Mutex<HashMap<String, u64>>>,
}

impl Liveness {
    /// A registry that has heard no node yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // Times only move forward; a half-done update is at worst one sample old.
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `node` was heard at `at_ms` (an older time than recorded is ignored).
    pub fn heard(&self, node: &str, at_ms: u64) {
        let mut map = self.map();
        match map.get_mut(node) {
            Some(t) => *t = (*t).max(at_ms),
            None => {
                map.insert(node.to_string(), at_ms);
            }
        }
    }

    /// When `node` was last heard, if ever since this process started.
    pub fn last_heard(&self, node: &str) -> Option<u64> {
        self.map().get(node).copied()
    }

    /// Forgets a node that was deleted.
    pub fn forget(&self, node: &str) {
        self.map().remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_heard_only_moves_forward() {
        let l = Liveness::new();
        assert_eq!(l.last_heard("n1"), None);
        l.heard("n1", 2_000);
        l.heard("n1", 1_000);
        assert_eq!(l.last_heard("n1"), Some(2_000));
        l.heard("n1", 3_000);
        assert_eq!(l.last_heard("n1"), Some(3_000));
        l.forget("n1");
        assert_eq!(l.last_heard("n1"), None);
    }
}
