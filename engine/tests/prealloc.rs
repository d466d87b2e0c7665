//! What writes allocate: the blocks they touch, plus preallocation only
//! where scoutfs's rules (data.c alloc_block) give it, for both settings
//! of data_prealloc_contig_only. The counts are online blocks (st_blocks
//! is eight times that) and `scoutfs check` agrees after every scenario.
//! The extent counts of interleaved writers are scoutfs's own golden
//! figures (tests/golden/data-prealloc).

mod file_harness;

use std::collections::BTreeMap;

use file_harness::{BS, T};
use scoutfs_engine::data::{self, Prealloc};
use scoutfs_engine::format::alloc::DATA_EXTENT_UNWRITTEN;

const GIB: u64 = 1 << 30;

fn contig(blocks: u64) -> Prealloc {
    Prealloc {
        blocks,
        contig_only: true,
    }
}

fn region(blocks: u64) -> Prealloc {
    Prealloc {
        blocks,
        contig_only: false,
    }
}

/// One write into a new file: (what, offset, length, online blocks with
/// the default streaming rule, with 16-block regions).
const ONE_WRITE: [(&str, u64, u64, u64, u64); 9] = [
    ("a byte at 0", 0, 1, 1, 16),
    ("one whole block", 0, BS, 1, 16),
    ("a block and a byte", 0, BS + 1, 2, 16),
    ("two bytes across a boundary", BS - 1, 2, 2, 16),
    ("23 bytes at 8182 (blocks 1 and 2)", 8182, 23, 2, 16),
    ("23 bytes at 1 GiB - 10", GIB - 10, 23, 2, 32),
    ("a byte in a hole", 5 * BS + 7, 1, 1, 16),
    // Blocks 0, 1, then 2 streams: scoutfs preallocates block 3 with it.
    ("three blocks at 0", 0, 3 * BS, 4, 16),
    // 1, 1, 2, 4, ..., 128: exactly the 256 blocks written.
    ("1 MiB at 0", 0, 1 << 20, 256, 256),
];

#[test]
fn one_write_allocates_what_it_touches_plus_the_rules_preallocation() {
    for (p, col) in [(Prealloc::default(), 0), (region(16), 1)] {
        let mut t = T::new(p, 32 << 20);
        for (i, &(what, off, len, streaming, regions)) in ONE_WRITE.iter().enumerate() {
            let ino = t.create(&format!("f{i}"));
            t.write(ino, off, &vec![7u8; len as usize]);
            let want = [streaming, regions][col];
            let a = t.attr(ino);
            assert_eq!(a.online_blocks, want, "{what}, {p:?}");
            assert_eq!(t.read(ino, off, len as usize), vec![7u8; len as usize]);
        }
        t.check();
    }
}

/// Regions stop at the largest file's last block, whatever their size.
#[test]
fn regions_end_at_the_last_block_of_the_largest_file() {
    let mut t = T::new(region(13), 16 << 20);
    let ino = t.create("f");
    let last = data::MAX_FILE_BYTES - 1;
    t.write(ino, last, b"z");
    assert_eq!(t.read(ino, last, 1), b"z");
    let e = t.extents(ino);
    assert!(e.iter().all(|e| e.end() <= data::MAX_IBLOCK), "{e:?}");
    // 2^51 - 1 is 7 past a multiple of 13: the block and the 7 before it.
    assert_eq!(t.attr(ino).online_blocks, (data::MAX_IBLOCK % 13) + 1);
    t.check();
}

/// The reproducer: `dd bs=1` writes a byte at a time. With the
/// old rule (prealloc after any adjacent extent) the second block of 23
/// bytes at 1 GiB - 10 preallocated 2048 blocks, and 23 bytes at 8182
/// allocated 3.
#[test]
fn byte_at_a_time_writes_allocate_only_the_blocks_touched() {
    let mut t = T::new(Prealloc::default(), 16 << 20);
    for (name, off) in [("far", GIB - 10), ("near", 8182)] {
        let ino = t.create(name);
        for i in 0..23 {
            t.write(ino, off + i, b"x");
        }
        assert_eq!(t.attr(ino).online_blocks, 2, "{name}");
        assert_eq!(t.read(ino, off, 23), vec![b'x'; 23]);
    }
    t.check();
}

/// A block at a time from an empty file, each write a streaming append:
/// blocks 0 and 1 alone, then each allocation as large as the file
/// (block 2 takes 2, block 4 takes 4, ...) up to data_prealloc_blocks.
#[test]
fn streaming_appends_double_up_to_the_limit() {
    let mut t = T::new(contig(32), 16 << 20);
    let ino = t.create("f");
    let mut online = Vec::new();
    for b in 0..130u64 {
        t.write(ino, b * BS, &[1u8; BS as usize]);
        online.push(t.attr(ino).online_blocks);
    }
    let at = |b: usize| online[b];
    assert_eq!((at(0), at(1), at(2), at(3), at(4)), (1, 2, 4, 4, 8));
    assert_eq!(
        (at(8), at(16), at(31), at(32), at(63)),
        (16, 32, 32, 64, 64)
    );
    assert_eq!((at(64), at(96), at(128), at(129)), (96, 128, 160, 160));
    // Preallocated blocks are unwritten, past the end of the file.
    let a = t.attr(ino);
    assert_eq!(a.size, 130 * BS);
    assert_eq!(
        t.read(ino, 0, 130 * BS as usize),
        vec![1u8; 130 * BS as usize]
    );
    t.check();
}

/// A streaming append stops its preallocation at the next extent.
#[test]
fn streaming_preallocation_stops_at_the_next_extent() {
    let mut t = T::new(Prealloc::default(), 16 << 20);
    let ino = t.create("f");
    t.write(ino, 0, &[1u8; 2 * BS as usize]);
    t.write(ino, 8 * BS, &[2u8; 2 * BS as usize]);
    assert_eq!(t.attr(ino).online_blocks, 4);
    // Block 4 with 4 online blocks looks like a stream: 4..7, up to 8.
    t.write(ino, 4 * BS, &[3u8; 10]);
    assert_eq!(t.attr(ino).online_blocks, 8);
    let kinds = block_kinds(&mut t, ino);
    assert_eq!(kinds.get(&4), Some(&'w'));
    assert_eq!((kinds.get(&5), kinds.get(&7)), (Some(&'u'), Some(&'u')));
    // Any other write into a hole allocates only itself.
    t.write(ino, 20 * BS, &[4u8; 10]);
    t.write(ino, 12 * BS + 5, &[4u8; 10]);
    assert_eq!(t.attr(ino).online_blocks, 10);
    t.check();
}

/// Each block written or unwritten, as the extents say.
fn block_kinds(t: &mut T, ino: u64) -> BTreeMap<u64, char> {
    let mut out = BTreeMap::new();
    for e in t.extents(ino) {
        let k = if e.flags & DATA_EXTENT_UNWRITTEN != 0 {
            'u'
        } else {
            'w'
        };
        for b in e.iblock..=e.end() {
            out.insert(b, k);
        }
    }
    out
}

/// Two files written a block at a time in turn (as scoutfs's test does
/// with dd), forwards or backwards; the extents each ends with.
fn interleaved(p: Prealloc, blocks: u64, backwards: bool) -> (usize, usize) {
    let mut t = T::new(p, 32 << 20);
    let (f, g) = (t.create("f"), t.create("g"));
    for i in 0..blocks {
        let b = if backwards { blocks - 1 - i } else { i };
        t.write(f, b * BS, &[1u8; BS as usize]);
        t.write(g, b * BS, &[2u8; BS as usize]);
    }
    let counts = (t.extents(f).len(), t.extents(g).len());
    assert_eq!(
        t.read(f, 0, (blocks * BS) as usize),
        vec![1u8; (blocks * BS) as usize]
    );
    t.check();
    counts
}

#[test]
fn interleaved_writers_get_scoutfs_extent_counts() {
    // (options, blocks, backwards, extents per file in scoutfs's golden
    // output; an unwritten tail counts as an extent there too)
    let cases = [
        (contig(32), 64, false, 7),
        (contig(32), 128, false, 9),
        (contig(32), 32, true, 32),
        (region(16), 64, false, 4),
        (region(16), 64, true, 4),
        (contig(7), 14, false, 6),
        (region(13), 53, false, 6),
        (region(1), 3, false, 3),
    ];
    for (p, blocks, backwards, want) in cases {
        let got = interleaved(p, blocks, backwards);
        assert_eq!(
            got,
            (want, want),
            "{p:?} {blocks} blocks backwards={backwards}"
        );
    }
}

/// With the defaults, files appended in turn stay about log2(n) extents.
#[test]
fn interleaved_appends_stay_near_log2_extents() {
    let (f, g) = interleaved(Prealloc::default(), 512, false);
    assert!(f <= 12 && g <= 12, "extents: {f}, {g}");
}

/// Region preallocation fills the hole of the aligned region around each
/// written block, from the region's start unless an extent lies before
/// the block in it, to the region's end or the next extent: scoutfs's
/// golden "block writes into region allocs hole" (8-block regions),
/// block by block.
#[test]
fn region_preallocation_fills_the_hole_around_the_block() {
    let mut t = T::new(Prealloc::NONE, 16 << 20);
    let ino = t.create("f");
    for b in [24, 32, 40, 55, 63, 71, 72, 79, 80, 87, 88, 95] {
        t.write(ino, b * BS, &[1u8; BS as usize]);
    }
    t.remount_with(region(8));
    for b in [0, 15, 19, 25, 39, 44, 48, 62, 67, 73, 86, 92] {
        t.write(ino, b * BS, &[2u8; BS as usize]);
    }
    // The golden listing's extents, as written (w) and unwritten (u) runs.
    let runs = [
        (0, 1, 'w'),
        (1, 14, 'u'),
        (15, 1, 'w'),
        (16, 3, 'u'),
        (19, 1, 'w'),
        (20, 4, 'u'),
        (24, 1, 'w'),
        (25, 1, 'w'),
        (26, 6, 'u'),
        (32, 1, 'w'),
        (39, 1, 'w'),
        (40, 1, 'w'),
        (44, 1, 'w'),
        (45, 3, 'u'),
        (48, 1, 'w'),
        (49, 6, 'u'),
        (55, 1, 'w'),
        (56, 6, 'u'),
        (62, 1, 'w'),
        (63, 1, 'w'),
        (64, 3, 'u'),
        (67, 1, 'w'),
        (68, 3, 'u'),
        (71, 2, 'w'),
        (73, 1, 'w'),
        (74, 5, 'u'),
        (79, 2, 'w'),
        (86, 1, 'w'),
        (87, 2, 'w'),
        (92, 1, 'w'),
        (93, 2, 'u'),
        (95, 1, 'w'),
    ];
    let mut want = BTreeMap::new();
    for (start, len, k) in runs {
        for b in start..start + len {
            want.insert(b, k);
        }
    }
    assert_eq!(block_kinds(&mut t, ino), want);
    t.check();
}
