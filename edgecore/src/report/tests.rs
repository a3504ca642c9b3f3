use super::*;
use crate::pods::StatusSink;

fn test_node(ready: bool) -> NodeStatus {
    let message = if ready { "" } else { "down" };
    let ready = NodeCondition::new(NodeConditionKind::Ready, ready, "Test", message);
    node_status(
        "n1",
        "127.0.0.1",
        "process://x",
        Capacity::default(),
        vec![ready],
    )
}

#[test]
fn allocatable_is_capacity_less_what_is_reserved() {
    let mut cap = Capacity {
        max_pods: 20,
        ..Capacity::default()
    };
    cap.parse_reserved("cpu=500m,memory=1Mi").unwrap();
    let s = node_status("n1", "127.0.0.1", "process://x", cap, vec![]);
    assert_eq!(s.capacity["pods"], "20");
    assert_eq!(s.allocatable["pods"], "20");
    let cpus: u64 = s.capacity["cpu"].parse().unwrap();
    assert_eq!(s.allocatable["cpu"], format!("{}m", cpus * 1000 - 500));
    let kib = |q: &str| q.trim_end_matches("Ki").parse::<u64>().unwrap();
    assert_eq!(
        kib(&s.capacity["memory"]) - kib(&s.allocatable["memory"]),
        1024
    );
    for bad in ["cpu=lots", "gpu=1", "memory"] {
        assert!(Capacity::default().parse_reserved(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_corrupt_outbox_index_key_is_dropped_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let o = Outbox::open(&db, "n1").unwrap();
    o.put("t/a", StatusBody::Node(test_node(true)));
    // Shorter than a sequence number, and sorting before the real one.
    o.order.insert([0u8, 1, 2], "t/x".as_bytes()).unwrap();
    let p = o.pending(10, &HashMap::new());
    assert_eq!(
        p.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(),
        vec!["t/a"]
    );
    assert!(o.order.get([0u8, 1, 2]).unwrap().is_none());
}

#[test]
fn outbox_coalesces_per_topic_in_order_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let seqs;
    {
        let db = sled::open(dir.path()).unwrap();
        let o = Outbox::open(&db, "n1").unwrap();
        o.put("t/a", StatusBody::Node(test_node(true)));
        o.put("t/b", StatusBody::Node(test_node(true)));
        o.put("t/a", StatusBody::Node(test_node(false)));
        let p = o.pending(10, &HashMap::new());
        assert_eq!(
            p.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(),
            vec!["t/b", "t/a"]
        );
        seqs = p.iter().map(|(s, _, _)| *s).collect::<Vec<_>>();
        assert!(seqs[0] < seqs[1]);
        // An ack for a replaced report does not remove the newer one.
        o.acked("t/a", seqs[0] - 1);
        assert_eq!(o.len(), 2);
        o.acked("t/b", seqs[0]);
        assert_eq!(o.len(), 1);
        db.flush().unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let o = Outbox::open(&db, "n1").unwrap();
    let p = o.pending(10, &HashMap::new());
    assert_eq!(p.len(), 1);
    let report: StatusReport = codec::decode(&p[0].2).unwrap();
    assert!(matches!(&report.body, StatusBody::Node(n) if !n.is_ready()));
    // Sequence numbers keep growing after a restart.
    o.put("t/c", StatusBody::Node(test_node(true)));
    let p = o.pending(10, &HashMap::new());
    assert!(p[1].0 > seqs[1]);
}

#[test]
fn acknowledged_pod_reports_are_queued_again_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let o = Outbox::open(&db, "n1").unwrap();
    let pod = |name: &str| pod_status(name, PodPhase::Running);
    o.pod_status(pod("a"));
    o.pod_status(pod("b"));
    o.put("t/node", StatusBody::Node(test_node(true)));
    for (seq, topic, _) in o.pending(10, &HashMap::new()) {
        o.acked(&topic, seq);
    }
    assert!(o.is_empty());
    // A newer report of `b` is still queued: only `a` comes back (node reports are periodic
    // anyway and are not kept).
    o.pod_status(pod("b"));
    assert_eq!(o.requeue_published(), 1);
    let topics: Vec<String> = o
        .pending(10, &HashMap::new())
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(topics.len(), 2);
    assert!(
        topics
            .iter()
            .all(|t| t.ends_with("/a/status") || t.ends_with("/b/status")),
        "{topics:?}"
    );
    // A forgotten pod is never reported again.
    o.pod_forgotten("default", "a");
    for (seq, topic, _) in o.pending(10, &HashMap::new()) {
        o.acked(&topic, seq);
    }
    assert_eq!(o.requeue_published(), 1, "only b");
}

/// The outbox's contract, written plainly: what is queued per topic and what is kept.
#[derive(Default, Debug)]
struct Model {
    /// topic → (seq, body) queued.
    queued: std::collections::BTreeMap<String, (u64, StatusBody)>,
    /// topic → body of the last acknowledged pod report.
    kept: std::collections::BTreeMap<String, StatusBody>,
    /// Every (topic, seq) ever handed out, for stale and duplicate acks.
    sent: Vec<(String, u64)>,
}

#[derive(Debug, Clone)]
enum Op {
    /// A report of topic `t` (0..3 are pods, 3 is the node) in state `v`.
    Put { t: usize, v: bool },
    /// The broker acknowledges the `i`-th pending report (modulo their number).
    AckPending { i: usize },
    /// An ack for some report ever sent: duplicated, stale or out of order.
    AckAny { i: usize },
    /// The broker connection is up again.
    Reconnect,
    /// An event of pod p0, one of a few messages (`m`), counted into its series (topic 4).
    Event { m: u8, uid: bool },
    /// The pod behind topic `t` is removed for good.
    Forget { t: usize },
    /// kill -9 after the last flush: reopen from disk.
    Crash,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..4usize, any::<bool>()).prop_map(|(t, v)| Op::Put { t, v }),
        3 => any::<usize>().prop_map(|i| Op::AckPending { i }),
        2 => any::<usize>().prop_map(|i| Op::AckAny { i }),
        1 => Just(Op::Reconnect),
        2 => (0..3u8, proptest::bool::weighted(0.9)).prop_map(|(m, uid)| Op::Event { m, uid }),
        1 => (0..5usize).prop_map(|t| Op::Forget { t }),
        1 => Just(Op::Crash),
    ]
}

fn model_topic(t: usize) -> String {
    if t == 4 {
        topics::pod_events("n1", "default", "p0")
    } else if t == 3 {
        topics::node_status("n1")
    } else {
        topics::pod_status("n1", "default", &format!("p{t}"))
    }
}

fn model_body(t: usize, v: bool) -> StatusBody {
    if t == 3 {
        return StatusBody::Node(test_node(v));
    }
    let phase = if v {
        PodPhase::Running
    } else {
        PodPhase::Pending
    };
    StatusBody::Pod(pod_status(&format!("p{t}"), phase))
}

/// A report of pod `name` of node n1 in `phase`, with nothing else set.
fn pod_status(name: &str, phase: PodPhase) -> PodStatus {
    PodStatus {
        node: "n1".into(),
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        phase,
        conditions: vec![],
        containers: vec![],
        pod_ip: String::new(),
        host_ip: String::new(),
        start_time_ms: 0,
        reason: String::new(),
        message: String::new(),
        removed: false,
        init_containers: Vec::new(),
    }
}

/// The outbox holds exactly what the model holds: queued reports in sequence order (sequence
/// numbers and bodies alike), and the kept reports.
/// The model's events series of pod p0 after `occ` (uid `uid`): counted on the queued report,
/// else the kept one, of the same uid.
fn model_event(m: &Model, uid: &str, occ: protocol::events::Occurrence) -> StatusBody {
    let topic = model_topic(4);
    let base = m
        .queued
        .get(&topic)
        .map(|(_, b)| b)
        .or_else(|| m.kept.get(&topic));
    let mut series = match base {
        Some(StatusBody::Events(e)) if e.uid == uid => e.series.clone(),
        _ => vec![],
    };
    protocol::events::record(&mut series, occ);
    StatusBody::Events(protocol::events::PodEvents {
        node: "n1".into(),
        namespace: "default".into(),
        name: "p0".into(),
        uid: uid.into(),
        series,
    })
}

fn is_events(topic: &str) -> bool {
    topic.ends_with("/events")
}

fn assert_matches(o: &Outbox, m: &Model) {
    let pending: Vec<(u64, String, StatusBody)> = o
        .pending(usize::MAX, &HashMap::new())
        .into_iter()
        .map(|(seq, t, p)| {
            let r: StatusReport = codec::decode(&p).unwrap();
            assert_eq!(r.seq, seq, "index and report agree");
            (seq, t, r.body)
        })
        .collect();
    let mut want: Vec<(u64, String, StatusBody)> = m
        .queued
        .iter()
        .map(|(t, (s, b))| (*s, t.clone(), b.clone()))
        .collect();
    // Statuses first, then events, each in sequence order.
    want.sort_by_key(|(s, t, _)| (is_events(t), *s));
    assert_eq!(pending, want);
    assert_eq!(o.len(), m.queued.len());
    assert_eq!(
        o.order.len(),
        m.queued.len(),
        "no index entry without its report"
    );
    let kept: std::collections::BTreeMap<String, StatusBody> = o
        .published
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            let r: StatusReport = codec::decode(&v).unwrap();
            (String::from_utf8(k.to_vec()).unwrap(), r.body)
        })
        .collect();
    assert_eq!(kept, m.kept);
}

fn ack(o: &Outbox, m: &mut Model, topic: &str, seq: u64) {
    o.acked(topic, seq);
    if m.queued.get(topic).map(|(s, _)| *s) == Some(seq) {
        let (_, body) = m.queued.remove(topic).unwrap();
        if matches!(body, StatusBody::Pod(_) | StatusBody::Events(_)) {
            m.kept.insert(topic.to_string(), body);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Puts, acks (of what is pending, and duplicated, stale or out-of-order ones), reconnects,
    /// removals and crashes in any order: after every step, and after every reopen from disk,
    /// the outbox is the model.
    #[test]
    fn the_outbox_is_its_model_under_any_interleaving(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = sled::open(dir.path()).unwrap();
        let mut o = Outbox::open(&db, "n1").unwrap();
        let mut m = Model::default();
        let mut last_seq = 0;
        for op in ops {
            match op {
                Op::Put { t, v } => {
                    let (topic, body) = (model_topic(t), model_body(t, v));
                    let seq = o.put_seq(&topic, body.clone()).unwrap();
                    proptest::prop_assert!(seq > last_seq, "sequence numbers grow");
                    last_seq = seq;
                    m.sent.push((topic.clone(), seq));
                    m.queued.insert(topic, (seq, body));
                }
                Op::AckPending { i } => {
                    let p = o.pending(usize::MAX, &HashMap::new());
                    if !p.is_empty() {
                        let (seq, topic, _) = p[i % p.len()].clone();
                        ack(&o, &mut m, &topic, seq);
                    }
                }
                Op::AckAny { i } => {
                    if !m.sent.is_empty() {
                        let (topic, seq) = m.sent[i % m.sent.len()].clone();
                        ack(&o, &mut m, &topic, seq);
                    }
                }
                Op::Reconnect => {
                    let n = o.requeue_published();
                    let again: Vec<String> = m
                        .kept
                        .iter()
                        .filter(|(t, b)| !m.queued.contains_key(*t) && matches!(b, StatusBody::Pod(_)))
                        .map(|(t, _)| t.clone())
                        .collect();
                    proptest::prop_assert_eq!(n, again.len());
                    // Fresh sequence numbers, learnt from the outbox and checked to be new.
                    let p = o.pending(usize::MAX, &HashMap::new());
                    for topic in again {
                        let (seq, _, _) = p.iter().find(|(_, t, _)| *t == topic).unwrap();
                        proptest::prop_assert!(*seq > last_seq);
                        m.sent.push((topic.clone(), *seq));
                        m.queued.insert(topic.clone(), (*seq, m.kept[&topic].clone()));
                    }
                    last_seq = m.queued.values().map(|(s, _)| *s).max().unwrap_or(0).max(last_seq);
                }
                Op::Event { m: msg, uid } => {
                    let uid = if uid { "uid-p0" } else { "uid-p0-new" };
                    let occ = protocol::events::Occurrence::new(
                        protocol::events::EventType::Warning,
                        "BackOff",
                        format!("m{msg}"),
                        Some("app"),
                        1_000 + last_seq % 1_000,
                    );
                    let topic = model_topic(4);
                    let want = model_event(&m, uid, occ.clone());
                    let pod = crate::pods::PodRef {
                        namespace: "default".into(),
                        name: "p0".into(),
                        uid: uid.into(),
                    };
                    o.record_event(&topic, &pod, occ).unwrap();
                    let seq = o.pending(usize::MAX, &HashMap::new())
                        .into_iter()
                        .find(|(_, t, _)| *t == topic)
                        .map(|(s, _, _)| s)
                        .unwrap();
                    proptest::prop_assert!(seq > last_seq, "sequence numbers grow");
                    last_seq = seq;
                    m.sent.push((topic.clone(), seq));
                    m.queued.insert(topic, (seq, want));
                }
                Op::Forget { t } => {
                    let topic = model_topic(t);
                    o.forget(&topic);
                    m.queued.remove(&topic);
                    m.kept.remove(&topic);
                }
                Op::Crash => {
                    db.flush().unwrap();
                    drop(o);
                    drop(db);
                    db = reopen(dir.path());
                    o = Outbox::open(&db, "n1").unwrap();
                }
            }
            assert_matches(&o, &m);
        }
    }
}

#[test]
fn unreadable_entries_are_dropped_and_counted_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let o = Outbox::open(&db, "n1").unwrap();
    let seq = o.put_seq("t/a", StatusBody::Node(test_node(true))).unwrap();
    o.put("t/b", StatusBody::Node(test_node(true)));
    // A queued report and a kept one that do not decode.
    o.entries.insert("t/a", b"garbage".to_vec()).unwrap();
    o.published.insert("t/k", b"garbage".to_vec()).unwrap();
    let p = o.pending(10, &HashMap::new());
    assert_eq!(
        p.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>(),
        vec!["t/b"]
    );
    assert!(o.entries.get("t/a").unwrap().is_none());
    assert!(o.order.get(seq.to_be_bytes()).unwrap().is_none());
    assert_eq!(o.requeue_published(), 0);
    assert!(o.published.is_empty());
    // A stale index entry (left by an older, non-transactional version) is not sent twice.
    o.order
        .insert(1u64.to_be_bytes(), "t/b".as_bytes())
        .unwrap();
    assert_eq!(o.pending(10, &HashMap::new()).len(), 1);
    assert_eq!(o.order.len(), 1);
}

/// Opens the sled database at `path` again right after its last handle was dropped. sled
/// releases its file lock when its background flusher lets go of the database, a moment after
/// the drop, so an immediate open may find the lock still held: wait for it (bounded).
fn reopen(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("reopening {}: {e}", path.display()),
        }
    }
}
