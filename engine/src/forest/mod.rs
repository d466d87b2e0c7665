//! The forest: items as readers see them, merged over the fs root and the
//! log trees; and the merge that folds finalized log trees into the fs root.
//!
//! Every item carries the seq of the transaction that wrote it. A reader
//! takes, for each key, the version with the greatest seq across the fs
//! root and all log trees; a deletion item (flag DELETION) hides older
//! versions and is itself invisible. Log trees are written only by their
//! mount; the fs root only by merges.
//!
//! All functions are synchronous over [`BlockAccess`] and follow the
//! btree's miss-and-restart rule. Merging is idempotent item by item (an
//! item already applied is applied again to the same effect), so a merge
//! interrupted by a miss can simply be rerun.

use crate::block::BlockAccess;
use crate::btree::{self, BtreeError, Item};
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::{BtreeRoot, Key};

/// The trees a read merges: the fs root and every log tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForestRoots {
    pub fs_root: BtreeRoot,
    pub log_roots: Vec<BtreeRoot>,
}

impl ForestRoots {
    fn trees(&self) -> impl Iterator<Item = &BtreeRoot> {
        std::iter::once(&self.fs_root)
            .chain(self.log_roots.iter())
            .filter(|r| !r.is_empty())
    }
}

fn newer(a: &Item, b: &Item) -> bool {
    a.seq > b.seq
        || (a.seq == b.seq
            && a.flags & ITEM_FLAG_DELETION != 0
            && b.flags & ITEM_FLAG_DELETION == 0)
}

/// The newest version of `key` across the forest, including deletions.
fn newest(
    blocks: &mut dyn BlockAccess,
    roots: &ForestRoots,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut best: Option<Item> = None;
    for root in roots.trees() {
        if let Some(it) = btree::lookup(blocks, root, key)? {
            if best.as_ref().is_none_or(|b| newer(&it, b)) {
                best = Some(it);
            }
        }
    }
    Ok(best)
}

/// Whether any of the trees has a version of `key` (a deletion counts).
pub fn holds_any_version(
    blocks: &mut dyn BlockAccess,
    roots: &ForestRoots,
    key: &Key,
) -> Result<bool, BtreeError> {
    Ok(newest(blocks, roots, key)?.is_some())
}

/// The visible item at `key`.
pub fn lookup(
    blocks: &mut dyn BlockAccess,
    roots: &ForestRoots,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    Ok(newest(blocks, roots, key)?.filter(|it| it.flags & ITEM_FLAG_DELETION == 0))
}

/// The smallest key at or after `from` (and at most `last`) in any of the
/// trees, in its newest version (which may be a deletion).
fn first_from<'a>(
    blocks: &mut dyn BlockAccess,
    trees: impl Iterator<Item = &'a BtreeRoot>,
    from: &Key,
    last: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut best: Option<Item> = None;
    for root in trees {
        let Some(it) = btree::next(blocks, root, from)? else {
            continue;
        };
        if it.key > *last {
            continue;
        }
        let better = match &best {
            None => true,
            Some(b) => it.key < b.key || (it.key == b.key && newer(&it, b)),
        };
        if better {
            best = Some(it);
        }
    }
    Ok(best)
}

/// The first visible item with a key in `[key, last]`.
pub fn next(
    blocks: &mut dyn BlockAccess,
    roots: &ForestRoots,
    key: &Key,
    last: &Key,
) -> Result<Option<Item>, BtreeError> {
    Ok(range(blocks, roots, key, last, 1)?.into_iter().next())
}

/// Most items each tree is read ahead by, per descent: deletion items
/// (many in a log tree after a file's extents were rewritten) are skipped
/// a batch at a time instead of one descent each. Batches start small
/// (a `next` usually wants one item) and double while rounds find
/// nothing visible.
const MAX_BATCH: usize = 256;

/// Visible items in `[first, last]`, at most `max`.
///
/// Each tree is read in batches of keys; a key is decided once every tree
/// has been read past it (its newest version is then known), so keys up to
/// the smallest "read up to" mark of the trees are merged, deletions and
/// older versions dropped, and the trees read on from there.
pub fn range(
    blocks: &mut dyn BlockAccess,
    roots: &ForestRoots,
    first: &Key,
    last: &Key,
    max: usize,
) -> Result<Vec<Item>, BtreeError> {
    let mut out = Vec::new();
    let mut from = *first;
    let trees: Vec<&BtreeRoot> = roots.trees().collect();
    let mut batch = max.clamp(4, MAX_BATCH);
    while out.len() < max && from <= *last {
        let found_before = out.len();
        // The newest version of each key read, and how far every tree has
        // been read (a tree that ran out of keys is read to `last`).
        let mut merged: std::collections::BTreeMap<Key, Item> = std::collections::BTreeMap::new();
        let mut horizon = *last;
        for root in &trees {
            let items = btree::range(blocks, root, &from, last, batch)?;
            if items.len() == batch {
                let end = items.last().expect("a full batch").key;
                horizon = horizon.min(end);
            }
            for it in items {
                match merged.get(&it.key) {
                    Some(b) if !newer(&it, b) => {}
                    _ => {
                        merged.insert(it.key, it);
                    }
                }
            }
        }
        for (k, it) in merged.range(..=horizon) {
            debug_assert!(*k >= from);
            if it.flags & ITEM_FLAG_DELETION == 0 {
                out.push(it.clone());
                if out.len() == max {
                    return Ok(out);
                }
            }
        }
        match horizon.next() {
            Some(n) if horizon < *last => from = n,
            _ => break,
        }
        if out.len() == found_before {
            batch = (batch * 2).min(MAX_BATCH);
        }
    }
    Ok(out)
}

/// Fold the items of `logs` in `[cursor, last]` into `fs_root`: for each key
/// the newest version across the logs wins if it is at least as new as the
/// fs root's; a winning deletion removes the key from the fs root (which
/// keeps no deletion items). Returns how many items were applied. Every
/// older log tree of the keys must be among `logs` (the server merges all
/// finalized trees together). `cursor` advances past each key merged, so a
/// merge interrupted by a miss resumes where it stopped; it stops after
/// `max_items` keys (the caller continues from `cursor`) and is `None` when
/// the range is done.
pub fn merge_range(
    blocks: &mut dyn BlockAccess,
    fs_root: &mut BtreeRoot,
    logs: &[BtreeRoot],
    cursor: &mut Option<Key>,
    last: &Key,
    max_items: usize,
) -> Result<u64, BtreeError> {
    let only_logs = ForestRoots {
        fs_root: BtreeRoot::default(),
        log_roots: logs.to_vec(),
    };
    let mut applied = 0;
    let mut seen = 0;
    while let Some(from) = *cursor {
        if seen == max_items {
            break;
        }
        seen += 1;
        // Next key present in any log tree, deletions included.
        let best = first_from(blocks, only_logs.trees(), &from, last)?;
        let Some(it) = best else {
            *cursor = None;
            break;
        };
        let key = it.key;
        let existing = btree::lookup(blocks, fs_root, &key)?;
        if existing.as_ref().is_none_or(|e| e.seq <= it.seq) {
            if it.flags & ITEM_FLAG_DELETION != 0 {
                if existing.is_some() {
                    btree::delete(blocks, fs_root, &key)?;
                }
            } else {
                btree::upsert(blocks, fs_root, it)?;
            }
            applied += 1;
        }
        *cursor = key.next().filter(|n| n <= last);
    }
    Ok(applied)
}
