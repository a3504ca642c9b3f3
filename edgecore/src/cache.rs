//! The edge cache: the node's slice of desired state, durable in sled.
//!
//! This is what lets an edge node run, restart and heal its pods with no cloud at all: on start,
//! edgecore reconciles from here before it even tries to connect. A sync batch is applied in one
//! sled transaction together with the revision it brings, and flushed, before the link acks it:
//! an ack always means "durable", so a crash can never make the cloud skip a change.
//!
//! Pods, ConfigMaps and Secrets live in trees of their own, under the same rules: an upsert older
//! than the cached version is ignored (a resend after a reconnect), a delete of an unknown object
//! is a no-op, and a snapshot replaces everything. ConfigMaps and Secrets that no cached pod
//! references any more (env `valueFrom`, `envFrom`, configMap and secret volumes) are dropped in
//! the same transaction, so that a node does not keep the secrets of pods it no longer runs.
//!
//! Entries are encoded with the protocol codec; an entry that cannot be decoded (disk damage,
//! an old format) is reported and skipped, never fatal, and the next snapshot replaces it.

use protocol::codec;
use protocol::config::{EdgeConfigMap, EdgeSecret};
use protocol::messages::{EdgeObject, ObjectKind, ObjectRef, SyncBatch};
use protocol::pod::EdgePod;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

const ACKED_KEY: &[u8] = b"acked_revision";
/// Layout version of the cache. Version 2 added ConfigMaps and Secrets: a cache written by an
/// older edgecore has none, and its acked revision would make the hub skip every config written
/// before it, so opening such a cache forgets the acked revision and the node resyncs in full.
const SCHEMA_KEY: &[u8] = b"schema";
const SCHEMA: u32 = 2;

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// sled failed.
    #[error("edge cache failure: {0}; check disk space and permissions of the data dir")]
    Backend(String),
    /// A batch could not be encoded.
    #[error("cannot encode cache entry: {0}")]
    Encode(#[from] codec::CodecError),
}

fn backend(e: impl std::fmt::Display) -> CacheError {
    CacheError::Backend(e.to_string())
}

/// A cached object with the store revision at which it took this value.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    revision: u64,
    object: T,
}

/// The node's ConfigMaps and Secrets, as the pods see them: one value, compared and swapped as a
/// whole, so that a pod worker reads the configuration of one sync, never a mix of two. `Debug`
/// shows secret keys but never their values (see [`EdgeSecret`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSet {
    config_maps: BTreeMap<(String, String), EdgeConfigMap>,
    secrets: BTreeMap<(String, String), EdgeSecret>,
}

impl ConfigSet {
    /// ConfigMap `name` of `namespace`, if the node has it.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&EdgeConfigMap> {
        self.config_maps
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Secret `name` of `namespace`, if the node has it.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&EdgeSecret> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }

    /// Adds or replaces a ConfigMap.
    pub fn insert_config_map(&mut self, config_map: EdgeConfigMap) {
        self.config_maps.insert(
            (config_map.namespace.clone(), config_map.name.clone()),
            config_map,
        );
    }

    /// Adds or replaces a Secret.
    pub fn insert_secret(&mut self, secret: EdgeSecret) {
        self.secrets
            .insert((secret.namespace.clone(), secret.name.clone()), secret);
    }

    /// Removes a ConfigMap or Secret (a pod reference is not a config: ignored).
    pub fn remove(&mut self, object: &ObjectRef) {
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            ObjectKind::ConfigMap => {
                self.config_maps.remove(&key);
            }
            ObjectKind::Secret => {
                self.secrets.remove(&key);
            }
            ObjectKind::Pod => {}
        }
    }

    /// Number of ConfigMaps and Secrets.
    pub fn len(&self) -> usize {
        self.config_maps.len() + self.secrets.len()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects that differ between `self` and `other`: added, removed or changed.
    pub fn changes_from(&self, other: &ConfigSet) -> BTreeSet<ObjectRef> {
        fn diff<T: PartialEq>(
            kind: ObjectKind,
            a: &BTreeMap<(String, String), T>,
            b: &BTreeMap<(String, String), T>,
            out: &mut BTreeSet<ObjectRef>,
        ) {
            let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
            for key in keys {
                if a.get(key) != b.get(key) {
                    out.insert(ObjectRef {
                        kind,
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                    });
                }
            }
        }
        let mut out = BTreeSet::new();
        diff(
            ObjectKind::ConfigMap,
            &self.config_maps,
            &other.config_maps,
            &mut out,
        );
        diff(ObjectKind::Secret, &self.secrets, &other.secrets, &mut out);
        out
    }
}

/// Every ConfigMap and Secret `pod` references (see [`EdgePod::config_refs`], shared with the
/// hub so that both ends agree on a node's configs).
pub fn config_refs(pod: &EdgePod) -> BTreeSet<ObjectRef> {
    pod.config_refs()
}

/// The desired-state seam: what the link writes and the pod manager reads.
pub trait DesiredState: Send + Sync + 'static {
    /// Highest revision made durable (0 for a fresh node).
    fn acked_revision(&self) -> u64;
    /// Every cached pod; corrupt entries are logged and skipped.
    fn pods(&self) -> Vec<EdgePod>;
    /// Every cached ConfigMap and Secret; corrupt entries are logged and skipped.
    fn configs(&self) -> ConfigSet;
}

/// sled-backed cache. The same database also holds the status outbox (see `crate::report`).
#[derive(Clone)]
pub struct Cache {
    db: sled::Db,
    pods: sled::Tree,
    config_maps: sled::Tree,
    secrets: sled::Tree,
    meta: sled::Tree,
}

fn object_key(namespace: &str, name: &str) -> Vec<u8> {
    format!("{namespace}/{name}").into_bytes()
}

/// What a batch does to one entry.
enum Change {
    /// Write this encoded entry.
    Put(Vec<u8>),
    /// Remove the entry.
    Remove,
}

/// The changes a batch makes, by tree and key, and the pods it puts (for the garbage
/// collection of configs).
#[derive(Default)]
struct Plan {
    changes: BTreeMap<(ObjectKind, Vec<u8>), Change>,
    /// Revisions of the upserts accepted so far (a batch may carry one object twice).
    accepted: HashMap<(ObjectKind, Vec<u8>), u64>,
    /// Pods the batch writes, by key.
    pods: HashMap<Vec<u8>, EdgePod>,
}

impl Cache {
    /// Opens the cache database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            CacheError::Backend(format!(
                "cannot open {}: {e}; is another edgecore running on this data dir?",
                dir.display()
            ))
        })?;
        let pods = db.open_tree("pods").map_err(backend)?;
        let config_maps = db.open_tree("configmaps").map_err(backend)?;
        let secrets = db.open_tree("secrets").map_err(backend)?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let schema = meta
            .get(SCHEMA_KEY)
            .map_err(backend)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        if schema != Some(SCHEMA) {
            if meta.get(ACKED_KEY).map_err(backend)?.is_some() {
                tracing::info!(
                    from = ?schema,
                    to = SCHEMA,
                    "cache layout upgraded; the node resyncs its slice in full once"
                );
            }
            meta.remove(ACKED_KEY).map_err(backend)?;
            meta.insert(SCHEMA_KEY, &SCHEMA.to_be_bytes())
                .map_err(backend)?;
            db.flush().map_err(backend)?;
        }
        Ok(Self {
            db,
            pods,
            config_maps,
            secrets,
            meta,
        })
    }

    /// The underlying database, for other trees of the same node (the outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn tree(&self, kind: ObjectKind) -> &sled::Tree {
        match kind {
            ObjectKind::Pod => &self.pods,
            ObjectKind::ConfigMap => &self.config_maps,
            ObjectKind::Secret => &self.secrets,
        }
    }

    /// Revision of the cached entry `key` of `kind`, if there is a readable one (a corrupt
    /// entry is overwritten by any upsert).
    fn cached_revision(&self, kind: ObjectKind, key: &[u8]) -> Result<Option<u64>, CacheError> {
        let Some(value) = self.tree(kind).get(key).map_err(backend)? else {
            return Ok(None);
        };
        Ok(match kind {
            ObjectKind::Pod => codec::decode::<Cached<EdgePod>>(&value).map(|c| c.revision),
            ObjectKind::ConfigMap => {
                codec::decode::<Cached<EdgeConfigMap>>(&value).map(|c| c.revision)
            }
            ObjectKind::Secret => codec::decode::<Cached<EdgeSecret>>(&value).map(|c| c.revision),
        }
        .ok())
    }

    /// Applies a batch atomically with its revision and flushes. Upserts older than what is
    /// cached are ignored (a resend after a reconnect); deletes of unknown objects are no-ops;
    /// ConfigMaps and Secrets no pod references any more are dropped.
    pub async fn apply(&self, batch: &SyncBatch) -> Result<(), CacheError> {
        let mut plan = Plan::default();
        // Every object the batch names, even with a stale revision: a snapshot keeps them.
        let mut named: HashSet<(ObjectKind, Vec<u8>)> = HashSet::new();
        for up in &batch.upserts {
            let object = up.object.object_ref();
            let key = object_key(&object.namespace, &object.name);
            let slot = (object.kind, key.clone());
            named.insert(slot.clone());
            let newer = match plan.accepted.get(&slot) {
                Some(rev) => Some(*rev),
                None => self.cached_revision(object.kind, &key)?,
            };
            if newer.is_some_and(|rev| rev > up.revision) {
                continue;
            }
            let value = match &up.object {
                EdgeObject::Pod(pod) => {
                    plan.pods.insert(key.clone(), pod.clone());
                    codec::encode(&Cached {
                        revision: up.revision,
                        object: pod,
                    })?
                }
                EdgeObject::ConfigMap(config_map) => codec::encode(&Cached {
                    revision: up.revision,
                    object: config_map,
                })?,
                EdgeObject::Secret(secret) => codec::encode(&Cached {
                    revision: up.revision,
                    object: secret,
                })?,
            };
            plan.accepted.insert(slot.clone(), up.revision);
            plan.changes.insert(slot, Change::Put(value));
        }
        for del in &batch.deletes {
            let key = object_key(&del.namespace, &del.name);
            if del.kind == ObjectKind::Pod {
                plan.pods.remove(&key);
            }
            plan.changes.insert((del.kind, key), Change::Remove);
        }
        if batch.snapshot {
            for kind in [ObjectKind::Pod, ObjectKind::ConfigMap, ObjectKind::Secret] {
                for entry in self.tree(kind).iter().keys() {
                    let key = entry.map_err(backend)?.to_vec();
                    if !named.contains(&(kind, key.clone())) {
                        plan.changes.insert((kind, key), Change::Remove);
                    }
                }
            }
        }
        self.collect_garbage(&mut plan)?;

        let rev = batch.revision;
        let result: Result<(), TransactionError<()>> =
            (&self.pods, &self.config_maps, &self.secrets, &self.meta).transaction(
                |(pods, config_maps, secrets, meta)| {
                    for ((kind, key), change) in &plan.changes {
                        let tree = match kind {
                            ObjectKind::Pod => pods,
                            ObjectKind::ConfigMap => config_maps,
                            ObjectKind::Secret => secrets,
                        };
                        match change {
                            Change::Put(value) => {
                                tree.insert(key.as_slice(), value.as_slice())?;
                            }
                            Change::Remove => {
                                tree.remove(key.as_slice())?;
                            }
                        }
                    }
                    meta.insert(ACKED_KEY, &rev.to_be_bytes())?;
                    Ok::<(), ConflictableTransactionError<()>>(())
                },
            );
        result.map_err(|e| backend(format!("{e:?}")))?;
        self.db.flush_async().await.map_err(backend)?;
        Ok(())
    }

    /// Adds to `plan` the removal of every ConfigMap and Secret that no pod references once the
    /// plan is applied. A corrupt pod entry references nothing: it does not run either.
    fn collect_garbage(&self, plan: &mut Plan) -> Result<(), CacheError> {
        let mut referenced: HashSet<(ObjectKind, Vec<u8>)> = HashSet::new();
        let mut add_refs = |pod: &EdgePod| {
            for object in config_refs(pod) {
                referenced.insert((object.kind, object_key(&object.namespace, &object.name)));
            }
        };
        for pod in plan.pods.values() {
            add_refs(pod);
        }
        for entry in self.pods.iter() {
            let (key, value) = entry.map_err(backend)?;
            if plan.changes.contains_key(&(ObjectKind::Pod, key.to_vec())) {
                continue; // Replaced or removed by the batch: its new version counts.
            }
            if let Ok(cached) = codec::decode::<Cached<EdgePod>>(&value) {
                add_refs(&cached.object);
            }
        }
        for kind in [ObjectKind::ConfigMap, ObjectKind::Secret] {
            let mut present: BTreeSet<Vec<u8>> = BTreeSet::new();
            for entry in self.tree(kind).iter().keys() {
                present.insert(entry.map_err(backend)?.to_vec());
            }
            for ((k, key), change) in &plan.changes {
                if *k == kind {
                    match change {
                        Change::Put(_) => present.insert(key.clone()),
                        Change::Remove => present.remove(key),
                    };
                }
            }
            for key in present {
                if !referenced.contains(&(kind, key.clone())) {
                    tracing::debug!(kind = ?kind, object = %String::from_utf8_lossy(&key),
                                    "dropping a config no cached pod references");
                    plan.changes.insert((kind, key), Change::Remove);
                }
            }
        }
        Ok(())
    }

    /// Decodes every entry of `tree`, logging and skipping corrupt ones.
    fn read_all<T: serde::de::DeserializeOwned>(tree: &sled::Tree, what: &str) -> Vec<T> {
        let mut out = Vec::new();
        for entry in tree.iter() {
            match entry {
                Ok((k, v)) => match codec::decode::<Cached<T>>(&v) {
                    Ok(c) => out.push(c.object),
                    Err(e) => {
                        tracing::error!(kind = what, key = %String::from_utf8_lossy(&k), error = %e, "skipping corrupt cache entry; the next sync from the cloud replaces it")
                    }
                },
                Err(e) => tracing::error!(kind = what, error = %e, "cannot read cache entry"),
            }
        }
        out
    }
}

impl DesiredState for Cache {
    fn acked_revision(&self) -> u64 {
        match self.meta.get(ACKED_KEY) {
            Ok(Some(v)) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            Ok(Some(_)) => {
                tracing::error!("corrupt acked revision in the cache; resyncing from scratch");
                0
            }
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(error = %e, "cannot read acked revision; resyncing from scratch");
                0
            }
        }
    }

    fn pods(&self) -> Vec<EdgePod> {
        Self::read_all(&self.pods, "pod")
    }

    fn configs(&self) -> ConfigSet {
        let mut set = ConfigSet::default();
        for config_map in Self::read_all::<EdgeConfigMap>(&self.config_maps, "configmap") {
            set.insert_config_map(config_map);
        }
        for secret in Self::read_all::<EdgeSecret>(&self.secrets, "secret") {
            set.insert_secret(secret);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::Upsert;
    use protocol::pod::RestartPolicy;
    use protocol::pod::{EnvFromKind, EnvValue, VolumeSource};

    /// Opens the cache in `dir`, waiting (up to 5 s) for a handle dropped just before to
    /// release sled's file lock: a flush still running on a blocking thread holds the database
    /// a moment after the `Cache` that started it is gone.
    fn open(dir: &Path) -> Cache {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Cache::open(dir) {
                Ok(c) => return c,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn pod(name: &str, image: &str) -> EdgePod {
        EdgePod {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: Default::default(),
            containers: vec![protocol::pod::EdgeContainer {
                name: "c".into(),
                image: image.into(),
                image_pull_policy: "Never".into(),
                command: vec!["sleep".into(), "1".into()],
                ..Default::default()
            }],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 1,
            volumes: vec![],
            deletion_grace_period_seconds: None,
        }
    }

    fn up(rev: u64, p: EdgePod) -> Upsert {
        Upsert {
            revision: rev,
            object: EdgeObject::Pod(p),
        }
    }

    #[tokio::test]
    async fn batches_apply_idempotently_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = open(dir.path());
            assert_eq!(c.acked_revision(), 0);
            c.apply(&SyncBatch {
                revision: 5,
                snapshot: true,
                more: false,
                upserts: vec![up(3, pod("a", "v1")), up(5, pod("b", "v1"))],
                deletes: vec![],
            })
            .await
            .unwrap();
            // A resend of an older version does not overwrite a newer one.
            c.apply(&SyncBatch {
                revision: 5,
                snapshot: false,
                more: false,
                upserts: vec![up(7, pod("a", "v2"))],
                deletes: vec![],
            })
            .await
            .unwrap();
            c.apply(&SyncBatch {
                revision: 7,
                snapshot: false,
                more: false,
                upserts: vec![up(3, pod("a", "v1"))],
                deletes: vec![ObjectRef {
                    kind: ObjectKind::Pod,
                    namespace: "default".into(),
                    name: "b".into(),
                }],
            })
            .await
            .unwrap();
        }
        let c = open(dir.path());
        assert_eq!(c.acked_revision(), 7);
        let pods = c.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].containers[0].image, "v2");
        // A snapshot drops what it does not list.
        c.apply(&SyncBatch {
            revision: 9,
            snapshot: true,
            more: false,
            upserts: vec![up(8, pod("z", "v1"))],
            deletes: vec![],
        })
        .await
        .unwrap();
        assert_eq!(
            c.pods().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            vec!["z"]
        );
    }

    #[tokio::test]
    async fn corrupt_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        c.apply(&SyncBatch {
            revision: 1,
            snapshot: false,
            more: false,
            upserts: vec![up(1, pod("a", "v1"))],
            deletes: vec![],
        })
        .await
        .unwrap();
        c.pods
            .insert(b"default/broken", b"\xff\xff".to_vec())
            .unwrap();
        assert_eq!(c.pods().len(), 1);
    }

    fn config_map(name: &str, value: &str) -> EdgeConfigMap {
        EdgeConfigMap {
            namespace: "default".into(),
            name: name.into(),
            data: std::collections::BTreeMap::from([("k".into(), value.into())]),
            binary_data: Default::default(),
        }
    }

    fn secret(name: &str, value: &[u8]) -> EdgeSecret {
        EdgeSecret {
            namespace: "default".into(),
            name: name.into(),
            kind: "Opaque".into(),
            data: std::collections::BTreeMap::from([("k".into(), value.to_vec())]),
        }
    }

    /// A pod referencing ConfigMap `cm` through a volume and Secret `s` through `envFrom`.
    fn consumer(name: &str, cm: &str, s: &str) -> EdgePod {
        let mut p = pod(name, "v1");
        p.volumes.push(protocol::pod::Volume {
            name: "cfg".into(),
            source: VolumeSource::ConfigMap {
                name: cm.into(),
                items: vec![],
                default_mode: None,
                optional: false,
            },
        });
        p.containers[0].env_from.push(protocol::pod::EnvFromSource {
            prefix: String::new(),
            source: EnvFromKind::Secret(s.into()),
            optional: false,
        });
        p
    }

    fn cm_up(rev: u64, c: EdgeConfigMap) -> Upsert {
        Upsert {
            revision: rev,
            object: EdgeObject::ConfigMap(c),
        }
    }

    fn secret_up(rev: u64, s: EdgeSecret) -> Upsert {
        Upsert {
            revision: rev,
            object: EdgeObject::Secret(s),
        }
    }

    fn del(kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn batch(revision: u64, upserts: Vec<Upsert>, deletes: Vec<ObjectRef>) -> SyncBatch {
        SyncBatch {
            revision,
            snapshot: false,
            more: false,
            upserts,
            deletes,
        }
    }

    fn cm_value(c: &Cache, name: &str) -> Option<String> {
        c.configs()
            .config_map("default", name)
            .map(|m| m.data["k"].clone())
    }

    #[tokio::test]
    async fn configs_follow_the_revision_rules_of_pods_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = open(dir.path());
            c.apply(&batch(
                4,
                vec![
                    up(2, consumer("p", "cfg", "creds")),
                    cm_up(3, config_map("cfg", "v3")),
                    secret_up(4, secret("creds", b"s4")),
                ],
                vec![],
            ))
            .await
            .unwrap();
            // An older resend does not overwrite; a newer version does.
            c.apply(&batch(5, vec![cm_up(1, config_map("cfg", "v1"))], vec![]))
                .await
                .unwrap();
            assert_eq!(cm_value(&c, "cfg").as_deref(), Some("v3"));
            // Two versions in one batch: the newest wins whatever the order.
            c.apply(&batch(
                8,
                vec![
                    cm_up(8, config_map("cfg", "v8")),
                    cm_up(6, config_map("cfg", "v6")),
                ],
                vec![],
            ))
            .await
            .unwrap();
            assert_eq!(cm_value(&c, "cfg").as_deref(), Some("v8"));
            // Deleting a config that is not there is a no-op, and a ConfigMap delete does not
            // touch a pod or Secret of the same name.
            c.apply(&batch(
                9,
                vec![],
                vec![
                    del(ObjectKind::ConfigMap, "absent"),
                    del(ObjectKind::ConfigMap, "p"),
                    del(ObjectKind::ConfigMap, "creds"),
                ],
            ))
            .await
            .unwrap();
            assert_eq!(c.pods().len(), 1);
        }
        let c = open(dir.path());
        assert_eq!(c.acked_revision(), 9);
        let configs = c.configs();
        assert_eq!(configs.len(), 2);
        assert_eq!(
            configs.config_map("default", "cfg").unwrap().data["k"],
            "v8"
        );
        assert_eq!(configs.secret("default", "creds").unwrap().data["k"], b"s4");
        // A deleted config is gone; the pod that still references it waits for it.
        c.apply(&batch(10, vec![], vec![del(ObjectKind::Secret, "creds")]))
            .await
            .unwrap();
        assert!(c.configs().secret("default", "creds").is_none());
        assert_eq!(c.pods().len(), 1);
    }

    #[tokio::test]
    async fn a_snapshot_replaces_configs_too() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        let mut both = consumer("p", "a", "s");
        both.containers[0].env.push(protocol::pod::EnvVar {
            name: "B".into(),
            value: EnvValue::ConfigMapKey {
                name: "b".into(),
                key: "k".into(),
                optional: true,
            },
        });
        c.apply(&batch(
            3,
            vec![
                up(1, both.clone()),
                cm_up(2, config_map("a", "1")),
                cm_up(3, config_map("b", "1")),
                secret_up(3, secret("s", b"1")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        assert_eq!(c.configs().len(), 3);
        // The snapshot lists a (at an older revision than cached: kept as cached) and s, not b.
        c.apply(&SyncBatch {
            revision: 12,
            snapshot: true,
            more: false,
            upserts: vec![
                up(1, both),
                cm_up(1, config_map("a", "stale")),
                secret_up(11, secret("s", b"2")),
            ],
            deletes: vec![],
        })
        .await
        .unwrap();
        let configs = c.configs();
        assert_eq!(configs.config_map("default", "a").unwrap().data["k"], "1");
        assert!(configs.config_map("default", "b").is_none());
        assert_eq!(configs.secret("default", "s").unwrap().data["k"], b"2");
    }

    #[tokio::test]
    async fn configs_no_pod_references_are_collected_in_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        c.apply(&batch(
            5,
            vec![
                up(1, consumer("one", "shared", "one-creds")),
                up(2, consumer("two", "shared", "two-creds")),
                cm_up(3, config_map("shared", "x")),
                secret_up(4, secret("one-creds", b"1")),
                secret_up(5, secret("two-creds", b"2")),
                // Nobody references this one: never kept.
                cm_up(5, config_map("stray", "x")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        let names = |c: &Cache| {
            let configs = c.configs();
            let mut out = Vec::new();
            for n in ["shared", "stray"] {
                if configs.config_map("default", n).is_some() {
                    out.push(n);
                }
            }
            for n in ["one-creds", "two-creds"] {
                if configs.secret("default", n).is_some() {
                    out.push(n);
                }
            }
            out
        };
        assert_eq!(names(&c), ["shared", "one-creds", "two-creds"]);
        // Pod one leaves: its secret goes with it, the shared map stays for pod two.
        c.apply(&batch(6, vec![], vec![del(ObjectKind::Pod, "one")]))
            .await
            .unwrap();
        assert_eq!(names(&c), ["shared", "two-creds"]);
        // Pod two changes to reference other objects: the old ones go.
        c.apply(&batch(
            7,
            vec![up(7, consumer("two", "new", "new-creds"))],
            vec![],
        ))
        .await
        .unwrap();
        assert!(names(&c).is_empty());
        // A pod with a corrupt entry references nothing.
        c.apply(&batch(
            9,
            vec![
                cm_up(8, config_map("new", "x")),
                secret_up(9, secret("new-creds", b"3")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        assert_eq!(c.configs().len(), 2);
        c.pods.insert(b"default/two", b"\xff".to_vec()).unwrap();
        c.apply(&batch(10, vec![], vec![])).await.unwrap();
        assert!(c.configs().is_empty());
    }

    #[tokio::test]
    async fn corrupt_configs_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path());
        c.apply(&batch(
            2,
            vec![
                up(1, consumer("p", "cfg", "s")),
                cm_up(2, config_map("cfg", "v")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        c.secrets.insert(b"default/s", b"\x01".to_vec()).unwrap();
        let configs = c.configs();
        assert_eq!(configs.len(), 1);
        assert!(configs.config_map("default", "cfg").is_some());
        // Any upsert replaces the corrupt entry, whatever its revision.
        c.apply(&batch(3, vec![secret_up(1, secret("s", b"ok"))], vec![]))
            .await
            .unwrap();
        assert_eq!(c.configs().secret("default", "s").unwrap().data["k"], b"ok");
    }

    #[test]
    fn a_cache_from_before_configs_forgets_its_acked_revision_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree("meta").unwrap();
            meta.insert(ACKED_KEY, &42u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        // sled's flusher thread lets go of the file lock a moment after the last handle drops.
        let reopen = || {
            for _ in 0..100 {
                if let Ok(c) = Cache::open(dir.path()) {
                    return c;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            panic!("cache did not reopen");
        };
        let c = reopen();
        assert_eq!(c.acked_revision(), 0, "an old layout resyncs in full");
        c.meta.insert(ACKED_KEY, &7u64.to_be_bytes()).unwrap();
        c.db.flush().unwrap();
        drop(c);
        let c = reopen();
        assert_eq!(
            c.acked_revision(),
            7,
            "the current layout keeps its revision"
        );
    }

    #[test]
    fn config_refs_cover_env_env_from_and_volumes() {
        let mut p = consumer("p", "vol-cm", "from-secret");
        p.containers[0].env.push(protocol::pod::EnvVar {
            name: "A".into(),
            value: EnvValue::SecretKey {
                name: "key-secret".into(),
                key: "k".into(),
                optional: false,
            },
        });
        p.volumes.push(protocol::pod::Volume {
            name: "tls".into(),
            source: VolumeSource::Secret {
                name: "vol-secret".into(),
                items: vec![],
                default_mode: None,
                optional: true,
            },
        });
        let refs: Vec<String> = config_refs(&p).iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refs,
            [
                "ConfigMap default/vol-cm",
                "Secret default/from-secret",
                "Secret default/key-secret",
                "Secret default/vol-secret",
            ]
        );
    }

    #[test]
    fn config_set_reports_what_changed() {
        let mut a = ConfigSet::default();
        a.insert_config_map(config_map("same", "1"));
        a.insert_config_map(config_map("changed", "1"));
        a.insert_secret(secret("gone", b"1"));
        let mut b = a.clone();
        b.insert_config_map(config_map("changed", "2"));
        b.remove(&del(ObjectKind::Secret, "gone"));
        b.insert_secret(secret("new", b"hunter2"));
        let changed: Vec<String> = b.changes_from(&a).iter().map(|r| r.to_string()).collect();
        assert_eq!(
            changed,
            [
                "ConfigMap default/changed",
                "Secret default/gone",
                "Secret default/new"
            ]
        );
        assert!(a.changes_from(&a).is_empty());
        // Secret values never show in its Debug form.
        let shown = format!("{b:?}");
        assert!(shown.contains("new"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117, 110"),
            "{shown}"
        );
    }
}
