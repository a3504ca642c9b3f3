//! Ingresses and IngressClasses (`networking.k8s.io/v1`): validation as Kubernetes', the
//! `DefaultIngressClass` admission rule, and kubectl's columns.
//!
//! Skerry's own controller is [`CONTROLLER`]: an IngressClass naming it is served by the edge
//! router of every node its [`NODE_SELECTOR_ANNOTATION`] selects (all nodes without one). An
//! Ingress of a class with another controller, of a class that does not exist, or of no class
//! at all is stored and left alone, as Kubernetes' controllers leave what is not theirs.
//! Which nodes serve what is decided once, in [`serving`], for the status controller and the
//! hub alike.

pub mod validation;

use super::error::{ApiError, FieldError};
use super::resource::{
    decode_as, typed, Allocation, DecodeError, ResourceHandler, ResourceInfo, ALL_VERBS,
};
use super::selector::LabelSelector;
use super::table::{age, Column, AGE_COLUMN, NAME_COLUMN};
use super::validation::{errors_to_result, NameRule};
use crate::store::{ObjectKey, Store};
use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// The `spec.controller` of the classes Skerry's edge router serves.
pub const CONTROLLER: &str = "skerry.io/edge-ingress";
/// Annotation of an IngressClass with Skerry's controller: a label selector (kubectl's syntax,
/// `site=factory-7,tier in (edge)`) choosing the nodes that serve the class; all nodes when
/// absent.
pub const NODE_SELECTOR_ANNOTATION: &str = "ingressclass.skerry.io/node-selector";
/// Kubernetes' annotation marking the class new Ingresses without a class get.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Store resource of Ingresses.
pub const INGRESSES: &str = "networking.k8s.io/ingresses";
/// Store resource of IngressClasses.
pub const INGRESS_CLASSES: &str = "networking.k8s.io/ingressclasses";

/// The Ingress resource.
pub const INGRESS_INFO: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    plural: "ingresses",
    singular: "ingress",
    kind: "Ingress",
    namespaced: true,
    verbs: ALL_VERBS,
    short_names: &["ing"],
    categories: &[],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

/// The IngressClass resource.
pub const INGRESS_CLASS_INFO: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    plural: "ingressclasses",
    singular: "ingressclass",
    kind: "IngressClass",
    namespaced: false,
    verbs: ALL_VERBS,
    short_names: &[],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

const fn col(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority: 0,
    }
}

const INGRESS_COLUMNS: [Column; 6] = [
    NAME_COLUMN,
    col(
        "Class",
        "The name of the IngressClass resource that should be used for additional configuration",
    ),
    col(
        "Hosts",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "Ports of TLS configurations that open"),
    AGE_COLUMN,
];

const CLASS_COLUMNS: [Column; 4] = [
    NAME_COLUMN,
    col(
        "Controller",
        "Controller that is responsible for handling this class",
    ),
    col(
        "Parameters",
        "A reference to a resource with additional parameters",
    ),
    AGE_COLUMN,
];

/// Whether a stored IngressClass is marked as the default.
pub fn is_default_class(class: &Value) -> bool {
    class
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// The default class among `classes` (Kubernetes' `DefaultIngressClass` admission: of several
/// marked ones, the newest; names break ties).
pub fn default_class(classes: &[Value]) -> Option<String> {
    classes
        .iter()
        .filter(|c| is_default_class(c))
        .map(|c| {
            let created = c
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(super::table::parse_timestamp)
                .unwrap_or(0);
            let name = c
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            (created, name.to_string())
        })
        .max()
        .map(|(_, name)| name)
}

/// The Ingress [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IngressHandler;

/// kubectl's HOSTS cell: the first three hosts (`*` for a rule without one is not listed),
/// `+ N more...`, `*` when no rule names a host.
fn hosts_cell(ing: &Ingress) -> String {
    let rules = ing
        .spec
        .as_ref()
        .and_then(|s| s.rules.as_deref())
        .unwrap_or_default();
    let mut list = Vec::new();
    let mut more = false;
    for r in rules {
        if list.len() == 3 {
            more = true;
        }
        if let Some(h) = r.host.as_deref().filter(|h| !more && !h.is_empty()) {
            list.push(h.to_string());
        }
    }
    if list.is_empty() {
        return "*".into();
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", rules.len() - 3)
    } else {
        joined
    }
}

/// kubectl's ADDRESS cell: the sorted, distinct IPs (or host names) of the status.
fn address_cell(ing: &Ingress) -> String {
    let set: BTreeSet<String> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| {
            i.ip.clone()
                .filter(|s| !s.is_empty())
                .or_else(|| i.hostname.clone().filter(|s| !s.is_empty()))
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

impl ResourceHandler for IngressHandler {
    fn info(&self) -> &ResourceInfo {
        &INGRESS_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Ingress>(obj)
    }

    fn prepare_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let ing: Ingress = typed(obj)?;
        let mut errs = Vec::new();
        validation::validate_spec(&ing.spec.clone().unwrap_or_default(), &mut errs);
        errors_to_result(errs)
    }

    fn validate_status(&self, new: &Value) -> Result<(), Vec<FieldError>> {
        let ing: Ingress = typed(new)?;
        let mut errs = Vec::new();
        if let Some(s) = &ing.status {
            validation::validate_status(s, &mut errs);
        }
        errors_to_result(errs)
    }

    /// The `DefaultIngressClass` admission: a new Ingress without `spec.ingressClassName` (and
    /// without the legacy `kubernetes.io/ingress.class` annotation) gets the default class.
    fn allocate<'a>(
        &'a self,
        store: &'a dyn Store,
        key: &'a ObjectKey,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, Result<Allocation, ApiError>> {
        Box::pin(async move {
            let has_class = obj
                .pointer("/spec/ingressClassName")
                .is_some_and(|v| !v.is_null());
            let legacy = obj
                .pointer("/metadata/annotations/kubernetes.io~1ingress.class")
                .is_some();
            if old.is_some() || has_class || legacy {
                return Ok(Allocation::none());
            }
            let (classes, _) = store
                .list(INGRESS_CLASSES, None)
                .await
                .map_err(|e| ApiError::from_store(e, &INGRESS_INFO.qualified(), &key.name))?;
            let classes: Vec<Value> = classes.into_iter().map(|s| s.value).collect();
            if let Some(name) = default_class(&classes) {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("ingressClassName".into(), json!(name));
                } else if let Some(o) = obj.as_object_mut() {
                    o.insert("spec".into(), json!({ "ingressClassName": name }));
                }
            }
            Ok(Allocation::none())
        })
    }

    fn columns(&self) -> &'static [Column] {
        &INGRESS_COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let ing: Ingress = serde_json::from_value(obj.clone()).unwrap_or_default();
        let class = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.clone())
            .unwrap_or_else(|| "<none>".into());
        let tls = ing
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .is_some_and(|t| !t.is_empty());
        vec![
            json!(ing.metadata.name.clone().unwrap_or_default()),
            json!(class),
            json!(hosts_cell(&ing)),
            json!(address_cell(&ing)),
            json!(if tls { "80, 443" } else { "80" }),
            age(obj, now),
        ]
    }
}

/// The IngressClass [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct IngressClassHandler;

impl ResourceHandler for IngressClassHandler {
    fn info(&self) -> &ResourceInfo {
        &INGRESS_CLASS_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<IngressClass>(obj)
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let class: IngressClass = typed(obj)?;
        let mut errs = Vec::new();
        validation::validate_class(&class, &mut errs);
        errors_to_result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let (n, o) = (
            new.pointer("/spec/controller"),
            old.pointer("/spec/controller"),
        );
        if n != o {
            return Err(vec![FieldError::invalid(
                "spec.controller",
                n.unwrap_or(&Value::Null),
                "field is immutable",
            )]);
        }
        Ok(())
    }

    fn columns(&self) -> &'static [Column] {
        &CLASS_COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let class: IngressClass = serde_json::from_value(obj.clone()).unwrap_or_default();
        let spec = class.spec.unwrap_or_default();
        let parameters = match spec.parameters {
            None => "<none>".to_string(),
            Some(p) => {
                let kind = match p.api_group {
                    Some(g) => format!("{}.{g}", p.kind),
                    None => p.kind,
                };
                format!("{kind}/{}", p.name)
            }
        };
        vec![
            json!(class.metadata.name.unwrap_or_default()),
            json!(spec.controller.unwrap_or_default()),
            json!(parameters),
            age(obj, now),
        ]
    }
}

/// Which nodes serve an Ingress: the answer shared by the status controller and the hub.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    /// Skerry's classes by name, with the selector of the nodes that serve them.
    classes: Vec<(String, LabelSelector)>,
}

impl Serving {
    /// From every stored IngressClass: those with [`CONTROLLER`]. A class whose selector does
    /// not parse (only possible in an object stored before validation) is served nowhere.
    pub fn from_classes(classes: &[Value]) -> Self {
        let mut out = Vec::new();
        for c in classes {
            if c.pointer("/spec/controller").and_then(Value::as_str) != Some(CONTROLLER) {
                continue;
            }
            let name = c
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let sel = c
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(NODE_SELECTOR_ANNOTATION))
                .and_then(Value::as_str)
                .unwrap_or("");
            match LabelSelector::parse(sel) {
                Ok(s) => out.push((name, s)),
                Err(e) => {
                    tracing::warn!(class = %name, error = %e, "IngressClass node selector does not parse; no node serves it")
                }
            }
        }
        Self { classes: out }
    }

    /// The selector of the nodes serving the class of `ingress`, if Skerry serves it.
    pub fn selector_for(&self, ingress: &Value) -> Option<&LabelSelector> {
        let class = ingress
            .pointer("/spec/ingressClassName")
            .and_then(Value::as_str)?;
        self.classes
            .iter()
            .find(|(n, _)| n == class)
            .map(|(_, s)| s)
    }

    /// Whether `node` (a stored Node) serves `ingress`.
    pub fn node_serves(&self, node: &Value, ingress: &Value) -> bool {
        self.selector_for(ingress).is_some_and(|s| s.matches(node))
    }

    /// Whether `node` serves any class at all.
    pub fn node_serves_any(&self, node: &Value) -> bool {
        self.classes.iter().any(|(_, s)| s.matches(node))
    }
}
