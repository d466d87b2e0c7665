//! Miss and restart on the reactor: requests run as tasks whose attempts
//! defer their cache misses; the task reads the blocks through the
//! reactor and runs the operation again, while other requests go on.
//! Checked against a cache far smaller than the tree, with the devices
//! completing out of order: every answer is right, no read-only request
//! reads a block inline on the reactor thread, and the volume checks clean.

use std::collections::BTreeSet;
use std::sync::Arc;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::{Creds, FsError};
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineOptions};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

const DIRS: u64 = 8;
const FILES: u64 = 400;

fn opts(cache_bytes: usize) -> EngineOptions {
    EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        txn: TxnOptions {
            cache_bytes,
            ..TxnOptions::default()
        },
        ..EngineOptions::default()
    }
}

fn start(meta: &MemDev, data: &MemDev, cache_bytes: usize) -> Arc<Engine> {
    let (m, d): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) =
        (Arc::new(meta.clone()), Arc::new(data.clone()));
    Arc::new(Engine::start(m, d, opts(cache_bytes)).unwrap())
}

fn name(i: u64) -> Vec<u8> {
    format!("file-with-a-longish-name-{i:05}").into_bytes()
}

/// A volume with DIRS directories of FILES files each.
fn populated() -> (MemDev, MemDev) {
    let (meta, data) = (MemDev::new(256 << 20), MemDev::new(64 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let e = start(&meta, &data, 64 << 20);
    for d in 0..DIRS {
        let dir = e
            .call(move |fs| {
                ready(fs.mkdir(&Creds::root(), ROOT_INO, format!("d{d}").as_bytes(), 0o755))
            })
            .unwrap()
            .unwrap()
            .ino;
        e.call(move |fs| -> Result<(), FsError> {
            for i in 0..FILES {
                ready(fs.create(&Creds::root(), dir, &name(i), 0o644))?;
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    }
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    (meta, data)
}

fn dir_ino(e: &Engine, d: u64) -> u64 {
    e.run(move |fs| ready(fs.lookup(&Creds::root(), ROOT_INO, format!("d{d}").as_bytes())))
        .unwrap()
        .unwrap()
        .ino
}

#[test]
fn cold_reads_are_fetched_through_the_reactor_not_read_inline() {
    let (meta, data) = populated();
    meta.reorder_completions(Some(7));
    // 16 blocks of cache: every directory's entries miss again and again.
    let e = start(&meta, &data, 16 << 16);
    let at_mount = e.miss_stats().unwrap();
    let threads: Vec<_> = (0..DIRS)
        .map(|d| {
            let e = e.clone();
            std::thread::spawn(move || {
                let dir = dir_ino(&e, d);
                for i in (0..FILES).step_by(7) {
                    let a = e
                        .run(move |fs| ready(fs.lookup(&Creds::root(), dir, &name(i))))
                        .unwrap()
                        .unwrap();
                    let again = e.run(move |fs| ready(fs.getattr(a.ino))).unwrap().unwrap();
                    assert_eq!(again.ino, a.ino);
                    assert_eq!(again.mode & 0o7777, 0o644);
                }
                let mut names = BTreeSet::new();
                let mut pos = 0;
                loop {
                    let ents = e
                        .run(move |fs| ready(fs.readdir(dir, pos, 64)))
                        .unwrap()
                        .unwrap();
                    let Some(last) = ents.last() else { break };
                    pos = last.pos + 1;
                    names.extend(
                        ents.into_iter()
                            .map(|en| en.name)
                            .filter(|n| n != b"." && n != b".."),
                    );
                }
                let want: BTreeSet<Vec<u8>> = (0..FILES).map(name).collect();
                assert!(names == want, "dir d{d}: {} names listed", names.len());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = e.miss_stats().unwrap();
    assert!(s.fetched_blocks > 0 && s.restarts > 0, "{s:?}");
    assert_eq!(s.gave_up, 0, "{s:?}");
    // Reads that change nothing never read inline on the reactor thread
    // (the periodic commit has nothing to write).
    assert_eq!(s.inline_reads, at_mount.inline_reads, "{s:?}");
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
}

#[test]
fn cold_writes_restart_before_their_first_change_and_check_clean() {
    let (meta, data) = populated();
    meta.reorder_completions(Some(11));
    let e = start(&meta, &data, 16 << 16);
    let threads: Vec<_> = (0..DIRS)
        .map(|d| {
            let e = e.clone();
            std::thread::spawn(move || {
                let dir = dir_ino(&e, d);
                for i in (0..FILES).step_by(5) {
                    e.run(move |fs| ready(fs.unlink(&Creds::root(), dir, &name(i))))
                        .unwrap()
                        .unwrap();
                    let new = format!("new-{i}").into_bytes();
                    e.run(move |fs| ready(fs.create(&Creds::root(), dir, &new, 0o600)))
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = e.miss_stats().unwrap();
    assert!(s.restarts > 0, "{s:?}");
    for d in 0..DIRS {
        let dir = dir_ino(&e, d);
        for i in 0..FILES {
            let old = e
                .run(move |fs| ready(fs.lookup(&Creds::root(), dir, &name(i))))
                .unwrap();
            let new = format!("new-{i}").into_bytes();
            let new = e
                .run(move |fs| ready(fs.lookup(&Creds::root(), dir, &new)))
                .unwrap();
            if i % 5 == 0 {
                assert_eq!(old.unwrap_err(), FsError::NotFound);
                assert_eq!(new.unwrap().mode & 0o7777, 0o600);
            } else {
                assert!(old.is_ok());
                assert_eq!(new.unwrap_err(), FsError::NotFound);
            }
        }
    }
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    meta.reorder_completions(None);
    let mut vol = Volume::open(&meta, TxnOptions::default()).unwrap();
    let problems = check_volume(vol.store_mut(), &meta, &data).problems;
    assert!(problems.is_empty(), "{problems:?}");
}
