//! The process runtime honours cpu and memory limits (a cgroup per container, here on the
//! machine's cgroup v1 hierarchies), reports the kernel's OOM kill as `OOMKilled`, makes
//! read-only mounts read-only, and refuses a pod it cannot honour with the reason in the
//! container's status and an event. Real cloudcore, real edgecores, real kubectl.

use serde_json::{json, Value};
use skerry_tests::*;
use std::path::PathBuf;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// The directory of process `pid`'s cgroup in the v1 hierarchy of `controller` (this host
/// mounts each at `/sys/fs/cgroup/<controller>`, with the hierarchy's root at its root).
fn cgroup_dir(pid: u32, controller: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, cs, path) = (parts.next()?, parts.next()?, parts.next()?);
            cs.split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("no {controller} cgroup in {text}"))?;
    Ok(PathBuf::from(format!("/sys/fs/cgroup/{controller}")).join(path.trim_start_matches('/')))
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn pod(cloud: &Cloud, name: &str) -> anyhow::Result<Value> {
    cloud
        .get(&format!("/api/v1/namespaces/default/pods/{name}"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod {name} is gone"))
}

fn spec(name: &str, node: &str, container: Value, volumes: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [container], "volumes": volumes}})
}

#[tokio::test(flavor = "multi_thread")]
async fn process_pods_get_cgroups_with_their_limits_and_oom_kills_are_reported(
) -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let edge = Edge::join_and_start(&cloud, "edge-a", &[]).await?;
    cloud.wait_node_ready("edge-a", DEADLINE).await?;
    let edge_pid = edge
        .pid()
        .ok_or_else(|| anyhow::anyhow!("edgecore is not running"))?;
    let memory_root = cgroup_dir(edge_pid, "memory")?;
    let cpu_root = cgroup_dir(edge_pid, "cpu")?;

    // A cpu and memory limit show up in the container's own cgroups.
    cloud
        .create_pod(spec(
            "capped",
            "edge-a",
            json!({"name": "main", "image": "busybox:local", "command": ["sleep", "300"],
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}),
            json!([]),
        ))
        .await?;
    let capped = cloud.wait_running("capped", DEADLINE).await?;
    let uid = capped["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = format!("skerry-{uid}-main-0");
    let (memory_dir, cpu_dir) = (memory_root.join(&name), cpu_root.join(&name));
    assert_eq!(read(&memory_dir.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&cpu_dir.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "25000");
    let pids: Vec<u32> = read(&memory_dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "the sleep alone is in the cgroup: {pids:?}");
    // The process joined before it became the program (the shim's `--enter` step).
    eventually("the cgroup's process to be the sleep", DEADLINE, || async {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0]))?;
        Ok(cmdline.starts_with(b"sleep\x00300").then_some(()))
    })
    .await?;
    assert_eq!(read(&cpu_dir.join("cgroup.procs")), pids[0].to_string());
    // The cgroups go with the container.
    cloud.delete_pod("capped").await?;
    cloud
        .wait_gone(
            "pod capped",
            "/api/v1/namespaces/default/pods/capped",
            DEADLINE,
        )
        .await?;
    eventually("the capped cgroups removed", DEADLINE, || async {
        Ok((!memory_dir.exists() && !cpu_dir.exists()).then_some(()))
    })
    .await?;

    // Allocating past the memory limit: the kernel kills it, and the status says so.
    cloud
        .create_pod(spec(
            "hog",
            "edge-a",
            json!({"name": "main", "image": "busybox:local",
                "command": ["python3", "-c", "b = bytearray(200 * 1024 * 1024); print('survived')"],
                "resources": {"limits": {"memory": "32Mi"}}}),
            json!([]),
        ))
        .await?;
    let hog = eventually("hog to fail", DEADLINE, || async {
        let p = pod(&cloud, "hog").await?;
        Ok((p["status"]["phase"] == "Failed").then_some(p))
    })
    .await?;
    let terminated = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{hog}");
    assert_eq!(terminated["exitCode"], 137, "{hog}");
    let (ok, out) = cloud.kubectl(&["get", "pod", "hog"])?;
    assert!(ok && out.contains("OOMKilled"), "{out}");
    let (_, logs) = cloud.kubectl(&["logs", "hog"])?;
    assert!(!logs.contains("survived"), "{logs}");
    let hog_uid = hog["metadata"]["uid"].as_str().unwrap_or("");
    let hog_dir = memory_root.join(format!("skerry-{hog_uid}-main-0"));
    assert!(
        !hog_dir.exists(),
        "the shim removes the cgroup of an exited container"
    );

    // readOnly mounts are read-only for the process; the others stay writable.
    cloud
        .create_pod(spec(
            "ro",
            "edge-a",
            json!({"name": "main", "image": "busybox:local",
                "command": ["sh", "-c", "if echo x > \"$SKERRY_VOLUME_DATA/f\"; then echo DATA-WRITTEN; else echo DATA-REFUSED; fi; echo y > \"$SKERRY_VOLUME_SCRATCH/f\" && echo SCRATCH-WRITTEN; sleep 300"],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true},
                    {"name": "scratch", "mountPath": "/scratch"}]}),
            json!([{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]),
        ))
        .await?;
    cloud.wait_running("ro", DEADLINE).await?;
    let logs = eventually("the ro pod's verdicts", DEADLINE, || async {
        let (_, out) = cloud.kubectl(&["logs", "ro"])?;
        Ok(out.contains("SCRATCH-WRITTEN").then_some(out))
    })
    .await?;
    assert!(
        logs.contains("DATA-REFUSED") && logs.contains("Read-only file system"),
        "{logs}"
    );
    assert!(!logs.contains("DATA-WRITTEN"), "{logs}");
    cloud.delete_pod("ro").await?;
    cloud
        .wait_gone("pod ro", "/api/v1/namespaces/default/pods/ro", DEADLINE)
        .await?;

    // A node whose process runtime may not use cgroups refuses a pod with limits, saying why.
    let _plain =
        Edge::join_and_start_args(&cloud, "edge-nocg", &["--process-cgroups", "false"]).await?;
    cloud.wait_node_ready("edge-nocg", DEADLINE).await?;
    cloud
        .create_pod(spec(
            "refused",
            "edge-nocg",
            json!({"name": "main", "image": "busybox:local", "command": ["sleep", "300"],
                "resources": {"limits": {"memory": "32Mi"}}}),
            json!([]),
        ))
        .await?;
    let refused = eventually("the refusal in the status", DEADLINE, || async {
        let p = pod(&cloud, "refused").await?;
        let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        Ok((waiting["reason"] == "CreateContainerConfigError").then_some(p))
    })
    .await?;
    let message = refused["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert_eq!(
        message,
        "container \"main\": its memory limit cannot be honoured: cgroups are turned off on this node (edgecore --process-cgroups=false)",
        "{refused}"
    );
    assert_eq!(refused["status"]["phase"], "Pending", "{refused}");
    assert!(
        refused["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{refused}"
    );
    let events = eventually("the Failed event", DEADLINE, || async {
        let (_, out) = cloud.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=refused,reason=Failed",
            "-o",
            "jsonpath={.items[*].message}",
        ])?;
        Ok(out.contains("cannot be honoured").then_some(out))
    })
    .await?;
    assert!(events.contains("--process-cgroups=false"), "{events}");
    let (ok, out) = cloud.kubectl(&["get", "pod", "refused"])?;
    assert!(ok && out.contains("CreateContainerConfigError"), "{out}");
    Ok(())
}
