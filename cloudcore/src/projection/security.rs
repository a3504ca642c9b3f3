//! `securityContext`: which of its fields the edge honours (the rest is refused by
//! [`super::support`] with a 422 naming the field), and the merge of the pod's settings into
//! each container's, done once here with kubelet's rules so that the edge applies the result
//! ([`protocol::security`]) without knowing them.
//!
//! Honoured: `runAsUser`, `runAsGroup`, `runAsNonRoot`, `supplementalGroups` (policy `Merge`),
//! `fsGroup` and `fsGroupChangePolicy`, the safe `sysctls` (kubelet's default allow-list),
//! `seccompProfile`, and on containers `privileged`, `allowPrivilegeEscalation`,
//! `capabilities`, `readOnlyRootFilesystem` and `procMount: Default`. `appArmorProfile` only as
//! `Unconfined`: edge hosts often have no AppArmor (containerd then refuses every other
//! profile), and profiles are not distributed to nodes. Refused: `seLinuxOptions` and
//! `seLinuxChangePolicy` (no SELinux on Skerry edges), `windowsOptions` (Linux only),
//! `procMount: Unmasked` (needs user namespaces), `supplementalGroupsPolicy: Strict` (the
//! runtimes merge the image's groups), and sysctls outside the safe set (they would need
//! kubelet's `--allowed-unsafe-sysctls`, which edges do not have).
//!
//! A runtime that cannot honour what a container asks (the `process` runtime has no image,
//! no seccomp and no capabilities of its own) refuses the pod on the node
//! (`CreateContainerConfigError`), see `edgecore::runtime::process`.

use super::support::{Refusal, Unsupported};
use k8s_openapi::api::core::v1 as core;
use protocol::security::{PodSecurity, SecurityContext, SecurityProfile};

/// Kubelet's safe sysctls (allowed without `--allowed-unsafe-sysctls`), Kubernetes 1.32:
/// namespaced per pod, so a pod setting them changes nothing for its neighbours.
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_wmem",
];
/// `procMount` values the edge honours.
pub const PROC_MOUNTS: [&str; 1] = ["Default"];
/// `appArmorProfile.type` values the edge honours.
pub const APP_ARMOR_TYPES: [&str; 1] = ["Unconfined"];
/// `seccompProfile.type` values.
pub const SECCOMP_TYPES: [&str; 3] = ["Localhost", "RuntimeDefault", "Unconfined"];
/// `supplementalGroupsPolicy` values the edge honours.
pub const SUPPLEMENTAL_GROUPS_POLICIES: [&str; 1] = ["Merge"];
/// `fsGroupChangePolicy` values.
pub const FS_GROUP_CHANGE_POLICIES: [&str; 2] = ["Always", "OnRootMismatch"];

/// Kubernetes' range for user and group ids.
const MAX_ID: i64 = 2_147_483_647;

fn forbid(out: &mut Vec<Unsupported>, field: String, why: &str) {
    out.push(Unsupported {
        field,
        refusal: Refusal::Forbidden(why.to_string()),
    });
}

fn value(out: &mut Vec<Unsupported>, field: String, v: &str, supported: &'static [&'static str]) {
    out.push(Unsupported {
        field,
        refusal: Refusal::Value {
            value: v.to_string(),
            supported,
        },
    });
}

fn id(out: &mut Vec<Unsupported>, field: String, v: Option<i64>) {
    if let Some(v) = v.filter(|v| !(0..=MAX_ID).contains(v)) {
        forbid(
            out,
            field,
            &format!("{v} must be between 0 and {MAX_ID}, inclusive"),
        );
    }
}

fn profile(
    out: &mut Vec<Unsupported>,
    field: String,
    kind: &str,
    localhost: Option<&str>,
    supported: &'static [&'static str],
) {
    if !supported.contains(&kind) {
        return value(out, format!("{field}.type"), kind, supported);
    }
    if kind == "Localhost" {
        match localhost {
            None | Some("") => forbid(
                out,
                format!("{field}.localhostProfile"),
                "is required when type is Localhost",
            ),
            Some(p) if p.starts_with('/') || p.split('/').any(|c| c == "..") => forbid(
                out,
                format!("{field}.localhostProfile"),
                "must be a relative path (under the edge's <data-dir>/seccomp) without '..'",
            ),
            Some(_) => {}
        }
    }
}

/// Which fields of a pod's `securityContext` (at `path`) the edge cannot honour.
pub fn unsupported_pod(sc: &core::PodSecurityContext, path: &str, out: &mut Vec<Unsupported>) {
    let set = serde_json::to_value(sc).unwrap_or_default();
    for field in set.as_object().into_iter().flat_map(|o| o.keys()) {
        let at = format!("{path}.{field}");
        match field.as_str() {
            "runAsUser" => id(out, at, sc.run_as_user),
            "runAsGroup" => id(out, at, sc.run_as_group),
            "fsGroup" => id(out, at, sc.fs_group),
            "runAsNonRoot" => {}
            "supplementalGroups" => {
                for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
                    id(out, format!("{at}[{i}]"), Some(*g));
                }
            }
            "supplementalGroupsPolicy" => {
                let p = sc.supplemental_groups_policy.as_deref().unwrap_or_default();
                if !SUPPLEMENTAL_GROUPS_POLICIES.contains(&p) {
                    value(out, at, p, &SUPPLEMENTAL_GROUPS_POLICIES);
                }
            }
            "fsGroupChangePolicy" => {
                let p = sc.fs_group_change_policy.as_deref().unwrap_or_default();
                if !FS_GROUP_CHANGE_POLICIES.contains(&p) {
                    value(out, at, p, &FS_GROUP_CHANGE_POLICIES);
                }
            }
            "sysctls" => {
                for (i, s) in sc.sysctls.iter().flatten().enumerate() {
                    if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                        value(out, format!("{at}[{i}].name"), &s.name, &SAFE_SYSCTLS);
                    }
                }
            }
            "seccompProfile" => {
                if let Some(p) = &sc.seccomp_profile {
                    profile(
                        out,
                        at,
                        &p.type_,
                        p.localhost_profile.as_deref(),
                        &SECCOMP_TYPES,
                    );
                }
            }
            "appArmorProfile" => {
                if let Some(p) = &sc.app_armor_profile {
                    profile(out, at, &p.type_, None, &APP_ARMOR_TYPES);
                }
            }
            "seLinuxOptions" | "seLinuxChangePolicy" => {
                forbid(out, at, "SELinux is not enabled on Skerry edges")
            }
            "windowsOptions" => forbid(out, at, "Skerry edges run Linux pods only"),
            _ => forbid(out, at, "is not applied on Skerry edges yet"),
        }
    }
}

/// Which fields of a container's `securityContext` (at `path`) the edge cannot honour.
pub fn unsupported_container(sc: &core::SecurityContext, path: &str, out: &mut Vec<Unsupported>) {
    let set = serde_json::to_value(sc).unwrap_or_default();
    for field in set.as_object().into_iter().flat_map(|o| o.keys()) {
        let at = format!("{path}.{field}");
        match field.as_str() {
            "runAsUser" => id(out, at, sc.run_as_user),
            "runAsGroup" => id(out, at, sc.run_as_group),
            "runAsNonRoot" | "readOnlyRootFilesystem" | "capabilities" | "privileged" => {}
            "allowPrivilegeEscalation" => {
                if sc.allow_privilege_escalation == Some(false) && sc.privileged == Some(true) {
                    forbid(
                        out,
                        at,
                        "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                    );
                }
            }
            "procMount" => {
                let p = sc.proc_mount.as_deref().unwrap_or_default();
                if !PROC_MOUNTS.contains(&p) {
                    value(out, at, p, &PROC_MOUNTS);
                }
            }
            "seccompProfile" => {
                if let Some(p) = &sc.seccomp_profile {
                    profile(
                        out,
                        at,
                        &p.type_,
                        p.localhost_profile.as_deref(),
                        &SECCOMP_TYPES,
                    );
                }
            }
            "appArmorProfile" => {
                if let Some(p) = &sc.app_armor_profile {
                    profile(out, at, &p.type_, None, &APP_ARMOR_TYPES);
                }
            }
            "seLinuxOptions" => forbid(out, at, "SELinux is not enabled on Skerry edges"),
            "windowsOptions" => forbid(out, at, "Skerry edges run Linux pods only"),
            _ => forbid(out, at, "is not applied on Skerry edges yet"),
        }
    }
}

fn seccomp(p: &core::SeccompProfile) -> SecurityProfile {
    match p.type_.as_str() {
        "RuntimeDefault" => SecurityProfile::RuntimeDefault,
        "Localhost" => SecurityProfile::Localhost(p.localhost_profile.clone().unwrap_or_default()),
        _ => SecurityProfile::Unconfined,
    }
}

fn app_armor(p: &core::AppArmorProfile) -> SecurityProfile {
    match p.type_.as_str() {
        "RuntimeDefault" => SecurityProfile::RuntimeDefault,
        "Localhost" => SecurityProfile::Localhost(p.localhost_profile.clone().unwrap_or_default()),
        _ => SecurityProfile::Unconfined,
    }
}

/// The pod's `supplementalGroups` then its `fsGroup` (once), as kubelet gives them to every
/// container and the sandbox.
fn pod_groups(pod: Option<&core::PodSecurityContext>) -> Vec<i64> {
    let mut groups: Vec<i64> = pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(g) = pod.and_then(|p| p.fs_group) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// The pod-wide settings, `None` when there are none.
pub fn pod_security(pod: Option<&core::PodSecurityContext>) -> Option<Box<PodSecurity>> {
    let p = pod?;
    let out = PodSecurity {
        fs_group: p.fs_group,
        fs_group_on_root_mismatch: p.fs_group.is_some()
            && p.fs_group_change_policy.as_deref() == Some("OnRootMismatch"),
        sysctls: p
            .sysctls
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect(),
        run_as_user: p.run_as_user,
        run_as_group: p.run_as_group,
        supplemental_groups: pod_groups(pod),
        seccomp: p.seccomp_profile.as_ref().map(seccomp),
    };
    (out != PodSecurity::default()).then(|| Box::new(out))
}

/// A container's effective settings (kubelet's `DetermineEffectiveSecurityContext`: the
/// container's user, group, `runAsNonRoot`, seccomp and AppArmor profiles override the pod's;
/// the pod's groups and `fsGroup` are added), `None` when nothing is set.
pub fn container_security(
    pod: Option<&core::PodSecurityContext>,
    c: Option<&core::SecurityContext>,
) -> Option<Box<SecurityContext>> {
    let caps = c.and_then(|c| c.capabilities.as_ref());
    let out = SecurityContext {
        run_as_user: c
            .and_then(|c| c.run_as_user)
            .or(pod.and_then(|p| p.run_as_user)),
        run_as_group: c
            .and_then(|c| c.run_as_group)
            .or(pod.and_then(|p| p.run_as_group)),
        run_as_non_root: c
            .and_then(|c| c.run_as_non_root)
            .or(pod.and_then(|p| p.run_as_non_root))
            .unwrap_or(false),
        supplemental_groups: pod_groups(pod),
        privileged: c.and_then(|c| c.privileged).unwrap_or(false),
        read_only_root_filesystem: c.and_then(|c| c.read_only_root_filesystem).unwrap_or(false),
        no_new_privs: c.and_then(|c| c.allow_privilege_escalation) == Some(false),
        capabilities_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        capabilities_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        seccomp: c
            .and_then(|c| c.seccomp_profile.as_ref())
            .or(pod.and_then(|p| p.seccomp_profile.as_ref()))
            .map(seccomp),
        app_armor: c
            .and_then(|c| c.app_armor_profile.as_ref())
            .or(pod.and_then(|p| p.app_armor_profile.as_ref()))
            .map(app_armor),
    };
    (out != SecurityContext::default()).then(|| Box::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> core::PodSecurityContext {
        serde_json::from_value(v).unwrap()
    }

    fn container(v: serde_json::Value) -> core::SecurityContext {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn container_settings_override_the_pods_and_groups_add_up() {
        let p = pod(
            json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
            "supplementalGroups": [4000, 2000], "fsGroup": 2000,
            "seccompProfile": {"type": "RuntimeDefault"}}),
        );
        let c = container(json!({"runAsUser": 1001, "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "Localhost", "localhostProfile": "audit.json"}}));
        let got = container_security(Some(&p), Some(&c)).unwrap();
        assert_eq!(
            *got,
            SecurityContext {
                run_as_user: Some(1001),
                run_as_group: Some(3000),
                run_as_non_root: true,
                // fsGroup once, after the pod's own groups.
                supplemental_groups: vec![4000, 2000],
                privileged: false,
                read_only_root_filesystem: true,
                no_new_privs: true,
                capabilities_add: vec!["NET_BIND_SERVICE".into()],
                capabilities_drop: vec!["ALL".into()],
                seccomp: Some(SecurityProfile::Localhost("audit.json".into())),
                app_armor: None,
            }
        );
        // The pod's settings alone reach a container that sets none.
        let only_pod = container_security(Some(&p), None).unwrap();
        assert_eq!(only_pod.run_as_user, Some(1000));
        assert_eq!(only_pod.seccomp, Some(SecurityProfile::RuntimeDefault));
        assert!(!only_pod.no_new_privs);
        // runAsNonRoot: false on the container wins over the pod's true.
        let c = container(json!({"runAsNonRoot": false}));
        assert!(
            !container_security(Some(&p), Some(&c))
                .unwrap()
                .run_as_non_root
        );
        let fs = pod(
            json!({"fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch",
            "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        );
        let ps = pod_security(Some(&fs)).unwrap();
        assert_eq!(ps.fs_group, Some(2000));
        assert!(ps.fs_group_on_root_mismatch);
        assert_eq!(ps.supplemental_groups, vec![2000]);
        assert_eq!(
            ps.sysctls,
            vec![("net.ipv4.tcp_syncookies".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn nothing_set_is_nothing_sent() {
        assert_eq!(container_security(None, None), None);
        assert_eq!(pod_security(None), None);
        let empty = pod(json!({}));
        let c = container(
            json!({"allowPrivilegeEscalation": true, "privileged": false,
            "runAsNonRoot": false, "capabilities": {}}),
        );
        assert_eq!(container_security(Some(&empty), Some(&c)), None);
        assert_eq!(pod_security(Some(&empty)), None);
    }
}
