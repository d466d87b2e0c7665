//! Access times by the mount's policy, as Linux decides them for a kernel
//! filesystem (fs/inode.c: `atime_needs_update`, `relatime_need_update`,
//! and lazytime's deferred timestamp writes).
//!
//! The VFS, not the filesystem, updates atime on a kernel mount
//! (`file_accessed` after a read, a directory listing, an mmap, an exec's
//! reads of the image). Over FUSE the kernel never does: every FUSE inode
//! is `S_NOATIME`, so the server updates atime itself when it serves a
//! read or a directory listing, by the same rules, which are here:
//!
//! - `noatime`: never; a read-only mount (its superblock or the mount
//!   point): never.
//! - `nodiratime`: never for directories.
//! - `relatime` (the kernel's default): when atime is not after mtime, or
//!   not after ctime, or is at least a day older than now.
//! - `strictatime`: every access.
//! - and never to the value it already has.
//!
//! `lazytime`: an atime update is kept in memory and shown by getattr,
//! but makes no transaction dirty by itself (a volume that is only read
//! never commits). The kept atimes are written with the inode's next
//! other change, at sync/fsync, when the mount goes read-only or stops
//! being lazytime, at unmount, once a day old, or when more than
//! [`LAZY_ATIMES_MAX`] inodes hold one (the oldest half goes). A crash
//! loses them, as a kernel filesystem's lazytime loses dirty times.

use std::collections::HashMap;

use crate::format::inode::{Inode, Timespec};
use crate::format::Key;

use super::error::Result;
use super::{Fs, ItemStore};

/// Which accesses update atime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// `relatime`, the kernel's default.
    #[default]
    Relatime,
    /// `strictatime`: every access.
    Strict,
    /// `noatime`: none.
    Never,
}

/// The mount's atime options, and whether it is read-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtimePolicy {
    pub mode: AtimeMode,
    /// `nodiratime`: listing a directory leaves its atime.
    pub nodiratime: bool,
    /// `lazytime`: atime updates are kept in memory (see the module).
    pub lazytime: bool,
    /// The mount is read-only: no access changes atime.
    pub read_only: bool,
}

/// relatime's "a day old", and how long lazytime keeps an atime.
pub const DAY_SECS: i64 = 24 * 60 * 60;

/// At most this many inodes hold a lazytime atime; past it the oldest
/// half are written.
pub const LAZY_ATIMES_MAX: usize = 16 * 1024;

/// Inode updates per batch when kept atimes are written.
const LAZY_WRITE_CHUNK: usize = 64;

/// relatime's rule: atime not after mtime or ctime, or a day old (signed
/// times: 1960 is before 1970; a day after the end of time64_t is not
/// reached).
pub fn relatime_due(i: &Inode, now: Timespec) -> bool {
    let (a, m, c) = (i.atime, i.mtime, i.ctime);
    a <= m || a <= c || now.sec.get() >= a.sec.get().saturating_add(DAY_SECS)
}

/// Whether an access at `now` to an inode with these times changes its
/// atime under `p` (Linux's `atime_needs_update`).
pub fn atime_due(p: &AtimePolicy, i: &Inode, now: Timespec) -> bool {
    if p.read_only || p.mode == AtimeMode::Never {
        return false;
    }
    if p.nodiratime && i.mode.get() & libc::S_IFMT == libc::S_IFDIR {
        return false;
    }
    if p.mode == AtimeMode::Relatime && !relatime_due(i, now) {
        return false;
    }
    i.atime != now
}

/// Atimes a lazytime mount has not written: inode number to (atime, when
/// it was first kept).
#[derive(Debug, Default)]
pub(super) struct LazyAtimes {
    kept: HashMap<u64, (Timespec, Timespec)>,
    /// No atime was kept before this (a lower bound, exact after `due`),
    /// so a read needn't look for day-old ones.
    oldest: Option<Timespec>,
}

impl LazyAtimes {
    pub(super) fn get(&self, ino: u64) -> Option<Timespec> {
        self.kept.get(&ino).map(|&(atime, _)| atime)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The inode's item was written (or deleted) with whatever it held.
    pub(super) fn written(&mut self, ino: u64) {
        self.kept.remove(&ino);
        if self.kept.is_empty() {
            self.oldest = None;
        }
    }

    /// Whether an atime may have been kept at or before `cutoff`.
    fn any_kept_by(&self, cutoff: Timespec) -> bool {
        self.oldest.is_some_and(|o| o <= cutoff)
    }

    /// Keep `atime` for `ino` (at `now`: when it was first kept stays).
    fn keep(&mut self, ino: u64, atime: Timespec, now: Timespec) {
        let since = self.kept.get(&ino).map_or(now, |&(_, since)| since);
        self.kept.insert(ino, (atime, since));
        self.oldest = Some(self.oldest.map_or(since, |o| o.min(since)));
    }

    /// Inodes whose atime was kept at or before `cutoff`, or all with
    /// `None`, oldest first.
    fn due(&mut self, cutoff: Option<Timespec>) -> Vec<u64> {
        self.oldest = self.kept.values().map(|&(_, since)| since).min();
        let mut v: Vec<(Timespec, u64)> = self
            .kept
            .iter()
            .filter(|(_, &(_, since))| cutoff.is_none_or(|c| since <= c))
            .map(|(&ino, &(_, since))| (since, ino))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, ino)| ino).collect()
    }
}

impl<S: ItemStore> Fs<S> {
    /// The atime policy in force.
    pub fn atime_policy(&self) -> AtimePolicy {
        self.opts.atime
    }

    /// Change the atime policy (a remount). Atimes lazytime kept are
    /// written when the mount stops being lazytime or becomes read-only.
    pub async fn set_atime_policy(&mut self, p: AtimePolicy) -> Result<()> {
        if !p.lazytime || p.read_only {
            self.write_lazy_atimes(None).await?;
        }
        self.opts.atime = p;
        Ok(())
    }

    /// Whether reading `ino` now would change its atime under the
    /// mount's policy. A frontend that serves reads from its own cache
    /// without asking (FUSE's page cache kept across opens) must not
    /// while one is due: the read would never reach [`Fs::read`].
    pub async fn atime_due_now(&mut self, ino: u64) -> Result<bool> {
        let inode = self.read_inode(ino).await?;
        Ok(!self.store.read_only() && atime_due(&self.opts.atime, &inode, self.now()))
    }

    /// `ino` was read: its contents, its entries (a directory listing;
    /// once per listing request, as the VFS does per getdents), or its
    /// image by an exec. Updates atime by the policy. An atime that cannot
    /// be stored (a full or read-only volume) is not the reader's error:
    /// it is logged and the access stands.
    pub async fn touch_atime(&mut self, ino: u64) -> Result<()> {
        let inode = self.read_inode(ino).await?;
        self.accessed(ino, inode).await
    }

    /// [`Fs::touch_atime`] with the inode already read. Its only error is
    /// a deferred miss ([`FsError::is_miss`]): the access runs again.
    pub(super) async fn accessed(&mut self, ino: u64, inode: Inode) -> Result<()> {
        let now = self.now();
        if !atime_due(&self.opts.atime, &inode, now) || self.store.read_only() {
            return Ok(());
        }
        if self.opts.atime.lazytime {
            self.lazy_atimes.keep(ino, now, now);
            // Written once a day old, or when too many are kept.
            let r = if self.lazy_atimes.len() > LAZY_ATIMES_MAX {
                let mut due = self.lazy_atimes.due(None);
                due.truncate(LAZY_ATIMES_MAX / 2);
                self.write_atimes(&due).await
            } else {
                self.write_aged_atimes().await
            };
            match r {
                Err(e) if e.is_miss() => return Err(e),
                Err(e) => tracing::debug!("kept atimes not written: {e}"),
                Ok(()) => {}
            }
            return Ok(());
        }
        let mut b = self.batch();
        b.track(ino, inode);
        b.inode_mut(ino).atime = now;
        match self.apply(b).await {
            Err(e) if e.is_miss() => Err(e),
            Err(e) => {
                tracing::debug!("inode {ino}: atime not updated: {e}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Write the atimes lazytime has kept for a day (a reactor task calls
    /// this now and then, as the kernel's writeback expires dirty times).
    pub async fn write_aged_atimes(&mut self) -> Result<()> {
        if self.lazy_atimes.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let cutoff = Timespec::new(now.sec.get().saturating_sub(DAY_SECS), now.nsec.get());
        if !self.lazy_atimes.any_kept_by(cutoff) {
            return Ok(());
        }
        self.write_lazy_atimes(Some(cutoff)).await
    }

    /// Write the atimes lazytime kept: those kept before `cutoff`, or all.
    pub(super) async fn write_lazy_atimes(&mut self, cutoff: Option<Timespec>) -> Result<()> {
        if self.lazy_atimes.is_empty() {
            return Ok(());
        }
        let due = self.lazy_atimes.due(cutoff);
        self.write_atimes(&due).await
    }

    /// Write these inodes' kept atimes, a few inodes per batch.
    pub(super) async fn write_atimes(&mut self, inos: &[u64]) -> Result<()> {
        for chunk in inos.chunks(LAZY_WRITE_CHUNK) {
            let mut b = self.batch();
            for &ino in chunk {
                let Some(atime) = self.lazy_atimes.get(ino) else {
                    continue;
                };
                let Some(item) = self.store.lookup(&Key::inode(ino)).await? else {
                    // Deleted meanwhile.
                    self.lazy_atimes.written(ino);
                    continue;
                };
                let stored = self.inode_of_item(ino, &item.val)?;
                b.track(ino, stored);
                b.inode_mut(ino).atime = atime;
            }
            self.apply(b).await?;
            // An atime equal to the stored one wrote nothing: done too.
            for &ino in chunk {
                self.lazy_atimes.written(ino);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sec: i64) -> Timespec {
        Timespec::new(sec, 0)
    }

    fn inode(mode: u32, atime: i64, mtime: i64, ctime: i64) -> Inode {
        Inode {
            mode: mode.into(),
            atime: t(atime),
            mtime: t(mtime),
            ctime: t(ctime),
            ..Inode::default()
        }
    }

    fn policy(mode: AtimeMode) -> AtimePolicy {
        AtimePolicy {
            mode,
            ..AtimePolicy::default()
        }
    }

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn relatime_updates_atime_not_after_mtime_or_ctime_or_a_day_old() {
        let p = policy(AtimeMode::Relatime);
        let f = |a, m, c| atime_due(&p, &inode(libc::S_IFREG, a, m, c), t(NOW));
        assert!(f(NOW - 10, NOW - 10, NOW - 20), "atime == mtime");
        assert!(f(NOW - 10, NOW - 5, NOW - 20), "atime < mtime");
        assert!(f(NOW - 10, NOW - 20, NOW - 10), "atime == ctime");
        assert!(!f(NOW - 10, NOW - 20, NOW - 20), "after both, recent");
        assert!(!f(
            NOW - DAY_SECS + 1,
            NOW - 2 * DAY_SECS,
            NOW - 2 * DAY_SECS
        ));
        assert!(f(NOW - DAY_SECS, NOW - 2 * DAY_SECS, NOW - 2 * DAY_SECS));
        assert!(!f(NOW + 3600, NOW, NOW), "a future atime is recent");
        assert!(!f(NOW, NOW - 1, NOW - 1), "already now");
    }

    #[test]
    fn strictatime_updates_every_access_noatime_none() {
        let recent = inode(libc::S_IFREG, NOW - 1, NOW - 9, NOW - 9);
        assert!(atime_due(&policy(AtimeMode::Strict), &recent, t(NOW)));
        assert!(!atime_due(&policy(AtimeMode::Never), &recent, t(NOW)));
        let stale = inode(libc::S_IFREG, NOW - 9, NOW - 1, NOW - 1);
        assert!(!atime_due(&policy(AtimeMode::Never), &stale, t(NOW)));
        // Never to the time it already has.
        let now = inode(libc::S_IFREG, NOW, NOW - 1, NOW - 1);
        assert!(!atime_due(&policy(AtimeMode::Strict), &now, t(NOW)));
    }

    #[test]
    fn nodiratime_and_read_only_mounts_leave_atime() {
        let dir = inode(libc::S_IFDIR, NOW - 9, NOW - 1, NOW - 1);
        let file = inode(libc::S_IFREG, NOW - 9, NOW - 1, NOW - 1);
        for mode in [AtimeMode::Relatime, AtimeMode::Strict] {
            let p = AtimePolicy {
                nodiratime: true,
                ..policy(mode)
            };
            assert!(!atime_due(&p, &dir, t(NOW)));
            assert!(atime_due(&p, &file, t(NOW)));
            let ro = AtimePolicy {
                read_only: true,
                ..policy(mode)
            };
            assert!(!atime_due(&ro, &dir, t(NOW)));
            assert!(!atime_due(&ro, &file, t(NOW)));
        }
    }

    #[test]
    fn kept_atimes_come_due_oldest_first() {
        let mut l = LazyAtimes::default();
        l.keep(5, t(NOW), t(NOW));
        l.keep(3, t(NOW + 1), t(NOW + 1));
        // Keeping again moves the atime, not when it was first kept.
        l.keep(5, t(NOW + 2), t(NOW + 2));
        assert_eq!(l.get(5), Some(t(NOW + 2)));
        assert_eq!(l.due(None), vec![5, 3]);
        assert_eq!(l.due(Some(t(NOW))), vec![5]);
        assert!(l.due(Some(t(NOW - 1))).is_empty());
        assert!(l.any_kept_by(t(NOW)) && !l.any_kept_by(t(NOW - 1)));
        l.written(5);
        assert_eq!((l.len(), l.get(5)), (1, None));
        // A lower bound until the next look, then exact.
        assert!(l.any_kept_by(t(NOW)));
        l.due(None);
        assert!(!l.any_kept_by(t(NOW)) && l.any_kept_by(t(NOW + 1)));
        l.written(3);
        assert!(!l.any_kept_by(t(i64::MAX)));
    }
}
