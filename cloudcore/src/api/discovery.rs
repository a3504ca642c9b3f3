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
    let groups: Vec<Value> = registry.groups().iter().map(|g| group_doc(registry, g)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_documents() {
        let r = Registry::builtin();
        let v = api_versions(&r, "example:6443");
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(v["serverAddressByClientCIDRs"][0]["serverAddress"], "example:6443");
        let list = resource_list(&r, "", "v1").unwrap();
        let names: Vec<&str> = list["resources"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["pods", "pods/status", "nodes", "nodes/status"]);
        assert_eq!(list["resources"][0]["shortNames"], json!(["po"]));
        assert!(resource_list(&r, "", "v2").is_none());
        assert_eq!(api_group_list(&r)["groups"], json!([]));
        assert!(api_group(&r, "apps").is_none());
        assert_eq!(version_info()["minor"], "33");
        assert!(version_info()["gitVersion"].as_str().unwrap().starts_with("v1.33.0-skerry."));
    }
}
