//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a container's log, read on its node and
//! streamed through the node's own QUIC link (see [`crate::hub::streams`]).
//!
//! The parameters are kubectl 1.32's (`container`, `follow`, `tailLines`, `sinceSeconds`,
//! `sinceTime`, `timestamps`, `previous`, `limitBytes`) with kube-apiserver's checks and words:
//! the container defaults to the pod's only one and must be named otherwise, a pod with no node
//! is refused. Values that do not parse are a 400 `Status` (kube-apiserver would take
//! `follow=maybe` as true; a typo should not silently follow). The answer is `text/plain`, sent
//! as the edge reads it, so `kubectl logs -f` follows; when the client leaves, the body is
//! dropped, which cancels the edge's stream. A node without a session is a 503 saying which node,
//! since when, and that `edgecore logs` on the node itself still works.
//!
//! Authorization is the API's: the guard in front of every handler checks the user against the
//! request's method and path, and `pods/log` is a path of its own.

use super::error::ApiError;
use super::handlers::Call;
use crate::hub::streams::{LogStream, StreamError};
use crate::hub::Hub;
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use protocol::streams::{LogRefusal, LogRequest, LogSince};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::info;

/// The subresource name in paths.
pub const SUBRESOURCE: &str = "log";

/// The query parameters, checked (the container is resolved against the pod later).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// `container`, if given.
    pub container: Option<String>,
    /// `follow`.
    pub follow: bool,
    /// `tailLines`.
    pub tail_lines: Option<u64>,
    /// `sinceSeconds` or `sinceTime`.
    pub since: Option<LogSince>,
    /// `timestamps`.
    pub timestamps: bool,
    /// `previous`.
    pub previous: bool,
    /// `limitBytes`.
    pub limit_bytes: Option<u64>,
}

fn invalid(name: &str, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::bad_field(
        format!("PodLogOptions \"{name}\" is invalid: {field}: Invalid value: {value}: {detail}"),
        field.to_string(),
        format!("Invalid value: {value}: {detail}"),
    )
}

fn parse_bool(name: &str, field: &str, v: Option<&String>) -> Result<bool, ApiError> {
    match v.map(String::as_str) {
        None => Ok(false),
        // `?follow` alone means true, as in Kubernetes.
        Some("") => Ok(true),
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(invalid(
                name,
                field,
                &format!("{s:?}"),
                "must be true or false",
            )),
        },
    }
}

fn parse_int(
    name: &str,
    field: &str,
    v: Option<&String>,
    min: i64,
) -> Result<Option<u64>, ApiError> {
    let Some(s) = v else { return Ok(None) };
    let n: i64 = s
        .parse()
        .map_err(|_| invalid(name, field, &format!("{s:?}"), "must be an integer"))?;
    if n < min {
        let rule = if min == 0 {
            "must be greater than or equal to 0"
        } else {
            "must be greater than 0"
        };
        return Err(invalid(name, field, &n.to_string(), rule));
    }
    Ok(Some(n as u64))
}

/// Checks the query of a log request for pod `name`.
pub fn parse_options(name: &str, q: &HashMap<String, String>) -> Result<LogOptions, ApiError> {
    let since_seconds = parse_int(name, "sinceSeconds", q.get("sinceSeconds"), 1)?;
    let since_time = match q.get("sinceTime") {
        None => None,
        Some(s) => Some(protocol::timestamp::parse_nanos(s).ok_or_else(|| {
            invalid(
                name,
                "sinceTime",
                &format!("{s:?}"),
                "must be an RFC 3339 time",
            )
        })?),
    };
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "PodLogOptions \"{name}\" is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified"
            )))
        }
        (Some(s), None) => Some(LogSince::Seconds(s)),
        (None, Some(t)) => Some(LogSince::UnixNanos(t)),
        (None, None) => None,
    };
    // Kubernetes 1.32 has only the combined stream (`stream` is a later alpha).
    if let Some(stream) = q.get("stream").filter(|s| s.as_str() != "All") {
        return Err(ApiError::bad_request(format!(
            "PodLogOptions \"{name}\" is invalid: stream: Unsupported value: {stream:?}: only \"All\" is served"
        )));
    }
    Ok(LogOptions {
        container: q.get("container").filter(|c| !c.is_empty()).cloned(),
        follow: parse_bool(name, "follow", q.get("follow"))?,
        tail_lines: parse_int(name, "tailLines", q.get("tailLines"), 0)?,
        since,
        timestamps: parse_bool(name, "timestamps", q.get("timestamps"))?,
        previous: parse_bool(name, "previous", q.get("previous"))?,
        limit_bytes: parse_int(name, "limitBytes", q.get("limitBytes"), 1)?,
    })
}

fn names(containers: Option<&Value>) -> Vec<String> {
    containers
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container to read, as kube-apiserver's `LogLocation` chooses it.
pub fn resolve_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod.pointer("/spec/containers"));
    let init = names(pod.pointer("/spec/initContainers"));
    let ephemeral = names(pod.pointer("/spec/ephemeralContainers"));
    match asked {
        Some(c) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    msg += &format!(" or one of the init containers: [{}]", init.join(" "));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

/// `" since <time> (<n>s ago)"` for a node away since `since`, or that this cloudcore never saw
/// it connected.
pub(super) fn away_since(since: Option<SystemTime>) -> String {
    match since {
        Some(t) => {
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let ago = SystemTime::now()
                .duration_since(t)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(" since {} ({ago}s ago)", protocol::timestamp::format(secs))
        }
        None => " (not since this cloudcore started)".to_string(),
    }
}

/// The 503 of a node that is away.
fn not_connected(node: &str, since: Option<SystemTime>, ns: &str, pod: &str, c: &str) -> ApiError {
    let when = away_since(since);
    ApiError::ServiceUnavailable(format!(
        "node \"{node}\" is not connected to the cloud{when}, so the log of pod \"{ns}/{pod}\" \
         cannot be read from here; its pods keep running, and on the node itself \
         `edgecore logs {ns}/{pod} -c {c}` reads it"
    ))
}

/// Serves the log of pod `call.name`.
/// The node `pod` is bound to (a 400 in kube-apiserver's words if none) and the caller's user
/// name, for a request streamed from the pod's node.
pub(super) fn node_and_user(
    call: &Call,
    pod: &Value,
    name: &str,
) -> Result<(String, String), ApiError> {
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let user = call
        .user
        .as_ref()
        .map(|u| u.name.clone())
        .unwrap_or_default();
    Ok((node, user))
}

pub(super) async fn serve(call: &Call, hub: Option<&Arc<Hub>>) -> Result<Response, ApiError> {
    let name = call.name.clone().unwrap_or_default();
    let ns = call.namespace.clone().unwrap_or_default();
    let opts = parse_options(&name, &call.query)?;
    let pod = super::handlers::get_current(call).await?.value;
    let container = resolve_container(&pod, &name, opts.container.as_deref())?;
    let (node, user) = node_and_user(call, &pod, &name)?;
    let Some(hub) = hub else {
        return Err(ApiError::ServiceUnavailable(
            "this cloudcore runs no hub, so no node can be reached for logs".into(),
        ));
    };
    let req = LogRequest {
        namespace: ns.clone(),
        pod: name.clone(),
        uid: pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        container: container.clone(),
        follow: opts.follow,
        tail_lines: opts.tail_lines,
        since: opts.since,
        timestamps: opts.timestamps,
        previous: opts.previous,
        limit_bytes: opts.limit_bytes,
    };
    let stream = hub.open_log(&node, &user, req).await.map_err(|e| {
        info!(%user, pod = %format!("{ns}/{name}"), %container, %node, error = %e, "log request refused");
        match e {
            StreamError::NotConnected { node, since } => {
                not_connected(&node, since, &ns, &name, &container)
            }
            StreamError::Busy { .. } | StreamError::UserBusy { .. } => {
                ApiError::TooManyRequests(e.to_string())
            }
            StreamError::TooOld { .. } => ApiError::bad_request(e.to_string()),
            StreamError::Refused { kind, message } => match kind {
                LogRefusal::NotFound | LogRefusal::BadRequest => ApiError::bad_request(message),
                LogRefusal::Busy => ApiError::TooManyRequests(message),
                LogRefusal::Internal => ApiError::Internal(message),
            },
            StreamError::Link { .. } => ApiError::ServiceUnavailable(format!(
                "{e}; on the node itself `edgecore logs {ns}/{name} -c {container}` reads the log"
            )),
        }
    })?;
    info!(%user, pod = %format!("{ns}/{name}"), %container, %node, follow = opts.follow,
          previous = opts.previous, "streaming a container log");
    let pod_ref = format!("{ns}/{name}");
    // One chunk read per poll of the body: a client that stops reading stops the reads, the
    // stream's window closes and the edge waits.
    let body = futures::stream::unfold(LogBody::Reading(stream, 0), move |state| {
        let (user, pod_ref, container) = (user.clone(), pod_ref.clone(), container.clone());
        async move {
            let (mut stream, sent) = match state {
                LogBody::Reading(stream, sent) => (stream, sent),
                LogBody::Failing(reason) => {
                    // HTTP/2 drops what is still queued on a stream it resets: give the
                    // reason's line a moment to leave first.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    return Some((Err(std::io::Error::other(reason)), LogBody::Done));
                }
                LogBody::Done => return None,
            };
            let read = tokio::select! {
                read = stream.recv.read_chunk(64 * 1024, true) => read.map_err(|e| e.to_string()),
                cut = stream.cut.wait() => Err(cut),
            };
            match read {
                Ok(Some(chunk)) => {
                    let sent = sent + chunk.bytes.len() as u64;
                    Some((Ok(chunk.bytes), LogBody::Reading(stream, sent)))
                }
                Ok(None) => {
                    info!(%user, pod = %pod_ref, %container, bytes = sent, "container log sent");
                    None
                }
                Err(e) => {
                    info!(%user, pod = %pod_ref, %container, bytes = sent, error = %e,
                          "container log cut: the node's stream ended early");
                    // An aborted body reaches kubectl as a bare stream error: the reason goes
                    // into the log's text first, on a line of its own, then the body fails (so
                    // kubectl exits non-zero).
                    let reason = format!("the log stream from the node was cut: {e}");
                    let line = bytes::Bytes::from(format!("\n[skerry] {reason}\n"));
                    Some((Ok(line), LogBody::Failing(reason)))
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Where a log response's body is.
enum LogBody {
    /// Reading the node's stream; the bytes sent so far.
    Reading(LogStream, u64),
    /// The stream was cut and the reason written: the body fails next.
    Failing(String),
    /// Nothing more.
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_kubectl_parameters() {
        let o = parse_options(
            "p",
            &q(&[
                ("container", "main"),
                ("follow", "true"),
                ("tailLines", "10"),
                ("sinceSeconds", "60"),
                ("timestamps", "1"),
                ("previous", "false"),
                ("limitBytes", "100"),
                ("insecureSkipTLSVerifyBackend", "true"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            o,
            LogOptions {
                container: Some("main".into()),
                follow: true,
                tail_lines: Some(10),
                since: Some(LogSince::Seconds(60)),
                timestamps: true,
                previous: false,
                limit_bytes: Some(100),
            }
        );
        assert_eq!(
            parse_options("p", &q(&[])).expect("empty"),
            LogOptions::default()
        );
        let t = parse_options("p", &q(&[("sinceTime", "2026-01-02T03:04:05Z")])).expect("time");
        assert_eq!(
            t.since,
            Some(LogSince::UnixNanos(1_767_323_045_000_000_000))
        );
        assert_eq!(
            parse_options("p", &q(&[("tailLines", "0")]))
                .expect("0")
                .tail_lines,
            Some(0)
        );
    }

    #[test]
    fn refuses_bad_values_with_400() {
        for (k, v, needle) in [
            ("follow", "maybe", "follow: Invalid value: \"maybe\""),
            ("tailLines", "-1", "must be greater than or equal to 0"),
            ("tailLines", "ten", "must be an integer"),
            (
                "limitBytes",
                "0",
                "limitBytes: Invalid value: 0: must be greater than 0",
            ),
            ("sinceSeconds", "0", "must be greater than 0"),
            ("sinceTime", "yesterday", "must be an RFC 3339 time"),
            ("stream", "Stdout", "only \"All\""),
        ] {
            let e = parse_options("p", &q(&[(k, v)])).expect_err(k);
            assert_eq!(e.code(), StatusCode::BAD_REQUEST, "{k}={v}");
            assert!(e.to_string().contains(needle), "{k}={v}: {e}");
        }
        let both = parse_options(
            "p",
            &q(&[("sinceSeconds", "5"), ("sinceTime", "2026-01-02T03:04:05Z")]),
        )
        .expect_err("both");
        assert!(both.to_string().contains("at most one of"), "{both}");
    }

    #[test]
    fn container_defaults_and_errors_as_kube_apiserver() {
        let one = json!({"spec": {"containers": [{"name": "main"}]}});
        assert_eq!(resolve_container(&one, "p", None).expect("default"), "main");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
                                  "initContainers": [{"name": "init"}]}});
        assert_eq!(
            resolve_container(&two, "web", None).expect_err("two").to_string(),
            "a container name must be specified for pod web, choose one of: [a b] or one of the init containers: [init]"
        );
        assert_eq!(
            resolve_container(&two, "web", Some("init")).expect("init"),
            "init"
        );
        assert_eq!(
            resolve_container(&two, "web", Some("c"))
                .expect_err("bad")
                .to_string(),
            "container c is not valid for pod web"
        );
    }

    #[test]
    fn away_node_message_names_node_time_and_edgecore_logs() {
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let e = not_connected("edge-1", Some(since), "default", "hello", "main");
        assert_eq!(e.code(), StatusCode::SERVICE_UNAVAILABLE);
        let m = e.to_string();
        assert!(m.contains("node \"edge-1\" is not connected"), "{m}");
        assert!(m.contains("since 2023-11-14T22:13:20Z"), "{m}");
        assert!(m.contains("`edgecore logs default/hello -c main`"), "{m}");
        assert_eq!(e.status()["reason"], "ServiceUnavailable");
    }
}
