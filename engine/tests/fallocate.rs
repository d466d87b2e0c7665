//! fallocate(2) against ext4: every mode and combination, refused as
//! Linux refuses it or done with ext4's effects, checked against a byte
//! and block model.
//!
//! The expected values are ext4's on Linux 6.18 (4 KiB blocks), taken by
//! running the same calls on an ext4 image on a loop device:
//! `EXT4_EFFECTS` is that run's sizes and st_blocks, the model
//! (`Model::fallocate`) reproduces its contents and its data blocks.
//! Where this filesystem deliberately differs it says so:
//! COLLAPSE_RANGE and INSERT_RANGE are EOPNOTSUPP (the FUSE kernel
//! refuses both itself), files end at 2^63 - 1 bytes (ext4: 16 TiB), and
//! ext4's st_blocks also counts an extent index block once a file needs
//! more than the four extents its inode holds (our extents are items).

mod file_harness;

use std::collections::BTreeMap;

use file_harness::{errno, root, BS, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::format::alloc::{
    data_extent_key, DataExtentVal, DATA_EXTENT_OFFLINE, DATA_EXTENT_UNWRITTEN,
};
use scoutfs_engine::fs::{
    Creds, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE, FALLOC_FL_UNSHARE_RANGE, FALLOC_FL_WRITE_ZEROES, FALLOC_FL_ZERO_RANGE,
};
use scoutfs_engine::util::ready;
use scoutfs_engine::util::rng::SimRng;

const KEEP: u32 = FALLOC_FL_KEEP_SIZE;
const PUNCH: u32 = FALLOC_FL_PUNCH_HOLE;
const ZERO: u32 = FALLOC_FL_ZERO_RANGE;

/// The modes ext4 does, and so do we.
const SUPPORTED: [u32; 5] = [0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP];
/// The modes Linux's vfs_fallocate passes on to the filesystem that we
/// refuse (EOPNOTSUPP once the file type and size checks pass): ext4 does
/// collapse and insert; it refuses unshare (no shared extents) and write
/// zeroes (on devices without unmapping write-zeroes, as a loop device).
const PASSED_ON: [u32; 5] = [
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_UNSHARE_RANGE,
    FALLOC_FL_UNSHARE_RANGE | KEEP,
    FALLOC_FL_WRITE_ZEROES,
];

// ---------------------------------------------------------------------------
// The model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blk {
    Written,
    Unwritten,
}

/// A file as bytes (its length is the size) and its allocated blocks.
#[derive(Clone, Debug, Default)]
struct Model {
    bytes: Vec<u8>,
    blocks: BTreeMap<u64, Blk>,
}

impl Model {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn grow(&mut self, size: u64) {
        if size > self.size() {
            self.bytes.resize(size as usize, 0);
        }
    }

    fn zero(&mut self, from: u64, to: u64) {
        let to = to.min(self.size());
        if from < to {
            self.bytes[from as usize..to as usize].fill(0);
        }
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        self.grow(end);
        self.bytes[off as usize..end as usize].copy_from_slice(data);
        for b in off / BS..=(end - 1) / BS {
            self.blocks.insert(b, Blk::Written);
        }
    }

    /// A size no larger frees the blocks past it, preallocated ones too; a
    /// larger one keeps them (as ext4).
    fn truncate(&mut self, size: u64) {
        if size <= self.size() {
            let first_gone = size.div_ceil(BS);
            self.blocks.retain(|&b, _| b < first_gone);
        }
        self.bytes.resize(size as usize, 0);
    }

    /// Every block `[off, end)` touches is allocated (unwritten where it
    /// was a hole).
    fn allocate(&mut self, off: u64, end: u64) {
        for b in off / BS..=(end - 1) / BS {
            self.blocks.entry(b).or_insert(Blk::Unwritten);
        }
    }

    /// The whole blocks inside `[off, end)`.
    fn whole(off: u64, end: u64) -> std::ops::Range<u64> {
        off.div_ceil(BS)..end / BS
    }

    /// What ext4 does for a supported mode.
    fn fallocate(&mut self, mode: u32, off: u64, len: u64) {
        let end = off + len;
        let keep = mode & KEEP != 0;
        match mode & !KEEP {
            0 => {
                self.allocate(off, end);
                if !keep {
                    self.grow(end);
                }
            }
            PUNCH => {
                // Nothing from the end of the file on; up to the end of
                // its last block otherwise.
                if off < self.size() {
                    let stop = end.min(self.size().next_multiple_of(BS));
                    for b in Self::whole(off, stop) {
                        self.blocks.remove(&b);
                    }
                    self.zero(off, stop);
                }
            }
            ZERO => {
                self.allocate(off, end);
                for b in Self::whole(off, end) {
                    self.blocks.insert(b, Blk::Unwritten);
                }
                if !keep {
                    self.grow(end);
                }
                self.zero(off, end);
            }
            _ => panic!("mode {mode:#x} is not modelled"),
        }
    }
}

/// The file's blocks as its extents say.
fn blocks_of(t: &mut T, ino: u64) -> BTreeMap<u64, Blk> {
    let mut out = BTreeMap::new();
    for e in t.extents(ino) {
        assert_eq!(e.flags & DATA_EXTENT_OFFLINE, 0);
        let kind = if e.flags & DATA_EXTENT_UNWRITTEN != 0 {
            Blk::Unwritten
        } else {
            Blk::Written
        };
        for b in e.iblock..=e.end() {
            out.insert(b, kind);
        }
    }
    out
}

/// The file is what the model says: size, contents (and zeros past the
/// end), its blocks and their kind, online blocks.
fn assert_matches(t: &mut T, ino: u64, m: &Model, what: &str) {
    let a = t.attr(ino);
    assert_eq!(a.size, m.size(), "{what}: size");
    let got = t.read(ino, 0, m.bytes.len() + 3 * BS as usize);
    assert!(got == m.bytes, "{what}: contents differ");
    assert_eq!(blocks_of(t, ino), m.blocks, "{what}: blocks");
    assert_eq!(a.online_blocks, m.blocks.len() as u64, "{what}: online");
}

// ---------------------------------------------------------------------------
// ext4's effects, call by call

#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Blocks 0..8 written, a hole at 8..12, 12..14 written, size
    /// 14 blocks - 100 bytes.
    Data,
    /// Blocks 0..2 written, 2..8 unwritten, 12..14 written, 14..18
    /// unwritten past the end; the same size.
    Unwritten,
    Empty,
}
use Setup::{Data, Empty, Unwritten};

fn pattern(byte: u8, len: u64) -> Vec<u8> {
    vec![byte; len as usize]
}

fn set_up(t: &mut T, name: &str, s: Setup) -> (u64, Model) {
    let ino = t.create(name);
    let mut m = Model::default();
    let w = |t: &mut T, m: &mut Model, off: u64, d: Vec<u8>| {
        t.write(ino, off, &d);
        m.write(off, &d);
    };
    match s {
        Data => {
            w(t, &mut m, 0, pattern(0xaa, 8 * BS));
            w(t, &mut m, 12 * BS, pattern(0xbb, 2 * BS - 100));
        }
        Unwritten => {
            w(t, &mut m, 0, pattern(0xaa, 2 * BS));
            t.fallocate(ino, KEEP, 2 * BS, 6 * BS).unwrap();
            m.fallocate(KEEP, 2 * BS, 6 * BS);
            w(t, &mut m, 12 * BS, pattern(0xbb, 2 * BS - 100));
            t.fallocate(ino, KEEP, 14 * BS, 4 * BS).unwrap();
            m.fallocate(KEEP, 14 * BS, 4 * BS);
        }
        Empty => {}
    }
    assert_matches(t, ino, &m, &format!("{name} set up"));
    (ino, m)
}

/// (setup, mode, offset, length, ext4's size after, ext4's st_blocks
/// after, extent index blocks in that st_blocks). ext4 gave every call
/// success and changed mtime and ctime on each.
#[rustfmt::skip]
const EXT4_EFFECTS: [(Setup, u32, u64, u64, u64, u64, u64); 150] = [
(Data, 0x00, 0, 4096, 57244, 80, 0),
    (Data, 0x00, 100, 200, 57244, 80, 0),
    (Data, 0x00, 100, 12288, 57244, 80, 0),
    (Data, 0x00, 28677, 8192, 57244, 96, 0),
    (Data, 0x00, 36864, 4096, 57244, 88, 0),
    (Data, 0x00, 53248, 12288, 65536, 96, 0),
    (Data, 0x00, 57244, 50, 57294, 80, 0),
    (Data, 0x00, 81920, 4096, 86016, 88, 0),
    (Data, 0x00, 81927, 10, 81937, 88, 0),
    (Data, 0x00, 8193, 20480, 57244, 80, 0),
    (Data, 0x01, 0, 4096, 57244, 80, 0),
    (Data, 0x01, 100, 200, 57244, 80, 0),
    (Data, 0x01, 100, 12288, 57244, 80, 0),
    (Data, 0x01, 28677, 8192, 57244, 96, 0),
    (Data, 0x01, 36864, 4096, 57244, 88, 0),
    (Data, 0x01, 53248, 12288, 57244, 96, 0),
    (Data, 0x01, 57244, 50, 57244, 80, 0),
    (Data, 0x01, 81920, 4096, 57244, 88, 0),
    (Data, 0x01, 81927, 10, 57244, 88, 0),
    (Data, 0x01, 8193, 20480, 57244, 80, 0),
    (Data, 0x03, 0, 4096, 57244, 72, 0),
    (Data, 0x03, 100, 200, 57244, 80, 0),
    (Data, 0x03, 100, 12288, 57244, 64, 0),
    (Data, 0x03, 28677, 8192, 57244, 80, 0),
    (Data, 0x03, 36864, 4096, 57244, 80, 0),
    (Data, 0x03, 53248, 12288, 57244, 72, 0),
    (Data, 0x03, 57244, 50, 57244, 80, 0),
    (Data, 0x03, 81920, 4096, 57244, 80, 0),
    (Data, 0x03, 81927, 10, 57244, 80, 0),
    (Data, 0x03, 8193, 20480, 57244, 48, 0),
    (Data, 0x10, 0, 4096, 57244, 80, 0),
    (Data, 0x10, 100, 200, 57244, 80, 0),
    (Data, 0x10, 100, 12288, 57244, 80, 0),
    (Data, 0x10, 28677, 8192, 57244, 96, 0),
    (Data, 0x10, 36864, 4096, 57244, 88, 0),
    (Data, 0x10, 53248, 12288, 65536, 96, 0),
    (Data, 0x10, 57244, 50, 57294, 80, 0),
    (Data, 0x10, 81920, 4096, 86016, 88, 0),
    (Data, 0x10, 81927, 10, 81937, 88, 0),
    (Data, 0x10, 8193, 20480, 57244, 80, 0),
    (Data, 0x11, 0, 4096, 57244, 80, 0),
    (Data, 0x11, 100, 200, 57244, 80, 0),
    (Data, 0x11, 100, 12288, 57244, 80, 0),
    (Data, 0x11, 28677, 8192, 57244, 96, 0),
    (Data, 0x11, 36864, 4096, 57244, 88, 0),
    (Data, 0x11, 53248, 12288, 57244, 96, 0),
    (Data, 0x11, 57244, 50, 57244, 80, 0),
    (Data, 0x11, 81920, 4096, 57244, 88, 0),
    (Data, 0x11, 81927, 10, 57244, 88, 0),
    (Data, 0x11, 8193, 20480, 57244, 80, 0),
    (Unwritten, 0x00, 0, 4096, 57244, 112, 0),
    (Unwritten, 0x00, 100, 200, 57244, 112, 0),
    (Unwritten, 0x00, 100, 12288, 57244, 112, 0),
    (Unwritten, 0x00, 28677, 8192, 57244, 136, 1),
    (Unwritten, 0x00, 36864, 4096, 57244, 128, 1),
    (Unwritten, 0x00, 53248, 12288, 65536, 112, 0),
    (Unwritten, 0x00, 57244, 50, 57294, 112, 0),
    (Unwritten, 0x00, 81920, 4096, 86016, 128, 1),
    (Unwritten, 0x00, 81927, 10, 81937, 128, 1),
    (Unwritten, 0x00, 8193, 20480, 57244, 112, 0),
    (Unwritten, 0x01, 0, 4096, 57244, 112, 0),
    (Unwritten, 0x01, 100, 200, 57244, 112, 0),
    (Unwritten, 0x01, 100, 12288, 57244, 112, 0),
    (Unwritten, 0x01, 28677, 8192, 57244, 136, 1),
    (Unwritten, 0x01, 36864, 4096, 57244, 128, 1),
    (Unwritten, 0x01, 53248, 12288, 57244, 112, 0),
    (Unwritten, 0x01, 57244, 50, 57244, 112, 0),
    (Unwritten, 0x01, 81920, 4096, 57244, 128, 1),
    (Unwritten, 0x01, 81927, 10, 57244, 128, 1),
    (Unwritten, 0x01, 8193, 20480, 57244, 112, 0),
    (Unwritten, 0x03, 0, 4096, 57244, 112, 1),
    (Unwritten, 0x03, 100, 200, 57244, 112, 0),
    (Unwritten, 0x03, 100, 12288, 57244, 104, 1),
    (Unwritten, 0x03, 28677, 8192, 57244, 112, 0),
    (Unwritten, 0x03, 36864, 4096, 57244, 112, 0),
    (Unwritten, 0x03, 53248, 12288, 57244, 104, 0),
    (Unwritten, 0x03, 57244, 50, 57244, 112, 0),
    (Unwritten, 0x03, 81920, 4096, 57244, 112, 0),
    (Unwritten, 0x03, 81927, 10, 57244, 112, 0),
    (Unwritten, 0x03, 8193, 20480, 57244, 88, 1),
    (Unwritten, 0x10, 0, 4096, 57244, 120, 1),
    (Unwritten, 0x10, 100, 200, 57244, 112, 0),
    (Unwritten, 0x10, 100, 12288, 57244, 120, 1),
    (Unwritten, 0x10, 28677, 8192, 57244, 136, 1),
    (Unwritten, 0x10, 36864, 4096, 57244, 128, 1),
    (Unwritten, 0x10, 53248, 12288, 65536, 120, 1),
    (Unwritten, 0x10, 57244, 50, 57294, 112, 0),
    (Unwritten, 0x10, 81920, 4096, 86016, 128, 1),
    (Unwritten, 0x10, 81927, 10, 81937, 128, 1),
    (Unwritten, 0x10, 8193, 20480, 57244, 112, 0),
    (Unwritten, 0x11, 0, 4096, 57244, 120, 1),
    (Unwritten, 0x11, 100, 200, 57244, 112, 0),
    (Unwritten, 0x11, 100, 12288, 57244, 120, 1),
    (Unwritten, 0x11, 28677, 8192, 57244, 136, 1),
    (Unwritten, 0x11, 36864, 4096, 57244, 128, 1),
    (Unwritten, 0x11, 53248, 12288, 57244, 120, 1),
    (Unwritten, 0x11, 57244, 50, 57244, 112, 0),
    (Unwritten, 0x11, 81920, 4096, 57244, 128, 1),
    (Unwritten, 0x11, 81927, 10, 57244, 128, 1),
    (Unwritten, 0x11, 8193, 20480, 57244, 112, 0),
    (Empty, 0x00, 0, 4096, 4096, 8, 0),
    (Empty, 0x00, 100, 200, 300, 8, 0),
    (Empty, 0x00, 100, 12288, 12388, 32, 0),
    (Empty, 0x00, 28677, 8192, 36869, 24, 0),
    (Empty, 0x00, 36864, 4096, 40960, 8, 0),
    (Empty, 0x00, 53248, 12288, 65536, 24, 0),
    (Empty, 0x00, 57244, 50, 57294, 8, 0),
    (Empty, 0x00, 81920, 4096, 86016, 8, 0),
    (Empty, 0x00, 81927, 10, 81937, 8, 0),
    (Empty, 0x00, 8193, 20480, 28673, 48, 0),
    (Empty, 0x01, 0, 4096, 0, 8, 0),
    (Empty, 0x01, 100, 200, 0, 8, 0),
    (Empty, 0x01, 100, 12288, 0, 32, 0),
    (Empty, 0x01, 28677, 8192, 0, 24, 0),
    (Empty, 0x01, 36864, 4096, 0, 8, 0),
    (Empty, 0x01, 53248, 12288, 0, 24, 0),
    (Empty, 0x01, 57244, 50, 0, 8, 0),
    (Empty, 0x01, 81920, 4096, 0, 8, 0),
    (Empty, 0x01, 81927, 10, 0, 8, 0),
    (Empty, 0x01, 8193, 20480, 0, 48, 0),
    (Empty, 0x03, 0, 4096, 0, 0, 0),
    (Empty, 0x03, 100, 200, 0, 0, 0),
    (Empty, 0x03, 100, 12288, 0, 0, 0),
    (Empty, 0x03, 28677, 8192, 0, 0, 0),
    (Empty, 0x03, 36864, 4096, 0, 0, 0),
    (Empty, 0x03, 53248, 12288, 0, 0, 0),
    (Empty, 0x03, 57244, 50, 0, 0, 0),
    (Empty, 0x03, 81920, 4096, 0, 0, 0),
    (Empty, 0x03, 81927, 10, 0, 0, 0),
    (Empty, 0x03, 8193, 20480, 0, 0, 0),
    (Empty, 0x10, 0, 4096, 4096, 8, 0),
    (Empty, 0x10, 100, 200, 300, 8, 0),
    (Empty, 0x10, 100, 12288, 12388, 32, 0),
    (Empty, 0x10, 28677, 8192, 36869, 24, 0),
    (Empty, 0x10, 36864, 4096, 40960, 8, 0),
    (Empty, 0x10, 53248, 12288, 65536, 24, 0),
    (Empty, 0x10, 57244, 50, 57294, 8, 0),
    (Empty, 0x10, 81920, 4096, 86016, 8, 0),
    (Empty, 0x10, 81927, 10, 81937, 8, 0),
    (Empty, 0x10, 8193, 20480, 28673, 48, 0),
    (Empty, 0x11, 0, 4096, 0, 8, 0),
    (Empty, 0x11, 100, 200, 0, 8, 0),
    (Empty, 0x11, 100, 12288, 0, 32, 0),
    (Empty, 0x11, 28677, 8192, 0, 24, 0),
    (Empty, 0x11, 36864, 4096, 0, 8, 0),
    (Empty, 0x11, 53248, 12288, 0, 24, 0),
    (Empty, 0x11, 57244, 50, 0, 8, 0),
    (Empty, 0x11, 81920, 4096, 0, 8, 0),
    (Empty, 0x11, 81927, 10, 0, 8, 0),
    (Empty, 0x11, 8193, 20480, 0, 48, 0),
];

#[test]
fn every_supported_mode_has_ext4s_effects() {
    let mut t = T::new(Prealloc::NONE, 64 << 20);
    for (i, &(setup, mode, off, len, size, st_blocks, index)) in EXT4_EFFECTS.iter().enumerate() {
        let name = format!("f{i}");
        let (ino, mut m) = set_up(&mut t, &name, setup);
        let before = t.attr(ino);
        t.fallocate(ino, mode, off, len).unwrap();
        m.fallocate(mode, off, len);
        let what = format!("{setup:?} mode {mode:#x} [{off}, +{len})");
        assert_matches(&mut t, ino, &m, &what);
        let a = t.attr(ino);
        assert_eq!(a.size, size, "{what}: ext4's size");
        assert_eq!(
            a.online_blocks * 8,
            st_blocks - 8 * index,
            "{what}: ext4's st_blocks"
        );
        assert!(
            a.mtime != before.mtime && a.ctime != before.ctime,
            "{what}: times"
        );
    }
    t.remount();
    t.check();
}

// ---------------------------------------------------------------------------
// Refusals

/// Every mode bit pattern at a few ranges, as Linux refuses them:
/// vfs_fallocate's range and mode checks first (EINVAL, EOPNOTSUPP),
/// then the file type, then EFBIG, then the filesystem's own EOPNOTSUPP.
/// Taken from ext4 (every mode 0..=0xff on a 64 KiB file); a refused call
/// changes nothing, times included.
#[test]
fn modes_are_refused_as_linux_refuses_them() {
    let mut t = T::new(Prealloc::NONE, 64 << 20);
    let ino = t.create("f");
    t.write(ino, 0, &pattern(1, 16 * BS));
    let neg = |v: i64| v as u64;
    let max = i64::MAX as u64;
    for mode in 0..0x200u32 {
        let ok = SUPPORTED.contains(&mode);
        let passed_on = ok || PASSED_ON.contains(&mode);
        // Within the file and well past its end, aligned or not.
        for (off, len) in [(0, BS), (1, 1), (BS, 2 * BS), (100 * BS + 7, 10)] {
            let before = t.attr(ino);
            let r = t.fallocate(ino, mode, off, len);
            if ok {
                assert!(r.is_ok(), "mode {mode:#x} [{off}, +{len}): {r:?}");
            } else {
                assert_eq!(errno(r), libc::EOPNOTSUPP, "mode {mode:#x}");
                let a = t.attr(ino);
                assert_eq!(
                    (a.mtime, a.ctime, a.size),
                    (before.mtime, before.ctime, before.size)
                );
            }
        }
        // A length that isn't positive or a negative offset: EINVAL first.
        for (off, len) in [(0, 0), (neg(-1), BS), (0, neg(-1)), (neg(i64::MIN), 1)] {
            assert_eq!(
                errno(t.fallocate(ino, mode, off, len)),
                libc::EINVAL,
                "mode {mode:#x}"
            );
        }
        // Past the largest file: EFBIG, but only for modes Linux passes on.
        for (off, len) in [(1 << 62, 1 << 62), (max - BS + 1, BS), (max, max)] {
            let want = if passed_on {
                libc::EFBIG
            } else {
                libc::EOPNOTSUPP
            };
            assert_eq!(
                errno(t.fallocate(ino, mode, off, len)),
                want,
                "mode {mode:#x} at {off}"
            );
        }
    }
    // Up to the largest file's last byte is fine.
    t.fallocate(ino, KEEP, max - BS, BS).unwrap();
    t.fallocate(ino, 0, max - 10, 10).unwrap();
    assert_eq!(t.attr(ino).size, max);
    t.truncate(ino, 16 * BS);
    t.check();
}

/// Not a regular file: ESPIPE for a fifo, EISDIR for a directory, ENODEV
/// for the rest, after the mode checks and before EFBIG (vfs_fallocate's
/// order). Through a mount Linux stops these earlier (a directory can't
/// be opened for writing: EBADF; a fifo's fd never reaches the fs); the
/// engine's callers get Linux's answers for the inode.
#[test]
fn only_regular_files_fallocate() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let dir = t.mkdir("d");
    let fifo = t.mknod("p", libc::S_IFIFO | 0o644);
    let sock = t.mknod("s", libc::S_IFSOCK | 0o644);
    let chr = t.mknod("c", libc::S_IFCHR | 0o644);
    let link = ready(t.fs().symlink(&root(), 1, b"l", b"f")).unwrap().ino;
    for (ino, want) in [
        (dir, libc::EISDIR),
        (fifo, libc::ESPIPE),
        (sock, libc::ENODEV),
        (chr, libc::ENODEV),
        (link, libc::ENODEV),
    ] {
        for mode in SUPPORTED.iter().chain(&PASSED_ON) {
            assert_eq!(
                errno(t.fallocate(ino, *mode, 0, BS)),
                want,
                "mode {mode:#x}"
            );
            assert_eq!(errno(t.fallocate(ino, *mode, 1 << 62, 1 << 62)), want);
        }
        assert_eq!(errno(t.fallocate(ino, 0x04, 0, BS)), libc::EOPNOTSUPP);
        assert_eq!(errno(t.fallocate(ino, PUNCH, 0, BS)), libc::EOPNOTSUPP);
        assert_eq!(errno(t.fallocate(ino, 0, 0, 0)), libc::EINVAL);
    }
    t.check();
}

// ---------------------------------------------------------------------------
// Effects on the inode

/// data_version grows when the contents or the size could change; mtime
/// and ctime change on every supported call (ext4 6.18 calls
/// file_modified first, even for a punch past the end); setuid and
/// setgid go as on a write by the same caller.
#[test]
fn versions_times_and_setuid_follow_ext4_and_scoutfs() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let ino = t.create("f");
    t.write(ino, 0, &pattern(3, 10 * BS));
    let size = 10 * BS;
    // (mode, offset, length, data_version grows)
    let cases = [
        (0, 0, BS, false),
        (KEEP, 20 * BS, BS, false),
        (0, 9 * BS, 2 * BS, true),
        (PUNCH | KEEP, BS, 100, true),
        (PUNCH | KEEP, 40 * BS, BS, false),
        (ZERO, 0, 10, true),
        (ZERO | KEEP, 50 * BS, BS, false),
        (ZERO, 60 * BS, 1, true),
    ];
    for (mode, off, len, bumps) in cases {
        let before = t.attr(ino);
        t.fallocate(ino, mode, off, len).unwrap();
        let a = t.attr(ino);
        assert!(
            a.mtime != before.mtime && a.ctime != before.ctime,
            "mode {mode:#x}"
        );
        let grew = a.data_version > before.data_version;
        assert_eq!(grew, bumps, "mode {mode:#x} [{off}, +{len}) data_version");
    }
    assert!(t.attr(ino).size > size);

    // setuid/setgid, as a write by a non-owner clears them.
    let user = Creds::user(1000, 1000);
    let set_mode = |t: &mut T, ino: u64| {
        let set = scoutfs_engine::fs::SetAttr {
            mode: Some(0o6777),
            ..Default::default()
        };
        ready(t.fs().setattr(&root(), ino, &set)).unwrap();
    };
    let w = t.create("w");
    set_mode(&mut t, w);
    ready(t.fs().write(&user, w, 0, b"x")).unwrap();
    let after_write = t.attr(w).mode;
    assert_eq!(after_write & 0o7777, 0o777);
    for mode in SUPPORTED {
        set_mode(&mut t, ino);
        ready(t.fs().fallocate(&user, ino, mode, 0, BS)).unwrap();
        assert_eq!(t.attr(ino).mode, after_write, "mode {mode:#x}");
        // Root keeps them (CAP_FSETID).
        set_mode(&mut t, ino);
        t.fallocate(ino, mode, 0, BS).unwrap();
        assert_eq!(t.attr(ino).mode & 0o7777, 0o6777);
    }
    t.check();
}

/// Blocks allocated past the end with KEEP_SIZE stay through a truncate
/// up and go with a truncate down or to the same size (ext4: 8 KiB
/// written, 8 KiB kept at 40 KiB, truncated to 10000 keeps 32 sectors,
/// to 8192 or 8000 leaves 16, to 4000 leaves 8).
#[test]
fn truncate_frees_blocks_past_the_end_unless_it_grows_the_file() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    for (size, st_blocks) in [(10000, 32), (20000, 32), (8192, 16), (8000, 16), (4000, 8)] {
        let ino = t.create(&format!("t{size}"));
        t.write(ino, 0, &pattern(1, 2 * BS));
        t.fallocate(ino, KEEP, 10 * BS, 2 * BS).unwrap();
        t.truncate(ino, size);
        assert_eq!(t.attr(ino).online_blocks * 8, st_blocks, "to {size}");
    }
    t.check();
}

// ---------------------------------------------------------------------------
// Random calls against the model

fn random_range(r: &mut SimRng, span: u64) -> (u64, u64) {
    // Block-aligned or not at either end, over holes, written and
    // unwritten blocks, across and past the end.
    let off = if r.below(3) == 0 {
        r.below(span / BS) * BS
    } else {
        r.below(span)
    };
    let len = match r.below(4) {
        0 => (1 + r.below(4)) * BS,
        1 => 1 + r.below(100),
        _ => 1 + r.below(6 * BS),
    };
    (off, len)
}

#[test]
fn random_calls_match_the_model() {
    let modes = [0, KEEP, PUNCH | KEEP, ZERO, ZERO | KEEP];
    for seed in 0..24u64 {
        let mut t = T::new(Prealloc::NONE, 32 << 20);
        let ino = t.create("f");
        let mut m = Model::default();
        let mut r = SimRng::new(seed);
        let span = 24 * BS;
        for step in 0..150 {
            let what = format!("seed {seed} step {step}");
            match r.below(10) {
                0..=2 => {
                    let (off, len) = random_range(&mut r, span);
                    let d: Vec<u8> = (0..len).map(|_| 1 + r.below(255) as u8).collect();
                    t.write(ino, off, &d);
                    m.write(off, &d);
                }
                3 => {
                    let size = r.below(span);
                    t.truncate(ino, size);
                    m.truncate(size);
                }
                4 if r.below(4) == 0 => t.remount(),
                _ => {
                    let mode = modes[r.below(modes.len() as u64) as usize];
                    let (off, len) = random_range(&mut r, span);
                    t.fallocate(ino, mode, off, len).unwrap();
                    m.fallocate(mode, off, len);
                }
            }
            assert_matches(&mut t, ino, &m, &what);
        }
        t.check();
    }
}

// ---------------------------------------------------------------------------
// Full devices and offline blocks

/// A device that fills part way: what was allocated stays allocated and
/// accounted (ext4 leaves it too), the call is ENOSPC, the size unchanged.
/// Blocks freed by the open transaction are free to it: one commit, and
/// the call succeeds.
#[test]
fn a_full_device_keeps_what_was_allocated_and_deleting_makes_room() {
    // 2 MiB of data blocks (the first 256 KiB of the device are reserved).
    let mut t = T::new(Prealloc::NONE, (2 << 20) + (256 << 10));
    let total = t.free_blocks();
    let big = t.create("big");
    t.fallocate(big, 0, 0, (total - 64) * BS).unwrap();
    t.commit();
    for (mode, name) in [(0, "a"), (ZERO, "z")] {
        let f = t.create(name);
        let r = t.fallocate(f, mode, 0, 100 * BS);
        assert_eq!(errno(r), libc::ENOSPC, "mode {mode:#x}");
        let a = t.attr(f);
        assert_eq!(a.size, 0);
        assert!(a.online_blocks > 0, "mode {mode:#x}: partial progress kept");
        t.check();
        t.unlink(name);
        t.commit();
    }
    // Deleting the big file frees space in the open transaction: statfs
    // counts it at once and the fallocate that needs it commits for it.
    let free0 = t.free_blocks();
    t.unlink("big");
    assert_eq!(t.free_blocks(), total);
    let f = t.create("f");
    t.fallocate(f, ZERO, 0, (total - free0 + 10) * BS).unwrap();
    assert_eq!(t.attr(f).online_blocks, total - free0 + 10);
    t.check();
}

/// ZERO_RANGE over blocks released to the archive waits for them like a
/// write (ENODATA until staged) and changes no block.
#[test]
fn zeroing_offline_blocks_is_refused_before_anything_changes() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let ino = t.create("f");
    t.write(ino, 0, &pattern(5, 4 * BS));
    let off = DataExtentVal {
        blkno: 0.into(),
        flags: DATA_EXTENT_OFFLINE,
        _pad: [0; 7],
    };
    t.vol()
        .upsert(data_extent_key(ino, 8, 4), bytemuck::bytes_of(&off))
        .unwrap();
    let before = t.extents(ino);
    assert_eq!(errno(t.fallocate(ino, ZERO, 2 * BS, 8 * BS)), libc::ENODATA);
    assert_eq!(t.extents(ino), before);
    assert_eq!(t.read(ino, 0, 4 * BS as usize), pattern(5, 4 * BS));
}
