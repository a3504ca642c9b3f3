//! Inter-pod affinity and anti-affinity (Kubernetes' `InterPodAffinity` plugin): where a pod
//! may go, and where it would rather go, given the pods already placed.
//!
//! A term selects pods (label selector, namespaces) and names a node label, its topology key:
//! two nodes with the same value of that label are one domain (`kubernetes.io/hostname` makes
//! every node its own domain; `topology.kubernetes.io/zone` groups them by zone).
//!
//! - **Filter**, in Kubernetes' order: every required affinity term must select a pod in the
//!   node's domain (unless no pod anywhere matches and the pod matches its own terms: the first
//!   of a group that wants to be together); no required anti-affinity term may select a pod in
//!   the node's domain; and no placed pod's required anti-affinity may select this pod from the
//!   node's domain (the check is symmetric).
//! - **Score**: per preferred term, its weight times the pods it selects in the node's domain,
//!   added for affinity and subtracted for anti-affinity; normalised to 0..=100 between the
//!   lowest and highest feasible node. Placed pods' own preferred terms towards the incoming pod
//!   (Kubernetes' symmetric part of the score) are not counted.
//!
//! [`State::build`] does the pod-wide work once per scheduling attempt (Kubernetes' PreFilter),
//! through a [`PodView`] that only hands out candidates an index says may match, so a pod
//! without terms, in a cluster without anti-affinity towards it, costs nothing per node.

use super::cache::PodView;
use super::filter::Reason;
use super::model::{AffinityTerm, NodeInfo, PodInfo};
use std::collections::{HashMap, HashSet};

/// What one pod's inter-pod terms found in the cluster, computed once per attempt.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Per required affinity term: its topology key and, per value, the pods it selects.
    affinity: Vec<(String, HashMap<String, u32>)>,
    /// Whether any required affinity term selected any pod at all.
    any_affinity_match: bool,
    /// Whether the pod satisfies all its own required affinity terms.
    self_affine: bool,
    /// Per required anti-affinity term: its topology key and the values where it selects a pod.
    anti: Vec<(String, HashSet<String>)>,
    /// Topology key → values from which a placed pod's required anti-affinity selects this pod.
    existing: HashMap<String, HashSet<String>>,
    /// Per preferred term: its topology key and, per value, the weighted count (negative for
    /// anti-affinity).
    preferred: Vec<(String, HashMap<String, i64>)>,
}

/// Per value of `term`'s topology key, the placed pods `term` selects.
fn count(term: &AffinityTerm, view: &dyn PodView) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    view.candidates(&term.selector, &mut |e| {
        if let Some(v) = e.node.labels.get(&term.topology_key) {
            if term.selects(&e.meta.namespace, &e.meta.labels) {
                *counts.entry(v.clone()).or_default() += 1;
            }
        }
    });
    counts
}

impl State {
    /// Looks at the placed pods for `pod`; `None` when nothing constrains or scores it (no
    /// terms of its own, no placed pod's anti-affinity selects it).
    pub fn build(pod: &PodInfo, view: &dyn PodView) -> Option<Self> {
        let meta = &pod.meta;
        let mut s = Self::default();
        view.anti_affine(&meta.labels, &mut |e| {
            let Some(ip) = &e.meta.inter_pod else { return };
            for t in &ip.anti_affinity {
                if let Some(v) = e.node.labels.get(&t.topology_key) {
                    if t.selects(&meta.namespace, &meta.labels) {
                        s.existing
                            .entry(t.topology_key.clone())
                            .or_default()
                            .insert(v.clone());
                    }
                }
            }
        });
        if let Some(ip) = &meta.inter_pod {
            for t in &ip.affinity {
                let c = count(t, view);
                s.any_affinity_match |= !c.is_empty();
                s.affinity.push((t.topology_key.clone(), c));
            }
            s.self_affine = ip
                .affinity
                .iter()
                .all(|t| t.selects(&meta.namespace, &meta.labels));
            for t in &ip.anti_affinity {
                let c = count(t, view);
                s.anti
                    .push((t.topology_key.clone(), c.into_keys().collect()));
            }
            for (sign, terms) in [(1, &ip.preferred), (-1, &ip.preferred_anti)] {
                for (w, t) in terms {
                    let c = count(t, view)
                        .into_iter()
                        .map(|(v, n)| (v, sign * w * i64::from(n)))
                        .collect();
                    s.preferred.push((t.topology_key.clone(), c));
                }
            }
        }
        (s != Self::default()).then_some(s)
    }

    /// The filter: `Ok` when the node satisfies the pod's required terms and no placed pod's.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Reason> {
        let mut all_found = true;
        for (key, counts) in &self.affinity {
            match node.labels.get(key) {
                Some(v) => all_found &= counts.get(v).is_some_and(|n| *n > 0),
                None => return Err(Reason::PodAffinity),
            }
        }
        if !all_found && (self.any_affinity_match || !self.self_affine) {
            return Err(Reason::PodAffinity);
        }
        for (key, values) in &self.anti {
            if node.labels.get(key).is_some_and(|v| values.contains(v)) {
                return Err(Reason::PodAntiAffinity);
            }
        }
        for (key, values) in &self.existing {
            if node.labels.get(key).is_some_and(|v| values.contains(v)) {
                return Err(Reason::ExistingAntiAffinity);
            }
        }
        Ok(())
    }

    /// The raw score of a node: the weighted pods its domains hold for the preferred terms.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        self.preferred
            .iter()
            .filter_map(|(key, counts)| counts.get(node.labels.get(key)?))
            .sum()
    }
}

/// Normalises a raw score to 0..=100 between the lowest and highest among feasible nodes
/// (all 0 when they are equal).
pub fn normalize(raw: i64, min: i64, max: i64) -> u64 {
    if max <= min {
        return 0;
    }
    ((raw - min) * 100 / (max - min)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::Existing;
    use crate::scheduler::model::{PodMeta, Selector};
    use serde_json::{json, Value};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// Placed pods on nodes, all handed out as candidates.
    struct Pods(Vec<(PodMeta, NodeInfo)>);

    impl PodView for Pods {
        fn candidates(&self, _: &Selector, f: &mut dyn FnMut(Existing<'_>)) {
            for (meta, node) in &self.0 {
                f(Existing {
                    meta,
                    node,
                    terminating: false,
                });
            }
        }
        fn anti_affine(&self, _: &BTreeMap<String, String>, f: &mut dyn FnMut(Existing<'_>)) {
            self.candidates(&Selector::NOTHING, f);
        }
        fn nodes(&self, f: &mut dyn FnMut(&NodeInfo)) {
            for (_, n) in &self.0 {
                f(n);
            }
        }
    }

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::of(&json!({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}}}))
    }

    fn pod(app: &str, affinity: Value) -> PodInfo {
        PodInfo::of(
            &json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": app}},
            "spec": {"affinity": affinity, "containers": [{"name": "c"}]}}),
        )
    }

    fn placed(app: &str, affinity: Value, on: &NodeInfo) -> (PodMeta, NodeInfo) {
        (pod(app, affinity).meta.as_ref().clone(), on.clone())
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    const HOST: &str = "kubernetes.io/hostname";
    const ZONE: &str = "topology.kubernetes.io/zone";

    #[test]
    fn required_anti_affinity_by_hostname_keeps_a_group_apart() {
        let (a, b) = (node("a", "z1"), node("b", "z1"));
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", HOST)]}});
        let view = Pods(vec![placed("web", anti.clone(), &a)]);
        let s = State::build(&pod("web", anti), &view).unwrap();
        assert_eq!(s.filter(&a), Err(Reason::PodAntiAffinity));
        assert_eq!(s.filter(&b), Ok(()));
        // By zone, b shares a's domain.
        let by_zone = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", ZONE)]}});
        let s = State::build(&pod("web", by_zone), &view).unwrap();
        assert_eq!(s.filter(&b), Err(Reason::PodAntiAffinity));
    }

    #[test]
    fn existing_pods_anti_affinity_is_honoured_against_the_incoming_pod() {
        let (a, b) = (node("a", "z1"), node("b", "z2"));
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("noisy", ZONE)]}});
        let view = Pods(vec![placed("db", anti, &a)]);
        let s = State::build(&pod("noisy", Value::Null), &view).unwrap();
        assert_eq!(s.filter(&a), Err(Reason::ExistingAntiAffinity));
        assert_eq!(s.filter(&b), Ok(()));
        // A pod the term does not select, or one in another namespace, is not concerned.
        assert!(State::build(&pod("quiet", Value::Null), &view).is_none());
        let mut other_ns = pod("noisy", Value::Null);
        Arc::make_mut(&mut other_ns.meta).namespace = "e".into();
        assert!(State::build(&other_ns, &view).is_none());
    }

    #[test]
    fn required_affinity_needs_a_selected_pod_in_the_domain_except_for_the_first_of_a_group() {
        let (a, b, c) = (node("a", "z1"), node("b", "z1"), node("c", "z2"));
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("cache", ZONE)]}});
        let view = Pods(vec![placed("cache", Value::Null, &a)]);
        let s = State::build(&pod("web", aff.clone()), &view).unwrap();
        assert_eq!(s.filter(&b), Ok(()), "same zone as the cache");
        assert_eq!(s.filter(&c), Err(Reason::PodAffinity));
        let mut no_zone = node("d", "");
        no_zone.labels.remove(ZONE);
        assert_eq!(s.filter(&no_zone), Err(Reason::PodAffinity));
        // Nothing matches anywhere: only a pod that matches its own terms may start the group.
        let empty = Pods(vec![]);
        let s = State::build(&pod("web", aff.clone()), &empty).unwrap();
        assert_eq!(s.filter(&a), Err(Reason::PodAffinity));
        let s = State::build(&pod("cache", aff), &empty).unwrap();
        assert_eq!(s.filter(&a), Ok(()));
    }

    #[test]
    fn namespaces_default_to_the_pods_own_and_an_empty_selector_means_all() {
        let a = node("a", "z1");
        let mut elsewhere = placed("web", Value::Null, &a);
        elsewhere.0.namespace = "other".into();
        let view = Pods(vec![elsewhere]);
        let own = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("web", HOST)]}});
        assert_eq!(
            State::build(&pod("x", own), &view).unwrap().filter(&a),
            Ok(())
        );
        let mut all = term("web", HOST);
        all["namespaceSelector"] = json!({});
        let all =
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [all]}});
        assert_eq!(
            State::build(&pod("x", all), &view).unwrap().filter(&a),
            Err(Reason::PodAntiAffinity)
        );
        let mut listed = term("web", HOST);
        listed["namespaces"] = json!(["other"]);
        let listed = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [listed]}});
        assert_eq!(
            State::build(&pod("x", listed), &view).unwrap().filter(&a),
            Err(Reason::PodAntiAffinity)
        );
    }

    #[test]
    fn preferred_terms_add_and_subtract_their_weights_per_selected_pod() {
        let (a, b, c) = (node("a", "z1"), node("b", "z1"), node("c", "z2"));
        let view = Pods(vec![
            placed("cache", Value::Null, &a),
            placed("cache", Value::Null, &a),
            placed("batch", Value::Null, &c),
        ]);
        let prefs = json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": term("cache", ZONE)}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": term("batch", HOST)}]}});
        let s = State::build(&pod("web", prefs), &view).unwrap();
        assert_eq!((s.score(&a), s.score(&b), s.score(&c)), (20, 20, -50));
        assert_eq!(normalize(20, -50, 20), 100);
        assert_eq!(normalize(-50, -50, 20), 0);
        assert_eq!(normalize(7, 7, 7), 0);
    }
}
