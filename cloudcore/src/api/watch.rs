//! `?watch=1`: a stream of newline-delimited `{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
//! "object": ...}` events, read from the watch [`History`].
//!
//! Two ways to start, as in Kubernetes:
//! - without `resourceVersion` (or `0`): the current objects as ADDED, then every change after
//!   the listing;
//! - from `resourceVersion=R`: the retained changes after `R`, then live — so a delete between a
//!   client's list and its watch is seen. If `R` is older than the history, the stream is a
//!   single ERROR event with a 410 `Expired` Status and the client re-lists. If `R` is newer
//!   than anything the server has, the watch waits up to 3 s for it (as kube-apiserver's watch
//!   cache does), then the stream is a single ERROR event with the 504 "Too large resource
//!   version" Status: starting from `R` anyway would skip the events up to it.
//!
//! Event types follow kube-apiserver's cache watcher: an event is judged by whether the object
//! matched the watch's selectors before and after the write. Matched only after → ADDED; both →
//! MODIFIED; only before → DELETED carrying the previous object at the event's revision (an
//! object that stops matching a selector is gone for that watcher); neither → nothing. A watcher
//! that falls behind the history (more events than it retains while the client is slow) gets
//! the same 410 as a too-old start, never a silent gap.

use super::error::{json_response, ApiError};
use super::handlers::{now_seconds, parse_resource_version, set_type_meta, wait_fresh, Call};
use super::history::{History, HistoryEvent, TooOld};
use super::resource::ResourceHandler;
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, TableRequest};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a watch with `allowWatchBookmarks=true` is told the current revision (Kubernetes
/// sends one about every minute; more often costs little and lets clients resume closer).
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

type Key = (String, String);

/// What an initial listing told the client, to judge the events committed while it ran.
///
/// The store's listing is not a snapshot: it is complete up to its revision `L` but may also
/// show writes committed during the scan (up to `upto`). Events in `(L, upto]` are therefore
/// ambiguous: for a listed object, events at or below its listed revision are already known;
/// for an unlisted one, the client holds nothing, whatever the event's previous value says.
/// After `upto`, the previous value alone decides.
struct Listing {
    listed: HashMap<Key, u64>,
    upto: u64,
    /// Unlisted keys already given one event in the window.
    touched: HashSet<Key>,
}

struct WatchState {
    history: Arc<History>,
    head: tokio::sync::watch::Receiver<u64>,
    res: Arc<dyn ResourceHandler>,
    storage_resource: String,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<TableRequest>,
    /// Every event up to this revision has been judged.
    cursor: u64,
    listing: Option<Listing>,
    pending: VecDeque<Vec<u8>>,
    deadline: Option<Instant>,
    bookmarks: Option<tokio::time::Interval>,
    /// Set after an ERROR event: the stream ends once it is sent.
    done: bool,
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

fn event_line(kind: &str, mut object: Value) -> Vec<u8> {
    crate::annotations::hide_system_state(&mut object);
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line
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
        self.pending.push_back(event_line(kind, object));
    }

    fn expire(&mut self, e: TooOld) {
        self.fail(ApiError::Expired {
            requested: e.requested,
            oldest: e.oldest,
        });
    }

    /// Ends the stream with one ERROR event carrying `e`'s Status: once a watch has been
    /// accepted, kube-apiserver reports its failures this way, not as an HTTP error.
    fn fail(&mut self, e: ApiError) {
        self.pending.push_back(event_line("ERROR", e.status()));
        self.done = true;
    }

    fn bookmark(&mut self) {
        let info = self.res.info();
        let obj = json!({
            "apiVersion": info.api_version(),
            "kind": info.kind,
            "metadata": {"resourceVersion": self.cursor.to_string()},
        });
        self.pending.push_back(event_line("BOOKMARK", obj));
    }

    /// Judges one event of the history (any resource) and queues what the client must see.
    fn apply(&mut self, ev: &HistoryEvent) {
        if ev.revision <= self.cursor {
            return;
        }
        self.cursor = ev.revision;
        if ev.key.resource != self.storage_resource
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != ev.key.namespace)
        {
            return;
        }
        let now = ev.value.as_ref().is_some_and(|v| self.matches(v));
        let mut before = ev.previous.as_ref().is_some_and(|v| self.matches(v));
        if let Some(l) = &mut self.listing {
            if ev.revision > l.upto {
                self.listing = None;
            } else {
                let key = (ev.key.namespace.clone(), ev.key.name.clone());
                match l.listed.get(&key) {
                    Some(rev) if *rev >= ev.revision => return,
                    Some(_) => {}
                    None => {
                        if l.touched.insert(key) {
                            before = false;
                        }
                    }
                }
            }
        }
        match (before, now, &ev.value) {
            (false, true, Some(v)) => self.push("ADDED", v.clone()),
            (true, true, Some(v)) => self.push("MODIFIED", v.clone()),
            (true, false, _) => {
                let mut last = ev.previous.clone().unwrap_or(Value::Null);
                if let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(ev.revision.to_string()));
                }
                self.push("DELETED", last);
            }
            _ => {}
        }
    }

    /// Reads what the history holds after the cursor; false if there was nothing new.
    fn catch_up(&mut self) -> bool {
        match self.history.since(self.cursor) {
            Err(e) => {
                self.expire(e);
                true
            }
            Ok(events) if events.is_empty() => false,
            Ok(events) => {
                for e in &events {
                    self.apply(e);
                }
                true
            }
        }
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
            if self.done {
                return None;
            }
            // Mark the head seen before reading, so a push after the read wakes us.
            self.head.borrow_and_update();
            if self.catch_up() {
                continue;
            }
            let deadline = self.deadline;
            let bookmarks = &mut self.bookmarks;
            let tick = async {
                match bookmarks {
                    Some(b) => {
                        b.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let expiry = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let bookmark_due = tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    false
                }
                _ = expiry => return None,
                _ = tick => true,
            };
            if bookmark_due {
                self.bookmark();
            }
        }
    }
}

fn bookmark_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Serves a watch request.
pub(super) async fn watch(call: Call) -> Result<Response, ApiError> {
    let info = call.info();
    let (labels, fields) = call.selectors()?;
    let since = parse_resource_version(call.query.get("resourceVersion").map(String::as_str))?;
    let timeout = match call.query.get("timeoutSeconds") {
        None => None,
        Some(t) => Some(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "timeoutSeconds: Invalid value: {t:?}: must be a non-negative integer"
            ))
        })?),
    };
    let bookmarks = super::handlers::is_true(call.query.get("allowWatchBookmarks"));
    let history = call.state.history.clone();
    let storage_resource = info.storage_resource();
    let mut st = WatchState {
        head: history.subscribe(),
        history,
        res: call.res.clone(),
        storage_resource,
        namespace: call.namespace.clone(),
        labels,
        fields,
        table: call.table(),
        cursor: 0,
        listing: None,
        pending: VecDeque::new(),
        deadline: timeout.and_then(|t| Instant::now().checked_add(Duration::from_secs(t))),
        bookmarks: bookmarks.then(|| bookmark_timer(BOOKMARK_INTERVAL)),
        done: false,
    };
    match since {
        Some(rv) => {
            st.cursor = rv;
            if let Err(e) = wait_fresh(&call.state, rv).await {
                // Starting at `rv` anyway would skip every event up to it.
                st.fail(e);
            } else if let Err(e) = st.history.since(rv) {
                st.expire(e);
            }
        }
        None => {
            let store = &call.state.store;
            let (items, rev) = store
                .list(&st.storage_resource, call.namespace.as_deref())
                .await
                .map_err(|e| ApiError::from_store(e, &info.qualified(), ""))?;
            let mut listing = Listing {
                listed: HashMap::new(),
                upto: store.assigned_revision(),
                touched: HashSet::new(),
            };
            for s in items {
                if st.matches(&s.value) {
                    listing.listed.insert(key_of(&s.value), s.revision);
                    st.push("ADDED", s.value);
                }
            }
            st.cursor = rev;
            st.listing = Some(listing);
        }
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
    use crate::store::{ObjectKey, Store};

    fn state(labels: &str) -> (WatchState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SledStore::open(dir.path(), |_, _| None).unwrap());
        let history = History::start(store, 8);
        let st = WatchState {
            head: history.subscribe(),
            history,
            res: Arc::new(PodHandler),
            storage_resource: "pods".into(),
            namespace: Some("default".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            table: None,
            cursor: 0,
            listing: None,
            pending: VecDeque::new(),
            deadline: None,
            bookmarks: None,
            done: false,
        };
        (st, dir)
    }

    fn pod(app: &str) -> Value {
        json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": app}}})
    }

    fn ev(
        rev: u64,
        ns: &str,
        name: &str,
        previous: Option<Value>,
        value: Option<Value>,
    ) -> HistoryEvent {
        HistoryEvent {
            revision: rev,
            key: ObjectKey::new("pods", ns, name),
            value,
            previous,
        }
    }

    fn lines(st: &mut WatchState) -> Vec<Value> {
        st.pending
            .drain(..)
            .map(|l| serde_json::from_slice::<Value>(&l).unwrap())
            .collect()
    }

    fn types(st: &mut WatchState) -> Vec<String> {
        lines(st)
            .iter()
            .map(|l| l["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn replayed_events_are_typed_by_matching_before_and_after() {
        let (mut st, _dir) = state("app=web");
        let (web, db) = (Some(pod("web")), Some(pod("db")));
        st.apply(&ev(1, "default", "a", None, web.clone()));
        st.apply(&ev(2, "default", "a", web.clone(), web.clone()));
        st.apply(&ev(3, "default", "a", web.clone(), db.clone())); // leaves the selector
        st.apply(&ev(4, "default", "a", db.clone(), db.clone())); // not interesting
        st.apply(&ev(5, "other", "a", None, web.clone())); // other namespace
        st.apply(&ev(6, "default", "a", db.clone(), web.clone())); // matches again
        st.apply(&ev(6, "default", "a", web.clone(), None)); // already judged: ignored
        st.apply(&ev(7, "default", "a", web.clone(), None));
        st.apply(&ev(8, "default", "b", db.clone(), None)); // never matched: nothing
        let out = lines(&mut st);
        let kinds: Vec<&str> = out.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]);
        // A DELETED for leaving the selector carries the previous object at the event's revision.
        assert_eq!(out[2]["object"]["metadata"]["labels"]["app"], "web");
        assert_eq!(out[2]["object"]["metadata"]["resourceVersion"], "3");
        assert_eq!(out[4]["object"]["kind"], "Pod");
        assert_eq!(st.cursor, 8);
    }

    #[tokio::test]
    async fn events_during_the_initial_listing_are_not_doubled_or_invented() {
        let (mut st, _dir) = state("");
        let pod = |name: &str| json!({"metadata": {"name": name, "namespace": "default"}});
        // Listed at L = 10, but the scan also saw "fresh" written at 11; "gone" was deleted at 12
        // before the scan reached it; "late" was created at 13 after the scan passed it.
        st.cursor = 10;
        st.listing = Some(Listing {
            listed: [(("default".into(), "fresh".into()), 11)].into(),
            upto: 13,
            touched: HashSet::new(),
        });
        st.apply(&ev(11, "default", "fresh", None, Some(pod("fresh"))));
        st.apply(&ev(12, "default", "gone", Some(pod("gone")), None));
        st.apply(&ev(13, "default", "late", None, Some(pod("late"))));
        st.apply(&ev(14, "default", "fresh", Some(pod("fresh")), None));
        assert_eq!(types(&mut st), ["ADDED", "DELETED"]);
        assert!(st.listing.is_none(), "past the listing window");
    }

    #[tokio::test]
    async fn too_old_resume_points_get_410_and_bookmarks_carry_the_cursor() {
        let (mut st, _dir) = state("");
        st.expire(TooOld {
            requested: 3,
            oldest: 9,
        });
        let out = lines(&mut st);
        assert_eq!(out[0]["type"], "ERROR");
        assert_eq!(out[0]["object"]["code"], 410);
        assert_eq!(out[0]["object"]["reason"], "Expired");
        assert_eq!(
            out[0]["object"]["message"],
            "too old resource version: 3 (9)"
        );
        assert!(st.done);
        assert_eq!(st.next_chunk().await, None);

        let (mut st, _dir) = state("");
        st.cursor = 42;
        st.bookmarks = Some(bookmark_timer(Duration::from_millis(50)));
        let chunk = tokio::time::timeout(Duration::from_secs(5), st.next_chunk())
            .await
            .unwrap()
            .unwrap();
        let line: Value = serde_json::from_slice(&chunk).unwrap();
        assert_eq!(line["type"], "BOOKMARK");
        assert_eq!(line["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(line["object"]["kind"], "Pod");
    }
}
