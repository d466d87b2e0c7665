//! The filesystem through a real FUSE mount: `scoutfs mkfs` on file-backed
//! devices, `scoutfs mount --fuse`, and unmodified programs (cp, tar,
//! rsync, find, du, dd, sha256sum, python, sqlite3, git, setfattr) against
//! it; unmount, `scoutfs check`, remount; kill -9 mid-copy; a full data
//! device; errnos seen by a real process.
//!
//! Needs root and /dev/fuse (scripts/setup installs the programs); without
//! them each test prints why and passes vacuously.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{counter, scoutfs, sh, wait_timeout, Vol};

/// A source tree on the host's filesystem with what copies must keep:
/// nested dirs, modes, times, symlinks, hard links, a sparse file, xattrs.
fn make_tree(root: &Path) {
    let r = root.display();
    sh(&format!(
        r#"
        mkdir -p {r}/a/b/c {r}/empty
        for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom > {r}/a/f$i; done
        head -c 3000000 /dev/urandom > {r}/a/b/big
        echo small > {r}/a/b/c/small
        ln -s ../a/b/big {r}/a/link_to_big
        ln -s /nonexistent/target {r}/dangling
        ln {r}/a/f1 {r}/a/b/hardlink_f1
        truncate -s 50M {r}/sparse
        printf data | dd of={r}/sparse bs=1 seek=20000000 conv=notrunc status=none
        chmod 0640 {r}/a/f2; chmod 0700 {r}/a/b/c; chmod 1777 {r}/empty
        chown 1234:5678 {r}/a/f3
        touch -d '2001-02-03 04:05:06.123456789' {r}/a/f4
        setfattr -n user.color -v blue {r}/a/f5
        setfattr -n user.big -v "$(head -c 3000 /dev/zero | tr '\0' x)" {r}/a/f6
        mkfifo {r}/fifo
        "#
    ));
}

/// rsync in dry-run, comparing everything (checksums, perms, times,
/// owners, hard links, xattrs, devices): no line means identical.
fn assert_same_tree(a: &Path, b: &Path) {
    let out = sh(&format!(
        "rsync -n -aHXc --itemize-changes --no-inc-recursive {}/ {}/",
        a.display(),
        b.display()
    ));
    assert!(out.trim().is_empty(), "trees differ:\n{out}");
    // diff calls two fifos a difference; rsync compared them above.
    sh(&format!(
        "diff -r --no-dereference -x fifo {} {}",
        a.display(),
        b.display()
    ));
}

#[test]
fn unmodified_programs_work_and_everything_survives_remount() {
    require_fuse!();
    let mut v = Vol::new(512 << 20, 6 << 30);
    v.mount();
    let src = v.path("src");
    make_tree(&src);
    let m = v.mnt();
    let s = src.display();

    // cp -a, tar, rsync, and what each copy must keep.
    sh(&format!("cp -a {s} {m}/cp"));
    assert_same_tree(&src, Path::new(&format!("{m}/cp")));
    sh(&format!(
        "mkdir {m}/tar && tar --xattrs -C {s} -cf - . | tar --xattrs --xattrs-include='*' -C {m}/tar -xpf -"
    ));
    assert_same_tree(&src, Path::new(&format!("{m}/tar")));
    sh(&format!(
        "tar --xattrs -C {m}/cp -cf {m}/t.tar . && mkdir {m}/untar && \
         tar --xattrs --xattrs-include='*' -C {m}/untar -xpf {m}/t.tar"
    ));
    assert_same_tree(&src, Path::new(&format!("{m}/untar")));
    sh(&format!("rsync -aHAX {s}/ {m}/rs/"));
    assert_same_tree(&src, Path::new(&format!("{m}/rs")));
    // Sparse stays sparse through cp --sparse=always (SEEK_DATA/HOLE).
    let du = sh(&format!("du -k {m}/cp/sparse | cut -f1"));
    assert!(
        du.trim().parse::<u64>().unwrap() < 1024,
        "sparse file du {du}"
    );

    // find, du, ln, mv across directories, chmod/chown, xattrs.
    let n = sh(&format!("find {m}/cp | wc -l"));
    let n_src = sh(&format!("find {s} | wc -l"));
    assert_eq!(n, n_src);
    sh(&format!(
        r#"
        du -s {m} > /dev/null
        mkdir -p {m}/x/y {m}/z
        echo moved > {m}/x/y/file
        mv {m}/x/y/file {m}/z/renamed
        mv {m}/x/y {m}/z/
        test "$(cat {m}/z/renamed)" = moved
        test -d {m}/z/y && ! test -e {m}/x/y
        ln {m}/z/renamed {m}/x/hard
        test "$(stat -c %h {m}/z/renamed)" = 2
        ln -s renamed {m}/z/soft && test "$(cat {m}/z/soft)" = moved
        chmod 4755 {m}/z/renamed && test "$(stat -c %a {m}/z/renamed)" = 4755
        chown 42:43 {m}/z/renamed && test "$(stat -c %u:%g {m}/z/renamed)" = 42:43
        setfattr -n user.k -v v1 {m}/z/renamed
        test "$(getfattr --only-values -n user.k {m}/z/renamed)" = v1
        setfattr -x user.k {m}/z/renamed
        ! getfattr -n user.k {m}/z/renamed 2>/dev/null
        "#
    ));

    // A multi-GiB file through dd and sha256sum.
    let sum = sh(&format!(
        "dd if=/dev/urandom of={m}/huge bs=1M count=2200 status=none && \
         sha256sum < {m}/huge"
    ));

    // Python: os.walk, shutil.copytree, read/write without mmap.
    sh(&format!(
        r#"python3 - <<'EOF'
import os, shutil, hashlib
m = "{m}"
shutil.copytree(m + "/cp/a", m + "/py")
walk = sorted((d, sorted(f)) for d, _, f in os.walk(m + "/py"))
src = sorted((d.replace("{s}/a", m + "/py"), sorted(f)) for d, _, f in os.walk("{s}/a"))
assert walk == src, (walk, src)
with open(m + "/py/rw", "w+b") as f:
    f.write(b"0123456789" * 100000)
    f.seek(5)
    f.write(b"XY")
    f.flush(); os.fsync(f.fileno())
    f.seek(0)
    d = f.read()
assert d[:10] == b"01234XY789" and len(d) == 1000000
print("python ok")
EOF"#
    ));

    // sqlite3 and git.
    sh(&format!(
        r#"
        cd {m}
        sqlite3 db.sqlite "create table t(id integer primary key, v text);"
        for i in $(seq 1 20); do echo "insert into t(v) values('row$i');"; done | sqlite3 db.sqlite
        test "$(sqlite3 db.sqlite 'select count(*) from t;')" = 20
        test "$(sqlite3 db.sqlite "select v from t where id = 7;")" = row7
        mkdir repo && cd repo
        git init -q . && git config user.email t@t && git config user.name t
        cp -r {s}/a . && git add -A && git commit -qm one
        echo change >> a/f1 && git commit -qam two
        git fsck --full 2>&1
        test "$(git rev-list --count HEAD)" = 2
        "#
    ));

    // Counters answer through the admin socket.
    let c = scoutfs()
        .arg("counters")
        .arg(v.path("admin.sock"))
        .output()
        .unwrap();
    let cs = String::from_utf8_lossy(&c.stdout);
    assert!(
        c.status.success()
            && cs.contains("fuse_create ")
            && cs.contains("commits ")
            && cs.contains("corrupt_block_reads 0\n"),
        "{cs}"
    );

    // Unmount, check, remount: all still there.
    v.unmount();
    v.check();
    v.mount();
    assert_same_tree(&src, Path::new(&format!("{m}/cp")));
    assert_same_tree(&src, Path::new(&format!("{m}/rs")));
    assert_eq!(sh(&format!("sha256sum < {m}/huge")), sum);
    sh(&format!(
        "cd {m}/repo && git fsck --full 2>&1 && test \"$(sqlite3 {m}/db.sqlite 'select count(*) from t;')\" = 20"
    ));
    sh(&format!(
        "rm -rf {m}/huge {m}/cp {m}/tar {m}/untar {m}/t.tar"
    ));
    v.unmount();
    v.check();
}

#[test]
fn kill_9_mid_copy_keeps_every_fsynced_file() {
    require_fuse!();
    let mut v = Vol::new(256 << 20, 2 << 30);
    v.mount();
    let m = v.mnt();
    // A file never fsync'd becomes durable when the engine commits the
    // aged transaction (5 s after its first change) with no other
    // operation to trigger it; the wait leaves room for a loaded machine.
    sh(&format!("echo aged > {m}/aged"));
    std::thread::sleep(Duration::from_secs(9));
    v.kill9();
    v.mount();
    assert_eq!(sh(&format!("cat {m}/aged")), "aged\n");
    // Files made durable with fsync before the copy starts.
    sh(&format!(
        r#"python3 - <<'EOF'
import os
for i in range(50):
    with open("{m}/durable%d" % i, "wb") as f:
        f.write(bytes([i]) * (i * 1000 + 1))
        f.flush(); os.fsync(f.fileno())
EOF"#
    ));
    let src = v.path("src");
    sh(&format!(
        "mkdir -p {s} && for i in $(seq 1 300); do head -c 200000 /dev/urandom > {s}/f$i; done",
        s = src.display()
    ));
    let mut cp = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(format!("{m}/copy"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the engine once the copy is well under way.
    let start = Instant::now();
    while std::fs::read_dir(format!("{m}/copy"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 100
    {
        // A watchdog: a copy that never gets going fails the test.
        if start.elapsed() >= Duration::from_secs(120) {
            panic!("the copy made no progress in 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    v.kill9();
    let _ = cp.wait();
    v.check();
    v.mount();
    sh(&format!(
        r#"python3 - <<'EOF'
for i in range(50):
    with open("{m}/durable%d" % i, "rb") as f:
        assert f.read() == bytes([i]) * (i * 1000 + 1), i
print("durable files intact")
EOF"#
    ));
    // Whatever part of the copy survived is readable and consistent.
    sh(&format!(
        "ls -l {m}/copy > /dev/null 2>&1 || true; du -s {m} > /dev/null"
    ));
    v.unmount();
    v.check();
}

#[test]
fn a_full_data_device_is_enospc_and_deleting_frees_it() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 96 << 20);
    // With discard, blocks freed by a commit go back to the data file's
    // holes (the uring backend punches them). A headroom larger than the
    // device: dd's write-only file is written through, so the write(2)
    // that doesn't fit is refused, as on ext4 (with more free space than
    // the headroom the kernel caches it and dd hears at a later write(2);
    // the failed write-back is then also what the next `sync -f`
    // reports, once: tests/writeback.rs).
    v.mount_with(&["-o", "discard", "--writeback-headroom", "1G"]);
    let m = v.mnt();
    let out = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={m}/fill"),
            "bs=1M",
            "count=200",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("No space left on device"),
        "{err}"
    );
    // Nothing else broke: metadata operations and reads still work.
    sh(&format!(
        "mkdir {m}/d && touch {m}/d/empty && ls -l {m} > /dev/null && \
         test $(stat -c %s {m}/fill) -gt $((60 << 20)) && cat {m}/fill > /dev/null"
    ));
    let free = sh(&format!("df -k --output=avail {m} | tail -1"));
    assert!(
        free.trim().parse::<u64>().unwrap() < 1024,
        "df avail {free}"
    );
    sh(&format!("rm {m}/fill && sync -f {m}"));
    // Freed blocks come back once the unlink commits.
    sh(&format!(
        "dd if=/dev/zero of={m}/again bs=1M count=40 status=none conv=fsync"
    ));
    // The 60+ MiB of the removed file were discarded: the data file now
    // holds about the 40 MiB written since, not the whole device.
    let used = sh(&format!("du -k {}/data | cut -f1", v.dir.path().display()));
    let used: u64 = used.trim().parse().unwrap();
    assert!(used < 70 << 10, "data file still uses {used} KiB");
    v.unmount();
    v.check();
}

#[test]
fn errnos_reach_a_real_process() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let m = v.mnt();
    sh(&format!(
        r#"python3 - <<'EOF'
import errno, os
m = "{m}"
def expect(e, f, *a):
    try:
        f(*a)
    except OSError as x:
        assert x.errno == e, (f, a, errno.errorcode[x.errno], errno.errorcode[e])
        return
    raise AssertionError("%s%r succeeded, wanted %s" % (f.__name__, a, errno.errorcode[e]))
os.mkdir(m + "/d"); open(m + "/d/f", "w").close(); open(m + "/f", "w").close()
expect(errno.ENOENT, open, m + "/missing")
expect(errno.EEXIST, os.mkdir, m + "/d")
expect(errno.ENOTEMPTY, os.rmdir, m + "/d")
expect(errno.ENOTDIR, os.listdir, m + "/f")
expect(errno.EISDIR, os.unlink, m + "/d")
expect(errno.ENAMETOOLONG, open, m + "/" + "n" * 256, "w")
open(m + "/" + "n" * 255, "w").close()
expect(errno.EINVAL, os.rename, m + "/d", m + "/d/inside")
expect(errno.ENOTDIR, os.rename, m + "/d", m + "/f")
expect(errno.EISDIR, os.rename, m + "/f", m + "/d")
expect(errno.ENODATA, os.getxattr, m + "/f", "user.none")
expect(errno.EOPNOTSUPP, os.setxattr, m + "/f", "bogus.ns", b"v")
expect(errno.EXDEV, os.rename, m + "/f", "/tmp/scoutfs-exdev-test")
os.chmod(m + "/d", 0o755)
pid = os.fork()
if pid == 0:
    try:
        os.setgid(65534); os.setuid(65534)
        expect(errno.EACCES, open, m + "/d/new", "w")
        expect(errno.EPERM, os.chmod, m + "/f", 0o777)
        expect(errno.EPERM, os.chown, m + "/f", 65534, -1)
        expect(errno.EACCES, open, m + "/f", "w")
        os._exit(0)
    except BaseException as e:
        print("child:", repr(e))
        os._exit(1)
_, st = os.waitpid(pid, 0)
assert st == 0, st
print("errnos ok")
EOF"#
    ));
    // Read-only: everything reads, nothing writes, and neither device
    // changes (no atime, no orphan cleanup, no commit).
    sh(&format!("echo data > {m}/ro-file && sync -f {m}"));
    v.unmount();
    let dir = v.dir.path().display().to_string();
    let digest = || sh(&format!("sha256sum {dir}/meta {dir}/data"));
    let before = digest();
    v.mount_with(&["-o", "ro"]);
    sh(&format!(
        "test \"$(cat {m}/ro-file)\" = data && ls -lR {m} > /dev/null && \
         ! touch {m}/new 2> {m}.err; grep -q 'Read-only file system' {m}.err"
    ));
    v.unmount();
    assert_eq!(digest(), before, "a read-only mount changed the devices");
    v.mount();
    // A second engine on the same devices is refused clearly, and the
    // first keeps serving.
    std::fs::create_dir(v.path("mnt2")).unwrap();
    let second = v.mount_command("mnt2", "admin2.sock").output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another engine"), "{err}");
    sh(&format!("ls {m} > /dev/null"));
    // POSIX ACLs: a named-user entry grants what the mode denies; a
    // default ACL is inherited (and the umask ignored); the mask limits.
    sh(&format!(
        r#"
        mkdir {m}/acl && chmod 0700 {m}/acl
        ! setpriv --reuid=65534 --regid=65534 --clear-groups touch {m}/acl/denied 2>/dev/null
        setfacl -m u:65534:rwx {m}/acl
        setpriv --reuid=65534 --regid=65534 --clear-groups touch {m}/acl/allowed
        test "$(stat -c %a {m}/acl)" = 770
        setfacl -m m::r-x {m}/acl
        ! setpriv --reuid=65534 --regid=65534 --clear-groups touch {m}/acl/masked 2>/dev/null
        setfacl -d -m u:4242:rw {m}/acl
        (umask 077 && touch {m}/acl/inherits)
        getfacl -p {m}/acl/inherits | grep -q '^user:4242:rw-'
        test "$(stat -c %a {m}/acl/inherits)" = 660
        "#
    ));
    // Negative entries: with --negative-timeout the kernel remembers a
    // missing name (one lookup reaches the engine for three stats), and a
    // create through the mount still shows the name at once.
    v.unmount();
    v.mount_with(&["--negative-timeout", "60"]);
    let lookups = |v: &Vol| counter(v, "fuse_lookup");
    let before = lookups(&v);
    sh(&format!(
        "for i in 1 2 3; do ! stat {m}/not-there 2>/dev/null; done"
    ));
    assert_eq!(lookups(&v) - before, 1, "negative entry cached");
    sh(&format!("touch {m}/not-there && test -e {m}/not-there"));
    v.unmount();
    v.check();
}

#[test]
fn umount_from_outside_is_logged_as_a_clean_unmount() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let m = v.mnt();
    sh(&format!("echo kept > {m}/f && umount {m}"));
    let mut engine = v.engine.take().expect("mounted");
    let st = wait_timeout(&mut engine, Duration::from_secs(60));
    let log = v.log();
    assert!(st.success(), "engine exit {st}: {log}");
    assert!(!v.mounted());
    assert!(
        log.contains(&format!("scoutfs: unmounted {m} (umount from outside)")),
        "{log}"
    );
    for bad in ["ERROR", "WARN", "error", "fail"] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
    // The unmount committed what was written.
    v.check();
    v.mount();
    assert_eq!(sh(&format!("cat {m}/f")), "kept\n");
    v.unmount();
}

/// `ls -l` asks once per file, for the ACL (which FUSE gives the kernel
/// no way to know is absent), and the handler answers from the note
/// readdirplus took, without the engine: the SELinux label query is
/// refused with EOPNOTSUPP, which coreutils remembers for the device.
/// That refusal is a deliberate difference from ext4 (which answers
/// ENODATA per file); other security.* names are stored as before. An
/// ACL set after the listing shows at once.
#[test]
fn ls_l_asks_once_per_file_and_the_selinux_label_is_refused() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 256 << 20);
    // Notes live as long as attributes: long enough for any listing.
    v.mount_with(&["--attr-timeout", "60"]);
    let m = v.mnt();
    sh(&format!(
        "mkdir {m}/d && cd {m}/d && seq 1000 | xargs touch && \
         echo 3 > /proc/sys/vm/drop_caches"
    ));
    let (engine, noted) = (counter(&v, "fuse_xattr"), counter(&v, "fuse_xattr_noted"));
    sh(&format!("ls -l {m}/d > /dev/null"));
    let engine = counter(&v, "fuse_xattr") - engine;
    let noted = counter(&v, "fuse_xattr_noted") - noted;
    assert!(
        noted >= 1000 && engine <= 10,
        "1000 files: {noted} answered from notes, {engine} by the engine"
    );
    sh(&format!(
        r#"
        setfacl -m u:4242:r {m}/d/7
        # The kernel forgets its copy: the handler is asked again.
        echo 3 > /proc/sys/vm/drop_caches
        getfacl -p {m}/d/7 > {m}.acl
        grep -q '^user:4242:r--' {m}.acl
        ls -l {m}/d/7 > {m}.ls
        grep -q '^-rw-r--r--+ ' {m}.ls
        setfacl -b {m}/d/7
        getfacl -p {m}/d/7 > {m}.acl
        ! grep -q '^user:4242' {m}.acl
        "#
    ));
    sh(&format!(
        r#"python3 - <<'EOF'
import errno, os
f = "{m}/d/1"
for op in (lambda: os.getxattr(f, "security.selinux"),
           lambda: os.setxattr(f, "security.selinux", b"x"),
           lambda: os.removexattr(f, "security.selinux")):
    try:
        op()
        raise AssertionError("security.selinux was not refused")
    except OSError as e:
        assert e.errno == errno.EOPNOTSUPP, e
os.setxattr(f, "security.other", b"y")
assert os.getxattr(f, "security.other") == b"y"
assert os.listxattr(f) == ["security.other"], os.listxattr(f)
EOF"#
    ));
    v.unmount();
    v.check();
}
