//! Services (core/v1 `services`): Kubernetes' defaulting and validation
//! (`pkg/apis/core/v1/defaults.go`, `ValidateService`, `ValidateServiceUpdate`) and the
//! allocation of cluster IPs and node ports (`pkg/registry/core/service`).
//!
//! The endpoints of a Service with a selector are kept by the controllers in
//! [`crate::controllers::endpoints`] (EndpointSlices and the v1 Endpoints object); the edges
//! route to them.
//!
//! Validation refuses, with a 422 naming the field, what could not work: ports without names
//! or with duplicate names or (port, protocol) pairs, a `targetPort` that is neither a number
//! in 1-65535 nor an IANA service name, selector keys and values that are not valid labels, a
//! `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1-86400, `externalTrafficPolicy` on
//! a Service without node ports, an `internalTrafficPolicy` other than `Cluster` or `Local`, an
//! `ExternalName` Service without a valid DNS name. A requested node port or cluster IP that
//! another Service holds is refused naming that Service.
//!
//! **`type: LoadBalancer`** is accepted as what this cluster can make of it: a cluster IP plus
//! node ports, as a `NodePort` Service. There is no load-balancer implementation, so
//! `status.loadBalancer` stays empty (kubectl shows `<pending>` as EXTERNAL-IP) and
//! `allocateLoadBalancerNodePorts: false`, which would leave the Service reachable nowhere, is
//! refused.
//!
//! Allocation guarantees:
//! - A cluster IP comes from the configured service CIDR ([`ServiceNetwork`], default
//!   `10.96.0.0/12`, IPv4 single-stack), never the network or broadcast address. A node port
//!   comes from the node port range (default 30000-32767).
//! - No two Services ever hold the same cluster IP or node port. The state of the pools is the
//!   stored Services themselves (no separate bitmap that could drift from them, and nothing to
//!   repair after a crash): an allocation scans the stored Services and is held, under one
//!   process-wide lock, until the Service carrying it is written (see
//!   [`ResourceHandler::allocate`]). Deleting a Service frees what it held. This relies on one
//!   cloudcore writing the store, which holds for the embedded store.
//! - The cluster DNS address (`--cluster-dns`) is never handed out, and a Service asking for it
//!   gets a 422, whatever its name (a `kube-system/kube-dns` too): on Skerry no Service backs
//!   that address, each edge answers it with its own DNS server. kube-apiserver reserves only
//!   the `kubernetes` Service's address and leaves the DNS one to convention; here the edge
//!   proxy would otherwise have to choose between the two.
//! - A requested cluster IP must be in range and free (else 422 `provided IP is already
//!   allocated`); `clusterIP: None` makes a headless Service and takes nothing. The same holds
//!   for requested node ports.
//! - Updates keep what was allocated: `clusterIP` may not change, and an update that leaves
//!   `clusterIP` or a `nodePort` out keeps the allocated value (as `kubectl replace` with the
//!   original manifest expects).
//!
//! Dynamic cluster IPs come from the upper part of the range first and node ports likewise,
//! as Kubernetes does, so that the lower part stays free for Services that ask for a specific
//! address.

use super::error::{ApiError, FieldError};
use super::resource::{decode_as, typed, Allocation, DecodeError, ResourceHandler, ResourceInfo};
use super::table::{age, Column};
use super::validation::{
    dns1123_subdomain, errors_to_result as result, label_value, push_invalid, qualified_name,
    NameRule,
};
use crate::store::{ObjectKey, Store};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

mod network;
mod validation;
pub use network::{NetworkConfigError, NodePortRange, ServiceCidr, ServiceNetwork};
use validation::{one_of, validate_affinity, validate_load_balancer_fields, validate_port};

/// The Service resource.
pub const SERVICE_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "services",
    singular: "service",
    kind: "Service",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["svc"],
    categories: &["all"],
    status_subresource: true,
    name_rule: NameRule::Dns1035Label,
    selectable_fields: &[],
    return_deleted_object: true,
};

const COLUMNS: [Column; 7] = [
    super::table::NAME_COLUMN,
    Column {
        name: "Type",
        kind: "string",
        format: "",
        description: "The type of service.",
        priority: 0,
    },
    Column {
        name: "Cluster-IP",
        kind: "string",
        format: "",
        description: "The IP address of the service.",
        priority: 0,
    },
    Column {
        name: "External-IP",
        kind: "string",
        format: "",
        description: "The external IP address of the service.",
        priority: 0,
    },
    Column {
        name: "Port(s)",
        kind: "string",
        format: "",
        description: "The ports of the service.",
        priority: 0,
    },
    super::table::AGE_COLUMN,
    Column {
        name: "Selector",
        kind: "string",
        format: "",
        description:
            "Route service traffic to pods with label keys and values matching this selector.",
        priority: 1,
    },
];

const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const AFFINITIES: [&str; 2] = ["ClientIP", "None"];
const TRAFFIC_POLICIES: [&str; 2] = ["Cluster", "Local"];
const FAMILY_POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: i64 = 10_800;

/// Serializes allocations: held from the scan of the stored Services until the Service carrying
/// the allocation is written. Process-wide rather than per handler so that two registries over
/// one store (an in-process client and the router) cannot hand out the same address.
static ALLOCATION_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Service [`ResourceHandler`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceHandler {
    network: ServiceNetwork,
}

impl ServiceHandler {
    /// A handler allocating from `network`.
    pub fn new(network: ServiceNetwork) -> Self {
        Self { network }
    }
}

fn spec_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("spec")
        .and_then(|s| s.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn svc_type(obj: &Value) -> &str {
    match spec_str(obj, "type") {
        "" => "ClusterIP",
        t => t,
    }
}

fn needs_cluster_ip(obj: &Value) -> bool {
    svc_type(obj) != "ExternalName"
}

fn needs_node_ports(obj: &Value) -> bool {
    matches!(svc_type(obj), "NodePort" | "LoadBalancer")
}

fn ports(obj: &Value) -> Vec<&Map<String, Value>> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

fn port_key(p: &Map<String, Value>) -> (i64, String) {
    (
        p.get("port").and_then(Value::as_i64).unwrap_or(0),
        p.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string(),
    )
}

fn node_port(p: &Map<String, Value>) -> i64 {
    p.get("nodePort").and_then(Value::as_i64).unwrap_or(0)
}

/// What a Service holds: its cluster IPs and node ports.
fn held(obj: &Value) -> (Vec<Ipv4Addr>, Vec<i64>) {
    let mut ips: Vec<Ipv4Addr> = obj
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|s| s.parse().ok())
        .collect();
    if let Ok(ip) = spec_str(obj, "clusterIP").parse() {
        ips.push(ip);
    }
    let ports = ports(obj)
        .into_iter()
        .map(node_port)
        .filter(|p| *p > 0)
        .collect();
    (ips, ports)
}

/// Picks a free offset in `1..size-1`, from the upper band first (`lower` offsets are kept for
/// requested values, as Kubernetes does), starting at a random point.
fn pick(size: u64, lower: u64, taken: impl Fn(u64) -> bool) -> Option<u64> {
    use rand::Rng;
    let mut rng = rand::rng();
    let usable = 1..size.saturating_sub(1);
    let bands = [(lower.max(1), usable.end), (usable.start, lower.max(1))];
    for (lo, hi) in bands {
        if lo >= hi {
            continue;
        }
        let n = hi - lo;
        let start = rng.random_range(0..n);
        if let Some(o) = (0..n).map(|i| lo + (start + i) % n).find(|o| !taken(*o)) {
            return Some(o);
        }
    }
    None
}

/// Kubernetes' size of the band kept for requested values: `min(max(16, size/16), 256)`.
fn static_band(size: u64) -> u64 {
    (size / 16).clamp(16, 256).min(size / 2)
}

impl ServiceHandler {
    /// Checks requested values and fills in the missing ones against `used` (what the other
    /// stored Services hold). `old` is the stored object on update.
    fn assign(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        used_ips: &HashMap<Ipv4Addr, String>,
        used_ports: &HashMap<i64, String>,
    ) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let cidr = self.network.cidr;
        let reserved = self.network.cluster_dns;
        let (old_ips, old_ports) = old.map(held).unwrap_or_default();
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return errs;
        };
        if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
            let requested = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let ip = match requested.as_str() {
                "None" => None,
                "" => {
                    let size = cidr.size();
                    match pick(size, static_band(size), |o| {
                        let ip = cidr.nth(o);
                        used_ips.contains_key(&ip) || reserved == Some(ip)
                    }) {
                        Some(o) => Some(cidr.nth(o)),
                        None => {
                            errs.push(FieldError::invalid(
                                "spec.clusterIPs",
                                &json!([]),
                                format!("failed to allocate IP: range is full (the service CIDR {cidr} has no free address; delete unused Services or configure a larger --service-cluster-ip-range)"),
                            ));
                            None
                        }
                    }
                }
                s => match s.parse::<Ipv4Addr>() {
                    // Kept from the stored object: already held by this Service.
                    Ok(ip) if old_ips.contains(&ip) => Some(ip),
                    Ok(ip) if !cidr.contains(ip) => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs",
                            &json!([s]),
                            format!("failed to allocate IP {s}: the provided IP ({s}) is not in the valid range. The range of valid IPs is {cidr}"),
                        ));
                        None
                    }
                    Ok(ip) if reserved == Some(ip) => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs",
                            &json!([s]),
                            format!("failed to allocate IP {s}: provided IP is reserved for the cluster DNS (cloudcore --cluster-dns), which every edge answers itself; a Service holding it would never reach its endpoints. Leave clusterIP out or pick another address"),
                        ));
                        None
                    }
                    Ok(ip) if used_ips.contains_key(&ip) => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs",
                            &json!([s]),
                            format!(
                                "failed to allocate IP {s}: provided IP is already allocated (by Service {})",
                                used_ips[&ip]
                            ),
                        ));
                        None
                    }
                    Ok(ip) => Some(ip),
                    // Validation has reported it.
                    Err(_) => None,
                },
            };
            if let Some(ip) = ip {
                spec.insert("clusterIP".into(), json!(ip.to_string()));
                spec.insert("clusterIPs".into(), json!([ip.to_string()]));
            } else if requested == "None" {
                spec.insert("clusterIPs".into(), json!(["None"]));
            }
        }
        let node_ports = matches!(
            spec.get("type").and_then(Value::as_str),
            Some("NodePort" | "LoadBalancer")
        );
        let range = self.network.node_ports;
        if node_ports {
            // Ports this Service takes in this request, so that two of its ports do not get
            // the same one (one port number serving TCP and UDP may share, as in Kubernetes).
            let mut mine: BTreeMap<i64, i64> = BTreeMap::new();
            let ports = spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut out = Vec::with_capacity(ports.len());
            for (i, mut p) in ports.into_iter().enumerate() {
                let field = format!("spec.ports[{i}].nodePort");
                let Some(pm) = p.as_object_mut() else {
                    out.push(p);
                    continue;
                };
                let wanted = node_port(pm);
                let port = pm.get("port").and_then(Value::as_i64).unwrap_or(0);
                if wanted == 0 {
                    let size = u64::from(range.last - range.first) + 1;
                    let first = i64::from(range.first);
                    let reuse = mine.get(&port).copied();
                    let chosen = reuse.or_else(|| {
                        pick(size + 2, static_band(size) + 1, |o| {
                            let n = first + o as i64 - 1;
                            used_ports.contains_key(&n) || mine.values().any(|m| *m == n)
                        })
                        .map(|o| first + o as i64 - 1)
                    });
                    match chosen {
                        Some(n) => {
                            pm.insert("nodePort".into(), json!(n));
                            mine.insert(port, n);
                        }
                        None => errs.push(FieldError::invalid(
                            field,
                            &json!(0),
                            format!("failed to allocate a node port: range is full (no free port in {range}; delete unused NodePort Services)"),
                        )),
                    }
                } else if old_ports.contains(&wanted) {
                    mine.insert(port, wanted);
                } else if !range.contains(wanted) {
                    errs.push(FieldError::invalid(
                        field,
                        &json!(wanted),
                        format!("provided port is not in the valid range. The range of valid ports is {range}"),
                    ));
                } else if let Some(holder) = used_ports.get(&wanted) {
                    errs.push(FieldError::invalid(
                        field,
                        &json!(wanted),
                        format!("provided port is already allocated (by Service {holder})"),
                    ));
                } else {
                    mine.insert(port, wanted);
                }
                out.push(p);
            }
            spec.insert("ports".into(), Value::Array(out));
        }
        errs
    }
}

/// Whether writing `obj` over `old` takes anything new from the pools.
fn takes_something(obj: &Value, old: Option<&Value>) -> bool {
    let (old_ips, old_ports) = old.map(held).unwrap_or_default();
    let ip = spec_str(obj, "clusterIP");
    let new_ip = needs_cluster_ip(obj)
        && ip != "None"
        && ip
            .parse::<Ipv4Addr>()
            .map_or(true, |ip| !old_ips.contains(&ip));
    let new_port = needs_node_ports(obj)
        && ports(obj).iter().any(|p| {
            let n = node_port(p);
            n == 0 || !old_ports.contains(&n)
        });
    new_ip || new_port
}

impl ResourceHandler for ServiceHandler {
    fn info(&self) -> &ResourceInfo {
        &SERVICE_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Service>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else {
            return;
        };
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        let ty = spec
            .entry("type")
            .or_insert_with(|| json!("ClusterIP"))
            .as_str()
            .unwrap_or("")
            .to_string();
        let affinity = spec
            .entry("sessionAffinity")
            .or_insert_with(|| json!("None"))
            .clone();
        if affinity == "ClientIP" {
            let cfg = spec
                .entry("sessionAffinityConfig")
                .or_insert_with(|| json!({}));
            if let Some(cfg) = cfg.as_object_mut() {
                let ip = cfg.entry("clientIP").or_insert_with(|| json!({}));
                if let Some(ip) = ip.as_object_mut() {
                    ip.entry("timeoutSeconds")
                        .or_insert_with(|| json!(DEFAULT_AFFINITY_TIMEOUT));
                }
            }
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert_with(|| json!("TCP"));
                let unset = match p.get("targetPort") {
                    None | Some(Value::Null) => true,
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s.is_empty(),
                    Some(_) => false,
                };
                if unset {
                    let port = p.get("port").cloned().unwrap_or(json!(0));
                    p.insert("targetPort".into(), port);
                }
            }
        }
        // clusterIP and clusterIPs[0] are one value in two fields; fill whichever is missing.
        let ip = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
        let first = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if ip.is_empty() && !first.is_empty() {
            spec.insert("clusterIP".into(), json!(first));
        } else if !ip.is_empty() && first.is_empty() {
            spec.insert("clusterIPs".into(), json!([ip]));
        }
        if ty == "ExternalName" {
            return;
        }
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| json!("SingleStack"));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        if ty == "NodePort" || ty == "LoadBalancer" {
            spec.entry("externalTrafficPolicy")
                .or_insert_with(|| json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert_with(|| json!(true));
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        // Status is written by whoever implements the load balancer, never on create.
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"loadBalancer": {}}));
        }
    }

    fn prepare_update(&self, new: &mut Value, old: &Value) {
        let keep_ip = needs_cluster_ip(old) && needs_cluster_ip(new);
        let keep_ports = needs_node_ports(old) && needs_node_ports(new);
        let to_external_name = !needs_cluster_ip(new) && needs_cluster_ip(old);
        let away_from_node_ports = needs_node_ports(old) && !needs_node_ports(new);
        let old_ports: Vec<Map<String, Value>> = ports(old).into_iter().cloned().collect();
        let old_spec = old.get("spec").cloned().unwrap_or(json!({}));
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let unchanged = |spec: &Map<String, Value>, f: &str| spec.get(f) == old_spec.get(f);
        if keep_ip
            && spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        {
            for f in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old_spec.get(f) {
                    spec.insert(f.into(), v.clone());
                }
            }
        }
        if to_external_name {
            // What only a cluster IP needs goes with it, unless the client changed it.
            for f in [
                "clusterIP",
                "clusterIPs",
                "ipFamilies",
                "ipFamilyPolicy",
                "internalTrafficPolicy",
            ] {
                if unchanged(spec, f) {
                    spec.remove(f);
                }
            }
        }
        if away_from_node_ports && unchanged(spec, "externalTrafficPolicy") {
            spec.remove("externalTrafficPolicy");
        }
        let away_from_lb = svc_type(old) == "LoadBalancer"
            && spec.get("type").and_then(Value::as_str) != Some("LoadBalancer");
        if away_from_lb && unchanged(spec, "allocateLoadBalancerNodePorts") {
            spec.remove("allocateLoadBalancerNodePorts");
        }
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return;
        };
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            let key = port_key(p);
            let was = old_ports
                .iter()
                .find(|o| port_key(o) == key)
                .map(node_port)
                .filter(|n| *n > 0);
            match (was, node_port(p)) {
                (Some(n), 0) if keep_ports => {
                    p.insert("nodePort".into(), json!(n));
                }
                (Some(n), m) if away_from_node_ports && n == m => {
                    p.remove("nodePort");
                }
                _ => {}
            }
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let svc: Service = typed(obj)?;
        let spec = svc.spec.unwrap_or_default();
        let mut errs = Vec::new();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !TYPES.contains(&ty) {
            errs.push(FieldError::not_supported("spec.type", &json!(ty), &TYPES));
        }
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        let ips = spec.cluster_ips.clone().unwrap_or_default();
        if ty == "ExternalName" {
            if !ip.is_empty() || !ips.is_empty() {
                errs.push(FieldError::forbidden(
                    "spec.clusterIPs",
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_family_policy.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilyPolicy",
                    "may not be set for ExternalName services",
                ));
            }
            if spec.ip_families.as_ref().is_some_and(|f| !f.is_empty()) {
                errs.push(FieldError::forbidden(
                    "spec.ipFamilies",
                    "may not be set for ExternalName services",
                ));
            }
            match spec.external_name.as_deref().unwrap_or("") {
                "" => errs.push(FieldError::required("spec.externalName", "")),
                n => {
                    let n = n.strip_suffix('.').unwrap_or(n);
                    push_invalid(&mut errs, "spec.externalName", n, dns1123_subdomain(n));
                }
            }
        } else {
            if !ips.is_empty() && ips[0] != ip {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!(ips),
                    "element [0] must match clusterIP",
                ));
            }
            if ips.len() > 1 {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!(ips),
                    "may specify no more than one IP: this cluster is single-stack IPv4",
                ));
            }
            if !ip.is_empty() && ip != "None" && ip.parse::<Ipv4Addr>().is_err() {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    &json!(ip),
                    "must be a valid IPv4 address, (e.g. 10.9.8.7); this cluster is single-stack IPv4",
                ));
            }
            if ip == "None" && ty != "ClusterIP" {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    &json!(ip),
                    format!("may not be set to 'None' for {ty} services"),
                ));
            }
            one_of(
                "spec.ipFamilyPolicy",
                spec.ip_family_policy.as_ref(),
                &FAMILY_POLICIES,
                &mut errs,
            );
            if spec.ip_family_policy.as_deref() == Some("RequireDualStack") {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    &json!("RequireDualStack"),
                    "this cluster is not configured for dual-stack services",
                ));
            }
            for (i, f) in spec.ip_families.iter().flatten().enumerate() {
                if f != "IPv4" {
                    errs.push(FieldError::invalid(
                        format!("spec.ipFamilies[{i}]"),
                        &json!(f),
                        "not configured on this cluster: the service CIDR is IPv4 only",
                    ));
                }
            }
        }
        let ports = spec.ports.clone().unwrap_or_default();
        if ports.is_empty() && ty != "ExternalName" && ip != "None" {
            errs.push(FieldError::required("spec.ports", ""));
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            validate_port(p, i, ports.len() > 1, &mut errs);
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(
                        format!("spec.ports[{i}].name"),
                        &json!(n),
                    ));
                }
            }
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if !keys.insert((p.port, protocol.clone())) {
                errs.push(FieldError::duplicate(
                    format!("spec.ports[{i}]"),
                    &json!({"port": p.port, "protocol": protocol}),
                ));
            }
            if let Some(n) = p.node_port.filter(|n| *n != 0) {
                if !matches!(ty, "NodePort" | "LoadBalancer") {
                    errs.push(FieldError::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        format!("may not be used when `type` is '{ty}'"),
                    ));
                } else if !node_ports.insert((n, protocol.clone())) {
                    errs.push(FieldError::duplicate(
                        format!("spec.ports[{i}].nodePort"),
                        &json!(n),
                    ));
                }
            }
        }
        for (k, v) in spec.selector.iter().flatten() {
            push_invalid(&mut errs, "spec.selector", k, qualified_name(k));
            push_invalid(&mut errs, "spec.selector", v, label_value(v));
        }
        one_of(
            "spec.sessionAffinity",
            spec.session_affinity.as_ref(),
            &AFFINITIES,
            &mut errs,
        );
        validate_affinity(&spec, &mut errs);
        validate_load_balancer_fields(&spec, ty, &mut errs);
        one_of(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_ref(),
            &TRAFFIC_POLICIES,
            &mut errs,
        );
        match (&spec.external_traffic_policy, ty) {
            (Some(p), "NodePort" | "LoadBalancer") => one_of(
                "spec.externalTrafficPolicy",
                Some(p),
                &TRAFFIC_POLICIES,
                &mut errs,
            ),
            (Some(_), _) => errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                &json!(spec.external_traffic_policy),
                "may only be set for externally-accessible services",
            )),
            _ => {}
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            if ip.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("spec.externalIPs[{i}]"),
                    &json!(ip),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            }
        }
        result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        // prepare_update has carried the allocated address over when the client left it out;
        // what remains different is a change the client asked for.
        let (n, o) = (spec_str(new, "clusterIP"), spec_str(old, "clusterIP"));
        if needs_cluster_ip(new) && needs_cluster_ip(old) && n != o {
            return Err(vec![FieldError::invalid(
                "spec.clusterIPs[0]",
                &json!(n),
                "may not change once set",
            )]);
        }
        Ok(())
    }

    fn allocate<'a>(
        &'a self,
        store: &'a dyn Store,
        key: &'a ObjectKey,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Allocation, ApiError>> {
        Box::pin(async move {
            if !takes_something(obj, old) {
                return Ok(Allocation::none());
            }
            let guard = ALLOCATION_LOCK.lock().await;
            let (others, _) = store
                .list(&SERVICE_INFO.storage_resource(), None)
                .await
                .map_err(|e| ApiError::from_store(e, &SERVICE_INFO.qualified(), &key.name))?;
            let mut used_ips = HashMap::new();
            let mut used_ports = HashMap::new();
            for s in others {
                let name = s.value.pointer("/metadata/name").and_then(Value::as_str);
                let ns = s
                    .value
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str);
                if name == Some(key.name.as_str()) && ns == Some(key.namespace.as_str()) {
                    continue;
                }
                let (ips, ports) = held(&s.value);
                let holder = format!("{}/{}", ns.unwrap_or(""), name.unwrap_or(""));
                used_ips.extend(ips.into_iter().map(|ip| (ip, holder.clone())));
                used_ports.extend(ports.into_iter().map(|p| (p, holder.clone())));
            }
            let errs = self.assign(obj, old, &used_ips, &used_ports);
            if !errs.is_empty() {
                return Err(ApiError::Invalid {
                    kind: SERVICE_INFO.kind.to_string(),
                    name: key.name.clone(),
                    errors: errs,
                });
            }
            Ok(Allocation::held(guard))
        })
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        vec![
            obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            json!(svc_type(obj)),
            json!(match spec_str(obj, "clusterIP") {
                "" => "<none>",
                ip => ip,
            }),
            json!(external_ip(obj)),
            json!(port_string(obj)),
            age(obj, now),
            json!(selector_string(obj)),
        ]
    }
}

/// kubectl's EXTERNAL-IP cell (`getServiceExternalIP` of the Kubernetes printers).
fn external_ip(obj: &Value) -> String {
    let external: Vec<&str> = obj
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match svc_type(obj) {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let lb: Vec<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.get("ip")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .or_else(|| i.get("hostname").and_then(Value::as_str))
                })
                .collect();
            if lb.is_empty() {
                if external.is_empty() {
                    "<pending>".into()
                } else {
                    external.join(",")
                }
            } else {
                external.into_iter().chain(lb).collect::<Vec<_>>().join(",")
            }
        }
        "ExternalName" => spec_str(obj, "externalName").to_string(),
        _ => "<unknown>".into(),
    }
}

/// kubectl's PORT(S) cell: `80/TCP`, `80:30080/TCP`, comma-separated; `<none>` without ports.
fn port_string(obj: &Value) -> String {
    let cells: Vec<String> = ports(obj)
        .into_iter()
        .map(|p| {
            let (port, protocol) = port_key(p);
            match node_port(p) {
                0 => format!("{port}/{protocol}"),
                n => format!("{port}:{n}/{protocol}"),
            }
        })
        .collect();
    if cells.is_empty() {
        "<none>".into()
    } else {
        cells.join(",")
    }
}

/// kubectl's SELECTOR cell: `k=v` pairs sorted by key, `<none>` when empty.
fn selector_string(obj: &Value) -> String {
    let pairs: Vec<String> = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

#[cfg(test)]
mod tests;
