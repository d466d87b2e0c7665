//! File data: a file's blocks mapped to the data device by extent items
//! (fs zone, the inode's number, type DATA_EXTENT; key second = the last
//! logical block, third = the length; value = first device block + flags).
//!
//! - Writing into a hole allocates device extents (as long as the server
//!   grants, so sequential writes stay contiguous) and records them; an
//!   extent that continues the one before it on the device is merged into
//!   it, so a file written in order is one extent.
//! - Written blocks are overwritten in place. Partial blocks are read,
//!   modified and written; new blocks are zero-filled around the data.
//! - Holes and unwritten (preallocated) extents read as zeros; offline
//!   extents (released to an archive) are an error until staged.
//! - Truncate and punch free the device blocks; the allocator reuses them
//!   only after the transaction commits (`Volume::free_data`), and the
//!   volume flushes the data device before every commit so that committed
//!   extents never point at data that isn't durable.
//!
//! Offsets are bytes; blocks are 4 KiB; sizes are the caller's (the inode's).
//!
//! The layer works on any [`ItemStore`] (the item layer below it) and
//! reaches the data device's blocks through [`ItemStore::data_io`]. It
//! names nothing of `fs`, which calls it: [`DataError`] wraps the store's
//! [`ItemError`] and `fs` converts it.

mod falloc;
mod prealloc;

pub use falloc::{fallocate, punch_hole, zero_range};
pub use prealloc::{streaming_len, Prealloc};

use crate::btree::Item;
use crate::data_io::DataIo;
pub use crate::format::alloc::FileExtent;
use crate::format::alloc::{
    data_extent_key, DataExtentVal, Extent, DATA_EXTENT_OFFLINE, DATA_EXTENT_UNWRITTEN,
};
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};
use crate::format::key::{item_type, zone};
use crate::format::Key;
use crate::item::{ItemError, ItemStore};

const BS: u64 = BLOCK_SM_SIZE as u64;
/// Most blocks one step of a write allocates or writes (bounds the buffer).
const STEP_BLOCKS: u64 = 8192;
/// The largest file size: offsets are signed 64-bit in POSIX (loff_t), so
/// a file ends at most at 2^63 - 1 bytes, as Linux's MAX_LFS_FILESIZE.
pub const MAX_FILE_BYTES: u64 = i64::MAX as u64;
/// The last logical block a file may have.
pub const MAX_IBLOCK: u64 = MAX_FILE_BYTES >> BLOCK_SM_SHIFT;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    Store(#[from] ItemError),
    #[error("data device: {0}")]
    Dev(#[from] crate::dev::DevError),
    #[error("inode {ino} block {iblock} is offline (released to the archive)")]
    Offline { ino: u64, iblock: u64 },
    #[error("inode {ino}: corrupt data extent item {key}: {why}")]
    Corrupt { ino: u64, key: Key, why: String },
    #[error("offset {0} is past the largest file offset")]
    TooBig(u64),
    /// File data blocks the operation needs that aren't in memory (the
    /// data cache holds the list): it changed nothing, and runs again once
    /// they are read. Only the engine's request task sees it.
    #[error("file data blocks are not cached")]
    NeedData,
    /// The operation, which has changed nothing, writes file data while
    /// the dirty buffer is full: it waits for write-back and runs again.
    #[error("waiting for file data write-back")]
    WaitWriteBack,
}

impl DataError {
    pub fn errno(&self) -> i32 {
        match self {
            DataError::Store(e) => e.errno(),
            DataError::Dev(e) => e.errno(),
            DataError::Offline { .. } => libc::ENODATA,
            DataError::Corrupt { .. } => libc::EIO,
            DataError::TooBig(_) => libc::EFBIG,
            DataError::NeedData | DataError::WaitWriteBack => libc::EIO,
        }
    }
}

/// The extent a DATA_EXTENT item of `ino` describes.
pub fn decode(ino: u64, it: &Item) -> Result<FileExtent, DataError> {
    FileExtent::from_item(&it.key, &it.val).map_err(|why| DataError::Corrupt {
        ino,
        key: it.key,
        why: why.to_string(),
    })
}

async fn put<S: ItemStore>(vol: &mut S, ino: u64, e: &FileExtent) -> Result<(), DataError> {
    let v = DataExtentVal {
        blkno: e.blkno.into(),
        flags: e.flags,
        _pad: [0; 7],
    };
    vol.upsert(
        data_extent_key(ino, e.iblock, e.len),
        bytemuck::bytes_of(&v),
    )
    .await?;
    Ok(())
}

async fn del<S: ItemStore>(vol: &mut S, ino: u64, e: &FileExtent) -> Result<(), DataError> {
    vol.delete(&data_extent_key(ino, e.iblock, e.len)).await?;
    Ok(())
}

/// The key range of `ino`'s extents that end at or after `iblock`.
fn extent_keys(ino: u64, iblock: u64) -> (Key, Key) {
    (
        Key::new(zone::FS, ino, item_type::DATA_EXTENT, iblock, 0, 0),
        Key::new(
            zone::FS,
            ino,
            item_type::DATA_EXTENT,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        ),
    )
}

/// The first extent of `ino` that ends at or after `iblock`.
pub async fn extent_from<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    iblock: u64,
) -> Result<Option<FileExtent>, DataError> {
    let (first, last) = extent_keys(ino, iblock);
    match vol.next(&first, &last).await? {
        Some(it) => Ok(Some(decode(ino, &it)?)),
        None => Ok(None),
    }
}

/// Every extent of `ino` overlapping blocks `[first, last]`.
pub async fn extents<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    first: u64,
    last: u64,
) -> Result<Vec<FileExtent>, DataError> {
    let mut out = Vec::new();
    let mut at = first;
    while let Some(e) = extent_from(vol, ino, at).await? {
        if e.iblock > last {
            break;
        }
        out.push(e);
        match e.end().checked_add(1) {
            Some(n) if n <= last => at = n,
            _ => break,
        }
    }
    Ok(out)
}

/// Replace `old` by the parts of it outside `[first, last]` (the part
/// inside is returned, clipped). Does not free anything.
async fn cut<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    old: &FileExtent,
    first: u64,
    last: u64,
) -> Result<FileExtent, DataError> {
    let s = first.max(old.iblock);
    let e = last.min(old.end());
    del(vol, ino, old).await?;
    if old.iblock < s {
        put(
            vol,
            ino,
            &FileExtent {
                len: s - old.iblock,
                ..*old
            },
        )
        .await?;
    }
    if e < old.end() {
        let skip = e + 1 - old.iblock;
        let keep = FileExtent {
            iblock: e + 1,
            len: old.end() - e,
            blkno: old.blkno + skip,
            flags: old.flags,
        };
        put(vol, ino, &keep).await?;
    }
    Ok(FileExtent {
        iblock: s,
        len: e - s + 1,
        blkno: old.blkno + (s - old.iblock),
        flags: old.flags,
    })
}

fn block_range(offset: u64, len: u64) -> Result<(u64, u64), DataError> {
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= MAX_FILE_BYTES)
        .ok_or(DataError::TooBig(offset))?;
    Ok((offset >> BLOCK_SM_SHIFT, (end - 1) >> BLOCK_SM_SHIFT))
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes written from the start of the data (all of it, or less when
    /// the device filled up or failed part-way).
    pub bytes: u64,
    /// Device blocks newly allocated to the file (written or unwritten).
    pub allocated: u64,
    /// The write stopped short because the data device is full.
    pub full: bool,
}

/// Before a write of `len` bytes at `offset` changes anything: while the
/// operation may still run again, wait for write-back if the dirty buffer
/// is full ([`DataError::WaitWriteBack`]), and make sure the partial first
/// and last blocks it will modify are in memory ([`prepare_edges`]).
pub async fn prepare_write<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: u64,
) -> Result<(), DataError> {
    if len == 0 || vol.read_only() || !vol.data_io()?.deferring() {
        return Ok(());
    }
    if vol.data_io()?.over_limit() {
        return Err(DataError::WaitWriteBack);
    }
    prepare_edges(vol, ino, offset, len).await
}

/// Before an operation that modifies bytes `[offset, offset + len)` in
/// place (a write, a truncate to `offset` with `len` 0, a zeroed or
/// punched range) changes anything: while it may still run again, make
/// sure the written blocks it will read to modify (the partial first and
/// last) are in memory, ending it with [`DataError::NeedData`] if not, so
/// that past its first change it reads nothing from the device.
pub async fn prepare_edges<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: u64,
) -> Result<(), DataError> {
    if vol.read_only() || !vol.data_io()?.deferring() {
        return Ok(());
    }
    let Some(end) = offset.checked_add(len).filter(|&e| e <= MAX_FILE_BYTES) else {
        return Ok(());
    };
    let mut edges = Vec::with_capacity(2);
    if !offset.is_multiple_of(BS) {
        edges.push(offset / BS);
    }
    if !end.is_multiple_of(BS) && edges.last() != Some(&(end / BS)) {
        edges.push(end / BS);
    }
    for k in edges {
        let Some(e) = extent_from(vol, ino, k).await?.filter(|e| e.iblock <= k) else {
            continue;
        };
        if e.flags & (DATA_EXTENT_UNWRITTEN | DATA_EXTENT_OFFLINE) == 0 {
            vol.data_io()?.want(e.blkno + (k - e.iblock));
        }
    }
    if vol.data_io()?.missed() {
        return Err(DataError::NeedData);
    }
    Ok(())
}

/// Write `data` at `offset` into file `ino`. The caller updates the size.
/// An error after some of the data is written returns the short count
/// (what write(2) does when the device fills mid-write); an error before
/// any is written is returned.
pub async fn write<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    data: &[u8],
) -> Result<Written, DataError> {
    write_with(vol, ino, offset, data, Prealloc::NONE, 0).await
}

/// [`write()`] with preallocation into a file with `online` online blocks
/// (the inode's count before the write).
pub async fn write_with<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    data: &[u8],
    prealloc: Prealloc,
    online: u64,
) -> Result<Written, DataError> {
    let mut done = Written::default();
    if data.is_empty() {
        return Ok(done);
    }
    let (b0, b1) = block_range(offset, data.len() as u64)?;
    let mut b = b0;
    while b <= b1 {
        let at = Step {
            b,
            b1,
            online: online + done.allocated,
        };
        match write_step(vol, ino, at, offset, data, prealloc).await {
            Ok((end, allocated)) => {
                done.allocated += allocated;
                b = end + 1;
                done.bytes = ((b << BLOCK_SM_SHIFT) - offset).min(data.len() as u64);
            }
            Err(e) if done.bytes > 0 => {
                tracing::debug!("inode {ino}: short write at block {b}: {e}");
                done.full = e.errno() == libc::ENOSPC;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Where a write step starts: block `b`, the write's last block `b1`, and
/// the file's online blocks so far.
#[derive(Clone, Copy, Debug)]
struct Step {
    b: u64,
    b1: u64,
    online: u64,
}

/// One run of a write starting at block `at.b`: the last block written
/// and the blocks allocated.
async fn write_step<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    at: Step,
    offset: u64,
    data: &[u8],
    prealloc: Prealloc,
) -> Result<(u64, u64), DataError> {
    let Step { b, b1, online } = at;
    let next = extent_from(vol, ino, b).await?;
    if let Some(e) = next.filter(|e| e.iblock <= b) {
        if e.flags & DATA_EXTENT_OFFLINE != 0 {
            return Err(DataError::Offline { ino, iblock: b });
        }
        let last = b1.min(b + STEP_BLOCKS - 1).min(e.end());
        let run = FileExtent {
            iblock: b,
            len: last - b + 1,
            blkno: e.blkno + (b - e.iblock),
            flags: e.flags & !DATA_EXTENT_UNWRITTEN,
        };
        let unwritten = e.flags & DATA_EXTENT_UNWRITTEN != 0;
        write_run(vol.data_io()?, &run, unwritten, offset, data)?;
        if unwritten {
            // Written now: only then does the run stop reading as zeros.
            // Merged with the written extent before it (a preallocated
            // file filling up stays one extent).
            cut(vol, ino, &e, run.iblock, run.end()).await?;
            insert_merging(vol, ino, run).await?;
        }
        return Ok((run.end(), 0));
    }
    // A hole up to the next extent (or to the end of files).
    let hole_end = next.map_or(MAX_IBLOCK + 1, |e| e.iblock);
    let need = (hole_end.min(b1 + 1) - b).min(STEP_BLOCKS);
    let (start, want) = if prealloc.blocks > 0 && !prealloc.contig_only {
        let (start, len) = prealloc::region(vol, ino, b, next, prealloc).await?;
        // A region that isn't a power of two may pass the last block.
        (start, len.min(hole_end - start))
    } else {
        (
            b,
            prealloc::streaming_len(prealloc, b, need, hole_end, online),
        )
    };
    let got = vol.alloc_data(want).await?;
    // A short grant serves the write first.
    let start = if got.len < want { b } else { start };
    let before = b - start;
    let ext = FileExtent {
        iblock: b,
        len: (got.len - before).min(need),
        blkno: got.start + before,
        flags: 0,
    };
    // Write before recording: an extent item never points at blocks
    // this write failed to fill.
    if let Err(e) = write_run(vol.data_io()?, &ext, true, offset, data) {
        vol.free_data(got);
        return Err(e);
    }
    if before > 0 {
        let pre = FileExtent {
            iblock: start,
            len: before,
            blkno: got.start,
            flags: DATA_EXTENT_UNWRITTEN,
        };
        insert_merging(vol, ino, pre).await?;
    }
    insert_merging(vol, ino, ext).await?;
    let after = got.len - before - ext.len;
    if after > 0 {
        let pre = FileExtent {
            iblock: ext.end() + 1,
            len: after,
            blkno: ext.blkno + ext.len,
            flags: DATA_EXTENT_UNWRITTEN,
        };
        insert_merging(vol, ino, pre).await?;
    }
    Ok((ext.end(), got.len))
}

/// Insert an extent, merged with the extents just before and after it
/// when they are contiguous on the device with the same flags (a file
/// filled in either direction stays one extent). The range must be free.
async fn insert_merging<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    mut ext: FileExtent,
) -> Result<(), DataError> {
    if ext.iblock > 0 {
        if let Some(prev) = extent_from(vol, ino, ext.iblock - 1).await? {
            if prev.end() + 1 == ext.iblock
                && prev.blkno + prev.len == ext.blkno
                && prev.flags == ext.flags
            {
                del(vol, ino, &prev).await?;
                ext = FileExtent {
                    len: prev.len + ext.len,
                    ..prev
                };
            }
        }
    }
    let after = ext.end() + 1;
    if after <= MAX_IBLOCK {
        if let Some(next) = extent_from(vol, ino, after).await? {
            debug_assert!(next.iblock >= after, "inserting over {next:?}");
            if next.iblock == after && ext.blkno + ext.len == next.blkno && next.flags == ext.flags
            {
                del(vol, ino, &next).await?;
                ext.len += next.len;
            }
        }
    }
    put(vol, ino, &ext).await
}

/// Write the part of `data` (at file `offset`) that falls in `ext`'s blocks.
/// `fresh` blocks have no old contents: partial ones are zero-filled.
fn write_run(
    io: &mut DataIo,
    ext: &FileExtent,
    fresh: bool,
    offset: u64,
    data: &[u8],
) -> Result<(), DataError> {
    let run_start = ext.iblock * BS;
    let data_end = offset + data.len() as u64;
    let head_partial = offset > run_start;
    let tail_partial = data_end < run_start + ext.len * BS;
    if !head_partial && !tail_partial {
        // Whole blocks: straight from the caller's buffer.
        let at = (run_start - offset) as usize;
        io.write(ext.blkno, &data[at..at + (ext.len * BS) as usize])?;
        return Ok(());
    }
    let mut buf = vec![0u8; (ext.len * BS) as usize];
    if !fresh {
        if head_partial {
            io.read(ext.blkno, &mut buf[..BLOCK_SM_SIZE])?;
        }
        if tail_partial && (ext.len > 1 || !head_partial) {
            let at = ((ext.len - 1) * BS) as usize;
            io.read(ext.blkno + ext.len - 1, &mut buf[at..at + BLOCK_SM_SIZE])?;
        }
    }
    if io.missed() {
        // The attempt changed nothing yet: it runs again once these are read.
        return Err(DataError::NeedData);
    }
    let from = offset.max(run_start);
    let to = data_end.min(run_start + ext.len * BS);
    buf[(from - run_start) as usize..(to - run_start) as usize]
        .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
    io.write(ext.blkno, &buf)?;
    Ok(())
}

/// Read `len` bytes at `offset` of file `ino`; the caller clamps to the size.
pub async fn read<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, DataError> {
    let mut out = vec![0u8; len];
    if len == 0 {
        return Ok(out);
    }
    let (b0, b1) = block_range(offset, len as u64)?;
    for e in extents(vol, ino, b0, b1).await? {
        if e.flags & DATA_EXTENT_OFFLINE != 0 {
            return Err(DataError::Offline {
                ino,
                iblock: e.iblock.max(b0),
            });
        }
        if e.flags & DATA_EXTENT_UNWRITTEN != 0 {
            continue;
        }
        let s = e.iblock.max(b0);
        let t = e.end().min(b1);
        let dev = |k: u64| e.blkno + (k - e.iblock);
        let end = offset + len as u64;
        // Blocks wholly inside the read go straight into `out`; a block
        // the read starts or ends inside goes through a block buffer.
        let first_full = if s * BS < offset { s + 1 } else { s };
        let last_full = if (t + 1) * BS > end {
            t.checked_sub(1)
        } else {
            Some(t)
        };
        let io = vol.data_io()?;
        let full = last_full.filter(|&lf| lf >= first_full);
        if let Some(lf) = full {
            let at = (first_full * BS - offset) as usize;
            let n = ((lf - first_full + 1) * BS) as usize;
            io.read(dev(first_full), &mut out[at..at + n])?;
        }
        let partial: &[u64] = if s == t { &[s] } else { &[s, t] };
        for &k in partial {
            if full.is_some_and(|lf| (first_full..=lf).contains(&k)) {
                continue;
            }
            let mut blk = [0u8; BLOCK_SM_SIZE];
            io.read(dev(k), &mut blk)?;
            let from = (k * BS).max(offset);
            let to = ((k + 1) * BS).min(end);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&blk[(from - k * BS) as usize..(to - k * BS) as usize]);
        }
    }
    if vol.data_io()?.missed() {
        return Err(DataError::NeedData);
    }
    read_ahead(vol, ino, b0, b1).await?;
    Ok(out)
}

/// Logical blocks a sequential reader is read ahead of.
const READ_AHEAD_BLOCKS: u64 = 2048;

/// After a read of blocks `[b0, b1]`: if `ino` is being read in order,
/// keep the device reading up to [`READ_AHEAD_BLOCKS`] past it (topped up
/// when half is used), so the next reads find their blocks in memory.
async fn read_ahead<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    b0: u64,
    b1: u64,
) -> Result<(), DataError> {
    let Some(stream) = vol.data_io()?.note_read(ino, b0, b1) else {
        return Ok(());
    };
    if stream.ahead_until > b1 + 1 + READ_AHEAD_BLOCKS / 2 {
        return Ok(());
    }
    let from = stream.ahead_until.max(b1 + 1);
    let to = (b1 + READ_AHEAD_BLOCKS).min(MAX_IBLOCK);
    if from > to {
        return Ok(());
    }
    let exts = extents(vol, ino, from, to).await?;
    let io = vol.data_io()?;
    for e in exts {
        if e.flags & (DATA_EXTENT_OFFLINE | DATA_EXTENT_UNWRITTEN) != 0 {
            continue;
        }
        let s = e.iblock.max(from);
        let t = e.end().min(to);
        let asked = io.prefetch(e.blkno + (s - e.iblock), t - s + 1);
        if asked < t - s + 1 {
            // The queue or cache is full: ask for the rest next time.
            io.note_ahead(ino, s + asked);
            return Ok(());
        }
    }
    io.note_ahead(ino, to + 1);
    Ok(())
}

/// Free the blocks of `[first, last]` (logical) and zero nothing; the
/// number of online blocks freed.
async fn free_blocks<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    first: u64,
    last: u64,
) -> Result<u64, DataError> {
    let mut freed = 0;
    for e in extents(vol, ino, first, last).await? {
        let gone = cut(vol, ino, &e, first, last).await?;
        if gone.flags & DATA_EXTENT_OFFLINE == 0 {
            vol.free_data(Extent {
                start: gone.blkno,
                len: gone.len,
            });
            freed += gone.len;
        }
    }
    Ok(freed)
}

/// Zero bytes `[from, to)` inside one block `iblock` if it is written.
async fn zero_in_block<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    iblock: u64,
    from: usize,
    to: usize,
) -> Result<(), DataError> {
    let Some(e) = extent_from(vol, ino, iblock).await? else {
        return Ok(());
    };
    if e.iblock > iblock || e.flags & (DATA_EXTENT_UNWRITTEN | DATA_EXTENT_OFFLINE) != 0 {
        return Ok(());
    }
    let blk = e.blkno + (iblock - e.iblock);
    let mut buf = vec![0u8; BLOCK_SM_SIZE];
    let io = vol.data_io()?;
    io.read(blk, &mut buf)?;
    if io.missed() {
        return Err(DataError::NeedData);
    }
    buf[from..to].fill(0);
    io.write(blk, &buf)?;
    Ok(())
}

/// Cut the file's data to `size` bytes: blocks past it are freed and the
/// rest of the last partial block is zeroed (so a later extension reads
/// zeros there). Returns the online blocks freed.
pub async fn truncate<S: ItemStore>(vol: &mut S, ino: u64, size: u64) -> Result<u64, DataError> {
    let first_gone = size.div_ceil(BS);
    let mut freed = 0;
    if first_gone <= MAX_IBLOCK {
        freed = free_blocks(vol, ino, first_gone, MAX_IBLOCK).await?;
    }
    zero_after(vol, ino, size).await?;
    Ok(freed)
}

/// Zero the rest of the block `size` ends inside (if it is written).
async fn zero_after<S: ItemStore>(vol: &mut S, ino: u64, size: u64) -> Result<(), DataError> {
    let within = (size % BS) as usize;
    if within != 0 {
        zero_in_block(vol, ino, size / BS, within, BLOCK_SM_SIZE).await?;
    }
    Ok(())
}

/// The part of a truncate to `size` that one transaction always carries:
/// the extent straddling the new end is cut and the rest of the last
/// partial block zeroed. Whole extents past the end are left for
/// [`free_extents_from`]. Returns the online blocks freed.
pub async fn truncate_edge<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    size: u64,
) -> Result<u64, DataError> {
    let first_gone = size.div_ceil(BS);
    let mut freed = 0;
    if first_gone <= MAX_IBLOCK {
        if let Some(e) = extent_from(vol, ino, first_gone).await? {
            if e.iblock < first_gone {
                freed = free_blocks(vol, ino, first_gone, e.end()).await?;
            }
        }
    }
    zero_after(vol, ino, size).await?;
    Ok(freed)
}

/// The number of extents of `ino` at or after block `first`, counting up
/// to `max` (callers size their transactions with it).
pub async fn count_extents_from<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    first: u64,
    max: usize,
) -> Result<usize, DataError> {
    let (from, last) = extent_keys(ino, first);
    Ok(vol.range(&from, &last, max).await?.len())
}

/// Free up to `max` whole extents of `ino` that lie entirely at or after
/// block `first` (a truncate or delete done over several transactions).
/// Returns the online blocks freed and whether more remain.
pub async fn free_extents_from<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    first: u64,
    max: usize,
) -> Result<(u64, bool), DataError> {
    let (from, last) = extent_keys(ino, first);
    let items = vol.range(&from, &last, max + 1).await?;
    let more = items.len() > max;
    let mut freed = 0;
    for it in items.iter().take(max) {
        let e = decode(ino, it)?;
        if e.iblock < first {
            // Straddles `first`: the caller's truncate cuts it.
            continue;
        }
        del(vol, ino, &e).await?;
        if e.flags & DATA_EXTENT_OFFLINE == 0 {
            vol.free_data(Extent {
                start: e.blkno,
                len: e.len,
            });
            freed += e.len;
        }
    }
    Ok((freed, more))
}

/// Blocks of file data online (written or unwritten) in `ino`.
pub async fn online_blocks<S: ItemStore>(vol: &mut S, ino: u64) -> Result<u64, DataError> {
    Ok(extents(vol, ino, 0, MAX_IBLOCK)
        .await?
        .iter()
        .filter(|e| e.flags & DATA_EXTENT_OFFLINE == 0)
        .map(|e| e.len)
        .sum())
}
