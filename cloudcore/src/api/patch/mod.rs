//! The patch formats of `PATCH` requests, as pure functions over `serde_json::Value`:
//! - [`json_patch`]: RFC 6902 (`application/json-patch+json`, `kubectl patch --type=json`);
//! - [`strategic`]: strategic merge patch (`application/strategic-merge-patch+json`, what
//!   `kubectl apply`, `edit`, `label`, `scale` and `set image` send), driven by [`schema`];
//! - [`apply`]: server-side apply (`application/apply-patch+yaml`) with field ownership.
//!
//! - [`merge`]: JSON merge patch (RFC 7396, `application/merge-patch+json`).
//!
//! RFC 6902 and RFC 7396 are the `json-patch` crate's behind a thin adapter; strategic merge
//! and server-side apply are ours. The handlers only pick the algorithm from the
//! `Content-Type` and map its errors to Kubernetes `Status` codes.

pub mod apply;
pub mod json_patch;
pub mod merge;
pub mod schema;
pub mod strategic;
