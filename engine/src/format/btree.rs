//! Btree roots, blocks and items as laid out in a 64 KiB metadata block.
//!
//! # Block layout
//!
//! ```text
//!  0        48                     items_end      val_start          65536
//!  | header | item headers, sorted  | mid free gap | values (+ holes)  |
//!  |        | by key, 48 bytes each |              | packed from end,  |
//!  |        | -> grows up           |              | 8-byte aligned <- |
//! ```
//!
//! - [`BtreeBlock`] (48 bytes): the block header, `nr_items`,
//!   `total_item_bytes`, `mid_free_len` and `level` (0 = leaf).
//! - An array of `nr_items` [`BtreeItem`] headers follows, **sorted by key**
//!   (strictly ascending [`Key`] order), so lookups are a binary search.
//!   Inserting or deleting shifts the headers after the slot.
//! - Values are packed from the end of the block downwards. Each value
//!   takes `round_up(val_len, 8)` bytes at an 8-aligned `val_off` (a byte
//!   offset from the start of the block). Items with no value (deletion
//!   items, index items) have `val_len == 0` and `val_off == 0`.
//! - `val_start = items_end + mid_free_len` is the lowest byte that any
//!   value may occupy; new values go just below it, shrinking the gap.
//!   Deleting or shrinking a value leaves a hole above `val_start` that is
//!   only reclaimed by compacting the block (rewriting the values packed at
//!   the end). `total_item_bytes` counts the headers plus the aligned sizes of
//!   live values, so `BTREE_ITEM_SPACE - total_item_bytes` is what the block
//!   can take after compaction, and `mid_free_len` what it can take now.
//! - In parent blocks (level > 0) each item's value is a [`BlockRef`] to a
//!   child one level down, and the item's key is the greatest key that the
//!   child's subtree may hold (scoutfs's convention): a search descends into
//!   the first child whose key is >= the key sought.
//!
//! Deviation from scoutfs: scoutfs links the item headers into an AVL tree
//! (2-byte offsets, 56-byte item headers) so that inserts never shift
//! headers, and adds a hash table of item offsets to leaves for exact
//! lookups. We keep a sorted array instead: binary search over at most
//! [`BTREE_MAX_ITEMS`] headers needs no hash table, and shifting at most a
//! few tens of KiB on insert costs about the same as the crc32c over the
//! whole 64 KiB that every dirty block gets at write time anyway. The field
//! set of the headers (key, seq, flags, val_off, val_len; nr_items,
//! total_item_bytes, mid_free_len, level) is otherwise scoutfs's.

use bytemuck::{Pod, Zeroable};

use super::block::{BlockHeader, BlockRef, BLOCK_LG_SIZE};
use super::key::{DiskKey, Key};
use super::le::{Le16, Le64};

/// The largest value an item can carry. Small enough that a split always
/// leaves several items on each side.
pub const BTREE_MAX_VAL_LEN: usize = 896;
/// File-system items are limited by the btree's value length.
pub const MAX_VAL_SIZE: usize = BTREE_MAX_VAL_LEN;
/// A 4 EB test image reached height 17 in scoutfs; 20 is generous.
pub const BTREE_MAX_HEIGHT: u8 = 20;
/// Values start at multiples of this many bytes and take a multiple of it.
pub const BTREE_VALUE_ALIGN: usize = 8;
/// The value of an item in a parent block: a reference to the child.
pub const BTREE_PARENT_VAL_LEN: usize = std::mem::size_of::<BlockRef>();

/// Item flag: this item records the deletion of the key (in log trees) and
/// hides older versions of it; it has no value.
pub const ITEM_FLAG_DELETION: u8 = 1 << 0;
/// Every flag bit this format version knows.
pub const ITEM_FLAGS_KNOWN: u8 = ITEM_FLAG_DELETION;

/// The root of a btree: a reference to the top block and the tree's height.
/// Height 0 is an empty tree (null ref); height h has its root block at
/// level h - 1 and leaves at level 0. All zeros is a valid empty root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct BtreeRoot {
    pub ref_: BlockRef,
    pub height: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<BtreeRoot>() == 24);
const _: () = assert!(std::mem::align_of::<BtreeRoot>() == 1);

impl BtreeRoot {
    pub fn new(ref_: BlockRef, height: u8) -> Self {
        debug_assert!(height <= BTREE_MAX_HEIGHT);
        Self {
            ref_,
            height,
            _pad: [0; 7],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.height == 0
    }
}

/// The start of every btree block; item headers follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BtreeBlock {
    pub hdr: BlockHeader,
    /// Number of item headers after this struct.
    pub nr_items: Le16,
    /// Item header bytes plus the 8-aligned sizes of all live values.
    pub total_item_bytes: Le16,
    /// Free bytes between the end of the item headers and the lowest value.
    pub mid_free_len: Le16,
    /// 0 for leaves, the parent's level + 1 above them.
    pub level: u8,
    pub _pad: [u8; 9],
}
const _: () = assert!(std::mem::size_of::<BtreeBlock>() == 48);
const _: () = assert!(std::mem::align_of::<BtreeBlock>() == 1);

/// One item header in a btree block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BtreeItem {
    pub key: DiskKey,
    /// The transaction seq that wrote the item (newest wins when merging).
    pub seq: Le64,
    /// Byte offset of the value from the start of the block, 0 if none.
    pub val_off: Le16,
    pub val_len: Le16,
    /// `ITEM_FLAG_*`.
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(std::mem::size_of::<BtreeItem>() == 48);
const _: () = assert!(std::mem::align_of::<BtreeItem>() == 1);

impl BtreeItem {
    pub fn key(&self) -> Key {
        Key::from_disk(&self.key)
    }

    pub fn is_deletion(&self) -> bool {
        self.flags & ITEM_FLAG_DELETION != 0
    }
}

/// Size of the block header struct; the first item header starts here.
pub const BTREE_BLOCK_HDR_BYTES: usize = std::mem::size_of::<BtreeBlock>();
/// Size of one item header.
pub const BTREE_ITEM_HDR_BYTES: usize = std::mem::size_of::<BtreeItem>();
/// Bytes of a block available to item headers and values.
pub const BTREE_ITEM_SPACE: usize = BLOCK_LG_SIZE - BTREE_BLOCK_HDR_BYTES;
/// The most items a block can hold (all without values).
pub const BTREE_MAX_ITEMS: usize = BTREE_ITEM_SPACE / BTREE_ITEM_HDR_BYTES;

// Every count and offset fits the 16-bit fields.
const _: () = assert!(BTREE_ITEM_SPACE <= u16::MAX as usize);
const _: () = assert!(BLOCK_LG_SIZE - 1 <= u16::MAX as usize);
// A block always takes many items of the largest value size.
const _: () = assert!(BTREE_ITEM_SPACE / btree_item_bytes(BTREE_MAX_VAL_LEN) >= 64);

/// Bytes a value of `val_len` occupies in the value area.
pub const fn btree_val_space(val_len: usize) -> usize {
    (val_len + BTREE_VALUE_ALIGN - 1) & !(BTREE_VALUE_ALIGN - 1)
}

/// Bytes an item of `val_len` adds to `total_item_bytes`.
pub const fn btree_item_bytes(val_len: usize) -> usize {
    BTREE_ITEM_HDR_BYTES + btree_val_space(val_len)
}

/// Byte offset of item header `i`.
pub const fn btree_item_offset(i: usize) -> usize {
    BTREE_BLOCK_HDR_BYTES + i * BTREE_ITEM_HDR_BYTES
}

/// The block header of a btree block buffer.
///
/// Panics if `block` is shorter than the header (a caller's bug: blocks
/// are always `BLOCK_LG_SIZE`).
pub fn btree_block(block: &[u8]) -> &BtreeBlock {
    bytemuck::from_bytes(&block[..BTREE_BLOCK_HDR_BYTES])
}

pub fn btree_block_mut(block: &mut [u8]) -> &mut BtreeBlock {
    bytemuck::from_bytes_mut(&mut block[..BTREE_BLOCK_HDR_BYTES])
}

/// The item headers of a block, `nr_items` of them, clamped to what fits in
/// the buffer (so a corrupt count can't index past it).
pub fn btree_items(block: &[u8]) -> &[BtreeItem] {
    let nr = usize::from(btree_block(block).nr_items.get());
    let end = btree_item_offset(nr).min(block.len());
    let end = end - (end - BTREE_BLOCK_HDR_BYTES) % BTREE_ITEM_HDR_BYTES;
    bytemuck::cast_slice(&block[BTREE_BLOCK_HDR_BYTES..end])
}

/// Item headers `0..nr` of a block for modification; the caller sets
/// `nr_items`. Panics if `nr` headers don't fit in the buffer.
pub fn btree_items_mut(block: &mut [u8], nr: usize) -> &mut [BtreeItem] {
    bytemuck::cast_slice_mut(&mut block[BTREE_BLOCK_HDR_BYTES..btree_item_offset(nr)])
}

/// The value bytes of an item, or `None` if they don't lie in the block.
pub fn btree_item_value<'a>(block: &'a [u8], item: &BtreeItem) -> Option<&'a [u8]> {
    let off = usize::from(item.val_off.get());
    let len = usize::from(item.val_len.get());
    if len == 0 {
        return Some(&[]);
    }
    block.get(off..off.checked_add(len)?)
}

/// What is wrong with a btree block's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BtreeLayoutProblem {
    /// The buffer isn't a 64 KiB block.
    Length { found: usize },
    /// Level too high for any tree (>= BTREE_MAX_HEIGHT), or not the level
    /// the parent expected.
    Level { expected: Option<u8>, found: u8 },
    /// More item headers than fit.
    TooManyItems { nr_items: usize },
    /// The item headers and the free gap run past the block.
    MidFree {
        items_end: usize,
        mid_free_len: usize,
    },
    /// An item's flags hold unknown bits, or a parent item is a deletion.
    ItemFlags { index: usize, flags: u8 },
    /// An item's value is too long, misaligned, outside the value area, or
    /// (in a parent) not a block reference.
    ItemValue {
        index: usize,
        val_off: usize,
        val_len: usize,
    },
    /// Item keys are not strictly ascending at this index.
    KeyOrder { index: usize },
    /// Two values overlap.
    ValueOverlap { index: usize },
    /// `total_item_bytes` disagrees with the items.
    TotalItemBytes { expected: usize, found: usize },
}

/// A btree block whose layout is inconsistent (its header checked out, so
/// the block was written like this: corruption or a bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("btree block {blkno} layout: {problem:?}")]
pub struct BtreeLayoutError {
    pub blkno: u64,
    pub problem: BtreeLayoutProblem,
}

/// Check the layout invariants of a btree block whose header has already
/// been checked (see `check_block`): counts and offsets in bounds, keys
/// strictly ascending, values aligned, inside the value area and not
/// overlapping, `total_item_bytes` right, parent items are block refs.
/// `expected_level` is the level the referencing parent or root implies.
/// Never panics, whatever the buffer holds; does not allocate.
pub fn check_btree_layout(
    block: &[u8],
    expected_level: Option<u8>,
) -> Result<(), BtreeLayoutError> {
    let blkno = if block.len() >= BTREE_BLOCK_HDR_BYTES {
        btree_block(block).hdr.blkno.get()
    } else {
        0
    };
    let err = |problem| Err(BtreeLayoutError { blkno, problem });
    if block.len() != BLOCK_LG_SIZE {
        return err(BtreeLayoutProblem::Length { found: block.len() });
    }
    let bt = btree_block(block);
    let level = bt.level;
    if level >= BTREE_MAX_HEIGHT || expected_level.is_some_and(|l| l != level) {
        return err(BtreeLayoutProblem::Level {
            expected: expected_level,
            found: level,
        });
    }
    let nr = usize::from(bt.nr_items.get());
    if nr > BTREE_MAX_ITEMS {
        return err(BtreeLayoutProblem::TooManyItems { nr_items: nr });
    }
    let items_end = btree_item_offset(nr);
    let mid_free_len = usize::from(bt.mid_free_len.get());
    let val_start = items_end + mid_free_len;
    if val_start > BLOCK_LG_SIZE {
        return err(BtreeLayoutProblem::MidFree {
            items_end,
            mid_free_len,
        });
    }

    let items = btree_items(block);
    debug_assert_eq!(items.len(), nr);
    // (offset, aligned length) of each value, sorted below to find overlaps.
    let mut spans = [(0u16, 0u16); BTREE_MAX_ITEMS];
    let mut nr_spans = 0;
    let mut total = nr * BTREE_ITEM_HDR_BYTES;
    let mut prev: Option<Key> = None;
    for (index, item) in items.iter().enumerate() {
        let flags = item.flags;
        if flags & !ITEM_FLAGS_KNOWN != 0 || (level > 0 && item.is_deletion()) {
            return err(BtreeLayoutProblem::ItemFlags { index, flags });
        }
        let val_off = usize::from(item.val_off.get());
        let val_len = usize::from(item.val_len.get());
        let space = btree_val_space(val_len);
        let bad_value = val_len > BTREE_MAX_VAL_LEN
            || (level > 0 && val_len != BTREE_PARENT_VAL_LEN)
            || (val_len == 0 && val_off != 0)
            || (val_len > 0
                && (val_off % BTREE_VALUE_ALIGN != 0
                    || val_off < val_start
                    || val_off + space > BLOCK_LG_SIZE));
        if bad_value {
            return err(BtreeLayoutProblem::ItemValue {
                index,
                val_off,
                val_len,
            });
        }
        let key = item.key();
        if prev.is_some_and(|p| p >= key) {
            return err(BtreeLayoutProblem::KeyOrder { index });
        }
        prev = Some(key);
        if val_len > 0 {
            // Both fit u16: offsets are < BLOCK_LG_SIZE, space <= 896.
            spans[nr_spans] = (val_off as u16, space as u16);
            nr_spans += 1;
        }
        total += space;
    }
    let found = usize::from(bt.total_item_bytes.get());
    if found != total {
        return err(BtreeLayoutProblem::TotalItemBytes {
            expected: total,
            found,
        });
    }
    let spans = &mut spans[..nr_spans];
    spans.sort_unstable();
    for (index, w) in spans.windows(2).enumerate() {
        if usize::from(w[0].0) + usize::from(w[0].1) > usize::from(w[1].0) {
            return err(BtreeLayoutProblem::ValueOverlap { index: index + 1 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block::{seal_block, BlockMagic};
    use proptest::prelude::*;

    /// Build a block the simple way: headers in order, values packed down
    /// from the end.
    fn build(level: u8, items: &[(Key, u64, u8, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        let mut val_start = BLOCK_LG_SIZE;
        let mut total = 0;
        let mut hdrs = Vec::new();
        for (key, seq, flags, val) in items {
            let space = btree_val_space(val.len());
            let off = if val.is_empty() { 0 } else { val_start - space };
            if !val.is_empty() {
                val_start = off;
                b[off..off + val.len()].copy_from_slice(val);
            }
            total += btree_item_bytes(val.len());
            hdrs.push(BtreeItem {
                key: key.to_disk(),
                seq: (*seq).into(),
                val_off: (off as u16).into(),
                val_len: (val.len() as u16).into(),
                flags: *flags,
                _pad: [0; 3],
            });
        }
        btree_items_mut(&mut b, hdrs.len()).copy_from_slice(&hdrs);
        let bt = btree_block_mut(&mut b);
        bt.nr_items.set(hdrs.len() as u16);
        bt.total_item_bytes.set(total as u16);
        bt.mid_free_len
            .set((val_start - btree_item_offset(hdrs.len())) as u16);
        bt.level = level;
        seal_block(&mut b, BlockMagic::Btree, 1, 99, 5);
        b
    }

    fn leaf() -> Vec<u8> {
        build(
            0,
            &[
                (Key::inode(1), 3, 0, vec![1; 10]),
                (Key::inode(2), 4, ITEM_FLAG_DELETION, vec![]),
                (Key::inode(3), 5, 0, vec![2; BTREE_MAX_VAL_LEN]),
            ],
        )
    }

    #[test]
    fn built_blocks_check_clean_and_values_read_back() {
        let b = leaf();
        check_btree_layout(&b, Some(0)).unwrap();
        let items = btree_items(&b);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].key(), Key::inode(1));
        assert_eq!(btree_item_value(&b, &items[0]).unwrap(), &[1; 10]);
        assert!(items[1].is_deletion());
        assert_eq!(btree_item_value(&b, &items[1]).unwrap(), &[] as &[u8]);
        assert_eq!(
            btree_item_value(&b, &items[2]).unwrap(),
            &[2; BTREE_MAX_VAL_LEN][..]
        );
        assert_eq!(items[2].seq.get(), 5);

        let r = BlockRef::new(77, 8);
        let parent = build(1, &[(Key::MAX, 8, 0, bytemuck::bytes_of(&r).to_vec())]);
        check_btree_layout(&parent, Some(1)).unwrap();
        let v = btree_item_value(&parent, &btree_items(&parent)[0]).unwrap();
        assert_eq!(bytemuck::pod_read_unaligned::<BlockRef>(v), r);

        let empty = build(0, &[]);
        check_btree_layout(&empty, None).unwrap();
        assert_eq!(
            usize::from(btree_block(&empty).mid_free_len.get()),
            BTREE_ITEM_SPACE
        );
    }

    #[test]
    fn layout_problems_are_reported() {
        let problem = |b: &[u8], lvl| check_btree_layout(b, lvl).unwrap_err().problem;

        assert_eq!(
            problem(&leaf()[..100], None),
            BtreeLayoutProblem::Length { found: 100 }
        );
        assert!(matches!(
            problem(&leaf(), Some(1)),
            BtreeLayoutProblem::Level { .. }
        ));

        let mut b = leaf();
        btree_items_mut(&mut b, 3).swap(0, 2);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::KeyOrder { index: 1 }
        ));

        let mut b = leaf();
        btree_items_mut(&mut b, 3)[0].flags = 0x80;
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::ItemFlags { index: 0, .. }
        ));

        let mut b = leaf();
        btree_items_mut(&mut b, 3)[0]
            .val_off
            .set((BLOCK_LG_SIZE - 8) as u16);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::ItemValue { index: 0, .. }
        ));

        let mut b = leaf();
        let off = btree_items(&b)[2].val_off;
        btree_items_mut(&mut b, 3)[0].val_off = off;
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::ValueOverlap { .. }
        ));

        let mut b = leaf();
        btree_block_mut(&mut b).total_item_bytes.set(1);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::TotalItemBytes { found: 1, .. }
        ));

        let mut b = leaf();
        btree_block_mut(&mut b).nr_items.set(u16::MAX);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::TooManyItems { .. }
        ));

        let mut b = leaf();
        btree_block_mut(&mut b).mid_free_len.set(u16::MAX);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::MidFree { .. }
        ));

        // A leaf-sized value in a parent.
        let b = build(1, &[(Key::MAX, 1, 0, vec![0; 8])]);
        assert!(matches!(
            problem(&b, None),
            BtreeLayoutProblem::ItemValue { .. }
        ));
    }

    #[test]
    fn headers_round_trip_and_sit_where_documented() {
        let item = BtreeItem {
            key: Key::new(16, 5, 4, 0, 0, 0).to_disk(),
            seq: 0x1122.into(),
            val_off: 0x3344.into(),
            val_len: 0x55.into(),
            flags: ITEM_FLAG_DELETION,
            _pad: [0; 3],
        };
        let b = bytemuck::bytes_of(&item);
        assert_eq!(&b[32..34], &[0x22, 0x11]);
        assert_eq!(&b[40..42], &[0x44, 0x33]);
        assert_eq!(&b[42..44], &[0x55, 0]);
        assert_eq!(b[44], ITEM_FLAG_DELETION);
        assert_eq!(bytemuck::pod_read_unaligned::<BtreeItem>(b), item);

        let root = BtreeRoot::new(BlockRef::new(9, 10), 3);
        let rb = bytemuck::bytes_of(&root);
        assert_eq!(rb[16], 3);
        assert_eq!(bytemuck::pod_read_unaligned::<BtreeRoot>(rb), root);
        assert!(BtreeRoot::default().is_empty());
        assert_eq!(std::mem::offset_of!(BtreeBlock, level), 38);
        assert_eq!(BTREE_MAX_ITEMS, 1364);
        assert_eq!(btree_val_space(1), 8);
        assert_eq!(btree_val_space(896), 896);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_blocks_never_panic(seed in any::<u64>(), nr in 0u16..2000, lvl in 0u8..3) {
            let mut rng = crate::util::rng::SimRng::new(seed);
            let mut b = vec![0u8; BLOCK_LG_SIZE];
            for chunk in b.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            btree_block_mut(&mut b).nr_items.set(nr);
            btree_block_mut(&mut b).level = lvl;
            let _ = check_btree_layout(&b, None);
            for item in btree_items(&b) {
                let _ = btree_item_value(&b, item);
            }
        }

        #[test]
        fn mutated_blocks_never_panic(edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)) {
            // Small edits to the header and item headers of a valid block
            // reach every check past the first.
            let mut b = leaf();
            for (at, v) in edits {
                b[at] = v;
            }
            let _ = check_btree_layout(&b, Some(0));
            for item in btree_items(&b) {
                let _ = btree_item_value(&b, item);
            }
        }
    }
}
