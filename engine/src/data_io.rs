//! engine::data_io — file data blocks in memory and their I/O on the
//! data device: 4 KiB blocks by device block number. The mount's volume
//! owns one ([`crate::txn::Volume::data_io`]); the file data layer
//! (`data`) and the engine's tasks use it. It names only `dev`, `dma` and
//! `format`.
//!
//! - Written blocks are kept dirty in memory and written back later in
//!   sorted, coalesced runs, always before the metadata commit that makes
//!   their extents durable. Reads see them (read your writes).
//! - Clean blocks (read, read ahead, or written back) are kept in a
//!   bounded LRU cache that reads are served from.
//! - Reads of blocks a sequential reader is expected to want next are
//!   asked for ahead ([`DataIo::prefetch`]).
//!
//! Who does the device I/O depends on the mode:
//!
//! - **Inline** (the default; tools and tests): this type does it on its
//!   own queue pair: a read that misses reads and waits, a write-back
//!   writes and waits, read-ahead reads are reaped by later calls.
//! - **Reactor** ([`DataIo::set_reactor_io`]; the mounted engine): this
//!   type does no I/O of its own. A read that misses while the operation
//!   may still be run again ([`DataIo::set_deferring`]) is recorded
//!   ([`DataIo::take_need`]) and the operation ends with a data miss; the
//!   engine's task reads the blocks through the reactor's queue on the
//!   data device ([`DataIo::start_fetch`], [`DataIo::end_fetch`]) and
//!   runs the operation again. Write-back and read-ahead are reactor
//!   tasks too ([`DataIo::next_write_back`], [`DataIo::end_write_back`],
//!   [`DataIo::take_read_ahead`]). Only a miss after the operation has
//!   changed something is read inline, counted in
//!   [`DataStats::inline_reads`].
//!
//! Coherence: a block has at most one write in flight (a block written
//! again while its write-back is in flight is written again after it
//! lands). A read in flight over a block that is written meanwhile is
//! marked stale and its data is not cached. Every change gets a
//! generation number; a commit waits until every change made before its
//! switch is on the device ([`DataIo::written_through`]).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::dev::{open_queue_with_pool, BlockDev, Completion, DevError, IoRequest, QueuePair};
use crate::dma::DmaPool;
use crate::format::block::{BLOCK_SM_SHIFT, BLOCK_SM_SIZE};

/// Largest request, in 4 KiB blocks.
pub const RUN_BLOCKS: usize = 64;
/// Requests in flight at once on the inline queue.
const DEPTH: u32 = 16;
/// The dirty buffer's default bound.
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;
/// The clean cache's default size.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Read-ahead blocks in flight at most (the rest of the queue is for
/// reads and writes someone waits for).
const RA_MAX_IN_FLIGHT_BLOCKS: u64 = 8 * RUN_BLOCKS as u64;
/// Read-ahead runs asked for and not yet started, at most.
const RA_MAX_WANTED: usize = 64;
/// Tags of read-ahead requests on the inline queue.
const RA_TAG: u64 = 1 << 63;
/// Sequential readers tracked at once.
const MAX_STREAMS: usize = 256;

/// A written block not yet known to be on the device.
#[derive(Debug)]
struct Dirty {
    data: Box<[u8]>,
    /// Generation of the latest change to `data`.
    gen: u64,
    /// Generation of the oldest change not yet on the device (nor in a
    /// write in flight).
    oldest: u64,
    /// The generation of the contents a write in flight carries.
    flight: Option<u64>,
    /// The first change made while that write was in flight.
    after_flight: Option<u64>,
}

/// A read in flight into the clean cache.
#[derive(Debug)]
struct Fetching {
    len: u64,
    /// A write hit its blocks: its data is older than the cache's.
    stale: bool,
    read_ahead: bool,
}

/// Where a sequential reader of a file is: the next logical block it
/// should read and how far read-ahead has been asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stream {
    pub next: u64,
    pub ahead_until: u64,
    /// The first block of the last read (a read run again is not a seek).
    pub first: u64,
}

/// What the data cache has done, in 4 KiB blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Blocks read from the clean cache.
    pub hits: u64,
    /// Of those, blocks that read-ahead had brought in.
    pub ra_hits: u64,
    /// Blocks an operation missed and deferred (read by the engine's task).
    pub deferred: u64,
    /// Blocks read through the reactor (misses and read-ahead).
    pub fetched: u64,
    /// Blocks read inline: by tools, or in reactor mode by an operation
    /// past its first change.
    pub inline_reads: u64,
    /// Blocks written back.
    pub written_back: u64,
    /// Blocks of extents freed by commits written on the reactor, held
    /// back from write-back until those commits were durable.
    pub quarantined: u64,
}

pub struct DataIo {
    qp: QueuePair,
    pool: DmaPool,
    total_blocks: u64,
    dirty: BTreeMap<u64, Dirty>,
    /// Dirty blocks with no write in flight.
    idle_dirty: usize,
    /// Where the last write-back run ended (the next one is sought from
    /// there).
    wb_cursor: u64,
    limit_blocks: usize,
    /// The last change's generation.
    gen: u64,
    /// A write-back that failed: blocks of writes already acknowledged
    /// never reached the device, so no later commit may make their extents
    /// durable. Sticky.
    failed: Option<DevError>,
    clean: LruCache<u64, CleanBlock>,
    fetching: BTreeMap<u64, Fetching>,
    ra_in_flight: u64,
    streams: HashMap<u64, Stream>,
    reactor_io: bool,
    deferring: bool,
    need: Vec<(u64, u64)>,
    ra_wanted: Vec<(u64, u64)>,
    /// Extents freed by a commit in flight, by first block: (length, the
    /// commit's seq). Until that commit is durable they may already be
    /// allocated again, but nothing may be written to them.
    quarantine: BTreeMap<u64, (u64, u64)>,
    stats: DataStats,
    /// Reads served from the read-ahead cache (blocks), for counters.
    pub ra_hits: u64,
}

#[derive(Debug)]
struct CleanBlock {
    data: Box<[u8]>,
    /// Brought in by read-ahead and not read since.
    ahead: bool,
}

impl std::fmt::Debug for DataIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataIo")
            .field("device", &self.qp.device_name())
            .field("dirty_blocks", &self.dirty.len())
            .field("clean_blocks", &self.clean.len())
            .field("reactor_io", &self.reactor_io)
            .finish()
    }
}

/// Device blocks a discard request covers at most (1 GiB: the request's
/// length field is 32-bit bytes).
pub const DISCARD_MAX_BLOCKS: u64 = (1 << 30) >> BLOCK_SM_SHIFT;

/// `runs` (first block, length) cut into pieces of at most `max` blocks.
pub fn split_runs(
    runs: impl IntoIterator<Item = (u64, u64)>,
    max: u64,
) -> impl Iterator<Item = (u64, u64)> {
    runs.into_iter().flat_map(move |(b, n)| {
        (0..n.div_ceil(max)).map(move |i| {
            let s = b + i * max;
            (s, (b + n - s).min(max))
        })
    })
}

/// Merge sorted single blocks into runs of at most [`RUN_BLOCKS`].
fn push_run(runs: &mut Vec<(u64, u64)>, blk: u64, nr: u64) {
    if let Some((s, n)) = runs.last_mut() {
        if *s + *n == blk && *n + nr <= RUN_BLOCKS as u64 {
            *n += nr;
            return;
        }
    }
    runs.push((blk, nr));
}

impl DataIo {
    pub fn open(dev: &dyn BlockDev) -> Result<DataIo, DevError> {
        Self::with_buffer(dev, DEFAULT_BUFFER_BYTES)
    }

    /// A data device whose dirty buffer holds up to `buffer_bytes` before
    /// it is written back (0: inline, every write goes out at once).
    pub fn with_buffer(dev: &dyn BlockDev, buffer_bytes: usize) -> Result<DataIo, DevError> {
        let (qp, pool) =
            open_queue_with_pool(dev, RUN_BLOCKS * BLOCK_SM_SIZE, DEPTH as usize, DEPTH)?;
        let cache_blocks = NonZeroUsize::new(DEFAULT_CACHE_BYTES / BLOCK_SM_SIZE).expect("nonzero");
        Ok(DataIo {
            qp,
            pool,
            total_blocks: dev.geometry().capacity_bytes >> BLOCK_SM_SHIFT,
            dirty: BTreeMap::new(),
            idle_dirty: 0,
            wb_cursor: 0,
            limit_blocks: buffer_bytes / BLOCK_SM_SIZE,
            gen: 0,
            failed: None,
            clean: LruCache::new(cache_blocks),
            fetching: BTreeMap::new(),
            ra_in_flight: 0,
            streams: HashMap::new(),
            reactor_io: false,
            deferring: false,
            need: Vec::new(),
            ra_wanted: Vec::new(),
            quarantine: BTreeMap::new(),
            stats: DataStats::default(),
            ra_hits: 0,
        })
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Blocks written and not yet on the device.
    pub fn pending_blocks(&self) -> usize {
        self.dirty.len()
    }

    pub fn stats(&self) -> DataStats {
        DataStats {
            ra_hits: self.ra_hits,
            ..self.stats
        }
    }

    /// Hand the device I/O to the engine's reactor (`true`), or take it
    /// back (`false`: only with nothing of the reactor's in flight).
    pub fn set_reactor_io(&mut self, on: bool) {
        debug_assert!(on || self.fetching.is_empty(), "reads in flight");
        debug_assert!(
            on || self.dirty.values().all(|d| d.flight.is_none()),
            "writes in flight"
        );
        self.reactor_io = on;
        self.deferring = false;
    }

    pub fn reactor_io(&self) -> bool {
        self.reactor_io
    }

    /// Whether a miss is deferred now: reactor mode, and the operation
    /// has changed nothing yet (set by the volume).
    pub fn set_deferring(&mut self, on: bool) {
        self.deferring = on && self.reactor_io;
    }

    pub fn deferring(&self) -> bool {
        self.deferring
    }

    /// Whether an operation's read missed and was deferred.
    pub fn missed(&self) -> bool {
        !self.need.is_empty()
    }

    /// The runs an operation missed (sorted, coalesced).
    pub fn take_need(&mut self) -> Vec<(u64, u64)> {
        let mut need = std::mem::take(&mut self.need);
        need.sort_unstable();
        need.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (b, n) in need {
            match runs.last_mut() {
                Some((s, m)) if *s + *m >= b => *m = (*m).max(b + n - *s),
                _ => runs.push((b, n)),
            }
        }
        runs
    }

    /// The write-back failure that stops every commit, if any.
    pub fn failed(&self) -> Option<&DevError> {
        self.failed.as_ref()
    }

    /// Whether writers should wait for write-back (the buffer is full).
    pub fn over_limit(&self) -> bool {
        self.limit_blocks > 0 && self.dirty.len() >= self.limit_blocks
    }

    /// Whether enough is dirty that write-back should start now.
    pub fn wants_write_back(&self) -> bool {
        self.idle_dirty > 0 && self.idle_dirty >= self.limit_blocks / 4
    }

    /// The generation of the last change (a commit's switch records it).
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Whether every change up to generation `gen` is on the device
    /// (written, not necessarily flushed); the write-back failure if one
    /// happened.
    pub fn written_through(&self, gen: u64) -> Result<bool, DevError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        Ok(self
            .dirty
            .iter()
            .all(|(&b, d)| d.oldest > gen || self.quarantined(b)))
    }

    // ---- the cache ----

    fn clean_insert(&mut self, blk: u64, data: &[u8], ahead: bool) {
        if self.dirty.contains_key(&blk) {
            return;
        }
        self.clean.put(
            blk,
            CleanBlock {
                data: data.into(),
                ahead,
            },
        );
    }

    /// A change to blocks `[blkno, blkno + nr)`: cached copies go, reads
    /// in flight over them go stale.
    fn invalidate(&mut self, blkno: u64, nr: u64) {
        for b in blkno..blkno + nr {
            self.clean.pop(&b);
        }
        if self.fetching.is_empty() {
            return;
        }
        let lo = blkno.saturating_sub(RUN_BLOCKS as u64);
        for (&b, f) in self.fetching.range_mut(lo..blkno + nr) {
            if b + f.len > blkno {
                f.stale = true;
            }
        }
    }

    /// Extents the commit `seq` frees (its switch is now): until
    /// [`DataIo::lift_quarantine`] says it is durable, blocks in them are
    /// not written back (they may be allocated again meanwhile, and the
    /// last durable commit still points at them), and a commit's wait for
    /// its changes skips them (freed, their contents no longer matter).
    pub fn quarantine(&mut self, extents: &[crate::format::alloc::Extent], seq: u64) {
        for e in extents {
            self.quarantine.insert(e.start, (e.len, seq));
            self.stats.quarantined += e.len;
        }
    }

    /// Commit `seq` is durable (and its freed extents discarded): blocks
    /// it freed may be written again.
    pub fn lift_quarantine(&mut self, seq: u64) {
        self.quarantine.retain(|_, &mut (_, s)| s > seq);
    }

    fn quarantined(&self, b: u64) -> bool {
        self.quarantine
            .range(..=b)
            .next_back()
            .is_some_and(|(&s, &(len, _))| b < s + len)
    }

    /// Copy block `blk` into `out` from memory: false if it is neither
    /// dirty nor cached.
    fn copy_cached(&mut self, blk: u64, out: &mut [u8]) -> bool {
        if let Some(d) = self.dirty.get(&blk) {
            out.copy_from_slice(&d.data);
            return true;
        }
        if let Some(c) = self.clean.get_mut(&blk) {
            out.copy_from_slice(&c.data);
            self.stats.hits += 1;
            if std::mem::take(&mut c.ahead) {
                self.ra_hits += 1;
            }
            return true;
        }
        false
    }

    /// Whether block `blk` is in memory (dirty or cached).
    pub fn has_block(&self, blk: u64) -> bool {
        self.dirty.contains_key(&blk) || self.clean.contains(&blk)
    }

    /// Make sure block `blk` is in memory for an operation that will read
    /// it after it starts changing things (a read-modify-write): while
    /// deferring, a miss is recorded as a read would record it; otherwise
    /// nothing happens (the read will be inline).
    pub fn want(&mut self, blk: u64) {
        if self.deferring && !self.has_block(blk) {
            self.need.push((blk, 1));
            self.stats.deferred += 1;
        }
    }

    // ---- writes ----

    /// Write whole blocks starting at device block `blkno`.
    pub fn write(&mut self, blkno: u64, data: &[u8]) -> Result<(), DevError> {
        assert_eq!(data.len() % BLOCK_SM_SIZE, 0);
        let nr = (data.len() / BLOCK_SM_SIZE) as u64;
        self.invalidate(blkno, nr);
        for (i, blk) in data.chunks(BLOCK_SM_SIZE).enumerate() {
            self.gen += 1;
            let gen = self.gen;
            let b = blkno + i as u64;
            match self.dirty.get_mut(&b) {
                Some(d) => {
                    d.data.copy_from_slice(blk);
                    d.gen = gen;
                    if d.flight.is_some() && d.after_flight.is_none() {
                        d.after_flight = Some(gen);
                    }
                }
                None => {
                    self.dirty.insert(
                        b,
                        Dirty {
                            data: blk.into(),
                            gen,
                            oldest: gen,
                            flight: None,
                            after_flight: None,
                        },
                    );
                    self.idle_dirty += 1;
                }
            }
        }
        if !self.reactor_io && self.dirty.len() > self.limit_blocks {
            self.write_back()?;
        }
        Ok(())
    }

    /// The next run to write back: fills `buf` (at least [`RUN_BLOCKS`]
    /// blocks long) with up to [`RUN_BLOCKS`] contiguous dirty blocks
    /// that have no write in flight (only those changed at or before
    /// generation `upto`, if given) and marks them in flight. Returns the
    /// run's first block and length.
    pub fn next_write_back(&mut self, buf: &mut [u8], upto: Option<u64>) -> Option<(u64, u64)> {
        if self.failed.is_some() {
            // Nothing more goes out: the next commit fails on it.
            return None;
        }
        let eligible = |d: &Dirty| d.flight.is_none() && upto.is_none_or(|g| d.oldest <= g);
        // From where the last run ended, once around: blocks before it are
        // mostly in flight, and a scan from the start each time would walk
        // them again for every run of a pass.
        let cursor = self.wb_cursor;
        let (&start, _) = self
            .dirty
            .range(cursor..)
            .chain(self.dirty.range(..cursor))
            .find(|(&b, d)| eligible(d) && !self.quarantined(b))?;
        let mut n = 0u64;
        let end = match self.quarantine.range(start..).next() {
            Some((&q, _)) => q,
            None => u64::MAX,
        };
        for (&b, d) in self.dirty.range_mut(start..end) {
            if b != start + n || n == RUN_BLOCKS as u64 || d.flight.is_some() {
                break;
            }
            let at = n as usize * BLOCK_SM_SIZE;
            buf[at..at + BLOCK_SM_SIZE].copy_from_slice(&d.data);
            d.flight = Some(d.gen);
            n += 1;
        }
        self.idle_dirty -= n as usize;
        self.wb_cursor = start + n;
        Some((start, n))
    }

    /// The write-back of `[start, start + nr)` (from `data`, what was
    /// written) ended.
    pub fn end_write_back(
        &mut self,
        start: u64,
        nr: u64,
        data: &[u8],
        result: Result<(), DevError>,
    ) {
        if let Err(e) = &result {
            tracing::error!("writing back file data at block {start} failed: {e}");
            self.failed.get_or_insert(e.clone());
        }
        for b in start..start + nr {
            let Some(d) = self.dirty.get_mut(&b) else {
                continue;
            };
            let Some(sent) = d.flight.take() else {
                continue;
            };
            if result.is_ok() && d.gen == sent {
                self.dirty.remove(&b);
                self.stats.written_back += 1;
                let at = ((b - start) as usize) * BLOCK_SM_SIZE;
                self.clean_insert(b, &data[at..at + BLOCK_SM_SIZE], false);
                continue;
            }
            if result.is_ok() {
                d.oldest = d.after_flight.take().expect("changed while in flight");
            }
            d.after_flight = None;
            self.idle_dirty += 1;
        }
    }

    /// Write the dirty blocks to the device and wait (inline mode; not
    /// flushed: the caller flushes when it needs them durable).
    pub fn write_back(&mut self) -> Result<(), DevError> {
        assert!(!self.reactor_io, "inline write-back in reactor mode");
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut first_err = None;
        let mut flying: HashMap<u64, u64> = HashMap::new();
        let mut more = true;
        while more || !flying.is_empty() {
            while more && !self.qp.is_full() {
                let Some(mut buf) = self.pool.try_get() else {
                    break;
                };
                let Some((start, nr)) = self.next_write_back(buf.as_mut_slice(), None) else {
                    more = false;
                    break;
                };
                let req = IoRequest::write(
                    start << BLOCK_SM_SHIFT,
                    (nr as usize * BLOCK_SM_SIZE) as u32,
                    buf,
                    start,
                );
                if let Err(rej) = self.qp.submit(req) {
                    let data = rej.req.buf.as_ref().map_or(&[][..], |b| b.as_slice());
                    let data = data.to_vec();
                    self.end_write_back(start, nr, &data, Err(rej.error.clone()));
                    first_err.get_or_insert(rej.error);
                    more = false;
                    break;
                }
                flying.insert(start, nr);
            }
            for c in self.turn() {
                let nr = flying.remove(&c.tag).expect("a write-back of ours");
                if let Err(e) = &c.result {
                    first_err.get_or_insert(e.clone());
                }
                let buf = c.buf.as_ref().expect("a write returns its buffer");
                self.end_write_back(c.tag, nr, buf.as_slice(), c.result.clone());
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- reads ----

    /// Read whole blocks starting at device block `blkno` into `out`;
    /// dirty blocks are seen. In reactor mode, while deferring, blocks
    /// in neither the dirty buffer nor the cache are recorded
    /// ([`DataIo::missed`]) and left unfilled; the caller must end the
    /// operation with a data miss.
    pub fn read(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        assert_eq!(out.len() % BLOCK_SM_SIZE, 0);
        let nr = (out.len() / BLOCK_SM_SIZE) as u64;
        let mut missing: Vec<(u64, u64)> = Vec::new();
        for i in 0..nr {
            let at = i as usize * BLOCK_SM_SIZE;
            if !self.copy_cached(blkno + i, &mut out[at..at + BLOCK_SM_SIZE]) {
                push_run(&mut missing, blkno + i, 1);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if self.deferring {
            self.stats.deferred += missing.iter().map(|r| r.1).sum::<u64>();
            self.need.extend(missing);
            return Ok(());
        }
        if !self.reactor_io {
            // Read-ahead in flight over them: wait for it, then look again.
            self.reap_read_ahead_over(&missing);
        }
        for (b, n) in missing {
            let at = ((b - blkno) as usize) * BLOCK_SM_SIZE;
            let part = &mut out[at..at + n as usize * BLOCK_SM_SIZE];
            let mut still = Vec::new();
            for i in 0..n {
                let o = i as usize * BLOCK_SM_SIZE;
                if !self.copy_cached(b + i, &mut part[o..o + BLOCK_SM_SIZE]) {
                    push_run(&mut still, b + i, 1);
                }
            }
            for (sb, sn) in still {
                let o = ((sb - b) as usize) * BLOCK_SM_SIZE;
                self.read_inline(sb, &mut part[o..o + sn as usize * BLOCK_SM_SIZE])?;
            }
        }
        Ok(())
    }

    /// Read `[blkno, +out.len())` on this type's own queue and wait; the
    /// blocks are cached.
    fn read_inline(&mut self, blkno: u64, out: &mut [u8]) -> Result<(), DevError> {
        let nr = (out.len() / BLOCK_SM_SIZE) as u64;
        self.stats.inline_reads += nr;
        let buf = loop {
            if let Some(b) = self.pool.try_get() {
                break b;
            }
            // Every buffer is in a read-ahead request: reap some.
            self.turn_if_busy();
        };
        const READ_TAG: u64 = RA_TAG - 1;
        let req = IoRequest::read(blkno << BLOCK_SM_SHIFT, out.len() as u32, buf, READ_TAG);
        if let Err(rej) = self.qp.submit(req) {
            return Err(rej.error);
        }
        let c = loop {
            let mut mine = self.turn();
            if let Some(c) = mine.pop() {
                debug_assert!(mine.is_empty() && c.tag == READ_TAG);
                break c;
            }
        };
        c.result?;
        let buf = c.buf.as_ref().expect("a read returns its buffer");
        out.copy_from_slice(&buf.as_slice()[..out.len()]);
        // Nothing else writes in inline mode while we waited; in reactor
        // mode a write in between would be in the dirty buffer, which
        // `clean_insert` skips.
        for i in 0..nr {
            let at = i as usize * BLOCK_SM_SIZE;
            self.clean_insert(blkno + i, &out[at..at + BLOCK_SM_SIZE], false);
        }
        Ok(())
    }

    /// Start a read into the cache of the first run within `[blkno,
    /// blkno + nr)` of blocks that are neither in memory nor on their way
    /// (a run never spans a dirty block: one whose write-back lands while
    /// the read is in flight could be read old and cached over the new).
    /// Returns that run, or `None` when there is none (or read-ahead's
    /// share of the queue is taken); the caller asks again for the rest.
    pub fn start_fetch(&mut self, blkno: u64, nr: u64, read_ahead: bool) -> Option<(u64, u64)> {
        let busy = |io: &Self, b: u64| io.has_block(b) || io.fetching_over(b);
        let end = blkno + nr;
        let mut s = blkno;
        while s < end && busy(self, s) {
            s += 1;
        }
        let mut e = s;
        while e < end && !busy(self, e) {
            e += 1;
        }
        if s == e {
            return None;
        }
        if read_ahead && self.ra_in_flight + (e - s) > RA_MAX_IN_FLIGHT_BLOCKS {
            return None;
        }
        if read_ahead {
            self.ra_in_flight += e - s;
        }
        self.fetching.insert(
            s,
            Fetching {
                len: e - s,
                stale: false,
                read_ahead,
            },
        );
        Some((s, e - s))
    }

    /// Whether a read in flight covers block `b`.
    pub fn fetching_over(&self, b: u64) -> bool {
        self.fetching
            .range(b.saturating_sub(RUN_BLOCKS as u64)..=b)
            .any(|(&s, f)| s + f.len > b)
    }

    /// Whether any read in flight overlaps `[blkno, blkno + nr)`.
    pub fn fetching_any(&self, blkno: u64, nr: u64) -> bool {
        self.fetching
            .range(blkno.saturating_sub(RUN_BLOCKS as u64)..blkno + nr)
            .any(|(&s, f)| s + f.len > blkno)
    }

    /// A read begun with [`DataIo::start_fetch`] ended: its blocks are
    /// cached unless a write made them stale.
    pub fn end_fetch(&mut self, blkno: u64, data: Result<&[u8], &DevError>) {
        let Some(f) = self.fetching.remove(&blkno) else {
            return;
        };
        if f.read_ahead {
            self.ra_in_flight -= f.len;
        }
        self.stats.fetched += f.len;
        match data {
            Ok(data) if !f.stale => {
                for i in 0..f.len {
                    let at = i as usize * BLOCK_SM_SIZE;
                    self.clean_insert(blkno + i, &data[at..at + BLOCK_SM_SIZE], f.read_ahead);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("reading file data at block {blkno} failed: {e}"),
        }
    }

    // ---- read-ahead ----

    /// Ask for blocks `[blkno, blkno + nr)` to be read into the cache in
    /// the background. Returns how many blocks from `blkno` were asked
    /// for (fewer when read-ahead's share of the queue is taken).
    pub fn prefetch(&mut self, blkno: u64, nr: u64) -> u64 {
        let mut at = blkno;
        let end = blkno + nr;
        while at < end {
            let len = (end - at).min(RUN_BLOCKS as u64);
            if self.reactor_io {
                if self.ra_wanted.len() >= RA_MAX_WANTED {
                    break;
                }
                self.ra_wanted.push((at, len));
            } else {
                self.turn_if_busy();
                if self.qp.is_full() || !self.start_ra_inline(at, len) {
                    break;
                }
            }
            at += len;
        }
        if !self.reactor_io {
            if let Err(e) = self.qp.kick() {
                tracing::warn!("data device kick failed: {e}");
            }
        }
        at.min(end) - blkno
    }

    /// The read-ahead runs operations asked for (reactor mode).
    pub fn take_read_ahead(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.ra_wanted)
    }

    /// Start a read-ahead run on the inline queue; false if there is no
    /// room for it (the range in memory counts as done).
    fn start_ra_inline(&mut self, at: u64, len: u64) -> bool {
        if self.ra_in_flight + len > RA_MAX_IN_FLIGHT_BLOCKS {
            return false;
        }
        let Some(buf) = self.pool.try_get() else {
            return false;
        };
        let Some((s, n)) = self.start_fetch(at, len, true) else {
            return true;
        };
        let req = IoRequest::read(
            s << BLOCK_SM_SHIFT,
            (n as usize * BLOCK_SM_SIZE) as u32,
            buf,
            RA_TAG | s,
        );
        if let Err(rej) = self.qp.submit(req) {
            self.end_fetch(s, Err(&rej.error));
            return false;
        }
        true
    }

    /// Inline mode: wait for read-ahead in flight over any of `runs`.
    fn reap_read_ahead_over(&mut self, runs: &[(u64, u64)]) {
        while runs.iter().any(|&(b, n)| self.fetching_any(b, n)) {
            let stray = self.turn();
            debug_assert!(stray.is_empty(), "a waited-for request outlived its caller");
        }
    }

    /// Note a read of logical blocks `[first, last]` of `ino`; returns the
    /// reader's stream when it reads sequentially (the caller then
    /// prefetches from `ahead_until` and records how far it asked).
    pub fn note_read(&mut self, ino: u64, first: u64, last: u64) -> Option<Stream> {
        let prev = self.streams.get(&ino).copied();
        if let Some(s) = prev.filter(|s| s.first == first && s.next == last + 1) {
            // The same read again (an operation run again after a miss).
            return (s.ahead_until > last + 1).then_some(s);
        }
        let sequential = match prev {
            Some(s) => s.next == first,
            None => first == 0,
        };
        if self.streams.len() >= MAX_STREAMS && prev.is_none() {
            self.streams.clear();
        }
        let s = self.streams.entry(ino).or_default();
        s.next = last + 1;
        s.first = first;
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

    // ---- the inline queue ----

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
                let blk = c.tag & !RA_TAG;
                match (&c.result, &c.buf) {
                    (Ok(()), Some(buf)) => self.end_fetch(blk, Ok(buf.as_slice())),
                    (Err(e), _) => self.end_fetch(blk, Err(e)),
                    (Ok(()), None) => unreachable!("a read returns its buffer"),
                }
            } else {
                mine.push(c);
            }
        }
        mine
    }

    /// Reap whatever has completed without waiting.
    fn turn_if_busy(&mut self) {
        if self.qp.in_flight() > 0 {
            let stray = self.turn();
            debug_assert!(stray.is_empty());
        }
    }

    /// Wait for every request in flight on the inline queue.
    fn drain(&mut self) {
        while self.qp.in_flight() > 0 {
            let stray = self.turn();
            debug_assert!(stray.is_empty(), "a waited-for request outlived its caller");
        }
    }

    /// Drop cached copies of blocks `[blkno, blkno + nr)` (discarded).
    pub fn discarded(&mut self, blkno: u64, nr: u64) {
        self.invalidate(blkno, nr);
    }

    /// Whether the device takes discards.
    pub fn supports_discard(&self) -> bool {
        self.qp.geometry().supports_discard()
    }

    /// Tell the device the blocks of `extents` hold nothing (they were
    /// freed by a commit that is durable): thin-provisioned and flash
    /// storage can reclaim them. Waits for every discard (inline mode);
    /// does nothing on a device without discard.
    pub fn discard(&mut self, extents: &[crate::format::alloc::Extent]) -> Result<(), DevError> {
        assert!(!self.reactor_io, "inline discard in reactor mode");
        if !self.supports_discard() {
            return Ok(());
        }
        self.drain();
        let mut reqs = split_runs(extents.iter().map(|e| (e.start, e.len)), DISCARD_MAX_BLOCKS);
        let mut first_err = None;
        let mut flying = 0usize;
        let mut more = true;
        while more || flying > 0 {
            while more && !self.qp.is_full() {
                let Some((blk, nr)) = reqs.next() else {
                    more = false;
                    break;
                };
                self.invalidate(blk, nr);
                let req =
                    IoRequest::discard(blk << BLOCK_SM_SHIFT, (nr << BLOCK_SM_SHIFT) as u32, 0);
                if let Err(rej) = self.qp.submit(req) {
                    first_err.get_or_insert(rej.error);
                    more = false;
                    break;
                }
                flying += 1;
            }
            for c in self.turn() {
                flying -= 1;
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

    /// Write back what is dirty and make every completed write durable
    /// (inline mode).
    pub fn flush(&mut self) -> Result<(), DevError> {
        self.write_back()?;
        self.drain();
        self.qp.run_one(IoRequest::flush(0)).result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::mem::MemDev;
    use crate::format::alloc::Extent;

    /// Blocks of an extent a commit in flight freed are not written back
    /// (they may belong to a new file already, while the last durable
    /// commit still gives them to the old one), and that commit does not
    /// wait for them; once it is durable they go out.
    #[test]
    fn quarantined_blocks_wait_for_the_freeing_commit() {
        let dev = MemDev::new(16 << 20);
        let mut io = DataIo::open(&dev).unwrap();
        io.set_reactor_io(true);
        io.write(100, &[1; 2 * BLOCK_SM_SIZE]).unwrap();
        io.quarantine(&[Extent { start: 101, len: 4 }], 7);
        io.write(102, &[2; BLOCK_SM_SIZE]).unwrap();
        io.write(110, &[3; BLOCK_SM_SIZE]).unwrap();
        let gen = io.generation();
        let mut buf = vec![0u8; RUN_BLOCKS * BLOCK_SM_SIZE];
        let mut runs = Vec::new();
        while let Some(r) = io.next_write_back(&mut buf, Some(gen)) {
            runs.push(r);
            let data = buf.clone();
            io.end_write_back(r.0, r.1, &data, Ok(()));
        }
        assert_eq!(runs, vec![(100, 1), (110, 1)]);
        assert!(
            io.written_through(gen).unwrap(),
            "freed blocks are not waited for"
        );
        assert_eq!(io.pending_blocks(), 2);
        io.lift_quarantine(7);
        let r = io.next_write_back(&mut buf, None).unwrap();
        assert_eq!(r, (101, 2));
        let data = buf.clone();
        io.end_write_back(r.0, r.1, &data, Ok(()));
        assert_eq!(io.pending_blocks(), 0);
    }

    /// A read into the cache never spans a dirty block: its write-back
    /// could land while the read is in flight, and the read's older copy
    /// would then be cached over the one just written.
    #[test]
    fn a_read_into_the_cache_never_spans_a_dirty_block() {
        let dev = MemDev::new(16 << 20);
        let mut io = DataIo::open(&dev).unwrap();
        io.set_reactor_io(true);
        io.write(12, &[9; BLOCK_SM_SIZE]).unwrap();
        assert_eq!(io.start_fetch(10, 5, false), Some((10, 2)));
        assert_eq!(io.start_fetch(10, 5, false), Some((13, 2)));
        assert_eq!(
            io.start_fetch(10, 5, false),
            None,
            "all in memory or on its way"
        );
        io.end_fetch(10, Ok(&[1; 2 * BLOCK_SM_SIZE]));
        io.end_fetch(13, Ok(&[3; 2 * BLOCK_SM_SIZE]));
        let mut out = vec![0u8; 5 * BLOCK_SM_SIZE];
        io.read(10, &mut out).unwrap();
        let firsts: Vec<u8> = out.chunks(BLOCK_SM_SIZE).map(|b| b[0]).collect();
        assert_eq!(firsts, vec![1, 1, 9, 3, 3]);
    }

    /// A block written again while its write-back is in flight is written
    /// again after it, and a commit switched in between waits for that.
    #[test]
    fn a_block_changed_during_its_write_back_goes_out_again() {
        let dev = MemDev::new(16 << 20);
        let mut io = DataIo::open(&dev).unwrap();
        io.set_reactor_io(true);
        io.write(5, &[1; BLOCK_SM_SIZE]).unwrap();
        let mut buf = vec![0u8; RUN_BLOCKS * BLOCK_SM_SIZE];
        let r = io.next_write_back(&mut buf, None).unwrap();
        io.write(5, &[2; BLOCK_SM_SIZE]).unwrap();
        let gen = io.generation();
        assert!(
            io.next_write_back(&mut buf, None).is_none(),
            "one write in flight per block"
        );
        let data = buf.clone();
        io.end_write_back(r.0, r.1, &data, Ok(()));
        assert!(!io.written_through(gen).unwrap());
        let r = io.next_write_back(&mut buf, Some(gen)).unwrap();
        assert_eq!(buf[0], 2);
        let data = buf.clone();
        io.end_write_back(r.0, r.1, &data, Ok(()));
        assert!(io.written_through(gen).unwrap());
        let mut out = [0u8; BLOCK_SM_SIZE];
        io.read(5, &mut out).unwrap();
        assert_eq!(out[0], 2, "the clean copy is the last write's");
    }
}
