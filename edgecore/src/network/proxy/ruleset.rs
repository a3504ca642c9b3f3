//! The pure half of the Service proxy: from a [`ServiceView`] and the node's addresses to the
//! nftables ruleset that routes every cluster IP and node port, with no I/O at all.
//!
//! The layout follows kube-proxy's nftables mode (KEP-3866), in one `ip` table:
//! - `nat-prerouting` (pods, outside) and `nat-output` (the host) jump to `services`, which
//!   looks `daddr . l4proto . dport` up in the verdict map `service-ips`, and
//!   `l4proto . dport` for a node address in `service-nodeports`;
//! - each Service port has a chain `svc-…` (cluster-IP traffic) and, with a node port, `ext-…`
//!   (node-port traffic, which may use other endpoints under `externalTrafficPolicy: Local`);
//!   both end in `numgen random mod N vmap { … }` over per-endpoint chains `ep-…`, after one
//!   `ip saddr @aff-… goto ep-…` per endpoint when `sessionAffinity: ClientIP` is set;
//! - each `ep-…` marks hairpin traffic for masquerade, records the client in its affinity set,
//!   and DNATs;
//! - `filter-prerouting`/`filter-output` send the first packet of a connection to a Service
//!   port with no usable endpoint to `reject-chain` (TCP reset, ICMP port unreachable), so the
//!   client is refused at once instead of hanging;
//! - `nat-postrouting` masquerades what was marked.
//!
//! [`Ruleset::render`] is the canonical text (compared to decide whether to apply);
//! [`Ruleset::transaction`] is what `nft -f` runs: a full replacement the first time, and
//! afterwards a flush-and-refill of the same table in one transaction, which keeps the
//! affinity sets' members (an unrelated Service's change must not reset everyone's affinity)
//! and deletes only the chains and sets that are gone.

use crate::network::view::ServiceView;
use protocol::service::{AddressType, EdgeService, L4Protocol, ServiceKind, ServicePort};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// The packet mark bit that asks `nat-postrouting` to masquerade (kube-proxy's too).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The node's own addresses: node ports answer on these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// IPv4 addresses of the node (not loopback).
    pub ipv4: Vec<Ipv4Addr>,
}

/// What shapes the ruleset beside the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetConfig {
    /// The nftables table (family `ip`) this proxy owns.
    pub table: String,
    /// Most client addresses one affinity set holds; past it new clients are balanced without
    /// being remembered (the set never grows beyond this).
    pub affinity_set_size: u32,
}

impl Default for RulesetConfig {
    fn default() -> Self {
        RulesetConfig {
            table: "skerry".into(),
            affinity_set_size: 65_535,
        }
    }
}

/// Something the renderer left out, with why: logged by the caller, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// `namespace/name` of the Service or slice.
    pub object: String,
    /// What was skipped and why.
    pub reason: String,
}

/// Where a UDP flow enters: kept so that the applier can flush the conntrack entries of an
/// endpoint that left (UDP has no end of connection; stale entries would keep sending to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UdpFront {
    /// `cluster IP : port`.
    ClusterIp(Ipv4Addr, u16),
    /// A node port (on every node address).
    NodePort(u16),
}

/// One chain of the table: a base chain has a hook line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    hook: Option<&'static str>,
    rules: Vec<String>,
}

/// One set or map: its declaration body (type, flags) and, for the static ones, elements.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetDef {
    kind: &'static str,
    decl: String,
    /// Dynamic sets (affinity) keep their members across updates: never flushed.
    dynamic: bool,
    elements: Vec<String>,
}

/// The whole desired table, structured so that an update can be computed against the one
/// applied before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    table: String,
    chains: BTreeMap<String, Chain>,
    sets: BTreeMap<String, SetDef>,
    /// UDP fronts and the endpoint addresses behind them.
    pub udp: BTreeMap<UdpFront, BTreeSet<Ipv4Addr>>,
    /// What was left out, with reasons.
    pub skipped: Vec<Skipped>,
    /// Number of Service ports with at least one endpoint in the table.
    pub routed_ports: usize,
}

/// An endpoint as the proxy sees it after the node's own readiness override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    ip: Ipv4Addr,
    port: u16,
    ready: bool,
    serving_terminating: bool,
    local: bool,
}

/// Kubernetes' choice of endpoints (KEP-1669): the ready ones; when there are none, those
/// terminating but still serving; optionally only the local ones.
fn pick(targets: &[Target], local_only: bool) -> Vec<Target> {
    let eligible: Vec<Target> = targets
        .iter()
        .filter(|t| !local_only || t.local)
        .copied()
        .collect();
    let ready: Vec<Target> = eligible.iter().filter(|t| t.ready).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    eligible
        .into_iter()
        .filter(|t| t.serving_terminating)
        .collect()
}

fn proto_word(p: L4Protocol) -> &'static str {
    match p {
        L4Protocol::Tcp => "tcp",
        L4Protocol::Udp => "udp",
        L4Protocol::Sctp => "sctp",
    }
}

/// The readable id of one Service port, used in chain and set names:
/// `ns/name/proto/portname-or-number` (DNS labels only, so a valid nft identifier).
fn port_id(svc: &EdgeService, port: &ServicePort) -> String {
    let pname = if port.name.is_empty() {
        port.port.to_string()
    } else {
        port.name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        proto_word(port.protocol),
        pname
    )
}

/// Builds the ruleset. Pure: the same inputs give the same text.
pub fn ruleset(view: &ServiceView, node: &NodeAddrs, cfg: &RulesetConfig) -> Ruleset {
    let mut b = Builder {
        rs: Ruleset {
            table: cfg.table.clone(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            udp: BTreeMap::new(),
            skipped: Vec::new(),
            routed_ports: 0,
        },
        cfg,
        service_ips: Vec::new(),
        nodeports: Vec::new(),
        no_ep_services: Vec::new(),
        no_ep_nodeports: Vec::new(),
    };
    for svc in view.services.values() {
        b.service(view, svc);
    }
    b.finish(node)
}

struct Builder<'a> {
    rs: Ruleset,
    cfg: &'a RulesetConfig,
    service_ips: Vec<String>,
    nodeports: Vec<String>,
    no_ep_services: Vec<String>,
    no_ep_nodeports: Vec<String>,
}

impl Builder<'_> {
    fn skip(&mut self, object: String, reason: String) {
        self.rs.skipped.push(Skipped { object, reason });
    }

    fn service(&mut self, view: &ServiceView, svc: &EdgeService) {
        let ips = match &svc.kind {
            ServiceKind::ClusterIp(ips) => ips,
            // Nothing to proxy: DNS answers for these.
            ServiceKind::Headless | ServiceKind::ExternalName(_) => return,
        };
        let vip = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let Some(vip) = vip else {
            self.skip(
                svc.key(),
                "only IPv6 cluster IPs; this proxy routes IPv4".into(),
            );
            return;
        };
        if view.network.as_ref().map(|n| n.cluster_dns) == Some(IpAddr::V4(vip)) {
            // The node's own DNS server owns that address (the cloud refuses it to new
            // Services; one that held it before keeps it there but is not translated).
            self.skip(
                svc.key(),
                format!("its cluster IP {vip} is the cluster DNS address, which this node's DNS server answers"),
            );
            return;
        }
        for port in &svc.ports {
            if port.protocol == L4Protocol::Sctp {
                self.skip(
                    svc.key(),
                    format!(
                        "port {} is SCTP, which this proxy does not route",
                        port.port
                    ),
                );
                continue;
            }
            let targets = self.targets(view, svc, port);
            self.service_port(svc, port, vip, &targets);
        }
    }

    /// Every usable endpoint of one Service port across its slices, deduplicated.
    fn targets(
        &mut self,
        view: &ServiceView,
        svc: &EdgeService,
        port: &ServicePort,
    ) -> Vec<Target> {
        let mut out: BTreeMap<(Ipv4Addr, u16), Target> = BTreeMap::new();
        let slices: Vec<_> = view.slices_of(&svc.namespace, &svc.name).cloned().collect();
        for slice in slices {
            match slice.address_type {
                AddressType::Ipv4 => {}
                AddressType::Ipv6 => continue,
                AddressType::Fqdn => {
                    self.skip(slice.key(), "FQDN slice: never routed".into());
                    continue;
                }
            }
            let Some(sport) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            if sport.port == 0 {
                self.skip(
                    slice.key(),
                    format!("port {:?} is 0: its endpoints are skipped", sport.name),
                );
                continue;
            }
            for ep in &slice.endpoints {
                let ip = match ep.addresses.first() {
                    None => {
                        self.skip(
                            slice.key(),
                            format!("an endpoint of pod {:?} has no address", ep.pod),
                        );
                        continue;
                    }
                    Some(IpAddr::V6(a)) => {
                        self.skip(
                            slice.key(),
                            format!("endpoint {a} is IPv6 in an IPv4 slice and ruleset"),
                        );
                        continue;
                    }
                    Some(IpAddr::V4(a)) => *a,
                };
                if ip.is_unspecified() || ip.is_loopback() || ip.is_broadcast() || ip.is_multicast()
                {
                    self.skip(
                        slice.key(),
                        format!("endpoint {ip} cannot be a destination"),
                    );
                    continue;
                }
                let ready = view.endpoint_ready(&svc.namespace, ep);
                let serving = view.endpoint_serving(&svc.namespace, ep);
                let t = Target {
                    ip,
                    port: sport.port,
                    ready,
                    serving_terminating: serving && ep.terminating,
                    local: view.is_local(ep),
                };
                out.entry((ip, sport.port))
                    .and_modify(|old| {
                        old.ready |= t.ready;
                        old.serving_terminating |= t.serving_terminating;
                        old.local |= t.local;
                    })
                    .or_insert(t);
            }
        }
        out.into_values().collect()
    }

    fn service_port(
        &mut self,
        svc: &EdgeService,
        port: &ServicePort,
        vip: Ipv4Addr,
        targets: &[Target],
    ) {
        let id = port_id(svc, port);
        let proto = proto_word(port.protocol);
        let internal = pick(targets, svc.internal_traffic_local);
        let external = pick(targets, svc.external_traffic_local);
        let front = format!("{vip} . {proto} . {}", port.port);
        if internal.is_empty() {
            self.no_ep_services
                .push(format!("{front} : goto reject-chain"));
        } else {
            let chain = format!("svc-{id}");
            self.balance(
                &chain,
                &id,
                port,
                svc.client_ip_affinity_secs,
                &internal,
                None,
            );
            self.service_ips.push(format!("{front} : goto {chain}"));
            self.rs.routed_ports += 1;
            if port.protocol == L4Protocol::Udp {
                self.rs.udp.insert(
                    UdpFront::ClusterIp(vip, port.port),
                    internal.iter().map(|t| t.ip).collect(),
                );
            }
        }
        let Some(node_port) = port.node_port else {
            return;
        };
        let nfront = format!("{proto} . {node_port}");
        if external.is_empty() {
            self.no_ep_nodeports
                .push(format!("{nfront} : goto reject-chain"));
            return;
        }
        let chain = format!("ext-{id}");
        // externalTrafficPolicy: Cluster hides the client behind the node (the endpoint may be
        // elsewhere, and its reply must come back through here); Local keeps the client's
        // address, and its endpoints are all on this node.
        let masq = (!svc.external_traffic_local).then_some("jump mark-for-masquerade");
        self.balance(
            &chain,
            &id,
            port,
            svc.client_ip_affinity_secs,
            &external,
            masq,
        );
        self.nodeports.push(format!("{nfront} : goto {chain}"));
        if port.protocol == L4Protocol::Udp {
            self.rs.udp.insert(
                UdpFront::NodePort(node_port),
                external.iter().map(|t| t.ip).collect(),
            );
        }
    }

    /// A chain that balances over `targets`, with affinity first; creates the endpoint chains.
    fn balance(
        &mut self,
        chain: &str,
        id: &str,
        port: &ServicePort,
        affinity: Option<u32>,
        targets: &[Target],
        first: Option<&str>,
    ) {
        let mut rules: Vec<String> = first.map(str::to_string).into_iter().collect();
        let mut verdicts = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let ep = self.endpoint(id, port, affinity, t);
            if let Some(secs) = affinity {
                rules.push(format!("ip saddr @{} goto {ep}", aff_name(&ep, secs)));
            }
            verdicts.push(format!("{i} : goto {ep}"));
        }
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            targets.len(),
            verdicts.join(", ")
        ));
        self.rs
            .chains
            .insert(chain.to_string(), Chain { hook: None, rules });
    }

    /// The chain for one endpoint of one Service port (shared by `svc-` and `ext-`).
    fn endpoint(
        &mut self,
        id: &str,
        port: &ServicePort,
        affinity: Option<u32>,
        t: &Target,
    ) -> String {
        let name = format!("ep-{id}__{}/{}", t.ip, t.port);
        if self.rs.chains.contains_key(&name) {
            return name;
        }
        let proto = proto_word(port.protocol);
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", t.ip)];
        if let Some(secs) = affinity {
            let set = aff_name(&name, secs);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            self.rs.sets.insert(
                set,
                SetDef {
                    kind: "set",
                    decl: format!(
                        "type ipv4_addr; flags dynamic,timeout; timeout {secs}s; size {};",
                        self.cfg.affinity_set_size
                    ),
                    dynamic: true,
                    elements: Vec::new(),
                },
            );
        }
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", t.ip, t.port));
        self.rs
            .chains
            .insert(name.clone(), Chain { hook: None, rules });
        name
    }

    fn finish(mut self, node: &NodeAddrs) -> Ruleset {
        let chains = &mut self.rs.chains;
        let base = |hook: &'static str, rules: &[&str]| Chain {
            hook: Some(hook),
            rules: rules.iter().map(|r| r.to_string()).collect(),
        };
        chains.insert(
            "nat-prerouting".into(),
            base(
                "type nat hook prerouting priority dstnat; policy accept;",
                &["jump services"],
            ),
        );
        chains.insert(
            "nat-output".into(),
            base(
                "type nat hook output priority -100; policy accept;",
                &["jump services"],
            ),
        );
        chains.insert(
            "nat-postrouting".into(),
            base(
                "type nat hook postrouting priority srcnat; policy accept;",
                &[
                    &format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
                    &format!("meta mark set meta mark ^ {MASQUERADE_MARK:#x}"),
                    "masquerade fully-random",
                ],
            ),
        );
        chains.insert(
            "filter-prerouting".into(),
            base(
                "type filter hook prerouting priority dstnat - 10; policy accept;",
                &["ct state new jump endpoints-check"],
            ),
        );
        chains.insert(
            "filter-output".into(),
            base(
                "type filter hook output priority -110; policy accept;",
                &["ct state new jump endpoints-check"],
            ),
        );
        chains.insert(
            "services".into(),
            base_free(&[
                "ip daddr . meta l4proto . th dport vmap @service-ips",
                "ip daddr @node-ips meta l4proto . th dport vmap @service-nodeports",
            ]),
        );
        chains.insert(
            "endpoints-check".into(),
            base_free(&[
                "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
                "ip daddr @node-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
            ]),
        );
        chains.insert(
            "mark-for-masquerade".into(),
            base_free(&[&format!("meta mark set meta mark | {MASQUERADE_MARK:#x}")]),
        );
        chains.insert(
            "reject-chain".into(),
            base_free(&["meta l4proto tcp reject with tcp reset", "reject"]),
        );
        let sets = &mut self.rs.sets;
        let mut node_ips: Vec<String> = node.ipv4.iter().map(|a| a.to_string()).collect();
        node_ips.sort();
        node_ips.dedup();
        let st = |kind, decl: &str, elements| SetDef {
            kind,
            decl: decl.to_string(),
            dynamic: false,
            elements,
        };
        sets.insert("node-ips".into(), st("set", "type ipv4_addr;", node_ips));
        let vip_map = "type ipv4_addr . inet_proto . inet_service : verdict;";
        let port_map = "type inet_proto . inet_service : verdict;";
        sets.insert("service-ips".into(), st("map", vip_map, self.service_ips));
        sets.insert(
            "no-endpoint-services".into(),
            st("map", vip_map, self.no_ep_services),
        );
        sets.insert(
            "service-nodeports".into(),
            st("map", port_map, self.nodeports),
        );
        sets.insert(
            "no-endpoint-nodeports".into(),
            st("map", port_map, self.no_ep_nodeports),
        );
        self.rs
    }
}

fn base_free(rules: &[&str]) -> Chain {
    Chain {
        hook: None,
        rules: rules.iter().map(|r| r.to_string()).collect(),
    }
}

/// The affinity set of one endpoint chain; the timeout is in the name, so a changed timeout
/// is a new set rather than a conflicting redeclaration.
fn aff_name(endpoint_chain: &str, secs: u32) -> String {
    format!("aff-{secs}-{}", &endpoint_chain["ep-".len()..])
}

impl Ruleset {
    /// The table this ruleset fills.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Number of chains (base and regular).
    pub fn chain_count(&self) -> usize {
        self.chains.len()
    }

    /// The canonical text of the table: `table ip NAME { … }`. Two equal rulesets render the
    /// same text, so the applier compares it to skip a no-op apply.
    pub fn render(&self) -> String {
        self.render_only(|_| true, |_| true)
    }

    /// The table block with only the sets and chains the filters keep.
    fn render_only(&self, set: impl Fn(&str) -> bool, chain: impl Fn(&str) -> bool) -> String {
        let mut s = String::with_capacity(4096);
        let _ = writeln!(s, "table ip {} {{", self.table);
        for (name, def) in self.sets.iter().filter(|(n, _)| set(n)) {
            let _ = write!(s, "\t{} {name} {{ {}", def.kind, def.decl);
            if !def.elements.is_empty() {
                let _ = write!(s, " elements = {{ {} }}", def.elements.join(", "));
            }
            let _ = writeln!(s, " }}");
        }
        for (name, c) in self.chains.iter().filter(|(n, _)| chain(n)) {
            let _ = writeln!(s, "\tchain {name} {{");
            if let Some(hook) = c.hook {
                let _ = writeln!(s, "\t\t{hook}");
            }
            for r in &c.rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        s.push_str("}\n");
        s
    }

    /// The `nft -f` input that makes the table equal to this ruleset, in one transaction.
    ///
    /// With no `previous` (first apply, or after a failure) it creates the table, deletes it
    /// with whatever a crashed run left in it, and defines it anew. After a successful apply
    /// of `previous` it touches only what differs, as kube-proxy's nftables mode does: a chain
    /// whose rules changed is flushed and refilled, a static map whose elements changed is
    /// flushed and refilled, new chains and sets are added, and the chains and sets that are
    /// gone are deleted last (after whatever referred to them was flushed). The affinity sets
    /// of endpoints that stay are never touched, so their members survive every update.
    pub fn transaction(&self, previous: Option<&Ruleset>) -> String {
        let t = &self.table;
        let mut s = String::with_capacity(8192);
        let Some(prev) = previous.filter(|p| p.table == self.table) else {
            let _ = writeln!(s, "add table ip {t}");
            let _ = writeln!(s, "delete table ip {t}");
            s.push_str(&self.render());
            return s;
        };
        let chain_changed = |name: &str| prev.chains.get(name) != self.chains.get(name);
        let set_changed = |name: &str| match (prev.sets.get(name), self.sets.get(name)) {
            // A dynamic set's declaration carries no elements: unchanged if it exists.
            (Some(a), Some(b)) if b.dynamic => a.decl != b.decl,
            (a, b) => a != b,
        };
        for name in self.chains.keys() {
            if prev.chains.contains_key(name) && chain_changed(name) {
                let _ = writeln!(s, "flush chain ip {t} {name}");
            }
        }
        for (name, def) in &self.sets {
            if prev.sets.contains_key(name) && set_changed(name) {
                let _ = writeln!(s, "flush {} ip {t} {name}", def.kind);
            }
        }
        let body = self.render_only(|n| set_changed(n), |n| chain_changed(n));
        s.push_str(&body);
        // Flush every gone chain before deleting any: one may jump to another.
        let gone: Vec<&String> = prev
            .chains
            .keys()
            .filter(|n| !self.chains.contains_key(*n))
            .collect();
        for name in &gone {
            let _ = writeln!(s, "flush chain ip {t} {name}");
        }
        for name in &gone {
            let _ = writeln!(s, "delete chain ip {t} {name}");
        }
        for (name, def) in &prev.sets {
            if !self.sets.contains_key(name) {
                let _ = writeln!(s, "delete {} ip {t} {name}", def.kind);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
