//! `list` and the selectors it shares with `watch` and `deletecollection`: which objects of a
//! collection a request's label and field selectors pick.

use super::meta::{now_seconds, set_type_meta};
use super::request::Call;
use crate::api::error::{json_response, ApiError};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::table::{self};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

impl Call {
    /// The label and field selectors of the query (plus `metadata.name` for watches of one
    /// object).
    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let bad = |e: crate::api::selector::SelectorError| ApiError::bad_request(e.to_string());
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))
                .map_err(bad)?;
        let raw_fields = self.query.get("fieldSelector").map_or("", String::as_str);
        let mut fields = FieldSelector::parse(raw_fields).map_err(bad)?;
        fields
            .check_fields(&self.info().field_names())
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "unable to parse field selector {raw_fields:?}: {e}"
                ))
            })?;
        if let Some(name) = &self.name {
            fields
                .requirements
                .push(crate::api::selector::FieldRequirement {
                    field: "metadata.name".into(),
                    negated: false,
                    value: name.clone(),
                });
        }
        Ok((labels, fields))
    }

    /// The objects of the request's collection (one namespace, or all) that its label and
    /// field selectors match, with the revision the listing is consistent with.
    pub(super) async fn selected(&self) -> Result<(Vec<Value>, u64), ApiError> {
        let info = self.info();
        let (labels, fields) = self.selectors()?;
        let (items, rev) = self
            .state
            .store
            .list(&info.storage_resource(), self.namespace.as_deref())
            .await
            .map_err(|e| self.store_err(e))?;
        let items = items
            .into_iter()
            .map(|s| s.value)
            .filter(|v| labels.matches(v) && fields.matches(|f| info.field_value(v, f)))
            .collect();
        Ok((items, rev))
    }
}

pub(super) async fn list(call: &Call) -> Result<Response, ApiError> {
    let info = call.info();
    call.check_continue()?;
    call.read_resource_version().await?;
    let (mut items, rev) = call.selected().await?;
    for v in &mut items {
        set_type_meta(info, v);
        crate::annotations::hide_system_state(v);
    }
    if let Some(t) = call.table() {
        let now = now_seconds();
        let table = table::build(
            call.res.columns(),
            |o| call.res.table_row(o, now),
            &items,
            Some(rev.to_string()),
            t,
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": info.api_version(),
            "kind": info.list_kind(),
            "metadata": {"resourceVersion": rev.to_string()},
            "items": items,
        }),
    ))
}
