//! The server half of the client/server seam, run in-process.
//!
//! Everything a mount needs from the server goes through [`Request`] /
//! [`Response`]: its log tree for a transaction and the metadata blocks to
//! build it with (`GetLogTrees`, `GetMetaAvail`), committing it
//! (`CommitLogTrees`), merging finalized log trees into the fs root
//! (`MergeLogTrees`), inode number ranges (`AllocInodes`), data extents
//! (`AllocData`), the roots readers merge (`GetRoots`), and `Statfs`. Today
//! one engine runs both halves over one block store and one transaction,
//! so a server commit is the mount's commit; the cluster issue puts these
//! messages on the wire and gives the server its own transaction.
//!
//! The server owns the super block: allocators, logs root, fs root. Its
//! commit writes every dirty block, flushes, writes the super block with
//! the next seq, flushes. Any failure on that path makes the volume
//! read-only: the in-memory state returns to the last committed super and
//! nothing more is written.

use crate::alloc::{self, AllocError};
use crate::block::store::Store;
use crate::block::{BlockAccess, BlockError};
use crate::btree::{self, BtreeError, Item};
use crate::forest::{self, ForestRoots};
use crate::format::alloc::{
    alloc_list_array_mut, alloc_list_block_mut, alloc_list_entries, Extent, ALLOC_LIST_MAX_BLOCKS,
};
use crate::format::block::BLOCK_SM_SIZE;
use crate::format::key::zone;
use crate::format::log_trees::LOG_TREES_FINALIZED;
use crate::format::{AllocListHead, BlockMagic, BlockRef, Key, LogTrees, SuperBlock};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("the volume is read-only: {0}")]
    ReadOnly(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl ServerError {
    pub fn errno(&self) -> i32 {
        match self {
            ServerError::ReadOnly(_) => libc::EROFS,
            ServerError::NoSpace(_) => libc::ENOSPC,
            ServerError::Corrupt(_) | ServerError::Io(_) => libc::EIO,
        }
    }
}

impl From<BlockError> for ServerError {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::NoSpace => ServerError::NoSpace(e.to_string()),
            BlockError::ReadOnly => ServerError::ReadOnly(e.to_string()),
            BlockError::Check { .. } => ServerError::Corrupt(e.to_string()),
            BlockError::Io { .. } | BlockError::Miss(_) => ServerError::Io(e.to_string()),
        }
    }
}

impl From<BtreeError> for ServerError {
    fn from(e: BtreeError) -> Self {
        match e {
            BtreeError::Block(b) => b.into(),
            other => ServerError::Corrupt(other.to_string()),
        }
    }
}

impl From<AllocError> for ServerError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::NoSpace => ServerError::NoSpace(e.to_string()),
            AllocError::Btree(b) => b.into(),
            AllocError::DoubleFree { .. } | AllocError::Corrupt(_) => {
                ServerError::Corrupt(e.to_string())
            }
        }
    }
}

/// Free space as the server counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statfs {
    pub fsid: u64,
    pub committed_seq: u64,
    pub total_meta_blocks: u64,
    pub free_meta_blocks: u64,
    pub total_data_blocks: u64,
    pub free_data_blocks: u64,
    pub next_ino: u64,
    /// Inodes in the volume (scoutfs's count): the super block's, which
    /// holds the merged log trees' changes, plus every log tree's
    /// `inode_count_delta`; the asking mount adds its open transaction's.
    pub inode_count: u64,
}

#[derive(Clone, Debug)]
pub enum Request {
    /// The mount's current (unfinalized) log tree, created if it has none.
    GetLogTrees {
        rid: u64,
    },
    /// Top up the transaction's metadata blocks. For a write, fewer than the
    /// reserve left is ENOSPC (nothing changed); a commit (`for_commit`)
    /// proceeds on the reserve that writes left it.
    GetMetaAvail {
        for_commit: bool,
    },
    /// Record the mount's log tree and commit; data extents it freed
    /// return to the allocator with the commit.
    CommitLogTrees {
        log: Box<LogTrees>,
        data_freed: Vec<Extent>,
    },
    /// Finalize the mount's log tree, merge every finalized tree into the
    /// fs root, and open the mount's next log tree. Any failure makes the
    /// volume read-only.
    MergeLogTrees {
        rid: u64,
    },
    AllocInodes {
        count: u64,
    },
    AllocData {
        want: u64,
    },
    GetRoots,
    Statfs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    LogTrees(Box<LogTrees>),
    Ok,
    Committed {
        seq: u64,
    },
    /// The merge's counts and the mount's new open log tree.
    Merged {
        trees: u64,
        items: u64,
        log: Box<LogTrees>,
    },
    Inodes {
        first: u64,
        count: u64,
    },
    Data(Extent),
    Roots(ForestRoots),
    Statfs(Statfs),
}

/// The server's state: the super block being built and the last one made
/// durable.
#[derive(Debug)]
pub struct Server {
    sb: SuperBlock,
    committed: SuperBlock,
    read_only: Option<String>,
    /// `read_only` was asked for (a read-only mount), not forced by an
    /// error: [`Server::clear_read_only_request`] may lift it.
    read_only_requested: bool,
    last_commit_blocks: u64,
    merge_commit_dirty_blocks: usize,
    /// The super block of the commit whose writes are in flight
    /// ([`Server::prepare_log_commit`]).
    in_flight: Option<SuperBlock>,
}

/// A commit prepared while the next transaction goes on: its blocks
/// sealed in the cache (`BlockCache::begin_commit`), to be written with
/// the super block that makes them durable (after the data device is
/// flushed), then [`Server::finish_commit`].
#[derive(Debug)]
pub struct PreparedCommit {
    pub seq: u64,
    /// Metadata blocks to write, in block order (their bytes:
    /// `BlockCache::writing_block`).
    pub blknos: Vec<u64>,
    /// The super block, [`BLOCK_SM_SIZE`] bytes, written at
    /// `SUPER_OFFSET_BYTES` once every block is durable.
    pub super_block: Vec<u8>,
}

/// Items merged between top-ups of the blocks in hand (each item's change
/// needs at most a few blocks; the reserve covers a chunk).
const MERGE_CHUNK_ITEMS: usize = 4;
/// By default a merge commits along the way once this many blocks are
/// dirty, so a large merge doesn't pin the whole new fs root in memory.
pub const MERGE_COMMIT_DIRTY_BLOCKS: usize = 2048;

fn log_trees_key(rid: u64, nr: u64) -> Key {
    Key::new(zone::LOG_TREES, rid, 0, nr, 0, 0)
}

fn decode_log_trees(it: &Item) -> Result<LogTrees, ServerError> {
    bytemuck::try_pod_read_unaligned::<LogTrees>(&it.val).map_err(|_| {
        ServerError::Corrupt(format!(
            "log trees item {} has a {}-byte value",
            it.key,
            it.val.len()
        ))
    })
}

impl Server {
    /// Start from a committed super block; the store's transaction is the
    /// one after it. Loads the persisted list of metadata blocks in hand.
    pub fn open(store: &mut Store, sb: SuperBlock) -> Result<Server, ServerError> {
        let head = sb.server_meta_avail[0];
        if !head.ref_.is_null() {
            store.retry(|c| -> Result<(), BlockError> {
                // A list block whose header checks out but whose contents
                // can't be right is corruption too: logged as such, and
                // the mount fails with the block and what is wrong.
                let corrupt = |c: &mut Store, msg: String| {
                    let blkno = head.ref_.blkno.get();
                    let device = c.io.device_name().to_string();
                    c.corruption.report(&device, blkno, &msg);
                    BlockError::Io { device, blkno, msg }
                };
                let blk = c.get(&head.ref_, BlockMagic::AllocList)?;
                let list: Vec<u64> = match alloc_list_entries(blk) {
                    Ok(entries) => entries.iter().map(|b| b.get()).collect(),
                    Err(e) => return Err(corrupt(c, e.to_string())),
                };
                let lo = crate::format::super_block::META_DEV_START_BLKNO;
                let hi = sb.total_meta_blocks.get();
                let mut seen = std::collections::HashSet::new();
                if let Some(bad) = list.iter().find(|&&b| b < lo || b >= hi || !seen.insert(b)) {
                    let msg = format!(
                        "blocks-in-hand list holds block {bad}: outside [{lo}, {hi}) or listed twice"
                    );
                    return Err(corrupt(c, msg));
                }
                c.cache.add_avail(list.into_iter().rev());
                Ok(())
            })?;
            // The list block itself is referenced by the committed super:
            // reusable after the next commit.
            store.cache.free(&head.ref_);
        }
        Ok(Server {
            sb,
            committed: sb,
            read_only: None,
            read_only_requested: false,
            last_commit_blocks: 0,
            merge_commit_dirty_blocks: MERGE_COMMIT_DIRTY_BLOCKS,
            in_flight: None,
        })
    }

    /// Commit a merge along the way once this many blocks are dirty.
    pub fn set_merge_commit_dirty_blocks(&mut self, blocks: usize) {
        self.merge_commit_dirty_blocks = blocks.max(1);
    }

    /// A server for a volume being made: nothing is committed yet.
    pub fn new_volume(sb: SuperBlock) -> Server {
        Server {
            sb,
            committed: sb,
            read_only: None,
            read_only_requested: false,
            last_commit_blocks: 0,
            merge_commit_dirty_blocks: MERGE_COMMIT_DIRTY_BLOCKS,
            in_flight: None,
        }
    }

    /// Commit the open transaction now (mkfs, tools).
    pub fn commit_now(&mut self, store: &mut Store) -> Result<u64, ServerError> {
        let r = self.commit(store, Vec::new());
        if let Err(e) = &r {
            self.go_read_only(store, e);
        }
        r
    }

    pub fn super_block(&self) -> &SuperBlock {
        &self.sb
    }

    /// Metadata blocks the last commit wrote (besides the super block).
    pub fn last_commit_blocks(&self) -> u64 {
        self.last_commit_blocks
    }

    pub fn committed_seq(&self) -> u64 {
        self.committed.seq.get()
    }

    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Why the volume went read-only after an error (a failed commit or
    /// data device), if it did; not a read-only mount's own request.
    pub fn failed(&self) -> Option<&str> {
        match self.read_only_requested {
            true => None,
            false => self.read_only.as_deref(),
        }
    }

    /// Stop accepting changes: the mount's data could not be made durable
    /// (a failed data device), so nothing more may commit.
    pub fn force_read_only(&mut self, why: String) {
        tracing::error!("going read-only: {why}");
        if self.read_only_requested {
            self.read_only = None;
            self.read_only_requested = false;
        }
        self.read_only.get_or_insert(why);
    }

    /// Refuse every change from now on, by request (a read-only mount).
    pub fn set_read_only(&mut self, why: String) {
        if self.read_only.is_none() {
            self.read_only = Some(why);
            self.read_only_requested = true;
        }
    }

    /// Accept changes again after [`Server::set_read_only`] (a read-only
    /// mount made read-write); a server read-only after an error stays
    /// so. Whether changes are accepted now.
    pub fn clear_read_only_request(&mut self) -> bool {
        if self.read_only_requested {
            self.read_only = None;
            self.read_only_requested = false;
        }
        self.read_only.is_none()
    }

    pub fn handle(&mut self, store: &mut Store, req: Request) -> Result<Response, ServerError> {
        if let Some(why) = &self.read_only {
            if !matches!(req, Request::GetRoots | Request::Statfs) {
                return Err(ServerError::ReadOnly(why.clone()));
            }
        }
        let allocating = matches!(
            req,
            Request::GetMetaAvail { .. } | Request::AllocData { .. }
        );
        let r = self.dispatch(store, req);
        if let Err(e) = &r {
            // An allocator change that failed part way (an I/O error, a
            // corrupt block) must not reach a commit; running out of space
            // changed nothing and is only reported.
            if allocating && !matches!(e, ServerError::NoSpace(_)) && self.read_only.is_none() {
                self.go_read_only(store, e);
            }
        }
        r
    }

    fn dispatch(&mut self, store: &mut Store, req: Request) -> Result<Response, ServerError> {
        match req {
            Request::GetLogTrees { rid } => self
                .get_log_trees(store, rid)
                .map(|l| Response::LogTrees(Box::new(l))),
            Request::GetMetaAvail { for_commit } => {
                // Both roots hold only blocks freed by earlier, committed
                // transactions until this one's commit starts.
                let (a, f) = meta_roots(&mut self.sb, store.cache.txn_seq());
                store.retry(|c| alloc::refill_meta(c, a, Some(f)))?;
                let (reserve, _) = store.cache.meta_targets();
                let have = store.cache.meta_alloc().avail.len();
                if !for_commit && have < reserve {
                    return Err(ServerError::NoSpace(format!(
                        "{have} free metadata blocks left, {reserve} are kept for commits"
                    )));
                }
                Ok(Response::Ok)
            }
            Request::CommitLogTrees { log, data_freed } => {
                let r = self.commit_log_trees(store, *log, data_freed);
                if let Err(e) = &r {
                    self.go_read_only(store, e);
                }
                r.map(|seq| Response::Committed { seq })
            }
            Request::MergeLogTrees { rid } => {
                // A merge that stops half way would leave the mount writing
                // into a finalized tree: refuse further changes instead.
                let merged = self.merge_log_trees(store, rid).and_then(|(trees, items)| {
                    // The mount's next tree comes with the merge, so a mount
                    // never keeps writing into the tree just merged and freed.
                    let log = self.get_log_trees(store, rid)?;
                    Ok((trees, items, log))
                });
                match merged {
                    Ok((trees, items, log)) => Ok(Response::Merged {
                        trees,
                        items,
                        log: Box::new(log),
                    }),
                    Err(e) => {
                        self.go_read_only(store, &e);
                        Err(e)
                    }
                }
            }
            Request::AllocInodes { count } => {
                let first = self.sb.next_ino.get();
                let next = first.checked_add(count).ok_or_else(|| {
                    ServerError::NoSpace(format!("inode numbers exhausted at {first}"))
                })?;
                self.sb.next_ino.set(next);
                Ok(Response::Inodes { first, count })
            }
            Request::AllocData { want } => {
                let sb = &mut self.sb;
                let ext = store.retry(|c| alloc::alloc_extent(c, &mut sb.data_alloc, want))?;
                Ok(Response::Data(ext))
            }
            Request::GetRoots => Ok(Response::Roots(self.roots(store)?)),
            Request::Statfs => Ok(Response::Statfs(Statfs {
                inode_count: self
                    .log_trees(store)?
                    .iter()
                    .fold(self.sb.inode_count.get(), |n, lt| {
                        n.wrapping_add_signed(lt.inode_count_delta())
                    }),
                fsid: self.sb.fsid(),
                committed_seq: self.committed.seq.get(),
                total_meta_blocks: self.sb.total_meta_blocks.get(),
                free_meta_blocks: self.sb.meta_alloc[0].total_len.get()
                    + self.sb.meta_alloc[1].total_len.get()
                    + store.cache.meta_alloc().avail.len() as u64,
                total_data_blocks: self.sb.total_data_blocks.get(),
                free_data_blocks: self.sb.data_alloc.total_len.get(),
                next_ino: self.sb.next_ino.get(),
            })),
        }
    }

    /// Every log tree record in the logs root.
    pub fn log_trees(&self, store: &mut Store) -> Result<Vec<LogTrees>, ServerError> {
        let first = Key::new(zone::LOG_TREES, 0, 0, 0, 0, 0);
        let last = Key::new(
            zone::LOG_TREES,
            u64::MAX,
            u8::MAX,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        );
        let root = self.sb.logs_root;
        let items = store.retry(|c| btree::range(c, &root, &first, &last, usize::MAX))?;
        items.iter().map(decode_log_trees).collect()
    }

    fn roots(&self, store: &mut Store) -> Result<ForestRoots, ServerError> {
        let logs = self.log_trees(store)?;
        Ok(ForestRoots {
            fs_root: self.sb.fs_root,
            log_roots: logs.iter().map(|l| l.item_root).collect(),
        })
    }

    fn get_log_trees(&mut self, store: &mut Store, rid: u64) -> Result<LogTrees, ServerError> {
        let mine: Vec<LogTrees> = self
            .log_trees(store)?
            .into_iter()
            .filter(|l| l.rid.get() == rid)
            .collect();
        if let Some(l) = mine
            .iter()
            .find(|l| l.flags.get() & LOG_TREES_FINALIZED == 0)
        {
            return Ok(*l);
        }
        let nr = mine.iter().map(|l| l.nr.get()).max().map_or(1, |n| n + 1);
        let mut lt = LogTrees::default();
        lt.rid.set(rid);
        lt.nr.set(nr);
        lt.get_trans_seq.set(store.cache.txn_seq());
        self.put_log_trees(store, &lt)?;
        Ok(lt)
    }

    fn put_log_trees(&mut self, store: &mut Store, lt: &LogTrees) -> Result<(), ServerError> {
        let key = log_trees_key(lt.rid.get(), lt.nr.get());
        let root = &mut self.sb.logs_root;
        store.retry(|c| {
            let seq = c.txn_seq();
            btree::upsert(
                c,
                root,
                Item {
                    key,
                    seq,
                    flags: 0,
                    val: bytemuck::bytes_of(lt).to_vec(),
                },
            )
        })?;
        Ok(())
    }

    fn commit_log_trees(
        &mut self,
        store: &mut Store,
        mut log: LogTrees,
        data_freed: Vec<Extent>,
    ) -> Result<u64, ServerError> {
        log.commit_trans_seq.set(store.cache.txn_seq());
        self.put_log_trees(store, &log)?;
        self.commit(store, data_freed)
    }

    /// The first half of a mount's commit of its log tree (what
    /// `CommitLogTrees` does, without the writes): record the tree, return
    /// freed space to the allocators, seal the transaction's blocks and
    /// move on to the next seq. The caller writes the blocks, flushes,
    /// writes the super block, flushes, and calls
    /// [`Server::finish_commit`]; changes go on in the next transaction
    /// meanwhile. An error here makes the volume read-only.
    pub fn prepare_log_commit(
        &mut self,
        store: &mut Store,
        mut log: LogTrees,
        data_freed: Vec<Extent>,
    ) -> Result<PreparedCommit, ServerError> {
        if let Some(why) = &self.read_only {
            return Err(ServerError::ReadOnly(why.clone()));
        }
        assert!(self.in_flight.is_none(), "a commit is already in flight");
        log.commit_trans_seq.set(store.cache.txn_seq());
        let r = self
            .put_log_trees(store, &log)
            .and_then(|()| self.prepare(store, data_freed));
        if let Err(e) = &r {
            self.go_read_only(store, e);
        }
        r
    }

    /// The second half: `written` says whether the blocks and the super
    /// block of `p` are durable. Returns the seq now durable; a failure
    /// makes the volume read-only at the last durable commit (the next
    /// transaction's changes are thrown away with it).
    pub fn finish_commit(
        &mut self,
        store: &mut Store,
        p: &PreparedCommit,
        written: Result<(), ServerError>,
    ) -> Result<u64, ServerError> {
        let sb = self
            .in_flight
            .take()
            .expect("finish_commit without a commit in flight");
        match written {
            Ok(()) => {
                store.cache.end_commit();
                self.committed = sb;
                self.last_commit_blocks = p.blknos.len() as u64;
                Ok(p.seq)
            }
            Err(e) => {
                self.go_read_only(store, &e);
                Err(e)
            }
        }
    }

    /// The seq of the commit in flight, if any.
    pub fn commit_in_flight(&self) -> Option<u64> {
        self.in_flight.map(|sb| sb.seq.get())
    }

    fn merge_log_trees(&mut self, store: &mut Store, rid: u64) -> Result<(u64, u64), ServerError> {
        // Finalize the mount's open tree.
        for mut lt in self.log_trees(store)? {
            if lt.rid.get() == rid && lt.flags.get() & LOG_TREES_FINALIZED == 0 {
                lt.flags.set(lt.flags.get() | LOG_TREES_FINALIZED);
                lt.finalize_seq.set(store.cache.txn_seq());
                self.put_log_trees(store, &lt)?;
            }
        }
        let finalized: Vec<LogTrees> = self
            .log_trees(store)?
            .into_iter()
            .filter(|l| l.flags.get() & LOG_TREES_FINALIZED != 0)
            .collect();
        let roots: Vec<_> = finalized.iter().map(|l| l.item_root).collect();
        // The merge a client would do for a range; here, the whole key space,
        // in chunks: each chunk tops up the blocks in hand, and a large merge
        // commits along the way. Committing a partly merged fs root is safe:
        // the finalized trees stay until the end, merged items carry the same
        // seqs in both places, and merging an item again changes nothing, so
        // a crash mid-merge only means the next merge redoes some work.
        let mut cursor = Some(Key::MIN);
        let mut items = 0;
        while cursor.is_some() {
            let (a, f) = meta_roots(&mut self.sb, store.cache.txn_seq());
            store.retry(|c| alloc::refill_meta(c, a, Some(f)))?;
            let fs_root = &mut self.sb.fs_root;
            store.retry(|c| -> Result<(), BtreeError> {
                items += forest::merge_range(
                    c,
                    fs_root,
                    &roots,
                    &mut cursor,
                    &Key::MAX,
                    MERGE_CHUNK_ITEMS,
                )?;
                Ok(())
            })?;
            if store.cache.nr_dirty() >= self.merge_commit_dirty_blocks {
                self.commit(store, Vec::new())?;
            }
        }
        // Free the merged trees and their records; their inode counts
        // move into the super block's in the same commit.
        for lt in &finalized {
            let count = self.sb.inode_count.get();
            self.sb
                .inode_count
                .set(count.wrapping_add_signed(lt.inode_count_delta()));
            self.free_tree(store, lt.item_root)?;
            let key = log_trees_key(lt.rid.get(), lt.nr.get());
            let root = &mut self.sb.logs_root;
            store.retry(|c| btree::delete(c, root, &key))?;
        }
        Ok((finalized.len() as u64, items))
    }

    /// Free every block of a tree no longer referenced.
    fn free_tree(
        &mut self,
        store: &mut Store,
        root: crate::format::BtreeRoot,
    ) -> Result<(), ServerError> {
        let mut refs: Vec<BlockRef> = Vec::new();
        store.retry(|c| {
            refs.clear();
            btree::walk_blocks(c, &root, &mut |_, r, _| refs.push(*r))
        })?;
        for r in refs {
            store.cache.free(&r);
        }
        Ok(())
    }

    /// Commit the open transaction: return freed space to the allocators,
    /// persist the metadata blocks in hand, write every dirty block, flush,
    /// write the super block, flush.
    fn commit(&mut self, store: &mut Store, data_freed: Vec<Extent>) -> Result<u64, ServerError> {
        let p = self.prepare(store, data_freed)?;
        let written = (|| {
            let Store { cache, io, .. } = &mut *store;
            io.write_blocks(p.blknos.iter().map(|&b| (b, cache.writing_block(b))))?;
            io.flush()?;
            io.write_super_block(&p.super_block)?;
            io.flush()?;
            Ok(())
        })();
        self.finish_commit(store, &p, written)
    }

    /// Everything of a commit but the writes: see
    /// [`Server::prepare_log_commit`].
    fn prepare(
        &mut self,
        store: &mut Store,
        data_freed: Vec<Extent>,
    ) -> Result<PreparedCommit, ServerError> {
        for ext in data_freed {
            let sb = &mut self.sb;
            store.retry(|c| alloc::free_extent(c, &mut sb.data_alloc, ext))?;
        }
        // Freed metadata blocks go to the *other* root than the one this
        // transaction allocates from: were they allocatable now, a refill
        // could hand one out and overwrite it before this commit is durable,
        // while the last committed trees still reference it. Returning them
        // may COW allocator blocks and free more: repeat until none are left.
        let seq = store.cache.txn_seq();
        for _round in 0..64 {
            let mut freed = store.cache.take_meta_alloc_freed();
            if freed.is_empty() {
                break;
            }
            freed.sort_unstable();
            for ext in runs(&freed) {
                // Topping up does nothing above the reserve; doing it before
                // each extent keeps a fragmented allocator from draining it.
                let (a, f) = meta_roots(&mut self.sb, seq);
                store.retry(|c| alloc::refill_meta(c, a, None))?;
                store.retry(|c| alloc::free_extent(c, f, ext))?;
            }
        }
        if !store.cache.meta_alloc().freed.is_empty() {
            return Err(ServerError::Corrupt(
                "freed metadata list did not settle".into(),
            ));
        }
        // Persist the blocks in hand in one alloc list block.
        let list_ref = store.cache.alloc(BlockMagic::AllocList)?;
        let mut avail = store.cache.meta_alloc().avail.clone();
        if avail.len() > ALLOC_LIST_MAX_BLOCKS {
            return Err(ServerError::Corrupt(format!(
                "{} blocks in hand exceed one alloc list block",
                avail.len()
            )));
        }
        avail.reverse();
        {
            let blk = store.cache.get_mut(&list_ref);
            alloc_list_block_mut(blk).nr.set(avail.len() as u32);
            for (slot, b) in alloc_list_array_mut(blk).iter_mut().zip(&avail) {
                slot.set(*b);
            }
        }
        self.sb.server_meta_avail[0] = AllocListHead {
            ref_: list_ref,
            total_nr: (avail.len() as u64).into(),
            first_nr: (avail.len() as u32).into(),
            flags: 0.into(),
        };
        self.sb.seq.set(seq);

        let blknos = store.cache.begin_commit();
        let mut super_block = vec![0u8; BLOCK_SM_SIZE];
        self.sb.to_block(&mut super_block);
        self.in_flight = Some(self.sb);
        store.cache.set_txn_seq(seq + 1);
        // The list block is referenced by the super about to be written:
        // reusable once the next transaction commits.
        store.cache.free(&list_ref);
        Ok(PreparedCommit {
            seq,
            blknos,
            super_block,
        })
    }

    fn go_read_only(&mut self, store: &mut Store, e: &ServerError) {
        if self.read_only.is_none() || self.read_only_requested {
            tracing::error!("commit failed, volume is now read-only: {e}");
            self.read_only = Some(e.to_string());
            self.read_only_requested = false;
        }
        store.cache.discard_dirty();
        self.in_flight = None;
        self.sb = self.committed;
    }
}

/// The metadata allocator transaction `seq` allocates from, and the one its
/// freed blocks go to; they swap every transaction.
fn meta_roots(
    sb: &mut SuperBlock,
    seq: u64,
) -> (&mut crate::format::AllocRoot, &mut crate::format::AllocRoot) {
    let [r0, r1] = &mut sb.meta_alloc;
    if seq.is_multiple_of(2) {
        (r0, r1)
    } else {
        (r1, r0)
    }
}

/// Sorted block numbers as extents of consecutive runs.
fn runs(sorted: &[u64]) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for &b in sorted {
        match out.last_mut() {
            Some(e) if e.start + e.len == b => e.len += 1,
            _ => out.push(Extent { start: b, len: 1 }),
        }
    }
    out
}
