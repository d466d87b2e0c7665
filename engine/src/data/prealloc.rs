//! Preallocation: how many blocks a write into a hole allocates beyond
//! the ones it writes (scoutfs's data_prealloc_blocks and
//! data_prealloc_contig_only mount options, data.c's alloc_block rule).
//!
//! The extra blocks become an unwritten extent next to the written ones,
//! so files written a block at a time, in turn, still get long extents.
//! The rule decides per written block, as scoutfs's does; a write of many
//! blocks gets what scoutfs would have allocated for each of its blocks in
//! turn, in one allocation.
//!
//! - `contig_only` (the default): only a write that looks like a streaming
//!   append preallocates: its block index equals the file's count of
//!   online blocks (so every block before it is allocated) and is past
//!   block 1. It then allocates up to `min(block index, blocks)`, stopping
//!   at the next extent, so a file's preallocation doubles as it grows.
//!   Any other write allocates just the blocks it touches.
//! - Otherwise (region preallocation): a write allocates the hole of the
//!   `blocks`-aligned region around its block, from the region's start
//!   (or from the block, when an extent lies in the region before it) to
//!   the region's end or the next extent.
//!
//! Our online count includes unwritten blocks (st_blocks counts them, as
//! ext4's does); scoutfs's counts only written ones. The two agree for
//! the streaming appends the rule is for: when an append reaches a hole,
//! the unwritten blocks before it have all been written.

use super::{extent_from, DataError, FileExtent};
use crate::item::ItemStore;

/// The preallocation options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prealloc {
    /// Most blocks one allocation may add (0: none).
    pub blocks: u64,
    /// Only streaming appends preallocate, growing with the file (see the
    /// module's doc); otherwise every write fills its aligned region.
    pub contig_only: bool,
}

impl Prealloc {
    pub const NONE: Prealloc = Prealloc {
        blocks: 0,
        contig_only: true,
    };
}

impl Default for Prealloc {
    /// scoutfs's defaults: 2048 blocks (8 MiB), streaming appends only.
    fn default() -> Self {
        Prealloc {
            blocks: 2048,
            contig_only: true,
        }
    }
}

/// Blocks to allocate for a write of the blocks `[b, b + need)` (all in
/// one hole) into a file with `online` online blocks, when the hole ends
/// before `hole_end` (exclusive): at least `need`, at most `hole_end - b`.
pub fn streaming_len(p: Prealloc, b: u64, need: u64, hole_end: u64, online: u64) -> u64 {
    debug_assert!(need > 0 && b + need <= hole_end);
    if p.blocks == 0 || b != online {
        // Not a streaming append, and none of its later blocks becomes
        // one: each allocates only itself.
        return need;
    }
    // Block by block as scoutfs would: each allocation makes the file's
    // online count equal the next hole block again.
    let end = b + need;
    let mut pos = b;
    let mut rounds = 0u64;
    while pos < end {
        let count = if pos > 1 {
            pos.min(p.blocks).min(hole_end - pos)
        } else {
            1
        };
        pos += count;
        rounds += 1;
        debug_assert!(rounds <= need, "every round allocates at least a block");
    }
    pos - b
}

/// Where region preallocation puts the allocation for a write at hole
/// block `b`, given the next extent after the hole (`next`): the first
/// block and the length (at most `p.blocks`). Covers `b`.
pub async fn region<S: ItemStore>(
    vol: &mut S,
    ino: u64,
    b: u64,
    next: Option<FileExtent>,
    p: Prealloc,
) -> Result<(u64, u64), DataError> {
    debug_assert!(p.blocks > 0);
    let mut start = b - b % p.blocks;
    let mut count = p.blocks;
    let mut found = extent_from(vol, ino, start).await?;
    if found.is_some_and(|f| f.iblock < b) {
        // An extent in the region before `b`: fill from `b` on.
        count -= b - start;
        start = b;
        found = next;
    }
    if let Some(f) = found {
        if f.iblock > start && f.iblock < start + count {
            count = f.iblock - start;
        }
    }
    debug_assert!(start <= b && b < start + count);
    Ok((start, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Prealloc = Prealloc {
        blocks: 32,
        contig_only: true,
    };

    #[test]
    fn streaming_appends_double_up_to_the_limit() {
        // One block at a time from an empty file: 1, 1, 2, 4, 8, 16, 32, 32.
        let mut online = 0;
        let mut sizes = Vec::new();
        let mut b = 0;
        while b < 128 {
            let n = streaming_len(P, b, 1, u64::MAX, online);
            sizes.push(n);
            online += n;
            b += n;
        }
        assert_eq!(sizes, [1, 1, 2, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn other_writes_allocate_what_they_touch() {
        assert_eq!(streaming_len(P, 5, 2, u64::MAX, 1), 2, "not at the end");
        assert_eq!(streaming_len(P, 1, 1, u64::MAX, 1), 1, "block 1");
        assert_eq!(streaming_len(Prealloc::NONE, 64, 1, u64::MAX, 64), 1);
        // A streaming write of many blocks gets what its blocks would.
        assert_eq!(streaming_len(P, 0, 5, u64::MAX, 0), 8);
        assert_eq!(streaming_len(P, 64, 40, u64::MAX, 64), 64);
        // The next extent stops it.
        assert_eq!(streaming_len(P, 16, 1, 20, 16), 4);
    }
}
