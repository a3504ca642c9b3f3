//! Turns the full Kubernetes Pod into the compact [`EdgePod`] that goes over the wire, and
//! ConfigMaps and Secrets into [`EdgeConfigMap`] and [`EdgeSecret`].
//!
//! The edge needs what it runs (containers, volumes, restart policy, grace periods, probes with
//! their ports resolved to numbers, devices) and nothing of scheduling, status or managed
//! fields: bandwidth is the scarce resource on an edge link. Kubernetes' defaults are applied
//! here too (probe timings, httpGet path and scheme), so the edge never has to know them and an
//! object stored before the API defaulted it projects the same. The API validated every object
//! on write, so a failure here means a stored object is corrupt; the hub reports it and skips
//! that object rather than stalling the node's whole slice.

use crate::api::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::devices;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use protocol::config::{EdgeConfigMap, EdgeSecret};
use protocol::downward::PodField;
use protocol::pod::*;
use serde_json::Value;
use std::collections::BTreeMap;

pub mod ingress;
pub mod network;
pub mod security;
pub mod support;
pub use network::{edge_endpoint_slice, edge_service, NETWORK_SHARD};

/// Why a stored object could not be projected.
#[derive(Debug, thiserror::Error)]
#[error("{object} cannot be sent to its node: {reason}")]
pub struct ProjectionError {
    /// Kind and `namespace/name` (`pod default/web`).
    pub object: String,
    /// What is wrong (never a Secret value).
    pub reason: String,
}

/// `namespace/name` of a stored object, for messages.
fn name_of(value: &Value) -> String {
    format!(
        "{}/{}",
        value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// The node a stored object belongs to: a pod's `spec.nodeName`. Used as the store's shard
/// function, so that each node's change log holds exactly its pods.
pub fn node_of(key: &crate::store::ObjectKey, value: &Value) -> Option<String> {
    if key.resource != "pods" {
        return None;
    }
    value
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The store's shard function: a pod belongs to the node it is bound to, with the digest of its
/// edge projection, so that only writes that change what the node runs (not status reports)
/// are logged to the node's shard and sent down.
///
/// Services and EndpointSlices belong to the [`NETWORK_SHARD`] that every node reads, with the
/// digest of their projection likewise.
pub fn shard(key: &crate::store::ObjectKey, value: &Value) -> Option<crate::store::Shard> {
    if network::in_network_shard(&key.resource) {
        let encoded = match key.resource.as_str() {
            "services" => edge_service(value).map(|s| protocol::codec::encode(&s)),
            _ => edge_endpoint_slice(value).map(|s| protocol::codec::encode(&s)),
        };
        return Some(crate::store::Shard {
            name: NETWORK_SHARD.to_string(),
            digest: digest_of(encoded),
        });
    }
    let name = node_of(key, value)?;
    let digest = digest_of(edge_pod(value).map(|p| protocol::codec::encode(&p)));
    Some(crate::store::Shard { name, digest })
}

/// The digest of an encoded projection (see [`crate::store::Shard::digest`]).
fn digest_of<E1, E2>(encoded: Result<Result<Vec<u8>, E1>, E2>) -> u64 {
    match encoded {
        Ok(Ok(bytes)) => {
            use std::hash::{Hash, Hasher};
            // Compared only within one process (old vs new value of one write): the std hasher
            // with fixed keys is enough, no stability across versions is needed.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        }
        // An object that cannot be projected is logged on every write, so the hub reports it.
        _ => rand::random(),
    }
}

/// Projects a stored pod.
pub fn edge_pod(value: &Value) -> Result<EdgePod, ProjectionError> {
    let err = |reason: String| ProjectionError {
        object: format!("pod {}", name_of(value)),
        reason,
    };
    let pod: core::Pod = serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
    let meta = pod.metadata;
    let spec = pod.spec.ok_or_else(|| err("no spec".into()))?;
    // The API refused these (the same check); a stored object that has one predates it.
    if let Some(u) = support::unsupported(&spec, "spec").first() {
        return Err(err(u.to_string()));
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None => RestartPolicy::Always,
        Some(p) => RestartPolicy::parse(p).ok_or_else(|| err(format!("restartPolicy {p:?}")))?,
    };
    let pod_sc = spec.security_context.as_ref();
    let containers = spec
        .containers
        .iter()
        .map(|c| {
            container(c, meta.annotations.as_ref(), pod_sc)
                .map_err(|r| err(format!("container {:?}: {r}", c.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            Ok(EdgeInitContainer {
                container: container(c, meta.annotations.as_ref(), pod_sc)
                    .map_err(|r| err(format!("init container {:?}: {r}", c.name)))?,
                sidecar: c.restart_policy.as_deref() == Some("Always"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dns = pod_dns(&spec).map_err(err)?;
    let volumes = spec
        .volumes
        .unwrap_or_default()
        .iter()
        .map(|v| volume(v).map_err(|r| err(format!("volume {:?}: {r}", v.name))))
        .collect::<Result<Vec<_>, _>>()?;
    let deletion = meta.deletion_timestamp.as_ref().map(|_| {
        meta.deletion_grace_period_seconds
            .unwrap_or(spec.termination_grace_period_seconds.unwrap_or(30))
            .max(0) as u64
    });
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let all_annotations = meta.annotations.clone().unwrap_or_default();
    let mut pod = EdgePod {
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid.unwrap_or_default(),
        labels: meta.labels.unwrap_or_default(),
        containers,
        restart_policy,
        termination_grace_period_seconds: spec.termination_grace_period_seconds.unwrap_or(30).max(0)
            as u64,
        volumes,
        deletion_grace_period_seconds: deletion,
        dns,
        init_containers,
        annotations: BTreeMap::new(),
        security: security::pod_security(pod_sc),
        hosts: Box::new(PodHosts {
            hostname: spec.hostname.filter(|h| !h.is_empty()),
            subdomain: spec.subdomain.filter(|s| !s.is_empty()),
            hostname_as_fqdn: spec.set_hostname_as_fqdn == Some(true),
            aliases: spec
                .host_aliases
                .into_iter()
                .flatten()
                .map(|a| HostAlias {
                    ip: a.ip,
                    hostnames: a.hostnames.unwrap_or_default(),
                })
                .collect(),
        }),
    };
    // Only the annotations the pod reads travel (see `EdgePod::annotations`).
    pod.annotations = match annotations_read(&pod) {
        None => all_annotations,
        Some(keys) => all_annotations
            .into_iter()
            .filter(|(k, _)| keys.contains(k))
            .collect(),
    };
    // The service account never changes on a pod: the edge gets its name as a literal.
    for c in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().map(|i| &mut i.container))
    {
        for var in &mut c.env {
            if var.value == EnvValue::FieldRef("spec.serviceAccountName".into()) {
                var.value = EnvValue::Literal(service_account.clone());
            }
        }
    }
    Ok(pod)
}

/// `dnsPolicy` (default `ClusterFirst`) and `dnsConfig`, as the API validated them.
fn pod_dns(spec: &core::PodSpec) -> Result<PodDns, String> {
    let policy = match spec.dns_policy.as_deref() {
        None | Some("") => DnsPolicy::ClusterFirst,
        Some(p) => DnsPolicy::parse(p).ok_or_else(|| format!("dnsPolicy {p:?}"))?,
    };
    let config = spec.dns_config.as_ref().map(|c| {
        Box::new(PodDnsConfig {
            nameservers: c.nameservers.clone().unwrap_or_default(),
            searches: c.searches.clone().unwrap_or_default(),
            options: c
                .options
                .iter()
                .flatten()
                .map(|o| DnsOption {
                    name: o.name.clone().unwrap_or_default(),
                    value: o.value.clone(),
                })
                .collect(),
        })
    });
    Ok(PodDns { policy, config })
}

/// A probe port as a number: numbers pass (in range), names are looked up among the
/// container's ports (then, as kubelet does, tried as a number written as a string).
fn probe_port(port: &IntOrString, c: &core::Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("probe port {n} is out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse::<u16>().ok().filter(|n| *n > 0))
            .ok_or_else(|| format!("probe port {name:?} names no port of the container")),
    }
}

/// A probe with Kubernetes' defaults applied (period 10, timeout 1, success 1, failure 3;
/// httpGet path `/`, scheme `HTTP`) and its port resolved.
fn probe(p: &core::Probe, c: &core::Container) -> Result<Probe, String> {
    let action = if let Some(e) = &p.exec {
        ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::TcpSocket {
            host: t.host.clone().unwrap_or_default(),
            port: probe_port(&t.port, c)?,
        }
    } else if let Some(h) = &p.http_get {
        let or_default = |v: &Option<String>, d: &str| {
            v.clone()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        ProbeAction::HttpGet {
            host: h.host.clone().unwrap_or_default(),
            port: probe_port(&h.port, c)?,
            path: or_default(&h.path, "/"),
            scheme: or_default(&h.scheme, "HTTP"),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if p.grpc.is_some() {
        return Err(
            "grpc probes are not supported on edge nodes; use exec, tcpSocket or httpGet".into(),
        );
    } else {
        return Err("probe has no handler".into());
    };
    // Zero or negative (only in objects the API did not default) means the default.
    let positive = |v: Option<i32>, default: u32| match v {
        Some(v) if v > 0 => v as u32,
        _ => default,
    };
    Ok(Probe {
        action,
        initial_delay_seconds: p.initial_delay_seconds.unwrap_or(0).max(0) as u32,
        period_seconds: positive(p.period_seconds, 10),
        timeout_seconds: positive(p.timeout_seconds, 1),
        success_threshold: positive(p.success_threshold, 1),
        failure_threshold: positive(p.failure_threshold, 3),
        termination_grace_period_seconds: p
            .termination_grace_period_seconds
            .filter(|g| *g > 0)
            .map(|g| g as u64),
    })
}

fn env_from(e: &core::EnvFromSource) -> Result<EnvFromSource, String> {
    let (source, optional) = match (&e.config_map_ref, &e.secret_ref) {
        (Some(c), None) => (EnvFromKind::ConfigMap(c.name.clone()), c.optional),
        (None, Some(s)) => (EnvFromKind::Secret(s.name.clone()), s.optional),
        _ => return Err("envFrom needs exactly one of configMapRef and secretRef".into()),
    };
    Ok(EnvFromSource {
        prefix: e.prefix.clone().unwrap_or_default(),
        source,
        optional: optional.unwrap_or(false),
    })
}

fn container(
    c: &core::Container,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    pod_security: Option<&core::PodSecurityContext>,
) -> Result<EdgeContainer, String> {
    let mut resources = Resources::default();
    if let Some(r) = &c.resources {
        let get =
            |m: &Option<
                std::collections::BTreeMap<
                    String,
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                >,
            >,
             k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()) };
        let cpu = |s: Option<String>| {
            s.map(|s| parse_cpu_millis(&s).map_err(|e| format!("cpu {s:?}: {e}")))
                .transpose()
        };
        let mem = |s: Option<String>| {
            s.map(|s| parse_memory_bytes(&s).map_err(|e| format!("memory {s:?}: {e}")))
                .transpose()
        };
        resources.cpu_request_millis = cpu(get(&r.requests, "cpu"))?;
        resources.cpu_limit_millis = cpu(get(&r.limits, "cpu"))?;
        resources.memory_request_bytes = mem(get(&r.requests, "memory"))?;
        resources.memory_limit_bytes = mem(get(&r.limits, "memory"))?;
    }
    let env = c
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (_, Some(from)) => {
                    if let Some(k) = &from.config_map_key_ref {
                        EnvValue::ConfigMapKey { name: k.name.clone(), key: k.key.clone(), optional: k.optional.unwrap_or(false) }
                    } else if let Some(k) = &from.secret_key_ref {
                        EnvValue::SecretKey { name: k.name.clone(), key: k.key.clone(), optional: k.optional.unwrap_or(false) }
                    } else if let Some(f) = &from.field_ref {
                        EnvValue::FieldRef(f.field_path.clone())
                    } else {
                        return Err(format!("env {:?}: only configMapKeyRef, secretKeyRef and fieldRef are supported", e.name));
                    }
                }
                (v, None) => EnvValue::Literal(v.clone().unwrap_or_default()),
            };
            Ok(EnvVar { name: e.name.clone(), value })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let ports = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Ok(ContainerPort {
                name: p.name.clone().unwrap_or_default(),
                container_port: u16::try_from(p.container_port)
                    .map_err(|_| format!("containerPort {}", p.container_port))?,
                host_port: u16::try_from(p.host_port.unwrap_or(0))
                    .map_err(|_| "hostPort out of range".to_string())?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(EdgeContainer {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_pull_policy: c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into()),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        env,
        ports,
        resources,
        volume_mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
                sub_path: m.sub_path.clone().unwrap_or_default(),
            })
            .collect(),
        env_from: c
            .env_from
            .iter()
            .flatten()
            .map(env_from)
            .collect::<Result<_, _>>()?,
        devices: devices::for_container(annotations, &c.name).map_err(|e| e.to_string())?,
        liveness_probe: c
            .liveness_probe
            .as_ref()
            .map(|p| probe(p, c).map_err(|e| format!("livenessProbe: {e}")))
            .transpose()?,
        readiness_probe: c
            .readiness_probe
            .as_ref()
            .map(|p| probe(p, c).map_err(|e| format!("readinessProbe: {e}")))
            .transpose()?,
        startup_probe: c
            .startup_probe
            .as_ref()
            .map(|p| probe(p, c).map_err(|e| format!("startupProbe: {e}")))
            .transpose()?,
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        security: security::container_security(pod_security, c.security_context.as_ref()),
        lifecycle: Lifecycle {
            post_start: hook(c, |l| l.post_start.as_ref())
                .map_err(|e| format!("lifecycle.postStart: {e}"))?,
            pre_stop: hook(c, |l| l.pre_stop.as_ref())
                .map_err(|e| format!("lifecycle.preStop: {e}"))?,
        },
    })
}

/// A lifecycle hook of `c` (the one `which` picks), its port resolved as a probe's and the
/// httpGet defaults applied; tcpSocket, which kubelet does not run, is refused (as the API
/// refuses it, see `support`).
fn hook(
    c: &core::Container,
    which: impl Fn(&core::Lifecycle) -> Option<&core::LifecycleHandler>,
) -> Result<Option<LifecycleHandler>, String> {
    let Some(h) = c.lifecycle.as_ref().and_then(which) else {
        return Ok(None);
    };
    let handler = if let Some(e) = &h.exec {
        LifecycleHandler::Exec {
            command: e.command.clone().unwrap_or_default(),
        }
    } else if let Some(g) = &h.http_get {
        let or_default = |v: &Option<String>, d: &str| {
            v.clone()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        LifecycleHandler::HttpGet {
            host: g.host.clone().unwrap_or_default(),
            port: probe_port(&g.port, c)?,
            path: or_default(&g.path, "/"),
            scheme: or_default(&g.scheme, "HTTP"),
            headers: g
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    } else if let Some(s) = &h.sleep {
        LifecycleHandler::Sleep {
            seconds: s.seconds.max(0) as u64,
        }
    } else if h.tcp_socket.is_some() {
        return Err("tcpSocket hooks are not run; use exec, httpGet or sleep".into());
    } else {
        return Err("hook has no handler".into());
    };
    Ok(Some(handler))
}

/// Projects a stored ConfigMap or Secret (`kind` says which) into what goes in an upsert.
pub fn edge_config(
    kind: protocol::messages::ObjectKind,
    value: &Value,
) -> Result<protocol::messages::EdgeObject, ProjectionError> {
    use protocol::messages::{EdgeObject, ObjectKind};
    match kind {
        ObjectKind::ConfigMap => edge_config_map(value).map(EdgeObject::ConfigMap),
        ObjectKind::Secret => edge_secret(value).map(EdgeObject::Secret),
        ObjectKind::Pod => edge_pod(value).map(EdgeObject::Pod),
        ObjectKind::Service => edge_service(value).map(EdgeObject::Service),
        ObjectKind::EndpointSlice => edge_endpoint_slice(value).map(EdgeObject::EndpointSlice),
        ObjectKind::Network | ObjectKind::Overlay | ObjectKind::Ingress => Err(ProjectionError {
            object: format!("network settings {}", name_of(value)),
            reason: "are built by the hub, not read from the store".into(),
        }),
    }
}

/// Projects a stored ConfigMap: `data` as is, `binaryData` decoded.
pub fn edge_config_map(value: &Value) -> Result<EdgeConfigMap, ProjectionError> {
    let cm: core::ConfigMap =
        serde_json::from_value(value.clone()).map_err(|e| ProjectionError {
            object: format!("ConfigMap {}", name_of(value)),
            reason: e.to_string(),
        })?;
    Ok(EdgeConfigMap {
        namespace: cm.metadata.namespace.unwrap_or_default(),
        name: cm.metadata.name.unwrap_or_default(),
        data: cm.data.unwrap_or_default(),
        binary_data: cm
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    })
}

/// Projects a stored Secret: `data` decoded (with any `stringData` folded in, should a stored
/// object carry one), `type` defaulted to `Opaque`. Errors name the field, never the value.
pub fn edge_secret(value: &Value) -> Result<EdgeSecret, ProjectionError> {
    let s: core::Secret = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        ProjectionError {
            object: format!("Secret {}", name_of(value)),
            // The decoder's message may quote the offending value: keep only where it failed.
            reason: format!("field {} does not decode", e.path()),
        }
    })?;
    let mut data: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    Ok(EdgeSecret {
        namespace: s.metadata.namespace.unwrap_or_default(),
        name: s.metadata.name.unwrap_or_default(),
        kind: s
            .type_
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| crate::api::secrets::DEFAULT_TYPE.into()),
        data,
    })
}

fn items(items: &Option<Vec<core::KeyToPath>>) -> Vec<KeyToPath> {
    items
        .iter()
        .flatten()
        .map(|i| KeyToPath {
            key: i.key.clone(),
            path: i.path.clone(),
            mode: i.mode.map(|m| m as u32),
        })
        .collect()
}

fn volume(v: &core::Volume) -> Result<Volume, String> {
    let source = if let Some(e) = &v.empty_dir {
        VolumeSource::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
            size_limit_bytes: e
                .size_limit
                .as_ref()
                .map(|q| parse_memory_bytes(&q.0))
                .transpose()
                .map_err(|e| format!("sizeLimit: {e}"))?,
        }
    } else if let Some(h) = &v.host_path {
        VolumeSource::HostPath {
            path: h.path.clone(),
            kind: h.type_.clone().unwrap_or_default(),
        }
    } else if let Some(c) = &v.config_map {
        VolumeSource::ConfigMap {
            name: c.name.clone(),
            items: items(&c.items),
            default_mode: c.default_mode.map(|m| m as u32),
            optional: c.optional.unwrap_or(false),
        }
    } else if let Some(s) = &v.secret {
        VolumeSource::Secret {
            name: s.secret_name.clone().unwrap_or_default(),
            items: items(&s.items),
            default_mode: s.default_mode.map(|m| m as u32),
            optional: s.optional.unwrap_or(false),
        }
    } else if let Some(d) = &v.downward_api {
        VolumeSource::DownwardApi {
            items: downward_items(&d.items)?,
            default_mode: d.default_mode.map(|m| m as u32),
        }
    } else if let Some(p) = &v.projected {
        let sources = p
            .sources
            .iter()
            .flatten()
            .map(|s| {
                if let Some(c) = &s.config_map {
                    Ok(ProjectedSource::ConfigMap {
                        name: c.name.clone(),
                        items: items(&c.items),
                        optional: c.optional.unwrap_or(false),
                    })
                } else if let Some(c) = &s.secret {
                    Ok(ProjectedSource::Secret {
                        name: c.name.clone(),
                        items: items(&c.items),
                        optional: c.optional.unwrap_or(false),
                    })
                } else if let Some(d) = &s.downward_api {
                    Ok(ProjectedSource::DownwardApi {
                        items: downward_items(&d.items)?,
                    })
                } else {
                    Err("projected sources other than configMap, secret and downwardAPI are not supported on the edge".to_string())
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        VolumeSource::Projected {
            sources,
            default_mode: p.default_mode.map(|m| m as u32),
        }
    } else {
        return Err(format!(
            "only {} volumes are supported on the edge",
            support::VOLUME_KINDS.join(", ")
        ));
    };
    Ok(Volume {
        name: v.name.clone(),
        source,
    })
}

/// The files of a downwardAPI volume or projection (the API refused what is not listed in
/// `protocol::downward::VOLUME_PATHS`).
fn downward_items(
    items: &Option<Vec<core::DownwardAPIVolumeFile>>,
) -> Result<Vec<DownwardFile>, String> {
    items
        .iter()
        .flatten()
        .map(|i| {
            let path = i
                .field_ref
                .as_ref()
                .map(|f| f.field_path.as_str())
                .ok_or_else(|| {
                    format!("downwardAPI file {:?}: only fieldRef is supported", i.path)
                })?;
            let field = PodField::parse(path)
                .ok_or_else(|| format!("downwardAPI file {:?}: fieldPath {path:?}", i.path))?;
            Ok(DownwardFile {
                path: i.path.clone(),
                field,
                mode: i.mode.map(|m| m as u32),
            })
        })
        .collect()
}

/// The annotation keys the pod's downward API files and env `fieldRef`s read: `None` for
/// every one (a file of `metadata.annotations`).
fn annotations_read(pod: &EdgePod) -> Option<std::collections::BTreeSet<String>> {
    let mut keys = std::collections::BTreeSet::new();
    let files = pod.volumes.iter().flat_map(|v| match &v.source {
        VolumeSource::DownwardApi { items, .. } => items.iter().collect::<Vec<_>>(),
        VolumeSource::Projected { sources, .. } => sources
            .iter()
            .flat_map(|s| match s {
                ProjectedSource::DownwardApi { items } => items.iter().collect(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    });
    for file in files {
        keys.extend(file.field.annotations_read()?.into_iter().map(String::from));
    }
    for var in pod.all_containers().flat_map(|c| &c.env) {
        if let EnvValue::FieldRef(path) = &var.value {
            if let Some(k) = protocol::downward::subscript(path, "metadata.annotations") {
                keys.insert(k.to_string());
            }
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn downward_files_travel_with_only_the_annotations_they_read() {
        let v = json!({
            "metadata": {"name": "self", "namespace": "default", "uid": "u1",
                "annotations": {"team": "rail", "kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
            "spec": {"serviceAccountName": "builder", "containers": [{
                "name": "main", "image": "busybox",
                "env": [{"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                        {"name": "T", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}}]
            }], "volumes": [
                {"name": "d", "downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "p", "projected": {"defaultMode": 0o440, "sources": [
                    {"secret": {"name": "s"}},
                    {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}
            ]}
        });
        let p = edge_pod(&v).unwrap();
        assert_eq!(
            p.annotations,
            BTreeMap::from([("team".to_string(), "rail".to_string())])
        );
        assert_eq!(
            p.containers[0].env[0].value,
            EnvValue::Literal("builder".into())
        );
        assert_eq!(
            p.volumes[0].source,
            VolumeSource::DownwardApi {
                items: vec![DownwardFile {
                    path: "l".into(),
                    field: PodField::Labels,
                    mode: None
                }],
                default_mode: None
            }
        );
        let VolumeSource::Projected {
            sources,
            default_mode,
        } = &p.volumes[1].source
        else {
            panic!("{:?}", p.volumes[1]);
        };
        assert_eq!(*default_mode, Some(0o440));
        assert_eq!(sources.len(), 2);
        // The projected Secret is one the node may read.
        assert!(p
            .config_refs()
            .iter()
            .any(|r| r.kind == protocol::messages::ObjectKind::Secret && r.name == "s"));
        // A file of every annotation carries them all.
        let mut all = v.clone();
        all["spec"]["volumes"][0]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] =
            json!("metadata.annotations");
        assert_eq!(edge_pod(&all).unwrap().annotations.len(), 2);
    }

    #[test]
    fn projects_what_the_edge_needs() {
        let v = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "labels": {"app": "web"},
                          "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 5},
            "spec": {"nodeName": "n1", "restartPolicy": "OnFailure", "containers": [{
                "name": "main", "image": "busybox", "command": ["sh"], "args": ["-c", "sleep 1"],
                "env": [{"name": "A", "value": "1"}, {"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}
            }], "volumes": [{"name": "d", "emptyDir": {}}]}
        });
        let p = edge_pod(&v).unwrap();
        assert_eq!(p.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(p.deletion_grace_period_seconds, Some(5));
        let c = &p.containers[0];
        assert_eq!(c.resources.memory_limit_bytes, Some(64 << 20));
        assert_eq!(c.resources.cpu_limit_millis, Some(250));
        assert_eq!(c.env[1].value, EnvValue::FieldRef("metadata.name".into()));
        assert_eq!(c.ports[0].protocol, "TCP");
        assert_eq!(
            node_of(&crate::store::ObjectKey::new("pods", "default", "web"), &v).as_deref(),
            Some("n1")
        );
        // No probes, devices or envFrom asked for: none sent.
        assert_eq!(c.liveness_probe, None);
        assert!(c.devices.is_empty() && c.env_from.is_empty());
    }

    #[test]
    fn projects_the_pods_dns_policy_and_config() {
        let v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(edge_pod(&v).unwrap().dns, PodDns::default());
        let v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"dnsPolicy": "None", "containers": [{"name": "c", "image": "i"}],
                     "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.example"],
                                   "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        let dns = edge_pod(&v).unwrap().dns;
        assert_eq!(dns.policy, DnsPolicy::None);
        let config = dns.config.unwrap();
        assert_eq!(config.nameservers, ["1.2.3.4"]);
        assert_eq!(config.searches, ["a.example"]);
        assert_eq!(
            config.options,
            [
                DnsOption {
                    name: "ndots".into(),
                    value: Some("2".into())
                },
                DnsOption {
                    name: "edns0".into(),
                    value: None
                }
            ]
        );
    }

    fn one_container(
        container: serde_json::Value,
        annotations: serde_json::Value,
    ) -> EdgeContainer {
        let v = json!({"metadata": {"name": "p", "namespace": "default", "annotations": annotations},
            "spec": {"nodeName": "n1", "containers": [container]}});
        edge_pod(&v).unwrap().containers.remove(0)
    }

    #[test]
    fn security_contexts_are_projected_merged_per_container() {
        let v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                    "supplementalGroups": [4000]},
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [{"name": "c", "image": "i",
                    "securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"]}}},
                    {"name": "plain", "image": "i"}]}});
        let p = edge_pod(&v).unwrap();
        let pod = p.security.as_deref().unwrap();
        assert_eq!(
            (pod.fs_group, pod.run_as_user, &pod.supplemental_groups),
            (Some(2000), Some(1000), &vec![4000, 2000])
        );
        let c = p.containers[0].security.as_deref().unwrap();
        assert_eq!((c.run_as_user, c.run_as_group), (Some(0), Some(3000)));
        assert_eq!(c.capabilities_drop, ["ALL"]);
        assert_eq!(c.supplemental_groups, [4000, 2000]);
        let plain = p.containers[1].security.as_deref().unwrap();
        assert_eq!(plain.run_as_user, Some(1000));
        let init = p.init_containers[0].container.security.as_deref().unwrap();
        assert_eq!(init.run_as_group, Some(3000));
        // An empty securityContext (what the API defaults) sends nothing.
        let v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"securityContext": {}, "containers": [{"name": "c", "image": "i",
                "securityContext": {}}]}});
        let p = edge_pod(&v).unwrap();
        assert_eq!((p.security, &p.containers[0].security), (None, &None));
        // What the edge cannot honour is a projection error, as at the API.
        let v = json!({"metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "securityContext": {"seLinuxOptions": {"level": "s0"}}}]}});
        assert!(edge_pod(&v).unwrap_err().reason.contains("seLinuxOptions"));
    }

    #[test]
    fn lifecycle_hooks_are_projected_with_named_ports_resolved() {
        let c = one_container(
            json!({"name": "web", "image": "x",
                "ports": [{"name": "admin", "containerPort": 9000}],
                "lifecycle": {
                    "postStart": {"exec": {"command": ["touch", "/ready"]}},
                    "preStop": {"httpGet": {"port": "admin", "path": "/quit",
                        "httpHeaders": [{"name": "X-Why", "value": "stop"}]}}}}),
            json!({}),
        );
        assert_eq!(
            c.lifecycle,
            Lifecycle {
                post_start: Some(LifecycleHandler::Exec {
                    command: vec!["touch".into(), "/ready".into()]
                }),
                pre_stop: Some(LifecycleHandler::HttpGet {
                    host: String::new(),
                    port: 9000,
                    path: "/quit".into(),
                    scheme: "HTTP".into(),
                    headers: vec![("X-Why".into(), "stop".into())],
                }),
            }
        );
        let sleep = one_container(
            json!({"name": "web", "image": "x",
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}),
            json!({}),
        );
        assert_eq!(
            sleep.lifecycle.pre_stop,
            Some(LifecycleHandler::Sleep { seconds: 5 })
        );
        assert_eq!(sleep.lifecycle.post_start, None);
        let plain = one_container(json!({"name": "web", "image": "x"}), json!({}));
        assert!(plain.lifecycle.is_empty());
    }

    #[test]
    fn probes_get_defaults_and_named_ports_resolve() {
        let c = one_container(
            json!({"name": "web", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
                "livenessProbe": {"httpGet": {"port": "http", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                    "initialDelaySeconds": 5, "terminationGracePeriodSeconds": 3},
                "readinessProbe": {"tcpSocket": {"port": "admin", "host": "10.0.0.1"}, "periodSeconds": 2,
                    "successThreshold": 2, "failureThreshold": 5, "timeoutSeconds": 4},
                "startupProbe": {"exec": {"command": ["cat", "/ready"]}}}),
            json!({}),
        );
        assert_eq!(
            c.liveness_probe,
            Some(Probe {
                action: ProbeAction::HttpGet {
                    host: String::new(),
                    port: 8080,
                    path: "/".into(),
                    scheme: "HTTP".into(),
                    headers: vec![("X-Probe".into(), "1".into())],
                },
                initial_delay_seconds: 5,
                period_seconds: 10,
                timeout_seconds: 1,
                success_threshold: 1,
                failure_threshold: 3,
                termination_grace_period_seconds: Some(3),
            })
        );
        let r = c.readiness_probe.unwrap();
        assert_eq!(
            r.action,
            ProbeAction::TcpSocket {
                host: "10.0.0.1".into(),
                port: 9090
            }
        );
        assert_eq!(
            (
                r.period_seconds,
                r.timeout_seconds,
                r.success_threshold,
                r.failure_threshold
            ),
            (2, 4, 2, 5)
        );
        assert_eq!(
            c.startup_probe.unwrap().action,
            ProbeAction::Exec {
                command: vec!["cat".into(), "/ready".into()]
            }
        );
    }

    #[test]
    fn unknown_named_ports_and_grpc_are_projection_errors() {
        let v = |probe: serde_json::Value| {
            json!({"metadata": {"name": "p", "namespace": "default"},
                "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "x",
                    "ports": [{"name": "http", "containerPort": 80}], "livenessProbe": probe}]}})
        };
        let e = edge_pod(&v(json!({"tcpSocket": {"port": "metrics"}}))).unwrap_err();
        assert!(e.to_string().contains("\"metrics\" names no port"), "{e}");
        assert!(
            e.to_string().starts_with("pod default/p cannot be sent"),
            "{e}"
        );
        let e = edge_pod(&v(json!({"grpc": {"port": 80}}))).unwrap_err();
        assert!(e.reason.contains("grpc probes are not supported"), "{e}");
        // A number written as a string still works, as kubelet allows.
        let ok = edge_pod(&v(json!({"tcpSocket": {"port": "8081"}}))).unwrap();
        assert!(matches!(
            ok.containers[0].liveness_probe.as_ref().unwrap().action,
            ProbeAction::TcpSocket { port: 8081, .. }
        ));
    }

    #[test]
    fn env_from_and_devices_are_projected() {
        let c = one_container(
            json!({"name": "reader", "image": "x",
                "envFrom": [{"configMapRef": {"name": "settings"}},
                            {"secretRef": {"name": "creds", "optional": true}, "prefix": "DB_"}]}),
            json!({"devices.skerry.io/reader": "/dev/ttyUSB0, /dev/ttyACM0:/dev/ttyS1:r",
                   "devices.skerry.io/other": "/dev/video0"}),
        );
        assert_eq!(
            c.env_from,
            [
                EnvFromSource {
                    prefix: String::new(),
                    source: EnvFromKind::ConfigMap("settings".into()),
                    optional: false
                },
                EnvFromSource {
                    prefix: "DB_".into(),
                    source: EnvFromKind::Secret("creds".into()),
                    optional: true
                },
            ]
        );
        assert_eq!(
            c.devices,
            [
                DeviceMapping {
                    host_path: "/dev/ttyUSB0".into(),
                    container_path: "/dev/ttyUSB0".into(),
                    permissions: "rwm".into()
                },
                DeviceMapping {
                    host_path: "/dev/ttyACM0".into(),
                    container_path: "/dev/ttyS1".into(),
                    permissions: "r".into()
                },
            ]
        );
    }

    #[test]
    fn config_maps_and_secrets_are_projected_decoded() {
        let cm = edge_config_map(&json!({"metadata": {"name": "cfg", "namespace": "ns"},
            "data": {"a": "1"}, "binaryData": {"b": "AAE="}}))
        .unwrap();
        assert_eq!(cm.namespace, "ns");
        assert_eq!(cm.get("a"), Some(&b"1"[..]));
        assert_eq!(cm.get("b"), Some(&[0u8, 1][..]));
        // "aHVudGVyMg==" is "hunter2".
        let s = edge_secret(&json!({"metadata": {"name": "db", "namespace": "ns"},
            "data": {"password": "aHVudGVyMg=="}}))
        .unwrap();
        assert_eq!(s.kind, "Opaque");
        assert_eq!(s.data["password"], b"hunter2");
        let e = edge_secret(&json!({"metadata": {"name": "db", "namespace": "ns"},
            "data": {"password": "hunter2!"}}))
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("data"), "{e}");
    }
}
