//! `get` of one object, and the current stored value every read-modify-write starts from.

use super::meta::set_type_meta;
use super::request::Call;
use crate::api::error::ApiError;
use crate::store::{StoreError, Stored};
use axum::http::StatusCode;
use axum::response::Response;

pub(in crate::api) async fn get_current(call: &Call) -> Result<Stored, ApiError> {
    match call.state.store.get(&call.key()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(call.store_err(StoreError::NotFound(call.key()))),
        Err(e) => Err(call.store_err(e)),
    }
}

pub(super) async fn get(call: &Call) -> Result<Response, ApiError> {
    call.read_resource_version().await?;
    let mut current = get_current(call).await?;
    set_type_meta(call.info(), &mut current.value);
    Ok(call.object_response(StatusCode::OK, current.value))
}
