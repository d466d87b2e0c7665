//! What the NVMe specification fixes: controller register offsets and
//! fields, the 64-byte submission and 16-byte completion entries, opcodes,
//! the Identify structures' fields we read, and status codes mapped to
//! errnos. Nothing else in the backend knows a byte offset.

use bytemuck::{Pod, Zeroable};

/// Controller registers (offsets into BAR0).
pub mod reg {
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const INTMS: usize = 0x0c;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    /// The first doorbell; queue y's SQ tail is at `DOORBELLS + 2y * stride`,
    /// its CQ head at `DOORBELLS + (2y + 1) * stride`, stride = 4 << DSTRD.
    pub const DOORBELLS: usize = 0x1000;
}

/// The Controller Capabilities register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// Largest queue the controller takes, in entries (MQES + 1).
    pub max_queue_entries: u32,
    /// Worst-case time for CSTS.RDY to follow CC.EN, in milliseconds.
    pub timeout_ms: u64,
    /// Doorbell stride in bytes (4 << DSTRD).
    pub doorbell_stride: usize,
    /// Smallest memory page size, in bytes (4 KiB << MPSMIN).
    pub min_page_size: usize,
    /// Controller supports the NVM command set (CSS bit 0).
    pub nvm_command_set: bool,
}

impl Cap {
    pub fn decode(cap: u64) -> Cap {
        Cap {
            max_queue_entries: (cap & 0xffff) as u32 + 1,
            timeout_ms: ((cap >> 24) & 0xff).max(1) * 500,
            doorbell_stride: 4 << ((cap >> 32) & 0xf),
            min_page_size: 4096 << ((cap >> 48) & 0xf),
            nvm_command_set: (cap >> 37) & 1 == 1,
        }
    }

    pub fn sq_doorbell(&self, qid: u16) -> usize {
        reg::DOORBELLS + 2 * usize::from(qid) * self.doorbell_stride
    }

    pub fn cq_doorbell(&self, qid: u16) -> usize {
        reg::DOORBELLS + (2 * usize::from(qid) + 1) * self.doorbell_stride
    }
}

/// Controller Configuration fields.
pub mod cc {
    pub const EN: u32 = 1;
    /// I/O submission entries are 2^6 bytes, completion entries 2^4.
    pub const IOSQES_64: u32 = 6 << 16;
    pub const IOCQES_16: u32 = 4 << 20;
    pub const SHN_MASK: u32 = 3 << 14;
    pub const SHN_NORMAL: u32 = 1 << 14;
    /// CC.MPS = 0: 4 KiB memory pages. CC.CSS = 0: NVM command set.
    pub const fn mps(page_shift: u32) -> u32 {
        (page_shift - 12) << 7
    }
}

/// Controller Status fields.
pub mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 3 << 2;
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    /// Identify CNS values.
    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    pub const CNS_ACTIVE_NAMESPACES: u32 = 0x02;
    /// Feature: number of I/O queues.
    pub const FEAT_NUM_QUEUES: u32 = 0x07;
}

/// NVM command set opcodes.
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Dataset Management CDW11: the ranges are to be deallocated.
    pub const DSM_ATTR_DEALLOCATE: u32 = 1 << 2;
    /// Most ranges one Dataset Management command carries (NR is 8 bits,
    /// zero-based).
    pub const DSM_MAX_RANGES: usize = 256;
}

/// One range of a Dataset Management command's range list (16 bytes each,
/// in the command's data buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DsmRange {
    /// Context attributes (access hints); 0 for deallocate.
    pub attributes: u32,
    /// Length in logical blocks (not zero-based).
    pub nlb: u32,
    pub slba: u64,
}
const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

/// A submission queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SqEntry {
    pub opcode: u8,
    /// FUSE and PSDT; 0 = not fused, PRPs.
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
const _: () = assert!(std::mem::size_of::<SqEntry>() == 64);

impl SqEntry {
    /// A read or write of `nlb` logical blocks from `slba`.
    pub fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> SqEntry {
        debug_assert!((1..=1 << 16).contains(&nlb));
        SqEntry {
            opcode,
            nsid,
            prp1,
            prp2,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb - 1,
            ..Default::default()
        }
    }

    /// Deallocate the `ranges` (1..=256) of the range list at `prp1`
    /// (which must fit in the page PRP1 points into).
    pub fn dsm_deallocate(nsid: u32, ranges: usize, prp1: u64) -> SqEntry {
        debug_assert!((1..=nvm::DSM_MAX_RANGES).contains(&ranges));
        debug_assert!(prp1 % 4096 + (ranges * 16) as u64 <= 4096);
        SqEntry {
            opcode: nvm::DATASET_MANAGEMENT,
            nsid,
            prp1,
            cdw10: ranges as u32 - 1,
            cdw11: nvm::DSM_ATTR_DEALLOCATE,
            ..Default::default()
        }
    }
}

/// A completion queue entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CqEntry {
    /// Command-specific result.
    pub dw0: u32,
    pub dw1: u32,
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// Bit 0: phase tag; bits 1..16: status field.
    pub status: u16,
}
const _: () = assert!(std::mem::size_of::<CqEntry>() == 16);

impl CqEntry {
    pub fn phase(&self) -> bool {
        self.status & 1 == 1
    }

    /// Status code type (bits 9..12 of the status field) and status code.
    pub fn status(&self) -> Status {
        Status(self.status >> 1)
    }
}

/// A completion's status field without the phase bit: SC in bits 0..8,
/// SCT in bits 8..11, then CRD, More, Do Not Retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0);

    pub fn new(sct: u8, sc: u8) -> Status {
        Status(u16::from(sct & 7) << 8 | u16::from(sc))
    }

    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// SCT and SC as one number, as the spec and QEMU print it (0x281).
    pub fn code(self) -> u16 {
        self.0 & 0x7ff
    }

    pub fn is_success(self) -> bool {
        self.code() == 0
    }

    pub fn do_not_retry(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// What the status means and the errno a caller sees (Linux's nvme
    /// driver maps them the same way through its block status codes).
    pub fn decode(self) -> (&'static str, i32) {
        match (self.sct(), self.sc()) {
            (0, 0x00) => ("success", 0),
            (0, 0x01) => ("invalid command opcode", libc::EOPNOTSUPP),
            (0, 0x02) => ("invalid field in command", libc::EINVAL),
            (0, 0x03) => ("command id conflict", libc::EIO),
            (0, 0x04) => ("data transfer error", libc::EIO),
            (0, 0x05) => ("aborted: power loss notification", libc::EIO),
            (0, 0x06) => ("internal error", libc::EIO),
            (0, 0x07) => ("aborted by request", libc::ECANCELED),
            (0, 0x08) => ("aborted: submission queue deleted", libc::ECANCELED),
            (0, 0x0b) => ("invalid namespace or format", libc::ENODEV),
            (0, 0x13) => ("invalid PRP offset", libc::EINVAL),
            (0, 0x80) => ("LBA out of range", libc::ERANGE),
            (0, 0x81) => ("capacity exceeded", libc::ENOSPC),
            (0, 0x82) => ("namespace not ready", libc::EAGAIN),
            (0, 0x83) => ("reservation conflict", libc::EBADE),
            (1, 0x80) => ("conflicting attributes", libc::EINVAL),
            (1, 0x82) => ("write to a read-only range", libc::EROFS),
            (2, 0x80) => ("write fault", libc::EIO),
            (2, 0x81) => ("unrecovered read error", libc::EIO),
            (2, 0x82..=0x84) => ("end-to-end protection check error", libc::EILSEQ),
            (2, 0x85) => ("compare failure", libc::EILSEQ),
            (2, 0x86) => ("access denied", libc::EACCES),
            (2, 0x87) => ("deallocated or unwritten block", libc::ENODATA),
            (2, _) => ("media error", libc::EIO),
            (3, _) => ("path error", libc::EIO),
            _ => ("error", libc::EIO),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (status {:#x})", self.decode().0, self.code())
    }
}

/// The fields of Identify Controller (4 KiB) that we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    pub vendor_id: u16,
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Largest transfer as a power of two of the minimum page size; 0 means
    /// no limit.
    pub mdts: u8,
    pub controller_id: u16,
    /// Namespaces the controller may have (the highest valid NSID).
    pub namespaces: u32,
    /// Optional NVM Command Support (ONCS).
    pub oncs: u16,
    pub volatile_write_cache: bool,
}

fn ascii_field(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string()
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

pub const IDENTIFY_LEN: usize = 4096;

impl IdentifyController {
    pub fn parse(b: &[u8; IDENTIFY_LEN]) -> IdentifyController {
        IdentifyController {
            vendor_id: le16(b, 0),
            serial: ascii_field(&b[4..24]),
            model: ascii_field(&b[24..64]),
            firmware: ascii_field(&b[64..72]),
            mdts: b[77],
            controller_id: le16(b, 78),
            namespaces: le32(b, 516),
            oncs: le16(b, 520),
            volatile_write_cache: b[525] & 1 == 1,
        }
    }
}

impl IdentifyController {
    /// The controller takes Dataset Management (ONCS bit 2).
    pub fn supports_dsm(&self) -> bool {
        self.oncs & 1 << 2 != 0
    }
}

/// The fields of Identify Namespace that decide a namespace's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Size in logical blocks (NSZE).
    pub size_blocks: u64,
    /// log2 of the logical block size in the formatted LBA format.
    pub lba_shift: u32,
    /// Metadata bytes per block in the formatted LBA format.
    pub metadata_bytes: u16,
    /// End-to-end protection type (DPS bits 0..3); 0 is none.
    pub protection_type: u8,
    /// Deallocate Logical Block Features (DLFEAT).
    pub dlfeat: u8,
}

impl IdentifyNamespace {
    pub fn parse(b: &[u8; IDENTIFY_LEN]) -> IdentifyNamespace {
        let flbas = usize::from(b[26] & 0xf);
        let lbaf = le32(b, 128 + 4 * flbas);
        IdentifyNamespace {
            size_blocks: le64(b, 0),
            lba_shift: (lbaf >> 16) & 0xff,
            metadata_bytes: lbaf as u16,
            protection_type: b[29] & 7,
            dlfeat: b[33],
        }
    }

    /// Reads of deallocated blocks return zeros (DLFEAT bits 0..3 = 001b).
    pub fn deallocated_reads_zero(&self) -> bool {
        self.dlfeat & 7 == 1
    }

    pub fn block_size(&self) -> u64 {
        1u64 << self.lba_shift.min(63)
    }

    /// Why this namespace can't be used by the engine, if it can't.
    pub fn unsupported(&self) -> Option<String> {
        if self.size_blocks == 0 {
            return Some("namespace is inactive (size 0)".into());
        }
        if !(9..=16).contains(&self.lba_shift) {
            return Some(format!(
                "logical block size 2^{} is not between 512 B and 64 KiB",
                self.lba_shift
            ));
        }
        if self.metadata_bytes != 0 || self.protection_type != 0 {
            return Some(format!(
                "formatted with {} metadata bytes per block and protection type {}; \
                 only formats without metadata or protection information are supported \
                 (reformat the namespace, e.g. nvme format --lbaf=N)",
                self.metadata_bytes, self.protection_type
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // MQES 2047, TO 15 (7.5 s), DSTRD 1, CSS NVM, MPSMIN 0.
        let cap = 2047u64 | 15 << 24 | 1 << 32 | 1 << 37;
        let c = Cap::decode(cap);
        assert_eq!(c.max_queue_entries, 2048);
        assert_eq!(c.timeout_ms, 7500);
        assert_eq!(c.doorbell_stride, 8);
        assert_eq!(c.min_page_size, 4096);
        assert!(c.nvm_command_set);
        assert_eq!(c.sq_doorbell(0), 0x1000);
        assert_eq!(c.cq_doorbell(0), 0x1008);
        assert_eq!(c.sq_doorbell(2), 0x1020);
    }

    #[test]
    fn status_codes_map_to_errnos() {
        let s = CqEntry {
            status: 0x281 << 1 | 1,
            ..Default::default()
        };
        assert!(s.phase());
        assert_eq!(s.status().code(), 0x281);
        assert_eq!(s.status().decode(), ("unrecovered read error", libc::EIO));
        assert_eq!(Status::new(0, 0x80).decode().1, libc::ERANGE);
        assert_eq!(Status::new(1, 0x82).decode().1, libc::EROFS);
        assert!(Status::SUCCESS.is_success());
        assert_eq!(
            Status::new(2, 0x81).to_string(),
            "unrecovered read error (status 0x281)"
        );
    }

    #[test]
    fn dsm_deallocate_encodes_nr_and_the_attribute() {
        let e = SqEntry::dsm_deallocate(3, 2, 0x10_0000);
        assert_eq!(e.opcode, 0x09);
        assert_eq!(e.nsid, 3);
        assert_eq!(e.prp1, 0x10_0000);
        assert_eq!(e.prp2, 0);
        assert_eq!(e.cdw10, 1, "NR is zero-based");
        assert_eq!(e.cdw11, 1 << 2, "AD");
        let r = DsmRange {
            attributes: 0,
            nlb: 8,
            slba: 0x1_0000_0002,
        };
        assert_eq!(
            bytemuck::bytes_of(&r),
            &[0, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn oncs_and_dlfeat_decode() {
        let mut b = [0u8; IDENTIFY_LEN];
        assert!(!IdentifyController::parse(&b).supports_dsm());
        b[520] = 1 << 2;
        assert!(IdentifyController::parse(&b).supports_dsm());
        b[33] = 0x9; // as QEMU: zeros, and Write Zeroes may deallocate
        assert!(IdentifyNamespace::parse(&b).deallocated_reads_zero());
        b[33] = 0x2; // all ones
        assert!(!IdentifyNamespace::parse(&b).deallocated_reads_zero());
    }

    #[test]
    fn namespaces_with_metadata_are_refused() {
        let mut b = [0u8; IDENTIFY_LEN];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[26] = 1; // FLBAS: format 1
        b[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        let ns = IdentifyNamespace::parse(&b);
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.metadata_bytes, 8);
        assert!(ns.unsupported().unwrap().contains("metadata"));
        b[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        assert_eq!(IdentifyNamespace::parse(&b).unsupported(), None);
    }
}
