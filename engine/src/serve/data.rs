//! File data I/O on the reactor: the data device's queue attached to the
//! reactor, and the tasks that use it.
//!
//! - A request whose read missed ([`FsError::NeedData`]) reads the runs
//!   it missed here ([`DataQueue::fetch`]), waits for reads of the same
//!   blocks other tasks have in flight, and runs again.
//! - Read-ahead asked by an operation is fetched by a task of its own
//!   that nobody waits for.
//! - The write-back task writes dirty blocks in coalesced runs once
//!   enough are dirty; writers wait ([`FsError::WaitWriteBack`]) while the
//!   dirty buffer is full.
//! - A commit, after its switch, writes every block changed before it and
//!   flushes the device ([`DataQueue::write_through`]) before the metadata
//!   that points at them.
//! - Work that must run with the data device's I/O inline (a commit that
//!   frees data extents, a merge, tools' calls, unmount) first stops the
//!   reactor's data I/O and waits until none is in flight
//!   ([`DataQueue::inline`]).
//!
//! The cache and the dirty buffer themselves are `data_io::DataIo`'s,
//! inside the mounted volume; this file only moves blocks.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::data_io::{split_runs, DataIo, DISCARD_MAX_BLOCKS, RUN_BLOCKS};
use crate::dev::{open_queue_with_pool, BlockDev, Completion, DevError, IoRequest};
use crate::dma::{DmaBuf, DmaPool};
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};
use crate::reactor::{unless_stopped, Event, IoFuture, Local, QueueId};

use super::fetch::join_all;
use super::{with_mounted, Mounted};

/// Requests in flight at once on the queue, and its 256 KiB DMA buffers.
const DEPTH: u32 = 32;
/// Write-back runs one task keeps in flight.
const WRITE_BACK_RUNS: usize = 16;

/// The reactor's queue on the data device.
pub(crate) struct DataQueue {
    queue: QueueId,
    pool: DmaPool,
    device: String,
    /// Every completion collected, and the end of an inline run.
    changes: Event,
    /// Callers of [`DataQueue::inline`] running or waiting.
    paused: Cell<u32>,
    /// Requests submitted and not yet collected.
    in_flight: Cell<usize>,
    /// The write-back task was asked to run.
    write_back_kicked: Cell<bool>,
    write_back_waker: RefCell<Option<Waker>>,
}

/// The mounted volume's data cache.
fn data_io(fs: &mut Mounted) -> Option<&mut DataIo> {
    fs.store_mut().data_io()
}

/// Run `f` over the data cache; `None` once unmounted (or with no data
/// device).
fn with_data<R>(f: impl FnOnce(&mut DataIo) -> R) -> Option<R> {
    with_mounted(|fs| data_io(fs).map(f)).flatten()
}

impl DataQueue {
    /// Open a queue pair on `dev` and attach it to the reactor.
    pub(crate) fn open(local: &Local, dev: &dyn BlockDev) -> Result<DataQueue, DevError> {
        let (qp, pool) =
            open_queue_with_pool(dev, RUN_BLOCKS * BLOCK_SM_SIZE, DEPTH as usize, DEPTH)?;
        Ok(DataQueue {
            queue: local.attach_queue(qp),
            pool,
            device: dev.name(),
            changes: Event::new(),
            paused: Cell::new(0),
            in_flight: Cell::new(0),
            write_back_kicked: Cell::new(false),
            write_back_waker: RefCell::new(None),
        })
    }

    fn notify(&self) {
        self.changes.notify();
    }

    /// Wait for the next completion (or the end of an inline run).
    fn changed(&self) -> impl Future<Output = ()> + '_ {
        self.changes.wait()
    }

    /// Wait until nobody holds the queue inline.
    async fn unpaused(&self) {
        while self.paused.get() > 0 {
            self.changed().await;
        }
    }

    fn submit(&self, local: &Local, req: IoRequest) -> IoFuture {
        self.in_flight.set(self.in_flight.get() + 1);
        local.io(self.queue, req)
    }

    fn collected(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.notify();
    }

    /// A DMA buffer, waiting for completions while none is free (the
    /// caller has none of its own in flight).
    async fn buffer(&self) -> DmaBuf {
        loop {
            if let Some(b) = self.pool.try_get() {
                return b;
            }
            self.changed().await;
        }
    }

    /// Read `runs` (device blocks, as an operation missed them) into the
    /// cache, then wait until no read in flight overlaps them (another
    /// task's read of the same blocks). The device's error for a run of
    /// our own that failed. `read_ahead`: nobody waits for these; stop
    /// early when read-ahead's share of the queue is taken.
    pub(crate) async fn fetch(
        &self,
        local: &Local,
        runs: &[(u64, u64)],
        read_ahead: bool,
    ) -> Result<(), String> {
        self.unpaused().await;
        let mut flying: Vec<((u64, u64), IoFuture)> = Vec::new();
        let mut first_err: Option<String> = None;
        let pieces = split_runs(runs.iter().copied(), RUN_BLOCKS as u64);
        for (b, n) in pieces {
            let end = b + n;
            let mut at = b;
            while at < end {
                let buf = match self.pool.try_get() {
                    Some(buf) => buf,
                    None if flying.is_empty() => self.buffer().await,
                    None => {
                        self.finish_fetches(std::mem::take(&mut flying), &mut first_err)
                            .await;
                        self.buffer().await
                    }
                };
                // The next run of the piece not in memory nor on its way.
                let Some(Some((s, n))) = with_data(|io| io.start_fetch(at, end - at, read_ahead))
                else {
                    break;
                };
                at = s + n;
                let req = IoRequest::read(
                    s << BLOCK_SM_SHIFT,
                    (n as usize * BLOCK_SM_SIZE) as u32,
                    buf,
                    0,
                );
                flying.push(((s, n), self.submit(local, req)));
            }
        }
        self.finish_fetches(flying, &mut first_err).await;
        if read_ahead {
            return Ok(());
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Reads of these blocks by other tasks.
        loop {
            let busy = with_data(|io| runs.iter().any(|&(b, n)| io.fetching_any(b, n)));
            if busy != Some(true) {
                return Ok(());
            }
            self.changed().await;
        }
    }

    async fn finish_fetches(
        &self,
        flying: Vec<((u64, u64), IoFuture)>,
        first_err: &mut Option<String>,
    ) {
        for ((s, n), c) in join_all(flying).await {
            let r = match (&c.result, &c.buf) {
                (Ok(()), Some(buf)) => Ok(buf.as_slice()),
                (Ok(()), None) => unreachable!("a read returns its buffer"),
                (Err(e), _) => {
                    first_err.get_or_insert_with(|| {
                        format!("{}: reading blocks {s}..+{n}: {e}", self.device)
                    });
                    Err(e)
                }
            };
            with_data(|io| io.end_fetch(s, r));
            drop(c);
            self.collected();
        }
    }

    /// Write back dirty blocks in runs (only those changed at or before
    /// generation `upto`, if given) until none is left to start or the
    /// queue is paused; waits for its own writes. Returns the runs it
    /// wrote.
    pub(crate) async fn write_back(&self, local: &Local, upto: Option<u64>) -> usize {
        let mut runs = 0;
        let mut flying: Vec<((u64, u64), IoFuture)> = Vec::new();
        loop {
            if self.paused.get() > 0 || flying.len() >= WRITE_BACK_RUNS {
                if flying.is_empty() {
                    break;
                }
                self.finish_writes(std::mem::take(&mut flying)).await;
                continue;
            }
            let mut buf = match self.pool.try_get() {
                Some(buf) => buf,
                None if flying.is_empty() => self.buffer().await,
                None => {
                    self.finish_writes(std::mem::take(&mut flying)).await;
                    continue;
                }
            };
            let next = with_data(|io| io.next_write_back(buf.as_mut_slice(), upto));
            let Some(Some((s, n))) = next else {
                break;
            };
            let req = IoRequest::write(
                s << BLOCK_SM_SHIFT,
                (n as usize * BLOCK_SM_SIZE) as u32,
                buf,
                0,
            );
            flying.push(((s, n), self.submit(local, req)));
            runs += 1;
        }
        self.finish_writes(flying).await;
        runs
    }

    async fn finish_writes(&self, flying: Vec<((u64, u64), IoFuture)>) {
        for ((s, n), c) in join_all(flying).await {
            let Completion { result, buf, .. } = c;
            let data = buf.as_ref().map_or(&[][..], |b| b.as_slice());
            with_data(|io| io.end_write_back(s, n, data, result));
            drop(buf);
            self.collected();
        }
    }

    /// Make every change to file data up to generation `gen` durable:
    /// write back what isn't written (waiting for write-backs in flight),
    /// then flush the device. The first error: the commit that waits for
    /// this must fail.
    pub(crate) async fn write_through(&self, local: &Local, gen: u64) -> Result<(), String> {
        loop {
            match with_data(|io| io.written_through(gen)) {
                None | Some(Ok(true)) => break,
                Some(Err(e)) => return Err(format!("{}: writing file data: {e}", self.device)),
                Some(Ok(false)) => {}
            }
            self.unpaused().await;
            if self.write_back(local, Some(gen)).await == 0 {
                // What is left is another task's write in flight.
                self.changed().await;
            }
        }
        let c = self.submit(local, IoRequest::flush(0)).await;
        self.collected();
        c.result
            .map_err(|e| format!("{}: flushing file data: {e}", self.device))
    }

    /// Discard `extents` (freed by a durable commit) on a device that
    /// takes discards; failures are only logged (a discard is a hint).
    pub(crate) async fn discard(&self, local: &Local, extents: &[crate::format::alloc::Extent]) {
        if extents.is_empty() || with_data(|io| io.supports_discard()) != Some(true) {
            return;
        }
        let pieces: Vec<(u64, u64)> =
            split_runs(extents.iter().map(|e| (e.start, e.len)), DISCARD_MAX_BLOCKS).collect();
        for chunk in pieces.chunks(DEPTH as usize) {
            let flying: Vec<((u64, u64), IoFuture)> = chunk
                .iter()
                .map(|&(b, n)| {
                    with_data(|io| io.discarded(b, n));
                    let req =
                        IoRequest::discard(b << BLOCK_SM_SHIFT, (n << BLOCK_SM_SHIFT) as u32, 0);
                    ((b, n), self.submit(local, req))
                })
                .collect();
            for ((b, n), c) in join_all(flying).await {
                if let Err(e) = c.result {
                    tracing::warn!("{}: discarding blocks {b}..+{n}: {e}", self.device);
                }
                self.collected();
            }
        }
    }

    /// Commit `seq` is durable and its freed extents discarded: write-back
    /// into them may go on.
    pub(crate) fn lift_quarantine(&self, seq: u64) {
        with_data(|io| io.lift_quarantine(seq));
        self.kick_write_back();
        self.notify();
    }

    /// Ask the write-back task to run.
    pub(crate) fn kick_write_back(&self) {
        self.write_back_kicked.set(true);
        if let Some(w) = self.write_back_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wait_kick(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.write_back_kicked.replace(false) {
                return Poll::Ready(());
            }
            *self.write_back_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Wait until the dirty buffer has room (a writer was throttled).
    pub(crate) async fn wait_room(&self) {
        loop {
            // A volume gone read-only, or a write-back failure (which the
            // next commit turns into read-only): the writer goes on to
            // meet the error rather than wait for room that never comes.
            let full = with_mounted(|fs| {
                let gone = fs.store().read_only().is_some();
                let io = data_io(fs)?;
                Some(!gone && io.failed().is_none() && io.over_limit())
            });
            if full.flatten() != Some(true) {
                return;
            }
            self.kick_write_back();
            self.changed().await;
        }
    }

    /// After an operation: start the read-ahead it asked for and the
    /// write-back it made due.
    pub(crate) fn after_op(self: &Rc<Self>, local: &Local) {
        let Some((ra, wb)) = with_data(|io| (io.take_read_ahead(), io.wants_write_back())) else {
            return;
        };
        if wb {
            self.kick_write_back();
        }
        if !ra.is_empty() {
            let (me, l) = (self.clone(), local.clone());
            drop(local.spawn(async move {
                let _ = me.fetch(&l, &ra, true).await;
            }));
        }
    }

    /// Run `f` over the mounted volume with its data device's I/O inline:
    /// the reactor's data I/O is stopped and waited for first, and
    /// resumes after. `None` once unmounted.
    pub(crate) async fn inline<R>(&self, f: impl FnOnce(&mut Mounted) -> R) -> Option<R> {
        self.paused.set(self.paused.get() + 1);
        while self.in_flight.get() > 0 {
            self.changed().await;
        }
        let r = with_mounted(|fs| {
            let had = data_io(fs).map(|io| {
                let had = io.reactor_io();
                io.set_reactor_io(false);
                had
            });
            let r = f(fs);
            if let (Some(true), Some(io)) = (had, data_io(fs)) {
                io.set_reactor_io(true);
            }
            r
        });
        self.paused.set(self.paused.get() - 1);
        self.notify();
        r
    }
}

/// The write-back task: runs until shutdown (or the volume is unmounted).
pub(crate) async fn run_write_back(local: Local, q: Rc<DataQueue>) {
    let mut stop = std::pin::pin!(local.shutdown_signal());
    while unless_stopped(stop.as_mut(), q.wait_kick()).await.is_some() {
        q.unpaused().await;
        if with_mounted(|_| ()).is_none() {
            return;
        }
        q.write_back(&local, None).await;
    }
}
