//! Telling the kernel what it caches is stale: FUSE's unsolicited
//! notifications, written to /dev/fuse by one thread of their own.
//!
//! What they carry:
//! - The engine's change events (`serve::Change`, engine/src/serve/
//!   changes.rs) of every session but this mount's: an inode's attributes
//!   and data range become FUSE_NOTIFY_INVAL_INODE (attributes and ACLs,
//!   and the pages of the range), a name FUSE_NOTIFY_INVAL_ENTRY, a
//!   removed last name FUSE_NOTIFY_DELETE. The mount's own changes are not
//!   sent: they came through this kernel, which updated its caches as it
//!   made them, for every process using the mount.
//! - With the writeback cache the kernel keeps a regular file's size,
//!   mtime and ctime itself and ignores the engine's (`fuse_get_cache_mask`)
//!   for as long as the inode stays in its cache: an INVAL_INODE doesn't
//!   drop those. So for another session's change to a regular file the
//!   engine also sends the file's names, and each becomes an INVAL_ENTRY:
//!   with its dentries gone and nothing holding it open, the kernel evicts
//!   the inode (FUSE keeps no unused inodes) and its next lookup takes the
//!   engine's size and times. A file held open through this mount keeps
//!   the kernel's (module doc of writeback.rs).
//! - The mount's own needs, which the kernel can't see for itself: the
//!   attributes of an inode written back (st_blocks, and a failed
//!   write-back's errno reaching the next write: writeback.rs), and the
//!   pages of a range written through a `FOPEN_DIRECT_IO` handle, which the
//!   kernel writes past its page cache: it drops the range's pages before
//!   sending the WRITE (Linux 6.6 and later; not at all before), but
//!   another open's read while the WRITE is in the engine can cache the
//!   old bytes again, so they are dropped once more after it.
//!
//! Why a thread of their own, never a request handler: a notification can
//! block in the kernel (INVAL_ENTRY takes the directory's inode lock,
//! INVAL_INODE the pages' locks) behind a process that waits for a FUSE
//! request, and the handler that would answer it may be the one writing.
//! The thread waits for a wake (an unpark) from either source, takes
//! everything queued, merges what names the same inode, writes, and tells
//! the engine how far it got (`Subscription::delivered`).
//!
//! When events were lost (the engine's queue for this mount or the local
//! one was full) the thread drops everything: INVAL_INODE of every inode
//! the kernel references (attributes and all pages) and
//! FUSE_NOTIFY_INC_EPOCH (Linux 6.16 and later), after which the kernel
//! revalidates every dentry with a lookup. An older kernel refuses the
//! latter, and then names resolved before the loss stay until the entry
//! timeout.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::Thread;

use fuse_backend_rs::abi::fuse_abi::{
    NotifyDeleteOut, NotifyInvalEntryOut, NotifyInvalInodeOut, NotifyOpcode, OutHeader,
};
use scoutfs_engine::fs::KernelRefs;
use scoutfs_engine::serve::{Change, ChangeEvent, Engine, SessionId, SubscribeOptions};
use vm_memory::ByteValued;

use crate::acl_notes::AclNotes;
use crate::counters::{Counter, Counters};

/// Local requests queued at most; past it the thread drops everything
/// (as for lost engine events).
const LOCAL_QUEUE: usize = 4096;

/// FUSE_NOTIFY_INC_EPOCH (Linux 6.16, protocol 7.44): every dentry the
/// kernel holds is looked up again before it is trusted. No payload.
const NOTIFY_INC_EPOCH: i32 = 8;

/// What the mount itself asks the kernel to drop.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Local {
    /// Attributes (and ACLs).
    Attrs(u64),
    /// Attributes and the pages of a byte range.
    Data(u64, Range<u64>),
}

/// What the notifier and the handler threads share.
struct Shared {
    fd: Arc<OwnedFd>,
    /// Handler threads' requests (a brief lock: never held while
    /// writing to the kernel).
    local: Mutex<Vec<Local>>,
    /// A local request didn't fit in the queue.
    local_lost: AtomicBool,
    stop: AtomicBool,
    counters: Arc<Counters>,
}

/// The mount's notification thread (see the module comment).
pub struct Notifier {
    shared: Arc<Shared>,
    thread: Thread,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("local_queued", &lock(&self.shared.local).len())
            .finish_non_exhaustive()
    }
}

/// What the thread needs besides the shared part.
pub struct Setup {
    pub engine: Arc<Engine>,
    /// The mount's session, whose changes the kernel knows already.
    pub session: SessionId,
    /// The engine's queue for this mount, in events.
    pub capacity: usize,
    /// The writeback cache is on: regular files' names come with their
    /// events, to evict them (module comment).
    pub writeback_cache: bool,
    pub refs: Arc<KernelRefs>,
    pub acl_notes: Arc<AclNotes>,
    pub counters: Arc<Counters>,
}

impl Notifier {
    /// Start the thread on `fd`, a descriptor of the mount's /dev/fuse
    /// connection, subscribed to the engine's changes; returns once it
    /// is subscribed, so no change after this is missed.
    pub fn start(fd: OwnedFd, setup: Setup) -> std::io::Result<Notifier> {
        let shared = Arc::new(Shared {
            fd: Arc::new(fd),
            local: Mutex::new(Vec::new()),
            local_lost: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: setup.counters.clone(),
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        let t = std::thread::Builder::new()
            .name("fuse-notify".into())
            .spawn(move || {
                let me = std::thread::current();
                let engine = setup.engine;
                let sub = engine.subscribe_changes(
                    SubscribeOptions {
                        own: Some(setup.session),
                        capacity: setup.capacity,
                        names: setup.writeback_cache,
                    },
                    Box::new(move || me.unpark()),
                );
                // The subscription holds the feed, not the engine: the
                // engine's shutdown needn't wait for this thread.
                drop(engine);
                let _ = ready_tx.send(());
                let mut w = Worker {
                    shared: thread_shared,
                    writeback_cache: setup.writeback_cache,
                    refs: setup.refs,
                    acl_notes: setup.acl_notes,
                    epoch_refused: false,
                };
                w.run(&sub);
            })?;
        let _ = ready_rx.recv();
        Ok(Notifier {
            thread: t.thread().clone(),
            shared,
        })
    }

    fn push(&self, l: Local) {
        {
            let mut q = lock(&self.shared.local);
            if q.len() < LOCAL_QUEUE {
                q.push(l);
            } else {
                self.shared.local_lost.store(true, Ordering::SeqCst);
            }
        }
        self.thread.unpark();
    }

    /// Drop the kernel's cached attributes of `ino`, from the thread.
    pub fn attrs(&self, ino: u64) {
        self.push(Local::Attrs(ino));
    }

    /// Drop the kernel's cached attributes and pages of `range` of `ino`,
    /// from the thread.
    pub fn data(&self, ino: u64, range: Range<u64>) {
        self.push(Local::Data(ino, range));
    }

    /// Drop the kernel's cached attributes of `ino` before returning.
    /// Only from the handler of a request that pins the inode (an fsync
    /// holds its file open): the kernel can't be evicting it, which is
    /// what a notification could otherwise wait for.
    pub fn attrs_now(&self, ino: u64) {
        match inval_inode(&self.shared.fd, ino, None) {
            Ok(()) => self.shared.counters.bump(Counter::NotifyLocal),
            Err(e) => tracing::debug!("FUSE_NOTIFY_INVAL_INODE {ino}: {e}"),
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// The thread's state.
struct Worker {
    shared: Arc<Shared>,
    writeback_cache: bool,
    refs: Arc<KernelRefs>,
    acl_notes: Arc<AclNotes>,
    /// The kernel refused FUSE_NOTIFY_INC_EPOCH once (older than 6.16).
    epoch_refused: bool,
}

/// One inode's merged invalidation.
#[derive(Debug, Default)]
struct InodeInval {
    /// The pages to drop: the union of the ranges (None: none).
    data: Option<Range<u64>>,
    names: Vec<(u64, Vec<u8>)>,
}

impl InodeInval {
    fn add(&mut self, data: Option<Range<u64>>, names: Vec<(u64, Vec<u8>)>) {
        if let Some(r) = data {
            self.data = Some(match self.data.take() {
                Some(d) => d.start.min(r.start)..d.end.max(r.end),
                None => r,
            });
        }
        for n in names {
            if !self.names.contains(&n) {
                self.names.push(n);
            }
        }
    }
}

impl Worker {
    fn run(&mut self, sub: &scoutfs_engine::serve::Subscription) {
        let mut events: Vec<ChangeEvent> = Vec::new();
        loop {
            let taken = sub.take(&mut events);
            let local_lost = self.shared.local_lost.swap(false, Ordering::SeqCst);
            let local = std::mem::take(&mut *lock(&self.shared.local));
            if events.is_empty() && local.is_empty() && !taken.lost && !local_lost {
                if self.shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::park();
                continue;
            }
            if taken.lost || local_lost {
                self.coarse();
            }
            self.local(local);
            self.changes(std::mem::take(&mut events));
            sub.delivered(taken.upto);
        }
    }

    fn count(&self, c: Counter) {
        self.shared.counters.bump(c);
    }

    /// Write one notification; count it as `what` when the kernel took it
    /// (ENOENT: it caches nothing of that inode or name).
    fn send(&self, what: Counter, r: std::io::Result<()>, describe: impl FnOnce() -> String) {
        match r {
            Ok(()) => self.count(what),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.count(Counter::NotifyUncached),
            // ENODEV: the mount is gone; ENOTEMPTY/EBUSY from a delete:
            // the dentry was invalidated all the same.
            Err(e) => tracing::debug!("{}: {e}", describe()),
        }
    }

    /// The mount's own requests, merged per inode.
    fn local(&self, local: Vec<Local>) {
        let mut order = Vec::new();
        let mut merged: HashMap<u64, InodeInval> = HashMap::new();
        for l in local {
            let (ino, data) = match l {
                Local::Attrs(ino) => (ino, None),
                Local::Data(ino, r) => (ino, Some(r)),
            };
            merged
                .entry(ino)
                .or_insert_with(|| {
                    order.push(ino);
                    InodeInval::default()
                })
                .add(data, Vec::new());
        }
        for ino in order {
            let inv = &merged[&ino];
            match inval_inode(&self.shared.fd, ino, inv.data.clone()) {
                Ok(()) => self.count(Counter::NotifyLocal),
                Err(e) => tracing::debug!("FUSE_NOTIFY_INVAL_INODE {ino}: {e}"),
            }
        }
    }

    /// Other sessions' changes: each inode's invalidation once (merged),
    /// then the names in the order they changed (a directory's entries go
    /// before the directory's own removal).
    fn changes(&self, events: Vec<ChangeEvent>) {
        if events.is_empty() {
            return;
        }
        self.shared
            .counters
            .add(Counter::Changes, events.len() as u64);
        let mut order = Vec::new();
        let mut inodes: HashMap<u64, InodeInval> = HashMap::new();
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        for ev in events {
            match ev.change {
                Change::Inode { ino, data, names } => inodes
                    .entry(ino)
                    .or_insert_with(|| {
                        order.push(ino);
                        InodeInval::default()
                    })
                    .add(data, names),
                c @ (Change::Entry { .. } | Change::Delete { .. }) => {
                    if seen.insert(c.clone()) {
                        names.push(c);
                    }
                }
            }
        }
        for ino in order {
            let inv = &inodes[&ino];
            self.acl_notes.forget(ino);
            let r = inval_inode(&self.shared.fd, ino, inv.data.clone());
            self.send(Counter::NotifyInvalInode, r, || {
                format!("FUSE_NOTIFY_INVAL_INODE {ino}")
            });
            if self.writeback_cache {
                for (parent, name) in &inv.names {
                    let c = Change::Entry {
                        parent: *parent,
                        name: name.clone(),
                    };
                    if seen.insert(c) {
                        let r = inval_entry(&self.shared.fd, *parent, name);
                        self.send(Counter::NotifyInvalEntry, r, || {
                            format!("FUSE_NOTIFY_INVAL_ENTRY {parent}")
                        });
                    }
                }
            }
        }
        for c in names {
            match c {
                Change::Entry { parent, name } => {
                    let r = inval_entry(&self.shared.fd, parent, &name);
                    self.send(Counter::NotifyInvalEntry, r, || {
                        format!("FUSE_NOTIFY_INVAL_ENTRY {parent}")
                    });
                }
                Change::Delete { parent, ino, name } => {
                    self.acl_notes.forget(ino);
                    let r = notify_delete(&self.shared.fd, parent, ino, &name);
                    self.send(Counter::NotifyDelete, r, || {
                        format!("FUSE_NOTIFY_DELETE {parent} {ino}")
                    });
                }
                Change::Inode { .. } => {}
            }
        }
    }

    /// Events were lost: drop everything the kernel caches.
    fn coarse(&mut self) {
        self.count(Counter::NotifyCoarse);
        tracing::warn!(
            "FUSE notifications: changes were lost to a full queue; \
             dropping every cached attribute, page and name"
        );
        self.acl_notes.forget_all();
        for ino in self.refs.inodes() {
            let r = inval_inode(&self.shared.fd, ino, Some(0..u64::MAX));
            self.send(Counter::NotifyInvalInode, r, || {
                format!("FUSE_NOTIFY_INVAL_INODE {ino}")
            });
        }
        if self.epoch_refused {
            return;
        }
        if let Err(e) = inc_epoch(&self.shared.fd) {
            self.epoch_refused = true;
            tracing::warn!(
                "FUSE_NOTIFY_INC_EPOCH: {e} (a kernel before 6.16): names \
                 resolved before the loss are trusted until the entry timeout"
            );
        }
    }
}

/// A lock whose holder panicked still guards a plain queue.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write one notification: the header (unique 0, the opcode in `error`)
/// and `body`.
fn write_notify(fd: &OwnedFd, code: i32, body: &[&[u8]]) -> std::io::Result<()> {
    let len = size_of::<OutHeader>() + body.iter().map(|b| b.len()).sum::<usize>();
    let header = OutHeader {
        len: len as u32,
        error: code,
        unique: 0,
    };
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(header.as_slice());
    for b in body {
        msg.extend_from_slice(b);
    }
    // SAFETY: a valid descriptor we own and a buffer of msg.len() bytes
    // that outlives the call; write(2) only reads it. /dev/fuse takes a
    // message in one write.
    let n = unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// FUSE_NOTIFY_INVAL_INODE: the kernel drops the inode's cached
/// attributes and ACLs, and with `data` the pages of that byte range
/// (end u64::MAX: to the end of the file).
pub(crate) fn inval_inode(fd: &OwnedFd, ino: u64, data: Option<Range<u64>>) -> std::io::Result<()> {
    let (off, len) = match data {
        None => (-1, 0),
        Some(r) => {
            let off = r.start.min(i64::MAX as u64) as i64;
            // 0: to the end of the file.
            let len = if r.end == u64::MAX {
                0
            } else {
                r.end.saturating_sub(r.start).clamp(1, i64::MAX as u64) as i64
            };
            (off, len)
        }
    };
    let body = NotifyInvalInodeOut { ino, off, len };
    write_notify(fd, NotifyOpcode::InvalInode as i32, &[body.as_slice()])
}

/// FUSE_NOTIFY_INVAL_ENTRY: the kernel drops the dentry `name` of
/// directory `parent` (positive or negative) and the directory's cached
/// attributes. The name is followed by a NUL the kernel checks.
fn inval_entry(fd: &OwnedFd, parent: u64, name: &[u8]) -> std::io::Result<()> {
    let body = NotifyInvalEntryOut {
        parent,
        namelen: name.len() as u32,
        padding: 0,
    };
    write_notify(
        fd,
        NotifyOpcode::InvalEntry as i32,
        &[body.as_slice(), name, &[0]],
    )
}

/// FUSE_NOTIFY_DELETE: as INVAL_ENTRY, and if the dentry led to `child`
/// the kernel also marks it deleted (no links; inotify watchers hear of
/// it; a removed directory takes no new entries).
fn notify_delete(fd: &OwnedFd, parent: u64, child: u64, name: &[u8]) -> std::io::Result<()> {
    let body = NotifyDeleteOut {
        parent,
        child,
        namelen: name.len() as u32,
        padding: 0,
    };
    write_notify(
        fd,
        NotifyOpcode::Delete as i32,
        &[body.as_slice(), name, &[0]],
    )
}

/// FUSE_NOTIFY_INC_EPOCH: every dentry is revalidated before it is next
/// trusted.
fn inc_epoch(fd: &OwnedFd) -> std::io::Result<()> {
    write_notify(fd, NOTIFY_INC_EPOCH, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notifications_are_the_kernels_layout() {
        // include/uapi/linux/fuse.h: fuse_out_header (16 bytes), then
        // fuse_notify_inval_inode_out (ino, off, len: 24 bytes),
        // fuse_notify_inval_entry_out (parent, namelen, flags: 16 bytes),
        // fuse_notify_delete_out (parent, child, namelen, padding: 24).
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<NotifyInvalInodeOut>(), 24);
        assert_eq!(size_of::<NotifyInvalEntryOut>(), 16);
        assert_eq!(size_of::<NotifyDeleteOut>(), 24);
        assert_eq!(NotifyOpcode::InvalInode as i32, 2);
        assert_eq!(NotifyOpcode::InvalEntry as i32, 3);
        assert_eq!(NotifyOpcode::Delete as i32, 6);
        assert_eq!(NotifyOpcode::Resend as i32 + 1, NOTIFY_INC_EPOCH);
    }

    #[test]
    fn ranges_of_one_inode_merge_into_their_span() {
        let mut i = InodeInval::default();
        i.add(None, vec![(1, b"a".to_vec())]);
        assert_eq!(i.data, None);
        i.add(Some(100..200), vec![(1, b"a".to_vec())]);
        i.add(Some(50..60), vec![(2, b"b".to_vec())]);
        assert_eq!(i.data, Some(50..200));
        assert_eq!(i.names.len(), 2);
    }
}
