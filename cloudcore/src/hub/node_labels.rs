//! Which labels a joining node may give itself (Kubernetes' `NodeRestriction` admission, for
//! edges).
//!
//! A join token admits a machine, not a role. If a node could pick any label at join, a token
//! holder could claim a label that a `nodeSelector` uses and so attract the pods of that
//! workload, and their Secrets. So a node may set only labels that describe the machine
//! ([`SELF_LABELS`], and anything under [`SELF_PREFIX`], which is documented as self-asserted
//! and never to be used to steer sensitive workloads); the labels that steer workloads are set
//! by an admin (`kubectl label node`), and a re-join merges the node's own labels into the Node
//! without touching the admin's.

use crate::api::validation;
use std::collections::BTreeMap;

/// Label keys a node may set on itself.
pub const SELF_LABELS: [&str; 4] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "node.kubernetes.io/instance-type",
];

/// The prefix of labels a node asserts about itself, freely (`node.skerry.io/rig=hil-7`).
pub const SELF_PREFIX: &str = "node.skerry.io/";

/// Checks the labels a node asks for at join: Kubernetes' label syntax, and only keys it may
/// set itself. The error names the label and says what to do instead.
pub fn check(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in labels {
        let mut errs = validation::qualified_name(key);
        errs.extend(validation::label_value(value));
        if !errs.is_empty() {
            let shown: String = key.chars().take(80).collect();
            return Err(format!(
                "label {shown:?} is not a valid Kubernetes label: {}",
                errs.join("; ")
            ));
        }
        if !SELF_LABELS.contains(&key.as_str()) && !key.starts_with(SELF_PREFIX) {
            return Err(format!(
                "a node may not set label {key:?} on itself (it could attract workloads meant for \
                 other nodes); a node may set {} and labels under {SELF_PREFIX}; an admin sets \
                 the others with `kubectl label node NODE {key}=...`",
                SELF_LABELS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_node_sets_only_machine_labels_and_its_own_prefix() {
        assert!(check(&labels(&[
            ("topology.kubernetes.io/zone", "north"),
            ("node.kubernetes.io/instance-type", "rpi4"),
            ("node.skerry.io/rig", "hil-7"),
        ]))
        .is_ok());
        let e = check(&labels(&[("site", "factory-7")])).unwrap_err();
        assert!(
            e.contains("\"site\"") && e.contains("kubectl label node"),
            "{e}"
        );
        let e = check(&labels(&[("node-role.kubernetes.io/control-plane", "")])).unwrap_err();
        assert!(e.contains("may not set"), "{e}");
        let e = check(&labels(&[("node.skerry.io/rig", "not valid!")])).unwrap_err();
        assert!(e.contains("not a valid Kubernetes label"), "{e}");
        let long = "x".repeat(100_000);
        let e = check(&labels(&[(long.as_str(), "v")])).unwrap_err();
        assert!(e.len() < 2_000, "the key is not echoed whole");
    }
}
