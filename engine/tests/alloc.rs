//! The extent allocator against a model set of free blocks: allocations
//! come only from free space, frees merge with neighbours, double frees and
//! exhaustion are clean errors that change nothing.

use std::collections::BTreeSet;

use proptest::prelude::*;
use scoutfs_engine::alloc::{alloc_extent, free_extent, free_extents, AllocError};
use scoutfs_engine::block::cache::BlockCache;
use scoutfs_engine::format::alloc::Extent;
use scoutfs_engine::format::AllocRoot;
use scoutfs_engine::util::rng::SimRng;

fn model_extents(free: &BTreeSet<u64>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &b in free {
        match out.last_mut() {
            Some(e) if e.start + e.len == b => e.len += 1,
            _ => out.push(Extent { start: b, len: 1 }),
        }
    }
    out
}

fn run(seed: u64) {
    let mut r = SimRng::new(seed);
    let mut c = BlockCache::in_memory(1, 1, 1_000_000..1_100_000);
    let mut root = AllocRoot::default();
    let space = 1 + r.below(20_000);
    let mut free: BTreeSet<u64> = BTreeSet::new();
    let mut used: Vec<Extent> = Vec::new();
    // Start with everything free, given back in random pieces.
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < space {
        let len = (1 + r.below(64)).min(space - at);
        pieces.push(Extent { start: at, len });
        at += len;
    }
    r.shuffle(&mut pieces);
    for p in pieces {
        free_extent(&mut c, &mut root, p).unwrap();
        free.extend(p.start..p.start + p.len);
    }
    for step in 0..400 {
        match r.below(10) {
            0..=4 => {
                let want = 1 + r.below(200);
                match alloc_extent(&mut c, &mut root, want) {
                    Ok(e) => {
                        assert!(e.len >= 1 && e.len <= want);
                        for b in e.start..e.start + e.len {
                            assert!(
                                free.remove(&b),
                                "seed {seed}: allocated block {b} that was not free"
                            );
                        }
                        used.push(e);
                    }
                    Err(AllocError::NoSpace) => {
                        assert!(free.is_empty(), "seed {seed}: NoSpace with free blocks")
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            5..=8 if !used.is_empty() => {
                let i = r.below(used.len() as u64) as usize;
                let e = used.swap_remove(i);
                // Free a random part; keep the rest used.
                let off = r.below(e.len);
                let len = 1 + r.below(e.len - off);
                let part = Extent {
                    start: e.start + off,
                    len,
                };
                if off > 0 {
                    used.push(Extent {
                        start: e.start,
                        len: off,
                    });
                }
                if off + len < e.len {
                    used.push(Extent {
                        start: part.start + len,
                        len: e.len - off - len,
                    });
                }
                free_extent(&mut c, &mut root, part).unwrap();
                free.extend(part.start..part.start + part.len);
            }
            _ => {
                // A double free must be refused and change nothing.
                if let Some(&b) = free.iter().nth(r.below(free.len().max(1) as u64) as usize) {
                    let before = root;
                    let e =
                        free_extent(&mut c, &mut root, Extent { start: b, len: 1 }).unwrap_err();
                    assert!(
                        matches!(e, AllocError::DoubleFree { .. }),
                        "seed {seed}: {e}"
                    );
                    assert_eq!(before, root);
                }
            }
        }
        if step % 50 == 0 {
            c.commit_in_memory();
        }
        assert_eq!(
            root.total_len.get(),
            free.len() as u64,
            "seed {seed} step {step}"
        );
    }
    assert_eq!(
        free_extents(&mut c, &root).unwrap(),
        model_extents(&free),
        "seed {seed}: extents differ"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn allocator_matches_a_model_of_free_blocks(seed in any::<u64>()) {
        run(seed);
    }
}

#[test]
fn neighbours_merge_into_one_extent() {
    let mut c = BlockCache::in_memory(1, 1, 100..200);
    let mut root = AllocRoot::default();
    for start in [10u64, 30, 20] {
        free_extent(&mut c, &mut root, Extent { start, len: 10 }).unwrap();
    }
    assert_eq!(
        free_extents(&mut c, &root).unwrap(),
        vec![Extent { start: 10, len: 30 }]
    );
    let e = alloc_extent(&mut c, &mut root, 5).unwrap();
    assert_eq!(e, Extent { start: 10, len: 5 });
    assert_eq!(
        free_extents(&mut c, &root).unwrap(),
        vec![Extent { start: 15, len: 25 }]
    );
}

#[test]
fn exhausted_allocator_is_a_clean_no_space() {
    let mut c = BlockCache::in_memory(1, 1, 100..200);
    let mut root = AllocRoot::default();
    free_extent(&mut c, &mut root, Extent { start: 0, len: 3 }).unwrap();
    assert_eq!(
        alloc_extent(&mut c, &mut root, 10).unwrap(),
        Extent { start: 0, len: 3 }
    );
    let before = root;
    assert_eq!(alloc_extent(&mut c, &mut root, 1), Err(AllocError::NoSpace));
    assert_eq!(before, root);
}
