//! edgecore: Skerry's edge agent.
//!
//! It keeps its node's slice of the desired state in a sled [`cache`] so that it runs, restarts
//! and heals its pods with no cloud at all; the [`link`] keeps that cache current over QUIC; the
//! [`pods`] workers reconcile each pod against a [`runtime`], with its [`volumes`] prepared on the
//! host; the [`report`] outbox publishes status over MQTT. The binary in `main.rs` is a thin
//! shell over [`agent::run`].

pub mod agent;
pub mod cache;
pub mod config;
pub mod exec;
pub mod identity;
pub mod images;
pub mod link;
pub mod logs;
pub mod network;
pub mod node_health;
pub mod pods;
pub mod portforward;
pub mod report;
pub mod runtime;
pub mod server_trust;
pub mod volumes;
