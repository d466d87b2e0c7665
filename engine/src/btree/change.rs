//! Changing a tree: insert, update, upsert and delete, with the splits,
//! merges, rebalances and height changes they cause.
//!
//! Every change runs in four phases (see "Miss and restart" in `mod.rs`):
//! 1. **Read**: descend from the root, getting and checking each block of
//!    the path; decide the leaf change; work out which blocks will split
//!    (sizes only) or which siblings a shrinking block may merge with, and
//!    get those siblings. Errors here (a miss above all) change nothing.
//! 2. **Dirty**: copy-on-write the path top-down and the siblings, storing
//!    each new reference in its parent or the root.
//! 3. **Allocate** the blocks the splits need (and a new root).
//! 4. **Apply**: change the leaf, split or merge upwards, grow or shrink
//!    the root. Nothing in this phase can fail.

use crate::block::BlockAccess;
use crate::format::block::{BlockMagic, BlockRef};
use crate::format::btree::{
    btree_item_bytes, check_btree_layout, BtreeRoot, BTREE_ITEM_SPACE, BTREE_MAX_HEIGHT,
    BTREE_PARENT_VAL_LEN, ITEM_FLAGS_KNOWN,
};
use crate::format::key::Key;

use super::node::{self, NewItem};
use super::{
    check_val_len, corrupt, read_block, read_child, read_item, root_top, BtreeError, Corruption,
    Item, LOW_WATER_BYTES, MERGE_MAX_BYTES,
};

/// What a parent item adds to its block.
const PARENT_ITEM_BYTES: usize = btree_item_bytes(BTREE_PARENT_VAL_LEN);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Upsert,
    Delete,
}

/// One block of the path from the root (depth 0) to the leaf.
#[derive(Clone, Copy, Debug)]
struct Step {
    r: BlockRef,
    /// In a parent, the index of the child followed; in the leaf, the
    /// index of the key (found) or where it goes (not found).
    idx: usize,
    nr: usize,
    total: usize,
    /// The bound below the block's keys (they are all greater).
    lower: Option<Key>,
    /// The key is greater than every key of this parent: the last item's
    /// key is raised to it when the key is inserted.
    raise: bool,
}

/// The sibling of a path block that a merge or rebalance would use.
#[derive(Clone, Copy, Debug)]
struct Sibling {
    /// Its index in the parent (the path block's index +- 1).
    idx: usize,
    r: BlockRef,
}

#[derive(Clone, Copy, Debug)]
enum Change<'a> {
    Insert { pos: usize, item: NewItem<'a> },
    Replace { pos: usize, item: NewItem<'a> },
    Remove { pos: usize },
}

/// A block split in two: the original keeps the lower items, `right` (a
/// new block) has the upper ones.
#[derive(Clone, Copy, Debug)]
struct Split {
    left_last: Key,
    right: BlockRef,
    right_last: Key,
}

/// Insert `item`; `Exists` if its key is present.
pub fn insert(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    item: Item,
) -> Result<(), BtreeError> {
    change(blocks, root, &item.key, Op::Insert, Some(&item)).map(|_| ())
}

/// Replace the seq, flags and value of the item with `item`'s key;
/// `NotFound` if it is absent.
pub fn update(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    item: Item,
) -> Result<(), BtreeError> {
    change(blocks, root, &item.key, Op::Update, Some(&item)).map(|_| ())
}

/// Insert `item`, or replace the item with its key.
pub fn upsert(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    item: Item,
) -> Result<(), BtreeError> {
    change(blocks, root, &item.key, Op::Upsert, Some(&item)).map(|_| ())
}

/// Remove the item with `key` and return it; `NotFound` if it is absent.
pub fn delete(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    key: &Key,
) -> Result<Item, BtreeError> {
    change(blocks, root, key, Op::Delete, None)?.ok_or(BtreeError::NotFound)
}

fn new_item(item: &Item) -> NewItem<'_> {
    NewItem {
        key: item.key,
        seq: item.seq,
        flags: item.flags,
        val: &item.val,
    }
}

/// Get a block that this operation may change: the constant-time checks,
/// its keys inside the `(lower, upper]` bounds its parent gives it, and
/// the full layout check unless the block is dirty in this transaction
/// (then this tree wrote it and checked it when it dirtied it). So the
/// changes below never meet keys out of order, within or across blocks.
fn read_for_change<'a>(
    blocks: &'a mut dyn BlockAccess,
    r: &BlockRef,
    level: u8,
    lower: Option<Key>,
    upper: Option<Key>,
) -> Result<&'a [u8], BtreeError> {
    let dirty = blocks.is_dirty(r);
    let b = read_block(blocks, r, level)?;
    if !dirty {
        if let Err(e) = check_btree_layout(b, Some(level)) {
            return Err(corrupt(r, level, Corruption::Layout(e.problem)));
        }
    }
    let nr = node::nr_items(b);
    if nr > 0 {
        let (first, last) = (node::key_at(b, 0), node::key_at(b, nr - 1));
        if lower.is_some_and(|l| first <= l) {
            return Err(corrupt(r, level, Corruption::KeyBounds { key: first }));
        }
        if upper.is_some_and(|u| last > u) {
            return Err(corrupt(r, level, Corruption::KeyBounds { key: last }));
        }
    }
    Ok(b)
}

/// Returns the removed item for deletes.
fn change(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    key: &Key,
    op: Op,
    item: Option<&Item>,
) -> Result<Option<Item>, BtreeError> {
    if let Some(item) = item {
        check_val_len(item.val.len())?;
        assert_eq!(item.flags & !ITEM_FLAGS_KNOWN, 0, "unknown item flags");
    }
    let Some((top_ref, top)) = root_top(root)? else {
        return match (op, item) {
            (Op::Insert | Op::Upsert, Some(item)) => {
                let r = blocks.alloc(BlockMagic::Btree)?;
                let b = blocks.get_mut(&r);
                node::init(b, 0);
                node::insert(b, 0, &new_item(item));
                *root = BtreeRoot::new(r, 1);
                Ok(None)
            }
            _ => Err(BtreeError::NotFound),
        };
    };
    let height = usize::from(top) + 1;
    let level_of = |depth: usize| top - depth as u8;

    // Phase 1: read.
    let insertish = matches!(op, Op::Insert | Op::Upsert);
    let mut path: Vec<Step> = Vec::with_capacity(height);
    let mut r = top_ref;
    let (mut lower, mut upper) = (None, None);
    // The bytes of the item with the key, if present, and the item itself
    // when it is being deleted.
    let mut found: Option<usize> = None;
    let mut removed: Option<Item> = None;
    for level in (0..=top).rev() {
        let b = read_for_change(blocks, &r, level, lower, upper)?;
        let nr = node::nr_items(b);
        let total = node::total_bytes(b);
        if level > 0 {
            let mut idx = node::lower_bound(b, key);
            let mut raise = false;
            if idx == nr {
                if !insertish {
                    return Err(BtreeError::NotFound);
                }
                idx = nr - 1;
                raise = true;
            }
            let child = read_child(b, &r, level, idx)?;
            path.push(Step {
                r,
                idx,
                nr,
                total,
                lower,
                raise,
            });
            r = child;
            if idx > 0 {
                lower = Some(node::key_at(b, idx - 1));
            }
            upper = Some(node::key_at(b, idx));
        } else {
            let idx = match node::search(b, key) {
                Ok(i) => {
                    found = Some(node::item_bytes(b, i));
                    if op == Op::Delete {
                        removed = Some(read_item(b, &r, i)?);
                    }
                    i
                }
                Err(i) => i,
            };
            path.push(Step {
                r,
                idx,
                nr,
                total,
                lower,
                raise: false,
            });
        }
    }
    let leaf = path[height - 1];
    let change = match (op, found, item) {
        (Op::Insert, Some(_), _) => return Err(BtreeError::Exists),
        (Op::Update | Op::Delete, None, _) => return Err(BtreeError::NotFound),
        (Op::Insert | Op::Upsert, None, Some(item)) => Change::Insert {
            pos: leaf.idx,
            item: new_item(item),
        },
        (Op::Update | Op::Upsert, Some(_), Some(item)) => Change::Replace {
            pos: leaf.idx,
            item: new_item(item),
        },
        (Op::Delete, Some(_), None) => Change::Remove { pos: leaf.idx },
        _ => unreachable!("insert/update/upsert carry an item, delete doesn't"),
    };
    let old_bytes = found.unwrap_or(0);
    let new_bytes = match change {
        Change::Insert { item, .. } | Change::Replace { item, .. } => item.bytes(),
        Change::Remove { .. } => 0,
    };
    let leaf_after = leaf.total - old_bytes + new_bytes;

    // Blocks that will split (each needs a new block), and a new root.
    let mut nr_alloc = 0;
    if leaf_after > BTREE_ITEM_SPACE {
        let mut depth = height - 1;
        loop {
            nr_alloc += 1;
            if depth == 0 {
                if height == usize::from(BTREE_MAX_HEIGHT) {
                    return Err(BtreeError::TooTall);
                }
                nr_alloc += 1;
                break;
            }
            if path[depth - 1].total + PARENT_ITEM_BYTES <= BTREE_ITEM_SPACE {
                break;
            }
            depth -= 1;
        }
    }

    // Siblings that a shrinking block may merge with or borrow from: at
    // the leaf if it falls under the low-water mark, and above it for as
    // long as a merge below would take the parent under it.
    let mut sibs: [Option<Sibling>; BTREE_MAX_HEIGHT as usize] = [None; BTREE_MAX_HEIGHT as usize];
    if leaf_after < leaf.total {
        let mut after = leaf_after;
        for depth in (1..height).rev() {
            if after >= LOW_WATER_BYTES {
                break;
            }
            let p = path[depth - 1];
            if p.nr < 2 {
                break;
            }
            let idx = if p.idx + 1 < p.nr {
                p.idx + 1
            } else {
                p.idx - 1
            };
            let pb = read_block(blocks, &p.r, level_of(depth - 1))?;
            let sr = read_child(pb, &p.r, level_of(depth - 1), idx)?;
            let s_lower = if idx > 0 {
                Some(node::key_at(pb, idx - 1))
            } else {
                p.lower
            };
            let s_upper = Some(node::key_at(pb, idx));
            read_for_change(blocks, &sr, level_of(depth), s_lower, s_upper)?;
            sibs[depth] = Some(Sibling { idx, r: sr });
            after = p.total - PARENT_ITEM_BYTES;
        }
    }

    // Phase 2: dirty the path top-down, then the siblings.
    for depth in 0..height {
        let old_ref = path[depth].r;
        let new_ref = blocks.dirty(&old_ref, BlockMagic::Btree)?;
        if new_ref != old_ref {
            path[depth].r = new_ref;
            if depth == 0 {
                root.ref_ = new_ref;
            } else {
                let p = path[depth - 1];
                node::set_child(blocks.get_mut(&p.r), p.idx, &new_ref);
            }
        }
    }
    for depth in 1..height {
        let Some(sib) = sibs[depth].as_mut() else {
            continue;
        };
        let new_ref = blocks.dirty(&sib.r, BlockMagic::Btree)?;
        if new_ref != sib.r {
            sib.r = new_ref;
            node::set_child(blocks.get_mut(&path[depth - 1].r), sib.idx, &new_ref);
        }
    }

    // Phase 3: allocate.
    let mut fresh: Vec<BlockRef> = Vec::with_capacity(nr_alloc);
    for _ in 0..nr_alloc {
        match blocks.alloc(BlockMagic::Btree) {
            Ok(r) => fresh.push(r),
            Err(e) => {
                for r in &fresh {
                    blocks.free(r);
                }
                return Err(e.into());
            }
        }
    }

    // Phase 4: apply.
    if let Change::Insert { .. } = change {
        for step in &path[..height - 1] {
            if step.raise {
                node::set_key(blocks.get_mut(&step.r), step.idx, key);
            }
        }
    }
    if leaf_after > leaf.total {
        apply_growing(blocks, root, &path, change, fresh);
    } else {
        debug_assert!(fresh.is_empty());
        node_apply(blocks.get_mut(&path[height - 1].r), &change);
        if leaf_after < leaf.total {
            rebalance_upwards(blocks, &path, &sibs);
            shrink_root(blocks, root);
        }
    }
    Ok(removed)
}

/// Whether `change` fits block `b` (after compaction).
fn change_fits(b: &[u8], change: &Change<'_>) -> bool {
    match change {
        Change::Insert { item, .. } => node::fits(b, item.bytes()),
        Change::Replace { pos, item } => {
            node::total_bytes(b) - node::item_bytes(b, *pos) + item.bytes() <= BTREE_ITEM_SPACE
        }
        Change::Remove { .. } => true,
    }
}

fn node_apply(b: &mut [u8], change: &Change<'_>) {
    match *change {
        Change::Insert { pos, item } => node::insert(b, pos, &item),
        Change::Replace { pos, item } => node::replace(b, pos, item.seq, item.flags, item.val),
        Change::Remove { pos } => node::remove(b, pos),
    }
}

/// Apply `change` to block `blk`, splitting it first (into `blk` and a
/// block from `fresh`) if it doesn't fit.
fn apply_or_split(
    blocks: &mut dyn BlockAccess,
    blk: &BlockRef,
    level: u8,
    change: Change<'_>,
    fresh: &mut Vec<BlockRef>,
) -> Option<Split> {
    let b = blocks.get_mut(blk);
    if change_fits(b, &change) {
        node_apply(b, &change);
        return None;
    }
    let nr = node::nr_items(b);
    let s = node::split_point(b);
    let copy = b.to_vec();
    node::truncate(b, s);
    let left_total = node::total_bytes(b);
    let right = fresh.pop().expect("a block was allocated for each split");
    let rb = blocks.get_mut(&right);
    node::init(rb, level);
    node::append(rb, &copy, s..nr);
    let right_total = node::total_bytes(rb);

    let (target, change) = match change {
        Change::Insert { pos, item } if pos < s || (pos == s && left_total <= right_total) => {
            (*blk, Change::Insert { pos, item })
        }
        Change::Insert { pos, item } => (right, Change::Insert { pos: pos - s, item }),
        Change::Replace { pos, item } if pos < s => (*blk, Change::Replace { pos, item }),
        Change::Replace { pos, item } => (right, Change::Replace { pos: pos - s, item }),
        Change::Remove { .. } => unreachable!("a removal always fits"),
    };
    let tb = blocks.get_mut(&target);
    assert!(
        change_fits(tb, &change),
        "a split half can't take the change"
    );
    node_apply(tb, &change);

    let lb = blocks.get_mut(blk);
    debug_assert!(node::total_bytes(lb) >= LOW_WATER_BYTES);
    let left_last = node::last_key(lb).expect("split halves have items");
    let rb = blocks.get_mut(&right);
    debug_assert!(node::total_bytes(rb) >= LOW_WATER_BYTES);
    let right_last = node::last_key(rb).expect("split halves have items");
    Some(Split {
        left_last,
        right,
        right_last,
    })
}

/// Apply a leaf change that grows the leaf: split up the path as far as
/// needed and grow a new root if the root split.
fn apply_growing(
    blocks: &mut dyn BlockAccess,
    root: &mut BtreeRoot,
    path: &[Step],
    change: Change<'_>,
    mut fresh: Vec<BlockRef>,
) {
    let height = path.len();
    let top = (height - 1) as u8;
    let mut depth = height - 1;
    let mut split = apply_or_split(blocks, &path[depth].r, 0, change, &mut fresh);
    while let Some(sp) = split {
        let level = top - depth as u8;
        let left = path[depth].r;
        let left_val: [u8; BTREE_PARENT_VAL_LEN] = bytemuck::cast(left);
        if depth == 0 {
            let right_val: [u8; BTREE_PARENT_VAL_LEN] = bytemuck::cast(sp.right);
            let new_root = fresh.pop().expect("a block was allocated for the new root");
            let b = blocks.get_mut(&new_root);
            node::init(b, level + 1);
            let left_item = NewItem {
                key: sp.left_last,
                seq: left.seq.get(),
                flags: 0,
                val: &left_val,
            };
            node::insert(b, 0, &left_item);
            let right_item = NewItem {
                key: sp.right_last,
                seq: sp.right.seq.get(),
                flags: 0,
                val: &right_val,
            };
            node::insert(b, 1, &right_item);
            *root = BtreeRoot::new(new_root, root.height + 1);
            break;
        }
        // The parent item that led here now leads to the right half (its
        // key still bounds it); a new item before it leads to the left.
        let p = path[depth - 1];
        node::set_child(blocks.get_mut(&p.r), p.idx, &sp.right);
        let item = NewItem {
            key: sp.left_last,
            seq: left.seq.get(),
            flags: 0,
            val: &left_val,
        };
        let change = Change::Insert { pos: p.idx, item };
        split = apply_or_split(blocks, &p.r, level + 1, change, &mut fresh);
        depth -= 1;
    }
    assert!(fresh.is_empty(), "allocated more blocks than splits");
}

/// After a leaf shrank: while a path block is under the low-water mark,
/// merge it with its sibling (the parent loses an item and may fall under
/// in turn) or take items from the sibling (which ends it).
fn rebalance_upwards(blocks: &mut dyn BlockAccess, path: &[Step], sibs: &[Option<Sibling>]) {
    let mut depth = path.len() - 1;
    while depth > 0 {
        let blk = path[depth].r;
        if node::total_bytes(blocks.get_mut(&blk)) >= LOW_WATER_BYTES {
            break;
        }
        let Some(sib) = sibs[depth] else {
            break;
        };
        let p = path[depth - 1];
        let ((li, l), (ri, r)) = if sib.idx > p.idx {
            ((p.idx, blk), (sib.idx, sib.r))
        } else {
            ((sib.idx, sib.r), (p.idx, blk))
        };
        debug_assert_eq!(li + 1, ri);
        let lt = node::total_bytes(blocks.get_mut(&l));
        let rt = node::total_bytes(blocks.get_mut(&r));
        if lt + rt <= MERGE_MAX_BYTES {
            // Merge the right block into the left; the right's parent
            // item (whose key bounds both) now leads to the left.
            let copy = blocks.get_mut(&r).to_vec();
            let n = node::nr_items(&copy);
            node::append(blocks.get_mut(&l), &copy, 0..n);
            let pb = blocks.get_mut(&p.r);
            node::set_child(pb, ri, &l);
            node::remove(pb, li);
            blocks.free(&r);
            depth -= 1;
            continue;
        }
        // Even out the two; the parent's item count doesn't change.
        let target = (lt + rt) / 2;
        if lt < rt {
            let copy = blocks.get_mut(&r).to_vec();
            let c = node::head_count_for(&copy, lt, target);
            node::append(blocks.get_mut(&l), &copy, 0..c);
            node::remove_head(blocks.get_mut(&r), c);
        } else {
            let copy = blocks.get_mut(&l).to_vec();
            let c = node::tail_count_for(&copy, rt, target);
            let n = node::nr_items(&copy);
            node::prepend(blocks.get_mut(&r), &copy, n - c..n);
            node::truncate(blocks.get_mut(&l), n - c);
        }
        let lb = blocks.get_mut(&l);
        debug_assert!(node::total_bytes(lb) >= LOW_WATER_BYTES);
        let lk = node::last_key(lb).expect("a rebalanced block keeps items");
        debug_assert!(node::total_bytes(blocks.get_mut(&r)) >= LOW_WATER_BYTES);
        node::set_key(blocks.get_mut(&p.r), li, &lk);
        break;
    }
}

/// An empty root leaf empties the tree; a root parent with a single
/// (dirty) child is replaced by the child.
fn shrink_root(blocks: &mut dyn BlockAccess, root: &mut BtreeRoot) {
    while root.height > 0 {
        let r = root.ref_;
        let b = blocks.get_mut(&r);
        let nr = node::nr_items(b);
        if root.height == 1 {
            if nr == 0 {
                blocks.free(&r);
                *root = BtreeRoot::default();
            }
            return;
        }
        if nr != 1 {
            return;
        }
        let Some(child) = node::child_ref(b, 0) else {
            return;
        };
        if !blocks.is_dirty(&child) {
            return;
        }
        blocks.free(&r);
        *root = BtreeRoot::new(child, root.height - 1);
    }
}
