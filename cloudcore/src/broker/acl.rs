//! What a node may do on the embedded broker: publish its own reports, nothing else.
//!
//! Pure rules, no I/O, so that they can be checked exhaustively. The broker applies them to
//! every packet of a session whose identity (the node) came from its verified certificate.

use protocol::topics::{self, Topic};

/// Why a packet is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A publish outside the publisher's own topics (or outside the scheme).
    #[error("node {node} may publish only its own reports under {prefix}/{node}/, not to {topic:?}", prefix = topics::PREFIX)]
    ForeignTopic {
        /// The publisher.
        node: String,
        /// The topic it named (cut to 128 characters).
        topic: String,
    },
    /// A retained message: the broker keeps nothing for later subscribers.
    #[error("retained messages are not accepted (the broker keeps no messages)")]
    Retain,
    /// QoS 2: status reports are idempotent, so QoS 1 is all the channel offers.
    #[error("QoS 2 is not accepted; publish status with QoS 1")]
    ExactlyOnce,
}

/// Whether `node` may publish to `topic` with these flags; on success, what the topic is about.
pub fn may_publish(
    node: &str,
    topic: &str,
    qos: rumqttc::QoS,
    retain: bool,
) -> Result<Topic, Denied> {
    if retain {
        return Err(Denied::Retain);
    }
    if qos == rumqttc::QoS::ExactlyOnce {
        return Err(Denied::ExactlyOnce);
    }
    let foreign = || Denied::ForeignTopic {
        node: node.to_string(),
        topic: topic.chars().take(128).collect(),
    };
    let parsed = topics::parse(topic).ok_or_else(foreign)?;
    if parsed.node() == node {
        Ok(parsed)
    } else {
        Err(foreign())
    }
}

/// Whether a node may subscribe to `filter`: never. Nodes get their desired state over the
/// QUIC link; on MQTT they only report, so one node can read nothing of another's.
pub fn may_subscribe(_node: &str, _filter: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rumqttc::QoS;

    #[test]
    fn a_node_publishes_its_own_reports_only() {
        let own = topics::pod_status("a", "default", "web");
        assert!(may_publish("a", &own, QoS::AtLeastOnce, false).is_ok());
        assert!(may_publish("a", &topics::node_status("a"), QoS::AtMostOnce, false).is_ok());
        for topic in [
            topics::node_status("b"),
            topics::pod_status("b", "default", "web"),
            "skerry/v1/nodes/a".to_string(),
            "skerry/v1/nodes/a/other".to_string(),
            "skerry/v1/nodes/+/status".to_string(),
            "$SYS/broker".to_string(),
        ] {
            assert!(
                matches!(
                    may_publish("a", &topic, QoS::AtLeastOnce, false),
                    Err(Denied::ForeignTopic { .. })
                ),
                "{topic}"
            );
        }
        assert_eq!(
            may_publish("a", &own, QoS::AtLeastOnce, true),
            Err(Denied::Retain)
        );
        assert_eq!(
            may_publish("a", &own, QoS::ExactlyOnce, false),
            Err(Denied::ExactlyOnce)
        );
        assert!(!may_subscribe("a", &topics::node_status("a")));
        assert!(!may_subscribe("a", "#"));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?"
    }

    proptest! {
        /// Whatever the topic, a publish is allowed only if it is in the scheme and names the
        /// publisher as its node.
        #[test]
        fn allowed_publishes_name_the_publisher(
            node in name(),
            other in name(),
            ns in name(),
            pod in name(),
            noise in "[a-z0-9/+#$]{0,30}",
            pick in 0usize..6,
        ) {
            let topic = match pick {
                0 => topics::node_status(&other),
                1 => topics::pod_status(&other, &ns, &pod),
                2 => format!("{}/{other}/{noise}", topics::PREFIX),
                3 => noise.clone(),
                4 => topics::pod_events(&other, &ns, &pod),
                _ => topics::pod_status(&node, &ns, &pod),
            };
            let verdict = may_publish(&node, &topic, QoS::AtLeastOnce, false);
            let expected = topics::parse(&topic).is_some_and(|t| t.node() == node);
            prop_assert_eq!(verdict.is_ok(), expected, "{}", topic);
        }
    }
}
