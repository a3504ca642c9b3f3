//! System metadata the handlers stamp on objects (UIDs, timestamps, `apiVersion`/`kind`) and
//! the small accessors of `metadata` every verb uses, kept in one place so every write stamps
//! them alike.

use crate::api::resource::ResourceInfo;
use serde_json::{json, Map, Value};

pub(in crate::api) use crate::clock::{now_rfc3339, now_seconds};

/// A random (version 4) UUID, as Kubernetes assigns to `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Sets `apiVersion` and `kind` (stored objects have them; this guards hand-written ones).
pub(in crate::api) fn set_type_meta(info: &ResourceInfo, obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(info.api_version()));
        o.insert("kind".into(), json!(info.kind));
    }
}

pub(super) fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    obj.as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::table;

    #[test]
    fn timestamps() {
        assert_eq!(
            protocol::timestamp::format(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            table::parse_timestamp(&now_rfc3339()).map(|t| (t - now_seconds()).abs() <= 1),
            Some(true)
        );
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.as_bytes()[14], b'4');
    }
}
