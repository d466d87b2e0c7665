//! Change events through the front door: what each changing op tells a
//! subscriber, nothing for reads or for the subscriber's own session, and
//! delivery as the subscriber acknowledges it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::SetAttr;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{
    Caller, Change, ChangeEvent, Engine, EngineOptions, Op, Reply, Request, SessionId,
    SubscribeOptions, Subscription,
};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};

fn engine() -> Arc<Engine> {
    let meta = MemDev::new(64 << 20);
    let data = MemDev::new(64 << 20);
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    };
    let meta: Arc<dyn BlockDev> = Arc::new(meta);
    let data: Arc<dyn BlockDev> = Arc::new(data);
    Arc::new(Engine::start(meta, data, opts).unwrap())
}

fn op(e: &Engine, s: SessionId, op: Op) -> Reply {
    let what = format!("{op:?}");
    e.call_op(Request::new(s, Caller::root(), op))
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

fn take(sub: &Subscription) -> Vec<Change> {
    let mut evs: Vec<ChangeEvent> = Vec::new();
    let t = sub.take(&mut evs);
    assert!(!t.lost);
    sub.delivered(t.upto);
    evs.into_iter().map(|e| e.change).collect()
}

fn inode(ino: u64) -> Change {
    Change::inode(ino)
}

fn entry(parent: u64, name: &str) -> Change {
    Change::entry(parent, name.as_bytes())
}

#[test]
fn each_change_tells_what_it_made_stale_and_reads_tell_nothing() {
    let e = engine();
    let (mine, other) = (e.open_session().unwrap(), e.open_session().unwrap());
    let wakes = Arc::new(AtomicU64::new(0));
    let w = wakes.clone();
    let sub = e.subscribe_changes(
        SubscribeOptions {
            own: Some(mine),
            names: true,
            ..SubscribeOptions::default()
        },
        Box::new(move || {
            w.fetch_add(1, Ordering::Relaxed);
        }),
    );

    let d = op(
        &e,
        other,
        Op::Mkdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
            mode: 0o755,
        },
    )
    .into_attr()
    .unwrap()
    .ino;
    assert_eq!(take(&sub), [entry(ROOT_INO, "d"), inode(ROOT_INO)]);
    assert!(wakes.load(Ordering::Relaxed) > 0);

    let create = Op::Create {
        parent: d,
        name: b"f".to_vec(),
        mode: libc::S_IFREG | 0o644,
        flags: libc::O_RDWR as u32,
        report_free: false,
    };
    let (h, a, _) = op(&e, other, create).into_opened().unwrap();
    let f = a.ino;
    assert_eq!(take(&sub), [entry(d, "f"), inode(d)]);
    let write = Op::Write {
        ino: f,
        offset: 10,
        data: vec![7; 5],
    };
    op(&e, other, write);
    let f_named = vec![(d, b"f".to_vec())];
    assert_eq!(
        take(&sub),
        [Change::Inode {
            ino: f,
            data: Some(10..15),
            names: f_named.clone()
        }]
    );

    // Reads, listings and opens change nothing a frontend caches.
    op(&e, other, Op::Getattr { ino: f });
    op(
        &e,
        other,
        Op::Read {
            ino: f,
            offset: 0,
            len: 100,
        },
    );
    op(
        &e,
        other,
        Op::Readdir {
            ino: d,
            from: 0,
            end: u64::MAX,
            max: 100,
            touch_atime: false,
        },
    );
    op(&e, other, Op::Release { handle: h });
    assert_eq!(take(&sub), []);

    let truncate = Op::Setattr {
        ino: f,
        set: SetAttr {
            size: Some(3),
            ..SetAttr::default()
        },
        handle: None,
    };
    op(&e, other, truncate);
    assert_eq!(
        take(&sub),
        [Change::Inode {
            ino: f,
            data: Some(3..u64::MAX),
            names: f_named.clone()
        }]
    );

    op(
        &e,
        other,
        Op::Link {
            ino: f,
            parent: ROOT_INO,
            name: b"g".to_vec(),
        },
    );
    assert_eq!(
        take(&sub),
        [
            entry(ROOT_INO, "g"),
            inode(ROOT_INO),
            Change::Inode {
                ino: f,
                data: None,
                names: f_named.clone()
            }
        ]
    );

    // One of two names: the other stays, so only the name is stale.
    op(
        &e,
        other,
        Op::Unlink {
            parent: d,
            name: b"f".to_vec(),
        },
    );
    let got = take(&sub);
    assert_eq!(got[0], entry(d, "f"));
    assert!(
        matches!(&got[1], Change::Inode { ino, names, .. } if *ino == f && names.len() == 2),
        "{got:?}"
    );
    assert_eq!(got[2], inode(d));

    op(
        &e,
        other,
        Op::Rename {
            parent: ROOT_INO,
            name: b"g".to_vec(),
            new_parent: d,
            new_name: b"h".to_vec(),
            flags: 0,
        },
    );
    assert_eq!(
        take(&sub),
        [
            entry(d, "h"),
            entry(ROOT_INO, "g"),
            inode(ROOT_INO),
            inode(d),
            inode(f)
        ]
    );

    op(
        &e,
        other,
        Op::SetXattr {
            ino: d,
            name: b"user.x".to_vec(),
            value: b"1".to_vec(),
            flags: 0,
        },
    );
    assert_eq!(take(&sub), [inode(d)]);

    // The last name: a delete.
    op(
        &e,
        other,
        Op::Unlink {
            parent: d,
            name: b"h".to_vec(),
        },
    );
    assert_eq!(
        take(&sub),
        [
            Change::Delete {
                parent: d,
                ino: f,
                name: b"h".to_vec()
            },
            inode(d)
        ]
    );
    op(
        &e,
        other,
        Op::Rmdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
        },
    );
    assert_eq!(
        take(&sub),
        [
            Change::Delete {
                parent: ROOT_INO,
                ino: d,
                name: b"d".to_vec()
            },
            inode(ROOT_INO)
        ]
    );

    // The subscriber's own session: its kernel knows.
    op(
        &e,
        mine,
        Op::Mkdir {
            parent: ROOT_INO,
            name: b"mine".to_vec(),
            mode: 0o755,
        },
    );
    assert_eq!(take(&sub), []);
    drop(sub);
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
}

#[test]
fn delivery_waits_for_every_subscriber_to_acknowledge() {
    let e = engine();
    let other = e.open_session().unwrap();
    let a = e.subscribe_changes(SubscribeOptions::default(), Box::new(|| {}));
    let b = e.subscribe_changes(SubscribeOptions::default(), Box::new(|| {}));
    assert!(
        e.wait_changes_delivered(Duration::ZERO),
        "nothing published"
    );
    op(
        &e,
        other,
        Op::Mkdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
            mode: 0o755,
        },
    );
    assert!(!e.wait_changes_delivered(Duration::ZERO));
    take(&a);
    assert!(!e.wait_changes_delivered(Duration::ZERO), "b has not");
    let mut evs = Vec::new();
    let t = b.take(&mut evs);
    assert_eq!(evs.len(), 2);
    // A waiter wakes when the last acknowledgement comes.
    let e2 = e.clone();
    let waiter = std::thread::spawn(move || e2.wait_changes_delivered(Duration::from_secs(60)));
    b.delivered(t.upto);
    assert!(waiter.join().unwrap());
    // A subscriber that goes away owes nothing.
    op(
        &e,
        other,
        Op::Rmdir {
            parent: ROOT_INO,
            name: b"d".to_vec(),
        },
    );
    take(&a);
    drop(b);
    assert!(e.wait_changes_delivered(Duration::ZERO));
    drop(a);
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
}
