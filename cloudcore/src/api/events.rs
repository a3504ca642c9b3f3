//! Events (core/v1): stored and listed, so that `kubectl describe` works.
//!
//! `kubectl describe` lists the events of the object it describes (a field selector on
//! `involvedObject.*`) and fails outright when the server has no `events` resource. Skerry
//! itself writes no events yet; clients may. Validation follows Kubernetes' core rule that an
//! event lives in the namespace of the object it is about.

use super::error::FieldError;
use super::resource::{
    decode_as, typed, DecodeError, ResourceHandler, ResourceInfo, SelectableField,
};
use super::table::{human_duration, parse_timestamp, Column};
use super::validation::NameRule;
use k8s_openapi::api::core::v1::Event;
use serde_json::{json, Value};

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
    verbs: &[
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ],
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
}
