//! Readdir while entries are renamed, through the FUSE mount from real
//! processes, against ext4 on a loop device on the same kernel: a pass of
//! getdents64 (python's os.scandir, libc's readdir/telldir/seekdir/
//! rewinddir) over 15 000 entries renamed while they are read ends, never
//! repeats a name, and visits no more entries than the directory held
//! when it began; rewinddir shows the directory as it is now and telldir
//! cookies resume where they were taken.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use common::{py, unmount_with_nothing_kept, Ext4, Vol};

/// `count N repeats R` of one pass over DIR's N files while they are
/// renamed: by the reader itself, each entry as soon as it is read
/// (xfstests generic/736's shape), or by another process renaming every
/// file once while the reader reads. A pass that never ends is cut at
/// three times N.
const READ_WHILE_RENAMING: &str = r#"
import os, sys
d, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.mkdir(d)
for i in range(n):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
seen, repeats, count = set(), 0, 0
renamer = None
if mode == "other":
    r, w = os.pipe()
    renamer = os.fork()
    if renamer == 0:
        os.close(w)
        os.read(r, 1)
        for i in range(n):
            os.rename(f"{d}/f{i}", f"{d}/g{i}")
        os._exit(0)
    os.close(r)
with os.scandir(d) as it:
    for e in it:
        if renamer is not None and count == 0:
            os.close(w)   # the pass has begun: start renaming
        count += 1
        if e.name in seen:
            repeats += 1
        seen.add(e.name)
        if mode == "self":
            os.rename(f"{d}/{e.name}", f"{d}/{e.name}.r")
        if count >= 3 * n:
            break
if renamer is not None:
    _, st = os.waitpid(renamer, 0)
    assert st == 0, st
names = os.listdir(d)
assert len(names) == n, len(names)
for name in names:
    os.unlink(f"{d}/{name}")
os.rmdir(d)
print("count", count, "repeats", repeats)
"#;

fn pass_counts(out: &str) -> (usize, usize) {
    let w: Vec<&str> = out.split_whitespace().collect();
    assert_eq!((w.len(), w[0], w[2]), (4, "count", "repeats"), "{out}");
    (w[1].parse().unwrap(), w[3].parse().unwrap())
}

#[test]
fn readdir_of_15000_entries_renamed_while_read_ends_without_repeats() {
    require_fuse!();
    const N: usize = 15_000;
    let mut v = Vol::new(512 << 20, 256 << 20);
    v.mount();
    let ext4 = Ext4::new(256 << 20);
    for mode in ["self", "other"] {
        let (count, repeats) = pass_counts(&py(
            READ_WHILE_RENAMING,
            &[&format!("{}/d", v.mnt()), &N.to_string(), mode],
        ));
        assert_eq!(repeats, 0, "{mode}: a name met twice in one pass");
        assert!(
            count <= N,
            "{mode}: {count} entries from a directory of {N}"
        );
        if mode == "self" {
            // Nothing else changes the directory: every entry, once.
            assert_eq!(count, N);
        }
        // ext4 ends and repeats no name either, but its hash order meets
        // entries renamed behind the reader again under their new names
        // (about 24 700 of 15 000 in the first shape here): the bound on
        // the count is scoutfs's, not ext4's.
        let (ext4_count, ext4_repeats) = pass_counts(&py(
            READ_WHILE_RENAMING,
            &[&format!("{}/d", ext4.mnt()), &N.to_string(), mode],
        ));
        assert_eq!(ext4_repeats, 0);
        eprintln!("{mode}: scoutfs {count} entries, ext4 {ext4_count}");
    }
    unmount_with_nothing_kept(&mut v);
}

/// libc's readdir, telldir, seekdir and rewinddir over one stream of a
/// directory of 50 files, with a file created and one renamed part way:
/// prints what a program sees. rewinddir must show the directory as it is
/// now (POSIX); a cookie from telldir resumes where it was taken, on the
/// same stream and on a second one (as NFS's readdir from a cookie does).
const REWIND: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]
d = sys.argv[1]
os.mkdir(d)
for i in range(50):
    os.close(os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
def read(dp, most=None):
    names = []
    while most is None or len(names) < most:
        p = libc.readdir(dp)
        if not p:
            break
        names.append(p.contents.d_name.decode())
    return names
dp = libc.opendir(d.encode())
first = read(dp, 10)
cookie = libc.telldir(dp)
a = read(dp, 5)
libc.seekdir(dp, cookie)
b = read(dp, 5)
print("seekdir resumes", a == b)
other = libc.opendir(d.encode())
libc.seekdir(other, cookie)
print("another stream resumes", read(other, 5) == a)
libc.closedir(other)
os.close(os.open(f"{d}/new", os.O_CREAT | os.O_WRONLY, 0o644))
os.rename(f"{d}/f49", f"{d}/moved")
rest = first + b + read(dp)
print("first pass repeats", len(rest) - len(set(rest)))
libc.rewinddir(dp)
again = read(dp)
print("after rewinddir", len(again), len(set(again)),
      "new" in again, "moved" in again, "f49" in again)
libc.closedir(dp)
for n in os.listdir(d):
    os.unlink(f"{d}/{n}")
os.rmdir(d)
"#;

#[test]
fn rewinddir_shows_the_directory_now_and_telldir_cookies_resume() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 256 << 20);
    v.mount();
    let ext4 = Ext4::new(64 << 20);
    let ours = py(REWIND, &[&format!("{}/d", v.mnt())]);
    let theirs = py(REWIND, &[&format!("{}/d", ext4.mnt())]);
    assert_eq!(ours, theirs);
    assert_eq!(
        ours,
        "seekdir resumes True\nanother stream resumes True\nfirst pass repeats 0\n\
         after rewinddir 53 53 True True False\n"
    );
    unmount_with_nothing_kept(&mut v);
}
