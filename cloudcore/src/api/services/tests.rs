//! Unit tests of Service defaulting, validation, allocation and printing.

use super::*;

fn held_by<K: std::hash::Hash + Eq>(keys: impl IntoIterator<Item = K>) -> HashMap<K, String> {
    keys.into_iter()
        .map(|k| (k, "default/other".to_string()))
        .collect()
}

fn svc(spec: Value) -> Value {
    let mut v = decode_as::<Service>(
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
    )
    .unwrap();
    ServiceHandler::new(ServiceNetwork::default()).default(&mut v);
    v
}

fn fields(r: Result<(), Vec<FieldError>>) -> Vec<String> {
    r.err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn defaults_match_kubernetes() {
    let v = svc(
        json!({"selector": {"app": "web"}, "ports": [{"port": 80}, {"name": "x", "port": 81, "targetPort": "http"}]}),
    );
    let spec = &v["spec"];
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][0]["targetPort"], 80);
    assert_eq!(spec["ports"][1]["targetPort"], "http");
    assert!(spec.get("externalTrafficPolicy").is_none());
    let np = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    let ext = svc(json!({"type": "ExternalName", "externalName": "db.example.com"}));
    assert!(ext["spec"].get("ipFamilies").is_none());
    assert!(ext["spec"].get("internalTrafficPolicy").is_none());
    assert!(ServiceHandler::new(ServiceNetwork::default())
        .validate(&ext)
        .is_ok());
    let sticky = svc(json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}));
    assert_eq!(
        sticky["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
}

#[test]
fn validation_reports_each_field() {
    let h = ServiceHandler::new(ServiceNetwork::default());
    assert!(h
        .validate(&svc(
            json!({"ports": [{"port": 80}], "selector": {"app": "web"}})
        ))
        .is_ok());
    let bad = svc(json!({"type": "Bogus", "selector": {"-bad": "ok"},
        "ports": [{"port": 0, "protocol": "ICMP"}, {"name": "Web", "port": 80},
                  {"name": "a", "port": 81, "nodePort": 30001}, {"name": "a", "port": 81}]}));
    assert_eq!(
        fields(h.validate(&bad)),
        [
            "spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
            "spec.ports[0].name: Required value",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            // Defaulted from the port, as in Kubernetes, so reported too.
            "spec.ports[0].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.ports[1].name: Invalid value: \"Web\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            "spec.ports[2].nodePort: Forbidden: may not be used when `type` is 'Bogus'",
            "spec.ports[3].name: Duplicate value: \"a\"",
            "spec.ports[3]: Duplicate value: {\"port\":81,\"protocol\":\"TCP\"}",
            "spec.selector: Invalid value: \"-bad\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        ]
    );
    let no_ports = svc(json!({}));
    assert_eq!(
        fields(h.validate(&no_ports)),
        ["spec.ports: Required value"]
    );
    // A headless Service needs no ports.
    assert!(h.validate(&svc(json!({"clusterIP": "None"}))).is_ok());
    let headless_np = svc(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 1}]}));
    assert_eq!(
        fields(h.validate(&headless_np)),
        ["spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"]
    );
    let ext = svc(json!({"type": "ExternalName", "clusterIP": "10.96.0.9"}));
    assert_eq!(
        fields(h.validate(&ext)),
        [
            "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
            "spec.externalName: Required value",
        ]
    );
}

#[test]
fn cidrs_and_ranges_parse_with_clear_errors() {
    let c: ServiceCidr = "10.96.0.0/12".parse().unwrap();
    assert_eq!(c, ServiceNetwork::default().cidr);
    assert!(c.contains("10.96.0.1".parse().unwrap()));
    assert!(c.contains("10.111.255.254".parse().unwrap()));
    assert!(!c.contains("10.96.0.0".parse().unwrap()));
    assert!(!c.contains("10.111.255.255".parse().unwrap()));
    assert!(!c.contains("10.112.0.1".parse().unwrap()));
    for bad in [
        "10.96.0.1/12",
        "10.96.0.0",
        "fd00::/108",
        "10.0.0.0/8",
        "10.0.0.0/31",
    ] {
        assert!(bad.parse::<ServiceCidr>().is_err(), "{bad}");
    }
    let r: NodePortRange = "30000-32767".parse().unwrap();
    assert_eq!(r, ServiceNetwork::default().node_ports);
    assert!("3-2".parse::<NodePortRange>().is_err());
    assert_eq!(
        "x".parse::<NodePortRange>().unwrap_err().to_string(),
        "invalid node port range \"x\": expected FIRST-LAST, such as 30000-32767"
    );
}

#[test]
fn assignment_never_hands_out_a_held_value() {
    // A /29 has 6 usable addresses; with 5 held, the sixth is the only answer.
    let h = ServiceHandler::new(ServiceNetwork {
        cidr: "10.0.0.0/29".parse().unwrap(),
        node_ports: "30000-30002".parse().unwrap(),
        cluster_dns: None,
    });
    let used = held_by((1..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)));
    let ports = held_by([30000i64, 30002]);
    let mut v = svc(
        json!({"type": "NodePort", "ports": [{"port": 80}, {"name": "u", "port": 80, "protocol": "UDP"}]}),
    );
    assert!(h.assign(&mut v, None, &used, &ports).is_empty());
    assert_eq!(v["spec"]["clusterIP"], "10.0.0.6");
    assert_eq!(v["spec"]["clusterIPs"], json!(["10.0.0.6"]));
    // One port number over TCP and UDP shares its node port, as in Kubernetes.
    assert_eq!(v["spec"]["ports"][0]["nodePort"], 30001);
    assert_eq!(v["spec"]["ports"][1]["nodePort"], 30001);
    let all = held_by((1..=6).map(|i| Ipv4Addr::new(10, 0, 0, i)));
    let mut full = svc(json!({"ports": [{"port": 80}]}));
    let errs = h.assign(&mut full, None, &all, &ports);
    assert!(errs[0].to_string().contains("range is full"), "{errs:?}");
    let mut taken = svc(json!({"clusterIP": "10.0.0.5", "ports": [{"port": 80}]}));
    assert_eq!(
        h.assign(&mut taken, None, &used, &ports)[0].to_string(),
        "spec.clusterIPs: Invalid value: [\"10.0.0.5\"]: failed to allocate IP 10.0.0.5: provided IP is already allocated (by Service default/other)"
    );
    let mut outside = svc(
        json!({"type": "NodePort", "clusterIP": "10.1.0.5", "ports": [{"port": 80, "nodePort": 30002}, {"name": "b", "port": 81, "nodePort": 80}]}),
    );
    assert_eq!(
        fields(result(h.assign(&mut outside, None, &used, &ports))),
        [
            "spec.clusterIPs: Invalid value: [\"10.1.0.5\"]: failed to allocate IP 10.1.0.5: the provided IP (10.1.0.5) is not in the valid range. The range of valid IPs is 10.0.0.0/29",
            "spec.ports[0].nodePort: Invalid value: 30002: provided port is already allocated (by Service default/other)",
            "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-30002",
        ]
    );
    // A headless Service takes nothing.
    let mut headless = svc(json!({"clusterIP": "None"}));
    assert!(h.assign(&mut headless, None, &all, &ports).is_empty());
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    assert!(!takes_something(&headless, None));
}

#[test]
fn the_cluster_dns_address_is_never_handed_out_nor_granted_on_request() {
    // A /29 has 6 usable addresses: with 5 held and the sixth the cluster DNS, the range is
    // full rather than giving pods' nameserver to a Service.
    let h = ServiceHandler::new(ServiceNetwork {
        cidr: "10.0.0.0/29".parse().unwrap(),
        node_ports: "30000-30002".parse().unwrap(),
        cluster_dns: Some(Ipv4Addr::new(10, 0, 0, 6)),
    });
    let none = held_by(std::iter::empty::<Ipv4Addr>());
    let ports = held_by(std::iter::empty::<i64>());
    let used = held_by((1..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)));
    let mut v = svc(json!({"ports": [{"port": 80}]}));
    let errs = h.assign(&mut v, None, &used, &ports);
    assert!(errs[0].to_string().contains("range is full"), "{errs:?}");
    // Over many picks from an empty range, never the reserved one.
    for _ in 0..200 {
        let mut v = svc(json!({"ports": [{"port": 80}]}));
        assert!(h.assign(&mut v, None, &none, &ports).is_empty());
        assert_ne!(v["spec"]["clusterIP"], "10.0.0.6");
    }
    // Asked for by name, even as kube-system/kube-dns: a 422 naming the field.
    let mut kube_dns = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.0.0.6", "ports": [{"port": 53, "protocol": "UDP"}]}});
    let errs = h.assign(&mut kube_dns, None, &none, &ports);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let text = errs[0].to_string();
    assert!(
        text.starts_with("spec.clusterIPs: Invalid value: [\"10.0.0.6\"]: failed to allocate IP 10.0.0.6: provided IP is reserved for the cluster DNS"),
        "{text}"
    );
    // A Service that held it before the reservation keeps it across an update (it is not
    // routed by the edges, whose proxy skips it).
    let old = json!({"spec": {"clusterIP": "10.0.0.6", "clusterIPs": ["10.0.0.6"], "ports": [{"port": 80}]}});
    let mut update = svc(json!({"clusterIP": "10.0.0.6", "ports": [{"port": 80}]}));
    assert!(h.assign(&mut update, Some(&old), &none, &ports).is_empty());
}

#[test]
fn updates_keep_what_was_allocated() {
    let h = ServiceHandler::new(ServiceNetwork::default());
    let mut old = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
    assert!(h
        .assign(&mut old, None, &HashMap::new(), &HashMap::new())
        .is_empty());
    let ip = old["spec"]["clusterIP"].clone();
    let np = old["spec"]["ports"][0]["nodePort"].clone();
    // A replace from the original manifest.
    let mut new = svc(json!({"type": "NodePort", "ports": [{"port": 80}], "selector": {"a": "b"}}));
    h.prepare_update(&mut new, &old);
    assert_eq!(new["spec"]["clusterIP"], ip);
    assert_eq!(new["spec"]["ports"][0]["nodePort"], np);
    assert!(h.validate_update(&new, &old).is_ok());
    assert!(!takes_something(&new, Some(&old)));
    // Back to ClusterIP: the node ports go, the address stays.
    let mut back = old.clone();
    back["spec"]["type"] = json!("ClusterIP");
    h.prepare_update(&mut back, &old);
    assert!(back["spec"]["ports"][0].get("nodePort").is_none());
    assert!(back["spec"].get("externalTrafficPolicy").is_none());
    assert!(h.validate(&back).is_ok());
    // To ExternalName: the address goes too.
    let mut ext = old.clone();
    ext["spec"]["type"] = json!("ExternalName");
    ext["spec"]["externalName"] = json!("db.example.com");
    h.prepare_update(&mut ext, &old);
    assert!(ext["spec"].get("clusterIP").is_none());
    assert!(h.validate(&ext).is_ok(), "{:?}", h.validate(&ext));
    let mut moved = old.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.77");
    moved["spec"]["clusterIPs"] = json!(["10.96.0.77"]);
    assert_eq!(
        fields(h.validate_update(&moved, &old)),
        ["spec.clusterIPs[0]: Invalid value: \"10.96.0.77\": may not change once set"]
    );
}

#[test]
fn table_rows_look_like_kubectl() {
    let h = ServiceHandler::new(ServiceNetwork::default());
    let mut v = svc(
        json!({"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"b": "2", "a": "1"},
        "ports": [{"port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    v["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    assert_eq!(
        h.table_row(&v, 1_735_689_600 + 60),
        vec![
            json!("web"),
            json!("NodePort"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("80:30080/TCP,53/UDP"),
            json!("60s"),
            json!("a=1,b=2"),
        ]
    );
    let lb = svc(json!({"type": "LoadBalancer", "ports": [{"port": 443}]}));
    assert_eq!(external_ip(&lb), "<pending>");
    let ext = svc(json!({"type": "ExternalName", "externalName": "db.example.com"}));
    let row = h.table_row(&ext, 0);
    assert_eq!(
        (&row[2], &row[3], &row[4]),
        (&json!("<none>"), &json!("db.example.com"), &json!("<none>"))
    );
    let headless = svc(json!({"clusterIP": "None"}));
    assert_eq!(h.table_row(&headless, 0)[2], "None");
}

#[test]
fn affinity_and_load_balancer_fields_are_checked() {
    let h = ServiceHandler::new(ServiceNetwork::default());
    let long = svc(
        json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}],
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
    );
    assert_eq!(
        fields(h.validate(&long)),
        ["spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"]
    );
    let day = svc(
        json!({"sessionAffinity": "ClientIP", "ports": [{"port": 80}],
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}}),
    );
    assert!(h.validate(&day).is_ok());
    let stray = svc(json!({"ports": [{"port": 80}],
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}}));
    assert_eq!(
        fields(h.validate(&stray)),
        ["spec.sessionAffinityConfig: Invalid value: {\"clientIP\":{\"timeoutSeconds\":10}}: must not be set when session affinity is None"]
    );
    let lb_fields = svc(
        json!({"ports": [{"port": 80}], "allocateLoadBalancerNodePorts": true,
        "loadBalancerSourceRanges": ["10.0.0.0/8"]}),
    );
    assert_eq!(
        fields(h.validate(&lb_fields)),
        [
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'",
            "spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'",
        ]
    );
    let no_ports = svc(
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
        "ports": [{"port": 80}]}),
    );
    assert_eq!(
        h.validate(&no_ports).unwrap_err()[0].field,
        "spec.allocateLoadBalancerNodePorts"
    );
    // A LoadBalancer Service becomes a NodePort one: the defaulted LB field goes with the type.
    let mut old = svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}]}));
    assert!(h
        .assign(&mut old, None, &HashMap::new(), &HashMap::new())
        .is_empty());
    assert_eq!(old["spec"]["allocateLoadBalancerNodePorts"], true);
    let mut np = old.clone();
    np["spec"]["type"] = json!("NodePort");
    h.prepare_update(&mut np, &old);
    assert!(np["spec"].get("allocateLoadBalancerNodePorts").is_none());
    assert!(h.validate(&np).is_ok(), "{:?}", h.validate(&np));
}
