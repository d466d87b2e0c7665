//! Targets for structures read from the metadata device: the super block,
//! quorum blocks, btree blocks (with every operation that reads them),
//! allocator trees and alloc-list blocks, and log-trees records.
//!
//! Blocks are resealed (crc recomputed, fsid set to the harness's) before
//! they are checked, unless the input asks for its bytes as given: a
//! fuzzer can't forge crc32c, and the crc check is one comparison; what
//! lies behind it is what needs the exercise.

use scoutfs_engine::alloc::{alloc_extent, free_extent, free_extents};
use scoutfs_engine::block::cache::BlockCache;
use scoutfs_engine::block::BlockAccess;
use scoutfs_engine::btree::{self, check_tree, walk_blocks, Item};
use scoutfs_engine::forest::{self, ForestRoots};
use scoutfs_engine::format::alloc::{
    alloc_list_block, alloc_list_entries, free_extent_from_key, AllocRoot, Extent,
    ALLOC_LIST_BLKNOS_OFFSET,
};
use scoutfs_engine::format::block::{BlockHeader, BlockMagic, BlockRef, BLOCK_SM_SIZE};
use scoutfs_engine::format::btree::{
    btree_block as block_header, btree_items, check_btree_layout, BtreeRoot, BTREE_MAX_VAL_LEN,
};
use scoutfs_engine::format::inode::Inode;
use scoutfs_engine::format::key::Key;
use scoutfs_engine::format::log_trees::LogTrees;
use scoutfs_engine::format::quorum::{read_quorum_block, QuorumEvent, QUORUM_MAX_SLOTS};
use scoutfs_engine::format::super_block::{read_super, DeviceKind, SuperBlock, SuperExpect};
use scoutfs_engine::format::BtreeItem;

use crate::input::{block_from_compact, reseal_crc, Input};

/// The fsid every harness block is stamped with.
pub const FSID: u64 = 0x5c0f_f5f0_0d00_0001;

/// Most blocks one btree input installs.
pub const MAX_BLOCKS: usize = 8;
/// Keys taken from the installed blocks' items, per block.
const KEYS_PER_BLOCK: usize = 16;
/// Items a range read may return.
const MAX_RANGE_ITEMS: usize = 4096;

/// A small block (super, quorum) from raw bytes: cut or zero-padded.
fn small_block(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SM_SIZE];
    let n = data.len().min(BLOCK_SM_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    b
}

fn set_fsid(block: &mut [u8], fsid: u64) {
    let hdr: &mut BlockHeader = bytemuck::from_bytes_mut(&mut block[..32]);
    hdr.fsid.set(fsid);
}

/// Everything a mount reads of a super block once it passed its check.
fn use_super(sb: &SuperBlock) {
    for slot in 0..=QUORUM_MAX_SLOTS {
        let _ = sb.qconf.slot_addr(slot);
    }
    let _ = sb.qconf.nr_configured();
    for nr in 0..64 {
        let _ = sb.volopt.get(nr);
    }
    let _ = (
        sb.device_kind(),
        sb.first_meta_blkno(),
        sb.last_meta_blkno(),
    );
    let _ = (sb.first_data_blkno(), sb.last_data_blkno());
    let _ = Inode::value_len(sb.format_version());
    // Every root leads nowhere in an empty cache: a miss or a corrupt root.
    let mut cache = BlockCache::in_memory(FSID, sb.seq.get().saturating_add(1), 0..0);
    let roots = [
        sb.fs_root,
        sb.logs_root,
        sb.log_merge,
        sb.mounted_clients,
        sb.srch_root,
        sb.meta_alloc[0].root,
        sb.meta_alloc[1].root,
        sb.data_alloc.root,
    ];
    for root in roots {
        let _ = btree::lookup(&mut cache, &root, &Key::MIN);
    }
}

/// The super block: the check `read_super` makes (raw, then resealed so
/// the id, version and device checks are reached) and what a mount reads
/// from a super that passed.
pub fn super_block(data: &[u8]) {
    let _ = read_super(data, &SuperExpect::default());
    let mut b = small_block(data);
    reseal_crc(&mut b);
    let expects = [
        SuperExpect::default(),
        SuperExpect {
            fsid: Some(FSID),
            device: Some(DeviceKind::Meta),
        },
        SuperExpect {
            fsid: None,
            device: Some(DeviceKind::Data),
        },
    ];
    for expect in expects {
        if let Ok(sb) = read_super(&b, &expect) {
            use_super(&sb);
        }
    }
}

/// A quorum block: byte 0 picks the slot, the rest is the block.
pub fn quorum_block(data: &[u8]) {
    let mut inp = Input::new(data);
    let slot = usize::from(inp.u8() % (QUORUM_MAX_SLOTS as u8 + 1));
    let raw = inp.rest();
    let _ = read_quorum_block(raw, slot, None);
    let mut b = small_block(raw);
    reseal_crc(&mut b);
    for fsid in [None, Some(FSID)] {
        if let Ok(q) = read_quorum_block(&b, slot, fsid) {
            for ev in QuorumEvent::ALL {
                let e = q.event(ev);
                let _ = (e.write_nr.get(), e.rid.get(), e.term.get(), e.ts.sec.get());
            }
        }
    }
}

/// Blocks installed in an in-memory cache, and the roots they make.
#[derive(Debug)]
pub struct Installed {
    pub cache: BlockCache,
    /// One root per installed block, in input order: its reference at
    /// the height its level implies.
    pub roots: Vec<BtreeRoot>,
    /// Keys of the installed blocks' items.
    pub keys: Vec<Key>,
}

/// Install up to [`MAX_BLOCKS`] length-prefixed compact blocks of kind
/// `magic`, each at the blkno and seq its header names. `raw` keeps the
/// crc as given.
pub fn install_blocks(inp: &mut Input<'_>, magic: BlockMagic, raw: bool) -> Installed {
    let nr = usize::from(inp.u8()) % (MAX_BLOCKS + 1);
    let mut blocks = Vec::with_capacity(nr);
    for _ in 0..nr {
        let mut b = block_from_compact(inp.chunk());
        if !raw {
            set_fsid(&mut b, FSID);
            reseal_crc(&mut b);
        }
        blocks.push(b);
    }
    let max_seq = blocks
        .iter()
        .map(|b| block_header(b).hdr.seq.get())
        .max()
        .unwrap_or(0);
    // Dirtied blocks get a seq above every installed one, and numbers no
    // installed block has.
    let free_from = 1 << 40;
    let mut cache =
        BlockCache::in_memory(FSID, max_seq.saturating_add(1), free_from..free_from + 64);
    let mut roots = Vec::new();
    let mut keys = Vec::new();
    for b in &blocks {
        let hdr = block_header(b).hdr;
        let r = BlockRef::new(hdr.blkno.get(), hdr.seq.get());
        if cache.insert_read(&r, magic, b).is_err() {
            continue;
        }
        let level = block_header(b).level;
        // As a root on disk may say: any height, checked by the reader.
        roots.push(BtreeRoot {
            ref_: r,
            height: level.saturating_add(1),
            _pad: [0; 7],
        });
        if magic == BlockMagic::Btree {
            keys.extend(
                btree_items(b)
                    .iter()
                    .take(KEYS_PER_BLOCK)
                    .map(BtreeItem::key),
            );
        }
    }
    Installed { cache, roots, keys }
}

/// Every read of a tree: point lookups and neighbours of `keys`, a whole
/// range, the walk and the checker, and forest reads over the trees.
fn read_everything(t: &mut Installed, keys: &[Key]) {
    let roots = t.roots.clone();
    for root in &roots {
        for k in keys {
            let _ = btree::lookup(&mut t.cache, root, k);
            let next = btree::next(&mut t.cache, root, k);
            let prev = btree::prev(&mut t.cache, root, k);
            if let Ok(Some(it)) = &next {
                assert!(it.key >= *k, "next({k}) went back to {}", it.key);
            }
            if let Ok(Some(it)) = &prev {
                assert!(it.key <= *k, "prev({k}) went on to {}", it.key);
            }
            let _ = btree::prefetch(&mut t.cache, root, k);
        }
        if let Ok(items) = btree::range(&mut t.cache, root, &Key::MIN, &Key::MAX, MAX_RANGE_ITEMS) {
            assert!(items.len() <= MAX_RANGE_ITEMS);
            assert!(
                items.windows(2).all(|w| w[0].key < w[1].key),
                "range returned keys out of order"
            );
        }
        let _ = check_tree(&mut t.cache, root);
        let mut visited = 0u64;
        let _ = walk_blocks(&mut t.cache, root, &mut |_, _, b| {
            visited += 1;
            let _ = check_btree_layout(b, None);
        });
    }
    let forest = ForestRoots {
        fs_root: roots.first().copied().unwrap_or_default(),
        log_roots: roots.iter().skip(1).copied().collect(),
    };
    if let Ok(items) = forest::range(&mut t.cache, &forest, &Key::MIN, &Key::MAX, MAX_RANGE_ITEMS) {
        assert!(
            items.windows(2).all(|w| w[0].key < w[1].key),
            "forest range returned keys out of order"
        );
    }
    for k in keys.iter().take(8) {
        let _ = forest::lookup(&mut t.cache, &forest, k);
        let _ = forest::next(&mut t.cache, &forest, k, &Key::MAX);
    }
}

/// Btree blocks. Input: a flags byte (bit 0: keep the crc as given), up
/// to eight compact blocks (each installed at the blkno and seq of its
/// header, each a root of its own at the height its level gives), then a
/// script: keys to read, and changes (insert, update, delete) to make.
/// Every read and change must end in a result or an error.
pub fn btree_block(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let mut t = install_blocks(&mut inp, BlockMagic::Btree, flags & 1 != 0);
    let mut keys = t.keys.clone();
    keys.extend([Key::MIN, Key::MAX]);
    let nr_script_keys = usize::from(inp.u8() % 8);
    for _ in 0..nr_script_keys {
        keys.push(inp.key());
    }
    read_everything(&mut t, &keys);

    // Changes, each on the tree as the last one left it.
    let nr_changes = usize::from(inp.u8() % 8);
    for i in 0..nr_changes {
        let Some(mut root) = t.roots.first().copied() else {
            break;
        };
        let op = inp.u8();
        let key = match op & 0x10 {
            0 => keys[usize::from(op) % keys.len()],
            _ => inp.key(),
        };
        let val_len = usize::from(inp.u16()) % (BTREE_MAX_VAL_LEN + 1);
        let item = Item {
            key,
            seq: t.cache.txn_seq(),
            flags: 0,
            val: vec![i as u8; val_len],
        };
        let _ = match op % 4 {
            0 => btree::insert(&mut t.cache, &mut root, item),
            1 => btree::update(&mut t.cache, &mut root, item),
            2 => btree::upsert(&mut t.cache, &mut root, item),
            _ => btree::delete(&mut t.cache, &mut root, &key).map(|_| ()),
        };
        t.roots[0] = root;
    }
    if nr_changes > 0 {
        read_everything(&mut t, &keys[..keys.len().min(8)]);
    }
}

/// Allocators: a tree of free extents (the btree blocks as in
/// [`btree_block`], the first installed block the root) with allocations
/// and frees against it, and an alloc-list block (a compact block after
/// the tree's) with its entries read as a server reads them.
pub fn alloc(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let raw = flags & 1 != 0;
    let mut t = install_blocks(&mut inp, BlockMagic::Btree, raw);
    let mut list = block_from_compact(inp.chunk());
    if !raw {
        set_fsid(&mut list, FSID);
        reseal_crc(&mut list);
    }
    let hdr = *alloc_list_block(&list);
    let r = BlockRef::new(hdr.hdr.blkno.get(), hdr.hdr.seq.get());
    if t.cache
        .insert_read(&r, BlockMagic::AllocList, &list)
        .is_ok()
    {
        if let Ok(b) = t.cache.get(&r, BlockMagic::AllocList) {
            debug_assert!(b.len() > ALLOC_LIST_BLKNOS_OFFSET);
            if let Ok(entries) = alloc_list_entries(b) {
                let _ = entries.iter().map(|e| e.get()).max();
            }
        }
    }
    for k in &t.keys {
        let _ = free_extent_from_key(k);
    }
    let Some(tree) = t.roots.first().copied() else {
        return;
    };
    let mut root = AllocRoot {
        total_len: inp.u64().into(),
        root: tree,
        ..AllocRoot::default()
    };
    let _ = free_extents(&mut t.cache, &root);
    let nr_ops = usize::from(inp.u8() % 8);
    for _ in 0..nr_ops {
        let op = inp.u8();
        let start = inp.u64();
        let len = inp.u64();
        let _ = match op % 2 {
            0 => alloc_extent(&mut t.cache, &mut root, len.max(1)).map(|_| ()),
            _ => free_extent(&mut t.cache, &mut root, Extent { start, len }),
        };
    }
    let _ = free_extents(&mut t.cache, &root);
    let _ = check_tree(&mut t.cache, &root.root);
}

/// A log-trees record (the value of a logs-root item): decoded as the
/// server decodes it, then each root and allocator head it names is
/// followed into an empty cache (a miss or a corrupt root, never a
/// panic).
pub fn log_trees(data: &[u8]) {
    let Ok(lt) = bytemuck::try_pod_read_unaligned::<LogTrees>(data) else {
        return;
    };
    let _ = (
        lt.is_finalized(),
        lt.inode_count_delta(),
        lt.rid.get(),
        lt.nr.get(),
    );
    let mut cache = BlockCache::in_memory(FSID, lt.commit_trans_seq.get().saturating_add(1), 0..0);
    for root in [lt.item_root, lt.data_avail.root, lt.data_freed.root] {
        let _ = btree::lookup(&mut cache, &root, &Key::MIN);
        let _ = check_tree(&mut cache, &root);
    }
    for head in [lt.meta_avail, lt.meta_freed] {
        let _ = cache.get(&head.ref_, BlockMagic::AllocList);
    }
    let _ = cache.get(&lt.bloom_ref, BlockMagic::Bloom);
}
