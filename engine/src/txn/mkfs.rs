//! Making a new volume: the super blocks on both devices, the quorum
//! configuration, and the allocators holding all the free space. The
//! volume's first commit is the server's ordinary commit.

use std::net::SocketAddrV4;

use crate::alloc;
use crate::block::cache::BlockCache;
use crate::block::io::MetaIo;
use crate::block::store::Store;
use crate::dev::BlockDev;
use crate::format::alloc::Extent;
use crate::format::block::{BLOCK_LG_SHIFT, BLOCK_SM_SHIFT, BLOCK_SM_SIZE};
use crate::format::quorum::{InetAddr, QUORUM_MAX_SLOTS};
use crate::format::super_block::{
    DATA_DEV_START_BLKNO, FORMAT_VERSION_MAX, META_DEV_START_BLKNO, QUORUM_BLKNO,
    SUPER_FLAG_IS_META_BDEV, SUPER_ID, SUPER_OFFSET_BYTES,
};
use crate::format::{Le64, SuperBlock};
use crate::server::Server;

use super::TxnError;

/// Blocks used to build the allocators at mkfs before they exist.
const MKFS_SEED_BLOCKS: u64 = 64;
/// The smallest metadata device mkfs accepts at all (64 KiB blocks).
pub const MIN_META_BLOCKS: u64 = MKFS_SEED_BLOCKS * 2 + META_DEV_START_BLKNO;
/// The smallest data device mkfs accepts at all (4 KiB blocks).
pub const MIN_DATA_BLOCKS: u64 = DATA_DEV_START_BLKNO + 16;
/// The inode number of the root directory.
pub const ROOT_INO: u64 = 1;

#[derive(Clone, Debug, Default)]
pub struct MkfsOptions {
    /// Use at most this many bytes of the metadata device.
    pub max_meta_bytes: Option<u64>,
    /// Use at most this many bytes of the data device.
    pub max_data_bytes: Option<u64>,
    /// Quorum slots: (slot number, address).
    pub quorum: Vec<(usize, SocketAddrV4)>,
    /// Fixed fsid (tests); random otherwise.
    pub fsid: Option<u64>,
    /// Format version (default: the newest).
    pub format_version: Option<u64>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_le_bytes(b)
    } else {
        // getrandom can't fail for 8 bytes once the pool is ready; keep a
        // unique-enough fallback rather than a fixed fsid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 32)
    }
}

/// Make a new volume on `meta` and `data`. Returns the committed super.
pub fn mkfs(
    meta: &dyn BlockDev,
    data: &dyn BlockDev,
    opts: &MkfsOptions,
) -> Result<SuperBlock, TxnError> {
    let meta_cap = opts
        .max_meta_bytes
        .map_or(meta.geometry().capacity_bytes, |m| {
            m.min(meta.geometry().capacity_bytes)
        });
    let data_cap = opts
        .max_data_bytes
        .map_or(data.geometry().capacity_bytes, |m| {
            m.min(data.geometry().capacity_bytes)
        });
    let total_meta = meta_cap >> BLOCK_LG_SHIFT;
    let total_data = data_cap >> BLOCK_SM_SHIFT;
    if total_meta < MIN_META_BLOCKS {
        return Err(TxnError::Invalid(format!(
            "metadata device {} holds {} 64 KiB blocks, at least {MIN_META_BLOCKS} are needed",
            meta.name(),
            total_meta
        )));
    }
    if total_data < MIN_DATA_BLOCKS {
        return Err(TxnError::Invalid(format!(
            "data device {} holds {} 4 KiB blocks, at least {MIN_DATA_BLOCKS} are needed",
            data.name(),
            total_data
        )));
    }
    let version = opts.format_version.unwrap_or(FORMAT_VERSION_MAX);
    let fsid = opts.fsid.unwrap_or_else(random_u64);

    let mut sb: SuperBlock = bytemuck::Zeroable::zeroed();
    sb.hdr.fsid.set(fsid);
    sb.id.set(SUPER_ID);
    sb.fmt_vers.set(version);
    sb.flags.set(SUPER_FLAG_IS_META_BDEV);
    sb.uuid[..8].copy_from_slice(&random_u64().to_le_bytes());
    sb.uuid[8..].copy_from_slice(&random_u64().to_le_bytes());
    sb.next_ino.set(ROOT_INO + 1);
    sb.total_meta_blocks.set(total_meta);
    sb.total_data_blocks.set(total_data);
    if !opts.quorum.is_empty() {
        sb.qconf.version.set(1);
        for (slot, addr) in &opts.quorum {
            if *slot >= QUORUM_MAX_SLOTS {
                return Err(TxnError::Invalid(format!(
                    "quorum slot {slot} is past the last slot {}",
                    QUORUM_MAX_SLOTS - 1
                )));
            }
            if !sb.qconf.slots[*slot].addr.is_none() {
                return Err(TxnError::Invalid(format!("quorum slot {slot} given twice")));
            }
            sb.qconf.slots[*slot].addr = InetAddr::ipv4(*addr);
        }
    }

    // The data device: its own super block (same fsid, not the meta flag).
    let mut data_io = MetaIo::open(data)?;
    let mut dsb = sb;
    dsb.flags.set(0);
    dsb.seq = Le64::new(1);
    let mut blk = vec![0u8; BLOCK_SM_SIZE];
    dsb.to_block(&mut blk);
    data_io.write_at(SUPER_OFFSET_BYTES, &blk)?;
    data_io.flush()?;

    // The metadata device: clear the quorum blocks, then build the
    // allocators in the first transaction and commit it.
    let mut io = MetaIo::open(meta)?;
    let zeros = vec![0u8; BLOCK_SM_SIZE * QUORUM_MAX_SLOTS];
    io.write_at(QUORUM_BLKNO << BLOCK_SM_SHIFT, &zeros)?;
    // Make sure no earlier super block is mistaken for this volume's.
    io.write_at(SUPER_OFFSET_BYTES, &vec![0u8; BLOCK_SM_SIZE])?;

    let mut cache = BlockCache::new(fsid, meta.name(), 64 << 20, 1);
    let seed = META_DEV_START_BLKNO..META_DEV_START_BLKNO + MKFS_SEED_BLOCKS;
    cache.add_avail(seed.clone().rev());
    cache.set_valid_blknos(META_DEV_START_BLKNO..total_meta);
    let mut store = Store::new(cache, io);
    let meta_free = Extent {
        start: seed.end,
        len: total_meta - seed.end,
    };
    let data_free = Extent {
        start: DATA_DEV_START_BLKNO,
        len: total_data - DATA_DEV_START_BLKNO,
    };
    {
        let sb = &mut sb;
        store.retry(|c| alloc::free_extent(c, &mut sb.meta_alloc[1], meta_free))?;
        store.retry(|c| alloc::free_extent(c, &mut sb.data_alloc, data_free))?;
    }
    let mut server = Server::new_volume(sb);
    server.commit_now(&mut store)?;
    Ok(*server.super_block())
}
