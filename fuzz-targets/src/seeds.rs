//! Seed inputs taken from a real volume: made by mkfs on the `mem`
//! device, used through the fs layer (directories, files with data,
//! xattrs and ACLs, symlinks, hard links, renames, unlinks), committed and
//! merged, so the seeds are blocks and values as the engine writes them.
//! `cargo run -p scoutfs-fuzz-targets --example seeds -- fuzz/corpus`
//! writes them; the corpora in the repository started from that.

use std::collections::BTreeMap;

use scoutfs_engine::btree::{self, walk_blocks, Item};
use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::format::block::{BLOCK_LG_SIZE, BLOCK_SM_SIZE};
use scoutfs_engine::format::btree::{btree_block, btree_item_offset, BtreeRoot};
use scoutfs_engine::format::key::{item_type, zone};
use scoutfs_engine::format::super_block::{QUORUM_BLKNO, SUPER_OFFSET_BYTES};
use scoutfs_engine::format::{Key, QUORUM_MAX_SLOTS};
use scoutfs_engine::fs::{Creds, Fs, FsOptions, SetAttr, ACL_ACCESS_XATTR};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{open_store, TxnOptions, Volume};
use scoutfs_engine::util::ready;

use crate::input::{block_to_compact, put_chunk};
use crate::ondisk::MAX_BLOCKS;

/// Seed inputs by target name.
pub type Seeds = BTreeMap<&'static str, Vec<Vec<u8>>>;

/// A used volume on mem devices, unmounted cleanly.
pub fn used_volume() -> (MemDev, MemDev) {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(32 << 20);
    let mkfs_opts = MkfsOptions {
        fsid: Some(crate::ondisk::FSID),
        ..MkfsOptions::default()
    };
    mkfs(&meta, &data, &mkfs_opts).expect("mkfs on mem devices");
    let txn = TxnOptions {
        cache_bytes: 16 << 20,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    };
    let mut vol = Volume::open(&meta, txn).expect("open");
    vol.attach_data_device(&data).expect("data device");
    let mut fs = ready(Fs::open(vol, FsOptions::default())).expect("fs");
    let c = Creds::root();
    let dir = ready(fs.mkdir(&c, 1, b"dir", 0o755)).expect("mkdir").ino;
    for i in 0..40u32 {
        let name = format!("file-{i:03}-{}", "x".repeat(i as usize % 30));
        let f = ready(fs.create(&c, dir, name.as_bytes(), 0o644))
            .expect("create")
            .ino;
        let len = (i as usize * 1531) % 20_000;
        ready(fs.write(&c, f, u64::from(i) * 4096, &vec![i as u8; len])).expect("write");
        if i % 5 == 0 {
            ready(fs.set_xattr(&c, f, b"user.note", &vec![b'n'; 100 + i as usize * 40], 0))
                .expect("xattr");
        }
    }
    let acl = crate::items::acl_value();
    ready(fs.set_xattr(&c, dir, ACL_ACCESS_XATTR, &acl, 0)).expect("acl");
    ready(fs.symlink(&c, 1, b"short", b"dir/file-001-x")).expect("symlink");
    ready(fs.symlink(&c, 1, b"long", &[b'y'; 2000])).expect("symlink");
    fs.store_mut().commit().expect("commit");
    fs.store_mut().merge().expect("merge");
    // A log tree on top of the merged fs root: renames, links, unlinks
    // (deletion items) and a truncate.
    let f0 = ready(fs.lookup(&c, dir, b"file-000-")).expect("lookup").ino;
    ready(fs.link(&c, f0, 1, b"hard")).expect("link");
    ready(fs.rename(&c, dir, b"file-002-xx", 1, b"moved", 0)).expect("rename");
    for i in 10..20u32 {
        let name = format!("file-{i:03}-{}", "x".repeat(i as usize % 30));
        ready(fs.unlink(&c, dir, name.as_bytes())).expect("unlink");
    }
    let trunc = SetAttr {
        size: Some(100),
        ..SetAttr::default()
    };
    let f3 = ready(fs.lookup(&c, dir, b"file-003-xxx"))
        .expect("lookup")
        .ino;
    ready(fs.setattr(&c, f3, &trunc)).expect("truncate");
    fs.into_store().unmount().expect("unmount");
    (meta, data)
}

fn compact(block: &[u8]) -> Vec<u8> {
    let nr = usize::from(btree_block(block).nr_items.get());
    block_to_compact(block, btree_item_offset(nr).min(BLOCK_LG_SIZE))
}

/// A btree target input: flags 0, the blocks, no script keys, and
/// `changes` (op, key index) pairs.
fn tree_input(blocks: &[Vec<u8>], changes: &[(u8, u16)]) -> Vec<u8> {
    let mut out = vec![0u8, blocks.len() as u8];
    for b in blocks {
        put_chunk(&mut out, &compact(b));
    }
    out.push(0);
    out.push(changes.len() as u8);
    for (op, val_len) in changes {
        out.push(*op);
        out.extend_from_slice(&val_len.to_le_bytes());
    }
    out
}

/// The blocks of a tree in walk order (parents first), at most `max`.
fn tree_blocks(
    store: &mut scoutfs_engine::block::store::Store,
    root: &BtreeRoot,
    max: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let _ = walk_blocks(store, root, &mut |_, _, b: &[u8]| {
        if out.len() < max {
            out.push(b.to_vec());
        }
    });
    out
}

/// Seeds for every target, from a used volume.
pub fn make_seeds() -> Seeds {
    let (meta, _data) = used_volume();
    let mut seeds = Seeds::new();
    let (mut store, sb) = open_store(&meta, 64 << 20).expect("open store");

    let mut sbuf = vec![0u8; BLOCK_SM_SIZE];
    meta.read_at(SUPER_OFFSET_BYTES, &mut sbuf);
    seeds.entry("super_block").or_default().push(sbuf);
    for slot in [0usize, 1, QUORUM_MAX_SLOTS - 1] {
        let mut q = vec![0u8; BLOCK_SM_SIZE];
        meta.read_at((QUORUM_BLKNO + slot as u64) * BLOCK_SM_SIZE as u64, &mut q);
        let mut input = vec![slot as u8];
        input.extend_from_slice(&q);
        seeds.entry("quorum_block").or_default().push(input);
    }

    let logs =
        btree::range(&mut store, &sb.logs_root, &Key::MIN, &Key::MAX, 64).expect("logs root");
    let mut trees = vec![sb.fs_root, sb.logs_root];
    for it in &logs {
        seeds.entry("log_trees").or_default().push(it.val.clone());
        if let Ok(lt) =
            bytemuck::try_pod_read_unaligned::<scoutfs_engine::format::LogTrees>(&it.val)
        {
            trees.push(lt.item_root);
        }
    }
    for root in trees.iter().filter(|r| !r.is_empty()) {
        let blocks = tree_blocks(&mut store, root, MAX_BLOCKS);
        let t = seeds.entry("btree_block").or_default();
        t.push(tree_input(&blocks, &[]));
        t.push(tree_input(&blocks, &[(0, 100), (1, 896), (3, 0), (2, 8)]));
        // A lone leaf, and the root's first child as a root of its own.
        if let Some(leaf) = blocks.last() {
            t.push(tree_input(std::slice::from_ref(leaf), &[(3, 0), (3, 0)]));
        }
    }

    for alloc in [sb.meta_alloc[0], sb.meta_alloc[1], sb.data_alloc] {
        if alloc.root.is_empty() {
            continue;
        }
        let blocks = tree_blocks(&mut store, &alloc.root, MAX_BLOCKS);
        let mut input = vec![0u8, blocks.len() as u8];
        for b in &blocks {
            put_chunk(&mut input, &compact(b));
        }
        let list = sb.server_meta_avail[0].ref_;
        let list_block = if list.is_null() {
            Vec::new()
        } else {
            let mut b = vec![0u8; BLOCK_LG_SIZE];
            meta.read_at(list.blkno.get() * BLOCK_LG_SIZE as u64, &mut b);
            // Entries run from the front: the head is the whole used part.
            let used = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
            block_to_compact(&b, used)
        };
        put_chunk(&mut input, &list_block);
        input.extend_from_slice(&alloc.total_len.get().to_le_bytes());
        input.push(4);
        for (op, start, len) in [(0u8, 0u64, 3u64), (1, 100, 2), (0, 0, 1 << 20), (1, 5, 1)] {
            input.push(op);
            input.extend_from_slice(&start.to_le_bytes());
            input.extend_from_slice(&len.to_le_bytes());
        }
        seeds.entry("alloc").or_default().push(input);
    }

    // Item values as the fs wrote them, in the layout each target reads.
    let fs_items: Vec<Item> = btree::range(
        &mut store,
        &sb.fs_root,
        &Key::zone_first(zone::FS),
        &Key::zone_last(zone::FS),
        100_000,
    )
    .expect("fs root items");
    let mut seen: BTreeMap<(&'static str, usize), usize> = BTreeMap::new();
    for it in &fs_items {
        let (target, prefix): (&'static str, Vec<u8>) = match it.key.ty {
            item_type::INODE => ("inode", vec![]),
            item_type::DIRENT => ("dirent", vec![0]),
            item_type::READDIR => ("dirent", vec![1]),
            item_type::LINK_BACKREF => ("dirent", vec![2]),
            item_type::XATTR => ("xattr", vec![]),
            item_type::SYMLINK => ("symlink", vec![]),
            _ => continue,
        };
        // A few of each size, not one per file.
        let n = seen.entry((target, it.val.len())).or_default();
        *n += 1;
        if *n > 2 {
            continue;
        }
        let mut input = prefix;
        input.push(0xff);
        put_chunk(&mut input, &it.val);
        seeds.entry(target).or_default().push(input);
    }
    seeds.insert("volume", crate::volume::seed_inputs());
    seeds.insert("fuse_request", crate::fuse_req::seed_requests());
    seeds.insert("admin", crate::admin::seed_inputs());
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_gets_seeds_from_a_real_volume() {
        let seeds = make_seeds();
        for t in crate::TARGETS {
            let s = seeds.get(t.name).map_or(0, Vec::len);
            assert!(s > 0, "no seeds for {}", t.name);
        }
    }
}
