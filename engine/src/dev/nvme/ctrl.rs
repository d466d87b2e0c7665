//! An NVMe controller: bring-up (disable, admin queue, enable, honouring
//! CAP.TO, CAP.DSTRD, CAP.MQES), admin commands (Identify, Set Features,
//! I/O queue creation and deletion), DMA mapping of pools, failure (a lost
//! command disables the controller so it stops touching memory), and
//! shutdown through CC.SHN on drop.
//!
//! The controller is reached through a [`Transport`]: VFIO on real (or
//! QEMU-emulated) hardware, the simulated controller in tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::mmio::{DmaRegion, IovaMap, Regs};
use super::ring::{Rings, CQ_ENTRY_BYTES, SQ_ENTRY_BYTES};
use super::spec::{admin, cc, csts, reg, Cap, IdentifyController, SqEntry, IDENTIFY_LEN};
use crate::dev::DevError;
use crate::dma::DmaPool;

/// How the backend reaches a controller's registers and IOMMU.
pub trait Transport: Send + Sync + std::fmt::Debug {
    fn regs(&self) -> &dyn Regs;
    /// Make the whole of `pool`'s memory addressable by the device at
    /// `iova`. The caller keeps the pool alive until `unmap_dma`.
    fn map_dma(&self, pool: &DmaPool, iova: u64) -> Result<(), String>;
    fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), String>;
    /// Turn on MSI-X with every vector routed nowhere (once, at bring-up,
    /// when interrupts are wanted). Returns the number of vectors.
    fn enable_msix(&self) -> Result<u32, String> {
        Err("this transport has no interrupts".into())
    }
    /// Signal `eventfd` when MSI-X vector `vector` fires.
    fn route_msix(&self, vector: u16, eventfd: std::os::fd::RawFd) -> Result<(), String> {
        let _ = (vector, eventfd);
        Err("this transport has no interrupts".into())
    }
}

/// Tunables; the defaults follow SPDK's NVMe driver where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeOptions {
    /// A command not completed within this time fails its request and the
    /// device (SPDK's default keep-alive/timeout is of this order).
    pub timeout_ms: u64,
    /// I/O queues to ask the controller for (Set Features, Number of
    /// Queues); one is used per queue pair.
    pub io_queues: u16,
    /// Upper bound on one I/O queue's entries (SPDK: 1024 by default).
    pub max_queue_entries: u32,
    /// Let queues signal the reactor's eventfd on completions (MSI-X
    /// through VFIO), so an idle reactor can sleep while requests are in
    /// flight. Off: queues are only polled (no interrupt costs at all).
    pub interrupts: bool,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            io_queues: 64,
            max_queue_entries: 1024,
            interrupts: false,
        }
    }
}

const ADMIN_ENTRIES: u32 = 32;
const PAGE: usize = 4096;

#[derive(Debug)]
struct Admin {
    rings: Rings,
    data: DmaRegion,
    next_cid: u16,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub reason: String,
    /// The controller was disabled and reported not ready: it no longer
    /// touches memory, so buffers of its failed commands can be reused.
    pub quiesced: bool,
}

#[derive(Debug)]
pub struct Controller {
    name: String,
    transport: Box<dyn Transport>,
    cap: Cap,
    opts: NvmeOptions,
    ident: IdentifyController,
    io_queues: u16,
    /// MSI-X vectors enabled (0: interrupts off).
    msix_vectors: u32,
    admin: Mutex<Admin>,
    iova: Mutex<IovaMap>,
    free_qids: Mutex<Vec<u16>>,
    failed: AtomicBool,
    failure: Mutex<Option<Failure>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Controller {
    /// Reset and enable the controller, set up its admin queue and
    /// identify it.
    pub fn open(
        name: String,
        transport: Box<dyn Transport>,
        opts: NvmeOptions,
    ) -> Result<Controller, DevError> {
        let setup = |msg: String| DevError::Setup(format!("{name}: {msg}"));
        let regs = transport.regs();
        let cap_raw = regs.read64(reg::CAP);
        if cap_raw == u64::MAX {
            return Err(setup(
                "controller registers read all ones (device gone?)".into(),
            ));
        }
        let cap = Cap::decode(cap_raw);
        if !cap.nvm_command_set {
            return Err(setup(
                "controller does not support the NVM command set".into(),
            ));
        }
        if cap.min_page_size != PAGE {
            return Err(setup(format!(
                "controller's smallest memory page is {} bytes; only 4 KiB is supported",
                cap.min_page_size
            )));
        }
        // Disable, then wait for the controller to say it is not ready.
        let cur = regs.read32(reg::CC);
        if cur & cc::EN != 0 {
            regs.write32(reg::CC, cur & !cc::EN);
        }
        wait_csts(regs, csts::RDY, 0, cap.timeout_ms)
            .map_err(|s| setup(format!("disabling: {s}")))?;

        let mut iova = IovaMap::new();
        let pool = DmaPool::new(PAGE, 3).map_err(|e| setup(e.to_string()))?;
        let base = iova.next_iova(PAGE * 3);
        transport
            .map_dma(&pool, base)
            .map_err(|e| setup(format!("mapping admin queue memory: {e}")))?;
        iova.insert(&pool, base);
        let region = |p: &DmaPool| {
            let b = p.try_get().expect("pool of 3 has 3 buffers");
            let at = base + u64::from(b.slot()) * PAGE as u64;
            DmaRegion::new(b, at)
        };
        let (sq, cq, data) = (region(&pool), region(&pool), region(&pool));
        debug_assert!(ADMIN_ENTRIES as usize * SQ_ENTRY_BYTES <= PAGE);
        let rings = Rings::new(
            0,
            ADMIN_ENTRIES,
            sq,
            cq,
            cap.sq_doorbell(0),
            cap.cq_doorbell(0),
        );
        regs.write32(reg::AQA, (ADMIN_ENTRIES - 1) << 16 | (ADMIN_ENTRIES - 1));
        regs.write64(reg::ASQ, rings.sq_iova());
        regs.write64(reg::ACQ, rings.cq_iova());
        regs.write32(
            reg::CC,
            cc::EN | cc::IOSQES_64 | cc::IOCQES_16 | cc::mps(PAGE.trailing_zeros()),
        );
        wait_csts(regs, csts::RDY, csts::RDY, cap.timeout_ms)
            .map_err(|s| setup(format!("enabling: {s}")))?;
        // We poll; no interrupts.
        regs.write32(reg::INTMS, u32::MAX);

        let mut ctrl = Controller {
            name,
            transport,
            cap,
            opts,
            ident: IdentifyController::parse(&[0; IDENTIFY_LEN]),
            io_queues: 0,
            msix_vectors: 0,
            admin: Mutex::new(Admin {
                rings,
                data,
                next_cid: 0,
            }),
            iova: Mutex::new(iova),
            free_qids: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        };
        let id = ctrl.identify(admin::CNS_CONTROLLER, 0)?;
        ctrl.ident = IdentifyController::parse(&id);
        let want = u32::from(opts.io_queues.max(1)) - 1;
        let got = ctrl.admin_cmd(SqEntry {
            opcode: admin::SET_FEATURES,
            cdw10: admin::FEAT_NUM_QUEUES,
            cdw11: want << 16 | want,
            ..Default::default()
        })?;
        // 0-based counts of submission and completion queues granted.
        let granted = (got & 0xffff).min(got >> 16) + 1;
        ctrl.io_queues = granted.min(want + 1).min(u32::from(u16::MAX) - 1) as u16;
        *lock(&ctrl.free_qids) = (1..=ctrl.io_queues).rev().collect();
        if opts.interrupts {
            match ctrl.transport.enable_msix() {
                Ok(n) => ctrl.msix_vectors = n,
                Err(e) => tracing::warn!("{}: no interrupts, polling only: {e}", ctrl.name),
            }
        }
        tracing::info!(
            "{}: {} {} fw {}, mdts {}, {} I/O queues, CAP.TO {} ms, doorbell stride {}",
            ctrl.name,
            ctrl.ident.model,
            ctrl.ident.serial,
            ctrl.ident.firmware,
            ctrl.ident.mdts,
            ctrl.io_queues,
            cap.timeout_ms,
            cap.doorbell_stride
        );
        Ok(ctrl)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    pub fn options(&self) -> NvmeOptions {
        self.opts
    }

    pub fn identity(&self) -> &IdentifyController {
        &self.ident
    }

    pub fn regs(&self) -> &dyn Regs {
        self.transport.regs()
    }

    /// The largest transfer of one command (MDTS), in bytes; None when the
    /// controller sets no limit.
    pub fn max_command_bytes(&self) -> Option<usize> {
        (self.ident.mdts != 0).then(|| self.cap.min_page_size << u32::from(self.ident.mdts).min(20))
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    /// Mark the controller failed and disable it so it stops reading and
    /// writing memory. Idempotent; the first reason wins.
    pub fn fail(&self, reason: String) {
        let mut f = lock(&self.failure);
        if f.is_some() {
            return;
        }
        tracing::error!("{}: failing the device: {reason}", self.name);
        self.failed.store(true, Ordering::Release);
        let regs = self.regs();
        let cur = regs.read32(reg::CC);
        regs.write32(reg::CC, cur & !cc::EN);
        let quiesced = wait_csts(regs, csts::RDY, 0, self.cap.timeout_ms).is_ok();
        if !quiesced {
            tracing::error!(
                "{}: controller did not stop within {} ms; its buffers are leaked",
                self.name,
                self.cap.timeout_ms
            );
        }
        *f = Some(Failure { reason, quiesced });
    }

    fn failed_error(&self) -> DevError {
        let reason = self
            .failure()
            .map(|f| f.reason)
            .unwrap_or_else(|| "failed".into());
        DevError::Failed(format!("{}: {reason}", self.name))
    }

    /// Make `pool` addressable by the device: mapped once however many
    /// queues use it, kept alive and mapped until the last of them calls
    /// `unmap_pool`.
    pub fn map_pool(&self, pool: &DmaPool) -> Result<u64, DevError> {
        let mut map = lock(&self.iova);
        if let Some(iova) = map.acquire(pool) {
            return Ok(iova);
        }
        let (_, len) = pool.region();
        let iova = map.next_iova(len);
        self.transport
            .map_dma(pool, iova)
            .map_err(|e| DevError::Setup(format!("{}: mapping a DMA pool: {e}", self.name)))?;
        map.insert(pool, iova);
        Ok(iova)
    }

    /// A user of `pool` is done with it (its commands have completed, or
    /// the controller was stopped); the last one unmaps it. Unmapping comes
    /// first, so the pool's memory can't be freed while the device can
    /// still reach it.
    pub fn unmap_pool(&self, pool: &DmaPool) {
        let released = lock(&self.iova).release(pool);
        if let Some((iova, len, pool)) = released {
            if let Err(e) = self.transport.unmap_dma(iova, len) {
                tracing::warn!("{}: unmapping {iova:#x}+{len:#x}: {e}", self.name);
                // Keep the memory: the device may still be able to reach it.
                std::mem::forget(pool);
            }
        }
    }

    /// Run one admin command to completion; returns its result dword.
    pub fn admin_cmd(&self, sqe: SqEntry) -> Result<u32, DevError> {
        let mut a = lock(&self.admin);
        self.admin_locked(&mut a, sqe)
    }

    fn admin_locked(&self, a: &mut Admin, mut sqe: SqEntry) -> Result<u32, DevError> {
        if self.is_failed() {
            return Err(self.failed_error());
        }
        let cid = a.next_cid;
        a.next_cid = a.next_cid.wrapping_add(1);
        sqe.cid = cid;
        let regs = self.regs();
        assert!(
            a.rings.push(&sqe),
            "admin queue is used one command at a time"
        );
        a.rings.ring_sq(regs);
        let deadline = Instant::now() + Duration::from_millis(self.opts.timeout_ms);
        let mut result = None;
        loop {
            a.rings.poll(regs, usize::MAX, &mut |c| {
                if c.cid == cid {
                    result = Some(c);
                } else {
                    tracing::warn!("{}: stray admin completion cid {}", self.name, c.cid);
                }
            });
            if let Some(c) = result {
                let st = c.status();
                if !st.is_success() {
                    return Err(DevError::Setup(format!(
                        "{}: admin command {:#04x} failed: {st}",
                        self.name, sqe.opcode
                    )));
                }
                return Ok(c.dw0);
            }
            if Instant::now() > deadline {
                let reason = format!(
                    "admin command {:#04x} did not complete within {} ms",
                    sqe.opcode, self.opts.timeout_ms
                );
                self.fail(reason);
                return Err(self.failed_error());
            }
            std::hint::spin_loop();
        }
    }

    /// Identify data structure `cns` (for namespace `nsid`).
    pub fn identify(&self, cns: u32, nsid: u32) -> Result<Box<[u8; IDENTIFY_LEN]>, DevError> {
        let mut a = lock(&self.admin);
        let sqe = SqEntry {
            opcode: admin::IDENTIFY,
            nsid,
            prp1: a.data.iova(),
            cdw10: cns,
            ..Default::default()
        };
        self.admin_locked(&mut a, sqe)?;
        let mut out = Box::new([0u8; IDENTIFY_LEN]);
        a.data.read_bytes(0, &mut out[..]);
        Ok(out)
    }

    /// The active namespace ids.
    pub fn active_namespaces(&self) -> Result<Vec<u32>, DevError> {
        let b = self.identify(admin::CNS_ACTIVE_NAMESPACES, 0)?;
        Ok(b.chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect())
    }

    /// The entries an I/O queue asking for `want` gets (CAP.MQES and the
    /// options bound it).
    pub fn io_queue_entries(&self, want: u32) -> u32 {
        want.clamp(2, self.cap.max_queue_entries)
            .min(self.opts.max_queue_entries.max(2))
    }

    /// Whether I/O queue `qid` has an MSI-X vector of its own.
    pub fn has_vector(&self, qid: u16) -> bool {
        u32::from(qid) < self.msix_vectors
    }

    /// Signal `eventfd` when queue `qid`'s completion queue gets entries.
    pub fn route_interrupt(&self, qid: u16, eventfd: std::os::fd::RawFd) -> Result<(), DevError> {
        if !self.has_vector(qid) {
            return Err(DevError::Setup(format!(
                "{}: queue {qid} has no interrupt vector",
                self.name
            )));
        }
        self.transport
            .route_msix(qid, eventfd)
            .map_err(|e| DevError::Setup(format!("{}: routing vector {qid}: {e}", self.name)))
    }

    /// Create an I/O completion and submission queue pair of `entries`
    /// (as given by `io_queue_entries`); returns its rings and the pool of
    /// their memory (give both back to `delete_io_queue`).
    pub fn create_io_queue(&self, entries: u32) -> Result<(Rings, DmaPool), DevError> {
        let entries = self.io_queue_entries(entries);
        let Some(qid) = lock(&self.free_qids).pop() else {
            return Err(DevError::Setup(format!(
                "{}: all {} I/O queues are in use",
                self.name, self.io_queues
            )));
        };
        let made = self.make_io_queue(qid, entries);
        if made.is_err() {
            lock(&self.free_qids).push(qid);
        }
        made
    }

    fn make_io_queue(&self, qid: u16, entries: u32) -> Result<(Rings, DmaPool), DevError> {
        let len = (entries as usize * SQ_ENTRY_BYTES).div_ceil(PAGE) * PAGE;
        debug_assert!(entries as usize * CQ_ENTRY_BYTES <= len);
        let pool = DmaPool::new(len, 2).map_err(|e| DevError::Setup(e.to_string()))?;
        let base = self.map_pool(&pool)?;
        let region = || {
            let b = pool.try_get().expect("pool of 2 has 2 buffers");
            let at = base + u64::from(b.slot()) * len as u64;
            DmaRegion::new(b, at)
        };
        let (sq, cq) = (region(), region());
        let rings = Rings::new(
            qid,
            entries,
            sq,
            cq,
            self.cap.sq_doorbell(qid),
            self.cap.cq_doorbell(qid),
        );
        let size = (entries - 1) << 16 | u32::from(qid);
        let cq = self.admin_cmd(SqEntry {
            opcode: admin::CREATE_IO_CQ,
            prp1: rings.cq_iova(),
            cdw10: size,
            // Physically contiguous; with MSI-X, interrupts on vector qid
            // (routed to an eventfd only when a reactor asks).
            cdw11: if self.has_vector(qid) {
                u32::from(qid) << 16 | 1 << 1 | 1
            } else {
                1
            },
            ..Default::default()
        });
        if let Err(e) = cq {
            drop(rings);
            self.unmap_pool(&pool);
            return Err(e);
        }
        let sq = self.admin_cmd(SqEntry {
            opcode: admin::CREATE_IO_SQ,
            prp1: rings.sq_iova(),
            cdw10: size,
            cdw11: u32::from(qid) << 16 | 1, // its CQ, contiguous
            ..Default::default()
        });
        if let Err(e) = sq {
            let _ = self.delete_cq(qid);
            drop(rings);
            self.unmap_pool(&pool);
            return Err(e);
        }
        Ok((rings, pool))
    }

    fn delete_cq(&self, qid: u16) -> Result<u32, DevError> {
        self.admin_cmd(SqEntry {
            opcode: admin::DELETE_IO_CQ,
            cdw10: u32::from(qid),
            ..Default::default()
        })
    }

    /// Delete an idle I/O queue pair, unmap its memory, free its id.
    pub fn delete_io_queue(&self, rings: Rings, pool: DmaPool) {
        let qid = rings.qid();
        if !self.is_failed() {
            let r = self
                .admin_cmd(SqEntry {
                    opcode: admin::DELETE_IO_SQ,
                    cdw10: u32::from(qid),
                    ..Default::default()
                })
                .and_then(|_| self.delete_cq(qid));
            if let Err(e) = r {
                tracing::warn!("{}: deleting I/O queue {qid}: {e}", self.name);
            }
        }
        drop(rings);
        self.unmap_pool(&pool);
        lock(&self.free_qids).push(qid);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if !self.is_failed() {
            // Normal shutdown: the controller flushes its caches and says
            // when it is done.
            let regs = self.transport.regs();
            let cur = regs.read32(reg::CC);
            regs.write32(reg::CC, (cur & !cc::SHN_MASK) | cc::SHN_NORMAL);
            let ms = self.cap.timeout_ms.max(10_000);
            if let Err(e) = wait_csts(regs, csts::SHST_MASK, csts::SHST_COMPLETE, ms) {
                tracing::warn!("{}: shutdown: {e}", self.name);
            }
        }
        // Unmapping first means the device can't reach a pool's memory by
        // the time the pool is freed.
        let regions = lock(&self.iova).drain();
        for (iova, len) in regions {
            if let Err(e) = self.transport.unmap_dma(iova, len) {
                tracing::warn!("{}: unmapping {iova:#x}+{len:#x}: {e}", self.name);
            }
        }
    }
}

/// Wait until `CSTS & mask == want`, up to `timeout_ms`; fails early on a
/// fatal controller status.
fn wait_csts(regs: &dyn Regs, mask: u32, want: u32, timeout_ms: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let s = regs.read32(reg::CSTS);
        if s == u32::MAX {
            return Err("controller status reads all ones (device gone?)".into());
        }
        if s & mask == want {
            return Ok(());
        }
        if s & csts::CFS != 0 && want != 0 {
            return Err(format!("controller fatal status (CSTS {s:#x})"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "CSTS {s:#x} did not reach {want:#x} (mask {mask:#x}) within {timeout_ms} ms"
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
