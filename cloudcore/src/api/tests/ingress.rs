//! Ingresses and IngressClasses through the router: validation answers, the default class,
//! kubectl's columns, the status subresource.

use super::*;

const ING: &str = "/apis/networking.k8s.io/v1/namespaces/default/ingresses";
const CLASSES: &str = "/apis/networking.k8s.io/v1/ingressclasses";

fn ingress(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name}, "spec": spec})
}

fn class(name: &str, controller: &str, annotations: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name, "annotations": annotations}, "spec": {"controller": controller}})
}

fn backend(svc: &str, port: Value) -> Value {
    json!({"service": {"name": svc, "port": port}})
}

fn causes(v: &Value) -> Vec<String> {
    v["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}: {}",
                c["field"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn ingresses_are_validated_as_kubernetes_does() {
    let h = harness().await;
    let good = ingress(
        "web",
        json!({"rules": [{"host": "*.foo.com", "http": {"paths": [
            {"path": "/a", "pathType": "Prefix", "backend": backend("a", json!({"number": 80}))},
            {"path": "/b", "pathType": "Exact", "backend": backend("b", json!({"name": "http"}))},
            {"pathType": "ImplementationSpecific", "backend": backend("b", json!({"number": 8080}))}]}}],
          "tls": [{"hosts": ["x.foo.com"], "secretName": "tls"}]}),
    );
    let (code, v) = h.call(Method::POST, ING, Some(good)).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let cases = [
        (json!({}), "spec: Invalid value"),
        (
            json!({"defaultBackend": {"resource": {"kind": "Bucket", "name": "b", "apiGroup": "x.io"}}}),
            "spec.defaultBackend.resource: Forbidden",
        ),
        (
            json!({"rules": [{"http": {"paths": [{"path": "a", "pathType": "Prefix", "backend": backend("a", json!({"number": 80}))}]}}]}),
            "spec.rules[0].http.paths[0].path: Invalid value: \"a\": must be an absolute path",
        ),
        (
            json!({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Regex", "backend": backend("a", json!({"number": 80}))}]}}]}),
            "spec.rules[0].http.paths[0].pathType: Unsupported value",
        ),
        (
            json!({"rules": [{"host": "10.1.1.1", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend("a", json!({"number": 80}))}]}}]}),
            "spec.rules[0].host: Invalid value: \"10.1.1.1\": must be a DNS name, not an IP address",
        ),
        (
            json!({"defaultBackend": backend("a", json!({"number": 80, "name": "http"}))}),
            "spec.defaultBackend.service.port: Invalid value",
        ),
        (
            json!({"defaultBackend": backend("a", json!({}))}),
            "spec.defaultBackend.service.port: Invalid value: \"\": port name or number is required",
        ),
        (
            json!({"defaultBackend": backend("A", json!({"number": 70000}))}),
            "spec.defaultBackend.service.name: Invalid value",
        ),
        (
            json!({"defaultBackend": backend("a", json!({"number": 80})), "tls": [{"hosts": ["*.*.x"], "secretName": "S"}]}),
            "spec.tls[0].hosts[0]: Invalid value",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let (code, v) = h
            .call(Method::POST, ING, Some(ingress(&format!("bad{i}"), spec)))
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            causes(&v).iter().any(|c| c.starts_with(want)),
            "case {i}: want {want:?} in {:?}",
            causes(&v)
        );
    }
}

#[tokio::test]
async fn classes_defaults_tables_and_status() {
    let h = harness().await;
    let (code, v) = h
        .call(
            Method::POST,
            CLASSES,
            Some(class("other", "example.com/nginx", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let bad = [
        (
            class("x", "nope", json!({})),
            "spec.controller: Invalid value",
        ),
        (
            class(
                "y",
                "skerry.io/edge-ingress",
                json!({"ingressclass.skerry.io/node-selector": "a in"}),
            ),
            "metadata.annotations[ingressclass.skerry.io/node-selector]: Invalid value",
        ),
    ];
    for (c, want) in bad {
        let (code, v) = h.call(Method::POST, CLASSES, Some(c)).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            causes(&v).iter().any(|c| c.starts_with(want)),
            "{want}: {:?}",
            causes(&v)
        );
    }
    let mut with_params = class("z", "skerry.io/edge-ingress", json!({}));
    with_params["spec"]["parameters"] = json!({"kind": "Cfg", "name": "c"});
    let (code, v) = h.call(Method::POST, CLASSES, Some(with_params)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        causes(&v)[0].starts_with("spec.parameters: Forbidden"),
        "{v}"
    );
    // No default class yet: the Ingress keeps no class.
    let spec = json!({"defaultBackend": backend("a", json!({"number": 80}))});
    let (_, v) = h
        .call(Method::POST, ING, Some(ingress("none", spec.clone())))
        .await;
    assert!(v["spec"].get("ingressClassName").is_none(), "{v}");
    let (code, v) = h
        .call(
            Method::POST,
            CLASSES,
            Some(class(
                "edge",
                "skerry.io/edge-ingress",
                json!({"ingressclass.kubernetes.io/is-default-class": "true",
                       "ingressclass.skerry.io/node-selector": "site=a"}),
            )),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (_, v) = h
        .call(Method::POST, ING, Some(ingress("dflt", spec.clone())))
        .await;
    assert_eq!(v["spec"]["ingressClassName"], "edge", "{v}");
    let mut mine = ingress("mine", spec.clone());
    mine["spec"]["ingressClassName"] = json!("other");
    let (_, v) = h.call(Method::POST, ING, Some(mine)).await;
    assert_eq!(v["spec"]["ingressClassName"], "other");
    // The controller of a class is immutable.
    let (_, mut c) = h.call(Method::GET, &format!("{CLASSES}/edge"), None).await;
    c["spec"]["controller"] = json!("example.com/x");
    let (code, _) = h
        .call(Method::PUT, &format!("{CLASSES}/edge"), Some(c))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    // Status: addresses must be IPs; kubectl's ADDRESS shows them.
    let (_, mut ing) = h.call(Method::GET, &format!("{ING}/dflt"), None).await;
    ing["status"] = json!({"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}});
    let (code, _) = h
        .call(
            Method::PUT,
            &format!("{ING}/dflt/status"),
            Some(ing.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    ing["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}]}});
    let (code, v) = h
        .call(Method::PUT, &format!("{ING}/dflt/status"), Some(ing))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (_, t) = h
        .call_with(Method::GET, ING, None, &[("accept", TABLE)])
        .await;
    let names: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Name", "Class", "Hosts", "Address", "Ports", "Age"]);
    let row = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "dflt")
        .unwrap();
    assert_eq!(row["cells"][1], "edge");
    assert_eq!(row["cells"][2], "*");
    assert_eq!(row["cells"][3], "10.0.0.1,10.0.0.2");
    assert_eq!(row["cells"][4], "80");
    let (_, t) = h
        .call_with(Method::GET, CLASSES, None, &[("accept", TABLE)])
        .await;
    let row = &t["rows"].as_array().unwrap()[0];
    assert_eq!(row["cells"][1], "skerry.io/edge-ingress");
    assert_eq!(row["cells"][2], "<none>");
    let (_, d) = h
        .call(Method::GET, "/apis/networking.k8s.io/v1", None)
        .await;
    let kinds: Vec<&str> = d["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"Ingress") && kinds.contains(&"IngressClass"),
        "{d}"
    );
}
