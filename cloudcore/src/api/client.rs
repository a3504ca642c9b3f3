//! An in-process API client for cloudcore's own controllers.
//!
//! Controllers (ReplicaSet, Deployment, DaemonSet, StatefulSet, garbage collector, node
//! lifecycle) must write exactly as a `kubectl` user would: the same decoding, defaulting,
//! validation, namespace admission, generation bookkeeping and graceful pod deletion. So this
//! client does not write to the store itself: it builds the same [`Call`] an HTTP request
//! produces and runs the same handler, then reads the JSON answer back. Reads go straight to
//! the store (they have no semantics beyond the stored object).
//!
//! Resources are named by their storage resource (`pods`, `apps/replicasets`); cluster-scoped
//! objects take an empty namespace.

use super::error::ApiError;
use super::handlers::{self, Call};
use super::resource::ResourceHandler;
use super::ApiState;
use crate::store::{ObjectKey, Stored};
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// How a delete treats the object's dependents (`DeleteOptions.propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the owner now; the garbage collector deletes dependents afterwards.
    Background,
    /// Delete dependents first; the owner goes once they are gone.
    Foreground,
    /// Leave dependents, removing their owner references.
    Orphan,
}

impl Propagation {
    /// The name Kubernetes uses in `DeleteOptions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Background => "Background",
            Propagation::Foreground => "Foreground",
            Propagation::Orphan => "Orphan",
        }
    }

    /// The policy named `s` in `DeleteOptions`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }
}

/// The in-process client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    state: ApiState,
}

impl Client {
    /// A client writing through `state`'s registry and store.
    pub fn new(state: ApiState) -> Self {
        Self { state }
    }

    /// The API state the client writes through (its store, for watching).
    pub fn state(&self) -> &ApiState {
        &self.state
    }

    fn handler(&self, resource: &str) -> Result<Arc<dyn ResourceHandler>, ApiError> {
        self.state
            .registry
            .by_storage_resource(resource)
            .cloned()
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "resource {resource:?} is not served; register it in Registry::builtin"
                ))
            })
    }

    fn call(
        &self,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
        status: bool,
    ) -> Result<Call, ApiError> {
        let res = self.handler(resource)?;
        let namespace =
            (res.info().namespaced && !namespace.is_empty()).then(|| namespace.to_string());
        Ok(Call {
            state: self.state.clone(),
            res,
            namespace,
            name: name.map(str::to_string),
            status,
            query: HashMap::new(),
            headers: HeaderMap::new(),
        })
    }

    /// Reads one object; `None` if it does not exist.
    pub async fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        self.state
            .store
            .get(&ObjectKey::new(resource, namespace, name))
            .await
            .map(|s| s.map(|s| s.value))
            .map_err(|e| ApiError::from_store(e, resource, name))
    }

    /// Lists a resource in one namespace, or in all with `None`; corrupt entries are skipped
    /// by the store (and reported there).
    pub async fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        self.list_stored(resource, namespace)
            .await
            .map(|items| items.into_iter().map(|s| s.value).collect())
    }

    /// Every object of `resource`, for a controller's resync; a failure is logged (the next
    /// resync tries again) and gives `None`, so that the caller keeps what it knew.
    pub async fn list_for_resync(&self, resource: &str) -> Option<Vec<Value>> {
        self.list(resource, None)
            .await
            .map_err(|e| {
                tracing::warn!(%resource, error = %e, "cannot list for a resync; retrying at the next one");
            })
            .ok()
    }

    /// As [`Client::list`], with each object's revision.
    pub async fn list_stored(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Stored>, ApiError> {
        self.state
            .store
            .list(resource, namespace)
            .await
            .map(|(items, _)| items)
            .map_err(|e| ApiError::from_store(e, resource, ""))
    }

    /// Creates `obj` (its `metadata.name` or `generateName` names it) as a client's POST would;
    /// returns the stored object.
    pub async fn create(
        &self,
        resource: &str,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let call = self.call(resource, namespace, None, false)?;
        body_of(handlers::create(&call, to_bytes(&obj)?).await?).await
    }

    /// Replaces `obj` as a client's PUT would. With `metadata.resourceVersion` set, the write
    /// fails with a conflict if the object changed since (the caller re-reads and retries).
    pub async fn update(
        &self,
        resource: &str,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        self.put(resource, namespace, obj, false).await
    }

    /// Replaces the status of `obj` as a PUT to `/status` would (same precondition rule).
    pub async fn update_status(
        &self,
        resource: &str,
        namespace: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        self.put(resource, namespace, obj, true).await
    }

    async fn put(
        &self,
        resource: &str,
        namespace: &str,
        obj: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let name = name_of(&obj)?;
        let call = self.call(resource, namespace, Some(&name), status)?;
        body_of(handlers::update(&call, to_bytes(&obj)?).await?).await
    }

    /// Read-modify-write of a status through the API: `f` gets the current object and returns
    /// the object with its new status, or `None` for "no change"; the write is conditional on
    /// the revision read and is retried on conflict (the API-side twin of
    /// [`crate::store::update_with`]). Returns the object as written, `None` if `f` declined;
    /// a missing object is a `NotFound`.
    pub async fn update_status_with<F>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut f: F,
    ) -> Result<Option<Value>, ApiError>
    where
        F: FnMut(&Value) -> Option<Value> + Send,
    {
        for _ in 0..handlers::UPDATE_ATTEMPTS {
            let Some(current) = self.get(resource, namespace, name).await? else {
                return Err(ApiError::from_store(
                    crate::store::StoreError::NotFound(ObjectKey::new(resource, namespace, name)),
                    resource,
                    name,
                ));
            };
            let Some(mut next) = f(&current) else {
                return Ok(None);
            };
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            match self.update_status(resource, namespace, next).await {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other.map(Some),
            }
        }
        Err(ApiError::Internal(format!(
            "{resource} {namespace}/{name} kept changing while its status was written; retry later"
        )))
    }

    /// Read-modify-write of an object (everything but its status) through the API, as
    /// [`Client::update_status_with`] is for the status: `f` gets the current object and returns
    /// the object to write, or `None` for "no change"; the write is conditional on the revision
    /// read, so `f` always decides on the value it writes over, and is retried on conflict.
    /// Returns the object as written, `None` if `f` declined; a missing object is a `NotFound`.
    pub async fn update_with<F>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        mut f: F,
    ) -> Result<Option<Value>, ApiError>
    where
        F: FnMut(&Value) -> Option<Value> + Send,
    {
        for _ in 0..handlers::UPDATE_ATTEMPTS {
            let Some(current) = self.get(resource, namespace, name).await? else {
                return Err(ApiError::from_store(
                    crate::store::StoreError::NotFound(ObjectKey::new(resource, namespace, name)),
                    resource,
                    name,
                ));
            };
            let Some(mut next) = f(&current) else {
                return Ok(None);
            };
            next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            match self.update(resource, namespace, next).await {
                Err(ApiError::Conflict { .. }) => continue,
                other => return other.map(Some),
            }
        }
        Err(ApiError::Internal(format!(
            "{resource} {namespace}/{name} kept changing while it was written; retry later"
        )))
    }

    /// Writes `status` as the status of `obj` unless it already says exactly that (controllers
    /// compute their status on every pass; an unchanged one is not a write). An object deleted
    /// meanwhile is not an error: there is nothing left to report on.
    pub async fn write_status_if_changed(
        &self,
        resource: &str,
        obj: &Value,
        status: Value,
    ) -> Result<(), ApiError> {
        if obj.get("status") == Some(&status) {
            return Ok(());
        }
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut next = obj.clone();
        next["status"] = status;
        match self.update_status(resource, &namespace, next).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object as a client's DELETE would (pods terminate gracefully), with
    /// `propagation` for its dependents and, if given, a uid precondition so that a
    /// same-named successor is never deleted by mistake. A missing object is a `NotFound`.
    pub async fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        propagation: Propagation,
        uid: Option<&str>,
    ) -> Result<(), ApiError> {
        let call = self.call(resource, namespace, Some(name), false)?;
        let mut opts = json!({
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": propagation.as_str(),
        });
        if let Some(uid) = uid {
            opts["preconditions"] = json!({ "uid": uid });
        }
        handlers::delete(&call, to_bytes(&opts)?).await?;
        Ok(())
    }

    /// Assigns pod `namespace/name` to `node` through the `binding` subresource, as
    /// kube-scheduler does against kube-apiserver: the pod's `uid` and `resource_version` are
    /// preconditions, so a binding never lands on a successor of the same name or on a pod that
    /// changed since it was placed (a `Conflict`, after which the caller re-reads).
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: u64,
        node: &str,
    ) -> Result<(), ApiError> {
        let call = self.call("pods", namespace, Some(name), false)?;
        let binding = json!({
            "kind": "Binding", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "resourceVersion": resource_version.to_string()},
            "target": {"kind": "Node", "apiVersion": "v1", "name": node},
        });
        super::binding::create(&call, to_bytes(&binding)?).await?;
        Ok(())
    }
}

fn name_of(obj: &Value) -> Result<String, ApiError> {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("metadata.name is required for an update"))
}

fn to_bytes(obj: &Value) -> Result<Bytes, ApiError> {
    serde_json::to_vec(obj)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("cannot encode a request body: {e}")))
}

async fn body_of(resp: Response) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read a handler's answer: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("a handler answered with invalid JSON: {e}")))
}
