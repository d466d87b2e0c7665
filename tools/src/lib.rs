//! The `scoutfs` command's subcommands. The binary (src/main.rs at the
//! workspace root) parses the command line and calls [`run`].
//!
//! Subcommand names follow the scoutfs utility so that archive agents port
//! without surprises; each lives in its own module as it lands (mkfs, print,
//! check, mount and the admin commands come with the metadata and
//! filesystem issues).

mod check;
mod device;
mod devinfo;
pub mod helper;
mod install;
mod mkfs;
mod mount;
mod nvme;
mod print;
mod remount;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "scoutfs",
    about = "userspace scoutfs: make, inspect, check and run volumes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the build's version and commit.
    Version,
    /// Open a device (file or block device) the way the engine does and
    /// print its geometry.
    Devinfo(devinfo::Args),
    /// Make a new volume on a metadata and a data device.
    Mkfs(mkfs::Args),
    /// Print the super block and every btree item of a volume.
    Print(print::Args),
    /// Check a volume's metadata (fsck); exits 1 on any problem.
    Check(check::Args),
    /// Run the engine: mount a volume through FUSE and serve it until
    /// SIGINT or SIGTERM.
    Mount(mount::Args),
    /// Print a running mount's counters (operations, bytes, commits,
    /// cache hits, errors).
    Counters(mount::CountersArgs),
    /// NVMe controllers: list them, move them between the kernel and vfio-pci.
    Nvme(nvme::Args),
    /// Install this binary and the mount(8) helper links to it
    /// (/sbin/mount.scoutfs, /sbin/mount.fuse.scoutfs).
    Install(install::Args),
}

/// What `scoutfs version` and `scoutfs --version` print after "scoutfs ".
pub fn version(build_commit: &str) -> String {
    format!("{} ({build_commit})", env!("CARGO_PKG_VERSION"))
}

/// Let SIGPIPE end the process, as it ends coreutils: a command whose
/// reader went away (`scoutfs print META | head`) stops quietly, killed by
/// SIGPIPE (the shell shows 141), instead of panicking on the failed
/// write. Rust starts programs with SIGPIPE ignored; the binary calls this
/// first, and `scoutfs mount` ignores it again.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to the default has no
    // preconditions and runs before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Ignore SIGPIPE: writes to a closed pipe or socket fail with EPIPE.
pub fn ignore_sigpipe() {
    // SAFETY: ignoring a signal has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Run a parsed command; returns the process exit code.
pub fn run(cli: Cli, build_commit: &str) -> i32 {
    match cli.cmd {
        Command::Version => {
            println!("scoutfs {}", version(build_commit));
            0
        }
        Command::Devinfo(a) => devinfo::run(&a),
        Command::Mkfs(a) => mkfs::run(&a),
        Command::Print(a) => print::run(&a),
        Command::Check(a) => check::run(&a),
        Command::Mount(a) => {
            init_logging();
            mount::run(&a)
        }
        Command::Counters(a) => mount::counters(&a),
        Command::Nvme(a) => nvme::run(&a),
        Command::Install(a) => install::run(&a),
    }
}

/// The mount(8) helper, when the binary runs under one of its names
/// (`mount.scoutfs`, `mount.fuse.scoutfs`): its exit code. `None` for
/// any other name: the `scoutfs` command.
pub fn run_as_helper() -> Option<i32> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let rest: Vec<_> = args.collect();
    helper::dispatch(&argv0, &rest)
}

/// Log through `tracing` to stderr; RUST_LOG picks the level (info by
/// default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuse_backend_rs=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A failed write to stderr (a closed pipe) is dropped; reporting
        // it on stderr would panic in whichever thread logged.
        .log_internal_errors(false)
        .try_init();
}
