//! An NVMe I/O queue pair as a [`QueueBackend`]: requests become commands
//! (split at the controller's MDTS, each with PRP1/PRP2 or a PRP list),
//! command ids come from a fixed table with a generation in the high bits
//! so a stale completion can't be taken for a new command, one doorbell per
//! batch, completions reaped by phase tag, status codes decoded into
//! `DevError`, and a command that outlives the timeout fails its request
//! and the device. A discard is one Dataset Management command with the
//! deallocate attribute, its one-entry range list written into the command
//! slot's PRP list page (a range covers up to 2^32 blocks, more than a
//! request's `u32` length).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctrl::Controller;
use super::mmio::DmaRegion;
use super::ring::Rings;
use super::spec::{nvm, DsmRange, SqEntry};
use crate::dev::{Completion, DevError, IoOp, IoRequest, QueueBackend, QueueConfig, Rejected};
use crate::dma::DmaPool;

const PAGE: usize = 4096;
/// PRP entries in one list page; our commands never need a chained list
/// (MDTS is capped to what one list page addresses).
const PRPS_PER_PAGE: usize = PAGE / 8;
/// Most bytes one command moves: what PRP1 plus one PRP list page address.
pub const MAX_COMMAND_BYTES: usize = PRPS_PER_PAGE * PAGE;
/// Smallest I/O queue we create (CAP.MQES permitting).
const MIN_QUEUE_ENTRIES: u32 = 256;
/// Largest request the queue takes (split into commands of at most MDTS).
pub const MAX_REQUEST_BYTES: u32 = 2 << 20;
/// How often (in reap calls with commands in flight) the clock is read for
/// timeouts: reading it is the only thing here that might be a syscall.
const TIMEOUT_CHECK_EVERY: u32 = 256;

#[derive(Debug, Default)]
struct Cmd {
    busy: bool,
    gen: u16,
    req: u32,
    /// The timeout epoch this command was announced in.
    epoch: u64,
}

#[derive(Debug)]
struct Req {
    req: IoRequest,
    commands_left: u32,
    error: Option<DevError>,
}

/// Statistics for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub commands: u64,
    pub doorbells: u64,
    pub stale_completions: u64,
    pub prp_lists: u64,
    pub discards: u64,
}

#[derive(Debug)]
pub struct NvmeQueue {
    ctrl: Arc<Controller>,
    nsid: u32,
    lba_shift: u32,
    max_cmd_bytes: usize,
    /// The controller takes Dataset Management (Identify ONCS).
    dsm: bool,
    /// The queue's rings and the pool of their memory.
    rings: Option<(Rings, DmaPool)>,
    prp_lists: Option<DmaRegion>,
    /// Pools this queue mapped (registered pools and the PRP list pool);
    /// unmapped when it drops.
    mapped: Vec<DmaPool>,
    /// (vaddr, len, iova) of every pool registered with this queue.
    windows: Vec<(usize, usize, u64)>,
    cmds: Vec<Cmd>,
    free_cmds: Vec<u16>,
    /// Commands pushed since the last kick (their epoch is set at kick).
    unkicked: Vec<u16>,
    /// Completions taken from the ring in one reap (allocated once).
    reaped: Vec<super::spec::CqEntry>,
    slot_bits: u32,
    reqs: Vec<Option<Req>>,
    free_reqs: Vec<u32>,
    depth: usize,
    max_commands_per_req: usize,
    timeout: Duration,
    epoch: u64,
    epoch_start: Instant,
    polls_since_check: u32,
    drained_after_failure: bool,
    stats: QueueStats,
}

/// PRP1 and PRP2 for `len` bytes at `iova`, writing a list into `list`
/// (at `list_iova`) when the transfer spans more than two pages.
pub fn build_prps(
    iova: u64,
    len: usize,
    list: &mut dyn FnMut(usize, u64),
    list_iova: u64,
) -> (u64, u64) {
    debug_assert!(len > 0 && iova.is_multiple_of(4));
    let first = PAGE - (iova as usize % PAGE);
    if len <= first {
        return (iova, 0);
    }
    let second = iova + first as u64;
    let rest = len - first;
    if rest <= PAGE {
        return (iova, second);
    }
    let pages = rest.div_ceil(PAGE);
    assert!(pages <= PRPS_PER_PAGE, "a command needs a chained PRP list");
    for i in 0..pages {
        list(i, second + (i * PAGE) as u64);
    }
    (iova, list_iova)
}

impl NvmeQueue {
    pub fn open(
        ctrl: Arc<Controller>,
        nsid: u32,
        lba_shift: u32,
        cfg: &QueueConfig,
    ) -> Result<NvmeQueue, DevError> {
        let max_cmd_bytes = ctrl
            .max_command_bytes()
            .unwrap_or(MAX_COMMAND_BYTES)
            .min(MAX_COMMAND_BYTES);
        // A request is at most one buffer of a registered pool (others are
        // refused), so the largest buffer bounds the commands per request.
        let max_req = cfg
            .pools
            .iter()
            .map(|p| p.buf_size())
            .max()
            .unwrap_or(PAGE)
            .min(MAX_REQUEST_BYTES as usize);
        let per_req = max_req.div_ceil(max_cmd_bytes);
        let want_cmds = cfg.depth as usize * per_req;
        // At least MIN_QUEUE_ENTRIES, so the CQ head doorbell (written every
        // half queue) stays rare even at low depth.
        let entries = ctrl.io_queue_entries((want_cmds as u32 + 1).max(MIN_QUEUE_ENTRIES));
        let cmd_slots = (entries - 1) as usize;
        // A queue shorter than asked for takes fewer requests at once, so a
        // request that passed the depth check always finds its commands.
        let depth = (cfg.depth as usize).min(cmd_slots / per_req).max(1);
        // Every pool mapped here is unmapped again if a later step fails.
        let mut mapped: Vec<DmaPool> = Vec::new();
        let undo = |mapped: &[DmaPool], e: DevError| {
            for p in mapped {
                ctrl.unmap_pool(p);
            }
            e
        };
        let mut windows = Vec::new();
        for pool in &cfg.pools {
            let iova = ctrl.map_pool(pool).map_err(|e| undo(&mapped, e))?;
            mapped.push(pool.clone());
            let (p, len) = pool.region();
            windows.push((p as usize, len, iova));
        }
        let prp_pool = DmaPool::new(cmd_slots * PAGE, 1)
            .map_err(|e| undo(&mapped, DevError::Setup(e.to_string())))?;
        let prp_iova = ctrl.map_pool(&prp_pool).map_err(|e| undo(&mapped, e))?;
        mapped.push(prp_pool.clone());
        let prp_lists = DmaRegion::new(prp_pool.try_get().expect("one buffer"), prp_iova);
        let (rings, ring_pool) = ctrl
            .create_io_queue(entries)
            .map_err(|e| undo(&mapped, e))?;
        debug_assert_eq!(rings.entries(), entries);
        let slot_bits = usize::BITS - (cmd_slots - 1).max(1).leading_zeros();
        let timeout = Duration::from_millis(ctrl.options().timeout_ms.max(1));
        let dsm = ctrl.identity().supports_dsm();
        Ok(NvmeQueue {
            ctrl,
            nsid,
            lba_shift,
            max_cmd_bytes,
            dsm,
            rings: Some((rings, ring_pool)),
            prp_lists: Some(prp_lists),
            mapped,
            windows,
            cmds: (0..cmd_slots).map(|_| Cmd::default()).collect(),
            free_cmds: (0..cmd_slots as u16).rev().collect(),
            unkicked: Vec::with_capacity(cmd_slots),
            reaped: Vec::with_capacity(entries as usize),
            slot_bits,
            reqs: (0..depth).map(|_| None).collect(),
            free_reqs: (0..depth as u32).rev().collect(),
            depth,
            max_commands_per_req: per_req,
            timeout,
            epoch: 0,
            epoch_start: Instant::now(),
            polls_since_check: 0,
            drained_after_failure: false,
            stats: QueueStats::default(),
        })
    }

    pub fn stats(&self) -> QueueStats {
        let mut s = self.stats;
        s.doorbells = self.rings().doorbell_writes();
        s
    }

    pub fn qid(&self) -> u16 {
        self.rings().qid()
    }

    fn rings(&self) -> &Rings {
        &self.rings.as_ref().expect("rings live until drop").0
    }

    fn rings_mut(&mut self) -> &mut Rings {
        &mut self.rings.as_mut().expect("rings live until drop").0
    }

    fn translate(&self, vaddr: usize, len: usize) -> Option<u64> {
        self.windows
            .iter()
            .find(|(a, l, _)| vaddr >= *a && vaddr + len <= a + l)
            .map(|(a, _, iova)| iova + (vaddr - a) as u64)
    }

    fn cid(&self, slot: u16) -> u16 {
        let gen = u32::from(self.cmds[usize::from(slot)].gen);
        if self.slot_bits >= 16 {
            return slot;
        }
        (gen << self.slot_bits | u32::from(slot)) as u16
    }

    /// The command slot a completion's id names, if it is in flight with
    /// that generation.
    fn slot_of(&self, cid: u16) -> Option<usize> {
        let mask = (1u32 << self.slot_bits.min(16)) - 1;
        let slot = (u32::from(cid) & mask) as usize;
        let cmd = self.cmds.get(slot)?;
        (cmd.busy && self.cid(slot as u16) == cid).then_some(slot)
    }

    fn failed_error(&self) -> DevError {
        let reason = self.ctrl.failure().map(|f| f.reason).unwrap_or_default();
        DevError::Failed(format!("{}: {reason}", self.ctrl.name()))
    }

    /// After the controller failed: finish every request with an error. The
    /// buffers come back only if the controller was stopped; otherwise it
    /// might still write them, so they are leaked.
    fn drain_failed(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        if self.drained_after_failure {
            return 0;
        }
        self.drained_after_failure = true;
        let quiesced = self.ctrl.failure().is_some_and(|f| f.quiesced);
        let err = self.failed_error();
        let mut n = 0;
        for (i, r) in self.reqs.iter_mut().enumerate() {
            let Some(r) = r.take() else { continue };
            let mut buf = r.req.buf;
            if !quiesced {
                std::mem::forget(buf.take());
            }
            self.free_reqs.push(i as u32);
            out(Completion {
                tag: r.req.tag,
                op: r.req.op,
                offset_bytes: r.req.offset_bytes,
                result: Err(err.clone()),
                buf,
            });
            n += 1;
        }
        for (i, c) in self.cmds.iter_mut().enumerate() {
            if c.busy {
                c.busy = false;
                self.free_cmds.push(i as u16);
            }
        }
        self.unkicked.clear();
        n
    }

    /// Advance the coarse clock and fail the device if a command has been
    /// in flight for longer than the timeout.
    fn check_timeouts(&mut self) {
        let now = Instant::now();
        // An epoch lasts half the timeout; a command announced in epoch e is
        // overdue once three more have begun (1.5 to 2 timeouts in flight
        // at most, never less than one).
        if now.duration_since(self.epoch_start) >= self.timeout / 2 {
            self.epoch += 1;
            self.epoch_start = now;
        }
        let overdue = self
            .cmds
            .iter()
            .enumerate()
            .find(|(_, c)| c.busy && c.epoch.saturating_add(3) <= self.epoch);
        if let Some((slot, c)) = overdue {
            let op = self.reqs[c.req as usize]
                .as_ref()
                .map(|r| (r.req.op, r.req.offset_bytes));
            let reason = format!(
                "queue {} command {:#x} ({op:?}) did not complete within {} ms",
                self.qid(),
                self.cid(slot as u16),
                self.timeout.as_millis()
            );
            self.ctrl.fail(reason);
        }
    }

    fn finish_command(&mut self, slot: usize, status: super::spec::Status) -> Option<Completion> {
        let cmd = &mut self.cmds[slot];
        cmd.busy = false;
        cmd.gen = cmd.gen.wrapping_add(1);
        let ri = cmd.req as usize;
        self.free_cmds.push(slot as u16);
        let r = self.reqs[ri].as_mut().expect("a busy command's request");
        if !status.is_success() && r.error.is_none() {
            let (what, errno) = status.decode();
            tracing::warn!(
                "{} nsid {}: {:?} at {:#x}: {what} (status {:#x})",
                self.ctrl.name(),
                self.nsid,
                r.req.op,
                r.req.offset_bytes,
                status.code()
            );
            r.error = Some(DevError::Io {
                op: r.req.op,
                offset: r.req.offset_bytes,
                errno,
            });
        }
        r.commands_left -= 1;
        if r.commands_left > 0 {
            return None;
        }
        let r = self.reqs[ri].take().expect("checked above");
        self.free_reqs.push(ri as u32);
        Some(Completion {
            tag: r.req.tag,
            op: r.req.op,
            offset_bytes: r.req.offset_bytes,
            result: r.error.map_or(Ok(()), Err),
            buf: r.req.buf,
        })
    }
}

impl QueueBackend for NvmeQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.depth - self.free_reqs.len()
    }

    fn push(&mut self, req: IoRequest) -> Result<(), Rejected> {
        if self.ctrl.is_failed() {
            let error = self.failed_error();
            return Err(Rejected { error, req });
        }
        let full = |req| {
            Err(Rejected {
                error: DevError::QueueFull { depth: self.depth },
                req,
            })
        };
        let Some(&ri) = self.free_reqs.last() else {
            return full(req);
        };
        if req.op == IoOp::Discard && !self.dsm {
            let error = DevError::Unsupported {
                op: IoOp::Discard,
                dev: self.ctrl.name().to_string(),
            };
            return Err(Rejected { error, req });
        }
        let (iova, len) = match req.op {
            IoOp::Flush | IoOp::Discard => (0, 0),
            IoOp::Read | IoOp::Write => {
                let buf = req
                    .buf
                    .as_ref()
                    .expect("checked: reads and writes carry a buffer");
                let vaddr = buf.as_ptr() as usize + req.buf_offset as usize;
                let len = req.len_bytes as usize;
                let Some(iova) = self.translate(vaddr, len) else {
                    let error = DevError::Setup(format!(
                        "{}: buffer {buf:?} is not in a DMA pool registered with this queue",
                        self.ctrl.name()
                    ));
                    return Err(Rejected { error, req });
                };
                (iova, len)
            }
        };
        let ncmds = if len == 0 {
            1
        } else {
            len.div_ceil(self.max_cmd_bytes)
        };
        debug_assert!(ncmds <= self.max_commands_per_req);
        if ncmds > self.free_cmds.len() || ncmds as u32 > self.rings().sq_free() {
            return full(req);
        }
        self.free_reqs.pop();
        let (op, offset) = (req.op, req.offset_bytes);
        let discard_blocks = req.len_bytes >> self.lba_shift;
        self.reqs[ri as usize] = Some(Req {
            req,
            commands_left: ncmds as u32,
            error: None,
        });
        for i in 0..ncmds {
            let slot = self.free_cmds.pop().expect("checked above");
            let cmd = &mut self.cmds[usize::from(slot)];
            debug_assert!(!cmd.busy);
            cmd.busy = true;
            cmd.req = ri;
            // Not yet announced: it can't time out before kick stamps it.
            cmd.epoch = u64::MAX;
            let mut sqe = if op == IoOp::Flush {
                SqEntry {
                    opcode: nvm::FLUSH,
                    nsid: self.nsid,
                    ..Default::default()
                }
            } else if op == IoOp::Discard {
                let lists = self.prp_lists.as_ref().expect("live until drop");
                let list_off = usize::from(slot) * PAGE;
                let range = DsmRange {
                    attributes: 0,
                    nlb: discard_blocks,
                    slba: offset >> self.lba_shift,
                };
                lists.write(list_off, range);
                self.stats.discards += 1;
                SqEntry::dsm_deallocate(self.nsid, 1, lists.iova() + list_off as u64)
            } else {
                let at = i * self.max_cmd_bytes;
                let n = (len - at).min(self.max_cmd_bytes);
                let list_off = usize::from(slot) * PAGE;
                let lists = self.prp_lists.as_ref().expect("live until drop");
                let list_iova = lists.iova() + list_off as u64;
                let mut wrote_list = false;
                let (prp1, prp2) = build_prps(
                    iova + at as u64,
                    n,
                    &mut |k, prp| {
                        wrote_list = true;
                        lists.write(list_off + k * 8, prp.to_le());
                    },
                    list_iova,
                );
                if wrote_list {
                    self.stats.prp_lists += 1;
                }
                let opcode = if op == IoOp::Read {
                    nvm::READ
                } else {
                    nvm::WRITE
                };
                let slba = (offset + at as u64) >> self.lba_shift;
                SqEntry::rw(
                    opcode,
                    self.nsid,
                    slba,
                    (n >> self.lba_shift) as u32,
                    prp1,
                    prp2,
                )
            };
            sqe.cid = self.cid(slot);
            let pushed = self.rings_mut().push(&sqe);
            assert!(pushed, "SQ space was checked");
            self.unkicked.push(slot);
            self.stats.commands += 1;
        }
        Ok(())
    }

    fn kick(&mut self) -> Result<(), DevError> {
        if self.ctrl.is_failed() {
            return Err(self.failed_error());
        }
        if self.unkicked.is_empty() {
            return Ok(());
        }
        for &slot in &self.unkicked {
            self.cmds[usize::from(slot)].epoch = self.epoch;
        }
        self.unkicked.clear();
        let rings = &mut self.rings.as_mut().expect("live").0;
        rings.ring_sq(self.ctrl.regs());
        Ok(())
    }

    fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        if self.ctrl.is_failed() {
            return self.drain_failed(out);
        }
        if self.in_flight() == 0 {
            return 0;
        }
        let mut done = 0;
        let mut taken = std::mem::take(&mut self.reaped);
        let room = taken.capacity();
        let rings = &mut self.rings.as_mut().expect("live").0;
        rings.poll(self.ctrl.regs(), room, &mut |c| taken.push(c));
        for c in taken.drain(..) {
            match self.slot_of(c.cid) {
                Some(slot) => {
                    if let Some(comp) = self.finish_command(slot, c.status()) {
                        out(comp);
                        done += 1;
                    }
                }
                None => {
                    self.stats.stale_completions += 1;
                    tracing::error!(
                        "{}: queue {}: completion for command id {:#x} not in flight",
                        self.ctrl.name(),
                        self.qid(),
                        c.cid
                    );
                }
            }
        }
        self.reaped = taken;
        if self.in_flight() > 0 {
            self.polls_since_check += 1;
            if self.polls_since_check >= TIMEOUT_CHECK_EVERY {
                self.polls_since_check = 0;
                self.check_timeouts();
                if self.ctrl.is_failed() {
                    return self.drain_failed(out);
                }
            }
        }
        done
    }

    fn set_completion_eventfd(&mut self, eventfd: RawFd) -> bool {
        // Without interrupts (the default) queues are only polled, and the
        // reactor keeps polling while requests are in flight.
        let qid = self.qid();
        if !self.ctrl.has_vector(qid) {
            return false;
        }
        match self.ctrl.route_interrupt(qid, eventfd) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}; polling only");
                false
            }
        }
    }
}

impl Drop for NvmeQueue {
    fn drop(&mut self) {
        // The controller may still be reading or writing our buffers: wait
        // for every in-flight request (bounded by the timeout, which fails
        // the device and so ends the wait).
        let _ = self.kick();
        while self.in_flight() > 0 {
            self.reap(&mut |_| {});
            std::hint::spin_loop();
        }
        if let Some((rings, pool)) = self.rings.take() {
            self.ctrl.delete_io_queue(rings, pool);
        }
        self.prp_lists = None;
        for p in std::mem::take(&mut self.mapped) {
            self.ctrl.unmap_pool(&p);
        }
    }
}
