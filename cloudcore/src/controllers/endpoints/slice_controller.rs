//! The EndpointSlice controller: keeps the managed EndpointSlices of every Service with a
//! selector (Kubernetes' `endpointslice-controller`).
//!
//! Each reconcile of a Service reads it from the store, its pods and its managed slices from
//! caches that have caught up with the store (read-your-writes, see
//! [`crate::controllers::informer`]), plans the writes ([`super::slice_plan`]) and makes them
//! through the API. Slices are named `<service>-<random>` by `generateName`, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.k8s.io`, and controlled by the Service, so the garbage collector
//! deletes them with it. The controller deletes its own slices of a Service that lost its
//! selector or became `ExternalName` (Kubernetes leaves them to go stale); slices written by
//! anyone else (another `managed-by`, or none) are never touched.

use super::slice_plan::{self, is_managed_slice_of};
use super::{endpoints_of, ServiceIndex, ServiceView, ENDPOINT_SLICES, SERVICES};
use super::{SERVICE_NAME_LABEL, SLICE_CONTROLLER, SLICE_MANAGED_BY};
use crate::api::client::{Client, Propagation};
use crate::api::ApiError;
use crate::controllers::decode::typed;
use crate::controllers::feed::Feed;
use crate::controllers::informer::{Informer, Informers, RESYNC};
use crate::controllers::runner::{Reconciler, Requeue};
use crate::controllers::ControllerError;
use crate::store::{Event, ObjectKey};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use std::sync::Arc;

/// The EndpointSlice [`Reconciler`], keyed by Service.
pub struct EndpointSliceController {
    client: Client,
    informers: Informers,
    slices: Arc<Informer>,
    index: ServiceIndex,
}

/// The Service a managed slice belongs to, read off its labels.
fn service_of_slice(slice: &Value) -> Option<&str> {
    let labels = slice.pointer("/metadata/labels")?;
    (labels.get(SLICE_MANAGED_BY)?.as_str()? == SLICE_CONTROLLER)
        .then(|| labels.get(SERVICE_NAME_LABEL)?.as_str())
        .flatten()
}

impl EndpointSliceController {
    /// A controller writing through `client`, reading pods from `informers` and following the
    /// store for a cache of slices of its own (spawns its task; it ends with the store's
    /// broadcast).
    pub fn new(client: Client, informers: &Informers) -> Self {
        let store = client.state().store.clone();
        let slices = Arc::new(Informer::new(ENDPOINT_SLICES));
        tokio::spawn(
            slices
                .clone()
                .run(store.clone(), Feed::new(store.subscribe(), RESYNC)),
        );
        Self {
            client,
            informers: informers.clone(),
            slices,
            index: ServiceIndex::default(),
        }
    }

    /// The managed slices of the Service `namespace/name` (whatever their owner's uid: a
    /// Service re-created under the same name takes its predecessor's slices over).
    fn managed_slices(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<EndpointSlice>, ControllerError> {
        let mut out = Vec::new();
        for v in self.slices.in_namespace(namespace) {
            if service_of_slice(&v) == Some(name) {
                let s: EndpointSlice = typed(&v)?;
                if is_managed_slice_of(&s, name) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    async fn apply(&self, namespace: &str, plan: slice_plan::Plan) -> Result<(), ApiError> {
        for s in plan.update {
            let v = serde_json::to_value(&s)
                .map_err(|e| ApiError::Internal(format!("cannot encode a slice: {e}")))?;
            self.client.update(ENDPOINT_SLICES, namespace, v).await?;
        }
        for s in plan.create {
            let mut v = serde_json::to_value(&s)
                .map_err(|e| ApiError::Internal(format!("cannot encode a slice: {e}")))?;
            v["apiVersion"] = "discovery.k8s.io/v1".into();
            v["kind"] = "EndpointSlice".into();
            self.client.create(ENDPOINT_SLICES, namespace, v).await?;
        }
        for s in plan.delete {
            let name = s.metadata.name.as_deref().unwrap_or("");
            match self
                .client
                .delete(
                    ENDPOINT_SLICES,
                    namespace,
                    name,
                    Propagation::Background,
                    s.metadata.uid.as_deref(),
                )
                .await
            {
                Ok(()) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for EndpointSliceController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        match event.key.resource.as_str() {
            SERVICES => {
                self.index.observe(event);
                vec![event.key.clone()]
            }
            "pods" => self.index.keys_for_pod_event(event),
            ENDPOINT_SLICES => {
                let mut keys: Vec<ObjectKey> = [&event.value, &event.previous]
                    .into_iter()
                    .flatten()
                    .filter_map(service_of_slice)
                    .map(|s| ObjectKey::new(SERVICES, event.key.namespace.as_str(), s))
                    .collect();
                keys.dedup();
                keys
            }
            _ => Vec::new(),
        }
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        let Some(services) = self.client.list_for_resync(SERVICES).await else {
            return Vec::new();
        };
        self.index.replace_all(&services);
        let mut keys = crate::controllers::owned::keys_of(SERVICES, &services);
        // The Services of managed slices too, so that a Service deleted while cloudcore was
        // down loses its slices even if the garbage collector missed them.
        if let Some(slices) = self.client.list_for_resync(ENDPOINT_SLICES).await {
            for s in &slices {
                if let Some(svc) = service_of_slice(s) {
                    let ns = s
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    keys.push(ObjectKey::new(SERVICES, ns, svc));
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        let revision = self.client.state().store.revision();
        self.informers.pods.synced(revision).await?;
        self.slices.synced(revision).await?;
        let existing = self.managed_slices(&key.namespace, &key.name)?;
        let raw = self.client.get(SERVICES, &key.namespace, &key.name).await?;
        let view = match &raw {
            Some(v) => ServiceView::managed(typed::<Service>(v)?),
            None => None,
        };
        let plan = match view {
            Some(view) => {
                if view.svc.metadata.deletion_timestamp.is_some() {
                    return Ok(Requeue::No);
                }
                let pods = self.informers.pods.in_namespace(&key.namespace);
                let desired = endpoints_of(&view, &pods);
                slice_plan::plan(&view, &desired, existing)
            }
            // Gone, without a selector, or ExternalName: no managed slices.
            None => slice_plan::Plan {
                delete: existing,
                ..Default::default()
            },
        };
        if !plan.is_empty() {
            tracing::debug!(service = %key, create = plan.create.len(), update = plan.update.len(),
                delete = plan.delete.len(), "writing endpoint slices");
            metrics::counter!("skerry_endpointslice_writes_total")
                .increment((plan.create.len() + plan.update.len() + plan.delete.len()) as u64);
        }
        self.apply(&key.namespace, plan).await?;
        Ok(Requeue::No)
    }
}
