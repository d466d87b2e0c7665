//! The lock names against the items the fs layer really writes: every item
//! a mounted volume holds is covered by exactly the name docs/ARCHITECTURE.md
//! says an operation takes for it, and each lies in its name's cluster lock
//! range, computed as scoutfs's lock.c computes it.

mod file_harness;

use file_harness::{root, T};
use scoutfs_engine::data::Prealloc;
use scoutfs_engine::format::key::{item_type, zone, LOCK_INODE_GROUP_NR};
use scoutfs_engine::format::Key;
use scoutfs_engine::fs::{data_seq_index_key, meta_seq_index_key, orphan_key};
use scoutfs_engine::lock::{inode_group_range, IndexKind, LockName};
use scoutfs_engine::util::ready;

/// The one name that covers `key`, as the rule in docs/ARCHITECTURE.md.
fn name_of(key: &Key) -> Option<LockName> {
    match key.zone {
        zone::FS => Some(LockName::Inode(key.first)),
        zone::INODE_INDEX => {
            let kind = match key.ty {
                item_type::INODE_INDEX_META_SEQ => IndexKind::MetaSeq,
                item_type::INODE_INDEX_DATA_SEQ => IndexKind::DataSeq,
                _ => return None,
            };
            Some(LockName::index(kind, key.second))
        }
        zone::ORPHAN => Some(LockName::Orphan),
        zone::QUOTA => Some(LockName::Quota),
        zone::XATTR_TOTL => Some(LockName::XattrTotl),
        zone::XATTR_INDX => Some(LockName::XattrIndx),
        _ => None,
    }
}

#[test]
fn index_and_orphan_keys_of_fs_are_covered_by_their_names() {
    for seq in [0, 1, 1023, 1024, 5000, u64::MAX] {
        for ino in [1, 2, 1025, u64::MAX] {
            let m = meta_seq_index_key(seq, ino);
            assert!(LockName::index(IndexKind::MetaSeq, seq).covers_key(&m));
            assert!(LockName::index(IndexKind::MetaSeq, seq)
                .range()
                .contains(&m));
            assert!(!LockName::index(IndexKind::DataSeq, seq).covers_key(&m));
            let d = data_seq_index_key(seq, ino);
            assert!(LockName::index(IndexKind::DataSeq, seq).covers_key(&d));
        }
    }
    for (rid, ino) in [(0, 0), (1, 77), (u64::MAX, u64::MAX)] {
        assert!(LockName::Orphan.covers_key(&orphan_key(rid, ino)));
    }
}

#[test]
fn every_item_of_a_mounted_volume_is_covered_by_one_name() {
    let mut t = T::new(Prealloc::NONE, 64 << 20);
    let d1 = t.mkdir("d1");
    let d2 = t.mkdir("d2");
    let mut files = Vec::new();
    for i in 0..40 {
        let dir = if i % 2 == 0 { d1 } else { d2 };
        let f = t.create_in(dir, &format!("f{i}"));
        t.write(f, 0, &vec![i as u8; 5000]);
        ready(t.fs().set_xattr(&root(), f, b"user.k", &[7; 1200], 0)).unwrap();
        files.push(f);
    }
    ready(t.fs().symlink(&root(), d1, b"ln", &[b'x'; 2000])).unwrap();
    ready(t.fs().link(&root(), files[0], d2, b"hard")).unwrap();
    ready(t.fs().rename(&root(), d1, b"f2", d2, b"moved", 0)).unwrap();
    // An unlinked file still open: an orphan item.
    let f = t.create("open");
    t.fs().hold_ino(f);
    t.unlink("open");
    t.commit();

    let items = t.vol().range(&Key::MIN, &Key::MAX, 100_000).unwrap();
    let mut zones = std::collections::BTreeSet::new();
    for it in &items {
        let key = it.key;
        zones.insert(key.zone);
        let name = name_of(&key).unwrap_or_else(|| panic!("no lock name covers {key}"));
        assert!(name.covers_key(&key), "{name} doesn't cover {key}");
        assert!(name.range().contains(&key), "{key} outside {name}'s range");
        if key.zone == zone::FS {
            assert_eq!(name.range(), inode_group_range(key.first));
            let group = key.first / LOCK_INODE_GROUP_NR;
            assert_eq!(name.range().start.first, group * LOCK_INODE_GROUP_NR);
            // No other inode's name covers it.
            assert!(!LockName::Inode(key.first + 1).covers_key(&key));
        }
    }
    assert!(zones.contains(&zone::FS));
    assert!(zones.contains(&zone::INODE_INDEX));
    assert!(zones.contains(&zone::ORPHAN));
    t.check();
}
