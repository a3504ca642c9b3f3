//! Just enough of Kubernetes' protobuf encoding to accept the bodies kubectl's typed clients
//! send.
//!
//! kubectl's imperative commands (`kubectl create configmap`, `kubectl create secret generic`)
//! use client-go's typed clients, which send `application/vnd.kubernetes.protobuf` bodies and
//! do not fall back to JSON. The server answers in JSON (the client accepts it). Kinds opt in
//! through [`super::ResourceHandler::decode_protobuf`] and turn their message into the same
//! JSON a manifest would give, which then goes through the ordinary decode, defaulting and
//! validation. The envelope is the 4-byte magic `k8s\0` and a `runtime.Unknown` message
//! (`typeMeta` = 1, `raw` = 2); `raw` is the object's message, whose field 1 is `ObjectMeta`.

use serde_json::{json, Map, Value};

/// The media type of Kubernetes' protobuf encoding.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8; 4] = b"k8s\0";

/// A body that is not a well-formed protobuf object of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf body: {0}")]
pub struct ProtobufError(pub String);

fn err(msg: impl Into<String>) -> ProtobufError {
    ProtobufError(msg.into())
}

/// The value of one field on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// Wire type 0 (ints, bools, enums).
    Varint(u64),
    /// Wire type 2 (strings, bytes, messages, map entries).
    Bytes(&'a [u8]),
    /// Wire types 1 and 5 (fixed-width numbers; no field read here uses them).
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, ProtobufError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or_else(|| err("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(err("varint longer than 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ProtobufError> {
    if buf.len() < n {
        return Err(err("field runs past the end of its message"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The fields of one message, in wire order (repeated fields appear once per element).
pub fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>, ProtobufError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let number = u32::try_from(tag >> 3).map_err(|_| err("field number out of range"))?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Field::Fixed
            }
            2 => {
                let len =
                    usize::try_from(varint(&mut buf)?).map_err(|_| err("length out of range"))?;
                Field::Bytes(take(&mut buf, len)?)
            }
            5 => {
                take(&mut buf, 4)?;
                Field::Fixed
            }
            other => return Err(err(format!("unsupported wire type {other}"))),
        };
        out.push((number, field));
    }
    Ok(out)
}

/// A string field.
pub fn string(field: Field<'_>) -> Result<String, ProtobufError> {
    match field {
        Field::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| err("string is not UTF-8")),
        _ => Err(err("expected a string")),
    }
}

/// A bool field.
pub fn boolean(field: Field<'_>) -> Result<bool, ProtobufError> {
    match field {
        Field::Varint(v) => Ok(v != 0),
        _ => Err(err("expected a bool")),
    }
}

/// One entry of a map field: the key (field 1) and the raw value (field 2, empty if absent).
pub fn map_entry(field: Field<'_>) -> Result<(String, &[u8]), ProtobufError> {
    let Field::Bytes(entry) = field else {
        return Err(err("expected a map entry"));
    };
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, f) in fields(entry)? {
        match (n, f) {
            (1, f) => key = string(f)?,
            (2, Field::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

/// Inserts a `map<string, string>` entry into `obj[name]`.
pub fn insert_string_entry(
    obj: &mut Map<String, Value>,
    name: &str,
    field: Field<'_>,
) -> Result<(), ProtobufError> {
    let (k, v) = map_entry(field)?;
    let v = String::from_utf8(v.to_vec()).map_err(|_| err(format!("{name}[{k}] is not UTF-8")))?;
    map_of(obj, name).insert(k, json!(v));
    Ok(())
}

/// Inserts a `map<string, bytes>` entry into `obj[name]`, base64-encoded as in JSON.
pub fn insert_bytes_entry(
    obj: &mut Map<String, Value>,
    name: &str,
    field: Field<'_>,
) -> Result<(), ProtobufError> {
    let (k, v) = map_entry(field)?;
    let encoded = serde_json::to_value(k8s_openapi::ByteString(v.to_vec()))
        .map_err(|e| err(format!("{name}[{k}]: {e}")))?;
    map_of(obj, name).insert(k, encoded);
    Ok(())
}

fn map_of<'m>(obj: &'m mut Map<String, Value>, name: &str) -> &'m mut Map<String, Value> {
    let entry = obj.entry(name.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("just made an object")
}

/// The parts of `ObjectMeta` a client sets on create (name, generateName, namespace,
/// resourceVersion, labels, annotations, finalizers); the rest is the server's.
fn object_meta(body: &[u8]) -> Result<Value, ProtobufError> {
    let mut meta = Map::new();
    for (n, f) in fields(body)? {
        let name = match n {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            6 => "resourceVersion",
            11 => {
                insert_string_entry(&mut meta, "labels", f)?;
                continue;
            }
            12 => {
                insert_string_entry(&mut meta, "annotations", f)?;
                continue;
            }
            14 => {
                push_finalizer(&mut meta, string(f)?);
                continue;
            }
            _ => continue,
        };
        let v = string(f)?;
        if !v.is_empty() {
            meta.insert(name.into(), json!(v));
        }
    }
    Ok(Value::Object(meta))
}

fn push_finalizer(meta: &mut Map<String, Value>, finalizer: String) {
    if let Some(list) = meta
        .entry("finalizers")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    {
        list.push(json!(finalizer));
    }
}

/// Decodes an enveloped object of `kind`: the JSON object with `apiVersion`, `kind` and
/// `metadata` set, and every other field of the object's message handed to `field`.
pub fn decode_object(
    body: &[u8],
    kind: &str,
    mut field: impl FnMut(&mut Map<String, Value>, u32, Field<'_>) -> Result<(), ProtobufError>,
) -> Result<Value, ProtobufError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s protobuf magic prefix"))?;
    let mut api_version = String::new();
    let mut body_kind = String::new();
    let mut raw: Option<&[u8]> = None;
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (m, g) in fields(type_meta)? {
                    match m {
                        1 => api_version = string(g)?,
                        2 => body_kind = string(g)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    if !body_kind.is_empty() && body_kind != kind {
        return Err(err(format!("expected a {kind}, got a {body_kind}")));
    }
    let raw = raw.ok_or_else(|| err("no object in the envelope"))?;
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(kind));
    if !api_version.is_empty() {
        obj.insert("apiVersion".into(), json!(api_version));
    }
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(meta)) => {
                obj.insert("metadata".into(), object_meta(meta)?);
            }
            (n, f) => field(&mut obj, n, f)?,
        }
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body `kubectl create secret generic db --type=kubernetes.io/basic-auth
    /// --from-literal=password=hunter2` sends (kubectl 1.33, captured with `-v=8`).
    const KUBECTL_SECRET: &[u8] = &[
        0x6b, 0x38, 0x73, 0x00, 0x0a, 0x0c, 0x0a, 0x02, 0x76, 0x31, 0x12, 0x06, 0x53, 0x65, 0x63,
        0x72, 0x65, 0x74, 0x12, 0x43, 0x0a, 0x12, 0x0a, 0x02, 0x64, 0x62, 0x12, 0x00, 0x1a, 0x00,
        0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x13, 0x0a, 0x08, 0x70,
        0x61, 0x73, 0x73, 0x77, 0x6f, 0x72, 0x64, 0x12, 0x07, 0x68, 0x75, 0x6e, 0x74, 0x65, 0x72,
        0x32, 0x1a, 0x18, 0x6b, 0x75, 0x62, 0x65, 0x72, 0x6e, 0x65, 0x74, 0x65, 0x73, 0x2e, 0x69,
        0x6f, 0x2f, 0x62, 0x61, 0x73, 0x69, 0x63, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x1a, 0x00, 0x22,
        0x00,
    ];

    #[test]
    fn decodes_what_kubectl_sends() {
        let v = decode_object(KUBECTL_SECRET, "Secret", |obj, n, f| {
            match n {
                2 => insert_bytes_entry(obj, "data", f)?,
                3 => {
                    obj.insert("type".into(), json!(string(f)?));
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "data": {"password": "aHVudGVyMg=="}, "type": "kubernetes.io/basic-auth"})
        );
        let e = decode_object(KUBECTL_SECRET, "ConfigMap", |_, _, _| Ok(())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed protobuf body: expected a ConfigMap, got a Secret"
        );
    }

    #[test]
    fn metadata_maps_and_lists() {
        // name "x", labels {a: b}, finalizers ["f"].
        let meta = [
            0x0a, 0x01, b'x', 0x5a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', 0x72, 0x01, b'f',
        ];
        assert_eq!(
            object_meta(&meta).unwrap(),
            json!({"name": "x", "labels": {"a": "b"}, "finalizers": ["f"]})
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            b"k8s\0".to_vec(),
            b"{\"json\": true}".to_vec(),
            vec![0x6b, 0x38, 0x73, 0x00, 0x12, 0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![0x6b, 0x38, 0x73, 0x00, 0x0f],
            vec![
                0x6b, 0x38, 0x73, 0x00, 0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
                0x80, 0x80,
            ],
        ];
        for cut in 0..KUBECTL_SECRET.len() {
            inputs.push(KUBECTL_SECRET[..cut].to_vec());
        }
        for input in inputs {
            let _ = decode_object(&input, "Secret", |obj, n, f| {
                if n == 2 {
                    insert_bytes_entry(obj, "data", f)?;
                }
                Ok(())
            });
        }
    }
}
