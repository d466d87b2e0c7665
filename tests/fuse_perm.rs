//! Permissions through a real FUSE mount that only real processes of
//! other users show, each compared with ext4 on a loop device on the same
//! kernel: files that may be executed but not read, and the privileges
//! (setuid, setgid, security.capability) that every path changing a file
//! drops, for the owner, a member of the file's group, anyone else and
//! root. Users are switched with setpriv.
//!
//! Needs root, /dev/fuse, mkfs.ext4 and setpriv; without the first two
//! each test prints why and passes vacuously.

#[macro_use]
mod common;

use common::{py, sh, Ext4, Vol, USER_PYTHON};

/// The callers of both tests: (name, uid, gid) with no supplementary
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
        py(&program, &[&format!("{mnt}/exec"), USER_PYTHON])
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

/// As one caller: change FILE by one path, print "ok" or the errno.
const CHANGE: &str = r#"
import ctypes, errno, mmap, os, sys
f, how, src = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
def check(r):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
try:
    if how == "write":
        fd = os.open(f, os.O_WRONLY)
        os.pwrite(fd, b"w" * 10, 0)
        os.close(fd)
    elif how == "odirect":
        fd = os.open(f, os.O_WRONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4096)
        buf.write(b"d" * 4096)
        os.pwrite(fd, buf, 0)
        os.close(fd)
    elif how == "mmap":
        fd = os.open(f, os.O_RDWR)
        m = mmap.mmap(fd, 4096)
        m[0:1] = b"m"
        m.flush()
        m.close()
        os.close(fd)
    elif how == "ftruncate":
        fd = os.open(f, os.O_WRONLY)
        os.ftruncate(fd, 100)
        os.close(fd)
    elif how == "truncate":
        os.truncate(f, 100)
    elif how == "otrunc":
        os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
    elif how == "fallocate":
        fd = os.open(f, os.O_WRONLY)
        check(libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(16384)))
        os.close(fd)
    elif how == "copy":
        fi, fo = os.open(src, os.O_RDONLY), os.open(f, os.O_WRONLY)
        os.copy_file_range(fi, fo, 100, 0, 0)
        os.close(fi)
        os.close(fo)
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;

/// A file's state: "name mode size capability-or-errno".
const STATE: &str = r#"
import errno, os
def state(f):
    st = os.stat(f)
    try:
        cap = os.getxattr(f, "security.capability").hex()
    except OSError as e:
        cap = errno.errorcode[e.errno]
    return "%o %d %s" % (st.st_mode, st.st_size, cap)
"#;

/// As root, in DIR: for each caller, path and privilege, a file of 8 KiB
/// owned by 1000:1000 at that mode (and with a capability, cap_net_raw+ep
/// as setcap writes it), changed by the caller. Prints "caller path mode
/// cap: result -> state".
const PRIVS: &str = r#"
import os, subprocess, sys
d, py = sys.argv[1], sys.argv[2]
# security.capability v2: effective, permitted cap_net_raw (bit 13).
CAP = bytes.fromhex("01000002") + (1 << 13).to_bytes(4, "little") + bytes(12)
PATHS = ["write", "odirect", "mmap", "ftruncate", "truncate", "otrunc",
         "fallocate", "copy"]
# Each bit alone (setgid with and without group x), then all of them.
PRIVS = [(0o4777, False), (0o2777, False), (0o2767, False), (0o0777, True),
         (0o6777, True)]
os.chmod(d, 0o777)
src = d + "/src"
with open(src, "wb") as s:
    s.write(b"s" * 4096)
for name, ids in CALLERS:
    for how in PATHS:
        for mode, cap in PRIVS:
            f = "%s/%s-%s-%04o%s" % (d, name, how, mode, "-cap" if cap else "")
            with open(f, "wb") as w:
                w.write(b"a" * 8192)
            os.chown(f, 1000, 1000)
            os.chmod(f, mode)
            if cap:
                os.setxattr(f, "security.capability", CAP)
            r = subprocess.run(as_caller(ids, [py, "-c", CHANGE, f, how, src]),
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            print("%s %s %04o %s: %s -> %s" % (name, how, mode,
                  "cap" if cap else "-", r.stdout.strip(), state(f)))
"#;

/// As root: the state of every file in DIR, by name.
const LIST: &str = r#"
import os, sys
for n in sorted(os.listdir(sys.argv[1])):
    print(n, state(sys.argv[1] + "/" + n))
"#;

#[test]
fn every_path_that_changes_a_file_drops_privileges_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let program = format!("{CALLERS}{STATE}CHANGE = '''{CHANGE}'''\n{PRIVS}");
    let run = |mnt: &str| {
        sh(&format!("mkdir {mnt}/privs"));
        py(&program, &[&format!("{mnt}/privs"), USER_PYTHON])
    };
    let want = run(&ext4.mnt());
    let got = run(&v.mnt());
    assert_eq!(got, want, "scoutfs (left) differs from ext4 (right)");
    // What ext4 did, spelled out. Setuid always goes and setgid with
    // group x; setgid without it goes for a writer outside the group.
    let cap = "0100000200200000000000000000000000000000";
    for line in [
        "other odirect 4777 -: ok -> 100777 8192 ENODATA",
        "other odirect 2777 -: ok -> 100777 8192 ENODATA",
        "other odirect 2767 -: ok -> 100767 8192 ENODATA",
        "group odirect 2767 -: ok -> 102767 8192 ENODATA",
        "owner truncate 6777 cap: ok -> 100777 100 ENODATA",
        // Anyone who may write removes a capability, unprivileged.
        "other fallocate 0777 cap: ok -> 100777 16384 ENODATA",
        "other copy 0777 cap: ok -> 100777 8192 ENODATA",
        "group otrunc 0777 cap: ok -> 100777 0 ENODATA",
        // Root (CAP_FSETID) keeps setuid and setgid, not capabilities.
        "root write 6777 cap: ok -> 106777 8192 ENODATA",
        "root ftruncate 2777 -: ok -> 102777 100 ENODATA",
    ] {
        assert!(got.lines().any(|l| l == line), "{line} not in:\n{got}");
    }
    // A store through a shared mapping drops nothing, even by others.
    for line in [
        "other mmap 4777 -: ok -> 104777 8192 ENODATA".to_string(),
        format!("other mmap 6777 cap: ok -> 106777 8192 {cap}"),
        format!("root mmap 0777 cap: ok -> 100777 8192 {cap}"),
    ] {
        assert!(got.lines().any(|l| l == line), "{line} not in:\n{got}");
    }
    // What was shown is what was stored, not what the kernel cached.
    let list = format!("{STATE}{LIST}");
    let dir = format!("{}/privs", v.mnt());
    let before = py(&list, &[&dir]);
    v.unmount();
    v.mount();
    assert_eq!(py(&list, &[&dir]), before);
    v.unmount();
    v.check();
}
