//! Values of the items in the server's log merge btree (zones
//! `LOG_MERGE_*`): the status of a merge of finalized log trees into the fs
//! root, the key ranges still to merge, the requests handed to mounts, their
//! completions, and the roots being freed afterwards.

use bytemuck::{Pod, Zeroable};

use super::alloc::AllocListHead;
use super::btree::{BtreeRoot, BTREE_MAX_VAL_LEN};
use super::key::DiskKey;
use super::le::Le64;

/// The one status item of a merge in progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogMergeStatus {
    pub next_range_key: DiskKey,
    pub nr_requests: Le64,
    pub nr_complete: Le64,
    pub seq: Le64,
}
const _: () = assert!(std::mem::size_of::<LogMergeStatus>() == 56);

/// A range of the fs key space that still needs merging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogMergeRange {
    pub start: DiskKey,
    pub end: DiskKey,
}
const _: () = assert!(std::mem::size_of::<LogMergeRange>() == 64);

/// Work handed to a mount: merge the log trees' items in start..=end into
/// the subtree `root`, allocating from `meta_avail`. Stored so the server
/// can reclaim its resources if the mount fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogMergeRequest {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub logs_root: BtreeRoot,
    pub root: BtreeRoot,
    pub start: DiskKey,
    pub end: DiskKey,
    pub input_seq: Le64,
    pub rid: Le64,
    pub seq: Le64,
    /// `LOG_MERGE_REQUEST_*`.
    pub flags: Le64,
}
const _: () = assert!(std::mem::size_of::<LogMergeRequest>() == 208);

/// The request's root is a subtree of the fs root under a parent.
pub const LOG_MERGE_REQUEST_SUBTREE: u64 = 1 << 0;

/// A mount's finished merge: the new subtree to splice into the fs root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogMergeComplete {
    pub meta_avail: AllocListHead,
    pub meta_freed: AllocListHead,
    pub root: BtreeRoot,
    pub start: DiskKey,
    pub end: DiskKey,
    /// Where to restart if the range was not finished (`COMP_REMAIN`).
    pub remain: DiskKey,
    pub rid: Le64,
    pub seq: Le64,
    /// `LOG_MERGE_COMP_*`.
    pub flags: Le64,
}
const _: () = assert!(std::mem::size_of::<LogMergeComplete>() == 208);

/// The merge failed: ignore the completion, reclaim the request.
pub const LOG_MERGE_COMP_ERROR: u64 = 1 << 0;
/// The range was not finished: merge again from `remain`.
pub const LOG_MERGE_COMP_REMAIN: u64 = 1 << 1;

/// A merged log tree whose blocks are being freed, from `key` on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct LogMergeFreeing {
    pub root: BtreeRoot,
    pub key: DiskKey,
    pub seq: Le64,
}
const _: () = assert!(std::mem::size_of::<LogMergeFreeing>() == 64);

const _: () = assert!(std::mem::size_of::<LogMergeRequest>() <= BTREE_MAX_VAL_LEN);
const _: () = assert!(std::mem::size_of::<LogMergeComplete>() <= BTREE_MAX_VAL_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block::BlockRef;
    use crate::format::key::Key;

    #[test]
    fn merge_records_round_trip() {
        let req = LogMergeRequest {
            root: BtreeRoot::new(BlockRef::new(4, 5), 3),
            start: Key::inode(1).to_disk(),
            end: Key::inode_last(1023).to_disk(),
            rid: 0x1234.into(),
            flags: LOG_MERGE_REQUEST_SUBTREE.into(),
            ..Default::default()
        };
        let back: LogMergeRequest = bytemuck::pod_read_unaligned(bytemuck::bytes_of(&req));
        assert_eq!(back, req);
        assert_eq!(Key::from(back.end), Key::inode_last(1023));

        let comp = LogMergeComplete {
            remain: Key::inode(9).to_disk(),
            flags: LOG_MERGE_COMP_REMAIN.into(),
            ..Default::default()
        };
        let back: LogMergeComplete = bytemuck::pod_read_unaligned(bytemuck::bytes_of(&comp));
        assert_eq!(back, comp);

        let st = LogMergeStatus {
            nr_requests: 3.into(),
            ..Default::default()
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<LogMergeStatus>(bytemuck::bytes_of(&st)),
            st
        );
        let fr = LogMergeFreeing {
            seq: 8.into(),
            ..Default::default()
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<LogMergeFreeing>(bytemuck::bytes_of(&fr)),
            fr
        );
        let rng = LogMergeRange {
            start: Key::MIN.to_disk(),
            end: Key::MAX.to_disk(),
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<LogMergeRange>(bytemuck::bytes_of(&rng)),
            rng
        );
    }
}
