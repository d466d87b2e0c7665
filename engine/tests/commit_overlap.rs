//! Commits overlap new work: the engine's committer writes transaction N
//! while requests go on in N+1; fsync waits for the commit that covers
//! its changes; a failed commit stops all writes with nothing of it (or
//! of what followed) visible after a remount. Run on the mem devices,
//! with power cuts and injected write errors.

use std::sync::Arc;

use scoutfs_engine::dev::mem::{Fault, MemDev};
use scoutfs_engine::dev::{BlockDev, IoOp};
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::{Creds, Fs, FsError, FsOptions};
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineOptions};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

fn start(meta: &MemDev, data: &MemDev) -> Arc<Engine> {
    start_with(meta, data, FsOptions::default())
}

fn start_with(meta: &MemDev, data: &MemDev, fs: FsOptions) -> Arc<Engine> {
    let opts = EngineOptions {
        fs,
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        txn: TxnOptions {
            // Commit often, so commits and requests overlap all the time.
            commit_dirty_blocks: 24,
            ..TxnOptions::default()
        },
        ..EngineOptions::default()
    };
    let (m, d): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) =
        (Arc::new(meta.clone()), Arc::new(data.clone()));
    Arc::new(Engine::start(m, d, opts).unwrap())
}

fn devices() -> (MemDev, MemDev) {
    let (meta, data) = (MemDev::new(256 << 20), MemDev::new(256 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    (meta, data)
}

/// The volume as a fresh mount finds it, with `check`'s problems.
fn remount(meta: &MemDev, data: &MemDev) -> (Fs<Volume>, Vec<String>) {
    let mut vol = Volume::open(meta, TxnOptions::default()).unwrap();
    let problems = check_volume(vol.store_mut(), meta, data).problems;
    vol.attach_data_device(data).unwrap();
    (
        ready(Fs::open(vol, FsOptions::default())).unwrap(),
        problems,
    )
}

fn contents(t: u64, i: u64) -> Vec<u8> {
    vec![(t * 31 + i) as u8; 5000 + (i as usize % 7) * 1000]
}

#[test]
fn requests_go_on_while_commits_are_written_and_fsync_makes_them_durable() {
    let (meta, data) = devices();
    let e = start(&meta, &data);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let dir = e
                    .run(move |fs| {
                        ready(fs.mkdir(&Creds::root(), ROOT_INO, format!("t{t}").as_bytes(), 0o755))
                    })
                    .unwrap()
                    .unwrap()
                    .ino;
                for i in 0..150u64 {
                    let ino = e
                        .run(move |fs| {
                            ready(fs.create(&Creds::root(), dir, format!("f{i}").as_bytes(), 0o644))
                        })
                        .unwrap()
                        .unwrap()
                        .ino;
                    let bytes = contents(t, i);
                    e.run(move |fs| ready(fs.write(&Creds::root(), ino, 0, &bytes)))
                        .unwrap()
                        .unwrap();
                    if i % 50 == 49 {
                        e.run(|fs| ready(fs.sync())).unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = e.commit_stats().unwrap();
    eprintln!("{s:?}");
    assert!(s.commits > 5, "{s:?}");
    assert!(s.requests_during_commits > 0, "{s:?}");
    // Everything was fsynced: a power cut now loses none of it.
    meta.power_cut(1);
    data.power_cut(1);
    let _ = Arc::try_unwrap(e).unwrap().shutdown();
    meta.restart();
    data.restart();
    let (mut fs, problems) = remount(&meta, &data);
    assert!(problems.is_empty(), "{problems:?}");
    for t in 0..4u64 {
        let dir = ready(fs.lookup(&Creds::root(), ROOT_INO, format!("t{t}").as_bytes()))
            .unwrap()
            .ino;
        for i in 0..150u64 {
            let a = ready(fs.lookup(&Creds::root(), dir, format!("f{i}").as_bytes())).unwrap();
            let want = contents(t, i);
            let got = ready(fs.read(a.ino, 0, want.len() + 10)).unwrap();
            assert!(got == want, "t{t}/f{i}: {} bytes read", got.len());
        }
    }
}

#[test]
fn a_failed_commit_stops_writes_and_leaves_the_last_durable_one() {
    let (meta, data) = devices();
    let e = start(&meta, &data);
    let f = e
        .run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"kept", 0o644)))
        .unwrap()
        .unwrap()
        .ino;
    e.run(move |fs| ready(fs.write(&Creds::root(), f, 0, b"durable")))
        .unwrap()
        .unwrap();
    e.run(|fs| ready(fs.sync())).unwrap().unwrap();
    meta.inject(Fault::always(IoOp::Write));
    e.run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"lost", 0o644)))
        .unwrap()
        .unwrap();
    let synced = e.run(|fs| ready(fs.sync())).unwrap();
    assert!(
        matches!(synced, Err(FsError::ReadOnly(_)) | Err(FsError::Io(_))),
        "{synced:?}"
    );
    let later = e
        .run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"later", 0o644)))
        .unwrap();
    assert!(matches!(later, Err(FsError::ReadOnly(_))), "{later:?}");
    // The unmount says so, though nothing is left to commit.
    let unmounted = Arc::try_unwrap(e).unwrap().shutdown();
    assert_eq!(
        unmounted.as_ref().map_err(|e| e.errno()),
        Err(libc::EROFS),
        "{unmounted:?}"
    );
    meta.clear_faults();
    let (mut fs, problems) = remount(&meta, &data);
    assert!(problems.is_empty(), "{problems:?}");
    let a = ready(fs.lookup(&Creds::root(), ROOT_INO, b"kept")).unwrap();
    assert_eq!(ready(fs.read(a.ino, 0, 100)).unwrap(), b"durable");
    for name in [&b"lost"[..], b"later"] {
        assert_eq!(
            ready(fs.lookup(&Creds::root(), ROOT_INO, name)).unwrap_err(),
            FsError::NotFound
        );
    }
}

/// fsyncs with nothing left to commit (the change is in the commit in
/// flight) beside creates that keep needing inode grants committed: a
/// wanted commit the committer found nothing for must not swallow the
/// next want (it once did, and creates waited forever).
#[test]
fn fsyncs_and_inode_grants_never_wait_forever() {
    let (meta, data) = devices();
    let fs_opts = FsOptions {
        ino_alloc_per_lock: 8,
        ..FsOptions::default()
    };
    let e = start_with(&meta, &data, fs_opts);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let name = format!("t{t}-{i}").into_bytes();
                    e.run(move |fs| ready(fs.create(&Creds::root(), ROOT_INO, &name, 0o644)))
                        .unwrap()
                        .unwrap();
                    if (i + t) % 3 == 0 {
                        e.run(|fs| ready(fs.sync())).unwrap().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    let (mut fs, problems) = remount(&meta, &data);
    assert!(problems.is_empty(), "{problems:?}");
    let names = ready(fs.readdir(ROOT_INO, 0, 10_000)).unwrap();
    assert_eq!(names.len(), 2 + 4 * 200);
}

/// fsync waits only for the commit that covers the file's changes: a
/// file unchanged since the last commit costs no commit at all, and a
/// changed one is durable when fsync returns.
#[test]
fn fsync_commits_only_what_the_file_needs() {
    let (meta, data) = devices();
    let e = start(&meta, &data);
    let old = e
        .run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"old", 0o644)))
        .unwrap()
        .unwrap()
        .ino;
    let durable = e.run(move |fs| ready(fs.fsync(old))).unwrap().unwrap();
    let commits = e.commit_stats().unwrap().commits;
    // Another file changes; fsync of the old one has nothing to wait for.
    let new = e
        .run(|fs| ready(fs.create(&Creds::root(), ROOT_INO, b"new", 0o644)))
        .unwrap()
        .unwrap()
        .ino;
    assert_eq!(
        e.run(move |fs| ready(fs.fsync(old))).unwrap().unwrap(),
        durable
    );
    assert_eq!(e.commit_stats().unwrap().commits, commits);
    e.run(move |fs| ready(fs.write(&Creds::root(), new, 0, b"kept")))
        .unwrap()
        .unwrap();
    let after = e.run(move |fs| ready(fs.fsync(new))).unwrap().unwrap();
    assert!(after > durable);
    meta.power_cut(3);
    data.power_cut(3);
    let _ = Arc::try_unwrap(e).unwrap().shutdown();
    meta.restart();
    data.restart();
    let (mut fs, problems) = remount(&meta, &data);
    assert!(problems.is_empty(), "{problems:?}");
    let a = ready(fs.lookup(&Creds::root(), ROOT_INO, b"new")).unwrap();
    assert_eq!(ready(fs.read(a.ino, 0, 10)).unwrap(), b"kept");
}
