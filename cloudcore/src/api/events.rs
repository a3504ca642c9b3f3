//! Events (core/v1): stored and listed, so that `kubectl describe` works.
//!
//! `kubectl describe` lists the events of the object it describes (a field selector on
//! `involvedObject.*`) and fails outright when the server has no `events` resource. Skerry
//! Validation follows Kubernetes' core rule that an event lives in the namespace of the object
//! it is about.
//!
//! [`record`] is how cloudcore's own components (scheduler, controllers, node lifecycle) write
//! events: repeats with the same message bump one Event's `count` and `lastTimestamp` instead of
//! piling up copies (Kubernetes' event aggregation). The Event is named after the object and a
//! digest of (object uid, reason, message), so a new object with the same name starts afresh.

use super::client::Client;
use super::error::{ApiError, FieldError};
use super::resource::{
    decode_as, typed, DecodeError, ResourceHandler, ResourceInfo, SelectableField,
};
use super::table::{human_duration, parse_timestamp, Column};
use super::validation::NameRule;
use crate::clock;
use k8s_openapi::api::core::v1::Event;
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};

const fn field(name: &'static str, pointer: &'static str) -> SelectableField {
    SelectableField {
        name,
        pointer,
        default: "",
    }
}

/// The event resource.
pub const EVENT_INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["ev"],
    categories: &[],
    status_subresource: false,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[
        field("involvedObject.kind", "/involvedObject/kind"),
        field("involvedObject.namespace", "/involvedObject/namespace"),
        field("involvedObject.name", "/involvedObject/name"),
        field("involvedObject.uid", "/involvedObject/uid"),
        field("involvedObject.apiVersion", "/involvedObject/apiVersion"),
        field(
            "involvedObject.resourceVersion",
            "/involvedObject/resourceVersion",
        ),
        field("involvedObject.fieldPath", "/involvedObject/fieldPath"),
        field("reason", "/reason"),
        field("reportingComponent", "/reportingComponent"),
        field("source", "/source/component"),
        field("type", "/type"),
    ],
    return_deleted_object: false,
};

const COLUMNS: [Column; 10] = [
    Column { name: "Last Seen", kind: "string", format: "", description: "The time at which the most recent occurrence of this event was recorded.", priority: 0 },
    Column { name: "Type", kind: "string", format: "", description: "Type of this event (Normal, Warning), new types could be added in the future.", priority: 0 },
    Column { name: "Reason", kind: "string", format: "", description: "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.", priority: 0 },
    Column { name: "Object", kind: "string", format: "", description: "The object that this event is about.", priority: 0 },
    Column { name: "Subobject", kind: "string", format: "", description: "The subobject (a field path) this event is about.", priority: 1 },
    Column { name: "Source", kind: "string", format: "", description: "The component reporting this event.", priority: 1 },
    Column { name: "Message", kind: "string", format: "", description: "A human-readable description of the status of this operation.", priority: 0 },
    Column { name: "First Seen", kind: "string", format: "", description: "The time at which the event was first recorded.", priority: 1 },
    Column { name: "Count", kind: "string", format: "", description: "The number of times this event has occurred.", priority: 1 },
    Column { name: "Name", kind: "string", format: "name", description: "Name must be unique within a namespace.", priority: 1 },
];

/// The event [`ResourceHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EventHandler;

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn ago(obj: &Value, pointers: &[&str], now: i64) -> Value {
    pointers
        .iter()
        .find_map(|p| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .and_then(parse_timestamp)
        })
        .map_or(json!("<unknown>"), |t| json!(human_duration(now - t)))
}

impl ResourceHandler for EventHandler {
    fn info(&self) -> &ResourceInfo {
        &EVENT_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Event>(obj)
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let ev: Event = typed(obj)?;
        let ns = ev.metadata.namespace.as_deref().unwrap_or("");
        let about = ev.involved_object.namespace.as_deref().unwrap_or("");
        if !about.is_empty() && about != ns {
            return Err(vec![FieldError::invalid(
                "involvedObject.namespace",
                &json!(about),
                "does not match event.namespace",
            )]);
        }
        Ok(())
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn table_row(&self, ev: &Value, now: i64) -> Vec<Value> {
        let last = [
            "/series/lastObservedTime",
            "/lastTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ];
        let first = [
            "/firstTimestamp",
            "/eventTime",
            "/metadata/creationTimestamp",
        ];
        let source = match text(ev, "/source/component") {
            "" => text(ev, "/reportingComponent"),
            s => s,
        };
        vec![
            ago(ev, &last, now),
            json!(text(ev, "/type")),
            json!(text(ev, "/reason")),
            json!(format!(
                "{}/{}",
                text(ev, "/involvedObject/kind").to_lowercase(),
                text(ev, "/involvedObject/name")
            )),
            json!(text(ev, "/involvedObject/fieldPath")),
            json!(source),
            json!(text(ev, "/message").trim()),
            ago(ev, &first, now),
            json!(ev.get("count").and_then(Value::as_i64).unwrap_or(1)),
            ev.pointer("/metadata/name").cloned().unwrap_or(json!("")),
        ]
    }
}

/// Whether an event reports normal progress or something to look at (`kubectl describe`
/// shows both; `kubectl get events --field-selector type=Warning` filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Normal progress (`Scheduled`, `SuccessfulCreate`).
    Normal,
    /// Something went wrong or needs attention (`FailedScheduling`).
    Warning,
}

impl EventType {
    /// The `type` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The name of the Event about `object` for `reason` and `message`.
pub fn event_name(object: &Value, reason: &str, message: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (text(object, "/metadata/uid"), reason, message).hash(&mut h);
    let name = text(object, "/metadata/name");
    // 253 characters at most: 17 for the suffix, the rest from the object name.
    let prefix = name[..name.len().min(236)].trim_end_matches(['.', '-']);
    format!("{prefix}.{:016x}", h.finish())
}

/// A new Event about `object` (any kind: its `apiVersion` and `kind` are copied).
fn new_event(
    object: &Value,
    name: &str,
    event_type: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> Value {
    let now = clock::now_rfc3339();
    // Cluster-scoped objects (nodes) have their events in `default`, as in Kubernetes.
    let ns = match text(object, "/metadata/namespace") {
        "" => "default",
        ns => ns,
    };
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(),
                     "creationTimestamp": now},
        "involvedObject": {"apiVersion": text(object, "/apiVersion"), "kind": text(object, "/kind"),
                           "namespace": text(object, "/metadata/namespace"),
                           "name": text(object, "/metadata/name"), "uid": text(object, "/metadata/uid"),
                           "resourceVersion": text(object, "/metadata/resourceVersion")},
        "reason": reason, "message": message, "type": event_type.as_str(), "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": component,
    })
}

/// Records an Event about `object` from `component` through the API (as `client`'s
/// identity): creates it, or bumps the count of the same (object, reason, message) Event.
pub async fn record(
    client: &Client,
    object: &Value,
    event_type: EventType,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<Value, ApiError> {
    let name = event_name(object, reason, message);
    let probe = new_event(object, &name, event_type, reason, message, component);
    let ns = text(&probe, "/metadata/namespace").to_string();
    let rv = text(object, "/metadata/resourceVersion").to_string();
    for _ in 0..4 {
        // Most events are new (one Scheduled per pod): try the create first.
        match client.create("events", &ns, probe.clone()).await {
            Err(ApiError::AlreadyExists { .. }) => {}
            other => return other,
        }
        let bumped = client
            .update_with("events", &ns, &name, |ev| {
                let mut ev = ev.clone();
                ev["count"] = json!(ev["count"].as_u64().unwrap_or(1) + 1);
                ev["lastTimestamp"] = json!(clock::now_rfc3339());
                ev["involvedObject"]["resourceVersion"] = json!(rv);
                Some(ev)
            })
            .await;
        match bumped {
            Ok(Some(ev)) => return Ok(ev),
            // (The closure always writes, so `Ok(None)` does not occur; creating again is
            // harmless.)
            Ok(None) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(format!(
        "event {ns}/{name} kept appearing and disappearing while recording it; the next attempt retries"
    )))
}

/// The name of the Event of a node-reported series about `pod`: a digest of the pod's uid,
/// the field path, the reason and the message (Kubernetes' aggregation key), so the same
/// series always lands on the same Event, and a new pod of the same name starts afresh.
pub fn series_event_name(pod: &Value, s: &protocol::events::EventSeries) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        text(pod, "/metadata/uid"),
        s.field_path.as_str(),
        s.reason.as_str(),
        s.message.as_str(),
    )
        .hash(&mut h);
    let name = text(pod, "/metadata/name");
    let prefix = name[..name.len().min(236)].trim_end_matches(['.', '-']);
    format!("{prefix}.{:016x}", h.finish())
}

/// The `(count, firstTimestamp, lastTimestamp)` an Event holds, as a series.
fn held(ev: &Value) -> Option<protocol::events::Seen> {
    let ms = |p: &str| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
            .map(|secs| (secs.max(0) as u64) * 1000)
    };
    Some(protocol::events::Seen {
        count: ev
            .get("count")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .min(u32::MAX as u64) as u32,
        first_ms: ms("/firstTimestamp")?,
        last_ms: ms("/lastTimestamp")?,
    })
}

/// Writes a series that `node`'s kubelet-equivalent reported about `pod` as its core/v1 Event
/// (`source.component: kubelet`, `source.host: node`, the container's `fieldPath`): created,
/// or merged into the existing one by [`protocol::events::merge`] (highest count, widest span),
/// so a repeated or reordered report changes nothing. Returns whether anything was written.
pub async fn record_series(
    client: &Client,
    pod: &Value,
    node: &str,
    s: &protocol::events::EventSeries,
) -> Result<bool, ApiError> {
    let name = series_event_name(pod, s);
    let ns = text(pod, "/metadata/namespace").to_string();
    let time = |ms: u64| clock::rfc3339(ms);
    let mut ev = new_event(
        pod,
        &name,
        match s.event_type {
            protocol::events::EventType::Normal => EventType::Normal,
            protocol::events::EventType::Warning => EventType::Warning,
        },
        &s.reason,
        &s.message,
        "kubelet",
    );
    ev["involvedObject"]["fieldPath"] = json!(s.field_path);
    ev["source"]["host"] = json!(node);
    ev["reportingInstance"] = json!(node);
    ev["count"] = json!(s.count);
    ev["firstTimestamp"] = json!(time(s.first_ms));
    ev["lastTimestamp"] = json!(time(s.last_ms));
    // Event timestamps have whole seconds: compare in them, so a repeat writes nothing.
    let reported = protocol::events::Seen {
        first_ms: s.first_ms / 1000 * 1000,
        last_ms: s.last_ms / 1000 * 1000,
        ..protocol::events::Seen::from(s)
    };
    for _ in 0..4 {
        match client.create("events", &ns, ev.clone()).await {
            Err(ApiError::AlreadyExists { .. }) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e),
        }
        let merged = client
            .update_with("events", &ns, &name, |cur| {
                let before = held(cur);
                let m = protocol::events::merge(before, reported);
                if before == Some(m) {
                    return None;
                }
                let mut next = cur.clone();
                next["count"] = json!(m.count);
                next["firstTimestamp"] = json!(time(m.first_ms));
                next["lastTimestamp"] = json!(time(m.last_ms));
                next["involvedObject"]["resourceVersion"] =
                    json!(text(pod, "/metadata/resourceVersion"));
                Some(next)
            })
            .await;
        match merged {
            Ok(written) => return Ok(written.is_some()),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(format!(
        "event {ns}/{name} kept appearing and disappearing while recording it; the next attempt retries"
    )))
}

/// As [`record`], for callers to whom an event is a courtesy, not part of their work (the
/// controllers, the node lifecycle): a failure is logged with the object and reason, and
/// otherwise ignored, since the state the event describes is already in the object.
pub async fn record_best_effort(
    client: &Client,
    object: &Value,
    event_type: EventType,
    reason: &str,
    message: &str,
    component: &str,
) {
    if let Err(e) = record(client, object, event_type, reason, message, component).await {
        tracing::warn!(
            kind = text(object, "/kind"),
            namespace = text(object, "/metadata/namespace"),
            name = text(object, "/metadata/name"),
            reason,
            error = %e,
            "cannot record an event"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_namespace_rule() {
        let ev = decode_as::<Event>(
            json!({"metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "type": "Warning", "reason": "BackOff", "message": "restarting ", "count": 3,
            "lastTimestamp": "2025-01-01T00:00:00Z", "source": {"component": "edgecore"}}),
        )
        .unwrap();
        assert!(EventHandler.validate(&ev).is_ok());
        let row = EventHandler.table_row(&ev, 1_735_689_600 + 90);
        assert_eq!(
            row[..4],
            [
                json!("90s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web")
            ]
        );
        assert_eq!(row[5], "edgecore");
        assert_eq!(row[6], "restarting");
        assert_eq!(row[8], 3);
        let mut elsewhere = ev.clone();
        elsewhere["involvedObject"]["namespace"] = json!("other");
        assert!(EventHandler.validate(&elsewhere).is_err());
    }

    #[test]
    fn event_names_are_stable_per_pod_and_message_and_valid() {
        let pod = |uid: &str| json!({"metadata": {"name": "web", "uid": uid}});
        let a = event_name(&pod("u1"), "FailedScheduling", "m");
        assert_eq!(a, event_name(&pod("u1"), "FailedScheduling", "m"));
        assert_ne!(a, event_name(&pod("u2"), "FailedScheduling", "m"));
        assert_ne!(a, event_name(&pod("u1"), "FailedScheduling", "n"));
        assert!(a.starts_with("web."));
        let long = json!({"metadata": {"name": format!("{}-x", "a".repeat(240)), "uid": "u"}});
        assert!(event_name(&long, "r", "m").len() <= 253);
    }

    #[test]
    fn events_about_nodes_live_in_default_and_name_the_node() {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "edge-1", "uid": "n1", "resourceVersion": "7"}});
        let ev = new_event(
            &node,
            "edge-1.x",
            EventType::Normal,
            "NodeNotReady",
            "Node edge-1 status is now: NodeNotReady",
            "node-controller",
        );
        assert_eq!(ev["metadata"]["namespace"], "default");
        assert_eq!(ev["involvedObject"]["kind"], "Node");
        assert_eq!(ev["involvedObject"]["namespace"], "");
        assert_eq!(ev["source"]["component"], "node-controller");
        let decoded = decode_as::<Event>(ev).unwrap();
        assert!(EventHandler.validate(&decoded).is_ok());
    }
}
