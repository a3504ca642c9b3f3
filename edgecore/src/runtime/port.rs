//! Connecting to a pod's own `localhost` for `kubectl port-forward` (see
//! [`super::Runtime::connect_port`]): inside the pod's network namespace for pods that have one,
//! as kubelet's and containerd's port-forward do, so that a server bound to 127.0.0.1 in the pod
//! is reached and nothing else is.
//!
//! Entering a network namespace is per thread (`setns(2)`), so it happens on a thread made for
//! the one connection, which only creates the socket and ends: a socket stays in the namespace
//! it was created in, and no thread of the runtime ever changes namespace. IPv4 is tried first,
//! then IPv6, as containerd does; the error names both attempts.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How long a connection to the pod's port may take (a local connect either succeeds or is
/// refused at once; this bounds a pod whose accept queue is full).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn targets(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ]
}

fn both_failed(port: u16, v4: std::io::Error, v6: std::io::Error) -> String {
    format!("failed to connect to localhost:{port}: IPv4: {v4}; IPv6: {v6}")
}

/// Connects to `localhost:port` in the network namespace at `netns` (`/proc/PID/ns/net`), or in
/// this process's own namespace for `None` (pods on the host's network).
pub async fn connect_localhost(
    netns: Option<PathBuf>,
    port: u16,
) -> Result<tokio::net::TcpStream, String> {
    let Some(netns) = netns else {
        let [v4, v6] = targets(port);
        let attempt = |a| tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(a));
        let e4 = match attempt(v4).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
        let e6 = match attempt(v6).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
        return Err(both_failed(port, e4, e6));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("port-forward-netns".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port));
        })
        .map_err(|e| {
            format!("could not start a thread to enter the pod's network namespace: {e}")
        })?;
    let stream = rx
        .await
        .map_err(|_| "the thread entering the pod's network namespace died".to_string())??;
    stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
        .map_err(|e| format!("could not use the connection to localhost:{port}: {e}"))
}

/// On a thread of its own: enters the namespace, connects, and ends with the thread.
fn connect_in(netns: &std::path::Path, port: u16) -> Result<std::net::TcpStream, String> {
    let ns = std::fs::File::open(netns).map_err(|e| {
        format!(
            "the pod's network namespace {} cannot be opened: {e}",
            netns.display()
        )
    })?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!(
            "cannot enter the pod's network namespace {}: {e}",
            netns.display()
        )
    })?;
    let [v4, v6] = targets(port);
    let e4 = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let e6 = match std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    Err(format!(
        "{} inside the pod's network namespace",
        both_failed(port, e4, e6)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_to_a_listener_on_the_hosts_localhost_and_names_a_refusal() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        connect_localhost(None, port).await.expect("connects");
        drop(listener);
        let e = connect_localhost(None, port).await.expect_err("refused");
        assert!(
            e.contains(&format!("localhost:{port}")) && e.contains("IPv6"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connects_inside_a_namespace_path() {
        // This process's own namespace, entered by path on the helper thread.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let ns = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        connect_localhost(Some(ns), port).await.expect("connects");
        let e = connect_localhost(Some("/nonexistent/ns".into()), port)
            .await
            .expect_err("no such namespace");
        assert!(e.contains("cannot be opened"), "{e}");
    }
}
