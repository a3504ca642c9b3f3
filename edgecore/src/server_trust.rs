//! How edgecore decides to trust a TLS server that is not vouched for by a root store: the
//! join handshake pins cloudcore's CA by hash (`--ca-hash`), and HTTPS probes accept any
//! certificate as kubelet's do. Both still check the handshake signatures against the
//! certificate presented; that part is written once here.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Which server certificates are accepted.
#[derive(Debug, Clone)]
pub enum TrustPolicy {
    /// The chain must contain a CA whose DER SHA-256 is this pin, and the server certificate
    /// must verify against that CA for the server name (joining a cloudcore).
    PinnedCa(Vec<u8>),
    /// Any certificate (kubelet's `InsecureSkipVerify` for HTTPS probes).
    AnyCertificate,
}

/// A rustls verifier applying a [`TrustPolicy`].
#[derive(Debug)]
pub struct PolicyVerifier {
    policy: TrustPolicy,
    provider: Arc<CryptoProvider>,
}

impl PolicyVerifier {
    /// A verifier for `policy`, checking signatures with `provider`'s algorithms.
    pub fn new(policy: TrustPolicy, provider: Arc<CryptoProvider>) -> Self {
        Self { policy, provider }
    }
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = match &self.policy {
            TrustPolicy::AnyCertificate => return Ok(ServerCertVerified::assertion()),
            TrustPolicy::PinnedCa(pin) => pin,
        };
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == pin.as_slice())
            .ok_or_else(|| {
                rustls::Error::General("no certificate in the server's chain matches --ca-hash: wrong hash, or not the cloudcore you meant to join".into())
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
