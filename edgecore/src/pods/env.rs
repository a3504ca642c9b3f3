//! Resolution of a container's environment and `$(VAR)` references, as kubelet does it.
//!
//! Runtimes get the final values ([`crate::runtime::ContainerConfig::env`]) so that every runtime
//! behaves the same: literal values with `$(VAR)` expanded against the variables defined before
//! them, field references filled from the pod and the node, and ConfigMap/Secret keys looked up
//! through [`ConfigLookup`]. `command` and `args` are expanded against the complete environment.

use protocol::pod::{EdgeContainer, EdgePod, EnvValue};
use std::collections::HashMap;

/// Where ConfigMap and Secret keys come from. The edge does not sync ConfigMaps and Secrets yet,
/// so the only implementation, [`NotSynced`], has none; the sync plugs in here.
pub(crate) trait ConfigLookup: Send + Sync + 'static {
    /// The value of `key` in ConfigMap `name` of `namespace`, or why it is not available.
    fn config_map_key(&self, namespace: &str, name: &str, key: &str) -> Result<String, String>;
    /// The value of `key` in Secret `name` of `namespace`, or why it is not available.
    fn secret_key(&self, namespace: &str, name: &str, key: &str) -> Result<String, String>;
}

/// No ConfigMap or Secret is available on this node (they are not synced to the edge yet).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NotSynced;

impl ConfigLookup for NotSynced {
    fn config_map_key(&self, namespace: &str, name: &str, _key: &str) -> Result<String, String> {
        Err(format!(
            "configmap {name:?} (namespace {namespace:?}) is not available on this node: \
             ConfigMaps are not synced to edge nodes yet; mark the reference optional or set \
             the value literally"
        ))
    }

    fn secret_key(&self, namespace: &str, name: &str, _key: &str) -> Result<String, String> {
        Err(format!(
            "secret {name:?} (namespace {namespace:?}) is not available on this node: Secrets \
             are not synced to edge nodes yet; mark the reference optional or set the value \
             literally"
        ))
    }
}

/// The pod and node facts field references may name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodFields<'a> {
    /// The pod.
    pub pod: &'a EdgePod,
    /// This node's name (`spec.nodeName`).
    pub node_name: &'a str,
    /// The sandbox's IP (`status.podIP`).
    pub pod_ip: &'a str,
    /// The node's IP (`status.hostIP`).
    pub host_ip: &'a str,
}

impl PodFields<'_> {
    /// The value of a `fieldRef` path, or why it cannot be resolved.
    fn get(&self, path: &str) -> Result<String, String> {
        match path {
            "metadata.name" => Ok(self.pod.name.clone()),
            "metadata.namespace" => Ok(self.pod.namespace.clone()),
            "metadata.uid" => Ok(self.pod.uid.clone()),
            "spec.nodeName" => Ok(self.node_name.to_string()),
            "status.podIP" => Ok(self.pod_ip.to_string()),
            "status.hostIP" => Ok(self.host_ip.to_string()),
            _ => {
                if let Some(key) = label_key(path) {
                    // Kubernetes resolves a missing label to the empty string.
                    return Ok(self.pod.labels.get(key).cloned().unwrap_or_default());
                }
                Err(format!(
                    "fieldRef {path:?} is not supported on edge nodes; use metadata.name, \
                     metadata.namespace, metadata.uid, metadata.labels['<key>'], spec.nodeName, \
                     status.podIP or status.hostIP"
                ))
            }
        }
    }
}

/// The key of a `metadata.labels['key']` path.
fn label_key(path: &str) -> Option<&str> {
    let inner = path.strip_prefix("metadata.labels[")?.strip_suffix(']')?;
    inner
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

/// Resolves `container`'s environment, in order. `Err` carries the message of a
/// `CreateContainerConfigError`: a reference that cannot be resolved and is not optional.
pub(crate) fn resolve_env(
    container: &EdgeContainer,
    fields: &PodFields<'_>,
    lookup: &dyn ConfigLookup,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::with_capacity(container.env.len());
    let mut defined: HashMap<String, String> = HashMap::new();
    for var in &container.env {
        let value = match &var.value {
            EnvValue::Literal(raw) => expand(raw, |name| defined.get(name).cloned()),
            EnvValue::FieldRef(path) => fields
                .get(path)
                .map_err(|e| format!("environment variable {:?}: {e}", var.name))?,
            EnvValue::ConfigMapKey {
                name,
                key,
                optional,
            } => match lookup.config_map_key(&fields.pod.namespace, name, key) {
                Ok(value) => value,
                Err(_) if *optional => continue,
                Err(e) => {
                    return Err(format!(
                        "environment variable {:?} refers to key {key:?} of {e}",
                        var.name
                    ))
                }
            },
            EnvValue::SecretKey {
                name,
                key,
                optional,
            } => match lookup.secret_key(&fields.pod.namespace, name, key) {
                Ok(value) => value,
                Err(_) if *optional => continue,
                Err(e) => {
                    return Err(format!(
                        "environment variable {:?} refers to key {key:?} of {e}",
                        var.name
                    ))
                }
            },
        };
        defined.insert(var.name.clone(), value.clone());
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// `container` with `$(VAR)` in its `command` and `args` expanded against `env` (the last value
/// of a name wins, as in Kubernetes).
pub(crate) fn expand_command(container: &EdgeContainer, env: &[(String, String)]) -> EdgeContainer {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| map.get(name).map(|v| v.to_string());
    let mut out = container.clone();
    out.command = container
        .command
        .iter()
        .map(|s| expand(s, lookup))
        .collect();
    out.args = container.args.iter().map(|s| expand(s, lookup)).collect();
    out
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of `NAME` if `lookup` knows it and
/// stays as written otherwise; `$$` is an escaped `$`; any other `$` is kept, as is an unclosed
/// `$(`.
pub(crate) fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A final `$` is kept.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::pod::{EnvVar, Resources, RestartPolicy};
    use std::collections::BTreeMap;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let cases = [
            ("$(A)", "alpha"),
            ("x-$(A)-y", "x-alpha-y"),
            ("$(A)$(A)", "alphaalpha"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$(EMPTY)x", "x"),
            ("é$(A)ü$é", "éalphaü$é"),
            ("no refs", "no refs"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup), want, "input {input:?}");
        }
    }

    fn var(name: &str, value: EnvValue) -> EnvVar {
        EnvVar {
            name: name.into(),
            value,
        }
    }

    fn pod_with_env(env: Vec<EnvVar>) -> EdgePod {
        EdgePod {
            namespace: "rigs".into(),
            name: "probe".into(),
            uid: "u-1".into(),
            labels: BTreeMap::from([("app".into(), "demo".into())]),
            containers: vec![EdgeContainer {
                name: "main".into(),
                image: "local".into(),
                image_pull_policy: "Never".into(),
                command: vec!["echo".into(), "$(GREETING)".into()],
                args: vec!["$(NODE)".into(), "$$(NODE)".into()],
                working_dir: String::new(),
                env,
                ports: vec![],
                resources: Resources::default(),
                volume_mounts: vec![],
                ..EdgeContainer::default()
            }],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            volumes: vec![],
            deletion_grace_period_seconds: None,
        }
    }

    fn fields(pod: &EdgePod) -> PodFields<'_> {
        PodFields {
            pod,
            node_name: "rig-7",
            pod_ip: "10.0.0.9",
            host_ip: "10.0.0.1",
        }
    }

    #[test]
    fn literals_refer_to_earlier_variables_only() {
        let pod = pod_with_env(vec![
            var("GREETING", EnvValue::Literal("hello $(LATER)".into())),
            var("NODE", EnvValue::FieldRef("spec.nodeName".into())),
            var("WHERE", EnvValue::Literal("$(NODE)/$(GREETING)".into())),
            var("LATER", EnvValue::Literal("late".into())),
            var("NODE", EnvValue::Literal("override-$(NODE)".into())),
        ]);
        let env = resolve_env(&pod.containers[0], &fields(&pod), &NotSynced).expect("resolves");
        assert_eq!(
            env,
            vec![
                ("GREETING".to_string(), "hello $(LATER)".to_string()),
                ("NODE".into(), "rig-7".into()),
                ("WHERE".into(), "rig-7/hello $(LATER)".into()),
                ("LATER".into(), "late".into()),
                ("NODE".into(), "override-rig-7".into()),
            ]
        );
        let c = expand_command(&pod.containers[0], &env);
        assert_eq!(c.command, ["echo", "hello $(LATER)"]);
        assert_eq!(c.args, ["override-rig-7", "$(NODE)"]);
    }

    #[test]
    fn field_refs_resolve_from_pod_and_node() {
        let paths = [
            ("metadata.name", "probe"),
            ("metadata.namespace", "rigs"),
            ("metadata.uid", "u-1"),
            ("spec.nodeName", "rig-7"),
            ("status.podIP", "10.0.0.9"),
            ("status.hostIP", "10.0.0.1"),
            ("metadata.labels['app']", "demo"),
            ("metadata.labels[\"app\"]", "demo"),
            ("metadata.labels['absent']", ""),
        ];
        let pod = pod_with_env(
            paths
                .iter()
                .enumerate()
                .map(|(i, (p, _))| var(&format!("V{i}"), EnvValue::FieldRef(p.to_string())))
                .collect(),
        );
        let env = resolve_env(&pod.containers[0], &fields(&pod), &NotSynced).expect("resolves");
        let values: Vec<&str> = env.iter().map(|(_, v)| v.as_str()).collect();
        let want: Vec<&str> = paths.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, want);

        let bad = pod_with_env(vec![var(
            "SA",
            EnvValue::FieldRef("spec.serviceAccountName".into()),
        )]);
        let err = resolve_env(&bad.containers[0], &fields(&bad), &NotSynced).expect_err("bad");
        assert!(err.contains("spec.serviceAccountName"), "{err}");
    }

    #[test]
    fn missing_config_maps_and_secrets_fail_unless_optional() {
        let optional = pod_with_env(vec![
            var("A", EnvValue::Literal("1".into())),
            var(
                "CM",
                EnvValue::ConfigMapKey {
                    name: "cfg".into(),
                    key: "k".into(),
                    optional: true,
                },
            ),
            var(
                "S",
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "k".into(),
                    optional: true,
                },
            ),
        ]);
        let env = resolve_env(&optional.containers[0], &fields(&optional), &NotSynced)
            .expect("optional refs are skipped");
        assert_eq!(env, vec![("A".to_string(), "1".to_string())]);

        for (value, needle) in [
            (
                EnvValue::ConfigMapKey {
                    name: "cfg".into(),
                    key: "k".into(),
                    optional: false,
                },
                "configmap \"cfg\"",
            ),
            (
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "k".into(),
                    optional: false,
                },
                "secret \"creds\"",
            ),
        ] {
            let pod = pod_with_env(vec![var("X", value)]);
            let err =
                resolve_env(&pod.containers[0], &fields(&pod), &NotSynced).expect_err("fails");
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("not available on this node"), "{err}");
        }
    }
}
