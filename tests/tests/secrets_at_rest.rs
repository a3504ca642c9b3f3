//! Secrets encrypted at rest (issue #10): with `--encryption-provider-config`, no file under
//! cloudcore's data directory holds a Secret's value or its base64, the Secret still reads
//! back, and a rotation done the Kubernetes way (new key, reload, rewrite, remove the old key)
//! leaves every Secret readable under the new key only. A key removed too early makes reads
//! fail with a Status naming the object and the key, and putting the key back heals it.

use base64::Engine;
use skerry_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PLAIN: &str = "skerry-e2e-plaintext-7f3a9c41";
const RELOADS_OK: &str = "skerry_encryption_config_automatic_reloads_total{status=\"success\"}";
const RELOADS_BAD: &str = "skerry_encryption_config_automatic_reloads_total{status=\"failure\"}";

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// `cloudcore encryption ARGS` with a throwaway private data dir.
fn encryption(data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("encryption")
        .args(args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "cloudcore encryption {args:?}: {text}"
    );
    Ok(text)
}

async fn wait_reloads(cloud: &Cloud, series: &str, n: f64) -> anyhow::Result<()> {
    eventually(
        &format!("{series} = {n}"),
        Duration::from_secs(20),
        || async { Ok((cloud.metric_series(series).await? == Some(n)).then_some(())) },
    )
    .await
}

fn secret_value(cloud: &Cloud) -> anyhow::Result<(bool, String)> {
    cloud.kubectl(&[
        "get",
        "secret",
        "db",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.password}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_ciphertext_on_disk_and_survive_a_key_rotation() -> anyhow::Result<()> {
    let keys = private_temp_dir()?;
    let config = keys.path().join("encryption.yaml");
    let config_arg = config.to_str().unwrap();
    let out = encryption(keys.path(), &["new-key", "--config", config_arg])?;
    assert!(out.contains("key1"), "{out}");
    assert_eq!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777,
        0o600
    );

    // A key file others can read is refused at start, naming the file and the fix.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    let refused = Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(keys.path().join("refused"))
        .args(["serve", "--encryption-provider-config", config_arg])
        .output()?;
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "served with a 0644 key file");
    assert!(text.contains("chmod 600"), "{text}");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;

    let mut cloud = Cloud::start(CloudOptions {
        extra_args: vec!["--encryption-provider-config".into(), config_arg.into()],
        ..CloudOptions::default()
    })
    .await?;
    let (ok, out) = cloud.kubectl(&[
        "create",
        "secret",
        "generic",
        "db",
        "-n",
        "default",
        &format!("--from-literal=password={PLAIN}"),
    ])?;
    assert!(ok, "{out}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(PLAIN);
    let (ok, read) = secret_value(&cloud)?;
    assert!(ok, "{read}");
    assert_eq!(read, b64);

    // Nothing on disk holds the value, in the clear or in base64: not the store, not the
    // log, not the PKI. The store holds the Kubernetes prefix of the key instead.
    cloud.kill9();
    for needle in [PLAIN.as_bytes(), b64.as_bytes()] {
        let found = files_containing(cloud.dir.path(), needle);
        assert!(
            found.is_empty(),
            "{:?} found in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(
        !files_containing(&cloud.dir.path().join("store"), b"k8s:enc:aesgcm:v1:key1:").is_empty()
    );
    cloud.launch().await?;
    let (ok, read) = secret_value(&cloud)?;
    assert!(ok && read == b64, "after restart: {read}");

    // Rotation, step 1: a new write key; the server reloads it (positive signal: the
    // reload counter and the write key gauge).
    let out = encryption(keys.path(), &["new-key", "--config", config_arg])?;
    assert!(out.contains("key2"), "{out}");
    wait_reloads(&cloud, RELOADS_OK, 1.0).await?;
    assert_eq!(
        cloud
            .metric_series("skerry_encryption_write_key_info{key=\"key2\"}")
            .await?,
        Some(1.0)
    );
    let with_both_keys = std::fs::read_to_string(&config)?;

    // Removing key1 before the rewrite: the Secret, still under key1, cannot be read; the
    // error names the object and the key, and the server keeps serving.
    encryption(
        keys.path(),
        &["remove-key", "--config", config_arg, "--name", "key1"],
    )?;
    wait_reloads(&cloud, RELOADS_OK, 2.0).await?;
    let (ok, out) = secret_value(&cloud)?;
    assert!(!ok, "read a Secret whose key is gone: {out}");
    assert!(
        out.contains("secrets default/db") && out.contains("key1"),
        "{out}"
    );
    let (ok, out) = cloud.kubectl(&["get", "secrets", "-A"])?;
    assert!(!ok && out.contains("secrets default/db"), "{out}");
    let (status, _) = cloud.api("GET", "/api/v1/namespaces", None).await?;
    assert_eq!(status, 200);
    // Putting the key back heals it.
    cloudcore_write(&config, &with_both_keys)?;
    wait_reloads(&cloud, RELOADS_OK, 3.0).await?;
    let (ok, read) = secret_value(&cloud)?;
    assert!(ok && read == b64, "after the key came back: {read}");

    // A bad new file is refused and counted; the last good one stays in force.
    cloudcore_write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers: [{secretbox: {keys: []}}]\n",
    )?;
    wait_reloads(&cloud, RELOADS_BAD, 1.0).await?;
    assert!(
        cloud.log_tail().contains("secretbox"),
        "{}",
        cloud.log_tail()
    );
    let (ok, read) = secret_value(&cloud)?;
    assert!(ok && read == b64, "under the last good config: {read}");
    // Back to the file in force: the same content as the last good one, so nothing to reload.
    cloudcore_write(&config, &with_both_keys)?;

    // Step 2: rewrite every Secret through the API (after checking that the server writes
    // with the file's write key); a second run finds nothing to do.
    let kubeconfig = cloud.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let out = encryption(
        keys.path(),
        &[
            "rewrite",
            "--kubeconfig",
            kubeconfig,
            "--config",
            config_arg,
        ],
    )?;
    assert!(out.contains("rewrote 1 of 1 Secrets"), "{out}");
    let out = encryption(keys.path(), &["rewrite", "--kubeconfig", kubeconfig])?;
    assert!(
        out.contains("rewrote 0 of 1 Secrets; 1 already under"),
        "{out}"
    );

    // Step 3: the old key goes; the Secret reads, so it is stored under key2.
    encryption(
        keys.path(),
        &["remove-key", "--config", config_arg, "--name", "key1"],
    )?;
    wait_reloads(&cloud, RELOADS_OK, 4.0).await?;
    let (ok, read) = secret_value(&cloud)?;
    assert!(ok && read == b64, "after key1 was removed: {read}");
    assert!(!std::fs::read_to_string(&config)?.contains("key1"));

    cloud.kill9();
    assert!(
        !files_containing(&cloud.dir.path().join("store"), b"k8s:enc:aesgcm:v1:key2:").is_empty()
    );
    for needle in [PLAIN.as_bytes(), b64.as_bytes()] {
        assert!(files_containing(cloud.dir.path(), needle).is_empty());
    }
    Ok(())
}

/// Writes a key file as an admin would: private to its owner.
fn cloudcore_write(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
