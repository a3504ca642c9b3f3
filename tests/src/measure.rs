//! Small measuring tools the bench binaries share: one TCP connection's setup time and a
//! percentile of sorted samples.

use anyhow::{Context, Result};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One connection: connect, read the server's first byte; seconds. (The server must write a
/// byte at once: this times the whole round trip through whatever is in between.)
pub fn setup_once(addr: SocketAddr) -> Result<f64> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    Ok(t.elapsed().as_secs_f64())
}

/// The `p` percentile (0..=1) of `sorted`, nearest rank.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
