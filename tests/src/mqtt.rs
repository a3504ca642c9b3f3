//! MQTT parts of the harness: a mosquitto configured by `cloudcore mqtt-config`, and MQTT
//! clients with a node's or the ingest's certificate, to act as (or against) an edge.

use crate::{bin, eventually, free_tcp_port, stop_child};
use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A mosquitto serving a cloud's status channel, on a private loopback port, with the files
/// `cloudcore mqtt-config` wrote (TLS with node certificates, per-node ACL).
pub struct Mosquitto {
    child: Option<Child>,
    /// Port.
    pub port: u16,
}

impl Mosquitto {
    /// Writes the broker files into `<cloud_dir>/mosquitto` with `cloudcore mqtt-config` and
    /// starts Debian's mosquitto on them.
    pub async fn start_for(cloud_dir: &Path) -> Result<Self> {
        let port = free_tcp_port();
        let out = cloud_dir.join("mosquitto");
        let status = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(cloud_dir)
            .arg("mqtt-config")
            .arg("--out")
            .arg(&out)
            .args(["--name", "127.0.0.1", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .status()
            .context("run cloudcore mqtt-config")?;
        anyhow::ensure!(status.success(), "cloudcore mqtt-config failed: {status}");
        // The harness runs as root in a private temp dir: keep mosquitto from dropping to its
        // own user, which could not read the files.
        let generated = std::fs::read_to_string(out.join("mosquitto.conf"))?;
        let conf = out.join("harness.conf");
        std::fs::write(&conf, format!("user root\n{generated}"))?;
        let log = std::fs::File::create(out.join("mosquitto.log"))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "cannot start mosquitto; install Debian's mosquitto package (deploy/setup.sh does)",
            )?;
        let mut broker = Self {
            child: Some(child),
            port,
        };
        let listening = eventually(
            "mosquitto to listen",
            Duration::from_secs(10),
            || async move {
                Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ()))
            },
        )
        .await;
        if let Err(e) = listening {
            stop_child(&mut broker.child, 9);
            let log = std::fs::read_to_string(out.join("mosquitto.log")).unwrap_or_default();
            return Err(e.context(format!("mosquitto log:\n{log}")));
        }
        Ok(broker)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        stop_child(&mut self.child, 9);
    }
}

/// TLS trusting the CA at `ca` and presenting the certificate and key at `cert`, `key` (no
/// certificate at all when `cert` is `None`).
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// MQTT options over TLS to `127.0.0.1:port`.
pub fn tls_options(client_id: &str, port: u16, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ));
    opts.set_keep_alive(Duration::from_secs(10));
    opts
}

/// MQTT options of the node whose edgecore data dir is `edge_dir` (its certificate and key,
/// as edgecore itself connects), to the broker at `port`.
pub fn node_options(edge_dir: &Path, node: &str, port: u16) -> Result<MqttOptions> {
    let pki = edge_dir.join("pki");
    let tls = client_tls(
        &pki.join("ca.crt"),
        Some((&pki.join("node.crt"), &pki.join("node.key"))),
    )?;
    Ok(tls_options(
        &protocol::status::mqtt_client_id(node),
        port,
        tls,
    ))
}

/// MQTT options with the certificate of cloudcore's ingest (written into the cloud's data dir
/// when cloudcore first connects to an external broker), for a test subscriber on mosquitto.
pub fn ingest_options(cloud_dir: &Path, client_id: &str, port: u16) -> Result<MqttOptions> {
    let pki = cloud_dir.join("pki");
    let tls = client_tls(
        &pki.join("ca.crt"),
        Some((&pki.join("ingest.crt"), &pki.join("ingest.key"))),
    )?;
    Ok(tls_options(client_id, port, tls))
}

/// Connects; `Ok` once the broker accepted the login (CONNACK success), `Err` with the reason
/// otherwise (refused CONNACK, TLS failure, closed connection).
pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop)> {
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let accepted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("no CONNACK within 10 s")?;
    match accepted {
        Ok(rumqttc::ConnectReturnCode::Success) => Ok((client, eventloop)),
        Ok(code) => anyhow::bail!("login refused by CONNACK: {code:?}"),
        Err(e) => anyhow::bail!("connection failed: {e}"),
    }
}

/// Publishes one message with QoS 1 on a connection of its own (packets up to 2 MiB on the
/// client's side); `Ok(None)` when it was acknowledged, `Ok(Some(why))` when the broker closed
/// the connection instead.
pub async fn publish_alone(
    opts: MqttOptions,
    topic: String,
    payload: Vec<u8>,
) -> Result<Option<String>> {
    let mut opts = opts;
    opts.set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Ok(Some(e.to_string())),
            }
        }
    })
    .await
    .context("neither acknowledged nor closed within 10 s")?
}
