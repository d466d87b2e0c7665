//! [`ItemStore`] for the mount's [`Volume`]: each method is the volume's
//! own, its [`crate::txn::TxnError`] turned into an [`ItemError`].

use crate::btree::Item;
use crate::data_io::DataIo;
use crate::format::alloc::Extent;
use crate::format::Key;
use crate::server::Statfs;
use crate::txn::Volume;

use super::{locks, ItemError, ItemStore, Result};

/// Why a volume refuses changes after its mount was made read-only.
const REMOUNTED_READ_ONLY: &str = "mounted read-only";

impl ItemStore for Volume {
    async fn prefetch(&mut self, keys: &[(Key, bool)]) -> Result<()> {
        if !self.deferring() {
            // Read inline as the writes go: nothing to gain ahead of them.
            return Ok(());
        }
        // Every lock the writes need, before the first (item::locks).
        let mut lacked = false;
        for (key, _) in keys {
            match locks::check(key, key, true, true) {
                Err(ItemError::NeedLocks) => lacked = true,
                r => r?,
            }
        }
        if lacked {
            return Err(ItemError::NeedLocks);
        }
        Ok(Volume::prefetch(self, keys)?)
    }

    async fn lookup(&mut self, key: &Key) -> Result<Option<Item>> {
        locks::check(key, key, false, self.deferring())?;
        Ok(Volume::lookup(self, key)?)
    }

    async fn next(&mut self, first: &Key, last: &Key) -> Result<Option<Item>> {
        locks::check(first, last, false, self.deferring())?;
        Ok(Volume::next(self, first, last)?)
    }

    async fn range(&mut self, first: &Key, last: &Key, max: usize) -> Result<Vec<Item>> {
        locks::check(first, last, false, self.deferring())?;
        Ok(Volume::range(self, first, last, max)?)
    }

    async fn upsert(&mut self, key: Key, val: &[u8]) -> Result<()> {
        locks::check(&key, &key, true, self.deferring())?;
        Ok(Volume::upsert(self, key, val)?)
    }

    async fn delete(&mut self, key: &Key) -> Result<bool> {
        locks::check(key, key, true, self.deferring())?;
        Ok(Volume::delete(self, key)?)
    }

    async fn alloc_inodes(&mut self, count: u64) -> Result<(u64, u64)> {
        Ok(Volume::alloc_inodes(self, count)?)
    }

    async fn alloc_data(&mut self, want: u64) -> Result<Extent> {
        Ok(Volume::alloc_data(self, want)?)
    }

    fn free_data(&mut self, ext: Extent) {
        Volume::free_data(self, ext)
    }

    fn add_inode_count(&mut self, delta: i64) {
        Volume::add_inode_count(self, delta)
    }

    fn pending_data_frees(&self) -> bool {
        self.has_pending_data_frees()
    }

    fn data_io(&mut self) -> Result<&mut DataIo> {
        Volume::data_io(self).ok_or_else(|| ItemError::Io("this mount has no data device".into()))
    }

    fn read_only(&self) -> bool {
        Volume::read_only(self).is_some()
    }

    fn set_read_only(&mut self, read_only: bool) -> bool {
        if read_only {
            Volume::set_read_only(self, REMOUNTED_READ_ONLY);
            false
        } else {
            Volume::clear_read_only_request(self)
        }
    }

    fn txn_seq(&self) -> u64 {
        Volume::txn_seq(self)
    }

    fn committed_seq(&self) -> u64 {
        Volume::committed_seq(self)
    }

    async fn commit(&mut self) -> Result<u64> {
        Ok(Volume::commit(self)?)
    }

    async fn commit_until(&mut self, seq: u64) -> Result<u64> {
        Ok(Volume::commit_until(self, seq)?)
    }

    async fn statfs(&mut self) -> Result<Statfs> {
        Ok(Volume::statfs(self)?)
    }

    async fn free_data_blocks(&mut self) -> Result<u64> {
        // What statfs reports, read from the super block the server keeps
        // current, without its walk of the log trees.
        let free = self.super_block().data_alloc.total_len.get();
        Ok(free + self.pending_data_free_blocks())
    }

    fn format_version(&self) -> u64 {
        self.super_block().format_version()
    }

    async fn hold_trans(&mut self, nr_items: usize, frees_space: bool) -> Result<()> {
        Ok(Volume::hold_trans(self, nr_items, frees_space)?)
    }

    fn release_trans(&mut self) {
        // A commit deferred by the hold runs now; if it fails the volume is
        // read-only and the next operation reports it.
        if let Err(e) = Volume::release_trans(self) {
            tracing::error!("commit after an operation failed: {e}");
        }
    }
}
