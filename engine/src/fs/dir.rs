//! Namespace operations on directories: lookup, create/mknod/mkdir (and
//! the creation symlink shares), unlink, rmdir, link, readdir.
//!
//! Each checks in the order Linux does, so that a caller sees the errno a
//! kernel filesystem would give: the directory exists (ENOENT), is one
//! (ENOTDIR) and may be searched (EACCES); the name is valid
//! (ENAMETOOLONG); the entry exists or not (EEXIST / ENOENT); the
//! directory may be written (EACCES); the sticky bit (EPERM); the types
//! (EISDIR / ENOTDIR); then emptiness and link counts.

use crate::format::inode::{Inode, DIRENT_FIRST_POS, DIRENT_LAST_POS, LINK_MAX};

use super::dirent::{check_name, readdir_key, Entry, NameKind};
use super::error::{FsError, Result};
use super::inode::{adjust_u32, adjust_u64, name_delta, Attr, FileType};
use super::orphan::orphan_key;
use super::perm::{self, Creds, MAY_EXEC, MAY_WRITE};
use super::xattr::put_xattr;
use super::{symlink, Fs, ItemStore};

/// One readdir entry. Positions 0 and 1 are "." and ".."; stored entries
/// start at 2 and keep their position for as long as they exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub pos: u64,
    pub ino: u64,
    pub kind: FileType,
    pub name: Vec<u8>,
}

fn kind_of(ino: u64, inode: &Inode) -> Result<FileType> {
    Ok(Attr::from_inode(ino, inode)?.kind)
}

impl<S: ItemStore> Fs<S> {
    /// A directory an operation looks into: it exists, is a directory, and
    /// `creds` may search it.
    /// The directory `dir`, checked for adding the entry `name`: search
    /// permission, a plain name not yet there (EEXIST), a directory that
    /// isn't being deleted (ENOENT), write permission — in Linux's order.
    async fn dir_for_new_entry(&mut self, creds: &Creds, dir: u64, name: &[u8]) -> Result<Inode> {
        let d = self.search_dir(creds, dir).await?;
        if check_name(name)? != NameKind::Normal {
            return Err(FsError::Exists);
        }
        if self.find_entry(dir, name).await?.is_some() {
            return Err(FsError::Exists);
        }
        if d.nlink.get() == 0 {
            return Err(FsError::NotFound);
        }
        self.check_access(creds, dir, &d, MAY_WRITE | MAY_EXEC)
            .await?;
        Ok(d)
    }

    pub(super) async fn search_dir(&mut self, creds: &Creds, dir: u64) -> Result<Inode> {
        let d = self.read_inode(dir).await?;
        if kind_of(dir, &d)? != FileType::Directory {
            return Err(FsError::NotDir);
        }
        self.check_access(creds, dir, &d, MAY_EXEC).await?;
        Ok(d)
    }

    /// The inode `name` names in `dir` ("." and ".." included).
    pub async fn lookup(&mut self, creds: &Creds, dir: u64, name: &[u8]) -> Result<Attr> {
        self.search_dir(creds, dir).await?;
        let ino = match check_name(name)? {
            NameKind::Dot => dir,
            NameKind::DotDot => self.parent_of(dir).await?,
            NameKind::Normal => match self.find_entry(dir, name).await? {
                Some(e) => e.ino,
                None => return Err(FsError::NotFound),
            },
        };
        self.getattr(ino).await
    }

    /// A regular file (creat, open with O_CREAT): the type bits of `mode`
    /// are ignored.
    pub async fn create(
        &mut self,
        creds: &Creds,
        dir: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<Attr> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        self.create_node(creds, dir, Some(name), mode, 0, None)
            .await
    }

    /// mknod: a regular file (type bits 0 or S_IFREG), fifo, socket, or
    /// character or block device (root only) with `rdev`.
    pub async fn mknod(
        &mut self,
        creds: &Creds,
        dir: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        let mode = match mode & libc::S_IFMT {
            0 => libc::S_IFREG | (mode & 0o7777),
            libc::S_IFDIR => return Err(FsError::Perm),
            _ => match FileType::from_mode(mode) {
                Some(FileType::Symlink) | None => return Err(FsError::Invalid),
                Some(_) => mode & (libc::S_IFMT | 0o7777),
            },
        };
        let rdev = match FileType::from_mode(mode) {
            Some(FileType::CharDevice | FileType::BlockDevice) => rdev,
            _ => 0,
        };
        self.create_node(creds, dir, Some(name), mode, rdev, None)
            .await
    }

    /// mkdir: setuid and setgid of `mode` are ignored (a setgid parent
    /// passes its setgid on).
    pub async fn mkdir(&mut self, creds: &Creds, dir: u64, name: &[u8], mode: u32) -> Result<Attr> {
        let mode = libc::S_IFDIR | (mode & (0o777 | libc::S_ISVTX));
        self.create_node(creds, dir, Some(name), mode, 0, None)
            .await
    }

    /// Make a new inode of `mode` (type included) named `name` in `dir`;
    /// `target` is a symlink's. The new inode inherits `dir`'s default
    /// ACL, or else its mode loses the caller's umask (symlinks neither).
    /// O_TMPFILE: a regular file in `dir`'s filesystem with no name. It
    /// is open (a handle is taken, given back with [`Fs::release`]), kept
    /// by an orphan item until linked, and may be linked into a directory
    /// with [`Fs::link`] (linkat) while this mount holds it.
    pub async fn tmpfile(&mut self, creds: &Creds, dir: u64, mode: u32) -> Result<Attr> {
        let mode = libc::S_IFREG | (mode & 0o7777);
        self.create_node(creds, dir, None, mode, 0, None).await
    }

    /// Make a new inode of `mode` (type included) named `name` in `dir`
    /// (no name: an O_TMPFILE, orphaned and open); `target` is a symlink's.
    pub(super) async fn create_node(
        &mut self,
        creds: &Creds,
        dir: u64,
        name: Option<&[u8]>,
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> Result<Attr> {
        let now = self.now();
        let kind = FileType::from_mode(mode).ok_or(FsError::Invalid)?;
        debug_assert_eq!(kind == FileType::Symlink, target.is_some());
        let d = match name {
            Some(name) => self.dir_for_new_entry(creds, dir, name).await?,
            None => {
                let d = self.search_dir(creds, dir).await?;
                if d.nlink.get() == 0 {
                    return Err(FsError::NotFound);
                }
                self.check_access(creds, dir, &d, MAY_WRITE | MAY_EXEC)
                    .await?;
                d
            }
        };
        if matches!(kind, FileType::CharDevice | FileType::BlockDevice) && !creds.is_root() {
            return Err(FsError::Perm);
        }
        if kind == FileType::Directory && d.nlink.get() >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let pos = d.next_readdir_pos.get();
        if !(DIRENT_FIRST_POS..DIRENT_LAST_POS).contains(&pos) {
            return Err(FsError::NoSpace(format!(
                "directory {dir} has used every readdir position"
            )));
        }

        // Linux applies the umask before the setgid rules when ACLs are
        // off (`mode_strip_umask`), and after them, only without a default
        // ACL, when they are on (`posix_acl_create`).
        let mode = if self.opts.acl || kind == FileType::Symlink {
            mode
        } else {
            mode & !(creds.umask & 0o777)
        };
        let (uid, gid, mode) = perm::new_inode_owner(creds, &d, mode);
        let (mode, acls) = if self.opts.acl {
            self.inherit_acls(creds, dir, mode).await?
        } else {
            (mode, Vec::new())
        };
        let ino = self.alloc_ino().await?;
        let nlink = match (name, kind) {
            (None, _) => 0,
            (Some(_), FileType::Directory) => 2,
            (Some(_), _) => 1,
        };
        let inode = Inode {
            size: target.map_or(0, |t| t.len() as u64).into(),
            next_readdir_pos: DIRENT_FIRST_POS.into(),
            nlink: nlink.into(),
            uid: uid.into(),
            gid: gid.into(),
            mode: mode.into(),
            rdev: rdev.into(),
            atime: now,
            ctime: now,
            mtime: now,
            crtime: now,
            proj: d.proj,
            ..Inode::default()
        };
        let mut b = self.batch();
        b.create_inode(ino, inode);
        for (acl_kind, value) in acls {
            let xname = acl_kind.xattr_name();
            put_xattr(&mut b, ino, self.hash(xname), xname, &value, None);
        }
        if let Some(t) = target {
            symlink::put_target(&mut b, ino, t);
        }
        let Some(name) = name else {
            // O_TMPFILE: no entry; the orphan item keeps it until linked.
            b.put(orphan_key(self.opts.rid, ino), Vec::new());
            self.apply(b).await?;
            self.hold_ino(ino);
            self.linkable.insert(ino);
            return self.getattr(ino).await;
        };
        b.track(dir, d);
        let di = b.inode_mut(dir);
        di.next_readdir_pos.set(pos + 1);
        adjust_u64(dir, "size", &mut di.size, name_delta(name))?;
        if kind == FileType::Directory {
            adjust_u32(dir, "nlink", &mut di.nlink, 1)?;
        }
        di.mtime = now;
        di.ctime = now;
        let entry = Entry {
            ino,
            hash: self.hash(name),
            pos,
            ty: kind.dirent_type(),
            name: name.to_vec(),
        };
        entry.put(&mut b, dir);
        self.apply(b).await?;
        self.getattr(ino).await
    }

    /// unlink: remove a name of a non-directory.
    pub async fn unlink(&mut self, creds: &Creds, dir: u64, name: &[u8]) -> Result<()> {
        self.remove(creds, dir, name, false).await
    }

    /// rmdir: remove an empty directory.
    pub async fn rmdir(&mut self, creds: &Creds, dir: u64, name: &[u8]) -> Result<()> {
        self.remove(creds, dir, name, true).await
    }

    async fn remove(&mut self, creds: &Creds, dir: u64, name: &[u8], rmdir: bool) -> Result<()> {
        let now = self.now();
        let d = self.search_dir(creds, dir).await?;
        match (check_name(name)?, rmdir) {
            (NameKind::Normal, _) => {}
            (NameKind::Dot, true) => return Err(FsError::Invalid),
            (NameKind::DotDot, true) => return Err(FsError::NotEmpty),
            (_, false) => return Err(FsError::IsDir),
        }
        let Some(e) = self.find_entry(dir, name).await? else {
            return Err(FsError::NotFound);
        };
        let child = self.read_inode(e.ino).await?;
        self.check_may_delete(creds, dir, &d, &child).await?;
        let is_dir = kind_of(e.ino, &child)? == FileType::Directory;
        if rmdir && !is_dir {
            return Err(FsError::NotDir);
        }
        if !rmdir && is_dir {
            return Err(FsError::IsDir);
        }
        if is_dir && !self.dir_is_empty(e.ino).await? {
            return Err(FsError::NotEmpty);
        }

        let mut b = self.batch();
        b.track(dir, d);
        b.track(e.ino, child);
        e.delete(&mut b, dir);
        let di = b.inode_mut(dir);
        adjust_u64(dir, "size", &mut di.size, -name_delta(name))?;
        if is_dir {
            adjust_u32(dir, "nlink", &mut di.nlink, -1)?;
        }
        di.mtime = now;
        di.ctime = now;
        let ci = b.inode_mut(e.ino);
        if is_dir {
            ci.nlink.set(0);
        } else {
            adjust_u32(e.ino, "nlink", &mut ci.nlink, -1)?;
        }
        let nlink = ci.nlink.get();
        ci.ctime = now;
        if nlink == 0 {
            self.drop_inode(&mut b, e.ino).await?;
        }
        self.apply(b).await?;
        self.purge_pending().await
    }

    /// link: a new name for a non-directory.
    pub async fn link(&mut self, creds: &Creds, ino: u64, dir: u64, name: &[u8]) -> Result<Attr> {
        let now = self.now();
        let child = self.read_inode(ino).await?;
        let d = self.dir_for_new_entry(creds, dir, name).await?;
        let kind = kind_of(ino, &child)?;
        if kind == FileType::Directory {
            return Err(FsError::Perm);
        }
        let tmpfile = child.nlink.get() == 0;
        if tmpfile && !self.linkable.contains(&ino) {
            // An unlinked file can't come back; an O_TMPFILE can.
            return Err(FsError::NotFound);
        }
        if child.nlink.get() >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let pos = d.next_readdir_pos.get();
        if !(DIRENT_FIRST_POS..DIRENT_LAST_POS).contains(&pos) {
            return Err(FsError::NoSpace(format!(
                "directory {dir} has used every readdir position"
            )));
        }

        let mut b = self.batch();
        b.track(dir, d);
        b.track(ino, child);
        let di = b.inode_mut(dir);
        di.next_readdir_pos.set(pos + 1);
        adjust_u64(dir, "size", &mut di.size, name_delta(name))?;
        di.mtime = now;
        di.ctime = now;
        let ci = b.inode_mut(ino);
        adjust_u32(ino, "nlink", &mut ci.nlink, 1)?;
        ci.ctime = now;
        let entry = Entry {
            ino,
            hash: self.hash(name),
            pos,
            ty: kind.dirent_type(),
            name: name.to_vec(),
        };
        entry.put(&mut b, dir);
        if tmpfile {
            b.delete(orphan_key(self.opts.rid, ino));
        }
        self.apply(b).await?;
        if tmpfile {
            self.linkable.remove(&ino);
        }
        self.getattr(ino).await
    }

    /// Up to `max` entries of `dir` at positions `from_pos` and after, in
    /// position order; continue from the last position + 1. Positions 0
    /// and 1 are "." and "..". Permission to read the directory is checked
    /// when it is opened ([`Fs::open_ino`]). Unbounded: a listing that
    /// takes several calls while entries are renamed should be one pass
    /// ([`Fs::readdir_pass_end`], [`Fs::readdir_until`]).
    pub async fn readdir(&mut self, dir: u64, from_pos: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.readdir_until(dir, from_pos, DIRENT_LAST_POS, max)
            .await
    }

    /// Where a readdir pass of `dir` that starts now ends: the position
    /// the next entry will take. A rename gives the moved entry a new
    /// position, past every existing one (scoutfs's rule, which keeps
    /// positions stable), so a pass that read on to the end would meet
    /// each entry renamed behind it again, under its new name, and never
    /// finish while renames keep up. A pass bounded here visits each
    /// position at most once and at most as many entries as the directory
    /// held when it began; entries created or renamed since are left to
    /// the next pass, as POSIX allows. (scoutfs's kernel readdir reads to
    /// the end; btrfs, whose positions behave the same, bounds each open
    /// the same way.)
    pub async fn readdir_pass_end(&mut self, dir: u64) -> Result<u64> {
        let d = self.read_inode(dir).await?;
        if kind_of(dir, &d)? != FileType::Directory {
            return Err(FsError::NotDir);
        }
        Ok(d.next_readdir_pos.get())
    }

    /// [`Fs::readdir`] of the positions before `end_pos` only: one pass
    /// whose end [`Fs::readdir_pass_end`] gave.
    pub async fn readdir_until(
        &mut self,
        dir: u64,
        from_pos: u64,
        end_pos: u64,
        max: usize,
    ) -> Result<Vec<DirEntry>> {
        let end_pos = end_pos.min(DIRENT_LAST_POS);
        let d = self.read_inode(dir).await?;
        if kind_of(dir, &d)? != FileType::Directory {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        if from_pos == 0 && out.len() < max {
            out.push(DirEntry {
                pos: 0,
                ino: dir,
                kind: FileType::Directory,
                name: b".".to_vec(),
            });
        }
        if from_pos <= 1 && out.len() < max {
            // A removed directory (still open) has no parent left.
            let parent = match self.parent_of(dir).await {
                Err(FsError::NotFound) => dir,
                r => r?,
            };
            out.push(DirEntry {
                pos: 1,
                ino: parent,
                kind: FileType::Directory,
                name: b"..".to_vec(),
            });
        }
        let want = max - out.len();
        let from_pos = from_pos.max(DIRENT_FIRST_POS);
        if want == 0 || from_pos >= end_pos {
            return Ok(out);
        }
        // `range` takes an inclusive last key.
        let first = readdir_key(dir, from_pos);
        let last = readdir_key(dir, end_pos - 1);
        for item in self.store.range(&first, &last, want).await? {
            let e = Entry::decode(&item.key, &item.val)?;
            let kind = FileType::from_dirent_type(e.ty).ok_or_else(|| {
                FsError::corrupt(format!("entry {} has dirent type {}", item.key, e.ty))
            })?;
            if e.pos != item.key.second {
                return Err(FsError::corrupt(format!(
                    "readdir item {} holds position {}",
                    item.key, e.pos
                )));
            }
            out.push(DirEntry {
                pos: e.pos,
                ino: e.ino,
                kind,
                name: e.name,
            });
        }
        Ok(out)
    }
}
