//! Pure translations between Skerry's pod model and CRI messages: the sandbox and container
//! configs edgecore hands containerd, the labels it finds its pods by again, and the container
//! states it reads back. Nothing here does I/O, so every rule (Kubernetes' resource arithmetic,
//! pull-policy defaulting, exit reasons) is unit-tested on its own.

use crate::runtime::security::DefaultUser;
use crate::runtime::{container_digest, sandbox_labels, ContainerConfig, ContainerRunState};
use k8s_cri::v1 as cri;
use protocol::pod::{EdgeContainer, EdgePod, Resources};
use protocol::security::{SecurityContext, SecurityProfile};
use std::collections::HashMap;
use std::path::Path;

/// Label on every sandbox and container this edgecore creates: its instance id. Two edgecores
/// sharing one containerd list (and so adopt or remove) only what carries their own id.
pub const LABEL_INSTANCE: &str = "io.skerry.edgecore.instance";
/// Label with the pod uid (also set on sandboxes by [`sandbox_labels`]).
pub const LABEL_POD_UID: &str = "io.skerry.pod.uid";
/// Label with the container's name within its pod.
pub const LABEL_CONTAINER_NAME: &str = "io.skerry.container.name";
/// Label with the instance's restart number (also in the CRI metadata, kept here too so that a
/// filter can select one instance).
pub const LABEL_ATTEMPT: &str = "io.skerry.container.attempt";
/// Label with [`container_digest`] of the container the instance was started from.
pub const LABEL_DIGEST: &str = "io.skerry.container.digest";

/// Kubernetes' minimum CPU shares (kubelet's `MinShares`): what a container without a CPU
/// request gets, so that it yields to those that asked for CPU.
const MIN_CPU_SHARES: u64 = 2;
/// CFS period kubelet uses for CPU limits, in microseconds.
const CPU_PERIOD_US: i64 = 100_000;

/// Kubernetes `imagePullPolicy`, defaulted as the API server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container starts.
    Always,
    /// Pull only when the image is missing.
    IfNotPresent,
    /// Never pull: the image must have been imported.
    Never,
}

impl PullPolicy {
    /// The policy of `container`: its own, or, when empty, Kubernetes' default (`Always` for a
    /// `:latest` or untagged image, `IfNotPresent` otherwise). An unknown spelling is an error
    /// naming the allowed ones.
    pub fn of(container: &EdgeContainer) -> Result<Self, String> {
        match container.image_pull_policy.as_str() {
            "Always" => Ok(Self::Always),
            "IfNotPresent" => Ok(Self::IfNotPresent),
            "Never" => Ok(Self::Never),
            "" if is_latest(&container.image) => Ok(Self::Always),
            "" => Ok(Self::IfNotPresent),
            other => Err(format!(
                "unknown imagePullPolicy {other:?}; use Always, IfNotPresent or Never"
            )),
        }
    }
}

/// Whether an image reference names the `latest` tag, explicitly or by having no tag and no
/// digest.
fn is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    // The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// Namespaces of a pod as kubelet sets them by default: one network and IPC namespace for the
/// pod, a PID namespace per container (so that each container's process is its PID 1 and gets
/// signals as in Kubernetes).
fn namespace_options() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The sandbox config of `pod`. The same config goes with every `CreateContainer` of the pod
/// (CRI wants it there too), so it must be a pure function of the pod, its hostname
/// ([`protocol::hosts::PodHosts::kernel_hostname`]), the sandbox attempt and this
/// edgecore's identity.
pub fn sandbox_config(
    pod: &EdgePod,
    hostname: String,
    attempt: u32,
    instance: &str,
    log_dir: &Path,
    dns_config: Option<cri::DnsConfig>,
    seccomp_root: &Path,
) -> cri::PodSandboxConfig {
    let mut labels: HashMap<String, String> = sandbox_labels(pod).into_iter().collect();
    labels.insert(LABEL_INSTANCE.to_string(), instance.to_string());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt,
        }),
        hostname,
        log_directory: log_dir.to_string_lossy().into_owned(),
        // containerd writes the pod's resolv.conf from it (None: a copy of the host's).
        dns_config,
        port_mappings: port_mappings(pod),
        labels,
        annotations: HashMap::new(),
        linux: Some(cri::LinuxPodSandboxConfig {
            // Unset: containerd's default parent. edgecore manages no pod-level cgroups yet.
            cgroup_parent: String::new(),
            security_context: Some(sandbox_security(pod, seccomp_root)),
            sysctls: pod
                .security
                .iter()
                .flat_map(|s| s.sysctls.iter().cloned())
                .collect(),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The sandbox's security context as kubelet builds it: the pod's own user, group, groups
/// (with `fsGroup`) and seccomp profile, and privileged when any container is (containerd
/// refuses a privileged container in a sandbox that is not).
pub fn sandbox_security(pod: &EdgePod, seccomp_root: &Path) -> cri::LinuxSandboxSecurityContext {
    let mut out = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options()),
        privileged: pod
            .all_containers()
            .any(|c| c.security.as_ref().is_some_and(|s| s.privileged)),
        ..Default::default()
    };
    if let Some(s) = pod.security.as_deref() {
        out.run_as_user = s.run_as_user.map(|value| cri::Int64Value { value });
        // containerd refuses a sandbox group without a user ("user group is specified
        // without user"): the sandbox's image user is not known here, so the group goes only
        // with a user (the containers get theirs with the image's user, see below).
        if s.run_as_user.is_some() {
            out.run_as_group = s.run_as_group.map(|value| cri::Int64Value { value });
        }
        out.supplemental_groups = s.supplemental_groups.clone();
        out.seccomp = s.seccomp.as_ref().map(|p| profile(p, seccomp_root));
    }
    out
}

/// A CRI profile; a Localhost seccomp profile is a file under `seccomp_root`, as kubelet
/// sends `<root-dir>/seccomp/<localhostProfile>`.
fn profile(p: &SecurityProfile, seccomp_root: &Path) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match p {
        SecurityProfile::RuntimeDefault => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        SecurityProfile::Unconfined => cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        },
        SecurityProfile::Localhost(path) => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: seccomp_root.join(path).to_string_lossy().into_owned(),
        },
    }
}

/// A container's security context as kubelet converts it
/// (`convertToRuntimeSecurityContext`): with no `runAsUser`, the image's user (its uid, else
/// its name), so that a `runAsGroup` has a user to go with; capabilities as given (containerd
/// reads `ALL` and adds the `CAP_` prefix); `no_new_privs` for `allowPrivilegeEscalation:
/// false`. Masked and read-only paths are left to containerd's defaults (`procMount: Default`).
pub fn container_security(
    sc: Option<&SecurityContext>,
    image_user: &DefaultUser,
    seccomp_root: &Path,
) -> cri::LinuxContainerSecurityContext {
    let mut out = cri::LinuxContainerSecurityContext {
        namespace_options: Some(namespace_options()),
        ..Default::default()
    };
    let Some(sc) = sc else {
        return out;
    };
    match (sc.run_as_user, image_user.uid) {
        (Some(value), _) | (None, Some(value)) => {
            out.run_as_user = Some(cri::Int64Value { value });
        }
        (None, None) => out.run_as_username = image_user.username.clone(),
    }
    out.run_as_group = sc.run_as_group.map(|value| cri::Int64Value { value });
    out.supplemental_groups = sc.supplemental_groups.clone();
    out.privileged = sc.privileged;
    out.readonly_rootfs = sc.read_only_root_filesystem;
    out.no_new_privs = sc.no_new_privs;
    if !sc.capabilities_add.is_empty() || !sc.capabilities_drop.is_empty() {
        out.capabilities = Some(cri::Capability {
            add_capabilities: sc.capabilities_add.clone(),
            drop_capabilities: sc.capabilities_drop.clone(),
            add_ambient_capabilities: Vec::new(),
        });
    }
    out.seccomp = sc.seccomp.as_ref().map(|p| profile(p, seccomp_root));
    out.apparmor = sc.app_armor.as_ref().map(|p| profile(p, seccomp_root));
    out
}

/// Host port mappings of every container port that asks for one.
fn port_mappings(pod: &EdgePod) -> Vec<cri::PortMapping> {
    pod.containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.host_port != 0)
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_str() {
                "UDP" => cri::Protocol::Udp,
                "SCTP" => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            } as i32,
            container_port: i32::from(p.container_port),
            host_port: i32::from(p.host_port),
            host_ip: String::new(),
        })
        .collect()
}

/// Where a container instance logs, relative to the sandbox's log directory:
/// `<name>/<attempt>.log`, as kubelet lays it out.
pub fn log_path(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// Labels of one container instance.
pub fn container_labels(
    instance: &str,
    pod: &EdgePod,
    container: &EdgeContainer,
    attempt: u32,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_POD_UID.to_string(), pod.uid.clone()),
        (LABEL_CONTAINER_NAME.to_string(), container.name.clone()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        (LABEL_DIGEST.to_string(), container_digest(container)),
    ])
}

/// Where a container sees its pod's hosts file.
pub const ETC_HOSTS: &str = "/etc/hosts";

/// What the node resolved for one container instance, beside its spec.
pub struct Resolved<'a> {
    /// The reference to run: the image id that `ImageStatus` or `PullImage` returned, so that
    /// a tag moved meanwhile cannot change what runs.
    pub image: &'a str,
    /// The pod's hosts file, mounted at `/etc/hosts` unless the container mounts a volume
    /// there itself (as kubelet does; containerd then does not mount its copy of the host's).
    pub etc_hosts: &'a Path,
    /// [`container_security`]'s.
    pub security: cri::LinuxContainerSecurityContext,
}

/// The CRI config of one container instance. `swap_limit` says whether the node can limit
/// swap (cgroup v1 with swap accounting).
pub fn container_config(
    instance: &str,
    pod: &EdgePod,
    container: &EdgeContainer,
    config: &ContainerConfig,
    swap_limit: bool,
    resolved: Resolved<'_>,
) -> cri::ContainerConfig {
    let Resolved {
        image,
        etc_hosts,
        security,
    } = resolved;
    let own_hosts = !config.mounts.iter().any(|m| m.container_path == ETC_HOSTS);
    let hosts_mount = own_hosts.then(|| cri::Mount {
        container_path: ETC_HOSTS.to_string(),
        host_path: etc_hosts.to_string_lossy().into_owned(),
        readonly: false,
        selinux_relabel: false,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    });
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: config.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            user_specified_image: container.image.clone(),
            ..Default::default()
        }),
        // containerd applies Kubernetes' rules: `command` replaces the image's entrypoint (and
        // drops its cmd), `args` replace its cmd.
        command: container.command.clone(),
        args: container.args.clone(),
        working_dir: container.working_dir.clone(),
        envs: config
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: config
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.read_only,
                selinux_relabel: false,
                propagation: cri::MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            })
            .chain(hosts_mount)
            .collect(),
        devices: container
            .devices
            .iter()
            .map(|d| cri::Device {
                container_path: if d.container_path.is_empty() {
                    d.host_path.clone()
                } else {
                    d.container_path.clone()
                },
                host_path: d.host_path.clone(),
                permissions: if d.permissions.is_empty() {
                    "rwm".to_string()
                } else {
                    d.permissions.clone()
                },
            })
            .collect(),
        labels: container_labels(instance, pod, container, config.attempt),
        annotations: HashMap::new(),
        log_path: log_path(&container.name, config.attempt),
        // The container keeps what `kubectl attach -i/-t` attaches to; containerd closes
        // stdin after the first attach with `stdin_once`, as kubelet asks of it.
        stdin: container.stdin,
        stdin_once: container.stdin_once,
        tty: container.tty,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(&container.resources, swap_limit)),
            security_context: Some(security),
        }),
        windows: None,
        cdi_devices: Vec::new(),
    }
}

/// cgroup settings for a container's requests and limits, with kubelet's arithmetic: shares
/// from the request (the limit when only a limit is set, as the API server defaults it; the
/// minimum without either), a CFS quota from the limit, and the memory limit, with swap capped
/// at the same value where the node can (so that exceeding the limit is an OOM kill, not
/// swapping). `oom_score_adj` is left to containerd.
pub fn linux_resources(resources: &Resources, swap_limit: bool) -> cri::LinuxContainerResources {
    let mut out = cri::LinuxContainerResources::default();
    let request = resources.cpu_request_millis.or(resources.cpu_limit_millis);
    let shares = request.map_or(MIN_CPU_SHARES, |millis| {
        (millis.saturating_mul(1024) / 1000).max(MIN_CPU_SHARES)
    });
    out.cpu_shares = clamp_i64(shares);
    if let Some(limit) = resources.cpu_limit_millis {
        out.cpu_period = CPU_PERIOD_US;
        // Kubernetes' minimum quota is 1 ms.
        out.cpu_quota = clamp_i64(limit.saturating_mul(100)).max(1000);
    }
    if let Some(limit) = resources.memory_limit_bytes {
        out.memory_limit_in_bytes = clamp_i64(limit);
        if swap_limit {
            out.memory_swap_limit_in_bytes = out.memory_limit_in_bytes;
        }
    }
    out
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Nanoseconds since the epoch (CRI timestamps) to milliseconds.
fn ns_to_ms(ns: i64) -> u64 {
    u64::try_from(ns / 1_000_000).unwrap_or(0)
}

/// A container's state as the pod workers see it.
pub fn run_state(status: &cri::ContainerStatus) -> ContainerRunState {
    match cri::ContainerState::try_from(status.state) {
        Ok(cri::ContainerState::ContainerCreated) => ContainerRunState::Created,
        Ok(cri::ContainerState::ContainerRunning) => ContainerRunState::Running {
            started_at_ms: ns_to_ms(status.started_at),
        },
        Ok(cri::ContainerState::ContainerExited) => {
            let reason = if status.reason == "OOMKilled" {
                "OOMKilled"
            } else if status.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            ContainerRunState::Exited {
                exit_code: status.exit_code,
                // CRI reports a signal only as the 128+N exit code, which a program can also
                // exit with: it is not guessed here.
                signal: None,
                reason: reason.to_string(),
                started_at_ms: ns_to_ms(status.started_at),
                // containerd stamps the start after the start call returns and the exit from
                // the shim's exit event, so a container that exits at once can show an exit a
                // few milliseconds *before* its start: never report a negative run time.
                finished_at_ms: ns_to_ms(status.finished_at).max(ns_to_ms(status.started_at)),
            }
        }
        Ok(cri::ContainerState::ContainerUnknown) | Err(_) => ContainerRunState::Unknown {
            message: if status.message.is_empty() {
                format!(
                    "containerd reports the state of container {} as unknown{}",
                    status.id,
                    if status.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", status.reason)
                    }
                )
            } else {
                status.message.clone()
            },
            started_at_ms: (status.started_at > 0).then(|| ns_to_ms(status.started_at)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Mount;
    use protocol::pod::{ContainerPort, DeviceMapping, RestartPolicy};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn pod() -> EdgePod {
        EdgePod {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            labels: BTreeMap::new(),
            containers: vec![EdgeContainer {
                name: "main".into(),
                image: "skerry.local/busybox:1.35".into(),
                ports: vec![
                    ContainerPort {
                        name: "http".into(),
                        container_port: 80,
                        host_port: 8080,
                        protocol: "TCP".into(),
                    },
                    ContainerPort {
                        name: "dns".into(),
                        container_port: 53,
                        host_port: 5353,
                        protocol: "UDP".into(),
                    },
                    ContainerPort {
                        name: "internal".into(),
                        container_port: 9000,
                        host_port: 0,
                        protocol: "TCP".into(),
                    },
                ],
                ..Default::default()
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

    #[test]
    fn pull_policy_defaults_like_the_api_server() {
        let c = |image: &str, policy: &str| EdgeContainer {
            image: image.into(),
            image_pull_policy: policy.into(),
            ..Default::default()
        };
        assert_eq!(PullPolicy::of(&c("busybox", "")), Ok(PullPolicy::Always));
        assert_eq!(
            PullPolicy::of(&c("busybox:latest", "")),
            Ok(PullPolicy::Always)
        );
        assert_eq!(
            PullPolicy::of(&c("reg:5000/busybox", "")),
            Ok(PullPolicy::Always)
        );
        assert_eq!(
            PullPolicy::of(&c("reg:5000/busybox:1.35", "")),
            Ok(PullPolicy::IfNotPresent)
        );
        assert_eq!(
            PullPolicy::of(&c("busybox@sha256:abc", "")),
            Ok(PullPolicy::IfNotPresent)
        );
        assert_eq!(
            PullPolicy::of(&c("busybox", "Never")),
            Ok(PullPolicy::Never)
        );
        assert!(PullPolicy::of(&c("busybox", "Sometimes"))
            .unwrap_err()
            .contains("IfNotPresent"));
    }

    #[test]
    fn sandbox_config_carries_identity_logs_and_host_ports() {
        let cfg = sandbox_config(
            &pod(),
            "web".into(),
            2,
            "inst-1",
            Path::new("/data/pods/uid-1/logs"),
            None,
            Path::new("/data/seccomp"),
        );
        let meta = cfg.metadata.expect("metadata");
        assert_eq!(
            (
                meta.name.as_str(),
                meta.namespace.as_str(),
                meta.uid.as_str(),
                meta.attempt
            ),
            ("web", "ns", "uid-1", 2)
        );
        assert_eq!(cfg.hostname, "web");
        assert_eq!(cfg.log_directory, "/data/pods/uid-1/logs");
        assert_eq!(cfg.labels[LABEL_INSTANCE], "inst-1");
        assert_eq!(cfg.labels[LABEL_POD_UID], "uid-1");
        assert_eq!(cfg.labels["io.skerry.pod.name"], "web");
        let ports: Vec<_> = cfg
            .port_mappings
            .iter()
            .map(|p| (p.protocol, p.container_port, p.host_port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (cri::Protocol::Tcp as i32, 80, 8080),
                (cri::Protocol::Udp as i32, 53, 5353)
            ]
        );
        let linux = cfg.linux.expect("linux");
        assert_eq!(linux.cgroup_parent, "");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
    }

    #[test]
    fn resources_follow_kubelet_arithmetic() {
        let r = linux_resources(
            &Resources {
                cpu_request_millis: Some(250),
                cpu_limit_millis: Some(500),
                memory_request_bytes: Some(1 << 20),
                memory_limit_bytes: Some(64 << 20),
            },
            true,
        );
        assert_eq!(r.cpu_shares, 256);
        assert_eq!((r.cpu_period, r.cpu_quota), (100_000, 50_000));
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(r.memory_swap_limit_in_bytes, 64 << 20);
        assert_eq!(r.oom_score_adj, 0);

        // No request: the minimum shares, no quota, no memory limit.
        let none = linux_resources(&Resources::default(), true);
        assert_eq!(none.cpu_shares, 2);
        assert_eq!((none.cpu_period, none.cpu_quota), (0, 0));
        assert_eq!(none.memory_limit_in_bytes, 0);
        assert_eq!(none.memory_swap_limit_in_bytes, 0);

        // A tiny request still gets 2 shares; a limit alone is also the request; a node that
        // cannot limit swap gets only the memory limit.
        let tiny = linux_resources(
            &Resources {
                cpu_request_millis: Some(1),
                memory_limit_bytes: Some(1000),
                ..Default::default()
            },
            false,
        );
        assert_eq!(tiny.cpu_shares, 2);
        assert_eq!(tiny.memory_swap_limit_in_bytes, 0);
        let limit_only = linux_resources(
            &Resources {
                cpu_limit_millis: Some(2000),
                ..Default::default()
            },
            true,
        );
        assert_eq!(limit_only.cpu_shares, 2048);
        assert_eq!(limit_only.cpu_quota, 200_000);
        let minimal_quota = linux_resources(
            &Resources {
                cpu_limit_millis: Some(1),
                ..Default::default()
            },
            true,
        );
        assert_eq!(minimal_quota.cpu_quota, 1000);
    }

    #[test]
    fn container_config_maps_every_field() {
        let pod = pod();
        let mut container = pod.containers[0].clone();
        container.command = vec!["httpd".into()];
        container.args = vec!["-f".into()];
        container.working_dir = "/www".into();
        container.devices = vec![
            DeviceMapping {
                host_path: "/dev/ttyUSB0".into(),
                container_path: String::new(),
                permissions: String::new(),
            },
            DeviceMapping {
                host_path: "/dev/null".into(),
                container_path: "/dev/sink".into(),
                permissions: "rw".into(),
            },
        ];
        let config = ContainerConfig {
            env: vec![("A".into(), "1".into())],
            attempt: 3,
            mounts: vec![Mount {
                volume: "data".into(),
                host_path: PathBuf::from("/data/pods/uid-1/volumes/data"),
                container_path: "/data".into(),
                read_only: true,
            }],
        };
        let hosts = Path::new("/data/pods/uid-1/etc-hosts");
        let security = || container_security(None, &DefaultUser::default(), Path::new("/s"));
        let build = |config: &ContainerConfig| {
            container_config(
                "inst",
                &pod,
                &container,
                config,
                true,
                Resolved {
                    image: "sha256:abc",
                    etc_hosts: hosts,
                    security: security(),
                },
            )
        };
        let c = build(&config);
        // The pod's hosts file last, unless a volume is mounted at /etc/hosts.
        let last = c.mounts.last().expect("mounts");
        assert_eq!(
            (last.container_path.as_str(), last.host_path.as_str()),
            (ETC_HOSTS, "/data/pods/uid-1/etc-hosts")
        );
        let mut own = config.clone();
        own.mounts[0].container_path = ETC_HOSTS.into();
        let mine = build(&own);
        assert_eq!(mine.mounts.len(), 1);
        assert_eq!(mine.mounts[0].host_path, "/data/pods/uid-1/volumes/data");
        assert_eq!(c.metadata.as_ref().map(|m| m.attempt), Some(3));
        let image = c.image.as_ref().expect("image");
        assert_eq!(image.image, "sha256:abc");
        assert_eq!(image.user_specified_image, "skerry.local/busybox:1.35");
        assert_eq!(
            (c.command.clone(), c.args.clone()),
            (vec!["httpd".to_string()], vec!["-f".to_string()])
        );
        assert_eq!(c.working_dir, "/www");
        assert_eq!(c.envs[0].key, "A");
        assert_eq!(c.mounts[0].container_path, "/data");
        assert!(c.mounts[0].readonly);
        assert!(!c.mounts[0].selinux_relabel);
        assert_eq!(
            (
                c.devices[0].container_path.as_str(),
                c.devices[0].permissions.as_str()
            ),
            ("/dev/ttyUSB0", "rwm")
        );
        assert_eq!(
            (
                c.devices[1].container_path.as_str(),
                c.devices[1].permissions.as_str()
            ),
            ("/dev/sink", "rw")
        );
        assert_eq!(c.log_path, "main/3.log");
        assert_eq!(c.labels[LABEL_ATTEMPT], "3");
        assert_eq!(c.labels[LABEL_CONTAINER_NAME], "main");
        assert_eq!(c.labels[LABEL_POD_UID], "uid-1");
        assert_eq!(c.labels[LABEL_INSTANCE], "inst");
        assert_eq!(c.labels[LABEL_DIGEST], container_digest(&container));
        let ns = c
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options)
            .expect("namespaces");
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn security_contexts_map_to_cri_as_kubelet_does() {
        use cri::security_profile::ProfileType;
        let seccomp_root = Path::new("/data/seccomp");
        let sc = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000, 2000],
            read_only_root_filesystem: true,
            no_new_privs: true,
            capabilities_add: vec!["NET_ADMIN".into()],
            capabilities_drop: vec!["ALL".into()],
            seccomp: Some(SecurityProfile::Localhost("audit.json".into())),
            app_armor: Some(SecurityProfile::Unconfined),
            ..Default::default()
        };
        let image = DefaultUser::of_image(Some(65534), "");
        let c = container_security(Some(&sc), &image, seccomp_root);
        assert_eq!(c.run_as_user.as_ref().map(|u| u.value), Some(1000));
        assert_eq!(c.run_as_group.as_ref().map(|g| g.value), Some(3000));
        assert_eq!(c.supplemental_groups, [4000, 2000]);
        assert!(c.readonly_rootfs && c.no_new_privs && !c.privileged);
        let caps = c.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            (&caps.add_capabilities[..], &caps.drop_capabilities[..]),
            (&["NET_ADMIN".to_string()][..], &["ALL".to_string()][..])
        );
        let seccomp = c.seccomp.as_ref().expect("seccomp");
        assert_eq!(seccomp.profile_type, ProfileType::Localhost as i32);
        assert_eq!(seccomp.localhost_ref, "/data/seccomp/audit.json");
        assert_eq!(
            c.apparmor.as_ref().map(|p| p.profile_type),
            Some(ProfileType::Unconfined as i32)
        );
        assert!(c.masked_paths.is_empty(), "containerd's defaults stay");
        assert!(c.namespace_options.is_some());

        // A group without a user: the image's user goes with it (its uid, else its name).
        let group_only = SecurityContext {
            run_as_group: Some(3000),
            ..Default::default()
        };
        let c = container_security(Some(&group_only), &image, seccomp_root);
        assert_eq!(c.run_as_user.map(|u| u.value), Some(65534));
        let named = DefaultUser::of_image(None, "daemon");
        let c = container_security(Some(&group_only), &named, seccomp_root);
        assert_eq!(
            (c.run_as_user, c.run_as_username.as_str()),
            (None, "daemon")
        );
        // Nothing asked: nothing set but the namespaces; capabilities untouched.
        let c = container_security(None, &image, seccomp_root);
        assert_eq!(c.run_as_user, None);
        assert_eq!(c.capabilities, None);
        assert_eq!(c.seccomp, None);

        // The sandbox: the pod's own user, groups, sysctls; privileged when a container is.
        let mut p = pod();
        p.security = Some(Box::new(protocol::security::PodSecurity {
            run_as_user: Some(1000),
            supplemental_groups: vec![2000],
            fs_group: Some(2000),
            sysctls: vec![("net.ipv4.tcp_syncookies".into(), "1".into())],
            seccomp: Some(SecurityProfile::RuntimeDefault),
            ..Default::default()
        }));
        p.containers[0].security = Some(Box::new(SecurityContext {
            privileged: true,
            ..Default::default()
        }));
        let cfg = sandbox_config(
            &p,
            "web".into(),
            0,
            "i",
            Path::new("/l"),
            None,
            seccomp_root,
        );
        let linux = cfg.linux.expect("linux");
        assert_eq!(linux.sysctls["net.ipv4.tcp_syncookies"], "1");
        let s = linux.security_context.expect("security");
        assert!(s.privileged);
        assert_eq!(s.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(s.supplemental_groups, [2000]);
        assert_eq!(
            s.seccomp.map(|p| p.profile_type),
            Some(ProfileType::RuntimeDefault as i32)
        );
        let plain = sandbox_config(
            &pod(),
            "web".into(),
            0,
            "i",
            Path::new("/l"),
            None,
            seccomp_root,
        );
        let s = plain.linux.unwrap().security_context.unwrap();
        assert!(!s.privileged && s.run_as_user.is_none() && s.seccomp.is_none());
    }

    #[test]
    fn states_map_exit_reasons_and_times() {
        let status =
            |state: cri::ContainerState, exit_code: i32, reason: &str| cri::ContainerStatus {
                id: "c1".into(),
                state: state as i32,
                started_at: 1_500_000_000,
                finished_at: 2_700_000_000,
                exit_code,
                reason: reason.into(),
                ..Default::default()
            };
        assert_eq!(
            run_state(&status(cri::ContainerState::ContainerCreated, 0, "")),
            ContainerRunState::Created
        );
        assert_eq!(
            run_state(&status(cri::ContainerState::ContainerRunning, 0, "")),
            ContainerRunState::Running {
                started_at_ms: 1500
            }
        );
        let exited = |code, reason: &str| match run_state(&status(
            cri::ContainerState::ContainerExited,
            code,
            reason,
        )) {
            ContainerRunState::Exited {
                exit_code,
                reason,
                started_at_ms,
                finished_at_ms,
                ..
            } => (exit_code, reason, started_at_ms, finished_at_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(exited(0, "Completed"), (0, "Completed".into(), 1500, 2700));
        assert_eq!(exited(3, "Error").1, "Error");
        assert_eq!(exited(137, "OOMKilled").1, "OOMKilled");
        // containerd's own wording does not leak: only OOMKilled is taken from it.
        assert_eq!(exited(128, "StartError").1, "Error");
        // An exit stamped before the start (a container that exited at once) is clamped.
        let quick = cri::ContainerStatus {
            started_at: 1_500_000_000,
            finished_at: 1_497_000_000,
            ..status(cri::ContainerState::ContainerExited, 3, "")
        };
        match run_state(&quick) {
            ContainerRunState::Exited {
                started_at_ms,
                finished_at_ms,
                ..
            } => assert_eq!((started_at_ms, finished_at_ms), (1500, 1500)),
            other => panic!("{other:?}"),
        }
        match run_state(&status(cri::ContainerState::ContainerUnknown, 0, "")) {
            ContainerRunState::Unknown { message, .. } => {
                assert!(message.contains("c1"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
