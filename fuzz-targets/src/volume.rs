//! The whole-volume target: a real, used volume's metadata device with
//! patches from the input, then what `scoutfs check` and a mount do with
//! it: open the store and check every block, open the volume (super,
//! the server's blocks-in-hand list, the log trees), mount the fs and
//! walk the namespace, reading every inode, entry, xattr, symlink and
//! file. This reaches the structures in the places their readers use
//! them (the alloc-list block through the server's open, log-trees
//! records through the forest), which the single-structure targets only
//! approach.
//!
//! Patched blocks are resealed (their crc recomputed) unless the input's
//! first byte says otherwise; the super and quorum area is resealed per
//! 4 KiB block.

use std::collections::VecDeque;
use std::sync::OnceLock;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::format::block::{BLOCK_LG_SIZE, BLOCK_SM_SIZE};
use scoutfs_engine::format::super_block::SUPER_OFFSET_BYTES;
use scoutfs_engine::fs::{Creds, Fs, FsOptions};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::{open_store, TxnOptions, Volume};
use scoutfs_engine::util::ready;

use crate::input::{reseal_crc, Input};

/// Most patches one input applies.
const MAX_PATCHES: usize = 32;
/// Most inodes the namespace walk visits.
const MAX_WALK: usize = 256;

/// A used volume's non-zero 64 KiB regions: (byte offset, bytes).
struct Image {
    meta_bytes: u64,
    meta: Vec<(u64, Vec<u8>)>,
    data_bytes: u64,
    data: Vec<(u64, Vec<u8>)>,
}

fn regions(dev: &MemDev, bytes: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        dev.read_at(off, &mut b);
        if b.iter().any(|&x| x != 0) {
            out.push((off, b));
        }
        off += BLOCK_LG_SIZE as u64;
    }
    out
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let (meta, data) = crate::seeds::used_volume();
        let (meta_bytes, data_bytes) = (64 << 20, 32 << 20);
        Image {
            meta_bytes,
            meta: regions(&meta, meta_bytes),
            data_bytes,
            data: regions(&data, data_bytes),
        }
    })
}

fn txn_opts() -> TxnOptions {
    TxnOptions {
        cache_bytes: 16 << 20,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    }
}

/// Walk the namespace from the root, reading everything an `ls -lR`,
/// `getfattr -d` and `cat` of every file would.
fn walk(fs: &mut Fs<Volume>) {
    let c = Creds::root();
    let mut queue = VecDeque::from([1u64]);
    let mut seen = 0;
    while let Some(ino) = queue.pop_front() {
        seen += 1;
        if seen > MAX_WALK {
            break;
        }
        let _ = ready(fs.getattr(ino));
        let _ = ready(fs.readlink(ino));
        let _ = ready(fs.read(ino, 0, 64 << 10));
        if let Ok(names) = ready(fs.list_xattrs(&c, ino)) {
            for n in names.iter().take(8) {
                let _ = ready(fs.get_xattr(&c, ino, n));
            }
        }
        let Ok(entries) = ready(fs.readdir(ino, 0, 512)) else {
            continue;
        };
        for e in entries.iter().filter(|e| e.pos >= 2) {
            let _ = ready(fs.lookup(&c, ino, &e.name));
            queue.push_back(e.ino);
        }
    }
}

/// Input: a flags byte (bit 0: keep the crc of patched blocks as given;
/// bit 1: skip the mount, only check), then patches `[u16 region][u16
/// offset][u8 len][bytes]` into the image's non-zero metadata regions.
pub fn volume(data: &[u8]) {
    let (flags, meta, data_dev) = build(data);

    // `scoutfs check`.
    if let Ok((mut store, _sb)) = open_store(&meta, 16 << 20) {
        let _ = check_volume(&mut store, &meta, &data_dev);
    }
    if flags & 2 != 0 {
        return;
    }
    // A mount.
    let Ok(mut vol) = Volume::open(&meta, txn_opts()) else {
        return;
    };
    if vol.attach_data_device(&data_dev).is_err() {
        return;
    }
    let Ok(mut fs) = ready(Fs::open(vol, FsOptions::default())) else {
        return;
    };
    walk(&mut fs);
    let _ = fs.into_store().unmount();
}

/// The devices an input describes, and its flags byte.
fn build(data: &[u8]) -> (u8, MemDev, MemDev) {
    let img = image();
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let mut meta_regions = img.meta.clone();
    let mut touched = vec![false; meta_regions.len()];
    for _ in 0..MAX_PATCHES {
        if inp.is_empty() || meta_regions.is_empty() {
            break;
        }
        let i = usize::from(inp.u16()) % meta_regions.len();
        let off = usize::from(inp.u16()) % BLOCK_LG_SIZE;
        let len = usize::from(inp.u8());
        let bytes = inp.bytes(len);
        let region = &mut meta_regions[i].1;
        let n = bytes.len().min(BLOCK_LG_SIZE - off);
        region[off..off + n].copy_from_slice(&bytes[..n]);
        touched[i] = true;
    }
    if flags & 1 == 0 {
        for ((at, region), touched) in meta_regions.iter_mut().zip(&touched) {
            if !touched {
                continue;
            }
            if *at == SUPER_OFFSET_BYTES {
                // The super and the quorum blocks: 4 KiB blocks.
                for b in region.chunks_mut(BLOCK_SM_SIZE) {
                    if b.iter().any(|&x| x != 0) {
                        reseal_crc(b);
                    }
                }
            } else {
                reseal_crc(region);
            }
        }
    }
    let meta = MemDev::new(img.meta_bytes);
    for (at, region) in &meta_regions {
        meta.write_at(*at, region);
    }
    let data_dev = MemDev::new(img.data_bytes);
    for (at, region) in &img.data {
        data_dev.write_at(*at, region);
    }
    (flags, meta, data_dev)
}

/// Seeds: the image untouched, checked only and mounted, and a few
/// patches of the super block's roots and counts.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    let img = image();
    let super_region = img
        .meta
        .iter()
        .position(|(at, _)| *at == SUPER_OFFSET_BYTES)
        .unwrap_or(0) as u16;
    let patch = |off: u16, bytes: &[u8]| {
        let mut v = Vec::new();
        v.extend_from_slice(&super_region.to_le_bytes());
        v.extend_from_slice(&off.to_le_bytes());
        v.push(bytes.len() as u8);
        v.extend_from_slice(bytes);
        v
    };
    let mut seeds = vec![vec![0u8], vec![2u8]];
    // next_ino (super offset 80) and the fs root's height (848 + 16),
    // relative to the super's 4 KiB block at the start of its region.
    for (off, bytes) in [
        (80u16, &[0xffu8; 8][..]),
        (864, &[30u8][..]),
        (864, &[0u8][..]),
    ] {
        let mut s = vec![0u8];
        s.extend(patch(off, bytes));
        seeds.push(s);
    }
    // One byte of each of the first few other regions (btree leaves,
    // parents, alloc lists).
    for i in 0..img.meta.len().min(12) as u16 {
        let mut s = vec![0u8];
        s.extend_from_slice(&i.to_le_bytes());
        s.extend_from_slice(&100u16.to_le_bytes());
        s.extend_from_slice(&[1, 0xff]);
        seeds.push(s);
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unpatched_image_checks_clean_and_mounts() {
        let (_, meta, data) = build(&[0]);
        let (mut store, _) = open_store(&meta, 16 << 20).unwrap();
        let problems = check_volume(&mut store, &meta, &data).problems;
        assert!(problems.is_empty(), "{problems:?}");
        let mut vol = Volume::open(&meta, txn_opts()).unwrap();
        vol.attach_data_device(&data).unwrap();
        let mut fs = ready(Fs::open(vol, FsOptions::default())).unwrap();
        let root = ready(fs.readdir(1, 2, 100)).unwrap();
        assert!(root.len() >= 4, "{root:?}");
    }
}
