//! scoutfs-perf: benchmarks that print figures and ratios against a
//! reference measured in the same run.
//!
//! `scoutfs-perf raw`: the device layer driven through the reactor (4 KiB
//! random read/write at QD 1 and 32, 1 MiB sequential write/read) against
//! fio with the same parameters on the same file, plus the reactor
//! thread's syscalls per I/O counted by `perf stat` (or strace).
//!
//! `scoutfs-perf items`: metadata item operation rates and commit
//! throughput at growing tree sizes.
//!
//! `scoutfs-perf fs`: the FUSE mount against ext4 on a loop device on the
//! same disk: mdtest-like metadata rates and 1 MiB streaming.

mod env;
mod fio;
mod fsbench;
mod items;
mod raw;
mod syscalls;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "scoutfs-perf",
    about = "scoutfs benchmarks with same-run references"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Raw device I/O through the reactor vs fio (io_uring, O_DIRECT).
    Raw(raw::Args),
    /// Metadata item insert/lookup/delete and commit rates by tree size.
    Items(items::Args),
    /// The FUSE mount against ext4 on a loop device: mdtest-like
    /// metadata rates and 1 MiB streaming.
    Fs(fsbench::Args),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Raw(a) => raw::run(&a),
        Cmd::Items(a) => items::run(&a),
        Cmd::Fs(a) => fsbench::run(&a),
    };
    std::process::exit(code);
}
