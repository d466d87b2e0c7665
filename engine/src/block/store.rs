//! A block cache with its device: resolves cache misses by reading the
//! missing block (synchronously) and rerunning the operation, and writes a
//! transaction's blocks. The in-process single-node engine, the tools and
//! the simulation run on this; the reactor's asynchronous store replaces
//! only the read in `retry`.

use super::cache::BlockCache;
use super::io::MetaIo;
use super::BlockError;
use crate::format::BlockRef;

/// Errors that may be a cache miss to resolve.
pub trait MissError: From<BlockError> {
    fn miss(&self) -> Option<BlockRef>;
}

impl MissError for BlockError {
    fn miss(&self) -> Option<BlockRef> {
        match self {
            BlockError::Miss(r) => Some(*r),
            _ => None,
        }
    }
}

impl MissError for crate::btree::BtreeError {
    fn miss(&self) -> Option<BlockRef> {
        match self {
            crate::btree::BtreeError::Block(BlockError::Miss(r)) => Some(*r),
            _ => None,
        }
    }
}

impl MissError for crate::alloc::AllocError {
    fn miss(&self) -> Option<BlockRef> {
        crate::alloc::AllocError::miss(self)
    }
}

/// Most misses one operation may resolve: a bound on the retry loop (an
/// operation touches at most a few root-to-leaf paths).
const MAX_MISSES_PER_OP: usize = 100_000;

#[derive(Debug)]
pub struct Store {
    pub cache: BlockCache,
    pub io: MetaIo,
    pub reads: u64,
}

impl Store {
    pub fn new(cache: BlockCache, io: MetaIo) -> Self {
        Store {
            cache,
            io,
            reads: 0,
        }
    }

    /// Read `r` from the device into the cache.
    pub fn load(&mut self, r: &BlockRef) -> Result<(), BlockError> {
        let data = self.io.read_block(r.blkno.get())?;
        self.reads += 1;
        self.cache.insert_read_any(r, &data)
    }

    /// Run `op` over the cache, reading missing blocks and rerunning it
    /// until it completes.
    pub fn retry<T, E: MissError>(
        &mut self,
        mut op: impl FnMut(&mut BlockCache) -> Result<T, E>,
    ) -> Result<T, E> {
        for _ in 0..MAX_MISSES_PER_OP {
            match op(&mut self.cache) {
                Err(e) => match e.miss() {
                    Some(r) => self.load(&r)?,
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
        panic!("operation missed {MAX_MISSES_PER_OP} blocks: cache budget too small to hold one operation");
    }
}
