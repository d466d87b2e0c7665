//! Directories removed while in use, through the FUSE mount from real
//! processes, against ext4 on a loop device on the same kernel:
//!
//! - a removed working directory (and a removed file held by an O_PATH
//!   descriptor) answers as on ext4: stat, chdir "..", chmod, xattrs, and
//!   ENOENT for new entries;
//! - five processes creating, renaming and removing nested directories,
//!   each in its own tree under one shared directory (xfstests' dirstress
//!   shape), all finish and none loses its working directory.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use common::{py, unmount_with_nothing_kept, Ext4, Vol};

/// What a process can still do in its working directory after another
/// process removed it (rmdir, or a rename of an empty directory over it),
/// and with an O_PATH descriptor of a removed file, one line each.
const REMOVED_IN_USE: &str = r#"
import errno, os, subprocess, sys
base = sys.argv[1]
def t(what, f):
    try:
        r = f()
        print(what, "ok", "" if r is None else r)
    except OSError as e:
        print(what, errno.errorcode[e.errno])
def other(*cmd):
    subprocess.run(cmd, check=True)
for how in ("rmdir", "rename"):
    os.makedirs(f"{base}/top/d")
    os.chdir(f"{base}/top/d")
    if how == "rmdir":
        other("rmdir", f"{base}/top/d")
    else:
        os.mkdir(f"{base}/top/empty")
        other("mv", "-T", f"{base}/top/empty", f"{base}/top/d")
    print("--", how)
    t("stat .", lambda: os.stat(".").st_nlink)
    t("listdir .", lambda: os.listdir("."))
    t("open /proc/self/cwd", lambda: os.close(os.open("/proc/self/cwd", os.O_RDONLY | os.O_DIRECTORY)))
    t("create x", lambda: os.close(os.open("x", os.O_CREAT | os.O_WRONLY, 0o644)))
    t("mkdir x", lambda: os.mkdir("x"))
    t("stat x", lambda: os.stat("x"))
    t("getxattr", lambda: os.getxattr(".", "user.a"))
    t("setxattr", lambda: os.setxattr(".", "user.a", b"1"))
    t("getxattr again", lambda: os.getxattr(".", "user.a"))
    t("chmod", lambda: os.chmod(".", 0o700))
    t("utime", lambda: os.utime("."))
    t("mode", lambda: oct(os.stat(".").st_mode))
    t("chdir ..", lambda: os.chdir(".."))
    t("cwd", lambda: os.getcwd() == f"{base}/top")
    os.chdir(base)
    other("rm", "-rf", f"{base}/top")
p = os.open(f"{base}/f", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(p, b"hello")
os.close(p)
op = os.open(f"{base}/f", os.O_PATH)
other("rm", f"{base}/f")
print("-- O_PATH")
t("fstat", lambda: (os.fstat(op).st_nlink, os.fstat(op).st_size))
t("reopen through /proc", lambda: os.read(os.open(f"/proc/self/fd/{op}", os.O_RDONLY), 10))
os.close(op)
"#;

#[test]
fn a_removed_working_directory_answers_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let expected = py(REMOVED_IN_USE, &[&ext4.mnt()]);
    assert!(expected.contains("chdir .. ok"), "{expected}");
    // The default caches, and none: with attributes never cached the
    // kernel asks for the removed directory's at every permission check
    // (chdir ".." asks once they have aged).
    for extra in [
        &[][..],
        &["--attr-timeout", "0", "--entry-timeout", "0"][..],
    ] {
        let mut v = Vol::new(128 << 20, 256 << 20);
        v.mount_with(extra);
        assert_eq!(py(REMOVED_IN_USE, &[&v.mnt()]), expected, "{extra:?}");
        unmount_with_nothing_kept(&mut v);
    }
}

/// dirstress's shape, in python: PROCS processes share BASE/stressdir,
/// each works in its own stress.N below it for ROUNDS rounds: creates
/// files, fifos, symlinks and nested directories, scrambles them
/// (renames within and into subdirectories, unlinks, rmdirs, creates,
/// and a nested directory removed while the process stands in it),
/// then removes its tree fts-style (chdir into each directory, empty it,
/// chdir "..", rmdir), chdir ".." out of stress.N, removes it, chdir ".."
/// out of stressdir and tries to remove that too. Any failure a process
/// could not expect is printed and fails the run.
const DIRSTRESS: &str = r#"
import errno, os, random, stat, sys
base, procs, nfiles, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.mkdir(base)
# What random operations on one's own tree may meet: a name taken or
# missing, a type mismatch, a move into itself, a symlink to itself, a
# fifo without a reader.
EXPECTED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR,
            errno.EINVAL, errno.ELOOP, errno.ENXIO}
def maybe(f, *a):
    try:
        f(*a)
    except OSError as e:
        if e.errno not in EXPECTED:
            raise
def name(i):
    return f"XXXXXXXXXXXX.{i}"
def remove_tree(path):
    # fts without FTS_NOCHDIR: into the directory, empty it, back by "..".
    os.chdir(path)
    for n in os.listdir("."):
        if stat.S_ISDIR(os.lstat(n).st_mode):
            remove_tree(n)
        else:
            os.unlink(n)
    os.chdir("..")
    os.rmdir(path)
def work(n, seed, ready, go):
    rnd = random.Random(seed)
    maybe(os.mkdir, f"{base}/stressdir")
    os.chdir(f"{base}/stressdir")
    os.mkdir(f"stress.{n}")
    os.chdir(f"stress.{n}")
    # Every tree exists before any process removes stressdir.
    os.write(ready, b"x")
    os.read(go, 1)
    for i in range(nfiles):
        k = i % 4
        if k == 0:
            os.close(os.open(name(i), os.O_CREAT | os.O_WRONLY, 0o666))
        elif k == 1:
            os.makedirs(f"{name(i)}/sub/subsub")
        elif k == 2:
            os.symlink(name(i), name(i))
        else:
            os.mkfifo(name(i))
    for i in range(nfiles * 3):
        a, b = name(rnd.randrange(nfiles)), name(rnd.randrange(nfiles))
        k = i % 6
        if k == 0:
            maybe(os.rename, a, b)
        elif k == 1:
            # A move into a subdirectory, nested directories included.
            maybe(os.rename, a, f"{b}/{a}")
            maybe(os.rename, f"{b}/{a}", a)
        elif k == 2:
            maybe(os.unlink, a)
        elif k == 3:
            maybe(os.rmdir, a)
        elif k == 4:
            try:
                os.close(os.open(a, os.O_CREAT | os.O_WRONLY | os.O_NONBLOCK, 0o666))
            except OSError as e:
                if e.errno not in EXPECTED:
                    raise
        else:
            # Into a nested directory that is then removed under the
            # process (by a path, as another process could): it still
            # stands there, and ".." still leads out.
            maybe(os.makedirs, f"{a}/sub")
            if os.path.isdir(f"{a}/sub") and not os.path.islink(a):
                os.chdir(f"{a}/sub")
                maybe(os.rmdir, "../sub")
                os.stat(".")
                os.chdir("..")
                os.chdir("..")
    for n2 in os.listdir("."):
        if stat.S_ISDIR(os.lstat(n2).st_mode):
            remove_tree(n2)
        else:
            os.unlink(n2)
    os.chdir("..")
    os.rmdir(f"stress.{n}")
    os.chdir("..")
    maybe(os.rmdir, "stressdir")
failed = 0
for r in range(rounds):
    kids = []
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    for n in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(go_w)
                work(n, r * 1000 + n, ready_w, go_r)
                os._exit(0)
            except BaseException as e:
                print(f"round {r} process {n}: {e!r}", flush=True)
                os._exit(1)
        kids.append(pid)
    os.close(ready_w)
    os.close(go_r)
    for _ in range(procs):
        if not os.read(ready_r, 1):
            break
    os.close(go_w)
    os.close(ready_r)
    for pid in kids:
        _, st = os.waitpid(pid, 0)
        failed += st != 0
print("failed", failed)
print("left", sorted(os.listdir(base)))
"#;

#[test]
fn five_processes_stressing_their_own_trees_keep_their_working_directories() {
    require_fuse!();
    let ext4 = Ext4::new(256 << 20);
    let args = |base: &str| -> Vec<String> {
        [base, "5", "60", "20"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |base: &str| {
        let a = args(base);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        py(DIRSTRESS, &a)
    };
    let expected = "failed 0\nleft []\n";
    assert_eq!(run(&format!("{}/s", ext4.mnt())), expected);
    // Attributes never cached, so every permission check on a removed
    // directory reaches the engine; and the defaults.
    for extra in [&["--attr-timeout", "0"][..], &[][..]] {
        let mut v = Vol::new(256 << 20, 256 << 20);
        v.mount_with(extra);
        assert_eq!(run(&format!("{}/s", v.mnt())), expected, "{extra:?}");
        unmount_with_nothing_kept(&mut v);
    }
}
