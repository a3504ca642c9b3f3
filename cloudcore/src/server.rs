//! `cloudcore serve`: wires the store, PKI, API, hub, ingest, scheduler, controllers and broker
//! together.

use crate::api::client::{identity, Client};
use crate::api::conn_limits::{
    accept_error_kind, AcceptBackoff, ConnLimits, ConnPermit, Limits, LogLimiter,
};
use crate::api::{router, ApiState};
use crate::hub::{self, Hub, HubConfig};
use crate::ingest::{self, MqttTarget};
use crate::pki::Pki;
use crate::store::encryption::{self, Encryption, EncryptionConfig};
use crate::store::{SledStore, Store};
use crate::{broker, projection, scheduler};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};
use wire::supervisor::{Policy, Supervisor};

/// How many revisions of shard history to keep; a node further behind gets a snapshot.
const SHARD_HISTORY: u64 = 100_000;

/// Everything `cloudcore serve` needs; the defaults run the quickstart.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the store and PKI live.
    pub data_dir: PathBuf,
    /// HTTPS API address.
    pub api_addr: SocketAddr,
    /// QUIC hub address (UDP).
    pub hub: HubConfig,
    /// External broker URL; `None` starts the embedded one.
    pub mqtt_url: Option<String>,
    /// Where the embedded broker listens.
    pub mqtt_listen: SocketAddr,
    /// Extra names (DNS or IP) for the server certificate, as edges and kubectl reach it.
    pub server_names: Vec<String>,
    /// Store events kept in memory for watches that resume from a resourceVersion; a watch
    /// from further back gets 410 and re-lists.
    pub watch_history: usize,
    /// Node lifecycle controller: grace period of silent nodes and the period of its passes.
    pub node_lifecycle: crate::controllers::node_lifecycle::Config,
    /// Where Services get cluster IPs and node ports.
    pub services: crate::api::services::ServiceNetwork,
    /// Where nodes get their pod CIDRs; `None`: not allocated.
    pub node_cidrs: Option<crate::api::node_cidrs::NodeCidrPool>,
    /// Caps on open API connections (`--max-conns-per-address`, `--max-conns`).
    pub api_conn_limits: Limits,
    /// Timeouts of API connections before and between requests.
    pub api_conn_timeouts: ConnTimeouts,
    /// Kubernetes `EncryptionConfiguration` for Secrets at rest (`--encryption-provider-config`);
    /// re-read every second while the server runs. `None`: Secrets are stored unencrypted.
    pub encryption_provider_config: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/skerry/cloudcore"),
            api_addr: "0.0.0.0:6443".parse().expect("static"),
            hub: HubConfig::default(),
            mqtt_url: None,
            mqtt_listen: "0.0.0.0:8883".parse().expect("static"),
            server_names: vec![],
            watch_history: crate::api::history::DEFAULT_CAPACITY,
            node_lifecycle: crate::controllers::node_lifecycle::Config::default(),
            services: crate::api::services::ServiceNetwork::default(),
            node_cidrs: Some(crate::api::node_cidrs::NodeCidrPool::default_pool()),
            api_conn_limits: Limits::default(),
            api_conn_timeouts: ConnTimeouts::default(),
            encryption_provider_config: None,
        }
    }
}

/// Opens the store of a data dir, its Secrets going through `encryption`.
pub fn open_store(
    data_dir: &std::path::Path,
    encryption: Arc<Encryption>,
) -> anyhow::Result<SledStore> {
    Ok(SledStore::open_with(
        &data_dir.join("store"),
        projection::shard,
        encryption,
    )?)
}

/// The transformer of `--encryption-provider-config` (refusing a bad file, so that the server
/// never starts writing Secrets in the clear because of a typo), and the digest of the
/// content in force for the reload watcher.
fn load_encryption(path: Option<&std::path::Path>) -> anyhow::Result<(Arc<Encryption>, [u8; 32])> {
    let Some(path) = path else {
        info!("no --encryption-provider-config: Secrets are stored unencrypted");
        return Ok((Arc::new(Encryption::none()), [0; 32]));
    };
    let (cfg, text) =
        EncryptionConfig::load_text(path).context("--encryption-provider-config is not usable")?;
    match cfg.write_key() {
        Some(key) => {
            info!(path = %path.display(), write_key = key, keys = ?cfg.key_names(), "Secrets are encrypted at rest (aesgcm)")
        }
        None => {
            warn!(path = %path.display(), keys = ?cfg.key_names(), "identity is the first provider: new Secrets are stored unencrypted")
        }
    }
    Ok((
        Arc::new(Encryption::new(&cfg)),
        encryption::reload::digest(text.as_bytes()),
    ))
}

/// Runs cloudcore until the process is stopped. `metrics_render` renders the Prometheus text
/// for `/metrics`.
pub async fn run(
    cfg: ServeConfig,
    metrics_render: Arc<dyn Fn() -> String + Send + Sync>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}; pass --data-dir to a writable place",
            cfg.data_dir.display()
        )
    })?;
    let pki = Arc::new(Pki::load_or_create(&cfg.data_dir, &cfg.server_names)?);
    let (encryption, applied) = load_encryption(cfg.encryption_provider_config.as_deref())?;
    let sled = open_store(&cfg.data_dir, encryption.clone())?;
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    info!(data_dir = %cfg.data_dir.display(), revision = store.revision(), ca_hash = %pki.ca_hash(), "store and PKI ready");

    let mut broker = None;
    let source = match &cfg.mqtt_url {
        Some(url) => ingest::Source::External(MqttTarget::parse(url).map_err(anyhow::Error::msg)?),
        None => {
            let (tx, rx) = broker::intake();
            broker = Some(
                broker::Broker::bind(cfg.mqtt_listen, pki.clone(), tx, broker::Limits::default())
                    .await?,
            );
            ingest::Source::Embedded(rx)
        }
    };
    let source = Arc::new(source);

    let endpoint = hub::endpoint(&pki, &cfg.hub)?;
    info!(listen = %endpoint.local_addr()?, "hub listening for edge nodes (QUIC)");

    // Every long-running subsystem runs supervised (wire::supervisor): restarted when it
    // ends or panics, reported by /readyz when it keeps failing, and past a bound the process
    // exits so that systemd restarts it.
    let supervisor = Supervisor::new(Policy::default());
    supervisor.spawn("store-compaction", move || {
        compact_periodically(sled.clone())
    });
    if let Some(path) = cfg.encryption_provider_config.clone() {
        supervisor.spawn("encryption-config-reload", move || {
            encryption::reload::watch(path.clone(), encryption.clone(), applied)
        });
    }

    let tls = Arc::new(pki.api_tls()?);
    let conn_limits = api_conn_limits(cfg.api_conn_limits)?;
    let listener = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the API; pick another --api-addr",
                cfg.api_addr
            )
        })?;
    info!(listen = %cfg.api_addr, "API listening (HTTPS)");
    let auth = crate::api::auth::Auth::new(
        pki.clone(),
        Arc::new(crate::api::auth::GroupAuthorizer::default()),
    );
    crate::api::namespaces::ensure_builtin(store.as_ref())
        .await
        .context("cannot create the built-in namespaces")?;
    let mut registry = crate::api::Registry::builtin();
    registry.register(Arc::new(crate::api::services::ServiceHandler::new(
        cfg.services,
    )));
    registry.register(Arc::new(crate::api::nodes::NodeHandler {
        cidrs: cfg.node_cidrs,
    }));
    info!(service_cidr = %cfg.services.cidr, node_ports = %cfg.services.node_ports,
          node_cidrs = ?cfg.node_cidrs.map(|p| p.to_string()), "address pools");
    let health = crate::api::health::Health {
        supervisor: Some(supervisor.clone()),
        extra: Vec::new(),
    };
    let api = ApiState::with_watch_history(store.clone(), metrics_render, cfg.watch_history)
        .with_registry(registry)
        .with_health(health);
    {
        let (api, pki) = (api.clone(), pki.clone());
        let client_id = format!("skerry-cloudcore-ingest-{}", cfg.api_addr.port());
        supervisor.spawn("ingest", move || {
            ingest::run(api.clone(), pki.clone(), source.clone(), client_id.clone())
        });
    }
    if let Some(broker) = broker {
        // The listener is bound once (a taken port fails the start); a serve loop that ends
        // is restarted on it by the supervisor.
        supervisor.spawn("mqtt-broker", move || broker.clone().serve());
    }
    {
        let api = api.clone();
        supervisor.spawn("scheduler", move || {
            scheduler::run(Client::with_identity(api.clone(), identity::SCHEDULER))
        });
    }
    let hub = Hub::new(
        Client::with_identity(api.clone(), identity::HUB),
        pki.clone(),
        &cfg.hub,
    );
    {
        let hub = hub.clone();
        supervisor.spawn("hub", move || hub.clone().run(endpoint.clone()));
    }
    {
        let (pki, hub) = (pki.clone(), hub.clone());
        supervisor.spawn("node-revocations", move || {
            watch_revocations(pki.clone(), hub.clone())
        });
    }
    {
        let (api, lifecycle, liveness) = (api.clone(), cfg.node_lifecycle, hub.liveness());
        supervisor.spawn("node-lifecycle", move || {
            crate::controllers::node_lifecycle::run(
                Client::with_identity(api.clone(), identity::NODE_CONTROLLER),
                lifecycle,
                liveness.clone(),
            )
        });
    }
    spawn_workload_controllers(&api, &supervisor);
    let api = api.with_hub(hub.clone());
    let app = router(api).layer(axum::middleware::from_fn_with_state(
        auth,
        crate::api::auth::guard,
    ));
    // The API server owns its listener and cannot be restarted in place: if it ever ends, the
    // process goes, for systemd to start a fresh one.
    let timeouts = cfg.api_conn_timeouts;
    tokio::spawn(async move {
        serve_https(listener, tls, app, conn_limits, timeouts).await;
        tracing::error!("the API server ended; exiting");
        std::process::exit(1);
    });

    shutdown_signal().await;
    info!("shutting down");
    Ok(())
}

/// Raises the descriptor limit and sets up the connection caps, lowering the global cap to what
/// the descriptor limit allows.
fn api_conn_limits(requested: Limits) -> anyhow::Result<ConnLimits> {
    use crate::api::conn_limits::{effective_global, raise_nofile_limit};
    let nofile = match raise_nofile_limit() {
        Ok(n) => {
            if n.now != n.before {
                info!(
                    before = n.before,
                    now = n.now,
                    "raised the open file limit (RLIMIT_NOFILE)"
                );
            }
            n.now
        }
        Err(e) => {
            warn!(error = %e, "cannot raise the open file limit; the connection cap follows the current one");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let global = effective_global(requested.global, nofile);
    if global < requested.global {
        warn!(requested = requested.global, effective = global, nofile,
            "--max-conns lowered to fit the open file limit; raise the limit (LimitNOFILE= in the systemd unit) to allow more");
    }
    let limits = Limits {
        per_address: requested.per_address,
        global,
    };
    info!(
        per_address = limits.per_address,
        global = limits.global,
        admin_reserve = crate::api::conn_limits::ADMIN_RESERVE,
        "API connection caps"
    );
    Ok(ConnLimits::new(limits)?)
}

/// How often the workload controllers reconcile every object even without events.
const CONTROLLER_RESYNC: Duration = Duration::from_secs(30);

/// Starts the controllers that run on the shared runner (namespace, garbage collector and the
/// workload controllers), writing through the in-process client.
pub fn spawn_workload_controllers(api: &ApiState, supervisor: &Supervisor) {
    use crate::controllers::{
        cronjob, daemonset, deployment, endpoints, garbage_collector, ingress_status, job,
        namespace, replicaset, runner, statefulset,
    };
    use runner::{Options, Reconciler};
    let client = crate::api::client::Client::new(api.clone());
    let informers = crate::controllers::informer::Informers::start(api.store.clone());
    fn run_on<R: Reconciler>(
        supervisor: &Supervisor,
        name: &'static str,
        api: &ApiState,
        controller: R,
        options: Options,
    ) {
        let (controller, store) = (Arc::new(controller), api.store.clone());
        supervisor.spawn(name, move || {
            runner::run(controller.clone(), store.subscribe(), options)
        });
    }
    let (ns_opts, gc_opts) = (
        Options::resync(namespace::RESYNC).with_concurrency(5),
        // Workers per controller, as kube-controller-manager's defaults (`--concurrent-*-syncs`).
        Options::resync(garbage_collector::RESYNC).with_concurrency(20),
    );
    let workload = Options::resync(CONTROLLER_RESYNC).with_concurrency(5);
    run_on(
        supervisor,
        "namespace-controller",
        api,
        namespace::NamespaceController::new(client.clone()),
        ns_opts,
    );
    run_on(
        supervisor,
        "garbage-collector",
        api,
        garbage_collector::GarbageCollector::new(client.clone()),
        gc_opts,
    );
    run_on(
        supervisor,
        "replicaset-controller",
        api,
        replicaset::ReplicaSetController::new(client.clone(), &informers),
        workload,
    );
    run_on(
        supervisor,
        "replication-controller",
        api,
        replicaset::ReplicationManager::new(client.clone(), &informers),
        workload,
    );
    run_on(
        supervisor,
        "deployment-controller",
        api,
        deployment::DeploymentController::new(client.clone(), &informers),
        workload,
    );
    run_on(
        supervisor,
        "daemonset-controller",
        api,
        daemonset::DaemonSetController::new(client.clone(), &informers),
        Options::resync(daemonset::RESYNC).with_concurrency(2),
    );
    run_on(
        supervisor,
        "statefulset-controller",
        api,
        statefulset::StatefulSetController::new(client.clone(), &informers),
        Options::resync(statefulset::RESYNC).with_concurrency(5),
    );
    run_on(
        supervisor,
        "job-controller",
        api,
        job::JobController::new(
            client.clone(),
            &informers,
            std::sync::Arc::new(crate::clock::SystemClock),
        ),
        Options::resync(job::RESYNC).with_concurrency(5),
    );
    run_on(
        supervisor,
        "cronjob-controller",
        api,
        cronjob::CronJobController::new(
            client.clone(),
            std::sync::Arc::new(crate::clock::SystemClock),
        ),
        Options::resync(cronjob::RESYNC).with_concurrency(2),
    );
    // Workers as kube-controller-manager's `--concurrent-service-endpoint-syncs` and
    // `--concurrent-endpoint-syncs` defaults.
    run_on(
        supervisor,
        "endpointslice-controller",
        api,
        endpoints::slice_controller::EndpointSliceController::new(client.clone(), &informers),
        workload,
    );
    run_on(
        supervisor,
        "ingress-status-controller",
        api,
        ingress_status::IngressStatusController::new(client.clone()),
        Options::resync(ingress_status::RESYNC).with_concurrency(2),
    );
    run_on(
        supervisor,
        "endpoints-controller",
        api,
        endpoints::endpoints_controller::EndpointsController::new(client, &informers),
        workload,
    );
}

/// Picks up `cloudcore node revoke` (run from another process) and closes the revoked nodes'
/// sessions. Logins and reports are refused from the refreshed list at once.
async fn watch_revocations(pki: Arc<Pki>, hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for node in pki.refresh_revocations() {
            warn!(%node, "node revoked");
            hub.revoke_session(&node).await;
        }
    }
}

async fn compact_periodically(store: SledStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let rev = store.revision();
        if rev > SHARD_HISTORY {
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.compact_shard_logs(rev - SHARD_HISTORY))
                .await
            {
                Ok(Ok(n)) => info!(removed = n, "compacted shard logs"),
                Ok(Err(e)) => warn!(error = %e, "shard log compaction failed"),
                Err(e) => warn!(error = %e, "shard log compaction panicked"),
            }
        }
    }
}

/// How long an API connection may take at each stage before cloudcore closes it. Connections
/// that never get to a request are what an anonymous flood is made of, so every stage before the
/// first request is short; a connection that has served a request is a client's keep-alive
/// connection and may stay idle longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// TCP accepted to TLS handshake done (`--handshake-timeout`, 10 s).
    pub handshake: Duration,
    /// HTTP/1: first byte of a request's headers to their end (`--header-read-timeout`, 10 s).
    /// hyper starts this timer as soon as an HTTP/1 connection is idle, so it is also the
    /// idle timeout of HTTP/1 keep-alive connections; kubectl speaks HTTP/2.
    pub header_read: Duration,
    /// TLS done to the first request (`--first-request-timeout`, 10 s).
    pub first_request: Duration,
    /// No request in flight, after at least one was served (5 min). A watch is a request in
    /// flight for as long as it runs, so watches are never idle.
    pub idle: Duration,
    /// HTTP/2 keep-alive ping interval; a client that does not answer within `h2_ping_timeout`
    /// is closed, so that half-open connections (a client that vanished) give their slot back.
    pub h2_ping_interval: Duration,
    /// How long to wait for a keep-alive ping's answer.
    pub h2_ping_timeout: Duration,
}

impl Default for ConnTimeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            h2_ping_interval: Duration::from_secs(30),
            h2_ping_timeout: Duration::from_secs(20),
        }
    }
}

/// How long a connection asked to close gracefully (idle, or a request's headers never
/// finishing) may take before it is dropped.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(5);

async fn serve_https(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    limits: ConnLimits,
    timeouts: ConnTimeouts,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.h2_ping_interval)
        .keep_alive_timeout(timeouts.h2_ping_timeout);
    let http = Arc::new(http);
    let mut backoff = AcceptBackoff::new();
    let mut accept_log = LogLimiter::new(Duration::from_secs(1));
    let mut reject_log = LogLimiter::new(Duration::from_secs(1));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => {
                backoff.succeeded();
                c
            }
            Err(e) => {
                let (kind, exhausted) = accept_error_kind(&e);
                metrics::counter!("skerry_api_accept_errors_total", "kind" => kind).increment(1);
                if let Some(suppressed) = accept_log.allow(tokio::time::Instant::now()) {
                    warn!(error = %e, kind, suppressed, open = limits.open(), "API accept failed");
                }
                if exhausted {
                    tokio::time::sleep(backoff.failed()).await;
                }
                continue;
            }
        };
        // Refused before the TLS handshake, which is what costs CPU and memory.
        let permit = match limits.try_acquire(remote.ip()) {
            Ok(p) => p,
            Err(reason) => {
                metrics::counter!("skerry_api_connections_rejected_total", "reason" => reason.label())
                    .increment(1);
                if let Some(suppressed) = reject_log.allow(tokio::time::Instant::now()) {
                    warn!(%remote, reason = reason.label(), suppressed, open = limits.open(),
                        from_address = limits.open_from(remote.ip()),
                        "API connection refused: over the connection cap (--max-conns-per-address, --max-conns)");
                }
                drop(tcp);
                continue;
            }
        };
        tokio::spawn(serve_connection(
            tcp,
            remote,
            permit,
            acceptor.clone(),
            app.clone(),
            http.clone(),
            timeouts,
        ));
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    permit: ConnPermit,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    http: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    timeouts: ConnTimeouts,
) {
    let stream = match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("skerry_api_handshake_timeouts_total").increment(1);
            tracing::debug!(%remote, timeout = ?timeouts.handshake, "TLS handshake timed out");
            return;
        }
    };
    // The client certificate (verified by rustls against the CA) names the user for every
    // request on this connection; `api::auth` decides what it may do.
    let peer = crate::api::auth::PeerCert(
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| crate::pki::user_from_cert(der)),
    );
    let activity = Activity::new();
    let tracked = activity.clone();
    let service = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let in_flight = tracked.begin();
        let app = app.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(app, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    // The permit travels with the socket, so that an upgraded connection (which outlives this
    // task's HTTP handling) keeps its slot until it is closed.
    let io = TokioIo::new(Permitted {
        inner: stream,
        _permit: permit,
    });
    let conn = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        }
        phase = activity.idle_expired(timeouts.first_request, timeouts.idle) => {
            metrics::counter!("skerry_api_idle_closes_total", "phase" => phase).increment(1);
            tracing::debug!(%remote, phase, "closing idle API connection");
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(GRACEFUL_CLOSE, conn.as_mut()).await.is_err() {
                tracing::debug!(%remote, "idle API connection did not close gracefully; dropped");
            }
        }
    }
}

/// What a connection is doing, for its idle timeouts: requests in flight (a request is in
/// flight until its response body is done or dropped), whether one was ever served, and since
/// when none has been in flight.
#[derive(Debug)]
struct Activity {
    state: std::sync::Mutex<ActivityState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    served: bool,
    idle_since: tokio::time::Instant,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(ActivityState {
                in_flight: 0,
                served: false,
                idle_since: tokio::time::Instant::now(),
            }),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts; it ends when the returned guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.in_flight += 1;
        s.served = true;
        drop(s);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves when the connection has been idle too long: `first_request` after the handshake
    /// if no request came, `idle` after the last request ended otherwise. Returns the phase
    /// (the metric label).
    async fn idle_expired(&self, first_request: Duration, idle: Duration) -> &'static str {
        loop {
            // Created before reading the state, so that a change in between is not missed.
            let changed = self.changed.notified();
            let deadline = {
                let s = self.state();
                (s.in_flight == 0).then(|| {
                    if s.served {
                        (s.idle_since + idle, "after_request")
                    } else {
                        (s.idle_since + first_request, "before_first_request")
                    }
                })
            };
            match deadline {
                None => changed.await,
                Some((at, phase)) => tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(at) => return phase,
                },
            }
        }
    }
}

/// A request in flight on a connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        s.idle_since = tokio::time::Instant::now();
        drop(s);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct TrackedBody {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's stream with its slot under the connection caps.
struct Permitted<S> {
    inner: S,
    _permit: ConnPermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Permitted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Permitted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Activity;
    use std::time::Duration;

    const FIRST: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(300);

    /// Whether the idle timer fires within `within` (paused time: advanced instantly).
    async fn fires_within(activity: &Activity, within: Duration) -> Option<&'static str> {
        tokio::time::timeout(within, activity.idle_expired(FIRST, IDLE))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_closed_after_the_first_request_timeout() {
        let a = Activity::new();
        assert_eq!(
            fires_within(&a, FIRST - Duration::from_millis(1)).await,
            None
        );
        assert_eq!(
            fires_within(&a, Duration::from_millis(2)).await,
            Some("before_first_request")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_and_the_long_timeout_follows_it() {
        let a = Activity::new();
        let watch = a.begin();
        // A watch may run for hours with nothing to send.
        assert_eq!(fires_within(&a, Duration::from_secs(3 * 3600)).await, None);
        drop(watch);
        assert_eq!(fires_within(&a, IDLE - Duration::from_secs(1)).await, None);
        assert_eq!(
            fires_within(&a, Duration::from_secs(2)).await,
            Some("after_request")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_starts_while_the_timer_runs_stops_it() {
        let a = Activity::new();
        let timer = a.clone();
        let fired = tokio::spawn(async move { timer.idle_expired(FIRST, IDLE).await });
        tokio::time::sleep(FIRST / 2).await;
        let request = a.begin();
        tokio::time::sleep(FIRST * 2).await;
        assert!(
            !fired.is_finished(),
            "the timer fired under a request in flight"
        );
        drop(request);
        tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
        assert_eq!(fired.await.unwrap(), "after_request");
    }
}
