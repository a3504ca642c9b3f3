//! Pod events reported by the edge (`protocol::events`): written as core/v1 Events through the
//! API, as kubelet's event recorder writes them through kube-apiserver.
//!
//! A report carries the pod's whole set of event series with absolute counts; each series is
//! merged into its Event by `protocol::events::merge` (a join), so duplicates, replays and
//! reordered reports converge and need no sequence guard of their own. The report applies only
//! to the pod it names, with the same uid and bound to the reporting node: a node writes events
//! about its own pods, nothing else.

use super::{ApplyError, Outcome};
use crate::api::client::Client;
use crate::api::events::record_series;
use crate::api::ApiError;
use protocol::events::{PodEvents, MAX_SERIES};
use serde_json::Value;

/// Applies one events report of `node`.
pub(super) async fn apply_events(
    client: &Client,
    node: &str,
    ev: &PodEvents,
) -> Result<Outcome, ApplyError> {
    if ev.series.len() > MAX_SERIES {
        return Err(ApplyError::Invalid(format!(
            "node {node} reported {} event series for pod {}/{}; at most {MAX_SERIES} are accepted",
            ev.series.len(),
            ev.namespace,
            ev.name
        )));
    }
    let Some(pod) = client.get("pods", &ev.namespace, &ev.name).await? else {
        return Ok(Outcome::Ignored(
            "events of a pod that does not exist (deleted?)",
        ));
    };
    if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(ev.uid.as_str()) {
        return Ok(Outcome::Ignored("events of an older pod of the same name"));
    }
    if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
        return Err(ApplyError::Invalid(format!(
            "node {node} reported events of pod {}/{} that is not bound to it",
            ev.namespace, ev.name
        )));
    }
    let mut written = 0;
    for s in &ev.series {
        match record_series(client, &pod, node, s).await {
            Ok(true) => written += 1,
            Ok(false) => {}
            // An event the API refuses (a message it finds invalid) is dropped, not the
            // report: the other series still apply.
            Err(e @ (ApiError::Invalid { .. } | ApiError::BadRequest { .. })) => {
                tracing::warn!(pod = %format!("{}/{}", ev.namespace, ev.name), reason = %s.reason, error = %e, "event refused by the API; dropped");
                metrics::counter!("skerry_ingest_events_refused_total").increment(1);
            }
            Err(e) => return Err(e.into()),
        }
    }
    metrics::counter!("skerry_ingest_events_written_total").increment(written);
    Ok(if written > 0 {
        Outcome::Applied
    } else {
        Outcome::Ignored("no event changed")
    })
}
