//! The resource registry: what each kind is ([`ResourceInfo`]) and how it behaves
//! ([`ResourceHandler`]).
//!
//! Everything generic — routing, decoding, metadata defaulting, optimistic concurrency, lists,
//! tables, watches, discovery — lives in the handlers and reads this registry. Adding a kind is
//! one `ResourceInfo` constant plus one small `ResourceHandler` impl registered in
//! [`Registry::builtin`].

use super::error::{ApiError, FieldError};
use super::table::Column;
use super::validation::NameRule;
use crate::store::{ObjectKey, Store};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// A field a field selector may name, and where it lives in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectableField {
    /// Name in selectors, e.g. `spec.nodeName`.
    pub name: &'static str,
    /// JSON pointer into the object, e.g. `/spec/nodeName`.
    pub pointer: &'static str,
    /// Value when the field is absent (`""`, or `"false"` for booleans).
    pub default: &'static str,
}

/// The verbs of a resource with every standard verb (what most Kubernetes kinds serve).
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The fields every resource can be selected by.
pub const METADATA_FIELDS: [SelectableField; 2] = [
    SelectableField {
        name: "metadata.name",
        pointer: "/metadata/name",
        default: "",
    },
    SelectableField {
        name: "metadata.namespace",
        pointer: "/metadata/namespace",
        default: "",
    },
];

/// Static description of a resource, as discovery advertises it.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name, used in URLs and store keys (`pods`).
    pub plural: &'static str,
    /// Singular name (`pod`).
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Verbs the resource supports (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`); requests for other verbs get 405.
    pub verbs: &'static [&'static str],
    /// Short names for kubectl (`po`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether the resource has a `/status` subresource; if so, writes to the main resource keep
    /// the stored `.status` and `/status` writes replace only `.status`.
    pub status_subresource: bool,
    /// Rule for `metadata.name`.
    pub name_rule: NameRule,
    /// Fields beyond `metadata.name`/`metadata.namespace` that field selectors may use.
    pub selectable_fields: &'static [SelectableField],
    /// Whether DELETE answers with the deleted object (pods) or a success Status (nodes), as
    /// the corresponding Kubernetes registry does.
    pub return_deleted_object: bool,
}

impl ResourceInfo {
    /// The resource string of store keys: the plural, prefixed with `group/` outside the core
    /// group (`pods`, `apps/deployments`).
    pub fn storage_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }

    /// The resource as Kubernetes names it in messages (`pods`, `deployments.apps`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `apiVersion` of objects (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of lists (`PodList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether `verb` is supported.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// Every field name field selectors may use.
    pub fn field_names(&self) -> Vec<&'static str> {
        METADATA_FIELDS
            .iter()
            .chain(self.selectable_fields)
            .map(|f| f.name)
            .collect()
    }

    /// The value of a selectable field of `obj` as a string (absent → the field's default).
    pub fn field_value(&self, obj: &Value, field: &str) -> String {
        let Some(f) = METADATA_FIELDS
            .iter()
            .chain(self.selectable_fields)
            .find(|f| f.name == field)
        else {
            return String::new();
        };
        match obj.pointer(f.pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => f.default.to_string(),
        }
    }
}

/// What deleting an object does.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteAction {
    /// Remove it from the store now.
    Delete,
    /// Store this updated object instead: graceful deletion (deletion timestamp set), finished
    /// later by whoever observes the termination.
    Update(Value),
    /// Nothing changes (already terminating with a grace period at least as short); answer with
    /// the current object.
    Unchanged,
}

/// Options of a delete request, from the query and the `DeleteOptions` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// `gracePeriodSeconds`, if the client gave one.
    pub grace_period_seconds: Option<i64>,
}

/// Per-kind behaviour. Methods take and return the Kubernetes JSON object; generic code has
/// already checked the body's type (via [`ResourceHandler::decode`]) and the common metadata.
pub trait ResourceHandler: Send + Sync + 'static {
    /// The static description.
    fn info(&self) -> &ResourceInfo;

    /// Type-checks a body against the k8s-openapi type and returns it re-encoded (which prunes
    /// unknown fields, as the Kubernetes decoder does). Usually `decode_as::<T>(obj)`.
    fn decode(&self, obj: Value) -> Result<Value, DecodeError>;

    /// Applies defaults (`restartPolicy: Always`, ...). Runs on create and on update, so that an
    /// update written from a manifest compares equal to the defaulted stored object.
    fn default(&self, _obj: &mut Value) {}

    /// Adjusts a new object before creation (e.g. reset status).
    fn prepare_create(&self, _obj: &mut Value) {}

    /// Semantic validation of a whole object (metadata is checked generically).
    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>>;

    /// Adjusts an update before validation, knowing the stored object: carries over what the
    /// server allocated and the client left out (a Service's cluster IP), drops what the new
    /// shape no longer has. `new` already carries the stored status and system metadata.
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}

    /// Takes what the object needs from pools shared by every object of the kind (a Service's
    /// cluster IP and node ports), checking requested values against the stored objects, and
    /// writes it into `obj`. Runs on create and on update (`old` = the stored object) after
    /// validation, also in dry runs. The returned [`Allocation`] must be held until the write
    /// of `obj` is done: the stored objects are the pools' only record, so nobody may allocate
    /// between the check and the write.
    fn allocate<'a>(
        &'a self,
        _store: &'a dyn Store,
        _key: &'a ObjectKey,
        _obj: &'a mut Value,
        _old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Allocation, ApiError>> {
        Box::pin(std::future::ready(Ok(Allocation::none())))
    }

    /// Rules about what an update may change (immutable fields); `new` already carries the
    /// stored status and system metadata.
    fn validate_update(&self, _new: &Value, _old: &Value) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// Validation of a status write (`new` is the stored object with the new `.status`).
    fn validate_status(&self, _new: &Value) -> Result<(), Vec<FieldError>> {
        Ok(())
    }

    /// Why this object may not be deleted at all (a protected namespace), as the reason of a
    /// 403; `None` lets the delete proceed to [`ResourceHandler::on_delete`].
    fn forbid_delete(&self, _obj: &Value) -> Option<String> {
        None
    }

    /// Decides what a delete does with the current object; `now` is the RFC 3339 time.
    fn on_delete(&self, _obj: &Value, _opts: &DeleteOptions, _now: &str) -> DeleteAction {
        DeleteAction::Delete
    }

    /// Whether a controller of this kind removes terminating objects itself once its own work
    /// is done (namespaces: the namespace controller, after emptying them). Then removing the
    /// last finalizer leaves the object for that controller instead of deleting it.
    fn removed_by_controller(&self) -> bool {
        false
    }

    /// Whether the kind has a `/scale` subresource (an `autoscaling/v1` Scale over
    /// `spec.replicas`; see [`super::scale`]).
    fn scale_subresource(&self) -> bool {
        false
    }

    /// Whether the kind has a `/binding` subresource (pods: assigning one to a node; see
    /// [`super::binding`]).
    fn binding_subresource(&self) -> bool {
        false
    }

    /// Whether the kind has a `/log` subresource (pods: a container's log, read on the node;
    /// see [`super::pod_log`]).
    fn log_subresource(&self) -> bool {
        false
    }

    /// Whether the kind has `/exec` and `/attach` subresources (pods: a command run on the
    /// node, a container's output; see [`super::pod_exec`]).
    fn exec_subresource(&self) -> bool {
        false
    }

    /// Table columns (kubectl's `get` output); priority-1 columns appear with `-o wide`. The
    /// first column should be the name.
    fn columns(&self) -> &'static [Column];

    /// One table row, one cell per column; `now` is seconds since the epoch (for ages).
    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value>;
}

/// Keeps what [`ResourceHandler::allocate`] handed out reserved while it is held; dropped once
/// the object carrying it is written (or the request fails).
#[must_use = "the allocation is only reserved while this is held"]
pub struct Allocation {
    _guard: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Allocation {
    /// Nothing was allocated.
    pub fn none() -> Self {
        Self { _guard: None }
    }

    /// An allocation reserved by holding `guard` (the kind's allocation lock).
    pub fn held(guard: tokio::sync::MutexGuard<'static, ()>) -> Self {
        Self {
            _guard: Some(guard),
        }
    }
}

/// A body that does not fit the resource's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DecodeError {
    /// Path of the offending field (`spec.containers[0].ports[0].containerPort`), empty at the
    /// root.
    pub path: String,
    /// What the decoder expected.
    pub message: String,
    /// Set when the error is a missing required field (reported as `Required value` at
    /// `path.field`, a 422 like Kubernetes, rather than a 400).
    pub missing_field: Option<String>,
}

impl DecodeError {
    /// The API error for a body of `kind`: 422 Required for a missing field, 400 otherwise.
    pub fn into_api_error(self, info: &ResourceInfo, name: &str) -> ApiError {
        if let Some(field) = &self.missing_field {
            let path = if self.path.is_empty() {
                field.clone()
            } else {
                format!("{}.{field}", self.path)
            };
            return ApiError::Invalid {
                kind: info.kind.to_string(),
                name: name.to_string(),
                errors: vec![FieldError::required(path, "")],
            };
        }
        let cause = if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        };
        ApiError::bad_field(
            format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {cause}",
                kind = info.kind,
                version = info.version
            ),
            self.path,
            self.message,
        )
    }
}

/// Decodes `obj` as `T` (a k8s-openapi type), naming the path of the first type error, and
/// returns it re-encoded.
pub fn decode_as<T: DeserializeOwned + Serialize>(obj: Value) -> Result<Value, DecodeError> {
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        let message = e.into_inner().to_string();
        let missing_field = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .map(str::to_string);
        DecodeError {
            path,
            message,
            missing_field,
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| DecodeError {
        path: String::new(),
        message: format!("cannot re-encode: {e}"),
        missing_field: None,
    })
}

/// Paths of the fields of `raw` that decoding dropped because the type does not know them
/// (`spec.containers[0].imagePullPolicyy`), for `fieldValidation=Strict|Warn` as Kubernetes'
/// strict decoder reports them. `decoded` is what [`decode_as`] returned for `raw`.
pub fn unknown_fields(raw: &Value, decoded: &Value) -> Vec<String> {
    fn walk(raw: &Value, dec: &Value, path: &str, out: &mut Vec<String>) {
        match (raw, dec) {
            (Value::Object(r), Value::Object(d)) => {
                for (k, v) in r {
                    if v.is_null() {
                        continue;
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match d.get(k) {
                        None => out.push(p),
                        Some(dv) => walk(v, dv, &p, out),
                    }
                }
            }
            (Value::Array(r), Value::Array(d)) => {
                for (i, (rv, dv)) in r.iter().zip(d).enumerate() {
                    walk(rv, dv, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(raw, decoded, "", &mut out);
    out
}

/// Reads a value back as `T` for typed validation (the value already passed [`decode_as`]).
pub fn typed<T: DeserializeOwned>(obj: &Value) -> Result<T, Vec<FieldError>> {
    T::deserialize(obj).map_err(|e| vec![FieldError::invalid("", &Value::Null, e.to_string())])
}

/// All resources the API serves.
#[derive(Clone)]
pub struct Registry {
    resources: Vec<Arc<dyn ResourceHandler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            resources: Vec::new(),
        }
    }

    /// The resources Skerry serves today: namespaces, pods, nodes, ConfigMaps, Secrets,
    /// events, the apps/v1 workloads, batch/v1 Jobs and CronJobs, Services (allocating from the default
    /// [`ServiceNetwork`]; replace the entry to use another one), Endpoints,
    /// EndpointSlices, Ingresses and IngressClasses.
    ///
    /// [`ServiceNetwork`]: super::services::ServiceNetwork
    pub fn builtin() -> Self {
        let mut r = Self::new();
        r.register(Arc::new(super::namespaces::NamespaceHandler));
        r.register(Arc::new(super::pods::PodHandler));
        r.register(Arc::new(super::nodes::NodeHandler { cidrs: None }));
        r.register(Arc::new(super::configmaps::ConfigMapHandler));
        r.register(Arc::new(super::secrets::SecretHandler));
        r.register(Arc::new(super::events::EventHandler));
        for w in super::workloads::Workload::ALL {
            r.register(Arc::new(super::workloads::WorkloadHandler(w)));
        }
        r.register(Arc::new(super::batch::JobHandler));
        r.register(Arc::new(super::batch::CronJobHandler));
        r.register(Arc::new(super::services::ServiceHandler::new(
            super::services::ServiceNetwork::default(),
        )));
        r.register(Arc::new(super::endpoints::EndpointsHandler));
        r.register(Arc::new(super::endpoints::EndpointSliceHandler));
        r.register(Arc::new(super::ingress::IngressHandler));
        r.register(Arc::new(super::ingress::IngressClassHandler));
        r
    }

    /// Adds a resource (a later registration of the same group/version/plural wins).
    pub fn register(&mut self, handler: Arc<dyn ResourceHandler>) {
        let i = handler.info();
        let (g, v, p) = (i.group, i.version, i.plural);
        self.resources
            .retain(|h| !(h.info().group == g && h.info().version == v && h.info().plural == p));
        self.resources.push(handler);
    }

    /// Looks up a resource by group, version and plural.
    pub fn find(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&Arc<dyn ResourceHandler>> {
        self.resources.iter().find(|h| {
            let i = h.info();
            i.group == group && i.version == version && i.plural == plural
        })
    }

    /// Looks up a resource by its storage resource (`pods`, `apps/deployments`).
    pub fn by_storage_resource(&self, resource: &str) -> Option<&Arc<dyn ResourceHandler>> {
        self.resources
            .iter()
            .find(|h| h.info().storage_resource() == resource)
    }

    /// Every resource, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn ResourceHandler>> {
        self.resources.iter()
    }

    /// The versions served for `group`, in registration order, without repeats.
    pub fn versions_of(&self, group: &str) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for h in &self.resources {
            let i = h.info();
            if i.group == group && !out.contains(&i.version) {
                out.push(i.version);
            }
        }
        out
    }

    /// The non-core groups, in registration order, without repeats.
    pub fn groups(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for h in &self.resources {
            let g = h.info().group;
            if !g.is_empty() && !out.contains(&g) {
                out.push(g);
            }
        }
        out
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn decode_errors_name_the_field_path() {
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "x"}]}]}});
        let e = decode_as::<Pod>(body).unwrap_err();
        assert_eq!(e.path, "spec.containers[0].ports[0].containerPort");
        assert_eq!(
            e.to_string(),
            "spec.containers[0].ports[0].containerPort: invalid type: string \"x\", expected i32"
        );
        // k8s-openapi defaults missing required fields ("" here), so validation reports them.
        let v = decode_as::<Pod>(json!({"spec": {"containers": [{"image": "i"}]}})).unwrap();
        let errs = super::super::pods::PodHandler.validate(&v).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.containers[0].name: Required value"
        );
        // A decoder that does report a missing field gets a 422 Required at the full path.
        let e = DecodeError {
            path: "spec.containers[0]".into(),
            message: "missing field `name`".into(),
            missing_field: Some("name".into()),
        };
        let info = super::super::pods::PodHandler.info().clone();
        let api = e.into_api_error(&info, "x").status();
        assert_eq!(api["code"], 422);
        assert_eq!(
            api["details"]["causes"][0]["field"],
            "spec.containers[0].name"
        );
    }

    #[test]
    fn unknown_fields_are_found() {
        let raw = json!({"apiVersion": "v1", "metadata": {"name": "x", "labels": {"a": "b"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "imagePullPolicyy": "Always", "resources": {}}], "bogus": {"x": 1}}});
        let dec = decode_as::<Pod>(raw.clone()).unwrap();
        assert_eq!(
            unknown_fields(&raw, &dec),
            ["spec.bogus", "spec.containers[0].imagePullPolicyy"]
        );
    }

    #[test]
    fn decode_prunes_unknown_fields_and_nulls() {
        let v = decode_as::<Pod>(
            json!({"metadata": {"name": "x", "bogus": 1, "labels": null},
            "spec": {"containers": [{"name": "c"}]}}),
        )
        .unwrap();
        assert_eq!(v["metadata"], json!({"name": "x"}));
        assert_eq!(v["kind"], "Pod");
    }
}
