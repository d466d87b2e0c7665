//! Acquiring lock sets and holding them: [`LockTable::lock_set`] and the
//! [`LockGuard`] it returns, which releases everything on drop.
//!
//! A set is taken in the global order ([`LockName`]'s `Ord`), one cluster
//! lock at a time: first each of its names in turn (FIFO per name), then
//! one use of the cluster lock in the join of those names' modes (the
//! node's grant, asking the server when it does not cover the mode). A
//! task never waits for a name or lock that sorts before one it holds,
//! and never waits on a cluster lock it already uses, so the waits of all
//! tasks on all nodes go one way along the order: no deadlock.

use std::future::Future;

use crate::format::Key;

use super::mode::LockMode;
use super::name::{LockName, LockSet};
use super::table::{LockInfo, LockTable};
use super::LockError;

impl LockTable {
    /// Take one name.
    pub async fn lock(&self, name: LockName, mode: LockMode) -> Result<LockGuard, LockError> {
        self.lock_set(LockSet::new().with(name, mode)).await
    }

    /// Take every name of `set`, in the global order. Resolves once all
    /// are held; an error (shutdown, a bad set) leaves nothing held, and
    /// so does dropping the future before it resolves.
    pub async fn lock_set(&self, set: LockSet) -> Result<LockGuard, LockError> {
        let mut guard = LockGuard {
            table: self.clone(),
            names: Vec::new(),
            clusters: Vec::new(),
        };
        guard.lock_more(set).await?;
        Ok(guard)
    }

    /// Take `set` only if that needs no wait (scoutfs's
    /// `SCOUTFS_LKF_NONBLOCK`): `None` if some name is held by another
    /// task in a conflicting mode, or this node's grant doesn't cover it
    /// yet (the request then stays in flight, so a later try may find the
    /// grant). For a task that holds names sorting after `set` and can
    /// back out and retry in order if this fails.
    pub fn try_lock_set(&self, set: LockSet) -> Option<Result<LockGuard, LockError>> {
        let fut = std::pin::pin!(self.lock_set(set));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(r) => Some(r),
            // Dropping the future gives back what it had taken.
            std::task::Poll::Pending => None,
        }
    }
}

/// Names a task holds. Dropping it releases them all.
pub struct LockGuard {
    table: LockTable,
    /// Held names and their modes, in acquisition order.
    names: Vec<(LockName, LockMode)>,
    /// Uses of cluster locks (start key, mode), one per cluster lock.
    clusters: Vec<(Key, LockMode)>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("names", &self.names)
            .finish()
    }
}

impl LockGuard {
    /// Take more names while holding these: every new name must sort after
    /// every held one and lie in a cluster lock this guard does not use
    /// yet (`LockError::Order` otherwise). This is how an operation adds
    /// the locks it learns of only once it holds others (the inode index
    /// items, whose keys come from the inode it has locked). Dropping the
    /// future part way may leave some of the new names held; they go with
    /// the guard.
    pub async fn lock_more(&mut self, set: LockSet) -> Result<(), LockError> {
        let names = set.sorted()?;
        if let (Some((last, _)), Some((first, _))) = (self.names.last(), names.first()) {
            if first <= last || first.cluster_key() == last.cluster_key() {
                return Err(LockError::Order {
                    name: *first,
                    held: *last,
                });
            }
        }
        let mut i = 0;
        while i < names.len() {
            let range = names[i].0.range();
            let mut mode = LockMode::Null;
            let mut j = i;
            while j < names.len() && names[j].0.range() == range {
                mode = mode.join(names[j].1);
                j += 1;
            }
            for &(name, m) in &names[i..j] {
                self.table.wait_name(name, m).await?;
                self.names.push((name, m));
            }
            self.table.wait_cluster(range, mode).await?;
            self.clusters.push((range.start, mode));
            i = j;
        }
        Ok(())
    }

    /// The names held, in order.
    pub fn names(&self) -> &[(LockName, LockMode)] {
        &self.names
    }

    /// The mode `name` is held in, if it is.
    pub fn mode(&self, name: &LockName) -> Option<LockMode> {
        self.names.iter().find(|(n, _)| n == name).map(|(_, m)| *m)
    }

    /// Whether a held name lets the task access `key` in `mode` (scoutfs's
    /// `scoutfs_lock_protected`): a name covering the key held in a mode
    /// that covers `mode`. An item store can assert this on every access.
    pub fn protects(&self, key: &Key, mode: LockMode) -> bool {
        self.names
            .iter()
            .any(|(n, m)| n.covers_key(key) && m.covers(mode))
    }

    /// The cluster lock under a held name.
    pub fn info(&self, name: &LockName) -> Option<LockInfo> {
        self.mode(name)?;
        self.table.info(&name.cluster_key())
    }

    /// Release one name early (an operation giving back index locks to
    /// take others after the transaction moved on). Returns whether it was
    /// held.
    pub fn unlock(&mut self, name: &LockName) -> bool {
        let Some(i) = self.names.iter().position(|(n, _)| n == name) else {
            return false;
        };
        let (name, mode) = self.names.remove(i);
        self.table.release_name(name, mode);
        let key = name.cluster_key();
        if !self.names.iter().any(|(n, _)| n.cluster_key() == key) {
            if let Some(j) = self.clusters.iter().position(|(k, _)| *k == key) {
                let (k, m) = self.clusters.remove(j);
                self.table.release_cluster(k, m);
            }
        }
        true
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        for (k, m) in self.clusters.drain(..).rev() {
            self.table.release_cluster(k, m);
        }
        for (n, m) in self.names.drain(..).rev() {
            self.table.release_name(n, m);
        }
    }
}
