//! The node's lock grants, checked under the item store. An engine that
//! installs its [`LockTable`] on the reactor thread ([`install`]) has
//! every item read and write checked against the grant covering its key
//! ([`LockName::for_key`]): read for lookups and scans, write for
//! changes. An operation that may still run again and lacks a grant ends
//! with [`ItemError::NeedLocks`]; the engine's task takes the locks
//! ([`take_need`], [`table`], `LockTable::lock_set`, awaited: a network
//! round trip in a cluster) and runs it again, the grant staying with the
//! node until the lock server invalidates it. Past its first change an
//! operation takes what it lacks without waiting ([`LockTable::try_lock_set`]:
//! a single node's grants come at once; in a cluster the need is
//! discovered earlier by `Fs::apply`'s prefetch of every key it writes).
//! So `fs` and `data` never name a lock: they stay what they are when the
//! cluster's lock server arrives (docs/ARCHITECTURE.md, engine::lock).
//!
//! Without an installed table (tools, tests of the layers alone) nothing
//! is checked.

use std::cell::RefCell;

use crate::format::Key;
use crate::lock::{LockMode, LockName, LockSet, LockTable};

use super::ItemError;

struct NodeLocks {
    table: LockTable,
    /// What an attempt lacked (name, mode), for the task to take.
    need: Vec<(LockName, LockMode)>,
    /// Locks taken for tasks that waited, and taken inline.
    waited: u64,
    inline: u64,
}

thread_local! {
    static NODE: RefCell<Option<NodeLocks>> = const { RefCell::new(None) };
}

/// Check item accesses on this thread against `table`'s grants.
pub fn install(table: LockTable) {
    NODE.with(|n| {
        *n.borrow_mut() = Some(NodeLocks {
            table,
            need: Vec::new(),
            waited: 0,
            inline: 0,
        })
    });
}

/// Stop checking on this thread; the table, if there was one.
pub fn uninstall() -> Option<LockTable> {
    NODE.with(|n| n.borrow_mut().take().map(|n| n.table))
}

/// The installed table (a handle to the same one).
pub fn table() -> Option<LockTable> {
    NODE.with(|n| n.borrow().as_ref().map(|n| n.table.clone()))
}

/// What the last attempt lacked, as one set to take.
pub fn take_need() -> LockSet {
    NODE.with(|n| {
        let mut n = n.borrow_mut();
        let Some(n) = n.as_mut() else {
            return LockSet::new();
        };
        let mut need = std::mem::take(&mut n.need);
        need.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.index().cmp(&a.1.index())));
        need.dedup_by(|a, b| a.0 == b.0);
        n.waited += need.len() as u64;
        need.into_iter().collect()
    })
}

/// Locks taken for tasks that waited for them, and inline.
pub fn counts() -> (u64, u64) {
    NODE.with(|n| n.borrow().as_ref().map_or((0, 0), |n| (n.waited, n.inline)))
}

/// An access to `[first, last]` (one key: `first == last`) for writing or
/// reading, by an operation that may still run again (`deferring`).
/// Ranges stay within one lock name (an inode's items, a zone): checked.
pub(crate) fn check(
    first: &Key,
    last: &Key,
    write: bool,
    deferring: bool,
) -> Result<(), ItemError> {
    NODE.with(|n| {
        let mut n = n.borrow_mut();
        let Some(n) = n.as_mut() else {
            return Ok(());
        };
        let Some(name) = LockName::for_key(first) else {
            return Ok(());
        };
        debug_assert!(
            first == last || LockName::for_key(last) == Some(name),
            "a scan from {first} to {last} spans lock names"
        );
        let mode = if write {
            LockMode::Write
        } else {
            LockMode::Read
        };
        if n.table.granted(&name).covers(mode) {
            return Ok(());
        }
        if deferring {
            n.need.push((name, mode));
            return Err(ItemError::NeedLocks);
        }
        match n.table.try_lock_set(LockSet::new().with(name, mode)) {
            Some(Ok(guard)) => {
                // The node keeps the grant; the task-level use ends here.
                drop(guard);
                n.inline += 1;
                Ok(())
            }
            Some(Err(e)) => Err(ItemError::Io(format!("locking {name}: {e}"))),
            None => Err(ItemError::Io(format!(
                "{name} is not granted to this node and the operation can't wait for it"
            ))),
        }
    })
}
