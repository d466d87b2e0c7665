//! On-disk format: every structure that is written to a device, as
//! `#[repr(C)]` `bytemuck::Pod` structs with compile-time size checks.
//! Little-endian on disk (see [`le`]). Nothing outside this module knows
//! byte offsets.
//!
//! - [`block`]: block header, block reference, header check.
//! - [`key`]: the 32-byte item key, its order, zones and types.
//! - [`btree`]: btree root, block and item layout in 64 KiB blocks.
//! - [`alloc`]: allocator roots, alloc lists, free extent keys, data extents.
//! - [`log_trees`]: the per-mount log trees record, bloom and srch files.
//! - [`log_merge`]: items of the server's log merge btree.
//! - [`super_block`]: device layout, format version, super block and its
//!   validated read.
//! - [`quorum`]: quorum config, quorum blocks, mounted clients.
//! - [`inode`]: inode, dirent and xattr values.

pub mod alloc;
pub mod block;
pub mod btree;
pub mod inode;
pub mod key;
pub mod le;
pub mod log_merge;
pub mod log_trees;
pub mod quorum;
pub mod super_block;

pub use alloc::{AllocListBlock, AllocListHead, AllocRoot, DataExtentVal, Extent};
pub use block::{
    check_block, seal_block, BlockCheckError, BlockHeader, BlockMagic, BlockRef, Expected,
};
pub use btree::{
    BtreeBlock, BtreeItem, BtreeRoot, BTREE_MAX_HEIGHT, BTREE_MAX_VAL_LEN, MAX_VAL_SIZE,
};
pub use inode::{Dirent, Inode, Timespec, Xattr};
pub use key::{DiskKey, Key};
pub use le::{Le16, Le32, Le64, LeI64};
pub use log_trees::LogTrees;
pub use quorum::{InetAddr, QuorumBlock, QuorumConfig, QUORUM_MAX_SLOTS};
pub use super_block::{
    read_super, DeviceKind, SuperBlock, SuperError, SuperExpect, FORMAT_VERSION_MAX,
    FORMAT_VERSION_MIN, SUPER_BLKNO,
};
