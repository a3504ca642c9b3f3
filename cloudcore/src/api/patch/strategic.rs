//! Strategic merge patch: a JSON merge patch whose lists merge by the kind's merge keys, plus
//! the `$`-directives kubectl sends (`kubectl apply`, `edit`, `set image`, `scale` all use it).
//!
//! Semantics follow `k8s.io/apimachinery/pkg/util/strategicpatch` as the API server applies a
//! patch: maps merge recursively and `null` deletes a key; lists merge per [`ListStrategy`];
//! `$patch: replace|delete|merge` on a map or list item, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` are honoured. The result
//! never contains a directive.

use super::schema::{ListStrategy, Schema};
use serde_json::{Map, Value};

/// Why a strategic merge patch was not applied (a 400: the patch does not fit the schema).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrategicError {
    /// The patch is not a JSON object.
    #[error("a strategic merge patch must be a JSON object")]
    NotAnObject,
    /// A `$patch` value other than `replace`, `delete` or `merge`.
    #[error("{path}: unknown patch type {value:?}: supported: replace, delete, merge")]
    UnknownPatchType {
        /// Field path of the map.
        path: String,
        /// The value.
        value: String,
    },
    /// A directive whose value has the wrong shape, or a `$` key nobody knows.
    #[error("{path}: invalid directive {directive:?}: {reason}")]
    BadDirective {
        /// Field path of the map.
        path: String,
        /// The directive key.
        directive: String,
        /// What is wrong.
        reason: String,
    },
    /// An item of a list merged by key lacks the key, or is not a map.
    #[error("{path}: map item without merge key {key:?}: every item of this list must set it")]
    MissingMergeKey {
        /// Field path of the list.
        path: String,
        /// The merge key.
        key: String,
    },
}

/// Applies `patch` to `original` for a kind with `schema`.
pub fn apply(original: &Value, patch: &Value, schema: &Schema) -> Result<Value, StrategicError> {
    let Some(p) = patch.as_object() else {
        return Err(StrategicError::NotAnObject);
    };
    let empty = Map::new();
    let orig = original.as_object().unwrap_or(&empty);
    let mut path = Vec::new();
    Ok(merge_map(orig, p, &mut path, schema)?
        .map(Value::Object)
        .unwrap_or_else(|| Value::Object(Map::new())))
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM: &str = "$deleteFromPrimitiveList/";
const SET_ORDER: &str = "$setElementOrder/";

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "<root>".into()
    } else {
        path.join(".")
    }
}

/// Merges map `patch` into `orig`; `None` when the patch deletes the map.
fn merge_map(
    orig: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    schema: &Schema,
) -> Result<Option<Map<String, Value>>, StrategicError> {
    let bad = |path: &[String], directive: &str, reason: &str| StrategicError::BadDirective {
        path: show(path),
        directive: directive.into(),
        reason: reason.into(),
    };
    let mut out = match patch.get(PATCH) {
        None => orig.clone(),
        Some(Value::String(s)) if s == "merge" => orig.clone(),
        // Replace: the patch (minus directives) is the whole new map.
        Some(Value::String(s)) if s == "replace" => Map::new(),
        Some(Value::String(s)) if s == "delete" => return Ok(None),
        Some(other) => {
            return Err(StrategicError::UnknownPatchType {
                path: show(path),
                value: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
            })
        }
    };
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let keys: Vec<&str> = retain
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect())
            .ok_or_else(|| bad(path, RETAIN_KEYS, "must be a list of field names"))?;
        out.retain(|k, _| keys.contains(&k.as_str()));
    }
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM) else {
            continue;
        };
        let doomed = v
            .as_array()
            .ok_or_else(|| bad(path, k, "must be a list of values"))?;
        if let Some(Value::Array(list)) = out.get_mut(field) {
            list.retain(|item| !doomed.contains(item));
        }
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            if k == PATCH
                || k == RETAIN_KEYS
                || k.starts_with(DELETE_FROM)
                || k.starts_with(SET_ORDER)
            {
                continue;
            }
            return Err(bad(path, k, "unknown directive"));
        }
        path.push(k.clone());
        let merged = match (out.get(k), v) {
            (_, Value::Null) => None,
            (Some(Value::Object(o)), Value::Object(p)) => {
                merge_map(o, p, path, schema)?.map(Value::Object)
            }
            (_, Value::Object(p)) => merge_map(&Map::new(), p, path, schema)?.map(Value::Object),
            (o, Value::Array(p)) => Some(Value::Array(merge_list(
                o.and_then(Value::as_array),
                p,
                path,
                schema,
            )?)),
            (_, scalar) => Some(scalar.clone()),
        };
        path.pop();
        match merged {
            Some(m) => out.insert(k.clone(), m),
            None => out.remove(k),
        };
    }
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(SET_ORDER) else {
            continue;
        };
        let order = v.as_array().ok_or_else(|| bad(path, k, "must be a list"))?;
        path.push(field.to_string());
        let strategy = schema.list_strategy(path);
        path.pop();
        if let Some(Value::Array(list)) = out.get_mut(field) {
            reorder(list, order, strategy);
        }
    }
    Ok(Some(out))
}

/// Whether `item` is `{"$patch": "replace"}` (possibly with other fields).
fn has_patch(item: &Value, kind: &str) -> bool {
    item.get(PATCH).and_then(Value::as_str) == Some(kind)
}

/// A list item with its directives processed against nothing.
fn fresh(
    item: &Value,
    path: &mut Vec<String>,
    schema: &Schema,
) -> Result<Option<Value>, StrategicError> {
    match item {
        Value::Object(m) => Ok(merge_map(&Map::new(), m, path, schema)?.map(Value::Object)),
        other => Ok(Some(other.clone())),
    }
}

fn merge_list(
    orig: Option<&Vec<Value>>,
    patch: &[Value],
    path: &mut Vec<String>,
    schema: &Schema,
) -> Result<Vec<Value>, StrategicError> {
    let strategy = schema.list_strategy(path);
    // `{"$patch": "replace"}` as an item: the other items are the whole new list.
    if patch.iter().any(|i| has_patch(i, "replace")) {
        let mut out = Vec::new();
        for item in patch.iter().filter(|i| !has_patch(i, "replace")) {
            out.extend(fresh(item, path, schema)?);
        }
        return Ok(out);
    }
    let mut out: Vec<Value> = orig.cloned().unwrap_or_default();
    match strategy {
        ListStrategy::Atomic => {
            out.clear();
            for item in patch {
                out.extend(fresh(item, path, schema)?);
            }
        }
        ListStrategy::Set => {
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            for item in patch {
                let missing = || StrategicError::MissingMergeKey {
                    path: show(path),
                    key: key.into(),
                };
                let p = item.as_object().ok_or_else(missing)?;
                let id = p.get(key).ok_or_else(missing)?;
                let at = out.iter().position(|o| o.get(key) == Some(id));
                if has_patch(item, "delete") {
                    if let Some(i) = at {
                        out.remove(i);
                    }
                    continue;
                }
                let empty = Map::new();
                let base = at.and_then(|i| out[i].as_object()).unwrap_or(&empty);
                let merged = merge_map(base, p, path, schema)?.map(Value::Object);
                match (at, merged) {
                    (Some(i), Some(m)) => out[i] = m,
                    (Some(i), None) => {
                        out.remove(i);
                    }
                    (None, Some(m)) => out.push(m),
                    (None, None) => {}
                }
            }
        }
    }
    Ok(out)
}

/// Orders `list` as `$setElementOrder` says: the items it names take the positions not held by
/// items only the server has, in the given order; server-only items keep their index.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let identity = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(key) => v.get(key).cloned(),
            ListStrategy::Set => Some(v.clone()),
            ListStrategy::Atomic => None,
        }
    };
    if strategy == ListStrategy::Atomic {
        return;
    }
    let wanted: Vec<Value> = order.iter().filter_map(identity).collect();
    let rank = |v: &Value| identity(v).and_then(|id| wanted.iter().position(|w| *w == id));
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut slots: Vec<Option<Value>> = Vec::with_capacity(list.len());
    for item in list.drain(..) {
        match rank(&item) {
            Some(r) => {
                named.push((r, item));
                slots.push(None);
            }
            None => slots.push(Some(item)),
        }
    }
    named.sort_by_key(|(r, _)| *r);
    let mut named = named.into_iter().map(|(_, v)| v);
    list.extend(slots.into_iter().filter_map(|s| s.or_else(|| named.next())));
}

#[cfg(test)]
mod tests {
    use super::super::schema::schema_for;
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "fe"}, "finalizers": ["a", "b"]},
            "spec": {
                "containers": [
                    {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "sidecar", "image": "envoy:1"}
                ],
                "tolerations": [{"key": "x", "operator": "Exists"}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        })
    }

    fn smp(orig: Value, patch: Value) -> Value {
        apply(&orig, &patch, &schema_for("", "Pod").unwrap()).unwrap()
    }

    #[test]
    fn image_change_keeps_the_other_containers_and_fields() {
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}),
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(out["spec"]["containers"][0]["env"][1]["value"], "2");
        assert_eq!(
            out["spec"]["containers"][1],
            json!({"name": "sidecar", "image": "envoy:1"})
        );
    }

    #[test]
    fn env_merges_by_name_and_new_items_append() {
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{"name": "web", "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]},
                                          {"name": "new", "image": "busybox"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(out["spec"]["containers"][2]["name"], "new");
    }

    #[test]
    fn patch_delete_removes_a_container_and_null_removes_a_key() {
        let out = smp(
            pod(),
            json!({"metadata": {"labels": {"tier": null}},
                   "spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    }

    #[test]
    fn lists_without_strategy_are_replaced_and_sets_are_unioned() {
        let out = smp(
            pod(),
            json!({"metadata": {"finalizers": ["b", "c"]},
                   "spec": {"tolerations": [{"key": "y", "operator": "Exists"}]}}),
        );
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "y", "operator": "Exists"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            pod(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn replace_and_merge_directives() {
        let out = smp(
            pod(),
            json!({"metadata": {"labels": {"$patch": "replace", "only": "me"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"only": "me"}));
        let out = smp(
            pod(),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "solo", "image": "x"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "solo", "image": "x"}])
        );
        let out = smp(
            pod(),
            json!({"metadata": {"labels": {"$patch": "merge", "x": "y"}}}),
        );
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        let out = smp(pod(), json!({"spec": {"$patch": "delete"}}));
        assert!(out.get("spec").is_none());
        let err = apply(
            &pod(),
            &json!({"spec": {"$patch": "explode"}}),
            &schema_for("", "Pod").unwrap(),
        );
        assert!(matches!(err, Err(StrategicError::UnknownPatchType { .. })));
        let err = apply(
            &pod(),
            &json!({"spec": {"$frob": 1}}),
            &schema_for("", "Pod").unwrap(),
        );
        assert!(matches!(err, Err(StrategicError::BadDirective { .. })));
    }

    #[test]
    fn retain_keys_clears_the_other_members_of_a_union() {
        let out = smp(
            pod(),
            json!({"spec": {"volumes": [{"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}]}}),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "data", "hostPath": {"path": "/d"}}])
        );
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        // What kubectl apply sends when the manifest swaps two containers.
        let out = smp(
            pod(),
            json!({"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}]}}),
        );
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidecar", "web"]);
        let mut list = vec![json!("x"), json!("a"), json!("b")];
        reorder(&mut list, &[json!("b"), json!("a")], ListStrategy::Set);
        assert_eq!(
            list,
            [json!("x"), json!("b"), json!("a")],
            "server-only items keep their index"
        );
    }

    #[test]
    fn items_without_the_merge_key_are_rejected() {
        let err = apply(
            &pod(),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
            &schema_for("", "Pod").unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.containers: map item without merge key \"name\": every item of this list must set it"
        );
    }

    #[test]
    fn workload_templates_use_pod_keys() {
        let dep = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}}}});
        let out = apply(
            &dep,
            &json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}}),
            &schema_for("apps", "Deployment").unwrap(),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "2"}])
        );
    }
}
