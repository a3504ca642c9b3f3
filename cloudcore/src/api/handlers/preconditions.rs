//! The client's preconditions on a write (`metadata.resourceVersion`, `preconditions.uid`),
//! checked against the stored object so a stale write is refused, never applied.

use super::meta::meta_str;
use super::request::Call;
use crate::api::error::ApiError;
use crate::api::resource::ResourceInfo;
use serde_json::Value;

/// The `metadata.resourceVersion` of a body as a revision precondition.
pub(super) fn resource_version_precondition(obj: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        "" => Ok(None),
        rv => rv.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "metadata.resourceVersion: Invalid value: {rv:?}: must be a resourceVersion this server issued"
            ))
        }),
    }
}

pub(super) fn check_uid(call: &Call, expected: &str, current: &Value) -> Result<(), ApiError> {
    check_uid_of(call.info(), call.name(), expected, current)
}

pub(super) fn check_uid_of(
    info: &ResourceInfo,
    name: &str,
    expected: &str,
    current: &Value,
) -> Result<(), ApiError> {
    let actual = meta_str(current, "uid");
    if !expected.is_empty() && expected != actual {
        return Err(ApiError::Conflict {
            resource: info.qualified(),
            name: name.to_string(),
            detail: format!("Precondition failed: UID in precondition: {expected}, UID in object meta: {actual}"),
        });
    }
    Ok(())
}
