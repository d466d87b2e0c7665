//! Change events: what a request changed, for the frontends that cache
//! the volume (a FUSE mount's kernel: its dentries, attributes and page
//! cache) so they can drop what is stale at once instead of trusting it
//! until a timeout.
//!
//! Where they come from: `execute` (execute.rs), the one place an op
//! becomes fs calls, reads what the events need before the op changes
//! anything (an attempt may only miss the cache before its first change:
//! `fetch.rs`) and, once the op succeeded (a success is never run
//! again), derives the events from the op, its reply and those reads
//! ([`changes_of`]) and publishes them, before the request's completion
//! runs. Only
//! ops that change what a frontend may cache make events: attributes
//! (setattr, xattrs, a write's size and times), file data ranges (write,
//! write-back, fallocate, truncate) and directory entries (create, mkdir,
//! mknod, symlink, link, unlink, rmdir, rename). Not atime: a read or a
//! listing by another session leaves a frontend's atime stale until its
//! attributes expire or something else changes the inode. `Engine::call`
//! and `Engine::run`, below the front door, make none.
//!
//! Where they go: each subscriber ([`Engine::subscribe_changes`]) has a
//! bounded lock-free queue that the reactor pushes onto without waiting,
//! and a wake callback (run on the reactor thread, so it must not block:
//! an unpark, an eventfd write). Events from the subscriber's own session
//! are not queued at all (its kernel made the change and knows it), and
//! when no subscriber would get a request's events, the request reads
//! nothing for them. A queue that is full when an event comes loses it
//! and the subscriber is told ([`Taken::lost`]): it must then drop
//! everything it caches of the volume (a coarse invalidation), never
//! block the reactor nor miss a change silently.
//!
//! Delivery: events carry a sequence number, one per request; a
//! subscriber says how far it has passed them on ([`Subscription::
//! delivered`]), and [`Engine::wait_changes_delivered`] waits until every
//! subscriber has passed on everything published before the call. A
//! request's completion does not wait for that: a FUSE notification can
//! block in the kernel behind a request of that kernel that waits for the
//! engine, so with two such frontends a completion waiting for the other's
//! delivery could wait in a circle. A request's events are queued before
//! its completion runs, so a submitter that needs a change visible
//! everywhere before it goes on (a test; later, a lock handed to another
//! node) waits for the delivery after the completion.

use std::ops::Range;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::fs::{
    Attr, Creds, FileType, FsError, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE,
    RENAME_EXCHANGE,
};
use crate::util::ready;

use super::op::{Op, Reply};
use super::session::SessionId;
use super::{Engine, Mounted};

/// Most names of one inode an event carries (see [`Change::Inode`]).
pub const MAX_NAMES: usize = 16;

/// What one change made stale.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Inode `ino` changed: its attributes (any of them: mode, owner,
    /// times, size, link count, xattrs and ACLs), and with `data` the
    /// bytes in that range of its contents (`end` u64::MAX: to the end).
    /// `names`: for a regular file, when a subscriber asked for them
    /// ([`SubscribeOptions::names`]), up to [`MAX_NAMES`] of the names it
    /// had before the change, as (directory, name). A kernel that keeps a
    /// cached file's size and times itself (FUSE's writeback cache)
    /// forgets them only with the inode, which it drops once its names
    /// are dropped and nothing holds it open.
    Inode {
        ino: u64,
        data: Option<Range<u64>>,
        names: Vec<(u64, Vec<u8>)>,
    },
    /// The name `name` in directory `parent` now leads somewhere else:
    /// created, replaced, or moved away or onto by a rename. (The
    /// directory's own attributes come as an [`Change::Inode`].)
    Entry { parent: u64, name: Vec<u8> },
    /// The name `name` in directory `parent`, which led to `ino`, was
    /// removed, and `ino` has no other name (unlink of its last link,
    /// rmdir, a rename's victim).
    Delete {
        parent: u64,
        ino: u64,
        name: Vec<u8>,
    },
}

impl Change {
    /// Inode `ino`'s attributes (no data range, no names).
    pub fn inode(ino: u64) -> Change {
        Change::Inode {
            ino,
            data: None,
            names: Vec::new(),
        }
    }

    /// The name `name` in directory `parent`.
    pub fn entry(parent: u64, name: &[u8]) -> Change {
        Change::Entry {
            parent,
            name: name.to_vec(),
        }
    }
}

/// A change, with the request it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// One number per request, rising in the order requests finished.
    pub seq: u64,
    /// The session of the request that made it.
    pub session: SessionId,
    pub change: Change,
}

/// What a request's events need to know from before the change.
#[derive(Debug, Default)]
pub(super) struct Before {
    /// unlink/rmdir: what the name led to; rename: the source.
    named: Option<Attr>,
    /// rename: what the target name led to, if anything.
    replaced: Option<Attr>,
    /// The names of the regular file whose attributes change (see
    /// [`Change::Inode`]).
    names: Vec<(u64, Vec<u8>)>,
    /// rename: the names of a replaced regular file that keeps others.
    replaced_names: Vec<(u64, Vec<u8>)>,
}

/// Who wants a request's events: nobody, or some subscriber (and whether
/// one wants a regular file's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wanted {
    No,
    Yes { names: bool },
}

/// A read made only for events: the op reports its own failures, so a
/// failed read means "no detail", except where it must end the attempt
/// (a cache miss, or an I/O error the op would meet too).
fn peek<T>(r: Result<T, FsError>) -> Result<Option<T>, FsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.errno() == libc::EIO => Err(e),
        Err(_) => Ok(None),
    }
}

/// The names of `a` if it is a regular file.
fn names_if_regular(fs: &mut Mounted, a: &Attr) -> Result<Vec<(u64, Vec<u8>)>, FsError> {
    if a.kind != FileType::Regular {
        return Ok(Vec::new());
    }
    Ok(peek(ready(fs.names_of(a.ino, MAX_NAMES)))?.unwrap_or_default())
}

/// Read what `op`'s events need, before it changes anything.
pub(super) fn read_before(fs: &mut Mounted, op: &Op, names: bool) -> Result<Before, FsError> {
    let root = Creds::root();
    let mut b = Before::default();
    match *op {
        Op::Setattr { ino, .. }
        | Op::Write { ino, .. }
        | Op::WriteBack { ino, .. }
        | Op::Fallocate { ino, .. }
        | Op::SetXattr { ino, .. }
        | Op::RemoveXattr { ino, .. }
        | Op::KillCapability { ino }
        | Op::Link { ino, .. }
            if names =>
        {
            if let Some(a) = peek(ready(fs.getattr(ino)))? {
                b.names = names_if_regular(fs, &a)?;
            }
        }
        Op::Unlink { parent, ref name } | Op::Rmdir { parent, ref name } => {
            b.named = peek(ready(fs.lookup(&root, parent, name)))?;
            if let Some(a) = &b.named {
                if names && a.nlink > 1 {
                    b.names = names_if_regular(fs, a)?;
                }
            }
        }
        Op::Rename {
            parent,
            ref name,
            new_parent,
            ref new_name,
            ..
        } => {
            b.named = peek(ready(fs.lookup(&root, parent, name)))?;
            b.replaced = peek(ready(fs.lookup(&root, new_parent, new_name)))?;
            if let Some(a) = &b.replaced {
                if names && a.nlink > 1 {
                    b.replaced_names = names_if_regular(fs, a)?;
                }
            }
        }
        _ => {}
    }
    Ok(b)
}

/// Whether removing a name of `a` leaves it without names.
fn last_name(a: &Attr) -> bool {
    a.kind == FileType::Directory || a.nlink <= 1
}

/// The events of `op`, which succeeded with `reply`, given what was read
/// before it ran.
pub(super) fn changes_of(op: &Op, reply: &Reply, before: Before) -> Vec<Change> {
    let (inode, entry) = (Change::inode, Change::entry);
    let Before {
        named,
        replaced,
        names,
        replaced_names,
    } = before;
    match *op {
        Op::Setattr { ino, ref set, .. } => vec![Change::Inode {
            ino,
            // A truncate either way: the page holding the new end and
            // everything after it.
            data: set.size.map(|s| s..u64::MAX),
            names,
        }],
        Op::Write { ino, offset, .. } | Op::WriteBack { ino, offset, .. } => match reply {
            Reply::Written(n) if *n > 0 => vec![Change::Inode {
                ino,
                data: Some(offset..offset.saturating_add(*n)),
                names,
            }],
            _ => Vec::new(),
        },
        Op::Fallocate {
            ino,
            mode,
            offset,
            len,
        } => {
            let shifts = mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE) != 0;
            let end = if shifts {
                u64::MAX
            } else {
                offset.saturating_add(len)
            };
            vec![Change::Inode {
                ino,
                data: Some(offset..end),
                names,
            }]
        }
        Op::SetXattr { ino, .. } | Op::RemoveXattr { ino, .. } | Op::KillCapability { ino } => {
            vec![Change::Inode {
                ino,
                data: None,
                names,
            }]
        }
        Op::Mknod {
            parent, ref name, ..
        }
        | Op::Mkdir {
            parent, ref name, ..
        }
        | Op::Symlink {
            parent, ref name, ..
        }
        | Op::Create {
            parent, ref name, ..
        } => vec![entry(parent, name), inode(parent)],
        Op::Link {
            ino,
            parent,
            ref name,
        } => vec![
            entry(parent, name),
            inode(parent),
            Change::Inode {
                ino,
                data: None,
                names,
            },
        ],
        Op::Unlink { parent, ref name } | Op::Rmdir { parent, ref name } => {
            let mut v = match named {
                Some(a) if last_name(&a) => vec![Change::Delete {
                    parent,
                    ino: a.ino,
                    name: name.clone(),
                }],
                Some(a) => vec![
                    entry(parent, name),
                    Change::Inode {
                        ino: a.ino,
                        data: None,
                        names,
                    },
                ],
                None => vec![entry(parent, name)],
            };
            v.push(inode(parent));
            v
        }
        Op::Rename {
            parent,
            ref name,
            new_parent,
            ref new_name,
            flags,
        } => {
            let mut v = Vec::new();
            match replaced {
                Some(r) if flags & RENAME_EXCHANGE != 0 => {
                    v.push(entry(new_parent, new_name));
                    v.push(inode(r.ino));
                }
                Some(r) if named.as_ref().is_some_and(|s| s.ino == r.ino) => {
                    // Two names of one inode: rename(2) does nothing.
                    return Vec::new();
                }
                Some(r) if last_name(&r) => v.push(Change::Delete {
                    parent: new_parent,
                    ino: r.ino,
                    name: new_name.clone(),
                }),
                Some(r) => {
                    v.push(entry(new_parent, new_name));
                    v.push(Change::Inode {
                        ino: r.ino,
                        data: None,
                        names: replaced_names,
                    });
                }
                None => v.push(entry(new_parent, new_name)),
            }
            v.push(entry(parent, name));
            v.push(inode(parent));
            if new_parent != parent {
                v.push(inode(new_parent));
            }
            if let Some(s) = named {
                v.push(inode(s.ino));
            }
            v
        }
        _ => Vec::new(),
    }
}

thread_local! {
    /// The feed of the engine whose reactor runs on this thread, set by
    /// its dispatcher when it starts (inbox.rs).
    static FEED: std::cell::RefCell<Option<Arc<ChangeFeed>>> =
        const { std::cell::RefCell::new(None) };
}

/// This reactor thread's engine publishes to `feed`.
pub(super) fn set_feed(feed: Arc<ChangeFeed>) {
    FEED.with(|f| *f.borrow_mut() = Some(feed));
}

/// The feed of this reactor thread's engine (none off the reactor, or
/// before its dispatcher started).
pub(super) fn feed() -> Option<Arc<ChangeFeed>> {
    FEED.with(|f| f.borrow().clone())
}

/// How a subscriber wants its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The subscriber's own session, whose changes it is not sent.
    pub own: Option<SessionId>,
    /// Events its queue holds (at least 1); past it they are lost and
    /// the subscriber is told ([`Taken::lost`]).
    pub capacity: usize,
    /// Regular files' names with their inode events
    /// ([`Change::Inode`]): costs a read of the file's names per change.
    pub names: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            own: None,
            capacity: 16 << 10,
            names: false,
        }
    }
}

/// A subscriber as the feed sees it.
struct Sub {
    id: u64,
    opts: SubscribeOptions,
    queue: ArrayQueue<ChangeEvent>,
    /// Run after a push when the subscriber may be waiting.
    wake: Box<dyn Fn() + Send + Sync>,
    /// A wake is owed or done and not yet seen by [`Subscription::take`].
    woken: AtomicBool,
    /// The highest seq of an event lost to a full queue (0: none since
    /// the subscriber last took).
    lost: AtomicU64,
    /// The highest seq queued (or lost) for it.
    published: AtomicU64,
    /// How far it has passed its events on.
    delivered: AtomicU64,
}

/// The engine's subscribers, shared by the dispatcher (which publishes)
/// and the frontends' threads.
#[derive(Default)]
pub(super) struct ChangeFeed {
    subs: RwLock<Vec<Arc<Sub>>>,
    /// Subscribers, read without the lock on every request.
    count: AtomicU64,
    next_id: AtomicU64,
    /// The last seq given to a request's events.
    seq: AtomicU64,
    /// Delivery waiters sleep here; subscribers' acknowledgements and
    /// departures wake them.
    acked: Mutex<()>,
    acked_cv: Condvar,
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeFeed")
            .field("subscribers", &self.count.load(Ordering::Relaxed))
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl ChangeFeed {
    fn subs(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Sub>>> {
        self.subs.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request of `session` has anyone to tell.
    pub(super) fn wanted(&self, session: SessionId) -> Wanted {
        if self.count.load(Ordering::Acquire) == 0 {
            return Wanted::No;
        }
        let mut any = false;
        let mut names = false;
        for s in self.subs().iter().filter(|s| s.opts.own != Some(session)) {
            any = true;
            names |= s.opts.names;
        }
        if any {
            Wanted::Yes { names }
        } else {
            Wanted::No
        }
    }

    /// Queue `changes`, made by a request of `session`, for every
    /// subscriber but that session's own. Never waits.
    pub(super) fn publish(&self, session: SessionId, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        for s in self.subs().iter().filter(|s| s.opts.own != Some(session)) {
            for change in &changes {
                let ev = ChangeEvent {
                    seq,
                    session,
                    change: change.clone(),
                };
                if s.queue.push(ev).is_err() {
                    s.lost.fetch_max(seq, Ordering::AcqRel);
                }
            }
            s.published.fetch_max(seq, Ordering::AcqRel);
            // Pairs with the fence in `take`: either it sees these events
            // or this sees its `woken` cleared and wakes it.
            fence(Ordering::SeqCst);
            if !s.woken.swap(true, Ordering::SeqCst) {
                (s.wake)();
            }
        }
    }

    fn subscribe(
        self: &Arc<Self>,
        opts: SubscribeOptions,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Sub {
            id,
            opts,
            queue: ArrayQueue::new(opts.capacity.max(1)),
            wake,
            woken: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        subs.push(sub.clone());
        self.count.store(subs.len() as u64, Ordering::Release);
        Subscription {
            feed: self.clone(),
            sub,
        }
    }

    fn unsubscribe(&self, id: u64) {
        {
            let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
            subs.retain(|s| s.id != id);
            self.count.store(subs.len() as u64, Ordering::Release);
        }
        self.notify_waiters();
    }

    fn notify_waiters(&self) {
        let _g = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        self.acked_cv.notify_all();
    }

    /// Wait until every subscriber has passed on what was published so
    /// far, or `limit` passes (false).
    fn wait_delivered(&self, limit: Duration) -> bool {
        let want: Vec<(u64, u64)> = self
            .subs()
            .iter()
            .map(|s| (s.id, s.published.load(Ordering::Acquire)))
            .collect();
        let deadline = Instant::now() + limit;
        let mut g = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let done = {
                let subs = self.subs();
                want.iter().all(|&(id, seq)| {
                    subs.iter()
                        .find(|s| s.id == id)
                        .is_none_or(|s| s.delivered.load(Ordering::Acquire) >= seq)
                })
            };
            if done {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .acked_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What [`Subscription::take`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Events were lost to a full queue: drop everything cached of the
    /// volume (the events taken are still worth passing on).
    pub lost: bool,
    /// What to acknowledge with [`Subscription::delivered`] once these
    /// are passed on (0: nothing was taken).
    pub upto: u64,
}

/// A frontend's subscription to the engine's change events; dropping it
/// unsubscribes.
pub struct Subscription {
    feed: Arc<ChangeFeed>,
    sub: Arc<Sub>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("opts", &self.sub.opts)
            .field("queued", &self.sub.queue.len())
            .finish()
    }
}

impl Subscription {
    /// Move the queued events into `into`, in order. After it returns
    /// with nothing, the next event published wakes the subscriber (its
    /// wake callback runs), so a loop of take, pass on, and wait for the
    /// wake misses none.
    pub fn take(&self, into: &mut Vec<ChangeEvent>) -> Taken {
        let s = &self.sub;
        s.woken.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let lost = s.lost.swap(0, Ordering::AcqRel);
        let mut upto = lost;
        while let Some(ev) = s.queue.pop() {
            upto = upto.max(ev.seq);
            into.push(ev);
        }
        Taken {
            lost: lost != 0,
            upto,
        }
    }

    /// Everything up to `upto` (from [`Taken::upto`]) is passed on.
    pub fn delivered(&self, upto: u64) {
        if upto == 0 {
            return;
        }
        self.sub.delivered.fetch_max(upto, Ordering::AcqRel);
        self.feed.notify_waiters();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.unsubscribe(self.sub.id);
    }
}

impl Engine {
    /// Subscribe to the change events of every session but `opts.own`
    /// (see the module comment). `wake` runs on the reactor thread after
    /// events are queued while the subscriber may be waiting; it must not
    /// block (unpark a thread, write an eventfd).
    pub fn subscribe_changes(
        &self,
        opts: SubscribeOptions,
        wake: Box<dyn Fn() + Send + Sync>,
    ) -> Subscription {
        self.inbox.changes.subscribe(opts, wake)
    }

    /// Wait until every subscriber has passed on the events of every
    /// request completed before this call, or `limit` passes (false).
    /// For a frontend thread (it blocks): a submitter that needs its
    /// change seen by every frontend before it goes on.
    pub fn wait_changes_delivered(&self, limit: Duration) -> bool {
        self.inbox.changes.wait_delivered(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::inode::Timespec;

    fn attr(ino: u64, kind: FileType, nlink: u32) -> Attr {
        let t = Timespec::new(0, 0);
        Attr {
            ino,
            kind,
            mode: 0,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            meta_seq: 0,
            data_seq: 0,
            data_version: 0,
            online_blocks: 0,
            offline_blocks: 0,
            version: 0,
            flags: 0,
            proj: 0,
        }
    }

    fn inode(ino: u64) -> Change {
        Change::inode(ino)
    }

    fn entry(parent: u64, name: &str) -> Change {
        Change::entry(parent, name.as_bytes())
    }

    #[test]
    fn writes_and_truncates_name_their_byte_ranges() {
        let w = Op::Write {
            ino: 5,
            offset: 100,
            data: vec![1; 10],
        };
        assert_eq!(
            changes_of(&w, &Reply::Written(7), Before::default()),
            [Change::Inode {
                ino: 5,
                data: Some(100..107),
                names: Vec::new()
            }]
        );
        assert!(changes_of(&w, &Reply::Written(0), Before::default()).is_empty());
        let t = Op::Setattr {
            ino: 5,
            set: crate::fs::SetAttr {
                size: Some(3),
                ..Default::default()
            },
            handle: None,
        };
        let got = changes_of(&t, &Reply::Done, Before::default());
        assert_eq!(
            got,
            [Change::Inode {
                ino: 5,
                data: Some(3..u64::MAX),
                names: Vec::new()
            }]
        );
        let collapse = Op::Fallocate {
            ino: 5,
            mode: FALLOC_FL_COLLAPSE_RANGE,
            offset: 4096,
            len: 4096,
        };
        assert!(matches!(
            &changes_of(&collapse, &Reply::Done, Before::default())[..],
            [Change::Inode { data: Some(r), .. }] if *r == (4096..u64::MAX)
        ));
    }

    #[test]
    fn removing_a_last_name_is_a_delete_and_a_hard_link_only_an_entry() {
        let op = Op::Unlink {
            parent: 1,
            name: b"f".to_vec(),
        };
        let last = Before {
            named: Some(attr(9, FileType::Regular, 1)),
            ..Before::default()
        };
        assert_eq!(
            changes_of(&op, &Reply::Done, last),
            [
                Change::Delete {
                    parent: 1,
                    ino: 9,
                    name: b"f".to_vec()
                },
                inode(1)
            ]
        );
        let linked = Before {
            named: Some(attr(9, FileType::Regular, 2)),
            ..Before::default()
        };
        assert_eq!(
            changes_of(&op, &Reply::Done, linked),
            [entry(1, "f"), inode(9), inode(1)]
        );
    }

    #[test]
    fn a_rename_touches_both_names_both_directories_and_the_victim() {
        let op = Op::Rename {
            parent: 1,
            name: b"a".to_vec(),
            new_parent: 2,
            new_name: b"b".to_vec(),
            flags: 0,
        };
        let b = Before {
            named: Some(attr(10, FileType::Regular, 1)),
            replaced: Some(attr(11, FileType::Regular, 1)),
            ..Before::default()
        };
        assert_eq!(
            changes_of(&op, &Reply::Done, b),
            [
                Change::Delete {
                    parent: 2,
                    ino: 11,
                    name: b"b".to_vec()
                },
                entry(1, "a"),
                inode(1),
                inode(2),
                inode(10)
            ]
        );
        let same = Before {
            named: Some(attr(10, FileType::Regular, 2)),
            replaced: Some(attr(10, FileType::Regular, 2)),
            ..Before::default()
        };
        assert!(changes_of(&op, &Reply::Done, same).is_empty());
    }

    #[test]
    fn a_full_queue_loses_events_and_says_so() {
        let feed = Arc::new(ChangeFeed::default());
        let wakes = Arc::new(AtomicU64::new(0));
        let w = wakes.clone();
        let opts = SubscribeOptions {
            own: Some(SessionId(7)),
            capacity: 2,
            names: false,
        };
        let sub = feed.subscribe(
            opts,
            Box::new(move || {
                w.fetch_add(1, Ordering::Relaxed);
            }),
        );
        assert_eq!(feed.wanted(SessionId(7)), Wanted::No);
        assert_eq!(feed.wanted(SessionId(8)), Wanted::Yes { names: false });
        feed.publish(SessionId(7), vec![inode(1)]);
        let mut got = Vec::new();
        assert_eq!(sub.take(&mut got), Taken::default());
        assert!(got.is_empty(), "its own session's changes are not queued");
        for i in 0..3 {
            feed.publish(SessionId(8), vec![inode(i)]);
        }
        assert_eq!(wakes.load(Ordering::Relaxed), 1, "one wake until taken");
        let t = sub.take(&mut got);
        assert!(t.lost);
        assert_eq!(t.upto, 4);
        assert_eq!(got.len(), 2);
        assert!(!feed.wait_delivered(Duration::ZERO));
        sub.delivered(t.upto);
        assert!(feed.wait_delivered(Duration::ZERO));
        feed.publish(SessionId(8), vec![inode(5)]);
        assert_eq!(wakes.load(Ordering::Relaxed), 2);
        drop(sub);
        assert!(
            feed.wait_delivered(Duration::ZERO),
            "a gone subscriber owes nothing"
        );
        assert_eq!(feed.wanted(SessionId(8)), Wanted::No);
    }
}
