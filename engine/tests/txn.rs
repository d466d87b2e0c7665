//! Volumes and transactions on the mem device: items survive reopening,
//! merges keep what readers saw, a full device is a clean ENOSPC that
//! leaves the volume consistent, commits trigger by size.

use std::collections::BTreeMap;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::format::key::zone;
use scoutfs_engine::format::Key;
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};

/// An item type the fs layer doesn't define (check_volume checks the fs
/// items it knows, and these hold arbitrary values).
const RAW: u8 = 100;

fn k(ino: u64, n: u64) -> Key {
    Key::new(zone::FS, ino, RAW, n, 0, 0)
}

fn small_opts() -> TxnOptions {
    TxnOptions {
        commit_dirty_blocks: 64,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    }
}

fn everything(vol: &mut Volume) -> BTreeMap<Key, Vec<u8>> {
    let last = Key::new(zone::FS, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    vol.range(&Key::new(zone::FS, 0, 0, 0, 0, 0), &last, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| (i.key, i.val))
        .collect()
}

#[test]
fn items_survive_commit_merge_and_reopen() {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(64 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut model = BTreeMap::new();
    {
        let opts = TxnOptions {
            commit_dirty_blocks: 4,
            ..small_opts()
        };
        let mut vol = Volume::open(&meta, opts).unwrap();
        for i in 0..5000u64 {
            let v = i.to_le_bytes().repeat(1 + (i % 7) as usize);
            vol.upsert(k(i % 97, i), &v).unwrap();
            model.insert(k(i % 97, i), v);
        }
        assert!(vol.commits() > 0, "size-triggered commits happened");
        for i in (0..5000u64).step_by(3) {
            assert!(vol.delete(&k(i % 97, i)).unwrap());
            model.remove(&k(i % 97, i));
        }
        assert!(
            !vol.delete(&k(12345, 1)).unwrap(),
            "deleting a missing item says so"
        );
        let (trees, items) = vol.merge().unwrap();
        assert_eq!(trees, 1);
        assert!(items > 0);
        assert_eq!(
            everything(&mut vol),
            model,
            "merge changed what readers see"
        );
        // Writes after the merge go to a new log tree and win over the fs root.
        vol.upsert(k(1, 1), b"newer").unwrap();
        model.insert(k(1, 1), b"newer".to_vec());
        let seq = vol.unmount().unwrap();
        assert!(seq > 1);
    }
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    assert_eq!(everything(&mut vol), model);
    assert!(check_volume(vol.store_mut(), &meta, &data)
        .problems
        .is_empty());
    let st = vol.statfs().unwrap();
    assert_eq!(st.committed_seq, vol.committed_seq());
    assert!(st.free_meta_blocks > 0 && st.free_meta_blocks < st.total_meta_blocks);
}

#[test]
fn full_metadata_device_is_a_clean_enospc() {
    let meta = MemDev::new(12 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    let val = vec![7u8; 800];
    let mut written = Vec::new();
    let err = loop {
        let key = k(written.len() as u64 / 50, written.len() as u64);
        match vol.upsert(key, &val) {
            Ok(()) => written.push(key),
            Err(e) => break e,
        }
        assert!(written.len() < 1_000_000, "never ran out of space");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(
        vol.read_only().is_none(),
        "ENOSPC must not make the volume read-only"
    );
    vol.commit().unwrap();
    assert!(check_volume(vol.store_mut(), &meta, &data)
        .problems
        .is_empty());
    drop(vol);
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    let got = everything(&mut vol);
    assert_eq!(
        got.len(),
        written.len(),
        "every acknowledged write is there"
    );
    assert!(written.iter().all(|w| got.get(w) == Some(&val)));
    assert!(check_volume(vol.store_mut(), &meta, &data)
        .problems
        .is_empty());
}

#[test]
fn full_data_device_is_a_clean_enospc_and_frees_return_after_commit() {
    let meta = MemDev::new(32 << 20);
    let data = MemDev::new(4 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    let free0 = vol.statfs().unwrap().free_data_blocks;
    let mut got = Vec::new();
    loop {
        match vol.alloc_data(100) {
            Ok(e) => got.push(e),
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "{e}");
                break;
            }
        }
    }
    assert_eq!(got.iter().map(|e| e.len).sum::<u64>(), free0);
    // Freed extents are not reusable until the commit.
    vol.free_data(got[0]);
    assert_eq!(vol.alloc_data(1).unwrap_err().errno(), libc::ENOSPC);
    vol.commit().unwrap();
    assert_eq!(
        vol.alloc_data(1000).unwrap(),
        scoutfs_engine::format::alloc::Extent {
            start: got[0].start,
            len: got[0].len
        }
    );
}

#[test]
fn oversized_values_are_refused() {
    let meta = MemDev::new(32 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    let e = vol.upsert(k(1, 1), &[0u8; 897]).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    vol.upsert(k(1, 1), &[0u8; 896]).unwrap();
}

#[test]
fn a_second_open_reads_the_same_volume() {
    let meta = MemDev::new(32 << 20);
    let data = MemDev::new(16 << 20);
    let sb = mkfs(
        &meta,
        &data,
        &MkfsOptions {
            fsid: Some(42),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(sb.fsid(), 42);
    let vol = Volume::open(&meta, small_opts()).unwrap();
    assert_eq!(vol.super_block().fsid(), 42);
    assert_eq!(vol.committed_seq(), sb.seq.get());
}

#[test]
fn a_merge_larger_than_the_blocks_in_hand_completes() {
    // The merge rewrites more blocks than one top-up of the blocks in hand
    // (48 here) and commits along the way.
    let meta = MemDev::new(128 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let opts = TxnOptions {
        merge_every_commits: 0,
        merge_commit_dirty_blocks: 64,
        ..small_opts()
    };
    let mut vol = Volume::open(&meta, opts).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..20_000u64 {
        let v = vec![(i % 251) as u8; 100];
        vol.upsert(k(i / 10, i), &v).unwrap();
        model.insert(k(i / 10, i), v);
    }
    let before = vol.committed_seq();
    let (trees, items) = vol.merge().unwrap();
    assert_eq!((trees, items), (1, 20_000));
    assert!(
        vol.committed_seq() > before + 2,
        "the merge committed along the way"
    );
    assert_eq!(everything(&mut vol), model);
    assert!(
        vol.log_trees()
            .unwrap()
            .iter()
            .all(|l| l.item_root.is_empty()),
        "merged trees were freed"
    );
    assert!(check_volume(vol.store_mut(), &meta, &data)
        .problems
        .is_empty());
}

#[test]
fn reads_skip_long_runs_of_deletions_across_trees() {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(16 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut vol = Volume::open(&meta, small_opts()).unwrap();
    let mut model = BTreeMap::new();
    for n in 0..2000u64 {
        vol.upsert(k(5, n), &n.to_le_bytes()).unwrap();
        model.insert(k(5, n), n.to_le_bytes().to_vec());
    }
    vol.commit().unwrap();
    vol.merge().unwrap();
    // Deletion items in the log tree shadow the fs root's items in long
    // runs (longer than a read batch), with survivors between them and
    // new versions of some keys.
    for n in 0..2000u64 {
        if n % 300 != 7 {
            vol.delete(&k(5, n)).unwrap();
            model.remove(&k(5, n));
        }
        if n % 450 == 0 {
            vol.upsert(k(5, n), b"again").unwrap();
            model.insert(k(5, n), b"again".to_vec());
        }
    }
    let want: Vec<(Key, Vec<u8>)> = model.clone().into_iter().collect();
    let got: Vec<(Key, Vec<u8>)> = vol
        .range(&k(5, 0), &k(5, u64::MAX), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| (i.key, i.val))
        .collect();
    assert_eq!(got, want);
    // next() from every key agrees with the model.
    for n in (0..2000u64).step_by(37) {
        let want = model.range(k(5, n)..).next().map(|(k, v)| (*k, v.clone()));
        let got = vol
            .next(&k(5, n), &k(5, u64::MAX))
            .unwrap()
            .map(|i| (i.key, i.val));
        assert_eq!(got, want, "next from {n}");
    }
    // Limits stop at the right item.
    let three = vol.range(&k(5, 0), &k(5, u64::MAX), 3).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three[2].key, want[2].0);
}

/// The age limit counts from a transaction's first change, not from the
/// last commit: a change made long after a commit is still given the
/// whole `commit_age` and no more, and later changes don't move the due
/// time (what the engine's quiet-commit task sleeps until).
#[test]
fn a_transaction_is_due_commit_age_after_its_first_change() {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(64 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let age = std::time::Duration::from_secs(3600);
    let mut vol = Volume::open(
        &meta,
        TxnOptions {
            commit_age: age,
            ..small_opts()
        },
    )
    .unwrap();
    vol.commit().unwrap();
    assert_eq!(vol.commit_due_at(), None, "nothing open after a commit");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = std::time::Instant::now();
    vol.upsert(k(1, 1), b"first").unwrap();
    let due = vol.commit_due_at().expect("a change opens the transaction");
    assert!(due >= before + age, "due counts from the first change");
    assert!(due <= std::time::Instant::now() + age);
    std::thread::sleep(std::time::Duration::from_millis(20));
    vol.upsert(k(1, 2), b"second").unwrap();
    assert!(vol.delete(&k(1, 1)).unwrap());
    assert_eq!(
        vol.commit_due_at(),
        Some(due),
        "later changes keep the due time"
    );
    assert!(!vol.should_commit());
    vol.commit().unwrap();
    assert_eq!(vol.commit_due_at(), None);
}
