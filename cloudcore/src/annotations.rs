//! Annotations that more than one part of cloudcore reads or writes.
//!
//! They live here, not in the module that writes them, so that the API (which guards them
//! against client edits) and their writers (the ingest) do not import each other.

/// The sequence number of the last status report the ingest applied to an object: its replay
/// guard (older or repeated reports are dropped). System state, like `resourceVersion`: client
/// writes can neither set nor remove it.
pub const STATUS_SEQ_ANNOTATION: &str = "skerry.io/status-seq";
