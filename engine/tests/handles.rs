//! File handles at the engine: the lookups a kernel makes to decode one
//! ("." in an inode number, ".." of a directory) for linked files,
//! directories, open-but-unlinked files and deleted inodes; and the rule
//! that makes a generation per volume enough, that inode numbers are
//! never granted twice: each grant is durable before a number from it is
//! used, so a crash that loses the files made from a grant does not lose
//! the grant. The same through a FUSE mount, against ext4, is
//! tests/file_handles.rs.

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::fs::{handle_generation, Creds, FileType, Fs, FsOptions, MAY_READ};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{read_meta_super, TxnOptions, Volume};
use scoutfs_engine::util::ready;

const ROOT: u64 = 1;

struct V {
    meta: MemDev,
    data: MemDev,
    opts: FsOptions,
    fs: Option<Fs<Volume>>,
}

impl V {
    fn new(ino_alloc_per_lock: u64) -> V {
        let (meta, data) = (MemDev::new(64 << 20), MemDev::new(16 << 20));
        mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
        let opts = FsOptions {
            ino_alloc_per_lock,
            ..FsOptions::default()
        };
        let mut v = V {
            meta,
            data,
            opts,
            fs: None,
        };
        v.mount();
        v
    }

    fn mount(&mut self) {
        let txn = TxnOptions {
            cache_bytes: 32 << 20,
            ..TxnOptions::default()
        };
        let mut vol = Volume::open(&self.meta, txn).unwrap();
        vol.attach_data_device(&self.data).unwrap();
        self.fs = Some(ready(Fs::open(vol, self.opts)).unwrap());
    }

    fn fs(&mut self) -> &mut Fs<Volume> {
        self.fs.as_mut().unwrap()
    }

    fn remount(&mut self) {
        let mut fs = self.fs.take().unwrap();
        ready(fs.end_mount()).unwrap();
        fs.into_store().unmount().unwrap();
        self.mount();
    }

    /// The engine dies: nothing since the last commit survives.
    fn crash(&mut self) {
        drop(self.fs.take());
        self.mount();
    }

    fn create(&mut self, dir: u64, name: &str) -> u64 {
        ready(
            self.fs()
                .create(&Creds::root(), dir, name.as_bytes(), 0o644),
        )
        .unwrap()
        .ino
    }

    fn mkdir(&mut self, dir: u64, name: &str) -> u64 {
        ready(self.fs().mkdir(&Creds::root(), dir, name.as_bytes(), 0o755))
            .unwrap()
            .ino
    }

    /// What the lookup of "." in `ino` answers: the inode, or the errno.
    fn dot(&mut self, ino: u64) -> Result<u64, i32> {
        ready(self.fs().handle_inode(ino))
            .map(|a| a.ino)
            .map_err(|e| e.errno())
    }

    fn dotdot(&mut self, ino: u64) -> Result<u64, i32> {
        ready(self.fs().handle_parent(ino))
            .map(|a| a.ino)
            .map_err(|e| e.errno())
    }

    /// `next_ino` of the super block on the device: what a crash keeps.
    fn durable_next_ino(&self) -> u64 {
        read_meta_super(&self.meta).unwrap().1.next_ino.get()
    }

    fn check(&mut self) {
        let (meta, data) = (self.meta.clone(), self.data.clone());
        let vol = self.fs().store_mut();
        let problems = check_volume(vol.store_mut(), &meta, &data).problems;
        assert!(problems.is_empty(), "{problems:?}");
    }
}

#[test]
fn handle_lookups_find_linked_files_and_directories() {
    let mut v = V::new(1024);
    let d = v.mkdir(ROOT, "d");
    let e = v.mkdir(d, "e");
    let f = v.create(e, "f");
    for ino in [ROOT, d, e, f] {
        assert_eq!(v.dot(ino), Ok(ino));
    }
    assert_eq!(v.dotdot(ROOT), Ok(ROOT));
    assert_eq!(v.dotdot(d), Ok(ROOT));
    assert_eq!(v.dotdot(e), Ok(d));
    // The kernel asks ".." of directories only.
    assert_eq!(v.dotdot(f), Err(libc::ENOTDIR));
    // A rename moves the parent with it.
    ready(v.fs().rename(&Creds::root(), d, b"e", ROOT, b"e2", 0)).unwrap();
    assert_eq!(v.dotdot(e), Ok(ROOT));
    // No permission is needed: the kernel has checked the caller may
    // decode handles.
    ready(v.fs().setattr(
        &Creds::root(),
        e,
        &scoutfs_engine::fs::SetAttr {
            mode: Some(0),
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(v.dot(f), Ok(f));
    assert_eq!(v.dotdot(e), Ok(ROOT));
    v.remount();
    for ino in [ROOT, d, e, f] {
        assert_eq!(v.dot(ino), Ok(ino));
    }
    v.check();
}

#[test]
fn a_deleted_inode_is_not_found_and_an_unused_number_neither() {
    let mut v = V::new(1024);
    let d = v.mkdir(ROOT, "d");
    let f = v.create(d, "f");
    ready(v.fs().unlink(&Creds::root(), d, b"f")).unwrap();
    ready(v.fs().rmdir(&Creds::root(), ROOT, b"d")).unwrap();
    assert_eq!(v.dot(f), Err(libc::ENOENT));
    assert_eq!(v.dot(d), Err(libc::ENOENT));
    assert_eq!(v.dotdot(d), Err(libc::ENOENT));
    // Numbers never granted, and ones granted but not yet used.
    for ino in [0, f + 1, 1 << 40, u64::MAX] {
        assert_eq!(v.dot(ino), Err(libc::ENOENT), "inode {ino}");
    }
    v.check();
}

#[test]
fn an_unlinked_inode_is_not_found_even_while_open() {
    // The kernel answers a handle of a file it has open from its own
    // cache; it asks only after the last close (tests/file_handles.rs).
    let mut v = V::new(1024);
    let f = v.create(ROOT, "f");
    ready(v.fs().open_ino(&Creds::root(), f, MAY_READ)).unwrap();
    ready(v.fs().unlink(&Creds::root(), ROOT, b"f")).unwrap();
    assert_eq!(v.dot(f), Err(libc::ENOENT));
    ready(v.fs().release(f)).unwrap();
    assert_eq!(v.dot(f), Err(libc::ENOENT));

    // A removed directory, still open.
    let d = v.mkdir(ROOT, "d");
    ready(v.fs().open_ino(&Creds::root(), d, MAY_READ)).unwrap();
    ready(v.fs().rmdir(&Creds::root(), ROOT, b"d")).unwrap();
    assert_eq!(v.dot(d), Err(libc::ENOENT));
    assert_eq!(v.dotdot(d), Err(libc::ENOENT));
    ready(v.fs().release(d)).unwrap();

    // An O_TMPFILE inode, open and not linked yet; found once linked.
    let t = ready(v.fs().tmpfile(&Creds::root(), ROOT, 0o600)).unwrap();
    assert_eq!(t.kind, FileType::Regular);
    assert_eq!(v.dot(t.ino), Err(libc::ENOENT));
    ready(v.fs().link(&Creds::root(), t.ino, ROOT, b"t")).unwrap();
    assert_eq!(v.dot(t.ino), Ok(t.ino));
    ready(v.fs().release(t.ino)).unwrap();
    assert_eq!(v.dot(t.ino), Ok(t.ino));
    v.check();
}

#[test]
fn every_grant_is_durable_before_a_number_from_it_is_used() {
    // Small grants: many grant boundaries in a few creates.
    let mut v = V::new(3);
    for i in 0..20 {
        let ino = v.create(ROOT, &format!("f{i}"));
        assert!(
            v.durable_next_ino() > ino,
            "inode {ino} in use while the device's next_ino is {}",
            v.durable_next_ino()
        );
    }
    v.check();
}

#[test]
fn a_crash_never_lets_a_number_be_granted_again() {
    for per_lock in [1, 3, 1024] {
        let mut v = V::new(per_lock);
        let kept = v.create(ROOT, "kept");
        ready(v.fs().sync()).unwrap();
        // Made after the last commit, so lost in the crash unless a
        // grant's commit took them along; the kernel (or an NFS client)
        // may hold handles of every one.
        let made: Vec<u64> = (0..5)
            .map(|i| v.create(ROOT, &format!("made{i}")))
            .collect();
        v.crash();
        assert_eq!(v.dot(kept), Ok(kept));
        // Each number names its own file still, or nothing.
        let survivors = |v: &mut V| -> usize {
            let mut n = 0;
            for (i, &ino) in made.iter().enumerate() {
                let by_name = ready(v.fs().lookup(
                    &Creds::root(),
                    ROOT,
                    format!("made{i}").as_bytes(),
                ));
                match v.dot(ino) {
                    Ok(_) => {
                        assert_eq!(by_name.map(|a| a.ino), Ok(ino), "per_lock {per_lock}");
                        n += 1;
                    }
                    Err(e) => {
                        assert_eq!(e, libc::ENOENT);
                        assert!(by_name.is_err(), "per_lock {per_lock}: made{i} moved");
                    }
                }
            }
            n
        };
        let before = survivors(&mut v);
        // With one grant for all, nothing made after the commit survives.
        if per_lock == 1024 {
            assert_eq!(before, 0);
        }
        let seen = *made.iter().max().unwrap();
        for i in 0..10 {
            let ino = v.create(ROOT, &format!("new{i}"));
            assert!(
                ino > seen,
                "per_lock {per_lock}: new inode {ino}, but {seen} was handed out before the crash"
            );
        }
        assert_eq!(survivors(&mut v), before);
        v.check();
    }
}

#[test]
fn a_create_on_a_read_only_volume_grants_nothing() {
    let mut v = V::new(1024);
    let before = v.durable_next_ino();
    v.fs().store_mut().set_read_only("test");
    let r = ready(v.fs().create(&Creds::root(), ROOT, b"f", 0o644));
    assert_eq!(r.map(|a| a.ino).map_err(|e| e.errno()), Err(libc::EROFS));
    assert_eq!(v.durable_next_ino(), before);
}

#[test]
fn generations_are_the_volumes_and_zero_for_the_root() {
    let fsid = 0x5dc2_4c05_d78f_f5da;
    assert_eq!(handle_generation(fsid, ROOT), 0);
    let g = handle_generation(fsid, 2);
    assert_eq!(g, 0x5dc2_4c05 ^ 0xd78f_f5da);
    assert_eq!(handle_generation(fsid, 1 << 50), g);
}
