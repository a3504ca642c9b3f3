//! The edge cache: the node's slice of desired state, durable in sled.
//!
//! This is what lets an edge node run, restart and heal its pods with no cloud at all: on start,
//! edgecore reconciles from here before it even tries to connect. A sync batch is applied in one
//! sled transaction together with the revision it brings, and flushed, before the link acks it:
//! an ack always means "durable", so a crash can never make the cloud skip a change.
//!
//! Entries are encoded with the protocol codec; an entry that cannot be decoded (disk damage,
//! an old format) is reported and skipped, never fatal, and the next snapshot replaces it.

use protocol::codec;
use protocol::messages::{EdgeObject, ObjectRef, SyncBatch};
use protocol::pod::EdgePod;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::Path;

const ACKED_KEY: &[u8] = b"acked_revision";

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

#[derive(Serialize, Deserialize)]
struct CachedPod {
    revision: u64,
    pod: EdgePod,
}

/// The desired-state seam: what the link writes and the pod manager reads.
pub trait DesiredState: Send + Sync + 'static {
    /// Highest revision made durable (0 for a fresh node).
    fn acked_revision(&self) -> u64;
    /// Every cached pod; corrupt entries are logged and skipped.
    fn pods(&self) -> Vec<EdgePod>;
}

/// sled-backed cache. The same database also holds the status outbox (see `crate::report`).
#[derive(Clone)]
pub struct Cache {
    db: sled::Db,
    pods: sled::Tree,
    meta: sled::Tree,
}

fn pod_key(namespace: &str, name: &str) -> Vec<u8> {
    format!("{namespace}/{name}").into_bytes()
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
        let meta = db.open_tree("meta").map_err(backend)?;
        Ok(Self { db, pods, meta })
    }

    /// The underlying database, for other trees of the same node (the outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Applies a batch atomically with its revision and flushes. Upserts older than what is
    /// cached are ignored (a resend after a reconnect); deletes of unknown objects are no-ops.
    pub async fn apply(&self, batch: &SyncBatch) -> Result<(), CacheError> {
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut kept = std::collections::HashSet::new();
        for up in &batch.upserts {
            let EdgeObject::Pod(pod) = &up.object else {
                continue; // ConfigMaps and Secrets: cached by the config sync (in progress).
            };
            let key = pod_key(&pod.namespace, &pod.name);
            kept.insert(key.clone());
            if let Some(existing) = self.pods.get(&key).map_err(backend)? {
                if let Ok(c) = codec::decode::<CachedPod>(&existing) {
                    if c.revision > up.revision {
                        continue;
                    }
                }
            }
            let value = codec::encode(&CachedPod {
                revision: up.revision,
                pod: pod.clone(),
            })?;
            writes.push((key, Some(value)));
        }
        for del in &batch.deletes {
            let ObjectRef {
                namespace, name, ..
            } = del;
            writes.push((pod_key(namespace, name), None));
        }
        if batch.snapshot {
            for entry in self.pods.iter().keys() {
                let key = entry.map_err(backend)?.to_vec();
                if !kept.contains(&key) {
                    writes.push((key, None));
                }
            }
        }
        let rev = batch.revision;
        let result: Result<(), TransactionError<()>> =
            (&self.pods, &self.meta).transaction(|(pods, meta)| {
                for (k, v) in &writes {
                    match v {
                        Some(v) => {
                            pods.insert(k.as_slice(), v.as_slice())?;
                        }
                        None => {
                            pods.remove(k.as_slice())?;
                        }
                    }
                }
                meta.insert(ACKED_KEY, &rev.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| backend(format!("{e:?}")))?;
        self.db.flush_async().await.map_err(backend)?;
        Ok(())
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
        let mut out = Vec::new();
        for entry in self.pods.iter() {
            match entry {
                Ok((k, v)) => match codec::decode::<CachedPod>(&v) {
                    Ok(c) => out.push(c.pod),
                    Err(e) => {
                        tracing::error!(key = %String::from_utf8_lossy(&k), error = %e, "skipping corrupt cache entry; the next sync from the cloud replaces it")
                    }
                },
                Err(e) => tracing::error!(error = %e, "cannot read cache entry"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::{ObjectKind, Upsert};
    use protocol::pod::RestartPolicy;

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
            let c = Cache::open(dir.path()).unwrap();
            assert_eq!(c.acked_revision(), 0);
            c.apply(&SyncBatch {
                revision: 5,
                snapshot: true,
                upserts: vec![up(3, pod("a", "v1")), up(5, pod("b", "v1"))],
                deletes: vec![],
            })
            .await
            .unwrap();
            // A resend of an older version does not overwrite a newer one.
            c.apply(&SyncBatch {
                revision: 5,
                snapshot: false,
                upserts: vec![up(7, pod("a", "v2"))],
                deletes: vec![],
            })
            .await
            .unwrap();
            c.apply(&SyncBatch {
                revision: 7,
                snapshot: false,
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
        let c = Cache::open(dir.path()).unwrap();
        assert_eq!(c.acked_revision(), 7);
        let pods = c.pods();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].containers[0].image, "v2");
        // A snapshot drops what it does not list.
        c.apply(&SyncBatch {
            revision: 9,
            snapshot: true,
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
        let c = Cache::open(dir.path()).unwrap();
        c.apply(&SyncBatch {
            revision: 1,
            snapshot: false,
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
}
