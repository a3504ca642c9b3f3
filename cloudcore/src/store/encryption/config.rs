//! Kubernetes' `EncryptionConfiguration` file (`--encryption-provider-config`): parsing with
//! errors that name the field, the permission check, and the edits the rotation commands make.
//!
//! Only what Skerry implements is accepted: the `secrets` resource, and the `aesgcm` and
//! `identity` providers. Anything else (`secretbox`, `aescbc`, `kms`, other resources, unknown
//! fields) is refused rather than ignored: an admin who wrote `kms:` expects envelope
//! encryption, and silently storing plaintext instead would be the worst possible answer.
//!
//! The file is YAML (JSON is YAML too). [`EncryptionConfig::render`] writes it back in a
//! canonical form; comments in a file edited by `cloudcore encryption new-key` are lost, and
//! the command says so.

use base64::Engine;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// The `apiVersion` the file must carry.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// The `kind` the file must carry.
pub const KIND: &str = "EncryptionConfiguration";
/// The one resource that can be encrypted.
pub const SECRETS: &str = "secrets";
const SUPPORTED_PROVIDERS: &str = "supported providers: aesgcm, identity";

/// Why a configuration is refused. Messages name fields and files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is missing, of the wrong type, unknown or has an unsupported value.
    #[error("{field}: {message}")]
    Invalid {
        /// Where, as a path (`resources[0].providers[1].secretbox`).
        field: String,
        /// What is wrong and what is supported.
        message: String,
    },
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file grants access to group or others, or belongs to another user.
    #[error("{} {problem}: it holds encryption keys; run `chown` to this user and `chmod 600 {}`", path.display(), path.display())]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// What is wrong (mode or owner).
        problem: String,
    },
    /// A problem with the contents of a file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: Box<ConfigError>,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One AES-GCM key: a name (stored in the clear in each value's prefix, so that a reader
/// knows which key to use) and 16 or 32 secret bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The key's name.
    pub name: String,
    secret: Vec<u8>,
}

impl KeySpec {
    /// A key from its name and raw bytes (16 or 32); names are checked by [`check_key_name`].
    pub fn new(name: &str, secret: Vec<u8>) -> Result<Self, ConfigError> {
        check_key_name(name).map_err(|m| invalid("name", m))?;
        if secret.len() != 16 && secret.len() != 32 {
            return Err(invalid("secret", key_length_message(secret.len())));
        }
        Ok(Self {
            name: name.to_string(),
            secret,
        })
    }

    /// The raw key bytes.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Never prints the key bytes, so a `{:?}` in a log line cannot leak them.
impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("name", &self.name)
            .field(
                "secret",
                &format_args!("<{} bytes redacted>", self.secret.len()),
            )
            .finish()
    }
}

/// One provider, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSpec {
    /// `aesgcm`, with its keys; the first key of the first provider encrypts new writes.
    AesGcm(Vec<KeySpec>),
    /// `identity`: values stored as plain JSON.
    Identity,
}

/// A parsed, valid configuration for the `secrets` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// Providers in order: the first writes, all of them read.
    pub providers: Vec<ProviderSpec>,
}

fn key_length_message(len: usize) -> String {
    format!(
        "the key is {len} bytes; aesgcm needs 32 bytes (AES-256) or 16 bytes (AES-128), \
         base64-encoded; generate one with `cloudcore encryption new-key` or \
         `head -c 32 /dev/urandom | base64`"
    )
}

/// Key names appear in every stored value's prefix (`k8s:enc:aesgcm:v1:<name>:`), so the
/// separator `:` is out; the rest is kept to characters that need no quoting in YAML.
pub fn check_key_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a key name must be 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "key name {name:?} may only hold letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Converts a YAML document to JSON. Mapping keys must be strings: the format has no others.
fn yaml_to_json(y: yaml_rust2::Yaml, field: &str) -> Result<Value, ConfigError> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        Yaml::Real(r) => Value::String(r),
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(h) => {
            let mut map = Map::new();
            for (k, v) in h {
                let Yaml::String(k) = k else {
                    return Err(invalid(field, "mapping keys must be strings"));
                };
                let sub = join(field, &k);
                map.insert(k, yaml_to_json(v, &sub)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(invalid(field, "YAML aliases are not supported"))
        }
    })
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

fn object<'a>(
    v: &'a Value,
    field: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| invalid(field, "must be a mapping"))?;
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            join(field, unknown),
            format!("unknown field; supported here: {}", allowed.join(", ")),
        ));
    }
    Ok(map)
}

fn array<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    name: &str,
) -> Result<&'a Vec<Value>, ConfigError> {
    let field = join(parent, name);
    match map.get(name) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            Err(invalid(field, "required: a non-empty list"))
        }
        Some(_) => Err(invalid(field, "must be a list")),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    name: &str,
) -> Result<&'a str, ConfigError> {
    let field = join(parent, name);
    match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(invalid(field, "required")),
        Some(_) => Err(invalid(field, "must be a non-empty string")),
    }
}

impl EncryptionConfig {
    /// Parses and checks the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut docs = yaml_rust2::YamlLoader::load_from_str(text)
            .map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if docs.len() != 1 {
            return Err(ConfigError::Yaml(format!(
                "expected one YAML document, found {}",
                docs.len()
            )));
        }
        let doc = yaml_to_json(docs.remove(0), "")?;
        let top = object(&doc, "", &["apiVersion", "kind", "resources"]).map_err(|e| match e {
            ConfigError::Invalid { field, message } if field.is_empty() => {
                invalid("(top level)", message)
            }
            other => other,
        })?;
        let api_version = string(top, "", "apiVersion")?;
        if api_version != API_VERSION {
            return Err(invalid(
                "apiVersion",
                format!("{api_version:?} is not supported; use {API_VERSION}"),
            ));
        }
        let kind = string(top, "", "kind")?;
        if kind != KIND {
            return Err(invalid(
                "kind",
                format!("{kind:?} is not supported; use {KIND}"),
            ));
        }
        let mut providers = None;
        let mut secrets_seen = false;
        for (i, entry) in array(top, "", "resources")?.iter().enumerate() {
            let at = format!("resources[{i}]");
            let entry = object(entry, &at, &["resources", "providers"])?;
            for (j, r) in array(entry, &at, "resources")?.iter().enumerate() {
                let field = format!("{at}.resources[{j}]");
                match r.as_str() {
                    Some(SECRETS) if secrets_seen => {
                        return Err(invalid(field, "secrets is configured twice"))
                    }
                    Some(SECRETS) => secrets_seen = true,
                    Some(other) => {
                        return Err(invalid(
                            field,
                            format!(
                                "{other:?} cannot be encrypted: Skerry encrypts only \"secrets\""
                            ),
                        ))
                    }
                    None => return Err(invalid(field, "must be a string")),
                }
            }
            providers = Some(parse_providers(entry, &at)?);
        }
        let providers = providers.expect("resources is a non-empty list, each naming secrets");
        let mut names = std::collections::BTreeSet::new();
        for p in &providers {
            if let ProviderSpec::AesGcm(keys) = p {
                for k in keys {
                    if !names.insert(k.name.clone()) {
                        return Err(invalid(
                            "keys",
                            format!("key name {:?} is used twice; names must be unique, they say which key decrypts a value", k.name),
                        ));
                    }
                }
            }
        }
        if providers
            .iter()
            .filter(|p| **p == ProviderSpec::Identity)
            .count()
            > 1
        {
            return Err(invalid("providers", "identity is listed twice"));
        }
        Ok(Self { providers })
    }

    /// Reads `path` after checking that only its owner (this process's user) can read it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_text(path).map(|(cfg, _)| cfg)
    }

    /// [`EncryptionConfig::load`], also returning the text it parsed (for the reload
    /// watcher's digest of what is in force).
    pub fn load_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = read_private(path)?;
        let cfg = Self::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok((cfg, text))
    }

    /// The name of the key new writes use, `None` when `identity` is first.
    pub fn write_key(&self) -> Option<&str> {
        match self.providers.first() {
            Some(ProviderSpec::AesGcm(keys)) => keys.first().map(|k| k.name.as_str()),
            _ => None,
        }
    }

    /// Every key name, in order.
    pub fn key_names(&self) -> Vec<&str> {
        self.providers
            .iter()
            .flat_map(|p| match p {
                ProviderSpec::AesGcm(keys) => keys.iter().map(|k| k.name.as_str()).collect(),
                ProviderSpec::Identity => Vec::new(),
            })
            .collect()
    }

    /// A fresh configuration: one aesgcm key, then `identity` so that values written before
    /// encryption was turned on stay readable until they are rewritten.
    pub fn initial(key: KeySpec) -> Self {
        Self {
            providers: vec![ProviderSpec::AesGcm(vec![key]), ProviderSpec::Identity],
        }
    }

    /// This configuration with `key` as the write key: first in the first aesgcm provider,
    /// which moves to the front (so a config that had `identity` first starts encrypting).
    /// Every other key stays, for reading what it encrypted.
    pub fn with_write_key(&self, key: KeySpec) -> Result<Self, ConfigError> {
        if self.key_names().contains(&key.name.as_str()) {
            return Err(invalid(
                "name",
                format!("a key named {:?} exists already", key.name),
            ));
        }
        let mut providers = self.providers.clone();
        match providers
            .iter()
            .position(|p| matches!(p, ProviderSpec::AesGcm(_)))
        {
            Some(i) => {
                let mut p = providers.remove(i);
                if let ProviderSpec::AesGcm(keys) = &mut p {
                    keys.insert(0, key);
                }
                providers.insert(0, p);
            }
            None => providers.insert(0, ProviderSpec::AesGcm(vec![key])),
        }
        Ok(Self { providers })
    }

    /// This configuration without the key `name`. Refuses to drop the write key (make another
    /// key the write key first) and the last key of a provider (remove the provider by hand).
    pub fn without_key(&self, name: &str) -> Result<Self, ConfigError> {
        if self.write_key() == Some(name) {
            return Err(invalid(
                "name",
                format!("{name:?} is the write key; run `cloudcore encryption new-key` and the rewrite first"),
            ));
        }
        let mut providers = self.providers.clone();
        let mut found = false;
        for p in &mut providers {
            if let ProviderSpec::AesGcm(keys) = p {
                if let Some(i) = keys.iter().position(|k| k.name == name) {
                    if keys.len() == 1 {
                        return Err(invalid(
                            "name",
                            format!("{name:?} is the only key of its aesgcm provider; remove the provider from the file by hand"),
                        ));
                    }
                    keys.remove(i);
                    found = true;
                }
            }
        }
        if !found {
            return Err(invalid("name", format!("there is no key named {name:?}")));
        }
        Ok(Self { providers })
    }

    /// The file text, in Kubernetes' layout.
    pub fn render(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = format!(
            "apiVersion: {API_VERSION}\nkind: {KIND}\nresources:\n  - resources:\n      - {SECRETS}\n    providers:\n"
        );
        for p in &self.providers {
            match p {
                ProviderSpec::AesGcm(keys) => {
                    out.push_str("      - aesgcm:\n          keys:\n");
                    for k in keys {
                        out.push_str(&format!(
                            "            - name: {}\n              secret: {}\n",
                            k.name,
                            b64.encode(&k.secret)
                        ));
                    }
                }
                ProviderSpec::Identity => out.push_str("      - identity: {}\n"),
            }
        }
        out
    }
}

fn parse_providers(entry: &Map<String, Value>, at: &str) -> Result<Vec<ProviderSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, p) in array(entry, at, "providers")?.iter().enumerate() {
        let field = format!("{at}.providers[{i}]");
        let map = p
            .as_object()
            .ok_or_else(|| invalid(&field, "must be a mapping with one provider"))?;
        if map.len() != 1 {
            return Err(invalid(
                &field,
                format!("must name exactly one provider; {SUPPORTED_PROVIDERS}"),
            ));
        }
        let (name, body) = map.iter().next().expect("one entry");
        let field = join(&field, name);
        out.push(match name.as_str() {
            "identity" => {
                if !(body.is_null() || body.as_object().is_some_and(Map::is_empty)) {
                    return Err(invalid(field, "takes no settings: write `identity: {}`"));
                }
                ProviderSpec::Identity
            }
            "aesgcm" => {
                let body = object(body, &field, &["keys"])?;
                let mut keys = Vec::new();
                for (j, k) in array(body, &field, "keys")?.iter().enumerate() {
                    let at = format!("{field}.keys[{j}]");
                    let k = object(k, &at, &["name", "secret"])?;
                    let name = string(k, &at, "name")?;
                    check_key_name(name).map_err(|m| invalid(join(&at, "name"), m))?;
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(string(k, &at, "secret")?.trim())
                        .map_err(|_| invalid(join(&at, "secret"), "is not valid base64"))?;
                    let key = KeySpec::new(name, secret).map_err(|e| match e {
                        ConfigError::Invalid { message, .. } => {
                            invalid(join(&at, "secret"), message)
                        }
                        other => other,
                    })?;
                    keys.push(key);
                }
                ProviderSpec::AesGcm(keys)
            }
            "secretbox" | "aescbc" | "kms" => {
                return Err(invalid(
                    field,
                    format!("the {name} provider is not supported; {SUPPORTED_PROVIDERS}"),
                ))
            }
            _ => {
                return Err(invalid(
                    field,
                    format!("unknown provider; {SUPPORTED_PROVIDERS}"),
                ))
            }
        });
    }
    Ok(out)
}

/// Reads a key file that must be this process's user's alone (mode without group or other
/// bits): a key readable by others protects nothing.
pub fn read_private(path: &Path) -> Result<String, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(ConfigError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "belongs to uid {}, not to this process's uid {me}",
                meta.uid()
            ),
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!("has mode {mode:o}, readable beyond its owner"),
        });
    }
    std::io::read_to_string(file).map_err(read)
}
