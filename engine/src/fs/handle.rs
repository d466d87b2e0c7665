//! File handles: what a frontend needs so that an inode can be found again
//! from a handle (`name_to_handle_at`/`open_by_handle_at`, an NFS export),
//! and so that a handle of a deleted inode answers ESTALE rather than
//! another file.
//!
//! A handle names an inode by its number and a generation. scoutfs's own
//! handles carry the number alone (kmod/src/export.c) because inode
//! numbers are never reused: the server makes each grant of numbers
//! durable before answering it (`server_alloc_inodes` commits), so no
//! number a frontend has seen can be granted again after a crash.
//! [`Fs`] keeps that rule (each grant is committed before a number from
//! it is used: the mount's first in `Fs::open`, later ones in
//! `Fs::alloc_ino`), so the generation need not tell apart two lives of
//! one number; [`handle_generation`] makes it tell apart volumes instead.
//!
//! The lookups a handle's decoding makes are answered without a
//! permission check, as a kernel filesystem's export operations are: the
//! kernel let the caller decode handles (CAP_DAC_READ_SEARCH, or nfsd).

use crate::format::inode::ROOT_INO;

use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::{Fs, ItemStore};

/// The generation that goes with `ino` in a file handle on the volume
/// `fsid`: 0 for the root directory, else the fsid folded to 32 bits (the
/// kernel keeps 32: `i_generation`). Never stored: a volume's inodes all
/// have its one generation, which a handle made on another volume (one
/// since made again with mkfs on the same devices, or a different one
/// exported under the same NFS fsid) fails to match, so the kernel
/// answers ESTALE instead of opening whatever file holds that number
/// there. The root's is 0 because a FUSE kernel makes the root's inode
/// itself, with generation 0, and would take any other answer for it as
/// a sign that the root was deleted and its number reused.
pub fn handle_generation(fsid: u64, ino: u64) -> u32 {
    if ino == ROOT_INO {
        return 0;
    }
    (fsid ^ (fsid >> 32)) as u32
}

impl<S: ItemStore> Fs<S> {
    /// The inode a file handle names (FUSE's LOOKUP of "." in that inode,
    /// sent when the kernel no longer caches it): ENOENT, which the kernel
    /// turns into ESTALE, once it is deleted. An inode whose last link is
    /// gone counts as deleted even while open: ext4 finds such an inode
    /// by its handle only while it is in the kernel's inode cache, and a
    /// FUSE kernel does the same from its own cache without asking. It
    /// asks only once it has dropped the inode, so after the last close,
    /// whose RELEASE (sent asynchronously) may not have reached the engine
    /// yet: the engine's open count can't tell, and isn't consulted.
    pub async fn handle_inode(&mut self, ino: u64) -> Result<Attr> {
        let attr = self.getattr(ino).await?;
        if attr.nlink == 0 {
            return Err(FsError::NotFound);
        }
        Ok(attr)
    }

    /// The directory holding directory `dir` (FUSE's LOOKUP of "..",
    /// which the kernel sends to connect a directory found by its handle
    /// to the tree); the root's is the root. ENOTDIR for anything but a
    /// directory, ENOENT for a removed one.
    pub async fn handle_parent(&mut self, dir: u64) -> Result<Attr> {
        let attr = self.handle_inode(dir).await?;
        if attr.kind != FileType::Directory {
            return Err(FsError::NotDir);
        }
        let parent = self.parent_of(dir).await?;
        self.handle_inode(parent).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_has_generation_zero_and_others_the_volumes() {
        let fsid = 0x0123_4567_89ab_cdef;
        assert_eq!(handle_generation(fsid, ROOT_INO), 0);
        assert_eq!(handle_generation(fsid, 2), 0x0123_4567 ^ 0x89ab_cdef);
        assert_eq!(
            handle_generation(fsid, u64::MAX),
            handle_generation(fsid, 2)
        );
        // Volumes differing in either half of the fsid differ.
        assert_ne!(handle_generation(fsid ^ 1, 2), handle_generation(fsid, 2));
        assert_ne!(
            handle_generation(fsid ^ (1 << 40), 2),
            handle_generation(fsid, 2)
        );
    }
}
