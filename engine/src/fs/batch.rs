//! [`Batch`]: the items one fs operation changes, gathered before any is
//! written.
//!
//! An operation reads and checks everything first, describing its changes
//! in a batch, then applies the batch in one go: an error found while
//! checking leaves nothing written. Inodes are tracked by number, so an
//! operation that touches the same inode twice (a rename inside one
//! directory) changes one copy. When the batch is turned into item writes
//! each changed inode gets what every inode change needs: its version
//! bumped, its meta_seq (and data_seq after a content change) moved to the
//! open transaction's seq, and the inode index items following the seqs.

use std::collections::BTreeMap;

use crate::format::alloc::Extent;
use crate::format::inode::Inode;
use crate::format::key::{item_type, zone};
use crate::format::Key;

/// The key of an inode's meta_seq index item.
pub fn meta_seq_index_key(seq: u64, ino: u64) -> Key {
    Key::new(
        zone::INODE_INDEX,
        0,
        item_type::INODE_INDEX_META_SEQ,
        seq,
        ino,
        0,
    )
}

/// The key of an inode's data_seq index item.
pub fn data_seq_index_key(seq: u64, ino: u64) -> Key {
    Key::new(
        zone::INODE_INDEX,
        0,
        item_type::INODE_INDEX_DATA_SEQ,
        seq,
        ino,
        0,
    )
}

#[derive(Debug)]
enum InodeChange {
    Create(Inode),
    Update {
        stored: Inode,
        new: Inode,
        data_changed: bool,
    },
    Delete(Inode),
}

/// One item write: a value to store, or `None` to delete.
pub type ItemWrite = (Key, Option<Vec<u8>>);

#[derive(Debug)]
pub struct Batch {
    seq: u64,
    format_version: u64,
    items: BTreeMap<Key, Option<Vec<u8>>>,
    inodes: BTreeMap<u64, InodeChange>,
    /// Data extents whose items this batch deletes: freed once it is
    /// written.
    freed: Vec<Extent>,
    /// Unlinked inodes too large to delete in this batch: deleted over
    /// later transactions once it is written (orphan.rs).
    purge_later: Vec<u64>,
}

impl Batch {
    /// A batch whose inodes will carry `seq` (the open transaction's).
    pub fn new(seq: u64, format_version: u64) -> Batch {
        Batch {
            seq,
            format_version,
            items: BTreeMap::new(),
            inodes: BTreeMap::new(),
            freed: Vec::new(),
            purge_later: Vec::new(),
        }
    }

    /// Delete `ino` (orphaned by this batch) over later transactions,
    /// once this batch is written.
    pub fn purge_later(&mut self, ino: u64) {
        self.purge_later.push(ino);
    }

    /// The inodes [`Batch::purge_later`] named, taken out.
    pub fn take_purge_later(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.purge_later)
    }

    pub fn put(&mut self, key: Key, val: Vec<u8>) {
        debug_assert!(key != Key::inode(key.first), "inode items go through track");
        self.items.insert(key, Some(val));
    }

    pub fn delete(&mut self, key: Key) {
        self.items.insert(key, None);
    }

    /// Start changing a stored inode: `inode_mut` edits the copy. Tracking
    /// an inode twice keeps the first copy.
    pub fn track(&mut self, ino: u64, stored: Inode) {
        self.inodes.entry(ino).or_insert(InodeChange::Update {
            stored,
            new: stored,
            data_changed: false,
        });
    }

    /// The working copy of a tracked or created inode.
    pub fn inode_mut(&mut self, ino: u64) -> &mut Inode {
        match self.inodes.get_mut(&ino) {
            Some(InodeChange::Create(new) | InodeChange::Update { new, .. }) => new,
            other => panic!("inode {ino} is not tracked by the batch: {other:?}"),
        }
    }

    /// The working copy, if the inode is tracked and not deleted.
    pub fn inode(&self, ino: u64) -> Option<&Inode> {
        match self.inodes.get(&ino) {
            Some(InodeChange::Create(new) | InodeChange::Update { new, .. }) => Some(new),
            _ => None,
        }
    }

    /// A new inode: its seqs are the batch's, its index items are added.
    pub fn create_inode(&mut self, ino: u64, inode: Inode) {
        let old = self.inodes.insert(ino, InodeChange::Create(inode));
        assert!(old.is_none(), "inode {ino} created twice");
    }

    /// The file's contents changed: data_seq moves too.
    pub fn data_changed(&mut self, ino: u64) {
        match self.inodes.get_mut(&ino) {
            Some(InodeChange::Update { data_changed, .. }) => *data_changed = true,
            Some(InodeChange::Create(_)) => {}
            other => panic!("inode {ino} is not tracked by the batch: {other:?}"),
        }
    }

    /// Delete a tracked inode's inode item and index items. Its other
    /// items are the caller's to delete.
    pub fn delete_inode(&mut self, ino: u64) {
        match self.inodes.remove(&ino) {
            Some(InodeChange::Update { stored, .. }) => {
                self.inodes.insert(ino, InodeChange::Delete(stored));
            }
            other => panic!("deleting inode {ino} that is not stored: {other:?}"),
        }
    }

    /// Inodes the batch creates less those it deletes.
    pub fn inode_count_delta(&self) -> i64 {
        self.inodes
            .values()
            .map(|c| match c {
                InodeChange::Create(_) => 1,
                InodeChange::Delete(_) => -1,
                InodeChange::Update { .. } => 0,
            })
            .sum()
    }

    /// Free `ext` (data blocks) when the batch is written.
    pub fn free_data(&mut self, ext: Extent) {
        self.freed.push(ext);
    }

    /// The item writes, in key order, and the data extents to free once
    /// they are written.
    pub fn into_writes(self) -> (Vec<ItemWrite>, Vec<Extent>) {
        let Batch {
            seq,
            format_version,
            mut items,
            inodes,
            freed,
            purge_later,
        } = self;
        debug_assert!(purge_later.is_empty(), "purge_later not taken");
        let set = |items: &mut BTreeMap<Key, Option<Vec<u8>>>, k: Key, v: Option<Vec<u8>>| {
            items.insert(k, v);
        };
        for (ino, change) in inodes {
            match change {
                InodeChange::Create(mut new) => {
                    new.meta_seq.set(seq);
                    new.data_seq.set(seq);
                    new.version.set(new.version.get().max(1));
                    set(&mut items, meta_seq_index_key(seq, ino), Some(Vec::new()));
                    set(&mut items, data_seq_index_key(seq, ino), Some(Vec::new()));
                    let val = new.value_bytes(format_version).to_vec();
                    set(&mut items, Key::inode(ino), Some(val));
                }
                InodeChange::Update {
                    stored,
                    mut new,
                    data_changed,
                } => {
                    if new == stored && !data_changed {
                        continue;
                    }
                    new.version.set(stored.version.get().wrapping_add(1));
                    let old_meta = stored.meta_seq.get();
                    if old_meta != seq {
                        set(&mut items, meta_seq_index_key(old_meta, ino), None);
                        set(&mut items, meta_seq_index_key(seq, ino), Some(Vec::new()));
                    }
                    new.meta_seq.set(seq);
                    let old_data = stored.data_seq.get();
                    if data_changed && old_data != seq {
                        set(&mut items, data_seq_index_key(old_data, ino), None);
                        set(&mut items, data_seq_index_key(seq, ino), Some(Vec::new()));
                        new.data_seq.set(seq);
                    }
                    let val = new.value_bytes(format_version).to_vec();
                    set(&mut items, Key::inode(ino), Some(val));
                }
                InodeChange::Delete(stored) => {
                    set(
                        &mut items,
                        meta_seq_index_key(stored.meta_seq.get(), ino),
                        None,
                    );
                    set(
                        &mut items,
                        data_seq_index_key(stored.data_seq.get(), ino),
                        None,
                    );
                    set(&mut items, Key::inode(ino), None);
                }
            }
        }
        (items.into_iter().collect(), freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(meta_seq: u64, data_seq: u64) -> Inode {
        Inode {
            meta_seq: meta_seq.into(),
            data_seq: data_seq.into(),
            version: 3.into(),
            nlink: 1.into(),
            ..Inode::default()
        }
    }

    #[test]
    fn first_change_in_a_transaction_moves_the_index_items() {
        let mut b = Batch::new(9, 2);
        b.track(5, ino(4, 3));
        b.inode_mut(5).nlink.set(2);
        b.data_changed(5);
        let (w, _) = b.into_writes();
        let keys: Vec<(Key, bool)> = w.iter().map(|(k, v)| (*k, v.is_some())).collect();
        assert!(keys.contains(&(meta_seq_index_key(4, 5), false)));
        assert!(keys.contains(&(meta_seq_index_key(9, 5), true)));
        assert!(keys.contains(&(data_seq_index_key(3, 5), false)));
        assert!(keys.contains(&(data_seq_index_key(9, 5), true)));
        let (_, v) = w.iter().find(|(k, _)| *k == Key::inode(5)).unwrap();
        let new = Inode::from_value(v.as_ref().unwrap(), 2).unwrap();
        assert_eq!(
            (new.version.get(), new.meta_seq.get(), new.data_seq.get()),
            (4, 9, 9)
        );
    }

    #[test]
    fn later_changes_in_the_same_transaction_keep_the_index() {
        let mut b = Batch::new(9, 2);
        b.track(5, ino(9, 3));
        b.inode_mut(5).nlink.set(2);
        let (w, _) = b.into_writes();
        assert_eq!(w.len(), 1, "only the inode item: {w:?}");
        // An unchanged tracked inode writes nothing.
        let mut b = Batch::new(9, 2);
        b.track(5, ino(1, 1));
        assert!(b.into_writes().0.is_empty());
    }

    #[test]
    fn deleting_an_inode_deletes_its_index_items() {
        let mut b = Batch::new(9, 1);
        b.track(5, ino(4, 3));
        b.inode_mut(5).nlink.set(0);
        b.delete_inode(5);
        let (w, _) = b.into_writes();
        assert_eq!(
            w,
            vec![
                (meta_seq_index_key(4, 5), None),
                (data_seq_index_key(3, 5), None),
                (Key::inode(5), None),
            ]
        );
    }
}
