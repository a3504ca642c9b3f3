//! Discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`),
//! generated from the registry. kubectl reads them before anything else to map `get pods` or
//! `get po` to a URL, so they must list exactly what the server serves.

use super::resource::Registry;
use serde_json::{json, Value};

/// Kubernetes version Skerry's API corresponds to (the k8s-openapi feature in use).
pub const KUBE_MINOR: &str = "33";

/// `GET /version`: a `version.Info`.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-skerry.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// Go's name of this architecture (kubectl prints it next to the server version).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// `GET /api`: the core group's versions; `host` is the request's Host header.
pub fn api_versions(registry: &Registry, host: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": registry.versions_of(""),
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    })
}

fn group_doc(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = registry
        .versions_of(group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or_else(|| json!({}));
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// `GET /apis`: the non-core groups.
pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .map(|g| group_doc(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, if the group is served.
pub fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    if !registry.groups().contains(&group) {
        return None;
    }
    let mut doc = group_doc(registry, group);
    if let Some(o) = doc.as_object_mut() {
        o.insert("kind".into(), json!("APIGroup"));
        o.insert("apiVersion".into(), json!("v1"));
    }
    Some(doc)
}

/// `GET /api/{version}` (group `""`) or `/apis/{group}/{version}`: an `APIResourceList`, with
/// one entry per resource and one per status subresource.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for h in registry.iter() {
        let i = h.info();
        if i.group != group || i.version != version {
            continue;
        }
        resources.push(json!({
            "name": i.plural,
            "singularName": i.singular,
            "namespaced": i.namespaced,
            "kind": i.kind,
            "verbs": i.verbs,
            "shortNames": i.short_names,
            "categories": i.categories,
        }));
        if i.status_subresource {
            let verbs: Vec<&str> = ["get", "patch", "update"]
                .into_iter()
                .filter(|v| i.supports(v))
                .collect();
            resources.push(json!({
                "name": format!("{}/status", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "kind": i.kind,
                "verbs": verbs,
            }));
        }
        if h.binding_subresource() {
            resources.push(json!({
                "name": format!("{}/binding", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
        if h.scale_subresource() {
            let verbs: Vec<&str> = ["get", "patch", "update"]
                .into_iter()
                .filter(|v| i.supports(v))
                .collect();
            resources.push(json!({
                "name": format!("{}/scale", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": verbs,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The OpenAPI v3 path of a group version (`api/v1`, `apis/apps/v1`).
fn openapi_gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every (group, version) served, in registration order.
fn group_versions(registry: &Registry) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for h in registry.iter() {
        let gv = (h.info().group, h.info().version);
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

/// `GET /openapi/v3/{api/v1 | apis/g/v}`: the OpenAPI v3 document of a group-version — one
/// operation per resource carrying its group-version-kind and the `fieldValidation` parameter,
/// and the schemas of its kinds ([`super::schemas`]).
///
/// `kubectl create/replace` (with the default `--validate=strict`) asks this document whether
/// the server validates fields itself, and refuses to send anything when neither `/openapi/v3`
/// nor `/openapi/v2` answers; with it kubectl sends `?fieldValidation=Strict` and leaves
/// validation to the server. The schemas serve `kubectl explain` and `kubectl apply`'s
/// client-side patches.
pub fn openapi_v3_group_version(registry: &Registry, path: &str) -> Option<Value> {
    let (group, version) = group_versions(registry)
        .into_iter()
        .find(|(g, v)| openapi_gv_path(g, v) == path)?;
    let mut paths = serde_json::Map::new();
    let param = |name: &str, description: &str| json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}});
    for h in registry.iter() {
        let i = h.info();
        if i.group != group || i.version != version {
            continue;
        }
        let gvk = json!({"group": i.group, "version": i.version, "kind": i.kind});
        let params = json!([
            param(
                "dryRun",
                "When present, indicates that modifications should not be persisted."
            ),
            param(
                "fieldManager",
                "A name associated with the actor or entity that is making these changes."
            ),
            param(
                "fieldValidation",
                "Ignore, Warn (default) or Strict: how unknown fields are handled."
            ),
        ]);
        let op = |verb: &str| {
            json!({
                "description": format!("{verb} the specified {}", i.kind),
                "operationId": format!("{verb}{}", i.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = format!("/{}", openapi_gv_path(group, version));
        let collection = if i.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", i.plural)
        } else {
            format!("{base}/{}", i.plural)
        };
        if i.supports("create") {
            paths.insert(collection.clone(), json!({"post": op("post")}));
        }
        let mut item = serde_json::Map::new();
        if i.supports("update") {
            item.insert("put".into(), op("put"));
        }
        if i.supports("patch") {
            item.insert("patch".into(), op("patch"));
        }
        if !item.is_empty() {
            paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
        }
    }
    let kinds: Vec<(&str, &str, &str)> = registry
        .iter()
        .map(|h| h.info())
        .filter(|i| i.group == group && i.version == version)
        .map(|i| (i.group, i.version, i.kind))
        .collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": super::schemas::components(&kinds)},
    }))
}

/// The OpenAPI v3 documents of a registry: built once, since they do not change while it
/// serves and each carries every schema of its group-version.
#[derive(Debug, Clone)]
pub struct OpenApiDocs {
    /// `GET /openapi/v3`: the index of group-version documents.
    pub index: Value,
    /// `GET /openapi/v3/{path}`, by path (`api/v1`, `apis/apps/v1`).
    pub documents: std::collections::HashMap<String, Value>,
}

impl OpenApiDocs {
    /// The index and every group-version document of `registry`.
    pub fn build(registry: &Registry) -> Self {
        let mut paths = serde_json::Map::new();
        let mut documents = std::collections::HashMap::new();
        for (g, v) in group_versions(registry) {
            let path = openapi_gv_path(g, v);
            let doc = openapi_v3_group_version(registry, &path).unwrap_or(Value::Null);
            // The hash lets clients cache a document; it changes whenever the document does.
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                doc.to_string().as_bytes(),
            ));
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash.to_uppercase())}),
            );
            documents.insert(path, doc);
        }
        Self {
            index: json!({"paths": paths}),
            documents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_documents() {
        let r = Registry::builtin();
        let v = api_versions(&r, "example:6443");
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "example:6443"
        );
        let list = resource_list(&r, "", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "namespaces/status",
                "pods",
                "pods/status",
                "pods/binding",
                "nodes",
                "nodes/status",
                "configmaps",
                "secrets",
                "events",
                "replicationcontrollers",
                "replicationcontrollers/status",
                "replicationcontrollers/scale",
                "services",
                "services/status",
                "endpoints"
            ]
        );
        assert_eq!(list["resources"][15]["shortNames"], json!(["ep"]));
        assert_eq!(list["resources"][10]["shortNames"], json!(["rc"]));
        assert_eq!(list["resources"][12]["kind"], "Scale");
        assert_eq!(list["resources"][12]["group"], "autoscaling");
        let discovery = resource_list(&r, "discovery.k8s.io", "v1").unwrap();
        assert_eq!(discovery["resources"][0]["name"], "endpointslices");
        assert_eq!(discovery["resources"][0]["kind"], "EndpointSlice");
        assert_eq!(list["resources"][7]["shortNames"], json!(["cm"]));
        assert_eq!(list["resources"][2]["shortNames"], json!(["po"]));
        assert_eq!(list["resources"][0]["shortNames"], json!(["ns"]));
        assert_eq!(list["resources"][0]["namespaced"], false);
        assert_eq!(list["resources"][13]["shortNames"], json!(["svc"]));
        assert_eq!(list["resources"][13]["categories"], json!(["all"]));
        assert!(list["resources"][2]["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection")));
        assert!(!list["resources"][0]["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("deletecollection")));
        assert!(resource_list(&r, "", "v2").is_none());
        assert_eq!(api_group_list(&r)["groups"][0]["name"], "apps");
        assert_eq!(
            api_group(&r, "apps").unwrap()["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert_eq!(
            api_group(&r, "batch").unwrap()["preferredVersion"]["groupVersion"],
            "batch/v1"
        );
        assert!(api_group(&r, "policy").is_none());
        let apps = resource_list(&r, "apps", "v1").unwrap();
        let names: Vec<&str> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        for kind in ["deployments", "replicasets", "daemonsets", "statefulsets"] {
            assert!(names.contains(&kind), "{kind} in {names:?}");
            assert!(names.contains(&format!("{kind}/status").as_str()));
        }
        let scales: Vec<&Value> = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"].as_str().is_some_and(|n| n.ends_with("/scale")))
            .collect();
        let scale_names: Vec<&str> = scales.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            scale_names,
            [
                "deployments/scale",
                "replicasets/scale",
                "statefulsets/scale"
            ]
        );
        assert_eq!(
            (
                &scales[0]["group"],
                &scales[0]["version"],
                &scales[0]["kind"]
            ),
            (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
        );
        assert_eq!(version_info()["minor"], "33");
        assert!(version_info()["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.33.0-skerry."));
    }

    #[test]
    fn openapi_v3_says_fields_are_validated_by_the_server() {
        let r = Registry::builtin();
        let index = OpenApiDocs::build(&r).index;
        let url = index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="), "{url}");
        let doc = openapi_v3_group_version(&r, "api/v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert!(doc["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        assert!(openapi_v3_group_version(&r, "apis/apps/v1").is_some());
        assert!(openapi_v3_group_version(&r, "apis/batch/v1").is_some());
        assert!(openapi_v3_group_version(&r, "apis/policy/v1").is_none());
    }
}
