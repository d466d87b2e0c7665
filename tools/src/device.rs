//! Opening the devices a subcommand names, telling whether two names are
//! the same storage, whether someone holds a device, and recognising what
//! is on a device already (so mkfs doesn't overwrite a filesystem by
//! accident and a refusal can say what it found).

use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use scoutfs_engine::dev::nvme::NvmeAddr;
use scoutfs_engine::dev::open_any;
use scoutfs_engine::dev::uring::UringOptions;
use scoutfs_engine::dev::{open_queue_with_pool, BlockDev, IoRequest};
use scoutfs_engine::format::super_block::{read_super, SuperExpect, SUPER_OFFSET_BYTES};
use scoutfs_engine::txn::devices::DeviceProblem;
use scoutfs_engine::txn::TxnError;

/// Open a file, a block device or an NVMe namespace (`nvme://BDF/NSID`)
/// for the engine's direct I/O.
pub fn open(path: &Path) -> Result<Arc<dyn BlockDev>, String> {
    open_any(&path.to_string_lossy(), UringOptions::default()).map_err(|e| e.to_string())
}

/// The storage a device name ends at, to tell two names apart whatever
/// path, link or scheme they take.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Storage {
    /// A regular file: (st_dev, st_ino).
    File(u64, u64),
    /// A block device: its device number.
    Block(u64),
    /// An NVMe namespace driven from userspace: (PCI address, NSID).
    Nvme(String, u32),
}

/// What a device name is, with what else it overlaps.
#[derive(Clone, Debug)]
pub struct DeviceId {
    storage: Storage,
    /// For a partition: the whole disk's device number.
    disk: Option<u64>,
    /// For a loop device: the file behind it.
    backing: Option<(u64, u64)>,
}

fn dev_str(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

impl DeviceId {
    /// Find what `name` is: `nvme://` and `spdk://` addresses by PCI
    /// address and namespace, paths by what they resolve to (symlinks
    /// followed; hard links and other spellings are the same inode).
    pub fn of(name: &Path) -> Result<DeviceId, String> {
        let s = name.to_string_lossy();
        let nvme = s
            .strip_prefix("spdk://")
            .map(|rest| format!("{}{rest}", NvmeAddr::SCHEME))
            .unwrap_or_else(|| s.to_string());
        if NvmeAddr::is_nvme(&nvme) {
            let a = NvmeAddr::parse(&nvme).map_err(|e| e.to_string())?;
            return Ok(DeviceId {
                storage: Storage::Nvme(a.bdf, a.nsid),
                disk: None,
                backing: None,
            });
        }
        let m = std::fs::metadata(name).map_err(|e| format!("{}: {e}", name.display()))?;
        if !m.file_type().is_block_device() {
            return Ok(DeviceId {
                storage: Storage::File(m.dev(), m.ino()),
                disk: None,
                backing: None,
            });
        }
        let rdev = m.rdev();
        let sys = Path::new("/sys/dev/block").join(dev_str(rdev));
        let disk = if sys.join("partition").exists() {
            std::fs::read_to_string(sys.join("../dev"))
                .ok()
                .and_then(|d| parse_dev(d.trim()))
        } else {
            None
        };
        let backing = std::fs::read_to_string(sys.join("loop/backing_file"))
            .ok()
            .and_then(|p| std::fs::metadata(p.trim()).ok())
            .map(|b| (b.dev(), b.ino()));
        Ok(DeviceId {
            storage: Storage::Block(rdev),
            disk,
            backing,
        })
    }

    fn file(&self) -> Option<(u64, u64)> {
        match self.storage {
            Storage::File(d, i) => Some((d, i)),
            _ => self.backing,
        }
    }

    /// Whether writing one would change the other: the same file or
    /// device, a loop device and the file behind it, a partition and its
    /// disk.
    pub fn overlaps(&self, other: &DeviceId) -> bool {
        let contains = |whole: &DeviceId, part: &DeviceId| matches!((&whole.storage, part.disk), (Storage::Block(r), Some(d)) if *r == d);
        self.storage == other.storage
            || (self.file().is_some() && self.file() == other.file())
            || contains(self, other)
            || contains(other, self)
    }

    /// How a message names the storage.
    pub fn describe(&self) -> String {
        match &self.storage {
            Storage::File(d, i) => format!("inode {i} on device {}", dev_str(*d)),
            Storage::Block(r) => format!("block device {}", dev_str(*r)),
            Storage::Nvme(bdf, ns) => format!("NVMe namespace {ns} of {bdf}"),
        }
    }
}

fn parse_dev(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

/// A block device the kernel holds (mounted, or claimed by a driver such
/// as a RAID or device-mapper) can't be opened O_EXCL: say so. `Ok` for
/// anything else, and for files and NVMe namespaces, which the kernel
/// never holds this way.
pub fn check_not_held_by_kernel(name: &Path) -> Result<(), String> {
    let Ok(m) = std::fs::metadata(name) else {
        return Ok(());
    };
    if !m.file_type().is_block_device() {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(name)
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(format!(
            "{} is in use by the kernel (mounted, or held by another driver)",
            name.display()
        )),
        Err(e) => Err(format!("{}: {e}", name.display())),
    }
}

/// Bytes read from the start of a device to recognise what it holds.
const PROBE_BYTES: usize = 128 * 1024;

/// What a device seems to hold, from well-known signatures in its first
/// 128 KiB, read through the engine's own path (so NVMe namespaces are
/// probed too).
pub fn identify(dev: &dyn BlockDev) -> Result<Option<String>, String> {
    let g = dev.geometry();
    let lbs = u64::from(g.logical_block_size.max(1));
    let len = (PROBE_BYTES as u64).min(g.capacity_bytes) / lbs * lbs;
    if len == 0 {
        return Ok(None);
    }
    let (mut qp, pool) =
        open_queue_with_pool(dev, PROBE_BYTES, 1, 1).map_err(|e| format!("{}: {e}", dev.name()))?;
    let Some(buf) = pool.try_get() else {
        return Err(format!("{}: no buffer to read into", dev.name()));
    };
    // len <= PROBE_BYTES, so it fits a u32.
    let c = qp.run_one(IoRequest::read(0, len as u32, buf, 0));
    c.result
        .map_err(|e| format!("{}: reading its first {len} bytes: {e}", dev.name()))?;
    let Some(buf) = c.buf else {
        return Err(format!("{}: the read returned no buffer", dev.name()));
    };
    Ok(identify_bytes(&buf.as_slice()[..len as usize]))
}

/// What the first bytes of a device say it holds.
pub fn identify_bytes(head: &[u8]) -> Option<String> {
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    let s = SUPER_OFFSET_BYTES as usize;
    if let Some(blk) = head.get(s..s + 4096) {
        if let Ok(sb) = read_super(blk, &SuperExpect::default()) {
            let role = match sb.device_kind() {
                scoutfs_engine::format::DeviceKind::Meta => "metadata",
                scoutfs_engine::format::DeviceKind::Data => "data",
            };
            return Some(format!(
                "the {role} device of scoutfs volume {:#018x}",
                sb.fsid()
            ));
        }
    }
    let sigs: &[(usize, &[u8], &str)] = &[
        (1080, &[0x53, 0xef], "an ext2/3/4 filesystem"),
        (0, b"XFSB", "an XFS filesystem"),
        (65600, b"_BHRfS_M", "a btrfs filesystem"),
        (0, b"LUKS\xba\xbe", "a LUKS volume"),
        (4086, b"SWAPSPACE2", "swap space"),
        (32769, b"CD001", "an ISO 9660 image"),
        (3, b"NTFS    ", "an NTFS filesystem"),
        (82, b"FAT32   ", "a FAT32 filesystem"),
    ];
    sigs.iter()
        .find(|(off, sig, _)| at(*off, sig))
        .map(|(_, _, what)| what.to_string())
}

/// Parse a size with an optional K, M, G, T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (a number with an optional K, M, G or T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A message for an error opening a volume on `devs` ((name, device)
/// pairs; `devs[0]` is named when the error doesn't say which device):
/// a device that is not a scoutfs volume gets what it holds instead,
/// when that is recognisable.
pub fn explain(e: &TxnError, devs: &[(&Path, &dyn BlockDev)]) -> String {
    let TxnError::Device {
        device, problem, ..
    } = e
    else {
        return match (e, devs.first()) {
            // Device errors name their device.
            (TxnError::Dev(_), _) | (_, None) => e.to_string(),
            (_, Some((p, _))) => format!("{}: {e}", p.display()),
        };
    };
    if matches!(problem, DeviceProblem::NotScoutfs) {
        if let Some((_, dev)) = devs.iter().find(|(_, d)| d.name() == *device) {
            if let Ok(Some(what)) = identify(*dev) {
                return format!("{e}; it holds {what}");
            }
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_names_compare_by_address_and_namespace() {
        let a = DeviceId::of(Path::new("nvme://0000:00:04.0/1")).unwrap();
        let b = DeviceId::of(Path::new("spdk://0000:00:04.0/1")).unwrap();
        let c = DeviceId::of(Path::new("nvme://0000:00:04.0/2")).unwrap();
        let d = DeviceId::of(Path::new("nvme://0000:00:05.0/1")).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert!(!a.overlaps(&d));
    }

    #[test]
    fn a_partition_overlaps_its_disk_but_not_its_sibling() {
        let disk = DeviceId {
            storage: Storage::Block(libc::makedev(8, 0)),
            disk: None,
            backing: None,
        };
        let p1 = DeviceId {
            storage: Storage::Block(libc::makedev(8, 1)),
            disk: Some(libc::makedev(8, 0)),
            backing: None,
        };
        let p2 = DeviceId {
            storage: Storage::Block(libc::makedev(8, 2)),
            disk: Some(libc::makedev(8, 0)),
            backing: None,
        };
        assert!(disk.overlaps(&p1) && p1.overlaps(&disk));
        assert!(!p1.overlaps(&p2));
    }
}
