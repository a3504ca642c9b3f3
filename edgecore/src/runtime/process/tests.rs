//! Unit tests of the process runtime's pure parts: ids, `/proc` parsing, the environment.

use super::env::{build_env, volume_env_name, DEFAULT_PATH};
use super::exec::{exec_in_context, EXEC_OUTPUT_LIMIT};
use super::layout::InstanceId;
use super::procfs::{parse_stat, proc_alive};
use super::record::ShimSpec;
use super::*;
use tokio::time::{sleep, Instant};

#[test]
fn stat_parsing_survives_odd_command_names() {
    let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                987654 1000 100 18446744073709551615";
    assert_eq!(parse_stat(stat), Some(('S', 987654)));
    assert_eq!(parse_stat("garbage"), None);
}

#[test]
fn container_ids_round_trip_and_reject_traversal() {
    let id = InstanceId::parse("uid-1/main/3").expect("valid id");
    assert_eq!(id.to_string(), "uid-1/main/3");
    assert!(InstanceId::parse("../main/3").is_none());
    assert!(InstanceId::parse("uid/main").is_none());
    assert!(InstanceId::parse("uid/main/x").is_none());
    assert!(InstanceId::parse("uid/main/1/2").is_none());
}

#[test]
fn env_keeps_first_position_and_last_value_and_adds_defaults() {
    let env = build_env(
        &[
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("A".into(), "3".into()),
            ("HOSTNAME".into(), "mine".into()),
        ],
        vec![("SKERRY_VOLUME_DATA".into(), "/d".into())],
        "pod",
    );
    assert_eq!(
        env,
        vec![
            ("A".to_string(), "3".to_string()),
            ("B".into(), "2".into()),
            ("HOSTNAME".into(), "mine".into()),
            ("SKERRY_VOLUME_DATA".into(), "/d".into()),
            ("PATH".into(), DEFAULT_PATH.into()),
        ]
    );
    assert_eq!(volume_env_name("my-vol.1"), "SKERRY_VOLUME_MY_VOL_1");
}

#[test]
fn tail_counts_lines_not_a_trailing_newline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.log");
    std::fs::write(&path, "a\nb\nc\n").expect("write");
    assert_eq!(tail_file(&path, Some(2)).expect("tail"), "b\nc\n");
    assert_eq!(tail_file(&path, Some(5)).expect("tail"), "a\nb\nc\n");
    assert_eq!(tail_file(&path, None).expect("tail"), "a\nb\nc\n");
    assert_eq!(tail_file(&path, Some(0)).expect("tail"), "");
    std::fs::write(&path, "a\nb\nc").expect("write");
    assert_eq!(tail_file(&path, Some(1)).expect("tail"), "c");
    let big: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&path, &big).expect("write");
    assert_eq!(
        tail_file(&path, Some(2)).expect("tail"),
        "line 99998\nline 99999\n"
    );
}

fn exec_spec(cwd: &Path, env: &[(&str, &str)]) -> ShimSpec {
    ShimSpec {
        pod_uid: "uid".into(),
        container: "main".into(),
        attempt: 0,
        image: "local".into(),
        program: "sleep".into(),
        args: vec![],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: cwd.to_path_buf(),
        log_path: cwd.join("log"),
        spec_digest: None,
        cgroup: None,
        read_only_paths: vec![],
        hosts_file: None,
        user: None,
        no_new_privs: false,
    }
}

fn words(command: &[&str]) -> Vec<String> {
    command.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn exec_runs_with_the_containers_environment_and_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = exec_spec(dir.path(), &[("PATH", DEFAULT_PATH), ("GREETING", "hi")]);
    let out = exec_in_context(
        &spec,
        &words(&["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .await
    .expect("exec");
    assert_eq!(out.exit_code, 3);
    assert!(!out.timed_out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cwd = dir.path().canonicalize().expect("canonical");
    assert_eq!(stdout, format!("hi\n{}\n", cwd.display()));
    assert_eq!(out.stderr, b"oops\n");
    // edgecore's own environment does not leak in.
    let out = exec_in_context(&spec, &words(&["env"]), Duration::from_secs(10))
        .await
        .expect("exec");
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("GREETING=hi"), "{env}");
    assert!(!env.contains("CARGO"), "{env}");
}

#[tokio::test]
async fn exec_truncates_output_and_kills_the_group_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = exec_spec(dir.path(), &[("PATH", DEFAULT_PATH)]);
    let out = exec_in_context(
        &spec,
        &words(&["sh", "-c", "head -c 100000 /dev/zero"]),
        Duration::from_secs(10),
    )
    .await
    .expect("exec");
    assert_eq!((out.exit_code, out.stdout.len()), (0, EXEC_OUTPUT_LIMIT));

    // A child of the command, writing its pid first, is killed with it.
    let pid_file = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let started = Instant::now();
    let out = exec_in_context(
        &spec,
        &words(&["sh", "-c", &script]),
        Duration::from_millis(300),
    )
    .await
    .expect("exec");
    assert!(out.timed_out);
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_alive(pid, 0).await {
        assert!(Instant::now() < deadline, "the exec's child {pid} survived");
        sleep(Duration::from_millis(20)).await;
    }

    // The same when the exec is cancelled (its probe was) before the timeout.
    std::fs::remove_file(&pid_file).expect("remove");
    let exec = tokio::spawn(async move {
        let command = words(&["sh", "-c", &script]);
        exec_in_context(&spec, &command, Duration::from_secs(60)).await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the exec never ran");
        sleep(Duration::from_millis(20)).await;
    };
    exec.abort();
    while proc_alive(pid, 0).await {
        assert!(
            Instant::now() < deadline,
            "the child {pid} of a cancelled exec survived"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_of_a_missing_program_fails_like_a_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The container's PATH is used, not edgecore's: `sh` is not found in an empty one.
    let spec = exec_spec(dir.path(), &[("PATH", "/nonexistent")]);
    let out = exec_in_context(&spec, &words(&["sh", "-c", "true"]), Duration::from_secs(5))
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run \"sh\""));
    assert!(exec_in_context(&spec, &[], Duration::from_secs(5))
        .await
        .is_err());
}
