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
//! - **node affinity** (weight 2): the sum of the weights of the pod's preferred node affinity
//!   terms the node matches, normalised against the best feasible node (Kubernetes'
//!   `NodeAffinity` score).
//! - **inter-pod affinity** (weight 2): see [`super::interpod`].
//! - **topology spread** (weight 2): `ScheduleAnyway` constraints, see [`super::spread`].
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
/// Weight of the preferred node affinity score.
pub const NODE_AFFINITY_WEIGHT: u64 = 2;
/// Weight of the inter-pod affinity score.
pub const INTER_POD_WEIGHT: u64 = 2;
/// Weight of the topology spread score.
pub const TOPOLOGY_SPREAD_WEIGHT: u64 = 2;

/// The raw per-node inputs of one scoring round, before normalisation across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    /// Replicas of the pod's group already on the node.
    pub replicas: u32,
    /// PreferNoSchedule taints the pod does not tolerate.
    pub prefer_no_schedule: u32,
    /// Least-allocated and balanced scores, already weighted.
    pub resources: u64,
    /// Sum of the weights of the preferred node affinity terms the node matches.
    pub node_affinity: u64,
    /// Inter-pod affinity raw score (see [`super::interpod::State::score`]); `None` when the
    /// pod has no inter-pod preferences to score.
    pub inter_pod: Option<i64>,
    /// Topology spread raw score (see [`super::spread::State::score`]).
    pub spread: Option<u64>,
}

/// The extremes of the raw inputs over the feasible nodes, which the normalisations need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Most replicas of the group on one node.
    pub max_replicas: u32,
    /// Most untolerated PreferNoSchedule taints on one node.
    pub max_prefer_no_schedule: u32,
    /// Best preferred node affinity sum.
    pub max_node_affinity: u64,
    /// Lowest and highest inter-pod raw score.
    pub inter_pod: Option<(i64, i64)>,
    /// Lowest and highest topology spread raw score (nodes with one).
    pub spread: Option<(u64, u64)>,
}

impl Bounds {
    /// Takes a feasible node's raw inputs into account.
    pub fn add(&mut self, r: &Raw) {
        self.max_replicas = self.max_replicas.max(r.replicas);
        self.max_prefer_no_schedule = self.max_prefer_no_schedule.max(r.prefer_no_schedule);
        self.max_node_affinity = self.max_node_affinity.max(r.node_affinity);
        if let Some(s) = r.inter_pod {
            let (lo, hi) = self.inter_pod.unwrap_or((s, s));
            self.inter_pod = Some((lo.min(s), hi.max(s)));
        }
        if let Some(s) = r.spread {
            let (lo, hi) = self.spread.unwrap_or((s, s));
            self.spread = Some((lo.min(s), hi.max(s)));
        }
    }
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
    let node_affinity = pod
        .preferred_affinity
        .iter()
        .filter(|(_, t)| t.matches(&node.name, &node.labels))
        .map(|(w, _)| (*w).clamp(0, 100) as u64)
        .sum();
    Raw {
        replicas,
        prefer_no_schedule,
        resources: least * LEAST_ALLOCATED_WEIGHT + balanced * BALANCED_WEIGHT,
        node_affinity,
        inter_pod: None,
        spread: None,
    }
}

/// `requested / allocatable`, clamped to 0..=1 (a node offering nothing counts as full).
fn share(requested: u64, allocatable: u64) -> f64 {
    if allocatable == 0 {
        return 1.0;
    }
    (requested as f64 / allocatable as f64).min(1.0)
}

/// Combines a node's raw inputs into its total, given the extremes among the feasible nodes
/// (Kubernetes' normalisations: the worst node scores 0 on spread and taints, the best 100 on
/// node affinity).
pub fn total(r: Raw, b: &Bounds) -> u64 {
    let inverse = |n: u32, max: u32| {
        if max == 0 {
            100
        } else {
            u64::from(max - n) * 100 / u64::from(max)
        }
    };
    let node_affinity = match b.max_node_affinity {
        0 => 0,
        max => r.node_affinity * 100 / max,
    };
    let inter_pod = match (r.inter_pod, b.inter_pod) {
        (Some(s), Some((lo, hi))) => super::interpod::normalize(s, lo, hi),
        _ => 0,
    };
    let spread = b
        .spread
        .map_or(0, |(lo, hi)| super::spread::normalize(r.spread, lo, hi));
    inverse(r.replicas, b.max_replicas) * SPREAD_WEIGHT
        + inverse(r.prefer_no_schedule, b.max_prefer_no_schedule) * TAINT_WEIGHT
        + r.resources
        + node_affinity * NODE_AFFINITY_WEIGHT
        + inter_pod * INTER_POD_WEIGHT
        + spread * TOPOLOGY_SPREAD_WEIGHT
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
            node_affinity: 0,
            inter_pod: None,
            spread: None,
        };
        let b = |max_replicas, max_prefer_no_schedule| Bounds {
            max_replicas,
            max_prefer_no_schedule,
            ..Default::default()
        };
        assert_eq!(total(r(0, 0), &b(2, 0)), 200 + 300);
        assert_eq!(total(r(1, 0), &b(2, 0)), 100 + 300);
        assert_eq!(total(r(2, 0), &b(2, 0)), 300);
        assert_eq!(total(r(0, 1), &b(0, 1)), 200);
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

    #[test]
    fn preferred_node_affinity_sums_matching_weights_normalised_to_the_best_node() {
        let p = PodInfo::of(
            &json!({"spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["north"]}]}},
                {"weight": 20, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}]}}}}),
        );
        let labelled = |labels: serde_json::Value| {
            NodeInfo::of(&json!({"metadata": {"name": "n", "labels": labels},
                "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"}}}))
        };
        let u = Usage::default();
        let both = raw(&p, &labelled(json!({"zone": "north", "ssd": ""})), &u);
        let zone = raw(&p, &labelled(json!({"zone": "north"})), &u);
        let none = raw(&p, &labelled(json!({"zone": "south"})), &u);
        assert_eq!(
            (both.node_affinity, zone.node_affinity, none.node_affinity),
            (100, 80, 0)
        );
        let mut b = Bounds::default();
        for r in [&both, &zone, &none] {
            b.add(r);
        }
        let only = |r: Raw| total(r, &b) - r.resources - 500;
        assert_eq!(only(both), 200);
        assert_eq!(only(zone), 160);
        assert_eq!(only(none), 0);
    }
}
