//! The Kubernetes REST API of cloudcore: namespaces, pods, nodes, ConfigMaps, Secrets, events,
//! Services and the apps/v1 workloads, built so that more resources are one registry entry each.
//!
//! Layout:
//! - [`resource`]: the registry ([`ResourceInfo`] + [`ResourceHandler`] per kind);
//! - [`namespaces`], [`pods`], [`nodes`], [`configmaps`], [`secrets`], [`events`],
//!   [`services`], [`endpoints`] (Endpoints and EndpointSlices), [`ingress`] (Ingresses and
//!   IngressClasses), [`workloads`] (apps/v1), [`batch`] (Jobs, CronJobs): the
//!   per-kind behaviour;
//! - [`client`]: the in-process client controllers write through, with the HTTP path's semantics;
//! - `handlers`: generic get/list/create/update/patch/delete/deletecollection/status over the
//!   [`Store`], with Kubernetes' semantics (defaulting, optimistic concurrency, graceful pod
//!   deletion, finalizers and propagation; [`finalizers`]);
//! - [`scale`]: the `/scale` subresource of the workloads; [`binding`]: pods' `/binding`;
//! - `watch`: `?watch=1` streams, resumable from the [`history`] of recent events;
//! - [`namespaces`]: the Namespace kind, the checks on creating into one, and the controller
//!   that empties and removes deleted ones;
//! - [`table`]: server-side printing for `kubectl get`;
//! - [`discovery`]: `/api`, `/apis`, `/version`, and a minimal `/openapi/v3` (see
//!   [`discovery::openapi_v3_group_version`] for why it exists); [`openapi_v2`]: the same as
//!   `/openapi/v2`, which kubectl falls back to for kinds the server does not serve;
//! - [`selector`], [`validation`], [`quantity`], [`error`]: the pieces those share;
//! - [`patch`]: JSON patch, strategic merge patch and server-side apply;
//! - [`protobuf`]: the protobuf bodies kubectl's typed clients send, for every served kind.
//!
//! [`router`] returns a plain `axum::Router`; the caller serves it (over TLS in production).
//! Objects are stored as the Kubernetes JSON of the object, under
//! `ObjectKey::new(storage_resource, namespace_or_empty, name)` — for core resources the
//! resource is the plural (`pods`, `nodes`). Open the store with [`crate::projection::shard`] so that pods are
//! sharded by the node they are bound to.

pub mod auth;
pub mod batch;
pub mod binding;
pub mod client;
pub mod configmaps;
pub mod conn_limits;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod finalizers;
mod handlers;
pub mod health;
pub mod history;
pub mod ingress;
pub mod namespaces;
pub mod node_cidrs;
pub mod nodes;
pub mod openapi_v2;
pub mod patch;
pub mod pod_exec;
pub mod pod_log;
pub mod pod_portforward;
pub mod pods;
pub mod protobuf;
pub mod quantity;
pub mod resource;
pub mod scale;
pub mod schemas;
pub mod secrets;
pub mod selector;
pub mod services;
pub mod table;
pub mod validation;
mod watch;
pub mod workloads;

#[cfg(test)]
mod tests;

pub use error::{ApiError, FieldError};
pub use handlers::new_uid;
pub use resource::{DeleteAction, Registry, ResourceHandler, ResourceInfo};

use crate::store::Store;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Kubernetes' request body limit (3 MiB): larger bodies get 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Renders the Prometheus text exposition for `GET /metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The object store.
    pub store: Arc<dyn Store>,
    /// Produces the `GET /metrics` body (the caller owns the metrics recorder).
    pub metrics_render: MetricsRender,
    /// The resources served.
    pub registry: Arc<Registry>,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Recent store events, for watches that resume from a resourceVersion.
    pub history: Arc<history::History>,
    /// The OpenAPI v3 documents of `registry`, built on first use (they carry every kind's
    /// schema, and kubectl fetches the index before most writes).
    openapi: Arc<std::sync::OnceLock<discovery::OpenApiDocs>>,
    /// The OpenAPI v2 document of `registry`, built on first use of `/openapi/v2`.
    openapi_v2: Arc<std::sync::OnceLock<openapi_v2::OpenApiV2>>,
    /// What `/livez`, `/healthz` and `/readyz` consult.
    pub health: health::Health,
    /// The hub, for what is read on the nodes themselves (`pods/log`); `None` in a server
    /// without one (tests), which answers those with 503.
    pub hub: Option<Arc<crate::hub::Hub>>,
}

impl ApiState {
    /// State serving the built-in resources (namespaces, pods, nodes, ConfigMaps, Secrets,
    /// events) from `store`, with `metrics_render` producing the `/metrics` text and the default
    /// watch history. Needs a tokio runtime (the history is fed by a task).
    pub fn new(store: Arc<dyn Store>, metrics_render: MetricsRender) -> Self {
        Self::with_watch_history(store, metrics_render, history::DEFAULT_CAPACITY)
    }

    /// As [`ApiState::new`], keeping the last `events` store events for resuming watches.
    pub fn with_watch_history(
        store: Arc<dyn Store>,
        metrics_render: MetricsRender,
        events: usize,
    ) -> Self {
        Self {
            history: history::History::start(store.clone(), events),
            store,
            metrics_render,
            registry: Arc::new(Registry::builtin()),
            max_body_bytes: MAX_BODY_BYTES,
            openapi: Arc::default(),
            openapi_v2: Arc::default(),
            health: health::Health::default(),
            hub: None,
        }
    }

    /// Reaches the nodes through `hub` (`pods/log`).
    pub fn with_hub(mut self, hub: Arc<crate::hub::Hub>) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Sets what the health endpoints consult.
    pub fn with_health(mut self, health: health::Health) -> Self {
        self.health = health;
        self
    }

    /// The OpenAPI v3 documents of the served resources.
    fn openapi(&self) -> &discovery::OpenApiDocs {
        self.openapi
            .get_or_init(|| discovery::OpenApiDocs::build(&self.registry))
    }

    /// The OpenAPI v2 document of the served resources.
    fn openapi_v2(&self) -> &openapi_v2::OpenApiV2 {
        self.openapi_v2
            .get_or_init(|| openapi_v2::OpenApiV2::build(&self.registry, self.openapi()))
    }

    /// Replaces the registry (tests, or a build serving more resources).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Arc::new(registry);
        self.openapi = Arc::default();
        self.openapi_v2 = Arc::default();
        self
    }
}

/// What the metrics middleware labels a request with; set by the resource handlers as a
/// response extension.
#[derive(Debug, Clone)]
pub(crate) struct RequestLabels {
    pub verb: &'static str,
    pub resource: String,
}

/// The API router: resources under `/api` and `/apis`, discovery, `/version`, `/openapi/v2`,
/// `/openapi/v3`, `/healthz`, `/readyz`, `/livez` and `/metrics`. Every error is a Kubernetes
/// `Status`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/livez", get(health::livez))
        .route("/metrics", get(metrics_text))
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/openapi/v2", get(openapi_v2_doc))
        .route("/openapi/v3", get(openapi_v3_index))
        .route("/openapi/v3/{*path}", get(openapi_v3_doc))
        .route("/api/{*rest}", any(handlers::dispatch))
        .route("/apis/{*rest}", any(handlers::dispatch))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    let body = (state.metrics_render)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn version() -> Response {
    error::json_response(StatusCode::OK, &discovery::version_info())
}

async fn api_versions(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    error::json_response(
        StatusCode::OK,
        &discovery::api_versions(&state.registry, host),
    )
}

async fn api_groups(State(state): State<ApiState>) -> Response {
    error::json_response(StatusCode::OK, &discovery::api_group_list(&state.registry))
}

/// `GET /openapi/v2`: protobuf for clients that ask for it (client-go), JSON otherwise.
async fn openapi_v2_doc(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let doc = state.openapi_v2();
    if openapi_v2::wants_protobuf(accept) {
        (
            [(header::CONTENT_TYPE, openapi_v2::PROTOBUF_CONTENT_TYPE)],
            doc.protobuf.clone(),
        )
            .into_response()
    } else {
        error::json_response(StatusCode::OK, &doc.json)
    }
}

async fn openapi_v3_index(State(state): State<ApiState>) -> Response {
    error::json_response(StatusCode::OK, &state.openapi().index)
}

async fn openapi_v3_doc(State(state): State<ApiState>, uri: Uri) -> Response {
    let path = uri.path().strip_prefix("/openapi/v3/").unwrap_or("");
    match state.openapi().documents.get(path) {
        Some(doc) => error::json_response(StatusCode::OK, doc),
        None => ApiError::PathNotFound.into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::PathNotFound.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

/// One span per request (method, path, status) and the request metrics
/// `skerry_api_requests_total{verb,resource,code}` and
/// `skerry_api_request_duration_seconds{verb,resource}`.
async fn observe(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("api", %method, %path, status = tracing::field::Empty);
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    let (verb, resource) = match resp.extensions().get::<RequestLabels>() {
        Some(l) => (l.verb, l.resource.clone()),
        None => (
            if method == axum::http::Method::GET {
                "get"
            } else {
                "other"
            },
            String::new(),
        ),
    };
    let elapsed = start.elapsed().as_secs_f64();
    metrics::counter!("skerry_api_requests_total", "verb" => verb, "resource" => resource.clone(), "code" => status.to_string())
        .increment(1);
    metrics::histogram!("skerry_api_request_duration_seconds", "verb" => verb, "resource" => resource)
        .record(elapsed);
    tracing::debug!(parent: &span, elapsed_ms = elapsed * 1000.0, "request done");
    resp
}
