//! POSIX ACLs as Linux keeps them (fs/posix_acl.c): the xattr value of
//! `system.posix_acl_access` and `system.posix_acl_default`, its
//! validation, the mode an access ACL implies, chmod of an ACL, the ACLs
//! a new inode inherits from its directory's default ACL, and the access
//! check an ACL makes.
//!
//! The value is Linux's xattr ACL format (not scoutfs's on-disk format:
//! the bytes are what setfacl hands the kernel), little-endian: a u32
//! version (2), then 8-byte entries of u16 tag, u16 perm, u32 id. Entries
//! come in tag order, named entries by id with no duplicates, exactly one
//! USER_OBJ, GROUP_OBJ and OTHER, and a MASK whenever a named entry is
//! present. Stored values are always this canonical form ([`Acl::to_xattr`]),
//! with the unnamed entries' ids `ACL_UNDEFINED_ID` as Linux reports them.
//!
//! An access ACL that says no more than the mode is not stored at all: the
//! mode bits carry it (`posix_acl_equiv_mode`). One that is stored keeps
//! the mode in step: owner bits = USER_OBJ, group bits = MASK (or
//! GROUP_OBJ), other bits = OTHER, through every set and chmod.
//!
//! The `Fs` side: reading an inode's ACL, setting and removing ACLs
//! through the xattr calls, and the permission checks that consult the
//! access ACL. An ACL item is only read when it can change an answer:
//! never for root or the owner, nor when the mode's group bits are 0
//! (Linux's `acl_permission_check` skips the ACL then too).

use crate::format::inode::Inode;

use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::perm::{self, Creds};
use super::xattr::{delete_xattr, put_xattr, Found};
use super::{Fs, ItemStore};

/// The version in every ACL xattr's header.
pub const ACL_XATTR_VERSION: u32 = 2;
/// The file's owner.
pub const ACL_USER_OBJ: u16 = 0x01;
/// A named user.
pub const ACL_USER: u16 = 0x02;
/// The file's group.
pub const ACL_GROUP_OBJ: u16 = 0x04;
/// A named group.
pub const ACL_GROUP: u16 = 0x08;
/// The most any named entry or the group may have.
pub const ACL_MASK: u16 = 0x10;
/// Everyone else.
pub const ACL_OTHER: u16 = 0x20;
/// The id of entries that name no one.
pub const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// The xattr holding an inode's access ACL.
pub const ACL_ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
/// The xattr holding a directory's default ACL.
pub const ACL_DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
const PERM_BITS: u16 = 0o7;
const S_IRWXUGO: u32 = 0o777;

/// Which of an inode's two ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclKind {
    /// Checked on access; kept in step with the mode.
    Access,
    /// A directory's: what new inodes in it inherit.
    Default,
}

impl AclKind {
    /// The kind an xattr name stores, if it names an ACL.
    pub fn from_xattr_name(name: &[u8]) -> Option<AclKind> {
        match name {
            ACL_ACCESS_XATTR => Some(AclKind::Access),
            ACL_DEFAULT_XATTR => Some(AclKind::Default),
            _ => None,
        }
    }

    pub fn xattr_name(self) -> &'static [u8] {
        match self {
            AclKind::Access => ACL_ACCESS_XATTR,
            AclKind::Default => ACL_DEFAULT_XATTR,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    /// `ACL_USER_OBJ` .. `ACL_OTHER`.
    pub tag: u16,
    /// rwx as 4, 2, 1.
    pub perm: u16,
    /// uid for `ACL_USER`, gid for `ACL_GROUP`, else `ACL_UNDEFINED_ID`.
    pub id: u32,
}

/// A POSIX ACL: entries in the canonical order once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Acl {
    /// An ACL of `entries`, checked as [`Acl::validate`] does.
    pub fn new(entries: Vec<AclEntry>) -> Result<Acl> {
        let acl = Acl { entries };
        acl.validate()?;
        Ok(acl)
    }

    /// The three-entry ACL that says what `mode` says
    /// (`posix_acl_from_mode`).
    pub fn from_mode(mode: u32) -> Acl {
        let e = |tag, shift: u32| AclEntry {
            tag,
            perm: ((mode >> shift) & 7) as u16,
            id: ACL_UNDEFINED_ID,
        };
        Acl {
            entries: vec![e(ACL_USER_OBJ, 6), e(ACL_GROUP_OBJ, 3), e(ACL_OTHER, 0)],
        }
    }

    pub fn entries(&self) -> &[AclEntry] {
        &self.entries
    }

    /// Decode an xattr value (`posix_acl_from_xattr`): `None` for an ACL
    /// of no entries (which removes the ACL). A short or ragged value, an
    /// unknown tag, or a named entry with the undefined id is EINVAL; a
    /// version other than 2 EOPNOTSUPP, as Linux. The entries' order and
    /// perms are [`Acl::validate`]'s business: an `Acl` that leaves this
    /// module has passed it (`set_acl` validates after its other checks,
    /// in Linux's order).
    fn from_xattr(value: &[u8]) -> Result<Option<Acl>> {
        if value.len() < HEADER_LEN {
            return Err(FsError::Invalid);
        }
        if le_u32(value, 0) != ACL_XATTR_VERSION {
            return Err(FsError::NotSupported);
        }
        let body = &value[HEADER_LEN..];
        if !body.len().is_multiple_of(ENTRY_LEN) {
            return Err(FsError::Invalid);
        }
        if body.is_empty() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(body.len() / ENTRY_LEN);
        for e in body.chunks_exact(ENTRY_LEN) {
            let (tag, perm, id) = (le_u16(e, 0), le_u16(e, 2), le_u32(e, 4));
            let id = match tag {
                ACL_USER_OBJ | ACL_GROUP_OBJ | ACL_MASK | ACL_OTHER => ACL_UNDEFINED_ID,
                ACL_USER | ACL_GROUP if id != ACL_UNDEFINED_ID => id,
                _ => return Err(FsError::Invalid),
            };
            entries.push(AclEntry { tag, perm, id });
        }
        Ok(Some(Acl { entries }))
    }

    /// Decode and validate an xattr value: `None` for an ACL of no
    /// entries; EINVAL for anything malformed, EOPNOTSUPP for a version
    /// other than 2.
    pub fn parse(value: &[u8]) -> Result<Option<Acl>> {
        let acl = Acl::from_xattr(value)?;
        if let Some(a) = &acl {
            a.validate()?;
        }
        Ok(acl)
    }

    /// Linux's `posix_acl_valid`, and named entries sorted by id without
    /// duplicates: EINVAL if not.
    pub fn validate(&self) -> Result<()> {
        #[derive(PartialEq)]
        enum State {
            UserObj,
            User,
            Group,
            Other,
            Done,
        }
        let mut state = State::UserObj;
        let mut needs_mask = false;
        let mut last_id: Option<u32> = None;
        for e in &self.entries {
            if e.perm & !PERM_BITS != 0 || state == State::Done {
                return Err(FsError::Invalid);
            }
            match e.tag {
                ACL_USER_OBJ if state == State::UserObj => {
                    state = State::User;
                    last_id = None;
                }
                ACL_USER | ACL_GROUP => {
                    let want = if e.tag == ACL_USER {
                        State::User
                    } else {
                        State::Group
                    };
                    if state != want || last_id.is_some_and(|l| l >= e.id) {
                        return Err(FsError::Invalid);
                    }
                    last_id = Some(e.id);
                    needs_mask = true;
                }
                ACL_GROUP_OBJ if state == State::User => {
                    state = State::Group;
                    last_id = None;
                }
                ACL_MASK if state == State::Group => state = State::Other,
                ACL_OTHER if state == State::Other || (state == State::Group && !needs_mask) => {
                    state = State::Done
                }
                _ => return Err(FsError::Invalid),
            }
        }
        if state == State::Done {
            Ok(())
        } else {
            Err(FsError::Invalid)
        }
    }

    /// The xattr value (`posix_acl_to_xattr`).
    pub fn to_xattr(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        v.extend_from_slice(&ACL_XATTR_VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// `mode` with its rwx bits replaced by the ones this ACL implies, and
    /// whether the ACL says nothing more than those bits
    /// (`posix_acl_equiv_mode`; a MASK always says more).
    pub fn equiv_mode(&self, mode: u32) -> (u32, bool) {
        let mut bits = 0;
        let mut equiv = true;
        for e in &self.entries {
            let p = u32::from(e.perm & PERM_BITS);
            match e.tag {
                ACL_USER_OBJ => bits |= p << 6,
                ACL_GROUP_OBJ => bits |= p << 3,
                ACL_OTHER => bits |= p,
                ACL_MASK => {
                    bits = (bits & !0o070) | (p << 3);
                    equiv = false;
                }
                _ => equiv = false,
            }
        }
        ((mode & !S_IRWXUGO) | bits, equiv)
    }

    /// chmod of an inode with this access ACL (`__posix_acl_chmod`):
    /// USER_OBJ, MASK (GROUP_OBJ without one) and OTHER take the new
    /// mode's bits; named entries stay.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.entries.iter().any(|e| e.tag == ACL_MASK);
        for e in &mut self.entries {
            let shift = match e.tag {
                ACL_USER_OBJ => 6,
                ACL_MASK => 3,
                ACL_GROUP_OBJ if !has_mask => 3,
                ACL_OTHER => 0,
                _ => continue,
            };
            e.perm = ((mode >> shift) & 7) as u16;
        }
        debug_assert_eq!(self.equiv_mode(mode).0 & S_IRWXUGO, mode & S_IRWXUGO);
    }

    /// A new inode's access ACL from its directory's default ACL (this
    /// one) and the mode it was created with (`posix_acl_create_masq`):
    /// each class keeps what both allow. Returns the ACL, or `None` when
    /// the mode says it all, and the new mode.
    pub fn create_masq(&self, mode: u32) -> (Option<Acl>, u32) {
        let mut acl = self.clone();
        let mut m = mode;
        let mut not_equiv = false;
        let mut group_class = None;
        for (i, e) in acl.entries.iter_mut().enumerate() {
            match e.tag {
                ACL_USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= (u32::from(e.perm) << 6) | !0o700;
                }
                ACL_OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= u32::from(e.perm) | !0o007;
                }
                ACL_MASK => {
                    group_class = Some(i);
                    not_equiv = true;
                }
                ACL_GROUP_OBJ if group_class.is_none() => group_class = Some(i),
                ACL_USER | ACL_GROUP => not_equiv = true,
                _ => {}
            }
        }
        // A validated ACL has a GROUP_OBJ, and its MASK comes after it.
        let g = &mut acl.entries[group_class.expect("a valid ACL has a GROUP_OBJ")];
        g.perm &= ((m >> 3) & 7) as u16;
        m &= (u32::from(g.perm) << 3) | !0o070;
        (not_equiv.then_some(acl), m)
    }

    /// Linux's `posix_acl_permission` for someone other than the owner
    /// (whose mode bits decide before an ACL is looked at): a named user
    /// entry, else the owning group and named groups (any one that grants
    /// every bit wanted), masked by MASK; else OTHER, unless some group
    /// matched. EACCES if not.
    pub fn permission(&self, creds: &Creds, inode: &Inode, want: u32) -> Result<()> {
        let mask = self
            .entries
            .iter()
            .find(|e| e.tag == ACL_MASK)
            .map_or(PERM_BITS, |e| e.perm);
        let granted = |perm: u16, masked: bool| {
            let p = u32::from(if masked { perm & mask } else { perm });
            if p & want == want {
                Ok(())
            } else {
                Err(FsError::Access)
            }
        };
        let mut group_matched = false;
        for e in &self.entries {
            match e.tag {
                ACL_USER_OBJ if creds.uid == inode.uid.get() => return granted(e.perm, false),
                ACL_USER if creds.uid == e.id => return granted(e.perm, true),
                ACL_GROUP_OBJ | ACL_GROUP => {
                    let gid = if e.tag == ACL_GROUP {
                        e.id
                    } else {
                        inode.gid.get()
                    };
                    if creds.in_group(gid) {
                        group_matched = true;
                        if u32::from(e.perm) & want == want {
                            return granted(e.perm, true);
                        }
                    }
                }
                ACL_OTHER if group_matched => return Err(FsError::Access),
                ACL_OTHER => return granted(e.perm, false),
                _ => {}
            }
        }
        Err(FsError::corrupt("an ACL without an OTHER entry"))
    }
}

impl<S: ItemStore> Fs<S> {
    /// The stored ACL of `kind` on `ino`, and where it is.
    async fn find_acl(&mut self, ino: u64, kind: AclKind) -> Result<Option<(Acl, Found)>> {
        let Some(found) = self.find_xattr(ino, kind.xattr_name()).await? else {
            return Ok(None);
        };
        match Acl::parse(&found.value) {
            Ok(Some(acl)) => Ok(Some((acl, found))),
            Ok(None) => Ok(None),
            Err(e) => Err(FsError::corrupt(format!(
                "inode {ino} {kind:?} ACL does not parse: {e}"
            ))),
        }
    }

    /// The ACL of `kind` on `ino`, if it has one (always `None` with
    /// `noacl`).
    pub(super) async fn get_acl(&mut self, ino: u64, kind: AclKind) -> Result<Option<Acl>> {
        if !self.opts.acl {
            return Ok(None);
        }
        Ok(self.find_acl(ino, kind).await?.map(|(acl, _)| acl))
    }

    /// Linux's `generic_permission` with ACLs: may `creds` access `ino`
    /// for every bit in `mask`? Reads the access ACL only when it matters.
    pub(super) async fn check_access(
        &mut self,
        creds: &Creds,
        ino: u64,
        inode: &Inode,
        mask: u32,
    ) -> Result<()> {
        let acl = if perm::acl_may_matter(creds, inode) {
            self.get_acl(ino, AclKind::Access).await?
        } else {
            None
        };
        perm::check_access(creds, inode, acl.as_ref(), mask)
    }

    /// Linux's `may_delete` once the victim is found, with the
    /// directory's ACL.
    pub(super) async fn check_may_delete(
        &mut self,
        creds: &Creds,
        dir: u64,
        d: &Inode,
        victim: &Inode,
    ) -> Result<()> {
        let acl = if perm::acl_may_matter(creds, d) {
            self.get_acl(dir, AclKind::Access).await?
        } else {
            None
        };
        perm::check_may_delete(creds, d, acl.as_ref(), victim)
    }

    /// setxattr / removexattr of an ACL name (`value` `None` or empty
    /// removes), as Linux's `do_set_acl` and `set_posix_acl` with a
    /// filesystem's `set_acl`: the value decodes (EINVAL, EOPNOTSUPP);
    /// ACLs are on (EOPNOTSUPP) and the inode not a symlink (EOPNOTSUPP);
    /// a default ACL only on a directory (EACCES, but removing one from
    /// anything else succeeds); only the owner or root (EPERM); the ACL
    /// is valid (EINVAL). The xattr flags are ignored, as Linux does for
    /// ACLs. An access ACL sets the mode's rwx bits, drops setgid unless
    /// the caller is in the group or root, and is not stored when the
    /// mode says it all. Removing an ACL that isn't there succeeds.
    pub(super) async fn set_acl(
        &mut self,
        creds: &Creds,
        ino: u64,
        kind: AclKind,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let now = self.now();
        let inode = self.read_inode(ino).await?;
        let mut acl = match value {
            Some(v) if !v.is_empty() => Acl::from_xattr(v)?,
            _ => None,
        };
        let file_kind = Attr::from_inode(ino, &inode)?.kind;
        if !self.opts.acl || file_kind == FileType::Symlink {
            return Err(FsError::NotSupported);
        }
        if kind == AclKind::Default && file_kind != FileType::Directory {
            return match acl {
                Some(_) => Err(FsError::Access),
                None => Ok(()),
            };
        }
        if !creds.owns_or_root(&inode) {
            return Err(FsError::Perm);
        }
        if let Some(a) = &acl {
            a.validate()?;
        }
        let mut mode = inode.mode.get();
        if let (AclKind::Access, Some(a)) = (kind, &acl) {
            let (m, equiv) = a.equiv_mode(mode);
            mode = m;
            if equiv {
                acl = None;
            }
            if !creds.in_group_or_root(inode.gid.get()) {
                mode &= !libc::S_ISGID;
            }
        }
        let name = kind.xattr_name();
        let found = self.find_xattr(ino, name).await?;
        if acl.is_none() && found.is_none() && mode == inode.mode.get() {
            return Ok(());
        }

        let hash = self.hash(name);
        let mut b = self.batch();
        b.track(ino, inode);
        let i = b.inode_mut(ino);
        i.mode.set(mode);
        i.ctime = now;
        match (acl, found) {
            (Some(a), f) => put_xattr(&mut b, ino, hash, name, &a.to_xattr(), f.as_ref()),
            (None, Some(f)) => delete_xattr(&mut b, ino, &f),
            (None, None) => {}
        }
        self.apply(b).await
    }

    /// chmod's part (`posix_acl_chmod`): the access ACL of `ino`, if any,
    /// changed for `mode`, ready to store with the new mode.
    pub(super) async fn acl_after_chmod(
        &mut self,
        ino: u64,
        inode: &Inode,
        mode: u32,
    ) -> Result<Option<(Vec<u8>, Found)>> {
        if !self.opts.acl || inode.mode.get() & libc::S_IFMT == libc::S_IFLNK {
            return Ok(None);
        }
        Ok(self
            .find_acl(ino, AclKind::Access)
            .await?
            .map(|(mut acl, found)| {
                acl.chmod(mode);
                (acl.to_xattr(), found)
            }))
    }

    /// What a new inode of `mode` (type included, owner and setgid rules
    /// applied) in `dir` inherits when ACLs are on (`posix_acl_create`):
    /// with a default ACL on `dir`, the mode it leaves, the access ACL
    /// (unless the mode says it all) and, for a directory, the default
    /// ACL itself; the umask is not applied then. Without one the umask
    /// is. Symlinks take neither.
    pub(super) async fn inherit_acls(
        &mut self,
        creds: &Creds,
        dir: u64,
        mode: u32,
    ) -> Result<(u32, Vec<(AclKind, Vec<u8>)>)> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFLNK {
            return Ok((mode, Vec::new()));
        }
        debug_assert!(self.opts.acl);
        let Some((default, _)) = self.find_acl(dir, AclKind::Default).await? else {
            return Ok((mode & !(creds.umask & S_IRWXUGO), Vec::new()));
        };
        let (access, mode) = default.create_masq(mode);
        let mut acls = Vec::new();
        if let Some(a) = access {
            acls.push((AclKind::Access, a.to_xattr()));
        }
        if kind == libc::S_IFDIR {
            acls.push((AclKind::Default, default.to_xattr()));
        }
        Ok((mode, acls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    const U: u32 = ACL_UNDEFINED_ID;

    fn bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(t, p, i) in entries {
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&p.to_le_bytes());
            v.extend_from_slice(&i.to_le_bytes());
        }
        v
    }

    fn inode(mode: u32, uid: u32, gid: u32) -> Inode {
        Inode {
            mode: mode.into(),
            uid: uid.into(),
            gid: gid.into(),
            ..Inode::default()
        }
    }

    /// user::rw- user:1001:rwx group::r-- group:50:rw- mask::r-x other::---
    fn named() -> Acl {
        Acl::new(vec![
            e(ACL_USER_OBJ, 6, U),
            e(ACL_USER, 7, 1001),
            e(ACL_GROUP_OBJ, 4, U),
            e(ACL_GROUP, 6, 50),
            e(ACL_MASK, 5, U),
            e(ACL_OTHER, 0, U),
        ])
        .unwrap()
    }

    #[test]
    fn xattr_round_trip_is_canonical() {
        let acl = named();
        let v = acl.to_xattr();
        assert_eq!(v.len(), 4 + 6 * 8);
        assert_eq!(Acl::parse(&v).unwrap(), Some(acl));
        // The ids of unnamed entries are ignored on the way in.
        let loose = bytes(&[(1, 7, 0), (4, 5, 9), (0x20, 4, 3)]);
        let acl = Acl::parse(&loose).unwrap().unwrap();
        assert_eq!(acl, Acl::from_mode(0o754));
        assert_eq!(acl.to_xattr(), bytes(&[(1, 7, U), (4, 5, U), (0x20, 4, U)]));
        assert_eq!(Acl::parse(&bytes(&[])).unwrap(), None);
    }

    #[test]
    fn malformed_values_are_refused() {
        let ok = [(1, 7, U), (4, 5, U), (0x20, 4, U)];
        assert_eq!(Acl::parse(&[2, 0, 0]), Err(FsError::Invalid));
        let mut v = bytes(&ok);
        v[0] = 1;
        assert_eq!(Acl::parse(&v), Err(FsError::NotSupported));
        let mut v = bytes(&ok);
        v.push(0);
        assert_eq!(Acl::parse(&v), Err(FsError::Invalid));
        let bad: &[&[(u16, u16, u32)]] = &[
            // Unknown tag, perm beyond rwx.
            &[(1, 7, U), (4, 5, U), (0x40, 4, U)],
            &[(1, 0o17, U), (4, 5, U), (0x20, 4, U)],
            // Missing or repeated USER_OBJ / GROUP_OBJ / OTHER.
            &[(4, 5, U), (0x20, 4, U)],
            &[(1, 7, U), (0x20, 4, U)],
            &[(1, 7, U), (4, 5, U)],
            &[(1, 7, U), (1, 7, U), (4, 5, U), (0x20, 4, U)],
            &[(1, 7, U), (4, 5, U), (0x20, 4, U), (0x20, 4, U)],
            // Out of order.
            &[(4, 5, U), (1, 7, U), (0x20, 4, U)],
            &[(1, 7, U), (4, 5, U), (0x20, 4, U), (0x10, 4, U)],
            // Named entries need a mask, sorted ids, no duplicates, a real id.
            &[(1, 7, U), (2, 7, 5), (4, 5, U), (0x20, 4, U)],
            &[
                (1, 7, U),
                (2, 7, 6),
                (2, 7, 5),
                (4, 5, U),
                (0x10, 7, U),
                (0x20, 4, U),
            ],
            &[
                (1, 7, U),
                (4, 5, U),
                (8, 7, 5),
                (8, 1, 5),
                (0x10, 7, U),
                (0x20, 4, U),
            ],
            &[(1, 7, U), (2, 7, U), (4, 5, U), (0x10, 7, U), (0x20, 4, U)],
            &[
                (1, 7, U),
                (4, 5, U),
                (0x10, 7, U),
                (0x10, 7, U),
                (0x20, 4, U),
            ],
        ];
        for b in bad {
            assert_eq!(Acl::parse(&bytes(b)), Err(FsError::Invalid), "{b:?}");
        }
        // A mask without named entries is valid (and not equivalent).
        let m = Acl::parse(&bytes(&[(1, 7, U), (4, 5, U), (0x10, 1, U), (0x20, 4, U)]))
            .unwrap()
            .unwrap();
        assert_eq!(m.equiv_mode(libc::S_IFREG), (libc::S_IFREG | 0o714, false));
    }

    #[test]
    fn equivalent_mode_takes_the_group_bits_from_the_mask() {
        let (mode, equiv) = named().equiv_mode(libc::S_IFREG | 0o4777);
        assert_eq!((mode, equiv), (libc::S_IFREG | 0o4650, false));
        let (mode, equiv) = Acl::from_mode(0o640).equiv_mode(libc::S_IFDIR | 0o777);
        assert_eq!((mode, equiv), (libc::S_IFDIR | 0o640, true));
    }

    #[test]
    fn chmod_sets_owner_mask_and_other() {
        let mut acl = named();
        acl.chmod(0o731);
        let perms: Vec<u16> = acl.entries().iter().map(|e| e.perm).collect();
        assert_eq!(perms, [7, 7, 4, 6, 3, 1]);
        let mut plain = Acl::from_mode(0o644);
        plain.chmod(0o751);
        assert_eq!(plain, Acl::from_mode(0o751));
    }

    #[test]
    fn inheritance_masks_by_the_requested_mode() {
        let (access, mode) = named().create_masq(libc::S_IFREG | 0o640);
        let access = access.unwrap();
        let perms: Vec<u16> = access.entries().iter().map(|e| e.perm).collect();
        // USER_OBJ 6&6, named kept, GROUP_OBJ kept, MASK 5&4, OTHER 0.
        assert_eq!(perms, [6, 7, 4, 6, 4, 0]);
        assert_eq!(mode, libc::S_IFREG | 0o640);
        let (access, mode) = Acl::from_mode(0o755).create_masq(libc::S_IFDIR | 0o2777);
        assert_eq!((access, mode), (None, libc::S_IFDIR | 0o2755));
    }

    #[test]
    fn permission_by_named_entries_groups_and_mask() {
        let acl = named();
        let f = inode(libc::S_IFREG | 0o650, 1000, 100);
        let c = |uid, gid, groups: Vec<u32>| Creds {
            uid,
            gid,
            groups,
            umask: 0,
        };
        // Named user 1001: rwx masked by r-x.
        assert_eq!(acl.permission(&c(1001, 1, vec![]), &f, 5), Ok(()));
        assert_eq!(
            acl.permission(&c(1001, 1, vec![]), &f, 2),
            Err(FsError::Access)
        );
        // Owning group r--; group 50 rw- masked to r--.
        assert_eq!(acl.permission(&c(2, 100, vec![]), &f, 4), Ok(()));
        assert_eq!(
            acl.permission(&c(2, 100, vec![50]), &f, 2),
            Err(FsError::Access)
        );
        // A matching group that doesn't grant shuts OTHER out.
        assert_eq!(
            acl.permission(&c(2, 100, vec![]), &f, 1),
            Err(FsError::Access)
        );
        // Nobody in particular: OTHER.
        assert_eq!(
            acl.permission(&c(3, 3, vec![]), &f, 4),
            Err(FsError::Access)
        );
    }
}
