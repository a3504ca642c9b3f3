//! Serving the streams the hub opens on this node's connection: logs here, and exec streams
//! handed to [`crate::exec::serve`].
//!
//! The sync stream is the node's lifeline, so log streams give way to it: their send side gets a
//! lower QUIC priority than the sync stream (quinn sends higher-priority streams' data first),
//! the hub bounds their flow-control windows, and at most [`MAX_LOG_STREAMS`] run at once (more
//! are refused with [`LogRefusal::Busy`], which the cloud answers with 429). A stream whose hub
//! side goes away (the client left: the hub drops its side, which finishes it) is cancelled
//! even while the log is idle, so a forgotten `kubectl logs -f` costs nothing here.

use super::{LogError, LogReader};
use protocol::streams::{LogHeader, LogRefusal, StreamRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Log streams served at once.
pub const MAX_LOG_STREAMS: usize = 16;

/// Priority of log streams' data: below the sync stream's (0), so that acks and batches never
/// queue behind log bytes.
pub const LOG_STREAM_PRIORITY: i32 = -8;

/// The largest request frame accepted (a request is a few hundred bytes).
const MAX_REQUEST: usize = 16 * 1024;

/// Serves the streams the hub opens: one task per stream.
#[derive(Clone)]
pub struct StreamServer {
    reader: LogReader,
    slots: Arc<Semaphore>,
    exec: crate::exec::serve::ExecServer,
    forward: crate::portforward::PortForwarder,
}

impl StreamServer {
    /// Serves logs with `reader` and commands with `runtime`.
    pub fn new(reader: LogReader, runtime: Arc<dyn crate::runtime::Runtime>) -> Self {
        Self {
            reader,
            slots: Arc::new(Semaphore::new(MAX_LOG_STREAMS)),
            forward: crate::portforward::PortForwarder::new(runtime.clone()),
            exec: crate::exec::serve::ExecServer::new(runtime),
        }
    }

    /// Accepts streams on `conn` until it closes.
    pub async fn accept(&self, conn: quinn::Connection) {
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "no more streams from the cloud");
                    return;
                }
            };
            let server = self.clone();
            tokio::spawn(async move { server.serve(send, recv).await });
        }
    }

    async fn serve(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let _ = send.set_priority(LOG_STREAM_PRIORITY);
        let request = match tokio::time::timeout(
            Duration::from_secs(10),
            wire::frames::read_frame::<StreamRequest>(&mut recv, MAX_REQUEST),
        )
        .await
        {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                warn!(error = %e, "bad stream request from the cloud");
                let _ = send.reset(codec_error_code());
                return;
            }
            Err(_) => {
                let _ = send.reset(codec_error_code());
                return;
            }
        };
        let req = match request {
            StreamRequest::Logs(req) => req,
            StreamRequest::Exec(req) => return self.exec.serve(send, recv, req).await,
            StreamRequest::AttachIo(req) => return self.exec.serve_attach(send, recv, req).await,
            StreamRequest::Attach(req) => {
                return crate::exec::attach::serve(&self.reader, self.exec.slots(), send, recv, req)
                    .await
            }
            StreamRequest::PortForward(req) => return self.forward.serve(send, recv, req).await,
        };
        let pod = format!("{}/{}", req.namespace, req.pod);
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            let _ = refuse(
                &mut send,
                LogRefusal::Busy,
                format!("node serves {MAX_LOG_STREAMS} log streams at once; try again"),
            )
            .await;
            return;
        };
        let log = match self.reader.open(&req).await {
            Ok(log) => log,
            Err(e) => {
                debug!(%pod, container = %req.container, error = %e, "log request refused");
                let _ = refuse(&mut send, e.refusal(), e.to_string()).await;
                return;
            }
        };
        if wire::frames::write_frame(&mut send, &LogHeader::Streaming)
            .await
            .is_err()
        {
            return;
        }
        info!(%pod, container = %req.container, follow = req.follow, "streaming a log to the cloud");
        // The hub never sends more after the request: anything else on its side (its end, a
        // reset, the connection's loss) means nobody reads any more.
        let gone = async {
            let mut byte = [0u8; 1];
            let _ = recv.read(&mut byte).await;
        };
        let result = tokio::select! {
            r = self.reader.copy(log, &mut send) => r,
            () = gone => Err(LogError::Write(std::io::Error::other("the cloud closed the stream"))),
        };
        match result {
            Ok(bytes) => {
                let _ = send.finish();
                debug!(%pod, container = %req.container, bytes, "log sent");
            }
            Err(LogError::Write(e)) => {
                let _ = send.reset(0u32.into());
                debug!(%pod, container = %req.container, error = %e, "log stream ended by the cloud");
            }
            Err(e) => {
                // The header is sent: a reset is how the hub learns the log was cut.
                warn!(%pod, container = %req.container, error = %e, "log stream failed");
                let _ = send.reset(1u32.into());
            }
        }
    }
}

fn codec_error_code() -> quinn::VarInt {
    quinn::VarInt::from_u32(2)
}

/// Answers a stream the hub opened with a refusal and ends it (logs, exec and attach alike).
pub(crate) async fn refuse(
    send: &mut quinn::SendStream,
    kind: LogRefusal,
    message: String,
) -> Result<(), wire::frames::FrameError> {
    wire::frames::write_frame(send, &LogHeader::Refused { kind, message }).await?;
    let _ = send.finish();
    Ok(())
}
