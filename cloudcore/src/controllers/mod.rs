//! The cloudcore controllers: level-triggered reconcile loops over the store.
//!
//! Each controller re-reads what it acts on from the store on every pass and is woken by store
//! events and by a periodic resync, so a missed or lagged event only delays it. The workload
//! controllers are [`runner::Reconciler`]s: each says which objects a store event concerns and
//! how to bring one object's world to its desired state, and the [`runner`] owns the work
//! queue, deduplication, error backoff and resync. Controllers write through
//! [`crate::api::client::Client`] (or the API's own delete path), so every object they create or
//! change goes through the same defaulting, validation and graceful deletion as a `kubectl`
//! request. [`owned`] holds what the workload controllers share about the pods they own;
//! [`endpoints`] keeps the EndpointSlices and Endpoints of Services; [`ingress_status`] the
//! addresses of the Ingresses Skerry serves.

pub mod claim;
pub mod cronjob;
pub mod daemonset;
pub mod decode;
pub mod deployment;
pub mod endpoints;
pub mod error;
pub mod feed;
pub mod garbage_collector;
pub mod informer;
pub mod ingress_status;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod owned;
pub mod replicaset;
pub mod runner;
pub mod selector_index;
pub mod statefulset;

pub use error::ControllerError;
