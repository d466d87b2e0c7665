//! Another session's changes reach a FUSE mount's kernel at once: the
//! mount holds files and directories cached (read, stat, listed, a
//! missing name remembered) with long entry, attribute and negative
//! timeouts, a second session of the same engine changes them through the
//! front door, and once the engine says its change events are delivered
//! (`Engine::wait_changes_delivered`, a barrier, not a pause) the mount
//! shows the new size, contents, times and names. The mount's own
//! changes make no notifications to itself.
//!
//! In one process: the engine on memory devices, the FUSE mount served
//! by its handler threads, and the test's own system calls on the mount.
//! Needs root and /dev/fuse (skipped otherwise).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::{Timespec, ROOT_INO};
use scoutfs_engine::fs::SetAttr;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Caller, Engine, EngineOptions, Handle, Op, Reply, Request, SessionId};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_fuse::{Counter, Counters, FuseMount, FuseOptions, MountFlags, ScoutFuse};

/// Longer than any test: nothing here may pass by expiry.
const LONG: Duration = Duration::from_secs(3600);

/// How long a delivery may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(120);

fn unsupported() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounting FUSE needs it)");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// An engine, its FUSE mount, and a second session of the same engine.
struct Mounted {
    engine: Arc<Engine>,
    mount: Option<FuseMount>,
    dir: PathBuf,
    counters: Arc<Counters>,
    other: SessionId,
    _exited: mpsc::Receiver<String>,
}

fn long_timeouts() -> FuseOptions {
    FuseOptions {
        entry_timeout: LONG,
        attr_timeout: LONG,
        negative_timeout: LONG,
        // Cached writers whatever the memory device's free space.
        writeback_headroom: Some(0),
        threads: 2,
        ..FuseOptions::default()
    }
}

fn mount(opts: FuseOptions) -> Mounted {
    static N: AtomicU64 = AtomicU64::new(0);
    let meta = MemDev::new(128 << 20);
    let data = MemDev::new(128 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let eopts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    };
    let meta: Arc<dyn BlockDev> = Arc::new(meta);
    let data: Arc<dyn BlockDev> = Arc::new(data);
    let engine = Arc::new(Engine::start(meta, data, eopts).unwrap());
    let counters = Arc::new(Counters::default());
    let fs = ScoutFuse::new(engine.clone(), opts, counters.clone());
    let dir = std::env::temp_dir().join(format!(
        "scoutfs-coherence-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, rx) = mpsc::channel();
    let m = scoutfs_fuse::mount(fs, &dir, "scoutfs-coherence", MountFlags::default(), tx)
        .unwrap_or_else(|e| panic!("mount: {e}"));
    let other = engine.open_session().unwrap();
    Mounted {
        engine,
        mount: Some(m),
        dir,
        counters,
        other,
        _exited: rx,
    }
}

impl Mounted {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `op` in the second session, as root.
    fn op(&self, op: Op) -> Reply {
        let what = format!("{op:?}");
        self.engine
            .call_op(Request::new(self.other, Caller::root(), op))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// The inode `name` in `parent` leads to, as the engine says.
    fn ino(&self, parent: u64, name: &str) -> u64 {
        let op = Op::Lookup {
            parent,
            name: name.into(),
        };
        self.op(op).into_attr().unwrap().ino
    }

    fn create(&self, parent: u64, name: &str, contents: &[u8]) -> u64 {
        let op = Op::Create {
            parent,
            name: name.into(),
            mode: libc::S_IFREG | 0o644,
            flags: libc::O_RDWR as u32,
            report_free: false,
        };
        let (h, a, _) = self.op(op).into_opened().unwrap();
        self.write(a.ino, h, 0, contents);
        self.release(h);
        a.ino
    }

    fn open(&self, ino: u64) -> Handle {
        let op = Op::Open {
            ino,
            flags: libc::O_RDWR as u32,
            report_free: false,
        };
        self.op(op).into_opened().unwrap().0
    }

    fn write(&self, ino: u64, _h: Handle, offset: u64, data: &[u8]) {
        let op = Op::Write {
            ino,
            offset,
            data: data.to_vec(),
        };
        assert_eq!(self.op(op).into_written().unwrap(), data.len() as u64);
    }

    fn release(&self, handle: Handle) {
        self.op(Op::Release { handle }).done().unwrap();
    }

    fn mkdir(&self, parent: u64, name: &str) -> u64 {
        let op = Op::Mkdir {
            parent,
            name: name.into(),
            mode: 0o755,
        };
        self.op(op).into_attr().unwrap().ino
    }

    fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let op = Op::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: new_name.into(),
            flags: 0,
        };
        self.op(op).done().unwrap();
    }

    fn setattr(&self, ino: u64, set: SetAttr) {
        self.op(Op::Setattr {
            ino,
            set,
            handle: None,
        })
        .into_attr()
        .unwrap();
    }

    /// The engine's attributes of `ino`.
    fn attr(&self, ino: u64) -> scoutfs_engine::fs::Attr {
        self.op(Op::Getattr { ino }).into_attr().unwrap()
    }

    /// Every change event made so far has reached the kernel.
    fn settle(&self) {
        assert!(
            self.engine.wait_changes_delivered(HANG),
            "change events not delivered"
        );
    }

    fn names(&self, rel: &str) -> BTreeSet<String> {
        std::fs::read_dir(self.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    fn missing(&self, rel: &str) -> bool {
        match std::fs::symlink_metadata(self.path(rel)) {
            Err(e) => e.raw_os_error() == Some(libc::ENOENT),
            Ok(_) => false,
        }
    }

    fn unmount(mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().unwrap();
        }
        let _ = std::fs::remove_dir(&self.dir);
        let mut engine = self.engine;
        // The handler is gone with the mount's threads; the notifier
        // thread lets go of its clone once it sees that.
        for _ in 0..500 {
            match Arc::try_unwrap(engine) {
                Ok(e) => {
                    e.shutdown().unwrap();
                    return;
                }
                Err(e) => {
                    engine = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        panic!("the engine is still referenced after unmount");
    }
}

fn mtime(md: &std::fs::Metadata) -> (i64, i64) {
    (md.mtime(), md.mtime_nsec())
}

fn engine_mtime(a: &scoutfs_engine::fs::Attr) -> (i64, i64) {
    (a.mtime.sec.get(), a.mtime.nsec.get().into())
}

/// A file the mount read and stat'ed (its pages and attributes cached),
/// rewritten, extended, re-timed and truncated by another session: the
/// mount reads the new bytes and stats the new size and mtime.
fn a_cached_file_follows_another_sessions_writes(opts: FuseOptions) {
    let m = mount(opts);
    let ino = m.create(ROOT_INO, "f", b"one\n");
    // The creation's own notifications are through before the mount
    // caches anything (they would evict the inode under the test).
    m.settle();
    let f = m.path("f");
    assert_eq!(std::fs::read(&f).unwrap(), b"one\n");
    // That read set the atime past the mtime (relatime), so no read is
    // due to change it and the next open keeps the pages
    // (FOPEN_KEEP_CACHE): read from them, not the engine.
    let reads = m.counters.get(Counter::Read);
    assert_eq!(std::fs::read(&f).unwrap(), b"one\n");
    assert_eq!(
        m.counters.get(Counter::Read),
        reads,
        "pages kept across opens"
    );
    // Last, since a read drops the kernel's atime (and a stat then asks
    // for all the attributes): now they are cached too.
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.ino(), md.len()), (ino, 4));

    let h = m.open(ino);
    m.write(ino, h, 0, b"ONE");
    m.write(ino, h, 4, b"two\n");
    m.release(h);
    m.settle();
    assert_eq!(std::fs::read(&f).unwrap(), b"ONE\ntwo\n");
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(md.len(), 8);
    assert_eq!(mtime(&md), engine_mtime(&m.attr(ino)));

    m.setattr(
        ino,
        SetAttr {
            mtime: Some(Timespec::new(1_000_000_000, 5)),
            ..SetAttr::default()
        },
    );
    m.settle();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(mtime(&md), (1_000_000_000, 5));

    m.setattr(
        ino,
        SetAttr {
            size: Some(2),
            ..SetAttr::default()
        },
    );
    m.settle();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 2);
    assert_eq!(std::fs::read(&f).unwrap(), b"ON");
    assert!(m.counters.get(Counter::Changes) > 0);
    m.unmount();
}

#[test]
fn a_cached_file_follows_another_sessions_writes_with_the_writeback_cache() {
    require_fuse!();
    a_cached_file_follows_another_sessions_writes(long_timeouts());
}

#[test]
fn a_cached_file_follows_another_sessions_writes_without_the_writeback_cache() {
    require_fuse!();
    a_cached_file_follows_another_sessions_writes(FuseOptions {
        writeback_cache: false,
        ..long_timeouts()
    });
}

/// Without the writeback cache the kernel takes the engine's size and
/// times even for a file it holds open: a reader with the file open
/// across another session's write reads the new bytes through the same
/// descriptor.
#[test]
fn an_open_file_follows_another_sessions_writes_without_the_writeback_cache() {
    require_fuse!();
    use std::io::{Read, Seek, SeekFrom};
    let m = mount(FuseOptions {
        writeback_cache: false,
        ..long_timeouts()
    });
    let ino = m.create(ROOT_INO, "held", b"abcd");
    m.settle();
    let mut file = std::fs::File::open(m.path("held")).unwrap();
    let mut got = String::new();
    file.read_to_string(&mut got).unwrap();
    assert_eq!(got, "abcd");
    // The read dropped the kernel's atime: this caches the attributes.
    assert_eq!(file.metadata().unwrap().len(), 4);
    let h = m.open(ino);
    m.write(ino, h, 2, b"XYZ");
    m.release(h);
    m.settle();
    assert_eq!(file.metadata().unwrap().len(), 5);
    file.seek(SeekFrom::Start(0)).unwrap();
    got.clear();
    file.read_to_string(&mut got).unwrap();
    assert_eq!(got, "abXYZ");
    drop(file);
    m.unmount();
}

/// A directory the mount listed, with its entries stat'ed and a missing
/// name remembered: another session creates that name, removes one,
/// renames one within the directory and moves one to another directory;
/// the mount sees each at once, and the directory's new mtime.
#[test]
fn a_cached_directory_follows_another_sessions_entries() {
    require_fuse!();
    let m = mount(long_timeouts());
    let d = m.mkdir(ROOT_INO, "d");
    let e = m.mkdir(ROOT_INO, "e");
    let old = m.create(d, "old", b"old");
    let a = m.create(d, "a", b"a");
    let sub = m.mkdir(d, "sub");
    m.create(sub, "inner", b"x");
    let linked = m.create(d, "linked", b"l");
    m.op(Op::Link {
        ino: linked,
        parent: e,
        name: b"other-name".to_vec(),
    });
    m.settle();

    assert_eq!(
        m.names("d"),
        ["a", "linked", "old", "sub"].map(String::from).into()
    );
    for n in ["d/old", "d/a", "d/sub", "d/sub/inner", "e/other-name"] {
        std::fs::metadata(m.path(n)).unwrap();
    }
    assert_eq!(
        std::fs::metadata(m.path("e/other-name")).unwrap().nlink(),
        2
    );
    // Remembered as missing (the negative timeout is long).
    assert!(m.missing("d/new"));
    let d_mtime = mtime(&std::fs::metadata(m.path("d")).unwrap());

    m.create(d, "new", b"new");
    m.op(Op::Unlink {
        parent: d,
        name: b"old".to_vec(),
    })
    .done()
    .unwrap();
    m.rename(d, "a", d, "b");
    m.rename(d, "sub", e, "sub");
    m.op(Op::Unlink {
        parent: d,
        name: b"linked".to_vec(),
    })
    .done()
    .unwrap();
    m.settle();

    assert_eq!(std::fs::read(m.path("d/new")).unwrap(), b"new");
    assert!(m.missing("d/old"), "a removed entry is gone");
    assert!(m.missing("d/a"), "a renamed entry left its old name");
    assert_eq!(std::fs::metadata(m.path("d/b")).unwrap().ino(), a);
    assert!(m.missing("d/sub"));
    assert_eq!(std::fs::metadata(m.path("e/sub")).unwrap().ino(), sub);
    assert_eq!(std::fs::read(m.path("e/sub/inner")).unwrap(), b"x");
    assert!(m.missing("d/linked"));
    assert_eq!(
        std::fs::metadata(m.path("e/other-name")).unwrap().nlink(),
        1,
        "the other name's link count"
    );
    assert_eq!(m.names("d"), ["b", "new"].map(String::from).into());
    assert_eq!(m.names("e"), ["other-name", "sub"].map(String::from).into());
    let md = std::fs::metadata(m.path("d")).unwrap();
    assert_eq!(mtime(&md), engine_mtime(&m.attr(d)));
    let _ = (old, d_mtime);

    // A directory removed by the other session, after the mount cached it.
    m.op(Op::Unlink {
        parent: sub,
        name: b"inner".to_vec(),
    })
    .done()
    .unwrap();
    m.op(Op::Rmdir {
        parent: e,
        name: b"sub".to_vec(),
    })
    .done()
    .unwrap();
    m.settle();
    assert!(m.missing("e/sub/inner"));
    assert!(m.missing("e/sub"));
    assert!(m.counters.get(Counter::NotifyDelete) > 0);
    m.unmount();
}

/// Attribute changes without data: mode, owner, and an xattr (the ACL
/// noted absent by a listing is looked up again after another session
/// sets one).
#[test]
fn attributes_and_acls_follow_another_sessions_changes() {
    require_fuse!();
    let m = mount(long_timeouts());
    let d = m.mkdir(ROOT_INO, "d");
    let ino = m.create(d, "f", b"f");
    m.settle();
    // readdirplus notes that f has no access ACL.
    assert_eq!(m.names("d"), ["f"].map(String::from).into());
    let md = std::fs::metadata(m.path("d/f")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o644, 0));

    m.setattr(
        ino,
        SetAttr {
            mode: Some(0o600),
            uid: Some(1234),
            ..SetAttr::default()
        },
    );
    // user::rw-, user:1000:r--, group::r--, mask::r--, other::---
    let acl: Vec<u8> = [
        &[2u8, 0, 0, 0][..],
        &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff],
        &[2, 0, 4, 0, 0xe8, 3, 0, 0],
        &[4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff],
        &[0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff],
        &[0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    ]
    .concat();
    m.op(Op::SetXattr {
        ino,
        name: b"system.posix_acl_access".to_vec(),
        value: acl.clone(),
        flags: 0,
    })
    .done()
    .unwrap();
    m.settle();
    let md = std::fs::metadata(m.path("d/f")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o640, 1234));
    let got = getxattr(&m.path("d/f"), "system.posix_acl_access");
    assert_eq!(got, Some(acl));
    m.unmount();
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer of buf.len() bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// A write-only open written through (`FOPEN_DIRECT_IO`: free space under
/// the headroom) writes past the kernel's page cache; a reader holding
/// the file open with its pages cached reads the new bytes.
#[test]
fn a_write_through_the_mount_leaves_no_stale_pages_to_its_readers() {
    require_fuse!();
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let m = mount(FuseOptions {
        writeback_headroom: Some(1 << 50),
        ..long_timeouts()
    });
    let f = m.path("f");
    std::fs::write(&f, b"aaaa").unwrap();
    let mut r = std::fs::File::open(&f).unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "aaaa");
    let through = m.counters.get(Counter::WriteThroughOpens);
    let w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    assert_eq!(m.counters.get(Counter::WriteThroughOpens), through + 1);
    w.write_all_at(b"bb", 1).unwrap();
    r.seek(SeekFrom::Start(0)).unwrap();
    got.clear();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "abba");
    drop((r, w));
    m.unmount();
}

/// Changes made through the mount reach the engine in the mount's own
/// session: the kernel made them and knows them, so the engine queues no
/// event for the mount and it writes no notification about them. Another
/// session's change is the positive control.
#[test]
fn the_mounts_own_changes_make_no_notifications_to_itself() {
    require_fuse!();
    let m = mount(long_timeouts());
    let own = |c: Counter| m.counters.get(c);
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/f"), b"hello").unwrap();
    std::fs::write(m.path("d/g"), b"world").unwrap();
    std::fs::rename(m.path("d/g"), m.path("d/h")).unwrap();
    std::fs::hard_link(m.path("d/h"), m.path("d/h2")).unwrap();
    std::fs::remove_file(m.path("d/h")).unwrap();
    let mut perms = std::fs::metadata(m.path("d/f")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(m.path("d/f"), perms).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/f"))
        .unwrap()
        .set_len(2)
        .unwrap();
    std::fs::create_dir(m.path("d/sub")).unwrap();
    std::fs::remove_dir(m.path("d/sub")).unwrap();
    // Everything written back and every event (none) delivered.
    std::fs::File::open(m.path("d/f"))
        .unwrap()
        .sync_all()
        .unwrap();
    m.settle();
    for c in [
        Counter::Changes,
        Counter::NotifyInvalInode,
        Counter::NotifyInvalEntry,
        Counter::NotifyDelete,
        Counter::NotifyUncached,
        Counter::NotifyCoarse,
    ] {
        assert_eq!(own(c), 0, "{}", c.name());
    }
    assert_eq!(std::fs::read(m.path("d/f")).unwrap(), b"he");

    let d = m.ino(ROOT_INO, "d");
    m.create(d, "from-elsewhere", b"x");
    m.settle();
    assert!(own(Counter::Changes) > 0);
    assert!(own(Counter::NotifyInvalEntry) + own(Counter::NotifyUncached) > 0);
    assert!(m.path("d/from-elsewhere").exists());
    m.unmount();
}

/// A queue too small for the changes loses events; the mount then drops
/// everything its kernel caches, and still sees every change.
#[test]
fn lost_events_drop_everything_cached() {
    require_fuse!();
    let m = mount(FuseOptions {
        change_queue: 1,
        ..long_timeouts()
    });
    let d = m.mkdir(ROOT_INO, "d");
    let f = m.create(d, "f", b"before");
    m.create(d, "a", b"a");
    m.settle();
    assert_eq!(m.names("d"), ["a", "f"].map(String::from).into());
    assert_eq!(std::fs::read(m.path("d/f")).unwrap(), b"before");
    assert!(m.missing("d/new"));
    m.settle();
    let coarse = m.counters.get(Counter::NotifyCoarse);

    let h = m.open(f);
    m.write(f, h, 0, b"AFTER!");
    m.release(h);
    // One request's events, more than the queue holds.
    m.rename(d, "a", d, "b");
    m.create(d, "new", b"n");
    m.settle();
    assert_eq!(std::fs::read(m.path("d/f")).unwrap(), b"AFTER!");
    assert!(m.missing("d/a"));
    assert!(m.path("d/b").exists());
    assert!(m.path("d/new").exists());
    assert!(m.counters.get(Counter::NotifyCoarse) > coarse);
    m.unmount();
}
