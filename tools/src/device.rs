//! Opening the devices a subcommand names, and recognising what is on them
//! already (so mkfs doesn't overwrite a filesystem by accident).

use std::path::Path;
use std::sync::Arc;

use scoutfs_engine::dev::nvme::{open_any, NvmeAddr};
use scoutfs_engine::dev::uring::UringOptions;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::super_block::{read_super, SuperExpect, SUPER_OFFSET_BYTES};

/// Open a file, a block device or an NVMe namespace (`nvme://BDF/NSID`)
/// for the engine's direct I/O.
pub fn open(path: &Path) -> Result<Arc<dyn BlockDev>, String> {
    open_any(&path.to_string_lossy(), UringOptions::default()).map_err(|e| e.to_string())
}

/// What a device seems to hold, from well-known signatures, read with
/// ordinary buffered I/O so any file can be probed.
pub fn identify(path: &Path) -> Result<Option<String>, String> {
    if NvmeAddr::is_nvme(&path.to_string_lossy()) {
        // Not reachable with buffered I/O; the engine's own open reads it.
        return Ok(None);
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = vec![0u8; 128 * 1024];
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    head.truncate(n);
    let at = |off: usize, sig: &[u8]| head.get(off..off + sig.len()) == Some(sig);
    let s = SUPER_OFFSET_BYTES as usize;
    if let Some(blk) = head.get(s..s + 4096) {
        if let Ok(sb) = read_super(blk, &SuperExpect::default()) {
            return Ok(Some(format!(
                "a scoutfs {:?} device (fsid {:#018x})",
                sb.device_kind(),
                sb.fsid()
            )));
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
    Ok(sigs
        .iter()
        .find(|(off, sig, _)| at(*off, sig))
        .map(|(_, _, what)| what.to_string()))
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
