//! The I/O shell around `skerry-protocol`, shared by both daemons.
//!
//! `protocol` has no I/O, so that its state machines and codec can be tested without sockets.
//! The few pieces of I/O that the hub and the edge link both need live here, once: reading and
//! writing protocol frames on QUIC streams ([`frames`]), and writing the key and certificate
//! files that joining produces so that a crash never leaves half a file ([`durable`]). The
//! retry loops of both daemons share one pure back-off type ([`backoff`]).

pub mod backoff;
pub mod durable;
pub mod frames;
pub mod private_dir;
pub mod supervisor;
