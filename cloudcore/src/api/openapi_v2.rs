//! `GET /openapi/v2`: the Swagger 2.0 document of the served resources, in JSON and in the
//! protobuf form (gnostic's `openapi.v2.Document`) kubectl asks for.
//!
//! Why it exists: `kubectl apply`/`create` (default `--validate=strict`) first asks
//! `/openapi/v3` whether the server validates fields of the object's kind. For a kind the server
//! does not serve (`kind: Widget`, `apiVersion: example.com/v1`) the v3 index has no document,
//! so kubectl falls back to `/openapi/v2`; a 404 there ends the command with "failed to
//! download openapi: the server could not find the requested resource" instead of kubectl's
//! usual `no matches for kind "Widget" in version "example.com/v1"`. client-go's
//! `OpenAPISchema()` only reads protobuf (`Accept:
//! application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, parsed with
//! `proto.Unmarshal`), so JSON alone would not do; JSON is served to everything else, as
//! kube-apiserver does.
//!
//! The document is built from the same schemas and operations as the v3 documents
//! ([`super::schemas`], [`super::discovery`]): definitions carry
//! `x-kubernetes-group-version-kind`, so kubectl's v2 model finds the kinds, and every
//! `$ref` points into `#/definitions/`, because kubectl's v2 parser refuses a document with a
//! reference it cannot resolve.

use super::discovery::OpenApiDocs;
use super::resource::Registry;
use serde_json::{json, Map, Value};

/// The media type client-go asks `/openapi/v2` for.
pub const PROTOBUF_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The `Content-Type` of the protobuf answer: kube-openapi's, with `.` for the `@`, because an
/// `@` is not a token character and Go's `mime.ParseMediaType` (which client-go runs on every
/// answer) refuses it.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Where v3 schemas refer to, and where v2 references must point instead.
const V3_PREFIX: &str = "#/components/schemas/";
const V2_PREFIX: &str = "#/definitions/";

/// The v2 document in both encodings, built once per registry.
#[derive(Debug, Clone)]
pub struct OpenApiV2 {
    /// The Swagger 2.0 document.
    pub json: Value,
    /// The same document as a gnostic `openapi.v2.Document`.
    pub protobuf: Vec<u8>,
}

impl OpenApiV2 {
    /// The document of `registry`, from its v3 documents `v3`.
    pub fn build(registry: &Registry, v3: &OpenApiDocs) -> Self {
        let json = document(registry, v3);
        let protobuf = encode_document(&json);
        Self { json, protobuf }
    }
}

/// Whether an `Accept` header asks for the protobuf form (any variant of gnostic's media type).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.split(',').any(|m| {
        m.trim()
            .starts_with("application/com.github.proto-openapi.spec.v2")
    })
}

/// Rewrites every v3 `$ref` under `v` to its v2 form.
fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "$ref" {
                    if let Some(name) = child.as_str().and_then(|r| r.strip_prefix(V3_PREFIX)) {
                        *child = json!(format!("{V2_PREFIX}{name}"));
                    }
                } else {
                    rewrite_refs(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// A v3 operation as a v2 one: query parameters carry their type themselves.
fn operation_v2(op: &Value) -> Value {
    let mut out = op.as_object().cloned().unwrap_or_default();
    if let Some(params) = op.get("parameters").and_then(Value::as_array) {
        let params: Vec<Value> = params
            .iter()
            .map(|p| {
                json!({
                    "name": p["name"],
                    "in": p["in"],
                    "description": p["description"],
                    "type": p.pointer("/schema/type").cloned().unwrap_or(json!("string")),
                    "uniqueItems": true,
                })
            })
            .collect();
        out.insert("parameters".into(), Value::Array(params));
    }
    Value::Object(out)
}

/// The Swagger 2.0 document: every v3 document's paths, and the schemas of every served kind.
fn document(registry: &Registry, v3: &OpenApiDocs) -> Value {
    let mut paths = Map::new();
    let mut gv_paths: Vec<&String> = v3.documents.keys().collect();
    gv_paths.sort();
    for gv in gv_paths {
        let Some(doc_paths) = v3.documents[gv].get("paths").and_then(Value::as_object) else {
            continue;
        };
        for (path, item) in doc_paths {
            let item: Map<String, Value> = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(verb, op)| (verb.clone(), operation_v2(op)))
                .collect();
            paths.insert(path.clone(), Value::Object(item));
        }
    }
    let kinds: Vec<(&str, &str, &str)> = registry
        .iter()
        .map(|h| h.info())
        .map(|i| (i.group, i.version, i.kind))
        .collect();
    let mut definitions = Value::Object(super::schemas::components(&kinds));
    rewrite_refs(&mut definitions);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A protobuf message under construction (proto3 wire format).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// A string field; proto3 leaves empty strings out.
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    /// A sub-message, written even when empty: presence matters (an object schema with an
    /// empty `properties` is still a kind to kubectl's parser).
    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    fn bool(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn double(&mut self, field: u32, f: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&f.to_le_bytes());
    }

    fn int64(&mut self, field: u32, i: i64) {
        self.key(field, 0);
        self.varint(i as u64);
    }
}

/// gnostic's `Any`: the value as YAML text (JSON is YAML).
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &v.to_string());
    m
}

/// A `NamedAny` per `x-` key of `obj` (vendor extensions), at `field`.
fn vendor_extensions(out: &mut Msg, field: u32, obj: &Map<String, Value>) {
    for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = Msg::default();
        named.string(1, k);
        named.message(2, any(v));
        out.message(field, named);
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

/// gnostic's `Schema` (fields as numbered in `OpenAPIv2.proto`). Keys v2 has no place for
/// (`nullable`, `oneOf`, ...) are left out; a boolean schema is an empty (arbitrary) one.
fn encode_schema(v: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(obj) = v.as_object() else {
        return m;
    };
    m.string(1, str_of(obj, "$ref"));
    m.string(2, str_of(obj, "format"));
    m.string(3, str_of(obj, "title"));
    m.string(4, str_of(obj, "description"));
    if let Some(d) = obj.get("default") {
        m.message(5, any(d));
    }
    for (field, key) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(f) = obj.get(key).and_then(Value::as_f64) {
            m.double(field, f);
        }
    }
    for (field, key) in [(8, "exclusiveMaximum"), (10, "exclusiveMinimum")] {
        m.bool(
            field,
            obj.get(key).and_then(Value::as_bool).unwrap_or(false),
        );
    }
    for (field, key) in [(11, "maxLength"), (12, "minLength")] {
        if let Some(i) = obj.get(key).and_then(Value::as_i64) {
            m.int64(field, i);
        }
    }
    m.string(13, str_of(obj, "pattern"));
    for (field, key) in [(14, "maxItems"), (15, "minItems")] {
        if let Some(i) = obj.get(key).and_then(Value::as_i64) {
            m.int64(field, i);
        }
    }
    m.bool(
        16,
        obj.get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    for (field, key) in [(17, "maxProperties"), (18, "minProperties")] {
        if let Some(i) = obj.get(key).and_then(Value::as_i64) {
            m.int64(field, i);
        }
    }
    for r in obj
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            m.bytes(19, r.as_bytes());
        }
    }
    for e in obj
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(20, any(e));
    }
    match obj.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Msg::default();
            item.key(2, 0);
            item.varint(u64::from(*b));
            m.message(21, item);
        }
        Some(s @ Value::Object(_)) => {
            let mut item = Msg::default();
            item.message(1, encode_schema(s));
            m.message(21, item);
        }
        _ => {}
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let types: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    if !types.is_empty() {
        let mut item = Msg::default();
        for t in types {
            item.bytes(1, t.as_bytes());
        }
        m.message(22, item);
    }
    match obj.get("items") {
        Some(Value::Array(schemas)) => {
            let mut item = Msg::default();
            for s in schemas {
                item.message(1, encode_schema(s));
            }
            m.message(23, item);
        }
        Some(s) => {
            let mut item = Msg::default();
            item.message(1, encode_schema(s));
            m.message(23, item);
        }
        None => {}
    }
    for s in obj
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.message(24, encode_schema(s));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, s) in props {
            let mut named = Msg::default();
            named.string(1, name);
            named.message(2, encode_schema(s));
            p.message(1, named);
        }
        m.message(25, p);
    }
    m.bool(
        27,
        obj.get("readOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    if let Some(e) = obj.get("example") {
        m.message(30, any(e));
    }
    vendor_extensions(&mut m, 31, obj);
    m
}

/// gnostic's `Operation`: query parameters, a 200 response and the vendor extensions
/// (`x-kubernetes-group-version-kind` is what kubectl's query-parameter check reads).
fn encode_operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(obj) = op.as_object() else {
        return m;
    };
    m.string(3, str_of(obj, "description"));
    m.string(5, str_of(obj, "operationId"));
    for p in obj
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(p) = p.as_object() else { continue };
        let mut query = Msg::default();
        query.string(2, str_of(p, "in"));
        query.string(3, str_of(p, "description"));
        query.string(4, str_of(p, "name"));
        query.string(6, str_of(p, "type"));
        query.bool(
            20,
            p.get("uniqueItems")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        );
        let mut non_body = Msg::default();
        non_body.message(3, query);
        let mut parameter = Msg::default();
        parameter.message(2, non_body);
        let mut item = Msg::default();
        item.message(1, parameter);
        m.message(8, item);
    }
    let mut responses = Msg::default();
    for (code, r) in obj
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut response = Msg::default();
        response.string(
            1,
            r.get("description").and_then(Value::as_str).unwrap_or(""),
        );
        let mut value = Msg::default();
        value.message(1, response);
        let mut named = Msg::default();
        named.string(1, code);
        named.message(2, value);
        responses.message(1, named);
    }
    m.message(9, responses);
    vendor_extensions(&mut m, 13, obj);
    m
}

/// gnostic's `Document` of a v2 JSON document.
fn encode_document(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Msg::default();
    info.string(
        1,
        doc.pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    info.string(
        2,
        doc.pointer("/info/version")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    m.message(2, info);
    let mut paths = Msg::default();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let mut path_item = Msg::default();
        for (field, verb) in [
            (2, "get"),
            (3, "put"),
            (4, "post"),
            (5, "delete"),
            (8, "patch"),
        ] {
            if let Some(op) = item.get(verb) {
                path_item.message(field, encode_operation(op));
            }
        }
        let mut named = Msg::default();
        named.string(1, path);
        named.message(2, path_item);
        paths.message(2, named);
    }
    m.message(8, paths);
    let mut definitions = Msg::default();
    for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
        let mut named = Msg::default();
        named.string(1, name);
        named.message(2, encode_schema(schema));
        definitions.message(1, named);
    }
    m.message(9, definitions);
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs() -> (Registry, OpenApiDocs) {
        let registry = Registry::builtin();
        let v3 = OpenApiDocs::build(&registry);
        (registry, v3)
    }

    /// Every `$ref` under `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    match child.as_str() {
                        Some(r) if k == "$ref" => out.push(r),
                        _ => refs(child, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }

    #[test]
    fn the_v2_document_tags_kinds_and_resolves_every_reference() {
        let (registry, v3) = docs();
        let doc = OpenApiV2::build(&registry, &v3).json;
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().unwrap();
        assert_eq!(
            defs["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert!(defs.contains_key("io.k8s.api.apps.v1.Deployment"));
        let mut all = Vec::new();
        refs(&doc["definitions"], &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix(V2_PREFIX)
                .unwrap_or_else(|| panic!("{r} is not a v2 reference"));
            assert!(defs.contains_key(name), "{r} does not resolve");
        }
        // kubectl's v2 field-validation check reads the patch operation of the kind's item path.
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"
                && p["in"] == "query"
                && p["type"] == "string"));
    }

    #[test]
    fn protobuf_fields_follow_gnostics_numbering() {
        // swagger = 1, info = 2 {title = 1, version = 2}, paths = 8, definitions = 9.
        let doc = json!({"swagger": "2.0", "info": {"title": "T", "version": "v"},
            "paths": {}, "definitions": {"D": {"type": "object", "properties": {}}}});
        let bytes = encode_document(&doc);
        let mut want = vec![0x0a, 3, b'2', b'.', b'0'];
        want.extend([0x12, 6, 0x0a, 1, b'T', 0x12, 1, b'v']);
        want.extend([0x42, 0]);
        // definitions { additional_properties { name "D" value { type {"object"} properties {} } } }
        let schema = [
            0xb2, 0x01, 8, 0x0a, 6, b'o', b'b', b'j', b'e', b'c', b't', 0xca, 0x01, 0,
        ];
        let mut named = vec![0x0a, 1, b'D', 0x12, schema.len() as u8];
        named.extend(schema);
        want.extend([0x4a, named.len() as u8 + 2, 0x0a, named.len() as u8]);
        want.extend(named);
        assert_eq!(bytes, want);
        // A vendor extension is a NamedAny (field 31) holding its value as YAML.
        let m = encode_schema(&json!({"x-k": [1]}));
        assert_eq!(
            m.0,
            [0xfa, 0x01, 12, 0x0a, 3, b'x', b'-', b'k', 0x12, 5, 0x12, 3, b'[', b'1', b']']
        );
    }

    #[test]
    fn kubectl_protobuf_accept_headers_are_recognised() {
        assert!(wants_protobuf(PROTOBUF_MEDIA_TYPE));
        assert!(wants_protobuf(
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf, application/json"
        ));
        assert!(!wants_protobuf("application/json"));
        assert!(!wants_protobuf("*/*"));
    }
}
