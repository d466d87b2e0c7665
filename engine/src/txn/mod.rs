//! Transactions: a mount's item writes go to its own log tree; reads merge
//! the fs root and the log trees; a commit makes everything written so far
//! durable at once.
//!
//! [`Volume`] is one mount of a volume with its server run in-process (see
//! `server`). Writes (`upsert`, `delete`) add items stamped with the open
//! transaction's seq to the mount's log tree. The transaction commits when
//! its dirty blocks pass a limit, when it is older than the age limit (both
//! checked after each write), or when asked (`commit`, for fsync/sync). A
//! commit sends the log tree to the server, which writes every new block,
//! flushes, writes the super block with the next seq, and flushes. After a
//! crash at any instant the volume opens at the last complete commit.
//! `committed_seq` is the last seq known durable.
//!
//! A failed commit (a device error, a full device) makes the volume
//! read-only: writes then fail with EROFS, reads see the last commit.

use std::time::{Duration, Instant};

use crate::alloc::AllocError;
use crate::block::cache::BlockCache;
use crate::block::io::MetaIo;
use crate::block::store::Store;
use crate::block::{BlockAccess, BlockError};
use crate::btree::{self, BtreeError, Item};
use crate::dev::{BlockDev, DevError};
use crate::forest::{self, ForestRoots};
use crate::format::alloc::Extent;
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::super_block::{DeviceKind, SuperError};
use crate::format::{BlockRef, Key, LogTrees, SuperBlock};
use crate::server::{Request, Response, Server, ServerError, Statfs};

pub mod check;
pub mod devices;
pub mod mkfs;

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("{0}")]
    Dev(#[from] DevError),
    #[error("{0}")]
    Super(#[from] SuperError),
    #[error("{0}")]
    Block(#[from] BlockError),
    #[error("{0}")]
    Btree(#[from] BtreeError),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("the volume is read-only: {0}")]
    ReadOnly(String),
    #[error("item value of {0} bytes is over the 896-byte limit")]
    ValueTooLarge(usize),
    #[error("{0}")]
    Invalid(String),
    /// The operation needs commit `seq` durable (an fsync, inode numbers
    /// granted) or must wait for it (too much is dirty while it is being
    /// written): the engine waits for it, then runs the operation again.
    #[error("waiting for commit {0}")]
    WaitCommit(u64),
    /// Too much is dirty while commit `seq` is written: the operation,
    /// which has changed nothing, runs again once it is durable.
    #[error("throttled until commit {0}")]
    Throttle(u64),
    /// Blocks to read before the operation is run again: misses deferred
    /// while the operation had changed nothing ([`Volume::begin_attempt`]).
    #[error("{} metadata blocks are not cached", .0.len())]
    Need(Vec<BlockRef>),
    /// A device that is not what the volume says it is.
    #[error("{} device {device}: {problem}", devices::role_name(*role))]
    Device {
        role: DeviceKind,
        device: String,
        problem: devices::DeviceProblem,
    },
}

impl From<AllocError> for TxnError {
    fn from(e: AllocError) -> Self {
        TxnError::Server(e.into())
    }
}

impl TxnError {
    /// The blocks a deferred miss asks for, if this is one.
    pub fn needed(&self) -> Option<Vec<BlockRef>> {
        match self {
            TxnError::Need(v) => Some(v.clone()),
            TxnError::Block(BlockError::Miss(r))
            | TxnError::Btree(BtreeError::Block(BlockError::Miss(r))) => Some(vec![*r]),
            _ => None,
        }
    }

    /// The errno a frontend reports.
    pub fn errno(&self) -> i32 {
        match self {
            TxnError::Dev(e) => e.errno(),
            TxnError::Super(_) => libc::EINVAL,
            TxnError::Block(e) => e.errno(),
            TxnError::Btree(BtreeError::Block(e)) => e.errno(),
            TxnError::Btree(BtreeError::ValueTooLarge { .. }) | TxnError::ValueTooLarge(_) => {
                libc::EINVAL
            }
            TxnError::Btree(_) => libc::EIO,
            TxnError::Server(e) => e.errno(),
            TxnError::ReadOnly(_) => libc::EROFS,
            TxnError::Invalid(_) => libc::EINVAL,
            // Resolved by the engine; a frontend never sees it.
            TxnError::Need(_) | TxnError::WaitCommit(_) | TxnError::Throttle(_) => libc::EIO,
            TxnError::Device { problem, .. } => problem.errno(),
        }
    }
}

/// Metadata blocks `hold_trans` sets aside: a fixed part for copying the
/// paths an operation touches (its items sit in a few leaves of the log
/// tree) and one block per item written. The commit reserve stays above
/// this as a margin.
const HOLD_BLOCKS_BASE: usize = 8;
const HOLD_BLOCKS_PER_ITEM: usize = 1;

/// When a transaction commits on its own.
#[derive(Clone, Copy, Debug)]
pub struct TxnOptions {
    /// Commit once this many metadata blocks are dirty.
    pub commit_dirty_blocks: usize,
    /// Commit a transaction older than this (at the next write, or by the
    /// engine's check for quiet mounts).
    pub commit_age: Duration,
    /// Clean metadata blocks kept cached.
    pub cache_bytes: usize,
    /// This mount's id (rid).
    pub rid: u64,
    /// Metadata blocks kept in hand: (reserve, fill); see alloc::refill_meta.
    pub meta_targets: (usize, usize),
    /// Merge the mount's log tree into the fs root after this many commits
    /// (0: only when asked), so reads don't search an ever-growing log tree.
    pub merge_every_commits: u64,
    /// A merge commits along the way once this many blocks are dirty.
    pub merge_commit_dirty_blocks: usize,
    /// Discard data blocks on the device once the commit that freed them
    /// is durable (ext4's `discard`); off by default.
    pub discard: bool,
    /// What a transaction's age is measured by (the engine gives its
    /// reactor's).
    pub clock: &'static dyn crate::reactor::Clock,
}

impl Default for TxnOptions {
    fn default() -> Self {
        TxnOptions {
            commit_dirty_blocks: 512,
            commit_age: Duration::from_secs(5),
            cache_bytes: 256 << 20,
            rid: 1,
            meta_targets: (crate::alloc::META_RESERVE, crate::alloc::META_FILL),
            merge_every_commits: 64,
            merge_commit_dirty_blocks: crate::server::MERGE_COMMIT_DIRTY_BLOCKS,
            discard: false,
            clock: &crate::reactor::SYSTEM_CLOCK,
        }
    }
}

/// One mount of a volume, with its server in-process.
#[derive(Debug)]
pub struct Volume {
    store: Store,
    server: Server,
    opts: TxnOptions,
    /// The mount's open log tree (its item root changes with each write).
    log: LogTrees,
    /// The log tree as of the last commit.
    committed_log: LogTrees,
    /// Roots of the fs root and other log trees, as of the last change.
    others: ForestRoots,
    data_freed: Vec<Extent>,
    /// A queue on the data device, flushed before each commit so that no
    /// committed extent points at file data that is not yet durable.
    /// The data device: file data I/O, written back and flushed before
    /// every commit.
    data: Option<crate::data_io::DataIo>,
    /// Open holds (`hold_trans`): no commit happens while an operation
    /// that must land in one transaction is writing its items.
    holds: u32,
    txn_started: Instant,
    txn_writes: u64,
    commits: u64,
    commits_since_merge: u64,
    /// Operations may defer their misses (see [`Volume::begin_attempt`]).
    defer_reads: bool,
    /// Commits are written by the engine's committer task while the next
    /// transaction goes on ([`Volume::set_async_commits`]).
    async_commits: bool,
    /// A commit is wanted (a trigger was reached, or someone waits).
    commit_wanted: bool,
    /// The commit in flight: its log tree as sent, and the data extents it
    /// freed (discarded once it is durable).
    in_flight: Option<(LogTrees, Vec<Extent>)>,
    /// Extents freed by durable commits, for the engine's committer to
    /// discard (`-o discard` with the data device's I/O on the reactor).
    discards: Vec<Extent>,
    /// The log tree as the server has it (sent by the last commit begun).
    sent_log: LogTrees,
    /// A request that already waited for commit `n` this many: it asks no
    /// more ([`Volume::commit`] in async mode).
    waited_commit: u64,
    /// Woken when a commit is wanted (the engine's committer).
    commit_kick: Option<CommitKick>,
}

/// What wakes the engine's committer when a commit is wanted.
#[derive(Clone)]
pub struct CommitKick(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for CommitKick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitKick")
    }
}

/// Read and check the metadata device's super block (see `devices`).
pub fn read_meta_super(meta: &dyn BlockDev) -> Result<(MetaIo, SuperBlock), TxnError> {
    devices::read_device_super(meta, DeviceKind::Meta)
}

/// Open a volume's metadata for reading only (print, check): the store
/// and the committed super block, with no mount state.
pub fn open_store(
    meta: &dyn BlockDev,
    cache_bytes: usize,
) -> Result<(Store, SuperBlock), TxnError> {
    let (io, sb) = read_meta_super(meta)?;
    let cache = BlockCache::new(sb.fsid(), io.device_name(), cache_bytes, sb.seq.get() + 1);
    Ok((Store::new(cache, io), sb))
}

impl Volume {
    /// Open a volume made by mkfs: read and check the super block, load the
    /// server state, and open this mount's log tree.
    pub fn open(meta: &dyn BlockDev, opts: TxnOptions) -> Result<Volume, TxnError> {
        let (io, sb) = read_meta_super(meta)?;
        devices::check_meta_size(meta, &sb)?;
        Self::from_super(io, sb, opts)
    }

    fn from_super(io: MetaIo, sb: SuperBlock, opts: TxnOptions) -> Result<Volume, TxnError> {
        let mut cache = BlockCache::new(
            sb.fsid(),
            io.device_name(),
            opts.cache_bytes,
            sb.seq.get() + 1,
        );
        cache.set_meta_targets(opts.meta_targets.0, opts.meta_targets.1);
        cache.set_valid_blknos(
            crate::format::super_block::META_DEV_START_BLKNO..sb.total_meta_blocks.get(),
        );
        let mut store = Store::new(cache, io);
        let mut server = Server::open(&mut store, sb)?;
        server.set_merge_commit_dirty_blocks(opts.merge_commit_dirty_blocks);
        let log = match server.handle(&mut store, Request::GetLogTrees { rid: opts.rid })? {
            Response::LogTrees(l) => *l,
            other => {
                return Err(TxnError::Invalid(format!(
                    "unexpected server response {other:?}"
                )))
            }
        };
        let mut v = Volume {
            store,
            server,
            opts,
            log,
            committed_log: log,
            others: ForestRoots::default(),
            data_freed: Vec::new(),
            data: None,
            holds: 0,
            txn_started: opts.clock.now(),
            txn_writes: 0,
            commits: 0,
            commits_since_merge: 0,
            defer_reads: false,
            async_commits: false,
            discards: Vec::new(),
            commit_wanted: false,
            in_flight: None,
            sent_log: log,
            waited_commit: 0,
            commit_kick: None,
        };
        v.refresh_roots()?;
        Ok(v)
    }

    fn call(&mut self, req: Request) -> Result<Response, TxnError> {
        // The server's requests change allocators and trees in several
        // steps, and its errors lose the miss: it reads inline.
        self.no_restart();
        Ok(self.server.handle(&mut self.store, req)?)
    }

    /// Let operations defer their misses from now on: the engine that
    /// runs them on the reactor reads what they need there and runs them
    /// again (docs/ARCHITECTURE.md, "Miss and restart"). Off by default:
    /// tools and tests read inline.
    pub fn set_deferred_reads(&mut self, on: bool) {
        self.defer_reads = on;
    }

    /// An operation begins: until it changes something, a block it needs
    /// that isn't cached ends it with [`TxnError::Need`] rather than being
    /// read on this thread. Once it has changed anything (an item write,
    /// an allocation, a server request, a commit) it may not be run again,
    /// so from there its misses are read inline and counted in
    /// [`Volume::device_reads`].
    pub fn begin_attempt(&mut self) {
        self.store.defer_misses(self.defer_reads);
        if let Some(d) = self.data.as_mut() {
            d.take_need();
            d.set_deferring(self.defer_reads);
        }
    }

    /// The operation ended (however it ended).
    pub fn end_attempt(&mut self) {
        self.store.defer_misses(false);
        if let Some(d) = self.data.as_mut() {
            d.set_deferring(false);
        }
    }

    /// The operation is about to change something: no more restarts.
    fn no_restart(&mut self) {
        self.store.defer_misses(false);
        if let Some(d) = self.data.as_mut() {
            d.set_deferring(false);
        }
    }

    /// Whether misses are deferred now (the operation has changed nothing).
    pub fn deferring(&self) -> bool {
        self.store.deferring()
    }

    /// Read every block a change of each key can need (the log tree's
    /// path and siblings; for a deletion, the versions other trees hold),
    /// so an operation's writes, applied after this, don't miss. While
    /// deferring, every missing block is gathered into one
    /// [`TxnError::Need`]; else they are read inline.
    pub fn prefetch(&mut self, keys: &[(Key, bool)]) -> Result<(), TxnError> {
        let roots = self.roots();
        let mut need = Vec::new();
        for (key, delete) in keys {
            let log_root = self.log.item_root;
            let r = self
                .store
                .retry(|c| btree::prefetch(c, &log_root, key))
                .and_then(|()| match delete {
                    true => self
                        .store
                        .retry(|c| forest::lookup(c, &roots, key))
                        .map(drop),
                    false => Ok(()),
                });
            match r {
                Ok(()) => {}
                Err(BtreeError::Block(BlockError::Miss(r))) => need.push(r),
                Err(e) => return Err(e.into()),
            }
        }
        if need.is_empty() {
            return Ok(());
        }
        need.sort_by_key(|r| r.blkno.get());
        need.dedup_by_key(|r| r.blkno.get());
        Err(TxnError::Need(need))
    }

    fn refresh_roots(&mut self) -> Result<(), TxnError> {
        let Response::Roots(mut roots) = self.call(Request::GetRoots)? else {
            return Err(TxnError::Invalid(
                "GetRoots answered with something else".into(),
            ));
        };
        // Our own tree is read from `log`, which is newer than the server's copy.
        let own = self.server_copy_of_own_root()?;
        if let Some(pos) = roots.log_roots.iter().position(|r| Some(*r) == own) {
            roots.log_roots.remove(pos);
        }
        self.others = roots;
        Ok(())
    }

    fn server_copy_of_own_root(&mut self) -> Result<Option<crate::format::BtreeRoot>, TxnError> {
        self.no_restart();
        let logs = self.server.log_trees(&mut self.store)?;
        Ok(logs
            .iter()
            .find(|l| l.rid == self.log.rid && l.nr == self.log.nr)
            .map(|l| l.item_root))
    }

    fn roots(&self) -> ForestRoots {
        let mut r = self.others.clone();
        r.log_roots.push(self.log.item_root);
        r
    }

    pub fn read_only(&self) -> Option<&str> {
        self.server.read_only()
    }

    /// Make this mount read-only: every change fails with EROFS before it
    /// touches anything, and nothing is committed (a read-only mount).
    pub fn set_read_only(&mut self, why: &str) {
        self.server.set_read_only(why.to_string());
    }

    /// Whether the open transaction holds changes (a commit would write).
    pub fn has_changes(&self) -> bool {
        self.txn_writes > 0
    }

    /// Accept changes again after [`Volume::set_read_only`] (a read-only
    /// mount remounted read-write). A volume that went read-only after an
    /// error stays so. Whether changes are accepted now.
    pub fn clear_read_only_request(&mut self) -> bool {
        self.server.clear_read_only_request()
    }

    fn check_writable(&self) -> Result<(), TxnError> {
        match self.server.read_only() {
            Some(why) => Err(TxnError::ReadOnly(why.to_string())),
            None => Ok(()),
        }
    }

    /// Every seq up to this one is durable.
    pub fn committed_seq(&self) -> u64 {
        self.server.committed_seq()
    }

    /// The seq items written now will carry.
    pub fn txn_seq(&self) -> u64 {
        self.store.cache.txn_seq()
    }

    pub fn super_block(&self) -> &SuperBlock {
        self.server.super_block()
    }

    /// Metadata blocks the last commit wrote.
    pub fn last_commit_blocks(&self) -> u64 {
        self.server.last_commit_blocks()
    }

    pub fn commits(&self) -> u64 {
        self.commits
    }

    pub fn cache_stats(&self) -> crate::block::cache::CacheStats {
        self.store.cache.stats()
    }

    /// Blocks read from the device so far.
    pub fn device_reads(&self) -> u64 {
        self.store.reads
    }

    pub fn lookup(&mut self, key: &Key) -> Result<Option<Item>, TxnError> {
        let roots = self.roots();
        Ok(self.store.retry(|c| forest::lookup(c, &roots, key))?)
    }

    /// The first visible item in `[key, last]`.
    pub fn next(&mut self, key: &Key, last: &Key) -> Result<Option<Item>, TxnError> {
        let roots = self.roots();
        Ok(self.store.retry(|c| forest::next(c, &roots, key, last))?)
    }

    pub fn range(&mut self, first: &Key, last: &Key, max: usize) -> Result<Vec<Item>, TxnError> {
        let roots = self.roots();
        Ok(self
            .store
            .retry(|c| forest::range(c, &roots, first, last, max))?)
    }

    fn write_item(&mut self, key: Key, flags: u8, val: Vec<u8>) -> Result<(), TxnError> {
        self.check_writable()?;
        self.no_restart();
        if val.len() > crate::format::btree::BTREE_MAX_VAL_LEN {
            return Err(TxnError::ValueTooLarge(val.len()));
        }
        // Inside a hold the space was checked when the hold was taken.
        self.call(Request::GetMetaAvail {
            for_commit: self.holds > 0,
        })?;
        let Volume { store, log, .. } = self;
        store.retry(|c| {
            let seq = c.txn_seq();
            btree::upsert(
                c,
                &mut log.item_root,
                Item {
                    key,
                    seq,
                    flags,
                    val: val.clone(),
                },
            )
        })?;
        let seq = self.store.cache.txn_seq();
        if self.log.max_item_seq.get() < seq {
            self.log.max_item_seq.set(seq);
        }
        self.note_write();
        self.maybe_commit()
    }

    /// Create or replace the item at `key`.
    pub fn upsert(&mut self, key: Key, val: &[u8]) -> Result<(), TxnError> {
        self.write_item(key, 0, val.to_vec())
    }

    /// Delete the item at `key`; returns whether it existed.
    pub fn delete(&mut self, key: &Key) -> Result<bool, TxnError> {
        self.check_writable()?;
        if self.lookup(key)?.is_none() {
            return Ok(false);
        }
        // An item no other tree has a version of was born in this mount's
        // unmerged log tree: remove it there instead of writing a deletion
        // item, which reads would have to step over until the next merge
        // (a file appended 1 MiB at a time rewrites its extent item's key
        // per write).
        let others = self.others.clone();
        let elsewhere = self
            .store
            .retry(|c| forest::holds_any_version(c, &others, key))?;
        self.no_restart();
        if !elsewhere {
            self.call(Request::GetMetaAvail {
                for_commit: self.holds > 0,
            })?;
            let Volume { store, log, .. } = self;
            match store.retry(|c| btree::delete(c, &mut log.item_root, key)) {
                Ok(_) => {
                    self.note_write();
                    self.maybe_commit()?;
                    return Ok(true);
                }
                Err(BtreeError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.write_item(*key, ITEM_FLAG_DELETION, Vec::new())?;
        Ok(true)
    }

    /// Attach the data device: file data goes through it, and its
    /// buffered writes are written back and flushed before every commit.
    /// Refused unless it is this volume's data device
    /// (`devices::check_data_device`).
    pub fn attach_data_device(&mut self, data: &dyn BlockDev) -> Result<(), TxnError> {
        devices::check_data_device(data, self.super_block())?;
        self.attach_data_io(crate::data_io::DataIo::open(data)?);
        Ok(())
    }

    fn attach_data_io(&mut self, io: crate::data_io::DataIo) {
        self.data = Some(io);
    }

    /// The data device's I/O, if attached.
    pub fn data_io(&mut self) -> Option<&mut crate::data_io::DataIo> {
        self.data.as_mut()
    }

    /// Data extents freed in this transaction become allocatable once it
    /// has committed.
    pub fn free_data(&mut self, ext: Extent) {
        self.no_restart();
        self.data_freed.push(ext);
        self.note_write();
    }

    /// Data extents freed in the open transaction (allocatable after it
    /// commits): a full device is worth a commit when there are some.
    pub fn has_pending_data_frees(&self) -> bool {
        !self.data_freed.is_empty()
    }

    /// The data blocks freed in the open transaction.
    pub fn pending_data_free_blocks(&self) -> u64 {
        self.data_freed.iter().map(|e| e.len).sum()
    }

    pub fn alloc_data(&mut self, want: u64) -> Result<Extent, TxnError> {
        self.check_writable()?;
        self.call(Request::GetMetaAvail { for_commit: false })?;
        match self.call(Request::AllocData { want })? {
            Response::Data(e) => Ok(e),
            other => Err(TxnError::Invalid(format!(
                "unexpected server response {other:?}"
            ))),
        }
    }

    pub fn alloc_inodes(&mut self, count: u64) -> Result<(u64, u64), TxnError> {
        self.check_writable()?;
        match self.call(Request::AllocInodes { count })? {
            Response::Inodes { first, count } => {
                self.note_write();
                Ok((first, count))
            }
            other => Err(TxnError::Invalid(format!(
                "unexpected server response {other:?}"
            ))),
        }
    }

    /// Free space as this mount can use it: the server's count plus the
    /// data blocks the open transaction freed. Those are free to this
    /// mount's next commit, and a write or fallocate that finds the device
    /// full makes that commit, so the space promised is there to allocate
    /// (a file deleted shows up as free when the unlink returns, as on
    /// ext4, not at the next commit).
    pub fn statfs(&mut self) -> Result<Statfs, TxnError> {
        match self.call(Request::Statfs)? {
            Response::Statfs(mut s) => {
                s.free_data_blocks += self.pending_data_free_blocks();
                // The server counted this mount's tree as last sent.
                let open = self.log.inode_count_delta() - self.sent_log.inode_count_delta();
                s.inode_count = s.inode_count.wrapping_add_signed(open);
                Ok(s)
            }
            other => Err(TxnError::Invalid(format!(
                "unexpected server response {other:?}"
            ))),
        }
    }

    /// Inodes created (positive) or deleted (negative) by writes just made
    /// in the open transaction: the mount's log tree carries the sum of
    /// its items' changes, committed with them (scoutfs's
    /// `inode_count_delta`), and merging the tree moves it into the super
    /// block's `inode_count`.
    pub fn add_inode_count(&mut self, delta: i64) {
        self.no_restart();
        let d = self.log.inode_count_delta() + delta;
        self.log.set_inode_count_delta(d);
    }

    /// Commit if the open transaction has reached a trigger (its age, for
    /// a mount that has gone quiet) and no operation holds it open.
    pub fn commit_if_due(&mut self) -> Result<(), TxnError> {
        if self.read_only().is_some() {
            return Ok(());
        }
        self.maybe_commit()
    }

    /// Count a change in the open transaction; its first change starts
    /// the age that `commit_age` limits (as ext4's journal commit timer
    /// starts with a transaction's first handle), so a change waits at
    /// most `commit_age` to become durable.
    fn note_write(&mut self) {
        if self.txn_writes == 0 {
            self.txn_started = self.opts.clock.now();
        }
        self.txn_writes += 1;
    }

    /// When the open transaction's age reaches `commit_age`; None while it
    /// holds no change.
    pub fn commit_due_at(&self) -> Option<Instant> {
        (self.txn_writes > 0).then(|| self.txn_started + self.opts.commit_age)
    }

    /// Whether the open transaction has reached a commit trigger.
    pub fn should_commit(&self) -> bool {
        self.store.cache.nr_dirty() >= self.opts.commit_dirty_blocks
            || (self.txn_writes > 0
                && self.opts.clock.now() - self.txn_started >= self.opts.commit_age)
    }

    /// Begin an operation that writes up to `nr_items` items which must all
    /// land in one transaction: fail now with ENOSPC if they might not fit
    /// (nothing written yet), and commit nothing until `release_trans`.
    /// `frees_space` (an operation that mostly deletes) may use half of the
    /// commit reserve, so that a full device can still delete.
    pub fn hold_trans(&mut self, nr_items: usize, frees_space: bool) -> Result<(), TxnError> {
        self.check_writable()?;
        if self.store.deferring() {
            if let Some(seq) = self.too_dirty() {
                return Err(TxnError::Throttle(seq));
            }
        }
        self.no_restart();
        if self.holds == 0 {
            // Each item change copies at most a root-to-leaf path and splits.
            let (reserve, fill) = self.store.cache.meta_targets();
            let kept = if frees_space { reserve / 2 } else { reserve };
            let need = kept + HOLD_BLOCKS_BASE + nr_items.saturating_mul(HOLD_BLOCKS_PER_ITEM);
            // Top up to at least what the operation needs, then check.
            self.store
                .cache
                .set_meta_targets(need.max(reserve), fill.max(need));
            let topped = self.call(Request::GetMetaAvail { for_commit: true });
            self.store.cache.set_meta_targets(reserve, fill);
            topped?;
            let have = self.store.cache.meta_alloc().avail.len();
            if have < need {
                return Err(TxnError::Server(ServerError::NoSpace(format!(
                    "{have} free metadata blocks in hand, an operation of {nr_items} items needs {need}"
                ))));
            }
        }
        self.holds += 1;
        Ok(())
    }

    /// End an operation begun with `hold_trans`; a commit it deferred may
    /// happen now.
    pub fn release_trans(&mut self) -> Result<(), TxnError> {
        assert!(self.holds > 0, "release_trans without hold_trans");
        self.holds -= 1;
        if self.holds == 0 && self.read_only().is_none() {
            self.maybe_commit()?;
        }
        Ok(())
    }

    fn maybe_commit(&mut self) -> Result<(), TxnError> {
        if self.holds > 0 {
            return Ok(());
        }
        if self.should_commit() && self.async_commits {
            self.want_commit();
            return Ok(());
        }
        if self.should_commit() {
            self.commit_sync()?;
            let every = self.opts.merge_every_commits;
            if every > 0 && self.commits_since_merge >= every {
                // The write is durable already; a failed background merge
                // (which leaves the volume read-only) is reported by the
                // next write, not by this one.
                if let Err(e) = self.merge() {
                    tracing::error!("merging the log tree failed: {e}");
                }
            }
        }
        Ok(())
    }

    /// Commit the open transaction; returns the seq now durable. With
    /// async commits (the engine) this asks the committer for the commit
    /// and ends the operation with [`TxnError::WaitCommit`]; run again
    /// once that commit is durable, it returns at once.
    pub fn commit(&mut self) -> Result<u64, TxnError> {
        if !self.async_commits {
            return self.commit_sync();
        }
        self.check_writable()?;
        let committed = self.committed_seq();
        if self.waited_commit > 0 && committed >= self.waited_commit {
            return Ok(committed);
        }
        let target = self.durable_target();
        if target <= committed {
            return Ok(committed);
        }
        self.want_commit();
        Err(TxnError::WaitCommit(target))
    }

    /// Make commit `seq` durable (a grant of inode numbers made in it,
    /// say): inline, or with async commits by asking for it and ending the
    /// operation with [`TxnError::WaitCommit`] until it is.
    pub fn commit_until(&mut self, seq: u64) -> Result<u64, TxnError> {
        let committed = self.committed_seq();
        if seq <= committed {
            return Ok(committed);
        }
        if !self.async_commits {
            return self.commit_sync();
        }
        self.check_writable()?;
        self.want_commit();
        Err(TxnError::WaitCommit(seq))
    }

    /// The seq that, once durable, holds every change made so far: the
    /// open transaction's if it holds any, else the one in flight, else
    /// the last committed.
    pub fn durable_target(&self) -> u64 {
        if self.has_changes() {
            self.txn_seq()
        } else {
            self.server
                .commit_in_flight()
                .unwrap_or_else(|| self.committed_seq())
        }
    }

    /// Let the engine's committer write commits while the next
    /// transaction goes on: commit triggers then only call `kick` (on the
    /// reactor thread), and the committer calls [`Volume::begin_commit`]
    /// and [`Volume::finish_commit`]. Off (the default): commits are
    /// written inline, as tools and tests want.
    pub fn set_async_commits(&mut self, kick: Option<CommitKick>) {
        self.async_commits = kick.is_some();
        self.commit_kick = kick;
    }

    /// Turn async commits off, returning what [`Volume::set_async_commits`]
    /// takes to turn them on again.
    pub fn take_async_commits(&mut self) -> Option<CommitKick> {
        self.async_commits = false;
        self.commit_kick.take()
    }

    /// Whether commits are the committer's (see [`Volume::set_async_commits`]).
    pub fn async_commits(&self) -> bool {
        self.async_commits
    }

    fn want_commit(&mut self) {
        // Kicked every time: a want the committer found nothing for (no
        // changes yet) must not swallow the next one.
        self.commit_wanted = true;
        if let Some(k) = &self.commit_kick {
            (k.0)();
        }
    }

    /// Whether the committer has work: a commit was asked for or a
    /// trigger reached, and the open transaction holds changes.
    pub fn wants_commit(&self) -> bool {
        (self.commit_wanted || self.should_commit()) && self.has_changes() && self.holds == 0
    }

    /// The seq of the commit in flight, if any.
    pub fn commit_in_flight(&self) -> Option<u64> {
        self.server.commit_in_flight()
    }

    /// A request that waited for commit `seq` runs again: its own
    /// `commit` calls are satisfied by that one (0: a new request).
    pub fn set_waited_commit(&mut self, seq: u64) {
        self.waited_commit = seq;
    }

    /// Whether an operation that may still restart should wait for the
    /// commit in flight before adding more: the next transaction is
    /// already four triggers' worth of dirty blocks.
    fn too_dirty(&self) -> Option<u64> {
        let limit = self.opts.commit_dirty_blocks.saturating_mul(4);
        match self.server.commit_in_flight() {
            Some(seq) if self.store.cache.nr_dirty() >= limit => Some(seq),
            _ => None,
        }
    }

    /// Begin the commit of the open transaction while the next one goes
    /// on (the committer, async commits). Flushes the data device (with
    /// its I/O inline; with the reactor's, the committer writes file data
    /// through after this switch and before the metadata), records
    /// the log tree with the server and seals its blocks; the transaction
    /// seq moves on. `Ok(None)`: nothing to commit. The extents the
    /// transaction freed become allocatable at once, so nothing may write
    /// over them before this commit is durable: with the data device's I/O
    /// on the reactor they are quarantined in the data cache until the
    /// committer lifts it; with it inline such a transaction is committed
    /// whole here instead (returns `Ok(None)` after writing it).
    pub fn begin_commit(&mut self) -> Result<Option<crate::server::PreparedCommit>, TxnError> {
        self.commit_wanted = false;
        if !self.has_changes() || self.holds > 0 {
            return Ok(None);
        }
        self.check_writable()?;
        assert!(self.in_flight.is_none(), "a commit is already in flight");
        let reactor_io = self.data.as_ref().is_some_and(|d| d.reactor_io());
        if !self.data_freed.is_empty() && !reactor_io {
            self.commit_sync()?;
            return Ok(None);
        }
        self.no_restart();
        if !reactor_io {
            self.flush_data()?;
        }
        let freed = match reactor_io {
            true => self.data_freed.clone(),
            false => Vec::new(),
        };
        self.call(Request::GetMetaAvail { for_commit: true })?;
        let data_freed = std::mem::take(&mut self.data_freed);
        let to_discard = if self.opts.discard {
            data_freed.clone()
        } else {
            Vec::new()
        };
        let log = self.log;
        let r = {
            let Volume { server, store, .. } = self;
            server.prepare_log_commit(store, log, data_freed)
        };
        match r {
            Ok(p) => {
                if let (false, Some(d)) = (freed.is_empty(), self.data.as_mut()) {
                    d.quarantine(&freed, p.seq);
                }
                self.in_flight = Some((log, to_discard));
                self.sent_log = log;
                self.txn_writes = 0;
                Ok(Some(p))
            }
            Err(e) => {
                self.back_to_committed();
                Err(e.into())
            }
        }
    }

    /// The commit begun by [`Volume::begin_commit`] was written (`Ok`) or
    /// failed. Returns the seq now durable; a failure leaves the volume
    /// read-only at the last durable commit, the open transaction's
    /// changes thrown away with it.
    pub fn finish_commit(
        &mut self,
        p: &crate::server::PreparedCommit,
        written: Result<(), String>,
    ) -> Result<u64, TxnError> {
        let (log, to_discard) = self.in_flight.take().expect("no commit in flight");
        let r = {
            let Volume { server, store, .. } = self;
            server.finish_commit(store, p, written.map_err(ServerError::Io))
        };
        match r {
            Ok(seq) => {
                self.committed(log, &to_discard);
                Ok(seq)
            }
            Err(e) => {
                self.back_to_committed();
                Err(e.into())
            }
        }
    }

    /// The freed extents durable commits left for the committer to
    /// discard.
    pub fn take_discards(&mut self) -> Vec<Extent> {
        std::mem::take(&mut self.discards)
    }

    /// A commit of `log` is durable: discard the data extents it freed
    /// (nothing has allocated them yet: a transaction that frees data is
    /// committed before any other allocation), and count it.
    fn committed(&mut self, log: LogTrees, to_discard: &[Extent]) {
        if let (false, Some(d)) = (to_discard.is_empty(), self.data.as_mut()) {
            if d.reactor_io() {
                // The committer discards them, then lifts their quarantine.
                self.discards.extend_from_slice(to_discard);
            } else if let Err(e) = d.discard(to_discard) {
                tracing::warn!("discarding freed data blocks: {e}");
            }
        }
        self.committed_log = log;
        self.commits += 1;
        self.commits_since_merge += 1;
    }

    /// A commit failed and the server is read-only at the last durable
    /// one: the mount reads from there too.
    fn back_to_committed(&mut self) {
        self.log = self.committed_log;
        self.sent_log = self.committed_log;
        let _ = self.refresh_roots();
    }

    /// Whether a merge of the log tree is due (after a commit).
    pub fn merge_due(&self) -> bool {
        let every = self.opts.merge_every_commits;
        every > 0 && self.commits_since_merge >= every && self.read_only().is_none()
    }

    /// Merge the log tree if it is due (after a commit), inline.
    pub fn merge_if_due(&mut self) {
        if self.merge_due() {
            if let Err(e) = self.merge() {
                tracing::error!("merging the log tree failed: {e}");
            }
        }
    }

    /// File data written so far made durable before the extents that
    /// point at it are. If it can't be, nothing may commit any more.
    fn flush_data(&mut self) -> Result<(), TxnError> {
        if let Some(d) = self.data.as_mut() {
            if let Err(e) = d.flush() {
                self.server
                    .force_read_only(format!("writing file data to the data device: {e}"));
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Commit the open transaction inline: write it and wait.
    fn commit_sync(&mut self) -> Result<u64, TxnError> {
        self.check_writable()?;
        self.no_restart();
        self.flush_data()?;
        self.call(Request::GetMetaAvail { for_commit: true })?;
        let data_freed = std::mem::take(&mut self.data_freed);
        let to_discard = if self.opts.discard {
            data_freed.clone()
        } else {
            Vec::new()
        };
        let r = self.call(Request::CommitLogTrees {
            log: Box::new(self.log),
            data_freed,
        });
        match r {
            Ok(Response::Committed { seq }) => {
                self.sent_log = self.log;
                self.txn_writes = 0;
                self.committed(self.log, &to_discard);
                Ok(seq)
            }
            Ok(other) => Err(TxnError::Invalid(format!(
                "unexpected server response {other:?}"
            ))),
            Err(e) => {
                // The server went read-only at the last commit: so do we.
                self.back_to_committed();
                Err(e)
            }
        }
    }

    /// Finalize this mount's log tree and fold every finalized tree into
    /// the fs root, then commit. The mount continues in a new log tree.
    pub fn merge(&mut self) -> Result<(u64, u64), TxnError> {
        self.check_writable()?;
        self.commit_sync()?;
        self.call(Request::GetMetaAvail { for_commit: false })?;
        let merged = self.call(Request::MergeLogTrees {
            rid: self.log.rid.get(),
        });
        let (trees, items) = match merged {
            Ok(Response::Merged { trees, items, log }) => {
                self.log = *log;
                (trees, items)
            }
            Ok(other) => {
                return Err(TxnError::Invalid(format!(
                    "unexpected server response {other:?}"
                )))
            }
            Err(e) => {
                // The server is read-only at its last commit: read from there.
                self.back_to_committed();
                return Err(e);
            }
        };
        self.commit_sync()?;
        self.refresh_roots()?;
        self.commits_since_merge = 0;
        Ok((trees, items))
    }

    /// Commit what is open and stop. A volume that went read-only after
    /// an error while mounted fails here too (EROFS, with why), even with
    /// nothing left to commit: what was changed after the last durable
    /// commit is lost, and the unmount must say so.
    pub fn unmount(mut self) -> Result<u64, TxnError> {
        if let Some(why) = self.server.failed() {
            return Err(TxnError::ReadOnly(format!(
                "{why}; changes after commit {} were not written",
                self.committed_seq()
            )));
        }
        if self.txn_writes > 0 {
            self.commit_sync()?;
        }
        Ok(self.committed_seq())
    }

    /// The store, for checkers and tools that walk blocks.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn log_trees(&mut self) -> Result<Vec<LogTrees>, TxnError> {
        self.no_restart();
        Ok(self.server.log_trees(&mut self.store)?)
    }
}
