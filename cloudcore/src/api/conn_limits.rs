//! How many TCP connections the API keeps open, and from whom, so that hostile connection counts
//! cannot lock the admin out (issue #10, "Trust boundaries").
//!
//! Before this module, anyone who could open TCP connections could shut the API for everyone:
//! connections that never send a request stayed open until cloudcore ran out of file
//! descriptors, after which `accept` failed for kubectl too (and the accept loop logged the same
//! warning every 50 ms). Timeouts (in `server.rs`) bound how long one connection may stay
//! silent; this module bounds how many may be open at once:
//!
//! - **A per-address cap** ([`Limits::per_address`], `--max-conns-per-address`, 512) is the main
//!   defence against one attacker: a single host cannot take more than its share, whatever it
//!   sends. IPv6 clients are counted per /64, since one host usually owns a whole /64; IPv4-mapped
//!   IPv6 addresses count as the IPv4 address they map.
//! - **A global cap** ([`Limits::global`], `--max-conns`, 16384) keeps cloudcore below its file
//!   descriptor limit, so that the store, the embedded broker's edge connections and the hub keep
//!   working however many API connections arrive. [`effective_global`] lowers it further when
//!   the process may not open that many descriptors.
//! - **An admin reserve** of [`ADMIN_RESERVE`] slots at the top of the global cap. Before the TLS
//!   handshake nothing tells the admin apart from an attacker except the address, so the reserve
//!   is given by fairness rather than by identity: a connection that would take a reserved slot
//!   is admitted only if its address holds fewer than [`RESERVE_MAX_PER_ADDRESS`] connections.
//!   kubectl needs one or two connections (HTTP/2 multiplexes), so an admin gets in while a
//!   flood from up to `global / per_address` addresses (32 with the defaults) holds every
//!   unreserved slot, and those addresses cannot take the reserve. A flood spread over
//!   thousands of addresses, each holding a few connections, can still fill the reserve; against
//!   that the short pre-request timeouts keep slots churning, and the remedy is upstream
//!   (firewall, load balancer), as for kube-apiserver.
//!
//! A [`ConnPermit`] is held by the connection's task for as long as the connection is open and
//! gives its slot back when dropped, however the task ends. The module also holds the accept
//! loop's back-off on descriptor exhaustion ([`AcceptBackoff`]), the limiter that keeps repeated
//! warnings to one a second ([`LogLimiter`]) and the start-up raise of `RLIMIT_NOFILE`
//! ([`raise_nofile_limit`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Slots at the top of the global cap that only addresses holding fewer than
/// [`RESERVE_MAX_PER_ADDRESS`] connections may take.
pub const ADMIN_RESERVE: usize = 64;

/// An address holding this many connections or more cannot take a reserved slot.
pub const RESERVE_MAX_PER_ADDRESS: usize = 4;

/// File descriptors kept out of the global cap for everything else cloudcore opens: the store's
/// files, the embedded broker's edge connections, the hub's socket, the logs.
pub const FD_HEADROOM: u64 = 1024;

/// Default `--max-conns-per-address`.
pub const DEFAULT_PER_ADDRESS: usize = 512;

/// Default `--max-conns`.
pub const DEFAULT_GLOBAL: usize = 16_384;

/// Errors of the connection limits' set-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnLimitsError {
    /// The caps cannot work together.
    #[error(
        "invalid connection limits: --max-conns {global} must be larger than the {reserve} slots \
         reserved for the admin, and --max-conns-per-address {per_address} must be at least 1"
    )]
    Invalid {
        /// The requested global cap.
        global: usize,
        /// The requested per-address cap.
        per_address: usize,
        /// [`ADMIN_RESERVE`].
        reserve: usize,
    },
    /// `getrlimit`/`setrlimit` failed.
    #[error("cannot {action} RLIMIT_NOFILE: {source}")]
    Rlimit {
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: nix::Error,
    },
}

/// The caps, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections one client address (IPv6: one /64) may hold.
    pub per_address: usize,
    /// Open connections in all, the admin reserve included.
    pub global: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_address: DEFAULT_PER_ADDRESS,
            global: DEFAULT_GLOBAL,
        }
    }
}

/// Why a connection was refused; the `reason` label of `skerry_api_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its address already holds `per_address` connections.
    PerAddress,
    /// The global cap is reached (or only reserved slots are left and its address holds too
    /// many to take one).
    Global,
}

impl Rejection {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::PerAddress => "per_address",
            Rejection::Global => "global",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    counts: Mutex<Counts>,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update is one statement.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open-connection accounting of the API listener. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    shared: Arc<Shared>,
}

/// A slot of an open connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct ConnPermit {
    shared: Arc<Shared>,
    key: IpAddr,
}

/// The address a connection is counted under: IPv4-mapped IPv6 as IPv4, other IPv6 by /64.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

impl ConnLimits {
    /// Accounting under `limits`; refuses caps that leave no room besides the reserve.
    pub fn new(limits: Limits) -> Result<Self, ConnLimitsError> {
        if limits.per_address == 0 || limits.global <= ADMIN_RESERVE {
            return Err(ConnLimitsError::Invalid {
                global: limits.global,
                per_address: limits.per_address,
                reserve: ADMIN_RESERVE,
            });
        }
        Ok(Self {
            shared: Arc::new(Shared {
                limits,
                counts: Mutex::new(Counts::default()),
            }),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Takes a slot for a connection from `addr`, or says why not.
    pub fn try_acquire(&self, addr: IpAddr) -> Result<ConnPermit, Rejection> {
        let key = client_key(addr);
        let limits = self.shared.limits;
        let mut counts = self.shared.counts();
        let held = counts.by_address.get(&key).copied().unwrap_or(0);
        if held >= limits.per_address {
            return Err(Rejection::PerAddress);
        }
        if counts.total >= limits.global {
            return Err(Rejection::Global);
        }
        if counts.total >= limits.global - ADMIN_RESERVE && held >= RESERVE_MAX_PER_ADDRESS {
            return Err(Rejection::Global);
        }
        counts.total += 1;
        *counts.by_address.entry(key).or_insert(0) += 1;
        metrics::gauge!("skerry_api_connections").set(counts.total as f64);
        drop(counts);
        Ok(ConnPermit {
            shared: self.shared.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.counts().total
    }

    /// Connections open now from `addr` (counted as [`client_key`] says).
    pub fn open_from(&self, addr: IpAddr) -> usize {
        let key = client_key(addr);
        self.shared
            .counts()
            .by_address
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Addresses holding at least one connection (the size of the table).
    pub fn addresses(&self) -> usize {
        self.shared.counts().by_address.len()
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut counts = self.shared.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // An address with no connection takes no memory: a scan from many addresses
                // leaves nothing behind.
                counts.by_address.remove(&self.key);
            }
        }
        metrics::gauge!("skerry_api_connections").set(counts.total as f64);
    }
}

/// The global cap that fits in `nofile` file descriptors: `requested`, lowered to leave
/// [`FD_HEADROOM`] descriptors (half the limit when the limit is small) for everything else,
/// and never below `ADMIN_RESERVE + 1` so that the caps stay valid.
pub fn effective_global(requested: usize, nofile: u64) -> usize {
    let headroom = FD_HEADROOM.min(nofile / 2);
    let fits = usize::try_from(nofile.saturating_sub(headroom)).unwrap_or(usize::MAX);
    requested.min(fits).max(ADMIN_RESERVE + 1)
}

/// `RLIMIT_NOFILE` before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit the process started with.
    pub before: u64,
    /// Soft limit now.
    pub now: u64,
}

/// Linux's default `fs.nr_open`: the most descriptors a process may have when the hard limit
/// says "unlimited" (a soft limit of RLIM_INFINITY is refused for RLIMIT_NOFILE).
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime and most servers do at
/// start: the soft limit (often 1024) exists for programs that use `select(2)`, which cloudcore
/// does not, and a server with 1024 descriptors is shut by 1024 connections.
pub fn raise_nofile_limit() -> Result<NofileLimit, ConnLimitsError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| ConnLimitsError::Rlimit {
            action: "read",
            source,
        })?;
    let target = if hard == RLIM_INFINITY {
        NR_OPEN_DEFAULT
    } else {
        hard
    };
    if soft >= target {
        return Ok(NofileLimit {
            before: soft,
            now: soft,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(|source| ConnLimitsError::Rlimit {
        action: "raise",
        source,
    })?;
    Ok(NofileLimit {
        before: soft,
        now: target,
    })
}

/// The `kind` label of `skerry_api_accept_errors_total`, and whether the error means the
/// process (or system) is out of a resource, so that accepting again at once would fail again.
pub fn accept_error_kind(e: &io::Error) -> (&'static str, bool) {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE) => ("emfile", true),
        Some(Errno::ENFILE) => ("enfile", true),
        Some(Errno::ENOBUFS) => ("enobufs", true),
        Some(Errno::ENOMEM) => ("enomem", true),
        // The peer gave up between the SYN and the accept: nothing is wrong with the listener.
        Some(Errno::ECONNABORTED) | Some(Errno::ECONNRESET) | Some(Errno::EPROTO) => {
            ("connection_aborted", false)
        }
        Some(Errno::EINTR) | Some(Errno::EAGAIN) => ("interrupted", false),
        _ => ("other", true),
    }
}

/// Back-off of the accept loop when accepting fails for want of descriptors or buffers: the
/// first wait is short, each further failure doubles it up to a second, and one success resets
/// it. A fixed short sleep turns an exhausted process into a busy loop of failing accepts and
/// log lines; a fixed long one keeps the admin out longer than the shortage lasts.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    /// The first wait.
    pub const MIN: Duration = Duration::from_millis(10);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(1);

    /// A back-off at its first wait.
    pub fn new() -> Self {
        Self { next: Self::MIN }
    }

    /// After a failed accept: how long to wait before the next one.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// After a successful accept.
    pub fn succeeded(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::log_limit::LogLimiter;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn limits(per_address: usize, global: usize) -> ConnLimits {
        ConnLimits::new(Limits {
            per_address,
            global,
        })
        .unwrap()
    }

    #[test]
    fn one_address_cannot_hold_more_than_its_cap() {
        let l = limits(3, 1000);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire(v4(1)).unwrap()).collect();
        assert_eq!(l.try_acquire(v4(1)).unwrap_err(), Rejection::PerAddress);
        // Another address is not affected.
        let other = l.try_acquire(v4(2)).unwrap();
        assert_eq!(
            (l.open(), l.open_from(v4(1)), l.open_from(v4(2))),
            (4, 3, 1)
        );
        drop(other);
        drop(held);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn permits_give_their_slot_back_when_dropped() {
        let l = limits(2, 1000);
        let a = l.try_acquire(v4(1)).unwrap();
        let b = l.try_acquire(v4(1)).unwrap();
        assert!(l.try_acquire(v4(1)).is_err());
        drop(a);
        let c = l
            .try_acquire(v4(1))
            .expect("the dropped permit's slot is free again");
        drop((b, c));
        assert_eq!((l.open(), l.open_from(v4(1))), (0, 0));
        assert_eq!(
            l.addresses(),
            0,
            "an address with no connection leaves no entry"
        );
    }

    #[test]
    fn the_global_cap_holds_across_addresses() {
        let global = ADMIN_RESERVE + 10;
        let l = limits(1, global);
        let held: Vec<_> = (0..global)
            .map(|i| {
                l.try_acquire(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32)))
                    .unwrap()
            })
            .collect();
        assert_eq!(l.open(), global);
        assert_eq!(
            l.try_acquire(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
                .unwrap_err(),
            Rejection::Global
        );
        drop(held);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn hostile_addresses_cannot_take_the_admin_reserve() {
        // Two attackers fill every unreserved slot; they may not go on into the reserve, while a
        // fresh address (the admin) may.
        let unreserved = 100;
        let l = limits(unreserved, unreserved + ADMIN_RESERVE);
        let mut held = Vec::new();
        for i in 0..unreserved {
            held.push(l.try_acquire(v4(1 + (i % 2) as u8)).unwrap());
        }
        assert_eq!(l.try_acquire(v4(1)).unwrap_err(), Rejection::Global);
        assert_eq!(l.try_acquire(v4(2)).unwrap_err(), Rejection::Global);
        let admin: Vec<_> = (0..RESERVE_MAX_PER_ADDRESS)
            .map(|_| {
                l.try_acquire(v4(200))
                    .expect("the admin gets a reserved slot")
            })
            .collect();
        assert_eq!(
            l.try_acquire(v4(200)).unwrap_err(),
            Rejection::Global,
            "not more than RESERVE_MAX_PER_ADDRESS reserved slots per address"
        );
        drop(admin);
        drop(held);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limits(2, 1000);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p = (l.try_acquire(a).unwrap(), l.try_acquire(b).unwrap());
        assert_eq!(l.try_acquire(a).unwrap_err(), Rejection::PerAddress);
        let _q = l.try_acquire(c).expect("another /64 is another client");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let _r = l.try_acquire(mapped).unwrap();
        assert_eq!(l.open_from(v4(7)), 1);
    }

    #[test]
    fn caps_that_leave_nothing_besides_the_reserve_are_refused() {
        assert!(ConnLimits::new(Limits {
            per_address: 1,
            global: ADMIN_RESERVE
        })
        .is_err());
        assert!(ConnLimits::new(Limits {
            per_address: 0,
            global: 1000
        })
        .is_err());
    }

    #[test]
    fn the_global_cap_leaves_descriptors_for_the_rest_of_cloudcore() {
        assert_eq!(effective_global(16_384, 1_048_576), 16_384);
        assert_eq!(effective_global(16_384, 20_000), 16_384);
        assert_eq!(
            effective_global(30_000, 20_000),
            20_000 - FD_HEADROOM as usize
        );
        assert_eq!(effective_global(16_384, 1024), 512);
        assert_eq!(effective_global(16_384, 10), ADMIN_RESERVE + 1);
    }

    #[test]
    fn accept_errors_are_classified() {
        let e = |n| io::Error::from_raw_os_error(n as i32);
        use nix::errno::Errno;
        assert_eq!(accept_error_kind(&e(Errno::EMFILE)), ("emfile", true));
        assert_eq!(accept_error_kind(&e(Errno::ENFILE)), ("enfile", true));
        assert_eq!(accept_error_kind(&e(Errno::ENOBUFS)), ("enobufs", true));
        assert_eq!(
            accept_error_kind(&e(Errno::ECONNABORTED)),
            ("connection_aborted", false)
        );
    }

    #[test]
    fn accept_backoff_grows_to_a_second_and_resets() {
        let mut b = AcceptBackoff::new();
        let waits: Vec<_> = (0..9).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), AcceptBackoff::MIN);
    }
}
