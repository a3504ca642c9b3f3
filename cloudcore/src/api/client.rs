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
use crate::pki::UserInfo;
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

/// The `DeleteOptions` an in-process delete can carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions<'a> {
    /// `propagationPolicy`; `None` keeps what the object's finalizers already say.
    pub propagation: Option<Propagation>,
    /// `preconditions.uid`: never delete a same-named successor.
    pub uid: Option<&'a str>,
    /// `gracePeriodSeconds`; `None` for the kind's default (the pod's own grace period).
    pub grace_period_seconds: Option<i64>,
}

/// The identities cloudcore's in-process writers use, named as Kubernetes names its own
/// components where there is one, so that logs (and RBAC, when it comes) tell the writers apart.
pub mod identity {
    /// The group every in-process writer is in.
    pub const GROUP: &str = "system:skerry:components";
    /// The workload, namespace and garbage-collection controllers.
    pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
    /// The scheduler.
    pub const SCHEDULER: &str = "system:kube-scheduler";
    /// The node lifecycle controller.
    pub const NODE_CONTROLLER: &str = "system:serviceaccount:kube-system:node-controller";
    /// The hub (node registration).
    pub const HUB: &str = "system:skerry:hub";
    /// The status ingest: what edges report over MQTT, written as their kubelet would.
    pub const INGEST: &str = "system:skerry:ingest";
}

/// The in-process client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    state: ApiState,
    user: UserInfo,
}

impl Client {
    /// A client writing through `state`'s registry and store, as the controller manager.
    pub fn new(state: ApiState) -> Self {
        Self::with_identity(state, identity::CONTROLLER_MANAGER)
    }

    /// A client writing as the component `name` (one of [`identity`]).
    pub fn with_identity(state: ApiState, name: &str) -> Self {
        Self {
            state,
            user: UserInfo {
                name: name.to_string(),
                groups: vec![identity::GROUP.to_string()],
                issued_at_unix: 0,
            },
        }
    }

    /// The identity this client writes as.
    pub fn user(&self) -> &UserInfo {
        &self.user
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
            user: Some(self.user.clone()),
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

    /// Read-modify-write of an object through the API, as a client's GET then PUT with the
    /// read `resourceVersion`: `f` gets the current object and returns the new one, or `None`
    /// for "no change"; retried on conflict. Returns the object as written, `None` if `f`
    /// declined; a missing object is a `NotFound`.
    pub async fn update_with<F>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        f: F,
    ) -> Result<Option<Value>, ApiError>
    where
        F: FnMut(&Value) -> Option<Value> + Send,
    {
        self.put_with(resource, namespace, name, false, f).await
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
        f: F,
    ) -> Result<Option<Value>, ApiError>
    where
        F: FnMut(&Value) -> Option<Value> + Send,
    {
        self.put_with(resource, namespace, name, true, f).await
    }

    async fn put_with<F>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        status: bool,
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
            match self.put(resource, namespace, next, status).await {
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
        let opts = DeleteOptions {
            propagation: Some(propagation),
            uid,
            grace_period_seconds: None,
        };
        self.delete_with(resource, namespace, name, opts).await
    }

    /// Deletes an object with full [`DeleteOptions`]: what the edge's final delete of a pod it
    /// has stopped uses (grace period 0, uid precondition, no propagation policy so that the
    /// pod's own finalizers decide), as kubelet's final `DELETE` does.
    pub async fn delete_with(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        opts: DeleteOptions<'_>,
    ) -> Result<(), ApiError> {
        let call = self.call(resource, namespace, Some(name), false)?;
        let mut body = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(p) = opts.propagation {
            body["propagationPolicy"] = json!(p.as_str());
        }
        if let Some(uid) = opts.uid {
            body["preconditions"] = json!({ "uid": uid });
        }
        if let Some(grace) = opts.grace_period_seconds {
            body["gracePeriodSeconds"] = json!(grace);
        }
        handlers::delete(&call, to_bytes(&body)?).await?;
        Ok(())
    }

    /// Removes an object whose deletion a controller finishes (an emptied namespace), if it is
    /// still at `revision`, marked for deletion and free of finalizers; `Ok(false)` when it
    /// changed meanwhile and the controller should look again. A missing object is a
    /// `NotFound`.
    pub async fn finalize(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        revision: u64,
    ) -> Result<bool, ApiError> {
        let call = self.call(resource, namespace, Some(name), false)?;
        handlers::finalize(&self.state, &call.res, &call.key(), revision).await
    }

    /// Assigns pod `namespace/name` to `node` through the `binding` subresource, as
    /// kube-scheduler does against kube-apiserver: the pod's `uid` and `resource_version` are
    /// preconditions, so a binding never lands on a successor of the same name or on a pod that
    /// changed since it was placed (a `Conflict`, after which the caller re-reads).
    ///
    /// Returns the pod as written. An HTTP client gets a `Status` for the same write, as from
    /// kube-apiserver; an in-process caller gets the object and its revision without reading
    /// it again.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: u64,
        node: &str,
    ) -> Result<Stored, ApiError> {
        let call = self.call("pods", namespace, Some(name), false)?;
        let binding = json!({
            "kind": "Binding", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "resourceVersion": resource_version.to_string()},
            "target": {"kind": "Node", "apiVersion": "v1", "name": node},
        });
        super::binding::bind(&call, to_bytes(&binding)?)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(format!("binding {namespace}/{name} was not written"))
            })
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
