//! Hostile connection floods against a cloudcore API on loopback, shared by the `api_flood` test
//! and the `bench_conn_flood` bench (issue #10): many connections that never send a request,
//! each bound to a chosen loopback source address (all of 127.0.0.0/8 is loopback on Linux),
//! so that a flood can look like one attacker or like several.
//!
//! Only loopback targets are accepted: this is a test tool, not a load generator for other
//! machines.

use anyhow::{bail, ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// What each connection of a flood does once connected.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Nothing: the TLS handshake never starts.
    Tcp,
    /// Completes the TLS handshake (anonymously), then sends nothing.
    Tls(Arc<rustls::ClientConfig>),
    /// Completes the TLS handshake, then sends an HTTP/1 request's headers one byte per
    /// interval, never finishing them (slowloris).
    Slowloris(Arc<rustls::ClientConfig>, Duration),
}

/// A flood to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The API address (loopback only).
    pub target: SocketAddr,
    /// Source addresses; `per_source` connections come from each.
    pub sources: Vec<Ipv4Addr>,
    /// Connections per source address.
    pub per_source: usize,
    /// What the connections do.
    pub mode: Mode,
    /// Whether a connection the server closed is opened again (after `reconnect_delay`), as
    /// a determined attacker does; otherwise its holder stops.
    pub reconnect: bool,
    /// Pause before reconnecting.
    pub reconnect_delay: Duration,
    /// Connections being set up (connect + handshake) at once.
    pub concurrency: usize,
}

/// Counters of a flood, as the client sees it.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now (connected, TLS done in the TLS modes, not closed yet).
    pub open: AtomicUsize,
    /// Connections the server closed after they were open (EOF or reset), in all.
    pub closed: AtomicUsize,
    /// TLS handshakes that failed (the server closed the connection during the handshake, as
    /// it does with connections over the caps).
    pub handshake_failures: AtomicUsize,
    /// Connects that failed.
    pub connect_errors: AtomicUsize,
    /// Connections opened, in all.
    pub opened: AtomicUsize,
}

impl Stats {
    /// Reads a counter.
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// A running flood; dropping it (or [`Flood::stop`]) closes every connection.
pub struct Flood {
    /// Its counters.
    pub stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// A TLS client config that trusts the cluster CA at `ca_pem` and presents no certificate: an
/// anonymous client, which is all an attacker is.
pub fn anonymous_tls(ca_pem: &std::path::Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("cannot read CA {}", ca_pem.display()))?
    {
        roots.add(cert?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Raises this process's open file limit to at least `want` (root may raise the hard limit),
/// else to its hard limit; returns the soft limit now.
pub fn raise_nofile(want: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

impl Flood {
    /// Starts the flood; connections are set up in the background (watch [`Stats::open`]).
    pub fn start(spec: Spec) -> Result<Self> {
        if !spec.target.ip().is_loopback() {
            bail!("floods may target loopback only, not {}", spec.target);
        }
        ensure!(
            spec.sources.iter().all(Ipv4Addr::is_loopback),
            "flood sources must be loopback addresses"
        );
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for source in &spec.sources {
            for _ in 0..spec.per_source {
                tasks.spawn(hold(
                    spec.clone(),
                    *source,
                    stats.clone(),
                    gate.clone(),
                    stopped.clone(),
                ));
            }
        }
        Ok(Self { stats, stop, tasks })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        Stats::get(&self.stats.open)
    }

    /// Connections the server closed so far.
    pub fn closed(&self) -> usize {
        Stats::get(&self.stats.closed)
    }

    /// TLS handshakes that failed so far.
    pub fn handshake_failures(&self) -> usize {
        Stats::get(&self.stats.handshake_failures)
    }

    /// Closes every connection and waits for the holders to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The source addresses 127.0.0.`first` .. 127.0.0.`first + n - 1`.
pub fn loopback_sources(first: u8, n: u8) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(127, 0, 0, first + i))
        .collect()
}

async fn connect(spec: &Spec, source: Ipv4Addr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    socket.connect(spec.target).await
}

/// One connection of the flood, opened again after each close when the spec says so.
async fn hold(
    spec: Spec,
    source: Ipv4Addr,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let setup = async {
            let _slot = gate.acquire().await.ok()?;
            let tcp = match connect(&spec, source).await {
                Ok(t) => t,
                Err(_) => {
                    stats.connect_errors.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
            };
            stats.opened.fetch_add(1, Ordering::SeqCst);
            let tls = match &spec.mode {
                Mode::Tcp => return Some(Conn::Tcp(tcp)),
                Mode::Tls(cfg) | Mode::Slowloris(cfg, _) => cfg.clone(),
            };
            let name = rustls_pki_types::ServerName::IpAddress(rustls_pki_types::IpAddr::from(
                spec.target.ip(),
            ));
            match tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
            {
                Ok(s) => Some(Conn::Tls(Box::new(s))),
                Err(_) => {
                    // Refused connections are closed before the handshake completes.
                    stats.handshake_failures.fetch_add(1, Ordering::SeqCst);
                    None
                }
            }
        };
        let conn = tokio::select! {
            c = setup => c,
            _ = stopped.wait_for(|s| *s) => return,
        };
        if let Some(conn) = conn {
            stats.open.fetch_add(1, Ordering::SeqCst);
            let closed_by_server = tokio::select! {
                () = conn.until_closed(&spec.mode) => true,
                _ = stopped.wait_for(|s| *s) => false,
            };
            stats.open.fetch_sub(1, Ordering::SeqCst);
            if !closed_by_server {
                return;
            }
            stats.closed.fetch_add(1, Ordering::SeqCst);
        }
        if !spec.reconnect {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(spec.reconnect_delay) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    /// Resolves when the server has closed the connection.
    async fn until_closed(self, mode: &Mode) {
        let mut buf = [0u8; 512];
        match (self, mode) {
            (Conn::Tcp(mut s), _) => while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {},
            (Conn::Tls(s), Mode::Slowloris(_, every)) => {
                let (mut rx, mut tx) = tokio::io::split(*s);
                let trickle = async {
                    // Headers that never end: a request line, then a header value forever.
                    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
                    let mut tick = tokio::time::interval(*every);
                    for i in 0.. {
                        tick.tick().await;
                        let byte = head.get(i).copied().unwrap_or(b'a');
                        if tx.write_all(&[byte]).await.is_err() || tx.flush().await.is_err() {
                            return;
                        }
                    }
                };
                let reader = async { while !matches!(rx.read(&mut buf).await, Ok(0) | Err(_)) {} };
                tokio::select! {
                    () = trickle => {}
                    () = reader => {}
                }
            }
            (Conn::Tls(mut s), _) => while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {},
        }
    }
}
