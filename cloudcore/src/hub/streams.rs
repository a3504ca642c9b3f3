//! Streams the hub opens on a node's own connection (container logs for `kubectl logs`,
//! commands for `kubectl exec` and `kubectl cp`), beside the sync stream.
//!
//! Why on that connection: the node dialled out, so this reaches a node behind NAT with no port
//! open on it, under the same mTLS identity. Why the sync stream does not suffer: each log
//! stream's data has a lower priority than the sync stream at both ends (the edge sends log
//! bytes at [`LOG_PRIORITY`]-like priority, and so does the hub for its request), the hub's
//! per-stream receive window is small (see `super::endpoint`), so a log stream holds at most that
//! much in flight, and at most [`MAX_LOG_STREAMS_PER_NODE`] run per node at once. A slow reader
//! stops reading the [`quinn::RecvStream`], the window closes, and the edge's writes wait: no
//! buffer grows anywhere.
//!
//! Exec streams have slots of their own ([`MAX_EXEC_STREAMS_PER_NODE`]), so that a burst of
//! `kubectl logs` cannot lock an admin out of a shell, and are sent only to a node whose session
//! speaks a protocol version that knows them ([`StreamRequest::known_to`]): an older edge would
//! fail to decode the request and never answer.
//!
//! Per user too ([`super::slots`]): at most [`super::slots::MAX_STREAMS_PER_USER`] over all
//! nodes, and at most half a node's slots of a kind, so that no one user can take every slot
//! of a node from the others.

use super::link_watch::{LinkCut, Watched};
use super::slots::Full;
use super::Hub;
use protocol::streams::{
    AttachIoRequest, AttachRequest, ExecRequest, LogHeader, LogRefusal, LogRequest,
    PortForwardRequest, StreamRequest,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Log streams one node serves at once; more get 429.
pub const MAX_LOG_STREAMS_PER_NODE: usize = 16;

/// Exec streams one node serves at once; more get 429.
pub const MAX_EXEC_STREAMS_PER_NODE: usize = 16;

/// Port-forwarded connections one node carries at once (a browser through `kubectl
/// port-forward` opens several); more are refused on the connection's error stream.
pub const MAX_PORT_FORWARD_STREAMS_PER_NODE: usize = 64;

/// The kinds of streams, each with its own slots per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `kubectl logs`.
    Logs,
    /// `kubectl exec` (and `cp`).
    Exec,
    /// One connection of a `kubectl port-forward`.
    PortForward,
}

impl StreamKind {
    fn of(req: &StreamRequest) -> Self {
        match req {
            StreamRequest::Logs(_) => StreamKind::Logs,
            StreamRequest::Exec(_) | StreamRequest::Attach(_) | StreamRequest::AttachIo(_) => {
                StreamKind::Exec
            }
            StreamRequest::PortForward(_) => StreamKind::PortForward,
        }
    }

    /// Slots of this kind one node has.
    pub(super) fn limit(self) -> usize {
        match self {
            StreamKind::Logs => MAX_LOG_STREAMS_PER_NODE,
            StreamKind::Exec => MAX_EXEC_STREAMS_PER_NODE,
            StreamKind::PortForward => MAX_PORT_FORWARD_STREAMS_PER_NODE,
        }
    }

    /// Slots of this kind one user may hold on one node: half the node's ([`super::slots`]).
    pub(super) fn user_share(self) -> usize {
        self.limit() / 2
    }

    fn gauge(self) -> &'static str {
        match self {
            StreamKind::Logs => "skerry_hub_log_streams",
            StreamKind::Exec => "skerry_hub_exec_streams",
            StreamKind::PortForward => "skerry_hub_port_forward_streams",
        }
    }

    fn what(self) -> &'static str {
        match self {
            StreamKind::Logs => "log",
            StreamKind::Exec => "exec",
            StreamKind::PortForward => "port-forward",
        }
    }
}

/// Priority of the hub's side of a log stream (the sync stream's is 0).
pub const LOG_PRIORITY: i32 = -8;

/// How long the edge may take to answer a log request (find the files, open them).
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Largest header frame accepted from the edge (a refusal message).
const MAX_HEADER: usize = 16 * 1024;

/// Why a stream to a node could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The node has no session.
    #[error("node {node:?} is not connected")]
    NotConnected {
        /// Node name.
        node: String,
        /// When its last session ended, if this cloudcore saw it.
        since: Option<SystemTime>,
    },
    /// The node already serves as many streams of this kind as it may.
    #[error("node {node:?} already serves {limit} {what} streams; try again when one ends")]
    Busy {
        /// Node name.
        node: String,
        /// Its limit.
        limit: usize,
        /// Which kind.
        what: &'static str,
    },
    /// The user holds as many streams as a user may: over all nodes, or of this kind on
    /// this node.
    #[error("{}", user_busy(user, node, *limit, *of, what))]
    UserBusy {
        /// The user.
        user: String,
        /// The node, if the user's share of it is what is full.
        node: Option<String>,
        /// The limit reached.
        limit: usize,
        /// The node's slots of the kind (with `node`).
        of: usize,
        /// Which kind.
        what: &'static str,
    },
    /// The node's edgecore is too old for this kind of stream.
    #[error(
        "node {node:?} runs an edgecore of protocol v{version}, which cannot {what}; upgrade it \
         to one of protocol v{needed} or newer"
    )]
    TooOld {
        /// Node name.
        node: String,
        /// Its session's protocol version.
        version: u32,
        /// The version the request needs.
        needed: u32,
        /// What the request does.
        what: &'static str,
    },
    /// The edge refused the request.
    #[error("{message}")]
    Refused {
        /// Why, for the HTTP status.
        kind: LogRefusal,
        /// The edge's words.
        message: String,
    },
    /// The link failed while opening the stream, or the edge did not answer.
    #[error("the link to node {node:?} failed: {reason}")]
    Link {
        /// Node name.
        node: String,
        /// What happened.
        reason: String,
    },
}

/// An open log stream: read its bytes from `recv`; dropping it cancels the stream on the edge.
pub struct LogStream {
    /// The log's bytes; a clean end is the log's end, an error a cut stream.
    pub recv: quinn::RecvStream,
    /// Resolves when the link is judged cut: the stream then ends with its message.
    pub cut: LinkCut,
    /// Kept open while the log is read: the edge takes its end as "nobody reads any more".
    _send: quinn::SendStream,
    _slot: StreamSlot,
}

/// An open exec stream: [`protocol::streams::ExecInput`] frames go to `send`,
/// [`protocol::streams::ExecEvent`] frames come from `recv`; dropping it ends the command on
/// the edge.
pub struct ExecStream {
    /// Towards the edge.
    pub send: quinn::SendStream,
    /// From the edge.
    pub recv: quinn::RecvStream,
    /// Resolves when the link is judged cut: the stream then ends with its message.
    pub cut: LinkCut,
    _slot: StreamSlot,
}

/// One forwarded connection: its bytes go to `send` (finishing it is the client's half-close)
/// and come from `recv` (its end is the pod's); dropping it resets the connection on the edge.
pub struct PortForwardStream {
    /// Towards the pod.
    pub send: quinn::SendStream,
    /// From the pod.
    pub recv: quinn::RecvStream,
    cut: LinkCut,
    _slot: StreamSlot,
}

impl PortForwardStream {
    /// Its two sides and the slot, to be held as long as either side is used. The pod's side
    /// fails once the link is judged cut.
    pub fn into_parts(self) -> (quinn::SendStream, Watched<quinn::RecvStream>, Box<dyn Send>) {
        (
            self.send,
            Watched::new(self.recv, self.cut),
            Box::new(self._slot),
        )
    }
}

fn user_busy(user: &str, node: &Option<String>, limit: usize, of: usize, what: &str) -> String {
    match node {
        Some(node) => format!(
            "user {user:?} already holds {limit} of node {node:?}'s {of} {what} streams, the \
             most one user may; try again when one ends"
        ),
        None => format!(
            "user {user:?} already holds {limit} streams to nodes (logs, exec, attach, \
             port-forward), the most one user may; try again when one ends"
        ),
    }
}

/// One of a node's stream slots, given back when dropped.
struct StreamSlot {
    hub: Arc<Hub>,
    node: String,
    user: String,
    kind: StreamKind,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub
            .stream_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .give(&self.node, &self.user, self.kind);
        metrics::gauge!(self.kind.gauge()).decrement(1.0);
    }
}

impl Hub {
    /// When `node`'s last session ended, if it is not connected now and this cloudcore saw it go.
    pub(super) fn mark_away(&self, node: &str) {
        self.away_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), SystemTime::now());
    }

    /// Forgets when `node` went away (it is back).
    pub(super) fn mark_back(&self, node: &str) {
        self.away_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// The protocol version of `node`'s session, if it has one now.
    pub async fn session_version(&self, node: &str) -> Option<u32> {
        self.sessions.lock().await.get(node).map(|s| s.version)
    }

    /// When `node`'s last session ended, if this cloudcore saw it go and it is not back.
    pub fn away_since(&self, node: &str) -> Option<SystemTime> {
        self.away_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .copied()
    }

    fn take_slot(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        kind: StreamKind,
    ) -> Result<StreamSlot, StreamError> {
        let taken = self
            .stream_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(node, user, kind);
        match taken {
            Ok(()) => {}
            Err(Full::Node { limit }) => {
                return Err(StreamError::Busy {
                    node: node.to_string(),
                    limit,
                    what: kind.what(),
                })
            }
            Err(Full::User { limit }) => {
                return Err(StreamError::UserBusy {
                    user: user.to_string(),
                    node: None,
                    limit,
                    of: 0,
                    what: kind.what(),
                })
            }
            Err(Full::UserOnNode { limit, of }) => {
                return Err(StreamError::UserBusy {
                    user: user.to_string(),
                    node: Some(node.to_string()),
                    limit,
                    of,
                    what: kind.what(),
                })
            }
        }
        metrics::gauge!(kind.gauge()).increment(1.0);
        Ok(StreamSlot {
            hub: self.clone(),
            node: node.to_string(),
            user: user.to_string(),
            kind,
        })
    }

    /// Opens a log stream to `node` for `req` and waits for the edge's answer.
    pub async fn open_log(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: LogRequest,
    ) -> Result<LogStream, StreamError> {
        let (send, recv, slot, cut) = self
            .open_stream(node, user, StreamRequest::Logs(req))
            .await?;
        Ok(LogStream {
            recv,
            cut,
            _send: send,
            _slot: slot,
        })
    }

    /// Opens an exec stream to `node` for `req` and waits for the edge to have started the
    /// command (or refused it).
    pub async fn open_exec(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: ExecRequest,
    ) -> Result<ExecStream, StreamError> {
        let (send, recv, slot, cut) = self
            .open_stream(node, user, StreamRequest::Exec(req))
            .await?;
        Ok(ExecStream {
            send,
            recv,
            cut,
            _slot: slot,
        })
    }

    /// Opens an attach stream to `node` (its frames are an exec stream's).
    pub async fn open_attach(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: AttachRequest,
    ) -> Result<ExecStream, StreamError> {
        let (send, recv, slot, cut) = self
            .open_stream(node, user, StreamRequest::Attach(req))
            .await?;
        Ok(ExecStream {
            send,
            recv,
            cut,
            _slot: slot,
        })
    }

    /// Opens an attach stream to the streams of a container started with `stdin` or `tty`
    /// (its frames are an exec stream's, both ways).
    pub async fn open_attach_io(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: AttachIoRequest,
    ) -> Result<ExecStream, StreamError> {
        let (send, recv, slot, cut) = self
            .open_stream(node, user, StreamRequest::AttachIo(req))
            .await?;
        Ok(ExecStream {
            send,
            recv,
            cut,
            _slot: slot,
        })
    }

    /// Opens a stream to `node` carrying one connection to a pod's port, once the edge has
    /// connected to it (or refused).
    pub async fn open_port_forward(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: PortForwardRequest,
    ) -> Result<PortForwardStream, StreamError> {
        let (send, recv, slot, cut) = self
            .open_stream(node, user, StreamRequest::PortForward(req))
            .await?;
        Ok(PortForwardStream {
            send,
            recv,
            cut,
            _slot: slot,
        })
    }

    async fn open_stream(
        self: &Arc<Self>,
        node: &str,
        user: &str,
        req: StreamRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, StreamSlot, LinkCut), StreamError> {
        let kind = StreamKind::of(&req);
        let session = self
            .sessions
            .lock()
            .await
            .get(node)
            .map(|s| (s.conn.clone(), s.version));
        let Some((conn, version)) = session else {
            let since = self
                .away_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(node)
                .copied();
            return Err(StreamError::NotConnected {
                node: node.to_string(),
                since,
            });
        };
        if !req.known_to(version) {
            return Err(StreamError::TooOld {
                node: node.to_string(),
                version,
                needed: req.since_version(),
                what: match &req {
                    StreamRequest::Logs(_) => "stream logs",
                    StreamRequest::AttachIo(_) => "attach to a container's stdin or terminal",
                    StreamRequest::Exec(_) | StreamRequest::Attach(_) => "run commands for exec",
                    StreamRequest::PortForward(_) => "forward ports",
                },
            });
        }
        let slot = self.take_slot(node, user, kind)?;
        let link = |reason: String| StreamError::Link {
            node: node.to_string(),
            reason,
        };
        let (sent, before) = (
            tokio::sync::Notify::new(),
            std::sync::atomic::AtomicU64::new(0),
        );
        let opened = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link(e.to_string()))?;
            let _ = send.set_priority(LOG_PRIORITY);
            before.store(
                conn.stats().udp_rx.datagrams,
                std::sync::atomic::Ordering::Relaxed,
            );
            wire::frames::write_frame(&mut send, &req)
                .await
                .map_err(|e| link(e.to_string()))?;
            sent.notify_one();
            let header = wire::frames::read_frame::<LogHeader>(&mut recv, MAX_HEADER)
                .await
                .map_err(|e| link(e.to_string()))?;
            Ok::<_, StreamError>((send, recv, header))
        };
        let deadline = tokio::time::timeout(ANSWER_DEADLINE, opened);
        let (send, recv, header) = tokio::select! {
            answered = deadline => answered.map_err(|_| {
                link(format!(
                    "the node did not answer the {} request within {}s (an edgecore older \
                     than log streaming never does: upgrade it)",
                    kind.what(),
                    ANSWER_DEADLINE.as_secs()
                ))
            })??,
            silent = link_silent(&conn, &sent, &before) => return Err(link(format!(
                "nothing came back on the node's link for {} ms after the request, not even \
                 an acknowledgement: the link appears cut (the node has not dropped its session \
                 yet); on the node itself `edgecore logs` and `edgecore exec` work offline",
                silent.as_millis()
            ))),
        };
        match header {
            Some(LogHeader::Streaming) => {
                let cut = LinkCut::watch(conn, node.to_string());
                Ok((send, recv, slot, cut))
            }
            Some(LogHeader::Refused { kind, message }) => {
                Err(StreamError::Refused { kind, message })
            }
            None => Err(link("the node closed the stream without answering".into())),
        }
    }
}

/// Resolves, with the time waited, once the link has carried nothing from the node for a
/// probe window after a request was sent (`sent` is notified then, and `before` holds what
/// the link had received just before it; until then the stream may wait for the node's
/// stream credit, in silence): a live link acknowledges the request's packets
/// within a round trip (QUIC's acknowledgements come within its `max_ack_delay`, 25 ms), so
/// silence for several round trips means a cut the idle timeout (a minute by default) has not
/// caught yet, and the client gets a 503 now instead of a hang. The window is four smoothed
/// round trips, at least [`PROBE_MIN`] (a lossy link's retransmits) and at most [`PROBE_MAX`].
/// Never resolves while the link answers.
async fn link_silent(
    conn: &quinn::Connection,
    sent: &tokio::sync::Notify,
    before: &std::sync::atomic::AtomicU64,
) -> Duration {
    sent.notified().await;
    let started = tokio::time::Instant::now();
    let window = (conn.rtt() * 4).clamp(PROBE_MIN, PROBE_MAX);
    let received = before.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if conn.stats().udp_rx.datagrams > received {
            // Heard since the request: the link is alive; the answer deadline governs.
            std::future::pending::<()>().await;
        }
        if started.elapsed() >= window {
            return started.elapsed();
        }
    }
}

/// The shortest silence taken for a cut link (see [`link_silent`]).
const PROBE_MIN: Duration = Duration::from_secs(1);

/// The longest silence waited for before a link is taken for cut (see [`link_silent`]).
const PROBE_MAX: Duration = Duration::from_secs(5);
