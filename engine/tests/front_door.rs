//! The engine's front door: typed requests submitted without waiting and
//! answered through completions, sessions whose handles go when they
//! end, credentials taken from the request, admin ops for root only,
//! per-op counts and latencies, and the admin socket as a translator.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::admin::proto::AdminRequest;
use scoutfs_engine::serve::admin::{ask, AdminError, AdminServer};
use scoutfs_engine::serve::{Caller, Engine, EngineOptions, Errno, Op, Reply, Request, SessionId};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};

fn engine_with_depth(depth: usize) -> Arc<Engine> {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(64 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            remote_queue_depth: depth,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    };
    let meta: Arc<dyn BlockDev> = Arc::new(meta);
    let data: Arc<dyn BlockDev> = Arc::new(data);
    Arc::new(Engine::start(meta, data, opts).unwrap())
}

fn engine() -> Arc<Engine> {
    engine_with_depth(4096)
}

fn root_op(e: &Engine, s: SessionId, op: Op) -> Result<Reply, Errno> {
    e.call_op(Request::new(s, Caller::root(), op))
}

fn user(uid: u32) -> Caller {
    Caller {
        uid,
        gid: uid,
        pid: 1,
        ..Caller::default()
    }
}

fn stat(e: &Engine, name: &str) -> u64 {
    let lines = root_op(e, SessionId::ENGINE, Op::Stats)
        .unwrap()
        .into_stats()
        .unwrap();
    lines.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

fn shutdown(e: Arc<Engine>) {
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
}

#[test]
fn submissions_complete_through_their_callbacks_in_order() {
    let e = engine();
    let (tx, rx) = mpsc::channel();
    for i in 0..100u64 {
        let tx = tx.clone();
        let name = format!("d{i}").into_bytes();
        let op = Op::Mkdir {
            parent: ROOT_INO,
            name,
            mode: 0o755,
        };
        e.submit(
            Request::new(SessionId::ENGINE, Caller::root(), op),
            Box::new(move |r| tx.send((i, r)).unwrap()),
        )
        .unwrap();
    }
    let got: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
    assert!(
        got.iter().map(|(i, _)| *i).eq(0..100),
        "in submission order"
    );
    assert!(got.iter().all(|(_, r)| matches!(r, Ok(Reply::Attr(_)))));
    let r = root_op(
        &e,
        SessionId::ENGINE,
        Op::Mkdir {
            parent: ROOT_INO,
            name: b"d7".to_vec(),
            mode: 0o755,
        },
    );
    assert_eq!(r, Err(Errno(libc::EEXIST)));
    shutdown(e);
}

#[test]
fn a_full_inbox_hands_the_request_back_and_completes_the_rest() {
    let e = engine_with_depth(2);
    // Hold the reactor with raw access until the inbox is full.
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let e2 = e.clone();
    let holder = std::thread::spawn(move || {
        e2.call(move |_| {
            let _ = hold_rx.recv_timeout(Duration::from_secs(30));
        })
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    let (tx, rx) = mpsc::channel();
    let mut taken = 0;
    let mut rejected = None;
    for i in 0..10u64 {
        let tx = tx.clone();
        let req = Request::new(
            SessionId::ENGINE,
            Caller::root(),
            Op::Getattr { ino: ROOT_INO },
        );
        match e.submit(req, Box::new(move |r| tx.send((i, r)).unwrap())) {
            Ok(()) => taken += 1,
            Err(r) => {
                rejected = Some(r);
                break;
            }
        }
    }
    let r = rejected.expect("a full inbox refuses");
    assert_eq!((r.errno, taken), (Errno::AGAIN, 2));
    assert_eq!(r.req.op, Op::Getattr { ino: ROOT_INO });
    hold_tx.send(()).unwrap();
    holder.join().unwrap();
    for _ in 0..taken {
        let (_, reply) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(reply.unwrap().into_attr().unwrap().ino, ROOT_INO);
    }
    // The refused one, submitted again, runs.
    let r = *r;
    e.submit(r.req, r.done).unwrap();
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap().1.is_ok());
    shutdown(e);
}

#[test]
fn a_session_that_ends_releases_its_handles() {
    let e = engine();
    let s = e.open_session().unwrap();
    let created = root_op(
        &e,
        s,
        Op::Create {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            mode: 0o644,
            flags: libc::O_RDWR as u32,
            report_free: true,
        },
    )
    .unwrap();
    let (h, attr, free) = created.into_opened().unwrap();
    assert!(free.unwrap() > 0);
    let ino = attr.ino;
    let (dh, _) = root_op(
        &e,
        s,
        Op::Opendir {
            ino: ROOT_INO,
            flags: 0,
        },
    )
    .unwrap()
    .into_opened_dir()
    .unwrap();
    // A tmpfile is an orphan held by its handle alone.
    let (_, tmp, _) = root_op(
        &e,
        s,
        Op::Tmpfile {
            parent: ROOT_INO,
            mode: 0o600,
            flags: libc::O_RDWR as u32,
        },
    )
    .unwrap()
    .into_opened()
    .unwrap();
    root_op(
        &e,
        s,
        Op::Unlink {
            parent: ROOT_INO,
            name: b"f".to_vec(),
        },
    )
    .unwrap();
    let open = |ino: u64| e.call(move |fs| fs.open_count(ino)).unwrap();
    assert_eq!((open(ino), open(ROOT_INO), open(tmp.ino)), (1, 1, 1));
    // A handle is the session's: another session can't release it, and a
    // file handle isn't a directory's.
    let other = e.open_session().unwrap();
    assert_eq!(
        root_op(&e, other, Op::Release { handle: h }),
        Err(Errno(libc::EINVAL))
    );
    assert_eq!(
        root_op(&e, s, Op::Releasedir { handle: h }),
        Err(Errno(libc::EINVAL))
    );
    root_op(&e, s, Op::Releasedir { handle: dh }).unwrap();
    e.close_session(s).unwrap();
    assert_eq!((open(ino), open(ROOT_INO), open(tmp.ino)), (0, 0, 0));
    // The unlinked files went with their last handle.
    assert_eq!(
        root_op(&e, SessionId::ENGINE, Op::Getattr { ino }),
        Err(Errno(libc::ENOENT))
    );
    assert_eq!(
        root_op(&e, SessionId::ENGINE, Op::Getattr { ino: tmp.ino }),
        Err(Errno(libc::ENOENT))
    );
    // An ended session takes no more requests.
    assert_eq!(
        root_op(&e, s, Op::Getattr { ino: ROOT_INO }),
        Err(Errno(libc::EBADF))
    );
    assert_eq!(e.close_session(s), Err(Errno(libc::EINVAL)));
    assert_eq!(e.close_session(SessionId::ENGINE), Err(Errno(libc::EINVAL)));
    e.close_session(other).unwrap();
    shutdown(e);
}

#[test]
fn a_truncate_through_a_handle_trusts_the_session_not_the_request() {
    let e = engine();
    let s = e.open_session().unwrap();
    let c = user(1000);
    // Root makes a file and opens it for writing, and for reading, in `s`.
    let (wh, f, _) = root_op(
        &e,
        s,
        Op::Create {
            parent: ROOT_INO,
            name: b"f".to_vec(),
            mode: 0o644,
            flags: libc::O_WRONLY as u32,
            report_free: false,
        },
    )
    .unwrap()
    .into_opened()
    .unwrap();
    let (rh, _, _) = root_op(
        &e,
        s,
        Op::Open {
            ino: f.ino,
            flags: libc::O_RDONLY as u32,
            report_free: false,
        },
    )
    .unwrap()
    .into_opened()
    .unwrap();
    let truncate = |handle, claim: bool| {
        let set = scoutfs_engine::fs::SetAttr {
            size: Some(0),
            handle_writable: claim,
            ..Default::default()
        };
        e.call_op(Request::new(
            s,
            c.clone(),
            Op::Setattr {
                ino: f.ino,
                set,
                handle,
            },
        ))
    };
    // User 1000 may not write root's 0644 file: a claim in the request
    // counts for nothing, a read-only handle neither; a write handle of
    // the session does.
    assert_eq!(truncate(None, true), Err(Errno(libc::EACCES)));
    assert_eq!(truncate(Some(rh), true), Err(Errno(libc::EACCES)));
    assert!(truncate(Some(wh), false).is_ok());
    e.close_session(s).unwrap();
    shutdown(e);
}

#[test]
fn admin_ops_are_roots_and_counters_everyones() {
    let e = engine();
    let u = user(1000);
    let ask_as = |c: &Caller, op: Op| e.call_op(Request::new(SessionId::ENGINE, c.clone(), op));
    assert_eq!(ask_as(&u, Op::Commit), Err(Errno(libc::EPERM)));
    assert_eq!(ask_as(&u, Op::ResetStats), Err(Errno(libc::EPERM)));
    let remount = Op::Remount {
        atime: Default::default(),
        read_only: true,
    };
    assert_eq!(ask_as(&u, remount), Err(Errno(libc::EPERM)));
    assert!(ask_as(&u, Op::Stats).unwrap().into_stats().is_ok());
    assert!(
        ask_as(&Caller::root(), Op::Commit)
            .unwrap()
            .into_synced()
            .unwrap()
            > 0
    );
    // Counted per kind, failures too; root resets them.
    assert_eq!(stat(&e, "op_commit_count"), 2);
    assert_eq!(stat(&e, "op_commit_errors"), 1);
    assert!(stat(&e, "op_commit_max_us") >= stat(&e, "op_commit_p50_us"));
    assert!(stat(&e, "commits") > 0, "the volume's counters too");
    ask_as(&Caller::root(), Op::ResetStats).unwrap();
    assert_eq!(stat(&e, "op_commit_count"), 0);
    shutdown(e);
}

#[test]
fn the_admin_socket_answers_by_the_peers_credentials() {
    let e = engine();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sub/admin.sock");
    let fuse_like: scoutfs_engine::serve::admin::CounterSource =
        Arc::new(|| vec![("frontend_requests".to_string(), 42)]);
    let server = AdminServer::start(&sock, &e, vec![fuse_like]).unwrap();
    root_op(&e, SessionId::ENGINE, Op::Getattr { ino: ROOT_INO }).unwrap();
    let lines = ask(&sock, AdminRequest::Counters).unwrap();
    assert_eq!(lines[0], "frontend_requests 42");
    for want in ["commits ", "corrupt_block_reads 0", "op_getattr_count 1"] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want}: {lines:?}"
        );
    }
    // This test runs as root (it may sync), or not (EPERM).
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match ask(&sock, AdminRequest::Sync) {
        Ok(l) => assert!(root && l[0].starts_with("committed_seq "), "{l:?}"),
        Err(AdminError::Refused { errno, .. }) => assert!(!root && errno == libc::EPERM),
        Err(e) => panic!("{e}"),
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "every user may connect");
    // Garbage is refused, and the server goes on.
    {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.write_all(b"format the disk please\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with(&format!("error {} ", libc::EINVAL)),
            "{out}"
        );
    }
    if root {
        // Another user, from the kernel's word: counters yes, sync no.
        let script = r#"
import socket, sys
for req in (b"counters\n", b"sync\n"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(req)
    print(s.makefile("rb").read().decode().splitlines()[0])
"#;
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", script])
            .arg(&sock)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut l = text.lines();
        assert_eq!(
            l.next(),
            Some("ok"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            l.next()
                .unwrap()
                .starts_with(&format!("error {} ", libc::EPERM)),
            "{text}"
        );
    }
    drop(server);
    assert!(!sock.exists());
    shutdown(e);
}
