//! DMA buffer pool: fixed-size, page-aligned buffers allocated once at
//! start-up, registered once with each device queue, handed out and returned
//! without allocating.
//!
//! The pool's memory is one mapping: 2 MiB hugepages when the system has
//! enough reserved (`HugePages_Free`), otherwise anonymous memory (page
//! aligned). The pool is bounded: when every buffer is out, `try_get` returns
//! `None` and `get().await` waits for one to come back (back-pressure, never
//! an allocation).

use std::future::poll_fn;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crossbeam_queue::ArrayQueue;

const PAGE_SIZE: usize = 4096;
const HUGE_PAGE_SIZE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("dma pool buffer size {0} must be a non-zero multiple of {PAGE_SIZE}")]
    BadBufferSize(usize),
    #[error("dma pool needs between 1 and {max} buffers, asked for {count}")]
    BadCount { count: usize, max: usize },
    #[error("dma pool mapping of {len_bytes} bytes failed: {source}")]
    Map {
        len_bytes: usize,
        source: std::io::Error,
    },
}

static NEXT_POOL_ID: AtomicU32 = AtomicU32::new(1);

/// The most buffers one pool holds (io_uring registers at most 16384 buffers
/// per ring, and one pool should leave room for others).
pub const MAX_POOL_BUFFERS: usize = 8192;

struct PoolInner {
    id: u32,
    base: *mut u8,
    map_len: usize,
    buf_size: usize,
    count: usize,
    hugepages: bool,
    free: ArrayQueue<u32>,
    nr_waiters: AtomicUsize,
    waiters: Mutex<Vec<Waker>>,
}

// SAFETY: the mapping is owned by the pool and lives until PoolInner drops;
// each slot is handed to at most one DmaBuf at a time (the free queue holds
// each slot index once), so sharing the pool between threads shares no
// mutable memory.
unsafe impl Send for PoolInner {}
// SAFETY: as above; all shared state is atomics, the lock-free queue or the
// waiter mutex.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: base/map_len came from a successful mmap in DmaPool::new and
        // no DmaBuf outlives the pool (each holds an Arc to it).
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// A pool of equally sized DMA buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaPool")
            .field("id", &self.inner.id)
            .field("buf_size", &self.inner.buf_size)
            .field("count", &self.inner.count)
            .field("free", &self.inner.free.len())
            .field("hugepages", &self.inner.hugepages)
            .finish()
    }
}

/// Free 2 MiB hugepages the system has reserved, from /proc/meminfo.
fn free_hugepages() -> usize {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn map_anonymous(len: usize, huge: bool) -> std::io::Result<*mut u8> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if huge {
        flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing aliases no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl DmaPool {
    /// Allocate `count` buffers of `buf_size` bytes (a multiple of 4 KiB).
    pub fn new(buf_size: usize, count: usize) -> Result<DmaPool, DmaError> {
        if buf_size == 0 || !buf_size.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::BadBufferSize(buf_size));
        }
        if count == 0 || count > MAX_POOL_BUFFERS {
            return Err(DmaError::BadCount {
                count,
                max: MAX_POOL_BUFFERS,
            });
        }
        let len = buf_size * count;
        let huge_len = len.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
        let (base, map_len, hugepages) = match (free_hugepages() * HUGE_PAGE_SIZE >= huge_len)
            .then(|| map_anonymous(huge_len, true))
        {
            Some(Ok(p)) => (p, huge_len, true),
            _ => {
                let p = map_anonymous(len, false).map_err(|source| DmaError::Map {
                    len_bytes: len,
                    source,
                })?;
                (p, len, false)
            }
        };
        let free = ArrayQueue::new(count);
        for slot in 0..count as u32 {
            free.push(slot).expect("queue sized for every slot");
        }
        let inner = PoolInner {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            base,
            map_len,
            buf_size,
            count,
            hugepages,
            free,
            nr_waiters: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
        };
        Ok(DmaPool {
            inner: Arc::new(inner),
        })
    }

    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub fn buf_size(&self) -> usize {
        self.inner.buf_size
    }

    pub fn count(&self) -> usize {
        self.inner.count
    }

    pub fn available(&self) -> usize {
        self.inner.free.len()
    }

    pub fn uses_hugepages(&self) -> bool {
        self.inner.hugepages
    }

    /// The address and length of buffer `slot`, for registering the pool
    /// with a device (io_uring fixed buffers, VFIO DMA maps).
    pub fn slot_region(&self, slot: u32) -> (*mut u8, usize) {
        assert!((slot as usize) < self.inner.count);
        // SAFETY: slot < count, so the offset stays inside the mapping.
        let p = unsafe { self.inner.base.add(slot as usize * self.inner.buf_size) };
        (p, self.inner.buf_size)
    }

    /// The whole pool's memory, for devices that map it in one piece.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.inner.base, self.inner.buf_size * self.inner.count)
    }

    /// Take a buffer if one is free.
    pub fn try_get(&self) -> Option<DmaBuf> {
        let slot = self.inner.free.pop()?;
        Some(DmaBuf {
            pool: self.inner.clone(),
            slot,
        })
    }

    /// Take a buffer, waiting for one to be returned when all are out.
    pub async fn get(&self) -> DmaBuf {
        poll_fn(|cx| {
            if let Some(b) = self.try_get() {
                return Poll::Ready(b);
            }
            let mut waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.inner.nr_waiters.fetch_add(1, Ordering::SeqCst);
            // Re-check under the lock: a buffer returned between the first
            // try and the registration would otherwise wake nobody.
            if let Some(b) = self.try_get() {
                self.inner.nr_waiters.fetch_sub(1, Ordering::SeqCst);
                return Poll::Ready(b);
            }
            waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// One buffer of a pool, owned exclusively until dropped (which returns it).
pub struct DmaBuf {
    pool: Arc<PoolInner>,
    slot: u32,
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaBuf(pool {}, slot {})", self.pool.id, self.slot)
    }
}

impl DmaBuf {
    pub fn pool_id(&self) -> u32 {
        self.pool.id
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn capacity(&self) -> usize {
        self.pool.buf_size
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: slot < count, so the offset stays inside the mapping.
        unsafe { self.pool.base.add(self.slot as usize * self.pool.buf_size) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_ptr().cast_mut()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: this DmaBuf owns the slot exclusively and the mapping lives
        // as long as the pool Arc it holds.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.pool.buf_size) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for as_slice, and &mut self makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.pool.buf_size) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let pushed = self.pool.free.push(self.slot);
        debug_assert!(pushed.is_ok(), "slot {} returned twice", self.slot);
        if self.pool.nr_waiters.load(Ordering::SeqCst) > 0 {
            let mut waiters = self.pool.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = waiters.pop() {
                self.pool.nr_waiters.fetch_sub(1, Ordering::SeqCst);
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn buffers_are_aligned_distinct_and_bounded() {
        let pool = DmaPool::new(8192, 4).unwrap();
        let mut bufs: Vec<_> = (0..4).map(|_| pool.try_get().unwrap()).collect();
        assert!(pool.try_get().is_none(), "exhaustion must not allocate");
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.as_ptr() as usize % 4096, 0);
            b.as_mut_slice().fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.as_slice().iter().all(|&x| x == i as u8));
        }
        drop(bufs.pop());
        assert_eq!(pool.available(), 1);
        assert!(pool.try_get().is_some());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            DmaPool::new(1000, 1),
            Err(DmaError::BadBufferSize(1000))
        ));
        assert!(matches!(
            DmaPool::new(4096, 0),
            Err(DmaError::BadCount { .. })
        ));
    }

    #[test]
    fn get_waits_for_a_returned_buffer() {
        let pool = DmaPool::new(4096, 1).unwrap();
        let held = pool.try_get().unwrap();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || {
            // A minimal blocking executor for one future.
            struct Unpark(std::thread::Thread);
            impl std::task::Wake for Unpark {
                fn wake(self: Arc<Self>) {
                    self.0.unpark();
                }
            }
            let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
            let mut cx = std::task::Context::from_waker(&waker);
            let mut fut = std::pin::pin!(p2.get());
            loop {
                if let Poll::Ready(b) = fut.as_mut().poll(&mut cx) {
                    return b.slot();
                }
                std::thread::park();
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slot = held.slot();
        drop(held);
        assert_eq!(t.join().unwrap(), slot);
    }
}
