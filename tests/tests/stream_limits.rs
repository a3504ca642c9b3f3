//! Per-user limits of the streams to nodes (issue #13), with real kubectl: one user may hold
//! half of a node's log streams and no more (429, saying whose and which limit), while another
//! user (the admin) still reads the same pod's log; a slot given back is taken again.

use anyhow::{ensure, Context, Result};
use skerry_tests::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Half of `MAX_LOG_STREAMS_PER_NODE` (16): one user's share of a node's log streams.
const SHARE: usize = 8;

fn follow(kubeconfig: &std::path::Path) -> Result<Child> {
    Ok(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["logs", "-f", "talker"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

async fn open_log_streams(cloud: &Cloud) -> Result<f64> {
    Ok(cloud
        .metric_series("skerry_hub_log_streams")
        .await?
        .unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_holds_half_a_nodes_log_streams_and_the_admin_still_reads() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let _edge = Edge::join_and_start(&cloud, "limits", &[]).await?;
    cloud.wait_node_ready("limits", LONG).await?;
    cloud
        .create_pod(process_pod(
            "talker",
            "limits",
            &["sh", "-c", "while true; do echo tick; sleep 1; done"],
        ))
        .await?;
    cloud.wait_running("talker", LONG).await?;
    let script = cloud.dir.path().join("script-kubeconfig");
    // The script is a user of its own (in system:masters, like every kubeconfig here).
    let out = Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(cloud.dir.path())
        .args([
            "kubeconfig",
            "--user",
            "script",
            "--server",
            &cloud.api_url(),
        ])
        .arg("--out")
        .arg(&script)
        .output()?;
    ensure!(out.status.success(), "kubeconfig for script: {out:?}");

    let mut followers = Vec::new();
    for _ in 0..SHARE {
        followers.push(follow(&script)?);
    }
    let kill_all = |followers: &mut Vec<Child>| {
        for f in followers.iter_mut() {
            let _ = f.kill();
            let _ = f.wait();
        }
    };
    let held = eventually("the script's followers open", LONG, || async {
        Ok((open_log_streams(&cloud).await? == SHARE as f64).then_some(()))
    })
    .await;
    if let Err(e) = held {
        kill_all(&mut followers);
        return Err(e);
    }

    let result = async {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&script)
            .args(["logs", "talker", "--tail", "1"])
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "a ninth stream for the script was served"
        );
        ensure!(
            err.contains("user \"script\" already holds 8 of node \"limits\"'s 16 log streams"),
            "the refusal names the user, the node and the limit: {err}"
        );
        // The admin is not locked out of the node the script floods.
        let (ok, log) = cloud.kubectl(&["logs", "talker", "--tail", "1"])?;
        ensure!(ok && log.contains("tick"), "the admin reads the log: {log}");
        // One slot back: the script is served again.
        let mut first = followers.remove(0);
        let _ = first.kill();
        first.wait()?;
        eventually("a slot given back", LONG, || async {
            Ok((open_log_streams(&cloud).await? == (SHARE - 1) as f64).then_some(()))
        })
        .await?;
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&script)
            .args(["logs", "talker", "--tail", "1"])
            .output()?;
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("tick"),
            "the script is served once it holds fewer: {out:?}"
        );
        Ok(())
    }
    .await;
    kill_all(&mut followers);
    result?;
    eventually("every slot given back", LONG, || async {
        Ok((open_log_streams(&cloud).await? == 0.0).then_some(()))
    })
    .await
    .context("log streams left open after their clients went")?;
    Ok(())
}
