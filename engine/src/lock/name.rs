//! Lock names: what an operation locks, the key range each covers, and
//! the one order every acquisition follows.
//!
//! A name is what a task holds; its **cluster lock** is the key range a
//! node is granted by the lock server, computed exactly as scoutfs's
//! `lock.c` computes it:
//!
//! | name | cluster lock range (start ..= end) |
//! |---|---|
//! | `Inode(ino)` | the inode group: fs zone, `first` = `ino & !1023` with every other field 0 ..= `ino \| 1023` with every other field all ones (`scoutfs_lock_ino`) |
//! | `InodeIndex { kind, seq }` | `(INODE_INDEX, 0, kind, seq & !1023, 0, 0) ..= (INODE_INDEX, 0, kind, seq \| 1023, u64::MAX, 0)` (`scoutfs_lock_get_index_item_range`) |
//! | `Orphan` | the whole orphan zone (`scoutfs_lock_orphan`; see below) |
//! | `Quota`, `XattrTotl`, `XattrIndx` | the whole zone: zone with zeros ..= zone with ones (`scoutfs_lock_quota`, `_xattr_totl`, `_xattr_indx`) |
//! | `Rename` | the single key `(LOCK, 0, RENAME, 0, 0, 0)` (`scoutfs_lock_rename`) |
//!
//! Names and cluster locks are the same thing except for inodes: a task
//! names the inode it touches, the node is granted the inode's whole
//! group of 1024, and tasks on one node exclude each other per inode (as
//! the kernel's inode locks do under scoutfs's group lock). A directory's
//! entries, an inode's xattrs, symlink parts, extents and link backrefs
//! all have `first` = that inode, so `Inode(ino)` covers them: scoutfs has
//! no lock per name hash range, nor do we. Orphan: scoutfs's range is
//! `(ORPHAN, ino 0, ORPHAN type) ..= (ORPHAN, ino MAX, ORPHAN type)` over
//! its key layout; ours puts the rid first (`fs::orphan_key`), so we lock
//! the whole zone, which covers the same items.
//!
//! **The order.** Names sort by class, then key: the rename lock first,
//! then inodes by inode number (so inode groups in key order), then the
//! orphan, quota, totl and indx zones (in key order), and last the inode
//! index names by key. This is scoutfs's own hierarchy: its rename takes
//! the rename lock, then `scoutfs_lock_inodes` sorts inodes by number,
//! then the orphan and tag locks, and last the index locks, sorted by
//! key, as it enters the transaction (`scoutfs_inode_index_try_lock_hold`).
//! Index names come last because an operation learns them from the
//! inodes it has locked, and retakes them when the transaction moves on.

use std::cmp::Ordering;
use std::fmt;

use crate::format::key::{item_type, zone, LOCK_INODE_GROUP_MASK, LOCK_SEQ_GROUP_MASK};
use crate::format::Key;

use super::mode::LockMode;
use super::LockError;

/// The most names one set may hold (a rename: the rename lock, four
/// inodes, their index items, orphan and tag zones, well under this).
pub const LOCK_SET_MAX: usize = 64;

/// A range of item keys, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockRange {
    pub start: Key,
    pub end: Key,
}

impl LockRange {
    pub fn contains(&self, key: &Key) -> bool {
        self.start <= *key && *key <= self.end
    }
}

impl fmt::Display for LockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// Which inode index: by meta_seq or by data_seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IndexKind {
    MetaSeq,
    DataSeq,
}

impl IndexKind {
    pub fn item_type(self) -> u8 {
        match self {
            IndexKind::MetaSeq => item_type::INODE_INDEX_META_SEQ,
            IndexKind::DataSeq => item_type::INODE_INDEX_DATA_SEQ,
        }
    }
}

/// What a task locks. Build index names with [`LockName::index`], which
/// rounds the seq down to its group, so two seqs of one group are one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockName {
    /// Cross-directory renames, one at a time in the whole cluster.
    Rename,
    /// The items of one inode (fs zone, `first` = ino).
    Inode(u64),
    /// The inode index items of a group of 1024 seqs (`seq` is the
    /// group's first).
    InodeIndex { kind: IndexKind, seq: u64 },
    /// Orphan items (taken write-only by unlink and delete).
    Orphan,
    /// Quota rules.
    Quota,
    /// `.totl.` xattr totals.
    XattrTotl,
    /// `.indx.` xattr index items.
    XattrIndx,
}

/// The key of the rename lock.
pub const RENAME_KEY: Key = Key::new(zone::LOCK, 0, item_type::RENAME, 0, 0, 0);

/// The cluster lock range of inode `ino`'s group.
pub fn inode_group_range(ino: u64) -> LockRange {
    LockRange {
        start: Key::inode_first(ino & !LOCK_INODE_GROUP_MASK),
        end: Key::inode_last(ino | LOCK_INODE_GROUP_MASK),
    }
}

fn whole_zone(z: u8) -> LockRange {
    LockRange {
        start: Key::zone_first(z),
        end: Key::zone_last(z),
    }
}

impl LockName {
    /// The index lock name covering the index item of `seq`.
    pub fn index(kind: IndexKind, seq: u64) -> LockName {
        LockName::InodeIndex {
            kind,
            seq: seq & !LOCK_SEQ_GROUP_MASK,
        }
    }

    /// The key range of this name's cluster lock: what a node is granted,
    /// and what an invalidation writes back and drops.
    pub fn range(&self) -> LockRange {
        match *self {
            LockName::Rename => LockRange {
                start: RENAME_KEY,
                end: RENAME_KEY,
            },
            LockName::Inode(ino) => inode_group_range(ino),
            LockName::InodeIndex { kind, seq } => {
                let ty = kind.item_type();
                let first = seq & !LOCK_SEQ_GROUP_MASK;
                LockRange {
                    start: Key::new(zone::INODE_INDEX, 0, ty, first, 0, 0),
                    end: Key::new(
                        zone::INODE_INDEX,
                        0,
                        ty,
                        first | LOCK_SEQ_GROUP_MASK,
                        u64::MAX,
                        0,
                    ),
                }
            }
            LockName::Orphan => whole_zone(zone::ORPHAN),
            LockName::Quota => whole_zone(zone::QUOTA),
            LockName::XattrTotl => whole_zone(zone::XATTR_TOTL),
            LockName::XattrIndx => whole_zone(zone::XATTR_INDX),
        }
    }

    /// The name whose lock a task needs to touch the item `key`, or
    /// `None` for keys no lock covers (the server's own zones). An inode's
    /// items are its name; the index, orphan, quota and xattr tag zones
    /// theirs; the rename key the rename lock.
    pub fn for_key(key: &Key) -> Option<LockName> {
        match key.zone {
            zone::FS => Some(LockName::Inode(key.first)),
            zone::ORPHAN => Some(LockName::Orphan),
            zone::QUOTA => Some(LockName::Quota),
            zone::XATTR_TOTL => Some(LockName::XattrTotl),
            zone::XATTR_INDX => Some(LockName::XattrIndx),
            zone::INODE_INDEX => {
                let kind = match key.ty {
                    t if t == IndexKind::MetaSeq.item_type() => IndexKind::MetaSeq,
                    t if t == IndexKind::DataSeq.item_type() => IndexKind::DataSeq,
                    _ => return None,
                };
                Some(LockName::index(kind, key.second))
            }
            zone::LOCK if *key == RENAME_KEY => Some(LockName::Rename),
            _ => None,
        }
    }

    /// The key a lock server knows the cluster lock by (its range's start).
    pub fn cluster_key(&self) -> Key {
        self.range().start
    }

    /// Whether holding this name lets a task touch `key`: an inode name
    /// covers that inode's items only (the rest of its group belongs to
    /// other inodes' names); every other name covers its whole range.
    pub fn covers_key(&self, key: &Key) -> bool {
        match *self {
            LockName::Inode(ino) => key.zone == zone::FS && key.first == ino,
            _ => self.range().contains(key),
        }
    }

    fn order_key(&self) -> (u8, Key) {
        match *self {
            LockName::Rename => (0, RENAME_KEY),
            LockName::Inode(ino) => (1, Key::inode_first(ino)),
            LockName::InodeIndex { .. } => (3, self.range().start),
            _ => (2, self.range().start),
        }
    }
}

/// The acquisition order (see the module comment).
impl Ord for LockName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl PartialOrd for LockName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockName::Rename => write!(f, "rename"),
            LockName::Inode(ino) => write!(f, "inode {ino}"),
            LockName::InodeIndex { kind, seq } => write!(f, "{kind:?} index {seq}"),
            LockName::Orphan => write!(f, "orphan"),
            LockName::Quota => write!(f, "quota"),
            LockName::XattrTotl => write!(f, "xattr totl"),
            LockName::XattrIndx => write!(f, "xattr indx"),
        }
    }
}

/// The names one acquisition takes, in any order and possibly repeated;
/// [`LockSet::sorted`] puts them in the acquisition order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockSet {
    names: Vec<(LockName, LockMode)>,
}

impl LockSet {
    pub fn new() -> LockSet {
        LockSet::default()
    }

    pub fn with(mut self, name: LockName, mode: LockMode) -> LockSet {
        self.names.push((name, mode));
        self
    }

    pub fn read(self, name: LockName) -> LockSet {
        self.with(name, LockMode::Read)
    }

    pub fn write(self, name: LockName) -> LockSet {
        self.with(name, LockMode::Write)
    }

    pub fn write_only(self, name: LockName) -> LockSet {
        self.with(name, LockMode::WriteOnly)
    }

    pub fn push(&mut self, name: LockName, mode: LockMode) {
        self.names.push((name, mode));
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names in acquisition order, each once, a name given twice
    /// taking the join of its modes (read and write make write). Refuses
    /// null modes, write-only on an inode (an inode group is only ever
    /// read or written: its users on one node must share one grant), and
    /// sets over [`LOCK_SET_MAX`].
    pub fn sorted(&self) -> Result<Vec<(LockName, LockMode)>, LockError> {
        let mut v = self.names.clone();
        v.sort_by_key(|a| a.0);
        let mut out: Vec<(LockName, LockMode)> = Vec::with_capacity(v.len());
        for (name, mode) in v {
            if mode == LockMode::Null
                || (matches!(name, LockName::Inode(_)) && mode == LockMode::WriteOnly)
            {
                return Err(LockError::InvalidMode { name, mode });
            }
            match out.last_mut() {
                Some(last) if last.0 == name => last.1 = last.1.join(mode),
                _ => out.push((name, mode)),
            }
        }
        if out.len() > LOCK_SET_MAX {
            return Err(LockError::TooMany(out.len()));
        }
        Ok(out)
    }
}

impl FromIterator<(LockName, LockMode)> for LockSet {
    fn from_iter<I: IntoIterator<Item = (LockName, LockMode)>>(iter: I) -> Self {
        LockSet {
            names: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The item keys as fs/ builds them (engine/tests/lock.rs checks the
    // names against fs/'s own key functions).
    fn meta_seq_index_key(seq: u64, ino: u64) -> Key {
        Key::new(
            zone::INODE_INDEX,
            0,
            item_type::INODE_INDEX_META_SEQ,
            seq,
            ino,
            0,
        )
    }
    fn data_seq_index_key(seq: u64, ino: u64) -> Key {
        Key::new(
            zone::INODE_INDEX,
            0,
            item_type::INODE_INDEX_DATA_SEQ,
            seq,
            ino,
            0,
        )
    }
    fn orphan_key(rid: u64, ino: u64) -> Key {
        Key::new(zone::ORPHAN, rid, item_type::ORPHAN, ino, 0, 0)
    }

    #[test]
    fn inode_groups_are_1024_inodes_as_scoutfs_lock_ino() {
        let r = LockName::Inode(5000).range();
        assert_eq!(r.start, Key::new(zone::FS, 4096, 0, 0, 0, 0));
        assert_eq!(
            r.end,
            Key::new(zone::FS, 5119, u8::MAX, u64::MAX, u64::MAX, u8::MAX)
        );
        assert_eq!(LockName::Inode(4096).range(), r);
        assert_eq!(LockName::Inode(5119).range(), r);
        assert_ne!(LockName::Inode(5120).range(), r);
        // Every item of every inode of the group is inside.
        assert!(r.contains(&Key::inode(4096)));
        assert!(r.contains(&Key::new(zone::FS, 5119, item_type::DATA_EXTENT, 9, 9, 9)));
        assert!(!r.contains(&Key::inode(5120)));
        assert!(!r.contains(&Key::inode(4095)));
    }

    #[test]
    fn an_inode_name_covers_only_that_inode_s_items() {
        let n = LockName::Inode(7);
        assert!(n.covers_key(&Key::inode(7)));
        assert!(n.covers_key(&Key::new(zone::FS, 7, item_type::DIRENT, 1, 2, 0)));
        assert!(!n.covers_key(&Key::inode(8)));
        assert!(!n.covers_key(&meta_seq_index_key(3, 7)));
    }

    #[test]
    fn index_names_cover_a_seq_group_of_every_inode() {
        let n = LockName::index(IndexKind::MetaSeq, 2049);
        assert_eq!(n, LockName::index(IndexKind::MetaSeq, 2048));
        assert_eq!(n, LockName::index(IndexKind::MetaSeq, 3071));
        assert_ne!(n, LockName::index(IndexKind::MetaSeq, 3072));
        assert_ne!(n, LockName::index(IndexKind::DataSeq, 2049));
        for ino in [0, 1, 77, u64::MAX] {
            assert!(n.covers_key(&meta_seq_index_key(2048, ino)));
            assert!(n.covers_key(&meta_seq_index_key(3071, ino)));
            assert!(!n.covers_key(&data_seq_index_key(2048, ino)));
        }
        assert!(!n.covers_key(&meta_seq_index_key(3072, 0)));
        assert!(!n.covers_key(&meta_seq_index_key(2047, u64::MAX)));
        let d = LockName::index(IndexKind::DataSeq, 5);
        assert!(d.covers_key(&data_seq_index_key(5, 9)));
    }

    #[test]
    fn the_name_for_a_key_covers_it() {
        let keys = [
            Key::inode_first(5000),
            Key::new(zone::FS, 5000, item_type::DATA_EXTENT, 7, 1, 0),
            meta_seq_index_key(123_456, 9),
            data_seq_index_key(99, 9),
            orphan_key(1, 77),
            Key::zone_first(zone::QUOTA),
            Key::zone_first(zone::XATTR_TOTL),
            Key::zone_first(zone::XATTR_INDX),
            RENAME_KEY,
        ];
        for k in keys {
            let name = LockName::for_key(&k).unwrap_or_else(|| panic!("no name for {k}"));
            assert!(name.covers_key(&k), "{name} doesn't cover {k}");
        }
        assert_eq!(
            LockName::for_key(&Key::new(zone::FS, 5000, 0, 0, 0, 0)),
            Some(LockName::Inode(5000))
        );
        assert_eq!(LockName::for_key(&Key::zone_first(zone::LOG_TREES)), None);
    }

    #[test]
    fn zone_names_cover_their_zones() {
        assert!(LockName::Orphan.covers_key(&orphan_key(3, 99)));
        assert!(LockName::Orphan.covers_key(&orphan_key(u64::MAX, u64::MAX)));
        assert!(!LockName::Orphan.covers_key(&Key::inode(1)));
        assert!(LockName::XattrTotl.covers_key(&Key::new(zone::XATTR_TOTL, 1, 0, 2, 3, 0)));
        assert!(!LockName::XattrTotl.covers_key(&Key::new(zone::XATTR_INDX, 1, 0, 2, 3, 0)));
        assert!(LockName::Quota.covers_key(&Key::new(zone::QUOTA, 9, 4, 1, 0, 0)));
        let r = LockName::Rename.range();
        assert_eq!(r.start, r.end);
        assert_eq!(r.start.zone, zone::LOCK);
        assert_eq!(r.start.ty, item_type::RENAME);
    }

    #[test]
    fn order_is_rename_inodes_zones_in_key_order_then_index_names() {
        let mut names = vec![
            LockName::XattrIndx,
            LockName::Inode(2000),
            LockName::Orphan,
            LockName::index(IndexKind::DataSeq, 10),
            LockName::XattrTotl,
            LockName::Quota,
            LockName::Inode(3),
            LockName::index(IndexKind::MetaSeq, 5000),
            LockName::index(IndexKind::MetaSeq, 10),
            LockName::Rename,
        ];
        names.sort();
        assert_eq!(
            names,
            vec![
                LockName::Rename,
                LockName::Inode(3),
                LockName::Inode(2000),
                LockName::Orphan,
                LockName::Quota,
                LockName::XattrTotl,
                LockName::XattrIndx,
                LockName::index(IndexKind::MetaSeq, 10),
                LockName::index(IndexKind::MetaSeq, 5000),
                LockName::index(IndexKind::DataSeq, 10),
            ]
        );
        // Inode order is group order: names of one group are adjacent.
        assert!(LockName::Inode(1023) < LockName::Inode(1024));
        assert!(LockName::Inode(1023).range().start < LockName::Inode(1024).range().start);
    }

    #[test]
    fn sets_sort_merge_and_refuse_bad_modes() {
        let s = LockSet::new()
            .write(LockName::Inode(9))
            .read(LockName::Inode(2))
            .read(LockName::Inode(9))
            .write_only(LockName::Orphan)
            .write(LockName::Rename)
            .write_only(LockName::Orphan);
        assert_eq!(
            s.sorted().unwrap(),
            vec![
                (LockName::Rename, LockMode::Write),
                (LockName::Inode(2), LockMode::Read),
                (LockName::Inode(9), LockMode::Write),
                (LockName::Orphan, LockMode::WriteOnly),
            ]
        );
        assert!(LockSet::new()
            .write_only(LockName::Inode(1))
            .sorted()
            .is_err());
        assert!(LockSet::new()
            .with(LockName::Orphan, LockMode::Null)
            .sorted()
            .is_err());
        let big: LockSet = (0..=LOCK_SET_MAX as u64)
            .map(|i| (LockName::Inode(i), LockMode::Read))
            .collect();
        assert!(matches!(big.sorted(), Err(LockError::TooMany(_))));
    }
}
