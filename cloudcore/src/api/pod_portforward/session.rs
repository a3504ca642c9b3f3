//! One `kubectl port-forward` connection served as kubelet serves it: a SPDY/3.1 session in
//! which every forwarded TCP connection is a pair of streams sharing a `requestID` (an `error`
//! stream, then a `data` stream, each with the `port`), each pair carried to the pod by one
//! stream of the node's link (an [`Upstream`]).
//!
//! # Back-pressure, and what is bounded
//!
//! One task reads the client's frames, one writes frames to it (from a channel of
//! [`WRITE_QUEUE`] frames), and each pair has a task that copies both ways. Bytes for the pod
//! go through a channel of [`UP_QUEUE`] frames per pair: when the pod's side is slow, the
//! channel fills, the reader waits, and kubectl's writes wait on TCP (spdystream has no
//! per-stream windows, so this is how kubelet's server holds back too). Bytes from the pod are
//! read [`CHUNK`] at a time and wait for the writer: a client that stops reading stops the
//! node's stream, whose window then stops the edge. At most [`MAX_STREAMS`] streams are open
//! per session.
//!
//! # How a connection ends
//!
//! The client finishes its data stream (`FIN`): the pod's side is finished (a half-close; the
//! pod may still answer). The pod's side ends: the data stream gets its `FIN`, then the error
//! stream, which kubectl reads to its end before it closes the local connection. A failure
//! (the edge could not connect, the link was cut) is written on the error stream first, as
//! kubelet writes its own, and kubectl prints it as `an error occurred forwarding L -> P: ...`.

use super::spdy::{self, Decoder, Encoder, Frame, Headers};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};

/// Bytes read from the pod at a time (one data frame).
pub const CHUNK: usize = 32 * 1024;

/// Frames waiting for the writer.
pub const WRITE_QUEUE: usize = 64;

/// Data frames from the client waiting for one pair's pod side.
pub const UP_QUEUE: usize = 8;

/// Streams open at once in one session (two per forwarded connection).
pub const MAX_STREAMS: usize = 256;

/// A forwarded connection's way to the pod.
pub struct Upstream {
    /// Towards the pod; shut down for the client's half-close.
    pub write: Box<dyn AsyncWrite + Send + Unpin>,
    /// From the pod; its end is the pod's.
    pub read: Box<dyn AsyncRead + Send + Unpin>,
    /// Held while the connection lives (the node's stream slot).
    pub guard: Box<dyn Send>,
}

/// Opens the way to a port of the pod, or says why not (the words kubectl prints).
pub type Opener = Arc<dyn Fn(u16) -> BoxFuture<'static, Result<Upstream, String>> + Send + Sync>;

/// What the session knows of the forward, for its log and its limits.
pub struct Context {
    /// Who asked.
    pub user: String,
    /// `namespace/name`.
    pub pod: String,
    /// The ports the request's `ports` named, if it named any: others are refused.
    pub ports: Option<Vec<u16>>,
    /// A session with no frame either way for this long is ended.
    pub idle: Duration,
}

enum Up {
    Data(Vec<u8>),
    Fin,
}

/// What a stream of the client is.
enum Role {
    Error,
    /// The sender to its pair's task.
    Data(mpsc::Sender<Up>),
}

/// A pair waiting for its other stream.
#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Up>)>,
}

/// The last time a frame moved either way.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Why a session ended, for the log.
enum End {
    ClientClosed,
    GoAway,
    Idle,
    Broken(String),
}

/// Serves one SPDY session on `io` until the client leaves, says GOAWAY or goes idle.
pub async fn run<S>(io: S, ctx: Context, opener: Opener)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let (tx, mut rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
    let writer_activity = activity.clone();
    let writer = tokio::spawn(async move {
        let mut enc = Encoder::new();
        let mut out = Vec::with_capacity(2 * CHUNK);
        while let Some(frame) = rx.recv().await {
            out.clear();
            let mut next = Some(frame);
            // Whatever else is queued goes in the same write.
            while let Some(f) = next.take() {
                if let Err(e) = enc.encode(&f, &mut out) {
                    debug!(error = %e, "port-forward: a frame could not be encoded");
                    return;
                }
                if out.len() < 4 * CHUNK {
                    next = rx.try_recv().ok();
                }
            }
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            writer_activity.touch();
        }
        let _ = wr.shutdown().await;
    });
    let mut tasks = JoinSet::new();
    let mut state = State {
        ctx: &ctx,
        opener,
        tx: tx.clone(),
        streams: HashMap::new(),
        pairs: HashMap::new(),
        last_stream: 0,
        connections: 0,
    };
    let read = async {
        let mut dec = Decoder::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut start = 0;
        loop {
            while let Some((frame, used)) = match dec.decode(&buf[start..]) {
                Ok(f) => f,
                Err(e) => return End::Broken(e.to_string()),
            } {
                start += used;
                activity.touch();
                if let Some(end) = state.handle(frame, &mut tasks).await {
                    return end;
                }
            }
            buf.drain(..start);
            start = 0;
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let room = buf.capacity() - buf.len();
            let had = buf.len();
            buf.resize(had + room, 0);
            match rd.read(&mut buf[had..]).await {
                Ok(0) => return End::ClientClosed,
                Ok(n) => buf.truncate(had + n),
                Err(e) => return End::Broken(e.to_string()),
            }
        }
    };
    let idle = async {
        loop {
            let quiet = activity.quiet();
            if quiet >= ctx.idle {
                return;
            }
            tokio::time::sleep(ctx.idle - quiet).await;
        }
    };
    let end = tokio::select! {
        end = read => end,
        () = idle => End::Idle,
    };
    let connections = state.connections;
    if matches!(end, End::Idle) {
        let _ = tx
            .send(Frame::GoAway {
                last_good: state.last_stream,
                status: 0,
            })
            .await;
    }
    // The pairs' tasks (and with them the node's streams) end with the session.
    drop(state);
    tasks.shutdown().await;
    drop(tx);
    let _ = writer.await;
    let end = match end {
        End::ClientClosed => "the client closed the connection".to_string(),
        End::GoAway => "the client said GOAWAY".to_string(),
        End::Idle => format!("idle for {}s", ctx.idle.as_secs()),
        End::Broken(why) => why,
    };
    info!(user = %ctx.user, pod = %ctx.pod, connections, %end,
          secs = activity.start.elapsed().as_secs(), "port-forward ended");
}

struct State<'a> {
    ctx: &'a Context,
    opener: Opener,
    tx: mpsc::Sender<Frame>,
    streams: HashMap<u32, Role>,
    pairs: HashMap<String, Pair>,
    last_stream: u32,
    connections: u64,
}

impl State<'_> {
    async fn send(&self, frame: Frame) -> Option<End> {
        match self.tx.send(frame).await {
            Ok(()) => None,
            Err(_) => Some(End::Broken("the writer to the client ended".into())),
        }
    }

    async fn reset(&self, stream: u32, status: u32) -> Option<End> {
        self.send(Frame::RstStream { stream, status }).await
    }

    async fn handle(&mut self, frame: Frame, tasks: &mut JoinSet<()>) -> Option<End> {
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => self.open(stream, &headers, tasks).await,
            Frame::Data { stream, fin, data } => {
                // Data for a stream already gone (reset, or ended by us) is dropped.
                let role = self.streams.get_mut(&stream)?;
                match role {
                    Role::Error => {
                        // kubectl writes nothing on the error stream; it finishes it at once.
                        if fin {
                            self.streams.remove(&stream);
                        }
                    }
                    Role::Data(sender) => {
                        let mut gone =
                            !data.is_empty() && sender.send(Up::Data(data)).await.is_err();
                        if fin && !gone {
                            gone = sender.send(Up::Fin).await.is_err();
                        }
                        if fin || gone {
                            // Nothing more comes from the client on it (the pair's task may
                            // still be sending the pod's bytes under the same id).
                            self.streams.remove(&stream);
                        }
                    }
                }
                None
            }
            Frame::RstStream { stream, .. } => {
                // Dropping the sender without a FIN tells the pair's task the client gave up.
                self.streams.remove(&stream);
                None
            }
            Frame::Ping(id) => self.send(Frame::Ping(id)).await,
            Frame::GoAway { .. } => Some(End::GoAway),
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings(_)
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => None,
        }
    }

    async fn open(
        &mut self,
        stream: u32,
        headers: &Headers,
        tasks: &mut JoinSet<()>,
    ) -> Option<End> {
        if stream.is_multiple_of(2) || stream <= self.last_stream {
            return self.reset(stream, spdy::PROTOCOL_ERROR).await;
        }
        self.last_stream = stream;
        // Streams whose pair ended are forgotten when the client finished or reset them; a
        // client that never does is limited here.
        self.streams.retain(|_, r| match r {
            Role::Data(s) => !s.is_closed(),
            _ => true,
        });
        if self.streams.len() >= MAX_STREAMS {
            return self.reset(stream, spdy::REFUSED_STREAM).await;
        }
        let kind = spdy::header(headers, "streamType")
            .unwrap_or_default()
            .to_string();
        let port = spdy::header(headers, "port").and_then(|p| p.parse::<u16>().ok());
        let request = spdy::header(headers, "requestID").map(str::to_string);
        let (Some(port), Some(request), "error" | "data") =
            (port.filter(|p| *p > 0), request, kind.as_str())
        else {
            debug!(pod = %self.ctx.pod, ?headers, "port-forward: a stream without a valid streamType, port and requestID");
            return self.reset(stream, spdy::PROTOCOL_ERROR).await;
        };
        if self.pairs.len() >= MAX_STREAMS / 2 && !self.pairs.contains_key(&request) {
            return self.reset(stream, spdy::REFUSED_STREAM).await;
        }
        if let Some(end) = self
            .send(Frame::SynReply {
                stream,
                headers: vec![],
                fin: false,
            })
            .await
        {
            return Some(end);
        }
        let pair = self.pairs.entry(request.clone()).or_default();
        pair.port = port;
        if kind == "error" {
            pair.error = Some(stream);
            self.streams.insert(stream, Role::Error);
        } else {
            let (up_tx, up_rx) = mpsc::channel(UP_QUEUE);
            pair.data = Some((stream, up_rx));
            self.streams.insert(stream, Role::Data(up_tx));
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                port,
                error: Some(error),
                data: Some((data, up)),
            }) = self.pairs.remove(&request)
            else {
                return None;
            };
            self.connections += 1;
            let allowed = self.ctx.ports.as_ref().is_none_or(|ps| ps.contains(&port));
            info!(user = %self.ctx.user, pod = %self.ctx.pod, port, request = %request, "port-forward connection");
            let link = Link {
                tx: self.tx.clone(),
                error,
                data,
            };
            let opener = self.opener.clone();
            tasks.spawn(async move {
                if !allowed {
                    link.fail(format!(
                        "port {port} is not among the ports this port-forward request named"
                    ))
                    .await;
                    return;
                }
                forward(port, link, up, opener).await;
            });
        }
        None
    }
}

/// A pair's way back to the client.
struct Link {
    tx: mpsc::Sender<Frame>,
    error: u32,
    data: u32,
}

impl Link {
    async fn data(&self, data: Vec<u8>, fin: bool) -> bool {
        self.tx
            .send(Frame::Data {
                stream: self.data,
                fin,
                data,
            })
            .await
            .is_ok()
    }

    /// The end of the pair: the error stream's message (if any), then both streams finished.
    async fn close(&self, message: Option<String>, data_finished: bool) {
        if let Some(m) = message {
            let _ = self
                .tx
                .send(Frame::Data {
                    stream: self.error,
                    fin: false,
                    data: m.into_bytes(),
                })
                .await;
        }
        if !data_finished {
            let _ = self.data(Vec::new(), true).await;
        }
        let _ = self
            .tx
            .send(Frame::Data {
                stream: self.error,
                fin: true,
                data: Vec::new(),
            })
            .await;
    }

    async fn fail(&self, message: String) {
        self.close(Some(message), false).await;
    }
}

/// Carries one connection: the client's bytes to the pod, the pod's back.
async fn forward(port: u16, link: Link, mut up: mpsc::Receiver<Up>, opener: Opener) {
    let Upstream {
        mut write,
        mut read,
        guard,
    } = match opener(port).await {
        Ok(u) => u,
        Err(message) => {
            link.fail(message).await;
            return;
        }
    };
    // Client → pod. Returns false if the client reset the stream. After a failed write it
    // keeps taking the client's frames (and drops them), so that the session's reader never
    // waits on a pair that no longer moves.
    let to_pod = async {
        let mut open = true;
        while let Some(m) = up.recv().await {
            match m {
                Up::Data(d) if open => {
                    if write.write_all(&d).await.is_err() {
                        open = false;
                    }
                }
                Up::Data(_) => {}
                Up::Fin => {
                    if open {
                        let _ = write.shutdown().await;
                    }
                    return true;
                }
            }
        }
        false
    };
    // Pod → client, until the pod's end (Ok) or a cut (Err).
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return Ok(link.data(Vec::new(), true).await),
                Ok(n) => {
                    if !link.data(buf[..n].to_vec(), false).await {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::pin!(to_pod, from_pod);
    let mut client_done = false;
    let outcome = loop {
        tokio::select! {
            finished = &mut to_pod, if !client_done => {
                if !finished {
                    // The client reset the stream: nobody to tell.
                    drop(guard);
                    return;
                }
                client_done = true;
            }
            r = &mut from_pod => break r,
        }
    };
    drop(guard);
    match outcome {
        Ok(_) => link.close(None, true).await,
        Err(e) => {
            link.fail(format!(
                "error forwarding port {port}: the connection to the pod was cut: {e}"
            ))
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    /// A client's side of a session over an in-memory pipe.
    struct Client {
        io: DuplexStream,
        enc: Encoder,
        dec: Decoder,
        buf: Vec<u8>,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut out = Vec::new();
            self.enc.encode(&f, &mut out).expect("encode");
            self.io.write_all(&out).await.expect("write");
        }

        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some((f, used)) = self.dec.decode(&self.buf).expect("decode") {
                    self.buf.drain(..used);
                    return Some(f);
                }
                let mut chunk = vec![0u8; 8192];
                let n = self.io.read(&mut chunk).await.expect("read");
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        async fn open_pair(&mut self, first: u32, port: u16, request: &str) {
            for (i, kind) in ["error", "data"].into_iter().enumerate() {
                self.send(Frame::SynStream {
                    stream: first + 2 * i as u32,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), kind.into()),
                        ("port".into(), port.to_string()),
                        ("requestid".into(), request.into()),
                    ],
                })
                .await;
            }
        }
    }

    /// A session whose "pod" is an in-memory echo server on port 80 and nothing elsewhere.
    fn session() -> Client {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let opener: Opener = Arc::new(|port| {
            Box::pin(async move {
                if port != 80 {
                    return Err(format!("error forwarding port {port}: connection refused"));
                }
                let (near, far) = tokio::io::duplex(4096);
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(far);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
                let (r, w) = tokio::io::split(near);
                Ok(Upstream {
                    write: Box::new(w),
                    read: Box::new(r),
                    guard: Box::new(()),
                })
            })
        });
        let ctx = Context {
            user: "u".into(),
            pod: "default/p".into(),
            ports: None,
            idle: Duration::from_secs(60),
        };
        tokio::spawn(run(a, ctx, opener));
        Client {
            io: b,
            enc: Encoder::new(),
            dec: Decoder::new(),
            buf: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_pair_carries_bytes_both_ways_and_ends_with_both_fins() {
        let mut c = session();
        c.open_pair(1, 80, "0").await;
        for stream in [1, 3] {
            assert!(
                matches!(c.next().await, Some(Frame::SynReply { stream: s, .. }) if s == stream)
            );
        }
        c.send(Frame::Data {
            stream: 1,
            fin: true,
            data: vec![],
        })
        .await;
        c.send(Frame::Data {
            stream: 3,
            fin: false,
            data: b"hello".to_vec(),
        })
        .await;
        c.send(Frame::Ping(7)).await;
        c.send(Frame::Data {
            stream: 3,
            fin: true,
            data: vec![],
        })
        .await;
        let mut echoed = Vec::new();
        let mut fins = Vec::new();
        let mut pinged = false;
        while fins.len() < 2 {
            match c.next().await.expect("frame") {
                Frame::Data {
                    stream: 3,
                    data,
                    fin,
                } => {
                    echoed.extend(data);
                    if fin {
                        fins.push(3);
                    }
                }
                Frame::Data {
                    stream: 1,
                    data,
                    fin,
                } => {
                    assert!(
                        data.is_empty(),
                        "no error: {:?}",
                        String::from_utf8_lossy(&data)
                    );
                    if fin {
                        fins.push(1);
                    }
                }
                Frame::Ping(7) => pinged = true,
                f => panic!("unexpected {f:?}"),
            }
        }
        assert_eq!(echoed, b"hello");
        assert_eq!(fins, [3, 1], "the data stream ends before the error stream");
        assert!(pinged);
    }

    #[tokio::test]
    async fn a_refused_port_is_said_on_the_error_stream() {
        let mut c = session();
        c.open_pair(1, 81, "0").await;
        let mut message = Vec::new();
        let mut error_fin = false;
        while !error_fin {
            match c.next().await.expect("frame") {
                Frame::SynReply { .. } => {}
                Frame::Data {
                    stream: 1,
                    data,
                    fin,
                } => {
                    message.extend(data);
                    error_fin = fin;
                }
                Frame::Data { stream: 3, .. } => {}
                f => panic!("unexpected {f:?}"),
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&message),
            "error forwarding port 81: connection refused"
        );
    }

    #[tokio::test]
    async fn bad_streams_are_reset_and_the_session_goes_on() {
        let mut c = session();
        c.send(Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "data".into())],
        })
        .await;
        assert!(matches!(
            c.next().await,
            Some(Frame::RstStream {
                stream: 1,
                status: spdy::PROTOCOL_ERROR
            })
        ));
        c.send(Frame::Ping(1)).await;
        assert_eq!(c.next().await, Some(Frame::Ping(1)));
        c.io.write_all(b"\x80\x02garbage!").await.expect("write");
        assert_eq!(c.next().await, None, "a broken session is closed");
    }
}
