//! What an edge can run: the one check, shared by the API (which refuses a pod, or a
//! workload's pod template, with a 422 naming each field) and the projection (which cannot
//! carry what it lists), so that the two never disagree again. Before it, a pod with a
//! `persistentVolumeClaim` volume passed the API and sat `Pending` for ever, because the hub
//! could not project it.
//!
//! Everything of a pod spec that is not carried to the edge and honoured there is listed here
//! until it is: volume kinds other than emptyDir, hostPath, configMap, secret, downwardAPI
//! and projected (and projected sources other than configMap, secret and downwardAPI, and
//! downward API `resourceFieldRef`s); tcpSocket lifecycle hooks (kubelet does not run them)
//! and `lifecycle.stopSignal`; the `securityContext` fields [`super::security`] lists; the
//! host namespaces; ephemeral
//! containers; env `resourceFieldRef`; block devices; `subPathExpr` and mount propagation;
//! priority classes that do not exist (Skerry has no PriorityClass objects, only the two
//! built-in ones); and a few pod fields the edge would silently ignore
//! (`shareProcessNamespace`, `runtimeClassName`, `hostUsers`, `os: windows`). Fields the API
//! defaults itself (`terminationMessagePath`, `schedulerName`, an empty `securityContext`) are
//! not refused.

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use std::fmt;

/// The volume kinds the edge mounts.
pub const VOLUME_KINDS: [&str; 6] = [
    "configMap",
    "downwardAPI",
    "emptyDir",
    "hostPath",
    "projected",
    "secret",
];
/// The sources of a projected volume the edge writes.
pub const PROJECTED_SOURCES: [&str; 3] = ["configMap", "downwardAPI", "secret"];
/// The priority classes that exist: Kubernetes' two built-in ones.
pub const PRIORITY_CLASSES: [&str; 2] = ["system-cluster-critical", "system-node-critical"];
/// emptyDir media the edge honours (disk, or tmpfs).
pub const EMPTY_DIR_MEDIA: [&str; 2] = ["", "Memory"];

/// Why a field cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The value is not one the edge supports (`Unsupported value`).
    Value {
        /// The value given.
        value: String,
        /// What is supported.
        supported: &'static [&'static str],
    },
    /// The field may not be set (`Forbidden`), and why.
    Forbidden(String),
}

/// One field of a pod spec that the edge cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Its path (`spec.volumes[0].persistentVolumeClaim`).
    pub field: String,
    /// Why.
    pub refusal: Refusal,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.refusal {
            Refusal::Value { value, supported } => write!(
                f,
                "{}: Unsupported value: {value:?}: supported values: {}",
                self.field,
                supported
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Refusal::Forbidden(why) => write!(f, "{}: Forbidden: {why}", self.field),
        }
    }
}

/// Every field of `spec` (at `path`, e.g. `spec` or `spec.template.spec`) that the edge cannot
/// run; empty when it can run the pod.
pub fn unsupported(spec: &PodSpec, path: &str) -> Vec<Unsupported> {
    let mut out = Vec::new();
    let mut forbid = |field: String, why: &str| {
        out.push(Unsupported {
            field,
            refusal: Refusal::Forbidden(why.to_string()),
        })
    };
    for (field, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
        ("shareProcessNamespace", spec.share_process_namespace),
    ] {
        if set == Some(true) {
            forbid(
                format!("{path}.{field}"),
                "is not supported on Skerry edges yet: pods run in their own namespaces",
            );
        }
    }
    if spec.host_users == Some(false) {
        forbid(
            format!("{path}.hostUsers"),
            "user namespaces are not supported on Skerry edges",
        );
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|c| !c.is_empty())
    {
        forbid(
            format!("{path}.ephemeralContainers"),
            "ephemeral containers are not supported on Skerry edges; use kubectl exec",
        );
    }
    if spec
        .runtime_class_name
        .as_ref()
        .is_some_and(|r| !r.is_empty())
    {
        forbid(
            format!("{path}.runtimeClassName"),
            "Skerry edges have one runtime each (no RuntimeClass objects)",
        );
    }
    if spec.os.as_ref().is_some_and(|o| o.name != "linux") {
        out.push(Unsupported {
            field: format!("{path}.os.name"),
            refusal: Refusal::Value {
                value: spec.os.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
                supported: &["linux"],
            },
        });
    }
    if let Some(p) = spec
        .priority_class_name
        .as_deref()
        .filter(|p| !p.is_empty() && !PRIORITY_CLASSES.contains(p))
    {
        out.push(Unsupported {
            field: format!("{path}.priorityClassName"),
            refusal: Refusal::Value {
                value: p.to_string(),
                supported: &PRIORITY_CLASSES,
            },
        });
    }
    if let Some(sc) = &spec.security_context {
        super::security::unsupported_pod(sc, &format!("{path}.securityContext"), &mut out);
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(v, &format!("{path}.volumes[{i}]"), &mut out);
    }
    for (list, containers) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in containers.iter().enumerate() {
            container(c, &format!("{path}.{list}[{i}]"), &mut out);
        }
    }
    out
}

/// The kind of a volume (its one source field), as the API spells it.
fn volume_kind(v: &Volume) -> Option<String> {
    let value = serde_json::to_value(v).ok()?;
    value
        .as_object()?
        .keys()
        .find(|k| k.as_str() != "name")
        .cloned()
}

fn volume(v: &Volume, path: &str, out: &mut Vec<Unsupported>) {
    let Some(kind) = volume_kind(v) else {
        // No source at all: the API's own validation says a type is required.
        return;
    };
    if !VOLUME_KINDS.contains(&kind.as_str()) {
        out.push(Unsupported {
            field: format!("{path}.{kind}"),
            refusal: Refusal::Value {
                value: kind,
                supported: &VOLUME_KINDS,
            },
        });
        return;
    }
    let downward = v
        .downward_api
        .iter()
        .flat_map(|d| d.items.iter().flatten().enumerate())
        .map(|(i, f)| (format!("{path}.downwardAPI.items[{i}]"), f))
        .collect::<Vec<_>>();
    let mut projected_files = Vec::new();
    for (i, source) in v
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .enumerate()
    {
        let sp = format!("{path}.projected.sources[{i}]");
        let value = serde_json::to_value(source).unwrap_or_default();
        for kind in value.as_object().into_iter().flat_map(|o| o.keys()) {
            if !PROJECTED_SOURCES.contains(&kind.as_str()) {
                out.push(Unsupported {
                    field: format!("{sp}.{kind}"),
                    refusal: Refusal::Value {
                        value: kind.clone(),
                        supported: &PROJECTED_SOURCES,
                    },
                });
            }
        }
        if let Some(d) = &source.downward_api {
            for (j, f) in d.items.iter().flatten().enumerate() {
                projected_files.push((format!("{sp}.downwardAPI.items[{j}]"), f));
            }
        }
    }
    for (fp, file) in downward.into_iter().chain(projected_files) {
        if file.resource_field_ref.is_some() {
            out.push(Unsupported {
                field: format!("{fp}.resourceFieldRef"),
                refusal: Refusal::Forbidden(
                    "is not resolved on Skerry edges yet; use fieldRef".into(),
                ),
            });
        }
    }
    if let Some(medium) = v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) {
        if !EMPTY_DIR_MEDIA.contains(&medium) {
            out.push(Unsupported {
                field: format!("{path}.emptyDir.medium"),
                refusal: Refusal::Value {
                    value: medium.to_string(),
                    supported: &EMPTY_DIR_MEDIA,
                },
            });
        }
    }
}

fn container(c: &Container, path: &str, out: &mut Vec<Unsupported>) {
    if let Some(sc) = &c.security_context {
        super::security::unsupported_container(sc, &format!("{path}.securityContext"), out);
    }
    let mut forbid = |field: String, why: &str| {
        out.push(Unsupported {
            field,
            refusal: Refusal::Forbidden(why.to_string()),
        })
    };
    if let Some(l) = &c.lifecycle {
        // Kubernetes accepts a tcpSocket hook (deprecated, for compatibility) and kubelet fails
        // it every time it would run: refused here rather than accepted to fail on the edge.
        for (which, hook) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if hook.as_ref().is_some_and(|h| h.tcp_socket.is_some()) {
                forbid(
                    format!("{path}.lifecycle.{which}.tcpSocket"),
                    "tcpSocket hooks are not run (kubelet does not run them either); use exec, httpGet or sleep",
                );
            }
        }
        if l.stop_signal.is_some() {
            forbid(
                format!("{path}.lifecycle.stopSignal"),
                "is not supported on Skerry edges yet: containers are stopped with SIGTERM, then SIGKILL",
            );
        }
    }
    if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        forbid(
            format!("{path}.volumeDevices"),
            "block volumes are not supported on Skerry edges; host devices are given with the devices.skerry.io/<container> annotation",
        );
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if m.sub_path_expr.as_ref().is_some_and(|s| !s.is_empty()) {
            forbid(
                format!("{path}.volumeMounts[{i}].subPathExpr"),
                "is not expanded on Skerry edges; use subPath",
            );
        }
        if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
            forbid(
                format!("{path}.volumeMounts[{i}].mountPropagation"),
                "mount propagation is not supported on Skerry edges",
            );
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.value_from
            .as_ref()
            .is_some_and(|f| f.resource_field_ref.is_some())
        {
            forbid(
                format!("{path}.env[{i}].valueFrom.resourceFieldRef"),
                "resourceFieldRef is not supported on edge nodes; use fieldRef, configMapKeyRef or secretKeyRef",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn messages(v: serde_json::Value) -> Vec<String> {
        unsupported(&spec(v), "spec")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_pod_the_edge_runs_has_nothing_unsupported() {
        let ok = json!({
            "containers": [{"name": "a", "image": "x", "securityContext": {},
                "lifecycle": {"postStart": {"exec": {"command": ["true"]}},
                    "preStop": {"sleep": {"seconds": 1}}},
                "volumeMounts": [{"name": "d", "mountPath": "/d", "mountPropagation": "None"}],
                "terminationMessagePath": "/dev/termination-log"}],
            "volumes": [{"name": "d", "emptyDir": {"medium": "Memory"}},
                {"name": "h", "hostPath": {"path": "/tmp"}}],
            "securityContext": {}, "hostNetwork": false,
            "priorityClassName": "system-node-critical", "os": {"name": "linux"}
        });
        assert_eq!(messages(ok), Vec::<String>::new());
    }

    #[test]
    fn each_field_the_edge_cannot_run_is_named_with_what_is_supported() {
        let cases = [
            (
                json!({"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]}),
                r#"spec.volumes[0].persistentVolumeClaim: Unsupported value: "persistentVolumeClaim": supported values: "configMap", "downwardAPI", "emptyDir", "hostPath", "projected", "secret""#,
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [
                    {"configMap": {"name": "c"}},
                    {"serviceAccountToken": {"path": "token"}}]}}]}),
                r#"spec.volumes[0].projected.sources[1].serviceAccountToken: Unsupported value: "serviceAccountToken": supported values: "configMap", "downwardAPI", "secret""#,
            ),
            (
                json!({"volumes": [{"name": "v", "downwardAPI": {"items": [
                    {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}}]}),
                "spec.volumes[0].downwardAPI.items[0].resourceFieldRef: Forbidden: is not resolved on Skerry edges yet; use fieldRef",
            ),
            (
                json!({"volumes": [{"name": "v", "emptyDir": {"medium": "HugePages"}}]}),
                r#"spec.volumes[0].emptyDir.medium: Unsupported value: "HugePages": supported values: "", "Memory""#,
            ),
            (
                json!({"hostNetwork": true}),
                "spec.hostNetwork: Forbidden: is not supported on Skerry edges yet: pods run in their own namespaces",
            ),
            (
                json!({"hostPID": true}),
                "spec.hostPID: Forbidden: is not supported on Skerry edges yet: pods run in their own namespaces",
            ),
            (
                json!({"hostIPC": true}),
                "spec.hostIPC: Forbidden: is not supported on Skerry edges yet: pods run in their own namespaces",
            ),
            (
                json!({"shareProcessNamespace": true}),
                "spec.shareProcessNamespace: Forbidden: is not supported on Skerry edges yet: pods run in their own namespaces",
            ),
            (
                json!({"hostUsers": false}),
                "spec.hostUsers: Forbidden: user namespaces are not supported on Skerry edges",
            ),
            (
                json!({"ephemeralContainers": [{"name": "dbg", "image": "x"}]}),
                "spec.ephemeralContainers: Forbidden: ephemeral containers are not supported on Skerry edges; use kubectl exec",
            ),
            (
                json!({"runtimeClassName": "kata"}),
                "spec.runtimeClassName: Forbidden: Skerry edges have one runtime each (no RuntimeClass objects)",
            ),
            (
                json!({"os": {"name": "windows"}}),
                r#"spec.os.name: Unsupported value: "windows": supported values: "linux""#,
            ),
            (
                json!({"priorityClassName": "high"}),
                r#"spec.priorityClassName: Unsupported value: "high": supported values: "system-cluster-critical", "system-node-critical""#,
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"level": "s0:c1"}}}),
                "spec.securityContext.seLinuxOptions: Forbidden: SELinux is not enabled on Skerry edges",
            ),
            (
                json!({"securityContext": {"seLinuxChangePolicy": "MountOption"}}),
                "spec.securityContext.seLinuxChangePolicy: Forbidden: SELinux is not enabled on Skerry edges",
            ),
            (
                json!({"securityContext": {"windowsOptions": {"runAsUserName": "x"}}}),
                "spec.securityContext.windowsOptions: Forbidden: Skerry edges run Linux pods only",
            ),
            (
                json!({"securityContext": {"runAsUser": -1}}),
                "spec.securityContext.runAsUser: Forbidden: -1 must be between 0 and 2147483647, inclusive",
            ),
            (
                json!({"securityContext": {"supplementalGroupsPolicy": "Strict"}}),
                r#"spec.securityContext.supplementalGroupsPolicy: Unsupported value: "Strict": supported values: "Merge""#,
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"},
                    {"name": "kernel.msgmax", "value": "65536"}]}}),
                r#"spec.securityContext.sysctls[1].name: Unsupported value: "kernel.msgmax": supported values: "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ping_group_range", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_rmem", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_wmem""#,
            ),
            (
                json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
                r#"spec.securityContext.appArmorProfile.type: Unsupported value: "RuntimeDefault": supported values: "Unconfined""#,
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}}),
                "spec.securityContext.seccompProfile.localhostProfile: Forbidden: is required when type is Localhost",
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "../etc/x.json"}}}),
                "spec.securityContext.seccompProfile.localhostProfile: Forbidden: must be a relative path (under the edge's <data-dir>/seccomp) without '..'",
            ),
        ];
        for (extra, want) in cases {
            let mut v = json!({"containers": [{"name": "a", "image": "x"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            assert_eq!(messages(v), vec![want.to_string()]);
        }
    }

    #[test]
    fn the_security_settings_the_edge_honours_are_accepted() {
        let ok = json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                "supplementalGroups": [4000], "supplementalGroupsPolicy": "Merge",
                "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "Unconfined"},
                "sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"},
                    {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]},
            "initContainers": [{"name": "i", "image": "x",
                "securityContext": {"runAsUser": 0, "privileged": true}}],
            "containers": [{"name": "a", "image": "x", "securityContext": {
                "runAsUser": 1001, "runAsGroup": 1001, "runAsNonRoot": true,
                "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "privileged": false, "procMount": "Default",
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"},
                "appArmorProfile": {"type": "Unconfined"}}}]
        });
        assert_eq!(messages(ok), Vec::<String>::new());
    }

    #[test]
    fn container_fields_the_edge_cannot_run_are_named_in_app_and_init_containers() {
        let cases = [
            (
                json!({"lifecycle": {"preStop": {"tcpSocket": {"port": 80}}}}),
                "lifecycle.preStop.tcpSocket: Forbidden: tcpSocket hooks are not run (kubelet does not run them either); use exec, httpGet or sleep",
            ),
            (
                json!({"lifecycle": {"stopSignal": "SIGUSR1"}}),
                "lifecycle.stopSignal: Forbidden: is not supported on Skerry edges yet: containers are stopped with SIGTERM, then SIGKILL",
            ),
            (
                json!({"securityContext": {"procMount": "Unmasked"}}),
                r#"securityContext.procMount: Unsupported value: "Unmasked": supported values: "Default""#,
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
                "securityContext.seLinuxOptions: Forbidden: SELinux is not enabled on Skerry edges",
            ),
            (
                json!({"securityContext": {"windowsOptions": {"hostProcess": true}}}),
                "securityContext.windowsOptions: Forbidden: Skerry edges run Linux pods only",
            ),
            (
                json!({"securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}),
                r#"securityContext.appArmorProfile.type: Unsupported value: "Localhost": supported values: "Unconfined""#,
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Strict"}}}),
                r#"securityContext.seccompProfile.type: Unsupported value: "Strict": supported values: "Localhost", "RuntimeDefault", "Unconfined""#,
            ),
            (
                json!({"securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}),
                "securityContext.allowPrivilegeEscalation: Forbidden: cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ),
            (
                json!({"securityContext": {"runAsGroup": 4294967296i64}}),
                "securityContext.runAsGroup: Forbidden: 4294967296 must be between 0 and 2147483647, inclusive",
            ),
            (
                json!({"volumeDevices": [{"name": "b", "devicePath": "/dev/xvda"}]}),
                "volumeDevices: Forbidden: block volumes are not supported on Skerry edges; host devices are given with the devices.skerry.io/<container> annotation",
            ),
            (
                json!({"volumeMounts": [{"name": "d", "mountPath": "/d", "subPathExpr": "$(POD)"}]}),
                "volumeMounts[0].subPathExpr: Forbidden: is not expanded on Skerry edges; use subPath",
            ),
            (
                json!({"volumeMounts": [{"name": "d", "mountPath": "/d", "mountPropagation": "Bidirectional"}]}),
                "volumeMounts[0].mountPropagation: Forbidden: mount propagation is not supported on Skerry edges",
            ),
            (
                json!({"env": [{"name": "M", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]}),
                "env[0].valueFrom.resourceFieldRef: Forbidden: resourceFieldRef is not supported on edge nodes; use fieldRef, configMapKeyRef or secretKeyRef",
            ),
        ];
        for (extra, want) in cases {
            let mut c = json!({"name": "a", "image": "x"});
            for (k, x) in extra.as_object().unwrap() {
                c[k] = x.clone();
            }
            let app = json!({"containers": [c.clone()]});
            assert_eq!(messages(app), vec![format!("spec.containers[0].{want}")]);
            let mut init = c;
            init["name"] = json!("i");
            let v = json!({"initContainers": [init], "containers": [{"name": "a", "image": "x"}]});
            assert_eq!(messages(v), vec![format!("spec.initContainers[0].{want}")]);
        }
    }
}
