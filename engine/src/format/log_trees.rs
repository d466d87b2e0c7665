//! The per-mount log trees record (the value of a `log_trees` item in the
//! server's logs root, key rid + nr) and the structures it points to: the
//! bloom filter block and srch files.

use bytemuck::{Pod, Zeroable};

use super::alloc::{AllocListHead, AllocRoot};
use super::block::{BlockHeader, BlockRef, BLOCK_LG_SHIFT, BLOCK_LG_SIZE};
use super::btree::{BtreeRoot, BTREE_MAX_VAL_LEN};
use super::le::Le64;

/// The most data allocation zones a volume can be divided into.
pub const DATA_ALLOC_MAX_ZONES: usize = 1024;
/// The zone bitmap in a log trees record, as little-endian u64 words.
pub const DATA_ALLOC_ZONE_LE64S: usize = DATA_ALLOC_MAX_ZONES.div_ceil(64);

/// One entry of a srch file: an xattr name hash, the inode and xattr id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct SrchEntry {
    pub hash: Le64,
    pub ino: Le64,
    pub id: Le64,
}
const _: () = assert!(std::mem::size_of::<SrchEntry>() == 24);

/// A srch file: a run of srch blocks under a radix of parent blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct SrchFile {
    pub first: SrchEntry,
    pub last: SrchEntry,
    pub ref_: BlockRef,
    pub blocks: Le64,
    pub entries: Le64,
    pub height: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<SrchFile>() == 88);
const _: () = assert!(std::mem::align_of::<SrchFile>() == 1);

/// A mount's log file grows to at most this many blocks before the server
/// rotates it out for compaction.
pub const SRCH_LOG_BLOCK_LIMIT: u64 = (1024 * 1024 / BLOCK_LG_SIZE) as u64;
/// srch files are compacted this many at a time.
pub const SRCH_COMPACT_NR: usize = 4;

/// Everything one mount changes in a transaction: its allocators, its item
/// btree and their bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogTrees {
    /// Free metadata blocks granted to the mount.
    pub meta_avail: AllocListHead,
    /// Metadata blocks the mount freed (reusable after the commit).
    pub meta_freed: AllocListHead,
    /// The mount's log btree of items.
    pub item_root: BtreeRoot,
    /// The bloom filter block over the item root's keys.
    pub bloom_ref: BlockRef,
    /// Free data extents granted to the mount.
    pub data_avail: AllocRoot,
    /// Data extents the mount freed.
    pub data_freed: AllocRoot,
    /// The srch log file the mount is appending to.
    pub srch_file: SrchFile,
    /// Size of a data allocation zone when the bits below were set.
    pub data_alloc_zone_blocks: Le64,
    /// Bitmap of the data zones this mount allocates from.
    pub data_alloc_zones: [Le64; DATA_ALLOC_ZONE_LE64S],
    /// Signed change in the inode count made by this tree (two's complement).
    pub inode_count_delta: Le64,
    /// The transaction seq the server opened for the mount.
    pub get_trans_seq: Le64,
    /// Set equal to `get_trans_seq` when that transaction commits.
    pub commit_trans_seq: Le64,
    /// Greatest item seq in the item root.
    pub max_item_seq: Le64,
    /// The seq at which the tree was finalized for merging.
    pub finalize_seq: Le64,
    pub rid: Le64,
    pub nr: Le64,
    /// `LOG_TREES_*` flags.
    pub flags: Le64,
}
const _: () = assert!(std::mem::size_of::<LogTrees>() == 472);
const _: () = assert!(std::mem::align_of::<LogTrees>() == 1);
const _: () = assert!(std::mem::size_of::<LogTrees>() <= BTREE_MAX_VAL_LEN);
const _: () = assert!(std::mem::offset_of!(LogTrees, srch_file) == 184);
const _: () = assert!(std::mem::offset_of!(LogTrees, inode_count_delta) == 408);

/// No more items go into this tree; it waits to be merged.
pub const LOG_TREES_FINALIZED: u64 = 1 << 0;

impl Default for LogTrees {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

impl LogTrees {
    pub fn inode_count_delta(&self) -> i64 {
        self.inode_count_delta.get() as i64
    }

    pub fn set_inode_count_delta(&mut self, delta: i64) {
        self.inode_count_delta.set(delta as u64);
    }

    pub fn is_finalized(&self) -> bool {
        self.flags.get() & LOG_TREES_FINALIZED != 0
    }
}

/// The header of a bloom filter block; `Le64` words of bits fill the rest
/// of the 64 KiB block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BloomBlock {
    pub hdr: BlockHeader,
    /// Number of bits set.
    pub total_set: Le64,
}
const _: () = assert!(std::mem::size_of::<BloomBlock>() == 40);

/// Byte offset of the bit words in a bloom block.
pub const BLOOM_BITS_OFFSET: usize = std::mem::size_of::<BloomBlock>();
/// Hash functions (bits set) per key range.
pub const FOREST_BLOOM_NRS: usize = 3;
/// Bits in the filter: the whole words that fit after the header.
pub const FOREST_BLOOM_BITS: usize = (BLOCK_LG_SIZE - BLOOM_BITS_OFFSET) / 8 * 64;
/// Bits of hash each function uses to pick a bit.
pub const FOREST_BLOOM_FUNC_BITS: u32 = BLOCK_LG_SHIFT + 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_trees_round_trip() {
        let mut lt = LogTrees::default();
        lt.meta_avail.total_nr.set(10);
        lt.item_root = BtreeRoot::new(BlockRef::new(100, 7), 2);
        lt.bloom_ref = BlockRef::new(101, 7);
        lt.data_avail.total_len.set(4096);
        lt.srch_file.blocks.set(3);
        lt.data_alloc_zones[15].set(1 << 63);
        lt.set_inode_count_delta(-5);
        lt.rid.set(0xabcd);
        lt.nr.set(3);
        lt.flags.set(LOG_TREES_FINALIZED);
        let b = bytemuck::bytes_of(&lt);
        assert_eq!(b.len(), 472);
        let back: LogTrees = bytemuck::pod_read_unaligned(b);
        assert_eq!(back, lt);
        assert_eq!(back.inode_count_delta(), -5);
        assert!(back.is_finalized());
        assert_eq!(&b[456..464], &3u64.to_le_bytes());
        assert_eq!(DATA_ALLOC_ZONE_LE64S, 16);
        assert_eq!(FOREST_BLOOM_BITS, 8187 * 64);
    }
}
