//! `scoutfs check META DATA`: verify a volume (fsck). Prints each problem
//! and exits 1 if there is any; progress goes to stderr on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;

use scoutfs_engine::txn::check::check_volume_with_progress;
use scoutfs_engine::txn::open_store;

use crate::device;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The metadata device.
    pub meta: PathBuf,
    /// The data device.
    pub data: PathBuf,
}

pub fn run(a: &Args) -> i32 {
    let (meta, data) = match (device::open(&a.meta), device::open(&a.data)) {
        (Ok(m), Ok(d)) => (m, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("scoutfs check: {e}");
            return 1;
        }
    };
    let (mut store, sb) = match open_store(&*meta, 256 << 20) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "scoutfs check: {}",
                device::explain(&e, &[(&a.meta, &*meta), (&a.data, &*data)])
            );
            return 1;
        }
    };
    let tty = std::io::stderr().is_terminal();
    let progress: Option<Box<dyn FnMut(u64)>> =
        tty.then(|| Box::new(|n: u64| eprint!("\rchecked {n} blocks")) as Box<dyn FnMut(u64)>);
    let report = check_volume_with_progress(&mut store, &*meta, &*data, progress);
    if tty {
        eprintln!();
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!(
        "checked fsid {:#018x} seq {}: {} trees, {} blocks, {} items, {} inodes, {} free meta blocks, {} free data blocks, {} problems",
        sb.fsid(),
        sb.seq.get(),
        report.trees,
        report.blocks,
        report.items,
        report.inodes,
        report.free_meta_blocks,
        report.free_data_blocks,
        report.problems.len()
    );
    i32::from(!report.problems.is_empty())
}
