//! Unit tests of the endpoint computation, the slice plan and the Endpoints subsets.

use super::endpoints_controller::{subsets, truncate};
use super::slice_plan::{plan, Plan};
use super::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::sync::Arc;

fn service(spec: Value) -> ServiceView {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-1", "labels": {"team": "a"}},
        "spec": spec}))
    .unwrap();
    ServiceView::managed(svc).expect("a Service with a selector")
}

fn web() -> ServiceView {
    service(json!({"selector": {"app": "web"}, "ports": [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}]}))
}

/// A Running, Ready pod `name` at `ip` declaring container port `http` at `http_port` (none
/// when 0).
fn pod(name: &str, ip: &str, http_port: i32) -> Value {
    let ports = if http_port == 0 {
        json!([])
    } else {
        json!([{"name": "http", "containerPort": http_port, "protocol": "TCP"}])
    };
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn endpoints_for(svc: &ServiceView, pods: Vec<Value>) -> Vec<PodEndpoint> {
    let pods: Vec<Arc<Value>> = pods.into_iter().map(Arc::new).collect();
    endpoints_of(svc, &pods)
}

fn decoded(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).unwrap()
}

/// What the store would hold after `plan` is applied over `existing`: created slices get a
/// name, everything goes through JSON as the API stores it.
fn applied(existing: Vec<EndpointSlice>, plan: &Plan) -> Vec<EndpointSlice> {
    let gone: Vec<_> = plan
        .update
        .iter()
        .chain(&plan.delete)
        .map(|s| s.metadata.name.clone())
        .collect();
    let mut out: Vec<EndpointSlice> = existing
        .into_iter()
        .filter(|s| !gone.contains(&s.metadata.name))
        .collect();
    out.extend(plan.update.iter().cloned());
    for (i, s) in plan.create.iter().enumerate() {
        let mut s = s.clone();
        s.metadata.name = Some(format!("web-new{i}-{}", out.len()));
        s.metadata.uid = Some(format!("slice-{}", out.len()));
        out.push(s);
    }
    out.into_iter()
        .map(|s| serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap())
        .collect()
}

fn sizes(slices: &[EndpointSlice]) -> Vec<usize> {
    let mut v: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    v.sort();
    v
}

#[test]
fn named_target_ports_resolve_per_pod_and_group_endpoints_by_port_set() {
    let svc = web();
    let eps = endpoints_for(
        &svc,
        vec![
            pod("a", "10.244.0.1", 8080),
            pod("b", "10.244.0.2", 8081),
            pod("c", "10.244.0.3", 0),
        ],
    );
    let ports = |i: usize| -> Vec<(String, i32)> {
        eps[i]
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.port))
            .collect()
    };
    assert_eq!(ports(0), [("http".into(), 8080), ("metrics".into(), 9090)]);
    assert_eq!(ports(1), [("http".into(), 8081), ("metrics".into(), 9090)]);
    // No container port named `http`: only the numeric port.
    assert_eq!(ports(2), [("metrics".into(), 9090)]);
    // A port of another protocol under the same name does not resolve.
    let mut udp = pod("d", "10.244.0.4", 8080);
    udp["spec"]["containers"][0]["ports"][0]["protocol"] = json!("UDP");
    assert_eq!(find_port(&decoded(&udp), &svc.ports()[0]), None);
    // A sidecar (restartable init container) declares ports too.
    let mut sidecar = pod("e", "10.244.0.5", 0);
    sidecar["spec"]["initContainers"] = json!([{"name": "s", "image": "i", "restartPolicy": "Always",
        "ports": [{"name": "http", "containerPort": 7000}]}]);
    assert_eq!(find_port(&decoded(&sidecar), &svc.ports()[0]), Some(7000));
    // Three port sets, so three slices.
    let p = plan(&svc, &eps, Vec::new());
    assert_eq!(p.create.len(), 3);
    assert!(p.create.iter().all(|s| s.endpoints.len() == 1));
    let c = p
        .create
        .iter()
        .find(|s| s.endpoints[0].addresses == ["10.244.0.3"])
        .unwrap();
    assert_eq!(c.ports.as_ref().unwrap().len(), 1);
}

#[test]
fn conditions_follow_readiness_and_termination() {
    let svc = web();
    let mut not_ready = pod("b", "10.244.0.2", 8080);
    not_ready["status"]["conditions"][0]["status"] = json!("False");
    let mut terminating = pod("c", "10.244.0.3", 8080);
    terminating["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    let mut done = pod("d", "10.244.0.4", 8080);
    done["status"]["phase"] = json!("Succeeded");
    let mut no_ip = pod("e", "", 8080);
    no_ip["status"]["podIPs"] = json!([]);
    let loopback = pod("f", "127.0.0.1", 8080);
    let mut other = pod("g", "10.244.0.7", 8080);
    other["metadata"]["labels"]["app"] = json!("db");
    let eps = endpoints_for(
        &svc,
        vec![
            pod("a", "10.244.0.1", 8080),
            not_ready,
            terminating,
            done,
            no_ip,
            loopback,
            other,
        ],
    );
    let conds: Vec<(&str, bool, bool, bool)> = eps
        .iter()
        .map(|e| (e.pod.as_str(), e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conds,
        [
            ("a", true, true, false),
            ("b", false, false, false),
            ("c", false, true, true)
        ]
    );
    assert_eq!(eps[0].node.as_deref(), Some("n1"));
    let published = service(
        json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true,
        "ports": [{"port": 80, "targetPort": 80}]}),
    );
    let eps = endpoints_for(&published, vec![pod("b", "10.244.0.2", 0)]);
    let mut b = pod("b", "10.244.0.2", 0);
    b["status"]["conditions"][0]["status"] = json!("False");
    let eps_nr = endpoints_for(&published, vec![b]);
    assert!(eps[0].ready && eps_nr[0].ready && !eps_nr[0].serving);
}

#[test]
fn a_headless_statefulset_pod_gets_its_hostname() {
    let svc = service(json!({"clusterIP": "None", "selector": {"app": "web"}}));
    let mut p = pod("web-0", "10.244.0.1", 0);
    p["spec"]["hostname"] = json!("web-0");
    p["spec"]["subdomain"] = json!("web");
    let mut elsewhere = pod("db-0", "10.244.0.2", 0);
    elsewhere["spec"]["hostname"] = json!("db-0");
    elsewhere["spec"]["subdomain"] = json!("db");
    let eps = endpoints_for(&svc, vec![p, elsewhere]);
    assert_eq!(eps[0].hostname, None, "subdomain of another Service");
    assert_eq!(eps[1].hostname.as_deref(), Some("web-0"));
    let p = plan(&svc, &eps, Vec::new());
    let s = &p.create[0];
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["service.kubernetes.io/headless"],
        ""
    );
    assert_eq!(s.ports.as_deref(), Some(&[][..]));
    let subsets = subsets(&svc, &eps);
    assert_eq!(subsets.len(), 1);
    assert!(subsets[0].ports.is_none());
    assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 2);
}

#[test]
fn slices_hold_at_most_100_endpoints_and_are_labelled_and_owned() {
    let svc = web();
    let pods: Vec<Value> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                8080,
            )
        })
        .collect();
    let eps = endpoints_for(&svc, pods);
    let p = plan(&svc, &eps, Vec::new());
    assert_eq!(sizes(&p.create), [50, 100, 100]);
    let s = &p.create[0];
    assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(s.address_type, "IPv4");
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["team"], "a");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Service", "svc-1", Some(true))
    );
    let e = &s.endpoints[0];
    let target = e.target_ref.as_ref().unwrap();
    assert_eq!(
        (
            target.kind.as_deref(),
            target.name.as_deref(),
            target.uid.as_deref()
        ),
        (Some("Pod"), Some("p000"), Some("uid-p000"))
    );
    // Two more pods fit into the partial slice: one update, nothing created.
    let stored = applied(Vec::new(), &p);
    let more: Vec<Value> = (0..252)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                8080,
            )
        })
        .collect();
    let p2 = plan(&svc, &endpoints_for(&svc, more), stored.clone());
    assert_eq!(
        (p2.create.len(), p2.update.len(), p2.delete.len()),
        (0, 1, 0)
    );
    assert_eq!(p2.update[0].endpoints.len(), 52);
}

#[test]
fn an_unchanged_slice_is_never_rewritten() {
    let svc = web();
    let pods: Vec<Value> = (0..150)
        .map(|i| pod(&format!("p{i:03}"), &format!("10.244.0.{}", i + 1), 8080))
        .collect();
    let eps = endpoints_for(&svc, pods.clone());
    let stored = applied(Vec::new(), &plan(&svc, &eps, Vec::new()));
    assert_eq!(sizes(&stored), [50, 100]);
    assert!(
        plan(&svc, &eps, stored.clone()).is_empty(),
        "same pods, same slices: no write"
    );
    // One pod turns unready: only its slice is written.
    let mut changed = pods.clone();
    changed[120]["status"]["conditions"][0]["status"] = json!("False");
    let p = plan(&svc, &endpoints_for(&svc, changed), stored.clone());
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    let e = p.update[0]
        .endpoints
        .iter()
        .find(|e| e.addresses == ["10.244.0.121"])
        .unwrap();
    assert_eq!(e.conditions.as_ref().unwrap().ready, Some(false));
    // Scaling down to the pods of one slice deletes the other.
    let few = endpoints_for(&svc, pods[..10].to_vec());
    let p = plan(&svc, &few, stored.clone());
    assert_eq!(p.create.len(), 0);
    assert_eq!(p.update.len() + p.delete.len(), 2);
    let after = applied(stored.clone(), &p);
    assert_eq!(sizes(&after), [10]);
    // No pods at all: one empty placeholder slice, reusing an existing one.
    let p = plan(&svc, &[], after.clone());
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
    let placeholder = applied(after, &p);
    assert_eq!(sizes(&placeholder), [0]);
    assert!(plan(&svc, &[], placeholder.clone()).is_empty());
    // Pods again: the placeholder is dropped (its port set is not wanted), a slice is made.
    let p = plan(&svc, &few, placeholder);
    assert_eq!((p.create.len(), p.delete.len()), (1, 1));
}

#[test]
fn endpoints_subsets_pack_ports_and_split_readiness() {
    let svc = web();
    let mut nr = pod("b", "10.244.0.2", 8080);
    nr["status"]["conditions"][0]["status"] = json!("False");
    let mut term = pod("d", "10.244.0.4", 8080);
    term["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    let eps = endpoints_for(
        &svc,
        vec![
            pod("a", "10.244.0.1", 8080),
            nr,
            pod("c", "10.244.0.3", 0),
            term,
        ],
    );
    let ss = subsets(&svc, &eps);
    let shape: Vec<(Vec<i32>, Vec<&str>, Vec<&str>)> = ss
        .iter()
        .map(|s| {
            (
                s.ports.iter().flatten().map(|p| p.port).collect(),
                s.addresses
                    .iter()
                    .flatten()
                    .map(|a| a.ip.as_str())
                    .collect(),
                s.not_ready_addresses
                    .iter()
                    .flatten()
                    .map(|a| a.ip.as_str())
                    .collect(),
            )
        })
        .collect();
    // The terminating pod is left out; 9090 is offered by all three, 8080 by two.
    assert_eq!(
        shape,
        [
            (vec![8080], vec!["10.244.0.1"], vec!["10.244.0.2"]),
            (
                vec![9090],
                vec!["10.244.0.1", "10.244.0.3"],
                vec!["10.244.0.2"]
            ),
        ]
    );
}

#[test]
fn endpoints_are_truncated_at_1000_addresses_not_ready_first() {
    let svc =
        service(json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]}));
    let pods: Vec<Value> = (0..1100)
        .map(|i| {
            let mut p = pod(
                &format!("p{i:04}"),
                &format!("10.{}.{}.{}", i / 60000, (i / 250) % 240, i % 250 + 1),
                0,
            );
            if i % 2 == 1 {
                p["status"]["conditions"][0]["status"] = json!("False");
            }
            p
        })
        .collect();
    let mut ss = subsets(&svc, &endpoints_for(&svc, pods));
    assert!(truncate(&mut ss));
    let ready: usize = ss
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    let not_ready: usize = ss
        .iter()
        .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!((ready, not_ready), (550, 450));
    assert!(!truncate(&mut ss), "already within capacity");
}

#[test]
fn pod_events_wake_only_the_services_that_select_them_and_only_for_endpoint_changes() {
    let idx = ServiceIndex::default();
    idx.replace_all(&[
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"selector": {"app": "web"}}}),
        json!({"metadata": {"name": "all", "namespace": "default"}, "spec": {}}),
        json!({"metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "selector": {"app": "web"}}}),
    ]);
    let before = pod("a", "10.244.0.1", 8080);
    let mut restarted = before.clone();
    restarted["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 3}]);
    let event = |value: &Value, previous: &Value| Event {
        revision: 2,
        key: crate::store::ObjectKey::new("pods", "default", "a"),
        value: Some(value.clone()),
        previous: Some(previous.clone()),
        shards: vec![],
    };
    assert!(idx
        .keys_for_pod_event(&event(&restarted, &before))
        .is_empty());
    let mut unready = before.clone();
    unready["status"]["conditions"][0]["status"] = json!("False");
    let keys = idx.keys_for_pod_event(&event(&unready, &before));
    assert_eq!(
        keys,
        [crate::store::ObjectKey::new(SERVICES, "default", "web")]
    );
    // A label change away from the selector still wakes the Service it left.
    let mut moved = before.clone();
    moved["metadata"]["labels"]["app"] = json!("db");
    assert_eq!(idx.keys_for_pod_event(&event(&moved, &before)).len(), 1);
}
