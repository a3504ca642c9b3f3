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
use protocol::messages::{EdgeObject, ObjectKind, SyncBatch};
use protocol::pod::EdgePod;
use protocol::service::{ClusterNetwork, EdgeEndpointSlice, EdgeService};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

pub use configs::{config_refs, ConfigSet};

const ACKED_KEY: &[u8] = b"acked_revision";
/// Layout version of the cache. Version 2 added ConfigMaps and Secrets: a cache written by an
/// older edgecore has none, and its acked revision would make the hub skip every config written
/// before it, so opening such a cache forgets the acked revision and the node resyncs in full.
const SCHEMA_KEY: &[u8] = b"schema";
/// Version 3 added the network tree (Services, EndpointSlices, the node's network settings),
/// which a cache of version 2 lacks for the same reason. Version 4 (protocol v7): containers
/// gained `stdin`, `stdin_once` and `tty`; layout 3's pods are rewritten in today's shape.
/// Version 5 (protocol v8): pods gained init containers; layout 4's pods (`compat::v7`'s
/// shape) are rewritten in today's, and the full resync once after the upgrade brings the pods
/// with init containers that the hub withheld from the v7 edge.
const SCHEMA: u32 = 5;
/// Random id of this cache, also recorded in the marker beside it (see [`recovery`]).
const CACHE_ID_KEY: &[u8] = b"cache_id";
/// Present while the node's desired state is unknown (the value says why); removed in the
/// transaction that applies a full snapshot.
const UNKNOWN_KEY: &[u8] = b"desired_unknown";

mod configs;
mod layout2;
pub(crate) mod layout3;
mod recovery;

/// What [`Cache::open_checked`] found.
enum Checked {
    /// The cache the marker records, or one without a marker.
    Good(Cache),
    /// Not the cache the marker records: its content was lost.
    Lost(String),
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// sled failed.
    #[error("edge cache failure: {0}; check disk space and permissions of the data dir")]
    Backend(String),
    /// The cache cannot be opened for a reason of the environment (another edgecore holds it,
    /// permissions, a full or read-only disk); the message says which.
    #[error("edge cache unusable: {0}")]
    Unusable(String),
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

/// The desired-state seam: what the link writes and the pod manager reads.
pub trait DesiredState: Send + Sync + 'static {
    /// Highest revision made durable (0 for a fresh node).
    fn acked_revision(&self) -> u64;
    /// Every cached pod; corrupt entries are logged and skipped.
    fn pods(&self) -> Vec<EdgePod>;
    /// Every cached ConfigMap and Secret; corrupt entries are logged and skipped.
    fn configs(&self) -> ConfigSet;
    /// The cached Services, EndpointSlices and network settings; corrupt entries are logged
    /// and skipped.
    fn network(&self) -> NetworkSet;
}

/// The node's Services, EndpointSlices and network settings as cached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSet {
    /// The node's network settings, once received.
    pub network: Option<ClusterNetwork>,
    /// Every Service.
    pub services: Vec<EdgeService>,
    /// Every EndpointSlice.
    pub slices: Vec<EdgeEndpointSlice>,
    /// The node's overlay routes, once received (protocol v6, with the overlay on).
    pub overlay: Option<protocol::overlay::OverlayNetwork>,
    /// The Ingresses the node serves, once received.
    pub ingresses: Option<protocol::ingress::EdgeIngresses>,
}

/// sled-backed cache. The same database also holds the status outbox (see `crate::report`).
#[derive(Clone)]
pub struct Cache {
    db: sled::Db,
    pods: sled::Tree,
    config_maps: sled::Tree,
    secrets: sled::Tree,
    /// Services, EndpointSlices and the network settings, keyed by [`entry_key`].
    network: sled::Tree,
    meta: sled::Tree,
    /// The marker beside the cache, rewritten with the acked revision after every batch.
    marker: std::sync::Arc<MarkerFile>,
    /// Notified when the cache forgot its revision for a full resync (see
    /// [`Cache::forget_for_resync`]); the link ends its session and reconnects.
    resync: std::sync::Arc<tokio::sync::Notify>,
    /// Counts the applied batches that wrote the `network` tree (see
    /// [`Cache::network_generation`]).
    network_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The marker file and what it last recorded.
struct MarkerFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<Option<recovery::Marker>>,
}

impl MarkerFile {
    fn new(path: &Path) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            path: path.to_path_buf(),
            current: std::sync::Mutex::new(None),
        })
    }

    /// Writes `marker` if it differs from what the file holds.
    fn write(&self, marker: recovery::Marker) -> Result<(), String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() != Some(&marker) {
            recovery::write_marker(&self.path, &marker)?;
            *current = Some(marker);
        }
        Ok(())
    }

    /// Records `revision` as durable in the cache.
    fn record_revision(&self, revision: u64) {
        let next = {
            let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            current.clone().map(|m| recovery::Marker {
                acked_revision: revision,
                ..m
            })
        };
        if let Some(next) = next {
            if let Err(e) = self.write(next) {
                // The batch is durable in sled; a stale marker only makes the next start's
                // check weaker, never wrong.
                tracing::warn!(error = %e, "cannot update the cache marker");
            }
        }
    }
}

fn object_key(namespace: &str, name: &str) -> Vec<u8> {
    format!("{namespace}/{name}").into_bytes()
}

/// The key of an object in its tree: `namespace/name` in the trees of one kind, prefixed with
/// the kind in the network tree, which holds three.
fn entry_key(kind: ObjectKind, namespace: &str, name: &str) -> Vec<u8> {
    match kind {
        ObjectKind::Pod | ObjectKind::ConfigMap | ObjectKind::Secret => object_key(namespace, name),
        ObjectKind::Service => format!("svc:{namespace}/{name}").into_bytes(),
        ObjectKind::EndpointSlice => format!("eps:{namespace}/{name}").into_bytes(),
        ObjectKind::Network => format!("net:{namespace}/{name}").into_bytes(),
        ObjectKind::Overlay => format!("ovl:{namespace}/{name}").into_bytes(),
        ObjectKind::Ingress => format!("ing:{namespace}/{name}").into_bytes(),
    }
}

/// The kind of a network-tree entry, from its key's prefix.
fn network_kind(key: &[u8]) -> Option<ObjectKind> {
    match key.get(..4)? {
        b"svc:" => Some(ObjectKind::Service),
        b"eps:" => Some(ObjectKind::EndpointSlice),
        b"net:" => Some(ObjectKind::Network),
        b"ovl:" => Some(ObjectKind::Overlay),
        b"ing:" => Some(ObjectKind::Ingress),
        _ => None,
    }
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
    /// Opens the cache database under `dir`, telling a damaged or lost cache from an empty one
    /// (see `cache/recovery.rs`): a cache found unreadable is moved aside, reported at error level
    /// with what to do, and replaced by a fresh one whose desired state is unknown
    /// ([`Cache::unknown_reason`]) until the cloud's next snapshot. Only faults of the
    /// environment (another edgecore holds the lock, permissions, a full disk) are errors.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let marker_path = recovery::marker_path(dir);
        let marker = recovery::read_marker(&marker_path);
        let (cause, reason) = match Self::open_checked(dir, &marker_path, &marker) {
            Ok(Checked::Good(cache)) => return cache.finish_open(&marker),
            Ok(Checked::Lost(reason)) => ("lost", reason),
            Err(recovery::SledFault::Damaged(reason)) => ("damaged", reason),
            Err(recovery::SledFault::Environment(reason)) => {
                return Err(CacheError::Unusable(format!(
                    "cannot open the cache {}: {reason}",
                    dir.display()
                )))
            }
        };
        let moved_to = recovery::move_aside(dir).map_err(CacheError::Backend)?;
        let kept = moved_to.as_ref().map_or_else(
            || "nothing was left to keep".to_string(),
            |p| format!("kept as {}", p.display()),
        );
        let why = format!("the cache was unreadable ({reason}); {kept}");
        let cache = Self::open_fresh(dir, &marker_path, &why)?;
        tracing::error!(
            cache = %dir.display(),
            cause,
            reason = %reason,
            moved_to = ?moved_to,
            "EDGE CACHE CORRUPT: the node's desired state is unknown. Running pods are kept as they \
             are (adopted, not stopped) and nothing is removed until the cloud sends a full \
             snapshot, which rebuilds the cache when the node reconnects. To do: check the disk \
             (dmesg, SMART) and free space; the damaged copy can be deleted once diagnosed."
        );
        metrics::counter!("skerry_edge_cache_recoveries_total", "cause" => cause).increment(1);
        Ok(cache)
    }

    /// Opens `dir` with sled and checks it against the marker; `Lost` when it opens but is not
    /// the cache the marker records.
    fn open_checked(
        dir: &Path,
        marker_path: &Path,
        marker: &recovery::Found,
    ) -> Result<Checked, recovery::SledFault> {
        use recovery::{Found, SledFault};
        // sled may panic on some damage rather than return an error.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(dir).open())
            .map_err(|_| SledFault::Damaged("sled panicked while recovering it".into()))?;
        let db = opened.map_err(|e| recovery::classify(&e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| recovery::classify(&e));
        let cache = Self {
            pods: tree("pods")?,
            config_maps: tree("configmaps")?,
            secrets: tree("secrets")?,
            network: tree("network")?,
            meta: tree("meta")?,
            db: db.clone(),
            marker: MarkerFile::new(marker_path),
            resync: Default::default(),
            network_generation: Default::default(),
        };
        // Every record is read once: sled checks each against its CRC, so damage shows here
        // rather than under a running node.
        for name in db.tree_names() {
            let t = db.open_tree(&name).map_err(|e| recovery::classify(&e))?;
            for entry in t.iter() {
                entry.map_err(|e| recovery::classify(&e))?;
            }
        }
        let id = cache
            .meta
            .get(CACHE_ID_KEY)
            .map_err(|e| recovery::classify(&e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let has_data = cache
            .meta
            .get(ACKED_KEY)
            .map_err(|e| recovery::classify(&e))?
            .is_some()
            || !cache.pods.is_empty();
        let marker_shown = marker_path.display();
        Ok(match (marker, id) {
            (Found::Present(m), Some(id)) if m.cache_id == id => {
                let acked = cache.acked_revision();
                if acked < m.acked_revision {
                    Checked::Lost(format!(
                        "it is at revision {acked}, but {marker_shown} records revision {}: its \
                         newest writes were lost (truncated or rolled back)",
                        m.acked_revision
                    ))
                } else {
                    Checked::Good(cache)
                }
            }
            (Found::Present(m), Some(id)) => Checked::Lost(format!(
                "it holds cache {id}, but {marker_shown} records cache {}: the database was replaced",
                m.cache_id
            )),
            (Found::Present(m), None) => Checked::Lost(format!(
                "it is empty or was recreated, but {marker_shown} records cache {} created at {} ms: \
                 its content was lost (truncated, emptied or overwritten)",
                m.cache_id, m.created_ms
            )),
            (Found::Unreadable(e), None) if !has_data => Checked::Lost(format!(
                "it is empty and its marker is unreadable ({e})"
            )),
            // No marker (a new node, or a cache from before markers), or a damaged marker with
            // a cache that holds data: the cache is taken as it is, and the marker rewritten.
            _ => Checked::Good(cache),
        })
    }

    /// Completes the opening of a readable cache: gives it an id and a marker if it has none,
    /// upgrades its layout, and checks every entry decodes.
    fn finish_open(self, marker: &recovery::Found) -> Result<Self, CacheError> {
        let id = match self.meta.get(CACHE_ID_KEY).map_err(backend)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let fresh =
                    self.meta.get(ACKED_KEY).map_err(backend)?.is_none() && self.pods.is_empty();
                let id = recovery::new_id();
                self.meta
                    .insert(CACHE_ID_KEY, id.as_bytes())
                    .map_err(backend)?;
                if fresh {
                    // Nothing received yet: pods found running are not this cache's to judge.
                    self.meta
                        .insert(
                            UNKNOWN_KEY,
                            b"a new cache: nothing received from the cloud yet".to_vec(),
                        )
                        .map_err(backend)?;
                }
                id
            }
        };
        let schema = self
            .meta
            .get(SCHEMA_KEY)
            .map_err(backend)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes);
        match schema {
            Some(2) => self.upgrade_pods::<layout2::V4Pod>("v4")?,
            Some(3) => self.upgrade_pods::<layout3::V6Pod>("v6")?,
            Some(4) => self.upgrade_pods::<protocol::compat::v7::EdgePod>("v7")?,
            _ => {}
        }
        if schema != Some(SCHEMA) {
            if self.meta.get(ACKED_KEY).map_err(backend)?.is_some() {
                tracing::info!(
                    from = ?schema,
                    to = SCHEMA,
                    "cache layout upgraded; the node resyncs its slice in full once"
                );
            }
            self.meta.remove(ACKED_KEY).map_err(backend)?;
            self.meta
                .insert(SCHEMA_KEY, &SCHEMA.to_be_bytes())
                .map_err(backend)?;
        }
        let corrupt = self.pods_checked().1
            + Self::read_all::<EdgeConfigMap>(&self.config_maps, "configmap").1
            + Self::read_all::<EdgeSecret>(&self.secrets, "secret").1
            + Self::read_all::<EdgeObject>(&self.network, "network").1;
        if corrupt > 0 {
            let why = format!("{corrupt} cache entries cannot be decoded");
            tracing::error!(
                entries = corrupt,
                "EDGE CACHE PARTLY CORRUPT: {why}; they are skipped, running pods are kept as \
                 they are, and the node resyncs its slice in full from the cloud, which replaces \
                 them. To do: check the disk (dmesg, SMART)."
            );
            metrics::counter!("skerry_edge_cache_recoveries_total", "cause" => "entries")
                .increment(1);
            // Without an acked revision the cloud sends a snapshot, which ends the unknown state.
            self.meta.remove(ACKED_KEY).map_err(backend)?;
            self.meta
                .insert(UNKNOWN_KEY, why.as_bytes())
                .map_err(backend)?;
        }
        self.db.flush().map_err(backend)?;
        let wanted = recovery::Marker {
            cache_id: id,
            schema: SCHEMA,
            created_ms: match marker {
                recovery::Found::Present(m) => m.created_ms,
                _ => recovery::now_ms(),
            },
            acked_revision: self.acked_revision(),
        };
        if let recovery::Found::Present(m) = marker {
            *self
                .marker
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
        }
        self.marker.write(wanted).map_err(CacheError::Backend)?;
        self.publish_state();
        Ok(self)
    }

    /// Rewrites the pods of an older layout in today's shape (`Old`, written by an edgecore of
    /// protocol `from`: layout 2 by v4, whose pods had no DNS settings; layout 3 by v5 and v6,
    /// whose containers had no stdin nor tty), so an edge upgraded offline restarts its pods
    /// from its cache as before. An entry already in today's shape (an upgrade cut short) is
    /// kept; one that is neither is left for the corruption check to report.
    fn upgrade_pods<Old>(&self, from: &str) -> Result<(), CacheError>
    where
        Old: serde::de::DeserializeOwned + Into<EdgePod>,
    {
        let mut upgraded = 0;
        for entry in self.pods.iter() {
            let (key, value) = entry.map_err(backend)?;
            if codec::decode::<Cached<EdgePod>>(&value).is_ok() {
                continue;
            }
            if let Ok(old) = codec::decode::<Cached<Old>>(&value) {
                let now = Cached {
                    revision: old.revision,
                    object: old.object.into(),
                };
                self.pods
                    .insert(key, codec::encode(&now)?)
                    .map_err(backend)?;
                upgraded += 1;
            }
        }
        if upgraded > 0 {
            tracing::info!(
                pods = upgraded,
                from,
                "cached pods upgraded from an older layout"
            );
        }
        Ok(())
    }

    /// Creates a fresh cache in `dir` whose desired state is unknown for `why`.
    fn open_fresh(dir: &Path, marker_path: &Path, why: &str) -> Result<Self, CacheError> {
        let db = sled::Config::new().path(dir).open().map_err(|e| {
            CacheError::Backend(format!(
                "cannot create a fresh cache {}: {e}",
                dir.display()
            ))
        })?;
        let cache = Self {
            pods: db.open_tree("pods").map_err(backend)?,
            config_maps: db.open_tree("configmaps").map_err(backend)?,
            secrets: db.open_tree("secrets").map_err(backend)?,
            network: db.open_tree("network").map_err(backend)?,
            meta: db.open_tree("meta").map_err(backend)?,
            db,
            marker: MarkerFile::new(marker_path),
            resync: Default::default(),
            network_generation: Default::default(),
        };
        let id = recovery::new_id();
        cache
            .meta
            .insert(CACHE_ID_KEY, id.as_bytes())
            .map_err(backend)?;
        cache
            .meta
            .insert(SCHEMA_KEY, &SCHEMA.to_be_bytes())
            .map_err(backend)?;
        cache
            .meta
            .insert(UNKNOWN_KEY, why.as_bytes())
            .map_err(backend)?;
        cache.db.flush().map_err(backend)?;
        cache
            .marker
            .write(recovery::Marker {
                cache_id: id,
                schema: SCHEMA,
                created_ms: recovery::now_ms(),
                acked_revision: 0,
            })
            .map_err(CacheError::Backend)?;
        cache.publish_state();
        Ok(cache)
    }

    /// Why the node's desired state is unknown, if it is: the cache was found unreadable, holds
    /// entries that cannot be decoded, or is new; cleared by the first full snapshot applied.
    /// While it is set, pods the runtime runs that the cache does not list are kept, not
    /// removed (see `crate::pods`).
    pub fn unknown_reason(&self) -> Option<String> {
        match self.meta.get(UNKNOWN_KEY) {
            Ok(v) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
            Err(e) => Some(format!("cannot read the cache: {e}")),
        }
    }

    /// Found at run time: `why` (entries that cannot be read) makes the desired state unknown,
    /// and the acked revision is forgotten so that the link's next session gets the node's
    /// slice in full; the link is told to start one now. The snapshot then replaces or removes
    /// the unreadable entries and ends the unknown state.
    pub fn forget_for_resync(&self, why: &str) -> Result<(), CacheError> {
        tracing::error!(
            reason = why,
            "EDGE CACHE PARTLY CORRUPT: running pods are kept as they are and the node resyncs \
             its slice in full from the cloud. To do: check the disk (dmesg, SMART)."
        );
        metrics::counter!("skerry_edge_cache_recoveries_total", "cause" => "entries").increment(1);
        self.meta.remove(ACKED_KEY).map_err(backend)?;
        self.meta
            .insert(UNKNOWN_KEY, why.as_bytes())
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        self.marker.record_revision(0);
        self.publish_state();
        self.resync.notify_one();
        Ok(())
    }

    /// Resolves when the cache asks the link for a full resync.
    pub async fn resync_wanted(&self) {
        self.resync.notified().await
    }

    /// Sets the `skerry_edge_desired_state_known` gauge.
    fn publish_state(&self) {
        let known = self.unknown_reason().is_none();
        metrics::gauge!("skerry_edge_desired_state_known").set(if known { 1.0 } else { 0.0 });
    }

    /// A number that grows with every applied batch that wrote the network tree (a Service,
    /// an EndpointSlice, the network settings, the overlay's routes; 0 for a cache just
    /// opened). A reader of [`DesiredState::network`]
    /// that remembers it reads the network tree again only when it moved: the pod-sync pass,
    /// which runs on every wake-up and every 10 s, would otherwise decode every Service and
    /// slice each time.
    pub fn network_generation(&self) -> u64 {
        self.network_generation
            .load(std::sync::atomic::Ordering::SeqCst)
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
            ObjectKind::Service
            | ObjectKind::EndpointSlice
            | ObjectKind::Network
            | ObjectKind::Overlay
            | ObjectKind::Ingress => &self.network,
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
            ObjectKind::Service
            | ObjectKind::EndpointSlice
            | ObjectKind::Network
            | ObjectKind::Overlay
            | ObjectKind::Ingress => {
                codec::decode::<Cached<EdgeObject>>(&value).map(|c| c.revision)
            }
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
            let key = entry_key(object.kind, &object.namespace, &object.name);
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
                EdgeObject::Service(_)
                | EdgeObject::EndpointSlice(_)
                | EdgeObject::Network(_)
                | EdgeObject::Overlay(_)
                | EdgeObject::Ingress(_) => codec::encode(&Cached {
                    revision: up.revision,
                    object: &up.object,
                })?,
            };
            plan.accepted.insert(slot.clone(), up.revision);
            plan.changes.insert(slot, Change::Put(value));
        }
        for del in &batch.deletes {
            let key = entry_key(del.kind, &del.namespace, &del.name);
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
            for entry in self.network.iter().keys() {
                let key = entry.map_err(backend)?.to_vec();
                // An entry whose key names no kind is damage: it goes too.
                let kind = network_kind(&key).unwrap_or(ObjectKind::Service);
                if !named.contains(&(kind, key.clone())) {
                    plan.changes.insert((kind, key), Change::Remove);
                }
            }
        }
        self.collect_garbage(&mut plan)?;

        let rev = batch.revision;
        let snapshot = batch.snapshot;
        let was_unknown = snapshot.then(|| self.unknown_reason()).flatten();
        let result: Result<(), TransactionError<()>> = (
            &self.pods,
            &self.config_maps,
            &self.secrets,
            &self.network,
            &self.meta,
        )
            .transaction(|(pods, config_maps, secrets, network, meta)| {
                for ((kind, key), change) in &plan.changes {
                    let tree = match kind {
                        ObjectKind::Pod => pods,
                        ObjectKind::ConfigMap => config_maps,
                        ObjectKind::Secret => secrets,
                        ObjectKind::Service
                        | ObjectKind::EndpointSlice
                        | ObjectKind::Network
                        | ObjectKind::Overlay
                        | ObjectKind::Ingress => network,
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
                if snapshot {
                    // The cloud's full slice: the desired state is known again.
                    meta.remove(UNKNOWN_KEY)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| backend(format!("{e:?}")))?;
        // Whatever lives in the network tree counts (the overlay's routes too).
        let touched_network = plan
            .changes
            .keys()
            .any(|(kind, _)| std::ptr::eq(self.tree(*kind), &self.network));
        if touched_network {
            self.network_generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.db.flush_async().await.map_err(backend)?;
        let marker = self.marker.clone();
        // A small file written and synced: off the async threads, as sled's flush is.
        let _ = tokio::task::spawn_blocking(move || marker.record_revision(rev)).await;
        if let Some(reason) = was_unknown {
            tracing::info!(revision = rev, was = %reason,
                "desired state rebuilt from the cloud's snapshot; pods it does not list are removed now");
            self.publish_state();
        }
        Ok(())
    }

    /// Adds to `plan` the removal of every ConfigMap and Secret that no pod references once the
    /// plan is applied, except the TLS Secrets of the Ingresses the node serves. A corrupt pod
    /// entry references nothing: it does not run either.
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
        // The TLS Secrets of the Ingresses the node serves are kept too: the batch's set if it
        // writes one, else the cached one.
        let mut ingress_sets: Vec<Vec<u8>> = plan
            .changes
            .iter()
            .filter(|((k, _), _)| *k == ObjectKind::Ingress)
            .filter_map(|(_, c)| match c {
                Change::Put(v) => Some(v.clone()),
                Change::Remove => None,
            })
            .collect();
        for entry in self.network.scan_prefix(b"ing:") {
            let (key, value) = entry.map_err(backend)?;
            if !plan
                .changes
                .contains_key(&(ObjectKind::Ingress, key.to_vec()))
            {
                ingress_sets.push(value.to_vec());
            }
        }
        for value in ingress_sets {
            if let Ok(Cached {
                object: EdgeObject::Ingress(set),
                ..
            }) = codec::decode::<Cached<EdgeObject>>(&value)
            {
                for (ns, name) in set.secret_refs() {
                    referenced.insert((ObjectKind::Secret, object_key(&ns, &name)));
                }
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

    /// Decodes every entry of `tree`, logging and skipping corrupt ones; also returns how many
    /// were skipped.
    fn read_all<T: serde::de::DeserializeOwned>(tree: &sled::Tree, what: &str) -> (Vec<T>, usize) {
        let mut out = Vec::new();
        let mut corrupt = 0;
        for entry in tree.iter() {
            match entry {
                Ok((k, v)) => match codec::decode::<Cached<T>>(&v) {
                    Ok(c) => out.push(c.object),
                    Err(e) => {
                        corrupt += 1;
                        tracing::error!(kind = what, key = %String::from_utf8_lossy(&k), error = %e, "skipping corrupt cache entry; the next sync from the cloud replaces it")
                    }
                },
                Err(e) => {
                    corrupt += 1;
                    tracing::error!(kind = what, error = %e, "cannot read cache entry")
                }
            }
        }
        (out, corrupt)
    }

    /// Every cached pod, and how many entries could not be read: the pods of those may be
    /// running, so a caller must not take the list as complete when the count is not 0.
    pub fn pods_checked(&self) -> (Vec<EdgePod>, usize) {
        Self::read_all(&self.pods, "pod")
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
        self.pods_checked().0
    }

    fn configs(&self) -> ConfigSet {
        let mut set = ConfigSet::default();
        for config_map in Self::read_all::<EdgeConfigMap>(&self.config_maps, "configmap").0 {
            set.insert_config_map(config_map);
        }
        for secret in Self::read_all::<EdgeSecret>(&self.secrets, "secret").0 {
            set.insert_secret(secret);
        }
        set
    }

    fn network(&self) -> NetworkSet {
        let mut set = NetworkSet::default();
        for object in Self::read_all::<EdgeObject>(&self.network, "network").0 {
            match object {
                EdgeObject::Service(s) => set.services.push(s),
                EdgeObject::EndpointSlice(s) => set.slices.push(s),
                EdgeObject::Network(n) => set.network = Some(n),
                EdgeObject::Overlay(o) => set.overlay = Some(o),
                EdgeObject::Ingress(i) => set.ingresses = Some(i),
                EdgeObject::Pod(_) | EdgeObject::ConfigMap(_) | EdgeObject::Secret(_) => {
                    tracing::error!("skipping a misplaced entry in the network tree of the cache")
                }
            }
        }
        set
    }
}

#[cfg(test)]
mod tests;
