//! Inode times before 1970 and far in the future, at the engine: setattr
//! keeps every `time64_t` exactly (signed seconds, as scoutfs stores them
//! with `cpu_to_le64` of the kernel's `time64_t`), across a commit and a
//! remount; relatime compares them signed; the system clock converts
//! before 1970 as the kernel's timespec64 does. The same through a FUSE
//! mount, against ext4, is tests/timestamps.rs.

mod file_harness;

use std::time::{Duration, UNIX_EPOCH};

use file_harness::{root, ROOT, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::format::inode::Timespec;
use scoutfs_engine::fs::{timespec_of, SetAttr};
use scoutfs_engine::util::ready;

/// The times every test stamps: around the epoch, 1960, ext4's limits
/// with 256-byte inodes (-2^31 s, 1901-12-13 20:45:52 UTC; 2^34 - 2^31 - 1
/// s, 2446-05-10 22:38:55 UTC), 32-bit time_t's end (2038-01-19 03:14:08
/// is 2^31) and the ends of `time64_t`, which scoutfs keeps (its kernel
/// module sets no s_time_min/s_time_max, so the VFS allows all of it).
const TIMES: [(i64, u32); 12] = [
    (0, 0),
    (-1, 0),
    (-1, 999_999_999),
    (-315_619_200, 0),           // 1960-01-01 00:00:00 UTC
    (-315_619_200, 123_456_789), // and nanoseconds
    (-2_147_483_648, 0),         // ext4's smallest
    (2_147_483_647, 999_999_999),
    (2_147_483_648, 1),            // 2038-01-19 03:14:08 UTC
    (15_032_385_535, 999_999_999), // ext4's largest
    (15_032_385_536, 0),
    (i64::MIN, 0),
    (i64::MAX, 999_999_999),
];

fn t(sec: i64, nsec: u32) -> Timespec {
    Timespec::new(sec, nsec)
}

fn pair(ts: Timespec) -> (i64, u32) {
    (ts.sec.get(), ts.nsec.get())
}

fn stamp(v: &mut T, ino: u64, atime: Timespec, mtime: Timespec, ctime: Option<Timespec>) {
    let set = SetAttr {
        atime: Some(atime),
        mtime: Some(mtime),
        ctime,
        ..SetAttr::default()
    };
    ready(v.fs().setattr(&root(), ino, &set)).unwrap();
}

#[test]
fn every_time64_round_trips_through_setattr_commit_and_remount() {
    let mut v = T::new(Prealloc::default(), 4 << 20);
    // One file per time, atime and mtime set apart (atime one step
    // along the table) so a swapped field shows.
    let files: Vec<(u64, Timespec, Timespec)> = (0..TIMES.len())
        .map(|i| {
            let ino = v.create(&format!("f{i}"));
            let (a, m) = (TIMES[(i + 1) % TIMES.len()], TIMES[i]);
            (ino, t(a.0, a.1), t(m.0, m.1))
        })
        .collect();
    for &(ino, a, m) in &files {
        stamp(&mut v, ino, a, m, None);
    }
    // A directory and a symlink-free special file keep them too.
    let dir = v.mkdir("d");
    stamp(&mut v, dir, t(i64::MIN, 1), t(-315_619_200, 5), None);
    let fifo = v.mknod("p", libc::S_IFIFO | 0o644);
    stamp(&mut v, fifo, t(i64::MAX, 0), t(-1, 1), None);

    let expect = |v: &mut T| {
        for &(ino, a, m) in &files {
            let at = v.attr(ino);
            assert_eq!(
                (pair(at.atime), pair(at.mtime)),
                (pair(a), pair(m)),
                "ino {ino}"
            );
        }
        let d = v.attr(dir);
        assert_eq!(
            (pair(d.atime), pair(d.mtime)),
            ((i64::MIN, 1), (-315_619_200, 5))
        );
        let p = v.attr(fifo);
        assert_eq!((pair(p.atime), pair(p.mtime)), ((i64::MAX, 0), (-1, 1)));
    };
    expect(&mut v);
    v.commit();
    expect(&mut v);
    v.remount();
    expect(&mut v);
    v.check();
}

#[test]
fn setattr_sets_ctime_before_1970_when_asked() {
    // FUSE passes an explicit ctime (SetattrValid::CTIME) on some paths;
    // it is kept as given, signed.
    let mut v = T::new(Prealloc::default(), 4 << 20);
    let ino = v.create("f");
    stamp(
        &mut v,
        ino,
        t(-2, 0),
        t(-3, 0),
        Some(t(-315_619_200, 999_999_999)),
    );
    v.remount();
    assert_eq!(pair(v.attr(ino).ctime), (-315_619_200, 999_999_999));
    v.check();
}

#[test]
fn relatime_compares_times_before_1970_and_far_ahead_signed() {
    let mut v = T::new(Prealloc::default(), 4 << 20);
    let ino = v.create("f");
    v.write(ino, 0, b"x");

    // atime in 1960, after mtime and ctime (1959) and more than a day
    // before now: relatime updates it (the old unsigned comparison saw
    // 1960 as past 2^63 and never did).
    let old = t(-315_619_200, 0);
    let older = t(-315_619_200 - 86_400 * 365, 0);
    stamp(&mut v, ino, old, older, Some(older));
    assert_eq!(v.read(ino, 0, 1), b"x");
    let a = v.attr(ino).atime;
    assert!(a > t(1_000_000_000, 0), "atime not updated: {a:?}");

    // atime at the end of time64_t, after mtime and ctime: not due (and
    // adding a day to it must not overflow).
    stamp(
        &mut v,
        ino,
        t(i64::MAX, 999_999_999),
        t(0, 0),
        Some(t(0, 0)),
    );
    assert_eq!(v.read(ino, 0, 1), b"x");
    assert_eq!(pair(v.attr(ino).atime), (i64::MAX, 999_999_999));

    // atime before mtime, both before 1970: due.
    stamp(&mut v, ino, older, old, Some(t(i64::MIN, 0)));
    v.read(ino, 0, 1);
    assert!(v.attr(ino).atime > t(1_000_000_000, 0));
    v.check();
}

#[test]
fn system_times_before_1970_convert_as_timespec64() {
    let at = |secs_before: u64, nanos_before: u32| {
        pair(timespec_of(
            UNIX_EPOCH - Duration::new(secs_before, nanos_before),
        ))
    };
    assert_eq!(at(0, 0), (0, 0));
    assert_eq!(at(1, 0), (-1, 0));
    // 0.25 s before the epoch is -1 s + 0.75 s.
    assert_eq!(at(0, 250_000_000), (-1, 750_000_000));
    assert_eq!(at(315_619_200, 1), (-315_619_201, 999_999_999));
    assert_eq!(
        pair(timespec_of(UNIX_EPOCH + Duration::new(15_032_385_535, 7))),
        (15_032_385_535, 7)
    );
}

#[test]
fn times_order_signed_in_the_root_directory_too() {
    // The root inode (made by mkfs) takes the same range.
    let mut v = T::new(Prealloc::default(), 4 << 20);
    stamp(&mut v, ROOT, t(i64::MIN, 0), t(i64::MAX, 999_999_999), None);
    v.remount();
    let r = v.attr(ROOT);
    assert_eq!(
        (pair(r.atime), pair(r.mtime)),
        ((i64::MIN, 0), (i64::MAX, 999_999_999))
    );
    assert!(r.atime < r.mtime);
    v.check();
}
