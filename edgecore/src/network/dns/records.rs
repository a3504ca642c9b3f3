//! The cluster zone built from a [`ServiceView`], following the Kubernetes DNS-based service
//! discovery specification (kubernetes/dns `docs/specification.md`, schema 1.1.0). Pure: no
//! I/O, so every rule is tested on plain values.
//!
//! | name | type | answer |
//! | --- | --- | --- |
//! | `<svc>.<ns>.svc.<domain>` | A/AAAA | the cluster IPs; for a headless Service the addresses of its ready endpoints (all of them with `publishNotReadyAddresses`) |
//! | `<host>.<svc>.<ns>.svc.<domain>` | A/AAAA | a headless Service's endpoint: `<host>` is its `hostname`, or its address with `.`/`:` turned into `-` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` | SRV | each named port: the Service's name for a cluster IP, each endpoint's own name for a headless Service |
//! | `<svc>.<ns>.svc.<domain>` | CNAME | an `ExternalName` Service's name (followed upstream by `chase`) |
//! | `a-b-c-d.<ns>.pod.<domain>` | A/AAAA | the address of a pod the node knows from an endpoint |
//! | `dns-version.<domain>` | TXT | `1.1.0` |
//! | `<domain>` | SOA, NS | the zone's authority (`ns.dns.<domain>`, which has the cluster DNS address) |
//!
//! A name the zone does not hold is NXDOMAIN; a name it holds (or one above a name it holds,
//! such as `svc.<domain>`) asked for a type it does not have is NODATA (NOERROR, no answer, the
//! SOA in the authority section): hickory's in-memory zone makes that distinction.
//!
//! Every record has a TTL of [`TTL`] seconds, and so has a negative answer (the SOA's minimum):
//! the view changes as endpoints come and go, and a pod's resolver must not keep a gone
//! endpoint for longer than a probe period or two. CoreDNS's `kubernetes` plugin uses the same 5 s.

use super::super::view::ServiceView;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, RecordSet, RecordType, RrKey};
use protocol::service::{AddressType, L4Protocol, ServiceKind};
use std::collections::BTreeMap;
use std::net::IpAddr;
use tracing::warn;

/// TTL of every answer, positive and negative (see the module docs).
pub const TTL: u32 = 5;

/// The version of the Kubernetes DNS schema served at `dns-version.<domain>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The records of the cluster zone, keyed as hickory's in-memory zone takes them.
#[derive(Debug, Clone, Default)]
pub struct ClusterZone {
    /// The zone's apex (the cluster domain, fully qualified).
    pub origin: Name,
    /// Every record set of the zone.
    pub records: BTreeMap<RrKey, RecordSet>,
}

impl ClusterZone {
    /// Number of records (not record sets), for the records gauge.
    pub fn record_count(&self) -> usize {
        self.records.values().map(RecordSet::records_count).sum()
    }

    fn add(&mut self, name: &Name, rdata: RData) {
        let rtype = rdata.record_type();
        self.records
            .entry(RrKey::new(LowerName::new(name), rtype))
            .or_insert_with(|| RecordSet::with_ttl(name.clone(), rtype, TTL))
            .add_rdata(rdata);
    }

    fn add_address(&mut self, name: &Name, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }
}

/// A fully qualified name from dot-separated labels; `None` (with a log line) when a label
/// cannot be a DNS label, so one odd object never stops the rest of the zone.
fn fqdn(labels: &[&str]) -> Option<Name> {
    let text = format!("{}.", labels.join("."));
    match Name::from_ascii(&text) {
        Ok(name) => Some(name),
        Err(e) => {
            warn!(name = %text, error = %e, "skipping a DNS name that is not valid");
            None
        }
    }
}

/// An address as one DNS label: `10-1-2-3`, or for IPv6 the eight groups in full joined by
/// `-` (`fd00-0-0-0-0-0-0-1`), so that no label starts or ends with `-`.
pub fn address_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

fn proto_label(p: L4Protocol) -> String {
    format!("_{}", p.as_str().to_ascii_lowercase())
}

/// Builds the cluster zone from `view`; `None` while the node has no network settings (the
/// cluster domain is not known yet). `serial` goes into the SOA.
pub fn build(view: &ServiceView, serial: u32) -> Option<ClusterZone> {
    let network = view.network.as_ref()?;
    let domain = network.cluster_domain.trim_end_matches('.');
    let origin = fqdn(&[domain])?;
    let mut zone = ClusterZone {
        origin: origin.clone(),
        records: BTreeMap::new(),
    };
    let ns_name = fqdn(&["ns", "dns", domain])?;
    let hostmaster = fqdn(&["hostmaster", domain])?;
    // refresh/retry/expire as CoreDNS sets them; the minimum is the negative TTL.
    zone.add(
        &origin,
        RData::SOA(SOA::new(
            ns_name.clone(),
            hostmaster,
            serial,
            7200,
            1800,
            86400,
            TTL,
        )),
    );
    zone.add(&origin, RData::NS(NS(ns_name.clone())));
    zone.add_address(&ns_name, network.cluster_dns);
    if let Some(version) = fqdn(&["dns-version", domain]) {
        zone.add(
            &version,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        );
    }

    for service in view.services.values() {
        let (ns, svc) = (service.namespace.as_str(), service.name.as_str());
        let Some(base) = fqdn(&[svc, ns, "svc", domain]) else {
            continue;
        };
        match &service.kind {
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    zone.add_address(&base, *ip);
                }
                for port in service.ports.iter().filter(|p| !p.name.is_empty()) {
                    let proto = proto_label(port.protocol);
                    let port_label = format!("_{}", port.name);
                    if let Some(srv) = fqdn(&[&port_label, &proto, svc, ns, "svc", domain]) {
                        zone.add(&srv, RData::SRV(SRV::new(0, 100, port.port, base.clone())));
                    }
                }
            }
            ServiceKind::ExternalName(target) => {
                let target = target.trim_end_matches('.');
                if let Some(target) = fqdn(&[target]) {
                    zone.add(&base, RData::CNAME(CNAME(target)));
                }
            }
            ServiceKind::Headless => {
                for slice in view.slices_of(ns, svc) {
                    if slice.address_type == AddressType::Fqdn {
                        continue;
                    }
                    for endpoint in &slice.endpoints {
                        let published =
                            service.publish_not_ready || view.endpoint_ready(ns, endpoint);
                        if !published {
                            continue;
                        }
                        for ip in &endpoint.addresses {
                            zone.add_address(&base, *ip);
                            let host = match &endpoint.hostname {
                                Some(h) if !h.is_empty() => h.clone(),
                                _ => address_label(*ip),
                            };
                            let Some(host_name) = fqdn(&[&host, svc, ns, "svc", domain]) else {
                                continue;
                            };
                            zone.add_address(&host_name, *ip);
                            for port in slice.ports.iter().filter(|p| !p.name.is_empty()) {
                                let proto = proto_label(port.protocol);
                                let port_label = format!("_{}", port.name);
                                if let Some(srv) =
                                    fqdn(&[&port_label, &proto, svc, ns, "svc", domain])
                                {
                                    zone.add(
                                        &srv,
                                        RData::SRV(SRV::new(0, 100, port.port, host_name.clone())),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // Pod names (`a-b-c-d.<ns>.pod.<domain>`): the spec makes them optional; the node knows a
    // pod's address only from an endpoint, so those pods have one (ready or not, as CoreDNS's
    // `pods verified` mode answers for any pod that exists).
    for slice in view.slices.values() {
        if slice.address_type == AddressType::Fqdn {
            continue;
        }
        for endpoint in slice.endpoints.iter().filter(|e| e.pod.is_some()) {
            for ip in &endpoint.addresses {
                if let Some(name) = fqdn(&[&address_label(*ip), &slice.namespace, "pod", domain]) {
                    zone.add_address(&name, *ip);
                }
            }
        }
    }
    Some(zone)
}

/// The record types at `name` in `zone`, for tests and diagnostics.
pub fn types_at(zone: &ClusterZone, name: &str) -> Vec<RecordType> {
    let Ok(name) = Name::from_ascii(name) else {
        return Vec::new();
    };
    let name = LowerName::new(&name);
    zone.records
        .keys()
        .filter(|k| k.name == name)
        .map(|k| k.record_type)
        .collect()
}
