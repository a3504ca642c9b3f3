//! `edgecore run`: the agent. Reconciles pods from the cache first, then keeps the link, the
//! reporter and the heartbeat going. Nothing here waits for the cloud.

use crate::cache::{Cache, DesiredState};
use crate::config::{self, EdgeConfig};
use crate::identity::IdentityPaths;
use crate::link::{self, LinkConfig, LinkState};
use crate::network::cni::CniConfig;
use crate::network::view::ViewSender;
use crate::pods::{Desired, PodManager, PodManagerConfig};
use crate::report::{self, Outbox, PublisherConfig};
use crate::runtime::cri::{self, CriConfig, CriRuntime};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::Runtime;
use crate::volumes::Volumes;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use wire::backoff::Backoff;
use wire::supervisor::{Policy, Supervisor};

/// Runtime settings of `edgecore run` (beyond the persistent [`EdgeConfig`]).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Data dir (cache, identity, pods).
    pub data_dir: PathBuf,
    /// IP reported for the node and for pods of the process runtime; detected if `None`.
    pub node_ip: Option<String>,
    /// Address of the `/metrics` and `/healthz` endpoint.
    pub metrics_addr: SocketAddr,
    /// How often the node's conditions are measured (a change is reported at once).
    pub heartbeat: Duration,
    /// How often an unchanged node status is reported anyway.
    pub node_status_report: Duration,
    /// Keep-alive of the QUIC link.
    pub keep_alive: Duration,
    /// Idle timeout of the QUIC link.
    pub idle_timeout: Duration,
    /// How long the cloud may leave the edge unanswered before it reconnects.
    pub deaf_after: Duration,
    /// MQTT keep-alive.
    pub mqtt_keep_alive: Duration,
    /// How long a published report may wait for its acknowledgement.
    pub mqtt_ack_timeout: Duration,
    /// First restart back-off of a failed container (kubelet: 10 s).
    pub restart_backoff_base: Duration,
    /// The container runtime that runs the pods.
    pub runtime: RuntimeKind,
    /// Pods and reserved resources the node offers.
    pub capacity: crate::report::Capacity,
    /// Thresholds of the pressure conditions.
    pub thresholds: crate::node_health::Thresholds,
    /// The image filesystem's directory, when images are not in the data directory.
    pub image_dir: Option<PathBuf>,
    /// Where to write the CNI configuration from the node's pod CIDR; `None` leaves the CNI
    /// configuration to the admin.
    pub cni: Option<crate::network::cni::CniConfig>,
    /// The Service proxy (its nftables table); `None` runs none.
    pub proxy: Option<crate::network::proxy::ProxyConfig>,
    /// The cluster DNS server; `None` runs none.
    pub dns: Option<crate::network::dns::DnsConfig>,
    /// The pod overlay; `None` runs none.
    pub overlay: Option<crate::network::overlay::OverlayConfig>,
    /// The Ingress router (listens once the node serves an Ingress); `None` runs none.
    pub ingress: Option<crate::network::ingress::RouterConfig>,
}

/// Which container runtime runs the pods. One per node: pods started by one are not seen by
/// the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Native processes supervised by edgecore's shims (no containerd needed).
    Process {
        /// Put every container in cgroups of its own with its limits (when the host allows);
        /// off, a pod with limits is refused.
        cgroups: bool,
    },
    /// containerd over CRI, at this socket.
    Cri {
        /// containerd's socket.
        socket: PathBuf,
    },
}

/// Connects to containerd for `data_dir`'s edgecore, waiting (with back-off, until
/// SIGTERM/SIGINT) while containerd is not up yet: on boot the two start together, and without
/// a runtime there is nothing to run.
async fn connect_cri(
    data_dir: &std::path::Path,
    socket: &std::path::Path,
    cache: &Cache,
) -> anyhow::Result<CriRuntime> {
    let instance = cri::load_instance_id(data_dir)?;
    let mut config = CriConfig::new(socket.to_path_buf(), data_dir.join("pods"), instance);
    // ClusterFirst pods get the cluster DNS address and domain the cloud sent (cached).
    let cache = cache.clone();
    config.network = crate::runtime::dns::NetworkSource::new(move || cache.network().network);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let delay = match CriRuntime::connect(config.clone()).await {
            Ok(runtime) => return Ok(runtime),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "containerd is not answering yet");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown_signal() => anyhow::bail!("stopped while waiting for containerd at {}", socket.display()),
        }
    }
}

/// The cached slice as the pod manager takes it: unknown while the cache is being rebuilt from
/// the cloud, or while some of its pod entries cannot be read (their pods may be running).
fn desired(cache: &Cache) -> Desired {
    let (pods, corrupt) = cache.pods_checked();
    let mut unknown = cache.unknown_reason();
    if unknown.is_none() && corrupt > 0 {
        // Damage found while running: the cloud's full slice replaces it.
        let why = format!("{corrupt} cached pods cannot be decoded");
        if let Err(e) = cache.forget_for_resync(&why) {
            tracing::error!(error = %e, "cannot ask for a full resync");
        }
        unknown = Some(why);
    }
    Desired {
        pods,
        configs: cache.configs(),
        unknown,
    }
}

/// Brings the node's network view (and its CNI configuration) up to date with the cache; runs
/// before the pods of the same cache state are synced, so a sandbox is never made before the
/// CNI configuration of its node's CIDR is written. The view is rebuilt from the cache only
/// when a batch has written network objects since `seen` (the cache's
/// [`Cache::network_generation`], updated here); `None` reads it whatever.
fn sync_network(cache: &Cache, view: &ViewSender, cni: Option<&CniConfig>, seen: &mut Option<u64>) {
    // Read before the tree: a batch landing in between is read now and again next pass.
    let generation = cache.network_generation();
    if *seen != Some(generation) {
        crate::network::publish::refresh_from_cache(view, cache);
        *seen = Some(generation);
    }
    let cidr = view
        .borrow()
        .network
        .as_ref()
        .and_then(|n| n.pod_cidr.clone());
    if let (Some(cni), Some(cidr)) = (cni, cidr) {
        if let Err(e) = crate::network::cni::ensure(cni, &cidr) {
            tracing::error!(error = %e, file = %cni.path().display(),
                "cannot write the CNI configuration for the node's pod CIDR; pods keep the \
                 configuration containerd has");
        }
    }
}

/// Detects the address this machine uses to reach `server` (no packet is sent).
async fn detect_ip(server: &str) -> Option<String> {
    let (addr, _) = link::resolve(server).await.ok()?;
    let sock = std::net::UdpSocket::bind(if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Runs the agent until SIGTERM/SIGINT. Pods keep running after edgecore stops, as with kubelet.
pub async fn run(
    cfg: EdgeConfig,
    opts: AgentOptions,
    metrics_render: Arc<dyn Fn() -> String + Send + Sync>,
) -> anyhow::Result<()> {
    let node = cfg.node_name.clone();
    let report_key = crate::identity::read_report_key(&IdentityPaths::new(&opts.data_dir))?;
    let cache = Cache::open(&opts.data_dir.join("cache"))?;
    let outbox = Outbox::open(cache.db(), &node).context("cannot open the status outbox")?;
    let host_ip = match &opts.node_ip {
        Some(ip) => ip.clone(),
        None => detect_ip(&cfg.server)
            .await
            .unwrap_or_else(|| "127.0.0.1".into()),
    };
    let runtime: Arc<dyn Runtime> = match &opts.runtime {
        RuntimeKind::Process { cgroups } => {
            let shim = std::env::current_exe()
                .context("cannot find edgecore's own binary for the process shim")?;
            let runtime = ProcessRuntime::new(opts.data_dir.join("pods"), shim, host_ip.clone());
            Arc::new(if *cgroups {
                runtime
            } else {
                runtime.without_cgroups()
            })
        }
        RuntimeKind::Cri { socket } => {
            let cri = connect_cri(&opts.data_dir, socket, &cache).await?;
            // containerd appends to container logs forever; kubelet's rotation, here.
            cri.spawn_log_rotation(cri::LogRotation::default());
            Arc::new(cri)
        }
    };
    let health_runtime = runtime.clone();
    let log_format = match &opts.runtime {
        RuntimeKind::Process { .. } => crate::logs::LogFormat::Raw,
        RuntimeKind::Cri { .. } => crate::logs::LogFormat::Cri,
    };
    let streams = crate::logs::serve::StreamServer::new(
        crate::logs::LogReader::new(runtime.clone(), opts.data_dir.join("pods"), log_format),
        runtime.clone(),
    );
    let mut pod_config = PodManagerConfig::default();
    pod_config.backoff.base = opts.restart_backoff_base;
    let (view_tx, view_rx) = crate::network::publish::channel();
    let view_tx = Arc::new(view_tx);
    // The node's own readiness reaches its routing as the prober decides it, cloud or not.
    let statuses = Arc::new(crate::network::publish::ReadinessTap::new(
        Arc::new(outbox.clone()),
        (*view_tx).clone(),
    ));
    let manager = Arc::new(
        PodManager::with_config(runtime, statuses, node.clone(), host_ip.clone(), pod_config)
            .with_volumes(Volumes::new(opts.data_dir.join("pods"))),
    );

    // Offline autonomy: what the cache holds runs now, before any attempt to reach the cloud.
    let cached = desired(&cache);
    info!(%node, pods = cached.pods.len(), configs = cached.configs.len(),
          acked_revision = cache.acked_revision(), %host_ip,
          desired_state_unknown = ?cached.unknown, "starting pods from the cache");
    let mut network_seen = None;
    sync_network(&cache, &view_tx, opts.cni.as_ref(), &mut network_seen);
    manager.sync(cached).await;

    // Every long-running loop runs supervised: one that ends or panics is restarted, counted,
    // reported by /healthz, and past a bound the process exits for systemd to restart it.
    let supervisor = Supervisor::new(Policy::default());
    let changed = Arc::new(Notify::new());
    let (state_tx, state_rx) = watch::channel(LinkState::Disconnected);
    let state_tx = Arc::new(state_tx);
    // The broker's CONNACK wakes the sync link out of its back-off (see `LinkConfig::wake`).
    let broker_connected = Arc::new(Notify::new());
    // The link's connection while a session is up, for the overlay's datagrams.
    let (connection_tx, connection_rx) = watch::channel(None);
    let connection_tx = Arc::new(connection_tx);
    {
        let link_cfg = LinkConfig {
            server: cfg.server.clone(),
            server_name: cfg.server_name.clone(),
            node_name: node.clone(),
            keep_alive: opts.keep_alive,
            idle_timeout: opts.idle_timeout,
            deaf_after: opts.deaf_after,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            wake: broker_connected.clone(),
            connection: connection_tx.clone(),
        };
        let (paths, cache, changed) = (
            IdentityPaths::new(&opts.data_dir),
            cache.clone(),
            changed.clone(),
        );
        supervisor.spawn("link", move || {
            link::run(
                link_cfg.clone(),
                paths.clone(),
                cache.clone(),
                changed.clone(),
                state_tx.clone(),
                Some(streams.clone()),
            )
        });
    }
    {
        let manager = manager.clone();
        let cache = cache.clone();
        let wake = manager.wakeups();
        let (view_tx, cni) = (view_tx.clone(), opts.cni.clone());
        supervisor.spawn("pod-sync", move || {
            let (manager, cache, changed, wake, view_tx, cni) = (
                manager.clone(),
                cache.clone(),
                changed.clone(),
                wake.clone(),
                view_tx.clone(),
                cni.clone(),
            );
            async move {
                // A restarted loop reads the tree once more, then only after network batches.
                let mut network_seen: Option<u64> = None;
                loop {
                    // Level-triggered: every wake-up hands the whole cached slice to the
                    // manager; the periodic pass heals anything a missed notification left.
                    let woken = async {
                        tokio::select! {
                            _ = changed.notified() => {}
                            _ = wake.notified() => {}
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), woken).await;
                    sync_network(&cache, &view_tx, cni.as_ref(), &mut network_seen);
                    manager.sync(desired(&cache)).await;
                    metrics::gauge!("skerry_edge_pod_workers")
                        .set(manager.worker_count().await as f64);
                }
            }
        });
    }

    let (mqtt_host, mqtt_port) =
        config::parse_mqtt_url(&cfg.mqtt_url()).map_err(anyhow::Error::msg)?;
    {
        let outbox = outbox.clone();
        let publisher = PublisherConfig {
            host: mqtt_host,
            port: mqtt_port,
            node: node.clone(),
            report_key,
            tls: std::sync::Arc::new(crate::identity::mqtt_client_tls(&IdentityPaths::new(
                &opts.data_dir,
            ))?),
            connected: broker_connected.clone(),
            keep_alive: opts.mqtt_keep_alive,
            ack_timeout: opts.mqtt_ack_timeout,
        };
        let link = state_rx.clone();
        supervisor.spawn("publisher", move || {
            report::publish(outbox.clone(), publisher.clone(), link.clone())
        });
    }
    let checker = crate::node_health::Checker {
        runtime: health_runtime,
        cache: cache.db().clone(),
        data_dir: opts.data_dir.clone(),
        image_dir: opts.image_dir.clone(),
        thresholds: opts.thresholds.clone(),
        deadline: crate::node_health::CHECK_DEADLINE,
    };
    {
        let (outbox, node, host_ip) = (outbox.clone(), node.clone(), host_ip.clone());
        let timing = report::HeartbeatTiming {
            measure: opts.heartbeat,
            report: opts.node_status_report,
        };
        let (capacity, link) = (opts.capacity, state_rx.clone());
        supervisor.spawn("heartbeat", move || {
            report::heartbeat(
                outbox.clone(),
                checker.clone(),
                node.clone(),
                host_ip.clone(),
                capacity,
                timing,
                link.clone(),
            )
        });
    }
    if let Some(proxy) = opts.proxy.clone() {
        // The table outlives edgecore on purpose, as kube-proxy's rules do: Services keep
        // routing while edgecore restarts or is upgraded, and the next start rebuilds it from
        // the cache. So the proxy is never asked to shut down here.
        let view = view_rx.clone();
        supervisor.spawn("service-proxy", move || {
            crate::network::proxy::run(proxy.clone(), view.clone(), std::future::pending())
        });
    }
    if opts.overlay.is_none() {
        // No overlay reads the link's datagrams, but the hub still sends its liveness probes
        // while streams are open (`protocol::overlay::is_link_probe`): read and drop them, so
        // they do not pile up in the connection's receive queue.
        let link = connection_rx.clone();
        supervisor.spawn("link-datagrams", move || {
            crate::link::drop_datagrams(link.clone())
        });
    }
    if let Some(overlay) = opts.overlay.clone() {
        let (view, link) = (view_rx.clone(), connection_rx.clone());
        supervisor.spawn("overlay", move || {
            let (overlay, view, link) = (overlay.clone(), view.clone(), link.clone());
            async move {
                // A device that fails mid-way ends this run; the supervisor restarts it with
                // back-off (the device is made afresh) and /healthz reports it.
                if let Err(e) = crate::network::overlay::run(overlay, view, link).await {
                    tracing::error!(error = %e, "the pod overlay stopped");
                }
            }
        });
    }
    if let Some(dns) = opts.dns.clone() {
        let view = view_rx.clone();
        supervisor.spawn("cluster-dns", move || {
            let (dns, view) = (dns.clone(), view.clone());
            async move {
                // An error (a socket that cannot be bound, an unreadable resolv.conf) ends this
                // run; the supervisor restarts it with back-off and /healthz reports it.
                if let Err(e) = crate::network::dns::run(dns, view, std::future::pending()).await {
                    tracing::error!(error = %e, "the cluster DNS server stopped");
                }
            }
        });
    }
    if let Some(ingress) = opts.ingress.clone() {
        let view = view_rx.clone();
        supervisor.spawn("ingress-router", move || {
            let (ingress, view) = (ingress.clone(), view.clone());
            async move {
                if let Err(e) =
                    crate::network::ingress::run(ingress, view, std::future::pending()).await
                {
                    tracing::error!(error = %e, "the ingress router stopped");
                }
            }
        });
    }
    {
        let (addr, sup) = (opts.metrics_addr, supervisor.clone());
        supervisor.spawn("metrics-server", move || {
            serve_metrics(addr, metrics_render.clone(), state_rx.clone(), sup.clone())
        });
    }

    shutdown_signal().await;
    info!("stopping edgecore; pods keep running");
    manager.shutdown().await;
    cache.db().flush_async().await.ok();
    Ok(())
}

/// Serves `/metrics` and `/healthz`. The health answer is the supervisor's verdict on every
/// subsystem (kube-apiserver's format; `?verbose` lists each); a node without its cloud is
/// healthy (it runs on from its cache), so the link state is shown but does not fail it.
async fn serve_metrics(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    link: watch::Receiver<LinkState>,
    supervisor: Supervisor,
) {
    use axum::extract::RawQuery;
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = render.clone();
                async move { r() }
            }),
        )
        .route(
            "/healthz",
            get(move |RawQuery(query): RawQuery| {
                let verbose = query.is_some_and(|q| {
                    q.split('&')
                        .any(|p| p == "verbose" || p.starts_with("verbose="))
                });
                let (ok, mut text) = supervisor.render(verbose, &[]);
                if verbose {
                    text.push_str(&format!("link: {:?}\n", *link.borrow()));
                }
                let code = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                async move { (code, text) }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            info!(%addr, "metrics endpoint listening");
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve metrics; pick another --metrics-addr"),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
