//! How writes reach the engine: through the kernel's writeback cache, or
//! written through when space is short.
//!
//! With FUSE's writeback cache (negotiated at INIT, on by default) a
//! write(2) only fills the kernel's page cache; the kernel sends the pages
//! later, in large WRITEs (at close, fsync, or when it writes back dirty
//! pages), and the server is asked nothing per write: the FUSE protocol has
//! no way to reserve space for what the kernel buffers (the kernel's own
//! comment where it used to begin a cached write: "It's worthy to make
//! sure that space is reserved on disk for the write, but how to implement
//! it without killing performance need more thinking"). A write-back that
//! finds the device full is an error the kernel keeps for the writer's
//! next fsync and close, not its write(2); and it takes a short count for
//! success, so the engine answers a write-back that didn't fit whole with
//! the error (`Fs::write_back`).
//!
//! How ENOSPC (and EDQUOT, once quotas exist) still reaches a writer's
//! write(2):
//! - The kernel holds at most its dirty limit for this mount's backing
//!   device (FUSE sets a strict 1% ratio of the system's dirty threshold,
//!   `/sys/class/bdi/<dev>/max_bytes`; never measurably more on Linux
//!   6.18, `perf/RESULTS.md`). Below the *headroom* (twice that limit, or
//!   `--writeback-headroom`) of free space, a file opened write-only is
//!   opened `FOPEN_DIRECT_IO`: each write(2) is a WRITE the engine answers,
//!   so the write that doesn't fit gets ENOSPC, as on ext4.
//! - A write-only file opened while there was room stays cached. When a
//!   write-back of its inode fails, the inode is marked and the kernel is
//!   told to drop its cached attributes (FUSE_NOTIFY_INVAL_INODE, from the
//!   notification thread, notify.rs: a notification sent while handling a
//!   request of the same inode can deadlock with its eviction). A cached write(2)
//!   first refreshes stale attributes with a GETATTR carrying its file
//!   handle (`fuse_cache_write_iter`: "Update size (EOF optimization) and
//!   mode (SUID clearing)"), and that GETATTR's error is the write's: so
//!   the writer's next write(2) gets ENOSPC, and every one after it while
//!   space stays short. The bytes the kernel had taken since its last
//!   successful write-back (at most its dirty limit) are lost; fsync and
//!   close report it too.
//! - Files opened for reading and writing stay cached and are not marked
//!   (their reads would get the error too; a shared mapping of a
//!   `FOPEN_DIRECT_IO` file is refused with ENODEV unless the kernel is
//!   told `FUSE_DIRECT_IO_ALLOW_MMAP`, which fuse-backend-rs 0.14 cannot
//!   negotiate): their writers learn of a full device at fsync or close,
//!   as with NFS.
//!
//! While a file has a cached writer the kernel may hold data the engine
//! hasn't seen: SEEK_DATA/SEEK_HOLE, answered from the engine's extents,
//! could call it a hole, so they are refused with EINVAL then (programs
//! take that as "not supported" and read; cp falls back to reading), and
//! each write-back also drops the kernel's cached attributes, so st_blocks
//! follows what the engine stored.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The headroom when the kernel's dirty limit for the mount can't be read:
/// twice the limit FUSE's 1% gives on a machine with 512 GiB of memory
/// and the default dirty ratio of 20%.
pub const FALLBACK_HEADROOM: u64 = 2 << 30;

/// The free space below which write-only opens are written through.
#[derive(Debug)]
pub struct Headroom {
    bytes: AtomicU64,
}

impl Headroom {
    /// `configured`: `--writeback-headroom`; `None` to take twice the
    /// kernel's dirty limit once the mount exists ([`Headroom::learn`]),
    /// the fallback until then.
    pub fn new(configured: Option<u64>) -> Headroom {
        Headroom {
            bytes: AtomicU64::new(configured.unwrap_or(u64::MAX)),
        }
    }

    /// The headroom now.
    pub fn bytes(&self) -> u64 {
        match self.bytes.load(Ordering::Relaxed) {
            u64::MAX => FALLBACK_HEADROOM,
            b => b,
        }
    }

    /// Once mounted at `mountpoint`: twice the kernel's dirty limit for
    /// the mount, unless a headroom was configured.
    pub fn learn(&self, mountpoint: &Path) {
        if self.bytes.load(Ordering::Relaxed) != u64::MAX {
            return;
        }
        match kernel_dirty_limit(mountpoint) {
            Ok(limit) => {
                let h = limit.saturating_mul(2).min(u64::MAX - 1);
                self.bytes.store(h, Ordering::Relaxed);
                tracing::info!(
                    "writeback cache: the kernel holds at most {} MiB dirty for this mount; \
                     write-only opens are written through below {} MiB free",
                    limit >> 20,
                    h >> 20
                );
            }
            Err(e) => tracing::warn!(
                "the kernel's dirty limit for {}: {e}; write-only opens are written \
                 through below {} MiB free",
                mountpoint.display(),
                FALLBACK_HEADROOM >> 20
            ),
        }
    }
}

/// The kernel's dirty-page limit for the FUSE mount at `mountpoint`: its
/// backing device is named after the mount's anonymous device number,
/// read from /proc/self/mountinfo (a stat of the mount point would wait
/// for a server that isn't serving yet).
fn kernel_dirty_limit(mountpoint: &Path) -> Result<u64, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let dev = mount_device(&table, mountpoint)
        .ok_or_else(|| format!("{} is not in /proc/self/mountinfo", mountpoint.display()))?;
    let p = format!("/sys/class/bdi/{dev}/max_bytes");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    match s.trim().parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("{p}: {s:?}")),
    }
}

/// The device number (`major:minor`) of the newest mount at `mountpoint`
/// in a mountinfo table (proc(5)); the path's space, tab, newline and
/// backslash are written as `\` and three octal digits there.
fn mount_device<'a>(table: &'a str, mountpoint: &Path) -> Option<&'a str> {
    use std::os::unix::ffi::OsStrExt;
    let mut want = Vec::new();
    for &b in mountpoint.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => want.extend(format!("\\{b:03o}").bytes()),
            _ => want.push(b),
        }
    }
    table.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        (f.nth(1)?.as_bytes() == want.as_slice()).then_some(dev)
    })
}

/// Whether an open with `flags` is written through (`FOPEN_DIRECT_IO`)
/// rather than cached: on a writeback-cache mount, a write-only open when
/// the data device has less than `headroom` bytes free.
pub fn write_through(writeback_cache: bool, flags: u32, free_bytes: u64, headroom: u64) -> bool {
    writeback_cache && flags as i32 & libc::O_ACCMODE == libc::O_WRONLY && free_bytes < headroom
}

/// Inodes with failed write-backs remembered at once; past it a writer
/// learns of the failure at fsync or close only.
const MAX_FAILED: usize = 4096;

/// The writeback cache's state of a mount: the headroom, the inodes with
/// cached writers, the inodes whose write-back failed. (The kernel is
/// told to drop attributes by the mount's notification thread, notify.rs.)
#[derive(Debug)]
pub struct State {
    pub headroom: Headroom,
    /// Open cached handles that may write, per inode.
    writers: Mutex<HashMap<u64, u32>>,
    /// Inodes whose last write-back failed, with its errno.
    failed: Mutex<HashMap<u64, i32>>,
}

impl State {
    pub fn new(configured_headroom: Option<u64>) -> State {
        State {
            headroom: Headroom::new(configured_headroom),
            writers: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    /// The mount exists at `mountpoint`.
    pub fn mounted(&self, mountpoint: &Path) {
        self.headroom.learn(mountpoint);
    }

    pub fn opened_writer(&self, ino: u64) {
        let mut w = lock(&self.writers);
        *w.entry(ino).or_insert(0) += 1;
    }

    pub fn released_writer(&self, ino: u64) {
        let mut w = lock(&self.writers);
        if let Some(n) = w.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                w.remove(&ino);
            }
        }
    }

    /// Whether the kernel may hold data of `ino` the engine hasn't seen.
    pub fn has_writers(&self, ino: u64) -> bool {
        lock(&self.writers).contains_key(&ino)
    }

    /// A write-back of `ino` ended with `errno` (0: it succeeded). The
    /// caller has the kernel drop its cached attributes either way:
    /// st_blocks changed, and a failure must reach the next cached
    /// write(2) (module doc).
    pub fn written_back(&self, ino: u64, errno: i32) {
        let mut f = lock(&self.failed);
        if errno == 0 {
            f.remove(&ino);
        } else if f.len() < MAX_FAILED || f.contains_key(&ino) {
            f.insert(ino, errno);
        }
    }

    /// The errno of `ino`'s failed write-back, if one is remembered.
    pub fn failed(&self, ino: u64) -> Option<i32> {
        lock(&self.failed).get(&ino).copied()
    }

    /// Space is back: the next write-back will be tried.
    pub fn forget_failure(&self, ino: u64) {
        lock(&self.failed).remove(&ino);
    }
}

/// A lock whose holder panicked still guards plain counts.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_write_only_opens_below_the_headroom_are_written_through() {
        let (wo, rw, ro) = (
            (libc::O_WRONLY | libc::O_APPEND) as u32,
            libc::O_RDWR as u32,
            libc::O_RDONLY as u32,
        );
        assert!(write_through(true, wo, 99, 100));
        assert!(!write_through(true, wo, 100, 100));
        assert!(!write_through(false, wo, 0, 100));
        assert!(!write_through(true, rw, 0, 100));
        assert!(!write_through(true, ro, 0, 100));
    }

    #[test]
    fn the_mount_device_is_the_newest_mount_at_the_path() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
43 27 0:39 / /tmp/fx/mnt rw - fuse.scoutfs /m rw,user_id=0
44 27 0:40 / /tmp/a\\040b rw - fuse.scoutfs /m rw
45 27 0:41 / /tmp/fx/mnt rw - fuse.scoutfs /m rw,user_id=0
";
        assert_eq!(mount_device(table, Path::new("/tmp/fx/mnt")), Some("0:41"));
        assert_eq!(mount_device(table, Path::new("/tmp/a b")), Some("0:40"));
        assert_eq!(mount_device(table, Path::new("/tmp/fx")), None);
    }

    #[test]
    fn writers_and_failed_write_backs_are_counted_per_inode() {
        let st = State::new(Some(0));
        assert!(!st.has_writers(7));
        st.opened_writer(7);
        st.opened_writer(7);
        st.released_writer(7);
        assert!(st.has_writers(7));
        st.released_writer(7);
        assert!(!st.has_writers(7));
        st.released_writer(7);
        assert!(!st.has_writers(7));
        st.written_back(7, libc::ENOSPC);
        assert_eq!(st.failed(7), Some(libc::ENOSPC));
        st.written_back(7, 0);
        assert_eq!(st.failed(7), None);
        for ino in 0..MAX_FAILED as u64 + 10 {
            st.written_back(ino, libc::EIO);
        }
        assert_eq!(lock(&st.failed).len(), MAX_FAILED);
        st.forget_failure(0);
        assert_eq!(st.failed(0), None);
    }

    #[test]
    fn the_headroom_is_configured_learned_or_the_fallback() {
        let h = Headroom::new(Some(0));
        h.learn(Path::new("/"));
        assert_eq!(h.bytes(), 0);
        let h = Headroom::new(None);
        assert_eq!(h.bytes(), FALLBACK_HEADROOM);
        // Not a FUSE mount: no backing device of its own to read.
        h.learn(Path::new("/nonexistent"));
        assert_eq!(h.bytes(), FALLBACK_HEADROOM);
    }
}
