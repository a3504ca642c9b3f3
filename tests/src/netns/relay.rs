//! A userspace relay that delays (and, for UDP, drops) what passes through it: this kernel has
//! no `netem`, and a long round trip is what a satellite or cellular edge link is. It runs as
//! tokio tasks of the test process, its sockets bound on the host side or inside a namespace.
//!
//! UDP (the QUIC hub): one upstream socket per client address, each datagram dropped with the
//! configured probability or sent after the one-way delay. TCP (MQTT, the API): one upstream
//! connection per accepted one; a stream cannot lose bytes, so a "lost" chunk is what TCP makes
//! of a lost segment: it arrives a retransmission timeout (200 ms, Linux's minimum RTO) late,
//! holding back everything after it.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Linux's minimum retransmission timeout, what a lost TCP segment costs.
const RTO: Duration = Duration::from_millis(200);

/// What the relay does to traffic, in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// One-way delay (a round trip through the relay takes twice this).
    pub delay: Duration,
    /// Percentage of datagrams (UDP) or chunks (TCP, as a retransmission) lost.
    pub loss_percent: f64,
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    cut: Arc<AtomicBool>,
}

impl Relay {
    /// Cuts (`true`) or heals the relayed link. The relay's own packets come from the test
    /// process's address, which the hosts' fault chains never drop, so a partition of a
    /// relayed link is made here: UDP datagrams vanish, TCP bytes wait (as segments a real
    /// partition holds in retransmission) and flow on heal.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `f` on a thread of its own that has entered namespace `ns` (sockets stay in the
/// namespace they were made in), or here if `ns` is `None`.
pub(crate) fn in_namespace<T: Send + 'static>(
    ns: Option<&str>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let Some(ns) = ns else {
        return Ok(f()?);
    };
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("namespace {ns}"))?;
    let handle = std::thread::spawn(move || {
        // The thread ends right after: no other code runs in the namespace it entered.
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    });
    Ok(handle
        .join()
        .map_err(|_| anyhow::anyhow!("socket thread panicked"))??)
}

/// A small xorshift generator: the loss needs no cryptographic quality, and the tests'
/// crate has no `rand`.
struct Coin(u64);

impl Coin {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Coin(seed)
    }

    fn lost(&mut self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < percent / 100.0
    }
}

/// A delay line: what is pushed comes out in order, each item no earlier than its due time.
fn delay_line<T: Send + 'static>(
    mut out: impl FnMut(T) -> futures::future::BoxFuture<'static, bool> + Send + 'static,
) -> (mpsc::UnboundedSender<(Instant, T)>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, T)>();
    let task = tokio::spawn(async move {
        while let Some((due, item)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if !out(item).await {
                break;
            }
        }
    });
    (tx, task)
}

impl Relay {
    /// A UDP relay listening on `listen` (inside `ns` if given) that forwards to `upstream`.
    pub async fn udp(
        ns: Option<&str>,
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> Result<Relay> {
        let std_sock = in_namespace(ns, move || {
            let s = std::net::UdpSocket::bind(listen)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        let front = Arc::new(tokio::net::UdpSocket::from_std(std_sock)?);
        let addr = front.local_addr()?;
        let ns = ns.map(str::to_string);
        let cut = Arc::new(AtomicBool::new(false));
        let cut_t = cut.clone();
        let task = tokio::spawn(async move {
            let mut clients: std::collections::HashMap<SocketAddr, DelayTx> = Default::default();
            let mut coin = Coin::new();
            let mut buf = vec![0u8; 65_536];
            let mut children = Vec::new();
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    break;
                };
                if coin.lost(imp.loss_percent) || cut_t.load(Ordering::SeqCst) {
                    continue;
                }
                let due = Instant::now() + imp.delay;
                let entry = match clients.entry(from) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let Some((tx, tasks)) = udp_upstream(
                            ns.clone(),
                            upstream,
                            front.clone(),
                            from,
                            imp,
                            cut_t.clone(),
                        ) else {
                            continue;
                        };
                        children.extend(tasks);
                        v.insert(tx)
                    }
                };
                let _ = entry.send((due, buf[..n].to_vec()));
            }
        });
        Ok(Relay {
            addr,
            tasks: vec![task],
            cut,
        })
    }

    /// A TCP relay listening on `listen` (inside `ns` if given) that forwards to `upstream`.
    pub async fn tcp(
        ns: Option<&str>,
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> Result<Relay> {
        let std_listener = in_namespace(ns, move || {
            let l = std::net::TcpListener::bind(listen)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        let ns = ns.map(str::to_string);
        let cut = Arc::new(AtomicBool::new(false));
        let cut_t = cut.clone();
        let task = tokio::spawn(async move {
            let mut children = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let ns2 = ns.clone();
                let cut = cut_t.clone();
                children.push(AbortOnDrop(tokio::spawn(async move {
                    // The connect happens in the namespace too: a blocking connect on the
                    // namespace's thread, then handed to tokio.
                    let Ok(up) = in_namespace(ns2.as_deref(), move || {
                        let s = std::net::TcpStream::connect_timeout(
                            &upstream,
                            Duration::from_secs(5),
                        )?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    }) else {
                        return;
                    };
                    let Ok(up) = tokio::net::TcpStream::from_std(up) else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = up.into_split();
                    let mut a = AbortOnDrop(tokio::spawn(pipe(cr, uw, imp, cut.clone())));
                    let mut b = AbortOnDrop(tokio::spawn(pipe(ur, cw, imp, cut)));
                    // Both directions run until their side closes; aborting this task aborts
                    // them (the guards).
                    let _ = (&mut a.0).await;
                    let _ = (&mut b.0).await;
                })));
                children.retain(|c: &AbortOnDrop| !c.0.is_finished());
            }
        });
        Ok(Relay {
            addr,
            tasks: vec![task],
            cut,
        })
    }
}

/// Copies one direction of a TCP relay through a delay line.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    imp: Impairment,
    cut: Arc<AtomicBool>,
) {
    let to = Arc::new(tokio::sync::Mutex::new(to));
    let to_w = to.clone();
    let (tx, line) = delay_line(move |d: Option<Vec<u8>>| {
        let to = to_w.clone();
        let cut = cut.clone();
        Box::pin(async move {
            while cut.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut w = to.lock().await;
            match d {
                Some(bytes) => w.write_all(&bytes).await.is_ok(),
                None => {
                    let _ = w.shutdown().await;
                    false
                }
            }
        })
    });
    let _line = AbortOnDrop(line);
    let mut coin = Coin::new();
    let mut buf = vec![0u8; 65_536];
    let mut last_due = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut due = Instant::now() + imp.delay;
        if coin.lost(imp.loss_percent) {
            due += RTO;
        }
        // Order is kept: nothing overtakes a chunk held back by a retransmission.
        due = due.max(last_due);
        last_due = due;
        let item = (n > 0).then(|| buf[..n].to_vec());
        if tx.send((due, item)).is_err() || n == 0 {
            break;
        }
    }
    // Let the line drain what is queued before the guard aborts it.
    while !_line.0.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct AbortOnDrop(JoinHandle<()>);

type DelayTx = mpsc::UnboundedSender<(Instant, Vec<u8>)>;
/// The upstream side of one UDP client: a socket of its own (in `ns`), a delay line each way
/// and the task reading replies; `None` if the socket cannot be made.
fn udp_upstream(
    ns: Option<String>,
    upstream: SocketAddr,
    front: Arc<tokio::net::UdpSocket>,
    from: SocketAddr,
    imp: Impairment,
    cut_t: Arc<AtomicBool>,
) -> Option<(DelayTx, [AbortOnDrop; 3])> {
    let Ok(up) = in_namespace(ns.as_deref(), move || {
        let s = std::net::UdpSocket::bind((
            if upstream.is_ipv4() {
                std::net::IpAddr::from([0, 0, 0, 0])
            } else {
                std::net::IpAddr::from([0u16; 8])
            },
            0,
        ))?;
        s.connect(upstream)?;
        s.set_nonblocking(true)?;
        Ok(s)
    }) else {
        return None;
    };
    let Ok(up) = tokio::net::UdpSocket::from_std(up) else {
        return None;
    };
    let up = Arc::new(up);
    let up_w = up.clone();
    let (tx, t1) = delay_line(move |d: Vec<u8>| {
        let up = up_w.clone();
        Box::pin(async move {
            let _ = up.send(&d).await;
            true
        })
    });
    let front_w = front.clone();
    let (back_tx, t2) = delay_line(move |d: Vec<u8>| {
        let f = front_w.clone();
        Box::pin(async move {
            let _ = f.send_to(&d, from).await;
            true
        })
    });
    let cut_up = cut_t.clone();
    let t3 = tokio::spawn(async move {
        let mut coin = Coin::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = up.recv(&mut buf).await {
            if coin.lost(imp.loss_percent) || cut_up.load(Ordering::SeqCst) {
                continue;
            }
            if back_tx
                .send((Instant::now() + imp.delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    Some((tx, [AbortOnDrop(t1), AbortOnDrop(t2), AbortOnDrop(t3)]))
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    /// Sends `msg` through the relay at `to`; the echo, if one comes back within 1 s.
    async fn round(
        client: &tokio::net::UdpSocket,
        to: SocketAddr,
        msg: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 64];
        client.send_to(msg, to).await?;
        let got = tokio::time::timeout(Duration::from_secs(1), client.recv(&mut buf)).await;
        Ok(got.ok().and_then(Result::ok).map(|n| buf[..n].to_vec()))
    }

    /// Datagrams go through both ways, and none while the link is cut.
    #[tokio::test]
    async fn udp_relays_both_ways_and_a_cut_drops() -> Result<()> {
        let echo = tokio::net::UdpSocket::bind(LOCAL).await?;
        let upstream = echo.local_addr()?;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let imp = Impairment {
            delay: Duration::from_millis(20),
            loss_percent: 0.0,
        };
        let relay = Relay::udp(None, LOCAL, upstream, imp).await?;
        let client = tokio::net::UdpSocket::bind(LOCAL).await?;
        assert_eq!(
            round(&client, relay.addr, b"one").await?,
            Some(b"one".to_vec())
        );
        relay.set_cut(true);
        assert_eq!(round(&client, relay.addr, b"two").await?, None);
        relay.set_cut(false);
        assert_eq!(
            round(&client, relay.addr, b"three").await?,
            Some(b"three".to_vec())
        );
        Ok(())
    }

    /// A TCP stream arrives whole and in order despite "lost" chunks; a cut holds it back.
    #[tokio::test]
    async fn tcp_relays_in_order_under_loss_and_a_cut_holds_bytes_back() -> Result<()> {
        let listener = tokio::net::TcpListener::bind(LOCAL).await?;
        let upstream = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let imp = Impairment {
            delay: Duration::from_millis(5),
            loss_percent: 30.0,
        };
        let relay = Relay::tcp(None, LOCAL, upstream, imp).await?;
        let mut client = tokio::net::TcpStream::connect(relay.addr).await?;
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        for chunk in sent.chunks(40) {
            client.write_all(chunk).await?;
        }
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got)).await??;
        assert_eq!(got, sent);
        relay.set_cut(true);
        client.write_all(b"held").await?;
        let mut four = [0u8; 4];
        let early = tokio::time::timeout(Duration::from_millis(500), client.read_exact(&mut four));
        assert!(early.await.is_err(), "bytes crossed a cut link");
        relay.set_cut(false);
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut four)).await??;
        assert_eq!(&four, b"held");
        Ok(())
    }
}
