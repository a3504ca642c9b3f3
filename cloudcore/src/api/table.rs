//! Server-side printing: `meta.k8s.io/v1 Table` responses, which is what `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`). One code path for every resource;
//! each resource only supplies its columns and a row function.

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

/// One table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Header as Kubernetes names it (`Name`, `Ready`); kubectl upper-cases it.
    pub name: &'static str,
    /// OpenAPI type of the cells: `string`, `integer`, `date`.
    pub kind: &'static str,
    /// Format hint (`name` for the name column), may be empty.
    pub format: &'static str,
    /// Description.
    pub description: &'static str,
    /// 0 = always shown, 1 = only with `-o wide`.
    pub priority: u8,
}

/// The `Name` column every kind's table starts with, as Kubernetes defines it.
pub const NAME_COLUMN: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
};

/// The `Age` column, as Kubernetes defines it.
pub const AGE_COLUMN: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
};

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter (unknown values fall back to the default).
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// A table request: which `meta.k8s.io` version to answer with, and what rows carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    /// `v1` or `v1beta1`.
    pub version: &'static str,
    /// Row objects.
    pub include: IncludeObject,
}

/// Whether the Accept header asks for a Table, and in which version (the first acceptable media
/// type wins, as in content negotiation; plain JSON listed first means no table).
pub fn wants_table(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("");
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in parts {
            if let Some((k, val)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(val.trim()),
                    "g" => g = Some(val.trim()),
                    "v" => v = Some(val.trim()),
                    _ => {}
                }
            }
        }
        let json_like = matches!(mime, "application/json" | "*/*" | "application/*");
        match (as_, g, v) {
            (Some("Table"), Some("meta.k8s.io"), Some("v1")) if json_like => return Some("v1"),
            (Some("Table"), Some("meta.k8s.io"), Some("v1beta1")) if json_like => {
                return Some("v1beta1")
            }
            (None, _, _) if json_like => return None,
            _ => continue,
        }
    }
    None
}

/// `PartialObjectMetadata` of an object, as table rows carry by default.
pub fn partial_metadata(obj: &Value, meta_version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{meta_version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Builds a Table of `objects` with `columns` and `row` (one cell per column).
pub fn build(
    columns: &[Column],
    row: impl Fn(&Value) -> Vec<Value>,
    objects: &[Value],
    resource_version: Option<String>,
    req: TableRequest,
) -> Value {
    let defs: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut r = json!({"cells": row(o)});
            match req.include {
                IncludeObject::None => {}
                IncludeObject::Metadata => r["object"] = partial_metadata(o, req.version),
                IncludeObject::Object => r["object"] = o.clone(),
            }
            r
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{}", req.version),
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub use protocol::timestamp::parse as parse_timestamp;

/// The AGE cell: time since `metadata.creationTimestamp`, `<unknown>` without one.
pub fn age(obj: &Value, now: i64) -> Value {
    match obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
    {
        Some(t) => Value::String(human_duration(now - t)),
        None => Value::String("<unknown>".into()),
    }
}

/// Kubernetes' `duration.HumanDuration`: `45s`, `5m3s`, `3h10m`, `2d4h`, `3y20d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(
            wants_table(&accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")),
            Some("v1")
        );
        assert_eq!(
            wants_table(&accept("application/json;as=Table;g=meta.k8s.io;v=v1beta1")),
            Some("v1beta1")
        );
        assert_eq!(wants_table(&accept("application/json")), None);
        assert_eq!(
            wants_table(&accept(
                "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
            )),
            None
        );
        assert_eq!(
            wants_table(&accept("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io")),
            Some("v1")
        );
        assert_eq!(wants_table(&HeaderMap::new()), None);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(-5), "<invalid>");
        assert_eq!(human_duration(-1), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(303), "5m3s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 600), "3h10m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(52 * 3600), "2d4h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(3 * 365 * 86400 + 20 * 86400), "3y20d");
        assert_eq!(human_duration(10 * 365 * 86400), "10y");
    }

    #[test]
    fn table_shape() {
        const COLS: [Column; 1] = [Column {
            name: "Name",
            kind: "string",
            format: "name",
            description: "",
            priority: 0,
        }];
        let objs = vec![json!({"metadata": {"name": "a", "resourceVersion": "3"}, "spec": {}})];
        let t = build(
            &COLS,
            |o| vec![o["metadata"]["name"].clone()],
            &objs,
            Some("7".into()),
            TableRequest {
                version: "v1",
                include: IncludeObject::Metadata,
            },
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["rows"][0]["cells"], json!(["a"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(t["rows"][0]["object"].get("spec").is_none());
        assert_eq!(
            age(
                &json!({"metadata": {"creationTimestamp": "2024-01-01T00:00:00Z"}}),
                1_704_067_260
            ),
            "60s"
        );
        assert_eq!(age(&json!({}), 0), "<unknown>");
    }
}
