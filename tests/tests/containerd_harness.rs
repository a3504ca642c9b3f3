//! The harness's private containerd starts, serves CRI with the test images imported, and
//! leaves nothing behind.

use skerry_tests::containerd::{self, Containerd};

#[tokio::test]
async fn private_containerd_serves_cri_with_local_images() {
    if !containerd::available() {
        eprintln!("SKIPPED: containerd/runc/CNI plugins not installed; run deploy/setup.sh");
        return;
    }
    let ctrd = Containerd::start().await.expect("containerd starts");
    let images = ctrd.ctr(&["images", "ls", "-q"]).expect("ctr images ls");
    assert!(images.contains(containerd::PAUSE_IMAGE), "{images}");
    assert!(images.contains(containerd::BUSYBOX_IMAGE), "{images}");
    let left = ctrd.leftovers().await.expect("leftovers");
    assert!(left.is_empty(), "{left:?}");
}
