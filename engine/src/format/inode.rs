//! Values of fs zone items: the inode, directory entries and xattr parts,
//! plus the timestamp struct they (and quorum blocks) use.

use bytemuck::{Pod, Zeroable};

use super::btree::MAX_VAL_SIZE;
use super::le::{Le16, Le32, Le64, LeI64};
use super::super_block::FORMAT_VERSION_FEAT_PROJECT_ID;

/// A timestamp: seconds and nanoseconds since the epoch. The seconds are
/// signed, as the kernel's `time64_t` that scoutfs stores with
/// `cpu_to_le64`: a time before 1970 is negative (two's complement in the
/// 64 bits), and every `time64_t` the VFS hands a filesystem fits (the
/// kernel module sets no `s_time_min`/`s_time_max`, so the VFS's
/// defaults, the whole `time64_t` range, apply). `nsec` is below 10^9.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct Timespec {
    pub sec: LeI64,
    pub nsec: Le32,
    pub _pad: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<Timespec>() == 16);

impl Timespec {
    pub fn new(sec: i64, nsec: u32) -> Self {
        debug_assert!(nsec < 1_000_000_000);
        Self {
            sec: sec.into(),
            nsec: nsec.into(),
            _pad: [0; 4],
        }
    }
}

/// Times order by seconds, then nanoseconds, signed (1960 before 1970).
impl Ord for Timespec {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.sec.get(), self.nsec.get(), self._pad).cmp(&(
            other.sec.get(),
            other.nsec.get(),
            other._pad,
        ))
    }
}

impl PartialOrd for Timespec {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The value of an inode item (fs zone, inode type, first = ino).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Inode {
    pub size: Le64,
    /// Seq of the transaction that last changed the inode's metadata.
    pub meta_seq: Le64,
    /// Seq of the transaction that last changed the file's data or size.
    pub data_seq: Le64,
    /// Increases whenever the contents could have changed.
    pub data_version: Le64,
    /// 4 KiB blocks allocated and holding data.
    pub online_blocks: Le64,
    /// 4 KiB blocks released to an archive (stageable).
    pub offline_blocks: Le64,
    /// The readdir position the next entry of this directory gets.
    pub next_readdir_pos: Le64,
    pub next_xattr_id: Le64,
    /// i_version for NFS and friends.
    pub version: Le64,
    pub nlink: Le32,
    pub uid: Le32,
    pub gid: Le32,
    pub mode: Le32,
    pub rdev: Le32,
    /// `INODE_FLAG_*`.
    pub flags: Le32,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub crtime: Timespec,
    /// Project id (format 2; format 1 inodes end before it).
    pub proj: Le64,
}
const _: () = assert!(std::mem::size_of::<Inode>() == 168);
const _: () = assert!(std::mem::align_of::<Inode>() == 1);
const _: () = assert!(std::mem::offset_of!(Inode, nlink) == 72);
const _: () = assert!(std::mem::offset_of!(Inode, proj) == INODE_FMT_V1_BYTES);

/// Size of a format 1 inode value: everything before `proj`.
pub const INODE_FMT_V1_BYTES: usize = 160;
/// Size of a format 2 inode value.
pub const INODE_FMT_V2_BYTES: usize = std::mem::size_of::<Inode>();

/// A truncate was in progress (finish it on the next open / orphan scan).
pub const INODE_FLAG_TRUNCATE: u32 = 0x1;
/// Retention: the file rejects every change but to non-user xattrs
/// (format 2).
pub const INODE_FLAG_RETENTION: u32 = 0x2;

/// An inode item value of the wrong size for the volume's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("inode value is {found} bytes, format {format_version} stores {expected}")]
pub struct InodeValueError {
    pub format_version: u64,
    pub expected: usize,
    pub found: usize,
}

impl Inode {
    /// Bytes an inode value takes in a volume of `format_version`.
    pub fn value_len(format_version: u64) -> usize {
        if format_version >= FORMAT_VERSION_FEAT_PROJECT_ID {
            INODE_FMT_V2_BYTES
        } else {
            INODE_FMT_V1_BYTES
        }
    }

    /// Decode an inode item value; format 1 values have no project id
    /// (read as 0).
    pub fn from_value(val: &[u8], format_version: u64) -> Result<Inode, InodeValueError> {
        let expected = Inode::value_len(format_version);
        if val.len() != expected {
            return Err(InodeValueError {
                format_version,
                expected,
                found: val.len(),
            });
        }
        let mut bytes = [0u8; INODE_FMT_V2_BYTES];
        bytes[..expected].copy_from_slice(val);
        Ok(bytemuck::pod_read_unaligned(&bytes))
    }

    /// The value bytes to store for a volume of `format_version`.
    pub fn value_bytes(&self, format_version: u64) -> &[u8] {
        &bytemuck::bytes_of(self)[..Inode::value_len(format_version)]
    }
}

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Longest symlink target, stored in parts of up to `MAX_VAL_SIZE` bytes.
pub const SYMLINK_MAX_SIZE: usize = 4096;
/// Longest name of a directory entry.
pub const NAME_LEN: usize = 255;
/// Most links to one inode.
pub const LINK_MAX: u32 = i32::MAX as u32;
/// Directory entries start after `.` and `..`.
pub const DIRENT_FIRST_POS: u64 = 2;
/// Past the last position an entry can have.
pub const DIRENT_LAST_POS: u64 = u64::MAX - 1;

/// The value of dirent, readdir and link backref items: this header and
/// the name bytes after it (the name's length is the rest of the value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Dirent {
    /// The inode the entry names.
    pub ino: Le64,
    pub hash: Le64,
    pub pos: Le64,
    /// `DT_*`.
    pub ty: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<Dirent>() == 32);
const _: () = assert!(std::mem::size_of::<Dirent>() + NAME_LEN <= MAX_VAL_SIZE);

/// Directory entry types (scoutfs's, not the kernel's DT_ values).
pub const DT_FIFO: u8 = 0;
pub const DT_CHR: u8 = 1;
pub const DT_DIR: u8 = 2;
pub const DT_BLK: u8 = 3;
pub const DT_REG: u8 = 4;
pub const DT_LNK: u8 = 5;
pub const DT_SOCK: u8 = 6;
pub const DT_WHT: u8 = 7;

/// The first part of an xattr: this header, the name, then the value; the
/// bytes continue over further part items (fourth = part nr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Xattr {
    pub val_len: Le16,
    pub name_len: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(std::mem::size_of::<Xattr>() == 8);

pub const XATTR_MAX_NAME_LEN: usize = 255;
pub const XATTR_MAX_VAL_LEN: usize = 65535;
pub const XATTR_MAX_PART_SIZE: usize = MAX_VAL_SIZE;
/// Longest decimal `.totl.` value (octal u64::MAX, as scoutfs).
pub const XATTR_MAX_TOTL_U64: usize = 23;

/// How many part items an xattr of these lengths takes.
pub const fn xattr_nr_parts(name_len: usize, val_len: usize) -> usize {
    (std::mem::size_of::<Xattr>() + name_len + val_len).div_ceil(XATTR_MAX_PART_SIZE)
}
// Part numbers are the key's u8 fourth field.
const _: () = assert!(xattr_nr_parts(XATTR_MAX_NAME_LEN, XATTR_MAX_VAL_LEN) <= u8::MAX as usize);

/// The value of a `.totl.` total item: the sum of the contributing xattrs'
/// values and how many contribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct XattrTotlVal {
    pub total: Le64,
    pub count: Le64,
}
const _: () = assert!(std::mem::size_of::<XattrTotlVal>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inode {
        Inode {
            size: 4097.into(),
            meta_seq: 7.into(),
            data_seq: 6.into(),
            data_version: 3.into(),
            online_blocks: 2.into(),
            offline_blocks: 1.into(),
            next_readdir_pos: DIRENT_FIRST_POS.into(),
            next_xattr_id: 1.into(),
            version: 9.into(),
            nlink: 1.into(),
            uid: 1000.into(),
            gid: 100.into(),
            mode: 0o100644.into(),
            rdev: 0.into(),
            flags: INODE_FLAG_RETENTION.into(),
            atime: Timespec::new(1, 2),
            ctime: Timespec::new(3, 4),
            mtime: Timespec::new(5, 6),
            crtime: Timespec::new(7, 8),
            proj: 42.into(),
        }
    }

    #[test]
    fn inode_values_round_trip_in_both_formats() {
        let ino = sample();
        let v2 = ino.value_bytes(2);
        assert_eq!(v2.len(), 168);
        assert_eq!(Inode::from_value(v2, 2).unwrap(), ino);
        let v1 = ino.value_bytes(1);
        assert_eq!(v1.len(), 160);
        let back = Inode::from_value(v1, 1).unwrap();
        assert_eq!(back.proj.get(), 0);
        assert_eq!(
            Inode {
                proj: 0.into(),
                ..ino
            },
            back
        );
        assert_eq!(
            Inode::from_value(v1, 2),
            Err(InodeValueError {
                format_version: 2,
                expected: 168,
                found: 160
            })
        );
        // mtime.sec sits at 128 as in scoutfs.
        assert_eq!(&v2[128..136], &5u64.to_le_bytes());
    }

    #[test]
    fn timestamps_are_signed_seconds_as_scoutfs_stores_them() {
        // 1960-01-01 00:00:00 UTC, half a second in.
        let t = Timespec::new(-315_619_200, 500_000_000);
        let b = bytemuck::bytes_of(&t);
        assert_eq!(&b[..8], &(-315_619_200i64).to_le_bytes());
        assert_eq!(&b[8..12], &500_000_000u32.to_le_bytes());
        assert_eq!(bytemuck::pod_read_unaligned::<Timespec>(b), t);
        assert_eq!(t.sec.get(), -315_619_200);
        // One second before the epoch is all ones, as cpu_to_le64(-1).
        assert_eq!(bytemuck::bytes_of(&Timespec::new(-1, 0))[..8], [0xff; 8]);
        for sec in [i64::MIN, -1, 0, 1, i64::MAX] {
            let t = Timespec::new(sec, 999_999_999);
            assert_eq!(
                bytemuck::pod_read_unaligned::<Timespec>(bytemuck::bytes_of(&t)),
                t
            );
            assert_eq!(t.sec.get(), sec);
        }
        // Order is signed: 1960 comes before 1970, nanoseconds break ties.
        let mut v = [
            Timespec::new(0, 0),
            Timespec::new(i64::MAX, 0),
            Timespec::new(-1, 999_999_999),
            Timespec::new(i64::MIN, 0),
            Timespec::new(-1, 0),
        ];
        v.sort();
        assert_eq!(
            v.map(|t| (t.sec.get(), t.nsec.get())),
            [
                (i64::MIN, 0),
                (-1, 0),
                (-1, 999_999_999),
                (0, 0),
                (i64::MAX, 0)
            ]
        );
    }

    #[test]
    fn small_values_round_trip() {
        let d = Dirent {
            ino: 5.into(),
            hash: 6.into(),
            pos: 7.into(),
            ty: DT_DIR,
            _pad: [0; 7],
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<Dirent>(bytemuck::bytes_of(&d)),
            d
        );
        assert_eq!(bytemuck::bytes_of(&d)[24], DT_DIR);
        let x = Xattr {
            val_len: 300.into(),
            name_len: 12,
            _pad: [0; 5],
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<Xattr>(bytemuck::bytes_of(&x)),
            x
        );
        let t = XattrTotlVal {
            total: 10.into(),
            count: 2.into(),
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<XattrTotlVal>(bytemuck::bytes_of(&t)),
            t
        );
        assert_eq!(xattr_nr_parts(4, 0), 1);
        assert_eq!(xattr_nr_parts(255, 65535), 74);
    }
}
