//! The kernel's references to inodes, as a FUSE (or virtio-fs) frontend
//! learns them: every entry it answers (lookup, create, mkdir, mknod,
//! symlink, link, tmpfile, each readdirplus entry but "." and "..") adds
//! one to the inode's lookup count in the kernel, and FORGET gives counts
//! back once the kernel has evicted the inode. While any remain, the
//! kernel may still ask about the inode by number — a process's working
//! directory, an `O_PATH` descriptor, a dentry some other path pinned —
//! even after its last name is gone.
//!
//! So an inode whose last link goes while the kernel references it stays,
//! an orphan as while a handle holds it, until the kernel forgets it: what
//! scoutfs does in the kernel, where unlink leaves an orphan item and the
//! inode is deleted at eviction. Deleting it at unlink made `stat .` in a
//! removed working directory, and `chdir ..` out of it once the kernel's
//! attributes aged (its permission check asks for them), fail with ENOENT
//! where ext4 answers.
//!
//! The counts live in [`KernelRefs`], shared between the engine and its
//! frontends: a frontend counts each entry on its own thread without a
//! trip to the engine, and the engine consults the counts where it would
//! delete an unlinked inode. An inode the engine keeps for the kernel is
//! marked; the FORGET that brings its count to zero tells the frontend to
//! call [`Fs::forgotten`], which deletes it. The map holds one entry per
//! inode the kernel has in its inode cache (bounded by that cache); an
//! entry goes with its last FORGET.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::server::Statfs;

use super::error::{FsError, Result};
use super::{Fs, ItemStore};

#[derive(Debug, Default)]
struct Counts {
    /// Lookups the kernel holds, by inode.
    lookups: HashMap<u64, u64>,
    /// Unlinked inodes kept only because the kernel references them.
    kept: HashSet<u64>,
}

/// The kernel's lookup counts of inodes (see the module comment).
#[derive(Debug, Default)]
pub struct KernelRefs {
    counts: Mutex<Counts>,
}

impl KernelRefs {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding the lock left plain counts behind, each
        // update complete: they are still the best knowledge there is.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kernel was answered with an entry for `ino`.
    pub fn remember(&self, ino: u64) {
        let mut c = self.lock();
        let n = c.lookups.entry(ino).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// The kernel forgot `count` lookups of `ino`. True when none remain
    /// and the engine kept the inode for the kernel: the frontend then
    /// calls [`Fs::forgotten`], which deletes it and drops the mark (until
    /// then statfs, on the engine's thread, still counts it as kept).
    #[must_use]
    pub fn forget(&self, ino: u64, count: u64) -> bool {
        let mut c = self.lock();
        let Some(n) = c.lookups.get_mut(&ino) else {
            // Counted nowhere (an entry this frontend never answered):
            // nothing to give back.
            return c.kept.contains(&ino);
        };
        *n = n.saturating_sub(count);
        if *n > 0 {
            return false;
        }
        c.lookups.remove(&ino);
        c.kept.contains(&ino)
    }

    /// The unlinked inodes kept for the kernel, now.
    fn kept(&self) -> Vec<u64> {
        self.lock().kept.iter().copied().collect()
    }

    /// `ino`, kept for the kernel, was deleted all the same.
    pub(super) fn unkeep(&self, ino: u64) {
        self.lock().kept.remove(&ino);
    }

    /// The mount ended, and every reference with it: what was kept.
    fn end(&self) -> Vec<u64> {
        let mut c = self.lock();
        c.lookups.clear();
        c.kept.drain().collect()
    }

    /// Lookups the kernel holds on `ino`.
    pub fn count(&self, ino: u64) -> u64 {
        self.lock().lookups.get(&ino).copied().unwrap_or(0)
    }

    /// Every inode the kernel references now (a frontend that lost track
    /// of changes drops what its kernel caches of each).
    pub fn inodes(&self) -> Vec<u64> {
        self.lock().lookups.keys().copied().collect()
    }

    /// How many inodes the kernel references; how many of them are
    /// unlinked and kept for it.
    pub fn len(&self) -> (usize, usize) {
        let c = self.lock();
        (c.lookups.len(), c.kept.len())
    }

    /// `ino` has no links left: if the kernel references it, mark it kept
    /// and say so (its last FORGET deletes it), else it may go now. One
    /// lock for the test and the mark, so a FORGET is seen either before
    /// (the inode goes now) or after (the FORGET finds the mark).
    pub(super) fn keep_if_referenced(&self, ino: u64) -> bool {
        let mut c = self.lock();
        if c.lookups.contains_key(&ino) {
            c.kept.insert(ino);
            true
        } else {
            false
        }
    }
}

impl<S: ItemStore> Fs<S> {
    /// The kernel's references, for a frontend to count in (FUSE's
    /// lookup counts). Every frontend of the mount shares one.
    pub fn kernel_refs(&self) -> Arc<KernelRefs> {
        self.kernel_refs.clone()
    }

    /// Whether an unlinked `ino` must stay: a handle holds it, or the
    /// kernel references it (then marked, so that its last FORGET deletes
    /// it).
    pub(super) fn keep_unlinked(&self, ino: u64) -> bool {
        let open = self.open_count(ino) > 0;
        // Mark it even when open: the last release then leaves it too.
        let referenced = self.kernel_refs.keep_if_referenced(ino);
        open || referenced
    }

    /// `s` as the kernel's FORGETs will leave it: an unlinked inode that
    /// only the kernel's references keep (no handle holds it) counts as
    /// deleted and its data blocks as free. The kernel forgets such an
    /// inode when it lets go of it, for a file `rm` removed usually before
    /// the unlink returns, but a file just written through the writeback
    /// cache is held a moment longer by the kernel's flusher, and its
    /// FORGET can come after the `df` that follows the `rm`. Counting it
    /// here keeps statfs what ext4 shows right after `rm`;
    /// [`Fs::room_after_commit`] makes the blocks real for a writer that
    /// needs them before the FORGET comes.
    pub(super) async fn count_kept_as_deleted(&mut self, s: &mut Statfs) -> Result<()> {
        for ino in self.kernel_refs.kept() {
            if self.open_count(ino) > 0 {
                continue;
            }
            let inode = match self.read_inode(ino).await {
                Err(FsError::NotFound) => continue,
                r => r?,
            };
            if inode.nlink.get() > 0 {
                continue;
            }
            s.free_data_blocks = s
                .free_data_blocks
                .saturating_add(inode.online_blocks.get())
                .min(s.total_data_blocks);
            s.inode_count = s.inode_count.saturating_sub(1);
        }
        Ok(())
    }

    /// A writer found the device full: whether a commit would give it
    /// room, the blocks the open transaction freed. Unlinked files that
    /// only the kernel's references keep, whose blocks statfs already
    /// counts free, are deleted first (the kernel then finds them gone,
    /// ENOENT, as before it could reference them): space that `df`
    /// promised goes to the writer rather than to an `O_PATH` descriptor
    /// of a removed file.
    pub(super) async fn room_after_commit(&mut self) -> Result<bool> {
        for ino in self.kernel_refs.kept() {
            if self.open_count(ino) > 0 {
                continue;
            }
            let inode = match self.read_inode(ino).await {
                Err(FsError::NotFound) => continue,
                r => r?,
            };
            if inode.nlink.get() > 0 || inode.online_blocks.get() == 0 {
                continue;
            }
            tracing::debug!("inode {ino}: deleted for space though the kernel references it");
            self.kernel_refs.unkeep(ino);
            self.purge_inode(ino).await?;
        }
        Ok(self.store.pending_data_frees())
    }

    /// The mount ends (unmount), and with it every handle and kernel
    /// reference its frontends held: the FUSE connection goes at unmount
    /// with whatever RELEASE or FORGET the kernel had queued but not yet
    /// sent, so counting on them would leave orphans for the next mount.
    /// Delete the unlinked inodes kept for them now, as the kernel's
    /// scoutfs evicts every inode at unmount.
    pub(super) async fn end_kernel_refs(&mut self) -> Result<()> {
        self.kernel_refs.end();
        self.open_counts.clear();
        self.linkable.clear();
        if self.store.read_only() {
            // Left, orphans, to the next read-write mount.
            return Ok(());
        }
        let deleted = self.purge_orphans().await?;
        if deleted > 0 {
            tracing::info!("unmount: deleted {deleted} unlinked inodes no longer open");
        }
        Ok(())
    }

    /// The kernel no longer references `ino` (its last FORGET, when
    /// [`KernelRefs::forget`] said so): delete it if it has no links and
    /// no handle holds it. A read-only mount leaves it, an orphan, to the
    /// next read-write mount.
    pub async fn forgotten(&mut self, ino: u64) -> Result<()> {
        if self.open_count(ino) > 0 {
            // A handle holds it: its last release deletes it.
            return Ok(());
        }
        let inode = match self.read_inode(ino).await {
            Err(FsError::NotFound) => {
                self.kernel_refs.unkeep(ino);
                return Ok(());
            }
            r => r?,
        };
        if inode.nlink.get() > 0 {
            self.kernel_refs.unkeep(ino);
            return Ok(());
        }
        if self.kernel_refs.count(ino) > 0 || self.store.read_only() {
            // Answered with again meanwhile (a handle's lookup), or left
            // to a read-write mount: still kept.
            return Ok(());
        }
        self.kernel_refs.unkeep(ino);
        self.purge_inode(ino).await
    }
}
