//! Block devices as queue pairs.
//!
//! A [`BlockDev`] describes a device (its [`Geometry`]) and hands out queue
//! pairs, one per reactor core. A [`QueuePair`] takes reads, writes and
//! flushes of DMA buffers at byte offsets, and discards of byte ranges
//! (where [`Geometry::discard`] says the device takes them), and reports
//! their completions
//! when polled. Every request is checked against the geometry here, before
//! any backend sees it: a misaligned, out-of-range or zero-length request is
//! an error returned to the caller and never reaches the device.
//!
//! Backends implement [`QueueBackend`]: `mem` (RAM, fault injection, power
//! loss) and `uring` (io_uring, O_DIRECT). The trait assumes nothing of
//! io_uring: a backend queues entries (`push`), makes them visible to the
//! device in one batch (`kick`, a doorbell or a syscall) and reaps
//! completions from memory (`reap`); the userspace NVMe and SPDK backends fit
//! the same four calls.

pub mod mem;
pub mod nvme;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod uring;

use std::fmt;
use std::os::fd::RawFd;

use crate::dma::{DmaBuf, DmaPool};

/// What a device looks like to its users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Offsets, lengths and buffer addresses must be multiples of this.
    pub logical_block_size: u32,
    pub capacity_bytes: u64,
    /// The largest single read or write (discards are not bounded by it:
    /// they move no data).
    pub max_transfer_bytes: u32,
    /// Whether the device takes [`IoOp::Discard`] and what reads of a
    /// discarded range return afterwards.
    pub discard: Discard,
}

impl Geometry {
    pub fn supports_discard(&self) -> bool {
        self.discard != Discard::Unsupported
    }
}

/// A device's answer to "can I tell you a range is unused?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Discards are refused before they reach the device
    /// (`DevError::Unsupported`).
    Unsupported,
    /// Once a discard completes, reads of the range return zeros.
    Zeroes,
    /// Reads of a discarded range may return the old data, zeros or
    /// anything else (NVMe deallocate without DLFEAT's zeros promise): the
    /// caller must not read a range it discarded before writing it again.
    Undefined,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    /// Tell the device a byte range is unused (NVMe deallocate, TRIM,
    /// hole punching). Durable like a write: only once a later flush
    /// completes may a crash not bring the old data back.
    Discard,
}

/// One request. Reads and writes move `len_bytes` between the device at
/// `offset_bytes` and `buf` starting at `buf_offset`. A flush has no buffer
/// and makes every write (and discard) completed before it was submitted
/// durable. A discard has no buffer and covers `len_bytes` at
/// `offset_bytes`.
#[derive(Debug)]
pub struct IoRequest {
    pub op: IoOp,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    pub buf: Option<DmaBuf>,
    pub buf_offset: u32,
    /// Returned unchanged in the completion.
    pub tag: u64,
}

impl IoRequest {
    pub fn read(offset_bytes: u64, len_bytes: u32, buf: DmaBuf, tag: u64) -> Self {
        Self {
            op: IoOp::Read,
            offset_bytes,
            len_bytes,
            buf: Some(buf),
            buf_offset: 0,
            tag,
        }
    }

    pub fn write(offset_bytes: u64, len_bytes: u32, buf: DmaBuf, tag: u64) -> Self {
        Self {
            op: IoOp::Write,
            offset_bytes,
            len_bytes,
            buf: Some(buf),
            buf_offset: 0,
            tag,
        }
    }

    pub fn flush(tag: u64) -> Self {
        Self {
            op: IoOp::Flush,
            offset_bytes: 0,
            len_bytes: 0,
            buf: None,
            buf_offset: 0,
            tag,
        }
    }

    /// Discard `len_bytes` at `offset_bytes`; only on devices whose
    /// geometry says they take discards.
    pub fn discard(offset_bytes: u64, len_bytes: u32, tag: u64) -> Self {
        Self {
            op: IoOp::Discard,
            offset_bytes,
            len_bytes,
            buf: None,
            buf_offset: 0,
            tag,
        }
    }

    pub fn at_buf_offset(mut self, buf_offset: u32) -> Self {
        self.buf_offset = buf_offset;
        self
    }
}

/// A finished request; the buffer comes back with it.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub op: IoOp,
    pub offset_bytes: u64,
    pub result: Result<(), DevError>,
    pub buf: Option<DmaBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignField {
    Offset,
    Length,
    Buffer,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DevError {
    #[error("{field:?} {value:#x} is not a multiple of the logical block size {align}")]
    Misaligned {
        field: AlignField,
        value: u64,
        align: u32,
    },
    #[error("request [{offset:#x}, +{len:#x}) ends past the device capacity {capacity:#x}")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("zero-length {0:?} request")]
    ZeroLength(IoOp),
    #[error("{0:?} request without a buffer")]
    NoBuffer(IoOp),
    #[error("flush request carries a buffer or a length")]
    FlushWithData,
    #[error("discard request carries a buffer")]
    DiscardWithBuffer,
    #[error("device {dev} does not support {op:?}")]
    Unsupported { op: IoOp, dev: String },
    #[error(
        "request of {len} bytes at buffer offset {buf_offset} overruns a {capacity}-byte buffer"
    )]
    BufferOverrun {
        buf_offset: u32,
        len: u32,
        capacity: usize,
    },
    #[error("request of {len} bytes exceeds the device's largest transfer {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("queue full ({depth} requests in flight)")]
    QueueFull { depth: usize },
    #[error("{op:?} at {offset:#x} failed: {errno_name} ({errno})", errno_name = errno_name(*.errno))]
    Io { op: IoOp, offset: u64, errno: i32 },
    #[error("short {op:?} at {offset:#x}: {done} of {len} bytes")]
    Short {
        op: IoOp,
        offset: u64,
        done: u32,
        len: u32,
    },
    #[error("device {0} has failed and takes no more requests")]
    Failed(String),
    #[error("opening {path}: {msg}")]
    Open { path: String, msg: String },
    #[error("setting up a queue: {0}")]
    Setup(String),
    #[error("{0} is in use by another engine")]
    Busy(String),
}

impl DevError {
    /// The errno a frontend should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DevError::Misaligned { .. }
            | DevError::ZeroLength(_)
            | DevError::NoBuffer(_)
            | DevError::FlushWithData
            | DevError::DiscardWithBuffer
            | DevError::BufferOverrun { .. }
            | DevError::TooLarge { .. } => libc::EINVAL,
            DevError::OutOfRange { .. } => libc::ERANGE,
            DevError::QueueFull { .. } => libc::EAGAIN,
            DevError::Unsupported { .. } => libc::EOPNOTSUPP,
            DevError::Io { errno, .. } => *errno,
            DevError::Short { .. } | DevError::Failed(_) | DevError::Setup(_) => libc::EIO,
            DevError::Open { .. } => libc::ENODEV,
            DevError::Busy(_) => libc::EBUSY,
        }
    }
}

fn errno_name(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// A request that was not queued, handed back with its buffer.
#[derive(Debug)]
pub struct Rejected {
    pub error: DevError,
    pub req: IoRequest,
}

/// Options for a new queue pair.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Most requests in flight at once.
    pub depth: u32,
    /// Pools whose buffers this queue's requests use; backends that can
    /// register memory (io_uring fixed buffers, VFIO DMA maps) do so once
    /// here. Buffers from other pools still work where the backend allows.
    pub pools: Vec<DmaPool>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            depth: 64,
            pools: Vec::new(),
        }
    }
}

/// A device: geometry plus a source of queue pairs.
pub trait BlockDev: Send + Sync + fmt::Debug {
    fn geometry(&self) -> Geometry;
    /// A short name for messages: a path, or `mem:N`.
    fn name(&self) -> String;
    fn open_queue_backend(&self, cfg: &QueueConfig) -> Result<Box<dyn QueueBackend>, DevError>;

    /// Claim the device for this process until this handle is dropped, so
    /// that a second engine on the same device is refused instead of
    /// corrupting it. `Busy` when someone else holds it.
    fn lock_exclusive(&self) -> Result<(), DevError> {
        Ok(())
    }
}

/// Open a checked queue pair on any device.
pub fn open_queue(dev: &dyn BlockDev, cfg: &QueueConfig) -> Result<QueuePair, DevError> {
    if cfg.depth == 0 {
        return Err(DevError::Setup("queue depth must be at least 1".into()));
    }
    Ok(QueuePair {
        geom: dev.geometry(),
        name: dev.name(),
        backend: dev.open_queue_backend(cfg)?,
    })
}

/// What a backend provides. Requests reaching `push` are already checked.
pub trait QueueBackend: Send {
    fn depth(&self) -> usize;
    fn in_flight(&self) -> usize;
    /// Queue one request; if it can't be queued, hand it back.
    fn push(&mut self, req: IoRequest) -> Result<(), Rejected>;
    /// Make every queued request visible to the device (one doorbell or
    /// syscall for the batch). A no-op when nothing is queued.
    fn kick(&mut self) -> Result<(), DevError>;
    /// Reap the completions available now, without blocking. Returns how
    /// many were reaped.
    fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize;
    /// Ask the device to signal `eventfd` when a completion arrives, so an
    /// idle reactor can sleep. Returns false when the backend can't: the
    /// reactor then keeps polling while requests are in flight.
    fn set_completion_eventfd(&mut self, eventfd: RawFd) -> bool;
}

/// A checked queue pair on one device.
pub struct QueuePair {
    geom: Geometry,
    name: String,
    backend: Box<dyn QueueBackend>,
}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("device", &self.name)
            .field("geometry", &self.geom)
            .field("in_flight", &self.backend.in_flight())
            .finish()
    }
}

/// A queue pair with its own pool of `count` buffers of `buf_size` bytes,
/// registered with it (the common set-up of the engine's I/O paths).
pub fn open_queue_with_pool(
    dev: &dyn BlockDev,
    buf_size: usize,
    count: usize,
    depth: u32,
) -> Result<(QueuePair, DmaPool), DevError> {
    let pool = DmaPool::new(buf_size, count).map_err(|e| DevError::Setup(e.to_string()))?;
    let qp = open_queue(
        dev,
        &QueueConfig {
            depth,
            pools: vec![pool.clone()],
        },
    )?;
    Ok((qp, pool))
}

/// Open a device as a user names it: `nvme://BDF/NSID` through VFIO,
/// `spdk://BDF/NSID` through SPDK (with feature `spdk`), any other name as
/// a file or block device through io_uring. For the tools and benchmarks
/// that accept any of them wherever a device path goes.
pub fn open_any(
    spec: &str,
    uring: uring::UringOptions,
) -> Result<std::sync::Arc<dyn BlockDev>, DevError> {
    #[cfg(feature = "spdk")]
    if spec.starts_with(spdk::SCHEME) {
        return Ok(std::sync::Arc::new(spdk::SpdkDev::open(spec)?));
    }
    if nvme::NvmeAddr::is_nvme(spec) {
        Ok(std::sync::Arc::new(nvme::NvmeDev::open(spec)?))
    } else {
        Ok(std::sync::Arc::new(uring::UringDev::open(spec, uring)?))
    }
}

/// Check a request against a device's geometry.
pub fn check_request(geom: &Geometry, req: &IoRequest) -> Result<(), DevError> {
    let lbs = u64::from(geom.logical_block_size);
    if req.op == IoOp::Flush {
        if req.buf.is_some() || req.len_bytes != 0 {
            return Err(DevError::FlushWithData);
        }
        return Ok(());
    }
    if req.len_bytes == 0 {
        return Err(DevError::ZeroLength(req.op));
    }
    let misaligned = |field, value: u64| DevError::Misaligned {
        field,
        value,
        align: geom.logical_block_size,
    };
    if !req.offset_bytes.is_multiple_of(lbs) {
        return Err(misaligned(AlignField::Offset, req.offset_bytes));
    }
    if !u64::from(req.len_bytes).is_multiple_of(lbs) {
        return Err(misaligned(AlignField::Length, u64::from(req.len_bytes)));
    }
    if req.op == IoOp::Discard {
        if req.buf.is_some() {
            return Err(DevError::DiscardWithBuffer);
        }
        return check_range(geom, req);
    }
    let Some(buf) = &req.buf else {
        return Err(DevError::NoBuffer(req.op));
    };
    let addr = buf.as_ptr() as u64 + u64::from(req.buf_offset);
    if !addr.is_multiple_of(lbs) {
        return Err(misaligned(AlignField::Buffer, addr));
    }
    if req.buf_offset as usize + req.len_bytes as usize > buf.capacity() {
        return Err(DevError::BufferOverrun {
            buf_offset: req.buf_offset,
            len: req.len_bytes,
            capacity: buf.capacity(),
        });
    }
    if req.len_bytes > geom.max_transfer_bytes {
        return Err(DevError::TooLarge {
            len: req.len_bytes,
            max: geom.max_transfer_bytes,
        });
    }
    check_range(geom, req)
}

/// The request lies inside the device.
fn check_range(geom: &Geometry, req: &IoRequest) -> Result<(), DevError> {
    match req.offset_bytes.checked_add(u64::from(req.len_bytes)) {
        Some(end) if end <= geom.capacity_bytes => Ok(()),
        _ => Err(DevError::OutOfRange {
            offset: req.offset_bytes,
            len: u64::from(req.len_bytes),
            capacity: geom.capacity_bytes,
        }),
    }
}

impl QueuePair {
    pub fn geometry(&self) -> Geometry {
        self.geom
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    pub fn depth(&self) -> usize {
        self.backend.depth()
    }

    pub fn in_flight(&self) -> usize {
        self.backend.in_flight()
    }

    pub fn is_full(&self) -> bool {
        self.backend.in_flight() >= self.backend.depth()
    }

    /// Check and queue a request. It reaches the device at the next `kick`.
    /// A discard on a device that doesn't take them is refused here with
    /// `Unsupported`.
    pub fn submit(&mut self, req: IoRequest) -> Result<(), Rejected> {
        if let Err(error) = check_request(&self.geom, &req) {
            return Err(Rejected { error, req });
        }
        if req.op == IoOp::Discard && !self.geom.supports_discard() {
            let error = DevError::Unsupported {
                op: IoOp::Discard,
                dev: self.name.clone(),
            };
            return Err(Rejected { error, req });
        }
        if self.is_full() {
            let error = DevError::QueueFull {
                depth: self.backend.depth(),
            };
            return Err(Rejected { error, req });
        }
        self.backend.push(req)
    }

    pub fn kick(&mut self) -> Result<(), DevError> {
        self.backend.kick()
    }

    pub fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        self.backend.reap(out)
    }

    pub fn set_completion_eventfd(&mut self, eventfd: RawFd) -> bool {
        self.backend.set_completion_eventfd(eventfd)
    }

    /// Submit one request and spin until it completes. For tools and tests
    /// that run without a reactor; the engine never calls this.
    /// The queue must be otherwise idle.
    pub fn run_one(&mut self, req: IoRequest) -> Completion {
        assert_eq!(self.in_flight(), 0, "run_one needs an idle queue");
        let tag = req.tag;
        if let Err(Rejected { error, req }) = self.submit(req) {
            return Completion {
                tag,
                op: req.op,
                offset_bytes: req.offset_bytes,
                result: Err(error),
                buf: req.buf,
            };
        }
        let mut done = None;
        loop {
            if let Err(e) = self.kick() {
                // The request may still complete; keep reaping for it.
                tracing::warn!("kick failed: {e}");
            }
            self.reap(&mut |c| {
                if c.tag == tag && done.is_none() {
                    done = Some(c);
                }
            });
            if let Some(c) = done.take() {
                return c;
            }
            std::hint::spin_loop();
        }
    }
}
