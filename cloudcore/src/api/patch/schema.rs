//! How the lists of each built-in kind merge: the `patchStrategy`/`patchMergeKey` tags of the
//! Kubernetes Go types, as a static table of field paths.
//!
//! Strategic merge patch and server-side apply need to know, for every list, whether it is a set
//! of maps keyed by one field (containers by `name`), a set of scalars (finalizers), or an atomic
//! value replaced as a whole (the default, e.g. tolerations). Kubernetes reads that from the Go
//! struct tags; a CRD has none, which is why strategic merge is refused for kinds without a
//! schema here. Paths name fields only: list items add no segment, so
//! `spec.containers[0].env` is `spec.containers.env`.

/// How one list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are maps merged by the value of this key (`patchMergeKey`).
    MergeByKey(&'static str),
    /// Items are scalars merged as a set (`patchStrategy:"merge"` on a list of scalars).
    Set,
    /// The list is replaced as a whole (no patch strategy).
    Atomic,
}

use ListStrategy::{Atomic, MergeByKey, Set};

/// Lists of a `PodSpec`, relative to the pod spec (Pods and every workload's pod template).
const POD_SPEC: &[(&str, ListStrategy)] = &[
    ("containers", MergeByKey("name")),
    ("initContainers", MergeByKey("name")),
    ("ephemeralContainers", MergeByKey("name")),
    ("containers.ports", MergeByKey("containerPort")),
    ("initContainers.ports", MergeByKey("containerPort")),
    ("ephemeralContainers.ports", MergeByKey("containerPort")),
    ("containers.env", MergeByKey("name")),
    ("initContainers.env", MergeByKey("name")),
    ("ephemeralContainers.env", MergeByKey("name")),
    ("containers.volumeMounts", MergeByKey("mountPath")),
    ("initContainers.volumeMounts", MergeByKey("mountPath")),
    ("ephemeralContainers.volumeMounts", MergeByKey("mountPath")),
    ("containers.volumeDevices", MergeByKey("devicePath")),
    ("initContainers.volumeDevices", MergeByKey("devicePath")),
    (
        "ephemeralContainers.volumeDevices",
        MergeByKey("devicePath"),
    ),
    ("volumes", MergeByKey("name")),
    ("imagePullSecrets", MergeByKey("name")),
    ("hostAliases", MergeByKey("ip")),
    ("topologySpreadConstraints", MergeByKey("topologyKey")),
    ("schedulingGates", MergeByKey("name")),
    ("resourceClaims", MergeByKey("name")),
];

/// Lists of a Pod outside its spec.
const POD: &[(&str, ListStrategy)] = &[
    ("status.conditions", MergeByKey("type")),
    ("status.podIPs", MergeByKey("ip")),
    ("status.hostIPs", MergeByKey("ip")),
    ("status.resourceClaimStatuses", MergeByKey("name")),
];

const NODE: &[(&str, ListStrategy)] = &[
    ("spec.podCIDRs", Set),
    ("status.conditions", MergeByKey("type")),
    ("status.addresses", MergeByKey("type")),
];

const SERVICE: &[(&str, ListStrategy)] = &[
    ("spec.ports", MergeByKey("port")),
    ("status.conditions", MergeByKey("type")),
];

/// Namespaces and the apps/v1 workloads: only their status conditions merge.
const CONDITIONS: &[(&str, ListStrategy)] = &[("status.conditions", MergeByKey("type"))];

const NONE: &[(&str, ListStrategy)] = &[];

/// The merge schema of one kind.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Where the kind's `PodSpec` is (`spec`, `spec.template.spec`), if it has one.
    pod_spec: Option<&'static str>,
    /// The kind's own lists.
    lists: &'static [(&'static str, ListStrategy)],
}

/// The schema of a built-in kind; `None` for kinds without one (strategic merge is refused).
pub fn schema_for(group: &str, kind: &str) -> Option<Schema> {
    let (pod_spec, lists) = match (group, kind) {
        ("", "Pod") => (Some("spec"), POD),
        ("", "Node") => (None, NODE),
        ("", "Service") => (None, SERVICE),
        ("", "Namespace") => (None, CONDITIONS),
        ("", "ConfigMap" | "Secret" | "Event" | "Endpoints")
        | ("events.k8s.io", "Event")
        | ("discovery.k8s.io", "EndpointSlice")
        | ("networking.k8s.io", "Ingress" | "IngressClass") => (None, NONE),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => (Some("spec.template.spec"), CONDITIONS),
        ("batch", "CronJob") => (Some("spec.jobTemplate.spec.template.spec"), NONE),
        _ => return None,
    };
    Some(Schema { pod_spec, lists })
}

impl Schema {
    /// A schema where every list is atomic: what server-side apply uses for a kind without
    /// merge keys.
    pub fn atomic() -> Schema {
        Schema {
            pod_spec: None,
            lists: NONE,
        }
    }

    /// How the list at `path` (field names from the object root) merges.
    pub fn list_strategy(&self, path: &[String]) -> ListStrategy {
        let joined = path.join(".");
        // Object metadata, at the root or in a pod template.
        if joined == "metadata.ownerReferences" || joined.ends_with(".metadata.ownerReferences") {
            return MergeByKey("uid");
        }
        if joined == "metadata.finalizers" || joined.ends_with(".metadata.finalizers") {
            return Set;
        }
        if let Some(&(_, s)) = self.lists.iter().find(|(p, _)| *p == joined) {
            return s;
        }
        if let Some(rest) = self
            .pod_spec
            .and_then(|root| joined.strip_prefix(root))
            .and_then(|r| r.strip_prefix('.'))
        {
            if let Some(&(_, s)) = POD_SPEC.iter().find(|(p, _)| *p == rest) {
                return s;
            }
        }
        Atomic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn pod_spec_lists_merge_by_their_keys_in_pods_and_templates() {
        let pod = schema_for("", "Pod").unwrap();
        let dep = schema_for("apps", "Deployment").unwrap();
        assert_eq!(
            pod.list_strategy(&path("spec.containers")),
            MergeByKey("name")
        );
        assert_eq!(
            dep.list_strategy(&path("spec.template.spec.containers.env")),
            MergeByKey("name")
        );
        assert_eq!(
            dep.list_strategy(&path("spec.template.spec.containers.ports")),
            MergeByKey("containerPort")
        );
        assert_eq!(pod.list_strategy(&path("spec.tolerations")), Atomic);
        assert_eq!(pod.list_strategy(&path("spec.containers.args")), Atomic);
        assert_eq!(dep.list_strategy(&path("spec.containers")), Atomic);
        assert_eq!(pod.list_strategy(&path("metadata.finalizers")), Set);
        assert_eq!(
            dep.list_strategy(&path("spec.template.metadata.ownerReferences")),
            MergeByKey("uid")
        );
        let svc = schema_for("", "Service").unwrap();
        assert_eq!(svc.list_strategy(&path("spec.ports")), MergeByKey("port"));
    }

    #[test]
    fn kinds_without_a_schema_have_none() {
        assert!(schema_for("example.com", "Widget").is_none());
        assert!(schema_for("", "ConfigMap").is_some());
        assert!(schema_for("apps", "StatefulSet").is_some());
    }
}
