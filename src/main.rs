//! The `scoutfs` command: parses the command line and hands it to the
//! subcommands in the scoutfs-tools crate.

use clap::Parser;

fn main() {
    let cli = scoutfs_tools::Cli::parse();
    std::process::exit(scoutfs_tools::run(cli, env!("SCOUTFS_BUILD_COMMIT")));
}
