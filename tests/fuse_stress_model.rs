//! Many real processes through the FUSE mount at once, in the same
//! directories: each creates, writes, overwrites, truncates, renames
//! across directories, unlinks, lists and reads back files of its own
//! (names no other process touches), fsyncing now and then, and checks
//! every listing and every read against its own model as it goes. At the
//! end the tree must be exactly the union of the models, after a remount
//! too, and `scoutfs check` must find nothing.
//!
//! Needs root and /dev/fuse; without them it prints why and passes
//! vacuously.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::Vol;

const PROCS: usize = 6;
const DIRS: usize = 4;

/// One process: `base` (the mount), its number, its seed, its op count.
/// Prints `path sha256` for every file it ends with.
const WORKER: &str = r#"
import hashlib, os, random, sys
base, me, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
dirs = [f"{base}/d{i}" for i in range(4)]
model = {}  # path -> bytearray
serial = 0
def fresh(d):
    global serial
    serial += 1
    return f"{dirs[d]}/p{me}-{serial}"
def check(path):
    with open(path, "rb") as f:
        got = f.read()
    assert got == bytes(model[path]), f"{path}: {len(got)} bytes, model {len(model[path])}"
for i in range(ops):
    op = rng.randrange(10)
    mine = sorted(model)
    if op <= 1 or not mine:
        p = fresh(rng.randrange(4))
        data = bytes([rng.randrange(256)]) * rng.randrange(0, 200_000)
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:done + 65536])
        os.close(fd)
        model[p] = bytearray(data)
    elif op == 2:
        p = rng.choice(mine)
        q = fresh(rng.randrange(4))
        os.rename(p, q)
        model[q] = model.pop(p)
    elif op == 3:
        p = rng.choice(mine)
        os.unlink(p)
        del model[p]
    elif op == 4:
        p = rng.choice(mine)
        off = rng.randrange(0, len(model[p]) + 5000)
        data = bytes([rng.randrange(256)]) * rng.randrange(1, 30_000)
        fd = os.open(p, os.O_WRONLY)
        os.pwrite(fd, data, off)
        if rng.randrange(4) == 0:
            os.fsync(fd)
        os.close(fd)
        m = model[p]
        if len(m) < off:
            m.extend(b"\0" * (off - len(m)))
        m[off:off + len(data)] = data
    elif op == 5:
        p = rng.choice(mine)
        size = rng.randrange(0, len(model[p]) + 10_000)
        os.truncate(p, size)
        m = model[p]
        if size <= len(m):
            del m[size:]
        else:
            m.extend(b"\0" * (size - len(m)))
    elif op <= 7:
        d = rng.randrange(4)
        prefix = f"p{me}-"
        got = sorted(n for n in os.listdir(dirs[d]) if n.startswith(prefix))
        want = sorted(os.path.basename(p) for p in model if os.path.dirname(p) == dirs[d])
        assert got == want, f"{dirs[d]}: {got} != {want}"
    else:
        check(rng.choice(mine))
for p in sorted(model):
    check(p)
    print(p[len(base) + 1:], hashlib.sha256(bytes(model[p])).hexdigest())
"#;

/// Every file under the mount's test directories: path -> sha256.
const WALK: &str = r#"
import hashlib, os, sys
base = sys.argv[1]
for d in sorted(os.listdir(base)):
    for n in sorted(os.listdir(f"{base}/{d}")):
        with open(f"{base}/{d}/{n}", "rb") as f:
            print(f"{d}/{n}", hashlib.sha256(f.read()).hexdigest())
"#;

fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .map(|l| {
            let (p, h) = l.split_once(' ').expect("path hash");
            (p.to_string(), h.to_string())
        })
        .collect()
}

#[test]
fn processes_in_shared_directories_end_with_the_models_tree() {
    require_fuse!();
    let mut v = Vol::new(2 << 30, 2 << 30);
    v.mount();
    let mnt = v.mnt();
    for d in 0..DIRS {
        std::fs::create_dir(format!("{mnt}/d{d}")).unwrap();
    }
    let children: Vec<_> = (0..PROCS)
        .map(|p| {
            Command::new("python3")
                .arg("-c")
                .arg(WORKER)
                .args([&mnt, &p.to_string(), &(1000 + p).to_string(), "600"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut want = BTreeMap::new();
    for (p, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {p}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            v.log()
        );
        want.extend(parse(&String::from_utf8_lossy(&out.stdout)));
    }
    assert!(
        want.len() > 20,
        "the processes ended with {} files",
        want.len()
    );
    let got = parse(&common::py(WALK, &[&mnt]));
    assert!(got == want, "the tree differs from the models");
    v.unmount();
    v.mount();
    let got = parse(&common::py(WALK, &[&v.mnt()]));
    assert!(
        got == want,
        "after a remount the tree differs from the models"
    );
    v.unmount();
    v.check();
}
