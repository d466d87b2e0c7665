//! fallocate(2)'s data changes: allocating unwritten extents, punching
//! holes, zeroing ranges. The fs layer checks the mode and the range and
//! keeps the inode in step; these only change extents and blocks.
//!
//! The allocating ones add what they allocated to the caller's counter as
//! they go, so that an operation stopped part way (a full device) still
//! accounts for the blocks it left allocated, as ext4 leaves them.

use super::{
    block_range, cut, extent_from, extents, free_blocks, insert_merging, zero_in_block, DataError,
    FileExtent, BS, MAX_FILE_BYTES,
};
use crate::format::alloc::{DATA_EXTENT_OFFLINE, DATA_EXTENT_UNWRITTEN};
use crate::format::block::BLOCK_SM_SIZE;
use crate::item::ItemStore;

/// The end of `[offset, offset + len)`, or EFBIG past the largest file.
fn range_end(offset: u64, len: u64) -> Result<u64, DataError> {
    offset
        .checked_add(len)
        .filter(|&e| e <= MAX_FILE_BYTES)
        .ok_or(DataError::TooBig(offset))
}

/// Zero the bytes of `[offset, end)` that lie in partial blocks at its
/// edges (or in the one block holding all of it), where those blocks
/// hold data.
async fn zero_edges<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    end: u64,
) -> Result<(), DataError> {
    let (b0, b1) = (offset / BS, (end - 1) / BS);
    let head = (offset % BS) as usize;
    let tail = (end % BS) as usize;
    if b0 == b1 {
        if head != 0 || tail != 0 {
            let to = if tail == 0 { BLOCK_SM_SIZE } else { tail };
            zero_in_block(vol, ino, b0, head, to).await?;
        }
        return Ok(());
    }
    if head != 0 {
        zero_in_block(vol, ino, b0, head, BLOCK_SM_SIZE).await?;
    }
    if tail != 0 {
        zero_in_block(vol, ino, b1, 0, tail).await?;
    }
    Ok(())
}

/// The whole blocks inside `[offset, end)`, if any: `(first, last)`.
fn whole_blocks(offset: u64, end: u64) -> Option<(u64, u64)> {
    let first = offset.div_ceil(BS);
    let after = end / BS;
    (first < after).then(|| (first, after - 1))
}

/// Punch a hole: `[offset, offset + len)` reads as zeros afterwards; whole
/// blocks inside it are freed. Returns the online blocks freed.
pub async fn punch_hole<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: u64,
) -> Result<u64, DataError> {
    if len == 0 {
        return Ok(0);
    }
    let end = range_end(offset, len)?;
    let mut freed = 0;
    if let Some((first, last)) = whole_blocks(offset, end) {
        freed = free_blocks(vol, ino, first, last).await?;
    }
    zero_edges(vol, ino, offset, end).await?;
    Ok(freed)
}

/// Allocate unwritten extents for the holes among the blocks that
/// `[offset, offset + len)` touches, adding each to `allocated` as it is
/// recorded.
pub async fn fallocate<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: u64,
    allocated: &mut u64,
) -> Result<(), DataError> {
    if len == 0 {
        return Ok(());
    }
    let (b0, b1) = block_range(offset, len)?;
    let mut b = b0;
    while b <= b1 {
        match extent_from(vol, ino, b).await? {
            Some(e) if e.iblock <= b => b = e.end() + 1,
            other => {
                let hole_last = other.map_or(b1, |e| b1.min(e.iblock - 1));
                let got = vol.alloc_data(hole_last - b + 1).await?;
                let ext = FileExtent {
                    iblock: b,
                    len: got.len,
                    blkno: got.start,
                    flags: DATA_EXTENT_UNWRITTEN,
                };
                if let Err(e) = insert_merging(vol, ino, ext).await {
                    vol.free_data(got);
                    return Err(e);
                }
                b += got.len;
                *allocated += got.len;
            }
        }
    }
    Ok(())
}

/// FALLOC_FL_ZERO_RANGE: `[offset, offset + len)` reads as zeros and every
/// block it touches is allocated, as ext4 does it: holes become unwritten
/// extents, whole blocks holding data become unwritten (no I/O), and the
/// partial blocks at the edges are zeroed in place. Offline blocks in the
/// range refuse it (ENODATA) before anything changes, as a write's would.
pub async fn zero_range<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    offset: u64,
    len: u64,
    allocated: &mut u64,
) -> Result<(), DataError> {
    if len == 0 {
        return Ok(());
    }
    let end = range_end(offset, len)?;
    let (b0, b1) = block_range(offset, len)?;
    if let Some(e) = extents(vol, ino, b0, b1)
        .await?
        .into_iter()
        .find(|e| e.flags & DATA_EXTENT_OFFLINE != 0)
    {
        return Err(DataError::Offline {
            ino,
            iblock: e.iblock.max(b0),
        });
    }
    // Allocation first: a full device stops it before any data changed.
    fallocate(vol, ino, offset, len, allocated).await?;
    zero_edges(vol, ino, offset, end).await?;
    if let Some((first, last)) = whole_blocks(offset, end) {
        mark_unwritten(vol, ino, first, last).await?;
    }
    Ok(())
}

/// Turn the written blocks among `[first, last]` into unwritten ones: they
/// stay allocated to the file and read as zeros.
async fn mark_unwritten<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    first: u64,
    last: u64,
) -> Result<(), DataError> {
    for e in extents(vol, ino, first, last).await? {
        if e.flags & (DATA_EXTENT_UNWRITTEN | DATA_EXTENT_OFFLINE) != 0 {
            continue;
        }
        let mut inside = cut(vol, ino, &e, first, last).await?;
        inside.flags |= DATA_EXTENT_UNWRITTEN;
        insert_merging(vol, ino, inside).await?;
    }
    Ok(())
}
