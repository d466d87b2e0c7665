//! Where submitted requests wait, and the reactor task that runs them.
//!
//! The inbox is a bounded lock-free queue (`ArrayQueue`) of submissions
//! that any thread (or the reactor itself) pushes without waiting: a full
//! queue hands the request back ([`Rejected`]) for the submitter to retry.
//! After a push the submitter wakes the dispatcher, one long-lived task on
//! the reactor, which takes requests in submission order (at most
//! [`DISPATCH_BATCH`] per turn, so device completions are reaped between
//! batches), runs each with [`execute`](super::execute::execute) or, for
//! its own ops (sessions, stats), itself, records its latency and calls
//! its completion.
//!
//! Filesystem requests each run as a task of their own (`fetch.rs`: an
//! attempt that misses the cache, or needs a commit, waits for it while
//! the others go on), so they start in the order they were pushed but may
//! finish in any order; a request a submitter makes after another's
//! completion sees its effect. Session and stats requests run in the
//! dispatcher itself.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::fs::FsError;
use crate::reactor::Local;

use super::changes::{set_feed, ChangeFeed};
use super::errno::Errno;
use super::execute::{end_session, execute};
use super::op::{Op, Reply, Request};
use super::session::{Session, SessionId};
use super::stats::{volume_lines, OpStats};
use super::{Mounted, MOUNTED};

/// A request's completion: called once with its reply or errno, on the
/// reactor thread (or, for a request caught by the engine's stop, on the
/// thread that notices). It must not block: hand the result over (a
/// channel, a ring entry, a waker) and return; it may submit again.
pub type Done = Box<dyn FnOnce(Result<Reply, Errno>) + Send>;

/// A request the engine did not take: `errno` is EAGAIN (the inbox is
/// full: submit it again later) or ESHUTDOWN (the engine has stopped).
/// The request and its completion come back unrun.
pub struct Rejected {
    pub errno: Errno,
    pub req: Request,
    pub done: Done,
}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("errno", &self.errno)
            .field("req", &self.req)
            .finish_non_exhaustive()
    }
}

/// Most requests the dispatcher runs per reactor turn.
pub const DISPATCH_BATCH: usize = 64;

struct Submission {
    req: Request,
    done: Done,
    submitted: Instant,
}

/// The queue between submitters and the dispatcher.
pub(super) struct Inbox {
    queue: ArrayQueue<Submission>,
    /// The dispatcher's waker while it waits for work.
    waker: Mutex<Option<Waker>>,
    /// The dispatcher has gone (the reactor is stopping): nothing pushed
    /// from now on would run.
    closed: AtomicBool,
    /// Where requests' change events go (changes.rs).
    pub(super) changes: Arc<ChangeFeed>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("queued", &self.queue.len())
            .field("capacity", &self.queue.capacity())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Inbox {
    /// An inbox holding at most `depth` requests (at least 1).
    pub(super) fn new(depth: usize) -> Inbox {
        Inbox {
            queue: ArrayQueue::new(depth.max(1)),
            waker: Mutex::new(None),
            closed: AtomicBool::new(false),
            changes: Arc::new(ChangeFeed::default()),
        }
    }

    /// Queue `req` and wake the dispatcher; never waits.
    pub(super) fn push(&self, req: Request, done: Done) -> Result<(), Box<Rejected>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Box::new(Rejected {
                errno: Errno::SHUTDOWN,
                req,
                done,
            }));
        }
        let sub = Submission {
            req,
            done,
            submitted: Instant::now(),
        };
        if let Err(sub) = self.queue.push(sub) {
            return Err(Box::new(Rejected {
                errno: Errno::AGAIN,
                req: sub.req,
                done: sub.done,
            }));
        }
        // Pairs with the fence in `close`: either the dispatcher's last
        // drain sees this request, or this sees `closed` and answers it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.fail_queued();
            return Ok(());
        }
        // The lock orders this push before the dispatcher's re-check of
        // the queue after it parked its waker (see `dispatch`).
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Requests waiting.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The dispatcher stops: answer everything queued, now and later,
    /// with ESHUTDOWN.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.fail_queued();
    }

    fn fail_queued(&self) {
        while let Some(sub) = self.queue.pop() {
            (sub.done)(Err(Errno::SHUTDOWN));
        }
    }
}

/// The dispatcher's state: the sessions and the per-op figures. Lives in
/// the dispatcher task on the reactor thread.
struct Dispatcher {
    sessions: HashMap<SessionId, Session>,
    stats: OpStats,
}

impl Dispatcher {
    fn new() -> Dispatcher {
        let mut sessions = HashMap::new();
        sessions.insert(SessionId::ENGINE, Session::new(SessionId::ENGINE));
        Dispatcher {
            sessions,
            stats: OpStats::default(),
        }
    }

    /// Run one submission and deliver its result: a filesystem request
    /// as a task of its own, the dispatcher's own requests here.
    fn start(d: &Rc<RefCell<Dispatcher>>, local: &Local, sub: Submission) {
        let own = matches!(
            sub.req.op,
            Op::OpenSession | Op::CloseSession | Op::Stats | Op::ResetStats
        );
        if own || !d.borrow().sessions.contains_key(&sub.req.session) {
            d.borrow_mut().run(sub);
            return;
        }
        let Submission {
            req,
            done,
            submitted,
        } = sub;
        let kind = req.op.kind();
        let (d, task_local) = (d.clone(), local.clone());
        RUNNING.with(|r| r.set(r.get() + 1));
        drop(local.spawn(async move {
            let Request {
                session,
                caller,
                op,
            } = req;
            let r = match super::core() {
                Some(io) => {
                    super::fetch::run_attempts(&task_local, &io, |fs| {
                        let mut d = d.borrow_mut();
                        // Closed while this request waited.
                        let s = d.sessions.get_mut(&session).ok_or(FsError::Invalid)?;
                        execute(fs, &caller, s, &op)
                    })
                    .await
                }
                None => None,
            };
            let r = match r {
                Some(r) => r.map_err(Errno::from),
                None => Err(Errno::SHUTDOWN),
            };
            d.borrow_mut()
                .stats
                .record(kind, submitted.elapsed(), r.is_err());
            done(r);
            RUNNING.with(|r| r.set(r.get() - 1));
            for w in DONE_WAITERS.with(|w| std::mem::take(&mut *w.borrow_mut())) {
                w.wake();
            }
        }));
    }

    /// Run one submission here and deliver its result.
    fn run(&mut self, sub: Submission) {
        let Submission {
            req,
            done,
            submitted,
        } = sub;
        let kind = req.op.kind();
        let r = MOUNTED.with(|cell| match cell.borrow_mut().as_mut() {
            Some(fs) => self.handle(fs, req),
            None => Err(Errno::SHUTDOWN),
        });
        self.stats.record(kind, submitted.elapsed(), r.is_err());
        done(r);
    }

    fn handle(&mut self, fs: &mut Mounted, req: Request) -> Result<Reply, Errno> {
        let Request {
            session,
            caller,
            op,
        } = req;
        match op {
            Op::OpenSession => {
                if self.sessions.contains_key(&session) {
                    return Err(Errno(libc::EEXIST));
                }
                self.sessions.insert(session, Session::new(session));
                Ok(Reply::Done)
            }
            Op::CloseSession => {
                if session == SessionId::ENGINE {
                    return Err(Errno(libc::EINVAL));
                }
                let mut s = self.sessions.remove(&session).ok_or(Errno(libc::EINVAL))?;
                end_session(fs, &mut s);
                Ok(Reply::Done)
            }
            Op::Stats => {
                let mut lines = volume_lines(fs);
                lines.extend(self.stats.lines());
                Ok(Reply::Stats(lines))
            }
            Op::ResetStats => {
                if !caller.is_root() {
                    return Err(Errno(libc::EPERM));
                }
                self.stats.reset();
                Ok(Reply::Done)
            }
            op => {
                // A session that was never opened, or has ended.
                let s = self.sessions.get_mut(&session).ok_or(Errno(libc::EBADF))?;
                execute(fs, &caller, s, &op).map_err(Errno::from)
            }
        }
    }
}

/// The dispatcher task: runs until the reactor shuts down, then answers
/// what is left with ESHUTDOWN.
pub(super) async fn dispatch(local: Local, inbox: Arc<Inbox>) {
    // `execute` publishes on this thread (changes.rs).
    set_feed(inbox.changes.clone());
    let d = Rc::new(RefCell::new(Dispatcher::new()));
    let mut stop = std::pin::pin!(local.shutdown_signal());
    // Whether `stop` holds this task's waker: registered once (a poll of
    // it keeps another waker each time), woken at shutdown.
    let mut watching = false;
    poll_fn(|cx| {
        for _ in 0..DISPATCH_BATCH {
            let Some(sub) = inbox.queue.pop() else { break };
            Dispatcher::start(&d, &local, sub);
        }
        if !inbox.queue.is_empty() {
            // More than a batch: the rest next turn, after the devices.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !watching {
            watching = true;
            let _ = stop.as_mut().poll(cx);
        }
        if local.shutdown_requested() {
            inbox.close();
            return Poll::Ready(());
        }
        *inbox.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // A push between the pop above and parking the waker found no
        // waker to wake: look again.
        if !inbox.queue.is_empty() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

thread_local! {
    /// Request tasks running on this reactor.
    static RUNNING: Cell<usize> = const { Cell::new(0) };
    /// Tasks waiting for them all to finish.
    static DONE_WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// Wait until no request task is running (an unmount, after the
/// frontends have stopped submitting).
pub(super) async fn wait_requests_done() {
    poll_fn(|cx| {
        if RUNNING.with(Cell::get) == 0 {
            return Poll::Ready(());
        }
        DONE_WAITERS.with(|w| w.borrow_mut().push(cx.waker().clone()));
        Poll::Pending
    })
    .await
}
