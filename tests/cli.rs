//! The `scoutfs` command end to end.

use std::process::Command;

fn scoutfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoutfs"))
}

#[test]
fn devinfo_reports_geometry_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("meta.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    let out = scoutfs().arg("devinfo").arg(&p).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("capacity:           8388608 bytes"), "{s}");
    assert!(s.contains("regular file"), "{s}");
    assert!(s.contains("first block read:   ok"), "{s}");
}

#[test]
fn devinfo_on_a_missing_device_fails_clearly() {
    let out = scoutfs()
        .args(["devinfo", "/nonexistent/meta"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/meta") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn version_names_the_build() {
    let out = scoutfs().arg("version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("scoutfs 0."));
}
