//! The cloudcore controllers: level-triggered reconcile loops over the store.
//!
//! Each controller is a [`runner::Reconciler`]: it says which objects a store event concerns and
//! how to bring one object's world to its desired state; the [`runner`] owns the work queue,
//! deduplication, error backoff and the periodic resync that makes a missed event harmless.
//! Controllers write through [`crate::api::client::Client`], so every object they create or
//! change goes through the same defaulting, validation and graceful deletion as a `kubectl`
//! request. [`owned`] holds what the workload controllers share about the pods they own.

pub mod claim;
pub mod deployment;
pub mod owned;
pub mod replicaset;
pub mod runner;
pub mod selector_index;
