//! Targets for item values the fs layer reads: inodes, directory entries,
//! xattr parts (POSIX ACLs among them) and symlink targets.
//!
//! Each runs the real `Fs` over [`MemStore`], an item store in memory:
//! a small namespace is made through ordinary operations, the items of
//! one kind get the fuzzed values, and then every operation that reads
//! them runs. Each must give a result or an errno, never panic or loop.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use scoutfs_engine::btree::Item;
use scoutfs_engine::data_io::DataIo;
use scoutfs_engine::format::alloc::Extent;
use scoutfs_engine::format::key::{item_type, zone};
use scoutfs_engine::format::Key;
use scoutfs_engine::fs::{
    Creds, Fs, FsOptions, SetAttr, ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR, MAY_READ, MAY_WRITE,
    RENAME_EXCHANGE,
};
use scoutfs_engine::item::{ItemError, ItemStore, Result};
use scoutfs_engine::server::Statfs;
use scoutfs_engine::util::ready;

use crate::input::Input;

/// Items in a map: what `Fs` needs of a store, without devices.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    pub items: BTreeMap<Key, Vec<u8>>,
    next_ino: u64,
    seq: u64,
    inode_count: u64,
}

impl MemStore {
    fn item(key: &Key, val: &[u8]) -> Item {
        Item {
            key: *key,
            seq: 1,
            flags: 0,
            val: val.to_vec(),
        }
    }
}

impl ItemStore for MemStore {
    async fn lookup(&mut self, key: &Key) -> Result<Option<Item>> {
        Ok(self.items.get(key).map(|v| MemStore::item(key, v)))
    }

    async fn next(&mut self, first: &Key, last: &Key) -> Result<Option<Item>> {
        if first > last {
            return Ok(None);
        }
        Ok(self
            .items
            .range(first..=last)
            .next()
            .map(|(k, v)| MemStore::item(k, v)))
    }

    async fn range(&mut self, first: &Key, last: &Key, max: usize) -> Result<Vec<Item>> {
        if first > last {
            return Ok(Vec::new());
        }
        Ok(self
            .items
            .range(first..=last)
            .take(max)
            .map(|(k, v)| MemStore::item(k, v))
            .collect())
    }

    async fn upsert(&mut self, key: Key, val: &[u8]) -> Result<()> {
        if val.len() > scoutfs_engine::format::MAX_VAL_SIZE {
            return Err(ItemError::Invalid);
        }
        self.items.insert(key, val.to_vec());
        Ok(())
    }

    async fn delete(&mut self, key: &Key) -> Result<bool> {
        Ok(self.items.remove(key).is_some())
    }

    async fn alloc_inodes(&mut self, count: u64) -> Result<(u64, u64)> {
        let first = self.next_ino.max(100);
        self.next_ino = first + count;
        Ok((first, count))
    }

    async fn alloc_data(&mut self, _want: u64) -> Result<Extent> {
        Err(ItemError::NoSpace(
            "the fuzz store has no data device".into(),
        ))
    }

    fn free_data(&mut self, _ext: Extent) {}

    fn add_inode_count(&mut self, delta: i64) {
        self.inode_count = self.inode_count.wrapping_add_signed(delta);
    }

    fn data_io(&mut self) -> Result<&mut DataIo> {
        Err(ItemError::Io("the fuzz store has no data device".into()))
    }

    fn txn_seq(&self) -> u64 {
        self.seq + 1
    }

    fn committed_seq(&self) -> u64 {
        self.seq
    }

    async fn commit(&mut self) -> Result<u64> {
        self.seq += 1;
        Ok(self.seq)
    }

    async fn statfs(&mut self) -> Result<Statfs> {
        Ok(Statfs {
            fsid: 1,
            committed_seq: self.seq,
            total_meta_blocks: 1024,
            free_meta_blocks: 512,
            total_data_blocks: 1024,
            free_data_blocks: 0,
            next_ino: self.next_ino,
            inode_count: self.inode_count,
        })
    }

    fn format_version(&self) -> u64 {
        scoutfs_engine::format::FORMAT_VERSION_MAX
    }
}

/// Time stands still: every change is stamped 1_700_000_000.
static CLOCK: std::sync::LazyLock<scoutfs_engine::reactor::SimClock> =
    std::sync::LazyLock::new(|| {
        scoutfs_engine::reactor::SimClock::new(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
    });

fn opts() -> FsOptions {
    FsOptions {
        clock: &*CLOCK,
        ..FsOptions::default()
    }
}

/// Inode numbers of the namespace every fs target starts from.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    pub dir: u64,
    pub file: u64,
    pub link: u64,
}

const ROOT: u64 = 1;
const USER: u32 = 1000;

/// An ACL xattr value: the owner rwx, user 1000 r-x, group r-x, mask r-x,
/// other r-- (Linux's xattr layout: version, then tag/perm/id entries).
pub(crate) fn acl_value() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 5, USER),
        (0x04, 5, u32::MAX),
        (0x10, 5, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// The starting namespace: `/d` (a directory with a default ACL), `/d/f`
/// (a file with a user xattr of two parts and an access ACL), `/l` (a
/// symlink), `/p` (a fifo), made once through ordinary operations.
fn base() -> &'static (MemStore, Names) {
    static BASE: OnceLock<(MemStore, Names)> = OnceLock::new();
    BASE.get_or_init(|| {
        let c = Creds::root();
        let mut fs = ready(Fs::open(MemStore::default(), opts())).expect("fresh fs");
        let dir = ready(fs.mkdir(&c, ROOT, b"d", 0o755)).expect("mkdir").ino;
        let acl = acl_value();
        ready(fs.set_xattr(&c, dir, ACL_DEFAULT_XATTR, &acl, 0)).expect("default acl");
        let file = ready(fs.create(&c, dir, b"f", 0o640)).expect("create").ino;
        ready(fs.set_xattr(&c, file, b"user.big", &[7u8; 1200], 0)).expect("xattr");
        ready(fs.set_xattr(&c, file, ACL_ACCESS_XATTR, &acl, 0)).expect("acl");
        let link = ready(fs.symlink(&c, ROOT, b"l", &[b'x'; 1000]))
            .expect("symlink")
            .ino;
        ready(fs.mknod(&c, ROOT, b"p", libc::S_IFIFO | 0o644, 0)).expect("mknod");
        (fs.into_store(), Names { dir, file, link })
    })
}

/// Item keys of the base namespace of type `ty` (fs zone).
fn keys_of_type(store: &MemStore, ty: u8) -> Vec<Key> {
    store
        .items
        .keys()
        .filter(|k| k.zone == zone::FS && k.ty == ty)
        .copied()
        .collect()
}

/// Every operation that reads the namespace's items, as root and as a
/// user (permission checks read inodes and ACLs).
fn exercise(store: MemStore, names: Names) {
    let Ok(mut fs) = ready(Fs::open(store, opts())) else {
        return;
    };
    let root = Creds::root();
    let user = Creds::user(USER, USER);
    let inos = [ROOT, names.dir, names.file, names.link];
    for c in [&root, &user] {
        for ino in inos {
            let _ = ready(fs.getattr(ino));
            let _ = ready(fs.access(c, ino, MAY_READ | MAY_WRITE));
            let _ = ready(fs.readdir(ino, 0, 64));
            let _ = ready(fs.readlink(ino));
            let _ = ready(fs.read(ino, 0, 4096));
            let _ = ready(fs.seek_data(ino, 0, true));
            if let Ok(names) = ready(fs.list_xattrs(c, ino)) {
                for n in names.iter().take(8) {
                    let _ = ready(fs.get_xattr(c, ino, n));
                }
            }
            let _ = ready(fs.get_xattr(c, ino, ACL_ACCESS_XATTR));
            if ready(fs.open_ino(c, ino, MAY_READ)).is_ok() {
                let _ = ready(fs.release(ino));
            }
        }
        for (dir, name) in [
            (ROOT, &b"d"[..]),
            (names.dir, b"f"),
            (ROOT, b"l"),
            (ROOT, b".."),
        ] {
            let _ = ready(fs.lookup(c, dir, name));
        }
    }
    // Changes that read what they change first.
    let _ = ready(fs.create(&user, names.dir, b"new", 0o644));
    let _ = ready(fs.mkdir(&root, names.dir, b"sub", 0o755));
    let _ = ready(fs.set_xattr(&root, names.file, b"user.big", b"v", 0));
    let _ = ready(fs.remove_xattr(&root, names.file, ACL_ACCESS_XATTR));
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let _ = ready(fs.setattr(&root, names.file, &chmod));
    let _ = ready(fs.rename(&root, names.dir, b"f", ROOT, b"p", 0));
    let _ = ready(fs.rename(&root, ROOT, b"l", ROOT, b"d", RENAME_EXCHANGE));
    let _ = ready(fs.link(&root, names.file, ROOT, b"hard"));
    let _ = ready(fs.unlink(&root, ROOT, b"l"));
    let _ = ready(fs.unlink(&root, names.dir, b"f"));
    let _ = ready(fs.rmdir(&root, ROOT, b"d"));
    let _ = ready(fs.statfs());
    for ino in inos {
        let _ = ready(fs.readdir(ino, 0, 64));
    }
}

/// Give the items at `keys` the values taken from `inp` (a flags byte
/// first: bit i set replaces key i; then one length-prefixed value per
/// replaced key, the last one reused when the input runs out).
fn replace_values(store: &mut MemStore, keys: &[Key], inp: &mut Input<'_>) {
    let which = inp.u8();
    let mut last: Vec<u8> = Vec::new();
    for (i, k) in keys.iter().enumerate().take(8) {
        if which & (1 << i) == 0 {
            continue;
        }
        if !inp.is_empty() {
            last = inp.chunk().to_vec();
        }
        store.items.insert(*k, last.clone());
    }
}

/// Inode values: the root's, the directory's, the file's and the
/// symlink's, replaced as the flags byte says.
pub fn inode(data: &[u8]) {
    let (store, names) = base();
    let mut store = store.clone();
    let keys = [ROOT, names.dir, names.file, names.link].map(Key::inode);
    replace_values(&mut store, &keys, &mut Input::new(data));
    exercise(store, *names);
}

/// Directory entries: the name-hash, readdir-position and backref items
/// of every entry (ordered by key), replaced as the flags byte says.
pub fn dirent(data: &[u8]) {
    let (store, names) = base();
    let mut store = store.clone();
    let mut inp = Input::new(data);
    let ty = match inp.u8() % 3 {
        0 => item_type::DIRENT,
        1 => item_type::READDIR,
        _ => item_type::LINK_BACKREF,
    };
    let keys = keys_of_type(&store, ty);
    replace_values(&mut store, &keys, &mut inp);
    exercise(store, *names);
}

/// Xattr parts (the user xattr's two parts and both ACLs), replaced as
/// the flags byte says; a further byte may add a stray part.
pub fn xattr(data: &[u8]) {
    let (store, names) = base();
    let mut store = store.clone();
    let mut inp = Input::new(data);
    let keys = keys_of_type(&store, item_type::XATTR);
    replace_values(&mut store, &keys, &mut inp);
    let extra = inp.u8();
    if extra & 0x80 != 0 {
        if let Some(k) = keys.get(usize::from(extra) % keys.len().max(1)) {
            let stray = Key {
                fourth: extra & 0x7f,
                ..*k
            };
            store.items.insert(stray, inp.rest().to_vec());
        }
    }
    exercise(store, *names);
}

/// Symlink target parts, replaced as the flags byte says.
pub fn symlink(data: &[u8]) {
    let (store, names) = base();
    let mut store = store.clone();
    let keys = keys_of_type(&store, item_type::SYMLINK);
    replace_values(&mut store, &keys, &mut Input::new(data));
    exercise(store, *names);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_namespace_has_every_kind_of_item() {
        let (store, _) = base();
        for ty in [
            item_type::INODE,
            item_type::DIRENT,
            item_type::READDIR,
            item_type::LINK_BACKREF,
            item_type::XATTR,
            item_type::SYMLINK,
        ] {
            assert!(!keys_of_type(store, ty).is_empty(), "type {ty}");
        }
        // Two parts for the big xattr, one per ACL.
        assert!(keys_of_type(store, item_type::XATTR).len() >= 4);
    }

    #[test]
    fn untouched_namespace_runs_clean() {
        let (store, names) = base();
        exercise(store.clone(), *names);
    }
}
