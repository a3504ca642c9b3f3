//! Container cpu and memory requests and limits: their validation and the QoS class they give
//! a pod, computed as Kubernetes does.

use crate::api::error::FieldError;
use crate::api::quantity::{parse_cpu_millis, parse_memory_bytes};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::json;
use std::collections::BTreeMap;

/// Requests and limits of cpu and memory of one container: (cpu request, cpu limit, memory
/// request, memory limit), unparseable values ignored (validation reports them).
fn container_resources(c: &Container) -> [Option<u64>; 4] {
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str,
         parse: fn(&str) -> Result<u64, crate::api::quantity::QuantityError>| {
            m.and_then(|m| m.get(k)).and_then(|q| parse(&q.0).ok())
        };
    let r = c.resources.as_ref();
    let req = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    [
        get(req, "cpu", parse_cpu_millis),
        get(lim, "cpu", parse_cpu_millis),
        get(req, "memory", parse_memory_bytes),
        get(lim, "memory", parse_memory_bytes),
    ]
}

/// The QoS class of a pod spec, as Kubernetes computes it from cpu and memory: `Guaranteed` when
/// every container has limits with equal (or unset) requests, `BestEffort` with no requests or
/// limits anywhere, `Burstable` otherwise.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for c in all {
        let [cpu_req, cpu_lim, mem_req, mem_lim] = container_resources(c);
        if [cpu_req, cpu_lim, mem_req, mem_lim]
            .iter()
            .any(|v| v.is_some_and(|v| v > 0))
        {
            any = true;
        }
        let cpu_ok =
            cpu_lim.is_some_and(|l| l > 0) && cpu_req.is_none_or(|r| r == cpu_lim.unwrap_or(0));
        let mem_ok =
            mem_lim.is_some_and(|l| l > 0) && mem_req.is_none_or(|r| r == mem_lim.unwrap_or(0));
        if !(cpu_ok && mem_ok) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(super) fn validate_resources(c: &Container, path: &str, errs: &mut Vec<FieldError>) {
    let Some(r) = &c.resources else { return };
    let mut parsed: [BTreeMap<&str, u64>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (i, (which, map)) in [("requests", &r.requests), ("limits", &r.limits)]
        .into_iter()
        .enumerate()
    {
        for (name, q) in map.iter().flatten() {
            let field = format!("{path}.resources.{which}[{name}]");
            let valid_name = matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("hugepages-")
                || name.contains('/');
            if !valid_name {
                errs.push(FieldError::invalid(
                    format!("{path}.resources.{which}"),
                    &json!(name),
                    "must be a standard resource type or fully qualified",
                ));
                continue;
            }
            let result = if name == "cpu" {
                parse_cpu_millis(&q.0)
            } else {
                parse_memory_bytes(&q.0)
            };
            match result {
                Ok(v) => {
                    parsed[i].insert(name.as_str(), v);
                }
                Err(e) => errs.push(FieldError::invalid(field, &json!(q.0), e.to_string())),
            }
        }
    }
    for name in ["cpu", "memory"] {
        if let (Some(req), Some(lim)) = (parsed[0].get(name), parsed[1].get(name)) {
            if req > lim {
                let q = r
                    .requests
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                let l = r
                    .limits
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .map(|q| q.0.clone())
                    .unwrap_or_default();
                errs.push(FieldError::invalid(
                    format!("{path}.resources.requests"),
                    &json!(q),
                    format!("must be less than or equal to {name} limit of {l}"),
                ));
            }
        }
    }
}
