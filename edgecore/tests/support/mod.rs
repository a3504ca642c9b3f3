//! Fixtures the edgecore integration tests share (each test file includes this module, and not
//! every file uses every fixture).
#![allow(dead_code)]

pub mod dns;

use protocol::pod::{EdgeContainer, EdgePod, RestartPolicy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A container running `script` under `sh -c`, from `image`, never pulled.
pub fn sh(name: &str, image: &str, script: &str) -> EdgeContainer {
    EdgeContainer {
        name: name.into(),
        image: image.into(),
        image_pull_policy: "Never".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// A pod `pod-<uid>` in namespace `rigs` that is never restarted, with 5 s of grace and no
/// labels; tests change what they need with struct update syntax.
pub fn pod(uid: &str, containers: Vec<EdgeContainer>) -> EdgePod {
    EdgePod {
        namespace: "rigs".into(),
        name: format!("pod-{uid}"),
        uid: uid.into(),
        labels: BTreeMap::new(),
        containers,
        restart_policy: RestartPolicy::Never,
        termination_grace_period_seconds: 5,
        volumes: vec![],
        deletion_grace_period_seconds: None,
        dns: Default::default(),
        init_containers: vec![],
        hosts: Default::default(),
        annotations: Default::default(),
        security: None,
    }
}

/// A shim that takes `delay` (seconds, as `sleep` takes them) before it even starts: a script
/// that sleeps, then runs edgecore's shim. A child process writes it, so that this
/// multi-threaded test process never holds it open for writing (a concurrent fork could inherit
/// that descriptor and make exec-ing the script fail with ETXTBSY).
pub fn slow_shim(dir: &Path, delay: &str) -> PathBuf {
    let path = dir.join("slow-shim");
    let script = format!(
        "#!/bin/sh\n/bin/sleep {delay}\nexec '{}' \"$@\"\n",
        env!("CARGO_BIN_EXE_edgecore")
    );
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
            &script,
            path.to_str().expect("utf-8 path"),
        ])
        .status()
        .expect("sh");
    assert!(status.success());
    path
}
