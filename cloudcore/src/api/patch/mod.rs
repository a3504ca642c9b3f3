//! The patch formats of `PATCH` requests, as pure functions over `serde_json::Value`:
//! - [`json_patch`]: RFC 6902 (`application/json-patch+json`, `kubectl patch --type=json`);
//! - [`strategic`]: strategic merge patch (`application/strategic-merge-patch+json`, what
//!   `kubectl apply`, `edit`, `label`, `scale` and `set image` send), driven by [`schema`];
//! - [`apply`]: server-side apply (`application/apply-patch+yaml`) with field ownership.
//!
//! JSON merge patch (RFC 7386) stays in the handlers: it needs no schema. The handlers only pick
//! the algorithm from the `Content-Type` and map its errors to Kubernetes `Status` codes.

pub mod apply;
pub mod json_patch;
pub mod schema;
pub mod strategic;
