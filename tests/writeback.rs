//! Small writes through the mount's writeback cache (fuse/src/writeback.rs),
//! by real processes, each compared with ext4 on a loop device on the same
//! kernel: appends from several processes at once never overlap or lose
//! a byte, cached, written through and mixed on one file; a full data
//! device reaches the writer (at the write(2) that doesn't fit when the
//! mount is short of space or the cache is off; at the write(2) after a
//! write-back failed, for a write-only file opened with room; at fsync or
//! close for a file opened read-write); a writer that isn't the file's owner closes, truncates and
//! touches it without the EPERM the kernel's own time stamps used to get.
//!
//! Needs root, /dev/fuse, mkfs.ext4 and setpriv; without the first two
//! each test prints why and passes vacuously.

#[macro_use]
mod common;

use std::process::Command;

use common::{sh, Ext4, Vol, USER_PYTHON};

/// One appender: `count` records of 13 bytes ("WW:SSSSSSSSS\n") written
/// one write(2) each to PATH opened with O_APPEND, write-only ("wo") or
/// read-write ("rw").
const APPEND: &str = r#"
import os, sys
path, wid, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
acc = os.O_WRONLY if mode == "wo" else os.O_RDWR
fd = os.open(path, acc | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(count):
    rec = b"%02d:%09d\n" % (wid, i)
    n = os.write(fd, rec)
    assert n == len(rec), n
os.close(fd)
"#;

const RECORD: usize = 13;

/// `modes.len()` processes append `count` records each to `path` at once.
fn append_together(path: &str, count: usize, modes: &[&str]) {
    let children: Vec<_> = modes
        .iter()
        .enumerate()
        .map(|(w, mode)| {
            Command::new("python3")
                .args(["-c", APPEND, path, &w.to_string(), &count.to_string(), mode])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        let st = c.wait().unwrap();
        assert!(st.success(), "an appender failed: {st}");
    }
}

/// Every writer's records are whole, in its order, each exactly once, and
/// nothing else is in the file.
fn assert_records(path: &str, count: usize, writers: usize) {
    let data = std::fs::read(path).unwrap();
    assert_eq!(
        data.len(),
        count * writers * RECORD,
        "{path}: size {} for {writers} writers of {count} records",
        data.len()
    );
    let mut next = vec![0usize; writers];
    for (i, rec) in data.chunks(RECORD).enumerate() {
        let text = std::str::from_utf8(rec).unwrap_or("<not utf-8>");
        let parsed = (rec[2] == b':' && rec[12] == b'\n')
            .then(|| {
                Some((
                    text[..2].parse::<usize>().ok()?,
                    text[3..12].parse::<usize>().ok()?,
                ))
            })
            .flatten();
        let Some((w, seq)) = parsed else {
            panic!(
                "{path}: record {i} at byte {} is torn: {text:?}",
                i * RECORD
            );
        };
        assert!(w < writers, "{path}: record {i}: writer {w}");
        assert_eq!(
            seq, next[w],
            "{path}: record {i}: writer {w} out of order or lost"
        );
        next[w] += 1;
    }
    assert_eq!(next, vec![count; writers], "{path}");
}

#[test]
fn appends_from_several_processes_never_overlap_or_lose_bytes() {
    require_fuse!();
    let count = 5000;
    let ext4 = Ext4::new(64 << 20);
    let p = format!("{}/log", ext4.mnt());
    append_together(&p, count, &["wo"; 4]);
    assert_records(&p, count, 4);

    // Cached (the default), written through (write-only opens on a mount
    // whose headroom exceeds its free space) mixed with cached ones (the
    // read-write opens) on one file, and without the writeback cache.
    for (mount_args, modes) in [
        (&[][..], ["wo", "wo", "wo", "wo"]),
        (
            &["--writeback-headroom", "1000000G"][..],
            ["wo", "rw", "wo", "rw"],
        ),
        (&["--no-writeback-cache"][..], ["wo", "wo", "wo", "wo"]),
    ] {
        let mut v = Vol::new(128 << 20, 256 << 20);
        v.mount_with(mount_args);
        let p = format!("{}/log", v.mnt());
        append_together(&p, count, &modes);
        assert_records(&p, count, 4);
        let through = common::counter(&v, "fuse_write_through_opens");
        let wo = modes.iter().filter(|m| **m == "wo").count() as u64;
        match mount_args.first() {
            Some(&"--writeback-headroom") => assert_eq!(through, wo, "{mount_args:?}"),
            _ => assert_eq!(through, 0, "{mount_args:?}"),
        }
        // What the engine stored, once the kernel's cache is gone.
        v.unmount();
        v.mount_with(mount_args);
        assert_records(&p, count, 4);
        v.unmount();
        v.check();
    }
}

/// Fill PATH with CHUNK-byte writes up to TOTAL bytes, opened write-only
/// ("wo") or read-write ("rw"), then fsync it if SYNC is "fsync", then
/// close it. Prints where it first failed ("write:ERRNO", "fsync:ERRNO"
/// or "none"), what close returned and the bytes write(2) accepted.
const FILL: &str = r#"
import errno, os, sys
path, chunk, total, mode, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
acc = os.O_WRONLY if mode == "wo" else os.O_RDWR
fd = os.open(path, acc | os.O_CREAT | os.O_TRUNC, 0o644)
buf = b"\xab" * chunk
written, where = 0, "none"
try:
    while written < total:
        written += os.write(fd, buf[: min(chunk, total - written)])
except OSError as e:
    where = "write:" + errno.errorcode[e.errno]
if sync == "fsync" and where == "none":
    try:
        os.fsync(fd)
    except OSError as e:
        where = "fsync:" + errno.errorcode[e.errno]
try:
    os.close(fd)
    closed = "ok"
except OSError as e:
    closed = errno.errorcode[e.errno]
print(where, closed, written)
"#;

/// Run FILL; (where, close, bytes accepted).
fn fill(path: &str, total: u64, mode: &str, sync: &str) -> (String, String, u64) {
    let out = Command::new("python3")
        .args([
            "-c",
            FILL,
            path,
            &(1u64 << 20).to_string(),
            &total.to_string(),
            mode,
            sync,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 3, "{text}");
    (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
}

/// Every byte of `path` is the fill byte.
fn assert_filled(path: &str, size: u64) {
    let data = std::fs::read(path).unwrap();
    assert_eq!(data.len() as u64, size, "{path}");
    assert!(
        data.iter().all(|&b| b == 0xab),
        "{path}: not the bytes written"
    );
}

#[test]
fn a_full_data_device_reaches_the_writer() {
    require_fuse!();
    let total = 128u64 << 20;
    // ext4 reserves blocks for what it caches: write(2) is refused.
    let ext4 = Ext4::new(64 << 20);
    let p = format!("{}/fill", ext4.mnt());
    let (where_, closed, _) = fill(&p, total, "wo", "none");
    assert_eq!((where_.as_str(), closed.as_str()), ("write:ENOSPC", "ok"));

    // 64 MiB of data, less than the default headroom (twice the kernel's
    // dirty limit for the mount, tens of MiB at least): a write-only open
    // is written through and write(2) gets ENOSPC, as on ext4; what it
    // accepted is stored.
    let mut v = Vol::new(128 << 20, 64 << 20);
    v.mount();
    let p = format!("{}/fill", v.mnt());
    let (where_, closed, accepted) = fill(&p, total, "wo", "none");
    assert_eq!((where_.as_str(), closed.as_str()), ("write:ENOSPC", "ok"));
    assert!(accepted > 32 << 20, "{accepted}");
    assert_filled(&p, accepted);
    // A file opened read-write stays cached (a shared mapping of a
    // written-through file would be refused): the device filling shows
    // at close, and what didn't fit is lost, as on NFS.
    sh(&format!("rm {p}"));
    let (where_, closed, accepted) = fill(&p, total, "rw", "none");
    assert_eq!(
        (where_.as_str(), closed.as_str(), accepted),
        ("none", "ENOSPC", total)
    );
    sh(&format!("rm {p}"));
    v.unmount();
    v.check();

    // Opened write-only while there was room (free space above a 32 MiB
    // headroom): cached. Once a write-back finds the device full, the
    // writer's next write(2) gets ENOSPC, and close reports the bytes the
    // kernel had taken and couldn't store.
    v.mount_with(&["--writeback-headroom", "32M"]);
    let (where_, closed, accepted) = fill(&p, total, "wo", "none");
    assert_eq!(
        (where_.as_str(), closed.as_str()),
        ("write:ENOSPC", "ENOSPC")
    );
    assert!(accepted > 48 << 20 && accepted < total, "{accepted}");
    // syncfs reports a failed write-back on the mount once, as Linux does
    // for any filesystem (the superblock's error, unseen until now).
    let m = v.mnt();
    let sync = || {
        let out = Command::new("sync").args(["-f", &m]).output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(sync().contains("No space left on device"));
    assert_eq!(sync(), "");
    sh(&format!("rm {p}"));
    v.unmount();
    v.check();

    // A headroom of 0 stands for a cache that never hears of a failure:
    // the kernel takes every write and the device's refusal reaches
    // fsync, or close without one.
    v.mount_with(&["--writeback-headroom", "0"]);
    let (where_, closed, accepted) = fill(&p, total, "wo", "fsync");
    assert_eq!(
        (where_.as_str(), closed.as_str(), accepted),
        ("fsync:ENOSPC", "ok", total)
    );
    sh(&format!("rm {p}"));
    let (where_, closed, _) = fill(&p, total, "wo", "none");
    assert_eq!((where_.as_str(), closed.as_str()), ("none", "ENOSPC"));
    sh(&format!("rm {p}"));
    // The space is back once the removal commits.
    let (where_, closed, _) = fill(&p, 16 << 20, "wo", "fsync");
    assert_eq!((where_.as_str(), closed.as_str()), ("none", "ok"));
    assert_filled(&p, 16 << 20);
    v.unmount();
    v.check();

    // Without the writeback cache every write(2) is answered.
    v.mount_with(&["--no-writeback-cache"]);
    let (where_, closed, accepted) = fill(&p, total, "rw", "none");
    assert_eq!((where_.as_str(), closed.as_str()), ("write:ENOSPC", "ok"));
    assert_filled(&p, accepted);
    v.unmount();
    v.check();
}

/// As uid 2000 (not the owner, no capabilities) on a 0666 file of
/// 1000:1000: append and close, ftruncate, truncate, open with O_TRUNC,
/// touch (times "now"), set explicit times. Prints each result.
const NON_OWNER: &str = r#"
import errno, os, sys
p = sys.argv[1]
def run(name, f):
    try:
        f()
        r = "ok"
    except OSError as e:
        r = errno.errorcode[e.errno]
    print(name, r)
def append():
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"appended by another user\n")
    os.close(fd)
def ftruncate():
    fd = os.open(p, os.O_WRONLY)
    os.ftruncate(fd, 10)
    os.close(fd)
def otrunc():
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
run("append", append)
run("ftruncate", ftruncate)
run("truncate", lambda: os.truncate(p, 5))
run("append-again", append)
run("otrunc", otrunc)
run("append-last", append)
run("touch", lambda: os.utime(p))
run("explicit-times", lambda: os.utime(p, (1, 1)))
st = os.stat(p)
print("size", st.st_size)
"#;

fn non_owner(dir: &str) -> String {
    sh(&format!(
        "chmod 1777 {dir} && printf 'hello\\n' > {dir}/f && chown 1000:1000 {dir}/f && chmod 0666 {dir}/f"
    ));
    let out = Command::new("setpriv")
        .args(["--reuid=2000", "--regid=2000", "--clear-groups"])
        .args([USER_PYTHON, "-c", NON_OWNER, &format!("{dir}/f")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_writer_who_is_not_the_owner_closes_truncates_and_touches_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let want = non_owner(&ext4.mnt());
    assert!(want.contains("explicit-times EPERM"), "{want}");
    for args in [&[][..], &["--no-writeback-cache"][..]] {
        let mut v = Vol::new(128 << 20, 64 << 20);
        v.mount_with(args);
        let m = v.mnt();
        assert_eq!(non_owner(&m), want, "{args:?}");
        // The kernel's time stamps reached the engine: the same after a
        // remount.
        let before = sh(&format!("stat -c '%s %Y %y %Z' {m}/f"));
        v.unmount();
        v.mount_with(args);
        assert_eq!(
            sh(&format!("stat -c '%s %Y %y %Z' {m}/f")),
            before,
            "{args:?}"
        );
        v.unmount();
        v.check();
    }
}
