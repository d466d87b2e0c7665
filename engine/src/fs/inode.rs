//! Inode attributes: what getattr returns, what setattr changes, and the
//! file types and their dirent types.

use crate::format::inode::{
    Inode, Timespec, DT_BLK, DT_CHR, DT_DIR, DT_FIFO, DT_LNK, DT_REG, DT_SOCK,
};
use crate::format::le::{Le32, Le64};

use super::acl::ACL_ACCESS_XATTR;
use super::batch::Batch;
use super::error::{FsError, Result};
use super::perm::{self, Creds, MAY_WRITE};
use super::xattr::{delete_xattr, put_xattr};
use super::{Fs, ItemStore};

/// Add `delta` to a stored 64-bit count (a directory's size). A result
/// below zero or past the type means the inode disagrees with its items:
/// corruption, reported as EIO, never wrapped or a panic.
pub(super) fn adjust_u64(ino: u64, what: &str, field: &mut Le64, delta: i64) -> Result<()> {
    let have = field.get();
    let new = have.checked_add_signed(delta).ok_or_else(|| {
        FsError::corrupt(format!(
            "inode {ino}: {what} {have} can't change by {delta}"
        ))
    })?;
    field.set(new);
    Ok(())
}

/// [`adjust_u64`] for a 32-bit count (nlink).
pub(super) fn adjust_u32(ino: u64, what: &str, field: &mut Le32, delta: i32) -> Result<()> {
    let have = field.get();
    let new = have.checked_add_signed(delta).ok_or_else(|| {
        FsError::corrupt(format!(
            "inode {ino}: {what} {have} can't change by {delta}"
        ))
    })?;
    field.set(new);
    Ok(())
}

/// A name's length as a size change.
pub(super) fn name_delta(name: &[u8]) -> i64 {
    // Names are at most NAME_LEN (255) bytes: checked before any change.
    name.len() as i64
}

/// The type of an inode, from its mode's `S_IFMT` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::Regular,
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFIFO => FileType::Fifo,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFCHR => FileType::CharDevice,
            libc::S_IFBLK => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => libc::S_IFREG,
            FileType::Directory => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Fifo => libc::S_IFIFO,
            FileType::Socket => libc::S_IFSOCK,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
        }
    }

    /// scoutfs's dirent type (`format::inode::DT_*`, not the kernel's).
    pub fn dirent_type(self) -> u8 {
        match self {
            FileType::Regular => DT_REG,
            FileType::Directory => DT_DIR,
            FileType::Symlink => DT_LNK,
            FileType::Fifo => DT_FIFO,
            FileType::Socket => DT_SOCK,
            FileType::CharDevice => DT_CHR,
            FileType::BlockDevice => DT_BLK,
        }
    }

    pub fn from_dirent_type(ty: u8) -> Option<FileType> {
        Some(match ty {
            DT_REG => FileType::Regular,
            DT_DIR => FileType::Directory,
            DT_LNK => FileType::Symlink,
            DT_FIFO => FileType::Fifo,
            DT_SOCK => FileType::Socket,
            DT_CHR => FileType::CharDevice,
            DT_BLK => FileType::BlockDevice,
            _ => return None,
        })
    }

    /// The kernel's `DT_*` (getdents, FUSE readdir).
    pub fn kernel_dirent_type(self) -> u8 {
        match self {
            FileType::Regular => libc::DT_REG,
            FileType::Directory => libc::DT_DIR,
            FileType::Symlink => libc::DT_LNK,
            FileType::Fifo => libc::DT_FIFO,
            FileType::Socket => libc::DT_SOCK,
            FileType::CharDevice => libc::DT_CHR,
            FileType::BlockDevice => libc::DT_BLK,
        }
    }
}

/// Every field of an inode, as getattr reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileType,
    /// Type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub meta_seq: u64,
    pub data_seq: u64,
    pub data_version: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    pub version: u64,
    pub flags: u32,
    pub proj: u64,
}

impl Attr {
    pub fn from_inode(ino: u64, i: &Inode) -> Result<Attr> {
        let mode = i.mode.get();
        let kind = FileType::from_mode(mode)
            .ok_or_else(|| FsError::corrupt(format!("inode {ino} has mode {mode:o}")))?;
        Ok(Attr {
            ino,
            kind,
            mode,
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            rdev: i.rdev.get(),
            size: i.size.get(),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            meta_seq: i.meta_seq.get(),
            data_seq: i.data_seq.get(),
            data_version: i.data_version.get(),
            online_blocks: i.online_blocks.get(),
            offline_blocks: i.offline_blocks.get(),
            version: i.version.get(),
            flags: i.flags.get(),
            proj: i.proj.get(),
        })
    }

    /// Permission bits only.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// What a setattr changes; `None` leaves a field alone. The frontend
/// resolves UTIME_NOW to the current time and UTIME_OMIT to `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (the type bits are ignored).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend (regular files only).
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    pub ctime: Option<Timespec>,
    /// The times are "now" (utimensat with UTIME_NOW or NULL): write
    /// permission suffices, where explicit times need the owner.
    pub times_now: bool,
    /// The times are the frontend kernel's own stamps, which it keeps
    /// while it caches writes (FUSE's writeback cache: mtime and ctime
    /// on a truncate, and flushed at close or by write-back), and it has
    /// already checked that the caller may set them (the VFS's
    /// `setattr_prepare`, run under `default_permissions`): set them
    /// whoever the caller is. Only for a frontend whose kernel checks.
    pub kernel_times: bool,
    /// The size change comes through a handle opened for writing
    /// (ftruncate, O_TRUNC): the write permission was checked at open.
    pub handle_writable: bool,
}

impl SetAttr {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
            && self.ctime.is_none()
    }
}

impl<S: ItemStore> Fs<S> {
    pub async fn getattr(&mut self, ino: u64) -> Result<Attr> {
        let inode = self.read_inode(ino).await?;
        Attr::from_inode(ino, &inode)
    }

    /// access(2): may `creds` access `ino` for `mask` (`MAY_*`)?
    pub async fn access(&mut self, creds: &Creds, ino: u64, mask: u32) -> Result<()> {
        let inode = self.read_inode(ino).await?;
        self.check_access(creds, ino, &inode, mask).await
    }

    /// chmod, chown, truncate and utimes, with Linux's permission rules:
    /// truncation needs write permission (EACCES), a mode change or
    /// explicit times the owner (EPERM), an owner change root and a group
    /// change the owner in that group (EPERM), times "now" the owner or
    /// write permission (EACCES), times the frontend's kernel stamped
    /// nothing more ([`SetAttr::kernel_times`]). Every change sets ctime;
    /// a mode change rewrites the access ACL, if any, to match.
    pub async fn setattr(&mut self, creds: &Creds, ino: u64, set: &SetAttr) -> Result<Attr> {
        let now = self.now();
        let stored = self.read_inode(ino).await?;
        if set.is_empty() {
            return Attr::from_inode(ino, &stored);
        }
        let kind = Attr::from_inode(ino, &stored)?.kind;
        let mut new = stored;
        let mut data_changed = false;

        // Checks, in the order Linux makes them.
        if let Some(size) = set.size {
            match kind {
                FileType::Regular => {}
                FileType::Directory => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid),
            }
            if size > i64::MAX as u64 {
                return Err(FsError::Invalid);
            }
            if !set.handle_writable {
                self.check_access(creds, ino, &stored, MAY_WRITE).await?;
            }
        }
        if let Some(uid) = set.uid {
            perm::check_chown(creds, &stored, uid)?;
        }
        if let Some(gid) = set.gid {
            perm::check_chgrp(creds, &stored, gid)?;
        }
        if set.mode.is_some() && !creds.owns_or_root(&stored) {
            return Err(FsError::Perm);
        }
        let times = set.atime.is_some() || set.mtime.is_some() || set.ctime.is_some();
        if times && !set.kernel_times && !creds.owns_or_root(&stored) {
            if set.times_now && set.ctime.is_none() {
                self.check_access(creds, ino, &stored, MAY_WRITE).await?;
            } else {
                return Err(FsError::Perm);
            }
        }

        // Changes.
        if let Some(size) = set.size {
            new.mode.set(perm::mode_after_write(creds, &new));
            if size != stored.size.get() {
                new.size.set(size);
                new.mtime = now;
                new.data_version
                    .set(stored.data_version.get().wrapping_add(1));
                data_changed = true;
            }
        }
        if set.uid.is_some() || set.gid.is_some() {
            if set.mode.is_none() {
                new.mode.set(perm::mode_after_chown(creds, &new));
            }
            if let Some(uid) = set.uid {
                new.uid.set(uid);
            }
            if let Some(gid) = set.gid {
                new.gid.set(gid);
            }
        }
        if let Some(mode) = set.mode {
            new.mode.set(perm::chmod_mode(creds, &new, mode));
        }
        if let Some(t) = set.atime {
            new.atime = t;
        }
        if let Some(t) = set.mtime {
            new.mtime = t;
        }
        new.ctime = set.ctime.unwrap_or(now);

        // chmod keeps an access ACL in step (`posix_acl_chmod`), in the
        // same transaction as the mode.
        let acl = match set.mode {
            Some(_) => self.acl_after_chmod(ino, &stored, new.mode.get()).await?,
            None => None,
        };
        // A truncate or an owner change drops the file's capabilities.
        let cap = if set.size.is_some() || set.uid.is_some() || set.gid.is_some() {
            self.capability_to_kill(ino).await?
        } else {
            None
        };
        let put_acl = move |b: &mut Batch| {
            if let Some((value, found)) = acl {
                put_xattr(b, ino, found.hash, ACL_ACCESS_XATTR, &value, Some(&found));
            }
            if let Some(found) = cap {
                delete_xattr(b, ino, &found);
            }
        };

        // Truncating to the same size also frees the blocks past the end
        // (preallocated or fallocated with KEEP_SIZE), as ext4's does.
        if set.size.is_some_and(|s| s <= stored.size.get()) {
            self.truncate_data(ino, stored, new, put_acl).await?;
            return self.getattr(ino).await;
        }
        let mut b = self.batch();
        b.track(ino, stored);
        *b.inode_mut(ino) = new;
        put_acl(&mut b);
        if data_changed {
            b.data_changed(ino);
        }
        self.apply(b).await?;
        // The stored inode has the batch's version and seqs: read it back.
        self.getattr(ino).await
    }
}
