//! Bad input gets kube-apiserver's answer (issue #10, "Small but real"): unparsable or too new
//! `resourceVersion`s, bad `continue` tokens and field selectors, bodies of the wrong media
//! type or kind, and error messages that must not echo huge values back.

use super::*;

/// Sends a request and returns the status, the `Retry-After` header and the body.
async fn send(
    h: &Harness,
    method: Method,
    uri: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let resp = h
        .app
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, retry_after, bytes.to_vec())
}

/// Asserts `v` is a complete Kubernetes failure Status with `code` and `reason`.
fn assert_failure(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.25"}]}})
}

#[tokio::test]
async fn unparsable_resource_versions_continue_tokens_and_field_selectors_are_400s() {
    let h = harness().await;
    let pods = "/api/v1/namespaces/default/pods";
    for uri in [
        format!("{pods}?resourceVersion=abc"),
        format!("{pods}/x?resourceVersion=abc"),
        "/api/v1/pods?resourceVersion=-1".to_string(),
    ] {
        let (code, v) = h.call(Method::GET, &uri, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_failure(&v, 400, "BadRequest");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid resource version: resourceVersion: Invalid value: "),
            "{v}"
        );
    }

    let (code, v) = h
        .call(
            Method::GET,
            &format!("{pods}?continue=not%2Ba%2Btoken"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_failure(&v, 400, "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid continue token: continue key is not valid: "),
        "{v}"
    );
    // A token in Kubernetes' own format: this server never issued it and cannot continue it.
    use base64::Engine as _;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": 5, "start": "default/a\u{0}"}).to_string());
    let (code, v) = h
        .call(
            Method::GET,
            &format!("{pods}?limit=1&continue={token}"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::GONE, "{v}");
    assert_failure(&v, 410, "Expired");

    // `===` leaves an unescaped `=` in the value; the others have no usable operator or field.
    for selector in [
        "metadata.name%3D%3D%3Dx",
        "metadata.name",
        "%3Dx",
        "a%3Dx%5C%21",
    ] {
        let (code, v) = h
            .call(
                Method::GET,
                &format!("{pods}?fieldSelector={selector}"),
                None,
            )
            .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{selector}: {v}");
        assert_failure(&v, 400, "BadRequest");
    }
    let (code, v) = h
        .call(
            Method::GET,
            &format!("{pods}?fieldSelector=metadata.name%3D%3Dx"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "`==` stays an operator: {v}");
}

#[tokio::test]
async fn reads_from_a_future_resource_version_wait_then_answer_504_too_large() {
    let h = harness().await;
    let pods = "/api/v1/namespaces/default/pods";
    let future = h.history.head() + 1000;
    let (list_uri, watch_uri) = (
        format!("{pods}?resourceVersion={future}"),
        format!("{pods}?watch=1&resourceVersion={future}"),
    );
    let list = send(&h, Method::GET, &list_uri, Vec::new(), None);
    let watch = send(&h, Method::GET, &watch_uri, Vec::new(), None);
    let started = tokio::time::Instant::now();
    let ((code, retry_after, body), (watch_code, _, watch_body)) = tokio::join!(list, watch);
    assert!(
        started.elapsed() >= handlers::FRESHNESS_WAIT,
        "the server waits for the version before giving up"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_failure(&v, 504, "Timeout");
    assert_eq!(
        v["message"],
        format!(
            "Timeout: Too large resource version: {future}, current: {}",
            h.store.revision().max(h.history.head())
        )
    );
    assert_eq!(v["details"]["retryAfterSeconds"], 1);
    assert_eq!(
        v["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));

    // A watch reports it as its one ERROR event, instead of silently starting at `future` and
    // skipping every event until then.
    assert_eq!(watch_code, StatusCode::OK);
    let lines: Vec<Value> = watch_body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "ERROR");
    assert_failure(&lines[0]["object"], 504, "Timeout");
}

#[tokio::test]
async fn a_resource_version_that_arrives_while_the_read_waits_is_served() {
    let h = harness().await;
    let pods = "/api/v1/namespaces/default/pods";
    let next = h.store.revision().max(h.history.head()) + 1;
    let uri = format!("/api/v1/pods?resourceVersion={next}");
    let list = h.call(Method::GET, &uri, None);
    let create = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        h.call(Method::POST, pods, Some(pod("late"))).await
    };
    let ((code, v), (created, _)) = tokio::join!(list, create);
    assert_eq!(created, StatusCode::CREATED);
    assert_eq!(code, StatusCode::OK, "{v}");
    let rv: u64 = v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv >= next, "listed at {rv}, asked for at least {next}");
}

#[tokio::test]
async fn bodies_of_another_media_type_or_kind_are_refused() {
    let h = harness().await;
    let pods = "/api/v1/namespaces/default/pods";
    let body = serde_json::to_vec(&pod("plain")).unwrap();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/yaml",
    ] {
        let (code, _, out) = send(&h, Method::POST, pods, body.clone(), Some(ct)).await;
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {v}");
        assert_failure(&v, 415, "UnsupportedMediaType");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("accepted media types include: application/json"),
            "{v}"
        );
    }
    let (code, _) = h.call(Method::GET, &format!("{pods}/plain"), None).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "a refused body creates nothing"
    );
    // The same for an update.
    h.create_pod("kept", json!({}), json!({})).await;
    let put = serde_json::to_vec(&pod("kept")).unwrap();
    let (code, _, _) = send(
        &h,
        Method::PUT,
        &format!("{pods}/kept"),
        put,
        Some("text/plain"),
    )
    .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // JSON with parameters, in any case, is JSON.
    let (code, _, out) = send(
        &h,
        Method::POST,
        pods,
        body,
        Some("Application/JSON; charset=utf-8"),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A kind or version other than the URL's resource is a 400.
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let (code, v) = h.call(Method::POST, pods, Some(cm.clone())).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert_failure(&v, 400, "BadRequest");
    cm["kind"] = json!("Pod");
    cm["apiVersion"] = json!("apps/v1");
    let (code, v) = h.call(Method::POST, pods, Some(cm)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["message"].as_str().unwrap().contains("apps/v1"), "{v}");
    // Without them, the body takes the URL's, as kube-apiserver defaults them for built-in
    // kinds (only unstructured custom resources require `kind`).
    let mut bare = pod("bare");
    let m = bare.as_object_mut().unwrap();
    m.remove("kind");
    m.remove("apiVersion");
    let (code, v) = h.call(Method::POST, pods, Some(bare)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(
        (&v["kind"], &v["apiVersion"]),
        (&json!("Pod"), &json!("v1"))
    );
}

#[tokio::test]
async fn errors_about_a_huge_value_stay_small_and_still_name_the_field() {
    let h = harness().await;
    let huge = "x".repeat(1 << 20);
    let mut p = pod("big");
    p["metadata"]["labels"] = json!({"big": huge});
    let (code, _, out) = send(
        &h,
        Method::POST,
        "/api/v1/namespaces/default/pods",
        serde_json::to_vec(&p).unwrap(),
        Some("application/json"),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(out.len() < 4096, "the error is {} bytes", out.len());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_failure(&v, 422, "Invalid");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("metadata.labels[big]: Invalid value: \"xxx"),
        "{message}"
    );
    assert!(message.contains("truncated"), "{message}");
    assert!(
        message.contains("must be no more than 63 characters"),
        "{message}"
    );
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.labels[big]");

    // A huge key is cut in the field path too.
    let mut p = pod("bigkey");
    p["metadata"]["labels"] = json!({ huge.clone(): "v" });
    let (code, _, out) = send(
        &h,
        Method::POST,
        "/api/v1/namespaces/default/pods",
        serde_json::to_vec(&p).unwrap(),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(out.len() < 4096, "the error is {} bytes", out.len());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.labels");
}

#[tokio::test]
async fn openapi_v2_is_served_as_json_and_as_the_protobuf_kubectl_asks_for() {
    let h = harness().await;
    let (code, v) = h.call(Method::GET, "/openapi/v2", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["swagger"], "2.0");
    assert_eq!(
        v["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"],
        json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
    );
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/openapi/v2")
                .header("accept", openapi_v2::PROTOBUF_MEDIA_TYPE)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        openapi_v2::PROTOBUF_CONTENT_TYPE
    );
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    // Field 1 (swagger) first: "2.0".
    assert_eq!(&body[..5], b"\x0a\x032.0");
}
