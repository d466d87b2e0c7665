//! A simulated NVMe controller in memory, for fast tests of the queue
//! logic and bring-up without VFIO or QEMU. It implements the register
//! interface (CC/CSTS/AQA/ASQ/ACQ, doorbells at stride 4), fetches
//! submission entries from DMA memory through its own IOVA map, walks PRPs
//! (refusing misaligned or unmapped ones), executes admin and NVM commands
//! against namespaces held in RAM, and posts completions with phase tags.
//!
//! Dataset Management with the deallocate attribute zeroes its ranges
//! (Identify says so: ONCS bit 2, DLFEAT = 001b), unless turned off with
//! [`SimNvme::set_dsm`].
//!
//! Tests steer it: pause processing, hold completions and release them in
//! reverse, lose commands (never complete them), inject status codes, post
//! a stray completion, and read its counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ctrl::Transport;
use super::mmio::{signal_eventfd, IovaMap, Regs};
use super::spec::{admin, cc, csts, nvm, reg, CqEntry, DsmRange, SqEntry, Status, IDENTIFY_LEN};
use crate::dma::DmaPool;

const PAGE: u64 = 4096;

#[derive(Debug)]
struct SimNs {
    data: Vec<u8>,
    lba_shift: u32,
    metadata_bytes: u16,
}

#[derive(Debug)]
struct SimSq {
    iova: u64,
    entries: u32,
    head: u32,
    tail: u32,
    cqid: u16,
}

#[derive(Debug)]
struct SimCq {
    iova: u64,
    entries: u32,
    tail: u32,
    head: u32,
    phase: bool,
    backlog: Vec<CqEntry>,
    /// Interrupt vector, when created with interrupts enabled.
    vector: Option<u16>,
}

/// Counters of what the simulated controller saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub sq_doorbells: u64,
    pub cq_doorbells: u64,
    pub io_commands: u64,
    pub flushes: u64,
    /// Dataset Management commands with the deallocate attribute, and the
    /// blocks they deallocated.
    pub deallocates: u64,
    pub deallocated_blocks: u64,
    /// I/O commands that used a PRP list.
    pub prp_list_commands: u64,
    /// Commands whose PRPs pointed outside mapped memory or were
    /// misaligned (must stay 0).
    pub bad_dma: u64,
    /// Commands whose id was already in flight on their queue (must stay 0).
    pub cid_conflicts: u64,
    /// Most commands outstanding on one queue at once.
    pub max_outstanding: u64,
    pub enables: u64,
    pub shutdowns: u64,
    pub maps: u64,
    pub unmaps: u64,
    pub interrupts: u64,
}

#[derive(Debug)]
struct Inject {
    opcode: u8,
    status: Status,
    times: u32,
}

#[derive(Debug)]
struct SimState {
    cap: u64,
    mdts: u8,
    dsm: bool,
    /// Every deallocated range, (nsid, slba, nlb), in order.
    dsm_log: Vec<(u32, u64, u32)>,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    iova: IovaMap,
    ns: Vec<SimNs>,
    sqs: HashMap<u16, SimSq>,
    cqs: HashMap<u16, SimCq>,
    paused: bool,
    hold: bool,
    /// Completions held back: (cq id, entry).
    held: Vec<(u16, CqEntry)>,
    lose_io: u32,
    lost: Vec<(u16, u16)>,
    /// MSI-X: enabled vectors and the eventfd each is routed to.
    msix: Option<Vec<i32>>,
    injects: Vec<Inject>,
    stats: SimStats,
}

/// A handle on a simulated controller; clones share it.
#[derive(Clone, Debug)]
pub struct SimNvme {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
struct SimRegs {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug)]
struct SimTransport {
    regs: SimRegs,
}

impl SimNvme {
    /// A controller with one namespace per (capacity_bytes, lba_shift).
    pub fn new(namespaces: &[(u64, u32)]) -> SimNvme {
        Self::with_limits(namespaces, 1024, 5)
    }

    /// `max_queue_entries` is CAP.MQES + 1, `mdts` the Identify field.
    pub fn with_limits(namespaces: &[(u64, u32)], max_queue_entries: u32, mdts: u8) -> SimNvme {
        assert!((2..=65536).contains(&max_queue_entries));
        // MQES, CQR, TO = 1 (500 ms), DSTRD 0, CSS NVM, MPSMIN 0.
        let cap = u64::from(max_queue_entries - 1) | 1 << 16 | 1 << 24 | 1 << 37;
        let ns = namespaces
            .iter()
            .map(|&(bytes, lba_shift)| SimNs {
                data: vec![0; bytes as usize],
                lba_shift,
                metadata_bytes: 0,
            })
            .collect();
        SimNvme {
            state: Arc::new(Mutex::new(SimState {
                cap,
                mdts,
                dsm: true,
                dsm_log: Vec::new(),
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                iova: IovaMap::new(),
                ns,
                sqs: HashMap::new(),
                cqs: HashMap::new(),
                paused: false,
                hold: false,
                held: Vec::new(),
                lose_io: 0,
                lost: Vec::new(),
                msix: None,
                injects: Vec::new(),
                stats: SimStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn transport(&self) -> Box<dyn Transport> {
        Box::new(SimTransport {
            regs: SimRegs {
                state: self.state.clone(),
            },
        })
    }

    /// Format namespace `nsid` with metadata (which the backend refuses).
    pub fn set_metadata_bytes(&self, nsid: u32, bytes: u16) {
        self.lock().ns[nsid as usize - 1].metadata_bytes = bytes;
    }

    /// Whether Identify Controller advertises Dataset Management (and the
    /// command is accepted); on by default, as on QEMU's NVMe.
    pub fn set_dsm(&self, on: bool) {
        self.lock().dsm = on;
    }

    /// Every range deallocated so far: (nsid, slba, nlb).
    pub fn dsm_log(&self) -> Vec<(u32, u64, u32)> {
        self.lock().dsm_log.clone()
    }

    /// While paused, doorbells are recorded but nothing is processed.
    pub fn pause(&self, paused: bool) {
        self.lock().paused = paused;
    }

    /// Process every queue's pending entries now.
    pub fn run(&self) {
        let mut s = self.lock();
        let qids: Vec<u16> = s.sqs.keys().copied().collect();
        for q in qids {
            s.process_sq(q);
        }
    }

    /// While holding, completions are kept back until released.
    pub fn hold_completions(&self, hold: bool) {
        self.lock().hold = hold;
    }

    /// Post the held completions, last-executed first when `reverse`.
    pub fn release_completions(&self, reverse: bool) {
        let mut s = self.lock();
        let mut held = std::mem::take(&mut s.held);
        if reverse {
            held.reverse();
        }
        for (cq, e) in held {
            s.post(cq, e);
        }
    }

    /// The next `n` I/O commands are fetched and never completed.
    pub fn lose_next_io(&self, n: u32) {
        self.lock().lose_io = n;
    }

    /// The next `times` commands with `opcode` complete with `status`.
    pub fn inject(&self, opcode: u8, status: Status, times: u32) {
        self.lock().injects.push(Inject {
            opcode,
            status,
            times,
        });
    }

    /// Post a completion for a command id that was never submitted.
    pub fn post_stray(&self, qid: u16, cid: u16) {
        let mut s = self.lock();
        let e = CqEntry {
            cid,
            sq_id: qid,
            sq_head: s.sqs.get(&qid).map_or(0, |q| q.head as u16),
            ..Default::default()
        };
        s.post(qid, e);
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    pub fn is_enabled(&self) -> bool {
        self.lock().csts & csts::RDY != 0
    }

    /// I/O queues the controller has now (not counting the admin queue).
    pub fn io_queue_count(&self) -> usize {
        self.lock().sqs.keys().filter(|&&q| q != 0).count()
    }

    /// Read namespace contents directly.
    pub fn read_ns(&self, nsid: u32, offset: u64, out: &mut [u8]) {
        let s = self.lock();
        let d = &s.ns[nsid as usize - 1].data;
        out.copy_from_slice(&d[offset as usize..offset as usize + out.len()]);
    }
}

impl Transport for SimTransport {
    fn regs(&self) -> &dyn Regs {
        &self.regs
    }

    fn map_dma(&self, pool: &DmaPool, iova: u64) -> Result<(), String> {
        let mut s = self.regs.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.iova.next_iova(1) != iova {
            return Err(format!("unexpected IOVA {iova:#x}"));
        }
        s.iova.insert(pool, iova);
        s.stats.maps += 1;
        Ok(())
    }

    fn enable_msix(&self) -> Result<u32, String> {
        let mut s = self.regs.state.lock().unwrap_or_else(|e| e.into_inner());
        s.msix = Some(vec![-1; 17]);
        Ok(17)
    }

    fn route_msix(&self, vector: u16, eventfd: std::os::fd::RawFd) -> Result<(), String> {
        let mut s = self.regs.state.lock().unwrap_or_else(|e| e.into_inner());
        let v = s
            .msix
            .as_mut()
            .and_then(|m| m.get_mut(usize::from(vector)))
            .ok_or("no such vector")?;
        *v = eventfd;
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, _len: usize) -> Result<(), String> {
        let mut s = self.regs.state.lock().unwrap_or_else(|e| e.into_inner());
        s.stats.unmaps += 1;
        if s.iova.remove_iova(iova) {
            Ok(())
        } else {
            Err(format!("IOVA {iova:#x} is not mapped"))
        }
    }
}

impl Regs for SimRegs {
    fn read32(&self, offset: usize) -> u32 {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match offset {
            reg::CAP => s.cap as u32,
            o if o == reg::CAP + 4 => (s.cap >> 32) as u32,
            reg::VS => 0x0001_0400,
            reg::CC => s.cc,
            reg::CSTS => s.csts,
            reg::AQA => s.aqa,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match offset {
            reg::CC => s.write_cc(value),
            reg::AQA => s.aqa = value,
            reg::ASQ => s.asq = s.asq & !0xffff_ffff | u64::from(value),
            o if o == reg::ASQ + 4 => s.asq = s.asq & 0xffff_ffff | u64::from(value) << 32,
            reg::ACQ => s.acq = s.acq & !0xffff_ffff | u64::from(value),
            o if o == reg::ACQ + 4 => s.acq = s.acq & 0xffff_ffff | u64::from(value) << 32,
            o if o >= reg::DOORBELLS => {
                let idx = (o - reg::DOORBELLS) / 4;
                let qid = (idx / 2) as u16;
                if idx.is_multiple_of(2) {
                    s.stats.sq_doorbells += 1;
                    if let Some(q) = s.sqs.get_mut(&qid) {
                        assert!(value < q.entries, "SQ tail {value} past the queue");
                        q.tail = value;
                    }
                    if !s.paused {
                        s.process_sq(qid);
                    }
                } else {
                    s.stats.cq_doorbells += 1;
                    if let Some(q) = s.cqs.get_mut(&qid) {
                        assert!(value < q.entries, "CQ head {value} past the queue");
                        q.head = value;
                    }
                    s.flush_backlog(qid);
                }
            }
            _ => {}
        }
    }
}

impl SimState {
    fn write_cc(&mut self, value: u32) {
        let was = self.cc;
        self.cc = value;
        if was & cc::EN == 0 && value & cc::EN != 0 {
            let sq_entries = (self.aqa & 0xfff) + 1;
            let cq_entries = (self.aqa >> 16 & 0xfff) + 1;
            self.sqs.insert(
                0,
                SimSq {
                    iova: self.asq,
                    entries: sq_entries,
                    head: 0,
                    tail: 0,
                    cqid: 0,
                },
            );
            self.cqs.insert(0, SimCq::new(self.acq, cq_entries));
            self.csts = csts::RDY;
            self.stats.enables += 1;
        } else if was & cc::EN != 0 && value & cc::EN == 0 {
            self.sqs.clear();
            self.cqs.clear();
            self.held.clear();
            self.lost.clear();
            self.csts = 0;
        }
        if value & cc::SHN_MASK != 0 && was & cc::SHN_MASK == 0 {
            self.csts = self.csts & !csts::SHST_MASK | csts::SHST_COMPLETE;
            self.stats.shutdowns += 1;
        }
    }

    fn post(&mut self, cqid: u16, e: CqEntry) {
        if let Some(q) = self.cqs.get_mut(&cqid) {
            q.backlog.push(e);
        }
        self.flush_backlog(cqid);
    }

    fn flush_backlog(&mut self, cqid: u16) {
        let Some(q) = self.cqs.get_mut(&cqid) else {
            return;
        };
        let mut posted = false;
        while !q.backlog.is_empty() && (q.tail + 1) % q.entries != q.head {
            posted = true;
            let mut e = q.backlog.remove(0);
            e.status = e.status & !1 | u16::from(q.phase);
            let at = q.iova + u64::from(q.tail) * 16;
            let ok = self.iova.device_write(at, bytemuck::bytes_of(&e));
            assert!(ok, "CQ memory at {at:#x} is not mapped");
            q.tail += 1;
            if q.tail == q.entries {
                q.tail = 0;
                q.phase = !q.phase;
            }
        }
        // An interrupt after the entries are in memory, as hardware does.
        let vector = q.vector;
        if let (true, Some(v), Some(m)) = (posted, vector, self.msix.as_ref()) {
            if let Some(&fd) = m.get(usize::from(v)) {
                if fd >= 0 {
                    signal_eventfd(fd);
                    self.stats.interrupts += 1;
                }
            }
        }
    }

    fn process_sq(&mut self, qid: u16) {
        loop {
            let Some(q) = self.sqs.get_mut(&qid) else {
                return;
            };
            if q.head == q.tail {
                return;
            }
            let at = q.iova + u64::from(q.head) * 64;
            q.head = (q.head + 1) % q.entries;
            let (head, cqid) = (q.head, q.cqid);
            let outstanding = (q.tail + q.entries - q.head) % q.entries;
            let mut sqe = SqEntry::default();
            assert!(
                self.iova.device_read(at, bytemuck::bytes_of_mut(&mut sqe)),
                "SQ memory at {at:#x} is not mapped"
            );
            let in_device = self.held.iter().filter(|(c, _)| *c == cqid).count()
                + self.lost.iter().filter(|(q, _)| *q == qid).count();
            self.stats.max_outstanding = self
                .stats
                .max_outstanding
                .max(in_device as u64 + outstanding as u64 + 1);
            let conflict = self
                .held
                .iter()
                .any(|(c, e)| *c == cqid && e.sq_id == qid && e.cid == sqe.cid)
                || self.lost.contains(&(qid, sqe.cid));
            let (status, dw0) = if conflict {
                self.stats.cid_conflicts += 1;
                (Status::new(0, 0x03), 0)
            } else if qid == 0 {
                self.admin(&sqe)
            } else {
                if self.lose_io > 0 {
                    self.lose_io -= 1;
                    self.lost.push((qid, sqe.cid));
                    continue;
                }
                (self.io(&sqe), 0)
            };
            let e = CqEntry {
                dw0,
                dw1: 0,
                sq_head: head as u16,
                sq_id: qid,
                cid: sqe.cid,
                status: status.0 << 1,
            };
            if self.hold && qid != 0 {
                self.held.push((cqid, e));
            } else {
                self.post(cqid, e);
            }
        }
    }

    fn injected(&mut self, opcode: u8) -> Option<Status> {
        let i = self
            .injects
            .iter()
            .position(|f| f.opcode == opcode && f.times > 0)?;
        self.injects[i].times -= 1;
        Some(self.injects[i].status)
    }

    fn identify(&self, sqe: &SqEntry) -> Result<Vec<u8>, Status> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        match sqe.cdw10 & 0xff {
            admin::CNS_CONTROLLER => {
                b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                let field = |b: &mut [u8], s: &str| {
                    b.fill(b' ');
                    b[..s.len()].copy_from_slice(s.as_bytes());
                };
                field(&mut b[4..24], "SIM0001");
                field(&mut b[24..64], "scoutfs simulated nvme");
                field(&mut b[64..72], "1.0");
                b[77] = self.mdts;
                b[516..520].copy_from_slice(&(self.ns.len() as u32).to_le_bytes());
                if self.dsm {
                    b[520] |= 1 << 2; // ONCS: Dataset Management
                }
                b[525] = 1;
            }
            admin::CNS_NAMESPACE => {
                let ns = self
                    .ns
                    .get((sqe.nsid as usize).wrapping_sub(1))
                    .ok_or(Status::new(0, 0x0b))?;
                let blocks = ns.data.len() as u64 >> ns.lba_shift;
                for at in [0, 8, 16] {
                    b[at..at + 8].copy_from_slice(&blocks.to_le_bytes());
                }
                b[33] = 1; // DLFEAT: deallocated blocks read as zeros
                let lbaf = ns.lba_shift << 16 | u32::from(ns.metadata_bytes);
                b[128..132].copy_from_slice(&lbaf.to_le_bytes());
            }
            admin::CNS_ACTIVE_NAMESPACES => {
                for i in 0..self.ns.len() {
                    b[i * 4..i * 4 + 4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
                }
            }
            _ => return Err(Status::new(0, 0x02)),
        }
        Ok(b)
    }

    fn admin(&mut self, sqe: &SqEntry) -> (Status, u32) {
        let qid = sqe.cdw10 as u16;
        let size = (sqe.cdw10 >> 16) + 1;
        let max = (self.cap & 0xffff) as u32 + 1;
        match sqe.opcode {
            admin::IDENTIFY => match self.identify(sqe) {
                Ok(b) => {
                    if !self.iova.device_write(sqe.prp1, &b) {
                        self.stats.bad_dma += 1;
                        return (Status::new(0, 0x04), 0);
                    }
                    (Status::SUCCESS, 0)
                }
                Err(s) => (s, 0),
            },
            admin::SET_FEATURES if sqe.cdw10 & 0xff == admin::FEAT_NUM_QUEUES => {
                let n = (sqe.cdw11 & 0xffff).min(15);
                (Status::SUCCESS, n << 16 | n)
            }
            admin::CREATE_IO_CQ => {
                if qid == 0 || self.cqs.contains_key(&qid) {
                    return (Status::new(1, 0x01), 0);
                }
                if size < 2 || size > max {
                    return (Status::new(1, 0x02), 0);
                }
                if !sqe.prp1.is_multiple_of(PAGE) || !self.mapped(sqe.prp1, u64::from(size) * 16) {
                    self.stats.bad_dma += 1;
                    return (Status::new(0, 0x04), 0);
                }
                let mut cq = SimCq::new(sqe.prp1, size);
                if sqe.cdw11 & 2 != 0 {
                    cq.vector = Some((sqe.cdw11 >> 16) as u16);
                }
                self.cqs.insert(qid, cq);
                (Status::SUCCESS, 0)
            }
            admin::CREATE_IO_SQ => {
                let cqid = (sqe.cdw11 >> 16) as u16;
                if qid == 0 || self.sqs.contains_key(&qid) {
                    return (Status::new(1, 0x01), 0);
                }
                if !self.cqs.contains_key(&cqid) || cqid == 0 {
                    return (Status::new(1, 0x00), 0);
                }
                if size < 2 || size > max {
                    return (Status::new(1, 0x02), 0);
                }
                if !sqe.prp1.is_multiple_of(PAGE) || !self.mapped(sqe.prp1, u64::from(size) * 64) {
                    self.stats.bad_dma += 1;
                    return (Status::new(0, 0x04), 0);
                }
                self.sqs.insert(
                    qid,
                    SimSq {
                        iova: sqe.prp1,
                        entries: size,
                        head: 0,
                        tail: 0,
                        cqid,
                    },
                );
                (Status::SUCCESS, 0)
            }
            admin::DELETE_IO_SQ => match self.sqs.remove(&qid) {
                Some(_) if qid != 0 => (Status::SUCCESS, 0),
                _ => (Status::new(1, 0x01), 0),
            },
            admin::DELETE_IO_CQ => {
                if self.sqs.values().any(|s| s.cqid == qid) {
                    return (Status::new(1, 0x0c), 0);
                }
                match self.cqs.remove(&qid) {
                    Some(_) if qid != 0 => (Status::SUCCESS, 0),
                    _ => (Status::new(1, 0x01), 0),
                }
            }
            _ => (Status::new(0, 0x01), 0),
        }
    }

    fn mapped(&self, iova: u64, len: u64) -> bool {
        let mut probe = vec![0u8; len as usize];
        self.iova.device_read(iova, &mut probe)
    }

    /// The (iova, len) pieces a command's PRPs describe.
    fn prp_segments(&mut self, prp1: u64, prp2: u64, len: u64) -> Result<Vec<(u64, u64)>, Status> {
        let bad_offset = Status::new(0, 0x13);
        if !prp1.is_multiple_of(4) {
            return Err(bad_offset);
        }
        let first = len.min(PAGE - prp1 % PAGE);
        let mut segs = vec![(prp1, first)];
        let mut rest = len - first;
        if rest == 0 {
            return Ok(segs);
        }
        if rest <= PAGE {
            if !prp2.is_multiple_of(PAGE) {
                return Err(bad_offset);
            }
            segs.push((prp2, rest));
            return Ok(segs);
        }
        self.stats.prp_list_commands += 1;
        let mut list = prp2;
        if !list.is_multiple_of(8) {
            return Err(bad_offset);
        }
        while rest > 0 {
            let mut entry = [0u8; 8];
            if !self.iova.device_read(list, &mut entry) {
                return Err(Status::new(0, 0x04));
            }
            let e = u64::from_le_bytes(entry);
            let last_in_page = (list + 8).is_multiple_of(PAGE);
            if last_in_page && rest > PAGE {
                list = e; // chained to the next list page
                continue;
            }
            if !e.is_multiple_of(PAGE) {
                return Err(bad_offset);
            }
            let n = rest.min(PAGE);
            segs.push((e, n));
            rest -= n;
            list += 8;
        }
        Ok(segs)
    }

    fn io(&mut self, sqe: &SqEntry) -> Status {
        self.stats.io_commands += 1;
        if let Some(s) = self.injected(sqe.opcode) {
            return s;
        }
        let Some(ns) = self.ns.get((sqe.nsid as usize).wrapping_sub(1)) else {
            return Status::new(0, 0x0b);
        };
        let shift = ns.lba_shift;
        let blocks = ns.data.len() as u64 >> shift;
        match sqe.opcode {
            nvm::FLUSH => {
                self.stats.flushes += 1;
                Status::SUCCESS
            }
            nvm::READ | nvm::WRITE => {
                let slba = u64::from(sqe.cdw10) | u64::from(sqe.cdw11) << 32;
                let nlb = u64::from(sqe.cdw12 & 0xffff) + 1;
                if slba.checked_add(nlb).is_none_or(|end| end > blocks) {
                    return Status::new(0, 0x80);
                }
                let len = nlb << shift;
                if self.mdts != 0 && len > PAGE << self.mdts {
                    return Status::new(0, 0x02);
                }
                let segs = match self.prp_segments(sqe.prp1, sqe.prp2, len) {
                    Ok(s) => s,
                    Err(s) => {
                        self.stats.bad_dma += 1;
                        return s;
                    }
                };
                let mut pos = (slba << shift) as usize;
                let nsi = sqe.nsid as usize - 1;
                for (iova, n) in segs {
                    let n = n as usize;
                    let ok = if sqe.opcode == nvm::READ {
                        let data = &self.ns[nsi].data[pos..pos + n];
                        self.iova.device_write(iova, data)
                    } else {
                        let mut tmp = vec![0u8; n];
                        let ok = self.iova.device_read(iova, &mut tmp);
                        self.ns[nsi].data[pos..pos + n].copy_from_slice(&tmp);
                        ok
                    };
                    if !ok {
                        self.stats.bad_dma += 1;
                        return Status::new(0, 0x04);
                    }
                    pos += n;
                }
                Status::SUCCESS
            }
            nvm::DATASET_MANAGEMENT if self.dsm => self.deallocate(sqe, blocks),
            _ => Status::new(0, 0x01),
        }
    }

    /// Dataset Management: fetch NR + 1 ranges through the PRPs and, with
    /// the deallocate attribute, zero them.
    fn deallocate(&mut self, sqe: &SqEntry, blocks: u64) -> Status {
        let nr = (sqe.cdw10 & 0xff) as usize + 1;
        let len = (nr * std::mem::size_of::<DsmRange>()) as u64;
        let segs = match self.prp_segments(sqe.prp1, sqe.prp2, len) {
            Ok(s) => s,
            Err(s) => {
                self.stats.bad_dma += 1;
                return s;
            }
        };
        let mut list = Vec::with_capacity(len as usize);
        for (iova, n) in segs {
            let mut tmp = vec![0u8; n as usize];
            if !self.iova.device_read(iova, &mut tmp) {
                self.stats.bad_dma += 1;
                return Status::new(0, 0x04);
            }
            list.extend_from_slice(&tmp);
        }
        if sqe.cdw11 & nvm::DSM_ATTR_DEALLOCATE == 0 {
            return Status::SUCCESS; // hints only
        }
        let ranges: Vec<DsmRange> = list
            .chunks_exact(16)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        if ranges.iter().any(|r| {
            r.slba
                .checked_add(u64::from(r.nlb))
                .is_none_or(|end| end > blocks)
        }) {
            return Status::new(0, 0x80);
        }
        let nsi = sqe.nsid as usize - 1;
        let shift = self.ns[nsi].lba_shift;
        for r in ranges {
            let (at, n) = ((r.slba << shift) as usize, (r.nlb as usize) << shift);
            self.ns[nsi].data[at..at + n].fill(0);
            self.stats.deallocated_blocks += u64::from(r.nlb);
            self.dsm_log.push((sqe.nsid, r.slba, r.nlb));
        }
        self.stats.deallocates += 1;
        Status::SUCCESS
    }
}

impl SimCq {
    fn new(iova: u64, entries: u32) -> SimCq {
        SimCq {
            iova,
            entries,
            tail: 0,
            head: 0,
            phase: true,
            backlog: Vec::new(),
            vector: None,
        }
    }
}
