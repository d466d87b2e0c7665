//! engine::fs on a `Volume` over the `mem` device: every errno the fs
//! layer promises, readdir positions, renames and their loop checks,
//! permissions (sticky, setgid, chmod/chown, EACCES vs EPERM), times,
//! xattrs and symlinks in parts, the inode index items, orphans after a
//! crash, and a model test of random namespace operations against an
//! in-memory tree. After each scenario `check_items` verifies the stored
//! items agree with each other (the three copies of every entry, link
//! counts, directory sizes, index items, nothing unreachable).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use scoutfs_engine::dev::mem::{Fault, MemDev};
use scoutfs_engine::dev::IoOp;
use scoutfs_engine::format::inode::{Dirent, Inode, Timespec, LINK_MAX};
use scoutfs_engine::format::key::{item_type, zone};
use scoutfs_engine::format::Key;
use scoutfs_engine::fs::{
    data_seq_index_key, meta_seq_index_key, name_hash, orphan_key, Attr, Creds, FileType, Fs,
    FsError, FsOptions, SetAttr, MAY_READ, MAY_WRITE, RENAME_EXCHANGE, RENAME_NOREPLACE,
    XATTR_CREATE, XATTR_REPLACE,
};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};

// ---------------------------------------------------------------------------
// Harness

use scoutfs_engine::util::ready as block_on;

thread_local! {
    static CLOCK_US: Cell<u64> = const { Cell::new(0) };
}

/// A clock that advances a microsecond per reading (per test thread), so
/// tests can tell which operation stamped a time.
fn test_clock() -> Timespec {
    CLOCK_US.with(|c| {
        let us = c.get() + 1;
        c.set(us);
        Timespec::new(
            1_700_000_000 + (us / 1_000_000) as i64,
            (us % 1_000_000) as u32 * 1000,
        )
    })
}

const ROOT: u64 = 1;

/// Root, as a static for futures that outlive a statement.
static RC: Creds = Creds {
    uid: 0,
    gid: 0,
    groups: Vec::new(),
    umask: 0,
};

fn root() -> Creds {
    Creds::root()
}

/// Nanoseconds since the epoch, to compare times.
fn ns(t: Timespec) -> i128 {
    i128::from(t.sec.get()) * 1_000_000_000 + i128::from(t.nsec.get())
}

fn user(uid: u32) -> Creds {
    Creds::user(uid, uid)
}

fn txn_opts() -> TxnOptions {
    TxnOptions {
        cache_bytes: 32 << 20,
        meta_targets: (32, 48),
        ..TxnOptions::default()
    }
}

fn fs_opts() -> FsOptions {
    FsOptions {
        clock: &scoutfs_engine::fs::TimespecClock(test_clock),
        ..FsOptions::default()
    }
}

/// A volume on mem devices with the fs mounted.
struct T {
    meta: MemDev,
    data: MemDev,
    opts: FsOptions,
    fs: Option<Fs<Volume>>,
}

impl T {
    fn new() -> T {
        T::with(fs_opts(), MkfsOptions::default(), 64 << 20)
    }

    fn with(opts: FsOptions, mkfs_opts: MkfsOptions, meta_bytes: u64) -> T {
        let meta = MemDev::new(meta_bytes);
        let data = MemDev::new(16 << 20);
        mkfs(&meta, &data, &mkfs_opts).unwrap();
        let mut t = T {
            meta,
            data,
            opts,
            fs: None,
        };
        t.mount();
        t
    }

    fn mount(&mut self) {
        let mut vol = Volume::open(&self.meta, txn_opts()).unwrap();
        vol.attach_data_device(&self.data).unwrap();
        self.fs = Some(block_on(Fs::open(vol, self.opts)).unwrap());
    }

    fn fs(&mut self) -> &mut Fs<Volume> {
        self.fs.as_mut().unwrap()
    }

    fn vol(&mut self) -> &mut Volume {
        self.fs().store_mut()
    }

    /// Clean unmount and mount again.
    fn remount(&mut self) {
        let vol = self.fs.take().unwrap().into_store();
        vol.unmount().unwrap();
        self.mount();
    }

    /// Commit, then stop without releasing anything (the process dies).
    fn crash_after_commit(&mut self) {
        let mut vol = self.fs.take().unwrap().into_store();
        vol.commit().unwrap();
        drop(vol);
    }

    fn check(&mut self) {
        let hash = self.opts.name_hash;
        check_items(self.fs(), hash);
        let (meta, data) = (self.meta.clone(), self.data.clone());
        let problems = check_volume(self.vol().store_mut(), &meta, &data).problems;
        assert!(problems.is_empty(), "{problems:?}");
    }

    // Short forms of the operations, as root unless `_as`.
    fn create(&mut self, dir: u64, name: &str) -> Attr {
        block_on(self.fs().create(&root(), dir, name.as_bytes(), 0o644)).unwrap()
    }

    fn create_as(&mut self, c: &Creds, dir: u64, name: &str, mode: u32) -> Result<Attr, FsError> {
        block_on(self.fs().create(c, dir, name.as_bytes(), mode))
    }

    fn mkdir(&mut self, dir: u64, name: &str) -> Attr {
        block_on(self.fs().mkdir(&root(), dir, name.as_bytes(), 0o755)).unwrap()
    }

    fn mkdir_as(&mut self, c: &Creds, dir: u64, name: &str, mode: u32) -> Result<Attr, FsError> {
        block_on(self.fs().mkdir(c, dir, name.as_bytes(), mode))
    }

    fn lookup(&mut self, dir: u64, name: &str) -> Result<Attr, FsError> {
        block_on(self.fs().lookup(&root(), dir, name.as_bytes()))
    }

    fn getattr(&mut self, ino: u64) -> Result<Attr, FsError> {
        block_on(self.fs().getattr(ino))
    }

    fn unlink(&mut self, dir: u64, name: &str) -> Result<(), FsError> {
        block_on(self.fs().unlink(&root(), dir, name.as_bytes()))
    }

    fn rmdir(&mut self, dir: u64, name: &str) -> Result<(), FsError> {
        block_on(self.fs().rmdir(&root(), dir, name.as_bytes()))
    }

    fn rename(&mut self, od: u64, on: &str, nd: u64, nn: &str, flags: u32) -> Result<(), FsError> {
        block_on(
            self.fs()
                .rename(&root(), od, on.as_bytes(), nd, nn.as_bytes(), flags),
        )
    }

    fn link(&mut self, ino: u64, dir: u64, name: &str) -> Result<Attr, FsError> {
        block_on(self.fs().link(&root(), ino, dir, name.as_bytes()))
    }

    fn setattr(&mut self, c: &Creds, ino: u64, set: SetAttr) -> Result<Attr, FsError> {
        block_on(self.fs().setattr(c, ino, &set))
    }

    fn names(&mut self, dir: u64) -> Vec<String> {
        block_on(self.fs().readdir(dir, 2, usize::MAX))
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }

    /// Overwrite an inode item directly (to reach states like LINK_MAX).
    fn poke_inode(&mut self, ino: u64, f: impl FnOnce(&mut Inode)) {
        let fmt = self.vol().super_block().format_version();
        let item = self.vol().lookup(&Key::inode(ino)).unwrap().unwrap();
        let mut inode = Inode::from_value(&item.val, fmt).unwrap();
        f(&mut inode);
        let val = inode.value_bytes(fmt).to_vec();
        self.vol().upsert(Key::inode(ino), &val).unwrap();
    }

    fn item_exists(&mut self, key: Key) -> bool {
        self.vol().lookup(&key).unwrap().is_some()
    }

    fn inode_items(&mut self, ino: u64) -> Vec<Key> {
        self.vol()
            .range(&Key::inode_first(ino), &Key::inode_last(ino), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|i| i.key)
            .collect()
    }
}

fn set_mode(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

fn set_uid(uid: u32) -> SetAttr {
    SetAttr {
        uid: Some(uid),
        ..SetAttr::default()
    }
}

fn set_gid(gid: u32) -> SetAttr {
    SetAttr {
        gid: Some(gid),
        ..SetAttr::default()
    }
}

fn set_size(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..SetAttr::default()
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

// ---------------------------------------------------------------------------
// Item-level consistency

fn decode_dirent(val: &[u8]) -> (u64, u64, u64, u8, Vec<u8>) {
    let n = std::mem::size_of::<Dirent>();
    let d: Dirent = bytemuck::pod_read_unaligned(&val[..n]);
    (
        d.ino.get(),
        d.hash.get(),
        d.pos.get(),
        d.ty,
        val[n..].to_vec(),
    )
}

/// (ino, name hash, xattr id) and (part nr, bytes).
type XattrId = (u64, u64, u64);
type XattrPart = (u8, Vec<u8>);

/// Every stored item agrees with the others: each entry's three copies,
/// hashes, link counts, directory sizes and readdir positions, symlink
/// parts, the inode index items, and no inode unreachable unless orphaned.
fn check_items(fs: &mut Fs<Volume>, hash: fn(&[u8]) -> u64) {
    let vol = fs.store_mut();
    let fmt = vol.super_block().format_version();
    let items = vol
        .range(
            &Key::zone_first(zone::INODE_INDEX),
            &Key::zone_last(zone::FS),
            usize::MAX,
        )
        .unwrap();
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    let mut dirents = BTreeMap::new();
    let mut readdir = BTreeMap::new();
    let mut backrefs = BTreeMap::new();
    let mut meta_idx = BTreeSet::new();
    let mut data_idx = BTreeSet::new();
    let mut orphans = BTreeSet::new();
    let mut symlink_bytes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut xattrs: BTreeMap<XattrId, Vec<XattrPart>> = BTreeMap::new();
    let mut online: BTreeMap<u64, u64> = BTreeMap::new();
    for it in &items {
        let k = it.key;
        match (k.zone, k.ty) {
            (zone::INODE_INDEX, item_type::INODE_INDEX_META_SEQ) => {
                meta_idx.insert((k.second, k.third));
            }
            (zone::INODE_INDEX, item_type::INODE_INDEX_DATA_SEQ) => {
                data_idx.insert((k.second, k.third));
            }
            (zone::ORPHAN, _) => {
                orphans.insert(k.second);
            }
            (zone::FS, item_type::INODE) => {
                inodes.insert(k.first, Inode::from_value(&it.val, fmt).unwrap());
            }
            (zone::FS, item_type::DIRENT) => {
                dirents.insert((k.first, k.third), (k.second, it.val.clone()));
            }
            (zone::FS, item_type::READDIR) => {
                readdir.insert((k.first, k.second), it.val.clone());
            }
            (zone::FS, item_type::LINK_BACKREF) => {
                backrefs.insert((k.first, k.second, k.third), it.val.clone());
            }
            (zone::FS, item_type::SYMLINK) => {
                let b = symlink_bytes.entry(k.first).or_default();
                assert_eq!(k.second as usize * 896, b.len(), "symlink part {k}");
                b.extend_from_slice(&it.val);
            }
            (zone::FS, item_type::XATTR) => {
                xattrs
                    .entry((k.first, k.second, k.third))
                    .or_default()
                    .push((k.fourth, it.val.clone()));
            }
            (zone::FS, item_type::DATA_EXTENT) => {
                let e = scoutfs_engine::data::decode(k.first, it).unwrap();
                if e.flags & scoutfs_engine::format::alloc::DATA_EXTENT_OFFLINE == 0 {
                    *online.entry(k.first).or_default() += e.len;
                }
            }
            _ => panic!("unexpected item {k}"),
        }
    }
    for (ino, inode) in &inodes {
        assert_eq!(
            inode.online_blocks.get(),
            online.get(ino).copied().unwrap_or(0),
            "online_blocks of {ino}"
        );
    }
    for ((ino, h, id), parts) in &xattrs {
        assert!(inodes.contains_key(ino), "xattr of missing inode {ino}");
        let bytes: Vec<u8> = parts.iter().flat_map(|(_, v)| v.clone()).collect();
        let nrs: Vec<u8> = parts.iter().map(|(nr, _)| *nr).collect();
        assert_eq!(
            nrs,
            (0..parts.len() as u8).collect::<Vec<_>>(),
            "xattr {ino}.{id} parts"
        );
        let val_len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        let name_len = bytes[2] as usize;
        assert_eq!(
            bytes.len(),
            8 + name_len + val_len,
            "xattr {ino}.{id} length"
        );
        assert!(parts[..parts.len() - 1].iter().all(|(_, v)| v.len() == 896));
        assert_eq!(*h, hash(&bytes[8..8 + name_len]), "xattr {ino}.{id} hash");
        assert!(*id < inodes[ino].next_xattr_id.get(), "xattr {ino}.{id} id");
    }
    assert_eq!(dirents.len(), readdir.len(), "dirent vs readdir items");
    assert_eq!(dirents.len(), backrefs.len(), "dirent vs backref items");
    let mut links: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut name_bytes: BTreeMap<u64, u64> = BTreeMap::new();
    let mut max_pos: BTreeMap<u64, u64> = BTreeMap::new();
    for ((dir, pos), (h, val)) in &dirents {
        let (ino, vh, vpos, ty, name) = decode_dirent(val);
        assert_eq!((vh, vpos), (*h, *pos), "dirent header of {dir}/{pos}");
        assert_eq!(
            *h,
            hash(&name),
            "hash of {:?}",
            String::from_utf8_lossy(&name)
        );
        assert_eq!(
            readdir.get(&(*dir, *pos)),
            Some(val),
            "readdir copy of {dir}/{pos}"
        );
        assert_eq!(
            backrefs.get(&(ino, *dir, *pos)),
            Some(val),
            "backref of {dir}/{pos}"
        );
        let child = inodes
            .get(&ino)
            .unwrap_or_else(|| panic!("entry {dir}/{pos} -> missing {ino}"));
        let kind = FileType::from_mode(child.mode.get()).unwrap();
        assert_eq!(kind.dirent_type(), ty, "dirent type of {dir}/{pos}");
        assert_eq!(
            FileType::from_mode(inodes[dir].mode.get()),
            Some(FileType::Directory)
        );
        *links.entry(ino).or_default() += 1;
        if kind == FileType::Directory {
            *subdirs.entry(*dir).or_default() += 1;
        }
        *name_bytes.entry(*dir).or_default() += name.len() as u64;
        let m = max_pos.entry(*dir).or_default();
        *m = (*m).max(*pos);
        assert!(*pos >= 2);
    }
    for (ino, inode) in &inodes {
        let kind = FileType::from_mode(inode.mode.get()).unwrap();
        let n = links.get(ino).copied().unwrap_or(0);
        if kind == FileType::Directory {
            assert!(n <= 1, "directory {ino} has {n} names");
            assert_eq!(
                inode.nlink.get(),
                if inode.nlink.get() == 0 { 0 } else { 2 } + subdirs.get(ino).copied().unwrap_or(0),
                "nlink of directory {ino}"
            );
            assert_eq!(
                inode.size.get(),
                name_bytes.get(ino).copied().unwrap_or(0),
                "size of {ino}"
            );
            assert!(inode.next_readdir_pos.get() > max_pos.get(ino).copied().unwrap_or(1));
        } else {
            assert_eq!(inode.nlink.get(), n, "nlink of {ino}");
        }
        if n == 0 && *ino != ROOT {
            assert!(
                orphans.contains(ino),
                "inode {ino} is unreachable and not an orphan"
            );
            assert_eq!(inode.nlink.get(), 0);
        }
        if kind == FileType::Symlink {
            let b = &symlink_bytes[ino];
            assert_eq!(b.len() as u64, inode.size.get() + 1, "symlink {ino} bytes");
            assert_eq!(b.last(), Some(&0));
        }
        assert!(
            meta_idx.contains(&(inode.meta_seq.get(), *ino)),
            "meta_seq index of {ino}"
        );
        assert!(
            data_idx.contains(&(inode.data_seq.get(), *ino)),
            "data_seq index of {ino}"
        );
    }
    assert_eq!(
        meta_idx.len(),
        inodes.len(),
        "meta_seq index items: {meta_idx:?}"
    );
    assert_eq!(data_idx.len(), inodes.len(), "data_seq index items");
    for o in &orphans {
        assert!(inodes.contains_key(o), "orphan item for missing inode {o}");
    }
}

// ---------------------------------------------------------------------------
// Mount, errnos

#[test]
fn first_mount_creates_the_root_directory() {
    let mut t = T::new();
    let r = t.getattr(ROOT).unwrap();
    assert_eq!(r.kind, FileType::Directory);
    assert_eq!(
        (r.perm(), r.nlink, r.uid, r.gid, r.size),
        (0o755, 2, 0, 0, 0)
    );
    assert_eq!(t.lookup(ROOT, "..").unwrap().ino, ROOT);
    assert_eq!(t.lookup(ROOT, ".").unwrap().ino, ROOT);
    let committed = t.vol().committed_seq();
    assert!(r.meta_seq <= committed, "the root was committed");
    t.remount();
    assert_eq!(t.getattr(ROOT).unwrap().crtime, r.crtime);
    t.check();
}

#[test]
fn enoent() {
    let mut t = T::new();
    assert_eq!(errno(t.lookup(ROOT, "nope")), libc::ENOENT);
    assert_eq!(errno(t.getattr(999)), libc::ENOENT);
    assert_eq!(errno(t.unlink(ROOT, "nope")), libc::ENOENT);
    assert_eq!(errno(t.rmdir(ROOT, "nope")), libc::ENOENT);
    assert_eq!(errno(t.rename(ROOT, "nope", ROOT, "x", 0)), libc::ENOENT);
    let a = t.create(ROOT, "a");
    assert_eq!(
        errno(t.rename(ROOT, "a", ROOT, "b", RENAME_EXCHANGE)),
        libc::ENOENT
    );
    assert_eq!(errno(t.lookup(ROOT, "")), libc::ENOENT);
    assert_eq!(errno(t.link(999, ROOT, "x")), libc::ENOENT);
    let target = t.fs().symlink(&RC, ROOT, b"l", b"");
    assert_eq!(errno(block_on(target)), libc::ENOENT);
    // A removed directory takes no new entries.
    let d = t.mkdir(ROOT, "d");
    block_on(t.fs().open_ino(&root(), d.ino, MAY_READ)).unwrap();
    t.rmdir(ROOT, "d").unwrap();
    assert_eq!(errno(t.create_as(&root(), d.ino, "x", 0o644)), libc::ENOENT);
    assert_eq!(errno(t.link(a.ino, d.ino, "x")), libc::ENOENT);
    assert_eq!(t.names(d.ino), Vec::<String>::new());
    block_on(t.fs().release(d.ino)).unwrap();
    assert_eq!(errno(t.getattr(d.ino)), libc::ENOENT);
    t.check();
}

#[test]
fn eexist() {
    let mut t = T::new();
    let a = t.create(ROOT, "a");
    t.mkdir(ROOT, "d");
    assert_eq!(errno(t.create_as(&root(), ROOT, "a", 0o644)), libc::EEXIST);
    assert_eq!(errno(t.mkdir_as(&root(), ROOT, "a", 0o755)), libc::EEXIST);
    assert_eq!(errno(t.mkdir_as(&root(), ROOT, "d", 0o755)), libc::EEXIST);
    assert_eq!(errno(t.mkdir_as(&root(), ROOT, ".", 0o755)), libc::EEXIST);
    assert_eq!(errno(t.mkdir_as(&root(), ROOT, "..", 0o755)), libc::EEXIST);
    assert_eq!(errno(t.link(a.ino, ROOT, "d")), libc::EEXIST);
    let s = t.fs().symlink(&RC, ROOT, b"a", b"target");
    assert_eq!(errno(block_on(s)), libc::EEXIST);
    let m = t.fs().mknod(&RC, ROOT, b"a", libc::S_IFIFO | 0o644, 0);
    assert_eq!(errno(block_on(m)), libc::EEXIST);
    assert_eq!(
        errno(t.rename(ROOT, "a", ROOT, "d", RENAME_NOREPLACE)),
        libc::EEXIST
    );
    block_on(
        t.fs()
            .set_xattr(&root(), a.ino, b"user.x", b"1", XATTR_CREATE),
    )
    .unwrap();
    let again = t.fs().set_xattr(&RC, a.ino, b"user.x", b"2", XATTR_CREATE);
    assert_eq!(errno(block_on(again)), libc::EEXIST);
    t.check();
}

#[test]
fn enotdir() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    t.mkdir(ROOT, "d");
    assert_eq!(errno(t.lookup(f.ino, "x")), libc::ENOTDIR);
    assert_eq!(
        errno(t.create_as(&root(), f.ino, "x", 0o644)),
        libc::ENOTDIR
    );
    assert_eq!(errno(t.rmdir(ROOT, "f")), libc::ENOTDIR);
    assert_eq!(errno(t.rename(ROOT, "d", ROOT, "f", 0)), libc::ENOTDIR);
    assert_eq!(errno(block_on(t.fs().readdir(f.ino, 0, 10))), libc::ENOTDIR);
    t.check();
}

#[test]
fn eisdir() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    t.create(ROOT, "f");
    assert_eq!(errno(t.unlink(ROOT, "d")), libc::EISDIR);
    assert_eq!(errno(t.unlink(ROOT, ".")), libc::EISDIR);
    assert_eq!(errno(t.rename(ROOT, "f", ROOT, "d", 0)), libc::EISDIR);
    let trunc = set_size(0);
    assert_eq!(errno(t.setattr(&root(), d.ino, trunc)), libc::EISDIR);
    let open = t.fs().open_ino(&RC, d.ino, MAY_READ | MAY_WRITE);
    assert_eq!(errno(block_on(open)), libc::EISDIR);
    t.check();
}

#[test]
fn enotempty() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    t.create(d.ino, "f");
    t.mkdir(ROOT, "e");
    let e2 = t.mkdir(ROOT, "e2");
    t.mkdir(e2.ino, "sub");
    assert_eq!(errno(t.rmdir(ROOT, "d")), libc::ENOTEMPTY);
    assert_eq!(errno(t.rmdir(ROOT, "..")), libc::ENOTEMPTY);
    assert_eq!(errno(t.rename(ROOT, "e", ROOT, "d", 0)), libc::ENOTEMPTY);
    assert_eq!(errno(t.rename(ROOT, "e", ROOT, "e2", 0)), libc::ENOTEMPTY);
    // Emptied, it goes.
    t.unlink(d.ino, "f").unwrap();
    t.rename(ROOT, "e", ROOT, "d", 0).unwrap();
    assert_eq!(t.getattr(ROOT).unwrap().nlink, 4);
    t.check();
}

#[test]
fn enametoolong_at_256_bytes() {
    let mut t = T::new();
    let n255 = "n".repeat(255);
    let n256 = "n".repeat(256);
    let a = t.create(ROOT, &n255);
    assert_eq!(t.lookup(ROOT, &n255).unwrap().ino, a.ino);
    assert_eq!(
        errno(t.create_as(&root(), ROOT, &n256, 0o644)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(t.mkdir_as(&root(), ROOT, &n256, 0o755)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(t.lookup(ROOT, &n256)), libc::ENAMETOOLONG);
    assert_eq!(errno(t.unlink(ROOT, &n256)), libc::ENAMETOOLONG);
    assert_eq!(
        errno(t.rename(ROOT, &n255, ROOT, &n256, 0)),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(t.link(a.ino, ROOT, &n256)), libc::ENAMETOOLONG);
    // Symlink targets: 4095 bytes (4096 with the NUL) at most.
    let long = vec![b'x'; 4096];
    let s = t.fs().symlink(&RC, ROOT, b"s", &long);
    assert_eq!(errno(block_on(s)), libc::ENAMETOOLONG);
    assert_eq!(t.getattr(ROOT).unwrap().size, 255);
    t.check();
}

#[test]
fn emlink_at_link_max() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let d = t.mkdir(ROOT, "d");
    t.poke_inode(f.ino, |i| i.nlink.set(LINK_MAX));
    assert_eq!(errno(t.link(f.ino, ROOT, "g")), libc::EMLINK);
    t.poke_inode(f.ino, |i| i.nlink.set(LINK_MAX - 1));
    t.link(f.ino, ROOT, "g").unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().nlink, LINK_MAX);
    t.poke_inode(d.ino, |i| i.nlink.set(LINK_MAX));
    assert_eq!(
        errno(t.mkdir_as(&root(), d.ino, "sub", 0o755)),
        libc::EMLINK
    );
    t.mkdir(ROOT, "other");
    assert_eq!(
        errno(t.rename(ROOT, "other", d.ino, "sub", 0)),
        libc::EMLINK
    );
    // A file still moves in: it adds no link to the directory.
    t.rename(ROOT, "g", d.ino, "g", 0).unwrap();
}

#[test]
fn einval() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    assert_eq!(
        errno(t.rename(ROOT, "f", ROOT, "g", RENAME_NOREPLACE | RENAME_EXCHANGE)),
        libc::EINVAL
    );
    assert_eq!(errno(t.rename(ROOT, "f", ROOT, "g", 4)), libc::EINVAL);
    assert_eq!(errno(block_on(t.fs().readlink(f.ino))), libc::EINVAL);
    assert_eq!(errno(t.lookup(ROOT, "a/b")), libc::EINVAL);
    assert_eq!(errno(t.rmdir(ROOT, ".")), libc::EINVAL);
    let x = t.fs().set_xattr(&RC, f.ino, b"user.x", b"", 4);
    assert_eq!(errno(block_on(x)), libc::EINVAL);
    let fifo = t.fs().mknod(&RC, ROOT, b"p", libc::S_IFIFO | 0o600, 0);
    let p = block_on(fifo).unwrap();
    let trunc = set_size(1);
    assert_eq!(errno(t.setattr(&root(), p.ino, trunc)), libc::EINVAL);
    let bad = t.fs().mknod(&RC, ROOT, b"q", 0o160000 | 0o644, 0);
    assert_eq!(errno(block_on(bad)), libc::EINVAL);
    t.check();
}

#[test]
fn rename_loops_are_einval_and_ancestor_targets_enotempty() {
    let mut t = T::new();
    let a = t.mkdir(ROOT, "a");
    let b = t.mkdir(a.ino, "b");
    let c = t.mkdir(b.ino, "c");
    assert_eq!(errno(t.rename(ROOT, "a", c.ino, "x", 0)), libc::EINVAL);
    assert_eq!(errno(t.rename(ROOT, "a", a.ino, "x", 0)), libc::EINVAL);
    assert_eq!(errno(t.rename(a.ino, "b", b.ino, "x", 0)), libc::EINVAL);
    // An exchange needs its target first (ENOENT), then the same loop check.
    assert_eq!(
        errno(t.rename(ROOT, "a", c.ino, "x", RENAME_EXCHANGE)),
        libc::ENOENT
    );
    t.create(c.ino, "x");
    assert_eq!(
        errno(t.rename(ROOT, "a", c.ino, "x", RENAME_EXCHANGE)),
        libc::EINVAL
    );
    // The target is an ancestor of the source.
    assert_eq!(errno(t.rename(b.ino, "c", ROOT, "a", 0)), libc::ENOTEMPTY);
    assert_eq!(
        errno(t.rename(b.ino, "c", ROOT, "a", RENAME_EXCHANGE)),
        libc::EINVAL
    );
    // Moving up and sideways is fine.
    t.rename(b.ino, "c", ROOT, "c", 0).unwrap();
    assert_eq!(t.lookup(c.ino, "..").unwrap().ino, ROOT);
    assert_eq!(t.getattr(b.ino).unwrap().nlink, 2);
    assert_eq!(t.getattr(ROOT).unwrap().nlink, 4);
    t.rename(ROOT, "c", b.ino, "c2", 0).unwrap();
    assert_eq!(t.lookup(c.ino, "..").unwrap().ino, b.ino);
    t.check();
}

#[test]
fn rename_replaces_exchanges_and_leaves_hard_links_alone() {
    let mut t = T::new();
    let d1 = t.mkdir(ROOT, "d1");
    let d2 = t.mkdir(ROOT, "d2");
    let f = t.create(d1.ino, "f");
    let g = t.create(d2.ino, "g");
    // Replace: g loses its only link and is deleted.
    t.rename(d1.ino, "f", d2.ino, "g", 0).unwrap();
    assert_eq!(t.lookup(d2.ino, "g").unwrap().ino, f.ino);
    assert_eq!(errno(t.getattr(g.ino)), libc::ENOENT);
    assert!(t.inode_items(g.ino).is_empty());
    // Exchange a directory and a file across directories.
    let sub = t.mkdir(d1.ino, "sub");
    t.rename(d1.ino, "sub", d2.ino, "g", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(t.lookup(d2.ino, "g").unwrap().ino, sub.ino);
    assert_eq!(t.lookup(d1.ino, "sub").unwrap().ino, f.ino);
    assert_eq!(t.lookup(sub.ino, "..").unwrap().ino, d2.ino);
    assert_eq!(t.getattr(d1.ino).unwrap().nlink, 2);
    assert_eq!(t.getattr(d2.ino).unwrap().nlink, 3);
    // Two names of one inode: nothing happens.
    t.link(f.ino, d1.ino, "f2").unwrap();
    t.rename(d1.ino, "sub", d1.ino, "f2", 0).unwrap();
    assert_eq!(t.names(d1.ino), vec!["sub", "f2"]);
    assert_eq!(t.getattr(f.ino).unwrap().nlink, 2);
    // Replacing an empty directory.
    t.mkdir(d1.ino, "e");
    t.rename(d2.ino, "g", d1.ino, "e", 0).unwrap();
    assert_eq!(t.lookup(d1.ino, "e").unwrap().ino, sub.ino);
    assert_eq!(t.getattr(d1.ino).unwrap().nlink, 3);
    assert_eq!(t.getattr(d2.ino).unwrap().nlink, 2);
    t.check();
}

#[test]
fn eperm_and_eacces() {
    let mut t = T::new();
    let (alice, bob) = (user(1000), user(1001));
    let d = t.mkdir(ROOT, "d");
    assert_eq!(errno(t.link(d.ino, ROOT, "d2")), libc::EPERM);
    let f = t.create(ROOT, "f");
    // Directory without write for others: EACCES.
    assert_eq!(errno(t.create_as(&alice, ROOT, "x", 0o644)), libc::EACCES);
    assert_eq!(
        errno(block_on(t.fs().unlink(&alice, ROOT, b"f"))),
        libc::EACCES
    );
    // Without search permission, even lookups fail.
    t.setattr(&root(), d.ino, set_mode(0o700)).unwrap();
    assert_eq!(
        errno(block_on(t.fs().lookup(&alice, d.ino, b"x"))),
        libc::EACCES
    );
    // chmod by someone else: EPERM; chown by the owner: EPERM.
    t.setattr(&root(), f.ino, set_uid(1000)).unwrap();
    let chmod = set_mode(0o600);
    assert_eq!(errno(t.setattr(&bob, f.ino, chmod)), libc::EPERM);
    t.setattr(&alice, f.ino, chmod).unwrap();
    let chown = set_uid(1001);
    assert_eq!(errno(t.setattr(&alice, f.ino, chown)), libc::EPERM);
    // chgrp to one of your groups is fine, to another is not.
    let member = Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![50],
        umask: 0,
    };
    t.setattr(&member, f.ino, set_gid(50)).unwrap();
    assert_eq!(errno(t.setattr(&member, f.ino, set_gid(51))), libc::EPERM);
    // Reading a file without the r bit: EACCES; device nodes: root only.
    assert_eq!(
        errno(block_on(t.fs().open_ino(&bob, f.ino, MAY_READ))),
        libc::EACCES
    );
    let tmp = t.mkdir(ROOT, "tmp");
    t.setattr(&root(), tmp.ino, set_mode(0o777)).unwrap();
    let dev = t
        .fs()
        .mknod(&alice, tmp.ino, b"null", libc::S_IFCHR | 0o666, 0x103);
    assert_eq!(errno(block_on(dev)), libc::EPERM);
    let dir_node = t.fs().mknod(&RC, tmp.ino, b"dir", libc::S_IFDIR | 0o755, 0);
    assert_eq!(errno(block_on(dir_node)), libc::EPERM);
    let dev = t
        .fs()
        .mknod(&RC, tmp.ino, b"null", libc::S_IFCHR | 0o666, 0x103);
    let dev = block_on(dev).unwrap();
    assert_eq!((dev.kind, dev.rdev), (FileType::CharDevice, 0x103));
    // trusted. and security. xattrs are root's to write.
    let g = t.create_as(&alice, tmp.ino, "g", 0o644).unwrap();
    let tx = t.fs().set_xattr(&alice, g.ino, b"trusted.x", b"1", 0);
    assert_eq!(errno(block_on(tx)), libc::EPERM);
    let sx = t.fs().set_xattr(&alice, g.ino, b"security.x", b"1", 0);
    assert_eq!(errno(block_on(sx)), libc::EPERM);
    let ux = t.fs().set_xattr(&bob, g.ino, b"user.x", b"1", 0);
    assert_eq!(errno(block_on(ux)), libc::EACCES);
    t.check();
}

#[test]
fn sticky_directories_give_eperm_where_write_permission_gives_eacces() {
    let mut t = T::new();
    let (alice, bob, carol) = (user(1000), user(1001), user(1002));
    let tmp = t.mkdir(ROOT, "tmp");
    t.setattr(&root(), tmp.ino, set_mode(0o1777)).unwrap();
    t.create_as(&alice, tmp.ino, "a", 0o666).unwrap();
    t.mkdir_as(&alice, tmp.ino, "ad", 0o777).unwrap();
    let fs = t.fs();
    assert_eq!(errno(block_on(fs.unlink(&bob, tmp.ino, b"a"))), libc::EPERM);
    assert_eq!(errno(block_on(fs.rmdir(&bob, tmp.ino, b"ad"))), libc::EPERM);
    assert_eq!(
        errno(block_on(fs.rename(&bob, tmp.ino, b"a", tmp.ino, b"b", 0))),
        libc::EPERM
    );
    // Replacing someone else's file is removing it too.
    block_on(fs.create(&bob, tmp.ino, b"b", 0o666)).unwrap();
    assert_eq!(
        errno(block_on(fs.rename(&bob, tmp.ino, b"b", tmp.ino, b"a", 0))),
        libc::EPERM
    );
    // Not sticky, not writable: EACCES comes first.
    let ro = block_on(fs.mkdir(&alice, ROOT, b"ro", 0o1755));
    assert_eq!(errno(ro), libc::EACCES);
    let ro = block_on(fs.mkdir(&root(), ROOT, b"ro", 0o1755)).unwrap();
    block_on(fs.create(&root(), ro.ino, b"f", 0o666)).unwrap();
    assert_eq!(
        errno(block_on(fs.unlink(&carol, ro.ino, b"f"))),
        libc::EACCES
    );
    // The owner of the file, the owner of the directory and root may.
    block_on(fs.unlink(&alice, tmp.ino, b"a")).unwrap();
    block_on(fs.setattr(&root(), tmp.ino, &set_uid(1002))).unwrap();
    block_on(fs.rmdir(&carol, tmp.ino, b"ad")).unwrap();
    block_on(fs.unlink(&root(), tmp.ino, b"b")).unwrap();
    t.check();
}

#[test]
fn setgid_directories_pass_group_and_setgid_on() {
    let mut t = T::new();
    let alice = Creds {
        uid: 1000,
        gid: 1000,
        groups: vec![],
        umask: 0,
    };
    let shared = t.mkdir(ROOT, "shared");
    t.setattr(
        &root(),
        shared.ino,
        SetAttr {
            mode: Some(0o2777),
            gid: Some(77),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let f = t.create_as(&alice, shared.ino, "f", 0o2755).unwrap();
    assert_eq!((f.uid, f.gid), (1000, 77));
    assert_eq!(
        f.perm(),
        0o755,
        "setgid execution needs membership of the group"
    );
    let d = t.mkdir_as(&alice, shared.ino, "d", 0o755).unwrap();
    assert_eq!((d.gid, d.perm()), (77, 0o2755));
    let dd = t.mkdir_as(&alice, d.ino, "dd", 0o700).unwrap();
    assert_eq!((dd.gid, dd.perm()), (77, 0o2700));
    let plain = t.mkdir_as(&root(), ROOT, "plain", 0o777).unwrap();
    let g = t.create_as(&alice, plain.ino, "g", 0o644).unwrap();
    assert_eq!(g.gid, 1000);
}

#[test]
fn setattr_clears_setuid_like_linux_and_checks_times() {
    let mut t = T::new();
    let (alice, bob) = (user(1000), user(1001));
    let tmp = t.mkdir(ROOT, "tmp");
    t.setattr(&root(), tmp.ino, set_mode(0o777)).unwrap();
    let f = t.create_as(&alice, tmp.ino, "f", 0o6777).unwrap();
    assert_eq!(f.perm(), 0o6777);
    // A truncate by someone else than root drops setuid and setgid (g+x).
    let tr = set_size(10);
    let a = t.setattr(&bob, f.ino, tr).unwrap();
    assert_eq!((a.size, a.perm()), (10, 0o0777));
    // chown drops them even for root.
    t.setattr(&alice, f.ino, set_mode(0o6755)).unwrap();
    let a = t.setattr(&root(), f.ino, set_uid(5)).unwrap();
    assert_eq!((a.uid, a.perm()), (5, 0o0755));
    // Truncation needs write permission unless it comes through a handle.
    t.setattr(&root(), f.ino, set_mode(0o644)).unwrap();
    assert_eq!(errno(t.setattr(&bob, f.ino, tr)), libc::EACCES);
    let via_handle = SetAttr {
        size: Some(3),
        handle_writable: true,
        ..SetAttr::default()
    };
    assert_eq!(t.setattr(&bob, f.ino, via_handle).unwrap().size, 3);
    // Times: explicit ones need the owner, "now" write permission.
    let ts = Timespec::new(5, 6);
    let explicit = SetAttr {
        mtime: Some(ts),
        atime: Some(ts),
        ..SetAttr::default()
    };
    let now = SetAttr {
        times_now: true,
        ..explicit
    };
    assert_eq!(errno(t.setattr(&bob, f.ino, explicit)), libc::EPERM);
    assert_eq!(errno(t.setattr(&bob, f.ino, now)), libc::EACCES);
    t.setattr(&root(), f.ino, set_mode(0o666)).unwrap();
    assert_eq!(errno(t.setattr(&bob, f.ino, explicit)), libc::EPERM);
    let a = t.setattr(&bob, f.ino, now).unwrap();
    assert_eq!((a.mtime, a.atime), (ts, ts));
    assert!(ns(a.ctime) > ns(ts));
    let c = Timespec::new(7, 8);
    let a = t
        .setattr(
            &root(),
            f.ino,
            SetAttr {
                ctime: Some(c),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(a.ctime, c);
}

/// The FUSE writeback cache: the kernel keeps mtime and ctime itself and
/// sends them, as the caller, on a truncate and when it flushes them at
/// close; it checked the caller first, so the engine takes them from
/// anyone (`kernel_times`), where the same explicit times from a
/// frontend that doesn't check are the owner's to set.
#[test]
fn times_the_kernel_stamped_are_set_for_any_caller() {
    let mut t = T::new();
    let (alice, bob) = (user(1000), user(1001));
    let tmp = t.mkdir(ROOT, "tmp");
    t.setattr(&root(), tmp.ino, set_mode(0o777)).unwrap();
    let f = t.create_as(&alice, tmp.ino, "f", 0o666).unwrap();
    let (m, c) = (Timespec::new(-5, 6), Timespec::new(7, 8));
    let stamped = SetAttr {
        mtime: Some(m),
        ctime: Some(c),
        ..SetAttr::default()
    };
    assert_eq!(errno(t.setattr(&bob, f.ino, stamped)), libc::EPERM);
    let kernel = SetAttr {
        kernel_times: true,
        ..stamped
    };
    let a = t.setattr(&bob, f.ino, kernel).unwrap();
    assert_eq!((a.mtime, a.ctime, a.uid), (m, c, 1000));
    // A truncate through a handle with the kernel's stamps; the size's
    // own check still applies to a caller without write permission.
    let tr = SetAttr {
        size: Some(1),
        handle_writable: true,
        ..kernel
    };
    assert_eq!(t.setattr(&bob, f.ino, tr).unwrap().size, 1);
    t.setattr(&alice, f.ino, set_mode(0o644)).unwrap();
    let tr = SetAttr {
        handle_writable: false,
        ..tr
    };
    assert_eq!(errno(t.setattr(&bob, f.ino, tr)), libc::EACCES);
    // Other changes keep their checks.
    let chmod = SetAttr {
        mode: Some(0o600),
        ..kernel
    };
    assert_eq!(errno(t.setattr(&bob, f.ino, chmod)), libc::EPERM);
}

#[test]
fn enodata_erange_e2big_eopnotsupp_for_xattrs() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let fs = t.fs();
    let r = root();
    assert_eq!(
        errno(block_on(fs.get_xattr(&r, f.ino, b"user.none"))),
        libc::ENODATA
    );
    assert_eq!(
        errno(block_on(fs.remove_xattr(&r, f.ino, b"user.none"))),
        libc::ENODATA
    );
    let rep = fs.set_xattr(&r, f.ino, b"user.none", b"v", XATTR_REPLACE);
    assert_eq!(errno(block_on(rep)), libc::ENODATA);
    assert_eq!(errno(block_on(fs.get_xattr(&r, f.ino, b""))), libc::ERANGE);
    let long = [b"user.".as_slice(), &[b'x'; 251]].concat();
    assert_eq!(
        errno(block_on(fs.set_xattr(&r, f.ino, &long, b"", 0))),
        libc::ERANGE
    );
    block_on(fs.set_xattr(&r, f.ino, &long[..255], b"", 0)).unwrap();
    let big = vec![1u8; 65536];
    assert_eq!(
        errno(block_on(fs.set_xattr(&r, f.ino, b"user.big", &big, 0))),
        libc::E2BIG
    );
    let odd = fs.set_xattr(&r, f.ino, b"os2.x", b"", 0);
    assert_eq!(errno(block_on(odd)), libc::EOPNOTSUPP);
    // trusted. is invisible to others than root.
    block_on(fs.set_xattr(&r, f.ino, b"trusted.t", b"v", 0)).unwrap();
    let alice = user(1000);
    assert_eq!(
        errno(block_on(fs.get_xattr(&alice, f.ino, b"trusted.t"))),
        libc::ENODATA
    );
    let names = block_on(fs.list_xattrs(&alice, f.ino)).unwrap();
    assert_eq!(names, vec![long[..255].to_vec()]);
    assert_eq!(block_on(fs.list_xattrs(&r, f.ino)).unwrap().len(), 2);
    // user. xattrs on a symlink: EPERM to set, ENODATA to get.
    let l = block_on(fs.symlink(&r, ROOT, b"l", b"f")).unwrap();
    assert_eq!(
        errno(block_on(fs.set_xattr(&r, l.ino, b"user.x", b"", 0))),
        libc::EPERM
    );
    assert_eq!(
        errno(block_on(fs.get_xattr(&r, l.ino, b"user.x"))),
        libc::ENODATA
    );
    block_on(fs.set_xattr(&r, l.ino, b"trusted.x", b"ok", 0)).unwrap();
    t.check();
}

#[test]
fn eio_for_a_corrupt_inode_item() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    t.vol().upsert(Key::inode(f.ino), b"junk").unwrap();
    assert_eq!(errno(t.getattr(f.ino)), libc::EIO);
    assert_eq!(errno(t.lookup(ROOT, "f")), libc::EIO);
    assert_eq!(errno(t.unlink(ROOT, "f")), libc::EIO);
}

/// Fill the metadata device with raw items until a write fails right
/// after a commit: from then on every item write fails.
fn fill_metadata(t: &mut T) {
    let val = vec![7u8; 800];
    let mut n = 0u64;
    loop {
        let key = Key::new(zone::FS, 1 << 40, item_type::XATTR, n, 0, 0);
        n += 1;
        match t.vol().upsert(key, &val) {
            Ok(()) => continue,
            Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{e}"),
        }
        t.vol().commit().unwrap();
        if t.vol().upsert(key, &val).is_err() {
            return;
        }
        assert!(n < 1_000_000, "never ran out of space");
    }
}

#[test]
fn enospc_when_the_metadata_device_is_full_changes_nothing() {
    let mut t = T::with(fs_opts(), MkfsOptions::default(), 12 << 20);
    let f = t.create(ROOT, "f");
    let d = t.mkdir(ROOT, "d");
    block_on(t.fs().sync()).unwrap();
    fill_metadata(&mut t);
    let before = t.inode_items(ROOT);
    assert_eq!(errno(t.create_as(&root(), ROOT, "g", 0o644)), libc::ENOSPC);
    assert_eq!(errno(t.mkdir_as(&root(), d.ino, "g", 0o755)), libc::ENOSPC);
    assert_eq!(errno(t.rename(ROOT, "f", d.ino, "f", 0)), libc::ENOSPC);
    let x = t.fs().set_xattr(&RC, f.ino, b"user.x", &[1; 3000], 0);
    assert_eq!(errno(block_on(x)), libc::ENOSPC);
    assert_eq!(t.inode_items(ROOT), before);
    assert!(t.vol().read_only().is_none(), "ENOSPC is not a failure");
    assert_eq!(t.names(ROOT), vec!["f", "d"]);
    t.remount();
    assert_eq!(t.names(ROOT), vec!["f", "d"]);
}

/// The whole story: fill the device through the fs, every operation that
/// fails must fail whole, and deleting must free space again (Volume's
/// hold_trans checks an operation's space before its first write and keeps
/// the commit reserve beyond it; operations that mostly delete may use half
/// of that reserve).
#[test]
fn enospc_while_filling_through_the_fs_fails_whole_and_deleting_frees_space() {
    let mut t = T::with(fs_opts(), MkfsOptions::default(), 12 << 20);
    let value = vec![9u8; 20_000];
    let mut made = Vec::new();
    let err = loop {
        let name = format!("f{}", made.len());
        let r = block_on(t.fs().create(&root(), ROOT, name.as_bytes(), 0o644)).and_then(|a| {
            made.push(name);
            block_on(t.fs().set_xattr(&root(), a.ino, b"user.v", &value, 0))
        });
        if let Err(e) = r {
            break e;
        }
        assert!(made.len() < 100_000, "never ran out of space");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(t.vol().read_only().is_none());
    t.check();
    block_on(t.fs().sync()).unwrap();
    for name in made.iter().take(made.len() / 2) {
        t.unlink(ROOT, name).unwrap();
        block_on(t.fs().sync()).unwrap();
    }
    let a = t.create(ROOT, "after");
    block_on(t.fs().set_xattr(&root(), a.ino, b"user.v", &value, 0)).unwrap();
    t.remount();
    assert_eq!(t.names(ROOT).len(), made.len() - made.len() / 2 + 1);
    t.check();
}

#[test]
fn erofs_after_a_failed_commit() {
    let mut t = T::new();
    t.create(ROOT, "f");
    block_on(t.fs().sync()).unwrap();
    t.create(ROOT, "g");
    t.meta.inject(Fault::always(IoOp::Write));
    assert_eq!(errno(block_on(t.fs().sync())), libc::EIO);
    t.meta.clear_faults();
    assert_eq!(errno(t.create_as(&root(), ROOT, "h", 0o644)), libc::EROFS);
    assert_eq!(errno(t.unlink(ROOT, "f")), libc::EROFS);
    let f = t.lookup(ROOT, "f").unwrap();
    let set = set_mode(0o600);
    assert_eq!(errno(t.setattr(&root(), f.ino, set)), libc::EROFS);
    // Reads see the last commit, without g.
    assert_eq!(errno(t.lookup(ROOT, "g")), libc::ENOENT);
}

#[test]
fn format_1_volumes_store_short_inodes() {
    let mkfs_opts = MkfsOptions {
        format_version: Some(1),
        ..MkfsOptions::default()
    };
    let mut t = T::with(fs_opts(), mkfs_opts, 64 << 20);
    let d = t.mkdir(ROOT, "d");
    let f = t.create(d.ino, "f");
    let item = t.vol().lookup(&Key::inode(f.ino)).unwrap().unwrap();
    assert_eq!(item.val.len(), 160);
    assert_eq!(t.getattr(f.ino).unwrap().proj, 0);
    t.remount();
    assert_eq!(t.lookup(d.ino, "f").unwrap().ino, f.ino);
    t.check();
}

// ---------------------------------------------------------------------------
// Readdir, times, seqs, xattrs, symlinks, orphans

#[test]
fn readdir_positions_are_stable_across_unlinks_of_other_entries() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    for i in 0..20 {
        t.create(d.ino, &format!("n{i}"));
    }
    let before = block_on(t.fs().readdir(d.ino, 0, usize::MAX)).unwrap();
    assert_eq!(before.len(), 22);
    assert_eq!(
        (before[0].name.as_slice(), before[0].ino),
        (b".".as_slice(), d.ino)
    );
    assert_eq!(
        (before[1].name.as_slice(), before[1].ino),
        (b"..".as_slice(), ROOT)
    );
    let pos: HashMap<Vec<u8>, u64> = before.iter().map(|e| (e.name.clone(), e.pos)).collect();
    assert_eq!(pos[b"n0".as_slice()], 2);
    // Page through three at a time while entries come and go.
    let page = block_on(t.fs().readdir(d.ino, 0, 5)).unwrap();
    let resume = page.last().unwrap().pos + 1;
    t.unlink(d.ino, "n3").unwrap();
    t.unlink(d.ino, "n2").unwrap();
    t.unlink(d.ino, "n10").unwrap();
    t.create(d.ino, "new");
    let rest = block_on(t.fs().readdir(d.ino, resume, usize::MAX)).unwrap();
    let rest_names: Vec<&[u8]> = rest.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(
        rest_names.first(),
        Some(&b"n4".as_slice()),
        "nothing skipped"
    );
    assert_eq!(rest_names.last(), Some(&b"new".as_slice()));
    assert!(!rest_names.contains(&b"n10".as_slice()));
    let after = block_on(t.fs().readdir(d.ino, 2, usize::MAX)).unwrap();
    for e in &after {
        match pos.get(&e.name) {
            Some(p) => assert_eq!(*p, e.pos, "{:?} moved", e.name),
            None => assert!(e.pos > 21, "new entries go last"),
        }
    }
    t.remount();
    assert_eq!(
        block_on(t.fs().readdir(d.ino, 2, usize::MAX)).unwrap(),
        after
    );
    t.check();
}

#[test]
fn times_follow_posix() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    let f = t.create(d.ino, "f");
    let dir = t.getattr(d.ino).unwrap();
    assert_eq!((f.atime, f.mtime, f.ctime), (f.crtime, f.crtime, f.crtime));
    assert_eq!(
        (dir.mtime, dir.ctime),
        (f.crtime, f.crtime),
        "parent mtime+ctime on create"
    );
    // link: the inode's ctime, the directory's mtime+ctime.
    t.link(f.ino, d.ino, "g").unwrap();
    let (f2, d2) = (t.getattr(f.ino).unwrap(), t.getattr(d.ino).unwrap());
    assert!(ns(f2.ctime) > ns(f.ctime) && f2.mtime == f.mtime);
    assert_eq!((d2.mtime, d2.ctime), (f2.ctime, f2.ctime));
    // unlink.
    t.unlink(d.ino, "g").unwrap();
    let (f3, d3) = (t.getattr(f.ino).unwrap(), t.getattr(d.ino).unwrap());
    assert!(ns(f3.ctime) > ns(f2.ctime) && ns(d3.mtime) > ns(d2.mtime) && d3.ctime == d3.mtime);
    // rename: both directories and the inode's ctime.
    t.rename(d.ino, "f", ROOT, "f", 0).unwrap();
    let (f4, d4, r4) = (
        t.getattr(f.ino).unwrap(),
        t.getattr(d.ino).unwrap(),
        t.getattr(ROOT).unwrap(),
    );
    assert!(ns(f4.ctime) > ns(f3.ctime) && ns(d4.mtime) > ns(d3.mtime) && r4.mtime == d4.mtime);
    assert_eq!(f4.mtime, f.mtime, "a rename doesn't change the content");
    // xattr change: ctime, not mtime.
    block_on(t.fs().set_xattr(&root(), f.ino, b"user.x", b"1", 0)).unwrap();
    let f5 = t.getattr(f.ino).unwrap();
    assert!(ns(f5.ctime) > ns(f4.ctime) && f5.mtime == f.mtime);
    // truncate to a new size: mtime and ctime; chmod: ctime.
    let f6 = t.setattr(&root(), f.ino, set_size(9)).unwrap();
    assert!(ns(f6.mtime) > ns(f5.ctime) && f6.ctime == f6.mtime);
    let f7 = t.setattr(&root(), f.ino, set_mode(0o600)).unwrap();
    assert!(ns(f7.ctime) > ns(f6.ctime) && f7.mtime == f6.mtime);
}

fn index_items(t: &mut T, ty: u8) -> Vec<(u64, u64)> {
    let first = Key::new(zone::INODE_INDEX, 0, ty, 0, 0, 0);
    let last = Key::new(zone::INODE_INDEX, 0, ty, u64::MAX, u64::MAX, u8::MAX);
    t.vol()
        .range(&first, &last, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| (i.key.second, i.key.third))
        .collect()
}

#[test]
fn meta_seq_and_data_seq_index_items_follow_changes() {
    let mut t = T::new();
    let seq1 = t.vol().txn_seq();
    let f = t.create(ROOT, "f");
    assert_eq!((f.meta_seq, f.data_seq, f.version), (seq1, seq1, 1));
    assert!(t.item_exists(meta_seq_index_key(seq1, f.ino)));
    assert!(t.item_exists(data_seq_index_key(seq1, f.ino)));
    // More changes in the same transaction keep the seq and the item.
    let a = t.setattr(&root(), f.ino, set_mode(0o600)).unwrap();
    assert_eq!((a.meta_seq, a.version), (seq1, 2));
    let committed = block_on(t.fs().sync()).unwrap();
    assert_eq!(committed, seq1);
    let seq2 = t.vol().txn_seq();
    assert!(seq2 > seq1);
    // A metadata change in the next transaction moves meta_seq only.
    let a = t.setattr(&root(), f.ino, set_uid(3)).unwrap();
    assert_eq!((a.meta_seq, a.data_seq, a.version), (seq2, seq1, 3));
    assert!(!t.item_exists(meta_seq_index_key(seq1, f.ino)));
    assert!(t.item_exists(meta_seq_index_key(seq2, f.ino)));
    assert!(t.item_exists(data_seq_index_key(seq1, f.ino)));
    // A truncate to a new size changes the content: data_seq and
    // data_version move too; to the same size, nothing of the data.
    let dv = a.data_version;
    let a = t.setattr(&root(), f.ino, set_size(100)).unwrap();
    assert_eq!((a.data_seq, a.data_version), (seq2, dv + 1));
    assert!(!t.item_exists(data_seq_index_key(seq1, f.ino)));
    assert!(t.item_exists(data_seq_index_key(seq2, f.ino)));
    block_on(t.fs().sync()).unwrap();
    let a = t.setattr(&root(), f.ino, set_size(100)).unwrap();
    assert_eq!((a.data_seq, a.data_version), (seq2, dv + 1));
    // The parent's entry change moved the root's meta_seq at creation.
    let r = t.getattr(ROOT).unwrap();
    assert_eq!(r.meta_seq, seq1);
    // walk-inodes over meta_seq: every inode once, in seq order.
    let metas = index_items(&mut t, item_type::INODE_INDEX_META_SEQ);
    let seq3 = t.vol().txn_seq();
    assert_eq!(metas, vec![(seq1, ROOT), (seq3, f.ino)]);
    // Deleting the inode deletes its index items.
    t.unlink(ROOT, "f").unwrap();
    let metas = index_items(&mut t, item_type::INODE_INDEX_META_SEQ);
    assert_eq!(metas, vec![(seq3, ROOT)]);
    assert_eq!(
        index_items(&mut t, item_type::INODE_INDEX_DATA_SEQ).len(),
        1
    );
    t.check();
}

fn collide(name: &[u8]) -> u64 {
    (name.len() % 2) as u64
}

#[test]
fn hash_collisions_are_told_apart_by_position_and_id() {
    let opts = FsOptions {
        name_hash: collide,
        ..fs_opts()
    };
    let mut t = T::with(opts, MkfsOptions::default(), 64 << 20);
    let names = ["aa", "bb", "cc", "dd", "e", "f"];
    let inos: Vec<u64> = names.iter().map(|n| t.create(ROOT, n).ino).collect();
    for (n, ino) in names.iter().zip(&inos) {
        assert_eq!(t.lookup(ROOT, n).unwrap().ino, *ino);
    }
    assert_eq!(errno(t.create_as(&root(), ROOT, "cc", 0o644)), libc::EEXIST);
    assert_eq!(errno(t.lookup(ROOT, "zz")), libc::ENOENT);
    t.unlink(ROOT, "bb").unwrap();
    assert_eq!(t.lookup(ROOT, "cc").unwrap().ino, inos[2]);
    t.rename(ROOT, "cc", ROOT, "dd", 0).unwrap();
    assert_eq!(t.lookup(ROOT, "dd").unwrap().ino, inos[2]);
    assert_eq!(t.names(ROOT), vec!["aa", "e", "f", "dd"]);
    // Xattr names that collide, with values over several parts.
    let f = inos[0];
    let fs = t.fs();
    let r = root();
    let vals: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 1000 * (i + 1)]).collect();
    let xnames: [&[u8]; 4] = [b"user.aa", b"user.bb", b"user.c", b"user.d"];
    for (n, v) in xnames.iter().zip(&vals) {
        block_on(fs.set_xattr(&r, f, n, v, XATTR_CREATE)).unwrap();
    }
    for (n, v) in xnames.iter().zip(&vals) {
        assert_eq!(&block_on(fs.get_xattr(&r, f, n)).unwrap(), v);
    }
    block_on(fs.remove_xattr(&r, f, b"user.aa")).unwrap();
    assert_eq!(block_on(fs.get_xattr(&r, f, b"user.bb")).unwrap(), vals[1]);
    let mut listed = block_on(fs.list_xattrs(&r, f)).unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![b"user.bb".to_vec(), b"user.c".to_vec(), b"user.d".to_vec()]
    );
    t.check();
}

#[test]
fn xattrs_up_to_65535_bytes_round_trip_in_parts() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let r = root();
    let big: Vec<u8> = (0..65535u32).map(|i| (i * 31 % 251) as u8).collect();
    let fs = t.fs();
    block_on(fs.set_xattr(&r, f.ino, b"user.big", &big, 0)).unwrap();
    let parts = t
        .inode_items(f.ino)
        .iter()
        .filter(|k| k.ty == item_type::XATTR)
        .count();
    assert_eq!(parts, 74);
    t.remount();
    let fs = t.fs();
    assert_eq!(block_on(fs.get_xattr(&r, f.ino, b"user.big")).unwrap(), big);
    // Replacing with a smaller value deletes the parts it no longer needs.
    block_on(fs.set_xattr(&r, f.ino, b"user.big", b"small", XATTR_REPLACE)).unwrap();
    assert_eq!(
        block_on(fs.get_xattr(&r, f.ino, b"user.big")).unwrap(),
        b"small"
    );
    let parts = t
        .inode_items(f.ino)
        .iter()
        .filter(|k| k.ty == item_type::XATTR)
        .count();
    assert_eq!(parts, 1);
    let fs = t.fs();
    block_on(fs.set_xattr(&r, f.ino, b"user.empty", b"", 0)).unwrap();
    assert_eq!(
        block_on(fs.get_xattr(&r, f.ino, b"user.empty")).unwrap(),
        b""
    );
    block_on(fs.set_xattr(&r, f.ino, ACCESS, &named_acl(), 0)).unwrap();
    assert_eq!(block_on(fs.list_xattrs(&r, f.ino)).unwrap().len(), 3);
    // Unlinking the file deletes every part.
    t.unlink(ROOT, "f").unwrap();
    assert!(t.inode_items(f.ino).is_empty());
    t.check();
}

#[test]
fn symlink_targets_up_to_4095_bytes_round_trip() {
    let mut t = T::new();
    let r = root();
    for (name, len) in [("s1", 1usize), ("s896", 895), ("s897", 896), ("max", 4095)] {
        let target: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let l = block_on(t.fs().symlink(&r, ROOT, name.as_bytes(), &target)).unwrap();
        assert_eq!(
            (l.kind, l.size, l.perm()),
            (FileType::Symlink, len as u64, 0o777)
        );
        assert_eq!(block_on(t.fs().readlink(l.ino)).unwrap(), target);
    }
    t.remount();
    let max = t.lookup(ROOT, "max").unwrap();
    assert_eq!(block_on(t.fs().readlink(max.ino)).unwrap().len(), 4095);
    let parts = t
        .inode_items(max.ino)
        .iter()
        .filter(|k| k.ty == item_type::SYMLINK)
        .count();
    assert_eq!(parts, 5);
    t.unlink(ROOT, "max").unwrap();
    assert!(t.inode_items(max.ino).is_empty());
    t.check();
}

#[test]
fn an_unlinked_open_file_lives_until_release() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    block_on(t.fs().open_ino(&root(), f.ino, MAY_READ | MAY_WRITE)).unwrap();
    block_on(t.fs().open_ino(&root(), f.ino, MAY_READ)).unwrap();
    t.unlink(ROOT, "f").unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().nlink, 0);
    assert!(t.item_exists(orphan_key(1, f.ino)));
    t.check();
    block_on(t.fs().release(f.ino)).unwrap();
    assert!(t.getattr(f.ino).is_ok(), "one handle left");
    block_on(t.fs().release(f.ino)).unwrap();
    assert_eq!(errno(t.getattr(f.ino)), libc::ENOENT);
    assert!(!t.item_exists(orphan_key(1, f.ino)));
    assert!(t.inode_items(f.ino).is_empty());
    assert_eq!(errno(block_on(t.fs().release(f.ino))), libc::EINVAL);
    // Released while linked: nothing is deleted.
    let g = t.create(ROOT, "g");
    block_on(t.fs().open_ino(&root(), g.ino, MAY_READ)).unwrap();
    block_on(t.fs().release(g.ino)).unwrap();
    assert_eq!(t.getattr(g.ino).unwrap().nlink, 1);
    t.check();
}

#[test]
fn orphans_left_by_a_crash_are_deleted_at_mount() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    block_on(t.fs().set_xattr(&root(), f.ino, b"user.x", &[1; 2000], 0)).unwrap();
    let d = t.mkdir(ROOT, "d");
    let keep = t.create(ROOT, "keep");
    block_on(t.fs().open_ino(&root(), f.ino, MAY_READ)).unwrap();
    block_on(t.fs().open_ino(&root(), d.ino, MAY_READ)).unwrap();
    block_on(t.fs().open_ino(&root(), keep.ino, MAY_READ)).unwrap();
    t.unlink(ROOT, "f").unwrap();
    t.rmdir(ROOT, "d").unwrap();
    assert!(!t.inode_items(f.ino).is_empty());
    let seq = t.getattr(f.ino).unwrap().meta_seq;
    t.crash_after_commit();
    t.mount();
    assert_eq!(errno(t.getattr(f.ino)), libc::ENOENT);
    assert_eq!(errno(t.getattr(d.ino)), libc::ENOENT);
    assert!(t.inode_items(f.ino).is_empty());
    assert!(t.inode_items(d.ino).is_empty());
    assert!(!t.item_exists(orphan_key(1, f.ino)));
    assert!(!t.item_exists(meta_seq_index_key(seq, f.ino)));
    assert_eq!(t.getattr(keep.ino).unwrap().nlink, 1);
    // The cleanup was committed: it survives another crash.
    let vol = t.fs.take().unwrap().into_store();
    drop(vol);
    t.mount();
    assert!(t.inode_items(f.ino).is_empty());
    t.check();
}

#[test]
fn statfs_passes_the_servers_counts_through() {
    let mut t = T::new();
    let s = block_on(t.fs().statfs()).unwrap();
    assert!(s.free_meta_blocks > 0 && s.free_meta_blocks < s.total_meta_blocks);
    assert!(s.total_data_blocks > 0);
    t.create(ROOT, "f");
    assert!(block_on(t.fs().statfs()).unwrap().next_ino > s.next_ino || s.next_ino > ROOT);
}

/// statfs's inode count (scoutfs's: the super block's plus the log trees'
/// deltas plus the open transaction's) is the number of inodes at every
/// step: creates, hard links, unlinks, an O_TMPFILE, an unlinked open
/// file, commits, a merge into the fs root, a remount, and a crash with a
/// tmpfile open (mount deletes the orphan). `check` agrees (it counts the
/// inode items).
#[test]
fn statfs_counts_inodes_through_commits_merges_crashes() {
    let mut t = T::new();
    let count = |t: &mut T| block_on(t.fs().statfs()).unwrap().inode_count;
    assert_eq!(count(&mut t), 1, "the root");
    let d = t.mkdir(ROOT, "d").ino;
    let files: Vec<u64> = (0..10).map(|i| t.create(d, &format!("f{i}")).ino).collect();
    t.link(files[0], ROOT, "hard").unwrap();
    assert_eq!(count(&mut t), 12);
    t.commit();
    assert_eq!(count(&mut t), 12);
    for i in 1..4 {
        t.unlink(d, &format!("f{i}")).unwrap();
    }
    assert_eq!(count(&mut t), 9);
    let tmp = block_on(t.fs().tmpfile(&root(), d, 0o600)).unwrap().ino;
    assert_eq!(count(&mut t), 10);
    block_on(t.fs().release(tmp)).unwrap();
    assert_eq!(count(&mut t), 9);
    block_on(t.fs().open_ino(&root(), files[4], MAY_READ)).unwrap();
    t.unlink(d, "f4").unwrap();
    assert_eq!(count(&mut t), 9, "unlinked but open");
    block_on(t.fs().release(files[4])).unwrap();
    assert_eq!(count(&mut t), 8);
    t.vol().merge().unwrap();
    assert_eq!(t.vol().super_block().inode_count.get(), 8, "merged");
    assert_eq!(count(&mut t), 8);
    t.check();
    t.remount();
    assert_eq!(count(&mut t), 8);
    block_on(t.fs().tmpfile(&root(), d, 0o600)).unwrap();
    assert_eq!(count(&mut t), 9);
    t.crash_after_commit();
    t.mount();
    assert_eq!(count(&mut t), 8, "the orphaned tmpfile is gone");
    t.check();
}

// ---------------------------------------------------------------------------
// POSIX ACLs

const ACCESS: &[u8] = b"system.posix_acl_access";
const DEFAULT: &[u8] = b"system.posix_acl_default";
const UNDEF: u32 = u32::MAX;
const USER_OBJ: u16 = 0x01;
const NAMED_USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const NAMED_GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// An ACL xattr value, built by hand (not by the engine's encoder):
/// version 2, then (tag, perm, id) entries, little-endian.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// user::rw- user:2000:rw- user:2001:r-- group::r-- group:300:rw-
/// mask::rw- other::---
fn named_acl() -> Vec<u8> {
    acl_value(&[
        (USER_OBJ, 6, UNDEF),
        (NAMED_USER, 6, 2000),
        (NAMED_USER, 4, 2001),
        (GROUP_OBJ, 4, UNDEF),
        (NAMED_GROUP, 6, 300),
        (MASK, 6, UNDEF),
        (OTHER, 0, UNDEF),
    ])
}

fn who(uid: u32, gid: u32, groups: &[u32]) -> Creds {
    Creds {
        uid,
        gid,
        groups: groups.to_vec(),
        umask: 0,
    }
}

fn with_umask(c: Creds, umask: u32) -> Creds {
    Creds { umask, ..c }
}

impl T {
    fn set_acl(&mut self, c: &Creds, ino: u64, name: &[u8], v: &[u8]) -> Result<(), FsError> {
        block_on(self.fs().set_xattr(c, ino, name, v, 0))
    }

    fn get_acl(&mut self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        block_on(self.fs().get_xattr(&root(), ino, name))
    }

    fn access(&mut self, c: &Creds, ino: u64, mask: u32) -> Result<(), FsError> {
        block_on(self.fs().access(c, ino, mask))
    }

    fn xattr_items(&mut self, ino: u64) -> usize {
        self.inode_items(ino)
            .iter()
            .filter(|k| k.ty == item_type::XATTR)
            .count()
    }

    /// A regular file in `dir` owned by `uid`:`gid` with `perm`.
    fn owned_file(&mut self, dir: u64, name: &str, uid: u32, gid: u32, perm: u32) -> Attr {
        let f = self.create(dir, name);
        let set = SetAttr {
            mode: Some(perm),
            uid: Some(uid),
            gid: Some(gid),
            ..SetAttr::default()
        };
        self.setattr(&root(), f.ino, set).unwrap()
    }
}

#[test]
fn access_acl_round_trips_and_sets_the_mode() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    // The unnamed entries' ids are ignored and read back undefined.
    let loose = acl_value(&[
        (USER_OBJ, 6, 0),
        (NAMED_USER, 6, 2000),
        (NAMED_USER, 4, 2001),
        (GROUP_OBJ, 4, 7),
        (NAMED_GROUP, 6, 300),
        (MASK, 6, 0),
        (OTHER, 0, 0),
    ]);
    let before = t.getattr(f.ino).unwrap();
    t.set_acl(&who(1000, 100, &[]), f.ino, ACCESS, &loose)
        .unwrap();
    let a = t.getattr(f.ino).unwrap();
    assert_eq!(
        a.perm(),
        0o660,
        "owner rw-, group bits from the mask, other ---"
    );
    assert!(ns(a.ctime) > ns(before.ctime));
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), named_acl());
    let names = block_on(t.fs().list_xattrs(&root(), f.ino)).unwrap();
    assert_eq!(names, vec![ACCESS.to_vec()]);
    t.remount();
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), named_acl());
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o660);
    // Replacing it keeps one xattr.
    let other = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (GROUP_OBJ, 0, UNDEF),
        (NAMED_GROUP, 5, 301),
        (MASK, 5, UNDEF),
        (OTHER, 4, UNDEF),
    ]);
    t.set_acl(&root(), f.ino, ACCESS, &other).unwrap();
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), other);
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o754);
    assert_eq!(t.xattr_items(f.ino), 1);
    t.check();
}

#[test]
fn malformed_acls_are_refused_and_change_nothing() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    let base = [
        (USER_OBJ, 6, UNDEF),
        (GROUP_OBJ, 4, UNDEF),
        (OTHER, 4, UNDEF),
    ];
    let bad: Vec<Vec<u8>> = vec![
        vec![2, 0, 0],
        [acl_value(&base), vec![0; 3]].concat(),
        acl_value(&[(USER_OBJ, 6, UNDEF), (GROUP_OBJ, 4, UNDEF)]),
        acl_value(&[
            (GROUP_OBJ, 4, UNDEF),
            (USER_OBJ, 6, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (USER_OBJ, 6, UNDEF),
            (GROUP_OBJ, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        acl_value(&[
            (USER_OBJ, 8, UNDEF),
            (GROUP_OBJ, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (GROUP_OBJ, 4, UNDEF),
            (0x40, 4, UNDEF),
        ]),
        // A named entry without a mask.
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (NAMED_USER, 4, 5),
            (GROUP_OBJ, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        // Named ids out of order, repeated, undefined.
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (NAMED_USER, 4, 6),
            (NAMED_USER, 4, 5),
            (GROUP_OBJ, 4, UNDEF),
            (MASK, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (GROUP_OBJ, 4, UNDEF),
            (NAMED_GROUP, 4, 5),
            (NAMED_GROUP, 2, 5),
            (MASK, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
        acl_value(&[
            (USER_OBJ, 6, UNDEF),
            (NAMED_USER, 4, UNDEF),
            (GROUP_OBJ, 4, UNDEF),
            (MASK, 4, UNDEF),
            (OTHER, 4, UNDEF),
        ]),
    ];
    let owner = who(1000, 100, &[]);
    for v in &bad {
        let r = t.set_acl(&owner, f.ino, ACCESS, v);
        assert_eq!(errno(r), libc::EINVAL, "{v:?}");
        let d = t.lookup(ROOT, ".").unwrap();
        let r = t.set_acl(&root(), d.ino, DEFAULT, v);
        assert_eq!(errno(r), libc::EINVAL, "{v:?}");
    }
    // Another version is unsupported, as Linux.
    let mut v1 = acl_value(&base);
    v1[0] = 1;
    assert_eq!(
        errno(t.set_acl(&owner, f.ino, ACCESS, &v1)),
        libc::EOPNOTSUPP
    );
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o644);
    assert_eq!(t.xattr_items(f.ino), 0);
    assert_eq!(t.xattr_items(ROOT), 0);
    t.check();
}

#[test]
fn an_acl_the_mode_can_say_is_not_stored() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    let owner = who(1000, 100, &[]);
    let plain = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (GROUP_OBJ, 5, UNDEF),
        (OTHER, 0, UNDEF),
    ]);
    t.set_acl(&owner, f.ino, ACCESS, &plain).unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o750);
    assert_eq!(t.xattr_items(f.ino), 0);
    assert_eq!(errno(t.get_acl(f.ino, ACCESS)), libc::ENODATA);
    // Over a stored ACL, an equivalent one removes it.
    t.set_acl(&owner, f.ino, ACCESS, &named_acl()).unwrap();
    assert_eq!(t.xattr_items(f.ino), 1);
    t.set_acl(&owner, f.ino, ACCESS, &plain).unwrap();
    assert_eq!(t.xattr_items(f.ino), 0);
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o750);
    // An ACL of no entries, or no value, removes too.
    t.set_acl(&owner, f.ino, ACCESS, &named_acl()).unwrap();
    t.set_acl(&owner, f.ino, ACCESS, &acl_value(&[])).unwrap();
    assert_eq!(t.xattr_items(f.ino), 0);
    t.set_acl(&owner, f.ino, ACCESS, &named_acl()).unwrap();
    t.set_acl(&owner, f.ino, ACCESS, b"").unwrap();
    assert_eq!(t.xattr_items(f.ino), 0);
    t.check();
}

#[test]
fn removing_the_access_acl_keeps_the_mode() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    let owner = who(1000, 100, &[]);
    t.set_acl(&owner, f.ino, ACCESS, &named_acl()).unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o660);
    block_on(t.fs().remove_xattr(&owner, f.ino, ACCESS)).unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o660);
    assert_eq!(t.xattr_items(f.ino), 0);
    // Removing an absent ACL succeeds (as ext4 and xfs), others don't.
    block_on(t.fs().remove_xattr(&owner, f.ino, ACCESS)).unwrap();
    block_on(t.fs().remove_xattr(&owner, f.ino, DEFAULT)).unwrap();
    assert_eq!(
        errno(block_on(t.fs().remove_xattr(&owner, f.ino, b"user.x"))),
        libc::ENODATA
    );
    t.check();
}

#[test]
fn chmod_keeps_the_access_acl_in_step() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    let owner = who(1000, 100, &[]);
    t.set_acl(&owner, f.ino, ACCESS, &named_acl()).unwrap();
    t.setattr(&owner, f.ino, set_mode(0o751)).unwrap();
    let want = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (NAMED_USER, 6, 2000),
        (NAMED_USER, 4, 2001),
        (GROUP_OBJ, 4, UNDEF),
        (NAMED_GROUP, 6, 300),
        (MASK, 5, UNDEF),
        (OTHER, 1, UNDEF),
    ]);
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), want);
    // With a truncation in the same setattr, both land.
    block_on(t.fs().write(&root(), f.ino, 0, &[1u8; 10000])).unwrap();
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(10),
        ..SetAttr::default()
    };
    let a = t.setattr(&root(), f.ino, set).unwrap();
    assert_eq!((a.perm(), a.size), (0o600, 10));
    let want = acl_value(&[
        (USER_OBJ, 6, UNDEF),
        (NAMED_USER, 6, 2000),
        (NAMED_USER, 4, 2001),
        (GROUP_OBJ, 4, UNDEF),
        (NAMED_GROUP, 6, 300),
        (MASK, 0, UNDEF),
        (OTHER, 0, UNDEF),
    ]);
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), want);
    // A chown leaves the ACL alone.
    t.setattr(&root(), f.ino, set_uid(1001)).unwrap();
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), want);
    t.check();
}

#[test]
fn only_the_owner_or_root_sets_acls() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o666);
    let d = t.mkdir(ROOT, "d");
    t.setattr(&root(), d.ino, set_uid(1000)).unwrap();
    let other = who(2000, 100, &[]);
    for (ino, name) in [(f.ino, ACCESS), (d.ino, ACCESS), (d.ino, DEFAULT)] {
        assert_eq!(
            errno(t.set_acl(&other, ino, name, &named_acl())),
            libc::EPERM
        );
        assert_eq!(
            errno(block_on(t.fs().remove_xattr(&other, ino, name))),
            libc::EPERM
        );
    }
    // Anyone reads them.
    t.set_acl(&root(), f.ino, ACCESS, &named_acl()).unwrap();
    let got = block_on(t.fs().get_xattr(&other, f.ino, ACCESS)).unwrap();
    assert_eq!(got, named_acl());
    // A default ACL belongs on a directory: EACCES elsewhere (before the
    // owner check), and removing one from a file is a no-op.
    for c in [root(), other.clone()] {
        assert_eq!(
            errno(t.set_acl(&c, f.ino, DEFAULT, &named_acl())),
            libc::EACCES
        );
        block_on(t.fs().remove_xattr(&c, f.ino, DEFAULT)).unwrap();
    }
    t.set_acl(&who(1000, 1000, &[]), d.ino, DEFAULT, &named_acl())
        .unwrap();
    // Symlinks have none.
    let l = block_on(t.fs().symlink(&root(), ROOT, b"l", b"f")).unwrap();
    assert_eq!(
        errno(t.set_acl(&root(), l.ino, ACCESS, &named_acl())),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(t.get_acl(l.ino, ACCESS)), libc::EOPNOTSUPP);
    t.check();
}

#[test]
fn setting_an_access_acl_drops_setgid_outside_the_group() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 50, 0o2775);
    t.set_acl(&who(1000, 1000, &[50]), f.ino, ACCESS, &named_acl())
        .unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o2660);
    t.setattr(&root(), f.ino, set_mode(0o2775)).unwrap();
    t.set_acl(&who(1000, 1000, &[]), f.ino, ACCESS, &named_acl())
        .unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o660);
    t.setattr(&root(), f.ino, set_mode(0o2775)).unwrap();
    t.set_acl(&root(), f.ino, ACCESS, &named_acl()).unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o2660);
    t.check();
}

#[test]
fn new_inodes_inherit_the_default_acl_and_ignore_the_umask() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    t.setattr(&root(), d.ino, set_mode(0o777)).unwrap();
    // user::rwx user:2000:rwx group::r-x mask::rwx other::r-x
    let default = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 7, UNDEF),
        (OTHER, 5, UNDEF),
    ]);
    t.set_acl(&root(), d.ino, DEFAULT, &default).unwrap();
    assert_eq!(
        t.getattr(d.ino).unwrap().perm(),
        0o777,
        "a default ACL leaves the mode"
    );
    let c = with_umask(who(1000, 1000, &[]), 0o077);

    let f = t.create_as(&c, d.ino, "f", 0o666).unwrap();
    assert_eq!(f.perm(), 0o664, "the umask is not applied");
    let access = acl_value(&[
        (USER_OBJ, 6, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 6, UNDEF),
        (OTHER, 4, UNDEF),
    ]);
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), access);
    assert_eq!(errno(t.get_acl(f.ino, DEFAULT)), libc::ENODATA);

    let fifo = block_on(t.fs().mknod(&c, d.ino, b"p", libc::S_IFIFO | 0o640, 0)).unwrap();
    assert_eq!(fifo.perm(), 0o640);
    assert!(t.get_acl(fifo.ino, ACCESS).is_ok());

    let sub = t.mkdir_as(&c, d.ino, "sub", 0o777).unwrap();
    assert_eq!(sub.perm(), 0o775);
    let access = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 7, UNDEF),
        (OTHER, 5, UNDEF),
    ]);
    assert_eq!(t.get_acl(sub.ino, ACCESS).unwrap(), access);
    assert_eq!(t.get_acl(sub.ino, DEFAULT).unwrap(), default);
    // ...and passes it on.
    let g = t.create_as(&c, sub.ino, "g", 0o600).unwrap();
    assert_eq!(g.perm(), 0o600);
    let access = acl_value(&[
        (USER_OBJ, 6, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 0, UNDEF),
        (OTHER, 0, UNDEF),
    ]);
    assert_eq!(t.get_acl(g.ino, ACCESS).unwrap(), access);

    // Symlinks take nothing.
    let l = block_on(t.fs().symlink(&c, d.ino, b"l", b"f")).unwrap();
    assert_eq!(l.perm(), 0o777);
    assert_eq!(t.xattr_items(l.ino), 0);

    // A minimal default ACL gives no access ACL, only the mode, and still
    // keeps the umask off.
    let e = t.mkdir(ROOT, "e");
    t.setattr(&root(), e.ino, set_mode(0o777)).unwrap();
    let minimal = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (GROUP_OBJ, 5, UNDEF),
        (OTHER, 0, UNDEF),
    ]);
    t.set_acl(&root(), e.ino, DEFAULT, &minimal).unwrap();
    let h = t.create_as(&c, e.ino, "h", 0o666).unwrap();
    assert_eq!(h.perm(), 0o640);
    assert_eq!(t.xattr_items(h.ino), 0);
    t.remount();
    assert_eq!(t.get_acl(sub.ino, DEFAULT).unwrap(), default);
    t.check();
}

#[test]
fn the_umask_applies_without_a_default_acl() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    t.setattr(&root(), d.ino, set_mode(0o777)).unwrap();
    let c = with_umask(who(1000, 1000, &[]), 0o027);
    assert_eq!(t.create_as(&c, d.ino, "f", 0o666).unwrap().perm(), 0o640);
    assert_eq!(t.mkdir_as(&c, d.ino, "s", 0o777).unwrap().perm(), 0o750);
    let p = block_on(t.fs().mknod(&c, d.ino, b"p", libc::S_IFIFO | 0o666, 0)).unwrap();
    assert_eq!(p.perm(), 0o640);
    let l = block_on(t.fs().symlink(&c, d.ino, b"l", b"f")).unwrap();
    assert_eq!(l.perm(), 0o777);
    // Only the rwx bits of a umask count.
    let c = with_umask(who(1000, 1000, &[]), 0o7022);
    let s = t.mkdir_as(&c, d.ino, "t", 0o1777).unwrap();
    assert_eq!(s.perm(), 0o1755);
    t.check();
}

#[test]
fn named_entries_and_the_mask_decide_access() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    t.set_acl(&root(), f.ino, ACCESS, &named_acl()).unwrap();
    let rw = MAY_READ | MAY_WRITE;
    // Named users: 2000 rw-, 2001 r--.
    assert_eq!(t.access(&who(2000, 2000, &[]), f.ino, rw), Ok(()));
    assert_eq!(t.access(&who(2001, 2001, &[]), f.ino, MAY_READ), Ok(()));
    assert_eq!(
        errno(t.access(&who(2001, 2001, &[]), f.ino, MAY_WRITE)),
        libc::EACCES
    );
    // Owning group r--; named group 300 rw-: any group granting all wins.
    assert_eq!(t.access(&who(2002, 100, &[]), f.ino, MAY_READ), Ok(()));
    assert_eq!(
        errno(t.access(&who(2002, 100, &[]), f.ino, MAY_WRITE)),
        libc::EACCES
    );
    assert_eq!(t.access(&who(2002, 100, &[300]), f.ino, rw), Ok(()));
    // A matching group that grants nothing shuts OTHER out; OTHER is ---.
    assert_eq!(
        errno(t.access(&who(2003, 2003, &[]), f.ino, MAY_READ)),
        libc::EACCES
    );
    // The owner goes by USER_OBJ, root by its overrides.
    assert_eq!(t.access(&who(1000, 7, &[]), f.ino, rw), Ok(()));
    assert_eq!(t.access(&root(), f.ino, rw), Ok(()));
    // open checks the same way.
    let bob = who(2000, 2000, &[]);
    block_on(t.fs().open_ino(&bob, f.ino, rw)).unwrap();
    block_on(t.fs().release(f.ino)).unwrap();

    // chmod g-w lowers the mask: 2000 and group 300 lose write.
    t.setattr(&root(), f.ino, set_mode(0o640)).unwrap();
    assert_eq!(errno(t.access(&bob, f.ino, MAY_WRITE)), libc::EACCES);
    assert_eq!(t.access(&bob, f.ino, MAY_READ), Ok(()));
    assert_eq!(
        errno(t.access(&who(2002, 100, &[300]), f.ino, MAY_WRITE)),
        libc::EACCES
    );
    assert_eq!(
        errno(block_on(t.fs().open_ino(&bob, f.ino, rw))),
        libc::EACCES
    );
    // With the group bits (the mask) all off, the ACL isn't consulted:
    // others' bits count for everyone but the owner, as in Linux.
    t.setattr(&root(), f.ino, set_mode(0o604)).unwrap();
    assert_eq!(t.access(&bob, f.ino, MAY_READ), Ok(()));
    t.check();
}

#[test]
fn directory_acls_decide_search_create_and_delete() {
    let mut t = T::new();
    let d = t.mkdir(ROOT, "d");
    t.setattr(&root(), d.ino, set_mode(0o750)).unwrap();
    t.create(d.ino, "victim");
    let bob = who(2000, 2000, &[]);
    let eve = who(2001, 2001, &[]);
    assert_eq!(errno(t.create_as(&bob, d.ino, "x", 0o644)), libc::EACCES);
    // user:2000:rwx group::r-x mask::rwx other::---
    let acl = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 7, UNDEF),
        (OTHER, 0, UNDEF),
    ]);
    t.set_acl(&root(), d.ino, ACCESS, &acl).unwrap();
    assert_eq!(t.getattr(d.ino).unwrap().perm(), 0o770);
    t.create_as(&bob, d.ino, "x", 0o644).unwrap();
    block_on(t.fs().lookup(&bob, d.ino, b"x")).unwrap();
    block_on(t.fs().unlink(&bob, d.ino, b"victim")).unwrap();
    block_on(t.fs().rename(&bob, d.ino, b"x", d.ino, b"y", 0)).unwrap();
    assert_eq!(
        errno(block_on(t.fs().lookup(&eve, d.ino, b"y"))),
        libc::EACCES
    );
    assert_eq!(errno(t.create_as(&eve, d.ino, "z", 0o644)), libc::EACCES);
    t.check();
}

#[test]
fn noacl_refuses_acl_xattrs_and_evaluates_none() {
    let mut t = T::new();
    let f = t.owned_file(ROOT, "f", 1000, 100, 0o644);
    let d = t.mkdir(ROOT, "d");
    t.setattr(&root(), d.ino, set_mode(0o777)).unwrap();
    t.set_acl(&root(), f.ino, ACCESS, &named_acl()).unwrap();
    let default = acl_value(&[
        (USER_OBJ, 7, UNDEF),
        (NAMED_USER, 7, 2000),
        (GROUP_OBJ, 5, UNDEF),
        (MASK, 7, UNDEF),
        (OTHER, 5, UNDEF),
    ]);
    t.set_acl(&root(), d.ino, DEFAULT, &default).unwrap();
    let bob = who(2000, 2000, &[]);
    assert_eq!(t.access(&bob, f.ino, MAY_WRITE), Ok(()));

    t.opts.acl = false;
    t.remount();
    for (ino, name) in [(f.ino, ACCESS), (d.ino, DEFAULT)] {
        assert_eq!(
            errno(t.set_acl(&root(), ino, name, &named_acl())),
            libc::EOPNOTSUPP
        );
        assert_eq!(errno(t.get_acl(ino, name)), libc::EOPNOTSUPP);
        assert_eq!(
            errno(block_on(t.fs().remove_xattr(&root(), ino, name))),
            libc::EOPNOTSUPP
        );
        assert!(block_on(t.fs().list_xattrs(&root(), ino))
            .unwrap()
            .is_empty());
    }
    // The stored ACL is not evaluated: bob is "other" with ---.
    assert_eq!(errno(t.access(&bob, f.ino, MAY_READ)), libc::EACCES);
    // Nor inherited: the umask applies, no ACL is stored.
    let c = with_umask(who(1000, 1000, &[]), 0o022);
    let g = t.create_as(&c, d.ino, "g", 0o666).unwrap();
    assert_eq!(g.perm(), 0o644);
    assert_eq!(t.xattr_items(g.ino), 0);
    // chmod doesn't touch it either.
    t.setattr(&root(), f.ino, set_mode(0o600)).unwrap();
    t.opts.acl = true;
    t.remount();
    assert_eq!(t.get_acl(f.ino, ACCESS).unwrap(), named_acl());
    t.check();
}

// ---------------------------------------------------------------------------
// Model test

/// The in-memory tree the fs is compared with, with Linux's permission
/// rules written out for it.
mod model {
    use std::collections::BTreeMap;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Kind {
        File,
        Dir,
        Fifo,
        Symlink(Vec<u8>),
    }

    #[derive(Clone, Debug)]
    pub struct Node {
        pub kind: Kind,
        pub perm: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub size: u64,
        pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        pub children: BTreeMap<Vec<u8>, usize>,
        /// A directory's parent.
        pub parent: usize,
    }

    impl Node {
        pub fn is_dir(&self) -> bool {
            self.kind == Kind::Dir
        }
    }

    /// Who runs an operation.
    #[derive(Clone, Debug)]
    pub struct Who {
        pub uid: u32,
        pub gid: u32,
        pub groups: Vec<u32>,
    }

    impl Who {
        fn root(&self) -> bool {
            self.uid == 0
        }

        fn in_group(&self, gid: u32) -> bool {
            self.root() || self.gid == gid || self.groups.contains(&gid)
        }

        fn owns(&self, n: &Node) -> bool {
            self.root() || self.uid == n.uid
        }
    }

    const W_: u32 = 2;
    const X_: u32 = 1;

    /// The mode bits say yes (root: always, but execution of a file
    /// needs some x bit).
    fn may(w: &Who, n: &Node, mask: u32) -> R {
        if w.root() {
            if n.is_dir() || mask & X_ == 0 || n.perm & 0o111 != 0 {
                return Ok(());
            }
            return Err(libc::EACCES);
        }
        let shift = if w.uid == n.uid {
            6
        } else if w.gid == n.gid || w.groups.contains(&n.gid) {
            3
        } else {
            0
        };
        if (n.perm >> shift) & mask == mask {
            Ok(())
        } else {
            Err(libc::EACCES)
        }
    }

    #[derive(Clone, Debug)]
    pub struct Model {
        pub nodes: BTreeMap<usize, Node>,
        next: usize,
    }

    pub type R<T = ()> = Result<T, i32>;

    fn check_name(name: &[u8]) -> R {
        if name.len() > 255 {
            Err(libc::ENAMETOOLONG)
        } else {
            Ok(())
        }
    }

    impl Model {
        pub fn new() -> Model {
            let root = Node {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                xattrs: BTreeMap::new(),
                children: BTreeMap::new(),
                parent: 0,
            };
            Model {
                nodes: [(0, root)].into(),
                next: 1,
            }
        }

        pub fn node(&self, id: usize) -> &Node {
            &self.nodes[&id]
        }

        fn node_mut(&mut self, id: usize) -> &mut Node {
            self.nodes.get_mut(&id).unwrap()
        }

        /// A directory to look into: ENOTDIR, then search permission.
        fn search(&self, w: &Who, id: usize) -> R<&Node> {
            let n = self.node(id);
            if !n.is_dir() {
                return Err(libc::ENOTDIR);
            }
            may(w, n, X_)?;
            Ok(n)
        }

        /// Linux's may_delete once the victim exists.
        fn may_delete(&self, w: &Who, dir: usize, victim: usize) -> R {
            let (d, v) = (self.node(dir), self.node(victim));
            may(w, d, W_ | X_)?;
            if d.perm & 0o1000 != 0 && !w.root() && w.uid != v.uid && w.uid != d.uid {
                return Err(libc::EPERM);
            }
            Ok(())
        }

        /// Every path (hard links repeat the id), root first.
        pub fn paths(&self) -> Vec<(Vec<Vec<u8>>, usize)> {
            let mut out = vec![(Vec::new(), 0)];
            let mut i = 0;
            while i < out.len() {
                let (path, id) = out[i].clone();
                for (name, c) in &self.node(id).children {
                    let mut p = path.clone();
                    p.push(name.clone());
                    out.push((p, *c));
                }
                i += 1;
            }
            out
        }

        fn is_under(&self, dir: usize, ino: usize) -> bool {
            let mut d = dir;
            loop {
                if d == ino {
                    return true;
                }
                if d == 0 {
                    return false;
                }
                d = self.node(d).parent;
            }
        }

        pub fn create(&mut self, w: &Who, dir: usize, name: &[u8], kind: Kind) -> R<usize> {
            if let Kind::Symlink(t) = &kind {
                if t.len() >= 4096 {
                    return Err(libc::ENAMETOOLONG);
                }
            }
            let d = self.search(w, dir)?;
            check_name(name)?;
            if d.children.contains_key(name) {
                return Err(libc::EEXIST);
            }
            may(w, d, W_ | X_)?;
            let setgid_dir = d.perm & 0o2000 != 0;
            let gid = if setgid_dir { d.gid } else { w.gid };
            let id = self.next;
            self.next += 1;
            let is_dir = kind == Kind::Dir;
            let (perm, nlink, size) = match &kind {
                Kind::Dir if setgid_dir => (0o2755, 2, 0),
                Kind::Dir => (0o755, 2, 0),
                Kind::Symlink(t) => (0o777, 1, t.len() as u64),
                Kind::File | Kind::Fifo => (0o644, 1, 0),
            };
            self.nodes.insert(
                id,
                Node {
                    kind,
                    perm,
                    uid: w.uid,
                    gid,
                    nlink,
                    size,
                    xattrs: BTreeMap::new(),
                    children: BTreeMap::new(),
                    parent: dir,
                },
            );
            let d = self.node_mut(dir);
            d.children.insert(name.to_vec(), id);
            if is_dir {
                d.nlink += 1;
            }
            Ok(id)
        }

        fn drop_link(&mut self, id: usize) {
            let n = self.node_mut(id);
            n.nlink = if n.is_dir() { 0 } else { n.nlink - 1 };
            if n.nlink == 0 {
                self.nodes.remove(&id);
            }
        }

        pub fn remove(&mut self, w: &Who, dir: usize, name: &[u8], rmdir: bool) -> R {
            let d = self.search(w, dir)?;
            check_name(name)?;
            let id = *d.children.get(name).ok_or(libc::ENOENT)?;
            self.may_delete(w, dir, id)?;
            let c = self.node(id);
            if rmdir && !c.is_dir() {
                return Err(libc::ENOTDIR);
            }
            if !rmdir && c.is_dir() {
                return Err(libc::EISDIR);
            }
            if c.is_dir() && !c.children.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            let d = self.node_mut(dir);
            d.children.remove(name);
            if rmdir {
                d.nlink -= 1;
            }
            self.drop_link(id);
            Ok(())
        }

        pub fn link(&mut self, w: &Who, id: usize, dir: usize, name: &[u8]) -> R {
            let d = self.search(w, dir)?;
            check_name(name)?;
            if d.children.contains_key(name) {
                return Err(libc::EEXIST);
            }
            may(w, d, W_ | X_)?;
            if self.node(id).is_dir() {
                return Err(libc::EPERM);
            }
            self.node_mut(dir).children.insert(name.to_vec(), id);
            self.node_mut(id).nlink += 1;
            Ok(())
        }

        pub fn rename(
            &mut self,
            w: &Who,
            od: usize,
            on: &[u8],
            nd: usize,
            nn: &[u8],
            flags: u32,
        ) -> R {
            if flags == 3 {
                return Err(libc::EINVAL);
            }
            let exchange = flags == 2;
            self.search(w, od)?;
            self.search(w, nd)?;
            check_name(on)?;
            check_name(nn)?;
            let src = *self.node(od).children.get(on).ok_or(libc::ENOENT)?;
            let tgt = self.node(nd).children.get(nn).copied();
            if flags == 1 && tgt.is_some() {
                return Err(libc::EEXIST);
            }
            if exchange && tgt.is_none() {
                return Err(libc::ENOENT);
            }
            let s_dir = self.node(src).is_dir();
            let t_dir = tgt.is_some_and(|t| self.node(t).is_dir());
            if od != nd {
                if s_dir && self.is_under(nd, src) {
                    return Err(libc::EINVAL);
                }
                if let Some(t) = tgt {
                    if t_dir && self.is_under(od, t) {
                        return Err(if exchange {
                            libc::EINVAL
                        } else {
                            libc::ENOTEMPTY
                        });
                    }
                }
            }
            if tgt == Some(src) {
                return Ok(());
            }
            self.may_delete(w, od, src)?;
            match tgt {
                Some(t) => {
                    self.may_delete(w, nd, t)?;
                    if !exchange && s_dir && !t_dir {
                        return Err(libc::ENOTDIR);
                    }
                    if !exchange && !s_dir && t_dir {
                        return Err(libc::EISDIR);
                    }
                }
                None => may(w, self.node(nd), W_ | X_)?,
            }
            if od != nd {
                if s_dir {
                    may(w, self.node(src), W_)?;
                }
                if let (true, true, Some(t)) = (exchange, t_dir, tgt) {
                    may(w, self.node(t), W_)?;
                }
            }
            if let (false, true, Some(t)) = (exchange, t_dir, tgt) {
                if !self.node(t).children.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
            }
            if exchange {
                let t = tgt.unwrap();
                self.node_mut(od).children.insert(on.to_vec(), t);
                self.node_mut(nd).children.insert(nn.to_vec(), src);
                if od != nd && s_dir != t_dir {
                    let (from, to) = if s_dir { (od, nd) } else { (nd, od) };
                    self.node_mut(from).nlink -= 1;
                    self.node_mut(to).nlink += 1;
                }
                if s_dir {
                    self.node_mut(src).parent = nd;
                }
                if t_dir {
                    self.node_mut(t).parent = od;
                }
                return Ok(());
            }
            self.node_mut(od).children.remove(on);
            if let Some(t) = tgt {
                let n = self.node_mut(nd);
                n.children.remove(nn);
                if t_dir {
                    n.nlink -= 1;
                }
                self.drop_link(t);
            }
            self.node_mut(nd).children.insert(nn.to_vec(), src);
            if s_dir {
                if od != nd {
                    self.node_mut(od).nlink -= 1;
                    self.node_mut(nd).nlink += 1;
                }
                self.node_mut(src).parent = nd;
            }
            Ok(())
        }

        pub fn chmod(&mut self, w: &Who, id: usize, mode: u32) -> R {
            let n = self.node_mut(id);
            if !w.owns(n) {
                return Err(libc::EPERM);
            }
            n.perm = mode & 0o7777;
            if !w.in_group(n.gid) {
                n.perm &= !0o2000;
            }
            Ok(())
        }

        pub fn chown(&mut self, w: &Who, id: usize, uid: u32) -> R {
            let n = self.node_mut(id);
            if !(w.root() || (w.uid == n.uid && uid == n.uid)) {
                return Err(libc::EPERM);
            }
            if !n.is_dir() {
                n.perm &= !0o4000;
                if n.perm & 0o010 != 0 || !w.in_group(n.gid) {
                    n.perm &= !0o2000;
                }
            }
            n.uid = uid;
            Ok(())
        }

        pub fn truncate(&mut self, w: &Who, id: usize, size: u64) -> R {
            let n = self.node_mut(id);
            match n.kind {
                Kind::Dir => return Err(libc::EISDIR),
                Kind::File => {}
                _ => return Err(libc::EINVAL),
            }
            may(w, n, W_)?;
            n.size = size;
            if !w.root() {
                n.perm &= !0o4000;
                // Linux's setattr_should_drop_sgid: group x, or a writer
                // outside the file's group.
                if n.perm & 0o010 != 0 || !w.in_group(n.gid) {
                    n.perm &= !0o2000;
                }
            }
            Ok(())
        }

        fn check_xattr(&self, w: &Who, id: usize, name: &[u8], val_len: Option<usize>) -> R {
            if name.is_empty() || name.len() > 255 {
                return Err(libc::ERANGE);
            }
            if val_len.is_some_and(|l| l > 65535) {
                return Err(libc::E2BIG);
            }
            // Every caller here writes.
            let n = self.node(id);
            if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
                return if w.root() { Ok(()) } else { Err(libc::EPERM) };
            }
            if name.starts_with(b"system.") {
                return if w.owns(n) { Ok(()) } else { Err(libc::EPERM) };
            }
            if name.starts_with(b"user.") {
                if !matches!(n.kind, Kind::File | Kind::Dir) {
                    return Err(libc::EPERM);
                }
                if n.is_dir() && n.perm & 0o1000 != 0 && !w.owns(n) {
                    return Err(libc::EPERM);
                }
                return may(w, n, W_);
            }
            may(w, n, W_)?;
            Err(libc::EOPNOTSUPP)
        }

        pub fn set_xattr(&mut self, w: &Who, id: usize, name: &[u8], val: &[u8], flags: u32) -> R {
            self.check_xattr(w, id, name, Some(val.len()))?;
            let n = self.node_mut(id);
            let exists = n.xattrs.contains_key(name);
            if flags & 1 != 0 && exists {
                return Err(libc::EEXIST);
            }
            if flags & 2 != 0 && !exists {
                return Err(libc::ENODATA);
            }
            n.xattrs.insert(name.to_vec(), val.to_vec());
            Ok(())
        }

        pub fn remove_xattr(&mut self, w: &Who, id: usize, name: &[u8]) -> R {
            self.check_xattr(w, id, name, None)?;
            match self.node_mut(id).xattrs.remove(name) {
                Some(_) => Ok(()),
                None => Err(libc::ENODATA),
            }
        }
    }
}

use model::{Kind, Model, Who};

fn entry_name(i: usize) -> Vec<u8> {
    match i {
        0 => b"a".to_vec(),
        1 => b"b".to_vec(),
        2 => b"cc".to_vec(),
        3 => b"dd".to_vec(),
        4 => b"eee".to_vec(),
        _ => vec![b'L'; 256],
    }
}

fn xattr_name(i: usize) -> Vec<u8> {
    match i {
        0 => b"user.a".to_vec(),
        1 => b"user.bb".to_vec(),
        2 => b"trusted.t".to_vec(),
        3 => b"security.s".to_vec(),
        4 => b"bad.x".to_vec(),
        _ => [b"user.".as_slice(), &[b'x'; 251]].concat(),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: usize,
        name: usize,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Mkfifo {
        dir: usize,
        name: usize,
    },
    Symlink {
        dir: usize,
        name: usize,
        len: usize,
    },
    Unlink {
        dir: usize,
        name: usize,
    },
    Rmdir {
        dir: usize,
        name: usize,
    },
    Rename {
        od: usize,
        on: usize,
        nd: usize,
        nn: usize,
        flags: u32,
    },
    Link {
        src: usize,
        dir: usize,
        name: usize,
    },
    Chmod {
        path: usize,
        mode: u32,
    },
    Chown {
        path: usize,
        uid: u32,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    SetXattr {
        path: usize,
        name: usize,
        len: usize,
        flags: u32,
    },
    RemoveXattr {
        path: usize,
        name: usize,
    },
    Commit,
    Remount,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = || 0usize..1024;
    let n = || prop_oneof![12 => 0usize..5, 1 => Just(5usize)];
    let x = || prop_oneof![8 => 0usize..2, 1 => 2usize..6];
    prop_oneof![
        4 => (p(), n()).prop_map(|(dir, name)| Op::Create { dir, name }),
        3 => (p(), n()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => (p(), n()).prop_map(|(dir, name)| Op::Mkfifo { dir, name }),
        1 => (p(), n(), prop_oneof![1usize..1000, Just(4095usize), Just(4096usize)])
            .prop_map(|(dir, name, len)| Op::Symlink { dir, name, len }),
        3 => (p(), n()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        2 => (p(), n()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        5 => (p(), n(), p(), n(), prop_oneof![3 => Just(0u32), 1 => Just(1u32), 2 => Just(2u32), 1 => Just(3u32)])
            .prop_map(|(od, on, nd, nn, flags)| Op::Rename { od, on, nd, nn, flags }),
        2 => (p(), p(), n()).prop_map(|(src, dir, name)| Op::Link { src, dir, name }),
        2 => (p(), prop_oneof![0u32..0o10000, Just(0o777), Just(0o1777), Just(0o2777), Just(0o666)])
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (p(), 0u32..3).prop_map(|(path, uid)| Op::Chown { path, uid }),
        1 => (p(), 0u64..100_000).prop_map(|(path, size)| Op::Truncate { path, size }),
        2 => (p(), x(), prop_oneof![4 => 0usize..100, 2 => 800usize..3000, 1 => Just(65535usize), 1 => Just(65536usize)], 0u32..3)
            .prop_map(|(path, name, len, flags)| Op::SetXattr { path, name, len, flags }),
        1 => (p(), x()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => Just(Op::Commit),
        1 => Just(Op::Remount),
    ]
}

struct Harness {
    t: T,
    model: Model,
    /// Model node id -> fs inode number.
    ino: HashMap<usize, u64>,
    nr_ops: u64,
}

fn res<T>(r: Result<T, FsError>) -> Result<T, i32> {
    r.map_err(|e| e.errno())
}

impl Harness {
    /// A volume whose root everyone may write, so that users get past
    /// the first permission check often enough.
    fn new(opts: FsOptions) -> Harness {
        let mut h = Harness {
            t: T::with(opts, MkfsOptions::default(), 64 << 20),
            model: Model::new(),
            ino: [(0, ROOT)].into(),
            nr_ops: 0,
        };
        h.run(
            0,
            &Op::Chmod {
                path: 0,
                mode: 0o777,
            },
        );
        h
    }

    /// Any inode (by path).
    fn pick(&self, i: usize) -> usize {
        let paths = self.model.paths();
        paths[i % paths.len()].1
    }

    /// Mostly a directory, sometimes anything (for ENOTDIR).
    fn pick_dir(&self, i: usize) -> usize {
        if i.is_multiple_of(8) {
            return self.pick(i / 8);
        }
        let dirs: Vec<usize> = self
            .model
            .paths()
            .into_iter()
            .filter(|(_, id)| self.model.node(*id).is_dir())
            .map(|(_, id)| id)
            .collect();
        dirs[i % dirs.len()]
    }

    /// Mostly an existing entry (directory, name), sometimes a name from
    /// the pool in some directory (which may exist or not).
    fn pick_entry(&self, i: usize, name: usize) -> (usize, Vec<u8>) {
        let paths = self.model.paths();
        let ids: HashMap<&Vec<Vec<u8>>, usize> = paths.iter().map(|(p, id)| (p, *id)).collect();
        let entries: Vec<(usize, Vec<u8>)> = paths
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, _)| (ids[&p[..p.len() - 1].to_vec()], p[p.len() - 1].clone()))
            .collect();
        if i.is_multiple_of(4) || entries.is_empty() {
            (self.pick_dir(i / 4), entry_name(name))
        } else {
            entries[i % entries.len()].clone()
        }
    }

    /// Run one op on both; the errnos must agree.
    fn run(&mut self, who: usize, op: &Op) {
        self.nr_ops += 1;
        let (uid, gid, groups) = [
            (0, 0, vec![]),
            (1000, 1000, vec![]),
            (1001, 1001, vec![1000]),
        ][who % 3]
            .clone();
        let r = Creds {
            uid,
            gid,
            groups,
            umask: 0,
        };
        let w = Who {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
        };
        let value = |len: usize, seed: u64| -> Vec<u8> {
            (0..len).map(|i| (i as u64 * 7 + seed) as u8).collect()
        };
        let (m, f): (Result<Option<usize>, i32>, Result<Option<u64>, i32>) = match *op {
            Op::Create { dir, name } | Op::Mkdir { dir, name } | Op::Mkfifo { dir, name } => {
                let (d, nm) = (self.pick_dir(dir), entry_name(name));
                let di = self.ino[&d];
                let fs = self.t.fs();
                let (kind, f) = match op {
                    Op::Create { .. } => (Kind::File, block_on(fs.create(&r, di, &nm, 0o644))),
                    Op::Mkdir { .. } => (Kind::Dir, block_on(fs.mkdir(&r, di, &nm, 0o755))),
                    _ => (
                        Kind::Fifo,
                        block_on(fs.mknod(&r, di, &nm, libc::S_IFIFO | 0o644, 0)),
                    ),
                };
                (
                    self.model.create(&w, d, &nm, kind).map(Some),
                    res(f).map(|a| Some(a.ino)),
                )
            }
            Op::Symlink { dir, name, len } => {
                let (d, nm) = (self.pick_dir(dir), entry_name(name));
                let target = vec![b't'; len];
                let f = block_on(self.t.fs().symlink(&r, self.ino[&d], &nm, &target));
                let m = self.model.create(&w, d, &nm, Kind::Symlink(target));
                (m.map(Some), res(f).map(|a| Some(a.ino)))
            }
            Op::Unlink { dir, name } | Op::Rmdir { dir, name } => {
                let (d, nm) = self.pick_entry(dir, name);
                let rmdir = matches!(op, Op::Rmdir { .. });
                let di = self.ino[&d];
                let f = if rmdir {
                    block_on(self.t.fs().rmdir(&r, di, &nm))
                } else {
                    block_on(self.t.fs().unlink(&r, di, &nm))
                };
                (
                    self.model.remove(&w, d, &nm, rmdir).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Rename {
                od,
                on,
                nd,
                nn,
                flags,
            } => {
                let (od, on) = self.pick_entry(od, on);
                let (nd, nn) = if nd % 2 == 0 {
                    self.pick_entry(nd / 2, nn)
                } else {
                    (self.pick_dir(nd / 2), entry_name(nn))
                };
                let (odi, ndi) = (self.ino[&od], self.ino[&nd]);
                let f = block_on(self.t.fs().rename(&r, odi, &on, ndi, &nn, flags));
                (
                    self.model.rename(&w, od, &on, nd, &nn, flags).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Link { src, dir, name } => {
                let (s, d, nm) = (self.pick(src), self.pick_dir(dir), entry_name(name));
                let f = block_on(self.t.fs().link(&r, self.ino[&s], self.ino[&d], &nm));
                (
                    self.model.link(&w, s, d, &nm).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Chmod { path, mode } => {
                let id = self.pick(path);
                let set = set_mode(mode);
                let f = block_on(self.t.fs().setattr(&r, self.ino[&id], &set));
                (
                    self.model.chmod(&w, id, mode).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Chown { path, uid } => {
                let id = self.pick(path);
                let uid = [0, 1000, 1001][uid as usize % 3];
                let set = set_uid(uid);
                let f = block_on(self.t.fs().setattr(&r, self.ino[&id], &set));
                (
                    self.model.chown(&w, id, uid).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Truncate { path, size } => {
                let id = self.pick(path);
                let set = set_size(size);
                let f = block_on(self.t.fs().setattr(&r, self.ino[&id], &set));
                (
                    self.model.truncate(&w, id, size).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::SetXattr {
                path,
                name,
                len,
                flags,
            } => {
                let id = self.pick(path);
                let (nm, v) = (xattr_name(name), value(len, self.nr_ops));
                let f = block_on(self.t.fs().set_xattr(&r, self.ino[&id], &nm, &v, flags));
                (
                    self.model.set_xattr(&w, id, &nm, &v, flags).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::RemoveXattr { path, name } => {
                let id = self.pick(path);
                let nm = xattr_name(name);
                let f = block_on(self.t.fs().remove_xattr(&r, self.ino[&id], &nm));
                (
                    self.model.remove_xattr(&w, id, &nm).map(|_| None),
                    res(f).map(|_| None),
                )
            }
            Op::Commit => {
                block_on(self.t.fs().sync()).unwrap();
                (Ok(None), Ok(None))
            }
            Op::Remount => {
                self.t.remount();
                self.compare();
                (Ok(None), Ok(None))
            }
        };
        match (m, f) {
            (Ok(Some(id)), Ok(Some(ino))) => {
                self.ino.insert(id, ino);
            }
            (Ok(_), Ok(_)) => {}
            (m, f) => assert_eq!(m.map(|_| ()), f.map(|_| ()), "{op:?} by uid {uid}"),
        }
    }

    /// Every path of the model resolves in the fs to the same thing, every
    /// directory lists the same names, and the items are consistent.
    fn compare(&mut self) {
        let r = root();
        for (path, id) in self.model.paths() {
            let mut ino = ROOT;
            for c in &path {
                ino = block_on(self.t.fs().lookup(&r, ino, c)).unwrap().ino;
            }
            assert_eq!(ino, self.ino[&id], "{path:?}");
            let a = self.t.getattr(ino).unwrap();
            let n = self.model.node(id).clone();
            let kind = match &n.kind {
                Kind::File => FileType::Regular,
                Kind::Dir => FileType::Directory,
                Kind::Fifo => FileType::Fifo,
                Kind::Symlink(_) => FileType::Symlink,
            };
            let size = if n.is_dir() {
                n.children.keys().map(|k| k.len() as u64).sum()
            } else {
                n.size
            };
            assert_eq!(
                (a.kind, a.perm(), a.uid, a.gid, a.nlink, a.size),
                (kind, n.perm, n.uid, n.gid, n.nlink, size),
                "{path:?}"
            );
            if let Kind::Symlink(target) = &n.kind {
                assert_eq!(&block_on(self.t.fs().readlink(ino)).unwrap(), target);
            }
            let mut names = block_on(self.t.fs().list_xattrs(&r, ino)).unwrap();
            names.sort();
            let want: Vec<Vec<u8>> = n.xattrs.keys().cloned().collect();
            assert_eq!(names, want, "xattrs of {path:?}");
            for (k, v) in &n.xattrs {
                assert_eq!(&block_on(self.t.fs().get_xattr(&r, ino, k)).unwrap(), v);
            }
            if n.is_dir() {
                let entries = block_on(self.t.fs().readdir(ino, 2, usize::MAX)).unwrap();
                let mut got: Vec<(Vec<u8>, u64)> =
                    entries.into_iter().map(|e| (e.name, e.ino)).collect();
                got.sort();
                let want: Vec<(Vec<u8>, u64)> = n
                    .children
                    .iter()
                    .map(|(k, c)| (k.clone(), self.ino[c]))
                    .collect();
                assert_eq!(got, want, "entries of {path:?}");
            }
        }
        let hash = self.t.opts.name_hash;
        check_items(self.t.fs(), hash);
    }
}

/// An operation and who runs it (0 and 1: root; 2: uid 1000; 3: uid
/// 1001, a member of group 1000).
type Step = (usize, Op);

fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec((0usize..4, op_strategy()), 1..max)
}

fn run_model(steps: &[Step], opts: FsOptions) {
    let mut h = Harness::new(opts);
    let half = steps.len() / 2;
    for (who, op) in &steps[..half] {
        h.run(who.saturating_sub(1), op);
    }
    h.t.remount();
    h.compare();
    for (who, op) in &steps[half..] {
        h.run(who.saturating_sub(1), op);
    }
    h.compare();
    h.t.remount();
    h.compare();
    h.t.check();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_namespace_ops_match_the_model(steps in steps(120)) {
        run_model(&steps, fs_opts());
    }

    #[test]
    fn random_namespace_ops_match_the_model_when_every_name_collides(steps in steps(60)) {
        let opts = FsOptions { name_hash: collide, ..fs_opts() };
        run_model(&steps, opts);
    }
}

#[test]
fn the_default_name_hash_is_stable() {
    // The hash is part of the format: it must never change.
    assert_eq!(name_hash(b""), 0);
    assert_eq!(name_hash(b"a"), name_hash(b"a"));
    let h = name_hash(b"hello");
    assert_eq!(h & 0xffff_ffff, u64::from(crc32c::crc32c(b"hello")));
}

// ---------------------------------------------------------------------------
// File contents through the fs layer

impl T {
    fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> u64 {
        block_on(self.fs().write(&root(), ino, off, data)).unwrap()
    }

    fn read(&mut self, ino: u64, off: u64, len: usize) -> Vec<u8> {
        block_on(self.fs().read(ino, off, len)).unwrap()
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Attr {
        let set = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        block_on(self.fs().setattr(&root(), ino, &set)).unwrap()
    }

    fn free_data(&mut self) -> u64 {
        block_on(self.fs().statfs()).unwrap().free_data_blocks
    }

    fn commit(&mut self) {
        block_on(self.fs().sync()).unwrap();
    }
}

/// How many extent items `ino` has.
fn extent_count(t: &mut T, ino: u64) -> usize {
    block_on(scoutfs_engine::data::count_extents_from(
        t.vol(),
        ino,
        0,
        usize::MAX,
    ))
    .unwrap()
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[test]
fn write_read_keeps_the_inode_in_step() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let before = t.getattr(f.ino).unwrap();
    let d = pattern(1, 10_000);
    assert_eq!(t.write(f.ino, 5000, &d), 10_000);
    let a = t.getattr(f.ino).unwrap();
    assert_eq!(a.size, 15_000);
    assert_eq!(a.data_version, before.data_version + 1);
    assert_eq!(
        a.online_blocks, 3,
        "blocks 1..=3 written, block 0 a hole: {a:?}"
    );
    assert!(ns(a.mtime) > ns(before.mtime) && ns(a.ctime) > ns(before.ctime));
    let mut want = vec![0u8; 5000];
    want.extend_from_slice(&d);
    assert_eq!(t.read(f.ino, 0, 100_000), want, "a read stops at the size");
    assert!(
        t.read(f.ino, 15_000, 10).is_empty(),
        "a read at the end is empty"
    );
    // Filling the hole allocates block 0; overwriting in place nothing.
    t.write(f.ino, 0, b"head");
    let b = t.getattr(f.ino).unwrap();
    assert_eq!((b.online_blocks, b.data_version), (4, a.data_version + 1));
    t.write(f.ino, 6000, b"mid");
    let c = t.getattr(f.ino).unwrap();
    assert_eq!((c.online_blocks, c.data_version), (4, b.data_version + 1));
    want[6000..6003].copy_from_slice(b"mid");
    want[..4].copy_from_slice(b"head");
    t.remount();
    assert_eq!(t.read(f.ino, 0, 15_000), want);
    // Reads and writes of a directory.
    assert_eq!(errno(block_on(t.fs().read(ROOT, 0, 1))), libc::EISDIR);
    assert_eq!(
        errno(block_on(t.fs().write(&root(), ROOT, 0, b"x"))),
        libc::EISDIR
    );
    let top = block_on(t.fs().write(&root(), f.ino, i64::MAX as u64 - 1, b"xy"));
    assert_eq!(errno(top), libc::EFBIG);
    t.check();
}

#[test]
fn truncate_frees_blocks_and_zeroes_the_cut_block() {
    let mut t = T::new();
    let free0 = t.free_data();
    let f = t.create(ROOT, "f");
    t.write(f.ino, 0, &pattern(2, 1 << 20));
    t.commit();
    assert_eq!(t.free_data(), free0 - 256);
    let v = t.getattr(f.ino).unwrap().data_version;
    let a = t.truncate(f.ino, 6000);
    assert_eq!((a.size, a.online_blocks, a.data_version), (6000, 2, v + 1));
    t.commit();
    assert_eq!(
        t.free_data(),
        free0 - 2,
        "freed blocks come back after commit"
    );
    // Extending again reads zeros where the data was cut.
    t.truncate(f.ino, 10_000);
    let got = t.read(f.ino, 0, 10_000);
    assert_eq!(&got[..6000], &pattern(2, 1 << 20)[..6000]);
    assert!(got[6000..].iter().all(|&b| b == 0));
    t.check();
}

#[test]
fn unlink_frees_data_and_an_open_file_keeps_it_until_release() {
    let mut t = T::new();
    let free0 = t.free_data();
    let f = t.create(ROOT, "f");
    let g = t.create(ROOT, "g");
    t.write(f.ino, 0, &pattern(3, 64 << 10));
    t.write(g.ino, 0, &pattern(4, 64 << 10));
    block_on(t.fs().open_ino(&root(), g.ino, MAY_READ)).unwrap();
    t.unlink(ROOT, "f").unwrap();
    t.unlink(ROOT, "g").unwrap();
    t.commit();
    assert_eq!(
        t.free_data(),
        free0 - 16,
        "g's blocks are held by its handle"
    );
    assert_eq!(t.read(g.ino, 0, 64 << 10), pattern(4, 64 << 10));
    block_on(t.fs().release(g.ino)).unwrap();
    t.commit();
    assert_eq!(t.free_data(), free0);
    t.check();
}

#[test]
fn large_fragmented_files_are_deleted_over_several_transactions() {
    let opts = FsOptions {
        data_prealloc: scoutfs_engine::data::Prealloc::NONE,
        ..fs_opts()
    };
    let mut t = T::with(opts, MkfsOptions::default(), 64 << 20);
    let free0 = t.free_data();
    let f = t.create(ROOT, "f");
    let g = t.create(ROOT, "g");
    // Interleaved writes: each file gets one extent per block.
    let n = 700u64;
    for i in 0..n {
        t.write(f.ino, i * 4096, &[1u8; 4096]);
        t.write(g.ino, i * 4096, &[2u8; 4096]);
    }
    let items = |t: &mut T, ino: u64| extent_count(t, ino);
    assert_eq!(items(&mut t, f.ino), n as usize);
    // Truncating most of g away takes several transactions too.
    let a = t.truncate(g.ino, 10 * 4096 + 1);
    assert_eq!(a.online_blocks, 11);
    assert_eq!(items(&mut t, g.ino), 11);
    t.unlink(ROOT, "f").unwrap();
    assert_eq!(items(&mut t, f.ino), 0);
    assert_eq!(t.getattr(f.ino).unwrap_err(), FsError::NotFound);
    t.commit();
    assert_eq!(t.free_data(), free0 - 11);
    t.check();
}

#[test]
fn fallocate_punch_and_seek() {
    use scoutfs_engine::fs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let fs = |t: &mut T, mode, off, len| block_on(t.fs().fallocate(&root(), f.ino, mode, off, len));
    fs(&mut t, FALLOC_FL_KEEP_SIZE, 0, 64 << 10).unwrap();
    let a = t.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.online_blocks), (0, 16));
    fs(&mut t, 0, 0, 100_000).unwrap();
    let a = t.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.online_blocks), (100_000, 25));
    assert_eq!(
        t.read(f.ino, 0, 100_000),
        vec![0u8; 100_000],
        "preallocated reads zeros"
    );
    t.write(f.ino, 40_960, &[9u8; 8192]);
    // Data at blocks 10..12; the rest is unwritten, which seeks as a hole.
    let seek = |t: &mut T, off, data| block_on(t.fs().seek_data(f.ino, off, data));
    assert_eq!(seek(&mut t, 0, true).unwrap(), 40_960);
    assert_eq!(seek(&mut t, 0, false).unwrap(), 0);
    assert_eq!(seek(&mut t, 41_000, false).unwrap(), 49_152);
    assert_eq!(errno(seek(&mut t, 50_000, true)), libc::ENXIO);
    assert_eq!(errno(seek(&mut t, 100_000, false)), libc::ENXIO);
    let v = t.getattr(f.ino).unwrap().data_version;
    fs(
        &mut t,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        40_000,
        8000,
    )
    .unwrap();
    let a = t.getattr(f.ino).unwrap();
    assert_eq!((a.size, a.data_version), (100_000, v + 1));
    let got = t.read(f.ino, 40_960, 8192);
    assert!(got[..7040].iter().all(|&b| b == 0) && got[7040..].iter().all(|&b| b == 9));
    // Linux refuses a punch that would change the size (EOPNOTSUPP);
    // engine/tests/fallocate.rs has every mode.
    assert_eq!(
        errno(fs(&mut t, FALLOC_FL_PUNCH_HOLE, 0, 1)),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(fs(&mut t, 0x08, 0, 1)), libc::EOPNOTSUPP);
    assert_eq!(errno(fs(&mut t, 0, 0, 0)), libc::EINVAL);
    t.check();
}

#[test]
fn a_full_data_device_gives_a_short_write_then_enospc_and_delete_recovers() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let mut off = 0u64;
    let chunk = pattern(5, 1 << 20);
    let err = loop {
        match block_on(t.fs().write(&root(), f.ino, off, &chunk)) {
            Ok(n) => {
                assert!(n > 0);
                off += n;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert_eq!(t.getattr(f.ino).unwrap().size, off);
    assert!(
        off > 8 << 20,
        "most of the 16 MiB device was written: {off}"
    );
    // Nothing else broke: metadata operations still work.
    let g = t.create(ROOT, "g");
    t.remount();
    assert_eq!(t.read(f.ino, 0, 1 << 20), chunk);
    t.unlink(ROOT, "f").unwrap();
    t.commit();
    assert_eq!(
        t.write(g.ino, 0, &chunk),
        1 << 20,
        "deleting gave the space back"
    );
    t.check();
}

#[test]
fn a_write_by_a_non_owner_clears_setuid() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    t.setattr(
        &root(),
        f.ino,
        SetAttr {
            mode: Some(0o4777),
            ..SetAttr::default()
        },
    )
    .unwrap();
    block_on(t.fs().write(&user(1000), f.ino, 0, b"x")).unwrap();
    assert_eq!(t.getattr(f.ino).unwrap().perm(), 0o777);
}

#[test]
fn o_tmpfile_is_nameless_until_linked_and_gone_if_not() {
    let mut t = T::new();
    let free0 = t.free_data();
    let d = t.mkdir(ROOT, "d");
    let tmp = block_on(t.fs().tmpfile(&root(), d.ino, 0o600)).unwrap();
    assert_eq!((tmp.nlink, tmp.perm()), (0, 0o600));
    t.write(tmp.ino, 0, b"staged contents");
    assert!(t.names(d.ino).is_empty(), "no name yet");
    let linked = t.link(tmp.ino, d.ino, "final").unwrap();
    assert_eq!(linked.nlink, 1);
    block_on(t.fs().release(tmp.ino)).unwrap();
    assert_eq!(t.read(tmp.ino, 0, 100), b"staged contents");
    assert_eq!(t.lookup(d.ino, "final").unwrap().ino, tmp.ino);

    // Released without a link: deleted with its data.
    let gone = block_on(t.fs().tmpfile(&root(), d.ino, 0o644)).unwrap();
    t.write(gone.ino, 0, &[7u8; 8192]);
    block_on(t.fs().release(gone.ino)).unwrap();
    assert_eq!(t.getattr(gone.ino).unwrap_err(), FsError::NotFound);
    // An ordinary file unlinked while open can't be linked back.
    let f = t.create(d.ino, "f");
    block_on(t.fs().open_ino(&root(), f.ino, MAY_READ)).unwrap();
    t.unlink(d.ino, "f").unwrap();
    assert_eq!(t.link(f.ino, d.ino, "back").unwrap_err(), FsError::NotFound);
    block_on(t.fs().release(f.ino)).unwrap();

    // A crash with a tmpfile open: the next mount deletes it.
    let lost = block_on(t.fs().tmpfile(&root(), d.ino, 0o644)).unwrap();
    t.write(lost.ino, 0, &[9u8; 4096]);
    t.crash_after_commit();
    t.mount();
    assert_eq!(t.getattr(lost.ino).unwrap_err(), FsError::NotFound);
    t.commit();
    assert_eq!(t.free_data(), free0 - 1, "only 'final' keeps a block");
    t.check();
}

#[test]
fn preallocation_keeps_interleaved_appends_contiguous() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let g = t.create(ROOT, "g");
    for i in 0..512u64 {
        t.write(f.ino, i * 4096, &[1u8; 4096]);
        t.write(g.ino, i * 4096, &[2u8; 4096]);
    }
    let count = |t: &mut T, ino: u64| extent_count(t, ino);
    // Each allocation doubles: about log2(512) extents, not 512.
    let (nf, ng) = (count(&mut t, f.ino), count(&mut t, g.ino));
    assert!(nf <= 12 && ng <= 12, "extents: f {nf}, g {ng}");
    assert_eq!(t.read(f.ino, 0, 512 * 4096), vec![1u8; 512 * 4096]);
    // Preallocated blocks past the end count as the file's until freed.
    let a = t.getattr(f.ino).unwrap();
    assert!(a.online_blocks >= 512, "{a:?}");
    t.truncate(f.ino, 512 * 4096);
    assert_eq!(t.getattr(f.ino).unwrap().online_blocks, 512);
    t.check();
}

#[test]
fn writes_truncates_and_chown_drop_file_capabilities() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    let cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let set = |t: &mut T| {
        block_on(
            t.fs()
                .set_xattr(&root(), f.ino, b"security.capability", cap, 0),
        )
        .unwrap()
    };
    let has =
        |t: &mut T| block_on(t.fs().get_xattr(&root(), f.ino, b"security.capability")).is_ok();
    // A write with no capability set remembers that; setting one forgets.
    t.write(f.ino, 0, b"a");
    set(&mut t);
    assert!(has(&mut t));
    t.write(f.ino, 1, b"b");
    assert!(!has(&mut t), "a write drops it");
    set(&mut t);
    t.truncate(f.ino, 1);
    assert!(!has(&mut t), "a truncate drops it");
    set(&mut t);
    t.setattr(
        &root(),
        f.ino,
        SetAttr {
            uid: Some(7),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert!(!has(&mut t), "chown drops it");
    set(&mut t);
    t.setattr(
        &root(),
        f.ino,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert!(has(&mut t), "chmod keeps it");
    t.check();
}

#[test]
fn check_reports_online_blocks_that_disagree_with_the_extents() {
    let mut t = T::new();
    let f = t.create(ROOT, "f");
    // Two blocks: a longer first write would also preallocate (scoutfs's
    // streaming rule), which is not what this test is about.
    t.write(f.ino, 0, &[1u8; 2 * 4096]);
    t.poke_inode(f.ino, |i| i.online_blocks.set(5));
    t.commit();
    let (meta, data) = (t.meta.clone(), t.data.clone());
    let problems = check_volume(t.vol().store_mut(), &meta, &data).problems;
    assert!(
        problems.iter().any(|p| p.contains(&format!(
            "inode {} says 5 online blocks, its extents hold 2",
            f.ino
        ))),
        "{problems:?}"
    );
}
