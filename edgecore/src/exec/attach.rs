//! Serving attach streams (`kubectl attach`) to a container started without `stdin` or `tty`:
//! its output from now on. (One started with either is attached to through the runtime's own
//! streams instead: [`super::serve::ExecServer::serve_attach`].)
//!
//! Such a container has no input to attach to, and its output as it is written is what both
//! runtimes already put in the container's log. So attach is
//! the log reader's `follow` from the log's current end, framed as an exec stream's output
//! ([`ExecEvent::Stdout`]; the process runtime's log does not tell stdout from stderr, and the
//! log reader gives the CRI one's lines as they were, so all of it is stdout here), ended with
//! [`ExecEvent::Exited`] once the container's instance stopped, as kubelet ends an attach. The
//! copy goes through a bounded pipe of one chunk: a slow client holds the log's reads.

use crate::logs::serve::refuse;
use crate::logs::LogReader;
use protocol::streams::{
    AttachRequest, ExecEvent, ExecInput, LogHeader, LogRefusal, LogRequest, EXEC_CHUNK,
    MAX_EXEC_FRAME,
};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tracing::{debug, info};

/// Serves one attach stream whose request was read, in one of the node's exec slots.
pub async fn serve(
    reader: &LogReader,
    slots: &std::sync::Arc<Semaphore>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    req: AttachRequest,
) {
    let _ = send.set_priority(super::serve::EXEC_STREAM_PRIORITY);
    let pod = format!("{}/{}", req.namespace, req.pod);
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        let _ = refuse(
            &mut send,
            LogRefusal::Busy,
            "node serves its limit of exec and attach streams at once; try again".into(),
        )
        .await;
        return;
    };
    let log_req = LogRequest {
        namespace: req.namespace.clone(),
        pod: req.pod.clone(),
        uid: req.uid.clone(),
        container: req.container.clone(),
        follow: true,
        tail_lines: Some(0),
        since: None,
        timestamps: false,
        previous: false,
        limit_bytes: None,
    };
    let log = match reader.open(&log_req).await {
        Ok(log) => log,
        Err(e) => {
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
    info!(%pod, container = %req.container, "attached for the cloud");
    let (mut pipe_in, mut pipe_out) = tokio::io::duplex(EXEC_CHUNK);
    let copy = async {
        let r = reader.copy(log, &mut pipe_in).await;
        drop(pipe_in);
        r
    };
    // The pipe's reader goes with this future, so that a failed forward fails the copy too.
    let out = &mut send;
    let forward = async move {
        let mut buf = vec![0u8; EXEC_CHUNK];
        loop {
            // The pipe fails only if the copy side is gone, which ends it too.
            let n = pipe_out.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            wire::frames::write_frame(out, &ExecEvent::Stdout(buf[..n].to_vec())).await?;
        }
        Ok::<_, wire::frames::FrameError>(())
    };
    // The hub sends nothing that matters here; its side's end is the client's leaving.
    let gone = async {
        while let Ok(Some(_)) =
            wire::frames::read_frame::<ExecInput>(&mut recv, MAX_EXEC_FRAME).await
        {}
    };
    let ended = tokio::select! {
        (copied, forwarded) = async { tokio::join!(copy, forward) } => Some((copied, forwarded)),
        () = gone => None,
    };
    let Some((copied, Ok(()))) = ended else {
        debug!(%pod, container = %req.container, "the cloud left an attach");
        return;
    };
    let last = match copied {
        Ok(_) => ExecEvent::Exited { code: 0 },
        Err(e) => ExecEvent::Failed {
            message: format!("reading the container's output failed: {e}"),
        },
    };
    if wire::frames::write_frame(&mut send, &last).await.is_ok() {
        let _ = send.finish();
    }
    debug!(%pod, container = %req.container, outcome = ?last, "attach ended");
}
