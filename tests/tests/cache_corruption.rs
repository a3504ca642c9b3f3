//! Faults of the node itself (issue #11): an edge whose cache is damaged while the cloud is
//! unreachable keeps its pods running as they are (adopted: the same processes, not killed),
//! says so (an error line naming the corruption, `skerry_edge_desired_state_known 0`), and once
//! the cloud is back rebuilds its desired state from the cloud's snapshot: a pod deleted in the
//! meantime is removed, the others keep running once, with the restart counts they had.
//!
//! Each form of damage found by corrupting a cache on purpose has a test: the `db` file
//! truncated, emptied, overwritten with random bytes, and overwritten in the middle, the last
//! two where the pods' records are.

use skerry_tests::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const PODS: [&str; 3] = ["keep-a", "keep-b", "gone"];

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate,
    Empty,
    Randomise,
    OverwriteMiddle,
}

/// Bytes that look random (no `rand` in the harness; a xorshift seeded from the clock).
fn noise(n: usize) -> Vec<u8> {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn damage(cache: &Path, how: Damage) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let path = cache.join("db");
    let bytes = std::fs::read(&path)?;
    let len = bytes.len() as u64;
    // Where the desired state is: the first record naming a pod (sled does not compress). The
    // rest of the file is mostly the status outbox and the health probe's writes; damage that
    // spares the pods' records loses nothing edgecore relies on, and is rightly not reported.
    let at = PODS
        .iter()
        .filter_map(|name| bytes.windows(name.len()).position(|w| w == name.as_bytes()))
        .min()
        .ok_or_else(|| anyhow::anyhow!("no pod record in the cache file"))? as u64;
    anyhow::ensure!(at > 64 && at < len, "pod records at {at} of {len}");
    let mut f = std::fs::OpenOptions::new().write(true).open(&path)?;
    match how {
        Damage::Truncate => f.set_len(at)?,
        Damage::Empty => f.set_len(0)?,
        Damage::Randomise => f.write_all(&noise(len as usize))?,
        Damage::OverwriteMiddle => {
            f.seek(SeekFrom::Start(at - 64))?;
            f.write_all(&noise(512.min(len - at + 64) as usize))?;
        }
    }
    f.sync_all()?;
    Ok(())
}

/// The pod each container process belongs to (the process runtime sets `HOSTNAME` to the pod
/// name), for the `sleep` processes of `edge`.
fn pids_by_pod(edge: &Edge) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for pid in edge.container_pids("sleep") {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if let Some(name) = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"HOSTNAME="))
        {
            out.entry(String::from_utf8_lossy(name).into_owned())
                .or_default()
                .push(pid);
        }
    }
    out
}

fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/default/pods/{name}")
}

async fn a_damaged_cache_keeps_the_pods_until_the_cloud_rebuilds_it(
    how: Damage,
    node: &str,
) -> anyhow::Result<()> {
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start(&cloud, node, &[]).await?;
    for name in PODS {
        cloud
            .create_pod(process_pod(name, node, &["sleep", "3600"]))
            .await?;
    }
    for name in PODS {
        cloud.wait_running(name, DEADLINE).await?;
    }
    // One pod restarts once before the fault: its count must survive the cache.
    let first = pids_by_pod(&edge);
    let killed = first.get("keep-a").and_then(|p| p.first().copied());
    let killed = killed.ok_or_else(|| anyhow::anyhow!("no process of keep-a: {first:?}"))?;
    let _ = std::process::Command::new("kill")
        .args(["-9", &killed.to_string()])
        .status();
    cloud
        .wait_for(
            "keep-a restarted once",
            &pod_path("keep-a"),
            DEADLINE,
            |p| pod_running(p) && restarts(p) == 1,
        )
        .await?;
    let before = eventually("one process per pod", DEADLINE, || async {
        let pids = pids_by_pod(&edge);
        Ok((pids.len() == PODS.len() && pids.values().all(|p| p.len() == 1)).then_some(pids))
    })
    .await?;

    // Every process of the pods, shims included.
    let all_before: std::collections::BTreeSet<u32> = edge.pod_pids().into_iter().collect();
    anyhow::ensure!(
        all_before.len().is_multiple_of(PODS.len()),
        "{all_before:?}"
    );

    // The cloud is cut, edgecore is killed, and its cache is damaged.
    cloud.kill9();
    edge.kill9();
    damage(&edge.dir.path().join("cache"), how)?;
    edge.start()?;

    // The edge says what happened, and keeps every pod running as it was.
    eventually("the held pods counted", DEADLINE, || async {
        let text = edge.metrics_text().await?;
        Ok((sample(&text, "skerry_edge_pods_held") == Some(PODS.len() as f64)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert_eq!(
        edge.metric_series("skerry_edge_desired_state_known")
            .await?,
        Some(0.0)
    );
    let log = std::fs::read_to_string(edge.dir.path().join("edgecore.log"))?;
    if let Some(line) = log.lines().find(|l| l.contains("EDGE CACHE CORRUPT")) {
        eprintln!("{how:?}: {line}");
    }
    assert!(
        log.contains("EDGE CACHE CORRUPT"),
        "{how:?}: no error naming the corruption{}",
        edge.log_tail()
    );
    assert!(
        !log.contains("deleted while edgecore was down"),
        "{how:?}: a pod was taken for deleted{}",
        edge.log_tail()
    );
    assert_eq!(
        pids_by_pod(&edge),
        before,
        "{how:?}: the pods were not adopted as they ran"
    );
    let aside = std::fs::read_dir(edge.dir.path())?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cache.corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "{how:?}: the damaged cache is kept for diagnosis");

    // A second crash before the cloud answered: the state is still unknown, nothing removed.
    edge.kill9();
    // Meanwhile a pod is deleted for good in the cloud.
    cloud.launch().await?;
    let (code, body) = cloud
        .api(
            "DELETE",
            &format!("{}?gracePeriodSeconds=0", pod_path("gone")),
            None,
        )
        .await?;
    anyhow::ensure!(code == 200, "force delete answered {code}: {body}");
    edge.start()?;

    // The snapshot rebuilds the cache: the deleted pod goes, the others run on, once each.
    eventually("the desired state known again", DEADLINE, || async {
        Ok((edge
            .metric_series("skerry_edge_desired_state_known")
            .await?
            == Some(1.0))
        .then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    let after = eventually("only the deleted pod removed", DEADLINE, || async {
        let pids = pids_by_pod(&edge);
        Ok((!pids.contains_key("gone")).then_some(pids))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    for name in ["keep-a", "keep-b"] {
        assert_eq!(
            after.get(name),
            before.get(name),
            "{how:?}: {name} was not kept as it ran"
        );
        let pod = cloud
            .wait_for(
                &format!("{name} reported"),
                &pod_path(name),
                DEADLINE,
                pod_running,
            )
            .await?;
        let expected = u64::from(name == "keep-a");
        assert_eq!(
            restarts(&pod),
            expected,
            "{how:?}: {name}'s restart count: {pod}"
        );
    }
    assert_eq!(after.len(), 2, "{how:?}: {after:?}");
    // The deleted pod's shim went with it; nothing else was started or stopped.
    let per_pod = all_before.len() / PODS.len();
    let all_after = eventually("the deleted pod's shim gone", DEADLINE, || async {
        let now: std::collections::BTreeSet<u32> = edge.pod_pids().into_iter().collect();
        Ok((now.len() == all_before.len() - per_pod).then_some(now))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    assert!(
        all_after.is_subset(&all_before),
        "{how:?}: new processes {:?}",
        all_after.difference(&all_before).collect::<Vec<_>>()
    );
    assert_eq!(
        edge.metric_series("skerry_edge_pods_held").await?,
        Some(0.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_cache() -> anyhow::Result<()> {
    a_damaged_cache_keeps_the_pods_until_the_cloud_rebuilds_it(Damage::Truncate, "cc-trunc").await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_cache() -> anyhow::Result<()> {
    a_damaged_cache_keeps_the_pods_until_the_cloud_rebuilds_it(Damage::Empty, "cc-empty").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_randomised_cache() -> anyhow::Result<()> {
    a_damaged_cache_keeps_the_pods_until_the_cloud_rebuilds_it(Damage::Randomise, "cc-random").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_overwritten_in_the_middle() -> anyhow::Result<()> {
    a_damaged_cache_keeps_the_pods_until_the_cloud_rebuilds_it(Damage::OverwriteMiddle, "cc-mid")
        .await
}

/// The running containers of `ctrd`, by id.
async fn running_containers(
    ctrd: &skerry_tests::containerd::Containerd,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use k8s_cri::v1::{ContainerState, ListContainersRequest};
    let mut cri = ctrd.cri().await?;
    Ok(cri
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .map(|c| c.id)
        .collect())
}

fn container_of(pod: &serde_json::Value) -> String {
    container_id(pod)
        .trim_start_matches("containerd://")
        .to_string()
}

/// The same with containerd: the containers keep running (same ids), `restartCount` comes back
/// from containerd's `metadata.attempt`, and the pod deleted meantime is removed.
#[tokio::test(flavor = "multi_thread")]
async fn a_randomised_cache_under_containerd() -> anyhow::Result<()> {
    use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
    if !containerd::require() {
        return Ok(());
    }
    let node = "cc-cri";
    let ctrd = Containerd::start().await?;
    let mut cloud = Cloud::start(CloudOptions::default()).await?;
    let mut edge = Edge::join_and_start_cri(&cloud, node, &ctrd).await?;
    for name in PODS {
        // keep-a fails its first run (the emptyDir outlives the container), so that it has a
        // restart to remember.
        let script = if name == "keep-a" {
            "[ -f /data/once ] || { touch /data/once; exit 1; }; exec sleep 3600"
        } else {
            "exec sleep 3600"
        };
        cloud
            .create_pod(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", script],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}]
                }
            }))
            .await?;
    }
    let mut ids = BTreeMap::new();
    for name in PODS {
        let pod = cloud
            .wait_for(&format!("{name} running"), &pod_path(name), DEADLINE, |p| {
                pod_running(p) && restarts(p) == u64::from(name == "keep-a")
            })
            .await?;
        ids.insert(name, container_of(&pod));
    }
    let before = running_containers(&ctrd).await?;
    assert_eq!(before, ids.values().cloned().collect(), "{ids:?}");

    cloud.kill9();
    edge.kill9();
    damage(&edge.dir.path().join("cache"), Damage::Randomise)?;
    edge.start()?;
    eventually("the held pods counted", DEADLINE, || async {
        let text = edge.metrics_text().await?;
        Ok((sample(&text, "skerry_edge_pods_held") == Some(PODS.len() as f64)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    let log = std::fs::read_to_string(edge.dir.path().join("edgecore.log"))?;
    assert!(log.contains("EDGE CACHE CORRUPT"), "{}", edge.log_tail());
    assert_eq!(
        running_containers(&ctrd).await?,
        before,
        "the containers were not kept"
    );

    cloud.launch().await?;
    let (code, body) = cloud
        .api(
            "DELETE",
            &format!("{}?gracePeriodSeconds=0", pod_path("gone")),
            None,
        )
        .await?;
    anyhow::ensure!(code == 200, "force delete answered {code}: {body}");
    let kept: std::collections::BTreeSet<String> =
        [ids["keep-a"].clone(), ids["keep-b"].clone()].into();
    eventually(
        "only the deleted pod's container removed",
        DEADLINE,
        || async { Ok((running_containers(&ctrd).await? == kept).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}{}", edge.log_tail()))?;
    for name in ["keep-a", "keep-b"] {
        let pod = cloud
            .wait_for(
                &format!("{name} reported"),
                &pod_path(name),
                DEADLINE,
                pod_running,
            )
            .await?;
        assert_eq!(
            container_of(&pod),
            ids[name],
            "{name} was started again: {pod}"
        );
        assert_eq!(restarts(&pod), u64::from(name == "keep-a"), "{name}: {pod}");
    }
    assert_eq!(
        edge.metric_series("skerry_edge_desired_state_known")
            .await?,
        Some(1.0)
    );
    Ok(())
}
