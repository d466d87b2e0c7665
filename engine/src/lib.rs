//! scoutfs-engine: the userspace scoutfs engine as a library.
//!
//! Layers, bottom up (see docs/ARCHITECTURE.md): `dev` (block devices as
//! polled queue pairs) and `dma` (the DMA buffer pool); `reactor` (a pinned
//! polling thread with a single-threaded executor); `format` (the on-disk
//! structures). The block cache, btree, allocators, forest, transactions,
//! filesystem, cluster and frontends build on these.

pub mod alloc;
pub mod block;
pub mod btree;
pub mod data;
pub mod data_io;
pub mod dev;
pub mod dma;
pub mod forest;
pub mod format;
pub mod fs;
pub mod item;
pub mod lock;
pub mod reactor;
pub mod serve;
pub mod server;
pub mod txn;
pub mod util;
