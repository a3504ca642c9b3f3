//! The runner's rules, under paused time: no two reconciles of one key at once, bounded
//! concurrency, deduplication, back-off, requeue and the parking of permanent errors.

use super::*;
use crate::api::ApiError;
use proptest::prelude::*;
use std::sync::Mutex;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("apps/deployments", "default", name)
}

fn event(name: &str) -> Event {
    Event {
        revision: 1,
        key: key(name),
        value: None,
        previous: None,
        shards: vec![],
    }
}

/// How the test reconciler answers for one key.
#[derive(Debug, Clone, Copy, Default)]
enum Answer {
    #[default]
    Ok,
    Requeue(Duration),
    Transient,
    Permanent,
}

/// A reconciler that takes `work` of (paused) time per reconcile and records what ran when.
#[derive(Default)]
struct Probe {
    keys: Vec<ObjectKey>,
    work: Duration,
    answers: Mutex<HashMap<ObjectKey, Answer>>,
    state: Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    running: HashMap<ObjectKey, u32>,
    max_same_key: u32,
    max_total: usize,
    started: Vec<(ObjectKey, Instant)>,
    permanent_reports: Vec<ObjectKey>,
}

impl Probe {
    fn with_keys(names: &[&str], work: Duration) -> Self {
        Self {
            keys: names.iter().map(|n| key(n)).collect(),
            work,
            ..Default::default()
        }
    }

    fn answer(&self, name: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(key(name), answer);
    }

    fn starts(&self, name: &str) -> Vec<Instant> {
        let k = key(name);
        let st = self.state.lock().unwrap();
        st.started
            .iter()
            .filter(|(s, _)| *s == k)
            .map(|(_, t)| *t)
            .collect()
    }
}

#[async_trait]
impl Reconciler for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    async fn keys_for_event(&self, event: &Event) -> Vec<ObjectKey> {
        vec![event.key.clone()]
    }

    async fn all_keys(&self) -> Vec<ObjectKey> {
        self.keys.clone()
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Requeue, ControllerError> {
        {
            let mut st = self.state.lock().unwrap();
            st.started.push((key.clone(), Instant::now()));
            let n = st.running.entry(key.clone()).or_insert(0);
            *n += 1;
            let same = *n;
            st.max_same_key = st.max_same_key.max(same);
            let total = st.running.values().filter(|n| **n > 0).count();
            st.max_total = st.max_total.max(total);
        }
        tokio::time::sleep(self.work).await;
        *self
            .state
            .lock()
            .unwrap()
            .running
            .get_mut(key)
            .expect("counted at start") -= 1;
        let answer = self
            .answers
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or_default();
        match answer {
            Answer::Ok => Ok(Requeue::No),
            Answer::Requeue(d) => Ok(Requeue::After(d)),
            Answer::Transient => Err(ApiError::Internal("store unavailable".into()).into()),
            Answer::Permanent => Err(ControllerError::Invalid {
                key: key.to_string(),
                reason: "spec.selector: malformed".into(),
            }),
        }
    }

    async fn on_permanent_error(&self, key: &ObjectKey, _error: &ControllerError) {
        self.state
            .lock()
            .unwrap()
            .permanent_reports
            .push(key.clone());
    }
}

/// Starts a runner over `probe`; returns the event sender (dropping it stops the runner).
fn start(probe: Arc<Probe>, options: Options) -> broadcast::Sender<Event> {
    let (tx, rx) = broadcast::channel(1024);
    tokio::spawn(run(probe, rx, options));
    tx
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn runner_should_never_run_two_instances_at_once() {
    let probe = Arc::new(Probe::with_keys(
        &["a", "b", "c"],
        Duration::from_millis(50),
    ));
    let tx = start(probe.clone(), Options::resync(HOUR).with_concurrency(2));
    // Events for `a` keep arriving while its reconcile runs.
    for _ in 0..20 {
        tx.send(event("a")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = probe.state.lock().unwrap();
    assert_eq!(st.max_same_key, 1, "two reconciles of one key overlapped");
    assert_eq!(
        st.max_total, 2,
        "concurrency is bounded by the option and used"
    );
    let a = st.started.iter().filter(|(k, _)| *k == key("a")).count();
    // 200 ms of events over 50 ms reconciles: the initial one, then at most one per end.
    assert!(
        (2..=6).contains(&a),
        "held events must coalesce into one rerun per reconcile, got {a} runs"
    );
}

#[tokio::test(start_paused = true)]
async fn an_event_during_a_reconcile_runs_the_key_once_more_after_it() {
    let probe = Arc::new(Probe::with_keys(&["a"], Duration::from_millis(100)));
    let tx = start(probe.clone(), Options::resync(HOUR));
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..5 {
        tx.send(event("a")).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = probe.starts("a");
    assert_eq!(
        starts.len(),
        2,
        "initial run plus one held rerun: {starts:?}"
    );
    assert!(
        starts[1] - starts[0] >= Duration::from_millis(100),
        "the rerun started only after the first ended"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_and_success_resets() {
    let probe = Arc::new(Probe::with_keys(&["a"], Duration::ZERO));
    probe.answer("a", Answer::Transient);
    let _tx = start(probe.clone(), Options::resync(HOUR));
    tokio::time::sleep(Duration::from_millis(1550)).await;
    let starts = probe.starts("a");
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(
        gaps,
        vec![100, 200, 400, 800],
        "doubling back-off from 100 ms"
    );
    probe.answer("a", Answer::Ok);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        probe.starts("a").len(),
        6,
        "one more failure, then the success: no more runs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_reported_once_and_waits_for_a_change() {
    let probe = Arc::new(Probe::with_keys(&["bad", "good"], Duration::ZERO));
    probe.answer("bad", Answer::Permanent);
    let tx = start(probe.clone(), Options::resync(Duration::from_secs(10)));
    // Several resyncs pass: the parked key is not retried, the healthy one is resynced.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        probe.starts("bad").len(),
        1,
        "a parked key is not retried by resyncs"
    );
    assert_eq!(probe.starts("good").len(), 4, "start plus three resyncs");
    assert_eq!(
        probe.state.lock().unwrap().permanent_reports,
        vec![key("bad")]
    );
    // The object changes: it is reconciled again (and, still invalid, reported again).
    tx.send(event("bad")).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(probe.starts("bad").len(), 2);
    assert_eq!(probe.state.lock().unwrap().permanent_reports.len(), 2);
    // Fixed: the next change brings it back for good.
    probe.answer("bad", Answer::Ok);
    tx.send(event("bad")).unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(probe.starts("bad").len(), 4, "the change, then a resync");
}

#[tokio::test(start_paused = true)]
async fn requeue_after_runs_the_key_again_at_its_time_only() {
    let probe = Arc::new(Probe::with_keys(&["a"], Duration::ZERO));
    probe.answer("a", Answer::Requeue(Duration::from_secs(3)));
    let _tx = start(probe.clone(), Options::resync(HOUR));
    tokio::time::sleep(Duration::from_millis(9500)).await;
    let starts = probe.starts("a");
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, vec![3, 3, 3]);
}

#[tokio::test(start_paused = true)]
async fn the_runner_ends_when_its_events_close_after_the_work_in_flight() {
    let probe = Arc::new(Probe::with_keys(&["a"], Duration::from_millis(100)));
    let (tx, rx) = broadcast::channel(8);
    let task = tokio::spawn(run(probe.clone(), rx, Options::resync(HOUR)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the runner stops")
        .expect("no panic");
    assert_eq!(
        probe.state.lock().unwrap().running[&key("a")],
        0,
        "the reconcile in flight finished"
    );
}

#[test]
fn backoff_doubles_from_100ms_to_30s() {
    assert_eq!(backoff(1), Duration::from_millis(100));
    assert_eq!(backoff(2), Duration::from_millis(200));
    assert_eq!(backoff(12), BACKOFF_MAX);
    assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
}

proptest! {
    /// Whatever the pushes, the queue yields each key once, at its earliest due time, in
    /// due order.
    #[test]
    fn delay_queue_yields_each_key_once_at_its_earliest_time(
        pushes in proptest::collection::vec((0u8..8, 0u64..1000), 0..64)
    ) {
        let base = Instant::now();
        let mut q = DelayQueue::default();
        let mut earliest: HashMap<ObjectKey, Instant> = HashMap::new();
        for (k, ms) in &pushes {
            let k = key(&format!("k{k}"));
            let at = base + Duration::from_millis(*ms);
            q.push(k.clone(), at);
            let e = earliest.entry(k).or_insert(at);
            if at < *e { *e = at; }
        }
        prop_assert_eq!(q.len(), earliest.len());
        let mut out = Vec::new();
        while let Some(k) = q.pop_due(base + Duration::from_secs(1)) {
            out.push((earliest[&k], k));
        }
        prop_assert_eq!(out.len(), earliest.len());
        prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
        prop_assert_eq!(q.next_due(), None);
    }

    /// The scheduler never starts a running key and never exceeds the concurrency.
    #[test]
    fn scheduler_never_starts_a_running_key(
        ops in proptest::collection::vec((0u8..4, 0u8..3), 0..200)
    ) {
        let now = Instant::now();
        let mut s = Scheduler::default();
        for (k, op) in ops {
            let k = key(&format!("k{k}"));
            match op {
                0 => s.schedule(k, now, Cause::Event),
                1 => {
                    if let Some(started) = s.start_next(now, 2) {
                        prop_assert!(s.running.contains(&started));
                    }
                }
                _ => {
                    if s.running.contains(&k) {
                        s.finish(k, now, Ok(Requeue::No));
                    }
                }
            }
            prop_assert!(s.running.len() <= 2);
            for r in &s.running {
                prop_assert!(!s.queue.due.contains_key(r), "a running key is never queued");
            }
        }
    }
}
