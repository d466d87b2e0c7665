//! Item keys: the fixed 32-byte key every btree item carries, its zones and
//! types, and the in-memory [`Key`] that code compares and steps through.
//!
//! On disk ([`DiskKey`]) the fields sit as scoutfs stores them: first,
//! second, third (u64), fourth, zone, type (u8) and five pad bytes. Keys
//! compare by **zone, first, type, second, third, fourth**, so all the items
//! of one inode (fs zone, first = ino) sit together whatever their type.
//! [`Key`] declares its fields in that order so the derived `Ord` is the key
//! order, and `inc`/`dec` treat a key as one multi-precision number in the
//! same order. [`DiskKey`] deliberately has no `Ord`: compare [`Key`]s.

use std::fmt;

use bytemuck::{Pod, Zeroable};

use super::le::Le64;

/// A key as stored in btree items and other on-disk structures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct DiskKey {
    pub first: Le64,
    pub second: Le64,
    pub third: Le64,
    pub fourth: u8,
    pub zone: u8,
    pub ty: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(std::mem::size_of::<DiskKey>() == 32);
const _: () = assert!(std::mem::align_of::<DiskKey>() == 1);
const _: () = assert!(std::mem::offset_of!(DiskKey, fourth) == 24);
const _: () = assert!(std::mem::offset_of!(DiskKey, zone) == 25);
const _: () = assert!(std::mem::offset_of!(DiskKey, ty) == 26);

/// An item key in memory. Field order is comparison order: the derived
/// `Ord` compares zone, first, ty, second, third, fourth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub zone: u8,
    pub first: u64,
    pub ty: u8,
    pub second: u64,
    pub third: u64,
    pub fourth: u8,
}

impl Key {
    /// The smallest key: every field zero.
    pub const MIN: Key = Key {
        zone: 0,
        first: 0,
        ty: 0,
        second: 0,
        third: 0,
        fourth: 0,
    };
    /// The largest key: every field all ones.
    pub const MAX: Key = Key {
        zone: u8::MAX,
        first: u64::MAX,
        ty: u8::MAX,
        second: u64::MAX,
        third: u64::MAX,
        fourth: u8::MAX,
    };

    pub const fn new(zone: u8, first: u64, ty: u8, second: u64, third: u64, fourth: u8) -> Key {
        Key {
            zone,
            first,
            ty,
            second,
            third,
            fourth,
        }
    }

    /// The first key of a zone (all other fields zero).
    pub const fn zone_first(zone: u8) -> Key {
        Key { zone, ..Key::MIN }
    }

    /// The last key of a zone (all other fields all ones).
    pub const fn zone_last(zone: u8) -> Key {
        Key { zone, ..Key::MAX }
    }

    /// The inode item of `ino` (fs zone, inode type).
    pub const fn inode(ino: u64) -> Key {
        Key::new(zone::FS, ino, item_type::INODE, 0, 0, 0)
    }

    /// The first key of every item of inode `ino` (its fs zone items).
    pub const fn inode_first(ino: u64) -> Key {
        Key::new(zone::FS, ino, 0, 0, 0, 0)
    }

    /// The last key of every item of inode `ino`.
    pub const fn inode_last(ino: u64) -> Key {
        Key::new(zone::FS, ino, u8::MAX, u64::MAX, u64::MAX, u8::MAX)
    }

    /// A mount's log trees item in the server's logs root.
    pub const fn log_trees(rid: u64, nr: u64) -> Key {
        Key::new(zone::LOG_TREES, rid, 0, nr, 0, 0)
    }

    /// A mounted client's item in the server's mounted clients root.
    pub const fn mounted_client(rid: u64) -> Key {
        Key::new(zone::MOUNTED_CLIENT, rid, 0, 0, 0, 0)
    }

    /// Add one, as a multi-precision number in comparison order (fourth is
    /// the least significant digit, zone the most). `MAX` wraps to `MIN`,
    /// as scoutfs's does; use [`Key::next`] to stop at the end instead.
    pub fn inc(&mut self) {
        let (v, c) = self.fourth.overflowing_add(1);
        self.fourth = v;
        if !c {
            return;
        }
        let (v, c) = self.third.overflowing_add(1);
        self.third = v;
        if !c {
            return;
        }
        let (v, c) = self.second.overflowing_add(1);
        self.second = v;
        if !c {
            return;
        }
        let (v, c) = self.ty.overflowing_add(1);
        self.ty = v;
        if !c {
            return;
        }
        let (v, c) = self.first.overflowing_add(1);
        self.first = v;
        if !c {
            return;
        }
        self.zone = self.zone.wrapping_add(1);
    }

    /// Subtract one, the inverse of [`Key::inc`]. `MIN` wraps to `MAX`.
    pub fn dec(&mut self) {
        let (v, b) = self.fourth.overflowing_sub(1);
        self.fourth = v;
        if !b {
            return;
        }
        let (v, b) = self.third.overflowing_sub(1);
        self.third = v;
        if !b {
            return;
        }
        let (v, b) = self.second.overflowing_sub(1);
        self.second = v;
        if !b {
            return;
        }
        let (v, b) = self.ty.overflowing_sub(1);
        self.ty = v;
        if !b {
            return;
        }
        let (v, b) = self.first.overflowing_sub(1);
        self.first = v;
        if !b {
            return;
        }
        self.zone = self.zone.wrapping_sub(1);
    }

    /// The smallest key greater than this one, or `None` at `MAX`.
    pub fn next(&self) -> Option<Key> {
        if *self == Key::MAX {
            return None;
        }
        let mut k = *self;
        k.inc();
        Some(k)
    }

    /// The greatest key less than this one, or `None` at `MIN`.
    pub fn prev(&self) -> Option<Key> {
        if *self == Key::MIN {
            return None;
        }
        let mut k = *self;
        k.dec();
        Some(k)
    }

    pub fn to_disk(&self) -> DiskKey {
        DiskKey {
            first: self.first.into(),
            second: self.second.into(),
            third: self.third.into(),
            fourth: self.fourth,
            zone: self.zone,
            ty: self.ty,
            _pad: [0; 5],
        }
    }

    /// The pad bytes of a key read from disk are ignored.
    pub fn from_disk(d: &DiskKey) -> Key {
        Key {
            zone: d.zone,
            first: d.first.get(),
            ty: d.ty,
            second: d.second.get(),
            third: d.third.get(),
            fourth: d.fourth,
        }
    }
}

impl From<Key> for DiskKey {
    fn from(k: Key) -> DiskKey {
        k.to_disk()
    }
}

impl From<DiskKey> for Key {
    fn from(d: DiskKey) -> Key {
        Key::from_disk(&d)
    }
}

/// `zone.first.type.second.third.fourth`, scoutfs's printed key form.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}.{}.{}",
            self.zone, self.first, self.ty, self.second, self.third, self.fourth
        )
    }
}

/// Key zones, the most significant part of the key order. The values are
/// scoutfs's, spaced so that zones can be added between them.
pub mod zone {
    /// Inodes by meta_seq / data_seq (second = seq, third = ino).
    pub const INODE_INDEX: u8 = 4;
    /// Unlinked inodes still open somewhere (first = rid, second = ino).
    pub const ORPHAN: u8 = 8;
    /// Quota rules (format 2).
    pub const QUOTA: u8 = 10;
    /// `.totl.` xattr totals (first, second, third = the name's u64s).
    pub const XATTR_TOTL: u8 = 12;
    /// `.indx.` xattr index (format 2): major, minor, ino, xattr id packed.
    pub const XATTR_INDX: u8 = 14;
    /// Inodes, xattrs, dirents, symlinks and file extents (first = ino).
    pub const FS: u8 = 16;
    /// Only in lock ranges, never in stored items.
    pub const LOCK: u8 = 20;
    // Zones only found in the server's btrees.
    /// log_trees items (first = rid, second = nr).
    pub const LOG_TREES: u8 = 24;
    /// mounted_clients items (first = rid).
    pub const MOUNTED_CLIENT: u8 = 28;
    /// srch file tracking.
    pub const SRCH: u8 = 32;
    /// Free extents by end block (first = end, second = len).
    pub const FREE_EXTENT_BLKNO: u8 = 36;
    /// Free extents by length order, largest first (first = reversed order,
    /// second = end, third = len).
    pub const FREE_EXTENT_ORDER: u8 = 40;
    // Zones only found in the log merge btree.
    pub const LOG_MERGE_STATUS: u8 = 44;
    pub const LOG_MERGE_RANGE: u8 = 48;
    pub const LOG_MERGE_REQUEST: u8 = 52;
    pub const LOG_MERGE_COMPLETE: u8 = 56;
    pub const LOG_MERGE_FREEING: u8 = 60;
}

/// Item types within zones.
pub mod item_type {
    // inode index zone
    pub const INODE_INDEX_META_SEQ: u8 = 4;
    pub const INODE_INDEX_DATA_SEQ: u8 = 8;
    // orphan zone
    pub const ORPHAN: u8 = 4;
    // quota zone
    pub const QUOTA_RULE: u8 = 4;
    // fs zone
    pub const INODE: u8 = 4;
    pub const XATTR: u8 = 8;
    pub const DIRENT: u8 = 12;
    pub const READDIR: u8 = 16;
    pub const LINK_BACKREF: u8 = 20;
    pub const SYMLINK: u8 = 24;
    pub const DATA_EXTENT: u8 = 28;
    // lock zone
    pub const RENAME: u8 = 4;
    // srch zone
    pub const SRCH_LOG: u8 = 4;
    pub const SRCH_BLOCKS: u8 = 8;
    pub const SRCH_PENDING: u8 = 12;
    pub const SRCH_BUSY: u8 = 16;
}

/// Inode numbers are locked (and granted to mounts) in groups of this many.
pub const LOCK_INODE_GROUP_NR: u64 = 1024;
pub const LOCK_INODE_GROUP_MASK: u64 = LOCK_INODE_GROUP_NR - 1;
/// Inode index items are locked in groups of this many seqs.
pub const LOCK_SEQ_GROUP_MASK: u64 = (1 << 10) - 1;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Tuple = (u8, u64, u8, u64, u64, u8);

    fn key_of(t: Tuple) -> Key {
        Key::new(t.0, t.1, t.2, t.3, t.4, t.5)
    }

    /// Small values collide often (so later fields decide), extremes
    /// exercise carries.
    fn any_u8() -> impl Strategy<Value = u8> {
        prop_oneof![0u8..3, Just(u8::MAX), any::<u8>()]
    }

    fn any_u64() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..3, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
    }

    fn any_tuple() -> impl Strategy<Value = Tuple> {
        (
            any_u8(),
            any_u64(),
            any_u8(),
            any_u64(),
            any_u64(),
            any_u8(),
        )
    }

    proptest! {
        #[test]
        fn key_order_is_zone_first_type_second_third_fourth(a in any_tuple(), b in any_tuple()) {
            prop_assert_eq!(key_of(a).cmp(&key_of(b)), a.cmp(&b));
        }

        #[test]
        fn inc_then_dec_round_trips(t in any_tuple()) {
            let k = key_of(t);
            let mut j = k;
            j.inc();
            if k != Key::MAX {
                prop_assert!(j > k);
                prop_assert_eq!(Some(j), k.next());
            }
            j.dec();
            prop_assert_eq!(j, k);
            j.dec();
            if k != Key::MIN {
                prop_assert!(j < k);
                prop_assert_eq!(Some(j), k.prev());
            }
            j.inc();
            prop_assert_eq!(j, k);
        }

        #[test]
        fn next_is_the_immediate_successor(a in any_tuple(), b in any_tuple()) {
            // No key lies strictly between k and k.next().
            let (k, other) = (key_of(a), key_of(b));
            if let Some(n) = k.next() {
                prop_assert!(!(k < other && other < n));
            }
        }

        #[test]
        fn disk_round_trip(t in any_tuple()) {
            let k = key_of(t);
            let d = k.to_disk();
            let bytes = bytemuck::bytes_of(&d).to_vec();
            let back: DiskKey = bytemuck::pod_read_unaligned(&bytes);
            prop_assert_eq!(Key::from(back), k);
        }
    }

    #[test]
    fn inc_carries_through_every_field_in_order() {
        let mut k = Key::new(1, 2, 3, 4, u64::MAX, u8::MAX);
        k.inc();
        assert_eq!(k, Key::new(1, 2, 3, 5, 0, 0));

        let mut k = Key::new(1, 2, 3, u64::MAX, u64::MAX, u8::MAX);
        k.inc();
        assert_eq!(k, Key::new(1, 2, 4, 0, 0, 0));

        let mut k = Key::new(1, 2, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
        k.inc();
        assert_eq!(k, Key::new(1, 3, 0, 0, 0, 0));

        let mut k = Key::new(1, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
        k.inc();
        assert_eq!(k, Key::new(2, 0, 0, 0, 0, 0));

        let mut k = Key::MAX;
        k.inc();
        assert_eq!(k, Key::MIN);
        k.dec();
        assert_eq!(k, Key::MAX);

        let mut k = Key::new(2, 0, 0, 0, 0, 0);
        k.dec();
        assert_eq!(
            k,
            Key::new(1, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX)
        );

        assert_eq!(Key::MAX.next(), None);
        assert_eq!(Key::MIN.prev(), None);
        assert_eq!(Key::MIN.next(), Some(Key::new(0, 0, 0, 0, 0, 1)));
    }

    #[test]
    fn disk_layout_matches_scoutfs() {
        let k = Key::new(0x16, 0x0102_0304_0506_0708, 0x04, 0x11, 0x22, 0x33);
        let d = k.to_disk();
        let b = bytemuck::bytes_of(&d);
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(b[8], 0x11);
        assert_eq!(b[16], 0x22);
        assert_eq!(b[24], 0x33);
        assert_eq!(b[25], 0x16);
        assert_eq!(b[26], 0x04);
        assert_eq!(&b[27..], &[0; 5]);
        assert_eq!(
            k.to_string(),
            format!("22.{}.4.17.34.51", 0x0102_0304_0506_0708u64)
        );
    }

    #[test]
    fn inode_items_sort_together_whatever_their_type() {
        let a = Key::new(zone::FS, 7, item_type::DATA_EXTENT, 0, 0, 0);
        let b = Key::inode(8);
        let c = Key::new(zone::FS, 8, item_type::XATTR, 0, 0, 0);
        assert!(a < b && b < c);
        assert!(Key::inode_first(8) <= b && c <= Key::inode_last(8));
        assert!(Key::zone_last(zone::INODE_INDEX) < Key::zone_first(zone::ORPHAN));
    }
}
