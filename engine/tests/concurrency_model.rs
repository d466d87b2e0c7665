//! The engine's concurrency, checked against a sequential run: many
//! threads submit random operations (creates, unlinks, renames across
//! directories, writes, truncates, reads, listings, all in the same few
//! directories) to one engine whose devices complete out of order and
//! whose caches are far too small, so requests miss, wait for reads and
//! run again, interleaved. An operation's final attempt runs alone on the
//! reactor, so the order in which final attempts ran is the order the
//! engine admitted the operations; it is logged from inside the attempt.
//! Replayed one at a time in that order on a fresh volume, every
//! operation must give the same answer, the two trees must end the same,
//! and both volumes must check clean.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use scoutfs_engine::dev::mem::MemDev;
use scoutfs_engine::dev::BlockDev;
use scoutfs_engine::format::inode::ROOT_INO;
use scoutfs_engine::fs::{Creds, FsError, SetAttr};
use scoutfs_engine::reactor::{CorePin, ReactorConfig};
use scoutfs_engine::serve::{Engine, EngineOptions, Mounted};
use scoutfs_engine::txn::check::check_volume;
use scoutfs_engine::txn::mkfs::{mkfs, MkfsOptions};
use scoutfs_engine::txn::{TxnOptions, Volume};
use scoutfs_engine::util::ready;

const DIRS: u64 = 3;
const NAMES: u64 = 12;
const THREADS: u64 = 6;
const OPS: usize = 300;

#[derive(Clone, Debug)]
enum Op {
    Create(u64, u64),
    Unlink(u64, u64),
    Rename(u64, u64, u64, u64),
    Write {
        dir: u64,
        name: u64,
        off: u64,
        len: usize,
        byte: u8,
    },
    Truncate(u64, u64, u64),
    Read {
        dir: u64,
        name: u64,
        off: u64,
        len: usize,
    },
    List(u64),
    Fsync(u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Err(i32),
    Done,
    Bytes(Vec<u8>),
    Names(Vec<Vec<u8>>),
}

fn name(n: u64) -> Vec<u8> {
    format!("name-{n:02}").into_bytes()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_op(r: &mut Rng) -> Op {
    let (d, n) = (r.below(DIRS), r.below(NAMES));
    match r.below(11) {
        0 | 1 => Op::Create(d, n),
        2 => Op::Unlink(d, n),
        3 => Op::Rename(d, n, r.below(DIRS), r.below(NAMES)),
        4..=5 => Op::Write {
            dir: d,
            name: n,
            off: r.below(300_000),
            len: 1 + r.below(70_000) as usize,
            byte: r.below(255) as u8 + 1,
        },
        6 => Op::Truncate(d, n, r.below(200_000)),
        7 | 8 => Op::Read {
            dir: d,
            name: n,
            off: r.below(300_000),
            len: 1 + r.below(40_000) as usize,
        },
        9 => Op::List(d),
        _ => Op::Fsync(d, n),
    }
}

/// Run `op` over the mounted fs: one attempt. `dirs` are the test's
/// directories' inode numbers.
fn attempt(fs: &mut Mounted, dirs: &[u64], op: &Op) -> Result<Outcome, FsError> {
    let c = Creds::root();
    let file = |fs: &mut Mounted, d: u64, n: u64| {
        ready(fs.lookup(&c, dirs[d as usize], &name(n))).map(|a| a.ino)
    };
    let r = match op {
        Op::Create(d, n) => ready(fs.create(&c, dirs[*d as usize], &name(*n), 0o644)).map(|_| ()),
        Op::Unlink(d, n) => ready(fs.unlink(&c, dirs[*d as usize], &name(*n))),
        Op::Rename(d, n, e, m) => ready(fs.rename(
            &c,
            dirs[*d as usize],
            &name(*n),
            dirs[*e as usize],
            &name(*m),
            0,
        )),
        Op::Write {
            dir,
            name: n,
            off,
            len,
            byte,
        } => {
            let ino = file(fs, *dir, *n)?;
            ready(fs.write(&c, ino, *off, &vec![*byte; *len])).map(|_| ())
        }
        Op::Truncate(d, n, size) => {
            let ino = file(fs, *d, *n)?;
            let set = SetAttr {
                size: Some(*size),
                ..SetAttr::default()
            };
            ready(fs.setattr(&c, ino, &set)).map(|_| ())
        }
        Op::Read {
            dir,
            name: n,
            off,
            len,
        } => {
            let ino = file(fs, *dir, *n)?;
            return ready(fs.read(ino, *off, *len)).map(Outcome::Bytes);
        }
        Op::Fsync(d, n) => {
            let ino = file(fs, *d, *n)?;
            ready(fs.fsync(ino)).map(|_| ())
        }
        Op::List(d) => {
            let mut names = Vec::new();
            let mut pos = 0;
            loop {
                let ents = ready(fs.readdir(dirs[*d as usize], pos, 16))?;
                let Some(last) = ents.last() else { break };
                pos = last.pos + 1;
                names.extend(
                    ents.into_iter()
                        .map(|e| e.name)
                        .filter(|n| n != b"." && n != b".."),
                );
            }
            names.sort();
            return Ok(Outcome::Names(names));
        }
    };
    r.map(|()| Outcome::Done)
}

/// Whether an attempt's error makes the engine run it again.
fn restarts(e: &FsError) -> bool {
    e.is_miss()
        || matches!(
            e,
            FsError::WaitWriteBack | FsError::WaitCommit(_) | FsError::Throttled(_)
        )
}

fn outcome(r: Result<Outcome, FsError>) -> Outcome {
    r.unwrap_or_else(|e| Outcome::Err(e.errno()))
}

fn start(meta: &MemDev, data: &MemDev, cache_bytes: usize) -> Arc<Engine> {
    let (m, d): (Arc<dyn BlockDev>, Arc<dyn BlockDev>) =
        (Arc::new(meta.clone()), Arc::new(data.clone()));
    let opts = EngineOptions {
        reactor: ReactorConfig {
            pin: CorePin::None,
            ..ReactorConfig::default()
        },
        txn: TxnOptions {
            cache_bytes,
            // Commits in flight while operations go on.
            commit_dirty_blocks: 64,
            ..TxnOptions::default()
        },
        ..EngineOptions::default()
    };
    Arc::new(Engine::start(m, d, opts).unwrap())
}

fn volume() -> (MemDev, MemDev) {
    let (meta, data) = (MemDev::new(256 << 20), MemDev::new(256 << 20));
    mkfs(&meta, &data, &MkfsOptions::default()).unwrap();
    (meta, data)
}

/// The starting tree: the directories, and every other name a file of
/// 256 KiB. The directories' inode numbers.
fn populate(e: &Engine) -> Vec<u64> {
    let dirs: Vec<u64> = (0..DIRS)
        .map(|d| {
            e.run(move |fs| {
                ready(fs.mkdir(&Creds::root(), ROOT_INO, format!("d{d}").as_bytes(), 0o755))
            })
            .unwrap()
            .unwrap()
            .ino
        })
        .collect();
    for d in 0..DIRS {
        for n in (0..NAMES).step_by(2) {
            for op in [
                Op::Create(d, n),
                Op::Write {
                    dir: d,
                    name: n,
                    off: 0,
                    len: 256 << 10,
                    byte: (d * NAMES + n) as u8,
                },
            ] {
                let dirs = dirs.clone();
                e.run(move |fs| attempt(fs, &dirs, &op)).unwrap().unwrap();
            }
        }
    }
    dirs
}

/// The directories' inode numbers, looked up.
fn dir_inos(e: &Engine) -> Vec<u64> {
    (0..DIRS)
        .map(|d| {
            e.run(move |fs| ready(fs.lookup(&Creds::root(), ROOT_INO, format!("d{d}").as_bytes())))
                .unwrap()
                .unwrap()
                .ino
        })
        .collect()
}

/// Every directory's names and every file's bytes.
fn tree(e: &Engine, dirs: &[u64]) -> BTreeMap<(u64, Vec<u8>), Vec<u8>> {
    let mut t = BTreeMap::new();
    for d in 0..DIRS {
        let all = dirs.to_vec();
        let Outcome::Names(names) = e
            .run(move |fs| attempt(fs, &all, &Op::List(d)))
            .unwrap()
            .unwrap()
        else {
            unreachable!()
        };
        for n in names {
            let dir = dirs[d as usize];
            let n2 = n.clone();
            let body = e
                .run(move |fs| {
                    let a = ready(fs.lookup(&Creds::root(), dir, &n2))?;
                    ready(fs.read(a.ino, 0, a.size as usize))
                })
                .unwrap()
                .unwrap();
            t.insert((d, n), body);
        }
    }
    t
}

fn check_clean(meta: &MemDev, data: &MemDev) {
    let mut vol = Volume::open(meta, TxnOptions::default()).unwrap();
    let problems = check_volume(vol.store_mut(), meta, data).problems;
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn concurrent_operations_equal_a_sequential_run_in_admission_order() {
    for seed in [13, 29, 71] {
        run_and_replay(seed);
    }
}

fn run_and_replay(seed: u64) {
    let (meta, data) = volume();
    let e = start(&meta, &data, 64 << 20);
    populate(&e);
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    // Cold: 16 metadata blocks of cache, file data on the device.
    let e = start(&meta, &data, 16 << 16);
    let dirs = dir_inos(&e);
    let at_mount = e.miss_stats().unwrap();
    meta.reorder_completions(Some(seed));
    data.reorder_completions(Some(seed + 4));
    // (op, outcome) in the order the final attempts ran.
    let log: Arc<Mutex<Vec<(Op, Outcome)>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (e, dirs, log) = (e.clone(), dirs.clone(), log.clone());
            std::thread::spawn(move || {
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ ((seed * 1000 + t + 1) * 0x1234_5678_9abc));
                for _ in 0..OPS {
                    let op = random_op(&mut rng);
                    let (dirs, log) = (dirs.clone(), log.clone());
                    let r = e
                        .run(move |fs| {
                            let r = attempt(fs, &dirs, &op);
                            match &r {
                                Err(e) if restarts(e) => {}
                                _ => log.lock().unwrap().push((op.clone(), outcome(r.clone()))),
                            }
                            r
                        })
                        .unwrap();
                    if let Err(e) = r {
                        assert!(!restarts(&e), "{e:?} reached the caller");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(log.len(), (THREADS as usize) * OPS);
    let s = e.miss_stats().unwrap();
    let c = e.commit_stats().unwrap();
    assert!(
        s.restarts > 0 && s.data.deferred > 0,
        "nothing waited: {s:?}"
    );
    // Writes, truncates and reads never read file data inline: what they
    // modify in place is read before their first change.
    assert_eq!(s.data.inline_reads, at_mount.data.inline_reads, "{s:?}");
    assert!(c.requests_during_commits > 0, "{c:?}");
    meta.reorder_completions(None);
    data.reorder_completions(None);
    let got = tree(&e, &dirs);
    Arc::try_unwrap(e).unwrap().shutdown().unwrap();
    check_clean(&meta, &data);

    // The same operations, one at a time, in the order admitted.
    let (meta2, data2) = volume();
    let m = start(&meta2, &data2, 64 << 20);
    let dirs2 = populate(&m);
    let mut kinds = BTreeMap::new();
    for (i, (op, want)) in log.into_iter().enumerate() {
        let (dirs2, op2) = (dirs2.clone(), op.clone());
        let r = outcome(m.run(move |fs| attempt(fs, &dirs2, &op2)).unwrap());
        assert_eq!(r, want, "seed {seed}, operation {i}: {op:?}");
        let kind = format!("{op:?}")
            .split(['(', ' '])
            .next()
            .unwrap()
            .to_string();
        *kinds
            .entry((kind, matches!(want, Outcome::Err(_))))
            .or_insert(0) += 1;
    }
    // The random mix did exercise successes and failures of each kind.
    for k in [
        "Create", "Unlink", "Rename", "Write", "Truncate", "Read", "Fsync",
    ] {
        assert!(
            kinds.contains_key(&(k.to_string(), false)),
            "no {k} succeeded: {kinds:?}"
        );
    }
    assert_eq!(tree(&m, &dirs2), got, "the trees differ");
    Arc::try_unwrap(m).unwrap().shutdown().unwrap();
    check_clean(&meta2, &data2);
}
