//! JSON Patch (RFC 6902) with JSON Pointers (RFC 6901): what `kubectl patch --type=json` sends.
//!
//! The operations apply to a copy, in order; the first failure discards them all, so a patch is
//! atomic. Errors name the operation's index and path, because a client holding a long patch
//! needs to know which step did not hold.

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

/// One decoded operation.
enum Op {
    Add(String, Value),
    Remove(String),
    Replace(String, Value),
    Move { from: String, path: String },
    Copy { from: String, path: String },
    Test(String, Value),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Add(..) => "add",
            Op::Remove(_) => "remove",
            Op::Replace(..) => "replace",
            Op::Move { .. } => "move",
            Op::Copy { .. } => "copy",
            Op::Test(..) => "test",
        }
    }

    fn path(&self) -> &str {
        match self {
            Op::Add(p, _) | Op::Remove(p) | Op::Replace(p, _) | Op::Test(p, _) => p,
            Op::Move { path, .. } | Op::Copy { path, .. } => path,
        }
    }
}

fn decode(patch: &Value) -> Result<Vec<Op>, JsonPatchError> {
    let Some(list) = patch.as_array() else {
        return Err(JsonPatchError::Malformed(
            "a JSON patch must be a JSON array of operations".into(),
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let bad = |what: &str| JsonPatchError::Malformed(format!("operation {i}: {what}"));
            let obj = raw.as_object().ok_or_else(|| bad("not a JSON object"))?;
            let string = |field: &str| {
                obj.get(field)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(&format!("missing string field {field:?}")))
            };
            // `value` may legitimately be `null`, so presence is what counts.
            let value = || {
                obj.get("value")
                    .cloned()
                    .ok_or_else(|| bad("missing field \"value\""))
            };
            let path = string("path")?;
            Ok(match string("op")?.as_str() {
                "add" => Op::Add(path, value()?),
                "remove" => Op::Remove(path),
                "replace" => Op::Replace(path, value()?),
                "move" => Op::Move {
                    from: string("from")?,
                    path,
                },
                "copy" => Op::Copy {
                    from: string("from")?,
                    path,
                },
                "test" => Op::Test(path, value()?),
                other => {
                    return Err(bad(&format!(
                    "unknown op {other:?}: supported ops: add, remove, replace, move, copy, test"
                )))
                }
            })
        })
        .collect()
}

/// Splits a JSON pointer into unescaped reference tokens (`~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err("a JSON pointer must be empty or start with \"/\"".into());
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(format!("invalid escape in token {t:?}: use ~0 or ~1")),
                }
            }
            Ok(out)
        })
        .collect()
}

/// An array index token: digits without leading zeros, below `bound`.
fn index(token: &str, bound: usize) -> Result<usize, String> {
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let i: usize = token
        .parse()
        .ok()
        .filter(|_| valid)
        .ok_or_else(|| format!("{token:?} is not an array index"))?;
    if i >= bound {
        return Err(format!("index {i} is out of bounds (length {})", bound));
    }
    Ok(i)
}

fn get<'a>(doc: &'a Value, toks: &[String]) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get(t).ok_or_else(|| format!("key {t:?} not found"))?,
            Value::Array(a) => &a[index(t, a.len())?],
            _ => return Err(format!("cannot look up {t:?} in a scalar")),
        };
    }
    Ok(cur)
}

fn get_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("key {t:?} not found"))?,
            Value::Array(a) => {
                let i = index(t, a.len())?;
                &mut a[i]
            }
            _ => return Err(format!("cannot look up {t:?} in a scalar")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, toks: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => {
            // Inserting at the length appends.
            let i = index(last, a.len() + 1)?;
            a.insert(i, value);
        }
        _ => return Err("the parent of the target is not an object or array".into()),
    }
    Ok(())
}

fn remove(doc: &mut Value, toks: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = toks.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("key {last:?} not found")),
        Value::Array(a) => {
            let i = index(last, a.len())?;
            Ok(a.remove(i))
        }
        _ => Err("the parent of the target is not an object or array".into()),
    }
}

/// RFC 6902 equality: numbers compare by value (1 equals 1.0), objects regardless of order.
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

fn apply_op(doc: &mut Value, op: Op) -> Result<(), String> {
    match op {
        Op::Add(path, value) => add(doc, &tokens(&path)?, value),
        Op::Remove(path) => remove(doc, &tokens(&path)?).map(drop),
        Op::Replace(path, value) => {
            *get_mut(doc, &tokens(&path)?)? = value;
            Ok(())
        }
        Op::Move { from, path } => {
            let (f, t) = (tokens(&from)?, tokens(&path)?);
            if t.len() > f.len() && t.starts_with(&f) {
                return Err(format!("cannot move {from:?} into its own child"));
            }
            let value = remove(doc, &f).map_err(|e| format!("from {from:?}: {e}"))?;
            add(doc, &t, value)
        }
        Op::Copy { from, path } => {
            let value = get(doc, &tokens(&from)?)
                .map_err(|e| format!("from {from:?}: {e}"))?
                .clone();
            add(doc, &tokens(&path)?, value)
        }
        Op::Test(path, expected) => {
            let actual = get(doc, &tokens(&path)?)?;
            if equal(actual, &expected) {
                Ok(())
            } else {
                Err(format!(
                    "test failed: the value is {actual}, not {expected}"
                ))
            }
        }
    }
}

/// Applies `patch` (a JSON array of operations) to `doc`.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let ops = decode(patch)?;
    let mut out = doc.clone();
    for (i, op) in ops.into_iter().enumerate() {
        let (name, path) = (op.name(), op.path().to_string());
        apply_op(&mut out, op).map_err(|reason| JsonPatchError::Failed {
            index: i,
            op: name.into(),
            path,
            reason,
        })?;
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
        assert!(reason.contains("\"baz\" not found"), "{reason}");
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
        assert!(reason.contains("\"spec\" not found"));
        let (_, _, reason) = failed(
            json!({"a": [1]}),
            json!([{"op": "replace", "path": "/a/01", "value": 2}]),
        );
        assert!(reason.contains("not an array index"), "{reason}");
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
        assert_eq!(tokens("/a~1b~0c").unwrap(), ["a/b~c"]);
    }
}
