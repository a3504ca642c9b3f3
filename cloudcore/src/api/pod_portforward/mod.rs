//! `GET/POST /api/v1/namespaces/{ns}/pods/{name}/portforward`: TCP connections to a pod's ports
//! (`kubectl port-forward pod/x 8080:80`, and `svc/...`, which kubectl resolves to a pod
//! itself), each carried by one stream of the node's own QUIC link
//! ([`crate::hub::Hub::open_port_forward`]); the edge connects inside the pod's network
//! namespace to `localhost:port`, as kubelet and containerd do.
//!
//! # What kubectl 1.32 speaks, and what is served
//!
//! Port-forward is SPDY/3.1 with the stream protocol `portforward.k8s.io` (see [`session`]).
//! kubectl 1.32 (the `PortForwardWebsockets` gate, on by default) first tunnels that SPDY
//! session through a WebSocket: a `GET` with subprotocol `SPDY/3.1+portforward.k8s.io`, every
//! binary message a piece of the SPDY byte stream. If that upgrade fails it falls back to a
//! `POST` with `Upgrade: SPDY/3.1` and `X-Stream-Protocol-Version: portforward.k8s.io`, answered
//! `101` with the same headers, after which the connection is the SPDY session. Both are
//! served, the same way. Kubernetes' own WebSocket port-forward protocols (`v4.channel.k8s.io`
//! and `portforward.k8s.io` as WebSocket subprotocols, with a `ports` query) are not, and are
//! refused with a 400 saying so: kubectl does not use them.
//!
//! The `ports` query is optional (kubectl does not send it with SPDY); when given, each value
//! must be a port (1-65535) and only those ports are forwarded.
//!
//! # Checks and limits
//!
//! A pod that does not exist is a 404, one with no node a 400, a node that is not connected a
//! 503 that names it and says since when (before the upgrade, so kubectl prints it), an edge
//! older than protocol v7 a 400. Each forwarded connection takes one of the node's port-forward
//! stream slots; a connection the edge refuses (nothing listens on the port) or that is cut is
//! reported on its error stream, as kubelet reports it. A session with no traffic for
//! [`crate::api::pod_exec::IDLE_TIMEOUT`] is ended. Every session is logged with the user, the
//! pod and the ports of its connections, never their bytes.

mod dictionary;
pub mod session;
pub mod spdy;
mod tunnel;

use super::error::ApiError;
use super::handlers::Call;
use super::pod_log::away_since;
use crate::hub::streams::StreamError;
use crate::hub::Hub;
use axum::body::Body;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use protocol::streams::{PortForwardRequest, PORT_FORWARD_SINCE_VERSION};
use serde_json::Value;
use session::{Context, Opener, Upstream};
use std::sync::Arc;
use tracing::info;

/// The subresource name in paths.
pub const SUBRESOURCE: &str = "portforward";

/// The stream protocol of port-forward (`X-Stream-Protocol-Version`).
pub const STREAM_PROTOCOL: &str = "portforward.k8s.io";

/// The WebSocket subprotocol that tunnels SPDY.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How the client reached the SPDY session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Spdy,
}

/// The `ports` query: every value (repeated, or comma-separated as kubelet accepts), checked.
pub fn parse_ports(pairs: &[(String, String)]) -> Result<Option<Vec<u16>>, ApiError> {
    let mut ports = Vec::new();
    let mut named = false;
    for (k, v) in pairs {
        if k != "ports" {
            continue;
        }
        named = true;
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(ApiError::bad_field(
                        format!(
                            "PodPortForwardOptions is invalid: ports: Invalid value: {p:?}: \
                             must be a port number between 1 and 65535"
                        ),
                        "ports".to_string(),
                        format!("Invalid value: {p:?}: must be between 1 and 65535"),
                    ))
                }
            }
        }
    }
    Ok(named.then_some(ports))
}

/// The 503 of a node that is away.
fn not_connected(
    node: &str,
    since: Option<std::time::SystemTime>,
    ns: &str,
    pod: &str,
) -> ApiError {
    ApiError::ServiceUnavailable(format!(
        "node \"{node}\" is not connected to the cloud{}, so no port of pod \"{ns}/{pod}\" can \
         be forwarded from here; its pods keep running, and on the node itself `edgecore logs \
         {ns}/{pod}` and `edgecore exec {ns}/{pod} -- COMMAND` work",
        away_since(since)
    ))
}

fn spdy_requested(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, want: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "SPDY/3.1")
        && headers
            .get_all("x-stream-protocol-version")
            .iter()
            .any(|v| {
                v.to_str()
                    .map(|s| s.split(',').any(|p| p.trim() == STREAM_PROTOCOL))
                    .unwrap_or(false)
            })
}

/// What a node's refusal says on a connection's error stream.
fn refusal_message(port: u16, pod: &str, e: &StreamError) -> String {
    match e {
        // The edge words its own refusal as kubelet does ("error forwarding port ...").
        StreamError::Refused { message, .. } => message.clone(),
        e => format!("error forwarding port {port} to pod {pod}: {e}"),
    }
}

/// Serves a port-forward of pod `call.name`: checks it, then upgrades (WebSocket tunnel or
/// SPDY) and serves the SPDY session.
pub(super) async fn serve(
    call: &Call,
    hub: Option<&Arc<Hub>>,
    method: &Method,
    raw_query: &str,
    websocket: Option<Result<WebSocketUpgrade, WebSocketUpgradeRejection>>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let name = call.name.clone().unwrap_or_default();
    let ns = call.namespace.clone().unwrap_or_default();
    let pod = super::handlers::get_current(call).await?.value;
    let pairs = super::pod_exec::query_pairs(raw_query)?;
    let ports = parse_ports(&pairs)?;
    let (node, user) = super::pod_log::node_and_user(call, &pod, &name)?;
    // Before the upgrade, as kubectl itself checks: a pod that does not run has no port to
    // forward to, and a session upgraded for it would fail every connection one by one.
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if phase != "Running" {
        return Err(ApiError::bad_request(format!(
            "unable to forward port because pod {ns}/{name} is not running. Current status={phase}"
        )));
    }
    let Some(hub) = hub else {
        return Err(ApiError::ServiceUnavailable(
            "this cloudcore runs no hub, so no node can be reached for port-forward".into(),
        ));
    };
    let websocket = match websocket {
        Some(Ok(ws)) => {
            let ws = ws.protocols([TUNNEL_PROTOCOL]);
            if ws.selected_protocol().is_none() {
                let asked: Vec<String> = ws
                    .requested_protocols()
                    .filter_map(|p| p.to_str().ok().map(str::to_string))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "unsupported WebSocket subprotocol(s) {asked:?} for port-forward; served: \
                     {TUNNEL_PROTOCOL} (kubectl 1.30 and newer), or SPDY/3.1 with a POST"
                )));
            }
            Some(ws)
        }
        Some(Err(e)) if *method == Method::GET => {
            return Err(ApiError::bad_request(format!(
                "port-forward needs a WebSocket upgrade (subprotocol {TUNNEL_PROTOCOL}) or a \
                 SPDY/3.1 upgrade: {e}"
            )))
        }
        _ => None,
    };
    let transport = if websocket.is_some() {
        Transport::WebSocket
    } else if spdy_requested(&call.headers) && on_upgrade.is_some() {
        Transport::Spdy
    } else {
        return Err(ApiError::bad_request(format!(
            "port-forward needs an upgrade: a WebSocket with subprotocol {TUNNEL_PROTOCOL}, or \
             `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: {STREAM_PROTOCOL}`"
        )));
    };
    let Some(version) = hub.session_version(&node).await else {
        return Err(not_connected(&node, hub.away_since(&node), &ns, &name));
    };
    if version < PORT_FORWARD_SINCE_VERSION {
        return Err(ApiError::bad_request(format!(
            "node \"{node}\" runs an edgecore of protocol v{version}, which cannot forward \
             ports; upgrade it to one of protocol v{PORT_FORWARD_SINCE_VERSION} or newer"
        )));
    }
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let pod_ref = format!("{ns}/{name}");
    info!(%user, pod = %pod_ref, %node, ?ports, ?transport, "port-forward started");
    let opener: Opener = {
        let (hub, node, pod_ref, user) = (hub.clone(), node.clone(), pod_ref.clone(), user.clone());
        Arc::new(move |port| {
            let (hub, node, pod_ref, user) =
                (hub.clone(), node.clone(), pod_ref.clone(), user.clone());
            let req = PortForwardRequest {
                namespace: ns.clone(),
                pod: name.clone(),
                uid: uid.clone(),
                port,
            };
            Box::pin(async move {
                let stream = hub
                    .open_port_forward(&node, &user, req)
                    .await
                    .map_err(|e| refusal_message(port, &pod_ref, &e))?;
                let (send, recv, slot) = stream.into_parts();
                Ok(Upstream {
                    write: Box::new(send),
                    read: Box::new(recv),
                    guard: slot,
                })
            })
        })
    };
    let ctx = Context {
        user,
        pod: pod_ref,
        ports,
        idle: super::pod_exec::IDLE_TIMEOUT,
    };
    match (transport, websocket, on_upgrade) {
        (Transport::WebSocket, Some(ws), _) => Ok(ws
            .max_message_size(4 << 20)
            .max_write_buffer_size(1 << 20)
            .on_upgrade(move |socket| tunnel::serve(socket, ctx, opener))),
        (_, _, Some(on_upgrade)) => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        session::run(hyper_util::rt::TokioIo::new(upgraded), ctx, opener).await
                    }
                    Err(e) => {
                        info!(user = %ctx.user, pod = %ctx.pod, error = %e, "port-forward upgrade failed")
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "SPDY/3.1")
                .header("X-Stream-Protocol-Version", STREAM_PROTOCOL)
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()))
        }
        _ => Err(ApiError::bad_request("port-forward needs an upgrade")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ports_are_optional_repeated_or_comma_separated_and_checked() {
        assert_eq!(parse_ports(&pairs(&[])).expect("none"), None);
        assert_eq!(
            parse_ports(&pairs(&[("ports", "80"), ("ports", "8080,9090")])).expect("ok"),
            Some(vec![80, 8080, 9090])
        );
        for bad in ["0", "65536", "http", "-1"] {
            let e = parse_ports(&pairs(&[("ports", bad)])).expect_err(bad);
            assert_eq!(e.code(), StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains("ports: Invalid value"), "{e}");
        }
    }

    #[test]
    fn spdy_upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "SPDY/3.1".parse().expect("value"));
        assert!(!spdy_requested(&h));
        h.insert(
            "X-Stream-Protocol-Version",
            STREAM_PROTOCOL.parse().expect("value"),
        );
        assert!(spdy_requested(&h));
    }

    #[test]
    fn away_node_is_named() {
        let e = not_connected("edge-1", None, "default", "web");
        assert_eq!(e.code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("node \"edge-1\" is not connected"));
    }
}
