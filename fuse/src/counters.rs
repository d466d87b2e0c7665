//! The FUSE frontend's own counters (per opcode, bytes, failures), read
//! by `scoutfs counters` through the admin socket beside the engine's
//! per-op counts and latencies. Plain relaxed atomics: handler threads
//! bump them without coordinating.

use std::sync::atomic::{AtomicU64, Ordering};

use scoutfs_engine::serve::Errno;

macro_rules! counters {
    ($($name:ident => $text:literal),* $(,)?) => {
        /// What is counted.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($name),* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name),*];

            pub fn name(self) -> &'static str {
                match self { $(Counter::$name => $text),* }
            }
        }
    };
}

counters! {
    Lookup => "fuse_lookup",
    Getattr => "fuse_getattr",
    Setattr => "fuse_setattr",
    Readlink => "fuse_readlink",
    Create => "fuse_create",
    Remove => "fuse_remove",
    Rename => "fuse_rename",
    Open => "fuse_open",
    Release => "fuse_release",
    // Inodes the kernel forgot (FORGET, BATCH_FORGET).
    Forget => "fuse_forget",
    Read => "fuse_read",
    Write => "fuse_write",
    // Opens written through (FOPEN_DIRECT_IO) for want of free space.
    WriteThroughOpens => "fuse_write_through_opens",
    Fsync => "fuse_fsync",
    Statfs => "fuse_statfs",
    Xattr => "fuse_xattr",
    XattrNoted => "fuse_xattr_noted",
    Readdir => "fuse_readdir",
    BytesRead => "bytes_read",
    BytesWritten => "bytes_written",
    Errors => "errors",
    Refused => "refused",
    ErrorsNoSpace => "errors_enospc",
    ErrorsIo => "errors_eio",
    ErrorsReadOnly => "errors_erofs",
    // Change events of other sessions received from the engine
    // (notify.rs), and the notifications they became.
    Changes => "fuse_changes",
    NotifyInvalInode => "fuse_notify_inval_inode",
    NotifyInvalEntry => "fuse_notify_inval_entry",
    NotifyDelete => "fuse_notify_delete",
    // Notifications about an inode or name the kernel didn't cache.
    NotifyUncached => "fuse_notify_uncached",
    // Notifications for the mount's own needs (write-back, written
    // through).
    NotifyLocal => "fuse_notify_local",
    // Everything dropped after changes were lost to a full queue.
    NotifyCoarse => "fuse_notify_coarse",
}

#[derive(Debug)]
pub struct Counters {
    values: Vec<AtomicU64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: Counter::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Counters {
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn bump(&self, c: Counter) {
        self.add(c, 1);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// An operation failed with `e`. Answers that are the caller's
    /// (ENOENT from a lookup, EEXIST, ENODATA, EACCES, ...) count as
    /// `refused`; failures of the volume (no space, I/O errors, read-only,
    /// the engine stopped) as `errors`, and the first three by kind.
    pub fn error(&self, e: Errno) {
        if !e.is_volume_failure() {
            return self.bump(Counter::Refused);
        }
        self.bump(Counter::Errors);
        let kind = match e.get() {
            libc::ENOSPC => Counter::ErrorsNoSpace,
            libc::EIO => Counter::ErrorsIo,
            libc::EROFS => Counter::ErrorsReadOnly,
            _ => return,
        };
        self.bump(kind);
    }

    /// Every counter as `(name, value)`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .map(|&c| (c.name(), self.get(c)))
            .collect()
    }
}
