//! File data through a real FUSE mount, against ext4 on a loop device on
//! the same kernel: fallocate(2) from a real process
//! (`tests/fixtures/fallocate_probe.py`: every layout, mode and range,
//! with sizes, st_blocks, times and contents; `fallocate-ext4.txt` beside
//! it is its recorded run on ext4, the source of engine/tests/fallocate.rs's
//! table), the blocks small unaligned writes allocate, and free space in
//! statvfs right after `rm` with a writer then filling the device to
//! exactly what it promised.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{py, sh, Ext4, Vol};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A probe line's fields: "kind mode off= O len= L -> R size A->B blocks
/// C->D m=M c=C changed=[..] sha=H".
fn fields(line: &str) -> (String, String) {
    let key: Vec<&str> = line.split_whitespace().take(6).collect();
    (key.join(" "), line.to_string())
}

fn blocks_after(line: &str) -> &str {
    let at = line.find("blocks ").unwrap() + "blocks ".len();
    let rest = &line[at..];
    let arrow = rest.find("->").unwrap();
    rest[arrow + 2..].split_whitespace().next().unwrap()
}

#[test]
fn fallocate_through_the_mount_does_what_ext4_does() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 64 << 20);
    v.mount_with(&[]);
    // 1 GiB, so that mkfs.ext4 makes 4 KiB blocks.
    let e = Ext4::new(1 << 30);
    let probe = |dir: &str| {
        let out = Command::new("python3")
            .arg(fixture("fallocate_probe.py"))
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ext4 = probe(&e.mnt());
    let ours = probe(&v.mnt());
    let ext4: Vec<(String, String)> = ext4.lines().map(fields).collect();
    let ours: Vec<(String, String)> = ours.lines().map(fields).collect();
    assert_eq!(ours.len(), ext4.len());
    for ((k4, l4), (k, l)) in ext4.iter().zip(&ours) {
        assert_eq!(k4, k);
        if k.contains("collapse") || k.contains("insert") {
            // ext4 does them; the FUSE kernel refuses both before asking
            // any server, and we don't implement them: nothing changes.
            assert!(l.contains("-> ENOTSUP"), "{l}");
            assert!(l.contains("m=n c=n changed=[]"), "{l}");
            let size = l.split("size ").nth(1).unwrap().split_whitespace().next();
            let (a, b) = size.unwrap().split_once("->").unwrap();
            assert_eq!(a, b, "{l}");
        } else if k.starts_with("unwritten") {
            // ext4's st_blocks there also counts an extent index block
            // whenever the file needed a fifth extent (its inode holds
            // four); engine/tests/fallocate.rs checks the data blocks.
            let strip = |s: &str| s.replace(&format!("->{}", blocks_after(s)), "->");
            assert_eq!(strip(l4), strip(l), "ext4 / scoutfs");
        } else {
            assert_eq!(l4, l, "ext4 / scoutfs");
        }
    }

    // Refusals a process sees: the kernel's (EBADF for a descriptor not
    // open for writing, a directory's included) and the filesystem's, as
    // on ext4.
    let m = v.mnt();
    let got = py(
        r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
def fa(fd, mode, off, ln):
    return 0 if libc.fallocate(fd, mode, off, ln) == 0 else errno.errorcode[ctypes.get_errno()]
d = sys.argv[1]
p = d + "/g"
with open(p, "wb") as f:
    f.write(b"a" * 65536)
out = []
fd = os.open(p, os.O_RDONLY)
out.append(fa(fd, 0, 0, 4096))
os.close(fd)
fd = os.open(p, os.O_WRONLY | os.O_APPEND)
out += [fa(fd, m, 4096, 4096) for m in (0, 1, 3, 0x10, 0x11)]
out += [fa(fd, m, 0, 4096) for m in (2, 4, 8, 0x12, 0x20, 0x40, 0x80, 0x100)]
out += [fa(fd, 0, 0, 0), fa(fd, 0, -1, 1), fa(fd, 1, 1 << 62, 1 << 62)]
os.close(fd)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
out.append(fa(dfd, 0, 0, 4096))
print(" ".join(str(x) for x in out))
"#,
        &[&m],
    );
    assert_eq!(
        got.trim(),
        "EBADF 0 0 0 0 0 ENOTSUP ENOTSUP ENOTSUP ENOTSUP ENOTSUP ENOTSUP ENOTSUP ENOTSUP \
         EINVAL EINVAL EFBIG EBADF"
    );
    v.unmount();
    v.check();
}

/// st_blocks of small unaligned writes, written a byte at a time by dd as
/// in the report (2049 and 3 blocks before): the blocks touched with the
/// default streaming rule; whole 16-block regions with
/// data_prealloc_contig_only=0.
#[test]
fn small_unaligned_writes_allocate_what_they_touch() {
    require_fuse!();
    let mut v = Vol::new(128 << 20, 64 << 20);
    for (opts, far, near) in [
        (None, 16, 16),
        (
            Some("data_prealloc_contig_only=0,data_prealloc_blocks=16"),
            256,
            128,
        ),
    ] {
        match opts {
            Some(o) => v.mount_with(&["-o", o]),
            None => v.mount_with(&[]),
        }
        let m = v.mnt();
        let got = sh(&format!(
            "cd {m} && rm -f far near\n\
             truncate -s 2G far && truncate -s 64K near\n\
             printf '%023d' 0 | dd of=far bs=1 seek=$(( (1 << 30) - 10 )) conv=notrunc status=none\n\
             printf '%023d' 0 | dd of=near bs=1 seek=8182 conv=notrunc status=none\n\
             stat -c %b far near"
        ));
        let blocks: Vec<u64> = got.split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert_eq!(blocks, [far, near], "{opts:?}");
        v.unmount();
        v.check();
    }
}

/// statvfs right after `rm` shows the freed blocks (ext4 does; before,
/// they appeared at the next commit, 5 to 7 s later), and a writer then
/// gets exactly that much before ENOSPC: at the write(2) past it when the
/// file is written through (a mount short of space, fuse/src/writeback.rs;
/// a 1 GiB headroom pins that here), or, through the writeback cache (a
/// headroom of 0), at fsync, with exactly the promised bytes stored.
#[test]
fn df_shows_a_deleted_file_at_once_and_a_writer_gets_all_of_it() {
    require_fuse!();
    for (headroom, refused_at) in [("1G", "write"), ("0", "fsync")] {
        let mut v = Vol::new(128 << 20, 96 << 20);
        v.mount_with(&["--writeback-headroom", headroom]);
        let m = v.mnt();
        sh(&format!(
            "dd if=/dev/zero of={m}/old bs=1M count=64 status=none conv=fsync"
        ));
        let got = py(
            r#"
import errno, os, sys
d = sys.argv[1]
st = os.statvfs(d)
before = st.f_bavail
used = os.stat(d + "/old").st_blocks * 512 // st.f_frsize
os.unlink(d + "/old")
st = os.statvfs(d)
after = st.f_bavail
# Fill exactly what statvfs promised, in unaligned writes.
left = after * st.f_frsize
fd = os.open(d + "/new", os.O_CREAT | os.O_WRONLY, 0o644)
chunk = b"\x5a" * 100000
while left > 0:
    n = os.write(fd, chunk[:min(len(chunk), left)])
    left -= n
where = "none"
try:
    os.write(fd, b"x")
except OSError as e:
    where = "write:" + errno.errorcode[e.errno]
if where == "none":
    try:
        os.fsync(fd)
    except OSError as e:
        where = "fsync:" + errno.errorcode[e.errno]
try:
    os.fsync(fd)
    os.close(fd)
except OSError as e:
    where += "+" + errno.errorcode[e.errno]
print(before, used, after, os.statvfs(d).f_bavail, where)
"#,
            &[&m],
        );
        let f: Vec<&str> = got.split_whitespace().collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        assert_eq!(n(2), n(0) + n(1), "freed blocks show at once: {got}");
        let want = format!("{refused_at}:ENOSPC");
        assert_eq!((n(3), f[4]), (0, want.as_str()), "{headroom}: {got}");
        v.unmount();
        v.mount_with(&[]);
        let size = sh(&format!("stat -c %s {m}/new"));
        assert_eq!(
            size.trim().parse::<u64>().unwrap(),
            n(2) * 4096,
            "{headroom}"
        );
        v.unmount();
        v.check();
    }
}
