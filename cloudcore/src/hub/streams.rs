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

use super::Hub;
use protocol::streams::{
    AttachRequest, ExecRequest, LogHeader, LogRefusal, LogRequest, StreamRequest,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Log streams one node serves at once; more get 429.
pub const MAX_LOG_STREAMS_PER_NODE: usize = 16;

/// Exec streams one node serves at once; more get 429.
pub const MAX_EXEC_STREAMS_PER_NODE: usize = 16;

/// The kinds of streams, each with its own slots per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `kubectl logs`.
    Logs,
    /// `kubectl exec` (and `cp`).
    Exec,
}

impl StreamKind {
    fn of(req: &StreamRequest) -> Self {
        match req {
            StreamRequest::Logs(_) => StreamKind::Logs,
            StreamRequest::Exec(_) | StreamRequest::Attach(_) => StreamKind::Exec,
        }
    }

    fn limit(self) -> usize {
        match self {
            StreamKind::Logs => MAX_LOG_STREAMS_PER_NODE,
            StreamKind::Exec => MAX_EXEC_STREAMS_PER_NODE,
        }
    }

    fn gauge(self) -> &'static str {
        match self {
            StreamKind::Logs => "skerry_hub_log_streams",
            StreamKind::Exec => "skerry_hub_exec_streams",
        }
    }

    fn what(self) -> &'static str {
        match self {
            StreamKind::Logs => "log",
            StreamKind::Exec => "exec",
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
    _slot: StreamSlot,
}

/// One of a node's stream slots, given back when dropped.
struct StreamSlot {
    hub: Arc<Hub>,
    node: String,
    kind: StreamKind,
}

impl Hub {
    fn stream_counts(&self, kind: StreamKind) -> &std::sync::Mutex<HashMap<String, usize>> {
        match kind {
            StreamKind::Logs => &self.log_streams,
            StreamKind::Exec => &self.exec_streams,
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self
            .hub
            .stream_counts(self.kind)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.node);
            }
        }
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

    fn take_slot(self: &Arc<Self>, node: &str, kind: StreamKind) -> Option<StreamSlot> {
        let mut counts = self
            .stream_counts(kind)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(node.to_string()).or_insert(0);
        if *n >= kind.limit() {
            return None;
        }
        *n += 1;
        metrics::gauge!(kind.gauge()).increment(1.0);
        Some(StreamSlot {
            hub: self.clone(),
            node: node.to_string(),
            kind,
        })
    }

    /// Opens a log stream to `node` for `req` and waits for the edge's answer.
    pub async fn open_log(
        self: &Arc<Self>,
        node: &str,
        req: LogRequest,
    ) -> Result<LogStream, StreamError> {
        let (send, recv, slot) = self.open_stream(node, StreamRequest::Logs(req)).await?;
        Ok(LogStream {
            recv,
            _send: send,
            _slot: slot,
        })
    }

    /// Opens an exec stream to `node` for `req` and waits for the edge to have started the
    /// command (or refused it).
    pub async fn open_exec(
        self: &Arc<Self>,
        node: &str,
        req: ExecRequest,
    ) -> Result<ExecStream, StreamError> {
        let (send, recv, slot) = self.open_stream(node, StreamRequest::Exec(req)).await?;
        Ok(ExecStream {
            send,
            recv,
            _slot: slot,
        })
    }

    /// Opens an attach stream to `node` (its frames are an exec stream's).
    pub async fn open_attach(
        self: &Arc<Self>,
        node: &str,
        req: AttachRequest,
    ) -> Result<ExecStream, StreamError> {
        let (send, recv, slot) = self.open_stream(node, StreamRequest::Attach(req)).await?;
        Ok(ExecStream {
            send,
            recv,
            _slot: slot,
        })
    }

    async fn open_stream(
        self: &Arc<Self>,
        node: &str,
        req: StreamRequest,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, StreamSlot), StreamError> {
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
                what: match kind {
                    StreamKind::Logs => "stream logs",
                    StreamKind::Exec => "run commands for exec",
                },
            });
        }
        let slot = self
            .take_slot(node, kind)
            .ok_or_else(|| StreamError::Busy {
                node: node.to_string(),
                limit: kind.limit(),
                what: kind.what(),
            })?;
        let link = |reason: String| StreamError::Link {
            node: node.to_string(),
            reason,
        };
        let opened = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link(e.to_string()))?;
            let _ = send.set_priority(LOG_PRIORITY);
            wire::frames::write_frame(&mut send, &req)
                .await
                .map_err(|e| link(e.to_string()))?;
            let header = wire::frames::read_frame::<LogHeader>(&mut recv, MAX_HEADER)
                .await
                .map_err(|e| link(e.to_string()))?;
            Ok::<_, StreamError>((send, recv, header))
        };
        let (send, recv, header) = tokio::time::timeout(ANSWER_DEADLINE, opened)
            .await
            .map_err(|_| {
                link(format!(
                    "the node did not answer the {} request within {}s (an edgecore older \
                     than log streaming never does: upgrade it)",
                    kind.what(),
                    ANSWER_DEADLINE.as_secs()
                ))
            })??;
        match header {
            Some(LogHeader::Streaming) => Ok((send, recv, slot)),
            Some(LogHeader::Refused { kind, message }) => {
                Err(StreamError::Refused { kind, message })
            }
            None => Err(link("the node closed the stream without answering".into())),
        }
    }
}
