//! The gRPC connection to containerd: one tonic channel over its unix socket, and every call
//! bounded by a deadline.
//!
//! The channel is lazy and reconnects by itself: edgecore starts (and keeps running) while
//! containerd is down or restarting, and the first call after containerd is back opens a new
//! connection. A call that finds the connection broken (`Unavailable`) is retried once when it is
//! safe to repeat, so that a containerd restart is invisible to the pod workers. A containerd that
//! accepts the connection but never answers cannot hold a worker: every call ends at its
//! deadline with an error naming the socket.

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

/// How long opening the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the one retry of a call that found the connection broken.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// Largest response accepted: `ExecSync` may return up to 16 MiB of each stream.
const MAX_MESSAGE: usize = 40 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer within the deadline.
    Timeout(Duration),
    /// containerd (or the transport) answered with an error.
    Status(tonic::Status),
}

impl CallError {
    /// The gRPC code, if containerd answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            CallError::Timeout(_) => None,
            CallError::Status(s) => Some(s.code()),
        }
    }

    /// Whether the object the call was about does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }
}

/// A lazily connected, self-reconnecting channel to containerd.
#[derive(Debug, Clone)]
pub struct Conn {
    channel: Channel,
    socket: PathBuf,
    /// Deadline of a call that does not say otherwise.
    pub timeout: Duration,
}

impl Conn {
    /// A channel to the socket at `socket`; nothing is dialled until the first call. Must be
    /// called within a tokio runtime (the channel's worker task runs on it).
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        let path = socket.to_path_buf();
        // The URI is required by tonic but never dialled: the connector opens the socket.
        let channel =
            Endpoint::from_static("http://containerd.invalid")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        Self {
            channel,
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// The socket this talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The channel itself, for containerd's own services on the same socket.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A client of CRI's runtime service.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// A client of CRI's image service.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Runs `rpc` (which makes one call) with the deadline `timeout`. With `idempotent`, a call
    /// that found the connection broken is made once more (within the same deadline).
    pub async fn call<T, F, Fut>(
        &self,
        timeout: Duration,
        idempotent: bool,
        mut rpc: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = crate::runtime::deadline_after(Instant::now(), timeout);
        let mut retried = false;
        loop {
            match tokio::time::timeout_at(deadline, rpc()).await {
                Err(_) => return Err(CallError::Timeout(timeout)),
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if idempotent && !retried && status.code() == Code::Unavailable => {
                    retried = true;
                    tracing::debug!(socket = %self.socket.display(), error = %status,
                                    "containerd connection broken; retrying once");
                    if tokio::time::timeout_at(deadline, tokio::time::sleep(RETRY_DELAY))
                        .await
                        .is_err()
                    {
                        return Err(CallError::Status(status));
                    }
                }
                Ok(Err(status)) => return Err(CallError::Status(status)),
            }
        }
    }

    /// A human description of a failed call, naming the socket and what to check.
    pub fn describe(&self, op: &str, error: &CallError) -> String {
        let socket = self.socket.display();
        match error {
            CallError::Timeout(after) => format!(
                "containerd at {socket} did not answer {op} within {:.1}s; it is hung or \
                 overloaded (check `systemctl status containerd` and its log)",
                after.as_secs_f64()
            ),
            CallError::Status(status) if status.code() == Code::Unavailable => format!(
                "cannot reach containerd at {socket} for {op}: {}; is containerd running, \
                 and is --cri-socket its socket?",
                status_text(status)
            ),
            CallError::Status(status) => format!(
                "containerd at {socket} refused {op}: {}",
                status_text(status)
            ),
        }
    }
}

/// A status's message with the cause of a transport error (which tonic keeps as its source).
pub fn status_text(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn conn() -> Conn {
        Conn::new(
            Path::new("/nonexistent/containerd.sock"),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn broken_connections_are_retried_once_for_idempotent_calls_only() {
        let conn = conn();
        let calls = AtomicU32::new(0);
        let flaky = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(tonic::Status::unavailable("connection reset"))
                } else {
                    Ok(tonic::Response::new(n))
                }
            }
        };
        assert_eq!(conn.call(conn.timeout, true, flaky).await.ok(), Some(1));
        calls.store(0, Ordering::SeqCst);
        let once = conn.call(conn.timeout, false, flaky).await;
        assert_eq!(once.err().and_then(|e| e.code()), Some(Code::Unavailable));
        // Other errors are final, and a second Unavailable too.
        calls.store(0, Ordering::SeqCst);
        let not_found = conn
            .call(conn.timeout, true, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<tonic::Response<()>, _>(tonic::Status::not_found("gone")) }
            })
            .await;
        assert!(not_found.err().is_some_and(|e| e.is_not_found()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        calls.store(0, Ordering::SeqCst);
        let down = conn
            .call(conn.timeout, true, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<tonic::Response<()>, _>(tonic::Status::unavailable("down")) }
            })
            .await;
        assert_eq!(down.err().and_then(|e| e.code()), Some(Code::Unavailable));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_call_that_never_answers_ends_at_its_deadline_naming_the_socket() {
        let conn = conn();
        let result = conn
            .call(Duration::from_millis(100), true, || {
                std::future::pending::<Result<tonic::Response<()>, tonic::Status>>()
            })
            .await;
        let err = result.expect_err("timed out");
        assert!(matches!(err, CallError::Timeout(d) if d == Duration::from_millis(100)));
        let text = conn.describe("ListContainers", &err);
        assert!(text.contains("/nonexistent/containerd.sock"), "{text}");
        assert!(text.contains("ListContainers"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_reported_as_unreachable() {
        let conn = conn();
        let result = conn
            .call(conn.timeout, true, || {
                let mut client = conn.runtime();
                async move { client.version(k8s_cri::v1::VersionRequest::default()).await }
            })
            .await;
        let err = result.expect_err("no containerd there");
        assert_eq!(err.code(), Some(Code::Unavailable), "{err:?}");
        let text = conn.describe("Version", &err);
        assert!(text.contains("is containerd running"), "{text}");
    }
}
