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
use std::task::Poll;

use crate::block::BlockError;
use crate::dev::{open_queue_with_pool, BlockDev, Completion, DevError, IoRequest};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_LG_SHIFT, BLOCK_LG_SIZE};
use crate::format::super_block::SUPER_OFFSET_BYTES;
use crate::format::BlockRef;
use crate::fs::FsError;
use crate::item::ItemError;
use crate::reactor::{Event, IoFuture, Local, QueueId};

use super::{with_mounted, Mounted};

/// Requests in flight at once on the queue (request tasks' reads and the
/// committer's writes), and the 64 KiB DMA buffers they share.
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
    /// A request's completion was collected (its buffer came back).
    returned: Event,
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
            returned: Event::new(),
        })
    }

    /// Read `refs` and give each block's bytes, or the device's error for
    /// it. All are in flight at once, as far as the queue's DMA buffers
    /// go (see [`MetaFetch::batch`]).
    pub(crate) async fn read(
        &self,
        local: &Local,
        refs: &[BlockRef],
    ) -> Vec<(BlockRef, Result<Vec<u8>, BlockError>)> {
        let done = self
            .batch(
                local,
                refs.iter().copied(),
                |r, buf| {
                    IoRequest::read(
                        r.blkno.get() << BLOCK_LG_SHIFT,
                        BLOCK_LG_SIZE as u32,
                        buf,
                        0,
                    )
                },
                |r, c| {
                    c.result
                        .map_err(|e| BlockError::Io {
                            device: self.device.clone(),
                            blkno: r.blkno.get(),
                            msg: e.to_string(),
                        })
                        .map(|()| {
                            let buf = c.buf.expect("a read returns its buffer");
                            buf.as_slice()[..BLOCK_LG_SIZE].to_vec()
                        })
                },
            )
            .await;
        self.blocks.set(self.blocks.get() + refs.len() as u64);
        done
    }

    /// [`batch`] on this queue and its pool.
    async fn batch<K: Copy, R>(
        &self,
        local: &Local,
        items: impl IntoIterator<Item = K>,
        request: impl FnMut(K, crate::dma::DmaBuf) -> IoRequest,
        finish: impl FnMut(K, Completion) -> R,
    ) -> Vec<(K, R)> {
        batch(
            local,
            self.queue,
            (&self.pool, &self.returned),
            items,
            request,
            finish,
        )
        .await
    }
}

/// Run one request per item on `queue`, each with a DMA buffer of `pool`,
/// all in flight together. A task never waits for a buffer while it
/// holds buffers in requests not yet sent: when the pool is dry it first
/// finishes its own requests (so two tasks that each hold part of the
/// pool can't wait for each other forever), and only with none of its
/// own in flight does it wait for other tasks' to come back. `finish`
/// turns each completion into the caller's result as it is collected, so
/// its buffer goes back to the pool at once.
pub(crate) async fn batch<K: Copy, R>(
    local: &Local,
    queue: QueueId,
    (pool, returned): (&DmaPool, &Event),
    items: impl IntoIterator<Item = K>,
    mut request: impl FnMut(K, crate::dma::DmaBuf) -> IoRequest,
    mut finish: impl FnMut(K, Completion) -> R,
) -> Vec<(K, R)> {
    let mut done = Vec::new();
    let mut flying: Vec<(K, IoFuture)> = Vec::new();
    let mut collect = |ended: Vec<(K, Completion)>, done: &mut Vec<(K, R)>| {
        done.extend(ended.into_iter().map(|(k, c)| (k, finish(k, c))));
        // Their buffers are back in the pool.
        returned.notify();
    };
    for k in items {
        let buf = loop {
            if let Some(b) = pool.try_get() {
                break b;
            }
            if flying.is_empty() {
                // Every buffer is in other tasks' requests.
                returned.wait().await;
            } else {
                let ended = join_all(std::mem::take(&mut flying)).await;
                collect(ended, &mut done);
            }
        };
        flying.push((k, local.io(queue, request(k, buf))));
    }
    let ended = join_all(flying).await;
    collect(ended, &mut done);
    done
}

/// Wait for every request of `ios`, polling them together so all are
/// submitted at once.
pub(crate) async fn join_all<K>(ios: Vec<(K, IoFuture)>) -> Vec<(K, Completion)> {
    let mut slots: Vec<(K, Option<IoFuture>, Option<Completion>)> =
        ios.into_iter().map(|(k, f)| (k, Some(f), None)).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (_, fut, out) in slots.iter_mut() {
            if let Some(f) = fut {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(c) => {
                        *out = Some(c);
                        *fut = None;
                    }
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    slots
        .into_iter()
        .map(|(k, _, c)| (k, c.expect("every request completed")))
        .collect()
}

impl MetaFetch {
    async fn buffer(&self) -> crate::dma::DmaBuf {
        loop {
            match self.pool.try_get() {
                Some(b) => return b,
                None => self.returned.wait().await,
            }
        }
    }

    /// Write the sealed blocks `blknos` of the commit in flight, all in
    /// flight together as far as the buffers go; the first error, after
    /// all have ended.
    pub(crate) async fn write_blocks(&self, local: &Local, blknos: &[u64]) -> Result<(), String> {
        let mut unmounted = false;
        let done = self
            .batch(
                local,
                blknos.iter().copied(),
                |blkno, mut buf| {
                    let copied = with_mounted(|fs| {
                        let cache = &fs.store_mut().store_mut().cache;
                        buf.as_mut_slice()[..BLOCK_LG_SIZE]
                            .copy_from_slice(cache.writing_block(blkno));
                    });
                    unmounted |= copied.is_none();
                    IoRequest::write(blkno << BLOCK_LG_SHIFT, BLOCK_LG_SIZE as u32, buf, 0)
                },
                |_, c| c.result,
            )
            .await;
        if unmounted {
            return Err("the volume was unmounted during a commit".into());
        }
        let first_err = done
            .into_iter()
            .find_map(|(blkno, r)| r.err().map(|e| (blkno, e)));
        match first_err {
            Some((blkno, e)) => Err(format!("{}: block {blkno}: {e}", self.device)),
            None => Ok(()),
        }
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
        let Completion { result, buf, .. } = local.io(self.queue, req).await;
        drop(buf);
        self.returned.notify();
        result.map_err(|e| format!("{}: super block: {e}", self.device))
    }
}

/// Run `op` over the mounted filesystem (taken anew for each attempt,
/// never held across an await) until it needs no more blocks. `None`
/// when the engine has no mounted volume any more.
pub(crate) async fn run_attempts<T>(
    local: &Local,
    io: &super::Core,
    mut op: impl FnMut(&mut Mounted) -> Result<T, FsError>,
) -> Option<Result<T, FsError>> {
    let (fetch, committer, data) = (&*io.fetch, &*io.committer, &io.data);
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
            debug_assert!(
                r.is_err() || !fs.store_mut().data_io().is_some_and(|d| d.missed()),
                "an operation used file data it missed"
            );
            r
        })?;
        let need = match r {
            Err(FsError::NeedBlocks(need)) if defer => need,
            Err(FsError::NeedData) if defer => {
                attempt += 1;
                fetch.restarts.set(fetch.restarts.get() + 1);
                let runs = with_mounted(|fs| {
                    fs.store_mut()
                        .data_io()
                        .map(|d| d.take_need())
                        .unwrap_or_default()
                })?;
                if let Err(e) = data.fetch(local, &runs, false).await {
                    return Some(Err(FsError::Io(e)));
                }
                continue;
            }
            Err(FsError::NeedLocks) if defer => {
                attempt += 1;
                fetch.restarts.set(fetch.restarts.get() + 1);
                let (set, table) = (crate::item::locks::take_need(), crate::item::locks::table());
                if let Some(table) = table {
                    match table.lock_set(set).await {
                        // The node keeps the grants; this task's use of
                        // them ends with the guard (item::locks).
                        Ok(guard) => drop(guard),
                        Err(e) => return Some(Err(FsError::Io(format!("taking locks: {e}")))),
                    }
                }
                continue;
            }
            Err(FsError::WaitWriteBack) if defer => {
                data.wait_room().await;
                continue;
            }
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
                data.after_op(local);
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
            return Some(Err(ItemError::from(crate::txn::TxnError::Block(e)).into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::MemDev;
    use crate::reactor::{CorePin, Reactor, ReactorConfig};

    /// Tasks reading more blocks than the queue has buffers, several at
    /// once, all finish: none waits for buffers while holding its own in
    /// requests not yet sent, and each completion gives its buffer back
    /// as soon as it is collected.
    #[test]
    fn reads_larger_than_the_pool_from_several_tasks_all_finish() {
        let dev = MemDev::new(64 << 20);
        for b in 0..300u64 {
            dev.write_at(b << BLOCK_LG_SHIFT, &[b as u8; 16]);
        }
        let reactor = Reactor::start(
            ReactorConfig {
                pin: CorePin::None,
                ..ReactorConfig::default()
            },
            |_| Ok(()),
        )
        .unwrap();
        let firsts = reactor
            .remote()
            .call(move |local: &Local| {
                let local = local.clone();
                async move {
                    let fetch = std::rc::Rc::new(MetaFetch::open(&local, &dev).unwrap());
                    let tasks: Vec<_> = (0..3u64)
                        .map(|t| {
                            let (local2, fetch) = (local.clone(), fetch.clone());
                            local.spawn(async move {
                                let refs: Vec<BlockRef> =
                                    (0..100u64).map(|i| BlockRef::new(t * 100 + i, 1)).collect();
                                fetch.read(&local2, &refs).await
                            })
                        })
                        .collect();
                    let mut firsts = Vec::new();
                    for t in tasks {
                        for (r, got) in t.await {
                            firsts.push((r.blkno.get(), got.unwrap()[0]));
                        }
                    }
                    firsts
                }
            })
            .unwrap();
        reactor.shutdown();
        assert_eq!(firsts.len(), 300);
        assert!(firsts.iter().all(|&(b, first)| first == b as u8));
    }
}
