//! `scoutfs mkfs META DATA`: make a new volume.
//!
//! Exit codes: 0 made; 1 an I/O or other error, or a device in use (by a
//! running engine or the kernel; as mke2fs, which exits 1 for a mounted
//! device, --force doesn't override it); 2 bad arguments (the same device
//! twice, a device too small to mount); 3 refused to overwrite an
//! existing filesystem (use --force); 4 a device is under the default
//! minimum size (use --allow-small-size).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use scoutfs_engine::dev::DevError;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions, MIN_DATA_BLOCKS};

use crate::device::{self, DeviceId};

/// Without -A, the metadata device must hold at least this much.
pub const MIN_META_BYTES: u64 = 1 << 30;
/// Without -A, the data device must hold at least this much.
pub const MIN_DATA_BYTES: u64 = 1 << 30;
/// The smallest metadata device `scoutfs mount` (with its default
/// options) can use, -A or not: 288 64 KiB blocks (18 MiB). Found by
/// trying (tests/devices.rs holds the boundary): at this size a new volume
/// mounts, takes a file and a directory, unmounts and mounts again; one
/// block less and the first file finds no metadata blocks for its
/// transaction (the mount keeps 256 blocks in reserve for commits).
pub const MIN_MOUNT_META_BYTES: u64 = 288 << 16;
/// The smallest data device a volume can have (the engine's own minimum:
/// the super block's region and 16 blocks), which mounts and takes a file.
pub const MIN_MOUNT_DATA_BYTES: u64 = MIN_DATA_BLOCKS << 12;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metadata device (file or block device).
    pub meta: PathBuf,
    /// The data device (file or block device).
    pub data: PathBuf,
    /// A quorum slot: NR,ADDR,PORT (repeat for each slot, up to 15).
    #[arg(short = 'Q', long = "quorum-slot", value_parser = parse_slot)]
    pub quorum: Vec<(usize, SocketAddrV4)>,
    /// Use at most this much of the metadata device (K, M, G, T).
    #[arg(short = 'm', long = "max-meta-size", value_parser = device::parse_size)]
    pub max_meta_size: Option<u64>,
    /// Use at most this much of the data device (K, M, G, T).
    #[arg(short = 'd', long = "max-data-size", value_parser = device::parse_size)]
    pub max_data_size: Option<u64>,
    /// Overwrite an existing scoutfs volume or other filesystem.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Allow devices smaller than the default minimum (1 GiB each), down
    /// to the smallest volume that mounts: 18 MiB of metadata, 320 KiB of
    /// data.
    #[arg(short = 'A', long = "allow-small-size")]
    pub allow_small_size: bool,
    /// Format version (1 or 2; default 2).
    #[arg(short = 'V', long = "format-version")]
    pub format_version: Option<u64>,
}

fn parse_slot(s: &str) -> Result<(usize, SocketAddrV4), String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [nr, addr, port] = parts[..] else {
        return Err(format!("quorum slot {s:?} is not NR,ADDR,PORT"));
    };
    let nr: usize = nr
        .parse()
        .map_err(|_| format!("quorum slot number {nr:?} is not a number"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("quorum address {addr:?} is not an IPv4 address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("quorum port {port:?} is not a port number"))?;
    if port == 0 {
        return Err("quorum port 0 is not usable".into());
    }
    Ok((nr, SocketAddrV4::new(addr, port)))
}

pub fn run(a: &Args) -> i32 {
    if let Some(v) = a.format_version {
        if !(1..=2).contains(&v) {
            eprintln!("scoutfs mkfs: format version {v} is not 1 or 2");
            return 2;
        }
    }
    // The same storage under two names (./x and /abs/x, a symlink, a hard
    // link, a loop device over the file, a partition of the disk, one
    // NVMe namespace as nvme:// and spdk://) would make a volume whose
    // data overwrites its metadata.
    let ids = DeviceId::of(&a.meta).and_then(|m| Ok((m, DeviceId::of(&a.data)?)));
    let (meta_id, data_id) = match ids {
        Ok(x) => x,
        Err(e) => {
            eprintln!("scoutfs mkfs: {e}");
            return 1;
        }
    };
    if meta_id.overlaps(&data_id) {
        eprintln!(
            "scoutfs mkfs: {} ({}) and {} ({}) are the same storage; the metadata and data devices must differ",
            a.meta.display(),
            meta_id.describe(),
            a.data.display(),
            data_id.describe()
        );
        return 2;
    }
    for p in [&a.meta, &a.data] {
        if let Err(e) = device::check_not_held_by_kernel(p) {
            eprintln!("scoutfs mkfs: {e}; will not make a volume here");
            return 1;
        }
    }
    let meta = match device::open(&a.meta) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scoutfs mkfs: {e}");
            return 1;
        }
    };
    let data = match device::open(&a.data) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scoutfs mkfs: {e}");
            return 1;
        }
    };
    // Held until the volume is made: a running engine (whose claim this
    // is) keeps its devices, --force or not, and no engine starts on a
    // half-made volume.
    for (p, d) in [(&a.meta, &meta), (&a.data, &data)] {
        match d.lock_exclusive() {
            Ok(()) => {}
            Err(DevError::Busy(_)) => {
                eprintln!(
                    "scoutfs mkfs: {} is in use by a running scoutfs engine (mounted); will not make a volume here",
                    p.display()
                );
                return 1;
            }
            Err(e) => {
                eprintln!("scoutfs mkfs: {e}");
                return 1;
            }
        }
    }
    let meta_bytes = a
        .max_meta_size
        .unwrap_or(u64::MAX)
        .min(meta.geometry().capacity_bytes);
    let data_bytes = a
        .max_data_size
        .unwrap_or(u64::MAX)
        .min(data.geometry().capacity_bytes);
    for (what, bytes, min, unit, path) in [
        (
            "metadata",
            meta_bytes,
            MIN_MOUNT_META_BYTES,
            64u64 << 10,
            &a.meta,
        ),
        ("data", data_bytes, MIN_MOUNT_DATA_BYTES, 4 << 10, &a.data),
    ] {
        if bytes < min {
            eprintln!(
                "scoutfs mkfs: {what} device {} gives {} {} KiB blocks ({bytes} bytes); a volume needs at least {} ({min} bytes) to mount",
                path.display(),
                bytes / unit,
                unit >> 10,
                min / unit
            );
            return 2;
        }
    }
    if !a.allow_small_size {
        for (what, bytes, min, path) in [
            ("metadata", meta_bytes, MIN_META_BYTES, &a.meta),
            ("data", data_bytes, MIN_DATA_BYTES, &a.data),
        ] {
            if bytes < min {
                eprintln!(
                    "scoutfs mkfs: {what} device {} is {} MiB, under the {} MiB minimum; use --allow-small-size to make it anyway",
                    path.display(),
                    bytes >> 20,
                    min >> 20
                );
                return 4;
            }
        }
    }
    for (p, d) in [(&a.meta, &meta), (&a.data, &data)] {
        match device::identify(&**d) {
            Ok(Some(what)) if !a.force => {
                eprintln!(
                    "scoutfs mkfs: {} holds {what}; use --force to overwrite it",
                    p.display()
                );
                return 3;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("scoutfs mkfs: {e}");
                return 1;
            }
        }
    }
    let opts = MkfsOptions {
        max_meta_bytes: a.max_meta_size,
        max_data_bytes: a.max_data_size,
        quorum: a.quorum.clone(),
        fsid: None,
        format_version: a.format_version,
    };
    match mkfs(&*meta, &*data, &opts) {
        Ok(sb) => {
            println!("Created scoutfs volume:");
            println!("  meta device:     {}", a.meta.display());
            println!("  data device:     {}", a.data.display());
            println!("  fsid:            {:#018x}", sb.fsid());
            println!("  format version:  {}", sb.fmt_vers.get());
            println!("  64 KiB meta blocks: {}", sb.total_meta_blocks.get());
            println!("  4 KiB data blocks:  {}", sb.total_data_blocks.get());
            println!("  quorum slots:    {}", sb.qconf.nr_configured());
            0
        }
        Err(e) => {
            eprintln!("scoutfs mkfs: {e}");
            match e.errno() {
                libc::EINVAL => 2,
                _ => 1,
            }
        }
    }
}
