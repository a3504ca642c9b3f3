//! `GET /api/v1/namespaces/{ns}/pods/{name}/exec`: a command run in a container on its node,
//! its standard streams carried over the node's own QUIC link (see [`crate::hub::streams`]),
//! spoken to kubectl as Kubernetes' WebSocket channel protocol. `kubectl cp` rides on it (it
//! runs `tar` through exec). `.../attach` is the same protocol carrying a running container's
//! output from now on (its stdin is not kept open on the nodes, so `stdin`/`tty` are refused).
//!
//! # What kubectl 1.32 speaks, and what is served
//!
//! kubectl 1.32 opens exec as a WebSocket (`GET`, subprotocol `v5.channel.k8s.io` only) and
//! falls back to SPDY (`POST`, `Upgrade: SPDY/3.1`) when the WebSocket handshake does not end in
//! `101`. Served here: `v5.channel.k8s.io` and `v4.channel.k8s.io` (the older clients' protocol,
//! which has no way to close stdin but the whole connection). Every message is binary, its first
//! byte the channel: 0 stdin, 1 stdout, 2 stderr, 3 the error channel (one `Status`, the
//! command's outcome), 4 terminal resizes (`{"Width":..,"Height":..}`), and in v5 255 the close
//! signal (`[255, channel]`: the client closed its stdin). A non-zero exit is a `Status` with
//! reason `NonZeroExitCode` and a cause `ExitCode` holding the code, which kubectl turns into
//! `command terminated with exit code N` and its own exit status. SPDY is not served: a `POST`
//! is checked like a `GET` (so a node that is away still gets its 503 after kubectl's fallback),
//! then refused with a 400 that says to use the WebSocket protocol.
//!
//! # Limits
//!
//! The request is checked (container, command, at least one stream) before anything reaches the
//! node; the edge has started the command before the WebSocket is accepted, so a refusal is an
//! HTTP `Status`. Each direction moves one message at a time: a client that stops reading stops
//! the reads of the node's stream, whose small window then stops the edge (no buffer grows), and
//! a node that stops reading stops the reads of the WebSocket. A stream with no traffic either
//! way for [`IDLE_TIMEOUT`] (kubelet's default streaming idle timeout) is ended. A link that drops
//! mid-stream ends the session with a `Status` saying so on the error channel; kubectl exits
//! non-zero. Every exec is logged with the user, pod, container and command, never the bytes.

use super::error::ApiError;
use super::handlers::Call;
use super::pod_log::{away_since, resolve_container};
use crate::hub::streams::{ExecStream, StreamError};
use crate::hub::Hub;
use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, Message, WebSocket, WebSocketUpgrade,
};
use axum::http::Method;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use protocol::streams::{
    AttachIoRequest, AttachRequest, ExecEvent, ExecInput, ExecRequest, LogRefusal, TermSize,
    EXEC_CHUNK, EXEC_SINCE_VERSION, MAX_EXEC_FRAME,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// The subresource name in paths.
pub const SUBRESOURCE: &str = "exec";

/// The attach subresource: the same protocol, a running container's output instead of a
/// command's streams.
pub const ATTACH_SUBRESOURCE: &str = "attach";

/// The WebSocket subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// How long a terminal's first size is waited for before the command starts without it.
const FIRST_SIZE_WAIT: Duration = Duration::from_secs(1);

/// A stream with no traffic either way for this long is ended (kubelet's
/// `--streaming-connection-idle-timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The query of an exec request, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOptions {
    /// `container`, if given.
    pub container: Option<String>,
    /// Every `command` parameter, in order.
    pub command: Vec<String>,
    /// `stdin`.
    pub stdin: bool,
    /// `stdout`.
    pub stdout: bool,
    /// `stderr` (false with `tty`, as kubelet has it: a terminal has one output).
    pub stderr: bool,
    /// `tty`.
    pub tty: bool,
}

fn parse_bool(field: &str, v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(ApiError::bad_field(
            format!(
                "PodExecOptions is invalid: {field}: Invalid value: {v:?}: must be true or false"
            ),
            field.to_string(),
            format!("Invalid value: {v:?}: must be true or false"),
        )),
    }
}

/// Checks the query of an attach. Whether input and a terminal are carried is the
/// container's to say (see [`attach_streams`]).
pub fn parse_attach_options(pairs: &[(String, String)]) -> Result<ExecOptions, ApiError> {
    let mut o = ExecOptions::default();
    for (k, v) in pairs {
        match k.as_str() {
            "container" if !v.is_empty() => o.container = Some(v.clone()),
            "stdin" => o.stdin = parse_bool(k, v)?,
            "stdout" => o.stdout = parse_bool(k, v)?,
            "stderr" => o.stderr = parse_bool(k, v)?,
            "tty" => o.tty = parse_bool(k, v)?,
            _ => {}
        }
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    o.command = vec![];
    Ok(o)
}

/// A container's `stdin` and `tty` in the stored pod (its `stdinOnce` is the node's to
/// honour: containerd closes stdin when the first attach ends).
fn container_io(pod: &Value, container: &str) -> (bool, bool) {
    let spec = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
        });
    let flag = |name: &str| {
        spec.and_then(|c| c.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    (flag("stdin"), flag("tty"))
}

/// What an attach carries, decided as kubelet decides it: a terminal exactly when the
/// container has one (whether a process runs on a terminal cannot change after it started,
/// and kubectl asks for one only then), input only to a container started with `stdin`, and
/// stderr never beside a terminal. `Ok(None)`: the container keeps no stdin nor terminal, so
/// the attach is its output, from its log.
fn attach_streams(
    opts: &mut ExecOptions,
    pod: &Value,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<Option<bool>, ApiError> {
    let (stdin, tty) = container_io(pod, container);
    if opts.stdin && !stdin {
        return Err(ApiError::bad_field(
            format!(
                "PodAttachOptions is invalid: stdin: Invalid value: true: container \
                 \"{container}\" of pod \"{ns}/{name}\" was not started with stdin: true, so \
                 there is no input to attach to (kubectl run -i sets it; kubectl exec -i runs a \
                 command with input beside it)"
            ),
            "stdin".into(),
            "Invalid value: true: the container has no stdin".into(),
        ));
    }
    opts.tty = tty;
    if tty {
        opts.stderr = false;
        opts.stdout = true;
    }
    Ok((stdin || tty).then_some(tty))
}

/// Checks the query (`command` repeats, so the pairs come in order).
pub fn parse_options(pairs: &[(String, String)]) -> Result<ExecOptions, ApiError> {
    let mut o = ExecOptions::default();
    for (k, v) in pairs {
        match k.as_str() {
            "command" => o.command.push(v.clone()),
            "container" if !v.is_empty() => o.container = Some(v.clone()),
            "stdin" => o.stdin = parse_bool(k, v)?,
            "stdout" => o.stdout = parse_bool(k, v)?,
            "stderr" => o.stderr = parse_bool(k, v)?,
            "tty" => o.tty = parse_bool(k, v)?,
            _ => {}
        }
    }
    if o.command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if o.tty {
        o.stderr = false;
    }
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(o)
}

/// The 503 of a node that is away.
fn not_connected(
    node: &str,
    since: Option<std::time::SystemTime>,
    ns: &str,
    pod: &str,
    c: &str,
) -> ApiError {
    ApiError::ServiceUnavailable(format!(
        "node \"{node}\" is not connected to the cloud{}, so no command can be run in pod \
         \"{ns}/{pod}\" from here; its pods keep running, and on the node itself \
         `edgecore exec {ns}/{pod} -c {c} -- COMMAND` runs one",
        away_since(since)
    ))
}

/// Serves an exec (or attach) of pod `call.name`: checks it, starts the command on the node,
/// then upgrades to the WebSocket and carries the streams. A request refused before it
/// reaches the node is logged with its user and pod here, as the ones that start are later.
pub(super) async fn serve(
    call: &Call,
    hub: Option<&Arc<Hub>>,
    method: &Method,
    raw_query: &str,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    attach: bool,
) -> Result<Response, ApiError> {
    let served = serve_checked(call, hub, method, raw_query, upgrade, attach).await;
    if let Err(e) = &served {
        let user = call.user.as_ref().map(|u| u.name.as_str()).unwrap_or("");
        let pod = format!(
            "{}/{}",
            call.namespace.as_deref().unwrap_or(""),
            call.name.as_deref().unwrap_or("")
        );
        let what = if attach { "attach" } else { "exec" };
        info!(what, %user, %pod, error = %e, "exec refused");
    }
    served
}

async fn serve_checked(
    call: &Call,
    hub: Option<&Arc<Hub>>,
    method: &Method,
    raw_query: &str,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    attach: bool,
) -> Result<Response, ApiError> {
    let name = call.name.clone().unwrap_or_default();
    let ns = call.namespace.clone().unwrap_or_default();
    // A pod that does not exist is a 404 whatever was asked of it.
    let pod = super::handlers::get_current(call).await?.value;
    let pairs: Vec<(String, String)> = query_pairs(raw_query)?;
    let opts = if attach {
        parse_attach_options(&pairs)?
    } else {
        parse_options(&pairs)?
    };
    let mut opts = opts;
    let container = resolve_container(&pod, &name, opts.container.as_deref())?;
    let io = if attach {
        attach_streams(&mut opts, &pod, &ns, &name, &container)?
    } else {
        None
    };
    let (node, user) = super::pod_log::node_and_user(call, &pod, &name)?;
    let Some(hub) = hub else {
        return Err(ApiError::ServiceUnavailable(
            "this cloudcore runs no hub, so no node can be reached for exec".into(),
        ));
    };
    let pod_ref = format!("{ns}/{name}");
    // SPDY (kubectl's fallback, or KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false) is not served. Said
    // only once the node is known to be reachable, so that the fallback request of a refused
    // WebSocket gets the same answer (a 503 for a node that is away) instead of this one.
    let upgrade = match upgrade {
        Ok(u) => Some(u),
        Err(_) if *method == Method::POST => None,
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "exec needs a WebSocket upgrade: {e}"
            )))
        }
    };
    let Some(version) = hub.session_version(&node).await else {
        return Err(not_connected(
            &node,
            hub.away_since(&node),
            &ns,
            &name,
            &container,
        ));
    };
    if version < EXEC_SINCE_VERSION {
        return Err(ApiError::bad_request(format!(
            "node \"{node}\" runs an edgecore of protocol v{version}, which cannot run commands \
             for exec; upgrade it to one of protocol v{EXEC_SINCE_VERSION} or newer"
        )));
    }
    let Some(upgrade) = upgrade else {
        return Err(ApiError::bad_request(format!(
            "this API server serves exec over WebSocket only (subprotocols {}), not SPDY; \
             kubectl 1.30 and newer use it unless KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false",
            PROTOCOLS.join(", ")
        )));
    };
    let upgrade = upgrade
        .protocols(PROTOCOLS)
        .max_message_size(4 << 20)
        .max_write_buffer_size(1 << 20);
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_string)
    else {
        let asked: Vec<String> = upgrade
            .requested_protocols()
            .filter_map(|p| p.to_str().ok().map(str::to_string))
            .collect();
        return Err(ApiError::bad_request(format!(
            "unsupported WebSocket subprotocol(s) {asked:?}; served: {}",
            PROTOCOLS.join(", ")
        )));
    };
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let req = ExecRequest {
        namespace: ns.clone(),
        pod: name.clone(),
        uid: uid.clone(),
        container: container.clone(),
        command: opts.command.clone(),
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
        tty: opts.tty,
        size: None,
    };
    let req = if let (true, Some(tty)) = (attach, io) {
        Request::AttachIo(AttachIoRequest {
            namespace: ns.clone(),
            pod: name.clone(),
            uid,
            container: container.clone(),
            stdin: opts.stdin,
            tty,
            stderr: opts.stderr,
        })
    } else if attach {
        Request::Attach(AttachRequest {
            namespace: ns.clone(),
            pod: name.clone(),
            uid,
            container: container.clone(),
        })
    } else {
        Request::Exec(req)
    };
    let session = Session {
        user,
        pod: pod_ref,
        container,
        command: opts.command,
        v5: protocol == PROTOCOLS[0],
        stdout: opts.stdout,
        stderr: opts.stderr,
        node,
        protocol,
        tty: opts.tty,
        stdin: opts.stdin,
        what: if attach { "attach" } else { "exec" },
    };
    // What the node says (no such container there, the command cannot start) comes after the
    // upgrade, on the error channel: a refused handshake would make kubectl fall back to SPDY
    // and print that refusal instead.
    let hub = hub.clone();
    Ok(upgrade.on_upgrade(move |socket| session.run(socket, hub, req)))
}

/// The query's pairs in order (`command` and `ports` repeat).
pub(super) fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

/// What the node is asked.
enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    AttachIo(AttachIoRequest),
}

/// One exec's bridge between the client's WebSocket and the node's stream.
struct Session {
    user: String,
    pod: String,
    container: String,
    command: Vec<String>,
    v5: bool,
    stdout: bool,
    stderr: bool,
    node: String,
    protocol: String,
    tty: bool,
    stdin: bool,
    /// `exec` or `attach`, for the log.
    what: &'static str,
}

/// How the node's side of an exec ended.
enum Outcome {
    /// The command exited.
    Exited(i32),
    /// The node could not run it, or lost it.
    Failed(String),
    /// The link dropped, or the node's stream ended without an outcome.
    Cut(String),
    /// The client went away (its WebSocket closed or failed).
    ClientLeft,
    /// Nothing moved for [`IDLE_TIMEOUT`].
    Idle,
}

/// The error channel's `Status` when the node could not start the command.
fn refusal_status(e: &StreamError) -> Value {
    let (reason, code) = match e {
        StreamError::NotConnected { .. } | StreamError::Link { .. } => ("ServiceUnavailable", 503),
        StreamError::Busy { .. } | StreamError::UserBusy { .. } => ("TooManyRequests", 429),
        StreamError::TooOld { .. } => ("BadRequest", 400),
        StreamError::Refused { kind, .. } => match kind {
            LogRefusal::NotFound => ("NotFound", 404),
            LogRefusal::BadRequest => ("BadRequest", 400),
            LogRefusal::Busy => ("TooManyRequests", 429),
            LogRefusal::Internal => ("InternalError", 500),
        },
    };
    json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": reason, "code": code})
}

/// The error channel's `Status` for an outcome, as kubelet writes it.
fn outcome_status(command: &[String], outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "code": 500,
        }),
        Outcome::Cut(reason) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("the stream from the node was cut: {reason}"),
            "reason": "ServiceUnavailable",
            "code": 503,
        }),
        Outcome::ClientLeft => json!({
            "metadata": {},
            "status": "Failure",
            "message": "the client went away",
            "reason": "Gone",
        }),
        Outcome::Idle => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("the stream was idle for {}s and was closed", IDLE_TIMEOUT.as_secs()),
            "reason": "Timeout",
            "code": 504,
        }),
    }
}

/// How long the hub waits for the client's close after its own.
const CLOSING_HANDSHAKE: Duration = Duration::from_secs(2);

/// A close with status 1000: client-go takes only that as the clean end of the streams (a
/// close without a status is an error to it).
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// A resize message's payload.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Resize {
    width: u16,
    height: u16,
}

impl Session {
    async fn run(self, mut socket: WebSocket, hub: Arc<Hub>, mut req: Request) {
        let (user, pod, container, command, node) = (
            &self.user,
            &self.pod,
            &self.container,
            &self.command,
            &self.node,
        );
        // kubectl sends its terminal's size as soon as it is connected: the command gets it
        // from its start. Whatever else came meanwhile is replayed after.
        let mut early = Vec::new();
        let exec_tty = match &mut req {
            Request::Exec(r) if r.tty => Some(r),
            _ => None,
        };
        if let Some(req) = exec_tty {
            let first_size = async {
                while let Some(Ok(msg)) = socket.recv().await {
                    if let Message::Binary(data) = &msg {
                        if let Some((&RESIZE, json)) = data.split_first() {
                            if let Ok(r) = serde_json::from_slice::<Resize>(json) {
                                return Some(TermSize {
                                    width: r.width,
                                    height: r.height,
                                });
                            }
                        }
                    }
                    let close = matches!(msg, Message::Close(_));
                    early.push(msg);
                    if close || early.len() >= 16 {
                        break;
                    }
                }
                None
            };
            req.size = tokio::time::timeout(FIRST_SIZE_WAIT, first_size)
                .await
                .ok()
                .flatten();
        }
        let opened = match req {
            Request::Exec(req) => hub.open_exec(node, user, req).await,
            Request::Attach(req) => hub.open_attach(node, user, req).await,
            Request::AttachIo(req) => hub.open_attach_io(node, user, req).await,
        };
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                info!(what = self.what, %user, %pod, %container, ?command, %node, error = %e, "exec refused");
                let status = refusal_status(&e);
                let _ = socket
                    .send(framed(ERROR, status.to_string().as_bytes()))
                    .await;
                let _ = socket.send(normal_close()).await;
                return;
            }
        };
        info!(what = self.what, %user, %pod, %container, ?command, %node, tty = self.tty, stdin = self.stdin,
              protocol = %self.protocol, "exec started");
        self.bridge(socket, stream, early).await;
    }

    async fn bridge(self, socket: WebSocket, mut stream: ExecStream, early: Vec<Message>) {
        let started = Instant::now();
        let last = AtomicU64::new(0);
        let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (mut tx, mut rx) = socket.split();
        // kubelet's first message: an empty one on the lowest output channel says "connected".
        let first = if self.stdout {
            STDOUT
        } else if self.stderr {
            STDERR
        } else {
            ERROR
        };
        let _ = tx.send(framed(first, &[])).await;
        let v5 = self.v5;
        let send = &mut stream.send;
        let recv = &mut stream.recv;
        let cut = &mut stream.cut;
        let input = async {
            let mut messages = futures::stream::iter(early.into_iter().map(Ok)).chain(&mut rx);
            while let Some(msg) = messages.next().await {
                let Ok(msg) = msg else { break };
                touch();
                let data = match msg {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    // Text would be the base64 protocols, which are not negotiated.
                    _ => continue,
                };
                let Some((&channel, data)) = data.split_first() else {
                    continue;
                };
                let frames: Vec<ExecInput> = match channel {
                    STDIN => data
                        .chunks(EXEC_CHUNK)
                        .map(|c| ExecInput::Stdin(c.to_vec()))
                        .collect(),
                    RESIZE => match serde_json::from_slice::<Resize>(data) {
                        Ok(r) => vec![ExecInput::Resize(TermSize {
                            width: r.width,
                            height: r.height,
                        })],
                        Err(_) => continue,
                    },
                    CLOSE if v5 && data.first() == Some(&STDIN) => vec![ExecInput::StdinClosed],
                    _ => continue,
                };
                for frame in frames {
                    if wire::frames::write_frame(send, &frame).await.is_err() {
                        // The node's side is gone; the output side says why.
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let output = async {
            loop {
                let event = match wire::frames::read_frame::<ExecEvent>(recv, MAX_EXEC_FRAME).await
                {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        return Outcome::Cut(
                            "the node ended the stream without an exit status".into(),
                        )
                    }
                    Err(e) => return Outcome::Cut(e.to_string()),
                };
                touch();
                let msg = match event {
                    ExecEvent::Stdout(b) => framed(STDOUT, &b),
                    ExecEvent::Stderr(b) => framed(STDERR, &b),
                    ExecEvent::Exited { code } => return Outcome::Exited(code),
                    ExecEvent::Failed { message } => return Outcome::Failed(message),
                };
                if tx.send(msg).await.is_err() {
                    return Outcome::ClientLeft;
                }
            }
        };
        let idle = async {
            loop {
                let quiet = started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= IDLE_TIMEOUT {
                    return;
                }
                tokio::time::sleep(IDLE_TIMEOUT - quiet).await;
            }
        };
        let outcome = tokio::select! {
            outcome = output => outcome,
            cut = cut.wait() => Outcome::Cut(cut),
            () = input => Outcome::ClientLeft,
            () = idle => Outcome::Idle,
        };
        if !matches!(outcome, Outcome::ClientLeft) {
            let status = outcome_status(&self.command, &outcome);
            let _ = tx.send(framed(ERROR, status.to_string().as_bytes())).await;
            let _ = tx.send(normal_close()).await;
            // The closing handshake: read until the client's own close (for at most 2 s). What
            // the client sent meanwhile (a resize, stdin the command never read) must be read
            // before the socket closes: a socket closed with unread data is reset by the
            // kernel, and the reset makes the client's kernel drop the status and close it has
            // not read yet ("connection reset by peer" instead of the exit code).
            let _ = tokio::time::timeout(CLOSING_HANDSHAKE, async {
                while let Some(Ok(msg)) = rx.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        let secs = started.elapsed().as_secs();
        let (user, pod, container, command) =
            (&self.user, &self.pod, &self.container, &self.command);
        match &outcome {
            Outcome::Exited(code) => {
                info!(what = self.what, %user, %pod, %container, ?command, exit_code = code, secs, "exec ended")
            }
            Outcome::Failed(m) | Outcome::Cut(m) => {
                info!(what = self.what, %user, %pod, %container, ?command, error = %m, secs, "exec failed")
            }
            Outcome::ClientLeft => {
                info!(what = self.what, %user, %pod, %container, ?command, secs, "exec client left")
            }
            Outcome::Idle => {
                info!(what = self.what, %user, %pod, %container, ?command, secs, "exec idle, closed")
            }
        }
        // Dropping the stream resets the node's side, which ends the command there if it
        // still runs.
        drop(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_kubectl_exec_queries_in_order() {
        let o = parse_options(&pairs(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi; exit 3"),
            ("container", "main"),
            ("stdin", "true"),
            ("stdout", "true"),
            ("stderr", "true"),
            ("tty", "true"),
        ]))
        .expect("valid");
        assert_eq!(o.command, ["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(o.container.as_deref(), Some("main"));
        assert!(o.stdin && o.stdout && o.tty);
        assert!(!o.stderr, "a terminal has one output");
        let q = query_pairs("command=ls&command=-l%20x&stdout=true").expect("query");
        assert_eq!(q[1], ("command".to_string(), "-l x".to_string()));
    }

    #[test]
    fn refuses_what_cannot_run_with_400() {
        for (q, needle) in [
            (vec![("stdout", "true")], "at least one command"),
            (
                vec![("command", "ls")],
                "at least 1 of stdin, stdout, stderr",
            ),
            (
                vec![("command", "ls"), ("stdout", "yes")],
                "stdout: Invalid value",
            ),
        ] {
            let e = parse_options(&pairs(&q)).expect_err(needle);
            assert_eq!(e.code(), StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn exit_codes_are_statuses_kubectl_understands() {
        let cmd = vec!["sh".to_string()];
        assert_eq!(
            outcome_status(&cmd, &Outcome::Exited(0))["status"],
            "Success"
        );
        let s = outcome_status(&cmd, &Outcome::Exited(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let cut = outcome_status(&cmd, &Outcome::Cut("reset".into()));
        assert!(cut["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cut: reset"));
    }

    #[test]
    fn away_node_names_node_and_edgecore_exec() {
        let e = not_connected("edge-1", None, "default", "hello", "main");
        assert_eq!(e.code(), StatusCode::SERVICE_UNAVAILABLE);
        let m = e.to_string();
        assert!(m.contains("node \"edge-1\" is not connected"), "{m}");
        assert!(
            m.contains("`edgecore exec default/hello -c main -- COMMAND`"),
            "{m}"
        );
    }
}
