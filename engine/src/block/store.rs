//! A block cache with its device, synchronously: as a [`BlockAccess`] it
//! reads a missing block inline, so an operation over a `Store` never sees
//! a miss and multi-step operations (allocator changes, merges, commits)
//! never restart half done. The in-process single-node engine, the tools
//! and the simulation run on this.
//!
//! On the reactor a read must be awaited instead: there each btree
//! operation (which is miss-atomic: it reads everything before its first
//! change) is retried on its own, and a multi-step operation continues with
//! its next step rather than restarting (see docs/ARCHITECTURE.md).

use super::cache::BlockCache;
use super::corrupt::CorruptionLog;
use super::io::MetaIo;
use super::{BlockAccess, BlockError};
use crate::format::{BlockMagic, BlockRef};

/// Errors that may be a cache miss to resolve, or a corrupt block to
/// report.
pub trait MissError: From<BlockError> {
    fn miss(&self) -> Option<BlockRef>;

    /// The metadata block that failed its checks, and what differed.
    fn corrupt_block(&self) -> Option<(u64, String)>;
}

impl MissError for BlockError {
    fn miss(&self) -> Option<BlockRef> {
        match self {
            BlockError::Miss(r) => Some(*r),
            _ => None,
        }
    }

    fn corrupt_block(&self) -> Option<(u64, String)> {
        BlockError::corrupt_block(self)
    }
}

/// Most misses one operation may resolve: a bound on the retry loop (an
/// operation touches at most a few root-to-leaf paths).
const MAX_MISSES_PER_OP: usize = 100_000;

#[derive(Debug)]
pub struct Store {
    pub cache: BlockCache,
    pub io: MetaIo,
    /// Blocks read inline, synchronously, on the calling thread.
    pub reads: u64,
    /// Corrupt blocks met by operations run through [`Store::retry`].
    pub corruption: CorruptionLog,
    /// Return misses instead of reading inline (see [`Store::defer_misses`]).
    defer: bool,
    /// Misses returned to the caller while deferring.
    pub deferred: u64,
}

impl Store {
    pub fn new(cache: BlockCache, io: MetaIo) -> Self {
        Store {
            cache,
            io,
            reads: 0,
            corruption: CorruptionLog::default(),
            defer: false,
            deferred: 0,
        }
    }

    /// Whether a block that isn't cached is returned as
    /// [`BlockError::Miss`] (`true`: the engine's request task reads it
    /// through the reactor and reruns the operation) or read inline on
    /// this thread (`false`, the default: tools, tests, and the parts of
    /// an operation that may not restart because they have changed
    /// something).
    pub fn defer_misses(&mut self, defer: bool) {
        self.defer = defer;
    }

    pub fn deferring(&self) -> bool {
        self.defer
    }

    /// Read `r` from the device into the cache.
    pub fn load(&mut self, r: &BlockRef) -> Result<(), BlockError> {
        let data = self.io.read_block(r.blkno.get())?;
        self.reads += 1;
        self.cache.insert_read_any(r, &data)
    }

    /// Cache `data`, block `r` read by someone else (the engine's request
    /// task, through the reactor): verified as [`Store::load`] does, and a
    /// corrupt block reported. A block cached meanwhile is left as it is.
    pub fn insert_fetched(&mut self, r: &BlockRef, data: &[u8]) -> Result<(), BlockError> {
        if self.cache.is_cached(r) {
            return Ok(());
        }
        let e = match self.cache.insert_read_any(r, data) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let Some((blkno, what)) = e.corrupt_block() {
            self.corruption.report(self.io.device_name(), blkno, &what);
        }
        Err(e)
    }

    /// Run `op` over the store. Misses are read inline by `get`, so a miss
    /// only surfaces from code that inspects the cache directly; it is read
    /// and `op` rerun. While deferring, a miss is returned instead. A
    /// corrupt block that ends the operation is reported (counted, and
    /// logged once per block: [`CorruptionLog`]).
    pub fn retry<T, E: MissError>(
        &mut self,
        mut op: impl FnMut(&mut Store) -> Result<T, E>,
    ) -> Result<T, E> {
        for _ in 0..MAX_MISSES_PER_OP {
            let e = match op(self) {
                Err(e) => match e.miss() {
                    Some(_) if self.defer => {
                        self.deferred += 1;
                        return Err(e);
                    }
                    Some(r) => match self.load(&r) {
                        Ok(()) => continue,
                        Err(e) => E::from(e),
                    },
                    None => e,
                },
                ok => return ok,
            };
            if let Some((blkno, what)) = e.corrupt_block() {
                self.corruption.report(self.io.device_name(), blkno, &what);
            }
            return Err(e);
        }
        panic!("operation missed {MAX_MISSES_PER_OP} blocks: cache budget too small to hold one operation");
    }
}

impl BlockAccess for Store {
    fn txn_seq(&self) -> u64 {
        self.cache.txn_seq()
    }

    fn get(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<&[u8], BlockError> {
        if !self.cache.is_cached(r) && !self.cache.has_blkno(r.blkno.get()) {
            if self.defer {
                return Err(BlockError::Miss(*r));
            }
            self.load(r)?;
        }
        self.cache.get(r, magic)
    }

    fn dirty(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        self.get(r, magic)?;
        self.cache.dirty(r, magic)
    }

    fn get_mut(&mut self, r: &BlockRef) -> &mut [u8] {
        self.cache.get_mut(r)
    }

    fn alloc(&mut self, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        self.cache.alloc(magic)
    }

    fn free(&mut self, r: &BlockRef) {
        self.cache.free(r)
    }

    fn is_dirty(&self, r: &BlockRef) -> bool {
        self.cache.is_dirty(r)
    }
}
