//! Quorum: the slot configuration kept in the super block, the per-slot
//! 4 KiB quorum blocks recording election events, the mounted client record,
//! and the election timing constants.

use std::net::{Ipv4Addr, SocketAddrV4};

use bytemuck::{Pod, Zeroable};

use super::block::{BlockCheckError, BlockHeader, BlockMagic, BLOCK_SM_SIZE};
use super::inode::Timespec;
use super::le::{Le16, Le32, Le64};
use super::super_block::{check_fixed_block, QUORUM_BLKNO};

/// Quorum slots configurable at mkfs (one quorum block each).
pub const QUORUM_MAX_SLOTS: usize = 15;

/// Election timeout: this plus a random part up to `QUORUM_ELECT_VAR_MS`.
pub const QUORUM_ELECT_MIN_MS: u64 = 250;
pub const QUORUM_ELECT_VAR_MS: u64 = 100;
/// Leaders send heartbeats this often.
pub const QUORUM_HB_IVAL_MS: u64 = 100;
/// Followers start an election after this long without a heartbeat
/// (mount option `quorum_heartbeat_timeout_ms`, within the bounds below).
pub const QUORUM_HB_TIMEO_MS_DEFAULT: u64 = 10_000;
pub const QUORUM_HB_TIMEO_MS_MIN: u64 = 2_000;
pub const QUORUM_HB_TIMEO_MS_MAX: u64 = 60_000;
/// A new leader gives fencing this long before giving up.
pub const QUORUM_FENCE_TO_MS: u64 = 15_000;

/// Address families of [`InetAddr`].
pub const AF_NONE: u16 = 0;
pub const AF_IPV4: u16 = 1;
/// Reserved by the format; not supported.
pub const AF_IPV6: u16 = 2;

/// A network address as stored: family, port and room for an IPv6 address.
/// An IPv4 address is stored in the first four `addr` bytes as a
/// little-endian u32 of its numeric value (10.0.0.1 = 0x0a000001).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct InetAddr {
    pub family: Le16,
    pub port: Le16,
    pub addr: [u8; 16],
    pub flow_info: Le32,
    pub scope_id: Le32,
    pub _pad: [u8; 4],
}
const _: () = assert!(std::mem::size_of::<InetAddr>() == 32);

impl InetAddr {
    pub fn ipv4(sa: SocketAddrV4) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&u32::from(*sa.ip()).to_le_bytes());
        Self {
            family: AF_IPV4.into(),
            port: sa.port().into(),
            addr,
            ..Default::default()
        }
    }

    pub fn is_none(&self) -> bool {
        self.family.get() == AF_NONE
    }

    /// The IPv4 socket address, or `None` for an empty or non-IPv4 entry.
    pub fn to_ipv4(&self) -> Option<SocketAddrV4> {
        if self.family.get() != AF_IPV4 {
            return None;
        }
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.addr[..4]);
        Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_le_bytes(a)),
            self.port.get(),
        ))
    }
}

/// One quorum slot: the address its member listens on (empty if unused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QuorumSlot {
    pub addr: InetAddr,
}
const _: () = assert!(std::mem::size_of::<QuorumSlot>() == 32);

/// The quorum configuration in the super block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QuorumConfig {
    /// Changes when the membership changes.
    pub version: Le64,
    pub slots: [QuorumSlot; QUORUM_MAX_SLOTS],
}
const _: () = assert!(std::mem::size_of::<QuorumConfig>() == 488);

impl QuorumConfig {
    /// The address of slot `nr`, if the slot is configured with IPv4.
    pub fn slot_addr(&self, nr: usize) -> Option<SocketAddrV4> {
        self.slots.get(nr)?.addr.to_ipv4()
    }

    /// Number of configured slots.
    pub fn nr_configured(&self) -> usize {
        self.slots.iter().filter(|s| !s.addr.is_none()).count()
    }
}

/// Events a quorum member records in its slot's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum QuorumEvent {
    /// The quorum service started.
    Begin = 0,
    /// The member's persistent term changed.
    Term = 1,
    /// The member won an election.
    Elect = 2,
    /// The leader's server fenced the previous leaders.
    Fence = 3,
    /// The leader's server stopped.
    Stop = 4,
    /// The quorum service shut down.
    End = 5,
}
pub const QUORUM_EVENT_NR: usize = 6;

impl QuorumEvent {
    pub const ALL: [QuorumEvent; QUORUM_EVENT_NR] = [
        QuorumEvent::Begin,
        QuorumEvent::Term,
        QuorumEvent::Elect,
        QuorumEvent::Fence,
        QuorumEvent::Stop,
        QuorumEvent::End,
    ];
}

/// The last occurrence of one event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QuorumBlockEvent {
    /// The block's `write_nr` when this event was recorded.
    pub write_nr: Le64,
    pub rid: Le64,
    pub term: Le64,
    pub ts: Timespec,
}
const _: () = assert!(std::mem::size_of::<QuorumBlockEvent>() == 40);

/// A quorum slot's 4 KiB block (the struct is followed by zeros).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct QuorumBlock {
    pub hdr: BlockHeader,
    /// Incremented on every write of the block.
    pub write_nr: Le64,
    pub events: [QuorumBlockEvent; QUORUM_EVENT_NR],
}
const _: () = assert!(std::mem::size_of::<QuorumBlock>() == 280);
const _: () = assert!(std::mem::align_of::<QuorumBlock>() == 1);

/// The 4 KiB block number of slot `slot`'s quorum block.
pub fn quorum_blkno(slot: usize) -> u64 {
    assert!(slot < QUORUM_MAX_SLOTS);
    QUORUM_BLKNO + slot as u64
}

impl QuorumBlock {
    pub fn event(&self, ev: QuorumEvent) -> &QuorumBlockEvent {
        &self.events[ev as usize]
    }

    pub fn event_mut(&mut self, ev: QuorumEvent) -> &mut QuorumBlockEvent {
        &mut self.events[ev as usize]
    }

    /// Write the block for `slot` into a 4 KiB buffer and seal it: header
    /// seq = `write_nr`. Panics unless `block` is `BLOCK_SM_SIZE` long.
    pub fn to_block(&self, block: &mut [u8], fsid: u64, slot: usize) {
        super::block::seal_struct_block(
            self,
            block,
            BlockMagic::Quorum,
            fsid,
            quorum_blkno(slot),
            self.write_nr.get(),
        );
    }
}

/// Why a quorum block can't be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumBlockError {
    #[error("quorum slot {slot} out of range (max {QUORUM_MAX_SLOTS})")]
    Slot { slot: usize },
    #[error("quorum block buffer is {found} bytes, expected {expected}")]
    Length { expected: usize, found: usize },
    /// Bad crc, magic, blkno or fsid (a never-written block fails the crc).
    #[error("quorum block header: {0}")]
    Block(#[from] BlockCheckError),
}

/// Validate slot `slot`'s quorum block read from disk and return a copy.
/// Never panics, whatever the buffer holds.
pub fn read_quorum_block(
    block: &[u8],
    slot: usize,
    fsid: Option<u64>,
) -> Result<QuorumBlock, QuorumBlockError> {
    if slot >= QUORUM_MAX_SLOTS {
        return Err(QuorumBlockError::Slot { slot });
    }
    if block.len() != BLOCK_SM_SIZE {
        return Err(QuorumBlockError::Length {
            expected: BLOCK_SM_SIZE,
            found: block.len(),
        });
    }
    check_fixed_block(block, BlockMagic::Quorum, quorum_blkno(slot), fsid)?;
    Ok(bytemuck::pod_read_unaligned(
        &block[..std::mem::size_of::<QuorumBlock>()],
    ))
}

/// The value of a mounted client item (key: rid) in the server's mounted
/// clients root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct MountedClient {
    pub addr: InetAddr,
    /// `MOUNTED_CLIENT_*`.
    pub flags: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<MountedClient>() == 40);

/// The client is a quorum member.
pub const MOUNTED_CLIENT_QUORUM: u8 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block::HeaderField;
    use proptest::prelude::*;

    #[test]
    fn ipv4_addresses_round_trip_as_scoutfs_stores_them() {
        let sa = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 5000);
        let a = InetAddr::ipv4(sa);
        let b = bytemuck::bytes_of(&a);
        assert_eq!(&b[..8], &[1, 0, 0x88, 0x13, 1, 0, 0, 0x0a]);
        assert_eq!(a.to_ipv4(), Some(sa));
        assert_eq!(InetAddr::default().to_ipv4(), None);

        let mut q = QuorumConfig::default();
        q.slots[3].addr = a;
        q.slots[14].addr = InetAddr::ipv4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
        assert_eq!(q.nr_configured(), 2);
        assert_eq!(q.slot_addr(3), Some(sa));
        assert_eq!(q.slot_addr(0), None);
        assert_eq!(q.slot_addr(15), None);
        let back: QuorumConfig = bytemuck::pod_read_unaligned(bytemuck::bytes_of(&q));
        assert_eq!(back, q);
    }

    #[test]
    fn quorum_blocks_round_trip_and_validate() {
        let mut qb = QuorumBlock::default();
        qb.write_nr.set(5);
        *qb.event_mut(QuorumEvent::Elect) = QuorumBlockEvent {
            write_nr: 5.into(),
            rid: 0xfeed.into(),
            term: 9.into(),
            ts: Timespec::new(100, 200),
        };
        let mut b = vec![0u8; BLOCK_SM_SIZE];
        qb.to_block(&mut b, 0xf5, 4);
        let back = read_quorum_block(&b, 4, Some(0xf5)).unwrap();
        assert_eq!(back.event(QuorumEvent::Elect).term.get(), 9);
        assert_eq!(back.hdr.blkno.get(), 21);
        assert_eq!(
            QuorumBlock {
                hdr: qb.hdr,
                ..back
            },
            qb
        );
        read_quorum_block(&b, 4, None).unwrap();

        assert!(matches!(
            read_quorum_block(&b, 5, None),
            Err(QuorumBlockError::Block(BlockCheckError::Corrupt {
                field: HeaderField::Blkno,
                ..
            }))
        ));
        assert!(matches!(
            read_quorum_block(&b, 4, Some(1)),
            Err(QuorumBlockError::Block(BlockCheckError::Corrupt {
                field: HeaderField::Fsid,
                ..
            }))
        ));
        assert_eq!(
            read_quorum_block(&b, 15, None),
            Err(QuorumBlockError::Slot { slot: 15 })
        );
        assert!(matches!(
            read_quorum_block(&b[..64], 4, None),
            Err(QuorumBlockError::Length { .. })
        ));
        let zero = vec![0u8; BLOCK_SM_SIZE];
        assert!(matches!(
            read_quorum_block(&zero, 0, None),
            Err(QuorumBlockError::Block(_))
        ));

        let mc = MountedClient {
            addr: InetAddr::default(),
            flags: MOUNTED_CLIENT_QUORUM,
            _pad: [0; 7],
        };
        assert_eq!(
            bytemuck::pod_read_unaligned::<MountedClient>(bytemuck::bytes_of(&mc)),
            mc
        );
        assert_eq!(QuorumEvent::ALL.len(), QUORUM_EVENT_NR);
    }

    proptest! {
        #[test]
        fn garbage_quorum_blocks_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..BLOCK_SM_SIZE + 10),
            slot in 0usize..20,
        ) {
            prop_assert!(read_quorum_block(&bytes, slot, None).is_err());
        }
    }
}
