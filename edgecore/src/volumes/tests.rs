//! Unit tests of the volumes: payloads, the atomic writer, path checks, mounts and teardown.

use super::atomic::{timestamp, write_atomic};
use super::mounts::{mount_points_under, parse_mount_points};
use super::paths::{check_host_path, sub_path};
use super::payload::{volume_payload, Payload, PayloadFile};
use super::*;
use protocol::config::{EdgeConfigMap, EdgeSecret};
use protocol::pod::KeyToPath;
use protocol::pod::{RestartPolicy, VolumeMount};
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};

fn file(bytes: &str, mode: u32) -> PayloadFile {
    PayloadFile {
        bytes: bytes.as_bytes().to_vec(),
        mode,
    }
}

fn payload(files: &[(&str, &str, u32)]) -> Payload {
    files
        .iter()
        .map(|(p, b, m)| (PathBuf::from(p), file(b, *m)))
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

fn link(path: &Path) -> String {
    fs::read_link(path)
        .expect("symlink")
        .to_string_lossy()
        .into_owned()
}

/// Entries of `dir` whose name starts with `..` and that are directories.
fn payload_dirs(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".."))
        .collect();
    out.sort();
    out
}

#[test]
fn the_atomic_writer_lays_out_files_with_their_modes_behind_data_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let first = payload(&[
        ("app.conf", "level=1", 0o644),
        ("tls/key.pem", "KEY", 0o600),
        ("empty", "", 0o400),
    ]);
    assert!(write_atomic(dir, &first).expect("write"));
    assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "level=1");
    assert_eq!(fs::read_to_string(dir.join("tls/key.pem")).unwrap(), "KEY");
    assert_eq!(fs::read_to_string(dir.join("empty")).unwrap(), "");
    assert_eq!(mode_of(&dir.join("app.conf")), 0o644);
    assert_eq!(mode_of(&dir.join("tls/key.pem")), 0o600);
    assert_eq!(mode_of(&dir.join("empty")), 0o400);
    // Top-level entries are links through `..data`, which names the payload directory.
    assert_eq!(link(&dir.join("app.conf")), "..data/app.conf");
    assert_eq!(link(&dir.join("tls")), "..data/tls");
    let data = link(&dir.join(DATA_LINK));
    assert!(data.starts_with("..") && data != DATA_LINK, "{data}");
    assert_eq!(payload_dirs(dir), std::slice::from_ref(&data));
    assert!(fs::symlink_metadata(dir.join(&data)).unwrap().is_dir());

    // The same payload again: nothing is rewritten.
    assert!(!write_atomic(dir, &first).expect("write"));
    assert_eq!(link(&dir.join(DATA_LINK)), data);

    // A new payload: swapped in, the old directory and the dropped entries are gone.
    let second = payload(&[("app.conf", "level=2", 0o640), ("new", "n", 0o644)]);
    assert!(write_atomic(dir, &second).expect("write"));
    let data2 = link(&dir.join(DATA_LINK));
    assert_ne!(data2, data);
    assert_eq!(payload_dirs(dir), std::slice::from_ref(&data2));
    assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "level=2");
    assert_eq!(mode_of(&dir.join("app.conf")), 0o640);
    assert_eq!(fs::read_to_string(dir.join("new")).unwrap(), "n");
    for gone in ["tls", "empty"] {
        assert!(fs::symlink_metadata(dir.join(gone)).is_err(), "{gone} left");
    }
    // Only a mode change is a change too.
    let third = payload(&[("app.conf", "level=2", 0o600), ("new", "n", 0o644)]);
    assert!(write_atomic(dir, &third).expect("write"));
    assert_eq!(mode_of(&dir.join("app.conf")), 0o600);
    // An empty payload leaves an empty volume.
    assert!(write_atomic(dir, &Payload::new()).expect("write"));
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n == DATA_LINK), "{names:?}");
    assert!(fs::read_dir(dir.join(DATA_LINK)).unwrap().next().is_none());
}

#[test]
fn the_atomic_writer_repairs_what_a_crash_left() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let p = payload(&[("a", "1", 0o644)]);
    write_atomic(dir, &p).expect("write");
    // A crash after making a payload directory and a temporary link, and before making a
    // user-visible link.
    fs::create_dir(dir.join("..2001_01_01_00_00_00.000000000")).unwrap();
    std::os::unix::fs::symlink("..nowhere", dir.join(DATA_LINK_TMP)).unwrap();
    fs::remove_file(dir.join("a")).unwrap();
    assert!(!write_atomic(dir, &p).expect("write"));
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    assert_eq!(payload_dirs(dir).len(), 1);
    assert!(fs::symlink_metadata(dir.join(DATA_LINK_TMP)).is_err());
}

/// Readers of a volume being updated over and over never see a file that is partly one
/// version and partly another, nor (through one resolution of `..data`) files of two
/// versions: an in-place writer fails this.
#[test]
fn readers_never_see_a_partial_update() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    const LEN: usize = 64 * 1024;
    let version = |v: u8| {
        let text = String::from_utf8(vec![b'a' + v; LEN]).unwrap();
        payload(&[("one", &text, 0o644), ("two", &text, 0o644)])
    };
    write_atomic(&dir, &version(0)).expect("write");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let dir = dir.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) {
                // Each file through its own link: one whole version.
                for name in ["one", "two"] {
                    match fs::read(dir.join(name)) {
                        Ok(bytes) => {
                            assert_eq!(bytes.len(), LEN, "{name}: partial file");
                            assert!(bytes.iter().all(|b| *b == bytes[0]), "{name}: mixed");
                            reads += 1;
                        }
                        // Resolved just before its directory was removed: not partial.
                        Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
                    }
                }
                // Both files of one resolution of `..data`: the same version.
                if let Ok(resolved) = fs::canonicalize(dir.join(DATA_LINK)) {
                    if let (Ok(a), Ok(b)) = (
                        fs::read(resolved.join("one")),
                        fs::read(resolved.join("two")),
                    ) {
                        assert_eq!(a, b, "two versions behind one ..data");
                    }
                }
            }
            reads
        })
    };
    for round in 1..=60u8 {
        write_atomic(&dir, &version(round % 26)).expect("write");
    }
    done.store(true, Ordering::SeqCst);
    let reads = reader.join().expect("the reader saw a partial update");
    assert!(reads > 0);
    assert_eq!(payload_dirs(&dir).len(), 1, "old payload directories left");
}

#[test]
fn timestamps_are_utc_calendar_dates() {
    assert_eq!(timestamp(0, 0), "1970_01_01_00_00_00.000000000");
    assert_eq!(timestamp(951_782_400, 5), "2000_02_29_00_00_00.000000005");
    assert_eq!(
        timestamp(1_700_000_000, 123_456_789),
        "2023_11_14_22_13_20.123456789"
    );
    assert_eq!(timestamp(4_107_542_399, 0), "2100_02_28_23_59_59.000000000");
}

#[test]
fn mountinfo_paths_are_unescaped() {
    let info = "36 35 98:0 / /mnt/with\\040space rw - ext3 /dev/root rw\n\
                37 35 0:40 / /plain rw shared:1 - tmpfs tmpfs rw\n\
                garbage\n";
    assert_eq!(
        parse_mount_points(info),
        [PathBuf::from("/mnt/with space"), PathBuf::from("/plain")]
    );
}

#[test]
fn host_path_types_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let regular = dir.join("file");
    fs::write(&regular, "x").unwrap();
    let socket = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let missing = dir.join("missing");
    let ok = |p: &Path, kind: &str| check_host_path(p, kind);

    assert!(ok(dir, "Directory").is_ok());
    assert!(ok(&regular, "File").is_ok());
    assert!(ok(&socket, "Socket").is_ok());
    assert!(ok(Path::new("/dev/null"), "CharDevice").is_ok());
    for (path, kind) in [
        (&regular, "Directory"),
        (&dir.to_path_buf(), "File"),
        (&regular, "Socket"),
        (&regular, "CharDevice"),
        (&PathBuf::from("/dev/null"), "BlockDevice"),
    ] {
        let err = ok(path, kind).expect_err(kind);
        assert!(err.contains(&format!("as type {kind} requires")), "{err}");
    }
    let err = ok(&missing, "Directory").expect_err("missing");
    assert!(err.contains("does not exist"), "{err}");
    // A block device, if this machine shows one.
    if let Some(block) = fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .find(|e| e.file_type().map(|t| t.is_block_device()).unwrap_or(false))
    {
        assert!(ok(&block.path(), "BlockDevice").is_ok());
    }
    // No type: anything, even nothing.
    assert!(ok(&missing, "").is_ok());
    // The OrCreate types make what is missing and refuse the wrong kind.
    let made_dir = dir.join("a/b");
    assert!(ok(&made_dir, "DirectoryOrCreate").is_ok());
    assert!(made_dir.is_dir());
    assert!(ok(&regular, "DirectoryOrCreate").is_err());
    let made_file = dir.join("a/f");
    assert!(ok(&made_file, "FileOrCreate").is_ok());
    assert!(made_file.is_file());
    assert!(ok(&made_dir, "FileOrCreate").is_err());
    let err = ok(dir, "Folder").expect_err("unknown type");
    assert!(err.contains("DirectoryOrCreate"), "{err}");
    let err = ok(Path::new("relative"), "").expect_err("relative");
    assert!(err.contains("absolute"), "{err}");
}

#[test]
fn sub_paths_stay_inside_their_volume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("vol");
    fs::create_dir(&base).unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside"), base.join("escape")).unwrap();
    std::os::unix::fs::symlink("..", base.join("up")).unwrap();
    fs::write(base.join("file"), "x").unwrap();

    for (sub, needle) in [
        ("/etc", "relative"),
        ("../outside", "\"..\""),
        ("a/../../outside", "\"..\""),
        ("escape", "leads out"),
        ("escape/deeper", "leads out"),
        ("up", "leads out"),
    ] {
        let err = sub_path("v", &base, sub, true).expect_err(sub);
        assert!(err.to_string().contains(needle), "{sub}: {err}");
        assert!(err.to_string().contains(&format!("{sub:?}")), "{err}");
        assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
    }
    assert!(!tmp.path().join("outside/deeper").exists());
    // Inside: the path as given; a missing one is made a directory when allowed.
    assert_eq!(
        sub_path("v", &base, "file", false).unwrap(),
        base.join("file")
    );
    assert_eq!(
        sub_path("v", &base, "new/dir", true).unwrap(),
        base.join("new/dir")
    );
    assert!(base.join("new/dir").is_dir());
    let err = sub_path("v", &base, "absent", false).expect_err("absent");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

fn config_volume(name: &str, source: VolumeSource) -> Volume {
    Volume {
        name: name.into(),
        source,
    }
}

fn cm_source(name: &str, items: Vec<KeyToPath>, mode: Option<u32>, optional: bool) -> VolumeSource {
    VolumeSource::ConfigMap {
        name: name.into(),
        items,
        default_mode: mode,
        optional,
    }
}

fn secret_source(name: &str, items: Vec<KeyToPath>, optional: bool) -> VolumeSource {
    VolumeSource::Secret {
        name: name.into(),
        items,
        default_mode: None,
        optional,
    }
}

fn item(key: &str, path: &str, mode: Option<u32>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode,
    }
}

fn configs() -> ConfigSet {
    let mut set = ConfigSet::default();
    set.insert_config_map(EdgeConfigMap {
        namespace: "rigs".into(),
        name: "app".into(),
        data: BTreeMap::from([
            ("app.conf".into(), "level=1".into()),
            ("other".into(), "o".into()),
        ]),
        binary_data: BTreeMap::from([("blob".into(), vec![0, 1])]),
    });
    set.insert_secret(EdgeSecret {
        namespace: "rigs".into(),
        name: "creds".into(),
        kind: "Opaque".into(),
        data: BTreeMap::from([("password".into(), b"hunter2".to_vec())]),
    });
    set
}

fn modes(p: &Payload) -> Vec<(String, u32)> {
    p.iter()
        .map(|(k, f)| (k.to_string_lossy().into_owned(), f.mode))
        .collect()
}

#[test]
fn payloads_map_keys_to_paths_with_modes() {
    let c = configs();
    let all = volume_payload(
        "rigs",
        &config_volume("v", cm_source("app", vec![], None, false)),
        &c,
    )
    .unwrap();
    assert_eq!(
        modes(&all),
        [
            ("app.conf".into(), 0o644),
            ("blob".into(), 0o644),
            ("other".into(), 0o644)
        ]
    );
    assert_eq!(all[Path::new("blob")].bytes, [0, 1]);
    let secret = volume_payload(
        "rigs",
        &config_volume("v", secret_source("creds", vec![], false)),
        &c,
    )
    .unwrap();
    assert_eq!(modes(&secret), [("password".into(), 0o600)]);
    // items choose keys and paths; defaultMode and the item's mode apply.
    let picked = volume_payload(
        "rigs",
        &config_volume(
            "v",
            cm_source(
                "app",
                vec![
                    item("app.conf", "conf/app.conf", None),
                    item("other", "o", Some(0o400)),
                ],
                Some(0o640),
                false,
            ),
        ),
        &c,
    )
    .unwrap();
    assert_eq!(
        modes(&picked),
        [("conf/app.conf".into(), 0o640), ("o".into(), 0o400)]
    );
    assert_eq!(picked[Path::new("conf/app.conf")].bytes, b"level=1");
}

#[test]
fn missing_objects_and_keys_fail_unless_optional() {
    let c = configs();
    let payload_of = |source| volume_payload("rigs", &config_volume("v", source), &c);
    // Optional: an empty payload, or the keys that exist.
    assert!(payload_of(cm_source("absent", vec![], None, true))
        .unwrap()
        .is_empty());
    assert!(payload_of(secret_source("absent", vec![], true))
        .unwrap()
        .is_empty());
    let some = payload_of(cm_source(
        "app",
        vec![item("nope", "n", None), item("other", "o", None)],
        None,
        true,
    ))
    .unwrap();
    assert_eq!(modes(&some), [("o".into(), 0o644)]);

    let err = payload_of(secret_source("absent", vec![], false)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("volume \"v\""), "{text}");
    assert!(
        text.contains("secret \"absent\" (namespace \"rigs\")"),
        "{text}"
    );
    assert!(text.contains("starts once it arrives"), "{text}");
    assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
    let err = payload_of(secret_source("creds", vec![item("user", "u", None)], false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no key \"user\""), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn bad_paths_and_modes_are_refused() {
    let c = configs();
    for (path, needle) in [
        ("/etc/passwd", "relative"),
        ("../x", "\"..\""),
        ("a/../../x", "\"..\""),
        ("..data", "start with"),
        ("", "empty"),
        (".", "names no file"),
    ] {
        let err = volume_payload(
            "rigs",
            &config_volume(
                "v",
                cm_source("app", vec![item("other", path, None)], None, false),
            ),
            &c,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(needle), "{path:?}: {err}");
    }
    let err = volume_payload(
        "rigs",
        &config_volume("v", cm_source("app", vec![], Some(0o1777), false)),
        &c,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("defaultMode 0o1777"), "{err}");
    let err = volume_payload(
        "rigs",
        &config_volume(
            "v",
            cm_source(
                "app",
                vec![item("other", "a", None), item("app.conf", "a/b", None)],
                None,
                false,
            ),
        ),
        &c,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("below it"), "{err}");
}

fn mount(name: &str, sub_path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: format!("/mnt/{name}"),
        read_only: false,
        sub_path: sub_path.into(),
    }
}

fn pod_with(volumes: Vec<Volume>, mounts: Vec<VolumeMount>) -> EdgePod {
    EdgePod {
        namespace: "rigs".into(),
        name: "p".into(),
        uid: "uid-1".into(),
        labels: BTreeMap::new(),
        containers: vec![EdgeContainer {
            name: "c".into(),
            volume_mounts: mounts,
            ..EdgeContainer::default()
        }],
        restart_policy: RestartPolicy::Always,
        termination_grace_period_seconds: 1,
        volumes,
        deletion_grace_period_seconds: None,
        dns: Default::default(),
        init_containers: Vec::new(),
        hosts: Default::default(),
        annotations: Default::default(),
        security: None,
    }
}

fn mounted_under(dir: &Path) -> Vec<PathBuf> {
    mount_points_under(&fs::canonicalize(dir).unwrap())
}

#[tokio::test]
async fn volumes_are_prepared_reused_updated_and_torn_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pods");
    let volumes = Volumes::new(root.clone()).with_tmpfs(false);
    let host = tmp.path().join("host");
    let p = pod_with(
        vec![
            config_volume(
                "scratch",
                VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            ),
            config_volume("cfg", cm_source("app", vec![], None, false)),
            config_volume("creds", secret_source("creds", vec![], false)),
            config_volume(
                "host",
                VolumeSource::HostPath {
                    path: host.to_string_lossy().into_owned(),
                    kind: "DirectoryOrCreate".into(),
                },
            ),
        ],
        vec![
            mount("scratch", ""),
            mount("cfg", ""),
            mount("cfg", "app.conf"),
            mount("creds", ""),
            mount("host", "sub"),
        ],
    );
    let c = Arc::new(configs());
    let mounts = volumes
        .prepare(&p, &p.containers[0], c.clone())
        .await
        .expect("prepare");
    let vdir = root.join("uid-1/volumes");
    let paths: Vec<(PathBuf, bool)> = mounts
        .iter()
        .map(|m| (m.host_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        paths,
        [
            (vdir.join("scratch"), false),
            (vdir.join("cfg"), true),
            (vdir.join("cfg/app.conf"), true),
            (vdir.join("creds"), true),
            (host.join("sub"), false),
        ]
    );
    assert_eq!(mounts[2].container_path, "/mnt/cfg");
    assert_eq!(mounts[2].volume, "cfg");
    assert_eq!(mode_of(&vdir.join("scratch")), 0o777);
    assert_eq!(mode_of(&vdir.join("cfg")), 0o755);
    // Without tmpfs, a secret volume is a private directory on disk.
    assert_eq!(mode_of(&vdir.join("creds")), 0o700);
    assert_eq!(fs::read(vdir.join("creds/password")).unwrap(), b"hunter2");
    assert_eq!(mode_of(&vdir.join("creds/password")), 0o600);
    assert!(host.join("sub").is_dir());

    // Prepared again (a restart): the emptyDir keeps its contents.
    fs::write(vdir.join("scratch/kept"), "x").unwrap();
    volumes
        .prepare(&p, &p.containers[0], c.clone())
        .await
        .expect("again");
    assert!(vdir.join("scratch/kept").exists());

    // An update reaches the files; a missing object keeps the last payload.
    let mut changed = (*c).clone();
    changed.insert_config_map(EdgeConfigMap {
        namespace: "rigs".into(),
        name: "app".into(),
        data: BTreeMap::from([("app.conf".into(), "level=2".into())]),
        binary_data: BTreeMap::new(),
    });
    volumes.refresh(&p, Arc::new(changed.clone())).await;
    assert_eq!(
        fs::read_to_string(vdir.join("cfg/app.conf")).unwrap(),
        "level=2"
    );
    assert!(!vdir.join("cfg/other").exists());
    let mut gone = changed.clone();
    gone.remove(&protocol::messages::ObjectRef {
        kind: protocol::messages::ObjectKind::ConfigMap,
        namespace: "rigs".into(),
        name: "app".into(),
    });
    volumes.refresh(&p, Arc::new(gone.clone())).await;
    assert_eq!(
        fs::read_to_string(vdir.join("cfg/app.conf")).unwrap(),
        "level=2"
    );
    volumes
        .prepare(&p, &p.containers[0], Arc::new(gone))
        .await
        .expect("kept payload");

    // Teardown removes the volumes and the pod directory, not the host path.
    volumes.teardown("uid-1").await.expect("teardown");
    assert!(!root.join("uid-1").exists());
    assert!(host.join("sub").is_dir());
    volumes.teardown("uid-1").await.expect("idempotent");
}

#[tokio::test]
async fn a_volume_that_is_not_ready_names_what_is_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let volumes = Volumes::new(tmp.path().to_path_buf()).with_tmpfs(false);
    let c = Arc::new(configs());
    let undefined = pod_with(vec![], vec![mount("nowhere", "")]);
    let err = volumes
        .prepare(&undefined, &undefined.containers[0], c.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"nowhere\""), "{err}");
    let waiting = pod_with(
        vec![config_volume(
            "cfg",
            cm_source("later", vec![], None, false),
        )],
        vec![mount("cfg", "")],
    );
    let err = volumes
        .prepare(&waiting, &waiting.containers[0], c.clone())
        .await
        .unwrap_err();
    assert_eq!(err.waiting_reason(), "CreateContainerConfigError");
    assert!(err.to_string().contains("configmap \"later\""), "{err}");
    let missing_key = pod_with(
        vec![config_volume("cfg", cm_source("app", vec![], None, false))],
        vec![mount("cfg", "nope")],
    );
    let err = volumes
        .prepare(&missing_key, &missing_key.containers[0], c.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not exist in the volume"),
        "{err}"
    );
    let bad_type = pod_with(
        vec![config_volume(
            "h",
            VolumeSource::HostPath {
                path: "/dev/null".into(),
                kind: "Directory".into(),
            },
        )],
        vec![mount("h", "")],
    );
    let err = volumes
        .prepare(&bad_type, &bad_type.containers[0], c.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("as type Directory requires"),
        "{err}"
    );
    // Without a volume directory, only hostPath volumes work.
    let none = Volumes::without_root();
    let p = pod_with(
        vec![config_volume(
            "s",
            VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        )],
        vec![mount("s", "")],
    );
    let err = none.prepare(&p, &p.containers[0], c).await.unwrap_err();
    assert!(err.to_string().contains("no volume directory"), "{err}");
    none.teardown("uid-1").await.expect("nothing to tear down");
}

/// As root, memory-backed emptyDirs and secret volumes are tmpfs mounts (with the size
/// limit), mounted once, and unmounted by the teardown.
#[tokio::test]
async fn memory_volumes_are_tmpfs_mounts_that_the_teardown_unmounts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pods");
    let volumes = Volumes::new(root.clone());
    let p = pod_with(
        vec![
            config_volume(
                "mem",
                VolumeSource::EmptyDir {
                    memory: true,
                    size_limit_bytes: Some(1 << 20),
                },
            ),
            config_volume("creds", secret_source("creds", vec![], false)),
        ],
        vec![mount("mem", ""), mount("creds", "")],
    );
    let c = Arc::new(configs());
    volumes
        .prepare(&p, &p.containers[0], c.clone())
        .await
        .expect("prepare");
    volumes
        .prepare(&p, &p.containers[0], c)
        .await
        .expect("prepare again");
    let vdir = root.join("uid-1/volumes");
    let mounted = mounted_under(&vdir);
    if nix::unistd::geteuid().is_root() {
        let canonical = fs::canonicalize(&vdir).unwrap();
        assert_eq!(
            mounted,
            [canonical.join("mem"), canonical.join("creds")],
            "each mounted once"
        );
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.contains(&*canonical.join("mem").to_string_lossy()))
            .expect("mem in mountinfo");
        assert!(line.contains("size=1024k"), "{line}");
        assert_eq!(mode_of(&vdir.join("creds")), 0o700);
    } else {
        assert!(mounted.is_empty());
    }
    assert_eq!(fs::read(vdir.join("creds/password")).unwrap(), b"hunter2");
    volumes.teardown("uid-1").await.expect("teardown");
    assert!(!root.join("uid-1").exists());
    let canonical_root = fs::canonicalize(&root).unwrap();
    assert!(
        mount_points_under(&canonical_root).is_empty(),
        "something is still mounted"
    );
}

#[tokio::test]
async fn teardown_keeps_what_the_runtime_still_has_in_the_pod_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let volumes = Volumes::new(tmp.path().to_path_buf()).with_tmpfs(false);
    let p = pod_with(
        vec![config_volume(
            "s",
            VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: None,
            },
        )],
        vec![mount("s", "")],
    );
    volumes
        .prepare(&p, &p.containers[0], Arc::new(ConfigSet::default()))
        .await
        .expect("prepare");
    fs::write(tmp.path().join("uid-1/pod.json"), "{}").unwrap();
    assert_eq!(volumes.pods_with_volumes().await, ["uid-1"]);
    volumes.teardown("uid-1").await.expect("teardown");
    assert!(!tmp.path().join("uid-1/volumes").exists());
    assert!(tmp.path().join("uid-1/pod.json").exists());
    assert!(volumes.pods_with_volumes().await.is_empty());
}

#[tokio::test]
async fn fs_group_gives_empty_dir_config_map_and_secret_volumes_to_the_group_but_not_host_paths() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pods");
    let volumes = Volumes::new(root.clone()).with_tmpfs(false);
    let host = tmp.path().join("host");
    fs::create_dir(&host).unwrap();
    let host_gid = fs::metadata(&host).unwrap().gid();
    // As root any group can be given; otherwise only one of ours.
    let gid = if nix::unistd::geteuid().is_root() {
        2000
    } else {
        nix::unistd::getegid().as_raw()
    };
    let mut p = pod_with(
        vec![
            config_volume(
                "scratch",
                VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            ),
            config_volume("cfg", cm_source("app", vec![], None, false)),
            config_volume("creds", secret_source("creds", vec![], false)),
            config_volume(
                "host",
                VolumeSource::HostPath {
                    path: host.to_string_lossy().into_owned(),
                    kind: String::new(),
                },
            ),
        ],
        vec![
            mount("scratch", ""),
            mount("cfg", ""),
            mount("creds", ""),
            mount("host", ""),
        ],
    );
    p.security = Some(Box::new(protocol::security::PodSecurity {
        fs_group: Some(i64::from(gid)),
        ..Default::default()
    }));
    volumes
        .prepare(&p, &p.containers[0], Arc::new(configs()))
        .await
        .expect("prepare");
    let vdir = root.join("uid-1/volumes");
    let meta = |p: &Path| fs::metadata(p).unwrap();
    assert_eq!(meta(&vdir.join("scratch")).gid(), gid);
    assert_eq!(mode_of(&vdir.join("scratch")), 0o2777);
    assert_eq!(meta(&vdir.join("cfg/app.conf")).gid(), gid);
    assert_eq!(mode_of(&vdir.join("cfg/app.conf")), 0o644);
    // A secret's 0600 file becomes readable by the group (not writable: the volume is
    // read-only), and its directory searchable.
    assert_eq!(meta(&vdir.join("creds/password")).gid(), gid);
    assert_eq!(mode_of(&vdir.join("creds/password")), 0o640);
    assert_eq!(mode_of(&vdir.join("creds")), 0o2750);
    // hostPath volumes are the host's: kubelet does not change them either.
    assert_eq!(meta(&host).gid(), host_gid);
    // A file a container made meanwhile is not changed by the next container's start.
    fs::write(vdir.join("scratch/mine"), b"x").unwrap();
    fs::set_permissions(vdir.join("scratch/mine"), fs::Permissions::from_mode(0o600)).unwrap();
    volumes
        .prepare(&p, &p.containers[0], Arc::new(configs()))
        .await
        .expect("prepare again");
    assert_eq!(mode_of(&vdir.join("scratch/mine")), 0o600);
    assert_eq!(mode_of(&vdir.join("scratch")), 0o2777);
}
