//! The engine process's core and its front door.
//!
//! One reactor thread owns the mounted volume (metadata store,
//! transaction, file data I/O). Every frontend (FUSE's handler threads,
//! the admin socket, later the shim's rings and virtiofs) is a translator
//! into one typed interface: a [`Request`] (an [`Op`] with the
//! [`SessionId`] and [`Caller`] it comes from) submitted with
//! [`Engine::submit`], which never waits, and answered with a [`Reply`]
//! or an [`Errno`] through a completion callback; [`Engine::call_op`] is
//! the blocking form for frontend threads. No frontend touches the btree.
//!
//! Files: `op.rs` (the types), `execute.rs` (an op against the mounted
//! fs), `inbox.rs` (the submission queue and the dispatcher task),
//! `session.rs` (sessions and their handles), `caller.rs` (credentials
//! from the transport), `errno.rs` (the one errno map), `stats.rs`
//! (per-op counts and latency), `changes.rs` (change events for the
//! frontends' caches), `fetch.rs` (a request's attempts, and metadata
//! reads through the reactor), `data.rs` (file data I/O through the
//! reactor), `commit.rs` (the committer), `admin/` (the admin socket, a
//! translator).
//!
//! Each request is a task whose attempts run the operation synchronously
//! over what is in memory; an attempt that misses metadata blocks, file
//! data blocks or lock grants before it has changed anything ends, the
//! task gets them through the reactor (other requests going on), and the
//! attempt runs again (docs/ARCHITECTURE.md, "Miss and restart").

pub mod admin;
mod caller;
// Change events for the frontends' caches (changes.rs).
mod changes;
pub use changes::{Change, ChangeEvent, SubscribeOptions, Subscription, Taken, MAX_NAMES};
mod errno;
mod execute;
mod inbox;
mod op;
mod session;
mod stats;
mod submit;

use std::cell::RefCell;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::dev::{BlockDev, DevError};
use crate::fs::{Fs, FsError, FsOptions, KernelRefs};
use crate::reactor::{unless_stopped, Local, Reactor, ReactorConfig, ReactorError};
use crate::txn::{TxnError, TxnOptions, Volume};
use crate::util::ready;

pub use caller::{peer_caller, Caller, GroupCache};
pub use errno::Errno;
pub use execute::{execute, open_mask, FMODE_EXEC};
pub use inbox::{Done, Rejected, DISPATCH_BATCH};
pub use op::{Op, OpKind, Reply, Request, MAX_IO_BYTES, MAX_READDIR_ENTRIES};
pub use session::{Handle, OpenFile, OpenKind, Session, SessionId, MAX_HANDLES};
pub use stats::OpStats;

/// The mounted filesystem, as work on the reactor sees it.
pub type Mounted = Fs<Volume>;

mod commit;
mod data;
mod fetch;

/// The reactor's tasks' shared parts for the mounted volume.
pub(crate) struct Core {
    /// Request tasks' metadata reads (and the committer's writes).
    pub(crate) fetch: std::rc::Rc<fetch::MetaFetch>,
    pub(crate) committer: std::rc::Rc<commit::Committer>,
    /// File data I/O.
    pub(crate) data: std::rc::Rc<data::DataQueue>,
}

thread_local! {
    /// The volume mounted by the engine whose reactor runs on this thread.
    static MOUNTED: RefCell<Option<Mounted>> = const { RefCell::new(None) };
    /// Its tasks' shared parts.
    static CORE: RefCell<Option<std::rc::Rc<Core>>> = const { RefCell::new(None) };
}

/// The mounted volume's tasks' shared parts, on the reactor thread.
pub(crate) fn core() -> Option<std::rc::Rc<Core>> {
    CORE.with(|cell| cell.borrow().clone())
}

/// Run `f` over the mounted filesystem, on the reactor thread; `None`
/// once it is unmounted. Never held across an await.
pub(crate) fn with_mounted<R>(f: impl FnOnce(&mut Mounted) -> R) -> Option<R> {
    MOUNTED.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// What the committer did (see `commit.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commits written while requests went on.
    pub commits: u64,
    /// Metadata blocks they wrote.
    pub blocks: u64,
    /// Requests that finished while a commit was being written.
    pub requests_during_commits: u64,
}

/// How request tasks met cache misses (see `fetch.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissStats {
    /// Metadata blocks read through the reactor for request tasks.
    pub fetched_blocks: u64,
    /// Attempts run again after those reads.
    pub restarts: u64,
    /// Requests that ran out of attempts and read inline.
    pub gave_up: u64,
    /// Misses attempts deferred.
    pub deferred: u64,
    /// Metadata blocks read inline on the reactor thread since mount
    /// (mount itself, commits, and operations past their first change).
    pub inline_reads: u64,
    /// File data: blocks deferred, read through the reactor, read inline
    /// (operations past their first change), written back.
    pub data: crate::data_io::DataStats,
    /// Lock grants taken for attempts that waited for them, and taken
    /// inline by operations past their first change (item::locks).
    pub lock_waits: u64,
    pub lock_inline: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Dev(#[from] DevError),
    #[error("{0}")]
    Txn(#[from] TxnError),
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{0}")]
    Reactor(#[from] ReactorError),
    #[error("the engine has no mounted volume (it is shutting down)")]
    NotMounted,
}

impl EngineError {
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::Dev(e) => e.errno(),
            EngineError::Txn(e) => e.errno(),
            EngineError::Fs(e) => e.errno(),
            EngineError::Reactor(_) | EngineError::NotMounted => libc::ESHUTDOWN,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub reactor: ReactorConfig,
    pub txn: TxnOptions,
    pub fs: FsOptions,
    /// Mount read-only: nothing is written to either device.
    pub read_only: bool,
}

/// Commit a transaction that has aged past `age` even when no operation
/// comes along to trigger it, until the reactor shuts down. The task
/// sleeps until the open transaction's due time (`Volume::commit_due_at`),
/// or `age` while nothing is open: a change made during that sleep is due
/// after the wake-up, so no change waits more than `age` (plus this
/// thread's scheduling) to be committed.
async fn commit_when_quiet(local: Local, age: std::time::Duration) {
    // A transaction held open by an operation is committed when it lets
    // go; meanwhile a due time in the past must not become a busy loop.
    const MIN_NAP: std::time::Duration = std::time::Duration::from_millis(10);
    let mut stop = std::pin::pin!(local.shutdown_signal());
    let mut period = age.max(MIN_NAP);
    while unless_stopped(stop.as_mut(), local.sleep(period))
        .await
        .is_some()
    {
        period = MOUNTED
            .with(|cell| {
                let mut cell = cell.borrow_mut();
                let Some(fs) = cell.as_mut() else {
                    return age;
                };
                if let Err(e) = ready(fs.write_aged_atimes()) {
                    tracing::error!("writing day-old lazytime atimes failed: {e}");
                }
                if let Err(e) = fs.store_mut().commit_if_due() {
                    tracing::error!("periodic commit failed: {e}");
                }
                match fs.store_mut().commit_due_at() {
                    Some(due) => due.saturating_duration_since(local.clock().now()),
                    None => age,
                }
            })
            .max(MIN_NAP);
    }
}

/// A running engine: a reactor with a mounted volume.
#[derive(Debug)]
pub struct Engine {
    reactor: Reactor,
    meta: Arc<dyn BlockDev>,
    data: Arc<dyn BlockDev>,
    /// Submitted requests on their way to the dispatcher (inbox.rs).
    inbox: Arc<inbox::Inbox>,
    /// The next session number (submit.rs).
    next_session: AtomicU64,
    /// The reactor thread, on which blocking calls would never return.
    reactor_thread: std::thread::ThreadId,
    /// The volume's fsid, read at mount.
    fsid: u64,
    /// The frontends' kernels' lookup counts, shared with the mounted fs.
    kernel_refs: Arc<KernelRefs>,
}

impl Engine {
    /// Claim both devices, check that they are this volume's metadata and
    /// data devices, start the reactor and mount the volume on it. A
    /// device another engine holds is refused (`DevError::Busy`), and so
    /// is a device that isn't what the volume says it is
    /// (`TxnError::Device`: not scoutfs, another volume's, the wrong
    /// role, shorter than the volume), before anything is written.
    pub fn start(
        meta: Arc<dyn BlockDev>,
        data: Arc<dyn BlockDev>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        meta.lock_exclusive()?;
        // Checked before the data device is claimed, so that the metadata
        // device given twice reads as the wrong role rather than busy.
        let (_, sb) = crate::txn::read_meta_super(&*meta)?;
        crate::txn::devices::check_meta_size(&*meta, &sb)?;
        crate::txn::devices::check_data_device(&*data, &sb)?;
        data.lock_exclusive()?;
        let (m, d) = (meta.clone(), data.clone());
        // One time for everything on the reactor: its clock.
        let clock = opts.reactor.clock;
        let txn = TxnOptions { clock, ..opts.txn };
        let fs_opts = FsOptions { clock, ..opts.fs };
        let read_only = opts.read_only;
        let age = txn.commit_age;
        let inbox = Arc::new(inbox::Inbox::new(opts.reactor.remote_queue_depth));
        let inbox2 = inbox.clone();
        let (mounted_tx, mounted_rx) = std::sync::mpsc::sync_channel(1);
        let reactor = Reactor::start(opts.reactor, move |local: &Local| {
            let mut vol = Volume::open(&*m, txn)?;
            vol.attach_data_device(&*d)?;
            if read_only {
                vol.set_read_only("mounted read-only");
            }
            let mut fs = ready(Fs::open(vol, fs_opts))?;
            let core = std::rc::Rc::new(Core {
                fetch: std::rc::Rc::new(fetch::MetaFetch::open(local, &*m)?),
                committer: std::rc::Rc::new(commit::Committer::default()),
                data: std::rc::Rc::new(data::DataQueue::open(local, &*d)?),
            });
            fs.store_mut().set_deferred_reads(true);
            fs.store_mut()
                .set_async_commits(Some(core.committer.kick_handle()));
            if let Some(io) = fs.store_mut().data_io() {
                io.set_reactor_io(true);
            }
            CORE.with(|cell| *cell.borrow_mut() = Some(core.clone()));
            // Item accesses are checked against this node's lock grants
            // (item::locks); a single node is its own lock server.
            crate::item::locks::install(crate::lock::LockTable::new_local(
                txn.rid,
                std::rc::Rc::new(crate::lock::NoCache),
            ));
            local.spawn(commit::run(local.clone(), core.clone()));
            local.spawn(data::run_write_back(local.clone(), core.data.clone()));
            let mounted = (
                fs.store().super_block().fsid(),
                fs.kernel_refs(),
                std::thread::current().id(),
            );
            MOUNTED.with(|cell| *cell.borrow_mut() = Some(fs));
            local.spawn(commit_when_quiet(local.clone(), age));
            local.spawn(inbox::dispatch(local.clone(), inbox2));
            // Read below once `start` returns, which is after this.
            let _ = mounted_tx.send(mounted);
            Ok(())
        })?;
        let (fsid, kernel_refs, reactor_thread) = mounted_rx
            .try_recv()
            .map_err(|_| ReactorError::Start("the reactor mounted nothing".into()))?;
        Ok(Engine {
            reactor,
            meta,
            data,
            inbox,
            next_session: AtomicU64::new(SessionId::ENGINE.0 + 1),
            reactor_thread,
            fsid,
            kernel_refs,
        })
    }

    /// Run `f` on the reactor with the mounted filesystem and wait for it.
    /// Calls from many threads are served one after another. The fs
    /// futures are driven with [`ready`] inside `f`: over today's
    /// synchronous `Volume` they never wait.
    ///
    /// Raw access, for tests and tools that reach below the front door
    /// (engine/tests/serve.rs); frontends submit [`Op`]s
    /// ([`Engine::submit`], [`Engine::call_op`]) instead, so that every
    /// request is typed, counted, timed and checked against its session.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Mounted) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.reactor
            .remote()
            .call(move |_: &Local| async move {
                // `f` runs once, so it can't wait for a commit or a
                // read: it runs once none is in flight, with commits and
                // file data I/O inline.
                let core = core()?;
                core.committer.wait_idle().await;
                core.data
                    .inline(|fs| {
                        let kick = fs.store_mut().take_async_commits();
                        let r = f(fs);
                        fs.store_mut().set_async_commits(kick);
                        r
                    })
                    .await
            })?
            .ok_or(EngineError::NotMounted)
    }

    /// Run the operation `op` over the mounted filesystem as a task on the
    /// reactor and wait for its result. `op` may run several times: each
    /// run is an attempt that, if it needs metadata blocks that aren't
    /// cached before it has changed anything, ends with
    /// [`FsError::NeedBlocks`]; the task reads them through the reactor
    /// (other requests go on meanwhile) and runs `op` again. So `op` must
    /// change nothing outside the filesystem before it returns.
    pub fn run<T: Send + 'static>(
        &self,
        op: impl FnMut(&mut Mounted) -> Result<T, FsError> + Send + 'static,
    ) -> Result<Result<T, FsError>, EngineError> {
        self.reactor
            .remote()
            .call(move |local: &Local| {
                let local = local.clone();
                async move {
                    let io = core()?;
                    fetch::run_attempts(&local, &io, op).await
                }
            })?
            .ok_or(EngineError::NotMounted)
    }

    /// How request tasks met cache misses so far.
    pub fn miss_stats(&self) -> Result<MissStats, EngineError> {
        self.reactor
            .remote()
            .call(|_: &Local| {
                let f = core().map(|c| c.fetch.clone());
                let r = with_mounted(|fs| {
                    let data = fs.store_mut().data_io().map(|d| d.stats());
                    let store = fs.store_mut().store_mut();
                    (store.deferred, store.reads, data.unwrap_or_default())
                });
                let (lock_waits, lock_inline) = crate::item::locks::counts();
                async move {
                    let (f, (deferred, inline_reads, data)) = (f?, r?);
                    Some(MissStats {
                        fetched_blocks: f.blocks.get(),
                        restarts: f.restarts.get(),
                        gave_up: f.gave_up.get(),
                        deferred,
                        inline_reads,
                        data,
                        lock_waits,
                        lock_inline,
                    })
                }
            })?
            .ok_or(EngineError::NotMounted)
    }

    /// What the committer has done so far.
    pub fn commit_stats(&self) -> Result<CommitStats, EngineError> {
        self.reactor
            .remote()
            .call(|_: &Local| {
                let c = core().map(|c| c.committer.clone());
                async move {
                    let c = c?;
                    Some(CommitStats {
                        commits: c.commits.get(),
                        blocks: c.blocks.get(),
                        requests_during_commits: c.overlapped.get(),
                    })
                }
            })?
            .ok_or(EngineError::NotMounted)
    }

    /// Commit what is open, unmount, and stop the reactor. Returns the last
    /// committed seq.
    pub fn shutdown(self) -> Result<u64, EngineError> {
        // Every request submitted before is answered first: the inbox
        // runs in order, so this one completes after them.
        let barrier = Request::new(SessionId::ENGINE, Caller::root(), Op::FreeSpace);
        let _ = self.call_op(barrier);
        let r = self.reactor.remote().call(|_: &Local| async move {
            inbox::wait_requests_done().await;
            if let Some(core) = core() {
                core.committer.wait_idle().await;
                // Nothing of the reactor's in flight on the data device;
                // from here (no await) file data I/O is inline too.
                core.data.inline(|_| ()).await;
                with_mounted(|fs| {
                    if let Some(io) = fs.store_mut().data_io() {
                        io.set_reactor_io(false);
                    }
                });
            }
            let m = MOUNTED.with(|cell| cell.borrow_mut().take());
            // Unmount's own accesses need no grants.
            if let Some(t) = crate::item::locks::uninstall() {
                t.shutdown();
            }
            m.map(|mut fs| {
                fs.store_mut().set_async_commits(None);
                // What the fs keeps in memory (lazytime's atimes) goes
                // into the last commit.
                if let Err(e) = ready(fs.end_mount()) {
                    tracing::error!("unmount: kept atimes not written: {e}");
                }
                fs.into_store().unmount()
            })
        })?;
        self.reactor.shutdown();
        drop((self.meta, self.data));
        match r {
            Some(r) => Ok(r?),
            None => Err(EngineError::NotMounted),
        }
    }
}
