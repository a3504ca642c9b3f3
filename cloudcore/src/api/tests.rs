//! In-process tests of the whole router over a real `SledStore`, driven with `oneshot`.

use super::*;
use crate::store::{ObjectKey, SledStore, Store};
use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::json;
use serde_json::Value;
use tower::ServiceExt;

mod bad_input;
mod encryption;
mod endpoints;
mod ingress;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

struct Harness {
    app: Router,
    state: ApiState,
    store: Arc<SledStore>,
    history: Arc<history::History>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with_history(history::DEFAULT_CAPACITY).await
}

/// A router over a fresh store with the built-in namespaces, the namespace controller, and a
/// watch history of `events`.
async fn harness_with_history(events: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), crate::projection::shard).unwrap());
    namespaces::ensure_builtin(store.as_ref()).await.unwrap();
    let state = ApiState::with_watch_history(
        store.clone(),
        Arc::new(|| "skerry_up 1\n".to_string()),
        events,
    );
    tokio::spawn(crate::controllers::runner::run(
        Arc::new(crate::controllers::namespace::NamespaceController::new(
            crate::api::client::Client::new(state.clone()),
        )),
        store.subscribe(),
        crate::controllers::runner::Options::resync(std::time::Duration::from_secs(1)),
    ));
    Harness {
        history: state.history.clone(),
        app: router(state.clone()),
        state,
        store,
        _dir: dir,
    }
}

impl Harness {
    async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(b.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, uri, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let (status, out) = self.raw(method, uri, bytes, headers).await;
        let v = serde_json::from_slice(&out)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out).into_owned()));
        (status, v)
    }

    async fn create_pod(&self, name: &str, extra_spec: Value, labels: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "app", "image": "nginx:1.25"}]});
        merge(&mut spec, extra_spec);
        let (code, v) = self
            .call(Method::POST, "/api/v1/namespaces/default/pods",
                Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})))
            .await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        v
    }

    async fn put_node(&self, name: &str, ready: &str) {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": new_uid(), "creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": {"conditions": [{"type": "Ready", "status": ready}], "nodeInfo": {"kubeletVersion": "v1.33.0-skerry"}}});
        self.store
            .create(&ObjectKey::new("nodes", "", name), node)
            .await
            .unwrap();
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(e)) = (target.as_object_mut(), extra) {
        t.extend(e);
    }
}

fn assert_status(v: &Value, code: u16, reason: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
}

#[tokio::test]
async fn pod_lifecycle_create_get_list_update_delete() {
    let h = harness().await;
    let created = h.create_pod("web", json!({}), json!({"app": "web"})).await;
    assert_eq!(created["kind"], "Pod");
    assert_eq!(created["apiVersion"], "v1");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Revisions 1 to 4 created the built-in namespaces.
    assert_eq!(created["metadata"]["resourceVersion"], "5");
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    assert_eq!(
        created["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(
        created["status"],
        json!({"phase": "Pending", "qosClass": "BestEffort"})
    );

    let (code, got) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods/web", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    let (code, list) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], "5");
    assert_eq!(list["items"][0]["kind"], "Pod");
    let (_, all) = h.call(Method::GET, "/api/v1/pods", None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    let (_, other) = h
        .call(Method::GET, "/api/v1/namespaces/other/pods", None)
        .await;
    assert_eq!(other["items"], json!([]));

    // Update: image change allowed; uid/creationTimestamp/status kept whatever the body says.
    let mut new = got.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:1.26");
    new["metadata"]["labels"]["tier"] = json!("front");
    new["metadata"]["uid"] = json!("");
    new["metadata"]["creationTimestamp"] = json!("2000-01-01T00:00:00Z");
    new["status"] = json!({"phase": "Running"});
    let (code, updated) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/web",
            Some(new.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["metadata"]["resourceVersion"], "6");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(
        updated["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    assert_eq!(updated["metadata"]["labels"]["tier"], "front");
    assert_eq!(updated["spec"]["containers"][0]["image"], "nginx:1.26");
    assert_eq!(updated["status"]["phase"], "Pending");

    // A stale resourceVersion is a conflict.
    let (code, v) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/web",
            Some(new),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&v, 409, "Conflict");
    assert_eq!(v["message"], "Operation cannot be fulfilled on pods \"web\": the object has been modified; please apply your changes to the latest version and try again");

    // Spec changes other than images are forbidden.
    let mut bad = updated.clone();
    bad["spec"]["restartPolicy"] = json!("Never");
    let (code, v) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/web",
            Some(bad),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["message"].as_str().unwrap().starts_with(
            "Pod \"web\" is invalid: spec: Forbidden: pod updates may not change fields other than"
        ),
        "{v}"
    );

    // An unbound pod is deleted at once, and the answer is the pod.
    let (code, v) = h
        .call(Method::DELETE, "/api/v1/namespaces/default/pods/web", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["metadata"]["name"], "web");
    let (code, v) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods/web", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
    assert_eq!(v["message"], "pods \"web\" not found");
    assert_eq!(v["details"], json!({"name": "web", "kind": "pods"}));
}

#[tokio::test]
async fn error_statuses() {
    let h = harness().await;
    h.create_pod("a", json!({}), json!({})).await;
    let (code, v) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&v, 409, "AlreadyExists");
    assert_eq!(v["message"], "pods \"a\" already exists");

    let (code, v) = h
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            b"{not json".to_vec(),
            &[],
        )
        .await;
    let v: Value = serde_json::from_slice(&v).unwrap();
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_status(&v, 400, "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("request body is not valid JSON: "),
        "{v}"
    );

    let (code, v) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "x"}]}]}})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().unwrap().contains(
            "spec.containers[0].ports[0].containerPort: invalid type: string \"x\", expected i32"
        ),
        "{v}"
    );
    assert_eq!(
        v["details"]["causes"][0]["field"],
        "spec.containers[0].ports[0].containerPort"
    );

    let (code, v) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]}})))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_status(&v, 422, "Invalid");
    assert_eq!(v["details"]["name"], "b");
    assert_eq!(v["details"]["kind"], "Pod");
    let causes: Vec<(&str, &str)> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["field"].as_str().unwrap(), c["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        causes,
        [
            ("spec.containers[0].image", "FieldValueRequired"),
            ("spec.containers[1].name", "FieldValueDuplicate"),
            (
                "spec.containers[1].ports[0].containerPort",
                "FieldValueInvalid"
            ),
        ]
    );
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("Pod \"b\" is invalid: [spec.containers[0].image: Required value, "));

    let (code, v) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "c", "namespace": "other"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!({"apiVersion": "apps/v1", "kind": "Deployment"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!([1])),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!({"spec": {"containers": [{"name": "c", "image": "i"}]}})),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");

    for path in [
        "/nope",
        "/api/v1/widgets",
        "/api/v2/pods",
        "/apis/policy/v1",
        // Served (see `pod_exec`, `pod_portforward`), but the pod does not exist.
        "/api/v1/namespaces/default/pods/no-such-pod/exec",
        "/api/v1/namespaces/default/pods/no-such-pod/portforward",
        // Served (see `pod_log`), but the pod does not exist.
        "/api/v1/namespaces/default/pods/no-such-pod/log",
        "/api/v1/pods/a",
        "/openapi/v3/apis/policy/v1",
    ] {
        let (code, v) = h.call(Method::GET, path, None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_status(&v, 404, "NotFound");
    }
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/nodes",
            Some(json!({"metadata": {"name": "n"}})),
        )
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_status(&v, 405, "MethodNotAllowed");
    let (code, _) = h.call(Method::POST, "/api/v1/pods", Some(json!({}))).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    // deletecollection: namespaced kinds only within a namespace (as Kubernetes routes it),
    // and never for namespaces.
    for uri in ["/api/v1/pods", "/api/v1/namespaces"] {
        let (code, _) = h.call(Method::DELETE, uri, None).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{uri}");
    }
    let (code, v) = h.call(Method::POST, "/healthz", None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert_status(&v, 405, "MethodNotAllowed");

    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let (code, v) = h
        .raw(Method::POST, "/api/v1/namespaces/default/pods", big, &[])
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(serde_json::from_slice::<Value>(&v).unwrap()["code"], 413);

    let (code, v) = h
        .call(Method::GET, "/api/v1/pods?labelSelector=a+in+(x", None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("expected: ',' or ')'"),
        "{v}"
    );
    let (code, v) = h
        .call(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("field label not supported: spec.bogus"),
        "{v}"
    );

    let (code, v) = h.call(Method::PUT, "/api/v1/namespaces/default/pods/zzz",
        Some(json!({"metadata": {"name": "zzz"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    let (code, v) = h.call(Method::PUT, "/api/v1/namespaces/default/pods/a",
        Some(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn graceful_delete_of_bound_pods() {
    let h = harness().await;
    h.create_pod("bound", json!({"nodeName": "edge-1"}), json!({}))
        .await;
    let (code, v) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
    // Still there, terminating; the shard log saw the update (the edge will stop it).
    let (code, got) = h
        .call_with(
            Method::GET,
            "/api/v1/namespaces/default/pods/bound",
            None,
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["rows"][0]["cells"][2], "Terminating");
    // A shorter grace period shortens it (query parameter), then DeleteOptions grace 0 force-deletes.
    let (_, v) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=5",
            None,
        )
        .await;
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 5);
    let (code, _) = h.call(Method::DELETE, "/api/v1/namespaces/default/pods/bound",
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}}))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (code, v) = h.call(Method::DELETE, "/api/v1/namespaces/default/pods/bound",
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "propagationPolicy": "Background"}))).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(h
        .store
        .get(&ObjectKey::new("pods", "default", "bound"))
        .await
        .unwrap()
        .is_none());
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = h
        .call(
            Method::GET,
            "/api/v1/pods?watch=1&resourceVersion=abc",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, v) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/x",
            Some(json!({"gracePeriodSeconds": "soon"})),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn status_subresource() {
    let h = harness().await;
    let pod = h
        .create_pod("p", json!({"nodeName": "edge-1"}), json!({}))
        .await;
    let mut body = pod.clone();
    body["status"] = json!({"phase": "Running", "podIP": "10.1.0.4"});
    body["spec"]["containers"][0]["image"] = json!("ignored:1");
    let (code, v) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/p/status",
            Some(body),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["phase"], "Running");
    assert_eq!(v["spec"]["containers"][0]["image"], "nginx:1.25");
    let (code, v) = h
        .call(
            Method::GET,
            "/api/v1/namespaces/default/pods/p/status",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["status"]["podIP"], "10.1.0.4");
    let mut bad = v.clone();
    bad["status"]["phase"] = json!("Dancing");
    let (code, _) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/p/status",
            Some(bad),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn tables_for_kubectl() {
    let h = harness().await;
    h.create_pod("web", json!({"nodeName": "edge-1"}), json!({}))
        .await;
    let (code, t) = h
        .call_with(
            Method::GET,
            "/api/v1/namespaces/default/pods?limit=500",
            None,
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
    );
    assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[0], "web");
    assert_eq!(cells[1], "0/1");
    assert_eq!(cells[2], "Pending");
    assert_eq!(cells[3], "0");
    assert_eq!(cells[6], "edge-1");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
    let (_, t) = h
        .call_with(
            Method::GET,
            "/api/v1/pods?includeObject=Object",
            None,
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(t["rows"][0]["object"]["kind"], "Pod");

    h.put_node("edge-1", "True").await;
    h.put_node("edge-2", "False").await;
    let (_, t) = h
        .call_with(Method::GET, "/api/v1/nodes", None, &[("accept", TABLE)])
        .await;
    let rows: Vec<(String, String, String)> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["cells"][0].as_str().unwrap().into(),
                r["cells"][1].as_str().unwrap().into(),
                r["cells"][4].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("edge-1".into(), "Ready".into(), "v1.33.0-skerry".into()),
            ("edge-2".into(), "NotReady".into(), "v1.33.0-skerry".into())
        ]
    );
    assert_eq!(t["rows"][0]["cells"][2], "<none>");
}

#[tokio::test]
async fn selectors_filter_lists() {
    let h = harness().await;
    h.create_pod(
        "a",
        json!({"nodeName": "n1"}),
        json!({"app": "web", "tier": "front"}),
    )
    .await;
    h.create_pod("b", json!({"nodeName": "n2"}), json!({"app": "web"}))
        .await;
    h.create_pod("c", json!({}), json!({"app": "db"})).await;
    let names = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (q, want) in [
        ("labelSelector=app%3Dweb", vec!["a", "b"]),
        ("labelSelector=app%3D%3Dweb,tier", vec!["a"]),
        ("labelSelector=app!%3Dweb", vec!["c"]),
        ("labelSelector=app%20in%20(db,web),!tier", vec!["b", "c"]),
        ("labelSelector=tier%20notin%20(front)", vec!["b", "c"]),
        ("fieldSelector=spec.nodeName%3Dn1", vec!["a"]),
        ("fieldSelector=spec.nodeName%3D", vec!["c"]),
        (
            "fieldSelector=spec.nodeName!%3Dn1,status.phase%3DPending",
            vec!["b", "c"],
        ),
        (
            "fieldSelector=metadata.name%3D%3Db&labelSelector=app",
            vec!["b"],
        ),
        ("fieldSelector=metadata.namespace%3Dother", vec![]),
    ] {
        let (code, v) = h
            .call(Method::GET, &format!("/api/v1/pods?{q}"), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{q}: {v}");
        assert_eq!(names(v), want, "{q}");
    }
}

#[tokio::test]
async fn nodes_are_edited_not_created() {
    let h = harness().await;
    h.put_node("edge-1", "True").await;
    let (code, n) = h.call(Method::GET, "/api/v1/nodes/edge-1", None).await;
    assert_eq!(code, StatusCode::OK);
    let mut edited = n.clone();
    edited["metadata"]["labels"] = json!({"site": "north"});
    edited["status"] = json!({});
    let (code, v) = h
        .call(Method::PUT, "/api/v1/nodes/edge-1", Some(edited))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["labels"]["site"], "north");
    assert_eq!(
        v["status"]["conditions"][0]["status"], "True",
        "status kept on the main resource"
    );
    assert!(v["metadata"].get("namespace").is_none());
    let mut st = v.clone();
    st["status"]["conditions"][0]["status"] = json!("False");
    let (code, v) = h
        .call(Method::PUT, "/api/v1/nodes/edge-1/status", Some(st))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["conditions"][0]["status"], "False");
    // kubectl label uses a JSON merge patch.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/nodes/edge-1",
            Some(json!({"metadata": {"labels": {"site": null, "role": "edge"}}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["labels"], json!({"role": "edge"}));
    // kubectl cordon: a strategic merge patch without lists.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/nodes/edge-1",
            Some(json!({"spec": {"unschedulable": true}})),
            &[("content-type", "application/strategic-merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["unschedulable"], true);
    // Taints have no merge key: the list is replaced.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/nodes/edge-1",
            Some(json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})),
            &[("content-type", "application/strategic-merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["taints"][0]["key"], "k");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/nodes/edge-1",
            Some(json!([{"op": "remove", "path": "/spec/taints"}])),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v["spec"].get("taints").is_none(), "{v}");
    let (code, _) = h
        .call_with(
            Method::PATCH,
            "/api/v1/nodes/edge-1",
            Some(json!({})),
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (_, list) = h
        .call(Method::GET, "/api/v1/nodes?labelSelector=role%3Dedge", None)
        .await;
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (code, v) = h.call(Method::DELETE, "/api/v1/nodes/edge-1", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["status"], "Success");
    assert_eq!(v["details"]["name"], "edge-1");
    let (code, v) = h.call(Method::GET, "/api/v1/nodes/edge-1", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(v["message"], "nodes \"edge-1\" not found");
}

#[tokio::test]
async fn generate_name_and_dry_run() {
    let h = harness().await;
    let (code, v) = h.call(Method::POST, "/api/v1/namespaces/default/pods",
        Some(json!({"metadata": {"generateName": "job-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let name = v["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("job-") && name.len() == 9, "{name}");
    let (code, _) = h.call(Method::POST, "/api/v1/namespaces/default/pods?dryRun=All",
        Some(json!({"metadata": {"name": "dry"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))).await;
    assert_eq!(code, StatusCode::CREATED);
    assert!(h
        .store
        .get(&ObjectKey::new("pods", "default", "dry"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn discovery_and_plain_endpoints() {
    let h = harness().await;
    let (code, v) = h
        .call_with(Method::GET, "/api", None, &[("host", "cloud.example:6443")])
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["kind"], "APIVersions");
    assert_eq!(v["versions"], json!(["v1"]));
    assert_eq!(
        v["serverAddressByClientCIDRs"],
        json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": "cloud.example:6443"}])
    );
    let (_, v) = h.call(Method::GET, "/api/v1", None).await;
    assert_eq!(v["kind"], "APIResourceList");
    assert_eq!(v["groupVersion"], "v1");
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/status"));
    let (_, v) = h.call(Method::GET, "/apis", None).await;
    assert_eq!(v["kind"], "APIGroupList");
    assert_eq!(v["groups"][0]["name"], "apps");
    let (_, v) = h.call(Method::GET, "/version", None).await;
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("33"))
    );
    for p in ["/healthz", "/readyz"] {
        let (code, body) = h.raw(Method::GET, p, vec![], &[]).await;
        assert_eq!((code, body.as_slice()), (StatusCode::OK, b"ok".as_slice()));
    }
    let (code, body) = h.raw(Method::GET, "/metrics", vec![], &[]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, b"skerry_up 1\n");
}

#[tokio::test]
async fn watch_streams_events() {
    let h = harness().await;
    h.create_pod("before", json!({}), json!({"app": "web"}))
        .await;
    let app = h.app.clone();
    let watcher = tokio::spawn(async move {
        let req = Request::get(
            "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=2&labelSelector=app%3Dweb",
        )
        .body(Body::empty())
        .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.create_pod("after", json!({}), json!({"app": "web"}))
        .await;
    h.create_pod("other", json!({}), json!({"app": "db"})).await;
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/before",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let body = watcher.await.unwrap();
    let events: Vec<(String, String)> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l).unwrap();
            (
                v["type"].as_str().unwrap().to_string(),
                v["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ADDED", "before"),
        ("ADDED", "after"),
        ("DELETED", "before"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(events, want);

    // An absurd timeout is no timeout (and no panic); the stream is dropped unread.
    let req = Request::get("/api/v1/pods?watch=1&timeoutSeconds=18446744073709551615")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    // From the current resourceVersion: no initial events, then a MODIFIED for a known object.
    let rv = h.store.revision();
    let app = h.app.clone();
    let watcher = tokio::spawn(async move {
        let req = Request::get(format!(
            "/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion={rv}"
        ))
        .header("accept", TABLE)
        .body(Body::empty())
        .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, after) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods/after", None)
        .await;
    let mut after = after;
    after["spec"]["containers"][0]["image"] = json!("nginx:2");
    let (code, _) = h
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/pods/after",
            Some(after),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let body = watcher.await.unwrap();
    let lines: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "MODIFIED");
    assert_eq!(lines[0]["object"]["kind"], "Table");
    assert_eq!(lines[0]["object"]["rows"][0]["cells"][0], "after");
}

/// Manual check with a real kubectl: serves the API over plain HTTP on 127.0.0.1 (port from
/// `SKERRY_API_PORT`, default 18080) for `SKERRY_SERVE_SECS` seconds (default 300), e.g.
/// `cargo test -p cloudcore --lib api::tests::serve_for_kubectl -- --ignored` and then
/// `kubectl --server http://127.0.0.1:18080 get pods -A`.
#[tokio::test]
#[ignore = "manual: serves the API for kubectl"]
async fn serve_for_kubectl() {
    let h = harness().await;
    h.put_node("edge-1", "True").await;
    let port: u16 = std::env::var("SKERRY_API_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(18080);
    let secs: u64 = std::env::var("SKERRY_SERVE_SECS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(300);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let serve = axum::serve(listener, h.app.clone());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(secs), serve).await;
}

#[tokio::test]
async fn odd_input_gets_a_status_never_a_panic_or_500() {
    let h = harness().await;
    h.create_pod("p", json!({"nodeName": "n1"}), json!({}))
        .await;
    h.put_node("n1", "True").await;
    let deep = format!("{}{}", "{\"a\":".repeat(300), "}".repeat(300));
    let bodies: Vec<String> = [
        "", "null", "1", "\"s\"", "[]", "{}", "{\"metadata\": 1}", "{\"metadata\": {\"name\": 1}}",
        "{\"metadata\": {\"name\": \"p\", \"namespace\": 5}}", "{\"spec\": null}", "{\"spec\": {\"containers\": null}}",
        "{\"spec\": {\"containers\": [null]}}", "{\"metadata\": {\"labels\": {\"a\": 1}}}", "{\"apiVersion\": 5}",
        "{\"metadata\": {\"generateName\": \"X\"}, \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"b\"}]}}",
        "{\"metadata\": {\"name\": \"p\", \"resourceVersion\": \"-1\"}}",
        "{\"metadata\": {\"name\": \"p\", \"uid\": \"other\"}, \"spec\": {\"containers\": [{\"name\": \"app\", \"image\": \"b\"}]}}",
        "{\"metadata\": {\"name\": \"q\"}, \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"b\", \"resources\": {\"limits\": {\"cpu\": \"1e999999999999\", \"memory\": \"-1\"}}}]}}",
        "{\"metadata\": {\"name\": \"q\", \"creationTimestamp\": \"yesterday\"}}",
        "{\"gracePeriodSeconds\": 9223372036854775807, \"preconditions\": {\"uid\": \"x\"}}",
        "\u{0}\u{1}",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([deep])
    .collect();
    let targets = [
        (Method::POST, "/api/v1/namespaces/default/pods"),
        (Method::PUT, "/api/v1/namespaces/default/pods/p"),
        (Method::PUT, "/api/v1/namespaces/default/pods/p/status"),
        (Method::PATCH, "/api/v1/namespaces/default/pods/p"),
        (Method::PUT, "/api/v1/nodes/n1"),
        (Method::PUT, "/api/v1/nodes/n1/status"),
        (Method::PATCH, "/api/v1/nodes/n1/status"),
        (Method::DELETE, "/api/v1/namespaces/default/pods/zz"),
    ];
    for (method, uri) in &targets {
        for body in &bodies {
            let (code, out) = h
                .raw(
                    method.clone(),
                    uri,
                    body.as_bytes().to_vec(),
                    &[("content-type", "application/merge-patch+json")],
                )
                .await;
            assert!(!code.is_server_error(), "{method} {uri} {body:?}: {code}");
            if !code.is_success() {
                let v: Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{method} {uri} {body:?}: {e}"));
                assert_eq!(v["kind"], "Status", "{method} {uri} {body:?}");
                assert_eq!(v["code"], code.as_u16());
            }
        }
    }
    for path in [
        "/api/v1/namespaces",
        "/api/v1/namespaces/default",
        "/api/v1/namespaces/default/pods/p/status/x",
        "/api//v1/pods",
        "/api/v1/watch",
        "/api/v1/watch/namespaces/default/pods/p?timeoutSeconds=0",
        "/apis/x",
        "/apis/x/y/z",
        "/api/v1/pods?labelSelector=%ff",
        "/api/v1/pods?labelSelector=a%20in%20()",
        "/api/v1/nodes/n1/status?watch=1",
    ] {
        let (code, out) = h.raw(Method::GET, path, vec![], &[]).await;
        assert!(!code.is_server_error(), "{path}: {code}");
        if !code.is_success() {
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["kind"], "Status", "{path}");
        }
    }
}

#[tokio::test]
async fn config_maps_and_secrets_through_the_api() {
    let h = harness().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, cm) = h
        .call(
            Method::POST,
            cms,
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"mode": "edge"}, "binaryData": {"blob": "AAE="}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{cm}");
    let (code, table) = h
        .call_with(Method::GET, cms, None, &[("accept", TABLE)])
        .await;
    assert_eq!(code, StatusCode::OK);
    let headers: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(headers, ["Name", "Data", "Age"]);
    assert_eq!(
        table["rows"][0]["cells"].as_array().unwrap()[..2],
        [json!("settings"), json!(2)]
    );

    // Invalid keys and duplicates are 422s naming each field.
    let (code, v) = h
        .call(
            Method::POST,
            cms,
            Some(
                json!({"metadata": {"name": "Bad_Name"}, "data": {"a/b": "x", "dup": "1"},
                "binaryData": {"dup": "AAE="}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_status(&v, 422, "Invalid");
    let causes: Vec<&str> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["metadata.name", "data[a/b]", "binaryData[dup]"]);

    // Secrets: stringData lands in data (base64), is not stored, and the type defaults.
    let secrets = "/api/v1/namespaces/default/secrets";
    let (code, s) = h
        .call(
            Method::POST,
            secrets,
            Some(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "stringData": {"password": "hunter2"}, "immutable": true}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{s}");
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["data"], json!({"password": "aHVudGVyMg=="}));
    let stored = h
        .store
        .get(&ObjectKey::new("secrets", "default", "db"))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.value.get("stringData").is_none());
    let (_, table) = h
        .call_with(Method::GET, secrets, None, &[("accept", TABLE)])
        .await;
    assert_eq!(
        table["rows"][0]["cells"].as_array().unwrap()[..3],
        [json!("db"), json!("Opaque"), json!(1)]
    );
    // Immutable: data may not change, even through a merge patch of stringData.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/secrets/db",
            Some(json!({"stringData": {"password": "changed"}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "data");
    assert!(!v.to_string().contains("changed"), "{v}");
    // Labels may change; the type may not.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/secrets/db",
            Some(json!({"metadata": {"labels": {"a": "b"}}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/secrets/db",
            Some(json!({"type": "example.com/custom"})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["field"] == "type"
                && c["message"] == "Invalid value: \"example.com/custom\": field is immutable"),
        "{v}"
    );
    // Deleting answers with a success Status, as Kubernetes does for these kinds.
    let (code, v) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/settings",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["status"], "Success");
}

/// kubectl's typed clients (`kubectl create configmap|secret|deployment|...`) send protobuf
/// bodies.
#[tokio::test]
async fn protobuf_bodies_from_typed_clients() {
    fn field(n: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    let h = harness().await;
    let meta = field(1, b"from-kubectl");
    let entry = [field(1, b"mode"), field(2, b"edge")].concat();
    let object = [field(1, &meta), field(2, &entry), vec![4 << 3, 1]].concat();
    let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
    let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &object)].concat();
    let headers = [("content-type", "application/vnd.kubernetes.protobuf")];
    let (code, out) = h
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            body.clone(),
            &headers,
        )
        .await;
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"], json!({"mode": "edge"}));
    assert_eq!(v["immutable"], true);
    assert_eq!(v["metadata"]["name"], "from-kubectl");
    // A client that prefers protobuf (client-go's typed clients) gets it, errors included.
    let pb_accept = [("accept", "application/vnd.kubernetes.protobuf, */*")];
    let (code, out) = h
        .raw(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/from-kubectl",
            Vec::new(),
            &pb_accept,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let v = crate::api::protobuf::decode(&out, "v1", "ConfigMap").unwrap();
    assert_eq!(v["data"], json!({"mode": "edge"}));
    let (code, out) = h
        .raw(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/missing",
            Vec::new(),
            &pb_accept,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let v = crate::api::protobuf::decode(&out, "v1", "Status").unwrap();
    assert_status(&v, 404, "NotFound");
    let (code, out) = h
        .raw(
            Method::GET,
            "/api/v1/namespaces/default/configmaps",
            Vec::new(),
            &pb_accept,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let v = crate::api::protobuf::decode(&out, "v1", "ConfigMapList").unwrap();
    assert_eq!(v["items"][0]["metadata"]["name"], "from-kubectl");
    // A body of another kind is a 400 with a Status, as Kubernetes answers.
    let (code, out) = h
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            body,
            &headers,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_status(&v, 400, "BadRequest");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("expected a Pod, got a ConfigMap"),
        "{v}"
    );
}

#[tokio::test]
async fn json_patch_applies_atomically_and_names_the_failing_operation() {
    let h = harness().await;
    h.create_pod("p", json!({}), json!({"app": "web"})).await;
    let uri = "/api/v1/namespaces/default/pods/p";
    let jp = [("content-type", "application/json-patch+json")];
    let (code, v) = h
        .call_with(
            Method::PATCH,
            uri,
            Some(json!([
                {"op": "add", "path": "/metadata/labels/tier", "value": "fe"},
                {"op": "test", "path": "/metadata/labels/app", "value": "db"},
            ])),
            &jp,
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(
        v["message"],
        r#"JSON patch operation 1 (test) on path "/metadata/labels/app" failed: test failed: the value is "web", not "db""#
    );
    let (_, pod) = h.call(Method::GET, uri, None).await;
    assert!(
        pod["metadata"]["labels"].get("tier").is_none(),
        "nothing applied"
    );
    let (code, v) = h
        .call_with(
            Method::PATCH,
            uri,
            Some(json!([{"op": "jump", "path": "/a"}])),
            &jp,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            uri,
            Some(
                json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:2"}]),
            ),
            &jp,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["containers"][0]["image"], "nginx:2");
}

#[tokio::test]
async fn strategic_merge_patch_merges_containers_by_name() {
    let h = harness().await;
    h.create_pod("p", json!({"containers": [{"name": "app", "image": "nginx:1.25"}, {"name": "side", "image": "envoy:1"}]}), json!({})).await;
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/pods/p",
            Some(json!({"spec": {"containers": [{"name": "side", "image": "envoy:2"}]}})),
            &[("content-type", "application/strategic-merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["containers"][0]["image"], "nginx:1.25");
    assert_eq!(v["spec"]["containers"][1]["image"], "envoy:2");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/pods/p",
            Some(json!({"spec": {"containers": [{"image": "x"}]}})),
            &[("content-type", "application/strategic-merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_reports_conflicts() {
    let h = harness().await;
    let uri = "/api/v1/namespaces/default/configmaps/cfg";
    let ssa = [("content-type", "application/apply-patch+yaml")];
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": v}});
    let (code, v) = h.call_with(Method::PATCH, uri, Some(cm("1")), &ssa).await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fieldManager is required: {v}"
    );
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{uri}?fieldManager=alice"),
            Some(cm("1")),
            &ssa,
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "alice");
    assert_eq!(
        v["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {"f:k": {}}})
    );
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{uri}?fieldManager=alice"),
            Some(cm("2")),
            &ssa,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["k"], "2");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{uri}?fieldManager=bob"),
            Some(cm("3")),
            &ssa,
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["reason"], "Conflict");
    assert_eq!(
        v["message"],
        r#"Apply failed with 1 conflict: conflict with "alice": .data.k"#
    );
    assert_eq!(v["details"]["causes"][0]["reason"], "FieldManagerConflict");
    assert_eq!(v["details"]["causes"][0]["field"], ".data.k");
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{uri}?fieldManager=bob&force=true"),
            Some(cm("3")),
            &ssa,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["k"], "3");
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["bob"], "alice lost her only field");
    // A later update that omits managedFields keeps them.
    let mut put = v.clone();
    put["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    put["data"]["other"] = json!("x");
    let (code, v) = h.call(Method::PUT, uri, Some(put)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "bob");
}

impl Harness {
    /// Runs a watch to its end (callers pass `timeoutSeconds`) and returns its events.
    async fn watch_lines(&self, uri: &str) -> Vec<Value> {
        let (code, body) = self.raw(Method::GET, uri, vec![], &[]).await;
        assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// Waits (10 s at most) until GET `uri` answers `code`.
    async fn wait_code(&self, uri: &str, code: StatusCode) -> Value {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (c, v) = self.call(Method::GET, uri, None).await;
            if c == code {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{uri} still answers {c}: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn create_cm(&self, ns: &str, name: &str, labels: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})),
        )
        .await
    }
}

fn event_summary(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["type"].as_str().unwrap_or("").to_string(),
                l["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn namespaces_gate_creation_and_are_emptied_then_removed_on_delete() {
    let h = harness().await;
    let (code, list) = h.call(Method::GET, "/api/v1/namespaces", None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );

    let (code, ns) = h
        .call(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{ns}");
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
    let (code, v) = h.create_cm("team-a", "cfg", json!({})).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");

    // Into a namespace that does not exist: NotFound naming the namespace, as Kubernetes.
    let (code, v) = h.create_cm("nowhere", "cfg", json!({})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&v, 404, "NotFound");
    assert_eq!(v["message"], r#"namespaces "nowhere" not found"#);
    assert_eq!(v["details"]["kind"], "namespaces");

    // A bound pod there is deleted gracefully when the namespace goes.
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/team-a/pods",
            Some(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "nginx"}]}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");

    let (code, v) = h
        .call(Method::DELETE, "/api/v1/namespaces/default", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_status(&v, 403, "Forbidden");
    assert_eq!(
        v["message"],
        r#"namespaces "default" is forbidden: this namespace may not be deleted"#
    );

    let (code, v) = h
        .call(Method::DELETE, "/api/v1/namespaces/team-a", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["phase"], "Terminating");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (code, v) = h.create_cm("team-a", "late", json!({})).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        v["message"],
        r#"configmaps "late" is forbidden: unable to create new content in namespace team-a because it is being terminated"#
    );

    // The controller deletes the ConfigMap; the pod waits for its edge; so does the namespace.
    h.wait_code(
        "/api/v1/namespaces/team-a/configmaps/cfg",
        StatusCode::NOT_FOUND,
    )
    .await;
    let (code, pod) = h
        .call(Method::GET, "/api/v1/namespaces/team-a/pods/web", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    let (code, table) = h
        .call_with(
            Method::GET,
            "/api/v1/namespaces",
            None,
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let cols: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Status", "Age"]);
    let row = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "team-a")
        .unwrap();
    assert_eq!(row["cells"][1], "Terminating");

    // The edge reports the pod gone (the ingest removes it): the namespace goes too.
    h.store
        .delete(&ObjectKey::new("pods", "team-a", "web"), None)
        .await
        .unwrap();
    h.wait_code("/api/v1/namespaces/team-a", StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn watches_resume_from_a_resource_version_and_expire_when_too_old() {
    let h = harness_with_history(6).await;
    for name in ["a", "b"] {
        let (code, v) = h.create_cm("default", name, json!({"app": "x"})).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
    }
    let (_, list) = h
        .call(Method::GET, "/api/v1/namespaces/default/configmaps", None)
        .await;
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, h.store.revision(), "a list is at the store's revision");

    // Between the list and the watch: a delete and a relabel.
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/a",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = h
        .call_with(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/b",
            Some(json!({"metadata": {"labels": {"app": "y"}}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK);

    let base = "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1";
    let all = h.watch_lines(&format!("{base}&resourceVersion={rv}")).await;
    assert_eq!(
        event_summary(&all),
        [
            ("DELETED".into(), "a".into()),
            ("MODIFIED".into(), "b".into())
        ]
    );
    assert_eq!(
        all[0]["object"]["metadata"]["resourceVersion"],
        (rv + 1).to_string()
    );
    // For a watcher of app=x, b leaving the selector is a delete.
    let selected = h
        .watch_lines(&format!(
            "{base}&resourceVersion={rv}&labelSelector=app%3Dx"
        ))
        .await;
    assert_eq!(
        event_summary(&selected),
        [
            ("DELETED".into(), "a".into()),
            ("DELETED".into(), "b".into())
        ]
    );
    assert_eq!(selected[1]["object"]["metadata"]["labels"]["app"], "x");
    // Without a resourceVersion: today's behaviour, the current objects as ADDED.
    let fresh = h.watch_lines(base).await;
    assert_eq!(event_summary(&fresh), [("ADDED".into(), "b".into())]);

    // Push the list's revision out of the history (6 events): 410 Expired, as an ERROR event.
    for i in 0..8 {
        let (code, _) = h.create_cm("default", &format!("c{i}"), json!({})).await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let head = h.store.revision();
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.history.head() < head {
        assert!(
            tokio::time::Instant::now() < end,
            "the history never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gone = h.watch_lines(&format!("{base}&resourceVersion={rv}")).await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["type"], "ERROR");
    assert_status(&gone[0]["object"], 410, "Expired");
    assert_eq!(
        gone[0]["object"]["message"],
        format!("too old resource version: {rv} ({})", head - 6)
    );
    // From the head: nothing to replay.
    let quiet = h
        .watch_lines(&format!("{base}&resourceVersion={head}"))
        .await;
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[tokio::test]
async fn the_in_process_client_writes_with_the_api_semantics() {
    use super::client::{Client, Propagation};
    let h = harness().await;
    let c = Client::new(h.state.clone());
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}]}}}});
    let created = c
        .create("apps/deployments", "default", deploy)
        .await
        .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["spec"]["replicas"], 1);
    // Validation runs as for kubectl: a selector that does not match is a 422.
    let mut bad = created.clone();
    bad["metadata"] = json!({"name": "bad"});
    bad["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    let err = c
        .create("apps/deployments", "default", bad)
        .await
        .unwrap_err();
    assert_eq!(err.status()["code"], 422);
    // A spec change bumps the generation; a label change does not.
    let mut scaled = created.clone();
    scaled["spec"]["replicas"] = json!(3);
    let scaled = c
        .update("apps/deployments", "default", scaled)
        .await
        .unwrap();
    assert_eq!(scaled["metadata"]["generation"], 2);
    let mut labelled = scaled.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let labelled = c
        .update("apps/deployments", "default", labelled)
        .await
        .unwrap();
    assert_eq!(labelled["metadata"]["generation"], 2);
    // A stale resourceVersion is a conflict, not a lost update.
    let err = c
        .update("apps/deployments", "default", scaled)
        .await
        .unwrap_err();
    assert_eq!(err.status()["code"], 409);
    let mut status = labelled.clone();
    status["status"] = json!({"observedGeneration": 2, "replicas": 0});
    let written = c
        .update_status("apps/deployments", "default", status)
        .await
        .unwrap();
    assert_eq!(written["status"]["observedGeneration"], 2);
    assert_eq!(written["metadata"]["generation"], 2);
    assert_eq!(
        c.list("apps/deployments", Some("default"))
            .await
            .unwrap()
            .len(),
        1
    );
    let err = c
        .delete(
            "apps/deployments",
            "default",
            "web",
            Propagation::Background,
            Some("not-the-uid"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status()["code"], 409);
    c.delete(
        "apps/deployments",
        "default",
        "web",
        Propagation::Background,
        None,
    )
    .await
    .unwrap();
    assert!(c
        .get("apps/deployments", "default", "web")
        .await
        .unwrap()
        .is_none());
    let err = c
        .create("apps/widgets", "default", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not served"), "{err}");
}

#[tokio::test]
async fn finalizers_hold_deleted_objects_until_removed_and_propagation_sets_them() {
    let h = harness().await;
    let cm = |name: &str, finalizers: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "finalizers": finalizers}, "data": {"a": "b"}})
    };
    let base = "/api/v1/namespaces/default/configmaps";
    let (code, v) = h
        .call(
            Method::POST,
            base,
            Some(cm("held", json!(["example.com/hold"]))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // DELETE marks it and answers with the object; it stays.
    let (code, v) = h.call(Method::DELETE, &format!("{base}/held"), None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 0);
    let (code, got) = h.call(Method::GET, &format!("{base}/held"), None).await;
    assert_eq!(code, StatusCode::OK);
    // No new finalizer while terminating; the deletion timestamp cannot be unset.
    let mut more = got.clone();
    more["metadata"]["finalizers"] = json!(["example.com/hold", "example.com/more"]);
    let (_, v) = h
        .call(Method::PUT, &format!("{base}/held"), Some(more))
        .await;
    assert_status(&v, 422, "Invalid");
    assert!(
        v["message"].as_str().unwrap().contains("no new finalizers"),
        "{v}"
    );
    let mut unmark = got.clone();
    unmark["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    unmark["data"] = json!({"a": "c"});
    let (code, v) = h
        .call(Method::PUT, &format!("{base}/held"), Some(unmark))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        v["metadata"]["deletionTimestamp"],
        got["metadata"]["deletionTimestamp"]
    );
    // Removing the last finalizer removes the object.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{base}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, _) = h.call(Method::GET, &format!("{base}/held"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Foreground and Orphan add the collector's finalizers; Background removes them at once.
    for (name, opts, finalizer) in [
        (
            "fg",
            json!({"propagationPolicy": "Foreground"}),
            "foregroundDeletion",
        ),
        ("or", json!({"propagationPolicy": "Orphan"}), "orphan"),
        ("legacy", json!({"orphanDependents": true}), "orphan"),
    ] {
        let (code, _) = h.call(Method::POST, base, Some(cm(name, json!([])))).await;
        assert_eq!(code, StatusCode::CREATED);
        let (code, v) = h
            .call(Method::DELETE, &format!("{base}/{name}"), Some(opts))
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        assert_eq!(v["metadata"]["finalizers"], json!([finalizer]), "{v}");
        assert!(v["metadata"]["deletionTimestamp"].is_string(), "{v}");
        let (code, v) = h
            .call(
                Method::DELETE,
                &format!("{base}/{name}"),
                Some(json!({"propagationPolicy": "Background"})),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let (code, _) = h.call(Method::GET, &format!("{base}/{name}"), None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{name}");
    }
    let (code, _) = h.call(Method::POST, base, Some(cm("bad", json!([])))).await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, v) = h
        .call(
            Method::DELETE,
            &format!("{base}/bad"),
            Some(json!({"propagationPolicy": "Sideways"})),
        )
        .await;
    assert_status(&v, 400, "BadRequest");
    assert!(v["message"].as_str().unwrap().contains("Sideways"), "{v}");
    let (_, v) = h
        .call(
            Method::DELETE,
            &format!("{base}/bad"),
            Some(json!({"propagationPolicy": "Orphan", "orphanDependents": true})),
        )
        .await;
    assert_status(&v, 400, "BadRequest");
}

#[tokio::test]
async fn a_pod_leaves_once_both_its_finalizers_and_its_termination_are_done() {
    let h = harness().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "finalizers": ["example.com/hold"]},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "i"}]}});
    let path = "/api/v1/namespaces/default/pods/p";
    let (code, v) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // Graceful deletion starts; removing the finalizer while the edge has not confirmed keeps
    // the pod.
    let (code, v) = h.call(Method::DELETE, path, None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
    let patch = |f: Value| json!({"metadata": {"finalizers": f}});
    let merge = [("content-type", "application/merge-patch+json")];
    let (code, v) = h
        .call_with(Method::PATCH, path, Some(patch(json!(null))), &merge)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(h.call(Method::GET, path, None).await.0 == StatusCode::OK);
    // Termination over (as the ingest records it when finalizers remain, or a force delete):
    // with no finalizer left, the pod goes.
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{path}?gracePeriodSeconds=0"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        h.call(Method::GET, path, None).await.0,
        StatusCode::NOT_FOUND
    );

    // The other order: a force delete with a finalizer keeps the pod (grace 0), and removing
    // the finalizer then removes it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "finalizers": ["example.com/hold"]},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "i"}]}});
    let (code, _) = h
        .call(Method::POST, "/api/v1/namespaces/default/pods", Some(pod))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{path}?gracePeriodSeconds=0"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 0, "{v}");
    assert_eq!(h.call(Method::GET, path, None).await.0, StatusCode::OK);
    let (code, v) = h
        .call_with(Method::PATCH, path, Some(patch(json!([]))), &merge)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        h.call(Method::GET, path, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_scale_subresource_reads_and_writes_spec_replicas() {
    let h = harness().await;
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let (code, d) = h
        .call(
            Method::POST,
            base,
            Some(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{d}");
    let scale_uri = format!("{base}/web/scale");
    let (code, scale) = h.call(Method::GET, &scale_uri, None).await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");
    assert_eq!(scale["metadata"]["uid"], d["metadata"]["uid"]);
    // What `kubectl scale` sends: a merge patch of the Scale.
    let (code, scaled) = h
        .call_with(
            Method::PATCH,
            &scale_uri,
            Some(json!({"spec": {"replicas": 5}})),
            &[("content-type", "application/merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{scaled}");
    assert_eq!(scaled["spec"]["replicas"], 5);
    let (_, d5) = h.call(Method::GET, &format!("{base}/web"), None).await;
    assert_eq!(d5["spec"]["replicas"], 5);
    assert_eq!(d5["metadata"]["generation"], 2);
    // A PUT with the resourceVersion it read wins once; a stale one conflicts.
    let mut put = scale.clone();
    put["spec"]["replicas"] = json!(1);
    let (code, v) = h.call(Method::PUT, &scale_uri, Some(put)).await;
    assert_status(&v, 409, "Conflict");
    assert_eq!(code, StatusCode::CONFLICT);
    let mut put = scaled.clone();
    put["spec"]["replicas"] = json!(1);
    let (code, v) = h.call(Method::PUT, &scale_uri, Some(put)).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["replicas"], 1);
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &scale_uri,
            Some(json!([{"op": "replace", "path": "/spec/replicas", "value": -1}])),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (code, _) = h
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/daemonsets/web/scale",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, v) = h
        .call(Method::GET, &format!("{base}/nothing/scale"), None)
        .await;
    assert_status(&v, 404, "NotFound");
    assert_eq!(code, StatusCode::NOT_FOUND);
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

const SERVICES: &str = "/api/v1/namespaces/default/services";

#[tokio::test]
async fn services_get_cluster_ips_that_never_collide_and_survive_restarts() {
    let h = harness().await;
    let web = service(
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
    );
    let (code, v) = h.call(Method::POST, SERVICES, Some(web.clone())).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let ip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
    let cidr = services::ServiceNetwork::default().cidr;
    assert!(cidr.contains(ip.parse().unwrap()), "{ip}");
    assert_eq!(v["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(v["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(v["status"], json!({"loadBalancer": {}}));

    // Asking for a held address, or one outside the range: 422.
    let taken = service("taken", json!({"clusterIP": ip, "ports": [{"port": 80}]}));
    let (code, v) = h.call(Method::POST, SERVICES, Some(taken.clone())).await;
    assert_status(&v, 422, "Invalid");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{v}"
    );
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, v) = h
        .call(
            Method::POST,
            SERVICES,
            Some(service(
                "far",
                json!({"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}),
            )),
        )
        .await;
    assert_status(&v, 422, "Invalid");
    // Node ports: requested and allocated, never shared between Services.
    let np = service(
        "np",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]}),
    );
    let (code, v) = h.call(Method::POST, SERVICES, Some(np)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let second_port = v["spec"]["ports"][1]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&second_port) && second_port != 30080);
    let np2 = service(
        "np2",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
    );
    let (_, v) = h.call(Method::POST, SERVICES, Some(np2)).await;
    assert_status(&v, 422, "Invalid");
    assert_eq!(
        v["details"]["causes"][0]["message"],
        "Invalid value: 30080: provided port is already allocated (by Service default/np)"
    );

    // Concurrent creates get distinct addresses.
    let creates = (0..20).map(|i| {
        h.call(
            Method::POST,
            SERVICES,
            Some(service(&format!("s{i}"), json!({"ports": [{"port": 80}]}))),
        )
    });
    let mut ips = std::collections::HashSet::from([ip.clone()]);
    for (code, v) in futures::future::join_all(creates).await {
        assert_eq!(code, StatusCode::CREATED, "{v}");
        assert!(ips.insert(v["spec"]["clusterIP"].as_str().unwrap().to_string()));
    }

    // Replacing with the original manifest keeps the address; changing it is refused.
    let (code, v) = h
        .call(Method::PUT, &format!("{SERVICES}/web"), Some(web.clone()))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["clusterIP"], ip.as_str());
    let mut moved = web.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.99");
    let (_, v) = h
        .call(Method::PUT, &format!("{SERVICES}/web"), Some(moved))
        .await;
    assert_status(&v, 422, "Invalid");
    assert_eq!(v["details"]["causes"][0]["field"], "spec.clusterIPs[0]");
    // Strategic merge patch merges ports by port.
    let (code, v) = h
        .call_with(
            Method::PATCH,
            &format!("{SERVICES}/web"),
            Some(json!({"spec": {"ports": [{"name": "https", "port": 443}, {"name": "http", "port": 80}]}})),
            &[("content-type", "application/strategic-merge-patch+json")],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["ports"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["spec"]["clusterIP"], ip.as_str());

    // A fresh router over the same store (a restart) sees what is held.
    let restarted = router(ApiState::new(h.store.clone(), Arc::new(String::new)));
    let resp = restarted
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri(SERVICES)
                .body(Body::from(serde_json::to_vec(&taken).unwrap()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Deleting frees the address.
    let (code, _) = h
        .call(Method::DELETE, &format!("{SERVICES}/web"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, v) = h.call(Method::POST, SERVICES, Some(taken)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");

    // Headless: no address; kubectl's columns.
    let (code, _) = h
        .call(
            Method::POST,
            SERVICES,
            Some(service(
                "headless",
                json!({"clusterIP": "None", "selector": {"app": "db"}}),
            )),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, t) = h
        .call_with(
            Method::GET,
            &format!("{SERVICES}?labelSelector="),
            None,
            &[("accept", TABLE)],
        )
        .await;
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
            "Selector"
        ]
    );
    let row = |name: &str| {
        t["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["cells"][0] == name)
            .map(|r| r["cells"].clone())
            .unwrap()
    };
    assert_eq!(
        row("headless").as_array().unwrap()[1..5],
        [
            json!("ClusterIP"),
            json!("None"),
            json!("<none>"),
            json!("<none>")
        ]
    );
    assert_eq!(row("headless")[6], "app=db");
    assert_eq!(
        row("np")[4],
        json!(format!("80:30080/TCP,81:{second_port}/TCP"))
    );
}

#[tokio::test]
async fn delete_collection_deletes_the_matching_objects_through_the_delete_path() {
    let h = harness().await;
    h.create_pod("a", json!({}), json!({"app": "x"})).await;
    h.create_pod("b", json!({"nodeName": "edge-1"}), json!({"app": "x"}))
        .await;
    h.create_pod("c", json!({}), json!({"app": "y"})).await;
    let pods = "/api/v1/namespaces/default/pods";
    let exists = async |name: &str| {
        h.store
            .get(&ObjectKey::new("pods", "default", name))
            .await
            .unwrap()
            .map(|s| s.value)
    };
    // A dry run lists what would go and changes nothing.
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{pods}?labelSelector=app%3Dx&dryRun=All"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(exists("a").await.is_some() && exists("b").await.is_some());
    // The unbound pod goes at once; the bound one terminates gracefully, as a DELETE of it would.
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{pods}?labelSelector=app%3Dx"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(v["items"][1]["kind"], "Pod");
    assert!(exists("a").await.is_none());
    let b = exists("b").await.unwrap();
    assert_eq!(b["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(exists("c").await.is_some());
    // DeleteOptions in the body: grace 0 removes the terminating pod; a field selector narrows.
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{pods}?fieldSelector=metadata.name%3Db"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert!(exists("b").await.is_none() && exists("c").await.is_some());
    // Bad selectors are a 400, as for a list.
    let (code, _) = h
        .call(
            Method::DELETE,
            &format!("{pods}?fieldSelector=spec.bogus%3D1"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // Cluster-scoped kinds: the whole collection.
    h.put_node("edge-1", "True").await;
    h.put_node("edge-2", "True").await;
    let (code, v) = h
        .call(
            Method::DELETE,
            "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-2",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "NodeList");
    assert_eq!(v["items"][0]["metadata"]["name"], "edge-2");
    assert!(h
        .store
        .get(&ObjectKey::new("nodes", "", "edge-1"))
        .await
        .unwrap()
        .is_some());
    // Nothing matching: an empty list.
    let (code, v) = h
        .call(
            Method::DELETE,
            &format!("{pods}?labelSelector=app%3Dnone"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["items"], json!([]));
}

#[tokio::test]
async fn the_binding_subresource_assigns_a_pod_once() {
    let h = harness().await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}]}});
    let (code, created) = h.call(Method::POST, pods, Some(pod)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let binding = |node: &str, kind: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": kind, "name": node}})
    };
    let path = format!("{pods}/p/binding");
    // Wrong target kind and a missing node name are field errors.
    let (code, v) = h
        .call(Method::POST, &path, Some(binding("n1", "Service")))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "target.kind");
    let (code, _) = h.call(Method::POST, &path, Some(binding("", "Node"))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    // A uid precondition that does not hold is a conflict.
    let mut stale = binding("n1", "Node");
    stale["metadata"]["uid"] = json!("someone-else");
    let (code, _) = h.call(Method::POST, &path, Some(stale)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    // Bound: nodeName and PodScheduled=True, as the scheduler writes them.
    let (code, v) = h
        .call(Method::POST, &path, Some(binding("n1", "Node")))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "Success");
    let (_, p) = h.call(Method::GET, &format!("{pods}/p"), None).await;
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
    assert_eq!(p["status"]["conditions"][0]["status"], "True");
    // Once only.
    let (code, v) = h
        .call(Method::POST, &path, Some(binding("n2", "Node")))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("is already assigned to node \"n1\""),
        "{v}"
    );
    // Missing pods are 404; other verbs on the subresource are 405; discovery lists it.
    let mut other = binding("n1", "Node");
    other["metadata"]["name"] = json!("nope");
    let (code, _) = h
        .call(Method::POST, &format!("{pods}/nope/binding"), Some(other))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, v) = h
        .call(
            Method::POST,
            &format!("{pods}/nope/binding"),
            Some(binding("n1", "Node")),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the Binding names pod p: {v}"
    );
    let (code, _) = h.call(Method::GET, &path, None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (_, v) = h.call(Method::GET, "/api/v1", None).await;
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/binding" && r["verbs"] == json!(["create"])));
}
