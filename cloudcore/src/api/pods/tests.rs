//! Unit tests of the pod rules: defaulting, validation, update rules, graceful deletion, tables.

use super::validation::GRPC_UNSUPPORTED;
use super::*;

fn pod(spec: Value) -> Value {
    let mut p =
        decode_as::<Pod>(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}))
            .unwrap();
    PodHandler.default(&mut p);
    p
}

fn fields(r: Result<(), Vec<FieldError>>) -> Vec<(String, &'static str)> {
    r.err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.field.clone(), e.reason()))
        .collect()
}

#[test]
fn defaults() {
    let p = pod(json!({"containers": [
        {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
        {"name": "b", "image": "nginx:1.25"},
        {"name": "c", "image": "reg:5000/x"},
        {"name": "d", "image": "x@sha256:abc"},
        {"name": "e", "image": "x:latest", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2", "memory": "1Gi"}}}],
        "volumes": [{"name": "v"}]}));
    let s = &p["spec"];
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["terminationGracePeriodSeconds"], 30);
    assert_eq!(s["dnsPolicy"], "ClusterFirst");
    assert_eq!(s["schedulerName"], "default-scheduler");
    let pulls: Vec<&str> = s["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["imagePullPolicy"].as_str().unwrap())
        .collect();
    assert_eq!(
        pulls,
        ["Always", "IfNotPresent", "Always", "IfNotPresent", "Always"]
    );
    assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
    assert_eq!(
        s["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(s["volumes"][0]["emptyDir"], json!({}));
    assert_eq!(
        s["containers"][4]["resources"]["requests"],
        json!({"cpu": "1", "memory": "1Gi"})
    );
    assert_eq!(s["containers"][0]["resources"], json!({}));
}

#[test]
fn validation_reports_each_field() {
    let p = pod(json!({
        "restartPolicy": "Sometimes",
        "terminationGracePeriodSeconds": -1,
        "volumes": [{"name": "v"}, {"name": "v"}, {"name": "Bad_Name"}],
        "containers": [
            {"name": "a", "image": "", "ports": [{"containerPort": 0}, {"containerPort": 80, "hostPort": 70000}],
             "volumeMounts": [{"name": "missing", "mountPath": "/x"}],
             "resources": {"requests": {"cpu": "lots", "memory": "64Mi"}, "limits": {"memory": "32Mi"}}},
            {"name": "a", "image": "x"},
            {"name": "UPPER", "image": "x"}]}));
    let got = fields(PodHandler.validate(&p));
    let want = [
        ("spec.volumes[1].name", "FieldValueDuplicate"),
        ("spec.volumes[2].name", "FieldValueInvalid"),
        ("spec.containers[0].image", "FieldValueRequired"),
        (
            "spec.containers[0].ports[0].containerPort",
            "FieldValueInvalid",
        ),
        ("spec.containers[0].ports[1].hostPort", "FieldValueInvalid"),
        (
            "spec.containers[0].volumeMounts[0].name",
            "FieldValueNotFound",
        ),
        (
            "spec.containers[0].resources.requests[cpu]",
            "FieldValueInvalid",
        ),
        ("spec.containers[0].resources.requests", "FieldValueInvalid"),
        ("spec.containers[1].name", "FieldValueDuplicate"),
        ("spec.containers[2].name", "FieldValueInvalid"),
        ("spec.restartPolicy", "FieldValueNotSupported"),
        ("spec.terminationGracePeriodSeconds", "FieldValueInvalid"),
    ];
    let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
    assert_eq!(got, want);
    assert_eq!(
        fields(PodHandler.validate(&pod(json!({"containers": []})))),
        [("spec.containers".to_string(), "FieldValueRequired")]
    );
    assert!(PodHandler.validate(&pod(json!({"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "100m", "memory": "1e3"}}}]}))).is_ok());
}

#[test]
fn dns_config_is_validated_as_kubernetes_does() {
    let c = json!([{"name": "a", "image": "x"}]);
    let none = fields(PodHandler.validate(&pod(json!({"dnsPolicy": "None", "containers": c}))));
    assert_eq!(none, [("spec.dnsConfig".to_string(), "FieldValueRequired")]);
    let empty =
        pod(json!({"dnsPolicy": "None", "dnsConfig": {"searches": ["a"]}, "containers": c}));
    assert_eq!(
        fields(PodHandler.validate(&empty)),
        [(
            "spec.dnsConfig.nameservers".to_string(),
            "FieldValueRequired"
        )]
    );
    let bad = pod(
        json!({"dnsPolicy": "Defaultish", "containers": c, "dnsConfig": {
        "nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "dns.example"],
        "searches": ["ok.example.", "Bad_Domain", "x".repeat(2048)],
        "options": [{"name": "ndots", "value": "2"}, {"value": "1"}]}}),
    );
    let got = fields(PodHandler.validate(&bad));
    let want = [
        ("spec.dnsPolicy", "FieldValueNotSupported"),
        ("spec.dnsConfig.nameservers", "FieldValueInvalid"),
        ("spec.dnsConfig.nameservers[3]", "FieldValueInvalid"),
        ("spec.dnsConfig.searches", "FieldValueInvalid"),
        ("spec.dnsConfig.searches[1]", "FieldValueInvalid"),
        ("spec.dnsConfig.searches[2]", "FieldValueInvalid"),
        ("spec.dnsConfig.options[1]", "FieldValueRequired"),
    ];
    let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
    assert_eq!(got, want);
    let too_many: Vec<String> = (0..33).map(|i| format!("s{i}.example")).collect();
    let many = pod(json!({"containers": c, "dnsConfig": {"searches": too_many}}));
    assert_eq!(
        fields(PodHandler.validate(&many)),
        [("spec.dnsConfig.searches".to_string(), "FieldValueInvalid")]
    );
    let good = pod(json!({"dnsPolicy": "None", "containers": c, "dnsConfig": {
        "nameservers": ["10.96.0.10", "2001:db8::1"], "searches": ["ns.svc.cluster.local", "cluster.local."],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
    assert!(PodHandler.validate(&good).is_ok());
}

#[test]
fn probes_are_defaulted_like_kubernetes() {
    let p = pod(json!({"containers": [{"name": "a", "image": "x",
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"port": "http"}, "periodSeconds": 0},
        "readinessProbe": {"tcpSocket": {"port": 8080}, "failureThreshold": 7}}]}));
    let c = &p["spec"]["containers"][0];
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": {"port": "http", "path": "/", "scheme": "HTTP"},
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
    );
    assert_eq!(c["readinessProbe"]["failureThreshold"], 7);
    assert!(PodHandler.validate(&p).is_ok());
}

#[test]
fn probes_the_edge_cannot_run_are_refused() {
    let p = pod(json!({"containers": [{"name": "a", "image": "x",
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"grpc": {"port": 9000}, "successThreshold": 2},
        "readinessProbe": {"httpGet": {"port": "metrics"}, "initialDelaySeconds": -1,
            "terminationGracePeriodSeconds": 5},
        "startupProbe": {"tcpSocket": {"port": 70000}, "exec": {"command": ["true"]},
            "timeoutSeconds": -2}}]}));
    let got = fields(PodHandler.validate(&p));
    let want = [
        (
            "spec.containers[0].livenessProbe.grpc",
            "FieldValueForbidden",
        ),
        (
            "spec.containers[0].livenessProbe.successThreshold",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].readinessProbe.httpGet.port",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].readinessProbe.initialDelaySeconds",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].startupProbe.tcpSocket",
            "FieldValueForbidden",
        ),
        (
            "spec.containers[0].startupProbe.tcpSocket.port",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].startupProbe.timeoutSeconds",
            "FieldValueInvalid",
        ),
    ];
    let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
    assert_eq!(got, want);
    let errs = PodHandler.validate(&p).unwrap_err();
    assert!(
        errs[0].to_string().contains(GRPC_UNSUPPORTED),
        "{}",
        errs[0]
    );
    assert!(errs[2].to_string().contains("\"metrics\""), "{}", errs[2]);
    let none = pod(
        json!({"containers": [{"name": "a", "image": "x", "livenessProbe": {"periodSeconds": 5}}]}),
    );
    assert_eq!(
        fields(PodHandler.validate(&none)),
        [(
            "spec.containers[0].livenessProbe".to_string(),
            "FieldValueRequired"
        )]
    );
}

#[test]
fn config_references_are_checked() {
    let p = pod(json!({"containers": [{"name": "a", "image": "x",
        "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "", "key": ".."}}},
                {"name": "B", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "C", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        "envFrom": [{"prefix": "P_"}, {"configMapRef": {"name": "c"}, "secretRef": {"name": "s"}},
                    {"secretRef": {"name": "Bad_Name"}}]}],
        "volumes": [{"name": "v", "secret": {"items": [{"key": "k", "path": "/abs"}]}},
                    {"name": "w", "configMap": {"name": "c", "items": [{"key": "k", "path": "a/../../b"}]}}]}));
    let got = fields(PodHandler.validate(&p));
    let want = [
        ("spec.volumes[0].secret.secretName", "FieldValueRequired"),
        ("spec.volumes[0].secret.items[0].path", "FieldValueInvalid"),
        (
            "spec.volumes[1].configMap.items[0].path",
            "FieldValueInvalid",
        ),
        (
            "spec.containers[0].env[0].valueFrom.configMapKeyRef.name",
            "FieldValueRequired",
        ),
        (
            "spec.containers[0].env[0].valueFrom.configMapKeyRef.key",
            "FieldValueInvalid",
        ),
        ("spec.containers[0].env[2].valueFrom", "FieldValueInvalid"),
        ("spec.containers[0].envFrom[0]", "FieldValueInvalid"),
        ("spec.containers[0].envFrom[1]", "FieldValueForbidden"),
        (
            "spec.containers[0].envFrom[2].secretRef.name",
            "FieldValueInvalid",
        ),
        // What the edge cannot run comes last (`projection::support`).
        (
            "spec.containers[0].env[1].valueFrom.resourceFieldRef",
            "FieldValueForbidden",
        ),
    ];
    let want: Vec<(String, &str)> = want.iter().map(|(f, r)| (f.to_string(), *r)).collect();
    assert_eq!(got, want);
}

#[test]
fn device_annotations_are_checked_and_frozen() {
    let with = |annotations: Value| {
        let mut p = decode_as::<Pod>(json!({"metadata": {"name": "p", "namespace": "default",
            "annotations": annotations},
            "spec": {"containers": [{"name": "reader", "image": "x"}]}}))
        .unwrap();
        PodHandler.default(&mut p);
        p
    };
    let ok = with(json!({"devices.skerry.io/reader": "/dev/ttyUSB0,/dev/ttyACM0:/dev/ttyS0:rw"}));
    assert!(PodHandler.validate(&ok).is_ok());
    for bad in [
        "/etc/passwd",
        "/dev/ttyUSB0:/dev/ttyUSB0:rwx",
        "ttyUSB0",
        "/dev/a,,/dev/b",
    ] {
        let p = with(json!({"devices.skerry.io/reader": bad}));
        assert_eq!(
            fields(PodHandler.validate(&p)),
            [(
                "metadata.annotations[devices.skerry.io/reader]".to_string(),
                "FieldValueInvalid"
            )],
            "{bad}"
        );
    }
    let stray = with(json!({"devices.skerry.io/writer": "/dev/ttyUSB0"}));
    let errs = PodHandler.validate(&stray).unwrap_err();
    assert!(
        errs[0].to_string().contains("names no container"),
        "{}",
        errs[0]
    );
    // Other annotations may change; device annotations may not.
    let mut relabelled = ok.clone();
    relabelled["metadata"]["annotations"]["note"] = json!("x");
    assert!(PodHandler.validate_update(&relabelled, &ok).is_ok());
    let mut moved = ok.clone();
    moved["metadata"]["annotations"]["devices.skerry.io/reader"] = json!("/dev/ttyUSB1");
    assert_eq!(
        fields(PodHandler.validate_update(&moved, &ok)),
        [(
            "metadata.annotations[devices.skerry.io/reader]".to_string(),
            "FieldValueForbidden"
        )]
    );
}

#[test]
fn qos() {
    let q = |spec: Value| {
        let p: Pod = serde_json::from_value(json!({"spec": spec})).unwrap();
        qos_class(&p.spec.unwrap())
    };
    assert_eq!(q(json!({"containers": [{"name": "a"}]})), "BestEffort");
    assert_eq!(
        q(
            json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
        ),
        "Guaranteed"
    );
    assert_eq!(
        q(
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]})
        ),
        "Guaranteed"
    );
    assert_eq!(
        q(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]})),
        "Burstable"
    );
}

#[test]
fn update_rules() {
    let old = pod(
        json!({"containers": [{"name": "a", "image": "x:1"}], "tolerations": [{"key": "k", "operator": "Exists"}]}),
    );
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("x:2");
    new["spec"]["activeDeadlineSeconds"] = json!(10);
    new["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "j", "operator": "Exists"}));
    assert!(validate_spec_update(&new, &old).is_empty());
    let mut bad = old.clone();
    bad["spec"]["restartPolicy"] = json!("Never");
    let errs = validate_spec_update(&bad, &old);
    assert_eq!(errs.len(), 1);
    assert!(errs[0]
        .to_string()
        .starts_with("spec: Forbidden: pod updates may not change fields other than"));
    let mut bad = old.clone();
    bad["spec"]["tolerations"] = json!([]);
    assert_eq!(validate_spec_update(&bad, &old).len(), 1);
    let mut with_deadline = old.clone();
    with_deadline["spec"]["activeDeadlineSeconds"] = json!(10);
    let mut longer = with_deadline.clone();
    longer["spec"]["activeDeadlineSeconds"] = json!(20);
    assert_eq!(
        validate_spec_update(&longer, &with_deadline)[0].field,
        "spec.activeDeadlineSeconds"
    );
}

#[test]
fn graceful_delete() {
    let now = "2025-01-01T00:00:00Z";
    let mut bound = pod(json!({"nodeName": "n1", "containers": [{"name": "a", "image": "x"}]}));
    bound["status"] = json!({"phase": "Running"});
    let DeleteAction::Update(t) = PodHandler.on_delete(&bound, &DeleteOptions::default(), now)
    else {
        panic!()
    };
    assert_eq!(t["metadata"]["deletionTimestamp"], "2025-01-01T00:00:30Z");
    assert_eq!(t["metadata"]["deletionGracePeriodSeconds"], 30);
    // Same or longer grace: nothing changes; shorter: shortened; zero: force delete.
    assert_eq!(
        PodHandler.on_delete(
            &t,
            &DeleteOptions {
                grace_period_seconds: Some(30)
            },
            now
        ),
        DeleteAction::Unchanged
    );
    let DeleteAction::Update(s) = PodHandler.on_delete(
        &t,
        &DeleteOptions {
            grace_period_seconds: Some(5),
        },
        "2025-01-01T00:00:10Z",
    ) else {
        panic!()
    };
    assert_eq!(s["metadata"]["deletionGracePeriodSeconds"], 5);
    assert_eq!(s["metadata"]["deletionTimestamp"], "2025-01-01T00:00:15Z");
    assert_eq!(
        PodHandler.on_delete(
            &t,
            &DeleteOptions {
                grace_period_seconds: Some(0)
            },
            now
        ),
        DeleteAction::Delete
    );
    let DeleteAction::Update(n) = PodHandler.on_delete(
        &bound,
        &DeleteOptions {
            grace_period_seconds: Some(-3),
        },
        now,
    ) else {
        panic!()
    };
    assert_eq!(n["metadata"]["deletionGracePeriodSeconds"], 1);
    let unbound = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
    assert_eq!(
        PodHandler.on_delete(&unbound, &DeleteOptions::default(), now),
        DeleteAction::Delete
    );
    bound["status"]["phase"] = json!("Succeeded");
    assert_eq!(
        PodHandler.on_delete(&bound, &DeleteOptions::default(), now),
        DeleteAction::Delete
    );
}

#[test]
fn table_rows() {
    let now = 1_735_689_600; // 2025-01-01T00:00:00Z
    let mut p = pod(
        json!({"nodeName": "edge-1", "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}),
    );
    p["metadata"]["creationTimestamp"] = json!("2024-12-31T23:55:00Z");
    p["status"] = json!({"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
        {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
        {"name": "b", "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-12-31T23:59:00Z"}}}]});
    let row = PodHandler.table_row(&p, now);
    assert_eq!(
        row,
        vec![
            json!("p"),
            json!("1/2"),
            json!("CrashLoopBackOff"),
            json!("3 (60s ago)"),
            json!("5m"),
            json!("10.0.0.5"),
            json!("edge-1")
        ]
    );
    p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    assert_eq!(PodHandler.table_row(&p, now)[2], "Terminating");
    let fresh = pod(json!({"containers": [{"name": "a", "image": "x"}]}));
    let row = PodHandler.table_row(&fresh, now);
    assert_eq!(row[1], "0/1");
    assert_eq!(row[2], "Pending");
    assert_eq!(row[3], "0");
    assert_eq!(row[4], "<unknown>");
    assert_eq!(row[5], "<none>");
    let mut done = fresh.clone();
    done["status"] = json!({"phase": "Succeeded", "containerStatuses": [{"name": "a", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]});
    assert_eq!(display_status(&done), "Completed");
    let mut init = pod(
        json!({"initContainers": [{"name": "i", "image": "x"}], "containers": [{"name": "a", "image": "x"}]}),
    );
    init["status"] = json!({"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]});
    assert_eq!(display_status(&init), "Init:0/1");
}

#[test]
fn init_container_statuses_print_as_kubectl_prints_them() {
    let two = pod(
        json!({"initContainers": [{"name": "i", "image": "x"}, {"name": "j", "image": "x"},
            {"name": "s", "image": "x", "restartPolicy": "Always"}],
        "containers": [{"name": "a", "image": "x"}]}),
    );
    let done = json!({"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
    let with = |init: Value, apps: Value, initialized: bool| {
        let mut p = two.clone();
        p["status"] = json!({"phase": "Pending", "initContainerStatuses": init, "containerStatuses": apps,
            "conditions": [{"type": "Initialized", "status": if initialized {"True"} else {"False"}}]});
        p
    };
    let waiting = |r: &str| json!({"name": "a", "state": {"waiting": {"reason": r}}});
    let cases = [
        (
            json!([{"name": "i", "state": {"waiting": {"reason": "ContainerCreating"}}}]),
            false,
            "Init:ContainerCreating",
        ),
        (
            json!([done, {"name": "j", "state": {"running": {}}}]),
            false,
            "Init:1/3",
        ),
        (
            json!([{"name": "i", "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]),
            false,
            "Init:CrashLoopBackOff",
        ),
        (
            json!([{"name": "i", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]),
            false,
            "Init:Error",
        ),
        (
            json!([{"name": "i", "state": {"terminated": {"exitCode": 3}}}]),
            false,
            "Init:ExitCode:3",
        ),
        // A started sidecar does not hold the count; then the app containers speak.
        (
            json!([done, done, {"name": "s", "started": true, "state": {"running": {}}}]),
            true,
            "PodInitializing",
        ),
    ];
    for (init, initialized, want) in cases {
        let p = with(init, json!([waiting("PodInitializing")]), initialized);
        assert_eq!(display_status(&p), want);
    }
    // READY counts the sidecars, as kubectl does.
    let sidecar = json!({"name": "s", "started": true, "ready": true, "state": {"running": {}}});
    let running = json!({"name": "a", "ready": true, "state": {"running": {}}});
    let p = with(json!([done, done, sidecar]), json!([running]), true);
    assert_eq!(super::table::ready(&p), "2/2");
    assert_eq!(
        display_status(&p),
        "Pending",
        "the phase, once every container runs"
    );
    let crashing = with(
        json!([{"name": "i", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]),
        json!([waiting("PodInitializing")]),
        false,
    );
    assert_eq!(
        super::table::restarts(&crashing, 0),
        "4",
        "init restarts count"
    );
}

#[test]
fn init_containers_are_validated_as_kubernetes_does_and_carried_to_the_edge() {
    let p = pod(json!({"initContainers": [
            {"name": "flash", "image": "x"},
            {"name": "proxy", "image": "x", "restartPolicy": "Always",
             "startupProbe": {"exec": {"command": ["true"]}}}],
        "containers": [{"name": "a", "image": "x"}]}));
    assert!(
        PodHandler.validate(&p).is_ok(),
        "{:?}",
        PodHandler.validate(&p)
    );
    let mut stored = p.clone();
    stored["metadata"]["uid"] = json!("u-1");
    stored["spec"]["nodeName"] = json!("n1");
    let edge = crate::projection::edge_pod(&stored).expect("projects");
    let init: Vec<(&str, bool)> = edge
        .init_containers
        .iter()
        .map(|i| (i.container.name.as_str(), i.sidecar))
        .collect();
    assert_eq!(init, vec![("flash", false), ("proxy", true)]);
    assert!(edge.init_containers[1].container.startup_probe.is_some());
    assert_eq!(edge.containers.len(), 1);

    let bad = pod(json!({"initContainers": [
            {"name": "a", "image": "x"},
            {"name": "p", "image": "x", "readinessProbe": {"exec": {"command": ["true"]}}},
            {"name": "q", "image": "x", "restartPolicy": "OnFailure"}],
        "containers": [{"name": "a", "image": "x", "restartPolicy": "Always"}]}));
    let errs: Vec<String> = PodHandler
        .validate(&bad)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        vec![
            "spec.initContainers[1].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always".to_string(),
            r#"spec.initContainers[2].restartPolicy: Unsupported value: "OnFailure": supported values: "Always""#.to_string(),
            r#"spec.containers[0].name: Duplicate value: "a""#.to_string(),
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers".to_string(),
        ]
    );
}

#[test]
fn what_the_edge_cannot_run_is_refused_by_the_api_naming_the_field() {
    let v = pod(json!({"containers": [{"name": "a", "image": "x"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}));
    let errs = PodHandler.validate(&v).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].to_string(),
        r#"spec.volumes[0].persistentVolumeClaim: Unsupported value: "persistentVolumeClaim": supported values: "configMap", "downwardAPI", "emptyDir", "hostPath", "projected", "secret""#
    );
    // The projection makes the same check: a stored pod that predates it is not sent.
    let mut stored = v;
    stored["metadata"]["uid"] = json!("u-1");
    let e = crate::projection::edge_pod(&stored).unwrap_err();
    assert!(
        e.reason
            .starts_with("spec.volumes[0].persistentVolumeClaim: Unsupported value"),
        "{e}"
    );
}

#[test]
fn stdin_stdin_once_and_tty_of_containers_are_accepted_and_carried_to_the_edge() {
    let p = pod(json!({"containers": [
        {"name": "a", "image": "x", "stdin": true, "stdinOnce": true, "tty": true},
        {"name": "b", "image": "x", "stdin": false}
    ]}));
    assert!(PodHandler.validate(&p).is_ok());
    let mut stored = p.clone();
    stored["metadata"]["uid"] = json!("u-1");
    stored["spec"]["nodeName"] = json!("n1");
    let edge = crate::projection::edge_pod(&stored).expect("projects");
    let (a, b) = (&edge.containers[0], &edge.containers[1]);
    assert!(a.stdin && a.stdin_once && a.tty, "{a:?}");
    assert!(!b.stdin && !b.stdin_once && !b.tty, "{b:?}");
}
