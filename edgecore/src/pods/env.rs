//! Resolution of a container's environment and `$(VAR)` references, as kubelet does it.
//!
//! Runtimes get the final values ([`crate::runtime::ContainerConfig::env`]) so that every runtime
//! behaves the same: `envFrom` sources first (in order, each key with its `prefix`), then `env`
//! (literal values with `$(VAR)` expanded against the variables defined before them, field
//! references filled from the pod and the node, ConfigMap/Secret keys), later definitions winning.
//! ConfigMaps and Secrets come from the node's cache through [`ConfigLookup`]. `command` and
//! `args` are expanded against the complete environment.
//!
//! A reference that cannot be resolved and is not optional is an error whose message becomes the
//! container's `CreateContainerConfigError`: the worker retries, so the container starts once the
//! object arrives. Messages name the object and key, never a value.

use crate::cache::ConfigSet;
use protocol::downward::subscript;
use protocol::pod::{EdgeContainer, EdgePod, EnvFromKind, EnvValue};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

/// Where ConfigMaps and Secrets come from: the node's cache, as of the last sync of the pod
/// manager (see `super::ConfigView`), or a fixed set.
pub(crate) trait ConfigLookup: Send + Sync + 'static {
    /// The node's ConfigMaps and Secrets as they are now.
    fn configs(&self) -> Arc<ConfigSet>;
}

impl ConfigLookup for ConfigSet {
    fn configs(&self) -> Arc<ConfigSet> {
        Arc::new(self.clone())
    }
}

/// Why a ConfigMap or Secret is missing, for messages: it may not exist in the cluster, or not
/// have reached this node yet; either way the container waits for it.
fn not_available(kind: &str, name: &str, namespace: &str) -> String {
    format!(
        "{kind} {name:?} (namespace {namespace:?}) is not available on this node (it does not \
         exist, or has not arrived yet); the container starts once it arrives"
    )
}

/// Whether `name` is a valid environment variable name for Kubernetes (`IsEnvVarName`):
/// letters, digits, `_`, `-` and `.`, not starting with a digit.
pub(crate) fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.') => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// An object's keys with their values as text (`None`: not UTF-8), as `envFrom` reads them.
type TextEntries<'a> = Vec<(&'a str, Option<String>)>;

/// The variables of one `envFrom` source, in key order; `Ok(None)` for a missing optional
/// object. Keys that do not make valid names, and Secret values that are not text, are skipped
/// with a warning, as kubelet skips invalid names.
fn env_from_source(
    source: &protocol::pod::EnvFromSource,
    namespace: &str,
    configs: &ConfigSet,
) -> Result<Option<Vec<(String, String)>>, String> {
    let (kind, name, entries): (&str, &str, Option<TextEntries<'_>>) = match &source.source {
        // Kubernetes takes `data` only: binaryData keys are not turned into variables.
        EnvFromKind::ConfigMap(name) => (
            "configmap",
            name,
            configs.config_map(namespace, name).map(|cm| {
                cm.data
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.clone())))
                    .collect()
            }),
        ),
        EnvFromKind::Secret(name) => (
            "secret",
            name,
            configs.secret(namespace, name).map(|s| {
                s.data
                    .iter()
                    .map(|(k, v)| (k.as_str(), String::from_utf8(v.clone()).ok()))
                    .collect()
            }),
        ),
    };
    let Some(entries) = entries else {
        if source.optional {
            return Ok(None);
        }
        return Err(format!("envFrom: {}", not_available(kind, name, namespace)));
    };
    let mut out = Vec::with_capacity(entries.len());
    let mut invalid = Vec::new();
    for (key, value) in entries {
        let var = format!("{}{key}", source.prefix);
        if !is_env_var_name(&var) {
            invalid.push(var);
            continue;
        }
        match value {
            Some(value) => out.push((var, value)),
            None => warn!(
                %kind, object = %name, %namespace, key,
                "envFrom: skipping a key whose value is not UTF-8 text"
            ),
        }
    }
    if !invalid.is_empty() {
        warn!(
            %kind, object = %name, %namespace, names = ?invalid,
            "envFrom: skipping keys that are not valid environment variable names"
        );
    }
    Ok(Some(out))
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
            // Single-stack: the lists hold the one address.
            "status.podIP" | "status.podIPs" => Ok(self.pod_ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Ok(self.host_ip.to_string()),
            _ => {
                // Kubernetes resolves a missing label or annotation to the empty string.
                if let Some(key) = subscript(path, "metadata.labels") {
                    return Ok(self.pod.labels.get(key).cloned().unwrap_or_default());
                }
                if let Some(key) = subscript(path, "metadata.annotations") {
                    return Ok(self.pod.annotations.get(key).cloned().unwrap_or_default());
                }
                // The API refuses every other path; `spec.serviceAccountName` arrives as a
                // literal.
                Err(format!(
                    "fieldRef {path:?} is not supported on edge nodes; use one of {}",
                    protocol::downward::ENV_PATHS.join(", ")
                ))
            }
        }
    }
}

/// Resolves `container`'s environment, in order: every `envFrom` source, then `env` (a name
/// defined twice keeps its last value where the runtime applies them). `Err` carries the message
/// of a `CreateContainerConfigError`: a reference that cannot be resolved and is not optional.
pub(crate) fn resolve_env(
    container: &EdgeContainer,
    fields: &PodFields<'_>,
    lookup: &dyn ConfigLookup,
) -> Result<Vec<(String, String)>, String> {
    let configs = lookup.configs();
    let namespace = fields.pod.namespace.as_str();
    let mut env: Vec<(String, String)> = Vec::with_capacity(container.env.len());
    let mut defined: HashMap<String, String> = HashMap::new();
    for source in &container.env_from {
        for (name, value) in env_from_source(source, namespace, &configs)?.unwrap_or_default() {
            defined.insert(name.clone(), value.clone());
            env.push((name, value));
        }
    }
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
            } => {
                let found = match configs.config_map(namespace, name) {
                    None => Err(not_available("configmap", name, namespace)),
                    // Kubernetes reads `data` only.
                    Some(cm) => cm.data.get(key).cloned().ok_or_else(|| {
                        if cm.binary_data.contains_key(key) {
                            format!(
                                "key {key:?} of configmap {name:?} (namespace {namespace:?}) \
                                 is in its binaryData, which cannot be used as an environment \
                                 variable; move it to data"
                            )
                        } else {
                            format!(
                                "configmap {name:?} (namespace {namespace:?}) has no key \
                                 {key:?}; add it or mark the reference optional"
                            )
                        }
                    }),
                };
                match found {
                    Ok(value) => value,
                    Err(_) if *optional => continue,
                    Err(e) => {
                        return Err(format!(
                            "environment variable {:?} refers to key {key:?} of {e}",
                            var.name
                        ))
                    }
                }
            }
            EnvValue::SecretKey {
                name,
                key,
                optional,
            } => {
                let found = match configs.secret(namespace, name) {
                    None => Err(not_available("secret", name, namespace)),
                    Some(secret) => match secret.data.get(key) {
                        None => Err(format!(
                            "secret {name:?} (namespace {namespace:?}) has no key {key:?}; add \
                             it or mark the reference optional"
                        )),
                        Some(bytes) => String::from_utf8(bytes.clone()).map_err(|_| {
                            format!(
                                "secret {name:?} (namespace {namespace:?}): the value of key \
                                 {key:?} is not UTF-8 text and cannot be an environment \
                                 variable; mount the secret as a volume instead"
                            )
                        }),
                    },
                };
                match found {
                    Ok(value) => value,
                    Err(_) if *optional => continue,
                    Err(e) => {
                        return Err(format!(
                            "environment variable {:?} refers to key {key:?} of {e}",
                            var.name
                        ))
                    }
                }
            }
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
    use protocol::config::{EdgeConfigMap, EdgeSecret};
    use protocol::pod::{EnvFromSource, EnvVar, Resources, RestartPolicy};
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
            dns: Default::default(),
            init_containers: Vec::new(),
            hosts: Default::default(),
            annotations: Default::default(),
            security: None,
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
        let env = resolve_env(&pod.containers[0], &fields(&pod), &ConfigSet::default())
            .expect("resolves");
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
        let env = resolve_env(&pod.containers[0], &fields(&pod), &ConfigSet::default())
            .expect("resolves");
        let values: Vec<&str> = env.iter().map(|(_, v)| v.as_str()).collect();
        let want: Vec<&str> = paths.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, want);

        let bad = pod_with_env(vec![var(
            "SA",
            EnvValue::FieldRef("spec.serviceAccountName".into()),
        )]);
        let err =
            resolve_env(&bad.containers[0], &fields(&bad), &ConfigSet::default()).expect_err("bad");
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
        let env = resolve_env(
            &optional.containers[0],
            &fields(&optional),
            &ConfigSet::default(),
        )
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
            let err = resolve_env(&pod.containers[0], &fields(&pod), &ConfigSet::default())
                .expect_err("fails");
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("not available on this node"), "{err}");
        }
    }

    fn configs() -> ConfigSet {
        let mut set = ConfigSet::default();
        set.insert_config_map(EdgeConfigMap {
            namespace: "rigs".into(),
            name: "app".into(),
            data: BTreeMap::from([
                ("MODE".into(), "fast".into()),
                ("LEVEL".into(), "3".into()),
                ("has space".into(), "cm-secret-ish".into()),
                ("1ST".into(), "one".into()),
            ]),
            binary_data: BTreeMap::from([("BLOB".into(), vec![0, 1, 2])]),
        });
        set.insert_secret(EdgeSecret {
            namespace: "rigs".into(),
            name: "creds".into(),
            kind: "Opaque".into(),
            data: BTreeMap::from([
                ("LEVEL".into(), b"9".to_vec()),
                ("TOKEN".into(), b"hunter2".to_vec()),
                ("RAW".into(), vec![0xff, 0xfe]),
            ]),
        });
        // Same name in another namespace: never seen by pods of "rigs".
        set.insert_config_map(EdgeConfigMap {
            namespace: "other".into(),
            name: "elsewhere".into(),
            data: BTreeMap::from([("X".into(), "x".into())]),
            binary_data: BTreeMap::new(),
        });
        set
    }

    fn from(source: EnvFromKind, prefix: &str, optional: bool) -> EnvFromSource {
        EnvFromSource {
            prefix: prefix.into(),
            source,
            optional,
        }
    }

    #[test]
    fn env_from_sources_apply_in_order_before_env() {
        let mut pod = pod_with_env(vec![
            var("LEVEL", EnvValue::Literal("env-$(LEVEL)-$(S_TOKEN)".into())),
            var("MODE", EnvValue::Literal("$(MODE)!".into())),
        ]);
        pod.containers[0].env_from = vec![
            from(EnvFromKind::ConfigMap("app".into()), "", false),
            from(EnvFromKind::Secret("creds".into()), "", false),
            from(EnvFromKind::Secret("creds".into()), "S_", false),
            from(EnvFromKind::ConfigMap("absent".into()), "", true),
            from(EnvFromKind::Secret("absent".into()), "", true),
        ];
        let env = resolve_env(&pod.containers[0], &fields(&pod), &configs()).expect("resolves");
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                // ConfigMap data in key order; "1ST" and "has space" are not valid names, and
                // binaryData is not used.
                ("LEVEL", "3"),
                ("MODE", "fast"),
                // The secret's LEVEL comes later and wins; RAW is not text.
                ("LEVEL", "9"),
                ("TOKEN", "hunter2"),
                ("S_LEVEL", "9"),
                ("S_TOKEN", "hunter2"),
                // env comes last, sees everything before it, and wins.
                ("LEVEL", "env-9-hunter2"),
                ("MODE", "fast!"),
            ]
        );
        // A prefix can turn an invalid key into a valid name.
        let mut prefixed = pod_with_env(vec![]);
        prefixed.containers[0].env_from =
            vec![from(EnvFromKind::ConfigMap("app".into()), "K_", false)];
        let env =
            resolve_env(&prefixed.containers[0], &fields(&prefixed), &configs()).expect("resolves");
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["K_1ST", "K_LEVEL", "K_MODE"]);
    }

    #[test]
    fn a_missing_env_from_source_fails_unless_optional() {
        for (source, needle) in [
            (
                EnvFromKind::ConfigMap("absent".into()),
                "configmap \"absent\"",
            ),
            (EnvFromKind::Secret("absent".into()), "secret \"absent\""),
            // Objects of other namespaces are not visible.
            (
                EnvFromKind::ConfigMap("elsewhere".into()),
                "configmap \"elsewhere\"",
            ),
        ] {
            let mut pod = pod_with_env(vec![]);
            pod.containers[0].env_from = vec![
                from(EnvFromKind::Secret("creds".into()), "", false),
                from(source, "", false),
            ];
            let err =
                resolve_env(&pod.containers[0], &fields(&pod), &configs()).expect_err("missing");
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("namespace \"rigs\""), "{err}");
            assert!(err.contains("not available on this node"), "{err}");
            assert!(err.contains("starts once it arrives"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn key_references_resolve_from_the_cache_and_name_what_is_missing() {
        let pod = pod_with_env(vec![
            var(
                "M",
                EnvValue::ConfigMapKey {
                    name: "app".into(),
                    key: "MODE".into(),
                    optional: false,
                },
            ),
            var(
                "T",
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "TOKEN".into(),
                    optional: false,
                },
            ),
            var(
                "GONE",
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "absent".into(),
                    optional: true,
                },
            ),
            var("BOTH", EnvValue::Literal("$(M)/$(T)".into())),
        ]);
        let env = resolve_env(&pod.containers[0], &fields(&pod), &configs()).expect("resolves");
        assert_eq!(
            env,
            vec![
                ("M".to_string(), "fast".to_string()),
                ("T".into(), "hunter2".into()),
                ("BOTH".into(), "fast/hunter2".into()),
            ]
        );

        let cases = [
            (
                EnvValue::ConfigMapKey {
                    name: "app".into(),
                    key: "nope".into(),
                    optional: false,
                },
                "has no key \"nope\"",
            ),
            (
                EnvValue::ConfigMapKey {
                    name: "app".into(),
                    key: "BLOB".into(),
                    optional: false,
                },
                "binaryData",
            ),
            (
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "nope".into(),
                    optional: false,
                },
                "secret \"creds\" (namespace \"rigs\") has no key \"nope\"",
            ),
            (
                EnvValue::SecretKey {
                    name: "creds".into(),
                    key: "RAW".into(),
                    optional: false,
                },
                "not UTF-8",
            ),
        ];
        for (value, needle) in cases {
            let pod = pod_with_env(vec![var("X", value)]);
            let err =
                resolve_env(&pod.containers[0], &fields(&pod), &configs()).expect_err("fails");
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("environment variable \"X\""), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("fast"), "{err}");
        }
    }

    #[test]
    fn env_var_names_follow_kubernetes() {
        for ok in ["A", "a_b", "_x", "-dash", ".dot", "A1.b-c_d"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "has space", "a=b", "ü", "a/b"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }
}
