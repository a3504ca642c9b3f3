//! Pod CIDRs for nodes (kube-controller-manager's `--allocate-node-cidrs`): each node gets a
//! subnet of the cluster CIDR of its own, from which its CNI hands out pod addresses, so that a
//! pod address names one pod in the whole cluster (an EndpointSlice can then route to it, and
//! the overlay can route a subnet to its node).
//!
//! Allocation happens in the API, when a Node is written without one (the join registers it,
//! so a node has its CIDR before its first session), as Services get their cluster IPs: the
//! state of the pool is the stored Nodes themselves, scanned under one lock until the Node
//! carrying the new CIDR is written, so there is no bitmap to drift or repair after a crash.
//! A CIDR never changes once set (the update validation forbids it, as Kubernetes does); it is
//! freed when its Node is deleted. A full pool leaves the node without a CIDR and says so in
//! the log and a metric (Kubernetes' `CIDRNotAvailable`): its edge keeps the CNI configuration
//! it has, and nothing routes to its pods from other nodes.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The cluster CIDR and the size of each node's share (`10.244.0.0/16`, `/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCidrPool {
    network: u32,
    prefix: u8,
    node_prefix: u8,
}

/// A cluster CIDR or node mask that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster CIDR {value:?} with node mask /{node_prefix}: {reason}")]
pub struct NodeCidrError {
    /// What was given.
    pub value: String,
    /// The node mask given.
    pub node_prefix: u8,
    /// Why it does not work.
    pub reason: String,
}

impl NodeCidrPool {
    /// Kubernetes' usual defaults (kubeadm with flannel): `10.244.0.0/16` in `/24`s, 256 nodes
    /// of up to 254 pods.
    pub fn default_pool() -> Self {
        Self::new("10.244.0.0/16", 24).expect("static pool")
    }

    /// A pool of `cidr` cut in `/node_prefix` subnets.
    pub fn new(cidr: &str, node_prefix: u8) -> Result<Self, NodeCidrError> {
        let err = |reason: &str| NodeCidrError {
            value: cidr.to_string(),
            node_prefix,
            reason: reason.to_string(),
        };
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| err("expected an IPv4 CIDR such as 10.244.0.0/16"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| err("expected an IPv4 CIDR (IPv6 pod networks are not supported yet)"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix length must be a number"))?;
        if !(8..=28).contains(&prefix) {
            return Err(err("the prefix length must be between 8 and 28"));
        }
        if !(prefix..=28).contains(&node_prefix) || node_prefix - prefix > 20 {
            return Err(err(
                "the node mask must be at least the cluster prefix, at most /28, and cut the \
                 cluster CIDR in at most 2^20 subnets",
            ));
        }
        let network = u32::from(ip);
        let mask = u32::MAX << (32 - prefix);
        if network & !mask != 0 {
            return Err(err("host bits must be zero (give the network address)"));
        }
        Ok(Self {
            network,
            prefix,
            node_prefix,
        })
    }

    /// How many node subnets the pool holds.
    pub fn capacity(&self) -> u32 {
        1u32 << (self.node_prefix - self.prefix)
    }

    /// Subnet `i` as `a.b.c.d/n`.
    fn nth(&self, i: u32) -> String {
        let base = self.network + (i << (32 - self.node_prefix));
        format!("{}/{}", Ipv4Addr::from(base), self.node_prefix)
    }

    /// Whether `cidr` is one of this pool's node subnets.
    pub fn holds(&self, cidr: &str) -> bool {
        self.index_of(cidr).is_some()
    }

    fn index_of(&self, cidr: &str) -> Option<u32> {
        let (ip, prefix) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        if prefix.parse::<u8>().ok()? != self.node_prefix {
            return None;
        }
        let ip = u32::from(ip);
        let mask = u32::MAX << (32 - self.prefix);
        let host_mask = !(u32::MAX << (32 - self.node_prefix));
        if ip & mask != self.network || ip & host_mask != 0 {
            return None;
        }
        Some((ip - self.network) >> (32 - self.node_prefix))
    }

    /// The lowest subnet none of `used` holds, or `None` when the pool is full.
    pub fn first_free<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let taken: HashSet<u32> = used.into_iter().filter_map(|c| self.index_of(c)).collect();
        (0..self.capacity())
            .find(|i| !taken.contains(i))
            .map(|i| self.nth(i))
    }
}

impl fmt::Display for NodeCidrPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} in /{}s",
            Ipv4Addr::from(self.network),
            self.prefix,
            self.node_prefix
        )
    }
}

impl FromStr for NodeCidrPool {
    type Err = NodeCidrError;

    /// `CIDR` (node mask /24) or `CIDR@MASK` (`10.244.0.0/16@24`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('@') {
            Some((cidr, mask)) => Self::new(
                cidr,
                mask.trim_start_matches('/')
                    .parse()
                    .map_err(|_| NodeCidrError {
                        value: s.to_string(),
                        node_prefix: 0,
                        reason: "the node mask after @ must be a number".into(),
                    })?,
            ),
            None => Self::new(s, 24),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_handed_out_lowest_first_and_never_twice() {
        let pool = NodeCidrPool::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(pool.capacity(), 256);
        assert_eq!(pool.first_free([]).as_deref(), Some("10.244.0.0/24"));
        let used = ["10.244.0.0/24", "10.244.2.0/24", "192.168.0.0/24"];
        assert_eq!(pool.first_free(used).as_deref(), Some("10.244.1.0/24"));
        assert!(pool.holds("10.244.255.0/24"));
        assert!(!pool.holds("10.245.0.0/24") && !pool.holds("10.244.0.0/25"));
        assert!(!pool.holds("10.244.0.1/24"), "host bits set");
    }

    #[test]
    fn a_full_pool_has_nothing_free() {
        let pool = NodeCidrPool::new("10.1.0.0/23", 24).unwrap();
        assert_eq!(pool.first_free(["10.1.0.0/24", "10.1.1.0/24"]), None);
    }

    #[test]
    fn bad_pools_are_refused_with_a_reason() {
        assert!(NodeCidrPool::new("10.244.0.1/16", 24).is_err());
        assert!(NodeCidrPool::new("10.244.0.0/16", 8).is_err());
        assert!(NodeCidrPool::new("fd00::/48", 64).is_err());
        assert_eq!(
            "10.0.0.0/8@20".parse::<NodeCidrPool>().unwrap().capacity(),
            4096
        );
    }
}
