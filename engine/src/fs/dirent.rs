//! Directory entries as items: each entry is stored three times with the
//! same value (the `Dirent` header and the name): by name hash for lookups,
//! by readdir position for readdir, and as a link backref under the inode
//! it names.

use crate::format::inode::{Dirent, DIRENT_LAST_POS, NAME_LEN};
use crate::format::key::{item_type, zone};
use crate::format::Key;

use super::batch::Batch;
use super::error::{FsError, Result};
use super::{Fs, ItemStore};

/// The 64-bit hash of an entry or xattr name: two chained crc32c (the
/// second seeded with the first) as the high and low halves.
pub fn name_hash(name: &[u8]) -> u64 {
    let lo = crc32c::crc32c(name);
    let hi = crc32c::crc32c_append(lo, name);
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn dirent_key(dir: u64, hash: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, item_type::DIRENT, hash, pos, 0)
}

pub fn readdir_key(dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, item_type::READDIR, pos, 0, 0)
}

pub fn backref_key(ino: u64, dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, ino, item_type::LINK_BACKREF, dir, pos, 0)
}

/// One directory entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The inode the entry names.
    pub ino: u64,
    pub hash: u64,
    pub pos: u64,
    /// scoutfs's `DT_*`.
    pub ty: u8,
    pub name: Vec<u8>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let hdr = Dirent {
            ino: self.ino.into(),
            hash: self.hash.into(),
            pos: self.pos.into(),
            ty: self.ty,
            _pad: [0; 7],
        };
        let mut v = bytemuck::bytes_of(&hdr).to_vec();
        v.extend_from_slice(&self.name);
        v
    }

    pub fn decode(key: &Key, val: &[u8]) -> Result<Entry> {
        let hdr_len = std::mem::size_of::<Dirent>();
        if val.len() <= hdr_len || val.len() > hdr_len + NAME_LEN {
            return Err(FsError::corrupt(format!(
                "entry item {key} has a {} byte value",
                val.len()
            )));
        }
        let hdr: Dirent = bytemuck::pod_read_unaligned(&val[..hdr_len]);
        Ok(Entry {
            ino: hdr.ino.get(),
            hash: hdr.hash.get(),
            pos: hdr.pos.get(),
            ty: hdr.ty,
            name: val[hdr_len..].to_vec(),
        })
    }

    /// Add the entry's three items to `dir`.
    pub fn put(&self, b: &mut Batch, dir: u64) {
        let val = self.encode();
        b.put(dirent_key(dir, self.hash, self.pos), val.clone());
        b.put(readdir_key(dir, self.pos), val.clone());
        b.put(backref_key(self.ino, dir, self.pos), val);
    }

    /// Delete the entry's three items from `dir`.
    pub fn delete(&self, b: &mut Batch, dir: u64) {
        b.delete(dirent_key(dir, self.hash, self.pos));
        b.delete(readdir_key(dir, self.pos));
        b.delete(backref_key(self.ino, dir, self.pos));
    }
}

/// What a name means in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Normal,
    Dot,
    DotDot,
}

/// Check an entry name: ENOENT when empty, ENAMETOOLONG over 255 bytes,
/// EINVAL with a '/' or NUL.
pub fn check_name(name: &[u8]) -> Result<NameKind> {
    if name.is_empty() {
        return Err(FsError::NotFound);
    }
    if name.len() > NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.iter().any(|&c| c == b'/' || c == 0) {
        return Err(FsError::Invalid);
    }
    Ok(match name {
        b"." => NameKind::Dot,
        b".." => NameKind::DotDot,
        _ => NameKind::Normal,
    })
}

/// Most steps from a directory up to the root before the walk is called
/// corrupt (a loop of ".." backrefs).
const MAX_DEPTH: usize = 1 << 16;

impl<S: ItemStore> Fs<S> {
    /// The entry named `name` in `dir`: walk the positions stored under
    /// the name's hash (more than one only on a collision).
    pub(super) async fn find_entry(&mut self, dir: u64, name: &[u8]) -> Result<Option<Entry>> {
        let hash = self.hash(name);
        let mut from = dirent_key(dir, hash, 0);
        let last = dirent_key(dir, hash, u64::MAX);
        while let Some(item) = self.store.next(&from, &last).await? {
            let e = Entry::decode(&item.key, &item.val)?;
            if e.name == name {
                return Ok(Some(e));
            }
            match item.key.next() {
                Some(k) => from = k,
                None => break,
            }
        }
        Ok(None)
    }

    /// The directory holding directory `dir` (the root's is itself): a
    /// directory has exactly one link backref.
    pub(super) async fn parent_of(&mut self, dir: u64) -> Result<u64> {
        if dir == crate::format::inode::ROOT_INO {
            return Ok(dir);
        }
        let first = backref_key(dir, 0, 0);
        let last = backref_key(dir, u64::MAX, u64::MAX);
        match self.store.next(&first, &last).await? {
            Some(item) => Ok(item.key.second),
            None => Err(FsError::NotFound),
        }
    }

    /// Whether `dir` is `ino` or lies under it.
    pub(super) async fn is_under(&mut self, dir: u64, ino: u64) -> Result<bool> {
        let mut d = dir;
        for _ in 0..MAX_DEPTH {
            if d == ino {
                return Ok(true);
            }
            let p = self.parent_of(d).await?;
            if p == d {
                return Ok(false);
            }
            d = p;
        }
        Err(FsError::corrupt(format!(
            "directory {dir} is more than {MAX_DEPTH} levels deep"
        )))
    }

    /// Up to `max` of the names inode `ino` has: (directory, name), from
    /// its link backrefs, in key order. A frontend whose kernel keeps a
    /// file's size and times itself forgets them only with the inode,
    /// which it drops by dropping the inode's names (serve/changes.rs).
    pub async fn names_of(&mut self, ino: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let first = backref_key(ino, 0, 0);
        let last = backref_key(ino, u64::MAX, u64::MAX);
        let items = self.store.range(&first, &last, max).await?;
        items
            .iter()
            .map(|item| Entry::decode(&item.key, &item.val).map(|e| (item.key.second, e.name)))
            .collect()
    }

    /// Whether directory `dir` holds no entries.
    pub(super) async fn dir_is_empty(&mut self, dir: u64) -> Result<bool> {
        let first = readdir_key(dir, 0);
        let last = readdir_key(dir, DIRENT_LAST_POS);
        Ok(self.store.next(&first, &last).await?.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_linux() {
        assert_eq!(check_name(b""), Err(FsError::NotFound));
        assert_eq!(check_name(&[b'a'; 255]), Ok(NameKind::Normal));
        assert_eq!(check_name(&[b'a'; 256]), Err(FsError::NameTooLong));
        assert_eq!(check_name(b"a/b"), Err(FsError::Invalid));
        assert_eq!(check_name(b"a\0"), Err(FsError::Invalid));
        assert_eq!(check_name(b"."), Ok(NameKind::Dot));
        assert_eq!(check_name(b".."), Ok(NameKind::DotDot));
        assert_eq!(check_name(b"..."), Ok(NameKind::Normal));
    }

    #[test]
    fn entries_round_trip_and_hashes_spread() {
        let e = Entry {
            ino: 7,
            hash: name_hash(b"hello"),
            pos: 9,
            ty: crate::format::inode::DT_REG,
            name: b"hello".to_vec(),
        };
        let k = dirent_key(1, e.hash, e.pos);
        assert_eq!(Entry::decode(&k, &e.encode()).unwrap(), e);
        assert!(Entry::decode(&k, &e.encode()[..32]).is_err());
        assert_ne!(name_hash(b"a"), name_hash(b"b"));
        assert_ne!(name_hash(b"ab") >> 32, name_hash(b"ab") & 0xffff_ffff);
    }
}
