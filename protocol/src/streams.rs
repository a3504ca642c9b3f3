//! Streams the hub opens on a node's own connection, beside the sync stream: today the log of a
//! container (`kubectl logs`).
//!
//! The node opened its connection outward, so the cloud can reach a node behind NAT without any
//! port open on it: the hub opens one bidirectional QUIC stream per request, writes one
//! [`StreamRequest`] frame and finishes its side; the edge answers with one [`LogHeader`] frame
//! and then, if it accepted, the log's bytes as they are (no framing: the stream's end is the
//! log's end, and a reset stream is a failure). Nothing here changed the sync messages, so the
//! protocol version stays: an edge that predates these streams never accepts them, which the
//! hub sees as a request that is never answered.

use serde::{Deserialize, Serialize};

/// The first frame of a stream the hub opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// Send a container's log.
    Logs(LogRequest),
}

/// Where a log starts in time (kubelet's `sinceSeconds` / `sinceTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSince {
    /// This many seconds before the edge's clock says now: the node's own clock decides, as a
    /// kubelet's does, so that clock skew between cloud and node does not shift the window.
    Seconds(u64),
    /// Nanoseconds since the Unix epoch (an absolute time the user gave).
    UnixNanos(i64),
}

/// What `GET .../pods/{name}/log` asked for, after the cloud checked and resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID as the cloud knows it, so that a pod recreated under the same name is not
    /// mistaken for the old one.
    pub uid: String,
    /// Container name (the cloud resolved the default).
    pub container: String,
    /// Keep streaming appended lines until the container ends.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<LogSince>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// The previous terminated instance's log instead of the current one.
    pub previous: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// Why the edge refused a log request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRefusal {
    /// No such pod or container on the node (or it never started): 404 / kubelet's 400.
    NotFound,
    /// The request cannot be served as asked (no previous instance, a runtime that keeps no
    /// timestamps): 400.
    BadRequest,
    /// Too many log streams on the node at once: 429.
    Busy,
    /// The node failed reading the log: 500.
    Internal,
}

/// The edge's first (and only framed) answer on a log stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogHeader {
    /// The log's bytes follow until the stream ends.
    Streaming,
    /// Refused; the stream ends after this frame.
    Refused {
        /// What kind of refusal, for the HTTP status.
        kind: LogRefusal,
        /// For the user, as kubelet would word it.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn requests_and_headers_round_trip_through_the_codec() {
        let req = StreamRequest::Logs(LogRequest {
            namespace: "default".into(),
            pod: "hello".into(),
            uid: "u-1".into(),
            container: "main".into(),
            follow: true,
            tail_lines: Some(10),
            since: Some(LogSince::UnixNanos(-5)),
            timestamps: true,
            previous: false,
            limit_bytes: Some(1 << 40),
        });
        let bytes = codec::encode(&req).expect("encode");
        let back: StreamRequest = codec::decode(&bytes).expect("decode");
        assert_eq!(back, req);
        let header = LogHeader::Refused {
            kind: LogRefusal::BadRequest,
            message: "no".into(),
        };
        let bytes = codec::encode(&header).expect("encode");
        assert_eq!(codec::decode::<LogHeader>(&bytes).expect("decode"), header);
    }
}
