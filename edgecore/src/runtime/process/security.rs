//! `securityContext` on the process runtime: what a native process can be given, and the
//! refusal of the rest (see the decisions in the runtime's module docs).
//!
//! Honoured: `runAsUser`, `runAsGroup`, `supplementalGroups` and `fsGroup`'s group, set by
//! the `--enter` step (which runs as root) before it executes the program; the group is the
//! `runAsGroup`, else the user's primary group from the host's `/etc/passwd` (else 0, as
//! containerd does for a uid the image does not know); `allowPrivilegeEscalation: false`
//! (`no_new_privs`, which needs no root); `runAsNonRoot`, checked against the user the program
//! would run as (edgecore's own when no `runAsUser` is given); `seccompProfile: Unconfined`
//! and `appArmorProfile: Unconfined`, which is how a native process runs anyway. Execs
//! (`kubectl exec`, exec probes) run as the container's uid and gid, without its
//! supplemental groups.
//!
//! Refused, before the container starts (`CreateContainerConfigError` and an event):
//! `privileged`, `capabilities`, `readOnlyRootFilesystem` and seccomp profiles other than
//! `Unconfined` (a native process has no root filesystem, capability set or seccomp filter of
//! its own here); `sysctls` (the pod shares the host's network namespace: they would change
//! the host's); and, when edgecore is not root, any user, group or `fsGroup` other than
//! edgecore's own (only root can change them).

use crate::runtime::security::{verify_run_as_non_root, DefaultUser};
use protocol::pod::{EdgeContainer, EdgePod};
use protocol::security::SecurityProfile;
use serde::{Deserialize, Serialize};

/// Who the program runs as, when not as the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProcessUser {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Supplemental groups (the `runAsGroup` or primary group first).
    pub(super) groups: Vec<u32>,
}

/// edgecore's own identity, and whether it may change it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Identity {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl Identity {
    pub(super) fn current() -> Self {
        Self {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn is_root(self) -> bool {
        self.uid == 0
    }
}

fn id(v: i64) -> u32 {
    // The API admits 0..=2147483647 only.
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// What of `container`'s (and `pod`'s) security settings this runtime cannot honour, as the
/// message of the refusal.
pub(super) fn refusal(pod: &EdgePod, container: &EdgeContainer, me: Identity) -> Option<String> {
    let c = &container.name;
    let field = |f: &str, why: &str| Some(format!("container {c:?}: {f} {why}"));
    if pod.security.as_ref().is_some_and(|s| !s.sysctls.is_empty()) {
        return Some(
            "pod securityContext.sysctls cannot be honoured by the process runtime: its pods \
             share the host's network namespace, so they would change the host's (use the cri \
             runtime)"
                .to_string(),
        );
    }
    if let Some(gid) = pod.security.as_ref().and_then(|s| s.fs_group) {
        if !me.is_root() && id(gid) != me.gid {
            return Some(format!(
                "pod securityContext.fsGroup {gid} can be honoured by the process runtime only \
                 when edgecore runs as root (it runs as uid {}, gid {})",
                me.uid, me.gid
            ));
        }
    }
    let sc = container.security.as_deref()?;
    const NATIVE: &str = "cannot be honoured by the process runtime: a native process has no \
                          root filesystem, capability set or seccomp filter of its own here \
                          (use the cri runtime)";
    if sc.privileged {
        return field("securityContext.privileged", NATIVE);
    }
    if !sc.capabilities_add.is_empty() || !sc.capabilities_drop.is_empty() {
        return field("securityContext.capabilities", NATIVE);
    }
    if sc.read_only_root_filesystem {
        return field("securityContext.readOnlyRootFilesystem", NATIVE);
    }
    if sc
        .seccomp
        .as_ref()
        .is_some_and(|p| *p != SecurityProfile::Unconfined)
    {
        return field("securityContext.seccompProfile", NATIVE);
    }
    if sc
        .app_armor
        .as_ref()
        .is_some_and(|p| *p != SecurityProfile::Unconfined)
    {
        return field("securityContext.appArmorProfile", NATIVE);
    }
    if !me.is_root() {
        let other_user = sc.run_as_user.is_some_and(|u| id(u) != me.uid);
        let other_group = sc.run_as_group.is_some_and(|g| id(g) != me.gid);
        let groups = sc.supplemental_groups.iter().any(|g| id(*g) != me.gid);
        if other_user || other_group || groups {
            return field(
                "securityContext runAsUser, runAsGroup and supplementalGroups",
                &format!(
                    "can be honoured by the process runtime only when edgecore runs as root \
                     (it runs as uid {}, gid {})",
                    me.uid, me.gid
                ),
            );
        }
    }
    let default_user = DefaultUser {
        uid: Some(i64::from(me.uid)),
        username: String::new(),
    };
    verify_run_as_non_root(pod, container, &default_user).err()
}

/// The user the enter step switches to, if any (only as root, and only when asked: without a
/// `runAsUser`, `runAsGroup` or groups the program runs as the shim does).
pub(super) fn process_user(container: &EdgeContainer, me: Identity) -> Option<ProcessUser> {
    let sc = container.security.as_deref()?;
    if !me.is_root()
        || (sc.run_as_user.is_none()
            && sc.run_as_group.is_none()
            && sc.supplemental_groups.is_empty())
    {
        return None;
    }
    let uid = sc.run_as_user.map_or(me.uid, id);
    let gid = match sc.run_as_group {
        Some(g) => id(g),
        None if sc.run_as_user.is_none() => me.gid,
        None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(0, |u| u.gid.as_raw()),
    };
    let mut groups = vec![gid];
    for g in sc.supplemental_groups.iter().map(|g| id(*g)) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Some(ProcessUser { uid, gid, groups })
}

/// Runs `cmd` (a `kubectl exec` or an exec probe) as the container's user and group, as
/// containerd runs an exec as the container's process user. Without its supplemental groups:
/// the standard library drops root's and cannot set others without `unsafe`.
pub(super) fn as_user(cmd: &mut tokio::process::Command, user: Option<&ProcessUser>) {
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::security::{PodSecurity, SecurityContext};

    fn pod(sc: SecurityContext, pod_sc: Option<PodSecurity>) -> (EdgePod, EdgeContainer) {
        let c = EdgeContainer {
            name: "main".into(),
            security: Some(Box::new(sc)),
            ..Default::default()
        };
        let pod = EdgePod {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
            labels: Default::default(),
            containers: vec![c.clone()],
            restart_policy: Default::default(),
            termination_grace_period_seconds: 1,
            volumes: vec![],
            deletion_grace_period_seconds: None,
            dns: Default::default(),
            init_containers: vec![],
            security: pod_sc.map(Box::new),
            hosts: Default::default(),
            annotations: Default::default(),
        };
        (pod, c)
    }

    const ROOT: Identity = Identity { uid: 0, gid: 0 };
    const USER: Identity = Identity {
        uid: 1000,
        gid: 1000,
    };

    #[test]
    fn what_a_native_process_cannot_have_is_refused_by_field() {
        let cases: [(SecurityContext, &str); 5] = [
            (
                SecurityContext {
                    privileged: true,
                    ..Default::default()
                },
                "securityContext.privileged",
            ),
            (
                SecurityContext {
                    capabilities_drop: vec!["ALL".into()],
                    ..Default::default()
                },
                "securityContext.capabilities",
            ),
            (
                SecurityContext {
                    read_only_root_filesystem: true,
                    ..Default::default()
                },
                "securityContext.readOnlyRootFilesystem",
            ),
            (
                SecurityContext {
                    seccomp: Some(SecurityProfile::RuntimeDefault),
                    ..Default::default()
                },
                "securityContext.seccompProfile",
            ),
            (
                SecurityContext {
                    run_as_non_root: true,
                    ..Default::default()
                },
                "container has runAsNonRoot and image will run as root",
            ),
        ];
        for (sc, want) in cases {
            let (p, c) = pod(sc, None);
            let got = refusal(&p, &c, ROOT).expect(want);
            assert!(got.contains(want), "{got}");
        }
        let sysctls = PodSecurity {
            sysctls: vec![("net.ipv4.tcp_syncookies".into(), "1".into())],
            ..Default::default()
        };
        let (p, c) = pod(SecurityContext::default(), Some(sysctls));
        assert!(refusal(&p, &c, ROOT).unwrap().contains("sysctls"));
    }

    #[test]
    fn users_and_groups_are_switched_as_root_and_refused_otherwise() {
        let sc = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000, 2000, 3000],
            run_as_non_root: true,
            seccomp: Some(SecurityProfile::Unconfined),
            no_new_privs: true,
            ..Default::default()
        };
        let (p, c) = pod(sc.clone(), None);
        assert_eq!(refusal(&p, &c, ROOT), None);
        assert_eq!(
            process_user(&c, ROOT),
            Some(ProcessUser {
                uid: 1000,
                gid: 3000,
                groups: vec![3000, 4000, 2000]
            })
        );
        assert!(refusal(&p, &c, USER)
            .unwrap()
            .contains("only when edgecore runs as root"));
        assert_eq!(process_user(&c, USER), None);
        // edgecore's own user asked for: nothing to change, nothing refused.
        let own = SecurityContext {
            run_as_user: Some(1000),
            run_as_non_root: true,
            ..Default::default()
        };
        let (p, c) = pod(own, None);
        assert_eq!(refusal(&p, &c, USER), None);
        assert_eq!(process_user(&c, USER), None);
        // A user without a group: the host's primary group of it (root's is 0).
        let (_, c) = pod(
            SecurityContext {
                run_as_user: Some(0),
                ..Default::default()
            },
            None,
        );
        assert_eq!(process_user(&c, ROOT).map(|u| u.gid), Some(0));
        // fsGroup as not root: refused unless it is edgecore's group.
        let fs = |g| PodSecurity {
            fs_group: Some(g),
            ..Default::default()
        };
        let (p, c) = pod(SecurityContext::default(), Some(fs(2000)));
        assert!(refusal(&p, &c, USER).unwrap().contains("fsGroup 2000"));
        assert_eq!(refusal(&p, &c, ROOT), None);
        let (p, c) = pod(SecurityContext::default(), Some(fs(1000)));
        assert_eq!(refusal(&p, &c, USER), None);
    }
}
