//! The lock table's two seams: the messages it exchanges with a lock
//! server through a [`GrantSource`], and the [`Invalidator`] the item
//! store implements so that a node giving up a lock writes back and drops
//! what it cached under it.
//!
//! The messages are scoutfs's LOCK traffic (`struct scoutfs_net_lock`:
//! key, write_seq, old and new mode). A node sends a request for a mode
//! and gets one grant back; the server sends a node an invalidation and
//! gets one response back, carrying the request's key and modes. The
//! protocol needs, as the original's: one outstanding request per lock
//! per side, and messages delivered reliably and in order per node (the
//! network source resends after a reconnect, as scoutfs's net layer).

use std::future::Future;
use std::pin::Pin;

use crate::format::Key;

use super::mode::LockMode;
use super::name::LockRange;
use super::LockError;

/// One lock message (scoutfs's `struct scoutfs_net_lock`). `key` is the
/// start of the cluster lock's range: the server knows locks by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLock {
    pub key: Key,
    /// Set by the server on grants of write and write-only: an increasing
    /// number the node stamps on the items it writes under the lock, so
    /// that merges order the writes of different nodes (`lock->write_seq`).
    pub write_seq: u64,
    pub old_mode: LockMode,
    pub new_mode: LockMode,
}

/// From a node to the lock server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMsg {
    /// Grant me `new_mode` (I hold `old_mode`).
    Request(NetLock),
    /// Done: I no longer use `old_mode` beyond `new_mode` (the
    /// invalidation's key and modes, echoed).
    Invalidated(NetLock),
}

/// From the lock server to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    /// The answer to a request: the node now holds `new_mode`.
    Grant(NetLock),
    /// Reduce your `old_mode` grant to `new_mode` (read or null) and say
    /// so.
    Invalidate(NetLock),
}

/// Where a node's lock requests go: the in-process server of a single
/// node today ([`super::LocalGrantSource`]), the network client later.
pub trait GrantSource {
    /// Send `msg` to the lock server. Replies come back through
    /// [`super::LockTableHandle::deliver`], possibly before `send`
    /// returns (the table queues what arrives while it is busy).
    fn send(&self, msg: ClientMsg);
}

/// A future the invalidator returns; it runs on the reactor thread.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What a node must do to its caches before it answers an invalidation
/// (scoutfs's `lock_invalidate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// The cluster lock's range: every item and block cached for keys in
    /// it is concerned.
    pub range: LockRange,
    pub old_mode: LockMode,
    /// `Read` (only from `Write`) or `Null`.
    pub new_mode: LockMode,
    /// Whether a task released a write or write-only use of the lock
    /// since it was granted or last invalidated (scoutfs compares the
    /// lock's `dirty_trans_seq` with the open transaction for the same
    /// purpose): if not, nothing under it can be dirty.
    pub wrote: bool,
}

impl Invalidation {
    /// The node may have dirtied items under the lock: they must be
    /// committed (written back) before the answer.
    pub fn must_write_back(&self) -> bool {
        self.old_mode.can_write() && self.wrote
    }

    /// The cached items under the lock must be dropped: everything but a
    /// write lock reduced to read, whose cache is still right once written
    /// back.
    pub fn must_drop(&self) -> bool {
        !(self.old_mode == LockMode::Write && self.new_mode == LockMode::Read)
    }
}

/// The item store's side of invalidation. Called by the table's
/// invalidation worker once no task uses the lock in a mode the new mode
/// does not cover (so nothing is dirtied under it meanwhile); the node
/// answers the server when the future completes. Write back first
/// (commit the transaction if [`Invalidation::must_write_back`]), then
/// drop ([`Invalidation::must_drop`]) the items and blocks cached for the
/// range, and any inode state derived from them.
///
/// An error is logged and counted, and the node still answers: holding
/// the lock would stop the whole cluster, and a node whose write-back
/// failed has gone read-only with its uncommitted changes lost anyway.
pub trait Invalidator {
    fn invalidate<'a>(&'a self, inv: &'a Invalidation)
        -> LocalBoxFuture<'a, Result<(), LockError>>;
}

/// An invalidator for a node that caches nothing under its locks (today's
/// single mount: `Volume` reads through to its block cache, which no
/// other node writes).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

impl Invalidator for NoCache {
    fn invalidate<'a>(
        &'a self,
        _inv: &'a Invalidation,
    ) -> LocalBoxFuture<'a, Result<(), LockError>> {
        Box::pin(async { Ok(()) })
    }
}
