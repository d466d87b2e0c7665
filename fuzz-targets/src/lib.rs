//! Fuzz target bodies: one ordinary function per kind of bytes the
//! project takes from outside (metadata blocks and item values read from
//! the device, FUSE requests, the admin socket's protocol), each
//! `fn(&[u8])` that must return (never panic, hang or allocate without
//! bound) whatever the bytes are.
//!
//! They are built by stable Rust as part of the workspace: `cargo test`
//! replays every target's corpus (`fuzz/corpus/<target>/`) plus a seeded,
//! bounded number of mutated inputs (`tests/replay.rs`), and the
//! cargo-fuzz crate in `fuzz/` (nightly, outside the workspace) only calls
//! them under libFuzzer. `fuzz/README.md` says how to run them and what
//! the coverage-guided runs found.

pub mod admin;
pub mod fuse_req;
pub mod input;
pub mod items;
pub mod ondisk;
pub mod seeds;
pub mod volume;

/// A fuzz target: its name (the cargo-fuzz target and corpus directory)
/// and its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order the replay test runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "super_block",
        run: ondisk::super_block,
    },
    Target {
        name: "quorum_block",
        run: ondisk::quorum_block,
    },
    Target {
        name: "btree_block",
        run: ondisk::btree_block,
    },
    Target {
        name: "alloc",
        run: ondisk::alloc,
    },
    Target {
        name: "log_trees",
        run: ondisk::log_trees,
    },
    Target {
        name: "inode",
        run: items::inode,
    },
    Target {
        name: "dirent",
        run: items::dirent,
    },
    Target {
        name: "xattr",
        run: items::xattr,
    },
    Target {
        name: "symlink",
        run: items::symlink,
    },
    Target {
        name: "volume",
        run: volume::volume,
    },
    Target {
        name: "fuse_request",
        run: fuse_req::fuse_request,
    },
    Target {
        name: "admin",
        run: admin::admin,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
