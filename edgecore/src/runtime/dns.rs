//! A pod's resolver configuration, built as kubelet builds it (`pkg/kubelet/network/dns`), from
//! its `dnsPolicy` and `dnsConfig`, the node's cluster DNS settings and the host's
//! `resolv.conf`. Pure functions; the CRI runtime hands the result to containerd
//! (`PodSandboxConfig.dns_config`), which writes the pod's `/etc/resolv.conf` from it.
//!
//! | policy | nameservers | search | options |
//! | --- | --- | --- | --- |
//! | `ClusterFirst` (own network) / `ClusterFirstWithHostNet` | the cluster DNS address | `<ns>.svc.<domain> svc.<domain> <domain>` + the host's | `ndots:5` |
//! | `ClusterFirst` on the host's network, `Default` | the host's | the host's | the host's |
//! | `None` | — | — | — |
//!
//! `dnsConfig` is then merged in: nameservers and searches appended (duplicates dropped),
//! options by name (the pod's replace the policy's). What does not fit libc's limits is cut as
//! kubelet cuts it: 3 nameservers, 32 searches of at most 2048 characters in all. A
//! cluster-first pod on a node that has no cluster DNS settings yet gets the host's
//! configuration (kubelet does the same when `--cluster-dns` is unset).

use protocol::pod::{DnsPolicy, EdgePod, PodDns};
use protocol::service::ClusterNetwork;
use std::fmt;
use std::sync::Arc;

/// libc's limits, which kubelet applies to what it writes.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The lines of a `resolv.conf` that matter to a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<String>,
    /// The last `search` (or `domain`) line's domains.
    pub searches: Vec<String>,
    /// `options` words (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses a `resolv.conf` as glibc reads it: `nameserver`, `search` and `domain` (the last
    /// of either wins), `options`; comments (`#`, `;`) and anything else ignored. Trailing dots
    /// of search domains are dropped, as kubelet drops them.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.nameservers.extend(words.next().map(String::from)),
                Some("search") | Some("domain") => {
                    out.searches = words
                        .map(|w| w.trim_end_matches('.').to_string())
                        .filter(|w| !w.is_empty())
                        .collect();
                }
                Some("options") => out.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        out
    }
}

/// Where a runtime reads the node's cluster DNS settings (the cache's network settings in the
/// agent): called once per sandbox, so it sees settings that arrived after start.
#[derive(Clone)]
pub struct NetworkSource(Arc<dyn Fn() -> Option<ClusterNetwork> + Send + Sync>);

impl NetworkSource {
    /// A source that calls `f`.
    pub fn new(f: impl Fn() -> Option<ClusterNetwork> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A source that never knows (no cluster DNS: cluster-first pods get the host's).
    pub fn none() -> Self {
        Self::new(|| None)
    }

    /// The settings now.
    pub fn get(&self) -> Option<ClusterNetwork> {
        (self.0)()
    }
}

impl fmt::Debug for NetworkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkSource")
    }
}

/// Which configuration a pod gets before its `dnsConfig` is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The cluster's.
    Cluster,
    /// The host's.
    Host,
    /// Nothing (`None`).
    Empty,
}

/// kubelet's `getPodDNSType`: `ClusterFirst` on the host's network is `Default`.
pub fn base(dns: &PodDns, host_network: bool) -> Base {
    match dns.policy {
        DnsPolicy::ClusterFirstWithHostNet => Base::Cluster,
        DnsPolicy::ClusterFirst if !host_network => Base::Cluster,
        DnsPolicy::ClusterFirst | DnsPolicy::Default => Base::Host,
        DnsPolicy::None => Base::Empty,
    }
}

/// The pod's resolver configuration (see the module docs). `cluster` is `None` while the node
/// has no network settings: a cluster-first pod then gets the host's configuration, and the
/// second value says so (for the caller's log line).
pub fn pod_resolv_conf(
    pod: &EdgePod,
    host_network: bool,
    cluster: Option<&ClusterNetwork>,
    host: &ResolvConf,
) -> (ResolvConf, bool) {
    let mut fell_back = false;
    let mut out = match (base(&pod.dns, host_network), cluster) {
        (Base::Cluster, Some(net)) => {
            let domain = net.cluster_domain.trim_end_matches('.');
            let mut searches = vec![
                format!("{}.svc.{domain}", pod.namespace),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            searches.extend(host.searches.iter().cloned());
            ResolvConf {
                nameservers: vec![net.cluster_dns.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        (Base::Cluster, None) => {
            fell_back = true;
            host.clone()
        }
        (Base::Host, _) => host.clone(),
        (Base::Empty, _) => ResolvConf::default(),
    };
    if let Some(config) = &pod.dns.config {
        for ns in &config.nameservers {
            if !out.nameservers.contains(ns) {
                out.nameservers.push(ns.clone());
            }
        }
        for s in &config.searches {
            let s = s.trim_end_matches('.').to_string();
            if !s.is_empty() && !out.searches.contains(&s) {
                out.searches.push(s);
            }
        }
        for option in &config.options {
            let word = match &option.value {
                Some(v) => format!("{}:{v}", option.name),
                None => option.name.clone(),
            };
            let same = |o: &String| o.split(':').next() == Some(option.name.as_str());
            match out.options.iter_mut().find(|o| same(o)) {
                Some(existing) => *existing = word,
                None => out.options.push(word),
            }
        }
    }
    out.nameservers.truncate(MAX_NAMESERVERS);
    out.searches.dedup();
    out.searches.truncate(MAX_SEARCHES);
    while out.searches.join(" ").len() > MAX_SEARCH_CHARS {
        out.searches.pop();
    }
    (out, fell_back)
}

/// Why the process runtime cannot give a pod the resolver it asks for, if it cannot: its
/// processes share the host's `/etc/resolv.conf` and no per-process resolver can be set, so
/// only the host's configuration is possible (`Default`, and `ClusterFirst`, which on the
/// host's network is `Default` in Kubernetes too).
pub fn process_runtime_refusal(pod: &EdgePod) -> Option<String> {
    let why = match pod.dns.policy {
        DnsPolicy::ClusterFirstWithHostNet => "dnsPolicy ClusterFirstWithHostNet",
        DnsPolicy::None => "dnsPolicy None",
        DnsPolicy::ClusterFirst | DnsPolicy::Default => {
            let config = pod.dns.config.as_deref()?;
            if config.nameservers.is_empty()
                && config.searches.is_empty()
                && config.options.is_empty()
            {
                return None;
            }
            "a dnsConfig"
        }
    };
    Some(format!(
        "{why} cannot be honoured by the process runtime: its processes use the host's \
         /etc/resolv.conf, and no per-pod resolver can be set for a native process; use \
         dnsPolicy Default or ClusterFirst without dnsConfig, or run the pod on a node with the \
         cri runtime"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::pod::{DnsOption, PodDnsConfig};

    fn pod(policy: DnsPolicy, config: Option<PodDnsConfig>) -> EdgePod {
        EdgePod {
            namespace: "shop".into(),
            name: "p".into(),
            uid: "u".into(),
            labels: Default::default(),
            containers: vec![],
            restart_policy: Default::default(),
            termination_grace_period_seconds: 30,
            volumes: vec![],
            deletion_grace_period_seconds: None,
            dns: PodDns {
                policy,
                config: config.map(Box::new),
            },
            init_containers: vec![],
            hosts: Default::default(),
            annotations: Default::default(),
            security: None,
        }
    }

    fn net() -> ClusterNetwork {
        ClusterNetwork {
            node: "n".into(),
            pod_cidr: None,
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn host() -> ResolvConf {
        ResolvConf::parse(
            "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54 # second\nsearch corp.example. lab.example\noptions edns0 ndots:2\n",
        )
    }

    #[test]
    fn resolv_conf_is_parsed_as_libc_reads_it() {
        let h = host();
        assert_eq!(h.nameservers, ["192.0.2.53", "192.0.2.54"]);
        assert_eq!(h.searches, ["corp.example", "lab.example"]);
        assert_eq!(h.options, ["edns0", "ndots:2"]);
        assert_eq!(
            ResolvConf::parse("domain a.example\nsearch b.example\n").searches,
            ["b.example"]
        );
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_the_kubernetes_search_path() {
        let (c, fell_back) = pod_resolv_conf(
            &pod(DnsPolicy::ClusterFirst, None),
            false,
            Some(&net()),
            &host(),
        );
        assert!(!fell_back);
        assert_eq!(c.nameservers, ["10.96.0.10"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "lab.example"
            ]
        );
        assert_eq!(c.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_and_default_get_the_hosts_and_unknown_cluster_dns_falls_back() {
        let h = host();
        let cf = pod(DnsPolicy::ClusterFirst, None);
        assert_eq!(pod_resolv_conf(&cf, true, Some(&net()), &h).0, h);
        let with_host_net = pod(DnsPolicy::ClusterFirstWithHostNet, None);
        assert_eq!(
            pod_resolv_conf(&with_host_net, true, Some(&net()), &h)
                .0
                .nameservers,
            ["10.96.0.10"]
        );
        assert_eq!(
            pod_resolv_conf(&pod(DnsPolicy::Default, None), false, Some(&net()), &h).0,
            h
        );
        assert_eq!(pod_resolv_conf(&cf, false, None, &h), (h, true));
    }

    #[test]
    fn dns_config_is_merged_and_cut_to_libcs_limits() {
        let config = PodDnsConfig {
            nameservers: vec![
                "192.0.2.1".into(),
                "10.96.0.10".into(),
                "192.0.2.2".into(),
                "192.0.2.3".into(),
            ],
            searches: vec!["extra.example.".into(), "svc.cluster.local".into()],
            options: vec![
                DnsOption {
                    name: "ndots".into(),
                    value: Some("2".into()),
                },
                DnsOption {
                    name: "edns0".into(),
                    value: None,
                },
            ],
        };
        let (c, _) = pod_resolv_conf(
            &pod(DnsPolicy::ClusterFirst, Some(config.clone())),
            false,
            Some(&net()),
            &ResolvConf::default(),
        );
        assert_eq!(c.nameservers, ["10.96.0.10", "192.0.2.1", "192.0.2.2"]);
        assert_eq!(
            c.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "extra.example"
            ]
        );
        assert_eq!(c.options, ["ndots:2", "edns0"]);
        let (none, _) = pod_resolv_conf(
            &pod(DnsPolicy::None, Some(config)),
            false,
            Some(&net()),
            &host(),
        );
        assert_eq!(none.nameservers, ["192.0.2.1", "10.96.0.10", "192.0.2.2"]);
        assert_eq!(none.searches, ["extra.example", "svc.cluster.local"]);

        let long = PodDnsConfig {
            searches: (0..40)
                .map(|i| format!("{i}-{}.example", "x".repeat(60)))
                .collect(),
            ..PodDnsConfig::default()
        };
        let (c, _) = pod_resolv_conf(&pod(DnsPolicy::None, Some(long)), false, None, &host());
        assert!(c.searches.len() <= MAX_SEARCHES && c.searches.join(" ").len() <= MAX_SEARCH_CHARS);
    }

    #[test]
    fn the_process_runtime_refuses_what_it_cannot_honour() {
        assert_eq!(
            process_runtime_refusal(&pod(DnsPolicy::ClusterFirst, None)),
            None
        );
        assert_eq!(
            process_runtime_refusal(&pod(DnsPolicy::Default, Some(PodDnsConfig::default()))),
            None
        );
        for p in [
            pod(
                DnsPolicy::None,
                Some(PodDnsConfig {
                    nameservers: vec!["192.0.2.1".into()],
                    ..Default::default()
                }),
            ),
            pod(DnsPolicy::ClusterFirstWithHostNet, None),
            pod(
                DnsPolicy::Default,
                Some(PodDnsConfig {
                    searches: vec!["a.example".into()],
                    ..Default::default()
                }),
            ),
        ] {
            let why = process_runtime_refusal(&p).expect("refused");
            assert!(why.contains("process runtime"), "{why}");
        }
    }
}
