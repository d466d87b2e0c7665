//! The raw benchmark runs end to end on a small file and prints a row per
//! case for our engine (and for fio, with ratios, when fio is installed).
//! No figure is asserted: speed is for perf/RESULTS.md, not for tests.

use std::process::Command;

#[test]
fn raw_benchmark_prints_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scoutfs-perf"))
        .args([
            "raw",
            "--size",
            "64M",
            "--runtime",
            "1",
            "--idle",
            "adaptive",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "seqwrite",
        "seqread",
        "randread1",
        "randread32",
        "randwrite1",
        "randwrite32",
    ] {
        assert!(
            stdout.contains(&format!("| {case} | scoutfs |")),
            "no row for {case}:\n{stdout}"
        );
    }
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if fio {
        assert!(
            stdout.contains("| randread32 | fio |"),
            "fio rows missing:\n{stdout}"
        );
        assert!(
            stdout.contains("IOPS ours/fio"),
            "ratios missing:\n{stdout}"
        );
    } else {
        eprintln!("fio not installed: reference rows not checked");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary device file removed"
    );
}

#[test]
fn raw_benchmark_refuses_to_overwrite_without_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("precious.img");
    std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scoutfs-perf"))
        .args(["raw", "--file"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--destroy"));
    assert_eq!(std::fs::read(&f).unwrap(), vec![7u8; 1 << 20]);
}
