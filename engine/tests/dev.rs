//! Device layer: every backend round-trips data, rejects bad requests before
//! they reach the device, and the mem backend's fault and power-loss models
//! behave as specified.

use std::path::Path;

use proptest::prelude::*;
use scoutfs_engine::dev::mem::{Fault, MemDev};
use scoutfs_engine::dev::uring::{UringDev, UringOptions};
use scoutfs_engine::dev::{
    open_queue, BlockDev, DevError, Discard, Geometry, IoOp, IoRequest, QueueConfig,
};
use scoutfs_engine::util::rng::SimRng;

mod conformance;
use conformance::{
    discard_round_trip, fill, flush, pool, queue, read, rejects_bad_requests, round_trip_many,
    write,
};

const MIB: u64 = 1 << 20;

#[test]
fn mem_round_trips_many_offsets_and_sizes() {
    for seed in 0..4 {
        round_trip_many(&MemDev::new(8 * MIB), seed);
    }
}

#[test]
fn mem_rejects_bad_requests() {
    rejects_bad_requests(&MemDev::new(8 * MIB));
}

#[test]
fn mem_discards_read_as_zeros() {
    let dev = MemDev::new(8 * MIB);
    assert_eq!(dev.geometry().discard, Discard::Zeroes);
    discard_round_trip(&dev);
    assert_eq!(dev.stats().discards, 3);
}

#[test]
fn mem_without_discard_refuses_it_cleanly() {
    let dev = MemDev::with_geometry(Geometry {
        logical_block_size: 4096,
        capacity_bytes: 8 * MIB,
        max_transfer_bytes: MIB as u32,
        discard: Discard::Unsupported,
    });
    discard_round_trip(&dev);
    assert_eq!(dev.stats().discards, 0, "nothing reached the device");
}

/// A discard not yet covered by a flush is lost to a power cut whole or
/// in part like a write; once flushed it stays.
#[test]
fn mem_discard_is_durable_only_after_a_flush() {
    let dev = MemDev::new(MIB);
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    write(&mut qp, &pool, 0, &[0xaa; 64 * 1024]).unwrap();
    flush(&mut qp).unwrap();
    let c = qp.run_one(IoRequest::discard(0, 32 * 1024, 1));
    c.result.unwrap();
    assert_eq!(
        dev.volatile_writes(),
        1,
        "a discard is volatile until flushed"
    );
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..32 {
        let dev2 = MemDev::new(MIB);
        let mut q2 = queue(&dev2, &pool);
        write(&mut q2, &pool, 0, &[0xaa; 64 * 1024]).unwrap();
        flush(&mut q2).unwrap();
        q2.run_one(IoRequest::discard(0, 32 * 1024, 1))
            .result
            .unwrap();
        let r = dev2.power_cut(seed);
        dev2.restart();
        let mut q3 = queue(&dev2, &pool);
        let got = read(&mut q3, &pool, 0, 64 * 1024).unwrap();
        assert!(got[32 * 1024..].iter().all(|&b| b == 0xaa), "outside kept");
        // Zeros for a prefix of sectors, old data after it.
        let zeros = got[..32 * 1024].iter().take_while(|&&b| b == 0).count();
        assert!(zeros % 4096 == 0 && got[zeros..32 * 1024].iter().all(|&b| b == 0xaa));
        outcomes.insert((r.kept, r.dropped, r.torn));
    }
    assert!(outcomes.len() > 1, "the cut keeps, drops or tears it");
    flush(&mut qp).unwrap();
    dev.power_cut(1);
    dev.restart();
    let mut qp = queue(&dev, &pool);
    let got = read(&mut qp, &pool, 0, 64 * 1024).unwrap();
    assert!(
        got[..32 * 1024].iter().all(|&b| b == 0),
        "flushed discard stays"
    );
    assert!(got[32 * 1024..].iter().all(|&b| b == 0xaa));
}

fn temp_file(dir: &Path, len: u64) -> std::path::PathBuf {
    let p = dir.join("dev.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

#[test]
fn uring_round_trips_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = UringDev::open(temp_file(dir.path(), 8 * MIB), UringOptions::default()).unwrap();
    assert_eq!(dev.geometry().capacity_bytes, 8 * MIB);
    round_trip_many(&dev, 11);
}

#[test]
fn uring_round_trips_with_sqpoll() {
    let dir = tempfile::tempdir().unwrap();
    let opts = UringOptions {
        sqpoll_idle_ms: Some(10),
        ..Default::default()
    };
    let dev = UringDev::open(temp_file(dir.path(), 4 * MIB), opts).unwrap();
    round_trip_many(&dev, 12);
}

#[test]
fn uring_discards_punch_holes_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(dir.path(), 16 * MIB);
    let dev = UringDev::open(&path, UringOptions::default()).unwrap();
    assert_eq!(dev.geometry().discard, Discard::Zeroes);
    discard_round_trip(&dev);
    // The holes are real: the file holds fewer blocks than it was written.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&path).unwrap();
    assert!(m.blocks() * 512 < MIB, "{} blocks", m.blocks());
}

#[test]
fn uring_rejects_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let dev = UringDev::open(temp_file(dir.path(), 4 * MIB), UringOptions::default()).unwrap();
    rejects_bad_requests(&dev);
}

#[test]
fn uring_data_survives_reopen_and_unregistered_buffers_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = temp_file(dir.path(), 4 * MIB);
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let dev = UringDev::open(&path, UringOptions::default()).unwrap();
        // A queue with no registered pools: plain (non-fixed) reads/writes.
        let pool = pool();
        let mut qp = open_queue(
            &dev,
            &QueueConfig {
                depth: 4,
                pools: vec![],
            },
        )
        .unwrap();
        write(&mut qp, &pool, MIB, &data).unwrap();
        flush(&mut qp).unwrap();
    }
    let dev = UringDev::open(&path, UringOptions::default()).unwrap();
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    assert_eq!(read(&mut qp, &pool, MIB, data.len()).unwrap(), data);
}

#[test]
fn uring_open_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let e = UringDev::open(dir.path().join("missing"), UringOptions::default()).unwrap_err();
    assert!(matches!(e, DevError::Open { .. }), "{e}");
    assert!(e.to_string().contains("missing"));
    let empty = temp_file(dir.path(), 0);
    let e = UringDev::open(&empty, UringOptions::default()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = UringDev::open(dir.path(), UringOptions::default()).unwrap_err();
    assert!(matches!(e, DevError::Open { .. }), "{e}");
}

/// A loop device over a file: the block-device path (BLKGETSIZE64,
/// BLKSSZGET, O_DIRECT on a bdev). Needs root and losetup.
#[test]
fn uring_round_trips_on_a_loop_device() {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: loop devices need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = temp_file(dir.path(), 16 * MIB);
    let out = match std::process::Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&img)
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "skipped: losetup failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no losetup: {e}");
            return;
        }
    };
    let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());
    let dev = UringDev::open(&loopdev, UringOptions::default()).unwrap();
    assert!(dev.is_block_device());
    assert_eq!(dev.geometry().capacity_bytes, 16 * MIB);
    round_trip_many(&dev, 13);
    rejects_bad_requests(&dev);
    discard_round_trip(&dev);
}

#[test]
fn injected_errors_hit_exactly_the_chosen_requests() {
    let dev = MemDev::new(4 * MIB);
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    // The third write (0-based nth = 2) fails once; writes to [1 MiB, 2 MiB)
    // always fail with ENOSPC; reads are untouched.
    dev.inject(Fault::nth(IoOp::Write, 2));
    dev.inject(Fault {
        op: Some(IoOp::Write),
        range: Some(MIB..2 * MIB),
        skip: 0,
        times: None,
        errno: libc::ENOSPC,
    });
    let blk = vec![0xabu8; 4096];
    assert!(write(&mut qp, &pool, 0, &blk).is_ok());
    assert!(write(&mut qp, &pool, 4096, &blk).is_ok());
    let e = write(&mut qp, &pool, 8192, &blk).unwrap_err();
    assert_eq!(
        e,
        DevError::Io {
            op: IoOp::Write,
            offset: 8192,
            errno: libc::EIO
        }
    );
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        write(&mut qp, &pool, 8192, &blk).is_ok(),
        "nth fault fires once"
    );
    for _ in 0..3 {
        let e = write(&mut qp, &pool, MIB + 4096, &blk).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
    }
    assert_eq!(
        read(&mut qp, &pool, MIB + 4096, 4096).unwrap(),
        vec![0u8; 4096],
        "failed writes land nothing"
    );
    assert_eq!(read(&mut qp, &pool, 0, 4096).unwrap(), blk);
    dev.inject(Fault::always(IoOp::Flush));
    assert!(flush(&mut qp).is_err());
    assert_eq!(
        dev.volatile_writes(),
        3,
        "a failed flush makes nothing durable"
    );
    dev.clear_faults();
    assert!(flush(&mut qp).is_ok());
    assert_eq!(dev.volatile_writes(), 0);
    assert_eq!(dev.stats().injected_errors, 5);
}

#[test]
fn requests_wait_for_kick() {
    let dev = MemDev::new(MIB);
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    qp.submit(IoRequest::write(0, 4096, pool.try_get().unwrap(), 9))
        .unwrap();
    assert_eq!(qp.reap(&mut |_| panic!("completed before kick")), 0);
    qp.kick().unwrap();
    let mut tags = vec![];
    qp.reap(&mut |c| tags.push(c.tag));
    assert_eq!(tags, vec![9]);
}

#[test]
fn full_queue_is_back_pressure() {
    let dev = MemDev::new(MIB);
    let pool = pool();
    let mut qp = open_queue(
        &dev,
        &QueueConfig {
            depth: 2,
            pools: vec![],
        },
    )
    .unwrap();
    for i in 0..2 {
        qp.submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), i))
            .unwrap();
    }
    let r = qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 2))
        .unwrap_err();
    assert_eq!(r.error, DevError::QueueFull { depth: 2 });
    drop(r);
    qp.kick().unwrap();
    assert_eq!(qp.reap(&mut |c| c.result.unwrap()), 2);
    assert!(qp
        .submit(IoRequest::read(0, 4096, pool.try_get().unwrap(), 3))
        .is_ok());
}

/// The power-loss model: after a cut, every block that was flushed reads
/// back as written; every block written after the last flush reads as its
/// old or new content, or (torn) a prefix of sectors new and the rest old.
fn power_cut_model(seed: u64) {
    const BLK: usize = 16 * 1024; // 4 sectors of 4 KiB
    const NBLK: u64 = 64;
    let dev = MemDev::new(NBLK * BLK as u64);
    dev.reorder_completions(Some(seed));
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    let mut rng = SimRng::new(seed);
    // durable[b]: contents guaranteed after a cut; candidates[b]: any of
    // these (in order of writing) may survive, torn between neighbours.
    let mut durable: Vec<Vec<u8>> = vec![vec![0u8; BLK]; NBLK as usize];
    let mut since_flush: Vec<Vec<Vec<u8>>> = vec![Vec::new(); NBLK as usize];
    let ops = 20 + rng.below(60);
    for i in 0..ops {
        if rng.chance(1, 6) {
            flush(&mut qp).unwrap();
            for b in 0..NBLK as usize {
                if let Some(last) = since_flush[b].pop() {
                    durable[b] = last;
                }
                since_flush[b].clear();
            }
        } else if rng.chance(1, 5) {
            // A discard is a write of zeros to the model.
            let b = rng.below(NBLK) as usize;
            qp.run_one(IoRequest::discard((b * BLK) as u64, BLK as u32, i))
                .result
                .unwrap();
            since_flush[b].push(vec![0u8; BLK]);
        } else {
            let b = rng.below(NBLK) as usize;
            let mut data = vec![0u8; BLK];
            fill(seed << 16 | i, &mut data);
            write(&mut qp, &pool, (b * BLK) as u64, &data).unwrap();
            since_flush[b].push(data);
        }
    }
    let report = dev.power_cut(rng.next_u64());
    let pending: usize = since_flush.iter().map(|v| v.len()).sum();
    assert_eq!(
        (report.kept + report.dropped + report.torn) as usize,
        pending
    );
    // Old queues are dead; a restarted device serves new ones.
    assert!(matches!(
        read(&mut qp, &pool, 0, 4096),
        Err(DevError::Failed(_))
    ));
    dev.restart();
    let mut qp = queue(&dev, &pool);
    for b in 0..NBLK as usize {
        let got = read(&mut qp, &pool, (b * BLK) as u64, BLK).unwrap();
        if since_flush[b].is_empty() {
            assert!(got == durable[b], "seed {seed}: flushed block {b} changed");
            continue;
        }
        // Each sector must come from the durable version or one written since.
        let mut versions = vec![&durable[b]];
        versions.extend(since_flush[b].iter());
        for s in 0..BLK / 4096 {
            let sector = &got[s * 4096..(s + 1) * 4096];
            assert!(
                versions
                    .iter()
                    .any(|v| &v[s * 4096..(s + 1) * 4096] == sector),
                "seed {seed}: block {b} sector {s} holds data never written there"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn power_cut_keeps_flushed_and_only_written_data(seed in any::<u64>()) {
        power_cut_model(seed);
    }
}

#[test]
fn torn_writes_keep_a_prefix_of_sectors() {
    // One 64 KiB write over old data, cut before any flush, many seeds: the
    // result is always some prefix of new sectors followed by old ones, and
    // each outcome (kept, dropped, torn) shows up.
    let mut seen = [false; 3];
    for seed in 0..64 {
        let dev = MemDev::new(MIB);
        let pool = pool();
        let mut qp = queue(&dev, &pool);
        write(&mut qp, &pool, 0, &vec![1u8; 65536]).unwrap();
        flush(&mut qp).unwrap();
        write(&mut qp, &pool, 0, &vec![2u8; 65536]).unwrap();
        let r = dev.power_cut(seed);
        let mut got = vec![0u8; 65536];
        dev.read_at(0, &mut got);
        let new = got
            .chunks(4096)
            .take_while(|s| s.iter().all(|&x| x == 2))
            .count();
        assert!(
            got.chunks(4096)
                .skip(new)
                .all(|s| s.iter().all(|&x| x == 1)),
            "seed {seed}: not a prefix"
        );
        match (r.kept, r.dropped, r.torn) {
            (1, 0, 0) => {
                assert_eq!(new, 16);
                seen[0] = true;
            }
            (0, 1, 0) => {
                assert_eq!(new, 0);
                seen[1] = true;
            }
            (0, 0, 1) => {
                assert!((1..16).contains(&new));
                seen[2] = true;
            }
            other => panic!("unexpected report {other:?}"),
        }
    }
    assert_eq!(seen, [true; 3]);
}

#[test]
fn armed_power_cut_fires_mid_stream() {
    let dev = MemDev::new(MIB);
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    write(&mut qp, &pool, 0, &[5u8; 4096]).unwrap();
    flush(&mut qp).unwrap();
    dev.arm_power_cut(3, 99);
    let results: Vec<bool> = (0..6)
        .map(|i| write(&mut qp, &pool, 4096 * (i + 1), &[6u8; 4096]).is_ok())
        .collect();
    assert_eq!(results, vec![true, true, true, false, false, false]);
    assert!(!dev.is_powered());
    let r = dev.last_crash().unwrap();
    assert_eq!(r.kept + r.dropped + r.torn, 3);
    dev.restart();
    let mut qp = queue(&dev, &pool);
    assert_eq!(read(&mut qp, &pool, 0, 4096).unwrap(), vec![5u8; 4096]);
}

#[test]
fn uring_round_trips_when_shared_between_threads() {
    // COOP_TASKRUN instead of SINGLE_ISSUER + DEFER_TASKRUN: the queue may
    // move to another thread between requests.
    let dir = tempfile::tempdir().unwrap();
    let opts = UringOptions {
        shared_thread: true,
        ..Default::default()
    };
    let dev = UringDev::open(temp_file(dir.path(), 4 * MIB), opts).unwrap();
    let pool = pool();
    let mut qp = queue(&dev, &pool);
    write(&mut qp, &pool, 0, &[3u8; 8192]).unwrap();
    let p2 = pool.clone();
    let got = std::thread::spawn(move || read(&mut qp, &p2, 0, 8192).unwrap())
        .join()
        .unwrap();
    assert_eq!(got, vec![3u8; 8192]);
}
