//! File data through the reactor: request tasks' reads that miss the data
//! cache are read through the reactor's data queue and the operation run
//! again; write-back, read-ahead and a commit's data flush are reactor
//! tasks. Checked on the mem devices with completions reordered, against
//! a byte model per file: every read is right, no request reads file data
//! inline on the reactor thread, the dirty buffer's bound holds writers
//! back rather than failing them, what fsync returned for survives a
//! remount, and a failed write-back fails the commit and nothing after it.

use std::sync::Arc;

use scoutfs_engine::dev::mem::{Fault, MemDev};
use scoutfs_engine::dev::{BlockDev, IoOp};
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::{Creds, SetAttr};
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineOptions};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

const FILES: u64 = 6;
const FILE_BYTES: usize = 8 << 20;

fn start(meta: &MemDev, data: &MemDev) -> Arc<Engine> {
    let (m, d): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) =
        (Arc::new(meta.clone()), Arc::new(data.clone()));
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    };
    Arc::new(Engine::start(m, d, opts).unwrap())
}

fn pattern(file: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 31 + file * 7 + (i as u64 >> 12)) as u8)
        .collect()
}

fn name(f: u64) -> Vec<u8> {
    format!("f{f}").into_bytes()
}

fn lookup(e: &Engine, f: u64) -> u64 {
    e.run(move |fs| ready(fs.lookup(&Creds::root(), ROOT_INO, &name(f))))
        .unwrap()
        .unwrap()
        .ino
}

fn read(e: &Engine, ino: u64, off: u64, len: usize) -> Vec<u8> {
    e.run(move |fs| ready(fs.read(ino, off, len)))
        .unwrap()
        .unwrap()
}

fn write(e: &Engine, ino: u64, off: u64, buf: Vec<u8>) {
    let n = e
        .run(move |fs| ready(fs.write(&Creds::root(), ino, off, &buf)))
        .unwrap()
        .unwrap();
    assert!(n > 0);
}

/// Files of FILE_BYTES each, written through the engine in 1 MiB writes
/// from one thread per file (more than the dirty buffer holds at once).
fn populated() -> (MemDev, MemDev) {
    let (meta, data) = (MemDev::new(256 << 20), MemDev::new(256 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let e = start(&meta, &data);
    let threads: Vec<_> = (0..FILES)
        .map(|f| {
            let e = e.clone();
            std::thread::spawn(move || {
                let ino = e
                    .run(move |fs| ready(fs.create(&Creds::root(), ROOT_INO, &name(f), 0o644)))
                    .unwrap()
                    .unwrap()
                    .ino;
                let body = pattern(f, FILE_BYTES);
                for (i, chunk) in body.chunks(1 << 20).enumerate() {
                    write(&e, ino, (i << 20) as u64, chunk.to_vec());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = e.miss_stats().unwrap();
    assert!(s.data.written_back > 0, "{s:?}");
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    (meta, data)
}

#[test]
fn cold_reads_and_partial_writes_go_through_the_reactor() {
    let (meta, data) = populated();
    data.reorder_completions(Some(5));
    let e = start(&meta, &data);
    let at_mount = e.miss_stats().unwrap();
    let threads: Vec<_> = (0..FILES)
        .map(|f| {
            let e = e.clone();
            std::thread::spawn(move || {
                let ino = lookup(&e, f);
                let mut model = pattern(f, FILE_BYTES);
                // Unaligned overwrites inside written blocks: each reads
                // its first and last block before it changes anything.
                for k in 0..24u64 {
                    let off = (k * 339_133 + f * 4099) % (FILE_BYTES as u64 - 9000);
                    let buf = vec![(k as u8) ^ 0xa5; 100 + (k as usize * 331) % 8000];
                    model[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
                    write(&e, ino, off, buf);
                }
                // A sequential reader (read-ahead) ...
                let mut got = Vec::new();
                let mut off = 0u64;
                while off < FILE_BYTES as u64 {
                    got.extend(read(&e, ino, off, 128 << 10));
                    off += 128 << 10;
                }
                assert!(got == model, "file {f}: sequential read differs");
                // ... and unaligned random reads.
                for k in 0..64u64 {
                    let off = (k * 1_000_003 + f * 77) % (FILE_BYTES as u64 - 5000);
                    let len = 1 + (k as usize * 97) % 5000;
                    let got = read(&e, ino, off, len);
                    assert_eq!(
                        got,
                        model[off as usize..off as usize + len],
                        "file {f} at {off}"
                    );
                }
                e.run(move |fs| ready(fs.fsync(ino))).unwrap().unwrap();
                (f, model)
            })
        })
        .collect();
    let models: Vec<(u64, Vec<u8>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let s = e.miss_stats().unwrap();
    assert!(s.data.deferred > 0 && s.data.fetched > 0, "{s:?}");
    assert!(s.data.ra_hits > 0, "read-ahead served nothing: {s:?}");
    // No request read file data inline on the reactor thread.
    assert_eq!(s.data.inline_reads, at_mount.data.inline_reads, "{s:?}");
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    data.reorder_completions(None);

    let e = start(&meta, &data);
    for (f, model) in models {
        let ino = lookup(&e, f);
        assert!(
            read(&e, ino, 0, FILE_BYTES) == model,
            "file {f} after remount"
        );
    }
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    let mut vol = Volume::open(&meta, TxnOptions::default()).unwrap();
    let problems = check_volume(vol.store_mut(), &meta, &data).problems;
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_failed_write_back_fails_the_commit_and_later_writes() {
    let (meta, data) = (MemDev::new(128 << 20), MemDev::new(128 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let e = start(&meta, &data);
    let ino = e
        .run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"f", 0o644)))
        .unwrap()
        .unwrap()
        .ino;
    write(&e, ino, 0, vec![1; 64 << 10]);
    e.run(move |fs| ready(fs.fsync(ino))).unwrap().unwrap();
    data.inject(Fault::always(IoOp::Write));
    write(&e, ino, 64 << 10, vec![2; 64 << 10]);
    let err = e.run(move |fs| ready(fs.fsync(ino))).unwrap().unwrap_err();
    assert_eq!(err.errno(), libc::EROFS, "{err}");
    let err = e
        .run(move |fs| ready(fs.write(&Creds::root(), ino, 0, &[3; 10])))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS, "{err}");
    // Reads still answer from what is in memory or durable.
    assert_eq!(read(&e, ino, 0, 4096), vec![1; 4096]);
    let _ = Arc::try_unwrap(e).unwrap().shutdown();
    data.clear_faults();
    let e = start(&meta, &data);
    let ino = e
        .run(|fs| ready(fs.lookup(&Creds::root(), ROOT_INO, b"f")))
        .unwrap()
        .unwrap();
    assert_eq!(
        ino.size,
        64 << 10,
        "the failed commit's size is not durable"
    );
    assert_eq!(read(&e, ino.ino, 0, 64 << 10), vec![1; 64 << 10]);
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
}

/// `dd conv=fsync` over the same files again and again: each rewrite
/// truncates (freeing the extents the last one wrote, which the next
/// allocations may get back while the freeing commit is written) and
/// writes anew. The freeing commits are written on the reactor too: no
/// file data read inline, every file right after a remount, check clean.
#[test]
fn rewrites_that_free_data_commit_on_the_reactor() {
    let (meta, data) = (MemDev::new(128 << 20), MemDev::new(64 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    data.reorder_completions(Some(3));
    let e = start(&meta, &data);
    let at_start = e.miss_stats().unwrap();
    let commits_at_start = e.commit_stats().unwrap().commits;
    let threads: Vec<_> = (0..4u64)
        .map(|f| {
            let e = e.clone();
            std::thread::spawn(move || {
                let ino = e
                    .run(move |fs| ready(fs.create(&Creds::root(), ROOT_INO, &name(f), 0o644)))
                    .unwrap()
                    .unwrap()
                    .ino;
                let mut last = Vec::new();
                for round in 0..8u64 {
                    let set = SetAttr {
                        size: Some(0),
                        ..SetAttr::default()
                    };
                    e.run(move |fs| ready(fs.setattr(&Creds::root(), ino, &set)))
                        .unwrap()
                        .unwrap();
                    last = pattern(f * 100 + round, 3 << 20);
                    for (i, chunk) in last.chunks(256 << 10).enumerate() {
                        write(&e, ino, (i << 18) as u64, chunk.to_vec());
                    }
                    e.run(move |fs| ready(fs.fsync(ino))).unwrap().unwrap();
                    assert!(
                        read(&e, ino, 0, last.len()) == last,
                        "file {f} round {round}"
                    );
                }
                (f, last)
            })
        })
        .collect();
    let models: Vec<(u64, Vec<u8>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let s = e.miss_stats().unwrap();
    assert_eq!(s.data.inline_reads, at_start.data.inline_reads, "{s:?}");
    // The freeing commits went through the committer, not inline.
    assert!(s.data.quarantined >= 3 * 768, "{s:?}");
    let c = e.commit_stats().unwrap();
    assert!(c.commits - commits_at_start >= 8, "{c:?}");
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    data.reorder_completions(None);
    let e = start(&meta, &data);
    for (f, model) in models {
        let ino = lookup(&e, f);
        assert!(read(&e, ino, 0, 4 << 20) == model, "file {f} after remount");
    }
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    let mut vol = Volume::open(&meta, TxnOptions::default()).unwrap();
    let problems = check_volume(vol.store_mut(), &meta, &data).problems;
    assert!(problems.is_empty(), "{problems:?}");
}
