//! The `scoutfs` command: parses the command line and hands it to the
//! subcommands in the scoutfs-tools crate.

use clap::{CommandFactory, FromArgMatches};

fn main() {
    // Run as /sbin/mount.scoutfs (a link to this binary), mount(8) takes
    // its own command line, not ours.
    if let Some(code) = scoutfs_tools::run_as_helper() {
        std::process::exit(code);
    }
    scoutfs_tools::default_sigpipe();
    let version: &'static str =
        Box::leak(scoutfs_tools::version(env!("SCOUTFS_BUILD_COMMIT")).into_boxed_str());
    let matches = scoutfs_tools::Cli::command().version(version).get_matches();
    let cli = scoutfs_tools::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    std::process::exit(scoutfs_tools::run(cli, env!("SCOUTFS_BUILD_COMMIT")));
}
