//! The btree against a `BTreeMap` model: long random operation sequences
//! with commits at random points (so copy-on-write paths run) and blocks
//! that miss at random (so every operation restarts from misses), a tree
//! of a million items filled and emptied (height grows and shrinks, no
//! block leaks), and corrupt blocks (errors, never panics).

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use scoutfs_engine::block::cache::BlockCache;
use scoutfs_engine::block::{BlockAccess, BlockError};
use scoutfs_engine::btree::{self, BtreeError, Corruption, Item, TreeStats, LOW_WATER_BYTES};
use scoutfs_engine::format::block::{seal_block, BlockMagic, BlockRef};
use scoutfs_engine::format::btree::{
    btree_block_mut, btree_items_mut, BtreeRoot, BTREE_MAX_VAL_LEN, ITEM_FLAG_DELETION,
};
use scoutfs_engine::format::key::{zone, Key};
use scoutfs_engine::util::rng::SimRng;

const FSID: u64 = 0x5c0f;

/// Enough block numbers for every test tree (blocks freed in a
/// transaction return at its commit).
fn cache(nr_blocks: u64) -> BlockCache {
    BlockCache::in_memory(FSID, 1, 100..100 + nr_blocks)
}

/// Misses injected into a `BlockCache`: the first request of a clean block
/// misses with probability `miss_num / miss_den`; once missed (or served)
/// it is "cached" until `evict` forgets every block. Checks the btree's
/// rule: no miss after an operation's first change.
struct Misses {
    rng: SimRng,
    miss_num: u64,
    miss_den: u64,
    cached: HashSet<(u64, u64)>,
    /// This attempt dirtied, allocated, freed or wrote a block.
    changed: bool,
    nr_misses: u64,
}

impl Misses {
    fn new(seed: u64, miss_num: u64, miss_den: u64) -> Self {
        Misses {
            rng: SimRng::new(seed),
            miss_num,
            miss_den,
            cached: HashSet::new(),
            changed: false,
            nr_misses: 0,
        }
    }

    fn evict(&mut self) {
        self.cached.clear();
    }
}

struct Access<'a> {
    cache: &'a mut BlockCache,
    m: &'a mut Misses,
}

impl Access<'_> {
    fn maybe_miss(&mut self, r: &BlockRef) -> Result<(), BlockError> {
        let id = (r.blkno.get(), r.seq.get());
        if self.cache.is_dirty(r) || self.m.cached.contains(&id) {
            return Ok(());
        }
        self.m.cached.insert(id);
        if self.m.rng.chance(self.m.miss_num, self.m.miss_den) {
            assert!(
                !self.m.changed,
                "block {} missed after the operation changed something",
                r.blkno.get()
            );
            self.m.nr_misses += 1;
            return Err(BlockError::Miss(*r));
        }
        Ok(())
    }
}

impl BlockAccess for Access<'_> {
    fn txn_seq(&self) -> u64 {
        self.cache.txn_seq()
    }

    fn get(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<&[u8], BlockError> {
        self.maybe_miss(r)?;
        self.cache.get(r, magic)
    }

    fn dirty(&mut self, r: &BlockRef, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        self.maybe_miss(r)?;
        self.m.changed = true;
        self.cache.dirty(r, magic)
    }

    fn get_mut(&mut self, r: &BlockRef) -> &mut [u8] {
        self.m.changed = true;
        self.cache.get_mut(r)
    }

    fn alloc(&mut self, magic: BlockMagic) -> Result<BlockRef, BlockError> {
        self.m.changed = true;
        self.cache.alloc(magic)
    }

    fn free(&mut self, r: &BlockRef) {
        self.m.changed = true;
        self.cache.free(r)
    }

    fn is_dirty(&self, r: &BlockRef) -> bool {
        self.cache.is_dirty(r)
    }
}

/// Run `op` until it doesn't miss, as the engine's callers do.
fn retry<T>(
    cache: &mut BlockCache,
    m: &mut Misses,
    mut op: impl FnMut(&mut dyn BlockAccess) -> Result<T, BtreeError>,
) -> Result<T, BtreeError> {
    for _ in 0..1000 {
        m.changed = false;
        let res = op(&mut Access {
            cache: &mut *cache,
            m: &mut *m,
        });
        match res {
            Err(BtreeError::Block(BlockError::Miss(_))) => continue,
            other => return other,
        }
    }
    panic!("an operation missed 1000 times");
}

type Model = BTreeMap<Key, (u64, u8, Vec<u8>)>;

fn item_of(key: Key, v: &(u64, u8, Vec<u8>)) -> Item {
    Item {
        key,
        seq: v.0,
        flags: v.1,
        val: v.2.clone(),
    }
}

fn check(cache: &mut BlockCache, root: &BtreeRoot) -> TreeStats {
    match btree::check_tree(cache, root) {
        Ok(s) => s,
        Err(e) => panic!("check_tree: {e}"),
    }
}

fn all_items(cache: &mut BlockCache, root: &BtreeRoot) -> Vec<Item> {
    btree::range(cache, root, &Key::MIN, &Key::MAX, usize::MAX).unwrap()
}

fn model_items(model: &Model) -> Vec<Item> {
    model.iter().map(|(k, v)| item_of(*k, v)).collect()
}

/// Every block reachable from the roots, by walking them.
fn reachable(cache: &mut BlockCache, roots: &[BtreeRoot]) -> HashSet<u64> {
    let mut set = HashSet::new();
    for root in roots {
        btree::walk_blocks(cache, root, &mut |_, r, _| {
            assert!(
                set.insert(r.blkno.get()),
                "block {} reached twice",
                r.blkno.get()
            );
        })
        .unwrap();
    }
    set
}

/// After a commit: every block is either reachable or back in the free
/// list, and the cache holds exactly the reachable ones.
fn assert_no_leaks(cache: &mut BlockCache, roots: &[BtreeRoot], nr_blocks: u64) -> usize {
    let live = reachable(cache, roots);
    let avail: HashSet<u64> = cache.meta_alloc().avail.iter().copied().collect();
    assert_eq!(
        avail.len(),
        cache.meta_alloc().avail.len(),
        "a block is free twice"
    );
    assert!(live.is_disjoint(&avail), "a reachable block is free");
    assert_eq!(
        live.len() + avail.len(),
        nr_blocks as usize,
        "blocks leaked"
    );
    assert_eq!(
        cache.nr_cached(),
        live.len(),
        "unreachable blocks still cached"
    );
    live.len()
}

/// Keys clustered as fs items are: a few inodes with several item types,
/// so leaves fill, split and merge around the same places.
fn random_key(r: &mut SimRng, spread: u64) -> Key {
    Key::new(
        zone::FS,
        1 + r.below(spread),
        [4u8, 8, 12, 16, 28][r.below(5) as usize],
        r.below(64),
        0,
        0,
    )
}

fn random_value(r: &mut SimRng, profile: u8) -> Vec<u8> {
    let len = match (profile, r.below(8)) {
        // Mostly small.
        (0, 0) => BTREE_MAX_VAL_LEN,
        (0, _) => r.below(64) as usize,
        // Mostly large: few items per leaf, many splits and merges.
        (1, 0) => 0,
        (1, _) => 600 + r.below(BTREE_MAX_VAL_LEN as u64 - 599) as usize,
        // Anything.
        _ => r.below(BTREE_MAX_VAL_LEN as u64 + 1) as usize,
    };
    let b = r.next_u64() as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

struct RunStats {
    max_height: u8,
    /// Times the height grew or shrank while the tree held items.
    grows: u64,
    shrinks: u64,
    misses: u64,
    commits: u64,
}

/// Random operations on one tree against the model, in `phases` that
/// alternate between mostly inserting and mostly deleting so the tree
/// grows and shrinks; then the tree is emptied. Returns what happened so
/// callers can assert that the run reached the shapes they want.
fn run_model(
    seed: u64,
    nr_ops: usize,
    phases: usize,
    profile: u8,
    spread: u64,
    miss_den: u64,
) -> RunStats {
    const NR_BLOCKS: u64 = 200_000;
    let mut r = SimRng::new(seed);
    let mut cache = cache(NR_BLOCKS);
    let mut m = Misses::new(r.next_u64(), 1, miss_den);
    let mut root = BtreeRoot::default();
    let mut model = Model::new();
    let mut st = RunStats {
        max_height: 0,
        grows: 0,
        shrinks: 0,
        misses: 0,
        commits: 0,
    };
    // Full checks cost about the tree's size: a few hundred per run.
    let check_every = (nr_ops / 200).max(500);
    // Commits make the next change of every block copy it: often, but
    // not so often in long runs that copying dominates.
    let commit_den = (nr_ops as u64 / 300).clamp(200, 2000);
    let mut height = 0;
    let mut track = |st: &mut RunStats, h: u8| {
        if h > height && height > 0 {
            st.grows += 1;
        }
        if h < height && h > 0 {
            st.shrinks += 1;
        }
        height = h;
        st.max_height = st.max_height.max(h);
    };
    for i in 0..nr_ops {
        let (ins, del) = if (i * phases / nr_ops).is_multiple_of(2) {
            (8, 1)
        } else {
            (1, 8)
        };
        let dice = r.below(16);
        let seq = cache.txn_seq();
        if dice < ins {
            let key = random_key(&mut r, spread);
            let val = random_value(&mut r, profile);
            let flags = if r.chance(1, 20) {
                ITEM_FLAG_DELETION
            } else {
                0
            };
            let item = Item {
                key,
                seq,
                flags,
                val: val.clone(),
            };
            let res = retry(&mut cache, &mut m, |c| {
                btree::insert(c, &mut root, item.clone())
            });
            match model.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    assert_eq!(res, Err(BtreeError::Exists))
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    res.unwrap();
                    e.insert((seq, flags, val));
                }
            }
        } else if dice < ins + del {
            // Mostly keys that exist.
            let key = match model.range(random_key(&mut r, spread)..).next() {
                Some((k, _)) if r.chance(7, 8) => *k,
                _ => random_key(&mut r, spread),
            };
            let res = retry(&mut cache, &mut m, |c| btree::delete(c, &mut root, &key));
            match model.remove(&key) {
                Some(v) => assert_eq!(res.unwrap(), item_of(key, &v)),
                None => assert_eq!(res, Err(BtreeError::NotFound)),
            }
        } else {
            let key = match model.range(random_key(&mut r, spread)..).next() {
                Some((k, _)) if r.chance(1, 2) => *k,
                _ => random_key(&mut r, spread),
            };
            match dice - ins - del {
                0 | 1 => {
                    let v = (seq, 0, random_value(&mut r, profile));
                    let item = item_of(key, &v);
                    let res = retry(&mut cache, &mut m, |c| {
                        btree::update(c, &mut root, item.clone())
                    });
                    if let std::collections::btree_map::Entry::Occupied(mut e) = model.entry(key) {
                        res.unwrap();
                        e.insert(v);
                    } else {
                        assert_eq!(res, Err(BtreeError::NotFound));
                    }
                }
                2 | 3 => {
                    let v = (seq, 0, random_value(&mut r, profile));
                    let item = item_of(key, &v);
                    retry(&mut cache, &mut m, |c| {
                        btree::upsert(c, &mut root, item.clone())
                    })
                    .unwrap();
                    model.insert(key, v);
                }
                4 => {
                    let got = retry(&mut cache, &mut m, |c| btree::lookup(c, &root, &key)).unwrap();
                    assert_eq!(got, model.get(&key).map(|v| item_of(key, v)));
                }
                5 => {
                    let got = retry(&mut cache, &mut m, |c| btree::next(c, &root, &key)).unwrap();
                    assert_eq!(got, model.range(key..).next().map(|(k, v)| item_of(*k, v)));
                }
                6 => {
                    let got = retry(&mut cache, &mut m, |c| btree::prev(c, &root, &key)).unwrap();
                    assert_eq!(
                        got,
                        model.range(..=key).next_back().map(|(k, v)| item_of(*k, v))
                    );
                }
                _ => {
                    let last = Key {
                        first: key.first + r.below(4),
                        ..Key::inode_last(0)
                    };
                    let max = 1 + r.below(300) as usize;
                    let got = retry(&mut cache, &mut m, |c| {
                        btree::range(c, &root, &key, &last, max)
                    })
                    .unwrap();
                    let want: Vec<Item> = if key <= last {
                        model
                            .range(key..=last)
                            .take(max)
                            .map(|(k, v)| item_of(*k, v))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    assert_eq!(got, want);
                }
            }
        }
        track(&mut st, root.height);
        if r.chance(1, commit_den) {
            cache.commit_in_memory();
            st.commits += 1;
        }
        if r.chance(1, 50) {
            m.evict();
        }
        if i % check_every == check_every - 1 {
            let stats = check(&mut cache, &root);
            assert_eq!(stats.items, model.len() as u64);
            assert_eq!(stats.height, root.height);
        }
        if i % (check_every * 4) == check_every * 4 - 1 {
            assert_eq!(all_items(&mut cache, &root), model_items(&model));
        }
    }
    check(&mut cache, &root);
    assert_eq!(all_items(&mut cache, &root), model_items(&model));
    // Empty the tree: no block may be left behind.
    let keys: Vec<Key> = model.keys().copied().collect();
    for k in keys {
        retry(&mut cache, &mut m, |c| btree::delete(c, &mut root, &k)).unwrap();
        track(&mut st, root.height);
        if r.chance(1, 500) {
            cache.commit_in_memory();
        }
    }
    assert_eq!(root, BtreeRoot::default());
    cache.commit_in_memory();
    assert_eq!(assert_no_leaks(&mut cache, &[], NR_BLOCKS), 0);
    st.misses = m.nr_misses;
    st
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(seed in any::<u64>(), profile in 0u8..3, spread in 4u64..200) {
        let st = run_model(seed, 10_000, 4, profile, spread, 3);
        prop_assert!(st.misses > 0);
    }
}

#[test]
fn large_values_split_and_merge_parents_as_the_tree_grows_and_shrinks() {
    // Large values: 35 to 69 items a leaf, so tens of thousands of items
    // make a three-level tree whose parents split and merge.
    let t0 = std::time::Instant::now();
    let st = run_model(7, 600_000, 4, 1, 4000, 4);
    eprintln!(
        "height up to {}, {} grows, {} shrinks, {} misses, {} commits, {:?}",
        st.max_height,
        st.grows,
        st.shrinks,
        st.misses,
        st.commits,
        t0.elapsed()
    );
    assert!(st.max_height >= 3, "height {}", st.max_height);
    // Up to 3, down to 2 and 1 (and again).
    assert!(
        st.grows >= 2 && st.shrinks >= 2,
        "{} grows, {} shrinks",
        st.grows,
        st.shrinks
    );
    assert!(st.commits > 100 && st.misses > 1000);
}

#[test]
fn operations_on_an_empty_tree() {
    let mut c = cache(10);
    let mut root = BtreeRoot::default();
    let k = Key::inode(5);
    assert_eq!(btree::lookup(&mut c, &root, &k), Ok(None));
    assert_eq!(btree::next(&mut c, &root, &k), Ok(None));
    assert_eq!(btree::prev(&mut c, &root, &k), Ok(None));
    assert_eq!(
        btree::range(&mut c, &root, &Key::MIN, &Key::MAX, 10),
        Ok(vec![])
    );
    assert_eq!(
        btree::delete(&mut c, &mut root, &k),
        Err(BtreeError::NotFound)
    );
    let item = Item {
        key: k,
        seq: 1,
        flags: 0,
        val: vec![1, 2, 3],
    };
    assert_eq!(
        btree::update(&mut c, &mut root, item.clone()),
        Err(BtreeError::NotFound)
    );
    assert_eq!(
        btree::insert(
            &mut c,
            &mut root,
            Item {
                val: vec![0; BTREE_MAX_VAL_LEN + 1],
                ..item.clone()
            }
        ),
        Err(BtreeError::ValueTooLarge {
            len: BTREE_MAX_VAL_LEN + 1
        })
    );
    assert_eq!(root, BtreeRoot::default());
    btree::insert(&mut c, &mut root, item.clone()).unwrap();
    assert_eq!(root.height, 1);
    assert_eq!(
        btree::insert(&mut c, &mut root, item.clone()),
        Err(BtreeError::Exists)
    );
    assert_eq!(btree::lookup(&mut c, &root, &k), Ok(Some(item.clone())));
    assert_eq!(
        btree::prev(&mut c, &root, &Key::MAX),
        Ok(Some(item.clone()))
    );
    assert_eq!(
        btree::next(&mut c, &root, &Key::MIN),
        Ok(Some(item.clone()))
    );
    assert_eq!(btree::delete(&mut c, &mut root, &k), Ok(item));
    assert_eq!(root, BtreeRoot::default());
    c.commit_in_memory();
    assert_no_leaks(&mut c, &[], 10);
}

#[test]
fn no_free_blocks_is_a_clean_error() {
    // Fill a tree until the block supply runs out: every failed insert
    // leaves the tree consistent and unchanged.
    let mut c = cache(40);
    let mut root = BtreeRoot::default();
    let mut model = Model::new();
    let mut r = SimRng::new(11);
    let mut failures = 0;
    for i in 0..20_000u64 {
        let key = Key::new(zone::FS, r.below(1 << 20), 4, i, 0, 0);
        let v = (1, 0, vec![i as u8; 500]);
        match btree::insert(&mut c, &mut root, item_of(key, &v)) {
            Ok(()) => {
                model.insert(key, v);
            }
            Err(BtreeError::Block(BlockError::NoSpace)) => {
                failures += 1;
                check(&mut c, &root);
                if failures > 20 {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        if i % 100 == 0 {
            c.commit_in_memory();
        }
    }
    assert!(failures > 0);
    assert_eq!(all_items(&mut c, &root), model_items(&model));
}

/// Key of item number `p` of the big tree: one inode's extents, say.
fn big_key(p: u64) -> Key {
    Key::new(zone::FS, 1 + (p >> 16), 28, p & 0xffff, 0, 0)
}

fn big_val(p: u64) -> Vec<u8> {
    p.to_le_bytes()[..(p % 9) as usize].to_vec()
}

#[test]
fn a_million_items_grow_then_shrink_the_tree_without_leaks() {
    const N: u64 = 1_000_000;
    const NR_BLOCKS: u64 = 20_000;
    let t0 = std::time::Instant::now();
    let mut r = SimRng::new(0xb16);
    let mut c = cache(NR_BLOCKS);
    let mut root = BtreeRoot::default();
    // Insert in a scattered order: p = i * A mod N.
    const A: u64 = 7_919 * 13;
    let mut max_height = 0;
    for i in 0..N {
        let p = i * A % N;
        let item = Item {
            key: big_key(p),
            seq: c.txn_seq(),
            flags: 0,
            val: big_val(p),
        };
        btree::insert(&mut c, &mut root, item).unwrap();
        max_height = max_height.max(root.height);
        if i % 200_000 == 199_999 {
            c.commit_in_memory();
        }
    }
    let stats = check(&mut c, &root);
    assert_eq!(stats.items, N);
    assert!(max_height >= 3, "height {max_height}");
    let fill = stats.item_bytes as f64 / (stats.blocks as f64 * 65488.0);
    eprintln!("filled: {stats:?}, fill {fill:.2}, {:?}", t0.elapsed());

    // Every item, in order, by ranges.
    let mut from = Key::MIN;
    let mut p = 0;
    loop {
        let items = btree::range(&mut c, &root, &from, &Key::MAX, 10_000).unwrap();
        for it in &items {
            assert_eq!(it.key, big_key(p));
            assert_eq!(it.val, big_val(p));
            p += 1;
        }
        match items.last().and_then(|l| l.key.next()) {
            Some(n) if items.len() == 10_000 => from = n,
            _ => break,
        }
    }
    assert_eq!(p, N);
    c.commit_in_memory();
    let blocks_full = assert_no_leaks(&mut c, &[root], NR_BLOCKS);

    // Delete all but 500, in random order, checking as we go.
    let mut order: Vec<u64> = (0..N).collect();
    r.shuffle(&mut order);
    let mut present = vec![true; N as usize];
    let keep = 500;
    for (i, &p) in order[..(N - keep) as usize].iter().enumerate() {
        let it = btree::delete(&mut c, &mut root, &big_key(p)).unwrap();
        assert_eq!(it.val, big_val(p));
        present[p as usize] = false;
        if i % 100_000 == 99_999 {
            let stats = check(&mut c, &root);
            assert_eq!(stats.items, N - 1 - i as u64);
            // Spot checks against the model.
            for _ in 0..1000 {
                let q = r.below(N);
                let got = btree::lookup(&mut c, &root, &big_key(q)).unwrap();
                assert_eq!(got.is_some(), present[q as usize]);
                let nx = btree::next(&mut c, &root, &big_key(q))
                    .unwrap()
                    .map(|it| it.key);
                let want = (q..N).find(|&x| present[x as usize]).map(big_key);
                assert_eq!(nx, want);
            }
        }
        if i % 250_000 == 249_999 {
            c.commit_in_memory();
        }
    }
    let stats = check(&mut c, &root);
    assert_eq!(stats.items, keep);
    assert!(
        root.height < max_height,
        "height {} of {max_height}",
        root.height
    );
    let want: Vec<Key> = (0..N)
        .filter(|&p| present[p as usize])
        .map(big_key)
        .collect();
    let got: Vec<Key> = all_items(&mut c, &root).iter().map(|it| it.key).collect();
    assert_eq!(got, want);
    c.commit_in_memory();
    let blocks_left = assert_no_leaks(&mut c, &[root], NR_BLOCKS);
    eprintln!(
        "{blocks_full} blocks full, {blocks_left} with {keep} items, height {}, {:?}",
        root.height,
        t0.elapsed()
    );
    assert!(blocks_left <= 3, "{blocks_left} blocks for {keep} items");

    for &p in &order[(N - keep) as usize..] {
        btree::delete(&mut c, &mut root, &big_key(p)).unwrap();
    }
    assert_eq!(root, BtreeRoot::default());
    c.commit_in_memory();
    assert_no_leaks(&mut c, &[], NR_BLOCKS);
}

/// A value of the largest size, made from `p`.
fn large_val(p: u64) -> Vec<u8> {
    let mut v = vec![p as u8; BTREE_MAX_VAL_LEN];
    v[..8].copy_from_slice(&p.to_le_bytes());
    v
}

#[test]
fn parent_levels_split_and_merge_under_misses() {
    // Largest values, appended in order: half-full leaves of 35 items,
    // half-full parents of 511 leaves, so 60,000 items make a three-level
    // tree with four parents at level 1. Windows of it are emptied in
    // random order (leaves merge until parents merge, the height drops)
    // and refilled (parents split, the height grows), with misses
    // injected and commits, against the model.
    const NR_BLOCKS: u64 = 20_000;
    const N: u64 = 60_000;
    let mut r = SimRng::new(0x9a2e);
    let mut c = cache(NR_BLOCKS);
    let mut m = Misses::new(5, 1, 2);
    let mut root = BtreeRoot::default();
    let mut present = vec![false; N as usize];
    for p in 0..N {
        let item = Item {
            key: big_key(p),
            seq: 1,
            flags: 0,
            val: large_val(p),
        };
        btree::insert(&mut c, &mut root, item).unwrap();
        present[p as usize] = true;
    }
    assert_eq!(root.height, 3);
    c.commit_in_memory();

    let spot_check =
        |c: &mut BlockCache, m: &mut Misses, root: &BtreeRoot, present: &[bool], r: &mut SimRng| {
            let stats = check(c, root);
            assert_eq!(stats.items, present.iter().filter(|p| **p).count() as u64);
            for _ in 0..200 {
                let q = r.below(N);
                let nx = retry(c, m, |a| btree::next(a, root, &big_key(q))).unwrap();
                let want = (q..N).find(|&x| present[x as usize]).map(big_key);
                assert_eq!(nx.map(|it| it.key), want);
                let pv = retry(c, m, |a| btree::prev(a, root, &big_key(q))).unwrap();
                let want = (0..=q).rev().find(|&x| present[x as usize]).map(big_key);
                assert_eq!(pv.map(|it| it.key), want);
                if let Some(it) = retry(c, m, |a| btree::lookup(a, root, &big_key(q))).unwrap() {
                    assert_eq!(it.val, large_val(q));
                }
            }
        };
    let mut heights = vec![root.height];
    let mut ops = 0u64;
    for round in 0..8 {
        // Empty a window of 3/4 of the items, then refill it.
        let start = r.below(N / 4);
        let mut window: Vec<u64> = (start..start + N * 3 / 4).collect();
        for refill in [false, true] {
            r.shuffle(&mut window);
            for &p in &window {
                let k = big_key(p);
                if refill {
                    let item = Item {
                        key: k,
                        seq: 2 + round,
                        flags: 0,
                        val: large_val(p),
                    };
                    retry(&mut c, &mut m, |a| {
                        btree::insert(a, &mut root, item.clone())
                    })
                    .unwrap();
                } else {
                    let it = retry(&mut c, &mut m, |a| btree::delete(a, &mut root, &k)).unwrap();
                    assert_eq!((it.key, it.val), (k, large_val(p)));
                }
                present[p as usize] = refill;
                if heights.last() != Some(&root.height) {
                    heights.push(root.height);
                }
                ops += 1;
                if r.chance(1, 2000) {
                    c.commit_in_memory();
                }
                if r.chance(1, 100) {
                    m.evict();
                }
                if ops.is_multiple_of(20_000) {
                    spot_check(&mut c, &mut m, &root, &present, &mut r);
                }
            }
            spot_check(&mut c, &mut m, &root, &present, &mut r);
        }
    }
    eprintln!("heights {heights:?}, {} misses", m.nr_misses);
    assert!(
        heights.windows(3).any(|w| w == [3, 2, 3]),
        "heights {heights:?}"
    );
    assert!(m.nr_misses > 1000);
    let got: Vec<Key> = all_items(&mut c, &root).iter().map(|it| it.key).collect();
    let want: Vec<Key> = (0..N)
        .filter(|&p| present[p as usize])
        .map(big_key)
        .collect();
    assert_eq!(got, want);
    c.commit_in_memory();
    assert_no_leaks(&mut c, &[root], NR_BLOCKS);
}

// ---------------------------------------------------------------------------
// Corruption

/// A committed two-level tree of `n` items; returns its root.
fn committed_tree(c: &mut BlockCache, n: u64) -> BtreeRoot {
    let mut root = BtreeRoot::default();
    for p in 0..n {
        let item = Item {
            key: big_key(p),
            seq: 1,
            flags: 0,
            val: vec![p as u8; 40],
        };
        btree::insert(c, &mut root, item).unwrap();
    }
    c.commit_in_memory();
    root
}

/// Replace the committed block `r` with `edit` applied, re-sealed so that
/// its header and crc check out (as if written like that).
fn corrupt_block(c: &mut BlockCache, r: &BlockRef, edit: impl FnOnce(&mut [u8])) {
    let mut data = c.get(r, BlockMagic::Btree).unwrap().to_vec();
    edit(&mut data);
    seal_block(
        &mut data,
        BlockMagic::Btree,
        FSID,
        r.blkno.get(),
        r.seq.get(),
    );
    c.insert_read(r, BlockMagic::Btree, &data).unwrap();
}

/// The first leaf and the root of the tree.
fn first_leaf(c: &mut BlockCache, root: &BtreeRoot) -> BlockRef {
    let mut leaf = None;
    btree::walk_blocks(c, root, &mut |level, r, _| {
        if level == 0 && leaf.is_none() {
            leaf = Some(*r);
        }
    })
    .unwrap();
    leaf.unwrap()
}

/// Every operation on the tree: none may panic; returns the errors.
fn run_all_ops(c: &mut BlockCache, root: &mut BtreeRoot, n: u64) -> Vec<BtreeError> {
    let mut errs = Vec::new();
    let mut note = |r: Result<(), BtreeError>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    for p in [0, 1, n / 2, n - 1, n + 5] {
        let k = big_key(p);
        note(btree::lookup(c, root, &k).map(|_| ()));
        note(btree::next(c, root, &k).map(|_| ()));
        note(btree::prev(c, root, &k).map(|_| ()));
        note(btree::range(c, root, &k, &Key::MAX, 500).map(|_| ()));
    }
    note(btree::walk_blocks(c, root, &mut |_, _, _| {}));
    note(btree::check_tree(c, root).map(|_| ()));
    for p in [0, n / 2, n + 5] {
        let item = Item {
            key: big_key(p),
            seq: 2,
            flags: 0,
            val: vec![9; 300],
        };
        note(btree::upsert(c, root, item));
        note(btree::delete(c, root, &big_key(p + 1)).map(|_| ()));
    }
    // Delete a run so merges reach for siblings.
    for p in 0..n.min(2000) {
        note(btree::delete(c, root, &big_key(p)).map(|_| ()));
    }
    errs
}

fn is_corrupt(e: &BtreeError) -> bool {
    matches!(e, BtreeError::Corrupt { .. } | BtreeError::Invalid(_))
}

#[test]
fn corrupt_blocks_are_errors_not_panics() {
    const N: u64 = 5000;
    type Edit = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, bool, Edit)> = vec![
        (
            "too many items",
            true,
            Box::new(|b: &mut [u8]| btree_block_mut(b).nr_items.set(5000)),
        ),
        (
            "wrong level",
            true,
            Box::new(|b: &mut [u8]| btree_block_mut(b).level = 7),
        ),
        (
            "gap past the end",
            true,
            Box::new(|b: &mut [u8]| btree_block_mut(b).mid_free_len.set(65000)),
        ),
        (
            "value outside the block",
            true,
            Box::new(|b: &mut [u8]| btree_items_mut(b, 3)[2].val_off.set(65528)),
        ),
        (
            "keys out of order",
            true,
            Box::new(|b: &mut [u8]| btree_items_mut(b, 3).swap(0, 2)),
        ),
        (
            "value length in a parent",
            false,
            Box::new(|b: &mut [u8]| btree_items_mut(b, 2)[1].val_len.set(900)),
        ),
        (
            "parent value outside the block",
            false,
            Box::new(|b: &mut [u8]| btree_items_mut(b, 2)[0].val_off.set(65535)),
        ),
        (
            "empty parent",
            false,
            Box::new(|b: &mut [u8]| btree_block_mut(b).nr_items.set(0)),
        ),
        (
            "total bytes",
            true,
            Box::new(|b: &mut [u8]| btree_block_mut(b).total_item_bytes.set(7)),
        ),
    ];
    for (what, in_leaf, edit) in cases {
        let mut c = cache(200);
        let mut root = committed_tree(&mut c, N);
        assert_eq!(root.height, 2);
        let target = if in_leaf {
            first_leaf(&mut c, &root)
        } else {
            root.ref_
        };
        corrupt_block(&mut c, &target, |b| edit(b));
        let errs = run_all_ops(&mut c, &mut root, N);
        assert!(
            errs.iter().any(is_corrupt),
            "{what}: no corruption reported: {errs:?}"
        );
        for e in &errs {
            assert!(
                is_corrupt(e) || matches!(e, BtreeError::NotFound),
                "{what}: unexpected {e}"
            );
        }
        if let Some(BtreeError::Corrupt { blkno, .. }) = errs
            .iter()
            .find(|e| matches!(e, BtreeError::Corrupt { .. }))
        {
            assert_eq!(*blkno, target.blkno.get(), "{what}");
        }
    }
    // A root past the height limit.
    let mut c = cache(10);
    let mut root = BtreeRoot {
        ref_: BlockRef::new(100, 1),
        height: 21,
        _pad: [0; 7],
    };
    let e = btree::lookup(&mut c, &root, &Key::MIN).unwrap_err();
    assert!(matches!(
        e,
        BtreeError::Corrupt {
            corruption: Corruption::RootHeight { height: 21 },
            ..
        }
    ));
    assert!(btree::insert(&mut c, &mut root, Item::default()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes written over the headers of a block: any outcome but
    /// a panic (a child reference pointing elsewhere may miss or be stale).
    #[test]
    fn random_damage_never_panics(
        which in 0usize..3,
        edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..12),
    ) {
        const N: u64 = 3000;
        let mut c = cache(200);
        let mut root = committed_tree(&mut c, N);
        let mut blocks = Vec::new();
        btree::walk_blocks(&mut c, &root, &mut |_, r, _| blocks.push(*r)).unwrap();
        let target = blocks[which % blocks.len()];
        corrupt_block(&mut c, &target, |b| {
            for (at, v) in &edits {
                b[32 + at] = *v;
            }
        });
        let _ = run_all_ops(&mut c, &mut root, N);
    }
}

#[test]
fn checker_reports_underfull_blocks_and_bad_bounds() {
    let mut c = cache(200);
    let root = committed_tree(&mut c, 5000);
    let leaf = first_leaf(&mut c, &root);
    // Drop most of the first leaf's items: consistent layout, but under
    // the low-water mark.
    corrupt_block(&mut c, &leaf, |b| {
        btree_block_mut(b).nr_items.set(3);
        let total: usize = 3 * (48 + 40);
        btree_block_mut(b).total_item_bytes.set(total as u16);
        // Values stay where they are; the gap grows by the dropped headers
        // only if they were below it, so recompute it from the lowest value.
        let items_end = 48 + 3 * 48;
        let lowest = btree_items_mut(b, 3)
            .iter()
            .map(|it| it.val_off.get())
            .min()
            .unwrap();
        btree_block_mut(b)
            .mid_free_len
            .set(lowest - items_end as u16);
    });
    let e = btree::check_tree(&mut c, &root).unwrap_err();
    let BtreeError::Invalid(p) = e else {
        panic!("{e}")
    };
    assert!(p.0.iter().any(|p| matches!(
        p.kind,
        btree::TreeProblemKind::Underfull { total_item_bytes } if total_item_bytes < LOW_WATER_BYTES
    )));
    println!("{}", BtreeError::Invalid(p));

    // A leaf key above its parent's bound.
    let mut c = cache(200);
    let root = committed_tree(&mut c, 5000);
    let leaf = first_leaf(&mut c, &root);
    corrupt_block(&mut c, &leaf, |b| {
        let n = scoutfs_engine::format::btree::btree_items(b).len();
        btree_items_mut(b, n)[n - 1].key = big_key(4_000).to_disk();
    });
    let e = btree::check_tree(&mut c, &root).unwrap_err();
    let BtreeError::Invalid(p) = e else {
        panic!("{e}")
    };
    assert!(p
        .0
        .iter()
        .any(|p| matches!(p.kind, btree::TreeProblemKind::KeyOutOfBounds { .. })));
}

/// Every block reachable from the root, by a plain recursive walk over the
/// format's accessors (independent of the btree's walk).
fn naive_blocks(c: &mut BlockCache, r: &BlockRef, level: u8, out: &mut Vec<(u8, u64)>) {
    use scoutfs_engine::format::btree::{btree_item_value, btree_items};
    let b = c.get(r, BlockMagic::Btree).unwrap().to_vec();
    out.push((level, r.blkno.get()));
    if level > 0 {
        for it in btree_items(&b) {
            let child: BlockRef = bytemuck::pod_read_unaligned(btree_item_value(&b, it).unwrap());
            naive_blocks(c, &child, level - 1, out);
        }
    }
}

#[test]
fn walks_and_checks_resume_across_misses() {
    // A three-level tree: 40,000 of the largest items appended in order.
    let mut c = cache(5000);
    let mut root = BtreeRoot::default();
    for p in 0..40_000 {
        let item = Item {
            key: big_key(p),
            seq: 1,
            flags: 0,
            val: large_val(p),
        };
        btree::insert(&mut c, &mut root, item).unwrap();
    }
    c.commit_in_memory();
    assert_eq!(root.height, 3);
    let mut want = Vec::new();
    naive_blocks(&mut c, &root.ref_, root.height - 1, &mut want);
    let mut one_shot = Vec::new();
    btree::walk_blocks(&mut c, &root, &mut |l, r, _| {
        one_shot.push((l, r.blkno.get()))
    })
    .unwrap();
    assert_eq!(one_shot, want, "pre-order, children in key order");
    let stats = check(&mut c, &root);

    // Every first read of a block misses and everything is forgotten
    // after each step: each step still completes after its misses, and
    // no block is visited twice.
    let mut m = Misses::new(1, 1, 1);
    let mut walk = btree::BlockWalk::new(&root);
    let mut got = Vec::new();
    let mut steps = 0;
    loop {
        m.changed = false;
        let res = walk.step(
            &mut Access {
                cache: &mut c,
                m: &mut m,
            },
            &mut |l, r, _| got.push((l, r.blkno.get())),
        );
        match res {
            Ok(more) => {
                steps += 1;
                m.evict();
                if !more {
                    break;
                }
            }
            Err(BtreeError::Block(BlockError::Miss(_))) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(walk.is_done());
    assert_eq!(got, want);
    // One step a leaf, and maybe one that finds nothing past the last.
    assert!(
        (stats.leaf_blocks..=stats.leaf_blocks + 1).contains(&steps),
        "{steps} steps"
    );
    assert!(m.nr_misses >= stats.blocks);

    let mut ck = btree::TreeCheck::new(&root);
    loop {
        match ck.step(&mut Access {
            cache: &mut c,
            m: &mut m,
        }) {
            Ok(true) => m.evict(),
            Ok(false) => break,
            Err(BtreeError::Block(BlockError::Miss(_))) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ck.finish().unwrap(), stats);
}

#[test]
fn prefetch_reads_every_block_a_change_needs() {
    let mut c = cache(5000);
    let mut root = BtreeRoot::default();
    let mut present = vec![false; 40_000];
    for p in 0..40_000u64 {
        let item = Item {
            key: big_key(p),
            seq: 1,
            flags: 0,
            val: large_val(p),
        };
        btree::insert(&mut c, &mut root, item).unwrap();
        present[p as usize] = true;
    }
    assert_eq!(root.height, 3);
    let mut r = SimRng::new(77);
    // Every block not read since the last eviction misses.
    let mut m = Misses::new(2, 1, 1);
    for i in 0..20_000 {
        // Deletes in runs, so leaves and parents merge and rebalance.
        let p = if i % 2 == 0 {
            r.below(40_000)
        } else {
            (i / 40) % 40_000
        };
        let k = big_key(p);
        m.evict();
        retry(&mut c, &mut m, |a| btree::prefetch(a, &root, &k)).unwrap();
        let before = m.nr_misses;
        m.changed = false;
        let mut a = Access {
            cache: &mut c,
            m: &mut m,
        };
        if present[p as usize] {
            btree::delete(&mut a, &mut root, &k).unwrap();
        } else {
            let item = Item {
                key: k,
                seq: 2,
                flags: 0,
                val: large_val(p),
            };
            btree::insert(&mut a, &mut root, item).unwrap();
        }
        present[p as usize] = !present[p as usize];
        assert_eq!(m.nr_misses, before, "a change missed after its prefetch");
        if i % 3000 == 0 {
            c.commit_in_memory();
        }
    }
    let stats = check(&mut c, &root);
    assert_eq!(stats.items, present.iter().filter(|p| **p).count() as u64);
}

#[test]
fn checker_reports_shared_blocks() {
    let mut c = cache(200);
    let root = committed_tree(&mut c, 5000);
    corrupt_block(&mut c, &root.ref_, |b| {
        let its = btree_items_mut(b, 2);
        let (a, bb) = (its[0].val_off.get() as usize, its[1].val_off.get() as usize);
        let first: [u8; 16] = b[a..a + 16].try_into().unwrap();
        b[bb..bb + 16].copy_from_slice(&first);
    });
    let e = btree::check_tree(&mut c, &root).unwrap_err();
    let BtreeError::Invalid(p) = e else {
        panic!("{e}")
    };
    assert!(
        p.0.iter()
            .any(|p| p.kind == btree::TreeProblemKind::SharedBlock),
        "{p}"
    );
}
