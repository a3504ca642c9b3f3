//! `?watch=1`: a stream of newline-delimited `{"type": "ADDED|MODIFIED|DELETED", "object": ...}`
//! events over the store's in-process event feed.
//!
//! The watch subscribes *before* listing, so nothing committed after the listing is missed;
//! events at or below the listing's revision are skipped. Each watch remembers the objects it
//! has reported (the last version of each), which decides ADDED vs MODIFIED, lets a DELETED
//! carry the last known object, and turns "no longer matches the selector" into DELETED, as
//! Kubernetes does. If the watch falls behind the feed (the broadcast channel lagged), it
//! re-lists and reports the differences, so a slow client never silently misses a change.
//! (Resuming from an old resourceVersion with 410 Gone is a later feature.)

use super::error::{json_response, ApiError};
use super::handlers::{now_seconds, set_type_meta, Call};
use super::resource::ResourceHandler;
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, TableRequest};
use crate::store::{Event, Store, Stored};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

type Key = (String, String);

struct WatchState {
    rx: Receiver<Event>,
    store: Arc<dyn Store>,
    res: Arc<dyn ResourceHandler>,
    storage_resource: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<TableRequest>,
    /// Objects reported so far: revision and last value.
    known: HashMap<Key, (u64, Value)>,
    /// Events are applied only above this revision (the listing covers the rest).
    seen_rev: u64,
    pending: VecDeque<Vec<u8>>,
    deadline: Option<Instant>,
}

fn key_of(v: &Value) -> Key {
    let m = |f: &str| {
        v.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (m("namespace"), m("name"))
}

impl WatchState {
    fn matches(&self, v: &Value) -> bool {
        let info = self.res.info();
        self.labels.matches(v) && self.fields.matches(|f| info.field_value(v, f))
    }

    fn push(&mut self, kind: &str, mut obj: Value) {
        set_type_meta(self.res.info(), &mut obj);
        let object = match self.table {
            Some(t) => {
                let now = now_seconds();
                table::build(
                    self.res.columns(),
                    |o| self.res.table_row(o, now),
                    &[obj],
                    None,
                    t,
                )
            }
            None => obj,
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.pending.push_back(line);
    }

    fn apply(&mut self, ev: Event) {
        if ev.revision <= self.seen_rev {
            return;
        }
        self.seen_rev = ev.revision;
        if ev.key.resource != self.storage_resource
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != ev.key.namespace)
        {
            return;
        }
        let key = (ev.key.namespace.clone(), ev.key.name.clone());
        match ev.value {
            Some(v) => {
                let known = self.known.get(&key).map(|(rev, _)| *rev);
                if known.is_some_and(|rev| rev >= ev.revision) {
                    return; // already reported by the initial listing
                }
                if self.matches(&v) {
                    self.known.insert(key, (ev.revision, v.clone()));
                    self.push(if known.is_some() { "MODIFIED" } else { "ADDED" }, v);
                } else if known.is_some() {
                    self.known.remove(&key);
                    self.push("DELETED", v);
                }
            }
            None => {
                if let Some((_, mut last)) = self.known.remove(&key) {
                    if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("resourceVersion".into(), json!(ev.revision.to_string()));
                    }
                    self.push("DELETED", last);
                } else if self.labels.is_empty() && self.fields.is_empty() {
                    let mut meta =
                        json!({"name": ev.key.name, "resourceVersion": ev.revision.to_string()});
                    if !ev.key.namespace.is_empty() {
                        meta["namespace"] = json!(ev.key.namespace);
                    }
                    self.push("DELETED", json!({"metadata": meta}));
                }
            }
        }
    }

    /// Re-lists after falling behind and reports what changed meanwhile.
    fn resync(&mut self) -> Result<(), String> {
        let (items, rev) = self
            .store
            .list(&self.storage_resource, self.namespace.as_deref())
            .map_err(|e| e.to_string())?;
        let mut current: HashMap<Key, Stored> = HashMap::new();
        for s in items {
            if self.matches(&s.value) {
                current.insert(key_of(&s.value), s);
            }
        }
        let gone: Vec<Key> = self
            .known
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some((_, last)) = self.known.remove(&k) {
                self.push("DELETED", last);
            }
        }
        let mut keys: Vec<&Key> = current.keys().collect();
        keys.sort();
        let mut changes = Vec::new();
        for k in keys {
            let s = &current[k];
            match self.known.get(k) {
                Some((rev, _)) if *rev == s.revision => {}
                Some(_) => changes.push(("MODIFIED", k.clone(), s.clone())),
                None => changes.push(("ADDED", k.clone(), s.clone())),
            }
        }
        for (kind, k, s) in changes {
            self.known.insert(k, (s.revision, s.value.clone()));
            self.push(kind, s.value);
        }
        self.seen_rev = self.seen_rev.max(rev);
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.pending.is_empty() {
                let mut out = Vec::new();
                while let Some(line) = self.pending.pop_front() {
                    out.extend(line);
                }
                return Some(Bytes::from(out));
            }
            let received = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, self.rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => return None,
                },
                None => self.rx.recv().await,
            };
            match received {
                Ok(ev) => self.apply(ev),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, resource = %self.storage_resource, "watch fell behind the store feed; re-listing");
                    if let Err(e) = self.resync() {
                        tracing::warn!(error = %e, "watch re-list failed; ending the watch");
                        return None;
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Serves a watch request.
pub(super) async fn watch(call: Call) -> Result<Response, ApiError> {
    let info = call.info();
    let (labels, fields) = call.selectors()?;
    let since = match call.query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}: must be a resourceVersion this server issued"))
        })?),
    };
    let timeout = match call.query.get("timeoutSeconds") {
        None => None,
        Some(t) => Some(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "timeoutSeconds: Invalid value: {t:?}: must be a non-negative integer"
            ))
        })?),
    };
    let rx = call.state.store.subscribe();
    let storage_resource = info.storage_resource();
    let (items, rev) = call
        .state
        .store
        .list(&storage_resource, call.namespace.as_deref())
        .map_err(|e| ApiError::from_store(e, &info.qualified(), ""))?;
    let mut st = WatchState {
        rx,
        store: call.state.store.clone(),
        res: call.res.clone(),
        storage_resource,
        namespace: call.namespace.clone(),
        labels,
        fields,
        table: call.table(),
        known: HashMap::new(),
        seen_rev: rev,
        pending: VecDeque::new(),
        deadline: timeout
            .and_then(|t| Instant::now().checked_add(std::time::Duration::from_secs(t))),
    };
    for s in items {
        if !st.matches(&s.value) {
            continue;
        }
        if since.is_none_or(|rv| s.revision > rv) {
            st.push("ADDED", s.value.clone());
        }
        st.known.insert(key_of(&s.value), (s.revision, s.value));
    }
    let stream = futures::stream::unfold(st, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<Bytes, std::io::Error>(chunk), st))
    });
    let mut resp = json_response(StatusCode::OK, &Value::Null);
    *resp.body_mut() = Body::from_stream(stream);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pods::PodHandler;
    use crate::store::ObjectKey;

    fn state(labels: &str) -> (WatchState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SledStore::open(dir.path(), |_, _| None).unwrap());
        let st = WatchState {
            rx: store.subscribe(),
            store,
            res: Arc::new(PodHandler),
            storage_resource: "pods".into(),
            namespace: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            table: None,
            known: HashMap::new(),
            seen_rev: 0,
            pending: VecDeque::new(),
            deadline: None,
        };
        (st, dir)
    }

    fn ev(rev: u64, ns: &str, name: &str, value: Option<Value>) -> Event {
        Event {
            revision: rev,
            key: ObjectKey::new("pods", ns, name),
            value,
            shards: vec![],
        }
    }

    fn types(st: &mut WatchState) -> Vec<String> {
        st.pending
            .drain(..)
            .map(|l| {
                serde_json::from_slice::<Value>(&l).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn event_types_follow_what_the_watcher_knows() {
        let (mut st, _dir) = state("app=web");
        let pod = |app: &str| json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": app}}});
        st.apply(ev(1, "default", "a", Some(pod("web"))));
        st.apply(ev(2, "default", "a", Some(pod("web"))));
        st.apply(ev(3, "default", "a", Some(pod("db")))); // leaves the selector
        st.apply(ev(4, "default", "a", Some(pod("db")))); // not interesting
        st.apply(ev(5, "other", "a", Some(pod("web")))); // other namespace
        st.apply(ev(6, "default", "a", Some(pod("web"))));
        st.apply(ev(6, "default", "a", None)); // stale revision: ignored
        st.apply(ev(7, "default", "a", None));
        st.apply(ev(8, "default", "b", None)); // never seen, selector set: nothing
        assert_eq!(
            types(&mut st),
            ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]
        );
        let (mut all, _dir2) = state("");
        all.apply(ev(9, "default", "gone", None));
        let line: Value = serde_json::from_slice(&all.pending[0]).unwrap();
        assert_eq!(line["object"]["metadata"]["name"], "gone");
        assert_eq!(line["object"]["kind"], "Pod");
    }
}
