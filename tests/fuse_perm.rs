//! Permissions through a real FUSE mount that only real processes of
//! other users show, each compared with ext4 on a loop device on the same
//! kernel: files that may be executed but not read, for the owner, a
//! member of the file's group, anyone else and root. Users are switched
//! with setpriv.
//!
//! Needs root, /dev/fuse, mkfs.ext4 and setpriv; without the first two
//! each test prints why and passes vacuously.

#[macro_use]
mod common;

use std::process::Command;

use common::{sh, Ext4, Vol};

/// A python for other users: root's `python3` may live where they can't
/// run it (a pyenv shim under /root); Debian's python3 package puts this
/// one there.
const USER_PYTHON: &str = "/usr/bin/python3";

/// Run `program` as root with `args`; its stdout (it must succeed).
fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The callers: (name, uid, gid) with no supplementary
/// groups; `None` is root itself. The files belong to 1000:1000.
const CALLERS: &str = r#"
CALLERS = [("owner", (1000, 1000)), ("group", (2000, 1000)),
           ("other", (2000, 2000)), ("root", None)]
def as_caller(ids, argv):
    if ids is None:
        return argv
    return ["setpriv", "--reuid=%d" % ids[0], "--regid=%d" % ids[1],
            "--clear-groups"] + argv
"#;

/// As root, in DIR: a copy of /bin/true (a real ELF: a script would
/// need read permission for its interpreter) at each mode, owned by
/// 1000:1000; then, as each caller, run it and open it for reading.
/// Prints "mode caller exec=R read=R", R an exit code or an errno name.
const EXEC: &str = r#"
import os, shutil, subprocess, sys
d, py = sys.argv[1], sys.argv[2]
TRY = '''
import errno, subprocess, sys
try:
    exe = "exit%d" % subprocess.run([sys.argv[1]]).returncode
except OSError as e:
    exe = errno.errorcode[e.errno]
try:
    open(sys.argv[1], "rb").close()
    rd = "ok"
except OSError as e:
    rd = errno.errorcode[e.errno]
print("exec=%s read=%s" % (exe, rd))
'''
os.chmod(d, 0o755)
for mode in (0o001, 0o010, 0o100, 0o111, 0o000, 0o004):
    f = "%s/true%04o" % (d, mode)
    shutil.copyfile("/bin/true", f)
    os.chown(f, 1000, 1000)
    os.chmod(f, mode)
    for name, ids in CALLERS:
        r = subprocess.run(as_caller(ids, [py, "-c", TRY, f]),
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        print("%04o %s %s" % (mode, name, r.stdout.strip()))
"#;

#[test]
fn execute_only_files_run_for_their_class_and_refuse_reading_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let program = format!("{CALLERS}{EXEC}");
    let run = |mnt: &str| {
        sh(&format!("mkdir {mnt}/exec"));
        python(&program, &[&format!("{mnt}/exec"), USER_PYTHON])
    };
    let want = run(&ext4.mnt());
    let got = run(&v.mnt());
    assert_eq!(got, want, "scoutfs (left) differs from ext4 (right)");
    // What ext4 did, spelled out: x for the caller's class is enough to
    // run it, and reading is still refused ...
    for line in [
        "0001 other exec=exit0 read=EACCES",
        "0010 group exec=exit0 read=EACCES",
        "0100 owner exec=exit0 read=EACCES",
        // ... only the caller's own class counts ...
        "0001 owner exec=EACCES read=EACCES",
        "0010 other exec=EACCES read=EACCES",
        "0100 group exec=EACCES read=EACCES",
        // ... and root needs an x bit in some class to run a file.
        "0001 root exec=exit0 read=ok",
        "0000 root exec=EACCES read=ok",
        "0004 other exec=EACCES read=ok",
    ] {
        assert!(got.lines().any(|l| l == line), "{line} not in:\n{got}");
    }
    v.unmount();
    v.check();
}
