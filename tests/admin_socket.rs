//! The admin socket of a real mount: `scoutfs counters` lists, beside the
//! FUSE and volume counters, each request type the engine served with its
//! count, errors and latency; every user may read them, only root may
//! commit or reset through the socket (the peer's credentials come from
//! the kernel, SO_PEERCRED).
//!
//! Needs root and /dev/fuse; without them each test prints why and passes
//! vacuously.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{counter, scoutfs, sh, Vol, USER_PYTHON};

/// Ask the admin socket `sock` for `request` as `uid` (through setpriv,
/// with no groups); the reply's first line.
fn ask_as(uid: u32, sock: &str, request: &str) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile("rb").read().decode().splitlines()[0])
"#;
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args([USER_PYTHON, "-c", script, sock, request])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn requests_through_the_mount_show_up_per_type_with_their_latency() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 64 << 20);
    v.mount();
    let m = v.mnt();
    let before = counter(&v, "fuse_create");
    sh(&format!(
        "mkdir {m}/d && for i in 1 2 3; do echo $i > {m}/d/f$i; done && stat {m}/d/f2 >/dev/null && ls -l {m}/d >/dev/null"
    ));
    // The FUSE counters are there as ever, and the engine's per type.
    assert!(counter(&v, "fuse_create") >= before + 4);
    assert!(counter(&v, "commits") > 0);
    assert_eq!(counter(&v, "op_mkdir_count"), 1);
    assert_eq!(counter(&v, "op_create_count"), 3);
    assert!(op_count(&v, "op_write_count") + op_count(&v, "op_write_back_count") >= 3);
    assert!(counter(&v, "op_lookup_count") > 0);
    let (p50, p99, max) = (
        counter(&v, "op_create_p50_us"),
        counter(&v, "op_create_p99_us"),
        counter(&v, "op_create_max_us"),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{p50} {p99} {max}");
    // A lookup of a missing name is the caller's answer, counted.
    sh(&format!("! stat {m}/d/nothing 2>/dev/null"));
    assert!(counter(&v, "op_lookup_errors") >= 1);

    let sock = v.path("admin.sock").to_string_lossy().into_owned();
    // Root may commit and start the counts again.
    let seq = counter(&v, "committed_seq");
    let out = scoutfs_admin(&sock, "sync");
    assert!(out.starts_with("ok"), "{out}");
    assert!(counter(&v, "committed_seq") > seq);
    assert!(scoutfs_admin(&sock, "reset-counters").starts_with("ok"));
    let text = counters_text(&v);
    assert!(!text.contains("op_mkdir_count"), "{text}");

    // Another user reads the counters, and is refused the rest.
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(ask_as(65534, &sock, "counters"), "ok");
    let refused = format!("error {} ", libc::EPERM);
    assert!(ask_as(65534, &sock, "sync").starts_with(&refused));
    assert!(ask_as(65534, &sock, "reset-counters").starts_with(&refused));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_scoutfs"))
        .arg("counters")
        .arg(&sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("commits "), "{out:?}");
    // Not a request: refused, and the socket goes on serving.
    assert!(scoutfs_admin(&sock, "rm -rf /").starts_with(&format!("error {} ", libc::EINVAL)));
    assert!(counter(&v, "commits") > 0);
    v.unmount();
    v.check();
}

/// One request to `sock` as root; the whole reply.
fn scoutfs_admin(sock: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// A per-op counter, 0 if the kind has not been asked (those are not
/// listed).
fn op_count(v: &Vol, name: &str) -> u64 {
    counters_text(v)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn counters_text(v: &Vol) -> String {
    let out = scoutfs()
        .arg("counters")
        .arg(v.path("admin.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
