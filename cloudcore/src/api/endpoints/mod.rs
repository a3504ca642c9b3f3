//! Endpoints (core/v1 `endpoints`) and, in [`slices`], EndpointSlices
//! (`discovery.k8s.io/v1 endpointslices`): stored, listed and watched like every other kind,
//! with Kubernetes' validation (`ValidateEndpoints` of `pkg/apis/core/validation`,
//! `ValidateEndpointSlice` of `pkg/apis/discovery/validation`) and kubectl's columns.
//!
//! The controllers in [`crate::controllers::endpoints`] keep both for every Service with a
//! selector; for a Service without one, the objects the user writes here are what routes.
//! Validation refuses what no proxy could route (an address that is not an IP of the slice's
//! family, a loopback or link-local address, a port out of range, duplicate port names), so
//! what the edges receive is always usable.

pub mod slices;

pub use slices::{EndpointSliceHandler, ENDPOINT_SLICE_INFO};

use super::error::FieldError;
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::table::{age, Column};
use super::validation::{
    dns1123_label, dns1123_subdomain, errors_to_result as result, push_invalid, NameRule,
};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, Endpoints};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The Endpoints resource.
pub const ENDPOINTS_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "endpoints",
    singular: "endpoints",
    kind: "Endpoints",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["ep"],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

/// Kubernetes' `EndpointsOverCapacity` annotation, set when the controller truncated an
/// Endpoints object to [`MAX_ENDPOINTS_ADDRESSES`].
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Kubernetes' `EndpointsLastChangeTriggerTime` annotation.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The label the Endpoints controller marks its objects with (Kubernetes 1.33, KEP-4974).
pub const ENDPOINTS_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// Kubernetes' `IsHeadlessService` label, on the Endpoints and slices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The most addresses the Endpoints controller writes into one Endpoints object (Kubernetes'
/// `maxCapacity`); the rest are only in the EndpointSlices.
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;

/// Port protocols Kubernetes accepts on endpoints.
pub(crate) const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];

const COLUMNS: [Column; 3] = [
    super::table::NAME_COLUMN,
    Column {
        name: "Endpoints",
        kind: "string",
        format: "",
        description: "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
        priority: 0,
    },
    super::table::AGE_COLUMN,
];

/// The Endpoints [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointsHandler;

/// Kubernetes' `ValidateNonSpecialIP`: the problems with `ip` as the address of an endpoint
/// (unparsable, unspecified, loopback, link-local), empty when it is routable.
pub fn special_ip_problems(ip: &str) -> Vec<String> {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return vec!["must be a valid IP address".into()];
    };
    let mut out = Vec::new();
    if addr.is_unspecified() {
        out.push(format!("may not be unspecified ({ip})"));
    }
    if addr.is_loopback() {
        out.push("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let (link_local, link_local_multicast) = match addr {
        IpAddr::V4(a) => (
            a.is_link_local(),
            a.octets()[..3] == [224, 0, 0], // 224.0.0.0/24
        ),
        IpAddr::V6(a) => (
            (a.segments()[0] & 0xffc0) == 0xfe80,
            (a.segments()[0] & 0xff0f) == 0xff02,
        ),
    };
    if link_local {
        out.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if link_local_multicast {
        out.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
    out
}

/// Checks a `nodeName` and `hostname` shared by both kinds' endpoints.
pub(crate) fn check_node_and_hostname(
    path: &str,
    node_name: Option<&str>,
    hostname: Option<&str>,
    errs: &mut Vec<FieldError>,
) {
    if let Some(n) = node_name.filter(|n| !n.is_empty()) {
        push_invalid(errs, &format!("{path}.nodeName"), n, dns1123_subdomain(n));
    }
    if let Some(h) = hostname.filter(|h| !h.is_empty()) {
        push_invalid(errs, &format!("{path}.hostname"), h, dns1123_label(h));
    }
}

fn validate_address(a: &EndpointAddress, path: &str, errs: &mut Vec<FieldError>) {
    push_invalid(
        errs,
        &format!("{path}.ip"),
        &a.ip,
        special_ip_problems(&a.ip),
    );
    check_node_and_hostname(path, a.node_name.as_deref(), a.hostname.as_deref(), errs);
}

fn validate_ports(ports: &[EndpointPort], path: &str, errs: &mut Vec<FieldError>) {
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("{path}.ports[{i}]");
        match p.name.as_deref().unwrap_or("") {
            "" if ports.len() > 1 => errs.push(FieldError::required(format!("{at}.name"), "")),
            "" => {}
            n => {
                push_invalid(errs, &format!("{at}.name"), n, dns1123_label(n));
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{at}.name"), &json!(n)));
                }
            }
        }
        if !(1..=65535).contains(&p.port) {
            errs.push(FieldError::invalid(
                format!("{at}.port"),
                &json!(p.port),
                "must be between 1 and 65535, inclusive",
            ));
        }
        match p.protocol.as_deref() {
            None | Some("") => errs.push(FieldError::required(format!("{at}.protocol"), "")),
            Some(proto) if !PROTOCOLS.contains(&proto) => errs.push(FieldError::not_supported(
                format!("{at}.protocol"),
                &json!(proto),
                &PROTOCOLS,
            )),
            Some(_) => {}
        }
    }
}

/// Defaults every `protocol` left out of the port list at `pointer` to TCP (Kubernetes'
/// `SetDefaults_EndpointPort`, both kinds).
pub(crate) fn default_port_protocols(ports: Option<&mut Value>) {
    for p in ports
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        let unset = p
            .get("protocol")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if unset {
            p.insert("protocol".into(), json!("TCP"));
        }
    }
}

/// kubectl's `formatEndpoints`: ready `ip:port` pairs (or bare IPs for a subset without
/// ports), the first three and `+ N more...`; `<none>` without subsets.
pub fn endpoints_cell(ep: &Endpoints) -> String {
    let subsets = ep.subsets.as_deref().unwrap_or_default();
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    for ss in subsets {
        let addrs = ss.addresses.as_deref().unwrap_or_default();
        let ports = ss.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            count += addrs.len();
            list.extend(addrs.iter().map(|a| a.ip.clone()));
            continue;
        }
        for p in ports {
            count += addrs.len();
            list.extend(addrs.iter().map(|a| match a.ip.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => format!("[{}]:{}", a.ip, p.port),
                _ => format!("{}:{}", a.ip, p.port),
            }));
        }
    }
    list_with_more(list, count, MAX, "")
}

/// kubectl's `listWithMoreString`: the first `max` items joined by commas, `+ N more...` when
/// there are more, `empty` when there are none.
pub(crate) fn list_with_more(
    mut list: Vec<String>,
    count: usize,
    max: usize,
    empty: &str,
) -> String {
    let more = list.len() > max;
    list.truncate(max);
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - max)
    } else if joined.is_empty() {
        empty.to_string()
    } else {
        joined
    }
}

impl ResourceHandler for EndpointsHandler {
    fn info(&self) -> &ResourceInfo {
        &ENDPOINTS_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Endpoints>(obj)
    }

    fn default(&self, obj: &mut Value) {
        for ss in obj
            .get_mut("subsets")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default_port_protocols(ss.get_mut("ports"));
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let ep: Endpoints = typed(obj)?;
        let mut errs = Vec::new();
        for (i, ss) in ep.subsets.iter().flatten().enumerate() {
            let path = format!("subsets[{i}]");
            let ready = ss.addresses.as_deref().unwrap_or_default();
            let not_ready = ss.not_ready_addresses.as_deref().unwrap_or_default();
            if ready.is_empty() && not_ready.is_empty() {
                errs.push(FieldError::required(
                    path.clone(),
                    "must specify `addresses` or `notReadyAddresses`",
                ));
            }
            for (j, a) in ready.iter().enumerate() {
                validate_address(a, &format!("{path}.addresses[{j}]"), &mut errs);
            }
            for (j, a) in not_ready.iter().enumerate() {
                validate_address(a, &format!("{path}.notReadyAddresses[{j}]"), &mut errs);
            }
            validate_ports(ss.ports.as_deref().unwrap_or_default(), &path, &mut errs);
        }
        result(errs)
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let cell = typed::<Endpoints>(obj)
            .map(|ep| endpoints_cell(&ep))
            .unwrap_or_else(|_| "<none>".into());
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(cell),
            age(obj, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(subsets: Value) -> Value {
        let mut v =
            decode_as::<Endpoints>(json!({"metadata": {"name": "web", "namespace": "default"},
            "subsets": subsets}))
            .unwrap();
        EndpointsHandler.default(&mut v);
        v
    }

    fn messages(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn endpoints_validation_names_each_field() {
        let good = ep(
            json!([{"addresses": [{"ip": "10.244.1.5", "nodeName": "n1"}],
            "notReadyAddresses": [{"ip": "fd00::5"}], "ports": [{"port": 80}]}]),
        );
        assert!(EndpointsHandler.validate(&good).is_ok());
        assert_eq!(good["subsets"][0]["ports"][0]["protocol"], "TCP");
        let bad = ep(json!([
            {"ports": [{"port": 80}]},
            {"addresses": [{"ip": "127.0.0.1"}, {"ip": "nope", "hostname": "Web_0"}],
             "ports": [{"name": "a", "port": 0}, {"name": "a", "port": 81, "protocol": "ICMP"}, {"port": 82}]}
        ]));
        assert_eq!(
            messages(EndpointsHandler.validate(&bad)),
            [
                "subsets[0]: Required value: must specify `addresses` or `notReadyAddresses`",
                "subsets[1].addresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "subsets[1].addresses[1].ip: Invalid value: \"nope\": must be a valid IP address",
                "subsets[1].addresses[1].hostname: Invalid value: \"Web_0\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "subsets[1].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "subsets[1].ports[1].name: Duplicate value: \"a\"",
                "subsets[1].ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "subsets[1].ports[2].name: Required value",
            ]
        );
    }

    #[test]
    fn special_addresses_are_refused() {
        assert!(special_ip_problems("10.0.0.1").is_empty());
        assert!(special_ip_problems("2001:db8::1").is_empty());
        for ip in [
            "0.0.0.0",
            "::",
            "127.0.0.2",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.5",
            "ff02::1",
        ] {
            assert!(!special_ip_problems(ip).is_empty(), "{ip}");
        }
    }

    #[test]
    fn the_endpoints_cell_is_kubectls() {
        let v = ep(json!([
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "notReadyAddresses": [{"ip": "10.0.0.9"}],
             "ports": [{"port": 80}]},
            {"addresses": [{"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}], "ports": [{"port": 80}]}
        ]));
        let row = EndpointsHandler.table_row(&v, 0);
        assert_eq!(row[1], "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...");
        let two = ep(
            json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::2"}], "ports": [{"port": 80}]}]),
        );
        assert_eq!(
            EndpointsHandler.table_row(&two, 0)[1],
            "10.0.0.1:80,[fd00::2]:80"
        );
        let headless = ep(json!([{"addresses": [{"ip": "10.0.0.1"}]}]));
        assert_eq!(EndpointsHandler.table_row(&headless, 0)[1], "10.0.0.1");
        assert_eq!(EndpointsHandler.table_row(&ep(json!([])), 0)[1], "<none>");
        let only_not_ready =
            ep(json!([{"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]));
        assert_eq!(EndpointsHandler.table_row(&only_not_ready, 0)[1], "");
    }
}
