//! Miss and restart on the reactor: a request runs as a task whose
//! attempts are synchronous runs of the operation over cached metadata.
//! An attempt that needs blocks which aren't cached, before it has
//! changed anything, ends with [`FsError::NeedBlocks`]; the task reads
//! those blocks through the reactor's queue on the metadata device (all
//! of them at once), caches them, and runs the operation again. While it
//! waits, other tasks run: one request's cache miss no longer holds up
//! every other request. See docs/ARCHITECTURE.md, "Miss and restart".

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::block::BlockError;
use crate::dev::{open_queue_with_pool, BlockDev, DevError, IoRequest};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_LG_SHIFT, BLOCK_LG_SIZE};
use crate::format::super_block::SUPER_OFFSET_BYTES;
use crate::format::BlockRef;
use crate::fs::FsError;
use crate::reactor::{Local, QueueId};

use super::{with_mounted, Mounted};

/// Metadata reads in flight at once for request tasks (one 64 KiB DMA
/// buffer each).
const FETCH_DEPTH: u32 = 32;

/// Attempts of one request before it runs once more with misses read
/// inline: a cache too small to hold what one operation reads would
/// otherwise evict, between attempts, the blocks it just fetched.
pub(crate) const MAX_ATTEMPTS: u32 = 64;

/// The reactor's queue on the metadata device for request tasks' reads.
pub(crate) struct MetaFetch {
    queue: QueueId,
    pool: DmaPool,
    device: String,
    /// Blocks read, and attempts run again after reading them.
    pub(crate) blocks: Cell<u64>,
    pub(crate) restarts: Cell<u64>,
    /// Requests that gave up deferring ([`MAX_ATTEMPTS`]).
    pub(crate) gave_up: Cell<u64>,
}

impl MetaFetch {
    /// Open a queue pair on `dev` and attach it to the reactor.
    pub(crate) fn open(local: &Local, dev: &dyn BlockDev) -> Result<MetaFetch, DevError> {
        let (qp, pool) =
            open_queue_with_pool(dev, BLOCK_LG_SIZE, FETCH_DEPTH as usize, FETCH_DEPTH)?;
        Ok(MetaFetch {
            queue: local.attach_queue(qp),
            pool,
            device: dev.name(),
            blocks: Cell::new(0),
            restarts: Cell::new(0),
            gave_up: Cell::new(0),
        })
    }

    /// Read `refs` (at most [`FETCH_DEPTH`] at a time, waiting for DMA
    /// buffers that other tasks hold) and give each block's bytes, or the
    /// device's error for it.
    pub(crate) async fn read(
        &self,
        local: &Local,
        refs: &[BlockRef],
    ) -> Vec<(BlockRef, Result<Vec<u8>, BlockError>)> {
        let mut out = Vec::with_capacity(refs.len());
        for chunk in refs.chunks(FETCH_DEPTH as usize) {
            let mut reads = Vec::with_capacity(chunk.len());
            for r in chunk {
                let buf = loop {
                    match self.pool.try_get() {
                        Some(b) => break b,
                        None => yield_now().await,
                    }
                };
                let req = IoRequest::read(
                    r.blkno.get() << BLOCK_LG_SHIFT,
                    BLOCK_LG_SIZE as u32,
                    buf,
                    0,
                );
                reads.push((*r, local.io(self.queue, req)));
            }
            for (r, io) in reads {
                let c = io.await;
                let got = c
                    .result
                    .map_err(|e| BlockError::Io {
                        device: self.device.clone(),
                        blkno: r.blkno.get(),
                        msg: e.to_string(),
                    })
                    .map(|()| {
                        let buf = c.buf.expect("a read returns its buffer");
                        buf.as_slice()[..BLOCK_LG_SIZE].to_vec()
                    });
                out.push((r, got));
            }
        }
        self.blocks.set(self.blocks.get() + refs.len() as u64);
        out
    }
}

impl MetaFetch {
    async fn buffer(&self) -> crate::dma::DmaBuf {
        loop {
            match self.pool.try_get() {
                Some(b) => return b,
                None => yield_now().await,
            }
        }
    }

    /// Write the sealed blocks `blknos` of the commit in flight, at most
    /// [`FETCH_DEPTH`] at a time; the first error, after all have ended.
    pub(crate) async fn write_blocks(&self, local: &Local, blknos: &[u64]) -> Result<(), String> {
        let mut first_err = None;
        for chunk in blknos.chunks(FETCH_DEPTH as usize) {
            let mut writes = Vec::with_capacity(chunk.len());
            for &blkno in chunk {
                let mut buf = self.buffer().await;
                let copied = with_mounted(|fs| {
                    let cache = &fs.store_mut().store_mut().cache;
                    buf.as_mut_slice()[..BLOCK_LG_SIZE].copy_from_slice(cache.writing_block(blkno));
                });
                if copied.is_none() {
                    return Err("the volume was unmounted during a commit".into());
                }
                let req = IoRequest::write(blkno << BLOCK_LG_SHIFT, BLOCK_LG_SIZE as u32, buf, 0);
                writes.push((blkno, local.io(self.queue, req)));
            }
            for (blkno, io) in writes {
                if let Err(e) = io.await.result {
                    first_err.get_or_insert(format!("{}: block {blkno}: {e}", self.device));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Flush the device's write cache.
    pub(crate) async fn flush(&self, local: &Local) -> Result<(), String> {
        let c = local.io(self.queue, IoRequest::flush(0)).await;
        c.result.map_err(|e| format!("{}: flush: {e}", self.device))
    }

    /// Write the super block (`BLOCK_SM_SIZE` bytes at its offset).
    pub(crate) async fn write_super(&self, local: &Local, block: &[u8]) -> Result<(), String> {
        let mut buf = self.buffer().await;
        buf.as_mut_slice()[..block.len()].copy_from_slice(block);
        let req = IoRequest::write(SUPER_OFFSET_BYTES, block.len() as u32, buf, 0);
        let c = local.io(self.queue, req).await;
        c.result
            .map_err(|e| format!("{}: super block: {e}", self.device))
    }
}

/// Run `op` over the mounted filesystem (taken anew for each attempt,
/// never held across an await) until it needs no more blocks. `None`
/// when the engine has no mounted volume any more.
pub(crate) async fn run_attempts<T>(
    local: &Local,
    fetch: &MetaFetch,
    committer: &super::commit::Committer,
    mut op: impl FnMut(&mut Mounted) -> Result<T, FsError>,
) -> Option<Result<T, FsError>> {
    let mut waited = 0;
    let mut attempt = 0;
    loop {
        let defer = attempt < MAX_ATTEMPTS;
        if !defer {
            fetch.gave_up.set(fetch.gave_up.get() + 1);
        }
        let r = with_mounted(|fs| {
            if defer {
                fs.store_mut().begin_attempt();
            }
            fs.store_mut().set_waited_commit(waited);
            let r = op(fs);
            fs.store_mut().end_attempt();
            fs.store_mut().set_waited_commit(0);
            r
        })?;
        let need = match r {
            Err(FsError::NeedBlocks(need)) if defer => need,
            Err(FsError::WaitCommit(seq)) | Err(FsError::Throttled(seq)) => {
                if let Err(e) = committer.wait_durable(seq).await {
                    return Some(Err(e));
                }
                if matches!(r, Err(FsError::WaitCommit(_))) {
                    waited = seq;
                }
                continue;
            }
            r => {
                committer.note_request();
                return Some(r);
            }
        };
        attempt += 1;
        fetch.restarts.set(fetch.restarts.get() + 1);
        let blocks = fetch.read(local, &need).await;
        let stored = with_mounted(|fs| {
            let store = fs.store_mut().store_mut();
            for (r, got) in &blocks {
                match got {
                    Ok(data) => store.insert_fetched(r, data)?,
                    Err(e) => return Err(e.clone()),
                }
            }
            Ok(())
        })?;
        if let Err(e) = stored {
            return Some(Err(crate::txn::TxnError::Block(e).into()));
        }
    }
}

/// Give the other ready tasks a turn.
fn yield_now() -> impl Future<Output = ()> {
    struct Yield(bool);
    impl Future for Yield {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    Yield(false)
}
