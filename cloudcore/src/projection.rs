//! Turns the full Kubernetes Pod into the compact [`EdgePod`] that goes over the wire.
//!
//! The edge needs what it runs (containers, volumes, restart policy, grace periods) and nothing
//! of scheduling, status or managed fields: bandwidth is the scarce resource on an edge link.
//! The API validated the pod on write, so a failure here means a stored object is corrupt; the
//! hub reports it and skips that object rather than stalling the node's whole slice.

use crate::api::quantity::{parse_cpu_millis, parse_memory_bytes};
use k8s_openapi::api::core::v1 as core;
use protocol::pod::*;
use serde_json::Value;

/// Why a stored pod could not be projected.
#[derive(Debug, thiserror::Error)]
#[error("pod {pod} cannot be sent to its node: {reason}")]
pub struct ProjectionError {
    /// `namespace/name`.
    pub pod: String,
    /// What is wrong.
    pub reason: String,
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
pub fn shard(key: &crate::store::ObjectKey, value: &Value) -> Option<crate::store::Shard> {
    let name = node_of(key, value)?;
    let digest = match edge_pod(value).map(|p| protocol::codec::encode(&p)) {
        Ok(Ok(bytes)) => {
            use std::hash::{Hash, Hasher};
            // Compared only within one process (old vs new value of one write): the std hasher
            // with fixed keys is enough, no stability across versions is needed.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        }
        // A pod that cannot be projected is logged on every write, so the hub reports it.
        _ => rand::random(),
    };
    Some(crate::store::Shard { name, digest })
}

/// Projects a stored pod.
pub fn edge_pod(value: &Value) -> Result<EdgePod, ProjectionError> {
    let name_of = || {
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
    };
    let err = |reason: String| ProjectionError {
        pod: name_of(),
        reason,
    };
    let pod: core::Pod = serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
    let meta = pod.metadata;
    let spec = pod.spec.ok_or_else(|| err("no spec".into()))?;
    let restart_policy = match spec.restart_policy.as_deref() {
        None => RestartPolicy::Always,
        Some(p) => RestartPolicy::parse(p).ok_or_else(|| err(format!("restartPolicy {p:?}")))?,
    };
    let containers = spec
        .containers
        .iter()
        .map(|c| container(c).map_err(|r| err(format!("container {:?}: {r}", c.name))))
        .collect::<Result<Vec<_>, _>>()?;
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
    Ok(EdgePod {
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
    })
}

fn container(c: &core::Container) -> Result<EdgeContainer, String> {
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
        ..EdgeContainer::default()
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
    } else {
        return Err(
            "only emptyDir, hostPath, configMap and secret volumes are supported on the edge"
                .into(),
        );
    };
    Ok(Volume {
        name: v.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    }
}
