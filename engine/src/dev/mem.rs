//! The `mem` backend: a device in RAM for tests and simulation.
//!
//! Beyond storing data it models what crash-consistency work needs:
//! - **Flush semantics.** A completed write is *volatile* until a flush that
//!   was submitted after the write completed finishes. Reads see volatile
//!   data, as on a real device with a write cache.
//! - **Power loss.** [`MemDev::power_cut`] (or a cut armed to fire after a
//!   number of requests) drops the volatile state: each write not yet
//!   covered by a flush is kept, dropped, or torn (a prefix of its logical
//!   blocks kept), chosen from a seed. Requests still in flight when the
//!   power goes are lost. The device then fails every request of the old
//!   queues; [`MemDev::restart`] powers it back on for new queues.
//! - **Discard.** A discard reads back as zeros once it completes
//!   ([`Discard::Zeroes`]). It is modelled as a write of zeros: volatile
//!   until a covering flush, so a power cut may keep it, drop it (the old
//!   data comes back) or tear it, like any other write.
//! - **Fault injection.** [`Fault`] rules fail chosen requests with an errno.
//! - **Reordering.** Completions can be delivered in a seeded random order.
//!
//! The image is sparse (64 KiB chunks allocated on first write), so large
//! capacities cost only what is written. Volatile writes keep the bytes they
//! overwrote, so a power cut rolls them back and re-applies the survivors.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    BlockDev, Completion, DevError, Discard, Geometry, IoOp, IoRequest, QueueBackend, QueueConfig,
    Rejected,
};
use crate::util::rng::SimRng;

const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct SparseImage {
    chunks: HashMap<u64, Box<[u8]>>,
}

impl SparseImage {
    fn read(&self, mut offset: u64, mut out: &mut [u8]) {
        while !out.is_empty() {
            let idx = offset / CHUNK as u64;
            let within = (offset % CHUNK as u64) as usize;
            let n = out.len().min(CHUNK - within);
            match self.chunks.get(&idx) {
                Some(c) => out[..n].copy_from_slice(&c[within..within + n]),
                None => out[..n].fill(0),
            }
            offset += n as u64;
            out = &mut out[n..];
        }
    }

    fn write(&mut self, mut offset: u64, mut data: &[u8]) {
        while !data.is_empty() {
            let idx = offset / CHUNK as u64;
            let within = (offset % CHUNK as u64) as usize;
            let n = data.len().min(CHUNK - within);
            let c = self
                .chunks
                .entry(idx)
                .or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[..n]);
            offset += n as u64;
            data = &data[n..];
        }
    }

    fn bytes_allocated(&self) -> usize {
        self.chunks.len() * CHUNK
    }
}

/// Fail matching requests with `errno`.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Only this kind of request (any if None).
    pub op: Option<IoOp>,
    /// Only requests overlapping this byte range (any if None).
    pub range: Option<Range<u64>>,
    /// Let this many matching requests through first.
    pub skip: u64,
    /// Fail this many matching requests, then retire (forever if None).
    pub times: Option<u64>,
    pub errno: i32,
}

impl Fault {
    /// Fail every request of `op` from now on with EIO.
    pub fn always(op: IoOp) -> Self {
        Fault {
            op: Some(op),
            range: None,
            skip: 0,
            times: None,
            errno: libc::EIO,
        }
    }

    /// Fail the `nth` (0-based) request of `op` from now on with EIO, once.
    pub fn nth(op: IoOp, nth: u64) -> Self {
        Fault {
            op: Some(op),
            range: None,
            skip: nth,
            times: Some(1),
            errno: libc::EIO,
        }
    }

    fn matches(&self, op: IoOp, offset: u64, len: u64) -> bool {
        self.op.is_none_or(|o| o == op)
            && self
                .range
                .as_ref()
                .is_none_or(|r| op == IoOp::Flush || (offset < r.end && offset + len > r.start))
    }
}

/// What a power cut did to the writes that were not yet durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub kept: u64,
    pub dropped: u64,
    pub torn: u64,
    /// Requests that were queued or in flight and are simply lost.
    pub lost_in_flight: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub injected_errors: u64,
    pub power_cuts: u64,
}

struct VolatileWrite {
    id: u64,
    offset: u64,
    data: Vec<u8>,
    undo: Vec<u8>,
}

struct ArmedCut {
    after_requests: u64,
    seed: u64,
}

struct MemState {
    image: SparseImage,
    volatile: VecDeque<VolatileWrite>,
    next_write_id: u64,
    generation: u64,
    powered: bool,
    faults: Vec<Fault>,
    reorder: Option<SimRng>,
    armed_cut: Option<ArmedCut>,
    completed_requests: u64,
    in_flight_total: u64,
    stats: MemStats,
    last_crash: Option<CrashReport>,
}

impl MemState {
    /// Roll back every volatile write, then re-apply each one kept whole or
    /// torn, as chosen by `rng`.
    fn crash(&mut self, rng: &mut SimRng, lbs: usize, lost_in_flight: u64) -> CrashReport {
        let mut report = CrashReport {
            lost_in_flight,
            ..Default::default()
        };
        let writes: Vec<VolatileWrite> = self.volatile.drain(..).collect();
        for w in writes.iter().rev() {
            self.image.write(w.offset, &w.undo);
        }
        for w in &writes {
            let sectors = w.data.len() / lbs;
            match rng.below(3) {
                0 => {
                    self.image.write(w.offset, &w.data);
                    report.kept += 1;
                }
                1 => report.dropped += 1,
                _ if sectors > 1 => {
                    let keep = 1 + rng.below(sectors as u64 - 1) as usize;
                    self.image.write(w.offset, &w.data[..keep * lbs]);
                    report.torn += 1;
                }
                _ => report.dropped += 1,
            }
        }
        self.powered = false;
        self.generation += 1;
        self.stats.power_cuts += 1;
        self.last_crash = Some(report);
        report
    }

    fn take_fault(&mut self, op: IoOp, offset: u64, len: u64) -> Option<i32> {
        let mut hit = None;
        for f in self.faults.iter_mut() {
            if !f.matches(op, offset, len) {
                continue;
            }
            if f.skip > 0 {
                f.skip -= 1;
                continue;
            }
            if let Some(t) = f.times.as_mut() {
                *t -= 1;
            }
            hit = Some(f.errno);
            break;
        }
        self.faults.retain(|f| f.times != Some(0));
        if hit.is_some() {
            self.stats.injected_errors += 1;
        }
        hit
    }
}

/// A RAM device. Cloning shares the device.
#[derive(Clone)]
pub struct MemDev {
    geom: Geometry,
    id: u32,
    state: Arc<Mutex<MemState>>,
}

impl std::fmt::Debug for MemDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemDev(mem:{}, {:?})", self.id, self.geom)
    }
}

static NEXT_MEM_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl MemDev {
    /// A device of `capacity_bytes` with 4 KiB logical blocks.
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_geometry(Geometry {
            logical_block_size: 4096,
            capacity_bytes,
            max_transfer_bytes: 1 << 20,
            discard: Discard::Zeroes,
        })
    }

    /// A device of any geometry; `geom.discard` may be `Zeroes` or
    /// `Unsupported` (to test callers of devices without discard).
    pub fn with_geometry(geom: Geometry) -> Self {
        assert!(geom.logical_block_size.is_power_of_two() && geom.logical_block_size >= 512);
        assert!(
            geom.discard != Discard::Undefined,
            "mem discards read as zeros"
        );
        let state = MemState {
            image: SparseImage::default(),
            volatile: VecDeque::new(),
            next_write_id: 0,
            generation: 0,
            powered: true,
            faults: Vec::new(),
            reorder: None,
            armed_cut: None,
            completed_requests: 0,
            in_flight_total: 0,
            stats: MemStats::default(),
            last_crash: None,
        };
        MemDev {
            geom,
            id: NEXT_MEM_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Deliver completions in a random order chosen by `seed` (None: in
    /// submission order).
    pub fn reorder_completions(&self, seed: Option<u64>) {
        self.lock().reorder = seed.map(SimRng::new);
    }

    /// Cut the power now.
    pub fn power_cut(&self, seed: u64) -> CrashReport {
        let lbs = self.geom.logical_block_size as usize;
        let mut st = self.lock();
        let lost = st.in_flight_total;
        st.in_flight_total = 0;
        st.crash(&mut SimRng::new(seed), lbs, lost)
    }

    /// Cut the power when `after_requests` more requests have completed:
    /// that request and everything after it fail, as if the machine died
    /// in the middle of whatever it was doing.
    pub fn arm_power_cut(&self, after_requests: u64, seed: u64) {
        let mut st = self.lock();
        let after_requests = st.completed_requests + after_requests;
        st.armed_cut = Some(ArmedCut {
            after_requests,
            seed,
        });
    }

    pub fn is_powered(&self) -> bool {
        self.lock().powered
    }

    /// The report of the last power cut, if any.
    pub fn last_crash(&self) -> Option<CrashReport> {
        self.lock().last_crash
    }

    /// Power the device back on after a cut: what survived is what reads
    /// return. Queues opened before the cut keep failing.
    pub fn restart(&self) {
        let mut st = self.lock();
        st.armed_cut = None;
        st.powered = true;
    }

    pub fn stats(&self) -> MemStats {
        self.lock().stats
    }

    /// Writes completed but not yet made durable by a flush.
    pub fn volatile_writes(&self) -> usize {
        self.lock().volatile.len()
    }

    pub fn bytes_allocated(&self) -> usize {
        self.lock().image.bytes_allocated()
    }

    /// Read bytes directly, bypassing queues (tests and checkers).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) {
        self.lock().image.read(offset, out);
    }

    /// Write bytes directly and durably, bypassing queues (test set-up,
    /// corrupting a block on purpose).
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        self.lock().image.write(offset, data);
    }
}

impl BlockDev for MemDev {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn name(&self) -> String {
        format!("mem:{}", self.id)
    }

    fn open_queue_backend(&self, cfg: &QueueConfig) -> Result<Box<dyn QueueBackend>, DevError> {
        let st = self.lock();
        if !st.powered {
            return Err(DevError::Failed(self.name()));
        }
        Ok(Box::new(MemQueue {
            dev: self.clone(),
            generation: st.generation,
            depth: cfg.depth as usize,
            queued: VecDeque::new(),
            kicked: 0,
        }))
    }
}

struct Queued {
    req: IoRequest,
    /// For a flush: writes with ids below this were complete when the flush
    /// was submitted (kicked), so it makes them durable.
    flush_covers: u64,
}

struct MemQueue {
    dev: MemDev,
    generation: u64,
    depth: usize,
    queued: VecDeque<Queued>,
    /// The first `kicked` entries of `queued` have been submitted.
    kicked: usize,
}

impl MemQueue {
    fn execute(&self, st: &mut MemState, q: Queued) -> Completion {
        let Queued {
            mut req,
            flush_covers,
        } = q;
        let offset = req.offset_bytes;
        let len = req.len_bytes as usize;
        let done = |req: IoRequest, result| Completion {
            tag: req.tag,
            op: req.op,
            offset_bytes: req.offset_bytes,
            result,
            buf: req.buf,
        };
        if !st.powered || st.generation != self.generation {
            return done(req, Err(DevError::Failed(self.dev.name())));
        }
        if let Some(cut) = &st.armed_cut {
            if st.completed_requests >= cut.after_requests {
                let seed = cut.seed;
                st.armed_cut = None;
                let lbs = self.dev.geom.logical_block_size as usize;
                let lost = st.in_flight_total;
                st.crash(&mut SimRng::new(seed), lbs, lost);
                return done(req, Err(DevError::Failed(self.dev.name())));
            }
        }
        st.completed_requests += 1;
        if let Some(errno) = st.take_fault(req.op, offset, len as u64) {
            let op = req.op;
            return done(req, Err(DevError::Io { op, offset, errno }));
        }
        match req.op {
            IoOp::Read => {
                st.stats.reads += 1;
                let b = req.buf_offset as usize;
                let buf = req.buf.as_mut().expect("checked: reads carry a buffer");
                st.image.read(offset, &mut buf.as_mut_slice()[b..b + len]);
            }
            IoOp::Write | IoOp::Discard => {
                let data = if req.op == IoOp::Discard {
                    debug_assert!(self.dev.geom.supports_discard(), "checked by submit");
                    st.stats.discards += 1;
                    vec![0u8; len]
                } else {
                    st.stats.writes += 1;
                    let b = req.buf_offset as usize;
                    req.buf
                        .as_ref()
                        .expect("checked: writes carry a buffer")
                        .as_slice()[b..b + len]
                        .to_vec()
                };
                let mut undo = vec![0u8; len];
                st.image.read(offset, &mut undo);
                st.image.write(offset, &data);
                let id = st.next_write_id;
                st.next_write_id += 1;
                st.volatile.push_back(VolatileWrite {
                    id,
                    offset,
                    data,
                    undo,
                });
            }
            IoOp::Flush => {
                st.stats.flushes += 1;
                while st.volatile.front().is_some_and(|w| w.id < flush_covers) {
                    st.volatile.pop_front();
                }
            }
        }
        done(req, Ok(()))
    }
}

impl QueueBackend for MemQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.queued.len()
    }

    fn push(&mut self, req: IoRequest) -> Result<(), Rejected> {
        debug_assert!(self.queued.len() < self.depth);
        self.dev.lock().in_flight_total += 1;
        self.queued.push_back(Queued {
            req,
            flush_covers: 0,
        });
        Ok(())
    }

    fn kick(&mut self) -> Result<(), DevError> {
        if self.kicked == self.queued.len() {
            return Ok(());
        }
        let covers = self.dev.lock().next_write_id;
        for q in self.queued.iter_mut().skip(self.kicked) {
            q.flush_covers = covers;
        }
        self.kicked = self.queued.len();
        Ok(())
    }

    fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        if self.kicked == 0 {
            return 0;
        }
        let mut batch: Vec<Queued> = self.queued.drain(..self.kicked).collect();
        self.kicked = 0;
        let n = batch.len();
        let mut completions = Vec::with_capacity(n);
        {
            let mut st = self.dev.lock();
            if let Some(rng) = st.reorder.as_mut() {
                rng.shuffle(&mut batch);
            }
            for q in batch {
                st.in_flight_total = st.in_flight_total.saturating_sub(1);
                completions.push(self.execute(&mut st, q));
            }
        }
        // Completions are delivered outside the device lock.
        for c in completions {
            out(c);
        }
        n
    }

    fn set_completion_eventfd(&mut self, _eventfd: RawFd) -> bool {
        // Completions are produced by reap itself; nothing to wait for.
        false
    }
}

impl Drop for MemQueue {
    fn drop(&mut self) {
        let mut st = self.dev.lock();
        st.in_flight_total = st.in_flight_total.saturating_sub(self.queued.len() as u64);
    }
}
