//! The `spdk` backend (cargo feature `spdk`): SPDK's NVMe driver drives the
//! controller; the engine owns one I/O qpair per queue pair and polls it
//! from the reactor. Devices are named `spdk://DOMAIN:BUS:DEV.FN/NSID`.
//!
//! - The SPDK environment (DPDK EAL) is initialised once per process.
//! - Controllers are attached by PCI address with `spdk_nvme_connect` and
//!   shared by the namespaces opened on them; detached when the last goes.
//! - Qpairs are created with `delay_cmd_submit`, so submissions are batched
//!   and the doorbell is written in `kick` (one
//!   `spdk_nvme_qpair_process_completions` call), as with our own driver.
//! - DMA buffers: the engine's DMA pools, registered with SPDK's memory map
//!   (`spdk_mem_register`) once per pool while a queue uses them. SPDK
//!   needs 2 MiB-aligned hugepage memory for that, so pools must have
//!   hugepages (reserve them: `echo N > /proc/sys/vm/nr_hugepages`).
//! - Completion callbacks run only inside `process_completions`, on the
//!   queue's thread, and record (slot, status) into the queue's table.
//!
//! All of SPDK's `unsafe` is in this file, each call with its SAFETY note.

mod ffi;

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::nvme::normalize_bdf;
use super::nvme::spec::{CqEntry, Status};
use super::{
    BlockDev, Completion, DevError, Discard, Geometry, IoOp, IoRequest, QueueBackend, QueueConfig,
    Rejected,
};
use crate::dma::DmaPool;

pub const SCHEME: &str = "spdk://";
const HUGE: usize = 2 << 20;
const MAX_TRANSFER: u32 = 2 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this build can run SPDK (it was linked against it).
pub fn linked() -> bool {
    cfg!(spdk_linked)
}

static ENV: OnceLock<Result<(), String>> = OnceLock::new();

fn env_init() -> Result<(), DevError> {
    let r = ENV.get_or_init(|| {
        if !linked() {
            return Err("this build has the spdk backend but was not linked against SPDK".into());
        }
        // SAFETY: a zeroed spdk_env_opts is a valid value for
        // spdk_env_opts_init to fill (it reads opts_size first).
        let mut opts: ffi::spdk_env_opts = unsafe { std::mem::zeroed() };
        opts.opts_size = std::mem::size_of::<ffi::spdk_env_opts>();
        // SAFETY: opts is a valid, sized spdk_env_opts.
        unsafe { ffi::spdk_env_opts_init(&mut opts) };
        opts.name = c"scoutfs".as_ptr();
        // SAFETY: opts is initialised; the strings it points to are static.
        let rc = unsafe { ffi::spdk_env_init(&opts) };
        if rc != 0 {
            return Err(format!("spdk_env_init failed: {rc}"));
        }
        Ok(())
    });
    r.clone().map_err(DevError::Setup)
}

/// `spdk://BDF/NSID`.
pub fn parse_addr(s: &str) -> Result<(String, u32), DevError> {
    let bad = |why: &str| DevError::Open {
        path: s.to_string(),
        msg: format!("{why}; expected spdk://DOMAIN:BUS:DEV.FN/NSID"),
    };
    let rest = s
        .strip_prefix(SCHEME)
        .ok_or_else(|| bad("not an spdk:// address"))?;
    let (bdf, ns) = rest.split_once('/').unwrap_or((rest, "1"));
    let bdf = normalize_bdf(bdf).ok_or_else(|| bad("bad PCI address"))?;
    let nsid = ns
        .parse::<u32>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("bad namespace id"))?;
    Ok((bdf, nsid))
}

struct Ctrlr {
    ptr: *mut ffi::spdk_nvme_ctrlr,
    /// Boxed: SPDK's timeout callback holds its address.
    timeout: Box<TimeoutState>,
}

/// Set by SPDK's timeout callback: the controller was failed because a
/// command outlived the timeout.
struct TimeoutState {
    timeout_ms: u64,
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl TimeoutState {
    fn reason(&self) -> Option<String> {
        self.failed
            .load(Ordering::Acquire)
            .then(|| lock(&self.reason).clone().unwrap_or_default())
    }
}

extern "C" fn on_timeout(
    arg: *mut c_void,
    ctrlr: *mut ffi::spdk_nvme_ctrlr,
    _qpair: *mut ffi::spdk_nvme_qpair,
    cid: u16,
) {
    // SAFETY: arg is the TimeoutState boxed in the Ctrlr that registered
    // this callback; SPDK calls it only while the controller is attached,
    // and the Ctrlr detaches before dropping the box.
    let state = unsafe { &*(arg as *const TimeoutState) };
    if state.failed.load(Ordering::Acquire) {
        return;
    }
    *lock(&state.reason) = Some(format!(
        "command {cid:#x} did not complete within {} ms; controller failed",
        state.timeout_ms
    ));
    state.failed.store(true, Ordering::Release);
    tracing::error!("spdk: command {cid:#x} timed out; failing the controller");
    // SAFETY: ctrlr is the live controller SPDK passes in. Failed, it takes
    // no more commands and its qpairs report -ENXIO; the requests in flight
    // are finished with errors by their queues (their buffers leaked, since
    // the device was not stopped).
    unsafe { ffi::spdk_nvme_ctrlr_fail(ctrlr) };
}

// SAFETY: SPDK's controller object may be used from any thread for the
// calls we make on it (namespace getters, qpair allocation and freeing are
// protected by the controller's own lock); qpairs are used by one thread
// at a time.
unsafe impl Send for Ctrlr {}
// SAFETY: as above.
unsafe impl Sync for Ctrlr {}

impl Drop for Ctrlr {
    fn drop(&mut self) {
        // SAFETY: ptr came from spdk_nvme_connect and every qpair and
        // namespace handle on it is gone (they hold an Arc to us).
        unsafe { ffi::spdk_nvme_detach(self.ptr) };
    }
}

static CTRLRS: Mutex<Option<HashMap<String, Weak<Ctrlr>>>> = Mutex::new(None);

fn connect(bdf: &str, timeout_ms: u64) -> Result<Arc<Ctrlr>, DevError> {
    env_init()?;
    let mut reg = lock(&CTRLRS);
    let map = reg.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(bdf).and_then(Weak::upgrade) {
        return Ok(c);
    }
    let open_err = |msg: String| DevError::Open {
        path: format!("{SCHEME}{bdf}"),
        msg,
    };
    // SAFETY: a zeroed transport id is valid input for the parser.
    let mut trid: ffi::spdk_nvme_transport_id = unsafe { std::mem::zeroed() };
    let s = CString::new(format!("trtype:PCIe traddr:{bdf}")).expect("no NUL");
    // SAFETY: trid and s are valid for the call.
    if unsafe { ffi::spdk_nvme_transport_id_parse(&mut trid, s.as_ptr()) } != 0 {
        return Err(open_err("bad transport id".into()));
    }
    // SAFETY: trid is initialised; null opts means defaults.
    let ptr = unsafe { ffi::spdk_nvme_connect(&trid, std::ptr::null(), 0) };
    if ptr.is_null() {
        return Err(open_err(
            "spdk_nvme_connect failed (is it bound to vfio-pci, are hugepages reserved?)".into(),
        ));
    }
    let timeout = Box::new(TimeoutState {
        timeout_ms,
        failed: AtomicBool::new(false),
        reason: Mutex::new(None),
    });
    let arg = &*timeout as *const TimeoutState as *mut c_void;
    let us = timeout_ms.saturating_mul(1000);
    // SAFETY: ptr is live; arg points into the box the Ctrlr keeps until
    // after it detaches.
    unsafe { ffi::spdk_nvme_ctrlr_register_timeout_callback(ptr, us, us, Some(on_timeout), arg) };
    let c = Arc::new(Ctrlr { ptr, timeout });
    map.insert(bdf.to_string(), Arc::downgrade(&c));
    Ok(c)
}

/// A namespace driven by SPDK.
pub struct SpdkDev {
    ctrlr: Arc<Ctrlr>,
    ns: *mut ffi::spdk_nvme_ns,
    geom: Geometry,
    name: String,
}

// SAFETY: the namespace handle is only read through SPDK's getters and
// passed to command submission on a qpair owned by one thread.
unsafe impl Send for SpdkDev {}
// SAFETY: as above.
unsafe impl Sync for SpdkDev {}

impl std::fmt::Debug for SpdkDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdkDev")
            .field("name", &self.name)
            .field("geometry", &self.geom)
            .finish()
    }
}

impl SpdkDev {
    /// Open with the default command timeout (30 s).
    pub fn open(addr: &str) -> Result<SpdkDev, DevError> {
        Self::open_with(addr, 30_000)
    }

    /// Open; a command outliving `timeout_ms` fails the controller (the
    /// first open of a controller in the process sets it).
    pub fn open_with(addr: &str, timeout_ms: u64) -> Result<SpdkDev, DevError> {
        let (bdf, nsid) = parse_addr(addr)?;
        let ctrlr = connect(&bdf, timeout_ms)?;
        let open_err = |msg: String| DevError::Open {
            path: addr.to_string(),
            msg,
        };
        // SAFETY: ctrlr.ptr is a live attached controller.
        let ns = unsafe { ffi::spdk_nvme_ctrlr_get_ns(ctrlr.ptr, nsid) };
        // SAFETY: ns is checked for null before use; the getters only read.
        if ns.is_null() || !unsafe { ffi::spdk_nvme_ns_is_active(ns) } {
            return Err(open_err(format!("no active namespace {nsid}")));
        }
        // SAFETY: ns is an active namespace of a live controller.
        let (lbs, sectors, md, pi) = unsafe {
            (
                ffi::spdk_nvme_ns_get_sector_size(ns),
                ffi::spdk_nvme_ns_get_num_sectors(ns),
                ffi::spdk_nvme_ns_get_md_size(ns),
                ffi::spdk_nvme_ns_get_pi_type(ns),
            )
        };
        if md != 0 || pi != 0 {
            return Err(open_err(format!(
                "formatted with {md} metadata bytes per block (protection type {pi}); \
                 only formats without metadata are supported"
            )));
        }
        // SAFETY: as above.
        let (flags, dealloc_reads) = unsafe {
            (
                ffi::spdk_nvme_ns_get_flags(ns),
                ffi::spdk_nvme_ns_get_dealloc_logical_block_read_value(ns),
            )
        };
        // SPDK sets DEALLOCATE_SUPPORTED from ONCS's DSM bit, and reports
        // DLFEAT's read value.
        let discard = if flags & ffi::SPDK_NVME_NS_DEALLOCATE_SUPPORTED == 0 {
            Discard::Unsupported
        } else if dealloc_reads == ffi::SPDK_NVME_DEALLOC_READ_00 {
            Discard::Zeroes
        } else {
            Discard::Undefined
        };
        let geom = Geometry {
            logical_block_size: lbs,
            capacity_bytes: sectors * u64::from(lbs),
            max_transfer_bytes: MAX_TRANSFER,
            discard,
        };
        Ok(SpdkDev {
            ctrlr,
            ns,
            geom,
            name: format!("{SCHEME}{bdf}/{nsid}"),
        })
    }
}

/// Pools registered with SPDK's memory map, by pool id: (users, addr, len).
type Registered = HashMap<u32, (u32, usize, usize)>;
static REGISTERED: Mutex<Option<Registered>> = Mutex::new(None);

fn register_pool(pool: &DmaPool) -> Result<(usize, usize), DevError> {
    if !pool.uses_hugepages() {
        return Err(DevError::Setup(
            "the spdk backend needs DMA pools in hugepages; reserve some \
             (/proc/sys/vm/nr_hugepages)"
                .into(),
        ));
    }
    let mut reg = lock(&REGISTERED);
    let map = reg.get_or_insert_with(HashMap::new);
    if let Some(e) = map.get_mut(&pool.id()) {
        e.0 += 1;
        return Ok((e.1, e.2));
    }
    let (p, len) = pool.region();
    // Hugepage pools are whole 2 MiB pages, 2 MiB aligned.
    let len = len.div_ceil(HUGE) * HUGE;
    // SAFETY: p..p+len is the pool's hugepage mapping (rounded to the
    // mapping's own 2 MiB granularity), which the queue keeps alive
    // (`pools`) until it unregisters it.
    let rc = unsafe { ffi::spdk_mem_register(p.cast(), len) };
    if rc != 0 {
        return Err(DevError::Setup(format!("spdk_mem_register: {rc}")));
    }
    map.insert(pool.id(), (1, p as usize, len));
    Ok((p as usize, len))
}

fn unregister_pool(pool: &DmaPool) {
    let mut reg = lock(&REGISTERED);
    let Some(map) = reg.as_mut() else { return };
    let Some(e) = map.get_mut(&pool.id()) else {
        return;
    };
    e.0 -= 1;
    if e.0 == 0 {
        let (_, p, len) = map.remove(&pool.id()).expect("present");
        // SAFETY: the same range registered above; no command uses it.
        unsafe { ffi::spdk_mem_unregister(p as *mut c_void, len) };
    }
}

/// What a completion callback needs: where to record, and which slot.
struct SlotCtx {
    done: *mut Vec<(u32, u16)>,
    slot: u32,
}

extern "C" fn io_done(arg: *mut c_void, cpl: *const ffi::spdk_nvme_cpl) {
    // SAFETY: arg is the &SlotCtx given at submission, alive in the queue's
    // boxed slice until the queue drops (which waits for every command);
    // callbacks run inside process_completions on the queue's thread, so
    // nothing else touches `done` meanwhile. cpl is SPDK's 16-byte NVMe
    // completion entry, the same layout as CqEntry.
    unsafe {
        let ctx = &*(arg as *const SlotCtx);
        let cqe = std::ptr::read_unaligned(cpl as *const CqEntry);
        (*ctx.done).push((ctx.slot, cqe.status));
    }
}

struct SpdkQueue {
    name: String,
    ctrlr: Arc<Ctrlr>,
    ns: *mut ffi::spdk_nvme_ns,
    lba_shift: u32,
    /// The namespace takes Dataset Management deallocate.
    discard: bool,
    qpair: *mut ffi::spdk_nvme_qpair,
    depth: usize,
    slots: Vec<Option<IoRequest>>,
    free: Vec<u32>,
    ctx: Box<[SlotCtx]>,
    /// Boxed so its address, which every SlotCtx holds, survives moves of
    /// the queue.
    #[allow(clippy::box_collection)]
    done: Box<Vec<(u32, u16)>>,
    windows: Vec<(usize, usize)>,
    pools: Vec<DmaPool>,
    failed: Option<String>,
}

// SAFETY: the qpair and namespace pointers are used only by the thread that
// owns the queue at the time (QueuePair is moved, never shared).
unsafe impl Send for SpdkQueue {}

impl BlockDev for SpdkDev {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn open_queue_backend(&self, cfg: &QueueConfig) -> Result<Box<dyn QueueBackend>, DevError> {
        let depth = cfg.depth as usize;
        let mut windows = Vec::new();
        let mut pools = Vec::new();
        for p in &cfg.pools {
            match register_pool(p) {
                Ok(w) => {
                    windows.push(w);
                    pools.push(p.clone());
                }
                Err(e) => {
                    pools.iter().for_each(unregister_pool);
                    return Err(e);
                }
            }
        }
        // SAFETY: a zeroed opts struct is valid input for the defaults call.
        let mut opts: ffi::spdk_nvme_io_qpair_opts = unsafe { std::mem::zeroed() };
        let sz = std::mem::size_of::<ffi::spdk_nvme_io_qpair_opts>();
        // SAFETY: ctrlr is live, opts is sized sz.
        unsafe { ffi::spdk_nvme_ctrlr_get_default_io_qpair_opts(self.ctrlr.ptr, &mut opts, sz) };
        opts.__bindgen_anon_1.delay_cmd_submit = true;
        // Room for requests SPDK splits into several commands.
        opts.io_queue_requests = opts.io_queue_requests.max(cfg.depth * 8);
        // SAFETY: ctrlr is live; opts initialised above.
        let qpair = unsafe { ffi::spdk_nvme_ctrlr_alloc_io_qpair(self.ctrlr.ptr, &opts, sz) };
        if qpair.is_null() {
            pools.iter().for_each(unregister_pool);
            return Err(DevError::Setup(format!(
                "{}: allocating an I/O qpair failed",
                self.name
            )));
        }
        let mut done = Box::new(Vec::with_capacity(depth));
        let done_ptr: *mut Vec<(u32, u16)> = &mut *done;
        let ctx = (0..depth as u32)
            .map(|slot| SlotCtx {
                done: done_ptr,
                slot,
            })
            .collect();
        Ok(Box::new(SpdkQueue {
            name: self.name.clone(),
            ctrlr: self.ctrlr.clone(),
            ns: self.ns,
            lba_shift: self.geom.logical_block_size.trailing_zeros(),
            discard: self.geom.supports_discard(),
            qpair,
            depth,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            ctx,
            done,
            windows,
            pools,
            failed: None,
        }))
    }
}

impl SpdkQueue {
    fn in_window(&self, p: usize, len: usize) -> bool {
        self.windows
            .iter()
            .any(|&(a, l)| p >= a && p + len <= a + l)
    }

    fn process(&mut self) {
        // SAFETY: the qpair is ours; callbacks (io_done) record into
        // self.done, which they reach through the raw pointer while we hold
        // no reference to it.
        let rc = unsafe { ffi::spdk_nvme_qpair_process_completions(self.qpair, 0) };
        if self.failed.is_none() {
            if let Some(why) = self.ctrlr.timeout.reason() {
                self.failed = Some(format!("{}: {why}", self.name));
            } else if rc < 0 {
                self.failed = Some(format!("{}: qpair failed ({rc})", self.name));
                tracing::error!("{}", self.failed.as_deref().unwrap_or_default());
            }
        }
    }

    /// After a failure: finish every request still in flight with the
    /// error. The device was not stopped, so their buffers are leaked
    /// rather than reused.
    fn drain_failed(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        let Some(why) = self.failed.clone() else {
            return 0;
        };
        let mut n = 0;
        for slot in 0..self.slots.len() {
            let Some(mut req) = self.slots[slot].take() else {
                continue;
            };
            std::mem::forget(req.buf.take());
            self.free.push(slot as u32);
            out(Completion {
                tag: req.tag,
                op: req.op,
                offset_bytes: req.offset_bytes,
                result: Err(DevError::Failed(why.clone())),
                buf: None,
            });
            n += 1;
        }
        n
    }
}

impl QueueBackend for SpdkQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.depth - self.free.len()
    }

    fn push(&mut self, mut req: IoRequest) -> Result<(), Rejected> {
        if let Some(f) = &self.failed {
            return Err(Rejected {
                error: DevError::Failed(f.clone()),
                req,
            });
        }
        if req.op == IoOp::Discard && !self.discard {
            let error = DevError::Unsupported {
                op: IoOp::Discard,
                dev: self.name.clone(),
            };
            return Err(Rejected { error, req });
        }
        let Some(slot) = self.free.pop() else {
            return Err(Rejected {
                error: DevError::QueueFull { depth: self.depth },
                req,
            });
        };
        let arg = &self.ctx[slot as usize] as *const SlotCtx as *mut c_void;
        let lba = req.offset_bytes >> self.lba_shift;
        let nlb = req.len_bytes >> self.lba_shift;
        let rc = match req.op {
            // SAFETY: ns and qpair are live; arg outlives the command.
            IoOp::Flush => unsafe {
                ffi::spdk_nvme_ns_cmd_flush(self.ns, self.qpair, Some(io_done), arg)
            },
            IoOp::Discard => {
                // SPDK copies the range list into its own DMA memory, so
                // it may live on the stack.
                let range = ffi::spdk_nvme_dsm_range {
                    attributes: ffi::spdk_nvme_dsm_range__bindgen_ty_1 { raw: 0 },
                    length: nlb,
                    starting_lba: lba,
                };
                // SAFETY: ns and qpair are live; range is read before the
                // call returns; arg outlives the command.
                unsafe {
                    ffi::spdk_nvme_ns_cmd_dataset_management(
                        self.ns,
                        self.qpair,
                        ffi::SPDK_NVME_DSM_ATTR_DEALLOCATE,
                        &range,
                        1,
                        Some(io_done),
                        arg,
                    )
                }
            }
            IoOp::Read | IoOp::Write => {
                let buf = req
                    .buf
                    .as_mut()
                    .expect("checked: reads and writes carry a buffer");
                // SAFETY: buf_offset + len was checked to lie in the buffer.
                let p = unsafe { buf.as_mut_ptr().add(req.buf_offset as usize) };
                if !self.in_window(p as usize, req.len_bytes as usize) {
                    self.free.push(slot);
                    let error = DevError::Setup(format!(
                        "{}: buffer is not in a DMA pool registered with this queue",
                        self.name
                    ));
                    return Err(Rejected { error, req });
                }
                // SAFETY: p..p+len is registered SPDK memory owned by the
                // request, which the queue holds until its completion.
                unsafe {
                    if req.op == IoOp::Read {
                        ffi::spdk_nvme_ns_cmd_read(
                            self.ns,
                            self.qpair,
                            p.cast(),
                            lba,
                            nlb,
                            Some(io_done),
                            arg,
                            0,
                        )
                    } else {
                        ffi::spdk_nvme_ns_cmd_write(
                            self.ns,
                            self.qpair,
                            p.cast(),
                            lba,
                            nlb,
                            Some(io_done),
                            arg,
                            0,
                        )
                    }
                }
            }
        };
        if rc != 0 {
            self.free.push(slot);
            let error = if rc == -libc::ENOMEM {
                DevError::QueueFull { depth: self.depth }
            } else {
                DevError::Io {
                    op: req.op,
                    offset: req.offset_bytes,
                    errno: -rc,
                }
            };
            return Err(Rejected { error, req });
        }
        self.slots[slot as usize] = Some(req);
        Ok(())
    }

    fn kick(&mut self) -> Result<(), DevError> {
        // With delay_cmd_submit, SPDK writes the doorbell for everything
        // queued when completions are processed; completions found now are
        // delivered by the next reap.
        if self.in_flight() > 0 {
            self.process();
        }
        match &self.failed {
            Some(f) => Err(DevError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        if self.in_flight() > 0 {
            self.process();
        }
        let done = std::mem::take(&mut *self.done);
        let n = done.len();
        for &(slot, status) in &done {
            let req = self.slots[slot as usize]
                .take()
                .expect("completion for a slot in flight");
            self.free.push(slot);
            let st = Status(status >> 1);
            let result = if st.is_success() {
                Ok(())
            } else {
                let (what, errno) = st.decode();
                tracing::warn!(
                    "{}: {:?} at {:#x}: {what}",
                    self.name,
                    req.op,
                    req.offset_bytes
                );
                Err(DevError::Io {
                    op: req.op,
                    offset: req.offset_bytes,
                    errno,
                })
            };
            out(Completion {
                tag: req.tag,
                op: req.op,
                offset_bytes: req.offset_bytes,
                result,
                buf: req.buf,
            });
        }
        // Keep the allocation for the next round.
        let mut done = done;
        done.clear();
        *self.done = done;
        n + self.drain_failed(out)
    }

    fn set_completion_eventfd(&mut self, _eventfd: RawFd) -> bool {
        false
    }
}

impl Drop for SpdkQueue {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(self.ctrlr.timeout.timeout_ms * 2);
        while self.in_flight() > 0 && Instant::now() < deadline {
            self.reap(&mut |_| {});
        }
        if self.in_flight() > 0 {
            tracing::error!(
                "{}: {} commands never completed; leaking",
                self.name,
                self.in_flight()
            );
            for s in self.slots.iter_mut() {
                std::mem::forget(s.take());
            }
            return;
        }
        // SAFETY: the qpair is idle and ours.
        unsafe { ffi::spdk_nvme_ctrlr_free_io_qpair(self.qpair) };
        self.pools.iter().for_each(unregister_pool);
    }
}
