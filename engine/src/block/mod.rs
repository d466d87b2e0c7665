//! Metadata blocks as the btree and allocators see them.
//!
//! [`BlockAccess`] is the btree's whole view of storage: read a block by
//! reference (verified against it), make a copy-on-write version of it
//! writable in the current transaction, allocate and free blocks. It is
//! synchronous: a block that is not cached is a [`BlockError::Miss`], which
//! the caller resolves by reading the block (an await on the reactor, a
//! blocking read in tools) and then restarting the operation. Operations
//! therefore make sure every block they need is cached *before* their first
//! change, so a restart never sees half an operation.
//!
//! [`cache::BlockCache`] implements it over a device with a memory budget.

pub mod cache;
pub mod corrupt;
pub mod io;
pub mod store;

use crate::format::{BlockCheckError, BlockMagic, BlockRef};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block is not in the cache: read it and retry the operation.
    #[error("block {} (seq {}) is not cached", .0.blkno.get(), .0.seq.get())]
    Miss(BlockRef),
    /// The block read from disk does not match its reference.
    #[error("{device}: {source}")]
    Check {
        device: String,
        source: BlockCheckError,
    },
    /// No free metadata block left for this transaction.
    #[error("no free metadata blocks")]
    NoSpace,
    /// The volume went read-only after an I/O error or corruption.
    #[error("the volume is read-only after an earlier error")]
    ReadOnly,
    /// A device error while reading or writing a block.
    #[error("{device}: block {blkno}: {msg}")]
    Io {
        device: String,
        blkno: u64,
        msg: String,
    },
}

impl BlockError {
    /// The block that failed its checks and what differed, if this is
    /// corruption (see [`corrupt::CorruptionLog`]).
    pub fn corrupt_block(&self) -> Option<(u64, String)> {
        match self {
            BlockError::Check { source, .. } => {
                let blkno = match source {
                    BlockCheckError::Stale { blkno, .. }
                    | BlockCheckError::Corrupt { blkno, .. } => *blkno,
                };
                Some((blkno, source.to_string()))
            }
            _ => None,
        }
    }

    pub fn errno(&self) -> i32 {
        match self {
            BlockError::Miss(_) => libc::EAGAIN,
            BlockError::Check {
                source: BlockCheckError::Stale { .. },
                ..
            } => libc::ESTALE,
            BlockError::Check { .. } | BlockError::Io { .. } => libc::EIO,
            BlockError::NoSpace => libc::ENOSPC,
            BlockError::ReadOnly => libc::EROFS,
        }
    }
}

/// What the btree needs from the layer below. All blocks are
/// `BLOCK_LG_SIZE` (64 KiB) and start with a `BlockHeader`, which the
/// implementation owns: it fills in magic, fsid, blkno and seq when a
/// block is allocated or dirtied and seals the crc when writing.
pub trait BlockAccess {
    /// The seq of the transaction being built; blocks dirtied now carry it.
    fn txn_seq(&self) -> u64;

    /// A cached block, verified against `r` and `magic` when it was read.
    fn get(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<&[u8], BlockError>;

    /// Copy-on-write: return a reference to a version of `r` that is
    /// writable in the current transaction. If `r` is already dirty in this
    /// transaction it is returned as is; otherwise a new block is allocated,
    /// `r`'s contents copied into it, and `r` freed (reusable only after
    /// this transaction commits). The caller must store the returned
    /// reference in the parent (or root) in place of `r`.
    fn dirty(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<BlockRef, BlockError>;

    /// The contents of a block dirtied in this transaction (panics if `r`
    /// is not dirty: a caller's bug).
    fn get_mut(&mut self, r: &BlockRef) -> &mut [u8];

    /// A new zeroed block, dirty in this transaction, header filled in.
    fn alloc(&mut self, magic: BlockMagic) -> Result<BlockRef, BlockError>;

    /// `r` is no longer referenced by the tree being built.
    fn free(&mut self, r: &BlockRef);

    /// Whether `r` is dirty in the current transaction.
    fn is_dirty(&self, r: &BlockRef) -> bool;
}
