//! The copy-on-write btree: variable-length items in 64 KiB blocks.
//!
//! A tree is a [`BtreeRoot`] (reference to the top block, height). Leaves
//! are level 0 and hold [`Item`]s (key, seq, flags, value up to
//! [`BTREE_MAX_VAL_LEN`] bytes); parents hold one item per child whose key
//! is the greatest key the child's subtree may hold and whose value is the
//! child's [`BlockRef`]. A search descends into the first child whose key
//! is >= the key sought. Block layout: `format::btree`; in-block
//! operations: [`node`]; changes: `change.rs`; walking and checking whole
//! trees: `check.rs`.
//!
//! # Miss and restart
//!
//! Every operation is a synchronous function over [`BlockAccess`]. A block
//! that isn't cached surfaces as `Err(BtreeError::Block(BlockError::Miss(r)))`;
//! the caller reads `r` and reruns the operation from the start. For that
//! to be safe, **an operation gets every block it could need before its
//! first change**: a change first descends and reads the whole path, and
//! for a change that can shrink a block, the siblings it might merge with
//! or borrow from; it computes which blocks will split and allocates them;
//! only then does it change anything. Dirtying a block (the copy-on-write
//! copy) and relinking the copy into its parent is not a change of the
//! tree's contents, so a restart after dirtying is harmless. Because the
//! reads, dirtying and allocations all happen before the first change,
//! *any* error (a miss, a corrupt block, no free metadata block) leaves the
//! tree as it was: consistent, with the same items.
//!
//! # Copy on write
//!
//! Before a block changes it is dirtied ([`BlockAccess::dirty`]) top-down,
//! the new reference stored in the (already dirty) parent or in the root.
//! A block that isn't dirty in the transaction is never changed. Blocks
//! that leave the tree (merged, shrunk away) go to [`BlockAccess::free`].
//!
//! # Shape
//!
//! - A block whose items would overflow it splits in two halves by bytes;
//!   the parent gains an item, which can split the parent in turn; a root
//!   split grows the tree by one level (at most [`BTREE_MAX_HEIGHT`]).
//! - A non-root block that falls below [`LOW_WATER_BYTES`] (a quarter of
//!   the item space) merges with a sibling when both fit in
//!   [`MERGE_MAX_BYTES`] (three quarters), or else takes items from it
//!   until the two hold about the same. A root parent left with one child
//!   is replaced by the child; an empty root leaf empties the tree.
//! - So every non-root block is at least a quarter full after every
//!   operation ([`check_tree`] verifies it), and a full block splits into
//!   halves that are well above the low-water mark.
//!
//! # Corruption
//!
//! Every block read is checked in constant time (level, counts, gap in
//! bounds: `node::check_header`) and every value read is bounds-checked,
//! so reads never panic and always end: a search answers only where the
//! keys around the gap it lands in bracket the key sought (`check_gap`),
//! and a range only while its keys strictly ascend, so keys out of order
//! are corruption, never a wrong "absent" or a caller sent back over keys
//! it has read. Before a change, every block it will touch gets the full
//! `check_btree_layout` (once a transaction: a dirty block was checked
//! when it was dirtied) and its first and last keys are checked against
//! the bounds its parent gives it. A block that fails is
//! `BtreeError::Corrupt` (and counts in [`CORRUPT_BLOCKS`]), never a panic.
//!
//! # Whole trees
//!
//! [`walk_blocks`] visits every block (to free a tree, to count blocks);
//! [`check_tree`] checks every invariant above and counts items. Both go
//! one leaf a step; [`BlockWalk`] and [`TreeCheck`] keep their place
//! across misses for trees larger than the cache. [`prefetch`] reads
//! every block a change of a key can touch, for layers that make several
//! changes which must all happen.

mod change;
mod check;
pub(crate) mod node;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{BlockAccess, BlockError};
use crate::format::block::{BlockMagic, BlockRef};
use crate::format::btree::{
    BtreeLayoutProblem, BtreeRoot, BTREE_ITEM_SPACE, BTREE_MAX_HEIGHT, BTREE_MAX_VAL_LEN,
    ITEM_FLAG_DELETION,
};
use crate::format::key::Key;

pub use change::{delete, insert, update, upsert};
pub use check::{
    check_tree, walk_blocks, BlockWalk, TreeCheck, TreeProblem, TreeProblemKind, TreeProblems,
    TreeStats, MAX_TREE_PROBLEMS,
};

/// A non-root block holding fewer item bytes than this merges with or
/// borrows from a sibling.
pub const LOW_WATER_BYTES: usize = BTREE_ITEM_SPACE / 4;
/// Two siblings whose items fit in this many bytes merge into one block;
/// above it they are rebalanced. Kept well below a full block so that a
/// merged block doesn't split again at the next insert.
pub const MERGE_MAX_BYTES: usize = BTREE_ITEM_SPACE * 3 / 4;

/// How many corrupt btree blocks operations have met (all trees, all
/// threads), for statistics.
pub static CORRUPT_BLOCKS: AtomicU64 = AtomicU64::new(0);

/// An item as callers see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    /// The transaction that wrote the item.
    pub seq: u64,
    /// `ITEM_FLAG_*` (format::btree).
    pub flags: u8,
    pub val: Vec<u8>,
}

impl Item {
    pub fn is_deletion(&self) -> bool {
        self.flags & ITEM_FLAG_DELETION != 0
    }
}

/// What is wrong with a block, beyond its header checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The block's own layout is inconsistent.
    Layout(BtreeLayoutProblem),
    /// The root claims a height above the maximum, or a height with no block.
    RootHeight { height: u8 },
    /// A parent block without items.
    EmptyParent,
    /// A key search found keys out of order at this index.
    KeyOrder { index: usize },
    /// The block's keys are not inside the bounds its parent gives it.
    KeyBounds { key: Key },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtreeError {
    /// The block layer failed; `Miss` means "read this block and rerun".
    #[error(transparent)]
    Block(#[from] BlockError),
    /// Insert of a key that is present.
    #[error("item exists")]
    Exists,
    /// Update or delete of a key that is absent.
    #[error("item not found")]
    NotFound,
    /// A value longer than `BTREE_MAX_VAL_LEN`.
    #[error("value of {len} bytes is longer than {BTREE_MAX_VAL_LEN}")]
    ValueTooLarge { len: usize },
    /// The tree would need more than `BTREE_MAX_HEIGHT` levels.
    #[error("btree would grow past {BTREE_MAX_HEIGHT} levels")]
    TooTall,
    /// A block's contents are inconsistent (its header and crc checked out
    /// when it was read, so it was written like this).
    #[error("corrupt btree block {blkno} (level {level}): {corruption:?}")]
    Corrupt {
        blkno: u64,
        level: u8,
        corruption: Corruption,
    },
    /// `check_tree` found these problems.
    #[error("{0}")]
    Invalid(TreeProblems),
}

impl BtreeError {
    /// The block that failed its checks and what differed, if this is
    /// corruption (a header check or the block's contents).
    pub fn corrupt_block(&self) -> Option<(u64, String)> {
        match self {
            BtreeError::Block(e) => e.corrupt_block(),
            BtreeError::Corrupt {
                blkno,
                level,
                corruption,
            } => Some((
                *blkno,
                format!("btree block at level {level}: {corruption:?}"),
            )),
            _ => None,
        }
    }

    /// The block to read before rerunning the operation, if that's all.
    pub fn miss(&self) -> Option<BlockRef> {
        match self {
            BtreeError::Block(BlockError::Miss(r)) => Some(*r),
            _ => None,
        }
    }
}

pub(crate) fn corrupt(r: &BlockRef, level: u8, corruption: Corruption) -> BtreeError {
    CORRUPT_BLOCKS.fetch_add(1, Ordering::Relaxed);
    BtreeError::Corrupt {
        blkno: r.blkno.get(),
        level,
        corruption,
    }
}

/// The reference and level of a root's top block, `None` for an empty
/// tree; a height past the maximum or a height without a block is corrupt.
pub(crate) fn root_top(root: &BtreeRoot) -> Result<Option<(BlockRef, u8)>, BtreeError> {
    if root.height == 0 {
        return Ok(None);
    }
    if root.height > BTREE_MAX_HEIGHT || root.ref_.is_null() {
        return Err(corrupt(
            &root.ref_,
            root.height,
            Corruption::RootHeight {
                height: root.height,
            },
        ));
    }
    Ok(Some((root.ref_, root.height - 1)))
}

/// Get block `r`, expected at `level`, with the constant-time checks.
pub(crate) fn read_block<'a>(
    blocks: &'a mut dyn BlockAccess,
    r: &BlockRef,
    level: u8,
) -> Result<&'a [u8], BtreeError> {
    let b = blocks.get(r, BlockMagic::Btree)?;
    if let Err(p) = node::check_header(b, level) {
        return Err(corrupt(r, level, Corruption::Layout(p)));
    }
    if level > 0 && node::nr_items(b) == 0 {
        return Err(corrupt(r, level, Corruption::EmptyParent));
    }
    Ok(b)
}

/// The child reference of parent item `i` of block `r`.
pub(crate) fn read_child(
    b: &[u8],
    r: &BlockRef,
    level: u8,
    i: usize,
) -> Result<BlockRef, BtreeError> {
    node::child_ref(b, i).ok_or_else(|| {
        let it = node::items(b)[i];
        corrupt(
            r,
            level,
            Corruption::Layout(BtreeLayoutProblem::ItemValue {
                index: i,
                val_off: usize::from(it.val_off.get()),
                val_len: usize::from(it.val_len.get()),
            }),
        )
    })
}

/// Leaf item `i` of block `r`, copied out.
fn read_item(b: &[u8], r: &BlockRef, i: usize) -> Result<Item, BtreeError> {
    let it = node::items(b)[i];
    let val = node::value(b, i).ok_or_else(|| {
        corrupt(
            r,
            0,
            Corruption::Layout(BtreeLayoutProblem::ItemValue {
                index: i,
                val_off: usize::from(it.val_off.get()),
                val_len: usize::from(it.val_len.get()),
            }),
        )
    })?;
    Ok(Item {
        key: it.key(),
        seq: it.seq.get(),
        flags: it.flags,
        val: val.to_vec(),
    })
}

/// What a read-only descent towards `key` found in the last parent.
struct LeafSpot {
    leaf: BlockRef,
    /// The key of the parent item that led to the leaf: every key after
    /// the leaf's is greater (`None`: the leaf is the root).
    upper: Option<Key>,
    /// The key of the parent item before the one that led to the leaf,
    /// in the deepest parent that has one: every key before the leaf's is
    /// at most this (`None`: nothing is before the leaf).
    lower: Option<Key>,
}

/// Descend towards `key` to the leaf that holds it if present. `past_end`
/// says what to do when `key` is greater than every key of a parent:
/// `false` gives `None` (no item >= key), `true` takes the last child (for
/// finding items <= key).
fn descend(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    key: &Key,
    past_end: bool,
) -> Result<Option<LeafSpot>, BtreeError> {
    let Some((mut r, top)) = root_top(root)? else {
        return Ok(None);
    };
    let mut spot = LeafSpot {
        leaf: r,
        upper: None,
        lower: None,
    };
    for level in (1..=top).rev() {
        let b = read_block(blocks, &r, level)?;
        let nr = node::nr_items(b);
        let mut i = node::lower_bound(b, key);
        if i == nr {
            if !past_end {
                return Ok(None);
            }
            i = nr - 1;
        } else if node::key_at(b, i) < *key {
            return Err(corrupt(&r, level, Corruption::KeyOrder { index: i }));
        }
        if i > 0 {
            let lower = node::key_at(b, i - 1);
            if lower >= *key {
                return Err(corrupt(&r, level, Corruption::KeyOrder { index: i }));
            }
            spot.lower = Some(lower);
        }
        spot.upper = Some(node::key_at(b, i));
        r = read_child(b, &r, level, i)?;
    }
    spot.leaf = r;
    Ok(Some(spot))
}

fn check_val_len(len: usize) -> Result<(), BtreeError> {
    if len > BTREE_MAX_VAL_LEN {
        return Err(BtreeError::ValueTooLarge { len });
    }
    Ok(())
}

/// The item with key `key`, if present.
pub fn lookup(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    let Some(spot) = descend(blocks, root, key, false)? else {
        return Ok(None);
    };
    let b = read_block(blocks, &spot.leaf, 0)?;
    match node::search(b, key) {
        Ok(i) => Ok(Some(read_item(b, &spot.leaf, i)?)),
        Err(i) => {
            // "Absent" is an answer callers act on (a create takes the
            // name): only give it where the keys around the gap agree.
            check_gap(b, &spot.leaf, i, key)?;
            Ok(None)
        }
    }
}

/// The keys around index `i` of leaf `r` bracket `key` (`key_at(i - 1) <
/// key <= key_at(i)`): what a binary search or lower bound relies on. A
/// block whose keys are out of order there is corrupt, so searches never
/// answer from unsorted keys (nor walk backwards over them).
fn check_gap(b: &[u8], r: &BlockRef, i: usize, key: &Key) -> Result<(), BtreeError> {
    let nr = node::nr_items(b);
    let below_ok = i == 0 || node::key_at(b, i - 1) < *key;
    let above_ok = i >= nr || node::key_at(b, i) >= *key;
    if below_ok && above_ok {
        Ok(())
    } else {
        Err(corrupt(r, 0, Corruption::KeyOrder { index: i }))
    }
}

/// The first item whose key is >= `key`.
pub fn next(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut from = *key;
    // Each round either finds the item or moves `from` past a parent item
    // key that is >= the previous `from`, so the rounds are bounded by the
    // number of leaves.
    loop {
        let Some(spot) = descend(blocks, root, &from, false)? else {
            return Ok(None);
        };
        let b = read_block(blocks, &spot.leaf, 0)?;
        let i = node::lower_bound(b, &from);
        check_gap(b, &spot.leaf, i, &from)?;
        if i < node::nr_items(b) {
            return Ok(Some(read_item(b, &spot.leaf, i)?));
        }
        match spot.upper.and_then(|u| u.next()) {
            Some(n) => from = n,
            None => return Ok(None),
        }
    }
}

/// The last item whose key is <= `key`.
pub fn prev(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut from = *key;
    // As in `next`, `from` strictly decreases over parent item keys.
    loop {
        let Some(spot) = descend(blocks, root, &from, true)? else {
            return Ok(None);
        };
        let b = read_block(blocks, &spot.leaf, 0)?;
        let i = match node::search(b, &from) {
            Ok(i) => Some(i),
            Err(i) => {
                check_gap(b, &spot.leaf, i, &from)?;
                i.checked_sub(1)
            }
        };
        if let Some(i) = i {
            return Ok(Some(read_item(b, &spot.leaf, i)?));
        }
        match spot.lower {
            Some(l) => from = l,
            None => return Ok(None),
        }
    }
}

/// Read (and so cache) every block that a change of `key` can need: the
/// path to the leaf that holds or would hold it and, at every level, the
/// blocks beside the path in the same parent (the siblings a merge or a
/// rebalance takes). A layer that makes several changes which must all
/// happen, or none, prefetches every key first, so that a miss comes
/// before its first change; that covers the merges near those keys, but
/// not a cascade that reaches further, so such a layer also makes its
/// changes safe to rerun (see the miss-and-restart rule above).
pub fn prefetch(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    key: &Key,
) -> Result<(), BtreeError> {
    let Some((mut r, top)) = root_top(root)? else {
        return Ok(());
    };
    for level in (1..=top).rev() {
        let b = read_block(blocks, &r, level)?;
        let nr = node::nr_items(b);
        let i = node::lower_bound(b, key).min(nr - 1);
        let child = read_child(b, &r, level, i)?;
        let left = match i {
            0 => None,
            _ => Some(read_child(b, &r, level, i - 1)?),
        };
        let right = match i + 1 < nr {
            true => Some(read_child(b, &r, level, i + 1)?),
            false => None,
        };
        for s in [left, right].into_iter().flatten() {
            read_block(blocks, &s, level - 1)?;
        }
        r = child;
    }
    read_block(blocks, &r, 0)?;
    Ok(())
}

/// The items with keys in `[first, last]`, in key order, at most
/// `max_items` of them. A caller that gets `max_items` continues from the
/// last key's `next()`.
pub fn range(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    first: &Key,
    last: &Key,
    max_items: usize,
) -> Result<Vec<Item>, BtreeError> {
    let mut out = Vec::new();
    let mut from = *first;
    while out.len() < max_items && from <= *last {
        let Some(spot) = descend(blocks, root, &from, false)? else {
            break;
        };
        let b = read_block(blocks, &spot.leaf, 0)?;
        let nr = node::nr_items(b);
        let mut i = node::lower_bound(b, &from);
        check_gap(b, &spot.leaf, i, &from)?;
        while i < nr && out.len() < max_items {
            let key = node::key_at(b, i);
            if key > *last {
                return Ok(out);
            }
            // Strictly ascending across the whole range, leaves included:
            // callers continue from the last key, so a key out of order
            // would send them back over keys already read.
            if out.last().is_some_and(|p: &Item| p.key >= key) {
                return Err(corrupt(&spot.leaf, 0, Corruption::KeyOrder { index: i }));
            }
            out.push(read_item(b, &spot.leaf, i)?);
            i += 1;
        }
        match spot.upper.and_then(|u| u.next()) {
            Some(n) if n > from => from = n,
            _ => break,
        }
    }
    Ok(out)
}

/// A btree error as [`Store::retry`](crate::block::store::Store::retry) sees it.
impl crate::block::store::MissError for BtreeError {
    fn miss(&self) -> Option<crate::format::BlockRef> {
        match self {
            BtreeError::Block(BlockError::Miss(r)) => Some(*r),
            _ => None,
        }
    }

    fn corrupt_block(&self) -> Option<(u64, String)> {
        BtreeError::corrupt_block(self)
    }
}
