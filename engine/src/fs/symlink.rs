//! Symlinks: the target and a terminating NUL (at most 4096 bytes, as
//! scoutfs) in items of up to 896 bytes, `(ino, SYMLINK, part nr)`. The
//! inode's size is the target's length.

use crate::format::btree::MAX_VAL_SIZE;
use crate::format::inode::SYMLINK_MAX_SIZE;
use crate::format::key::{item_type, zone};
use crate::format::Key;

use super::batch::Batch;
use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::perm::Creds;
use super::{Fs, ItemStore};

pub fn symlink_key(ino: u64, part: u64) -> Key {
    Key::new(zone::FS, ino, item_type::SYMLINK, part, 0, 0)
}

const MAX_PARTS: usize = SYMLINK_MAX_SIZE.div_ceil(MAX_VAL_SIZE);

/// Add the items holding `target` for a new symlink `ino`.
pub(super) fn put_target(b: &mut Batch, ino: u64, target: &[u8]) {
    let mut bytes = target.to_vec();
    bytes.push(0);
    assert!(bytes.len() <= SYMLINK_MAX_SIZE);
    for (nr, part) in bytes.chunks(MAX_VAL_SIZE).enumerate() {
        b.put(symlink_key(ino, nr as u64), part.to_vec());
    }
}

impl<S: ItemStore> Fs<S> {
    /// symlink: `name` in `dir` pointing at `target` (ENOENT when empty,
    /// ENAMETOOLONG over 4095 bytes).
    pub async fn symlink(
        &mut self,
        creds: &Creds,
        dir: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr> {
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        if target.len() >= SYMLINK_MAX_SIZE {
            return Err(FsError::NameTooLong);
        }
        if target.contains(&0) {
            return Err(FsError::Invalid);
        }
        self.create_node(
            creds,
            dir,
            Some(name),
            libc::S_IFLNK | 0o777,
            0,
            Some(target),
        )
        .await
    }

    /// readlink: a symlink's target (EINVAL for anything else).
    pub async fn readlink(&mut self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.read_inode(ino).await?;
        if Attr::from_inode(ino, &inode)?.kind != FileType::Symlink {
            return Err(FsError::Invalid);
        }
        // The size comes from disk: check it before allocating by it.
        let size = match usize::try_from(inode.size.get()) {
            Ok(s) if s < SYMLINK_MAX_SIZE => s,
            _ => {
                return Err(FsError::corrupt(format!(
                    "symlink {ino} has size {}",
                    inode.size.get()
                )))
            }
        };
        let items = self
            .store
            .range(
                &symlink_key(ino, 0),
                &symlink_key(ino, u64::MAX),
                MAX_PARTS + 1,
            )
            .await?;
        let mut bytes = Vec::with_capacity(size + 1);
        for (nr, item) in items.iter().enumerate() {
            if item.key != symlink_key(ino, nr as u64) {
                return Err(FsError::corrupt(format!(
                    "symlink {ino} part {nr} is missing"
                )));
            }
            bytes.extend_from_slice(&item.val);
        }
        if bytes.len() != size + 1 || bytes.last() != Some(&0) {
            return Err(FsError::corrupt(format!(
                "symlink {ino} of size {size} holds {} bytes",
                bytes.len()
            )));
        }
        bytes.pop();
        Ok(bytes)
    }
}
