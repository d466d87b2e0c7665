//! The filesystems the mount benchmarks run against, set up in the run's
//! work directory and taken down on drop: ext4 on a loop device over a
//! sparse file, the scoutfs FUSE mount (`scoutfs mkfs` + `scoutfs mount`
//! on two sparse files), and the FUSE floor (floor.rs, served by a child
//! `scoutfs-perf floor-serve`). Plus what the benchmarks around them share:
//! running a command, sizes, dropping caches, the CPU split.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a mount benchmark can run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Scoutfs,
    Ext4,
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Scoutfs => "scoutfs",
            Kind::Ext4 => "ext4",
            Kind::Floor => "floor",
        }
    }
}

/// A comma-separated list of targets ("scoutfs,ext4,floor").
pub fn parse_kinds(s: &str) -> Result<Vec<Kind>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| match x {
            "scoutfs" => Ok(Kind::Scoutfs),
            "ext4" => Ok(Kind::Ext4),
            "floor" => Ok(Kind::Floor),
            _ => Err(format!(
                "unknown target {x:?} (known: scoutfs, ext4, floor)"
            )),
        })
        .collect()
}

/// The options every mount benchmark takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Where the backing files go (the disk being measured).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Extra arguments for `scoutfs mount`, e.g. "--fuse-threads 8"
    /// (default mount options otherwise).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub mount_args: String,
    /// FUSE handler threads of the floor (default: as many as the scoutfs
    /// mount has: --fuse-threads in --mount-args, else the mount's
    /// default).
    #[arg(long)]
    pub floor_threads: Option<usize>,
    /// The floor's threads all wait on /dev/fuse at once instead of
    /// taking turns as the mount's threads do.
    #[arg(long)]
    pub floor_free_readers: bool,
    /// Let the benchmark's own processes use every CPU. By default they
    /// (and the servers they start, until the scoutfs reactor pins itself)
    /// stay off the last CPU, which is the reactor's, as in
    /// `scoutfs-perf fs`.
    #[arg(long)]
    pub no_cpu_split: bool,
}

/// `scoutfs mount`'s default `--fuse-threads` (fuse/src/lib.rs,
/// `FuseOptions::default().threads`; 2 before commit 26a5a8a).
pub const MOUNT_DEFAULT_FUSE_THREADS: usize = 8;

impl Common {
    /// The floor's handler threads: as given, else as many as the mount
    /// the benchmark starts has.
    pub fn floor_threads(&self) -> usize {
        self.floor_threads.unwrap_or_else(|| {
            fuse_threads_in(&self.mount_args).unwrap_or(MOUNT_DEFAULT_FUSE_THREADS)
        })
    }
}

/// The value of `--fuse-threads N` or `--fuse-threads=N` in mount
/// arguments (the last one given).
fn fuse_threads_in(args: &str) -> Option<usize> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut found = None;
    for (i, w) in words.iter().enumerate() {
        if *w == "--fuse-threads" {
            found = words.get(i + 1).and_then(|v| v.parse().ok());
        } else if let Some(v) = w.strip_prefix("--fuse-threads=") {
            found = v.parse().ok();
        }
    }
    found
}

pub fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A size with an optional K, M or G suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (n, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>()
        .map(|v| v * mult)
        .map_err(|_| format!("bad size {s:?}"))
}

pub fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A mounted filesystem under test; unmounted on drop.
#[derive(Debug)]
pub enum Target {
    Ext4 { mnt: PathBuf, loopdev: String },
    Scoutfs { mnt: PathBuf, engine: Child },
    Floor { mnt: PathBuf, server: Child },
}

impl Target {
    pub fn mnt(&self) -> &Path {
        match self {
            Target::Ext4 { mnt, .. } | Target::Scoutfs { mnt, .. } | Target::Floor { mnt, .. } => {
                mnt
            }
        }
    }

    /// `kind` in `dir`: ext4 of `bytes`, scoutfs with a data device of
    /// `bytes` (and 4 GiB of metadata), or the floor.
    pub fn open(kind: Kind, dir: &Path, bytes: u64, c: &Common) -> Result<Target, String> {
        match kind {
            Kind::Ext4 => Target::ext4(dir, bytes),
            Kind::Scoutfs => Target::scoutfs(dir, bytes, &c.mount_args),
            Kind::Floor => Target::floor(dir, c.floor_threads(), c.floor_free_readers),
        }
    }

    /// How the target was set up, for the figures' header.
    pub fn describe(kind: Kind, c: &Common) -> String {
        match kind {
            Kind::Ext4 => "ext4 on a loop device (--direct-io=on) over a sparse file".into(),
            Kind::Scoutfs => format!(
                "scoutfs mkfs + scoutfs mount --fuse on sparse files (meta 4 GiB), mount arguments {:?}",
                c.mount_args
            ),
            Kind::Floor => format!(
                "FUSE floor (in-memory, fuse-backend-rs, {} threads {})",
                c.floor_threads(),
                if c.floor_free_readers {
                    "all waiting on /dev/fuse"
                } else {
                    "taking turns to read /dev/fuse"
                }
            ),
        }
    }

    pub fn ext4(dir: &Path, bytes: u64) -> Result<Target, String> {
        let img = dir.join("ext4.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| e.to_string())?;
        let loopdev = run_cmd(
            Command::new("losetup")
                .args(["-f", "--show", "--direct-io=on"])
                .arg(&img),
        )?
        .trim()
        .to_string();
        let mnt = dir.join("ext4");
        // Taken down by drop from here on, whatever fails next.
        let t = Target::Ext4 {
            mnt: mnt.clone(),
            loopdev: loopdev.clone(),
        };
        run_cmd(Command::new("mkfs.ext4").args(["-q", "-F", &loopdev]))?;
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        run_cmd(Command::new("mount").arg(&loopdev).arg(&mnt))?;
        Ok(t)
    }

    pub fn scoutfs(dir: &Path, data_bytes: u64, extra: &str) -> Result<Target, String> {
        let bin = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("scoutfs");
        let (meta, data) = (dir.join("meta.img"), dir.join("data.img"));
        for (p, n) in [(&meta, 4u64 << 30), (&data, data_bytes)] {
            std::fs::File::create(p)
                .and_then(|f| f.set_len(n))
                .map_err(|e| e.to_string())?;
        }
        run_cmd(
            Command::new(&bin)
                .arg("mkfs")
                .arg("-f")
                .arg(&meta)
                .arg(&data),
        )?;
        let mnt = dir.join("scoutfs");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("engine.log")).map_err(|e| e.to_string())?;
        let engine = Command::new(&bin)
            .arg("mount")
            .arg(&meta)
            .arg(&data)
            .arg("--fuse")
            .arg(&mnt)
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            .args(extra.split_whitespace())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let t = Target::Scoutfs { mnt, engine };
        t.wait_mounted("scoutfs mount")?;
        Ok(t)
    }

    /// The floor, served by `scoutfs-perf floor-serve` (this binary).
    pub fn floor(dir: &Path, threads: usize, free_readers: bool) -> Result<Target, String> {
        let bin = std::env::current_exe().map_err(|e| e.to_string())?;
        let mnt = dir.join("floor");
        std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("floor.log")).map_err(|e| e.to_string())?;
        let server = Command::new(&bin)
            .arg("floor-serve")
            .arg(&mnt)
            .arg("--threads")
            .arg(threads.to_string())
            .args(free_readers.then_some("--free-readers"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let t = Target::Floor { mnt, server };
        t.wait_mounted("floor-serve")?;
        Ok(t)
    }

    fn wait_mounted(&self, what: &str) -> Result<(), String> {
        let start = Instant::now();
        while !is_mounted(self.mnt()) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("{what} did not come up in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mi.lines()
        .any(|l| l.split(' ').nth(4).map(Path::new) == Some(p))
}

impl Drop for Target {
    fn drop(&mut self) {
        match self {
            Target::Ext4 { mnt, loopdev } => {
                let _ = Command::new("umount").arg(&*mnt).status();
                let _ = Command::new("losetup").args(["-d", loopdev]).status();
            }
            // Both unmount themselves on SIGTERM.
            Target::Scoutfs { engine: child, .. } | Target::Floor { server: child, .. } => {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let _ = child.wait();
            }
        }
    }
}

/// Keep this process (and what it starts: the engine, until its reactor
/// pins itself to the last CPU) off the last CPU: the reactor's core is
/// its own, as the design intends. Sharing it with the benchmark's client
/// made FUSE rates swing 6x from run to run on 2 vCPUs. Every target is
/// measured with the client on the same CPUs. The CPU left, if any.
pub fn leave_last_cpu_to_the_reactor() -> Option<usize> {
    // The machine's CPUs, not the ones this process has left: a second
    // call (the floor benchmark runs three) finds the same split.
    // SAFETY: sysconf has no preconditions.
    let n = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).ok()?;
    if n < 2 {
        return None;
    }
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET for valid indexes,
    // passed by pointer with its size to sched_setaffinity for this
    // process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..n - 1 {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return None;
        }
    }
    Some(n - 1)
}

/// The CPU split of `scoutfs-perf fs`, reported on stderr; a line for the
/// figures' header.
pub fn split_cpus(no_split: bool) -> String {
    if no_split {
        return "benchmark processes on every CPU (--no-cpu-split)".into();
    }
    match leave_last_cpu_to_the_reactor() {
        Some(c) => format!(
            "benchmark processes (and FUSE server threads) on CPUs 0..{}, CPU {c} left to the engine's reactor",
            c - 1
        ),
        None => "one CPU: benchmark and reactor share it".into(),
    }
}

/// A fresh work directory under `base`, named for `what` and this process.
pub fn work_dir(base: &Path, what: &str) -> Result<PathBuf, String> {
    let p = base.join(format!("scoutfs-perf-{what}.{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    p.canonicalize().map_err(|e| e.to_string())
}

/// Removes the work directory (and with it the backing files) on drop,
/// after the targets in it are gone.
#[derive(Debug)]
pub struct WorkDir(pub PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Set up each of `kinds` in turn in its own directory under `work` (of
/// `bytes`, see [`Target::open`]), run `f` on it with a scratch directory
/// outside the mount, take it down and remove its backing files.
pub fn each_target<T>(
    kinds: &[Kind],
    work: &Path,
    bytes: u64,
    c: &Common,
    mut f: impl FnMut(&Target, &Path) -> Result<T, String>,
) -> Result<Vec<(Kind, T)>, String> {
    let mut out = Vec::new();
    for &kind in kinds {
        let dir = work.join(kind.name());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let r = {
            let t = Target::open(kind, &dir, bytes, c)?;
            eprintln!("{} at {}", kind.name(), t.mnt().display());
            f(&t, &dir).map_err(|e| format!("{}: {e}", kind.name()))
        };
        let _ = std::fs::remove_dir_all(&dir);
        out.push((kind, r?));
    }
    Ok(out)
}

/// Start `sh -c script` with `args` in a process group of its own, so
/// that [`kill_group`] ends it and whatever it runs.
pub fn spawn_shell(script: &str, args: &[&std::ffi::OsStr]) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("sh: {e}"))
}

/// SIGKILL the process group `child` leads (started by [`spawn_shell`])
/// and reap it.
pub fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group of a child we started as its
    // group's leader (process_group(0)); it has not been reaped yet, so
    // its id is still ours.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_gets_the_mounts_fuse_threads() {
        assert_eq!(fuse_threads_in(""), None);
        assert_eq!(fuse_threads_in("--fuse-threads 3"), Some(3));
        assert_eq!(fuse_threads_in("-o noatime --fuse-threads=5"), Some(5));
        assert_eq!(
            fuse_threads_in("--fuse-threads 3 --fuse-threads 4"),
            Some(4)
        );
        assert_eq!(fuse_threads_in("--fuse-threads"), None);
    }
}
