//! The object store: revisioned Kubernetes objects with a global revision order.
//!
//! Every write gets the next global revision (like etcd's `mod_revision`), which becomes the
//! object's `metadata.resourceVersion`. Besides objects, the store keeps a **per-shard change
//! log**: each object may belong to one shard (for cloudcore, the node a pod is bound to), and
//! every write records its revision under the shard the object left and the shard it entered.
//! A node session then asks "what changed in my shard after revision R" and reads only its own
//! entries: no per-(node, object) sync records, no scan of every pod per node (DESIGN.md,
//! principles 2 and 6).
//!
//! Writes are durable (flushed) before they return: an API response or a hub batch never
//! mentions a revision that a crash could lose.
//!
//! ## The trait in etcd's terms
//! Every operation that may touch a disk or a network is `async`, so that a backend whose
//! reads are remote (etcd) implements [`Store`] without blocking a runtime worker, and the
//! semantics are stated in what etcd v3 provides, so that such a backend is a drop-in:
//!
//! | operation | etcd v3 |
//! |---|---|
//! | [`Store::get`] | `Range(key)`; `Stored::revision` is the key's `mod_revision` |
//! | [`Store::list`] | `Range(prefix)`; the returned revision is the response header's revision |
//! | [`Store::create`] | `Txn(If create_revision(key) == 0, Then Put, Else Range)` |
//! | [`Store::update`] | `Txn(If mod_revision(key) == expected, Then Put)`, a plain `Put` without `expected` |
//! | [`Store::delete`] | `Txn(If mod_revision(key) == expected, Then DeleteRange(prev_kv))` |
//! | shard log | the entries under `/shardlog/<shard>/<revision>` and the member marks under `/shardmembers/<shard>/`, written in the same `Txn` as the object, so a node's log can never disagree with the objects |
//! | [`Store::read_shard`] | `Range` over the shard's log after the asked revision; a revision below the shard's floor (compacted) gives the snapshot: a `Range` over its members |
//! | [`Store::wait_durable`] | nothing to wait for: an etcd write is durable (raft quorum, fsync) when its `Txn` returns |
//! | [`Store::subscribe`] | one `Watch(prefix, start_revision)` fanned out into the broadcast; `ErrCompacted` becomes the API's `410 Expired` for watches from too old a revision |
//! | [`Store::revision`], [`Store::assigned_revision`] | the highest header revision seen on any response or watch event, kept in an atomic (cheap, and monotonic as etcd's is) |
//!
//! The sled backend answers reads from sled's page cache on the calling task: a miss costs
//! one disk read, which is what sled's own API does too; writes are ordered and made durable
//! by a writer task (see [`sled_store`]).

pub mod encryption;
pub mod sled_store;

use async_trait::async_trait;
use serde_json::Value;
use std::fmt;

pub use sled_store::SledStore;

/// Identifies an object: resource (plural, with group for non-core: `pods`, `apps/deployments`),
/// namespace (empty for cluster-scoped resources) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Resource, e.g. `pods`.
    pub resource: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(
        resource: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The byte form used as a database key: fields joined by NUL, which no valid name contains,
    /// so that prefixes (`resource\0namespace\0`) select exactly one collection.
    pub fn encode(&self) -> Vec<u8> {
        let mut k =
            Vec::with_capacity(self.resource.len() + self.namespace.len() + self.name.len() + 2);
        k.extend_from_slice(self.resource.as_bytes());
        k.push(0);
        k.extend_from_slice(self.namespace.as_bytes());
        k.push(0);
        k.extend_from_slice(self.name.as_bytes());
        k
    }

    /// Inverse of [`ObjectKey::encode`].
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut parts = s.splitn(3, '\0');
        Some(Self::new(parts.next()?, parts.next()?, parts.next()?))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.resource, self.name)
        } else {
            write!(f, "{} {}/{}", self.resource, self.namespace, self.name)
        }
    }
}

/// An object as stored, with the revision of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Revision of the write that produced this value.
    pub revision: u64,
    /// The Kubernetes JSON object, with `metadata.resourceVersion` set to `revision`.
    pub value: Value,
    /// Stored with another provider or key than the current write key (see
    /// [`encryption`]): the API writes such an object even when an update changes nothing,
    /// so that rewriting every Secret re-encrypts it.
    pub stale: bool,
}

/// Where an object belongs and a digest of what that shard's reader sees of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Shard name (for cloudcore: the node a pod is bound to).
    pub name: String,
    /// Digest of the part of the object the shard's reader consumes (for a pod: its edge
    /// projection). A write that changes neither the shard nor the digest, such as a status
    /// update, is not logged to the shard: otherwise every status report an edge sends up would
    /// echo back down to it as an unchanged upsert.
    pub digest: u64,
}

/// Which shard an object belongs to, if any. Given to the store at open so that the store can
/// maintain shard logs without knowing what a pod is.
pub type ShardFn = fn(&ObjectKey, &Value) -> Option<Shard>;

/// One entry of a shard's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardChange {
    /// Revision of the write.
    pub revision: u64,
    /// Object written.
    pub key: ObjectKey,
}

/// What a shard reader gets back.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardRead {
    /// Changes after the asked revision, oldest first, complete up to `upto`.
    Delta {
        /// The changes (an object may appear several times).
        changes: Vec<ShardChange>,
        /// The store revision up to which the shard is complete.
        upto: u64,
    },
    /// The asked revision is older than the retained history (or from the future): here is
    /// every current member of the shard, complete up to `upto`.
    Snapshot {
        /// Current members.
        members: Vec<ObjectKey>,
        /// The store revision up to which the shard is complete.
        upto: u64,
    },
}

/// A committed write, as announced to in-process watchers.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Revision of the write.
    pub revision: u64,
    /// Object written.
    pub key: ObjectKey,
    /// Value after the write; `None` for a delete.
    pub value: Option<Value>,
    /// Value before the write; `None` for a create. Watchers need it to tell when an object
    /// stops matching a selector (a DELETED for them) and what a deleted object last was.
    pub previous: Option<Value>,
    /// Shards whose view the write changed (left, entered, or changed within).
    pub shards: Vec<String>,
}

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of an object that exists.
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    /// Read, update or delete of an object that does not exist.
    #[error("{0} not found")]
    NotFound(ObjectKey),
    /// Update or delete with a revision precondition that no longer holds.
    #[error("{key} has been modified (it is at revision {actual}, the request expected {expected}); get the latest version and try again")]
    Conflict {
        /// Object.
        key: ObjectKey,
        /// Revision the caller expected.
        expected: u64,
        /// Revision it is at.
        actual: u64,
    },
    /// The backend failed.
    #[error("store backend failure: {0}")]
    Backend(String),
    /// A stored value could not be decrypted (key removed from the configuration, corrupt
    /// ciphertext). Unlike [`StoreError::Corrupt`], a listing fails with it, as kube-apiserver
    /// does: a list that silently left out Secrets would make controllers act on a wrong view.
    #[error("cannot decrypt {key}: {reason}")]
    Undecryptable {
        /// Object.
        key: String,
        /// Why (names the key, never the contents).
        reason: encryption::TransformError,
    },
    /// A stored value could not be read back (reported and skipped by listings).
    #[error("corrupt stored value for {key}: {reason}")]
    Corrupt {
        /// Object.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The store seam. Implementations: [`SledStore`] (embedded, default); etcd comes later.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Revision of the latest committed write (0 for an empty store).
    fn revision(&self) -> u64;

    /// Reads one object.
    async fn get(&self, key: &ObjectKey) -> Result<Option<Stored>, StoreError>;

    /// Lists a resource, in one namespace or (with `None`) all; returns the objects in key order
    /// and the revision the listing is consistent with. Corrupt entries are logged and skipped;
    /// one that cannot be decrypted fails the listing with [`StoreError::Undecryptable`].
    async fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<(Vec<Stored>, u64), StoreError>;

    /// Creates an object; fails if it exists.
    async fn create(&self, key: &ObjectKey, value: Value) -> Result<Stored, StoreError>;

    /// Replaces an object; with `expected` set, only if it is still at that revision.
    async fn update(
        &self,
        key: &ObjectKey,
        value: Value,
        expected: Option<u64>,
    ) -> Result<Stored, StoreError>;

    /// Deletes an object; with `expected` set, only if it is still at that revision. Returns the
    /// last value.
    async fn delete(&self, key: &ObjectKey, expected: Option<u64>) -> Result<Stored, StoreError>;

    /// What changed in `shard` after revision `after`.
    async fn read_shard(&self, shard: &str, after: u64) -> Result<ShardRead, StoreError>;

    /// Revision of the latest committed write, durable or not yet.
    fn assigned_revision(&self) -> u64;

    /// Returns once every write up to `revision` is durable (flushing if needed). Readers that
    /// pass on what they read (the hub) call it first, so they never hand out a state a crash
    /// could take back.
    async fn wait_durable(&self, revision: u64) -> Result<(), StoreError>;

    /// Subscribes to committed writes, announced in revision order once durable. Lagging
    /// receivers get `RecvError::Lagged` and must re-read from the store (level-triggered
    /// consumers do anyway).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;
}

/// Applies `f` to the current value of `key` and writes the result with an optimistic
/// revision check, retrying on conflicts. `f` returning `None` means "no change".
pub async fn update_with<S, F>(
    store: &S,
    key: &ObjectKey,
    mut f: F,
) -> Result<Option<Stored>, StoreError>
where
    S: Store + ?Sized,
    F: FnMut(&Value) -> Option<Value> + Send,
{
    for _ in 0..16 {
        let Some(current) = store.get(key).await? else {
            return Err(StoreError::NotFound(key.clone()));
        };
        let Some(next) = f(&current.value) else {
            return Ok(None);
        };
        match store.update(key, next, Some(current.revision)).await {
            Err(StoreError::Conflict { .. }) => continue,
            other => return other.map(Some),
        }
    }
    Err(StoreError::Backend(format!(
        "{key} kept changing during 16 update attempts; retry later"
    )))
}
