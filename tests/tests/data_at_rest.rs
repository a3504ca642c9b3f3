//! Secrets at rest are the daemon's alone: data directories are created 0700, a wider one is
//! refused at start with the fix in the message, and cloudcore's files are 0600.

use skerry_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn data_directories_are_private_and_open_ones_are_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let open = tmp.path().join("open");
    std::fs::create_dir(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755))?;
    for (binary, args) in [
        ("cloudcore", vec!["token", "create"]),
        (
            "edgecore",
            vec![
                "join",
                "--server",
                "127.0.0.1:1",
                "--token",
                "abcdef.0123456789abcdef",
                "--ca-hash",
                "sha256:00",
            ],
        ),
    ] {
        let out = Command::new(bin(binary)?)
            .arg("--data-dir")
            .arg(&open)
            .args(&args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} ran on a 0755 data dir");
        assert!(text.contains("chmod 700"), "{binary}: {text}");
    }

    let fresh = tmp.path().join("cloud");
    let out = Command::new(bin("cloudcore")?)
        .arg("--data-dir")
        .arg(&fresh)
        .args(["token", "create"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&fresh), 0o700);
    let mut files = Vec::new();
    files_under(&fresh, &mut files);
    assert!(!files.is_empty());
    for f in files {
        assert_eq!(
            mode(&f) & 0o077,
            0,
            "{} is open to others ({:o})",
            f.display(),
            mode(&f)
        );
    }
    Ok(())
}
