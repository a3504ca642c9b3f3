//! The environment a container's process gets: exactly what the pod worker resolved, the
//! `SKERRY_VOLUME_*` variables of its mounts, and `PATH`/`HOSTNAME` defaults; nothing of
//! edgecore's own environment (see the parent module's docs).

/// `PATH` given to a container whose environment does not set one.
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `SKERRY_VOLUME_*` variables of a container's mounts (see the module docs); the message
/// of a `CreateContainerError` when two cannot be told apart.
pub(super) fn volume_vars(
    mounts: &[crate::runtime::Mount],
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    // (variable, volume) of the mounts seen so far.
    let mut seen: Vec<(String, &str)> = Vec::new();
    for mount in mounts {
        let var = volume_env_name(&mount.volume);
        let value = mount.host_path.to_string_lossy().into_owned();
        if let Some((_, other)) = seen.iter().find(|(k, _)| *k == var) {
            if *other != mount.volume {
                return Err(format!(
                    "volumes {other:?} and {:?} would both be passed in the environment \
                     variable {var}; rename one of them (every character other than a letter \
                     or digit becomes `_`)",
                    mount.volume
                ));
            }
            if vars.iter().any(|(k, v)| *k == var && *v == value) {
                continue; // The same volume mounted twice: one variable is enough.
            }
            return Err(format!(
                "volume {:?} is mounted twice with different subPaths, but the process runtime \
                 passes one path per volume (in {var}); mount it once",
                mount.volume
            ));
        }
        seen.push((var.clone(), &mount.volume));
        vars.push((var, value));
    }
    Ok(vars)
}

pub(super) fn volume_env_name(volume: &str) -> String {
    let name: String = volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SKERRY_VOLUME_{name}")
}

/// The container's complete environment: the resolved env, then the volume variables, `PATH` and
/// `HOSTNAME` where the pod does not set them. A name set twice keeps its first position and its
/// last value, as Kubernetes does.
pub(super) fn build_env(
    resolved: &[(String, String)],
    volume_vars: Vec<(String, String)>,
    pod_name: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in resolved {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(entry) => entry.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    let defaults = volume_vars.into_iter().chain([
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOSTNAME".to_string(), pod_name.to_string()),
    ]);
    for (k, v) in defaults {
        if !env.iter().any(|(name, _)| *name == k) {
            env.push((k, v));
        }
    }
    env
}
