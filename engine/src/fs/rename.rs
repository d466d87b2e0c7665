//! rename, with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! The checks follow Linux's `do_renameat2` and `vfs_rename` in order:
//! flags, both directories searchable, names, the source exists (ENOENT),
//! NOREPLACE/EXCHANGE against the target, the loop checks (a directory
//! can't move under itself: EINVAL; a target that is an ancestor of the
//! source is ENOTEMPTY, or EINVAL for an exchange), the same inode on both
//! sides (nothing to do), removal rights in both directories (EACCES,
//! sticky EPERM), type mismatches (ENOTDIR / EISDIR), write permission on
//! a directory that changes parent (its ".."), link limits, and a target
//! directory that isn't empty (ENOTEMPTY).
//!
//! A moved entry gets a new readdir position in its new directory; an
//! exchange leaves both positions (and names) where they were, pointing at
//! the other inode.

use crate::format::inode::{DIRENT_FIRST_POS, DIRENT_LAST_POS, LINK_MAX};

use super::dirent::{backref_key, check_name, Entry, NameKind};
use super::error::{FsError, Result};
use super::inode::{adjust_u32, adjust_u64, name_delta, Attr, FileType};
use super::perm::{Creds, MAY_EXEC, MAY_WRITE};
use super::{Fs, ItemStore};

/// Fail with EEXIST rather than replace an existing target.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap the source and the target, which must both exist.
pub const RENAME_EXCHANGE: u32 = 2;

impl<S: ItemStore> Fs<S> {
    pub async fn rename(
        &mut self,
        creds: &Creds,
        old_dir: u64,
        old_name: &[u8],
        new_dir: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let now = self.now();
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(FsError::Invalid);
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let od = self.search_dir(creds, old_dir).await?;
        let nd = if new_dir == old_dir {
            od
        } else {
            self.search_dir(creds, new_dir).await?
        };
        if check_name(old_name)? != NameKind::Normal {
            return Err(FsError::Busy);
        }
        if check_name(new_name)? != NameKind::Normal {
            return Err(if flags & RENAME_NOREPLACE != 0 {
                FsError::Exists
            } else {
                FsError::Busy
            });
        }
        let Some(src) = self.find_entry(old_dir, old_name).await? else {
            return Err(FsError::NotFound);
        };
        let tgt = self.find_entry(new_dir, new_name).await?;
        if flags & RENAME_NOREPLACE != 0 && tgt.is_some() {
            return Err(FsError::Exists);
        }
        if exchange && tgt.is_none() {
            return Err(FsError::NotFound);
        }
        let si = self.read_inode(src.ino).await?;
        let s_dir = Attr::from_inode(src.ino, &si)?.kind == FileType::Directory;
        let ti = match &tgt {
            Some(t) => Some(self.read_inode(t.ino).await?),
            None => None,
        };
        let t_dir = match (&tgt, &ti) {
            (Some(t), Some(i)) => Attr::from_inode(t.ino, i)?.kind == FileType::Directory,
            _ => false,
        };

        if old_dir != new_dir {
            if s_dir && self.is_under(new_dir, src.ino).await? {
                return Err(FsError::Invalid);
            }
            if let Some(t) = &tgt {
                if t_dir && self.is_under(old_dir, t.ino).await? {
                    return Err(if exchange {
                        FsError::Invalid
                    } else {
                        FsError::NotEmpty
                    });
                }
            }
        }
        if tgt.as_ref().is_some_and(|t| t.ino == src.ino) {
            return Ok(());
        }
        self.check_may_delete(creds, old_dir, &od, &si).await?;
        match &ti {
            Some(ti) => {
                self.check_may_delete(creds, new_dir, &nd, ti).await?;
                if !exchange && s_dir && !t_dir {
                    return Err(FsError::NotDir);
                }
                if !exchange && !s_dir && t_dir {
                    return Err(FsError::IsDir);
                }
            }
            None => {
                if nd.nlink.get() == 0 {
                    return Err(FsError::NotFound);
                }
                self.check_access(creds, new_dir, &nd, MAY_WRITE | MAY_EXEC)
                    .await?;
            }
        }
        if old_dir != new_dir {
            if s_dir {
                self.check_access(creds, src.ino, &si, MAY_WRITE).await?;
            }
            if let (true, true, Some(t), Some(ti)) = (exchange, t_dir, &tgt, &ti) {
                self.check_access(creds, t.ino, ti, MAY_WRITE).await?;
            }
            if s_dir && !t_dir && nd.nlink.get() >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            if exchange && t_dir && !s_dir && od.nlink.get() >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
        }
        if let Some(t) = &tgt {
            if !exchange && t_dir && !self.dir_is_empty(t.ino).await? {
                return Err(FsError::NotEmpty);
            }
        }

        let mut b = self.batch();
        b.track(old_dir, od);
        b.track(new_dir, nd);
        b.track(src.ino, si);
        if let (Some(t), Some(ti)) = (&tgt, ti) {
            b.track(t.ino, ti);
        }
        let moves_dir_between = |is_dir: bool| is_dir && old_dir != new_dir;
        if let (true, Some(t)) = (exchange, &tgt) {
            b.delete(backref_key(src.ino, old_dir, src.pos));
            b.delete(backref_key(t.ino, new_dir, t.pos));
            Entry {
                ino: t.ino,
                ty: t.ty,
                ..src.clone()
            }
            .put(&mut b, old_dir);
            Entry {
                ino: src.ino,
                ty: src.ty,
                ..t.clone()
            }
            .put(&mut b, new_dir);
            if moves_dir_between(s_dir) && !t_dir {
                adjust_u32(old_dir, "nlink", &mut b.inode_mut(old_dir).nlink, -1)?;
                adjust_u32(new_dir, "nlink", &mut b.inode_mut(new_dir).nlink, 1)?;
            }
            if moves_dir_between(t_dir) && !s_dir {
                adjust_u32(new_dir, "nlink", &mut b.inode_mut(new_dir).nlink, -1)?;
                adjust_u32(old_dir, "nlink", &mut b.inode_mut(old_dir).nlink, 1)?;
            }
            b.inode_mut(t.ino).ctime = now;
        } else {
            src.delete(&mut b, old_dir);
            let o = b.inode_mut(old_dir);
            adjust_u64(old_dir, "size", &mut o.size, -name_delta(old_name))?;
            if let Some(t) = &tgt {
                t.delete(&mut b, new_dir);
                let n = b.inode_mut(new_dir);
                adjust_u64(new_dir, "size", &mut n.size, -name_delta(new_name))?;
                if t_dir {
                    adjust_u32(new_dir, "nlink", &mut n.nlink, -1)?;
                }
                let victim = b.inode_mut(t.ino);
                if t_dir {
                    victim.nlink.set(0);
                } else {
                    adjust_u32(t.ino, "nlink", &mut victim.nlink, -1)?;
                }
                let nlink = victim.nlink.get();
                victim.ctime = now;
                if nlink == 0 {
                    self.drop_inode(&mut b, t.ino).await?;
                }
            }
            let n = b.inode_mut(new_dir);
            let pos = n.next_readdir_pos.get();
            if !(DIRENT_FIRST_POS..DIRENT_LAST_POS).contains(&pos) {
                return Err(FsError::NoSpace(format!(
                    "directory {new_dir} has used every readdir position"
                )));
            }
            n.next_readdir_pos.set(pos + 1);
            adjust_u64(new_dir, "size", &mut n.size, name_delta(new_name))?;
            if moves_dir_between(s_dir) {
                adjust_u32(new_dir, "nlink", &mut n.nlink, 1)?;
                adjust_u32(old_dir, "nlink", &mut b.inode_mut(old_dir).nlink, -1)?;
            }
            Entry {
                ino: src.ino,
                hash: self.hash(new_name),
                pos,
                ty: src.ty,
                name: new_name.to_vec(),
            }
            .put(&mut b, new_dir);
        }
        b.inode_mut(src.ino).ctime = now;
        for dir in [old_dir, new_dir] {
            let d = b.inode_mut(dir);
            d.mtime = now;
            d.ctime = now;
        }
        self.apply(b).await?;
        self.purge_pending().await
    }
}
