//! Open handles and orphans: an inode whose last link goes while a handle
//! still holds it keeps its items, marked by an orphan item, until the
//! last handle is released. A crash leaves the orphan items of the inodes
//! that were open; mounting deletes those inodes.

use crate::btree::Item;
use crate::format::alloc::{Extent, DATA_EXTENT_OFFLINE};
use crate::format::key::{item_type, zone};
use crate::format::Key;

use super::batch::Batch;
use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::perm::{Creds, MAY_EXEC, MAY_WRITE};
use super::{Fs, ItemStore};

/// The orphan item of `ino` left by mount `rid`.
pub fn orphan_key(rid: u64, ino: u64) -> Key {
    Key::new(zone::ORPHAN, rid, item_type::ORPHAN, ino, 0, 0)
}

impl<S: ItemStore> Fs<S> {
    /// Handles this mount holds on `ino`.
    pub fn open_count(&self, ino: u64) -> u32 {
        self.open_counts.get(&ino).copied().unwrap_or(0)
    }

    /// open(2) of an existing inode for `mask` (`MAY_READ` / `MAY_WRITE`,
    /// from the access mode, plus write for O_TRUNC): checks permission and
    /// takes a handle, which [`Fs::release`] gives back.
    pub async fn open_ino(&mut self, creds: &Creds, ino: u64, mask: u32) -> Result<Attr> {
        let inode = self.read_inode(ino).await?;
        let attr = Attr::from_inode(ino, &inode)?;
        if attr.kind == FileType::Directory {
            if mask & MAY_WRITE != 0 {
                return Err(FsError::IsDir);
            }
            if mask & MAY_EXEC != 0 {
                return Err(FsError::Access);
            }
        }
        self.check_access(creds, ino, &inode, mask).await?;
        self.hold_ino(ino);
        Ok(attr)
    }

    /// Take a handle on `ino` without a permission check (a frontend
    /// pinning an inode it just created, say).
    pub fn hold_ino(&mut self, ino: u64) {
        *self.open_counts.entry(ino).or_insert(0) += 1;
    }

    /// Give back a handle. The last handle on an inode without links
    /// deletes it and its orphan item.
    pub async fn release(&mut self, ino: u64) -> Result<()> {
        let Some(count) = self.open_counts.get_mut(&ino) else {
            return Err(FsError::Invalid);
        };
        if *count > 1 {
            *count -= 1;
            return Ok(());
        }
        // The last handle. The inode is read before the count goes, so a
        // deferred miss (the release runs again) leaves the count as it was.
        let inode = match self.read_inode(ino).await {
            Err(FsError::NotFound) => None,
            r => Some(r?),
        };
        self.open_counts.remove(&ino);
        self.linkable.remove(&ino);
        let Some(inode) = inode else {
            return Ok(());
        };
        if inode.nlink.get() > 0 || self.kernel_refs.keep_if_referenced(ino) {
            // Linked, or the kernel still references it (refs.rs): its
            // last FORGET deletes it.
            return Ok(());
        }
        self.kernel_refs.unkeep(ino);
        self.purge_inode(ino).await
    }

    /// `ino`, tracked by `b`, has lost its last link: keep it as an orphan
    /// while a handle holds it or the kernel references it (refs.rs), else
    /// delete it with all its items. An
    /// inode with more items than one transaction should carry (a large
    /// fragmented file) becomes an orphan too and is deleted over several
    /// transactions by [`Fs::purge_pending`] after `b` is applied: a crash
    /// part-way leaves the orphan item, and mount finishes the job.
    pub(super) async fn drop_inode(&mut self, b: &mut Batch, ino: u64) -> Result<()> {
        debug_assert_eq!(b.inode(ino).map(|i| i.nlink.get()), Some(0));
        if self.keep_unlinked(ino) {
            b.put(orphan_key(self.opts.rid, ino), Vec::new());
            return Ok(());
        }
        let items = self.inode_items(ino, PURGE_CHUNK + 1).await?;
        if items.len() > PURGE_CHUNK {
            b.put(orphan_key(self.opts.rid, ino), Vec::new());
            // Only once `b` is written: an operation that doesn't get
            // that far (a deferred miss runs it again) unlinked nothing.
            b.purge_later(ino);
            return Ok(());
        }
        for item in items {
            delete_item(b, ino, item)?;
        }
        b.delete_inode(ino);
        Ok(())
    }

    /// Finish the deletions [`Fs::drop_inode`] deferred.
    pub(super) async fn purge_pending(&mut self) -> Result<()> {
        while let Some(ino) = self.pending_purge.pop() {
            self.purge_inode(ino).await?;
        }
        Ok(())
    }

    /// Up to `max` items of `ino` other than its inode item.
    async fn inode_items(&mut self, ino: u64, max: usize) -> Result<Vec<Item>> {
        let mut items = self
            .store
            .range(&Key::inode_first(ino), &Key::inode_last(ino), max + 1)
            .await?;
        items.retain(|it| it.key != Key::inode(ino));
        items.truncate(max);
        Ok(items)
    }

    /// Delete an unlinked inode, its items (freeing its data blocks) and
    /// its orphan item, in transactions of at most [`PURGE_CHUNK`] items.
    pub(super) async fn purge_inode(&mut self, ino: u64) -> Result<()> {
        loop {
            let items = self.inode_items(ino, PURGE_CHUNK + 1).await?;
            let last = items.len() <= PURGE_CHUNK;
            let mut b = self.batch();
            for item in items.into_iter().take(PURGE_CHUNK) {
                delete_item(&mut b, ino, item)?;
            }
            if last {
                match self.read_inode(ino).await {
                    Ok(inode) => {
                        b.track(ino, inode);
                        b.delete_inode(ino);
                    }
                    Err(FsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
                b.delete(orphan_key(self.opts.rid, ino));
            }
            self.apply(b).await?;
            if last {
                return Ok(());
            }
        }
    }

    /// At mount (or when a read-only mount becomes read-write): the
    /// orphans this mount left (it crashed with unlinked files open, or
    /// part-way through deleting a large one) are deleted with their
    /// inodes, but for those it holds open. Returns how many.
    pub(super) async fn delete_orphans(&mut self) -> Result<usize> {
        if self.store.read_only() {
            let rid = self.opts.rid;
            let orphans = self
                .store
                .range(&orphan_key(rid, 0), &orphan_key(rid, u64::MAX), usize::MAX)
                .await?;
            if !orphans.is_empty() {
                tracing::info!(
                    "{} orphaned inodes are left for a read-write mount to delete",
                    orphans.len()
                );
            }
            return Ok(0);
        }
        let n = self.purge_orphans().await?;
        if n > 0 {
            tracing::info!("deleted {n} orphaned inodes");
        }
        Ok(n)
    }

    /// Delete this mount's orphans but those it holds (open, or referenced
    /// by the kernel), and commit. Returns how many orphan items there were.
    pub(super) async fn purge_orphans(&mut self) -> Result<usize> {
        let rid = self.opts.rid;
        let orphans = self
            .store
            .range(&orphan_key(rid, 0), &orphan_key(rid, u64::MAX), usize::MAX)
            .await?;
        for item in &orphans {
            let ino = item.key.second;
            if self.open_counts.contains_key(&ino) || self.kernel_refs.keep_if_referenced(ino) {
                // Held by this mount (a read-only mount made read-write):
                // the last release or FORGET deletes it.
                continue;
            }
            match self.read_inode(ino).await {
                Ok(inode) if inode.nlink.get() == 0 => self.purge_inode(ino).await?,
                // Linked again (O_TMPFILE then linkat) or already gone.
                Ok(_) | Err(FsError::NotFound) => {
                    let mut b = self.batch();
                    b.delete(item.key);
                    self.apply(b).await?;
                }
                Err(e) => return Err(e),
            }
        }
        if !orphans.is_empty() {
            self.store.commit().await?;
        }
        Ok(orphans.len())
    }
}

/// Items of one inode deleted in one transaction at most.
pub(super) const PURGE_CHUNK: usize = 256;

/// Delete one of an inode's items in `b`; a data extent's blocks are freed
/// with it.
fn delete_item(b: &mut Batch, ino: u64, item: Item) -> Result<()> {
    if item.key.ty == item_type::DATA_EXTENT {
        let e = crate::data::decode(ino, &item).map_err(FsError::corrupt)?;
        if e.flags & DATA_EXTENT_OFFLINE == 0 {
            b.free_data(Extent {
                start: e.blkno,
                len: e.len,
            });
        }
    }
    b.delete(item.key);
    Ok(())
}
