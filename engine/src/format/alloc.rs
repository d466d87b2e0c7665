//! Allocator structures: btree allocator roots of free extents, lists of free
//! metadata blocks, free extent keys, and the file data extent item.
//!
//! Free space is extent items (no value) in an allocator btree, each extent
//! stored twice: by end block in [`zone::FREE_EXTENT_BLKNO`] (to find and
//! merge neighbours) and by length order in [`zone::FREE_EXTENT_ORDER`] (to
//! find a large enough extent fast, largest order first).
//!
//! A transaction's metadata allocations come from [`AllocListBlock`]s:
//! arrays of free blknos in 64 KiB blocks, chained by `next` and described by
//! an [`AllocListHead`].

use bytemuck::{Pod, Zeroable};

use super::block::{BlockHeader, BlockRef, BLOCK_LG_SIZE};
use super::btree::BtreeRoot;
use super::key::{item_type, zone, Key};
use super::le::{Le32, Le64};

/// An allocator: a btree of free extents and the total free blocks in it.
/// All zeros is an empty allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AllocRoot {
    pub total_len: Le64,
    /// `ALLOC_FLAG_*`.
    pub flags: Le32,
    pub _pad: Le32,
    pub root: BtreeRoot,
}
const _: () = assert!(std::mem::size_of::<AllocRoot>() == 40);
const _: () = assert!(std::mem::align_of::<AllocRoot>() == 1);

/// A list of alloc list blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AllocListHead {
    /// The first block of the list (null when the list is empty).
    pub ref_: BlockRef,
    /// Sum of `nr` over every block in the list (free blocks it holds).
    pub total_nr: Le64,
    /// `nr` of the first block, for sizing allocations.
    pub first_nr: Le32,
    /// `ALLOC_FLAG_*`.
    pub flags: Le32,
}
const _: () = assert!(std::mem::size_of::<AllocListHead>() == 32);
const _: () = assert!(std::mem::align_of::<AllocListHead>() == 1);

/// Set on an allocator root or list head when it is running low.
pub const ALLOC_FLAG_LOW: u32 = 1 << 0;

/// Who owns an allocator (reported by alloc-detail style tools).
pub const ALLOC_OWNER_NONE: u8 = 0;
pub const ALLOC_OWNER_SERVER: u8 = 1;
pub const ALLOC_OWNER_MOUNT: u8 = 2;
pub const ALLOC_OWNER_SRCH: u8 = 3;
pub const ALLOC_OWNER_LOG_MERGE: u8 = 4;

/// The header of an alloc list block. An array of `Le64` blknos fills the
/// rest of the 64 KiB block; the live entries are `blknos[start..start+nr]`
/// (the array floats so that adding and removing both only move an index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AllocListBlock {
    pub hdr: BlockHeader,
    /// The next block of the list, null at the end.
    pub next: BlockRef,
    pub start: Le32,
    pub nr: Le32,
}
const _: () = assert!(std::mem::size_of::<AllocListBlock>() == 56);
const _: () = assert!(std::mem::align_of::<AllocListBlock>() == 1);

/// Byte offset of the blkno array in an alloc list block.
pub const ALLOC_LIST_BLKNOS_OFFSET: usize = std::mem::size_of::<AllocListBlock>();
/// How many blknos one alloc list block holds.
pub const ALLOC_LIST_MAX_BLOCKS: usize = (BLOCK_LG_SIZE - ALLOC_LIST_BLKNOS_OFFSET) / 8;
const _: () = assert!(ALLOC_LIST_BLKNOS_OFFSET + ALLOC_LIST_MAX_BLOCKS * 8 == BLOCK_LG_SIZE);

/// The header of an alloc list block buffer. Panics on a buffer shorter
/// than the header (blocks are always `BLOCK_LG_SIZE`).
pub fn alloc_list_block(block: &[u8]) -> &AllocListBlock {
    bytemuck::from_bytes(&block[..ALLOC_LIST_BLKNOS_OFFSET])
}

pub fn alloc_list_block_mut(block: &mut [u8]) -> &mut AllocListBlock {
    bytemuck::from_bytes_mut(&mut block[..ALLOC_LIST_BLKNOS_OFFSET])
}

/// The whole blkno array of an alloc list block (`ALLOC_LIST_MAX_BLOCKS`
/// entries). Panics unless `block` is `BLOCK_LG_SIZE` long.
pub fn alloc_list_array(block: &[u8]) -> &[Le64] {
    assert_eq!(block.len(), BLOCK_LG_SIZE);
    bytemuck::cast_slice(&block[ALLOC_LIST_BLKNOS_OFFSET..])
}

pub fn alloc_list_array_mut(block: &mut [u8]) -> &mut [Le64] {
    assert_eq!(block.len(), BLOCK_LG_SIZE);
    bytemuck::cast_slice_mut(&mut block[ALLOC_LIST_BLKNOS_OFFSET..])
}

/// An alloc list block whose `start`/`nr` don't fit the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("alloc list block {blkno}: entries start {start} nr {nr} exceed {max}")]
pub struct AllocListError {
    pub blkno: u64,
    pub start: u32,
    pub nr: u32,
    pub max: usize,
}

/// The live blknos of an alloc list block, checking `start` and `nr`.
/// Never panics on a `BLOCK_LG_SIZE` buffer, whatever it holds.
pub fn alloc_list_entries(block: &[u8]) -> Result<&[Le64], AllocListError> {
    let h = alloc_list_block(block);
    let (start, nr) = (h.start.get(), h.nr.get());
    let bad = AllocListError {
        blkno: h.hdr.blkno.get(),
        start,
        nr,
        max: ALLOC_LIST_MAX_BLOCKS,
    };
    let (s, n) = (start as usize, nr as usize);
    match s.checked_add(n) {
        Some(end) if end <= ALLOC_LIST_MAX_BLOCKS => Ok(&alloc_list_array(block)[s..end]),
        _ => Err(bad),
    }
}

/// A run of blocks: `start..start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
}

impl Extent {
    /// The last block of the extent. `len` must be non-zero.
    pub fn end(&self) -> u64 {
        debug_assert!(self.len > 0);
        self.start + (self.len - 1)
    }
}

/// The order of a free extent's length: floor(log8(len)), so 1..=7 is 0,
/// 8..=63 is 1, and so on.
pub const fn free_extent_order(len: u64) -> u64 {
    (63 - (len | 1).leading_zeros() as u64) / 3
}

/// The smallest length with the same order as `len`.
pub const fn smallest_order_length(len: u64) -> u64 {
    1 << (free_extent_order(len) * 3)
}

/// The key of a free extent in the by-end-block index: first = end,
/// second = len.
pub fn free_extent_blkno_key(ext: Extent) -> Key {
    Key::new(zone::FREE_EXTENT_BLKNO, ext.end(), 0, ext.len, 0, 0)
}

/// The key of a free extent in the by-length-order index: first = the
/// reversed order (u64::MAX - order, so the largest order sorts first),
/// second = end, third = len.
pub fn free_extent_order_key(ext: Extent) -> Key {
    let revord = u64::MAX - free_extent_order(ext.len);
    Key::new(zone::FREE_EXTENT_ORDER, revord, 0, ext.end(), ext.len, 0)
}

/// The extent a free extent key (of either index) describes, or `None` if
/// the key is not a well-formed free extent key.
pub fn free_extent_from_key(key: &Key) -> Option<Extent> {
    let (end, len) = match key.zone {
        zone::FREE_EXTENT_BLKNO => (key.first, key.second),
        zone::FREE_EXTENT_ORDER => {
            if key.third == 0 || key.first != u64::MAX - free_extent_order(key.third) {
                return None;
            }
            (key.second, key.third)
        }
        _ => return None,
    };
    if len == 0 || len - 1 > end {
        return None;
    }
    Some(Extent {
        start: end - (len - 1),
        len,
    })
}

/// The value of a file data extent item (fs zone, data extent type; key
/// first = ino, second = last logical block, third = len).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct DataExtentVal {
    /// First data device block (meaningless for offline extents).
    pub blkno: Le64,
    /// `DATA_EXTENT_*` flags.
    pub flags: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<DataExtentVal>() == 16);
const _: () = assert!(std::mem::align_of::<DataExtentVal>() == 1);

/// The data was released to an archive; staging brings it back.
pub const DATA_EXTENT_OFFLINE: u8 = 1 << 0;
/// Allocated but never written: reads return zeros.
pub const DATA_EXTENT_UNWRITTEN: u8 = 1 << 1;
/// Flag bits this format doesn't know.
pub const DATA_EXTENT_UNKNOWN: u8 = !(DATA_EXTENT_OFFLINE | DATA_EXTENT_UNWRITTEN);

/// The key of a file's data extent: logical blocks `iblock..iblock + len`.
pub fn data_extent_key(ino: u64, iblock: u64, len: u64) -> Key {
    debug_assert!(len > 0);
    Key::new(
        zone::FS,
        ino,
        item_type::DATA_EXTENT,
        iblock + (len - 1),
        len,
        0,
    )
}

/// One extent of a file as its data extent item records it: logical
/// blocks `iblock..iblock + len` at device blocks `blkno..blkno + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileExtent {
    pub iblock: u64,
    pub len: u64,
    pub blkno: u64,
    pub flags: u8,
}

impl FileExtent {
    /// The last logical block.
    pub fn end(&self) -> u64 {
        self.iblock + self.len - 1
    }

    /// The extent a data extent item (its key and value) records, or what
    /// is wrong with the item.
    pub fn from_item(key: &Key, val: &[u8]) -> Result<FileExtent, &'static str> {
        let (end, len) = (key.second, key.third);
        if len == 0 || len - 1 > end {
            return Err("bad length");
        }
        let v: DataExtentVal =
            bytemuck::try_pod_read_unaligned(val).map_err(|_| "bad value size")?;
        if v.flags & DATA_EXTENT_UNKNOWN != 0 {
            return Err("unknown flags");
        }
        let blkno = v.blkno.get();
        if v.flags & DATA_EXTENT_OFFLINE == 0 && blkno.checked_add(len).is_none() {
            return Err("device range overflows");
        }
        Ok(FileExtent {
            iblock: end - (len - 1),
            len,
            blkno,
            flags: v.flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_are_log8() {
        assert_eq!(free_extent_order(1), 0);
        assert_eq!(free_extent_order(7), 0);
        assert_eq!(free_extent_order(8), 1);
        assert_eq!(free_extent_order(63), 1);
        assert_eq!(free_extent_order(64), 2);
        assert_eq!(free_extent_order(u64::MAX), 21);
        assert_eq!(smallest_order_length(100), 64);
        assert_eq!(ALLOC_LIST_MAX_BLOCKS, 8185);
    }

    #[test]
    fn larger_orders_sort_first_then_by_end() {
        let big = free_extent_order_key(Extent {
            start: 1000,
            len: 4096,
        });
        let small = free_extent_order_key(Extent { start: 10, len: 3 });
        let small2 = free_extent_order_key(Extent { start: 20, len: 5 });
        assert!(big < small && small < small2);
        let a = free_extent_blkno_key(Extent { start: 10, len: 3 });
        let b = free_extent_blkno_key(Extent {
            start: 13,
            len: 100,
        });
        assert!(a < b);
        assert!(free_extent_from_key(&Key::inode(1)).is_none());
        assert!(free_extent_from_key(&Key::new(zone::FREE_EXTENT_BLKNO, 5, 0, 7, 0, 0)).is_none());
        assert!(free_extent_from_key(&Key::new(zone::FREE_EXTENT_ORDER, 0, 0, 5, 3, 0)).is_none());
    }

    proptest! {
        #[test]
        fn extent_keys_round_trip(start in 0u64..u64::MAX / 2, len in 1u64..u64::MAX / 2) {
            let ext = Extent { start, len };
            prop_assert_eq!(free_extent_from_key(&free_extent_blkno_key(ext)), Some(ext));
            prop_assert_eq!(free_extent_from_key(&free_extent_order_key(ext)), Some(ext));
            let k = free_extent_blkno_key(ext).to_disk();
            prop_assert_eq!(free_extent_from_key(&Key::from(k)), Some(ext));
        }
    }

    #[test]
    fn structs_round_trip() {
        let root = AllocRoot {
            total_len: 1234.into(),
            flags: ALLOC_FLAG_LOW.into(),
            _pad: 0.into(),
            root: BtreeRoot::new(BlockRef::new(5, 6), 2),
        };
        let b = bytemuck::bytes_of(&root);
        assert_eq!(b[0], 0xd2);
        assert_eq!(b[8], 1);
        assert_eq!(b[16], 5);
        assert_eq!(bytemuck::pod_read_unaligned::<AllocRoot>(b), root);

        let head = AllocListHead {
            ref_: BlockRef::new(3, 4),
            total_nr: 9000.into(),
            first_nr: 8185.into(),
            flags: 0.into(),
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<AllocListHead>(bytemuck::bytes_of(&head)),
            head
        );

        let dv = DataExtentVal {
            blkno: 77.into(),
            flags: DATA_EXTENT_OFFLINE,
            _pad: [0; 7],
        };
        let b = bytemuck::bytes_of(&dv);
        assert_eq!(b[8], DATA_EXTENT_OFFLINE);
        assert_eq!(bytemuck::pod_read_unaligned::<DataExtentVal>(b), dv);

        let k = data_extent_key(9, 100, 10);
        assert_eq!(
            (k.zone, k.first, k.ty, k.second, k.third),
            (16, 9, 28, 109, 10)
        );
    }

    #[test]
    fn data_extent_items_decode_or_say_what_is_wrong() {
        let val = |blkno: u64, flags: u8| {
            bytemuck::bytes_of(&DataExtentVal {
                blkno: blkno.into(),
                flags,
                _pad: [0; 7],
            })
            .to_vec()
        };
        let key = data_extent_key(9, 100, 10);
        assert_eq!(
            FileExtent::from_item(&key, &val(500, DATA_EXTENT_UNWRITTEN)),
            Ok(FileExtent {
                iblock: 100,
                len: 10,
                blkno: 500,
                flags: DATA_EXTENT_UNWRITTEN,
            })
        );
        assert_eq!(
            FileExtent::from_item(&key, &val(500, 0)).unwrap().end(),
            109
        );
        let mut zero_len = key;
        zero_len.third = 0;
        assert_eq!(
            FileExtent::from_item(&zero_len, &val(1, 0)),
            Err("bad length")
        );
        let mut too_long = key;
        too_long.third = 111;
        assert_eq!(
            FileExtent::from_item(&too_long, &val(1, 0)),
            Err("bad length")
        );
        assert_eq!(FileExtent::from_item(&key, &[0; 15]), Err("bad value size"));
        assert_eq!(
            FileExtent::from_item(&key, &val(1, 1 << 7)),
            Err("unknown flags")
        );
        assert_eq!(
            FileExtent::from_item(&key, &val(u64::MAX - 3, 0)),
            Err("device range overflows")
        );
        // An offline extent's device block means nothing.
        assert!(FileExtent::from_item(&key, &val(u64::MAX, DATA_EXTENT_OFFLINE)).is_ok());
    }

    #[test]
    fn alloc_list_entries_are_bounded() {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        alloc_list_array_mut(&mut b)[10].set(42);
        alloc_list_array_mut(&mut b)[11].set(43);
        let h = alloc_list_block_mut(&mut b);
        h.start.set(10);
        h.nr.set(2);
        let e: Vec<u64> = alloc_list_entries(&b)
            .unwrap()
            .iter()
            .map(|v| v.get())
            .collect();
        assert_eq!(e, vec![42, 43]);

        alloc_list_block_mut(&mut b)
            .nr
            .set(ALLOC_LIST_MAX_BLOCKS as u32);
        assert!(alloc_list_entries(&b).is_err());
        alloc_list_block_mut(&mut b).start.set(u32::MAX);
        assert!(alloc_list_entries(&b).is_err());
        alloc_list_block_mut(&mut b).start.set(0);
        assert_eq!(alloc_list_entries(&b).unwrap().len(), ALLOC_LIST_MAX_BLOCKS);
    }
}
