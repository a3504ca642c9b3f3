use super::*;
use crate::runtime::{ContainerConfig, ContainerInfo, ExecOutput, ExistingPod, RuntimeStatus};
use async_trait::async_trait;
use protocol::pod::{EdgeContainer, EdgePod};
use std::sync::Mutex;

/// A runtime that knows one pod and whether its container runs; nothing else is called by the
/// log reader.
struct OnePod {
    pod: ExistingPod,
    running: Mutex<bool>,
}

fn unused() -> RuntimeError {
    RuntimeError::Internal {
        op: "test".into(),
        message: "not used by the log reader".into(),
    }
}

#[async_trait]
impl Runtime for OnePod {
    fn check_runnable(&self, _pod: &EdgePod) -> Result<(), String> {
        Ok(())
    }

    fn version(&self) -> String {
        "test".into()
    }
    async fn status(&self) -> Result<RuntimeStatus, RuntimeError> {
        Err(unused())
    }
    async fn run_sandbox(&self, _: &EdgePod) -> Result<Sandbox, RuntimeError> {
        Err(unused())
    }
    async fn sandbox_ready(&self, _: &Sandbox) -> Result<bool, RuntimeError> {
        Err(unused())
    }
    async fn start_container(
        &self,
        _: &Sandbox,
        _: &EdgePod,
        _: &EdgeContainer,
        _: &ContainerConfig,
    ) -> Result<ContainerInfo, RuntimeError> {
        Err(unused())
    }
    async fn container_state(
        &self,
        _: &Sandbox,
        _: &str,
    ) -> Result<ContainerRunState, RuntimeError> {
        Ok(if *self.running.lock().expect("lock") {
            ContainerRunState::Running { started_at_ms: 1 }
        } else {
            ContainerRunState::Exited {
                exit_code: 0,
                signal: None,
                reason: "Completed".into(),
                started_at_ms: 1,
                finished_at_ms: 2,
            }
        })
    }
    async fn stop_container(&self, _: &Sandbox, _: &str, _: Duration) -> Result<(), RuntimeError> {
        Err(unused())
    }
    async fn remove_container(&self, _: &Sandbox, _: &str) -> Result<(), RuntimeError> {
        Err(unused())
    }
    async fn remove_sandbox(&self, _: &Sandbox, _: Duration) -> Result<(), RuntimeError> {
        Err(unused())
    }
    async fn exec_sync(
        &self,
        _: &Sandbox,
        _: &str,
        _: &[String],
        _: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        Err(unused())
    }
    async fn list_pods(&self) -> Result<Vec<ExistingPod>, RuntimeError> {
        Ok(vec![self.pod.clone()])
    }
    async fn read_log(
        &self,
        _: &Sandbox,
        _: &str,
        _: Option<usize>,
    ) -> Result<String, RuntimeError> {
        Err(unused())
    }
}

struct Fixture {
    _root: tempfile::TempDir,
    dir: PathBuf,
    runtime: Arc<OnePod>,
    reader: LogReader,
}

/// A pod `default/hello` (uid `u1`) whose container `main` is at `attempt`, running or not.
fn fixture(format: LogFormat, attempt: u32, running: bool) -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("u1/logs/main");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sandbox = Sandbox {
        id: "u1".into(),
        pod_uid: "u1".into(),
        ip: "127.0.0.1".into(),
    };
    let runtime = Arc::new(OnePod {
        pod: ExistingPod {
            sandbox,
            namespace: "default".into(),
            name: "hello".into(),
            containers: vec![ContainerInfo {
                id: format!("u1/main/{attempt}"),
                name: "main".into(),
                attempt,
                state: ContainerRunState::Running { started_at_ms: 1 },
                spec_digest: None,
                image_pull: None,
                image_id: None,
            }],
        },
        running: Mutex::new(running),
    });
    let reader = LogReader::new(runtime.clone(), root.path().to_path_buf(), format);
    Fixture {
        _root: root,
        dir,
        runtime,
        reader,
    }
}

fn request() -> LogRequest {
    LogRequest {
        namespace: "default".into(),
        pod: "hello".into(),
        uid: "u1".into(),
        container: "main".into(),
        follow: false,
        tail_lines: None,
        since: None,
        timestamps: false,
        previous: false,
        limit_bytes: None,
    }
}

async fn read(f: &Fixture, req: &LogRequest) -> Result<String, LogError> {
    let log = f.reader.open(req).await?;
    let mut out = Vec::new();
    f.reader.copy(log, &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

const CRI: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n\
2026-01-01T00:00:02.5Z stderr F two\n\
2026-01-01T00:00:03Z stdout P thr\n\
2026-01-01T00:00:03.1Z stdout F ee\n\
2026-01-01T00:00:04Z stdout F four\n";

#[tokio::test]
async fn cri_logs_lose_their_prefix_unless_timestamps() {
    let f = fixture(LogFormat::Cri, 0, false);
    std::fs::write(f.dir.join("0.log"), CRI).expect("write");
    assert_eq!(
        read(&f, &request()).await.expect("read"),
        "one\ntwo\nthree\nfour\n"
    );
    let mut req = request();
    req.timestamps = true;
    assert_eq!(
        read(&f, &req).await.expect("read"),
        "2026-01-01T00:00:01.000000001Z one\n2026-01-01T00:00:02.5Z two\n\
         2026-01-01T00:00:03Z thr2026-01-01T00:00:03.1Z ee\n2026-01-01T00:00:04Z four\n"
    );
}

#[tokio::test]
async fn tail_since_and_limit_bytes() {
    let f = fixture(LogFormat::Cri, 0, false);
    std::fs::write(f.dir.join("0.log"), CRI).expect("write");
    let mut req = request();
    req.tail_lines = Some(2);
    assert_eq!(read(&f, &req).await.expect("tail"), "ee\nfour\n");
    req.tail_lines = Some(0);
    assert_eq!(read(&f, &req).await.expect("tail 0"), "");
    req.tail_lines = Some(100);
    assert_eq!(
        read(&f, &req).await.expect("tail all"),
        "one\ntwo\nthree\nfour\n"
    );
    let mut req = request();
    req.since = Some(LogSince::UnixNanos(
        protocol::timestamp::parse_nanos("2026-01-01T00:00:02.5Z").expect("time"),
    ));
    assert_eq!(read(&f, &req).await.expect("since"), "two\nthree\nfour\n");
    let mut req = request();
    req.limit_bytes = Some(6);
    assert_eq!(read(&f, &req).await.expect("limit"), "one\ntw");
}

#[tokio::test]
async fn tail_reaches_into_the_rotated_generation() {
    let f = fixture(LogFormat::Cri, 0, false);
    std::fs::write(
        f.dir.join("0.log.1"),
        "2026-01-01T00:00:01Z stdout F old1\n2026-01-01T00:00:02Z stdout F old2\n",
    )
    .expect("write");
    std::fs::write(f.dir.join("0.log"), "2026-01-01T00:00:03Z stdout F new\n").expect("write");
    let mut req = request();
    req.tail_lines = Some(2);
    assert_eq!(read(&f, &req).await.expect("tail"), "old2\nnew\n");
    assert_eq!(
        read(&f, &request()).await.expect("all"),
        "old1\nold2\nnew\n"
    );
}

#[tokio::test]
async fn raw_logs_pass_through_and_refuse_timestamps() {
    let f = fixture(LogFormat::Raw, 0, false);
    std::fs::write(f.dir.join("0.log"), "a\nb\nc").expect("write");
    assert_eq!(read(&f, &request()).await.expect("all"), "a\nb\nc");
    let mut req = request();
    req.tail_lines = Some(2);
    assert_eq!(read(&f, &req).await.expect("tail"), "b\nc");
    req.timestamps = true;
    match read(&f, &req).await {
        Err(e @ LogError::BadRequest(_)) => assert!(e.to_string().contains("timestamps"), "{e}"),
        other => panic!("timestamps on the process runtime: {other:?}"),
    }
}

#[tokio::test]
async fn previous_reads_the_attempt_before_or_says_kubelets_words() {
    let f = fixture(LogFormat::Raw, 1, false);
    std::fs::write(f.dir.join("1.log"), "second\n").expect("write");
    let mut req = request();
    req.previous = true;
    match read(&f, &req).await {
        Err(e) => assert_eq!(
            e.to_string(),
            "previous terminated container \"main\" in pod \"hello\" not found"
        ),
        Ok(s) => panic!("previous without one: {s:?}"),
    }
    std::fs::write(f.dir.join("0.log"), "first\n").expect("write");
    assert_eq!(read(&f, &req).await.expect("previous"), "first\n");
    assert_eq!(read(&f, &request()).await.expect("current"), "second\n");
}

#[tokio::test]
async fn unknown_pod_or_container_is_refused() {
    let f = fixture(LogFormat::Raw, 0, false);
    let mut req = request();
    req.uid = "other".into();
    assert!(matches!(read(&f, &req).await, Err(LogError::NotFound(_))));
    let mut req = request();
    req.container = "..".into();
    assert!(matches!(read(&f, &req).await, Err(LogError::NotFound(_))));
    let mut req = request();
    req.container = "sidecar".into();
    match read(&f, &req).await {
        Err(LogError::BadRequest(m)) => assert!(m.contains("waiting to start"), "{m}"),
        other => panic!("no log yet: {other:?}"),
    }
}

#[tokio::test]
async fn follow_sees_appended_lines_and_ends_with_the_container() {
    let f = fixture(LogFormat::Cri, 0, true);
    let path = f.dir.join("0.log");
    std::fs::write(&path, "2026-01-01T00:00:01Z stdout F before\n").expect("write");
    let mut req = request();
    req.follow = true;
    let log = f.reader.open(&req).await.expect("open");
    let (mut client, mut server) = tokio::io::duplex(1024);
    let reader = f.reader.clone();
    let copy = tokio::spawn(async move { reader.copy(log, &mut server).await });
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("before\n") {
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"2026-01-01T00:00:02Z stdout F after\n")
            .expect("append");
    }
    while !String::from_utf8_lossy(&seen).contains("after\n") {
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended before the appended line");
        seen.extend_from_slice(&buf[..n]);
    }
    // Still following: nothing ends it but the container.
    assert!(!copy.is_finished());
    *f.runtime.running.lock().expect("lock") = false;
    let written = tokio::time::timeout(Duration::from_secs(30), copy)
        .await
        .expect("follow ends once the container ended")
        .expect("join")
        .expect("copy");
    assert_eq!(written, "before\nafter\n".len() as u64);
    assert_eq!(String::from_utf8_lossy(&seen), "before\nafter\n");
}

#[test]
fn parses_cri_records() {
    let r = parse_cri(b"2026-01-01T00:00:01Z stdout F hello world").expect("record");
    assert_eq!(
        r,
        CriRecord {
            time: "2026-01-01T00:00:01Z",
            partial: false,
            message: b"hello world"
        }
    );
    assert!(
        parse_cri(b"2026-01-01T00:00:01Z stderr P part")
            .expect("p")
            .partial
    );
    // Untagged (older containerd): everything after the stream is the message.
    assert_eq!(
        parse_cri(b"2026-01-01T00:00:01Z stdout plain text")
            .expect("old")
            .message,
        b"plain text"
    );
    assert_eq!(parse_cri(b"not a record"), None);
}
