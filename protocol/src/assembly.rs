//! Putting a snapshot that arrived in parts back together, before anything of it is applied.
//!
//! A node's slice can outgrow one frame (thousands of pods, or a few large ConfigMaps). The hub
//! then sends the snapshot as several batches, each flagged `snapshot` and all but the last
//! flagged `more`. Applying the parts one by one would be wrong: the first part, being a
//! snapshot, would drop every object the later parts bring, stopping and restarting their pods.
//! So the edge holds the parts here and applies one merged snapshot, and acks once. A link that
//! breaks halfway leaves nothing applied and nothing acked; the next session resends.
//!
//! Sans-IO: the link pushes every batch it reads and applies whatever comes out.

use crate::messages::SyncBatch;

/// Most parts one snapshot may have: 64 frames of 4 MiB. A slice larger than that is refused
/// rather than buffered without bound on a small edge.
pub const MAX_SNAPSHOT_PARTS: usize = 64;

/// A batch sequence the assembler cannot accept; the link closes the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// A delta, or a part with another revision, arrived while a snapshot was incomplete.
    #[error("the cloud interleaved a batch (revision {got}, snapshot: {snapshot}) with the parts of snapshot {expected}; the session restarts")]
    Interleaved {
        /// Revision of the snapshot being assembled.
        expected: u64,
        /// Revision of the batch that arrived.
        got: u64,
        /// Whether that batch was a snapshot part.
        snapshot: bool,
    },
    /// More parts than [`MAX_SNAPSHOT_PARTS`].
    #[error("snapshot {revision} has more than {MAX_SNAPSHOT_PARTS} parts; this node's slice is too large for one edge: move pods or large ConfigMaps off it")]
    TooManyParts {
        /// Revision of the snapshot.
        revision: u64,
    },
    /// `more` set on a delta.
    #[error("the cloud flagged a delta batch (revision {revision}) as having more parts; only snapshots are split")]
    SplitDelta {
        /// Revision of the batch.
        revision: u64,
    },
}

/// Collects snapshot parts; passes everything else through.
#[derive(Debug, Default)]
pub struct SnapshotAssembler {
    pending: Option<(SyncBatch, usize)>,
}

impl SnapshotAssembler {
    /// An assembler holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether parts of a snapshot are being held.
    pub fn is_assembling(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes the next batch read from the link. Returns the batch to apply: the batch itself
    /// (a delta, or a snapshot in one part), the merged snapshot when its last part arrives, or
    /// `None` while parts are still missing.
    pub fn push(&mut self, batch: SyncBatch) -> Result<Option<SyncBatch>, AssemblyError> {
        if batch.more && !batch.snapshot {
            return Err(AssemblyError::SplitDelta {
                revision: batch.revision,
            });
        }
        let Some((mut merged, parts)) = self.pending.take() else {
            if batch.more {
                self.pending = Some((batch, 1));
                return Ok(None);
            }
            return Ok(Some(batch));
        };
        if !batch.snapshot || batch.revision != merged.revision {
            return Err(AssemblyError::Interleaved {
                expected: merged.revision,
                got: batch.revision,
                snapshot: batch.snapshot,
            });
        }
        if parts + 1 > MAX_SNAPSHOT_PARTS {
            return Err(AssemblyError::TooManyParts {
                revision: merged.revision,
            });
        }
        merged.upserts.extend(batch.upserts);
        merged.deletes.extend(batch.deletes);
        if batch.more {
            self.pending = Some((merged, parts + 1));
            return Ok(None);
        }
        merged.more = false;
        Ok(Some(merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{EdgeObject, Upsert};

    fn part(revision: u64, snapshot: bool, more: bool, pods: &[&str]) -> SyncBatch {
        SyncBatch {
            revision,
            snapshot,
            more,
            upserts: pods
                .iter()
                .map(|p| Upsert {
                    revision: 1,
                    object: EdgeObject::Pod(crate::pod::tests::sample_pod(p)),
                })
                .collect(),
            deletes: vec![],
        }
    }

    fn names(b: &SyncBatch) -> Vec<String> {
        b.upserts
            .iter()
            .map(|u| match &u.object {
                EdgeObject::Pod(p) => p.name.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn parts_are_applied_as_one_snapshot() {
        let mut a = SnapshotAssembler::new();
        assert_eq!(a.push(part(9, true, true, &["a", "b"])), Ok(None));
        assert!(a.is_assembling());
        assert_eq!(a.push(part(9, true, true, &["c"])), Ok(None));
        let whole = a.push(part(9, true, false, &["d"])).unwrap().unwrap();
        assert!(whole.snapshot && !whole.more);
        assert_eq!(whole.revision, 9);
        assert_eq!(names(&whole), ["a", "b", "c", "d"]);
        assert!(!a.is_assembling());
        // Deltas and one-part snapshots pass through untouched.
        let delta = part(10, false, false, &["e"]);
        assert_eq!(a.push(delta.clone()), Ok(Some(delta)));
        let single = part(11, true, false, &["f"]);
        assert_eq!(a.push(single.clone()), Ok(Some(single)));
    }

    #[test]
    fn broken_sequences_are_refused() {
        let mut a = SnapshotAssembler::new();
        assert!(matches!(
            a.push(part(3, false, true, &[])),
            Err(AssemblyError::SplitDelta { revision: 3 })
        ));
        a.push(part(4, true, true, &["a"])).unwrap();
        assert!(matches!(
            a.push(part(5, false, false, &[])),
            Err(AssemblyError::Interleaved {
                expected: 4,
                got: 5,
                snapshot: false
            })
        ));
        // The failed sequence is dropped; a fresh one (as after a reconnect) starts clean.
        assert!(!a.is_assembling());
        a.push(part(6, true, true, &[])).unwrap();
        for _ in 1..MAX_SNAPSHOT_PARTS - 1 {
            assert_eq!(a.push(part(6, true, true, &[])), Ok(None));
        }
        assert!(a.push(part(6, true, false, &[])).unwrap().is_some());
        a.push(part(7, true, true, &[])).unwrap();
        for _ in 1..MAX_SNAPSHOT_PARTS {
            a.push(part(7, true, true, &[])).unwrap();
        }
        assert!(matches!(
            a.push(part(7, true, true, &[])),
            Err(AssemblyError::TooManyParts { revision: 7 })
        ));
    }
}
