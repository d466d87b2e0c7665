//! The front door's entry points on [`Engine`]: [`Engine::submit`], which
//! never waits and answers through a completion, and its blocking form
//! [`Engine::call_op`] for frontend threads; sessions; what frontends read
//! once at start (the fsid, the shared kernel lookup counts).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::fs::KernelRefs;

use super::caller::Caller;
use super::errno::Errno;
use super::inbox::{Done, Rejected};
use super::op::{Op, Reply, Request};
use super::session::SessionId;
use super::Engine;

/// Longest pause of [`Engine::call_op`] between two submissions the
/// inbox refused as full.
const FULL_BACKOFF_MAX: Duration = Duration::from_millis(1);

impl Engine {
    /// Submit `req`; `done` is called with its reply once it has run
    /// (requests run in submission order). Never waits, so a poller on
    /// the reactor thread (a shim ring, a virtqueue) may call it too.
    /// Refused, with the request and `done` handed back unrun: EAGAIN when
    /// the inbox holds `ReactorConfig::remote_queue_depth` requests
    /// already (submit again once some complete), ESHUTDOWN once the
    /// engine has stopped. See [`Done`] for what `done` may do.
    pub fn submit(&self, req: Request, done: Done) -> Result<(), Box<Rejected>> {
        self.inbox.push(req, done)
    }

    /// Submit `req` and wait for its reply: the blocking form, for
    /// frontend threads (FUSE's handlers). A full inbox is waited out,
    /// pausing up to 1 ms between tries. EDEADLK on the reactor thread,
    /// whose own work this would wait for.
    pub fn call_op(&self, req: Request) -> Result<Reply, Errno> {
        if std::thread::current().id() == self.reactor_thread {
            debug_assert!(false, "Engine::call_op on the reactor thread");
            return Err(Errno(libc::EDEADLK));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut req = req;
        let mut done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let mut pause = Duration::from_micros(10);
        loop {
            match self.submit(req, done) {
                Ok(()) => break,
                Err(r) if r.errno == Errno::AGAIN => {
                    let r = *r;
                    (req, done) = (r.req, r.done);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(FULL_BACKOFF_MAX);
                }
                Err(r) => return Err(r.errno),
            }
        }
        // A completion dropped unrun (the reactor died) is a stopped engine.
        rx.recv().unwrap_or(Err(Errno::SHUTDOWN))
    }

    /// A new session's number (never given before), for a frontend that
    /// opens it itself by submitting `Op::OpenSession` under it.
    pub fn new_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// Open a session for a frontend's client and return its number;
    /// blocking, as [`Engine::call_op`].
    pub fn open_session(&self) -> Result<SessionId, Errno> {
        let id = self.new_session_id();
        self.call_op(Request::new(id, Caller::root(), Op::OpenSession))?
            .done()?;
        Ok(id)
    }

    /// End session `id`: every handle it still holds is released. EINVAL
    /// for a session that isn't open (or the engine's own).
    pub fn close_session(&self, id: SessionId) -> Result<(), Errno> {
        self.call_op(Request::new(id, Caller::root(), Op::CloseSession))?
            .done()
    }

    /// Requests submitted and not yet taken by the dispatcher.
    pub fn queued(&self) -> usize {
        self.inbox.len()
    }

    /// The volume's fsid (its file handles' generation comes from it).
    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    /// The lookup counts of the frontends' kernels (FUSE's), which the
    /// mounted fs consults before deleting an unlinked inode
    /// (`fs::KernelRefs`): a frontend counts on its own threads.
    pub fn kernel_refs(&self) -> Arc<KernelRefs> {
        self.kernel_refs.clone()
    }
}
