//! Whether a node acknowledges what the hub sends it in time: the hub's side of finding a
//! one-way link.
//!
//! An edge whose link is cut in one direction still looks alive from somewhere: cut towards the
//! edge, its keep-alives and reports still arrive; cut towards the cloud, the hub's packets still
//! arrive at the edge. Either way the desired state the hub sends is not acknowledged, because
//! either the batch or the ack is lost. QUIC retransmits both for as long as the connection
//! lives, so a batch that a healthy link acknowledges within a round trip (plus the edge's
//! durable write) staying unacknowledged for `limit` means the node does not get what it is
//! sent. The hub then sets the node's `SyncLagging` condition, which taints it `NoSchedule`, and
//! clears it once the node has caught up.
//!
//! An idle link owes nothing and is never judged here; a node that stops being heard at all is
//! the liveness rule's (see [`crate::liveness`]).
//!
//! A pure state machine: the session feeds it sends, acks and the time, and acts on the
//! transitions it returns.

use std::collections::VecDeque;

/// Sends remembered at most; past this, the newest entry takes the newer revision (keeping its
/// earlier send time, so a lag is never found later than it began).
const MAX_PENDING: usize = 1024;

/// A change the hub should make to the node's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The node has not acknowledged `revision`, sent `for_ms` ago.
    Lagging {
        /// The oldest revision sent and not acknowledged.
        revision: u64,
        /// How long ago it was sent.
        for_ms: u64,
        /// The highest revision the node acknowledged.
        acked: u64,
    },
    /// Everything sent is acknowledged (the first time in a session, or after a lag).
    Current,
    /// The node closed its link because it heard nothing from the cloud (what it said). Not
    /// produced by [`AckLag`]: the session finds it in how its connection ended.
    EdgeDeaf(String),
}

/// The ack-lag rule of one session. Times are milliseconds on any clock that does not go back.
#[derive(Debug, Clone)]
pub struct AckLag {
    limit_ms: u64,
    acked: u64,
    /// (revision, sent at) of each batch sent and not yet acknowledged, oldest first.
    pending: VecDeque<(u64, u64)>,
    /// What the condition was last set to in this session (`None`: not yet).
    lagging: Option<bool>,
}

impl AckLag {
    /// A session whose node has acknowledged `acked`, judged lagging after `limit_ms`.
    pub fn new(limit_ms: u64, acked: u64) -> Self {
        Self {
            limit_ms,
            acked,
            pending: VecDeque::new(),
            lagging: None,
        }
    }

    /// A batch up to `revision` was sent at `now_ms`.
    pub fn sent(&mut self, revision: u64, now_ms: u64) {
        if revision <= self.acked || self.pending.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            if let Some(last) = self.pending.back_mut() {
                last.0 = revision;
            }
            return;
        }
        self.pending.push_back((revision, now_ms));
    }

    /// The node acknowledged everything up to `revision`.
    pub fn acked(&mut self, revision: u64) {
        self.acked = self.acked.max(revision);
        while self.pending.front().is_some_and(|(r, _)| *r <= self.acked) {
            self.pending.pop_front();
        }
    }

    /// The condition change due at `now_ms`, if any.
    pub fn check(&mut self, now_ms: u64) -> Option<Transition> {
        let lag = self
            .pending
            .front()
            .map(|(r, at)| (*r, now_ms.saturating_sub(*at)));
        match lag {
            Some((revision, for_ms)) if for_ms >= self.limit_ms => {
                if self.lagging == Some(true) {
                    return None;
                }
                self.lagging = Some(true);
                Some(Transition::Lagging {
                    revision,
                    for_ms,
                    acked: self.acked,
                })
            }
            None if self.lagging != Some(false) => {
                self.lagging = Some(false);
                Some(Transition::Current)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_unacknowledged_batch_turns_lagging_after_the_limit_and_back_when_acked() {
        let mut lag = AckLag::new(10_000, 5);
        assert_eq!(
            lag.check(0),
            Some(Transition::Current),
            "caught up at start"
        );
        assert_eq!(lag.check(1), None);
        lag.sent(7, 1_000);
        lag.sent(9, 2_000);
        assert_eq!(lag.check(10_999), None);
        assert_eq!(
            lag.check(11_000),
            Some(Transition::Lagging {
                revision: 7,
                for_ms: 10_000,
                acked: 5
            })
        );
        assert_eq!(lag.check(12_000), None, "said once");
        lag.acked(7);
        assert_eq!(
            lag.check(12_500),
            None,
            "revision 9 is still owed, and late"
        );
        lag.acked(9);
        assert_eq!(lag.check(13_000), Some(Transition::Current));
    }

    #[test]
    fn a_batch_acknowledged_in_time_never_lags() {
        let mut lag = AckLag::new(10_000, 0);
        lag.check(0);
        for i in 1..100u64 {
            lag.sent(i, i * 1_000);
            lag.acked(i);
            assert_eq!(lag.check(i * 1_000 + 20_000), None);
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Send(u64),
        Ack(u64),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u64..50).prop_map(Step::Send),
            (0u64..50).prop_map(Step::Ack),
            (0u64..8_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Under any order of sends, acks (duplicated, late, out of order) and waits, the
        /// transitions alternate, and `Lagging` is reported exactly when the oldest revision
        /// sent and not acknowledged has waited past the limit.
        #[test]
        fn lagging_exactly_when_the_oldest_unacked_send_is_too_old(
            steps in proptest::collection::vec(step(), 1..300)
        ) {
            let limit = 10_000;
            let mut lag = AckLag::new(limit, 0);
            let (mut now, mut sent_max, mut acked) = (0u64, 0u64, 0u64);
            // The model: the first send time of each revision above what is acked.
            let mut sends: Vec<(u64, u64)> = Vec::new();
            let mut state: Option<bool> = None;
            for s in steps {
                match s {
                    Step::Send(d) => {
                        let rev = sent_max + d;
                        sent_max = rev;
                        lag.sent(rev, now);
                        sends.push((rev, now));
                    }
                    Step::Ack(r) => {
                        // An edge never acks beyond what it was sent.
                        let r = r.min(sent_max);
                        acked = acked.max(r);
                        lag.acked(r);
                    }
                    Step::Wait(dt) => now += dt,
                }
                let oldest = sends.iter().filter(|(r, _)| *r > acked).map(|(_, t)| *t).min();
                let should_lag = oldest.is_some_and(|t| now - t >= limit);
                match lag.check(now) {
                    Some(Transition::Lagging { for_ms, acked: a, .. }) => {
                        prop_assert!(should_lag);
                        prop_assert!(for_ms >= limit);
                        prop_assert_eq!(a, acked);
                        prop_assert_ne!(state, Some(true));
                        state = Some(true);
                    }
                    Some(Transition::Current) => {
                        prop_assert!(oldest.is_none());
                        prop_assert_ne!(state, Some(false));
                        state = Some(false);
                    }
                    Some(Transition::EdgeDeaf(_)) => prop_assert!(false, "never from AckLag"),
                    None => {
                        if should_lag { prop_assert_eq!(state, Some(true)); }
                        if oldest.is_none() { prop_assert_eq!(state, Some(false)); }
                    }
                }
            }
        }
    }
}
