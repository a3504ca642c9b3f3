//! Bounds on connection tracking, which every proxied connection holds an entry in.
//!
//! What the kernel gives: conntrack is one table per network namespace, bounded by
//! `nf_conntrack_max` (when it is full, new connections are dropped and the kernel logs
//! `nf_conntrack: table full, dropping packet`); each entry dies after an idle timeout per
//! protocol state. The defaults bound UDP well (30 s one way, 120 s both ways), but an
//! established TCP connection's entry lives **5 days** idle (`tcp_timeout_established` =
//! 432000 s), so clients that vanish without a FIN or RST (a pod killed behind NAT, a cut
//! link) keep their entries for days. kube-proxy therefore sets, at start: a table of at least
//! 32768 entries per core (131072 at least), 24 h for established TCP, 1 h for CLOSE_WAIT. The
//! proxy does the same, and only in the safe direction: it raises the table size and shortens
//! timeouts, never the other way, so an admin's tighter settings stay.
//!
//! The affinity sets (`ruleset`) have their own bound (`affinity_set_size`, with the Service's
//! timeout), and the nftables rules hold no per-connection state of their own.

use std::time::Duration;

/// The limits the proxy asks of conntrack (kube-proxy's defaults). A zero leaves that setting
/// alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackLimits {
    /// Table entries per CPU core (`--conntrack-max-per-core`).
    pub max_per_core: u64,
    /// Table entries at least (`--conntrack-min`).
    pub min: u64,
    /// Idle timeout of an established TCP connection.
    pub tcp_established: Duration,
    /// Idle timeout of a TCP connection in CLOSE_WAIT.
    pub tcp_close_wait: Duration,
}

impl Default for ConntrackLimits {
    fn default() -> Self {
        ConntrackLimits {
            max_per_core: 32_768,
            min: 131_072,
            tcp_established: Duration::from_secs(86_400),
            tcp_close_wait: Duration::from_secs(3_600),
        }
    }
}

/// The table size sysctl.
pub const MAX: &str = "net.netfilter.nf_conntrack_max";
/// The established TCP timeout sysctl (seconds).
pub const TCP_ESTABLISHED: &str = "net.netfilter.nf_conntrack_tcp_timeout_established";
/// The CLOSE_WAIT timeout sysctl (seconds).
pub const TCP_CLOSE_WAIT: &str = "net.netfilter.nf_conntrack_tcp_timeout_close_wait";

/// Which sysctls to write, given their current values (`None`: unreadable, left alone) and the
/// machine's cores: the table only grows, timeouts only shrink.
pub fn plan(
    limits: &ConntrackLimits,
    cores: u64,
    current: impl Fn(&str) -> Option<u64>,
) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    let max = limits
        .max_per_core
        .saturating_mul(cores.max(1))
        .max(limits.min);
    if limits.max_per_core > 0 || limits.min > 0 {
        if let Some(now) = current(MAX) {
            if now < max {
                out.push((MAX, max));
            }
        }
    }
    for (key, want) in [
        (TCP_ESTABLISHED, limits.tcp_established),
        (TCP_CLOSE_WAIT, limits.tcp_close_wait),
    ] {
        let want = want.as_secs();
        if want == 0 {
            continue;
        }
        if let Some(now) = current(key) {
            if now > want {
                out.push((key, want));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_only_grows_and_timeouts_only_shrink() {
        let defaults = ConntrackLimits::default();
        // Debian's defaults on 2 cores: 262144 entries (more than asked: kept), 5 days
        // established (shortened to 24 h), 60 s CLOSE_WAIT (shorter than 1 h: kept).
        let debian = |k: &str| match k {
            MAX => Some(262_144),
            TCP_ESTABLISHED => Some(432_000),
            TCP_CLOSE_WAIT => Some(60),
            _ => None,
        };
        assert_eq!(plan(&defaults, 2, debian), [(TCP_ESTABLISHED, 86_400)]);
        // A small table on 8 cores grows to 32768 per core.
        let small = |k: &str| match k {
            MAX => Some(65_536),
            TCP_CLOSE_WAIT => Some(7_200),
            _ => None,
        };
        assert_eq!(
            plan(&defaults, 8, small),
            [(MAX, 262_144), (TCP_CLOSE_WAIT, 3_600)]
        );
        // One core: the floor of 131072.
        assert_eq!(plan(&defaults, 1, |_| Some(1_000))[0], (MAX, 131_072));
        // Zeros leave everything alone; unreadable values are left alone.
        let off = ConntrackLimits {
            max_per_core: 0,
            min: 0,
            tcp_established: Duration::ZERO,
            tcp_close_wait: Duration::ZERO,
        };
        assert!(plan(&off, 2, |_| Some(1)).is_empty());
        assert!(plan(&defaults, 2, |_| None).is_empty());
    }
}
