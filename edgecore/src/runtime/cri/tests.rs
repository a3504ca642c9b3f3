//! Unit tests of the CRI runtime's pure parts.

use super::status::stale_created;
use super::*;

#[test]
fn only_long_unstarted_containers_are_stale() {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    assert!(!stale_created(now_ns));
    assert!(!stale_created(now_ns - 30_000_000_000));
    assert!(stale_created(now_ns - 61_000_000_000));
    // Unknown creation time: not judged.
    assert!(!stale_created(0));
}

#[test]
fn cri_timeouts_round_up_to_whole_seconds() {
    assert_eq!(whole_seconds(Duration::ZERO), 0);
    assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
    assert_eq!(whole_seconds(Duration::from_millis(30_001)), 31);
    assert_eq!(whole_seconds(Duration::MAX), i64::MAX);
}

#[test]
fn instance_ids_persist_per_data_dir() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let first = load_instance_id(a.path()).expect("created");
    assert_eq!(first.len(), 16);
    assert_eq!(load_instance_id(a.path()).expect("read"), first);
    assert_ne!(load_instance_id(b.path()).expect("created"), first);
    std::fs::write(a.path().join(INSTANCE_FILE), "../x\n").expect("write");
    assert!(load_instance_id(a.path()).is_err());
}

#[tokio::test]
async fn logs_are_read_from_the_newest_instance() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("uid-1/logs/main");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let t = "2026-11-25T19:04:53.1Z";
    std::fs::write(dir.join("1.log"), format!("{t} stdout F old\n")).expect("write");
    std::fs::write(
        dir.join("10.log"),
        format!("{t} stdout F a\n{t} stderr F b\n"),
    )
    .expect("write");
    std::fs::write(dir.join("9.log"), format!("{t} stdout F older\n")).expect("write");
    let text = read_newest_log(root.path(), "uid-1", "main", Some(1))
        .await
        .expect("log");
    assert_eq!(text, "b\n");
    // After a rotation the tail continues into the previous generation.
    std::fs::write(
        dir.join("10.log.1"),
        format!("{t} stdout F z1\n{t} stdout F z2\n"),
    )
    .expect("write");
    let text = read_newest_log(root.path(), "uid-1", "main", Some(3))
        .await
        .expect("log");
    assert_eq!(text, "z2\na\nb\n");
    let all = read_newest_log(root.path(), "uid-1", "main", None)
        .await
        .expect("log");
    assert_eq!(all, "z1\nz2\na\nb\n");
    assert!(read_newest_log(root.path(), "uid-1", "other", None)
        .await
        .is_err());
    assert!(read_newest_log(root.path(), "..", "main", None)
        .await
        .is_err());
}
