//! Reaching a PCI NVMe controller bound to vfio-pci: container, group and
//! device through rust-vmm's `vfio-ioctls`, memory and bus-master enable
//! through the config region, BAR0 mapped into our address space, and DMA
//! maps through VFIO_IOMMU_MAP_DMA (type1 IOMMU).
//!
//! `vfio-ioctls` owns the ioctls; this file owns the two things it leaves to
//! its users: the BAR mapping (mmap of the device fd at the region offset)
//! and the promise that DMA-mapped memory stays alive (the controller keeps
//! every mapped pool until it unmaps it).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

use super::ctrl::Transport;
use super::mmio::{Bar, Regs};
use crate::dma::DmaPool;

const BAR0_REGION: u32 = 0;
const CONFIG_REGION: u32 = 7;
const REGION_FLAG_MMAP: u32 = 1 << 2;
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

pub struct VfioTransport {
    sysfs: PathBuf,
    bar: Bar,
    // Field order is drop order: the device before its container.
    device: VfioDevice,
    container: Arc<VfioContainer>,
}

impl std::fmt::Debug for VfioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioTransport")
            .field("device", &self.sysfs)
            .field("bar0_len", &self.bar.len())
            .finish()
    }
}

/// The sysfs directory of a PCI function.
pub fn sysfs_path(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

impl VfioTransport {
    /// Open the controller at PCI address `bdf` (it must be bound to
    /// vfio-pci), enable memory decoding and bus mastering, map BAR0.
    pub fn open(bdf: &str) -> Result<VfioTransport, String> {
        let sysfs = sysfs_path(bdf);
        if !sysfs.exists() {
            return Err(format!("no PCI device {bdf}"));
        }
        let driver = std::fs::read_link(sysfs.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(format!(
                "{bdf} is bound to {}, not vfio-pci (scoutfs nvme bind {bdf})",
                driver.as_deref().unwrap_or("no driver")
            ));
        }
        let container =
            Arc::new(VfioContainer::new(None).map_err(|e| format!("VFIO container: {e}"))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device =
            VfioDevice::new(&sysfs, ops, false).map_err(|e| format!("VFIO device {bdf}: {e}"))?;

        let mut cmd = [0u8; 2];
        device.region_read(CONFIG_REGION, &mut cmd, PCI_COMMAND);
        let want = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        device.region_write(CONFIG_REGION, &want.to_le_bytes(), PCI_COMMAND);
        device.region_read(CONFIG_REGION, &mut cmd, PCI_COMMAND);
        if u16::from_le_bytes(cmd) & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
            != PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        {
            return Err(format!("{bdf}: could not enable memory and bus mastering"));
        }

        if device.get_region_flags(BAR0_REGION) & REGION_FLAG_MMAP == 0 {
            return Err(format!("{bdf}: BAR0 cannot be mapped"));
        }
        let len = device.get_region_size(BAR0_REGION) as usize;
        let offset = device.get_region_offset(BAR0_REGION);
        if len < 0x2000 {
            return Err(format!(
                "{bdf}: BAR0 of {len:#x} bytes is too small for NVMe"
            ));
        }
        // SAFETY: a shared mapping of the device fd at BAR0's region offset,
        // at an address of the kernel's choosing: it aliases no Rust memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "{bdf}: mapping BAR0: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: p..p+len is the BAR mapping made above, unmapped only in
        // Drop, after which the Bar is gone.
        let bar = unsafe { Bar::new(p.cast(), len) };
        Ok(VfioTransport {
            sysfs,
            bar,
            device,
            container,
        })
    }
}

impl Drop for VfioTransport {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open; nothing uses the Bar after this.
        unsafe { libc::munmap(self.bar.base().cast(), self.bar.len()) };
        // Leave bus mastering off so the function can't DMA until the next
        // owner enables it.
        let mut cmd = [0u8; 2];
        self.device
            .region_read(CONFIG_REGION, &mut cmd, PCI_COMMAND);
        let off = u16::from_le_bytes(cmd) & !PCI_COMMAND_MASTER;
        self.device
            .region_write(CONFIG_REGION, &off.to_le_bytes(), PCI_COMMAND);
    }
}

const MSIX_IRQ_INDEX: u32 = 2;
const VFIO_DEVICE_SET_IRQS: libc::c_ulong = 0x3b6e;
const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

impl VfioTransport {
    /// VFIO_DEVICE_SET_IRQS for MSI-X vectors `start..start + fds.len()`
    /// (an fd of -1 routes a vector nowhere).
    fn set_msix(&self, start: u32, fds: &[i32]) -> Result<(), String> {
        // struct vfio_irq_set: argsz, flags, index, start, count, then the
        // eventfds; built as u32 words (an fd is a 32-bit int).
        let mut words: Vec<u32> = vec![
            0,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            MSIX_IRQ_INDEX,
            start,
            fds.len() as u32,
        ];
        words.extend(fds.iter().map(|&fd| fd as u32));
        words[0] = (words.len() * 4) as u32;
        // SAFETY: the argument is a complete vfio_irq_set of argsz bytes
        // that lives for the call; the device fd is ours.
        let rc = unsafe {
            libc::ioctl(
                self.device.as_raw_fd(),
                VFIO_DEVICE_SET_IRQS,
                words.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(())
    }
}

impl Transport for VfioTransport {
    fn regs(&self) -> &dyn Regs {
        &self.bar
    }

    fn map_dma(&self, pool: &DmaPool, iova: u64) -> Result<(), String> {
        let (p, len) = pool.region();
        // SAFETY: the pool's memory is one anonymous mapping owned by the
        // pool, which the controller keeps alive until after unmap_dma.
        // Rust references to it exist only for buffers the device is not
        // using (a buffer is the device's only while its request is in
        // flight, and requests are drained or the controller stopped before
        // buffers return), which is the discipline vfio_dma_map asks for.
        unsafe { self.container.vfio_dma_map(iova, len, p) }.map_err(|e| e.to_string())
    }

    fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), String> {
        self.container
            .vfio_dma_unmap(iova, len)
            .map_err(|e| e.to_string())
    }

    fn enable_msix(&self) -> Result<u32, String> {
        let n = self
            .device
            .get_irq_info(MSIX_IRQ_INDEX)
            .map(|i| i.count)
            .filter(|&n| n > 0)
            .ok_or("the device has no MSI-X")?;
        // Linux 6.1 can't add vectors to an enabled MSI-X later, so all of
        // them now, routed nowhere until a queue asks.
        self.set_msix(0, &vec![-1; n as usize])?;
        Ok(n)
    }

    fn route_msix(&self, vector: u16, eventfd: std::os::fd::RawFd) -> Result<(), String> {
        self.set_msix(u32::from(vector), &[eventfd])
    }
}
