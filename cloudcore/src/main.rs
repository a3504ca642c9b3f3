//! The `cloudcore` binary: a thin command line over the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use cloudcore::hub::HubConfig;
use cloudcore::pki::Pki;
use cloudcore::server::{self, ServeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// jemalloc rather than glibc's malloc: after a connection flood (issue #10) glibc kept every
/// page the flood's connections had used (RSS stayed at its peak once they were closed);
/// jemalloc, built with a background purge thread (`.cargo/config.toml`), gives pages freed
/// for a second back to the OS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cloudcore",
    version,
    about = "Skerry cloud hub: Kubernetes-style API and edge sync"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line for machines.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SKERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Directory of the store and PKI.
    #[arg(
        long,
        default_value = "/var/lib/skerry/cloudcore",
        global = true,
        env = "SKERRY_DATA_DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start: the size of the largest variant (every `serve` flag) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the cloud hub.
    Serve {
        /// HTTPS API address (kubectl --server https://ADDR).
        #[arg(long, default_value = "0.0.0.0:6443")]
        api_addr: SocketAddr,
        /// QUIC address edge nodes connect to (UDP).
        #[arg(long, default_value = "0.0.0.0:7443")]
        hub_addr: SocketAddr,
        /// External MQTT broker (mqtts://HOST:PORT, set up with `cloudcore mqtt-config`); without it
        /// the embedded broker is started.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Address of the embedded MQTT broker.
        #[arg(long, default_value = "0.0.0.0:8883")]
        mqtt_listen: SocketAddr,
        /// Extra DNS names or IPs for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Seconds of silence after which an edge link is considered dead.
        #[arg(long, default_value_t = 60)]
        idle_timeout_secs: u64,
        /// Seconds a sync batch may go unacknowledged before the node gets `SyncLagging=True`
        /// (and its NoSchedule taint).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        ack_lag_limit_secs: u64,
        /// Seconds between the hub's own keep-alives on edge links (none by default: the edges
        /// keep their links alive). For measuring what they cost.
        #[arg(long, hide = true)]
        hub_keepalive_secs: Option<u64>,
        /// Store events kept in memory so that watches resume from a resourceVersion; a watch
        /// from further back gets 410 Gone and its client re-lists.
        #[arg(long, default_value_t = cloudcore::api::history::DEFAULT_CAPACITY as u64, env = "SKERRY_WATCH_HISTORY",
              value_parser = clap::value_parser!(u64).range(1..))]
        watch_history: u64,
        /// Seconds a node may go without a heartbeat before it is marked Unknown and tainted
        /// unreachable (Kubernetes' node-monitor-grace-period). Its pods stay unless they
        /// tolerate the taint only for a limited time.
        #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
        node_monitor_grace_period: u64,
        /// Seconds between the node lifecycle controller's passes over every node
        /// (Kubernetes' node-monitor-period).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        node_monitor_period: u64,
        /// IPv4 CIDR Services get their cluster IPs from.
        #[arg(
            long,
            default_value = "10.96.0.0/12",
            env = "SKERRY_SERVICE_CLUSTER_IP_RANGE"
        )]
        service_cluster_ip_range: cloudcore::api::services::ServiceCidr,
        /// Ports NodePort and LoadBalancer Services get their node ports from.
        #[arg(
            long,
            default_value = "30000-32767",
            env = "SKERRY_SERVICE_NODE_PORT_RANGE"
        )]
        service_node_port_range: cloudcore::api::services::NodePortRange,
        /// IPv4 CIDR nodes get their pod CIDRs from (kube-controller-manager's
        /// `--cluster-cidr`), each a `/--node-cidr-mask-size` of it.
        #[arg(long, default_value = "10.244.0.0/16", env = "SKERRY_CLUSTER_CIDR")]
        cluster_cidr: String,
        /// Prefix length of each node's pod CIDR.
        #[arg(long, default_value_t = 24, env = "SKERRY_NODE_CIDR_MASK_SIZE")]
        node_cidr_mask_size: u8,
        /// Give each node a pod CIDR from `--cluster-cidr` (kube-controller-manager's
        /// `--allocate-node-cidrs`); `false` leaves `spec.podCIDR` to the admin.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "SKERRY_ALLOCATE_NODE_CIDRS")]
        allocate_node_cidrs: bool,
        /// The address pods get as their nameserver, served by every edge (kubelet's
        /// `--cluster-dns`); default: the tenth address of the Service CIDR (10.96.0.10).
        #[arg(long, env = "SKERRY_CLUSTER_DNS")]
        cluster_dns: Option<std::net::Ipv4Addr>,
        /// The cluster domain (kubelet's `--cluster-domain`).
        #[arg(long, default_value = "cluster.local", env = "SKERRY_CLUSTER_DOMAIN")]
        cluster_domain: String,
        /// Carry pod traffic between nodes: send each node (protocol v6) the routes of
        /// `--cluster-cidr` and relay pod packets between nodes' links as QUIC datagrams
        /// (docs/networking.md, "Pod overlay").
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "SKERRY_OVERLAY")]
        overlay: bool,
        /// Open API connections one client address (IPv6: one /64) may hold; more are closed
        /// right after accept. The main defence against one host flooding the API.
        #[arg(long, default_value_t = cloudcore::api::conn_limits::DEFAULT_PER_ADDRESS as u64,
              env = "SKERRY_MAX_CONNS_PER_ADDRESS", value_parser = clap::value_parser!(u64).range(1..))]
        max_conns_per_address: u64,
        /// Open API connections in all (lowered to fit the open file limit). The last 64 are
        /// kept for addresses holding fewer than 4 connections, so that a flood from a few
        /// addresses cannot lock the admin out.
        #[arg(long, default_value_t = cloudcore::api::conn_limits::DEFAULT_GLOBAL as u64,
              env = "SKERRY_MAX_CONNS", value_parser = clap::value_parser!(u64).range(65..))]
        max_conns: u64,
        /// TLS handshake timeout of API connections, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
        handshake_timeout: Duration,
        /// HTTP/1 request header read timeout (also HTTP/1's keep-alive idle timeout).
        #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
        header_read_timeout: Duration,
        /// How long an API connection may stay silent between its TLS handshake and its first
        /// request.
        #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
        first_request_timeout: Duration,
        /// How long an API connection that has served a request may stay with none in flight.
        #[arg(long, default_value = "5m", value_parser = parse_duration, hide = true)]
        conn_idle_timeout: Duration,
        /// Kubernetes EncryptionConfiguration (apiserver.config.k8s.io/v1) encrypting Secrets
        /// at rest with aesgcm; must be mode 0600. Re-read every second: a valid new content is
        /// put in force, a bad one is logged and the last good one stays.
        #[arg(long, env = "SKERRY_ENCRYPTION_PROVIDER_CONFIG")]
        encryption_provider_config: Option<PathBuf>,
    },
    /// Encryption of Secrets at rest: keys and rotation (docs/encryption-at-rest.md).
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// Manage bootstrap tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage node identities.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Manage API users' credentials (kubeconfigs).
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
    /// Write what an external mosquitto needs to serve the status channel (TLS with the nodes'
    /// certificates as identities, an ACL confining each node to its own topics); then run
    /// `cloudcore serve --mqtt-url mqtts://NAME:PORT`.
    MqttConfig {
        /// Directory for mosquitto.conf, acl, ca.crt, broker.crt and broker.key.
        #[arg(long)]
        out: std::path::PathBuf,
        /// DNS name or IP the edges and cloudcore reach the broker by (repeatable).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Address mosquitto listens on.
        #[arg(long, default_value = "0.0.0.0:8883")]
        listen: SocketAddr,
    },
    /// Write a kubeconfig for an API user (client certificate by default, or a bearer token).
    Kubeconfig {
        /// User name (the certificate's CN).
        #[arg(long, default_value = "admin")]
        user: String,
        /// Groups (certificate O values); members of system:masters may do everything.
        #[arg(long = "group", default_value = "system:masters")]
        groups: Vec<String>,
        /// API URL the kubeconfig points at.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// Use a bearer token instead of a client certificate.
        #[arg(long)]
        token: bool,
        /// Lifetime of the client certificate or token, e.g. 12h, 30d.
        #[arg(long, default_value = "365d")]
        ttl: String,
        /// Write to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a single-use bootstrap token and print it with the CA hash to join with.
    Create {
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Make the token for this node only: needed to re-join a registered node (after
        /// reinstalling it) or to re-admit a revoked one.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum EncryptionCommand {
    /// Generate a 32-byte AES-256-GCM key and make it the write key, keeping the others for
    /// reading (creates the file, aesgcm then identity, if it does not exist). The running
    /// server picks it up within a second; then run `cloudcore encryption rewrite`.
    NewKey {
        /// The EncryptionConfiguration file (written atomically, mode 0600).
        #[arg(long)]
        config: PathBuf,
        /// Name of the new key (default: key<N+1>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a key that no stored Secret uses any more (after a rewrite).
    RemoveKey {
        /// The EncryptionConfiguration file.
        #[arg(long)]
        config: PathBuf,
        /// Name of the key to remove.
        #[arg(long)]
        name: String,
    },
    /// Re-write every Secret through the API so that each is stored under the current write
    /// key; prints how many were rewritten.
    Rewrite {
        /// Admin kubeconfig (as `cloudcore kubeconfig` writes it).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        /// The server's EncryptionConfiguration: first wait (up to 30 s) until the server
        /// writes with this file's write key, so that a rewrite never runs before a reload.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CredentialCommand {
    /// Make every client certificate and token of a user issued until now stop working
    /// (within a second, no restart); issue a new kubeconfig afterwards if the user stays.
    Revoke {
        /// The user (the kubeconfig's `--user`).
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Revoke a node: its sessions are refused and closed.
    Revoke { name: String },
    /// Lift a revocation (the node must join again).
    Unrevoke { name: String },
}

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid --ttl {s:?}; use e.g. 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("invalid --ttl unit in {s:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

/// A duration flag: `parse_ttl`'s units, zero refused (a zero timeout would close every
/// connection at once).
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let d = parse_ttl(s)?;
    anyhow::ensure!(
        !d.is_zero(),
        "a timeout of {s:?} would close every connection; use e.g. 10s"
    );
    Ok(d)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rumqttc=warn"));
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Everything cloudcore writes (store, CA, tokens, credentials) is its own: files 0600 and
    // directories 0700 whatever the caller's umask, in a data directory no one else can enter.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    wire::private_dir::ensure(&cli.data_dir, nix::unistd::geteuid().as_raw())
        .context("the data directory must be private (--data-dir)")?;
    match cli.command {
        Command::Serve {
            api_addr,
            hub_addr,
            mqtt_url,
            mqtt_listen,
            server_names,
            idle_timeout_secs,
            ack_lag_limit_secs,
            hub_keepalive_secs,
            watch_history,
            node_monitor_grace_period,
            node_monitor_period,
            service_cluster_ip_range,
            service_node_port_range,
            cluster_cidr,
            node_cidr_mask_size,
            allocate_node_cidrs,
            cluster_dns,
            cluster_domain,
            overlay,
            max_conns_per_address,
            max_conns,
            handshake_timeout,
            header_read_timeout,
            first_request_timeout,
            conn_idle_timeout,
            encryption_provider_config,
        } => {
            let recorder =
                metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || recorder.render());
            let node_cidrs = if allocate_node_cidrs {
                Some(cloudcore::api::node_cidrs::NodeCidrPool::new(
                    &cluster_cidr,
                    node_cidr_mask_size,
                )?)
            } else {
                None
            };
            if overlay {
                protocol::overlay::Cidr::parse(&cluster_cidr)
                    .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
            }
            let cluster_dns = cluster_dns.unwrap_or_else(|| service_cluster_ip_range.tenth());
            if !service_cluster_ip_range.contains(cluster_dns) {
                anyhow::bail!(
                    "--cluster-dns {cluster_dns} is outside --service-cluster-ip-range {service_cluster_ip_range}"
                );
            }
            let cfg = ServeConfig {
                data_dir: cli.data_dir,
                node_cidrs,
                api_addr,
                hub: HubConfig {
                    listen: hub_addr,
                    idle_timeout: Duration::from_secs(idle_timeout_secs.max(2)),
                    ack_lag_limit: Duration::from_secs(ack_lag_limit_secs),
                    keep_alive: hub_keepalive_secs.map(|s| Duration::from_secs(s.max(1))),
                    network: cloudcore::hub::NetworkSettings {
                        service_cidr: service_cluster_ip_range.to_string(),
                        cluster_dns: cluster_dns.into(),
                        cluster_domain,
                        overlay_cidrs: match overlay {
                            true => vec![cluster_cidr.clone()],
                            false => Vec::new(),
                        },
                    },
                },
                mqtt_url,
                mqtt_listen,
                server_names,
                watch_history: usize::try_from(watch_history).unwrap_or(usize::MAX),
                node_lifecycle: cloudcore::controllers::node_lifecycle::Config {
                    grace_period: Duration::from_secs(node_monitor_grace_period),
                    monitor_period: Duration::from_secs(node_monitor_period),
                },
                services: cloudcore::api::services::ServiceNetwork {
                    cidr: service_cluster_ip_range,
                    node_ports: service_node_port_range,
                    cluster_dns: Some(cluster_dns),
                },
                api_conn_limits: cloudcore::api::conn_limits::Limits {
                    per_address: usize::try_from(max_conns_per_address).unwrap_or(usize::MAX),
                    global: usize::try_from(max_conns).unwrap_or(usize::MAX),
                },
                api_conn_timeouts: server::ConnTimeouts {
                    handshake: handshake_timeout,
                    header_read: header_read_timeout,
                    first_request: first_request_timeout,
                    idle: conn_idle_timeout,
                    ..server::ConnTimeouts::default()
                },
                encryption_provider_config,
            };
            tokio::runtime::Runtime::new()?.block_on(server::run(cfg, render))
        }
        Command::Encryption { command } => encryption_command(command),
        Command::Token {
            command: TokenCommand::Create { ttl, node },
        } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            let token = pki.create_token(parse_ttl(&ttl)?, node.as_deref())?;
            println!("token:   {token}");
            println!("ca-hash: {}", pki.ca_hash());
            println!(
                "join:    edgecore join --server <HOST>:7443 --token {token} --ca-hash {}",
                pki.ca_hash()
            );
            Ok(())
        }
        Command::Kubeconfig {
            user,
            groups,
            server,
            token,
            ttl,
            out,
        } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            let credential = if token {
                cloudcore::kubeconfig::Credential::Token(pki.create_api_token(
                    &user,
                    &groups,
                    parse_ttl(&ttl)?,
                )?)
            } else {
                let (cert_pem, key_pem) = pki.issue_user_cert(&user, &groups, parse_ttl(&ttl)?)?;
                cloudcore::kubeconfig::Credential::Certificate { cert_pem, key_pem }
            };
            let text = cloudcore::kubeconfig::render(&server, pki.ca_pem(), &user, &credential);
            match out {
                Some(path) => {
                    cloudcore::pki::write_atomic(&path, text.as_bytes(), 0o600)?;
                    eprintln!("kubeconfig for {user} written to {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::MqttConfig { out, names, listen } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            let files = pki.write_external_broker(&out, &names, listen)?;
            println!(
                "mosquitto files written to {}; run `mosquitto -c {}` (as a user that can read them), then `cloudcore serve --mqtt-url mqtts://{}:{}`",
                files.dir.display(),
                files.path("mosquitto.conf").display(),
                names[0],
                listen.port()
            );
            Ok(())
        }
        Command::Credential {
            command: CredentialCommand::Revoke { user },
        } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            pki.revoke_user(&user)?;
            println!("every credential of user {user} issued until now is revoked");
            Ok(())
        }
        Command::Node { command } => {
            let pki = Pki::load_or_create(&cli.data_dir, &[])?;
            match command {
                NodeCommand::Revoke { name } => {
                    pki.revoke(&name)?;
                    println!("node {name} revoked; its sessions are closed within 10 seconds");
                }
                NodeCommand::Unrevoke { name } => {
                    pki.unrevoke(&name)?;
                    println!(
                        "revocation of node {name} lifted; it must join again with a new token"
                    );
                }
            }
            Ok(())
        }
    }
}

fn encryption_command(command: EncryptionCommand) -> anyhow::Result<()> {
    use cloudcore::store::encryption::{EncryptionConfig, KeySpec};
    let save = |path: &std::path::Path, cfg: &EncryptionConfig| -> anyhow::Result<()> {
        cloudcore::pki::write_atomic(path, cfg.render().as_bytes(), 0o600)?;
        Ok(())
    };
    match command {
        EncryptionCommand::NewKey { config, name } => {
            let current = if config.exists() {
                Some(EncryptionConfig::load(&config)?)
            } else {
                None
            };
            let name = name.unwrap_or_else(|| {
                let highest = current
                    .iter()
                    .flat_map(|c| c.key_names())
                    .filter_map(|n| n.strip_prefix("key")?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0);
                format!("key{}", highest + 1)
            });
            let mut secret = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
            let key = KeySpec::new(&name, secret)?;
            let next = match &current {
                Some(c) => c.with_write_key(key)?,
                None => EncryptionConfig::initial(key),
            };
            save(&config, &next)?;
            println!(
                "key {name} is now the write key of {} (keys: {}); comments in the file are not kept",
                config.display(),
                next.key_names().join(", ")
            );
            println!("a server started with --encryption-provider-config {} uses it within a second (log line \"encryption provider config reloaded\"); then run `cloudcore encryption rewrite`", config.display());
            Ok(())
        }
        EncryptionCommand::RemoveKey { config, name } => {
            let next = EncryptionConfig::load(&config)?.without_key(&name)?;
            save(&config, &next)?;
            println!(
                "key {name} removed from {} (keys: {}); Secrets still stored under it can no longer be read",
                config.display(),
                next.key_names().join(", ")
            );
            Ok(())
        }
        EncryptionCommand::Rewrite { kubeconfig, config } => {
            let expected = match &config {
                Some(path) => Some(
                    EncryptionConfig::load(path)?
                        .write_key()
                        .unwrap_or("identity")
                        .to_string(),
                ),
                None => None,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(async {
                let mut api = cloudcore::rewrite::ApiClient::from_kubeconfig(&kubeconfig)?;
                if let Some(key) = &expected {
                    cloudcore::rewrite::wait_for_write_key(&mut api, key, Duration::from_secs(30))
                        .await?;
                }
                cloudcore::rewrite::rewrite_secrets(&mut api).await
            })?;
            println!(
                "rewrote {} of {} Secrets; {} already under the current write key, {} deleted meanwhile, {} failed",
                report.rewritten,
                report.listed,
                report.unchanged,
                report.gone,
                report.failed.len()
            );
            for (secret, reason) in &report.failed {
                eprintln!("secret {secret}: {reason}");
            }
            anyhow::ensure!(
                report.failed.is_empty(),
                "{} Secrets were not rewritten: keep the old keys until they are",
                report.failed.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl_parsing() {
        assert_eq!(super::parse_ttl("30m").unwrap().as_secs(), 1800);
        assert_eq!(super::parse_ttl("2d").unwrap().as_secs(), 172800);
        assert!(super::parse_ttl("soon").is_err());
    }
}
