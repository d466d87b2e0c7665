//! engine::lock — the node's locks, shaped like scoutfs's cluster locks.
//!
//! Tasks on the reactor interleave at awaits; an operation that spans
//! awaits holds locks on what it reads and changes. The locks are
//! scoutfs's: modes read, write and write-only ([`LockMode`]) over item key
//! ranges ([`LockName`]: an inode, an inode index seq group, the orphan,
//! quota, totl and indx zones, the rename lock), granted to the node by a
//! lock server and shared by the node's tasks.
//!
//! Two levels, as in the original (`lock.c`, `lock_server.c`):
//!
//! - **Node level (cluster locks).** The server grants this node a mode on
//!   a key range (an inode group of 1024 inodes, a zone...). The node's
//!   tasks use the grant: users are counted per mode, and a task may use
//!   the lock in any mode the grant covers (a write grant covers reads).
//!   When another node wants an incompatible mode the server sends an
//!   invalidation; the node lets no new user in that the reduced mode
//!   would not cover, waits for the users it has to finish, writes back
//!   and drops what it cached under the range ([`Invalidator`]), answers.
//!   A single node's grants come from [`LocalGrantSource`] (the same
//!   [`LockServer`] in-process); a network source will replace it, and
//!   nothing above this module changes.
//! - **Task level (names).** Within the node, tasks exclude each other per
//!   name with the same compatibility (read with read, write-only with
//!   write-only, write alone), in FIFO order per name, so nobody starves.
//!   A name is its cluster lock, except for inodes: tasks exclude each
//!   other per inode under the group's grant, as the kernel's inode locks
//!   do under scoutfs's group lock.
//!
//! Acquisition ([`LockTable::lock_set`]) takes a whole [`LockSet`] in one
//! global order (rename, inodes by number, the orphan, quota and xattr tag
//! zones, then inode index names by key) and returns a [`LockGuard`] that releases it on drop. No lock is
//! ever upgraded in place: a guard can't take a stronger mode on a name
//! or cluster lock it holds (scoutfs doesn't either: its callers take the
//! mode they will need, and `scoutfs_lock_inodes` takes all of an
//! operation's inodes in one mode); a task that finds it needs more drops
//! its guard and takes the stronger set. [`LockGuard::lock_more`] adds
//! names that sort after everything held (the index locks an operation
//! learns of from the inode it locked).
//!
//! docs/ARCHITECTURE.md has the rule of which operation takes which locks.

mod guard;
mod mode;
mod name;
mod seam;
mod server;
mod table;

#[cfg(test)]
mod tests;

use std::rc::Rc;

pub use guard::LockGuard;
pub use mode::{counts_covered, invalidation_mode, server_compatible, LockMode, LOCK_NR_MODES};
pub use name::{
    inode_group_range, IndexKind, LockName, LockRange, LockSet, LOCK_SET_MAX, RENAME_KEY,
};
pub use seam::{
    ClientMsg, GrantSource, Invalidation, Invalidator, LocalBoxFuture, NetLock, NoCache, ServerMsg,
};
pub use server::{LocalGrantSource, LockServer, LockServerError, Outbox};
pub use table::{LockInfo, LockStats, LockTable, LockTableHandle};

/// Errors of the lock layer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("the lock table is shut down")]
    Shutdown,
    #[error("{name} can't be locked {mode}")]
    InvalidMode { name: LockName, mode: LockMode },
    #[error("a lock set of {0} names is over the limit of {LOCK_SET_MAX}")]
    TooMany(usize),
    #[error("{name} can't be taken while holding {held}: locks are taken in order, and never twice on one cluster lock")]
    Order { name: LockName, held: LockName },
    #[error("invalidating {range}: {msg}")]
    Invalidate { range: LockRange, msg: String },
}

impl LockError {
    pub fn errno(&self) -> i32 {
        match self {
            LockError::Shutdown => libc::ESHUTDOWN,
            LockError::Invalidate { .. } => libc::EIO,
            LockError::InvalidMode { .. } | LockError::TooMany(_) | LockError::Order { .. } => {
                libc::EINVAL
            }
        }
    }
}

impl LockTable {
    /// The lock table of a node that is its own lock server (one mount):
    /// the table wired to a [`LocalGrantSource`] for `rid`.
    pub fn new_local(rid: u64, invalidator: Rc<dyn Invalidator>) -> LockTable {
        let source = LocalGrantSource::new(rid);
        let table = LockTable::new(Rc::new(source.clone()), invalidator);
        source.attach(table.handle());
        table
    }
}
