use super::*;
use protocol::messages::{ObjectRef, Upsert};
use protocol::pod::RestartPolicy;
use protocol::pod::{EnvFromKind, EnvValue, VolumeSource};
use std::path::PathBuf;

/// Opens the cache in `dir`, waiting (up to 5 s) for a handle dropped just before to
/// release sled's file lock: a flush still running on a blocking thread holds the database
/// a moment after the `Cache` that started it is gone.
fn open(dir: &Path) -> Cache {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Cache::open(dir) {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn pod(name: &str, image: &str) -> EdgePod {
    EdgePod {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        labels: Default::default(),
        containers: vec![protocol::pod::EdgeContainer {
            name: "c".into(),
            image: image.into(),
            image_pull_policy: "Never".into(),
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }],
        restart_policy: RestartPolicy::Always,
        termination_grace_period_seconds: 1,
        volumes: vec![],
        deletion_grace_period_seconds: None,
        dns: Default::default(),
        init_containers: Vec::new(),
        hosts: Default::default(),
        annotations: Default::default(),
        security: None,
    }
}

fn up(rev: u64, p: EdgePod) -> Upsert {
    Upsert {
        revision: rev,
        object: EdgeObject::Pod(p),
    }
}

#[tokio::test]
async fn batches_apply_idempotently_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        assert_eq!(c.acked_revision(), 0);
        c.apply(&SyncBatch {
            revision: 5,
            snapshot: true,
            more: false,
            upserts: vec![up(3, pod("a", "v1")), up(5, pod("b", "v1"))],
            deletes: vec![],
        })
        .await
        .unwrap();
        // A resend of an older version does not overwrite a newer one.
        c.apply(&SyncBatch {
            revision: 5,
            snapshot: false,
            more: false,
            upserts: vec![up(7, pod("a", "v2"))],
            deletes: vec![],
        })
        .await
        .unwrap();
        c.apply(&SyncBatch {
            revision: 7,
            snapshot: false,
            more: false,
            upserts: vec![up(3, pod("a", "v1"))],
            deletes: vec![ObjectRef {
                kind: ObjectKind::Pod,
                namespace: "default".into(),
                name: "b".into(),
            }],
        })
        .await
        .unwrap();
    }
    let c = open(dir.path());
    assert_eq!(c.acked_revision(), 7);
    let pods = c.pods();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].containers[0].image, "v2");
    // A snapshot drops what it does not list.
    c.apply(&SyncBatch {
        revision: 9,
        snapshot: true,
        more: false,
        upserts: vec![up(8, pod("z", "v1"))],
        deletes: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        c.pods().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["z"]
    );
}

#[tokio::test]
async fn corrupt_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.apply(&SyncBatch {
        revision: 1,
        snapshot: false,
        more: false,
        upserts: vec![up(1, pod("a", "v1"))],
        deletes: vec![],
    })
    .await
    .unwrap();
    c.pods
        .insert(b"default/broken", b"\xff\xff".to_vec())
        .unwrap();
    assert_eq!(c.pods().len(), 1);
}

fn config_map(name: &str, value: &str) -> EdgeConfigMap {
    EdgeConfigMap {
        namespace: "default".into(),
        name: name.into(),
        data: std::collections::BTreeMap::from([("k".into(), value.into())]),
        binary_data: Default::default(),
    }
}

fn secret(name: &str, value: &[u8]) -> EdgeSecret {
    EdgeSecret {
        namespace: "default".into(),
        name: name.into(),
        kind: "Opaque".into(),
        data: std::collections::BTreeMap::from([("k".into(), value.to_vec())]),
    }
}

/// A pod referencing ConfigMap `cm` through a volume and Secret `s` through `envFrom`.
fn consumer(name: &str, cm: &str, s: &str) -> EdgePod {
    let mut p = pod(name, "v1");
    p.volumes.push(protocol::pod::Volume {
        name: "cfg".into(),
        source: VolumeSource::ConfigMap {
            name: cm.into(),
            items: vec![],
            default_mode: None,
            optional: false,
        },
    });
    p.containers[0].env_from.push(protocol::pod::EnvFromSource {
        prefix: String::new(),
        source: EnvFromKind::Secret(s.into()),
        optional: false,
    });
    p
}

fn cm_up(rev: u64, c: EdgeConfigMap) -> Upsert {
    Upsert {
        revision: rev,
        object: EdgeObject::ConfigMap(c),
    }
}

fn secret_up(rev: u64, s: EdgeSecret) -> Upsert {
    Upsert {
        revision: rev,
        object: EdgeObject::Secret(s),
    }
}

fn del(kind: ObjectKind, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn batch(revision: u64, upserts: Vec<Upsert>, deletes: Vec<ObjectRef>) -> SyncBatch {
    SyncBatch {
        revision,
        snapshot: false,
        more: false,
        upserts,
        deletes,
    }
}

fn cm_value(c: &Cache, name: &str) -> Option<String> {
    c.configs()
        .config_map("default", name)
        .map(|m| m.data["k"].clone())
}

#[tokio::test]
async fn configs_follow_the_revision_rules_of_pods_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        c.apply(&batch(
            4,
            vec![
                up(2, consumer("p", "cfg", "creds")),
                cm_up(3, config_map("cfg", "v3")),
                secret_up(4, secret("creds", b"s4")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        // An older resend does not overwrite; a newer version does.
        c.apply(&batch(5, vec![cm_up(1, config_map("cfg", "v1"))], vec![]))
            .await
            .unwrap();
        assert_eq!(cm_value(&c, "cfg").as_deref(), Some("v3"));
        // Two versions in one batch: the newest wins whatever the order.
        c.apply(&batch(
            8,
            vec![
                cm_up(8, config_map("cfg", "v8")),
                cm_up(6, config_map("cfg", "v6")),
            ],
            vec![],
        ))
        .await
        .unwrap();
        assert_eq!(cm_value(&c, "cfg").as_deref(), Some("v8"));
        // Deleting a config that is not there is a no-op, and a ConfigMap delete does not
        // touch a pod or Secret of the same name.
        c.apply(&batch(
            9,
            vec![],
            vec![
                del(ObjectKind::ConfigMap, "absent"),
                del(ObjectKind::ConfigMap, "p"),
                del(ObjectKind::ConfigMap, "creds"),
            ],
        ))
        .await
        .unwrap();
        assert_eq!(c.pods().len(), 1);
    }
    let c = open(dir.path());
    assert_eq!(c.acked_revision(), 9);
    let configs = c.configs();
    assert_eq!(configs.len(), 2);
    assert_eq!(
        configs.config_map("default", "cfg").unwrap().data["k"],
        "v8"
    );
    assert_eq!(configs.secret("default", "creds").unwrap().data["k"], b"s4");
    // A deleted config is gone; the pod that still references it waits for it.
    c.apply(&batch(10, vec![], vec![del(ObjectKind::Secret, "creds")]))
        .await
        .unwrap();
    assert!(c.configs().secret("default", "creds").is_none());
    assert_eq!(c.pods().len(), 1);
}

#[tokio::test]
async fn a_snapshot_replaces_configs_too() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let mut both = consumer("p", "a", "s");
    both.containers[0].env.push(protocol::pod::EnvVar {
        name: "B".into(),
        value: EnvValue::ConfigMapKey {
            name: "b".into(),
            key: "k".into(),
            optional: true,
        },
    });
    c.apply(&batch(
        3,
        vec![
            up(1, both.clone()),
            cm_up(2, config_map("a", "1")),
            cm_up(3, config_map("b", "1")),
            secret_up(3, secret("s", b"1")),
        ],
        vec![],
    ))
    .await
    .unwrap();
    assert_eq!(c.configs().len(), 3);
    // The snapshot lists a (at an older revision than cached: kept as cached) and s, not b.
    c.apply(&SyncBatch {
        revision: 12,
        snapshot: true,
        more: false,
        upserts: vec![
            up(1, both),
            cm_up(1, config_map("a", "stale")),
            secret_up(11, secret("s", b"2")),
        ],
        deletes: vec![],
    })
    .await
    .unwrap();
    let configs = c.configs();
    assert_eq!(configs.config_map("default", "a").unwrap().data["k"], "1");
    assert!(configs.config_map("default", "b").is_none());
    assert_eq!(configs.secret("default", "s").unwrap().data["k"], b"2");
}

#[tokio::test]
async fn configs_no_pod_references_are_collected_in_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.apply(&batch(
        5,
        vec![
            up(1, consumer("one", "shared", "one-creds")),
            up(2, consumer("two", "shared", "two-creds")),
            cm_up(3, config_map("shared", "x")),
            secret_up(4, secret("one-creds", b"1")),
            secret_up(5, secret("two-creds", b"2")),
            // Nobody references this one: never kept.
            cm_up(5, config_map("stray", "x")),
        ],
        vec![],
    ))
    .await
    .unwrap();
    let names = |c: &Cache| {
        let configs = c.configs();
        let mut out = Vec::new();
        for n in ["shared", "stray"] {
            if configs.config_map("default", n).is_some() {
                out.push(n);
            }
        }
        for n in ["one-creds", "two-creds"] {
            if configs.secret("default", n).is_some() {
                out.push(n);
            }
        }
        out
    };
    assert_eq!(names(&c), ["shared", "one-creds", "two-creds"]);
    // Pod one leaves: its secret goes with it, the shared map stays for pod two.
    c.apply(&batch(6, vec![], vec![del(ObjectKind::Pod, "one")]))
        .await
        .unwrap();
    assert_eq!(names(&c), ["shared", "two-creds"]);
    // Pod two changes to reference other objects: the old ones go.
    c.apply(&batch(
        7,
        vec![up(7, consumer("two", "new", "new-creds"))],
        vec![],
    ))
    .await
    .unwrap();
    assert!(names(&c).is_empty());
    // A pod with a corrupt entry references nothing.
    c.apply(&batch(
        9,
        vec![
            cm_up(8, config_map("new", "x")),
            secret_up(9, secret("new-creds", b"3")),
        ],
        vec![],
    ))
    .await
    .unwrap();
    assert_eq!(c.configs().len(), 2);
    c.pods.insert(b"default/two", b"\xff".to_vec()).unwrap();
    c.apply(&batch(10, vec![], vec![])).await.unwrap();
    assert!(c.configs().is_empty());
}

#[tokio::test]
async fn corrupt_configs_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.apply(&batch(
        2,
        vec![
            up(1, consumer("p", "cfg", "s")),
            cm_up(2, config_map("cfg", "v")),
        ],
        vec![],
    ))
    .await
    .unwrap();
    c.secrets.insert(b"default/s", b"\x01".to_vec()).unwrap();
    let configs = c.configs();
    assert_eq!(configs.len(), 1);
    assert!(configs.config_map("default", "cfg").is_some());
    // Any upsert replaces the corrupt entry, whatever its revision.
    c.apply(&batch(3, vec![secret_up(1, secret("s", b"ok"))], vec![]))
        .await
        .unwrap();
    assert_eq!(c.configs().secret("default", "s").unwrap().data["k"], b"ok");
}

#[test]
fn a_cache_from_before_configs_forgets_its_acked_revision_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(ACKED_KEY, &42u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    // sled's flusher thread lets go of the file lock a moment after the last handle drops.
    let reopen = || {
        for _ in 0..100 {
            if let Ok(c) = Cache::open(dir.path()) {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("cache did not reopen");
    };
    let c = reopen();
    assert_eq!(c.acked_revision(), 0, "an old layout resyncs in full");
    c.meta.insert(ACKED_KEY, &7u64.to_be_bytes()).unwrap();
    c.db.flush().unwrap();
    drop(c);
    let c = reopen();
    assert_eq!(
        c.acked_revision(),
        7,
        "the current layout keeps its revision"
    );
}

#[test]
fn config_refs_cover_env_env_from_and_volumes() {
    let mut p = consumer("p", "vol-cm", "from-secret");
    p.containers[0].env.push(protocol::pod::EnvVar {
        name: "A".into(),
        value: EnvValue::SecretKey {
            name: "key-secret".into(),
            key: "k".into(),
            optional: false,
        },
    });
    p.volumes.push(protocol::pod::Volume {
        name: "tls".into(),
        source: VolumeSource::Secret {
            name: "vol-secret".into(),
            items: vec![],
            default_mode: None,
            optional: true,
        },
    });
    let refs: Vec<String> = config_refs(&p).iter().map(|r| r.to_string()).collect();
    assert_eq!(
        refs,
        [
            "ConfigMap default/vol-cm",
            "Secret default/from-secret",
            "Secret default/key-secret",
            "Secret default/vol-secret",
        ]
    );
}

#[test]
fn config_set_reports_what_changed() {
    let mut a = ConfigSet::default();
    a.insert_config_map(config_map("same", "1"));
    a.insert_config_map(config_map("changed", "1"));
    a.insert_secret(secret("gone", b"1"));
    let mut b = a.clone();
    b.insert_config_map(config_map("changed", "2"));
    b.remove(&del(ObjectKind::Secret, "gone"));
    b.insert_secret(secret("new", b"hunter2"));
    let changed: Vec<String> = b.changes_from(&a).iter().map(|r| r.to_string()).collect();
    assert_eq!(
        changed,
        [
            "ConfigMap default/changed",
            "Secret default/gone",
            "Secret default/new"
        ]
    );
    assert!(a.changes_from(&a).is_empty());
    // Secret values never show in its Debug form.
    let shown = format!("{b:?}");
    assert!(shown.contains("new"), "{shown}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("104, 117, 110"),
        "{shown}"
    );
}

/// Waits until no handle holds sled's lock on the cache in `dir` (the flusher thread of a
/// dropped handle lets go a moment later), so that a test may damage the files.
fn wait_closed(dir: &Path) {
    let file = std::fs::File::open(dir.join("db")).unwrap();
    for _ in 0..250 {
        if file.try_lock().is_ok() {
            file.unlock().unwrap();
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the cache stayed locked");
}

/// The ways a cache was damaged on purpose in issue #11.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate,
    Empty,
    Randomise,
    OverwriteMiddle,
    /// The same, with sled's snapshot file left in place (sled reads the damage as such).
    OverwriteMiddleKeepSnapshot,
    /// sled's own configuration file overwritten: sled refuses to open.
    Conf,
    DeleteDir,
}

fn damage(dir: &Path, how: Damage) {
    use std::io::{Seek, SeekFrom, Write};
    if matches!(how, Damage::Conf) {
        let conf = dir.join("conf");
        let len = std::fs::metadata(&conf).unwrap().len();
        std::fs::write(
            &conf,
            (0..len).map(|i| (i * 7 + 1) as u8).collect::<Vec<u8>>(),
        )
        .unwrap();
        return;
    }
    let path = dir.join("db");
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let random = |n: u64| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
    match how {
        Damage::Truncate => f.set_len(len / 2).unwrap(),
        Damage::Empty => f.set_len(0).unwrap(),
        Damage::Randomise => f.write_all(&random(len)).unwrap(),
        Damage::OverwriteMiddle | Damage::OverwriteMiddleKeepSnapshot => {
            // The records of a small cache sit at the start of the file: "mid-file" is the
            // middle of what was written, not of the preallocated segment.
            let used = used_len(&path);
            f.seek(SeekFrom::Start(used / 3)).unwrap();
            f.write_all(&random((used / 3).max(64))).unwrap();
        }
        Damage::Conf => unreachable!(),
        Damage::DeleteDir => {
            drop(f);
            std::fs::remove_dir_all(dir).unwrap();
            return;
        }
    }
    f.sync_all().unwrap();
    if matches!(how, Damage::OverwriteMiddleKeepSnapshot) {
        return;
    }
    // sled's snapshot would let it rebuild the pages from before the damage.
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// Offset past the last non-zero byte of `path`.
fn used_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |p| p as u64 + 1)
}

async fn a_cache_with_pods(dir: &Path) {
    let c = open(dir);
    c.apply(&SyncBatch {
        revision: 4,
        snapshot: true,
        more: false,
        upserts: vec![
            up(3, pod("a", "v1")),
            up(4, pod("b", "v1")),
            cm_up(2, config_map("cfg", "x")),
        ],
        deletes: vec![],
    })
    .await
    .unwrap();
    assert_eq!(c.unknown_reason(), None, "a snapshot makes the state known");
    drop(c);
    wait_closed(dir);
}

fn corrupt_copies(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cache.corrupt-")
        })
        .map(|e| e.path())
        .collect()
}

#[tokio::test]
async fn each_form_of_damage_is_detected_reported_and_replaced_by_an_unknown_state() {
    for how in [
        Damage::Truncate,
        Damage::Empty,
        Damage::Randomise,
        Damage::OverwriteMiddle,
        Damage::OverwriteMiddleKeepSnapshot,
        Damage::Conf,
        Damage::DeleteDir,
    ] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        a_cache_with_pods(&dir).await;
        damage(&dir, how);
        let c = open(&dir);
        let reason = c
            .unknown_reason()
            .unwrap_or_else(|| panic!("{how:?}: damage taken for an empty desired state"));
        assert!(reason.contains("unreadable"), "{how:?}: {reason}");
        assert!(c.pods().is_empty(), "{how:?}");
        assert_eq!(c.acked_revision(), 0, "{how:?}: the node resyncs in full");
        let copies = corrupt_copies(root.path());
        // (A deleted directory was recreated empty by sled: that is what is moved aside.)
        assert_eq!(copies.len(), 1, "{how:?}: the damaged cache is kept aside");
        // Still unknown after a restart with no cloud: the flag is in the fresh cache.
        drop(c);
        wait_closed(&dir);
        let c = open(&dir);
        assert!(c.unknown_reason().is_some(), "{how:?}");
        assert_eq!(corrupt_copies(root.path()).len(), copies.len(), "{how:?}");
        // A delta does not end it; the cloud's snapshot does.
        c.apply(&batch(5, vec![up(5, pod("a", "v2"))], vec![]))
            .await
            .unwrap();
        assert!(c.unknown_reason().is_some(), "{how:?}");
        c.apply(&SyncBatch {
            revision: 6,
            snapshot: true,
            more: false,
            upserts: vec![up(5, pod("a", "v2"))],
            deletes: vec![],
        })
        .await
        .unwrap();
        assert_eq!(c.unknown_reason(), None, "{how:?}");
        drop(c);
        wait_closed(&dir);
        let c = open(&dir);
        assert_eq!(c.unknown_reason(), None, "{how:?}");
        assert_eq!(c.pods().len(), 1, "{how:?}");
    }
}

#[tokio::test]
async fn an_intact_cache_reopens_known_and_a_new_one_starts_unknown() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    {
        let c = open(&dir);
        assert!(c.unknown_reason().unwrap().contains("new cache"));
    }
    wait_closed(&dir);
    a_cache_with_pods(&dir).await;
    let c = open(&dir);
    assert_eq!(c.unknown_reason(), None);
    assert_eq!(c.pods().len(), 2);
    assert!(corrupt_copies(root.path()).is_empty());
}

#[tokio::test]
async fn a_lost_marker_is_rewritten_and_a_cache_from_before_markers_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    a_cache_with_pods(&dir).await;
    std::fs::remove_file(recovery::marker_path(&dir)).unwrap();
    {
        let c = open(&dir);
        assert_eq!(c.unknown_reason(), None);
        assert_eq!(c.pods().len(), 2);
    }
    wait_closed(&dir);
    assert!(recovery::marker_path(&dir).exists());
    // An edgecore from before markers: no id in the cache, no marker.
    {
        let c = open(&dir);
        c.meta.remove(CACHE_ID_KEY).unwrap();
        c.db.flush().unwrap();
    }
    wait_closed(&dir);
    std::fs::remove_file(recovery::marker_path(&dir)).unwrap();
    let c = open(&dir);
    assert_eq!(c.unknown_reason(), None);
    assert_eq!(c.pods().len(), 2);
    assert!(corrupt_copies(root.path()).is_empty());
}

#[tokio::test]
async fn undecodable_entries_make_the_state_unknown_and_force_a_full_resync() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    a_cache_with_pods(&dir).await;
    {
        let c = open(&dir);
        c.pods.insert(b"default/a", b"\xff\xff".to_vec()).unwrap();
        c.db.flush().unwrap();
    }
    wait_closed(&dir);
    let c = open(&dir);
    let reason = c
        .unknown_reason()
        .expect("a corrupt entry is not an absent pod");
    assert!(reason.contains("1 cache entries"), "{reason}");
    assert_eq!(c.acked_revision(), 0);
    // Nothing moved aside: the rest of the cache is good and still used.
    assert!(corrupt_copies(root.path()).is_empty());
    assert_eq!(c.pods_checked().0.len(), 1);
    assert_eq!(c.pods_checked().1, 1);
}

#[test]
fn a_cache_held_by_another_process_is_an_error_and_is_not_moved() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    let _held = Cache::open(&dir).unwrap();
    let e = Cache::open(&dir).err().expect("a second open must fail");
    assert!(e.to_string().contains("another edgecore"), "{e}");
    assert!(corrupt_copies(root.path()).is_empty());
}

#[test]
fn sled_errors_are_sorted_into_damage_and_the_environment() {
    use recovery::{classify, SledFault};
    let damaged = sled::Error::Corruption { at: None, bt: () };
    assert!(matches!(classify(&damaged), SledFault::Damaged(_)));
    let lock = sled::Error::Io(std::io::Error::other(
        "could not acquire lock on \"db\": busy",
    ));
    assert!(matches!(classify(&lock), SledFault::Environment(m) if m.contains("another edgecore")));
    let full = sled::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(matches!(classify(&full), SledFault::Environment(m) if m.contains("disk space")));
    let eof = sled::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    assert!(matches!(classify(&eof), SledFault::Damaged(_)));
}

#[test]
fn only_the_newest_damaged_copies_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    let mut moved = Vec::new();
    for i in 0..5 {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("db"), format!("copy {i}")).unwrap();
        moved.push(recovery::move_aside(&dir).unwrap().unwrap());
    }
    assert!(!dir.exists());
    let mut left = corrupt_copies(root.path());
    left.sort();
    let mut newest = moved[2..].to_vec();
    newest.sort();
    assert_eq!(left, newest);
    assert_eq!(
        std::fs::read_to_string(moved[4].join("db")).unwrap(),
        "copy 4"
    );
    // Nothing to move when the directory is gone.
    assert_eq!(recovery::move_aside(&dir).unwrap(), None);
}

#[tokio::test]
async fn damage_found_while_running_asks_the_link_for_a_full_resync() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    a_cache_with_pods(&dir).await;
    let c = open(&dir);
    c.pods.insert(b"default/b", b"\xff".to_vec()).unwrap();
    assert_eq!(c.pods_checked().1, 1);
    c.forget_for_resync("1 cached pods cannot be decoded")
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), c.resync_wanted())
        .await
        .expect("the link is told");
    assert_eq!(c.acked_revision(), 0);
    assert!(c.unknown_reason().is_some());
    // The snapshot the next session gets replaces the damage and ends the unknown state.
    c.apply(&SyncBatch {
        revision: 7,
        snapshot: true,
        more: false,
        upserts: vec![up(6, pod("b", "v2"))],
        deletes: vec![],
    })
    .await
    .unwrap();
    assert_eq!(c.unknown_reason(), None);
    assert_eq!(c.pods_checked().1, 0);
    assert_eq!(c.pods().len(), 1);
    // And a restart finds it consistent with its marker.
    drop(c);
    wait_closed(&dir);
    let c = open(&dir);
    assert_eq!(c.unknown_reason(), None);
    assert_eq!(c.acked_revision(), 7);
    assert!(corrupt_copies(root.path()).is_empty());
}

fn svc(name: &str, port: u16) -> Upsert {
    Upsert {
        revision: 0,
        object: EdgeObject::Service(protocol::service::EdgeService {
            namespace: "default".into(),
            name: name.into(),
            kind: protocol::service::ServiceKind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
            ports: vec![protocol::service::ServicePort {
                name: String::new(),
                protocol: protocol::service::L4Protocol::Tcp,
                port,
                node_port: None,
            }],
            client_ip_affinity_secs: None,
            internal_traffic_local: false,
            external_traffic_local: false,
            publish_not_ready: false,
        }),
    }
}

fn settings(cidr: &str) -> Upsert {
    Upsert {
        revision: 0,
        object: EdgeObject::Network(protocol::service::ClusterNetwork {
            node: "n1".into(),
            pod_cidr: Some(cidr.into()),
            service_cidr: "10.96.0.0/12".into(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
        }),
    }
}

fn at(rev: u64, mut u: Upsert) -> Upsert {
    u.revision = rev;
    u
}

#[tokio::test]
async fn services_and_network_settings_are_kept_like_any_object_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.apply(&batch(
        5,
        vec![
            at(2, settings("10.244.1.0/24")),
            at(3, svc("web", 80)),
            at(4, svc("db", 5432)),
        ],
        vec![],
    ))
    .await
    .unwrap();
    let set = c.network();
    assert_eq!(set.services.len(), 2);
    assert_eq!(
        set.network.as_ref().and_then(|n| n.pod_cidr.as_deref()),
        Some("10.244.1.0/24")
    );
    // An older resend is ignored, a newer change replaces, a delete removes; no Service is
    // dropped for having no pod (only configs are collected).
    c.apply(&batch(
        7,
        vec![at(1, svc("web", 1)), at(6, svc("db", 5433))],
        vec![ObjectRef {
            kind: ObjectKind::Service,
            namespace: "default".into(),
            name: "web".into(),
        }],
    ))
    .await
    .unwrap();
    drop(c);
    let c = open(dir.path());
    let set = c.network();
    assert_eq!(set.services.len(), 1);
    assert_eq!(set.services[0].ports[0].port, 5433);
    assert!(set.network.is_some());
    // A snapshot without them removes them all.
    let mut snap = batch(9, vec![at(8, svc("new", 80))], vec![]);
    snap.snapshot = true;
    c.apply(&snap).await.unwrap();
    let set = c.network();
    assert_eq!(set.services.len(), 1);
    assert_eq!(set.services[0].name, "new");
    assert!(set.network.is_none(), "the snapshot did not carry settings");
}

#[tokio::test]
async fn pods_cached_by_a_v4_edgecore_run_on_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        let mut snap = batch(5, vec![up(4, pod("web", "busybox"))], vec![]);
        snap.snapshot = true;
        c.apply(&snap).await.unwrap();
        // What a v4 edgecore left: layout 2, pods without DNS settings.
        let old = Cached {
            revision: 4,
            object: super::layout2::V4Pod::from(pod("web", "busybox")),
        };
        c.pods
            .insert(b"default/web", codec::encode(&old).unwrap())
            .unwrap();
        c.meta.insert(SCHEMA_KEY, &2u32.to_be_bytes()).unwrap();
        c.db.flush().unwrap();
    }
    let c = open(dir.path());
    let (pods, corrupt) = c.pods_checked();
    assert_eq!(corrupt, 0, "upgraded, not reported corrupt");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0], pod("web", "busybox"));
    assert!(
        c.unknown_reason().is_none(),
        "the pods run on from the cache"
    );
    assert_eq!(
        c.acked_revision(),
        0,
        "the new layout still resyncs once, for the network tree"
    );
}

#[tokio::test]
async fn pods_cached_by_a_v6_edgecore_run_on_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        let mut snap = batch(5, vec![up(4, pod("web", "busybox"))], vec![]);
        snap.snapshot = true;
        c.apply(&snap).await.unwrap();
        // What a v6 edgecore left: layout 3, containers without stdin and tty.
        let old = Cached {
            revision: 4,
            object: super::layout3::V6Pod::from(pod("web", "busybox")),
        };
        c.pods
            .insert(b"default/web", codec::encode(&old).unwrap())
            .unwrap();
        c.meta.insert(SCHEMA_KEY, &3u32.to_be_bytes()).unwrap();
        c.db.flush().unwrap();
    }
    let c = open(dir.path());
    let (pods, corrupt) = c.pods_checked();
    assert_eq!(corrupt, 0, "upgraded, not reported corrupt");
    assert_eq!(pods, vec![pod("web", "busybox")]);
    assert!(
        c.unknown_reason().is_none(),
        "the pods run on from the cache"
    );
    let schema = c.meta.get(SCHEMA_KEY).unwrap().unwrap();
    assert_eq!(schema.as_ref(), &SCHEMA.to_be_bytes());
}

#[tokio::test]
async fn pods_cached_by_a_v7_edgecore_run_on_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open(dir.path());
        let mut snap = batch(5, vec![up(4, pod("web", "busybox"))], vec![]);
        snap.snapshot = true;
        c.apply(&snap).await.unwrap();
        // What a v7 edgecore left: layout 4, pods without init containers.
        let old = Cached {
            revision: 4,
            object: protocol::compat::v7::EdgePod::try_from(pod("web", "busybox")).unwrap(),
        };
        c.pods
            .insert(b"default/web", codec::encode(&old).unwrap())
            .unwrap();
        c.meta.insert(SCHEMA_KEY, &4u32.to_be_bytes()).unwrap();
        c.db.flush().unwrap();
    }
    let c = open(dir.path());
    let (pods, corrupt) = c.pods_checked();
    assert_eq!(corrupt, 0, "upgraded, not reported corrupt");
    assert_eq!(pods, vec![pod("web", "busybox")]);
    assert!(
        c.unknown_reason().is_none(),
        "the pods run on from the cache"
    );
    assert_eq!(
        c.acked_revision(),
        0,
        "the new layout resyncs once: the hub withheld pods with init containers from v7"
    );
    let schema = c.meta.get(SCHEMA_KEY).unwrap().unwrap();
    assert_eq!(schema.as_ref(), &SCHEMA.to_be_bytes());
}

fn ingress_set(rev: u64, secrets: &[&str]) -> Upsert {
    use protocol::ingress::*;
    Upsert {
        revision: rev,
        object: EdgeObject::Ingress(EdgeIngresses {
            node: "n1".into(),
            ingresses: vec![EdgeIngress {
                namespace: "default".into(),
                name: "web".into(),
                default_backend: None,
                rules: vec![],
                tls: secrets
                    .iter()
                    .map(|s| IngressTls {
                        hosts: vec![],
                        secret: s.to_string(),
                    })
                    .collect(),
            }],
        }),
    }
}

#[tokio::test]
async fn the_ingress_sets_tls_secrets_are_kept_while_the_set_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    c.apply(&batch(
        3,
        vec![
            ingress_set(3, &["tls-a"]),
            secret_up(2, secret("tls-a", b"a")),
            secret_up(2, secret("stray", b"s")),
        ],
        vec![],
    ))
    .await
    .unwrap();
    assert!(c.configs().secret("default", "tls-a").is_some());
    assert!(c.configs().secret("default", "stray").is_none());
    assert_eq!(
        c.network().ingresses.map(|s| s.ingresses.len()),
        Some(1),
        "the set is cached"
    );
    // A later batch without the set keeps what the cached set names.
    c.apply(&batch(4, vec![], vec![])).await.unwrap();
    assert!(c.configs().secret("default", "tls-a").is_some());
    // The set stops naming it: it goes in that batch.
    c.apply(&batch(5, vec![ingress_set(5, &[])], vec![]))
        .await
        .unwrap();
    assert!(c.configs().secret("default", "tls-a").is_none());
    drop(c);
    let c = open(dir.path());
    assert_eq!(
        c.network().ingresses.map(|s| s.ingresses[0].tls.len()),
        Some(0),
        "the newest set survives a reopen"
    );
}

#[tokio::test]
async fn the_network_generation_moves_only_with_batches_that_write_network_objects() {
    let root = tempfile::tempdir().unwrap();
    let c = open(&root.path().join("cache"));
    assert_eq!(c.network_generation(), 0);
    c.apply(&batch(1, vec![up(1, pod("a", "busybox"))], vec![]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 0, "a pod-only batch");
    c.apply(&batch(2, vec![at(2, svc("web", 80))], vec![]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 1);
    // An older version of the same Service (a resend after a reconnect) writes nothing.
    c.apply(&batch(3, vec![at(1, svc("web", 80))], vec![]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 1, "an ignored stale upsert");
    c.apply(&batch(4, vec![at(4, settings("10.244.1.0/24"))], vec![]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 2);
    c.apply(&batch(5, vec![], vec![del(ObjectKind::Service, "web")]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 3, "a delete");
    c.apply(&batch(6, vec![], vec![del(ObjectKind::Pod, "a")]))
        .await
        .unwrap();
    assert_eq!(c.network_generation(), 3);
}
