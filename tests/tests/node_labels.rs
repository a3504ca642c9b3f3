//! A node may give itself only labels that describe the machine (Kubernetes'
//! `NodeRestriction`): a label that could attract workloads is refused at join with what to do
//! instead, an admin sets it with kubectl, and a re-join keeps it.

use anyhow::Result;
use skerry_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn steering_labels_are_the_admins_and_survive_a_rejoin() -> Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let mqtt = cloud.mqtt_url();
    let join = |dir: &std::path::Path, token: &(String, String), labels: &[&str]| {
        let mut extra = vec!["--mqtt-url", mqtt.as_str()];
        for l in labels {
            extra.extend(["--label", l]);
        }
        join_raw(dir, &cloud.hub_addr(), &token.0, &token.1, "rig-7", &extra)
    };
    let dir = private_temp_dir()?;
    let (ok, out) = join(dir.path(), &cloud.token("1h")?, &["site=factory-7"])?;
    assert!(!ok, "a steering label must be refused: {out}");
    assert!(
        out.contains("may not set label \"site\"") && out.contains("kubectl label node"),
        "{out}"
    );
    assert!(
        cloud.get("/api/v1/nodes/rig-7").await?.is_none(),
        "nothing registered"
    );

    let (ok, out) = join(
        dir.path(),
        &cloud.token("1h")?,
        &[
            "topology.kubernetes.io/zone=north",
            "node.skerry.io/rig=hil-7",
        ],
    )?;
    assert!(ok, "machine labels are the node's own: {out}");
    let (ok, out) = cloud.kubectl(&["label", "node", "rig-7", "site=factory-7"])?;
    assert!(ok, "{out}");

    // A re-join (new machine, same name) updates the node's own labels and keeps the admin's.
    let again = private_temp_dir()?;
    let (ok, out) = join(
        again.path(),
        &cloud.token_for("rig-7")?,
        &["node.skerry.io/rig=hil-8"],
    )?;
    assert!(ok, "{out}");
    let node = cloud.get("/api/v1/nodes/rig-7").await?.expect("node");
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["site"], "factory-7", "{labels}");
    assert_eq!(labels["node.skerry.io/rig"], "hil-8", "{labels}");
    assert_eq!(labels["topology.kubernetes.io/zone"], "north", "{labels}");
    Ok(())
}
