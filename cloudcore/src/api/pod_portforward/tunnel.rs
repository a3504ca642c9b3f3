//! The WebSocket tunnel of kubectl 1.30+ (`SPDY/3.1+portforward.k8s.io`): each binary message
//! is a piece of the SPDY byte stream, either way. The pieces are poured into an in-memory pipe
//! of [`PIPE`] bytes on whose other end the SPDY session runs, so the session is the same as on
//! a plain SPDY upgrade; the pipe's bound is the back-pressure (a full pipe stops the reads of
//! the WebSocket, and a session that writes nothing sends nothing).

use super::session::{self, Context, Opener};
use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

/// The in-memory pipe's bound, each way.
const PIPE: usize = 64 * 1024;

/// Serves the SPDY session tunnelled in `socket`.
pub(super) async fn serve(socket: WebSocket, ctx: Context, opener: Opener) {
    let (near, far) = tokio::io::duplex(PIPE);
    let session = tokio::spawn(session::run(near, ctx, opener));
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut tx, mut rx) = socket.split();
    let inbound = async {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    if far_write.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(frame)) => {
                    debug!(?frame, "port-forward: the client closed the WebSocket");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "port-forward: the WebSocket failed");
                    break;
                }
            }
        }
        // The client is gone: the session reads its end.
        let _ = far_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; PIPE];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    };
    // The session ends when the client's side ends or it decides (GOAWAY, idle); the output
    // side ends with the session's writes.
    tokio::join!(inbound, outbound);
    let _ = session.await;
}
