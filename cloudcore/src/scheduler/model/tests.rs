//! Unit tests of the scheduler's model: parsing pods and nodes, and matching terms.

use super::*;
use k8s_openapi::api::core::v1::Toleration as PodToleration;
use serde_json::json;

#[test]
fn requests_sum_containers_take_largest_init_and_add_overhead() {
    let pod = json!({"spec": {
        "containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "64Mi", "skerry.io/gpio": "1"}}},
            {"resources": {"requests": {"cpu": "250m"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
        "overhead": {"cpu": "10m"},
    }});
    let r = PodFields::of(&pod).requests();
    assert_eq!(r.fit.cpu_millis, 2010);
    assert_eq!(r.fit.memory, 64 << 20);
    assert_eq!(r.fit.scalars["skerry.io/gpio"], 1);
    // The second container has no memory request: scored as the non-zero default.
    assert_eq!(r.score_memory, (64 << 20) + DEFAULT_SCORE_MEMORY);
    assert_eq!(r.score_cpu_millis, 2010);
    let none = PodFields::of(&json!({"spec": {"containers": [{}]}})).requests();
    assert_eq!(none.fit, Resources::default());
    assert_eq!(none.score_cpu_millis, DEFAULT_SCORE_CPU_MILLIS);
}

#[test]
fn tolerations_follow_kubernetes_matching() {
    let taint = Taint {
        key: "dedicated".into(),
        value: "gpu".into(),
        effect: Effect::NoSchedule,
    };
    let t =
        |v: Value| tolerations(&serde_json::from_value::<Vec<PodToleration>>(json!([v])).unwrap());
    let ok = |v: Value| tolerated(&t(v), &taint);
    assert!(ok(
        json!({"key": "dedicated", "operator": "Equal", "value": "gpu"})
    ));
    assert!(
        ok(json!({"key": "dedicated", "value": "gpu"})),
        "Equal is the default"
    );
    assert!(!ok(json!({"key": "dedicated", "value": "cpu"})));
    assert!(ok(json!({"key": "dedicated", "operator": "Exists"})));
    assert!(
        ok(json!({"operator": "Exists"})),
        "empty key + Exists tolerates all"
    );
    assert!(
        !ok(json!({"operator": "Equal"})),
        "empty key + Equal tolerates nothing"
    );
    assert!(ok(
        json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"})
    ));
    assert!(!ok(
        json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"})
    ));
}

#[test]
fn requirements_cover_every_operator() {
    let req = |v: Value| serde_json::from_value::<NodeSelectorRequirement>(v).unwrap();
    let r = |v: Value| Requirement::parse(&req(v)).unwrap();
    let in_ = r(json!({"key": "k", "operator": "In", "values": ["a", "b"]}));
    assert!(in_.matches(Some("b")) && !in_.matches(Some("c")) && !in_.matches(None));
    let not_in = r(json!({"key": "k", "operator": "NotIn", "values": ["a"]}));
    assert!(not_in.matches(Some("b")) && !not_in.matches(Some("a")) && not_in.matches(None));
    let exists = r(json!({"key": "k", "operator": "Exists"}));
    assert!(exists.matches(Some("")) && !exists.matches(None));
    let dne = r(json!({"key": "k", "operator": "DoesNotExist"}));
    assert!(!dne.matches(Some("x")) && dne.matches(None));
    let gt = r(json!({"key": "k", "operator": "Gt", "values": ["4"]}));
    assert!(gt.matches(Some("5")) && !gt.matches(Some("4")) && !gt.matches(Some("x")));
    let lt = r(json!({"key": "k", "operator": "Lt", "values": ["4"]}));
    assert!(lt.matches(Some("-1")) && !lt.matches(Some("4")) && !lt.matches(None));
    for bad in [
        json!({"key": "k", "operator": "Gt", "values": ["a"]}),
        json!({"key": "k", "operator": "In", "values": []}),
        json!({"key": "k", "operator": "Exists", "values": ["a"]}),
        json!({"key": "k", "operator": "Near"}),
    ] {
        assert!(Requirement::parse(&req(bad.clone())).is_none(), "{bad}");
    }
}

/// Kubernetes: a label selector that fails to parse matches nothing. The scheduler's old
/// private selector could keep the valid part of a selector with a bad `matchLabels`
/// value; now one parser (the API's) decides, and a bad part empties the whole selector.
#[test]
fn a_malformed_label_selector_selects_no_pod() {
    let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let good = Selector::parse(Some(&json!({"matchLabels": {"app": "web"}})));
    assert!(good.matches(&labels));
    assert_eq!(good.index_hint(), Some(("app", vec!["web"])));
    assert!(Selector::parse(Some(&json!({}))).matches(&labels));
    for bad in [
        json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Near", "values": ["a"]}]}),
        json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}),
        json!({"matchLabels": {"app": "web", "tier": 3}}),
    ] {
        let sel = Selector::parse(Some(&bad));
        assert!(sel.selects_nothing(), "{bad}");
        assert!(!sel.matches(&labels), "{bad}");
    }
    assert!(Selector::parse(None).selects_nothing());
    assert!(Selector::parse(Some(&Value::Null)).selects_nothing());
}

#[test]
fn terms_and_their_fields() {
    let labels = BTreeMap::from([("zone".to_string(), "north".to_string())]);
    let term_of = |v: Value| Term::parse(&serde_json::from_value::<NodeSelectorTerm>(v).unwrap());
    let term = term_of(json!({
        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}],
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}],
    }));
    assert!(term.matches("a", &labels));
    assert!(!term.matches("b", &labels));
    assert!(!term_of(json!({})).matches("a", &labels), "empty term");
    let bad_field = term_of(
        json!({"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["a"]}]}),
    );
    assert!(!bad_field.matches("a", &labels));
}

#[test]
fn node_readiness_taints_and_allocatable() {
    let node = json!({
        "metadata": {"name": "n", "labels": {"a": "b"}},
        "spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}, {"key": "y", "effect": "Bogus"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110", "skerry.io/gpio": "3", "ephemeral-storage": "1Gi"}},
    });
    let n = NodeInfo::of(&node);
    assert!(n.ready && !n.unschedulable);
    assert_eq!(n.taints.len(), 1);
    assert_eq!(
        (n.allocatable.cpu_millis, n.allocatable.memory, n.max_pods),
        (2000, 1 << 30, 110)
    );
    assert_eq!(n.allocatable.scalars.len(), 1);
    let mut tainted = node.clone();
    tainted["spec"]["taints"] =
        json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]);
    assert!(!NodeInfo::of(&tainted).ready);
    let mut not_ready = node;
    not_ready["status"]["conditions"][0]["status"] = json!("Unknown");
    assert!(!NodeInfo::of(&not_ready).ready);
}

#[test]
fn spread_groups_by_controller_then_labels() {
    let key_of = |v: &Value| PodFields::of(v).spread_key();
    let owned = |uid: &str, app: &str| {
        json!({"metadata": {"namespace": "d", "labels": {"app": app},
        "ownerReferences": [{"uid": uid, "controller": true}]}})
    };
    assert_eq!(key_of(&owned("u1", "a")), key_of(&owned("u1", "b")));
    assert_ne!(key_of(&owned("u1", "a")), key_of(&owned("u2", "a")));
    let loose = |ns: &str| json!({"metadata": {"namespace": ns, "labels": {"app": "a"}}});
    assert_eq!(key_of(&loose("d")), key_of(&loose("d")));
    assert_ne!(key_of(&loose("d")), key_of(&loose("e")));
    assert_eq!(key_of(&json!({"metadata": {}})), None);
}

#[test]
fn only_unbound_live_default_scheduler_pods_are_scheduled() {
    assert!(wants_scheduling(&json!({"spec": {}})));
    assert!(!wants_scheduling(&json!({"spec": {"nodeName": "n"}})));
    assert!(!wants_scheduling(
        &json!({"spec": {"schedulerName": "other"}})
    ));
    assert!(!wants_scheduling(
        &json!({"metadata": {"deletionTimestamp": "x"}, "spec": {}})
    ));
}
