//! The `edgecore` binary: a thin command line over the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edgecore::agent::{self, AgentOptions, RuntimeKind};
use edgecore::config::{self, EdgeConfig};
use edgecore::identity::IdentityPaths;
use edgecore::link::{self, JoinParams};
use edgecore::runtime::Runtime;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Skerry's edge agent.
#[derive(Debug, Parser)]
#[command(
    name = "edgecore",
    version,
    about = "Skerry edge agent: runs this node's pods, online or not"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line for machines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SKERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Directory of the cache, identity and pods.
    #[arg(
        long,
        default_value = "/var/lib/skerry/edgecore",
        global = true,
        env = "SKERRY_DATA_DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the largest variant (every `run` flag) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Join a cluster once: trade a bootstrap token for this node's certificate.
    Join {
        /// cloudcore hub address, HOST:PORT (UDP, default port 7443).
        #[arg(long)]
        server: String,
        /// Bootstrap token from `cloudcore token create`.
        #[arg(long, env = "SKERRY_JOIN_TOKEN")]
        token: String,
        /// CA pin from `cloudcore token create` (sha256:...).
        #[arg(long)]
        ca_hash: String,
        /// Node name; defaults to the hostname.
        #[arg(long)]
        node_name: Option<String>,
        /// TLS name of the hub if not the host in --server.
        #[arg(long)]
        server_name: Option<String>,
        /// MQTT broker URL (TLS only); default mqtts://<server host>:8883.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Node label key=value (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long to keep trying while the cloud is busy or unreachable, in seconds.
        #[arg(long, default_value_t = 120)]
        join_timeout_secs: u64,
    },
    /// Run the agent.
    Run {
        /// Override the hub address from the join.
        #[arg(long)]
        server: Option<String>,
        /// Override the MQTT broker URL.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// IP to report for this node (detected from the route to the server if unset).
        #[arg(long)]
        node_ip: Option<String>,
        /// Address of /metrics and /healthz.
        #[arg(long, default_value = "127.0.0.1:10350")]
        metrics_addr: SocketAddr,
        /// Seconds between measurements of the node's conditions; a change is reported at once
        /// (kubelet's nodeStatusUpdateFrequency).
        #[arg(long, default_value_t = 10)]
        heartbeat_secs: u64,
        /// Seconds after which an unchanged node status is reported again (kubelet's
        /// nodeStatusReportFrequency). Liveness does not depend on it: the link's keep-alive
        /// proves the node alive.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        node_status_report_secs: u64,
        /// Seconds between keep-alives of the cloud link when it is idle. They hold NAT bindings
        /// open (UDP mappings often expire after 30 s) and prove the node alive to the cloud,
        /// whose node-monitor grace period should be at least twice this.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        keepalive_secs: u64,
        /// Seconds of silence after which the cloud link is considered dead.
        #[arg(long, default_value_t = 60)]
        idle_timeout_secs: u64,
        /// Seconds the cloud may leave a keep-alive or a message unanswered before the edge
        /// judges the link cut towards it and reconnects.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
        deaf_after_secs: u64,
        /// MQTT keep-alive, in seconds: how long the status connection may stay silent. Status
        /// reports are durable in the outbox, so a connection a NAT dropped meanwhile costs one
        /// reconnect at the next report, never a report.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=65535))]
        mqtt_keepalive_secs: u64,
        /// Seconds a published status report may wait for the broker's acknowledgement before
        /// the edge drops the connection and reconnects (a status link cut towards the edge).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        mqtt_ack_timeout_secs: u64,
        /// First restart back-off of a failed container, in ms (kubelet's is 10 s).
        #[arg(
            long,
            default_value_t = 10_000,
            env = "SKERRY_RESTART_BACKOFF_BASE_MS",
            hide = true
        )]
        restart_backoff_base_ms: u64,
        /// Most pods this node runs (kubelet's `--max-pods`).
        #[arg(long, default_value_t = 110)]
        max_pods: u32,
        /// Resources held back from pods, kubelet's syntax: `cpu=500m,memory=1Gi`.
        #[arg(long, default_value = "")]
        system_reserved: String,
        /// Pressure thresholds, kubelet's `--eviction-hard` syntax
        /// (`memory.available<100Mi,nodefs.available<10%,...`).
        #[arg(long, default_value = edgecore::node_health::DEFAULT_EVICTION_HARD)]
        eviction_hard: String,
        /// Directory on the image filesystem, for `imagefs.*` thresholds (containerd's root,
        /// `/var/lib/containerd`, when it exists and the runtime is cri); the data directory's
        /// filesystem otherwise.
        #[arg(long)]
        image_fs_dir: Option<PathBuf>,
        /// containerd's CNI configuration directory: edgecore writes the node's conflist there
        /// from the pod CIDR the cloud allocated (`spec.podCIDR`), so pod addresses are unique
        /// across the cluster. Unset: the CNI configuration is left to the admin.
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// CNI network name in the written conflist.
        #[arg(long, default_value = "skerry")]
        cni_network: String,
        /// Bridge device of the written conflist.
        #[arg(long, default_value = "skerry0")]
        cni_bridge: String,
        /// Run the Service proxy: cluster IPs and node ports routed by one nftables table
        /// (needs root and Debian's nftables and conntrack).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        service_proxy: bool,
        /// The proxy's nftables table (family ip). It is left in place when edgecore stops, so
        /// Services keep routing through a restart; `nft delete table ip NAME` removes it.
        #[arg(long, default_value = "skerry")]
        proxy_table: String,
        /// Serve the cluster DNS on the node (needs root): pods' `ClusterFirst` nameserver,
        /// answered from the cache, on the cluster DNS address carried by `--dns-interface`.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        cluster_dns: bool,
        /// The node-local interface that carries the cluster DNS address.
        #[arg(long, default_value = edgecore::network::dns::DEFAULT_INTERFACE)]
        dns_interface: String,
        /// Reach pods on other nodes by their pod IPs through the pod overlay (a TUN device
        /// carried over the node's QUIC link, relayed by the hub; needs root). Used once the
        /// cloud sends the node its overlay routes.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        overlay: bool,
        /// The overlay's TUN device.
        #[arg(long, default_value = "skerry-ovl0")]
        overlay_interface: String,
        /// The overlay's nftables table (family ip; its masquerade rule for host traffic into
        /// the overlay), left in place when edgecore stops like the proxy's.
        #[arg(long, default_value = "skerry-overlay")]
        overlay_table: String,
        /// Send pod packets straight to the node holding their destination when it can be
        /// reached (a mTLS QUIC connection between the two nodes, which the hub tells them
        /// about), and through the hub only when it cannot. `false`: always through the hub.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        overlay_direct: bool,
        /// Where the Ingress router listens for HTTP (`off`: no HTTP listener). It opens once
        /// the node serves an Ingress (an IngressClass of controller skerry.io/edge-ingress
        /// selects the node), so a node that serves none holds no port.
        #[arg(long, default_value = "0.0.0.0:80", value_parser = parse_listen)]
        ingress_http_addr: Listen,
        /// Where the Ingress router listens for HTTPS (`off`: no HTTPS listener); certificates
        /// come from the Ingresses' TLS Secrets, chosen by SNI.
        #[arg(long, default_value = "0.0.0.0:443", value_parser = parse_listen)]
        ingress_https_addr: Listen,
        /// Most client connections the Ingress router holds at once; more are closed at
        /// accept with a log line.
        #[arg(long, default_value_t = 4096)]
        ingress_max_connections: usize,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Print a container's log from this node (works offline and without the agent running).
    Logs {
        /// Pod as NAME or NAMESPACE/NAME.
        pod: String,
        /// Container name (default: the pod's only or first container).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// The previous terminated instance's log.
        #[arg(short = 'p', long)]
        previous: bool,
        /// Keep printing appended lines until the container ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Prefix lines with their time (cri runtime).
        #[arg(long)]
        timestamps: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Run a command in a pod's container on this node (works offline and without the agent
    /// running), as `kubectl exec` does through the cloud; exits with the command's code.
    Exec {
        /// Pod as NAME or NAMESPACE/NAME.
        pod: String,
        /// Container name (default: the pod's only or first container).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Run the command on a terminal (when stdin is one).
        #[arg(short = 't', long)]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Manage container images without a registry.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Internal: supervises one container of the process runtime (started by edgecore itself).
    #[command(hide = true)]
    Shim(edgecore::runtime::process::ShimArgs),
}

/// Creates the data directory 0700, or refuses to go on if it is open to others: it holds the
/// node's key and, in the cache, the node's Secrets.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    wire::private_dir::ensure(dir, nix::unistd::geteuid().as_raw())
        .context("the data directory must be private (--data-dir)")
}

/// Which runtime runs (or ran) this node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeName {
    /// Native processes, no containerd needed.
    Process,
    /// containerd over CRI.
    Cri,
}

#[derive(Debug, clap::Args)]
struct RuntimeArgs {
    /// Container runtime: `process` (native processes) or `cri` (containerd).
    #[arg(long, value_enum, default_value_t = RuntimeName::Process, env = "SKERRY_RUNTIME")]
    runtime: RuntimeName,
    /// containerd's socket, for `--runtime cri`.
    #[arg(long, default_value = edgecore::runtime::cri::DEFAULT_SOCKET, env = "SKERRY_CRI_SOCKET")]
    cri_socket: PathBuf,
    /// For `--runtime process`: put each container in cgroups of its own with its cpu and
    /// memory limits. `false` where cgroups must not be touched; pods with limits are then
    /// refused instead of run unlimited.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "SKERRY_PROCESS_CGROUPS")]
    process_cgroups: bool,
}

impl RuntimeArgs {
    fn kind(&self) -> RuntimeKind {
        match self.runtime {
            RuntimeName::Process => RuntimeKind::Process {
                cgroups: self.process_cgroups,
            },
            RuntimeName::Cri => RuntimeKind::Cri {
                socket: self.cri_socket.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Load OCI image archives (deploy/images/build.sh, `docker save`, `ctr images export`)
    /// into containerd, for air-gapped edges.
    Import {
        /// Image archive(s) (.tar).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// containerd's socket.
        #[arg(
            long,
            default_value = "/run/containerd/containerd.sock",
            env = "SKERRY_CONTAINERD_SOCKET"
        )]
        containerd_socket: std::path::PathBuf,
        /// containerd namespace (CRI uses k8s.io).
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
        /// Snapshotter to unpack into (CRI's default is overlayfs).
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
    },
}

fn init_tracing(format: LogFormat) {
    // hickory's DNS server logs every query at info: two lines per pod lookup.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rumqttc=warn,hickory_server=warn,hickory_resolver=warn,hickory_net=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shim must stay minimal: no async runtime, no tracing, no signal handlers.
    if let Command::Shim(args) = cli.command {
        return edgecore::runtime::process::shim_main(args);
    }
    init_tracing(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgecore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Join {
            server,
            token,
            ca_hash,
            node_name,
            server_name,
            mqtt_url,
            labels,
            join_timeout_secs,
        } => {
            private_data_dir(&cli.data_dir)?;
            let node_name = node_name.unwrap_or_else(config::hostname);
            let labels = config::parse_labels(&labels).map_err(anyhow::Error::msg)?;
            if let Some(url) = &mqtt_url {
                config::parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
            }
            let params = JoinParams {
                server: server.clone(),
                server_name: server_name.clone(),
                token,
                ca_hash,
                node_name: node_name.clone(),
                labels: labels.clone(),
            };
            rt.block_on(link::join_with_retry(
                &IdentityPaths::new(&cli.data_dir),
                &params,
                Duration::from_secs(join_timeout_secs),
            ))
            .context("join failed")?;
            EdgeConfig {
                server,
                server_name,
                node_name: node_name.clone(),
                mqtt_url,
                labels,
            }
            .save(&cli.data_dir)?;
            println!(
                "node {node_name} joined; start it with: edgecore --data-dir {} run",
                cli.data_dir.display()
            );
            Ok(())
        }
        Command::Run {
            server,
            mqtt_url,
            node_ip,
            metrics_addr,
            heartbeat_secs,
            node_status_report_secs,
            keepalive_secs,
            idle_timeout_secs,
            deaf_after_secs,
            mqtt_keepalive_secs,
            mqtt_ack_timeout_secs,
            restart_backoff_base_ms,
            max_pods,
            system_reserved,
            eviction_hard,
            image_fs_dir,
            cni_conf_dir,
            cni_network,
            cni_bridge,
            service_proxy,
            proxy_table,
            overlay,
            overlay_interface,
            overlay_table,
            overlay_direct,
            cluster_dns,
            dns_interface,
            ingress_http_addr,
            ingress_https_addr,
            ingress_max_connections,
            runtime,
        } => {
            private_data_dir(&cli.data_dir)?;
            let mut capacity = edgecore::report::Capacity {
                max_pods,
                ..Default::default()
            };
            capacity
                .parse_reserved(&system_reserved)
                .map_err(|e| anyhow::anyhow!("--system-reserved: {e}"))?;
            let thresholds = edgecore::node_health::Thresholds::parse(&eviction_hard)
                .map_err(|e| anyhow::anyhow!("--eviction-hard: {e}"))?;
            let kind = runtime.kind();
            let image_dir = image_fs_dir.or_else(|| {
                let default = PathBuf::from("/var/lib/containerd");
                (matches!(kind, edgecore::agent::RuntimeKind::Cri { .. }) && default.is_dir())
                    .then_some(default)
            });
            let mut cfg = EdgeConfig::load(&cli.data_dir)?;
            if let Some(s) = server {
                cfg.server = s;
            }
            if mqtt_url.is_some() {
                cfg.mqtt_url = mqtt_url;
            }
            let recorder =
                metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || recorder.render());
            let identity = IdentityPaths::new(&cli.data_dir);
            let opts = AgentOptions {
                data_dir: cli.data_dir,
                node_ip,
                metrics_addr,
                heartbeat: Duration::from_secs(heartbeat_secs.max(1)),
                node_status_report: Duration::from_secs(node_status_report_secs),
                keep_alive: Duration::from_secs(keepalive_secs),
                // QUIC's idle timeout must outlast a keep-alive interval, or an idle link dies.
                idle_timeout: Duration::from_secs(idle_timeout_secs.max(keepalive_secs + 2).max(3)),
                deaf_after: Duration::from_secs(deaf_after_secs),
                mqtt_keep_alive: Duration::from_secs(mqtt_keepalive_secs),
                mqtt_ack_timeout: Duration::from_secs(mqtt_ack_timeout_secs),
                restart_backoff_base: Duration::from_millis(restart_backoff_base_ms.max(10)),
                runtime: kind,
                capacity,
                thresholds,
                image_dir,
                cni: cni_conf_dir.map(|conf_dir| edgecore::network::cni::CniConfig {
                    conf_dir,
                    network: cni_network,
                    bridge: cni_bridge,
                }),
                dns: cluster_dns.then(|| edgecore::network::dns::DnsConfig {
                    listen: edgecore::network::dns::Listen::ClusterDns {
                        interface: dns_interface,
                        port: edgecore::network::dns::DNS_PORT,
                    },
                    ..Default::default()
                }),
                proxy: service_proxy.then(|| {
                    let mut proxy = edgecore::network::proxy::ProxyConfig::default();
                    proxy.ruleset.table = proxy_table;
                    proxy
                }),
                overlay: overlay.then(|| edgecore::network::overlay::OverlayConfig {
                    interface: overlay_interface,
                    table: overlay_table,
                    tools: Default::default(),
                    direct: overlay_direct.then(|| edgecore::network::overlay::DirectConfig {
                        node: cfg.node_name.clone(),
                        identity,
                    }),
                }),
                ingress: (ingress_http_addr.0.is_some() || ingress_https_addr.0.is_some()).then(
                    || edgecore::network::ingress::RouterConfig {
                        http: ingress_http_addr.0,
                        https: ingress_https_addr.0,
                        max_connections: ingress_max_connections.max(1),
                        ..Default::default()
                    },
                ),
            };
            rt.block_on(agent::run(cfg, opts, render))
        }
        Command::Logs {
            pod,
            container,
            tail,
            previous,
            follow,
            timestamps,
            runtime,
        } => {
            let (ns, name) = pod.split_once('/').unwrap_or(("default", pod.as_str()));
            rt.block_on(async {
                let (runtime, format) = offline_runtime(&cli.data_dir, &runtime).await?;
                let (found, c) = find_on_node(runtime.as_ref(), ns, name, container).await?;
                // The same reader `kubectl logs` goes through (over the link), offline.
                let reader =
                    edgecore::logs::LogReader::new(runtime, cli.data_dir.join("pods"), format);
                let request = protocol::streams::LogRequest {
                    namespace: ns.to_string(),
                    pod: name.to_string(),
                    uid: found.sandbox.pod_uid.clone(),
                    container: c,
                    follow,
                    tail_lines: tail,
                    since: None,
                    timestamps,
                    previous,
                    limit_bytes: None,
                };
                let log = reader.open(&request).await?;
                reader.copy(log, &mut tokio::io::stdout()).await?;
                Ok(())
            })
        }
        Command::Exec {
            pod,
            container,
            stdin,
            tty,
            command,
            runtime,
        } => {
            let (ns, name) = pod.split_once('/').unwrap_or(("default", pod.as_str()));
            let code = rt.block_on(async {
                let (runtime, _) = offline_runtime(&cli.data_dir, &runtime).await?;
                let (_, container) = find_on_node(runtime.as_ref(), ns, name, container).await?;
                let req = edgecore::exec::local::LocalExec {
                    namespace: ns.to_string(),
                    pod: name.to_string(),
                    container,
                    command,
                    stdin,
                    tty,
                };
                edgecore::exec::local::run(runtime.as_ref(), &req).await
            })?;
            // The command's code is ours, as with kubectl exec.
            std::process::exit(code);
        }
        Command::Image(ImageCommand::Import {
            files,
            containerd_socket,
            namespace,
            snapshotter,
        }) => {
            let opts = edgecore::images::ImportOptions {
                socket: containerd_socket,
                namespace,
                snapshotter,
                ..Default::default()
            };
            rt.block_on(async {
                for file in &files {
                    let started = std::time::Instant::now();
                    for image in edgecore::images::import(file, &opts).await? {
                        println!(
                            "imported {} ({}) from {} in {} ms",
                            image.name,
                            image.digest,
                            file.display(),
                            started.elapsed().as_millis()
                        );
                    }
                }
                Ok(())
            })
        }
        Command::Shim(_) => unreachable!("dispatched in main"),
    }
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{s:?} is not ADDRESS:PORT or off: {e}"))
}

/// The pod `ns/name` as the runtime has it on this node, and the container meant (the one
/// named, or the pod's first), for the offline commands.
async fn find_on_node(
    runtime: &dyn Runtime,
    ns: &str,
    name: &str,
    container: Option<String>,
) -> anyhow::Result<(edgecore::runtime::ExistingPod, String)> {
    let found = runtime
        .list_pods()
        .await?
        .into_iter()
        .find(|p| p.namespace == ns && p.name == name)
        .with_context(|| format!("no pod {ns}/{name} on this node"))?;
    let container = match container {
        Some(c) => c,
        None => found
            .containers
            .first()
            .map(|c| c.name.clone())
            .with_context(|| format!("pod {ns}/{name} has no containers yet"))?,
    };
    Ok((found, container))
}

/// The runtime of `args`, for the offline commands (`logs`, `exec`), and how it writes logs.
async fn offline_runtime(
    data_dir: &std::path::Path,
    args: &RuntimeArgs,
) -> anyhow::Result<(Arc<dyn Runtime>, edgecore::logs::LogFormat)> {
    Ok(match args.kind() {
        RuntimeKind::Process { .. } => (
            Arc::new(edgecore::runtime::process::ProcessRuntime::new(
                data_dir.join("pods"),
                std::env::current_exe()?,
                String::new(),
            )),
            edgecore::logs::LogFormat::Raw,
        ),
        RuntimeKind::Cri { socket } => {
            let instance = edgecore::runtime::cri::load_instance_id(data_dir)?;
            let mut config =
                edgecore::runtime::cri::CriConfig::new(socket, data_dir.join("pods"), instance);
            config.rpc_timeout = Duration::from_secs(10);
            (
                Arc::new(edgecore::runtime::cri::CriRuntime::connect(config).await?),
                edgecore::logs::LogFormat::Cri,
            )
        }
    })
}
