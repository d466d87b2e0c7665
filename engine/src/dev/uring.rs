//! The `uring` backend: io_uring over a regular file or a block device,
//! opened O_DIRECT, with the file registered (fixed file) and the DMA pools
//! registered as fixed buffers.
//!
//! Submissions are queued into the submission ring in user memory and made
//! visible in one batch by `kick` (one `io_uring_enter` per batch, or none at
//! all with SQPOLL while the kernel's poller is awake). Completions are
//! reaped by reading the completion ring in user memory: no syscall.
//! Flush is `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`.
//!
//! Discard is `IORING_OP_FALLOCATE` with `FALLOC_FL_PUNCH_HOLE |
//! FALLOC_FL_KEEP_SIZE`, for files and block devices alike: a file gets a
//! hole, a block device (Linux's `blkdev_fallocate`) a write-zeroes that
//! may unmap and never falls back to writing zeros by hand. Either way the
//! range reads as zeros afterwards ([`Discard::Zeroes`]); a filesystem or
//! device that can't do it fails the request with `Unsupported`. (io_uring's
//! block-device discard command, `BLOCK_URING_CMD_DISCARD`, needs Linux
//! 6.12 and reads back undefined data; not used.)

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::{
    BlockDev, Completion, DevError, Discard, Geometry, IoOp, IoRequest, QueueBackend, QueueConfig,
    Rejected,
};
use crate::dma::DmaPool;

/// How a queue's ring is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// Use a kernel submission-polling thread that sleeps after this many
    /// idle milliseconds (SQPOLL): steady-state submissions make no
    /// syscalls.
    pub sqpoll_idle_ms: Option<u32>,
    /// Pin the SQPOLL thread to this CPU.
    pub sqpoll_cpu: Option<u32>,
    /// Poll for completions instead of interrupts (IOPOLL); only devices
    /// with poll queues support it.
    pub iopoll: bool,
    /// Let the queue be driven from more than one thread over its life
    /// (COOP_TASKRUN). Off (the default), the ring is SINGLE_ISSUER with
    /// DEFER_TASKRUN: completion work runs only when the queue's thread
    /// enters for it, batched, and the queue must be opened, driven and
    /// dropped on one thread, as a reactor does. Ignored with SQPOLL.
    pub shared_thread: bool,
}

/// A file or block device driven through io_uring.
#[derive(Debug)]
pub struct UringDev {
    path: PathBuf,
    file: File,
    geom: Geometry,
    opts: UringOptions,
    is_block_device: bool,
    /// The device lock's own descriptor (`lock_exclusive`). Not `file`:
    /// io_uring rings that registered `file` keep its open file
    /// description alive until the kernel tears them down, after the
    /// process is gone, so a lock on it would outlive a killed engine.
    lock: std::sync::Mutex<Option<File>>,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
/// Largest single request we hand to io_uring (the kernel splits further).
const MAX_TRANSFER: u32 = 4 << 20;

fn open_err(path: &Path, e: impl std::fmt::Display) -> DevError {
    DevError::Open {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Direct-I/O alignment of a regular file (statx STATX_DIOALIGN); falls
/// back to 4096 where the kernel or filesystem does not say.
fn file_dio_align(file: &File) -> u32 {
    const STATX_DIOALIGN: u32 = 0x2000;
    // SAFETY: an all-zero statx is a valid value to be overwritten.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open, the path is an empty C string with
    // AT_EMPTY_PATH, and stx is a valid out-pointer.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return 4096;
    }
    stx.stx_dio_offset_align.max(stx.stx_dio_mem_align).max(512)
}

/// The soft RLIMIT_MEMLOCK, for messages.
fn memlock_limit() -> String {
    // SAFETY: an all-zero rlimit is a valid value to be overwritten.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes into the rlimit we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return "unknown".into();
    }
    if rl.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", rl.rlim_cur >> 10)
    }
}

fn block_device_geometry(file: &File) -> std::io::Result<(u32, u64)> {
    let mut size: u64 = 0;
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKGETSIZE64 writes a u64 and BLKSSZGET an int through the
    // pointers given, both valid for the call.
    unsafe {
        if libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut lbs) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((lbs.max(512) as u32, size))
}

impl UringDev {
    /// Open an existing file or block device for direct I/O.
    pub fn open(path: impl AsRef<Path>, opts: UringOptions) -> Result<UringDev, DevError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let meta = file.metadata().map_err(|e| open_err(path, e))?;
        let is_block_device = meta.file_type().is_block_device();
        let (lbs, size) = if is_block_device {
            block_device_geometry(&file).map_err(|e| open_err(path, e))?
        } else if meta.file_type().is_file() {
            (file_dio_align(&file), meta.len())
        } else {
            return Err(open_err(path, "not a regular file or block device"));
        };
        let capacity_bytes = size - size % u64::from(lbs);
        if capacity_bytes == 0 {
            return Err(open_err(path, "device is empty"));
        }
        let geom = Geometry {
            logical_block_size: lbs,
            capacity_bytes,
            max_transfer_bytes: MAX_TRANSFER,
            discard: Discard::Zeroes,
        };
        Ok(UringDev {
            path: path.to_owned(),
            file,
            geom,
            opts,
            is_block_device,
            lock: std::sync::Mutex::new(None),
        })
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    pub fn options(&self) -> UringOptions {
        self.opts
    }
}

impl BlockDev for UringDev {
    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn lock_exclusive(&self) -> Result<(), DevError> {
        // An advisory lock on an open file description of its own: another
        // process, or another open of the same path here, is refused while
        // we live, and the lock dies with the process.
        let mut held = self.lock.lock().map_err(|_| DevError::Busy(self.name()))?;
        if held.is_some() {
            return Ok(());
        }
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| open_err(&self.path, e))?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            *held = Some(f);
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DevError::Busy(self.name()));
        }
        Err(DevError::Open {
            path: self.name(),
            msg: format!("locking: {e}"),
        })
    }

    fn open_queue_backend(&self, cfg: &QueueConfig) -> Result<Box<dyn QueueBackend>, DevError> {
        let setup = |what: &str, e: std::io::Error| {
            DevError::Setup(format!("{}: {what}: {e}", self.name()))
        };
        let depth = cfg.depth.next_power_of_two();
        let mut b = IoUring::builder();
        if let Some(idle) = self.opts.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
            if let Some(cpu) = self.opts.sqpoll_cpu {
                b.setup_sqpoll_cpu(cpu);
            }
        }
        if self.opts.iopoll {
            b.setup_iopoll();
        }
        if self.opts.sqpoll_idle_ms.is_none() {
            // Completion work then waits for our next enter instead of
            // interrupting the polling thread (an IPI per request); the
            // kernel raises IORING_SQ_TASKRUN and `kick` enters for it.
            b.setup_taskrun_flag();
            if self.opts.shared_thread {
                b.setup_coop_taskrun();
            } else {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        let ring = b.build(depth).map_err(|e| setup("io_uring_setup", e))?;
        // Enter by registered index, skipping the per-call fd lookup.
        let _ = ring.submitter().register_ring_fd();
        ring.submitter()
            .register_files(&[self.file.as_raw_fd()])
            .map_err(|e| setup("register files", e))?;

        let mut iovecs = Vec::new();
        let mut pool_bases = Vec::new();
        for pool in &cfg.pools {
            pool_bases.push((pool.id(), iovecs.len() as u32));
            for slot in 0..pool.count() as u32 {
                let (p, len) = pool.slot_region(slot);
                iovecs.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: len,
                });
            }
        }
        if !iovecs.is_empty() {
            // SAFETY: every iovec covers a slot of a pool this queue keeps
            // alive (`pools` below) for as long as the ring exists.
            unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOMEM) {
                    let bytes: usize = iovecs.iter().map(|v| v.iov_len).sum();
                    return DevError::Setup(format!(
                        "{}: registering {} KiB of I/O buffers: {e}: io_uring counts them against \
                         the locked-memory limit (RLIMIT_MEMLOCK, {}) unless the process has \
                         CAP_IPC_LOCK; run as root or raise the limit (ulimit -l, systemd \
                         LimitMEMLOCK=)",
                        self.name(),
                        bytes >> 10,
                        memlock_limit()
                    ));
                }
                setup("register buffers", e)
            })?;
        }
        let depth = cfg.depth as usize;
        Ok(Box::new(UringQueue {
            name: self.name(),
            ring,
            depth,
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth as u32).rev().collect(),
            unsubmitted: 0,
            pool_bases,
            _pools: cfg.pools.clone(),
            iopoll: self.opts.iopoll,
        }))
    }
}

struct UringQueue {
    name: String,
    ring: IoUring,
    depth: usize,
    /// Requests in flight, indexed by the SQE's user_data; each owns its
    /// buffer until the kernel is done with it.
    slots: Vec<Option<IoRequest>>,
    free_slots: Vec<u32>,
    unsubmitted: usize,
    pool_bases: Vec<(u32, u32)>,
    _pools: Vec<DmaPool>,
    iopoll: bool,
}

impl UringQueue {
    fn fixed_index(&self, pool_id: u32, slot: u32) -> Option<u16> {
        let base = self.pool_bases.iter().find(|(id, _)| *id == pool_id)?.1;
        u16::try_from(base + slot).ok()
    }

    fn complete(&mut self, user_data: u64, res: i32) -> Completion {
        let idx = user_data as usize;
        let req = self.slots[idx]
            .take()
            .expect("completion for an empty slot");
        self.free_slots.push(idx as u32);
        let result = if req.op == IoOp::Discard && -res == libc::EOPNOTSUPP {
            Err(DevError::Unsupported {
                op: IoOp::Discard,
                dev: self.name.clone(),
            })
        } else if res < 0 {
            Err(DevError::Io {
                op: req.op,
                offset: req.offset_bytes,
                errno: -res,
            })
        } else if matches!(req.op, IoOp::Read | IoOp::Write) && res as u32 != req.len_bytes {
            Err(DevError::Short {
                op: req.op,
                offset: req.offset_bytes,
                done: res as u32,
                len: req.len_bytes,
            })
        } else {
            Ok(())
        };
        Completion {
            tag: req.tag,
            op: req.op,
            offset_bytes: req.offset_bytes,
            result,
            buf: req.buf,
        }
    }
}

impl QueueBackend for UringQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.depth - self.free_slots.len()
    }

    fn push(&mut self, mut req: IoRequest) -> Result<(), Rejected> {
        let Some(idx) = self.free_slots.pop() else {
            return Err(Rejected {
                error: DevError::QueueFull { depth: self.depth },
                req,
            });
        };
        let fd = types::Fixed(0);
        let entry = match req.op {
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Discard => opcode::Fallocate::new(fd, u64::from(req.len_bytes))
                .offset(req.offset_bytes)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            IoOp::Read | IoOp::Write => {
                let buf = req
                    .buf
                    .as_mut()
                    .expect("checked: reads and writes carry a buffer");
                let fixed = self.fixed_index(buf.pool_id(), buf.slot());
                // SAFETY: buf_offset + len was checked to lie inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(req.buf_offset as usize) };
                let (len, off) = (req.len_bytes, req.offset_bytes);
                match (req.op, fixed) {
                    (IoOp::Read, Some(i)) => {
                        opcode::ReadFixed::new(fd, ptr, len, i).offset(off).build()
                    }
                    (IoOp::Read, None) => opcode::Read::new(fd, ptr, len).offset(off).build(),
                    (_, Some(i)) => opcode::WriteFixed::new(fd, ptr, len, i).offset(off).build(),
                    (_, None) => opcode::Write::new(fd, ptr, len).offset(off).build(),
                }
            }
        }
        .user_data(u64::from(idx));
        // SAFETY: the buffer the entry points at is owned by slots[idx] until
        // the completion for user_data idx is reaped, and the queue drains
        // in-flight requests before the ring and buffers are dropped.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen while in-flight <= depth <= SQ entries, but hand
            // the request back rather than lose it.
            self.free_slots.push(idx);
            return Err(Rejected {
                error: DevError::QueueFull { depth: self.depth },
                req,
            });
        }
        self.slots[idx as usize] = Some(req);
        self.unsubmitted += 1;
        Ok(())
    }

    fn kick(&mut self) -> Result<(), DevError> {
        let in_flight = self.in_flight() > 0;
        if self.unsubmitted == 0
            && !(in_flight && (self.iopoll || self.ring.submission().taskrun()))
        {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => {
                self.unsubmitted = 0;
                Ok(())
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::EAGAIN) =>
            {
                // The completion ring is backed up: reap, then kick again.
                Ok(())
            }
            Err(e) => Err(DevError::Setup(format!(
                "{}: io_uring_enter: {e}",
                self.name
            ))),
        }
    }

    fn reap(&mut self, out: &mut dyn FnMut(Completion)) -> usize {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let c = self.complete(cqe.user_data(), cqe.result());
            out(c);
            n += 1;
        }
        n
    }

    fn set_completion_eventfd(&mut self, eventfd: RawFd) -> bool {
        self.ring.submitter().register_eventfd(eventfd).is_ok()
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still be reading or writing our buffers: wait for
        // every in-flight request before they are freed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.in_flight() > 0 {
            let _ = self.ring.submit_and_wait(1);
            self.reap(&mut |_| {});
            if Instant::now() > deadline {
                tracing::error!(
                    "{}: {} requests never completed; leaking their buffers",
                    self.name,
                    self.in_flight()
                );
                for s in self.slots.iter_mut() {
                    std::mem::forget(s.take());
                }
                break;
            }
        }
    }
}
