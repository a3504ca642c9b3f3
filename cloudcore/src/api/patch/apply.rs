//! Server-side apply (`kubectl apply --server-side`): merge a manager's applied configuration
//! into the live object and track which manager owns which field in `metadata.managedFields`.
//!
//! A simplified but consistent take on Kubernetes' structured-merge-diff:
//! - the fields a manager applied are the leaves of its configuration (scalars, atomic lists,
//!   empty maps), items of keyed lists (`k:{"name":"web"}` plus `.` for the item itself) and
//!   members of set lists (`v:"x"`), stored as `FieldsV1` like Kubernetes;
//! - a field another manager owns conflicts when the apply would change its value (409 with
//!   Kubernetes' message), unless forced, which moves the field to the applier;
//! - a field the manager applied before and no longer applies is removed unless another manager
//!   still owns it;
//! - only Apply operations are tracked: other writes keep `managedFields` as they are.

use super::schema::{ListStrategy, Schema};
use super::strategic;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// A field path: `f:<name>`, `k:<json key object>`, `v:<json value>` or `.` (the item itself).
pub type FieldPath = Vec<String>;

/// A set of owned fields.
pub type FieldSet = BTreeSet<FieldPath>;

/// One field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager.
    pub manager: String,
    /// The field, as Kubernetes prints it (`.spec.containers[name="web"].image`).
    pub field: String,
}

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change (a 409 unless forced).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The configuration does not merge (an item without its merge key, ...).
    #[error("the applied configuration does not merge: {0}")]
    Merge(#[from] strategic::StrategicError),
}

/// Kubernetes' wording (`k8s.io/apimachinery/pkg/util/managedfields/internal/conflict.go`).
fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [one] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            one.manager, one.field
        );
    }
    let managers: BTreeSet<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m:?}:"));
        for c in conflicts.iter().filter(|c| c.manager == m) {
            lines.push(format!("- {}", c.field));
        }
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// What one apply is.
pub struct ApplyRequest<'a> {
    /// The field manager (`?fieldManager=`).
    pub manager: &'a str,
    /// `?force=true`: take over conflicting fields.
    pub force: bool,
    /// `apiVersion` of the object, recorded in the managed fields entry.
    pub api_version: &'a str,
    /// Now, RFC 3339.
    pub now: &'a str,
    /// Whether `.status` belongs to a subresource (then the main resource ignores it).
    pub status_subresource: bool,
}

/// Metadata fields that are the server's, never owned.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The fields `config` sets.
pub fn fields_of(config: &Value, schema: &Schema, status_subresource: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(root) = config.as_object() else {
        return out;
    };
    for (k, v) in root {
        if matches!(k.as_str(), "apiVersion" | "kind") || (k == "status" && status_subresource) {
            continue;
        }
        let mut v = v.clone();
        if k == "metadata" {
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| !SYSTEM_METADATA.contains(&k.as_str()));
                if m.is_empty() {
                    continue;
                }
            }
        }
        let mut path = vec![format!("f:{k}")];
        let mut names = vec![k.clone()];
        walk(&v, &mut path, &mut names, schema, &mut out);
    }
    out
}

fn walk(
    v: &Value,
    path: &mut FieldPath,
    names: &mut Vec<String>,
    schema: &Schema,
    out: &mut FieldSet,
) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                names.push(k.clone());
                walk(child, path, names, schema, out);
                names.pop();
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match schema.list_strategy(names) {
            ListStrategy::Atomic => {
                out.insert(path.clone());
            }
            ListStrategy::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
            }
            ListStrategy::MergeByKey(key) => {
                for item in items {
                    let Some(id) = item.get(key) else {
                        // Rejected by the merge later; owning nothing here is harmless.
                        continue;
                    };
                    path.push(format!("k:{}", json!({key: id})));
                    let mut dot = path.clone();
                    dot.push(".".into());
                    out.insert(dot);
                    walk(item, path, names, schema, out);
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` in `obj`, if any.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if el == "." {
        return Some(cur);
    }
    if let Some(f) = el.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    let v: Value = serde_json::from_str(el.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == v)
}

/// Removes the field at `path` from `obj` (an item for `.` paths).
fn remove_at(obj: &mut Value, path: &[String]) {
    let (last, parent) = match path.split_last() {
        Some((l, p)) if l == "." => match p.split_last() {
            Some((item, parent)) => (item, parent),
            None => return,
        },
        Some((l, p)) => (l, p),
        None => return,
    };
    let mut cur = obj;
    for el in parent {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let idx = value_at(cur, std::slice::from_ref(el))
                .and_then(|found| cur.as_array()?.iter().position(|i| std::ptr::eq(i, found)));
            match idx {
                Some(i) => cur.as_array_mut().map(|a| &mut a[i]),
                None => None,
            }
        };
        let Some(n) = next else { return };
        cur = n;
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    let idx = value_at(cur, std::slice::from_ref(last))
        .and_then(|found| cur.as_array()?.iter().position(|i| std::ptr::eq(i, found)));
    if let (Some(i), Some(a)) = (idx, cur.as_array_mut()) {
        a.remove(i);
    }
}

/// A field path as Kubernetes prints it: `.spec.containers[name="web"].image`.
pub fn render(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// The `fieldsV1` object of a set: nested maps, `{}` at each owned leaf.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            cur = cur
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("field set nodes are maps");
        }
    }
    Value::Object(root)
}

/// The set a `fieldsV1` object describes.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        for (k, child) in m {
            path.push(k.clone());
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(path.clone());
            } else {
                go(child, path, out);
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry, decoded.
struct Entry {
    raw: Map<String, Value>,
    manager: String,
    apply: bool,
    fields: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_object)
                .map(|raw| Entry {
                    manager: raw
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    apply: raw.get("operation").and_then(Value::as_str) == Some("Apply"),
                    fields: raw.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    raw: raw.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `owned` covers `path`: the same field, or for an item (`.`) anything inside it.
fn owns(owned: &FieldSet, path: &[String]) -> bool {
    if owned.contains(path) {
        return true;
    }
    match path.split_last() {
        Some((last, item)) if last == "." => owned
            .iter()
            .any(|p| p.len() > item.len() && p.starts_with(item)),
        _ => false,
    }
}

/// Applies `config` for `req.manager` to `live` (`None`: the object does not exist yet) and
/// returns the new object with its `managedFields`.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    schema: &Schema,
    req: &ApplyRequest<'_>,
) -> Result<Value, ApplyError> {
    let applied = fields_of(config, schema, req.status_subresource);
    let mut config = config.clone();
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    let Some(live) = live else {
        let mut obj = strategic::apply(&json!({}), &config, schema)?;
        set_managed(&mut obj, vec![entry_json(req, &applied, req.now)]);
        return Ok(obj);
    };
    let mut others = Vec::new();
    let mut previous: Option<Entry> = None;
    for e in entries(live) {
        if e.apply && e.manager == req.manager {
            previous = Some(e);
        } else {
            others.push(e);
        }
    }
    let mut conflicts = Vec::new();
    for path in applied
        .iter()
        .filter(|p| p.last().map(String::as_str) != Some("."))
    {
        if value_at(live, path) == value_at(&config, path) {
            continue;
        }
        for e in others.iter_mut().filter(|e| e.fields.contains(path)) {
            if req.force {
                e.fields.remove(path);
            } else {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: render(path),
                });
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let mut base = live.clone();
    if let Some(prev) = &previous {
        // Shallowest first: a dropped item goes whole (its fields are then no-ops), and a kept
        // item keeps its key field, which every manager of the item owns.
        let mut dropped: Vec<&FieldPath> = prev.fields.difference(&applied).collect();
        dropped.sort_by_key(|p| p.len());
        for path in dropped {
            if !others.iter().any(|e| owns(&e.fields, path)) {
                remove_at(&mut base, path);
            }
        }
    }
    let mut obj = strategic::apply(&base, &config, schema)?;
    // An unchanged set keeps its time, so that a repeated apply is a no-op.
    let time = previous
        .as_ref()
        .filter(|p| p.fields == applied)
        .and_then(|p| p.raw.get("time").and_then(Value::as_str))
        .unwrap_or(req.now)
        .to_string();
    let mut managed = Vec::new();
    let mut placed = false;
    for e in entries(live) {
        if e.apply && e.manager == req.manager {
            managed.push(entry_json(req, &applied, &time));
            placed = true;
        } else if let Some(o) = others.iter().find(|o| o.raw == e.raw) {
            if !o.fields.is_empty() {
                let mut raw = o.raw.clone();
                raw.insert("fieldsV1".into(), to_fields_v1(&o.fields));
                managed.push(Value::Object(raw));
            }
        }
    }
    if !placed {
        managed.push(entry_json(req, &applied, &time));
    }
    set_managed(&mut obj, managed);
    Ok(obj)
}

fn entry_json(req: &ApplyRequest<'_>, fields: &FieldSet, time: &str) -> Value {
    json!({
        "manager": req.manager,
        "operation": "Apply",
        "apiVersion": req.api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_fields_v1(fields),
    })
}

fn set_managed(obj: &mut Value, managed: Vec<Value>) {
    if let Some(o) = obj.as_object_mut() {
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("managedFields".into(), Value::Array(managed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::schema_for;
    use super::*;

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager,
            force,
            api_version: "v1",
            now: "2025-01-01T00:00:00Z",
            status_subresource: true,
        }
    }

    fn config(image: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": labels},
            "spec": {"containers": [{"name": "web", "image": image}]}})
    }

    fn schema() -> Schema {
        schema_for("", "Pod").unwrap()
    }

    #[test]
    fn create_records_the_applied_fields() {
        let obj = apply(
            None,
            &config("nginx:1", json!({"app": "web"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        let mf = &obj["metadata"]["managedFields"][0];
        assert_eq!(mf["manager"], "a");
        assert_eq!(mf["operation"], "Apply");
        assert_eq!(mf["fieldsType"], "FieldsV1");
        assert_eq!(
            mf["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(obj["spec"]["containers"][0]["image"], "nginx:1");
    }

    #[test]
    fn same_manager_updates_and_removes_what_it_no_longer_applies() {
        let v1 = apply(
            None,
            &config("nginx:1", json!({"app": "web", "tier": "fe"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        let mut live = v1.clone();
        // Something else (e.g. the kubelet) adds a field nobody applied.
        live["spec"]["nodeName"] = json!("edge-1");
        let v2 = apply(
            Some(&live),
            &config("nginx:2", json!({"app": "web"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        assert_eq!(v2["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(
            v2["metadata"]["labels"],
            json!({"app": "web"}),
            "tier was dropped"
        );
        assert_eq!(v2["spec"]["nodeName"], "edge-1", "unowned fields stay");
        assert_eq!(v2["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn another_manager_changing_an_owned_field_conflicts_unless_forced() {
        let live = apply(
            None,
            &config("nginx:1", json!({"app": "web"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        let err = apply(
            Some(&live),
            &config("nginx:2", json!({"app": "web"})),
            &schema(),
            &req("b", false),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "a": .spec.containers[name="web"].image"#
        );
        // The same value is shared ownership, not a conflict.
        let shared = apply(
            Some(&live),
            &config("nginx:1", json!({"app": "web"})),
            &schema(),
            &req("b", false),
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = apply(
            Some(&live),
            &config("nginx:2", json!({"app": "db"})),
            &schema(),
            &req("b", true),
        )
        .unwrap();
        assert_eq!(forced["spec"]["containers"][0]["image"], "nginx:2");
        let a = from_fields_v1(&forced["metadata"]["managedFields"][0]["fieldsV1"]);
        assert!(!a.contains(&vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
            "f:image".into()
        ]));
        assert!(!a.contains(&vec![
            "f:metadata".into(),
            "f:labels".into(),
            "f:app".into()
        ]));
        // Two conflicts, Kubernetes' multi-line form.
        let err = apply(
            Some(&live),
            &config("nginx:3", json!({"app": "x"})),
            &schema(),
            &req("b", false),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\":\n- .metadata.labels.app\n- .spec.containers[name=\"web\"].image"
        );
    }

    #[test]
    fn a_field_still_owned_by_another_manager_is_kept_on_removal() {
        let live = apply(
            None,
            &config("nginx:1", json!({"app": "web", "tier": "fe"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        let live = apply(
            Some(&live),
            &config("nginx:1", json!({"tier": "fe"})),
            &schema(),
            &req("b", false),
        )
        .unwrap();
        let out = apply(
            Some(&live),
            &config("nginx:1", json!({"app": "web"})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "tier": "fe"})
        );
        // A container the manager stops applying goes with its fields.
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "web", "image": "1"}, {"name": "side", "image": "1"}]}});
        let live = apply(None, &two, &schema(), &req("a", false)).unwrap();
        let out = apply(
            Some(&live),
            &config("1", json!({})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "web", "image": "1"}])
        );
    }

    #[test]
    fn repeated_apply_keeps_the_entry_time() {
        let live = apply(
            None,
            &config("nginx:1", json!({})),
            &schema(),
            &req("a", false),
        )
        .unwrap();
        let mut later = req("a", false);
        later.now = "2030-01-01T00:00:00Z";
        let again = apply(
            Some(&live),
            &config("nginx:1", json!({})),
            &schema(),
            &later,
        )
        .unwrap();
        assert_eq!(again, live);
    }

    #[test]
    fn fields_v1_round_trips_and_renders() {
        let set = fields_of(
            &json!({"metadata": {"name": "x", "finalizers": ["a/b"]}, "spec": {"tolerations": [{"key": "k"}]}, "status": {"phase": "Running"}}),
            &schema(),
            true,
        );
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
        let rendered: Vec<String> = set.iter().map(|p| render(p)).collect();
        assert_eq!(
            rendered,
            [r#".metadata.finalizers[="a/b"]"#, ".spec.tolerations"]
        );
    }
}
