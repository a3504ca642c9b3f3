//! Whether a node's link still answers while a stream to the node is open.
//!
//! QUIC declares a connection dead only at its idle timeout: a minute by default, so that a
//! train's tunnel does not end a node's session. A `kubectl logs -f` or `exec` whose link the
//! network cuts would hang that long, and the sync session must not be shortened for the sake
//! of streams. So each open stream carries a [`LinkCut`]: it samples the connection's receive
//! counter, and once the link has been quiet for [`QUIET`] it sends the edge one empty datagram
//! ([`protocol::overlay::is_link_probe`]). A datagram is ack-eliciting, so a live edge answers
//! within a round trip (and QUIC's loss recovery repeats the probe on its own timer until it is
//! acknowledged); nothing at all for [`window`] after the probe means the link is cut, and the
//! stream ends with that message while the session itself waits for its idle timeout. The
//! probe costs nothing while the stream carries data (whatever arrives proves the link) and a
//! few bytes per second of silence otherwise.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// How often the connection's counters are sampled.
const TICK: Duration = Duration::from_millis(250);

/// How long the link may be quiet before it is probed.
const QUIET: Duration = Duration::from_secs(1);

/// The shortest wait for an answer to a probe: several of QUIC's retransmission timeouts on a
/// lossy link, so a few lost packets are not taken for a cut.
const CUT_MIN: Duration = Duration::from_secs(5);

/// The longest wait for an answer to a probe.
const CUT_MAX: Duration = Duration::from_secs(15);

/// How long an unanswered probe is waited for: eight smoothed round trips, within
/// [`CUT_MIN`]..[`CUT_MAX`].
fn window(rtt: Duration) -> Duration {
    (rtt * 8).clamp(CUT_MIN, CUT_MAX)
}

/// Resolves with a message for the client once the node's link is judged cut; never while the
/// link answers. Cheap to poll; after it resolved it keeps returning its message.
pub struct LinkCut {
    watch: Option<Pin<Box<dyn Future<Output = String> + Send>>>,
    cut: Option<String>,
}

impl LinkCut {
    /// Watches `conn`, the link of `node`.
    pub(super) fn watch(conn: quinn::Connection, node: String) -> Self {
        Self {
            watch: Some(Box::pin(watch(conn, node))),
            cut: None,
        }
    }

    /// Polls for the cut.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        if let Some(msg) = &self.cut {
            return Poll::Ready(msg.clone());
        }
        let Some(watch) = self.watch.as_mut() else {
            return Poll::Pending;
        };
        match watch.as_mut().poll(cx) {
            Poll::Ready(msg) => {
                self.watch = None;
                self.cut = Some(msg.clone());
                Poll::Ready(msg)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the cut.
    pub async fn wait(&mut self) -> String {
        std::future::poll_fn(|cx| self.poll_cut(cx)).await
    }
}

async fn watch(conn: quinn::Connection, node: String) -> String {
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut heard_at = Instant::now();
    let mut probed: Option<Instant> = None;
    loop {
        tokio::time::sleep(TICK).await;
        if conn.close_reason().is_some() {
            // The connection is gone: the stream's own reads and writes say so.
            std::future::pending::<()>().await;
        }
        let received = conn.stats().udp_rx.datagrams;
        if received != heard {
            (heard, heard_at, probed) = (received, Instant::now(), None);
            continue;
        }
        if let Some(at) = probed {
            if at.elapsed() >= window(conn.rtt()) {
                metrics::counter!("skerry_hub_stream_link_cuts_total").increment(1);
                return format!(
                    "the link to node {node:?} carried nothing for {} s though the cloud asked \
                     it for an answer: the link appears cut, and the stream was ended (the \
                     node's session waits for its idle timeout; on the node itself `edgecore \
                     logs` and `edgecore exec` work offline)",
                    heard_at.elapsed().as_secs()
                );
            }
        } else if heard_at.elapsed() >= QUIET {
            // An edge always takes datagrams; a peer that took none could not be probed, and
            // its idle timeout alone would end the stream.
            if conn.send_datagram(bytes::Bytes::new()).is_ok() {
                probed = Some(Instant::now());
            }
        }
    }
}

/// A reader that fails once its link is judged cut, for copies that only read (the pod's side
/// of a forwarded port).
pub struct Watched<R> {
    inner: R,
    cut: LinkCut,
}

impl<R> Watched<R> {
    /// `inner`, failing once `cut` resolves.
    pub fn new(inner: R, cut: LinkCut) -> Self {
        Self { inner, cut }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(msg) = this.cut.poll_cut(cx) {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_round_trip_within_its_bounds() {
        assert_eq!(window(Duration::from_millis(1)), CUT_MIN);
        assert_eq!(window(Duration::from_secs(1)), Duration::from_secs(8));
        assert_eq!(window(Duration::from_secs(10)), CUT_MAX);
    }
}
