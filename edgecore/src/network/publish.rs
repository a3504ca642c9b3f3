//! Keeps the [`ServiceView`] current from its two sources: the cache (Services, EndpointSlices,
//! the network settings, the node's Ingresses and their TLS Secrets, after every applied batch) and the pod workers (the readiness of
//! the node's own pods, the moment the prober decides it).
//!
//! The readiness path is why routing reacts to a failing local pod within one probe period
//! with no cloud: [`ReadinessTap`] sits in front of the status outbox and reads the `Ready`
//! condition of every status the workers report, before anything travels.

use super::view::{Key, ServiceView, ViewSender};
use crate::cache::DesiredState;
use crate::pods::StatusSink;
use protocol::status::{PodPhase, PodStatus};
use std::net::IpAddr;
use std::sync::Arc;

/// A new view sender holding an empty view.
pub fn channel() -> (ViewSender, super::view::ViewReceiver) {
    tokio::sync::watch::channel(Arc::new(ServiceView::default()))
}

/// Replaces the cached part of the view (Services, slices, settings) with what `cache` holds,
/// keeping the local readiness; consumers are woken only when something changed.
pub fn refresh_from_cache(view: &ViewSender, cache: &dyn DesiredState) {
    let set = cache.network();
    view.send_if_modified(|current| {
        let mut next = ServiceView {
            network: set.network.clone(),
            services: Default::default(),
            slices: Default::default(),
            local_ready: current.local_ready.clone(),
            overlay: set.overlay.clone(),
            local_ips: current.local_ips.clone(),
            ingresses: set.ingresses.clone(),
            tls_secrets: Default::default(),
        };
        if let Some(ing) = &set.ingresses {
            let wanted = ing.secret_refs();
            if !wanted.is_empty() {
                let configs = cache.configs();
                next.tls_secrets = wanted
                    .into_iter()
                    .filter_map(|(ns, name)| {
                        let s = configs.secret(&ns, &name)?.clone();
                        Some(((ns, name), s))
                    })
                    .collect();
            }
        }
        for s in &set.services {
            next.services
                .insert((s.namespace.clone(), s.name.clone()), s.clone());
        }
        for s in &set.slices {
            next.slices
                .insert((s.namespace.clone(), s.name.clone()), s.clone());
        }
        if **current == next {
            return false;
        }
        *current = Arc::new(next);
        true
    });
}

/// A [`StatusSink`] that records each local pod's readiness in the view, then hands the status
/// on.
pub struct ReadinessTap {
    inner: Arc<dyn StatusSink>,
    view: ViewSender,
}

impl ReadinessTap {
    /// Taps `inner`, publishing into `view`.
    pub fn new(inner: Arc<dyn StatusSink>, view: ViewSender) -> Self {
        Self { inner, view }
    }

    /// Records a local pod's readiness and address (`None`: the pod is gone).
    fn set(&self, key: Key, ready: Option<bool>, ip: Option<IpAddr>) {
        self.view.send_if_modified(|current| {
            if current.local_ready.get(&key).copied() == ready
                && current.local_ips.get(&key).copied() == ip
            {
                return false;
            }
            let mut next = (**current).clone();
            match ready {
                Some(r) => next.local_ready.insert(key.clone(), r),
                None => next.local_ready.remove(&key),
            };
            match ip {
                Some(ip) => next.local_ips.insert(key, ip),
                None => next.local_ips.remove(&key),
            };
            *current = Arc::new(next);
            true
        });
    }
}

/// Whether a reported status says the pod is ready: its `Ready` condition, and not removed.
pub fn is_ready(status: &PodStatus) -> bool {
    !status.removed
        && status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status)
}

impl StatusSink for ReadinessTap {
    fn pod_status(&self, status: PodStatus) {
        let key = (status.namespace.clone(), status.name.clone());
        // A pod that stopped (or was removed) holds its address no longer: packets for it
        // are not admitted, though the runtime may not have freed it yet.
        let ip = match status.removed
            || matches!(status.phase, PodPhase::Succeeded | PodPhase::Failed)
        {
            true => None,
            false => status.pod_ip.parse().ok(),
        };
        self.set(key, Some(is_ready(&status)), ip);
        self.inner.pod_status(status);
    }

    fn pod_forgotten(&self, namespace: &str, name: &str) {
        self.set((namespace.to_string(), name.to_string()), None, None);
        self.inner.pod_forgotten(namespace, name);
    }

    fn pod_event(&self, pod: &crate::pods::PodRef, occ: protocol::events::Occurrence) {
        self.inner.pod_event(pod, occ);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::status::PodCondition;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl StatusSink for Seen {
        fn pod_status(&self, status: PodStatus) {
            self.0.lock().unwrap().push(status.name);
        }
        fn pod_forgotten(&self, _: &str, name: &str) {
            self.0.lock().unwrap().push(format!("-{name}"));
        }
        fn pod_event(&self, _: &crate::pods::PodRef, occ: protocol::events::Occurrence) {
            self.0.lock().unwrap().push(format!("!{}", occ.reason));
        }
    }

    fn status(name: &str, ready: bool) -> PodStatus {
        PodStatus {
            node: "n1".into(),
            namespace: "default".into(),
            name: name.into(),
            uid: "u".into(),
            phase: PodPhase::Running,
            conditions: vec![PodCondition {
                kind: "Ready".into(),
                status: ready,
                reason: String::new(),
                message: String::new(),
                last_transition_ms: 0,
            }],
            containers: vec![],
            pod_ip: "10.244.0.5".into(),
            host_ip: "192.0.2.1".into(),
            start_time_ms: 0,
            reason: String::new(),
            message: String::new(),
            removed: false,
            init_containers: Vec::new(),
        }
    }

    #[test]
    fn the_tap_publishes_readiness_changes_and_passes_every_status_on() {
        let (tx, mut rx) = channel();
        let seen = Arc::new(Seen::default());
        let tap = ReadinessTap::new(seen.clone(), tx);
        let key = ("default".to_string(), "web-1".to_string());
        tap.pod_status(status("web-1", true));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().local_ready.get(&key), Some(&true));
        tap.pod_status(status("web-1", true));
        assert!(
            !rx.has_changed().unwrap(),
            "the same readiness wakes nobody"
        );
        tap.pod_status(status("web-1", false));
        assert_eq!(rx.borrow_and_update().local_ready.get(&key), Some(&false));
        assert_eq!(
            rx.borrow().local_ips.get(&key),
            Some(&"10.244.0.5".parse().unwrap()),
            "the pod's address is the node's to host"
        );
        let mut stopped = status("web-1", false);
        stopped.phase = PodPhase::Succeeded;
        tap.pod_status(stopped);
        assert!(
            rx.borrow_and_update().local_ips.is_empty(),
            "a stopped pod hosts nothing"
        );
        tap.pod_forgotten("default", "web-1");
        assert!(rx.borrow_and_update().local_ready.is_empty());
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["web-1", "web-1", "web-1", "web-1", "-web-1"]
        );
    }
}
