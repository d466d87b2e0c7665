//! The engine process's core: one reactor thread that owns the mounted
//! volume (metadata store, transaction, file data I/O); every other thread
//! (FUSE handler threads, the admin socket, later the shim's rings) reaches
//! it only by posting work to the reactor and waiting for the answer. No
//! frontend thread touches the btree.
//!
//! Today the volume is synchronous, so a metadata read that misses the
//! cache blocks the reactor for that read (see docs/ARCHITECTURE.md for the
//! path to awaited reads).

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use crate::dev::{BlockDev, DevError};
use crate::fs::{Fs, FsError, FsOptions};
use crate::reactor::{Local, Reactor, ReactorConfig, ReactorError};
use crate::txn::{TxnError, TxnOptions, Volume};
use crate::util::ready;

/// The mounted filesystem, as work on the reactor sees it.
pub type Mounted = Fs<Volume>;

thread_local! {
    /// The volume mounted by the engine whose reactor runs on this thread.
    static MOUNTED: RefCell<Option<Mounted>> = const { RefCell::new(None) };
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
    loop {
        let mut nap = std::pin::pin!(local.sleep(period));
        let stopped = std::future::poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(true);
            }
            nap.as_mut().poll(cx).map(|_| false)
        })
        .await;
        if stopped {
            return;
        }
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
                    Some(due) => due.saturating_duration_since(std::time::Instant::now()),
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
        let (txn, fs_opts, read_only) = (opts.txn, opts.fs, opts.read_only);
        let age = txn.commit_age;
        let reactor = Reactor::start(opts.reactor, move |local: &Local| {
            let mut vol = Volume::open(&*m, txn)?;
            vol.attach_data_device(&*d)?;
            if read_only {
                vol.set_read_only("mounted read-only");
            }
            let fs = ready(Fs::open(vol, fs_opts))?;
            MOUNTED.with(|cell| *cell.borrow_mut() = Some(fs));
            local.spawn(commit_when_quiet(local.clone(), age));
            Ok(())
        })?;
        Ok(Engine {
            reactor,
            meta,
            data,
        })
    }

    /// Run `f` on the reactor with the mounted filesystem and wait for it.
    /// Calls from many threads are served one after another. The fs
    /// futures are driven with [`ready`] inside `f`: over today's
    /// synchronous `Volume` they never wait.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Mounted) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        self.reactor
            .remote()
            .call(move |_: &Local| {
                let r = MOUNTED.with(|cell| cell.borrow_mut().as_mut().map(f));
                async move { r }
            })?
            .ok_or(EngineError::NotMounted)
    }

    /// Commit what is open, unmount, and stop the reactor. Returns the last
    /// committed seq.
    pub fn shutdown(self) -> Result<u64, EngineError> {
        let r = self.reactor.remote().call(|_: &Local| {
            let m = MOUNTED.with(|cell| cell.borrow_mut().take());
            let r = m.map(|mut fs| {
                // What the fs keeps in memory (lazytime's atimes) goes
                // into the last commit.
                if let Err(e) = ready(fs.end_mount()) {
                    tracing::error!("unmount: kept atimes not written: {e}");
                }
                fs.into_store().unmount()
            });
            async move { r }
        })?;
        self.reactor.shutdown();
        drop((self.meta, self.data));
        match r {
            Some(r) => Ok(r?),
            None => Err(EngineError::NotMounted),
        }
    }
}
