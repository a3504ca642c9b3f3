use super::*;
use base64::Engine;

const AAD: &[u8] = b"secrets\0default\0db";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn config_text(providers: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources:\n      - secrets\n    providers:\n{providers}"
    )
}

fn aesgcm(keys: &[(&str, &[u8])]) -> String {
    let mut s = "      - aesgcm:\n          keys:\n".to_string();
    for (name, secret) in keys {
        s.push_str(&format!(
            "            - name: {name}\n              secret: {}\n",
            b64(secret)
        ));
    }
    s
}

fn parse(providers: &str) -> Result<EncryptionConfig, ConfigError> {
    EncryptionConfig::parse(&config_text(providers))
}

fn encryption(providers: &str) -> Encryption {
    Encryption::new(&parse(providers).unwrap())
}

fn field_error(providers_or_text: Result<EncryptionConfig, ConfigError>) -> (String, String) {
    match providers_or_text {
        Err(ConfigError::Invalid { field, message }) => (field, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn round_trip_stores_ciphertext_under_the_kubernetes_prefix() {
    let e = encryption(&(aesgcm(&[("key1", &[7; 32])]) + "      - identity: {}\n"));
    let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
    let stored = e.to_storage("secrets", AAD, plain.clone()).unwrap();
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
    assert_eq!(
        stored.len(),
        "k8s:enc:aesgcm:v1:key1:".len() + 12 + plain.len() + 16
    );
    assert!(
        !stored.windows(8).any(|w| w == b"aHVudGVy"),
        "plaintext leaked"
    );
    let opened = e.from_storage("secrets", AAD, &stored).unwrap();
    assert_eq!(opened.data, plain);
    assert!(!opened.stale);
    // A fresh nonce each time: the same value never encrypts to the same bytes.
    assert_ne!(stored, e.to_storage("secrets", AAD, plain).unwrap());
}

#[test]
fn sixteen_byte_keys_are_aes_128() {
    let e = encryption(&aesgcm(&[("short", &[1; 16])]));
    let stored = e.to_storage("secrets", AAD, b"{}".to_vec()).unwrap();
    assert_eq!(e.from_storage("secrets", AAD, &stored).unwrap().data, b"{}");
}

#[test]
fn a_value_moved_to_another_key_or_tampered_with_fails() {
    let e = encryption(&aesgcm(&[("key1", &[7; 32])]));
    let stored = e.to_storage("secrets", AAD, b"{}".to_vec()).unwrap();
    let err = e
        .from_storage("secrets", b"secrets\0default\0other", &stored)
        .unwrap_err();
    assert!(
        matches!(err, TransformError::Decrypt(ref k) if k == "key1"),
        "{err}"
    );
    let mut flipped = stored.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        e.from_storage("secrets", AAD, &flipped),
        Err(TransformError::Decrypt(_))
    ));
    assert!(matches!(
        e.from_storage("secrets", AAD, &stored[..30]),
        Err(TransformError::Malformed(_))
    ));
}

#[test]
fn unknown_and_changed_keys_fail_naming_the_key() {
    let old = encryption(&aesgcm(&[("key1", &[7; 32])]));
    let stored = old.to_storage("secrets", AAD, b"{}".to_vec()).unwrap();
    let other = encryption(&aesgcm(&[("key2", &[8; 32])]));
    let err = other.from_storage("secrets", AAD, &stored).unwrap_err();
    assert!(matches!(err, TransformError::UnknownKey(ref k) if k == "key1"));
    assert!(err.to_string().contains("\"key1\""), "{err}");
    // Same name, other bytes: authentication fails.
    let changed = encryption(&aesgcm(&[("key1", &[9; 32])]));
    assert!(matches!(
        changed.from_storage("secrets", AAD, &stored),
        Err(TransformError::Decrypt(_))
    ));
    // Without any configuration the value is not mistaken for JSON.
    assert!(matches!(
        Encryption::none().from_storage("secrets", AAD, &stored),
        Err(TransformError::NotConfigured(ref p)) if p == "k8s:enc:aesgcm:v1:"
    ));
    assert!(matches!(
        old.from_storage("secrets", AAD, b"k8s:enc:secretbox:v1:k:xxxx"),
        Err(TransformError::Unsupported(_))
    ));
}

#[test]
fn plain_values_are_read_through_identity_and_are_stale_once_a_key_writes() {
    let plain = br#"{"data":{}}"#;
    let with_identity = encryption(&(aesgcm(&[("key1", &[7; 32])]) + "      - identity: {}\n"));
    let opened = with_identity.from_storage("secrets", AAD, plain).unwrap();
    assert_eq!(opened.data, plain);
    assert!(opened.stale, "a rewrite must encrypt it");
    let identity_first =
        encryption(&("      - identity: {}\n".to_string() + &aesgcm(&[("key1", &[7; 32])])));
    assert_eq!(
        identity_first
            .to_storage("secrets", AAD, plain.to_vec())
            .unwrap(),
        plain
    );
    assert!(
        !identity_first
            .from_storage("secrets", AAD, plain)
            .unwrap()
            .stale
    );
    let without_identity = encryption(&aesgcm(&[("key1", &[7; 32])]));
    assert!(matches!(
        without_identity.from_storage("secrets", AAD, plain),
        Err(TransformError::PlainNotAllowed)
    ));
    // Other resources are never transformed.
    assert_eq!(
        without_identity
            .to_storage("configmaps", AAD, plain.to_vec())
            .unwrap(),
        plain
    );
}

#[test]
fn rotation_reads_old_keys_and_marks_their_values_stale() {
    let e = encryption(&aesgcm(&[("key1", &[7; 32])]));
    let old = e.to_storage("secrets", AAD, b"{}".to_vec()).unwrap();
    let cfg = parse(&aesgcm(&[("key1", &[7; 32])])).unwrap();
    let rotated = cfg
        .with_write_key(KeySpec::new("key2", vec![8; 32]).unwrap())
        .unwrap();
    assert_eq!(rotated.key_names(), ["key2", "key1"]);
    e.reload(&rotated);
    assert_eq!(e.write_key().as_deref(), Some("key2"));
    let opened = e.from_storage("secrets", AAD, &old).unwrap();
    assert!(opened.stale);
    let new = e.to_storage("secrets", AAD, opened.data).unwrap();
    assert!(new.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    assert!(!e.from_storage("secrets", AAD, &new).unwrap().stale);
    // The rendered file parses back to the same configuration.
    assert_eq!(EncryptionConfig::parse(&rotated.render()).unwrap(), rotated);
    let trimmed = rotated.without_key("key1").unwrap();
    assert_eq!(trimmed.key_names(), ["key2"]);
    assert!(rotated.without_key("key2").is_err(), "the write key stays");
    assert!(trimmed.without_key("key2").is_err());
    assert!(rotated
        .with_write_key(KeySpec::new("key1", vec![1; 32]).unwrap())
        .is_err());
}

#[test]
fn new_key_on_an_identity_first_config_starts_encrypting() {
    let cfg =
        parse(&("      - identity: {}\n".to_string() + &aesgcm(&[("key1", &[7; 32])]))).unwrap();
    assert_eq!(cfg.write_key(), None);
    let next = cfg
        .with_write_key(KeySpec::new("key2", vec![8; 32]).unwrap())
        .unwrap();
    assert_eq!(next.write_key(), Some("key2"));
    assert_eq!(next.providers.last(), Some(&ProviderSpec::Identity));
}

#[test]
fn unsupported_providers_resources_and_fields_are_refused_by_name() {
    let (field, message) = field_error(parse(
        "      - secretbox:\n          keys:\n            - name: k\n              secret: AAAA\n",
    ));
    assert_eq!(field, "resources[0].providers[0].secretbox");
    assert!(message.contains("aesgcm, identity"), "{message}");
    for provider in ["kms", "aescbc"] {
        let (field, _) = field_error(parse(&format!("      - {provider}: {{}}\n")));
        assert_eq!(field, format!("resources[0].providers[0].{provider}"));
    }
    let (field, message) = field_error(parse("      - vault: {}\n"));
    assert_eq!(field, "resources[0].providers[0].vault");
    assert!(message.contains("unknown provider"), "{message}");
    let (field, message) = field_error(EncryptionConfig::parse(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers: [{identity: {}}]\n",
    ));
    assert_eq!(field, "resources[0].resources[1]");
    assert!(message.contains("only \"secrets\""), "{message}");
    let (field, _) = field_error(EncryptionConfig::parse(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers: [{identity: {}}]\n    cache: 3\n",
    ));
    assert_eq!(field, "resources[0].cache");
    let (field, _) = field_error(EncryptionConfig::parse(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nextra: 1\nresources: []\n",
    ));
    assert_eq!(field, "extra");
    let (field, _) = field_error(EncryptionConfig::parse(
        "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: EncryptionConfiguration\nresources: []\n",
    ));
    assert_eq!(field, "apiVersion");
    let (field, _) = field_error(EncryptionConfig::parse(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n",
    ));
    assert_eq!(field, "resources");
    let (field, _) = field_error(parse(
        "      - aesgcm:\n          keys:\n            - name: k\n              secret: AAAA\n              extra: x\n",
    ));
    assert_eq!(field, "resources[0].providers[0].aesgcm.keys[0].extra");
    assert!(matches!(
        EncryptionConfig::parse("a: [b"),
        Err(ConfigError::Yaml(_))
    ));
}

#[test]
fn bad_keys_are_refused_without_echoing_them() {
    let (field, message) = field_error(parse(&aesgcm(&[("k", &[1; 24])])));
    assert_eq!(field, "resources[0].providers[0].aesgcm.keys[0].secret");
    assert!(message.contains("24 bytes"), "{message}");
    assert!(!message.contains(&b64(&[1; 24])), "{message}");
    let (field, _) = field_error(parse(
        "      - aesgcm:\n          keys:\n            - name: k\n              secret: not*base64\n",
    ));
    assert_eq!(field, "resources[0].providers[0].aesgcm.keys[0].secret");
    let (field, _) = field_error(parse(&aesgcm(&[("a:b", &[1; 32])])));
    assert_eq!(field, "resources[0].providers[0].aesgcm.keys[0].name");
    let (field, message) = field_error(parse(
        &(aesgcm(&[("k", &[1; 32])]) + &aesgcm(&[("k", &[2; 32])])),
    ));
    assert_eq!(field, "keys");
    assert!(message.contains("twice"), "{message}");
    let (field, _) = field_error(parse("      - aesgcm:\n          keys: []\n"));
    assert_eq!(field, "resources[0].providers[0].aesgcm.keys");
    let spec = KeySpec::new("k", vec![0x5a; 32]).unwrap();
    assert!(!format!("{spec:?}").contains("90"), "{spec:?}");
}

#[test]
fn a_key_file_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.yaml");
    std::fs::write(&path, config_text("      - identity: {}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = EncryptionConfig::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::NotPrivate { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        EncryptionConfig::load(&path).unwrap().providers,
        vec![ProviderSpec::Identity]
    );
}

#[test]
fn the_watcher_applies_good_files_and_keeps_the_last_good_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.yaml");
    let write = |text: &str| {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let first = config_text(&aesgcm(&[("key1", &[7; 32])]));
    write(&first);
    let e = Arc::new(Encryption::new(&EncryptionConfig::load(&path).unwrap()));
    let mut w = reload::Watcher::new(path.clone(), e.clone(), reload::digest(first.as_bytes()));
    assert_eq!(w.poll(), reload::Poll::Unchanged);
    write(&config_text(&aesgcm(&[
        ("key2", &[8; 32]),
        ("key1", &[7; 32]),
    ])));
    assert_eq!(w.poll(), reload::Poll::Reloaded);
    assert_eq!(e.write_key().as_deref(), Some("key2"));
    write(&config_text("      - secretbox: {}\n"));
    assert!(matches!(w.poll(), reload::Poll::Refused(m) if m.contains("secretbox")));
    assert_eq!(w.poll(), reload::Poll::Unchanged, "reported once");
    assert_eq!(
        e.write_key().as_deref(),
        Some("key2"),
        "the last good one stays"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(w.poll(), reload::Poll::Refused(m) if m.contains("chmod 600")));
    write(&config_text(&aesgcm(&[
        ("key3", &[9; 32]),
        ("key2", &[8; 32]),
    ])));
    assert_eq!(w.poll(), reload::Poll::Reloaded);
    assert_eq!(e.write_key().as_deref(), Some("key3"));
}
