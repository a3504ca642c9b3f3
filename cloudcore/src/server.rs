//! `cloudcore serve`: wires the store, PKI, API, hub, ingest, scheduler, controllers and broker
//! together.

use crate::api::client::{identity, Client};
use crate::api::{router, ApiState};
use crate::hub::{self, Hub, HubConfig};
use crate::ingest::{self, MqttTarget};
use crate::pki::Pki;
use crate::store::{SledStore, Store};
use crate::{broker, projection, scheduler};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

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
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/skerry/cloudcore"),
            api_addr: "0.0.0.0:6443".parse().expect("static"),
            hub: HubConfig::default(),
            mqtt_url: None,
            mqtt_listen: "0.0.0.0:1883".parse().expect("static"),
            server_names: vec![],
            watch_history: crate::api::history::DEFAULT_CAPACITY,
            node_lifecycle: crate::controllers::node_lifecycle::Config::default(),
            services: crate::api::services::ServiceNetwork::default(),
        }
    }
}

/// Opens the store of a data dir.
pub fn open_store(data_dir: &std::path::Path) -> anyhow::Result<SledStore> {
    Ok(SledStore::open(&data_dir.join("store"), projection::shard)?)
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
    let sled = open_store(&cfg.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(sled.clone());
    info!(data_dir = %cfg.data_dir.display(), revision = store.revision(), ca_hash = %pki.ca_hash(), "store and PKI ready");

    let mqtt = match &cfg.mqtt_url {
        Some(url) => MqttTarget::parse(url).map_err(anyhow::Error::msg)?,
        None => {
            broker::start(cfg.mqtt_listen, pki.clone())?;
            info!(listen = %cfg.mqtt_listen, "embedded MQTT broker started");
            let host = if cfg.mqtt_listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                cfg.mqtt_listen.ip().to_string()
            };
            MqttTarget {
                host,
                port: cfg.mqtt_listen.port(),
            }
        }
    };

    let endpoint = hub::endpoint(&pki, &cfg.hub)?;
    info!(listen = %endpoint.local_addr()?, "hub listening for edge nodes (QUIC)");

    tokio::spawn(compact_periodically(sled));

    let tls = Arc::new(pki.api_tls()?);
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
    info!(service_cidr = %cfg.services.cidr, node_ports = %cfg.services.node_ports, "Service address pools");
    let api = ApiState::with_watch_history(store.clone(), metrics_render, cfg.watch_history)
        .with_registry(registry);
    tokio::spawn(ingest::run(
        api.clone(),
        pki.clone(),
        mqtt,
        format!("skerry-cloudcore-ingest-{}", cfg.api_addr.port()),
    ));
    tokio::spawn(scheduler::run(Client::with_identity(
        api.clone(),
        identity::SCHEDULER,
    )));
    let hub = Hub::new(
        Client::with_identity(api.clone(), identity::HUB),
        pki.clone(),
    );
    tokio::spawn(hub.clone().run(endpoint));
    tokio::spawn(watch_revocations(pki.clone(), hub.clone()));
    tokio::spawn(crate::controllers::node_lifecycle::run(
        Client::with_identity(api.clone(), identity::NODE_CONTROLLER),
        cfg.node_lifecycle,
    ));
    spawn_workload_controllers(&api);
    let app = router(api).layer(axum::middleware::from_fn_with_state(
        auth,
        crate::api::auth::guard,
    ));
    tokio::spawn(serve_https(listener, tls, app));

    shutdown_signal().await;
    info!("shutting down");
    Ok(())
}

/// How often the workload controllers reconcile every object even without events.
const CONTROLLER_RESYNC: Duration = Duration::from_secs(30);

/// Starts the controllers that run on the shared runner (namespace, garbage collector and the
/// workload controllers), writing through the in-process client.
pub fn spawn_workload_controllers(api: &ApiState) {
    use crate::controllers::{
        daemonset, deployment, garbage_collector, namespace, replicaset, runner, statefulset,
    };
    use runner::Options;
    let client = crate::api::client::Client::new(api.clone());
    let informers = crate::controllers::informer::Informers::start(api.store.clone());
    let events = || api.store.subscribe();
    tokio::spawn(runner::run(
        Arc::new(namespace::NamespaceController::new(client.clone())),
        events(),
        Options::resync(namespace::RESYNC).with_concurrency(5),
    ));
    // Workers per controller, as kube-controller-manager's defaults (`--concurrent-*-syncs`).
    tokio::spawn(runner::run(
        Arc::new(garbage_collector::GarbageCollector::new(client.clone())),
        events(),
        Options::resync(garbage_collector::RESYNC).with_concurrency(20),
    ));
    tokio::spawn(runner::run(
        Arc::new(replicaset::ReplicaSetController::new(
            client.clone(),
            &informers,
        )),
        events(),
        Options::resync(CONTROLLER_RESYNC).with_concurrency(5),
    ));
    tokio::spawn(runner::run(
        Arc::new(deployment::DeploymentController::new(
            client.clone(),
            &informers,
        )),
        events(),
        Options::resync(CONTROLLER_RESYNC).with_concurrency(5),
    ));
    tokio::spawn(runner::run(
        Arc::new(daemonset::DaemonSetController::new(
            client.clone(),
            &informers,
        )),
        events(),
        Options::resync(daemonset::RESYNC).with_concurrency(2),
    ));
    tokio::spawn(runner::run(
        Arc::new(statefulset::StatefulSetController::new(client, &informers)),
        events(),
        Options::resync(statefulset::RESYNC).with_concurrency(5),
    ));
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

async fn serve_https(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // The client certificate (verified by rustls against the CA) names the user for
            // every request on this connection; `api::auth` decides what it may do.
            let peer = crate::api::auth::PeerCert(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|der| crate::pki::user_from_cert(der)),
            );
            let app = tower::ServiceBuilder::new()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    req
                })
                .service(app);
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "API connection ended with an error");
            }
        });
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
