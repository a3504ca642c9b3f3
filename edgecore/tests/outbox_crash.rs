//! The status outbox under real kill -9s: a child process (this test binary again) works the
//! outbox without end and is SIGKILLed after a different number of operations each round;
//! reopened, the outbox's trees must be whole.
//!
//! A file of its own: the child is forked while the parent runs, and a fork shares the parent's
//! open files (and so sled's file lock) until it execs, which would make other tests that reopen
//! a sled directory at that moment fail spuriously.

use edgecore::pods::StatusSink;
use edgecore::report::{node_status, Capacity, Outbox};
use protocol::codec;
use protocol::status::{
    NodeCondition, NodeConditionKind, PodPhase, PodStatus, StatusBody, StatusReport,
};
use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};

const CHILD: &str = "SKERRY_OUTBOX_CRASH_CHILD";
const NAME: &str = "a_kill_9_at_any_moment_leaves_the_outbox_whole";

fn pod(t: usize, running: bool) -> PodStatus {
    PodStatus {
        node: "n1".into(),
        namespace: "default".into(),
        name: format!("p{t}"),
        uid: format!("uid-{t}"),
        phase: if running {
            PodPhase::Running
        } else {
            PodPhase::Pending
        },
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

fn node(ready: bool) -> StatusBody {
    let c = NodeCondition::new(NodeConditionKind::Ready, ready, "Test", "");
    StatusBody::Node(node_status(
        "n1",
        "127.0.0.1",
        "process://x",
        Capacity::default(),
        vec![c],
    ))
}

/// The child: puts, acks, removals and reconnects without end, flushing after every third
/// operation, and saying so on stdout after each.
fn child(dir: &str) -> ! {
    let db = sled::open(dir).unwrap();
    let o = Outbox::open(&db, "n1").unwrap();
    let mut out = std::io::stdout();
    for i in 0..200_000usize {
        let t = i % 7 % 4;
        match i % 11 {
            0..=5 if t == 3 => o.put(&protocol::topics::node_status("n1"), node(i % 3 == 0)),
            0..=5 => o.pod_status(pod(t, i % 3 == 0)),
            6..=8 => {
                for (seq, topic, _) in o.pending(2, &HashMap::new()) {
                    o.acked(&topic, seq);
                }
            }
            9 => o.pod_forgotten("default", &format!("p{t}")),
            _ => {
                o.requeue_published();
            }
        }
        if i % 3 == 0 {
            db.flush().unwrap();
        }
        writeln!(out, "op {i}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0)
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(<[u8; 8]>::try_from(key).expect("an index key is a sequence number"))
}

/// What must hold on disk whenever the outbox is opened (tree names as `report::outbox` has
/// them): every index entry names its topic's queued report at that very sequence number,
/// every queued report has its index entry, every kept report is a readable pod report, and
/// the sequence counter is past them all.
fn assert_whole(db: &sled::Db) {
    let entries = db.open_tree("outbox").unwrap();
    let order = db.open_tree("outbox_order").unwrap();
    let kept = db.open_tree("outbox_published").unwrap();
    let meta = db.open_tree("meta").unwrap();
    let mut max_seq = 0;
    for kv in order.iter() {
        let (k, topic) = kv.unwrap();
        let entry = entries
            .get(&topic)
            .unwrap()
            .expect("an index entry without its report");
        let r: StatusReport = codec::decode(&entry).unwrap();
        assert_eq!(r.seq, seq_of(&k), "an index entry naming another report");
        max_seq = max_seq.max(r.seq);
    }
    for kv in entries.iter() {
        let (topic, entry) = kv.unwrap();
        let r: StatusReport = codec::decode(&entry).unwrap();
        assert_eq!(
            order.get(r.seq.to_be_bytes()).unwrap().as_deref(),
            Some(topic.as_ref()),
            "a report without its index entry"
        );
    }
    for kv in kept.iter() {
        let (_, v) = kv.unwrap();
        let r: StatusReport = codec::decode(&v).unwrap();
        assert!(
            matches!(r.body, StatusBody::Pod(_)),
            "only pod reports are kept"
        );
    }
    let last = meta.get(b"status_seq").unwrap().map(|v| seq_of(&v));
    assert!(
        last.unwrap_or(0) >= max_seq,
        "the sequence counter is behind a queued report"
    );
}

/// Each round kills the child at a different moment (after 20, 57, 94, … operations, mostly
/// between flushes). Before the outbox's writes were one transaction, a kill between two of
/// them could leave a report without its index entry.
#[test]
fn a_kill_9_at_any_moment_leaves_the_outbox_whole() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..8u64 {
        let mut child = std::process::Command::new(&exe)
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let wanted = 20 + round * 37;
        let mut seen = 0;
        for line in std::io::BufReader::new(stdout).lines() {
            if line.unwrap().starts_with("op ") {
                seen += 1;
                if seen >= wanted {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(seen >= wanted, "the child stopped early (round {round})");
        let db = sled::open(dir.path()).unwrap();
        assert_whole(&db);
        // And it keeps working.
        let o = Outbox::open(&db, "n1").unwrap();
        o.pod_status(pod(9, true));
        let p = o.pending(usize::MAX, &HashMap::new());
        assert!(p.iter().any(|(_, t, _)| t.ends_with("/p9/status")), "{p:?}");
        o.pod_forgotten("default", "p9");
        db.flush().unwrap();
    }
}
