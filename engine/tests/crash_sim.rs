//! Crash simulation: random metadata operations with commits on the `mem`
//! device, a power cut at a random request, reopen, check, and compare the
//! recovered items with the model at the last acknowledged commit (or the
//! later one that was in flight and made it to disk).
//!
//! SCOUTFS_SIM_SEED=N replays one seed; SCOUTFS_SIM_CUTS=N sets how many
//! seeds (cuts) run (default 3000; the soak runs hundreds of thousands).
//! A failure prints the seed.

use std::collections::{BTreeMap, HashMap};

use scoutfs_engine::dev::mem::{Fault, MemDev};
use scoutfs_engine::dev::IoOp;
use scoutfs_engine::format::key::zone;
use scoutfs_engine::format::Key;
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::rng::SimRng;

type Model = BTreeMap<Key, Vec<u8>>;

const META_BYTES: u64 = 32 << 20;
const DATA_BYTES: u64 = 16 << 20;

/// Item types the fs layer doesn't define: these tests store arbitrary
/// values, and `check_volume` also checks the fs items it knows (inodes,
/// data extents) for what they must hold.
const RAW: [u8; 4] = [100, 104, 108, 112];

fn key(r: &mut SimRng) -> Key {
    // A few inodes with several item types: items cluster per inode.
    Key::new(
        zone::FS,
        1 + r.below(64),
        RAW[r.below(4) as usize],
        r.below(40),
        0,
        0,
    )
}

fn value(r: &mut SimRng, k: &Key) -> Vec<u8> {
    let len = match r.below(10) {
        0 => 0,
        1 => 896,
        _ => r.below(300) as usize,
    };
    let mut v = vec![0u8; len];
    let mut s = SimRng::new(r.next_u64() ^ k.first);
    v.iter_mut().for_each(|b| *b = s.next_u64() as u8);
    v
}

fn all_items(vol: &mut Volume) -> Model {
    let first = Key::new(zone::FS, 0, 0, 0, 0, 0);
    let last = Key::new(zone::FS, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    vol.range(&first, &last, usize::MAX)
        .expect("reading recovered items")
        .into_iter()
        .map(|i| (i.key, i.val))
        .collect()
}

fn opts() -> TxnOptions {
    // Few blocks in hand: the allocators refill often, also during commits.
    TxnOptions {
        commit_dirty_blocks: 24,
        cache_bytes: 16 << 20,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    }
}

/// One seed: returns the number of operations run before the cut.
fn run_seed(seed: u64) -> usize {
    let mut r = SimRng::new(seed);
    let meta = MemDev::new(META_BYTES);
    let data = MemDev::new(DATA_BYTES);
    meta.reorder_completions(Some(r.next_u64()));
    let sb = mkfs(
        &meta,
        &data,
        &MkfsOptions {
            fsid: Some(0xf5f5),
            ..Default::default()
        },
    )
    .unwrap();
    let mut vol = Volume::open(&meta, opts()).unwrap();

    let mut model = Model::new();
    let mut snapshots: HashMap<u64, Model> = HashMap::new();
    snapshots.insert(sb.seq.get(), Model::new());
    let mut last_acked = vol.committed_seq();

    // Cut the power after a random number of device requests.
    meta.arm_power_cut(1 + r.below(400), r.next_u64());
    let mut ops = 0;
    for _ in 0..300 {
        ops += 1;
        let seq = vol.txn_seq();
        let before = vol.committed_seq();
        let res = match r.below(20) {
            0..=10 => {
                let k = key(&mut r);
                let v = value(&mut r, &k);
                let mut next = model.clone();
                next.insert(k, v.clone());
                let res = vol.upsert(k, &v);
                (res.map(|_| ()), next)
            }
            11..=14 => {
                let k = key(&mut r);
                let mut next = model.clone();
                let existed = next.remove(&k).is_some();
                let res = vol
                    .delete(&k)
                    .map(|e| assert_eq!(e, existed, "seed {seed}: delete existence"));
                (res, next)
            }
            15..=16 => {
                let k = key(&mut r);
                if let Ok(got) = vol.lookup(&k) {
                    assert_eq!(
                        got.map(|i| i.val),
                        model.get(&k).cloned(),
                        "seed {seed}: lookup {k}"
                    );
                }
                (Ok(()), model.clone())
            }
            17..=18 => {
                snapshots.insert(seq, model.clone());
                (vol.commit().map(|_| ()), model.clone())
            }
            _ => {
                // A merge commits once or more without changing contents.
                for s in seq..=seq + 64 {
                    snapshots.entry(s).or_insert_with(|| model.clone());
                }
                (vol.merge().map(|_| ()), model.clone())
            }
        };
        let (res, next) = res;
        match res {
            Ok(()) => {
                model = next;
                let now = vol.committed_seq();
                // Seqs past the last commit were guesses for an op that
                // might fail; later commits will use them with other contents.
                snapshots.retain(|s, _| *s <= now);
                for s in before + 1..=now {
                    snapshots.entry(s).or_insert_with(|| model.clone());
                }
                last_acked = now;
            }
            Err(_) => {
                // The op's write may have been in the commit that failed, or
                // in the commits of a merge it triggered (same contents).
                for s in seq..=seq + 64 {
                    snapshots.entry(s).or_insert_with(|| next.clone());
                }
                break;
            }
        }
        if !meta.is_powered() {
            break;
        }
    }
    if meta.is_powered() {
        meta.power_cut(r.next_u64());
    }
    drop(vol);
    meta.restart();

    let mut vol =
        Volume::open(&meta, opts()).unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    let report = check_volume(vol.store_mut(), &meta, &data);
    assert!(
        report.problems.is_empty(),
        "seed {seed}: check found problems: {:#?}",
        report.problems
    );
    let recovered = vol.committed_seq();
    assert!(
        recovered >= last_acked,
        "seed {seed}: recovered seq {recovered} is older than acknowledged {last_acked}"
    );
    let expect = snapshots
        .get(&recovered)
        .unwrap_or_else(|| panic!("seed {seed}: recovered seq {recovered} was never committed"));
    let got = all_items(&mut vol);
    assert!(
        got == *expect,
        "seed {seed}: recovered items differ from the model at seq {recovered}: {} vs {} items",
        got.len(),
        expect.len()
    );
    // The recovered volume takes new work.
    vol.upsert(Key::new(zone::FS, 999, RAW[0], 0, 0, 0), b"after")
        .unwrap();
    vol.commit().unwrap();
    let report = check_volume(vol.store_mut(), &meta, &data);
    assert!(
        report.problems.is_empty(),
        "seed {seed}: check after the first commit past recovery: {:#?}",
        report.problems
    );
    ops
}

#[test]
fn power_cuts_recover_to_the_last_commit() {
    if let Ok(s) = std::env::var("SCOUTFS_SIM_SEED") {
        let seed: u64 = s.parse().expect("SCOUTFS_SIM_SEED is a number");
        eprintln!("replaying seed {seed}");
        run_seed(seed);
        return;
    }
    let cuts: u64 = std::env::var("SCOUTFS_SIM_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let base: u64 = std::env::var("SCOUTFS_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total_ops = 0;
    for seed in base..base + cuts {
        let r = std::panic::catch_unwind(|| run_seed(seed));
        match r {
            Ok(n) => total_ops += n,
            Err(e) => {
                eprintln!(
                    "crash simulation failed at seed {seed}; replay with SCOUTFS_SIM_SEED={seed}"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("{cuts} power cuts from seed {base}, {total_ops} operations, all recovered");
}

#[test]
fn io_error_during_commit_makes_the_volume_read_only_at_the_last_commit() {
    for nth in [0u64, 1, 2] {
        let meta = MemDev::new(META_BYTES);
        let data = MemDev::new(DATA_BYTES);
        mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
        let mut vol = Volume::open(&meta, opts()).unwrap();
        let k1 = Key::new(zone::FS, 1, RAW[0], 0, 0, 0);
        vol.upsert(k1, b"one").unwrap();
        let good = vol.commit().unwrap();
        let k2 = Key::new(zone::FS, 2, RAW[0], 0, 0, 0);
        vol.upsert(k2, b"two").unwrap();
        // Fail the nth write from now (inside the commit).
        meta.inject(Fault::nth(IoOp::Write, nth));
        let e = vol.commit().unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(vol.read_only().is_some());
        let e = vol
            .upsert(Key::new(zone::FS, 3, RAW[0], 0, 0, 0), b"three")
            .unwrap_err();
        assert_eq!(e.errno(), libc::EROFS, "{e}");
        assert!(e.to_string().contains("read-only"), "{e}");
        assert_eq!(vol.committed_seq(), good);
        // Reads see the last commit.
        assert_eq!(vol.lookup(&k1).unwrap().unwrap().val, b"one");
        assert_eq!(vol.lookup(&k2).unwrap(), None);
        drop(vol);
        meta.clear_faults();
        let mut vol = Volume::open(&meta, opts()).unwrap();
        assert_eq!(vol.committed_seq(), good);
        assert_eq!(vol.lookup(&k1).unwrap().unwrap().val, b"one");
        assert_eq!(vol.lookup(&k2).unwrap(), None);
        assert!(check_volume(vol.store_mut(), &meta, &data)
            .problems
            .is_empty());
    }
}

#[test]
fn flush_error_during_commit_also_stops_writes() {
    let meta = MemDev::new(META_BYTES);
    let data = MemDev::new(DATA_BYTES);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let mut vol = Volume::open(&meta, opts()).unwrap();
    vol.upsert(Key::new(zone::FS, 1, RAW[0], 0, 0, 0), b"x")
        .unwrap();
    meta.inject(Fault::nth(IoOp::Flush, 0));
    assert!(vol.commit().is_err());
    assert_eq!(
        vol.upsert(Key::new(zone::FS, 1, RAW[0], 1, 0, 0), b"y")
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
}
