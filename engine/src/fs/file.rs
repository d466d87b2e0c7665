//! File contents: read, write, truncate, fallocate, fsync and
//! SEEK_DATA/SEEK_HOLE, on top of engine::data (extent items on the data
//! device) with the inode kept in step: size, mtime/ctime, data_version
//! (+1 on every content change), online_blocks, data_seq, and the
//! privileges a change drops (setuid, setgid and security.capability, as
//! Linux's file_remove_privs: on write, truncate and fallocate, not on
//! stores through a mapping).
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
use crate::format::inode::Inode;

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

/// fallocate(2) mode bits (linux/falloc.h).
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
pub const FALLOC_FL_NO_HIDE_STALE: u32 = 0x04;
pub const FALLOC_FL_COLLAPSE_RANGE: u32 = 0x08;
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
pub const FALLOC_FL_INSERT_RANGE: u32 = 0x20;
pub const FALLOC_FL_UNSHARE_RANGE: u32 = 0x40;
pub const FALLOC_FL_WRITE_ZEROES: u32 = 0x80;
/// The bits that choose an operation (0 is allocate); at most one is set.
const FALLOC_FL_MODE_MASK: u32 = FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE
    | FALLOC_FL_WRITE_ZEROES;

/// What a fallocate(2) call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FallocOp {
    Allocate { keep_size: bool },
    Punch,
    Zero { keep_size: bool },
}

/// vfs_fallocate's checks of the mode and range, in Linux's order: EINVAL
/// for a negative offset or a length that isn't positive, EOPNOTSUPP for
/// unknown bits or a combination no filesystem takes (two operations,
/// PUNCH_HOLE without KEEP_SIZE, KEEP_SIZE with COLLAPSE, INSERT or
/// WRITE_ZEROES). `Ok(None)`: a mode Linux passes on that we don't
/// implement (EOPNOTSUPP once the file type and size checks pass, as
/// ext4's own refusal comes after them).
fn falloc_op(mode: u32, offset: u64, len: u64) -> Result<Option<FallocOp>> {
    if offset > i64::MAX as u64 || len == 0 || len > i64::MAX as u64 {
        return Err(FsError::Invalid);
    }
    if mode & !(FALLOC_FL_MODE_MASK | FALLOC_FL_KEEP_SIZE) != 0 {
        return Err(FsError::NotSupported);
    }
    let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
    match mode & FALLOC_FL_MODE_MASK {
        0 => Ok(Some(FallocOp::Allocate { keep_size })),
        FALLOC_FL_ZERO_RANGE => Ok(Some(FallocOp::Zero { keep_size })),
        FALLOC_FL_UNSHARE_RANGE => Ok(None),
        FALLOC_FL_PUNCH_HOLE if keep_size => Ok(Some(FallocOp::Punch)),
        FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_WRITE_ZEROES
            if !keep_size =>
        {
            Ok(None)
        }
        _ => Err(FsError::NotSupported),
    }
}

impl From<DataError> for FsError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Store(e) => e.into(),
            DataError::Dev(e) => FsError::Io(format!("data device: {e}")),
            DataError::Offline { .. } => FsError::NoData,
            DataError::Corrupt { .. } => FsError::corrupt(e),
            DataError::TooBig(_) => FsError::FileTooBig,
            DataError::NeedData => FsError::NeedData,
            DataError::WaitWriteBack => FsError::WaitWriteBack,
        }
    }
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
    /// Holes and preallocated blocks read as zeros. atime follows the
    /// mount's policy (atime.rs), at the end of the file too, as a
    /// kernel read(2) of at least one byte.
    pub async fn read(&mut self, ino: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let inode = self.read_inode(ino).await?;
        Self::regular(ino, &inode)?;
        let size = inode.size.get();
        if len == 0 {
            return Ok(Vec::new());
        }
        if offset >= size {
            self.accessed(ino, inode).await?;
            return Ok(Vec::new());
        }
        let n = (len as u64).min(size - offset) as usize;
        let out = if inode.online_blocks.get() == 0 && inode.offline_blocks.get() == 0 {
            // Entirely sparse: nothing to look up.
            vec![0u8; n]
        } else {
            data::read(&mut self.store, ino, offset, n).await?
        };
        self.accessed(ino, inode).await?;
        Ok(out)
    }

    /// Write `buf` at `offset`; the bytes written (short only when the
    /// device fills or fails part-way). The handle's write permission was
    /// checked when it was opened. A write(2): setuid/setgid go by
    /// [`perm::mode_after_write`] and security.capability goes.
    pub async fn write(&mut self, creds: &Creds, ino: u64, offset: u64, buf: &[u8]) -> Result<u64> {
        match self.write_kill(Some(creds), ino, offset, buf).await {
            (0, Some(e)) => Err(e),
            (done, _) => Ok(done),
        }
    }

    /// Write back bytes a frontend's page cache held: stores through a
    /// shared mapping, or a write-back cache's flush. Nothing privileged
    /// is dropped, as the kernel drops nothing for a store through a
    /// mapping (page_mkwrite only updates times; ext4 keeps setuid,
    /// setgid and capabilities), and a write(2) into the cache dropped
    /// them when it entered it. Unlike [`Fs::write`], a write that stops
    /// short is the error that stopped it (ENOSPC, EIO): the kernel's
    /// write-back takes a short count as success and would drop the rest
    /// of its pages silently; an error it records for the writer's fsync
    /// and close. What was written stays written.
    pub async fn write_back(&mut self, ino: u64, offset: u64, buf: &[u8]) -> Result<u64> {
        match self.write_kill(None, ino, offset, buf).await {
            (done, None) => Ok(done),
            (done, Some(e)) => {
                tracing::debug!(
                    "inode {ino}: write-back of {} bytes at {offset} stopped after {done}: {e}",
                    buf.len()
                );
                Err(e)
            }
        }
    }

    /// Free space on the data device, in bytes, as statfs counts it.
    pub async fn free_data_bytes(&mut self) -> Result<u64> {
        Ok(self.store.free_data_blocks().await?.saturating_mul(BS))
    }

    /// Remove security.capability because the file is being changed: the
    /// kernel's killpriv (`cap_inode_killpriv`, from `file_remove_privs`
    /// or a truncate), which needs no privilege of the writer. Only for a
    /// frontend whose kernel has already refused a caller's own removal
    /// of this name without CAP_SETFCAP (`cap_inode_removexattr`, before
    /// a FUSE or virtiofs server is asked): what reaches it is that
    /// kernel's killpriv, or a removal the kernel allowed. ENODATA when
    /// absent; sets ctime, as a removexattr does.
    pub async fn kill_capability(&mut self, ino: u64) -> Result<()> {
        let now = self.now();
        let stored = self.read_inode(ino).await?;
        let Some(found) = self.capability_to_kill(ino).await? else {
            return Err(FsError::NoData);
        };
        let mut b = self.batch();
        b.track(ino, stored);
        b.inode_mut(ino).ctime = now;
        delete_xattr(&mut b, ino, &found);
        self.apply(b).await
    }

    /// A write that drops privileges as `kill`'s writer's would, or none:
    /// the bytes written, and the error that stopped it short of `buf`'s
    /// end (`None` when all were written).
    async fn write_kill(
        &mut self,
        kill: Option<&Creds>,
        ino: u64,
        offset: u64,
        buf: &[u8],
    ) -> (u64, Option<FsError>) {
        let mut stored = match self.read_inode(ino).await {
            Ok(i) => i,
            Err(e) => return (0, Some(e)),
        };
        if let Err(e) = Self::regular(ino, &stored) {
            return (0, Some(e));
        }
        if buf.is_empty() {
            return (0, None);
        }
        let Some(end) = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MAX_FILE_BYTES)
        else {
            return (0, Some(FsError::FileTooBig));
        };
        if let Err(e) = data::prepare_write(&mut self.store, ino, offset, buf.len() as u64).await {
            return (0, Some(e.into()));
        }
        let mut done = 0u64;
        let mut committed = false;
        loop {
            let rest = &buf[done as usize..];
            let nr_items = INODE_ITEMS + WRITE_ITEMS_PER_MIB * (rest.len() >> 20).max(1);
            let r = match self.store.hold_trans(nr_items, false).await {
                Ok(()) => {
                    let r = self
                        .write_held(kill, ino, stored, offset + done, rest)
                        .await;
                    self.store.release_trans();
                    r
                }
                Err(e) => Err(e.into()),
            };
            let nospace = match r {
                Ok(w) => {
                    done += w.bytes;
                    if !w.full {
                        return (done, None);
                    }
                    FsError::NoSpace(format!("the data device filled after {done} bytes"))
                }
                Err(e) if done > 0 => {
                    tracing::debug!("inode {ino}: short write: {e}");
                    return (done, Some(e));
                }
                Err(e @ FsError::NoSpace(_)) => e,
                Err(e) => return (0, Some(e)),
            };
            debug_assert!(offset + done <= end);
            // The device is full. Blocks freed by the open transaction (a
            // file just deleted) are free once it commits, and statfs
            // counts them free: make that commit once and go on.
            if committed {
                return (done, Some(nospace));
            }
            match self.room_after_commit().await {
                Ok(true) => {}
                Ok(false) => return (done, Some(nospace)),
                Err(e) => return (done, Some(e)),
            }
            if let Err(e) = self.store.commit().await {
                return (done, Some(e.into()));
            }
            committed = true;
            stored = match self.read_inode(ino).await {
                Ok(i) => i,
                Err(e) => return (done, Some(e)),
            };
        }
    }

    async fn write_held(
        &mut self,
        kill: Option<&Creds>,
        ino: u64,
        stored: Inode,
        offset: u64,
        buf: &[u8],
    ) -> Result<data::Written> {
        let cap = match kill {
            Some(_) => self.capability_to_kill(ino).await?,
            None => None,
        };
        let online = stored.online_blocks.get();
        let prealloc = self.opts.data_prealloc;
        let done = data::write_with(&mut self.store, ino, offset, buf, prealloc, online).await?;
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
        if let Some(creds) = kill {
            i.mode.set(perm::mode_after_write(creds, i));
        }
        b.data_changed(ino);
        self.apply(b).await?;
        Ok(done)
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
        if has_data {
            // The partial last block is zeroed after the first change.
            data::prepare_edges(&mut self.store, ino, size, 0).await?;
        }
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
            if new.size != stored.size {
                // To the same size only blocks past the end go: the
                // contents didn't change.
                b.data_changed(ino);
            }
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

    /// fallocate(2), refused as Linux refuses it (vfs_fallocate's checks
    /// in its order, then ext4's): allocate (mode 0, or `KEEP_SIZE`),
    /// `PUNCH_HOLE | KEEP_SIZE`, `ZERO_RANGE` (with or without
    /// `KEEP_SIZE`). `COLLAPSE_RANGE`, `INSERT_RANGE`, `UNSHARE_RANGE` and
    /// `WRITE_ZEROES` are EOPNOTSUPP (the FUSE kernel refuses the first two
    /// itself; ext4 refuses the last two on devices without them).
    ///
    /// Effects, as ext4's on Linux 6.18: mtime and ctime change on every
    /// supported mode, even when nothing else does (ext4 calls
    /// file_modified first), setuid/setgid and security.capability go as
    /// on a write; data_version grows when the contents or the size could
    /// change (scoutfs: an allocation bumps it only when it extends the
    /// file). A punch stops at the block holding the end of the file and
    /// does nothing from the end on, as ext4's. A device that fills part
    /// way leaves what was allocated allocated (and accounted) and gives
    /// ENOSPC, after one commit if the open transaction freed blocks.
    pub async fn fallocate(
        &mut self,
        creds: &Creds,
        ino: u64,
        mode: u32,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let op = falloc_op(mode, offset, len)?;
        let stored = self.read_inode(ino).await?;
        match Attr::from_inode(ino, &stored)?.kind {
            FileType::Regular => {}
            FileType::Fifo => return Err(FsError::IllegalSeek),
            FileType::Directory => return Err(FsError::IsDir),
            _ => return Err(FsError::NoDevice),
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_BYTES)
            .ok_or(FsError::FileTooBig)?;
        let op = op.ok_or(FsError::NotSupported)?;
        let mut stored = stored;
        let mut committed = false;
        loop {
            let r = self
                .fallocate_once(creds, ino, stored, op, offset, end)
                .await;
            match r {
                Err(FsError::NoSpace(_))
                    if !committed && op != FallocOp::Punch && self.room_after_commit().await? =>
                {
                    self.store.commit().await?;
                    committed = true;
                    stored = self.read_inode(ino).await?;
                }
                r => return r,
            }
        }
    }

    async fn fallocate_once(
        &mut self,
        creds: &Creds,
        ino: u64,
        stored: Inode,
        op: FallocOp,
        offset: u64,
        end: u64,
    ) -> Result<()> {
        if !matches!(op, FallocOp::Allocate { .. }) {
            // Punching or zeroing modifies partial edge blocks in place.
            data::prepare_edges(&mut self.store, ino, offset, end - offset).await?;
        }
        let nr_items = INODE_ITEMS + 3 * PURGE_CHUNK;
        self.store
            .hold_trans(nr_items, op == FallocOp::Punch)
            .await?;
        let r = async {
            let cap = self.capability_to_kill(ino).await?;
            let size = stored.size.get();
            let len = end - offset;
            let mut allocated = 0;
            let mut freed = 0;
            let mut new_size = size;
            let mut content = false;
            let done = match op {
                FallocOp::Allocate { keep_size } => {
                    if !keep_size {
                        new_size = size.max(end);
                    }
                    data::fallocate(&mut self.store, ino, offset, len, &mut allocated).await
                }
                FallocOp::Zero { keep_size } => {
                    if !keep_size {
                        new_size = size.max(end);
                    }
                    content = offset < new_size;
                    data::zero_range(&mut self.store, ino, offset, len, &mut allocated).await
                }
                FallocOp::Punch if offset < size => {
                    // ext4 punches up to the end of the block holding the
                    // last byte and leaves blocks past it allocated.
                    let stop = end.min(size.next_multiple_of(BS));
                    content = true;
                    data::punch_hole(&mut self.store, ino, offset, stop - offset)
                        .await
                        .map(|n| freed = n)
                }
                FallocOp::Punch => Ok(()),
            };
            if done.is_err() {
                // Partial progress is kept (and accounted); the size stays.
                new_size = size;
            }
            let now = self.now();
            let mut b = self.batch();
            b.track(ino, stored);
            if let Some(found) = cap {
                delete_xattr(&mut b, ino, &found);
            }
            let i = b.inode_mut(ino);
            i.online_blocks
                .set((i.online_blocks.get() + allocated).saturating_sub(freed));
            let grew = new_size > size;
            if grew {
                i.size.set(new_size);
            }
            if grew || (content && done.is_ok()) {
                i.data_version.set(i.data_version.get() + 1);
                b.data_changed(ino);
            }
            let i = b.inode_mut(ino);
            i.mtime = now;
            i.ctime = now;
            i.mode.set(perm::mode_after_write(creds, i));
            self.apply(b).await?;
            Ok(done?)
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
