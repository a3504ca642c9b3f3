//! Unit tests of the Deployment controller's pure parts: sizing, history and status.

use super::*;

/// The Deployment `v` as the controller decodes it.
fn dep(v: &Value) -> Obj<Deployment> {
    Obj::new(v.clone()).unwrap()
}

/// A condition of a status as written.
fn condition_of<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A status as written.
fn written(status: &DeploymentStatus) -> Value {
    serde_json::to_value(status).unwrap()
}

fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Value {
    json!({"metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 2},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 600,
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.26"}]}}}})
}

/// One pass of a rolling update where every pod becomes available at once: the sizes of
/// the new and old ReplicaSets after the pass.
fn pass(d: &Value, new: i32, old: i32) -> (i32, i32) {
    let d = &dep(d).t;
    let replicas = replicas_of(d);
    let next_new = rolling_new_replicas(replicas, max_surge(d), new + old, new);
    if next_new != new {
        return (next_new, old);
    }
    let sizes = scale_down_old(
        replicas,
        max_unavailable(d),
        Sizes {
            replicas: new,
            available: new,
        },
        &[Sizes {
            replicas: old,
            available: old,
        }],
    );
    (new, sizes[0])
}

#[test]
fn surge_one_unavailable_zero_replaces_three_pods_one_at_a_time() {
    let d = deployment(3, json!(1), json!(0));
    assert_eq!((max_surge(&dep(&d).t), max_unavailable(&dep(&d).t)), (1, 0));
    let mut state = (0, 3);
    let mut steps = vec![state];
    while state != (3, 0) {
        state = pass(&d, state.0, state.1);
        // Never more than replicas + surge pods, never fewer than replicas available.
        assert!(state.0 + state.1 <= 4, "{steps:?}");
        assert!(state.0 + state.1 >= 3, "{steps:?}");
        steps.push(state);
        assert!(steps.len() < 20, "no convergence: {steps:?}");
    }
    assert_eq!(
        steps,
        [(0, 3), (1, 3), (1, 2), (2, 2), (2, 1), (3, 1), (3, 0)]
    );
}

#[test]
fn default_quarter_bounds_round_surge_up_and_unavailability_down() {
    let d = deployment(3, json!("25%"), json!("25%"));
    assert_eq!((max_surge(&dep(&d).t), max_unavailable(&dep(&d).t)), (1, 0));
    let d = deployment(10, json!("25%"), json!("25%"));
    assert_eq!((max_surge(&dep(&d).t), max_unavailable(&dep(&d).t)), (3, 2));
    let d = deployment(4, json!(0), json!("10%"));
    // Both resolve to 0: one pod may be unavailable, or nothing could move.
    assert_eq!((max_surge(&dep(&d).t), max_unavailable(&dep(&d).t)), (0, 1));
    let mut recreate = deployment(4, json!(1), json!(1));
    recreate["spec"]["strategy"] = json!({"type": "Recreate"});
    assert_eq!(
        (
            max_surge(&dep(&recreate).t),
            max_unavailable(&dep(&recreate).t)
        ),
        (0, 0)
    );
}

#[test]
fn old_replicas_shrink_only_as_far_as_availability_allows() {
    // New pods not yet available: nothing old may go.
    let sizes = scale_down_old(
        3,
        0,
        Sizes {
            replicas: 1,
            available: 0,
        },
        &[Sizes {
            replicas: 3,
            available: 3,
        }],
    );
    assert_eq!(sizes, [3]);
    // Unhealthy old replicas go first, before any healthy one, oldest ReplicaSet first.
    let sizes = scale_down_old(
        4,
        1,
        Sizes {
            replicas: 1,
            available: 1,
        },
        &[
            Sizes {
                replicas: 2,
                available: 1,
            },
            Sizes {
                replicas: 2,
                available: 2,
            },
        ],
    );
    // all = 5, min available = 3, max scaled down = 2: one unhealthy from the oldest,
    // then available 4 - 3 = 1 more, from the oldest again.
    assert_eq!(sizes, [0, 2]);
    // maxUnavailable lets old pods go before new ones are up.
    let sizes = scale_down_old(
        4,
        2,
        Sizes {
            replicas: 0,
            available: 0,
        },
        &[Sizes {
            replicas: 4,
            available: 4,
        }],
    );
    assert_eq!(sizes, [2]);
}

#[test]
fn scaling_mid_rollout_adds_to_the_new_and_takes_from_the_oldest() {
    assert_eq!(scale_plan(&[2, 2], Some(1), 6), [2, 4]);
    assert_eq!(scale_plan(&[2, 1, 2], Some(2), 2), [0, 0, 2]);
    assert_eq!(scale_plan(&[3, 2], None, 7), [3, 4]);
    assert_eq!(scale_plan(&[3, 2], Some(1), 5), [3, 2]);
}

#[test]
fn replica_sets_carry_hash_revision_and_the_change_cause() {
    let mut d = deployment(3, json!(1), json!(0));
    d["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "v2",
        "kubectl.kubernetes.io/last-applied-configuration": "{}"});
    let hash = pod_template_hash(&d["spec"]["template"], 0);
    let rs = new_replica_set(&dep(&d), &hash, 1, 2).unwrap();
    assert_eq!(rs.raw["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        rs.raw["spec"]["selector"]["matchLabels"][HASH_LABEL],
        json!(hash)
    );
    assert_eq!(
        rs.raw["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
        json!(hash)
    );
    assert_eq!(rs.raw["metadata"]["labels"]["app"], "web");
    let anns = &rs.raw["metadata"]["annotations"];
    assert_eq!(anns[REVISION], "2");
    assert_eq!(anns[DESIRED_REPLICAS], "3");
    assert_eq!(anns[MAX_REPLICAS], "4");
    assert_eq!(anns["kubernetes.io/change-cause"], "v2");
    assert!(anns
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_none());
    assert!(owned::is_controlled_by(&meta_of(&rs.raw), "d-1"));
    assert!(runs_template(&dep(&d), &rs));
    // The hash ignores the label, and a collision changes it.
    assert_eq!(pod_template_hash(&rs.raw["spec"]["template"], 0), hash);
    assert_ne!(pod_template_hash(&d["spec"]["template"], 1), hash);
    // Brought back by a rollback: the next revision, the old one remembered.
    let mut back = rs.clone();
    assert!(set_new_rs_annotations(&dep(&d).t, &mut back, 5));
    assert_eq!(back.raw["metadata"]["annotations"][REVISION], "5");
    assert_eq!(back.raw["metadata"]["annotations"][REVISION_HISTORY], "2");
    assert!(!set_new_rs_annotations(&dep(&d).t, &mut back, 5));
    // What `kubectl rollout undo` patches back is the same template.
    let mut undone = d.clone();
    undone["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    undone["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
    assert!(runs_template(&dep(&undone), &rs));
    assert_eq!(pod_template_hash(&undone["spec"]["template"], 0), hash);
    let mut other = d.clone();
    other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    assert!(!runs_template(&dep(&other), &rs));
}

fn rs(name: &str, spec: i32, replicas: i32, ready: i32, available: i32) -> ReplicaSet {
    Obj::new(json!({"metadata": {"name": name},
        "spec": {"replicas": spec, "selector": {}},
        "status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": available}}))
    .unwrap()
    .t
}

#[test]
fn status_and_conditions_follow_the_rollout() {
    let t = 1_735_689_600; // 2025-01-01T00:00:00Z
    let mut d = deployment(3, json!(1), json!(0));
    let new = rs("web-new", 1, 1, 0, 0);
    let old = rs("web-old", 3, 3, 3, 3);
    d["status"] = json!({"conditions": [{"type": "Progressing", "status": "True",
        "reason": "NewReplicaSetCreated", "message": "Created new replica set \"web-new\"",
        "lastUpdateTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
    let (status, requeue) = rollout_conditions(&dep(&d).t, &[&old, &new], Some(&new), t + 10);
    let status = written(&status);
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["replicas"], 4);
    assert_eq!(status["updatedReplicas"], 1);
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["availableReplicas"], 3);
    assert_eq!(status["unavailableReplicas"], 1);
    let available = condition_of(&status, "Available").unwrap();
    assert_eq!(available["reason"], "MinimumReplicasAvailable");
    assert_eq!(available["message"], "Deployment has minimum availability.");
    let progressing = condition_of(&status, "Progressing").unwrap();
    assert_eq!(progressing["reason"], "ReplicaSetUpdated");
    assert_eq!(
        progressing["message"],
        "ReplicaSet \"web-new\" is progressing."
    );
    assert_eq!(progressing["lastTransitionTime"], "2025-01-01T00:00:00Z");
    assert_eq!(progressing["lastUpdateTime"], "2025-01-01T00:00:10Z");
    assert_eq!(requeue, Some(601));

    // No progress past the deadline: timed out, and kubectl rollout status fails.
    d["status"] = status.clone();
    let (stuck, requeue) = rollout_conditions(&dep(&d).t, &[&old, &new], Some(&new), t + 700);
    let stuck = written(&stuck);
    let progressing = condition_of(&stuck, "Progressing").unwrap();
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
    assert_eq!(progressing["status"], "False");
    assert_eq!(
        progressing["message"],
        "ReplicaSet \"web-new\" has timed out progressing."
    );
    assert_eq!(requeue, None);

    // Complete: every replica updated and available.
    let done = rs("web-new", 3, 3, 3, 3);
    let (typed_status, requeue) = rollout_conditions(&dep(&d).t, &[&done], Some(&done), t + 20);
    assert!(deployment_complete(&dep(&d).t, &typed_status));
    let status = written(&typed_status);
    let progressing = condition_of(&status, "Progressing").unwrap();
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
    assert_eq!(
        progressing["message"],
        "ReplicaSet \"web-new\" has successfully progressed."
    );
    assert_eq!(requeue, None);

    // Below minimum availability.
    let down = rs("web-new", 3, 3, 1, 1);
    let status = written(&calculate_status(&dep(&d).t, &[&down], Some(&down), t));
    let available = condition_of(&status, "Available").unwrap();
    assert_eq!(available["status"], "False");
    assert_eq!(available["reason"], "MinimumReplicasUnavailable");
}
