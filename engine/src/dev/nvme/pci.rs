//! NVMe controllers on the PCI bus, and moving them between the kernel's
//! nvme driver and vfio-pci (driver_override, unbind, drivers_probe), the
//! way SPDK's setup.sh does, refusing a controller the kernel is using.

use std::path::{Path, PathBuf};

use super::vfio::sysfs_path;
use super::{normalize_bdf, NvmeOptions};

/// PCI class code of an NVMe controller (mass storage, NVM, NVMe).
pub const NVME_CLASS: u32 = 0x010802;

/// What sysfs says about one NVMe controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciNvme {
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    /// The driver bound now (`nvme`, `vfio-pci`, ...).
    pub driver: Option<String>,
    pub iommu_group: Option<String>,
    /// Model and serial, from the kernel driver or from Identify through
    /// VFIO.
    pub model: Option<String>,
    pub serial: Option<String>,
    /// (nsid, size in bytes, kernel block device name if the kernel has it).
    pub namespaces: Vec<(u32, u64, Option<String>)>,
}

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn hex_u32(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn link_name(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The kernel's controller directory (`.../nvme/nvme0`) when the nvme
/// driver owns it.
fn kernel_ctrl_dir(bdf: &str) -> Option<PathBuf> {
    let dir = sysfs_path(bdf).join("nvme");
    let e = std::fs::read_dir(&dir).ok()?.flatten().next()?;
    Some(e.path())
}

/// The kernel block devices (`nvme0n1`) of a controller, with their nsid
/// and size.
fn kernel_namespaces(bdf: &str) -> Vec<(u32, u64, Option<String>)> {
    let Some(cdir) = kernel_ctrl_dir(bdf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&cdir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.contains('n') || !e.path().join("nsid").exists() {
            continue;
        }
        let nsid = read_trim(e.path().join("nsid")).and_then(|s| s.parse().ok());
        let sectors: Option<u64> = read_trim(e.path().join("size")).and_then(|s| s.parse().ok());
        if let (Some(nsid), Some(sectors)) = (nsid, sectors) {
            out.push((nsid, sectors * 512, Some(name)));
        }
    }
    out.sort();
    out
}

/// Every NVMe controller on the PCI bus. With `identify`, controllers bound
/// to vfio-pci and not in use are opened briefly to read their model,
/// serial and namespaces.
pub fn list(identify: bool) -> Vec<PciNvme> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if read_trim(p.join("class")).and_then(|c| hex_u32(&c)) != Some(NVME_CLASS) {
            continue;
        }
        let bdf = e.file_name().to_string_lossy().into_owned();
        let mut c = PciNvme {
            vendor: read_trim(p.join("vendor"))
                .and_then(|v| hex_u32(&v))
                .unwrap_or(0) as u16,
            device: read_trim(p.join("device"))
                .and_then(|v| hex_u32(&v))
                .unwrap_or(0) as u16,
            driver: link_name(p.join("driver")),
            iommu_group: link_name(p.join("iommu_group")),
            namespaces: kernel_namespaces(&bdf),
            bdf: bdf.clone(),
            ..Default::default()
        };
        if let Some(cdir) = kernel_ctrl_dir(&bdf) {
            c.model = read_trim(cdir.join("model"));
            c.serial = read_trim(cdir.join("serial"));
        } else if identify && c.driver.as_deref() == Some("vfio-pci") {
            match super::open_controller(&bdf, NvmeOptions::default()) {
                Ok(ctrl) => {
                    c.model = Some(ctrl.identity().model.clone());
                    c.serial = Some(ctrl.identity().serial.clone());
                    for nsid in ctrl.active_namespaces().unwrap_or_default() {
                        if let Ok(id) = ctrl.identify(super::spec::admin::CNS_NAMESPACE, nsid) {
                            let ns = super::spec::IdentifyNamespace::parse(&id);
                            c.namespaces
                                .push((nsid, ns.size_blocks * ns.block_size(), None));
                        }
                    }
                }
                // Most often another process (an engine) holds its group.
                Err(e) => c.model = Some(format!("(not identified: {e})")),
            }
        }
        out.push(c);
    }
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    out
}

/// Why the kernel is using this block device (or one of its partitions),
/// if it is: mounted, swap, held by device-mapper/md, or open exclusively.
fn block_device_busy(name: &str) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let mut names = vec![name.to_string()];
    for e in std::fs::read_dir(Path::new("/sys/block").join(name))
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(name) {
            names.push(n);
        }
    }
    for n in &names {
        let dev = format!("/dev/{n}");
        if mounts
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&dev))
        {
            return Some(format!("{dev} is mounted"));
        }
        if swaps
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&dev))
        {
            return Some(format!("{dev} is used as swap"));
        }
        let holders = Path::new("/sys/class/block").join(n).join("holders");
        if std::fs::read_dir(holders).is_ok_and(|mut d| d.next().is_some()) {
            return Some(format!(
                "{dev} is held by another block device (dm, md, ...)"
            ));
        }
        // O_EXCL on a block device fails with EBUSY while anyone else
        // (a filesystem, a scoutfs engine through uring) holds it.
        let c = std::ffi::CString::new(dev.clone()).ok()?;
        // SAFETY: open of a NUL-terminated path; the fd is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_EXCL | libc::O_CLOEXEC) };
        if fd < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                return Some(format!("{dev} is in use"));
            }
        } else {
            // SAFETY: fd was returned by open above.
            unsafe { libc::close(fd) };
        }
    }
    None
}

fn write_sysfs(p: impl AsRef<Path>, v: &str) -> Result<(), String> {
    std::fs::write(p.as_ref(), v)
        .map_err(|e| format!("writing {v:?} to {}: {e}", p.as_ref().display()))
}

fn check_nvme(bdf: &str) -> Result<String, String> {
    let bdf = normalize_bdf(bdf)
        .ok_or_else(|| format!("{bdf}: not a PCI address (DOMAIN:BUS:DEV.FN)"))?;
    let p = sysfs_path(&bdf);
    if !p.exists() {
        return Err(format!("{bdf}: no such PCI device"));
    }
    if read_trim(p.join("class")).and_then(|c| hex_u32(&c)) != Some(NVME_CLASS) {
        return Err(format!("{bdf}: not an NVMe controller"));
    }
    Ok(bdf)
}

/// Move a controller from the kernel to vfio-pci so the engine can drive
/// it. Refuses while the kernel is using any of its namespaces.
pub fn bind_vfio(bdf: &str) -> Result<(), String> {
    let bdf = check_nvme(bdf)?;
    let p = sysfs_path(&bdf);
    let driver = link_name(p.join("driver"));
    if driver.as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    for (_, _, name) in kernel_namespaces(&bdf) {
        if let Some(why) = name.as_deref().and_then(block_device_busy) {
            return Err(format!("{bdf}: refusing to unbind from the kernel: {why}"));
        }
    }
    if p.join("iommu_group").symlink_metadata().is_err() {
        return Err(format!(
            "{bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on)"
        ));
    }
    if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("vfio-pci")
            .status();
        if !Path::new("/sys/bus/pci/drivers/vfio-pci").exists() {
            return Err("the vfio-pci driver is not loaded (modprobe vfio-pci)".into());
        }
    }
    write_sysfs(p.join("driver_override"), "vfio-pci")?;
    if driver.is_some() {
        write_sysfs(p.join("driver/unbind"), &bdf)?;
    }
    write_sysfs("/sys/bus/pci/drivers_probe", &bdf)?;
    match link_name(p.join("driver")).as_deref() {
        Some("vfio-pci") => Ok(()),
        other => Err(format!(
            "{bdf}: bound to {other:?} after probing, not vfio-pci"
        )),
    }
}

/// Give a controller back to the kernel's nvme driver. Refuses while a
/// process (an engine) has its VFIO group open.
pub fn unbind_vfio(bdf: &str) -> Result<(), String> {
    let bdf = check_nvme(bdf)?;
    let p = sysfs_path(&bdf);
    let driver = link_name(p.join("driver"));
    if driver.as_deref() == Some("vfio-pci") {
        if let Some(group) = link_name(p.join("iommu_group")) {
            let dev = format!("/dev/vfio/{group}");
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
            {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(format!("{bdf}: {dev} is open: an engine is using it"));
                }
                _ => {}
            }
        }
        write_sysfs(p.join("driver/unbind"), &bdf)?;
    }
    write_sysfs(p.join("driver_override"), "\n")?;
    write_sysfs("/sys/bus/pci/drivers_probe", &bdf)?;
    Ok(())
}
