//! Whether the edge still hears the cloud: the rule that finds a link cut in the cloud → edge
//! direction long before QUIC's idle timeout.
//!
//! A one-way cut is the cruel case for an edge: it can still send, so its packets keep the hub's
//! side of the connection alive, yet nothing the hub sends (desired state, acks) arrives. QUIC
//! only gives up after the idle timeout (a minute, so that a few lost keep-alives on a poor
//! link do not end a healthy session), and the edge would stay that long on a link that
//! carries nothing to it. The connection's own counters tell sooner: every ack-eliciting packet
//! the edge sends (a keep-alive PING, stream data) must be answered by the hub's ACK within a
//! round trip, or a few probe timeouts when packets are lost. So: once the edge has sent
//! something that asks for an answer and no datagram at all has arrived for `deaf_after`, the
//! edge is deaf. An idle link where the edge sends nothing is never judged: nothing is owed.
//!
//! No I/O and no clock of its own: the link samples the connection's counters about once a
//! second and feeds them in with the time, which keeps the rule testable under any
//! interleaving (see the property tests).

use std::time::Duration;

/// The verdict after one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Something was heard since the last request for an answer, or nothing is owed.
    Hearing,
    /// Requests for an answer went unanswered for this long: the cloud cannot be heard.
    Deaf {
        /// Time since the first unanswered ack-eliciting send.
        unanswered_for: Duration,
    },
}

/// Counters of the connection at one moment (both only ever grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Datagrams received from the hub.
    pub received: u64,
    /// Ack-eliciting frames sent (PING, STREAM, DATAGRAM).
    pub ack_eliciting_sent: u64,
}

impl Sample {
    /// The counters of a quinn connection.
    pub fn of(stats: &quinn::ConnectionStats) -> Self {
        let f = &stats.frame_tx;
        Self {
            received: stats.udp_rx.datagrams,
            ack_eliciting_sent: f.ping + f.stream + f.datagram,
        }
    }
}

/// The hearing rule for one connection. Times are milliseconds on any monotonic clock.
#[derive(Debug, Clone)]
pub struct Hearing {
    deaf_after: Duration,
    last: Sample,
    /// When the oldest ack-eliciting send not followed by any receive was first seen.
    unanswered_since_ms: Option<u64>,
}

impl Hearing {
    /// A rule that judges deaf after `deaf_after` without an answer, starting from `first`.
    pub fn new(deaf_after: Duration, first: Sample) -> Self {
        Self {
            deaf_after,
            last: first,
            unanswered_since_ms: None,
        }
    }

    /// Takes a sample at `now_ms` and says whether the cloud is still heard.
    pub fn observe(&mut self, now_ms: u64, sample: Sample) -> Verdict {
        let received = sample.received > self.last.received;
        let sent = sample.ack_eliciting_sent > self.last.ack_eliciting_sent;
        self.last = Sample {
            received: sample.received.max(self.last.received),
            ack_eliciting_sent: sample.ack_eliciting_sent.max(self.last.ack_eliciting_sent),
        };
        if received {
            // Within one sample the order of a send and a receive is unknown; counting the
            // receive as the answer can only delay a verdict by one keep-alive, never invent one.
            self.unanswered_since_ms = None;
        } else if sent && self.unanswered_since_ms.is_none() {
            self.unanswered_since_ms = Some(now_ms);
        }
        match self.unanswered_since_ms {
            Some(since) if now_ms.saturating_sub(since) >= millis(self.deaf_after) => {
                Verdict::Deaf {
                    unanswered_for: Duration::from_millis(now_ms - since),
                }
            }
            _ => Verdict::Hearing,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEAF_AFTER: Duration = Duration::from_secs(10);

    #[test]
    fn an_unanswered_keepalive_makes_the_edge_deaf_after_the_deadline() {
        let mut h = Hearing::new(DEAF_AFTER, Sample::default());
        let ping = Sample {
            received: 0,
            ack_eliciting_sent: 1,
        };
        assert_eq!(h.observe(1_000, ping), Verdict::Hearing);
        assert_eq!(h.observe(10_999, ping), Verdict::Hearing);
        assert_eq!(
            h.observe(11_000, ping),
            Verdict::Deaf {
                unanswered_for: DEAF_AFTER
            }
        );
        // Probes sent meanwhile do not restart the clock.
        let probes = Sample {
            received: 0,
            ack_eliciting_sent: 5,
        };
        assert!(matches!(h.observe(12_000, probes), Verdict::Deaf { .. }));
        // One datagram from the hub: heard again.
        let answer = Sample {
            received: 1,
            ack_eliciting_sent: 5,
        };
        assert_eq!(h.observe(13_000, answer), Verdict::Hearing);
    }

    #[test]
    fn an_idle_link_that_owes_nothing_is_never_deaf() {
        let mut h = Hearing::new(DEAF_AFTER, Sample::default());
        for t in 0..1_000 {
            assert_eq!(h.observe(t * 1_000, Sample::default()), Verdict::Hearing);
        }
    }

    proptest! {
        /// Whatever the interleaving of sends and receives, the rule says Deaf exactly when the
        /// first send not followed by a receive is at least `deaf_after` old.
        #[test]
        fn deaf_exactly_when_a_send_went_unanswered_too_long(
            steps in proptest::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let mut h = Hearing::new(DEAF_AFTER, Sample::default());
            let (mut now, mut sample) = (0u64, Sample::default());
            // The model: the time of the first send since the last receive.
            let mut since: Option<u64> = None;
            for (dt, send, receive) in steps {
                now += dt;
                if send { sample.ack_eliciting_sent += 1; }
                if receive { sample.received += 1; }
                if receive { since = None; } else if send && since.is_none() { since = Some(now); }
                let expect_deaf = since.is_some_and(|s| now - s >= 10_000);
                let verdict = h.observe(now, sample);
                prop_assert_eq!(matches!(verdict, Verdict::Deaf { .. }), expect_deaf);
                if let Verdict::Deaf { unanswered_for } = verdict {
                    prop_assert!(unanswered_for >= DEAF_AFTER);
                }
            }
        }

        /// A sample that goes back (a counter read from a new connection by mistake) never
        /// produces a verdict of its own: counters are taken as high-water marks.
        #[test]
        fn counters_going_back_change_nothing(back in 0u64..5) {
            let mut h = Hearing::new(DEAF_AFTER, Sample { received: 5, ack_eliciting_sent: 5 });
            let verdict = h.observe(60_000, Sample { received: back, ack_eliciting_sent: back });
            prop_assert_eq!(verdict, Verdict::Hearing);
        }
    }
}
