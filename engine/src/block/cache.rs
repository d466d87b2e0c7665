//! The metadata block cache: verified 64 KiB blocks by block number, with a
//! memory budget for clean blocks, copy-on-write dirtying, and the
//! transaction's private metadata allocator.
//!
//! - Blocks enter the cache clean, through [`BlockCache::insert_read`],
//!   which checks them against the reference that led to them (crc, blkno,
//!   fsid, seq, magic). A bad block is an error and never cached.
//! - Dirtying a committed block copies it to a newly allocated block number
//!   stamped with the transaction's seq; the old number goes to the freed
//!   list and is reused only after the transaction commits. A block that is
//!   already dirty in the transaction is changed in place.
//! - Dirty blocks stay in memory until the commit writes them
//!   ([`BlockCache::dirty_blocks`], then [`BlockCache::commit_done`]). Clean
//!   blocks are evicted least-recently-used beyond the budget.

use std::collections::{BTreeMap, HashMap};

use super::{BlockAccess, BlockError};
use crate::format::block::{seal_block, BlockHeader, BLOCK_LG_SIZE};
use crate::format::{check_block, BlockMagic, BlockRef, Expected, Le32, Le64};

/// How many metadata blocks a transaction keeps in hand by default: below
/// `META_RESERVE` the transaction refills to `META_FILL` before its next
/// operation (`alloc::refill_meta`; simulation lowers them to make refills
/// frequent). The reserve covers the worst case of one operation (COW of
/// a full path in a few trees, splits at every level).
pub const META_RESERVE: usize = 256;
pub const META_FILL: usize = 1024;

/// The smallest budget: enough clean blocks for any one operation's paths
/// to stay cached while it resolves its misses.
pub const MIN_BUDGET_BLOCKS: usize = 256;

struct Cached {
    data: Box<[u8]>,
    seq: u64,
    dirty: bool,
    /// Sealed by a commit whose writes are in flight
    /// ([`BlockCache::begin_commit`]): read-only, and never evicted, until
    /// [`BlockCache::end_commit`].
    writing: bool,
    tick: u64,
}

/// The transaction's private metadata allocator: block numbers granted for
/// this transaction (`avail`) and block numbers freed by it (`freed`),
/// which return to service only after the commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetaAlloc {
    pub avail: Vec<u64>,
    pub freed: Vec<u64>,
}

/// Counters of cache activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub reads_inserted: u64,
    pub evictions: u64,
    pub cow_copies: u64,
    pub allocs: u64,
}

pub struct BlockCache {
    fsid: u64,
    device: String,
    txn_seq: u64,
    blocks: HashMap<u64, Cached>,
    /// Clean blocks by last use, for eviction.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    nr_dirty: usize,
    /// Blocks of the commit in flight.
    nr_writing: usize,
    budget_blocks: usize,
    alloc: MetaAlloc,
    /// (reserve, fill) of the avail list; see `alloc::refill_meta`.
    meta_targets: (usize, usize),
    /// Block numbers that may be allocated (the device's allocatable range).
    valid_blknos: std::ops::Range<u64>,
    /// Blocks allocated in this transaction (freeing one returns it to
    /// `avail` at once: no committed tree references it).
    stats: CacheStats,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("device", &self.device)
            .field("txn_seq", &self.txn_seq)
            .field("cached", &self.blocks.len())
            .field("dirty", &self.nr_dirty)
            .field("budget_blocks", &self.budget_blocks)
            .finish()
    }
}

impl BlockCache {
    /// A cache for the metadata device named `device` of volume `fsid`,
    /// holding at most `budget_bytes` of clean blocks.
    pub fn new(fsid: u64, device: impl Into<String>, budget_bytes: usize, txn_seq: u64) -> Self {
        BlockCache {
            fsid,
            device: device.into(),
            txn_seq,
            blocks: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            nr_dirty: 0,
            nr_writing: 0,
            budget_blocks: (budget_bytes / BLOCK_LG_SIZE).max(MIN_BUDGET_BLOCKS),
            alloc: MetaAlloc::default(),
            meta_targets: (META_RESERVE, META_FILL),
            valid_blknos: 0..u64::MAX,
            stats: CacheStats::default(),
        }
    }

    /// A cache with no device behind it, for tests and simulation: every
    /// block stays cached (no budget), metadata blocks are allocated from
    /// `free_blknos`.
    pub fn in_memory(fsid: u64, txn_seq: u64, free_blknos: std::ops::Range<u64>) -> Self {
        let mut c = BlockCache::new(fsid, "memory", usize::MAX, txn_seq);
        c.alloc.avail = free_blknos.rev().collect();
        c
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    pub fn nr_cached(&self) -> usize {
        self.blocks.len()
    }

    pub fn nr_dirty(&self) -> usize {
        self.nr_dirty
    }

    /// Start building transaction `seq` (after the previous one committed).
    pub fn set_txn_seq(&mut self, seq: u64) {
        assert_eq!(self.nr_dirty, 0, "new transaction with dirty blocks");
        assert!(
            seq > self.txn_seq || self.blocks.is_empty(),
            "txn seq must grow"
        );
        self.txn_seq = seq;
    }

    /// Refuse to allocate block numbers outside `range` (the metadata
    /// device's allocatable blocks): a wrong number from a corrupt
    /// allocator is an error, never a write over the super block or past
    /// the device.
    pub fn set_valid_blknos(&mut self, range: std::ops::Range<u64>) {
        self.valid_blknos = range;
    }

    /// (reserve, fill) of the transaction's avail list.
    pub fn meta_targets(&self) -> (usize, usize) {
        self.meta_targets
    }

    pub fn set_meta_targets(&mut self, reserve: usize, fill: usize) {
        assert!(reserve > 0 && fill >= reserve);
        self.meta_targets = (reserve, fill);
    }

    pub fn meta_alloc(&self) -> &MetaAlloc {
        &self.alloc
    }

    /// Hand the transaction its metadata blocks (replacing what it had).
    pub fn set_meta_alloc(&mut self, alloc: MetaAlloc) {
        self.alloc = alloc;
    }

    /// Take the blocks freed so far in this transaction (to return them to
    /// the allocator at commit).
    pub fn take_meta_alloc_freed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.alloc.freed)
    }

    pub fn take_meta_alloc(&mut self) -> MetaAlloc {
        std::mem::take(&mut self.alloc)
    }

    /// Add block numbers to the transaction's free list.
    pub fn add_avail(&mut self, blknos: impl IntoIterator<Item = u64>) {
        self.alloc.avail.extend(blknos);
    }

    /// Whether some version of block `blkno` is cached.
    pub fn has_blkno(&self, blkno: u64) -> bool {
        self.blocks.contains_key(&blkno)
    }

    pub fn is_cached(&self, r: &BlockRef) -> bool {
        self.blocks
            .get(&r.blkno.get())
            .is_some_and(|c| c.seq == r.seq.get())
    }

    /// Verify a block read from the device against `r` and cache it clean.
    pub fn insert_read(
        &mut self,
        r: &BlockRef,
        magic: BlockMagic,
        data: &[u8],
    ) -> Result<(), BlockError> {
        let exp = Expected {
            magic,
            fsid: self.fsid,
            blkno: r.blkno.get(),
            seq: r.seq.get(),
        };
        check_block(&data[..BLOCK_LG_SIZE], &exp).map_err(|source| BlockError::Check {
            device: self.device.clone(),
            source,
        })?;
        let blkno = r.blkno.get();
        if let Some(c) = self.blocks.get(&blkno) {
            if c.dirty || c.writing {
                // Never replace a dirty block (or one being written) with
                // an older read.
                return Ok(());
            }
            self.lru.remove(&c.tick);
        }
        self.tick += 1;
        let data = data[..BLOCK_LG_SIZE].to_vec().into_boxed_slice();
        self.blocks.insert(
            blkno,
            Cached {
                data,
                seq: r.seq.get(),
                dirty: false,
                writing: false,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, blkno);
        self.stats.reads_inserted += 1;
        self.evict();
        Ok(())
    }

    /// Like [`insert_read`](Self::insert_read) for a block whose kind the
    /// reader doesn't know: the header's magic must be a known one and is
    /// checked again by every `get`.
    pub fn insert_read_any(&mut self, r: &BlockRef, data: &[u8]) -> Result<(), BlockError> {
        let hdr: &BlockHeader = bytemuck::from_bytes(&data[..32]);
        let found = hdr.magic.get();
        let Some(magic) = BlockMagic::from_u32(found) else {
            return Err(BlockError::Check {
                device: self.device.clone(),
                source: crate::format::BlockCheckError::Corrupt {
                    blkno: r.blkno.get(),
                    field: crate::format::block::HeaderField::Magic,
                    expected: 0,
                    found: u64::from(found),
                },
            });
        };
        self.insert_read(r, magic, data)
    }

    fn evict(&mut self) {
        while self.blocks.len() > self.budget_blocks + self.nr_dirty + self.nr_writing {
            let Some((&tick, &blkno)) = self.lru.iter().next() else {
                break;
            };
            self.lru.remove(&tick);
            self.blocks.remove(&blkno);
            self.stats.evictions += 1;
        }
    }

    fn touch(&mut self, blkno: u64) {
        let Some(c) = self.blocks.get_mut(&blkno) else {
            return;
        };
        if c.dirty || c.writing {
            return;
        }
        self.lru.remove(&c.tick);
        self.tick += 1;
        c.tick = self.tick;
        self.lru.insert(self.tick, blkno);
    }

    fn new_dirty(&mut self, blkno: u64, data: Box<[u8]>) {
        self.tick += 1;
        if let Some(old) = self.blocks.insert(
            blkno,
            Cached {
                data,
                seq: self.txn_seq,
                dirty: true,
                writing: false,
                tick: self.tick,
            },
        ) {
            debug_assert!(!old.dirty, "allocated block {blkno} was dirty");
            debug_assert!(!old.writing, "allocated block {blkno} is being written");
            self.lru.remove(&old.tick);
        }
        self.nr_dirty += 1;
    }

    fn stamp(&self, data: &mut [u8], magic: u32, blkno: u64) {
        let hdr: &mut BlockHeader = bytemuck::from_bytes_mut(&mut data[..32]);
        hdr.crc = Le32::new(0);
        hdr.magic = Le32::new(magic);
        hdr.fsid = Le64::new(self.fsid);
        hdr.seq = Le64::new(self.txn_seq);
        hdr.blkno = Le64::new(blkno);
    }

    fn alloc_blkno(&mut self) -> Result<u64, BlockError> {
        let blkno = self.alloc.avail.pop().ok_or(BlockError::NoSpace)?;
        if !self.valid_blknos.contains(&blkno)
            || self
                .blocks
                .get(&blkno)
                .is_some_and(|c| c.dirty || c.writing)
        {
            return Err(BlockError::Io {
                device: self.device.clone(),
                blkno,
                msg: format!(
                    "allocator handed out block {blkno}, outside {:?} or already in use: corrupt allocator",
                    self.valid_blknos
                ),
            });
        }
        self.stats.allocs += 1;
        Ok(blkno)
    }

    /// The dirty blocks to write, sealed (crc computed), in block order.
    pub fn dirty_blocks(&mut self) -> Vec<(u64, &[u8])> {
        let mut out: Vec<(u64, &mut Cached)> = self
            .blocks
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(b, c)| (*b, c))
            .collect();
        out.sort_by_key(|(b, _)| *b);
        out.into_iter()
            .map(|(blkno, c)| {
                let (magic, fsid) = {
                    let hdr: &BlockHeader = bytemuck::from_bytes(&c.data[..32]);
                    (hdr.magic.get(), hdr.fsid.get())
                };
                let magic = BlockMagic::from_u32(magic).expect("dirty blocks carry a known magic");
                seal_block(&mut c.data, magic, fsid, blkno, c.seq);
                (blkno, &c.data[..])
            })
            .collect()
    }

    /// The transaction's dirty blocks were written and its commit is
    /// durable: they are clean now.
    pub fn commit_done(&mut self) {
        for (blkno, c) in self.blocks.iter_mut() {
            if c.dirty {
                c.dirty = false;
                self.tick += 1;
                c.tick = self.tick;
                self.lru.insert(self.tick, *blkno);
            }
        }
        self.nr_dirty = 0;
        self.evict();
    }

    /// Throw away every dirty block, and those of a commit in flight (a
    /// transaction that failed to commit). The caller must also forget the
    /// roots that referenced them.
    pub fn discard_dirty(&mut self) {
        self.blocks.retain(|_, c| !c.dirty && !c.writing);
        self.nr_dirty = 0;
        self.nr_writing = 0;
    }

    /// A commit begins while the next transaction goes on: seal every
    /// dirty block (crc computed) and keep it, unchanged and cached, until
    /// [`BlockCache::end_commit`]; the next transaction copies any it
    /// changes, as it would a committed block. Returns their numbers in
    /// block order. The caller moves on to the next seq.
    pub fn begin_commit(&mut self) -> Vec<u64> {
        assert_eq!(self.nr_writing, 0, "a commit is already in flight");
        let mut blknos: Vec<u64> = self.dirty_blocks().iter().map(|(b, _)| *b).collect();
        blknos.sort_unstable();
        for b in &blknos {
            let c = self.blocks.get_mut(b).expect("dirty block is cached");
            c.dirty = false;
            c.writing = true;
        }
        self.nr_writing = blknos.len();
        self.nr_dirty = 0;
        blknos
    }

    /// The sealed bytes of block `blkno` of the commit in flight.
    pub fn writing_block(&self, blkno: u64) -> &[u8] {
        let c = &self.blocks[&blkno];
        assert!(c.writing, "block {blkno} is not being written");
        &c.data
    }

    /// The commit begun by [`BlockCache::begin_commit`] is durable: its
    /// blocks are clean from now on. (A failed one is thrown away with
    /// [`BlockCache::discard_dirty`].)
    pub fn end_commit(&mut self) {
        for (blkno, c) in self.blocks.iter_mut() {
            if c.writing {
                c.writing = false;
                self.tick += 1;
                c.tick = self.tick;
                self.lru.insert(self.tick, *blkno);
            }
        }
        self.nr_writing = 0;
        self.evict();
    }

    /// Blocks of the commit in flight.
    pub fn nr_writing(&self) -> usize {
        self.nr_writing
    }

    /// For tests and simulation without a device: commit everything dirty
    /// and make this transaction's freed blocks available again, as a
    /// server would after the commit.
    pub fn commit_in_memory(&mut self) {
        let _ = self.dirty_blocks();
        self.commit_done();
        let freed = std::mem::take(&mut self.alloc.freed);
        for b in &freed {
            if let Some(c) = self.blocks.remove(b) {
                self.lru.remove(&c.tick);
            }
        }
        self.alloc.avail.extend(freed);
        self.txn_seq += 1;
    }
}

impl BlockAccess for BlockCache {
    fn txn_seq(&self) -> u64 {
        self.txn_seq
    }

    fn get(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<&[u8], BlockError> {
        let blkno = r.blkno.get();
        let Some(c) = self.blocks.get(&blkno) else {
            self.stats.misses += 1;
            return Err(BlockError::Miss(*r));
        };
        if c.seq != r.seq.get() {
            // Rewritten since `r` was taken: reading it again would only find
            // the newer version.
            return Err(BlockError::Check {
                device: self.device.clone(),
                source: crate::format::BlockCheckError::Stale {
                    blkno,
                    expected_seq: r.seq.get(),
                    found_seq: c.seq,
                },
            });
        }
        let found = bytemuck::from_bytes::<BlockHeader>(&c.data[..32])
            .magic
            .get();
        if found != magic as u32 {
            return Err(BlockError::Check {
                device: self.device.clone(),
                source: crate::format::BlockCheckError::Corrupt {
                    blkno,
                    field: crate::format::block::HeaderField::Magic,
                    expected: u64::from(magic as u32),
                    found: u64::from(found),
                },
            });
        }
        self.stats.hits += 1;
        self.touch(blkno);
        Ok(&self.blocks[&blkno].data)
    }

    fn dirty(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        if self.is_dirty(r) {
            return Ok(*r);
        }
        let mut data = self.get(r, magic)?.to_vec().into_boxed_slice();
        let blkno = self.alloc_blkno()?;
        self.stamp(&mut data, magic as u32, blkno);
        self.new_dirty(blkno, data);
        self.stats.cow_copies += 1;
        self.free(r);
        Ok(BlockRef::new(blkno, self.txn_seq))
    }

    fn get_mut(&mut self, r: &BlockRef) -> &mut [u8] {
        let c = self
            .blocks
            .get_mut(&r.blkno.get())
            .expect("get_mut of an uncached block");
        assert!(
            c.dirty && c.seq == r.seq.get(),
            "get_mut of block {} which is not dirty",
            r.blkno.get()
        );
        &mut c.data
    }

    fn alloc(&mut self, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        let blkno = self.alloc_blkno()?;
        let mut data = vec![0u8; BLOCK_LG_SIZE].into_boxed_slice();
        self.stamp(&mut data, magic as u32, blkno);
        self.new_dirty(blkno, data);
        Ok(BlockRef::new(blkno, self.txn_seq))
    }

    fn free(&mut self, r: &BlockRef) {
        let blkno = r.blkno.get();
        if self.is_dirty(r) {
            // Born in this transaction: nothing committed references it.
            self.blocks.remove(&blkno);
            self.nr_dirty -= 1;
            self.alloc.avail.push(blkno);
        } else {
            self.alloc.freed.push(blkno);
        }
    }

    fn is_dirty(&self, r: &BlockRef) -> bool {
        self.blocks
            .get(&r.blkno.get())
            .is_some_and(|c| c.dirty && c.seq == r.seq.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cow_moves_committed_blocks_and_defers_their_reuse() {
        let mut c = BlockCache::in_memory(7, 1, 10..20);
        let a = c.alloc(BlockMagic::Btree).unwrap();
        c.get_mut(&a)[100] = 1;
        assert_eq!(
            c.dirty(&a, BlockMagic::Btree).unwrap(),
            a,
            "dirty in this txn: in place"
        );
        c.commit_in_memory();
        let b = c.dirty(&a, BlockMagic::Btree).unwrap();
        assert_ne!(b.blkno, a.blkno);
        assert_eq!(b.seq.get(), 2);
        assert_eq!(c.get(&b, BlockMagic::Btree).unwrap()[100], 1);
        assert_eq!(c.meta_alloc().freed, vec![a.blkno.get()]);
        assert!(
            !c.meta_alloc().avail.contains(&a.blkno.get()),
            "not reusable before commit"
        );
        // The committed version is still readable by its old reference.
        assert_eq!(c.get(&a, BlockMagic::Btree).unwrap()[100], 1);
    }

    #[test]
    fn freeing_a_block_born_in_this_txn_returns_it_at_once() {
        let mut c = BlockCache::in_memory(7, 1, 10..12);
        let a = c.alloc(BlockMagic::Btree).unwrap();
        let _b = c.alloc(BlockMagic::Btree).unwrap();
        assert_eq!(c.alloc(BlockMagic::Btree), Err(BlockError::NoSpace));
        c.free(&a);
        assert!(c.alloc(BlockMagic::Btree).is_ok());
    }

    #[test]
    fn reads_are_verified_and_misses_reported() {
        let mut c = BlockCache::new(7, "meta", 1 << 20, 5);
        let r = BlockRef::new(3, 4);
        assert_eq!(c.get(&r, BlockMagic::Btree), Err(BlockError::Miss(r)));
        let mut blk = vec![0u8; BLOCK_LG_SIZE];
        seal_block(&mut blk, BlockMagic::Btree, 7, 3, 4);
        assert!(
            c.insert_read(&BlockRef::new(3, 5), BlockMagic::Btree, &blk)
                .is_err(),
            "stale"
        );
        let mut bad = blk.clone();
        bad[999] ^= 1;
        assert!(matches!(
            c.insert_read(&r, BlockMagic::Btree, &bad),
            Err(BlockError::Check { .. })
        ));
        c.insert_read(&r, BlockMagic::Btree, &blk).unwrap();
        assert!(c.get(&r, BlockMagic::Btree).is_ok());
        assert!(matches!(
            c.get(&r, BlockMagic::Bloom),
            Err(BlockError::Check { .. })
        ));
    }

    #[test]
    fn clean_blocks_are_evicted_beyond_the_budget_dirty_ones_never() {
        let mut c = BlockCache::new(7, "meta", MIN_BUDGET_BLOCKS * BLOCK_LG_SIZE, 100);
        c.add_avail(1000..1100);
        let dirty: Vec<_> = (0..20)
            .map(|_| c.alloc(BlockMagic::Btree).unwrap())
            .collect();
        for i in 0..(MIN_BUDGET_BLOCKS as u64 + 24) {
            let mut blk = vec![0u8; BLOCK_LG_SIZE];
            seal_block(&mut blk, BlockMagic::Btree, 7, i + 1, 1);
            c.insert_read(&BlockRef::new(i + 1, 1), BlockMagic::Btree, &blk)
                .unwrap();
        }
        assert_eq!(c.nr_cached(), MIN_BUDGET_BLOCKS + 20);
        assert!(dirty.iter().all(|d| c.is_dirty(d)));
        // The most recent clean reads survive.
        assert!(c.is_cached(&BlockRef::new(MIN_BUDGET_BLOCKS as u64 + 24, 1)));
        assert!(!c.is_cached(&BlockRef::new(1, 1)));
        let written: Vec<u64> = c.dirty_blocks().iter().map(|(b, _)| *b).collect();
        assert_eq!(written.len(), 20);
        assert!(written.windows(2).all(|w| w[0] < w[1]));
        c.commit_done();
        assert_eq!(c.nr_dirty(), 0);
        assert_eq!(c.nr_cached(), MIN_BUDGET_BLOCKS);
    }

    #[test]
    fn dirty_blocks_are_sealed_for_writing() {
        let mut c = BlockCache::in_memory(9, 3, 50..60);
        let a = c.alloc(BlockMagic::Btree).unwrap();
        c.get_mut(&a)[4000] = 42;
        let blocks = c.dirty_blocks();
        let (blkno, data) = blocks[0];
        let exp = Expected {
            magic: BlockMagic::Btree,
            fsid: 9,
            blkno,
            seq: 3,
        };
        assert!(check_block(data, &exp).is_ok());
    }
}
