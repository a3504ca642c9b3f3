//! Pod topology spread constraints (Kubernetes' `PodTopologySpread` plugin).
//!
//! A constraint counts the pods its selector picks (in the pod's own namespace, not being
//! deleted) per domain of its topology key, over the *eligible* nodes: those that pass the
//! pod's nodeSelector and required node affinity and carry every topology key of the pod's
//! constraints of the same kind (Kubernetes' defaults `nodeAffinityPolicy: Honor`,
//! `nodeTaintsPolicy: Ignore`). The skew of a domain is its count, plus one if the pod itself is
//! selected, minus the count of the emptiest eligible domain.
//!
//! - `whenUnsatisfiable: DoNotSchedule` is a **filter**: a node without the key is rejected
//!   (`missing required label`), and so is one whose domain's skew would exceed `maxSkew`.
//!   With fewer eligible domains than `minDomains`, the emptiest domain counts as 0.
//! - `ScheduleAnyway` is a **score**: per constraint, the domain's count weighted by
//!   ln(domains + 2) plus `maxSkew - 1`; fewer is better, normalised as Kubernetes does
//!   (`100 * (max + min - s) / max`); nodes without the keys score 0.
//!
//! Not supported: `matchLabelKeys` (ignored), and the two policy fields (the defaults apply).
//! The cluster-level default constraints Kubernetes applies to pods without any are covered by
//! the replica spread score ([`super::score`]).

use super::cache::PodView;
use super::filter::{matches_node_affinity, Reason};
use super::model::{NodeInfo, PodInfo, SpreadConstraint};
use std::collections::HashMap;

/// Scores are kept in thousandths so that [`Raw`](super::score::Raw) stays integral.
const SCALE: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq)]
struct Counted {
    key: String,
    max_skew: i64,
    hard: bool,
    /// 1 if the pod is selected by its own constraint.
    self_match: i64,
    /// Matching pods per eligible domain (every eligible domain is present, maybe with 0).
    counts: HashMap<String, i64>,
    /// The emptiest eligible domain's count (0 below `minDomains`).
    min: i64,
    /// ln(domains + 2), the score weight of the constraint.
    weight: f64,
}

/// One pod's constraints counted over the cluster, computed once per attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    constraints: Vec<Counted>,
}

fn has_keys(node: &NodeInfo, constraints: &[SpreadConstraint], hard: bool) -> bool {
    constraints
        .iter()
        .filter(|c| c.hard == hard)
        .all(|c| node.labels.contains_key(&c.topology_key))
}

impl State {
    /// Counts the pod's constraints; `None` when it has none.
    pub fn build(pod: &PodInfo, view: &dyn PodView) -> Option<Self> {
        let all = &pod.spread_constraints;
        if all.is_empty() {
            return None;
        }
        let eligible =
            |n: &NodeInfo, hard: bool| has_keys(n, all, hard) && matches_node_affinity(pod, n);
        let constraints = all
            .iter()
            .map(|c| {
                let mut counts: HashMap<String, i64> = HashMap::new();
                view.nodes(&mut |n| {
                    if eligible(n, c.hard) {
                        if let Some(v) = n.labels.get(&c.topology_key) {
                            if !counts.contains_key(v) {
                                counts.insert(v.clone(), 0);
                            }
                        }
                    }
                });
                view.candidates(&c.selector, &mut |e| {
                    if e.terminating
                        || e.meta.namespace != pod.meta.namespace
                        || !c.selector.matches(&e.meta.labels)
                        || !eligible(e.node, c.hard)
                    {
                        return;
                    }
                    if let Some(n) = e
                        .node
                        .labels
                        .get(&c.topology_key)
                        .and_then(|v| counts.get_mut(v))
                    {
                        *n += 1;
                    }
                });
                let below_min_domains = c.hard && counts.len() < c.min_domains as usize;
                Counted {
                    key: c.topology_key.clone(),
                    max_skew: i64::from(c.max_skew),
                    hard: c.hard,
                    self_match: i64::from(c.selector.matches(&pod.meta.labels)),
                    min: if below_min_domains {
                        0
                    } else {
                        counts.values().copied().min().unwrap_or(0)
                    },
                    weight: ((counts.len() + 2) as f64).ln(),
                    counts,
                }
            })
            .collect();
        Some(Self { constraints })
    }

    /// The filter for the `DoNotSchedule` constraints.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Reason> {
        for c in self.constraints.iter().filter(|c| c.hard) {
            let Some(v) = node.labels.get(&c.key) else {
                return Err(Reason::SpreadMissingLabel);
            };
            let here = c.counts.get(v).copied().unwrap_or(0);
            if here + c.self_match - c.min > c.max_skew {
                return Err(Reason::Spread);
            }
        }
        Ok(())
    }

    /// The raw score (thousandths; lower is better) for the `ScheduleAnyway` constraints;
    /// `None` when the pod has none or the node lacks one of their keys.
    pub fn score(&self, node: &NodeInfo) -> Option<u64> {
        let mut soft = self.constraints.iter().filter(|c| !c.hard).peekable();
        soft.peek()?;
        let mut total = 0.0;
        for c in soft {
            let v = node.labels.get(&c.key)?;
            let here = c.counts.get(v).copied().unwrap_or(0);
            total += here as f64 * c.weight + (c.max_skew - 1) as f64;
        }
        Some((total * SCALE).round() as u64)
    }
}

/// Kubernetes' normalisation of the raw score: `100 * (max + min - raw) / max` (100 when every
/// node scores 0); a node without a raw score gets 0.
pub fn normalize(raw: Option<u64>, min: u64, max: u64) -> u64 {
    match raw {
        None => 0,
        Some(_) if max == 0 => 100,
        Some(s) => 100 * (max + min).saturating_sub(s) / max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::Existing;
    use crate::scheduler::model::{PodMeta, Selector};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    struct Cluster {
        nodes: Vec<NodeInfo>,
        pods: Vec<(PodMeta, usize, bool)>,
    }

    impl PodView for Cluster {
        fn candidates(&self, _: &Selector, f: &mut dyn FnMut(Existing<'_>)) {
            for (meta, n, terminating) in &self.pods {
                f(Existing {
                    meta,
                    node: &self.nodes[*n],
                    terminating: *terminating,
                });
            }
        }
        fn anti_affine(&self, _: &BTreeMap<String, String>, _: &mut dyn FnMut(Existing<'_>)) {}
        fn nodes(&self, f: &mut dyn FnMut(&NodeInfo)) {
            self.nodes.iter().for_each(f);
        }
    }

    fn node(name: &str, zone: Option<&str>) -> NodeInfo {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if let Some(z) = zone {
            labels["topology.kubernetes.io/zone"] = json!(z);
        }
        NodeInfo::of(&json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn pod(constraints: Value) -> PodInfo {
        PodInfo::of(
            &json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "web"}},
            "spec": {"topologySpreadConstraints": constraints, "containers": [{"name": "c"}]}}),
        )
    }

    fn constraint(skew: u32, when: &str) -> Value {
        json!({"maxSkew": skew, "topologyKey": "topology.kubernetes.io/zone",
               "whenUnsatisfiable": when, "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    /// Zones z1 (nodes 0, 1) and z2 (node 2); node 3 has no zone. Two web pods in z1.
    fn cluster() -> Cluster {
        let web = pod(Value::Null).meta.as_ref().clone();
        let mut other = web.clone();
        other.labels.insert("app".into(), "db".into());
        Cluster {
            nodes: vec![
                node("a", Some("z1")),
                node("b", Some("z1")),
                node("c", Some("z2")),
                node("d", None),
            ],
            pods: vec![
                (web.clone(), 0, false),
                (web.clone(), 1, false),
                (web, 2, true),
                (other, 2, false),
            ],
        }
    }

    #[test]
    fn do_not_schedule_rejects_domains_that_would_exceed_max_skew() {
        let c = cluster();
        let s = State::build(&pod(json!([constraint(1, "DoNotSchedule")])), &c).unwrap();
        // z1 holds 2, z2 holds 0 (a terminating pod and another app do not count).
        assert_eq!(s.filter(&c.nodes[0]), Err(Reason::Spread));
        assert_eq!(s.filter(&c.nodes[2]), Ok(()));
        assert_eq!(s.filter(&c.nodes[3]), Err(Reason::SpreadMissingLabel));
        let loose = State::build(&pod(json!([constraint(3, "DoNotSchedule")])), &c).unwrap();
        assert_eq!(loose.filter(&c.nodes[0]), Ok(()));
    }

    #[test]
    fn min_domains_makes_the_emptiest_domain_count_as_zero() {
        let mut c = cluster();
        c.pods.push((c.pods[0].0.clone(), 2, false));
        let mut k = constraint(2, "DoNotSchedule");
        let s = State::build(&pod(json!([k.clone()])), &c).unwrap();
        assert_eq!(s.filter(&c.nodes[0]), Ok(()), "skew 3 - 1 = 2");
        k["minDomains"] = json!(3);
        let s = State::build(&pod(json!([k])), &c).unwrap();
        assert_eq!(
            s.filter(&c.nodes[0]),
            Err(Reason::Spread),
            "only 2 domains < 3"
        );
    }

    #[test]
    fn node_affinity_limits_the_eligible_domains() {
        let c = cluster();
        let mut p = pod(json!([constraint(1, "DoNotSchedule")]));
        p.node_selector = vec![("kubernetes.io/hostname".into(), "a".into())];
        // Only z1 is eligible: its minimum is its own count, so the skew is 1.
        let s = State::build(&p, &c).unwrap();
        assert_eq!(s.filter(&c.nodes[0]), Ok(()));
    }

    #[test]
    fn schedule_anyway_scores_emptier_domains_higher() {
        let c = cluster();
        let s = State::build(&pod(json!([constraint(1, "ScheduleAnyway")])), &c).unwrap();
        assert_eq!(
            s.filter(&c.nodes[0]),
            Ok(()),
            "soft constraints never filter"
        );
        let raw: Vec<Option<u64>> = c.nodes.iter().map(|n| s.score(n)).collect();
        assert_eq!(raw[3], None);
        assert_eq!(raw[2], Some(0));
        let (min, max) = (0, raw[0].unwrap());
        assert_eq!(normalize(raw[2], min, max), 100);
        assert_eq!(normalize(raw[0], min, max), 0);
        assert_eq!(normalize(raw[3], min, max), 0);
        assert_eq!(normalize(Some(0), 0, 0), 100);
    }
}
