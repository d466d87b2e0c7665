//! Whole-tree walks: visiting every block (to free a tree, to account for
//! its blocks) and checking every invariant (for `scoutfs check` and the
//! tests).

use std::fmt;

use crate::block::{BlockAccess, BlockError};
use crate::format::block::{BlockMagic, BlockRef};
use crate::format::btree::{check_btree_layout, BtreeLayoutProblem, BtreeRoot, BTREE_MAX_HEIGHT};
use crate::format::key::Key;

use super::{node, read_block, read_child, root_top, BtreeError, LOW_WATER_BYTES};

/// Visit every block of the tree, parents before their children, children
/// in key order: `f(level, reference, contents)`. A miss stops the walk
/// (read the block and walk again from the start).
pub fn walk_blocks(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    f: &mut dyn FnMut(u8, &BlockRef, &[u8]),
) -> Result<(), BtreeError> {
    let Some((r, top)) = root_top(root)? else {
        return Ok(());
    };
    walk(blocks, &r, top, f)
}

fn walk(
    blocks: &mut dyn BlockAccess,
    r: &BlockRef,
    level: u8,
    f: &mut dyn FnMut(u8, &BlockRef, &[u8]),
) -> Result<(), BtreeError> {
    let b = read_block(blocks, r, level)?;
    f(level, r, b);
    if level == 0 {
        return Ok(());
    }
    let children = (0..node::nr_items(b))
        .map(|i| read_child(b, r, level, i))
        .collect::<Result<Vec<_>, _>>()?;
    for c in &children {
        walk(blocks, c, level - 1, f)?;
    }
    Ok(())
}

/// What `check_tree` counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub height: u8,
    pub blocks: u64,
    pub leaf_blocks: u64,
    /// Leaf items, deletion items included.
    pub items: u64,
    pub deletion_items: u64,
    /// Sum of the blocks' `total_item_bytes`.
    pub item_bytes: u64,
}

/// One problem `check_tree` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeProblem {
    pub blkno: u64,
    pub level: u8,
    pub kind: TreeProblemKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeProblemKind {
    /// The root's height is past the maximum or has no block.
    RootHeight { height: u8 },
    /// The block couldn't be read (bad header, crc, stale, I/O).
    Block(BlockError),
    /// The block's layout is inconsistent (or not at the expected level).
    Layout(BtreeLayoutProblem),
    /// A parent block without items.
    EmptyParent,
    /// A key outside the range the parents give the block:
    /// `(lower, upper]`.
    KeyOutOfBounds {
        index: usize,
        key: Key,
        lower: Option<Key>,
        upper: Option<Key>,
    },
    /// A non-root block under the low-water mark.
    Underfull { total_item_bytes: usize },
    /// A root parent with a single child (the tree should have shrunk).
    SingleChildRoot,
}

impl fmt::Display for TreeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "btree block {} (level {}): ", self.blkno, self.level)?;
        match &self.kind {
            TreeProblemKind::RootHeight { height } => write!(f, "root height {height} is invalid"),
            TreeProblemKind::Block(e) => write!(f, "{e}"),
            TreeProblemKind::Layout(p) => write!(f, "layout: {p:?}"),
            TreeProblemKind::EmptyParent => write!(f, "parent block without items"),
            TreeProblemKind::KeyOutOfBounds {
                index,
                key,
                lower,
                upper,
            } => {
                let show = |k: &Option<Key>| k.map_or("-".to_string(), |k| k.to_string());
                write!(
                    f,
                    "item {index} key {key} outside ({}, {}]",
                    show(lower),
                    show(upper)
                )
            }
            TreeProblemKind::Underfull { total_item_bytes } => write!(
                f,
                "{total_item_bytes} item bytes, under the low-water mark {LOW_WATER_BYTES}"
            ),
            TreeProblemKind::SingleChildRoot => write!(f, "root parent with a single child"),
        }
    }
}

/// Most problems one check reports (the rest are not looked for).
pub const MAX_TREE_PROBLEMS: usize = 1000;

struct Checker {
    stats: TreeStats,
    problems: Vec<TreeProblem>,
}

impl Checker {
    fn problem(&mut self, r: &BlockRef, level: u8, kind: TreeProblemKind) {
        if self.problems.len() < MAX_TREE_PROBLEMS {
            self.problems.push(TreeProblem {
                blkno: r.blkno.get(),
                level,
                kind,
            });
        }
    }
}

/// Every problem a check found, for printing one a line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeProblems(pub Vec<TreeProblem>);

impl fmt::Display for TreeProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} btree problem(s)", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Check every block of the tree: each block readable and its layout
/// consistent at the level its parent implies, every key inside the bounds
/// its parents give (so keys ascend across blocks), no empty parent, every
/// non-root block at or above the low-water mark, no root parent with a
/// single child. Returns the counts, or `BtreeError::Invalid` with every
/// problem found (up to [`MAX_TREE_PROBLEMS`]; a block that can't be read
/// is one of them). A miss stops the check (read the block and check
/// again), so the check runs under the same retry as every operation.
pub fn check_tree(blocks: &mut dyn BlockAccess, root: &BtreeRoot) -> Result<TreeStats, BtreeError> {
    let mut ck = Checker {
        stats: TreeStats::default(),
        problems: Vec::new(),
    };
    let top = match root_top(root) {
        Ok(Some((r, top))) => Some((r, top)),
        Ok(None) => {
            if !root.ref_.is_null() {
                ck.problem(
                    &root.ref_,
                    0,
                    TreeProblemKind::RootHeight {
                        height: root.height,
                    },
                );
            }
            None
        }
        Err(_) => {
            ck.problem(
                &root.ref_,
                root.height.min(BTREE_MAX_HEIGHT),
                TreeProblemKind::RootHeight {
                    height: root.height,
                },
            );
            None
        }
    };
    if let Some((r, top)) = top {
        ck.stats.height = top + 1;
        check_block(blocks, &mut ck, &r, top, true, None, None)?;
    }
    if ck.problems.is_empty() {
        Ok(ck.stats)
    } else {
        Err(BtreeError::Invalid(TreeProblems(ck.problems)))
    }
}

fn check_block(
    blocks: &mut dyn BlockAccess,
    ck: &mut Checker,
    r: &BlockRef,
    level: u8,
    is_root: bool,
    lower: Option<Key>,
    upper: Option<Key>,
) -> Result<(), BtreeError> {
    let b = match blocks.get(r, BlockMagic::Btree) {
        Ok(b) => b,
        Err(e @ BlockError::Miss(_)) => return Err(e.into()),
        Err(e) => {
            ck.problem(r, level, TreeProblemKind::Block(e));
            return Ok(());
        }
    };
    if let Err(e) = check_btree_layout(b, Some(level)) {
        ck.problem(r, level, TreeProblemKind::Layout(e.problem));
        return Ok(());
    }
    let nr = node::nr_items(b);
    let total = node::total_bytes(b);
    ck.stats.blocks += 1;
    ck.stats.item_bytes += total as u64;
    if level == 0 {
        ck.stats.leaf_blocks += 1;
        ck.stats.items += nr as u64;
        ck.stats.deletion_items +=
            node::items(b).iter().filter(|it| it.is_deletion()).count() as u64;
    }
    if level > 0 && nr == 0 {
        ck.problem(r, level, TreeProblemKind::EmptyParent);
        return Ok(());
    }
    if !is_root && total < LOW_WATER_BYTES {
        ck.problem(
            r,
            level,
            TreeProblemKind::Underfull {
                total_item_bytes: total,
            },
        );
    }
    if is_root && level > 0 && nr == 1 {
        ck.problem(r, level, TreeProblemKind::SingleChildRoot);
    }
    // Keys ascend within the block (the layout check), so only the first
    // and last need to be inside the bounds.
    for i in [0, nr.saturating_sub(1)] {
        if i >= nr {
            break;
        }
        let key = node::key_at(b, i);
        if lower.is_some_and(|l| key <= l) || upper.is_some_and(|u| key > u) {
            ck.problem(
                r,
                level,
                TreeProblemKind::KeyOutOfBounds {
                    index: i,
                    key,
                    lower,
                    upper,
                },
            );
        }
    }
    if level == 0 {
        return Ok(());
    }
    // The layout check made every parent value a block reference.
    let children: Vec<(Key, BlockRef)> = (0..nr)
        .map(|i| Ok((node::key_at(b, i), read_child(b, r, level, i)?)))
        .collect::<Result<_, BtreeError>>()?;
    let mut child_lower = lower;
    for (key, child) in children {
        check_block(blocks, ck, &child, level - 1, false, child_lower, Some(key))?;
        child_lower = Some(key);
    }
    Ok(())
}
