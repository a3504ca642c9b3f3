//! Streams the hub opens on a node's own connection, beside the sync stream: the log of a
//! container (`kubectl logs`) and a command run in one (`kubectl exec`, and `kubectl cp`, which
//! runs `tar` through exec).
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
///
/// bincode is positional: a variant appended here is undecodable for an edge that predates it,
/// which then never answers (it resets the stream). So each variant has the protocol version
/// that introduced it ([`StreamRequest::since_version`]) and the hub sends it only on a session
/// of that version or newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// Send a container's log.
    Logs(LogRequest),
    /// Run a command in a container and carry its standard streams (protocol v6). After the
    /// edge's [`LogHeader::Streaming`], the hub sends [`ExecInput`] frames and the edge
    /// [`ExecEvent`] frames, the last of which is [`ExecEvent::Exited`] or
    /// [`ExecEvent::Failed`].
    Exec(ExecRequest),
    /// Carry a running container's output from now on (`kubectl attach`, protocol v6): after
    /// the edge's [`LogHeader::Streaming`], [`ExecEvent::Stdout`] and [`ExecEvent::Stderr`]
    /// frames, then [`ExecEvent::Exited`] once the container's instance ended. The hub's
    /// frames are read and dropped (the containers keep no stdin open to attach to).
    Attach(AttachRequest),
    /// Carry one TCP connection to a port of a pod (`kubectl port-forward`, protocol v7): the
    /// edge connects first (inside the pod's network namespace, to `localhost:port`) and
    /// answers [`LogHeader::Streaming`] or a refusal; then the stream's bytes are the
    /// connection's, unframed, each way. A finished side is a half-close; a reset one, a cut.
    PortForward(PortForwardRequest),
    /// Attach to a container that was started with `stdin` or `tty` (protocol v7): its own
    /// standard streams, not its log. The frames are an exec stream's: [`ExecInput`] from the
    /// hub (stdin, resizes, stdin's close), [`ExecEvent`] from the edge, ended by
    /// [`ExecEvent::Exited`] when the container's instance ends (code 0: the attach ended, not
    /// the container's status) or [`ExecEvent::Failed`].
    AttachIo(AttachIoRequest),
}

/// The protocol version whose edges understand [`StreamRequest::PortForward`].
pub const PORT_FORWARD_SINCE_VERSION: u32 = 7;

/// One connection of `.../pods/{name}/portforward`, after the cloud checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForwardRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID as the cloud knows it.
    pub uid: String,
    /// The pod's port (1 to 65535).
    pub port: u16,
}

/// The protocol version whose edges understand [`StreamRequest::Exec`].
pub const EXEC_SINCE_VERSION: u32 = 6;

/// The protocol version whose edges understand [`StreamRequest::AttachIo`].
pub const ATTACH_IO_SINCE_VERSION: u32 = 7;

impl StreamRequest {
    /// The oldest protocol version whose edges decode this request.
    pub fn since_version(&self) -> u32 {
        match self {
            // Log streams came without a version bump (v5 edges serve them).
            StreamRequest::Logs(_) => 5,
            StreamRequest::Exec(_) | StreamRequest::Attach(_) => EXEC_SINCE_VERSION,
            StreamRequest::PortForward(_) => PORT_FORWARD_SINCE_VERSION,
            StreamRequest::AttachIo(_) => ATTACH_IO_SINCE_VERSION,
        }
    }

    /// Whether an edge of protocol `version` can decode this request.
    pub fn known_to(&self, version: u32) -> bool {
        version >= self.since_version()
    }
}

/// What `GET .../pods/{name}/attach` asked for, after the cloud checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID as the cloud knows it.
    pub uid: String,
    /// Container name (the cloud resolved the default).
    pub container: String,
}

/// What `GET .../pods/{name}/attach` asked of a container started with `stdin` or `tty`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachIoRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID as the cloud knows it.
    pub uid: String,
    /// Container name (the cloud resolved the default).
    pub container: String,
    /// The client sends input (the container was started with `stdin`; otherwise false).
    pub stdin: bool,
    /// The container runs on a terminal (its `tty`, as kubelet takes it: whether a process
    /// has a terminal cannot change after it started).
    pub tty: bool,
    /// The client wants standard error (never with `tty`).
    pub stderr: bool,
}

/// A terminal's size in character cells (`kubectl exec -t`'s resize messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// What `POST/GET .../pods/{name}/exec` asked for, after the cloud checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID as the cloud knows it (empty: match by name, as the offline command does).
    pub uid: String,
    /// Container name (the cloud resolved the default).
    pub container: String,
    /// The command and its arguments (at least one element).
    pub command: Vec<String>,
    /// The client sends standard input.
    pub stdin: bool,
    /// The client wants standard output.
    pub stdout: bool,
    /// The client wants standard error (never with `tty`: a terminal has one output).
    pub stderr: bool,
    /// Run the command on a pseudo terminal.
    pub tty: bool,
    /// The client's terminal size when it started (with `tty`): the terminal has it from the
    /// start, so a command that asks at once (`stty size`) does not race the first resize.
    pub size: Option<TermSize>,
}

/// Largest payload of one [`ExecInput::Stdin`] or [`ExecEvent`] output frame: both ends cut
/// their reads to it, so a frame never needs more memory than this to decode.
pub const EXEC_CHUNK: usize = 32 * 1024;

/// Largest exec frame either end accepts (a chunk plus its framing).
pub const MAX_EXEC_FRAME: usize = EXEC_CHUNK + 1024;

/// A frame from the hub on an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecInput {
    /// Bytes for the command's standard input.
    Stdin(Vec<u8>),
    /// The client closed standard input: the command reads its end.
    StdinClosed,
    /// The client's terminal changed size.
    Resize(TermSize),
}

/// A frame from the edge on an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecEvent {
    /// Bytes the command wrote to standard output (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to standard error.
    Stderr(Vec<u8>),
    /// The command ended with this exit code (128 + N for signal N), after all its output.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The command could not be run, or the runtime lost it (the message says which).
    Failed {
        /// For the user.
        message: String,
    },
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

/// Why the edge refused a log or exec request.
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

/// The edge's first answer on a stream: the only framed one of a log stream, the one before
/// the [`ExecEvent`]s of an exec stream.
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
        let exec = StreamRequest::Exec(ExecRequest {
            namespace: "default".into(),
            pod: "hello".into(),
            uid: String::new(),
            container: "main".into(),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
            size: Some(TermSize {
                width: 80,
                height: 24,
            }),
        });
        let bytes = codec::encode(&exec).expect("encode");
        assert_eq!(
            codec::decode::<StreamRequest>(&bytes).expect("decode"),
            exec
        );
        for frame in [
            ExecInput::Stdin(vec![0; EXEC_CHUNK]),
            ExecInput::StdinClosed,
            ExecInput::Resize(TermSize {
                width: 80,
                height: 24,
            }),
        ] {
            let bytes = codec::encode(&frame).expect("encode");
            assert!(bytes.len() <= MAX_EXEC_FRAME);
            assert_eq!(codec::decode::<ExecInput>(&bytes).expect("decode"), frame);
        }
        let event = ExecEvent::Stderr(vec![7; EXEC_CHUNK]);
        let bytes = codec::encode(&event).expect("encode");
        assert!(bytes.len() <= MAX_EXEC_FRAME);
        assert_eq!(codec::decode::<ExecEvent>(&bytes).expect("decode"), event);
    }

    #[test]
    fn exec_is_only_for_edges_that_know_it() {
        let logs = StreamRequest::Logs(LogRequest {
            namespace: String::new(),
            pod: String::new(),
            uid: String::new(),
            container: String::new(),
            follow: false,
            tail_lines: None,
            since: None,
            timestamps: false,
            previous: false,
            limit_bytes: None,
        });
        assert!(logs.known_to(5));
        let exec = StreamRequest::Exec(ExecRequest {
            namespace: String::new(),
            pod: String::new(),
            uid: String::new(),
            container: String::new(),
            command: vec!["true".into()],
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
            size: None,
        });
        assert!(!exec.known_to(5));
        assert!(exec.known_to(EXEC_SINCE_VERSION));
        // A v5 edge decodes only the variants it knew: the new one is an error, not a misread.
        let bytes = codec::encode(&exec).expect("encode");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum V5Request {
            Logs(LogRequest),
        }
        assert!(codec::decode::<V5Request>(&bytes).is_err());
    }

    #[test]
    fn port_forward_is_only_for_v7_edges_and_v6_edges_cannot_misread_it() {
        let pf = StreamRequest::PortForward(PortForwardRequest {
            namespace: "default".into(),
            pod: "web".into(),
            uid: "u-1".into(),
            port: 8080,
        });
        assert!(!pf.known_to(6));
        assert!(pf.known_to(PORT_FORWARD_SINCE_VERSION));
        let bytes = codec::encode(&pf).expect("encode");
        assert_eq!(codec::decode::<StreamRequest>(&bytes).expect("decode"), pf);
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum V6Request {
            Logs(LogRequest),
            Exec(ExecRequest),
            Attach(AttachRequest),
        }
        assert!(codec::decode::<V6Request>(&bytes).is_err());
    }
}
