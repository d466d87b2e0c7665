//! The committer: a reactor task that writes commits while the next
//! transaction goes on. A commit trigger (dirty blocks, age, an fsync)
//! only kicks it. It begins the commit (`Volume::begin_commit`: the log
//! tree recorded, its blocks sealed, the seq moved on: the only pause for
//! other requests), writes the file data changed before that switch and
//! flushes the data device (data.rs), writes the sealed blocks through the
//! reactor's metadata queue, flushes, writes the super block, flushes, and
//! finishes it (`Volume::finish_commit`). The data extents a commit freed
//! stay quarantined in the data cache (no write-back into them) until it is
//! durable and they are discarded (with `-o discard`). A merge is still
//! written inline (with the reactor's data I/O stopped for it). Requests that need
//! a commit durable ([`FsError::WaitCommit`]) or that must not add to a
//! transaction already four triggers' worth of dirty blocks
//! ([`FsError::Throttled`]) wait on it, then run again.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::fs::FsError;
use crate::reactor::{unless_stopped, Local};
use crate::server::PreparedCommit;
use crate::txn::CommitKick;

use super::fetch::MetaFetch;
use super::with_mounted;

#[derive(Default)]
struct Kick {
    wanted: bool,
    waker: Option<Waker>,
}

/// The committer's state, shared by the reactor's tasks.
#[derive(Default)]
pub(crate) struct Committer {
    kick: Arc<Mutex<Kick>>,
    /// A commit's writes are in flight.
    busy: Cell<bool>,
    /// Tasks waiting for a commit to finish.
    waiters: std::cell::RefCell<Vec<Waker>>,
    /// Commits written by this task, and their metadata blocks.
    pub(crate) commits: Cell<u64>,
    pub(crate) blocks: Cell<u64>,
    /// Requests that finished while a commit's writes were in flight.
    pub(crate) overlapped: Cell<u64>,
}

impl Committer {
    /// What the volume calls when a commit is wanted.
    pub(crate) fn kick_handle(&self) -> CommitKick {
        let k = self.kick.clone();
        CommitKick(Arc::new(move || {
            let mut k = k.lock().unwrap_or_else(|e| e.into_inner());
            k.wanted = true;
            if let Some(w) = k.waker.take() {
                w.wake();
            }
        }))
    }

    fn wait_kick(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            let mut k = self.kick.lock().unwrap_or_else(|e| e.into_inner());
            if k.wanted {
                k.wanted = false;
                return Poll::Ready(());
            }
            k.waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Wait until commit `seq` is durable; the volume's error if it went
    /// read-only first (or was unmounted).
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<(), FsError> {
        poll_fn(|cx| {
            let state = with_mounted(|fs| {
                let v = fs.store();
                (v.committed_seq(), v.read_only().map(str::to_string))
            });
            match state {
                None => Poll::Ready(Err(FsError::ReadOnly("the volume is unmounted".into()))),
                Some((committed, _)) if committed >= seq => Poll::Ready(Ok(())),
                Some((_, Some(why))) => Poll::Ready(Err(FsError::ReadOnly(why))),
                Some(_) => {
                    self.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// A request finished: counted if a commit was being written.
    pub(crate) fn note_request(&self) {
        if self.busy.get() {
            self.overlapped.set(self.overlapped.get() + 1);
        }
    }

    /// Wait until no commit is in flight.
    pub(crate) async fn wait_idle(&self) {
        poll_fn(|cx| {
            if !self.busy.get() {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Begin the commit of the open transaction if one is wanted: the
/// prepared commit and the file data generation of its switch.
fn begin(fs: &mut super::Mounted) -> Result<Option<(PreparedCommit, u64)>, crate::txn::TxnError> {
    let v = fs.store_mut();
    if v.read_only().is_some() || !v.wants_commit() {
        return Ok(None);
    }
    let p = v.begin_commit()?;
    let gen = v.data_io().map_or(0, |d| d.generation());
    Ok(p.map(|p| (p, gen)))
}

/// The committer task: runs until shutdown (or the volume is unmounted).
pub(crate) async fn run(local: Local, core: Rc<super::Core>) {
    let (queue, c, data) = (&*core.fetch, &*core.committer, &*core.data);
    let mut stop = std::pin::pin!(local.shutdown_signal());
    while unless_stopped(stop.as_mut(), c.wait_kick()).await.is_some() {
        // Commit while there is something to commit: a transaction that
        // reached its trigger while the last one was written goes next.
        loop {
            c.busy.set(true);
            let begun = with_mounted(begin);
            let (p, gen) = match begun {
                None => return,
                Some(Ok(Some(p))) => p,
                Some(Ok(None)) => {
                    c.busy.set(false);
                    c.wake_waiters();
                    break;
                }
                Some(Err(e)) => {
                    tracing::error!("beginning a commit failed: {e}");
                    c.busy.set(false);
                    c.wake_waiters();
                    break;
                }
            };
            let written = write(&local, queue, data, &p, gen).await;
            let finished = with_mounted(|fs| fs.store_mut().finish_commit(&p, written));
            match finished {
                None => return,
                Some(Ok(seq)) => {
                    c.commits.set(c.commits.get() + 1);
                    c.blocks.set(c.blocks.get() + p.blknos.len() as u64);
                    // What it freed may be written again once discarded.
                    let discards = with_mounted(|fs| fs.store_mut().take_discards());
                    data.discard(&local, &discards.unwrap_or_default()).await;
                    data.lift_quarantine(seq);
                    if with_mounted(|fs| fs.store().merge_due()) == Some(true) {
                        data.inline(|fs| fs.store_mut().merge_if_due()).await;
                    }
                }
                Some(Err(e)) => tracing::error!("commit {} failed: {e}", p.seq),
            }
            c.busy.set(false);
            c.wake_waiters();
        }
    }
}

/// Write a prepared commit: the file data changed before its switch
/// (generation `gen`) and a flush of the data device, then its blocks, a
/// flush, the super block, a flush.
async fn write(
    local: &Local,
    queue: &MetaFetch,
    data: &super::data::DataQueue,
    p: &PreparedCommit,
    gen: u64,
) -> Result<(), String> {
    data.write_through(local, gen).await?;
    queue.write_blocks(local, &p.blknos).await?;
    queue.flush(local).await?;
    queue.write_super(local, &p.super_block).await?;
    queue.flush(local).await
}
