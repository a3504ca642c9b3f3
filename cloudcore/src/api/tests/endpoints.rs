//! Endpoints and EndpointSlices through the router, kept by the real controllers (on the
//! shared runner, with the garbage collector) over the same store.

use super::*;
use crate::controllers::endpoints::endpoints_controller::{subsets, EndpointsController};
use crate::controllers::endpoints::slice_controller::EndpointSliceController;
use crate::controllers::endpoints::{endpoints_of, slice_plan, ServiceView};
use crate::controllers::runner::{self, Reconciler};
use std::time::Duration;

const SLICES: &str =
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb";

/// Starts both endpoint controllers and the garbage collector over `h`'s store; returns the
/// Endpoints controller, for direct reconciles of what it never writes.
fn start_controllers(h: &Harness) -> Arc<EndpointsController> {
    let client = crate::api::client::Client::new(h.state.clone());
    let informers = crate::controllers::informer::Informers::start(h.state.store.clone());
    let options = runner::Options::resync(Duration::from_secs(30));
    let slices = Arc::new(EndpointSliceController::new(client.clone(), &informers));
    let endpoints = Arc::new(EndpointsController::new(client.clone(), &informers));
    let gc = Arc::new(crate::controllers::garbage_collector::GarbageCollector::new(client));
    tokio::spawn(runner::run(slices, h.store.subscribe(), options));
    tokio::spawn(runner::run(endpoints.clone(), h.store.subscribe(), options));
    tokio::spawn(runner::run(gc, h.store.subscribe(), options));
    endpoints
}

/// Polls `uri` until `done` holds for its body (10 s at most).
async fn wait_until(h: &Harness, uri: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = h.call(Method::GET, uri, None).await;
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "{what}: last answer {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pod of `app` declaring port `http` 8080, then given `ip` and readiness as an edge reports.
async fn running_pod(h: &Harness, name: &str, ip: &str, ready: bool) {
    let pod = h
        .create_pod(
            name,
            json!({"nodeName": "edge-1", "containers": [{"name": "app", "image": "nginx:1.25",
                "ports": [{"name": "http", "containerPort": 8080}]}]}),
            json!({"app": "web"}),
        )
        .await;
    set_status(h, pod, ip, ready).await;
}

async fn set_status(h: &Harness, mut pod: Value, ip: &str, ready: bool) {
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    pod["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
    let (code, v) = h
        .call(
            Method::PUT,
            &format!("/api/v1/namespaces/default/pods/{name}/status"),
            Some(pod),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
}

fn endpoint_count(slices: &Value) -> usize {
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
        .sum()
}

#[tokio::test]
async fn services_get_slices_and_endpoints_that_follow_their_pods() {
    let h = harness().await;
    start_controllers(&h);
    let (code, svc) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"team": "a"}},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{svc}");
    running_pod(&h, "web-1", "10.244.1.5", true).await;
    running_pod(&h, "web-2", "10.244.1.6", false).await;
    let slices = wait_until(&h, SLICES, "two endpoints in the slices", |v| {
        endpoint_count(v) == 2
    })
    .await;
    let slice = &slices["items"][0];
    assert!(slice["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web-"));
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        slice["metadata"]["ownerReferences"][0]["uid"],
        svc["metadata"]["uid"]
    );
    assert_eq!(
        slice["ports"],
        json!([{"name": "", "port": 8080, "protocol": "TCP"}])
    );
    let ready: Vec<(Value, Value)> = slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["addresses"][0].clone(), e["conditions"]["ready"].clone()))
        .collect();
    assert!(
        ready.contains(&(json!("10.244.1.5"), json!(true))),
        "{slice}"
    );
    assert!(
        ready.contains(&(json!("10.244.1.6"), json!(false))),
        "{slice}"
    );
    let ep = wait_until(
        &h,
        "/api/v1/namespaces/default/endpoints/web",
        "Endpoints",
        |v| v["subsets"][0]["notReadyAddresses"].is_array(),
    )
    .await;
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.244.1.5");
    assert_eq!(
        ep["subsets"][0]["addresses"][0]["targetRef"]["name"],
        "web-1"
    );
    assert_eq!(ep["subsets"][0]["notReadyAddresses"][0]["ip"], "10.244.1.6");
    assert_eq!(
        ep["metadata"]["labels"]["endpoints.kubernetes.io/managed-by"],
        "endpoint-controller"
    );
    assert_eq!(ep["metadata"]["labels"]["team"], "a");
    assert!(
        ep["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
            .is_string()
    );
    // kubectl's tables.
    let (_, t) = h
        .call_with(
            Method::GET,
            "/api/v1/namespaces/default/endpoints",
            None,
            &[("accept", TABLE)],
        )
        .await;
    assert_eq!(t["rows"][0]["cells"][1], "10.244.1.5:8080");
    let (_, t) = h
        .call_with(Method::GET, SLICES, None, &[("accept", TABLE)])
        .await;
    assert_eq!(t["columnDefinitions"][1]["name"], "AddressType");
    assert_eq!(
        t["rows"][0]["cells"].as_array().unwrap()[1..4],
        [json!("IPv4"), json!("8080"), json!("10.244.1.5,10.244.1.6")]
    );

    // Converged: what the API stored is what the controllers want, so another reconcile
    // writes nothing (planned against the stored objects: a reconcile run here beside the
    // runner's would race it).
    let (_, stored) = h.call(Method::GET, SLICES, None).await;
    let stored: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
        serde_json::from_value(stored["items"].clone()).unwrap();
    let (_, svc_now) = h
        .call(Method::GET, "/api/v1/namespaces/default/services/web", None)
        .await;
    let view = ServiceView::managed(serde_json::from_value(svc_now).unwrap()).unwrap();
    let (_, pods) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods", None)
        .await;
    let pods: Vec<Arc<Value>> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(Arc::new)
        .collect();
    let desired = endpoints_of(&view, &pods);
    assert!(slice_plan::plan(&view, &desired, stored).is_empty());
    let stored_ep: k8s_openapi::api::core::v1::Endpoints =
        serde_json::from_value(ep.clone()).unwrap();
    assert_eq!(stored_ep.subsets.unwrap(), subsets(&view, &desired));

    // The pod turns ready; then one pod goes.
    let (_, p2) = h
        .call(Method::GET, "/api/v1/namespaces/default/pods/web-2", None)
        .await;
    set_status(&h, p2, "10.244.1.6", true).await;
    wait_until(
        &h,
        "/api/v1/namespaces/default/endpoints/web",
        "both ready",
        |v| v["subsets"][0]["addresses"].as_array().map_or(0, Vec::len) == 2,
    )
    .await;
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/web-1?gracePeriodSeconds=0",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    wait_until(&h, SLICES, "one endpoint left", |v| endpoint_count(v) == 1).await;

    // Deleting the Service takes its slices and its Endpoints.
    let (code, _) = h
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/services/web",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    wait_until(&h, SLICES, "slices gone", |v| {
        v["items"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    h.wait_code(
        "/api/v1/namespaces/default/endpoints/web",
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn the_endpoints_of_a_service_without_a_selector_are_the_users() {
    let h = harness().await;
    let endpoints = start_controllers(&h);
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual"},
                "spec": {"ports": [{"port": 80}]}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mine = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}]});
    let (code, written) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/endpoints",
            Some(mine),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{written}");
    let key = crate::store::ObjectKey::new("services", "default", "manual");
    endpoints.reconcile(&key).await.unwrap();
    let (_, now) = h
        .call(
            Method::GET,
            "/api/v1/namespaces/default/endpoints/manual",
            None,
        )
        .await;
    assert_eq!(
        now["metadata"]["resourceVersion"],
        written["metadata"]["resourceVersion"]
    );
    // Deleting the Service leaves the user's Endpoints too.
    h.call(
        Method::DELETE,
        "/api/v1/namespaces/default/services/manual",
        None,
    )
    .await;
    endpoints.reconcile(&key).await.unwrap();
    let (code, _) = h
        .call(
            Method::GET,
            "/api/v1/namespaces/default/endpoints/manual",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn bad_endpoints_and_slices_get_422_naming_the_field() {
    let h = harness().await;
    let (code, v) = h
        .call(
            Method::POST,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Some(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "x"}, "addressType": "IPv4",
                "ports": [{"name": "a", "port": 70000}],
                "endpoints": [{"addresses": ["fd00::1"]}]}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let fields: Vec<&str> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["endpoints[0].addresses[0]", "ports[0].port"]);
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/endpoints",
            Some(
                json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "x"},
                "subsets": [{"addresses": [{"ip": "10.0.0.1"}],
                    "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}]}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["details"]["causes"][0]["field"],
        "subsets[0].ports[1].name"
    );
    // Field selectors and watches work like for any kind.
    let (code, v) = h
        .call(
            Method::GET,
            "/apis/discovery.k8s.io/v1/endpointslices?fieldSelector=metadata.name%3Dnone",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "EndpointSliceList");
}

#[tokio::test]
async fn service_validation_refuses_what_cannot_work() {
    let h = harness().await;
    let post = |spec: Value| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/api/v1/namespaces/default/services",
                Some(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "s"}, "spec": spec})),
            )
            .await
        }
    };
    let cases = [
        (
            json!({"ports": [{"port": 80, "targetPort": "Not_A_Name"}]}),
            "spec.ports[0].targetPort",
        ),
        (
            json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
        (
            json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"}),
            "spec.externalTrafficPolicy",
        ),
        (
            json!({"ports": [{"port": 80}], "internalTrafficPolicy": "Nearby"}),
            "spec.internalTrafficPolicy",
        ),
        (
            json!({"type": "ExternalName", "externalName": "not a name"}),
            "spec.externalName",
        ),
        (
            json!({"ports": [{"port": 80}, {"port": 81}]}),
            "spec.ports[0].name",
        ),
        (
            json!({"ports": [{"port": 80}], "selector": {"app": "bad value!"}}),
            "spec.selector",
        ),
        (
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}),
            "spec.allocateLoadBalancerNodePorts",
        ),
    ];
    for (spec, field) in cases {
        let (code, v) = post(spec.clone()).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{spec}: {v}");
        let causes: Vec<&str> = v["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["field"].as_str())
            .collect();
        assert!(causes.contains(&field), "{spec}: {v}");
    }
    // A node port held by another Service names it.
    let (code, v) = h
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
                "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
            ),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (code, v) =
        post(json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": 30080}]})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("provided port is already allocated") && msg.contains("default/np"),
        "{msg}"
    );
    // LoadBalancer: a NodePort Service with a cluster IP, its load-balancer status empty.
    let (code, v) = post(json!({"type": "LoadBalancer", "ports": [{"port": 80}]})).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert!(v["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    assert_eq!(v["status"]["loadBalancer"], json!({}));
}
