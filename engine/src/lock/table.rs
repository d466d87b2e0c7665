//! The node's lock table (scoutfs's client half, `lock.c`): for each
//! cluster lock the mode the server granted this node, the users of it
//! per mode, the request in flight and the invalidations to carry out;
//! for each lock name the tasks holding it and the FIFO of tasks waiting.
//!
//! Single-threaded: the table lives on the reactor thread and its futures
//! are `!Send`. State sits in a `RefCell` that is never borrowed across
//! an await nor across a call into the grant source or the invalidator.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use crate::format::Key;

use super::mode::{counts_covered, LockMode, LOCK_NR_MODES};
use super::name::{LockName, LockRange};
use super::seam::{ClientMsg, GrantSource, Invalidation, Invalidator, NetLock, ServerMsg};
use super::LockError;

/// Counters of a table's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Requests sent to the server.
    pub requests: u64,
    /// Grants received.
    pub grants: u64,
    /// Invalidations received, and carried out.
    pub invalidate_requests: u64,
    pub invalidations: u64,
    /// Invalidations whose cache write-back or drop failed.
    pub invalidate_errors: u64,
    /// Messages that made no sense (a grant nobody asked for): ignored.
    pub protocol_errors: u64,
    /// Unused grants given back by [`LockTable::shrink_unused`].
    pub shrinks: u64,
    /// Acquisitions of a name that had to wait for other tasks, and of a
    /// cluster lock that had to wait for the server or an invalidation.
    pub name_waits: u64,
    pub cluster_waits: u64,
}

/// What a guard holder may learn about the cluster lock under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub range: LockRange,
    /// The mode granted to this node (covers the holder's mode).
    pub granted: LockMode,
    /// The write_seq of the last write grant (see [`NetLock::write_seq`]).
    pub write_seq: u64,
    /// Raised each time the node is granted the right to read after it
    /// had none (`lock->refresh_gen`): anything cached from items under
    /// the lock with an older generation must be read again (scoutfs's
    /// `SCOUTFS_LKF_REFRESH_INODE`).
    pub refresh_gen: u64,
}

/// One cluster lock as this node sees it.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) range: LockRange,
    pub(crate) mode: LockMode,
    /// The mode of the request in flight, if any (at most one).
    pub(crate) request: Option<LockMode>,
    /// Invalidations received, in order; the first is being or will be
    /// carried out.
    pub(crate) invalidations: VecDeque<NetLock>,
    /// The mode before the invalidation being carried out (lock recovery
    /// reports it until the server has the answer).
    pub(crate) invalidating: Option<LockMode>,
    pub(crate) users: [u32; LOCK_NR_MODES],
    /// Tasks waiting to use the lock, by arrival.
    waiters: BTreeMap<u64, ClusterWaiter>,
    pub(crate) refresh_gen: u64,
    pub(crate) write_seq: u64,
    wrote: bool,
    /// When a task last stopped using it (the table's use clock), for
    /// shrinking the least recently used.
    last_used: u64,
}

impl Cluster {
    fn new(range: LockRange) -> Cluster {
        Cluster {
            range,
            mode: LockMode::Null,
            request: None,
            invalidations: VecDeque::new(),
            invalidating: None,
            users: [0; LOCK_NR_MODES],
            waiters: BTreeMap::new(),
            refresh_gen: 0,
            write_seq: 0,
            wrote: false,
            last_used: 0,
        }
    }

    /// Granted but unused, with nothing under way: a candidate to give
    /// back.
    fn unused(&self) -> bool {
        self.mode != LockMode::Null
            && self.request.is_none()
            && self.invalidations.is_empty()
            && self.invalidating.is_none()
            && self.users.iter().all(|&n| n == 0)
            && self.waiters.is_empty()
    }

    fn idle(&self) -> bool {
        self.mode == LockMode::Null
            && self.request.is_none()
            && self.invalidations.is_empty()
            && self.invalidating.is_none()
            && self.users.iter().all(|&n| n == 0)
            && self.waiters.is_empty()
    }

    /// Whether a task may start using the lock in `mode` now: the grant
    /// covers it, and neither a queued invalidation nor the request in
    /// flight is about to take that away (new users would otherwise starve
    /// the invalidation, or the switch to the requested mode).
    fn admits(&self, mode: LockMode) -> bool {
        self.mode.covers(mode)
            && self.invalidations.iter().all(|i| i.new_mode.covers(mode))
            && self.request.is_none_or(|r| r.covers(mode))
    }

    fn wake_waiters(&mut self) {
        for w in self.waiters.values() {
            w.waker.wake_by_ref();
        }
    }

    /// Make every waiter the new grant lets in a user now, before anything
    /// that arrives after the grant (an invalidation) can take it away:
    /// without this two nodes wanting the lock could pass it back and
    /// forth forever with neither using it.
    fn admit_waiters(&mut self) {
        let mut admitted = false;
        let mut users = self.users;
        for w in self.waiters.values_mut() {
            if !w.admitted && self.mode.covers(w.mode) {
                w.admitted = true;
                users[w.mode.index()] += 1;
                w.waker.wake_by_ref();
                admitted = true;
            }
        }
        if admitted {
            self.users = users;
        }
    }
}

#[derive(Debug)]
struct ClusterWaiter {
    mode: LockMode,
    waker: Waker,
    /// Already counted among the users (by [`Cluster::admit_waiters`]).
    admitted: bool,
}

#[derive(Debug)]
struct NameWaiter {
    id: u64,
    waker: Option<Waker>,
}

/// The tasks holding and waiting for one lock name.
#[derive(Debug, Default)]
pub(crate) struct NameState {
    pub(crate) holders: [u32; LOCK_NR_MODES],
    queue: VecDeque<NameWaiter>,
}

impl NameState {
    fn admits(&self, mode: LockMode) -> bool {
        LockMode::ALL
            .iter()
            .all(|m| self.holders[m.index()] == 0 || m.compatible(mode))
    }

    fn wake_front(&mut self) {
        if let Some(w) = self.queue.front_mut().and_then(|w| w.waker.take()) {
            w.wake();
        }
    }
}

/// What happened to a name, for the tests' FIFO check.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameEvent {
    Queued(LockName, u64),
    Admitted(LockName, u64),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) clusters: BTreeMap<Key, Cluster>,
    pub(crate) names: HashMap<LockName, NameState>,
    /// Cluster locks with invalidations queued.
    inv_pending: BTreeSet<Key>,
    next_waiter: u64,
    next_refresh_gen: u64,
    use_clock: u64,
    worker: Option<Waker>,
    shutdown: bool,
    stats: LockStats,
    #[cfg(test)]
    pub(crate) events: Vec<NameEvent>,
}

impl State {
    fn maybe_forget(&mut self, key: &Key) {
        if self.clusters.get(key).is_some_and(Cluster::idle) {
            self.clusters.remove(key);
        }
    }

    fn forget_name_if_unused(&mut self, name: &LockName) {
        if self
            .names
            .get(name)
            .is_some_and(|n| n.queue.is_empty() && n.holders.iter().all(|&h| h == 0))
        {
            self.names.remove(name);
        }
    }

    fn wake_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.wake();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) st: RefCell<State>,
    source: Rc<dyn GrantSource>,
    invalidator: Rc<dyn Invalidator>,
    inbox: RefCell<VecDeque<ServerMsg>>,
    delivering: Cell<bool>,
}

/// The node's lock table. Cheap to clone (a handle on shared state).
#[derive(Clone)]
pub struct LockTable {
    pub(crate) inner: Rc<Inner>,
}

impl std::fmt::Debug for LockTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.st.borrow();
        f.debug_struct("LockTable")
            .field("clusters", &st.clusters.len())
            .field("names", &st.names.len())
            .field("stats", &st.stats)
            .finish()
    }
}

/// A weak handle for the grant source to deliver the server's messages
/// with (a strong one would be a cycle: the table owns its source).
#[derive(Clone)]
pub struct LockTableHandle {
    inner: Weak<Inner>,
}

impl std::fmt::Debug for LockTableHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockTableHandle")
            .field("live", &(self.inner.strong_count() > 0))
            .finish()
    }
}

impl LockTableHandle {
    /// Hand the table a message from the server (dropped if the table is
    /// gone). Safe to call from inside [`GrantSource::send`].
    pub fn deliver(&self, msg: ServerMsg) {
        if let Some(inner) = self.inner.upgrade() {
            LockTable { inner }.deliver(msg);
        }
    }
}

impl LockTable {
    pub fn new(source: Rc<dyn GrantSource>, invalidator: Rc<dyn Invalidator>) -> LockTable {
        LockTable {
            inner: Rc::new(Inner {
                st: RefCell::new(State::default()),
                source,
                invalidator,
                inbox: RefCell::new(VecDeque::new()),
                delivering: Cell::new(false),
            }),
        }
    }

    pub fn handle(&self) -> LockTableHandle {
        LockTableHandle {
            inner: Rc::downgrade(&self.inner),
        }
    }

    pub fn stats(&self) -> LockStats {
        self.inner.st.borrow().stats
    }

    /// How many cluster locks the table knows (granted, wanted or being
    /// invalidated).
    pub fn len(&self) -> usize {
        self.inner.st.borrow().clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Give back the least recently used unused grants beyond `keep`
    /// (scoutfs's lock shrinker and `lock_idle_count`): each is asked of
    /// the server in null mode, which invalidates it here first (write
    /// back, drop) and then grants null, and the table forgets it. Returns
    /// how many were asked. A task wanting one of them meanwhile waits for
    /// the null grant and asks again. The table grows by one entry per
    /// cluster lock a task touches; a periodic task calling this bounds it.
    pub fn shrink_unused(&self, keep: usize) -> usize {
        let msgs: Vec<NetLock> = {
            let mut st = self.inner.st.borrow_mut();
            let mut unused: Vec<(u64, Key)> = st
                .clusters
                .iter()
                .filter(|(_, c)| c.unused())
                .map(|(k, c)| (c.last_used, *k))
                .collect();
            if unused.len() <= keep {
                return 0;
            }
            unused.sort_unstable();
            unused.truncate(unused.len() - keep);
            let msgs: Vec<NetLock> = unused
                .iter()
                .map(|(_, k)| {
                    let c = st.clusters.get_mut(k).expect("listed");
                    c.request = Some(LockMode::Null);
                    NetLock {
                        key: *k,
                        write_seq: 0,
                        old_mode: c.mode,
                        new_mode: LockMode::Null,
                    }
                })
                .collect();
            st.stats.shrinks += msgs.len() as u64;
            st.stats.requests += msgs.len() as u64;
            msgs
        };
        for nl in &msgs {
            self.send(ClientMsg::Request(*nl));
        }
        msgs.len()
    }

    /// The mode this node holds on the cluster lock of `name`.
    pub fn granted(&self, name: &LockName) -> LockMode {
        self.inner
            .st
            .borrow()
            .clusters
            .get(&name.cluster_key())
            .map_or(LockMode::Null, |c| c.mode)
    }

    pub(crate) fn info(&self, key: &Key) -> Option<LockInfo> {
        self.inner.st.borrow().clusters.get(key).map(|c| LockInfo {
            range: c.range,
            granted: c.mode,
            write_seq: c.write_seq,
            refresh_gen: c.refresh_gen,
        })
    }

    /// Stop: every waiting acquisition fails with `Shutdown`, new ones
    /// fail at once, and the invalidation worker returns. Guards already
    /// held stay valid until dropped.
    pub fn shutdown(&self) {
        let mut st = self.inner.st.borrow_mut();
        st.shutdown = true;
        for c in st.clusters.values_mut() {
            c.wake_waiters();
        }
        for n in st.names.values_mut() {
            for w in n.queue.iter_mut() {
                if let Some(w) = w.waker.take() {
                    w.wake();
                }
            }
        }
        st.wake_worker();
    }

    fn send(&self, msg: ClientMsg) {
        self.inner.source.send(msg);
    }

    /// Process a message from the server. A message that arrives while
    /// the table is processing another (a source answering inside `send`)
    /// is queued and processed next, in order.
    pub fn deliver(&self, msg: ServerMsg) {
        self.inner.inbox.borrow_mut().push_back(msg);
        if self.inner.delivering.replace(true) {
            return;
        }
        loop {
            let next = self.inner.inbox.borrow_mut().pop_front();
            let Some(msg) = next else { break };
            match msg {
                ServerMsg::Grant(nl) => self.grant_response(nl),
                ServerMsg::Invalidate(nl) => self.invalidate_request(nl),
            }
        }
        self.inner.delivering.set(false);
    }

    /// scoutfs's `scoutfs_lock_grant_response`.
    fn grant_response(&self, nl: NetLock) {
        let mut guard = self.inner.st.borrow_mut();
        let st = &mut *guard;
        st.stats.grants += 1;
        let refresh = st.next_refresh_gen + 1;
        let Some(c) = st.clusters.get_mut(&nl.key) else {
            st.stats.protocol_errors += 1;
            tracing::error!(
                "lock grant for {} which this node has not asked for",
                nl.key
            );
            return;
        };
        if c.request.is_none() {
            st.stats.protocol_errors += 1;
            tracing::error!("lock grant for {} with no request in flight", nl.key);
            return;
        }
        let mut used_refresh = false;
        if !c.mode.can_read() && nl.new_mode.can_read() {
            c.refresh_gen = refresh;
            used_refresh = true;
        }
        if !counts_covered(nl.new_mode, &c.users) {
            // The server granted a mode that leaves users uncovered: it
            // skipped an invalidation. Count it and keep going; the tests
            // check that the server never does this.
            st.stats.protocol_errors += 1;
            tracing::error!(
                "lock grant of {} for {} while users hold {:?}",
                nl.new_mode,
                nl.key,
                c.users
            );
        }
        c.mode = nl.new_mode;
        c.write_seq = nl.write_seq;
        c.request = None;
        c.admit_waiters();
        c.wake_waiters();
        if used_refresh {
            st.next_refresh_gen = refresh;
        }
        st.maybe_forget(&nl.key);
    }

    /// scoutfs's `scoutfs_lock_invalidate_request`: queue it for the
    /// worker, or answer at once for a lock this node does not know.
    fn invalidate_request(&self, nl: NetLock) {
        let mut st = self.inner.st.borrow_mut();
        st.stats.invalidate_requests += 1;
        match st.clusters.get_mut(&nl.key) {
            Some(c) => {
                c.invalidations.push_back(nl);
                st.inv_pending.insert(nl.key);
                st.wake_worker();
            }
            None => {
                drop(st);
                self.send(ClientMsg::Invalidated(nl));
            }
        }
    }

    /// Carry out invalidations until shutdown: the table's worker (scoutfs's
    /// `lock_invalidate_worker`). Spawn it once on the reactor; it waits
    /// for each lock's users of modes the new mode does not cover to drain,
    /// sets the new mode, runs the invalidator, then answers the server.
    pub async fn run_invalidations(&self) {
        while let Some((inv, nl)) = self.next_invalidation().await {
            let res = self.inner.invalidator.invalidate(&inv).await;
            let mut st = self.inner.st.borrow_mut();
            if let Err(e) = res {
                st.stats.invalidate_errors += 1;
                tracing::error!("invalidating lock {}: {e}", inv.range);
            }
            st.stats.invalidations += 1;
            let c = st
                .clusters
                .get_mut(&nl.key)
                .expect("a lock being invalidated stays in the table");
            let done = c.invalidations.pop_front();
            debug_assert_eq!(done, Some(nl));
            c.invalidating = None;
            c.wrote = false;
            let more = !c.invalidations.is_empty();
            c.wake_waiters();
            if !more {
                st.inv_pending.remove(&nl.key);
            }
            st.maybe_forget(&nl.key);
            drop(st);
            self.send(ClientMsg::Invalidated(nl));
        }
    }

    /// The next invalidation whose lock has no users the new mode would
    /// leave uncovered, with the lock switched to the new mode; `None` at
    /// shutdown.
    fn next_invalidation(&self) -> impl Future<Output = Option<(Invalidation, NetLock)>> + '_ {
        poll_fn(move |cx| {
            let mut st = self.inner.st.borrow_mut();
            if st.shutdown {
                return Poll::Ready(None);
            }
            let st = &mut *st;
            for key in st.inv_pending.iter() {
                let c = st.clusters.get_mut(key).expect("pending lock in table");
                let Some(nl) = c.invalidations.front().copied() else {
                    continue;
                };
                if c.invalidating.is_some() || !counts_covered(nl.new_mode, &c.users) {
                    continue;
                }
                let old = c.mode;
                c.invalidating = Some(old);
                c.mode = nl.new_mode;
                let inv = Invalidation {
                    range: c.range,
                    old_mode: old,
                    new_mode: nl.new_mode,
                    wrote: c.wrote,
                };
                return Poll::Ready(Some((inv, nl)));
            }
            st.worker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// The locks this node holds from `from` on, at most `max`, for a new
    /// server's lock recovery (scoutfs's `scoutfs_lock_recover_request`):
    /// a lock being invalidated is reported in its old mode, since the
    /// server has not had the answer.
    pub fn recover_locks(&self, from: &Key, max: usize) -> Vec<NetLock> {
        let st = self.inner.st.borrow();
        st.clusters
            .range(*from..)
            .filter_map(|(k, c)| {
                let mode = c.invalidating.unwrap_or(c.mode);
                (mode != LockMode::Null).then_some(NetLock {
                    key: *k,
                    write_seq: c.write_seq,
                    old_mode: mode,
                    new_mode: mode,
                })
            })
            .take(max)
            .collect()
    }

    /// Check the table's invariants: the holders of every name are
    /// compatible, every lock's users are covered by its mode. For tests
    /// and debug checks.
    pub fn check_invariants(&self) -> Result<(), String> {
        let st = self.inner.st.borrow();
        for (name, n) in &st.names {
            for a in LockMode::ALL {
                for b in LockMode::ALL {
                    let (ha, hb) = (n.holders[a.index()], n.holders[b.index()]);
                    let together = if a == b { ha > 1 } else { ha > 0 && hb > 0 };
                    if together && !a.compatible(b) {
                        return Err(format!("{name}: holders {:?}", n.holders));
                    }
                }
            }
        }
        for (k, c) in &st.clusters {
            if !counts_covered(c.mode, &c.users) {
                return Err(format!("lock {k}: {} with users {:?}", c.mode, c.users));
            }
            if c.invalidating.is_some() && c.invalidations.is_empty() {
                return Err(format!("lock {k}: invalidating with nothing queued"));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn take_events(&self) -> Vec<NameEvent> {
        std::mem::take(&mut self.inner.st.borrow_mut().events)
    }

    // --- used by the guard (guard.rs) ---

    pub(crate) fn wait_name(&self, name: LockName, mode: LockMode) -> NameWait {
        NameWait {
            table: self.clone(),
            name,
            mode,
            id: None,
            done: false,
            waited: false,
        }
    }

    pub(crate) fn wait_cluster(&self, range: LockRange, mode: LockMode) -> ClusterWait {
        ClusterWait {
            table: self.clone(),
            range,
            mode,
            id: None,
            done: false,
            waited: false,
        }
    }

    pub(crate) fn release_name(&self, name: LockName, mode: LockMode) {
        let mut st = self.inner.st.borrow_mut();
        let n = st
            .names
            .get_mut(&name)
            .expect("a held name is in the table");
        assert!(n.holders[mode.index()] > 0, "{name} released twice");
        n.holders[mode.index()] -= 1;
        n.wake_front();
        st.forget_name_if_unused(&name);
    }

    pub(crate) fn release_cluster(&self, key: Key, mode: LockMode) {
        let mut st = self.inner.st.borrow_mut();
        let c = st
            .clusters
            .get_mut(&key)
            .expect("a used lock is in the table");
        assert!(c.users[mode.index()] > 0, "lock {key} released twice");
        c.users[mode.index()] -= 1;
        if mode.can_write() {
            c.wrote = true;
        }
        st.use_clock += 1;
        let now = st.use_clock;
        let c = st
            .clusters
            .get_mut(&key)
            .expect("a used lock is in the table");
        c.last_used = now;
        if !c.invalidations.is_empty() {
            st.wake_worker();
        }
        st.maybe_forget(&key);
    }
}

/// Waits for a task's turn on a lock name: first in the name's FIFO and
/// compatible with its holders. Dropped before its turn, it leaves the
/// queue; dropped after, its hold is the caller's (see guard.rs).
pub(crate) struct NameWait {
    table: LockTable,
    name: LockName,
    mode: LockMode,
    id: Option<u64>,
    done: bool,
    waited: bool,
}

impl Future for NameWait {
    type Output = Result<(), LockError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut st = this.table.inner.st.borrow_mut();
        if st.shutdown {
            return Poll::Ready(Err(LockError::Shutdown));
        }
        let st = &mut *st;
        let id = match this.id {
            Some(id) => id,
            None => {
                let id = st.next_waiter;
                st.next_waiter += 1;
                st.names
                    .entry(this.name)
                    .or_default()
                    .queue
                    .push_back(NameWaiter { id, waker: None });
                #[cfg(test)]
                st.events.push(NameEvent::Queued(this.name, id));
                this.id = Some(id);
                id
            }
        };
        let n = st.names.get_mut(&this.name).expect("queued name");
        let first = n.queue.front().is_some_and(|w| w.id == id);
        if first && n.admits(this.mode) {
            n.queue.pop_front();
            n.holders[this.mode.index()] += 1;
            this.done = true;
            // The next in line may be compatible too (readers enter
            // together, in order).
            n.wake_front();
            #[cfg(test)]
            st.events.push(NameEvent::Admitted(this.name, id));
            return Poll::Ready(Ok(()));
        }
        let w = n
            .queue
            .iter_mut()
            .find(|w| w.id == id)
            .expect("a waiting task stays queued");
        if w.waker
            .as_ref()
            .is_none_or(|old| !old.will_wake(cx.waker()))
        {
            w.waker = Some(cx.waker().clone());
        }
        if !this.waited {
            this.waited = true;
            st.stats.name_waits += 1;
        }
        Poll::Pending
    }
}

impl Drop for NameWait {
    fn drop(&mut self) {
        let (Some(id), false) = (self.id, self.done) else {
            return;
        };
        let mut st = self.table.inner.st.borrow_mut();
        if let Some(n) = st.names.get_mut(&self.name) {
            let was_first = n.queue.front().is_some_and(|w| w.id == id);
            n.queue.retain(|w| w.id != id);
            if was_first {
                n.wake_front();
            }
        }
        st.forget_name_if_unused(&self.name);
    }
}

/// Waits until this node's grant of a cluster lock lets a task use it in
/// `mode`, sending the request for it if none is in flight. Ready, the
/// task is counted among the lock's users.
pub(crate) struct ClusterWait {
    table: LockTable,
    range: LockRange,
    mode: LockMode,
    id: Option<u64>,
    done: bool,
    waited: bool,
}

impl Future for ClusterWait {
    type Output = Result<(), LockError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let key = this.range.start;
        loop {
            let nl = {
                let mut guard = this.table.inner.st.borrow_mut();
                let st = &mut *guard;
                if st.shutdown {
                    return Poll::Ready(Err(LockError::Shutdown));
                }
                let id = *this.id.get_or_insert_with(|| {
                    st.next_waiter += 1;
                    st.next_waiter - 1
                });
                let c = st
                    .clusters
                    .entry(key)
                    .or_insert_with(|| Cluster::new(this.range));
                debug_assert_eq!(c.range, this.range);
                if c.waiters.get(&id).is_some_and(|w| w.admitted) {
                    c.waiters.remove(&id);
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
                if c.admits(this.mode) {
                    c.users[this.mode.index()] += 1;
                    c.waiters.remove(&id);
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
                match c.waiters.get_mut(&id) {
                    Some(w) => {
                        if !w.waker.will_wake(cx.waker()) {
                            w.waker = cx.waker().clone();
                        }
                    }
                    None => {
                        c.waiters.insert(
                            id,
                            ClusterWaiter {
                                mode: this.mode,
                                waker: cx.waker().clone(),
                                admitted: false,
                            },
                        );
                    }
                }
                if c.mode.covers(this.mode) || c.request.is_some() {
                    None
                } else {
                    // Ask the server, even with an invalidation under way:
                    // it handles the request once it has the answer.
                    c.request = Some(this.mode);
                    let nl = NetLock {
                        key,
                        write_seq: 0,
                        old_mode: c.mode,
                        new_mode: this.mode,
                    };
                    st.stats.requests += 1;
                    Some(nl)
                }
            };
            if !this.waited {
                this.waited = true;
                this.table.inner.st.borrow_mut().stats.cluster_waits += 1;
            }
            let Some(nl) = nl else {
                return Poll::Pending;
            };
            this.table.send(ClientMsg::Request(nl));
            // A local source may have granted it already: look again.
        }
    }
}

impl Drop for ClusterWait {
    fn drop(&mut self) {
        let (Some(id), false) = (self.id, self.done) else {
            return;
        };
        let key = self.range.start;
        let mut st = self.table.inner.st.borrow_mut();
        if let Some(c) = st.clusters.get_mut(&key) {
            if let Some(w) = c.waiters.remove(&id) {
                if w.admitted {
                    // Let in by a grant but gone before it looked.
                    c.users[w.mode.index()] -= 1;
                    if !c.invalidations.is_empty() {
                        st.wake_worker();
                    }
                }
            }
        }
        st.maybe_forget(&key);
    }
}
