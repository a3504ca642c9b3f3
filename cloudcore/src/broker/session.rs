//! One MQTT connection of the embedded broker, from the TLS handshake to its end.

use super::{acl, Broker, Delivery};
use crate::api::conn_limits::ConnPermit;
use bytes::BytesMut;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, UnsubAck};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::SubscribeReasonCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

/// How long one packet may take to reach a client that does not read.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a session that asked for no keep-alive may stay silent.
const MAX_IDLE: Duration = Duration::from_secs(300);

/// The rate limit of the broker's warnings, per node or address.
fn warn_log() -> &'static crate::log_limit::SharedLogLimiter<String> {
    static LOG: std::sync::OnceLock<crate::log_limit::SharedLogLimiter<String>> =
        std::sync::OnceLock::new();
    LOG.get_or_init(|| crate::log_limit::SharedLogLimiter::new(Duration::from_secs(1)))
}

/// Why a connection did not become a session.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("connection closed before CONNECT")]
    Closed,
    #[error("protocol error before CONNECT: {0}")]
    Protocol(String),
    #[error("login refused ({code:?}): {reason}")]
    Login {
        code: ConnectReturnCode,
        reason: String,
    },
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Tls(_) => "tls",
            Refusal::Closed => "closed",
            Refusal::Protocol(_) => "protocol",
            Refusal::Login { code, .. } => match code {
                ConnectReturnCode::BadClientId => "client_id",
                ConnectReturnCode::BadUserNamePassword => "user_name",
                ConnectReturnCode::ServiceUnavailable => "sessions_full",
                _ => "not_authorized",
            },
        }
    }
}

/// A connection past CONNECT.
struct Opened<S> {
    stream: S,
    buf: BytesMut,
    node: String,
    epoch: u64,
    keep_alive: Duration,
    _session: tokio::sync::OwnedSemaphorePermit,
}

/// Runs one connection: handshake and login within the connect deadline (holding a handshake
/// slot of its address), then the session.
pub(super) async fn run(
    broker: Arc<Broker>,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: ConnPermit,
) {
    let deadline = broker.limits.connect_deadline;
    let opened = match tokio::time::timeout(deadline, open(&broker, tcp)).await {
        Ok(Ok(o)) => o,
        Ok(Err(refusal)) => {
            metrics::counter!("skerry_broker_logins_refused_total", "reason" => refusal.label())
                .increment(1);
            let quiet = matches!(refusal, Refusal::Closed);
            if !quiet {
                if let Some(held_back) = warn_log().allow(peer.ip().to_string()) {
                    warn!(%peer, error = %refusal, held_back, "MQTT connection refused");
                }
            }
            return;
        }
        Err(_) => {
            metrics::counter!("skerry_broker_logins_refused_total", "reason" => "deadline")
                .increment(1);
            return;
        }
    };
    drop(handshake);
    let span = tracing::info_span!("mqtt_session", node = %opened.node, %peer);
    serve(broker, opened).instrument(span).await;
}

/// TLS handshake, the CONNECT packet, and the login decision (answered with CONNACK).
async fn open(
    broker: &Broker,
    tcp: TcpStream,
) -> Result<Opened<tokio_rustls::server::TlsStream<TcpStream>>, Refusal> {
    let mut stream = broker.tls.accept(tcp).await.map_err(Refusal::Tls)?;
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let mut buf = BytesMut::with_capacity(4096);
    let connect = loop {
        match Packet::read(&mut buf, broker.limits.max_payload) {
            Ok(Packet::Connect(c)) => break c,
            Ok(other) => {
                return Err(Refusal::Protocol(format!(
                    "first packet must be CONNECT, got {other:?}"
                )))
            }
            Err(CodecError::InsufficientBytes(_)) => match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(Refusal::Closed),
                Ok(_) => {}
            },
            Err(e) => return Err(Refusal::Protocol(e.to_string())),
        }
    };
    let pki = &broker.pki;
    let verdict = match cert.and_then(|c| crate::pki::mqtt::node_of_cert(pki, &c)) {
        None => Err((
            ConnectReturnCode::NotAuthorized,
            "the client certificate is not the current certificate of a node of this cloud"
                .to_string(),
        )),
        Some(node) if pki.is_revoked(&node) => Err((
            ConnectReturnCode::NotAuthorized,
            format!("node {node} is revoked"),
        )),
        Some(node) if connect.client_id != protocol::status::mqtt_client_id(&node) => Err((
            ConnectReturnCode::BadClientId,
            format!(
                "node {node} must use client id {:?}",
                protocol::status::mqtt_client_id(&node)
            ),
        )),
        Some(node) if connect.login.as_ref().is_some_and(|l| l.username != node) => Err((
            ConnectReturnCode::BadUserNamePassword,
            format!(
                "node {node} logged in under another user name; the identity is the certificate's"
            ),
        )),
        Some(node) if connect.last_will.is_some() => Err((
            ConnectReturnCode::NotAuthorized,
            format!("node {node} asked for a will message; the broker keeps no messages"),
        )),
        Some(node) => match broker.sessions.clone().try_acquire_owned() {
            Ok(permit) => Ok((node, permit)),
            Err(_) => Err((
                ConnectReturnCode::ServiceUnavailable,
                "the broker holds its maximum of sessions".to_string(),
            )),
        },
    };
    let code = match &verdict {
        Ok(_) => ConnectReturnCode::Success,
        Err((code, _)) => *code,
    };
    // Best effort for a refusal: the client may already be gone.
    let answered = write(&mut stream, &Packet::ConnAck(ConnAck::new(code, false))).await;
    match verdict {
        Err((code, reason)) => Err(Refusal::Login { code, reason }),
        Ok(_) if answered.is_err() => Err(Refusal::Closed),
        Ok((node, permit)) => Ok(Opened {
            epoch: pki.node_credentials(&node).map_or(0, |c| c.epoch),
            keep_alive: match connect.keep_alive {
                0 => MAX_IDLE,
                k => Duration::from_millis(u64::from(k) * 1500),
            },
            stream,
            buf,
            node,
            _session: permit,
        }),
    }
}

/// What to do after a packet.
enum Next {
    Continue,
    Close(String),
}

/// The session loop: reads packets while fewer than the in-flight limit wait for the ingest,
/// and sends each PUBACK when its report, and every one before it, is final.
async fn serve<S: AsyncRead + AsyncWrite + Send + Unpin>(broker: Arc<Broker>, opened: Opened<S>) {
    let Opened {
        stream,
        mut buf,
        node,
        epoch,
        keep_alive,
        _session,
    } = opened;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let limits = broker.limits;
    let (id, mut replaced) = broker.register(&node);
    let mut changes = broker.pki.credential_changes();
    changes.mark_unchanged();
    let mut bucket = TokenBucket::new(limits.rate_per_second, limits.burst, Instant::now());
    let mut acks = FuturesOrdered::new();
    let mut deadline = Instant::now() + keep_alive;
    metrics::gauge!("skerry_broker_sessions").increment(1.0);
    metrics::counter!("skerry_broker_sessions_opened_total").increment(1);
    debug!(epoch, "MQTT session open");
    let end: String = 'session: loop {
        while acks.len() < limits.inflight_per_session {
            let packet = match Packet::read(&mut buf, limits.max_payload) {
                Ok(p) => p,
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(e) => break 'session format!("malformed or oversized packet: {e}"),
            };
            deadline = Instant::now() + keep_alive;
            let next = match packet {
                Packet::Publish(p) => {
                    if let Err(denied) = acl::may_publish(&node, &p.topic, p.qos, p.retain) {
                        metrics::counter!("skerry_broker_denied_total", "what" => "publish")
                            .increment(1);
                        break 'session denied.to_string();
                    }
                    if let Some(wait) = bucket.take(Instant::now()) {
                        metrics::counter!("skerry_broker_throttled_total").increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    // `max_payload` keeps every packet far below u32::MAX.
                    let size = u32::try_from(p.payload.len().max(1)).unwrap_or(u32::MAX);
                    let Ok(permit) = broker.inflight_bytes.clone().acquire_many_owned(size).await
                    else {
                        break 'session "the broker is shutting down".to_string();
                    };
                    let (done, finished) = oneshot::channel();
                    let delivery = Delivery {
                        node: node.clone(),
                        topic: p.topic,
                        payload: p.payload,
                        done,
                        permit,
                    };
                    if broker.intake.send(delivery).await.is_err() {
                        break 'session "the status ingest is not running".to_string();
                    }
                    metrics::counter!("skerry_broker_publishes_total").increment(1);
                    let pkid = (p.qos == QoS::AtLeastOnce).then_some(p.pkid);
                    acks.push_back(finished.map(move |r| (pkid, r.is_ok())));
                    Next::Continue
                }
                Packet::Subscribe(s) => {
                    metrics::counter!("skerry_broker_denied_total", "what" => "subscribe")
                        .increment(1);
                    let codes = s
                        .filters
                        .iter()
                        .map(|f| {
                            if acl::may_subscribe(&node, &f.path) {
                                SubscribeReasonCode::Success(QoS::AtMostOnce)
                            } else {
                                SubscribeReasonCode::Failure
                            }
                        })
                        .collect();
                    reply(&mut wr, Packet::SubAck(SubAck::new(s.pkid, codes))).await
                }
                Packet::Unsubscribe(u) => {
                    reply(&mut wr, Packet::UnsubAck(UnsubAck::new(u.pkid))).await
                }
                Packet::PingReq => reply(&mut wr, Packet::PingResp).await,
                Packet::Disconnect => Next::Close("client disconnected".into()),
                other => Next::Close(format!("unexpected packet {other:?}")),
            };
            if let Next::Close(why) = next {
                break 'session why;
            }
        }
        tokio::select! {
            biased;
            _ = &mut replaced => break 'session "replaced by a newer connection of the node".into(),
            changed = changes.changed() => {
                let current = broker.pki.node_credentials(&node).map_or(0, |c| c.epoch);
                if changed.is_err() || broker.pki.is_revoked(&node) || current != epoch {
                    break 'session "the node's credentials changed (joined again, or revoked)".into();
                }
            }
            Some((pkid, durable)) = acks.next(), if !acks.is_empty() => {
                if !durable {
                    break 'session "the ingest restarted before a report was durable; the node re-sends it".into();
                }
                // The session is alive while its reports progress, whoever is slow.
                deadline = Instant::now() + keep_alive;
                if let Some(pkid) = pkid {
                    if let Next::Close(why) = reply(&mut wr, Packet::PubAck(PubAck::new(pkid))).await {
                        break 'session why;
                    }
                }
            }
            read = rd.read_buf(&mut buf), if acks.len() < limits.inflight_per_session => match read {
                Ok(0) => break 'session "connection closed by the client".into(),
                Ok(_) => {}
                Err(e) => break 'session format!("read failed: {e}"),
            },
            _ = tokio::time::sleep_until(deadline) => break 'session "keep-alive expired".into(),
        }
    };
    broker.unregister(&node, id);
    metrics::gauge!("skerry_broker_sessions").decrement(1.0);
    let violation = end.contains("may publish only") || end.contains("not accepted");
    if violation {
        if let Some(held_back) = warn_log().allow(node.clone()) {
            warn!(reason = %end, held_back, "MQTT session closed: the node broke the status channel's rules");
        }
    } else {
        debug!(reason = %end, "MQTT session closed");
    }
}

async fn reply<W: AsyncWrite + Unpin>(wr: &mut W, packet: Packet) -> Next {
    match write(wr, &packet).await {
        Ok(()) => Next::Continue,
        Err(why) => Next::Close(why),
    }
}

/// Writes one packet and flushes it, within [`WRITE_DEADLINE`].
async fn write<W: AsyncWrite + Unpin>(wr: &mut W, packet: &Packet) -> Result<(), String> {
    let mut out = BytesMut::with_capacity(16);
    packet
        .write(&mut out, usize::MAX)
        .map_err(|e| e.to_string())?;
    let io = async {
        wr.write_all(&out).await?;
        wr.flush().await
    };
    match tokio::time::timeout(WRITE_DEADLINE, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("the client does not read".into()),
    }
}

/// A token bucket: `rate` tokens a second up to `burst`. Pure (time is passed in), so its
/// arithmetic is tested without sleeping.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token; `Some(wait)` when the caller must wait that long first (the token is
    /// taken all the same: the bucket goes into debt, so waits queue up in order).
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        let wait = b.take(t0).unwrap();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        let wait = b.take(t0).unwrap();
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        // A second later the debt is paid and 8 tokens are back, capped at the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1), None);
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(t2), None);
        }
        assert!(b.take(t2).is_some());
    }
}
