//! `cloudcore encryption rewrite`: re-writes every Secret through the API, so that each is
//! stored under the current write key — the step of a key rotation between "the new key is in
//! force" and "the old key may be removed".
//!
//! Through the API and not on the store directly, because the store belongs to the running
//! server (sled holds its files locked) and because every writer goes through the API: admission,
//! resourceVersion checks, watch events and the hub's sync all see the rewrite like any other
//! update. An unchanged update is a write when the value is stale (stored under another key or
//! unencrypted, see [`crate::store::encryption`]), so the count of rewritten Secrets is the
//! count whose resourceVersion moved.
//!
//! The command authenticates with a kubeconfig (`--kubeconfig`, as `cloudcore kubeconfig`
//! writes them: embedded CA, a client certificate or a bearer token), like kubectl.

use anyhow::{anyhow, bail, Context};
use axum::body::Body;
use base64::Engine;
use hyper::http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest response body read (a list of every Secret: up to 1 MiB each).
const MAX_BODY: usize = 1 << 30;
/// Attempts per Secret when it keeps changing under the rewrite.
const ATTEMPTS: usize = 5;

/// What a rewrite did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Secrets listed.
    pub listed: usize,
    /// Secrets whose stored value was re-written (their resourceVersion moved).
    pub rewritten: usize,
    /// Secrets already stored under the current write key (the update was a no-op).
    pub unchanged: usize,
    /// Secrets deleted between the listing and their rewrite.
    pub gone: usize,
    /// Secrets that could not be rewritten, with the server's reason.
    pub failed: Vec<(String, String)>,
}

/// An admin connection to the API, from a kubeconfig.
pub struct ApiClient {
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    bearer: Option<String>,
    conn: Option<hyper::client::conn::http1::SendRequest<Body>>,
}

fn yaml_str<'a>(y: &'a yaml_rust2::Yaml, key: &str) -> Option<&'a str> {
    y[key].as_str()
}

/// A kubeconfig field's bytes: `<name>-data` (base64) or `<name>` (a file path, relative to
/// the kubeconfig's directory).
fn data_or_file(y: &yaml_rust2::Yaml, name: &str, dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(data) = yaml_str(y, &format!("{name}-data")) {
        return Ok(Some(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .with_context(|| format!("{name}-data is not base64"))?,
        ));
    }
    match yaml_str(y, name) {
        Some(file) => {
            let path = dir.join(file);
            Ok(Some(std::fs::read(&path).with_context(|| {
                format!("cannot read {name} {}", path.display())
            })?))
        }
        None => Ok(None),
    }
}

fn named<'a>(list: &'a yaml_rust2::Yaml, name: &str, inner: &str) -> Option<&'a yaml_rust2::Yaml> {
    list.as_vec()?
        .iter()
        .find(|e| yaml_str(e, "name") == Some(name))
        .map(|e| &e[inner])
}

impl ApiClient {
    /// A client for the current context of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .map_err(|e| anyhow!("kubeconfig {} is not YAML: {e}", path.display()))?;
        let doc = docs
            .first()
            .ok_or_else(|| anyhow!("kubeconfig {} is empty", path.display()))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let context_name = yaml_str(doc, "current-context")
            .ok_or_else(|| anyhow!("kubeconfig {} has no current-context", path.display()))?;
        let context = named(&doc["contexts"], context_name, "context")
            .ok_or_else(|| anyhow!("kubeconfig has no context {context_name:?}"))?;
        let cluster_name = yaml_str(context, "cluster").unwrap_or_default();
        let cluster = named(&doc["clusters"], cluster_name, "cluster")
            .ok_or_else(|| anyhow!("kubeconfig has no cluster {cluster_name:?}"))?;
        let user_name = yaml_str(context, "user").unwrap_or_default();
        let user = named(&doc["users"], user_name, "user")
            .ok_or_else(|| anyhow!("kubeconfig has no user {user_name:?}"))?;
        if cluster["insecure-skip-tls-verify"].as_bool() == Some(true) {
            bail!("the kubeconfig's cluster skips TLS verification; the rewrite sends every Secret and refuses that");
        }
        let server =
            yaml_str(cluster, "server").ok_or_else(|| anyhow!("the cluster has no server"))?;
        let authority = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server {server:?} is not an https:// URL"))?
            .trim_end_matches('/');
        let authority = authority.split('/').next().unwrap_or_default();
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once("]:") {
                Some((h, p)) => (h, p),
                None => (v6.trim_end_matches(']'), "443"),
            },
            None => authority.rsplit_once(':').unwrap_or((authority, "443")),
        };
        let host = host.to_string();
        let port: u16 = port
            .parse()
            .with_context(|| format!("bad port in server URL {server:?}"))?;
        let mut roots = rustls::RootCertStore::empty();
        let ca = data_or_file(cluster, "certificate-authority", &dir)?
            .ok_or_else(|| anyhow!("the cluster has no certificate-authority(-data)"))?;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.context("bad CA certificate")?)?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let bearer = yaml_str(user, "token").map(str::to_string);
        let config = match (
            data_or_file(user, "client-certificate", &dir)?,
            data_or_file(user, "client-key", &dir)?,
        ) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .context("bad client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(&key).context("bad client key")?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ if bearer.is_some() => builder.with_no_client_auth(),
            _ => bail!("user {user_name:?} has neither a client certificate nor a token"),
        };
        Ok(Self {
            server_name: ServerName::try_from(host.clone())
                .map_err(|_| anyhow!("bad server host {host:?}"))?,
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            bearer,
            conn: None,
        })
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", self.host, self.port))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake with the API failed")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection closed");
            }
        });
        self.conn = Some(send);
        Ok(())
    }

    /// Sends one request; reconnects once if the kept-alive connection was closed.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        for attempt in 0..2 {
            if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
                self.connect().await?;
            }
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", format!("{}:{}", self.host, self.port))
                .header("accept", "application/json")
                .header("user-agent", "cloudcore-encryption-rewrite");
            if let Some(t) = &self.bearer {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let req = match body {
                Some(b) => req
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(b)?))?,
                None => req.body(Body::empty())?,
            };
            let send = self.conn.as_mut().expect("connected above");
            match send.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY)
                        .await
                        .context("reading the API's answer")?;
                    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    });
                    return Ok((status, value));
                }
                Err(e) if attempt == 0 && (e.is_canceled() || e.is_closed()) => {
                    self.conn = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("the API closed the connection twice")
    }
}

fn message(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string())
}

fn resource_version(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// Waits until the server's `/metrics` shows `key` (a key name, or `identity`) as its write
/// key. A rewrite before the server has reloaded a new key would find every Secret current
/// and rewrite nothing, and removing the old key afterwards would lose them: this check
/// turns that mistake into an error.
pub async fn wait_for_write_key(
    api: &mut ApiClient,
    key: &str,
    deadline: std::time::Duration,
) -> anyhow::Result<()> {
    let series = format!(
        "{}{{key=\"{key}\"}} ",
        crate::store::encryption::WRITE_KEY_METRIC
    );
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let (status, body) = api.request(Method::GET, "/metrics", None).await?;
        if status != StatusCode::OK {
            bail!("GET /metrics failed ({status}): {}", message(&body));
        }
        let text = body.as_str().unwrap_or_default();
        if text
            .lines()
            .any(|l| l.strip_prefix(&series).is_some_and(|v| v.trim() == "1"))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            bail!("the server does not write with key {key:?} after {deadline:?}: is it running with this --encryption-provider-config, and did it log \"new encryption provider config refused\"?");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Re-writes every Secret through `api`. A Secret that changes under the rewrite is read
/// again and retried (its new write went through the current key anyway, but it is checked,
/// not assumed); one that fails is reported and the others go on.
pub async fn rewrite_secrets(api: &mut ApiClient) -> anyhow::Result<Report> {
    let (status, list) = api.request(Method::GET, "/api/v1/secrets", None).await?;
    if status != StatusCode::OK {
        bail!(
            "listing Secrets failed ({status}): {}; a Secret that cannot be decrypted must get its key back (or be deleted) before a rewrite",
            message(&list)
        );
    }
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut report = Report {
        listed: items.len(),
        ..Report::default()
    };
    for mut item in items {
        let ns = item
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
        let what = format!("{ns}/{name}");
        let mut outcome = None;
        for _ in 0..ATTEMPTS {
            if let Some(o) = item.as_object_mut() {
                o.insert("apiVersion".into(), "v1".into());
                o.insert("kind".into(), "Secret".into());
            }
            let sent = resource_version(&item).map(str::to_string);
            let (status, body) = api.request(Method::PUT, &path, Some(&item)).await?;
            match status {
                StatusCode::OK => {
                    outcome = Some(if resource_version(&body) == sent.as_deref() {
                        Ok(false)
                    } else {
                        Ok(true)
                    });
                    break;
                }
                StatusCode::NOT_FOUND => {
                    outcome = Some(Err(None));
                    break;
                }
                StatusCode::CONFLICT => {
                    let (status, fresh) = api.request(Method::GET, &path, None).await?;
                    match status {
                        StatusCode::OK => item = fresh,
                        StatusCode::NOT_FOUND => {
                            outcome = Some(Err(None));
                            break;
                        }
                        _ => {
                            outcome = Some(Err(Some(format!("{status}: {}", message(&fresh)))));
                            break;
                        }
                    }
                }
                _ => {
                    outcome = Some(Err(Some(format!("{status}: {}", message(&body)))));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok(true)) => report.rewritten += 1,
            Some(Ok(false)) => report.unchanged += 1,
            Some(Err(None)) => report.gone += 1,
            Some(Err(Some(reason))) => report.failed.push((what, reason)),
            None => report
                .failed
                .push((what, format!("kept changing during {ATTEMPTS} attempts"))),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeconfig::{render, Credential};

    #[test]
    fn kubeconfigs_of_both_credential_kinds_are_understood() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::load_or_create(dir.path(), &[]).unwrap();
        let (cert_pem, key_pem) = pki
            .issue_user_cert(
                "admin",
                &["system:masters".to_string()],
                std::time::Duration::from_secs(60),
            )
            .unwrap();
        let path = dir.path().join("kubeconfig");
        let cert = Credential::Certificate { cert_pem, key_pem };
        std::fs::write(
            &path,
            render("https://127.0.0.1:6443", pki.ca_pem(), "admin", &cert),
        )
        .unwrap();
        let client = ApiClient::from_kubeconfig(&path).unwrap();
        assert_eq!((client.host.as_str(), client.port), ("127.0.0.1", 6443));
        assert!(client.bearer.is_none());

        let token = Credential::Token("skerry-api.x".into());
        std::fs::write(
            &path,
            render("https://[::1]:7000/", pki.ca_pem(), "admin", &token),
        )
        .unwrap();
        let client = ApiClient::from_kubeconfig(&path).unwrap();
        assert_eq!((client.host.as_str(), client.port), ("::1", 7000));
        assert_eq!(client.bearer.as_deref(), Some("skerry-api.x"));

        let text = render("https://h:1", pki.ca_pem(), "admin", &token).replace(
            "    server:",
            "    insecure-skip-tls-verify: true\n    server:",
        );
        std::fs::write(&path, text).unwrap();
        let err = ApiClient::from_kubeconfig(&path).err().unwrap();
        assert!(err.to_string().contains("skips TLS verification"), "{err}");
        std::fs::write(&path, render("http://h:1", pki.ca_pem(), "admin", &token)).unwrap();
        assert!(ApiClient::from_kubeconfig(&path).is_err());
    }
}
