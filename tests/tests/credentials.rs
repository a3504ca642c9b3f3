//! API credentials can be withdrawn and run out: `cloudcore credential revoke` stops a user's
//! certificates and tokens within a second without a restart, `--ttl` bounds a token, and the
//! `system:monitoring` group reads `/metrics` and nothing else.

use skerry_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn cloudcore(cloud: &Cloud, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(cloud.dir.path())
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cloudcore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubeconfig(cloud: &Cloud, dir: &Path, file: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    let server = cloud.api_url();
    let mut args = vec![
        "kubeconfig",
        "--server",
        server.as_str(),
        "--out",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cloudcore(cloud, &args)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_and_expired_credentials_stop_working_and_monitoring_reads_only_metrics(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let tmp = tempfile::tempdir()?;
    let cert = kubeconfig(&cloud, tmp.path(), "ops-cert", &["--user", "ops"])?;
    let token = kubeconfig(
        &cloud,
        tmp.path(),
        "ops-token",
        &["--user", "ops", "--token"],
    )?;
    for c in [&cert, &token] {
        let (ok, out) = kubectl_with(c, &["get", "pods"])?;
        assert!(ok, "{out}");
    }

    cloudcore(&cloud, &["credential", "revoke", "--user", "ops"])?;
    for c in [&cert, &token] {
        eventually(
            "the revoked credential refused",
            Duration::from_secs(10),
            || async {
                let (ok, out) = kubectl_with(c, &["get", "pods"])?;
                Ok((!ok && out.contains("Unauthorized")).then_some(()))
            },
        )
        .await?;
    }
    let revoked = cloud
        .metric("skerry_api_auth_failures_total{reason=\"revoked\"}")
        .await?
        .unwrap_or(0.0);
    assert!(revoked >= 2.0, "{revoked}");
    // The admin is not affected, and the user's next kubeconfig works.
    let (ok, out) = cloud.kubectl(&["get", "pods"])?;
    assert!(ok, "{out}");
    let fresh = kubeconfig(&cloud, tmp.path(), "ops-new", &["--user", "ops"])?;
    let (ok, out) = kubectl_with(&fresh, &["get", "pods"])?;
    assert!(ok, "a credential issued after the revocation works: {out}");

    // A token's lifetime is its --ttl.
    let short = kubeconfig(
        &cloud,
        tmp.path(),
        "short",
        &["--user", "temp", "--token", "--ttl", "3s"],
    )?;
    let (ok, out) = kubectl_with(&short, &["get", "pods"])?;
    assert!(ok, "{out}");
    eventually("the token expired", Duration::from_secs(20), || async {
        let (ok, out) = kubectl_with(&short, &["get", "pods"])?;
        Ok((!ok && out.contains("Unauthorized")).then_some(()))
    })
    .await?;

    // Prometheus' identity: /metrics yes, the API no.
    let prom = kubeconfig(
        &cloud,
        tmp.path(),
        "prom",
        &[
            "--user",
            "prometheus",
            "--group",
            "system:monitoring",
            "--token",
        ],
    )?;
    let (ok, out) = kubectl_with(&prom, &["get", "--raw", "/metrics"])?;
    assert!(ok && out.contains("skerry_"), "{out}");
    let (ok, out) = kubectl_with(&prom, &["get", "pods"])?;
    assert!(!ok && out.contains("Forbidden"), "{out}");
    Ok(())
}
