//! File times before 1970 and far in the future through the FUSE mount,
//! compared with ext4 on a loop device on the same kernel, and kept across
//! a remount: `touch -d` (GNU touch, utimensat) and utimensat from this
//! process with UTIME_NOW and UTIME_OMIT, read back with stat.
//!
//! The references: inside ext4's range (256-byte inodes: -2^31 s,
//! 1901-12-13 20:45:52 UTC, to 2^34 - 2^31 - 1 s, 2446-05-10 22:38:55
//! UTC, in nanoseconds) scoutfs must give what ext4 gives. Outside it ext4
//! clamps to its limits, but scoutfs keeps the time: the original stores
//! the kernel's `time64_t` seconds whole (`cpu_to_le64` in inode.c) and
//! its kernel module sets no `s_time_min`/`s_time_max`, so the VFS lets
//! it keep every `time64_t`; there the expected value is the time asked
//! for, as `date -d` reads the same text. At the very ends of a
//! filesystem's range the VFS itself zeroes the nanoseconds
//! (`timestamp_truncate`), for ext4 at its limits and for scoutfs (FUSE)
//! at `i64::MIN` and `i64::MAX`.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two each test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{sh, Ext4, Vol};

/// ext4's range with 256-byte inodes (mkfs.ext4's default here).
const EXT4_MIN: i64 = -(1 << 31);
const EXT4_MAX: i64 = (1 << 34) - (1 << 31) - 1;

/// `touch -d` texts (UTC): 1960, around the epoch, around ext4's and
/// 32-bit time_t's limits, nanoseconds, and years ext4 can't hold.
const DATES: [&str; 14] = [
    "1960-01-01 00:00:00",
    "1960-01-01 00:00:00.123456789",
    "1969-12-31 23:59:59.999999999",
    "1970-01-01 00:00:00",
    "1901-12-13 20:45:52",
    "1901-12-13 20:45:52.5",
    "1901-12-13 20:45:51",
    "1066-10-14 09:00:00.000000001",
    "2038-01-19 03:14:07",
    "2038-01-19 03:14:08.000000001",
    "2446-05-10 22:38:54.999999999",
    "2446-05-10 22:38:55",
    "2446-05-10 22:38:56",
    "9999-12-31 23:59:59.999999999",
];

/// (seconds, nanoseconds) of a stat time.
type Ts = (i64, i64);

fn times(path: &str) -> (Ts, Ts) {
    let m = std::fs::symlink_metadata(path).unwrap();
    ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()))
}

/// What GNU date makes of a `touch -d` text, as seconds and nanoseconds.
fn date(text: &str) -> Ts {
    let out = sh(&format!("TZ=UTC date -d '{text}' +'%s %N'"));
    let mut f = out.split_whitespace().map(|x| x.parse::<i64>().unwrap());
    (f.next().unwrap(), f.next().unwrap())
}

/// What ext4 keeps of a time: clamped to its range, and at either limit
/// no nanoseconds (the VFS's `timestamp_truncate`).
fn ext4_keeps((s, ns): Ts) -> Ts {
    let c = s.clamp(EXT4_MIN, EXT4_MAX);
    if c == EXT4_MIN || c == EXT4_MAX {
        (c, 0)
    } else {
        (c, ns)
    }
}

fn cpath(p: &str) -> CString {
    CString::new(Path::new(p).as_os_str().as_bytes()).unwrap()
}

fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// utimensat(2) from this process, on the path itself (not a symlink's
/// target); the errno on failure.
fn utimensat(path: &str, atime: libc::timespec, mtime: libc::timespec) -> Result<(), i32> {
    let p = cpath(path);
    let ts = [atime, mtime];
    // SAFETY: a NUL-terminated path and two timespecs that outlive the
    // call; utimensat only reads them.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            p.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The realtime clock, fine or as the kernel's coarse reading (which
/// may lag the fine one by a tick: ext4 stamps "now" from it).
fn clock(id: libc::clockid_t) -> Ts {
    let mut t = timespec(0, 0);
    // SAFETY: clock_gettime writes one timespec we own.
    let r = unsafe { libc::clock_gettime(id, &mut t) };
    assert_eq!(r, 0);
    (t.tv_sec, t.tv_nsec)
}

/// A window around an operation that stamps "now": from the coarse
/// clock before to the fine clock after.
fn around(op: impl FnOnce()) -> (Ts, Ts) {
    let t0 = clock(libc::CLOCK_REALTIME_COARSE);
    op();
    (t0, clock(libc::CLOCK_REALTIME))
}

/// The date file `i` gets as its atime: the next one in the list, so a
/// swapped field shows.
fn atime_date(i: usize) -> &'static str {
    DATES[(i + 1) % DATES.len()]
}

/// Stamp one file per date in `root` with `touch -d` (mtime the date,
/// atime [`atime_date`]), plus a directory and a symlink (`touch -h`).
fn stamp_dates(root: &str) {
    for (i, d) in DATES.iter().enumerate() {
        let a = atime_date(i);
        sh(&format!(
            "cd {root} && : > f{i} && TZ=UTC touch -m -d '{d}' f{i} && TZ=UTC touch -a -d '{a}' f{i}"
        ));
    }
    sh(&format!(
        "cd {root} && mkdir d && TZ=UTC touch -d '1960-01-01 12:00:00.5' d
         ln -s nowhere l && TZ=UTC touch -h -d '1901-12-13 20:45:51' l"
    ));
}

#[test]
fn times_before_1970_and_far_ahead_match_ext4_and_survive_a_remount() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 64 << 20);
    v.mount();
    let (s, e) = (v.mnt(), ext4.mnt());
    stamp_dates(&s);
    stamp_dates(&e);

    let mut kept = Vec::new();
    for (i, d) in DATES.iter().enumerate() {
        let (want_m, want_a) = (date(d), date(atime_date(i)));
        let f = format!("f{i}");
        let (sa, sm) = times(&format!("{s}/{f}"));
        let (ea, em) = times(&format!("{e}/{f}"));
        // scoutfs keeps what was asked for; ext4 keeps what its range
        // allows (and equals scoutfs wherever the time is in it).
        assert_eq!((sa, sm), (want_a, want_m), "scoutfs, {d}");
        assert_eq!(
            (ea, em),
            (ext4_keeps(want_a), ext4_keeps(want_m)),
            "ext4, {d}"
        );
        if ext4_keeps(want_m) == want_m && ext4_keeps(want_a) == want_a {
            assert_eq!((sa, sm), (ea, em), "{d}");
        }
        kept.push(f);
    }
    // 1960 on a directory and 1901 (one second before ext4's limit) on a
    // symlink itself.
    assert_eq!(times(&format!("{s}/d")), times(&format!("{e}/d")));
    assert_eq!(times(&format!("{s}/d")).1, (-315_576_000, 500_000_000));
    assert_eq!(times(&format!("{s}/l")).1, (EXT4_MIN - 1, 0));
    assert_eq!(times(&format!("{e}/l")).1, (EXT4_MIN, 0));
    kept.extend(["d".to_string(), "l".to_string()]);

    // The ends of time64_t, from this process: scoutfs keeps the seconds
    // (the VFS drops the nanoseconds at its range's ends), ext4 clamps.
    for name in ["min", "max"] {
        for root in [&s, &e] {
            std::fs::File::create(format!("{root}/{name}")).unwrap();
        }
    }
    for root in [&s, &e] {
        utimensat(
            &format!("{root}/min"),
            timespec(i64::MIN, 999_999_999),
            timespec(i64::MIN + 1, 999_999_999),
        )
        .unwrap();
        utimensat(
            &format!("{root}/max"),
            timespec(i64::MAX - 1, 999_999_999),
            timespec(i64::MAX, 999_999_999),
        )
        .unwrap();
    }
    assert_eq!(
        times(&format!("{s}/min")),
        ((i64::MIN, 0), (i64::MIN + 1, 999_999_999))
    );
    assert_eq!(
        times(&format!("{s}/max")),
        ((i64::MAX - 1, 999_999_999), (i64::MAX, 0))
    );
    assert_eq!(times(&format!("{e}/min")), ((EXT4_MIN, 0), (EXT4_MIN, 0)));
    assert_eq!(times(&format!("{e}/max")), ((EXT4_MAX, 0), (EXT4_MAX, 0)));
    // Nanoseconds out of range are the kernel's EINVAL, on both.
    for root in [&s, &e] {
        assert_eq!(
            utimensat(
                &format!("{root}/min"),
                timespec(-1, 1_000_000_000),
                timespec(-1, 0)
            ),
            Err(libc::EINVAL)
        );
        assert_eq!(
            utimensat(&format!("{root}/min"), timespec(-1, -1), timespec(-1, 0)),
            Err(libc::EINVAL)
        );
    }
    kept.extend(["min".to_string(), "max".to_string()]);

    // Everything reads back the same after an unmount, a check and a
    // mount: the times were on the devices, signed.
    let before: Vec<_> = kept.iter().map(|f| times(&format!("{s}/{f}"))).collect();
    v.unmount();
    v.check();
    v.mount();
    let after: Vec<_> = kept.iter().map(|f| times(&format!("{s}/{f}"))).collect();
    assert_eq!(before, after);
    v.unmount();
}

#[test]
fn utime_now_and_omit_change_only_their_time_as_on_ext4() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let mut v = Vol::new(128 << 20, 64 << 20);
    v.mount();
    let omit = timespec(0, libc::UTIME_OMIT);
    let now_ts = timespec(0, libc::UTIME_NOW);
    let (old_a, old_m) = ((-315_619_200, 1), (-315_619_200, 2));
    for root in [v.mnt(), ext4.mnt()] {
        let f = format!("{root}/f");
        std::fs::File::create(&f).unwrap();
        let set_old =
            || utimensat(&f, timespec(old_a.0, old_a.1), timespec(old_m.0, old_m.1)).unwrap();
        set_old();
        assert_eq!(times(&f), (old_a, old_m), "{root}");

        // OMIT both: nothing changes.
        utimensat(&f, omit, omit).unwrap();
        assert_eq!(times(&f), (old_a, old_m), "{root}");

        // OMIT atime, mtime far ahead.
        utimensat(&f, omit, timespec(EXT4_MAX - 1, 7)).unwrap();
        assert_eq!(times(&f), (old_a, (EXT4_MAX - 1, 7)), "{root}");

        // NOW atime, OMIT mtime: atime is the clock's, mtime stays.
        set_old();
        let (t0, t1) = around(|| utimensat(&f, now_ts, omit).unwrap());
        let (a, m) = times(&f);
        assert!(
            t0 <= a && a <= t1,
            "{root}: atime {a:?} not in {t0:?}..{t1:?}"
        );
        assert_eq!(m, old_m, "{root}");

        // OMIT atime, NOW mtime.
        set_old();
        let (t0, t1) = around(|| utimensat(&f, omit, now_ts).unwrap());
        let (a, m) = times(&f);
        assert_eq!(a, old_a, "{root}");
        assert!(
            t0 <= m && m <= t1,
            "{root}: mtime {m:?} not in {t0:?}..{t1:?}"
        );

        // `touch` with no date: both now.
        set_old();
        let (t0, t1) = around(|| {
            sh(&format!("touch {f}"));
        });
        let (a, m) = times(&f);
        assert!(
            t0 <= a && a <= t1 && t0 <= m && m <= t1,
            "{root}: {a:?} {m:?}"
        );
    }
    v.unmount();
}
