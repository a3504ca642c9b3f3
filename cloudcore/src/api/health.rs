//! `/livez`, `/healthz` and `/readyz`: the process's real state, in kube-apiserver's format.
//!
//! A constant "ok" would be a lie the moment the ingest or the scheduler stopped. The answers
//! come from the [`Supervisor`] that runs every subsystem (one that keeps failing is
//! `[-]ingest failed: ...`; the embedded MQTT broker is one of them), from extra checks a server adds,
//! and for `/readyz` also from a read of the store within a deadline: a cloudcore whose store
//! does not answer cannot serve. `?verbose` lists every check; a failure answers 500 with the
//! failing lines, as kube-apiserver does.

use super::ApiState;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use wire::supervisor::{Check, Supervisor};

/// How long the readiness check waits for the store.
const STORE_DEADLINE: Duration = Duration::from_secs(2);

/// What the health endpoints consult.
#[derive(Clone, Default)]
pub struct Health {
    /// The supervisor of the process's subsystems.
    pub supervisor: Option<Supervisor>,
    /// Further checks (each called per request; cheap).
    pub extra: Vec<Arc<dyn Fn() -> Check + Send + Sync>>,
}

impl Health {
    fn render(&self, verbose: bool, more: &[Check]) -> (bool, String) {
        let mut extra: Vec<Check> = self.extra.iter().map(|f| f()).collect();
        extra.extend_from_slice(more);
        match &self.supervisor {
            Some(s) => s.render(verbose, &extra),
            None => Supervisor::new(Default::default()).render(verbose, &extra),
        }
    }
}

fn verbose(query: &Option<String>) -> bool {
    query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    })
}

fn answer((ok, text): (bool, String)) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `GET /livez` and `/healthz`.
pub async fn livez(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    answer(state.health.render(verbose(&query), &[]))
}

/// `GET /readyz`: liveness plus a store read within [`STORE_DEADLINE`].
pub async fn readyz(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let key = crate::store::ObjectKey::new("namespaces", "", "default");
    let store = match tokio::time::timeout(STORE_DEADLINE, state.store.get(&key)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("store read failed: {e}")),
        Err(_) => Some(format!(
            "store did not answer within {}s",
            STORE_DEADLINE.as_secs()
        )),
    };
    let checks = [Check {
        name: "store".into(),
        failure: store,
    }];
    answer(state.health.render(verbose(&query), &checks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(app: &axum::Router, path: &str) -> (u16, String) {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let code = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn health_endpoints_report_failing_subsystems_and_checks_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::SledStore::open(dir.path(), crate::projection::shard).unwrap());
        let supervisor = Supervisor::new(wire::supervisor::Policy {
            exit_after: None,
            ..Default::default()
        });
        supervisor.spawn("ingest", || async { panic!("broker gone") });
        supervisor.spawn("scheduler", std::future::pending);
        let broken = Arc::new(|| Check {
            name: "mqtt-broker".into(),
            failure: None,
        });
        let health = Health {
            supervisor: Some(supervisor),
            extra: vec![broken],
        };
        let app =
            super::super::router(ApiState::new(store, Arc::new(String::new)).with_health(health));
        assert_eq!(get(&app, "/readyz").await, (200, "ok".to_string()));
        let (code, text) = get(&app, "/readyz?verbose").await;
        assert_eq!(code, 200);
        for line in [
            "[+]ingest ok",
            "[+]scheduler ok",
            "[+]mqtt-broker ok",
            "[+]store ok",
        ] {
            assert!(text.contains(line), "{text}");
        }
        // Three quick failures in a row (1 s, 2 s back-off between them): the ingest fails.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for path in ["/readyz", "/livez", "/healthz"] {
            let (code, text) = get(&app, path).await;
            assert_eq!(code, 500, "{path}: {text}");
            assert!(
                text.contains("[-]ingest failed: panicked: broker gone"),
                "{path}: {text}"
            );
            assert!(text.contains("[+]scheduler ok"), "{text}");
        }
    }
}
