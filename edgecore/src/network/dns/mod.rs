//! Cluster DNS on the edge: every node answers for the cluster domain itself, from the
//! [`ServiceView`] it holds, so that names resolve with the cloud unreachable, and forwards
//! every other name to the host's resolvers.
//!
//! # What it guarantees
//!
//! - **Answers from the cache.** The zone is rebuilt from the newest view each time the view
//!   changes ([`records::build`]), with the node's own readiness overriding the cloud's
//!   ([`ServiceView::endpoint_ready`]): a local pod that fails its readiness probe leaves its
//!   headless Service's answers at once. The swap is atomic: a query sees the old zone or the
//!   new one, never half of each.
//! - **The DNS wire is hickory's.** Parsing, answering, NXDOMAIN against NODATA, CNAME
//!   chasing, truncation and TCP framing are `hickory-server`'s (its in-memory zone and
//!   `Catalog`); forwarding is its forwarder over `hickory-resolver`. Nothing here reads or
//!   writes DNS bytes.
//! - **A failing upstream costs a SERVFAIL, not a hang.** Forwarded lookups are bounded by
//!   [`DnsConfig::upstream_timeout`] per attempt; a dead or refusing upstream turns into
//!   SERVFAIL. Names inside the cluster domain never leave the node.
//! - **Where it listens.** In [`Listen::ClusterDns`] mode (the agent's) it owns the cluster DNS
//!   address (`ClusterNetwork::cluster_dns`, the nameserver pods are given) the way NodeLocal
//!   DNSCache does: a dummy interface carries the address ([`iface`]) and the server binds UDP
//!   and TCP on it. When the address changes it moves with it; until the node has network
//!   settings it does not listen. The interface stays when edgecore stops (a pod's query then
//!   fails at once with "port unreachable" instead of leaving the node); [`iface::remove`]
//!   takes it away.
//!
//! Metrics: `skerry_edge_dns_queries_total{rcode}`, `skerry_edge_dns_records`,
//! `skerry_edge_dns_zone_builds_total` and `skerry_edge_dns_listening` (1 while bound).

mod chase;
pub mod iface;
pub mod records;
#[cfg(test)]
mod tests;

use super::view::{ServiceView, ViewReceiver};
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_server::resolver::Resolver;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// The port of the cluster DNS address.
pub const DNS_PORT: u16 = 53;
/// Default name of the dummy interface that carries the cluster DNS address.
pub const DEFAULT_INTERFACE: &str = "skerry-dns";
/// Default bound of one forwarded attempt.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent before its connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// On the cluster DNS address from the view, carried by dummy interface `interface`.
    ClusterDns {
        /// Interface name (at most 15 bytes).
        interface: String,
        /// Port (53 unless testing).
        port: u16,
    },
    /// On this address, on UDP and TCP (the same port; port 0 picks one): tests, or a node
    /// whose cluster DNS address is routed to it by other means.
    Fixed(SocketAddr),
}

/// Where names outside the cluster domain go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The nameservers of this resolv.conf (the host's, `/etc/resolv.conf`), read at start.
    ResolvConf(PathBuf),
    /// These servers, on UDP and TCP.
    Servers(Vec<SocketAddr>),
}

/// Settings of the cluster DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to listen.
    pub listen: Listen,
    /// Where other names go.
    pub upstream: Upstream,
    /// Bound of one forwarded attempt.
    pub upstream_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: Listen::ClusterDns {
                interface: DEFAULT_INTERFACE.into(),
                port: DNS_PORT,
            },
            upstream: Upstream::ResolvConf("/etc/resolv.conf".into()),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

/// Why the DNS server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The upstream configuration cannot be read or used.
    #[error("cannot use upstream resolvers from {source_name}: {message}")]
    Upstream {
        /// The resolv.conf path, or the configured servers.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A socket could not be bound.
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster DNS interface could not be set up.
    #[error(transparent)]
    Iface(#[from] iface::IfaceError),
}

/// Answers each query from the newest catalog (cluster zone + forwarder) and counts it.
#[derive(Clone)]
struct ClusterDnsHandler {
    catalog: watch::Receiver<Arc<Catalog>>,
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let catalog = self.catalog.borrow().clone();
        let info = catalog
            .handle_request::<R, T>(request, response_handle)
            .await;
        metrics::counter!("skerry_edge_dns_queries_total", "rcode" => rcode_label(info.response_code))
            .increment(1);
        info
    }
}

fn rcode_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::NotImp => "NOTIMP",
        _ => "OTHER",
    }
}

/// The upstream nameservers, and where they came from (for messages).
fn upstream_servers(config: &DnsConfig) -> Result<(String, Vec<NameServerConfig>), DnsError> {
    match &config.upstream {
        Upstream::ResolvConf(path) => {
            let source_name = path.display().to_string();
            let err = |message: String| DnsError::Upstream {
                source_name: source_name.clone(),
                message,
            };
            let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let (conf, _) = hickory_server::resolver::system_conf::parse_resolv_conf(data)
                .map_err(|e| err(e.to_string()))?;
            Ok((source_name, conf.name_servers().to_vec()))
        }
        Upstream::Servers(addrs) => {
            let servers = addrs
                .iter()
                .map(|a| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = a.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(a.ip(), true, connections)
                })
                .collect();
            Ok(("the configured upstream servers".to_string(), servers))
        }
    }
}

/// What answers names outside the cluster zone, and follows its ExternalName CNAMEs.
#[derive(Clone, Default)]
struct Upstreams {
    /// The forwarder (`None` without nameservers: such names are REFUSED).
    forwarder: Option<Arc<dyn ZoneHandler>>,
    /// The resolver that follows ExternalName targets.
    chase: Option<Arc<Resolver<TokioRuntimeProvider>>>,
    /// Bound of one chase.
    timeout: Duration,
}

fn upstreams(config: &DnsConfig) -> Result<Upstreams, DnsError> {
    let (source_name, name_servers) = upstream_servers(config)?;
    if name_servers.is_empty() {
        warn!(upstream = %source_name, "no upstream nameserver: names outside the cluster domain are refused");
        return Ok(Upstreams::default());
    }
    let mut options = ResolverOpts::default();
    options.timeout = config.upstream_timeout;
    options.attempts = 1;
    let err = |message: String| DnsError::Upstream {
        source_name: source_name.clone(),
        message,
    };
    let mut chase = Resolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], name_servers.clone()),
        TokioRuntimeProvider::default(),
    );
    *chase.options_mut() = options.clone();
    let chase = chase.build().map_err(|e| err(e.to_string()))?;
    let forwarder = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build()
    .map_err(err)?;
    Ok(Upstreams {
        forwarder: Some(Arc::new(forwarder)),
        chase: Some(Arc::new(chase)),
        timeout: config.upstream_timeout,
    })
}

/// The catalog for one view: the cluster zone (when the domain is known) and the forwarder
/// for everything else.
fn catalog(view: &ServiceView, serial: u32, upstreams: &Upstreams) -> Catalog {
    let mut catalog = Catalog::new();
    let mut count = 0;
    if let Some(zone) = records::build(view, serial) {
        count = zone.record_count();
        let origin = zone.origin.clone();
        match InMemoryZoneHandler::<TokioRuntimeProvider>::new(
            origin.clone(),
            zone.records,
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ) {
            Ok(handler) => {
                let mut handlers: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(handler)];
                if let Some(resolver) = &upstreams.chase {
                    handlers.push(Arc::new(chase::ChaseExternal {
                        origin: LowerName::new(&origin),
                        resolver: Resolver::clone(resolver),
                        timeout: upstreams.timeout,
                    }));
                }
                catalog.upsert(LowerName::new(&origin), handlers)
            }
            Err(e) => warn!(zone = %origin, error = %e, "cannot load the cluster zone"),
        }
    }
    if let Some(forwarder) = &upstreams.forwarder {
        catalog.upsert(LowerName::new(&Name::root()), vec![forwarder.clone()]);
    }
    metrics::gauge!("skerry_edge_dns_records").set(count as f64);
    metrics::counter!("skerry_edge_dns_zone_builds_total").increment(1);
    catalog
}

/// Binds UDP and TCP on `addr` (the same port) and starts hickory's server on them.
async fn serve(
    addr: SocketAddr,
    handler: ClusterDnsHandler,
) -> Result<(Server<ClusterDnsHandler>, SocketAddr), DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    let mut tries = 0;
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(bind_err)?;
        let bound = udp.local_addr().map_err(bind_err)?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => break (udp, tcp),
            // Port 0 gave a UDP port whose TCP twin is taken: draw again.
            Err(e) if addr.port() == 0 && tries < 8 => {
                tries += 1;
                warn!(%bound, error = %e, "TCP port taken, trying another");
            }
            Err(e) => return Err(bind_err(e)),
        }
    };
    let bound = udp.local_addr().map_err(bind_err)?;
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64);
    Ok((server, bound))
}

/// Serves cluster DNS until `shutdown` completes (see the module docs). Fails when the upstream
/// configuration is unusable or the address cannot be taken; the caller's supervisor retries.
pub async fn run(
    config: DnsConfig,
    view: ViewReceiver,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    run_reporting(config, view, shutdown, watch::channel(None).0).await
}

async fn run_reporting(
    config: DnsConfig,
    mut view: ViewReceiver,
    shutdown: impl Future<Output = ()> + Send,
    bound_tx: watch::Sender<Option<SocketAddr>>,
) -> Result<(), DnsError> {
    let upstreams = upstreams(&config)?;
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog::new()));
    let handler = ClusterDnsHandler {
        catalog: catalog_rx,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut serial: u32 = 0;
    let mut current: Option<(SocketAddr, Server<ClusterDnsHandler>)> = None;
    let mut view_open = true;
    let result = loop {
        let snapshot = view.borrow_and_update().clone();
        serial = serial.wrapping_add(1);
        catalog_tx.send_replace(Arc::new(catalog(&snapshot, serial, &upstreams)));

        let want = match &config.listen {
            Listen::Fixed(addr) => Some(*addr),
            Listen::ClusterDns { port, .. } => snapshot
                .network
                .as_ref()
                .map(|n| SocketAddr::new(n.cluster_dns, *port)),
        };
        if want != current.as_ref().map(|(a, _)| *a) {
            if let Some((old, mut server)) = current.take() {
                info!(%old, "cluster DNS address changed; moving");
                let _ = server.shutdown_gracefully().await;
                metrics::gauge!("skerry_edge_dns_listening").set(0.0);
                bound_tx.send_replace(None);
            }
            if let Some(addr) = want {
                if let Listen::ClusterDns { interface, .. } = &config.listen {
                    if let Err(e) = iface::ensure(interface, addr.ip()).await {
                        break Err(e.into());
                    }
                }
                match serve(addr, handler.clone()).await {
                    Ok((server, bound)) => {
                        info!(%bound, "cluster DNS listening on UDP and TCP");
                        metrics::gauge!("skerry_edge_dns_listening").set(1.0);
                        bound_tx.send_replace(Some(bound));
                        current = Some((addr, server));
                    }
                    Err(e) => break Err(e),
                }
            }
        }

        tokio::select! {
            changed = view.changed(), if view_open => {
                // The view's sender is gone (the agent is stopping): keep answering from the
                // last view until shutdown.
                view_open = changed.is_ok();
            }
            _ = &mut shutdown => break Ok(()),
        }
    };
    if let Some((_, mut server)) = current.take() {
        let _ = server.shutdown_gracefully().await;
    }
    metrics::gauge!("skerry_edge_dns_listening").set(0.0);
    bound_tx.send_replace(None);
    result
}

/// A running server, for tests and embedders that need its address: [`DnsServer::start`] runs
/// [`run`] in a task.
pub struct DnsServer {
    bound: watch::Receiver<Option<SocketAddr>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), DnsError>>>,
}

impl DnsServer {
    /// Starts serving `view` with `config`.
    pub fn start(config: DnsConfig, view: ViewReceiver) -> Self {
        let (bound_tx, bound) = watch::channel(None);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_reporting(
            config,
            view,
            async move {
                let _ = stopped.await;
            },
            bound_tx,
        ));
        Self {
            bound,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address it listens on (UDP and TCP), once bound; `Err` if the server stopped
    /// (with its error) before binding.
    pub async fn bound(&mut self) -> Result<SocketAddr, String> {
        loop {
            if let Some(addr) = *self.bound.borrow_and_update() {
                return Ok(addr);
            }
            let finished = self.task.as_ref().is_none_or(|t| t.is_finished());
            if self.bound.changed().await.is_err() || finished {
                return Err(self
                    .stop_now()
                    .await
                    .err()
                    .unwrap_or_else(|| "the DNS server stopped before it listened".to_string()));
            }
        }
    }

    async fn stop_now(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the DNS server task failed: {e}")),
            },
        }
    }

    /// Stops it and returns how it ended.
    pub async fn shutdown(mut self) -> Result<(), String> {
        self.stop_now().await
    }
}
