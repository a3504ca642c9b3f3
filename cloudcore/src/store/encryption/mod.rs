//! Encryption at rest of Secrets: the store's value transformer, in the manner of
//! kube-apiserver's `EncryptionConfiguration` (`--encryption-provider-config`).
//!
//! The store passes every value of the `secrets` resource through [`Encryption`] on its way to
//! and from sled, so nothing above the store (API handlers, controllers, the hub) knows about
//! keys, and no path to the disk can forget to encrypt. Secret values reach cloudcore's disk
//! only as the store's object values: the shard logs and member marks hold object keys, not
//! values; watch history, the informers' caches and the hub's per-node plans live in memory.
//!
//! ## Stored format
//! As Kubernetes writes it: `k8s:enc:aesgcm:v1:<key name>:` ++ 12-byte nonce ++ ciphertext ++
//! 16-byte tag, the ciphertext being the object's JSON. The key name in the clear says which
//! key decrypts; the store key of the object (`secrets\0<namespace>\0<name>`) is the AEAD's
//! associated data, so a value copied under another Secret's key fails to decrypt instead of
//! passing for that Secret. A value without the `k8s:enc:` prefix is plain JSON, written
//! before encryption was turned on (or with `identity` first); it is read while `identity` is
//! among the providers.
//!
//! ## Nonces and the per-key limit
//! Each write draws a fresh random 96-bit nonce. With random nonces AES-GCM stays within its
//! security bound (collision probability below 2^-32) for at most 2^32 encryptions under one
//! key (NIST SP 800-38D, section 8.3); a nonce repeated under the same key reveals the XOR of
//! two plaintexts and lets an attacker forge tags. Every write of a Secret (create, update,
//! rewrite) is one encryption, so rotate long before 2^32 writes: at a write a second that is
//! 136 years, but a controller that rewrites Secrets in a hot loop shortens it. Kubernetes
//! gives the same warning for its `aesgcm` provider.
//!
//! ## Rotation
//! [`Encryption::reload`] swaps the providers while the server runs (the file is polled by
//! [`reload::watch`]). A read reports whether its value was written with something other than
//! the current write key ([`Opened::stale`]); the API then writes such an object even when an
//! update changes nothing, which is what makes `cloudcore encryption rewrite` (or `kubectl get
//! secrets -A -o json | kubectl replace -f -`) re-encrypt every Secret under the new key.

pub mod config;
pub mod reload;

pub use config::{ConfigError, EncryptionConfig, KeySpec, ProviderSpec};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The resource whose values are encrypted.
pub const RESOURCE: &str = config::SECRETS;
/// What every encrypted value starts with, whatever its provider.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// The prefix of values of the `aesgcm` provider, followed by `<key name>:`.
pub const AESGCM_PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// The metric of every transformation, labelled as kube-apiserver's
/// `apiserver_storage_transformation_operations_total`.
pub const OPERATIONS_METRIC: &str = "skerry_storage_transformation_operations_total";
/// 1 for the key new writes use (`key="identity"` when they are stored plain), 0 for the
/// write keys before it: what a rotation waits on before rewriting.
pub const WRITE_KEY_METRIC: &str = "skerry_encryption_write_key_info";
const TAG_LEN: usize = 16;

fn write_key_label(active: &Active) -> String {
    active
        .write
        .as_ref()
        .map_or_else(|| "identity".to_string(), |k| k.name.clone())
}

/// Why a value cannot be written or read. Messages name keys and providers, never contents.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The value names a key the configuration does not have.
    #[error("it is encrypted with key {0:?}, which is not in the encryption provider config; put that key back (it may only be removed once every Secret has been rewritten)")]
    UnknownKey(String),
    /// Authentication failed: wrong key bytes under that name, corruption, or a value moved
    /// from another object.
    #[error("decryption with key {0:?} failed: the value is corrupt, was moved from another object, or the key's secret changed")]
    Decrypt(String),
    /// An encrypted value, but the server runs without a configuration.
    #[error(
        "it is encrypted (prefix {0}) but cloudcore runs without --encryption-provider-config"
    )]
    NotConfigured(String),
    /// A plain value, but `identity` is not among the providers.
    #[error("it is stored unencrypted and the identity provider is not configured; add `- identity: {{}}` as the last provider to read it")]
    PlainNotAllowed,
    /// Encrypted by a provider Skerry does not implement.
    #[error("it is encrypted by an unsupported provider (prefix {0})")]
    Unsupported(String),
    /// The encrypted value is cut short or has no key name.
    #[error("malformed encrypted value: {0}")]
    Malformed(&'static str),
    /// The random source or the cipher failed.
    #[error("encryption with key {0:?} failed")]
    Encrypt(String),
}

/// A value read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    /// The plain bytes (the object's JSON).
    pub data: Vec<u8>,
    /// Written with something other than the current write provider and key: a write of the
    /// object, even an unchanged one, would store it differently.
    pub stale: bool,
}

struct AesKey {
    name: String,
    /// `k8s:enc:aesgcm:v1:<name>:`
    prefix: Vec<u8>,
    key: LessSafeKey,
}

impl AesKey {
    fn new(spec: &KeySpec) -> Self {
        let alg = if spec.secret().len() == 16 {
            &AES_128_GCM
        } else {
            &AES_256_GCM
        };
        let unbound = UnboundKey::new(alg, spec.secret())
            .expect("key lengths are checked when the configuration is parsed");
        Self {
            name: spec.name.clone(),
            prefix: format!("{AESGCM_PREFIX}{}:", spec.name).into_bytes(),
            key: LessSafeKey::new(unbound),
        }
    }
}

/// The providers in force.
struct Active {
    /// `None`: without a configuration, or with `identity` first.
    write: Option<Arc<AesKey>>,
    keys: HashMap<String, Arc<AesKey>>,
    identity: bool,
    configured: bool,
}

impl Active {
    fn from_config(cfg: &EncryptionConfig) -> Self {
        let mut keys = HashMap::new();
        let mut write = None;
        let mut identity = false;
        for (i, p) in cfg.providers.iter().enumerate() {
            match p {
                ProviderSpec::AesGcm(specs) => {
                    for (j, spec) in specs.iter().enumerate() {
                        let key = Arc::new(AesKey::new(spec));
                        if i == 0 && j == 0 {
                            write = Some(key.clone());
                        }
                        keys.insert(spec.name.clone(), key);
                    }
                }
                ProviderSpec::Identity => identity = true,
            }
        }
        Self {
            write,
            keys,
            identity,
            configured: true,
        }
    }
}

/// The value transformer of the store. Cheap to share; [`Encryption::reload`] swaps the
/// providers for every holder at once.
pub struct Encryption {
    active: RwLock<Arc<Active>>,
    random: SystemRandom,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("write_key", &self.write_key())
            .finish()
    }
}

fn count(kind: &'static str, prefix: &'static str, status: &'static str) {
    metrics::counter!(OPERATIONS_METRIC, "transformation_type" => kind, "transformer_prefix" => prefix, "status" => status)
        .increment(1);
}

impl TransformError {
    fn status(&self) -> &'static str {
        match self {
            TransformError::UnknownKey(_) => "key_not_found",
            TransformError::Decrypt(_) => "decrypt_failed",
            TransformError::NotConfigured(_) => "not_configured",
            TransformError::PlainNotAllowed => "identity_not_configured",
            TransformError::Unsupported(_) => "unsupported_provider",
            TransformError::Malformed(_) => "malformed",
            TransformError::Encrypt(_) => "encrypt_failed",
        }
    }
}

/// The prefix up to the provider's version (`k8s:enc:aesgcm:v1:`), for messages and metrics.
fn provider_prefix(stored: &[u8]) -> String {
    let end = stored
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b':')
        .nth(3)
        .map(|(i, _)| i + 1)
        .unwrap_or(stored.len().min(32));
    String::from_utf8_lossy(&stored[..end]).into_owned()
}

impl Encryption {
    /// No configuration: every value is stored plain, and an encrypted one cannot be read.
    pub fn none() -> Self {
        Self {
            active: RwLock::new(Arc::new(Active {
                write: None,
                keys: HashMap::new(),
                identity: true,
                configured: false,
            })),
            random: SystemRandom::new(),
        }
    }

    /// The transformer of a parsed configuration.
    pub fn new(cfg: &EncryptionConfig) -> Self {
        let active = Active::from_config(cfg);
        metrics::gauge!(WRITE_KEY_METRIC, "key" => write_key_label(&active)).set(1.0);
        Self {
            active: RwLock::new(Arc::new(active)),
            random: SystemRandom::new(),
        }
    }

    /// Puts `cfg` in force for every read and write that starts after the call.
    pub fn reload(&self, cfg: &EncryptionConfig) {
        let next = Arc::new(Active::from_config(cfg));
        let (old, new) = (write_key_label(&self.active()), write_key_label(&next));
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = next;
        if old != new {
            metrics::gauge!(WRITE_KEY_METRIC, "key" => old).set(0.0);
        }
        metrics::gauge!(WRITE_KEY_METRIC, "key" => new).set(1.0);
    }

    fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The name of the key new writes are encrypted with; `None` when they are stored plain.
    pub fn write_key(&self) -> Option<String> {
        self.active().write.as_ref().map(|k| k.name.clone())
    }

    /// Whether values of `resource` go through the providers.
    pub fn applies_to(resource: &str) -> bool {
        resource == RESOURCE
    }

    /// The bytes to store for `plain`, a value of `resource` at store key `aad`.
    pub fn to_storage(
        &self,
        resource: &str,
        aad: &[u8],
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, TransformError> {
        if !Self::applies_to(resource) {
            return Ok(plain);
        }
        let active = self.active();
        let Some(key) = &active.write else {
            if active.configured {
                count("to_storage", "identity", "OK");
            }
            return Ok(plain);
        };
        let mut nonce = [0u8; NONCE_LEN];
        let sealed = self
            .random
            .fill(&mut nonce)
            .map_err(|_| TransformError::Encrypt(key.name.clone()))
            .and_then(|()| {
                let mut in_out = plain;
                key.key
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut in_out,
                    )
                    .map_err(|_| TransformError::Encrypt(key.name.clone()))?;
                let mut out = Vec::with_capacity(key.prefix.len() + NONCE_LEN + in_out.len());
                out.extend_from_slice(&key.prefix);
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&in_out);
                Ok(out)
            });
        match &sealed {
            Ok(_) => count("to_storage", AESGCM_PREFIX, "OK"),
            Err(e) => count("to_storage", AESGCM_PREFIX, e.status()),
        }
        sealed
    }

    /// The plain bytes of `stored`, a value of `resource` at store key `aad`.
    pub fn from_storage(
        &self,
        resource: &str,
        aad: &[u8],
        stored: &[u8],
    ) -> Result<Opened, TransformError> {
        if !Self::applies_to(resource) {
            return Ok(Opened {
                data: stored.to_vec(),
                stale: false,
            });
        }
        let active = self.active();
        if !stored.starts_with(ENCRYPTED_PREFIX) {
            if !active.configured {
                return Ok(Opened {
                    data: stored.to_vec(),
                    stale: false,
                });
            }
            let result = if active.identity {
                Ok(Opened {
                    data: stored.to_vec(),
                    stale: active.write.is_some(),
                })
            } else {
                Err(TransformError::PlainNotAllowed)
            };
            count(
                "from_storage",
                "identity",
                result.as_ref().map_or_else(|e| e.status(), |_| "OK"),
            );
            return result;
        }
        let result = Self::open_encrypted(&active, aad, stored);
        let label = if stored.starts_with(AESGCM_PREFIX.as_bytes()) {
            AESGCM_PREFIX
        } else {
            "unknown"
        };
        count(
            "from_storage",
            label,
            result.as_ref().map_or_else(|e| e.status(), |_| "OK"),
        );
        result
    }

    fn open_encrypted(
        active: &Active,
        aad: &[u8],
        stored: &[u8],
    ) -> Result<Opened, TransformError> {
        if !active.configured {
            return Err(TransformError::NotConfigured(provider_prefix(stored)));
        }
        let Some(rest) = stored.strip_prefix(AESGCM_PREFIX.as_bytes()) else {
            return Err(TransformError::Unsupported(provider_prefix(stored)));
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or(TransformError::Malformed("no key name"))?;
        let name = std::str::from_utf8(&rest[..colon])
            .map_err(|_| TransformError::Malformed("key name is not UTF-8"))?;
        let body = &rest[colon + 1..];
        let key = active
            .keys
            .get(name)
            .ok_or_else(|| TransformError::UnknownKey(name.to_string()))?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(TransformError::Malformed("shorter than a nonce and a tag"));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| TransformError::Malformed("bad nonce"))?;
        let mut in_out = sealed.to_vec();
        let len = key
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| TransformError::Decrypt(name.to_string()))?
            .len();
        in_out.truncate(len);
        let stale = !active.write.as_ref().is_some_and(|w| Arc::ptr_eq(w, key));
        Ok(Opened {
            data: in_out,
            stale,
        })
    }
}

#[cfg(test)]
mod tests;
