//! One attempt of a probe: what kubelet's prober does for `exec`, `tcpSocket` and `httpGet`.
//!
//! An attempt ends in an [`Outcome`]: a success, a failure (which counts towards the failure
//! threshold), or unknown: the prober could not tell, for example because the runtime could not
//! exec into a container that exited a moment ago. kubelet throws unknown results away, and so
//! does the probe schedule (`super::probes`).
//!
//! HTTP probes use a deliberately small HTTP/1.1 client on a tokio `TcpStream` (and rustls for
//! `HTTPS`): a probe needs one `GET`, the status line and a few bytes of body for the message,
//! never a connection pool, redirects or decompression. Like kubelet it sends `Connection: close`,
//! a `User-Agent` of its own (`skerry-probe/<version>`, where kubelet sends `kube-probe`), and does
//! not verify certificates over HTTPS: a probe checks that the workload answers, not who it is.
//! Any status from 200 to 399 passes; a redirect is not followed (kubelet follows it only to the
//! same host, where its target would answer the same).

use crate::runtime::{Runtime, Sandbox};
use crate::server_trust::{PolicyVerifier, TrustPolicy};
use protocol::pod::ProbeAction;
use rustls::pki_types::ServerName;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most of a response an HTTP probe reads: the status line, the headers and the start of the
/// body (for a failure's message). A server sending more is not read further.
const MAX_RESPONSE: usize = 4096;
/// Longest excerpt of a command's output or a response body kept in a probe's message.
const EXCERPT_LEN: usize = 256;
/// How much longer than the probe's timeout an exec may take before the runtime is taken as not
/// answering (the runtime itself kills the command at the timeout).
const EXEC_ANSWER_SLACK: Duration = Duration::from_secs(5);

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Passed; the output, if any.
    Success(String),
    /// Failed; why, with an excerpt of the output.
    Failure(String),
    /// The prober could not tell; why. Not counted either way.
    Unknown(String),
}

impl Outcome {
    /// `Some(passed)`, or `None` for an unknown result.
    pub fn passed(&self) -> Option<bool> {
        match self {
            Outcome::Success(_) => Some(true),
            Outcome::Failure(_) => Some(false),
            Outcome::Unknown(_) => None,
        }
    }

    /// The message: output, or why it failed.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Success(m) | Outcome::Failure(m) | Outcome::Unknown(m) => m,
        }
    }

    /// The `result` label of `skerry_edge_probe_results_total`, spelt as kubelet's
    /// `prober_probe_total` does so that dashboards carry over.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "successful",
            Outcome::Failure(_) => "failed",
            Outcome::Unknown(_) => "unknown",
        }
    }
}

/// What a container instance's probes act on.
#[derive(Clone)]
pub(crate) struct Target {
    /// The runtime, for exec probes.
    pub runtime: Arc<dyn Runtime>,
    /// The pod's sandbox: exec probes run in it, and its IP is the default host.
    pub sandbox: Sandbox,
    /// The probed instance.
    pub container_id: String,
    /// The container's literal environment values, for `$(VAR)` in exec commands (kubelet
    /// expands only those: values from references are not known to the prober).
    pub static_env: Vec<(String, String)>,
}

impl Target {
    /// Runs `action` once, giving it at most `timeout`.
    pub async fn attempt(&self, action: &ProbeAction, timeout: Duration) -> Outcome {
        match action {
            ProbeAction::Exec { command } => self.exec(command, timeout).await,
            ProbeAction::TcpSocket { host, port } => match self.host(host) {
                Some(host) => tcp_connect(host, *port, timeout).await,
                None => no_ip(),
            },
            ProbeAction::HttpGet {
                host,
                port,
                path,
                scheme,
                headers,
            } => {
                let Some(host) = self.host(host) else {
                    return no_ip();
                };
                let tls = match scheme.to_ascii_uppercase().as_str() {
                    "" | "HTTP" => false,
                    "HTTPS" => true,
                    other => {
                        return Outcome::Failure(format!(
                            "unsupported scheme {other:?} in an httpGet probe; use HTTP or HTTPS"
                        ))
                    }
                };
                let request = HttpProbe {
                    tls,
                    host,
                    port: *port,
                    path,
                    headers,
                };
                http_get(&request, timeout).await
            }
        }
    }

    /// The probe's host, or the pod IP when it names none.
    fn host<'a>(&'a self, host: &'a str) -> Option<&'a str> {
        let host = if host.is_empty() {
            self.sandbox.ip.as_str()
        } else {
            host
        };
        (!host.is_empty()).then_some(host)
    }

    async fn exec(&self, command: &[String], timeout: Duration) -> Outcome {
        let lookup = |name: &str| {
            self.static_env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let command: Vec<String> = command
            .iter()
            .map(|word| super::env::expand(word, lookup))
            .collect();
        let call = self
            .runtime
            .exec_sync(&self.sandbox, &self.container_id, &command, timeout);
        match tokio::time::timeout(timeout.saturating_add(EXEC_ANSWER_SLACK), call).await {
            // As kubelet: an exec the runtime could not run or finish is a failed probe (a
            // misspelt probe command must not pass silently forever). A verdict about an
            // instance that exited meanwhile is dropped by the machine, which knows it is gone.
            Err(_) => Outcome::Failure(format!(
                "the runtime did not finish exec {command:?} within {}s",
                timeout.saturating_add(EXEC_ANSWER_SLACK).as_secs()
            )),
            Ok(Err(e)) => Outcome::Failure(format!("probe errored: {e}")),
            Ok(Ok(out)) => {
                let mut combined = out.stdout;
                combined.extend_from_slice(&out.stderr);
                let output = excerpt(&combined);
                if out.timed_out {
                    Outcome::Failure(format!(
                        "command {command:?} timed out after {}s",
                        timeout.as_secs_f32()
                    ))
                } else if out.exit_code == 0 {
                    Outcome::Success(output)
                } else if output.is_empty() {
                    Outcome::Failure(format!("command exited with code {}", out.exit_code))
                } else {
                    Outcome::Failure(format!(
                        "command exited with code {}: {output}",
                        out.exit_code
                    ))
                }
            }
        }
    }
}

fn no_ip() -> Outcome {
    Outcome::Unknown("the pod has no IP to probe yet and the probe names no host".into())
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A `tcpSocket` probe: passes if a connection to `host:port` opens within `timeout`.
pub(crate) async fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Outcome::Success(String::new()),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => Outcome::Failure(format!(
            "dial tcp {addr}: no connection within {}s",
            timeout.as_secs_f32()
        )),
    }
}

/// An `httpGet` probe's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpProbe<'a> {
    /// Over TLS (`HTTPS`).
    pub tls: bool,
    /// Host to connect to (a name or an address).
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Path and query.
    pub path: &'a str,
    /// Extra headers; a `Host`, `User-Agent` or `Accept` among them replaces the default.
    pub headers: &'a [(String, String)],
}

impl HttpProbe<'_> {
    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!(
            "{scheme}://{}{}",
            host_port(self.host, self.port),
            request_target(self.path)
        )
    }

    /// The request bytes; `Err` if a header cannot be sent as given.
    fn request(&self) -> Result<Vec<u8>, String> {
        let given = |name: &str| {
            self.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        let mut head = format!("GET {} HTTP/1.1\r\n", request_target(self.path));
        if !given("host") {
            head.push_str(&format!("Host: {}\r\n", host_port(self.host, self.port)));
        }
        if !given("user-agent") {
            head.push_str(&format!(
                "User-Agent: skerry-probe/{}\r\n",
                env!("CARGO_PKG_VERSION")
            ));
        }
        if !given("accept") {
            head.push_str("Accept: */*\r\n");
        }
        for (name, value) in self.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(format!("header name {name:?} is not a valid HTTP token"));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "the value of header {name:?} contains a line break or NUL"
                ));
            }
            // One connection per probe: it is always closed.
            if name.eq_ignore_ascii_case("connection") {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        Ok(head.into_bytes())
    }
}

/// The path as a request target: starting with `/`, with bytes that cannot appear in a request
/// line percent-encoded.
fn request_target(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for b in path.bytes() {
        if b <= b' ' || b >= 0x7f {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The part of a response an HTTP probe looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    /// The start of the body, as far as it was read with the headers.
    body: Vec<u8>,
}

/// An `httpGet` probe: passes on a status from 200 to 399 received within `timeout`.
pub(crate) async fn http_get(probe: &HttpProbe<'_>, timeout: Duration) -> Outcome {
    match fetch(probe, timeout).await {
        Err(e) => Outcome::Failure(e),
        Ok(response) => {
            let body = excerpt(&response.body);
            if (200..400).contains(&response.status) {
                Outcome::Success(body)
            } else if body.is_empty() {
                Outcome::Failure(format!(
                    "HTTP probe failed with statuscode: {}",
                    response.status
                ))
            } else {
                Outcome::Failure(format!(
                    "HTTP probe failed with statuscode: {}: {body}",
                    response.status
                ))
            }
        }
    }
}

/// An `httpGet` lifecycle hook: whether any HTTP response came within `timeout` (kubelet does
/// not look at a hook's status code: the request itself is the hook); `Err` says why not.
pub(crate) async fn http_hook(probe: &HttpProbe<'_>, timeout: Duration) -> Result<u16, String> {
    fetch(probe, timeout).await.map(|r| r.status)
}

/// Sends the GET and reads the response head within `timeout`; `Err` in Go's words.
async fn fetch(probe: &HttpProbe<'_>, timeout: Duration) -> Result<Response, String> {
    let url = probe.url();
    let request = probe
        .request()
        .map_err(|e| format!("cannot send GET {url:?}: {e}"))?;
    let exchange = async {
        let tcp = TcpStream::connect((probe.host, probe.port))
            .await
            .map_err(|e| format!("dial tcp {}: {e}", host_port(probe.host, probe.port)))?;
        let _ = tcp.set_nodelay(true);
        if probe.tls {
            let connector = tls_connector()?;
            let name = ServerName::try_from(probe.host.to_string())
                .map_err(|e| format!("{:?} is not a TLS server name: {e}", probe.host))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            exchange(stream, &request).await
        } else {
            exchange(tcp, &request).await
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(format!(
            "Get {url:?}: no response within {}s",
            timeout.as_secs_f32()
        )),
        Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Sends `request` and reads the response head (skipping interim `1xx` responses).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<Response, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            let status = status_code(&buf)?;
            // 100 Continue, 103 Early Hints: the real response follows.
            if (100..200).contains(&status) && status != 101 {
                buf.drain(..end);
                continue;
            }
            return Ok(Response {
                status,
                body: buf[end..].to_vec(),
            });
        }
        let room = MAX_RESPONSE.saturating_sub(buf.len());
        let read = if room == 0 {
            Ok(0)
        } else {
            stream.read(&mut chunk[..room.min(1024)]).await
        };
        match read {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // The end of the response (or as much as is read): a complete status line is
            // enough to decide.
            Ok(_) => {
                return status_code(&buf).map(|status| Response {
                    status,
                    body: Vec::new(),
                })
            }
            Err(e) => {
                return status_code(&buf)
                    .map(|status| Response {
                        status,
                        body: Vec::new(),
                    })
                    .map_err(|_| format!("reading the response: {e}"))
            }
        }
    }
}

/// Where the head of a response ends (after its empty line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The status code of the status line at the start of `buf`.
fn status_code(buf: &[u8]) -> Result<u16, String> {
    let line_end = buf
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| "the server closed the connection before a status line".to_string())?;
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut words = line.trim_end().split(' ');
    let version = words.next().unwrap_or_default();
    let code = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!(
            "malformed HTTP status line {:?}",
            excerpt(line.as_bytes())
        ));
    }
    code.parse()
        .map_err(|_| format!("malformed HTTP status line {:?}", excerpt(line.as_bytes())))
}

/// A short, printable excerpt of `bytes` for a message.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(EXCERPT_LEN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// The TLS connector of HTTPS probes, built once.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot configure TLS for probes: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PolicyVerifier::new(
                    TrustPolicy::AnyCertificate,
                    provider,
                )))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map(tokio_rustls::TlsConnector::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        ContainerConfig, ContainerInfo, ContainerRunState, ExecOutput, ExistingPod, RuntimeError,
    };
    use async_trait::async_trait;
    use protocol::pod::{EdgeContainer, EdgePod};
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    const SECOND: Duration = Duration::from_secs(1);

    /// Reads a request head from `stream`.
    async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A server for one connection: reads the request, sends `response` (or nothing, holding
    /// the connection, if `None`) and returns the request.
    async fn serve_once(response: Option<&'static [u8]>) -> (u16, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let request = read_head(&mut stream).await;
            match response {
                Some(bytes) => {
                    let _ = stream.write_all(bytes).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            request
        });
        (port, task)
    }

    fn get(port: u16, path: &str) -> HttpProbe<'_> {
        HttpProbe {
            tls: false,
            host: "127.0.0.1",
            port,
            path,
            headers: &[],
        }
    }

    async fn status_of(response: &'static [u8]) -> Outcome {
        let (port, server) = serve_once(Some(response)).await;
        let outcome = http_get(&get(port, "/"), SECOND * 5).await;
        server.await.expect("server");
        outcome
    }

    #[tokio::test]
    async fn http_statuses_from_200_to_399_pass() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await,
            Outcome::Success("ok".into())
        );
        // A redirect passes without being followed.
        assert_eq!(
            status_of(b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\n\r\n").await,
            Outcome::Success(String::new())
        );
        // Interim responses are skipped.
        assert_eq!(
            status_of(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await,
            Outcome::Success(String::new())
        );
        assert_eq!(
            status_of(b"HTTP/1.0 500 Internal Server Error\r\n\r\noops\n").await,
            Outcome::Failure("HTTP probe failed with statuscode: 500: oops".into())
        );
        assert_eq!(
            status_of(b"HTTP/1.1 404 Not Found\r\n\r\n").await,
            Outcome::Failure("HTTP probe failed with statuscode: 404".into())
        );
        // A status line without the rest of the head still decides.
        assert!(matches!(
            status_of(b"HTTP/1.1 503 Unavailable\r\n").await,
            Outcome::Failure(m) if m.contains("statuscode: 503")
        ));
        match status_of(b"SSH-2.0-OpenSSH\r\n\r\n").await {
            Outcome::Failure(m) => assert!(m.contains("malformed HTTP status line"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_request_carries_path_headers_and_our_user_agent() {
        let (port, server) = serve_once(Some(b"HTTP/1.1 200 OK\r\n\r\n")).await;
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        let probe = HttpProbe {
            headers: &headers,
            ..get(port, "healthz?full=1")
        };
        assert!(matches!(
            http_get(&probe, SECOND * 5).await,
            Outcome::Success(_)
        ));
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"),
            "{request}"
        );
        for line in [
            format!("Host: 127.0.0.1:{port}"),
            format!("User-Agent: skerry-probe/{}", env!("CARGO_PKG_VERSION")),
            "Accept: */*".into(),
            "X-Probe: yes".into(),
            "Connection: close".into(),
        ] {
            assert!(
                request.contains(&format!("{line}\r\n")),
                "{line}: {request}"
            );
        }

        // Given headers replace the defaults.
        let (port, server) = serve_once(Some(b"HTTP/1.1 200 OK\r\n\r\n")).await;
        let headers = vec![
            ("user-agent".to_string(), "mine".to_string()),
            ("Host".to_string(), "app.local".to_string()),
        ];
        let probe = HttpProbe {
            headers: &headers,
            ..get(port, "/")
        };
        http_get(&probe, SECOND * 5).await;
        let request = server.await.expect("server");
        assert!(!request.contains("skerry-probe"), "{request}");
        assert!(request.contains("Host: app.local\r\n"), "{request}");
        assert!(!request.contains("Host: 127.0.0.1"), "{request}");
    }

    #[test]
    fn request_targets_and_headers_cannot_break_the_request() {
        assert_eq!(request_target(""), "/");
        assert_eq!(request_target("/a b\r\n"), "/a%20b%0D%0A");
        assert_eq!(request_target("/ü"), "/%C3%BC");
        let bad = |name: &str, value: &str| {
            let headers = vec![(name.to_string(), value.to_string())];
            HttpProbe {
                headers: &headers,
                ..get(80, "/")
            }
            .request()
            .is_err()
        };
        assert!(bad("X", "a\r\nInjected: 1"));
        assert!(bad("X Y", "a"));
        assert!(bad("", "a"));
        assert!(!bad("X-Ok", "a b"));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_at_the_timeout() {
        let (port, server) = serve_once(None).await;
        let started = Instant::now();
        let outcome = http_get(&get(port, "/"), Duration::from_millis(300)).await;
        assert!(started.elapsed() < SECOND * 5);
        match outcome {
            Outcome::Failure(m) => assert!(m.contains("no response within 0.3s"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn refused_connections_fail_and_open_ports_pass() {
        let port = closed_port().await;
        match http_get(&get(port, "/"), SECOND).await {
            Outcome::Failure(m) => {
                assert!(m.contains(&format!("dial tcp 127.0.0.1:{port}")), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match tcp_connect("127.0.0.1", port, SECOND).await {
            Outcome::Failure(m) => assert!(m.starts_with("dial tcp 127.0.0.1:"), "{m}"),
            other => panic!("{other:?}"),
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(
            tcp_connect("127.0.0.1", port, SECOND).await,
            Outcome::Success(String::new())
        );
        assert_eq!(host_port("::1", 80), "[::1]:80");
    }

    #[tokio::test]
    async fn https_probes_accept_any_certificate() {
        // A self-signed certificate for another name than the one probed.
        let cert = rcgen::generate_simple_self_signed(vec!["app.invalid".to_string()])
            .expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let request = read_head(&mut tls).await;
            tls.write_all(b"HTTP/1.1 200 OK\r\n\r\nsecure")
                .await
                .expect("write");
            tls.shutdown().await.expect("shutdown");
            request
        });
        let probe = HttpProbe {
            tls: true,
            ..get(port, "/tls")
        };
        assert_eq!(
            http_get(&probe, SECOND * 5).await,
            Outcome::Success("secure".into())
        );
        assert!(server
            .await
            .expect("server")
            .starts_with("GET /tls HTTP/1.1"));
    }

    /// A runtime that only execs, with a scripted answer, recording the commands.
    struct ExecOnly {
        answer: fn() -> Result<ExecOutput, RuntimeError>,
        commands: Mutex<Vec<Vec<String>>>,
    }

    fn unused() -> RuntimeError {
        RuntimeError::Internal {
            op: "test".into(),
            message: "not used by exec probes".into(),
        }
    }

    #[async_trait]
    impl Runtime for ExecOnly {
        fn check_runnable(&self, _pod: &EdgePod) -> Result<(), String> {
            Ok(())
        }

        fn version(&self) -> String {
            "exec-only://0".into()
        }
        async fn status(&self) -> Result<crate::runtime::RuntimeStatus, RuntimeError> {
            Ok(crate::runtime::RuntimeStatus {
                runtime_ready: Ok(()),
                network_ready: Ok(()),
            })
        }
        async fn run_sandbox(&self, _: &EdgePod) -> Result<Sandbox, RuntimeError> {
            Err(unused())
        }
        async fn sandbox_ready(&self, _: &Sandbox) -> Result<bool, RuntimeError> {
            Err(unused())
        }
        async fn start_container(
            &self,
            _: &Sandbox,
            _: &EdgePod,
            _: &EdgeContainer,
            _: &ContainerConfig,
        ) -> Result<ContainerInfo, RuntimeError> {
            Err(unused())
        }
        async fn container_state(
            &self,
            _: &Sandbox,
            _: &str,
        ) -> Result<ContainerRunState, RuntimeError> {
            Err(unused())
        }
        async fn stop_container(
            &self,
            _: &Sandbox,
            _: &str,
            _: Duration,
        ) -> Result<(), RuntimeError> {
            Err(unused())
        }
        async fn remove_container(&self, _: &Sandbox, _: &str) -> Result<(), RuntimeError> {
            Err(unused())
        }
        async fn remove_sandbox(&self, _: &Sandbox, _: Duration) -> Result<(), RuntimeError> {
            Err(unused())
        }
        async fn exec_sync(
            &self,
            _: &Sandbox,
            container_id: &str,
            command: &[String],
            _: Duration,
        ) -> Result<ExecOutput, RuntimeError> {
            assert_eq!(container_id, "u1/a/0");
            self.commands.lock().await.push(command.to_vec());
            (self.answer)()
        }
        async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
            Err(unused())
        }
        async fn read_log(
            &self,
            _: &Sandbox,
            _: &str,
            _: Option<usize>,
        ) -> Result<String, RuntimeError> {
            Err(unused())
        }
    }

    async fn exec_with(answer: fn() -> Result<ExecOutput, RuntimeError>) -> (Outcome, Vec<String>) {
        let runtime = Arc::new(ExecOnly {
            answer,
            commands: Mutex::new(Vec::new()),
        });
        let target = Target {
            runtime: runtime.clone(),
            sandbox: Sandbox {
                id: "u1".into(),
                pod_uid: "u1".into(),
                ip: "127.0.0.1".into(),
            },
            container_id: "u1/a/0".into(),
            static_env: vec![("FILE".into(), "/tmp/ready".into())],
        };
        let action = ProbeAction::Exec {
            command: vec![
                "test".into(),
                "-f".into(),
                "$(FILE)".into(),
                "$(OTHER)".into(),
            ],
        };
        let outcome = target.attempt(&action, SECOND).await;
        let command = runtime.commands.lock().await.pop().expect("exec ran");
        (outcome, command)
    }

    #[tokio::test]
    async fn exec_probes_pass_on_exit_zero_only() {
        let (outcome, command) = exec_with(|| {
            Ok(ExecOutput {
                stdout: b"fine\n".to_vec(),
                ..ExecOutput::default()
            })
        })
        .await;
        assert_eq!(outcome, Outcome::Success("fine".into()));
        // Literal variables are expanded, others kept as written.
        assert_eq!(command, ["test", "-f", "/tmp/ready", "$(OTHER)"]);

        let (outcome, _) = exec_with(|| {
            Ok(ExecOutput {
                exit_code: 1,
                stdout: b"out ".to_vec(),
                stderr: b"and err".to_vec(),
                timed_out: false,
            })
        })
        .await;
        assert_eq!(
            outcome,
            Outcome::Failure("command exited with code 1: out and err".into())
        );
        let (outcome, _) = exec_with(|| {
            Ok(ExecOutput {
                exit_code: 137,
                timed_out: true,
                ..ExecOutput::default()
            })
        })
        .await;
        assert!(
            matches!(&outcome, Outcome::Failure(m) if m.contains("timed out after 1s")),
            "{outcome:?}"
        );
        // The runtime could not exec (no such program in the image): a failure, as in kubelet.
        let (outcome, _) = exec_with(|| Err(unused())).await;
        assert!(
            matches!(&outcome, Outcome::Failure(m) if m.starts_with("probe errored")),
            "{outcome:?}"
        );
    }

    #[test]
    fn excerpts_are_short_and_trimmed() {
        assert_eq!(excerpt(b"  hi\n"), "hi");
        let long = "x".repeat(1000);
        let e = excerpt(long.as_bytes());
        assert_eq!(e.len(), EXCERPT_LEN + 3);
        assert!(e.ends_with("..."));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }
}
