//! The batch/v1 kinds: Job and CronJob.
//!
//! Defaults and validation follow `pkg/apis/batch` ([`job`] for the Job spec both share,
//! [`cronjob`] for the schedule, time zone and policies); the table columns are kubectl's
//! (`Status, Completions, Duration, Age` for Jobs; `Schedule, Timezone, Suspend, Active, Last
//! Schedule, Age` for CronJobs). The controllers are [`crate::controllers::job`] and
//! [`crate::controllers::cronjob`].

pub mod cronjob;
pub mod job;

use super::error::FieldError;
use super::resource::{decode_as, typed, DecodeError, ResourceHandler, ResourceInfo};
use super::table::{age, human_duration, parse_timestamp, Column, AGE_COLUMN, NAME_COLUMN};
use super::validation::{errors_to_result, NameRule};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::{json, Value};

/// The Job resource.
pub const JOB_INFO: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    plural: "jobs",
    singular: "job",
    kind: "Job",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &[],
    categories: &["all"],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

/// The CronJob resource.
pub const CRON_JOB_INFO: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    plural: "cronjobs",
    singular: "cronjob",
    kind: "CronJob",
    namespaced: true,
    verbs: super::resource::ALL_VERBS,
    short_names: &["cj"],
    categories: &["all"],
    status_subresource: true,
    name_rule: NameRule::Subdomain,
    selectable_fields: &[],
    return_deleted_object: false,
};

/// The handler of Jobs.
#[derive(Debug, Clone, Copy)]
pub struct JobHandler;

/// The handler of CronJobs.
#[derive(Debug, Clone, Copy)]
pub struct CronJobHandler;

const fn column(
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    priority: u8,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        description,
        priority,
    }
}

const JOB_COLUMNS: [Column; 8] = [
    NAME_COLUMN,
    column("Status", "string", "Status of the job.", 0),
    column(
        "Completions",
        "string",
        "The desired number of successfully finished pods the job should be run with.",
        0,
    ),
    column(
        "Duration",
        "string",
        "Time required to complete the job.",
        0,
    ),
    AGE_COLUMN,
    column(
        "Containers",
        "string",
        "Names of each container in the template.",
        1,
    ),
    column(
        "Images",
        "string",
        "Images referenced by each container in the template.",
        1,
    ),
    column("Selector", "string", "Label selector for pods.", 1),
];

const CRON_JOB_COLUMNS: [Column; 10] = [
    NAME_COLUMN,
    column(
        "Schedule",
        "string",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        0,
    ),
    column(
        "Timezone",
        "string",
        "The time zone name for the given schedule.",
        0,
    ),
    column(
        "Suspend",
        "boolean",
        "This flag tells the controller to suspend subsequent executions.",
        0,
    ),
    column(
        "Active",
        "integer",
        "A list of pointers to currently running jobs.",
        0,
    ),
    column(
        "Last Schedule",
        "string",
        "Information when was the last time the job was successfully scheduled.",
        0,
    ),
    AGE_COLUMN,
    column(
        "Containers",
        "string",
        "Names of each container in the template.",
        1,
    ),
    column(
        "Images",
        "string",
        "Images referenced by each container in the template.",
        1,
    ),
    column("Selector", "string", "Label selector for pods.", 1),
];

/// Whether `obj` (a Job) has the condition `type_` with status `True`.
pub fn has_condition(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// The `Status` cell of a Job, as kubectl 1.32 prints it.
fn job_status(obj: &Value) -> &'static str {
    if has_condition(obj, "Complete") {
        "Complete"
    } else if has_condition(obj, "Failed") {
        "Failed"
    } else if obj.pointer("/metadata/deletionTimestamp").is_some()
        || has_condition(obj, "SuccessCriteriaMet")
        || has_condition(obj, "FailureTarget")
    {
        "Terminating"
    } else if has_condition(obj, "Suspended") {
        "Suspended"
    } else {
        "Running"
    }
}

fn wide_cells(pod_template: Option<&Value>, selector: Option<&Value>) -> [Value; 3] {
    let containers = pod_template
        .and_then(|t| t.pointer("/spec/containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        json!(containers
            .iter()
            .map(|c| c.get(field).and_then(Value::as_str).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(","))
    };
    let sel = selector
        .and_then(|s| {
            serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
                s.clone(),
            )
            .ok()
        })
        .and_then(|s| super::selector::LabelSelector::from_meta(&s).ok())
        .filter(|s| !s.is_empty())
        .map_or_else(|| "<none>".to_string(), |s| s.to_string());
    [join("name"), join("image"), json!(sel)]
}

impl ResourceHandler for JobHandler {
    fn info(&self) -> &ResourceInfo {
        &JOB_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<Job>(obj)
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            job::default_spec(spec);
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
        job::generate_selector(obj);
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let j: Job = typed(obj)?;
        let mut errs = Vec::new();
        let spec = j.spec.unwrap_or_default();
        let raw = obj.get("spec").cloned().unwrap_or(Value::Null);
        job::validate_spec_at(&spec, &raw, "spec", true, &mut errs);
        errors_to_result(errs)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        job::validate_update(new, old, &mut errs);
        errors_to_result(errs)
    }

    fn columns(&self) -> &'static [Column] {
        &JOB_COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
        let succeeded = obj
            .pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
            Some(c) => format!("{succeeded}/{c}"),
            None => {
                let p = obj
                    .pointer("/spec/parallelism")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if p > 1 {
                    format!("{succeeded}/1 of {p}")
                } else {
                    format!("{succeeded}/1")
                }
            }
        };
        let time = |p: &str| {
            obj.pointer(p)
                .and_then(Value::as_str)
                .and_then(parse_timestamp)
        };
        let duration = match (time("/status/startTime"), time("/status/completionTime")) {
            (None, _) => String::new(),
            (Some(s), None) => human_duration(now - s),
            (Some(s), Some(c)) => human_duration(c - s),
        };
        let [containers, images, selector] =
            wide_cells(obj.pointer("/spec/template"), obj.pointer("/spec/selector"));
        vec![
            name,
            json!(job_status(obj)),
            json!(completions),
            json!(duration),
            age(obj, now),
            containers,
            images,
            selector,
        ]
    }
}

impl ResourceHandler for CronJobHandler {
    fn info(&self) -> &ResourceInfo {
        &CRON_JOB_INFO
    }

    fn decode(&self, obj: Value) -> Result<Value, DecodeError> {
        decode_as::<CronJob>(obj)
    }

    fn default(&self, obj: &mut Value) {
        cronjob::default(obj);
    }

    fn prepare_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
    }

    fn validate(&self, obj: &Value) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        cronjob::validate(obj, &mut errs)?;
        errors_to_result(errs)
    }

    fn columns(&self) -> &'static [Column] {
        &CRON_JOB_COLUMNS
    }

    fn table_row(&self, obj: &Value, now: i64) -> Vec<Value> {
        let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
        let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
        let tz = match s("/spec/timeZone") {
            "" => "<none>",
            tz => tz,
        };
        let active = obj
            .pointer("/status/active")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let last = obj
            .pointer("/status/lastScheduleTime")
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
            .map_or_else(|| "<none>".to_string(), |t| human_duration(now - t));
        let [containers, images, selector] = wide_cells(
            obj.pointer("/spec/jobTemplate/spec/template"),
            obj.pointer("/spec/jobTemplate/spec/selector"),
        );
        vec![
            name,
            json!(s("/spec/schedule")),
            json!(tz),
            json!(obj
                .pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)),
            json!(active),
            json!(last),
            age(obj, now),
            containers,
            images,
            selector,
        ]
    }
}

#[cfg(test)]
mod tests;
