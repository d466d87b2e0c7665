//! The NVMe backend's unsafe core: volatile access to the controller's
//! registers (BAR0 mapped through VFIO) and to memory the controller reads
//! and writes by DMA (queue rings, PRP lists, data buffers).
//!
//! Everything above this module is safe Rust. The rules it enforces:
//! - register accesses are aligned 32-bit volatile loads and stores inside
//!   the mapped BAR, and every store is preceded by a full fence, so ring
//!   entries written to memory are visible to the device before the
//!   doorbell that announces them;
//! - DMA memory is touched only through raw pointers with volatile or
//!   bounds-checked copies, never through a Rust reference that the device
//!   could write behind (vfio_dma_map's contract);
//! - an address is handed to the device only if it lies inside a region
//!   mapped for DMA ([`IovaMap::translate`]), and the memory of every mapped
//!   region is kept alive by the map until it is unmapped.

use std::sync::atomic::{fence, Ordering};

use crate::dma::{DmaBuf, DmaPool};

/// 32-bit register access to a controller: BAR0 through VFIO, or the
/// simulated controller in `sim`.
pub trait Regs: Send + Sync {
    fn read32(&self, offset: usize) -> u32;
    fn write32(&self, offset: usize, value: u32);

    /// 64-bit registers are read low dword first (the spec allows two
    /// 32-bit accesses, and some hosts can't do one 64-bit MMIO read).
    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | u64::from(self.read32(offset + 4)) << 32
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// A mapped register window (BAR0).
#[derive(Debug)]
pub struct Bar {
    base: *mut u8,
    len: usize,
}

// SAFETY: a Bar is a window onto device registers; volatile 32-bit accesses
// from several threads are what the hardware expects (each queue writes only
// its own doorbells, and register writes during bring-up are serialized by
// the controller's admin lock).
unsafe impl Send for Bar {}
// SAFETY: as above; the Bar holds no Rust-visible mutable state.
unsafe impl Sync for Bar {}

impl Bar {
    /// # Safety
    /// `base..base + len` must be a live mapping of device registers (or
    /// memory) valid for aligned volatile 32-bit loads and stores, and must
    /// stay mapped for as long as the returned `Bar` exists.
    pub unsafe fn new(base: *mut u8, len: usize) -> Bar {
        assert!(!base.is_null() && (base as usize).is_multiple_of(4));
        Bar { base, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn base(&self) -> *mut u8 {
        self.base
    }

    fn check(&self, offset: usize) {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "register offset {offset:#x} outside a {:#x}-byte BAR",
            self.len
        );
    }
}

impl Regs for Bar {
    fn read32(&self, offset: usize) -> u32 {
        self.check(offset);
        // SAFETY: offset is aligned and inside the mapping (checked above),
        // which Bar::new's contract keeps alive.
        let v = unsafe { std::ptr::read_volatile(self.base.add(offset).cast::<u32>()) };
        // Loads of ring memory after this register read must not move
        // before it.
        fence(Ordering::Acquire);
        u32::from_le(v)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.check(offset);
        // Every store to ring memory before a doorbell must be visible to
        // the device first (x86: stores stay in order; elsewhere this is
        // the write barrier a doorbell needs).
        fence(Ordering::SeqCst);
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(self.base.add(offset).cast::<u32>(), value.to_le()) };
    }
}

/// Memory the device accesses by DMA: one buffer of a pool that is mapped
/// in the device's IOVA space (queue rings, PRP list pages, Identify data).
#[derive(Debug)]
pub struct DmaRegion {
    buf: DmaBuf,
    iova: u64,
}

impl DmaRegion {
    /// Zeroes the buffer; `iova` is where the device sees its first byte.
    pub fn new(mut buf: DmaBuf, iova: u64) -> DmaRegion {
        // SAFETY: the buffer is ours alone and not yet known to the device;
        // write_bytes stays inside its capacity.
        unsafe { std::ptr::write_bytes(buf.as_mut_ptr(), 0, buf.capacity()) };
        DmaRegion { buf, iova }
    }

    pub fn iova(&self) -> u64 {
        self.iova
    }

    pub fn len(&self) -> usize {
        self.buf.capacity()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset.is_multiple_of(std::mem::align_of::<T>())
                && offset + std::mem::size_of::<T>() <= self.len(),
            "DMA access at {offset:#x} outside a {:#x}-byte region",
            self.len()
        );
        // SAFETY: offset + size is inside the buffer (checked above).
        unsafe { self.buf.as_ptr().add(offset).cast_mut().cast::<T>() }
    }

    /// Store a value the device will read. `T` is a plain `#[repr(C)]`
    /// entry (an SQ entry, a PRP).
    pub fn write<T: bytemuck::Pod>(&self, offset: usize, value: T) {
        // SAFETY: ptr() checked bounds and alignment; the memory is live
        // while self holds the buffer; a volatile store never creates a
        // reference the device could write behind.
        unsafe { std::ptr::write_volatile(self.ptr::<T>(offset), value) }
    }

    /// Load a value the device may have written.
    pub fn read<T: bytemuck::Pod>(&self, offset: usize) -> T {
        // SAFETY: as in write; any bit pattern is a valid Pod value.
        unsafe { std::ptr::read_volatile(self.ptr::<T>(offset)) }
    }

    /// Copy bytes out (Identify data, after the command completed).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len());
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read::<u8>(offset + i);
        }
    }
}

/// A region of a pool mapped for DMA.
#[derive(Debug)]
struct Mapped {
    vaddr: usize,
    len: usize,
    iova: u64,
    /// Keeps the pool's memory alive while the device may address it.
    pool: DmaPool,
    /// Queues (or the controller itself) using this mapping.
    users: u32,
}

/// Regions mapped for DMA and where the device sees them. Translation is
/// how the backend turns a buffer into a device address; an address outside
/// every region is never handed out.
#[derive(Debug, Default)]
pub struct IovaMap {
    regions: Vec<Mapped>,
    next_iova: u64,
}

/// IOVAs start at 64 GiB, clear of the MSI window and low reserved ranges
/// and below the 39-bit limit of the smallest Intel IOMMU width.
const IOVA_BASE: u64 = 64 << 30;
const IOVA_ALIGN: u64 = 2 << 20;

impl IovaMap {
    pub fn new() -> IovaMap {
        IovaMap {
            regions: Vec::new(),
            next_iova: IOVA_BASE,
        }
    }

    /// If `pool` is mapped already: count one more user, return its IOVA.
    pub fn acquire(&mut self, pool: &DmaPool) -> Option<u64> {
        let m = self.regions.iter_mut().find(|m| m.pool.id() == pool.id())?;
        m.users += 1;
        Some(m.iova)
    }

    /// One user fewer; the last one removes the region and gets back its
    /// (iova, len) to unmap and the pool to drop after unmapping.
    pub fn release(&mut self, pool: &DmaPool) -> Option<(u64, usize, DmaPool)> {
        let i = self.regions.iter().position(|m| m.pool.id() == pool.id())?;
        let m = &mut self.regions[i];
        m.users -= 1;
        if m.users > 0 {
            return None;
        }
        let m = self.regions.swap_remove(i);
        Some((m.iova, m.len, m.pool))
    }

    /// Remove the region at `iova` whatever its users (the device side of
    /// an unmap).
    pub fn remove_iova(&mut self, iova: u64) -> bool {
        let before = self.regions.len();
        self.regions.retain(|m| m.iova != iova);
        self.regions.len() < before
    }

    pub fn next_iova(&self, len: usize) -> u64 {
        debug_assert!(len > 0);
        self.next_iova
    }

    /// Record that `pool` is mapped at `iova` (after the transport mapped
    /// it), with one user. The map keeps the pool alive until the last
    /// [`IovaMap::release`].
    pub fn insert(&mut self, pool: &DmaPool, iova: u64) {
        let (p, len) = pool.region();
        assert_eq!(iova, self.next_iova, "IOVAs are handed out in order");
        self.regions.push(Mapped {
            vaddr: p as usize,
            len,
            iova,
            pool: pool.clone(),
            users: 1,
        });
        self.next_iova = (iova + len as u64).div_ceil(IOVA_ALIGN) * IOVA_ALIGN;
    }

    /// Forget every region, returning (iova, len) for each to unmap.
    pub fn drain(&mut self) -> Vec<(u64, usize)> {
        self.regions.drain(..).map(|m| (m.iova, m.len)).collect()
    }

    /// The device address of `[vaddr, vaddr + len)`, if it lies wholly
    /// inside one mapped region.
    pub fn translate(&self, vaddr: *const u8, len: usize) -> Option<u64> {
        let a = vaddr as usize;
        self.regions
            .iter()
            .find(|m| a >= m.vaddr && a + len <= m.vaddr + m.len)
            .map(|m| m.iova + (a - m.vaddr) as u64)
    }

    fn device_ptr(&self, iova: u64, len: usize) -> Option<*mut u8> {
        self.regions
            .iter()
            .find(|m| iova >= m.iova && iova + len as u64 <= m.iova + m.len as u64)
            .map(|m| (m.vaddr + (iova - m.iova) as usize) as *mut u8)
    }

    /// The device's side of DMA (used by the simulated controller): copy
    /// from IOVA space. False if the range is not mapped.
    pub fn device_read(&self, iova: u64, out: &mut [u8]) -> bool {
        let Some(p) = self.device_ptr(iova, out.len()) else {
            return false;
        };
        // SAFETY: the range lies inside a mapped region whose pool this map
        // keeps alive; the copy goes through raw pointers (as a device's DMA
        // would), so no reference to the pool's memory is created.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        true
    }

    /// Copy into IOVA space. False if the range is not mapped.
    pub fn device_write(&self, iova: u64, data: &[u8]) -> bool {
        let Some(p) = self.device_ptr(iova, data.len()) else {
            return false;
        };
        // SAFETY: as in device_read.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        true
    }
}

/// The device's side of an interrupt routed to an eventfd (used by the
/// simulated controller): add one to the eventfd's counter.
pub fn signal_eventfd(fd: std::os::fd::RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor; a stale or
    // wrong fd makes the write fail, which an interrupt may do.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_stays_inside_mapped_regions() {
        let a = DmaPool::new(8192, 2).unwrap();
        let b = DmaPool::new(4096, 1).unwrap();
        let mut m = IovaMap::new();
        m.insert(&a, m.next_iova(16384));
        m.insert(&b, m.next_iova(4096));
        let (pa, _) = a.region();
        let (pb, _) = b.region();
        assert_eq!(m.translate(pa, 16384), Some(IOVA_BASE));
        assert_eq!(
            m.translate(pa.wrapping_add(4096), 4096),
            Some(IOVA_BASE + 4096)
        );
        assert_eq!(m.translate(pa, 16385), None, "overruns the region");
        assert_eq!(m.translate(pb, 4096), Some(IOVA_BASE + IOVA_ALIGN));
        let other = DmaPool::new(4096, 1).unwrap();
        assert_eq!(m.translate(other.region().0, 4096), None);
        assert_eq!(m.acquire(&b), Some(IOVA_BASE + IOVA_ALIGN));
        assert!(m.release(&b).is_none(), "one user left");
        assert!(m.release(&b).is_some());
        assert_eq!(m.translate(pb, 4096), None, "released regions are gone");
        assert!(m.device_write(IOVA_BASE + 8, b"abc"));
        let mut out = [0u8; 3];
        assert!(m.device_read(IOVA_BASE + 8, &mut out));
        assert_eq!(&out, b"abc");
        assert!(!m.device_read(IOVA_BASE + 16383, &mut out));
    }
}
