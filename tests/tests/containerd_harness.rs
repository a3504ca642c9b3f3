//! The harness's private containerd starts and serves CRI; images loaded with
//! `edgecore image import` (no registry) run as pods; a damaged archive gets a clear error; and
//! nothing is left behind.

use k8s_cri::v1 as cri;
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use std::time::Duration;

#[tokio::test]
async fn imported_images_run_through_cri_and_damaged_archives_are_refused() {
    if !containerd::require() {
        return;
    }
    let ctrd = Containerd::start().await.expect("containerd starts");
    let images = ctrd.ctr(&["images", "ls", "-q"]).expect("ctr images ls");
    assert!(images.contains(containerd::PAUSE_IMAGE), "{images}");
    assert!(images.contains(BUSYBOX_IMAGE), "{images}");

    // Importing again is harmless (blobs and snapshots exist; the name is re-pointed).
    let again = ctrd
        .import(&containerd::images().expect("images").join("busybox.tar"))
        .expect("re-import");
    assert!(again.contains(BUSYBOX_IMAGE), "{again}");

    // The imported (unpacked) images run: a sandbox from pause, a container from busybox.
    let mut c = ctrd.cri().await.expect("cri");
    let logs = tempfile::tempdir().expect("tempdir");
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "harness".into(),
            uid: "harness-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "harness".into(),
        log_directory: logs.path().to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let sandbox = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("sandbox")
        .into_inner()
        .pod_sandbox_id;
    let created = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into(), "-c".into(), "echo imported-ok".into()],
                log_path: "main.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .expect("create container")
        .into_inner()
        .container_id;
    c.start_container(cri::StartContainerRequest {
        container_id: created.clone(),
    })
    .await
    .expect("start container");
    let log = logs.path().join("main.log");
    skerry_tests::eventually("the container's output", Duration::from_secs(20), || {
        let log = log.clone();
        async move {
            Ok(std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("imported-ok")))
        }
    })
    .await
    .expect("container ran");
    c.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox.clone(),
    })
    .await
    .expect("stop sandbox");
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox,
    })
    .await
    .expect("remove sandbox");
    let left = ctrd.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "{left:?}");

    // A damaged archive: a clear error, nothing imported.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("usb-stick.tar");
    std::fs::write(
        &bad,
        b"definitely not a tar archive, the stick was unplugged",
    )
    .expect("write");
    let err = ctrd.import(&bad).expect_err("refused").to_string();
    assert!(err.contains("is not a usable OCI image archive"), "{err}");
    let truncated = dir.path().join("truncated.tar");
    let whole =
        std::fs::read(containerd::images().expect("images").join("busybox.tar")).expect("read");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let err = ctrd.import(&truncated).expect_err("refused").to_string();
    assert!(err.contains("damaged tar entry"), "{err}");
}
