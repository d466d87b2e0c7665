//! Helpers of the tests that mount a volume through FUSE: a volume on two
//! files, `scoutfs mount --fuse` and its log, bash scripts, an ext4 loop
//! mount to take expected values from. Each test binary uses a part.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn scoutfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scoutfs"))
}

/// Why these tests can't run here, if they can't.
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mounting FUSE needs it)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    for tool in [
        "fusermount3",
        "rsync",
        "setfattr",
        "sqlite3",
        "git",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/setup installs it)"
            ));
        }
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(why) = $crate::common::unsupported() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// Run a bash script; panic with its output unless it succeeds.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .output()
        .unwrap();
    stdout_of(out, &format!("script failed:\n{script}"))
}

/// A finished command's stdout; a panic naming `what`, the exit status
/// and both outputs unless it succeeded.
pub fn stdout_of(out: std::process::Output, what: &str) -> String {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{what} ({}):\n--- stdout\n{o}\n--- stderr\n{e}",
        out.status
    );
    o
}

/// A volume on two files in a temp dir, and its mount.
pub struct Vol {
    pub dir: tempfile::TempDir,
    pub engine: Option<Child>,
}

impl Vol {
    pub fn new(meta_bytes: u64, data_bytes: u64) -> Vol {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("meta", meta_bytes), ("data", data_bytes)] {
            std::fs::File::create(dir.path().join(name))
                .unwrap()
                .set_len(bytes)
                .unwrap();
        }
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let out = scoutfs()
            .arg("mkfs")
            .arg("--allow-small-size")
            .arg(dir.path().join("meta"))
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Vol { dir, engine: None }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn mnt(&self) -> String {
        self.path("mnt").to_string_lossy().into_owned()
    }

    pub fn mounted(&self) -> bool {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let m = self.path("mnt");
        mi.lines()
            .any(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
    }

    /// Mount with the defaults, plus SCOUTFS_TEST_MOUNT_ARGS (to run the
    /// suite against other settings, e.g. "--writeback-cache").
    pub fn mount(&mut self) {
        let extra = std::env::var("SCOUTFS_TEST_MOUNT_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        self.mount_with(&extra);
    }

    /// `scoutfs mount` of this volume at `mnt` with admin socket `sock`
    /// (both under the volume's directory).
    pub fn mount_command(&self, mnt: &str, sock: &str) -> Command {
        let mut c = scoutfs();
        c.arg("mount")
            .arg(self.path("meta"))
            .arg(self.path("data"))
            .arg("--fuse")
            .arg(self.path(mnt))
            .arg("--admin-socket")
            .arg(self.path(sock));
        c
    }

    pub fn mount_with(&mut self, extra: &[&str]) {
        assert!(self.engine.is_none());
        let log = std::fs::File::create(self.path("engine.log")).unwrap();
        let child = self
            .mount_command("mnt", "admin.sock")
            .args(["--core", "none"])
            .args(extra)
            .stderr(log)
            .spawn()
            .unwrap();
        self.engine = Some(child);
        let start = Instant::now();
        while !self.mounted() {
            if let Some(st) = self.engine.as_mut().unwrap().try_wait().unwrap() {
                panic!("scoutfs mount exited with {st}: {}", self.log());
            }
            // A watchdog: a mount that never comes up fails the test.
            if start.elapsed() >= Duration::from_secs(30) {
                panic!("not mounted after 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("engine.log")).unwrap_or_default()
    }

    /// SIGTERM: unmount, commit, exit 0.
    pub fn unmount(&mut self) {
        let mut child = self.engine.take().expect("mounted");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let st = wait_timeout(&mut child, Duration::from_secs(60));
        assert!(st.success(), "engine exit {st}: {}", self.log());
        assert!(!self.mounted());
    }

    /// kill -9: the engine dies with whatever it had open; the dead FUSE
    /// mount is detached.
    pub fn kill9(&mut self) {
        let mut child = self.engine.take().expect("mounted");
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.path("mnt"))
            .status();
        assert!(!self.mounted());
    }

    pub fn check(&self) {
        let out = scoutfs()
            .arg("check")
            .arg(self.path("meta"))
            .arg(self.path("data"))
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "check found problems:\n{s}");
        assert!(s.contains(" 0 problems"), "{s}");
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Vol {
    fn drop(&mut self) {
        if let Some(mut c) = self.engine.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.mounted() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(self.path("mnt"))
                .status();
        }
    }
}

/// An ext4 file system on a loop device (a file in a temp dir), mounted:
/// the reference that expected values are taken from, on the same kernel
/// as the FUSE mount under test.
pub struct Ext4 {
    dir: tempfile::TempDir,
}

impl Ext4 {
    pub fn new(bytes: u64) -> Ext4 {
        Ext4::with_mkfs_options(bytes, "")
    }

    /// With extra mkfs.ext4 arguments (e.g. "-O ea_inode").
    pub fn with_mkfs_options(bytes: u64, mkfs_options: &str) -> Ext4 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        sh(&format!(
            "command -v mkfs.ext4 >/dev/null || {{ echo 'mkfs.ext4 is missing (e2fsprogs)' >&2; exit 1; }}
             truncate -s {bytes} {d}/ext4.img && mkfs.ext4 -q -F {mkfs_options} {d}/ext4.img
             mkdir {d}/mnt && mount -o loop {d}/ext4.img {d}/mnt"
        ));
        Ext4 { dir }
    }

    pub fn mnt(&self) -> String {
        self.dir.path().join("mnt").to_string_lossy().into_owned()
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // The loop device goes with the mount (mount -o loop sets autoclear).
        let _ = Command::new("umount")
            .arg(self.dir.path().join("mnt"))
            .status();
    }
}

/// One counter of a running mount (`scoutfs counters`).
pub fn counter(v: &Vol, name: &str) -> u64 {
    let out = scoutfs()
        .arg("counters")
        .arg(v.path("admin.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A python for other users: root's `python3` may live where they can't
/// run it (a pyenv shim under /root); Debian's python3 package puts this
/// one there.
pub const USER_PYTHON: &str = "/usr/bin/python3";

/// Run python3 on `script` with `args`; its stdout, or a panic with both
/// outputs.
pub fn py(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    stdout_of(out, &format!("python3 {args:?} failed"))
}

/// Unmount, and show that the kernel forgot every removed inode it had
/// referenced: an inode kept for the kernel at unmount would be an orphan
/// that the next mount deletes and logs. Then check the volume.
pub fn unmount_with_nothing_kept(v: &mut Vol) {
    v.unmount();
    v.mount_with(&[]);
    let log = v.log();
    assert!(!log.contains("orphaned inodes"), "{log}");
    v.unmount();
    v.check();
}
