//! What a reconcile can fail with, and which failures are worth retrying.
//!
//! Controllers are API clients, not HTTP handlers: their errors say whether the runner should
//! back off and retry (the store was busy, an object changed under them) or wait for the
//! object to change (the object itself cannot be reconciled as it is), which the HTTP error
//! type cannot say by itself.

use crate::api::ApiError;
use crate::store::StoreError;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A call through the in-process API client failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A direct store read failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object cannot be reconciled as it is (a selector that does not parse, a template
    /// the API refuses): retrying cannot help until it changes.
    #[error("{key} cannot be reconciled: {reason}")]
    Invalid {
        /// The object, as `resource namespace/name`.
        key: String,
        /// What is wrong with it and what would fix it.
        reason: String,
    },
    /// The shared cache did not catch up with the store in time (see
    /// [`super::informer::Informer::synced`]).
    #[error("the {resource} cache is at revision {have}, behind the store's {want}; retrying")]
    CacheNotSynced {
        /// The cached resource.
        resource: &'static str,
        /// The revision waited for.
        want: u64,
        /// The revision the cache reached.
        have: u64,
    },
}

impl ControllerError {
    /// Whether retrying without a change to the object is pointless: the API refused what
    /// the controller derived from the object as invalid (422) or malformed (400), or the
    /// controller found the object itself invalid. Conflicts, missing objects, forbidden
    /// writes into a terminating namespace and store failures are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            ControllerError::Api(e) => {
                matches!(e, ApiError::Invalid { .. } | ApiError::BadRequest { .. })
            }
            ControllerError::Store(_) | ControllerError::CacheNotSynced { .. } => false,
            ControllerError::Invalid { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_object_causes_is_permanent() {
        assert!(ControllerError::Invalid {
            key: "apps/deployments default/web".into(),
            reason: "bad selector".into()
        }
        .is_permanent());
        assert!(!ControllerError::from(ApiError::Internal("busy".into())).is_permanent());
        assert!(!ControllerError::from(StoreError::Backend("io".into())).is_permanent());
    }
}
