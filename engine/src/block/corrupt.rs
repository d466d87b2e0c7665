//! Reporting metadata blocks that fail their checks while serving.
//!
//! Every operation that meets a bad block returns an error (EIO at the
//! frontends) and counts it; the block is logged once per mount, with its
//! device, its number and what differed, however often operations retry
//! it. Block numbers here are always metadata block numbers: 64 KiB
//! units from the start of the metadata device (the log line also gives
//! the byte offset).

use std::collections::HashSet;

use crate::format::block::BLOCK_LG_SHIFT;

/// Distinct blocks logged one by one; past this, one line says that
/// further blocks are only counted (a badly damaged device must not
/// flood the log or grow this set without bound).
pub const MAX_LOGGED_BLOCKS: usize = 1024;

/// The mount's record of corrupt blocks met.
#[derive(Debug, Default)]
pub struct CorruptionLog {
    logged: HashSet<u64>,
    /// Every time an operation met a bad block, logged or not.
    met: u64,
    /// The "only counted from now on" line was logged.
    saturated: bool,
}

impl CorruptionLog {
    /// An operation met block `blkno` of `device` failing its checks
    /// (`what`): count it, and log it if this block wasn't logged yet.
    /// Returns whether a line was logged.
    pub fn report(&mut self, device: &str, blkno: u64, what: &dyn std::fmt::Display) -> bool {
        self.met += 1;
        if self.logged.contains(&blkno) {
            return false;
        }
        if self.logged.len() >= MAX_LOGGED_BLOCKS {
            if !self.saturated {
                self.saturated = true;
                tracing::error!(
                    "{device}: more than {MAX_LOGGED_BLOCKS} corrupt metadata blocks; \
                     further ones are counted, not logged"
                );
            }
            return false;
        }
        self.logged.insert(blkno);
        let offset = blkno
            .checked_shl(BLOCK_LG_SHIFT)
            .filter(|o| o >> BLOCK_LG_SHIFT == blkno);
        let offset = offset.map_or_else(|| "past 2^64".to_string(), |o| o.to_string());
        tracing::error!(
            "{device}: corrupt metadata block {blkno} (64 KiB blocks, byte offset {offset}): \
             {what}; operations that need it fail with EIO"
        );
        true
    }

    /// How many times operations met a corrupt block.
    pub fn met(&self) -> u64 {
        self.met
    }

    /// How many distinct blocks were logged.
    pub fn logged(&self) -> usize {
        self.logged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_block_is_logged_once_and_every_meeting_counted() {
        let mut log = CorruptionLog::default();
        assert!(log.report("meta", 7, &"crc"));
        assert!(!log.report("meta", 7, &"crc"));
        assert!(log.report("meta", 8, &"crc"));
        assert_eq!((log.met(), log.logged()), (3, 2));
        // Block numbers past the byte range still log.
        assert!(log.report("meta", u64::MAX, &"blkno"));
    }

    #[test]
    fn the_set_of_logged_blocks_is_bounded() {
        let mut log = CorruptionLog::default();
        for b in 0..MAX_LOGGED_BLOCKS as u64 + 10 {
            log.report("meta", b, &"x");
        }
        assert_eq!(log.logged(), MAX_LOGGED_BLOCKS);
        assert_eq!(log.met(), MAX_LOGGED_BLOCKS as u64 + 10);
    }
}
