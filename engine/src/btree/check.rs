//! Whole-tree walks: visiting every block (to free a tree, to account for
//! its blocks) and checking every invariant (for `scoutfs check` and the
//! tests).
//!
//! A walk goes one leaf at a time: each step descends from the root to the
//! next leaf in key order and visits it and the parents met for the first
//! time on the way, so parents come before their children. A step reads
//! all its blocks before it visits any, so a miss costs one root-to-leaf
//! path and the step is simply rerun: [`BlockWalk`] and [`TreeCheck`] keep
//! their place between steps, so a walk over a tree much larger than the
//! cache makes progress. [`walk_blocks`] and [`check_tree`] run a whole
//! walk in one call (a miss restarts it).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::block::{BlockAccess, BlockError};
use crate::format::block::{BlockMagic, BlockRef};
use crate::format::btree::{check_btree_layout, BtreeLayoutProblem, BtreeRoot, BTREE_MAX_HEIGHT};
use crate::format::key::Key;

use super::{corrupt, node, root_top, BtreeError, Corruption, LOW_WATER_BYTES};

/// Most problems one check reports (the rest are not looked for).
pub const MAX_TREE_PROBLEMS: usize = 1000;

/// A block on the way to a step's leaf, with the key bounds its parents
/// give it: its keys are in `(lower, upper]`.
#[derive(Clone, Copy, Debug)]
struct PathBlock {
    r: BlockRef,
    level: u8,
    lower: Option<Key>,
    upper: Option<Key>,
}

/// Why a step's descent stopped before a leaf.
#[derive(Clone, Debug)]
struct Stop {
    r: BlockRef,
    level: u8,
    kind: TreeProblemKind,
}

/// One step's descent: the blocks read, in root-to-leaf order, and where
/// the next step starts (`None`: the walk is done).
#[derive(Debug)]
struct StepPath {
    path: Vec<PathBlock>,
    stop: Option<Stop>,
    next: Option<Key>,
}

/// Read the path from the root towards the first leaf that can hold a key
/// at or after `from`. Only a miss is an error; other failures end the
/// path in a `Stop` and the next step starts past the failed subtree.
fn descend_step(
    blocks: &mut dyn BlockAccess,
    top_ref: BlockRef,
    top: u8,
    from: &Key,
) -> Result<StepPath, BtreeError> {
    let mut path = Vec::with_capacity(usize::from(top) + 1);
    let mut at = PathBlock {
        r: top_ref,
        level: top,
        lower: None,
        upper: None,
    };
    loop {
        let after = at.upper.and_then(|u| u.next());
        let stop = |kind| {
            Ok(StepPath {
                path: Vec::new(),
                stop: Some(Stop {
                    r: at.r,
                    level: at.level,
                    kind,
                }),
                next: after,
            })
        };
        let b = match blocks.get(&at.r, BlockMagic::Btree) {
            Ok(b) => b,
            Err(BlockError::Miss(r)) => return Err(BlockError::Miss(r).into()),
            Err(e) => return stop(TreeProblemKind::Block(e)).map(|s| s.with_path(path)),
        };
        if let Err(p) = node::check_header(b, at.level) {
            return stop(TreeProblemKind::Layout(p)).map(|s| s.with_path(path));
        }
        if at.level == 0 {
            path.push(at);
            return Ok(StepPath {
                path,
                stop: None,
                next: after,
            });
        }
        let nr = node::nr_items(b);
        if nr == 0 {
            return stop(TreeProblemKind::EmptyParent).map(|s| s.with_path(path));
        }
        let i = node::lower_bound(b, from);
        if i == nr {
            // Nothing under this parent is >= from: its subtree is done.
            path.push(at);
            return Ok(StepPath {
                path,
                stop: None,
                next: after,
            });
        }
        let key = node::key_at(b, i);
        if key < *from {
            // Unsorted keys: skip the parent's subtree (still progress,
            // as its upper bound is >= from).
            return stop(TreeProblemKind::Layout(BtreeLayoutProblem::KeyOrder {
                index: i,
            }))
            .map(|s| s.with_path(path));
        }
        let Some(child) = node::child_ref(b, i) else {
            let it = node::items(b)[i];
            let kind = TreeProblemKind::Layout(BtreeLayoutProblem::ItemValue {
                index: i,
                val_off: usize::from(it.val_off.get()),
                val_len: usize::from(it.val_len.get()),
            });
            path.push(at);
            return Ok(StepPath {
                path,
                stop: Some(Stop {
                    r: at.r,
                    level: at.level,
                    kind,
                }),
                next: key.next(),
            });
        };
        let lower = if i > 0 {
            Some(node::key_at(b, i - 1))
        } else {
            at.lower
        };
        path.push(at);
        at = PathBlock {
            r: child,
            level: at.level - 1,
            lower,
            upper: Some(key),
        };
    }
}

impl StepPath {
    fn with_path(mut self, path: Vec<PathBlock>) -> Self {
        self.path = path;
        self
    }
}

/// A walk over every block of a tree that keeps its place between steps.
#[derive(Clone, Debug)]
pub struct BlockWalk {
    root: BtreeRoot,
    /// Where the next step starts; `None` when the walk is done.
    from: Option<Key>,
    visited_parents: HashSet<u64>,
}

impl BlockWalk {
    pub fn new(root: &BtreeRoot) -> Self {
        BlockWalk {
            root: *root,
            from: (!root.is_empty()).then_some(Key::MIN),
            visited_parents: HashSet::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.from.is_none()
    }

    /// Visit the next leaf and the parents not visited yet on the way to
    /// it, parents first: `f(level, reference, contents)`. `f` is called
    /// only once every block of the step is read, so a miss (read the
    /// block, call `step` again) never visits a block twice. A corrupt
    /// block is an error. Returns whether blocks are left to visit.
    pub fn step(
        &mut self,
        blocks: &mut dyn BlockAccess,
        f: &mut dyn FnMut(u8, &BlockRef, &[u8]),
    ) -> Result<bool, BtreeError> {
        let Some(from) = self.from else {
            return Ok(false);
        };
        let Some((top_ref, top)) = root_top(&self.root)? else {
            self.from = None;
            return Ok(false);
        };
        let step = descend_step(blocks, top_ref, top, &from)?;
        if let Some(stop) = step.stop {
            let corruption = match stop.kind {
                TreeProblemKind::Block(e) => return Err(e.into()),
                TreeProblemKind::Layout(p) => Corruption::Layout(p),
                // The only other way a descent stops.
                _ => Corruption::EmptyParent,
            };
            return Err(corrupt(&stop.r, stop.level, corruption));
        }
        for pb in &step.path {
            if pb.level > 0 && self.visited_parents.contains(&pb.r.blkno.get()) {
                continue;
            }
            let b = blocks.get(&pb.r, BlockMagic::Btree)?;
            f(pb.level, &pb.r, b);
            if pb.level > 0 {
                self.visited_parents.insert(pb.r.blkno.get());
            }
        }
        debug_assert!(
            step.next.is_none_or(|n| n > from),
            "a walk step must progress"
        );
        self.from = step.next;
        Ok(self.from.is_some())
    }
}

/// Visit every block of the tree, parents before their children, leaves
/// in key order: `f(level, reference, contents)`. A miss stops the walk
/// (read the block and walk again from the start); a corrupt block is an
/// error. Use [`BlockWalk`] to keep the place across misses.
pub fn walk_blocks(
    blocks: &mut dyn BlockAccess,
    root: &BtreeRoot,
    f: &mut dyn FnMut(u8, &BlockRef, &[u8]),
) -> Result<(), BtreeError> {
    let mut walk = BlockWalk::new(root);
    while walk.step(blocks, f)? {}
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
    /// The block is referenced more than once.
    SharedBlock,
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
            TreeProblemKind::SharedBlock => write!(f, "referenced more than once"),
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

/// A check of every block of a tree that keeps its place between steps
/// (see [`check_tree`] for what it checks).
#[derive(Clone, Debug)]
pub struct TreeCheck {
    root: BtreeRoot,
    from: Option<Key>,
    /// Parents checked, with the bounds they were reached with: reaching
    /// one again by the same parent item is the walk passing through it,
    /// by another is a shared block.
    parents: HashMap<u64, (Option<Key>, Option<Key>)>,
    leaves: HashSet<u64>,
    stats: TreeStats,
    problems: Vec<TreeProblem>,
}

impl TreeCheck {
    pub fn new(root: &BtreeRoot) -> Self {
        let mut ck = TreeCheck {
            root: *root,
            from: None,
            parents: HashMap::new(),
            leaves: HashSet::new(),
            stats: TreeStats::default(),
            problems: Vec::new(),
        };
        match root_top(root) {
            Ok(Some((_, top))) => {
                ck.stats.height = top + 1;
                ck.from = Some(Key::MIN);
            }
            Ok(None) if root.ref_.is_null() => {}
            _ => ck.problem(
                &root.ref_,
                root.height.min(BTREE_MAX_HEIGHT),
                TreeProblemKind::RootHeight {
                    height: root.height,
                },
            ),
        }
        ck
    }

    fn problem(&mut self, r: &BlockRef, level: u8, kind: TreeProblemKind) {
        if self.problems.len() < MAX_TREE_PROBLEMS {
            self.problems.push(TreeProblem {
                blkno: r.blkno.get(),
                level,
                kind,
            });
        }
    }

    pub fn is_done(&self) -> bool {
        self.from.is_none() || self.problems.len() >= MAX_TREE_PROBLEMS
    }

    /// Check the next leaf and the parents first met on the way to it.
    /// A miss changes nothing: read the block and call `step` again.
    /// Returns whether blocks are left to check.
    pub fn step(&mut self, blocks: &mut dyn BlockAccess) -> Result<bool, BtreeError> {
        if self.is_done() {
            return Ok(false);
        }
        let Some(from) = self.from else {
            return Ok(false);
        };
        let Some((top_ref, top)) = root_top(&self.root)? else {
            self.from = None;
            return Ok(false);
        };
        let step = descend_step(blocks, top_ref, top, &from)?;
        // Every block of the step is cached: nothing below can miss.
        for pb in &step.path {
            let blkno = pb.r.blkno.get();
            let bounds = (pb.lower, pb.upper);
            let shared = if pb.level > 0 {
                match self.parents.get(&blkno) {
                    Some(b) if *b == bounds => continue,
                    Some(_) => true,
                    None => {
                        self.parents.insert(blkno, bounds);
                        self.leaves.contains(&blkno)
                    }
                }
            } else {
                !self.leaves.insert(blkno) || self.parents.contains_key(&blkno)
            };
            if shared {
                self.problem(&pb.r, pb.level, TreeProblemKind::SharedBlock);
                continue;
            }
            let b = blocks.get(&pb.r, BlockMagic::Btree)?;
            let found = check_block(b, pb, pb.level == top);
            self.add(&pb.r, pb.level, found);
        }
        if let Some(stop) = step.stop {
            self.problem(&stop.r, stop.level, stop.kind);
        }
        debug_assert!(
            step.next.is_none_or(|n| n > from),
            "a check step must progress"
        );
        self.from = step.next;
        Ok(!self.is_done())
    }

    fn add(&mut self, r: &BlockRef, level: u8, found: BlockFindings) {
        if let Some(s) = found.stats {
            self.stats.blocks += 1;
            self.stats.item_bytes += s.item_bytes;
            if level == 0 {
                self.stats.leaf_blocks += 1;
                self.stats.items += s.items;
                self.stats.deletion_items += s.deletion_items;
            }
        }
        for kind in found.problems.into_iter().flatten() {
            self.problem(r, level, kind);
        }
    }

    /// The counts, or every problem found.
    pub fn finish(self) -> Result<TreeStats, BtreeError> {
        if self.problems.is_empty() {
            Ok(self.stats)
        } else {
            Err(BtreeError::Invalid(TreeProblems(self.problems)))
        }
    }
}

/// What one block's check found.
struct BlockFindings {
    stats: Option<TreeStats>,
    problems: [Option<TreeProblemKind>; 4],
}

fn check_block(b: &[u8], pb: &PathBlock, is_root: bool) -> BlockFindings {
    let mut out = BlockFindings {
        stats: None,
        problems: [None, None, None, None],
    };
    if let Err(e) = check_btree_layout(b, Some(pb.level)) {
        out.problems[0] = Some(TreeProblemKind::Layout(e.problem));
        return out;
    }
    let nr = node::nr_items(b);
    let total = node::total_bytes(b);
    out.stats = Some(TreeStats {
        items: nr as u64,
        deletion_items: node::items(b).iter().filter(|it| it.is_deletion()).count() as u64,
        item_bytes: total as u64,
        ..TreeStats::default()
    });
    if !is_root && total < LOW_WATER_BYTES {
        out.problems[0] = Some(TreeProblemKind::Underfull {
            total_item_bytes: total,
        });
    }
    if is_root && pb.level > 0 && nr == 1 {
        out.problems[1] = Some(TreeProblemKind::SingleChildRoot);
    }
    // Keys ascend within the block (the layout check), so only the first
    // and last need to be inside the bounds.
    if nr > 0 {
        for (slot, i) in [(2, 0), (3, nr - 1)] {
            let key = node::key_at(b, i);
            if pb.lower.is_some_and(|l| key <= l) || pb.upper.is_some_and(|u| key > u) {
                out.problems[slot] = Some(TreeProblemKind::KeyOutOfBounds {
                    index: i,
                    key,
                    lower: pb.lower,
                    upper: pb.upper,
                });
            }
        }
    }
    out
}

/// Check every block of the tree: each block readable and its layout
/// consistent at the level its parent implies, every key inside the bounds
/// its parents give (so keys ascend across blocks), no empty parent, no
/// block referenced twice, every non-root block at or above the low-water
/// mark, no root parent with a single child. Returns the counts, or
/// `BtreeError::Invalid` with every problem found (up to
/// [`MAX_TREE_PROBLEMS`]; a block that can't be read is one of them). A
/// miss stops the check (read the block and check again); use
/// [`TreeCheck`] to keep the place across misses.
pub fn check_tree(blocks: &mut dyn BlockAccess, root: &BtreeRoot) -> Result<TreeStats, BtreeError> {
    let mut ck = TreeCheck::new(root);
    while ck.step(blocks)? {}
    ck.finish()
}
