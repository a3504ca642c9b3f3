//! Who a pod says it is on its own network: its hostname, its fully qualified name and the
//! lines of its `/etc/hosts`, derived from `spec.hostname`, `spec.subdomain`,
//! `spec.setHostnameAsFQDN` and `spec.hostAliases` as kubelet derives them. Pure, so that the
//! cloud (which refuses what cannot work) and both edge runtimes (which apply it) agree, and
//! so that the rules are tested without a runtime.
//!
//! An Indexed Job's pod is named `<job>-<index>-<random>` but has `spec.hostname:
//! <job>-<index>`; a StatefulSet's pod has `spec.subdomain: <serviceName>` and so answers to
//! `web-0.web.ns.svc.cluster.local` in its own `/etc/hosts`. Workloads rely on both.

use serde::{Deserialize, Serialize};

/// Longest hostname the kernel takes (`HOST_NAME_MAX`); kubelet refuses a longer FQDN
/// hostname rather than cut it.
pub const KERNEL_HOSTNAME_MAX: usize = 64;

/// Longest pod hostname: a DNS label. kubelet cuts a longer pod name to it.
pub const HOSTNAME_MAX: usize = 63;

/// The first line of a hosts file the edge wrote, as kubelet marks it.
pub const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.";

/// The pod's naming fields, as the API validated them (`hostname` and `subdomain` are DNS
/// labels; each alias has an IP address and at least one hostname).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodHosts {
    /// `spec.hostname`: the pod's hostname instead of its name.
    pub hostname: Option<String>,
    /// `spec.subdomain`: gives the pod the fully qualified name
    /// `<hostname>.<subdomain>.<namespace>.svc.<cluster domain>`.
    pub subdomain: Option<String>,
    /// `spec.setHostnameAsFQDN`: the kernel hostname is the fully qualified name.
    pub hostname_as_fqdn: bool,
    /// `spec.hostAliases`: extra lines of the pod's `/etc/hosts`, in order.
    pub aliases: Vec<HostAlias>,
}

/// One `spec.hostAliases` entry: `ip` answers to each of `hostnames`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAlias {
    /// An IPv4 or IPv6 address.
    pub ip: String,
    /// The names it answers to.
    pub hostnames: Vec<String>,
}

/// Why a pod's kernel hostname cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pod's fully qualified name {fqdn:?} is too long for a hostname ({} characters is the most, {} asked): setHostnameAsFQDN cannot be honoured", KERNEL_HOSTNAME_MAX, fqdn.len())]
pub struct FqdnTooLong {
    /// The name asked for.
    pub fqdn: String,
}

impl PodHosts {
    /// Whether any field is set: a pod without them is named by its name alone.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The pod's short hostname: `spec.hostname`, else the pod's name cut to a DNS label
    /// without a trailing `-` or `.`, as kubelet cuts it.
    pub fn hostname(&self, pod_name: &str) -> String {
        let name = self.hostname.as_deref().unwrap_or(pod_name);
        let cut: String = name.chars().take(HOSTNAME_MAX).collect();
        cut.trim_end_matches(['-', '.']).to_string()
    }

    /// The pod's fully qualified name, when it has a subdomain and the cluster domain is
    /// known.
    pub fn fqdn(&self, pod_name: &str, namespace: &str, cluster_domain: &str) -> Option<String> {
        let subdomain = self.subdomain.as_deref().filter(|s| !s.is_empty())?;
        let domain = cluster_domain.trim_end_matches('.');
        if domain.is_empty() {
            return None;
        }
        Some(format!(
            "{}.{subdomain}.{namespace}.svc.{domain}",
            self.hostname(pod_name)
        ))
    }

    /// The hostname the pod's UTS namespace gets: the fully qualified name under
    /// `setHostnameAsFQDN` (refused when longer than the kernel takes, as kubelet refuses
    /// it), else the short hostname.
    pub fn kernel_hostname(
        &self,
        pod_name: &str,
        namespace: &str,
        cluster_domain: &str,
    ) -> Result<String, FqdnTooLong> {
        match self.fqdn(pod_name, namespace, cluster_domain) {
            Some(fqdn) if self.hostname_as_fqdn => {
                if fqdn.len() > KERNEL_HOSTNAME_MAX {
                    Err(FqdnTooLong { fqdn })
                } else {
                    Ok(fqdn)
                }
            }
            _ => Ok(self.hostname(pod_name)),
        }
    }

    /// The `/etc/hosts` of a pod with a network namespace of its own at `pod_ip`: loopback
    /// and the IPv6 multicast names, the pod's own names, then its aliases. `pod_ip` empty
    /// (no address yet) leaves out the pod's own line.
    pub fn pod_hosts_file(
        &self,
        pod_name: &str,
        namespace: &str,
        cluster_domain: &str,
        pod_ip: &str,
    ) -> String {
        let mut out = format!(
            "{MANAGED_HEADER}\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n"
        );
        if !pod_ip.is_empty() {
            let host = self.hostname(pod_name);
            match self.fqdn(pod_name, namespace, cluster_domain) {
                Some(fqdn) => out.push_str(&format!("{pod_ip}\t{fqdn}\t{host}\n")),
                None => out.push_str(&format!("{pod_ip}\t{host}\n")),
            }
        }
        self.push_aliases(&mut out);
        out
    }

    /// The `/etc/hosts` of a pod on the host's network: the host's own file, then the pod's
    /// aliases (a host-network pod has the node's names, as in Kubernetes).
    pub fn host_network_hosts_file(&self, host_file: &str) -> String {
        let mut out = format!("{MANAGED_HEADER}\n# The host's file:\n{host_file}");
        if !out.ends_with('\n') {
            out.push('\n');
        }
        self.push_aliases(&mut out);
        out
    }

    fn push_aliases(&self, out: &mut String) {
        if self.aliases.is_empty() {
            return;
        }
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in &self.aliases {
            out.push_str(&alias.ip);
            for name in &alias.hostnames {
                out.push('\t');
                out.push_str(name);
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hosts(hostname: Option<&str>, subdomain: Option<&str>, fqdn: bool) -> PodHosts {
        PodHosts {
            hostname: hostname.map(String::from),
            subdomain: subdomain.map(String::from),
            hostname_as_fqdn: fqdn,
            aliases: vec![],
        }
    }

    #[test]
    fn the_hostname_is_spec_hostname_else_the_name_cut_to_a_label() {
        assert_eq!(PodHosts::default().hostname("web"), "web");
        assert_eq!(
            hosts(Some("sq-3"), None, false).hostname("sq-3-x7k2p"),
            "sq-3"
        );
        let long = format!("{}-b", "a".repeat(62));
        assert_eq!(PodHosts::default().hostname(&long), "a".repeat(62));
        assert_eq!(
            PodHosts::default().hostname(&"b".repeat(70)),
            "b".repeat(63)
        );
    }

    #[test]
    fn a_subdomain_gives_a_fully_qualified_name_under_the_cluster_domain() {
        let h = hosts(None, Some("web"), false);
        assert_eq!(
            h.fqdn("web-0", "shop", "cluster.local").as_deref(),
            Some("web-0.web.shop.svc.cluster.local")
        );
        assert_eq!(
            h.fqdn("web-0", "shop", "cluster.local.").as_deref(),
            Some("web-0.web.shop.svc.cluster.local")
        );
        assert_eq!(h.fqdn("web-0", "shop", ""), None, "domain not known yet");
        assert_eq!(
            PodHosts::default().fqdn("web-0", "shop", "cluster.local"),
            None
        );
        // Without setHostnameAsFQDN the kernel gets the short name.
        assert_eq!(
            h.kernel_hostname("web-0", "shop", "cluster.local"),
            Ok("web-0".into())
        );
    }

    #[test]
    fn set_hostname_as_fqdn_is_refused_past_the_kernel_limit() {
        let h = hosts(Some("db"), Some("db"), true);
        assert_eq!(
            h.kernel_hostname("db-0", "prod", "cluster.local"),
            Ok("db.db.prod.svc.cluster.local".into())
        );
        let ns = "n".repeat(50);
        let err = h.kernel_hostname("db-0", &ns, "cluster.local").unwrap_err();
        assert!(
            err.to_string().contains("64 characters is the most"),
            "{err}"
        );
        // Without a subdomain there is no FQDN: the short name, as kubelet does.
        assert_eq!(
            hosts(None, None, true).kernel_hostname("x", "y", "cluster.local"),
            Ok("x".into())
        );
    }

    #[test]
    fn the_pod_hosts_file_has_loopback_the_pods_names_and_its_aliases() {
        let mut h = hosts(None, Some("web"), false);
        h.aliases = vec![
            HostAlias {
                ip: "10.0.0.1".into(),
                hostnames: vec!["foo.local".into(), "bar.local".into()],
            },
            HostAlias {
                ip: "fd00::1".into(),
                hostnames: vec!["six".into()],
            },
        ];
        let file = h.pod_hosts_file("web-0", "shop", "cluster.local", "10.88.0.7");
        let lines: Vec<&str> = file.lines().collect();
        assert_eq!(lines[0], MANAGED_HEADER);
        assert!(lines.contains(&"127.0.0.1\tlocalhost"));
        assert!(lines.contains(&"10.88.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0"));
        let aliases = lines
            .iter()
            .position(|l| l.contains("HostAliases"))
            .unwrap();
        assert_eq!(lines[aliases + 1], "10.0.0.1\tfoo.local\tbar.local");
        assert_eq!(lines[aliases + 2], "fd00::1\tsix");
        // No address yet: no line of its own, and no alias section without aliases.
        let bare = PodHosts::default().pod_hosts_file("p", "ns", "cluster.local", "");
        assert_eq!(bare.lines().count(), 7);
        assert!(!bare.contains("HostAliases"));
    }

    #[test]
    fn a_host_network_pod_keeps_the_hosts_file_of_its_host() {
        let mut h = PodHosts::default();
        h.aliases.push(HostAlias {
            ip: "192.0.2.1".into(),
            hostnames: vec!["rig".into()],
        });
        let file = h.host_network_hosts_file("127.0.0.1 localhost\n10.0.0.5 node-a");
        assert!(file.contains("10.0.0.5 node-a\n"));
        assert!(file.ends_with("192.0.2.1\trig\n"));
    }

    proptest! {
        /// The kernel hostname is never longer than the kernel takes and never ends with `-`
        /// or `.`, whatever the pod is called.
        #[test]
        fn kernel_hostnames_fit(name in "[a-z0-9][a-z0-9.-]{0,252}",
                                sub in proptest::option::of("[a-z]{1,20}"),
                                ns in "[a-z]{1,63}", fqdn: bool) {
            let h = PodHosts { hostname: None, subdomain: sub, hostname_as_fqdn: fqdn, aliases: vec![] };
            if let Ok(k) = h.kernel_hostname(&name, &ns, "cluster.local") {
                prop_assert!(k.len() <= KERNEL_HOSTNAME_MAX);
                prop_assert!(!k.ends_with('-') && !k.ends_with('.'));
            }
        }
    }
}
