//! `scoutfs devinfo DEVICE`: open a device as the engine would (a file or
//! block device with O_DIRECT through io_uring, an NVMe namespace named
//! `nvme://BDF/NSID` through VFIO, or `spdk://BDF/NSID` with the `spdk`
//! feature) and print its geometry, then read its first block through a
//! queue pair to show the path works end to end.

use std::os::unix::fs::FileTypeExt;

use scoutfs_engine::dev::nvme::NvmeAddr;
use scoutfs_engine::dev::open_any;
use scoutfs_engine::dev::uring::UringOptions;
use scoutfs_engine::dev::{open_queue, Discard, IoRequest, QueueConfig};
use scoutfs_engine::dma::DmaPool;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A regular file, a block device, or an NVMe namespace
    /// (nvme://DOMAIN:BUS:DEV.FN/NSID, bound to vfio-pci).
    pub path: std::path::PathBuf,
}

/// What kind of device `spec` names and the path its I/O takes.
fn kind(spec: &str) -> (&'static str, &'static str) {
    if NvmeAddr::is_nvme(spec) {
        return ("NVMe namespace", "userspace NVMe queues through VFIO");
    }
    if spec.starts_with("spdk://") {
        return ("NVMe namespace", "SPDK's NVMe driver");
    }
    match std::fs::metadata(spec) {
        Ok(m) if m.file_type().is_block_device() => ("block device", "direct I/O through io_uring"),
        _ => ("regular file", "direct I/O through io_uring"),
    }
}

fn discard_text(d: Discard) -> &'static str {
    match d {
        Discard::Unsupported => "unsupported",
        Discard::Zeroes => "supported, discarded blocks read as zeros",
        Discard::Undefined => "supported, discarded blocks read as undefined data",
    }
}

pub fn run(a: &Args) -> i32 {
    let spec = a.path.to_string_lossy();
    let dev = match open_any(&spec, UringOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scoutfs devinfo: {e}");
            return 1;
        }
    };
    let g = dev.geometry();
    let (what, path) = kind(&spec);
    println!("device:             {}", dev.name());
    println!("kind:               {what}");
    println!("logical block size: {}", g.logical_block_size);
    println!("capacity:           {} bytes", g.capacity_bytes);
    println!("max transfer:       {} bytes", g.max_transfer_bytes);
    println!("discard:            {}", discard_text(g.discard));
    let pool = match DmaPool::new(4096, 1) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("scoutfs devinfo: {e}");
            return 1;
        }
    };
    let cfg = QueueConfig {
        depth: 1,
        pools: vec![pool.clone()],
    };
    let mut qp = match open_queue(&*dev, &cfg) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("scoutfs devinfo: {e}");
            return 1;
        }
    };
    let Some(buf) = pool.try_get() else { return 1 };
    let len = g.logical_block_size.min(4096);
    let c = qp.run_one(IoRequest::read(0, len, buf, 0));
    match c.result {
        Ok(()) => {
            println!("first block read:   ok ({len} bytes, {path})");
            0
        }
        Err(e) => {
            eprintln!("scoutfs devinfo: reading the first block: {e}");
            1
        }
    }
}
