//! The scheduler's view of the cluster: every node with what its bound pods already request,
//! and the placed pods themselves, indexed for the plugins that look at other pods.
//!
//! Kept in memory and updated from store events, so that placing one pod costs one pass over the
//! nodes and never a scan of the pods. Each pod's contribution is remembered, so an update or a
//! delete subtracts exactly what was added; a full resync rebuilds everything from a listing
//! (level-triggered: a missed or reordered event is repaired by the next resync).
//!
//! Placed pods are indexed by label (`key` → `value` → pods), which is how a pod affinity term
//! or spread constraint with a `matchLabels`/`In` requirement finds its candidates without
//! looking at every pod, and the pods with required anti-affinity are indexed by what their
//! terms select, so that checking them against an incoming pod only looks at those that may
//! select it (none, for a plain pod in a cluster without anti-affinity).
//!
//! A pod the scheduler has just placed is **assumed**: counted on its node before the binding
//! write returns, so that the next pod already sees it. The write's outcome then confirms the
//! assumption (the bound pod replaces it) or drops it.
//!
//! A pod that preempted others is **nominated** to the node where they are being evicted: until
//! it is placed, its requests are held there against pods of no higher priority, so that the
//! room made for it is not taken by someone else.

use super::filter::{self, FitError, Reason};
use super::model::{NodeInfo, PodFields, PodInfo, PodMeta, PodRequests, Resources, Selector};
use super::{interpod, score, spread};
use crate::store::{ObjectKey, Stored};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

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
    meta: Arc<PodMeta>,
    priority: i32,
    /// Being deleted gracefully: still holds its resources, no longer a preemption victim.
    terminating: bool,
}

#[derive(Debug, Default)]
struct NodeEntry {
    /// `None` while pods name a node the store does not (yet) have.
    info: Option<(NodeInfo, u64)>,
    usage: Usage,
}

/// A pod nominated to a node by preemption, not yet placed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nominee {
    node: String,
    priority: i32,
    requests: Resources,
}

/// label key → label value → pods.
type LabelIndex = HashMap<String, HashMap<String, HashSet<ObjectKey>>>;

fn index_add(index: &mut LabelIndex, k: &str, v: &str, key: &ObjectKey) {
    if !index.contains_key(k) {
        index.insert(k.to_string(), HashMap::new());
    }
    let values = index.get_mut(k).expect("just ensured");
    match values.get_mut(v) {
        Some(keys) => {
            keys.insert(key.clone());
        }
        None => {
            values.insert(v.to_string(), HashSet::from([key.clone()]));
        }
    }
}

fn index_remove(index: &mut LabelIndex, k: &str, v: &str, key: &ObjectKey) {
    if let Some(values) = index.get_mut(k) {
        if let Some(keys) = values.get_mut(v) {
            keys.remove(key);
            if keys.is_empty() {
                values.remove(v);
            }
        }
        if values.is_empty() {
            index.remove(k);
        }
    }
}

/// Where the required anti-affinity terms of a placed pod are indexed: under every label
/// (`key`, `value`) one of which a pod must carry to be selected, or, for a term without an
/// `In` requirement, among the pods every incoming pod is checked against.
fn anti_hints(meta: &PodMeta) -> (Vec<(&str, &str)>, bool) {
    let mut hints = Vec::new();
    let mut any = false;
    for t in meta.inter_pod.iter().flat_map(|ip| &ip.anti_affinity) {
        if t.selector.selects_nothing() {
            continue;
        }
        match t.selector.hint() {
            Some((k, vs)) => hints.extend(vs.iter().map(|v| (k, v.as_str()))),
            None => any = true,
        }
    }
    (hints, any)
}

/// A pod placed on a known node, as the plugins that look at other pods see it.
#[derive(Debug, Clone, Copy)]
pub struct Existing<'a> {
    /// Its identity, labels and terms.
    pub meta: &'a PodMeta,
    /// Its node.
    pub node: &'a NodeInfo,
    /// Whether it is being deleted.
    pub terminating: bool,
}

/// Read access to the placed pods and the nodes, for the inter-pod and spread plugins. The
/// candidate sets are supersets: callers check the selector themselves.
pub trait PodView {
    /// Calls `f` with every placed pod `selector` may select.
    fn candidates(&self, selector: &Selector, f: &mut dyn FnMut(Existing<'_>));
    /// Calls `f` with every placed pod whose required anti-affinity may select a pod with
    /// `labels`.
    fn anti_affine(&self, labels: &BTreeMap<String, String>, f: &mut dyn FnMut(Existing<'_>));
    /// Calls `f` with every known node.
    fn nodes(&self, f: &mut dyn FnMut(&NodeInfo));
}

/// What preemption decided for a pod that fits nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    /// The node the pod will fit on once the victims are gone.
    pub node: String,
    /// The pods to evict, most important first.
    pub victims: Vec<Victim>,
}

/// A pod to evict for a preemptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// Its key.
    pub key: ObjectKey,
    /// Its uid (the eviction checks it, so that a new pod of the same name is left alone).
    pub uid: String,
    /// Its priority.
    pub priority: i32,
}

/// The cache. Node iteration is in name order, which makes placement deterministic.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeEntry>,
    pods: HashMap<ObjectKey, Placed>,
    by_label: LabelIndex,
    anti_by_label: LabelIndex,
    anti_any: HashSet<ObjectKey>,
    nominees: HashMap<ObjectKey, Nominee>,
    /// Reused per scheduling round: (node index in iteration order, raw score).
    scratch: Vec<(usize, score::Raw)>,
}

impl PodView for Cache {
    fn candidates(&self, selector: &Selector, f: &mut dyn FnMut(Existing<'_>)) {
        if selector.selects_nothing() {
            return;
        }
        match selector.hint() {
            Some((k, vs)) => {
                let Some(values) = self.by_label.get(k) else {
                    return;
                };
                for v in vs {
                    for key in values.get(v).into_iter().flatten() {
                        self.visit(key, f);
                    }
                }
            }
            None => {
                for key in self.pods.keys() {
                    self.visit(key, f);
                }
            }
        }
    }

    fn anti_affine(&self, labels: &BTreeMap<String, String>, f: &mut dyn FnMut(Existing<'_>)) {
        if !self.anti_by_label.is_empty() {
            for (k, v) in labels {
                if let Some(keys) = self.anti_by_label.get(k).and_then(|vs| vs.get(v)) {
                    for key in keys {
                        self.visit(key, f);
                    }
                }
            }
        }
        for key in &self.anti_any {
            self.visit(key, f);
        }
    }

    fn nodes(&self, f: &mut dyn FnMut(&NodeInfo)) {
        for e in self.nodes.values() {
            if let Some((info, _)) = &e.info {
                f(info);
            }
        }
    }
}

/// Every filter, in Kubernetes' order: the node-local ones, topology spread, inter-pod.
#[inline]
fn filter_node(
    pod: &PodInfo,
    node: &NodeInfo,
    usage: &Usage,
    inter: Option<&interpod::State>,
    spread: Option<&spread::State>,
) -> Result<(), Vec<Reason>> {
    filter::check(pod, node, usage)?;
    if let Some(s) = spread {
        s.filter(node).map_err(|r| vec![r])?;
    }
    if let Some(s) = inter {
        s.filter(node).map_err(|r| vec![r])?;
    }
    Ok(())
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
        self.by_label.clear();
        self.anti_by_label.clear();
        self.anti_any.clear();
        self.nominees.clear();
        for n in nodes {
            self.set_node(n.revision, Some(&n.value));
        }
        let mut listed = HashSet::new();
        for p in pods {
            let key = pod_key(&p.value);
            self.set_pod(&key, p.revision, Some(&p.value));
            listed.insert(key);
        }
        for (key, placed) in in_flight {
            if listed.contains(&key) && !self.pods.contains_key(&key) {
                self.nominees.remove(&key);
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
        let assumed = self.pods.get(key).is_some_and(|p| p.assumed);
        let pod = value.map(PodFields::of);
        match pod.as_ref().and_then(|p| Some((p.nominated_node()?, p))) {
            Some((node, p)) if p.wants_scheduling() && !assumed => {
                self.nominees.insert(
                    key.clone(),
                    Nominee {
                        node: node.to_string(),
                        priority: p.priority(),
                        requests: p.requests().fit,
                    },
                );
            }
            _ => {
                self.nominees.remove(key);
            }
        }
        let holds = pod.as_ref().and_then(|p| {
            let node = p.bound_node()?;
            (!p.terminated()).then(|| Placed {
                node: node.to_string(),
                revision,
                assumed: false,
                requests: p.requests(),
                spread: p.spread_key(),
                meta: Arc::new(p.meta()),
                priority: p.priority(),
                terminating: p.terminating(),
            })
        });
        if let (Some(old), Some(p)) = (self.pods.get(key), &pod) {
            if old.revision > revision {
                return false; // stale event
            }
            if old.assumed && p.bound_node().is_none() && !p.terminated() {
                return false; // the binding write in flight decides
            }
        }
        let freed = self.remove(key).is_some();
        if let Some(p) = holds {
            self.insert(key.clone(), p);
        }
        freed
    }

    /// Counts `pod` on `node` before its binding is written.
    pub fn assume(&mut self, key: &ObjectKey, node: &str, pod: &PodInfo) {
        self.remove(key);
        self.nominees.remove(key);
        self.insert(
            key.clone(),
            Placed {
                node: node.to_string(),
                revision: 0,
                assumed: true,
                requests: pod.requests.clone(),
                spread: pod.spread,
                meta: pod.meta.clone(),
                priority: pod.priority,
                terminating: false,
            },
        );
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, key: &ObjectKey) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.remove(key);
        }
    }

    /// Holds room for `pod` on `node`, where preemption is evicting pods for it.
    pub fn nominate(&mut self, key: &ObjectKey, node: &str, pod: &PodInfo) {
        self.nominees.insert(
            key.clone(),
            Nominee {
                node: node.to_string(),
                priority: pod.priority,
                requests: pod.requests.fit.clone(),
            },
        );
    }

    fn insert(&mut self, key: ObjectKey, p: Placed) {
        self.nodes.entry(p.node.clone()).or_default().usage.add(&p);
        for (k, v) in &p.meta.labels {
            index_add(&mut self.by_label, k, v, &key);
        }
        let (hints, any) = anti_hints(&p.meta);
        for (k, v) in hints {
            index_add(&mut self.anti_by_label, k, v, &key);
        }
        if any {
            self.anti_any.insert(key.clone());
        }
        self.pods.insert(key, p);
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Placed> {
        let p = self.pods.remove(key)?;
        if let Some(e) = self.nodes.get_mut(&p.node) {
            e.usage.sub(&p);
            if e.info.is_none() && e.usage.is_empty() {
                self.nodes.remove(&p.node);
            }
        }
        for (k, v) in &p.meta.labels {
            index_remove(&mut self.by_label, k, v, key);
        }
        let (hints, any) = anti_hints(&p.meta);
        for (k, v) in hints {
            index_remove(&mut self.anti_by_label, k, v, key);
        }
        if any {
            self.anti_any.remove(key);
        }
        Some(p)
    }

    fn visit(&self, key: &ObjectKey, f: &mut dyn FnMut(Existing<'_>)) {
        let Some(p) = self.pods.get(key) else { return };
        let Some((node, _)) = self.nodes.get(&p.node).and_then(|e| e.info.as_ref()) else {
            return;
        };
        f(Existing {
            meta: &p.meta,
            node,
            terminating: p.terminating,
        });
    }

    /// Number of nodes known.
    pub fn node_count(&self) -> usize {
        self.nodes.values().filter(|e| e.info.is_some()).count()
    }

    /// What is allocated on `node`, if it is known.
    pub fn usage(&self, node: &str) -> Option<&Usage> {
        self.nodes.get(node).map(|e| &e.usage)
    }

    /// Per node, what nominated pods of at least `pod`'s priority (other than `pod`) hold there.
    fn reservations(&self, pod: &PodInfo) -> HashMap<&str, (Resources, u64)> {
        let mut held: HashMap<&str, (Resources, u64)> = HashMap::new();
        for (k, n) in &self.nominees {
            if n.priority >= pod.priority
                && !(k.namespace == pod.meta.namespace && k.name == pod.meta.name)
            {
                let e = held.entry(n.node.as_str()).or_default();
                e.0.add(&n.requests);
                e.1 += 1;
            }
        }
        held
    }

    /// Picks the node for `pod`: filters every node, scores the feasible ones, returns the best
    /// (ties to the first name), or why none fits. The pod-wide work of the inter-pod and spread
    /// plugins is done once; then one pass over the nodes plus one over the feasible ones.
    pub fn schedule(&mut self, pod: &PodInfo) -> Result<String, FitError> {
        let mut error = FitError::default();
        let mut feasible = std::mem::take(&mut self.scratch);
        feasible.clear();
        let inter = interpod::State::build(pod, self);
        let spread = spread::State::build(pod, self);
        let held = if self.nominees.is_empty() {
            HashMap::new()
        } else {
            self.reservations(pod)
        };
        let mut bounds = score::Bounds::default();
        for (i, (name, e)) in self.nodes.iter().enumerate() {
            let Some((info, _)) = &e.info else { continue };
            error.nodes += 1;
            let reserved;
            let usage = match (!held.is_empty())
                .then(|| held.get(name.as_str()))
                .flatten()
            {
                Some((r, n)) => {
                    let mut u = e.usage.clone();
                    u.requested.add(r);
                    u.pods += n;
                    reserved = u;
                    &reserved
                }
                None => &e.usage,
            };
            match filter_node(pod, info, usage, inter.as_ref(), spread.as_ref()) {
                Ok(()) => {
                    let mut r = score::raw(pod, info, usage);
                    if let Some(s) = &inter {
                        r.inter_pod = Some(s.score(info));
                    }
                    if let Some(s) = &spread {
                        r.spread = s.score(info);
                    }
                    bounds.add(&r);
                    feasible.push((i, r));
                }
                Err(reasons) => error.add(reasons),
            }
        }
        let mut best: Option<(usize, u64)> = None;
        for &(i, r) in &feasible {
            let s = score::total(r, &bounds);
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

    /// Whether `pod` passes every filter on `node` as the cache stands.
    fn fits_on(&self, pod: &PodInfo, node: &str) -> Result<(), Vec<Reason>> {
        let Some(e) = self.nodes.get(node) else {
            return Err(vec![Reason::NotReady]);
        };
        let Some((info, _)) = &e.info else {
            return Err(vec![Reason::NotReady]);
        };
        let inter = interpod::State::build(pod, self);
        let spread = spread::State::build(pod, self);
        filter_node(pod, info, &e.usage, inter.as_ref(), spread.as_ref())
    }

    /// Preemption for `pod` (key `key`), which fits nowhere: on every node where evicting pods
    /// can help, removes all its live bound pods of strictly lower priority, checks that the pod
    /// then passes every filter, and gives back (reprieves) as many of them as still leave room,
    /// most important first. Of the nodes that work, the one whose most important victim has the
    /// lowest priority wins, then the smallest sum of victim priorities, then the fewest
    /// victims, then the first name (Kubernetes' order, without disruption budgets).
    ///
    /// `None` when the pod may not preempt (`preemptionPolicy: Never`), when it already has a
    /// nomination whose lower-priority pods are still terminating (it waits for them), or when
    /// no node works. The cache is left as it was.
    pub fn preempt(&mut self, key: &ObjectKey, pod: &PodInfo) -> Option<Preemption> {
        if !pod.preempts {
            return None;
        }
        if let Some(n) = self.nominees.get(key) {
            let waiting = self
                .pods
                .values()
                .any(|p| p.node == n.node && p.terminating && p.priority < pod.priority);
            if waiting {
                return None;
            }
        }
        let mut lower: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
        for (k, p) in &self.pods {
            if !p.assumed && !p.terminating && p.priority < pod.priority {
                lower.entry(p.node.clone()).or_default().push(k.clone());
            }
        }
        let mut best: Option<((i32, i64, usize), Preemption)> = None;
        for (node, mut keys) in lower {
            match self.fits_on(pod, &node) {
                Err(rs) if rs.iter().all(Reason::resolvable_by_preemption) => {}
                _ => continue,
            }
            // Most important first: higher priority, then name, for a deterministic reprieve.
            keys.sort_by(|a, b| {
                let (pa, pb) = (self.pods[a].priority, self.pods[b].priority);
                pb.cmp(&pa).then_with(|| a.cmp(b))
            });
            let removed: Vec<(ObjectKey, Placed)> = keys
                .into_iter()
                .filter_map(|k| self.remove(&k).map(|p| (k, p)))
                .collect();
            let fits = self.fits_on(pod, &node).is_ok();
            let mut victims: Vec<(ObjectKey, Placed)> = Vec::new();
            for (k, p) in removed {
                if !fits {
                    victims.push((k, p));
                    continue;
                }
                self.insert(k.clone(), p);
                if self.fits_on(pod, &node).is_err() {
                    let p = self.remove(&k).expect("just inserted");
                    victims.push((k, p));
                }
            }
            let chosen: Vec<Victim> = victims
                .iter()
                .map(|(k, p)| Victim {
                    key: k.clone(),
                    uid: p.meta.uid.clone(),
                    priority: p.priority,
                })
                .collect();
            for (k, p) in victims {
                self.insert(k, p);
            }
            if !fits || chosen.is_empty() {
                continue;
            }
            let rank = (
                chosen[0].priority,
                chosen.iter().map(|v| i64::from(v.priority)).sum::<i64>(),
                chosen.len(),
            );
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                best = Some((
                    rank,
                    Preemption {
                        node,
                        victims: chosen,
                    },
                ));
            }
        }
        best.map(|(_, p)| p)
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
                stale: false,
            }],
            &[Stored {
                revision: 3,
                value: p.clone(),
                stale: false,
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

    fn labelled(mut p: Value, labels: Value, extra_spec: Value) -> Value {
        p["metadata"]["labels"] = labels;
        for (k, v) in extra_spec.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p
    }

    fn host_node(name: &str, cpu: &str) -> Value {
        let mut n = node(name, cpu);
        n["metadata"]["labels"] = json!({"kubernetes.io/hostname": name});
        n
    }

    #[test]
    fn anti_affinity_through_the_indexes_and_they_follow_removals() {
        let mut c = Cache::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            c.set_node(i as u64 + 1, Some(&host_node(n, "4")));
        }
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let solo = |i: usize| {
            labelled(
                pod(&format!("s{i}"), "", "100m", "o"),
                json!({"app": "solo"}),
                anti.clone(),
            )
        };
        let mut seen: Vec<String> = (0..3).map(|i| place(&mut c, &solo(i)).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(
            place(&mut c, &solo(3)).unwrap_err().to_string(),
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        );
        // A plain pod the terms select is kept away by the placed pods' anti-affinity.
        let plain = labelled(
            pod("x", "", "100m", "o2"),
            json!({"app": "solo"}),
            json!({}),
        );
        assert_eq!(
            place(&mut c, &plain).unwrap_err().to_string(),
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        );
        // One goes away: its node is free again for the group.
        c.forget(&pod_key(&solo(0)));
        assert!(place(&mut c, &solo(3)).is_ok());
        assert_eq!(c.anti_by_label["app"]["solo"].len(), 3);
    }

    #[test]
    fn preemption_evicts_the_fewest_lowest_priority_pods_and_holds_the_room() {
        let mut c = cache(&[("a", "2"), ("b", "2")]);
        let with_priority = |name: &str, node: &str, cpu: &str, priority: i64| {
            labelled(
                pod(name, node, cpu, "o"),
                json!({}),
                json!({"priority": priority}),
            )
        };
        let bound = [
            ("a1", "a", "1", 10),
            ("a2", "a", "1", 10),
            ("b1", "b", "1500m", 5),
            ("b2", "b", "500m", 50),
        ];
        for (i, (n, node, cpu, p)) in bound.iter().enumerate() {
            let v = with_priority(n, node, cpu, *p);
            c.set_pod(&pod_key(&v), i as u64 + 10, Some(&v));
        }
        let high = with_priority("high", "", "1", 100);
        let info = PodInfo::of(&high);
        assert!(c.schedule(&info).is_err());
        let p = c.preempt(&pod_key(&high), &info).unwrap();
        // On a, one victim of priority 10; on b, one of priority 5 (b2 is reprieved): b wins.
        assert_eq!(p.node, "b");
        assert_eq!(
            p.victims
                .iter()
                .map(|v| v.key.name.as_str())
                .collect::<Vec<_>>(),
            ["b1"]
        );
        assert_eq!(c.usage("b").unwrap().pods, 2, "the cache is left as it was");
        // The room is held: a lower-priority pod may not take it once the victim is gone...
        c.nominate(&pod_key(&high), "b", &info);
        c.set_pod(&p.victims[0].key, 100, None);
        let low = with_priority("low", "", "1", 1);
        assert!(c.schedule(&PodInfo::of(&low)).is_err());
        // ...but the preemptor itself fits there.
        assert_eq!(c.schedule(&info).unwrap(), "b");
        // Equal priority and preemptionPolicy: Never do not preempt.
        let peer = with_priority("peer", "", "2", 10);
        assert!(c.preempt(&pod_key(&peer), &PodInfo::of(&peer)).is_none());
        let mut never = with_priority("never", "", "2", 1000);
        never["spec"]["preemptionPolicy"] = json!("Never");
        assert!(c.preempt(&pod_key(&never), &PodInfo::of(&never)).is_none());
    }

    #[test]
    fn a_nominated_pod_waits_for_its_terminating_victims_instead_of_preempting_again() {
        let mut c = cache(&[("a", "1"), ("b", "1")]);
        let mut victim = labelled(pod("v", "a", "1", "o"), json!({}), json!({"priority": 1}));
        c.set_pod(&pod_key(&victim), 5, Some(&victim));
        let other = labelled(pod("w", "b", "1", "o"), json!({}), json!({"priority": 1}));
        c.set_pod(&pod_key(&other), 4, Some(&other));
        let mut high = labelled(pod("h", "", "1", "o"), json!({}), json!({"priority": 9}));
        high["status"] = json!({"nominatedNodeName": "a"});
        c.set_pod(&pod_key(&high), 6, Some(&high));
        victim["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        c.set_pod(&pod_key(&victim), 7, Some(&victim));
        assert!(c.preempt(&pod_key(&high), &PodInfo::of(&high)).is_none());
        // Once they are gone, it may preempt again if it has to.
        c.set_pod(&pod_key(&victim), 8, None);
        let replacement = pod("x", "a", "1", "o");
        c.set_pod(&pod_key(&replacement), 9, Some(&replacement));
        let p = c.preempt(&pod_key(&high), &PodInfo::of(&high)).unwrap();
        assert_eq!(p.victims.len(), 1);
    }
}
