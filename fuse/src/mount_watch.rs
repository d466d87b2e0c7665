//! Following the mount's options after it is made. The kernel asks a FUSE
//! server nothing at `mount -o remount`: it changes the mount's flags and
//! its superblock's and enforces them at the VFS (EROFS, EACCES). What
//! the engine must do itself it learns here, from /proc/self/mountinfo:
//! the atime policy to follow, and read-only (commit, then refuse every
//! change and stop atime) or read-write (accept changes again).
//!
//! A watcher thread waits on the mount table (poll(2) reports a change)
//! and applies each new state. A remount to read-write must not fail a
//! write made right after it because the watcher has not run yet, so
//! while the mount is read-only each request first looks (a poll that
//! doesn't wait) and catches up itself. The other way, a read in the
//! moment after `remount,ro` may still move an atime, which the remount's
//! commit then writes: nothing is written once the engine has applied it.

use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use scoutfs_engine::fs::AtimeMode;
use scoutfs_engine::serve::{Caller, Engine, Errno, Op, Request, SessionId};

use crate::mount_flags::{MountFlags, MountState};
use crate::session::unescape_octal;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount as the engine was last told it, shared by the watcher and
/// the request handlers.
#[derive(Debug)]
pub(crate) struct MountSync {
    engine: Arc<Engine>,
    /// The mount's ID in mountinfo (a remount keeps it).
    id: u64,
    point: PathBuf,
    /// The last state applied, and a mountinfo descriptor of the
    /// handlers' own to poll; held while a state is applied.
    state: Mutex<(Option<MountState>, File)>,
    /// The last state applied was read-only.
    read_only: AtomicBool,
}

impl MountSync {
    /// Find the mount just made at `point` (canonical) from `source`.
    pub(crate) fn new(
        engine: Arc<Engine>,
        point: &Path,
        source: &str,
    ) -> Result<MountSync, String> {
        let (probe, text) = open_mountinfo()?;
        let id = mount_id(&text, point, source)
            .ok_or_else(|| format!("the mount at {} is not in {MOUNTINFO}", point.display()))?;
        Ok(MountSync {
            engine,
            id,
            point: point.to_path_buf(),
            state: Mutex::new((None, probe)),
            read_only: AtomicBool::new(false),
        })
    }

    /// Before a request: while the mount is read-only, apply a remount the
    /// watcher has not applied yet (a write right after `remount,rw`).
    pub(crate) fn catch_up(&self) {
        if !self.read_only.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut g) = self.state.lock() else {
            return;
        };
        let mut fds = [libc::pollfd {
            fd: g.1.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        }];
        // SAFETY: one pollfd, as we say; no wait.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) } <= 0 {
            return;
        }
        let mut text = String::new();
        if g.1
            .rewind()
            .and_then(|()| g.1.read_to_string(&mut text))
            .is_ok()
        {
            self.apply_locked(&mut g.0, &text);
        }
    }

    /// Apply the state `table` shows, if it changed; false once the mount
    /// is gone from it.
    fn apply(&self, table: &str) -> bool {
        match self.state.lock() {
            Ok(mut g) => self.apply_locked(&mut g.0, table),
            Err(_) => false,
        }
    }

    fn apply_locked(&self, last: &mut Option<MountState>, table: &str) -> bool {
        let Some(state) = MountState::find(table, self.id) else {
            return false;
        };
        if *last != Some(state) {
            tell_engine(&self.engine, &state, last.is_some(), &self.point);
            self.read_only.store(state.sb_read_only, Ordering::Release);
            *last = Some(state);
        }
        true
    }
}

/// Open mountinfo and read it once (a poll then reports changes since).
fn open_mountinfo() -> Result<(File, String), String> {
    let mut f = File::open(MOUNTINFO).map_err(|e| format!("{MOUNTINFO}: {e}"))?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("{MOUNTINFO}: {e}"))?;
    Ok((f, text))
}

/// The thread that follows the mount table.
pub(crate) struct Watcher {
    /// Dropped to stop the thread.
    stop: OwnedFd,
    thread: JoinHandle<()>,
}

impl Watcher {
    /// Apply the mount's state now, then follow it.
    pub(crate) fn start(sync: Arc<MountSync>) -> Result<Watcher, String> {
        let (table, text) = open_mountinfo()?;
        if !sync.apply(&text) {
            return Err(format!(
                "the mount at {} left {MOUNTINFO}",
                sync.point.display()
            ));
        }
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 just made both descriptors; each has one owner.
        let (wake, stop) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let thread = std::thread::Builder::new()
            .name("mount-watch".into())
            .spawn(move || follow(&sync, table, &wake))
            .map_err(|e| format!("starting the mount watcher: {e}"))?;
        Ok(Watcher { stop, thread })
    }

    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Wait for the table to change (or `wake` to close), read it again and
/// apply it; until the mount is gone.
fn follow(sync: &MountSync, mut table: File, wake: &OwnedFd) {
    let mut text = String::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: table.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds, as many as we say.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("watching {MOUNTINFO}: {e}; remounts are not followed");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        text.clear();
        if let Err(e) = table
            .rewind()
            .and_then(|()| table.read_to_string(&mut text))
        {
            tracing::error!("reading {MOUNTINFO}: {e}; remounts are not followed");
            return;
        }
        if !sync.apply(&text) {
            return;
        }
    }
}

/// Tell the engine the mount's atime policy and whether it is read-only.
fn tell_engine(engine: &Engine, state: &MountState, remount: bool, point: &Path) {
    let policy = state.atime_policy();
    let read_only = state.sb_read_only;
    // The engine process acts for the kernel here: its own session, as
    // root (a remount is an admin op).
    let op = Op::Remount {
        atime: policy,
        read_only,
    };
    let r = engine
        .call_op(Request::new(SessionId::ENGINE, Caller::root(), op))
        .and_then(|r| r.done());
    let mode = match policy.mode {
        AtimeMode::Relatime => "relatime",
        AtimeMode::Strict => "strictatime",
        AtimeMode::Never => "noatime",
    };
    let desc = [
        (true, if read_only { "ro" } else { "rw" }),
        (state.mount_read_only && !read_only, "ro here"),
        (state.nosuid, "nosuid"),
        (state.nodev, "nodev"),
        (state.noexec, "noexec"),
        (true, mode),
        (policy.nodiratime, "nodiratime"),
        (policy.lazytime, "lazytime"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, s)| *s)
    .collect::<Vec<_>>()
    .join(",");
    let what = if remount { "remounted" } else { "mounted" };
    match r {
        Ok(()) => tracing::info!("{}: {what} {desc}", point.display()),
        Err(Errno(libc::EROFS)) if !read_only => {
            // The mount is read-write already (nobody asked us): put it
            // back, as a kernel filesystem refuses to be remounted
            // read-write on a write-protected device.
            tracing::error!(
                "{}: {what} read-write, but the volume stays read-only (its \
                 error is logged above); making the mount read-only again",
                point.display()
            );
            if let Err(e) = remount_read_only(point, state) {
                tracing::error!("{}: {e}", point.display());
            }
        }
        Err(e) => tracing::error!("{}: {what} {desc}: {e}", point.display()),
    }
}

/// `mount -o remount,ro` of the mount at `point`, keeping its other
/// options (a remount clears the flags it isn't given).
fn remount_read_only(point: &Path, state: &MountState) -> Result<(), String> {
    let flags = MountFlags {
        read_only: true,
        nosuid: state.nosuid,
        nodev: state.nodev,
        noexec: state.noexec,
        noatime: state.atime == AtimeMode::Never,
        relatime: state.atime == AtimeMode::Relatime,
        strictatime: state.atime == AtimeMode::Strict,
        nodiratime: state.nodiratime,
        lazytime: state.lazytime,
    };
    let target = std::ffi::CString::new(point.as_os_str().as_bytes())
        .map_err(|_| "a NUL in the mount point".to_string())?;
    // SAFETY: a NUL-terminated path that outlives the call; a remount
    // reads no source, type or data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags.ms_flags(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(format!(
            "remounting read-only: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The ID of the last mount in a mountinfo table at `point` from
/// `source`.
fn mount_id(table: &str, point: &Path, source: &str) -> Option<u64> {
    let want = point.as_os_str().as_bytes();
    table.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let at = left.split(' ').nth(4)?;
        let src = right.split(' ').nth(1)?;
        (unescape_octal(at) == want && unescape_octal(src) == source.as_bytes())
            .then(|| left.split(' ').next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
43 27 0:39 / /tmp/fx/mnt rw,nosuid,nodev,noatime - fuse.scoutfs scoutfs:c7ae rw,user_id=0
44 27 0:40 / /tmp/a\\040b rw shared:7 master:2 - fuse.scoutfs /m\\040n rw
";

    #[test]
    fn mount_id_is_the_last_mount_of_the_source_at_the_point() {
        assert_eq!(
            mount_id(TABLE, Path::new("/tmp/fx/mnt"), "scoutfs:c7ae"),
            Some(43)
        );
        assert_eq!(mount_id(TABLE, Path::new("/tmp/a b"), "/m n"), Some(44));
        let over = format!("{TABLE}50 43 0:41 / /tmp/fx/mnt rw - fuse.scoutfs scoutfs:c7ae rw\n");
        assert_eq!(
            mount_id(&over, Path::new("/tmp/fx/mnt"), "scoutfs:c7ae"),
            Some(50)
        );
        assert_eq!(mount_id(TABLE, Path::new("/tmp/fx/mnt"), "other"), None);
    }
}
