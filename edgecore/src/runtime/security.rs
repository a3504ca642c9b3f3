//! What both runtimes share of a container's `securityContext` (already resolved by the
//! cloud, see `protocol::security`): kubelet's `runAsNonRoot` check, word for word, so that a
//! pod refused here reads as it would on a kubelet.

use protocol::pod::{EdgeContainer, EdgePod};

/// The user a container would run as when it does not ask for one: for the CRI runtime the
/// image's (CRI `ImageStatus`: a numeric `uid`, or a `username`); for the process runtime
/// edgecore's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DefaultUser {
    /// Numeric uid, if known.
    pub uid: Option<i64>,
    /// User name, when the image names a user that is not a number.
    pub username: String,
}

impl DefaultUser {
    /// Kubelet's reading of an image's user (`getImageUser`): a uid wins, then a name; with
    /// neither the image runs as root.
    pub fn of_image(uid: Option<i64>, username: &str) -> Self {
        match (uid, username) {
            (Some(uid), _) => Self {
                uid: Some(uid),
                username: String::new(),
            },
            (None, name) if !name.is_empty() => Self {
                uid: None,
                username: name.to_string(),
            },
            _ => Self {
                uid: Some(0),
                username: String::new(),
            },
        }
    }
}

/// Kubelet's `format.Pod`: `name_namespace(uid)`.
fn pod_name(pod: &EdgePod) -> String {
    format!("{}_{}({})", pod.name, pod.namespace, pod.uid)
}

/// Kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot`, a container that would run as uid 0
/// (its `runAsUser`, else the default user) is refused, and so is one whose default user is a
/// name (which cannot be checked before it runs). The message is kubelet's.
pub fn verify_run_as_non_root(
    pod: &EdgePod,
    container: &EdgeContainer,
    default_user: &DefaultUser,
) -> Result<(), String> {
    let Some(sc) = container.security.as_deref() else {
        return Ok(());
    };
    if !sc.run_as_non_root {
        return Ok(());
    }
    let (pod, name) = (pod_name(pod), &container.name);
    if let Some(uid) = sc.run_as_user {
        return if uid == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy (pod: {pod:?}, container: {name})"
            ))
        } else {
            Ok(())
        };
    }
    match (default_user.uid, default_user.username.as_str()) {
        (Some(0), _) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {name})"
        )),
        (None, user) if !user.is_empty() => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod:?}, container: {name})"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::security::SecurityContext;

    fn pod_with(sc: Option<SecurityContext>) -> (EdgePod, EdgeContainer) {
        let c = EdgeContainer {
            name: "main".into(),
            security: sc.map(Box::new),
            ..Default::default()
        };
        let pod = EdgePod {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u1".into(),
            labels: Default::default(),
            containers: vec![c.clone()],
            restart_policy: Default::default(),
            termination_grace_period_seconds: 30,
            volumes: vec![],
            deletion_grace_period_seconds: None,
            dns: Default::default(),
            init_containers: vec![],
            security: None,
            hosts: Default::default(),
            annotations: Default::default(),
        };
        (pod, c)
    }

    #[test]
    fn run_as_non_root_is_checked_as_kubelet_does() {
        let non_root = |user| SecurityContext {
            run_as_non_root: true,
            run_as_user: user,
            ..Default::default()
        };
        let root_image = DefaultUser::of_image(None, "");
        assert_eq!(root_image.uid, Some(0));
        // Nothing asked: anything runs.
        let (pod, c) = pod_with(None);
        assert_eq!(verify_run_as_non_root(&pod, &c, &root_image), Ok(()));
        // A non-root user given: runs whatever the image.
        let (pod, c) = pod_with(Some(non_root(Some(1000))));
        assert_eq!(verify_run_as_non_root(&pod, &c, &root_image), Ok(()));
        let (pod, c) = pod_with(Some(non_root(Some(0))));
        let e = verify_run_as_non_root(&pod, &c, &root_image).unwrap_err();
        assert_eq!(
            e,
            format!(
                "container's runAsUser breaks non-root policy (pod: \"{}_{}({})\", container: {})",
                pod.name, pod.namespace, pod.uid, c.name
            )
        );
        // No user given: the image decides.
        let (pod, c) = pod_with(Some(non_root(None)));
        let e = verify_run_as_non_root(&pod, &c, &root_image).unwrap_err();
        assert!(
            e.starts_with("container has runAsNonRoot and image will run as root (pod: "),
            "{e}"
        );
        let named = DefaultUser::of_image(None, "nobody");
        let e = verify_run_as_non_root(&pod, &c, &named).unwrap_err();
        assert!(
            e.starts_with("container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root"),
            "{e}"
        );
        let numeric = DefaultUser::of_image(Some(65534), "ignored");
        assert_eq!(verify_run_as_non_root(&pod, &c, &numeric), Ok(()));
    }
}
