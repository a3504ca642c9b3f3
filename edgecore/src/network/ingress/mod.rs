//! The edge's Ingress router: HTTP and HTTPS on the node's address, routing by the Ingresses
//! the node serves ([`routes`]) to the ready endpoints of their backend Services
//! ([`backend`]), with TLS certificates chosen by SNI from the Ingresses' Secrets ([`tls`]).
//!
//! Everything is read from the node's [`ServiceView`] (Services, EndpointSlices, the node's
//! Ingress set and its TLS Secrets, all from the cache), so the router keeps serving with no
//! cloud, and a local pod whose readiness probe fails stops getting requests at once. hyper
//! does the HTTP (HTTP/1.1 and h2 from clients, HTTP/1.1 to the endpoints, pooled);
//! tokio-rustls the TLS.
//!
//! Answers of its own: 404 when no rule and no default backend matches, 503 when the backend
//! Service is unknown, has no such port, or no ready endpoint, 502 when the endpoint refuses
//! or breaks the connection, 504 when it does not answer within the request timeout. Requests
//! carry `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host` and
//! `X-Forwarded-Port`, as ingress controllers send them; the `Host` header is passed on.
//!
//! Bounded: at most [`RouterConfig::max_connections`] client connections at once (more are
//! closed at accept, with a log line at most every few seconds), request headers must arrive
//! within [`RouterConfig::header_timeout`], a TLS handshake within
//! [`RouterConfig::handshake_timeout`], an endpoint's response within
//! [`RouterConfig::request_timeout`]. Protocol upgrades (WebSocket) are not forwarded.
//!
//! The listeners open once the node has an Ingress to serve (the cloud sent a non-empty set),
//! and stay open; with no Ingress they would only answer 404.

pub mod backend;
pub mod routes;
pub mod tls;

use crate::network::view::{ServiceView, ViewReceiver};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How the router listens and its bounds.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Plain HTTP listen address (`None`: no HTTP listener).
    pub http: Option<SocketAddr>,
    /// HTTPS listen address (`None`: no HTTPS listener).
    pub https: Option<SocketAddr>,
    /// Most client connections open at once, over both listeners.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long an endpoint may take to answer (connect and response headers).
    pub request_timeout: Duration,
    /// How long connecting to an endpoint may take.
    pub connect_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// What every request handler shares.
struct Router {
    view: ViewReceiver,
    balancer: backend::Balancer,
    client: Client<HttpConnector, Incoming>,
    request_timeout: Duration,
}

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The client's Host: the header, or the authority of an h2 request.
fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

impl Router {
    /// Routes and forwards one request from `peer` that arrived on `local` over `scheme`.
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
        scheme: &'static str,
    ) -> Response<Body> {
        let host = request_host(&req);
        let view: Arc<ServiceView> = self.view.borrow().clone();
        let Some(set) = view.ingresses.as_ref() else {
            return text(
                StatusCode::NOT_FOUND,
                "404 not found: no ingress on this node\n",
            );
        };
        let Some(route) = routes::route(set, &host, req.uri().path()) else {
            return text(
                StatusCode::NOT_FOUND,
                "404 not found: no ingress rule matches\n",
            );
        };
        let addrs = match backend::resolve(&view, &route.namespace, &route.backend) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(ingress = %format!("{}/{}", route.namespace, route.ingress), reason = %e, "503");
                metrics::counter!("skerry_ingress_unavailable_total").increment(1);
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 service unavailable: the backend has no ready endpoint\n",
                );
            }
        };
        let target = self.balancer.pick(&addrs);
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("http://{target}{path}").parse::<hyper::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "400 bad request: unusable path\n");
        };
        *req.uri_mut() = uri;
        *req.version_mut() = hyper::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if !headers.contains_key(header::HOST) {
            if let Ok(h) = HeaderValue::from_str(&host) {
                headers.insert(header::HOST, h);
            }
        }
        let client_ip = peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {client_ip}"),
            None => client_ip.clone(),
        };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-forwarded-proto", scheme.to_string()),
            ("x-forwarded-host", host.clone()),
            ("x-forwarded-port", local.port().to_string()),
            ("x-real-ip", client_ip),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                metrics::counter!("skerry_ingress_requests_total").increment(1);
                resp.map(|b| b.boxed())
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %target, error = %e, "502");
                text(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: the endpoint failed\n",
                )
            }
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                "504 gateway timeout: the endpoint did not answer\n",
            ),
        }
    }
}

/// Logs the refusal of a connection over the limit, at most every five seconds.
fn log_refusal(last: &AtomicU64, limit: usize) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prev = last.load(Ordering::Relaxed);
    metrics::counter!("skerry_ingress_connections_refused_total").increment(1);
    if now >= prev + 5
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(limit, "ingress connection limit reached: closing new connections until some end (raise --ingress-max-connections)");
    }
}

/// Serves one accepted client connection (HTTP/1.1 or h2).
async fn serve_conn<S>(
    router: Arc<Router>,
    io: S,
    peer: SocketAddr,
    local: SocketAddr,
    scheme: &'static str,
    header_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.handle(req, peer, local, scheme).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(%peer, error = %e, "ingress connection ended with an error");
    }
}

/// Accepts on one listener until the process ends.
async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    conns: Arc<Semaphore>,
    cfg: RouterConfig,
) {
    let last_refusal = AtomicU64::new(0);
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: wait for descriptors to free up rather than spin.
                tracing::warn!(error = %e, "ingress accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            log_refusal(&last_refusal, cfg.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, header_timeout, handshake) = (
            router.clone(),
            tls.clone(),
            cfg.header_timeout,
            cfg.handshake_timeout,
        );
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(router, stream, peer, local, "http", header_timeout).await,
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => serve_conn(router, s, peer, local, "https", header_timeout).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "ingress TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "ingress TLS handshake timed out"),
                },
            }
        });
    }
}

/// Binds `addr`, retrying every few seconds (another program may hold the port for a while).
async fn bind(addr: SocketAddr) -> TcpListener {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "ingress router listening");
                return l;
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "ingress router cannot listen; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Runs the router: waits for the node's first Ingress, opens the listeners, and keeps the
/// certificates current with the view. Returns when `shutdown` resolves.
pub async fn run(
    cfg: RouterConfig,
    mut view: ViewReceiver,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        if view
            .borrow()
            .ingresses
            .as_ref()
            .is_some_and(|s| !s.ingresses.is_empty())
        {
            break;
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return Ok(()) },
            _ = &mut shutdown => return Ok(()),
        }
    }
    let resolver = Arc::new(tls::SniResolver::default());
    let mut last_tls = None;
    refresh_tls(&resolver, &view.borrow_and_update(), &mut last_tls);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector);
    let router = Arc::new(Router {
        view: view.clone(),
        balancer: backend::Balancer::default(),
        client,
        request_timeout: cfg.request_timeout,
    });
    let conns = Arc::new(Semaphore::new(cfg.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = cfg.http {
        let (router, conns, cfg) = (router.clone(), conns.clone(), cfg.clone());
        tasks.spawn(async move { accept_loop(bind(addr).await, router, None, conns, cfg).await });
    }
    if let Some(addr) = cfg.https {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())?));
        let (router, conns, cfg) = (router.clone(), conns.clone(), cfg.clone());
        tasks.spawn(async move {
            accept_loop(bind(addr).await, router, Some(acceptor), conns, cfg).await
        });
    }
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() { return Ok(()) }
                refresh_tls(&resolver, &view.borrow_and_update(), &mut last_tls);
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// Rebuilds the certificates when the Ingresses or their Secrets changed.
#[allow(clippy::type_complexity)]
fn refresh_tls(
    resolver: &tls::SniResolver,
    view: &ServiceView,
    last: &mut Option<(
        Option<protocol::ingress::EdgeIngresses>,
        std::collections::BTreeMap<crate::network::view::Key, protocol::config::EdgeSecret>,
    )>,
) {
    let now = (view.ingresses.clone(), view.tls_secrets.clone());
    if last.as_ref() == Some(&now) {
        return;
    }
    let served = resolver.update(now.0.as_ref().unwrap_or(&Default::default()), &now.1);
    tracing::info!(
        ingresses = now.0.as_ref().map_or(0, |s| s.ingresses.len()),
        certificates = served,
        "ingress routes updated"
    );
    *last = Some(now);
}
