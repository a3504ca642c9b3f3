//! The Service proxy: keeps one nftables table equal to what the node's [`ServiceView`] says,
//! so that `CLUSTER-IP:port` and `NODE-IP:nodePort` reach a ready endpoint from the node's
//! pods, from the host and (node ports) from outside, with the cloud reachable or not.
//!
//! It is kube-proxy's nftables mode in miniature: [`ruleset::ruleset`] computes the whole
//! desired table from the view (pure, no I/O), and [`apply::Applier`] makes the kernel's table
//! equal to it in one transaction when the rendered text changed. [`run`] re-renders on every
//! view change, at most once per [`ProxyConfig::min_sync_interval`] (a burst of changes costs
//! one `nft` run), retries a failed apply, and removes its table on a clean shutdown. After a
//! restart the table is rebuilt from the cache's view, so routing resumes with no cloud.
//!
//! The view carries the node's own prober verdicts (`local_ready`), which override the cloud's
//! for the node's pods: a local endpoint whose readiness probe fails leaves routing with the
//! next sync, offline too. Endpoints on other nodes are DNATed like local ones; that their pod
//! addresses are reachable from here is the overlay's job, not this module's.
//!
//! [`ServiceView`]: crate::network::view::ServiceView

pub mod apply;
pub mod conntrack;
pub mod ruleset;

pub use apply::{Applier, ApplyError, Synced, Tools};
pub use ruleset::{ruleset, NodeAddrs, Ruleset, RulesetConfig, Skipped};

use crate::network::view::ViewReceiver;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The longest wait between two attempts of a proxy that keeps failing.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Table name and affinity bounds.
    pub ruleset: RulesetConfig,
    /// The tools and where they run.
    pub tools: Tools,
    /// The node's addresses for node ports; `None` reads them (`ip -4 addr`, scope global) at
    /// every sync, which also follows an address change within [`Self::resync_interval`].
    pub node_addrs: Option<NodeAddrs>,
    /// At most one apply per this interval; changes within it are coalesced.
    pub min_sync_interval: Duration,
    /// How long to wait before retrying a failed apply (or a failed start-up check); it
    /// doubles with each failure in a row, up to [`MAX_RETRY_INTERVAL`].
    pub retry_interval: Duration,
    /// A re-render with no view change (node addresses may have changed), and a check that
    /// the table is still there (rebuilt whole if not).
    pub resync_interval: Duration,
    /// Conntrack bounds set at start (kube-proxy's); `None` leaves conntrack as it is.
    pub conntrack: Option<conntrack::ConntrackLimits>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            ruleset: RulesetConfig::default(),
            tools: Tools::default(),
            node_addrs: None,
            min_sync_interval: Duration::from_millis(100),
            retry_interval: Duration::from_secs(1),
            resync_interval: Duration::from_secs(30),
            conntrack: Some(conntrack::ConntrackLimits::default()),
        }
    }
}

/// Runs the proxy until `shutdown` completes (or the view's sender is dropped), then removes
/// the table. Never fails on a bad view or a refused apply: those are logged (at error, with
/// nft's message) and retried.
pub async fn run(config: ProxyConfig, mut view: ViewReceiver, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let table = config.ruleset.table.clone();
    let mut applier = Applier::new(config.tools.clone());
    let mut logged: BTreeSet<Skipped> = BTreeSet::new();
    let mut dirty = true;
    let mut next_allowed = Instant::now();
    tracing::info!(%table, "service proxy starting");
    let mut backoff = wire::backoff::Backoff::new(config.retry_interval, MAX_RETRY_INTERVAL);
    // Once, up front: a node that cannot run nft at all (not root, no nftables package) says
    // so in one line and a gauge, then checks again with back-off instead of failing (and
    // logging) an apply every second.
    let mut preflight_failed = false;
    loop {
        match applier.tools().preflight().await {
            Ok(()) => break,
            Err(e) => {
                metrics::gauge!("skerry_edge_proxy_ready").set(0.0);
                if !preflight_failed {
                    tracing::error!(error = %e, %table,
                        "the service proxy cannot program nftables: Services do not route on this \
                         node until it can (run edgecore as root with Debian's nftables package, \
                         or pass --service-proxy=false); checking again with back-off");
                    preflight_failed = true;
                } else {
                    tracing::debug!(error = %e, "the service proxy still cannot program nftables");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    }
    backoff.reset();
    if preflight_failed {
        tracing::info!(%table, "the service proxy can program nftables now");
    }
    metrics::gauge!("skerry_edge_proxy_ready").set(1.0);
    if let Some(limits) = &config.conntrack {
        set_conntrack_limits(applier.tools(), limits).await;
    }
    if !applier.tools().conntrack_present().await {
        tracing::warn!(
            "conntrack cannot be run (Debian's conntrack package): when a UDP endpoint \
                        leaves, its clients' flows stay on it until they idle out"
        );
    }
    let mut last_error: Option<String> = None;
    loop {
        if dirty {
            tokio::select! {
                _ = tokio::time::sleep_until(next_allowed) => {}
                _ = &mut shutdown => break,
            }
            let current = view.borrow_and_update().clone();
            let node = match &config.node_addrs {
                Some(n) => n.clone(),
                None => match applier.tools().node_ipv4().await {
                    Ok(ipv4) => NodeAddrs { ipv4 },
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the node's addresses; node ports answer on none");
                        NodeAddrs::default()
                    }
                },
            };
            let started = Instant::now();
            let rs = ruleset(&current, &node, &config.ruleset);
            let skipped: BTreeSet<Skipped> = rs.skipped.iter().cloned().collect();
            for s in skipped.difference(&logged) {
                tracing::warn!(object = %s.object, reason = %s.reason, "service proxy skips");
            }
            logged = skipped;
            let ports = rs.routed_ports;
            match applier.sync(rs).await {
                Ok(Synced::Unchanged) => dirty = false,
                Ok(Synced::Applied { conntrack_failures }) => {
                    metrics::histogram!("skerry_edge_proxy_sync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("skerry_edge_proxy_rules_applied_total").increment(1);
                    if conntrack_failures > 0 {
                        metrics::counter!("skerry_edge_proxy_conntrack_failures_total")
                            .increment(conntrack_failures as u64);
                    }
                    tracing::debug!(%table, ports, "service proxy table applied");
                    dirty = false;
                }
                Err(e) => {
                    metrics::counter!("skerry_edge_proxy_sync_failures_total").increment(1);
                    metrics::gauge!("skerry_edge_proxy_ready").set(0.0);
                    let text = e.to_string();
                    // The same refusal again is not news: once at error, then at debug.
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::error!(error = %text, "service proxy apply failed; retrying with back-off");
                    } else {
                        tracing::debug!(error = %text, "service proxy apply failed again");
                    }
                    last_error = Some(text);
                }
            }
            if !dirty {
                if last_error.take().is_some() {
                    tracing::info!(%table, "service proxy applies again");
                }
                metrics::gauge!("skerry_edge_proxy_ready").set(1.0);
                backoff.reset();
            }
            next_allowed = Instant::now()
                + if dirty {
                    backoff.next_delay()
                } else {
                    config.min_sync_interval
                };
            if dirty {
                continue;
            }
        }
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    break;
                }
                dirty = true;
            }
            _ = tokio::time::sleep(config.resync_interval) => {
                // A table deleted behind our back (a `nft flush ruleset`, say) is rebuilt whole.
                if let Ok(false) = applier.tools().table_exists(&table).await {
                    tracing::warn!(%table, "the service proxy's table is gone; rebuilding it");
                    applier.forget();
                }
                dirty = true;
            }
            _ = &mut shutdown => break,
        }
    }
    match applier.remove(&table).await {
        Ok(()) => tracing::info!(%table, "service proxy stopped; its table is removed"),
        Err(e) => tracing::error!(error = %e, "service proxy could not remove its table"),
    }
}

/// Applies [`conntrack::plan`]: grows the table, shortens the long TCP timeouts. A refusal is
/// logged (a container host may not let the node change them) and never stops the proxy.
async fn set_conntrack_limits(tools: &Tools, limits: &conntrack::ConntrackLimits) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut current = std::collections::BTreeMap::new();
    for key in [
        conntrack::MAX,
        conntrack::TCP_ESTABLISHED,
        conntrack::TCP_CLOSE_WAIT,
    ] {
        if let Some(v) = tools.sysctl_get(key).await {
            current.insert(key, v);
        }
    }
    for (key, value) in conntrack::plan(limits, cores, |k| current.get(k).copied()) {
        match tools.sysctl_set(key, value).await {
            Ok(()) => tracing::info!(
                key,
                was = current.get(key).copied(),
                now = value,
                "service proxy bounded connection tracking"
            ),
            Err(e) => tracing::warn!(key, error = %e,
                "cannot bound connection tracking; the kernel's setting stays"),
        }
    }
}
