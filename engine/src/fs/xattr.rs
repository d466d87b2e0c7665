//! Extended attributes: `(ino, XATTR, name hash, xattr id, part nr)`. The
//! `Xattr` header, the name and the value run over parts of up to 896
//! bytes (part 0 always holds the whole name). Names that share a hash
//! differ by id; each new xattr takes the inode's `next_xattr_id`.
//!
//! Namespaces and who may use them, as Linux without an LSM: `user.` by
//! the mode bits (regular files and directories only), `trusted.` by root
//! only (invisible to others), `security.` read by all and written by
//! root, `system.` read by all and written by the owner. The two POSIX
//! ACL names (`system.posix_acl_access`, `system.posix_acl_default`) go
//! to acl.rs when set or removed: their values are checked, the mode kept
//! in step, and with `noacl` they are EOPNOTSUPP (and not listed). Errors
//! come in the syscall's order: the name's length (ERANGE), the value's
//! (E2BIG), access, then the namespace (EOPNOTSUPP), then presence
//! (EEXIST / ENODATA).

use crate::format::btree::MAX_VAL_SIZE;
use crate::format::inode::{Inode, Xattr, XATTR_MAX_NAME_LEN, XATTR_MAX_VAL_LEN};
use crate::format::key::{item_type, zone};
use crate::format::Key;

use super::acl::AclKind;
use super::batch::Batch;
use super::error::{FsError, Result};
use super::inode::{Attr, FileType};
use super::perm::{Creds, MAY_READ, MAY_WRITE};
use super::{Fs, ItemStore};

/// setxattr flag: fail with EEXIST if the xattr exists.
pub const XATTR_CREATE: u32 = 1;
/// setxattr flag: fail with ENODATA unless the xattr exists.
pub const XATTR_REPLACE: u32 = 2;

const HDR_LEN: usize = std::mem::size_of::<Xattr>();
/// Most parts one xattr takes (74).
const MAX_PARTS: usize = (HDR_LEN + XATTR_MAX_NAME_LEN + XATTR_MAX_VAL_LEN).div_ceil(MAX_VAL_SIZE);
const _: () = assert!(HDR_LEN + XATTR_MAX_NAME_LEN <= MAX_VAL_SIZE);

pub fn xattr_key(ino: u64, hash: u64, id: u64, part: u8) -> Key {
    Key::new(zone::FS, ino, item_type::XATTR, hash, id, part)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Namespace {
    User,
    Trusted,
    Security,
    System,
    /// No namespace we know: EOPNOTSUPP once the mode bits allow access.
    Unknown,
    /// A namespace prefix alone: EINVAL once the mode bits allow access.
    Bare,
}

/// ERANGE for an empty or over-long name (checked before anything else,
/// as the syscall copies it in); otherwise its namespace.
fn check_xattr_name(name: &[u8]) -> Result<Namespace> {
    if name.is_empty() || name.len() > XATTR_MAX_NAME_LEN {
        return Err(FsError::Range);
    }
    let spaces: [(&[u8], Namespace); 4] = [
        (b"user.", Namespace::User),
        (b"trusted.", Namespace::Trusted),
        (b"security.", Namespace::Security),
        (b"system.", Namespace::System),
    ];
    for (prefix, ns) in spaces {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Ok(if rest.is_empty() { Namespace::Bare } else { ns });
        }
    }
    Ok(Namespace::Unknown)
}

/// The item values of an xattr: header, name and value cut into parts.
fn encode_parts(name: &[u8], value: &[u8]) -> Vec<Vec<u8>> {
    let hdr = Xattr {
        val_len: (value.len() as u16).into(),
        name_len: name.len() as u8,
        _pad: [0; 5],
    };
    let mut bytes = Vec::with_capacity(HDR_LEN + name.len() + value.len());
    bytes.extend_from_slice(bytemuck::bytes_of(&hdr));
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(value);
    bytes.chunks(MAX_VAL_SIZE).map(<[u8]>::to_vec).collect()
}

/// The header and name in an xattr's part 0.
fn decode_first_part(key: &Key, val: &[u8]) -> Result<(Xattr, Vec<u8>)> {
    if key.fourth != 0 || val.len() < HDR_LEN {
        return Err(FsError::corrupt(format!(
            "xattr item {key} is not a first part"
        )));
    }
    let hdr: Xattr = bytemuck::pod_read_unaligned(&val[..HDR_LEN]);
    let name_len = usize::from(hdr.name_len);
    if name_len == 0 || val.len() < HDR_LEN + name_len {
        return Err(FsError::corrupt(format!(
            "xattr item {key} holds a {name_len} byte name in {} bytes",
            val.len()
        )));
    }
    Ok((hdr, val[HDR_LEN..HDR_LEN + name_len].to_vec()))
}

/// A stored xattr.
pub(super) struct Found {
    pub hash: u64,
    pub id: u64,
    pub nr_parts: usize,
    pub value: Vec<u8>,
}

/// Store xattr `name` (whose hash is `hash`) = `value` on `ino`, tracked
/// or created in `b`: over the parts of `found`, or under a new id.
pub(super) fn put_xattr(
    b: &mut Batch,
    ino: u64,
    hash: u64,
    name: &[u8],
    value: &[u8],
    found: Option<&Found>,
) {
    let (hash, id, old_parts) = match found {
        Some(f) => (f.hash, f.id, f.nr_parts),
        None => {
            let i = b.inode_mut(ino);
            let id = i.next_xattr_id.get();
            i.next_xattr_id.set(id.wrapping_add(1));
            (hash, id, 0)
        }
    };
    let parts = encode_parts(name, value);
    for nr in parts.len()..old_parts {
        b.delete(xattr_key(ino, hash, id, nr as u8));
    }
    for (nr, part) in parts.into_iter().enumerate() {
        b.put(xattr_key(ino, hash, id, nr as u8), part);
    }
}

/// Delete every part of a stored xattr.
/// The xattr holding a file's capabilities.
pub const CAPABILITY_XATTR: &[u8] = b"security.capability";

pub(super) fn delete_xattr(b: &mut Batch, ino: u64, found: &Found) {
    for nr in 0..found.nr_parts {
        b.delete(xattr_key(ino, found.hash, found.id, nr as u8));
    }
}

impl<S: ItemStore> Fs<S> {
    /// Linux's `xattr_permission` (plus the capability checks of
    /// `security.` writes and ACL ownership), then the namespace's own
    /// refusal: a name outside the four namespaces is EOPNOTSUPP, a bare
    /// prefix EINVAL.
    async fn check_xattr_access(
        &mut self,
        creds: &Creds,
        ino: u64,
        inode: &Inode,
        ns: Namespace,
        write: bool,
    ) -> Result<()> {
        let mask = if write { MAY_WRITE } else { MAY_READ };
        match ns {
            Namespace::Trusted if !creds.is_root() => Err(if write {
                FsError::Perm
            } else {
                FsError::NoData
            }),
            Namespace::Trusted => Ok(()),
            Namespace::Security if write && !creds.is_root() => Err(FsError::Perm),
            Namespace::System if write && !creds.owns_or_root(inode) => Err(FsError::Perm),
            Namespace::Security | Namespace::System => Ok(()),
            Namespace::User => {
                let kind = Attr::from_inode(ino, inode)?.kind;
                if !matches!(kind, FileType::Regular | FileType::Directory) {
                    return Err(if write {
                        FsError::Perm
                    } else {
                        FsError::NoData
                    });
                }
                if write
                    && kind == FileType::Directory
                    && inode.mode.get() & libc::S_ISVTX != 0
                    && !creds.owns_or_root(inode)
                {
                    return Err(FsError::Perm);
                }
                self.check_access(creds, ino, inode, mask).await
            }
            Namespace::Unknown => {
                self.check_access(creds, ino, inode, mask).await?;
                Err(FsError::NotSupported)
            }
            Namespace::Bare => {
                self.check_access(creds, ino, inode, mask).await?;
                Err(FsError::Invalid)
            }
        }
    }

    /// The security.capability xattr of `ino` when it has one: a write, a
    /// truncate or a change of owner removes it (Linux's file_remove_privs
    /// and cap_inode_killpriv; the FUSE kernel leaves this to us with
    /// HANDLE_KILLPRIV_V2). Inodes known to have none are remembered, so
    /// a stream of writes costs one lookup.
    pub(super) async fn capability_to_kill(&mut self, ino: u64) -> Result<Option<Found>> {
        if self.no_capability.contains(&ino) {
            return Ok(None);
        }
        let found = self.find_xattr(ino, CAPABILITY_XATTR).await?;
        if found.is_none() {
            if self.no_capability.len() >= 1 << 20 {
                self.no_capability.clear();
            }
            self.no_capability.insert(ino);
        }
        Ok(found)
    }

    /// The xattr `name` of `ino`, walking the ids stored under its hash.
    pub(super) async fn find_xattr(&mut self, ino: u64, name: &[u8]) -> Result<Option<Found>> {
        let hash = self.hash(name);
        let last = xattr_key(ino, hash, u64::MAX, u8::MAX);
        let mut from = xattr_key(ino, hash, 0, 0);
        while let Some(item) = self.store.next(&from, &last).await? {
            let (hdr, item_name) = decode_first_part(&item.key, &item.val)?;
            let id = item.key.third;
            if item_name == name {
                return self.read_parts(ino, hash, id, hdr, name).await.map(Some);
            }
            match xattr_key(ino, hash, id, u8::MAX).next() {
                Some(k) if k <= last => from = k,
                _ => break,
            }
        }
        Ok(None)
    }

    async fn read_parts(
        &mut self,
        ino: u64,
        hash: u64,
        id: u64,
        hdr: Xattr,
        name: &[u8],
    ) -> Result<Found> {
        let val_len = usize::from(hdr.val_len.get());
        let total = HDR_LEN + name.len() + val_len;
        let nr_parts = total.div_ceil(MAX_VAL_SIZE);
        let items = self
            .store
            .range(
                &xattr_key(ino, hash, id, 0),
                &xattr_key(ino, hash, id, u8::MAX),
                MAX_PARTS + 1,
            )
            .await?;
        let mut bytes = Vec::with_capacity(total);
        for (nr, item) in items.iter().enumerate() {
            if item.key.fourth as usize != nr {
                return Err(FsError::corrupt(format!(
                    "xattr {ino}.{id} part {nr} is missing"
                )));
            }
            bytes.extend_from_slice(&item.val);
        }
        if items.len() != nr_parts || bytes.len() != total {
            return Err(FsError::corrupt(format!(
                "xattr {ino}.{id} of {total} bytes has {} parts holding {}",
                items.len(),
                bytes.len()
            )));
        }
        Ok(Found {
            hash,
            id,
            nr_parts,
            value: bytes.split_off(HDR_LEN + name.len()),
        })
    }

    /// setxattr with `XATTR_CREATE` (EEXIST if present) or
    /// `XATTR_REPLACE` (ENODATA if absent). Sets ctime.
    pub async fn set_xattr(
        &mut self,
        creds: &Creds,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        if name == CAPABILITY_XATTR {
            self.no_capability.remove(&ino);
        }
        let now = self.now();
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(FsError::Invalid);
        }
        let ns = check_xattr_name(name)?;
        if value.len() > XATTR_MAX_VAL_LEN {
            return Err(FsError::TooBig);
        }
        if let Some(kind) = AclKind::from_xattr_name(name) {
            return self.set_acl(creds, ino, kind, Some(value)).await;
        }
        let inode = self.read_inode(ino).await?;
        self.check_xattr_access(creds, ino, &inode, ns, true)
            .await?;
        let found = self.find_xattr(ino, name).await?;
        if flags & XATTR_CREATE != 0 && found.is_some() {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && found.is_none() {
            return Err(FsError::NoData);
        }

        let hash = self.hash(name);
        let mut b = self.batch();
        b.track(ino, inode);
        b.inode_mut(ino).ctime = now;
        put_xattr(&mut b, ino, hash, name, value, found.as_ref());
        self.apply(b).await
    }

    /// getxattr: the value (ENODATA when absent). Fitting it into the
    /// caller's buffer (ERANGE) is the frontend's business. An ACL is
    /// EOPNOTSUPP with `noacl` and on symlinks.
    pub async fn get_xattr(&mut self, creds: &Creds, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let ns = check_xattr_name(name)?;
        let inode = self.read_inode(ino).await?;
        if AclKind::from_xattr_name(name).is_some()
            && (!self.opts.acl || Attr::from_inode(ino, &inode)?.kind == FileType::Symlink)
        {
            return Err(FsError::NotSupported);
        }
        self.check_xattr_access(creds, ino, &inode, ns, false)
            .await?;
        match self.find_xattr(ino, name).await? {
            Some(f) => Ok(f.value),
            None => Err(FsError::NoData),
        }
    }

    /// listxattr: the names `creds` may see (`trusted.` only for root, ACLs
    /// not with `noacl`), in hash order.
    pub async fn list_xattrs(&mut self, creds: &Creds, ino: u64) -> Result<Vec<Vec<u8>>> {
        self.read_inode(ino).await?;
        let last = xattr_key(ino, u64::MAX, u64::MAX, u8::MAX);
        let mut from = xattr_key(ino, 0, 0, 0);
        let mut names = Vec::new();
        while let Some(item) = self.store.next(&from, &last).await? {
            let (_, name) = decode_first_part(&item.key, &item.val)?;
            let hidden = (!creds.is_root() && name.starts_with(b"trusted."))
                || (!self.opts.acl && AclKind::from_xattr_name(&name).is_some());
            if !hidden {
                names.push(name);
            }
            match xattr_key(ino, item.key.second, item.key.third, u8::MAX).next() {
                Some(k) if k <= last => from = k,
                _ => break,
            }
        }
        Ok(names)
    }

    /// removexattr (ENODATA when absent, but an absent ACL is removed
    /// without complaint, as Linux). Sets ctime.
    pub async fn remove_xattr(&mut self, creds: &Creds, ino: u64, name: &[u8]) -> Result<()> {
        let now = self.now();
        let ns = check_xattr_name(name)?;
        if let Some(kind) = AclKind::from_xattr_name(name) {
            return self.set_acl(creds, ino, kind, None).await;
        }
        let inode = self.read_inode(ino).await?;
        self.check_xattr_access(creds, ino, &inode, ns, true)
            .await?;
        let Some(found) = self.find_xattr(ino, name).await? else {
            return Err(FsError::NoData);
        };
        let mut b = self.batch();
        b.track(ino, inode);
        b.inode_mut(ino).ctime = now;
        delete_xattr(&mut b, ino, &found);
        self.apply(b).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_namespaces() {
        assert_eq!(check_xattr_name(b""), Err(FsError::Range));
        let long = [b"user.".as_slice(), &[b'a'; 251]].concat();
        assert_eq!(check_xattr_name(&long), Err(FsError::Range));
        assert_eq!(check_xattr_name(&long[..255]), Ok(Namespace::User));
        assert_eq!(check_xattr_name(b"user."), Ok(Namespace::Bare));
        assert_eq!(check_xattr_name(b"os2.x"), Ok(Namespace::Unknown));
        assert_eq!(check_xattr_name(b"trusted.x"), Ok(Namespace::Trusted));
        assert_eq!(check_xattr_name(b"security.x"), Ok(Namespace::Security));
        assert_eq!(
            check_xattr_name(b"system.posix_acl_access"),
            Ok(Namespace::System)
        );
    }

    #[test]
    fn parts_split_at_the_item_value_limit() {
        let name = [b'n'; 255];
        let value = vec![7u8; XATTR_MAX_VAL_LEN];
        let parts = encode_parts(&name, &value);
        assert_eq!(parts.len(), MAX_PARTS);
        assert_eq!(parts.len(), 74);
        assert!(parts.iter().all(|p| p.len() <= MAX_VAL_SIZE));
        let k = xattr_key(1, 2, 3, 0);
        let (hdr, n) = decode_first_part(&k, &parts[0]).unwrap();
        assert_eq!(n, name);
        assert_eq!(usize::from(hdr.val_len.get()), XATTR_MAX_VAL_LEN);
        assert_eq!(encode_parts(b"user.a", b"").len(), 1);
    }
}
