//! The standard mount options behave as on a kernel filesystem mounted by
//! root, compared with ext4 on a loop device on the same kernel: device
//! nodes open under `dev` (the default) and fail with EACCES under
//! `nodev`; a setuid program runs as its owner under `suid` (the
//! default) and as the caller under `nosuid`; programs run under `exec`
//! (the default) and fail with EACCES under `noexec` (a PROT_EXEC mapping
//! with EPERM); `ro` refuses writes with EROFS, and `mount -o
//! remount,ro` and `remount,rw` switch both ways (EBUSY while a file is
//! open for writing), with the data kept across a new mount. Options are
//! given at mount (`scoutfs mount -o`) and changed live (`mount -o
//! remount`, which the kernel applies at the VFS and the engine follows
//! from mountinfo); and through the installed mount(8) helper, with an
//! fstab line whose `user` means noexec,nosuid,nodev, remounted through
//! the helper.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{sh, Ext4, Vol};

/// In directory argv[1], as root: make what the probe needs once (device
/// nodes: /dev/null's and /dev/zero's numbers and a character major no
/// driver has; a copy of /bin/true; a setuid-root copy of id), then as
/// uid 65534 (through setpriv) and as root, try each and print what
/// happened: the bytes read or the errno's name, the effective uid id
/// prints, whether exec or an executable mapping works.
const PROBE: &str = r#"
import errno, mmap, os, shutil, stat, subprocess, sys
d = sys.argv[1]
if not os.path.exists(d + "/true"):
    os.mknod(d + "/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d + "/zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.mknod(d + "/nodriver", 0o666 | stat.S_IFCHR, os.makedev(511, 7))
    shutil.copy("/bin/true", d + "/true")
    os.chmod(d + "/true", 0o755)
    shutil.copy("/usr/bin/id", d + "/id")
    os.chmod(d + "/id", 0o4755)
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
for n in ("null", "zero", "nodriver"):
    try:
        fd = os.open(d + "/" + n, os.O_RDONLY)
        print(n, "read", os.read(fd, 4).hex() or "eof")
        os.close(fd)
    except OSError as e:
        print(n, err(e))
try:
    subprocess.run([d + "/true"], check=True)
    print("exec ok")
except OSError as e:
    print("exec", err(e))
try:
    with open(d + "/true", "rb") as f:
        mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE).close()
    print("mmap exec ok")
except OSError as e:
    print("mmap exec", err(e))
r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", d + "/id", "-u"],
                   capture_output=True, text=True)
if r.returncode == 0:
    print("setuid id -u as 65534:", r.stdout.strip())
else:
    print("setuid id: setpriv exit", r.returncode, r.stderr.split(": ")[-1].strip())
"#;

fn probe(dir: &str) -> String {
    sh(&format!("mkdir -p {dir}/p && python3 -c '{PROBE}' {dir}/p"))
}

/// What the probe prints under these options.
fn expected(nodev: bool, nosuid: bool, noexec: bool) -> String {
    let dev = |ok: &str| {
        if nodev {
            "EACCES".to_string()
        } else {
            ok.to_string()
        }
    };
    let exec = if noexec { "EACCES" } else { "ok" };
    let mapping = if noexec { "EPERM" } else { "ok" };
    let uid = if nosuid { "65534" } else { "0" };
    // A device without a driver: the device's own errno.
    format!(
        "null {}\nzero {}\nnodriver {}\nexec {exec}\nmmap exec {mapping}\n{}",
        dev("read eof"),
        dev("read 00000000"),
        dev("ENXIO"),
        if noexec {
            "setuid id: setpriv exit 126 Permission denied\n".to_string()
        } else {
            format!("setuid id -u as 65534: {uid}\n")
        }
    )
}

/// The per-mount options mountinfo shows for `mnt`.
fn shown(mnt: &str) -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .unwrap_or_else(|| panic!("{mnt} not in mountinfo"));
    line.split(' ').nth(5).unwrap().to_string()
}

/// Let uid 65534 reach the mount points (temp dirs are 0700).
fn open_up(mnt: &str) {
    let parent = Path::new(mnt).parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn dev_suid_and_exec_are_the_defaults_and_each_no_option_refuses_as_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let e = ext4.mnt();
    let mut v = Vol::new(256 << 20, 64 << 20);
    v.mount();
    let s = v.mnt();
    open_up(&e);
    open_up(&s);

    // Defaults: what a kernel filesystem mounted by root gets.
    assert_eq!(shown(&s), shown(&e));
    assert_eq!(shown(&s), "rw,relatime");
    let want = expected(false, false, false);
    assert_eq!(probe(&e), want, "ext4");
    assert_eq!(probe(&s), want, "scoutfs");

    // Each one live, then all three, then back.
    for (opts, nodev, nosuid, noexec) in [
        ("nodev", true, false, false),
        ("dev,nosuid", false, true, false),
        ("suid,noexec", false, false, true),
        ("nodev,nosuid,noexec", true, true, true),
        ("dev,suid,exec", false, false, false),
    ] {
        sh(&format!("mount -o remount,{opts} {e}"));
        sh(&format!("mount -i -o remount,{opts} {s}"));
        assert_eq!(shown(&s), shown(&e), "remount,{opts}");
        let want = expected(nodev, nosuid, noexec);
        assert_eq!(probe(&e), want, "ext4 remount,{opts}");
        assert_eq!(probe(&s), want, "scoutfs remount,{opts}");
    }

    // Given at mount.
    v.unmount();
    v.mount_with(&["-o", "nodev,nosuid,noexec"]);
    assert_eq!(shown(&s), "rw,nosuid,nodev,noexec,relatime");
    assert_eq!(probe(&s), expected(true, true, true));
    v.unmount();
    v.check();
}

/// Writes as root in argv[1], each printed with its outcome (errno name).
const WRITES: &str = r#"
import errno, os, sys
d = sys.argv[1]
def attempt(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, str(e.errno)))
def append():
    with open(d + "/f", "a") as w:
        w.write(sys.argv[2] + "\n")
attempt("create", lambda: open(d + "/new-" + sys.argv[2], "w").close())
attempt("append", append)
attempt("mkdir", lambda: os.mkdir(d + "/dir-" + sys.argv[2]))
attempt("chmod", lambda: os.chmod(d + "/f", 0o640))
attempt("utime", lambda: os.utime(d + "/f", ns=(10**18, 10**18)))
attempt("unlink", lambda: os.unlink(d + "/victim-" + sys.argv[2]))
with open(d + "/f") as r:
    print("reads", " ".join(r.read().split()) or "-")
"#;

/// Make what the write probe needs (read-write).
fn seed(dir: &str, tags: &[&str]) {
    sh(&format!("mkdir {dir}/w && touch {dir}/w/f"));
    for t in tags {
        sh(&format!("touch {dir}/w/victim-{t}"));
    }
}

fn writes(dir: &str, tag: &str) -> String {
    sh(&format!("python3 -c '{WRITES}' {dir}/w {tag}"))
}

fn outcome(ok: bool, reads: &str) -> String {
    let w = if ok { "ok" } else { "EROFS" };
    format!("create {w}\nappend {w}\nmkdir {w}\nchmod {w}\nutime {w}\nunlink {w}\nreads {reads}\n")
}

#[test]
fn ro_refuses_writes_and_remount_switches_both_ways_as_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let e = ext4.mnt();
    let image = Path::new(&e).parent().unwrap().join("ext4.img");
    let mut v = Vol::new(256 << 20, 64 << 20);
    v.mount();
    let s = v.mnt();
    let tags = ["a", "b", "c"];
    seed(&e, &tags);
    seed(&s, &tags);

    // Mounted read-only from the start (ext4 on a read-write loop device:
    // `mount -o loop,ro` makes the device read-only, and the kernel then
    // refuses remount,rw as "write-protected").
    sh(&format!(
        "umount {e} && loop=$(losetup -f --show {}) && mount -o ro $loop {e} && losetup -d $loop",
        image.display()
    ));
    v.unmount();
    v.mount_with(&["-o", "ro"]);
    assert_eq!(shown(&s), shown(&e));
    assert!(shown(&s).starts_with("ro,"), "{}", shown(&s));
    let want = outcome(false, "-");
    assert_eq!(writes(&e, "a"), want, "ext4 ro");
    assert_eq!(writes(&s, "a"), want, "scoutfs ro");
    // A read leaves atime on a read-only mount (relatime would move it:
    // touch made atime equal to mtime).
    let read_moves_atime = |m: &str| {
        sh(&format!(
            "a=$(stat -c %X.%x {m}/w/f); cat {m}/w/f >/dev/null; test \"$(stat -c %X.%x {m}/w/f)\" != \"$a\" && echo moved || echo kept"
        ))
    };
    assert_eq!(read_moves_atime(&e), "kept\n");
    assert_eq!(read_moves_atime(&s), "kept\n");

    // remount,rw: writable at once (the engine started read-only and
    // follows); remount,ro: read-only again.
    for m in [&e, &s] {
        sh(&format!("mount -i -o remount,rw {m}"));
    }
    let want = outcome(true, "b");
    assert_eq!(writes(&e, "b"), want, "ext4 remount,rw");
    assert_eq!(writes(&s, "b"), want, "scoutfs remount,rw");
    for m in [&e, &s] {
        // atime not after mtime: relatime's first read moves it.
        sh(&format!("touch -d @1000000000 {m}/w/f"));
        assert_eq!(read_moves_atime(m), "moved\n", "{m}");
    }

    // Not while a file is open for writing: EBUSY, as ext4.
    for m in [&e, &s] {
        let busy = sh(&format!(
            "exec 3>>{m}/w/f; mount -i -o remount,ro {m} 2>&1 && echo remounted || echo refused; exec 3>&-"
        ));
        assert!(
            busy.contains("refused") && busy.contains("busy"),
            "{m}: {busy}"
        );
    }
    for m in [&e, &s] {
        sh(&format!("mount -i -o remount,ro {m}"));
        assert!(shown(m).starts_with("ro,"), "{m}: {}", shown(m));
    }
    let want = outcome(false, "b");
    assert_eq!(writes(&e, "c"), want, "ext4 remount,ro");
    assert_eq!(writes(&s, "c"), want, "scoutfs remount,ro");

    // What was written while read-write is kept: mount again.
    sh(&format!(
        "umount {e} && mount -o loop {} {e}",
        image.display()
    ));
    v.unmount();
    v.mount();
    let listing = |m: &str| sh(&format!("cd {m}/w && ls && cat f"));
    assert_eq!(listing(&s), listing(&e));
    assert_eq!(listing(&s), "dir-b\nf\nnew-b\nvictim-a\nvictim-c\nb\n");
    v.unmount();
    v.check();
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The engine pid the mount helper wrote to its log.
fn engine_pid(log: &Path) -> i32 {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.split_once(": engine pid ").map(|(_, pid)| pid))
        .unwrap_or_else(|| panic!("no engine pid in {}:\n{text}", log.display()))
        .parse()
        .unwrap()
}

#[test]
fn fstab_user_means_noexec_nosuid_nodev_and_the_helper_remounts_as_ext4() {
    require_fuse!();
    for tool in ["unshare", "findmnt"] {
        if !sh(&format!("command -v {tool} || true")).contains(tool) {
            eprintln!("skipping: {tool} is missing (util-linux)");
            return;
        }
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this
    // process: the engine the helper leaves running becomes our child.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    let v = Vol::new(256 << 20, 64 << 20);
    let t = v.dir.path().display().to_string();
    let s = v.mnt();
    let e = format!("{t}/ext4mnt");
    let log = v.path("engine.log");
    sh(&format!(
        "truncate -s 64M {t}/ext4.img && mkfs.ext4 -q -F {t}/ext4.img && mkdir {e}"
    ));
    std::fs::write(
        v.path("fstab"),
        format!(
            "{t}/ext4.img {e} ext4 loop,user 0 0\n\
             {t}/meta {s} scoutfs data={t}/data,user,log={} 0 0\n",
            log.display()
        ),
    )
    .unwrap();
    // In a private mount namespace with the helper installed over
    // /usr/sbin (as tests/mount_helper.rs): mount both lines, then
    // remount each through mount(8) (for scoutfs: its helper).
    let script = format!(
        "set -euo pipefail
         trap 'umount -l {s} {e} 2>/dev/null' EXIT
         mkdir -p {t}/sbin-upper {t}/sbin-work
         mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={t}/sbin-upper,workdir={t}/sbin-work /usr/sbin
         {bin} install --sbindir /usr/sbin >/dev/null
         mount -T {t}/fstab -a
         for m in {e} {s}; do cp /bin/true $m/true; done
         step() {{
             for m in {e} {s}; do
                 $m/true 2>/dev/null && x=ok || x=refused
                 touch $m/w-$1 2>/dev/null && w=ok || w=refused
                 echo \"$1 $(findmnt -n -o VFS-OPTIONS $m) exec $x write $w\"
             done
         }}
         step user
         for m in {e} {s}; do mount -o remount,exec,suid,dev $m; done
         step exec
         for m in {e} {s}; do mount -o remount,ro $m; done
         step ro
         for m in {e} {s}; do mount -o remount,rw,noatime $m; done
         step rw
         umount {e} {s}
         trap - EXIT",
        bin = env!("CARGO_BIN_EXE_scoutfs"),
    );
    let out = sh(&format!(
        "unshare -m --propagation private -- bash -c {}",
        shell_quote(&script)
    ));
    let pid = engine_pid(&log);
    let mut status = 0;
    // SAFETY: waitpid on our adopted child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "engine {status:#x}"
    );
    // Each step, ext4's line then scoutfs's: the same, and as expected.
    // mount(8) applies the fstab line's options again at each remount
    // whose command line doesn't override them: `user` brings back
    // noexec,nosuid,nodev unless the remount says exec,suid,dev.
    let want = [
        "user rw,nosuid,nodev,noexec,relatime exec refused write ok",
        "exec rw,relatime exec ok write ok",
        "ro ro,nosuid,nodev,noexec,relatime exec refused write refused",
        "rw rw,nosuid,nodev,noexec,noatime exec refused write ok",
    ];
    let got: Vec<&str> = out.lines().collect();
    let twice: Vec<&str> = want.iter().flat_map(|l| [*l, *l]).collect();
    assert_eq!(got, twice, "ext4's line, then scoutfs's");
    v.check();
}
