//! Streams the hub opens on a node's own connection (today: container logs for
//! `kubectl logs`), beside the sync stream.
//!
//! Why on that connection: the node dialled out, so this reaches a node behind NAT with no port
//! open on it, under the same mTLS identity. Why the sync stream does not suffer: each log
//! stream's data has a lower priority than the sync stream at both ends (the edge sends log
//! bytes at [`LOG_PRIORITY`]-like priority, and so does the hub for its request), the hub's
//! per-stream receive window is small (see `super::endpoint`), so a log stream holds at most that
//! much in flight, and at most [`MAX_LOG_STREAMS_PER_NODE`] run per node at once. A slow reader
//! stops reading the [`quinn::RecvStream`], the window closes, and the edge's writes wait: no
//! buffer grows anywhere.

use super::Hub;
use protocol::streams::{LogHeader, LogRefusal, LogRequest, StreamRequest};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Log streams one node serves at once; more get 429.
pub const MAX_LOG_STREAMS_PER_NODE: usize = 16;

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
    /// The node already serves as many streams as it may.
    #[error("node {node:?} already serves {MAX_LOG_STREAMS_PER_NODE} log streams; try again when one ends")]
    Busy {
        /// Node name.
        node: String,
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

/// One of a node's log-stream slots, given back when dropped.
struct StreamSlot {
    hub: Arc<Hub>,
    node: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self
            .hub
            .log_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.node);
            }
        }
        metrics::gauge!("skerry_hub_log_streams").decrement(1.0);
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

    fn take_slot(self: &Arc<Self>, node: &str) -> Option<StreamSlot> {
        let mut counts = self.log_streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(node.to_string()).or_insert(0);
        if *n >= MAX_LOG_STREAMS_PER_NODE {
            return None;
        }
        *n += 1;
        metrics::gauge!("skerry_hub_log_streams").increment(1.0);
        Some(StreamSlot {
            hub: self.clone(),
            node: node.to_string(),
        })
    }

    /// Opens a log stream to `node` for `req` and waits for the edge's answer.
    pub async fn open_log(
        self: &Arc<Self>,
        node: &str,
        req: LogRequest,
    ) -> Result<LogStream, StreamError> {
        let conn = self.sessions.lock().await.get(node).map(|s| s.conn.clone());
        let Some(conn) = conn else {
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
        let slot = self.take_slot(node).ok_or_else(|| StreamError::Busy {
            node: node.to_string(),
        })?;
        let link = |reason: String| StreamError::Link {
            node: node.to_string(),
            reason,
        };
        let opened = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link(e.to_string()))?;
            let _ = send.set_priority(LOG_PRIORITY);
            wire::frames::write_frame(&mut send, &StreamRequest::Logs(req))
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
                    "the node did not answer the log request within {}s (an edgecore older \
                     than log streaming never does: upgrade it)",
                    ANSWER_DEADLINE.as_secs()
                ))
            })??;
        match header {
            Some(LogHeader::Streaming) => Ok(LogStream {
                recv,
                _send: send,
                _slot: slot,
            }),
            Some(LogHeader::Refused { kind, message }) => {
                Err(StreamError::Refused { kind, message })
            }
            None => Err(link("the node closed the stream without answering".into())),
        }
    }
}
