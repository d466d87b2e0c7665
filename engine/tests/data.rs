//! File data on the mem devices against a byte-vector model: writes at any
//! offset and size, holes, truncates, punched holes, zeroed ranges,
//! preallocation, commits and remounts; large sparse offsets; freed blocks come back after commit.

use scoutfs_engine::data::{self, extents, online_blocks};
use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;
use scoutfs_engine::util::rng::SimRng;

const INO: u64 = 1000;

fn setup() -> (MemDev, MemDev) {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(64 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    (meta, data)
}

fn open(meta: &MemDev, data: &MemDev) -> Volume {
    let opts = TxnOptions {
        commit_dirty_blocks: 32,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    };
    let mut vol = Volume::open(meta, opts).unwrap();
    vol.attach_data_device(data).unwrap();
    vol
}

fn fill(seed: u64, n: usize) -> Vec<u8> {
    let mut r = SimRng::new(seed);
    (0..n).map(|_| r.next_u64() as u8).collect()
}

fn run(seed: u64) {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    let mut r = SimRng::new(seed);
    let mut model: Vec<u8> = Vec::new();
    let span = 1u64 << (14 + r.below(6)); // 16 KiB .. 512 KiB
    for step in 0..120 {
        match r.below(14) {
            0..=5 => {
                let off = r.below(span);
                let len = 1 + r.below(3 * 4096 + 100) as usize;
                let d = fill(seed ^ step, len);
                ready(data::write(&mut vol, INO, off, &d)).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&d);
            }
            6 => {
                let size = r.below(span);
                ready(data::truncate(&mut vol, INO, size)).unwrap();
                model.resize(size as usize, 0);
            }
            7 => {
                let off = r.below(span);
                let len = r.below(5 * 4096);
                ready(data::punch_hole(&mut vol, INO, off, len)).unwrap();
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            8 => {
                let off = r.below(span);
                let len = r.below(8 * 4096);
                let mut allocated = 0;
                ready(data::fallocate(&mut vol, INO, off, len, &mut allocated)).unwrap();
            }
            9 => {
                vol.commit().unwrap();
            }
            11 => {
                // Zeroing (FALLOC_FL_ZERO_RANGE's data part; the size is
                // the caller's).
                let off = r.below(span);
                let len = r.below(5 * 4096);
                let mut allocated = 0;
                ready(data::zero_range(&mut vol, INO, off, len, &mut allocated)).unwrap();
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            10 => {
                vol.commit().unwrap();
                drop(vol);
                vol = open(&meta, &dev);
            }
            _ => {
                let off = r.below(span + 4096);
                let len = r.below(6 * 4096) as usize;
                let got = ready(data::read(&mut vol, INO, off, len)).unwrap();
                let want: Vec<u8> = (0..len)
                    .map(|i| model.get(off as usize + i).copied().unwrap_or(0))
                    .collect();
                assert!(
                    got == want,
                    "seed {seed} step {step}: read [{off}, +{len}) differs"
                );
            }
        }
    }
    let all = ready(data::read(&mut vol, INO, 0, model.len())).unwrap();
    assert!(all == model, "seed {seed}: final contents differ");
    // Extents don't overlap and stay in order.
    let ex = ready(extents(&mut vol, INO, 0, data::MAX_IBLOCK)).unwrap();
    assert!(
        ex.windows(2).all(|w| w[0].end() < w[1].iblock),
        "seed {seed}: overlapping extents"
    );
    vol.commit().unwrap();
    // The data layer alone writes extents of an inode that has no inode
    // item; check reports exactly that and nothing else (no overlap, no
    // leak).
    let problems = check_volume(vol.store_mut(), &meta, &dev).problems;
    assert!(
        problems.iter().all(|p| p.contains("of a missing inode")),
        "seed {seed}: {problems:?}"
    );
}

#[test]
fn file_data_matches_a_byte_model() {
    for seed in 0..40 {
        run(seed);
    }
}

#[test]
fn sequential_writes_make_one_extent() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    for i in 0..64u64 {
        ready(data::write(&mut vol, INO, i * 65536, &vec![i as u8; 65536])).unwrap();
    }
    let ex = ready(extents(&mut vol, INO, 0, data::MAX_IBLOCK)).unwrap();
    assert_eq!(ex.len(), 1, "{ex:?}");
    assert_eq!(ex[0].len, 64 * 16);
    assert_eq!(ready(online_blocks(&mut vol, INO)).unwrap(), 1024);
}

#[test]
fn sparse_files_past_4_gib_and_near_the_limit() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    let far = 5u64 << 30;
    ready(data::write(&mut vol, INO, far + 123, b"far away")).unwrap();
    let top = data::MAX_FILE_BYTES - 4;
    ready(data::write(&mut vol, INO, top, b"edge")).unwrap();
    assert_eq!(
        ready(data::read(&mut vol, INO, far + 120, 11)).unwrap(),
        b"\0\0\0far away"
    );
    assert_eq!(ready(data::read(&mut vol, INO, top, 4)).unwrap(), b"edge");
    assert_eq!(
        ready(data::read(&mut vol, INO, 1 << 40, 8)).unwrap(),
        vec![0u8; 8],
        "holes read zeros"
    );
    assert_eq!(
        ready(online_blocks(&mut vol, INO)).unwrap(),
        2,
        "only written blocks are allocated"
    );
    let e = ready(data::write(&mut vol, INO, u64::MAX - 1, b"over")).unwrap_err();
    assert_eq!(e.errno(), libc::EFBIG);
}

#[test]
fn truncated_blocks_count_as_free_at_once_and_are_reused_only_after_commit() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    let free0 = vol.statfs().unwrap().free_data_blocks;
    ready(data::write(&mut vol, INO, 0, &vec![1u8; 1 << 20])).unwrap();
    assert_eq!(vol.statfs().unwrap().free_data_blocks, free0 - 256);
    let old = ready(extents(&mut vol, INO, 0, data::MAX_IBLOCK)).unwrap();
    ready(data::truncate(&mut vol, INO, 0)).unwrap();
    assert_eq!(
        vol.statfs().unwrap().free_data_blocks,
        free0,
        "free to the next commit, so statfs counts them when the truncate returns"
    );
    assert_eq!(vol.pending_data_free_blocks(), 256);
    // But nothing hands them out before that commit: the last committed
    // extents may still point at them.
    ready(data::write(&mut vol, INO + 1, 0, &vec![2u8; 1 << 20])).unwrap();
    let new = ready(extents(&mut vol, INO + 1, 0, data::MAX_IBLOCK)).unwrap();
    for (o, n) in old.iter().flat_map(|o| new.iter().map(move |n| (o, n))) {
        let overlap = o.blkno < n.blkno + n.len && n.blkno < o.blkno + o.len;
        assert!(!overlap, "freed {o:?} reused by {n:?} before the commit");
    }
    assert_eq!(vol.statfs().unwrap().free_data_blocks, free0 - 256);
    vol.commit().unwrap();
    assert_eq!(vol.pending_data_free_blocks(), 0);
    assert_eq!(vol.statfs().unwrap().free_data_blocks, free0 - 256);
    assert_eq!(ready(online_blocks(&mut vol, INO)).unwrap(), 0);
}

#[test]
fn full_data_device_is_enospc_and_keeps_what_was_written() {
    let meta = MemDev::new(64 << 20);
    let dev = MemDev::new(2 << 20);
    mkfs(&meta, &dev, &MkfsOptions::default()).unwrap();
    let mut vol = open(&meta, &dev);
    let mut off = 0u64;
    let err = loop {
        match ready(data::write(&mut vol, INO, off, &vec![7u8; 65536])) {
            Ok(w) if w.bytes == 65536 => off += 65536,
            Ok(w) => panic!("short write {w:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    vol.commit().unwrap();
    assert_eq!(
        ready(data::read(&mut vol, INO, 0, off as usize)).unwrap(),
        vec![7u8; off as usize]
    );
}

#[test]
fn small_writes_are_buffered_until_the_commit_writes_them_back() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    let writes0 = dev.stats().writes;
    for i in 0..100u64 {
        ready(data::write(&mut vol, INO + i, 0, &fill(i, 4096))).unwrap();
    }
    assert_eq!(
        dev.stats().writes,
        writes0,
        "no device write per small file"
    );
    assert_eq!(vol.data_io().unwrap().pending_blocks(), 100);
    // Reads see the buffer.
    assert_eq!(
        ready(data::read(&mut vol, INO + 7, 0, 4096)).unwrap(),
        fill(7, 4096)
    );
    vol.commit().unwrap();
    assert_eq!(vol.data_io().unwrap().pending_blocks(), 0);
    let runs = dev.stats().writes - writes0;
    assert!(runs <= 4, "100 contiguous blocks went out in {runs} writes");
    drop(vol);
    let mut vol = open(&meta, &dev);
    for i in 0..100u64 {
        assert_eq!(
            ready(data::read(&mut vol, INO + i, 0, 4096)).unwrap(),
            fill(i, 4096)
        );
    }
}

#[test]
fn a_failed_write_back_fails_the_commit_and_commits_nothing() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    ready(data::write(&mut vol, INO, 0, &fill(1, 8192))).unwrap();
    vol.commit().unwrap();
    ready(data::write(&mut vol, INO, 8192, &fill(2, 4096))).unwrap();
    dev.inject(scoutfs_engine::dev::mem::Fault::always(
        scoutfs_engine::dev::IoOp::Write,
    ));
    let e = vol.commit().unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(vol.read_only().is_some());
    dev.clear_faults();
    drop(vol);
    // The extent of the lost write never became durable.
    let mut vol = open(&meta, &dev);
    let ex = ready(extents(&mut vol, INO, 0, data::MAX_IBLOCK)).unwrap();
    assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 2, "{ex:?}");
    assert_eq!(
        ready(data::read(&mut vol, INO, 0, 8192)).unwrap(),
        fill(1, 8192)
    );
}

#[test]
fn sequential_reads_are_read_ahead_and_stay_coherent_with_writes() {
    let (meta, dev) = setup();
    let mut vol = open(&meta, &dev);
    let file = fill(9, 16 << 20);
    ready(data::write(&mut vol, INO, 0, &file)).unwrap();
    vol.commit().unwrap();
    drop(vol);
    let mut vol = open(&meta, &dev);
    let mut got = Vec::new();
    let mut off = 0u64;
    while off < file.len() as u64 {
        let chunk = ready(data::read(&mut vol, INO, off, 128 << 10)).unwrap();
        // Overwrite a block just ahead of the reader, through the buffer
        // (small) and directly (large): the read-ahead copy must not win.
        if off == 2 << 20 {
            ready(data::write(&mut vol, INO, (3 << 20) + 4096, &[0xee; 100])).unwrap();
            ready(data::write(&mut vol, INO, 5 << 20, &vec![0xdd; 512 << 10])).unwrap();
        }
        got.extend_from_slice(&chunk);
        off += 128 << 10;
    }
    let mut want = file.clone();
    want[(3 << 20) + 4096..(3 << 20) + 4196].fill(0xee);
    want[5 << 20..(5 << 20) + (512 << 10)].fill(0xdd);
    assert!(got == want, "contents differ from the model");
    let hits = vol.data_io().unwrap().ra_hits;
    assert!(hits > 2048, "read-ahead served {hits} blocks");
    // A buffered write, then a commit writing it back: later reads of the
    // block see it even though read-ahead may have fetched the old one.
    ready(data::write(&mut vol, INO, 8 << 20, &[0xcc; 4096])).unwrap();
    let _ = ready(data::read(&mut vol, INO, 0, 128 << 10)).unwrap();
    let _ = ready(data::read(&mut vol, INO, 128 << 10, 8 << 20)).unwrap();
    vol.commit().unwrap();
    assert_eq!(
        ready(data::read(&mut vol, INO, 8 << 20, 4096)).unwrap(),
        vec![0xcc; 4096]
    );
}

#[test]
fn freed_blocks_are_discarded_after_the_commit_with_the_discard_option() {
    for discard in [false, true] {
        let (meta, dev) = setup();
        let opts = TxnOptions {
            commit_dirty_blocks: 32,
            meta_targets: (32, 48),
            discard,
            ..TxnOptions::default()
        };
        let mut vol = Volume::open(&meta, opts).unwrap();
        vol.attach_data_device(&dev).unwrap();
        ready(data::write(&mut vol, INO, 0, &fill(3, 1 << 20))).unwrap();
        vol.commit().unwrap();
        let ex = ready(extents(&mut vol, INO, 0, data::MAX_IBLOCK)).unwrap();
        let at = ex[0].blkno * 4096;
        ready(data::truncate(&mut vol, INO, 0)).unwrap();
        let discards0 = dev.stats().discards;
        let mut before = vec![0u8; 4096];
        dev.read_at(at, &mut before);
        assert_eq!(before, fill(3, 4096), "still there until the commit");
        vol.commit().unwrap();
        let mut after = vec![0u8; 4096];
        dev.read_at(at, &mut after);
        if discard {
            assert!(dev.stats().discards > discards0);
            assert_eq!(after, vec![0u8; 4096], "discarded after the commit");
        } else {
            assert_eq!(dev.stats().discards, discards0);
            assert_eq!(after, fill(3, 4096));
        }
    }
}
