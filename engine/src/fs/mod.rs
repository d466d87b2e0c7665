//! engine::fs — POSIX operations expressed on items.
//!
//! [`Fs`] turns each filesystem operation (on inode numbers, with the
//! caller's [`Creds`]) into reads and writes of items through an
//! [`ItemStore`] (the item layer, [`crate::item`]; the mount's
//! [`crate::txn::Volume`] implements it), and file contents into calls
//! of [`crate::data`] over the same store. The items are scoutfs's (see
//! ../shared/SCOUTFS.md):
//!
//! - inode: fs zone, `first = ino`, type INODE; value [`Inode`].
//! - dirent: `(dir, DIRENT, name hash, readdir pos)`; readdir:
//!   `(dir, READDIR, pos)`; link backref: `(ino, LINK_BACKREF, dir, pos)`.
//!   All three hold the same value: the [`crate::format::inode::Dirent`]
//!   header and the name. The name hash is [`name_hash`] (two chained
//!   crc32c); entries whose names collide differ by their position, so a
//!   lookup walks the positions of one hash and compares names. Each new
//!   entry takes the directory's `next_readdir_pos` (from 2), so positions
//!   never move while other entries come and go.
//! - xattr: `(ino, XATTR, name hash, xattr id, part)`; the header, name and
//!   value run over parts of up to 896 bytes.
//!   POSIX ACLs are the xattrs `system.posix_acl_access` / `_default`
//!   (acl.rs): an access ACL is stored only when the mode can't say it,
//!   and the mode's rwx bits always follow it.
//! - symlink: `(ino, SYMLINK, part)`; the target and a NUL, up to 4096.
//! - inode index: zone INODE_INDEX, type META_SEQ / DATA_SEQ, `second =
//!   seq, third = ino`, no value; maintained by `Batch` (batch.rs).
//! - orphan: zone ORPHAN, `first = rid, type ORPHAN, second = ino`: an
//!   inode with no links that a handle still holds; [`Fs::open`] deletes
//!   the ones a crash left behind.
//!
//! Directory sizes are the sum of their entries' name lengths (as
//! scoutfs), so a directory is empty exactly when its size is 0; nlink is
//! 2 plus its subdirectories.
//!
//! **Atomicity.** Every operation reads and checks all it needs first and
//! gathers its changes in a `Batch` (batch.rs); only a complete batch is
//! written, between [`ItemStore::hold_trans`] and
//! [`ItemStore::release_trans`]. An error found by a check therefore
//! leaves nothing behind. What the store must add: `Volume` may commit on
//! its own after any write (dirty-block or age trigger) and a write can
//! still fail for want of metadata space half-way through a batch; a
//! `hold_trans` that reserves room and holds commits off closes both.

mod acl;
mod atime;
mod batch;
mod dir;
mod dirent;
mod error;
mod file;
mod handle;
mod inode;
mod orphan;
mod perm;
mod refs;
mod remount;
mod rename;
mod symlink;
mod xattr;

use std::collections::HashMap;

use crate::format::inode::{Inode, Timespec, DIRENT_FIRST_POS, ROOT_INO};
use crate::format::Key;
use crate::server::Statfs;

/// The store `Fs` runs on; it lives in the item layer below `fs` and
/// `data`, and is named here too because it bounds [`Fs`].
pub use crate::item::ItemStore;
pub use acl::{
    Acl, AclEntry, AclKind, ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR, ACL_GROUP, ACL_GROUP_OBJ,
    ACL_MASK, ACL_OTHER, ACL_UNDEFINED_ID, ACL_USER, ACL_USER_OBJ, ACL_XATTR_VERSION,
};
pub use atime::{atime_due, relatime_due, AtimeMode, AtimePolicy, LAZY_ATIMES_MAX};
pub use batch::{data_seq_index_key, meta_seq_index_key};
pub use dir::DirEntry;
pub use dirent::name_hash;
pub use error::{FsError, Result};
pub use file::{
    FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_NO_HIDE_STALE,
    FALLOC_FL_PUNCH_HOLE, FALLOC_FL_UNSHARE_RANGE, FALLOC_FL_WRITE_ZEROES, FALLOC_FL_ZERO_RANGE,
};
pub use handle::handle_generation;
pub use inode::{Attr, FileType, SetAttr};
pub use orphan::orphan_key;
pub use perm::{Creds, MAY_EXEC, MAY_READ, MAY_WRITE};
pub use refs::KernelRefs;
pub use rename::{RENAME_EXCHANGE, RENAME_NOREPLACE};
pub use xattr::{XATTR_CREATE, XATTR_REPLACE};

use batch::Batch;

/// The current time, from the system clock.
pub fn system_time() -> Timespec {
    timespec_of(std::time::SystemTime::now())
}

/// A clock whose wall time is a function's (tests that stamp chosen
/// times: `clock: &TimespecClock(my_fn)`); its monotonic time is the
/// machine's.
#[derive(Clone, Copy)]
pub struct TimespecClock(pub fn() -> Timespec);

impl std::fmt::Debug for TimespecClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimespecClock")
    }
}

impl crate::reactor::Clock for TimespecClock {
    fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn wall(&self) -> std::time::SystemTime {
        let t = (self.0)();
        let (sec, nsec) = (t.sec.get(), t.nsec.get());
        let base = match sec >= 0 {
            true => std::time::UNIX_EPOCH + std::time::Duration::from_secs(sec as u64),
            false => std::time::UNIX_EPOCH - std::time::Duration::from_secs(sec.unsigned_abs()),
        };
        base + std::time::Duration::from_nanos(nsec as u64)
    }
}

/// A system time as an inode time: whole seconds (negative before 1970)
/// and the nanoseconds counted forward from them, as the kernel's
/// timespec64; times past `i64::MAX` seconds either way are clamped.
pub fn timespec_of(t: std::time::SystemTime) -> Timespec {
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timespec::new(secs(d), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => Timespec::new(-secs(d), 0),
                n => Timespec::new((-secs(d)).saturating_sub(1), 1_000_000_000 - n),
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    /// This mount's rid (as in `TxnOptions::rid`): its orphan items are
    /// keyed by it.
    pub rid: u64,
    /// Inode numbers asked of the server at a time (scoutfs's
    /// ino_alloc_per_lock).
    pub ino_alloc_per_lock: u64,
    /// The time stamped on changes (its wall clock; the engine gives its
    /// reactor's).
    pub clock: &'static dyn crate::reactor::Clock,
    /// The hash of entry and xattr names. It is part of the format: every
    /// mount of a volume must use the same one. Tests replace it to force
    /// collisions.
    pub name_hash: fn(&[u8]) -> u64,
    /// POSIX ACLs (the `acl` mount option, on by default): access ACLs
    /// decide permissions and default ACLs are inherited. With `noacl`
    /// the `system.posix_acl_*` xattrs are EOPNOTSUPP and no ACL is
    /// evaluated (the umask always applies).
    pub acl: bool,
    /// Data preallocation on writes (scoutfs's data_prealloc_blocks,
    /// data_prealloc_contig_only).
    pub data_prealloc: crate::data::Prealloc,
    /// When reads update atime (the mount's `relatime`, `noatime`,
    /// `strictatime`, `nodiratime`, `lazytime`; atime.rs).
    pub atime: AtimePolicy,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            rid: 1,
            ino_alloc_per_lock: crate::format::key::LOCK_INODE_GROUP_NR,
            clock: &crate::reactor::SYSTEM_CLOCK,
            name_hash,
            acl: true,
            data_prealloc: crate::data::Prealloc::default(),
            atime: AtimePolicy::default(),
        }
    }
}

/// A mounted filesystem over an item store.
#[derive(Debug)]
pub struct Fs<S: ItemStore> {
    store: S,
    opts: FsOptions,
    format_version: u64,
    /// Inode numbers granted and not yet used: `ino_next..ino_end`.
    ino_next: u64,
    ino_end: u64,
    /// A grant of inode numbers `(first, end)` made in transaction `seq`,
    /// not used before that commit is durable (handle.rs).
    ino_grant: Option<(u64, u64, u64)>,
    /// Handles held on each inode (open files, and whatever else a
    /// frontend pins); an unlinked inode lives while its count is non-zero.
    open_counts: HashMap<u64, u32>,
    /// The kernel's references through FUSE's lookup counts (refs.rs): an
    /// unlinked inode also lives while the kernel references it.
    kernel_refs: std::sync::Arc<refs::KernelRefs>,
    /// Unlinked inodes too large to delete in the unlinking transaction
    /// (orphan.rs).
    pending_purge: Vec<u64>,
    /// O_TMPFILE inodes of this mount that linkat may still link.
    linkable: std::collections::HashSet<u64>,
    /// Inodes known to have no security.capability xattr (xattr.rs).
    no_capability: std::collections::HashSet<u64>,
    /// Atimes a lazytime mount keeps in memory (atime.rs); inode reads
    /// see them.
    lazy_atimes: atime::LazyAtimes,
}

impl<S: ItemStore> Fs<S> {
    /// Mount: make the root directory if the volume has none yet, and
    /// delete the inodes this mount's crash left orphaned.
    pub async fn open(store: S, opts: FsOptions) -> Result<Fs<S>> {
        assert!(opts.ino_alloc_per_lock > 0);
        let format_version = store.format_version();
        let mut fs = Fs {
            store,
            opts,
            format_version,
            ino_next: 0,
            ino_end: 0,
            ino_grant: None,
            open_counts: HashMap::new(),
            kernel_refs: Default::default(),
            pending_purge: Vec::new(),
            linkable: std::collections::HashSet::new(),
            no_capability: std::collections::HashSet::new(),
            lazy_atimes: atime::LazyAtimes::default(),
        };
        // The mount's first grant of inode numbers, committed before a
        // number from it is used (grant_inos): with the root directory on
        // a new volume, else alone. Here rather than at the first create,
        // whose commit would restart the aged-commit clock under the
        // writes that follow it.
        let grant = match fs.store.read_only() {
            true => None,
            false => Some(fs.grant_inos().await?),
        };
        if fs.store.lookup(&Key::inode(ROOT_INO)).await?.is_none() {
            fs.make_root().await?;
        } else if grant.is_some() {
            fs.store.commit().await?;
        }
        if let Some((first, end)) = grant {
            (fs.ino_next, fs.ino_end) = (first, end);
        }
        fs.delete_orphans().await?;
        Ok(fs)
    }

    async fn make_root(&mut self) -> Result<()> {
        let now = self.now();
        let root = Inode {
            mode: (libc::S_IFDIR | 0o755).into(),
            nlink: 2.into(),
            next_readdir_pos: DIRENT_FIRST_POS.into(),
            atime: now,
            ctime: now,
            mtime: now,
            crtime: now,
            ..Inode::default()
        };
        let mut b = self.batch();
        b.create_inode(ROOT_INO, root);
        self.apply(b).await?;
        self.store.commit().await?;
        tracing::info!("created the root directory");
        Ok(())
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Unmount without committing (the caller commits or drops the store).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Make every change so far durable (fsync, syncfs), atimes lazytime
    /// kept included; the seq now durable.
    pub async fn sync(&mut self) -> Result<u64> {
        self.write_lazy_atimes(None).await?;
        Ok(self.store.commit().await?)
    }

    /// fsync(2) of `ino`: make its changes durable, and nothing more than
    /// needed. An inode's meta_seq and data_seq name the transactions that
    /// last changed it (its items, its data extents), so the commit that
    /// covers them is the later of the two: an inode unchanged since the
    /// last commit returns at once, and one changed in the commit in
    /// flight waits only for that. Its lazytime atime is written first.
    /// Returns the seq now durable.
    pub async fn fsync(&mut self, ino: u64) -> Result<u64> {
        if self.lazy_atimes.get(ino).is_some() {
            self.write_atimes(&[ino]).await?;
        }
        let inode = self.read_inode(ino).await?;
        let seq = inode.meta_seq.get().max(inode.data_seq.get());
        Ok(self.store.commit_until(seq).await?)
    }

    /// The mount ends, every frontend gone: write what is kept in memory
    /// (lazytime's atimes) before the unmount commits, and end every
    /// handle and kernel reference with the mount, deleting the unlinked
    /// inodes they kept (refs.rs). Call it last: it closes every handle.
    pub async fn end_mount(&mut self) -> Result<()> {
        self.write_lazy_atimes(None).await?;
        self.end_kernel_refs().await
    }

    pub async fn statfs(&mut self) -> Result<Statfs> {
        let mut s = self.store.statfs().await?;
        // Unlinked inodes only the kernel still references (refs.rs).
        self.count_kept_as_deleted(&mut s).await?;
        Ok(s)
    }

    fn now(&self) -> Timespec {
        timespec_of(self.opts.clock.wall())
    }

    fn hash(&self, name: &[u8]) -> u64 {
        (self.opts.name_hash)(name)
    }

    fn batch(&self) -> Batch {
        Batch::new(self.store.txn_seq(), self.format_version)
    }

    /// A new inode number from this mount's grant, asking for more when it
    /// runs out.
    async fn alloc_ino(&mut self) -> Result<u64> {
        if self.ino_next == self.ino_end {
            // Kept until its commit is durable: an operation that waits
            // for that commit runs again and finds it here.
            let (first, end, seq) = match self.ino_grant {
                Some(g) => g,
                None => {
                    let (first, end) = self.grant_inos().await?;
                    let g = (first, end, self.store.txn_seq());
                    self.ino_grant = Some(g);
                    g
                }
            };
            self.store.commit_until(seq).await?;
            self.ino_grant = None;
            (self.ino_next, self.ino_end) = (first, end);
        }
        let ino = self.ino_next;
        self.ino_next += 1;
        Ok(ino)
    }

    /// A new grant of inode numbers, `first..end`. The caller commits it
    /// before using a number from it, as scoutfs's server commits each
    /// grant before answering it: a number a frontend (and so a file
    /// handle) has seen is then below the durable `next_ino`, and no crash
    /// can grant it again (handle.rs). One commit per mount and per
    /// `ino_alloc_per_lock` new inodes.
    async fn grant_inos(&mut self) -> Result<(u64, u64)> {
        let (first, count) = self
            .store
            .alloc_inodes(self.opts.ino_alloc_per_lock)
            .await?;
        if count == 0 || first <= ROOT_INO {
            return Err(FsError::NoSpace(format!(
                "the server granted no inode numbers ({first}, {count})"
            )));
        }
        let end = first
            .checked_add(count)
            .ok_or(FsError::NoSpace("inode numbers are exhausted".into()))?;
        Ok((first, end))
    }

    /// Write a batch: the only place operations write items.
    async fn apply(&mut self, mut batch: Batch) -> Result<()> {
        let inodes = batch.inode_count_delta();
        let purge_later = batch.take_purge_later();
        let (writes, freed) = batch.into_writes();
        if writes.is_empty() {
            debug_assert!(freed.is_empty());
            return Ok(());
        }
        let deletes = writes.iter().filter(|(_, v)| v.is_none()).count();
        let written_inodes: Vec<u64> = if self.lazy_atimes.is_empty() {
            Vec::new()
        } else {
            writes
                .iter()
                .filter(|(k, _)| *k == Key::inode(k.first))
                .map(|(k, _)| k.first)
                .collect()
        };
        // Every block the writes can need, read before the first: the
        // operation has changed nothing yet, so a miss here runs it again
        // rather than stopping it half-way (docs/ARCHITECTURE.md).
        let keys: Vec<(Key, bool)> = writes.iter().map(|(k, v)| (*k, v.is_none())).collect();
        self.store.prefetch(&keys).await?;
        self.store
            .hold_trans(writes.len(), deletes * 2 > writes.len())
            .await?;
        let r = self.write_all(writes).await;
        if r.is_ok() && !self.lazy_atimes.is_empty() {
            // An inode item written (or deleted) carried its kept atime.
            for &ino in &written_inodes {
                self.lazy_atimes.written(ino);
            }
        }
        if r.is_ok() {
            for ext in freed {
                self.store.free_data(ext);
            }
            // Counted in the transaction that holds the inode items.
            if inodes != 0 {
                self.store.add_inode_count(inodes);
            }
            self.pending_purge.extend(purge_later);
        }
        self.store.release_trans();
        if let Err(e) = &r {
            tracing::error!("an fs operation failed half-way through its writes: {e}");
        }
        r
    }

    async fn write_all(&mut self, writes: Vec<batch::ItemWrite>) -> Result<()> {
        for (key, val) in writes {
            match val {
                Some(v) => self.store.upsert(key, &v).await?,
                None => {
                    self.store.delete(&key).await?;
                }
            }
        }
        Ok(())
    }

    /// The inode, or ENOENT: as stored, with the atime lazytime keeps in
    /// memory (so an operation that writes the inode writes that too).
    async fn read_inode(&mut self, ino: u64) -> Result<Inode> {
        let Some(item) = self.store.lookup(&Key::inode(ino)).await? else {
            return Err(FsError::NotFound);
        };
        let mut inode = self.inode_of_item(ino, &item.val)?;
        if let Some(atime) = self.lazy_atimes.get(ino) {
            inode.atime = atime;
        }
        Ok(inode)
    }

    /// An inode item's value as stored.
    fn inode_of_item(&self, ino: u64, val: &[u8]) -> Result<Inode> {
        Inode::from_value(val, self.format_version)
            .map_err(|e| FsError::corrupt(format!("inode {ino}: {e}")))
    }
}
