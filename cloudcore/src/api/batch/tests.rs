use super::*;

fn job(spec: Value) -> Value {
    let mut v = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}});
    if let (Some(s), Some(extra)) = (v["spec"].as_object_mut(), spec.as_object()) {
        for (k, x) in extra {
            if x.is_null() {
                s.remove(k);
            } else {
                s.insert(k.clone(), x.clone());
            }
        }
    }
    let mut v = JobHandler.decode(v).unwrap();
    JobHandler.default(&mut v);
    JobHandler.prepare_create(&mut v);
    v
}

fn errors(h: &dyn ResourceHandler, v: &Value) -> Vec<String> {
    h.validate(v)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn jobs_get_kubernetes_defaults_and_a_generated_selector() {
    let j = job(json!({}));
    let s = &j["spec"];
    assert_eq!(
        (
            s["completions"].clone(),
            s["parallelism"].clone(),
            s["backoffLimit"].clone()
        ),
        (json!(1), json!(1), json!(6))
    );
    assert_eq!(s["completionMode"], "NonIndexed");
    assert_eq!(s["suspend"], false);
    assert_eq!(
        s["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
    );
    let labels = &s["template"]["metadata"]["labels"];
    assert_eq!(labels["controller-uid"], "u-1");
    assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
    assert_eq!(labels["job-name"], "pi");
    assert!(
        errors(&JobHandler, &j).is_empty(),
        "{:?}",
        errors(&JobHandler, &j)
    );
    // A work queue (parallelism only) keeps completions unset; per-index limits raise the
    // default backoffLimit out of the way.
    let q = job(json!({"parallelism": 3}));
    assert!(q["spec"].get("completions").is_none());
    let per =
        job(json!({"completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1}));
    assert_eq!(per["spec"]["backoffLimit"], i32::MAX);
    assert!(errors(&JobHandler, &per).is_empty());
}

#[test]
fn job_validation_names_each_field() {
    let cases = [
        (
            json!({"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}),
            r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#,
        ),
        (
            json!({"completionMode": "Indexed", "completions": null, "parallelism": 2}),
            "spec.completions: Required value: when completion mode is Indexed",
        ),
        (
            json!({"backoffLimitPerIndex": 1}),
            "spec.backoffLimitPerIndex: Forbidden: requires indexed completion mode",
        ),
        (
            json!({"completionMode": "Indexed", "completions": 2, "maxFailedIndexes": 1}),
            "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
        ),
        (
            json!({"backoffLimit": -1}),
            "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            json!({"successPolicy": {"rules": [{"succeededCount": 1}]}}),
            "spec.successPolicy: Forbidden: successPolicy is not supported by this server",
        ),
        (
            json!({"podReplacementPolicy": "TerminatingOrFailed"}),
            r#"spec.podReplacementPolicy: Unsupported value: "TerminatingOrFailed": supported values: "Failed""#,
        ),
        (
            json!({"managedBy": "example.com/other"}),
            r#"spec.managedBy: Unsupported value: "example.com/other""#,
        ),
        (
            json!({"completionMode": "Sparse"}),
            r#"spec.completionMode: Unsupported value: "Sparse""#,
        ),
        (
            json!({"podFailurePolicy": {"rules": [{"action": "FailIndex",
                "onExitCodes": {"operator": "In", "values": [3]}}]}}),
            r#"spec.podFailurePolicy.rules[0].action: Unsupported value: "FailIndex": supported values: "Count", "FailJob", "Ignore""#,
        ),
        (
            json!({"podFailurePolicy": {"rules": [{"action": "FailJob",
                "onExitCodes": {"operator": "In", "values": [0, 2]}}]}}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]: Invalid value: 0: must not be 0 for the In operator",
        ),
        (
            json!({"podFailurePolicy": {"rules": [{"action": "Ignore"}]}}),
            "spec.podFailurePolicy.rules[0]: Invalid value: null: specifying one of OnExitCodes and OnPodConditions is required",
        ),
    ];
    for (spec, want) in cases {
        let errs = errors(&JobHandler, &job(spec.clone()));
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{spec}: want {want:?}, got {errs:?}"
        );
    }
    let mut onfailure = job(json!({}));
    onfailure["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    onfailure["spec"]["podFailurePolicy"] = json!({"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]});
    assert_eq!(
        errors(&JobHandler, &onfailure),
        ["spec.podFailurePolicy: Invalid value: null: only allowed when spec.template.spec.restartPolicy is Never"]
    );
}

#[test]
fn a_manual_selector_must_match_and_the_template_is_immutable() {
    let mut m = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "m", "namespace": "default", "uid": "u-2"},
        "spec": {"manualSelector": true, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "y"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
    JobHandler.default(&mut m);
    JobHandler.prepare_create(&mut m);
    assert_eq!(m["spec"]["selector"]["matchLabels"]["app"], "x");
    assert!(errors(&JobHandler, &m)[0].contains("`selector` does not match template `labels`"));

    let old = job(json!({}));
    let mut new = old.clone();
    new["spec"]["parallelism"] = json!(4);
    new["spec"]["suspend"] = json!(true);
    assert!(JobHandler.validate_update(&new, &old).is_ok());
    new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
    new["spec"]["completions"] = json!(3);
    let errs: Vec<String> = JobHandler
        .validate_update(&new, &old)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("spec.completions: Invalid value: 3: field is immutable"));
    assert!(errs[1].starts_with("spec.template: Invalid value:"));
}

#[test]
fn job_rows_print_status_completions_and_duration() {
    let mut j = job(json!({"completions": 5}));
    j["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    j["status"] = json!({"succeeded": 5, "startTime": "2025-01-01T00:00:01Z",
        "completionTime": "2025-01-01T00:00:31Z",
        "conditions": [{"type": "Complete", "status": "True"}]});
    let row = JobHandler.table_row(&j, 1_735_689_600 + 60);
    assert_eq!(
        row[..5],
        [
            json!("pi"),
            json!("Complete"),
            json!("5/5"),
            json!("30s"),
            json!("60s")
        ]
    );
    assert_eq!(row.len(), JobHandler.columns().len());
    j["status"] = json!({"conditions": [{"type": "FailureTarget", "status": "True"}]});
    assert_eq!(JobHandler.table_row(&j, 0)[1], "Terminating");
}

fn cron_job(spec: Value) -> Value {
    let mut v = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {"schedule": "*/1 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    if let (Some(s), Some(extra)) = (v["spec"].as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    let mut v = CronJobHandler.decode(v).unwrap();
    CronJobHandler.default(&mut v);
    v
}

#[test]
fn cron_jobs_are_defaulted_and_validated() {
    let c = cron_job(json!({}));
    assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
    assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
    assert!(
        errors(&CronJobHandler, &c).is_empty(),
        "{:?}",
        errors(&CronJobHandler, &c)
    );
    assert!(errors(
        &CronJobHandler,
        &cron_job(json!({"timeZone": "Europe/Berlin"}))
    )
    .is_empty());
    for (spec, want) in [
        (
            json!({"schedule": "61 * * * *"}),
            r#"spec.schedule: Invalid value: "61 * * * *": minute field value 61 is out of range [0, 59]"#,
        ),
        (
            json!({"timeZone": "Mars/Olympus"}),
            r#"spec.timeZone: Invalid value: "Mars/Olympus": unknown time zone"#,
        ),
        (
            json!({"concurrencyPolicy": "Sometimes"}),
            r#"spec.concurrencyPolicy: Unsupported value: "Sometimes""#,
        ),
        (
            json!({"startingDeadlineSeconds": -5}),
            "spec.startingDeadlineSeconds: Invalid value: -5: must be greater than or equal to 0",
        ),
        (
            json!({"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}}),
            r#"spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: "Always""#,
        ),
        (
            json!({"jobTemplate": {"spec": {"successPolicy": {"rules": []}, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}),
            "spec.jobTemplate.spec.successPolicy: Forbidden",
        ),
    ] {
        let errs = errors(&CronJobHandler, &cron_job(spec.clone()));
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{spec}: want {want:?}, got {errs:?}"
        );
    }
    let mut c = cron_job(json!({"timeZone": "Etc/UTC"}));
    c["status"] = json!({"active": [{"name": "tick-1"}]});
    let row = CronJobHandler.table_row(&c, 0);
    assert_eq!(
        row[1..6],
        [
            json!("*/1 * * * *"),
            json!("Etc/UTC"),
            json!(false),
            json!(1),
            json!("<none>")
        ]
    );
    assert_eq!(row.len(), CronJobHandler.columns().len());
}
