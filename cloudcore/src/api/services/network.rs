//! Where Services get their addresses: the service CIDR and the node port range, parsed and
//! checked once at start from cloudcore's flags, so that allocation works on typed, valid
//! pools and a bad flag is refused with a clear error before anything is served.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 service CIDR (`10.96.0.0/12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    pub(super) network: u32,
    pub(super) prefix: u8,
}

/// A service CIDR or node port range that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkConfigError {
    /// Not `a.b.c.d/n` with the host bits zero, or too large or small.
    #[error("invalid service CIDR {value:?}: {reason}")]
    Cidr {
        /// What was given.
        value: String,
        /// Why it does not work.
        reason: String,
    },
    /// Not `first-last` within 1-65535.
    #[error("invalid node port range {value:?}: {reason}")]
    NodePorts {
        /// What was given.
        value: String,
        /// Why it does not work.
        reason: String,
    },
}

impl ServiceCidr {
    /// Number of addresses in the range, network and broadcast included.
    pub(super) fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// Whether `ip` is an address Services may hold (in range, not network or broadcast).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip).wrapping_sub(self.network));
        (u32::from(ip) & self.mask()) == self.network && offset > 0 && offset < self.size() - 1
    }

    pub(super) fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The tenth address of the range, Kubernetes' usual cluster DNS address (`10.96.0.10`).
    pub fn tenth(&self) -> Ipv4Addr {
        self.nth(10)
    }

    pub(super) fn nth(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.network + offset as u32)
    }
}

impl fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl FromStr for ServiceCidr {
    type Err = NetworkConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NetworkConfigError::Cidr {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected an IPv4 CIDR such as 10.96.0.0/12"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| {
            err("expected an IPv4 CIDR such as 10.96.0.0/12 (IPv6 is not supported yet)")
        })?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix length must be a number"))?;
        if !(12..=30).contains(&prefix) {
            return Err(err(
                "the prefix length must be between 12 and 30 (at most 2^20 and at least 2 Service addresses)",
            ));
        }
        let cidr = ServiceCidr {
            network: u32::from(ip),
            prefix,
        };
        if cidr.network & !cidr.mask() != 0 {
            return Err(err("host bits must be zero (give the network address)"));
        }
        Ok(cidr)
    }
}

/// The node port range (`30000-32767`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePortRange {
    pub(super) first: u16,
    pub(super) last: u16,
}

impl NodePortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for NodePortRange {
    type Err = NetworkConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NetworkConfigError::NodePorts {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| err("expected FIRST-LAST, such as 30000-32767"))?;
        let (first, last): (u16, u16) = match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(err("ports must be numbers between 1 and 65535")),
        };
        if first == 0 || first > last {
            return Err(err("expected 1 <= FIRST <= LAST <= 65535"));
        }
        Ok(NodePortRange { first, last })
    }
}

/// Where Services get their addresses: one typed piece of cloudcore's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// Cluster IPs come from here.
    pub cidr: ServiceCidr,
    /// Node ports come from here.
    pub node_ports: NodePortRange,
    /// The cluster DNS address (`--cluster-dns`), a Service-CIDR address that no Service may
    /// hold: every edge owns it locally for its own DNS server (docs/networking.md, "Cluster
    /// DNS"), so a Service given it would be answered by that server, never by its endpoints.
    pub cluster_dns: Option<Ipv4Addr>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self {
            cidr: ServiceCidr {
                network: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
                prefix: 12,
            },
            node_ports: NodePortRange {
                first: 30000,
                last: 32767,
            },
            cluster_dns: Some(Ipv4Addr::new(10, 96, 0, 10)),
        }
    }
}
