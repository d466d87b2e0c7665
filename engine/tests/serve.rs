//! The engine: a reactor owning the mounted volume, served to many threads;
//! a second engine on the same devices is refused; shutdown commits.

use std::sync::Arc;

use scoutfs_engine::dev::uring::{UringDev, UringOptions};
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::Creds;
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineError, EngineOptions};
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::util::ready;

fn dir_name(t: u64) -> Vec<u8> {
    format!("d{t}").into_bytes()
}

fn devs(dir: &std::path::Path) -> (Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    let open = |name: &str, bytes: u64| -> Arc<dyn BlockDev> {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        }
        Arc::new(UringDev::open(&p, UringOptions::default()).unwrap())
    };
    (open("meta", 64 << 20), open("data", 64 << 20))
}

fn opts() -> EngineOptions {
    EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        ..EngineOptions::default()
    }
}

#[test]
fn many_threads_share_one_engine_and_shutdown_commits() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (m, d) = devs(dir.path());
        mkfs(&*m, &*d, &MkfsOptions::default()).unwrap();
    }
    let (m, d) = devs(dir.path());
    let engine = Arc::new(Engine::start(m, d, opts()).unwrap());

    // A second engine on the same devices is refused.
    let (m2, d2) = devs(dir.path());
    match Engine::start(m2, d2, opts()) {
        Err(e @ EngineError::Dev(_)) => {
            assert_eq!(e.errno(), libc::EBUSY);
            assert!(e.to_string().contains("in use by another engine"), "{e}");
        }
        other => panic!("second engine: {other:?}"),
    }

    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let e = engine.clone();
            std::thread::spawn(move || {
                let dir = e
                    .call(move |fs| ready(fs.mkdir(&Creds::root(), ROOT_INO, &dir_name(t), 0o755)))
                    .unwrap()
                    .unwrap()
                    .ino;
                for i in 0..200u64 {
                    e.call(move |fs| {
                        ready(fs.create(&Creds::root(), dir, format!("f{i}").as_bytes(), 0o644))
                    })
                    .unwrap()
                    .unwrap();
                }
                let bytes = vec![t as u8 + 1; 100_000];
                e.call(move |fs| {
                    let f = ready(fs.lookup(&Creds::root(), dir, b"f7"))?;
                    ready(fs.write(&Creds::root(), f.ino, 4096 * t, &bytes))
                })
                .unwrap()
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let engine = Arc::try_unwrap(engine).unwrap();
    let seq = engine.shutdown().unwrap();
    assert!(seq > 1);

    let (m, d) = devs(dir.path());
    let engine = Engine::start(m, d, opts()).unwrap();
    for t in 0..4u64 {
        let (n, got, size) = engine
            .call(move |fs| {
                let dir = ready(fs.lookup(&Creds::root(), ROOT_INO, &dir_name(t))).unwrap();
                let n = ready(fs.readdir(dir.ino, 2, usize::MAX)).unwrap().len();
                let f = ready(fs.lookup(&Creds::root(), dir.ino, b"f7")).unwrap();
                let got = ready(fs.read(f.ino, 4096 * t, 100_000)).unwrap();
                (n, got, f.size)
            })
            .unwrap();
        assert_eq!(n, 200);
        assert_eq!(size, 4096 * t + 100_000);
        assert!(got.iter().all(|&b| b == t as u8 + 1));
    }
    engine.shutdown().unwrap();
}
