//! The admin socket: a translator from a Unix socket into the front door,
//! like FUSE's. `scoutfs counters` (and any client speaking `proto.rs`)
//! connects, sends one request line and reads one reply. The caller is
//! the connection's peer as the kernel reports it (SO_PEERCRED, groups
//! from /proc), never what the client says; the engine refuses its admin
//! ops (`sync`, `reset-counters`) to anyone but root with EPERM.
//!
//! Reading counters is open to every user, and the socket is made
//! world-writable (0666) so that they can connect: counters are counts
//! and latencies, no file's name or data (scoutfs's own counters are
//! world-readable in sysfs). One thread serves connections one at a time,
//! each bounded by read and write timeouts, so a client that stalls holds
//! the others up for at most those.
//!
//! All its requests go through one session, opened at start and closed
//! at stop: admin ops hold no handles.

pub mod proto;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::caller::{peer_caller, GroupCache};
use super::op::{Op, Request};
use super::session::SessionId;
use super::Engine;
use proto::{encode_reply, read_request, AdminRequest, ProtoError};

pub use proto::MAX_REPLY_BYTES;

/// A frontend's own counters (FUSE's per-opcode counts), listed before the
/// engine's in `counters`: `(name, value)` pairs.
pub type CounterSource = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// How long a connection may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reply may wait for the client to read it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A running admin socket; dropping it stops the thread, closes the
/// session and removes the socket.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AdminServer {
    /// Serve `engine` on a socket at `path` (its directory made if
    /// missing; whatever is at `path` is replaced: the caller made sure no
    /// other mount answers there). `frontends` give their counters for
    /// `counters`. The server keeps only a weak reference to the engine,
    /// so it never holds up its shutdown. Errors name the path.
    pub fn start(
        path: &Path,
        engine: &Arc<Engine>,
        frontends: Vec<CounterSource>,
    ) -> std::io::Result<AdminServer> {
        let named = |e: std::io::Error, p: &Path| {
            std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| named(e, dir))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| named(e, path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| named(e, path))?;
        let session = engine
            .open_session()
            .map_err(|e| std::io::Error::other(format!("admin socket session: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Connections {
            engine: Arc::downgrade(engine),
            session,
            frontends,
            groups: GroupCache::default(),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    conns.serve(conn);
                }
                if let Some(engine) = conns.engine.upgrade() {
                    let _ = engine.close_session(conns.session);
                }
            })?;
        Ok(AdminServer {
            stop,
            path: path.to_path_buf(),
            thread: Some(thread),
        })
    }
}

/// What the admin thread needs to answer a connection.
struct Connections {
    engine: Weak<Engine>,
    session: SessionId,
    frontends: Vec<CounterSource>,
    groups: GroupCache,
}

impl Connections {
    /// Read one request from `conn`, answer it, close.
    fn serve(&self, mut conn: UnixStream) {
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let _ = conn.set_write_timeout(Some(REPLY_TIMEOUT));
        let reply = match peer_caller(&conn, &self.groups) {
            Err(e) => Err((e.raw_os_error().unwrap_or(libc::EIO), e.to_string())),
            Ok(caller) => match read_request(&mut conn) {
                Err(e) => Err((libc::EINVAL, e.to_string())),
                Ok(req) => self.answer(caller, req),
            },
        };
        let _ = conn.write_all(&encode_reply(&reply));
    }

    /// The reply's lines for `req` from `caller`, or (errno, message).
    fn answer(
        &self,
        caller: super::Caller,
        req: AdminRequest,
    ) -> Result<Vec<String>, (i32, String)> {
        let engine = self
            .engine
            .upgrade()
            .ok_or((libc::ESHUTDOWN, "the engine has stopped".to_string()))?;
        let op = match req {
            AdminRequest::Counters => Op::Stats,
            AdminRequest::Sync => Op::Commit,
            AdminRequest::ResetCounters => Op::ResetStats,
        };
        let refused = |e: super::Errno| (e.0, format!("{}: {e}", req.word()));
        let reply = engine
            .call_op(Request::new(self.session, caller, op))
            .map_err(refused)?;
        let lines = match req {
            AdminRequest::Counters => {
                let mut all: Vec<(String, u64)> = self.frontends.iter().flat_map(|f| f()).collect();
                all.extend(reply.into_stats().map_err(refused)?);
                all.into_iter().map(|(k, v)| format!("{k} {v}")).collect()
            }
            AdminRequest::Sync => {
                let seq = reply.into_synced().map_err(refused)?;
                vec![format!("committed_seq {seq}")]
            }
            AdminRequest::ResetCounters => {
                reply.done().map_err(refused)?;
                Vec::new()
            }
        };
        Ok(lines)
    }
}

/// Why a client's request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{path}: {err}")]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    /// The engine said no (EPERM for a non-root caller of an admin
    /// request).
    #[error("{message} (errno {errno})")]
    Refused { errno: i32, message: String },
}

/// Send `req` to the admin socket at `path` and return the reply's lines.
pub fn ask(path: &Path, req: AdminRequest) -> Result<Vec<String>, AdminError> {
    let mut conn = UnixStream::connect(path).map_err(|err| AdminError::Connect {
        path: path.to_path_buf(),
        err,
    })?;
    conn.write_all(&req.encode())?;
    let mut reply = Vec::new();
    conn.take(MAX_REPLY_BYTES as u64 + 1)
        .read_to_end(&mut reply)?;
    match proto::decode_reply(&reply)? {
        Ok(lines) => Ok(lines),
        Err((errno, message)) => Err(AdminError::Refused { errno, message }),
    }
}
