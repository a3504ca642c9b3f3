//! Who may use the API: authentication, then authorization, as a layer in front of every
//! handler, so that both can grow (RBAC, OIDC) without touching the resource code.
//!
//! Authentication follows kube-apiserver: a client certificate issued by cloudcore's CA (the
//! user is its CN, the groups its O values; the TLS layer verified it and put it in the
//! request's extensions as [`PeerCert`]), or an `Authorization: Bearer` token made by
//! `cloudcore kubeconfig --token`. A request that brings neither, or a token nobody issued, gets
//! `401 Unauthorized`. `/healthz`, `/livez`, `/readyz` and `/version` stay public, as
//! Kubernetes' `system:public-info-viewer` role makes them.
//!
//! Authorization is an [`Authorizer`]; the one in use, [`GroupAuthorizer`], admits members of
//! `system:masters` (what `cloudcore kubeconfig --user admin` issues) and refuses everyone else
//! with `403 Forbidden`: node certificates (group `skerry:nodes`) are good for the hub only.

use super::error::json_response;
use crate::pki::{Pki, UserInfo};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use std::sync::Arc;

/// The verified client certificate's user of the connection a request came on, if the client
/// presented one. Inserted by the HTTPS server for every request.
#[derive(Debug, Clone, Default)]
pub struct PeerCert(pub Option<UserInfo>);

/// Decides whether an authenticated user may make a request.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` to allow; `Err(reason)` to refuse with 403.
    fn authorize(&self, user: &UserInfo, method: &str, path: &str) -> Result<(), String>;
}

/// Allows members of any of the given groups, everything; refuses everyone else.
#[derive(Debug, Clone)]
pub struct GroupAuthorizer {
    /// Groups whose members may do anything.
    pub groups: Vec<String>,
}

impl Default for GroupAuthorizer {
    fn default() -> Self {
        Self {
            groups: vec!["system:masters".into()],
        }
    }
}

/// The group that may read `/metrics` and nothing else, so that Prometheus does not need
/// cluster-admin credentials (`cloudcore kubeconfig --user prometheus --group
/// system:monitoring`), as Kubernetes' `system:monitoring` role.
pub const MONITORING_GROUP: &str = "system:monitoring";

impl Authorizer for GroupAuthorizer {
    fn authorize(&self, user: &UserInfo, method: &str, path: &str) -> Result<(), String> {
        if user.groups.iter().any(|g| self.groups.contains(g)) {
            return Ok(());
        }
        if method == "GET"
            && path == "/metrics"
            && user.groups.iter().any(|g| g == MONITORING_GROUP)
        {
            return Ok(());
        }
        Err(format!(
            "user {:?} (groups {:?}) cannot {method} {path}: only members of {:?} may use the API \
             (fine-grained RBAC comes later); get an admin kubeconfig with `cloudcore kubeconfig --user admin`",
            user.name, user.groups, self.groups
        ))
    }
}

/// Authentication and authorization state of the layer.
#[derive(Clone)]
pub struct Auth {
    pki: Arc<Pki>,
    authorizer: Arc<dyn Authorizer>,
}

impl Auth {
    /// Authenticates against `pki`'s CA and tokens, authorizes with `authorizer`.
    pub fn new(pki: Arc<Pki>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self { pki, authorizer }
    }

    fn user_of(&self, req: &Request) -> Option<UserInfo> {
        if let Some(PeerCert(Some(user))) = req.extensions().get::<PeerCert>() {
            return Some(user.clone());
        }
        let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        self.pki.api_token_user(token.trim())
    }

    /// The request's user, unless its credential was revoked since it was issued.
    fn authenticate(&self, req: &Request) -> Result<UserInfo, &'static str> {
        let user = self.user_of(req).ok_or("unauthenticated")?;
        if self.pki.credential_revoked(&user) {
            return Err("revoked");
        }
        Ok(user)
    }
}

/// Paths anyone may read, as in Kubernetes.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

/// The middleware: 401 without a valid identity, 403 when the authorizer refuses; otherwise
/// the request continues with the [`UserInfo`] in its extensions.
pub async fn guard(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let user = match auth.authenticate(&req) {
        Ok(user) => user,
        Err(reason) => {
            metrics::counter!("skerry_api_auth_failures_total", "reason" => reason).increment(1);
            let message = if reason == "revoked" {
                "Unauthorized: this credential was revoked (`cloudcore credential revoke`); ask \
                 an admin for a new kubeconfig"
            } else {
                "Unauthorized: present a client certificate issued by cloudcore's CA or a bearer \
                 token (`cloudcore kubeconfig --user admin` writes a kubeconfig with one)"
            };
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        }
    };
    if let Err(reason) = auth
        .authorizer
        .authorize(&user, req.method().as_str(), &path)
    {
        metrics::counter!("skerry_api_auth_failures_total", "reason" => "forbidden").increment(1);
        tracing::info!(user = %user.name, method = %req.method(), %path, "request forbidden");
        return status(StatusCode::FORBIDDEN, "Forbidden", &reason);
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    fn app(pki: Arc<Pki>) -> Router {
        let auth = Auth::new(pki, Arc::new(GroupAuthorizer::default()));
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/api/v1/pods", get(|| async { "pods" }))
            .layer(axum::middleware::from_fn_with_state(auth, guard))
    }

    async fn call(app: &Router, req: Request) -> (u16, String) {
        let resp = app.clone().oneshot(req).await.expect("response");
        let code = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn get_req(path: &str, token: Option<&str>, cert: Option<UserInfo>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = b.body(Body::empty()).expect("request");
        req.extensions_mut().insert(PeerCert(cert));
        req
    }

    #[tokio::test]
    async fn anonymous_and_unknown_tokens_get_401_admins_pass_nodes_get_403() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Arc::new(Pki::load_or_create(dir.path(), &[]).expect("pki"));
        let token = pki
            .create_api_token("admin", &["system:masters".into()], HOUR)
            .expect("token");
        let viewer = pki.create_api_token("viewer", &[], HOUR).expect("token");
        let app = app(pki.clone());

        assert_eq!(call(&app, get_req("/healthz", None, None)).await.0, 200);
        let (code, body) = call(&app, get_req("/api/v1/pods", None, None)).await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
        let forged = "skerry-api.000000000000000000000000000000000000000000000000";
        assert_eq!(
            call(&app, get_req("/api/v1/pods", Some(forged), None))
                .await
                .0,
            401
        );
        assert_eq!(
            call(&app, get_req("/api/v1/pods", Some(&token), None)).await,
            (200, "pods".into())
        );
        let (code, body) = call(&app, get_req("/api/v1/pods", Some(&viewer), None)).await;
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("\"reason\":\"Forbidden\""), "{body}");

        let node = UserInfo {
            name: "edge-1".into(),
            groups: vec![crate::pki::NODE_GROUP.into()],
            issued_at_unix: 0,
        };
        assert_eq!(
            call(&app, get_req("/api/v1/pods", None, Some(node)))
                .await
                .0,
            403
        );
        let admin = UserInfo {
            name: "admin".into(),
            groups: vec!["system:masters".into()],
            issued_at_unix: 0,
        };
        assert_eq!(
            call(&app, get_req("/api/v1/pods", None, Some(admin)))
                .await
                .0,
            200
        );
    }

    #[test]
    fn user_certificates_carry_name_and_groups_and_never_the_node_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(dir.path(), &[]).expect("pki");
        let (cert, _key) = pki
            .issue_user_cert(
                "admin",
                &["system:masters".into()],
                std::time::Duration::from_secs(3600),
            )
            .expect("cert");
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        let user = crate::pki::user_from_cert(&der).expect("user");
        assert_eq!(user.name, "admin");
        assert_eq!(user.groups, vec!["system:masters".to_string()]);
        assert!(pki
            .issue_user_cert(
                "sneaky",
                &[crate::pki::NODE_GROUP.into()],
                std::time::Duration::from_secs(60)
            )
            .is_err());
    }
}
