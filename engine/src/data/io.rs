//! Block I/O on the data device: 4 KiB file blocks, with a bounded
//! write-back buffer for small writes.
//!
//! - Writes of at least [`DIRECT_MIN_BYTES`] go to the device at once, in
//!   runs of up to 256 KiB with several in flight.
//! - Smaller writes are kept in the write-back buffer (whole blocks, by
//!   device block number) and written later in sorted, coalesced runs:
//!   when the buffer passes its limit, and always before the metadata
//!   commit that makes their extents durable ([`DataIo::write_back`] is
//!   called by the volume's commit before it flushes the device). Many
//!   small files created in a row thus cost a few large writes instead of
//!   one device round trip each.
//! - Reads see buffered blocks (read your writes).

use std::collections::BTreeMap;

use crate::dev::{open_queue_with_pool, BlockDev, DevError, IoRequest, QueuePair};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};

/// Largest request, in 4 KiB blocks.
const RUN_BLOCKS: usize = 64;
/// Requests in flight at once.
const DEPTH: u32 = 16;
/// Writes this large skip the buffer.
pub const DIRECT_MIN_BYTES: usize = 256 << 10;
/// The buffer's default bound.
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;

pub struct DataIo {
    qp: QueuePair,
    pool: DmaPool,
    total_blocks: u64,
    /// Blocks written but not yet on the device.
    pending: BTreeMap<u64, Box<[u8]>>,
    limit_blocks: usize,
    /// A write-back that failed: blocks of writes already acknowledged
    /// never reached the device, so no later commit may make their extents
    /// durable. Sticky; every later write-back reports it.
    failed: Option<DevError>,
}

impl std::fmt::Debug for DataIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataIo")
            .field("device", &self.qp.device_name())
            .field("pending_blocks", &self.pending.len())
            .finish()
    }
}

impl DataIo {
    pub fn open(dev: &dyn BlockDev) -> Result<DataIo, DevError> {
        Self::with_buffer(dev, DEFAULT_BUFFER_BYTES)
    }

    /// A data device whose write-back buffer holds up to `buffer_bytes`
    /// (0: every write goes to the device at once).
    pub fn with_buffer(dev: &dyn BlockDev, buffer_bytes: usize) -> Result<DataIo, DevError> {
        let (qp, pool) =
            open_queue_with_pool(dev, RUN_BLOCKS * BLOCK_SM_SIZE, DEPTH as usize, DEPTH)?;
        Ok(DataIo {
            qp,
            pool,
            total_blocks: dev.geometry().capacity_bytes >> BLOCK_SM_SHIFT,
            pending: BTreeMap::new(),
            limit_blocks: buffer_bytes / BLOCK_SM_SIZE,
            failed: None,
        })
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Blocks in the write-back buffer.
    pub fn pending_blocks(&self) -> usize {
        self.pending.len()
    }

    /// Write whole blocks starting at device block `blkno`.
    pub fn write(&mut self, blkno: u64, data: &[u8]) -> Result<(), DevError> {
        assert_eq!(data.len() % BLOCK_SM_SIZE, 0);
        let nr = (data.len() / BLOCK_SM_SIZE) as u64;
        if data.len() >= DIRECT_MIN_BYTES || self.limit_blocks == 0 {
            // Buffered copies of these blocks are superseded.
            let stale: Vec<u64> = self
                .pending
                .range(blkno..blkno + nr)
                .map(|(&b, _)| b)
                .collect();
            for b in stale {
                self.pending.remove(&b);
            }
            return self.write_runs(blkno, data);
        }
        for (i, blk) in data.chunks(BLOCK_SM_SIZE).enumerate() {
            self.pending.insert(blkno + i as u64, blk.into());
        }
        if self.pending.len() > self.limit_blocks {
            self.write_back()?;
        }
        Ok(())
    }

    /// Write the buffered blocks to the device (not flushed: the caller
    /// flushes when it needs them durable).
    pub fn write_back(&mut self) -> Result<(), DevError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        // Coalesce contiguous blocks into runs.
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (b, data) in pending {
            match runs.last_mut() {
                Some((start, buf))
                    if *start + (buf.len() / BLOCK_SM_SIZE) as u64 == b
                        && buf.len() < RUN_BLOCKS * BLOCK_SM_SIZE =>
                {
                    buf.extend_from_slice(&data)
                }
                _ => runs.push((b, data.into_vec())),
            }
        }
        let mut reqs = runs.iter().map(|(b, d)| (*b, d.as_slice()));
        let r = self.pipeline(&mut reqs);
        if let Err(e) = &r {
            tracing::error!("writing back buffered file data failed: {e}");
            self.failed = Some(e.clone());
        }
        r
    }

    /// Write `data` at `blkno` in runs, several in flight.
    fn write_runs(&mut self, blkno: u64, data: &[u8]) -> Result<(), DevError> {
        let mut reqs = data
            .chunks(RUN_BLOCKS * BLOCK_SM_SIZE)
            .enumerate()
            .map(|(i, c)| (blkno + (i * RUN_BLOCKS) as u64, c));
        self.pipeline(&mut reqs)
    }

    /// Submit writes keeping up to DEPTH in flight; the first error wins
    /// (after every submitted write has completed).
    fn pipeline(
        &mut self,
        reqs: &mut dyn Iterator<Item = (u64, &[u8])>,
    ) -> Result<(), DevError> {
        let mut first_err: Option<DevError> = None;
        let mut in_flight = 0usize;
        let mut more = true;
        while more || in_flight > 0 {
            while more && in_flight < DEPTH as usize {
                let Some((blk, chunk)) = reqs.next() else {
                    more = false;
                    break;
                };
                let mut b = self.pool.try_get().expect("a buffer per queue slot");
                b.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
                let req = IoRequest::write(blk << BLOCK_SM_SHIFT, chunk.len() as u32, b, 0);
                if let Err(rej) = self.qp.submit(req) {
                    first_err.get_or_insert(rej.error);
                    more = false;
                    break;
                }
                in_flight += 1;
            }
            if let Err(e) = self.qp.kick() {
                // Submitted writes may still complete: keep reaping them.
                tracing::warn!("data device kick failed: {e}");
            }
            in_flight -= self.qp.reap(&mut |c| {
                if let Err(e) = c.result {
                    first_err.get_or_insert(e);
                }
            });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Read whole blocks starting at device block `blkno` into `out`;
    /// buffered blocks are seen.
    pub fn read(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        assert_eq!(out.len() % BLOCK_SM_SIZE, 0);
        let nr = (out.len() / BLOCK_SM_SIZE) as u64;
        let buffered = self.pending.range(blkno..blkno + nr).count() as u64;
        if buffered < nr {
            self.read_runs(blkno, out)?;
        }
        for (&b, data) in self.pending.range(blkno..blkno + nr) {
            let at = ((b - blkno) as usize) * BLOCK_SM_SIZE;
            out[at..at + BLOCK_SM_SIZE].copy_from_slice(data);
        }
        Ok(())
    }

    fn read_runs(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        let run = RUN_BLOCKS * BLOCK_SM_SIZE;
        let nr_chunks = out.len().div_ceil(run);
        let mut next = 0usize;
        let mut in_flight = 0usize;
        let mut first_err: Option<DevError> = None;
        let qp = &mut self.qp;
        let pool = &self.pool;
        while next < nr_chunks || in_flight > 0 {
            while next < nr_chunks && in_flight < DEPTH as usize && first_err.is_none() {
                let len = run.min(out.len() - next * run);
                let b = pool.try_get().expect("a buffer per queue slot");
                let at = (blkno + (next * RUN_BLOCKS) as u64) << BLOCK_SM_SHIFT;
                if let Err(rej) = qp.submit(IoRequest::read(at, len as u32, b, next as u64)) {
                    first_err = Some(rej.error);
                    next = nr_chunks;
                    break;
                }
                next += 1;
                in_flight += 1;
            }
            if first_err.is_some() && next < nr_chunks {
                next = nr_chunks;
            }
            if let Err(e) = qp.kick() {
                tracing::warn!("data device kick failed: {e}");
            }
            in_flight -= qp.reap(&mut |c| match c.result {
                Ok(()) => {
                    let i = c.tag as usize;
                    let from = i * run;
                    let len = run.min(out.len() - from);
                    let buf = c.buf.as_ref().expect("a read returns its buffer");
                    out[from..from + len].copy_from_slice(&buf.as_slice()[..len]);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Write back what is buffered and make every completed write durable.
    pub fn flush(&mut self) -> Result<(), DevError> {
        self.write_back()?;
        self.qp.run_one(IoRequest::flush(0)).result
    }
}
