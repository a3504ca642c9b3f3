//! Defaults and validation of CronJobs (`SetDefaults_CronJob`, `ValidateCronJob`): the
//! schedule parses ([`crate::cron`]), the time zone is in the tz database, the policies are
//! known and the job template is a valid Job spec ([`super::job`]).

use super::job;
use crate::api::error::FieldError;
use crate::api::resource::typed;
use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{json, Value};

/// `SetDefaults_CronJob`, and the pod template's defaults inside the job template.
pub fn default(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("concurrencyPolicy").or_insert(json!("Allow"));
    spec.entry("suspend").or_insert(json!(false));
    spec.entry("successfulJobsHistoryLimit").or_insert(json!(3));
    spec.entry("failedJobsHistoryLimit").or_insert(json!(1));
    if let Some(t) = spec
        .get_mut("jobTemplate")
        .and_then(|t| t.get_mut("spec"))
        .and_then(|s| s.get_mut("template"))
    {
        crate::api::resource::ResourceHandler::default(&crate::api::pods::PodHandler, t);
    }
}

/// `ValidateCronJob`.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    let cj: CronJob = typed(obj)?;
    let spec = cj.spec.unwrap_or_default();
    if spec.schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else if let Err(e) = crate::cron::Schedule::parse(&spec.schedule) {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &json!(spec.schedule),
            e.0,
        ));
    }
    if let Some(tz) = spec.time_zone.as_deref() {
        if let Err(e) = crate::cron::time_zone(Some(tz)) {
            errs.push(FieldError::invalid("spec.timeZone", &json!(tz), e.0));
        }
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if !matches!(policy, "Allow" | "Forbid" | "Replace") {
        errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            &json!(policy),
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for (field, v) in [
        (
            "spec.startingDeadlineSeconds",
            spec.starting_deadline_seconds,
        ),
        (
            "spec.successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit.map(i64::from),
        ),
        (
            "spec.failedJobsHistoryLimit",
            spec.failed_jobs_history_limit.map(i64::from),
        ),
    ] {
        if let Some(n) = v.filter(|n| *n < 0) {
            errs.push(FieldError::invalid(
                field,
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    // A Job is named `<cronjob>-<minutes since the epoch>`: 11 characters of suffix in a
    // 63-character label value (`job-name`).
    let name = cj.metadata.name.as_deref().unwrap_or("");
    if name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be no more than 52 characters",
        ));
    }
    let template_spec = spec.job_template.spec.unwrap_or_default();
    let raw = obj
        .pointer("/spec/jobTemplate/spec")
        .cloned()
        .unwrap_or(Value::Null);
    job::validate_spec_at(&template_spec, &raw, "spec.jobTemplate.spec", false, errs);
    Ok(())
}
