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
//! - Read-ahead: the data layer asks for blocks it expects a sequential
//!   reader to want next ([`DataIo::prefetch`]); they are read in the
//!   background (completions are reaped by later calls) into a bounded
//!   cache that reads are served from. Any write to a block drops its
//!   cached copy (an in-flight one is discarded when it lands), so the
//!   cache never serves data older than the device's.

use std::collections::{BTreeMap, HashMap};

use crate::dev::{open_queue_with_pool, BlockDev, Completion, DevError, IoRequest, QueuePair};
use crate::dma::{DmaBuf, DmaPool};
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};

/// Largest request, in 4 KiB blocks.
const RUN_BLOCKS: usize = 64;
/// Requests in flight at once.
const DEPTH: u32 = 16;
/// Writes this large skip the buffer.
pub const DIRECT_MIN_BYTES: usize = 256 << 10;
/// The buffer's default bound.
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;
/// Read-ahead runs cached or in flight at most.
const RA_MAX_RUNS: usize = 64;
/// Read-ahead runs in flight at most (the rest of the queue is for reads
/// and writes someone waits for).
const RA_MAX_IN_FLIGHT: usize = DEPTH as usize / 2;
/// Tags of read-ahead requests.
const RA_TAG: u64 = 1 << 63;
/// Sequential readers tracked at once.
const MAX_STREAMS: usize = 256;

/// What a request maker (`DataIo::run_requests`) has next.
enum Step {
    Submit(IoRequest),
    /// No slot or buffer free: reap, then ask again.
    Wait,
    Done,
}

#[derive(Debug)]
enum RaState {
    InFlight,
    /// In flight, but a write hit its blocks: discard when it lands.
    Stale,
    /// The DMA buffer it was read into (copied from once, by the read).
    Ready(DmaBuf),
}

#[derive(Debug)]
struct RaRun {
    len: u64,
    state: RaState,
    /// Insertion order, for eviction.
    seq: u64,
}

/// Where a sequential reader of a file is: the next logical block it
/// should read and how far read-ahead has been asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    pub next: u64,
    pub ahead_until: u64,
}

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
    /// Read-ahead cache by first device block.
    ra: BTreeMap<u64, RaRun>,
    ra_seq: u64,
    /// Sequential readers by inode.
    streams: HashMap<u64, Stream>,
    /// Reads served from the read-ahead cache (blocks), for counters.
    pub ra_hits: u64,
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
        // A buffer per queue slot, plus one per read-ahead run: the cache
        // keeps the DMA buffers it read into rather than copying them out.
        let (qp, pool) = open_queue_with_pool(
            dev,
            RUN_BLOCKS * BLOCK_SM_SIZE,
            DEPTH as usize + RA_MAX_RUNS,
            DEPTH,
        )?;
        Ok(DataIo {
            qp,
            pool,
            total_blocks: dev.geometry().capacity_bytes >> BLOCK_SM_SHIFT,
            pending: BTreeMap::new(),
            limit_blocks: buffer_bytes / BLOCK_SM_SIZE,
            failed: None,
            ra: BTreeMap::new(),
            ra_seq: 0,
            streams: HashMap::new(),
            ra_hits: 0,
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
        self.ra_invalidate(blkno, nr);
        if data.len() >= DIRECT_MIN_BYTES || self.limit_blocks == 0 {
            // Buffered copies of these blocks are superseded.
            self.drop_pending(blkno, nr);
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

    /// Submit writes keeping the queue full; the first error wins (after
    /// every submitted write has completed).
    fn pipeline(&mut self, reqs: &mut dyn Iterator<Item = (u64, &[u8])>) -> Result<(), DevError> {
        self.run_requests(&mut |io: &mut DataIo| {
            let Some(mut b) = io.free_slot() else {
                return Step::Wait;
            };
            let Some((blk, chunk)) = reqs.next() else {
                return Step::Done;
            };
            b.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
            // Read-ahead of these blocks (taken while they were only
            // buffered, say) is older than what goes out now.
            io.ra_invalidate(blk, (chunk.len() / BLOCK_SM_SIZE) as u64);
            Step::Submit(IoRequest::write(
                blk << BLOCK_SM_SHIFT,
                chunk.len() as u32,
                b,
                0,
            ))
        })
    }

    /// Submit the requests `next` makes, as many at once as it can, and
    /// wait for all of them; the first error wins (after every submitted
    /// request has completed).
    fn run_requests(&mut self, next: &mut dyn FnMut(&mut DataIo) -> Step) -> Result<(), DevError> {
        let mut first_err: Option<DevError> = None;
        let mut mine = 0usize;
        let mut more = true;
        while more || mine > 0 {
            while more {
                match next(self) {
                    Step::Submit(req) => {
                        if let Err(rej) = self.qp.submit(req) {
                            first_err.get_or_insert(rej.error);
                            more = false;
                            break;
                        }
                        mine += 1;
                    }
                    Step::Wait => break,
                    Step::Done => more = false,
                }
            }
            for c in self.turn() {
                mine -= 1;
                if let Err(e) = c.result {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Forget buffered blocks in `[blkno, blkno + nr)`: superseded by a
    /// write that goes out directly, or discarded.
    fn drop_pending(&mut self, blkno: u64, nr: u64) {
        let stale: Vec<u64> = self
            .pending
            .range(blkno..blkno + nr)
            .map(|(&b, _)| b)
            .collect();
        for b in stale {
            self.pending.remove(&b);
        }
    }

    /// A DMA buffer and a queue slot for a request someone waits for, or
    /// None when every slot is busy (the caller reaps and retries).
    fn free_slot(&mut self) -> Option<DmaBuf> {
        if self.qp.is_full() {
            return None;
        }
        self.pool.try_get()
    }

    /// Kick the queue and reap: read-ahead completions go to the cache,
    /// the others are returned.
    fn turn(&mut self) -> Vec<Completion> {
        if let Err(e) = self.qp.kick() {
            // Submitted requests may still complete: keep reaping them.
            tracing::warn!("data device kick failed: {e}");
        }
        let mut got = Vec::new();
        self.qp.reap(&mut |c| got.push(c));
        let mut mine = Vec::new();
        for c in got {
            if c.tag & RA_TAG != 0 {
                self.ra_complete(c);
            } else {
                mine.push(c);
            }
        }
        mine
    }

    fn ra_complete(&mut self, c: Completion) {
        let blk = c.offset_bytes >> BLOCK_SM_SHIFT;
        let Some(run) = self.ra.get_mut(&blk) else {
            return;
        };
        match (&run.state, c.result) {
            (RaState::InFlight, Ok(())) => {
                let buf = c.buf.expect("a read returns its buffer");
                run.state = RaState::Ready(buf);
            }
            (_, Err(e)) => {
                tracing::debug!("read-ahead of block {blk} failed: {e}");
                self.ra.remove(&blk);
            }
            (_, Ok(())) => {
                self.ra.remove(&blk);
            }
        }
    }

    /// Wait for every request in flight (read-ahead included).
    fn drain(&mut self) {
        while self.qp.in_flight() > 0 {
            let stray = self.turn();
            debug_assert!(stray.is_empty(), "a waited-for request outlived its caller");
        }
    }

    /// Drop cached read-ahead of blocks `[blkno, blkno + nr)`.
    fn ra_invalidate(&mut self, blkno: u64, nr: u64) {
        if self.ra.is_empty() {
            return;
        }
        let lo = blkno.saturating_sub(RUN_BLOCKS as u64);
        let hit: Vec<u64> = self
            .ra
            .range(lo..blkno + nr)
            .filter(|(&b, r)| b + r.len > blkno)
            .map(|(&b, _)| b)
            .collect();
        for b in hit {
            let run = self.ra.get_mut(&b).expect("listed");
            match run.state {
                RaState::Ready(_) => {
                    self.ra.remove(&b);
                }
                _ => run.state = RaState::Stale,
            }
        }
    }

    /// Read blocks `[blkno, blkno + nr)` in the background, in runs, into
    /// the read-ahead cache (runs already cached are skipped). Stops when
    /// the cache or its share of the queue is full; returns how many
    /// blocks from `blkno` are cached or on their way.
    pub fn prefetch(&mut self, blkno: u64, nr: u64) -> u64 {
        let mut at = blkno;
        let end = blkno + nr;
        while at < end {
            let len = (end - at).min(RUN_BLOCKS as u64);
            let in_flight = self
                .ra
                .values()
                .filter(|r| !matches!(r.state, RaState::Ready(_)))
                .count();
            if in_flight >= RA_MAX_IN_FLIGHT || self.qp.is_full() {
                break;
            }
            if self.ra.len() >= RA_MAX_RUNS && !self.ra_evict() {
                break;
            }
            let covered = self
                .ra
                .range(at.saturating_sub(RUN_BLOCKS as u64)..at + len)
                .any(|(&b, r)| b + r.len > at);
            if !covered {
                let Some(buf) = self.pool.try_get() else {
                    break;
                };
                let req = IoRequest::read(
                    at << BLOCK_SM_SHIFT,
                    (len as usize * BLOCK_SM_SIZE) as u32,
                    buf,
                    RA_TAG | at,
                );
                if self.qp.submit(req).is_err() {
                    break;
                }
                self.ra_seq += 1;
                self.ra.insert(
                    at,
                    RaRun {
                        len,
                        state: RaState::InFlight,
                        seq: self.ra_seq,
                    },
                );
            }
            at += len;
        }
        if let Err(e) = self.qp.kick() {
            tracing::warn!("data device kick failed: {e}");
        }
        at.min(end) - blkno
    }

    /// Drop the oldest ready read-ahead run; false if none is ready.
    fn ra_evict(&mut self) -> bool {
        let oldest = self
            .ra
            .iter()
            .filter(|(_, r)| matches!(r.state, RaState::Ready(_)))
            .min_by_key(|(_, r)| r.seq)
            .map(|(&b, _)| b);
        match oldest {
            Some(b) => {
                self.ra.remove(&b);
                true
            }
            None => false,
        }
    }

    /// Note a read of logical blocks `[first, last]` of `ino`; returns the
    /// reader's stream when it reads sequentially (the caller then
    /// prefetches from `ahead_until` and records how far it asked).
    pub fn note_read(&mut self, ino: u64, first: u64, last: u64) -> Option<Stream> {
        let prev = self.streams.get(&ino).copied();
        let sequential = match prev {
            Some(s) => s.next == first,
            None => first == 0,
        };
        if self.streams.len() >= MAX_STREAMS && prev.is_none() {
            self.streams.clear();
        }
        let s = self.streams.entry(ino).or_default();
        s.next = last + 1;
        if !sequential {
            s.ahead_until = last + 1;
            return None;
        }
        s.ahead_until = s.ahead_until.max(last + 1);
        Some(*s)
    }

    /// Record that read-ahead of `ino` was asked up to `until`.
    pub fn note_ahead(&mut self, ino: u64, until: u64) {
        if let Some(s) = self.streams.get_mut(&ino) {
            s.ahead_until = s.ahead_until.max(until);
        }
    }

    /// Serve `[blkno, blkno + nr)` from the read-ahead cache if it holds
    /// all of it (waiting for runs in flight); false if it doesn't.
    fn read_cached(&mut self, blkno: u64, out: &mut [u8]) -> bool {
        let nr = (out.len() / BLOCK_SM_SIZE) as u64;
        loop {
            self.turn_if_busy();
            let runs: Vec<(u64, u64, bool)> = self
                .ra
                .range(blkno.saturating_sub(RUN_BLOCKS as u64)..blkno + nr)
                .filter(|(&b, r)| b + r.len > blkno)
                .map(|(&b, r)| (b, r.len, matches!(r.state, RaState::Ready(_))))
                .collect();
            // Covered without gaps?
            let mut at = blkno;
            for &(b, len, _) in &runs {
                if b > at {
                    break;
                }
                at = at.max(b + len);
            }
            if at < blkno + nr {
                return false;
            }
            if runs.iter().any(|&(_, _, ready)| !ready) {
                // Wait for the runs in flight, then look again.
                let stray = self.turn();
                debug_assert!(stray.is_empty());
                continue;
            }
            for (b, len, _) in runs {
                let Some(RaRun {
                    state: RaState::Ready(data),
                    ..
                }) = self.ra.get(&b)
                else {
                    unreachable!("checked ready");
                };
                let s = b.max(blkno);
                let e = (b + len).min(blkno + nr);
                let from = ((s - b) as usize) * BLOCK_SM_SIZE;
                let to = ((e - b) as usize) * BLOCK_SM_SIZE;
                let at = ((s - blkno) as usize) * BLOCK_SM_SIZE;
                out[at..at + (to - from)].copy_from_slice(&data.as_slice()[from..to]);
                if e == b + len {
                    // Consumed to its end: a sequential reader is past it.
                    self.ra.remove(&b);
                }
            }
            self.ra_hits += nr;
            return true;
        }
    }

    /// Reap whatever has completed without waiting.
    fn turn_if_busy(&mut self) {
        if self.qp.in_flight() > 0 {
            let stray = self.turn();
            debug_assert!(stray.is_empty());
        }
    }

    /// Read whole blocks starting at device block `blkno` into `out`;
    /// buffered blocks are seen.
    pub fn read(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        assert_eq!(out.len() % BLOCK_SM_SIZE, 0);
        let nr = (out.len() / BLOCK_SM_SIZE) as u64;
        let buffered = self.pending.range(blkno..blkno + nr).count() as u64;
        if buffered < nr && !self.read_cached(blkno, out) {
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
        let mut mine = 0usize;
        let mut first_err: Option<DevError> = None;
        while next < nr_chunks || mine > 0 {
            while next < nr_chunks && first_err.is_none() {
                let Some(b) = self.free_slot() else { break };
                let len = run.min(out.len() - next * run);
                let at = (blkno + (next * RUN_BLOCKS) as u64) << BLOCK_SM_SHIFT;
                if let Err(rej) = self
                    .qp
                    .submit(IoRequest::read(at, len as u32, b, next as u64))
                {
                    first_err = Some(rej.error);
                    break;
                }
                next += 1;
                mine += 1;
            }
            if first_err.is_some() {
                next = nr_chunks;
            }
            for c in self.turn() {
                mine -= 1;
                match c.result {
                    Ok(()) => {
                        let from = c.tag as usize * run;
                        let len = run.min(out.len() - from);
                        let buf = c.buf.as_ref().expect("a read returns its buffer");
                        out[from..from + len].copy_from_slice(&buf.as_slice()[..len]);
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the device takes discards.
    pub fn supports_discard(&self) -> bool {
        self.qp.geometry().supports_discard()
    }

    /// Tell the device the blocks of `extents` hold nothing (they were
    /// freed by a commit that is durable): thin-provisioned and flash
    /// storage can reclaim them. Waits for every discard; does nothing on
    /// a device without discard.
    pub fn discard(&mut self, extents: &[crate::format::alloc::Extent]) -> Result<(), DevError> {
        if !self.supports_discard() {
            return Ok(());
        }
        // Requests of at most 1 GiB (the length field is 32-bit).
        const MAX_BLOCKS: u64 = (1 << 30) >> BLOCK_SM_SHIFT;
        let mut reqs = extents.iter().flat_map(|e| {
            (0..e.len.div_ceil(MAX_BLOCKS)).map(move |i| {
                let start = e.start + i * MAX_BLOCKS;
                (start, MAX_BLOCKS.min(e.start + e.len - start))
            })
        });
        self.run_requests(&mut |io: &mut DataIo| {
            if io.qp.is_full() {
                return Step::Wait;
            }
            let Some((blk, nr)) = reqs.next() else {
                return Step::Done;
            };
            io.ra_invalidate(blk, nr);
            io.drop_pending(blk, nr);
            Step::Submit(IoRequest::discard(
                blk << BLOCK_SM_SHIFT,
                (nr << BLOCK_SM_SHIFT) as u32,
                0,
            ))
        })
    }

    /// Write back what is buffered and make every completed write durable.
    pub fn flush(&mut self) -> Result<(), DevError> {
        self.write_back()?;
        self.drain();
        self.qp.run_one(IoRequest::flush(0)).result
    }
}
