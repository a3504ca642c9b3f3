//! The embedded MQTT broker, so that the quickstart needs nothing but cloudcore.
//!
//! rumqttd's `Broker::start` blocks forever and has no shutdown handle, so it runs on a thread of
//! its own for the life of the process. Production sites that already run a broker point
//! `--mqtt-url` at it instead (mosquitto is tested), and this module is not used; reports are
//! authenticated end to end by their MAC either way (see `protocol::status::seal`), and an
//! external broker should be configured with the same logins (node name, derived password).

use crate::pki::Pki;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Starts rumqttd listening for MQTT 3.1.1 on `listen`, on a thread of its own.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr, pki: Arc<Pki>) -> anyhow::Result<BrokerHealth> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    // Every login is checked against the PKI: cloudcore's ingest with its secret, a node with
    // the password derived from its report key and its own client id; revoked nodes are out.
    let refused_log = Arc::new(crate::log_limit::SharedLogLimiter::new(
        std::time::Duration::from_secs(1),
    ));
    let auth: rumqttd::AuthHandler = Arc::new(move |client_id, user, pass| {
        let allowed = pki.mqtt_login_allowed(&client_id, &user, &pass);
        if !allowed {
            metrics::counter!("skerry_broker_logins_refused_total").increment(1);
            if let Some(held_back) = refused_log.allow(user.chars().take(64).collect::<String>()) {
                tracing::warn!(%client_id, %user, held_back, "MQTT login refused: unknown or revoked node, wrong password, or a client id that is not the node's");
            }
        }
        Box::pin(async move { allowed })
    });
    let server = ServerSettings {
        name: "skerry-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: Some(auth),
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let health = BrokerHealth::default();
    let stopped = health.stopped.clone();
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            // rumqttd cannot be restarted in place (its listeners and router threads stay
            // behind): a broker that stops makes /readyz fail, naming it, for the operator or
            // the service manager's health check to act on.
            let run = std::panic::AssertUnwindSafe(|| broker.start().map_err(|e| e.to_string()));
            let why = match std::panic::catch_unwind(run) {
                Ok(Ok(())) => "returned".to_string(),
                Ok(Err(e)) => e,
                Err(_) => "panicked".to_string(),
            };
            tracing::error!(reason = %why, "embedded MQTT broker stopped");
            *stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        })?;
    // No readiness probe here: a bare TCP probe makes rumqttd log an error, and the ingest
    // reconnects until the broker accepts anyway. A port that is taken fails `start` above, which
    // the thread logs and the health check reports.
    Ok(health)
}

/// Whether the embedded broker's thread is still running, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct BrokerHealth {
    stopped: Arc<std::sync::Mutex<Option<String>>>,
}

impl BrokerHealth {
    /// The check for the health endpoints.
    pub fn check(&self) -> wire::supervisor::Check {
        wire::supervisor::Check {
            name: "mqtt-broker".into(),
            failure: self
                .stopped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map(|why| format!("stopped: {why}")),
        }
    }
}

/// Without the `embedded-broker` feature there is no broker to start.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(listen: SocketAddr, _pki: Arc<Pki>) -> anyhow::Result<BrokerHealth> {
    anyhow::bail!("this cloudcore was built without the embedded broker; pass --mqtt-url to use an external one (wanted to listen on {listen})")
}
