//! Scores: among the nodes that passed the filters, which is best. Each plugin scores a node
//! 0..=100 and the total is their weighted sum, with Kubernetes' default weights:
//!
//! - **spread** (weight 2): fewer replicas of the pod's group (same controller, or same labels in
//!   the namespace) already on the node is better; normalised against the fullest feasible node.
//! - **taints** (weight 3): fewer PreferNoSchedule taints the pod does not tolerate is better;
//!   normalised against the most tainted feasible node.
//! - **least allocated** (weight 1): the mean over cpu and memory of the share left free after
//!   placing the pod.
//! - **balanced allocation** (weight 1): cpu and memory shares close to each other, so that
//!   neither is stranded; mostly a tie-break between nodes equally free.
//!
//! Equal totals go to the node whose name sorts first, so the same cluster state always gives
//! the same placement.

use super::cache::Usage;
use super::model::{tolerated, Effect, NodeInfo, PodInfo};

/// Weight of the spread score.
pub const SPREAD_WEIGHT: u64 = 2;
/// Weight of the PreferNoSchedule taint score.
pub const TAINT_WEIGHT: u64 = 3;
/// Weight of the least-allocated score.
pub const LEAST_ALLOCATED_WEIGHT: u64 = 1;
/// Weight of the balanced-allocation score.
pub const BALANCED_WEIGHT: u64 = 1;

/// The raw per-node inputs of one scoring round, before normalisation across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    /// Replicas of the pod's group already on the node.
    pub replicas: u32,
    /// PreferNoSchedule taints the pod does not tolerate.
    pub prefer_no_schedule: u32,
    /// Least-allocated and balanced scores, already weighted.
    pub resources: u64,
}

/// Computes the node-local part of the score.
pub fn raw(pod: &PodInfo, node: &NodeInfo, usage: &Usage) -> Raw {
    let replicas = pod
        .spread
        .and_then(|k| usage.spread.get(&k).copied())
        .unwrap_or(0);
    let prefer_no_schedule = node
        .taints
        .iter()
        .filter(|t| t.effect == Effect::PreferNoSchedule && !tolerated(&pod.tolerations, t))
        .count() as u32;
    let cpu = share(
        usage.score_cpu_millis + pod.requests.score_cpu_millis,
        node.allocatable.cpu_millis,
    );
    let mem = share(
        usage.score_memory + pod.requests.score_memory,
        node.allocatable.memory,
    );
    // Least allocated: mean free share. Balanced: 1 - |cpu - mem| / 2 (the standard deviation
    // of two values), both on 0..=100.
    let least = ((1.0 - cpu) * 50.0 + (1.0 - mem) * 50.0) as u64;
    let balanced = ((1.0 - (cpu - mem).abs() / 2.0) * 100.0) as u64;
    Raw {
        replicas,
        prefer_no_schedule,
        resources: least * LEAST_ALLOCATED_WEIGHT + balanced * BALANCED_WEIGHT,
    }
}

/// `requested / allocatable`, clamped to 0..=1 (a node offering nothing counts as full).
fn share(requested: u64, allocatable: u64) -> f64 {
    if allocatable == 0 {
        return 1.0;
    }
    (requested as f64 / allocatable as f64).min(1.0)
}

/// Combines a node's raw inputs into its total, given the largest replica and taint counts among
/// the feasible nodes (Kubernetes' normalisation: the worst node scores 0 on that plugin).
pub fn total(r: Raw, max_replicas: u32, max_prefer_no_schedule: u32) -> u64 {
    let inverse = |n: u32, max: u32| {
        if max == 0 {
            100
        } else {
            u64::from(max - n) * 100 / u64::from(max)
        }
    };
    inverse(r.replicas, max_replicas) * SPREAD_WEIGHT
        + inverse(r.prefer_no_schedule, max_prefer_no_schedule) * TAINT_WEIGHT
        + r.resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(cpu: &str, mem: &str, taints: serde_json::Value) -> NodeInfo {
        NodeInfo::of(
            &json!({"metadata": {"name": "n"}, "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}}),
        )
    }

    fn pod(cpu: &str, mem: &str) -> PodInfo {
        PodInfo::of(
            &json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}),
        )
    }

    #[test]
    fn least_allocated_prefers_the_freer_node() {
        let n = node("4", "4Gi", json!([]));
        let p = pod("1", "1Gi");
        let idle = raw(&p, &n, &Usage::default());
        let busy = Usage {
            score_cpu_millis: 2000,
            score_memory: 2 << 30,
            ..Default::default()
        };
        let busy = raw(&p, &n, &busy);
        assert!(idle.resources > busy.resources, "{idle:?} {busy:?}");
        // Idle: 3/4 free on both, perfectly balanced.
        assert_eq!(idle.resources, 75 + 100);
    }

    #[test]
    fn balanced_allocation_breaks_ties_between_equally_free_nodes() {
        let n = node("4", "4Gi", json!([]));
        let p = pod("1", "1Gi");
        // Both nodes have the same mean free share; one is lopsided.
        let even = Usage {
            score_cpu_millis: 1000,
            score_memory: 1 << 30,
            ..Default::default()
        };
        let lopsided = Usage {
            score_cpu_millis: 2000,
            ..Default::default()
        };
        let (e, l) = (raw(&p, &n, &even), raw(&p, &n, &lopsided));
        assert!(e.resources > l.resources, "{e:?} {l:?}");
    }

    #[test]
    fn spread_and_prefer_no_schedule_normalise_against_the_worst_node() {
        let r = |replicas, prefer_no_schedule| Raw {
            replicas,
            prefer_no_schedule,
            resources: 0,
        };
        assert_eq!(total(r(0, 0), 2, 0), 200 + 300);
        assert_eq!(total(r(1, 0), 2, 0), 100 + 300);
        assert_eq!(total(r(2, 0), 2, 0), 300);
        assert_eq!(total(r(0, 1), 0, 1), 200);
        let tainted = node(
            "4",
            "4Gi",
            json!([{"key": "slow", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(
            raw(&pod("0", "0"), &tainted, &Usage::default()).prefer_no_schedule,
            1
        );
        let tolerant = PodInfo {
            tolerations: vec![super::super::model::Toleration {
                key: "slow".into(),
                exists: true,
                value: String::new(),
                effect: None,
            }],
            ..pod("0", "0")
        };
        assert_eq!(
            raw(&tolerant, &tainted, &Usage::default()).prefer_no_schedule,
            0
        );
    }
}
