//! Pod DNS end to end over a real containerd (the harness's private one): a `ClusterFirst`
//! pod's `/etc/resolv.conf` names the cluster DNS address with the Kubernetes search path and
//! `ndots:5`, and `nslookup web.default.svc.cluster.local` inside the pod is answered by the
//! edge's own DNS server, which owns that address on a node-local interface (the issue's
//! acceptance test); `None` and `Default` get what they ask for. Needs root (the interface);
//! under `CI=true` a missing containerd or root fails.

mod support;

use edgecore::network::dns::{iface, DnsConfig, DnsServer, Listen, Upstream};
use edgecore::network::view::ServiceView;
use edgecore::runtime::cri::{CriConfig, CriRuntime};
use edgecore::runtime::dns::NetworkSource;
use edgecore::runtime::{ContainerConfig, Runtime, Sandbox};
use protocol::pod::{DnsOption, DnsPolicy, EdgePod, PodDns, PodDnsConfig};
use protocol::service::*;
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

fn cluster_network(dns: IpAddr) -> ClusterNetwork {
    ClusterNetwork {
        node: "edge-1".into(),
        pod_cidr: None,
        service_cidr: "10.96.0.0/12".into(),
        cluster_dns: dns,
        cluster_domain: "cluster.local".into(),
    }
}

fn view(dns: IpAddr) -> ServiceView {
    let web = EdgeService {
        namespace: "default".into(),
        name: "web".into(),
        kind: ServiceKind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: L4Protocol::Tcp,
            port: 80,
            node_port: None,
        }],
        client_ip_affinity_secs: None,
        internal_traffic_local: false,
        external_traffic_local: false,
        publish_not_ready: false,
    };
    let mut v = ServiceView {
        network: Some(cluster_network(dns)),
        ..ServiceView::default()
    };
    let ext = EdgeService {
        name: "ext".into(),
        kind: ServiceKind::ExternalName("www.example.org".into()),
        ports: vec![],
        ..web.clone()
    };
    v.services.insert(("default".into(), "web".into()), web);
    v.services.insert(("default".into(), "ext".into()), ext);
    v
}

fn pod(uid: &str, dns: PodDns) -> EdgePod {
    EdgePod {
        namespace: "default".into(),
        dns,
        ..support::pod(
            uid,
            vec![support::sh("main", BUSYBOX_IMAGE, "exec sleep 3600")],
        )
    }
}

async fn exec(rt: &CriRuntime, sb: &Sandbox, id: &str, cmd: &[&str]) -> String {
    let out = rt
        .exec_sync(
            sb,
            id,
            &cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            Duration::from_secs(20),
        )
        .await
        .expect("exec");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn start(rt: &CriRuntime, p: &EdgePod) -> (Sandbox, String) {
    let sb = rt.run_sandbox(p).await.expect("run_sandbox");
    let config = ContainerConfig {
        env: vec![],
        attempt: 0,
        mounts: vec![],
    };
    let info = rt
        .start_container(&sb, p, &p.containers[0], &config)
        .await
        .expect("start");
    (sb, info.id)
}

struct RemoveIface(String);

impl Drop for RemoveIface {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_cluster_names_through_the_edges_own_dns_server() {
    if !containerd::require() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root"
        );
        eprintln!("skipped: needs root for the cluster DNS interface");
        return;
    }
    let ctrd = Containerd::start().await.expect("containerd starts");
    let data = tempfile::tempdir().expect("data dir");

    // The cluster DNS address: unique to this process, in 198.18.0.0/15 (RFC 2544's
    // benchmarking range), on an interface of this test's own.
    let pid = std::process::id();
    let dns_ip = IpAddr::from([198, 18, ((pid >> 8) & 0xff) as u8, (pid & 0xff) as u8]);
    let iface_name = format!("skc{}", pid % 1_000_000);
    let _iface = RemoveIface(iface_name.clone());
    let (_upstream, upstream_addr) = support::dns::upstream().await;
    let (_view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(view(dns_ip)));
    let mut server = DnsServer::start(
        DnsConfig {
            listen: Listen::ClusterDns {
                interface: iface_name.clone(),
                port: 53,
            },
            upstream: Upstream::Servers(vec![upstream_addr]),
            upstream_timeout: Duration::from_secs(1),
        },
        view_rx,
    );
    assert_eq!(
        server.bound().await.expect("the DNS server listens"),
        SocketAddr::new(dns_ip, 53)
    );

    // The host's resolv.conf as the runtime reads it.
    let host_conf = data.path().join("host-resolv.conf");
    std::fs::write(
        &host_conf,
        "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n",
    )
    .unwrap();
    let mut cfg = CriConfig::new(
        ctrd.socket.clone(),
        data.path().join("pods"),
        "inst-dns".into(),
    );
    cfg.rpc_timeout = Duration::from_secs(20);
    cfg.resolv_conf = host_conf;
    cfg.network = NetworkSource::new(move || Some(cluster_network(dns_ip)));
    let rt = CriRuntime::connect(cfg).await.expect("connect");

    // ClusterFirst (the default).
    let p = pod("dns-cf", PodDns::default());
    let (sb, id) = start(&rt, &p).await;
    let resolv = exec(&rt, &sb, &id, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains(
            "search default.svc.cluster.local svc.cluster.local cluster.local corp.example"
        ),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    assert!(!resolv.contains("192.0.2.53"), "{resolv}");

    let out = exec(
        &rt,
        &sb,
        &id,
        &["nslookup", "web.default.svc.cluster.local"],
    )
    .await;
    assert!(out.contains("10.96.0.20"), "nslookup from the pod: {out}");
    // The search path at work: a short name.
    let out = exec(&rt, &sb, &id, &["nslookup", "web"]).await;
    assert!(out.contains("10.96.0.20"), "nslookup web: {out}");
    // A name outside the cluster domain, forwarded upstream.
    let out = exec(&rt, &sb, &id, &["nslookup", "www.example.org"]).await;
    assert!(out.contains("192.0.2.1"), "nslookup www.example.org: {out}");
    // An ExternalName Service: the CNAME, followed to its target's address.
    let out = exec(
        &rt,
        &sb,
        &id,
        &["nslookup", "ext.default.svc.cluster.local"],
    )
    .await;
    assert!(out.contains("192.0.2.1"), "nslookup ext: {out}");

    // None: only what dnsConfig says.
    let none = PodDns {
        policy: DnsPolicy::None,
        config: Some(Box::new(PodDnsConfig {
            nameservers: vec!["192.0.2.9".into()],
            searches: vec!["only.example".into()],
            options: vec![DnsOption {
                name: "ndots".into(),
                value: Some("1".into()),
            }],
        })),
    };
    let p2 = pod("dns-none", none);
    let (sb2, id2) = start(&rt, &p2).await;
    let resolv = exec(&rt, &sb2, &id2, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains("nameserver 192.0.2.9"), "{resolv}");
    assert!(resolv.contains("search only.example"), "{resolv}");
    assert!(resolv.contains("options ndots:1"), "{resolv}");
    assert!(!resolv.contains(&dns_ip.to_string()), "{resolv}");

    // Default: the host's.
    let p3 = pod(
        "dns-default",
        PodDns {
            policy: DnsPolicy::Default,
            config: None,
        },
    );
    let (sb3, id3) = start(&rt, &p3).await;
    let resolv = exec(&rt, &sb3, &id3, &["cat", "/etc/resolv.conf"]).await;
    assert!(resolv.contains("nameserver 192.0.2.53"), "{resolv}");
    assert!(resolv.contains("search corp.example"), "{resolv}");

    for sb in [&sb, &sb2, &sb3] {
        rt.remove_sandbox(sb, Duration::from_secs(1))
            .await
            .expect("remove");
    }
    server.shutdown().await.expect("dns server stops");
    iface::remove(&iface_name).await.expect("interface removed");
}
