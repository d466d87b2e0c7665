//! Allocators: free metadata blocks and free data extents, kept as extent
//! items in an allocator btree (`AllocRoot`), each extent indexed twice: by
//! its end block (zone 36, to find and merge neighbours) and by the order of
//! its length (zone 40, largest first, to find a big extent fast).
//!
//! Everything here is a synchronous operation over [`BlockAccess`], with the
//! btree's miss-and-restart rule: an operation checks what it needs before
//! its first change, so a `Miss` can be resolved and the operation rerun.
//! The allocator's own btree blocks come from the transaction's metadata
//! allocator (the block cache's avail list), which the transaction layer
//! keeps above a reserve by calling [`refill_meta`] between operations.

use crate::block::{BlockAccess, BlockError};
use crate::btree::{self, BtreeError, Item};
use crate::format::alloc::{
    free_extent_blkno_key, free_extent_from_key, free_extent_order_key, Extent,
};
use crate::format::key::zone;
use crate::format::{AllocRoot, Key};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no free space left")]
    NoSpace,
    #[error("freeing [{start}, +{len}) which overlaps free extent [{free_start}, +{free_len})")]
    DoubleFree {
        start: u64,
        len: u64,
        free_start: u64,
        free_len: u64,
    },
    #[error("allocator btree: {0}")]
    Btree(#[from] BtreeError),
    #[error("corrupt allocator: {0}")]
    Corrupt(String),
}

impl From<BlockError> for AllocError {
    fn from(e: BlockError) -> Self {
        AllocError::Btree(BtreeError::from(e))
    }
}

impl AllocError {
    /// The block the caller must read before retrying, if that's all it is.
    pub fn miss(&self) -> Option<crate::format::BlockRef> {
        match self {
            AllocError::Btree(BtreeError::Block(BlockError::Miss(r))) => Some(*r),
            _ => None,
        }
    }
}

fn extent_item(key: Key, seq: u64) -> Item {
    Item {
        key,
        seq,
        flags: 0,
        val: Vec::new(),
    }
}

/// The free extent that ends at `end`, if any.
fn extent_ending_at(
    blocks: &mut dyn BlockAccess,
    root: &AllocRoot,
    end: u64,
) -> Result<Option<Extent>, AllocError> {
    let probe = Key::new(zone::FREE_EXTENT_BLKNO, end, 0, 0, 0, 0);
    match btree::next(blocks, &root.root, &probe)? {
        Some(it) if it.key.zone == zone::FREE_EXTENT_BLKNO && it.key.first == end => {
            Ok(free_extent_from_key(&it.key))
        }
        _ => Ok(None),
    }
}

/// The first free extent whose end is at or after `blkno`.
fn extent_ending_from(
    blocks: &mut dyn BlockAccess,
    root: &AllocRoot,
    blkno: u64,
) -> Result<Option<Extent>, AllocError> {
    let probe = Key::new(zone::FREE_EXTENT_BLKNO, blkno, 0, 0, 0, 0);
    match btree::next(blocks, &root.root, &probe)? {
        Some(it) if it.key.zone == zone::FREE_EXTENT_BLKNO => Ok(free_extent_from_key(&it.key)),
        _ => Ok(None),
    }
}

fn insert_extent(
    blocks: &mut dyn BlockAccess,
    root: &mut AllocRoot,
    ext: Extent,
) -> Result<(), AllocError> {
    let total = root.total_len.get().checked_add(ext.len).ok_or_else(|| {
        AllocError::Corrupt(format!(
            "free total {} overflows adding {}",
            root.total_len.get(),
            ext.len
        ))
    })?;
    let seq = blocks.txn_seq();
    btree::insert(
        blocks,
        &mut root.root,
        extent_item(free_extent_blkno_key(ext), seq),
    )?;
    btree::insert(
        blocks,
        &mut root.root,
        extent_item(free_extent_order_key(ext), seq),
    )?;
    root.total_len.set(total);
    Ok(())
}

fn remove_extent(
    blocks: &mut dyn BlockAccess,
    root: &mut AllocRoot,
    ext: Extent,
) -> Result<(), AllocError> {
    let total = root.total_len.get().checked_sub(ext.len).ok_or_else(|| {
        AllocError::Corrupt(format!(
            "free total {} is less than extent {}",
            root.total_len.get(),
            ext.len
        ))
    })?;
    btree::delete(blocks, &mut root.root, &free_extent_blkno_key(ext))?;
    btree::delete(blocks, &mut root.root, &free_extent_order_key(ext))?;
    root.total_len.set(total);
    Ok(())
}

/// Make sure every block the first changes of an operation touch is cached,
/// by looking up the keys it will change. A Miss surfaces here, before any
/// change.
fn prefetch(
    blocks: &mut dyn BlockAccess,
    root: &AllocRoot,
    keys: &[Key],
) -> Result<(), AllocError> {
    for k in keys {
        btree::lookup(blocks, &root.root, k)?;
    }
    Ok(())
}

/// Return `ext` to the allocator, merging it with free neighbours.
/// Overlapping an extent that is already free is refused (a double free
/// would hand the same block out twice).
pub fn free_extent(
    blocks: &mut dyn BlockAccess,
    root: &mut AllocRoot,
    ext: Extent,
) -> Result<(), AllocError> {
    if ext.len == 0 || ext.start.checked_add(ext.len).is_none() {
        return Err(AllocError::Corrupt(format!(
            "freeing a bad extent [{}, +{})",
            ext.start, ext.len
        )));
    }
    let left = if ext.start > 0 {
        extent_ending_at(blocks, root, ext.start - 1)?
    } else {
        None
    };
    let right = extent_ending_from(blocks, root, ext.start)?;
    if let Some(r) = right {
        if r.start <= ext.end() {
            return Err(AllocError::DoubleFree {
                start: ext.start,
                len: ext.len,
                free_start: r.start,
                free_len: r.len,
            });
        }
    }
    let right = right.filter(|r| Some(r.start) == ext.end().checked_add(1));
    let mut merged = ext;
    let mut keys = vec![free_extent_blkno_key(ext), free_extent_order_key(ext)];
    for n in [left, right].into_iter().flatten() {
        keys.push(free_extent_blkno_key(n));
        keys.push(free_extent_order_key(n));
    }
    prefetch(blocks, root, &keys)?;
    if let Some(l) = left {
        remove_extent(blocks, root, l)?;
        merged = Extent {
            start: l.start,
            len: l.len + merged.len,
        };
    }
    if let Some(r) = right {
        remove_extent(blocks, root, r)?;
        merged = Extent {
            start: merged.start,
            len: merged.len + r.len,
        };
    }
    insert_extent(blocks, root, merged)
}

/// Allocate up to `want` contiguous blocks from the largest free extent
/// (its start). Returns fewer when no extent is that long; `NoSpace` when
/// nothing is free.
pub fn alloc_extent(
    blocks: &mut dyn BlockAccess,
    root: &mut AllocRoot,
    want: u64,
) -> Result<Extent, AllocError> {
    assert!(want > 0);
    let first = Key::new(zone::FREE_EXTENT_ORDER, 0, 0, 0, 0, 0);
    let Some(it) = btree::next(blocks, &root.root, &first)? else {
        return Err(AllocError::NoSpace);
    };
    if it.key.zone != zone::FREE_EXTENT_ORDER {
        return Err(AllocError::NoSpace);
    }
    let Some(ext) = free_extent_from_key(&it.key) else {
        return Err(AllocError::Corrupt(format!(
            "bad free extent key {}",
            it.key
        )));
    };
    let got = Extent {
        start: ext.start,
        len: ext.len.min(want),
    };
    let mut keys = vec![free_extent_blkno_key(ext), free_extent_order_key(ext)];
    if got.len < ext.len {
        let rest = Extent {
            start: got.start + got.len,
            len: ext.len - got.len,
        };
        keys.push(free_extent_blkno_key(rest));
        keys.push(free_extent_order_key(rest));
    }
    prefetch(blocks, root, &keys)?;
    remove_extent(blocks, root, ext)?;
    if got.len < ext.len {
        insert_extent(
            blocks,
            root,
            Extent {
                start: got.start + got.len,
                len: ext.len - got.len,
            },
        )?;
    }
    Ok(got)
}

/// Every free extent in block order (for checkers and statfs).
pub fn free_extents(
    blocks: &mut dyn BlockAccess,
    root: &AllocRoot,
) -> Result<Vec<Extent>, AllocError> {
    let mut out = Vec::new();
    let mut from = Key::new(zone::FREE_EXTENT_BLKNO, 0, 0, 0, 0, 0);
    let last = Key::new(
        zone::FREE_EXTENT_BLKNO,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    loop {
        let items = btree::range(blocks, &root.root, &from, &last, 1024)?;
        let Some(tail) = items.last().map(|i| i.key) else {
            break;
        };
        for it in &items {
            let ext = free_extent_from_key(&it.key)
                .ok_or_else(|| AllocError::Corrupt(format!("bad free extent key {}", it.key)))?;
            out.push(ext);
        }
        match tail.next() {
            Some(n) if n <= last => from = n,
            _ => break,
        }
    }
    Ok(out)
}

/// How many metadata blocks a transaction keeps in hand by default (the
/// block cache holds the targets, so they are defined with it).
pub use crate::block::cache::{META_FILL, META_RESERVE};

/// Top up the cache's avail list from the metadata allocators when it has
/// fallen under the reserve: from `primary`, then `fallback` if given. When
/// both run dry it stops without error, with what it has. The
/// allocators' own changes use blocks from the same list, which is why the
/// reserve exists.
pub fn refill_meta<B: BlockAccess + MetaAvail + ?Sized>(
    blocks: &mut B,
    primary: &mut AllocRoot,
    mut fallback: Option<&mut AllocRoot>,
) -> Result<(), AllocError> {
    let (reserve, fill) = blocks.avail_targets();
    if blocks.avail_len() >= reserve {
        return Ok(());
    }
    while blocks.avail_len() < fill {
        let want = (fill - blocks.avail_len()) as u64;
        let got = match alloc_extent(blocks.as_access(), primary, want) {
            Err(AllocError::NoSpace) => match fallback.as_deref_mut() {
                Some(f) => alloc_extent(blocks.as_access(), f, want),
                None => Err(AllocError::NoSpace),
            },
            other => other,
        };
        match got {
            Ok(ext) => blocks.push_avail(ext.start..ext.start + ext.len),
            // Best effort: the caller decides whether what is in hand is
            // enough (a write needs the reserve, a commit takes what's left).
            Err(AllocError::NoSpace) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The part of a block cache's metadata allocator that refilling needs.
pub trait MetaAvail {
    fn avail_len(&self) -> usize;
    /// (reserve, fill): refill to `fill` when under `reserve`.
    fn avail_targets(&self) -> (usize, usize);
    fn push_avail(&mut self, blknos: std::ops::Range<u64>);
    fn as_access(&mut self) -> &mut dyn BlockAccess;
}

impl MetaAvail for crate::block::cache::BlockCache {
    fn avail_len(&self) -> usize {
        self.meta_alloc().avail.len()
    }

    fn avail_targets(&self) -> (usize, usize) {
        self.meta_targets()
    }

    fn push_avail(&mut self, blknos: std::ops::Range<u64>) {
        // Lowest first out: the list pops from the end.
        self.add_avail(blknos.rev());
    }

    fn as_access(&mut self) -> &mut dyn BlockAccess {
        self
    }
}

/// An allocator error as [`Store::retry`](crate::block::store::Store::retry) sees it.
impl crate::block::store::MissError for AllocError {
    fn miss(&self) -> Option<crate::format::BlockRef> {
        AllocError::miss(self)
    }

    fn corrupt_block(&self) -> Option<(u64, String)> {
        match self {
            AllocError::Btree(e) => e.corrupt_block(),
            _ => None,
        }
    }
}

/// The transaction's blocks in hand, kept by the store's cache.
impl MetaAvail for crate::block::store::Store {
    fn avail_len(&self) -> usize {
        self.cache.meta_alloc().avail.len()
    }

    fn avail_targets(&self) -> (usize, usize) {
        self.cache.meta_targets()
    }

    fn push_avail(&mut self, blknos: std::ops::Range<u64>) {
        self.cache.add_avail(blknos.rev());
    }

    fn as_access(&mut self) -> &mut dyn BlockAccess {
        self
    }
}
