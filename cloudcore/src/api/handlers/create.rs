//! `create`: system metadata, `generateName`, namespace admission, allocation, then the store,
//! as Kubernetes' `rest.BeforeCreate` and `handlers/create.go` do.

use super::body::{decode_body, parse_body, with_warnings};
use super::meta::{meta_str, metadata_mut, new_uid, now_rfc3339};
use super::request::Call;
use super::validate::validate;
use crate::api::error::ApiError;
use crate::store::{ObjectKey, StoreError};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

/// Alphabet of `generateName` suffixes (Kubernetes': no vowels, no look-alike digits).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Random characters appended to `generateName`.
const GENERATED_SUFFIX_LEN: usize = 5;

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..GENERATED_SUFFIX_LEN)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

pub(in crate::api) async fn create(call: &Call, body: Bytes) -> Result<Response, ApiError> {
    create_object(call, parse_body(call, &body)?).await
}

/// Creates the object `raw` (a parsed body, or what a server-side apply builds).
pub(super) async fn create_object(call: &Call, raw: Value) -> Result<Response, ApiError> {
    let info = call.info();
    let dry_run = call.dry_run()?;
    let (mut obj, warnings) = decode_body(call, raw)?;
    let meta = metadata_mut(&mut obj)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    for system in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(system);
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let generate_base = meta
        .get("generateName")
        .and_then(Value::as_str)
        .filter(|g| name.is_empty() && !g.is_empty())
        .map(|g| {
            // Kubernetes trims the base so that base + suffix stays a valid length.
            let max = info.name_rule.max_len().min(63) - GENERATED_SUFFIX_LEN;
            g.chars().take(max).collect::<String>()
        });
    call.res.default(&mut obj);
    call.res.prepare_create(&mut obj);
    if let Some(ns) = call.namespace.as_deref().filter(|_| info.namespaced) {
        crate::api::namespaces::admit_create(call.state.store.as_ref(), ns, info, &name).await?;
    }
    let attempts = if generate_base.is_some() { 5 } else { 1 };
    for attempt in 0..attempts {
        if let (Some(base), Some(meta)) = (&generate_base, metadata_mut(&mut obj)) {
            meta.insert("name".into(), json!(format!("{base}{}", random_suffix())));
        }
        validate(call, &obj)?;
        let name = meta_str(&obj, "name").to_string();
        let key = ObjectKey::new(
            info.storage_resource(),
            call.namespace.clone().unwrap_or_default(),
            &name,
        );
        let mut obj = obj.clone();
        let _allocation = call
            .res
            .allocate(call.state.store.as_ref(), &key, &mut obj, None)
            .await?;
        if dry_run {
            return Ok(with_warnings(
                call.object_response(StatusCode::CREATED, obj),
                &warnings,
            ));
        }
        match call.state.store.create(&key, obj).await {
            Ok(stored) => {
                if info.namespaced {
                    crate::api::namespaces::recheck_after_create(
                        call.state.store.as_ref(),
                        info,
                        &key,
                        stored.revision,
                    )
                    .await?;
                }
                tracing::info!(resource = %info.plural, namespace = %key.namespace, name = %name, revision = stored.revision, "created");
                return Ok(with_warnings(
                    call.object_response(StatusCode::CREATED, stored.value),
                    &warnings,
                ));
            }
            Err(StoreError::AlreadyExists(_)) if attempt + 1 < attempts => continue,
            Err(e) => return Err(ApiError::from_store(e, &info.qualified(), &name)),
        }
    }
    Err(ApiError::Internal(
        "could not generate a unique name".into(),
    ))
}
