//! What a node is sent next: turns one read of the node's shard (its pods) and the configs
//! marked for it into [`SyncBatch`]es.
//!
//! Planning only reads the store (synchronously) and returns batches; the session sends them.
//! Tests drive it against a real store without a network. The rules it implements (why they
//! hold is argued in the hub's module docs):
//!
//! - every pod upsert travels with the current version of each ConfigMap and Secret it
//!   references (or a delete, when one does not exist) in the *same* batch, at most once per
//!   round: the edge applies a batch atomically and drops, at batch boundaries, configs no
//!   cached pod references, so a config must never arrive before its pod;
//! - configs marked for the node that no pod of this round carries (their pods are already on
//!   the edge) go first, in batches that claim the revision the node already had;
//! - a batch holds at most [`MAX_BATCH_OBJECTS`] objects and about [`MAX_BATCH_BYTES`] bytes,
//!   counting configs, and a pod is never split from its configs;
//! - batch revisions never go down, and only the last batch claims the round's revision.

use crate::config_index::{config_refs, store_key};
use crate::projection;
use crate::store::{ObjectKey, ShardChange, Store, StoreError};
use protocol::codec;
use protocol::messages::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use tracing::error;

/// Largest number of objects (pods and configs) in one delta batch; larger deltas are split.
pub const MAX_BATCH_OBJECTS: usize = 256;

/// Bytes of objects after which a delta batch is closed: well under the codec's frame limit,
/// since ConfigMaps and Secrets may be up to 1 MiB each.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Room left for the batch envelope when deciding whether a pod and its configs can travel at
/// all (they must share one frame).
const FRAME_HEADROOM: usize = 64 * 1024;

/// One object to send (boxed: a pod's projection is large beside a reference).
enum Change {
    Upsert(Box<Upsert>),
    Delete(ObjectRef),
}

/// What the store holds for a pod of the node's shard.
enum PodRead {
    /// Still on the node: its upsert and the configs it references.
    Present(Box<Upsert>, BTreeSet<ObjectRef>),
    /// Deleted, or moved to another node.
    Gone,
    /// Cannot be projected (reported; skipped).
    Broken,
}

async fn read_pod(store: &dyn Store, node: &str, key: &ObjectKey) -> Result<PodRead, StoreError> {
    let Some(stored) = store.get(key).await? else {
        return Ok(PodRead::Gone);
    };
    if projection::node_of(key, &stored.value).as_deref() != Some(node) {
        return Ok(PodRead::Gone);
    }
    match projection::edge_pod(&stored.value) {
        Ok(pod) => {
            let refs = config_refs(&pod);
            Ok(PodRead::Present(
                Box::new(Upsert {
                    revision: stored.revision,
                    object: EdgeObject::Pod(pod),
                }),
                refs,
            ))
        }
        Err(e) => {
            error!(error = %e, "skipping object that cannot be projected; fix or delete it");
            Ok(PodRead::Broken)
        }
    }
}

/// The current state of a config for the node: its upsert, a delete if it does not exist, or
/// nothing if its revision is not above `newer_than` (the node has it) or it cannot be
/// projected (reported).
async fn read_config(
    store: &dyn Store,
    r: &ObjectRef,
    newer_than: u64,
) -> Result<Option<Change>, StoreError> {
    let Some(key) = store_key(r) else {
        return Ok(None);
    };
    match store.get(&key).await? {
        None => Ok(Some(Change::Delete(r.clone()))),
        Some(s) if s.revision <= newer_than => Ok(None),
        Some(s) => match projection::edge_config(r.kind, &s.value) {
            Ok(object) => Ok(Some(Change::Upsert(Box::new(Upsert {
                revision: s.revision,
                object,
            })))),
            Err(e) => {
                error!(error = %e, "skipping object that cannot be projected; fix or delete it");
                Ok(None)
            }
        },
    }
}

/// Objects that must travel in one batch (a pod and its configs), and the revision a batch
/// ending with them may claim.
struct Unit {
    claim: u64,
    what: String,
    upserts: Vec<Upsert>,
    deletes: Vec<ObjectRef>,
    bytes: usize,
}

impl Unit {
    fn new(claim: u64, what: String) -> Self {
        Self {
            claim,
            what,
            upserts: Vec::new(),
            deletes: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, change: Change) {
        match change {
            Change::Upsert(u) => {
                // An upsert too large to encode can never travel: count it as over any limit.
                self.bytes = self
                    .bytes
                    .saturating_add(codec::encode(&*u).map_or(usize::MAX, |b| b.len()));
                self.upserts.push(*u);
            }
            Change::Delete(r) => {
                self.bytes += r.namespace.len() + r.name.len() + 32;
                self.deletes.push(r);
            }
        }
    }

    fn objects(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// Packs units into batches under both budgets; the last batch claims `upto`.
fn chunk(units: Vec<Unit>, upto: u64) -> Vec<SyncBatch> {
    let mut out = Vec::new();
    let mut current: Option<(SyncBatch, usize, usize)> = None;
    for unit in units {
        if unit.bytes > codec::MAX_FRAME_LEN - FRAME_HEADROOM {
            error!(object = %unit.what, bytes = unit.bytes,
                "not sent: with the ConfigMaps and Secrets it references it exceeds one sync frame; reference fewer or smaller ones");
            metrics::counter!("skerry_hub_objects_too_large_total").increment(1);
            continue;
        }
        if let Some((_, n, bytes)) = &current {
            if n + unit.objects() > MAX_BATCH_OBJECTS || bytes + unit.bytes > MAX_BATCH_BYTES {
                out.extend(current.take().map(|(b, ..)| b));
            }
        }
        let (batch, n, bytes) = current.get_or_insert_with(|| {
            (
                SyncBatch {
                    revision: 0,
                    snapshot: false,
                    more: false,
                    upserts: Vec::new(),
                    deletes: Vec::new(),
                },
                0,
                0,
            )
        });
        batch.revision = unit.claim;
        *n += unit.objects();
        *bytes += unit.bytes;
        batch.upserts.extend(unit.upserts);
        batch.deletes.extend(unit.deletes);
    }
    if let Some((mut last, ..)) = current {
        last.revision = upto;
        out.push(last);
    }
    out
}

/// The snapshot of `node`'s slice: every member pod and every config they reference, in as
/// many parts as the frame budget needs (all flagged `snapshot`, all but the last `more`; the
/// edge applies them as one, see `protocol::assembly`). Missing configs need no delete: a
/// snapshot replaces everything the edge holds. An object too large for any frame is skipped
/// with an error and a metric, as in deltas.
pub async fn snapshot(
    store: &dyn Store,
    node: &str,
    members: &[ObjectKey],
    upto: u64,
    extra: Vec<Upsert>,
    extra_refs: BTreeSet<ObjectRef>,
) -> Result<Vec<SyncBatch>, StoreError> {
    // The network settings and Services first: a pod's sandbox is made with the node's CNI
    // configuration, which the settings carry.
    let mut upserts: Vec<(String, Upsert)> = extra
        .into_iter()
        .map(|u| (u.object.object_ref().to_string(), u))
        .collect();
    let mut refs = extra_refs;
    for key in members {
        if let PodRead::Present(u, r) = read_pod(store, node, key).await? {
            upserts.push((key.to_string(), *u));
            refs.extend(r);
        }
    }
    for r in &refs {
        if let Some(Change::Upsert(u)) = read_config(store, r, 0).await? {
            upserts.push((format!("{r:?}"), *u));
        }
    }
    Ok(split_snapshot(upserts, upto, MAX_BATCH_BYTES))
}

/// Packs a snapshot's upserts into parts of at most `budget` encoded bytes each.
fn split_snapshot(upserts: Vec<(String, Upsert)>, upto: u64, budget: usize) -> Vec<SyncBatch> {
    let part = || SyncBatch {
        revision: upto,
        snapshot: true,
        more: true,
        upserts: Vec::new(),
        deletes: Vec::new(),
    };
    let mut parts = vec![part()];
    let mut bytes = 0usize;
    for (what, u) in upserts {
        let size = codec::encode(&u).map_or(usize::MAX, |b| b.len());
        if size > codec::MAX_FRAME_LEN - FRAME_HEADROOM {
            error!(object = %what, bytes = size,
                "not sent: larger than one sync frame; make it smaller");
            metrics::counter!("skerry_hub_objects_too_large_total").increment(1);
            continue;
        }
        let current_empty = parts.last().is_some_and(|p| p.upserts.is_empty());
        if !current_empty && bytes + size > budget {
            parts.push(part());
            bytes = 0;
        }
        bytes += size;
        if let Some(p) = parts.last_mut() {
            p.upserts.push(u);
        }
    }
    if let Some(last) = parts.last_mut() {
        last.more = false;
    }
    parts
}

/// One round of deltas for a node.
pub struct Round<'a> {
    /// The node.
    pub node: &'a str,
    /// It has everything up to here.
    pub sent: u64,
    /// The round sends changes up to here, and the last batch claims it.
    pub upto: u64,
    /// Changes of the node's shard (its pods).
    pub changes: &'a [ShardChange],
    /// Changes of the network shard (Services and EndpointSlices), empty for a v4 edge.
    pub network_changes: &'a [ShardChange],
    /// Configs to send, each only if its revision is above the given one, or deleted if it
    /// does not exist; only configs the node references.
    pub marked: Vec<(ObjectRef, u64)>,
    /// Upserts to send first, claiming `sent` (the node's network settings).
    pub extra: Vec<Upsert>,
    /// The node's Ingress set, when it changed: one unit claiming `sent`.
    pub ingress: Option<IngressChange>,
}

/// What a round sends of the node's Ingress set.
pub enum IngressChange {
    /// The set, and the TLS Secrets it names, each at its current version (or deleted if
    /// missing).
    Set(Box<Upsert>, Vec<ObjectRef>),
    /// The node serves nothing: a delete of the set it may hold (a no-op if it holds none).
    Clear(ObjectRef),
}

/// The latest change per key up to `upto`, in revision order of that latest change.
fn latest(changes: &[ShardChange], upto: u64) -> Vec<(&ObjectKey, u64)> {
    let mut last: HashMap<&ObjectKey, u64> = HashMap::new();
    for c in changes.iter().filter(|c| c.revision <= upto) {
        last.insert(&c.key, c.revision);
    }
    let mut keys: Vec<(&ObjectKey, u64)> = last.into_iter().collect();
    keys.sort_by_key(|(_, r)| *r);
    keys
}

/// The delta batches of one round: the pod changes up to `upto` with their configs, the
/// network changes, and the marked configs. Units go out in the order of the revision they
/// claim, whatever shard they come from, so that no batch vouches for a change of either
/// shard that has not been sent.
pub async fn delta(store: &dyn Store, round: Round<'_>) -> Result<Vec<SyncBatch>, StoreError> {
    let Round {
        node,
        sent,
        upto,
        changes,
        network_changes,
        marked,
        extra,
        ingress,
    } = round;
    let mut pods = Vec::new();
    for (key, rev) in latest(changes, upto) {
        pods.push((key, rev, read_pod(store, node, key).await?));
    }
    let with_pods: HashSet<ObjectRef> = pods
        .iter()
        .filter_map(|(_, _, read)| match read {
            PodRead::Present(_, refs) => Some(refs.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut included: HashSet<ObjectRef> = HashSet::new();
    let mut units = Vec::new();
    for u in extra {
        let mut unit = Unit::new(sent, u.object.object_ref().to_string());
        unit.push(Change::Upsert(Box::new(u)));
        units.push(unit);
    }
    match ingress {
        Some(IngressChange::Set(set, refs)) => {
            let mut unit = Unit::new(sent, set.object.object_ref().to_string());
            unit.push(Change::Upsert(set));
            for r in refs {
                if included.insert(r.clone()) {
                    if let Some(change) = read_config(store, &r, 0).await? {
                        unit.push(change);
                    }
                }
            }
            units.push(unit);
        }
        Some(IngressChange::Clear(r)) => {
            let mut unit = Unit::new(sent, r.to_string());
            unit.push(Change::Delete(r));
            units.push(unit);
        }
        None => {}
    }
    let mut marked = marked;
    marked.sort();
    for (r, newer_than) in marked {
        if with_pods.contains(&r) || !included.insert(r.clone()) {
            continue;
        }
        if let Some(change) = read_config(store, &r, newer_than).await? {
            let mut unit = Unit::new(sent, r.to_string());
            unit.push(change);
            units.push(unit);
        }
    }
    for (key, rev, read) in pods {
        let mut unit = Unit::new(rev, format!("pod {}/{}", key.namespace, key.name));
        match read {
            PodRead::Present(upsert, refs) => {
                unit.push(Change::Upsert(upsert));
                for r in refs {
                    if included.insert(r.clone()) {
                        if let Some(change) = read_config(store, &r, 0).await? {
                            unit.push(change);
                        }
                    }
                }
            }
            PodRead::Gone => unit.push(Change::Delete(ObjectRef {
                kind: ObjectKind::Pod,
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            })),
            PodRead::Broken => continue,
        }
        units.push(unit);
    }
    for (key, rev) in latest(network_changes, upto) {
        if let Some(change) = read_network(store, key).await? {
            let mut unit = Unit::new(rev, key.to_string());
            unit.push(change);
            units.push(unit);
        }
    }
    // Stable: the units claiming `sent` stay first, pods keep their order.
    units.sort_by_key(|u| u.claim);
    Ok(chunk(units, upto))
}

/// The kind a network-shard key holds.
fn network_kind(key: &ObjectKey) -> ObjectKind {
    match key.resource.as_str() {
        "services" => ObjectKind::Service,
        _ => ObjectKind::EndpointSlice,
    }
}

/// The current state of a Service or EndpointSlice: its upsert, a delete when it is gone, or
/// nothing when it cannot be projected (reported).
async fn read_network(store: &dyn Store, key: &ObjectKey) -> Result<Option<Change>, StoreError> {
    let kind = network_kind(key);
    let Some(stored) = store.get(key).await? else {
        return Ok(Some(Change::Delete(ObjectRef {
            kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        })));
    };
    let object = match kind {
        ObjectKind::Service => projection::edge_service(&stored.value).map(EdgeObject::Service),
        _ => projection::edge_endpoint_slice(&stored.value).map(EdgeObject::EndpointSlice),
    };
    match object {
        Ok(object) => Ok(Some(Change::Upsert(Box::new(Upsert {
            revision: stored.revision,
            object,
        })))),
        Err(e) => {
            error!(error = %e, "skipping object that cannot be projected; fix or delete it");
            Ok(None)
        }
    }
}

/// Every Service and EndpointSlice of the network shard's `members`, for a snapshot.
pub async fn network_upserts(
    store: &dyn Store,
    members: &[ObjectKey],
) -> Result<Vec<Upsert>, StoreError> {
    let mut out = Vec::with_capacity(members.len());
    for key in members {
        if let Some(Change::Upsert(u)) = read_network(store, key).await? {
            out.push(*u);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ShardRead, SledStore};
    use protocol::config::EdgeSecret;
    use serde_json::{json, Value};

    /// A pods-only round, as a v4 edge gets.
    async fn delta_of(
        store: &dyn Store,
        node: &str,
        sent: u64,
        upto: u64,
        changes: &[ShardChange],
        marked: Vec<(ObjectRef, u64)>,
    ) -> Result<Vec<SyncBatch>, StoreError> {
        delta(
            store,
            Round {
                node,
                sent,
                upto,
                changes,
                network_changes: &[],
                marked,
                extra: Vec::new(),
                ingress: None,
            },
        )
        .await
    }

    struct Fixture {
        store: SledStore,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), projection::shard).unwrap();
        Fixture { store, _dir: dir }
    }

    fn pod(name: &str, node: &str, secrets: &[&str], config_maps: &[&str]) -> Value {
        let env: Vec<Value> = secrets
            .iter()
            .map(|s| json!({"name": format!("E_{}", s.replace('-', "_")), "valueFrom": {"secretKeyRef": {"name": s, "key": "k"}}}))
            .collect();
        let volumes: Vec<Value> = config_maps
            .iter()
            .map(|c| json!({"name": c, "configMap": {"name": c}}))
            .collect();
        json!({"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "env": env}], "volumes": volumes}})
    }

    fn secret(name: &str, bytes: usize) -> Value {
        let value = k8s_openapi::ByteString(vec![b's'; bytes]);
        json!({"metadata": {"name": name, "namespace": "default"}, "type": "Opaque", "data": {"k": value}})
    }

    fn config_map(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "data": {"a": "1"}})
    }

    fn r(kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    impl Fixture {
        async fn put(&self, resource: &str, value: Value) -> u64 {
            let name = value["metadata"]["name"].as_str().unwrap().to_string();
            let key = ObjectKey::new(resource, "default", name);
            match self.store.get(&key).await.unwrap() {
                Some(_) => self.store.update(&key, value, None).await.unwrap().revision,
                None => self.store.create(&key, value).await.unwrap().revision,
            }
        }

        async fn changes(&self, node: &str, after: u64) -> (Vec<ShardChange>, u64) {
            match self.store.read_shard(node, after).await.unwrap() {
                ShardRead::Delta { changes, upto } => (changes, upto),
                ShardRead::Snapshot { .. } => panic!("expected a delta"),
            }
        }
    }

    fn refs_of(b: &SyncBatch) -> Vec<ObjectRef> {
        b.upserts.iter().map(|u| u.object.object_ref()).collect()
    }

    #[tokio::test]
    async fn a_pod_carries_its_configs_or_their_deletes_in_its_batch() {
        let f = fixture();
        let s_rev = f.put("secrets", secret("db", 8)).await;
        let start = f.put("configmaps", config_map("unrelated")).await;
        f.put("pods", pod("web", "n1", &["db"], &["missing"])).await;
        let (changes, upto) = f.changes("n1", start).await;
        let batches = delta_of(&f.store, "n1", start, upto, &changes, vec![])
            .await
            .unwrap();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.revision, upto);
        assert_eq!(
            refs_of(b),
            [r(ObjectKind::Pod, "web"), r(ObjectKind::Secret, "db")]
        );
        assert_eq!(
            b.upserts[1].revision, s_rev,
            "a config carries its own revision"
        );
        let EdgeObject::Secret(EdgeSecret { data, .. }) = &b.upserts[1].object else {
            panic!()
        };
        assert_eq!(data["k"], vec![b's'; 8]);
        assert_eq!(b.deletes, [r(ObjectKind::ConfigMap, "missing")]);
    }

    #[tokio::test]
    async fn a_node_gets_its_secret_decrypted_from_an_encrypting_store() {
        use crate::store::encryption::{Encryption, EncryptionConfig, KeySpec};
        let dir = tempfile::tempdir().unwrap();
        let cfg = EncryptionConfig::initial(KeySpec::new("key1", vec![9; 32]).unwrap());
        let store = SledStore::open_with(
            dir.path(),
            projection::shard,
            std::sync::Arc::new(Encryption::new(&cfg)),
        )
        .unwrap();
        let f = Fixture { store, _dir: dir };
        let start = f.put("secrets", secret("db", 8)).await;
        let raw = f
            .store
            .raw_for_tests(&ObjectKey::new("secrets", "default", "db"));
        assert!(raw[8..].starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        f.put("pods", pod("web", "n1", &["db"], &[])).await;
        let (changes, upto) = f.changes("n1", start).await;
        let batches = delta_of(&f.store, "n1", start, upto, &changes, vec![])
            .await
            .unwrap();
        let EdgeObject::Secret(EdgeSecret { data, .. }) = &batches[0].upserts[1].object else {
            panic!(
                "expected the pod's Secret second: {:?}",
                refs_of(&batches[0])
            )
        };
        assert_eq!(data["k"], vec![b's'; 8]);
    }

    #[tokio::test]
    async fn marked_configs_are_sent_once_only_if_newer_and_deleted_if_gone() {
        let f = fixture();
        let old = f.put("configmaps", config_map("old")).await;
        let new = f.put("configmaps", config_map("new")).await;
        let (changes, upto) = f.changes("n1", new).await;
        assert!(changes.is_empty());
        let marked = vec![
            (r(ObjectKind::ConfigMap, "old"), old),
            (r(ObjectKind::ConfigMap, "new"), old),
            (r(ObjectKind::ConfigMap, "new"), 0),
            (r(ObjectKind::Secret, "gone"), old),
        ];
        let batches = delta_of(&f.store, "n1", new, upto, &changes, marked)
            .await
            .unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].revision, upto);
        assert_eq!(refs_of(&batches[0]), [r(ObjectKind::ConfigMap, "new")]);
        assert_eq!(batches[0].deletes, [r(ObjectKind::Secret, "gone")]);
        // Nothing to send: no batch at all.
        let none = delta_of(
            &f.store,
            "n1",
            new,
            upto,
            &changes,
            vec![(r(ObjectKind::ConfigMap, "old"), old)],
        )
        .await
        .unwrap();
        assert!(none.is_empty());
    }

    /// A marked config whose pod is in the same round must not go ahead of it: the edge would
    /// drop it at the batch boundary (no cached pod references it yet) and, deduplicated, it
    /// would then be missing from the pod's batch.
    #[tokio::test]
    async fn a_marked_config_waits_for_its_pod_across_chunks() {
        let f = fixture();
        f.put("secrets", secret("late", 4)).await;
        let start = f.store.revision();
        for i in 0..(MAX_BATCH_OBJECTS + 10) {
            f.put("pods", pod(&format!("p{i}"), "n1", &[], &[])).await;
        }
        f.put("pods", pod("user", "n1", &["late"], &[])).await;
        let (changes, upto) = f.changes("n1", start).await;
        let batches = delta_of(
            &f.store,
            "n1",
            start,
            upto,
            &changes,
            vec![(r(ObjectKind::Secret, "late"), 0)],
        )
        .await
        .unwrap();
        assert_eq!(batches.len(), 2);
        assert!(batches[0].upserts.len() <= MAX_BATCH_OBJECTS);
        assert!(batches[0].revision < batches[1].revision);
        assert_eq!(batches[1].revision, upto);
        let first = refs_of(&batches[0]);
        let second = refs_of(&batches[1]);
        assert!(!first.contains(&r(ObjectKind::Secret, "late")));
        let at = second
            .iter()
            .position(|x| *x == r(ObjectKind::Pod, "user"))
            .unwrap();
        assert_eq!(second[at + 1], r(ObjectKind::Secret, "late"));
        let total: usize = batches.iter().map(|b| b.upserts.len()).sum();
        assert_eq!(
            total,
            MAX_BATCH_OBJECTS + 12,
            "every pod and the secret, once"
        );
    }

    #[tokio::test]
    async fn shared_configs_travel_once_and_big_ones_split_batches_by_bytes() {
        let f = fixture();
        let start = f.put("configmaps", config_map("shared")).await;
        for i in 0..5 {
            f.put("secrets", secret(&format!("big{i}"), 900 * 1024))
                .await;
            f.put(
                "pods",
                pod(&format!("p{i}"), "n1", &[&format!("big{i}")], &["shared"]),
            )
            .await;
        }
        let (changes, upto) = f.changes("n1", start).await;
        let batches = delta_of(&f.store, "n1", start, upto, &changes, vec![])
            .await
            .unwrap();
        assert!(batches.len() >= 2, "{} batches", batches.len());
        let mut last_rev = start;
        let mut shared = 0;
        for b in &batches {
            let size = codec::encode_frame(&CloudMessage::Sync(b.clone()))
                .unwrap()
                .len();
            assert!(size <= MAX_BATCH_BYTES + FRAME_HEADROOM, "{size} bytes");
            assert!(b.revision >= last_rev);
            last_rev = b.revision;
            let refs = refs_of(b);
            shared += refs
                .iter()
                .filter(|x| **x == r(ObjectKind::ConfigMap, "shared"))
                .count();
            // Each pod's secret is in the pod's batch.
            for x in &refs {
                if x.kind == ObjectKind::Pod {
                    let i = &x.name[1..];
                    assert!(refs.contains(&r(ObjectKind::Secret, &format!("big{i}"))));
                }
            }
        }
        assert_eq!(shared, 1);
        assert_eq!(last_rev, upto);
    }

    #[tokio::test]
    async fn a_pod_that_left_the_node_is_deleted_without_its_configs() {
        let f = fixture();
        f.put("secrets", secret("mine", 4)).await;
        let start = f.put("pods", pod("web", "n1", &["mine"], &[])).await;
        f.put("pods", pod("web", "n2", &["mine"], &[])).await;
        let (changes, upto) = f.changes("n1", start).await;
        let batches = delta_of(&f.store, "n1", start, upto, &changes, vec![])
            .await
            .unwrap();
        assert_eq!(batches.len(), 1);
        assert!(batches[0].upserts.is_empty());
        assert_eq!(batches[0].deletes, [r(ObjectKind::Pod, "web")]);
    }

    #[tokio::test]
    async fn a_snapshot_holds_every_referenced_config_and_no_deletes() {
        let f = fixture();
        f.put("secrets", secret("s", 4)).await;
        f.put("configmaps", config_map("c")).await;
        f.put("configmaps", config_map("not-referenced")).await;
        f.put("pods", pod("a", "n1", &["s"], &["c", "missing"]))
            .await;
        f.put("pods", pod("b", "n1", &["s"], &[])).await;
        f.put("pods", pod("other", "n2", &[], &["not-referenced"]))
            .await;
        let (members, upto) = match f.store.read_shard("n1", 0).await.unwrap() {
            ShardRead::Snapshot { members, upto } => (members, upto),
            ShardRead::Delta { .. } => panic!("expected a snapshot"),
        };
        let parts = snapshot(&f.store, "n1", &members, upto, vec![], BTreeSet::new())
            .await
            .unwrap();
        assert_eq!(parts.len(), 1, "a small slice fits one frame");
        let b = &parts[0];
        assert!(b.snapshot && !b.more);
        assert_eq!(b.revision, upto);
        let mut refs = refs_of(b);
        refs.sort();
        assert_eq!(
            refs,
            [
                r(ObjectKind::Pod, "a"),
                r(ObjectKind::Pod, "b"),
                r(ObjectKind::ConfigMap, "c"),
                r(ObjectKind::Secret, "s"),
            ]
        );
        assert!(b.deletes.is_empty());

        // Over the budget, the same snapshot comes in parts that reassemble to the whole.
        let upserts: Vec<(String, Upsert)> = b
            .upserts
            .iter()
            .map(|u| (String::new(), u.clone()))
            .collect();
        let parts = split_snapshot(upserts, upto, 1);
        assert_eq!(parts.len(), 4, "one object per part at a 1-byte budget");
        assert!(parts.iter().all(|p| p.snapshot && p.revision == upto));
        assert!(parts[..3].iter().all(|p| p.more));
        assert!(!parts[3].more);
        let mut assembler = protocol::assembly::SnapshotAssembler::new();
        let mut whole = None;
        for p in parts {
            whole = assembler.push(p).unwrap();
        }
        assert_eq!(whole.as_ref(), Some(b));
    }
}
