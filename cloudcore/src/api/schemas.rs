//! The OpenAPI v3 schemas of the served kinds, for the `components` of `/openapi/v3/...`.
//!
//! `kubectl explain` renders a kind from its schema (found by the `x-kubernetes-group-version-
//! kind` extension and followed through `$ref`s), and `kubectl apply` computes its client-side
//! strategic merge patch from the same schema when the server publishes one. The schemas come
//! from k8s-openapi (generated from Kubernetes' own OpenAPI, descriptions included), but they
//! lack Kubernetes' patch extensions, so this module adds `x-kubernetes-patch-strategy` and
//! `x-kubernetes-patch-merge-key` from the one table the server's own strategic merge uses
//! ([`super::patch::schema`]): kubectl and the server then agree on how every list merges.

use super::patch::schema::{schema_for, ListStrategy};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// Where schemas live in the document; `$ref`s point here.
const PREFIX: &str = "#/components/schemas/";

/// The kind's definition name (`io.k8s.api.core.v1.Pod`), registering its schema and every
/// schema it refers to with `generator`; `None` for a kind without a k8s-openapi type.
fn register(generator: &mut SchemaGenerator, group: &str, kind: &str) -> Option<String> {
    use k8s_openapi::api::{
        apps::v1 as apps, batch::v1 as batch, core::v1 as core, discovery::v1 as discovery,
        networking::v1 as networking,
    };
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
        generator.subschema_for::<T>();
        T::schema_name().into_owned()
    }
    Some(match (group, kind) {
        ("", "Pod") => add::<core::Pod>(generator),
        ("", "Node") => add::<core::Node>(generator),
        ("", "Namespace") => add::<core::Namespace>(generator),
        ("", "ConfigMap") => add::<core::ConfigMap>(generator),
        ("", "Secret") => add::<core::Secret>(generator),
        ("", "Event") => add::<core::Event>(generator),
        ("", "Service") => add::<core::Service>(generator),
        ("", "Endpoints") => add::<core::Endpoints>(generator),
        ("", "ReplicationController") => add::<core::ReplicationController>(generator),
        ("discovery.k8s.io", "EndpointSlice") => add::<discovery::EndpointSlice>(generator),
        ("networking.k8s.io", "Ingress") => add::<networking::Ingress>(generator),
        ("networking.k8s.io", "IngressClass") => add::<networking::IngressClass>(generator),
        ("apps", "Deployment") => add::<apps::Deployment>(generator),
        ("apps", "ReplicaSet") => add::<apps::ReplicaSet>(generator),
        ("apps", "DaemonSet") => add::<apps::DaemonSet>(generator),
        ("apps", "StatefulSet") => add::<apps::StatefulSet>(generator),
        ("batch", "Job") => add::<batch::Job>(generator),
        ("batch", "CronJob") => add::<batch::CronJob>(generator),
        _ => return None,
    })
}

/// The definition a schema refers to, if it is a `$ref` (directly, or as the only `allOf`).
fn referenced(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")
        .or_else(|| schema.pointer("/allOf/0/$ref"))
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(PREFIX))
}

/// Finds every list property under definition `def`, with its field path from the kind's root,
/// and records the patch extensions its strategy calls for as (definition, property, strategy).
fn collect(
    defs: &Map<String, Value>,
    def: &str,
    path: &mut Vec<String>,
    strategy: &dyn Fn(&[String]) -> ListStrategy,
    out: &mut Vec<(String, String, ListStrategy)>,
) {
    // Kubernetes' object graphs are shallow; the bound only guards against a recursive type.
    if path.len() > 16 {
        return;
    }
    let Some(props) = defs
        .get(def)
        .and_then(|d| d.get("properties"))
        .and_then(Value::as_object)
    else {
        return;
    };
    for (name, prop) in props {
        path.push(name.clone());
        let is_list = prop.get("type").and_then(Value::as_str) == Some("array");
        if is_list {
            let s = strategy(path);
            if s != ListStrategy::Atomic {
                out.push((def.to_string(), name.clone(), s));
            }
        }
        let inner = if is_list {
            prop.get("items").unwrap_or(&Value::Null)
        } else {
            prop
        };
        if let Some(next) = referenced(inner) {
            collect(defs, next, path, strategy, out);
        }
        path.pop();
    }
}

/// The `components.schemas` of one group-version document: every `(group, version, kind)` in
/// `kinds` that has a schema, tagged with its group-version-kind, plus what they refer to, with
/// the patch extensions of their lists.
pub fn components(kinds: &[(&str, &str, &str)]) -> Map<String, Value> {
    let mut settings = SchemaSettings::openapi3();
    settings.definitions_path = PREFIX.trim_start_matches('#').into();
    let mut generator = settings.into_generator();
    let roots: Vec<(String, &str, &str, &str)> = kinds
        .iter()
        .filter_map(|&(g, v, k)| register(&mut generator, g, k).map(|name| (name, g, v, k)))
        .collect();
    let mut defs: Map<String, Value> = generator.take_definitions(true);
    let mut marks = Vec::new();
    for (name, group, _, kind) in &roots {
        if let Some(schema) = schema_for(group, kind) {
            let strategy = |p: &[String]| schema.list_strategy(p);
            collect(&defs, name, &mut Vec::new(), &strategy, &mut marks);
        }
    }
    for (def, prop, strategy) in marks {
        let Some(p) = defs
            .get_mut(&def)
            .and_then(|d| d.pointer_mut(&format!("/properties/{prop}")))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        if let ListStrategy::MergeByKey(key) = strategy {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
    }
    for (name, group, version, kind) in &roots {
        if let Some(d) = defs.get_mut(name).and_then(Value::as_object_mut) {
            d.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "version": version, "kind": kind}]),
            );
        }
    }
    defs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_tagged_and_lists_carry_the_servers_merge_keys() {
        let defs = components(&[("", "v1", "Pod"), ("apps", "v1", "Deployment")]);
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert!(pod["description"].as_str().unwrap().starts_with("Pod is"));
        let spec = &defs["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(spec["containers"]["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(spec["volumes"]["x-kubernetes-patch-merge-key"], "name");
        // Atomic lists get nothing.
        assert!(spec["tolerations"]
            .get("x-kubernetes-patch-strategy")
            .is_none());
        let container = &defs["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(
            container["ports"]["x-kubernetes-patch-merge-key"],
            "containerPort"
        );
        assert_eq!(container["env"]["x-kubernetes-patch-merge-key"], "name");
        // References point into the document.
        let text = serde_json::to_string(&defs).unwrap();
        assert!(text.contains("\"$ref\":\"#/components/schemas/io.k8s.api.core.v1.PodSpec\""));
        assert!(defs.contains_key("io.k8s.api.apps.v1.Deployment"));
        assert!(components(&[("batch", "v1", "Job")]).contains_key("io.k8s.api.batch.v1.Job"));
        assert!(components(&[("policy", "v1", "PodDisruptionBudget")]).is_empty());
    }
}
