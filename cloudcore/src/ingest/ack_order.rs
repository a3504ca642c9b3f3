//! The in-order acknowledgement rule, without I/O.
//!
//! The ingest applies reports with several workers in parallel, so they finish out of order;
//! MQTT 3.1.1 (4.6) wants PUBACKs in the order the messages were received, and a broker may drop
//! a client that acks out of order. And an ack tells the broker to forget the message, so a
//! report is acknowledged only once it is final (durable, ignored or refused).
//!
//! Every message is numbered by the connection that delivered it (its generation) and its
//! receive index on that connection. [`AckOrder::finished`] takes the completions in whatever
//! order they come and returns the messages that may be acknowledged now, in receive order: a
//! message once it and every message received before it on its connection are final.
//!
//! An acknowledgement is valid only on the connection that delivered the message (packet ids
//! are per connection). A completion from a newer connection means the old one is gone: what
//! it left pending is dropped, never acknowledged (the persistent session redelivers it), and
//! completions that still come from it later are dropped too.

use std::collections::BTreeMap;

/// Receive order → acknowledgement order. `T` is what an acknowledgement needs (the message).
#[derive(Debug)]
pub struct AckOrder<T> {
    /// The connection whose messages are acknowledged.
    generation: u64,
    /// Receive index of the next message to acknowledge.
    next: u64,
    /// Final messages waiting for an earlier one.
    waiting: BTreeMap<u64, T>,
}

impl<T> Default for AckOrder<T> {
    fn default() -> Self {
        Self {
            generation: 0,
            next: 0,
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> AckOrder<T> {
    /// Message `index` of connection `generation` is final. Returns the messages to acknowledge
    /// now, in receive order (possibly none, possibly several).
    pub fn finished(&mut self, generation: u64, index: u64, item: T) -> Vec<T> {
        if generation < self.generation {
            return Vec::new(); // delivered on a connection that is gone; the broker redelivers it
        }
        if generation > self.generation {
            self.generation = generation;
            self.next = 0;
            self.waiting.clear();
        }
        if index < self.next {
            return Vec::new(); // already acknowledged: a repeated completion
        }
        self.waiting.insert(index, item);
        let mut out = Vec::new();
        while let Some(item) = self.waiting.remove(&self.next) {
            self.next += 1;
            out.push(item);
        }
        out
    }

    /// How many final messages wait for an earlier one.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_message_waits_for_every_earlier_one() {
        let mut a = AckOrder::default();
        assert_eq!(a.finished(1, 1, "b"), Vec::<&str>::new());
        assert_eq!(a.finished(1, 2, "c"), Vec::<&str>::new());
        assert_eq!(a.finished(1, 0, "a"), vec!["a", "b", "c"]);
        assert_eq!(a.finished(1, 0, "a"), Vec::<&str>::new(), "repeated");
        // A new connection drops what the old one left pending.
        assert_eq!(a.finished(1, 4, "e"), Vec::<&str>::new());
        assert_eq!(a.finished(2, 0, "x"), vec!["x"]);
        assert_eq!(a.finished(1, 3, "d"), Vec::<&str>::new(), "old connection");
        assert_eq!(a.waiting(), 0);
    }

    /// Connections of 0..8 messages each; the completions of all of them arrive in any order
    /// (workers of an old connection may still finish after the new one's), with repeats.
    fn completions() -> impl Strategy<Value = (Vec<u64>, Vec<(u64, u64)>)> {
        proptest::collection::vec(0..8u64, 1..5).prop_flat_map(|sizes| {
            let all: Vec<(u64, u64)> = sizes
                .iter()
                .enumerate()
                .flat_map(|(g, n)| (0..*n).map(move |i| (g as u64 + 1, i)))
                .collect();
            (
                Just(sizes),
                Just(all.clone()).prop_shuffle(),
                proptest::collection::vec(
                    any::<(proptest::sample::Index, proptest::sample::Index)>(),
                    0..4,
                ),
            )
                .prop_map(move |(sizes, mut order, repeats)| {
                    if !all.is_empty() {
                        for (which, at) in repeats {
                            let r = all[which.index(all.len())];
                            order.insert(at.index(order.len() + 1), r);
                        }
                    }
                    (sizes, order)
                })
        })
    }

    proptest! {
        /// Acknowledgements are in receive order per connection, never of a message not yet
        /// final or of one whose predecessor is not, never twice, never of an older connection
        /// after a newer one's; and once the last connection's messages are all final, every
        /// one of them is acknowledged.
        #[test]
        fn acks_follow_receive_order_whatever_the_completion_order((sizes, order) in completions()) {
            let mut a = AckOrder::default();
            let mut done: BTreeSet<(u64, u64)> = BTreeSet::new();
            let mut acked: Vec<(u64, u64)> = Vec::new();
            for (g, i) in order {
                done.insert((g, i));
                for (ag, ai) in a.finished(g, i, (g, i)) {
                    prop_assert!(done.contains(&(ag, ai)), "acked before final");
                    prop_assert!((0..ai).all(|e| done.contains(&(ag, e))), "a predecessor is not final");
                    if let Some(&(pg, pi)) = acked.last() {
                        prop_assert!(ag > pg || (ag == pg && ai == pi + 1), "out of order: {:?} after {:?}", (ag, ai), (pg, pi));
                    } else {
                        prop_assert_eq!(ai, 0);
                    }
                    acked.push((ag, ai));
                }
            }
            let last = sizes.len() as u64;
            let n_last = *sizes.last().unwrap();
            let of_last: Vec<u64> = acked.iter().filter(|(g, _)| *g == last).map(|(_, i)| *i).collect();
            if n_last > 0 {
                prop_assert_eq!(of_last, (0..n_last).collect::<Vec<_>>());
                prop_assert_eq!(a.waiting(), 0);
            }
        }
    }
}
