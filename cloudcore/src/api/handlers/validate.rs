//! Validation every create and update runs: the metadata rules plus the resource's own, as one
//! `Invalid` answer listing every field error.

use super::meta::meta_str;
use super::request::Call;
use crate::api::error::{ApiError, FieldError};
use crate::api::resource::ResourceInfo;
use crate::api::validation::validate_object_meta;
use serde_json::Value;

pub(super) fn invalid(info: &ResourceInfo, obj: &Value, errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: info.kind.to_string(),
        name: meta_str(obj, "name").to_string(),
        errors,
    }
}

/// Metadata rules plus the resource's own validation.
pub(super) fn validate(call: &Call, obj: &Value) -> Result<(), ApiError> {
    let info = call.info();
    let mut errs = validate_object_meta(obj, info.name_rule, info.namespaced);
    if let Err(e) = call.res.validate(obj) {
        errs.extend(e);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(info, obj, errs))
    }
}
