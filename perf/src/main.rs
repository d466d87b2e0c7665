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
//!
//! Whether the mount serves many requests at once (issue 12):
//! `scoutfs-perf probe` (a stat + listdir probe's latency, idle and under
//! load), `randread` (4 KiB direct reads by 1, 8, 32 readers against a
//! raw file), `meta4` (metadata rates of 4 processes against 1) and
//! `floor` (the three against a FUSE filesystem that answers from
//! memory: FUSE's own cost).

mod env;
mod fio;
mod floor;
mod floorbench;
mod fsbench;
mod items;
mod meta4;
mod probe;
mod randread;
mod raw;
mod syscalls;
mod target;

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
    /// Latency of a stat + listdir probe every 1 ms, idle, under an
    /// fsync'd write stream and under a create loop; scoutfs against ext4
    /// on a loop device (as root).
    #[command(long_about = PROBE_ABOUT)]
    Probe(probe::Args),
    /// fio 4 KiB random direct reads of a file in the mount by 1, 8 and
    /// 32 readers, against io_uring on a raw file at the same depth (as
    /// root).
    #[command(long_about = RANDREAD_ABOUT)]
    Randread(randread::Args),
    /// Creates, stats and unlinks from 1 process, then from 4 at once in
    /// separate directories (as root).
    #[command(long_about = META4_ABOUT)]
    Meta4(meta4::Args),
    /// probe, meta4 and randread against a FUSE filesystem that answers
    /// from memory, beside scoutfs: what FUSE costs, what the engine adds
    /// (as root).
    #[command(long_about = FLOOR_ABOUT)]
    Floor(floorbench::Args),
    /// Serve the FUSE floor at a directory until SIGTERM (used by the
    /// benchmarks).
    #[command(hide = true)]
    FloorServe(floor::ServeArgs),
    /// One metadata phase in one directory (used by meta4).
    #[command(hide = true)]
    MetaWorker(meta4::WorkerArgs),
}

const PROBE_ABOUT: &str = "\
A thread stats a small directory and lists it every millisecond and
records each probe's latency: with the filesystem idle, while another
process writes 512 MiB files with fsync in a loop (dd conv=fsync), and
while a shell loop creates 20 000 empty files. Prints p50, p99 and max
per phase and the p99 under load over the idle p99 of the same
filesystem (goal for scoutfs: within 2x). Targets are set up in --dir:
scoutfs (mkfs + scoutfs mount on sparse files, default mount options
plus --mount-args), ext4 on a loop device over a sparse file, or the
FUSE floor. Needs root. About a minute per target with the defaults.";

const RANDREAD_ABOUT: &str = "\
fio 4 KiB random reads with direct=1 of a 1 GiB file inside the mount
(written first) by 1, 8 and 32 concurrent readers (fio jobs, psync),
beside fio with io_uring on a raw 1 GiB file in --dir at the same total
depth (one job, iodepth = readers). Prints IOPS and latency, the scaling
against one reader (goal for scoutfs: >= 6x at 8) and the ratio to the
raw file (goal: >= 0.5x at the same depth). Pass mount options through,
e.g. --mount-args=\"--fuse-threads 8\". Needs root and fio. About 40 s
per target and as much for the raw file with the defaults.";

const META4_ABOUT: &str = "\
Creates (empty files), stats and unlinks of --files files by one
process, then by --procs processes at once, each in its own directory,
caches dropped before each phase. Prints each phase's rate and the
aggregate of the many over the one (goal for scoutfs: >= 2x with 4).
ext4 on a loop device shows what the client side allows on the same
CPUs. Needs root. Seconds per target with the defaults.";

const FLOOR_ABOUT: &str = "\
The FUSE floor is an in-memory filesystem served with fuse-backend-rs,
the crate the mount uses, asking the kernel for the same INIT options
and giving the same timeouts, with its handler threads answering inline
(no engine, no device; written data is dropped, reads return generated
bytes). This runs probe, meta4 and randread (each with its own options
below) against the floor and scoutfs in one run and prints, beside each
benchmark's figures, scoutfs minus the floor per operation: the
engine's share. Needs root and fio. A few minutes with the defaults.";

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Raw(a) => raw::run(&a),
        Cmd::Items(a) => items::run(&a),
        Cmd::Fs(a) => fsbench::run(&a),
        Cmd::Probe(a) => probe::run(&a),
        Cmd::Randread(a) => randread::run(&a),
        Cmd::Meta4(a) => meta4::run(&a),
        Cmd::Floor(a) => floorbench::run(&a),
        Cmd::FloorServe(a) => floor::serve(&a),
        Cmd::MetaWorker(a) => meta4::worker(&a),
    };
    std::process::exit(code);
}
