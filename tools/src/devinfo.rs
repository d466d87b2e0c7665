//! `scoutfs devinfo PATH`: open a device as the engine would (O_DIRECT,
//! io_uring) and print its geometry, then read its first block through a
//! queue pair to show the path works end to end.

use scoutfs_engine::dev::uring::{UringDev, UringOptions};
use scoutfs_engine::dev::{open_queue, BlockDev, IoRequest, QueueConfig};
use scoutfs_engine::dma::DmaPool;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A regular file or a block device.
    pub path: std::path::PathBuf,
}

pub fn run(a: &Args) -> i32 {
    let dev = match UringDev::open(&a.path, UringOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("scoutfs devinfo: {e}");
            return 1;
        }
    };
    let g = dev.geometry();
    println!("device:             {}", dev.name());
    println!(
        "kind:               {}",
        if dev.is_block_device() {
            "block device"
        } else {
            "regular file"
        }
    );
    println!("logical block size: {}", g.logical_block_size);
    println!("capacity:           {} bytes", g.capacity_bytes);
    println!("max transfer:       {} bytes", g.max_transfer_bytes);
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
    let mut qp = match open_queue(&dev, &cfg) {
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
            println!("first block read:   ok ({len} bytes, direct I/O through io_uring)");
            0
        }
        Err(e) => {
            eprintln!("scoutfs devinfo: reading the first block: {e}");
            1
        }
    }
}
