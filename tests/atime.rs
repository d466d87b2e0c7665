//! Access times through the FUSE mount follow the mount's atime options
//! as ext4's do on the same kernel: relatime (the default), noatime,
//! strictatime, nodiratime and lazytime, for file reads, directory
//! listings and exec, with times set exactly (utimensat) rather than
//! waited for; what /proc/self/mountinfo shows; the atimes kept across
//! an unmount and mount; and options changed by `mount -o remount`.
//!
//! The kernel never updates atime on a FUSE mount (its inodes are
//! S_NOATIME): the engine does, by the policy it reads back from
//! mountinfo. The rules themselves, with a clock the test moves (a day
//! old, lazytime's writes), are engine/tests/atime.rs.
//!
//! Needs root, /dev/fuse and mkfs.ext4; without the first two the test
//! prints why and passes vacuously.

#[macro_use]
mod common;

use std::path::Path;

use common::{sh, Ext4, Vol};

/// In directory argv[1] (made on the first run): a file, a copy of
/// /bin/true and a directory. For each, each of two states (atime before
/// mtime; atime after mtime and ctime, an hour ahead: a read already
/// seen) three times over: set the times, read / list / run it, and
/// print whether atime moved. With "times", print the three atimes.
const PROBE: &str = r#"
import os, shutil, subprocess, sys, time
d = sys.argv[1]
f, x, dd = d + "/f", d + "/x", d + "/dd"
if sys.argv[2] == "times":
    print(" ".join(str(os.stat(p).st_atime_ns) for p in (f, x, dd)))
    sys.exit(0)
if not os.path.exists(f):
    with open(f, "w") as w:
        w.write("data\n")
    shutil.copy("/bin/true", x)
    os.chmod(x, 0o755)
    os.mkdir(dd)
    open(dd + "/e", "w").close()
def read():
    with open(f) as r:
        r.read()
def listing():
    os.listdir(dd)
def run():
    subprocess.run([x], check=True)
H = 3600 * 10**9
for kind, path, access in (("read", f, read), ("list", dd, listing), ("exec", x, run)):
    now = time.time_ns()
    for case, (a, m) in (("atime<mtime", (now - 2 * H, now - H)), ("atime-ahead", (now + H, now - 2 * H))):
        for i in (1, 2, 3):
            os.utime(path, ns=(a, m))
            access()
            moved = os.stat(path).st_atime_ns != a
            print(kind, case, i, "updated" if moved else "kept")
"#;

/// The atime options a mountinfo line shows: (per-mount options without
/// rw/ro, superblock lazytime).
fn shown_options(mnt: &str) -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = table
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .unwrap_or_else(|| panic!("{mnt} not in mountinfo"));
    let (left, right) = line.split_once(" - ").unwrap();
    let mut opts: Vec<&str> = left.split(' ').nth(5).unwrap().split(',').collect();
    let sb: Vec<&str> = right.split(' ').nth(2).unwrap().split(',').collect();
    if sb.contains(&"lazytime") {
        opts.push("lazytime");
    }
    opts.join(",")
}

/// What Linux's rules give for these mount options (as mountinfo shows
/// them), in the probe's output format.
fn expected(shown: &str) -> String {
    let o: Vec<&str> = shown.split(',').collect();
    let noatime = o.contains(&"noatime");
    let relatime = o.contains(&"relatime");
    let nodiratime = o.contains(&"nodiratime");
    let mut out = String::new();
    for kind in ["read", "list", "exec"] {
        for case in ["atime<mtime", "atime-ahead"] {
            for i in 1..=3 {
                let refused = noatime || (kind == "list" && nodiratime);
                let updated = !refused && (!relatime || case == "atime<mtime");
                let word = if updated { "updated" } else { "kept" };
                out.push_str(&format!("{kind} {case} {i} {word}\n"));
            }
        }
    }
    out
}

fn probe(dir: &str, what: &str) -> String {
    sh(&format!(
        "mkdir -p {dir}/t && python3 -c '{PROBE}' {dir}/t {what}"
    ))
}

/// One step: how the mounts get their options.
enum Step {
    /// A fresh mount with these options (unmount, mount again).
    Mount(&'static str),
    /// `mount -o remount,OPTS` of the live mount.
    Remount(&'static str),
}

#[test]
fn atime_follows_each_mount_policy_as_ext4_across_mounts_and_remounts() {
    require_fuse!();
    let ext4 = Ext4::new(64 << 20);
    let e = ext4.mnt();
    let image = Path::new(&e).parent().unwrap().join("ext4.img");
    let mut v = Vol::new(256 << 20, 64 << 20);
    let s = v.mnt();
    let steps = [
        Step::Mount(""),
        Step::Mount("noatime"),
        Step::Remount("strictatime"),
        Step::Mount("nodiratime"),
        Step::Remount("strictatime,nodiratime"),
        Step::Mount("lazytime"),
        Step::Remount("strictatime"),
        Step::Mount("strictatime,lazytime"),
        Step::Remount("atime,relatime,nolazytime"),
    ];
    let mut kept: Option<(String, String)> = None;
    for step in steps {
        match step {
            Step::Mount(opts) => {
                sh(&format!(
                    "umount {e} && mount -o loop{}{opts} {} {e}",
                    if opts.is_empty() { "" } else { "," },
                    image.display()
                ));
                if v.engine.is_some() {
                    v.unmount();
                }
                if opts.is_empty() {
                    v.mount_with(&[]);
                } else {
                    v.mount_with(&["-o", opts]);
                }
                // What the last step left was written, lazytime's too.
                if let Some((ke, ks)) = &kept {
                    assert_eq!(&probe(&e, "times"), ke, "ext4 after mount -o {opts}");
                    assert_eq!(&probe(&s, "times"), ks, "scoutfs after mount -o {opts}");
                }
            }
            Step::Remount(opts) => {
                sh(&format!("mount -o remount,{opts} {e}"));
                // mount(8) without the helper (tests/mount_options.rs
                // remounts through it).
                sh(&format!("mount -i -o remount,{opts} {s}"));
            }
        }
        let what = match step {
            Step::Mount(o) => format!("mount -o {o:?}"),
            Step::Remount(o) => format!("mount -o remount,{o}"),
        };
        let shown = shown_options(&e);
        assert_eq!(shown_options(&s), shown, "{what}: options as shown");
        let want = expected(&shown);
        assert_eq!(probe(&e, "run"), want, "ext4, {what} ({shown})");
        assert_eq!(probe(&s, "run"), want, "scoutfs, {what} ({shown})");
        kept = Some((probe(&e, "times"), probe(&s, "times")));
    }
    v.unmount();
    v.check();
}
