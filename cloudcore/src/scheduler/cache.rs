//! The scheduler's view of the cluster: every node with what its bound pods already request.
//!
//! Kept in memory and updated from store events, so that placing one pod costs one pass over the
//! nodes and never a scan of the pods. Each pod's contribution is remembered, so an update or a
//! delete subtracts exactly what was added; a full resync rebuilds everything from a listing
//! (level-triggered: a missed or reordered event is repaired by the next resync).
//!
//! A pod the scheduler has just placed is **assumed**: counted on its node before the binding
//! write returns, so that the next pod already sees it. The write's outcome then confirms the
//! assumption (the bound pod replaces it) or drops it.

use super::filter::{self, FitError};
use super::model::{bound_node, terminated, NodeInfo, PodInfo, PodRequests, Resources};
use super::score;
use crate::store::{ObjectKey, Stored};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// What the pods bound to one node take from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sum of their requests (fit view).
    pub requested: Resources,
    /// Number of (non-terminated) pods.
    pub pods: u64,
    /// Sum of their scoring cpu (with non-zero defaults).
    pub score_cpu_millis: u64,
    /// Sum of their scoring memory (with non-zero defaults).
    pub score_memory: u64,
    /// Spread group → number of pods of that group on the node.
    pub spread: HashMap<u64, u32>,
}

impl Usage {
    fn add(&mut self, p: &Placed) {
        self.requested.add(&p.requests.fit);
        self.pods += 1;
        self.score_cpu_millis += p.requests.score_cpu_millis;
        self.score_memory += p.requests.score_memory;
        if let Some(k) = p.spread {
            *self.spread.entry(k).or_default() += 1;
        }
    }

    fn sub(&mut self, p: &Placed) {
        self.requested.sub(&p.requests.fit);
        self.pods = self.pods.saturating_sub(1);
        self.score_cpu_millis = self
            .score_cpu_millis
            .saturating_sub(p.requests.score_cpu_millis);
        self.score_memory = self.score_memory.saturating_sub(p.requests.score_memory);
        if let Some(k) = p.spread {
            if let Some(n) = self.spread.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.spread.remove(&k);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.pods == 0
    }
}

/// A pod that holds resources on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    node: String,
    revision: u64,
    assumed: bool,
    requests: PodRequests,
    spread: Option<u64>,
}

#[derive(Debug, Default)]
struct NodeEntry {
    /// `None` while pods name a node the store does not (yet) have.
    info: Option<(NodeInfo, u64)>,
    usage: Usage,
}

/// The cache. Node iteration is in name order, which makes placement deterministic.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeEntry>,
    pods: HashMap<ObjectKey, Placed>,
    /// Reused per scheduling round: (node index in iteration order, raw score).
    scratch: Vec<(usize, score::Raw)>,
}

impl Cache {
    /// Rebuilds the cache from full listings. Assumed pods whose binding is still in flight
    /// stay assumed unless the listing already shows them bound or gone.
    pub fn resync(&mut self, nodes: &[Stored], pods: &[Stored]) {
        let in_flight: Vec<(ObjectKey, Placed)> = self
            .pods
            .iter()
            .filter(|(_, p)| p.assumed)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        self.nodes.clear();
        self.pods.clear();
        for n in nodes {
            self.set_node(n.revision, Some(&n.value));
        }
        let mut listed = std::collections::HashSet::new();
        for p in pods {
            let key = pod_key(&p.value);
            self.set_pod(&key, p.revision, Some(&p.value));
            listed.insert(key);
        }
        for (key, placed) in in_flight {
            if listed.contains(&key) && !self.pods.contains_key(&key) {
                self.insert(key, placed);
            }
        }
    }

    /// Applies a node write (`None`: deleted). Returns whether the change can make room for a
    /// pod that did not fit (a node appeared, or its labels, taints, readiness or allocatable
    /// changed); heartbeats that change none of these return `false`.
    pub fn set_node(&mut self, revision: u64, value: Option<&Value>) -> bool {
        match value {
            Some(v) => {
                let info = NodeInfo::of(v);
                let entry = self.nodes.entry(info.name.clone()).or_default();
                if let Some((_, rev)) = &entry.info {
                    if *rev > revision {
                        return false;
                    }
                }
                let changed = entry.info.as_ref().is_none_or(|(old, _)| *old != info);
                entry.info = Some((info, revision));
                changed
            }
            None => false,
        }
    }

    /// Forgets a deleted node (its pods' usage stays until they go: they still hold it).
    pub fn remove_node(&mut self, name: &str) {
        if let Some(e) = self.nodes.get_mut(name) {
            e.info = None;
            if e.usage.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Applies a pod write (`None`: deleted). Returns whether it freed resources on a node (a
    /// bound pod went away or terminated), which can make room for a pod that did not fit.
    pub fn set_pod(&mut self, key: &ObjectKey, revision: u64, value: Option<&Value>) -> bool {
        let holds = value.and_then(|v| {
            let node = bound_node(v)?;
            (!terminated(v)).then(|| Placed {
                node: node.to_string(),
                revision,
                assumed: false,
                requests: PodRequests::of(v),
                spread: super::model::spread_key(v),
            })
        });
        if let (Some(old), Some(v)) = (self.pods.get(key), value) {
            if old.revision > revision {
                return false; // stale event
            }
            if old.assumed && bound_node(v).is_none() && !terminated(v) {
                return false; // the binding write in flight decides
            }
        }
        let freed = self.remove(key);
        if let Some(p) = holds {
            self.insert(key.clone(), p);
        }
        freed
    }

    /// Counts `pod` on `node` before its binding is written.
    pub fn assume(&mut self, key: &ObjectKey, node: &str, pod: &PodInfo) {
        self.remove(key);
        self.insert(
            key.clone(),
            Placed {
                node: node.to_string(),
                revision: 0,
                assumed: true,
                requests: pod.requests.clone(),
                spread: pod.spread,
            },
        );
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, key: &ObjectKey) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.remove(key);
        }
    }

    fn insert(&mut self, key: ObjectKey, p: Placed) {
        self.nodes.entry(p.node.clone()).or_default().usage.add(&p);
        self.pods.insert(key, p);
    }

    fn remove(&mut self, key: &ObjectKey) -> bool {
        let Some(p) = self.pods.remove(key) else {
            return false;
        };
        if let Some(e) = self.nodes.get_mut(&p.node) {
            e.usage.sub(&p);
            if e.info.is_none() && e.usage.is_empty() {
                self.nodes.remove(&p.node);
            }
        }
        true
    }

    /// Number of nodes known.
    pub fn node_count(&self) -> usize {
        self.nodes.values().filter(|e| e.info.is_some()).count()
    }

    /// What is allocated on `node`, if it is known.
    pub fn usage(&self, node: &str) -> Option<&Usage> {
        self.nodes.get(node).map(|e| &e.usage)
    }

    /// Picks the node for `pod`: filters every node, scores the feasible ones, returns the best
    /// (ties to the first name), or why none fits. One pass over the nodes plus one over the
    /// feasible ones.
    pub fn schedule(&mut self, pod: &PodInfo) -> Result<String, FitError> {
        let mut error = FitError::default();
        let mut feasible = std::mem::take(&mut self.scratch);
        feasible.clear();
        let (mut max_replicas, mut max_taints) = (0, 0);
        for (i, e) in self.nodes.values().enumerate() {
            let Some((info, _)) = &e.info else { continue };
            error.nodes += 1;
            match filter::check(pod, info, &e.usage) {
                Ok(()) => {
                    let r = score::raw(pod, info, &e.usage);
                    max_replicas = max_replicas.max(r.replicas);
                    max_taints = max_taints.max(r.prefer_no_schedule);
                    feasible.push((i, r));
                }
                Err(reasons) => error.add(reasons),
            }
        }
        let mut best: Option<(usize, u64)> = None;
        for &(i, r) in &feasible {
            let s = score::total(r, max_replicas, max_taints);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        self.scratch = feasible;
        match best {
            Some((i, _)) => Ok(self
                .nodes
                .keys()
                .nth(i)
                .cloned()
                .expect("index from this iteration")),
            None => Err(error),
        }
    }
}

/// The store key of a Pod object.
pub fn pod_key(pod: &Value) -> ObjectKey {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
    ObjectKey::new("pods", s("/metadata/namespace"), s("/metadata/name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> Value {
        json!({"metadata": {"name": name},
               "status": {"conditions": [{"type": "Ready", "status": "True"}],
                          "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}})
    }

    fn pod(name: &str, node: &str, cpu: &str, owner: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d",
                            "ownerReferences": [{"uid": owner, "controller": true}]},
               "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}})
    }

    fn cache(nodes: &[(&str, &str)]) -> Cache {
        let mut c = Cache::default();
        for (i, (n, cpu)) in nodes.iter().enumerate() {
            c.set_node(i as u64 + 1, Some(&node(n, cpu)));
        }
        c
    }

    fn place(c: &mut Cache, p: &Value) -> Result<String, FitError> {
        let info = PodInfo::of(p);
        let chosen = c.schedule(&info)?;
        c.assume(&pod_key(p), &chosen, &info);
        Ok(chosen)
    }

    #[test]
    fn replicas_of_one_owner_spread_over_nodes() {
        let mut c = cache(&[("a", "4"), ("b", "4"), ("c", "4")]);
        let mut seen: Vec<String> = (0..3)
            .map(|i| place(&mut c, &pod(&format!("r{i}"), "", "100m", "rs1")).unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
    }

    #[test]
    fn spread_beats_least_allocated_but_least_allocated_decides_otherwise() {
        // b is much busier, but a already runs a replica of the same owner.
        let mut c = cache(&[("a", "4"), ("b", "4")]);
        c.set_pod(
            &ObjectKey::new("pods", "d", "x"),
            10,
            Some(&pod("x", "b", "2", "other")),
        );
        c.set_pod(
            &ObjectKey::new("pods", "d", "y"),
            11,
            Some(&pod("y", "a", "100m", "rs1")),
        );
        assert_eq!(place(&mut c, &pod("r", "", "100m", "rs1")).unwrap(), "b");
        // A pod of a fresh owner goes to the freer node.
        assert_eq!(place(&mut c, &pod("s", "", "100m", "rs2")).unwrap(), "a");
    }

    #[test]
    fn equal_scores_go_to_the_first_node_by_name_every_time() {
        for _ in 0..3 {
            let mut c = cache(&[("c", "4"), ("a", "4"), ("b", "4")]);
            assert_eq!(place(&mut c, &pod("p", "", "100m", "o")).unwrap(), "a");
        }
    }

    #[test]
    fn usage_follows_updates_deletes_and_termination() {
        let mut c = cache(&[("a", "1")]);
        let key = ObjectKey::new("pods", "d", "p");
        assert!(!c.set_pod(&key, 5, Some(&pod("p", "a", "600m", "o"))));
        assert_eq!(c.usage("a").unwrap().requested.cpu_millis, 600);
        let err = c
            .schedule(&PodInfo::of(&pod("q", "", "600m", "o")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        // A stale event changes nothing.
        assert!(!c.set_pod(&key, 4, Some(&pod("p", "a", "100m", "o"))));
        assert_eq!(c.usage("a").unwrap().requested.cpu_millis, 600);
        let mut done = pod("p", "a", "600m", "o");
        done["status"] = json!({"phase": "Succeeded"});
        assert!(
            c.set_pod(&key, 6, Some(&done)),
            "termination frees resources"
        );
        assert_eq!(c.usage("a").unwrap().pods, 0);
        assert!(c.schedule(&PodInfo::of(&pod("q", "", "600m", "o"))).is_ok());
        c.set_pod(&key, 7, Some(&pod("p", "a", "600m", "o")));
        assert!(c.set_pod(&key, 8, None), "delete frees resources");
        assert_eq!(c.usage("a").unwrap().requested, Resources::default());
    }

    #[test]
    fn assumptions_hold_until_the_binding_resolves() {
        let mut c = cache(&[("a", "1")]);
        let p = pod("p", "", "600m", "o");
        let key = pod_key(&p);
        assert_eq!(place(&mut c, &p).unwrap(), "a");
        // The pod's own earlier (unbound) write arrives late: the assumption stays.
        c.set_pod(&key, 3, Some(&p));
        assert_eq!(c.usage("a").unwrap().pods, 1);
        // A resync that still lists it unbound keeps it too.
        c.resync(
            &[Stored {
                revision: 1,
                value: node("a", "1"),
            }],
            &[Stored {
                revision: 3,
                value: p.clone(),
            }],
        );
        assert_eq!(c.usage("a").unwrap().pods, 1);
        c.forget(&key);
        assert_eq!(c.usage("a").unwrap().pods, 0);
    }

    #[test]
    fn node_heartbeats_are_not_changes() {
        let mut c = cache(&[("a", "1")]);
        let mut beat = node("a", "1");
        beat["status"]["conditions"][0]["lastHeartbeatTime"] = json!("2025-01-01T00:00:00Z");
        assert!(!c.set_node(10, Some(&beat)));
        beat["metadata"]["labels"] = json!({"zone": "x"});
        assert!(c.set_node(11, Some(&beat)));
        assert!(!c.set_node(9, Some(&node("a", "2"))), "stale");
        c.remove_node("a");
        assert_eq!(c.node_count(), 0);
    }
}
