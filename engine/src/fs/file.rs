//! File contents: read, write, truncate, fallocate, fsync and
//! SEEK_DATA/SEEK_HOLE, on top of engine::data (extent items on the data
//! device) with the inode kept in step: size, mtime/ctime, data_version
//! (+1 on every content change), online_blocks, data_seq, and the
//! setuid/setgid bits a write by a non-owner clears.
//!
//! A write's extent items and its inode change land in one transaction
//! (one `hold_trans` around both). Truncation of a file with more extents
//! past the new end than one transaction should carry sets the size first
//! and frees the rest in further transactions: a crash part-way leaves
//! blocks past the end still owned by the file (never corruption; the
//! next truncate or delete frees them).

use crate::data::{self, DataError, MAX_FILE_BYTES};
use crate::format::alloc::DATA_EXTENT_UNWRITTEN;
use crate::format::block::BLOCK_SM_SIZE;
use crate::format::inode::{Inode, Timespec};

use super::batch::Batch;
use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::orphan::PURGE_CHUNK;
use super::perm::{self, Creds};
use super::xattr::delete_xattr;
use super::{Fs, ItemStore};

const BS: u64 = BLOCK_SM_SIZE as u64;
/// Items a write changes per 1 MiB, generously (extent cut, put, merge).
const WRITE_ITEMS_PER_MIB: usize = 8;
/// Items an inode change brings (the inode and its index items).
const INODE_ITEMS: usize = 8;

/// fallocate(2) modes we support.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;

impl From<DataError> for FsError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Store(e) => e,
            DataError::Dev(e) => FsError::Io(format!("data device: {e}")),
            DataError::Offline { .. } => FsError::NoData,
            DataError::Corrupt { .. } => FsError::corrupt(e),
            DataError::TooBig(_) => FsError::FileTooBig,
        }
    }
}

/// Whether a read should update atime (Linux's relatime rule).
fn relatime_due(i: &Inode, now: Timespec) -> bool {
    let (a, m, c) = (i.atime, i.mtime, i.ctime);
    let key = |t: Timespec| (t.sec.get(), t.nsec.get());
    key(a) <= key(m) || key(a) <= key(c) || now.sec.get() >= a.sec.get() + 24 * 3600
}

impl<S: ItemStore> Fs<S> {
    fn regular(ino: u64, inode: &Inode) -> Result<()> {
        match Attr::from_inode(ino, inode)?.kind {
            FileType::Regular => Ok(()),
            FileType::Directory => Err(FsError::IsDir),
            _ => Err(FsError::Invalid),
        }
    }

    /// Read up to `len` bytes at `offset`; fewer at the end of the file.
    /// Holes and preallocated blocks read as zeros.
    pub async fn read(&mut self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let inode = self.read_inode(ino).await?;
        Self::regular(ino, &inode)?;
        let size = inode.size.get();
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let n = (len as u64).min(size - offset) as usize;
        let out = if inode.online_blocks.get() == 0 && inode.offline_blocks.get() == 0 {
            // Entirely sparse: nothing to look up.
            vec![0u8; n]
        } else {
            data::read(&mut self.store, ino, offset, n).await?
        };
        let now = self.now();
        if relatime_due(&inode, now) && !self.store.read_only() {
            let mut b = self.batch();
            b.track(ino, inode);
            b.inode_mut(ino).atime = now;
            // The data was read; an atime that cannot be stored (a full or
            // read-only volume) is not the reader's error.
            if let Err(e) = self.apply(b).await {
                tracing::debug!("inode {ino}: atime not updated: {e}");
            }
        }
        Ok(out)
    }

    /// Write `buf` at `offset`; the bytes written (short only when the
    /// device fills or fails part-way). The handle's write permission was
    /// checked when it was opened.
    pub async fn write(&mut self, creds: &Creds, ino: u64, offset: u64, buf: &[u8]) -> Result<u64> {
        let stored = self.read_inode(ino).await?;
        Self::regular(ino, &stored)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(FsError::FileTooBig)?;
        let nr_items = INODE_ITEMS + WRITE_ITEMS_PER_MIB * (buf.len() >> 20).max(1);
        let mut retried = false;
        loop {
            self.store.hold_trans(nr_items, false).await?;
            let r = self.write_held(creds, ino, stored, offset, buf).await;
            self.store.release_trans();
            match r {
                // Blocks freed by this transaction (a file just deleted)
                // come back with its commit: make it, and try once more.
                Err(FsError::NoSpace(_)) if !retried && self.store.pending_data_frees() => {
                    self.store.commit().await?;
                    retried = true;
                }
                r => {
                    let written = r?;
                    debug_assert!(offset + written <= end);
                    return Ok(written);
                }
            }
        }
    }

    async fn write_held(
        &mut self,
        creds: &Creds,
        ino: u64,
        stored: Inode,
        offset: u64,
        buf: &[u8],
    ) -> Result<u64> {
        let cap = self.capability_to_kill(ino).await?;
        let done =
            data::write_with(&mut self.store, ino, offset, buf, self.opts.data_prealloc).await?;
        let now = self.now();
        let mut b = self.batch();
        b.track(ino, stored);
        if let Some(found) = cap {
            delete_xattr(&mut b, ino, &found);
        }
        let i = b.inode_mut(ino);
        i.size.set(i.size.get().max(offset + done.bytes));
        i.online_blocks.set(i.online_blocks.get() + done.allocated);
        i.data_version.set(i.data_version.get() + 1);
        i.mtime = now;
        i.ctime = now;
        i.mode.set(perm::mode_after_write(creds, i));
        b.data_changed(ino);
        self.apply(b).await?;
        Ok(done.bytes)
    }

    /// Free the data past a new, smaller size and store `new` (the inode
    /// with its new size and whatever else setattr changed) with the item
    /// changes `more` adds (an ACL a chmod rewrote).
    pub(super) async fn truncate_data(
        &mut self,
        ino: u64,
        stored: Inode,
        mut new: Inode,
        more: impl FnOnce(&mut Batch),
    ) -> Result<()> {
        let size = new.size.get();
        let first_gone = size.div_ceil(BS);
        let has_data = stored.online_blocks.get() > 0 || stored.offline_blocks.get() > 0;
        let many = has_data
            && data::count_extents_from(&mut self.store, ino, first_gone, PURGE_CHUNK + 1).await?
                > PURGE_CHUNK;
        let nr_items = INODE_ITEMS + 3 * PURGE_CHUNK;
        self.store.hold_trans(nr_items, true).await?;
        let r = async {
            if has_data {
                let freed = if many {
                    data::truncate_edge(&mut self.store, ino, size).await?
                } else {
                    data::truncate(&mut self.store, ino, size).await?
                };
                new.online_blocks
                    .set(new.online_blocks.get().saturating_sub(freed));
            }
            let mut b = self.batch();
            b.track(ino, stored);
            *b.inode_mut(ino) = new;
            b.data_changed(ino);
            more(&mut b);
            self.apply(b).await
        }
        .await;
        self.store.release_trans();
        r?;
        let mut more = many;
        while more {
            self.store.hold_trans(nr_items, true).await?;
            let r = async {
                let (freed, m) =
                    data::free_extents_from(&mut self.store, ino, first_gone, PURGE_CHUNK).await?;
                let cur = self.read_inode(ino).await?;
                let mut b = self.batch();
                b.track(ino, cur);
                let i = b.inode_mut(ino);
                i.online_blocks
                    .set(i.online_blocks.get().saturating_sub(freed));
                self.apply(b).await?;
                Ok::<_, FsError>(m)
            }
            .await;
            self.store.release_trans();
            more = r?;
        }
        Ok(())
    }

    /// fallocate(2): mode 0 allocates (and extends the size),
    /// `FALLOC_FL_KEEP_SIZE` allocates only, `FALLOC_FL_PUNCH_HOLE |
    /// FALLOC_FL_KEEP_SIZE` frees. Other modes are EOPNOTSUPP.
    pub async fn fallocate(
        &mut self,
        creds: &Creds,
        ino: u64,
        mode: u32,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let punch = match mode {
            0 | FALLOC_FL_KEEP_SIZE => false,
            m if m == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE => true,
            FALLOC_FL_PUNCH_HOLE => return Err(FsError::Invalid),
            _ => return Err(FsError::NotSupported),
        };
        if len == 0 || offset > i64::MAX as u64 || len > i64::MAX as u64 {
            return Err(FsError::Invalid);
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(FsError::FileTooBig)?;
        let stored = self.read_inode(ino).await?;
        Self::regular(ino, &stored)?;
        let nr_items = INODE_ITEMS + 3 * PURGE_CHUNK;
        self.store.hold_trans(nr_items, punch).await?;
        let r = async {
            let now = self.now();
            let mut b = self.batch();
            b.track(ino, stored);
            if punch {
                let freed = data::punch_hole(&mut self.store, ino, offset, len).await?;
                let i = b.inode_mut(ino);
                i.online_blocks
                    .set(i.online_blocks.get().saturating_sub(freed));
                i.data_version.set(i.data_version.get() + 1);
                i.mtime = now;
                b.data_changed(ino);
            } else {
                let got = data::fallocate(&mut self.store, ino, offset, len).await?;
                let i = b.inode_mut(ino);
                i.online_blocks.set(i.online_blocks.get() + got);
                if mode & FALLOC_FL_KEEP_SIZE == 0 && end > i.size.get() {
                    i.size.set(end);
                    i.mtime = now;
                    i.data_version.set(i.data_version.get() + 1);
                    b.data_changed(ino);
                }
            }
            let i = b.inode_mut(ino);
            i.ctime = now;
            i.mode.set(perm::mode_after_write(creds, i));
            self.apply(b).await
        }
        .await;
        self.store.release_trans();
        r
    }

    /// lseek(2) SEEK_DATA (`data = true`) or SEEK_HOLE from `offset`:
    /// the next offset in data or in a hole; ENXIO at or past the end.
    /// Preallocated (unwritten) blocks count as a hole, as on ext4.
    pub async fn seek_data(&mut self, ino: u64, offset: u64, want_data: bool) -> Result<u64> {
        let inode = self.read_inode(ino).await?;
        let size = inode.size.get();
        if offset >= size {
            return Err(FsError::NoSuchAddress);
        }
        let mut at = offset / BS;
        loop {
            if at * BS >= size {
                return if want_data {
                    Err(FsError::NoSuchAddress)
                } else {
                    Ok(size)
                };
            }
            let here = offset.max(at * BS);
            match data::extent_from(&mut self.store, ino, at).await? {
                None if want_data => return Err(FsError::NoSuchAddress),
                None => return Ok(here),
                Some(e) if e.iblock > at => {
                    // `at` is in a hole that ends where `e` begins.
                    if !want_data {
                        return Ok(here);
                    }
                    at = e.iblock;
                }
                Some(e) => {
                    let is_data = e.flags & DATA_EXTENT_UNWRITTEN == 0;
                    if is_data == want_data {
                        return Ok(here);
                    }
                    at = e.end() + 1;
                }
            }
        }
    }
}
