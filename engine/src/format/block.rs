//! The header every metadata block (and the super and quorum blocks) starts
//! with, block references, and the check of a block read from disk against
//! the reference that led to it.

use bytemuck::{Pod, Zeroable};

use super::le::{Le32, Le64};

/// Metadata (btree, bloom, srch, alloc list) blocks are 64 KiB.
pub const BLOCK_LG_SHIFT: u32 = 16;
pub const BLOCK_LG_SIZE: usize = 1 << BLOCK_LG_SHIFT;
/// Super, quorum and file data blocks are 4 KiB.
pub const BLOCK_SM_SHIFT: u32 = 12;
pub const BLOCK_SM_SIZE: usize = 1 << BLOCK_SM_SHIFT;

/// Header magic values, one per block kind; the values are scoutfs's own
/// (kmod/src/format.h) so that blocks are recognisable by the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BlockMagic {
    Super = 0x103c_428b,
    Btree = 0xe597_f96d,
    Bloom = 0x3199_5604,
    SrchBlock = 0x897e_4a7d,
    SrchParent = 0xb23a_2a05,
    AllocList = 0x8a93_ac83,
    Quorum = 0xbc31_0868,
}

impl BlockMagic {
    pub const ALL: [BlockMagic; 7] = [
        BlockMagic::Super,
        BlockMagic::Btree,
        BlockMagic::Bloom,
        BlockMagic::SrchBlock,
        BlockMagic::SrchParent,
        BlockMagic::AllocList,
        BlockMagic::Quorum,
    ];

    pub fn from_u32(v: u32) -> Option<BlockMagic> {
        BlockMagic::ALL.into_iter().find(|m| *m as u32 == v)
    }
}

/// The first 32 bytes of every block. `crc` is crc32c over the whole block
/// after the crc field itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockHeader {
    pub crc: Le32,
    pub magic: Le32,
    pub fsid: Le64,
    pub seq: Le64,
    pub blkno: Le64,
}
const _: () = assert!(std::mem::size_of::<BlockHeader>() == 32);

/// A reference to a block: where it is and which write of it is meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct BlockRef {
    pub blkno: Le64,
    pub seq: Le64,
}
const _: () = assert!(std::mem::size_of::<BlockRef>() == 16);

impl BlockRef {
    pub fn new(blkno: u64, seq: u64) -> Self {
        Self {
            blkno: blkno.into(),
            seq: seq.into(),
        }
    }

    /// A zeroed reference points at nothing (an empty root).
    pub fn is_null(&self) -> bool {
        self.blkno.get() == 0 && self.seq.get() == 0
    }
}

/// Which header field disagreed with what the reference expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderField {
    Crc,
    Magic,
    Fsid,
    Seq,
    Blkno,
    /// The buffer is smaller than a header.
    Length,
}

/// Why a block read from disk can't be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockCheckError {
    /// The block is intact but is a later (or earlier) write than the one
    /// referenced: the referencing tree is older than the block. Retrying
    /// from fresher roots can succeed.
    #[error("stale block {blkno}: expected seq {expected_seq}, found seq {found_seq}")]
    Stale {
        blkno: u64,
        expected_seq: u64,
        found_seq: u64,
    },
    /// The block can't be what any reference meant: bad crc, a write that
    /// landed at the wrong place, another volume's block, or the wrong kind.
    #[error("corrupt block {blkno}: {field:?} expected {expected:#x}, found {found:#x}")]
    Corrupt {
        blkno: u64,
        field: HeaderField,
        expected: u64,
        found: u64,
    },
}

/// What a read expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub magic: BlockMagic,
    pub fsid: u64,
    pub blkno: u64,
    pub seq: u64,
}

/// crc32c of a block past its crc field.
pub fn block_crc(block: &[u8]) -> u32 {
    crc32c::crc32c(&block[4..])
}

/// Fill in a block's header and crc before it is written.
pub fn seal_block(block: &mut [u8], magic: BlockMagic, fsid: u64, blkno: u64, seq: u64) {
    assert!(block.len() >= std::mem::size_of::<BlockHeader>());
    let hdr = BlockHeader {
        crc: Le32::new(0),
        magic: Le32::new(magic as u32),
        fsid: fsid.into(),
        seq: seq.into(),
        blkno: blkno.into(),
    };
    block[..32].copy_from_slice(bytemuck::bytes_of(&hdr));
    let crc = block_crc(block);
    block[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Write a fixed-size structure at the start of a small (4 KiB) block,
/// zero the rest, and seal it: the super and quorum blocks.
pub fn seal_struct_block<T: bytemuck::Pod>(
    value: &T,
    block: &mut [u8],
    magic: BlockMagic,
    fsid: u64,
    blkno: u64,
    seq: u64,
) {
    assert_eq!(block.len(), BLOCK_SM_SIZE);
    let bytes = bytemuck::bytes_of(value);
    block[..bytes.len()].copy_from_slice(bytes);
    block[bytes.len()..].fill(0);
    seal_block(block, magic, fsid, blkno, seq);
}

/// Check a block read from disk against what the reference expected.
///
/// The crc is checked first: a block whose crc fails is corrupt whatever its
/// header says. An intact block at the right place of the right volume whose
/// seq differs is stale (it was rewritten since the reference was taken,
/// possibly as another kind of block). Same seq but another magic is corrupt.
pub fn check_block<'a>(
    block: &'a [u8],
    exp: &Expected,
) -> Result<&'a BlockHeader, BlockCheckError> {
    let corrupt = |field, expected: u64, found: u64| BlockCheckError::Corrupt {
        blkno: exp.blkno,
        field,
        expected,
        found,
    };
    if block.len() < std::mem::size_of::<BlockHeader>() {
        return Err(corrupt(HeaderField::Length, 32, block.len() as u64));
    }
    let hdr: &BlockHeader = bytemuck::from_bytes(&block[..32]);
    let crc = block_crc(block);
    if hdr.crc.get() != crc {
        return Err(corrupt(
            HeaderField::Crc,
            u64::from(crc),
            u64::from(hdr.crc.get()),
        ));
    }
    if hdr.blkno.get() != exp.blkno {
        return Err(corrupt(HeaderField::Blkno, exp.blkno, hdr.blkno.get()));
    }
    if hdr.fsid.get() != exp.fsid {
        return Err(corrupt(HeaderField::Fsid, exp.fsid, hdr.fsid.get()));
    }
    if hdr.seq.get() != exp.seq {
        return Err(BlockCheckError::Stale {
            blkno: exp.blkno,
            expected_seq: exp.seq,
            found_seq: hdr.seq.get(),
        });
    }
    if hdr.magic.get() != exp.magic as u32 {
        return Err(corrupt(
            HeaderField::Magic,
            u64::from(exp.magic as u32),
            u64::from(hdr.magic.get()),
        ));
    }
    Ok(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(seq: u64) -> Expected {
        Expected {
            magic: BlockMagic::Btree,
            fsid: 0xf5,
            blkno: 42,
            seq,
        }
    }

    fn sealed() -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        b[100] = 7;
        seal_block(&mut b, BlockMagic::Btree, 0xf5, 42, 9);
        b
    }

    #[test]
    fn sealed_block_checks_clean() {
        let b = sealed();
        let hdr = check_block(&b, &exp(9)).unwrap();
        assert_eq!(hdr.seq.get(), 9);
        assert_eq!(hdr.blkno.get(), 42);
    }

    #[test]
    fn any_flipped_bit_is_corrupt_crc() {
        let clean = sealed();
        for byte in [0usize, 3, 4, 31, 32, 100, BLOCK_LG_SIZE - 1] {
            let mut b = clean.clone();
            b[byte] ^= 0x10;
            match check_block(&b, &exp(9)) {
                Err(BlockCheckError::Corrupt {
                    field: HeaderField::Crc,
                    ..
                }) => {}
                other => panic!("byte {byte}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_seq_is_stale_other_place_or_volume_is_corrupt() {
        let b = sealed();
        assert_eq!(
            check_block(&b, &exp(8)),
            Err(BlockCheckError::Stale {
                blkno: 42,
                expected_seq: 8,
                found_seq: 9
            })
        );
        let e = Expected {
            blkno: 43,
            ..exp(9)
        };
        assert!(matches!(
            check_block(&b, &e),
            Err(BlockCheckError::Corrupt {
                field: HeaderField::Blkno,
                expected: 43,
                found: 42,
                ..
            })
        ));
        let e = Expected { fsid: 1, ..exp(9) };
        assert!(matches!(
            check_block(&b, &e),
            Err(BlockCheckError::Corrupt {
                field: HeaderField::Fsid,
                ..
            })
        ));
        let e = Expected {
            magic: BlockMagic::Bloom,
            ..exp(9)
        };
        assert!(matches!(
            check_block(&b, &e),
            Err(BlockCheckError::Corrupt {
                field: HeaderField::Magic,
                ..
            })
        ));
    }

    #[test]
    fn zeroed_and_short_blocks_are_corrupt() {
        let z = vec![0u8; BLOCK_SM_SIZE];
        assert!(matches!(
            check_block(&z, &exp(1)),
            Err(BlockCheckError::Corrupt {
                field: HeaderField::Crc,
                ..
            })
        ));
        assert!(matches!(
            check_block(&z[..10], &exp(1)),
            Err(BlockCheckError::Corrupt {
                field: HeaderField::Length,
                ..
            })
        ));
    }

    #[test]
    fn magic_round_trips() {
        for m in BlockMagic::ALL {
            assert_eq!(BlockMagic::from_u32(m as u32), Some(m));
        }
        assert_eq!(BlockMagic::from_u32(0), None);
    }
}
