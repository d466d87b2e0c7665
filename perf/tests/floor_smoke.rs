//! The concurrency benchmarks run end to end against the FUSE floor with
//! tiny parameters and print their rows, and leave no mount behind. No
//! figure is asserted: speed is for perf/RESULTS.md, not for tests.
//! Skipped without root, /dev/fuse or (for randread) fio.

use std::process::Command;

fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipping: needs root and /dev/fuse");
        return false;
    }
    true
}

fn perf(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_scoutfs-perf"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    assert!(!mounts.contains(&*d), "a mount left under {d}:\n{mounts}");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "work directory removed"
    );
    stdout
}

#[test]
fn probe_and_meta4_run_against_the_floor() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = perf(
        &[
            "probe",
            "--targets",
            "floor",
            "--seconds",
            "1",
            "--write-size",
            "8M",
            "--creates",
            "200",
        ],
        dir.path(),
    );
    for phase in ["idle", "fsync writes", "creates"] {
        assert!(
            out.contains(&format!("| floor | {phase} |")),
            "no {phase} row:\n{out}"
        );
    }
    let out = perf(
        &["meta4", "--targets", "floor", "--files", "100"],
        dir.path(),
    );
    for phase in ["create", "stat", "unlink"] {
        assert!(
            out.contains(&format!("| floor | {phase} |")),
            "no {phase} row:\n{out}"
        );
    }
}

#[test]
fn randread_reads_the_floor_beside_a_raw_file() {
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !can_mount() || !fio {
        eprintln!("skipping: needs fio too");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = perf(
        &[
            "randread",
            "--targets",
            "floor",
            "--runtime",
            "1",
            "--file-size",
            "16M",
            "--depths",
            "1,2",
        ],
        dir.path(),
    );
    for row in ["| raw io_uring | 2 |", "| floor | 1 |", "| floor | 2 |"] {
        assert!(out.contains(row), "no {row} row:\n{out}");
    }
}
