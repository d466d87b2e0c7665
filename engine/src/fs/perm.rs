//! Permission checks as Linux makes them: mode bits by owner, group or
//! other (only the first class that matches counts), root's overrides, the
//! sticky bit, and who may change modes, owners and times.
//!
//! EACCES is "the mode bits say no"; EPERM is "only the owner (or root)
//! may do that". An inode's access ACL, when it has one, decides for
//! callers other than root and the owner ([`check_access`] takes it; the
//! `Fs` side in acl.rs reads it only when [`acl_may_matter`]).

use crate::format::inode::Inode;

use super::acl::Acl;
use super::error::{FsError, Result};

/// Read permission (the `r` bit).
pub const MAY_READ: u32 = 4;
/// Write permission (the `w` bit).
pub const MAY_WRITE: u32 = 2;
/// Execute, or search for a directory (the `x` bit).
pub const MAY_EXEC: u32 = 1;

const S_IXUGO: u32 = 0o111;

/// Who asks: the caller's fs uid, fs gid, supplementary groups and
/// umask. uid 0 is root with every capability (CAP_DAC_OVERRIDE,
/// CAP_FOWNER, CAP_CHOWN, CAP_FSETID, CAP_MKNOD, CAP_SYS_ADMIN).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The process's umask (its rwx bits count), applied to new inodes
    /// unless the directory has a default ACL. The frontend passes the
    /// request's and keeps the kernel from applying it too.
    pub umask: u32,
}

impl Creds {
    pub fn root() -> Creds {
        Creds::default()
    }

    pub fn user(uid: u32, gid: u32) -> Creds {
        Creds {
            uid,
            gid,
            groups: Vec::new(),
            umask: 0,
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The gid is the caller's fs gid or one of its groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Linux's `in_group_or_capable`.
    pub fn in_group_or_root(&self, gid: u32) -> bool {
        self.is_root() || self.in_group(gid)
    }

    /// Linux's `inode_owner_or_capable`.
    pub fn owns_or_root(&self, inode: &Inode) -> bool {
        self.is_root() || self.uid == inode.uid.get()
    }
}

fn is_dir(inode: &Inode) -> bool {
    inode.mode.get() & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `inode`'s access ACL, if it has one, could decide a check by
/// `creds`: not for root (whose overrides give the mode's answer), the
/// owner (the mode's owner bits are USER_OBJ), a symlink (never has one),
/// nor when the mode's group bits (the MASK) are 0, where Linux's
/// `acl_permission_check` doesn't look either.
pub fn acl_may_matter(creds: &Creds, inode: &Inode) -> bool {
    let mode = inode.mode.get();
    !creds.is_root()
        && creds.uid != inode.uid.get()
        && mode & 0o070 != 0
        && mode & libc::S_IFMT != libc::S_IFLNK
}

/// Linux's `generic_permission`: may `creds` access `inode` for every bit
/// in `mask` (`MAY_*`)? EACCES if not. `acl` is the inode's access ACL,
/// when it has one and [`acl_may_matter`].
pub fn check_access(creds: &Creds, inode: &Inode, acl: Option<&Acl>, mask: u32) -> Result<()> {
    debug_assert!(mask & !(MAY_READ | MAY_WRITE | MAY_EXEC) == 0);
    let mode = inode.mode.get();
    if creds.is_root() {
        // Read and write are always overridden; search of a directory too;
        // execution only when some x bit is set.
        if is_dir(inode) || mask & MAY_EXEC == 0 || mode & S_IXUGO != 0 {
            return Ok(());
        }
        return Err(FsError::Access);
    }
    let bits = if creds.uid == inode.uid.get() {
        mode >> 6
    } else if let (Some(acl), true) = (acl, acl_may_matter(creds, inode)) {
        return acl.permission(creds, inode, mask);
    } else if creds.in_group(inode.gid.get()) {
        mode >> 3
    } else {
        mode
    } & 7;
    if bits & mask == mask {
        Ok(())
    } else {
        Err(FsError::Access)
    }
}

/// Linux's `check_sticky`: in a sticky directory only the owner of the
/// entry, the owner of the directory, or root may remove or rename it.
pub fn check_sticky(creds: &Creds, dir: &Inode, victim: &Inode) -> Result<()> {
    if dir.mode.get() & libc::S_ISVTX == 0
        || creds.is_root()
        || creds.uid == victim.uid.get()
        || creds.uid == dir.uid.get()
    {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// Linux's `may_delete` once the victim is found: write and search on the
/// directory (EACCES; `dir_acl` is its access ACL), then the sticky bit
/// (EPERM).
pub fn check_may_delete(
    creds: &Creds,
    dir: &Inode,
    dir_acl: Option<&Acl>,
    victim: &Inode,
) -> Result<()> {
    check_access(creds, dir, dir_acl, MAY_WRITE | MAY_EXEC)?;
    check_sticky(creds, dir, victim)
}

/// Linux's `chown_ok`: only root changes an owner; the owner may "change"
/// it to itself.
pub fn check_chown(creds: &Creds, inode: &Inode, uid: u32) -> Result<()> {
    if creds.is_root() || (creds.uid == inode.uid.get() && uid == inode.uid.get()) {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// Linux's `chgrp_ok`: the owner may give the file to one of its own
/// groups; root to any.
pub fn check_chgrp(creds: &Creds, inode: &Inode, gid: u32) -> Result<()> {
    if creds.is_root()
        || (creds.uid == inode.uid.get() && (gid == inode.gid.get() || creds.in_group(gid)))
    {
        Ok(())
    } else {
        Err(FsError::Perm)
    }
}

/// The mode a chmod stores: the setgid bit is dropped when the caller is
/// neither root nor in the file's group (Linux's `setattr_copy`).
pub fn chmod_mode(creds: &Creds, inode: &Inode, mode: u32) -> u32 {
    let mut perm = mode & 0o7777;
    if !creds.in_group_or_root(inode.gid.get()) {
        perm &= !libc::S_ISGID;
    }
    (inode.mode.get() & libc::S_IFMT) | perm
}

/// The mode after a chown of a non-directory: setuid always goes, setgid
/// when it means "setgid execution" (group x set) or the caller may not
/// keep it (Linux's chown_common with `setattr_should_drop_sgid`).
pub fn mode_after_chown(creds: &Creds, inode: &Inode) -> u32 {
    let mode = inode.mode.get();
    if is_dir(inode) {
        return mode;
    }
    let mut m = mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0
        && (mode & libc::S_IXGRP != 0 || !creds.in_group_or_root(inode.gid.get()))
    {
        m &= !libc::S_ISGID;
    }
    m
}

/// The mode after a write, truncate or fallocate by `creds` (Linux's
/// `setattr_should_drop_suidgid`): a regular file loses setuid, and
/// setgid when it means setgid execution (group x set) or the writer is
/// outside the file's group (`setattr_should_drop_sgid`); root
/// (CAP_FSETID) keeps both.
pub fn mode_after_write(creds: &Creds, inode: &Inode) -> u32 {
    let mode = inode.mode.get();
    if creds.is_root() || mode & libc::S_IFMT != libc::S_IFREG {
        return mode;
    }
    let mut m = mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !creds.in_group(inode.gid.get()))
    {
        m &= !libc::S_ISGID;
    }
    m
}

/// The owner and mode of a new inode made by `creds` in `dir` with the
/// requested `mode` (type bits included): Linux's `inode_init_owner`.
/// In a setgid directory the new inode takes the directory's group, and a
/// new subdirectory stays setgid; a new file asking for setgid execution
/// keeps it only if its creator may (`mode_strip_sgid`).
pub fn new_inode_owner(creds: &Creds, dir: &Inode, mode: u32) -> (u32, u32, u32) {
    let dir_setgid = dir.mode.get() & libc::S_ISGID != 0;
    let new_is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    let mut mode = mode;
    let gid = if dir_setgid {
        if new_is_dir {
            mode |= libc::S_ISGID;
        } else if mode & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP)
            && !creds.in_group_or_root(dir.gid.get())
        {
            mode &= !libc::S_ISGID;
        }
        dir.gid.get()
    } else {
        creds.gid
    };
    (creds.uid, gid, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(mode: u32, uid: u32, gid: u32) -> Inode {
        Inode {
            mode: mode.into(),
            uid: uid.into(),
            gid: gid.into(),
            ..Inode::default()
        }
    }

    #[test]
    fn only_the_first_matching_class_counts() {
        // Owner with no bits is refused even though others may read.
        let f = inode(libc::S_IFREG | 0o044, 10, 20);
        assert_eq!(
            check_access(&Creds::user(10, 20), &f, None, MAY_READ),
            Err(FsError::Access)
        );
        assert_eq!(
            check_access(&Creds::user(11, 20), &f, None, MAY_READ),
            Ok(())
        );
        assert_eq!(
            check_access(&Creds::user(11, 21), &f, None, MAY_READ),
            Ok(())
        );
        let g = Creds {
            uid: 11,
            gid: 5,
            groups: vec![20],
            umask: 0,
        };
        assert_eq!(
            check_access(&g, &f, None, MAY_READ | MAY_WRITE),
            Err(FsError::Access)
        );
    }

    #[test]
    fn root_needs_an_x_bit_to_execute_a_file_but_not_to_search() {
        let f = inode(libc::S_IFREG, 10, 20);
        let root = Creds::root();
        assert_eq!(check_access(&root, &f, None, MAY_READ | MAY_WRITE), Ok(()));
        assert_eq!(
            check_access(&root, &f, None, MAY_EXEC),
            Err(FsError::Access)
        );
        let fx = inode(libc::S_IFREG | 0o001, 10, 20);
        assert_eq!(check_access(&root, &fx, None, MAY_EXEC), Ok(()));
        let d = inode(libc::S_IFDIR, 10, 20);
        assert_eq!(check_access(&root, &d, None, MAY_EXEC | MAY_WRITE), Ok(()));
    }

    #[test]
    fn sticky_directories_protect_other_peoples_entries() {
        let d = inode(libc::S_IFDIR | 0o1777, 1, 1);
        let f = inode(libc::S_IFREG | 0o666, 2, 2);
        assert_eq!(
            check_may_delete(&Creds::user(3, 3), &d, None, &f),
            Err(FsError::Perm)
        );
        assert_eq!(check_may_delete(&Creds::user(2, 3), &d, None, &f), Ok(()));
        assert_eq!(check_may_delete(&Creds::user(1, 3), &d, None, &f), Ok(()));
        assert_eq!(check_may_delete(&Creds::root(), &d, None, &f), Ok(()));
        // Without write permission it is EACCES before the sticky check.
        let d = inode(libc::S_IFDIR | 0o1755, 1, 1);
        assert_eq!(
            check_may_delete(&Creds::user(3, 3), &d, None, &f),
            Err(FsError::Access)
        );
    }

    #[test]
    fn chown_and_chgrp_rules() {
        let f = inode(libc::S_IFREG | 0o6755, 10, 20);
        let owner = Creds {
            uid: 10,
            gid: 20,
            groups: vec![30],
            umask: 0,
        };
        assert_eq!(check_chown(&owner, &f, 11), Err(FsError::Perm));
        assert_eq!(check_chown(&owner, &f, 10), Ok(()));
        assert_eq!(check_chown(&Creds::root(), &f, 11), Ok(()));
        assert_eq!(check_chgrp(&owner, &f, 30), Ok(()));
        assert_eq!(check_chgrp(&owner, &f, 31), Err(FsError::Perm));
        assert_eq!(
            check_chgrp(&Creds::user(11, 30), &f, 30),
            Err(FsError::Perm)
        );
        // chown drops setuid, and setgid with group x, even for root.
        assert_eq!(mode_after_chown(&Creds::root(), &f), libc::S_IFREG | 0o0755);
        let g = inode(libc::S_IFREG | 0o2745, 10, 20);
        assert_eq!(mode_after_chown(&Creds::root(), &g), libc::S_IFREG | 0o2745);
        let d = inode(libc::S_IFDIR | 0o6755, 10, 20);
        assert_eq!(mode_after_chown(&Creds::root(), &d), libc::S_IFDIR | 0o6755);
    }

    #[test]
    fn writes_by_others_than_root_drop_setuid() {
        let f = inode(libc::S_IFREG | 0o6775, 10, 20);
        assert_eq!(
            mode_after_write(&Creds::user(10, 20), &f),
            libc::S_IFREG | 0o0775
        );
        assert_eq!(mode_after_write(&Creds::root(), &f), libc::S_IFREG | 0o6775);
        // Setgid without group x (mandatory locking, once) stays for a
        // writer in the file's group, by gid or supplementary group ...
        let g = inode(libc::S_IFREG | 0o2765, 10, 20);
        assert_eq!(
            mode_after_write(&Creds::user(10, 20), &g),
            libc::S_IFREG | 0o2765
        );
        let member = Creds {
            uid: 11,
            gid: 5,
            groups: vec![20],
            umask: 0,
        };
        assert_eq!(mode_after_write(&member, &g), libc::S_IFREG | 0o2765);
        // ... and goes for one outside it, owner or not.
        assert_eq!(
            mode_after_write(&Creds::user(11, 21), &g),
            libc::S_IFREG | 0o0765
        );
        assert_eq!(
            mode_after_write(&Creds::user(10, 21), &g),
            libc::S_IFREG | 0o0765
        );
        assert_eq!(mode_after_write(&Creds::root(), &g), libc::S_IFREG | 0o2765);
        // Only regular files lose anything.
        let d = inode(libc::S_IFDIR | 0o6777, 10, 20);
        assert_eq!(
            mode_after_write(&Creds::user(11, 21), &d),
            libc::S_IFDIR | 0o6777
        );
    }

    #[test]
    fn chmod_drops_setgid_outside_the_group() {
        let f = inode(libc::S_IFREG | 0o644, 10, 20);
        assert_eq!(
            chmod_mode(&Creds::user(10, 21), &f, 0o2755),
            libc::S_IFREG | 0o755
        );
        assert_eq!(
            chmod_mode(&Creds::user(10, 20), &f, 0o2755),
            libc::S_IFREG | 0o2755
        );
    }

    #[test]
    fn setgid_directories_pass_their_group_on() {
        let d = inode(libc::S_IFDIR | 0o2775, 1, 50);
        let c = Creds::user(7, 8);
        assert_eq!(
            new_inode_owner(&c, &d, libc::S_IFDIR | 0o755),
            (7, 50, libc::S_IFDIR | 0o2755)
        );
        assert_eq!(
            new_inode_owner(&c, &d, libc::S_IFREG | 0o644),
            (7, 50, libc::S_IFREG | 0o644)
        );
        // Not in the group: no setgid execution for the new file.
        assert_eq!(
            new_inode_owner(&c, &d, libc::S_IFREG | 0o2755),
            (7, 50, libc::S_IFREG | 0o755)
        );
        let plain = inode(libc::S_IFDIR | 0o775, 1, 50);
        assert_eq!(
            new_inode_owner(&c, &plain, libc::S_IFDIR | 0o755),
            (7, 8, libc::S_IFDIR | 0o755)
        );
    }
}
