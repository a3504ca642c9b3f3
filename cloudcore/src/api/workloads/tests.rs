//! Unit tests of the workload handlers: defaults, validation messages and table rows.

use super::*;
use crate::api::resource::ResourceHandler;

fn deployment(spec: Value) -> Value {
    let mut v = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}});
    if let (Some(s), Some(extra)) = (v["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let h = WorkloadHandler(Workload::Deployment);
    let mut v = h.decode(v).unwrap();
    h.default(&mut v);
    v
}

fn errors(h: WorkloadHandler, v: &Value) -> Vec<String> {
    h.validate(v)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn deployments_get_kubernetes_defaults() {
    let d = deployment(json!({}));
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(errors(WorkloadHandler(Workload::Deployment), &d).is_empty());
    let recreate = deployment(json!({"strategy": {"type": "Recreate"}}));
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn selectors_must_match_template_labels() {
    let h = WorkloadHandler(Workload::Deployment);
    let bad = deployment(json!({"selector": {"matchLabels": {"app": "other"}}}));
    assert_eq!(
        errors(h, &bad),
        [
            r#"spec.template.metadata.labels: Invalid value: {"app":"web","tier":"fe"}: `selector` does not match template `labels`"#
        ]
    );
    let set_based = deployment(json!({"selector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["fe", "be"]}]}}));
    assert!(errors(h, &set_based).is_empty());
    let empty = deployment(json!({"selector": {}}));
    assert_eq!(errors(h, &empty), ["spec.selector: Required value"]);
    let bad_op = deployment(json!({"selector": {"matchExpressions": [
        {"key": "tier", "operator": "Near"}]}}));
    assert!(errors(h, &bad_op)[0].contains("Unsupported value: \"Near\""));
}

#[test]
fn templates_are_validated_as_pods_that_always_restart() {
    let h = WorkloadHandler(Workload::Deployment);
    let mut d = deployment(json!({}));
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
    d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    d["spec"]["replicas"] = json!(-1);
    assert_eq!(
        errors(h, &d),
        [
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "spec.template.spec.containers[0].image: Required value",
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
        ]
    );
}

#[test]
fn rolling_update_bounds_are_checked() {
    let h = WorkloadHandler(Workload::Deployment);
    let zero = deployment(json!({"strategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}));
    assert_eq!(
        errors(h, &zero),
        [
            r#"spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "0%": may not be 0 when `maxSurge` is 0"#
        ]
    );
    let over = deployment(json!({"strategy": {"rollingUpdate": {"maxUnavailable": "150%"}}}));
    assert!(errors(h, &over)[0].contains("must not be greater than 100%"));
    let recreate = deployment(json!({"strategy": {"type": "Recreate", "rollingUpdate": {}}}));
    assert!(
        errors(h, &recreate)[0].contains("may not be specified when strategy `type` is 'Recreate'")
    );
}

#[test]
fn percentages_round_as_kubernetes_does() {
    let pct = |s: &str| IntOrString::String(s.into());
    assert_eq!(scaled_value(&pct("25%"), 3, true), Ok(1));
    assert_eq!(scaled_value(&pct("25%"), 3, false), Ok(0));
    assert_eq!(scaled_value(&pct("50%"), 10, false), Ok(5));
    assert_eq!(scaled_value(&IntOrString::Int(2), 10, true), Ok(2));
    assert!(scaled_value(&pct("x"), 10, true).is_err());
}

#[test]
fn selectors_are_immutable_and_statefulset_specs_mostly_so() {
    let h = WorkloadHandler(Workload::Deployment);
    let old = deployment(json!({}));
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(5);
    assert!(h.validate_update(&new, &old).is_ok());
    new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "fe"}});
    assert!(h.validate_update(&new, &old).unwrap_err()[0]
        .to_string()
        .ends_with("field is immutable"));

    let s = WorkloadHandler(Workload::StatefulSet);
    let mut old = deployment(json!({}));
    old["kind"] = json!("StatefulSet");
    let mut old = s.decode(old).unwrap();
    s.default(&mut old);
    assert!(errors(s, &old).is_empty(), "{:?}", errors(s, &old));
    assert_eq!(old["spec"]["podManagementPolicy"], "OrderedReady");
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(3);
    assert!(s.validate_update(&new, &old).is_ok());
    new["spec"]["podManagementPolicy"] = json!("Parallel");
    assert!(s.validate_update(&new, &old).is_err());
}

#[test]
fn table_rows_show_the_usual_columns() {
    let h = WorkloadHandler(Workload::Deployment);
    let mut d = deployment(json!({"replicas": 3}));
    d["status"] = json!({"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2});
    d["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    assert_eq!(
        h.table_row(&d, 1_735_689_600 + 60),
        vec![
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("60s"),
            json!("nginx"),
            json!("nginx:1.25"),
            json!("app=web")
        ]
    );
    assert_eq!(h.columns().len(), h.table_row(&d, 0).len());
    for w in Workload::ALL {
        let h = WorkloadHandler(w);
        assert_eq!(h.columns().len(), h.table_row(&d, 0).len(), "{w:?}");
    }
}

fn replication_controller(spec: Value) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}});
    if let (Some(s), Some(extra)) = (v["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let h = WorkloadHandler(Workload::ReplicationController);
    let mut v = h.decode(v).unwrap();
    h.default(&mut v);
    v
}

#[test]
fn replication_controllers_default_their_selector_and_labels_from_the_template() {
    let h = WorkloadHandler(Workload::ReplicationController);
    let rc = replication_controller(json!({}));
    assert_eq!(rc["spec"]["replicas"], 1);
    assert_eq!(rc["spec"]["selector"], json!({"app": "web", "tier": "fe"}));
    assert_eq!(
        rc["metadata"]["labels"],
        json!({"app": "web", "tier": "fe"})
    );
    assert_eq!(rc["spec"]["template"]["spec"]["restartPolicy"], "Always");
    assert!(errors(h, &rc).is_empty(), "{:?}", errors(h, &rc));
    // A selector given is kept, and read as matchLabels everywhere.
    let narrow = replication_controller(json!({"selector": {"app": "web"}, "replicas": 3}));
    assert_eq!(narrow["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(narrow["spec"]["replicas"], 3);
    assert_eq!(selector_of(&narrow).unwrap().to_string(), "app=web");
    assert_eq!(
        crate::api::scale::scale_of(&narrow)["status"]["selector"],
        "app=web"
    );
    assert!(errors(h, &narrow).is_empty());
    assert_eq!(REPLICATION_CONTROLLER_INFO.api_version(), "v1");
    assert_eq!(
        REPLICATION_CONTROLLER_INFO.storage_resource(),
        "replicationcontrollers"
    );
    assert_eq!(REPLICATION_CONTROLLER_INFO.short_names, ["rc"]);
    assert!(h.scale_subresource());
}

#[test]
fn replication_controllers_are_validated_as_kubernetes_does() {
    let h = WorkloadHandler(Workload::ReplicationController);
    let mut rc = replication_controller(json!({"selector": {"app": "other"}}));
    rc["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    rc["spec"]["template"]["spec"]["activeDeadlineSeconds"] = json!(30);
    rc["spec"]["replicas"] = json!(-2);
    assert_eq!(
        errors(h, &rc),
        [
            "spec.replicas: Invalid value: -2: must be greater than or equal to 0",
            r#"spec.template.metadata.labels: Invalid value: {"app":"web","tier":"fe"}: `selector` does not match template `labels`"#,
            r#"spec.template.spec.restartPolicy: Unsupported value: "OnFailure": supported values: "Always""#,
            "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicationController is not Supported",
        ]
    );
    // No template: no selector to default either.
    let bare = json!({"apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": "web", "namespace": "default"}, "spec": {}});
    let mut bare = h.decode(bare).unwrap();
    h.default(&mut bare);
    assert_eq!(errors(h, &bare), ["spec.template: Required value"]);
    // Template labels empty and no selector: the selector is required.
    let mut unlabeled = replication_controller(json!({}));
    unlabeled["spec"]["selector"] = json!({});
    unlabeled["spec"]["template"]["metadata"]["labels"] = json!({});
    assert_eq!(errors(h, &unlabeled), ["spec.selector: Required value"]);
    let mut bad_key = replication_controller(json!({}));
    bad_key["spec"]["selector"] = json!({"bad key": "web"});
    assert!(errors(h, &bad_key)[0].starts_with("spec.selector: Invalid value"));
    // Unlike apps/v1 selectors, an RC's may change.
    let old = replication_controller(json!({}));
    let mut new = old.clone();
    new["spec"]["selector"] = json!({"app": "web"});
    assert!(h.validate_update(&new, &old).is_ok());
}

#[test]
fn replication_controller_rows_show_desired_current_and_ready() {
    let h = WorkloadHandler(Workload::ReplicationController);
    let mut rc = replication_controller(json!({"replicas": 3, "selector": {"app": "web"}}));
    rc["status"] = json!({"replicas": 2, "readyReplicas": 1});
    rc["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    assert_eq!(
        h.table_row(&rc, 1_735_689_600 + 60),
        vec![
            json!("web"),
            json!(3),
            json!(2),
            json!(1),
            json!("60s"),
            json!("nginx"),
            json!("nginx:1.25"),
            json!("app=web")
        ]
    );
    let names: Vec<&str> = h.columns().iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
}

#[test]
fn statefulset_volume_claim_templates_are_refused_naming_the_field() {
    let s = WorkloadHandler(Workload::StatefulSet);
    let mut ss = deployment(json!({}));
    ss["kind"] = json!("StatefulSet");
    ss["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
    let mut ss = s.decode(ss).unwrap();
    s.default(&mut ss);
    assert_eq!(
        errors(s, &ss),
        [format!(
            "spec.volumeClaimTemplates: Forbidden: {VOLUME_CLAIM_TEMPLATES_UNSUPPORTED}"
        )]
    );
    ss["spec"]["volumeClaimTemplates"] = json!([]);
    assert!(errors(s, &ss).is_empty());
}
