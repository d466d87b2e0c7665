//! Open handles and orphans: an inode whose last link goes while a handle
//! still holds it keeps its items, marked by an orphan item, until the
//! last handle is released. A crash leaves the orphan items of the inodes
//! that were open; mounting deletes those inodes.

use crate::format::key::{item_type, zone};
use crate::format::Key;

use super::batch::Batch;
use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::perm::{self, Creds, MAY_EXEC, MAY_WRITE};
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
        perm::check_access(creds, &inode, mask)?;
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
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        self.open_counts.remove(&ino);
        let inode = match self.read_inode(ino).await {
            Err(FsError::NotFound) => return Ok(()),
            r => r?,
        };
        if inode.nlink.get() > 0 {
            return Ok(());
        }
        let mut b = self.batch();
        b.track(ino, inode);
        self.delete_inode_items(&mut b, ino).await?;
        b.delete(orphan_key(self.opts.rid, ino));
        self.apply(b).await
    }

    /// `ino`, tracked by `b`, has lost its last link: keep it as an orphan
    /// while a handle holds it, else delete it with all its items.
    pub(super) async fn drop_inode(&mut self, b: &mut Batch, ino: u64) -> Result<()> {
        debug_assert_eq!(b.inode(ino).map(|i| i.nlink.get()), Some(0));
        if self.open_count(ino) > 0 {
            b.put(orphan_key(self.opts.rid, ino), Vec::new());
            Ok(())
        } else {
            self.delete_inode_items(b, ino).await
        }
    }

    /// Delete `ino` (tracked by `b`) and every item of it.
    async fn delete_inode_items(&mut self, b: &mut Batch, ino: u64) -> Result<()> {
        let items = self
            .store
            .range(&Key::inode_first(ino), &Key::inode_last(ino), usize::MAX)
            .await?;
        for item in items {
            if item.key != Key::inode(ino) {
                b.delete(item.key);
            }
        }
        b.delete_inode(ino);
        Ok(())
    }

    /// At mount: the orphans this mount left (it crashed with unlinked
    /// files open) are deleted with their inodes. Returns how many.
    pub(super) async fn delete_orphans(&mut self) -> Result<usize> {
        let rid = self.opts.rid;
        let orphans = self
            .store
            .range(&orphan_key(rid, 0), &orphan_key(rid, u64::MAX), usize::MAX)
            .await?;
        for item in &orphans {
            let ino = item.key.second;
            let mut b = self.batch();
            match self.read_inode(ino).await {
                Ok(inode) if inode.nlink.get() == 0 => {
                    b.track(ino, inode);
                    self.delete_inode_items(&mut b, ino).await?;
                }
                // Linked again (O_TMPFILE then linkat) or already gone.
                Ok(_) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
            b.delete(item.key);
            self.apply(b).await?;
        }
        if !orphans.is_empty() {
            self.store.commit().await?;
            tracing::info!("deleted {} orphaned inodes", orphans.len());
        }
        Ok(orphans.len())
    }
}
