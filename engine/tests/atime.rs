//! Access times at the engine: every atime policy (relatime, strictatime,
//! noatime, nodiratime, lazytime, read-only) for file reads and directory
//! listings against Linux's rules (fs/inode.c `atime_needs_update`), with
//! times set exactly and a clock the test moves (a day passes without
//! waiting for one); lazytime's atimes kept in memory and when they are
//! written; a mount made read-only and read-write again. The same through
//! a FUSE mount, against ext4, is tests/atime.rs.

use std::cell::Cell;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::format::inode::Timespec;
use scoutfs_engine::fs::{AtimeMode, AtimePolicy, Creds, Fs, FsOptions, SetAttr, LAZY_ATIMES_MAX};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

const ROOT: u64 = 1;
const DAY: i64 = 24 * 60 * 60;
/// The test clock starts here (2023-11-14) and moves only when told.
const START: i64 = 1_700_000_000;

thread_local! {
    static NOW: Cell<i64> = const { Cell::new(START) };
}

fn clock() -> Timespec {
    Timespec::new(NOW.with(|n| n.get()), 0)
}

fn advance(secs: i64) {
    NOW.with(|n| n.set(n.get() + secs));
}

fn t(sec: i64) -> Timespec {
    Timespec::new(sec, 0)
}

struct V {
    meta: MemDev,
    data: MemDev,
    opts: FsOptions,
    fs: Option<Fs<Volume>>,
}

impl V {
    fn new(atime: AtimePolicy) -> V {
        let (meta, data) = (MemDev::new(64 << 20), MemDev::new(16 << 20));
        mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
        let opts = FsOptions {
            clock: &scoutfs_engine::fs::TimespecClock(clock),
            atime,
            ..FsOptions::default()
        };
        let mut v = V {
            meta,
            data,
            opts,
            fs: None,
        };
        v.mount(false);
        v
    }

    fn mount(&mut self, read_only: bool) {
        let txn = TxnOptions {
            cache_bytes: 32 << 20,
            ..TxnOptions::default()
        };
        let mut vol = Volume::open(&self.meta, txn).unwrap();
        vol.attach_data_device(&self.data).unwrap();
        if read_only {
            vol.set_read_only("mounted read-only");
        }
        self.fs = Some(ready(Fs::open(vol, self.opts)).unwrap());
    }

    fn fs(&mut self) -> &mut Fs<Volume> {
        self.fs.as_mut().unwrap()
    }

    /// A clean unmount (what the fs keeps in memory is written) and a
    /// mount with the same options.
    fn remount(&mut self) {
        let mut fs = self.fs.take().unwrap();
        ready(fs.end_mount()).unwrap();
        fs.into_store().unmount().unwrap();
        self.mount(false);
    }

    /// The engine dies: nothing since the last commit survives.
    fn crash(&mut self) {
        drop(self.fs.take());
        self.mount(false);
    }

    fn file(&mut self, name: &str) -> u64 {
        let ino = ready(
            self.fs()
                .create(&Creds::root(), ROOT, name.as_bytes(), 0o644),
        )
        .unwrap()
        .ino;
        ready(self.fs().write(&Creds::root(), ino, 0, b"data")).unwrap();
        ino
    }

    fn dir(&mut self, name: &str) -> u64 {
        let ino = ready(
            self.fs()
                .mkdir(&Creds::root(), ROOT, name.as_bytes(), 0o755),
        )
        .unwrap()
        .ino;
        ready(self.fs().create(&Creds::root(), ino, b"entry", 0o644)).unwrap();
        ino
    }

    fn stamp(&mut self, ino: u64, atime: i64, mtime: i64, ctime: i64) {
        let set = SetAttr {
            atime: Some(t(atime)),
            mtime: Some(t(mtime)),
            ctime: Some(t(ctime)),
            ..SetAttr::default()
        };
        ready(self.fs().setattr(&Creds::root(), ino, &set)).unwrap();
    }

    fn atime(&mut self, ino: u64) -> i64 {
        ready(self.fs().getattr(ino)).unwrap().atime.sec.get()
    }

    /// A read of a file, or a listing of a directory (which the frontend
    /// follows with `touch_atime`, as FUSE's readdir does).
    fn access(&mut self, ino: u64, dir: bool) {
        if dir {
            ready(self.fs().readdir(ino, 0, 100)).unwrap();
            ready(self.fs().touch_atime(ino)).unwrap();
        } else {
            assert_eq!(ready(self.fs().read(ino, 0, 10)).unwrap(), b"data");
        }
    }

    fn has_changes(&mut self) -> bool {
        self.fs().store_mut().has_changes()
    }

    fn check(&mut self) {
        let (meta, data) = (self.meta.clone(), self.data.clone());
        let vol = self.fs().store_mut();
        let problems = check_volume(vol.store_mut(), &meta, &data).problems;
        assert!(problems.is_empty(), "{problems:?}");
    }
}

fn policy(mode: AtimeMode, nodiratime: bool, lazytime: bool) -> AtimePolicy {
    AtimePolicy {
        mode,
        nodiratime,
        lazytime,
        read_only: false,
    }
}

/// The inode's times before an access, relative to now.
#[derive(Clone, Copy, Debug)]
enum Times {
    /// atime before mtime (a write since the last read).
    AtimeBeforeMtime,
    /// atime equal to ctime, after mtime.
    AtimeIsCtime,
    /// atime after mtime and ctime, an hour ago.
    RecentlyRead,
    /// atime after mtime and ctime, a day ago.
    ReadADayAgo,
    /// atime after mtime and ctime, a day less a second ago.
    ReadAlmostADayAgo,
}

impl Times {
    /// (atime, mtime, ctime) seconds before now.
    fn ago(self) -> (i64, i64, i64) {
        match self {
            Times::AtimeBeforeMtime => (7200, 3600, 3600),
            Times::AtimeIsCtime => (3600, 7200, 3600),
            Times::RecentlyRead => (3600, 7200, 7200),
            Times::ReadADayAgo => (DAY, 2 * DAY, 2 * DAY),
            Times::ReadAlmostADayAgo => (DAY - 1, 2 * DAY, 2 * DAY),
        }
    }

    /// Linux's relatime: atime <= mtime, atime <= ctime, or a day old.
    fn relatime_due(self) -> bool {
        !matches!(self, Times::RecentlyRead | Times::ReadAlmostADayAgo)
    }
}

const TIMES: [Times; 5] = [
    Times::AtimeBeforeMtime,
    Times::AtimeIsCtime,
    Times::RecentlyRead,
    Times::ReadADayAgo,
    Times::ReadAlmostADayAgo,
];

#[test]
fn each_policy_updates_atime_of_reads_and_listings_as_linux_decides() {
    for mode in [AtimeMode::Relatime, AtimeMode::Strict, AtimeMode::Never] {
        for nodiratime in [false, true] {
            for lazytime in [false, true] {
                let p = policy(mode, nodiratime, lazytime);
                let mut v = V::new(p);
                let (f, d) = (v.file("f"), v.dir("d"));
                for times in TIMES {
                    for (ino, dir) in [(f, false), (d, true)] {
                        let now = clock().sec.get();
                        let (a, m, c) = times.ago();
                        v.stamp(ino, now - a, now - m, now - c);
                        v.access(ino, dir);
                        let updated = v.atime(ino) == now;
                        let want = match mode {
                            AtimeMode::Never => false,
                            _ if dir && nodiratime => false,
                            AtimeMode::Strict => true,
                            AtimeMode::Relatime => times.relatime_due(),
                        };
                        assert_eq!(updated, want, "{p:?} {times:?} dir={dir}");
                        // Across a remount: what was shown was stored.
                        let shown = v.atime(ino);
                        v.remount();
                        assert_eq!(v.atime(ino), shown, "{p:?} {times:?} dir={dir}");
                    }
                }
                v.check();
            }
        }
    }
}

#[test]
fn strictatime_updates_every_read_and_relatime_only_the_first() {
    for (mode, updates) in [
        (AtimeMode::Strict, [true, true, true]),
        (AtimeMode::Relatime, [true, false, false]),
        (AtimeMode::Never, [false, false, false]),
    ] {
        let mut v = V::new(policy(mode, false, false));
        let f = v.file("f");
        let first = clock().sec.get();
        v.stamp(f, first - 10, first - 5, first - 5);
        for (i, want) in updates.into_iter().enumerate() {
            advance(1);
            let before = v.atime(f);
            v.access(f, false);
            assert_eq!(v.atime(f) != before, want, "{mode:?} read {}", i + 1);
        }
    }
}

#[test]
fn reads_at_the_end_of_a_file_update_atime_too() {
    let mut v = V::new(policy(AtimeMode::Strict, false, false));
    let f = v.file("f");
    advance(1);
    assert!(ready(v.fs().read(f, 4, 10)).unwrap().is_empty());
    assert_eq!(v.atime(f), clock().sec.get());
    // A read of nothing is no access.
    advance(1);
    assert!(ready(v.fs().read(f, 0, 0)).unwrap().is_empty());
    assert_eq!(v.atime(f), clock().sec.get() - 1);
}

#[test]
fn lazytime_keeps_atimes_in_memory_until_another_change() {
    let mut v = V::new(policy(AtimeMode::Strict, false, true));
    let (f, g) = (v.file("f"), v.file("g"));
    ready(v.fs().sync()).unwrap();
    advance(10);
    v.access(f, false);
    v.access(g, false);
    let read_at = clock().sec.get();
    // Shown at once, written nowhere: nothing to commit.
    assert_eq!((v.atime(f), v.atime(g)), (read_at, read_at));
    assert!(!v.has_changes());
    // Another change to f writes f's atime with it; g's stays in memory.
    advance(10);
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    ready(v.fs().setattr(&Creds::root(), f, &set)).unwrap();
    assert!(v.has_changes());
    v.fs().store_mut().commit().unwrap();
    v.crash();
    assert_eq!(v.atime(f), read_at, "written with the chmod");
    assert!(v.atime(g) < read_at, "lost with the crash");
    v.check();
}

#[test]
fn lazytime_atimes_are_written_by_sync_unmount_and_a_day() {
    let mut v = V::new(policy(AtimeMode::Strict, false, true));
    let f = v.file("f");
    ready(v.fs().sync()).unwrap();

    // fsync (any: a commit is the whole volume's).
    advance(10);
    v.access(f, false);
    let read_at = clock().sec.get();
    ready(v.fs().sync()).unwrap();
    v.crash();
    assert_eq!(v.atime(f), read_at);

    // A clean unmount.
    advance(10);
    v.access(f, false);
    let read_at = clock().sec.get();
    v.remount();
    assert_eq!(v.atime(f), read_at);

    // A day later, without another access (the reactor's periodic task).
    advance(10);
    v.access(f, false);
    let read_at = clock().sec.get();
    advance(DAY - 1);
    ready(v.fs().write_aged_atimes()).unwrap();
    assert!(!v.has_changes(), "kept for less than a day");
    advance(1);
    ready(v.fs().write_aged_atimes()).unwrap();
    assert!(v.has_changes());
    v.fs().store_mut().commit().unwrap();
    v.crash();
    assert_eq!(v.atime(f), read_at);

    // ... or at the next access a day later (strictatime moves atime
    // again; the day-old one went with it).
    advance(10);
    v.access(f, false);
    advance(DAY);
    v.access(f, false);
    assert!(v.has_changes());
    v.check();
}

#[test]
fn lazytime_writes_the_oldest_half_when_too_many_are_kept() {
    let mut v = V::new(policy(AtimeMode::Strict, false, true));
    let inos: Vec<u64> = (0..LAZY_ATIMES_MAX + 1)
        .map(|i| {
            ready(
                v.fs()
                    .create(&Creds::root(), ROOT, format!("f{i}").as_bytes(), 0o644),
            )
            .unwrap()
            .ino
        })
        .collect();
    ready(v.fs().sync()).unwrap();
    for (i, &ino) in inos.iter().enumerate() {
        advance(1);
        ready(v.fs().read(ino, 0, 1)).unwrap();
        assert_eq!(v.has_changes(), i == LAZY_ATIMES_MAX, "read {i}");
    }
    v.fs().store_mut().commit().unwrap();
    v.crash();
    // Created at START; the oldest half were written.
    let written: Vec<bool> = inos.iter().map(|&ino| v.atime(ino) != START).collect();
    let half = LAZY_ATIMES_MAX / 2;
    assert!(written[..half].iter().all(|&w| w));
    assert!(!written[half..].iter().any(|&w| w));
}

#[test]
fn turning_lazytime_off_writes_what_it_kept() {
    let p = policy(AtimeMode::Strict, false, true);
    let mut v = V::new(p);
    let f = v.file("f");
    ready(v.fs().sync()).unwrap();
    advance(10);
    v.access(f, false);
    assert!(!v.has_changes());
    let off = AtimePolicy {
        lazytime: false,
        ..p
    };
    ready(v.fs().remount(off, false)).unwrap();
    assert!(v.has_changes());
    // From now on every update is written.
    ready(v.fs().sync()).unwrap();
    advance(10);
    v.access(f, false);
    assert!(v.has_changes());
}

#[test]
fn a_mount_made_read_only_commits_then_refuses_changes_and_atimes() {
    let p = policy(AtimeMode::Strict, false, true);
    let mut v = V::new(p);
    let f = v.file("f");
    advance(10);
    v.access(f, false);
    let read_at = clock().sec.get();
    let ro = AtimePolicy {
        read_only: true,
        ..p
    };
    ready(v.fs().remount(ro, true)).unwrap();
    assert!(!v.has_changes(), "committed");
    let e = ready(v.fs().create(&Creds::root(), ROOT, b"g", 0o644)).unwrap_err();
    assert_eq!(e.errno(), libc::EROFS);
    advance(10);
    v.access(f, false);
    assert_eq!(v.atime(f), read_at, "a read-only mount leaves atime");
    // What was kept in memory was written before.
    v.crash();
    assert_eq!(v.atime(f), read_at);

    // Read-write again.
    let mut v2 = v;
    ready(v2.fs().remount(ro, true)).unwrap();
    ready(v2.fs().remount(p, false)).unwrap();
    ready(v2.fs().create(&Creds::root(), ROOT, b"g", 0o644)).unwrap();
    v2.check();
}

#[test]
fn a_read_only_mount_made_read_write_deletes_the_orphans_it_left() {
    let mut v = V::new(AtimePolicy::default());
    let f = v.file("f");
    let free_before = ready(v.fs().statfs()).unwrap().free_data_blocks;
    // Unlinked while open, then the engine dies: an orphan.
    v.fs().hold_ino(f);
    ready(v.fs().unlink(&Creds::root(), ROOT, b"f")).unwrap();
    ready(v.fs().sync()).unwrap();
    drop(v.fs.take());
    v.mount(true);
    assert!(
        ready(v.fs().getattr(f)).is_ok(),
        "left by the read-only mount"
    );
    assert!(!v.has_changes());
    ready(v.fs().remount(AtimePolicy::default(), false)).unwrap();
    assert_eq!(ready(v.fs().getattr(f)).unwrap_err().errno(), libc::ENOENT);
    assert!(ready(v.fs().statfs()).unwrap().free_data_blocks > free_before);
    v.check();
}
