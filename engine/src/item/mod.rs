//! engine::item — the item layer: [`ItemStore`], everything the file
//! data layer (`data`) and the POSIX layer (`fs`) ask of the mount below
//! them, and [`ItemError`], what it fails with.
//!
//! scoutfs's kernel reaches its items through the item cache (item.c:
//! lookup, next, create, update, delete, in the open transaction) and
//! takes inode numbers, data extents and transaction holds from the
//! layers beside it; this trait gathers those as one interface. Both
//! `data` and `fs` sit above it and convert [`ItemError`] into their own
//! errors, so `data` needs nothing of `fs`.
//!
//! The methods mirror [`Volume`]'s (volume.rs implements them). They are
//! futures so that a store whose reads wait on a device implements the
//! same trait; [`Volume`] is synchronous and its futures are ready at
//! once. The trait is used generically (`Fs<S: ItemStore>`), never as
//! `dyn`, and its futures need not be `Send` (a reactor runs them on one
//! thread).

mod error;
pub mod locks;
mod volume;

use std::future::Future;

use crate::btree::Item;
use crate::data_io::DataIo;
use crate::format::alloc::Extent;
use crate::format::Key;
use crate::server::Statfs;
#[cfg(doc)]
use crate::txn::Volume;

pub use error::{ItemError, Result};

pub trait ItemStore {
    /// The item at `key`, if any.
    fn lookup(&mut self, key: &Key) -> impl Future<Output = Result<Option<Item>>>;

    /// The first item in `[first, last]`.
    fn next(&mut self, first: &Key, last: &Key) -> impl Future<Output = Result<Option<Item>>>;

    /// The items in `[first, last]`, at most `max`, in key order.
    fn range(
        &mut self,
        first: &Key,
        last: &Key,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Item>>>;

    /// Create or replace the item at `key` in the open transaction.
    fn upsert(&mut self, key: Key, val: &[u8]) -> impl Future<Output = Result<()>>;

    /// Delete the item at `key`; whether it existed.
    fn delete(&mut self, key: &Key) -> impl Future<Output = Result<bool>>;

    /// A grant of `count` unused inode numbers: `(first, count)`.
    fn alloc_inodes(&mut self, count: u64) -> impl Future<Output = Result<(u64, u64)>>;

    /// Up to `want` contiguous free blocks of the data device (fewer when
    /// free space is fragmented; ENOSPC when there is none).
    fn alloc_data(&mut self, want: u64) -> impl Future<Output = Result<Extent>>;

    /// Data blocks no longer referenced by this transaction's items; they
    /// are reused only once it has committed.
    fn free_data(&mut self, ext: Extent);

    /// The open transaction's writes created (positive) or deleted
    /// (negative) this many inodes; statfs's inode count follows.
    fn add_inode_count(&mut self, delta: i64);

    /// Whether data blocks freed in the open transaction wait for its
    /// commit (so a commit would give ENOSPC writers room).
    fn pending_data_frees(&self) -> bool {
        false
    }

    /// The data device's I/O (file contents); EIO when the mount has none.
    fn data_io(&mut self) -> Result<&mut DataIo>;

    /// Whether every change will fail with EROFS (a read-only mount, or
    /// a volume that stopped after a failed commit).
    fn read_only(&self) -> bool {
        false
    }

    /// Refuse every change from now on (`true`: the mount was made
    /// read-only) or accept them again (`false`); a store read-only after
    /// an error stays so. Whether the store accepts changes now. The
    /// default store can't be made read-only.
    fn set_read_only(&mut self, read_only: bool) -> bool {
        let _ = read_only;
        !self.read_only()
    }

    /// The seq items written now carry (the open transaction's).
    fn txn_seq(&self) -> u64;

    /// Every seq up to this one is durable.
    fn committed_seq(&self) -> u64;

    /// Commit the open transaction; the seq now durable.
    fn commit(&mut self) -> impl Future<Output = Result<u64>>;

    /// Make commit `seq` durable if it isn't yet; the seq now durable.
    fn commit_until(&mut self, seq: u64) -> impl Future<Output = Result<u64>> {
        async move {
            if seq <= self.committed_seq() {
                return Ok(self.committed_seq());
            }
            self.commit().await
        }
    }

    fn statfs(&mut self) -> impl Future<Output = Result<Statfs>>;

    /// Free data blocks as statfs counts them (blocks freed by the open
    /// transaction included), without what else statfs gathers: a
    /// frontend asks at every open for writing (how much the kernel may
    /// cache, scoutfs-fuse's writeback headroom).
    fn free_data_blocks(&mut self) -> impl Future<Output = Result<u64>> {
        async { Ok(self.statfs().await?.free_data_blocks) }
    }

    /// The volume's format version (inode values are shorter in format 1).
    fn format_version(&self) -> u64;

    /// Called before an operation's first write, with the number of item
    /// writes it will make; [`ItemStore::release_trans`] follows on every
    /// path once they are done. Between the two the store must neither
    /// commit (the operation's items belong to one transaction) nor fail a
    /// write for want of space it could have refused here (scoutfs's
    /// hold_trans / release_trans). The default does nothing; [`Volume`]
    /// implements both.
    /// `frees_space`: the operation mostly deletes items, so it may dip into
    /// space kept back from other operations (a full device can still
    /// delete).
    fn hold_trans(
        &mut self,
        nr_items: usize,
        frees_space: bool,
    ) -> impl Future<Output = Result<()>> {
        let _ = (nr_items, frees_space);
        std::future::ready(Ok(()))
    }

    fn release_trans(&mut self) {}

    /// Read every block writing these items (key, and whether it is a
    /// deletion) can need, before the first is written: see
    /// [`Volume::prefetch`]. The default has nothing to read.
    fn prefetch(&mut self, keys: &[(Key, bool)]) -> impl Future<Output = Result<()>> {
        let _ = keys;
        std::future::ready(Ok(()))
    }
}
