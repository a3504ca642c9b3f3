//! The cloudcore controllers: level-triggered reconcile loops over the store.
//!
//! Each controller re-reads what it acts on from the store on every pass, writes with optimistic
//! concurrency ([`crate::store::update_with`]) and is woken by store events and by a periodic
//! resync, so a missed or lagged event only delays it.

pub mod node_lifecycle;
