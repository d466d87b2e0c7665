//! libscoutfs_shim.so: the LD_PRELOAD client side of the engine.
//!
//! Unmodified programs load this library; calls on paths under the mount
//! prefix travel to the engine over shared-memory rings, with file data in a
//! shared buffer arena the engine does device I/O against. Everything else
//! passes through to libc.
//!
//! Today this crate holds only the ring protocol's version, which the
//! engine and the shim must agree on; the rings, the arena and the
//! interposed entry points come with the shim issue.

/// The version of the shim <-> engine ring protocol. Bumped whenever the
/// layout of a ring entry or the arena changes.
pub const RING_PROTOCOL_VERSION: u32 = 0;

/// Lets a loader or a test ask a loaded shim which protocol it speaks.
#[no_mangle]
pub extern "C" fn scoutfs_shim_protocol_version() -> u32 {
    RING_PROTOCOL_VERSION
}
