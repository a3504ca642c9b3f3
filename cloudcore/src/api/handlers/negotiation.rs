//! Answer encoding: protobuf for clients that prefer it (client-go's typed clients), JSON for
//! everything else, decided once per request after the verb has answered.

use crate::api::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Whether the client prefers protobuf answers (client-go's typed clients do). Watch streams
/// stay JSON: they are framed differently.
pub(super) fn wants_protobuf(parts: &axum::http::request::Parts) -> bool {
    let watch = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| matches!(kv.split_once('='), Some(("watch", "1" | "true" | "True"))));
    !watch
        && parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(crate::api::protobuf::preferred)
}

/// Re-encodes a complete JSON answer (an object, a list or a Status) as protobuf. Anything
/// else (a Table, a stream, a kind without a protobuf form) is left as it is: the clients that
/// prefer protobuf also accept JSON.
pub(super) async fn protobuf_response(resp: Response) -> Response {
    use hyper::body::Body as _;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !json || resp.body().size_hint().exact().is_none() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot buffer a JSON answer to re-encode it");
            return ApiError::Internal(format!("cannot buffer the answer: {e}")).into_response();
        }
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| crate::api::protobuf::encode(&v));
    match encoded {
        Some(Ok(pb)) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::api::protobuf::CONTENT_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(pb))
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "answering in JSON: the object has no protobuf form");
            Response::from_parts(parts, Body::from(bytes))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}
