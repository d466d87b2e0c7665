//! Creating inodes through the FUSE mount, compared with ext4 on a loop
//! device on the same kernel: the mode of every kind of new inode under
//! every umask, with and without a default ACL on the parent, and
//! O_TMPFILE (FUSE_TMPFILE, which `ScoutServer` answers).
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use common::{sh, Ext4, Vol};

/// Under each umask, in a fresh directory (with the default ACL given as
/// the second argument, if any): mkdir, open(O_CREAT), mknod and mkfifo,
/// a bound unix socket and O_TMPFILE, at several modes. Prints each new
/// inode's mode and its access (and default) ACL as stored, one a line.
const MODES: &str = r#"
import os, socket, stat, subprocess, sys
root, default_acl = sys.argv[1], sys.argv[2]
def acl(path, kind):
    try:
        return os.getxattr(path, "system.posix_acl_" + kind).hex()
    except OSError as e:
        return os.strerror(e.errno)
for um in (0o000, 0o002, 0o022, 0o027, 0o077, 0o777):
    d = "%s/u%03o" % (root, um)
    os.mkdir(d)
    os.chmod(d, 0o777)
    if default_acl:
        subprocess.run(["setfacl", "-d", "-m", default_acl, d], check=True)
    os.chdir(d)
    old = os.umask(um)
    os.mkdir("dir777", 0o777)
    os.mkdir("dir750", 0o750)
    os.mkdir("dir1777", 0o1777)
    for mode in (0o666, 0o640, 0o4755):
        os.close(os.open("file%o" % mode, os.O_CREAT | os.O_WRONLY, mode))
    os.mkfifo("fifo666", 0o666)
    os.mknod("fifo640", 0o640 | stat.S_IFIFO)
    os.mknod("sock666", 0o666 | stat.S_IFSOCK)
    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    s.close()
    tmp = []
    for mode in (0o666, 0o640):
        tmp.append((mode, os.open(".", os.O_TMPFILE | os.O_RDWR, mode)))
    os.umask(old)
    for mode, fd in tmp:
        path = "/proc/self/fd/%d" % fd
        print("%03o tmpfile%o %o %s" % (um, mode, os.fstat(fd).st_mode, acl(path, "access")))
        os.close(fd)
    for n in sorted(os.listdir(".")):
        st = os.lstat(n)
        line = "%03o %s %o %s" % (um, n, st.st_mode, acl(n, "access"))
        if stat.S_ISDIR(st.st_mode):
            line += " default " + acl(n, "default")
        print(line)
"#;

/// A default ACL with a named user and a mask, so that the mode's group
/// bits and the mask interact.
const DEFAULT_ACL: &str = "u::rwx,u:4242:rw-,g::r-x,m::rwx,o::---";

fn modes(dir: &str, sub: &str, default_acl: &str) -> String {
    sh(&format!(
        "mkdir {dir}/{sub} && python3 - {dir}/{sub} '{default_acl}' <<'EOF'\n{MODES}\nEOF"
    ))
}

#[test]
fn new_inode_modes_follow_the_umask_and_default_acl_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    for (sub, default_acl) in [("plain", ""), ("acl", DEFAULT_ACL)] {
        let want = modes(&ext4.mnt(), sub, default_acl);
        let got = modes(&v.mnt(), sub, default_acl);
        assert_eq!(got, want, "{sub}: scoutfs (left) differs from ext4 (right)");
    }
    // What ext4 gave, spelled out: mkdir loses the umask's bits ...
    let plain = modes(&ext4.mnt(), "again", "");
    for line in [
        "022 dir777 40755 No data available default No data available",
        "077 dir750 40700 No data available default No data available",
        "027 dir1777 41750 No data available default No data available",
        "022 tmpfile666 100644 No data available",
        "777 sock 140000 No data available",
    ] {
        assert!(plain.lines().any(|l| l == line), "{line} not in:\n{plain}");
    }
    // ... and with a default ACL the umask is ignored (sockets excepted:
    // af_unix applies the umask before the filesystem sees the mode).
    let acl = modes(&v.mnt(), "again", DEFAULT_ACL);
    let mode_of = |name: &str| {
        acl.lines()
            .find(|l| l.starts_with(&format!("777 {name} ")))
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(mode_of("dir777"), "40770", "{acl}");
    assert_eq!(mode_of("file666"), "100660", "{acl}");
    assert_eq!(mode_of("tmpfile666"), "100660", "{acl}");
    assert_eq!(mode_of("sock"), "140000", "{acl}");
    v.unmount();
    v.check();
}

/// O_TMPFILE's errnos and linkat through /proc/self/fd, printed for
/// comparison with ext4: the named file has the data written through the
/// unnamed one.
const TMPFILE: &str = r#"
import ctypes, errno, os, sys
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
def linkat(fd, name):
    src = b"/proc/self/fd/%d" % fd
    if libc.linkat(AT_FDCWD, src, AT_FDCWD, os.fsencode(name), AT_SYMLINK_FOLLOW) == 0:
        return "linked"
    return errno.errorcode[ctypes.get_errno()]
def try_open(path, flags, mode):
    try:
        return os.open(path, flags, mode)
    except OSError as e:
        return errno.errorcode[e.errno]
data = bytes(range(256)) * 4096 + b"tail"
fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
os.write(fd, data)
st = os.fstat(fd)
print("tmpfile nlink", st.st_nlink, "size", st.st_size)
print("linkat", linkat(fd, d + "/named"))
print("nlink after", os.fstat(fd).st_nlink)
os.close(fd)
print("named", open(d + "/named", "rb").read() == data, "%o" % os.stat(d + "/named").st_mode)
print("linkat to an existing name", linkat(os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600), d + "/named"))
fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
print("O_EXCL linkat", linkat(fd, d + "/excl"))
print("O_RDONLY", try_open(d, os.O_TMPFILE | os.O_RDONLY, 0o600))
print("on a file", try_open(d + "/named", os.O_TMPFILE | os.O_RDWR, 0o600))
os.mkdir(d + "/gone")
os.rmdir(d + "/gone")
print("in a missing dir", try_open(d + "/gone", os.O_TMPFILE | os.O_RDWR, 0o600))
print(sorted(os.listdir(d)))
"#;

#[test]
fn o_tmpfile_works_and_linkat_names_it_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let run = |dir: &str| {
        sh(&format!(
            "mkdir {dir}/t && python3 - {dir}/t <<'EOF'\n{TMPFILE}\nEOF"
        ))
    };
    let want = run(&ext4.mnt());
    let got = run(&v.mnt());
    assert_eq!(got, want, "scoutfs (left) differs from ext4 (right)");
    assert!(
        want.contains("linkat linked\nnlink after 1\nnamed True 100640"),
        "{want}"
    );
    // The named file and its data survive a remount.
    let m = v.mnt();
    let sum = sh(&format!("sha256sum < {m}/t/named"));
    v.unmount();
    v.check();
    v.mount();
    assert_eq!(sh(&format!("sha256sum < {m}/t/named")), sum);
    v.unmount();
    v.check();
}

/// Inodes in use as `df -i` shows them (f_files - f_ffree).
fn df_iused(v: &Vol) -> u64 {
    let out = sh(&format!("df --output=iused {} | tail -1", v.mnt()));
    out.trim().parse().unwrap()
}

#[test]
fn df_i_counts_inodes_and_a_tmpfile_vanishes_at_close_and_after_a_crash() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let m = v.mnt();
    assert_eq!(df_iused(&v), 1, "the root");
    // 300 files, 20 dirs, 10 symlinks, a fifo; hard links add none.
    sh(&format!(
        "mkdir {m}/d && cd {m}/d && seq 300 | xargs touch && mkdir $(seq -f dir%g 20) && \
         for i in $(seq 10); do ln -s $i sym$i; ln $i hard$i; done && mkfifo fifo"
    ));
    assert_eq!(df_iused(&v), 1 + 1 + 300 + 20 + 10 + 1);
    sh(&format!("cd {m}/d && rm $(seq 101 300) && rmdir dir1"));
    let used = df_iused(&v);
    assert_eq!(used, 1 + 1 + 100 + 19 + 10 + 1);
    // An unnamed tmpfile counts while open and is gone at its last close.
    sh(&format!(
        r#"python3 - <<'EOF'
import os, subprocess
fd = os.open("{m}/d", os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b"x" * 100000)
def iused():
    return int(subprocess.run(["df", "--output=iused", "{m}"], capture_output=True, text=True, check=True).stdout.split()[-1])
assert iused() == {used} + 1, iused()
os.close(fd)
assert iused() == {used}, iused()
EOF"#
    ));
    // One left open (and made durable) when the engine dies: mount
    // deletes it, and check counts the same inodes the volume does.
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import os, sys, time\n\
                 fd = os.open('{m}/d', os.O_TMPFILE | os.O_RDWR, 0o600)\n\
                 os.write(fd, b'y' * 100000); os.fsync(fd)\n\
                 print('open', flush=True); time.sleep(600)"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "open\n");
    assert_eq!(df_iused(&v), used + 1);
    v.kill9();
    holder.kill().unwrap();
    holder.wait().unwrap();
    v.mount();
    assert_eq!(df_iused(&v), used, "the crashed tmpfile is gone");
    v.unmount();
    let out = common::scoutfs()
        .arg("check")
        .arg(v.path("meta"))
        .arg(v.path("data"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(" {used} inodes,")) && report.contains(" 0 problems"),
        "{report}"
    );
}
