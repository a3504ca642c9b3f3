//! TLS for the router: the certificate of each handshake chosen by SNI from the Ingresses' TLS
//! Secrets (`kubernetes.io/tls`: `tls.crt` and `tls.key`, PEM), as ingress controllers do.
//!
//! Entries are tried in the Ingresses' order (`namespace/name`), each TLS entry's hosts with
//! the routing rules' host matching (exact, or a `*.` wildcard of one label). A handshake
//! without SNI, or for a host no entry names, gets the first entry without hosts, if any;
//! otherwise the handshake fails (there is no built-in fallback certificate to hand out). A
//! Secret that is missing or does not parse is skipped with a log line naming it, never its
//! contents.

use super::routes::tls_host_matches;
use crate::network::view::Key;
use protocol::config::EdgeSecret;
use protocol::ingress::EdgeIngresses;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The certificates, as the current Ingresses name them.
#[derive(Debug, Default)]
struct Table {
    /// Hosts and their certificate, in order.
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    /// The first entry without hosts.
    fallback: Option<Arc<CertifiedKey>>,
}

/// Parses a TLS Secret into a certificate and key; the error says what is wrong, never what
/// the Secret holds.
pub fn certified_key(secret: &EdgeSecret) -> Result<CertifiedKey, String> {
    let crt = secret.data.get("tls.crt").ok_or("has no tls.crt")?;
    let key = secret.data.get("tls.key").ok_or("has no tls.key")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|_| "tls.crt is not PEM certificates".to_string())?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| "tls.key is not a PEM private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| "tls.key is not a supported key type".to_string())?;
    Ok(CertifiedKey::new(certs, signer))
}

/// The SNI resolver the router's TLS listener uses; [`SniResolver::update`] swaps its table.
#[derive(Debug, Default)]
pub struct SniResolver {
    table: RwLock<Arc<Table>>,
}

impl SniResolver {
    /// Rebuilds the table from the Ingresses and the Secrets the node holds. Returns how many
    /// certificates it serves.
    pub fn update(&self, set: &EdgeIngresses, secrets: &BTreeMap<Key, EdgeSecret>) -> usize {
        let mut table = Table::default();
        let mut parsed: BTreeMap<Key, Option<Arc<CertifiedKey>>> = BTreeMap::new();
        for ing in &set.ingresses {
            for tls in &ing.tls {
                let key = (ing.namespace.clone(), tls.secret.clone());
                let cert = parsed
                    .entry(key.clone())
                    .or_insert_with(|| match secrets.get(&key) {
                        None => {
                            tracing::warn!(ingress = %format!("{}/{}", ing.namespace, ing.name), secret = %tls.secret,
                                "TLS secret not on this node (yet): its hosts get no certificate");
                            None
                        }
                        Some(s) => match certified_key(s) {
                            Ok(c) => Some(Arc::new(c)),
                            Err(e) => {
                                tracing::warn!(ingress = %format!("{}/{}", ing.namespace, ing.name), secret = %tls.secret,
                                    problem = %e, "TLS secret skipped");
                                None
                            }
                        },
                    })
                    .clone();
                let Some(cert) = cert else { continue };
                if tls.hosts.is_empty() {
                    table.fallback.get_or_insert(cert);
                } else {
                    table.entries.push((tls.hosts.clone(), cert));
                }
            }
        }
        let n = table.entries.len() + usize::from(table.fallback.is_some());
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        n
    }

    /// The certificate for a server name (`None`: no SNI).
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some((_, c)) = table
                .entries
                .iter()
                .find(|(hosts, _)| hosts.iter().any(|h| tls_host_matches(h, &name)))
            {
                return Some(c.clone());
            }
        }
        table.fallback.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The rustls server configuration of the router: SNI from `resolver`, ALPN h2 and http/1.1.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ingress::{EdgeIngress, IngressTls};

    fn secret(name: &str, host: &str) -> EdgeSecret {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        EdgeSecret {
            namespace: "default".into(),
            name: name.into(),
            kind: "kubernetes.io/tls".into(),
            data: BTreeMap::from([
                ("tls.crt".into(), cert.pem().into_bytes()),
                ("tls.key".into(), key.serialize_pem().into_bytes()),
            ]),
        }
    }

    #[test]
    fn sni_picks_by_host_then_the_fallback() {
        let a = secret("a", "a.example.com");
        let w = secret("w", "*.example.com");
        let d = secret("d", "default.local");
        let mut broken = secret("broken", "x");
        broken.data.insert("tls.key".into(), b"garbage".to_vec());
        let set = EdgeIngresses {
            node: "n".into(),
            ingresses: vec![EdgeIngress {
                namespace: "default".into(),
                name: "i".into(),
                default_backend: None,
                rules: vec![],
                tls: vec![
                    IngressTls {
                        hosts: vec!["broken.example.com".into()],
                        secret: "broken".into(),
                    },
                    IngressTls {
                        hosts: vec!["a.example.com".into()],
                        secret: "a".into(),
                    },
                    IngressTls {
                        hosts: vec!["*.example.com".into()],
                        secret: "w".into(),
                    },
                    IngressTls {
                        hosts: vec![],
                        secret: "d".into(),
                    },
                    IngressTls {
                        hosts: vec!["missing.example.com".into()],
                        secret: "missing".into(),
                    },
                ],
            }],
        };
        let secrets: BTreeMap<Key, EdgeSecret> = [a.clone(), w.clone(), d.clone(), broken]
            .into_iter()
            .map(|s| (("default".to_string(), s.name.clone()), s))
            .collect();
        let r = SniResolver::default();
        assert_eq!(r.update(&set, &secrets), 3);
        let leaf = |name: Option<&str>| r.pick(name).map(|c| c.cert[0].clone());
        let der = |s: &EdgeSecret| certified_key(s).unwrap().cert[0].clone();
        assert_eq!(leaf(Some("A.example.com")), Some(der(&a)));
        assert_eq!(leaf(Some("b.example.com")), Some(der(&w)));
        // The broken entry is skipped: its host falls to the wildcard.
        assert_eq!(leaf(Some("broken.example.com")), Some(der(&w)));
        assert_eq!(leaf(Some("other.org")), Some(der(&d)));
        assert_eq!(leaf(None), Some(der(&d)));
    }
}
