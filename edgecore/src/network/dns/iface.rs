//! The node-local interface that carries the cluster DNS address, as NodeLocal DNSCache does:
//! a dummy interface (default `skerry-dns`) with the address as a /32 (or /128), so that the
//! kernel delivers packets for it to a socket on this host, and pods, whose default route leads
//! to the host, reach the edge's own DNS server at the address they were given.
//!
//! Where the kernel has no dummy driver, a persistent TUN device that no process reads stands in
//! for it (only local delivery of packets to the address is needed).
//!
//! Driven through iproute2 (`ip`), every step idempotent: creating an interface that exists,
//! adding an address it has, removing an interface that is gone all succeed. When the address
//! changes, the old one is removed and the new one added ([`ensure`] leaves exactly one).

use std::net::IpAddr;
use tokio::process::Command;

/// A failed `ip` command.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {message}; the cluster DNS interface needs iproute2 and CAP_NET_ADMIN (run edgecore as root, or pass --dns=false)")]
pub struct IfaceError {
    /// The arguments given to `ip`.
    pub args: String,
    /// Its standard error, or why it could not run.
    pub message: String,
}

async fn ip(args: &[&str]) -> Result<String, IfaceError> {
    let err = |message: String| IfaceError {
        args: args.join(" "),
        message,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// The addresses on interface `name` (`None` when it does not exist).
pub async fn addresses(name: &str) -> Result<Option<Vec<IpAddr>>, IfaceError> {
    match ip(&["-o", "addr", "show", "dev", name]).await {
        Ok(out) => Ok(Some(
            out.lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    words.find(|w| *w == "inet" || *w == "inet6")?;
                    words.next()?.split('/').next()?.parse().ok()
                })
                .collect(),
        )),
        Err(e) if e.message.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes dummy interface `name` exist, be up, and carry `addr` (as a host route) and no other
/// address.
pub async fn ensure(name: &str, addr: IpAddr) -> Result<(), IfaceError> {
    if addresses(name).await?.is_none() {
        match ip(&["link", "add", name, "type", "dummy"]).await {
            Ok(_) => {}
            // Created by a concurrent call between the check and now.
            Err(e) if e.message.contains("File exists") => {}
            // A kernel without the dummy driver (some container hosts): a persistent TUN
            // device that no process reads does the same job, since only packets *to* the
            // address matter and the kernel delivers those locally.
            Err(e) if e.message.contains("Unknown device type") => {
                tracing::info!(
                    interface = name,
                    "no dummy interfaces in this kernel; using a TUN device"
                );
                match ip(&["tuntap", "add", "dev", name, "mode", "tun"]).await {
                    Ok(_) => {}
                    Err(e) if e.message.contains("exists") || e.message.contains("busy") => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    let cidr = format!("{addr}/{prefix}");
    ip(&["addr", "replace", &cidr, "dev", name]).await?;
    for other in addresses(name).await?.unwrap_or_default() {
        if other != addr && !is_link_local(other) {
            let prefix = if other.is_ipv4() { 32 } else { 128 };
            match ip(&["addr", "del", &format!("{other}/{prefix}"), "dev", name]).await {
                Ok(_) => {}
                Err(e) if e.message.contains("Cannot assign") => {}
                Err(e) => return Err(e),
            }
        }
    }
    ip(&["link", "set", name, "up"]).await?;
    Ok(())
}

/// Removes interface `name`; one that does not exist is removed.
pub async fn remove(name: &str) -> Result<(), IfaceError> {
    match ip(&["link", "del", name]).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.message.contains("Cannot find device") || e.message.contains("does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
