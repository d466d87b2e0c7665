//! On-disk format: every structure that is written to a device, as
//! `#[repr(C)]` `bytemuck::Pod` structs with compile-time size checks.
//! Little-endian on disk (see [`le`]). Nothing outside this module knows
//! byte offsets.

pub mod block;
pub mod le;

pub use block::{
    check_block, seal_block, BlockCheckError, BlockHeader, BlockMagic, BlockRef, Expected,
};
pub use le::{Le16, Le32, Le64};
