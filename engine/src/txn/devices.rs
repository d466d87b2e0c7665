//! Is each device what the volume says it is? Every opener of a volume
//! runs these checks before it trusts a device: a mount (`Volume::open`
//! and `Volume::attach_data_device`, which `Engine::start` calls before
//! anything is written), the tools (`open_store`) and `check_volume`.
//!
//! A device is the volume's metadata device when its super block is
//! scoutfs's, says "metadata device", and the device holds at least the
//! blocks the super block counts. A device is its data device when its
//! super block is scoutfs's, says "data device", carries the metadata
//! super block's fsid, and the device holds at least the data blocks the
//! metadata super block counts.

use crate::block::io::MetaIo;
use crate::dev::BlockDev;
use crate::format::block::{BLOCK_LG_SHIFT, BLOCK_SM_SHIFT, BLOCK_SM_SIZE};
use crate::format::super_block::{
    read_super, DeviceKind, SuperError, SuperExpect, SUPER_OFFSET_BYTES,
};
use crate::format::SuperBlock;

use super::TxnError;

/// What is wrong with a device given as a volume's metadata or data device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProblem {
    /// No scoutfs super block: never a scoutfs device, or wiped.
    #[error("not a scoutfs volume (no scoutfs super block at byte {SUPER_OFFSET_BYTES})")]
    NotScoutfs,
    /// Too small to reach the super block at all.
    #[error("not a scoutfs volume (its {bytes} bytes end before the super block at byte {SUPER_OFFSET_BYTES})")]
    TooSmall { bytes: u64 },
    /// A scoutfs super block that fails its checks.
    #[error("{0}")]
    Corrupt(SuperError),
    #[error("is the {} device of volume {fsid:#018x}, not a {} device", role_name(*found), role_name(*expected))]
    WrongRole {
        expected: DeviceKind,
        found: DeviceKind,
        fsid: u64,
    },
    #[error("belongs to volume {found:#018x}, not to volume {expected:#018x}")]
    OtherVolume { expected: u64, found: u64 },
    #[error("holds {device_bytes} bytes but the volume's super block counts {volume_bytes}: the device is shorter than the volume")]
    Short {
        device_bytes: u64,
        volume_bytes: u64,
    },
    #[error("reading its super block: {0}")]
    Read(String),
}

impl DeviceProblem {
    /// The errno a frontend reports: a device that isn't the volume's is
    /// EINVAL, as the kernel's mount says for a bad super block.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceProblem::Read(_) => libc::EIO,
            _ => libc::EINVAL,
        }
    }
}

/// "metadata" or "data".
pub fn role_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Meta => "metadata",
        DeviceKind::Data => "data",
    }
}

fn problem(role: DeviceKind, dev: &dyn BlockDev, problem: DeviceProblem) -> TxnError {
    TxnError::Device {
        role,
        device: dev.name(),
        problem,
    }
}

/// Read the super block of `dev`, which is meant to be the volume's
/// `role` device, and check that it is a scoutfs super block for that
/// role. Returns the open I/O (used for the metadata device) and the
/// super block.
pub fn read_device_super(
    dev: &dyn BlockDev,
    role: DeviceKind,
) -> Result<(MetaIo, SuperBlock), TxnError> {
    let bytes = dev.geometry().capacity_bytes;
    if bytes < SUPER_OFFSET_BYTES + BLOCK_SM_SIZE as u64 {
        return Err(problem(role, dev, DeviceProblem::TooSmall { bytes }));
    }
    let mut io = MetaIo::open(dev)?;
    let raw = io
        .read_super_block()
        .map_err(|e| problem(role, dev, DeviceProblem::Read(e.to_string())))?;
    let sb = match read_super(&raw, &SuperExpect::default()) {
        Ok(sb) => sb,
        Err(SuperError::NotScoutfs) => return Err(problem(role, dev, DeviceProblem::NotScoutfs)),
        Err(e) => return Err(problem(role, dev, DeviceProblem::Corrupt(e))),
    };
    let found = sb.device_kind();
    if found != role {
        return Err(problem(
            role,
            dev,
            DeviceProblem::WrongRole {
                expected: role,
                found,
                fsid: sb.fsid(),
            },
        ));
    }
    Ok((io, sb))
}

/// The metadata device must hold every block its super block counts.
pub fn check_meta_size(meta: &dyn BlockDev, sb: &SuperBlock) -> Result<(), TxnError> {
    let device_bytes = meta.geometry().capacity_bytes;
    let volume_bytes = sb
        .total_meta_blocks
        .get()
        .saturating_mul(1 << BLOCK_LG_SHIFT);
    if device_bytes < volume_bytes {
        return Err(problem(
            DeviceKind::Meta,
            meta,
            DeviceProblem::Short {
                device_bytes,
                volume_bytes,
            },
        ));
    }
    Ok(())
}

/// Check that `data` is the data device of the volume whose metadata
/// super block is `meta_sb`: a scoutfs data device super block with the
/// same fsid, on a device at least as large as the volume's data blocks.
/// Only reads.
pub fn check_data_device(data: &dyn BlockDev, meta_sb: &SuperBlock) -> Result<(), TxnError> {
    let (_, dsb) = read_device_super(data, DeviceKind::Data)?;
    if dsb.fsid() != meta_sb.fsid() {
        return Err(problem(
            DeviceKind::Data,
            data,
            DeviceProblem::OtherVolume {
                expected: meta_sb.fsid(),
                found: dsb.fsid(),
            },
        ));
    }
    let device_bytes = data.geometry().capacity_bytes;
    let volume_bytes = meta_sb
        .total_data_blocks
        .get()
        .saturating_mul(1 << BLOCK_SM_SHIFT);
    if device_bytes < volume_bytes {
        return Err(problem(
            DeviceKind::Data,
            data,
            DeviceProblem::Short {
                device_bytes,
                volume_bytes,
            },
        ));
    }
    Ok(())
}
