//! JSON Patch (RFC 6902) with JSON Pointers (RFC 6901): what `kubectl patch --type=json` sends.
//!
//! The operations apply to a copy, in order; the first failure discards them all, so a patch is
//! atomic. Errors name the operation's index and path, because a client holding a long patch
//! needs to know which step did not hold.
//!
//! The operations themselves are the `json-patch` crate's; this module is the adapter that
//! keeps Kubernetes' answers: a document that is not a list of well-formed operations is a 400
//! ([`JsonPatchError::Malformed`]), an operation that does not fit the object (a `test` that
//! does not hold, a path that does not exist) is a 422 ([`JsonPatchError::Failed`]), and `test`
//! compares numbers by value as Kubernetes does.

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

/// Why a JSON patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPatchError {
    /// The document is not a list of well-formed operations (a 400: the request is malformed).
    #[error("invalid JSON patch: {0}")]
    Malformed(String),
    /// An operation could not be applied to this object (a 422: the request is well-formed but
    /// does not fit the object).
    #[error("JSON patch operation {index} ({op}) on path {path:?} failed: {reason}")]
    Failed {
        /// Position of the operation in the patch, from 0.
        index: usize,
        /// The operation (`test`, `remove`, ...).
        op: String,
        /// Its `path`.
        path: String,
        /// What did not hold.
        reason: String,
    },
}

/// One decoded operation, or the first pointer in it that is not a JSON pointer.
///
/// A bad pointer is reported when the patch reaches its operation, as a failure of that
/// operation (422), not as a malformed document (400): the operation itself is well-formed.
enum Step {
    Op(PatchOperation),
    BadPointer {
        op: String,
        path: String,
        reason: String,
    },
}

fn name(op: &PatchOperation) -> &'static str {
    match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// Decodes every operation before any applies, so a malformed one anywhere rejects the patch.
fn decode(patch: &Value) -> Result<Vec<Step>, JsonPatchError> {
    let Some(list) = patch.as_array() else {
        return Err(JsonPatchError::Malformed(
            "a JSON patch must be a JSON array of operations".into(),
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let malformed = |e: serde_json::Error| {
                JsonPatchError::Malformed(format!(
                    "operation {i}: {e}: each operation needs \"op\" (add, remove, replace, \
                     move, copy or test), \"path\", and \"value\" or \"from\" as the op requires"
                ))
            };
            let obj = raw.as_object().ok_or_else(|| {
                JsonPatchError::Malformed(format!("operation {i}: not a JSON object"))
            })?;
            let error = match serde_json::from_value::<PatchOperation>(raw.clone()) {
                Ok(op) => return Ok(Step::Op(op)),
                Err(e) => e,
            };
            // Tell a bad pointer in a well-formed operation from a malformed operation: with
            // the bad pointers replaced by valid ones, the operation must decode.
            let mut fixed = obj.clone();
            let mut bad = None;
            for field in ["path", "from"] {
                if let Some(Value::String(s)) = obj.get(field) {
                    if let Err(e) = PointerBuf::parse(s.as_str()) {
                        bad.get_or_insert_with(|| {
                            format!(
                                "{field} {s:?} is not a JSON pointer ({e}): it must be empty or \
                                 start with \"/\", and ~ is an invalid escape unless ~0 or ~1"
                            )
                        });
                        fixed.insert(field.into(), Value::String(String::new()));
                    }
                }
            }
            match (
                bad,
                serde_json::from_value::<PatchOperation>(Value::Object(fixed)),
            ) {
                (Some(reason), Ok(op)) => Ok(Step::BadPointer {
                    op: name(&op).into(),
                    path: obj["path"].as_str().unwrap_or_default().into(),
                    reason,
                }),
                _ => Err(malformed(error)),
            }
        })
        .collect()
}

/// RFC 6902 equality: numbers compare by value (1 equals 1.0), objects regardless of order.
///
/// Kubernetes decodes numbers to float64 before it tests them, so `9` and `9.0` are equal;
/// the `json-patch` crate compares `serde_json` numbers as they are, hence our own `test`.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// What did not hold, in words, for one failed operation.
fn reason(kind: &PatchErrorKind) -> String {
    match kind {
        PatchErrorKind::InvalidPointer => "the path does not exist in the object (a missing key, \
            or an array index that is not a number without leading zeros or is out of bounds)"
            .into(),
        PatchErrorKind::InvalidFromPointer => {
            "the \"from\" path does not exist in the object".into()
        }
        PatchErrorKind::CannotMoveInsideItself => "cannot move a value into its own child".into(),
        other => other.to_string(),
    }
}

fn apply_op(doc: &mut Value, op: &PatchOperation) -> Result<(), String> {
    match op {
        PatchOperation::Test(t) => {
            let actual = doc
                .pointer(t.path.as_str())
                .ok_or_else(|| reason(&PatchErrorKind::InvalidPointer))?;
            if equal(actual, &t.value) {
                Ok(())
            } else {
                Err(format!(
                    "test failed: the value is {actual}, not {}",
                    t.value
                ))
            }
        }
        // The whole patch works on a copy that a failure discards, so no undo log is needed.
        _ => json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| reason(&e.kind)),
    }
}

/// Applies `patch` (a JSON array of operations) to `doc`.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let steps = decode(patch)?;
    let mut out = doc.clone();
    for (index, step) in steps.into_iter().enumerate() {
        let failed = |op: &str, path: String, reason| JsonPatchError::Failed {
            index,
            op: op.into(),
            path,
            reason,
        };
        match step {
            Step::Op(op) => {
                apply_op(&mut out, &op).map_err(|r| failed(name(&op), op.path().to_string(), r))?
            }
            Step::BadPointer { op, path, reason } => return Err(failed(&op, path, reason)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(doc: Value, patch: Value) -> Value {
        apply(&doc, &patch).unwrap()
    }

    fn failed(doc: Value, patch: Value) -> (usize, String, String) {
        match apply(&doc, &patch) {
            Err(JsonPatchError::Failed {
                index, op, reason, ..
            }) => (index, op, reason),
            other => panic!("expected a failed operation, got {other:?}"),
        }
    }

    // The examples of RFC 6902 appendix A.
    #[test]
    fn rfc6902_examples() {
        assert_eq!(
            ok(
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}])
            ),
            json!({"baz": "qux", "foo": "bar"})
        );
        assert_eq!(
            ok(
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}])
            ),
            json!({"foo": ["bar", "qux", "baz"]})
        );
        assert_eq!(
            ok(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "remove", "path": "/baz"}])
            ),
            json!({"foo": "bar"})
        );
        assert_eq!(
            ok(
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}])
            ),
            json!({"foo": ["bar", "baz"]})
        );
        assert_eq!(
            ok(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}])
            ),
            json!({"baz": "boo", "foo": "bar"})
        );
        assert_eq!(
            ok(
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}])
            ),
            json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}})
        );
        assert_eq!(
            ok(
                json!({"foo": ["all", "grass", "cows", "eat"]}),
                json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}])
            ),
            json!({"foo": ["all", "cows", "eat", "grass"]})
        );
        assert_eq!(
            ok(
                json!({"baz": "qux", "foo": ["a", 2, "c"]}),
                json!([{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}])
            ),
            json!({"baz": "qux", "foo": ["a", 2, "c"]})
        );
        let (i, op, _) = failed(
            json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}]),
        );
        assert_eq!((i, op.as_str()), (0, "test"));
        assert_eq!(
            ok(
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}])
            ),
            json!({"foo": "bar", "child": {"grandchild": {}}})
        );
        // A.10: unknown members of an operation are ignored.
        assert_eq!(
            ok(
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}])
            ),
            json!({"foo": "bar", "baz": "qux"})
        );
        // A.12: adding to a nonexistent target fails.
        let (i, op, reason) = failed(
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        );
        assert_eq!((i, op.as_str()), (0, "add"));
        assert!(reason.contains("does not exist"), "{reason}");
        // A.14: ~ escaping, and numeric equality.
        assert_eq!(
            ok(
                json!({"/": 9, "~1": 10}),
                json!([{"op": "test", "path": "/~01", "value": 10}, {"op": "test", "path": "/~1", "value": 9.0}])
            ),
            json!({"/": 9, "~1": 10})
        );
        let (i, _, _) = failed(
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": "10"}]),
        );
        assert_eq!(i, 0);
        // A.16: `-` appends.
        assert_eq!(
            ok(
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}])
            ),
            json!({"foo": ["bar", ["abc", "def"]]})
        );
        assert_eq!(
            ok(
                json!({"a": {"b": 1}}),
                json!([{"op": "copy", "from": "/a", "path": "/c"}])
            ),
            json!({"a": {"b": 1}, "c": {"b": 1}})
        );
    }

    #[test]
    fn failures_name_the_operation_index_and_path_and_change_nothing() {
        let doc = json!({"metadata": {"labels": {"app": "web"}}});
        let err = apply(
            &doc,
            &json!([
                {"op": "replace", "path": "/metadata/labels/app", "value": "db"},
                {"op": "test", "path": "/metadata/labels/app", "value": "web"},
            ]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"JSON patch operation 1 (test) on path "/metadata/labels/app" failed: test failed: the value is "db", not "web""#
        );
        let (i, op, reason) = failed(doc.clone(), json!([{"op": "remove", "path": "/spec/x"}]));
        assert_eq!((i, op.as_str()), (0, "remove"));
        assert!(reason.contains("does not exist"), "{reason}");
        let (_, _, reason) = failed(
            json!({"a": [1]}),
            json!([{"op": "replace", "path": "/a/01", "value": 2}]),
        );
        assert!(reason.contains("leading zeros"), "{reason}");
        let (_, _, reason) = failed(json!({"a": [1]}), json!([{"op": "remove", "path": "/a/1"}]));
        assert!(reason.contains("out of bounds"), "{reason}");
        let (_, _, reason) = failed(
            json!({"a": {"b": 1}}),
            json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        );
        assert!(reason.contains("own child"), "{reason}");
        let (_, _, reason) = failed(
            json!({}),
            json!([{"op": "add", "path": "/a~2", "value": 1}]),
        );
        assert!(reason.contains("invalid escape"), "{reason}");
    }

    #[test]
    fn malformed_patches_are_rejected_before_any_operation() {
        for bad in [
            json!({"op": "add"}),
            json!([{"path": "/a", "value": 1}]),
            json!([{"op": "add", "path": "/a"}]),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "move", "path": "/a"}]),
        ] {
            assert!(
                matches!(apply(&json!({}), &bad), Err(JsonPatchError::Malformed(_))),
                "{bad}"
            );
        }
        // `value: null` is a value.
        assert_eq!(
            ok(
                json!({"a": 1}),
                json!([{"op": "replace", "path": "/a", "value": null}])
            ),
            json!({"a": null})
        );
        // ~1 is `/` and ~0 is `~` in a pointer token.
        assert_eq!(
            ok(
                json!({"a/b~c": 1}),
                json!([{"op": "replace", "path": "/a~1b~0c", "value": 2}])
            ),
            json!({"a/b~c": 2})
        );
        // A bad pointer is a failed operation, but only once the whole patch is well-formed.
        assert!(matches!(
            apply(
                &json!({}),
                &json!([{"op": "add", "path": "a", "value": 1}, {"op": "add", "path": "/b"}])
            ),
            Err(JsonPatchError::Malformed(_))
        ));
        let (i, op, reason) = failed(
            json!({"a": 1}),
            json!([{"op": "test", "path": "/a", "value": 1.0}, {"op": "copy", "from": "/a", "path": "b"}]),
        );
        assert_eq!((i, op.as_str()), (1, "copy"), "{reason}");
    }
}
