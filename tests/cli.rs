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

fn sparse(dir: &std::path::Path, name: &str, bytes: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
    p
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = scoutfs().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn mkfs_print_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sparse(dir.path(), "meta", 1 << 30);
    let data = sparse(dir.path(), "data", 2 << 30);
    let (code, out, err) = run(&[
        os("mkfs"),
        meta.as_os_str(),
        data.as_os_str(),
        os("-Q"),
        os("0,127.0.0.1,42000"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("64 KiB meta blocks: 16384"), "{out}");
    assert!(out.contains("quorum slots:    1"), "{out}");

    let (code, out, err) = run(&[os("print"), meta.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("super block:") && out.contains("slot 0: 127.0.0.1:42000"),
        "{out}"
    );
    assert!(
        out.contains("meta_alloc[1]") && out.contains("extent ["),
        "{out}"
    );

    let (code, out, err) = run(&[os("check"), meta.as_os_str(), data.as_os_str()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(" 0 problems"), "{out}");
}

#[test]
fn mkfs_refuses_existing_volumes_and_filesystems_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sparse(dir.path(), "meta", 1 << 30);
    let data = sparse(dir.path(), "data", 1 << 30);
    assert_eq!(run(&[os("mkfs"), meta.as_os_str(), data.as_os_str()]).0, 0);
    let (code, _, err) = run(&[os("mkfs"), meta.as_os_str(), data.as_os_str()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with(&format!(
            "scoutfs mkfs: {} holds the metadata device of scoutfs volume 0x",
            meta.display()
        )) && err.ends_with("; use --force to overwrite it\n"),
        "{err}"
    );
    assert_eq!(
        run(&[os("mkfs"), os("-f"), meta.as_os_str(), data.as_os_str()]).0,
        0
    );

    // A real ext4 image made by mkfs.ext4, when it is installed.
    let ext4 = sparse(dir.path(), "ext4", 64 << 20);
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&ext4)
        .status();
    if made.is_ok_and(|s| s.success()) {
        let fresh = sparse(dir.path(), "fresh", 64 << 20);
        let (code, _, err) = run(&[os("mkfs"), os("-A"), fresh.as_os_str(), ext4.as_os_str()]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("ext2/3/4") && err.contains("--force"), "{err}");
        let (code, _, err) = run(&[
            os("mkfs"),
            os("-A"),
            os("-f"),
            fresh.as_os_str(),
            ext4.as_os_str(),
        ]);
        assert_eq!(code, 0, "--force overwrites: {err}");
    } else {
        eprintln!("mkfs.ext4 not available: ext4 detection not exercised");
    }
}

#[test]
fn mkfs_refuses_small_devices_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sparse(dir.path(), "meta", 64 << 20);
    let data = sparse(dir.path(), "data", 64 << 20);
    let (code, _, err) = run(&[os("mkfs"), meta.as_os_str(), data.as_os_str()]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("minimum") && err.contains("--allow-small-size"),
        "{err}"
    );
    let (code, _, err) = run(&[
        os("mkfs"),
        meta.as_os_str(),
        data.as_os_str(),
        os("-Q"),
        os("0,not-an-ip,5"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not-an-ip"), "{err}");
    let (code, _, err) = run(&[
        os("mkfs"),
        os("-A"),
        meta.as_os_str(),
        data.as_os_str(),
        os("-Q"),
        os("15,10.0.0.1,5"),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slot 15"), "{err}");
    let (code, _, err) = run(&[os("mkfs"), os("-A"), meta.as_os_str(), meta.as_os_str()]);
    assert_eq!(code, 2, "{err}");
    let tiny = sparse(dir.path(), "tiny", 1 << 20);
    let (code, _, err) = run(&[os("mkfs"), os("-A"), tiny.as_os_str(), data.as_os_str()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least"), "{err}");
    assert_eq!(
        run(&[os("mkfs"), os("-A"), meta.as_os_str(), data.as_os_str()]).0,
        0
    );
}

#[test]
fn check_reports_a_corrupt_block_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sparse(dir.path(), "meta", 64 << 20);
    let data = sparse(dir.path(), "data", 64 << 20);
    assert_eq!(
        run(&[os("mkfs"), os("-A"), meta.as_os_str(), data.as_os_str()]).0,
        0
    );
    let (_, out, _) = run(&[os("print"), meta.as_os_str()]);
    // The data allocator's root block.
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("data_alloc free"))
        .expect(&out);
    let blkno: u64 = line
        .split("blkno ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut img = std::fs::read(&meta).unwrap();
    img[(blkno as usize) * 65536 + 1000] ^= 0xff;
    std::fs::write(&meta, &img).unwrap();
    let (code, out, err) = run(&[os("check"), meta.as_os_str(), data.as_os_str()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("problem:") && out.contains(&format!("block {blkno}")) && out.contains("Crc"),
        "{out}"
    );
    // print reports the bad block too rather than trusting it.
    let (code, _, err) = run(&[os("print"), meta.as_os_str()]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn print_and_check_say_not_a_scoutfs_volume_for_a_device_without_the_magic() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sparse(dir.path(), "meta", 64 << 20);
    let not = format!(
        "metadata device {}: not a scoutfs volume (no scoutfs super block at byte 65536)\n",
        meta.display()
    );
    let (code, out, err) = run(&[os("print"), meta.as_os_str()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, format!("scoutfs print: {not}"));
    let (code, out, err) = run(&[os("check"), meta.as_os_str(), meta.as_os_str()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, format!("scoutfs check: {not}"));
}
