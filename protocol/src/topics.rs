//! The MQTT topic scheme, in one place.
//!
//! Every topic lives under `skerry/v1/nodes/{node}/`, so a broker ACL of the form
//! "client X may publish to `skerry/v1/nodes/X/#`" confines each node to its own reports.
//!
//! - `skerry/v1/nodes/{node}/status`: [`crate::status::NodeStatus`] reports (heartbeats);
//! - `skerry/v1/nodes/{node}/pods/{namespace}/{name}/status`: [`crate::status::PodStatus`] reports;
//! - `skerry/v1/nodes/{node}/pods/{namespace}/{name}/events`: [`crate::events::PodEvents`], the
//!   pod's event series (a topic of their own, so the outbox coalesces them apart from the
//!   pod's status, and a burst of events never replaces a status).
//!
//! Payloads are [`crate::status::StatusReport`]s encoded with [`crate::codec::encode`].

/// Prefix of every topic.
pub const PREFIX: &str = "skerry/v1/nodes";

/// Subscription filter for every node's heartbeat.
pub const NODE_STATUS_FILTER: &str = "skerry/v1/nodes/+/status";

/// Subscription filter for every pod status.
pub const POD_STATUS_FILTER: &str = "skerry/v1/nodes/+/pods/+/+/status";

/// Subscription filter for every pod's events.
pub const POD_EVENTS_FILTER: &str = "skerry/v1/nodes/+/pods/+/+/events";

/// Topic of a node's status.
pub fn node_status(node: &str) -> String {
    format!("{PREFIX}/{node}/status")
}

/// Topic of a pod's status as reported by `node`.
pub fn pod_status(node: &str, namespace: &str, name: &str) -> String {
    format!("{PREFIX}/{node}/pods/{namespace}/{name}/status")
}

/// Topic of a pod's events as reported by `node`.
pub fn pod_events(node: &str, namespace: &str, name: &str) -> String {
    format!("{PREFIX}/{node}/pods/{namespace}/{name}/events")
}

/// The TCP port of MQTT over TLS (IANA), the default of both ends.
pub const MQTTS_PORT: u16 = 8883;

/// Parses a broker URL, `mqtts://host[:port]` (or `ssl://`), into host and port. Shared by the
/// cloud's ingest and the edge's reporter so both accept the same forms. Status goes over TLS
/// only, with the node's certificate as its MQTT identity: a plain `mqtt://` URL is refused
/// with the reason rather than connecting in the clear.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), String> {
    let rest = match url.split_once("://") {
        Some(("mqtts" | "ssl", rest)) => rest,
        Some(("mqtt" | "tcp", _)) => {
            return Err(format!(
                "MQTT url {url:?} is plain MQTT; status reports go over TLS with the node's certificate: use mqtts://HOST:{MQTTS_PORT}"
            ))
        }
        Some((scheme, _)) => {
            return Err(format!(
                "MQTT url {url:?} has scheme {scheme:?}; expected mqtts://HOST:PORT"
            ))
        }
        None => url,
    }
    .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse()
                .map_err(|_| format!("MQTT url {url:?} has an invalid port"))?,
        ),
        _ => (rest, MQTTS_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("MQTT url {url:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// What a topic is about, as parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// A node's status.
    NodeStatus {
        /// Node.
        node: String,
    },
    /// A pod's status.
    PodStatus {
        /// Reporting node.
        node: String,
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A pod's events.
    PodEvents {
        /// Reporting node.
        node: String,
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

impl Topic {
    /// The node the topic belongs to (the only one that may publish on it).
    pub fn node(&self) -> &str {
        match self {
            Topic::NodeStatus { node }
            | Topic::PodStatus { node, .. }
            | Topic::PodEvents { node, .. } => node,
        }
    }
}

/// Parses a topic name; `None` for anything outside the scheme.
pub fn parse(topic: &str) -> Option<Topic> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [node, "status"] => Some(Topic::NodeStatus {
            node: node.to_string(),
        }),
        [node, "pods", ns, name, "status"] => Some(Topic::PodStatus {
            node: node.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        [node, "pods", ns, name, "events"] => Some(Topic::PodEvents {
            node: node.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(
            parse(&node_status("n1")),
            Some(Topic::NodeStatus { node: "n1".into() })
        );
        assert_eq!(
            parse(&pod_status("n1", "default", "web")),
            Some(Topic::PodStatus {
                node: "n1".into(),
                namespace: "default".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            parse(&pod_events("n1", "default", "web")),
            Some(Topic::PodEvents {
                node: "n1".into(),
                namespace: "default".into(),
                name: "web".into()
            })
        );
    }

    #[test]
    fn broker_urls_must_be_tls() {
        assert_eq!(
            parse_broker_url("mqtts://cloud.example:1884"),
            Ok(("cloud.example".into(), 1884))
        );
        assert_eq!(
            parse_broker_url("mqtts://cloud.example"),
            Ok(("cloud.example".into(), MQTTS_PORT))
        );
        assert_eq!(parse_broker_url("ssl://[::1]:9"), Ok(("::1".into(), 9)));
        assert_eq!(parse_broker_url("[::1]"), Ok(("::1".into(), MQTTS_PORT)));
        for bad in [
            "mqtt://h:1883",
            "tcp://h:1",
            "http://h:1",
            "mqtts://:1",
            "mqtts://h:x",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
        assert!(parse_broker_url("mqtt://h:1883")
            .unwrap_err()
            .contains("mqtts://"));
    }

    #[test]
    fn foreign_topics_are_ignored() {
        for t in [
            "skerry/v1/nodes//status",
            "skerry/v2/nodes/n1/status",
            "skerry/v1/nodes/n1/pods/a/status",
            "other",
            "skerry/v1/nodes/n1/status/extra",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
