//! The API over an encrypting store: a rewrite re-encrypts unchanged Secrets, and a Secret
//! whose key is gone is a 500 Status naming it, for GET and for a list, never a panic.

use super::*;
use crate::store::encryption::{Encryption, EncryptionConfig, KeySpec};

async fn encrypted() -> (Router, Arc<SledStore>, Arc<Encryption>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EncryptionConfig::initial(KeySpec::new("key1", vec![5; 32]).unwrap());
    let encryption = Arc::new(Encryption::new(&cfg));
    let store = Arc::new(
        SledStore::open_with(dir.path(), crate::projection::shard, encryption.clone()).unwrap(),
    );
    namespaces::ensure_builtin(store.as_ref()).await.unwrap();
    let state = ApiState::new(store.clone(), Arc::new(String::new));
    (router(state), store, encryption, dir)
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn raw_value(store: &SledStore, name: &str) -> Vec<u8> {
    let raw = store.raw_for_tests(&ObjectKey::new("secrets", "default", name));
    assert!(raw.len() > 8, "secrets default/{name} is not stored");
    raw
}

#[tokio::test]
async fn an_unchanged_put_re_encrypts_a_stale_secret_and_only_then() {
    let (app, store, encryption, _dir) = encrypted().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}});
    let (code, created) = send(
        &app,
        Method::POST,
        "/api/v1/namespaces/default/secrets",
        Some(&secret),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert!(raw_value(&store, "db")[8..].starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    let uri = "/api/v1/namespaces/default/secrets/db";
    // Under the write key already: a PUT of the same object is a no-op.
    let (code, same) = send(&app, Method::PUT, uri, Some(&created)).await;
    assert_eq!(code, StatusCode::OK, "{same}");
    assert_eq!(
        same["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let rotated = EncryptionConfig::initial(KeySpec::new("key1", vec![5; 32]).unwrap())
        .with_write_key(KeySpec::new("key2", vec![6; 32]).unwrap())
        .unwrap();
    encryption.reload(&rotated);
    let (code, rewritten) = send(&app, Method::PUT, uri, Some(&created)).await;
    assert_eq!(code, StatusCode::OK, "{rewritten}");
    assert_ne!(
        rewritten["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"],
        "a stale Secret is written even when nothing changed"
    );
    assert!(raw_value(&store, "db")[8..].starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    let (_, again) = send(&app, Method::PUT, uri, Some(&rewritten)).await;
    assert_eq!(
        again["metadata"]["resourceVersion"],
        rewritten["metadata"]["resourceVersion"]
    );

    // key2 removed: GET and list answer 500 naming the Secret and the key; nothing panics and
    // other resources still answer.
    encryption.reload(&EncryptionConfig::initial(
        KeySpec::new("key1", vec![5; 32]).unwrap(),
    ));
    let (code, status) = send(&app, Method::GET, uri, None).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{status}");
    assert_eq!(status["kind"], "Status");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("secrets default/db") && message.contains("key2"),
        "{message}"
    );
    assert!(!message.contains("aHVudGVy"), "{message}");
    let (code, status) = send(&app, Method::GET, "/api/v1/secrets", None).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("secrets default/db"));
    let (code, _) = send(&app, Method::GET, "/api/v1/namespaces", None).await;
    assert_eq!(code, StatusCode::OK);
}
