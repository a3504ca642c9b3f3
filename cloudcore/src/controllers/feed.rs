//! Following the store: its change broadcast, with a relist whenever the broadcast may have
//! lost something and at a fixed period (client-go's informer with its resync period, reduced
//! to what a level-triggered loop needs).
//!
//! Both loops that follow the store use this: the controller [runner](super::runner), which
//! maps events to keys and reconciles them, and the [scheduler](crate::scheduler), which
//! keeps a cache and a queue of its own. What they share is only this: take each event in
//! order; when the receiver lagged (events were dropped) or the period elapsed, rebuild from
//! a full listing ([`FeedItem::Resync`]), since a lost event must only delay work, never lose
//! it. What a resync lists, and what an event means, is the caller's.
//!
//! Time is tokio's ([`tokio::time::Instant`]), so tests drive a feed under
//! `tokio::time::pause()`.

use crate::store::Event;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;

/// What the caller takes in next.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A change, in the order the store announced it.
    Event(Event),
    /// Rebuild from full listings: at the start, when the period elapsed, or after the
    /// broadcast lagged. Events after this one follow on from it (older ones may still come,
    /// and are already in the listing).
    Resync,
}

/// A store broadcast followed with periodic and lag-triggered resyncs.
#[derive(Debug)]
pub struct Feed {
    events: broadcast::Receiver<Event>,
    period: Duration,
    /// When the next [`FeedItem::Resync`] is due.
    resync_at: Instant,
    closed: bool,
}

impl Feed {
    /// Follows `events`, resyncing every `period`; the first item is a [`FeedItem::Resync`].
    pub fn new(events: broadcast::Receiver<Event>, period: Duration) -> Self {
        Self {
            events,
            period,
            resync_at: Instant::now(),
            closed: false,
        }
    }

    /// Whether the broadcast closed (its sender is gone): no item comes any more.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// When the next resync is due, if nothing lags before.
    pub fn resync_at(&self) -> Instant {
        self.resync_at
    }

    /// Brings the next resync forward (or back) to `after` from now: a resync that failed
    /// asks for another one soon.
    pub fn resync_in(&mut self, after: Duration) {
        self.resync_at = Instant::now() + after;
    }

    /// The next item if one is there without waiting: a due resync first, then the events
    /// already announced. `None` when nothing is, or when the broadcast closed.
    pub fn try_next(&mut self) -> Option<FeedItem> {
        if self.closed {
            return None;
        }
        let now = Instant::now();
        if now >= self.resync_at {
            return Some(self.resync(now));
        }
        match self.events.try_recv() {
            Ok(ev) => Some(FeedItem::Event(ev)),
            Err(TryRecvError::Lagged(_)) => Some(self.resync(now)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => {
                self.closed = true;
                None
            }
        }
    }

    /// The next item, waiting for an event or for the resync period; `None` once the
    /// broadcast closed. Cancel-safe: dropped unfinished (in a `select!`), it loses nothing.
    pub async fn next(&mut self) -> Option<FeedItem> {
        if let Some(item) = self.try_next() {
            return Some(item);
        }
        if self.closed {
            return None;
        }
        tokio::select! {
            r = self.events.recv() => match r {
                Ok(ev) => Some(FeedItem::Event(ev)),
                Err(RecvError::Lagged(_)) => Some(self.resync(Instant::now())),
                Err(RecvError::Closed) => {
                    self.closed = true;
                    None
                }
            },
            _ = tokio::time::sleep_until(self.resync_at) => Some(self.resync(Instant::now())),
        }
    }

    fn resync(&mut self, now: Instant) -> FeedItem {
        self.resync_at = now + self.period;
        FeedItem::Resync
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectKey;

    fn event(revision: u64) -> Event {
        Event {
            revision,
            key: ObjectKey::new("pods", "default", format!("p{revision}")),
            value: None,
            previous: None,
            shards: vec![],
        }
    }

    fn revision(item: Option<FeedItem>) -> Option<u64> {
        match item {
            Some(FeedItem::Event(ev)) => Some(ev.revision),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn is_resync(item: &Option<FeedItem>) -> bool {
        matches!(item, Some(FeedItem::Resync))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn starts_with_a_resync_then_yields_events_in_order() {
        let (tx, rx) = broadcast::channel(16);
        let mut feed = Feed::new(rx, HOUR);
        for r in 1..=3 {
            tx.send(event(r)).unwrap();
        }
        assert!(
            is_resync(&feed.try_next()),
            "the first item lists everything"
        );
        assert_eq!(revision(feed.try_next()), Some(1));
        assert_eq!(revision(feed.next().await), Some(2));
        assert_eq!(revision(feed.try_next()), Some(3));
        assert!(feed.try_next().is_none(), "nothing more without waiting");
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(event(4)).unwrap();
            tx
        });
        assert_eq!(
            revision(feed.next().await),
            Some(4),
            "next waits for the event"
        );
        drop(sender.await.unwrap());
        assert!(feed.next().await.is_none(), "closed");
        assert!(feed.is_closed());
        assert!(feed.try_next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagged_receiver_resyncs_then_follows_on() {
        let (tx, rx) = broadcast::channel(4);
        let mut feed = Feed::new(rx, HOUR);
        assert!(is_resync(&feed.try_next()));
        for r in 1..=10 {
            tx.send(event(r)).unwrap();
        }
        assert!(is_resync(&feed.try_next()), "dropped events: list again");
        // The oldest retained events follow; they are older than the listing, not lost.
        let rest: Vec<u64> = std::iter::from_fn(|| feed.try_next())
            .map(|i| revision(Some(i)).unwrap())
            .collect();
        assert_eq!(rest, vec![7, 8, 9, 10]);
        // The same through the waiting path.
        for r in 11..=20 {
            tx.send(event(r)).unwrap();
        }
        assert!(is_resync(&feed.next().await));
        assert_eq!(revision(feed.next().await), Some(17));
        // A lag-triggered resync restarts the period.
        assert_eq!(feed.resync_at(), Instant::now() + HOUR);
    }

    #[tokio::test(start_paused = true)]
    async fn the_period_brings_a_resync_with_or_without_events() {
        let period = Duration::from_secs(10);
        let (tx, rx) = broadcast::channel(16);
        let mut feed = Feed::new(rx, period);
        let start = Instant::now();
        assert!(is_resync(&feed.next().await));
        // No events: next waits for the period.
        assert!(is_resync(&feed.next().await));
        assert_eq!(Instant::now() - start, period);
        // Events in between come first, in order, and the resync still comes at its time.
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(event(1)).unwrap();
        assert_eq!(revision(feed.next().await), Some(1));
        assert!(is_resync(&feed.next().await));
        assert_eq!(Instant::now() - start, 2 * period);
        // Once due, the resync comes ahead of the events already announced.
        tx.send(event(2)).unwrap();
        tokio::time::advance(period).await;
        assert!(is_resync(&feed.try_next()));
        assert_eq!(revision(feed.try_next()), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_resync_asks_for_the_next_one_sooner() {
        let (_tx, rx) = broadcast::channel(16);
        let mut feed = Feed::new(rx, HOUR);
        let start = Instant::now();
        assert!(is_resync(&feed.next().await));
        feed.resync_in(Duration::from_secs(1));
        assert!(is_resync(&feed.next().await));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(
            feed.resync_at(),
            Instant::now() + HOUR,
            "then the period again"
        );
    }
}
