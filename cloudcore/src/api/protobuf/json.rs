//! The one conversion from k8s-pb messages to the Kubernetes JSON model.
//!
//! k8s-pb's structs have no serde and their field names lose JSON's case (`podIPs` becomes
//! `pod_i_ps`), so each message is described once, by a [`message!`] table in `schema/` that
//! lists `tag rust_field: mode "jsonName"` for every field. The macro destructures the struct
//! exhaustively, so a k8s-pb field missing from its table does not compile: nothing is dropped
//! silently. Fields on the wire that k8s-pb does not know are refused by [`Wire::check`], which
//! names them, before prost (which skips unknown fields) decodes the message.
//!
//! Modes follow the Go types, which is what makes the JSON the one a manifest gives:
//! - `val`: a Go value field. Go's encoder always writes these, even at their zero value
//!   (`generateName: ""`, an empty `creationTimestamp`), where JSON omits them; so a zero is
//!   left out, exactly as if the field was absent.
//! - `ptr`: a Go pointer field: present on the wire means set, even at zero (`replicas: 0`,
//!   `allocateLoadBalancerNodePorts: false`).
//! - `inline`: an embedded Go struct whose fields JSON flattens into the parent (`Probe`'s
//!   handler, `Volume`'s source).

use super::wire::{self, Field};
use base64::Engine as _;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{FieldsV1, MicroTime, Time};
use k8s_pb::apimachinery::pkg::runtime::RawExtension;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A field the conversion cannot map, with its JSON path (`spec.containers[0].ports`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path segments, innermost first (they are added while the error travels out).
    rev_path: Vec<String>,
    /// What is wrong with the field.
    pub message: String,
}

impl FieldError {
    /// An error about the value being converted.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            rev_path: Vec::new(),
            message: message.into(),
        }
    }

    /// The error as seen from the message that holds the field `name`.
    pub fn at(mut self, name: &str) -> Self {
        if !name.is_empty() {
            self.rev_path.push(name.to_string());
        }
        self
    }

    fn at_index(mut self, i: usize) -> Self {
        self.rev_path.push(format!("[{i}]"));
        self
    }

    /// The JSON path of the field, outermost first; empty for the object itself.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for seg in self.rev_path.iter().rev() {
            if !out.is_empty() && !seg.starts_with('[') {
                out.push('.');
            }
            out.push_str(seg);
        }
        out
    }
}

impl From<wire::WireError> for FieldError {
    fn from(e: wire::WireError) -> Self {
        Self::new(e.to_string())
    }
}

/// A value that has a Kubernetes JSON form.
pub trait ToJson {
    /// The JSON value.
    fn to_json(&self) -> Result<Value, FieldError>;

    /// Whether this is Go's zero value, which a `val` field omits (as `omitempty` does).
    fn is_zero(&self) -> bool {
        false
    }

    /// Whether a `ptr` field holding this is unset.
    fn is_absent(&self) -> bool {
        self.is_zero()
    }
}

impl ToJson for String {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::String(self.clone()))
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl ToJson for bool {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::Bool(*self))
    }
    fn is_zero(&self) -> bool {
        !*self
    }
}

impl ToJson for i32 {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::from(*self))
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl ToJson for i64 {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::from(*self))
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl ToJson for f64 {
    fn to_json(&self) -> Result<Value, FieldError> {
        serde_json::Number::from_f64(*self)
            .map(Value::Number)
            .ok_or_else(|| FieldError::new(format!("{self} has no JSON form")))
    }
    fn is_zero(&self) -> bool {
        *self == 0.0
    }
}

/// `bytes`: base64, as Go's JSON encodes `[]byte`.
impl ToJson for Vec<u8> {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(self),
        ))
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Result<Value, FieldError> {
        self.as_ref().map_or(Ok(Value::Null), T::to_json)
    }
    fn is_zero(&self) -> bool {
        self.as_ref().is_none_or(T::is_zero)
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> Result<Value, FieldError> {
        self.iter()
            .enumerate()
            .map(|(i, v)| v.to_json().map_err(|e| e.at_index(i)))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn to_json(&self) -> Result<Value, FieldError> {
        let mut out = Map::new();
        for (k, v) in self {
            out.insert(k.clone(), v.to_json().map_err(|e| e.at(&format!("[{k}]")))?);
        }
        Ok(Value::Object(out))
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

fn timestamp(seconds: Option<i64>, nanos: Option<i32>) -> Result<jiff::Timestamp, FieldError> {
    jiff::Timestamp::new(seconds.unwrap_or(0), nanos.unwrap_or(0))
        .map_err(|e| FieldError::new(format!("not a valid time: {e}")))
}

/// `meta/v1.Time`: RFC 3339 in seconds, as Go's `metav1.Time` marshals.
impl ToJson for Time {
    fn to_json(&self) -> Result<Value, FieldError> {
        let t = timestamp(self.seconds, None)?;
        Ok(Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
    }
    fn is_zero(&self) -> bool {
        self.seconds.unwrap_or(0) == 0 && self.nanos.unwrap_or(0) == 0
    }
}

/// `meta/v1.MicroTime`: RFC 3339 with microseconds.
impl ToJson for MicroTime {
    fn to_json(&self) -> Result<Value, FieldError> {
        let t = timestamp(self.seconds, self.nanos)?;
        Ok(Value::String(
            t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        ))
    }
    fn is_zero(&self) -> bool {
        self.seconds.unwrap_or(0) == 0 && self.nanos.unwrap_or(0) == 0
    }
}

/// `resource.Quantity`: its canonical string.
impl ToJson for Quantity {
    fn to_json(&self) -> Result<Value, FieldError> {
        Ok(Value::String(self.string.clone().unwrap_or_default()))
    }
    fn is_zero(&self) -> bool {
        self.string.as_deref().unwrap_or("").is_empty()
    }
}

/// `intstr.IntOrString`: a JSON number (`type` 0) or string (`type` 1).
impl ToJson for IntOrString {
    fn to_json(&self) -> Result<Value, FieldError> {
        match self.r#type.unwrap_or(0) {
            0 => Ok(Value::from(self.int_val.unwrap_or(0))),
            1 => Ok(Value::String(self.str_val.clone().unwrap_or_default())),
            t => Err(FieldError::new(format!(
                "IntOrString type {t} is neither 0 (int) nor 1 (string)"
            ))),
        }
    }
    fn is_zero(&self) -> bool {
        self.r#type.unwrap_or(0) == 0 && self.int_val.unwrap_or(0) == 0
    }
}

/// Embedded JSON (`FieldsV1`, `RawExtension`): an object a protobuf client sends as JSON bytes.
fn embedded_json(raw: Option<&[u8]>) -> Result<Value, FieldError> {
    let raw = raw.unwrap_or_default();
    serde_json::from_slice(raw).map_err(|e| {
        FieldError::new(format!(
            "embedded object is not JSON ({e}); only JSON-encoded embedded objects are accepted"
        ))
    })
}

/// `meta/v1.FieldsV1` (managed fields): embedded JSON.
impl ToJson for FieldsV1 {
    fn to_json(&self) -> Result<Value, FieldError> {
        embedded_json(self.raw.as_deref())
    }
    fn is_zero(&self) -> bool {
        self.raw.as_ref().is_none_or(Vec::is_empty)
    }
}

/// `runtime.RawExtension`: embedded JSON.
impl ToJson for RawExtension {
    fn to_json(&self) -> Result<Value, FieldError> {
        embedded_json(self.raw.as_deref())
    }
    fn is_zero(&self) -> bool {
        self.raw.as_ref().is_none_or(Vec::is_empty)
    }
}

/// A type whose wire form can be checked against the schema: every field number known.
pub trait Wire {
    /// Whether each occurrence on the wire is one element of a list.
    const REPEATED: bool = false;

    /// Checks one occurrence of a field holding this type.
    fn check(field: Field<'_>) -> Result<(), FieldError>;
}

macro_rules! scalar_wire {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn check(_: Field<'_>) -> Result<(), FieldError> {
                Ok(())
            }
        }
    )*};
}
scalar_wire!(String, bool, i32, i64, f64, Vec<u8>);

impl<T: Wire> Wire for Option<T> {
    fn check(field: Field<'_>) -> Result<(), FieldError> {
        T::check(field)
    }
}

/// A repeated field: each occurrence on the wire is one element.
impl<T: Wire> Wire for Vec<T> {
    const REPEATED: bool = true;

    fn check(field: Field<'_>) -> Result<(), FieldError> {
        T::check(field)
    }
}

/// A map field: each occurrence is an entry message (key = 1, value = 2).
impl<T: Wire> Wire for BTreeMap<String, T> {
    fn check(field: Field<'_>) -> Result<(), FieldError> {
        let entry = wire::message(field)?;
        let (mut key, mut value) = (None, None);
        for (n, f) in wire::fields(entry)? {
            match (n, f) {
                (1, Field::Bytes(k)) => key = Some(String::from_utf8_lossy(k)),
                (2, f) => value = Some(f),
                (n, _) => return Err(unknown_field(n, "map entry")),
            }
        }
        match value {
            Some(v) => T::check(v).map_err(|e| e.at(&format!("[{}]", key.unwrap_or_default()))),
            None => Ok(()),
        }
    }
}

/// The field numbers of the hand-written types, which all have only scalar fields.
macro_rules! leaf_wire {
    ($($t:ty: [$($n:literal),*]),* $(,)?) => {$(
        impl Wire for $t {
            fn check(field: Field<'_>) -> Result<(), FieldError> {
                for (n, _) in wire::fields(wire::message(field)?)? {
                    if ![$($n),*].contains(&n) {
                        return Err(unknown_field(n, stringify!($t)));
                    }
                }
                Ok(())
            }
        }
    )*};
}
leaf_wire!(
    Time: [1, 2],
    MicroTime: [1, 2],
    Quantity: [1],
    IntOrString: [1, 2, 3],
    FieldsV1: [1],
    RawExtension: [1],
);

/// A field number the schema does not have.
pub fn unknown_field(n: u32, message: &str) -> FieldError {
    FieldError::new(format!(
        "field number {n} of {message} is not in this server's schema (k8s-pb 0.9); \
         the client is newer than the server or the body is corrupt"
    ))
}

/// Checks occurrence `nth` of the field of `M` that `get` selects (the closure is there for
/// type inference in [`message!`]).
pub fn check_field<M, T: Wire>(
    _get: fn(&M) -> &T,
    field: Field<'_>,
    nth: usize,
) -> Result<(), FieldError> {
    T::check(field).map_err(|e| if T::REPEATED { e.at_index(nth) } else { e })
}

/// Describes one k8s-pb message: `tag rust_field: mode "jsonName"`, one line per field (see
/// the module documentation for the modes). Generates [`ToJson`], [`FromJson`] and [`Wire`]
/// for it: one table for both directions.
macro_rules! message {
    (@from inline $v:ident $obj:ident $json:literal) => {
        $crate::api::protobuf::json::from_inline($v)?
    };
    (@from $mode:ident $v:ident $obj:ident $json:literal) => {
        $crate::api::protobuf::json::from_field($obj, $json)?
    };
    ($ty:path { $($tag:literal $field:ident: $mode:ident $json:literal),* $(,)? }) => {
        impl $crate::api::protobuf::json::ToJson for $ty {
            fn to_json(&self) -> Result<serde_json::Value, $crate::api::protobuf::json::FieldError> {
                #[allow(unused_imports)]
                use $crate::api::protobuf::json::ToJson as _;
                let $ty { $($field),* } = self;
                #[allow(unused_mut)]
                let mut obj = serde_json::Map::new();
                $( $crate::api::protobuf::json::$mode(&mut obj, $json, $field)?; )*
                Ok(serde_json::Value::Object(obj))
            }
        }

        impl $crate::api::protobuf::json::FromJson for $ty {
            fn from_json(
                v: &serde_json::Value,
            ) -> Result<Self, $crate::api::protobuf::json::FieldError> {
                let Some(obj) = v.as_object() else {
                    return Err($crate::api::protobuf::json::FieldError::new(format!(
                        "expected an object, got {v}"
                    )));
                };
                Ok(Self {
                    $( $field: $crate::api::protobuf::json::message!(@from $mode v obj $json), )*
                })
            }
        }

        impl $crate::api::protobuf::json::Wire for $ty {
            fn check(
                field: $crate::api::protobuf::wire::Field<'_>,
            ) -> Result<(), $crate::api::protobuf::json::FieldError> {
                let body = $crate::api::protobuf::wire::message(field)?;
                let mut seen = std::collections::HashMap::<u32, usize>::new();
                for (n, f) in $crate::api::protobuf::wire::fields(body)? {
                    let nth = seen.entry(n).or_default();
                    *nth += 1;
                    let nth = *nth - 1;
                    match n {
                        $( $tag => $crate::api::protobuf::json::check_field(|m: &$ty| &m.$field, f, nth)
                            .map_err(|e| e.at($json))?, )*
                        n => {
                            let name = stringify!($ty);
                            let name = name.rsplit("::").next().unwrap_or(name).trim();
                            return Err($crate::api::protobuf::json::unknown_field(n, name));
                        }
                    }
                }
                Ok(())
            }
        }
    };
}
pub(super) use message;

/// A Go value field: omitted at its zero value.
pub fn val<T: ToJson>(obj: &mut Map<String, Value>, name: &str, v: &T) -> Result<(), FieldError> {
    if !v.is_zero() {
        obj.insert(name.to_string(), v.to_json().map_err(|e| e.at(name))?);
    }
    Ok(())
}

/// A Go pointer field: written whenever it was on the wire.
pub fn ptr<T: ToJson>(obj: &mut Map<String, Value>, name: &str, v: &T) -> Result<(), FieldError> {
    if !v.is_absent() {
        obj.insert(name.to_string(), v.to_json().map_err(|e| e.at(name))?);
    }
    Ok(())
}

/// An embedded Go struct: its fields join the parent's.
pub fn inline<T: ToJson>(obj: &mut Map<String, Value>, _: &str, v: &T) -> Result<(), FieldError> {
    if v.is_absent() {
        return Ok(());
    }
    match v.to_json()? {
        Value::Object(fields) => obj.extend(fields),
        other => {
            return Err(FieldError::new(format!(
                "an inline field converted to {other}, not an object"
            )))
        }
    }
    Ok(())
}

/// A value that can be built from its Kubernetes JSON form (for protobuf responses).
pub trait FromJson: Sized {
    /// The value of `v`.
    fn from_json(v: &Value) -> Result<Self, FieldError>;
}

fn expected(what: &str, v: &Value) -> FieldError {
    FieldError::new(format!("expected {what}, got {v}"))
}

impl FromJson for String {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| expected("a string", v))
    }
}

impl FromJson for bool {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        v.as_bool().ok_or_else(|| expected("a boolean", v))
    }
}

impl FromJson for i32 {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        v.as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| expected("a 32-bit integer", v))
    }
}

impl FromJson for i64 {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        v.as_i64().ok_or_else(|| expected("an integer", v))
    }
}

impl FromJson for f64 {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        v.as_f64().ok_or_else(|| expected("a number", v))
    }
}

impl FromJson for Vec<u8> {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        let s = v.as_str().ok_or_else(|| expected("a base64 string", v))?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| FieldError::new(format!("not base64: {e}")))
    }
}

impl<T: FromJson> FromJson for Option<T> {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        match v {
            Value::Null => Ok(None),
            v => T::from_json(v).map(Some),
        }
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| T::from_json(v).map_err(|e| e.at_index(i)))
                .collect(),
            v => Err(expected("a list", v)),
        }
    }
}

impl<T: FromJson> FromJson for BTreeMap<String, T> {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        match v {
            Value::Null => Ok(BTreeMap::new()),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    T::from_json(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| e.at(&format!("[{k}]")))
                })
                .collect(),
            v => Err(expected("an object", v)),
        }
    }
}

fn parse_time(v: &Value) -> Result<jiff::Timestamp, FieldError> {
    let s = v.as_str().ok_or_else(|| expected("an RFC 3339 time", v))?;
    s.parse()
        .map_err(|e| FieldError::new(format!("{s:?} is not an RFC 3339 time: {e}")))
}

impl FromJson for Time {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        let t = parse_time(v)?;
        Ok(Time {
            seconds: Some(t.as_second()),
            nanos: Some(0),
        })
    }
}

impl FromJson for MicroTime {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        let t = parse_time(v)?;
        Ok(MicroTime {
            seconds: Some(t.as_second()),
            nanos: Some(t.subsec_nanosecond()),
        })
    }
}

impl FromJson for Quantity {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        let string = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            v => return Err(expected("a quantity", v)),
        };
        Ok(Quantity {
            string: Some(string),
        })
    }
}

impl FromJson for IntOrString {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        match v {
            Value::String(s) => Ok(IntOrString {
                r#type: Some(1),
                int_val: Some(0),
                str_val: Some(s.clone()),
            }),
            v => Ok(IntOrString {
                r#type: Some(0),
                int_val: Some(i32::from_json(v)?),
                str_val: Some(String::new()),
            }),
        }
    }
}

impl FromJson for FieldsV1 {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        Ok(FieldsV1 {
            raw: Some(v.to_string().into_bytes()),
        })
    }
}

impl FromJson for RawExtension {
    fn from_json(v: &Value) -> Result<Self, FieldError> {
        Ok(RawExtension {
            raw: Some(v.to_string().into_bytes()),
        })
    }
}

/// The field `name` of the JSON object `obj`, or the empty value when it is absent.
pub fn from_field<T: FromJson + Default>(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<T, FieldError> {
    match obj.get(name) {
        None => Ok(T::default()),
        Some(v) => T::from_json(v).map_err(|e| e.at(name)),
    }
}

/// An inline field: built from the parent's own object.
pub fn from_inline<T: FromJson>(parent: &Value) -> Result<T, FieldError> {
    T::from_json(parent)
}
