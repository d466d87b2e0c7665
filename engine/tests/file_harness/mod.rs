//! The file-data tests' harness (fallocate.rs, prealloc.rs): a volume on
//! mem devices with the fs mounted, short forms of the file operations as
//! root, a clock that ticks per reading, and `scoutfs check` after each
//! scenario.

#![allow(dead_code)]

use std::cell::Cell;

use scoutfs_engine::data::{self, FileExtent, Prealloc};
use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::format::inode::Timespec;
use scoutfs_engine::fs::{Attr, Creds, Fs, FsError, FsOptions, SetAttr};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

pub const BS: u64 = 4096;
pub const ROOT: u64 = 1;

thread_local! {
    static CLOCK_US: Cell<u64> = const { Cell::new(0) };
}

/// A clock that advances a microsecond per reading, so a test can tell
/// whether an operation stamped a time.
fn clock() -> Timespec {
    CLOCK_US.with(|c| {
        let us = c.get() + 1;
        c.set(us);
        Timespec::new(
            1_700_000_000 + (us / 1_000_000) as i64,
            (us % 1_000_000) as u32 * 1000,
        )
    })
}

pub fn root() -> Creds {
    Creds::root()
}

pub fn opts(prealloc: Prealloc) -> FsOptions {
    FsOptions {
        clock: &scoutfs_engine::fs::TimespecClock(clock),
        data_prealloc: prealloc,
        ..FsOptions::default()
    }
}

/// A volume on mem devices with the fs mounted.
pub struct T {
    pub meta: MemDev,
    pub data: MemDev,
    opts: FsOptions,
    fs: Option<Fs<Volume>>,
}

impl T {
    /// A volume with a data device of `data_bytes` (at least the 256 KiB
    /// before the first data block plus what the test needs).
    pub fn new(prealloc: Prealloc, data_bytes: u64) -> T {
        let meta = MemDev::new(64 << 20);
        let data = MemDev::new(data_bytes);
        mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
        let mut t = T {
            meta,
            data,
            opts: opts(prealloc),
            fs: None,
        };
        t.mount();
        t
    }

    fn mount(&mut self) {
        let txn = TxnOptions {
            cache_bytes: 32 << 20,
            meta_targets: (32, 48),
            ..TxnOptions::default()
        };
        let mut vol = Volume::open(&self.meta, txn).unwrap();
        vol.attach_data_device(&self.data).unwrap();
        self.fs = Some(ready(Fs::open(vol, self.opts)).unwrap());
    }

    pub fn fs(&mut self) -> &mut Fs<Volume> {
        self.fs.as_mut().unwrap()
    }

    pub fn vol(&mut self) -> &mut Volume {
        self.fs().store_mut()
    }

    /// Clean unmount and mount again.
    pub fn remount(&mut self) {
        let vol = self.fs.take().unwrap().into_store();
        vol.unmount().unwrap();
        self.mount();
    }

    /// Mount again with other preallocation options.
    pub fn remount_with(&mut self, prealloc: Prealloc) {
        self.opts.data_prealloc = prealloc;
        self.remount();
    }

    pub fn commit(&mut self) {
        self.vol().commit().unwrap();
    }

    /// `scoutfs check`: every block accounted once, every inode's online
    /// blocks what its extents hold.
    pub fn check(&mut self) {
        let (meta, data) = (self.meta.clone(), self.data.clone());
        let problems = check_volume(self.vol().store_mut(), &meta, &data).problems;
        assert!(problems.is_empty(), "{problems:?}");
    }

    pub fn create(&mut self, name: &str) -> u64 {
        self.create_in(ROOT, name)
    }

    pub fn create_in(&mut self, dir: u64, name: &str) -> u64 {
        ready(self.fs().create(&root(), dir, name.as_bytes(), 0o644))
            .unwrap()
            .ino
    }

    pub fn mknod(&mut self, name: &str, mode: u32) -> u64 {
        ready(self.fs().mknod(&root(), ROOT, name.as_bytes(), mode, 0))
            .unwrap()
            .ino
    }

    pub fn mkdir(&mut self, name: &str) -> u64 {
        self.mkdir_in(ROOT, name)
    }

    pub fn mkdir_in(&mut self, dir: u64, name: &str) -> u64 {
        ready(self.fs().mkdir(&root(), dir, name.as_bytes(), 0o755))
            .unwrap()
            .ino
    }

    /// Rename within one directory.
    pub fn rename_in(&mut self, dir: u64, from: &str, to: &str) {
        ready(
            self.fs()
                .rename(&root(), dir, from.as_bytes(), dir, to.as_bytes(), 0),
        )
        .unwrap();
    }

    pub fn unlink(&mut self, name: &str) {
        ready(self.fs().unlink(&root(), ROOT, name.as_bytes())).unwrap()
    }

    pub fn attr(&mut self, ino: u64) -> Attr {
        ready(self.fs().getattr(ino)).unwrap()
    }

    /// A whole write (panics on a short one).
    pub fn write(&mut self, ino: u64, off: u64, buf: &[u8]) {
        let n = ready(self.fs().write(&root(), ino, off, buf)).unwrap();
        assert_eq!(n, buf.len() as u64, "short write at {off}");
    }

    pub fn try_write(&mut self, ino: u64, off: u64, buf: &[u8]) -> Result<u64, FsError> {
        ready(self.fs().write(&root(), ino, off, buf))
    }

    pub fn read(&mut self, ino: u64, off: u64, len: usize) -> Vec<u8> {
        ready(self.fs().read(ino, off, len)).unwrap()
    }

    pub fn fallocate(&mut self, ino: u64, mode: u32, off: u64, len: u64) -> Result<(), FsError> {
        ready(self.fs().fallocate(&root(), ino, mode, off, len))
    }

    pub fn truncate(&mut self, ino: u64, size: u64) {
        let set = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        ready(self.fs().setattr(&root(), ino, &set)).unwrap();
    }

    /// Every extent of `ino`, in order.
    pub fn extents(&mut self, ino: u64) -> Vec<FileExtent> {
        ready(data::extents(self.vol(), ino, 0, data::MAX_IBLOCK)).unwrap()
    }

    /// statfs's free data blocks.
    pub fn free_blocks(&mut self) -> u64 {
        ready(self.fs().statfs()).unwrap().free_data_blocks
    }
}

/// An error's errno, or a panic if it succeeded.
/// A directory entry's name as text.
pub fn entry_name(e: &scoutfs_engine::fs::DirEntry) -> String {
    String::from_utf8(e.name.clone()).unwrap()
}

pub fn errno<V: std::fmt::Debug>(r: Result<V, FsError>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}
