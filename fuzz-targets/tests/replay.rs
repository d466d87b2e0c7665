//! Every fuzz target as ordinary tests: each input of its corpus
//! (`fuzz/corpus/<target>/`: seeds from a real volume and the regression
//! inputs of every fault found), then a bounded number of inputs mutated
//! from the corpus by a seeded generator. No nightly needed. A failing
//! input is written to `target/fuzz-replay-failures/` and named.
//!
//! `SCOUTFS_FUZZ_REPLAY_INPUTS` sets how many generated inputs each target
//! gets (default 300, the volume target 40); `SCOUTFS_FUZZ_REPLAY_SEED` the generator's seed;
//! with `SCOUTFS_FUZZ_REPLAY_KEEP_LAST` set, each input is written to
//! `target/fuzz-replay-failures/<target>-last` before it runs (to catch a
//! hang's input).

use std::path::{Path, PathBuf};

use scoutfs_engine::util::rng::SimRng;
use scoutfs_fuzz_targets::{target, Target};

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name)
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(name)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let data = std::fs::read(e.path()).expect("read corpus input");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    out.sort();
    out
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `t` on `input`; on a panic keep the input and say where.
fn run(t: &Target, what: &str, input: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-replay-failures");
    if std::env::var_os("SCOUTFS_FUZZ_REPLAY_KEEP_LAST").is_some() {
        // For hangs: the input running when the test was stopped.
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}-last", t.name)), input);
    }
    let r = std::panic::catch_unwind(|| (t.run)(input));
    if r.is_err() {
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}-{}", t.name, what.replace('/', "_")));
        let _ = std::fs::write(&path, input);
        panic!(
            "fuzz target {} panicked on {what}; input kept at {} (replay: cargo fuzz run {} {})",
            t.name,
            path.display(),
            t.name,
            path.display()
        );
    }
}

/// A mutation of `base`: a few byte flips, overwrites with interesting
/// values, insertions, deletions, truncation or a splice of another input.
fn mutate(rng: &mut SimRng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let edits = 1 + rng.below(8);
    for _ in 0..edits {
        let at = if v.is_empty() {
            0
        } else {
            rng.below(v.len() as u64) as usize
        };
        match rng.below(7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => {
                const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0x10, 0x30, 0x40];
                v[at] = INTERESTING[rng.below(8) as usize];
            }
            2 if v.len() >= at + 8 => {
                let x = match rng.below(4) {
                    0 => u64::MAX,
                    1 => 0,
                    2 => rng.below(1 << 16),
                    _ => rng.next_u64(),
                };
                v[at..at + 8].copy_from_slice(&x.to_le_bytes());
            }
            3 => {
                let n = rng.below(16) as usize;
                let fill = rng.below(256) as u8;
                v.splice(at..at, std::iter::repeat_n(fill, n));
            }
            4 if !v.is_empty() => {
                let n = (rng.below(16) as usize).min(v.len() - at);
                v.drain(at..at + n);
            }
            5 => v.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.below(other.len() as u64) as usize;
                let n = (rng.below(256) as usize).min(other.len() - from);
                let end = (at + n).min(v.len());
                v.splice(at..end, other[from..from + n].iter().copied());
            }
            _ => {}
        }
    }
    v
}

fn replay(name: &str) {
    let t = target(name).expect("a target of that name");
    let inputs = corpus(name);
    assert!(
        !inputs.is_empty(),
        "no corpus for {name} under {}",
        corpus_dir(name).display()
    );
    for (file, data) in &inputs {
        run(t, file, data);
    }
    // The volume target makes a device and mounts it per input: fewer.
    let default = if name == "volume" { 40 } else { 300 };
    let n = env_u64("SCOUTFS_FUZZ_REPLAY_INPUTS", default);
    let seed = env_u64("SCOUTFS_FUZZ_REPLAY_SEED", 0x5c0f5);
    let mut rng = SimRng::new(seed ^ name.len() as u64);
    for i in 0..n {
        let base = &inputs[rng.below(inputs.len() as u64) as usize].1;
        let input = match rng.below(16) {
            // Now and then plain noise.
            0 => (0..rng.below(512)).map(|_| rng.below(256) as u8).collect(),
            _ => {
                let other = &inputs[rng.below(inputs.len() as u64) as usize].1;
                mutate(&mut rng, base, other)
            }
        };
        run(t, &format!("generated-{seed:x}-{i}"), &input);
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

replay_tests!(
    super_block,
    quorum_block,
    btree_block,
    alloc,
    log_trees,
    inode,
    dirent,
    xattr,
    symlink,
    volume,
    fuse_request,
    admin
);

#[test]
fn every_target_is_replayed() {
    let named = [
        "super_block",
        "quorum_block",
        "btree_block",
        "alloc",
        "log_trees",
        "inode",
        "dirent",
        "xattr",
        "symlink",
        "volume",
        "fuse_request",
        "admin",
    ];
    for t in scoutfs_fuzz_targets::TARGETS {
        assert!(named.contains(&t.name), "{} has no replay test", t.name);
    }
}
