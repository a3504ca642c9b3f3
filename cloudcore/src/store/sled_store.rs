//! The embedded store backend on sled.
//!
//! Trees:
//! - `objects`: encoded [`ObjectKey`] → 8-byte big-endian revision ++ JSON;
//! - `meta`: `revision` → the latest committed revision; `floor:<shard>` → oldest revision a
//!   shard's log still covers (after compaction);
//! - `shard_log`: `shard\0revision(be)` → encoded key, one entry per write that touched the shard;
//! - `shard_members`: `shard\0encoded key` → revision, the shard's current members.
//!
//! Values of Secrets go through [`Encryption`] between the JSON and the revision prefix
//! (`revision ++ k8s:enc:aesgcm:v1:<key>:...` when encryption is on), with the encoded object
//! key as associated data. The other trees hold keys and revisions only, never values.
//!
//! All trees of one write change in one sled transaction, so a crash leaves either the whole
//! write or none of it; the write returns only after `flush`, so what a client was told is durable.

use super::encryption::Encryption;
use super::{Event, ObjectKey, ShardChange, ShardFn, ShardRead, Store, StoreError, Stored};
use async_trait::async_trait;
use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex};

const REVISION_KEY: &[u8] = b"revision";

/// sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    objects: sled::Tree,
    meta: sled::Tree,
    shard_log: sled::Tree,
    shard_members: sled::Tree,
    shard_of: ShardFn,
    /// The value transformer (encryption of Secrets at rest).
    encryption: Arc<Encryption>,
    /// Serialises revision assignment; held only while the transaction runs, not while flushing.
    write_lock: Mutex<()>,
    /// Held by the one writer that is flushing (see [`SledStore::make_durable`]).
    flush_lock: Mutex<()>,
    /// Committed writes not yet announced; the flusher announces them in revision order once
    /// they are durable, so watchers never see a write out of order or one that a crash could
    /// take back, and a cancelled request cannot swallow its write's event.
    pending_events: Mutex<std::collections::BTreeMap<u64, Event>>,
    /// Last assigned revision (may not be flushed yet).
    assigned: AtomicU64,
    /// Last revision known to be durable; what readers are told.
    durable: AtomicU64,
    events: broadcast::Sender<Event>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn shard_prefix(shard: &str) -> Vec<u8> {
    let mut p = shard.as_bytes().to_vec();
    p.push(0);
    p
}

fn shard_log_key(shard: &str, rev: u64) -> Vec<u8> {
    let mut k = shard_prefix(shard);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

fn member_key(shard: &str, key: &[u8]) -> Vec<u8> {
    let mut k = shard_prefix(shard);
    k.extend_from_slice(key);
    k
}

fn floor_key(shard: &str) -> Vec<u8> {
    format!("floor:{shard}").into_bytes()
}

/// The resource part of an encoded key (everything before the first NUL).
fn resource_of(key: &[u8]) -> &str {
    let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
    std::str::from_utf8(&key[..end]).unwrap_or("")
}

fn key_name(key: &[u8]) -> String {
    ObjectKey::decode(key)
        .map(|k| k.to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(key).into_owned())
}

fn decode_stored(encryption: &Encryption, key: &[u8], raw: &[u8]) -> Result<Stored, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key_name(key),
        reason,
    };
    if raw.len() < 8 {
        return Err(corrupt(format!(
            "value of {} bytes is too short",
            raw.len()
        )));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&raw[..8]);
    let opened = encryption
        .from_storage(resource_of(key), key, &raw[8..])
        .map_err(|reason| StoreError::Undecryptable {
            key: key_name(key),
            reason,
        })?;
    let value: Value =
        serde_json::from_slice(&opened.data).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    Ok(Stored {
        revision: u64::from_be_bytes(rev),
        value,
        stale: opened.stale,
    })
}

fn set_resource_version(value: &mut Value, rev: u64) {
    if let Some(obj) = value.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
}

enum Write {
    Create(Value),
    Update(Value, Option<u64>),
    Delete(Option<u64>),
}

impl SledStore {
    /// Opens (or creates) a store in `dir` that stores every value plain.
    pub fn open(dir: &Path, shard_of: ShardFn) -> Result<Self, StoreError> {
        Self::open_with(dir, shard_of, Arc::new(Encryption::none()))
    }

    /// Opens (or creates) a store in `dir` whose Secrets go through `encryption`.
    pub fn open_with(
        dir: &Path,
        shard_of: ShardFn,
        encryption: Arc<Encryption>,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            StoreError::Backend(format!(
                "cannot open store at {}: {e}; is another cloudcore using this data dir?",
                dir.display()
            ))
        })?;
        let objects = db.open_tree("objects").map_err(backend)?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let shard_log = db.open_tree("shard_log").map_err(backend)?;
        let shard_members = db.open_tree("shard_members").map_err(backend)?;
        let rev = match meta.get(REVISION_KEY).map_err(backend)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            Some(_) => {
                return Err(StoreError::Corrupt {
                    key: "meta/revision".into(),
                    reason: "not 8 bytes".into(),
                })
            }
            None => 0,
        };
        let (events, _) = broadcast::channel(4096);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                objects,
                meta,
                shard_log,
                shard_members,
                shard_of,
                encryption,
                write_lock: Mutex::new(()),
                flush_lock: Mutex::new(()),
                pending_events: Mutex::new(Default::default()),
                assigned: AtomicU64::new(rev),
                durable: AtomicU64::new(rev),
                events,
            }),
        })
    }

    /// Returns once every write up to `rev` is on disk. Group commit: one writer at a time
    /// flushes, covering everything committed so far; writers that were waiting behind it find
    /// their revision already durable and return without a flush of their own. Under load this
    /// turns N fsyncs into about one per flush period.
    async fn make_durable(&self, rev: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        while inner.durable.load(Ordering::SeqCst) < rev {
            let _flusher = inner.flush_lock.lock().await;
            if inner.durable.load(Ordering::SeqCst) >= rev {
                break;
            }
            // Everything assigned so far has committed its transaction (the counter moves only
            // after the commit), so this flush covers all of it.
            let upto = inner.assigned.load(Ordering::SeqCst);
            inner.db.flush_async().await.map_err(backend)?;
            inner.durable.fetch_max(upto, Ordering::SeqCst);
            metrics::counter!("skerry_store_flushes_total").increment(1);
            let mut pending = inner.pending_events.lock().await;
            let later = pending.split_off(&(upto + 1));
            for (_, event) in std::mem::replace(&mut *pending, later) {
                let _ = inner.events.send(event);
            }
        }
        Ok(())
    }

    /// Drops shard log entries at or below `revision`, so history does not grow forever. A node
    /// whose acked revision is older then gets a snapshot instead of a delta.
    pub fn compact_shard_logs(&self, revision: u64) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let entry_rev = |k: &[u8]| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[k.len() - 8..]);
            u64::from_be_bytes(b)
        };
        // Raise the floors first and make them durable: a reader that looks while entries are
        // being removed then gets a snapshot, never a delta with holes.
        let mut shards = std::collections::BTreeSet::new();
        for entry in inner.shard_log.iter().keys() {
            let k = entry.map_err(backend)?;
            if k.len() >= 9 && entry_rev(&k) <= revision {
                shards.insert(String::from_utf8_lossy(&k[..k.len() - 9]).into_owned());
            }
        }
        for shard in &shards {
            if self.shard_floor(shard)? < revision {
                inner
                    .meta
                    .insert(floor_key(shard), &revision.to_be_bytes())
                    .map_err(backend)?;
            }
        }
        inner.db.flush().map_err(backend)?;
        let mut removed = 0;
        for entry in inner.shard_log.iter().keys() {
            let k = entry.map_err(backend)?;
            if k.len() >= 9 && entry_rev(&k) <= revision {
                inner.shard_log.remove(&k).map_err(backend)?;
                removed += 1;
            }
        }
        inner.db.flush().map_err(backend)?;
        Ok(removed)
    }

    fn shard_floor(&self, shard: &str) -> Result<u64, StoreError> {
        Ok(
            match self.inner.meta.get(floor_key(shard)).map_err(backend)? {
                Some(v) if v.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v);
                    u64::from_be_bytes(b)
                }
                _ => 0,
            },
        )
    }

    async fn write(&self, key: &ObjectKey, op: Write) -> Result<Stored, StoreError> {
        let inner = &self.inner;
        let kbytes = key.encode();
        let guard = inner.write_lock.lock().await;
        let old = match inner.objects.get(&kbytes).map_err(backend)? {
            Some(raw) => Some(decode_stored(&inner.encryption, &kbytes, &raw)?),
            None => None,
        };
        let rev = inner.assigned.load(Ordering::SeqCst) + 1;
        let new_value = match (&op, &old) {
            (Write::Create(_), Some(_)) => return Err(StoreError::AlreadyExists(key.clone())),
            (Write::Update(..) | Write::Delete(_), None) => {
                return Err(StoreError::NotFound(key.clone()))
            }
            (Write::Update(_, Some(exp)) | Write::Delete(Some(exp)), Some(o))
                if *exp != o.revision =>
            {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *exp,
                    actual: o.revision,
                })
            }
            (Write::Create(v) | Write::Update(v, _), _) => {
                let mut v = v.clone();
                set_resource_version(&mut v, rev);
                Some(v)
            }
            (Write::Delete(_), _) => None,
        };
        let old_shard = old.as_ref().and_then(|o| (inner.shard_of)(key, &o.value));
        let new_shard = new_value.as_ref().and_then(|v| (inner.shard_of)(key, v));
        let encoded = match &new_value {
            Some(v) => {
                let json = serde_json::to_vec(v)
                    .map_err(|e| backend(format!("cannot encode {key}: {e}")))?;
                let sealed = inner
                    .encryption
                    .to_storage(&key.resource, &kbytes, json)
                    .map_err(|e| backend(format!("cannot encrypt {key}: {e}")))?;
                let mut raw = rev.to_be_bytes().to_vec();
                raw.extend(sealed);
                Some(raw)
            }
            None => None,
        };
        let mut shards: Vec<String> = Vec::new();
        if old_shard != new_shard {
            for s in [&old_shard, &new_shard].into_iter().flatten() {
                if !shards.contains(&s.name) {
                    shards.push(s.name.clone());
                }
            }
        }
        let old_shard = old_shard.map(|s| s.name);
        let new_shard = new_shard.map(|s| s.name);
        let result: Result<(), TransactionError<()>> = (
            &inner.objects,
            &inner.meta,
            &inner.shard_log,
            &inner.shard_members,
        )
            .transaction(|(objects, meta, log, members)| {
                match &encoded {
                    Some(raw) => {
                        objects.insert(kbytes.as_slice(), raw.as_slice())?;
                    }
                    None => {
                        objects.remove(kbytes.as_slice())?;
                    }
                }
                meta.insert(REVISION_KEY, &rev.to_be_bytes())?;
                for s in &shards {
                    log.insert(shard_log_key(s, rev), kbytes.as_slice())?;
                }
                if let Some(s) = &old_shard {
                    if new_shard.as_ref() != Some(s) {
                        members.remove(member_key(s, &kbytes))?;
                    }
                }
                if let Some(s) = &new_shard {
                    if !shards.is_empty() {
                        members.insert(member_key(s, &kbytes), &rev.to_be_bytes())?;
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| backend(format!("transaction for {key} failed: {e:?}")))?;
        inner.pending_events.lock().await.insert(
            rev,
            Event {
                revision: rev,
                key: key.clone(),
                value: new_value.clone(),
                previous: old.as_ref().map(|o| o.value.clone()),
                shards,
            },
        );
        inner.assigned.store(rev, Ordering::SeqCst);
        drop(guard);
        metrics::counter!("skerry_store_writes_total").increment(1);
        // In a task of its own, so that a caller that goes away (a client hanging up) cannot
        // leave a committed write unflushed and unannounced.
        let this = self.clone();
        tokio::spawn(async move { this.make_durable(rev).await })
            .await
            .map_err(|e| backend(format!("flush task failed: {e}")))??;
        Ok(match new_value {
            Some(value) => Stored {
                revision: rev,
                value,
                stale: false,
            },
            None => {
                let mut last = old.expect("delete of an existing object");
                last.revision = rev;
                last
            }
        })
    }
    /// The bytes stored for `key` (revision prefix included), for tests that check what
    /// reaches the disk.
    #[cfg(test)]
    pub(crate) fn raw_for_tests(&self, key: &ObjectKey) -> Vec<u8> {
        self.inner
            .objects
            .get(key.encode())
            .ok()
            .flatten()
            .map(|v| v.to_vec())
            .unwrap_or_default()
    }

    /// [`Store::read_shard`], synchronously: sled serves the scan from its page cache.
    fn read_shard_now(&self, shard: &str, after: u64) -> Result<ShardRead, StoreError> {
        let upto = self.revision();
        let floor = self.shard_floor(shard)?;
        if after < floor || after > upto || after == 0 {
            let prefix = shard_prefix(shard);
            let mut members = Vec::new();
            for entry in self.inner.shard_members.scan_prefix(&prefix) {
                let (k, _) = entry.map_err(backend)?;
                match ObjectKey::decode(&k[prefix.len()..]) {
                    Some(key) => members.push(key),
                    None => tracing::error!(shard, "skipping undecodable shard member key"),
                }
            }
            return Ok(ShardRead::Snapshot { members, upto });
        }
        let start = shard_log_key(shard, after + 1);
        let end = shard_log_key(shard, upto.saturating_add(1));
        let mut changes = Vec::new();
        for entry in self.inner.shard_log.range(start..end) {
            let (k, v) = entry.map_err(backend)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[k.len() - 8..]);
            match ObjectKey::decode(&v) {
                Some(key) => changes.push(ShardChange {
                    revision: u64::from_be_bytes(b),
                    key,
                }),
                None => tracing::error!(shard, "skipping undecodable shard log entry"),
            }
        }
        // Compaction may have raised the floor while we scanned; then the scan may have holes.
        if self.shard_floor(shard)? > after {
            return self.read_shard_now(shard, 0);
        }
        Ok(ShardRead::Delta { changes, upto })
    }
}

#[async_trait]
impl Store for SledStore {
    fn revision(&self) -> u64 {
        self.inner.durable.load(Ordering::SeqCst)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Stored>, StoreError> {
        let k = key.encode();
        match self.inner.objects.get(&k).map_err(backend)? {
            Some(raw) => decode_stored(&self.inner.encryption, &k, &raw).map(Some),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<(Vec<Stored>, u64), StoreError> {
        let rev = self.revision();
        let mut prefix = resource.as_bytes().to_vec();
        prefix.push(0);
        if let Some(ns) = namespace {
            prefix.extend_from_slice(ns.as_bytes());
            prefix.push(0);
        }
        let mut out = Vec::new();
        for entry in self.inner.objects.scan_prefix(&prefix) {
            let (k, v) = entry.map_err(backend)?;
            match decode_stored(&self.inner.encryption, &k, &v) {
                Ok(s) => out.push(s),
                Err(e @ StoreError::Undecryptable { .. }) => {
                    tracing::error!(error = %e, "listing failed: a stored value cannot be decrypted");
                    return Err(e);
                }
                Err(e) => {
                    tracing::error!(error = %e, "skipping corrupt object in listing; delete and recreate it")
                }
            }
        }
        Ok((out, rev))
    }

    async fn create(&self, key: &ObjectKey, value: Value) -> Result<Stored, StoreError> {
        self.write(key, Write::Create(value)).await
    }

    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Option<u64>,
    ) -> Result<Stored, StoreError> {
        self.write(key, Write::Update(value, expected)).await
    }

    async fn delete(&self, key: &ObjectKey, expected: Option<u64>) -> Result<Stored, StoreError> {
        self.write(key, Write::Delete(expected)).await
    }

    async fn read_shard(&self, shard: &str, after: u64) -> Result<ShardRead, StoreError> {
        self.read_shard_now(shard, after)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    fn assigned_revision(&self) -> u64 {
        self.inner.assigned.load(Ordering::SeqCst)
    }

    async fn wait_durable(&self, revision: u64) -> Result<(), StoreError> {
        self.make_durable(revision.min(self.assigned_revision()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn by_node(key: &ObjectKey, v: &Value) -> Option<super::super::Shard> {
        let name = (key.resource == "pods")
            .then(|| v.pointer("/spec/nodeName")?.as_str().map(str::to_string))
            .flatten()?;
        let digest = v
            .pointer("/spec/image")
            .map(|i| i.to_string().len() as u64)
            .unwrap_or(0);
        Some(super::super::Shard { name, digest })
    }

    fn pod(name: &str, node: Option<&str>) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node}})
    }

    #[tokio::test]
    async fn revisions_are_global_and_set_resource_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), by_node).unwrap();
        let a = s
            .create(&ObjectKey::new("pods", "default", "a"), pod("a", None))
            .await
            .unwrap();
        let b = s
            .create(&ObjectKey::new("pods", "default", "b"), pod("b", None))
            .await
            .unwrap();
        assert_eq!((a.revision, b.revision), (1, 2));
        assert_eq!(b.value["metadata"]["resourceVersion"], "2");
        assert_eq!(s.revision(), 2);
        let err = s
            .update(
                &ObjectKey::new("pods", "default", "a"),
                pod("a", None),
                Some(7),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { actual: 1, .. }));
        assert!(matches!(
            s.create(&ObjectKey::new("pods", "default", "a"), pod("a", None))
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
    }

    #[tokio::test]
    async fn shard_reads_are_deltas_with_moves_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), by_node).unwrap();
        let ka = ObjectKey::new("pods", "default", "a");
        let kb = ObjectKey::new("pods", "default", "b");
        s.create(&ka, pod("a", Some("n1"))).await.unwrap(); // 1
        s.create(&kb, pod("b", Some("n2"))).await.unwrap(); // 2
        s.update(&ka, pod("a", Some("n2")), None).await.unwrap(); // 3: moves n1 -> n2
        s.delete(&kb, None).await.unwrap(); // 4
        match s.read_shard("n1", 1).await.unwrap() {
            ShardRead::Delta { changes, upto } => {
                assert_eq!(upto, 4);
                assert_eq!(
                    changes,
                    vec![ShardChange {
                        revision: 3,
                        key: ka.clone()
                    }]
                );
            }
            other => panic!("expected delta, got {other:?}"),
        }
        match s.read_shard("n2", 2).await.unwrap() {
            ShardRead::Delta { changes, .. } => {
                let revs: Vec<u64> = changes.iter().map(|c| c.revision).collect();
                assert_eq!(revs, vec![3, 4]);
            }
            other => panic!("expected delta, got {other:?}"),
        }
        // A fresh node (revision 0) gets the current members.
        assert_eq!(
            s.read_shard("n2", 0).await.unwrap(),
            ShardRead::Snapshot {
                members: vec![ka.clone()],
                upto: 4
            }
        );
        // After compaction, old revisions get a snapshot too.
        s.compact_shard_logs(3).unwrap();
        assert!(matches!(
            s.read_shard("n2", 2).await.unwrap(),
            ShardRead::Snapshot { .. }
        ));
        assert!(matches!(
            s.read_shard("n2", 3).await.unwrap(),
            ShardRead::Delta { .. }
        ));
    }

    #[tokio::test]
    async fn writes_that_do_not_change_the_shard_view_are_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), by_node).unwrap();
        let k = ObjectKey::new("pods", "default", "a");
        let mut v = pod("a", Some("n1"));
        s.create(&k, v.clone()).await.unwrap(); // 1
        v["status"] = json!({"phase": "Running"});
        let mut events = s.subscribe();
        s.update(&k, v.clone(), None).await.unwrap(); // 2: status only
        assert!(events.recv().await.unwrap().shards.is_empty());
        v["spec"]["image"] = json!("longer-image-name");
        s.update(&k, v, None).await.unwrap(); // 3: the view changes
        assert_eq!(events.recv().await.unwrap().shards, vec!["n1".to_string()]);
        match s.read_shard("n1", 1).await.unwrap() {
            ShardRead::Delta { changes, upto } => {
                assert_eq!(upto, 3);
                assert_eq!(
                    changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
                    vec![3]
                );
            }
            other => panic!("expected delta, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn state_survives_reopen_and_corrupt_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), by_node).unwrap();
            s.create(
                &ObjectKey::new("pods", "default", "a"),
                pod("a", Some("n1")),
            )
            .await
            .unwrap();
            s.create(
                &ObjectKey::new("pods", "default", "b"),
                pod("b", Some("n1")),
            )
            .await
            .unwrap();
            // Corrupt one value behind the store's back.
            s.inner
                .objects
                .insert(
                    ObjectKey::new("pods", "default", "b").encode(),
                    b"xx".to_vec(),
                )
                .unwrap();
            s.inner.db.flush().unwrap();
        }
        // A durability task spawned by the last write may still hold the database for a moment
        // after the store is dropped; the file lock goes with it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let s = loop {
            match SledStore::open(dir.path(), by_node) {
                Ok(s) => break s,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(s.revision(), 2);
        let (items, _) = s.list("pods", Some("default")).await.unwrap();
        assert_eq!(items.len(), 1);
        assert!(matches!(
            s.get(&ObjectKey::new("pods", "default", "b")).await,
            Err(StoreError::Corrupt { .. })
        ));
        let c = s
            .create(&ObjectKey::new("pods", "default", "c"), pod("c", None))
            .await
            .unwrap();
        assert_eq!(c.revision, 3);
    }

    #[tokio::test]
    async fn secrets_are_stored_encrypted_and_bound_to_their_key() {
        use crate::store::encryption::{EncryptionConfig, KeySpec};
        let dir = tempfile::tempdir().unwrap();
        let key1 = EncryptionConfig::initial(KeySpec::new("key1", vec![3; 32]).unwrap());
        let encryption = Arc::new(Encryption::new(&key1));
        let s = SledStore::open_with(dir.path(), by_node, encryption.clone()).unwrap();
        let ka = ObjectKey::new("secrets", "default", "a");
        let kb = ObjectKey::new("secrets", "default", "b");
        let secret = json!({"metadata": {"name": "a"}, "data": {"k": "c2VjcmV0LXZhbHVl"}});
        s.create(&ka, secret.clone()).await.unwrap();
        s.create(&kb, secret.clone()).await.unwrap();
        let cm = ObjectKey::new("configmaps", "default", "c");
        s.create(&cm, json!({"data": {"k": "plain"}}))
            .await
            .unwrap();
        let raw = s.inner.objects.get(ka.encode()).unwrap().unwrap();
        assert!(raw[8..].starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!raw.windows(12).any(|w| w == b"c2VjcmV0LXZh"));
        let raw_cm = s.inner.objects.get(cm.encode()).unwrap().unwrap();
        assert_eq!(raw_cm[8], b'{', "other resources stay plain");
        let read = s.get(&ka).await.unwrap().unwrap();
        assert_eq!(read.value["data"], secret["data"]);
        assert!(!read.stale);

        // After a rotation the old value reads, marked stale; rewriting it clears that.
        let key2 = key1
            .with_write_key(KeySpec::new("key2", vec![4; 32]).unwrap())
            .unwrap();
        encryption.reload(&key2);
        let old = s.get(&ka).await.unwrap().unwrap();
        assert!(old.stale);
        s.update(&ka, old.value, Some(old.revision)).await.unwrap();
        let raw = s.inner.objects.get(ka.encode()).unwrap().unwrap();
        assert!(raw[8..].starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        assert!(!s.get(&ka).await.unwrap().unwrap().stale);

        // A value moved under another Secret's key does not decrypt; the listing fails naming
        // the object instead of leaving it out.
        s.inner.objects.insert(kb.encode(), raw).unwrap();
        let err = s.get(&kb).await.unwrap_err();
        assert!(matches!(err, StoreError::Undecryptable { .. }), "{err}");
        assert!(err.to_string().contains("secrets default/b"), "{err}");
        let err = s.list("secrets", None).await.unwrap_err();
        assert!(err.to_string().contains("secrets default/b"), "{err}");
        assert_eq!(s.list("configmaps", None).await.unwrap().0.len(), 1);
    }
}
