//! cloudcore: Skerry's cloud hub.
//!
//! A small Kubernetes-compatible control plane ([`api`] over [`store`]), a [`scheduler`] that
//! places pods on nodes, [`controllers`] (the node lifecycle controller), a [`hub`] that keeps one QUIC connection per edge node and streams that
//! node's slice of the desired state (its pods, and through the [`config_index`] the ConfigMaps
//! and Secrets they reference), an [`ingest`] that applies status reports from MQTT, the
//! [`pki`] that issues node identities, and an optional embedded MQTT [`broker`]. The binary in
//! `main.rs` is a thin shell over [`server::run`].

pub mod annotations;
pub mod api;
pub mod broker;
pub mod clock;
pub mod config_index;
pub mod controllers;
pub mod credentials;
pub mod cron;
pub mod devices;
pub mod hub;
pub mod ingest;
pub mod kubeconfig;
pub mod liveness;
pub mod log_limit;
pub mod pki;
pub mod projection;
pub mod rewrite;
pub mod scheduler;
pub mod server;
pub mod store;
