//! EndpointSlices (`discovery.k8s.io/v1 endpointslices`): Kubernetes' `ValidateEndpointSlice`
//! and `ValidateEndpointSliceUpdate`, and kubectl's ADDRESSTYPE / PORTS / ENDPOINTS columns.
//!
//! Limits as Kubernetes: at most [`MAX_SLICE_ENDPOINTS`] endpoints per slice, 100 addresses
//! per endpoint, 20,000 ports; `addressType` is immutable. Addresses must be valid for the
//! type (an IPv4 address in an IPv4 slice, never loopback or link-local; a fully qualified
//! name in an FQDN slice).

use super::super::error::FieldError;
use super::super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::super::table::{age, Column};
use super::super::validation::{
    dns1123_label, dns1123_subdomain, errors_to_result as result, label_value, push_invalid,
    qualified_name, NameRule,
};
use super::{check_node_and_hostname, default_port_protocols, list_with_more, PROTOCOLS};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The EndpointSlice resource.
pub const ENDPOINT_SLICE_INFO: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    plural: "endpointslices",
    singular: "endpointslice",
    kind: "EndpointSlice",
    namespaced: true,
    verbs: super::super::resource::ALL_VERBS,
    short_names: &[],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

/// The most endpoints one slice may hold (Kubernetes' `maxEndpoints`). The controller writes
/// at most 100 per slice; user-written slices may hold up to this many.
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
/// The most addresses one endpoint may list (Kubernetes' `maxAddresses`).
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;
/// The most ports one slice may list (Kubernetes' `maxPorts`).
pub const MAX_SLICE_PORTS: usize = 20_000;
/// The address types a new slice may have.
pub const ADDRESS_TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];

const COLUMNS: [Column; 5] = [
    super::super::table::NAME_COLUMN,
    Column {
        name: "AddressType",
        kind: "string",
        format: "",
        description: "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type.",
        priority: 0,
    },
    Column {
        name: "Ports",
        kind: "string",
        format: "",
        description: "ports specifies the list of network ports exposed by each endpoint in this slice.",
        priority: 0,
    },
    Column {
        name: "Endpoints",
        kind: "string",
        format: "",
        description: "endpoints is a list of unique endpoints in this slice.",
        priority: 0,
    },
    super::super::table::AGE_COLUMN,
];

/// The EndpointSlice [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointSliceHandler;

/// The problems with `a` as an address of a slice of `address_type`.
fn address_problems(address_type: &str, a: &str) -> Vec<String> {
    match address_type {
        "IPv4" => match a.parse::<Ipv4Addr>() {
            Ok(_) => super::special_ip_problems(a),
            Err(_) => vec!["must be a valid IPv4 address".into()],
        },
        "IPv6" => match a.parse::<Ipv6Addr>() {
            Ok(_) => super::special_ip_problems(a),
            Err(_) => vec!["must be a valid IPv6 address".into()],
        },
        "FQDN" => {
            let name = a.strip_suffix('.').unwrap_or(a);
            let mut p = dns1123_subdomain(name);
            if !name.contains('.') {
                p.push("should be a domain with at least two segments separated by dots".into());
            }
            p
        }
        _ => Vec::new(),
    }
}

fn validate_ports(ports: &[EndpointPort], errs: &mut Vec<FieldError>) {
    if ports.len() > MAX_SLICE_PORTS {
        errs.push(FieldError::too_many("ports", ports.len(), MAX_SLICE_PORTS));
        return;
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            push_invalid(errs, &format!("{at}.name"), name, dns1123_label(name));
        }
        if !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("{at}.name"), &json!(name)));
        }
        if let Some(n) = p.port.filter(|n| !(1..=65535).contains(n)) {
            errs.push(FieldError::invalid(
                format!("{at}.port"),
                &json!(n),
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
        if let Some(app) = p.app_protocol.as_deref() {
            push_invalid(errs, &format!("{at}.appProtocol"), app, qualified_name(app));
        }
    }
}

/// kubectl's PORTS cell of a slice: port numbers (a name, or `*`, for a port without one).
fn ports_cell(slice: &EndpointSlice) -> String {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let list = ports
        .iter()
        .map(|p| match (p.port, &p.name) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.clone(),
            (None, None) => "*".into(),
        })
        .collect();
    list_with_more(list, ports.len(), 3, "<unset>")
}

/// kubectl's ENDPOINTS cell of a slice: every address of every endpoint, the first three and
/// `+ N more...`.
fn endpoints_cell(slice: &EndpointSlice) -> String {
    let list: Vec<String> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    let count = list.len();
    list_with_more(list, count, 3, "<unset>")
}

impl ResourceHandler for EndpointSliceHandler {
    fn info(&self) -> &ResourceInfo {
        &ENDPOINT_SLICE_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<EndpointSlice>(obj)
    }

    fn default(&self, obj: &mut Value) {
        default_port_protocols(obj.get_mut("ports"));
        for p in obj
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            p.entry("name").or_insert_with(|| json!(""));
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let slice: EndpointSlice = typed(obj)?;
        let mut errs = Vec::new();
        let ty = slice.address_type.as_str();
        if ty.is_empty() {
            errs.push(FieldError::required("addressType", ""));
        } else if !ADDRESS_TYPES.contains(&ty) {
            errs.push(FieldError::not_supported(
                "addressType",
                &json!(ty),
                &ADDRESS_TYPES,
            ));
        }
        if slice.endpoints.len() > MAX_SLICE_ENDPOINTS {
            errs.push(FieldError::too_many(
                "endpoints",
                slice.endpoints.len(),
                MAX_SLICE_ENDPOINTS,
            ));
        } else {
            for (i, e) in slice.endpoints.iter().enumerate() {
                let path = format!("endpoints[{i}]");
                if e.addresses.is_empty() {
                    errs.push(FieldError::required(
                        format!("{path}.addresses"),
                        "must contain at least 1 address",
                    ));
                } else if e.addresses.len() > MAX_ENDPOINT_ADDRESSES {
                    errs.push(FieldError::too_many(
                        format!("{path}.addresses"),
                        e.addresses.len(),
                        MAX_ENDPOINT_ADDRESSES,
                    ));
                } else {
                    for (j, a) in e.addresses.iter().enumerate() {
                        push_invalid(
                            &mut errs,
                            &format!("{path}.addresses[{j}]"),
                            a,
                            address_problems(ty, a),
                        );
                    }
                }
                check_node_and_hostname(
                    &path,
                    e.node_name.as_deref(),
                    e.hostname.as_deref(),
                    &mut errs,
                );
                if let Some(z) = e.zone.as_deref() {
                    push_invalid(&mut errs, &format!("{path}.zone"), z, label_value(z));
                }
            }
        }
        validate_ports(slice.ports.as_deref().unwrap_or_default(), &mut errs);
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let ty = |v: &Value| {
            v.get("addressType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if ty(new) != ty(old) {
            return Err(vec![FieldError::invalid(
                "addressType",
                &json!(ty(new)),
                "field is immutable",
            )]);
        }
        Ok(())
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let (ty, ports, endpoints) = match typed::<EndpointSlice>(obj) {
            Ok(s) => (s.address_type.clone(), ports_cell(&s), endpoints_cell(&s)),
            Err(_) => (String::new(), "<unset>".into(), "<unset>".into()),
        };
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(ty),
            json!(ports),
            json!(endpoints),
            age(obj, now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(body: Value) -> Value {
        let mut v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "default"}});
        if let (Some(o), Some(b)) = (v.as_object_mut(), body.as_object()) {
            o.extend(b.clone());
        }
        let mut v = decode_as::<EndpointSlice>(v).unwrap();
        EndpointSliceHandler.default(&mut v);
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
    fn slices_are_validated_as_kubernetes_does() {
        let good = slice(json!({"addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": true},
                "nodeName": "n1", "hostname": "web-0", "zone": "hall-2"}]}));
        assert!(
            EndpointSliceHandler.validate(&good).is_ok(),
            "{:?}",
            EndpointSliceHandler.validate(&good)
        );
        assert_eq!(
            good["ports"][0],
            json!({"name": "", "port": 80, "protocol": "TCP"})
        );
        let fqdn =
            slice(json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]}));
        assert!(EndpointSliceHandler.validate(&fqdn).is_ok());
        let bad = slice(json!({"addressType": "IP", "endpoints": []}));
        assert_eq!(
            messages(EndpointSliceHandler.validate(&bad)),
            ["addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""]
        );
        let bad = slice(json!({"addressType": "IPv4",
            "ports": [{"name": "http", "port": 0}, {"name": "http", "port": 81, "protocol": "ICMP"}],
            "endpoints": [{"addresses": []}, {"addresses": ["fd00::1", "127.0.0.1"]},
                          {"addresses": ["10.0.0.1"], "nodeName": "Node_1"}]}));
        assert_eq!(
            messages(EndpointSliceHandler.validate(&bad)),
            [
                "endpoints[0].addresses: Required value: must contain at least 1 address",
                "endpoints[1].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
                "endpoints[1].addresses[1]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
                "endpoints[2].nodeName: Invalid value: \"Node_1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "ports[1].name: Duplicate value: \"http\"",
                "ports[1].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ]
        );
        let endpoints: Vec<Value> = (0..1001)
            .map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 250, i % 250 + 1)]}))
            .collect();
        let mut at_limit = slice(json!({"addressType": "IPv4", "endpoints": endpoints}));
        assert_eq!(
            messages(EndpointSliceHandler.validate(&at_limit)),
            ["endpoints: Too many: 1001: must have at most 1000 items"]
        );
        at_limit["endpoints"].as_array_mut().unwrap().pop();
        assert!(EndpointSliceHandler.validate(&at_limit).is_ok());
        let ipv6 = slice(json!({"addressType": "IPv6"}));
        assert_eq!(
            messages(EndpointSliceHandler.validate_update(&ipv6, &good)),
            ["addressType: Invalid value: \"IPv6\": field is immutable"]
        );
    }

    #[test]
    fn the_columns_are_kubectls() {
        let v = slice(json!({"addressType": "IPv4",
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}, {"name": "c"},
                      {"name": "d", "port": 1}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]},
                          {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]}));
        let row = EndpointSliceHandler.table_row(&v, 0);
        assert_eq!(
            row[1..4],
            [
                json!("IPv4"),
                json!("80,443,c + 1 more..."),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
            ]
        );
        let empty = slice(json!({"addressType": "IPv4", "ports": []}));
        assert_eq!(
            EndpointSliceHandler.table_row(&empty, 0)[1..4],
            [json!("IPv4"), json!("<unset>"), json!("<unset>")]
        );
    }
}
